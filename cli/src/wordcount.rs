//! The windowed word count (`cairn run --workload wordcount`, `cairn bench wordcount`): keyed
//! state plus one event-time timer per (word, window), the benchmark of timers.
//!
//! ## Stream (the Flink comparison's, by default)
//! Record `g` (`0..N`) is the word `"w" + key_for(g, K, seed)` (`--keys` = vocabulary `K`; with
//! `--skew zipf` the rank-1 of a [`Zipf`] draw instead) with event time
//! `ts = g * 1000 / events_per_sec` ms (integer division). Defaults: 5M words, 100k words,
//! 100k events per second of event time, 1 s windows, seed 42.
//!
//! ## Operator
//! Tumbling event-time windows of `window_ms`. Per record: the word's count in its window is
//! read and written back + 1 (a reducing state `wordcount/count`, key = the postcard-encoded
//! word, namespace = the window start as 8 big-endian bytes, value = the count as 8 big-endian
//! bytes, like Flink's `Long`), and an event-time timer is registered for `(word, window)` at
//! the window's last millisecond (`end - 1`, Flink's `window.maxTimestamp()`) when the count
//! was absent, i.e. at the window's first record of the word: the count exists exactly while
//! the timer does (firing clears it), so a later record would only register the same timer
//! again (37 % of the records of the default stream). Flink's `EventTimeTrigger` registers on
//! every element and relies on the duplicate collapsing; the outputs are the same, and the
//! timer services still collapse duplicates (their contract). The watermark follows event time: before a
//! record whose `ts` reaches the next multiple of `watermark_interval_ms` (50 ms), the
//! watermark advances to `ts - 1` and every due timer fires: the count is read, emitted and
//! cleared. At the end of the input the watermark jumps to `i64::MAX` and the rest fires.
//!
//! The operator pops due timers in batches of `FIRE_BATCH` (16) and prefetches their counts
//! ([`Slot::prefetch`]) before firing them: on the heap backend the counts' cache misses then
//! overlap each other and the work before them. (Prefetching each record's count a few records
//! ahead was tried and cost more than it saved: most records start a new count, which has no
//! entry to fetch.)
//!
//! ## Checkpoints
//! With `checkpoint.interval` set (2 s by default; the Flink comparison's Flink ran this job with
//! checkpoints every 3 s) the job is checkpointed like `cairn run`'s other workloads: barriers
//! at stream positions (see `checkpointing`), the counts and the timers of every slot in each
//! snapshot, and a final checkpoint after the last firing. A run cannot be resumed from them
//! (`--restore-from` is refused): the emitted output (the checksum) is not part of the
//! checkpoint, as a transactional sink's would be.
//!
//! ## Output checksum
//! Every emitted `(word, window start, count)` adds `xxh3(word bytes | start BE | count BE)`
//! (wrapping) to a sum: independent of firing order and of the number of slots, so every backend
//! × timer-service combination must give the same digest (a test checks it).
//!
//! ## Fire latency
//! With `--offered-rate R` records/s the source is throttled: record `g` is available at
//! `start + g / R`. A timer's fire latency is the time from the availability of the record that
//! carried its watermark to the timer's firing, so it includes any backlog: once the job cannot
//! keep up with `R`, latency grows without bound. Unthrottled (the default) every record is
//! available at once, and the latency is counted from the moment the watermark is processed
//! (how long the burst of firings takes to reach the timer). The clock is read once per
//! `CLOCK_EVERY` (64) firings (a read per firing was 3 % of the heap job's time), so a latency is
//! early by at most the time of that many firings (microseconds).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_engine::backend::Update;
use cairn_engine::keygroup::assign_to_key_group;
use cairn_engine::{
    BackendKind, CairnConfig, EngineError, ScopeKey, Slot, StateDescriptor, StateKind, TimeDomain,
    Timer, TimerServiceKind,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use cairn_engine::checkpoint::{
    CheckpointCoordinator, CheckpointReport, Checkpointer, new_job_name,
};

use crate::barriers::{self, BarrierCursor, Barriers};
use crate::report::CacheSummary;
use crate::run::RunError;
use crate::stream::{self, RecordRng, Zipf};
use crate::workload::{Skew, ZIPF_SALT};

/// The word-count stream and operator parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct WordcountSpec {
    /// Number of words `N`.
    pub records: u64,
    /// Vocabulary `K`.
    pub vocabulary: u64,
    /// Words per second of event time.
    pub events_per_sec: u64,
    /// Window length, ms.
    pub window_ms: i64,
    /// Event time between watermarks, ms.
    pub watermark_interval_ms: i64,
    /// Seed of the stream.
    pub seed: u64,
    /// Word distribution.
    pub skew: Skew,
    /// Zipf exponent (zipf skew only).
    pub zipf_exponent: f64,
    /// Throttle the source to this many records per second (all slots together); `None` =
    /// as fast as possible.
    pub offered_rate: Option<f64>,
}

