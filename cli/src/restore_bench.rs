//! `cairn bench restore`: eager against lazy restore (`checkpoint.restore-fetch`) of one
//! RocksDB slot, per state size and storage, alternated in one run.
//!
//! Per size of `--sizes` (GB of `--value-size` values, incompressible) the state is loaded into
//! one slot and checkpointed once per storage (`file://` in the work directory, and the
//! `--s3-url` store when given). Then `--rounds` rounds alternate the two modes (eager first
//! in even rounds, lazy first in odd ones); each restore is timed from nothing (a new
//! checkpointer, `resume_from`, the slot's files, the open, the state registered) until:
//! - `open_ms`: the slot accepts records (open, state registered);
//! - `first_record_ms`: the first record is processed (a read-modify-write of a random key: for
//!   a lazy slot this includes the range reads of files not yet local its read needs; the
//!   rows count them: `first_record_range_reads`, `_bytes`, `_ms`);
//! - `records_ms`: `--records` records are processed (default 100,000), from which the records
//!   per second after the first one (`records_per_s`);
//! - `local_ms`: every file is local (eager: when the slot opened);
//! - lazy: `records_while_fetching`, the records done before `local_ms` (checked every 1000),
//!   and their rate `records_per_s_while_fetching`.
//!
//! The goals (issue 20): `first_record_ms` at most 100 at every size for lazy, and lazy's
//! records per second while the fetch runs at least 0.5 of eager's (a fully local slot): the
//! medians' `fetching_vs_eager` (`throughput_vs_eager` compares all the records). Writes
//! `<out>.json` (sizes, medians, rows), `<out>.csv` (rows) and `<out>.svg` (median times per
//! size and storage).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_engine::checkpoint::{CheckpointLocation, Checkpointer, RestoreFetch, new_job_name};
use cairn_engine::{
    BackendKind, CairnConfig, KeyGroupRange, Slot, StateDescriptor, StateKind, VoidNamespace,
};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::bench_files::BenchFiles;
use crate::stream::payload_into;

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Key groups of the benchmark's job (one slot owns them all).
const MAX_P: u32 = 128;

/// `cairn bench restore` flags.
#[derive(Debug, Args)]
pub struct RestoreBenchArgs {
    /// State sizes, GB (10^9 bytes of values), comma-separated.
    #[arg(long, default_value = "0.2,1.7")]
    pub sizes: String,
    /// Value size in bytes (incompressible payload).
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Records processed after each restore (read-modify-write of random keys).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Alternated rounds (one eager and one lazy restore each) per size and storage.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Also checkpoint to and restore from this store (e.g. `s3://bucket/prefix`, configured
    /// by the `AWS_*` environment variables and `CAIRN_S3_ENDPOINT` as for `cairn
    /// checkpoints`); nothing written there is removed afterwards.
    #[arg(long)]
    pub s3_url: Option<String>,
    /// Skip the `file://` storage (with `--s3-url`: S3 only).
    #[arg(long)]
    pub no_file: bool,
    /// `checkpoint.transfer-threads` of the restores (eager: parallel downloads; lazy: fetch
    /// threads, one of them only for files RocksDB waits for).
    #[arg(long, default_value_t = 4)]
    pub transfer_threads: u32,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "restore-bench")]
    pub out: PathBuf,
    /// Measure nothing: redraw `<out>.svg` from the `<out>.json` of an earlier run.
    #[arg(long)]
    pub replot: bool,
}

/// One timed restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    size_gb: f64,
    storage: String,
    mode: String,
    round: u32,
    /// Checkpointed SST and private bytes of the state.
    state_bytes: u64,
    open_ms: f64,
    first_record_ms: f64,
    records_ms: f64,
    records_per_s: f64,
    /// Lazy: records done after the first one before the slot was fully local (checked every
    /// 1000 records), and their rate: the throughput while the background fetch runs.
    #[serde(default)]
    records_while_fetching: u64,
    records_per_s_while_fetching: Option<f64>,
    local_ms: f64,
    /// Bytes still to fetch when the records were processed (0 for eager).
    pending_bytes_at_records: u64,
    /// Fetches a RocksDB access waited for (lazy).
    demand_fetches: u64,
    /// Fetches the database's open waited for (lazy; the mode's point is 0).
    open_fetches: u64,
    /// Lazy: reads served from storage (ranges of files not yet local) until the first
    /// record was done (RocksDB's background opening of table readers included).
    first_record_range_reads: u64,
    /// Their bytes.
    first_record_range_bytes: u64,
    /// Their summed latency, ms (reads on several threads overlap).
    first_record_range_ms: f64,
    /// Lazy: range reads in the whole restore, and their bytes.
    range_reads: u64,
    range_read_bytes: u64,
}

