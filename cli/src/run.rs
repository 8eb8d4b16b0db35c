//! Runs a workload on `N` slots, one thread each, and measures it.
//!
//! ## Routing
//! Every slot thread walks the same deterministic stream `g = 0..records`, computes the record's
//! key, serializes it with the engine's codec (postcard, exactly as [`Slot::scope`] does), takes
//! its key group with [`assign_to_key_group`] and processes only the records whose key group lies
//! in its slot's range. This is what a host engine's `keyBy` does: a record goes to the one
//! parallel instance that owns its key group, so every key lives in exactly one slot and the final
//! state does not depend on the number of slots.
//!
//! ## Measurements
//! - `elapsed`: from the start of the slot threads until the last one has processed its records
//!   (opening the slots, the final flush and the checksum scan are timed separately).
//! - Latency: the state-access time of one record (building its scope plus its state operations),
//!   timed with [`Instant`] for one record in [`LATENCY_SAMPLE_EVERY`] of each slot's records, so
//!   the clock reads do not slow the heap backend down noticeably.
//! - Memory: every [`MEMORY_SAMPLE_EVERY`] records a slot takes its [`MemoryReport`], stores its
//!   counted-once RocksDB total, and raises the run's peak to the sum of every slot's latest total
//!   (the other slots' figures are at most one sample interval old). The end-of-run figures are
//!   taken after the last record and before the flush.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_engine::checkpoint::{
    CheckpointCoordinator, CheckpointLocation, Checkpointer, new_job_name,
};
use cairn_engine::keygroup::assign_to_key_group;
use cairn_engine::savepoint::{SavepointKind, SavepointLocation};
use cairn_engine::{
    BackendKind, CairnConfig, EngineError, KeyGroupRange, Metrics, Slot, StateSize,
};
use cairn_memory::{MemoryPlan, MemoryReport};
use hdrhistogram::Histogram;

use crate::barriers::{self, BarrierCursor, Barriers};
use crate::report::{LatencySummary, MemorySummary, RestoreSummary, RunSummary, SlotSummary};
use crate::upload_floor;
use crate::workload::{self, Checksum, Driver, OpCounts, WorkloadKind, WorkloadSpec};

/// One record in this many (per slot) has its latency timed.
pub const LATENCY_SAMPLE_EVERY: u64 = 16;
/// A slot samples its memory every this many of its records.
pub const MEMORY_SAMPLE_EVERY: u64 = 16_384;
/// Slots report progress in batches of this many records.
const PROGRESS_BATCH: u64 = 1024;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The workload.
    pub spec: WorkloadSpec,
    /// Number of slots (threads).
    pub slots: u32,
    /// The configuration every slot is opened with.
    pub config: CairnConfig,
    /// Whether to scan the final state for a checksum.
    pub checksum: bool,
    /// Continue from this checkpoint or savepoint (`--restore-from`).
    pub restore_from: Option<CheckpointLocation>,
    /// Stop with a savepoint (`--savepoint`): the final checkpoint is a savepoint request to
    /// the coordinator, written here in this format.
    pub savepoint: Option<(SavepointLocation, SavepointKind)>,
    /// Where the run publishes its metrics (records, memory, checkpoints, restore); share it
    /// with a `/metrics` endpoint to watch the run.
    pub metrics: Arc<Metrics>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A slot could not be opened.
    #[error("cannot open slot {slot}: {source}")]
    Open {
        /// The slot index.
        slot: u32,
        /// The engine's error.
        source: Box<EngineError>,
    },
    /// A state operation failed during the run.
    #[error("slot {slot}, {phase}: {source}")]
    Slot {
        /// The slot index.
        slot: u32,
        /// What the slot was doing.
        phase: &'static str,
        /// The engine's error.
        source: Box<EngineError>,
    },
    /// Checkpointing or restore failed.
    #[error("{phase}: {source}")]
    Checkpoint {
        /// What failed.
        phase: &'static str,
        /// The engine's error.
        source: Box<EngineError>,
    },
    /// A slot thread panicked (a bug).
    #[error("slot {0}'s thread panicked")]
    Panicked(u32),
}

