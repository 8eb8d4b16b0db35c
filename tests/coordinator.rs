//! The checkpoint coordinator's contract, on a virtual clock with real slots and real storage:
//! interval, min pause, timeout (barrier collection included), max concurrent, request
//! priority, tolerable failures counted as Flink counts them, subsumption of older checkpoints
//! in flight, notifications, retention on cancel, and acks uploaded by slots themselves.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn::engine::checkpoint::RestoredCheckpoint;
use cairn::{
    AbortReason, BackendKind, CairnConfig, CancelOutcome, CheckpointCoordinator, CheckpointEvent,
    CheckpointKind, CheckpointLocation, Checkpointer, CheckpointingMode, DeclineReason,
    EngineError, KeyGroupRange, Slot, SlotReply, SlotUploader, new_job_name,
};
use cairn_snapshot::{ManualClock, SnapshotError, StorageOptions, StorageRoot};
use support::checkpoints::TestResult;

const MAX_P: u32 = 128;
const KEYS: u64 = 300;

/// A job of `slots` slots on `file://` storage whose clock the test moves.
struct Rig {
    root: tempfile::TempDir,
    cfg: CairnConfig,
    clock: Arc<ManualClock>,
    slots: Vec<Slot>,
}

impl Rig {
    fn new(
        backend: BackendKind,
        slots: u32,
        tune: impl FnOnce(&mut CairnConfig),
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.max_parallelism = Some(MAX_P);
        cfg.state.working_dir = root.path().join("work");
        cfg.checkpoint.dir = format!("file://{}", root.path().join("cp").display());
        cfg.checkpoint.interval = Some(Duration::from_secs(10));
        cfg.checkpoint.timeout = Duration::from_secs(60);
        cfg.checkpoint.restore_fetch = support::restore_fetch();
        tune(&mut cfg);
        let slots = (0..slots)
            .map(|i| Slot::builder(&cfg).slot(i, slots).open())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            root,
            cfg,
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            slots,
        })
    }

    fn storage(&self) -> Result<StorageRoot, SnapshotError> {
        Ok(
            StorageRoot::from_url(&self.cfg.checkpoint.dir, &StorageOptions::default())?
                .with_clock(self.clock.clone()),
        )
    }

    fn coordinator(&self, job: &str) -> Result<CheckpointCoordinator, Box<dyn std::error::Error>> {
        let cp =
            Checkpointer::open_with_storage(&self.cfg.checkpoint, self.storage()?, job, MAX_P)?;
        Ok(CheckpointCoordinator::new(cp, self.slots.len() as u32)?)
    }

    fn write(&mut self, value: u64) -> TestResult {
        for slot in &mut self.slots {
            let (i, n) = slot.index();
            let range = KeyGroupRange::for_slot(MAX_P, n, i)?;
            let count = slot.value_state::<u64>("op", "count")?;
            for k in 0..KEYS {
                if range.contains(cairn::key_group_of(&k, MAX_P)?) {
                    let scope = slot.scope(&k, &cairn::VoidNamespace)?;
                    count.update(slot, &scope, &(k * 1000 + value))?;
                }
            }
        }
        Ok(())
    }

    /// Every slot snapshots checkpoint `id` and the coordinator gets the snapshots.
    fn ack_all(&mut self, c: &mut CheckpointCoordinator, id: u64) -> TestResult {
        for slot in &mut self.slots {
            let snap = slot.snapshot_for_checkpoint(id)?;
            let i = slot.index().0;
            assert!(c.acknowledge(id, i, SlotReply::Snapshot(snap))?);
        }
        Ok(())
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d.as_millis() as u64);
    }

    /// Restores `job`'s latest checkpoint into as many slots as the rig has and reads every
    /// key's counter from the slot that owns it.
    fn restore_counters(&self, job: &str) -> Result<Vec<Option<u64>>, Box<dyn std::error::Error>> {
        let work = self.root.path().join(format!("restore-{}", new_job_name()));
        let url = format!("{}/{job}", self.cfg.checkpoint.dir);
        support::checkpoints::read_counters_from(
            &self.cfg,
            &work,
            &url,
            self.slots.len() as u32,
            KEYS,
        )
    }
}

fn completed(events: &[CheckpointEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| matches!(e, CheckpointEvent::Completed { .. }))
        .map(CheckpointEvent::id)
        .collect()
}

fn aborted(events: &[CheckpointEvent]) -> Vec<(u64, AbortReason, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            CheckpointEvent::Aborted {
                id,
                reason,
                counted,
                ..
            } => Some((*id, reason.clone(), *counted)),
            _ => None,
        })
        .collect()
}

