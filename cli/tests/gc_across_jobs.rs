//! Garbage collection across jobs and the crash leftovers of local storage (issue "checkpoint
//! protocol hardening"), through the `cairn checkpoints gc` command a user runs:
//!
//! - After job B claimed job A's checkpoint (B's metadata points into A's directory), `gc` over
//!   the root used to collect A alone, find nothing of A's own referencing its objects, and
//!   delete the files B's checkpoint needs.
//! - A directory under the root that is not a Cairn job is never touched.
//! - Staging files (`name#N`) a crash leaves in `file://` storage are found and collected
//!   (object listings skip them).
//! - A no-claim restore whose source job deleted its files since still checkpoints: the copy
//!   falls back to uploading the local file.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use cairn::engine::checkpoint::{Checkpointer, ClaimMode, new_job_name};
use cairn::{BackendKind, CairnConfig, Slot, VoidNamespace};
use support::checkpoints::{TestResult, checkpoint, committed_verified, write_counters};

const KEYS: u64 = 2_000;

fn config(root: &Path, work: &str) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = root.join(work);
    cfg.checkpoint.dir = format!("file://{}", root.join("cp").display());
    cfg
}

fn write(slot: &mut Slot, round: u64) -> TestResult {
    write_counters(slot, KEYS, |k| k + round * KEYS)
}

/// A job that commits one checkpoint (round 1) and stops cleanly: (job, id).
fn job_a(root: &Path) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let cfg = config(root, "work-a");
    let job = new_job_name();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &job, 128)?;
    let mut slot = Slot::builder(&cfg).open()?;
    write(&mut slot, 1)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    Ok((job, id))
}

/// A new job restoring `job/chk-id` in `mode`, writing `round`, checkpointing twice.
fn job_b(
    root: &Path,
    mode: ClaimMode,
    job: &str,
    id: u64,
    round: u64,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let mut cfg = config(root, "work-b");
    cfg.checkpoint.restore_mode = mode;
    let url = format!("{}/{job}/chk-{id}", cfg.checkpoint.dir);
    let (mut cp, mut slot) = support::checkpoints::restore(&cfg, &url)?;
    // A few keys only: most SSTs stay the restored ones.
    let count = slot.value_state::<u64>("op", "count")?;
    let scope = slot.scope(&0u64, &VoidNamespace)?;
    count.update(&mut slot, &scope, &round)?;
    checkpoint(&mut cp, &mut slot)?;
    let last = checkpoint(&mut cp, &mut slot)?;
    Ok((cp.job().to_string(), last))
}

