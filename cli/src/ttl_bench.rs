//! `cairn bench ttl`: what state TTL does to a churning keyed state over many checkpoints
//! (RocksDB backend), with TTL against without it, in one run.
//!
//! Workload: every interval writes `--keys-per-interval` new keys of `--value-size` bytes (a
//! session id, a dedup key: keys that are never touched again), advances the slot's manual
//! clock by one interval and checkpoints (`retained = 1`, file storage). With TTL the state is
//! registered with a TTL of `--ttl-intervals` intervals (Flink's defaults: update on create and
//! write, never return expired, the RocksDB compaction filter on); without TTL it is a plain
//! value state. RocksDB compacts on its own (Cairn's default universal compaction), so what
//! the filter drops, and when, is what a job would see.
//!
//! Per checkpoint it records the bytes uploaded, the bytes the checkpoint references (what a
//! restore downloads), the bytes in checkpoint storage (a listing), the state's live SST bytes
//! and RocksDB's key estimate. The expectation: with TTL they stay flat (bounded by the TTL
//! window and compaction's space amplification), without it they grow with the keys written.
//!
//! Writes `<out>.json` (summary + rows), `<out>.csv` (rows) and `<out>.svg` (plot).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::checkpoint::{Checkpointer, new_job_name};
use cairn_engine::{
    BackendKind, CairnConfig, Slot, StateDescriptor, StateKind, StateTtlConfig, VoidNamespace,
};
use cairn_timers::ManualClock;
use clap::Args;
use serde::Serialize;

use crate::bench_files::BenchFiles;
use crate::stream::payload_into;

/// `cairn bench ttl` flags.
#[derive(Debug, Args)]
pub struct TtlBenchArgs {
    /// New keys written per interval (never touched again).
    #[arg(long, default_value_t = 20_000)]
    pub keys_per_interval: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Intervals, one checkpoint after each.
    #[arg(long, default_value_t = 100)]
    pub checkpoints: u32,
    /// The TTL, in intervals: with TTL, the state holds about this many intervals' keys.
    #[arg(long, default_value_t = 5)]
    pub ttl_intervals: u32,
    /// Processing time per interval, ms (the slot's manual clock; the run itself is not slowed).
    #[arg(long, default_value_t = 60_000)]
    pub interval_ms: u64,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "ttl-bench")]
    pub out: PathBuf,
}

/// One checkpoint of one variant.
#[derive(Debug, Default, Serialize)]
struct Row {
    variant: String,
    checkpoint: u64,
    /// Keys written so far.
    keys_written: u64,
    /// Keys a read still returns (written within the TTL; all without TTL).
    keys_visible: u64,
    /// Bytes sent by this checkpoint (new files, private files, metadata).
    uploaded_bytes: u64,
    /// Bytes this checkpoint references: what a restore downloads.
    checkpoint_bytes: u64,
    /// Bytes under the job directory in checkpoint storage (listing).
    stored_bytes: u64,
    /// Live SST bytes of the state's column family (`rocksdb.live-sst-files-size`).
    sst_bytes: u64,
    /// RocksDB's `rocksdb.estimate-num-keys` of the state.
    estimate_keys: u64,
    sync_ms: f64,
    async_ms: f64,
}

/// Totals of one variant.
#[derive(Debug, Default, Serialize)]
struct Summary {
    variant: String,
    checkpoints: u32,
    wall_s: f64,
    uploaded_bytes_total: u64,
    /// Means over the first and the last quarter of the checkpoints after the first TTL
    /// window (the warm-up): equal when flat.
    uploaded_bytes_mean_early: f64,
    uploaded_bytes_mean_late: f64,
    checkpoint_bytes_mean_early: f64,
    checkpoint_bytes_mean_late: f64,
    checkpoint_bytes_max: u64,
    sst_bytes_mean_late: f64,
    sst_bytes_max: u64,
    stored_bytes_last: u64,
    estimate_keys_last: u64,
    /// The visible keys' raw size (keys x value size) at the end, for scale.
    visible_bytes_last: u64,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    keys_per_interval: u64,
    value_size: usize,
    ttl_intervals: u32,
    interval_ms: u64,
    summary: Vec<Summary>,
    rows: &'a [Row],
}

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The two variants of the run.
const VARIANTS: [&str; 2] = ["ttl", "no-ttl"];

