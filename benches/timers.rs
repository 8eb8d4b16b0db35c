//! Timer micro-benchmark: register + fire 1M event-time timers, heap timers against RocksDB
//! timers in the same run, through a slot's timer service (RocksDB timers in the slot's RocksDB,
//! with its options and memory budget).
//!
//! Two shapes: `windows` (timers of 1M keys spread over 20 timestamps, like the word count's
//! window ends) and `spread` (1M distinct timestamps). Rounds alternate heap and RocksDB, so the
//! ratio RocksDB/heap (target >= 0.5) holds on a shared, noisy machine; the median round is
//! reported. Heap memory per timer is measured with a counting allocator (bytes live after
//! registering, over the timers; for RocksDB timers this is the write-back buffer, the caches
//! and pending writes — RocksDB's own memory is not counted) next to the services' own
//! estimate (`TimerService::heap_bytes`, which bounds the buffer).
//!
//! `cargo test --release --bench timers -- --bench` (`BENCH_TIMERS` overrides the 1M timers,
//! `BENCH_TIMER_BUFFER_RATIO` the RocksDB timers' `memory.timer-buffer-ratio`,
//! `BENCH_TIMER_SHAPE=windows|spread` runs one shape);
//! without `--bench` (as under `cargo test --benches`) it runs 10k timers once as a smoke test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use cairn::engine::keygroup::assign_to_key_group;
use cairn::engine::{TimeDomain, Timer, TimerServiceKind};
use cairn::{BackendKind, CairnConfig, Slot};

/// Counts live heap bytes, to measure memory per heap timer.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout as given to us.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Windows,
    Spread,
}

struct Round {
    register_s: f64,
    fire_s: f64,
    live_bytes: isize,
    estimate_bytes: u64,
}

fn round(kind: TimerServiceKind, shape: Shape, n: u64) -> Round {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.timer_service = kind;
    cfg.state.working_dir = dir.path().to_path_buf();
    if let Some(r) = buffer_ratio() {
        cfg.memory.timer_buffer_ratio = r;
    }
    let mut slot = Slot::builder(&cfg).open().expect("open slot");
    let max_p = slot.max_parallelism();
    // Keys and key groups precomputed: the benchmark times the timer service only.
    let keys: Vec<([u8; 8], u16)> = (0..n)
        .map(|i| {
            let k = i.to_be_bytes();
            (k, assign_to_key_group(&k, max_p))
        })
        .collect();
    let ts_of = |i: u64| -> i64 {
        match shape {
            Shape::Windows => ((i * 20) / n) as i64 * 1_000 + 999,
            Shape::Spread => {
                (cairn::engine::keygroup::key_hash(&i.to_be_bytes()) % 1_000_000_000) as i64
            }
        }
    };
    let timers = slot.timers().expect("timer service");
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    for (i, (k, kg)) in keys.iter().enumerate() {
        timers
            .register(TimeDomain::EventTime, *kg, ts_of(i as u64), k, b"")
            .expect("register");
    }
    timers.flush().expect("flush");
    let register_s = t.elapsed().as_secs_f64();
    let live_bytes = LIVE.load(Ordering::Relaxed) - before;
    let estimate_bytes = timers.heap_bytes();
    let t = Instant::now();
    let mut out = Timer::default();
    let mut fired = 0u64;
    while timers
        .poll(TimeDomain::EventTime, i64::MAX, &mut out)
        .expect("poll")
    {
        fired += 1;
    }
    timers.flush().expect("flush");
    let fire_s = t.elapsed().as_secs_f64();
    assert_eq!(fired, n, "every timer fires once");
    Round {
        register_s,
        fire_s,
        live_bytes,
        estimate_bytes,
    }
}

