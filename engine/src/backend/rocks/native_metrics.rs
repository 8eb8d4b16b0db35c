//! RocksDB's own metrics of a slot, opt-in as Flink's `state.backend.rocksdb.metrics.*`:
//! native properties per column family (each state's), and RocksDB's statistics (tickers and
//! histograms, per slot) when `rocksdb.metrics.statistics` is on.
//!
//! Off by default, as in Flink: reading a property takes a RocksDB mutex (a few microseconds per
//! property and state, read when the host samples), and statistics cost on every operation
//! (measured on the update workload, see `benches/RESULTS.md`). The host publishes them with
//! [`Metrics::observe_native`](crate::Metrics::observe_native) under Prometheus names
//! `cairn_rocksdb_<property>` (`.` and `-` as `_`), `cairn_rocksdb_ticker_total` and
//! `cairn_rocksdb_histogram`; `benches/grafana/cairn-rocksdb.json` is a dashboard of them.
//!
//! ```toml
//! [rocksdb.metrics]
//! properties = ["estimate-num-keys", "live-sst-files-size", "block-cache-usage"]
//! statistics = true
//! ```

use rocksdb::statistics::{Histogram, Ticker};
use rocksdb::{DBWithThreadMode, MultiThreaded, Options};
use serde::{Deserialize, Serialize};

/// Which of RocksDB's metrics a slot exports (`rocksdb.metrics` in the configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NativeMetricsConfig {
    /// Native properties read per state (column family). Empty (the default): none. Flink: one
    /// boolean `state.backend.rocksdb.metrics.<property>` each.
    pub properties: Vec<NativeProperty>,
    /// RocksDB's statistics: every ticker (counters such as `block.cache.hit`,
    /// `stall.micros`) and the main histograms (`db.get.micros`, `db.write.micros`, ...), per
    /// slot. Default off. Flink: `state.backend.rocksdb.metrics.column-family-as-variable` and
    /// the statistics options of 1.17+.
    pub statistics: bool,
}

impl NativeMetricsConfig {
    /// Whether anything is exported.
    pub fn is_enabled(&self) -> bool {
        self.statistics || !self.properties.is_empty()
    }
}

macro_rules! native_properties {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)+) => {
        /// A RocksDB property read per column family (`rocksdb.<name>`; the names are RocksDB's
        /// and Flink's). Every one is an integer.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum NativeProperty {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)+
        }

        impl NativeProperty {
            /// Every property, in RocksDB's documentation order.
            pub const ALL: &'static [NativeProperty] = &[$(NativeProperty::$variant,)+];

            /// The name without `rocksdb.` (`estimate-num-keys`).
            pub fn name(self) -> &'static str {
                match self {
                    $(NativeProperty::$variant => $name,)+
                }
            }

            /// RocksDB's property name (`rocksdb.estimate-num-keys`).
            pub fn rocksdb_name(self) -> &'static str {
                match self {
                    $(NativeProperty::$variant => concat!("rocksdb.", $name),)+
                }
            }
        }
    };
}

native_properties! {
    /// Immutable memtables not yet flushed.
    NumImmutableMemTable = "num-immutable-mem-table",
    /// 1 if a memtable flush is pending.
    MemTableFlushPending = "mem-table-flush-pending",
    /// 1 if at least one compaction is pending.
    CompactionPending = "compaction-pending",
    /// Accumulated background errors.
    BackgroundErrors = "background-errors",
    /// Approximate bytes of the active memtable.
    CurSizeActiveMemTable = "cur-size-active-mem-table",
    /// Approximate bytes of the active and unflushed immutable memtables.
    CurSizeAllMemTables = "cur-size-all-mem-tables",
    /// Approximate bytes of all memtables, pinned ones included.
    SizeAllMemTables = "size-all-mem-tables",
    /// Entries in the active memtable.
    NumEntriesActiveMemTable = "num-entries-active-mem-table",
    /// Entries in the unflushed immutable memtables.
    NumEntriesImmMemTables = "num-entries-imm-mem-tables",
    /// Deletes in the active memtable.
    NumDeletesActiveMemTable = "num-deletes-active-mem-table",
    /// Deletes in the unflushed immutable memtables.
    NumDeletesImmMemTables = "num-deletes-imm-mem-tables",
    /// Estimated number of keys.
    EstimateNumKeys = "estimate-num-keys",
    /// Estimated memory of the table readers (filters and indexes not in the block cache).
    EstimateTableReadersMem = "estimate-table-readers-mem",
    /// Unreleased snapshots.
    NumSnapshots = "num-snapshots",
    /// Live versions (more = files kept for iterators or compactions).
    NumLiveVersions = "num-live-versions",
    /// Estimated live data, bytes.
    EstimateLiveDataSize = "estimate-live-data-size",
    /// Bytes of all SST files.
    TotalSstFilesSize = "total-sst-files-size",
    /// Bytes of the SST files of the current version.
    LiveSstFilesSize = "live-sst-files-size",
    /// Estimated bytes compaction must rewrite to bring every level under its target.
    EstimatePendingCompactionBytes = "estimate-pending-compaction-bytes",
    /// Compactions running.
    NumRunningCompactions = "num-running-compactions",
    /// Flushes running.
    NumRunningFlushes = "num-running-flushes",
    /// The current delayed write rate (0 = not delayed), bytes/s.
    ActualDelayedWriteRate = "actual-delayed-write-rate",
    /// 1 if writes are stopped.
    IsWriteStopped = "is-write-stopped",
    /// Capacity of the block cache.
    BlockCacheCapacity = "block-cache-capacity",
    /// Bytes in the block cache.
    BlockCacheUsage = "block-cache-usage",
    /// Bytes of pinned entries in the block cache.
    BlockCachePinnedUsage = "block-cache-pinned-usage",
}