/// Interval from the previous trigger, min pause from the last completion, one in flight; a
/// completion is announced once, after every slot answered.
#[test]
fn interval_and_min_pause_follow_flink() -> TestResult {
    let mut rig = Rig::new(BackendKind::Heap, 2, |c| {
        c.checkpoint.min_pause = Duration::from_secs(8);
    })?;
    let job = new_job_name();
    let mut c = rig.coordinator(&job)?;
    assert_eq!(c.poll()?, None);
    rig.advance(Duration::from_millis(9_999));
    assert_eq!(c.poll()?, None, "before the interval");
    rig.advance(Duration::from_millis(1));
    let t = c.poll()?.ok_or("due after the interval")?;
    assert_eq!(t.kind, CheckpointKind::Periodic);
    assert_eq!(t.mode, CheckpointingMode::ExactlyOnce);
    rig.write(1)?;
    // One slot answered: nothing completes, nothing else triggers (max concurrent 1).
    let snap = rig.slots[0].snapshot_for_checkpoint(t.id)?;
    assert!(c.acknowledge(t.id, 0, SlotReply::Snapshot(snap))?);
    assert!(c.take_events().is_empty(), "a slot has not answered");
    rig.advance(Duration::from_secs(20));
    assert_eq!(c.poll()?, None, "one in flight");
    let snap = rig.slots[1].snapshot_for_checkpoint(t.id)?;
    assert!(c.acknowledge(t.id, 1, SlotReply::Snapshot(snap))?);
    let events = c.take_events();
    assert_eq!(completed(&events), vec![t.id]);
    // Interval long past; the min pause runs from the completion.
    rig.advance(Duration::from_millis(7_999));
    assert_eq!(c.poll()?, None, "within the min pause after the completion");
    rig.advance(Duration::from_millis(1));
    let t2 = c.poll()?.ok_or("due after the min pause")?;
    assert_eq!(t2.id, t.id + 1);
    rig.write(2)?;
    rig.ack_all(&mut c, t2.id)?;
    assert_eq!(completed(&c.take_events()), vec![t2.id]);
    let expected: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + 2)).collect();
    assert_eq!(rig.restore_counters(&job)?, expected);
    Ok(())
}

