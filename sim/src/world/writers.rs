//! Opening writers and restoring them the way a host does: a lease that is live refuses a
//! second writer, an expired one is taken over, and a restored writer continues from a
//! committed checkpoint (claim or no-claim) whose downloaded files must be the model's.

use std::sync::Arc;
use std::time::Duration;

use cairn_engine::EngineError;
use cairn_engine::checkpoint::{CheckpointLocation, Checkpointer, ClaimMode};
use cairn_snapshot::{CheckpointStore, Clock, SnapshotError};
use rand::Rng;

use super::{URL, World, Writer};
use crate::Failure;
use crate::inspect::compare_dir;
use crate::slots::{SimSlot, key_groups};
use crate::store::{FaultProfile, Process};

/// What the top lease record of a job says, read from storage directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lease {
    /// Held and renewed recently (with a margin): a second writer must be refused.
    Live,
    /// Released, or not renewed for longer than the timeout (with a margin).
    Free,
    /// Too close to call.
    Unclear,
}

/// Result of trying to open a writer.
pub(super) enum Opened {
    Ok(Box<Checkpointer>, Arc<Process>),
    Locked(String),
    Failed(String),
}

fn transient(e: &EngineError) -> bool {
    match e {
        EngineError::Checkpoint(s) => s.is_transient(),
        _ => false,
    }
}

fn is_locked(e: &EngineError) -> bool {
    matches!(e, EngineError::Checkpoint(SnapshotError::JobLocked { .. }))
}

impl World {
    /// What the top lease record of `job` says now.
    pub(super) fn lease(&mut self, job: &str) -> Lease {
        self.settle();
        let prefix = format!("{job}/_writers/");
        let view = self.inspector.view();
        let Some(top) = view
            .objects
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .max()
            .cloned()
        else {
            return Lease::Free;
        };
        let Some(bytes) = self.inspector.bytes(&top) else {
            return Lease::Unclear;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Lease::Unclear;
        };
        let released = v["released"].as_bool().unwrap_or(false);
        let renewed = v["renewed_at_ms"].as_u64().unwrap_or(0);
        let now = self.clock.now_ms();
        let timeout = self.cfg.writer_lease_timeout.as_millis() as u64;
        let age = now.saturating_sub(renewed);
        let late = self.cloud.late_pending() > 0;
        // A renewal still in flight can't rewind `renewed_at_ms`: a writer's lease puts run one
        // at a time (bug 5 of the crate doc, fixed).
        if !released && age + 500 < timeout {
            Lease::Live
        } else if (released || age > timeout + 500) && !late {
            Lease::Free
        } else {
            Lease::Unclear
        }
    }

    /// Tries once to open a writer of `job`.
    pub(super) fn try_open(&mut self, job: &str, mode: ClaimMode) -> Opened {
        let uid = self.next_writer;
        let process = self.cloud.process(format!("writer-{uid}"), true);
        let storage = self.storage_for(&process);
        let mut cfg = self.cfg.clone();
        cfg.restore_mode = mode;
        match Checkpointer::open_on(&cfg, storage, job, self.max_parallelism, self.rt.clone()) {
            Ok(cp) => {
                self.next_writer += 1;
                Opened::Ok(Box::new(cp), process)
            }
            Err(e) if is_locked(&e) => Opened::Locked(e.to_string()),
            Err(e) => Opened::Failed(e.to_string()),
        }
    }

    /// Opens a writer of `job`, waiting out a live lease and retrying transient failures.
    pub(super) fn open(
        &mut self,
        job: &str,
        mode: ClaimMode,
    ) -> Result<(Checkpointer, Arc<Process>), Failure> {
        let profile = self.cloud.profile();
        let mut last = String::new();
        for attempt in 0..10 {
            if attempt == 6 {
                // Storage this hostile for this long is not what is being tested.
                self.cloud.set_profile(FaultProfile::CALM);
            }
            match self.try_open(job, mode) {
                Opened::Ok(cp, p) => {
                    self.cloud.set_profile(profile);
                    return Ok((*cp, p));
                }
                Opened::Locked(e) => {
                    last = e;
                    self.sleep(self.cfg.writer_lease_timeout + Duration::from_millis(100));
                }
                Opened::Failed(e) => {
                    last = e;
                    self.sleep(Duration::from_millis(300));
                }
            }
        }
        Err(self.fail(format!("could not open a writer of {job}: {last}")))
    }

