//! The `[memory]` settings and Cairn's configuration error type.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The smallest memory budget Cairn accepts for one slot: 16 MiB.
///
/// At the default write-buffer ratio this gives a 13.3 MiB block cache and a 5.3 MiB write-buffer
/// manager, so 2.7 MiB memtables. Smaller budgets mean memtables of a megabyte or less (state
/// flushes into many tiny L0 files) and a cache with little room beside its pinned entries (the
/// write-buffer manager's 256 KiB reservations, L0 index and filter blocks). The integration tests
/// run at this minimum and at 32 MiB.
pub const MIN_BUDGET_BYTES: u64 = 16 * 1024 * 1024;

/// The smallest write-buffer-manager capacity Cairn accepts: 1 MiB.
///
/// RocksDB never makes a memtable smaller than 64 KiB and every column family keeps one active
/// memtable, so a write-buffer manager below about 1 MiB asks for a flush on nearly every write.
/// Flink has no such rule; at its default ratio it only binds for budgets below 16 MiB, which are
/// rejected anyway.
pub const MIN_WRITE_BUFFER_MANAGER_BYTES: u64 = 1024 * 1024;

pub use cairn_base::ConfigError;

/// How much memory RocksDB may use per slot, and how it is split (the `[memory]` table).
///
/// With a budget (the default), every RocksDB instance of a slot shares one LRU block cache and one
/// write-buffer manager charged to that cache, so block cache + memtables + index/filter blocks stay
/// within the budget (see [`crate::MemoryPlan`] for the split). This is Flink's
/// `state.backend.rocksdb.memory.*` model, except that memtable and arena sizes are derived from
/// the budget instead of warned about.
///
/// ```toml
/// [memory]
/// managed-size = "256MiB"
/// write-buffer-ratio = 0.5
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Whether the slot's RocksDB memory is bounded by `managed-size`. Default: `true`.
    ///
    /// `false` (and no `fixed-per-slot`) gives every column family its own RocksDB defaults: no
    /// shared cache, no write-buffer manager, no bound. Only useful for comparisons.
    ///
    /// Flink: `state.backend.rocksdb.memory.managed`.
    pub managed: bool,

    /// The memory budget of one slot when `managed` is on. Default: `256MiB`, at least 16 MiB.
    ///
    /// Larger = more block cache (fewer disk reads) and larger memtables (fewer flushes); the
    /// budget is soft by the size of iterator pins and allocator overhead, so keep about 25 %
    /// headroom below the container limit.
    ///
    /// Flink: the slot's managed memory (`taskmanager.memory.managed.size` / slot count).
    pub managed_size: ByteSize,

    /// A fixed budget per slot that overrides `managed-size` and applies even with
    /// `managed = false`. Default: unset, at least 16 MiB when set.
    ///
    /// Flink: `state.backend.rocksdb.memory.fixed-per-slot`.
    pub fixed_per_slot: Option<ByteSize>,

    /// Fraction of the budget given to memtables. Default: `0.5`, allowed `(0, 1)`.
    ///
    /// More write buffer = fewer, larger flushes and less write amplification, but less block
    /// cache for reads. The write-buffer manager gets `2r/3` of the budget and the cache
    /// `(3 - r)/3` (Flink's split). Together with `high-priority-pool-ratio` it must satisfy
    /// `2r/(3 - r) + high-priority-pool-ratio < 1`, and the write-buffer manager must get at least
    /// 1 MiB.
    ///
    /// Flink: `state.backend.rocksdb.memory.write-buffer-ratio`.
    pub write_buffer_ratio: f64,

    /// Fraction of the block cache reserved for index and filter blocks. Default: `0.1`, allowed
    /// `(0, 1)`.
    ///
    /// **Not applied with RocksDB 11.12 / rust-rocksdb 0.54**: neither exposes the LRU cache's
    /// `high_pri_pool_ratio`, so the cache runs with RocksDB's fixed 0.5. The value still takes part
    /// in validation (so a configuration valid here is valid in Flink), Cairn logs a warning when it
    /// differs from 0.5, and [`crate::MemoryPlan::high_priority_pool_ratio_honoured`] records the
    /// mismatch in the run summary.
    ///
    /// Flink: `state.backend.rocksdb.memory.high-prio-pool-ratio`.
    pub high_priority_pool_ratio: f64,

    /// Partition index and filter blocks, caching only their small top level. Default: `false`.
    ///
    /// Turn on when index/filter blocks of a large state crowd data blocks out of the cache: each
    /// lookup then reads one more (cached) block, but only the partitions in use occupy memory.
    /// Also installs a 10 bits/key full bloom filter, as Flink does.
    ///
    /// Flink: `state.backend.rocksdb.memory.partitioned-index-filters`.
    pub partitioned_index_filters: bool,

    /// Make the block cache refuse inserts beyond its capacity. Default: `false`.
    ///
    /// `true` turns the cache's capacity into a hard limit: an insert that does not fit beside
    /// the pinned entries fails with `MemoryLimit`. RocksDB enforces it per cache shard (as small
    /// as 512 KiB; rust-rocksdb cannot choose the shard count of a strict cache), and index and
    /// filter blocks and the write-buffer manager's 256 KiB reservations are pinned, so inserts
    /// fail long before the whole cache is full. The failure is not confined to reads: a flush or
    /// compaction that cannot cache a block fails, RocksDB sets a background error and stops the
    /// DB, and writers stalled by the write-buffer manager then wait forever. Cairn's
    /// `memory_bound` test (32 MiB budget, 10x the budget written) stops the DB this way in most
    /// runs with `true`, while with `false` RocksDB peaks at about 0.85x the budget without a
    /// failed operation; so Cairn keeps Flink's `false` (FLINK-15532) and `true` is for
    /// experiments only.
    ///
    /// Flink: none (always off).
    pub strict_capacity_limit: bool,

    /// Fraction of the budget given to the RocksDB backend's write-back state cache (serialized
    /// entries of hot keys in front of RocksDB, see `cairn_engine::backend::rocks::cache`).
    /// Default: [`DEFAULT_STATE_CACHE_RATIO`], allowed `[0, 0.9]`; `0` turns the cache off.
    ///
    /// The cache gets `c * M`; block cache and write-buffer manager are split from the rest,
    /// `(1 - c) * M`, with Flink's formulas, so cache + block cache + memtables stay within `M`.
    /// More cache = more reads and writes served from memory (and updates of one key coalesced
    /// into one RocksDB write per flush), but a smaller block cache for the keys that miss, and
    /// smaller memtables. Without a budget (`managed = false` and no `fixed-per-slot`) there is
    /// nothing to take a share of and the cache is off.
    ///
    /// Flink: none (Flink's RocksDB backend has no object cache). Kafka Streams:
    /// `statestore.cache.max.bytes`.
    pub state_cache_ratio: f64,

    /// Fraction of the budget given to the write-back buffer of RocksDB timers (registrations
    /// kept in memory until they fire, see `cairn_timers::RocksDbTimers`). Default:
    /// [`DEFAULT_TIMER_BUFFER_RATIO`], allowed `[0, 0.9]`, and together with
    /// `state-cache-ratio` at most 0.9; `0` writes every registration to RocksDB (Flink's
    /// behaviour).
    ///
    /// Taken from RocksDB's share when the slot's RocksDB timers open (at the first timer
    /// operation, or at restore): block cache and write-buffer manager then shrink to Flink's
    /// split of `(1 - c - t) * M`. Until then, and for good in a slot without RocksDB timers,
    /// RocksDB keeps `(1 - c) * M`, so a job without timers loses nothing. A buffer that
    /// overflows writes its latest timers out, so a too small one costs about what no buffer
    /// costs. Each checkpoint
    /// uploads the buffered timers as one private file (a full copy, not incremental): at
    /// most about the buffer's size per slot, ~2 MB in the default word count.
    ///
    /// Flink: none (RocksDB timers write every registration).
    pub timer_buffer_ratio: f64,
}