impl Default for WordcountSpec {
    /// the Flink comparison's stream.
    fn default() -> Self {
        Self {
            records: 5_000_000,
            vocabulary: 100_000,
            events_per_sec: 100_000,
            window_ms: 1_000,
            watermark_interval_ms: 50,
            seed: 42,
            skew: Skew::Uniform,
            zipf_exponent: 0.99,
            offered_rate: None,
        }
    }
}

impl WordcountSpec {
    /// Checks the parameters; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.records == 0 {
            return Err("--records must be >= 1".into());
        }
        if self.vocabulary == 0 {
            return Err("--keys (the vocabulary) must be >= 1".into());
        }
        if self.events_per_sec == 0 {
            return Err("--events-per-sec must be >= 1".into());
        }
        if self.window_ms <= 0 || self.watermark_interval_ms <= 0 {
            return Err("--window-ms and --watermark-interval-ms must be >= 1".into());
        }
        if self
            .offered_rate
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err("--offered-rate must be > 0".into());
        }
        if self.skew == Skew::Zipf && Zipf::new(self.vocabulary, self.zipf_exponent).is_none() {
            return Err("--zipf-exponent must be > 0 and finite".into());
        }
        Ok(())
    }

    /// Event time of record `g`, ms.
    #[inline]
    pub fn event_time(&self, g: u64) -> i64 {
        match g.checked_mul(1000) {
            // A 64-bit division where it fits (a u128 one is a libcall, several times slower).
            Some(ms) => (ms / self.events_per_sec) as i64,
            None => (u128::from(g) * 1000 / u128::from(self.events_per_sec)) as i64,
        }
    }
}

/// Percentiles of the fire latency, ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FireLatency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Timers measured (every firing).
    pub samples: u64,
}

/// The run JSON of `cairn run --workload wordcount` (fields are only ever added).
#[derive(Clone, Debug, Serialize)]
pub struct WordcountSummary {
    /// Version of the binary.
    pub cairn_version: &'static str,
    /// Always `"wordcount"`.
    pub workload: &'static str,
    /// The state backend.
    pub backend: BackendKind,
    /// The timer service in force (heap for the heap backend).
    pub timer_service: TimerServiceKind,
    /// Number of slots.
    pub slots: u32,
    /// Words processed.
    pub records: u64,
    /// Vocabulary.
    pub vocabulary: u64,
    /// Words per second of event time.
    pub events_per_sec: u64,
    /// Window length, ms.
    pub window_ms: i64,
    /// Seed.
    pub seed: u64,
    /// Word distribution.
    pub skew: Skew,
    /// The source throttle, records/s (`null`: unthrottled).
    pub offered_rate: Option<f64>,
    /// Seconds from the first record to the last firing.
    pub elapsed_s: f64,
    /// Records per second (all slots).
    pub records_per_sec: f64,
    /// Order-independent digest of every emitted `(word, window, count)`, `0x`-hex.
    pub output_checksum: String,
    /// Windows emitted (one per (word, window)).
    pub windows_fired: u64,
    /// Sum of the emitted counts (equals `records`).
    pub counted_records: u64,
    /// Timer fire latency.
    pub fire_latency_ms: FireLatency,
    /// Bytes of state on disk at the end (RocksDB).
    pub state_bytes_on_disk: u64,
    /// `<checkpoint dir>/<job>` of this run's checkpoints (`null`: checkpoints off).
    pub job_url: Option<String>,
    /// Every completed checkpoint (the same reports as `cairn run`'s JSON); the last is the
    /// final one, taken after the last firing.
    pub checkpoints: Vec<CheckpointReport>,
    /// The RocksDB backend's state cache, all slots (as in `cairn run`'s JSON); `null` when
    /// off or heap.
    pub state_cache: Option<CacheSummary>,
}

