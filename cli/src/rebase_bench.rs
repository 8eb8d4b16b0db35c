//! `cairn bench rebase`: what each rebase policy (`checkpoint.rebase.*`) does to storage,
//! uploads and restores over a long churn, and local against remote restore, in one run.
//!
//! Workload: `--keys` live keys of `--value-size` bytes as a sliding window (stream state with a
//! retention): every interval deletes the oldest `--delete-percent` of the keys, inserts as many
//! new ones and overwrites `--update-percent` of the live keys at random, then checkpoints
//! (`retained = 1`). Each policy in `--policies` runs the same workload from scratch. Per
//! checkpoint it records the bytes uploaded, the bytes the checkpoint references (what a restore
//! downloads), the shared bytes the retained checkpoints reference, and the bytes and objects
//! in the store (a listing: what storage bills). Every `--restore-every` checkpoints it restores
//! the latest checkpoint twice into fresh directories until the slot is open: from storage
//! (verified download) and from the slot's local snapshot (`local-recovery`, verified).
//!
//! Writes `<out>.json` (summary + rows), `<out>.csv` (rows) and `<out>.svg` (plot).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_engine::checkpoint::{
    CheckpointLocation, Checkpointer, RebaseConfig, RestoredVia, new_job_name,
};
use cairn_engine::{BackendKind, CairnConfig, KeyGroupRange, Slot, StateDescriptor, StateKind};
use clap::Args;
use serde::Serialize;

use crate::bench_files::BenchFiles;
use crate::stream::payload_into;

/// `cairn bench rebase` flags.
#[derive(Debug, Args)]
pub struct RebaseBenchArgs {
    /// Live keys.
    #[arg(long, default_value_t = 200_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Cold keys: written once before the first checkpoint and never touched again (state that
    /// compaction rarely rewrites, where file age and full uploads matter).
    #[arg(long, default_value_t = 0)]
    pub cold_keys: u64,
    /// Checkpoints per policy.
    #[arg(long, default_value_t = 100)]
    pub checkpoints: u32,
    /// Live keys overwritten per interval, percent.
    #[arg(long, default_value_t = 10.0)]
    pub update_percent: f64,
    /// Oldest keys deleted (and as many new keys inserted) per interval, percent.
    #[arg(long, default_value_t = 5.0)]
    pub delete_percent: f64,
    /// Restore (remote and local) every this many checkpoints (0 = never).
    #[arg(long, default_value_t = 10)]
    pub restore_every: u32,
    /// Policies, comma-separated: `off`, `every-n:<N>`, `space-amp:<X>`, `file-age:<duration>`.
    #[arg(
        long,
        default_value = "off,every-n:10,space-amp:1.5,space-amp:2,space-amp:3,file-age:3s"
    )]
    pub policies: String,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Checkpoint storage root [default: a directory in the work dir]. A directory on another
    /// filesystem (e.g. under /dev/shm) makes remote restores copy instead of hard-linking.
    #[arg(long, conflicts_with = "storage_url")]
    pub storage: Option<PathBuf>,
    /// Checkpoint storage URL instead (e.g. `s3://bucket/prefix`, configured by the `AWS_*`
    /// environment variables and `CAIRN_S3_ENDPOINT` as for `cairn checkpoints`); each policy
    /// writes below `<url>/<policy>-<pid>`, and nothing there is removed afterwards.
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "rebase-bench")]
    pub out: PathBuf,
}

/// One checkpoint of one policy.
#[derive(Debug, Default, Serialize)]
struct Row {
    policy: String,
    checkpoint: u64,
    /// Bytes sent by this checkpoint (new files, private files, metadata).
    uploaded_bytes: u64,
    /// Bytes this checkpoint references: what a restore downloads.
    restore_bytes: u64,
    /// Shared bytes the retained checkpoints reference (registry).
    referenced_bytes: u64,
    /// Bytes under the job directory (listing).
    stored_bytes: u64,
    stored_objects: usize,
    space_amplification: f64,
    files_reuploaded: u64,
    rebase: String,
    compaction_ms: f64,
    sync_ms: f64,
    async_ms: f64,
    /// Restore from storage until the slot is open, ms (restore checkpoints only).
    restore_remote_ms: Option<f64>,
    /// Restore from the local snapshot until the slot is open, ms.
    restore_local_ms: Option<f64>,
}

