//! Cairn's configuration: one [`CairnConfig`] from a TOML file and/or the builder API, with
//! per-run overrides on top (like Flink's per-job settings over `flink-conf.yaml`).
//!
//! Every knob documents its default, its trade-off and its Flink equivalent. Unknown keys are
//! rejected (`deny_unknown_fields`) so a typo never silently falls back to a default.
//!
//! ```
//! use cairn_engine::config::{BackendKind, CairnConfig};
//! let cfg = CairnConfig::from_toml_str(r#"
//!     [state]
//!     backend = "rocksdb"
//!     max-value-size = "1MiB"
//!     [memory]
//!     managed-size = "128MiB"
//!     write-buffer-ratio = 0.4
//! "#).unwrap();
//! assert_eq!(cfg.state.backend, BackendKind::RocksDb);
//! cfg.validate().unwrap();
//! ```

use crate::backend::rocks::native_metrics::NativeMetricsConfig;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use cairn_memory::MemoryConfig;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::keygroup;

/// The whole configuration of a Cairn slot (or of all slots of a run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct CairnConfig {
    /// Keyed-state settings.
    pub state: StateConfig,
    /// Managed memory per slot (Flink: `state.backend.rocksdb.memory.*`).
    pub memory: MemoryConfig,
    /// RocksDB tuning (Flink: `state.backend.rocksdb.*`).
    pub rocksdb: RocksDbConfig,
    /// Checkpointing (Flink: `execution.checkpointing.*`).
    pub checkpoint: crate::checkpoint::CheckpointConfig,
    /// The RocksDB backend's write-back state cache (its size is `memory.state-cache-ratio`).
    pub state_cache: StateCacheConfig,
}

/// Default `state-cache.max-dirty-ratio` (see [`StateCacheConfig::max_dirty_ratio`]).
pub const DEFAULT_MAX_DIRTY_RATIO: f64 = 0.1;

/// The write-back state cache in front of RocksDB (`[state-cache]`); its capacity is
/// `memory.state-cache-ratio` of the slot budget, `0` turns it off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct StateCacheConfig {
    /// Fraction of the cache's capacity that may be dirty (written but not yet in RocksDB)
    /// before dirty entries are written out. Default: [`DEFAULT_MAX_DIRTY_RATIO`], allowed
    /// `(0, 1]`.
    ///
    /// Every dirty entry is written back before the checkpoint's native snapshot: most of them by
    /// the pre-flush when the slot sees the barrier ahead, the rest in the synchronous phase;
    /// both hold the slot's thread, so this bounds the pause a checkpoint costs. A higher bound
    /// coalesces more updates of a key into one RocksDB write, and state created and deleted
    /// within it (a window's count that fires soon) never reaches RocksDB at all.
    ///
    /// Default 0.1 (10 MiB of the default 256 MiB budget, ~145k counters), measured on this
    /// repository's 2-core machines (benches/RESULTS.md, 2026-12-04, alternating runs):
    /// - word count (the Flink comparison's 5M words, checkpoints every 2 s): 0.02 -> 197-230k
    ///   records/s (RocksDB timers) and 202-225k (heap timers), 0.1 -> 276-390k and 418-431k:
    ///   a window's counts (~63k per window) live and die in the cache (2.7M of 3.16M counts
    ///   never written); sync pause p50 42-47 ms -> 47-66 ms;
    /// - 1M-key counter job: 515-569k -> 584-716k records/s; sync pause p50 44-61 ms ->
    ///   68-93 ms. The pre-flush write-back (16-18 ms -> 62-93 ms p50 when written at once) now
    ///   goes in 512-entry chunks, one per record: 0.4-0.5 ms p50, < 1 ms max.
    ///
    /// Lower it for latency-sensitive jobs with many keys touched per interval, and scale it
    /// down for budgets much larger than the default (the pause grows with the dirty bytes:
    /// about 20k dirty entries per 10 ms here).
    ///
    /// Flink: none. Kafka Streams: none (a commit flushes everything; KIP-892's
    /// `statestore.uncommitted.max.bytes` is the closest); RisingWave: the 64 MiB dirty-groups
    /// limit of its hash aggregation.
    pub max_dirty_ratio: f64,
    /// The dirty bound in bytes; when set it replaces `max-dirty-ratio` (capped at the cache's
    /// capacity). The checkpoint pause grows with the dirty bytes, not with the cache: a bound
    /// in bytes keeps the pause where it is when a larger budget makes the cache larger.
    /// Default: unset (the ratio applies). At least 4 KiB.
    pub max_dirty_bytes: Option<ByteSize>,
}

impl Default for StateCacheConfig {
    fn default() -> Self {
        Self {
            max_dirty_ratio: DEFAULT_MAX_DIRTY_RATIO,
            max_dirty_bytes: None,
        }
    }
}

