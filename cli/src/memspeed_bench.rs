//! `cairn bench memory-speed`: the keyed counter (`cairn run --workload update`) on the heap
//! backend and on RocksDB with the state cache, against the limit of any state backend on this
//! machine: a plain hash map of `u64 -> u64` fed the same stream (no key groups, no
//! serialization, no snapshots), alternated over rounds in one run.
//!
//! Each round, in an order that rotates: the plain map in this process, then `cairn run` of
//! each backend as a child process (this binary, checkpoints on at the run's default interval,
//! one slot). Reported: records/s per variant (medians), the ratios the state-at-memory-speed
//! goals are stated in (heap / plain map, RocksDB / heap, heap / Flink's HashMap backend, see
//! [`FLINK_HASHMAP_RECORDS_PER_SEC`]), and each backend's synchronous checkpoint pause
//! (p99 over the run's checkpoints). Writes `<out>.json`, `<out>.csv` and `<out>.svg`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::bench_files::BenchFiles;
use crate::stream;

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Flink 2.3.0's HashMapStateBackend on the keyed counter (10M records over 1M keys,
/// parallelism 1, incremental checkpoints every 3 s, a local MiniCluster) measured on this
/// project's 2-core machines; recorded with the other Flink figures in `benches/RESULTS.md`.
pub const FLINK_HASHMAP_RECORDS_PER_SEC: f64 = 1_386_885.0;

/// The variants, in the first round's order.
const VARIANTS: [&str; 3] = ["plain-map", "heap", "rocksdb"];

/// `cairn bench memory-speed` flags.
#[derive(Debug, Args)]
pub struct MemorySpeedArgs {
    /// Records of the stream.
    #[arg(long, default_value_t = 10_000_000)]
    pub records: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Seed of the stream (the same for every variant).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Rounds; each runs every variant once, in a rotating order.
    #[arg(long, default_value_t = 7)]
    pub rounds: u32,
    /// Where the runs work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "memory-speed")]
    pub out: PathBuf,
}

/// One run of one variant.
#[derive(Clone, Debug, Serialize)]
struct Row {
    variant: &'static str,
    round: u32,
    records_per_sec: f64,
    /// The synchronous checkpoint pause, p99 over the run's checkpoints (backends only).
    sync_p99_ms: Option<f64>,
}

/// Medians and the goals' ratios.
#[derive(Debug, Serialize)]
struct Summary {
    plain_map: f64,
    heap: f64,
    rocksdb: f64,
    heap_over_plain_map: f64,
    rocksdb_over_heap: f64,
    heap_over_flink_hashmap: f64,
    flink_hashmap_reference: f64,
    heap_sync_p99_ms: Option<f64>,
    rocksdb_sync_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    records: u64,
    keys: u64,
    rounds: u32,
    summary: Summary,
    rows: &'a [Row],
}

type FastMap = HashMap<u64, u64, foldhash::fast::FixedState>;

