//! Pre-flush: the part of a checkpoint that runs *before* the barrier, without stopping the slot.
//!
//! RocksDB's native checkpoint (the synchronous phase) flushes every memtable and waits for it:
//! with WAL off that is the only way the checkpoint holds the latest writes, and it makes the
//! slot's pause grow with the bytes written since the last checkpoint (a 100-250 ms pause per
//! checkpoint on the 1M-counter job). The barrier is published ahead of the slots' positions
//! (see the coordinator in the `cairn` crate), so a slot learns of a checkpoint some records
//! before it must take it. [`Slot::prepare_checkpoint`] starts at that moment: the state
//! cache's entries dirty then are written back in chunks of
//! [`crate::backend::rocks::PRE_FLUSH_CHUNK`], one per [`Slot::continue_checkpoint_preparation`]
//! call between records (a sub-millisecond hold each, instead of one stall for the whole dirty
//! set), and once they are all written a flush of every column family starts; RocksDB's flush
//! threads write the SSTs while the slot keeps processing into fresh memtables, and the
//! synchronous phase is left with what was written in between.

use crate::error::Result;
use crate::slot::Slot;

impl Slot {
    /// Writes the state cache's dirty entries into RocksDB and starts flushing the slot's
    /// memtables in the background (no-op for the heap backend). Returns once the flush is
    /// scheduled; the checkpoint that follows is correct whether or not this was called.
    pub fn prepare_checkpoint(&mut self) -> Result<()> {
        self.start_backend_flush()
    }

    /// Continues a started pre-flush by one bounded step (a chunk of the state cache's
    /// write-back; when that is done, the start of the memtable flush). Call it between records
    /// until it returns `false`; the checkpoint is correct however far it got.
    pub fn continue_checkpoint_preparation(&mut self) -> Result<bool> {
        self.continue_backend_flush()
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
        s.prepare_checkpoint().unwrap();
        let scope = s.scope(&u64::MAX, &VoidNamespace).unwrap();
        // prepare_checkpoint wrote the first chunk; every call writes one more.
        let mut chunks = 1u64;
        loop {
            let more = s.continue_checkpoint_preparation().unwrap();
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
        {
            let rocks = s.backend().as_rocksdb().unwrap();
            let cf = rocks.column_families().next().unwrap();
            let cf = rocks.db().cf_handle(cf).unwrap();
            let l0_files = || {
                rocks
                    .db()
                    .property_int_value_cf(&cf, "rocksdb.num-files-at-level0")
                    .unwrap()
                    .unwrap_or(0)
            };
            while l0_files() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the background flush never wrote an SST"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
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
            .prepare_checkpoint()
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
        s.prepare_checkpoint().unwrap();
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
