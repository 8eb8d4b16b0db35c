//! RocksDB options of a slot: predefined profile, then configured knobs, then the user hook, then
//! the managed-memory settings, which always stay in force (Flink's precedence, except that
//! Flink lets a factory replace the shared cache).

use std::sync::Arc;

use cairn_memory::SlotMemory;
use rocksdb::{
    BlockBasedOptions, DBCompactionStyle, DBCompressionType, LogLevel, Options,
    UniversalCompactOptions,
};

use crate::config::{
    CompactionStyle, Compression, DEFAULT_UNIVERSAL_MAX_SIZE_AMPLIFICATION_PERCENT,
    PredefinedOptions, RocksDbConfig,
};

/// User hook run after the profile and the configured knobs, so it wins over both (Flink's
/// `RocksDBOptionsFactory`). Under managed memory the shared block cache and write-buffer
/// manager are applied *after* the hook: a cache or write-buffer manager set here is replaced,
/// and the slot checks every column family's cache capacity after creating it.
///
/// ```
/// use cairn_engine::backend::rocks::RocksDbOptionsHook;
/// struct BiggerBlocks;
/// impl RocksDbOptionsHook for BiggerBlocks {
///     fn cf_options(&self, _state: &str, _cf: &mut rocksdb::Options, table: &mut rocksdb::BlockBasedOptions) {
///         table.set_block_size(32 * 1024);
///     }
/// }
/// ```
pub trait RocksDbOptionsHook: Send + Sync {
    /// Adjusts the DB-wide options.
    fn db_options(&self, _db: &mut Options) {}
    /// Adjusts the options of the column family of `state` (`operator/name`, or `default`).
    fn cf_options(&self, _state: &str, _cf: &mut Options, _table: &mut BlockBasedOptions) {}
}

/// The number of LSM levels `compression-per-level` is expanded to (RocksDB's default).
const NUM_LEVELS: usize = 7;

/// Write slowdown and stop triggers for an L0 compaction trigger `n`: RocksDB's 20 and 36 at its
/// default `n = 4`, and always 16 and 32 files above `n`, so raising the compaction trigger never
/// makes writes stall before compaction had a chance to run.
/// Share of the write buffer given to the memtable's bloom filter (RocksDB's
/// `memtable_prefix_bloom_size_ratio`; 2 % of a 64 MiB memtable = 1.3 MiB, ~10 bits per entry of
/// small keys).
pub(crate) const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

pub(crate) fn level0_write_triggers(n: i32) -> (i32, i32) {
    (n.saturating_add(16).max(20), n.saturating_add(32).max(36))
}

/// Builds DB and column-family options for one slot.
pub(crate) struct OptionsBuilder<'a> {
    pub config: &'a RocksDbConfig,
    pub memory: &'a SlotMemory,
    pub hook: Option<&'a Arc<dyn RocksDbOptionsHook>>,
}