/// Default `memory.state-cache-ratio`: 0.4, measured with `cairn bench cache` (benches/RESULTS.md):
/// at the default 256 MiB budget the cache gets 102 MiB, about 1.5M entries of the counter job
/// (72 bytes each), so the 1M-key counter job runs from memory, while RocksDB keeps ~154 MiB for
/// block cache and memtables.
pub const DEFAULT_STATE_CACHE_RATIO: f64 = 0.4;

/// Default `memory.timer-buffer-ratio`: 0.2, measured with `benches/timers.rs` (1M window-end
/// timers registered, then fired, benches/RESULTS.md): at the default 256 MiB budget the buffer
/// gets 51 MiB, about 1.2M window timers (42 bytes each), and RocksDB timers run at 0.80-0.98
/// of heap timers, against 0.39-0.40 at 0.1 and 0.24-0.27 without a buffer.
pub const DEFAULT_TIMER_BUFFER_RATIO: f64 = 0.2;

/// Largest `memory.state-cache-ratio` (and `memory.timer-buffer-ratio`, and their sum): RocksDB
/// keeps at least a tenth of the budget.
pub const MAX_STATE_CACHE_RATIO: f64 = 0.9;

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            managed: true,
            managed_size: ByteSize::mib(256),
            fixed_per_slot: None,
            write_buffer_ratio: 0.5,
            high_priority_pool_ratio: 0.1,
            partitioned_index_filters: false,
            strict_capacity_limit: false,
            state_cache_ratio: DEFAULT_STATE_CACHE_RATIO,
            timer_buffer_ratio: DEFAULT_TIMER_BUFFER_RATIO,
        }
    }
}