impl StateCacheConfig {
    /// Checks the cache settings.
    pub fn validate(&self) -> Result<()> {
        // 0 would write every entry on every put (a write-through cache with extra steps);
        // NaN fails the negated comparison.
        if !(self.max_dirty_ratio > 0.0 && self.max_dirty_ratio <= 1.0) {
            return Err(EngineError::config(
                "state-cache.max-dirty-ratio",
                self.max_dirty_ratio,
                "(0, 1]",
            ));
        }
        if let Some(b) = self.max_dirty_bytes
            && b.as_u64() < MIN_MAX_DIRTY_BYTES
        {
            return Err(EngineError::config(
                "state-cache.max-dirty-bytes",
                b,
                format!(">= {}", ByteSize::b(MIN_MAX_DIRTY_BYTES)),
            ));
        }
        Ok(())
    }

    /// The dirty bound, bytes, of a cache of `capacity` bytes: `max-dirty-bytes` if set
    /// (at most the capacity), else `max-dirty-ratio` of the capacity.
    ///
    /// ```
    /// use bytesize::ByteSize;
    /// use cairn_engine::config::StateCacheConfig;
    /// let mut c = StateCacheConfig::default();
    /// assert_eq!(c.dirty_bound(100 << 20), 10 << 20); // the default ratio, 0.1
    /// c.max_dirty_bytes = Some(ByteSize::mib(4));
    /// assert_eq!(c.dirty_bound(100 << 20), 4 << 20);
    /// assert_eq!(c.dirty_bound(1 << 20), 1 << 20); // capped at the capacity
    /// ```
    pub fn dirty_bound(&self, capacity: u64) -> u64 {
        match self.max_dirty_bytes {
            Some(b) => b.as_u64().min(capacity),
            None => (capacity as f64 * self.max_dirty_ratio) as u64,
        }
    }
}

/// Smallest `state-cache.max-dirty-bytes`: a few entries; below it every write would flush.
pub const MIN_MAX_DIRTY_BYTES: u64 = 4096;

/// Which state backend a slot uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// One RocksDB instance per slot: state larger than memory, incremental checkpoints.
    /// Flink: `EmbeddedRocksDBStateBackend`.
    #[default]
    #[serde(rename = "rocksdb")]
    RocksDb,
    /// In-memory tables: fastest, bounded by memory, full snapshots.
    /// Flink: `HashMapStateBackend`.
    Heap,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::RocksDb => "rocksdb",
            BackendKind::Heap => "heap",
        })
    }
}

/// Keyed-state settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct StateConfig {
    /// State backend. Default `rocksdb`. Flink: `state.backend.type`.
    pub backend: BackendKind,
    /// Number of key groups, i.e. the largest parallelism a checkpoint can be rescaled to.
    /// Default: derived from the parallelism like Flink (`round_up_pow2(1.5 p)` in
    /// `[128, 32768]`); explicit values must be in `[1, 32768]`. It can never change for a job
    /// once checkpoints exist. Flink: `pipeline.max-parallelism`.
    pub max_parallelism: Option<u32>,
    /// Largest value or list element accepted, checked before anything is written. Default 16 MiB:
    /// far below RocksDB's 4 GiB value limit and JNI's 2 GiB, so merged lists of many elements
    /// stay readable. Larger values get `ValueTooLarge`.
    pub max_value_size: ByteSize,
    /// Local working directory of the slots (`<dir>/slot-<i>`). Disposable: a slot wipes its own
    /// RocksDB directory on open and restores only from checkpoints. Default `./cairn-data/work`.
    /// Flink: `state.backend.rocksdb.localdir`.
    pub working_dir: PathBuf,
    /// Where the RocksDB backend keeps timers. Default `rocksdb`: timers are a column family per
    /// time domain, part of the incremental checkpoint, bounded by disk, one RocksDB write per
    /// registration and per firing (a small per-key-group cache of the earliest timers saves the
    /// reads). `heap`: timers in memory, faster, bounded by memory, snapshotted asynchronously
    /// into the checkpoint's private files. The heap backend always keeps timers on the heap.
    /// Flink: `state.backend.rocksdb.timer-service.factory` (ROCKSDB).
    pub timer_service: TimerServiceKind,
    /// RocksDB timers cached per key group and time domain. Default 128: one RocksDB scan refills
    /// 128 firings; more costs memory per key group (~40 bytes + key + namespace per timer).
    /// Flink: `state.backend.rocksdb.timer-service.cache-size` (128).
    pub timer_cache_size: u32,
}

/// Where timers live (`state.timer-service`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerServiceKind {
    /// In column families of the slot's RocksDB (RocksDB backend only).
    #[default]
    #[serde(rename = "rocksdb")]
    RocksDb,
    /// On the heap.
    Heap,
}

impl std::fmt::Display for TimerServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimerServiceKind::RocksDb => "rocksdb",
            TimerServiceKind::Heap => "heap",
        })
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::RocksDb,
            max_parallelism: None,
            max_value_size: ByteSize::mib(16),
            working_dir: PathBuf::from("cairn-data/work"),
            timer_service: TimerServiceKind::RocksDb,
            timer_cache_size: 128,
        }
    }
}