impl OptionsBuilder<'_> {
    /// DB-wide options.
    pub fn db_options(&self) -> Options {
        let mut db = Options::default();
        db.create_if_missing(true);
        db.create_missing_column_families(true);
        // Flink's always-set options: durability comes from checkpoints, not fsync or the WAL.
        db.set_use_fsync(false);
        db.set_stats_dump_period_sec(0);
        db.set_avoid_flush_during_shutdown(true);
        db.set_log_level(LogLevel::Header);
        db.set_keep_log_file_num(2);
        db.set_max_log_file_size(8 << 20);
        if self.config.metrics.statistics {
            db.enable_statistics();
        }
        match self.config.predefined_options {
            PredefinedOptions::Default => {}
            PredefinedOptions::SpinningDiskOptimized
            | PredefinedOptions::SpinningDiskOptimizedHighMem
            | PredefinedOptions::FlashSsdOptimized => {
                db.increase_parallelism(4);
                db.set_max_open_files(-1);
            }
        }
        if let Some(n) = self.config.max_open_files {
            db.set_max_open_files(n);
        }
        if let Some(n) = self.config.background_threads {
            db.set_max_background_jobs(n);
        }
        if let Some(hook) = self.hook {
            hook.db_options(&mut db);
        }
        self.memory.apply_to_db_options(&mut db);
        db
    }

    /// Options of the column family for `state`, with the list merge operator (every column
    /// family has it: opening without it would silently drop merge operands).
    pub fn cf_options(&self, state: &str) -> Options {
        let mut cf = Options::default();
        let mut table = BlockBasedOptions::default();
        let profile = self.config.predefined_options;
        match profile {
            PredefinedOptions::Default | PredefinedOptions::FlashSsdOptimized => {}
            PredefinedOptions::SpinningDiskOptimized => {
                cf.set_compaction_style(DBCompactionStyle::Level);
                cf.set_level_compaction_dynamic_level_bytes(true);
            }
            PredefinedOptions::SpinningDiskOptimizedHighMem => {
                cf.set_compaction_style(DBCompactionStyle::Level);
                cf.set_level_compaction_dynamic_level_bytes(true);
                cf.set_target_file_size_base(256 << 20);
                cf.set_max_bytes_for_level_base(1 << 30);
                cf.set_write_buffer_size(64 << 20);
                cf.set_min_write_buffer_number_to_merge(3);
                cf.set_max_write_buffer_number(4);
                table.set_block_size(128 << 10);
                if self.memory.is_managed() {
                    tracing::warn!(
                        state,
                        "profile SPINNING_DISK_OPTIMIZED_HIGH_MEM sets a 256 MiB block cache; \
                         managed memory keeps the slot's shared cache instead"
                    );
                } else {
                    table.set_block_cache(&rocksdb::Cache::new_lru_cache(256 << 20));
                }
            }
        }
        let c = self.config;
        if let Some(b) = c.block_size {
            table.set_block_size(b.as_u64() as usize);
        }
        if let Some(bits) = c.effective_bloom_filter_bits_per_key() {
            // Full (not block-based) filters, Flink's default mode.
            table.set_bloom_filter(bits, false);
            // A whole-key bloom filter on the memtable too: most point reads of new keys
            // (a new (key, namespace), e.g. a word's first record in a window) are misses,
            // which otherwise walk the memtable's skip list (~17 % of the word count's time).
            // RocksDB's `memtable_whole_key_filtering`; Flink does not set it.
            cf.set_memtable_whole_key_filtering(true);
            cf.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        }
        // Configured, else the profile's (level for the spinning-disk profiles), else Cairn's
        // universal default.
        let style = c.effective_compaction_style();
        cf.set_compaction_style(match style {
            CompactionStyle::Level => DBCompactionStyle::Level,
            CompactionStyle::Universal => DBCompactionStyle::Universal,
            CompactionStyle::Fifo => DBCompactionStyle::Fifo,
        });
        if let Some(n) = c.write_buffer_count {
            cf.set_max_write_buffer_number(n);
        }
        if let Some(s) = c.target_file_size_base {
            cf.set_target_file_size_base(s.as_u64());
        }
        if let Some(s) = c.max_size_level_base {
            cf.set_max_bytes_for_level_base(s.as_u64());
        }
        if let Some(d) = c.use_dynamic_level_size {
            cf.set_level_compaction_dynamic_level_bytes(d);
        }
        if let Some(n) = c.effective_level0_file_num_compaction_trigger() {
            let (slowdown, stop) = level0_write_triggers(n);
            cf.set_level_zero_file_num_compaction_trigger(n);
            cf.set_level_zero_slowdown_writes_trigger(slowdown);
            cf.set_level_zero_stop_writes_trigger(stop);
        }
        if style == CompactionStyle::Universal {
            // RocksDB's defaults for every knob left unset, except the size amplification.
            let mut u = UniversalCompactOptions::default();
            if let Some(r) = c.universal_size_ratio {
                u.set_size_ratio(r);
            }
            if let Some(w) = c.universal_min_merge_width {
                u.set_min_merge_width(w);
            }
            if let Some(w) = c.universal_max_merge_width {
                u.set_max_merge_width(w);
            }
            u.set_max_size_amplification_percent(
                c.universal_max_size_amplification_percent
                    .unwrap_or(DEFAULT_UNIVERSAL_MAX_SIZE_AMPLIFICATION_PERCENT),
            );
            cf.set_universal_compaction_options(&u);
        }
        let per_level: Vec<DBCompressionType> = (0..NUM_LEVELS)
            .map(|i| {
                let last = c.compression_per_level.len().saturating_sub(1);
                match c.compression_per_level.get(i.min(last)) {
                    Some(Compression::None) | None => DBCompressionType::None,
                    Some(Compression::Lz4) => DBCompressionType::Lz4,
                    Some(Compression::Zstd) => DBCompressionType::Zstd,
                }
            })
            .collect();
        cf.set_compression_per_level(&per_level);
        if let Some(hook) = self.hook {
            hook.cf_options(state, &mut cf, &mut table);
        }
        // After the hook: a column family without this operator loses list appends on reopen.
        cf.set_merge_operator_associative(super::LIST_MERGE_OPERATOR, super::list_append_merge);
        self.memory.apply_to_cf_options(&mut cf, &mut table);
        cf.set_block_based_table_factory(&table);
        cf
    }
}