/// The plain map fed the stream; records/s. The map's checksum is returned too so the work
/// cannot be optimized away.
fn plain_map(a: &MemorySpeedArgs) -> (f64, u64) {
    let mut map = FastMap::default();
    map.reserve(usize::try_from(a.keys).unwrap_or(0));
    let t = Instant::now();
    for g in 0..a.records {
        *map.entry(stream::key_for(g, a.keys, a.seed)).or_insert(0) += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let total = map.values().sum();
    (a.records as f64 / secs.max(1e-9), total)
}

/// `cairn run` of `backend` as a child; (records/s, sync pause p99 ms).
fn backend_run(a: &MemorySpeedArgs, backend: &str, round: u32) -> BResult<(f64, Option<f64>)> {
    let dir = a.dir.join(format!(
        "memory-speed-{}-{backend}-{round}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let json = dir.join("run.json");
    let out = Command::new(std::env::current_exe()?)
        .arg("run")
        .args(["--workload", "update", "--backend", backend])
        .args([
            "--records",
            &a.records.to_string(),
            "--keys",
            &a.keys.to_string(),
        ])
        .args(["--seed", &a.seed.to_string()])
        .arg("--working-dir")
        .arg(dir.join("work"))
        .arg("--checkpoint-dir")
        .arg(format!("file://{}", dir.join("checkpoints").display()))
        .arg("--json")
        .arg(&json)
        .output()?;
    let result = (|| -> BResult<(f64, Option<f64>)> {
        if !out.status.success() {
            return Err(format!(
                "cairn run --backend {backend} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        let rate = v["records_per_sec"]
            .as_f64()
            .ok_or("records_per_sec in the run's JSON")?;
        let mut pauses: Vec<f64> = v["checkpoints"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["sync_ms"].as_f64()).collect())
            .unwrap_or_default();
        pauses.sort_by(f64::total_cmp);
        Ok((rate, nearest_rank(&pauses, 0.99)))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The nearest-rank percentile `q` of sorted values.
fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Runs `cairn bench memory-speed`.
pub fn run(a: &MemorySpeedArgs) -> BResult<()> {
    if a.records == 0 || a.keys == 0 || a.rounds == 0 {
        return Err("--records, --keys and --rounds must be >= 1".into());
    }
    let mut rows = Vec::new();
    let mut checksum = 0u64;
    for round in 0..a.rounds {
        for i in 0..VARIANTS.len() {
            let variant = VARIANTS[(i + round as usize) % VARIANTS.len()];
            let (rate, pause) = match variant {
                "plain-map" => {
                    let (rate, total) = plain_map(a);
                    checksum ^= total;
                    (rate, None)
                }
                backend => backend_run(a, backend, round)?,
            };
            println!(
                "round {round} {variant:>9}: {rate:>12.0} records/s{}",
                pause.map_or(String::new(), |p| format!(", sync pause p99 {p:.1} ms"))
            );
            rows.push(Row {
                variant,
                round,
                records_per_sec: rate,
                sync_p99_ms: pause,
            });
        }
    }
    let med = |v: &str| {
        median(
            rows.iter()
                .filter(|r| r.variant == v)
                .map(|r| r.records_per_sec)
                .collect(),
        )
    };
    let pause = |v: &str| {
        let p: Vec<f64> = rows
            .iter()
            .filter(|r| r.variant == v)
            .filter_map(|r| r.sync_p99_ms)
            .collect();
        (!p.is_empty()).then(|| median(p))
    };
    let (plain, heap, rocks) = (med("plain-map"), med("heap"), med("rocksdb"));
    let summary = Summary {
        plain_map: plain,
        heap,
        rocksdb: rocks,
        heap_over_plain_map: heap / plain,
        rocksdb_over_heap: rocks / heap,
        heap_over_flink_hashmap: heap / FLINK_HASHMAP_RECORDS_PER_SEC,
        flink_hashmap_reference: FLINK_HASHMAP_RECORDS_PER_SEC,
        heap_sync_p99_ms: pause("heap"),
        rocksdb_sync_p99_ms: pause("rocksdb"),
    };
    println!(
        "medians of {} rounds: plain map {plain:.0}, heap {heap:.0} ({:.2} of the plain map; goal >= 0.4; \
         {:.2}x Flink's HashMap {FLINK_HASHMAP_RECORDS_PER_SEC:.0}, goal >= 2.5), RocksDB {rocks:.0} \
         ({:.2} of heap; goal >= 0.6), RocksDB sync pause p99 {} (goal <= 50 ms) [map checksum {checksum:x}]",
        a.rounds,
        summary.heap_over_plain_map,
        summary.heap_over_flink_hashmap,
        summary.rocksdb_over_heap,
        summary
            .rocksdb_sync_p99_ms
            .map_or("-".into(), |p| format!("{p:.1} ms")),
    );
    let files = BenchFiles::new(&a.out)?;
    files.write_json(&Output {
        records: a.records,
        keys: a.keys,
        rounds: a.rounds,
        summary,
        rows: &rows,
    })?;
    files.write_csv(&rows)?;
    crate::chart::grouped_bars(
        &files.svg(),
        &format!(
            "keyed counter, median records/s ({} records, {} keys, {} rounds)",
            a.records, a.keys, a.rounds
        ),
        &VARIANTS.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        &[("records/s", VARIANTS.iter().map(|v| med(v)).collect())],
    )?;
    files.announce();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn p99_of_few_checkpoints_is_the_largest() {
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 0.99), Some(3.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(nearest_rank(&[], 0.99), None);
    }
}
