//! How a slot's budget is split: pure arithmetic, no RocksDB.

use serde::Serialize;

use crate::config::{ConfigError, MemoryConfig};

/// The LRU cache's high-priority pool ratio that RocksDB 11.12 always uses here.
///
/// RocksDB's default (`LRUCacheOptions::high_pri_pool_ratio = 0.5`). Neither rust-rocksdb 0.54 nor
/// RocksDB's C API can set it (the C API only has capacity, shard bits, allocator and the strict
/// limit), so Cairn cannot honour `memory.high-priority-pool-ratio` until one of them does.
pub const ROCKSDB_HIGH_PRI_POOL_RATIO: f64 = 0.5;

/// Upper bound of a column family's memtable: 64 MiB, Flink's (and RocksDB's) default.
pub const MAX_WRITE_BUFFER_SIZE: u64 = 64 * 1024 * 1024;

/// Upper bound of a memtable arena block: 1 MiB, RocksDB's own cap for its automatic value.
pub const MAX_ARENA_BLOCK_SIZE: u64 = 1024 * 1024;

/// Arena blocks are multiples of a page, as in RocksDB and Flink.
const ARENA_ALIGN: u64 = 4 * 1024;

/// Block cache capacity for a budget, Flink's formula exactly:
/// `(long) ((3 - writeBufferRatio) * totalMemorySize / 3)`.
///
/// The write-buffer manager's reservations live inside the cache, and memtables may grow to 1.5x
/// the manager's capacity before writes stall; the 0.5x beyond it is outside the cache. So
/// `cache + wbm / 2 = (3 - r)M/3 + rM/3 = M`: cache and memtables together stay within the budget.
pub(crate) fn block_cache_bytes(budget: u64, ratio: f64) -> u64 {
    ((3.0 - ratio) * budget as f64 / 3.0) as u64
}

/// Write-buffer manager capacity for a budget, Flink's formula exactly:
/// `(long) (2 * totalMemorySize * writeBufferRatio / 3)`, so that 1.5x of it is `r * M`.
pub(crate) fn write_buffer_manager_bytes(budget: u64, ratio: f64) -> u64 {
    (2.0 * budget as f64 * ratio / 3.0) as u64
}

/// Memtable size of every column family: `min(64 MiB, wbm / 2)`.
///
/// Flink keeps 64 MiB whatever the budget; below a ~27 MiB budget one memtable is then bigger than
/// the write-buffer manager, which flushes it long before it is full. Half the manager leaves room
/// for a second column family's memtable (or the immutable one being flushed) before the manager
/// has to step in.
pub(crate) fn write_buffer_size(wbm: u64) -> u64 {
    (wbm / 2).min(MAX_WRITE_BUFFER_SIZE)
}

/// Arena block size: `align_up(min(write_buffer_size / 8, 1 MiB), 4 KiB)`, at least 4 KiB.
///
/// Flink uses `align_up(write_buffer_size / 8, 4 KiB)` and only logs a warning when that exceeds
/// the manager's mutable limit `wbm * 7/8`: a single arena block then trips the limit and memtables
/// flush constantly. Because `write_buffer_size <= wbm / 2`, this block is at most
/// `wbm / 16 + 4 KiB`, which stays below `wbm * 7/8` for every manager of at least 5 KiB (Cairn
/// requires 1 MiB). The 1 MiB cap is RocksDB's own for its automatic size: the manager counts whole
/// arena blocks, so smaller blocks keep its accounting (and the cache charge) closer to real use.
pub(crate) fn arena_block_size(write_buffer_size: u64) -> u64 {
    let wanted = (write_buffer_size / 8).min(MAX_ARENA_BLOCK_SIZE);
    wanted.div_ceil(ARENA_ALIGN).max(1) * ARENA_ALIGN
}

