//! Periodic checkpoints during `cairn run`: barrier positions in the record stream, the
//! coordinator thread, and restore of the slots at start.
//!
//! ## Barriers
//! Every slot walks the same stream `g = 0..records`. To checkpoint, the coordinator picks a
//! position `B` a little ahead of the fastest slot and publishes `(B, id)`; each slot takes its
//! synchronous snapshot just before record `B` (or at the end of the stream when `B >= records`),
//! so all slots' snapshots hold exactly the records `< B` — a consistent cut, like Flink's
//! aligned barriers. A slot that is already past `B` declines, and the checkpoint is dropped
//! (not counted as a failure). `B` is stored as the checkpoint's `position` property, and a run
//! restored from it continues at `g = B`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use cairn_engine::checkpoint::{
    AbortReason, CheckpointCoordinator, CheckpointEvent, CheckpointKind, CheckpointReport,
    CompactionStats, DeclineReason, SlotReply, SyncSnapshot,
};
use cairn_engine::savepoint::{SavepointKind, SavepointLocation, SavepointReport};
use cairn_engine::{CairnConfig, EngineError, Metrics, Slot};

/// The property holding a checkpoint's stream position.
pub const POSITION: &str = "position";

/// Most records a slot processes between two publications of its stream position
/// (`Barriers::positions`); the coordinator places barriers ahead of the fastest slot by a
/// margin derived from it.
pub const POSITION_EVERY: u64 = 16 * 1024;

/// What a slot answers to a barrier.
// One reply per slot and checkpoint: boxing the snapshot would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum BarrierReply {
    /// The synchronous snapshot (or its error).
    Snapshot(Result<SyncSnapshot, EngineError>),
    /// The slot was already past the barrier.
    Missed,
}

/// State shared by the slot threads and the coordinator.
pub struct Barriers {
    pos: AtomicU64,
    id: AtomicU64,
    /// Each slot's current stream position (published in batches).
    pub positions: Vec<AtomicU64>,
    /// Slots that finished their records.
    pub slots_done: AtomicU32,
    /// Set when the final checkpoint is done: slots may leave.
    pub final_done: AtomicBool,
    /// Whether checkpoints are taken at all.
    pub enabled: bool,
    /// Whether a slot starts flushing its memtables when it first sees a barrier ahead of it
    /// ([`Slot::start_pre_flush`]; `checkpoint.pre-flush`).
    pub pre_flush: bool,
    /// "chk-7: 3.1 MB incremental / 40 MB full" for the progress line.
    pub last: Mutex<String>,
    replies: Mutex<Sender<(u32, u64, BarrierReply)>>,
    /// Per slot: compact before the next snapshot (`checkpoint.rebase.max-space-amplification`).
    compact: Vec<AtomicBool>,
    /// Compactions the slots ran, for the next checkpoint's report.
    compacted: Mutex<Vec<(u32, CompactionStats)>>,
    /// Stop with a savepoint: where, in which format, and the job's configuration; the final
    /// checkpoint is then the coordinator's savepoint request.
    pub final_savepoint: Option<(SavepointLocation, SavepointKind, CairnConfig)>,
    /// What the final savepoint wrote.
    pub savepoint: Mutex<Option<SavepointReport>>,
    /// Every barrier published: (checkpoint id, position).
    published: Mutex<Vec<(u64, u64)>>,
}

