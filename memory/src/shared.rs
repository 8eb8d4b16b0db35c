//! The RocksDB objects a slot shares: one block cache and one write-buffer manager.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{BlockBasedIndexType, BlockBasedOptions, Cache, Options, WriteBufferManager};

use crate::config::{ConfigError, MemoryConfig};
use crate::plan::MemoryPlan;

/// Bits per key of the bloom filter installed with partitioned index/filters, as in Flink.
const PARTITIONED_BLOOM_BITS_PER_KEY: f64 = 10.0;

/// The memory objects of one slot, built once and borrowed by every column family of every
/// RocksDB instance in the slot.
///
/// Managed: one LRU block cache of [`MemoryPlan::block_cache_bytes`] and one write-buffer manager
/// of [`MemoryPlan::write_buffer_manager_bytes`] that charges memtable memory to that cache, so
/// one number bounds both. Unmanaged: nothing is shared and every column family keeps RocksDB's
/// defaults (Flink's behaviour without managed memory).
///
/// Cloning is cheap and shares the same cache and manager; that is how several RocksDB instances
/// of one slot share a budget.
#[derive(Clone)]
pub struct SlotMemory {
    shared: Option<Shared>,
}

#[derive(Clone)]
struct Shared {
    plan: MemoryPlan,
    /// Whether the timer buffer's share was taken from block cache and write-buffer manager.
    timer_buffer_reserved: Arc<AtomicBool>,
    cache: Cache,
    write_buffer_manager: WriteBufferManager,
    write_buffer_size: usize,
    arena_block_size: usize,
}

impl fmt::Debug for SlotMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shared {
            None => f.write_str("SlotMemory::Unmanaged"),
            Some(shared) => f
                .debug_struct("SlotMemory")
                .field("plan", &shared.plan)
                .field("cache_usage", &shared.cache.get_usage())
                .field("wbm_usage", &shared.write_buffer_manager.get_usage())
                .finish(),
        }
    }
}

/// Converts a planned size to `usize`, naming the setting it derives from when it does not fit
/// (only possible on 32-bit targets).
fn to_usize(bytes: u64, field: &str) -> Result<usize, ConfigError> {
    usize::try_from(bytes).map_err(|_| {
        ConfigError::out_of_range(
            field,
            bytesize::ByteSize(bytes),
            format!(
                "<= {} on this platform",
                bytesize::ByteSize(usize::MAX as u64)
            ),
        )
    })
}

impl SlotMemory {
    /// Validates `config` and builds the slot's shared cache and write-buffer manager.
    ///
    /// Logs a warning when `memory.high-priority-pool-ratio` cannot be applied (see
    /// [`MemoryPlan::high_priority_pool_note`]). Without a budget this returns
    /// [`SlotMemory::unmanaged`].
    pub fn build_shared(config: &MemoryConfig) -> Result<SlotMemory, ConfigError> {
        let Some(plan) = MemoryPlan::from_config(config)? else {
            tracing::info!(
                "RocksDB memory is unmanaged: every column family uses its own defaults"
            );
            return Ok(Self::unmanaged());
        };
        let budget_field = if config.fixed_per_slot.is_some() {
            crate::config::field::FIXED_PER_SLOT
        } else {
            crate::config::field::MANAGED_SIZE
        };
        let cache_bytes = to_usize(plan.block_cache_bytes, budget_field)?;
        let wbm_bytes = to_usize(plan.write_buffer_manager_bytes, budget_field)?;
        let write_buffer_size = to_usize(plan.write_buffer_size, budget_field)?;
        let arena_block_size = to_usize(plan.arena_block_size, budget_field)?;

        let cache = if plan.strict_capacity_limit {
            Cache::new_lru_cache_with_strict_capacity_limit(cache_bytes)
        } else {
            Cache::new_lru_cache(cache_bytes)
        };
        // allow_stall: when memtables reach the manager's capacity, writers wait for a flush
        // instead of growing memory further; the budget holds under write bursts. Not with the
        // strict limit: a flush that fails on the full cache stops the DB and would leave a
        // stalled writer waiting forever (seen in tests/memory_budget.rs); without stalls the
        // writer gets the DB's error instead.
        let allow_stall = !plan.strict_capacity_limit;
        let write_buffer_manager = WriteBufferManager::new_write_buffer_manager_with_cache(
            wbm_bytes,
            allow_stall,
            cache.clone(),
        );

        // The run summary and MemoryPlan report it; a warning per slot would only repeat it.
        if let Some(note) = plan.high_priority_pool_note() {
            tracing::info!("{note}");
        }
        if plan.strict_capacity_limit {
            tracing::warn!(
                "memory.strict-capacity-limit = true: a flush or compaction that cannot cache a \
                 block fails with MemoryLimit and stops the DB; use only for experiments"
            );
        }
        tracing::info!(
            budget_bytes = plan.budget_bytes,
            state_cache_bytes = plan.state_cache_bytes,
            timer_buffer_bytes = plan.timer_buffer_bytes,
            block_cache_bytes = plan.block_cache_bytes,
            write_buffer_manager_bytes = plan.write_buffer_manager_bytes,
            write_buffer_size = plan.write_buffer_size,
            arena_block_size = plan.arena_block_size,
            strict_capacity_limit = plan.strict_capacity_limit,
            "built the slot's shared RocksDB memory"
        );
        Ok(SlotMemory {
            shared: Some(Shared {
                plan,
                timer_buffer_reserved: Arc::new(AtomicBool::new(false)),
                cache,
                write_buffer_manager,
                write_buffer_size,
                arena_block_size,
            }),
        })
    }