impl WordcountSummary {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "cairn run: wordcount on {} backend with {} timers x {} slot(s), {} words, vocabulary {}, {} events/s, {} ms windows{}",
            self.backend,
            self.timer_service,
            self.slots,
            self.records,
            self.vocabulary,
            self.events_per_sec,
            self.window_ms,
            self.offered_rate
                .map_or_else(String::new, |r| format!(", offered {r:.0} records/s"))
        );
        let _ = writeln!(o, "  {:<22} {:.3} s", "elapsed", self.elapsed_s);
        let _ = writeln!(o, "  {:<22} {:.0}", "records/s", self.records_per_sec);
        let _ = writeln!(
            o,
            "  {:<22} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} timers)",
            "fire latency",
            self.fire_latency_ms.p50,
            self.fire_latency_ms.p99,
            self.fire_latency_ms.max,
            self.fire_latency_ms.samples
        );
        let _ = writeln!(
            o,
            "  {:<22} {} ({} windows, {} words counted)",
            "output checksum", self.output_checksum, self.windows_fired, self.counted_records
        );
        let _ = writeln!(o, "  {:<22} {}", "state on disk", self.state_bytes_on_disk);
        if let Some(c) = &self.state_cache {
            let _ = writeln!(
                o,
                "  {:<22} hit rate {:.1} %, {} writes cancelled, {} entries written at the dirty bound, {} evicted dirty",
                "state cache",
                c.hit_rate * 100.0,
                c.writes_cancelled,
                c.dirty_flushed_entries,
                c.evicted_dirty
            );
            if c.checkpoint_flush_ms.count > 0 || c.pre_flush_ms.count > 0 {
                let _ = writeln!(
                    o,
                    "  {:<22} sync-phase p50 {:.1} ms, max {:.1} ms; pre-flush chunk p50 {:.2} ms, max {:.2} ms",
                    "  cache write-back",
                    c.checkpoint_flush_ms.p50,
                    c.checkpoint_flush_ms.max,
                    c.pre_flush_ms.p50,
                    c.pre_flush_ms.max
                );
            }
        }
        if let Some(url) = &self.job_url {
            let mut sync: Vec<f64> = self.checkpoints.iter().map(|c| c.sync_ms).collect();
            sync.sort_by(f64::total_cmp);
            let uploaded: u64 = self.checkpoints.iter().map(|c| c.incremental_bytes).sum();
            let _ = writeln!(
                o,
                "  {:<22} {} completed to {url}, sync p50 {:.1} ms, max {:.1} ms, {:.1} MB uploaded",
                "checkpoints",
                self.checkpoints.len(),
                sync.get(sync.len() / 2).copied().unwrap_or(0.0),
                sync.last().copied().unwrap_or(0.0),
                uploaded as f64 / 1e6
            );
        }
        o
    }
}

/// What one slot thread hands back.
struct SlotOut {
    digest: u64,
    windows: u64,
    counted: u64,
    latency: Histogram<u64>,
    done: Instant,
    disk_bytes: u64,
    cache: Option<cairn_engine::backend::rocks::cache::CacheStats>,
}

/// The key of word `n`: postcard's encoding of the string `"w<n>"` (a one-byte varint length,
/// then the bytes; words are < 128 bytes), written into `out` in place (digits from the end: no
/// intermediate buffer to copy).
fn word_key_into(out: &mut Vec<u8>, n: u64) {
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    out.clear();
    out.resize(2 + digits, b'0');
    out[0] = (1 + digits) as u8;
    out[1] = b'w';
    let mut v = n;
    for d in out[2..].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

struct Source<'a> {
    spec: &'a WordcountSpec,
    zipf: Option<Zipf>,
}

