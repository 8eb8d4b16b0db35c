//! One writer per job (issue "checkpoint protocol hardening"): before the fix two writers on one
//! job directory both ran; the loser of a commit race aborted and deleted the winner's
//! `_metadata` and files.
//!
//! - A second writer on a live job fails fast with an error naming the holder.
//! - A writer whose lease expired (paused, not dead) is fenced by the writer that took the job
//!   over: its next checkpoint fails, and its abort deletes nothing of the new writer's. Every
//!   committed checkpoint still restores.
//! - Job names are validated; default job names do not collide.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn::engine::checkpoint::{CheckpointLocation, Checkpointer, new_job_name};
use cairn::{BackendKind, CairnConfig, ErrorKind, KeyGroupRange, Slot};
use cairn_snapshot::{ManualClock, StorageOptions, StorageRoot};
use support::checkpoints::{
    TestResult, checkpoint, committed_verified, read_counters, write_counters,
};

const KEYS: u64 = 1_000;

fn config(root: &std::path::Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(BackendKind::RocksDb, root);
    // Long enough that the background renewal (every third) never runs during the test: the
    // test moves the lease clock by hand.
    cfg.checkpoint.writer_lease_timeout = Duration::from_secs(600);
    cfg
}

fn write(slot: &mut Slot, round: u64) -> TestResult {
    write_counters(slot, KEYS, |k| k + round * KEYS)
}

/// Restores `job/chk-id` into a fresh slot; checks every counter is `k + round * KEYS`.
fn restores(cfg: &CairnConfig, job: &str, id: u64, round: u64, tag: &str) -> TestResult {
    let mut cfg = cfg.clone();
    cfg.state.working_dir = cfg
        .state
        .working_dir
        .with_file_name(format!("restore-{tag}"));
    let url = format!("{}/{job}/chk-{id}", cfg.checkpoint.dir);
    let (_cp, mut slot) = support::checkpoints::restore(&cfg, &url)?;
    let expected: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k + round * KEYS)).collect();
    assert_eq!(
        read_counters(&mut slot, KEYS)?,
        expected,
        "{tag}: {job}/chk-{id}"
    );
    Ok(())
}

fn committed(cfg: &CairnConfig, job: &str) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    committed_verified(&cfg.checkpoint.dir, job)
}

#[test]
fn a_second_writer_on_a_live_job_fails_fast_naming_the_holder() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path());
    let job = new_job_name();
    let mut first = Checkpointer::open(&cfg.checkpoint, &job, 128)?;
    let mut slot = Slot::builder(&cfg).open()?;
    write(&mut slot, 1)?;
    let id = checkpoint(&mut first, &mut slot)?;
    let t = std::time::Instant::now();
    let e = match Checkpointer::open(&cfg.checkpoint, &job, 128) {
        Ok(_) => panic!("a second writer opened a live job"),
        Err(e) => e,
    };
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "not fast: {:?}",
        t.elapsed()
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&job) && msg.contains(&format!("pid {}", std::process::id())),
        "the error does not name the job and its holder: {msg}"
    );
    assert_eq!(e.kind(), ErrorKind::Conflict, "{msg}");
    // The first writer goes on; its checkpoints restore.
    write(&mut slot, 2)?;
    let id2 = checkpoint(&mut first, &mut slot)?;
    assert!(id2 > id);
    assert_eq!(committed(&cfg, &job)?, vec![id2]);
    restores(&cfg, &job, id2, 2, "first")?;
    // Stopped cleanly, the job is free at once for the next writer.
    drop(slot);
    drop(first);
    let again = Checkpointer::open(&cfg.checkpoint, &job, 128)?;
    drop(again);
    Ok(())
}

/// The first writer "pauses" past its lease; a second takes the job over and commits; the first
/// wakes and tries to checkpoint (same next id as the second's). It is fenced, and everything
/// committed still restores.
#[test]
fn a_writer_whose_lease_expired_is_fenced_and_harms_nothing() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path());
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let storage = || -> Result<StorageRoot, Box<dyn std::error::Error>> {
        Ok(
            StorageRoot::from_url(&cfg.checkpoint.dir, &StorageOptions::default())?
                .with_clock(clock.clone()),
        )
    };
    let job = new_job_name();
    let mut zombie = Checkpointer::open_with_storage(&cfg.checkpoint, storage()?, &job, 128)?;
    let mut slot = Slot::builder(&cfg).open()?;
    write(&mut slot, 1)?;
    checkpoint(&mut zombie, &mut slot)?;
    write(&mut slot, 2)?;
    let id2 = checkpoint(&mut zombie, &mut slot)?;
    // The zombie stops renewing (a long pause): its lease expires.
    clock.advance(cfg.checkpoint.writer_lease_timeout.as_millis() as u64 + 1);
    let mut cfg_b = cfg.clone();
    cfg_b.state.working_dir = root.path().join("work-b");
    let mut second = Checkpointer::open_with_storage(&cfg_b.checkpoint, storage()?, &job, 128)?;
    let restored = second.resume_from(&CheckpointLocation::parse(&format!(
        "{}/{job}/chk-{id2}",
        cfg.checkpoint.dir
    ))?)?;
    let (files, _) = second.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg_b.state.working_dir.join("restore"),
    )?;
    let mut slot_b = Slot::builder(&cfg_b).restore(files).open()?;
    write(&mut slot_b, 3)?;
    let id3 = checkpoint(&mut second, &mut slot_b)?;
    assert_eq!(id3, id2 + 1);
    // The zombie wakes: its next checkpoint has the same id as the second writer's.
    write(&mut slot, 4)?;
    let e = checkpoint(&mut zombie, &mut slot).expect_err("a fenced writer committed");
    assert!(e.to_string().contains("fenced"), "{e}");
    assert!(!zombie.failure_tolerated(), "a fenced writer must stop");
    assert_eq!(committed(&cfg, &job)?, vec![id3]);
    restores(&cfg, &job, id3, 3, "after-zombie")?;
    // The second writer goes on undisturbed; the zombie's later attempts fail too.
    write(&mut slot_b, 5)?;
    let id4 = checkpoint(&mut second, &mut slot_b)?;
    write(&mut slot, 6)?;
    assert!(checkpoint(&mut zombie, &mut slot).is_err());
    drop(zombie);
    assert_eq!(committed(&cfg, &job)?, vec![id4]);
    restores(&cfg, &job, id4, 5, "end")?;
    Ok(())
}

#[test]
fn job_names_are_validated() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path());
    for bad in [
        "../escape",
        "a/b",
        "",
        "_writers",
        ".hidden",
        "with space",
        "a\\b",
    ] {
        let e = match Checkpointer::open(&cfg.checkpoint, bad, 128) {
            Ok(_) => panic!("job name {bad:?} was accepted"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("job name"), "{bad:?}: {e}");
    }
    assert!(
        !root.path().join("escape").exists(),
        "a job directory was created outside the checkpoint root"
    );
    Ok(())
}

/// Names from one process (same second, same pid) never repeat; their random part also
/// separates processes that share a pid on different machines.
#[test]
fn default_job_names_do_not_collide() {
    let names: std::collections::HashSet<String> = (0..10_000).map(|_| new_job_name()).collect();
    assert_eq!(names.len(), 10_000);
    for n in names.iter().take(5) {
        assert!(
            cairn_snapshot::object_layout::check_job_name(n).is_ok(),
            "{n}"
        );
    }
}
