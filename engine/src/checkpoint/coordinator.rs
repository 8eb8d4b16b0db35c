//! The job's checkpoint coordinator: what a host engine codes against to checkpoint its slots
//! with Flink's semantics, whether the slots live in this process or in others.
//!
//! The coordinator decides, the host moves data. Its loop:
//! 1. [`CheckpointCoordinator::poll`] expires overdue checkpoints and, when one is due (or
//!    requested), returns a [`TriggeredCheckpoint`]: the host injects a barrier with its id.
//! 2. Each slot, at the barrier, answers through the host with
//!    [`CheckpointCoordinator::acknowledge`]: its synchronous snapshot
//!    ([`SlotReply::Snapshot`], a slot of this process; the coordinator uploads) or the
//!    [`SlotAck`] of its own upload ([`SlotReply::Uploaded`], a slot of any process, see
//!    [`SlotUploader`](crate::checkpoint::SlotUploader)); or it declines
//!    ([`CheckpointCoordinator::decline`]).
//! 3. When every slot answered, the coordinator commits and queues a
//!    [`CheckpointEvent::Completed`]; an expired, declined or failed checkpoint queues a
//!    [`CheckpointEvent::Aborted`]. The host takes them with
//!    [`CheckpointCoordinator::take_events`] and tells its slots (uploaders confirm their
//!    files) and its two-phase sinks (publish output up to that checkpoint, or roll back).
//! 4. [`CheckpointCoordinator::cancel`] ends the job: the checkpoints in flight are aborted,
//!    and the committed ones are kept or deleted (`retain-on-cancellation`).
//!
//! Rules (Flink's `CheckpointCoordinator`, `CheckpointRequestDecider`,
//! `CheckpointFailureManager`):
//! - Periodic checkpoints follow [`CheckpointSchedule`]: interval from the previous trigger,
//!   min pause from the last completion, at most `max-concurrent` in flight, timeout from the
//!   trigger (barrier collection included).
//! - Requested checkpoints ([`CheckpointKind::Savepoint`] before [`CheckpointKind::Forced`])
//!   go before periodic ones and ignore interval, min pause and max concurrent.
//! - Failures counted against `tolerable-failed` (consecutive, reset by a completion): an
//!   expired checkpoint, a decline with [`DeclineReason::Failed`], a failed upload or commit.
//!   Not counted: a decline with [`DeclineReason::NotReady`] (a slot still starting or
//!   finishing), an older checkpoint subsumed by a newer completion, an abort by cancel. Past
//!   the tolerance, [`CheckpointCoordinator::poll`] fails with
//!   [`EngineError::CheckpointFailed`]: the host fails the job over.
//! - A completed checkpoint subsumes every older one still in flight (aborted, not counted).
//! - Every committed checkpoint records its kind (`cairn.kind`) and the barriers' consistency
//!   (`cairn.mode`, [`CheckpointingMode`]) in its properties.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use cairn_snapshot::{Clock, UploadTarget};

use super::checkpointer::{CheckpointLocation, CheckpointReport, Checkpointer};
use super::config::CheckpointingMode;
use super::schedule::CheckpointSchedule;
use super::slot_uploader::SlotAck;
use super::sync::SyncSnapshot;
use crate::config::CairnConfig;
use crate::error::{EngineError, Result};
use crate::savepoint::{
    SavepointKind, SavepointLocation, SavepointReport, create_savepoint_with_clock,
};

/// The property naming a checkpoint's kind (`periodic`, `forced`, `savepoint`).
pub const KIND_PROPERTY: &str = "cairn.kind";
/// The property naming the barriers' consistency (`exactly-once`, `at-least-once`).
pub const MODE_PROPERTY: &str = "cairn.mode";

/// Why a checkpoint was triggered; requested kinds go first, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckpointKind {
    /// Due by the interval.
    Periodic,
    /// Requested by the host or a user, outside the interval.
    Forced,
    /// Requested as a savepoint ([`CheckpointCoordinator::request_savepoint`]): a checkpoint
    /// marked `savepoint`, triggered with the savepoint's priority, from which the coordinator
    /// writes the savepoint once it commits.
    Savepoint,
}