/// Totals of one policy.
#[derive(Debug, Default, Serialize)]
struct PolicySummary {
    policy: String,
    checkpoints: u32,
    rebases: u32,
    wall_s: f64,
    uploaded_bytes_total: u64,
    /// Means over the second half of the run (after the warm-up).
    stored_bytes_mean: f64,
    stored_bytes_max: u64,
    referenced_bytes_mean: f64,
    restore_bytes_mean: f64,
    restore_remote_ms_mean: f64,
    restore_local_ms_mean: f64,
    /// Mean referenced / live-data estimate over the second half.
    space_amplification_mean: f64,
    /// Time the slot was stopped for rebase compactions, ms in total.
    compaction_ms_total: f64,
    /// Longest synchronous pause, ms.
    sync_ms_max: f64,
    /// Ratios against the `off` policy of the same run (1.0 for `off` itself).
    stored_over_off: f64,
    uploaded_over_off: f64,
    restore_bytes_over_off: f64,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    keys: u64,
    cold_keys: u64,
    value_size: usize,
    update_percent: f64,
    delete_percent: f64,
    storage: String,
    summary: Vec<PolicySummary>,
    rows: &'a [Row],
}

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

fn parse_policy(spec: &str) -> BResult<RebaseConfig> {
    let mut r = RebaseConfig::off();
    let (kind, value) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "off" => {}
        "every-n" => r.every_n_checkpoints = value.parse()?,
        "space-amp" => r.max_space_amplification = Some(value.parse()?),
        "file-age" => r.max_file_age = Some(humantime::parse_duration(value)?),
        _ => {
            return Err(format!(
                "policy {spec:?}: expected off, every-n:<N>, space-amp:<X> or file-age:<duration>"
            )
            .into());
        }
    }
    r.validate()?;
    Ok(r)
}

/// Runs `cairn bench rebase`.
pub fn run(a: &RebaseBenchArgs) -> BResult<()> {
    let policies: Vec<(String, RebaseConfig)> = a
        .policies
        .split(',')
        .map(|p| Ok((p.trim().to_string(), parse_policy(p.trim())?)))
        .collect::<BResult<_>>()?;
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let storage_tmp = match &a.storage {
        Some(s) => {
            std::fs::create_dir_all(s)?;
            Some(tempfile::tempdir_in(s)?)
        }
        None => None,
    };
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for (name, policy) in &policies {
        let root = tmp.path().join(name.replace(':', "-"));
        let dir_name = name.replace(':', "-");
        let storage = match (&storage_tmp, &a.storage_url) {
            (_, Some(url)) => format!(
                "{}/{dir_name}-{}",
                url.trim_end_matches('/'),
                std::process::id()
            ),
            (Some(t), None) => t.path().join(&dir_name).display().to_string(),
            (None, None) => root.join("checkpoints").display().to_string(),
        };
        eprintln!("policy {name}: {} checkpoints...", a.checkpoints);
        let t = Instant::now();
        let start = rows.len();
        run_policy(a, name, policy, &root, &storage, &mut rows)?;
        let mut s = summarize(name, &rows[start..]);
        s.wall_s = t.elapsed().as_secs_f64();
        summary.push(s);
        let _ = std::fs::remove_dir_all(&root);
        if a.storage_url.is_none() {
            let _ = std::fs::remove_dir_all(&storage);
        }
    }
    if let Some(off) = summary.iter().find(|s| s.policy == "off").map(|s| {
        (
            s.stored_bytes_mean,
            s.uploaded_bytes_total as f64,
            s.restore_bytes_mean,
        )
    }) {
        for s in &mut summary {
            s.stored_over_off = s.stored_bytes_mean / off.0.max(1.0);
            s.uploaded_over_off = s.uploaded_bytes_total as f64 / off.1.max(1.0);
            s.restore_bytes_over_off = s.restore_bytes_mean / off.2.max(1.0);
        }
    }
    print_summary(a, &summary);
    let out = Output {
        keys: a.keys,
        cold_keys: a.cold_keys,
        value_size: a.value_size,
        update_percent: a.update_percent,
        delete_percent: a.delete_percent,
        storage: match (&a.storage, &a.storage_url) {
            (_, Some(url)) => url.clone(),
            (Some(_), None) => "file storage on another filesystem (restore copies)".into(),
            (None, None) => "file storage on the working filesystem (restore hard-links)".into(),
        },
        summary,
        rows: &rows,
    };
    let files = BenchFiles::new(&a.out)?;
    files.write_all(&out, &rows, |svg| plot(svg, &policies, &rows))?;
    Ok(())
}

/// First id of the cold keys (far from the sliding window's ids).
const COLD_BASE: u64 = 1 << 48;

