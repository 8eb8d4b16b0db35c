//! The commit point is final (issue "checkpoint protocol hardening"): once a checkpoint's
//! `_metadata` is written, only a later checkpoint's subsumption or an explicit user command may
//! delete it.
//!
//! - A timeout that fires after the commit (the subsumption that follows it is slow) used to
//!   abort the checkpoint and delete its `_metadata`; with `retained = 1` the job was left with
//!   no checkpoint at all.
//! - A `_metadata` put abandoned by a timeout kept running (object_store's local store writes on
//!   blocking threads) and landed after the checkpoint was reported aborted and its files
//!   deleted: a committed checkpoint over missing files.
//! - A claimed checkpoint whose deletion failed was forgotten (and after a restart never
//!   deleted), and `gc` failed while a claimed checkpoint was retained.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn::engine::checkpoint::{CheckpointLocation, Checkpointer, ClaimMode, new_job_name};
use cairn::{BackendKind, CairnConfig, KeyGroupRange, Slot};
use cairn_snapshot::fault::Op;
use cairn_snapshot::{Fault, FaultAction, FaultStore, StorageOptions, StorageRoot};
use object_store::ObjectStore;
use support::checkpoints::{
    TestResult, checkpoint, committed_verified, read_counters, write_counters,
};

const KEYS: u64 = 2_000;

/// A job on `file://` storage behind a fault injector.
struct Rig {
    root: tempfile::TempDir,
    cfg: CairnConfig,
    faults: Arc<FaultStore>,
    storage: StorageRoot,
}

impl Rig {
    fn new(backend: BackendKind) -> Result<Self, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.working_dir = root.path().join("work");
        cfg.checkpoint.dir = format!("file://{}", root.path().join("cp").display());
        cfg.checkpoint.retained = 1;
        cfg.checkpoint.restore_fetch = support::restore_fetch();
        cfg.checkpoint.timeout = Duration::from_millis(500);
        let plain = StorageRoot::from_url(&cfg.checkpoint.dir, &StorageOptions::default())?;
        let faults = FaultStore::new(plain.store().clone());
        let mut storage = StorageRoot::with_options(
            faults.clone() as Arc<dyn ObjectStore>,
            plain.root().clone(),
            &cfg.checkpoint.dir,
            &StorageOptions::default(),
        );
        if let Some(d) = plain.local_dir() {
            storage = storage.with_local_dir(d);
        }
        Ok(Self {
            root,
            cfg,
            faults,
            storage,
        })
    }

    fn open(&self, job: &str) -> cairn::engine::Result<Checkpointer> {
        Checkpointer::open_with_storage(&self.cfg.checkpoint, self.storage.clone(), job, 128)
    }

    /// Committed ids of `job`, read from storage by a reader of its own that verifies them.
    fn committed(&self, job: &str) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
        committed_verified(&self.cfg.checkpoint.dir, job)
    }

    /// Restores `job/chk-id` into a fresh slot and reads the counters.
    fn restore(&self, job: &str, id: u64) -> Result<Vec<Option<u64>>, Box<dyn std::error::Error>> {
        let mut cfg = self.cfg.clone();
        cfg.state.working_dir = self.root.path().join(format!("restore-{job}-{id}"));
        let url = format!("{}/{job}/chk-{id}", cfg.checkpoint.dir);
        let (_cp, mut slot) = support::checkpoints::restore(&cfg, &url)?;
        read_counters(&mut slot, KEYS)
    }
}

fn write(slot: &mut Slot, round: u64) -> TestResult {
    write_counters(slot, KEYS, |k| k * 1000 + round)
}

fn expected(round: u64) -> Vec<Option<u64>> {
    (0..KEYS).map(|k| Some(k * 1000 + round)).collect()
}

