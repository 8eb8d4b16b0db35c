//! A slot's part of a checkpoint: the pre-flush before the barrier, the synchronous phase at
//! the barrier ([`Slot::snapshot_for_checkpoint`]), and the compaction the rebase policy asks
//! for. Everything backend-specific is a [`StateBackend`](crate::backend::StateBackend) method.
//!
//! ## Pre-flush: the part of a checkpoint that runs *before* the barrier, without stopping the slot
//!
//! RocksDB's native checkpoint (the synchronous phase) flushes every memtable and waits for it:
//! with WAL off that is the only way the checkpoint holds the latest writes, and it makes the
//! slot's pause grow with the bytes written since the last checkpoint (a 100-250 ms pause per
//! checkpoint on the 1M-counter job). The barrier is published ahead of the slots' positions
//! (see the coordinator in the `cairn` crate), so a slot learns of a checkpoint some records
//! before it must take it. [`Slot::start_pre_flush`] starts at that moment: the state
//! cache's entries dirty then are written back in chunks of
//! [`crate::backend::rocks::PRE_FLUSH_CHUNK`], one per [`Slot::continue_pre_flush`]
//! call between records (a sub-millisecond hold each, instead of one stall for the whole dirty
//! set), and once they are all written a flush of every column family starts; RocksDB's flush
//! threads write the SSTs while the slot keeps processing into fresh memtables, and the
//! synchronous phase is left with what was written in between.

use std::time::Instant;

use cairn_snapshot::StateInfo;

use super::Slot;
use crate::backend::CompactionStats;
use crate::checkpoint::SyncSnapshot;
use crate::error::{EngineError, Result};

impl Slot {
    /// Writes the state cache's dirty entries into RocksDB and starts flushing the slot's
    /// memtables in the background (no-op for the heap backend). Returns once the flush is
    /// scheduled; the checkpoint that follows is correct whether or not this was called.
    pub fn start_pre_flush(&mut self) -> Result<()> {
        self.backend.start_flush()
    }

    /// Continues a started pre-flush by one bounded step (a chunk of the state cache's
    /// write-back; when that is done, the start of the memtable flush). Call it between records
    /// until it returns `false`; the checkpoint is correct however far it got.
    pub fn continue_pre_flush(&mut self) -> Result<bool> {
        self.backend.continue_flush()
    }

    /// Takes the synchronous part of checkpoint `id` into `<working dir>/snapshots/chk-<id>`:
    /// the state cache's dirty entries are written into the backend (one `WriteBatch`), the
    /// timers snapshotted, then the backend's native snapshot taken (RocksDB: memtables flushed
    /// and live files hard-linked; heap: a copy-on-write view of its tables). This is the
    /// slot's synchronous phase (it runs on the slot's thread, between two records); the upload
    /// is the asynchronous phase, anywhere ([`crate::checkpoint::Checkpointer`],
    /// [`crate::checkpoint::SlotUploader`]).
    #[doc(alias = "snapshot_sync")]
    pub fn snapshot_for_checkpoint(&mut self, id: u64) -> Result<SyncSnapshot> {
        let t = Instant::now();
        let base = self.working_dir.join("snapshots");
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
        // Before the native snapshot: RocksDB timers write their batch into the DB.
        let timers = self.snapshot_timers()?;
        // Writes still in the cache must be in the backend before its snapshot, or the
        // snapshot misses them (Kafka Streams' flushCache before commit).
        let tc = Instant::now();
        let cache_flushed_entries = self.backend.flush_cache()?;
        let cache_flush = tc.elapsed();
        let native = self.backend.native_snapshot(&dir)?;
        let operator_state = match self.operator_state() {
            s if s.is_empty() => None,
            s => Some(s.to_bytes()?),
        };
        Ok(SyncSnapshot {
            id,
            slot: self.index,
            sync_duration: t.elapsed(),
            cache_flush,
            cache_flushed_entries,
            key_groups: self.range,
            backend: self.kind,
            states: self
                .states
                .iter()
                .map(|d| StateInfo {
                    name: d.full_name(),
                    kind: d.kind.name().into(),
                    ttl: false,
                    full_snapshot_ttl_ms: d
                        .ttl
                        .filter(|t| t.cleanup_full_snapshot)
                        .and_then(|t| u64::try_from(t.ttl_ms()).ok()),
                })
                .collect(),
            dir,
            native,
            slot_dir: self.working_dir.clone(),
            live_data_bytes: self.backend.live_data_estimate(),
            timers,
            operator_state,
        })
    }

