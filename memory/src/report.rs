//! What RocksDB really uses, read back from the cache, the write-buffer manager and DB properties.

use rocksdb::{DBWithThreadMode, MultiThreaded, properties};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::shared::SlotMemory;

/// A snapshot of a slot's RocksDB memory, in bytes.
///
/// The parts overlap (memtables are charged into the block cache), so do not add them up; use
/// [`MemoryReport::rocksdb_total_bytes`], which counts everything once. Serialized with that total
/// as an extra `rocksdb_total_bytes` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryReport {
    /// The slot's budget, `None` when unmanaged.
    pub budget_bytes: Option<u64>,
    /// Block cache usage, including the write-buffer manager's reservations and cached
    /// index/filter blocks. Unmanaged: the sum of every column family's own cache.
    pub block_cache_bytes: u64,
    /// The part of the block cache that cannot be evicted (reservations, pinned index/filter
    /// blocks, blocks held by readers and iterators).
    pub block_cache_pinned_bytes: u64,
    /// `rocksdb.cur-size-all-mem-tables` summed over the column families: active and unflushed
    /// immutable memtables.
    pub memtable_bytes: u64,
    /// Memtable memory as the write-buffer manager counts it (allocated arena blocks, including
    /// memtables being flushed); 0 when unmanaged.
    pub write_buffer_manager_bytes: u64,
    /// How much of the block cache the write-buffer manager has reserved for memtables (in 256 KiB
    /// dummy entries); 0 when unmanaged.
    pub wbm_charged_to_cache_bytes: u64,
    /// `rocksdb.estimate-table-readers-mem` summed over the column families: table-reader memory
    /// outside the block cache (small, since index and filter blocks are cached when managed).
    pub table_readers_bytes: u64,
    /// Resident set size of the whole process; 0 where `/proc` is unavailable.
    pub rss_bytes: u64,
    /// Bytes held by the engine's write-back state cache (its own accounting: entry bytes plus a
    /// fixed per-entry overhead); 0 when off. Not part of RocksDB: set by the engine after
    /// [`MemoryReport::collect`], added in [`MemoryReport::total_bytes`].
    pub state_cache_bytes: u64,
    /// Bytes held by RocksDB timers' write-back buffer (its own O(1) estimate); 0 when off or
    /// with heap timers. Set by the engine like `state_cache_bytes`, added in
    /// [`MemoryReport::total_bytes`].
    pub timer_buffer_bytes: u64,
    /// The buffer's capacity: its share of the budget once the slot's RocksDB timers opened
    /// (`SlotMemory::reserved_timer_buffer_bytes`: what RocksDB gave up), else 0.
    pub timer_buffer_capacity_bytes: u64,
}

impl MemoryReport {
    /// Collects a report for `db`, whose column families `cf_names` live in `mem`.
    ///
    /// Names that are not open in `db` are skipped, and a property RocksDB cannot report counts
    /// as 0: a report is a diagnostic and never fails. With a shared cache, cache figures come from
    /// the cache itself (counted once, whichever DBs share it); unmanaged, each column family has
    /// its own cache and their usages are summed.
    pub fn collect(
        db: &DBWithThreadMode<MultiThreaded>,
        cf_names: &[&str],
        mem: &SlotMemory,
    ) -> MemoryReport {
        let mut report = MemoryReport {
            budget_bytes: mem.plan().map(|plan| plan.budget_bytes),
            timer_buffer_capacity_bytes: mem.reserved_timer_buffer_bytes(),
            rss_bytes: process_rss_bytes(),
            ..MemoryReport::default()
        };
        for name in cf_names {
            let Some(cf) = db.cf_handle(name) else {
                tracing::debug!(cf = *name, "memory report: column family is not open");
                continue;
            };
            let read = |property: &rocksdb::properties::PropName| match db
                .property_int_value_cf(&cf, property)
            {
                Ok(value) => value.unwrap_or(0),
                Err(error) => {
                    tracing::debug!(cf = *name, %error, "memory report: cannot read {property:?}");
                    0
                }
            };
            report.memtable_bytes += read(properties::CUR_SIZE_ALL_MEM_TABLES);
            report.table_readers_bytes += read(properties::ESTIMATE_TABLE_READERS_MEM);
            if !mem.is_managed() {
                report.block_cache_bytes += read(properties::BLOCK_CACHE_USAGE);
                report.block_cache_pinned_bytes += read(properties::BLOCK_CACHE_PINNED_USAGE);
            }
        }
        if let Some(cache) = mem.cache() {
            report.block_cache_bytes = cache.get_usage() as u64;
            report.block_cache_pinned_bytes = cache.get_pinned_usage() as u64;
        }
        if let Some(wbm) = mem.write_buffer_manager() {
            report.write_buffer_manager_bytes = wbm.get_usage() as u64;
            report.wbm_charged_to_cache_bytes = wbm.get_dummy_entries_in_cache_usage() as u64;
        }
        report
    }