    /// Gives RocksDB timers' write-back buffer its share of the budget
    /// ([`MemoryPlan::timer_buffer_bytes`]): shrinks the block cache and the write-buffer
    /// manager to their `*_with_timer_buffer` sizes (RocksDB evicts and flushes down to them)
    /// and returns the buffer's bytes; the same bytes again on later calls, 0 when unmanaged.
    /// Called when the slot's RocksDB timers open, so a slot without them keeps it all.
    pub fn reserve_timer_buffer(&self) -> u64 {
        let Some(s) = &self.shared else {
            return 0;
        };
        if s.plan.timer_buffer_bytes > 0 && !s.timer_buffer_reserved.swap(true, Ordering::SeqCst) {
            // The sizes are below the ones built from the same plan, so they fit in usize.
            let mut cache = s.cache.clone();
            cache.set_capacity(s.plan.block_cache_bytes_with_timer_buffer as usize);
            s.write_buffer_manager
                .set_buffer_size(s.plan.write_buffer_manager_bytes_with_timer_buffer as usize);
            tracing::info!(
                timer_buffer_bytes = s.plan.timer_buffer_bytes,
                block_cache_bytes = s.plan.block_cache_bytes_with_timer_buffer,
                write_buffer_manager_bytes = s.plan.write_buffer_manager_bytes_with_timer_buffer,
                "RocksDB timers opened: their buffer's share is taken from RocksDB's"
            );
        }
        s.plan.timer_buffer_bytes
    }

    /// The buffer's share once [`SlotMemory::reserve_timer_buffer`] has taken it, else 0.
    pub fn reserved_timer_buffer_bytes(&self) -> u64 {
        self.shared
            .as_ref()
            .filter(|s| s.timer_buffer_reserved.load(Ordering::SeqCst))
            .map_or(0, |s| s.plan.timer_buffer_bytes)
    }

    /// A slot without a budget: nothing is shared, RocksDB defaults apply.
    pub fn unmanaged() -> SlotMemory {
        SlotMemory { shared: None }
    }

    /// Whether the slot has a budget (a shared cache and write-buffer manager).
    pub fn is_managed(&self) -> bool {
        self.shared.is_some()
    }

    /// The split of the budget, when managed.
    pub fn plan(&self) -> Option<&MemoryPlan> {
        self.shared.as_ref().map(|s| &s.plan)
    }

    /// Capacity of the engine's write-back state cache (`memory.state-cache-ratio` of the
    /// budget); 0 when off or unmanaged.
    pub fn state_cache_bytes(&self) -> u64 {
        self.plan().map_or(0, |p| p.state_cache_bytes)
    }

    /// The shared block cache, when managed.
    pub fn cache(&self) -> Option<&Cache> {
        self.shared.as_ref().map(|s| &s.cache)
    }

    /// The shared write-buffer manager, when managed.
    pub fn write_buffer_manager(&self) -> Option<&WriteBufferManager> {
        self.shared.as_ref().map(|s| &s.write_buffer_manager)
    }

    /// Installs the shared write-buffer manager on the DB-wide options (a no-op when unmanaged).
    ///
    /// The manager is a DB option in RocksDB: it only takes effect through the options passed to
    /// `open`, not through a column family's.
    pub fn apply_to_db_options(&self, opts: &mut Options) {
        if let Some(shared) = &self.shared {
            opts.set_write_buffer_manager(&shared.write_buffer_manager);
        }
    }

