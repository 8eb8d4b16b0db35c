//! `cairn checkpoints`: list, inspect, verify and garbage-collect checkpoint storage.
//!
//! `URL` is a checkpoint directory (`file:///dir`, a path, `s3://bucket/prefix`): either one
//! job's directory (`<dir>/<job>`) or the directory holding jobs, in which case every job in it
//! is covered. Reading commands never delete; `gc` deletes only with `--apply`.
//!
//! A job is a directory with at least one committed checkpoint (`chk-<id>/_metadata`) or a
//! `_writers/` marker (its writer leases, written when it starts). Any other directory under a
//! directory of jobs is skipped and named on stderr: never read, never collected. A URL without
//! any job (an empty or unrelated directory, a mistyped path) is an error naming it, so it never
//! passes for a healthy root, and `gc --apply` deletes nothing there.
//!
//! One damaged job or checkpoint (unreadable `_metadata`, missing files) does not stop the
//! others: they are still listed and verified, every failure is named on stderr, and the exit
//! code is 1. Exit code 0 means every job was read and found whole. `gc` is stricter: while any
//! metadata under the root is unreadable it deletes nothing (that checkpoint may reference any
//! job's files, see `cairn_snapshot::gc`); it lists the orphans it found and exits 1.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use cairn_engine::checkpoint::CheckpointLocation;
use cairn_snapshot::object_layout::WRITERS_DIR;
use cairn_snapshot::{
    CheckpointId, CheckpointMetadata, CheckpointStore, SnapshotError, StorageOptions, StorageRoot,
    VerifyProblem, gc as snapshot_gc,
};
use clap::{Args, Subcommand};
use serde::Serialize;

/// `cairn checkpoints ...`
#[derive(Debug, Args)]
pub struct CheckpointsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CheckpointsCommand,
}

