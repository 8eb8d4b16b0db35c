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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_engine::checkpoint::{
    CheckpointReport, CheckpointSchedule, Checkpointer, CompactionStats, SyncSnapshot,
};
use cairn_engine::{EngineError, Metrics, Slot};
use cairn_snapshot::SystemClock;

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
    /// ([`Slot::prepare_checkpoint`]; `checkpoint.pre-flush`).
    pub pre_flush: bool,
    /// "chk-7: 3.1 MB incremental / 40 MB full" for the progress line.
    pub last: Mutex<String>,
    replies: Mutex<Sender<(u32, u64, BarrierReply)>>,
    /// Per slot: compact before the next snapshot (`checkpoint.rebase.max-space-amplification`).
    compact: Vec<AtomicBool>,
    /// Compactions the slots ran, for the next checkpoint's report.
    compacted: Mutex<Vec<(u32, CompactionStats)>>,
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
                compact: (0..slots).map(|_| AtomicBool::new(false)).collect(),
                compacted: Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    fn publish(&self, pos: u64, id: u64) {
        self.pos.store(pos, Ordering::Release);
        self.id.store(id, Ordering::Release);
    }

    /// Called by a slot before record `g` (and at the end of the stream with `g = records`):
    /// takes the snapshot when a new barrier is at `g`, declines when it is behind, and starts
    /// the pre-flush when it first sees the barrier ahead.
    #[inline]
    pub fn check(&self, slot: &mut Slot, g: u64, records: u64, cursor: &mut BarrierCursor) {
        if cursor.preparing {
            // One bounded step of the pre-flush per record (see `Slot::prepare_checkpoint`).
            cursor.preparing = slot.continue_checkpoint_preparation().unwrap_or_else(|e| {
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
                match slot.prepare_checkpoint() {
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
            let r = slot.prepare_checkpoint().and_then(|()| {
                while slot.continue_checkpoint_preparation()? {}
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
/// reports of the completed checkpoints, or the error that must fail the run. When to trigger
/// and when a checkpoint has expired is the engine's [`CheckpointSchedule`] (Flink's interval,
/// min pause from the last completion, timeout from the trigger, so barrier collection is
/// under it); an expired checkpoint counts against `tolerable-failed`.
pub fn coordinate(
    cp: &mut Checkpointer,
    barriers: &Barriers,
    replies: &Receiver<(u32, u64, BarrierReply)>,
    slots: u32,
    records: u64,
    abort: &AtomicBool,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    let mut schedule = CheckpointSchedule::new(cp.config(), Arc::new(SystemClock));
    // Far enough ahead that no slot passes the barrier before it sees it: the positions slots
    // publish are up to `POSITION_EVERY` records per slot stale.
    let margin = 4 * POSITION_EVERY * u64::from(slots) + 10_000;
    loop {
        if abort.load(Ordering::Relaxed) {
            barriers.final_done.store(true, Ordering::Release);
            return Ok(());
        }
        let all_done = barriers.slots_done.load(Ordering::Acquire) == slots;
        let due = schedule.due();
        if all_done || due {
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
            if all_done || pos < records {
                let id = cp.next_id();
                schedule.triggered(id);
                barriers.publish(pos, id);
                let mut completed = false;
                match collect(replies, id, slots, abort, &schedule) {
                    Collected::All(syncs) => {
                        // Compactions ran on the slot threads before their snapshots.
                        if let Ok(mut c) = barriers.compacted.lock() {
                            for (slot, stats) in c.drain(..) {
                                cp.note_compaction(slot, stats);
                            }
                        }
                        let props =
                            BTreeMap::from([(POSITION.to_string(), pos.min(records).to_string())]);
                        match cp.complete_with(id, syncs, props) {
                            Ok(r) => {
                                completed = true;
                                metrics.checkpoint_completed(&r);
                                for s in &r.compact_slots {
                                    if let Some(f) = barriers.compact.get(*s as usize) {
                                        f.store(true, Ordering::Release);
                                    }
                                }
                                note(barriers, &r);
                            }
                            Err(e) if cp.failure_tolerated() && !all_done => {
                                metrics.checkpoint_failed();
                                tracing::warn!(error = %e, "checkpoint failed (tolerated)");
                            }
                            Err(e) => {
                                metrics.checkpoint_failed();
                                barriers.final_done.store(true, Ordering::Release);
                                return Err(e);
                            }
                        }
                    }
                    Collected::Declined(syncs) => {
                        metrics.checkpoint_declined();
                        for s in syncs {
                            let _ = std::fs::remove_dir_all(s.dir());
                        }
                        tracing::info!("checkpoint {id} declined: a slot was past its barrier");
                    }
                    Collected::Expired(syncs) => {
                        for s in syncs {
                            let _ = std::fs::remove_dir_all(s.dir());
                        }
                        cp.checkpoint_expired(id);
                        metrics.checkpoint_failed();
                        let timeout = cp.config().timeout;
                        tracing::warn!(
                            ?timeout,
                            "checkpoint {id} expired before every slot answered"
                        );
                        if !cp.failure_tolerated() || all_done {
                            barriers.final_done.store(true, Ordering::Release);
                            return Err(EngineError::CheckpointFailed {
                                id,
                                reason: format!(
                                    "expired after {timeout:?} before every slot took its snapshot"
                                ),
                            });
                        }
                    }
                    Collected::Failed(e) => {
                        metrics.checkpoint_failed();
                        barriers.final_done.store(true, Ordering::Release);
                        return Err(e);
                    }
                    Collected::Aborted => {}
                }
                schedule.finished(id, completed);
            }
            if all_done {
                barriers.final_done.store(true, Ordering::Release);
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

enum Collected {
    All(Vec<SyncSnapshot>),
    Declined(Vec<SyncSnapshot>),
    /// The timeout passed before every slot answered (the snapshots collected so far).
    Expired(Vec<SyncSnapshot>),
    Failed(EngineError),
    Aborted,
}

fn collect(
    replies: &Receiver<(u32, u64, BarrierReply)>,
    id: u64,
    slots: u32,
    abort: &AtomicBool,
    schedule: &CheckpointSchedule,
) -> Collected {
    let (mut syncs, mut answered, mut missed) = (Vec::new(), 0u32, false);
    while answered < slots {
        if schedule.expired().contains(&id) {
            return Collected::Expired(syncs);
        }
        match replies.recv_timeout(Duration::from_millis(50)) {
            // A late answer to an expired checkpoint: its snapshot is not needed.
            Ok((_, rid, BarrierReply::Snapshot(Ok(s)))) if rid != id => {
                let _ = std::fs::remove_dir_all(s.dir());
            }
            Ok((_, rid, _)) if rid != id => {}
            Ok((_, _, BarrierReply::Missed)) => {
                answered += 1;
                missed = true;
            }
            Ok((_, _, BarrierReply::Snapshot(Ok(s)))) => {
                answered += 1;
                syncs.push(s);
            }
            // A failed synchronous phase fails the run (Flink fails over on it too).
            Ok((_, _, BarrierReply::Snapshot(Err(e)))) => return Collected::Failed(e),
            Err(RecvTimeoutError::Timeout) => {
                if abort.load(Ordering::Relaxed) {
                    return Collected::Aborted;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Collected::Aborted,
        }
    }
    if missed {
        Collected::Declined(syncs)
    } else {
        Collected::All(syncs)
    }
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
