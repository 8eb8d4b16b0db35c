//! The synchronous phase: the only part of a checkpoint that stops the slot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_snapshot::{LocalSnapshot, StateInfo};

use crate::keygroup::KeyGroupRange;

use crate::backend::heap::HeapSnapshotView;
use crate::config::BackendKind;
use crate::error::{EngineError, Result};
use crate::operator_state::OPERATOR_STATE_FILE;
use crate::slot::Slot;

/// Name of the heap backend's snapshot file inside a local snapshot directory.
pub const HEAP_SNAPSHOT_FILE: &str = "heap.snapshot";
/// Name of the heap timers' snapshot file (either backend) inside a local snapshot directory.
pub const TIMERS_SNAPSHOT_FILE: &str = "timers.snapshot";

enum Kind {
    RocksDb {
        shared: Vec<String>,
        private: Vec<String>,
    },
    Heap(HeapSnapshotView),
}

/// A slot's snapshot after the synchronous phase; `Send`, finished off the slot's thread.
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
    key_groups: KeyGroupRange,
    backend: BackendKind,
    states: Vec<StateInfo>,
    dir: PathBuf,
    kind: Kind,
    /// The slot's working directory (local recovery keeps snapshots below it).
    slot_dir: PathBuf,
    /// RocksDB's live-data estimate at snapshot time (rebase `max-space-amplification`).
    live_data_bytes: Option<u64>,
    timers: Option<cairn_timers::HeapTimersSnapshot>,
    /// The operator state's file bytes (`None` when the slot has none).
    operator_state: Option<Vec<u8>>,
}

impl Slot {
    /// Takes the synchronous part of checkpoint `id`: RocksDB first receives every dirty entry
    /// of the slot's state cache (one `WriteBatch`), then flushes its memtables and hard-links
    /// its live files into `<working dir>/snapshots/chk-<id>` (RocksDB's `Checkpoint`); the heap
    /// backend takes a copy-on-write view of its tables. This is the slot's synchronous phase
    /// (it runs on the slot's thread, between two records); the upload is the
    /// [`crate::checkpoint::Checkpointer`]'s asynchronous phase.
    #[doc(alias = "snapshot_sync")]
    pub fn snapshot_for_checkpoint(&mut self, id: u64) -> Result<SyncSnapshot> {
        let t = Instant::now();
        let base = self.working_dir().join("snapshots");
        std::fs::create_dir_all(&base).map_err(|e| EngineError::Io {
            op: format!("create {}", base.display()),
            source: e,
        })?;
        let dir = base.join(format!("chk-{id}"));
        if dir.exists() {
            // Left by a crashed or aborted attempt with the same id.
            std::fs::remove_dir_all(&dir).map_err(|e| EngineError::Io {
                op: format!("remove stale {}", dir.display()),
                source: e,
            })?;
        }
        let mut cache_flush = Duration::ZERO;
        let mut cache_flushed_entries = 0;
        // Before the native checkpoint: RocksDB timers write their batch into the DB.
        let timers = self.snapshot_timers()?;
        let kind = match self.backend_kind() {
            BackendKind::RocksDb => {
                // Writes still in the cache must be in RocksDB before its checkpoint, or the
                // checkpoint misses them (Kafka Streams' flushCache before commit).
                let tc = Instant::now();
                cache_flushed_entries = self.flush_cache()?;
                cache_flush = tc.elapsed();
                let Some(rocks) = self.backend().as_rocksdb() else {
                    return Err(EngineError::InvalidArgument(
                        "backend is not RocksDB".into(),
                    ));
                };
                rocksdb::checkpoint::Checkpoint::new(rocks.db())
                    .and_then(|c| c.create_checkpoint(&dir))
                    .map_err(EngineError::rocks("native checkpoint"))?;
                let (mut shared, mut private) = (Vec::new(), Vec::new());
                for e in std::fs::read_dir(&dir).map_err(|e| EngineError::Io {
                    op: format!("list {}", dir.display()),
                    source: e,
                })? {
                    let e = e.map_err(|e| EngineError::Io {
                        op: format!("list {}", dir.display()),
                        source: e,
                    })?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Flink's rule: SSTs are shared, everything else is private.
                    if name.ends_with(".sst") {
                        shared.push(name);
                    } else {
                        private.push(name);
                    }
                }
                shared.sort();
                private.sort();
                Kind::RocksDb { shared, private }
            }
            BackendKind::Heap => {
                std::fs::create_dir_all(&dir).map_err(|e| EngineError::Io {
                    op: format!("create {}", dir.display()),
                    source: e,
                })?;
                Kind::Heap(self.heap_view()?)
            }
        };
        let r = self.key_groups();
        let live_data_bytes = self.live_data_estimate();
        let operator_state = match self.operator_state() {
            s if s.is_empty() => None,
            s => Some(s.to_bytes()?),
        };
        Ok(SyncSnapshot {
            id,
            slot: self.index().0,
            sync_duration: t.elapsed(),
            cache_flush,
            cache_flushed_entries,
            key_groups: KeyGroupRange {
                start: r.start,
                end: r.end,
            },
            backend: self.backend_kind(),
            states: self
                .states()
                .iter()
                .map(|d| StateInfo {
                    name: d.full_name(),
                    kind: d.kind.name().into(),
                })
                .collect(),
            dir,
            kind,
            slot_dir: self.working_dir().to_path_buf(),
            live_data_bytes,
            timers,
            operator_state,
        })
    }
}

impl SyncSnapshot {
    /// The asynchronous local part: writes the heap view to its file (RocksDB files are ready)
    /// and describes the directory for upload.
    pub fn materialize(self) -> Result<LocalSnapshot> {
        let (shared, mut private) = match self.kind {
            Kind::RocksDb { shared, private } => (shared, private),
            Kind::Heap(view) => {
                view.write(&self.dir.join(HEAP_SNAPSHOT_FILE))?;
                (Vec::new(), vec![HEAP_SNAPSHOT_FILE.to_string()])
            }
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