/// Flink's predefined RocksDB option profiles (`PredefinedOptions`), same tunings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PredefinedOptions {
    /// No fsync, no stats dumps, header-only info log.
    #[default]
    Default,
    /// Default + 4 background threads, unlimited open files, level compaction with dynamic level
    /// sizes.
    SpinningDiskOptimized,
    /// Spinning-disk + 256 MiB target files, 1 GiB level base, 64 MiB write buffers (4, merge 3),
    /// 128 KiB blocks and a 256 MiB block cache (ignored under managed memory, with a warning).
    SpinningDiskOptimizedHighMem,
    /// Default + 4 background threads and unlimited open files.
    FlashSsdOptimized,
}

/// Cairn's compaction style when neither `rocksdb.compaction-style` nor the predefined profile sets
/// one: universal, because incremental checkpoints upload every SST a compaction writes, so the
/// compaction with the least rewriting uploads the least (see [`RocksDbConfig::compaction_style`]).
pub const DEFAULT_COMPACTION_STYLE: CompactionStyle = CompactionStyle::Universal;
/// `rocksdb.level0-file-num-compaction-trigger` under universal compaction when unset.
pub const DEFAULT_UNIVERSAL_LEVEL0_TRIGGER: i32 = 8;
/// `rocksdb.universal-max-size-amplification-percent` when unset.
pub const DEFAULT_UNIVERSAL_MAX_SIZE_AMPLIFICATION_PERCENT: i32 = 400;
/// `rocksdb.bloom-filter-bits-per-key` when unset.
pub const DEFAULT_BLOOM_FILTER_BITS_PER_KEY: f64 = 10.0;

/// Compaction style (Flink: `state.backend.rocksdb.compaction.style`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompactionStyle {
    /// Leveled compaction: low space and read amplification (Flink's default).
    Level,
    /// Universal compaction: lower write amplification, up to 2x space.
    Universal,
    /// FIFO: drops oldest files; only for TTL-like state.
    Fifo,
}

/// Block compression (only the codecs Cairn builds RocksDB with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: better ratio, more CPU.
    Zstd,
}