impl Source<'_> {
    #[inline]
    fn word(&self, g: u64) -> u64 {
        match &self.zipf {
            Some(z) => z.sample(&mut RecordRng::new(g, self.spec.seed, ZIPF_SALT)) - 1,
            None => stream::key_for(g, self.spec.vocabulary, self.spec.seed),
        }
    }
}

/// Runs the word count on `slots` slots opened with `config` (one thread each; every slot
/// walks the whole stream and keeps the words of its key groups).
pub fn run(
    config: &CairnConfig,
    slots: u32,
    spec: &WordcountSpec,
) -> Result<WordcountSummary, RunError> {
    let mut opened = Vec::new();
    for i in 0..slots {
        let slot = Slot::builder(config)
            .slot(i, slots)
            .open()
            .map_err(|source| RunError::Open {
                slot: i,
                source: Box::new(source),
            })?;
        opened.push(slot);
    }
    let timer_service = config.state.effective_timer_service();
    // Periodic checkpoints as in `cairn run` (barriers at stream positions, see
    // `checkpointing`): the Flink comparison's Flink ran this job with checkpoints every 3 s.
    let ck_err = |phase| {
        move |source| RunError::Checkpoint {
            phase,
            source: Box::new(source),
        }
    };
    let mut coordinator = match config.checkpoint.interval {
        Some(_) => {
            let max_p = opened.first().map_or(0, Slot::max_parallelism);
            let cp = Checkpointer::open(&config.checkpoint, &new_job_name(), max_p)
                .map_err(ck_err("opening checkpoint storage"))?;
            Some(CheckpointCoordinator::new(cp, slots).map_err(ck_err("opening the coordinator"))?)
        }
        None => None,
    };
    let (mut barriers, replies) = Barriers::new(slots, coordinator.is_some());
    barriers.pre_flush = config.checkpoint.pre_flush;
    let job_url = coordinator.as_ref().map(|c| c.checkpointer().job_url());
    let abort = AtomicBool::new(false);
    let metrics = cairn_engine::Metrics::new();
    let start = Instant::now();
    let mut coordinated = Ok(());
    let results: Vec<Result<SlotOut, RunError>> = std::thread::scope(|s| {
        let (barriers, abort) = (&barriers, &abort);
        let handles: Vec<_> = opened
            .into_iter()
            .map(|slot| {
                s.spawn(move || {
                    let r = run_slot(slot, spec, slots, start, barriers);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                        barriers.slots_done.fetch_add(1, Ordering::AcqRel);
                    }
                    r
                })
            })
            .collect();
        if let Some(cp) = coordinator.as_mut() {
            coordinated =
                barriers::coordinate(cp, barriers, &replies, slots, spec.records, abort, &metrics);
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().unwrap_or(Err(RunError::Panicked(i as u32))))
            .collect()
    });
    let mut outs = Vec::new();
    for r in results {
        outs.push(r?);
    }
    coordinated.map_err(ck_err("checkpointing"))?;
    let mut latency = new_histogram();
    let (mut digest, mut windows, mut counted, mut disk) = (0u64, 0u64, 0u64, 0u64);
    let mut cache: Option<cairn_engine::backend::rocks::cache::CacheStats> = None;
    for o in &outs {
        if let Some(c) = &o.cache {
            cache.get_or_insert_with(Default::default).add(c);
        }
        digest = digest.wrapping_add(o.digest);
        windows += o.windows;
        counted += o.counted;
        disk += o.disk_bytes;
        let _ = latency.add(&o.latency);
    }
    let elapsed = outs
        .iter()
        .map(|o| o.done.duration_since(start))
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(WordcountSummary {
        cairn_version: env!("CARGO_PKG_VERSION"),
        workload: "wordcount",
        backend: config.state.backend,
        timer_service,
        slots,
        records: spec.records,
        vocabulary: spec.vocabulary,
        events_per_sec: spec.events_per_sec,
        window_ms: spec.window_ms,
        seed: spec.seed,
        skew: spec.skew,
        offered_rate: spec.offered_rate,
        elapsed_s: elapsed,
        records_per_sec: if elapsed > 0.0 {
            spec.records as f64 / elapsed
        } else {
            0.0
        },
        output_checksum: format!("{digest:#018x}"),
        windows_fired: windows,
        counted_records: counted,
        fire_latency_ms: FireLatency {
            p50: ms(latency.value_at_quantile(0.5)),
            p99: ms(latency.value_at_quantile(0.99)),
            max: ms(latency.max()),
            samples: latency.len(),
        },
        state_bytes_on_disk: disk,
        job_url,
        checkpoints: coordinator
            .as_ref()
            .map(|c| c.checkpointer().reports().to_vec())
            .unwrap_or_default(),
        state_cache: cache.as_ref().map(CacheSummary::from_stats),
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 1 h, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// The per-slot operator: state, timers, firing, and the output digest.
struct Operator {
    count: cairn_engine::backend::StateId,
    scope: ScopeKey,
    digest: u64,
    windows: u64,
    counted: u64,
    latency: Histogram<u64>,
    hash_buf: Vec<u8>,
    /// Timers popped ahead of firing, with their counts' scopes (see [`Operator::advance`]).
    batch: Vec<(Timer, ScopeKey)>,
}

impl Operator {
    /// Fires every timer `<= watermark`; `since` is when the watermark became available.
    fn advance(
        &mut self,
        slot: &mut Slot,
        watermark: i64,
        since: Instant,
    ) -> Result<(), EngineError> {
        let mut now = Instant::now();
        let mut fired = 0u32;
        let mut batch = std::mem::take(&mut self.batch);
        batch.resize_with(FIRE_BATCH, || {
            (Timer::default(), ScopeKey::new(0, 1, &[], &[]))
        });
        loop {
            // Pop a batch of due timers and prefetch their counts, then fire them: the count
            // lookups find their entries in the cache. Firing registers no timer here, so
            // popping ahead keeps the contract's firing order.
            let mut n = 0;
            while n < FIRE_BATCH {
                let (timer, scope) = &mut batch[n];
                if !slot.poll_timer(TimeDomain::EventTime, watermark, timer)? {
                    break;
                }
                slot.rescope_timer(scope, timer)?;
                slot.prefetch(self.count, scope);
                n += 1;
            }
            for (timer, scope) in &batch[..n] {
                // Read and clear the count in one step.
                let count = slot.update_with(self.count, scope, |v, _| {
                    (Update::Delete, decode_count(v).unwrap_or(0))
                })?;
                // Emit: (word bytes, window start, count) into the digest.
                let word = decode_word(&timer.key);
                self.hash_buf.clear();
                self.hash_buf.extend_from_slice(word);
                self.hash_buf.extend_from_slice(&timer.namespace);
                self.hash_buf.extend_from_slice(&count.to_be_bytes());
                self.digest = self
                    .digest
                    .wrapping_add(cairn_engine::keygroup::key_hash(&self.hash_buf));
                self.windows += 1;
                self.counted += count;
                fired += 1;
                if fired.is_multiple_of(CLOCK_EVERY) {
                    now = Instant::now();
                }
                let latency = now.saturating_duration_since(since);
                self.latency
                    .saturating_record(latency.as_nanos().max(1) as u64);
            }
            if n < FIRE_BATCH {
                break;
            }
        }
        self.batch = batch;
        Ok(())
    }
}

/// Firings between two reads of the clock for their latency (see the module doc).
const CLOCK_EVERY: u32 = 64;

/// Timers popped and prefetched before they fire (see [`Operator::advance`]).
const FIRE_BATCH: usize = 16;

/// A stored count (8 big-endian bytes).
fn decode_count(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// The word's bytes inside its postcard encoding (`varint len` + bytes).
fn decode_word(key: &[u8]) -> &[u8] {
    let skip = key.iter().position(|b| b & 0x80 == 0).map_or(0, |p| p + 1);
    &key[skip.min(key.len())..]
}

fn run_slot(
    mut slot: Slot,
    spec: &WordcountSpec,
    slots: u32,
    start: Instant,
    barriers: &Barriers,
) -> Result<SlotOut, RunError> {
    let index = slot.index().0;
    let err = |phase| {
        move |source| RunError::Slot {
            slot: index,
            phase,
            source: Box::new(source),
        }
    };
    let count = slot
        .register(&StateDescriptor::new(
            "wordcount",
            "count",
            StateKind::Reducing,
        ))
        .map_err(err("registering states"))?;
    slot.timers().map_err(err("opening the timer service"))?;
    let source = Source {
        spec,
        zipf: (spec.skew == Skew::Zipf)
            .then(|| Zipf::new(spec.vocabulary, spec.zipf_exponent))
            .flatten(),
    };
    let range = slot.key_groups();
    let max_p = slot.max_parallelism();
    let mut op = Operator {
        count,
        scope: ScopeKey::new(0, 1, &[], &[]),
        digest: 0,
        windows: 0,
        counted: 0,
        latency: new_histogram(),
        hash_buf: Vec::new(),
        batch: Vec::new(),
    };
    let mut key = Vec::with_capacity(24);
    let mut next_watermark_at = spec.watermark_interval_ms;
    let ns_per_record = spec.offered_rate.map(|r| 1e9 / r);
    let mut cursor = BarrierCursor::default();
    let position = &barriers.positions[index as usize];
    for g in 0..spec.records {
        if barriers.enabled {
            // A snapshot at `g` holds every record < g and the firings they caused.
            barriers.check(&mut slot, g, spec.records, &mut cursor);
            if g.is_multiple_of(barriers::POSITION_EVERY) {
                position.store(g, Ordering::Relaxed);
            }
        }
        let ts = spec.event_time(g);
        if ts >= next_watermark_at {
            // The record carrying the watermark became available at `since`.
            let since = match ns_per_record {
                Some(ns) => start + Duration::from_nanos((g as f64 * ns) as u64),
                None => Instant::now(),
            };
            op.advance(&mut slot, ts - 1, since)
                .map_err(err("firing timers"))?;
            next_watermark_at = (ts / spec.watermark_interval_ms + 1) * spec.watermark_interval_ms;
        }
        if let Some(ns) = ns_per_record
            && g % 64 == 0
        {
            let due = start + Duration::from_nanos((g as f64 * ns) as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        word_key_into(&mut key, source.word(g));
        if slots > 1 && !range.contains(assign_to_key_group(&key, max_p)) {
            continue;
        }
        let window = ts - ts.rem_euclid(spec.window_ms);
        slot.rescope_raw(&mut op.scope, &key, &window.to_be_bytes())
            .map_err(err("building a scope"))?;
        let new = slot
            .update_with(count, &op.scope, |v, out| {
                let n = decode_count(v);
                out.extend_from_slice(&(n.unwrap_or(0) + 1).to_be_bytes());
                (Update::Put, n.is_none())
            })
            .map_err(err("counting a word"))?;
        if new {
            // The window's first record of the word: its timer is new (see the module doc).
            slot.register_timer(
                TimeDomain::EventTime,
                &op.scope,
                window + spec.window_ms - 1,
            )
            .map_err(err("registering a timer"))?;
        }
    }
    let since = Instant::now();
    op.advance(&mut slot, i64::MAX, since)
        .map_err(err("firing the last timers"))?;
    let done = Instant::now();
    // Stay for the final checkpoint (taken once every slot has fired its last timers).
    barriers.finish(&mut slot, spec.records, &mut cursor);
    let cache = slot.cache_stats();
    slot.flush().map_err(err("flushing"))?;
    Ok(SlotOut {
        digest: op.digest,
        windows: op.windows,
        counted: op.counted,
        latency: op.latency,
        done,
        disk_bytes: slot.disk_bytes(),
        cache,
    })
}

/// `cairn bench wordcount` flags.
#[derive(Debug, clap::Args)]
pub struct WordcountBenchArgs {
    /// Offered input rates (records/s) to sweep, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50000,100000,150000,200000,300000,500000,800000,1200000,2000000"
    )]
    pub rates: Vec<f64>,
    /// Seconds of input per rate (records = rate x seconds, clamped to [200k, --max-records]).
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Most records per point (bounds the time of points far beyond a configuration's limit).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_records: u64,
    /// Records of the unthrottled run per configuration (its records/s is the limit).
    #[arg(long, default_value_t = 1_000_000)]
    pub unthrottled_records: u64,
    /// Where to work (a temporary directory under it is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: std::path::PathBuf,
    /// Output prefix: writes `<out>.csv`, `<out>.json` and `<out>.svg`.
    #[arg(long, default_value = "wordcount-sweep")]
    pub out: std::path::PathBuf,
}

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// `backend/timers`, e.g. `rocksdb/heap`.
    pub config: String,
    /// Offered rate, records/s (`null`: unthrottled).
    pub offered_rate: Option<f64>,
    /// Records of the point.
    pub records: u64,
    /// Achieved records/s.
    pub records_per_sec: f64,
    /// Fire latency, ms.
    pub fire_latency_ms: FireLatency,
    /// Output checksum (equal across configurations for equal record counts).
    pub output_checksum: String,
}

/// The configurations of the sweep: (backend, timer service). The heap backend always keeps
/// timers on the heap (like Flink's HashMapStateBackend), so heap x rocksdb timers is heap x heap
/// and is not run twice.
pub const SWEEP_CONFIGS: [(BackendKind, TimerServiceKind); 3] = [
    (BackendKind::Heap, TimerServiceKind::Heap),
    (BackendKind::RocksDb, TimerServiceKind::Heap),
    (BackendKind::RocksDb, TimerServiceKind::RocksDb),
];

/// Runs the sweep, prints a table and writes CSV, JSON and an SVG plot.
pub fn bench(a: &WordcountBenchArgs) -> Result<Vec<SweepPoint>, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&a.dir)?;
    let tmp = tempfile::tempdir_in(&a.dir)?;
    let mut points = Vec::new();
    println!(
        "{:<16} {:>12} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "config", "offered/s", "records", "achieved/s", "p50 ms", "p99 ms", "max ms"
    );
    for (i, (backend, timers)) in SWEEP_CONFIGS.into_iter().enumerate() {
        let mut config = CairnConfig::default();
        config.state.backend = backend;
        config.state.timer_service = timers;
        // Checkpoints at the default interval, as the Flink comparison's Flink ran with them.
        config.checkpoint.dir = tmp.path().join("checkpoints").display().to_string();
        let name = format!("{backend}/{timers}");
        let mut rates: Vec<Option<f64>> = vec![None];
        rates.extend(a.rates.iter().map(|r| Some(*r)));
        for (j, rate) in rates.into_iter().enumerate() {
            config.state.working_dir = tmp.path().join(format!("c{i}-r{j}"));
            let records = match rate {
                None => a.unthrottled_records,
                Some(r) => ((r * a.seconds) as u64).clamp(200_000, a.max_records.max(200_000)),
            };
            let spec = WordcountSpec {
                records,
                offered_rate: rate,
                ..WordcountSpec::default()
            };
            spec.validate()?;
            let s = run(&config, 1, &spec)?;
            let _ = std::fs::remove_dir_all(&config.state.working_dir);
            let p = SweepPoint {
                config: name.clone(),
                offered_rate: rate,
                records,
                records_per_sec: s.records_per_sec,
                fire_latency_ms: s.fire_latency_ms,
                output_checksum: s.output_checksum,
            };
            println!(
                "{:<16} {:>12} {:>9} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
                p.config,
                rate.map_or_else(|| "unthrottled".into(), |r| format!("{r:.0}")),
                p.records,
                p.records_per_sec,
                p.fire_latency_ms.p50,
                p.fire_latency_ms.p99,
                p.fire_latency_ms.max
            );
            points.push(p);
        }
    }
    let mut csv = String::from(
        "config,offered_rate,records,records_per_sec,fire_p50_ms,fire_p99_ms,fire_max_ms,output_checksum\n",
    );
    for p in &points {
        let _ = writeln!(
            csv,
            "{},{},{},{:.0},{:.3},{:.3},{:.3},{}",
            p.config,
            p.offered_rate
                .map_or_else(|| "unthrottled".into(), |r| format!("{r:.0}")),
            p.records,
            p.records_per_sec,
            p.fire_latency_ms.p50,
            p.fire_latency_ms.p99,
            p.fire_latency_ms.max,
            p.output_checksum
        );
    }
    let with_ext = |ext: &str| {
        let mut p = a.out.clone().into_os_string();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    std::fs::write(with_ext(".csv"), csv)?;
    std::fs::write(
        with_ext(".json"),
        serde_json::to_string_pretty(&points)? + "\n",
    )?;
    std::fs::write(with_ext(".svg"), svg_plot(&points))?;
    println!(
        "wrote {}, {} and {}",
        with_ext(".csv").display(),
        with_ext(".json").display(),
        with_ext(".svg").display()
    );
    Ok(points)
}

/// p99 fire latency against offered rate, log-log, one line per configuration (throttled points
/// only). Hand-written SVG: `plotters` would need a font backend for its labels.
pub fn svg_plot(points: &[SweepPoint]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 460.0, 70.0, 180.0, 30.0, 50.0);
    let pts: Vec<(&str, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            p.offered_rate
                .map(|r| (p.config.as_str(), r, p.fire_latency_ms.p99.max(0.01)))
        })
        .collect();
    let lg = |v: f64| v.log10();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(_, x, y) in &pts {
        x0 = x0.min(lg(x));
        x1 = x1.max(lg(x));
        y0 = y0.min(lg(y));
        y1 = y1.max(lg(y));
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (4.0, 6.0, 0.0, 3.0);
    }
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let px = |x: f64| left + (lg(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (lg(y) - y0) / (y1 - y0) * (h - top - bottom);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Word count: p99 timer fire latency vs offered rate</text>"#,
        (w - right + left) / 2.0
    );
    // Decade grid lines and labels.
    for d in x0 as i32..=x1 as i32 {
        let x = px(10f64.powi(d));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">1e{d}</text>"##,
            h - bottom,
            h - bottom + 16.0
        );
    }
    for d in y0 as i32..=y1 as i32 {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0,
            10f64.powi(d)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">offered rate (records/s, log)</text>"#,
        (w - right + left) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">p99 fire latency (ms, log)</text>"#,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0
    );
    let colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];
    let mut configs: Vec<&str> = pts.iter().map(|p| p.0).collect();
    configs.dedup();
    for (i, c) in configs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line: Vec<String> = pts
            .iter()
            .filter(|p| p.0 == *c)
            .map(|p| format!("{:.1},{:.1}", px(p.1), py(p.2)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for p in pts.iter().filter(|p| p.0 == *c) {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(p.1),
                py(p.2)
            );
        }
        let ly = top + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{c}</text>"#,
            w - right + 15.0,
            w - right + 40.0,
            w - right + 46.0,
            ly + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_event_times_follow_flink_anchor() {
        let spec = WordcountSpec::default();
        let mut w = Vec::new();
        word_key_into(&mut w, stream::key_for(0, 100_000, 42));
        assert_eq!(w, b"\x06w58542"); // key_for(0, 1M, 42) = 358542; mod 100k differs
        assert_eq!(
            w,
            cairn_engine::codec::encode("w58542", "t").unwrap_or_default()
        );
        assert_eq!(spec.event_time(0), 0);
        assert_eq!(spec.event_time(99), 0);
        assert_eq!(spec.event_time(100), 1);
        assert_eq!(spec.event_time(4_999_999), 49_999);
        word_key_into(&mut w, 0);
        assert_eq!(w, b"\x02w0");
        word_key_into(&mut w, 1_000_000_000_000);
        assert_eq!(decode_word(&w), b"w1000000000000");
        assert_eq!(decode_word(&[2, b'w', b'7']), b"w7");
    }

    #[test]
    fn svg_plot_has_one_line_per_config() {
        let p = |config: &str, rate: f64, p99: f64| SweepPoint {
            config: config.into(),
            offered_rate: Some(rate),
            records: 1,
            records_per_sec: rate,
            fire_latency_ms: FireLatency {
                p50: p99 / 2.0,
                p99,
                max: p99,
                samples: 1,
            },
            output_checksum: String::new(),
        };
        let svg = svg_plot(&[
            p("heap/heap", 1e5, 1.0),
            p("heap/heap", 1e6, 5.0),
            p("rocksdb/rocksdb", 1e5, 20.0),
            p("rocksdb/rocksdb", 1e6, 9000.0),
        ]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("rocksdb/rocksdb"));
    }
}