/// Medians of one size, storage and mode.
#[derive(Debug, Serialize, Deserialize)]
struct Median {
    size_gb: f64,
    storage: String,
    mode: String,
    open_ms: f64,
    first_record_ms: f64,
    records_ms: f64,
    records_per_s: f64,
    local_ms: f64,
    /// Lazy only: its records per second over eager's (fully local) at this size and storage.
    throughput_vs_eager: Option<f64>,
    /// Lazy only: its records per second while the background fetch ran over eager's.
    fetching_vs_eager: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Output {
    transfer_threads: u32,
    value_size: usize,
    records: u64,
    rounds: u32,
    medians: Vec<Median>,
    rows: Vec<Row>,
}

fn config(work: &Path, storage: &str, fetch: RestoreFetch, threads: u32) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.state.working_dir = work.to_path_buf();
    cfg.checkpoint.dir = storage.to_string();
    cfg.checkpoint.interval = None;
    cfg.checkpoint.restore_fetch = fetch;
    cfg.checkpoint.transfer_threads = threads;
    cfg.checkpoint.storage = crate::checkpoints_cmd::storage_options();
    cfg
}

fn desc() -> StateDescriptor {
    StateDescriptor::new("bench", "value", StateKind::Value)
}

fn parse_sizes(s: &str) -> BResult<Vec<f64>> {
    s.split(',')
        .map(|v| {
            let g: f64 = v.trim().parse()?;
            if !(g > 0.0 && g <= 64.0) {
                return Err(format!("size {v:?}: expected GB in (0, 64]").into());
            }
            Ok(g)
        })
        .collect()
}

/// Runs `cairn bench restore`.
pub fn run(a: &RestoreBenchArgs) -> BResult<()> {
    if a.replot {
        let files = BenchFiles::new(&a.out)?;
        let json = files.path(".json");
        let bytes = std::fs::read(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        let output: Output =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", json.display()))?;
        plot(&files.svg(), &output)?;
        println!("wrote {}", files.svg().display());
        return Ok(());
    }
    let sizes = parse_sizes(&a.sizes)?;
    if a.value_size < 16 || a.records == 0 {
        return Err("--value-size must be >= 16 and --records > 0".into());
    }
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let mut storages = Vec::new();
    if !a.no_file {
        storages.push((
            "file".to_string(),
            format!("file://{}", tmp.path().join("checkpoints").display()),
        ));
    }
    if let Some(u) = &a.s3_url {
        storages.push((
            "s3".into(),
            format!(
                "{}/restore-bench-{}",
                u.trim_end_matches('/'),
                std::process::id()
            ),
        ));
    }
    let mut rows = Vec::new();
    for &size in &sizes {
        let keys = ((size * 1e9) / a.value_size as f64).max(1.0) as u64;
        for (storage, url) in &storages {
            eprintln!(
                "{size} GB ({keys} keys x {} B) into {storage}...",
                a.value_size
            );
            let t = Instant::now();
            let (job_url, state_bytes) = load(&tmp.path().join("load"), url, keys, a.value_size)?;
            eprintln!(
                "  loaded and checkpointed in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            for round in 0..a.rounds {
                let order = if round % 2 == 0 {
                    [RestoreFetch::Eager, RestoreFetch::Lazy]
                } else {
                    [RestoreFetch::Lazy, RestoreFetch::Eager]
                };
                for fetch in order {
                    let work = tmp.path().join(format!("restore-{round}"));
                    let mut row = restore_once(&work, url, &job_url, fetch, keys, a)?;
                    let _ = std::fs::remove_dir_all(&work);
                    row.size_gb = size;
                    row.storage = storage.clone();
                    row.round = round;
                    row.state_bytes = state_bytes;
                    eprintln!(
                        "  round {round} {:5}: open {:>8.1} ms, first record {:>8.1} ms ({} range reads, {} B, {:.1} ms), {} records {:>8.0} ms ({:>7.0}/s; {} while fetching, {:>7.0}/s), local {:>8.0} ms",
                        row.mode,
                        row.open_ms,
                        row.first_record_ms,
                        row.first_record_range_reads,
                        row.first_record_range_bytes,
                        row.first_record_range_ms,
                        a.records,
                        row.records_ms,
                        row.records_per_s,
                        row.records_while_fetching,
                        row.records_per_s_while_fetching.unwrap_or(0.0),
                        row.local_ms
                    );
                    rows.push(row);
                }
            }
            if storage == "file" {
                // The file:// checkpoints go; S3 objects stay (see `--s3-url`).
                let _ = std::fs::remove_dir_all(tmp.path().join("checkpoints"));
            }
        }
    }
    let medians = medians(&rows);
    println!(
        "{} B values, {} records after each restore; medians of {} alternated rounds",
        a.value_size, a.records, a.rounds
    );
    println!(
        "size GB  storage  mode    open ms  1st record ms  records ms  records/s  local ms  vs eager  fetching vs eager"
    );
    for m in &medians {
        println!(
            "{:>7}  {:7}  {:5}  {:>8.1}  {:>13.1}  {:>10.0}  {:>9.0}  {:>8.0}  {:>8}  {}",
            m.size_gb,
            m.storage,
            m.mode,
            m.open_ms,
            m.first_record_ms,
            m.records_ms,
            m.records_per_s,
            m.local_ms,
            m.throughput_vs_eager
                .map_or(String::new(), |r| format!("{r:.2}")),
            m.fetching_vs_eager
                .map_or(String::new(), |r| format!("{r:.2}"))
        );
    }
    let output = Output {
        transfer_threads: a.transfer_threads,
        value_size: a.value_size,
        records: a.records,
        rounds: a.rounds,
        medians,
        rows,
    };
    let files = BenchFiles::new(&a.out)?;
    files.write_all(&output, &output.rows, |svg| plot(svg, &output))?;
    Ok(())
}

/// Loads `keys` values into one slot working below `work`, checkpoints it into `storage`,
/// and removes the slot: the job's URL and the checkpoint's full size.
fn load(work: &Path, storage: &str, keys: u64, value_size: usize) -> BResult<(String, u64)> {
    let cfg = config(work, storage, RestoreFetch::Eager, 4);
    let mut slot = Slot::builder(&cfg).open()?;
    let id = slot.register(&desc())?;
    let mut buf = Vec::new();
    for k in 0..keys {
        payload_into(&mut buf, k, value_size);
        let scope = slot.scope(&k, &VoidNamespace)?;
        slot.put(id, &scope, &buf)?;
    }
    // Compacted like a long-running job's state (a few large bottom-level files).
    slot.compact_state()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let chk = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(chk)?;
    let report = cp.complete(chk, vec![sync])?;
    let url = format!("{}/chk-{chk}", cp.job_url());
    drop(slot);
    drop(cp);
    let _ = std::fs::remove_dir_all(work);
    Ok((url, report.full_bytes))
}

/// A stream of keys over `0..keys` (splitmix64 of a counter): every record a random key.
fn key(i: u64, keys: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) % keys
}