/// A small deterministic generator (xorshift64*), so every policy sees the same churn.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn run_policy(
    a: &RebaseBenchArgs,
    name: &str,
    policy: &RebaseConfig,
    root: &Path,
    storage: &str,
    rows: &mut Vec<Row>,
) -> BResult<()> {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = root.join("work");
    cfg.checkpoint.dir = storage.to_string();
    cfg.checkpoint.storage = crate::checkpoints_cmd::storage_options();
    cfg.checkpoint.rebase = policy.clone();
    cfg.checkpoint.local_recovery = true;
    let mut slot = Slot::builder(&cfg).open()?;
    let max_p = slot.max_parallelism();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), max_p)?;
    let state = slot.register(&StateDescriptor::new("bench", "value", StateKind::Value))?;
    let mut buf = Vec::new();
    for k in COLD_BASE..COLD_BASE + a.cold_keys {
        payload_into(&mut buf, k, a.value_size);
        let scope = slot.scope(&k, &cairn_engine::VoidNamespace)?;
        slot.put(state, &scope, &buf)?;
    }
    let (mut lo, mut hi) = (0u64, a.keys);
    for k in lo..hi {
        payload_into(&mut buf, k, a.value_size);
        let scope = slot.scope(&k, &cairn_engine::VoidNamespace)?;
        slot.put(state, &scope, &buf)?;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let turnover = (a.keys as f64 * a.delete_percent / 100.0) as u64;
    let updates = (a.keys as f64 * a.update_percent / 100.0) as u64;
    for round in 0..a.checkpoints {
        if round > 0 {
            for k in lo..lo + turnover {
                let scope = slot.scope(&k, &cairn_engine::VoidNamespace)?;
                slot.clear(state, &scope)?;
            }
            lo += turnover;
            for k in hi..hi + turnover {
                payload_into(&mut buf, k, a.value_size);
                let scope = slot.scope(&k, &cairn_engine::VoidNamespace)?;
                slot.put(state, &scope, &buf)?;
            }
            hi += turnover;
            for _ in 0..updates {
                let k = lo + rng.next() % (hi - lo);
                payload_into(&mut buf, k ^ (u64::from(round) << 40), a.value_size);
                let scope = slot.scope(&k, &cairn_engine::VoidNamespace)?;
                slot.put(state, &scope, &buf)?;
            }
        }
        let compaction_ms = cp.compact_if_due(&mut slot)?.map_or(0.0, |s| s.ms);
        let id = cp.trigger_checkpoint();
        let sync = slot.snapshot_for_checkpoint(id)?;
        let rep = cp.complete(id, vec![sync])?;
        let (_, referenced) = cp.store().referenced_totals()?;
        let (objects, stored) = cp.block_on(cp.store().stored_totals())?;
        let mut row = Row {
            policy: name.to_string(),
            checkpoint: id,
            uploaded_bytes: rep.incremental_bytes,
            restore_bytes: rep.full_bytes,
            referenced_bytes: referenced,
            stored_bytes: stored,
            stored_objects: objects,
            space_amplification: rep.space_amplification,
            files_reuploaded: rep.files_reuploaded,
            rebase: rep.rebase.clone().unwrap_or_default(),
            compaction_ms,
            sync_ms: rep.sync_ms,
            async_ms: rep.async_ms,
            ..Row::default()
        };
        if a.restore_every > 0 && (round + 1).is_multiple_of(a.restore_every) {
            let (remote, local) = restore_both(&cfg, &cp, id, slot.working_dir(), root)?;
            row.restore_remote_ms = Some(remote);
            row.restore_local_ms = Some(local);
        }
        rows.push(row);
    }
    Ok(())
}

