//! The run summary: the JSON contract of `cairn run --json FILE` and the table printed at the end
//! of a run.

use std::fmt::Write as _;

use bytesize::ByteSize;
use cairn_engine::backend::rocks::rescale::RescalePath;
use cairn_engine::{BackendKind, StateSize};
use cairn_memory::{MemoryPlan, MemoryReport};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::{Checksum, OpCounts, Skew, WorkloadKind};

/// The summary of one `cairn run`, written as JSON by `--json FILE`.
///
/// # JSON contract
/// Fields are only ever added; none is renamed or removed without a version bump of the CLI.
/// Sizes are bytes, times seconds, latencies microseconds. With several slots, memory and size
/// figures are sums over the slots (each slot has its own RocksDB and its own budget, so the sums
/// still count every byte once).
///
/// | field | meaning |
/// |---|---|
/// | `cairn_version` | version of the `cairn` binary |
/// | `workload` | `"mixed"`, `"update"` or `"load"` |
/// | `backend` | `"rocksdb"` or `"heap"` |
/// | `slots` | number of slots (one thread, one RocksDB and one budget each) |
/// | `records` | records processed, all slots together (equals `--records`) |
/// | `keys` | number of distinct keys `K` |
/// | `value_size` | value size in bytes; `null` for `update` (a postcard `u64` counter) |
/// | `seed` | seed of the record stream |
/// | `skew` | `"uniform"` or `"zipf"` for `mixed`; `null` otherwise |
/// | `zipf_exponent` | the zipf exponent when `skew` is `"zipf"`; else `null` |
/// | `max_parallelism` | number of key groups |
/// | `working_dir` | absolute working directory (slot `i` uses `<working_dir>/slot-<i>`) |
/// | `open_s` | time to open every slot |
/// | `elapsed_s` | time to process every record (from the start of the slot threads until the last one finished) |
/// | `records_per_sec` | `records / elapsed_s` |
/// | `flush_s` | time of the final flush of memtables to SST files (slowest slot) |
/// | `checksum_s` | time of the checksum scan (slowest slot; 0 with `--no-checksum`) |
/// | `latency_us.{p50,p90,p99,p999,max,mean}` | per-record state-access time (scope + state operations) |
/// | `latency_us.samples` | number of timed records |
/// | `latency_us.sample_every` | one record in this many (per slot) was timed |
/// | `state_bytes_on_disk` | bytes of the slots' RocksDB directories after the flush (SSTs, manifest, logs); 0 for heap |
/// | `per_state[]` | `{state, bytes, entries}` per state (`operator/name`): RocksDB live SST + memtable bytes and estimated keys after the flush; heap: estimated bytes and entries |
/// | `memory.managed` | whether RocksDB memory is bounded by a budget (`false` for heap and for `memory.managed = false`) |
/// | `memory.budget_bytes` | total budget (per-slot budget × slots); `null` when unmanaged or heap |
/// | `memory.budget_per_slot_bytes` | the per-slot budget (`--memory` / `memory.managed-size` / `memory.fixed-per-slot`) |
/// | `memory.block_cache_capacity_bytes` | block cache capacity from the plan, all slots |
/// | `memory.write_buffer_manager_capacity_bytes` | write-buffer manager capacity from the plan, all slots |
/// | `memory.block_cache_bytes` | block cache usage at the end of the run (before the flush), including memtable reservations |
/// | `memory.block_cache_pinned_bytes` | the non-evictable part of that |
/// | `memory.memtable_bytes` | memtable bytes at the end of the run (`rocksdb.cur-size-all-mem-tables`) |
/// | `memory.write_buffer_manager_bytes` | memtable memory as the write-buffer manager counts it |
/// | `memory.wbm_charged_to_cache_bytes` | memtable memory charged into the block cache |
/// | `memory.table_readers_bytes` | table-reader memory outside the block cache |
/// | `memory.total_bytes` | memory inside the budget at the end of the run with every byte counted once: RocksDB (`MemoryReport::rocksdb_total_bytes`) plus the state cache (`MemoryReport::total_bytes`) |
/// | `memory.peak_bytes` | peak of that counted-once total, sampled every 16,384 records per slot and summed across slots |
/// | `memory.state_cache_bytes` | bytes held by the write-back state caches at the end (part of `total_bytes`) |
/// | `memory.state_cache_capacity_bytes` | the caches' capacity from the plan (`memory.state-cache-ratio` of the budget), all slots; `null` when unmanaged or heap |
/// | `memory.timer_buffer_bytes` | bytes held by RocksDB timers' write-back buffers at the end (part of `total_bytes`) |
/// | `memory.timer_buffer_capacity_bytes` | their capacity (`memory.timer-buffer-ratio` of the budget, taken from RocksDB's share once a slot's RocksDB timers open; 0 before and without them), all slots; `null` when unmanaged or heap |
/// | `memory.rss_bytes` | process resident set size at the end |
/// | `memory.rss_peak_bytes` | peak RSS among the samples |
/// | `memory.high_priority_pool_ratio_configured` | `memory.high-priority-pool-ratio` (`null` for heap) |
/// | `memory.high_priority_pool_ratio_effective` | the ratio the cache really uses (`null` when unmanaged) |
/// | `memory.note` | a sentence on how memory is (not) managed, or `null` |
/// | `memory.plan` | the per-slot memory plan (`cairn_memory::MemoryPlan`), or `null` |
/// | `ops` | operation counts: `value_rmw, value_put, list_append, list_read, list_trim, map_put, map_get, map_hit` |
/// | `checksum` | `{digest, entries, counter_total}` of the final state (see `workload::checksum`); `null` with `--no-checksum`. `update`: `counter_total == records`; `mixed`: `counter_total == ops.value_rmw` |
/// | `per_slot[]` | `{index, key_groups, records, working_dir, state_bytes_on_disk, memory_peak_bytes, memory}` with the slot's `MemoryReport` at the end of the run |
/// | `job_url` | `<checkpoint dir>/<job>` of this run's checkpoints (`null` with `--checkpoint-interval off`) |
/// | `upload_floor` | per checkpoint `{id, position, changed_keys, changed_bytes, uploaded_bytes, amplification}` and `median_amplification`: uploads against the serialized bytes of the entries changed since the previous checkpoint (`update`/`load` with checkpoints, else `null`) |
/// | `checkpoints[]` | per completed checkpoint: `{id, completed_at_ms, incremental_bytes, full_bytes, files_uploaded, files_reused, files_copied, bytes_copied, sync_ms, async_ms, upload_mb_per_s, rebase, files_reuploaded, bytes_reuploaded, space_amplification, compact_slots, kept_locally}`; `rebase` says why the checkpoint rebased (`null` if it did not); the last is the final checkpoint |
/// | `restored_from` | `{source, checkpoint_id, position, bytes_downloaded, download_s, slots[]}` with `--restore-from`, else `null`; `slots[]`: `{key_groups, path ("local"/"remote"), ms, bytes, lazy, local_rejected?, rescale?}` (`lazy`: SSTs fetched after the open, `checkpoint.restore-fetch = lazy`); `rescale` (a RocksDB checkpoint of other key groups): `{parts[]: {old_slot, key_groups, path ("base"/"ingest"/"insert"), ms, files_ingested, entries_inserted}, clip_ms}` |
/// | `savepoint` | with `--savepoint`: `{location, kind, checkpoint_id, parallelism, files, stored_bytes, entries, timers, seconds}`, else `null` |
/// | `state_cache` | the RocksDB backend's write-back state cache, all slots ([`CacheSummary`]); `null` when off or heap |
/// | `state_cache.{hits,misses,hit_rate}` | reads answered from the cache / from RocksDB, and `hits / (hits + misses)` |
/// | `state_cache.{evictions,evicted_dirty}` | entries evicted, and the dirty ones among them (written to RocksDB) |
/// | `state_cache.{dirty_flushes,dirty_flushed_entries}` | rounds of write-back because the dirty bound (`state-cache.max-dirty-bytes`, else `max-dirty-ratio`) was passed, and the entries they wrote |
/// | `state_cache.writes_cancelled` | pending writes dropped because their key was deleted before the write-back while RocksDB held nothing for it |
/// | `state_cache.checkpoint_flush_ms.{count,p50,p99,max,mean}` | the sync-phase cache flush of each (slot, checkpoint), in ms; `checkpoint_flushed_entries` entries in all |
/// | `state_cache.checkpoint_flush_ms_each[]` | every one of those flushes in ms, slot after slot, in checkpoint order |
/// | `state_cache.pre_flushed_entries` | entries the pre-flushes wrote back before their barriers |
/// | `state_cache.pre_flush_ms.{count,p50,p99,max,mean}` | each chunk of the pre-flush write-back (one per record after a slot sees a barrier ahead, `checkpoint.pre-flush`): each holds the slot's thread |
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Version of the binary.
    pub cairn_version: &'static str,
    /// The workload.
    pub workload: WorkloadKind,
    /// The backend.
    pub backend: BackendKind,
    /// Number of slots.
    pub slots: u32,
    /// Records processed.
    pub records: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Value size (`None` for `update`).
    pub value_size: Option<usize>,
    /// Seed.
    pub seed: u64,
    /// Key skew (`mixed` only).
    pub skew: Option<Skew>,
    /// Zipf exponent (zipf skew only).
    pub zipf_exponent: Option<f64>,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Absolute working directory.
    pub working_dir: String,
    /// Seconds to open the slots.
    pub open_s: f64,
    /// Seconds to process the records.
    pub elapsed_s: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// Seconds of the final flush.
    pub flush_s: f64,
    /// Seconds of the checksum scan.
    pub checksum_s: f64,
    /// Per-record latency.
    pub latency_us: LatencySummary,
    /// Bytes on disk after the flush.
    pub state_bytes_on_disk: u64,
    /// Sizes per state.
    pub per_state: Vec<StateSize>,
    /// Memory figures.
    pub memory: MemorySummary,
    /// Operation counts.
    pub ops: OpCounts,
    /// Checksum of the final state.
    pub checksum: Option<Checksum>,
    /// Per-slot figures.
    pub per_slot: Vec<SlotSummary>,
    /// The job's checkpoint directory (`<checkpoint dir>/<job>`; what `--restore-from` takes),
    /// `None` when checkpointing is off.
    pub job_url: Option<String>,
    /// Completed checkpoints, in order (the last one is the final checkpoint).
    pub checkpoints: Vec<cairn_engine::checkpoint::CheckpointReport>,
    /// The checkpoint this run continued from.
    pub restored_from: Option<RestoreSummary>,
    /// The savepoint written after the run (`--savepoint`).
    pub savepoint: Option<cairn_engine::savepoint::SavepointReport>,
    /// The state cache's counters (RocksDB with the cache on).
    pub state_cache: Option<CacheSummary>,
    /// Each checkpoint's upload against the bytes that changed since the previous one
    /// (`update` and `load` with checkpoints; see [`crate::upload_floor`]).
    pub upload_floor: Option<crate::upload_floor::UploadFloor>,
}