/// How a slot's budget is divided between block cache and memtables, and the memtable sizes that
/// follow from it.
///
/// Pure arithmetic from a validated [`MemoryConfig`]; [`crate::SlotMemory`] builds RocksDB objects
/// from it, and it is serialized into the run summary so every figure can be checked afterwards.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MemoryPlan {
    /// The slot's budget `M` in bytes.
    pub budget_bytes: u64,
    /// Capacity of the write-back state cache in front of RocksDB: `c * M`
    /// (`memory.state-cache-ratio`); 0 when off. Block cache and write-buffer manager are split
    /// from the rest, `M' = (1 - c) * M`.
    pub state_cache_bytes: u64,
    /// Capacity of the write-back buffer of RocksDB timers: `t * M`
    /// (`memory.timer-buffer-ratio`); 0 when off. Taken from RocksDB's share only when the
    /// slot's RocksDB timers open ([`crate::SlotMemory::reserve_timer_buffer`]): RocksDB then
    /// runs with the `*_with_timer_buffer` sizes, split from `(1 - c - t) * M`.
    pub timer_buffer_bytes: u64,
    /// The configured `memory.write-buffer-ratio` `r`.
    pub write_buffer_ratio: f64,
    /// Capacity of the shared LRU block cache: `(3 - r)/3 * M'` (Flink's formula on RocksDB's
    /// share `M'`).
    pub block_cache_bytes: u64,
    /// Capacity of the shared write-buffer manager, charged to the cache: `2r/3 * M'` (Flink's).
    pub write_buffer_manager_bytes: u64,
    /// The block cache once the timer buffer is reserved: Flink's formula on
    /// `(1 - c - t) * M`.
    pub block_cache_bytes_with_timer_buffer: u64,
    /// The write-buffer manager once the timer buffer is reserved.
    pub write_buffer_manager_bytes_with_timer_buffer: u64,
    /// `memory.high-priority-pool-ratio` as configured; used for validation only.
    pub high_priority_pool_ratio_configured: f64,
    /// The high-priority pool ratio the cache really uses: [`ROCKSDB_HIGH_PRI_POOL_RATIO`].
    pub high_priority_pool_ratio_effective: f64,
    /// Whether the configured ratio is the one in effect; `false` means the setting had no effect.
    pub high_priority_pool_ratio_honoured: bool,
    /// Memtable size of every column family (see `write_buffer_size` in this module).
    pub write_buffer_size: u64,
    /// Memtable arena block size of every column family; always `<= wbm * 7/8`.
    pub arena_block_size: u64,
    /// Whether the block cache refuses inserts beyond its capacity.
    pub strict_capacity_limit: bool,
    /// Whether index and filter blocks are partitioned.
    pub partitioned_index_filters: bool,
}

impl MemoryPlan {
    /// Validates `config` and computes the split; `Ok(None)` when the slot has no budget.
    pub fn from_config(config: &MemoryConfig) -> Result<Option<MemoryPlan>, ConfigError> {
        config.validate()?;
        let Some(budget) = config.budget_bytes() else {
            return Ok(None);
        };
        let r = config.write_buffer_ratio;
        let state_cache = config.state_cache_bytes();
        let timer_buffer = config.timer_buffer_bytes();
        let rocksdb_budget = budget - state_cache;
        let with_timers = rocksdb_budget - timer_buffer;
        let wbm = write_buffer_manager_bytes(rocksdb_budget, r);
        let write_buffer_size = write_buffer_size(wbm);
        let configured = config.high_priority_pool_ratio;
        Ok(Some(MemoryPlan {
            budget_bytes: budget,
            state_cache_bytes: state_cache,
            timer_buffer_bytes: timer_buffer,
            write_buffer_ratio: r,
            block_cache_bytes: block_cache_bytes(rocksdb_budget, r),
            write_buffer_manager_bytes: wbm,
            block_cache_bytes_with_timer_buffer: block_cache_bytes(with_timers, r),
            write_buffer_manager_bytes_with_timer_buffer: write_buffer_manager_bytes(
                with_timers,
                r,
            ),
            high_priority_pool_ratio_configured: configured,
            high_priority_pool_ratio_effective: ROCKSDB_HIGH_PRI_POOL_RATIO,
            high_priority_pool_ratio_honoured: configured == ROCKSDB_HIGH_PRI_POOL_RATIO,
            write_buffer_size,
            arena_block_size: arena_block_size(write_buffer_size),
            strict_capacity_limit: config.strict_capacity_limit,
            partitioned_index_filters: config.partitioned_index_filters,
        }))
    }