    /// Starts a writer of `job`, restoring `source` (job, checkpoint or latest) when given.
    pub(super) fn start_writer(
        &mut self,
        job: &str,
        source: Option<(String, Option<u64>)>,
        mode: ClaimMode,
    ) -> Result<Writer, Failure> {
        let (cp, process) = self.open(job, mode)?;
        let uid = self.next_writer - 1;
        let mut w = Writer {
            uid,
            job: job.to_string(),
            cp,
            process,
            slots: (0..self.nslots)
                .map(|i| SimSlot::new(i, key_groups(i, self.nslots, self.max_parallelism)))
                .collect(),
            superseded: false,
        };
        match source {
            Some((src, id)) => {
                if !self.restore(&mut w, &src, id, mode)? {
                    self.stats.fresh_starts += 1;
                }
            }
            None => self.stats.fresh_starts += 1,
        }
        self.log(|| {
            format!(
                "writer {uid} of {job} started ({:?})",
                w.cp.store().lease().map(|l| (l.epoch(), l.takeover()))
            )
        });
        Ok(w)
    }

    /// Restores checkpoint `id` (or the latest) of job `src` into writer `w` the way a host
    /// does, and compares what was downloaded with the model. Returns false when there was
    /// nothing to restore.
    pub(super) fn restore(
        &mut self,
        w: &mut Writer,
        src: &str,
        id: Option<u64>,
        mode: ClaimMode,
    ) -> Result<bool, Failure> {
        let source = CheckpointLocation {
            storage_url: URL.into(),
            job: src.to_string(),
            checkpoint: id,
        };
        let profile = self.cloud.profile();
        let mut last = String::new();
        let mut restored = None;
        for attempt in 0..10 {
            if attempt == 5 {
                // Storage this hostile for this long is not what is being tested.
                self.cloud.set_profile(FaultProfile::CALM);
            }
            let r = if self.restore_workaround {
                self.prepare_restore_workaround(w, src, id, mode)
            } else {
                w.cp.resume_from(&source).map(|r| r.metadata)
            };
            match r {
                Ok(meta) => {
                    restored = Some(meta);
                    break;
                }
                Err(EngineError::Checkpoint(SnapshotError::NoCheckpoint { .. })) => {
                    self.cloud.set_profile(profile);
                    return Ok(false);
                }
                Err(EngineError::Checkpoint(SnapshotError::BadLocation { .. }))
                    if !self.restore_workaround =>
                {
                    // `resume_from` opens storage from its URL: it can't see this one.
                    self.restore_workaround = true;
                    self.stats.restore_workarounds += 1;
                }
                Err(e) if is_locked(&e) => {
                    last = e.to_string();
                    self.sleep(self.cfg.writer_lease_timeout + Duration::from_millis(100));
                }
                Err(e) if transient(&e) => {
                    last = e.to_string();
                    self.sleep(Duration::from_millis(300));
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        let Some(meta) = restored else {
            return Err(self.fail(format!(
                "writer of {} could not restore {src}/{id:?}: {last}",
                w.job
            )));
        };
        let uid = meta
            .properties
            .get("sim.attempt")
            .and_then(|a| a.parse::<u64>().ok())
            .ok_or_else(|| {
                self.fail(format!("{src}/chk-{} names no attempt", meta.checkpoint_id))
            })?;
        let expected = self
            .model
            .attempt(uid)
            .map(|a| a.slots.clone())
            .ok_or_else(|| {
                self.fail(format!(
                    "{src}/chk-{} names unknown attempt {uid}",
                    meta.checkpoint_id
                ))
            })?;
        let dest = self
            .tmp
            .path()
            .join(format!("restore-{}-{}", w.uid, meta.checkpoint_id));
        for h in &meta.slots {
            let d = dest.join(format!("slot-{}", h.slot));
            let mut result = Err(String::new());
            for attempt in 0..8 {
                if attempt == 4 {
                    self.cloud.set_profile(FaultProfile::CALM);
                }
                let _ = std::fs::remove_dir_all(&d);
                let storage = w.cp.store().storage().clone();
                let threads = self.cfg.transfer_threads as usize;
                let r = self.rt.block_on(CheckpointStore::download_slot(
                    &storage, h, &d, threads, true,
                ));
                match r {
                    Ok(_) => {
                        result = Ok(());
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        result = Err(e.to_string());
                        self.sleep(Duration::from_millis(300));
                    }
                    Err(e) => {
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            if let Err(e) = result {
                return Err(self.fail(format!(
                    "invariant 1: restoring slot {} of committed {src}/chk-{} (attempt {uid}) failed: {e}",
                    h.slot, meta.checkpoint_id
                )));
            }
            compare_dir(h, &d, &expected).map_err(|e| {
                self.fail(format!(
                    "invariant 1: {src}/chk-{} (attempt {uid}) restored other files than the model's: {e}",
                    meta.checkpoint_id
                ))
            })?;
        }
        let _ = std::fs::remove_dir_all(&dest);
        self.cloud.set_profile(profile);
        self.stats.restores += 1;
        w.slots = expected.iter().map(SimSlot::restored).collect();
        match mode {
            ClaimMode::Claim => {
                self.stats.claims += 1;
                if src != w.job {
                    self.model.claimed(src, meta.checkpoint_id, &w.job);
                }
            }
            ClaimMode::NoClaim => self.stats.no_claims += 1,
        }
        self.log(|| {
            format!(
                "writer {} restored {src}/chk-{} ({mode:?})",
                w.uid, meta.checkpoint_id
            )
        });
        Ok(true)
    }

    /// What [`Checkpointer::resume_from`] does, through public APIs, for storage it can't
    /// open from a URL (it rebuilds storage from `CheckpointLocation::storage_url`, so a store
    /// handed in through `open_on` is out of its reach): loads the checkpoint, claims it in
    /// claim mode, and moves the writer's ids past it. What it can't do: record
    /// `restored_from` in later metadata, or seed the upload state (the first checkpoint after
    /// such a restore uploads everything instead of reusing or copying the restored files).
    pub(super) fn prepare_restore_workaround(
        &mut self,
        w: &mut Writer,
        src: &str,
        id: Option<u64>,
        mode: ClaimMode,
    ) -> Result<cairn_snapshot::CheckpointMetadata, EngineError> {
        let storage = w.cp.store().storage().clone();
        let meta = w.cp.block_on(async {
            let source = CheckpointStore::open_read_only(storage.clone(), src).await?;
            let id = match id {
                Some(id) => id,
                None => *source.committed_ids().await?.last().ok_or_else(|| {
                    SnapshotError::NoCheckpoint {
                        what: "(none committed)".into(),
                        location: src.to_string(),
                    }
                })?,
            };
            source.load(id).await
        })?;
        if mode == ClaimMode::Claim {
            let layout = cairn_snapshot::JobLayout::new(storage.root().clone(), src);
            w.cp.block_on(w.cp.store().claim(&layout, &meta))?;
        }
        while w.cp.trigger_checkpoint() < meta.checkpoint_id {}
        Ok(meta)
    }

    /// A committed checkpoint of `job` to restore: the latest, sometimes an older retained one.
    pub(super) fn restore_target(&mut self, job: &str) -> Option<u64> {
        self.settle();
        let view = self.inspector.view();
        let ids: Vec<u64> = view
            .committed
            .keys()
            .filter(|(j, _)| j == job)
            .map(|(_, i)| *i)
            .collect();
        if ids.len() > 1 && self.rng.random_bool(0.25) {
            Some(ids[self.rng.random_range(0..ids.len())])
        } else {
            None
        }
    }

    pub(super) fn random_mode(&mut self) -> ClaimMode {
        if self.rng.random_bool(0.5) {
            ClaimMode::Claim
        } else {
            ClaimMode::NoClaim
        }
    }
}
