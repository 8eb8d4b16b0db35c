//! `cairn torture`: kill -9 rounds against checkpoint storage (a directory or S3).
//!
//! Each round starts a child `cairn run --workload update` that checkpoints every 200 ms,
//! continuing from the previous round's latest checkpoint, and kills it with SIGKILL at a
//! pseudo-random moment (seeded). Then:
//! 1. the round's latest committed checkpoint must verify deeply (every file re-hashed);
//! 2. restored, its counters must sum to the stream position it was taken at (the update
//!    workload adds exactly 1 per record), i.e. the restore holds exactly the committed state;
//! 3. orphan collection (Cairn's gc) removes what the killed in-flight checkpoint uploaded;
//!    then nothing under the job may be "leaked", and the retained checkpoints verify.
//!
//! Neither figure trusts Cairn's own account of itself:
//! - Committed checkpoints are counted from the store, not from the child's log: while the
//!   child runs, the job directory is listed every [`POLL_EVERY`] (the child checkpoints every
//!   200 ms and keeps one checkpoint, so each commit stays visible about one interval) and the
//!   ids of every `chk-<id>/_metadata` seen are collected, plus those present after the kill.
//!   A checkpoint committed and subsumed between two listings would go unseen, so the count is
//!   a lower bound; `max_poll_gap_ms` says how tight. The latest id ever seen must still be
//!   there after the kill (a committed checkpoint is never lost).
//! - Leaks are found by listing the store directly ([`StorageRoot::list`]) and, for a
//!   local directory, walking it with `std::fs`, which also finds the staging files
//!   (`<name>#<n>`) a killed upload leaves and the object-store listing skips. Legitimate are
//!   the objects the committed checkpoints' metadata references, every `chk-<id>/_metadata`,
//!   and everything under `_writers/`; anything else under the job is a leak. Cairn's gc is
//!   not asked.
//! - Every job a round created is checked, also when it was killed before its first commit
//!   (its uploads are orphans too), and all of them again after the last round.
//!
//! The child's stderr goes to `<work>/child.log` (kept for debugging, not read).
//!
//! The same code backs `cli/tests/crash_restore.rs` (20 rounds on the local directory and on the
//! loopback S3 server) and `scripts/torture.sh` (200+ rounds).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_engine::checkpoint::{CheckpointLocation, Checkpointer, new_job_name};
use cairn_engine::{BackendKind, CairnConfig, EngineError, KeyGroupRange, Slot, VoidNamespace};
use cairn_snapshot::object_layout::{ObjectKind, WRITERS_DIR};
use cairn_snapshot::{
    CheckpointStore, JobLayout, SnapshotError, StorageOptions, StorageRoot, gc as snapshot_gc,
};
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
    /// Extra arguments of the children's `cairn run` (e.g. `--restore-fetch lazy`).
    pub child_args: Vec<String>,
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
    /// Checkpoints committed over all rounds: distinct ids whose `_metadata` the store
    /// listings showed while the children ran or after they were killed (a lower bound, see
    /// the module doc).
    pub committed_checkpoints: u64,
    /// Checkpoint ids up to a round's latest commit never seen committed in the store
    /// (declined, failed, or committed and subsumed between two listings).
    pub not_committed: u64,
    /// Latest checkpoints restored whose state matched their position exactly.
    pub restores_verified: u32,
    /// Files orphaned by killed in-flight checkpoints, collected by GC.
    pub orphans_collected: u64,
    /// Objects and files left after GC that no committed checkpoint references, found by
    /// listing the store and walking a local directory (must be 0).
    pub leaked_after_gc: u64,
    /// Successful listings of the store while the children ran.
    pub store_polls: u64,
    /// Listings that failed (the next one counts instead).
    pub store_poll_errors: u64,
    /// Longest time between two successful listings, ms (the children checkpoint every
    /// 200 ms).
    pub max_poll_gap_ms: u64,
    /// Jobs checked for leaks after the last round.
    pub jobs_checked: u64,
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
    let storage = StorageRoot::from_url(&o.url, &o.storage)?;
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
    let mut created = Vec::new();
    let log = o.work_dir.join("child.log");
    for round in 0..o.rounds {
        let before: BTreeSet<String> = jobs(&rt, &storage)?;
        let polled = kill_round(o, &rt, &storage, round, previous.as_ref(), &before, &log)?;
        report.rounds = round + 1;
        report.store_polls += polled.polls;
        report.store_poll_errors += polled.errors;
        report.max_poll_gap_ms = report
            .max_poll_gap_ms
            .max(polled.max_gap.as_millis() as u64);

        let new_jobs: Vec<String> = jobs(&rt, &storage)?.difference(&before).cloned().collect();
        let Some(job) = new_jobs.first() else {
            progress(round, &report);
            continue; // killed before it created its job directory
        };
        created.push(job.clone());
        let store = rt.block_on(CheckpointStore::open_read_only(storage.clone(), job))?;
        let first = previous.as_ref().map_or(1, |p| p.1 + 1);
        let latest = count_commits(&rt, &store, &polled, first, round, &mut report)?;
        if let Some(latest) = latest {
            check_latest(o, &rt, &store, job, latest, round)?;
            report.restores_verified += 1;
        }
        collect_and_check(&rt, &storage, &o.url, job, round, &mut report)?;
        if let Some(latest) = latest {
            previous = Some((job.clone(), latest));
        }
        progress(round, &report);
    }
    // Later rounds must not have touched earlier jobs.
    for job in &created {
        let leaked = leaks(&rt, &storage, &o.url, job)?;
        report.leaked_after_gc += leaked.len() as u64;
        if !leaked.is_empty() {
            return Err(TortureError::Violation {
                round: o.rounds,
                what: format!("after the last round, {job} holds leaked files: {leaked:?}"),
            });
        }
        report.jobs_checked += 1;
    }
    report.elapsed_s = t.elapsed().as_secs_f64();
    Ok(report)
}