/// RocksDB tuning. Each `None` leaves the profile's (then RocksDB's) value in place; precedence
/// is: configured value > predefined profile > RocksDB default, then the options hook (Flink's
/// order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct RocksDbConfig {
    /// Profile applied first. Default `DEFAULT`. Flink: `state.backend.rocksdb.predefined-options`.
    pub predefined_options: PredefinedOptions,
    /// Data block size. Larger blocks: fewer index entries, more read amplification for point
    /// reads. Flink: `state.backend.rocksdb.block.blocksize` (4 KiB).
    pub block_size: Option<ByteSize>,
    /// Compaction style. Default: `universal` ([`DEFAULT_COMPACTION_STYLE`]), except under the
    /// spinning-disk profiles, which set `level`; [`RocksDbConfig::effective_compaction_style`]
    /// tells which applies. Every SST a compaction writes is uploaded again by the next
    /// incremental checkpoint, so upload amplification is the LSM's write amplification:
    /// universal (size-tiered) compaction rewrites the least. Measured with 3 s checkpoints
    /// (universal + the defaults of `level0-file-num-compaction-trigger`,
    /// `universal-max-size-amplification-percent` and `bloom-filter-bits-per-key`, against
    /// `level` with RocksDB's trigger 4 and no filter): the 8M-key load uploads ~1.5x its final
    /// state instead of ~2.2-2.5x, the 2M-key mixed job ~1.7x instead of ~3.1x, the 1M-counter
    /// job ~5 % fewer bytes. The price: space amplification on state that is overwritten (up to
    /// `1 + universal-max-size-amplification-percent/100` times the live data on disk, in the
    /// full checkpoint and in a restore's download; ~1.8x the level peak on the counter job), a
    /// full compaction now and then that needs as much free disk as the state and uploads all of
    /// it in one checkpoint, and more sorted runs per point read (the bloom filter keeps that
    /// cheap). The level-only knobs (`target-file-size-base`, `max-size-level-base`,
    /// `use-dynamic-level-size`) do nothing under universal. Flink:
    /// `state.backend.rocksdb.compaction.style` (LEVEL).
    pub compaction_style: Option<CompactionStyle>,
    /// Max open files (-1 = unlimited, keeps table readers open). Flink:
    /// `state.backend.rocksdb.files.open` (-1).
    pub max_open_files: Option<i32>,
    /// Memtables per column family. More = fewer write stalls, more memory (inside the
    /// write-buffer manager's budget). Flink: `state.backend.rocksdb.writebuffer.count` (2).
    pub write_buffer_count: Option<i32>,
    /// Compression per level, the last entry repeats for deeper levels. Default `["lz4"]`
    /// (Flink uses SNAPPY, which Cairn does not build; LZ4 has a similar speed).
    /// Flink: `state.backend.rocksdb.compression.per.level`.
    pub compression_per_level: Vec<Compression>,
    /// Background flush + compaction threads. Flink: `state.backend.rocksdb.thread.num` (2).
    pub background_threads: Option<i32>,
    /// Target SST size at L1. Flink: `state.backend.rocksdb.compaction.level.target-file-size-base` (64 MiB).
    pub target_file_size_base: Option<ByteSize>,
    /// Size of L1. Flink: `state.backend.rocksdb.compaction.level.max-size-level-base` (256 MiB).
    pub max_size_level_base: Option<ByteSize>,
    /// Dynamic level sizes. Flink: `state.backend.rocksdb.compaction.level.use-dynamic-size` (false).
    pub use_dynamic_level_size: Option<bool>,
    /// Number of L0 files (under universal compaction: sorted runs) that triggers a compaction.
    /// Default: 8 under universal compaction ([`DEFAULT_UNIVERSAL_LEVEL0_TRIGGER`]), RocksDB's 4
    /// under level compaction (Flink's). Higher means fewer compactions, so fewer SSTs that an incremental
    /// checkpoint already uploaded are rewritten and uploaded again; the price is more L0 files
    /// (without `bloom-filter-bits-per-key` each point read probes every L0 file that may hold
    /// the key: -15 % records/s on a read-heavy state larger than the cache at 8), more disk and a larger full checkpoint between compactions, and bigger, rarer
    /// compactions. Cairn raises the write slowdown and stop triggers with it, to
    /// `max(20, n + 16)` and `max(36, n + 32)` (RocksDB's 20 and 36 at `n = 4`), so a higher
    /// trigger never stalls writes earlier. Flink: none (only a `RocksDBOptionsFactory` calling
    /// `setLevel0FileNumCompactionTrigger`; FRocksDB's default is 4).
    pub level0_file_num_compaction_trigger: Option<i32>,
    /// Universal compaction only: percentage by which a candidate set of sorted runs may be
    /// smaller than the next (older) run and still take it in. Default: RocksDB's 1. Higher
    /// merges more eagerly (less space, more rewriting of old, already-uploaded runs).
    /// Flink: none (`RocksDBOptionsFactory`: `CompactionOptionsUniversal.setSizeRatio`).
    pub universal_size_ratio: Option<i32>,
    /// Universal compaction only: fewest sorted runs merged by one size-ratio compaction.
    /// Default: RocksDB's 2. Higher: fewer, bigger merges. Flink: none (`setMinMergeWidth`).
    pub universal_min_merge_width: Option<i32>,
    /// Universal compaction only: most sorted runs merged by one size-ratio compaction.
    /// Default: unlimited. Lower keeps old runs out of merges (less re-upload) at the cost of more
    /// runs, i.e. more read amplification. Flink: none (`setMaxMergeWidth`).
    pub universal_max_merge_width: Option<i32>,
    /// Universal compaction only: when all runs but the oldest exceed this percentage of the
    /// oldest, everything is compacted into one run (a full rewrite, hence a full re-upload).
    /// Default: 400 ([`DEFAULT_UNIVERSAL_MAX_SIZE_AMPLIFICATION_PERCENT`]; RocksDB's is 200, which
    /// fully rewrote the growing 8M-key load once more per run: ~2.2x uploads instead of ~1.5x).
    /// Higher: rarer full rewrites, more space (the full checkpoint grows
    /// with it, up to `1 + p/100` times the live data). Flink: none
    /// (`setMaxSizeAmplificationPercent`).
    pub universal_max_size_amplification_percent: Option<i32>,
    /// Bits per key of a full bloom filter written into every new SST; `0` writes none. Default 10
    /// ([`DEFAULT_BLOOM_FILTER_BITS_PER_KEY`]; Flink has none by default). A filter lets a point read skip an SST that cannot hold the key, which is what makes
    /// many L0 files or sorted runs cheap to read (a higher `level0-file-num-compaction-trigger`,
    /// universal compaction). Costs about `bits / 8` bytes per entry in every SST (so in every
    /// upload: ~10 % more bytes for 8-byte counters at 10 bits, ~0.5 % for 200-byte values), CPU
    /// at flush and compaction, and block-cache space (under managed memory filters live in the
    /// shared cache; L0 filters are pinned). Measured: +14 % records/s on the 1M-counter job,
    /// +65 % on the mixed job (most of its reads look for keys that do not exist yet). Flink:
    /// `state.backend.rocksdb.use-bloom-filter` (false) + `state.backend.rocksdb.bloom-filter.bits-per-key` (10).
    pub bloom_filter_bits_per_key: Option<f64>,
    /// RocksDB's own metrics to export (native properties per state, statistics), all off by
    /// default as in Flink: see [`NativeMetricsConfig`].
    pub metrics: NativeMetricsConfig,
}