/// The write-back state caches of a run, all slots (see [`RunSummary`] for each field).
#[derive(Clone, Debug, Serialize)]
pub struct CacheSummary {
    /// Capacity, all slots.
    pub capacity_bytes: u64,
    /// Bytes held at the end.
    pub bytes: u64,
    /// Entries held at the end.
    pub entries: u64,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Entries evicted.
    pub evictions: u64,
    /// Dirty entries written on eviction.
    pub evicted_dirty: u64,
    /// Write-back rounds at the dirty bound.
    pub dirty_flushes: u64,
    /// Entries written by those rounds.
    pub dirty_flushed_entries: u64,
    /// Entries written by checkpoint flushes.
    pub checkpoint_flushed_entries: u64,
    /// Pending writes dropped by a delete before their write-back (RocksDB held nothing).
    pub writes_cancelled: u64,
    /// Sync-phase flush durations.
    pub checkpoint_flush_ms: DurationStats,
    /// Each sync-phase flush, in ms: per slot, in checkpoint order (slot after slot).
    pub checkpoint_flush_ms_each: Vec<f64>,
    /// Pre-flush write-back durations (one per chunk).
    pub pre_flush_ms: DurationStats,
    /// Entries the pre-flushes wrote.
    pub pre_flushed_entries: u64,
}