/// One round's child: started, its store listed every [`POLL_EVERY`] while it runs, killed
/// with SIGKILL at the round's moment. Returns what the listings saw.
fn kill_round(
    o: &TortureOptions,
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
    round: u32,
    previous: Option<&(String, u64)>,
    before: &BTreeSet<String>,
    log: &Path,
) -> Result<Polled, TortureError> {
    let mut child = child_command(o, round, previous, log)?
        .spawn()
        .map_err(io("spawn cairn run"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = rt.spawn(poll_store(storage.clone(), before.clone(), stop.clone()));
    let spread = o.kill_spread.as_millis().max(1) as u64;
    let delay = o.min_kill.as_millis() as u64 + mix64(o.seed ^ u64::from(round)) % spread;
    std::thread::sleep(Duration::from_millis(delay));
    let killed = child.kill().map_err(io("kill")); // SIGKILL
    let waited = child.wait().map_err(io("wait"));
    stop.store(true, Ordering::Relaxed);
    let polled = rt
        .block_on(poller)
        .map_err(|e| io("store poller")(std::io::Error::other(e)));
    killed?;
    waited?;
    polled
}

/// Counts the round's committed checkpoints: every id the listings saw while the child ran,
/// plus those committed after the kill. The latest one seen must still be committed. Returns
/// the latest committed id.
fn count_commits(
    rt: &tokio::runtime::Runtime,
    store: &CheckpointStore,
    polled: &Polled,
    first: u64,
    round: u32,
    report: &mut TortureReport,
) -> Result<Option<u64>, TortureError> {
    let ids = rt.block_on(store.committed_ids())?;
    let mut seen: BTreeSet<u64> = ids.iter().copied().collect();
    if polled.job.as_deref() == Some(store.layout().job()) {
        seen.extend(&polled.ids);
    }
    let latest = ids.last().copied();
    if let Some(&max_seen) = seen.last()
        && latest != Some(max_seen)
    {
        let after = latest.map_or("none".to_string(), |id| format!("chk-{id}"));
        return Err(TortureError::Violation {
            round,
            what: format!(
                "chk-{max_seen} was seen committed while the child ran; after the kill the latest committed checkpoint is {after}"
            ),
        });
    }
    if let Some(latest) = latest {
        report.rounds_with_commit += 1;
        report.committed_checkpoints += seen.len() as u64;
        report.not_committed += (first..=latest).filter(|id| !seen.contains(id)).count() as u64;
    }
    Ok(latest)
}

/// Runs Cairn's gc on the round's job (collecting the killed checkpoint's uploads and the
/// staging files of its killed writes), then checks by an independent listing that nothing is
/// leaked, and that the retained checkpoints still verify.
fn collect_and_check(
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
    url: &str,
    job: &str,
    round: u32,
    report: &mut TortureReport,
) -> Result<(), TortureError> {
    let violation = |what: String| TortureError::Violation { round, what };
    // As `cairn checkpoints gc` does: from outside any writer, no lease taken (the killed
    // child's lease has not expired yet).
    let jobs = [job.to_string()];
    let gc = rt.block_on(snapshot_gc::collect(
        storage,
        &jobs,
        Duration::ZERO,
        true,
        &|_| false,
    ))?;
    if !gc.damaged.is_empty() {
        return Err(violation(format!("damaged metadata: {:?}", gc.damaged)));
    }
    report.orphans_collected += gc.orphans.len() as u64;
    let leaked = leaks(rt, storage, url, job)?;
    report.leaked_after_gc += leaked.len() as u64;
    if !leaked.is_empty() {
        return Err(violation(format!("leaked after GC: {leaked:?}")));
    }
    let store = rt.block_on(CheckpointStore::open_read_only(storage.clone(), job))?;
    let ids = rt.block_on(store.committed_ids())?;
    let problems = rt.block_on(store.verify(&ids, false))?;
    if !problems.is_empty() {
        return Err(violation(format!("after GC: {problems:?}")));
    }
    Ok(())
}

/// The child of a round: `cairn run --workload update` checkpointing every 200 ms, continuing
/// from `previous` (job, checkpoint), its stderr to `log`.
fn child_command(
    o: &TortureOptions,
    round: u32,
    previous: Option<&(String, u64)>,
    log: &Path,
) -> Result<Command, TortureError> {
    let mut cmd = Command::new(&o.binary);
    cmd.args(["run", "--workload", "update", "--records", "1000000000"])
        .args(["--keys", &o.keys.to_string()])
        .args(["--checkpoint-interval", "200ms", "--checkpoint-dir", &o.url])
        .arg("--working-dir")
        .arg(o.work_dir.join("work"))
        .args(&o.child_args)
        .env("RUST_LOG", "info")
        .envs(o.child_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(io("create child log"))?);
    if let Some((job, id)) = previous {
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
    Ok(cmd)
}

/// The round's latest checkpoint verifies deeply and restores to exactly its position.
fn check_latest(
    o: &TortureOptions,
    rt: &tokio::runtime::Runtime,
    store: &CheckpointStore,
    job: &str,
    latest: u64,
    round: u32,
) -> Result<(), TortureError> {
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
    Ok(())
}

/// Job directories under the storage root.
fn jobs(
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
) -> Result<BTreeSet<String>, TortureError> {
    Ok(rt
        .block_on(storage.list_dirs(storage.root()))?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// How often the store is listed while a child runs: a tenth of its checkpoint interval.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// What the store listings saw while a child ran.
#[derive(Debug, Default)]
struct Polled {
    /// The child's job (the first job directory not there before it started).
    job: Option<String>,
    /// Ids of every `chk-<id>/_metadata` a listing showed.
    ids: BTreeSet<u64>,
    /// Successful listings.
    polls: u64,
    /// Failed listings.
    errors: u64,
    /// Longest time between the starts of two successful listings.
    max_gap: Duration,
}

/// Lists the store every [`POLL_EVERY`] until `stop`: first for the child's new job directory
/// (not in `before`), then for its committed checkpoints.
async fn poll_store(
    storage: StorageRoot,
    before: BTreeSet<String>,
    stop: Arc<AtomicBool>,
) -> Polled {
    let mut p = Polled::default();
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match poll_once(&storage, &before, &mut p).await {
            Ok(()) => {
                p.polls += 1;
                if let Some(l) = last {
                    p.max_gap = p.max_gap.max(start - l);
                }
                last = Some(start);
            }
            Err(_) => p.errors += 1,
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    p
}

async fn poll_once(
    storage: &StorageRoot,
    before: &BTreeSet<String>,
    p: &mut Polled,
) -> Result<(), SnapshotError> {
    if p.job.is_none() {
        p.job = storage
            .list_dirs(storage.root())
            .await?
            .iter()
            .filter_map(|d| d.filename())
            .find(|name| !before.contains(*name))
            .map(str::to_string);
    }
    if let Some(job) = &p.job {
        let layout = JobLayout::new(storage.root().clone(), job.as_str());
        for m in storage.list(&layout.job_dir()).await? {
            if let ObjectKind::Metadata(id) = layout.classify(&m.location) {
                p.ids.insert(id);
            }
        }
    }
    Ok(())
}

/// What is under `job` that no committed checkpoint accounts for (paths relative to the
/// storage root), by listing the store and, for a local directory, walking it (see the
/// module doc for what is legitimate).
fn leaks(
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
    url: &str,
    job: &str,
) -> Result<BTreeSet<String>, TortureError> {
    let layout = JobLayout::new(storage.root().clone(), job);
    let (refs, listed) = rt.block_on(async {
        let store = CheckpointStore::open_read_only(storage.clone(), job).await?;
        let mut refs = HashSet::new();
        for id in store.committed_ids().await? {
            for s in store.load(id).await?.slots {
                refs.extend(s.shared.into_iter().map(|f| f.object));
                refs.extend(s.private.into_iter().map(|f| f.object));
            }
        }
        let mut listed = Vec::new();
        for m in storage.list(&layout.job_dir()).await? {
            if let Some(parts) = m.location.prefix_match(storage.root()) {
                listed.push(
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
        Ok::<_, SnapshotError>((refs, listed))
    })?;
    let mut files = listed;
    if let Some(root) = local_root(url) {
        files.extend(walk_files(&root.join(job), job)?);
    }
    Ok(files
        .into_iter()
        .filter(|rel| !legitimate(&layout, &refs, rel))
        .collect())
}

/// Whether `rel` (relative to the storage root) is referenced by a committed checkpoint, is a
/// `chk-<id>/_metadata`, or is under `_writers/`.
fn legitimate(layout: &JobLayout, refs: &HashSet<String>, rel: &str) -> bool {
    if refs.contains(rel) {
        return true;
    }
    let path = layout.resolve(rel);
    let writers = layout.job_dir().join(WRITERS_DIR);
    matches!(layout.classify(&path), ObjectKind::Metadata(_))
        || path.prefix_match(&writers).is_some()
}

/// The local directory behind a `file://` URL or a plain path; `None` for other schemes.
fn local_root(url: &str) -> Option<PathBuf> {
    match url.strip_prefix("file://") {
        Some(p) => Some(PathBuf::from(p)),
        None if url.contains("://") => None,
        None => Some(PathBuf::from(url)),
    }
}

/// Every file under `dir`, as `/`-joined paths starting with `prefix`.
fn walk_files(dir: &Path, prefix: &str) -> Result<Vec<String>, TortureError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), prefix.to_string())];
    while let Some((d, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("read {}", d.display()))(e)),
        };
        for e in entries {
            let e = e.map_err(io(format!("read {}", d.display())))?;
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            let kind = e
                .file_type()
                .map_err(io(format!("stat {}", e.path().display())))?;
            if kind.is_dir() {
                stack.push((e.path(), name));
            } else {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Restores `job/chk-id` into a fresh slot and returns the sum of all counters.
fn restored_sum(o: &TortureOptions, job: &str, id: u64, round: u32) -> Result<u64, TortureError> {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = o.work_dir.join(format!("verify-work-{round}"));
    cfg.checkpoint.dir = format!("{}/verify-cp", o.work_dir.display());
    cfg.checkpoint.storage = o.storage.clone();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(&format!(
        "{}/{job}/chk-{id}",
        o.url
    ))?)?;
    std::fs::create_dir_all(&cfg.state.working_dir).map_err(io("create verify dir"))?;
    let (files, _) = cp.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0).map_err(EngineError::from)?,
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
        child_args: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The independent leak check finds what a killed local write leaves and the object-store
    /// listing skips (staging files `<name>#<n>`), and an unreferenced private file; writer
    /// leases are legitimate.
    #[test]
    fn leaks_include_staging_files_the_listing_skips() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let job = dir.path().join("job-a");
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        for (rel, bytes) in [
            ("_writers/epoch-00000000000000000001", &b"lease"[..]),
            (&format!("shared/{sha}-e1#7")[..], b"half an upload"),
            ("chk-3/e1/slot-0/MANIFEST-000001.zst", b"unreferenced"),
        ] {
            let p = job.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let storage = StorageRoot::from_url(&url, &StorageOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listed = rt
            .block_on(storage.list(&JobLayout::new(storage.root().clone(), "job-a").job_dir()))
            .unwrap();
        assert!(
            listed.iter().all(|m| !m.location.as_ref().contains('#')),
            "object_store lists staging files now: {listed:?}"
        );
        let leaked = leaks(&rt, &storage, &url, "job-a").unwrap();
        let expected: BTreeSet<String> = [
            format!("job-a/shared/{sha}-e1#7"),
            "job-a/chk-3/e1/slot-0/MANIFEST-000001.zst".to_string(),
        ]
        .into();
        assert_eq!(leaked, expected);
    }
}
