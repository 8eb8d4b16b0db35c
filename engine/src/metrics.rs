//! Prometheus metrics of a Cairn job: records processed, RocksDB memory against the budget,
//! checkpoints (sizes, durations, failures) and restores, and RocksDB's own metrics when
//! configured ([`Metrics::observe_native`]).
//!
//! One [`Metrics`] per job, shared by its slots and its checkpoint coordinator. It owns its own
//! [`Registry`] (prefix `cairn_`) instead of the process-global one, so a host engine that
//! embeds several Cairn jobs, or has its own exporter, decides where each registry is exposed:
//! [`Metrics::registry`] to merge it into the host's, [`Metrics::encode`] for the text format.
//! Every update is a few atomic operations, cheap enough for the per-record path.
//!
//! ```
//! use cairn_engine::metrics::Metrics;
//!
//! let m = Metrics::new();
//! m.add_records(0, 1000);
//! let text = m.encode();
//! assert!(text.contains("cairn_records_processed_total{slot=\"0\"} 1000"));
//! ```

use cairn_memory::MemoryReport;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backend::rocks::cache::CacheStats;
use crate::backend::rocks::native_metrics::{NativeMetrics, NativeProperty};
use crate::checkpoint::CheckpointReport;

/// Buckets for checkpoint phase durations, in seconds: 1 ms (an idle sync phase) to 5 min (an
/// asynchronous phase of a large first upload).
const PHASE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for one record's state access, in seconds: 250 ns (heap) to 10 ms (a stalled
/// RocksDB write).
const RECORD_BUCKETS: &[f64] = &[
    250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 1e-3, 10e-3,
];