/// Percentiles of a set of durations, in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DurationStats {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl DurationStats {
    /// Nearest-rank percentiles of durations given in µs.
    pub fn from_micros(us: &[u64]) -> Self {
        if us.is_empty() {
            return Self::default();
        }
        let mut v = us.to_vec();
        v.sort_unstable();
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let ms = |x: u64| x as f64 / 1000.0;
        Self {
            count: v.len(),
            p50: ms(rank(0.5)),
            p99: ms(rank(0.99)),
            max: ms(v[v.len() - 1]),
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0,
        }
    }
}

/// `p50 … ms, p99 … ms, max … ms`, as the run summary prints durations.
impl std::fmt::Display for DurationStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50, self.p99, self.max
        )
    }
}

impl CacheSummary {
    /// The summary of the slots' merged counters.
    pub fn from_stats(s: &cairn_engine::backend::rocks::cache::CacheStats) -> Self {
        Self {
            capacity_bytes: s.capacity_bytes,
            bytes: s.bytes,
            entries: s.entries,
            hits: s.hits,
            misses: s.misses,
            hit_rate: s.hit_rate(),
            evictions: s.evictions,
            evicted_dirty: s.evicted_dirty,
            dirty_flushes: s.dirty_flushes,
            dirty_flushed_entries: s.dirty_flushed_entries,
            checkpoint_flushed_entries: s.checkpoint_flushed_entries,
            writes_cancelled: s.writes_cancelled,
            checkpoint_flush_ms: DurationStats::from_micros(&s.checkpoint_flush_us),
            checkpoint_flush_ms_each: s
                .checkpoint_flush_us
                .iter()
                .map(|&us| us as f64 / 1000.0)
                .collect(),
            pre_flush_ms: DurationStats::from_micros(&s.pre_flush_us),
            pre_flushed_entries: s.pre_flushed_entries,
        }
    }
}