impl std::fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointKind::Periodic => "periodic",
            CheckpointKind::Forced => "forced",
            CheckpointKind::Savepoint => "savepoint",
        })
    }
}

/// A checkpoint the host must inject a barrier for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggeredCheckpoint {
    /// Its id: the barrier carries it, slots snapshot with it.
    pub id: u64,
    /// Why it was triggered.
    pub kind: CheckpointKind,
    /// How the host aligns barriers for it.
    pub mode: CheckpointingMode,
}

/// A slot's answer to a barrier.
// One per slot and checkpoint: boxing the snapshot would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum SlotReply {
    /// The synchronous snapshot of a slot in this process: the coordinator uploads it (with
    /// the other slots' in parallel, through the job's registry, with local recovery).
    Snapshot(SyncSnapshot),
    /// A slot that uploaded its part itself (in any process).
    Uploaded(SlotAck),
}

/// Why a slot declined a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeclineReason {
    /// The slot can't take part yet or any more (starting, restoring, finishing): not a
    /// failure (Flink's `CHECKPOINT_DECLINED_TASK_NOT_READY`).
    NotReady,
    /// The slot failed to snapshot or upload: counts against `tolerable-failed`.
    Failed(String),
}

/// Why a checkpoint was aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// Not completed within `checkpoint.timeout` of its trigger.
    Expired,
    /// A slot declined it.
    Declined {
        /// The slot.
        slot: u32,
        /// Why.
        reason: DeclineReason,
    },
    /// Uploading or committing failed.
    Failed(String),
    /// A newer checkpoint completed first.
    Subsumed,
    /// The job was cancelled.
    Cancelled,
}

/// What happened to a checkpoint, for the host's slots and sinks.
#[derive(Clone, Debug)]
pub enum CheckpointEvent {
    /// Committed: its state is what a restore gets; a two-phase sink publishes the output of
    /// records before its barrier; slot uploaders confirm their files
    /// ([`SlotUploader::checkpoint_completed`](crate::checkpoint::SlotUploader::checkpoint_completed)).
    Completed {
        /// The checkpoint.
        id: u64,
        /// Its kind.
        kind: CheckpointKind,
        /// What it did.
        report: CheckpointReport,
        /// The properties committed with it (host ones from
        /// [`CheckpointCoordinator::set_property`], and `cairn.kind` / `cairn.mode`): a source
        /// that commits its offset on completion reads it here.
        properties: BTreeMap<String, String>,
    },
    /// The savepoint requested with [`CheckpointCoordinator::request_savepoint`] was written
    /// from checkpoint `id` (which completed just before: its `Completed` event comes first).
    SavepointWritten {
        /// The checkpoint it was made from.
        id: u64,
        /// What was written.
        report: SavepointReport,
    },
    /// The savepoint of checkpoint `id` could not be written. The checkpoint itself committed
    /// (this is not a checkpoint failure); nothing of the savepoint is left behind.
    SavepointFailed {
        /// The checkpoint it was to be made from.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Not committed, and never will be: a two-phase sink discards what it staged for it;
    /// uploaders forget its files.
    Aborted {
        /// The checkpoint.
        id: u64,
        /// Its kind.
        kind: CheckpointKind,
        /// Why.
        reason: AbortReason,
        /// Whether it counted against `tolerable-failed`.
        counted: bool,
    },
}

impl CheckpointEvent {
    /// The checkpoint the event is about.
    pub fn id(&self) -> u64 {
        match self {
            CheckpointEvent::Completed { id, .. }
            | CheckpointEvent::Aborted { id, .. }
            | CheckpointEvent::SavepointWritten { id, .. }
            | CheckpointEvent::SavepointFailed { id, .. } => *id,
        }
    }
}

/// What [`CheckpointCoordinator::cancel`] did with the job's checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Kept (`retain-on-cancellation = true`): restore from the latest, if any.
    Retained {
        /// The latest committed checkpoint.
        latest: Option<u64>,
        /// `<checkpoint dir>/<job>`, what `--restore-from` takes.
        job_url: String,
    },
    /// Deleted (`retain-on-cancellation = false`).
    Discarded {
        /// The checkpoints deleted.
        ids: Vec<u64>,
    },
}