/// The `cairn checkpoints` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// List committed checkpoints with their sizes.
    List {
        /// A job directory or a directory of jobs.
        url: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one checkpoint's files, sizes and reference counts.
    Inspect {
        /// A job directory.
        url: String,
        /// The checkpoint, `chk-<id>` or `<id>`.
        checkpoint: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check that every file of every committed checkpoint exists with the right size;
    /// `--deep` re-hashes every file. Exits non-zero on any problem.
    Verify {
        /// A job directory or a directory of jobs.
        url: String,
        /// Download and re-hash every file.
        #[arg(long)]
        deep: bool,
    },
    /// Find files no committed checkpoint references (orphans of crashed or aborted
    /// checkpoints); deletes them with `--apply`.
    Gc {
        /// A job directory or a directory of jobs.
        url: String,
        /// Delete the orphans (default: dry run).
        #[arg(long)]
        apply: bool,
        /// Never touch files younger than this (uploads may be in flight). While a writer
        /// runs, keep it at least the writer's checkpoint timeout plus three storage
        /// operations (`CheckpointConfig::min_gc_grace`; 37 min 45 s with default settings):
        /// a younger orphan may be an upload whose commit is still to land. `0s` only when no
        /// writer runs.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
}

/// Storage options for the CLI: S3 endpoint and credentials from `CAIRN_S3_*`/`AWS_*` env.
pub(crate) fn storage_options() -> StorageOptions {
    let mut o = StorageOptions::default();
    o.s3_endpoint = std::env::var("CAIRN_S3_ENDPOINT").ok();
    o.s3_allow_http = o
        .s3_endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    o
}

type CmdResult<T> = Result<T, Box<dyn std::error::Error>>;

/// What a URL resolved to.
struct Target {
    storage: StorageRoot,
    /// The Cairn jobs, sorted.
    jobs: Vec<String>,
}

/// A job, or one of its checkpoints, that could not be read or is damaged. The command goes on
/// with the rest and exits 1.
struct Failure {
    job: String,
    checkpoint: Option<CheckpointId>,
    error: String,
}

impl Failure {
    fn new(job: &str, checkpoint: Option<CheckpointId>, error: impl fmt::Display) -> Self {
        Self {
            job: job.to_string(),
            checkpoint,
            error: error.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.checkpoint {
            Some(id) => write!(f, "{} chk-{id}: {}", self.job, self.error),
            None => write!(f, "{}: {}", self.job, self.error),
        }
    }
}

/// Names every failure on stderr; exit code 1 if there is any.
fn report(failures: &[Failure]) -> ExitCode {
    for f in failures {
        eprintln!("error: {f}");
    }
    exit_code(failures.is_empty())
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Resolves `url` to one job's directory, or to a directory of jobs with every Cairn job in it
/// (other directories are named on stderr and left alone). Errors when there is no job.
async fn target(url: &str) -> CmdResult<Target> {
    require_local_dir(url)?;
    let opts = storage_options();
    if let Ok(src) = CheckpointLocation::parse(url)
        && src.checkpoint.is_none()
    {
        let storage = StorageRoot::from_url(&src.storage_url, &opts)?;
        if snapshot_gc::is_job(&storage, &src.job).await? {
            return Ok(Target {
                storage,
                jobs: vec![src.job],
            });
        }
    }
    let storage = StorageRoot::from_url(url, &opts)?;
    let (mut jobs, mut skipped) = (Vec::new(), Vec::new());
    for dir in storage.list_dirs(storage.root()).await? {
        let Some(name) = dir.filename().map(str::to_string) else {
            continue;
        };
        match snapshot_gc::is_job(&storage, &name).await {
            Ok(true) => jobs.push(name),
            Ok(false) => skipped.push(format!(
                "{name}/: not a Cairn job (no chk-<id>/_metadata, no {WRITERS_DIR}/)"
            )),
            Err(e) => skipped.push(format!("{name}/: cannot read it: {e}")),
        }
    }
    jobs.sort();
    skipped.sort();
    if jobs.is_empty() {
        let what = if skipped.is_empty() {
            "it has no subdirectories".to_string()
        } else {
            skipped.join("; ")
        };
        return Err(
            format!("{url} is not a checkpoint directory: it holds no Cairn job ({what})").into(),
        );
    }
    for s in &skipped {
        eprintln!("note: skipped {s}");
    }
    Ok(Target { storage, jobs })
}

/// A local URL must name an existing directory: opening local storage creates the directory,
/// which a mistyped path must not do.
fn require_local_dir(url: &str) -> CmdResult<()> {
    let path = match url.strip_prefix("file://") {
        Some(p) => p,
        None if url.contains("://") => return Ok(()),
        None => url,
    };
    if std::path::Path::new(path).is_dir() {
        Ok(())
    } else {
        Err(format!("{url} is not a checkpoint directory: no such directory").into())
    }
}

/// Objects `meta` references that storage does not hold (object paths as in the metadata).
/// `stored` holds the objects listed under the job; others (a claimed checkpoint's files in
/// another job's directory) are looked up one by one.
async fn missing_objects(
    store: &CheckpointStore,
    meta: &CheckpointMetadata,
    stored: &HashSet<String>,
) -> Result<Vec<String>, SnapshotError> {
    let mut missing = Vec::new();
    for s in &meta.slots {
        let objects = s.shared.iter().map(|f| &f.object);
        for object in objects.chain(s.private.iter().map(|f| &f.object)) {
            let path = store.layout().resolve(object);
            if !stored.contains(path.as_ref()) && store.storage().size(&path).await?.is_none() {
                missing.push(object.clone());
            }
        }
    }
    Ok(missing)
}

/// Every object stored under the job's directory (full object paths).
async fn stored_objects(store: &CheckpointStore) -> Result<HashSet<String>, SnapshotError> {
    let listed = store.storage().list(&store.layout().job_dir()).await?;
    Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
}

#[derive(Serialize)]
struct ListRow {
    job: String,
    id: u64,
    created_at_ms: u64,
    slots: usize,
    files: usize,
    full_bytes: u64,
    restored_from: Option<String>,
    /// Files the checkpoint references that storage does not hold (0 = whole).
    missing_files: usize,
}

impl ListRow {
    fn new(job: &str, m: &CheckpointMetadata, missing_files: usize) -> Self {
        Self {
            job: job.to_string(),
            id: m.checkpoint_id,
            created_at_ms: m.created_at_ms,
            slots: m.slots.len(),
            files: m
                .slots
                .iter()
                .map(|s| s.shared.len() + s.private.len())
                .sum(),
            full_bytes: m.full_bytes(),
            restored_from: m
                .restored_from
                .as_ref()
                .map(|r| format!("{}/chk-{} ({})", r.job, r.checkpoint_id, r.mode)),
            missing_files,
        }
    }
}

/// Runs a `cairn checkpoints` subcommand.
pub fn run(args: CheckpointsArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: CheckpointsCommand) -> CmdResult<ExitCode> {
    match cmd {
        CheckpointsCommand::List { url, json } => list(&url, json).await,
        CheckpointsCommand::Inspect {
            url,
            checkpoint,
            json,
        } => inspect(&url, &checkpoint, json).await,
        CheckpointsCommand::Verify { url, deep } => verify(&url, deep).await,
        CheckpointsCommand::Gc { url, apply, grace } => gc(&url, apply, grace).await,
    }
}

async fn list(url: &str, json: bool) -> CmdResult<ExitCode> {
    let t = target(url).await?;
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for job in &t.jobs {
        if let Err(e) = list_job(&t.storage, job, &mut rows, &mut failures).await {
            failures.push(Failure::new(job, None, e));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_list(&rows);
        if rows.is_empty() {
            println!("(no committed checkpoints under {url})");
        }
    }
    Ok(report(&failures))
}

/// Adds a row per committed checkpoint of `job`, and a failure per checkpoint that cannot be
/// read or misses files. Errs when the job cannot be listed.
async fn list_job(
    storage: &StorageRoot,
    job: &str,
    rows: &mut Vec<ListRow>,
    failures: &mut Vec<Failure>,
) -> Result<(), SnapshotError> {
    let store = CheckpointStore::open_read_only(storage.clone(), job).await?;
    let ids = store.committed_ids().await?;
    let stored = stored_objects(&store).await?;
    for id in ids {
        let row = match store.load(id).await {
            Ok(m) => missing_objects(&store, &m, &stored)
                .await
                .map(|missing| ListRow::new(job, &m, missing.len())),
            Err(e) => Err(e),
        };
        match row {
            Ok(row) => {
                if row.missing_files > 0 {
                    let e = format!(
                        "{} referenced file(s) missing (`cairn checkpoints verify` names them)",
                        row.missing_files
                    );
                    failures.push(Failure::new(job, Some(id), e));
                }
                rows.push(row);
            }
            Err(e) => failures.push(Failure::new(job, Some(id), e)),
        }
    }
    Ok(())
}

fn print_list(rows: &[ListRow]) {
    println!(
        "{:<36} {:>8} {:>6} {:>7} {:>14} {:>7}  restored from",
        "job", "chk", "slots", "files", "full bytes", "missing"
    );
    for r in rows {
        println!(
            "{:<36} {:>8} {:>6} {:>7} {:>14} {:>7}  {}",
            r.job,
            format!("chk-{}", r.id),
            r.slots,
            r.files,
            r.full_bytes,
            r.missing_files,
            r.restored_from.as_deref().unwrap_or("-")
        );
    }
}

#[derive(Serialize)]
struct FileRow {
    slot: u32,
    kind: &'static str,
    name: String,
    object: String,
    size: u64,
    stored_size: u64,
    /// Committed checkpoints of the job that reference the object.
    refcount: usize,
    /// Storage does not hold the object.
    missing: bool,
}

async fn inspect(url: &str, checkpoint: &str, json: bool) -> CmdResult<ExitCode> {
    let t = target(url).await?;
    let [job] = t.jobs.as_slice() else {
        let jobs = t.jobs.join(", ");
        return Err(format!("{url} is not one job's directory: it holds jobs {jobs}").into());
    };
    let id: u64 = checkpoint
        .trim_start_matches("chk-")
        .parse()
        .map_err(|_| format!("bad checkpoint {checkpoint:?}: expected chk-<id> or <id>"))?;
    let store = CheckpointStore::open_read_only(t.storage, job).await?;
    let meta = store.load(id).await?;
    let mut failures = Vec::new();
    let refs = refcounts(&store, &mut failures).await?;
    let missing = missing_objects(&store, &meta, &stored_objects(&store).await?).await?;
    for object in &missing {
        failures.push(Failure::new(
            job,
            Some(id),
            format!("file {object} is missing"),
        ));
    }
    let rows = file_rows(&meta, &refs, &missing);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"metadata": meta, "files": rows}))?
        );
    } else {
        print_inspect(job, &meta, &rows);
    }
    Ok(report(&failures))
}