/// Runs `cairn bench ttl`.
pub fn run(a: &TtlBenchArgs) -> BResult<()> {
    if a.checkpoints == 0 || a.ttl_intervals == 0 || a.interval_ms == 0 {
        return Err("--checkpoints, --ttl-intervals and --interval-ms must be >= 1".into());
    }
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for variant in VARIANTS {
        eprintln!("{variant}: {} checkpoints...", a.checkpoints);
        let t = Instant::now();
        let start = rows.len();
        let root = tmp.path().join(variant);
        run_variant(a, variant == "ttl", &root, &mut rows)?;
        let mut s = summarize(a, variant, &rows[start..]);
        s.wall_s = t.elapsed().as_secs_f64();
        summary.push(s);
        let _ = std::fs::remove_dir_all(&root);
    }
    print_summary(a, &summary);
    let out = Output {
        keys_per_interval: a.keys_per_interval,
        value_size: a.value_size,
        ttl_intervals: a.ttl_intervals,
        interval_ms: a.interval_ms,
        summary,
        rows: &rows,
    };
    let files = BenchFiles::new(&a.out)?;
    files.write_all(&out, &rows, |svg| plot(svg, a, &rows))?;
    Ok(())
}

fn run_variant(a: &TtlBenchArgs, with_ttl: bool, root: &Path, rows: &mut Vec<Row>) -> BResult<()> {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = root.join("work");
    cfg.checkpoint.dir = root.join("checkpoints").display().to_string();
    let t0 = 1_000_000_000i64;
    let clock = Arc::new(ManualClock::new(t0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), slot.max_parallelism())?;
    let ttl = StateTtlConfig::builder(Duration::from_millis(
        a.interval_ms * u64::from(a.ttl_intervals),
    ))
    .build()?;
    let mut desc = StateDescriptor::new("bench", "sessions", StateKind::Value);
    if with_ttl {
        desc = desc.with_ttl(ttl);
    }
    let state = slot.register(&desc)?;
    let mut buf = Vec::new();
    let mut written = 0u64;
    let variant = if with_ttl { "ttl" } else { "no-ttl" };
    let prop = |slot: &Slot, name: &str| slot.backend().native_property(name).unwrap_or(0);
    for round in 0..a.checkpoints {
        for _ in 0..a.keys_per_interval {
            payload_into(&mut buf, written, a.value_size);
            let scope = slot.scope(&written, &VoidNamespace)?;
            slot.put(state, &scope, &buf)?;
            written += 1;
        }
        clock.set(t0 + i64::from(round + 1) * a.interval_ms as i64);
        let id = cp.trigger_checkpoint();
        let sync = slot.snapshot_for_checkpoint(id)?;
        let rep = cp.complete(id, vec![sync])?;
        let (_, stored) = cp.block_on(cp.store().stored_totals())?;
        // Keys written in the last `ttl_intervals` intervals are unexpired at the new time
        // (written at t, expired from t + ttl on).
        let visible = if with_ttl {
            written.min(a.keys_per_interval * u64::from(a.ttl_intervals.saturating_sub(1)))
        } else {
            written
        };
        rows.push(Row {
            variant: variant.into(),
            checkpoint: id,
            keys_written: written,
            keys_visible: visible,
            uploaded_bytes: rep.incremental_bytes,
            checkpoint_bytes: rep.full_bytes,
            stored_bytes: stored,
            sst_bytes: prop(&slot, "rocksdb.live-sst-files-size"),
            estimate_keys: prop(&slot, "rocksdb.estimate-num-keys"),
            sync_ms: rep.sync_ms,
            async_ms: rep.async_ms,
        });
        if round % 10 == 9 {
            let r = rows.last().map_or(0, |r| r.checkpoint_bytes);
            eprintln!(
                "  {variant} checkpoint {id}: {written} keys written, checkpoint {:.1} MB",
                r as f64 / 1e6
            );
        }
    }
    // Reads agree with the TTL: the oldest key is gone with TTL, there without.
    let scope = slot.scope(&0u64, &VoidNamespace)?;
    let oldest = slot.get(state, &scope)?;
    if oldest.is_some() == (with_ttl && a.checkpoints > a.ttl_intervals) {
        return Err(format!("{variant}: key 0 reads {:?}", oldest.map(|v| v.len())).into());
    }
    Ok(())
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn summarize(a: &TtlBenchArgs, variant: &str, rows: &[Row]) -> Summary {
    // After the first TTL window; the first and the last quarter of the rest.
    let warm = &rows[(a.ttl_intervals as usize).min(rows.len().saturating_sub(1))..];
    let q = (warm.len() / 4).max(1);
    let (early, late) = (&warm[..q], &warm[warm.len() - q..]);
    let last = rows.last();
    Summary {
        variant: variant.into(),
        checkpoints: rows.len() as u32,
        uploaded_bytes_total: rows.iter().map(|r| r.uploaded_bytes).sum(),
        uploaded_bytes_mean_early: mean(early.iter().map(|r| r.uploaded_bytes as f64)),
        uploaded_bytes_mean_late: mean(late.iter().map(|r| r.uploaded_bytes as f64)),
        checkpoint_bytes_mean_early: mean(early.iter().map(|r| r.checkpoint_bytes as f64)),
        checkpoint_bytes_mean_late: mean(late.iter().map(|r| r.checkpoint_bytes as f64)),
        checkpoint_bytes_max: rows.iter().map(|r| r.checkpoint_bytes).max().unwrap_or(0),
        sst_bytes_mean_late: mean(late.iter().map(|r| r.sst_bytes as f64)),
        sst_bytes_max: rows.iter().map(|r| r.sst_bytes).max().unwrap_or(0),
        stored_bytes_last: last.map_or(0, |r| r.stored_bytes),
        estimate_keys_last: last.map_or(0, |r| r.estimate_keys),
        visible_bytes_last: last.map_or(0, |r| r.keys_visible * a.value_size as u64),
        ..Summary::default()
    }
}

fn print_summary(a: &TtlBenchArgs, summary: &[Summary]) {
    println!(
        "\nstate TTL: {} new keys x {} B per interval, TTL {} intervals, {} checkpoints (retained 1); early/late = first/last quarter after the first TTL window",
        a.keys_per_interval, a.value_size, a.ttl_intervals, a.checkpoints
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>8}",
        "variant",
        "upl early",
        "upl late",
        "chk early",
        "chk late",
        "chk max",
        "sst late",
        "visible",
        "upl total",
        "wall s"
    );
    let mb = |b: f64| b / 1e6;
    for s in summary {
        println!(
            "{:>8} {:>8.1}MB {:>8.1}MB {:>8.1}MB {:>8.1}MB {:>8.1}MB {:>8.1}MB {:>8.1}MB {:>9.1}MB {:>8.1}",
            s.variant,
            mb(s.uploaded_bytes_mean_early),
            mb(s.uploaded_bytes_mean_late),
            mb(s.checkpoint_bytes_mean_early),
            mb(s.checkpoint_bytes_mean_late),
            mb(s.checkpoint_bytes_max as f64),
            mb(s.sst_bytes_mean_late),
            mb(s.visible_bytes_last as f64),
            mb(s.uploaded_bytes_total as f64),
            s.wall_s
        );
    }
}