    /// An estimate of the live data in the slot's state files, bytes (see
    /// [`StateBackend::live_data_estimate`](crate::backend::StateBackend::live_data_estimate));
    /// `None` for the heap backend (it has no dead data to compact away).
    pub fn live_data_estimate(&self) -> Option<u64> {
        self.backend.live_data_estimate()
    }

    /// Compacts every state of the slot over its whole key range, bottommost level included,
    /// so overwritten and deleted data is dropped (RocksDB `compact_range`). Runs on the
    /// caller's thread: the slot is stopped for its duration, like Flink's manual compaction.
    /// A no-op for the heap backend.
    pub fn compact_state(&mut self) -> Result<CompactionStats> {
        self.backend.compact()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{BackendKind, CairnConfig, Slot, VoidNamespace};

    fn slot(backend: BackendKind, dir: &std::path::Path) -> Slot {
        let mut config = CairnConfig::default();
        config.state.working_dir = dir.to_path_buf();
        config.state.backend = backend;
        Slot::builder(&config).open().unwrap()
    }

    #[test]
    fn rocksdb_memtables_drain_in_the_background_while_writes_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slot(BackendKind::RocksDb, dir.path());
        let v = s.value_state::<u64>("op", "v").unwrap();
        for k in 0..20_000u64 {
            let scope = s.scope(&k, &VoidNamespace).unwrap();
            v.update(&mut s, &scope, &k).unwrap();
        }
        // With the state cache on (the default) the writes are still in the cache: the
        // pre-flush writes them back first, a chunk per step, with writes in between.
        s.start_pre_flush().unwrap();
        let scope = s.scope(&u64::MAX, &VoidNamespace).unwrap();
        // start_pre_flush wrote the first chunk; every call writes one more.
        let mut chunks = 1u64;
        loop {
            let more = s.continue_pre_flush().unwrap();
            chunks += 1;
            if !more {
                break;
            }
            v.update(&mut s, &scope, &chunks).unwrap();
        }
        let chunk = crate::backend::rocks::PRE_FLUSH_CHUNK as u64;
        // 20,000 is not a multiple of the chunk: the last call wrote a partial chunk.
        assert_eq!(chunks, 20_000u64.div_ceil(chunk), "one chunk per step");
        // Writes keep going while the flush runs.
        v.update(&mut s, &scope, &7).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let l0_files = |s: &Slot| {
            s.backend()
                .native_property("rocksdb.num-files-at-level0")
                .unwrap_or(0)
        };
        while l0_files(&s) == 0 {
            assert!(
                Instant::now() < deadline,
                "the background flush never wrote an SST"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The write made during the flush is still there, and the checkpoint takes it.
        let scope = s.scope(&u64::MAX, &VoidNamespace).unwrap();
        assert_eq!(v.get(&mut s, &scope).unwrap(), Some(7));
        s.snapshot_for_checkpoint(1).unwrap();
    }

    #[test]
    fn heap_slots_have_nothing_to_prepare() {
        let dir = tempfile::tempdir().unwrap();
        slot(BackendKind::Heap, dir.path())
            .start_pre_flush()
            .unwrap();
    }

    #[test]
    fn without_the_state_cache_the_memtables_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CairnConfig::default();
        config.state.working_dir = dir.path().to_path_buf();
        config.memory.state_cache_ratio = 0.0;
        let mut s = Slot::builder(&config).open().unwrap();
        let v = s.value_state::<u64>("op", "v").unwrap();
        for k in 0..20_000u64 {
            let scope = s.scope(&k, &VoidNamespace).unwrap();
            v.update(&mut s, &scope, &k).unwrap();
        }
        assert!(s.memory_report().memtable_bytes > 100_000);
        s.start_pre_flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.memory_report().memtable_bytes > 100_000 {
            assert!(
                Instant::now() < deadline,
                "the memtables were never flushed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