    /// The manager's mutable-memtable limit, `wbm * 7/8`: above it RocksDB flushes the largest
    /// memtable.
    pub fn mutable_limit_bytes(&self) -> u64 {
        self.write_buffer_manager_bytes / 8 * 7
    }

    /// A sentence explaining why the configured high-priority pool ratio is not in effect, or
    /// `None` when it is. Logged by [`crate::SlotMemory::build_shared`]; meant for run summaries.
    pub fn high_priority_pool_note(&self) -> Option<String> {
        (!self.high_priority_pool_ratio_honoured).then(|| {
            format!(
                "memory.high-priority-pool-ratio = {} is not applied: rust-rocksdb 0.54 and the \
                 RocksDB C API cannot set the LRU cache's high_pri_pool_ratio, so the cache uses \
                 RocksDB's {}",
                self.high_priority_pool_ratio_configured, self.high_priority_pool_ratio_effective
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIN_BUDGET_BYTES;
    use bytesize::ByteSize;

    const MIB: u64 = 1024 * 1024;

    fn plan(budget: u64, ratio: f64) -> Result<Option<MemoryPlan>, ConfigError> {
        MemoryPlan::from_config(&MemoryConfig {
            managed_size: ByteSize(budget),
            write_buffer_ratio: ratio,
            // Small enough that the Flink rule leaves every ratio below ~0.9 valid.
            high_priority_pool_ratio: 0.01,
            state_cache_ratio: 0.0,
            timer_buffer_ratio: 0.0,
            ..MemoryConfig::default()
        })
    }

    #[test]
    fn flink_split_at_defaults() {
        let m = 256 * MIB;
        let p = MemoryPlan::from_config(&MemoryConfig {
            state_cache_ratio: 0.0,
            timer_buffer_ratio: 0.0,
            ..MemoryConfig::default()
        })
        .expect("valid")
        .expect("managed");
        assert_eq!(p.budget_bytes, m);
        assert_eq!(p.state_cache_bytes, 0);
        // (3 - 0.5)/3 * M = 5/6 M, truncated like Flink's (long) cast.
        assert_eq!(p.block_cache_bytes, m * 5 / 6);
        assert_eq!(p.block_cache_bytes, 223_696_213);
        // 2 * 0.5 / 3 * M = M/3.
        assert_eq!(p.write_buffer_manager_bytes, m / 3);
        assert_eq!(p.write_buffer_manager_bytes, 89_478_485);
        // min(64 MiB, wbm / 2), and the arena capped at 1 MiB.
        assert_eq!(p.write_buffer_size, 89_478_485 / 2);
        assert_eq!(p.arena_block_size, MIB);
        assert_eq!(p.high_priority_pool_ratio_configured, 0.1);
        assert_eq!(p.high_priority_pool_ratio_effective, 0.5);
        assert!(!p.high_priority_pool_ratio_honoured);
        assert!(p.high_priority_pool_note().is_some());
        assert!(!p.strict_capacity_limit);
    }

    #[test]
    fn flink_split_matches_java_arithmetic() {
        // Flink: (long) ((3 - r) * M / 3) and (long) (2 * M * r / 3), evaluated in doubles.
        for (m, r, cache, wbm) in [
            (32 * MIB, 0.5, 27_962_026, 11_184_810),
            (100 * MIB, 0.25, 96_119_466, 17_476_266),
            (1024 * MIB, 0.8, 787_410_670, 572_662_306),
        ] {
            let p = plan(m, r).expect("valid").expect("managed");
            assert_eq!(p.block_cache_bytes, cache, "cache for M={m} r={r}");
            assert_eq!(p.write_buffer_manager_bytes, wbm, "wbm for M={m} r={r}");
            // cache + wbm/2 is the budget, up to truncation.
            assert!(m - (p.block_cache_bytes + p.write_buffer_manager_bytes / 2) <= 2);
        }
    }

    #[test]
    fn small_budgets_get_small_memtables() {
        let p = plan(32 * MIB, 0.5).expect("valid").expect("managed");
        assert_eq!(p.write_buffer_size, 11_184_810 / 2);
        // 5.3 MiB / 8 = 699 KB, aligned up to 4 KiB.
        assert_eq!(p.arena_block_size, 700_416);
        assert!(p.arena_block_size <= p.mutable_limit_bytes());
    }

    #[test]
    fn unmanaged_has_no_plan_and_invalid_config_is_an_error() {
        let c = MemoryConfig {
            managed: false,
            ..MemoryConfig::default()
        };
        assert_eq!(MemoryPlan::from_config(&c), Ok(None));
        assert!(plan(MIB, 0.5).is_err());
    }

    #[test]
    fn high_priority_pool_ratio_of_half_is_honoured() {
        let p = MemoryPlan::from_config(&MemoryConfig {
            write_buffer_ratio: 0.2,
            high_priority_pool_ratio: 0.5,
            ..MemoryConfig::default()
        })
        .expect("valid")
        .expect("managed");
        assert!(p.high_priority_pool_ratio_honoured);
        assert_eq!(p.high_priority_pool_note(), None);
    }

    #[test]
    fn arena_always_fits_the_write_buffer_manager() {
        let budgets = [
            MIN_BUDGET_BYTES,
            MIN_BUDGET_BYTES + 1,
            17 * MIB + 12_345,
            27 * MIB,
            32 * MIB,
            100 * MIB,
            256 * MIB,
            1024 * MIB,
            7 * 1024 * MIB + 3,
            64 * 1024 * MIB,
            1024 * 1024 * MIB,
        ];
        let mut checked = 0;
        for budget in budgets {
            for step in 1..1000 {
                let r = f64::from(step) / 1000.0;
                let Some(p) = plan(budget, r).ok().flatten() else {
                    continue; // rejected by validate(): not an allowed combination
                };
                checked += 1;
                let ctx = format!("M={budget} r={r} {p:?}");
                assert!(p.arena_block_size <= p.mutable_limit_bytes(), "{ctx}");
                assert!(p.arena_block_size <= p.write_buffer_size, "{ctx}");
                assert!(p.arena_block_size >= ARENA_ALIGN, "{ctx}");
                assert_eq!(p.arena_block_size % ARENA_ALIGN, 0, "{ctx}");
                assert!(
                    p.write_buffer_size <= p.write_buffer_manager_bytes / 2,
                    "{ctx}"
                );
                assert!(p.write_buffer_size <= MAX_WRITE_BUFFER_SIZE, "{ctx}");
                // RocksDB raises smaller memtables to 64 KiB, which would break the sizing.
                assert!(p.write_buffer_size >= 64 * 1024, "{ctx}");
            }
        }
        // Most combinations are allowed; make sure the loop did not silently skip them all.
        assert!(checked > 5000, "only {checked} combinations checked");
    }

    #[test]
    fn state_cache_share_shrinks_block_cache_and_manager_within_the_budget() {
        let m = 256 * MIB;
        let p = MemoryPlan::from_config(&MemoryConfig::default())
            .expect("valid")
            .expect("managed");
        let c = crate::config::DEFAULT_STATE_CACHE_RATIO;
        let t = crate::config::DEFAULT_TIMER_BUFFER_RATIO;
        assert_eq!(p.state_cache_bytes, (m as f64 * c) as u64);
        assert_eq!(p.timer_buffer_bytes, (m as f64 * t) as u64);
        let rest = m - p.state_cache_bytes;
        assert_eq!(p.block_cache_bytes, block_cache_bytes(rest, 0.5));
        assert_eq!(
            p.write_buffer_manager_bytes,
            write_buffer_manager_bytes(rest, 0.5)
        );
        // cache + block cache + memtables (1.5x the manager, half of it outside the cache) <= M,
        // and with the timer buffer reserved: cache + timer buffer + the smaller RocksDB <= M.
        let total = p.state_cache_bytes + p.block_cache_bytes + p.write_buffer_manager_bytes / 2;
        assert!(total <= m && m - total <= 2, "{total} vs {m}");
        let rest = rest - p.timer_buffer_bytes;
        assert_eq!(
            p.block_cache_bytes_with_timer_buffer,
            block_cache_bytes(rest, 0.5)
        );
        let total = p.state_cache_bytes
            + p.timer_buffer_bytes
            + p.block_cache_bytes_with_timer_buffer
            + p.write_buffer_manager_bytes_with_timer_buffer / 2;
        assert!(total <= m && m - total <= 2, "{total} vs {m}");
    }
}
