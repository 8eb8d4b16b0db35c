//! `cairn torture`: kill -9 rounds against checkpoint storage (a directory or S3).
//!
//! Each round starts a child `cairn run --workload update` that checkpoints every 200 ms,
//! continuing from the previous round's latest checkpoint, and kills it with SIGKILL at a
//! pseudo-random moment (seeded). Then:
//! 1. the round's latest committed checkpoint must verify deeply (every file re-hashed);
//! 2. restored, its counters must sum to the stream position it was taken at (the update
//!    workload adds exactly 1 per record), i.e. the restore holds exactly the committed state;
//! 3. orphan collection removes what the killed in-flight checkpoint uploaded, after which
//!    nothing under the job is unreferenced ("leaked") and the retained checkpoints verify.
//!
//! Checkpoints committed per round are counted exactly: ids run from the restored id + 1 to
//! the latest committed one, and each id in between either committed or was declined / failed,
//! which the child logs (its stderr goes to `<work>/child.log`).
//!
//! The same code backs `tests/crash_restore.rs` (20 rounds on the local directory and on the
//! loopback S3 server) and `scripts/torture.sh` (200+ rounds).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_engine::checkpoint::{Checkpointer, RestoreSource, new_job_name};
use cairn_engine::{BackendKind, CairnConfig, EngineError, KeyGroupRange, Slot, VoidNamespace};
use cairn_snapshot::{CheckpointStorage, CheckpointStore, SnapshotError, StorageOptions};
use clap::Args;
use serde::Serialize;

/// What a torture run needs.
#[derive(Clone, Debug)]
pub struct TortureOptions {
    /// The `cairn` binary the rounds start.
    pub binary: PathBuf,
    /// Checkpoint storage URL (`file:///dir`, `s3://bucket/prefix`).
    pub url: String,
    /// Storage options for the verifying side (the children read `AWS_*` from `child_env`).
    pub storage: StorageOptions,
    /// Extra environment of the children (e.g. the S3 endpoint).
    pub child_env: Vec<(String, String)>,
    /// Rounds.
    pub rounds: u32,
    /// Keys of the update workload.
    pub keys: u64,
    /// Local scratch directory (working directories, restores, child logs).
    pub work_dir: PathBuf,
    /// Seed of the kill moments.
    pub seed: u64,
    /// Kill moments fall in `[min_kill, min_kill + kill_spread)` after the start.
    pub min_kill: Duration,
    /// See `min_kill`.
    pub kill_spread: Duration,
}

/// The figures of a torture run (`cairn torture --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TortureReport {
    /// Storage URL.
    pub storage: String,
    /// Rounds run.
    pub rounds: u32,
    /// Rounds whose child committed at least one checkpoint before it was killed.
    pub rounds_with_commit: u32,
    /// Checkpoints committed over all rounds.
    pub committed_checkpoints: u64,
    /// Checkpoint ids declined or failed (not committed) before the last commit of a round.
    pub not_committed: u64,
    /// Latest checkpoints restored whose state matched their position exactly.
    pub restores_verified: u32,
    /// Files orphaned by killed in-flight checkpoints, collected by GC.
    pub orphans_collected: u64,
    /// Unreferenced files left after GC (must be 0).
    pub leaked_after_gc: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

/// Why a torture run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TortureError {
    /// The child could not be started or a local file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was done.
        op: String,
        /// The error.
        source: std::io::Error,
    },
    /// Restore or reading back state failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Checkpoint storage failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A guarantee did not hold: committed state lost or damaged, or files leaked.
    #[error("round {round}: {what}")]
    Violation {
        /// The round.
        round: u32,
        /// What went wrong.
        what: String,
    },
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> TortureError {
    let op = op.into();
    move |source| TortureError::Io { op, source }
}