/// The restore a run started with.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreSummary {
    /// `<storage>/<job>/chk-<id>`.
    pub source: String,
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The stream position the run continued at.
    pub position: u64,
    /// Bytes downloaded (verified).
    pub bytes_downloaded: u64,
    /// Seconds until every slot's files were local.
    pub download_s: f64,
    /// Per slot: restored from its local snapshot or from storage, time, bytes, and why the
    /// local snapshot was not used (`checkpoint.local-recovery`).
    pub slots: Vec<cairn_engine::checkpoint::SlotRestoreReport>,
}

/// Per-record latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Number of timed records.
    pub samples: u64,
    /// One record in this many was timed.
    pub sample_every: u64,
}

impl LatencySummary {
    /// From a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>, sample_every: u64) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            samples: h.len(),
            sample_every,
        }
    }
}

/// Memory figures of a run (see [`RunSummary`] for each field).
#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    /// Whether RocksDB memory is bounded.
    pub managed: bool,
    /// Total budget.
    pub budget_bytes: Option<u64>,
    /// Per-slot budget.
    pub budget_per_slot_bytes: Option<u64>,
    /// Block cache capacity, all slots.
    pub block_cache_capacity_bytes: Option<u64>,
    /// Write-buffer manager capacity, all slots.
    pub write_buffer_manager_capacity_bytes: Option<u64>,
    /// Block cache usage.
    pub block_cache_bytes: u64,
    /// Pinned block cache usage.
    pub block_cache_pinned_bytes: u64,
    /// Memtables.
    pub memtable_bytes: u64,
    /// Memtables as the write-buffer manager counts them.
    pub write_buffer_manager_bytes: u64,
    /// Memtable memory charged to the cache.
    pub wbm_charged_to_cache_bytes: u64,
    /// Table readers.
    pub table_readers_bytes: u64,
    /// Counted-once total at the end.
    pub total_bytes: u64,
    /// Peak of the counted-once total.
    pub peak_bytes: u64,
    /// State cache bytes at the end (part of `total_bytes`).
    pub state_cache_bytes: u64,
    /// State cache capacity, all slots.
    pub state_cache_capacity_bytes: Option<u64>,
    /// RocksDB timers' write-back buffers at the end (part of `total_bytes`).
    pub timer_buffer_bytes: u64,
    /// Their capacity, all slots.
    pub timer_buffer_capacity_bytes: Option<u64>,
    /// Process RSS at the end.
    pub rss_bytes: u64,
    /// Peak sampled RSS.
    pub rss_peak_bytes: u64,
    /// Configured high-priority pool ratio.
    pub high_priority_pool_ratio_configured: Option<f64>,
    /// Effective high-priority pool ratio.
    pub high_priority_pool_ratio_effective: Option<f64>,
    /// How memory is managed, in a sentence.
    pub note: Option<String>,
    /// The per-slot plan.
    pub plan: Option<MemoryPlan>,
}