/// What one slot thread hands back.
struct SlotOutcome {
    index: u32,
    key_groups: String,
    records: u64,
    ops: OpCounts,
    histogram: Histogram<u64>,
    processing_done: Instant,
    flush: Duration,
    checksum_time: Duration,
    end_memory: MemoryReport,
    peak_total: u64,
    disk_bytes: u64,
    sizes: Vec<StateSize>,
    checksum: Option<Checksum>,
    cache: Option<cairn_engine::backend::rocks::cache::CacheStats>,
}

/// Shared between the slot threads and the progress loop.
struct Shared {
    processed: AtomicU64,
    abort: AtomicBool,
    latest_total: Vec<AtomicU64>,
    peak_total: AtomicU64,
    peak_rss: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn sample(&self, slot: usize, report: &MemoryReport) -> u64 {
        self.metrics.observe_memory(slot as u32, report);
        // RocksDB plus the state cache: everything the budget covers.
        let total = report.total_bytes();
        self.latest_total[slot].store(total, Ordering::Relaxed);
        let sum = self
            .latest_total
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum();
        self.peak_total.fetch_max(sum, Ordering::Relaxed);
        self.peak_rss.fetch_max(report.rss_bytes, Ordering::Relaxed);
        total
    }
}

/// Runs the workload. `on_progress` is called from the calling thread about every 100 ms with
/// the number of records processed so far (all slots together).
pub fn run(opts: &RunOptions, on_progress: &dyn Fn(u64, &str)) -> Result<RunSummary, RunError> {
    let n = opts.slots;
    let ck_err = |phase| {
        move |source| RunError::Checkpoint {
            phase,
            source: Box::new(source),
        }
    };
    let open_start = Instant::now();
    let checkpointing = opts.config.checkpoint.interval.is_some();
    let max_p = opts
        .config
        .max_parallelism_for(n)
        .map_err(|source| RunError::Open {
            slot: 0,
            source: Box::new(source),
        })?;
    let mut checkpointer = if checkpointing || opts.restore_from.is_some() {
        Some(
            Checkpointer::open(&opts.config.checkpoint, &new_job_name(), max_p)
                .map_err(ck_err("opening checkpoint storage"))?,
        )
    } else {
        None
    };
    let mut start_position = 0u64;
    let mut restore_summary = None;
    let mut restores: Vec<Option<cairn_engine::RestoredFiles>> = (0..n).map(|_| None).collect();
    if let (Some(src), Some(cp)) = (&opts.restore_from, checkpointer.as_mut()) {
        let t = Instant::now();
        let restored = cp.resume_from(src).map_err(ck_err("restore"))?;
        start_position = restored
            .metadata
            .properties
            .get(barriers::POSITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut bytes = 0;
        let mut slot_reports = Vec::new();
        std::fs::create_dir_all(&opts.config.state.working_dir).map_err(|e| {
            RunError::Checkpoint {
                phase: "restore",
                source: Box::new(EngineError::Io {
                    op: "create working directory".into(),
                    source: e,
                }),
            }
        })?;
        for (i, r) in restores.iter_mut().enumerate() {
            let range = KeyGroupRange::for_slot(max_p, n, i as u32)
                .map_err(|e| ck_err("restore")(EngineError::from(e)))?;
            let dest = opts
                .config
                .state
                .working_dir
                .join(format!("restore-slot-{i}"));
            let slot_dir = opts.config.state.working_dir.join(format!("slot-{i}"));
            let (files, report) = cp
                .fetch_slot_files(&restored, range, &slot_dir, &dest)
                .map_err(ck_err("restore"))?;
            bytes += report.bytes;
            slot_reports.push(report);
            *r = Some(files);
        }
        opts.metrics.restored(t.elapsed().as_secs_f64(), bytes);
        restore_summary = Some(RestoreSummary {
            source: if restored.is_savepoint() {
                format!(
                    "savepoint {}/{} (of chk-{})",
                    src.storage_url, src.job, restored.metadata.checkpoint_id
                )
            } else {
                format!(
                    "{}/{}/chk-{}",
                    src.storage_url, src.job, restored.metadata.checkpoint_id
                )
            },
            checkpoint_id: restored.metadata.checkpoint_id,
            position: start_position,
            bytes_downloaded: bytes,
            download_s: t.elapsed().as_secs_f64(),
            slots: slot_reports,
        });
    }
    let mut slots = Vec::with_capacity(n as usize);
    for (i, restore) in (0..n).zip(restores) {
        let mut b = Slot::builder(&opts.config).slot(i, n);
        if let Some(r) = restore {
            b = b.restore(r);
        }
        let slot = b.open().map_err(|source| RunError::Open {
            slot: i,
            source: Box::new(source),
        })?;
        // Heap snapshots were read; RocksDB files were moved into place.
        let _ = std::fs::remove_dir_all(
            opts.config
                .state
                .working_dir
                .join(format!("restore-slot-{i}")),
        );
        if let (Some(summary), Some(rescale)) = (restore_summary.as_mut(), slot.rescale_report()) {
            summary.slots[i as usize].rescale = Some(rescale.clone());
        }
        slots.push(slot);
    }
    let open_time = open_start.elapsed();
    let (mut barriers, replies) = Barriers::new(n, checkpointing);
    barriers.pre_flush = opts.config.checkpoint.pre_flush;
    barriers.final_savepoint = opts
        .savepoint
        .clone()
        .map(|(target, format)| (target, format, opts.config.clone()));
    // Restored (above) through the checkpointer; checkpoints are the engine coordinator's.
    let mut coordinator = match checkpointer.take().filter(|_| checkpointing) {
        Some(cp) => {
            Some(CheckpointCoordinator::new(cp, n).map_err(ck_err("opening the coordinator"))?)
        }
        None => None,
    };
    let job_url = coordinator.as_ref().map(|c| c.checkpointer().job_url());
    let max_parallelism = slots.first().map_or(0, Slot::max_parallelism);
    let working_dirs: Vec<PathBuf> = slots
        .iter()
        .map(|s| std::path::absolute(s.working_dir()).unwrap_or_else(|_| s.working_dir().into()))
        .collect();

    let shared = Shared {
        processed: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        latest_total: (0..n).map(|_| AtomicU64::new(0)).collect(),
        peak_total: AtomicU64::new(0),
        peak_rss: AtomicU64::new(0),
        metrics: Arc::clone(&opts.metrics),
    };
    let start = Instant::now();
    let mut coordinator_result: Result<(), EngineError> = Ok(());
    let results: Vec<Result<SlotOutcome, RunError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .into_iter()
            .map(|slot| {
                let shared = &shared;
                let barriers = &barriers;
                std::thread::Builder::new()
                    .name(format!("cairn-slot-{}", slot.index().0))
                    .spawn_scoped(scope, move || {
                        let r = run_slot(opts, slot, shared, barriers, start_position);
                        if r.is_err() {
                            shared.abort.store(true, Ordering::Relaxed);
                            barriers.slots_done.fetch_add(1, Ordering::AcqRel);
                        }
                        r
                    })
            })
            .collect();
        let coordinator = match coordinator.as_mut() {
            Some(cp) => {
                let (barriers, shared) = (&barriers, &shared);
                let records = opts.spec.records;
                Some(scope.spawn(move || {
                    let r = barriers::coordinate(
                        cp,
                        barriers,
                        &replies,
                        n,
                        records,
                        &shared.abort,
                        &shared.metrics,
                    );
                    if r.is_err() {
                        shared.abort.store(true, Ordering::Relaxed);
                    }
                    r
                }))
            }
            None => None,
        };
        loop {
            let last = barriers.last.lock().map(|l| l.clone()).unwrap_or_default();
            on_progress(shared.processed.load(Ordering::Relaxed), &last);
            let running = handles
                .iter()
                .any(|h| h.as_ref().is_ok_and(|h| !h.is_finished()));
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(c) = coordinator {
            coordinator_result = c.join().unwrap_or_else(|_| {
                Err(EngineError::InvalidArgument(
                    "checkpoint coordinator panicked".into(),
                ))
            });
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h {
                Ok(h) => h.join().unwrap_or(Err(RunError::Panicked(i as u32))),
                Err(e) => Err(RunError::Slot {
                    slot: i as u32,
                    phase: "starting its thread",
                    source: Box::new(EngineError::Io {
                        op: "spawn slot thread".into(),
                        source: e,
                    }),
                }),
            })
            .collect()
    });
    on_progress(shared.processed.load(Ordering::Relaxed), "");

    let mut outcomes = Vec::with_capacity(results.len());
    for r in results {
        outcomes.push(r?);
    }
    coordinator_result.map_err(ck_err("checkpointing"))?;
    let mut summary = summarize(
        opts,
        outcomes,
        &shared,
        start,
        open_time,
        max_parallelism,
        &working_dirs,
    );
    summary.checkpoints = coordinator
        .as_ref()
        .map(|c| c.checkpointer().reports().to_vec())
        .unwrap_or_default();
    let positions = barriers.positions_by_id();
    let completed: Vec<(u64, u64, u64)> = summary
        .checkpoints
        .iter()
        .filter_map(|r| {
            let pos = positions.iter().find(|(id, _)| *id == r.id)?.1;
            Some((r.id, pos.min(opts.spec.records), r.incremental_bytes))
        })
        .collect();
    if !completed.is_empty() {
        summary.upload_floor =
            upload_floor::compute(&opts.spec, start_position, max_parallelism, &completed);
    }
    summary.job_url = job_url;
    summary.restored_from = restore_summary;
    summary.savepoint = barriers.savepoint.lock().ok().and_then(|mut s| s.take());
    Ok(summary)
}