/// splitmix64: the kill moments from the seed.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs the rounds; `progress` sees the report after each round. Stops at the first
/// violated guarantee.
pub fn run(
    o: &TortureOptions,
    mut progress: impl FnMut(u32, &TortureReport),
) -> Result<TortureReport, TortureError> {
    let t = Instant::now();
    std::fs::create_dir_all(&o.work_dir).map_err(io(format!("create {}", o.work_dir.display())))?;
    let storage = CheckpointStorage::from_url(&o.url, &o.storage)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start runtime"))?;
    let mut report = TortureReport {
        storage: o.url.clone(),
        ..TortureReport::default()
    };
    let mut previous: Option<(String, u64)> = None;
    let log = o.work_dir.join("child.log");
    for round in 0..o.rounds {
        let before: BTreeSet<String> = jobs(&rt, &storage)?;
        let mut cmd = Command::new(&o.binary);
        cmd.args(["run", "--workload", "update", "--records", "1000000000"])
            .args(["--keys", &o.keys.to_string()])
            .args(["--checkpoint-interval", "200ms", "--checkpoint-dir", &o.url])
            .arg("--working-dir")
            .arg(o.work_dir.join("work"))
            .env("RUST_LOG", "info")
            .envs(o.child_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(io("create child log"))?);
        if let Some((job, id)) = &previous {
            cmd.args(["--restore-from", &format!("{}/{job}/chk-{id}", o.url)]);
        }
        // Rotate the write-back state cache: the default, a tiny one that evicts and writes
        // back on nearly every record, and none.
        match round % 3 {
            1 => {
                cmd.args(["--state-cache-ratio", "0.0001", "--max-dirty-ratio", "0.5"]);
            }
            2 => {
                cmd.args(["--state-cache-ratio", "0"]);
            }
            _ => {}
        }
        let mut child = cmd.spawn().map_err(io("spawn cairn run"))?;
        let spread = o.kill_spread.as_millis().max(1) as u64;
        let delay = o.min_kill.as_millis() as u64 + mix64(o.seed ^ u64::from(round)) % spread;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().map_err(io("kill"))?; // SIGKILL
        child.wait().map_err(io("wait"))?;
        report.rounds = round + 1;

        let new_jobs: Vec<String> = jobs(&rt, &storage)?.difference(&before).cloned().collect();
        let Some(job) = new_jobs.first() else {
            progress(round, &report);
            continue; // killed before it created its job directory
        };
        let store = rt.block_on(CheckpointStore::open_read_only(storage.clone(), job))?;
        let ids = rt.block_on(store.committed_ids())?;
        let Some(&latest) = ids.last() else {
            progress(round, &report);
            continue; // killed before its first checkpoint committed
        };
        report.rounds_with_commit += 1;
        let first = previous.as_ref().map_or(1, |p| p.1 + 1);
        let skipped = not_committed(&log, first, latest)?;
        report.committed_checkpoints += (latest + 1).saturating_sub(first).saturating_sub(skipped);
        report.not_committed += skipped;
        let violation = |what: String| TortureError::Violation { round, what };
        let problems = rt.block_on(store.verify(&[latest], true))?;
        if !problems.is_empty() {
            return Err(violation(format!(
                "chk-{latest} does not verify: {problems:?}"
            )));
        }
        let meta = rt.block_on(store.load(latest))?;
        let position: u64 = meta
            .properties
            .get("position")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| violation(format!("chk-{latest} has no position property")))?;
        let sum = restored_sum(o, job, latest, round)?;
        if sum != position {
            return Err(violation(format!(
                "chk-{latest} restored counters sum to {sum}, its position is {position}"
            )));
        }
        report.restores_verified += 1;

        // Collect the killed in-flight checkpoint's uploads; then nothing may be unreferenced.
        let gc_store = rt.block_on(CheckpointStore::open(storage.clone(), job, usize::MAX))?;
        report.orphans_collected += rt
            .block_on(gc_store.gc(Duration::ZERO, true))?
            .orphans
            .len() as u64;
        let left = rt.block_on(gc_store.gc(Duration::ZERO, false))?;
        report.leaked_after_gc += left.orphans.len() as u64;
        if !left.orphans.is_empty() {
            return Err(violation(format!("leaked after GC: {:?}", left.orphans)));
        }
        let ids = rt.block_on(gc_store.committed_ids())?;
        let problems = rt.block_on(gc_store.verify(&ids, false))?;
        if !problems.is_empty() {
            return Err(violation(format!("after GC: {problems:?}")));
        }
        previous = Some((job.clone(), latest));
        progress(round, &report);
    }
    report.elapsed_s = t.elapsed().as_secs_f64();
    Ok(report)
}