/// The configuration key of each setting, for error messages.
pub(crate) mod field {
    pub const MANAGED_SIZE: &str = "memory.managed-size";
    pub const FIXED_PER_SLOT: &str = "memory.fixed-per-slot";
    pub const WRITE_BUFFER_RATIO: &str = "memory.write-buffer-ratio";
    pub const HIGH_PRIORITY_POOL_RATIO: &str = "memory.high-priority-pool-ratio";
    pub const STATE_CACHE_RATIO: &str = "memory.state-cache-ratio";
    pub const TIMER_BUFFER_RATIO: &str = "memory.timer-buffer-ratio";
}

impl MemoryConfig {
    /// The slot's memory budget in bytes, or `None` when RocksDB memory is not bounded.
    ///
    /// `fixed-per-slot` wins over `managed-size` (and applies even when `managed = false`), as in
    /// Flink.
    pub fn budget_bytes(&self) -> Option<u64> {
        self.budget().map(|(_, bytes)| bytes)
    }

    /// Bytes of the budget given to the state cache (`0` when off or unbounded).
    pub fn state_cache_bytes(&self) -> u64 {
        self.budget_bytes()
            .map_or(0, |b| (b as f64 * self.state_cache_ratio) as u64)
    }

    /// Bytes of the budget given to the write-back buffer of RocksDB timers (`0` when off or
    /// unbounded).
    pub fn timer_buffer_bytes(&self) -> u64 {
        self.budget_bytes()
            .map_or(0, |b| (b as f64 * self.timer_buffer_ratio) as u64)
    }

    /// Bytes of the budget left to RocksDB (block cache + write-buffer manager), `None` when
    /// unbounded; a slot whose RocksDB timers open gives `timer_buffer_bytes` of it to their
    /// buffer.
    pub fn rocksdb_budget_bytes(&self) -> Option<u64> {
        self.budget_bytes().map(|b| b - self.state_cache_bytes())
    }