/// A checkpoint whose barriers are not all in within the timeout (from the trigger) is aborted
/// and counted; past `tolerable-failed` the coordinator fails the job; a completion resets the
/// count; a late answer is dropped and its local files removed.
#[test]
fn the_timeout_covers_barrier_collection_and_failures_are_counted() -> TestResult {
    let mut rig = Rig::new(BackendKind::Heap, 2, |c| {
        c.checkpoint.tolerable_failed = 1;
    })?;
    let job = new_job_name();
    let mut c = rig.coordinator(&job)?;
    rig.advance(Duration::from_secs(10));
    let t1 = c.poll()?.ok_or("due")?;
    let snap = rig.slots[0].snapshot_for_checkpoint(t1.id)?;
    let late_dir = snap.dir().to_path_buf();
    assert!(c.acknowledge(t1.id, 0, SlotReply::Snapshot(snap))?);
    rig.advance(Duration::from_millis(59_999));
    assert_eq!(c.poll()?, None);
    assert!(c.take_events().is_empty());
    rig.advance(Duration::from_millis(1));
    // Expired (counted, 1 <= tolerable 1); the next one is due at once (interval passed).
    let t2 = c.poll()?.ok_or("due after the expiry")?;
    assert_eq!(
        aborted(&c.take_events()),
        vec![(t1.id, AbortReason::Expired, true)]
    );
    assert!(
        !late_dir.exists(),
        "the collected snapshot of the expired checkpoint is removed"
    );
    // Slot 1 answers the expired checkpoint late: dropped.
    let late = rig.slots[1].snapshot_for_checkpoint(t1.id)?;
    let late_dir = late.dir().to_path_buf();
    assert!(!c.acknowledge(t1.id, 1, SlotReply::Snapshot(late))?);
    assert!(!late_dir.exists());
    // The second expires too: 2 > 1 tolerated.
    rig.advance(Duration::from_secs(60));
    match c.poll() {
        Err(EngineError::CheckpointFailed { reason, .. }) => {
            assert!(reason.contains("2 consecutive"), "{reason}")
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    assert_eq!(
        aborted(&c.take_events()),
        vec![(t2.id, AbortReason::Expired, true)]
    );

    // A completion in between resets the count.
    let job = new_job_name();
    let mut c = rig.coordinator(&job)?;
    for round in 0..3 {
        rig.advance(Duration::from_secs(10));
        let t = c.poll()?.ok_or("due")?;
        rig.advance(Duration::from_secs(60));
        let next = c.poll()?.ok_or("due after the expiry")?;
        assert_eq!(
            aborted(&c.take_events()),
            vec![(t.id, AbortReason::Expired, true)],
            "round {round}"
        );
        rig.ack_all(&mut c, next.id)?;
        assert_eq!(completed(&c.take_events()), vec![next.id]);
    }
    Ok(())
}

/// A decline because a slot is not ready is not a failure; a decline after a failure is.
#[test]
fn declines_count_as_flink_counts_them() -> TestResult {
    let rig = Rig::new(BackendKind::Heap, 2, |_| {})?;
    let mut c = rig.coordinator(&new_job_name())?;
    for _ in 0..3 {
        rig.advance(Duration::from_secs(10));
        let t = c.poll()?.ok_or("due")?;
        c.decline(t.id, 1, DeclineReason::NotReady);
        let a = aborted(&c.take_events());
        assert_eq!(a.len(), 1);
        assert!(!a[0].2, "not counted");
    }
    rig.advance(Duration::from_secs(10));
    let t = c.poll()?.ok_or("due")?;
    c.decline(t.id, 0, DeclineReason::Failed("disk full".into()));
    assert!(aborted(&c.take_events())[0].2, "counted");
    rig.advance(Duration::from_secs(10));
    assert!(
        matches!(c.poll(), Err(EngineError::CheckpointFailed { .. })),
        "tolerable-failed is 0"
    );
    Ok(())
}

/// Requests go before periodic checkpoints, savepoints first, and ignore max concurrent and
/// the interval; a completed checkpoint subsumes older ones in flight (not counted); kind and
/// mode are recorded in the committed metadata.
#[test]
fn requests_have_priority_and_a_completion_subsumes_older_checkpoints() -> TestResult {
    let mut rig = Rig::new(BackendKind::Heap, 1, |c| {
        c.checkpoint.max_concurrent = 2;
        c.checkpoint.mode = CheckpointingMode::AtLeastOnce;
    })?;
    let job = new_job_name();
    let mut c = rig.coordinator(&job)?;
    rig.advance(Duration::from_secs(10));
    c.request(CheckpointKind::Forced);
    c.request(CheckpointKind::Savepoint);
    let a = c.poll()?.ok_or("requested")?;
    let b = c.poll()?.ok_or("requested")?;
    assert_eq!(
        (a.kind, b.kind),
        (CheckpointKind::Savepoint, CheckpointKind::Forced)
    );
    assert_eq!(a.mode, CheckpointingMode::AtLeastOnce);
    // Two in flight = max concurrent: the due periodic one waits; a request does not.
    assert_eq!(c.poll()?, None);
    c.request(CheckpointKind::Forced);
    let d = c.poll()?.ok_or("a request ignores max concurrent")?;
    assert_eq!(c.in_flight(), vec![a.id, b.id, d.id]);
    rig.write(5)?;
    rig.ack_all(&mut c, b.id)?;
    let events = c.take_events();
    assert_eq!(completed(&events), vec![b.id]);
    assert_eq!(aborted(&events), vec![(a.id, AbortReason::Subsumed, false)]);
    assert_eq!(c.in_flight(), vec![d.id]);
    let periodic = c.poll()?.ok_or("periodic, one slot free")?;
    assert_eq!(periodic.kind, CheckpointKind::Periodic);
    let restored = RestoredCheckpoint::load(
        &rig.cfg.checkpoint,
        &CheckpointLocation::parse(&format!("{}/{job}", rig.cfg.checkpoint.dir))?,
    )?;
    let props: &BTreeMap<String, String> = &restored.metadata.properties;
    assert_eq!(restored.metadata.checkpoint_id, b.id);
    assert_eq!(props.get("cairn.kind").map(String::as_str), Some("forced"));
    assert_eq!(
        props.get("cairn.mode").map(String::as_str),
        Some("at-least-once")
    );
    // Host properties; `cairn.` keys are reserved.
    assert!(c.set_property(periodic.id, "cairn.kind", "x").is_err());
    c.set_property(periodic.id, "source.offset", "42")?;
    assert!(c.is_in_flight(periodic.id));
    rig.ack_all(&mut c, periodic.id)?;
    assert!(!c.is_in_flight(periodic.id));
    match c.take_events().as_slice() {
        [
            CheckpointEvent::Aborted {
                reason: AbortReason::Subsumed,
                ..
            },
            CheckpointEvent::Completed { properties, .. },
        ] => assert_eq!(
            properties.get("source.offset").map(String::as_str),
            Some("42")
        ),
        other => panic!("the forced one subsumed, then the periodic one completed: {other:?}"),
    }
    let restored = RestoredCheckpoint::load(
        &rig.cfg.checkpoint,
        &CheckpointLocation::parse(&format!("{}/{job}", rig.cfg.checkpoint.dir))?,
    )?;
    assert_eq!(
        restored
            .metadata
            .properties
            .get("source.offset")
            .map(String::as_str),
        Some("42")
    );
    Ok(())
}

/// Max concurrent above 1 needs a zero min pause (Flink's rule).
#[test]
fn concurrent_checkpoints_need_a_zero_min_pause() -> TestResult {
    let mut cfg = cairn::CheckpointConfig::default();
    cfg.max_concurrent = 2;
    cfg.validate()?;
    cfg.min_pause = Duration::from_secs(1);
    let err = cfg
        .validate()
        .err()
        .ok_or("accepted max-concurrent 2 with a min pause")?;
    assert!(
        err.to_string().contains("checkpoint.max-concurrent"),
        "{err}"
    );
    Ok(())
}

/// Cancel aborts what is in flight (not counted) and keeps the committed checkpoints with
/// `retain-on-cancellation` (restorable afterwards), or deletes every one of them without it.
#[test]
fn cancel_retains_or_discards_the_checkpoints() -> TestResult {
    for retain in [true, false] {
        let mut rig = Rig::new(BackendKind::RocksDb, 2, |c| {
            c.checkpoint.retain_on_cancellation = retain;
            c.checkpoint.retained = 2;
        })?;
        let job = new_job_name();
        let mut c = rig.coordinator(&job)?;
        for v in 1..=3 {
            rig.write(v)?;
            rig.advance(Duration::from_secs(10));
            let t = c.poll()?.ok_or("due")?;
            rig.ack_all(&mut c, t.id)?;
        }
        rig.advance(Duration::from_secs(10));
        let pending = c.poll()?.ok_or("due")?;
        let (outcome, events) = c.cancel()?;
        assert_eq!(
            aborted(&events),
            vec![(pending.id, AbortReason::Cancelled, false)]
        );
        let committed = support::checkpoints::committed_verified(&rig.cfg.checkpoint.dir, &job)?;
        if retain {
            assert_eq!(committed, vec![2, 3]);
            assert!(
                matches!(
                    outcome,
                    CancelOutcome::Retained {
                        latest: Some(3),
                        ..
                    }
                ),
                "{outcome:?}"
            );
            let expected: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + 3)).collect();
            assert_eq!(rig.restore_counters(&job)?, expected);
        } else {
            assert_eq!(outcome, CancelOutcome::Discarded { ids: vec![2, 3] });
            assert!(committed.is_empty());
            let shared = rig.root.path().join("cp").join(&job).join("shared");
            let left = std::fs::read_dir(&shared).map(|d| d.count()).unwrap_or(0);
            assert_eq!(
                left, 0,
                "shared objects left after discarding every checkpoint"
            );
        }
    }
    Ok(())
}