/// Heap timers in a checkpoint of a RocksDB slot: the synchronous pause (a copy-on-write view:
/// `Arc` clones of every key group's queue), the asynchronous write of the timer file, and what
/// copy-on-write costs afterwards (the first registration into each key group copies its queue;
/// the sum is what a synchronous deep copy would have cost in the pause).
fn snapshot_round(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.timer_service = TimerServiceKind::Heap;
    cfg.state.working_dir = dir.path().to_path_buf();
    let mut slot = Slot::builder(&cfg).open().expect("open slot");
    let max_p = slot.max_parallelism();
    let timers = slot.timers().expect("timer service");
    for i in 0..n {
        let k = i.to_be_bytes();
        let ts = (cairn::engine::keygroup::key_hash(&i.to_be_bytes()) % 1_000_000) as i64;
        timers
            .register(
                TimeDomain::EventTime,
                assign_to_key_group(&k, max_p),
                ts,
                &k,
                b"",
            )
            .expect("register");
    }
    let sync = slot.snapshot_for_checkpoint(1).expect("snapshot");
    let sync_ms = sync.sync_duration.as_secs_f64() * 1e3;
    // First writes after the snapshot: one per key group, each copies that key group's queue.
    let timers = slot.timers().expect("timer service");
    let t = Instant::now();
    for kg in 0..max_p as u16 {
        timers
            .register(TimeDomain::EventTime, kg, -1, b"after", b"")
            .expect("register");
    }
    let cow_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let local = sync.materialize().expect("materialize");
    let async_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = std::fs::metadata(local.dir.join("timers.snapshot")).map_or(0, |m| m.len());
    println!(
        "snapshot of {n} heap timers (RocksDB backend): sync pause {sync_ms:.3} ms (includes the RocksDB native checkpoint), async timer file write {async_ms:.1} ms ({bytes} bytes), copy-on-write of all {max_p} key groups on first touch {cow_ms:.1} ms"
    );
}

/// `BENCH_TIMER_BUFFER_RATIO`: `memory.timer-buffer-ratio` for RocksDB timers (default: the
/// configuration's default).
fn buffer_ratio() -> Option<f64> {
    std::env::var("BENCH_TIMER_BUFFER_RATIO")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("BENCH_TIMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 10_000 });
    let rounds = if bench { 3 } else { 1 };
    let ratio = buffer_ratio().unwrap_or(CairnConfig::default().memory.timer_buffer_ratio);
    println!(
        "timers: register + fire {n} event-time timers, {rounds} alternating round(s); RocksDB timers' write-back buffer: memory.timer-buffer-ratio = {ratio} of the default budget"
    );
    println!(
        "{:<8} {:<8} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "shape", "service", "register/s", "fire/s", "total/s", "B/timer", "estimate"
    );
    snapshot_round(n);
    let only = std::env::var("BENCH_TIMER_SHAPE").ok();
    for shape in [Shape::Windows, Shape::Spread] {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{shape:?}").eq_ignore_ascii_case(o))
        {
            continue;
        }
        let mut totals = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, kind) in [TimerServiceKind::Heap, TimerServiceKind::RocksDb]
                .into_iter()
                .enumerate()
            {
                let r = round(kind, shape, n);
                let total = n as f64 / (r.register_s + r.fire_s);
                println!(
                    "{:<8} {:<8} {:>12.0} {:>12.0} {:>12.0} {:>10.0} {:>10.0}",
                    format!("{shape:?}").to_lowercase(),
                    kind.to_string(),
                    n as f64 / r.register_s,
                    n as f64 / r.fire_s,
                    total,
                    r.live_bytes as f64 / n as f64,
                    r.estimate_bytes as f64 / n as f64,
                );
                totals[i].push(total);
            }
        }
        let (heap, rocks) = (median(totals[0].clone()), median(totals[1].clone()));
        println!(
            "{:<8} median timers/s (register + fire): heap {heap:.0}, rocksdb {rocks:.0}, rocksdb/heap = {:.2} (target >= 0.5)",
            format!("{shape:?}").to_lowercase(),
            rocks / heap
        );
    }
}