    /// The budget together with the key of the setting it came from.
    fn budget(&self) -> Option<(&'static str, u64)> {
        match self.fixed_per_slot {
            Some(size) => Some((field::FIXED_PER_SLOT, size.as_u64())),
            None if self.managed => Some((field::MANAGED_SIZE, self.managed_size.as_u64())),
            None => None,
        }
    }

    /// Checks every rule; the error names the setting to change.
    ///
    /// Rules: both ratios in `(0, 1)`; `state-cache-ratio` in `[0, 0.9]`; `2r/(3 - r) + high-priority-pool-ratio < 1`; the budget in
    /// effect at least [`MIN_BUDGET_BYTES`]; the write-buffer manager at least
    /// [`MIN_WRITE_BUFFER_MANAGER_BYTES`] of what the state cache leaves. The ratios are checked even for an unbounded slot, so a
    /// configuration does not turn invalid when a budget is added later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Ratios are fractions of a positive whole; 0 or 1 would starve the cache or the memtables.
        // Written as `!(0 < x < 1)` so that NaN is rejected too.
        for (name, value) in [
            (field::WRITE_BUFFER_RATIO, self.write_buffer_ratio),
            (
                field::HIGH_PRIORITY_POOL_RATIO,
                self.high_priority_pool_ratio,
            ),
        ] {
            if !(value > 0.0 && value < 1.0) {
                return Err(ConfigError::out_of_range(name, value, "(0, 1)"));
            }
        }

        // Flink's rule (RocksDBMemoryConfiguration.validate). The write-buffer manager's memtable
        // memory is charged as dummy entries *inside* the block cache, so at its capacity it takes
        // wbm / cache = (2rM/3) / ((3 - r)M/3) = 2r/(3 - r) of the cache (and it can reach 1.5x that
        // capacity before writes stall). The high-priority pool for index and filter blocks is a
        // share of the same cache and must fit beside the memtables, or the two evict each other's
        // space and reads thrash.
        let r = self.write_buffer_ratio;
        let memtable_share = 2.0 * r / (3.0 - r);
        if memtable_share + self.high_priority_pool_ratio >= 1.0 {
            return Err(ConfigError::invalid(
                field::WRITE_BUFFER_RATIO,
                format!(
                    "2 * {r} / (3 - {r}) + {hp} = {sum:.4} must be below 1: memtables can take \
                     {share:.1} % of the block cache, leaving no room for the high-priority pool \
                     ({hp_field} = {hp}); lower one of the two",
                    hp = self.high_priority_pool_ratio,
                    sum = memtable_share + self.high_priority_pool_ratio,
                    share = memtable_share * 100.0,
                    hp_field = field::HIGH_PRIORITY_POOL_RATIO,
                ),
            ));
        }

        // A cache of (nearly) the whole budget would starve RocksDB's block cache and memtables;
        // NaN is rejected by the negated comparison.
        if !(self.state_cache_ratio >= 0.0 && self.state_cache_ratio <= MAX_STATE_CACHE_RATIO) {
            return Err(ConfigError::out_of_range(
                field::STATE_CACHE_RATIO,
                self.state_cache_ratio,
                format!("[0, {MAX_STATE_CACHE_RATIO}]"),
            ));
        }
        if !(self.timer_buffer_ratio >= 0.0
            && self.timer_buffer_ratio + self.state_cache_ratio <= MAX_STATE_CACHE_RATIO)
        {
            return Err(ConfigError::out_of_range(
                field::TIMER_BUFFER_RATIO,
                self.timer_buffer_ratio,
                format!(
                    "[0, {:.2}] (at most {MAX_STATE_CACHE_RATIO} together with \
                     {} = {})",
                    (MAX_STATE_CACHE_RATIO - self.state_cache_ratio).max(0.0),
                    field::STATE_CACHE_RATIO,
                    self.state_cache_ratio
                ),
            ));
        }

