#!/usr/bin/env python3
"""Alternates `cairn run` variants (config files) over ROUNDS rounds (default 7, order flipped
every round) and prints per run and as medians: process CPU seconds (user + sys, less sensitive
to a loaded machine than wall time), records/s, and the median upload amplification.

    benches/metrics/cpu_ab.py <cairn binary> <records> <keys> name=config.toml[:ENV=VALUE] ...

e.g. `off=stats-off.toml on=stats-on.toml`, or `glibc=plain.toml arena2=plain.toml:MALLOC_ARENA_MAX=2`.
Also prints the median peak RSS (the run's sampled process RSS).
"""
import json, os, resource, statistics, subprocess, sys, tempfile

binary, records, keys = sys.argv[1:4]
variants = dict(a.split("=", 1) for a in sys.argv[4:])
envs = {}
for name, spec in list(variants.items()):
    config, _, env = spec.partition(":")
    variants[name] = config
    envs[name] = dict(e.split("=", 1) for e in env.split(",") if e)
rounds = int(os.environ.get("ROUNDS", "7"))
args = ["--workload", "update", "--records", records, "--keys", keys]
res = {k: [] for k in variants}
for r in range(rounds):
    order = list(variants) if r % 2 == 0 else list(reversed(list(variants)))
    for v in order:
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([binary, "run", *args, "--config", variants[v],
                                  "--working-dir", f"{d}/work", "--checkpoint-dir", f"file://{d}/cp",
                                  "--json", f"{d}/r.json"], capture_output=True,
                                 env={**os.environ, **envs[v]})
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            assert out.returncode == 0, out.stderr[-2000:]
            rep = json.load(open(f"{d}/r.json"))
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            amp = (rep.get("upload_floor") or {}).get("median_amplification")
            rss = rep["memory"]["rss_peak_bytes"] / 2**20
            res[v].append((cpu, rep["records_per_sec"], amp, rss))
            print(f"round {r+1} {v}: cpu {cpu:.2f} s, {rep['records_per_sec']:,.0f} rec/s, "
                  f"upload amplification {amp}, peak RSS {rss:.1f} MiB", flush=True)
base = list(variants)[0]
for v, x in res.items():
    cpu = statistics.median(c for c, _, _, _ in x)
    rate = statistics.median(s for _, s, _, _ in x)
    amps = [a for _, _, a, _ in x if a is not None]
    amp = statistics.median(amps) if amps else float("nan")
    rss = statistics.median(m for _, _, _, m in x)
    b = res[base]
    print(f"{v}: median cpu {cpu:.2f} s ({cpu / statistics.median(c for c, _, _, _ in b):.3f}x {base}), "
          f"{rate:,.0f} rec/s ({rate / statistics.median(s for _, s, _, _ in b):.3f}x), "
          f"upload amplification {amp:.2f}, peak RSS {rss:.1f} MiB")