/// Slots that upload their own part (as slots in other processes do): the coordinator commits
/// once every ack is in; uploaders confirm from the committed metadata, so the next checkpoint
/// uploads only new files. An ack whose object is missing, or that reuses an object no retained
/// checkpoint holds, is refused and its checkpoint aborted, never committed with a dangling
/// reference; the job goes on from the last committed checkpoint.
#[test]
fn acks_of_self_uploading_slots_commit_and_bad_ones_are_refused() -> TestResult {
    let mut rig = Rig::new(BackendKind::RocksDb, 2, |c| {
        c.checkpoint.tolerable_failed = 5
    })?;
    let job = new_job_name();
    let mut c = rig.coordinator(&job)?;
    let target = c.upload_target();
    let mut uploaders = (0..2)
        .map(|i| SlotUploader::open(&rig.cfg.checkpoint, target.clone(), i))
        .collect::<Result<Vec<_>, _>>()?;
    let cp_root = rig.root.path().join("cp");
    // One checkpoint; `tamper` may change slot 1's ack before it is sent.
    let mut round = |rig: &mut Rig,
                     c: &mut CheckpointCoordinator,
                     v: u64,
                     tamper: &dyn Fn(u64, &mut cairn::SlotAck)|
     -> Result<(u64, Vec<CheckpointEvent>), Box<dyn std::error::Error>> {
        rig.write(v)?;
        rig.advance(Duration::from_secs(10));
        let t = c.poll()?.ok_or("due")?;
        for (slot, up) in rig.slots.iter_mut().zip(uploaders.iter_mut()) {
            let ack = up.upload(slot.snapshot_for_checkpoint(t.id)?)?;
            // Through the wire format a remote slot would use.
            let mut ack: cairn::SlotAck = serde_json::from_slice(&serde_json::to_vec(&ack)?)?;
            if slot.index().0 == 1 {
                tamper(t.id, &mut ack);
            }
            c.acknowledge(t.id, slot.index().0, SlotReply::Uploaded(ack))?;
        }
        let events = c.take_events();
        for e in &events {
            for up in uploaders.iter_mut() {
                match e {
                    CheckpointEvent::Completed { id, .. } => up.checkpoint_completed(*id)?,
                    CheckpointEvent::Aborted { id, .. } => up.checkpoint_aborted(*id),
                    CheckpointEvent::SavepointWritten { .. }
                    | CheckpointEvent::SavepointFailed { .. } => {}
                }
            }
        }
        Ok((t.id, events))
    };
    let report = |events: &[CheckpointEvent]| match events.first() {
        Some(CheckpointEvent::Completed { report, .. }) => Ok(report.clone()),
        other => Err(format!("not completed: {other:?}")),
    };
    let (_, events) = round(&mut rig, &mut c, 1, &|_, _| {})?;
    assert!(report(&events)?.files_uploaded > 0);
    let (id2, events) = round(&mut rig, &mut c, 2, &|_, _| {})?;
    let second = report(&events)?;
    assert!(
        second.files_reused > 0,
        "the second checkpoint reuses the first's files: {second:?}"
    );
    let expected2: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + 2)).collect();
    assert_eq!(rig.restore_counters(&job)?, expected2);

    // Reuses an object no checkpoint holds.
    let (id3, events) = round(&mut rig, &mut c, 3, &|_, ack| {
        let f = &mut ack.handle.shared[0];
        let base = f
            .object
            .rsplit_once("-c")
            .map_or(f.object.clone(), |(b, _)| b.to_string());
        f.object = format!("{base}-c999");
    })?;
    match aborted(&events).as_slice() {
        [(id, AbortReason::Failed(reason), true)] if *id == id3 => {
            assert!(reason.contains("no retained checkpoint holds"), "{reason}")
        }
        other => panic!("checkpoint {id3} should be refused: {other:?}"),
    }
    // An object it uploaded is gone before the commit.
    let (id4, events) = round(&mut rig, &mut c, 4, &|id, ack| {
        let suffix = format!("-c{id}");
        if let Some(f) = ack
            .handle
            .shared
            .iter()
            .find(|f| f.object.ends_with(&suffix))
        {
            let _ = std::fs::remove_file(cp_root.join(&f.object));
        }
    })?;
    match aborted(&events).as_slice() {
        [(id, AbortReason::Failed(reason), true)] if *id == id4 => {
            assert!(reason.contains("does not exist"), "{reason}")
        }
        other => panic!("checkpoint {id4} should be refused: {other:?}"),
    }
    assert_eq!(
        support::checkpoints::committed_verified(&rig.cfg.checkpoint.dir, &job)?,
        vec![id2]
    );
    assert_eq!(rig.restore_counters(&job)?, expected2);
    // The job goes on.
    let (id5, events) = round(&mut rig, &mut c, 5, &|_, _| {})?;
    report(&events)?;
    assert_eq!(
        support::checkpoints::committed_verified(&rig.cfg.checkpoint.dir, &job)?,
        vec![id5]
    );
    let expected5: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + 5)).collect();
    assert_eq!(rig.restore_counters(&job)?, expected5);
    Ok(())
}

/// An ack must name its checkpoint and slot; a slot answers once; a slot beyond the job's is
/// refused.
#[test]
fn malformed_answers_are_refused() -> TestResult {
    let mut rig = Rig::new(BackendKind::Heap, 2, |_| {})?;
    let mut c = rig.coordinator(&new_job_name())?;
    rig.advance(Duration::from_secs(10));
    let t = c.poll()?.ok_or("due")?;
    let snap = rig.slots[0].snapshot_for_checkpoint(t.id)?;
    assert!(c.acknowledge(t.id, 5, SlotReply::Snapshot(snap)).is_err());
    let snap = rig.slots[0].snapshot_for_checkpoint(t.id)?;
    assert!(c.acknowledge(t.id, 0, SlotReply::Snapshot(snap))?);
    let snap = rig.slots[0].snapshot_for_checkpoint(t.id)?;
    let dir = snap.dir().to_path_buf();
    assert!(c.acknowledge(t.id, 0, SlotReply::Snapshot(snap)).is_err());
    assert!(!dir.exists());
    assert!(c.take_events().is_empty(), "slot 1 has not answered");
    Ok(())
}