/// How many committed checkpoints of the store reference each shared object. A checkpoint
/// whose metadata cannot be read is a failure (the counts leave it out).
async fn refcounts(
    store: &CheckpointStore,
    failures: &mut Vec<Failure>,
) -> CmdResult<HashMap<String, usize>> {
    let mut refs: HashMap<String, usize> = HashMap::new();
    for other in store.committed_ids().await? {
        match store.load(other).await {
            Ok(m) => {
                for f in m.shared_objects() {
                    *refs.entry(f.object.clone()).or_default() += 1;
                }
            }
            Err(e) => {
                let e = format!("left out of the reference counts: {e}");
                failures.push(Failure::new(store.layout().job(), Some(other), e));
            }
        }
    }
    Ok(refs)
}

fn file_rows(
    meta: &CheckpointMetadata,
    refs: &HashMap<String, usize>,
    missing: &[String],
) -> Vec<FileRow> {
    let mut rows = Vec::new();
    for s in &meta.slots {
        for f in &s.shared {
            rows.push(FileRow {
                slot: s.slot,
                kind: "shared",
                name: f.name.clone(),
                object: f.object.clone(),
                size: f.size,
                stored_size: f.size,
                refcount: refs.get(&f.object).copied().unwrap_or(0),
                missing: missing.contains(&f.object),
            });
        }
        for f in &s.private {
            rows.push(FileRow {
                slot: s.slot,
                kind: "private",
                name: f.name.clone(),
                object: f.object.clone(),
                size: f.size,
                stored_size: f.stored_size,
                refcount: 1,
                missing: missing.contains(&f.object),
            });
        }
    }
    rows
}