    /// RocksDB's memory with every byte counted once: `block cache usage + memtables not charged
    /// to the cache + table readers`.
    ///
    /// The write-buffer manager charges memtable memory into the block cache as dummy entries, so
    /// the charged part is already in the cache usage. What is left is memtable memory beyond the
    /// charge: memtables may outgrow the manager by half before writes stall, and with a strict
    /// cache a reservation that does not fit is dropped while the memtable keeps its memory.
    /// Memtables are taken as the larger of the property sum and the manager's count, since the
    /// manager also sees memtables that are being freed. Unmanaged, nothing is charged and this is
    /// the plain sum.
    pub fn rocksdb_total_bytes(&self) -> u64 {
        let memtables = self.memtable_bytes.max(self.write_buffer_manager_bytes);
        self.block_cache_bytes
            + memtables.saturating_sub(self.wbm_charged_to_cache_bytes)
            + self.table_readers_bytes
    }

    /// Everything the budget covers: [`Self::rocksdb_total_bytes`] plus the state cache and
    /// the timer buffer.
    pub fn total_bytes(&self) -> u64 {
        self.rocksdb_total_bytes() + self.state_cache_bytes + self.timer_buffer_bytes
    }

    /// [`Self::total_bytes`] as a fraction of the budget (`None` when unmanaged).
    pub fn budget_utilisation(&self) -> Option<f64> {
        self.budget_bytes
            .filter(|&budget| budget > 0)
            .map(|budget| self.total_bytes() as f64 / budget as f64)
    }
}

impl Serialize for MemoryReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("MemoryReport", 13)?;
        s.serialize_field("budget_bytes", &self.budget_bytes)?;
        s.serialize_field("total_bytes", &self.total_bytes())?;
        s.serialize_field("rocksdb_total_bytes", &self.rocksdb_total_bytes())?;
        s.serialize_field("state_cache_bytes", &self.state_cache_bytes)?;
        s.serialize_field("timer_buffer_bytes", &self.timer_buffer_bytes)?;
        s.serialize_field(
            "timer_buffer_capacity_bytes",
            &self.timer_buffer_capacity_bytes,
        )?;
        s.serialize_field("block_cache_bytes", &self.block_cache_bytes)?;
        s.serialize_field("block_cache_pinned_bytes", &self.block_cache_pinned_bytes)?;
        s.serialize_field("memtable_bytes", &self.memtable_bytes)?;
        s.serialize_field(
            "write_buffer_manager_bytes",
            &self.write_buffer_manager_bytes,
        )?;
        s.serialize_field(
            "wbm_charged_to_cache_bytes",
            &self.wbm_charged_to_cache_bytes,
        )?;
        s.serialize_field("table_readers_bytes", &self.table_readers_bytes)?;
        s.serialize_field("rss_bytes", &self.rss_bytes)?;
        s.end()
    }
}

/// The process's resident set size in bytes, from `VmRSS` in `/proc/self/status`; 0 when that is
/// unavailable (not Linux, no `/proc`).
///
/// `/proc/self/status` reports kilobytes, which avoids needing the page size that `statm` counts in.
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_vm_rss(&status))
        .unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_counts_charged_memtables_once() {
        let report = MemoryReport {
            budget_bytes: Some(100),
            block_cache_bytes: 60, // includes 20 charged by the manager
            memtable_bytes: 25,
            write_buffer_manager_bytes: 22,
            wbm_charged_to_cache_bytes: 20,
            table_readers_bytes: 3,
            ..MemoryReport::default()
        };
        assert_eq!(report.rocksdb_total_bytes(), 60 + 5 + 3);
        assert_eq!(report.budget_utilisation(), Some(0.68));

        // Charged more than used (256 KiB granularity): nothing extra.
        let report = MemoryReport {
            block_cache_bytes: 60,
            memtable_bytes: 10,
            wbm_charged_to_cache_bytes: 20,
            ..MemoryReport::default()
        };
        assert_eq!(report.rocksdb_total_bytes(), 60);
        assert_eq!(report.budget_utilisation(), None);

        // Unmanaged: plain sum.
        let report = MemoryReport {
            block_cache_bytes: 7,
            memtable_bytes: 11,
            table_readers_bytes: 1,
            ..MemoryReport::default()
        };
        assert_eq!(report.rocksdb_total_bytes(), 19);
    }

    #[test]
    fn serializes_the_total_too() {
        let report = MemoryReport {
            budget_bytes: Some(100),
            block_cache_bytes: 40,
            memtable_bytes: 5,
            ..MemoryReport::default()
        };
        let json = serde_json::to_value(&report).expect("serializable");
        assert_eq!(json["rocksdb_total_bytes"], 45);
        assert_eq!(json["budget_bytes"], 100);
        assert_eq!(json["rss_bytes"], 0);
        assert_eq!(json["state_cache_bytes"], 0);
        let with_cache = MemoryReport {
            state_cache_bytes: 10,
            ..report
        };
        assert_eq!(with_cache.total_bytes(), 55);
        assert_eq!(with_cache.budget_utilisation(), Some(0.55));
        let json = serde_json::to_value(&with_cache).expect("serializable");
        assert_eq!(json["total_bytes"], 55);
        assert_eq!(json["rocksdb_total_bytes"], 45);
    }

    #[test]
    fn reads_rss_from_status() {
        let status = "Name:\tcairn\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(process_rss_bytes() > 0);
        }
    }
}