impl Barriers {
    /// Barriers for `slots` slots; replies arrive on the returned receiver.
    pub fn new(slots: u32, enabled: bool) -> (Self, Receiver<(u32, u64, BarrierReply)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Self {
                pos: AtomicU64::new(u64::MAX),
                id: AtomicU64::new(0),
                positions: (0..slots).map(|_| AtomicU64::new(0)).collect(),
                slots_done: AtomicU32::new(0),
                final_done: AtomicBool::new(!enabled),
                enabled,
                pre_flush: true,
                last: Mutex::new(String::new()),
                replies: Mutex::new(tx),
                final_savepoint: None,
                savepoint: Mutex::new(None),
                published: Mutex::new(Vec::new()),
                compact: (0..slots).map(|_| AtomicBool::new(false)).collect(),
                compacted: Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    fn publish(&self, pos: u64, id: u64) {
        if let Ok(mut p) = self.published.lock() {
            p.push((id, pos));
        }
        self.pos.store(pos, Ordering::Release);
        self.id.store(id, Ordering::Release);
    }

    /// Every barrier published: (checkpoint id, stream position).
    pub fn positions_by_id(&self) -> Vec<(u64, u64)> {
        self.published.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Called by a slot before record `g` (and at the end of the stream with `g = records`):
    /// takes the snapshot when a new barrier is at `g`, declines when it is behind, and starts
    /// the pre-flush when it first sees the barrier ahead.
    #[inline]
    pub fn check(&self, slot: &mut Slot, g: u64, records: u64, cursor: &mut BarrierCursor) {
        if cursor.preparing {
            // One bounded step of the pre-flush per record (see `Slot::start_pre_flush`).
            cursor.preparing = slot.continue_pre_flush().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "pre-flush step failed");
                false
            });
        }
        // The per-record fast path: one atomic load.
        let id = self.id.load(Ordering::Acquire);
        if id <= cursor.seen {
            return;
        }
        // A new barrier is pending: a rebase compaction asked for by the last completed
        // checkpoint runs now, before this checkpoint snapshots the slot.
        let index = slot.index().0;
        if let Some(flag) = self.compact.get(index as usize)
            && flag.load(Ordering::Relaxed)
            && flag.swap(false, Ordering::AcqRel)
        {
            match slot.compact_state() {
                Ok(stats) => {
                    if let Ok(mut c) = self.compacted.lock() {
                        c.push((index, stats));
                    }
                }
                Err(e) => tracing::warn!(error = %e, slot = index, "rebase compaction failed"),
            }
        }
        let pos = self.pos.load(Ordering::Acquire);
        let at_end = g >= records && pos >= records;
        let reply = if g == pos || at_end {
            // The synchronous phase writes whatever the pre-flush had left.
            cursor.preparing = false;
            BarrierReply::Snapshot(slot.snapshot_for_checkpoint(id))
        } else if g > pos {
            BarrierReply::Missed
        } else {
            if self.pre_flush && cursor.prepared < id {
                cursor.prepared = id;
                // Only an optimisation: the synchronous phase flushes whatever is left.
                match slot.start_pre_flush() {
                    Ok(()) => cursor.preparing = true,
                    Err(e) => tracing::warn!(error = %e, "pre-flush for checkpoint {id} failed"),
                }
            }
            return;
        };
        cursor.seen = id;
        if let Ok(tx) = self.replies.lock() {
            let _ = tx.send((index, id, reply));
        }
    }

