//! `cairn bench savepoint`: writing and restoring a savepoint (canonical and native) against a
//! checkpoint of the same state, alternated in one run.
//!
//! The state: `--keys` keys of `--value-size` bytes (default: the Flink comparison's 8,000,000 x
//! 200 B) in `--slots` RocksDB slots, loaded once. Each round, in an order that rotates:
//! - **checkpoint**: a full checkpoint of the live slots into a new job (everything uploaded),
//!   timed from the trigger to the commit; then that checkpoint is restored into as many slots,
//!   timed until every slot is open;
//! - **canonical** / **native**: a savepoint written from that checkpoint
//!   ([`cairn_engine::savepoint::create_savepoint`]), then restored the same way.
//!
//! Writes `<out>.json` (medians and rows), `<out>.csv` (rows) and `<out>.svg` (write and restore
//! medians per format).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_engine::checkpoint::{CheckpointLocation, Checkpointer, new_job_name};
use cairn_engine::savepoint::{SavepointKind, SavepointLocation, create_savepoint};
use cairn_engine::{
    BackendKind, CairnConfig, KeyGroupRange, Slot, StateDescriptor, StateKind, VoidNamespace,
    slot_for_key,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::bench_files::BenchFiles;
use crate::stream::payload_into;

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Key groups of the benchmark's jobs.
const MAX_P: u32 = 128;

/// The three ways the state is written and restored, in the first round's order.
const FORMATS: [&str; 3] = ["checkpoint", "canonical", "native"];

/// `cairn bench savepoint` flags.
#[derive(Debug, Args)]
pub struct SavepointBenchArgs {
    /// Keys of the state.
    #[arg(long, default_value_t = 8_000_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Slots (RocksDB) holding the state, and restoring it.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Rounds; each writes and restores every format once, in a rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "savepoint-bench")]
    pub out: PathBuf,
}

/// One format's write and restore in one round.
#[derive(Debug, Clone, Serialize)]
struct Row {
    format: &'static str,
    round: u32,
    /// Checkpoint: trigger to commit of a full checkpoint; savepoint: writing it from the
    /// committed checkpoint. ms.
    write_ms: f64,
    /// Bytes stored.
    stored_bytes: u64,
    /// Until every slot was open, ms.
    restore_ms: f64,
}

/// One format's medians, and their ratio to the checkpoint's.
#[derive(Debug, Serialize)]
struct Medians {
    format: &'static str,
    write_ms: f64,
    restore_ms: f64,
    stored_bytes: u64,
    write_vs_checkpoint: f64,
    restore_vs_checkpoint: f64,
}

#[derive(Debug, Serialize)]
struct Output {
    keys: u64,
    value_size: usize,
    slots: u32,
    rounds: u32,
    medians: Vec<Medians>,
    rows: Vec<Row>,
}

fn config(root: &Path) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.state.working_dir = root.join("work");
    cfg.checkpoint.dir = format!("file://{}", root.join("checkpoints").display());
    cfg.checkpoint.interval = None;
    cfg
}

