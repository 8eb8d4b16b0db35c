//! The per-slot part of a checkpoint, for slots that live in another process than the job's
//! committer: take the slot's synchronous snapshot, upload it, and send the resulting
//! [`SlotAck`] (plain data, serializable) to the [`CheckpointCoordinator`], which checks it and
//! commits once every slot's ack is in.
//!
//! ```no_run
//! # fn demo(slot: &mut cairn_engine::Slot, cfg: &cairn_engine::checkpoint::CheckpointConfig,
//! #         target: cairn_snapshot::UploadTarget) -> cairn_engine::Result<()> {
//! use cairn_engine::checkpoint::SlotUploader;
//! // At deployment: the coordinator's upload_target() reached this process.
//! let mut uploader = SlotUploader::open(cfg, target, slot.index().0)?;
//! // At barrier 7: the synchronous phase on the slot's thread, the upload off it.
//! let snapshot = slot.snapshot_for_checkpoint(7)?;
//! let ack = uploader.upload(snapshot)?;
//! let wire = serde_json::to_vec(&ack).expect("plain data"); // send it to the committer
//! // When the committer says checkpoint 7 completed:
//! uploader.checkpoint_completed(7)?;
//! # let _ = wire; Ok(()) }
//! ```
//!
//! [`CheckpointCoordinator`]: crate::checkpoint::CheckpointCoordinator

use std::sync::Arc;
use std::time::Instant;

use cairn_snapshot::{
    JobLayout, SlotHandle, SlotUploadReport, SlotUploadState, StorageRoot, UploadTarget,
    load_metadata, upload_slot_files,
};
use serde::{Deserialize, Serialize};

use std::path::Path;

use super::checkpointer::{
    RestoredCheckpoint, download_slot, restore_operator_state, upload_state_after_restore,
};
use super::config::CheckpointConfig;
use super::sync::SyncSnapshot;
use crate::backend::RestoredFiles;
use crate::error::{EngineError, Result};
use crate::keygroup::KeyGroupRange;
use crate::operator_state::OperatorState;

/// What a slot sends the committer for one checkpoint: its handle (the files it uploaded and
/// reuses) and what the upload did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotAck {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The slot's part of the checkpoint's metadata.
    pub handle: SlotHandle,
    /// What the upload did.
    pub upload: SlotUploadReport,
    /// How long the slot was stopped for its synchronous phase, ms.
    pub sync_ms: f64,
    /// How long the upload took, ms.
    pub upload_ms: f64,
}

/// Uploads one slot's checkpoints to a job whose committer runs elsewhere. See the module doc.
pub struct SlotUploader {
    slot: u32,
    storage: StorageRoot,
    target: UploadTarget,
    state: SlotUploadState,
    threads: usize,
    rt: Arc<tokio::runtime::Runtime>,
}

impl SlotUploader {
    /// An uploader to `target` (from
    /// [`CheckpointCoordinator::upload_target`](crate::checkpoint::CheckpointCoordinator::upload_target)),
    /// for slot `slot`, with `cfg`'s storage options (credentials, retries) and transfer
    /// threads.
    pub fn open(cfg: &CheckpointConfig, target: UploadTarget, slot: u32) -> Result<Self> {
        cairn_snapshot::object_layout::check_job_name(&target.job)?;
        let storage = StorageRoot::from_url(&target.storage_url, &cfg.storage)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-slot-upload")
            .enable_all()
            .build()
            .map_err(|e| EngineError::Io {
                op: "start slot upload runtime".into(),
                source: e,
            })?;
        Ok(Self {
            slot,
            storage,
            target,
            state: SlotUploadState::new(),
            threads: cfg.transfer_threads as usize,
            rt: Arc::new(rt),
        })
    }

    /// Where this uploader writes.
    pub fn target(&self) -> &UploadTarget {
        &self.target
    }

    /// Downloads what this slot (key groups `range`) needs of `restored` into `dest` (on the
    /// slot's file system) and says how to open the slot
    /// ([`SlotBuilder::restore`](crate::SlotBuilder::restore)). When the checkpoint is of this
    /// uploader's storage, the restored files become the base of the next checkpoint (referenced,
    /// not uploaded again; after a rescale too).
    pub fn restore(
        &mut self,
        cfg: &CheckpointConfig,
        restored: &RestoredCheckpoint,
        range: KeyGroupRange,
        dest: &Path,
    ) -> Result<RestoredFiles> {
        let (restore, _bytes) = download_slot(&self.rt, cfg, restored, range, dest)?;
        let same_store = restored.source.storage_url.trim_end_matches('/')
            == self.target.storage_url.trim_end_matches('/');
        if same_store {
            self.state = upload_state_after_restore(&restored.metadata.slots, range);
        }
        Ok(restore)
    }

    /// The operator state of slot `index` of `parallelism` from `restored` (see
    /// [`Checkpointer::operator_state_for_slot`](crate::checkpoint::Checkpointer::operator_state_for_slot));
    /// `tmp` is a scratch directory.
    pub fn operator_state(
        &self,
        restored: &RestoredCheckpoint,
        index: u32,
        parallelism: u32,
        tmp: &Path,
    ) -> Result<OperatorState> {
        restore_operator_state(&self.rt, restored, index, parallelism, tmp)
    }

    /// The asynchronous phase of the slot's part: writes the snapshot's local files, uploads
    /// what the slot's last confirmed checkpoint did not, and removes the local directory.
    /// The ack goes to the committer; on error the host declines the checkpoint.
    pub fn upload(&mut self, snapshot: SyncSnapshot) -> Result<SlotAck> {
        if snapshot.slot != self.slot {
            return Err(EngineError::InvalidArgument(format!(
                "a snapshot of slot {} handed to the uploader of slot {}",
                snapshot.slot, self.slot
            )));
        }
        let t = Instant::now();
        let (id, sync_ms) = (snapshot.id, snapshot.sync_duration.as_secs_f64() * 1000.0);
        let dir = snapshot.dir().to_path_buf();
        let uploaded = snapshot.materialize().and_then(|local| {
            let r = self.rt.block_on(upload_slot_files(
                &self.storage,
                &self.target,
                id,
                &local,
                &mut self.state,
                self.threads,
            ));
            Ok(r?)
        });
        let _ = std::fs::remove_dir_all(&dir);
        let (handle, upload) = uploaded?;
        Ok(SlotAck {
            checkpoint: id,
            handle,
            upload,
            sync_ms,
            upload_ms: t.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Checkpoint `id` completed (the coordinator's
    /// [`CheckpointEvent::Completed`](crate::checkpoint::CheckpointEvent::Completed)): reads its
    /// committed metadata back and takes this slot's part as the base of the next checkpoint
    /// (with the objects the committer chose, copies included).
    pub fn checkpoint_completed(&mut self, id: u64) -> Result<()> {
        let layout = JobLayout::new(self.storage.root().clone(), self.target.job.clone());
        let meta = self
            .rt
            .block_on(load_metadata(&self.storage, &layout, id))?;
        let h = meta
            .slots
            .iter()
            .find(|h| h.slot == self.slot)
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "checkpoint {id} of job {} has no part of slot {}",
                    self.target.job, self.slot
                ))
            })?;
        self.state.confirm_committed(id, h);
        Ok(())
    }

    /// Checkpoint `id` was aborted: what this slot uploaded for it is not a base (the
    /// committer deletes it, or garbage collection does).
    pub fn checkpoint_aborted(&mut self, id: u64) {
        self.state.discard(id);
    }
}