/// A savepoint requested and not yet written: where, in which format, and the configuration
/// its writer opens scratch slots with.
struct SavepointRequest {
    target: SavepointLocation,
    format: SavepointKind,
    config: Box<CairnConfig>,
}

struct InFlight {
    kind: CheckpointKind,
    savepoint: Option<SavepointRequest>,
    replies: BTreeMap<u32, SlotReply>,
    properties: BTreeMap<String, String>,
}

/// The coordinator of one job's checkpoints. See the module doc.
pub struct CheckpointCoordinator {
    checkpointer: Checkpointer,
    schedule: CheckpointSchedule,
    clock: Arc<dyn Clock>,
    parallelism: u32,
    mode: CheckpointingMode,
    requests: Vec<CheckpointKind>,
    savepoints: VecDeque<SavepointRequest>,
    in_flight: BTreeMap<u64, InFlight>,
    events: VecDeque<CheckpointEvent>,
}

impl CheckpointCoordinator {
    /// The coordinator of `checkpointer`'s job with `parallelism` slots. Its clock is the
    /// checkpoint storage's (so tests drive timeouts, the schedule and the storage with one
    /// virtual clock); the schedule starts now.
    pub fn new(checkpointer: Checkpointer, parallelism: u32) -> Result<Self> {
        if parallelism == 0 {
            return Err(EngineError::InvalidArgument(
                "a job has at least one slot".into(),
            ));
        }
        let clock = checkpointer.store().storage().clock().clone();
        let cfg = checkpointer.config();
        Ok(Self {
            schedule: CheckpointSchedule::new(cfg, clock.clone()),
            mode: cfg.mode,
            clock,
            checkpointer,
            parallelism,
            requests: Vec::new(),
            savepoints: VecDeque::new(),
            in_flight: BTreeMap::new(),
            events: VecDeque::new(),
        })
    }