/// The subsumption after chk-2's commit deletes chk-1's private files slowly (longer than the
/// checkpoint timeout). chk-2 is committed and stays; the job always has a checkpoint.
#[test]
fn a_timeout_after_the_commit_keeps_the_checkpoint() -> TestResult {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let rig = Rig::new(backend)?;
        let job = new_job_name();
        let mut cp = rig.open(&job)?;
        let mut slot = Slot::builder(&rig.cfg).open()?;
        write(&mut slot, 1)?;
        checkpoint(&mut cp, &mut slot)?;
        // Every delete of a private file of chk-1 takes 800 ms (> the 500 ms timeout); deleting
        // `_metadata` stays fast, so before the fix chk-1 was gone by the time the timeout
        // aborted chk-2.
        rig.faults.add(Fault::on_path(
            Some(Op::Delete),
            "/chk-1/e",
            FaultAction::Delay(Duration::from_millis(800)),
        ));
        rig.faults.add(Fault::on_path(
            Some(Op::Delete),
            "/chk-1/slot-",
            FaultAction::Delay(Duration::from_millis(800)),
        ));
        write(&mut slot, 2)?;
        let r = checkpoint(&mut cp, &mut slot);
        let committed = rig.committed(&job)?;
        assert!(
            !committed.is_empty(),
            "{backend:?}: the job was left with no committed checkpoint ({r:?})"
        );
        let id =
            r.map_err(|e| format!("{backend:?}: checkpoint 2 failed after its commit: {e}"))?;
        assert_eq!(committed, vec![id], "{backend:?}");
        drop(cp);
        assert_eq!(rig.restore(&job, id)?, expected(2), "{backend:?}");
    }
    Ok(())
}

/// chk-2's `_metadata` put lands 1.5 s after it started, in a task the caller can't cancel (as
/// object_store's local store writes on a blocking thread); the checkpoint timeout is 500 ms.
/// Whatever the coordinator reports must stay true: a checkpoint reported failed never becomes
/// committed later, and a committed one verifies.
#[test]
fn an_abandoned_metadata_put_cannot_publish_an_aborted_checkpoint() -> TestResult {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let rig = Rig::new(backend)?;
        let job = new_job_name();
        let mut cp = rig.open(&job)?;
        let mut slot = Slot::builder(&rig.cfg).open()?;
        write(&mut slot, 1)?;
        checkpoint(&mut cp, &mut slot)?;
        rig.faults.add(
            Fault::on_path(
                Some(Op::Put),
                "/chk-2/_metadata",
                FaultAction::LateLanding(Duration::from_millis(1500)),
            )
            .times(1),
        );
        write(&mut slot, 2)?;
        let r = checkpoint(&mut cp, &mut slot);
        // Whatever was in flight has landed by now.
        std::thread::sleep(Duration::from_millis(2500));
        let committed = rig.committed(&job)?;
        match &r {
            Ok(id) => {
                assert_eq!(committed, vec![*id], "{backend:?}");
                drop(cp);
                assert_eq!(rig.restore(&job, *id)?, expected(2), "{backend:?}");
            }
            Err(e) => {
                assert!(
                    !committed.contains(&2),
                    "{backend:?}: checkpoint 2 was reported failed ({e}) but is committed: {committed:?}"
                );
            }
        }
    }
    Ok(())
}