fn cli(args: &[&str]) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn verify(root: &Path, job: &str) -> TestResult {
    let ids = committed_verified(&format!("file://{}", root.join("cp").display()), job)?;
    assert!(!ids.is_empty(), "{job} has no checkpoint");
    Ok(())
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[expect(
    clippy::disallowed_methods,
    reason = "a file's age on disk, not a decision"
)]
fn age(path: &Path, by: Duration) -> TestResult {
    let f = std::fs::File::options().write(true).open(path)?;
    f.set_modified(SystemTime::now() - by)?;
    Ok(())
}

#[test]
fn gc_over_the_root_keeps_what_a_claiming_job_references() -> TestResult {
    let root = tempfile::tempdir()?;
    let (a, a_id) = job_a(root.path())?;
    // B claims A's checkpoint, then subsumes it: A's directory has no metadata left, but B's
    // checkpoint references A's SSTs.
    let (b, _) = job_b(root.path(), ClaimMode::Claim, &a, a_id, 2)?;
    assert!(
        !root
            .path()
            .join(format!("cp/{a}/chk-{a_id}/_metadata"))
            .exists(),
        "the claimed checkpoint was not subsumed"
    );
    let cp = root.path().join("cp");
    let (ok, out) = cli(&[
        "checkpoints",
        "gc",
        &cp.display().to_string(),
        "--grace",
        "0s",
        "--apply",
    ])?;
    assert!(ok, "{out}");
    verify(root.path(), &b)?;
    // Per job too: collecting A alone must look at B's references.
    let (ok, out) = cli(&[
        "checkpoints",
        "gc",
        &cp.join(&a).display().to_string(),
        "--grace",
        "0s",
        "--apply",
    ])?;
    assert!(ok, "{out}");
    verify(root.path(), &b)?;
    Ok(())
}

#[test]
fn gc_never_touches_a_directory_that_is_not_a_cairn_job() -> TestResult {
    let root = tempfile::tempdir()?;
    let (a, _) = job_a(root.path())?;
    let cp = root.path().join("cp");
    // Something else under the root, shaped like a job's files, and old.
    let other = cp.join("not-a-job");
    std::fs::create_dir_all(other.join("shared"))?;
    let fake = other.join("shared").join("ab".repeat(32));
    std::fs::write(&fake, b"someone else's data")?;
    std::fs::write(other.join("notes.txt"), b"keep me")?;
    age(&fake, Duration::from_secs(7200))?;
    let before = files(&other);
    let (ok, out) = cli(&[
        "checkpoints",
        "gc",
        &cp.display().to_string(),
        "--grace",
        "0s",
        "--apply",
    ])?;
    assert_eq!(
        files(&other),
        before,
        "gc deleted files of a non-Cairn directory: {out}"
    );
    assert!(
        out.contains("not-a-job"),
        "the skipped directory is not reported: {out}"
    );
    let _ = ok;
    verify(root.path(), &a)?;
    Ok(())
}

#[test]
fn gc_collects_staging_files_a_crash_left() -> TestResult {
    let root = tempfile::tempdir()?;
    let (a, _) = job_a(root.path())?;
    let shared = root.path().join(format!("cp/{a}/shared"));
    let staging = shared.join(format!("{}-e1#3", "cd".repeat(32)));
    std::fs::write(&staging, vec![7u8; 4096])?;
    age(&staging, Duration::from_secs(7200))?;
    let young = shared.join(format!("{}-e1#4", "ef".repeat(32)));
    std::fs::write(&young, vec![7u8; 10])?;
    let cp = root.path().join("cp");
    let (ok, out) = cli(&[
        "checkpoints",
        "gc",
        &cp.display().to_string(),
        "--grace",
        "1h",
    ])?;
    assert!(ok, "{out}");
    assert!(
        out.contains("#3"),
        "the dry run does not list the staging file: {out}"
    );
    assert!(staging.exists(), "a dry run deleted");
    let (ok, out) = cli(&[
        "checkpoints",
        "gc",
        &cp.display().to_string(),
        "--grace",
        "1h",
        "--apply",
    ])?;
    assert!(ok, "{out}");
    assert!(
        !staging.exists(),
        "the old staging file is still there: {out}"
    );
    assert!(
        young.exists(),
        "a staging file inside the grace period was deleted"
    );
    verify(root.path(), &a)?;
    Ok(())
}

#[test]
fn a_no_claim_restore_checkpoints_after_its_source_deleted_its_files() -> TestResult {
    let root = tempfile::tempdir()?;
    let (a, a_id) = job_a(root.path())?;
    // Restore, then A's shared files vanish (its job went on and subsumed them, or a user
    // deleted the job) before B's first checkpoint copies them.
    let mut cfg = config(root.path(), "work-b");
    cfg.checkpoint.restore_mode = ClaimMode::NoClaim;
    let url = format!("{}/{a}/chk-{a_id}", cfg.checkpoint.dir);
    let (mut cp, mut slot) = support::checkpoints::restore(&cfg, &url)?;
    std::fs::remove_dir_all(root.path().join(format!("cp/{a}/shared")))?;
    write(&mut slot, 2)?;
    let id = checkpoint(&mut cp, &mut slot)
        .map_err(|e| format!("the first checkpoint after the no-claim restore failed: {e}"))?;
    write(&mut slot, 3)?;
    checkpoint(&mut cp, &mut slot)?;
    assert!(id > a_id);
    let b = cp.job().to_string();
    drop(slot);
    drop(cp);
    verify(root.path(), &b)?;
    Ok(())
}