/// Restores checkpoint `id` from storage and from the local snapshot under `slot_dir`, each
/// into a fresh directory until the slot is open; returns (remote ms, local ms).
fn restore_both(
    cfg: &CairnConfig,
    cp: &Checkpointer,
    id: u64,
    slot_dir: &Path,
    root: &Path,
) -> BResult<(f64, f64)> {
    let source = CheckpointLocation::parse(&format!("{}/chk-{id}", cp.job_url()))?;
    let mut times = [0.0; 2];
    for (i, local) in [false, true].into_iter().enumerate() {
        let mut c = cfg.clone();
        c.checkpoint.local_recovery = local;
        let dir = root.join(if local {
            "restore-local"
        } else {
            "restore-remote"
        });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        let mut cp2 = Checkpointer::open(&c.checkpoint, &new_job_name(), 128)?;
        let restored = cp2.resume_from(&source)?;
        let range = KeyGroupRange::for_slot(restored.metadata.max_parallelism, 1, 0)?;
        let (files, report) =
            cp2.fetch_slot_files(&restored, range, slot_dir, &dir.join("dest"))?;
        let expected = if local {
            RestoredVia::Local
        } else {
            RestoredVia::Remote
        };
        if report.path != expected {
            return Err(format!("restore took {:?}: {report:?}", report.path).into());
        }
        let slot = Slot::builder(&c)
            .working_dir(dir.join("slot"))
            .restore(files)
            .open()?;
        times[i] = t.elapsed().as_secs_f64() * 1000.0;
        drop(slot);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok((times[0], times[1]))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn summarize(name: &str, rows: &[Row]) -> PolicySummary {
    let half = &rows[rows.len() / 2..];
    PolicySummary {
        policy: name.to_string(),
        checkpoints: rows.len() as u32,
        rebases: rows.iter().filter(|r| !r.rebase.is_empty()).count() as u32,
        uploaded_bytes_total: rows.iter().map(|r| r.uploaded_bytes).sum(),
        stored_bytes_mean: mean(half.iter().map(|r| r.stored_bytes as f64)),
        stored_bytes_max: rows.iter().map(|r| r.stored_bytes).max().unwrap_or(0),
        referenced_bytes_mean: mean(half.iter().map(|r| r.referenced_bytes as f64)),
        restore_bytes_mean: mean(half.iter().map(|r| r.restore_bytes as f64)),
        restore_remote_ms_mean: mean(rows.iter().filter_map(|r| r.restore_remote_ms)),
        restore_local_ms_mean: mean(rows.iter().filter_map(|r| r.restore_local_ms)),
        space_amplification_mean: mean(half.iter().map(|r| r.space_amplification)),
        compaction_ms_total: rows.iter().map(|r| r.compaction_ms).sum(),
        sync_ms_max: rows.iter().map(|r| r.sync_ms).fold(0.0, f64::max),
        ..PolicySummary::default()
    }
}

fn print_summary(a: &RebaseBenchArgs, summary: &[PolicySummary]) {
    println!(
        "\nrebase policies: {} live keys (+ {} cold) x {} B, {}% updated + {}% deleted/inserted per interval, retained 1 (means over the second half)",
        a.keys, a.cold_keys, a.value_size, a.update_percent, a.delete_percent
    );
    println!(
        "{:>14} {:>7} {:>6} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "policy",
        "rebases",
        "amp",
        "stored MB",
        "max MB",
        "restore MB",
        "uploaded MB",
        "stored/off",
        "upl/off",
        "remote ms",
        "local ms",
        "compact ms",
        "wall s"
    );
    for s in summary {
        println!(
            "{:>14} {:>7} {:>6.2} {:>10.1} {:>10.1} {:>10.1} {:>11.1} {:>9.3} {:>9.3} {:>9.1} {:>9.1} {:>9.0} {:>9.1}",
            s.policy,
            s.rebases,
            s.space_amplification_mean,
            s.stored_bytes_mean / 1e6,
            s.stored_bytes_max as f64 / 1e6,
            s.restore_bytes_mean / 1e6,
            s.uploaded_bytes_total as f64 / 1e6,
            s.stored_over_off,
            s.uploaded_over_off,
            s.restore_remote_ms_mean,
            s.restore_local_ms_mean,
            s.compaction_ms_total,
            s.wall_s
        );
    }
}

/// Three panels over the checkpoints, one line per policy: stored MB, cumulative uploaded MB,
/// restore MB.
fn plot(path: &Path, policies: &[(String, RebaseConfig)], rows: &[Row]) -> BResult<()> {
    use crate::chart::{Line, Panel};
    type Points = Vec<(u64, f64)>;
    let lines = |f: &dyn Fn(&[&Row]) -> Points| -> Vec<Line> {
        policies
            .iter()
            .map(|(name, _)| {
                let rs: Vec<&Row> = rows.iter().filter(|r| &r.policy == name).collect();
                Line {
                    name: name.clone(),
                    points: f(&rs),
                    dashed: false,
                }
            })
            .collect()
    };
    let stored = lines(&|rs| {
        rs.iter()
            .map(|r| (r.checkpoint, r.stored_bytes as f64 / 1e6))
            .collect()
    });
    let uploaded = lines(&|rs| {
        let mut acc = 0.0;
        rs.iter()
            .map(|r| {
                acc += r.uploaded_bytes as f64 / 1e6;
                (r.checkpoint, acc)
            })
            .collect()
    });
    let restore = lines(&|rs| {
        rs.iter()
            .map(|r| (r.checkpoint, r.restore_bytes as f64 / 1e6))
            .collect()
    });
    crate::chart::line_panels(
        path,
        "checkpoint",
        &[
            Panel {
                caption: "stored in checkpoint storage, MB (listing)".into(),
                lines: stored,
            },
            Panel {
                caption: "uploaded since start, MB".into(),
                lines: uploaded,
            },
            Panel {
                caption: "restore size (bytes the checkpoint references), MB".into(),
                lines: restore,
            },
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!(parse_policy("off").unwrap(), RebaseConfig::off());
        assert_eq!(parse_policy("every-n:7").unwrap().every_n_checkpoints, 7);
        assert_eq!(
            parse_policy("space-amp:2.5")
                .unwrap()
                .max_space_amplification,
            Some(2.5)
        );
        assert_eq!(
            parse_policy("file-age:10s").unwrap().max_file_age,
            Some(std::time::Duration::from_secs(10))
        );
        assert!(parse_policy("space-amp:0.5").is_err());
        assert!(parse_policy("weekly").is_err());
    }
}