    /// Configures one column family to live in the slot's budget, then installs `table` as its
    /// block-based table factory.
    ///
    /// Call it for every column family, **including "default"** (RocksDB opens a column family
    /// without a descriptor with default options, outside the budget), after setting your own
    /// options on `opts` and `table`: it overrides the memory-related ones. The factory is built
    /// from `table` as it is now; changing `table` afterwards has no effect unless it is installed
    /// again.
    ///
    /// Managed, it sets on `table`: the shared block cache; index and filter blocks cached (so
    /// they count against the budget) with high priority, and pinned for L0 (Flink's settings);
    /// with `partitioned-index-filters`, a two-level index, partitioned filters with the top level
    /// pinned, and a 10 bits/key full bloom filter. On `opts`: the write-buffer manager,
    /// [`MemoryPlan::write_buffer_size`] and [`MemoryPlan::arena_block_size`]. Unmanaged, it only
    /// installs `table`.
    pub fn apply_to_cf_options(&self, opts: &mut Options, table: &mut BlockBasedOptions) {
        if let Some(shared) = &self.shared {
            table.set_block_cache(&shared.cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if shared.plan.partitioned_index_filters {
                table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
                table.set_partition_filters(true);
                table.set_pin_top_level_index_and_filter(true);
                table.set_bloom_filter(PARTITIONED_BLOOM_BITS_PER_KEY, false);
            }
            // Harmless on a column family's options, and makes options used for both the DB and
            // its default column family complete.
            opts.set_write_buffer_manager(&shared.write_buffer_manager);
            opts.set_write_buffer_size(shared.write_buffer_size);
            opts.set_arena_block_size(shared.arena_block_size);
        }
        opts.set_block_based_table_factory(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    #[test]
    fn managed_slot_shares_one_cache_charged_by_the_manager() {
        let mem = SlotMemory::build_shared(&MemoryConfig {
            managed_size: ByteSize::mib(32),
            ..MemoryConfig::default()
        })
        .expect("valid");
        assert!(mem.is_managed());
        let plan = mem.plan().expect("plan");
        let cache = mem.cache().expect("cache");
        let wbm = mem.write_buffer_manager().expect("wbm");
        assert_eq!(cache.get_capacity() as u64, plan.block_cache_bytes);
        assert_eq!(
            wbm.get_buffer_size() as u64,
            plan.write_buffer_manager_bytes
        );
        assert!(wbm.enabled());
        assert!(wbm.cost_to_cache());
        // A clone shares the same objects.
        let other = mem.clone();
        assert_eq!(
            other.cache().map(Cache::get_capacity),
            Some(cache.get_capacity())
        );

        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        mem.apply_to_db_options(&mut opts);
        mem.apply_to_cf_options(&mut opts, &mut table);
    }

    #[test]
    fn reserving_the_timer_buffer_shrinks_cache_and_manager_once() {
        let mem = SlotMemory::build_shared(&MemoryConfig {
            managed_size: ByteSize::mib(64),
            ..MemoryConfig::default()
        })
        .expect("valid");
        let plan = mem.plan().expect("plan").clone();
        let cache = mem.cache().expect("cache");
        let wbm = mem.write_buffer_manager().expect("wbm");
        assert_eq!(cache.get_capacity() as u64, plan.block_cache_bytes);
        assert!(plan.timer_buffer_bytes > 0);
        assert_eq!(mem.reserved_timer_buffer_bytes(), 0);
        for _ in 0..2 {
            assert_eq!(mem.clone().reserve_timer_buffer(), plan.timer_buffer_bytes);
            assert_eq!(
                cache.get_capacity() as u64,
                plan.block_cache_bytes_with_timer_buffer
            );
            assert_eq!(
                wbm.get_buffer_size() as u64,
                plan.write_buffer_manager_bytes_with_timer_buffer
            );
        }
        assert_eq!(mem.reserved_timer_buffer_bytes(), plan.timer_buffer_bytes);
        assert!(plan.block_cache_bytes_with_timer_buffer < plan.block_cache_bytes);
        assert_eq!(SlotMemory::unmanaged().reserve_timer_buffer(), 0);
    }

    #[test]
    fn unmanaged_slot_has_nothing_shared() {
        let mem = SlotMemory::build_shared(&MemoryConfig {
            managed: false,
            ..MemoryConfig::default()
        })
        .expect("valid");
        assert!(!mem.is_managed());
        assert!(mem.cache().is_none());
        assert!(mem.write_buffer_manager().is_none());
        assert!(mem.plan().is_none());
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        mem.apply_to_db_options(&mut opts);
        mem.apply_to_cf_options(&mut opts, &mut table);
    }

    #[test]
    fn invalid_config_builds_nothing() {
        let err = SlotMemory::build_shared(&MemoryConfig {
            write_buffer_ratio: 1.0,
            ..MemoryConfig::default()
        })
        .expect_err("invalid ratio");
        assert_eq!(err.field(), Some("memory.write-buffer-ratio"));
    }
}
