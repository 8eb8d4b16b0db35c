//! The slot's RocksDB files as a whole: the native checkpoint of the synchronous phase, the
//! live-data estimate the rebase policy reads, full compaction, and integer properties summed
//! over the state column families.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::RocksDbBackend;
use crate::backend::{CompactionStats, NativeSnapshot};
use crate::error::{EngineError, Result};

/// RocksDB's estimate of the live data in a column family: the sizes of a maximal set of files
/// with no key-range overlap, bottom level first (overlapping files, i.e. overwritten and
/// deleted data not yet compacted away, are not counted).
const LIVE_DATA_PROPERTY: &str = "rocksdb.estimate-live-data-size";

impl RocksDbBackend {
    /// RocksDB's checkpoint into `dir` (which must not exist): flushes the memtables and
    /// hard-links the live files. SSTs are shared, everything else private (Flink's rule).
    pub(super) fn checkpoint_into(&self, dir: &Path) -> Result<NativeSnapshot> {
        self.check_open()?;
        // The memtables are flushed here, not inside `create_checkpoint` (which then finds them
        // empty), so the pause's two parts are timed apart: waiting for the flush (writing and
        // syncing the SSTs on a background thread) and the checkpoint itself (links, MANIFEST
        // copy, directory syncs).
        let t = Instant::now();
        self.flush_memtables(true)?;
        let flush = t.elapsed();
        rocksdb::checkpoint::Checkpoint::new(self.db())
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(EngineError::rocks("native checkpoint"))?;
        tracing::debug!(
            flush_ms = flush.as_secs_f64() * 1e3,
            checkpoint_ms = (t.elapsed() - flush).as_secs_f64() * 1e3,
            "native checkpoint"
        );
        let list = |e| EngineError::Io {
            op: format!("list {}", dir.display()),
            source: e,
        };
        let (mut shared, mut private) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir(dir).map_err(list)? {
            let name = e.map_err(list)?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sst") {
                shared.push(name);
            } else {
                private.push(name);
            }
        }
        shared.sort();
        private.sort();
        Ok(NativeSnapshot::Files { shared, private })
    }

    /// An estimate of the live data in the state column families, bytes: per column family
    /// the larger of RocksDB's `rocksdb.estimate-live-data-size` and the size of its largest
    /// sorted run (an L0 file, or a level), summed.
    ///
    /// Why not RocksDB's property alone: it adds up a maximal set of files with no key-range
    /// overlap, bottom level first. Every Cairn SST spans almost the whole key space (keys
    /// start with the key group), so one small file in the bottom level hides all the others,
    /// and the estimate collapses (42-55x "amplification" after a bulk load with universal
    /// compaction: `benches/RESULTS.md`, "Periodic rebase"). The largest sorted run is a floor
    /// that does not collapse; both stay optimistic about overwritten data in the largest run.
    pub(super) fn estimate_live_data(&self) -> u64 {
        let db = self.db();
        let mut runs: HashMap<(&str, i32, Option<&str>), u64> = HashMap::new();
        let files = db.live_files().unwrap_or_default();
        for f in &files {
            // L0 files are sorted runs each; a level >= 1 is one run.
            let file = (f.level == 0).then_some(f.name.as_str());
            *runs
                .entry((f.column_family_name.as_str(), f.level, file))
                .or_default() += f.size as u64;
        }
        self.column_families()
            .map(|n| {
                let property = db
                    .cf_handle(n)
                    .and_then(|cf| {
                        db.property_int_value_cf(&cf, LIVE_DATA_PROPERTY)
                            .ok()
                            .flatten()
                    })
                    .unwrap_or(0);
                let largest_run = runs
                    .iter()
                    .filter(|((cf, _, _), _)| *cf == n)
                    .map(|(_, size)| *size)
                    .max()
                    .unwrap_or(0);
                property.max(largest_run)
            })
            .sum()
    }

    /// Compacts every state column family over its whole key range, bottommost level included
    /// (RocksDB `compact_range`), so overwritten and deleted data is dropped.
    pub(super) fn compact_all(&self) -> Result<CompactionStats> {
        let t = Instant::now();
        const LIVE_SST: &str = "rocksdb.live-sst-files-size";
        let before = self.int_property_sum(LIVE_SST).unwrap_or(0);
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let db = self.db();
        for name in self.column_families() {
            let cf = db.cf_handle(name).ok_or_else(|| {
                EngineError::InvalidArgument(format!("column family {name} is not open"))
            })?;
            db.compact_range_cf_opt(&cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(CompactionStats {
            ms: t.elapsed().as_secs_f64() * 1000.0,
            sst_bytes_before: before,
            sst_bytes_after: self.int_property_sum(LIVE_SST).unwrap_or(0),
        })
    }

    /// An integer property summed over the state column families; `None` when no column
    /// family has it.
    pub(super) fn int_property_sum(&self, name: &str) -> Option<u64> {
        let db = self.db();
        self.column_families()
            .filter_map(|n| db.cf_handle(n))
            .filter_map(|cf| db.property_int_value_cf(&cf, name).ok().flatten())
            .reduce(|a, b| a + b)
    }
}