/// One record: read the key's value, change a byte, write it back.
fn record(slot: &mut Slot, id: cairn_engine::StateId, k: u64) -> BResult<()> {
    let scope = slot.scope(&k, &VoidNamespace)?;
    let mut v = slot.get(id, &scope)?.ok_or("a loaded key is missing")?;
    if let Some(b) = v.last_mut() {
        *b = b.wrapping_add(1);
    }
    slot.put(id, &scope, &v)?;
    Ok(())
}

/// Restores `job_url` with `fetch` below `work` and times it (see the module doc).
fn restore_once(
    work: &Path,
    storage: &str,
    job_url: &str,
    fetch: RestoreFetch,
    keys: u64,
    a: &RestoreBenchArgs,
) -> BResult<Row> {
    let cfg = config(work, storage, fetch, a.transfer_threads);
    let t = Instant::now();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(job_url)?)?;
    let range = KeyGroupRange::for_slot(MAX_P, 1, 0)?;
    let (files, _) = cp.download_slot_files(&restored, range, &work.join("restore-slot"))?;
    let mut slot = Slot::builder(&cfg).restore(files).open()?;
    let id = slot.register(&desc())?;
    let open_ms = ms(t);
    record(&mut slot, id, key(0, keys))?;
    let first_record_ms = ms(t);
    let first = slot.lazy_progress();
    // Lazy: when the background fetch finished, if it did while the records ran (checked
    // every 1000 records).
    let mut local_at = (fetch == RestoreFetch::Eager).then_some(open_ms);
    // Lazy: the records done after the first one while the fetch ran (all of them when it
    // outlasted the records).
    let mut while_fetching = 0;
    for i in 1..a.records {
        record(&mut slot, id, key(i, keys))?;
        if local_at.is_none()
            && i % 1000 == 0
            && slot.lazy_progress().is_some_and(|p| p.pending_files == 0)
        {
            local_at = Some(ms(t));
            while_fetching = i;
        }
    }
    let records_ms = ms(t);
    if fetch == RestoreFetch::Lazy && local_at.is_none() {
        while_fetching = a.records - 1;
    }
    let fetching_ms = local_at.unwrap_or(records_ms) - first_record_ms;
    let progress = slot.lazy_progress();
    slot.wait_local()?;
    let local_ms = local_at.unwrap_or_else(|| ms(t));
    let done = slot.lazy_progress();
    drop(slot);
    drop(cp);
    Ok(Row {
        size_gb: 0.0,
        storage: String::new(),
        mode: match fetch {
            RestoreFetch::Eager => "eager".into(),
            RestoreFetch::Lazy => "lazy".into(),
        },
        round: 0,
        state_bytes: 0,
        open_ms,
        first_record_ms,
        records_ms,
        records_per_s: (a.records - 1) as f64 / ((records_ms - first_record_ms) / 1000.0).max(1e-9),
        records_while_fetching: while_fetching,
        records_per_s_while_fetching: (while_fetching > 0)
            .then(|| while_fetching as f64 / (fetching_ms / 1000.0).max(1e-9)),
        local_ms,
        pending_bytes_at_records: progress.as_ref().map_or(0, |p| p.pending_bytes),
        demand_fetches: done.as_ref().map_or(0, |p| p.demand_fetches),
        open_fetches: done.as_ref().map_or(0, |p| p.open_fetches),
        first_record_range_reads: first.as_ref().map_or(0, |p| p.range_reads),
        first_record_range_bytes: first.as_ref().map_or(0, |p| p.range_read_bytes),
        first_record_range_ms: first.as_ref().map_or(0.0, |p| p.range_read_ms),
        range_reads: done.as_ref().map_or(0, |p| p.range_reads),
        range_read_bytes: done.as_ref().map_or(0, |p| p.range_read_bytes),
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn medians(rows: &[Row]) -> Vec<Median> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut keys: Vec<(f64, String)> = Vec::new();
    for r in rows {
        if !keys
            .iter()
            .any(|(s, st)| *s == r.size_gb && *st == r.storage)
        {
            keys.push((r.size_gb, r.storage.clone()));
        }
    }
    let mut out = Vec::new();
    for (size, storage) in keys {
        let mut eager_rate = None;
        for mode in ["eager", "lazy"] {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|r| r.size_gb == size && r.storage == storage && r.mode == mode)
                .collect();
            let m = |f: fn(&Row) -> f64| median(of.iter().map(|r| f(r)).collect());
            let rate = m(|r| r.records_per_s);
            if mode == "eager" {
                eager_rate = Some(rate);
            }
            out.push(Median {
                size_gb: size,
                storage: storage.clone(),
                mode: mode.into(),
                open_ms: m(|r| r.open_ms),
                first_record_ms: m(|r| r.first_record_ms),
                records_ms: m(|r| r.records_ms),
                records_per_s: rate,
                local_ms: m(|r| r.local_ms),
                throughput_vs_eager: (mode == "lazy")
                    .then(|| eager_rate.map(|e| rate / e.max(f64::MIN_POSITIVE)))
                    .flatten(),
                fetching_vs_eager: {
                    let fetching: Vec<f64> = of
                        .iter()
                        .filter_map(|r| r.records_per_s_while_fetching)
                        .collect();
                    (mode == "lazy" && !fetching.is_empty())
                        .then(|| eager_rate.map(|e| median(fetching) / e.max(f64::MIN_POSITIVE)))
                        .flatten()
                },
            });
        }
    }
    out
}

/// Per size and storage, eager's and lazy's median time to the first record (ms).
fn plot(path: &Path, out: &Output) -> BResult<()> {
    let lazy: Vec<&Median> = out.medians.iter().filter(|m| m.mode == "lazy").collect();
    let eager: Vec<&Median> = out.medians.iter().filter(|m| m.mode == "eager").collect();
    let groups: Vec<String> = lazy
        .iter()
        .map(|m| format!("{} GB, {}", m.size_gb, m.storage))
        .collect();
    crate::chart::grouped_bars(
        path,
        &format!(
            "restore: ms until the slot accepts records / until {} records are processed",
            out.records
        ),
        &groups,
        &[
            ("eager: open", eager.iter().map(|m| m.open_ms).collect()),
            ("lazy: open", lazy.iter().map(|m| m.open_ms).collect()),
            (
                "eager: records done",
                eager.iter().map(|m| m.records_ms).collect(),
            ),
            (
                "lazy: records done",
                lazy.iter().map(|m| m.records_ms).collect(),
            ),
            (
                "lazy: fully local",
                lazy.iter().map(|m| m.local_ms).collect(),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::parse_sizes;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_sizes("0.2, 1.7").unwrap(), vec![0.2, 1.7]);
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("x").is_err());
    }
}