#[cfg(test)]
mod tests {
    use cairn_memory::SlotMemory;

    use super::{OptionsBuilder, level0_write_triggers};
    use crate::config::{CompactionStyle, PredefinedOptions, RocksDbConfig};

    /// Opens a DB with `config` and returns the OPTIONS file RocksDB persisted for it.
    fn persisted_options(config: &RocksDbConfig) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = SlotMemory::unmanaged();
        let b = OptionsBuilder {
            config,
            memory: &memory,
            hook: None,
        };
        let db = rocksdb::DB::open_cf_with_opts(
            &b.db_options(),
            dir.path(),
            [("default", b.cf_options("default"))],
        )
        .expect("open");
        drop(db);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("OPTIONS-"))
            .collect();
        names.sort();
        let last = names.last().expect("an OPTIONS file");
        std::fs::read_to_string(dir.path().join(last)).expect("read OPTIONS")
    }

    #[test]
    fn compaction_knobs_reach_rocksdb() {
        let c = RocksDbConfig {
            compaction_style: Some(CompactionStyle::Universal),
            level0_file_num_compaction_trigger: Some(12),
            universal_size_ratio: Some(10),
            universal_min_merge_width: Some(3),
            universal_max_merge_width: Some(6),
            universal_max_size_amplification_percent: Some(300),
            bloom_filter_bits_per_key: Some(12.0),
            ..RocksDbConfig::default()
        };
        let o = persisted_options(&c);
        for want in [
            "compaction_style=kCompactionStyleUniversal",
            "level0_file_num_compaction_trigger=12",
            "level0_slowdown_writes_trigger=28",
            "level0_stop_writes_trigger=44",
            "size_ratio=10;",
            "min_merge_width=3;",
            "max_merge_width=6;",
            "max_size_amplification_percent=300;",
            "filter_policy=bloomfilter\n",
        ] {
            assert!(o.contains(want), "missing {want}");
        }
        // Cairn's defaults: universal, 8 sorted runs, 400 %, a 10-bit bloom filter.
        let o = persisted_options(&RocksDbConfig::default());
        for want in [
            "compaction_style=kCompactionStyleUniversal",
            "level0_file_num_compaction_trigger=8",
            "level0_slowdown_writes_trigger=24",
            "level0_stop_writes_trigger=40",
            "size_ratio=1;",
            "min_merge_width=2;",
            "max_size_amplification_percent=400;",
            "filter_policy=bloomfilter\n",
        ] {
            assert!(o.contains(want), "missing {want}");
        }
        // Level compaction (configured, or from a spinning-disk profile) and no filter: RocksDB's
        // (and Flink's) settings.
        let level = RocksDbConfig {
            compaction_style: Some(CompactionStyle::Level),
            bloom_filter_bits_per_key: Some(0.0),
            ..RocksDbConfig::default()
        };
        let spinning = RocksDbConfig {
            predefined_options: PredefinedOptions::SpinningDiskOptimized,
            bloom_filter_bits_per_key: Some(0.0),
            ..RocksDbConfig::default()
        };
        for c in [level, spinning] {
            let o = persisted_options(&c);
            for want in [
                "compaction_style=kCompactionStyleLevel",
                "level0_file_num_compaction_trigger=4",
                "level0_slowdown_writes_trigger=20",
                "level0_stop_writes_trigger=36",
                "filter_policy=nullptr\n",
            ] {
                assert!(o.contains(want), "missing {want} for {c:?}");
            }
        }
    }

    #[test]
    fn level0_write_triggers_keep_rocksdb_defaults_and_stay_above_the_trigger() {
        assert_eq!(level0_write_triggers(4), (20, 36));
        assert_eq!(level0_write_triggers(1), (20, 36));
        assert_eq!(level0_write_triggers(16), (32, 48));
        for n in 1..=256 {
            let (slow, stop) = level0_write_triggers(n);
            assert!(n < slow && slow < stop, "n={n}");
        }
    }
}
