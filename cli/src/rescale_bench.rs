//! `cairn bench rescale`: restoring a RocksDB checkpoint into another number of slots against
//! restoring the same checkpoint into its own number of slots, alternated in one run, and what
//! the first checkpoint after each restore uploads.
//!
//! The state: `--keys` keys of `--value-size` bytes (default: the Flink comparison's 8,000,000 x
//! 200 B), loaded and checkpointed once per source slot count of `--cases` (default
//! `1:2,2:1,4:3`: 1 -> 2, 2 -> 1, 4 -> 3). Per case, `--rounds` pairs alternate a rescaling
//! restore (N -> M) with a same-parallelism restore (N -> N) of the same checkpoint, each timed
//! until every slot is open (download with sha256 verification, open, and for a rescale the
//! merge and clip), each followed by one checkpoint whose uploaded bytes are recorded. Writes
//! `<out>.json` (cases and rows), `<out>.csv` (rows) and `<out>.svg` (restore times).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_engine::checkpoint::{CheckpointLocation, Checkpointer, new_job_name};
use cairn_engine::{
    BackendKind, CairnConfig, KeyGroupRange, RescalePath, Slot, StateDescriptor, StateKind,
    VoidNamespace, slot_for_key,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::bench_files::BenchFiles;
use crate::stream::payload_into;

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Key groups of the benchmark's jobs.
const MAX_P: u32 = 128;

/// `cairn bench rescale` flags.
#[derive(Debug, Args)]
pub struct RescaleBenchArgs {
    /// Keys of the state.
    #[arg(long, default_value_t = 8_000_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Cases, comma-separated `N:M` (restore a checkpoint of N slots into M).
    #[arg(long, default_value = "1:2,2:1,4:3")]
    pub cases: String,
    /// Alternated pairs (rescale, same parallelism) per case.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Output prefix: writes `<out>.json`, `<out>.csv` and `<out>.svg`.
    #[arg(long, default_value = "rescale-bench")]
    pub out: PathBuf,
}

/// One timed restore and the checkpoint after it.
#[derive(Debug, Clone, Serialize)]
struct Row {
    from: u32,
    to: u32,
    round: u32,
    /// Until every slot was open, ms.
    restore_ms: f64,
    /// Bytes downloaded.
    downloaded_bytes: u64,
    /// Bytes the first checkpoint after the restore uploaded.
    first_checkpoint_uploaded_bytes: u64,
    /// How the new slots got their key groups: `base`, `ingest`, `insert` counts over parts.
    parts_base: u32,
    parts_ingest: u32,
    parts_insert: u32,
}

/// A case's medians.
#[derive(Debug, Serialize)]
struct Case {
    from: u32,
    to: u32,
    rescale_ms_median: f64,
    same_parallelism_ms_median: f64,
    /// `rescale_ms_median / same_parallelism_ms_median` (goal <= 1.2; Flink: 2.2, 1.9 in
    /// ingest mode).
    ratio: f64,
    /// The first checkpoint after the rescale: uploaded bytes over the state's checkpointed
    /// bytes (goal <= 0.05; Flink: 2.0).
    first_checkpoint_upload_share: f64,
}

#[derive(Debug, Serialize)]
struct Output {
    keys: u64,
    value_size: usize,
    state_bytes: Vec<(u32, u64)>,
    cases: Vec<Case>,
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

fn parse_cases(s: &str) -> BResult<Vec<(u32, u32)>> {
    s.split(',')
        .map(|c| {
            let (n, m) = c
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("case {c:?}: expected N:M"))?;
            let (n, m): (u32, u32) = (n.parse()?, m.parse()?);
            if !(1..=MAX_P).contains(&n) || !(1..=MAX_P).contains(&m) {
                return Err(format!("case {c:?}: slot counts are 1..={MAX_P}").into());
            }
            Ok((n, m))
        })
        .collect()
}

/// Runs `cairn bench rescale`.
pub fn run(a: &RescaleBenchArgs) -> BResult<()> {
    let cases = parse_cases(&a.cases)?;
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let cfg = config(tmp.path());
    let mut sources: Vec<u32> = cases.iter().map(|c| c.0).collect();
    sources.sort_unstable();
    sources.dedup();
    let bar = ProgressBar::new((sources.len() as u32 + cases.len() as u32 * a.rounds * 2) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    )?);
    let mut urls = Vec::new();
    let mut state_bytes = Vec::new();
    for &n in &sources {
        bar.set_message(format!("loading {} keys into {n} slots", a.keys));
        let (url, bytes) = load(&cfg, &tmp.path().join(format!("load-{n}")), n, a)?;
        urls.push((n, url));
        state_bytes.push((n, bytes));
        bar.inc(1);
    }
    let mut rows = Vec::new();
    for &(n, m) in &cases {
        let url = &urls.iter().find(|(k, _)| *k == n).ok_or("loaded")?.1;
        for round in 0..a.rounds {
            let order = if round % 2 == 0 { [m, n] } else { [n, m] };
            for to in order {
                bar.set_message(format!("{n} -> {to}, round {}", round + 1));
                let work = tmp.path().join(format!("restore-{n}-{to}-{round}"));
                let row = restore_and_checkpoint(&cfg, url, n, to, round, &work)?;
                let _ = std::fs::remove_dir_all(&work);
                rows.push(row);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut out_cases = Vec::new();
    for &(n, m) in &cases {
        let of = |to: u32| rows.iter().filter(move |r| r.from == n && r.to == to);
        let mut rescale: Vec<f64> = of(m).map(|r| r.restore_ms).collect();
        let mut same: Vec<f64> = of(n).map(|r| r.restore_ms).collect();
        let mut uploaded: Vec<f64> = of(m)
            .map(|r| r.first_checkpoint_uploaded_bytes as f64)
            .collect();
        let state = state_bytes
            .iter()
            .find(|(k, _)| *k == n)
            .map_or(1, |s| s.1.max(1)) as f64;
        let (r, s) = (median(&mut rescale), median(&mut same));
        out_cases.push(Case {
            from: n,
            to: m,
            rescale_ms_median: r,
            same_parallelism_ms_median: s,
            ratio: r / s.max(f64::MIN_POSITIVE),
            first_checkpoint_upload_share: median(&mut uploaded) / state,
        });
    }
    println!(
        "{} keys x {} B; medians of {} alternated rounds",
        a.keys, a.value_size, a.rounds
    );
    println!("case     rescale ms   same ms   ratio   1st checkpoint uploads");
    for c in &out_cases {
        println!(
            "{} -> {}   {:>10.0}   {:>7.0}   {:>5.2}   {:>6.2} % of the state",
            c.from,
            c.to,
            c.rescale_ms_median,
            c.same_parallelism_ms_median,
            c.ratio,
            c.first_checkpoint_upload_share * 100.0
        );
    }
    let output = Output {
        keys: a.keys,
        value_size: a.value_size,
        state_bytes,
        cases: out_cases,
        rows,
    };
    let files = BenchFiles::new(&a.out)?;
    files.write_all(&output, &output.rows, |svg| plot(svg, &output))?;
    Ok(())
}

/// Loads the state into `n` slots below `work` and checkpoints it: the job's URL and the
/// checkpoint's full size.
fn load(cfg: &CairnConfig, work: &Path, n: u32, a: &RescaleBenchArgs) -> BResult<(String, u64)> {
    let mut slots = open_slots(cfg, work, n, |_| None)?;
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
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let report = checkpoint(&mut cp, &mut slots)?;
    Ok((cp.job_url(), report.full_bytes))
}

/// `n` slots of a job, each working below `work`, opened with `restore(i)`'s files.
fn open_slots(
    cfg: &CairnConfig,
    work: &Path,
    n: u32,
    mut restore: impl FnMut(u32) -> Option<cairn_engine::RestoredFiles>,
) -> BResult<Vec<Slot>> {
    (0..n)
        .map(|i| {
            let mut c = cfg.clone();
            c.state.working_dir = work.join(format!("slot-{i}"));
            let mut b = Slot::builder(&c).slot(i, n);
            if let Some(files) = restore(i) {
                b = b.restore(files);
            }
            Ok(b.open()?)
        })
        .collect()
}

/// Restores `url` (a checkpoint of `from` slots) into `to` slots below `work` until every slot
/// is open, then checkpoints once.
fn restore_and_checkpoint(
    cfg: &CairnConfig,
    url: &str,
    from: u32,
    to: u32,
    round: u32,
    work: &Path,
) -> BResult<Row> {
    let t = Instant::now();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    let mut downloaded = 0;
    let mut files = Vec::new();
    for i in 0..to {
        let dest = work.join(format!("restore-{i}"));
        let (f, bytes) =
            cp.download_slot_files(&restored, KeyGroupRange::for_slot(MAX_P, to, i)?, &dest)?;
        downloaded += bytes;
        files.push(Some(f));
    }
    let mut slots = open_slots(cfg, work, to, |i| files[i as usize].take())?;
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (mut base, mut ingest, mut insert) = (0, 0, 0);
    for s in &slots {
        for p in s
            .rescale_report()
            .map(|r| r.parts.as_slice())
            .unwrap_or(&[])
        {
            match p.path {
                RescalePath::Base => base += 1,
                RescalePath::Ingest => ingest += 1,
                RescalePath::Insert => insert += 1,
            }
        }
    }
    let report = checkpoint(&mut cp, &mut slots)?;
    Ok(Row {
        from,
        to,
        round,
        restore_ms,
        downloaded_bytes: downloaded,
        first_checkpoint_uploaded_bytes: report.incremental_bytes,
        parts_base: base,
        parts_ingest: ingest,
        parts_insert: insert,
    })
}

/// One checkpoint of every slot.
fn checkpoint(
    cp: &mut Checkpointer,
    slots: &mut [Slot],
) -> BResult<cairn_engine::checkpoint::CheckpointReport> {
    let id = cp.trigger_checkpoint();
    let syncs = slots
        .iter_mut()
        .map(|s| s.snapshot_for_checkpoint(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cp.complete(id, syncs)?)
}

/// Per case, the median rescaling restore next to the median same-parallelism restore, ms.
fn plot(path: &Path, out: &Output) -> BResult<()> {
    let groups: Vec<String> = out
        .cases
        .iter()
        .map(|c| format!("{} -> {} (same: {} -> {})", c.from, c.to, c.from, c.from))
        .collect();
    crate::chart::grouped_bars(
        path,
        &format!(
            "restore until every slot is open, ms ({} keys x {} B)",
            out.keys, out.value_size
        ),
        &groups,
        &[
            (
                "rescaling restore",
                out.cases.iter().map(|c| c.rescale_ms_median).collect(),
            ),
            (
                "same-parallelism restore",
                out.cases
                    .iter()
                    .map(|c| c.same_parallelism_ms_median)
                    .collect(),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::parse_cases;

    #[test]
    fn cases_parse() {
        assert_eq!(parse_cases("1:2, 2:1").unwrap(), vec![(1, 2), (2, 1)]);
        assert!(parse_cases("1-2").is_err());
        assert!(parse_cases("0:2").is_err());
    }
}