    /// Called by a slot at the end of its records: publishes its position, starts the
    /// pre-flush for the final checkpoint (which is taken as soon as every slot is here, so no
    /// barrier is seen ahead of it), and takes part in checkpoints until the final one is done.
    pub fn finish(&self, slot: &mut Slot, records: u64, cursor: &mut BarrierCursor) {
        let index = slot.index().0 as usize;
        if let Some(p) = self.positions.get(index) {
            p.store(records, Ordering::Relaxed);
        }
        if self.enabled && self.pre_flush {
            // All at once: the final checkpoint follows as soon as every slot is here.
            let r = slot.start_pre_flush().and_then(|()| {
                while slot.continue_pre_flush()? {}
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "pre-flush for the final checkpoint failed");
            }
            cursor.preparing = false;
        }
        self.slots_done.fetch_add(1, Ordering::AcqRel);
        while !self.final_done.load(Ordering::Acquire) {
            self.check(slot, records, records, cursor);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A slot's progress through the barriers.
#[derive(Debug, Default)]
pub struct BarrierCursor {
    /// The last barrier answered.
    seen: u64,
    /// The last barrier whose pre-flush was started.
    prepared: u64,
    /// A pre-flush has steps left (one is taken per record).
    preparing: bool,
}

/// Runs the coordinator until the final checkpoint is done (or `abort` is set). Returns the
/// error that must fail the run. When to trigger, when a checkpoint expired, what counts as a
/// failure and when the run must fail is the engine's [`CheckpointCoordinator`] (the API every
/// host uses): this function only places barriers in the stream and carries the slots'
/// answers. A slot already past its barrier declines as not ready (not a failure); a failed
/// synchronous phase fails the run (Flink fails over on it too).
pub fn coordinate(
    coordinator: &mut CheckpointCoordinator,
    barriers: &Barriers,
    replies: &Receiver<(u32, u64, BarrierReply)>,
    slots: u32,
    records: u64,
    abort: &AtomicBool,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    // Far enough ahead that no slot passes the barrier before it sees it: the positions slots
    // publish are up to `POSITION_EVERY` records per slot stale.
    let margin = 4 * POSITION_EVERY * u64::from(slots) + 10_000;
    let result = loop {
        if abort.load(Ordering::Relaxed) {
            break Ok(());
        }
        let all_done = barriers.slots_done.load(Ordering::Acquire) == slots;
        let pos = if all_done {
            records
        } else {
            let max = barriers
                .positions
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            max + margin
        };
        // The final checkpoint, at the end of the stream, is requested; a periodic one is
        // triggered only where the slots still have a record to stop before.
        if all_done {
            match &barriers.final_savepoint {
                Some((target, format, config)) => {
                    coordinator.request_savepoint(target.clone(), *format, config)
                }
                None => coordinator.request(CheckpointKind::Forced),
            }
        }
        let trigger = if all_done || (pos < records && coordinator.periodic_due()) {
            coordinator.poll()
        } else {
            coordinator.expire_overdue();
            Ok(None)
        };
        let t = match trigger {
            Ok(Some(t)) => t,
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => break Err(e),
        };
        if let Err(e) = coordinator.set_property(t.id, POSITION, &pos.min(records).to_string()) {
            break Err(e);
        }
        barriers.publish(pos, t.id);
        if let Err(e) = collect(coordinator, barriers, replies, t.id, abort) {
            break Err(e);
        }
        let mut failure = None;
        for event in coordinator.take_events() {
            match event {
                CheckpointEvent::Completed { report, .. } => {
                    metrics.checkpoint_completed(&report);
                    for s in &report.compact_slots {
                        if let Some(f) = barriers.compact.get(*s as usize) {
                            f.store(true, Ordering::Release);
                        }
                    }
                    note(barriers, &report);
                }
                CheckpointEvent::Aborted {
                    id,
                    reason:
                        AbortReason::Declined {
                            reason: DeclineReason::NotReady,
                            ..
                        },
                    ..
                } => {
                    metrics.checkpoint_declined();
                    tracing::info!("checkpoint {id} declined: a slot was past its barrier");
                }
                CheckpointEvent::Aborted { id, reason, .. } => {
                    metrics.checkpoint_failed();
                    tracing::warn!(?reason, "checkpoint {id} failed");
                    failure = Some((id, format!("{reason:?}")));
                }
                CheckpointEvent::SavepointWritten { report, .. } => {
                    if let Ok(mut s) = barriers.savepoint.lock() {
                        *s = Some(report);
                    }
                }
                // The run's result: it must be written.
                CheckpointEvent::SavepointFailed { id, reason } => {
                    failure = Some((id, format!("its savepoint failed: {reason}")));
                }
            }
        }
        if let Err(e) = coordinator.check_tolerance() {
            break Err(e);
        }
        if all_done {
            // The final checkpoint is the run's result: it must complete.
            break match failure {
                Some((id, reason)) => Err(EngineError::CheckpointFailed {
                    id,
                    reason: format!("the final checkpoint failed: {reason}"),
                }),
                None => Ok(()),
            };
        }
    };
    barriers.final_done.store(true, Ordering::Release);
    result
}

/// Carries the slots' answers to checkpoint `id` to the coordinator until it completed or was
/// aborted (or the run is aborted).
fn collect(
    coordinator: &mut CheckpointCoordinator,
    barriers: &Barriers,
    replies: &Receiver<(u32, u64, BarrierReply)>,
    id: u64,
    abort: &AtomicBool,
) -> Result<(), EngineError> {
    while coordinator.in_flight().contains(&id) {
        coordinator.expire_overdue();
        match replies.recv_timeout(Duration::from_millis(50)) {
            Ok((slot, rid, BarrierReply::Snapshot(Ok(s)))) => {
                if rid == id {
                    // Compactions ran on the slot threads before their snapshots.
                    if let Ok(mut c) = barriers.compacted.lock() {
                        for (slot, stats) in c.drain(..) {
                            coordinator.checkpointer_mut().note_compaction(slot, stats);
                        }
                    }
                }
                // A late answer to an aborted checkpoint is dropped (its files removed).
                coordinator.acknowledge(rid, slot, SlotReply::Snapshot(s))?;
            }
            Ok((slot, rid, BarrierReply::Missed)) => {
                coordinator.decline(rid, slot, DeclineReason::NotReady);
            }
            Ok((slot, rid, BarrierReply::Snapshot(Err(e)))) => {
                coordinator.decline(rid, slot, DeclineReason::Failed(e.to_string()));
                return Err(e);
            }
            Err(RecvTimeoutError::Timeout) => {
                if abort.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
    Ok(())
}

fn note(barriers: &Barriers, r: &CheckpointReport) {
    if let Ok(mut l) = barriers.last.lock() {
        *l = format!(
            "chk-{}: {:.1} MB uploaded / {:.1} MB full",
            r.id,
            r.incremental_bytes as f64 / 1e6,
            r.full_bytes as f64 / 1e6
        );
    }
}