/// Histograms exported with statistics on: the latencies and sizes people tune by.
pub const HISTOGRAMS: &[Histogram] = &[
    Histogram::DbGet,
    Histogram::DbWrite,
    Histogram::DbSeek,
    Histogram::DbMultiget,
    Histogram::CompactionTime,
    Histogram::FlushTime,
    Histogram::WriteStall,
    Histogram::SstReadMicros,
    Histogram::BytesPerRead,
    Histogram::BytesPerWrite,
];

/// One histogram's summary since the slot opened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistogramSummary {
    /// RocksDB's name without `rocksdb.` (`db.get.micros`).
    pub name: &'static str,
    /// Observations.
    pub count: u64,
    /// Sum of the observations.
    pub sum: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// What one sample of a slot read.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NativeMetrics {
    /// (state `operator/name`, property, value) for each configured property and state.
    pub properties: Vec<(String, NativeProperty, u64)>,
    /// (ticker name without `rocksdb.`, count since the slot opened); statistics only.
    pub tickers: Vec<(&'static str, u64)>,
    /// Statistics only.
    pub histograms: Vec<HistogramSummary>,
}

/// Strips RocksDB's `rocksdb.` prefix.
fn short(name: &'static str) -> &'static str {
    name.strip_prefix("rocksdb.").unwrap_or(name)
}

/// Reads the configured metrics of `db`: `states` are the column families (state names),
/// `db_options` the options it was opened with (holding its statistics when on). A property
/// RocksDB does not answer is left out.
pub(crate) fn collect(
    db: &DBWithThreadMode<MultiThreaded>,
    states: &[&str],
    config: &NativeMetricsConfig,
    db_options: &Options,
) -> NativeMetrics {
    let mut out = NativeMetrics::default();
    for &state in states {
        let Some(cf) = db.cf_handle(state) else {
            continue;
        };
        for &p in &config.properties {
            if let Ok(Some(v)) = db.property_int_value_cf(&cf, p.rocksdb_name()) {
                out.properties.push((state.to_string(), p, v));
            }
        }
    }
    if config.statistics {
        out.tickers = Ticker::iter()
            .map(|&t| (short(t.name()), db_options.get_ticker_count(t)))
            .collect();
        out.histograms = HISTOGRAMS
            .iter()
            .map(|&h| {
                let d = db_options.get_histogram_data(h);
                HistogramSummary {
                    name: short(h.name()),
                    count: d.count(),
                    sum: d.sum(),
                    p50: d.median(),
                    p95: d.p95(),
                    p99: d.p99(),
                    max: d.max(),
                }
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_names_round_trip_through_the_config() {
        for &p in NativeProperty::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<NativeProperty>(&json).unwrap(), p);
            assert_eq!(p.rocksdb_name(), format!("rocksdb.{}", p.name()));
        }
        let c: NativeMetricsConfig =
            toml::from_str("properties = [\"estimate-num-keys\"]\nstatistics = true").unwrap();
        assert_eq!(c.properties, vec![NativeProperty::EstimateNumKeys]);
        assert!(c.is_enabled());
        let e = toml::from_str::<NativeMetricsConfig>("properties = [\"num-keys\"]").unwrap_err();
        assert!(e.to_string().contains("num-keys"), "{e}");
    }
}