fn run_slot(
    opts: &RunOptions,
    mut slot: Slot,
    shared: &Shared,
    barriers: &Barriers,
    start_position: u64,
) -> Result<SlotOutcome, RunError> {
    let index = slot.index().0;
    let err = |phase| {
        move |source| RunError::Slot {
            slot: index,
            phase,
            source: Box::new(source),
        }
    };
    let mut driver = Driver::new(&opts.spec, &mut slot).map_err(err("registering states"))?;
    let range = slot.key_groups();
    let max_parallelism = slot.max_parallelism();
    // 1 ns .. 60 s, 3 significant digits.
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let mut peak_total = 0u64;
    let mut key_bytes = Vec::with_capacity(10);
    let mut processed = 0u64;
    let mut unreported = 0u64;
    let latency = shared.metrics.record_latency(index);
    let records_counter = shared.metrics.records_counter(index);

    let records = opts.spec.records;
    let mut last_barrier = BarrierCursor::default();
    // One scope, re-encoded per record: no allocation on the hot path.
    let mut scope = cairn_engine::ScopeKey::new(0, 1, &[], &[]);
    for g in start_position..records {
        if barriers.enabled {
            barriers.check(&mut slot, g, records, &mut last_barrier);
        }
        let key = driver.key(g);
        cairn_engine::codec::encode_into(&mut key_bytes, &key, "<key>")
            .map_err(err("encoding a key"))?;
        if !range.contains(assign_to_key_group(&key_bytes, max_parallelism)) {
            continue;
        }
        let timed = processed.is_multiple_of(LATENCY_SAMPLE_EVERY);
        let t0 = timed.then(Instant::now);
        // The namespace is VoidNamespace, which encodes to no bytes.
        slot.rescope_raw(&mut scope, &key_bytes, &[])
            .map_err(err("building a scope"))?;
        driver
            .apply(&mut slot, g, key, &scope)
            .map_err(err("processing a record"))?;
        if let Some(t0) = t0 {
            let elapsed = t0.elapsed();
            histogram.saturating_record(elapsed.as_nanos().max(1) as u64);
            latency.observe(elapsed.as_secs_f64());
        }
        processed += 1;
        unreported += 1;
        if unreported == PROGRESS_BATCH {
            barriers.positions[index as usize].store(g, Ordering::Relaxed);
            shared.processed.fetch_add(unreported, Ordering::Relaxed);
            records_counter.inc_by(unreported);
            unreported = 0;
            if shared.abort.load(Ordering::Relaxed) {
                break;
            }
        }
        if processed.is_multiple_of(MEMORY_SAMPLE_EVERY) {
            peak_total = peak_total.max(shared.sample(index as usize, &slot.memory_report()));
            if let Some(c) = slot.cache_stats() {
                shared.metrics.observe_cache(index, &c);
            }
            if let Some(m) = slot.native_metrics() {
                shared.metrics.observe_native(index, &m);
            }
        }
    }
    shared.processed.fetch_add(unreported, Ordering::Relaxed);
    records_counter.inc_by(unreported);
    let processing_done = Instant::now();
    // Stay for the final checkpoint (taken once every slot is at the end of the stream).
    barriers.finish(&mut slot, records, &mut last_barrier);
    let end_memory = slot.memory_report();
    if let Some(c) = slot.cache_stats() {
        shared.metrics.observe_cache(index, &c);
    }
    if let Some(m) = slot.native_metrics() {
        shared.metrics.observe_native(index, &m);
    }
    peak_total = peak_total.max(shared.sample(index as usize, &end_memory));
    // After the final checkpoint, before the flush below empties the dirty set.
    let cache = slot.cache_stats();

    let t = Instant::now();
    slot.flush().map_err(err("flushing"))?;
    let flush = t.elapsed();
    let disk_bytes = slot.disk_bytes();
    let sizes = slot.state_sizes();

    let t = Instant::now();
    let checksum = if opts.checksum {
        Some(workload::checksum(&mut slot, &driver).map_err(err("computing the checksum"))?)
    } else {
        None
    };
    let checksum_time = t.elapsed();

    Ok(SlotOutcome {
        index,
        key_groups: range.to_string(),
        records: processed,
        ops: driver.ops,
        histogram,
        processing_done,
        flush,
        checksum_time,
        end_memory,
        peak_total,
        disk_bytes,
        sizes,
        checksum,
        cache,
    })
}