    /// The job's checkpointer (reports, restore, the store).
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }

    /// The job's checkpointer, mutably (restore before the first trigger, compactions).
    pub fn checkpointer_mut(&mut self) -> &mut Checkpointer {
        &mut self.checkpointer
    }

    /// Where slots in other processes upload (see
    /// [`SlotUploader`](crate::checkpoint::SlotUploader)).
    pub fn upload_target(&self) -> UploadTarget {
        self.checkpointer.upload_target()
    }

    /// The number of slots every checkpoint needs an answer from.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// Whether checkpoint `id` is still in flight: a slot asks before its synchronous phase,
    /// so it does not snapshot for a checkpoint another slot's decline already aborted.
    pub fn is_in_flight(&self, id: u64) -> bool {
        self.in_flight.contains_key(&id)
    }

    /// Drops the coordinator as a crash would: nothing is aborted or deleted, and the job's
    /// writer lease is neither renewed nor released (it expires after
    /// `checkpoint.writer-lease-timeout`, so a restarted job waits for it). Tests and example
    /// hosts simulate a process crash with it; a real crash gets the same by dying.
    pub fn abandon(self) {
        self.checkpointer.abandon();
    }

    /// Checkpoints triggered and not yet completed or aborted, ascending.
    pub fn in_flight(&self) -> Vec<u64> {
        self.in_flight.keys().copied().collect()
    }

    /// When the next periodic checkpoint is due (clock ms), for a host that sleeps until then.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.schedule.next_due_ms()
    }

    /// Requests a checkpoint outside the interval: triggered by the next
    /// [`CheckpointCoordinator::poll`], before any periodic one, savepoints first.
    /// [`CheckpointKind::Periodic`] is not a request and is ignored.
    pub fn request(&mut self, kind: CheckpointKind) {
        if kind != CheckpointKind::Periodic {
            self.requests.push(kind);
        }
    }

    /// Requests a savepoint at `target` in `format`: a [`CheckpointKind::Savepoint`] checkpoint
    /// is triggered by the next [`CheckpointCoordinator::poll`] (before any other), and when it
    /// commits the coordinator writes the savepoint from it (on the calling thread, before
    /// another checkpoint can commit and subsume it) and queues
    /// [`CheckpointEvent::SavepointWritten`] or [`CheckpointEvent::SavepointFailed`]. `config`
    /// is the job's (the canonical writer opens scratch slots with it in its working
    /// directory). If the checkpoint is aborted, the savepoint fails with it.
    pub fn request_savepoint(
        &mut self,
        target: SavepointLocation,
        format: SavepointKind,
        config: &CairnConfig,
    ) {
        self.savepoints.push_back(SavepointRequest {
            target,
            format,
            config: Box::new(config.clone()),
        });
        self.requests.push(CheckpointKind::Savepoint);
    }

    /// Expires checkpoints in flight past their timeout, then triggers the next checkpoint if
    /// one is requested or due. Fails with [`EngineError::CheckpointFailed`] once the
    /// consecutive failures exceed `tolerable-failed` (or another writer took the job): the
    /// host fails the job over and restores from the latest committed checkpoint.
    pub fn poll(&mut self) -> Result<Option<TriggeredCheckpoint>> {
        self.expire_overdue();
        self.check_tolerance()?;
        let kind = match self.requests.iter().copied().max() {
            Some(k) => {
                if let Some(i) = self.requests.iter().position(|r| *r == k) {
                    self.requests.remove(i);
                }
                k
            }
            None if self.schedule.due() => CheckpointKind::Periodic,
            None => return Ok(None),
        };
        let id = self.checkpointer.trigger_checkpoint();
        if kind == CheckpointKind::Periodic {
            self.schedule.triggered(id);
        } else {
            self.schedule.triggered_on_request(id);
        }
        let properties = BTreeMap::from([
            (KIND_PROPERTY.to_string(), kind.to_string()),
            (MODE_PROPERTY.to_string(), self.mode.to_string()),
        ]);
        let savepoint = if kind == CheckpointKind::Savepoint {
            self.savepoints.pop_front()
        } else {
            None
        };
        self.in_flight.insert(
            id,
            InFlight {
                kind,
                savepoint,
                replies: BTreeMap::new(),
                properties,
            },
        );
        Ok(Some(TriggeredCheckpoint {
            id,
            kind,
            mode: self.mode,
        }))
    }

    /// Aborts the checkpoints in flight past their timeout (counted as failures) and returns
    /// their ids; [`CheckpointCoordinator::poll`] does this first. A host that waits for
    /// barriers without polling (collecting one checkpoint's snapshots) calls it while it waits.
    pub fn expire_overdue(&mut self) -> Vec<u64> {
        let expired = self.schedule.expired();
        for id in &expired {
            self.abort(*id, AbortReason::Expired, true);
        }
        expired
    }

    /// Whether a periodic checkpoint is due now (interval, min pause, max concurrent): a host
    /// that must prepare a barrier before triggering (pick its position in the stream) asks
    /// this first.
    pub fn periodic_due(&self) -> bool {
        self.schedule.due()
    }

    /// Stores host properties with checkpoint `id` (read back from the restored checkpoint's
    /// metadata, and carried by its [`CheckpointEvent::Completed`]): a source position, a host
    /// version. Call it before the last slot's answer (right after the trigger is simplest):
    /// the last answer commits the checkpoint, after which it is no longer in flight and this
    /// fails. Keys starting with `cairn.` are reserved.
    pub fn set_property(&mut self, id: u64, key: &str, value: &str) -> Result<()> {
        if key.starts_with("cairn.") {
            return Err(EngineError::InvalidArgument(format!(
                "checkpoint property {key}: keys starting with cairn. are reserved"
            )));
        }
        let c = self.in_flight.get_mut(&id).ok_or_else(|| unknown(id))?;
        c.properties.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Slot `slot`'s answer to checkpoint `id`. When it is the last one, the checkpoint is
    /// uploaded (snapshots of this process) and committed, and its event queued.
    ///
    /// With [`SlotReply::Snapshot`] the upload runs on the calling thread: the host's loop waits
    /// for it (the report's `async_ms`), and a checkpoint longer than `checkpoint.interval`
    /// makes the next one due at once (set `checkpoint.min-pause` to leave the host time
    /// between checkpoints). A host that must not wait uploads on threads of its own with a
    /// [`SlotUploader`](crate::checkpoint::SlotUploader) and answers [`SlotReply::Uploaded`].
    ///
    /// An answer for a checkpoint no longer in flight (aborted, expired, subsumed) is dropped
    /// (a snapshot's local files are removed) and `Ok(false)` returned; `Ok(true)` = taken.
    /// Errors: a slot out of range, a second answer of one slot, answers of both kinds in one
    /// checkpoint, an ack whose handle names another slot or checkpoint.
    pub fn acknowledge(&mut self, id: u64, slot: u32, reply: SlotReply) -> Result<bool> {
        if slot >= self.parallelism {
            return Err(EngineError::InvalidArgument(format!(
                "checkpoint {id}: slot {slot} answered, the job has {} slots",
                self.parallelism
            )));
        }
        if let SlotReply::Uploaded(ack) = &reply
            && (ack.checkpoint != id || ack.handle.slot != slot)
        {
            return Err(EngineError::InvalidArgument(format!(
                "checkpoint {id}, slot {slot}: the ack is of checkpoint {} slot {}",
                ack.checkpoint, ack.handle.slot
            )));
        }
        let Some(c) = self.in_flight.get_mut(&id) else {
            discard_reply(reply);
            return Ok(false);
        };
        if c.replies.contains_key(&slot) {
            discard_reply(reply);
            return Err(EngineError::InvalidArgument(format!(
                "checkpoint {id}: slot {slot} answered twice"
            )));
        }
        c.replies.insert(slot, reply);
        if c.replies.len() == self.parallelism as usize {
            self.complete(id);
        }
        Ok(true)
    }

    /// Slot `slot` declined checkpoint `id`: it is aborted (counted unless
    /// [`DeclineReason::NotReady`]). Unknown ids are ignored.
    pub fn decline(&mut self, id: u64, slot: u32, reason: DeclineReason) {
        if self.in_flight.contains_key(&id) {
            let counted = matches!(reason, DeclineReason::Failed(_));
            self.abort(id, AbortReason::Declined { slot, reason }, counted);
        }
    }

    /// Events since the last call, in the order they happened.
    pub fn take_events(&mut self) -> Vec<CheckpointEvent> {
        self.events.drain(..).collect()
    }

    /// Ends the job: aborts the checkpoints in flight (not counted), then keeps the committed
    /// checkpoints (`retain-on-cancellation = true`) or deletes them all; releases the job's
    /// writer lease. The events of the aborts are returned for the host's sinks.
    pub fn cancel(mut self) -> Result<(CancelOutcome, Vec<CheckpointEvent>)> {
        for id in self.in_flight() {
            self.abort(id, AbortReason::Cancelled, false);
        }
        let events = self.take_events();
        let outcome = if self.checkpointer.config().retain_on_cancellation {
            let latest = self.checkpointer.store().retained_ids()?.last().copied();
            CancelOutcome::Retained {
                latest,
                job_url: self.checkpointer.job_url(),
            }
        } else {
            CancelOutcome::Discarded {
                ids: self.checkpointer.discard_all_checkpoints()?,
            }
        };
        Ok((outcome, events))
    }

    /// Fails with [`EngineError::CheckpointFailed`] once the consecutive failed checkpoints
    /// exceed `tolerable-failed` or another writer took the job over (what
    /// [`CheckpointCoordinator::poll`] checks before triggering).
    pub fn check_tolerance(&self) -> Result<()> {
        if self.checkpointer.failure_tolerated() {
            return Ok(());
        }
        let failures = self.checkpointer.consecutive_failures();
        Err(EngineError::CheckpointFailed {
            id: self.checkpointer.reports().last().map_or(0, |r| r.id),
            reason: if self.checkpointer.fenced() {
                "another writer took the job over".into()
            } else {
                format!(
                    "{failures} consecutive checkpoints failed; checkpoint.tolerable-failed is {}",
                    self.checkpointer.config().tolerable_failed
                )
            },
        })
    }

    fn complete(&mut self, id: u64) {
        let Some(c) = self.in_flight.remove(&id) else {
            return;
        };
        let mut syncs = Vec::new();
        let mut acks = Vec::new();
        for (_, r) in c.replies {
            match r {
                SlotReply::Snapshot(s) => syncs.push(s),
                SlotReply::Uploaded(a) => acks.push(a),
            }
        }
        let properties = c.properties.clone();
        let result = if acks.is_empty() {
            self.checkpointer.complete_with(id, syncs, c.properties)
        } else if syncs.is_empty() {
            self.checkpointer
                .commit_acknowledged(id, acks, c.properties)
        } else {
            let handles: Vec<_> = acks.iter().map(|a| a.handle.clone()).collect();
            for s in syncs {
                s.discard();
            }
            self.checkpointer.discard_uploads(id, &handles);
            self.checkpointer
                .checkpoint_failed(id, "slots answered with both kinds");
            Err(EngineError::InvalidArgument(format!(
                "checkpoint {id}: some slots sent snapshots and others acks; a job uses one way"
            )))
        };
        match result {
            Ok(report) => {
                self.schedule.finished(id, true);
                let older: Vec<u64> = self.in_flight.range(..id).map(|(i, _)| *i).collect();
                for old in older {
                    self.abort(old, AbortReason::Subsumed, false);
                }
                self.events.push_back(CheckpointEvent::Completed {
                    id,
                    kind: c.kind,
                    report,
                    properties,
                });
                if let Some(request) = c.savepoint {
                    self.write_savepoint(id, request);
                }
            }
            Err(e) => {
                // The checkpointer aborted it and counted the failure.
                self.schedule.finished(id, false);
                self.events.push_back(CheckpointEvent::Aborted {
                    id,
                    kind: c.kind,
                    reason: AbortReason::Failed(e.to_string()),
                    counted: true,
                });
                if c.savepoint.is_some() {
                    self.events.push_back(CheckpointEvent::SavepointFailed {
                        id,
                        reason: format!("its checkpoint failed: {e}"),
                    });
                }
            }
        }
    }

    /// Writes the savepoint of `request` from checkpoint `id`, just committed.
    fn write_savepoint(&mut self, id: u64, request: SavepointRequest) {
        let source = CheckpointLocation {
            storage_url: self.checkpointer.config().dir.clone(),
            job: self.checkpointer.job().to_string(),
            checkpoint: Some(id),
        };
        let event = match create_savepoint_with_clock(
            &request.config,
            &source,
            &request.target,
            request.format,
            self.clock.clone(),
        ) {
            Ok(report) => CheckpointEvent::SavepointWritten { id, report },
            Err(e) => {
                tracing::warn!(id, error = %e, target = %request.target.url(), "savepoint failed");
                CheckpointEvent::SavepointFailed {
                    id,
                    reason: e.to_string(),
                }
            }
        };
        self.events.push_back(event);
    }

    fn abort(&mut self, id: u64, reason: AbortReason, counted: bool) {
        let Some(c) = self.in_flight.remove(&id) else {
            return;
        };
        self.schedule.finished(id, false);
        let savepoint_failed = c
            .savepoint
            .is_some()
            .then(|| CheckpointEvent::SavepointFailed {
                id,
                reason: format!("its checkpoint was aborted: {reason:?}"),
            });
        let mut handles = Vec::new();
        for (_, r) in c.replies {
            match r {
                SlotReply::Snapshot(s) => s.discard(),
                SlotReply::Uploaded(a) => handles.push(a.handle),
            }
        }
        if !handles.is_empty() {
            self.checkpointer.discard_uploads(id, &handles);
        }
        if counted {
            let why = match &reason {
                AbortReason::Expired => "expired".to_string(),
                other => format!("{other:?}"),
            };
            self.checkpointer.checkpoint_failed(id, &why);
        }
        tracing::info!(
            id,
            ?reason,
            counted,
            now_ms = self.clock.now_ms(),
            "checkpoint aborted"
        );
        self.events.push_back(CheckpointEvent::Aborted {
            id,
            kind: c.kind,
            reason,
            counted,
        });
        self.events.extend(savepoint_failed);
    }
}

fn unknown(id: u64) -> EngineError {
    EngineError::InvalidArgument(format!("checkpoint {id} is not in flight"))
}

fn discard_reply(reply: SlotReply) {
    if let SlotReply::Snapshot(s) = reply {
        s.discard();
    }
}