        let Some((budget_field, budget)) = self.budget() else {
            return Ok(());
        };
        // See MIN_BUDGET_BYTES: in smaller budgets pinned entries crowd out the cache shards.
        if budget < MIN_BUDGET_BYTES {
            return Err(ConfigError::out_of_range(
                budget_field,
                ByteSize(budget),
                format!(">= {}", ByteSize(MIN_BUDGET_BYTES)),
            ));
        }
        // See MIN_WRITE_BUFFER_MANAGER_BYTES: a tiny write-buffer manager flushes on every write.
        // The manager is split from RocksDB's share, what the state cache leaves.
        let rocksdb_budget = budget - self.state_cache_bytes() - self.timer_buffer_bytes();
        if crate::plan::write_buffer_manager_bytes(rocksdb_budget, r)
            < MIN_WRITE_BUFFER_MANAGER_BYTES
        {
            let min_ratio =
                3.0 * MIN_WRITE_BUFFER_MANAGER_BYTES as f64 / (2.0 * rocksdb_budget as f64);
            return Err(ConfigError::out_of_range(
                field::WRITE_BUFFER_RATIO,
                r,
                format!(
                    "[{min_ratio:.4}, 1) for a RocksDB budget of {} (the budget minus \
                     memory.state-cache-ratio and memory.timer-buffer-ratio; the write-buffer \
                     manager gets 2r/3 of it and needs at least {})",
                    ByteSize(rocksdb_budget),
                    ByteSize(MIN_WRITE_BUFFER_MANAGER_BYTES)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MemoryConfig, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Root {
            #[serde(default)]
            memory: MemoryConfig,
        }
        toml::from_str::<Root>(text).map(|root| root.memory)
    }

    fn field_of(config: &MemoryConfig) -> String {
        match config.validate() {
            Err(e) => e.field().unwrap_or("<none>").to_owned(),
            Ok(()) => "<valid>".to_owned(),
        }
    }

    #[test]
    fn defaults_are_flinks_and_valid() {
        let c = MemoryConfig::default();
        assert!(c.managed);
        assert_eq!(c.managed_size, ByteSize::mib(256));
        assert_eq!(c.fixed_per_slot, None);
        assert_eq!(c.write_buffer_ratio, 0.5);
        assert_eq!(c.high_priority_pool_ratio, 0.1);
        assert!(!c.partitioned_index_filters);
        assert!(!c.strict_capacity_limit);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.budget_bytes(), Some(256 * 1024 * 1024));
    }

    #[test]
    fn parses_readable_sizes_in_kebab_case() {
        let c = parse(
            r#"
            [memory]
            managed = true
            managed-size = "64MiB"
            fixed-per-slot = "1GiB"
            write-buffer-ratio = 0.4
            high-priority-pool-ratio = 0.2
            partitioned-index-filters = true
            strict-capacity-limit = true
            "#,
        )
        .expect("valid [memory] table");
        assert_eq!(c.managed_size, ByteSize::mib(64));
        assert_eq!(c.fixed_per_slot, Some(ByteSize::gib(1)));
        assert_eq!(c.write_buffer_ratio, 0.4);
        assert_eq!(c.high_priority_pool_ratio, 0.2);
        assert!(c.partitioned_index_filters);
        assert!(c.strict_capacity_limit);
        // fixed-per-slot overrides managed-size.
        assert_eq!(c.budget_bytes(), Some(1024 * 1024 * 1024));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn missing_keys_take_defaults_and_plain_integers_are_bytes() {
        assert_eq!(parse("").expect("empty"), MemoryConfig::default());
        let c = parse("[memory]\nmanaged-size = 33554432\n").expect("integer size");
        assert_eq!(c.managed_size, ByteSize::mib(32));
        assert_eq!(c.write_buffer_ratio, 0.5);
    }

    #[test]
    fn unknown_and_misspelled_keys_are_rejected() {
        let err = parse("[memory]\nwrite_buffer_ratio = 0.5\n").expect_err("snake_case key");
        assert!(err.to_string().contains("write_buffer_ratio"), "{err}");
        let err = parse("[memory]\ncache-size = \"1GiB\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("cache-size"), "{err}");
        let err = parse("[memory]\nmanaged-size = \"lots\"\n").expect_err("bad size");
        assert!(err.to_string().contains("managed-size"), "{err}");
    }

    #[test]
    fn ratios_must_be_in_open_unit_interval() {
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let c = MemoryConfig {
                write_buffer_ratio: bad,
                ..MemoryConfig::default()
            };
            assert_eq!(field_of(&c), "memory.write-buffer-ratio", "r = {bad}");
            let c = MemoryConfig {
                high_priority_pool_ratio: bad,
                ..MemoryConfig::default()
            };
            assert_eq!(
                field_of(&c),
                "memory.high-priority-pool-ratio",
                "hp = {bad}"
            );
        }
        let c = MemoryConfig {
            write_buffer_ratio: 1.5,
            ..MemoryConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("out of range").to_string(),
            "memory.write-buffer-ratio = 1.5 is out of range: allowed (0, 1)"
        );
    }

    #[test]
    fn flink_rule_bounds_write_buffer_plus_high_priority_pool() {
        // 2*0.6/2.4 = 0.5; 0.5 + 0.55 >= 1 is rejected.
        let c = MemoryConfig {
            write_buffer_ratio: 0.6,
            high_priority_pool_ratio: 0.55,
            ..MemoryConfig::default()
        };
        let err = c.validate().expect_err("sum > 1");
        assert!(
            matches!(&err, ConfigError::Invalid { field, .. } if field == "memory.write-buffer-ratio"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("high-priority-pool-ratio"),
            "{err}"
        );
        // Just below the limit is accepted.
        let c = MemoryConfig {
            write_buffer_ratio: 0.6,
            high_priority_pool_ratio: 0.49,
            ..MemoryConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
        // A large ratio alone breaks it too: 2*0.9/2.1 = 0.857 + 0.2.
        let c = MemoryConfig {
            write_buffer_ratio: 0.9,
            high_priority_pool_ratio: 0.2,
            ..MemoryConfig::default()
        };
        assert_eq!(field_of(&c), "memory.write-buffer-ratio");
    }

    #[test]
    fn budget_has_a_minimum_named_after_its_source() {
        let c = MemoryConfig {
            managed_size: ByteSize::mib(15),
            ..MemoryConfig::default()
        };
        let err = c.validate().expect_err("15 MiB");
        assert!(
            matches!(&err, ConfigError::OutOfRange { field, .. } if field == "memory.managed-size"),
            "{err:?}"
        );
        let c = MemoryConfig {
            managed_size: ByteSize::mib(16),
            ..MemoryConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));

        let c = MemoryConfig {
            fixed_per_slot: Some(ByteSize::mib(8)),
            ..MemoryConfig::default()
        };
        assert_eq!(field_of(&c), "memory.fixed-per-slot");
        // fixed-per-slot applies with managed = false too.
        let c = MemoryConfig {
            managed: false,
            fixed_per_slot: Some(ByteSize::mib(8)),
            ..MemoryConfig::default()
        };
        assert_eq!(field_of(&c), "memory.fixed-per-slot");
        // A valid fixed-per-slot hides a too-small managed-size, which is not in effect.
        let c = MemoryConfig {
            managed_size: ByteSize::mib(1),
            fixed_per_slot: Some(ByteSize::mib(64)),
            ..MemoryConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unmanaged_has_no_budget_but_ratios_are_still_checked() {
        let c = MemoryConfig {
            managed: false,
            managed_size: ByteSize::mib(1),
            ..MemoryConfig::default()
        };
        assert_eq!(c.budget_bytes(), None);
        assert_eq!(c.validate(), Ok(()));
        let c = MemoryConfig {
            managed: false,
            write_buffer_ratio: 0.0,
            ..MemoryConfig::default()
        };
        assert_eq!(field_of(&c), "memory.write-buffer-ratio");
    }

    #[test]
    fn write_buffer_manager_has_a_minimum() {
        // 16 MiB * 2 * 0.09 / 3 = 0.96 MiB < 1 MiB.
        let c = MemoryConfig {
            managed_size: ByteSize::mib(16),
            write_buffer_ratio: 0.09,
            ..MemoryConfig::default()
        };
        let err = c.validate().expect_err("tiny write-buffer manager");
        assert!(
            matches!(&err, ConfigError::OutOfRange { field, .. } if field == "memory.write-buffer-ratio"),
            "{err:?}"
        );
        // The same ratio is fine with a bigger budget.
        let c = MemoryConfig {
            managed_size: ByteSize::mib(64),
            write_buffer_ratio: 0.09,
            ..MemoryConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn state_cache_ratio_is_checked_and_shrinks_rocksdb_share() {
        let c = parse("[memory]\nmanaged-size = \"100MiB\"\nstate-cache-ratio = 0.25\n")
            .expect("valid");
        assert_eq!(c.state_cache_ratio, 0.25);
        assert_eq!(c.state_cache_bytes(), 25 * 1024 * 1024);
        assert_eq!(c.timer_buffer_bytes(), 20 * 1024 * 1024);
        assert_eq!(c.rocksdb_budget_bytes(), Some(75 * 1024 * 1024));
        for bad in [-0.1, 0.95, 1.0, f64::NAN] {
            let c = MemoryConfig {
                state_cache_ratio: bad,
                ..MemoryConfig::default()
            };
            assert_eq!(field_of(&c), "memory.state-cache-ratio", "c = {bad}");
        }
        let off = MemoryConfig {
            state_cache_ratio: 0.0,
            ..MemoryConfig::default()
        };
        assert_eq!(off.validate(), Ok(()));
        assert_eq!(off.state_cache_bytes(), 0);
        // Unbounded: no share to take.
        let unmanaged = MemoryConfig {
            managed: false,
            ..MemoryConfig::default()
        };
        assert_eq!(unmanaged.state_cache_bytes(), 0);
        // The write-buffer manager's minimum applies to what the cache leaves: 16 MiB at a 0.9
        // cache leaves 1.6 MiB, whose manager (2 * 0.5 / 3 of it) is below 1 MiB.
        let c = MemoryConfig {
            managed_size: ByteSize::mib(16),
            state_cache_ratio: 0.9,
            timer_buffer_ratio: 0.0,
            ..MemoryConfig::default()
        };
        assert_eq!(field_of(&c), "memory.write-buffer-ratio");
    }

    #[test]
    fn timer_buffer_ratio_is_checked_with_the_state_cache() {
        let c = parse("[memory]\nmanaged-size = \"100MiB\"\ntimer-buffer-ratio = 0.5\n")
            .expect("valid");
        assert_eq!(c.timer_buffer_bytes(), 50 * 1024 * 1024);
        assert_eq!(c.rocksdb_budget_bytes(), Some(60 * 1024 * 1024));
        // 0.4 (the default cache) + 0.6 leaves RocksDB nothing.
        for bad in [-0.1, 0.6, f64::NAN] {
            let c = MemoryConfig {
                timer_buffer_ratio: bad,
                ..MemoryConfig::default()
            };
            assert_eq!(field_of(&c), "memory.timer-buffer-ratio", "t = {bad}");
        }
        let off = MemoryConfig {
            timer_buffer_ratio: 0.0,
            ..MemoryConfig::default()
        };
        assert_eq!(off.validate(), Ok(()));
        assert_eq!(off.timer_buffer_bytes(), 0);
        let unmanaged = MemoryConfig {
            managed: false,
            ..MemoryConfig::default()
        };
        assert_eq!(unmanaged.timer_buffer_bytes(), 0);
    }
}
