//! What a checkpoint's synchronous phase (the only part that stops the slot,
//! [`Slot::snapshot_for_checkpoint`](crate::Slot::snapshot_for_checkpoint)) hands the
//! asynchronous one: a [`SyncSnapshot`], materialized into files off the slot's thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_snapshot::{LocalSnapshot, StateInfo};

use crate::backend::NativeSnapshot;
pub use crate::backend::heap::HEAP_SNAPSHOT_FILE;
use crate::config::BackendKind;
use crate::error::{EngineError, Result};
use crate::keygroup::KeyGroupRange;
use crate::operator_state::OPERATOR_STATE_FILE;

/// Name of the heap timers' snapshot file (either backend) inside a local snapshot directory.
pub const TIMERS_SNAPSHOT_FILE: &str = "timers.snapshot";

/// A slot's snapshot after the synchronous phase
/// ([`Slot::snapshot_for_checkpoint`](crate::Slot::snapshot_for_checkpoint)); `Send`, finished
/// off the slot's thread.
pub struct SyncSnapshot {
    /// The checkpoint id.
    pub id: u64,
    /// The slot's index.
    pub slot: u32,
    /// How long the slot was stopped.
    pub sync_duration: Duration,
    /// The part of it spent writing the state cache's dirty entries into RocksDB.
    pub cache_flush: Duration,
    /// How many dirty cache entries were written.
    pub cache_flushed_entries: u64,
    pub(crate) key_groups: KeyGroupRange,
    pub(crate) backend: BackendKind,
    pub(crate) states: Vec<StateInfo>,
    pub(crate) dir: PathBuf,
    pub(crate) native: NativeSnapshot,
    /// The slot's working directory (local recovery keeps snapshots below it).
    pub(crate) slot_dir: PathBuf,
    /// The backend's live-data estimate at snapshot time (rebase `max-space-amplification`).
    pub(crate) live_data_bytes: Option<u64>,
    pub(crate) timers: Option<cairn_timers::HeapTimersSnapshot>,
    /// The operator state's file bytes (`None` when the slot has none).
    pub(crate) operator_state: Option<Vec<u8>>,
}

impl SyncSnapshot {
    /// The asynchronous local part: writes what the synchronous phase deferred (the heap
    /// view, the timers, the operator state; RocksDB's files are ready) and describes the
    /// directory for upload.
    pub fn materialize(self) -> Result<LocalSnapshot> {
        let (shared, mut private) = match self.native {
            NativeSnapshot::Files { shared, private } => (shared, private),
            NativeSnapshot::Deferred(view) => (Vec::new(), view.write_into(&self.dir)?),
        };
        // Heap timers, written off the slot's thread (with either backend).
        if let Some(t) = self.timers {
            t.write(&self.dir.join(TIMERS_SNAPSHOT_FILE))?;
            private.push(TIMERS_SNAPSHOT_FILE.to_string());
            private.sort();
        }
        if let Some(bytes) = &self.operator_state {
            let path = self.dir.join(OPERATOR_STATE_FILE);
            std::fs::write(&path, bytes).map_err(|e| EngineError::Io {
                op: format!("write {}", path.display()),
                source: e,
            })?;
            private.push(OPERATOR_STATE_FILE.to_string());
            private.sort();
        }
        Ok(LocalSnapshot {
            slot: self.slot,
            key_groups: self.key_groups,
            backend: self.backend.to_string(),
            states: self.states,
            dir: self.dir,
            shared,
            private,
        })
    }

    /// Drops a snapshot that will not be uploaded (its checkpoint was aborted): removes its
    /// local directory.
    pub fn discard(self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(error = %e, dir = %self.dir.display(), "removing a discarded snapshot failed");
        }
    }

    /// The local directory (removed after upload, or kept for local recovery).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slot's working directory.
    pub fn slot_dir(&self) -> &Path {
        &self.slot_dir
    }

    /// RocksDB's live-data estimate of the slot's states when the snapshot was taken (`None`
    /// for the heap backend).
    pub fn live_data_bytes(&self) -> Option<u64> {
        self.live_data_bytes
    }
}
