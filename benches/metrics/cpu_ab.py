import json, os, resource, statistics, subprocess, sys, tempfile, time
rounds = int(os.environ.get("ROUNDS", "7"))
variants = {"off": "/tmp/stats-off.toml", "on": "/tmp/stats-on.toml"}
args = ["--workload", "update", "--records", sys.argv[1], "--keys", sys.argv[2]]
res = {k: [] for k in variants}
for r in range(rounds):
    order = list(variants) if r % 2 == 0 else list(reversed(list(variants)))
    for v in order:
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.time()
            out = subprocess.run(["/tmp/cairn-nm", "run", *args, "--config", variants[v],
                                  "--working-dir", f"{d}/work", "--checkpoint-dir", f"file://{d}/cp",
                                  "--json", f"{d}/r.json"], capture_output=True)
            wall = time.time() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            assert out.returncode == 0, out.stderr[-2000:]
            rep = json.load(open(f"{d}/r.json"))
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            res[v].append((cpu, rep["records_per_sec"], wall))
            print(f"round {r+1} {v}: cpu {cpu:.2f} s, {rep['records_per_sec']:,.0f} rec/s, wall {wall:.1f} s", flush=True)
med = {v: (statistics.median(c for c, _, _ in x), statistics.median(s for _, s, _ in x)) for v, x in res.items()}
print(f"median cpu s: off {med['off'][0]:.2f}, on {med['on'][0]:.2f}, ratio on/off {med['on'][0]/med['off'][0]:.3f}")
print(f"median rec/s: off {med['off'][1]:,.0f}, on {med['on'][1]:,.0f}, ratio on/off {med['on'][1]/med['off'][1]:.3f}")