impl Default for RocksDbConfig {
    fn default() -> Self {
        Self {
            predefined_options: PredefinedOptions::Default,
            block_size: None,
            compaction_style: None,
            max_open_files: None,
            write_buffer_count: None,
            compression_per_level: vec![Compression::Lz4],
            background_threads: None,
            target_file_size_base: None,
            max_size_level_base: None,
            use_dynamic_level_size: None,
            level0_file_num_compaction_trigger: None,
            universal_size_ratio: None,
            universal_min_merge_width: None,
            universal_max_merge_width: None,
            universal_max_size_amplification_percent: None,
            bloom_filter_bits_per_key: None,
            metrics: NativeMetricsConfig::default(),
        }
    }
}

impl CairnConfig {
    /// Parses a TOML document; unknown keys and wrong types are errors naming the key.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| EngineError::ConfigFile {
            path: "<string>".into(),
            reason: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| EngineError::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks every rule; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        self.memory.validate()?;
        self.state.validate()?;
        self.rocksdb.validate()?;
        self.checkpoint.validate()?;
        self.state_cache.validate()?;
        Ok(())
    }

    /// The max parallelism for a run with `parallelism` slots: the configured value (which must
    /// be at least the parallelism) or Flink's default.
    pub fn max_parallelism_for(&self, parallelism: u32) -> Result<u32> {
        match self.state.max_parallelism {
            Some(m) => {
                keygroup::validate_max_parallelism(m)?;
                if parallelism > m {
                    return Err(EngineError::config(
                        "slots",
                        parallelism,
                        format!("[1, state.max-parallelism = {m}]"),
                    ));
                }
                Ok(m)
            }
            None => Ok(keygroup::default_max_parallelism(parallelism)),
        }
    }
}

/// Smallest allowed `state.max-value-size`: below this even small lists would be rejected.
pub const MIN_MAX_VALUE_SIZE: u64 = 1024;
/// Largest allowed `state.max-value-size`: RocksDB values are limited to 4 GiB - 1 and merged
/// lists must stay readable, so 1 GiB leaves room for many elements.
pub const MAX_MAX_VALUE_SIZE: u64 = 1 << 30;

impl StateConfig {
    /// Checks the state settings.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.max_parallelism {
            keygroup::validate_max_parallelism(m)?;
        }
        let v = self.max_value_size.as_u64();
        // Values beyond 1 GiB make RocksDB merges and reads of lists fail late (Flink's 2^31
        // JNI limit problem); below 1 KiB nothing useful fits.
        if !(MIN_MAX_VALUE_SIZE..=MAX_MAX_VALUE_SIZE).contains(&v) {
            return Err(EngineError::config(
                "state.max-value-size",
                self.max_value_size,
                "[1KiB, 1GiB]",
            ));
        }
        if self.working_dir.as_os_str().is_empty() {
            return Err(EngineError::config(
                "state.working-dir",
                "\"\"",
                "a non-empty path",
            ));
        }
        // An empty cache would scan RocksDB for every firing; beyond 1M a key group's cache is
        // the whole queue on the heap, which is what `timer-service = "heap"` is for.
        if !(1..=1 << 20).contains(&self.timer_cache_size) {
            return Err(EngineError::config(
                "state.timer-cache-size",
                self.timer_cache_size,
                "[1, 1048576]",
            ));
        }
        Ok(())
    }

    /// The timer service in force: `timer-service` for the RocksDB backend, heap for the heap
    /// backend.
    pub fn effective_timer_service(&self) -> TimerServiceKind {
        match self.backend {
            BackendKind::RocksDb => self.timer_service,
            BackendKind::Heap => TimerServiceKind::Heap,
        }
    }
}

impl RocksDbConfig {
    /// The compaction style in force: the configured one, else the predefined profile's
    /// (`level` for the spinning-disk profiles), else [`DEFAULT_COMPACTION_STYLE`].
    pub fn effective_compaction_style(&self) -> CompactionStyle {
        self.compaction_style
            .unwrap_or(match self.predefined_options {
                PredefinedOptions::SpinningDiskOptimized
                | PredefinedOptions::SpinningDiskOptimizedHighMem => CompactionStyle::Level,
                PredefinedOptions::Default | PredefinedOptions::FlashSsdOptimized => {
                    DEFAULT_COMPACTION_STYLE
                }
            })
    }

    /// The L0 compaction trigger Cairn sets: the configured one, else
    /// [`DEFAULT_UNIVERSAL_LEVEL0_TRIGGER`] under universal compaction; `None` leaves RocksDB's
    /// (4).
    pub fn effective_level0_file_num_compaction_trigger(&self) -> Option<i32> {
        self.level0_file_num_compaction_trigger
            .or(
                (self.effective_compaction_style() == CompactionStyle::Universal)
                    .then_some(DEFAULT_UNIVERSAL_LEVEL0_TRIGGER),
            )
    }