/// Job B claims A's checkpoint; deleting it (subsumed by B's next checkpoint) fails. The claim
/// is not forgotten: it is retried, and after B restarts it is still known and deleted then.
/// `gc` works while the claimed checkpoint is retained.
#[test]
fn a_claimed_checkpoint_survives_a_failed_delete_and_a_restart() -> TestResult {
    let rig = Rig::new(BackendKind::RocksDb)?;
    let job_a = new_job_name();
    let (a_id, a_meta) = {
        let mut cp = rig.open(&job_a)?;
        let mut slot = Slot::builder(&rig.cfg).open()?;
        write(&mut slot, 1)?;
        let id = checkpoint(&mut cp, &mut slot)?;
        (id, format!("{job_a}/chk-{id}/_metadata"))
    };
    let mut cfg_b = rig.cfg.clone();
    cfg_b.checkpoint.restore_mode = ClaimMode::Claim;
    cfg_b.state.working_dir = rig.root.path().join("work-b");
    let job_b = new_job_name();
    let open_b =
        || Checkpointer::open_with_storage(&cfg_b.checkpoint, rig.storage.clone(), &job_b, 128);
    let mut cp = open_b()?;
    let restored = cp.resume_from(&CheckpointLocation::parse(&format!(
        "{}/{job_a}/chk-{a_id}",
        cfg_b.checkpoint.dir
    ))?)?;
    let (files, _) = cp.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg_b.state.working_dir.join("restore"),
    )?;
    let mut slot = Slot::builder(&cfg_b).restore(files).open()?;
    // gc while the claimed checkpoint is retained (B has committed nothing of its own yet).
    let report = cp.gc(Duration::ZERO, false)?;
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    // Deleting A's `_metadata` fails for now.
    rig.faults.add(Fault::on_path(
        Some(Op::Delete),
        &a_meta,
        FaultAction::Permanent,
    ));
    write(&mut slot, 2)?;
    let b1 = checkpoint(&mut cp, &mut slot)?;
    assert_eq!(
        rig.committed(&job_a)?,
        vec![a_id],
        "A's checkpoint is still there"
    );
    // Restart B (clean stop, then the same job opened again and restored from its own
    // checkpoint): the claim must still be known.
    drop(slot);
    drop(cp);
    rig.faults.clear();
    let mut cp = open_b()?;
    let report = cp.gc(Duration::ZERO, false)?;
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    let restored = cp.resume_from(&CheckpointLocation::parse(&format!(
        "{}/{job_b}/chk-{b1}",
        cfg_b.checkpoint.dir
    ))?)?;
    let _ = std::fs::remove_dir_all(cfg_b.state.working_dir.join("slot-0"));
    let (files, _) = cp.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg_b.state.working_dir.join("restore2"),
    )?;
    let mut slot = Slot::builder(&cfg_b).restore(files).open()?;
    write(&mut slot, 3)?;
    let b2 = checkpoint(&mut cp, &mut slot)?;
    assert!(
        rig.committed(&job_a)?.is_empty(),
        "the claimed checkpoint was forgotten: still in A's directory"
    );
    assert_eq!(rig.committed(&job_b)?, vec![b2]);
    drop(slot);
    drop(cp);
    assert_eq!(rig.restore(&job_b, b2)?, expected(3));
    Ok(())
}

/// The timeout runs from the trigger (`Checkpointer::trigger_checkpoint`), as Flink's: a checkpoint whose
/// barriers took longer than the timeout to collect fails before uploading anything, and the
/// next checkpoint, taken promptly, commits.
#[test]
fn the_timeout_runs_from_the_trigger() -> TestResult {
    let rig = Rig::new(BackendKind::RocksDb)?;
    let job = new_job_name();
    let mut cp = rig.open(&job)?;
    let mut slot = Slot::builder(&rig.cfg).open()?;
    write(&mut slot, 1)?;
    checkpoint(&mut cp, &mut slot)?;
    // Triggered, then the barrier takes 700 ms to reach the slot (timeout: 500 ms).
    let id = cp.trigger_checkpoint();
    std::thread::sleep(Duration::from_millis(700));
    write(&mut slot, 2)?;
    let sync = slot.snapshot_for_checkpoint(id)?;
    let e = match cp.complete(id, vec![sync]) {
        Ok(_) => return Err("a checkpoint triggered 700 ms ago committed".into()),
        Err(e) => e,
    };
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(rig.committed(&job)?, vec![1]);
    let id = checkpoint(&mut cp, &mut slot)?;
    assert_eq!(rig.committed(&job)?, vec![id]);
    drop(cp);
    assert_eq!(rig.restore(&job, id)?, expected(2));
    Ok(())
}

/// A checkpoint the host's schedule expired (its barriers never all came back) counts against
/// `tolerable-failed` like any failed checkpoint, and the next completed one resets the count;
/// the committed checkpoint is untouched.
#[test]
fn an_expired_checkpoint_counts_as_a_failure() -> TestResult {
    let rig = Rig::new(BackendKind::Heap)?;
    let job = new_job_name();
    let mut cp = rig.open(&job)?;
    let mut slot = Slot::builder(&rig.cfg).open()?;
    write(&mut slot, 1)?;
    let first = checkpoint(&mut cp, &mut slot)?;
    assert!(cp.failure_tolerated());
    let id = cp.trigger_checkpoint();
    cp.checkpoint_failed(id, "expired");
    assert!(!cp.failure_tolerated(), "tolerable-failed is 0");
    assert_eq!(rig.committed(&job)?, vec![first]);
    checkpoint(&mut cp, &mut slot)?;
    assert!(
        cp.failure_tolerated(),
        "a completed checkpoint resets the count"
    );
    Ok(())
}