/// Job directories under the storage root.
fn jobs(
    rt: &tokio::runtime::Runtime,
    storage: &CheckpointStorage,
) -> Result<BTreeSet<String>, TortureError> {
    Ok(rt
        .block_on(storage.list_dirs(storage.root()))?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// Checkpoint ids in `[first, last]` the child logged as declined or failed.
fn not_committed(log: &Path, first: u64, last: u64) -> Result<u64, TortureError> {
    let text = std::fs::read_to_string(log).map_err(io(format!("read {}", log.display())))?;
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        for (i, _) in line.match_indices("checkpoint ") {
            let rest = &line[i + "checkpoint ".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let after = &rest[digits.len()..];
            if let Ok(id) = digits.parse::<u64>()
                && (after.starts_with(" declined") || after.starts_with(" failed"))
                && (first..=last).contains(&id)
            {
                ids.insert(id);
            }
        }
    }
    Ok(ids.len() as u64)
}

/// Restores `job/chk-id` into a fresh slot and returns the sum of all counters.
fn restored_sum(o: &TortureOptions, job: &str, id: u64, round: u32) -> Result<u64, TortureError> {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = o.work_dir.join(format!("verify-work-{round}"));
    cfg.checkpoint.dir = format!("{}/verify-cp", o.work_dir.display());
    cfg.checkpoint.storage = o.storage.clone();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored =
        cp.prepare_restore(&RestoreSource::parse(&format!("{}/{job}/chk-{id}", o.url))?)?;
    std::fs::create_dir_all(&cfg.state.working_dir).map_err(io("create verify dir"))?;
    let (files, _) = cp.download_for_slot(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg.state.working_dir.join("restore"),
    )?;
    let mut slot = Slot::builder(&cfg).restore(files).open()?;
    let count = slot.value_state::<u64>("counter", "count")?;
    let mut sum = 0;
    for k in 0..o.keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        sum += count.get(&mut slot, &scope)?.unwrap_or(0);
    }
    drop(slot);
    drop(cp);
    std::fs::remove_dir_all(&cfg.state.working_dir).map_err(io("remove verify dir"))?;
    let _ = std::fs::remove_dir_all(o.work_dir.join("verify-cp"));
    Ok(sum)
}

/// `cairn torture` flags.
#[derive(Debug, Args)]
pub struct TortureArgs {
    /// Checkpoint storage: `file:///dir`, a plain path or `s3://bucket/prefix`. For S3 set the
    /// `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a local server,
    /// credentials); the child runs inherit them.
    #[arg(long)]
    pub checkpoint_dir: String,
    /// Rounds (kill -9 each).
    #[arg(long, default_value_t = 200)]
    pub rounds: u32,
    /// Keys of the update workload.
    #[arg(long, default_value_t = 5000)]
    pub keys: u64,
    /// Seed of the kill moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Local scratch directory [default: a temporary directory].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `cairn torture`: exit 0 when every round kept its guarantees.
pub fn command(args: TortureArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let tmp;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => match tempfile::tempdir() {
            Ok(t) => {
                tmp = t;
                tmp.path().to_path_buf()
            }
            Err(e) => {
                eprintln!("error: temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the cairn binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = TortureOptions {
        binary,
        url: args.checkpoint_dir.trim_end_matches('/').to_string(),
        storage: StorageOptions::default(),
        child_env: Vec::new(),
        rounds: args.rounds,
        keys: args.keys,
        work_dir,
        seed: args.seed,
        min_kill: Duration::from_millis(300),
        kill_spread: Duration::from_millis(1200),
    };
    let result = run(&opts, |round, r| {
        eprintln!(
            "round {:>4}: {} with commit, {} checkpoints committed, {} restores verified, {} orphans collected, {} leaked",
            round + 1,
            r.rounds_with_commit,
            r.committed_checkpoints,
            r.restores_verified,
            r.orphans_collected,
            r.leaked_after_gc
        );
    });
    match result {
        Ok(r) => {
            let json = serde_json::to_string_pretty(&r).unwrap_or_default();
            println!("{json}");
            if let Some(p) = &args.json
                && let Err(e) = std::fs::write(p, format!("{json}\n"))
            {
                eprintln!("error: write {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