    /// The bloom filter in force: `None` when disabled with `0`.
    pub fn effective_bloom_filter_bits_per_key(&self) -> Option<f64> {
        let bits = self
            .bloom_filter_bits_per_key
            .unwrap_or(DEFAULT_BLOOM_FILTER_BITS_PER_KEY);
        (bits != 0.0).then_some(bits)
    }

    /// Checks the RocksDB knobs.
    pub fn validate(&self) -> Result<()> {
        if let Some(b) = self.block_size {
            // RocksDB accepts any size, but blocks below 1 KiB explode the index and above
            // 16 MiB make every point read load megabytes.
            if !(1024..=16 << 20).contains(&b.as_u64()) {
                return Err(EngineError::config(
                    "rocksdb.block-size",
                    b,
                    "[1KiB, 16MiB]",
                ));
            }
        }
        if let Some(n) = self.max_open_files
            && n != -1
            && n < 16
        {
            return Err(EngineError::config(
                "rocksdb.max-open-files",
                n,
                "-1 or >= 16",
            ));
        }
        if let Some(n) = self.write_buffer_count
            && !(1..=64).contains(&n)
        {
            return Err(EngineError::config(
                "rocksdb.write-buffer-count",
                n,
                "[1, 64]",
            ));
        }
        if let Some(n) = self.background_threads
            && !(1..=256).contains(&n)
        {
            return Err(EngineError::config(
                "rocksdb.background-threads",
                n,
                "[1, 256]",
            ));
        }
        if self.compression_per_level.is_empty() {
            return Err(EngineError::config(
                "rocksdb.compression-per-level",
                "[]",
                "at least one of none, lz4, zstd",
            ));
        }
        if let Some(s) = self.target_file_size_base
            && s.as_u64() < 1 << 20
        {
            return Err(EngineError::config(
                "rocksdb.target-file-size-base",
                s,
                ">= 1MiB",
            ));
        }
        if let Some(s) = self.max_size_level_base
            && s.as_u64() < 1 << 20
        {
            return Err(EngineError::config(
                "rocksdb.max-size-level-base",
                s,
                ">= 1MiB",
            ));
        }
        if let Some(n) = self.level0_file_num_compaction_trigger {
            // Beyond a few hundred files every point read probes hundreds of tables.
            if !(1..=256).contains(&n) {
                return Err(EngineError::config(
                    "rocksdb.level0-file-num-compaction-trigger",
                    n,
                    "[1, 256]",
                ));
            }
        }
        let universal = self.effective_compaction_style() == CompactionStyle::Universal;
        let universal_knobs = [
            (
                "rocksdb.universal-size-ratio",
                self.universal_size_ratio,
                0,
                10_000,
            ),
            (
                "rocksdb.universal-min-merge-width",
                self.universal_min_merge_width,
                2,
                1024,
            ),
            (
                "rocksdb.universal-max-merge-width",
                self.universal_max_merge_width,
                2,
                1024,
            ),
            (
                "rocksdb.universal-max-size-amplification-percent",
                self.universal_max_size_amplification_percent,
                1,
                100_000,
            ),
        ];
        for (field, value, min, max) in universal_knobs {
            let Some(v) = value else { continue };
            if !universal {
                return Err(EngineError::config(
                    field,
                    v,
                    "unset unless the compaction style is universal (rocksdb.compaction-style)",
                ));
            }
            if !(min..=max).contains(&v) {
                return Err(EngineError::config(field, v, format!("[{min}, {max}]")));
            }
        }
        if let Some(b) = self.bloom_filter_bits_per_key {
            // Below 1 bit the filter rejects almost nothing; above 64 it only costs memory.
            if b != 0.0 && !(1.0..=64.0).contains(&b) {
                return Err(EngineError::config(
                    "rocksdb.bloom-filter-bits-per-key",
                    b,
                    "0 (no filter) or [1, 64]",
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (
            self.universal_min_merge_width,
            self.universal_max_merge_width,
        ) && hi < lo
        {
            return Err(EngineError::config(
                "rocksdb.universal-max-merge-width",
                hi,
                format!(">= rocksdb.universal-min-merge-width = {lo}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn field_error(cfg: &CairnConfig) -> String {
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        e.to_string()
    }

    #[test]
    fn defaults_validate() {
        CairnConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e =
            CairnConfig::from_toml_str("[state]\nbackend = \"heap\"\nmax-value-sise = \"1MiB\"")
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("max-value-sise"), "{e}");
        let e = CairnConfig::from_toml_str("[rocksdb]\nblock-size = 5\nbogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = CairnConfig::from_toml_str("[state]\nbackend = \"lmdb\"").unwrap_err();
        assert!(e.to_string().contains("lmdb"), "{e}");
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut c = CairnConfig::default();
        c.state.max_parallelism = Some(0);
        assert!(field_error(&c).contains("state.max-parallelism"));
        c.state.max_parallelism = Some(40000);
        assert!(field_error(&c).contains("state.max-parallelism"));

        let mut c = CairnConfig::default();
        c.state.max_value_size = ByteSize::b(10);
        assert!(field_error(&c).contains("state.max-value-size"));
        c.state.max_value_size = ByteSize::gib(2);
        assert!(field_error(&c).contains("state.max-value-size"));

        let mut c = CairnConfig::default();
        c.state.working_dir = PathBuf::new();
        assert!(field_error(&c).contains("state.working-dir"));

        let mut c = CairnConfig::default();
        c.state.timer_cache_size = 0;
        assert!(field_error(&c).contains("state.timer-cache-size"));

        let mut c = CairnConfig::default();
        c.rocksdb.block_size = Some(ByteSize::b(100));
        assert!(field_error(&c).contains("rocksdb.block-size"));

        let mut c = CairnConfig::default();
        c.rocksdb.max_open_files = Some(3);
        assert!(field_error(&c).contains("rocksdb.max-open-files"));

        let mut c = CairnConfig::default();
        c.rocksdb.write_buffer_count = Some(0);
        assert!(field_error(&c).contains("rocksdb.write-buffer-count"));

        let mut c = CairnConfig::default();
        c.rocksdb.background_threads = Some(0);
        assert!(field_error(&c).contains("rocksdb.background-threads"));

        let mut c = CairnConfig::default();
        c.rocksdb.compression_per_level.clear();
        assert!(field_error(&c).contains("rocksdb.compression-per-level"));

        let mut c = CairnConfig::default();
        c.rocksdb.target_file_size_base = Some(ByteSize::kib(4));
        assert!(field_error(&c).contains("rocksdb.target-file-size-base"));

        let mut c = CairnConfig::default();
        c.rocksdb.max_size_level_base = Some(ByteSize::kib(4));
        assert!(field_error(&c).contains("rocksdb.max-size-level-base"));

        let mut c = CairnConfig::default();
        c.rocksdb.level0_file_num_compaction_trigger = Some(0);
        assert!(field_error(&c).contains("rocksdb.level0-file-num-compaction-trigger"));
        c.rocksdb.level0_file_num_compaction_trigger = Some(1000);
        assert!(field_error(&c).contains("rocksdb.level0-file-num-compaction-trigger"));

        // Universal knobs: out of range, or set while the compaction style in force is not
        // universal (configured, or from a spinning-disk profile).
        let mut c = CairnConfig::default();
        c.rocksdb.universal_size_ratio = Some(10);
        c.validate().unwrap();
        c.rocksdb.compaction_style = Some(CompactionStyle::Level);
        assert!(field_error(&c).contains("rocksdb.universal-size-ratio"));
        c.rocksdb.compaction_style = None;
        c.rocksdb.predefined_options = PredefinedOptions::SpinningDiskOptimized;
        assert!(field_error(&c).contains("rocksdb.universal-size-ratio"));
        c.rocksdb.compaction_style = Some(CompactionStyle::Universal);
        c.validate().unwrap();
        c.rocksdb.universal_size_ratio = Some(-1);
        assert!(field_error(&c).contains("rocksdb.universal-size-ratio"));

        let mut c = CairnConfig::default();
        c.rocksdb.compaction_style = Some(CompactionStyle::Universal);
        c.rocksdb.universal_min_merge_width = Some(1);
        assert!(field_error(&c).contains("rocksdb.universal-min-merge-width"));
        c.rocksdb.universal_min_merge_width = Some(4);
        c.rocksdb.universal_max_merge_width = Some(3);
        assert!(field_error(&c).contains("rocksdb.universal-max-merge-width"));
        c.rocksdb.universal_max_merge_width = Some(4);
        c.validate().unwrap();

        let mut c = CairnConfig::default();
        c.rocksdb.universal_max_size_amplification_percent = Some(400);
        c.rocksdb.compaction_style = Some(CompactionStyle::Fifo);
        assert!(field_error(&c).contains("rocksdb.universal-max-size-amplification-percent"));
        c.rocksdb.compaction_style = Some(CompactionStyle::Universal);
        c.validate().unwrap();
        c.rocksdb.universal_max_size_amplification_percent = Some(0);
        assert!(field_error(&c).contains("rocksdb.universal-max-size-amplification-percent"));

        let mut c = CairnConfig::default();
        c.rocksdb.bloom_filter_bits_per_key = Some(0.5);
        assert!(field_error(&c).contains("rocksdb.bloom-filter-bits-per-key"));
        c.rocksdb.bloom_filter_bits_per_key = Some(f64::NAN);
        assert!(field_error(&c).contains("rocksdb.bloom-filter-bits-per-key"));
        c.rocksdb.bloom_filter_bits_per_key = Some(10.0);
        c.validate().unwrap();
        c.rocksdb.bloom_filter_bits_per_key = Some(0.0);
        c.validate().unwrap();

        let mut c = CairnConfig::default();
        c.memory.write_buffer_ratio = 1.5;
        assert!(field_error(&c).contains("memory.write-buffer-ratio"));
    }

    #[test]
    fn max_parallelism_derivation() {
        let c = CairnConfig::default();
        assert_eq!(c.max_parallelism_for(4).unwrap(), 128);
        let mut c = CairnConfig::default();
        c.state.max_parallelism = Some(8);
        assert_eq!(c.max_parallelism_for(4).unwrap(), 8);
        assert!(
            c.max_parallelism_for(9)
                .unwrap_err()
                .to_string()
                .contains("slots")
        );
    }

    #[test]
    fn compaction_defaults_and_what_overrides_them() {
        let d = RocksDbConfig::default();
        assert_eq!(d.effective_compaction_style(), CompactionStyle::Universal);
        assert_eq!(
            d.effective_level0_file_num_compaction_trigger(),
            Some(DEFAULT_UNIVERSAL_LEVEL0_TRIGGER)
        );
        assert_eq!(
            d.effective_bloom_filter_bits_per_key(),
            Some(DEFAULT_BLOOM_FILTER_BITS_PER_KEY)
        );
        // Choosing level compaction alone must validate (no universal default leaks into it)
        // and gives RocksDB's trigger back.
        let c = CairnConfig::from_toml_str("[rocksdb]\ncompaction-style = \"level\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.rocksdb.effective_compaction_style(),
            CompactionStyle::Level
        );
        assert_eq!(
            c.rocksdb.effective_level0_file_num_compaction_trigger(),
            None
        );
        // The spinning-disk profiles keep their level compaction unless one is configured.
        let c = CairnConfig::from_toml_str(
            "[rocksdb]\npredefined-options = \"SPINNING_DISK_OPTIMIZED\"\nbloom-filter-bits-per-key = 0\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.rocksdb.effective_compaction_style(),
            CompactionStyle::Level
        );
        assert_eq!(c.rocksdb.effective_bloom_filter_bits_per_key(), None);
        let c = CairnConfig::from_toml_str(
            "[rocksdb]\npredefined-options = \"FLASH_SSD_OPTIMIZED\"\nlevel0-file-num-compaction-trigger = 4\n",
        )
        .unwrap();
        assert_eq!(
            c.rocksdb.effective_compaction_style(),
            CompactionStyle::Universal
        );
        assert_eq!(
            c.rocksdb.effective_level0_file_num_compaction_trigger(),
            Some(4)
        );
    }

    #[test]
    fn compaction_knobs_parse_from_kebab_case_toml() {
        let c = CairnConfig::from_toml_str(
            "[rocksdb]\ncompaction-style = \"universal\"\nlevel0-file-num-compaction-trigger = 8\n\
             universal-size-ratio = 10\nuniversal-min-merge-width = 3\nuniversal-max-merge-width = 6\n\
             universal-max-size-amplification-percent = 400\n",
        )
        .unwrap();
        c.validate().unwrap();
        let r = &c.rocksdb;
        assert_eq!(r.compaction_style, Some(CompactionStyle::Universal));
        assert_eq!(r.level0_file_num_compaction_trigger, Some(8));
        assert_eq!(r.universal_size_ratio, Some(10));
        assert_eq!(r.universal_min_merge_width, Some(3));
        assert_eq!(r.universal_max_merge_width, Some(6));
        assert_eq!(r.universal_max_size_amplification_percent, Some(400));
        let back = CairnConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn toml_roundtrip_with_readable_sizes() {
        let c = CairnConfig::from_toml_str(
            "[rocksdb]\npredefined-options = \"FLASH_SSD_OPTIMIZED\"\nblock-size = \"16KiB\"\ncompression-per-level = [\"none\", \"lz4\", \"zstd\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.rocksdb.predefined_options,
            PredefinedOptions::FlashSsdOptimized
        );
        assert_eq!(c.rocksdb.block_size, Some(ByteSize::kib(16)));
        let back = CairnConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    /// `state.timer-service` parses, defaults to rocksdb, and the heap backend always gets heap
    /// timers whatever it says.
    #[test]
    fn timer_service_defaults_and_parses() {
        let c = CairnConfig::default();
        assert_eq!(c.state.timer_service, TimerServiceKind::RocksDb);
        assert_eq!(c.state.timer_cache_size, 128);
        assert_eq!(c.state.effective_timer_service(), TimerServiceKind::RocksDb);
        let c = CairnConfig::from_toml_str(
            "[state]\nbackend = \"heap\"\ntimer-service = \"rocksdb\"\ntimer-cache-size = 64\n",
        )
        .unwrap();
        assert_eq!(c.state.timer_cache_size, 64);
        assert_eq!(c.state.effective_timer_service(), TimerServiceKind::Heap);
        let c = CairnConfig::from_toml_str("[state]\ntimer-service = \"heap\"\n").unwrap();
        assert_eq!(c.state.effective_timer_service(), TimerServiceKind::Heap);
        let e = CairnConfig::from_toml_str("[state]\ntimer-service = \"disk\"\n").unwrap_err();
        assert!(e.to_string().contains("timer-service"), "{e}");
    }
}