fn summarize(
    opts: &RunOptions,
    outcomes: Vec<SlotOutcome>,
    shared: &Shared,
    start: Instant,
    open_time: Duration,
    max_parallelism: u32,
    working_dirs: &[PathBuf],
) -> RunSummary {
    let spec = &opts.spec;
    let config = &opts.config;
    let rocksdb = config.state.backend == BackendKind::RocksDb;
    let elapsed = outcomes
        .iter()
        .map(|o| o.processing_done.duration_since(start))
        .max()
        .unwrap_or_default();
    let records: u64 = outcomes.iter().map(|o| o.records).sum();

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let mut ops = OpCounts::default();
    let mut per_state: Vec<StateSize> = Vec::new();
    let mut mem = MemoryReport::default();
    for o in &outcomes {
        // Same bounds on both sides: adding cannot fail.
        let _ = histogram.add(&o.histogram);
        ops.add(&o.ops);
        for s in &o.sizes {
            match per_state.iter_mut().find(|p| p.state == s.state) {
                Some(p) => {
                    p.bytes += s.bytes;
                    p.entries += s.entries;
                }
                None => per_state.push(s.clone()),
            }
        }
        let r = &o.end_memory;
        mem.block_cache_bytes += r.block_cache_bytes;
        mem.block_cache_pinned_bytes += r.block_cache_pinned_bytes;
        mem.memtable_bytes += r.memtable_bytes;
        mem.write_buffer_manager_bytes += r.write_buffer_manager_bytes;
        mem.wbm_charged_to_cache_bytes += r.wbm_charged_to_cache_bytes;
        mem.table_readers_bytes += r.table_readers_bytes;
        mem.state_cache_bytes += r.state_cache_bytes;
        mem.timer_buffer_bytes += r.timer_buffer_bytes;
        mem.timer_buffer_capacity_bytes += r.timer_buffer_capacity_bytes;
        mem.rss_bytes = mem.rss_bytes.max(r.rss_bytes);
    }
    let total_bytes: u64 = outcomes.iter().map(|o| o.end_memory.total_bytes()).sum();

    // The plan is the same for every slot; heap slots have no RocksDB memory.
    let plan = if rocksdb {
        MemoryPlan::from_config(&config.memory).ok().flatten()
    } else {
        None
    };
    let slots = u64::from(opts.slots);
    let memory = MemorySummary {
        managed: rocksdb && plan.is_some(),
        budget_bytes: plan.as_ref().map(|p| p.budget_bytes * slots),
        budget_per_slot_bytes: plan.as_ref().map(|p| p.budget_bytes),
        block_cache_capacity_bytes: plan.as_ref().map(|p| p.block_cache_bytes * slots),
        write_buffer_manager_capacity_bytes: plan
            .as_ref()
            .map(|p| p.write_buffer_manager_bytes * slots),
        block_cache_bytes: mem.block_cache_bytes,
        block_cache_pinned_bytes: mem.block_cache_pinned_bytes,
        memtable_bytes: mem.memtable_bytes,
        write_buffer_manager_bytes: mem.write_buffer_manager_bytes,
        wbm_charged_to_cache_bytes: mem.wbm_charged_to_cache_bytes,
        table_readers_bytes: mem.table_readers_bytes,
        total_bytes,
        peak_bytes: shared.peak_total.load(Ordering::Relaxed).max(total_bytes),
        state_cache_bytes: mem.state_cache_bytes,
        state_cache_capacity_bytes: plan.as_ref().map(|p| p.state_cache_bytes * slots),
        timer_buffer_bytes: mem.timer_buffer_bytes,
        timer_buffer_capacity_bytes: plan.as_ref().map(|_| mem.timer_buffer_capacity_bytes),
        rss_bytes: cairn_memory::process_rss_bytes().max(mem.rss_bytes),
        rss_peak_bytes: shared.peak_rss.load(Ordering::Relaxed).max(mem.rss_bytes),
        high_priority_pool_ratio_configured: rocksdb
            .then_some(config.memory.high_priority_pool_ratio),
        high_priority_pool_ratio_effective: plan
            .as_ref()
            .map(|p| p.high_priority_pool_ratio_effective),
        note: if !rocksdb {
            Some("heap backend: state lives on the Rust heap; no RocksDB memory".into())
        } else if plan.is_none() {
            Some("unmanaged: each RocksDB uses its own defaults".into())
        } else {
            plan.as_ref().and_then(MemoryPlan::high_priority_pool_note)
        },
        plan: plan.clone(),
    };

    let checksum = if opts.checksum {
        Some(Checksum::combine(
            outcomes.iter().filter_map(|o| o.checksum.as_ref()),
        ))
    } else {
        None
    };

    let elapsed_s = elapsed.as_secs_f64();
    let working_dir = std::path::absolute(&config.state.working_dir)
        .unwrap_or_else(|_| config.state.working_dir.clone());
    RunSummary {
        cairn_version: env!("CARGO_PKG_VERSION"),
        workload: spec.kind,
        backend: config.state.backend,
        slots: opts.slots,
        records,
        keys: spec.keys,
        value_size: (spec.kind != WorkloadKind::Update).then_some(spec.value_size),
        seed: spec.seed,
        skew: (spec.kind == WorkloadKind::Mixed).then_some(spec.skew),
        zipf_exponent: (spec.kind == WorkloadKind::Mixed
            && spec.skew == crate::workload::Skew::Zipf)
            .then_some(spec.zipf_exponent),
        max_parallelism,
        working_dir: working_dir.display().to_string(),
        open_s: open_time.as_secs_f64(),
        elapsed_s,
        records_per_sec: if elapsed_s > 0.0 {
            records as f64 / elapsed_s
        } else {
            0.0
        },
        flush_s: outcomes
            .iter()
            .map(|o| o.flush)
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
        checksum_s: outcomes
            .iter()
            .map(|o| o.checksum_time)
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
        latency_us: LatencySummary::from_histogram(&histogram, LATENCY_SAMPLE_EVERY),
        state_bytes_on_disk: outcomes.iter().map(|o| o.disk_bytes).sum(),
        per_state,
        memory,
        ops,
        checksum,
        per_slot: outcomes
            .iter()
            .zip(working_dirs)
            .map(|(o, dir)| SlotSummary {
                index: o.index,
                key_groups: o.key_groups.clone(),
                records: o.records,
                working_dir: dir.display().to_string(),
                state_bytes_on_disk: o.disk_bytes,
                memory_peak_bytes: o.peak_total,
                memory: o.end_memory.clone(),
            })
            .collect(),
        job_url: None,
        checkpoints: Vec::new(),
        restored_from: None,
        savepoint: None,
        upload_floor: None,
        state_cache: {
            let mut stats = outcomes.iter().filter_map(|o| o.cache.as_ref()).peekable();
            stats.peek().is_some().then(|| {
                let mut all = cairn_engine::backend::rocks::cache::CacheStats::default();
                stats.for_each(|s| all.add(s));
                crate::report::CacheSummary::from_stats(&all)
            })
        },
    }
}