fn print_inspect(job: &str, meta: &CheckpointMetadata, rows: &[FileRow]) {
    println!(
        "job {job}  chk-{}  max parallelism {}  full bytes {}",
        meta.checkpoint_id,
        meta.max_parallelism,
        meta.full_bytes()
    );
    for s in &meta.slots {
        println!(
            "  slot {} key groups [{}, {}] backend {} states {}",
            s.slot,
            s.key_groups.start,
            s.key_groups.end,
            s.backend,
            s.states
                .iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "{:>4} {:<8} {:<24} {:>12} {:>12} {:>4}  object",
        "slot", "kind", "name", "size", "stored", "refs"
    );
    for r in rows {
        println!(
            "{:>4} {:<8} {:<24} {:>12} {:>12} {:>4}  {}{}",
            r.slot,
            r.kind,
            r.name,
            r.size,
            r.stored_size,
            r.refcount,
            r.object,
            if r.missing { "  MISSING" } else { "" }
        );
    }
}

async fn verify(url: &str, deep: bool) -> CmdResult<ExitCode> {
    let t = target(url).await?;
    let (mut checked, mut bad) = (0usize, 0usize);
    let mut failures = Vec::new();
    for job in &t.jobs {
        match verify_job(&t.storage, job, deep).await {
            Ok((n, problems)) => {
                for p in &problems {
                    println!("{job} chk-{}: {}", p.checkpoint, p.problem);
                }
                println!("{job}: {n} checkpoint(s), {} problem(s)", problems.len());
                checked += n;
                bad += problems.len();
            }
            Err(e) => {
                println!("{job}: cannot verify: {e}");
                failures.push(Failure::new(job, None, e));
            }
        }
    }
    println!(
        "verified {checked} checkpoint(s){}: {} problem(s)",
        if deep { " (deep)" } else { "" },
        bad + failures.len()
    );
    let code = report(&failures);
    Ok(if bad == 0 { code } else { ExitCode::FAILURE })
}

/// Verifies every committed checkpoint of `job`: (checkpoints, problems).
async fn verify_job(
    storage: &StorageRoot,
    job: &str,
    deep: bool,
) -> Result<(usize, Vec<VerifyProblem>), SnapshotError> {
    let store = CheckpointStore::open_read_only(storage.clone(), job).await?;
    let ids = store.committed_ids().await?;
    Ok((ids.len(), store.verify(&ids, deep).await?))
}

/// Collects the orphans of the jobs `url` names, with the storage root's rules
/// (`cairn_snapshot::gc`): references come from every job under the root (a claimed
/// checkpoint names files of another job), and damaged metadata anywhere under the root
/// stops every deletion, since what it references is unknown.
async fn gc(url: &str, apply: bool, grace: Duration) -> CmdResult<ExitCode> {
    let t = target(url).await?;
    // From outside any writer: nothing is in flight but what `grace` protects.
    let r = snapshot_gc::collect(&t.storage, &t.jobs, grace, apply, &|_| false).await?;
    let verb = if r.applied { "deleted" } else { "orphan" };
    for o in &r.orphans {
        println!("{verb} {o}");
    }
    if r.too_young > 0 {
        println!(
            "kept {} unreferenced file(s) younger than {grace:?}",
            r.too_young
        );
    }
    for d in &r.not_jobs {
        eprintln!("note: skipped {d}/: not a Cairn job");
    }
    let deleted = if r.applied {
        " deleted"
    } else if apply {
        " NOT deleted: damaged checkpoints under the root (see below)"
    } else {
        " (dry run; --apply deletes)"
    };
    println!(
        "{} orphan file(s), {} bytes{deleted}",
        r.orphans.len(),
        r.orphan_bytes
    );
    for d in &r.damaged {
        eprintln!("error: damaged checkpoint {d}");
    }
    Ok(exit_code(r.damaged.is_empty()))
}