/// The metrics of one job. Cheap to share (`Arc`) between threads.
pub struct Metrics {
    registry: Registry,
    records: IntCounterVec,
    record_latency: HistogramVec,
    memory: IntGaugeVec,
    memory_budget: IntGaugeVec,
    rss: IntGauge,
    checkpoints_completed: IntCounter,
    checkpoints_failed: IntCounter,
    checkpoints_declined: IntCounter,
    last_checkpoint_id: IntGauge,
    last_checkpoint_time: IntGauge,
    last_incremental: IntGauge,
    last_full: IntGauge,
    uploaded_bytes: IntCounter,
    copied_bytes: IntCounter,
    files_uploaded: IntCounter,
    files_reused: IntCounter,
    sync_seconds: Histogram,
    async_seconds: Histogram,
    restore_seconds: prometheus::Gauge,
    restore_bytes: IntGauge,
    cache_counters: IntCounterVec,
    cache_gauges: IntGaugeVec,
    cache_flush_seconds: HistogramVec,
    /// One gauge family per native property (`rocksdb_<property>`), in
    /// [`NativeProperty::ALL`]'s order.
    native_properties: Vec<IntGaugeVec>,
    native_tickers: IntCounterVec,
    native_histograms: prometheus::GaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every Cairn metric registered at zero.
    pub fn new() -> Self {
        // Names and label sets below are constants, so registration cannot fail at run time;
        // a failure is a programming error caught by the unit tests.
        let registry = Registry::new_custom(Some("cairn".into()), None)
            .expect("constant registry prefix is valid");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("constant metric definitions are valid and unique");
            m
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::with_opts(Opts::new(name, help)).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                &registry,
                IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid histogram"),
            )
        };
        Metrics {
            records: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("records_processed_total", "Records processed, per slot."),
                    &["slot"],
                )
                .expect("valid counter vec"),
            ),
            record_latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "record_state_access_seconds",
                        "State-access time of one record (sampled records), per slot.",
                    )
                    .buckets(RECORD_BUCKETS.to_vec()),
                    &["slot"],
                )
                .expect("valid histogram vec"),
            ),
            memory: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "memory_bytes",
                        "Memory of a slot by component (RocksDB's parts and the state cache); \
                         component=\"total\" counts every byte once and is what must stay \
                         inside the budget.",
                    ),
                    &["slot", "component"],
                )
                .expect("valid gauge vec"),
            ),
            memory_budget: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "memory_budget_bytes",
                        "Managed-memory budget of a slot (absent when unmanaged).",
                    ),
                    &["slot"],
                )
                .expect("valid gauge vec"),
            ),
            rss: gauge("process_rss_bytes", "Resident set size of the process."),
            checkpoints_completed: counter(
                "checkpoints_completed_total",
                "Checkpoints committed (their _metadata written).",
            ),
            checkpoints_failed: counter(
                "checkpoints_failed_total",
                "Checkpoints that failed after their barrier (aborted, uploads released).",
            ),
            checkpoints_declined: counter(
                "checkpoints_declined_total",
                "Checkpoints declined because a slot was already past the barrier.",
            ),
            last_checkpoint_id: gauge("last_checkpoint_id", "Id of the last completed checkpoint."),
            last_checkpoint_time: gauge(
                "last_checkpoint_completed_timestamp_seconds",
                "Unix time at which the last checkpoint completed.",
            ),
            last_incremental: gauge(
                "last_checkpoint_incremental_bytes",
                "Bytes the last checkpoint uploaded (Flink: Checkpointed Data Size).",
            ),
            last_full: gauge(
                "last_checkpoint_full_bytes",
                "Bytes the last checkpoint references (Flink: Full Checkpoint Data Size).",
            ),
            uploaded_bytes: counter(
                "checkpoint_uploaded_bytes_total",
                "Bytes sent from the slots to checkpoint storage.",
            ),
            copied_bytes: counter(
                "checkpoint_copied_bytes_total",
                "Bytes copied inside checkpoint storage (first checkpoint after a no-claim restore).",
            ),
            files_uploaded: counter(
                "checkpoint_files_uploaded_total",
                "Files uploaded by checkpoints.",
            ),
            files_reused: counter(
                "checkpoint_files_reused_total",
                "Shared files a checkpoint referenced without uploading them again.",
            ),
            sync_seconds: histogram(
                "checkpoint_sync_seconds",
                "Synchronous phase per checkpoint (the longest slot's pause).",
                PHASE_BUCKETS,
            ),
            async_seconds: histogram(
                "checkpoint_async_seconds",
                "Asynchronous phase per checkpoint (uploads and commit).",
                PHASE_BUCKETS,
            ),
            restore_seconds: reg(
                &registry,
                prometheus::Gauge::with_opts(Opts::new(
                    "restore_seconds",
                    "Time the last restore took to download and verify its files.",
                ))
                .expect("valid gauge"),
            ),
            restore_bytes: gauge("restore_bytes", "Bytes the last restore placed locally."),
            cache_counters: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "state_cache_events_total",
                        "Write-back state cache events per slot: hits, misses, evictions, \
                         evicted_dirty, dirty_flushes (rounds past the dirty bound), \
                         writes_cancelled (pending writes dropped by a delete).",
                    ),
                    &["slot", "event"],
                )
                .expect("valid counter vec"),
            ),
            cache_gauges: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "state_cache",
                        "Write-back state cache per slot: entries, bytes, dirty_bytes, \
                         capacity_bytes.",
                    ),
                    &["slot", "what"],
                )
                .expect("valid gauge vec"),
            ),
            cache_flush_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "state_cache_checkpoint_flush_seconds",
                        "Sync-phase write of every dirty cache entry, per slot and checkpoint.",
                    )
                    .buckets(PHASE_BUCKETS.to_vec()),
                    &["slot"],
                )
                .expect("valid histogram vec"),
            ),
            native_properties: NativeProperty::ALL
                .iter()
                .map(|p| {
                    reg(
                        &registry,
                        IntGaugeVec::new(
                            Opts::new(
                                format!("rocksdb_{}", p.name().replace('-', "_")),
                                format!(
                                    "RocksDB property rocksdb.{} per slot and state.",
                                    p.name()
                                ),
                            ),
                            &["slot", "state"],
                        )
                        .expect("valid gauge vec"),
                    )
                })
                .collect(),
            native_tickers: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "rocksdb_ticker_total",
                        "RocksDB statistics tickers per slot (rocksdb.metrics.statistics), \
                         ticker = RocksDB's name without `rocksdb.`.",
                    ),
                    &["slot", "ticker"],
                )
                .expect("valid counter vec"),
            ),
            native_histograms: reg(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "rocksdb_histogram",
                        "RocksDB statistics histograms per slot since it opened \
                         (rocksdb.metrics.statistics): stat = count, sum, p50, p95, p99, max.",
                    ),
                    &["slot", "histogram", "stat"],
                )
                .expect("valid gauge vec"),
            ),
            registry,
        }
    }

    /// The registry, to expose it through a host engine's own exporter.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in Prometheus's text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families that violate the format, which the
        // constant definitions above do not.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts `n` more records processed by `slot`.
    pub fn add_records(&self, slot: u32, n: u64) {
        self.records_counter(slot).inc_by(n);
    }

    /// A handle on `slot`'s records counter, to keep in the slot's loop (looking the label up
    /// per batch would allocate and hash each time).
    pub fn records_counter(&self, slot: u32) -> IntCounter {
        self.records.with_label_values(&[&slot.to_string()])
    }

    /// A handle on `slot`'s record-latency histogram, to keep in the slot's loop (looking the
    /// label up per record would cost more than the observation).
    pub fn record_latency(&self, slot: u32) -> Histogram {
        self.record_latency.with_label_values(&[&slot.to_string()])
    }

    /// Publishes a slot's memory report.
    pub fn observe_memory(&self, slot: u32, r: &MemoryReport) {
        let slot = slot.to_string();
        for (component, bytes) in [
            ("block_cache", r.block_cache_bytes),
            ("block_cache_pinned", r.block_cache_pinned_bytes),
            ("memtables", r.memtable_bytes),
            ("write_buffer_manager", r.write_buffer_manager_bytes),
            ("table_readers", r.table_readers_bytes),
            ("state_cache", r.state_cache_bytes),
            ("timer_buffer", r.timer_buffer_bytes),
            ("rocksdb_total", r.rocksdb_total_bytes()),
            ("total", r.total_bytes()),
        ] {
            self.memory
                .with_label_values(&[slot.as_str(), component])
                .set(saturating_i64(bytes));
        }
        if let Some(b) = r.budget_bytes {
            self.memory_budget
                .with_label_values(&[slot.as_str()])
                .set(saturating_i64(b));
        }
        self.rss.set(saturating_i64(r.rss_bytes));
    }

    /// Publishes a slot's state-cache counters (cumulative, as [`CacheStats`] holds them; only
    /// what is new since the last call is added) and its newest sync-phase flush durations.
    pub fn observe_cache(&self, slot: u32, c: &CacheStats) {
        let slot = slot.to_string();
        for (event, total) in [
            ("hits", c.hits),
            ("misses", c.misses),
            ("evictions", c.evictions),
            ("evicted_dirty", c.evicted_dirty),
            ("dirty_flushes", c.dirty_flushes),
            ("writes_cancelled", c.writes_cancelled),
        ] {
            let counter = self
                .cache_counters
                .with_label_values(&[slot.as_str(), event]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
        for (what, v) in [
            ("entries", c.entries),
            ("bytes", c.bytes),
            ("dirty_bytes", c.dirty_bytes),
            ("capacity_bytes", c.capacity_bytes),
        ] {
            self.cache_gauges
                .with_label_values(&[slot.as_str(), what])
                .set(saturating_i64(v));
        }
        let h = self.cache_flush_seconds.with_label_values(&[slot.as_str()]);
        let seen = usize::try_from(h.get_sample_count()).unwrap_or(usize::MAX);
        for us in c.checkpoint_flush_us.iter().skip(seen) {
            h.observe(*us as f64 / 1e6);
        }
    }

    /// Publishes a slot's RocksDB metrics ([`Slot::native_metrics`](crate::Slot::native_metrics)):
    /// properties as gauges, tickers as counters (cumulative, as RocksDB counts them; only what
    /// is new since the last call is added), histogram summaries as gauges.
    pub fn observe_native(&self, slot: u32, m: &NativeMetrics) {
        let slot = slot.to_string();
        for (state, p, v) in &m.properties {
            if let Some(i) = NativeProperty::ALL.iter().position(|q| q == p) {
                self.native_properties[i]
                    .with_label_values(&[slot.as_str(), state.as_str()])
                    .set(saturating_i64(*v));
            }
        }
        for &(ticker, total) in &m.tickers {
            let counter = self
                .native_tickers
                .with_label_values(&[slot.as_str(), ticker]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
        for h in &m.histograms {
            for (stat, v) in [
                ("count", h.count as f64),
                ("sum", h.sum as f64),
                ("p50", h.p50),
                ("p95", h.p95),
                ("p99", h.p99),
                ("max", h.max),
            ] {
                self.native_histograms
                    .with_label_values(&[slot.as_str(), h.name, stat])
                    .set(v);
            }
        }
    }

    /// Records a completed checkpoint.
    pub fn checkpoint_completed(&self, r: &CheckpointReport) {
        self.checkpoints_completed.inc();
        self.last_checkpoint_id.set(saturating_i64(r.id));
        self.last_checkpoint_time
            .set(saturating_i64(r.completed_at_ms / 1000));
        self.last_incremental
            .set(saturating_i64(r.incremental_bytes));
        self.last_full.set(saturating_i64(r.full_bytes));
        self.uploaded_bytes.inc_by(r.incremental_bytes);
        self.copied_bytes.inc_by(r.bytes_copied);
        self.files_uploaded.inc_by(r.files_uploaded);
        self.files_reused.inc_by(r.files_reused);
        self.sync_seconds.observe(r.sync_ms / 1e3);
        self.async_seconds.observe(r.async_ms / 1e3);
    }

    /// Counts a checkpoint that failed after its barrier.
    pub fn checkpoint_failed(&self) {
        self.checkpoints_failed.inc();
    }

    /// Counts a checkpoint declined before any upload.
    pub fn checkpoint_declined(&self) {
        self.checkpoints_declined.inc();
    }

    /// Records a restore: its duration and the bytes it placed.
    pub fn restored(&self, seconds: f64, bytes: u64) {
        self.restore_seconds.set(seconds);
        self.restore_bytes.set(saturating_i64(bytes));
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::Metrics;
    use crate::checkpoint::CheckpointReport;

    /// The value of the sample line starting with `prefix` (name plus labels).
    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
    }

    #[test]
    fn checkpoints_accumulate_and_the_last_one_is_shown() {
        let m = Metrics::new();
        for (id, inc, full) in [(1, 100, 100), (2, 30, 120)] {
            m.checkpoint_completed(&CheckpointReport {
                id,
                completed_at_ms: 5_000,
                incremental_bytes: inc,
                full_bytes: full,
                files_uploaded: 2,
                files_reused: 1,
                sync_ms: 20.0,
                async_ms: 300.0,
                ..CheckpointReport::default()
            });
        }
        m.checkpoint_failed();
        let t = m.encode();
        assert_eq!(sample(&t, "cairn_checkpoints_completed_total"), 2.0);
        assert_eq!(sample(&t, "cairn_checkpoints_failed_total"), 1.0);
        assert_eq!(sample(&t, "cairn_last_checkpoint_id"), 2.0);
        assert_eq!(sample(&t, "cairn_checkpoint_uploaded_bytes_total"), 130.0);
        assert_eq!(sample(&t, "cairn_last_checkpoint_full_bytes"), 120.0);
        assert_eq!(sample(&t, "cairn_checkpoint_files_reused_total"), 2.0);
        assert_eq!(sample(&t, "cairn_checkpoint_sync_seconds_count"), 2.0);
        // 20 ms lands in the 25 ms bucket, not the 10 ms one.
        assert_eq!(
            sample(&t, "cairn_checkpoint_sync_seconds_bucket{le=\"0.01\"}"),
            0.0
        );
        assert_eq!(
            sample(&t, "cairn_checkpoint_sync_seconds_bucket{le=\"0.025\"}"),
            2.0
        );
    }

    /// Every metric `benches/grafana/cairn-rocksdb.json` queries is one Cairn publishes (a
    /// renamed metric would leave a panel silently empty).
    #[test]
    fn the_grafana_dashboard_queries_published_metrics() {
        use crate::backend::rocks::native_metrics::{
            HistogramSummary, NativeMetrics, NativeProperty,
        };
        let m = Metrics::new();
        m.add_records(0, 1);
        let mut memory = cairn_memory::MemoryReport::default();
        memory.budget_bytes = Some(1);
        m.observe_memory(0, &memory);
        m.observe_cache(0, &Default::default());
        m.checkpoint_completed(&CheckpointReport::default());
        m.observe_native(
            0,
            &NativeMetrics {
                properties: NativeProperty::ALL
                    .iter()
                    .map(|&p| ("op/s".to_string(), p, 1))
                    .collect(),
                tickers: vec![("block.cache.hit", 1)],
                histograms: vec![HistogramSummary {
                    name: "db.get.micros",
                    count: 1,
                    sum: 1,
                    p50: 1.0,
                    p95: 1.0,
                    p99: 1.0,
                    max: 1.0,
                }],
            },
        );
        let published: std::collections::HashSet<String> = m
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benches/grafana/cairn-rocksdb.json"
        );
        let dashboard = std::fs::read_to_string(path).expect("the dashboard is in the repository");
        let mut queried = 0;
        for (i, _) in dashboard.match_indices("cairn_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(published.contains(family), "the dashboard queries {name}");
            queried += 1;
        }
        assert!(queried > 20, "{queried} queries");
    }

    #[test]
    fn cache_counters_add_only_what_is_new() {
        let m = Metrics::new();
        let mut c = crate::backend::rocks::cache::CacheStats {
            hits: 10,
            misses: 4,
            entries: 3,
            checkpoint_flush_us: vec![2_000],
            ..Default::default()
        };
        m.observe_cache(1, &c);
        m.observe_cache(1, &c); // the same totals again change nothing
        c.hits = 15;
        c.checkpoint_flush_us.push(40_000);
        m.observe_cache(1, &c);
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                "cairn_state_cache_events_total{event=\"hits\",slot=\"1\"}"
            ),
            15.0
        );
        assert_eq!(
            sample(
                &t,
                "cairn_state_cache_events_total{event=\"misses\",slot=\"1\"}"
            ),
            4.0
        );
        assert_eq!(
            sample(&t, "cairn_state_cache{slot=\"1\",what=\"entries\"}"),
            3.0
        );
        assert_eq!(
            sample(
                &t,
                "cairn_state_cache_checkpoint_flush_seconds_count{slot=\"1\"}"
            ),
            2.0
        );
        assert_eq!(
            sample(
                &t,
                "cairn_state_cache_checkpoint_flush_seconds_bucket{slot=\"1\",le=\"0.025\"}"
            ),
            1.0
        );
    }

    #[test]
    fn memory_and_records_are_labelled_by_slot() {
        let m = Metrics::new();
        let mut r = cairn_memory::MemoryReport::default();
        r.budget_bytes = Some(1 << 20);
        r.block_cache_bytes = 1000;
        r.memtable_bytes = 500;
        m.observe_memory(3, &r);
        m.add_records(3, 7);
        m.add_records(3, 5);
        m.record_latency(3).observe(2e-6);
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                "cairn_memory_bytes{component=\"block_cache\",slot=\"3\"}"
            ),
            1000.0
        );
        assert_eq!(
            sample(&t, "cairn_memory_bytes{component=\"total\",slot=\"3\"}"),
            r.total_bytes() as f64
        );
        assert_eq!(
            sample(&t, "cairn_memory_budget_bytes{slot=\"3\"}"),
            1048576.0
        );
        assert_eq!(
            sample(&t, "cairn_records_processed_total{slot=\"3\"}"),
            12.0
        );
        assert_eq!(
            sample(&t, "cairn_record_state_access_seconds_count{slot=\"3\"}"),
            1.0
        );
    }
}
