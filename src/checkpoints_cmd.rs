//! `cairn checkpoints`: list, inspect, verify and garbage-collect checkpoint storage.
//!
//! `URL` is a checkpoint directory (`file:///dir`, a path, `s3://bucket/prefix`): either one
//! job's directory (`<dir>/<job>`) or the directory holding jobs, in which case every job in it
//! is covered. Reading commands never delete; `gc` deletes only with `--apply`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use cairn_engine::checkpoint::RestoreSource;
use cairn_snapshot::{CheckpointStorage, CheckpointStore, StorageOptions};
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
        /// Never touch files younger than this (uploads may be in flight).
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

/// Resolves `url` to (storage, job names): a job directory has `chk-*` children; otherwise
/// every child directory is a job.
async fn jobs_at(url: &str) -> CmdResult<(CheckpointStorage, Vec<String>)> {
    let opts = storage_options();
    if let Ok(src) = RestoreSource::parse(url)
        && src.checkpoint.is_none()
    {
        let storage = CheckpointStorage::from_url(&src.storage_url, &opts)?;
        let store = CheckpointStore::open_read_only(storage.clone(), &src.job).await?;
        let has_chk = storage
            .list_dirs(&store.layout().job_dir())
            .await?
            .iter()
            .any(|p| {
                p.filename()
                    .is_some_and(|f| f.starts_with("chk-") || f == "shared")
            });
        if has_chk {
            return Ok((storage, vec![src.job]));
        }
    }
    let storage = CheckpointStorage::from_url(url, &opts)?;
    let mut jobs: Vec<String> = storage
        .list_dirs(storage.root())
        .await?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    jobs.sort();
    Ok((storage, jobs))
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
    let (storage, jobs) = jobs_at(url).await?;
    let mut rows = Vec::new();
    for job in jobs {
        let store = CheckpointStore::open_read_only(storage.clone(), &job).await?;
        for id in store.committed_ids().await? {
            let m = store.load(id).await?;
            rows.push(ListRow {
                job: job.clone(),
                id,
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
                    .map(|r| format!("{}/chk-{} ({})", r.job, r.checkpoint_id, r.mode)),
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<36} {:>8} {:>6} {:>7} {:>14}  restored from",
            "job", "chk", "slots", "files", "full bytes"
        );
        for r in &rows {
            println!(
                "{:<36} {:>8} {:>6} {:>7} {:>14}  {}",
                r.job,
                format!("chk-{}", r.id),
                r.slots,
                r.files,
                r.full_bytes,
                r.restored_from.as_deref().unwrap_or("-")
            );
        }
        if rows.is_empty() {
            println!("(no committed checkpoints under {url})");
        }
    }
    Ok(ExitCode::SUCCESS)
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
}

async fn inspect(url: &str, checkpoint: &str, json: bool) -> CmdResult<ExitCode> {
    let (storage, jobs) = jobs_at(url).await?;
    let [job] = jobs.as_slice() else {
        return Err(format!("{url} is not one job's directory").into());
    };
    let id: u64 = checkpoint
        .trim_start_matches("chk-")
        .parse()
        .map_err(|_| format!("bad checkpoint {checkpoint:?}: expected chk-<id> or <id>"))?;
    let store = CheckpointStore::open_read_only(storage, job).await?;
    let meta = store.load(id).await?;
    let mut refs: HashMap<String, usize> = HashMap::new();
    for other in store.committed_ids().await? {
        let m = store.load(other).await?;
        for f in m.shared_objects() {
            *refs.entry(f.object.clone()).or_default() += 1;
        }
    }
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
            });
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"metadata": meta, "files": rows}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {job}  chk-{id}  max parallelism {}  full bytes {}",
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
            "{:>4} {:<8} {:<24} {:>12} {:>12} {:>4}  {}",
            r.slot, r.kind, r.name, r.size, r.stored_size, r.refcount, r.object
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(url: &str, deep: bool) -> CmdResult<ExitCode> {
    let (storage, jobs) = jobs_at(url).await?;
    let mut bad = 0usize;
    let mut checked = 0usize;
    for job in jobs {
        let store = CheckpointStore::open_read_only(storage.clone(), &job).await?;
        let ids = store.committed_ids().await?;
        checked += ids.len();
        for p in store.verify(&ids, deep).await? {
            bad += 1;
            println!("{job} chk-{}: {}", p.checkpoint, p.problem);
        }
    }
    println!(
        "verified {checked} checkpoint(s){}: {bad} problem(s)",
        if deep { " (deep)" } else { "" }
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn gc(url: &str, apply: bool, grace: Duration) -> CmdResult<ExitCode> {
    let (storage, jobs) = jobs_at(url).await?;
    let (mut n, mut bytes) = (0usize, 0u64);
    for job in jobs {
        // Retain everything committed: gc never subsumes, it only removes unreferenced files.
        let store = CheckpointStore::open(storage.clone(), &job, usize::MAX).await?;
        let r = store.gc(grace, apply).await?;
        for o in &r.orphans {
            println!("{} {o}", if apply { "deleted" } else { "orphan" });
        }
        if r.too_young > 0 {
            println!(
                "{job}: kept {} unreferenced file(s) younger than {grace:?}",
                r.too_young
            );
        }
        n += r.orphans.len();
        bytes += r.orphan_bytes;
    }
    println!(
        "{n} orphan file(s), {bytes} bytes{}",
        if apply {
            " deleted"
        } else {
            " (dry run; --apply deletes)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