/// Runs `cairn bench savepoint`.
pub fn run(a: &SavepointBenchArgs) -> BResult<()> {
    if a.slots == 0 || a.slots > MAX_P || a.rounds == 0 {
        return Err(format!("--slots 1..={MAX_P} and --rounds >= 1").into());
    }
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let cfg = config(tmp.path());
    let bar = ProgressBar::new(1 + u64::from(a.rounds) * FORMATS.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    )?);
    bar.set_message(format!("loading {} keys into {} slots", a.keys, a.slots));
    let mut slots = load(&cfg, &tmp.path().join("load"), a)?;
    bar.inc(1);
    let mut rows = Vec::new();
    for round in 0..a.rounds {
        // The checkpoint every format of the round starts from (savepoints are made from it).
        let mut order = FORMATS;
        order.rotate_left(round as usize % FORMATS.len());
        let mut checkpoint: Option<(String, f64, u64)> = None;
        for format in order {
            bar.set_message(format!("round {}: {format}", round + 1));
            let (url, write_ms, stored) = match checkpoint.clone() {
                Some(c) => c,
                None => {
                    let c = full_checkpoint(&cfg, &mut slots)?;
                    checkpoint = Some(c.clone());
                    c
                }
            };
            let row = match format {
                "checkpoint" => Row {
                    format,
                    round,
                    write_ms,
                    stored_bytes: stored,
                    restore_ms: restore(&cfg, &url, a.slots, &tmp.path().join("restore"))?,
                },
                savepoint => {
                    let kind = if savepoint == "canonical" {
                        SavepointKind::Canonical
                    } else {
                        SavepointKind::Native
                    };
                    let sp = format!(
                        "file://{}/sp-{round}-{savepoint}",
                        tmp.path().join("savepoints").display()
                    );
                    let t = Instant::now();
                    let report = create_savepoint(
                        &cfg,
                        &CheckpointLocation::parse(&url)?,
                        &SavepointLocation::parse(&sp)?,
                        kind,
                    )?;
                    let write_ms = t.elapsed().as_secs_f64() * 1000.0;
                    let restore_ms = restore(&cfg, &sp, a.slots, &tmp.path().join("restore"))?;
                    std::fs::remove_dir_all(
                        tmp.path()
                            .join("savepoints")
                            .join(format!("sp-{round}-{savepoint}")),
                    )?;
                    Row {
                        format,
                        round,
                        write_ms,
                        stored_bytes: report.stored_bytes,
                        restore_ms,
                    }
                }
            };
            rows.push(row);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut medians: Vec<Medians> = FORMATS
        .iter()
        .map(|&f| {
            let of = || rows.iter().filter(move |r| r.format == f);
            Medians {
                format: f,
                write_ms: median(of().map(|r| r.write_ms).collect()),
                restore_ms: median(of().map(|r| r.restore_ms).collect()),
                stored_bytes: of().map(|r| r.stored_bytes).max().unwrap_or(0),
                write_vs_checkpoint: 0.0,
                restore_vs_checkpoint: 0.0,
            }
        })
        .collect();
    let (cw, cr) = (
        medians[0].write_ms.max(f64::MIN_POSITIVE),
        medians[0].restore_ms.max(f64::MIN_POSITIVE),
    );
    for m in &mut medians {
        m.write_vs_checkpoint = m.write_ms / cw;
        m.restore_vs_checkpoint = m.restore_ms / cr;
    }
    println!(
        "{} keys x {} B in {} RocksDB slots; medians of {} rounds (order rotating)",
        a.keys, a.value_size, a.slots, a.rounds
    );
    println!("format        write ms  x ckpt   restore ms  x ckpt      stored");
    for m in &medians {
        println!(
            "{:<12} {:>9.0}  {:>6.2}   {:>10.0}  {:>6.2}   {:>9.1} MiB",
            m.format,
            m.write_ms,
            m.write_vs_checkpoint,
            m.restore_ms,
            m.restore_vs_checkpoint,
            m.stored_bytes as f64 / (1 << 20) as f64
        );
    }
    let output = Output {
        keys: a.keys,
        value_size: a.value_size,
        slots: a.slots,
        rounds: a.rounds,
        medians,
        rows,
    };
    let files = BenchFiles::new(&a.out)?;
    files.write_json(&output)?;
    files.write_csv(&output.rows)?;
    crate::chart::grouped_bars(
        &files.svg(),
        &format!(
            "median ms ({} keys x {} B, {} slots, {} rounds)",
            a.keys, a.value_size, a.slots, a.rounds
        ),
        &FORMATS.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        &[
            ("write", output.medians.iter().map(|m| m.write_ms).collect()),
            (
                "restore",
                output.medians.iter().map(|m| m.restore_ms).collect(),
            ),
        ],
    )?;
    files.announce();
    Ok(())
}

/// Opens `a.slots` slots below `work` and loads the state into them.
fn load(cfg: &CairnConfig, work: &Path, a: &SavepointBenchArgs) -> BResult<Vec<Slot>> {
    let n = a.slots;
    let mut slots = (0..n)
        .map(|i| {
            let mut c = cfg.clone();
            c.state.working_dir = work.join(format!("slot-{i}"));
            Slot::builder(&c).slot(i, n).open()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let desc = StateDescriptor::new("bench", "value", StateKind::Value);
    let ids = slots
        .iter_mut()
        .map(|s| s.register(&desc))
        .collect::<Result<Vec<_>, _>>()?;
    let mut buf = Vec::new();
    for k in 0..a.keys {
        let i = slot_for_key(&k, MAX_P, n)? as usize;
        payload_into(&mut buf, k, a.value_size);
        let scope = slots[i].scope(&k, &VoidNamespace)?;
        slots[i].put(ids[i], &scope, &buf)?;
    }
    Ok(slots)
}

/// A full checkpoint of `slots` into a new job: (its URL, trigger to commit in ms, bytes).
fn full_checkpoint(cfg: &CairnConfig, slots: &mut [Slot]) -> BResult<(String, f64, u64)> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let t = Instant::now();
    let id = cp.trigger_checkpoint();
    let syncs = slots
        .iter_mut()
        .map(|s| s.snapshot_for_checkpoint(id))
        .collect::<Result<Vec<_>, _>>()?;
    let report = cp.complete(id, syncs)?;
    Ok((
        cp.job_url(),
        t.elapsed().as_secs_f64() * 1000.0,
        report.full_bytes,
    ))
}

/// Restores `url` (checkpoint or savepoint) into `n` slots below `work` until every slot is
/// open; ms.
fn restore(cfg: &CairnConfig, url: &str, n: u32, work: &Path) -> BResult<f64> {
    let t = Instant::now();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    let mut slots = Vec::new();
    for i in 0..n {
        let mut c = cfg.clone();
        c.state.working_dir = work.join(format!("slot-{i}"));
        let (files, _) = cp.download_slot_files(
            &restored,
            KeyGroupRange::for_slot(MAX_P, n, i)?,
            &c.state.working_dir.join("restore"),
        )?;
        slots.push(Slot::builder(&c).slot(i, n).restore(files).open()?);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(slots);
    cp.abandon();
    let _ = std::fs::remove_dir_all(work);
    Ok(ms)
}