/// One slot's figures.
#[derive(Clone, Debug, Serialize)]
pub struct SlotSummary {
    /// Slot index.
    pub index: u32,
    /// Its key groups, `[start, end]`.
    pub key_groups: String,
    /// Records it processed.
    pub records: u64,
    /// Its working directory.
    pub working_dir: String,
    /// Its bytes on disk.
    pub state_bytes_on_disk: u64,
    /// Peak of its counted-once RocksDB total.
    pub memory_peak_bytes: u64,
    /// Its memory at the end of the run.
    pub memory: MemoryReport,
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn opt_size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_string(), size)
}

/// Groups digits by thousands: `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl RunSummary {
    /// The human-readable summary table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let w = &mut o;
        let value = self
            .value_size
            .map_or_else(|| "u64 counter".to_string(), |v| format!("{v} B values"));
        let skew = match (self.skew, self.zipf_exponent) {
            (Some(Skew::Zipf), Some(s)) => format!(", zipf {s}"),
            (Some(Skew::Uniform), _) => ", uniform".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(
            w,
            "cairn run: {} workload on {} x {} slot(s), {} keys, {value}{skew}, seed {}",
            self.workload,
            self.backend,
            self.slots,
            thousands(self.keys),
            self.seed
        );
        let row = |w: &mut String, k: &str, v: String| {
            let _ = writeln!(w, "  {k:<28} {v}");
        };
        row(w, "records", thousands(self.records));
        row(
            w,
            "elapsed",
            format!(
                "{:.3} s (open {:.3} s, flush {:.3} s, checksum {:.3} s)",
                self.elapsed_s, self.open_s, self.flush_s, self.checksum_s
            ),
        );
        row(
            w,
            "throughput",
            format!(
                "{} records/s",
                thousands(self.records_per_sec.round() as u64)
            ),
        );
        let l = &self.latency_us;
        row(
            w,
            "latency per record",
            format!(
                "p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs (1 in {} timed)",
                l.p50, l.p99, l.p999, l.max, l.sample_every
            ),
        );
        let on_disk = if self.backend == BackendKind::Heap {
            format!(
                "{} (heap: state is in memory)",
                size(self.state_bytes_on_disk)
            )
        } else {
            size(self.state_bytes_on_disk)
        };
        row(w, "state on disk", on_disk);
        for s in &self.per_state {
            row(
                w,
                &format!("  {}", s.state),
                format!("{}, ~{} entries", size(s.bytes), thousands(s.entries)),
            );
        }
        let op = &self.ops;
        let mut ops = Vec::new();
        for (name, n) in [
            ("value rmw", op.value_rmw),
            ("value put", op.value_put),
            ("list append", op.list_append),
            ("list read", op.list_read),
            ("list trim", op.list_trim),
            ("map put", op.map_put),
            ("map get", op.map_get),
        ] {
            if n > 0 {
                ops.push(format!("{name} {}", thousands(n)));
            }
        }
        row(w, "operations", ops.join(", "));
        if let Some(c) = &self.checksum {
            let total = c.counter_total.map_or_else(String::new, |t| {
                format!(", counters sum to {}", thousands(t))
            });
            row(
                w,
                "checksum",
                format!("{} over {} entries{total}", c.digest, thousands(c.entries)),
            );
        }

        let m = &self.memory;
        if self.backend == BackendKind::RocksDb && m.managed {
            let _ = writeln!(
                w,
                "  {:<28} {:>12}   budget / capacity",
                "RocksDB memory (all slots)", "measured"
            );
            let mrow = |w: &mut String, k: &str, v: u64, b: String| {
                let line = format!("    {k:<26} {:>12}   {b}", size(v));
                let _ = writeln!(w, "{}", line.trim_end());
            };
            mrow(
                w,
                "block cache",
                m.block_cache_bytes,
                format!(
                    "{} capacity (incl. memtable reservations {})",
                    opt_size(m.block_cache_capacity_bytes),
                    size(m.wbm_charged_to_cache_bytes)
                ),
            );
            mrow(
                w,
                "memtables",
                m.memtable_bytes,
                format!(
                    "{} write-buffer manager",
                    opt_size(m.write_buffer_manager_capacity_bytes)
                ),
            );
            mrow(w, "table readers", m.table_readers_bytes, String::new());
            if let Some(cap) = m.state_cache_capacity_bytes.filter(|&c| c > 0) {
                mrow(
                    w,
                    "state cache",
                    m.state_cache_bytes,
                    format!("{} capacity", size(cap)),
                );
            }
            if let Some(cap) = m.timer_buffer_capacity_bytes.filter(|&c| c > 0) {
                mrow(
                    w,
                    "timer buffer",
                    m.timer_buffer_bytes,
                    format!("{} capacity", size(cap)),
                );
            }
            mrow(
                w,
                "total, counted once",
                m.total_bytes,
                format!("{} budget", opt_size(m.budget_bytes)),
            );
            let pct = m
                .budget_bytes
                .filter(|&b| b > 0)
                .map_or_else(String::new, |b| {
                    format!(
                        "({:.0} % of budget)",
                        m.peak_bytes as f64 * 100.0 / b as f64
                    )
                });
            mrow(w, "peak total (sampled)", m.peak_bytes, pct);
            if let (Some(c), Some(e)) = (
                m.high_priority_pool_ratio_configured,
                m.high_priority_pool_ratio_effective,
            ) {
                let why = m
                    .note
                    .as_ref()
                    .map_or_else(String::new, |n| format!(" ({n})"));
                row(
                    w,
                    "high-priority pool ratio",
                    format!("effective {e}, configured {c}{why}"),
                );
            }
        } else if self.backend == BackendKind::RocksDb {
            row(
                w,
                "RocksDB memory",
                "unmanaged: each RocksDB uses its own defaults".into(),
            );
            row(
                w,
                "  measured (counted once)",
                format!(
                    "block cache {}, memtables {}, table readers {}, total {}, peak {}",
                    size(m.block_cache_bytes),
                    size(m.memtable_bytes),
                    size(m.table_readers_bytes),
                    size(m.total_bytes),
                    size(m.peak_bytes)
                ),
            );
        } else {
            row(
                w,
                "memory",
                "heap backend: state lives on the Rust heap".into(),
            );
        }
        row(
            w,
            "process RSS",
            format!(
                "{} (peak sampled {})",
                size(m.rss_bytes),
                size(m.rss_peak_bytes)
            ),
        );
        row(w, "working directory", self.working_dir.clone());
        if let Some(sp) = &self.savepoint {
            row(
                w,
                "savepoint",
                format!(
                    "{} ({}, of chk-{}): {} entries, {} timers, {} stored in {:.2} s",
                    sp.location,
                    sp.kind.name(),
                    sp.checkpoint_id,
                    thousands(sp.entries),
                    thousands(sp.timers),
                    size(sp.stored_bytes),
                    sp.seconds
                ),
            );
        }
        if let Some(r) = &self.restored_from {
            row(
                w,
                "restored from",
                format!(
                    "{} at record {} ({} downloaded in {:.3} s)",
                    r.source,
                    thousands(r.position),
                    size(r.bytes_downloaded),
                    r.download_s
                ),
            );
            for (i, sr) in r.slots.iter().enumerate() {
                let path = match sr.path {
                    cairn_engine::checkpoint::RestoredVia::Local => "local snapshot",
                    cairn_engine::checkpoint::RestoredVia::Remote => "storage",
                };
                let why = sr
                    .local_rejected
                    .as_deref()
                    .map(|w| format!("; local not used: {w}"))
                    .unwrap_or_default();
                row(
                    w,
                    &format!("  slot {i}"),
                    format!("from {path}, {} in {:.0} ms{why}", size(sr.bytes), sr.ms),
                );
                if let Some(rescale) = &sr.rescale {
                    let parts: Vec<String> = rescale
                        .parts
                        .iter()
                        .map(|p| {
                            let how = match p.path {
                                RescalePath::Base => "base".to_string(),
                                RescalePath::Ingest => {
                                    format!("{} files ingested", p.files_ingested)
                                }
                                RescalePath::Insert => {
                                    format!("{} entries inserted", thousands(p.entries_inserted))
                                }
                            };
                            format!(
                                "old slot {} ({}): {how}, {:.0} ms",
                                p.old_slot, p.key_groups, p.ms
                            )
                        })
                        .collect();
                    row(
                        w,
                        "    rescaled",
                        format!("{}; clipped in {:.0} ms", parts.join("; "), rescale.clip_ms),
                    );
                }
            }
        }
        if let Some(c) = &self.state_cache {
            row(
                w,
                "state cache",
                format!(
                    "hit rate {:.1} % ({} hits, {} misses), {} entries",
                    c.hit_rate * 100.0,
                    thousands(c.hits),
                    thousands(c.misses),
                    thousands(c.entries)
                ),
            );
            row(
                w,
                "  write-back",
                format!(
                    "{} evictions ({} dirty), {} dirty-bound flushes ({} entries), {} writes cancelled",
                    thousands(c.evictions),
                    thousands(c.evicted_dirty),
                    thousands(c.dirty_flushes),
                    thousands(c.dirty_flushed_entries),
                    thousands(c.writes_cancelled)
                ),
            );
            let f = &c.checkpoint_flush_ms;
            if f.count > 0 {
                row(
                    w,
                    "  checkpoint flush",
                    format!(
                        "{f} over {} flushes ({} entries)",
                        f.count,
                        thousands(c.checkpoint_flushed_entries)
                    ),
                );
            }
            let f = &c.pre_flush_ms;
            if f.count > 0 {
                row(
                    w,
                    "  pre-flush write-back",
                    format!(
                        "{f} per chunk, {} chunks ({} entries)",
                        f.count,
                        thousands(c.pre_flushed_entries)
                    ),
                );
            }
        }
        if let Some(url) = &self.job_url {
            row(
                w,
                "checkpoints",
                format!("{url} (restore with --restore-from {url})"),
            );
        }
        if !self.checkpoints.is_empty() {
            let _ = writeln!(
                w,
                "  {:>8} {:>12} {:>12} {:>6} {:>6} {:>9} {:>9} {:>9}",
                "chk", "incremental", "full", "new", "reused", "sync ms", "async ms", "MB/s"
            );
            for c in &self.checkpoints {
                let _ = writeln!(
                    w,
                    "  {:>8} {:>12} {:>12} {:>6} {:>6} {:>9.2} {:>9.1} {:>9.1}",
                    format!("chk-{}", c.id),
                    size(c.incremental_bytes),
                    size(c.full_bytes),
                    c.files_uploaded + c.files_copied,
                    c.files_reused,
                    c.sync_ms,
                    c.async_ms,
                    c.upload_mb_per_s
                );
            }
            for c in &self.checkpoints {
                if let Some(why) = &c.rebase {
                    let _ = writeln!(w, "  chk-{} rebased: {why}", c.id);
                }
            }
        }
        if let Some(a) = self
            .upload_floor
            .as_ref()
            .and_then(|f| f.median_amplification)
        {
            row(
                w,
                "upload amplification",
                format!(
                    "{a:.2}x the changed entries' bytes (median over the checkpoints after the first)"
                ),
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::{DurationStats, thousands};

    #[test]
    fn duration_percentiles_use_nearest_rank() {
        let d = DurationStats::from_micros(&[3000, 1000, 2000, 100_000]);
        assert_eq!((d.count, d.p50, d.p99, d.max), (4, 2.0, 100.0, 100.0));
        assert_eq!(d.mean, 26.5);
        assert_eq!(DurationStats::from_micros(&[]).count, 0);
        assert_eq!(d.to_string(), "p50 2.00 ms, p99 100.00 ms, max 100.00 ms");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