/// Three panels over the checkpoints, one line per variant: checkpoint size (what it
/// references), uploaded bytes per checkpoint, live SST bytes; the visible keys' raw size is a
/// dashed line in the first panel.
fn plot(path: &Path, a: &TtlBenchArgs, rows: &[Row]) -> BResult<()> {
    use crate::chart::{Line, Panel};
    let lines = |f: &dyn Fn(&Row) -> f64| -> Vec<Line> {
        VARIANTS
            .iter()
            .map(|v| Line {
                name: v.to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.variant == *v)
                    .map(|r| (r.checkpoint, f(r) / 1e6))
                    .collect(),
                dashed: false,
            })
            .collect()
    };
    let mut checkpoint = lines(&|r| r.checkpoint_bytes as f64);
    checkpoint.push(Line {
        name: "unexpired keys x value size (ttl)".into(),
        points: rows
            .iter()
            .filter(|r| r.variant == "ttl")
            .map(|r| {
                (
                    r.checkpoint,
                    (r.keys_visible * a.value_size as u64) as f64 / 1e6,
                )
            })
            .collect(),
        dashed: true,
    });
    let title = format!(
        "{} new keys x {} B per interval, TTL {} intervals",
        a.keys_per_interval, a.value_size, a.ttl_intervals
    );
    crate::chart::line_panels(
        path,
        "checkpoint",
        &[
            Panel {
                caption: format!("{title}: checkpoint size (bytes it references), MB"),
                lines: checkpoint,
            },
            Panel {
                caption: "uploaded per checkpoint, MB".into(),
                lines: lines(&|r| r.uploaded_bytes as f64),
            },
            Panel {
                caption: "live SST bytes of the state, MB".into(),
                lines: lines(&|r| r.sst_bytes as f64),
            },
        ],
    )?;
    Ok(())
}
