//! Cairn's managed memory: one memory budget per slot for all of its RocksDB state.
//!
//! A slot's budget `M` (`[memory] managed-size`) is split the way Flink's RocksDB state backend
//! splits managed memory: one LRU block cache of `(3 - r)/3 * M` and one write-buffer manager of
//! `2r/3 * M` that charges memtable memory to that cache, shared by every column family of every
//! RocksDB instance in the slot. Unlike Flink, memtable and arena sizes are derived from the
//! budget, so small budgets do not flush constantly.
//!
//! - [`MemoryConfig`]: the `[memory]` settings, with [`MemoryConfig::validate`]; [`ConfigError`]
//!   is the configuration error type of all of Cairn.
//! - [`MemoryPlan`]: the split, as plain numbers for the run summary. With
//!   `memory.state-cache-ratio = c` the engine's write-back state cache takes `c * M` first and
//!   RocksDB is split from the rest.
//! - [`SlotMemory`]: the shared cache and write-buffer manager, applied to RocksDB options.
//! - [`MemoryReport`]: what RocksDB really uses, counted once, plus the process RSS.
//!
//! This crate does not open databases, choose compaction or compression, or limit memory outside
//! RocksDB (heap state, buffers, allocator overhead): keep headroom below the container limit.
//!
//! ```
//! use cairn_memory::{MemoryConfig, MemoryReport, SlotMemory};
//! use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: MemoryConfig = toml::from_str(r#"managed-size = "64MiB""#)?;
//! let mem = SlotMemory::build_shared(&config)?;
//!
//! let mut db_opts = Options::default();
//! db_opts.create_if_missing(true);
//! db_opts.create_missing_column_families(true);
//! mem.apply_to_db_options(&mut db_opts);
//!
//! // Every column family, "default" included, gets the slot's memory.
//! let names = ["default", "window-state"];
//! let cfs = names.map(|name| {
//!     let mut cf_opts = Options::default();
//!     mem.apply_to_cf_options(&mut cf_opts, &mut BlockBasedOptions::default());
//!     ColumnFamilyDescriptor::new(name, cf_opts)
//! });
//! let dir = tempfile::tempdir()?;
//! let db = DBWithThreadMode::<MultiThreaded>::open_cf_descriptors(&db_opts, dir.path(), cfs)?;
//!
//! let report = MemoryReport::collect(&db, &names, &mem);
//! assert_eq!(report.budget_bytes, Some(64 * 1024 * 1024));
//! assert!(report.rocksdb_total_bytes() <= 64 * 1024 * 1024);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod config;
mod plan;
mod report;
mod shared;

pub use config::{
    ConfigError, DEFAULT_STATE_CACHE_RATIO, DEFAULT_TIMER_BUFFER_RATIO, MAX_STATE_CACHE_RATIO,
    MIN_BUDGET_BYTES, MIN_WRITE_BUFFER_MANAGER_BYTES, MemoryConfig,
};
pub use plan::{
    MAX_ARENA_BLOCK_SIZE, MAX_WRITE_BUFFER_SIZE, MemoryPlan, ROCKSDB_HIGH_PRI_POOL_RATIO,
};
pub use report::{MemoryReport, process_rss_bytes};
pub use shared::SlotMemory;
