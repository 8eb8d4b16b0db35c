//! Does a slot's RocksDB memory stay within its budget, and what does a strict cache do?
//!
//! Opens a MultiThreaded RocksDB with "default" + 3 column families, all in one small budget,
//! writes 10x the budget of ~1 KB random values (WAL off, as in Flink) and reads them back at
//! random from two threads, sampling [`MemoryReport::collect`] all along. With Cairn's default
//! settings the peak must stay within 110 % of the budget and no operation may fail. The run with
//! `strict-capacity-limit = true` is printed for comparison only: it is why that setting is off by
//! default (a strict cache fails compactions with `MemoryLimit`, which stops the DB).

use std::error::Error;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use cairn_memory::{MemoryConfig, MemoryReport, SlotMemory};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBWithThreadMode, ErrorKind, MultiThreaded, Options,
    WriteOptions,
};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
type Db = DBWithThreadMode<MultiThreaded>;

const BUDGET: u64 = 32 * 1024 * 1024;
const VALUE_LEN: usize = 1000;
/// 10x the budget of values.
const KEYS: u64 = 10 * BUDGET / VALUE_LEN as u64;
const READS_PER_THREAD: u64 = 100_000;
const CF_NAMES: [&str; 4] = ["default", "cf_a", "cf_b", "cf_c"];
/// A write stalled this long counts as stuck: the test gives up writing instead of hanging.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// The two tests measure memory and RSS, so they must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// splitmix64: a bijection on u64, so distinct indexes give distinct keys in random order.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key(i: u64) -> [u8; 8] {
    mix(i).to_be_bytes()
}

fn cf_of(i: u64) -> &'static str {
    CF_NAMES[(i % CF_NAMES.len() as u64) as usize]
}

/// Incompressible value whose first 8 bytes identify the key, so reads can be verified.
fn value(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&i.to_be_bytes());
    let mut state = mix(i ^ 0x5eed);
    while buf.len() < VALUE_LEN {
        state = mix(state);
        buf.extend_from_slice(&state.to_le_bytes());
    }
    buf.truncate(VALUE_LEN);
}

fn open(dir: &std::path::Path, mem: &SlotMemory) -> Result<Db> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    mem.apply_to_db_options(&mut db_opts);
    // Pitfall: without an explicit "default" descriptor RocksDB opens it with default options,
    // outside the budget.
    let cfs = CF_NAMES.map(|name| {
        let mut cf_opts = Options::default();
        mem.apply_to_cf_options(&mut cf_opts, &mut BlockBasedOptions::default());
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    Ok(Db::open_cf_descriptors(&db_opts, dir, cfs)?)
}

/// Peak figures over all samples.
#[derive(Debug, Default)]
struct Peaks {
    samples: u64,
    total: u64,
    at_peak: MemoryReport,
    block_cache: u64,
    pinned: u64,
    memtables: u64,
    wbm: u64,
    uncharged_memtables: u64,
    table_readers: u64,
    rss: u64,
}

impl Peaks {
    fn add(&mut self, r: MemoryReport) {
        self.samples += 1;
        self.block_cache = self.block_cache.max(r.block_cache_bytes);
        self.pinned = self.pinned.max(r.block_cache_pinned_bytes);
        self.memtables = self.memtables.max(r.memtable_bytes);
        self.wbm = self.wbm.max(r.write_buffer_manager_bytes);
        self.uncharged_memtables = self.uncharged_memtables.max(
            r.memtable_bytes
                .max(r.write_buffer_manager_bytes)
                .saturating_sub(r.wbm_charged_to_cache_bytes),
        );
        self.table_readers = self.table_readers.max(r.table_readers_bytes);
        self.rss = self.rss.max(r.rss_bytes);
        if r.rocksdb_total_bytes() > self.total {
            self.total = r.rocksdb_total_bytes();
            self.at_peak = r;
        }
    }
}

struct Outcome {
    peaks: Peaks,
    keys_written: u64,
    write_failures: u64,
    read_failures: u64,
    first_failure: Option<String>,
}

fn run(strict_capacity_limit: bool) -> Result<Outcome> {
    let mut config = MemoryConfig::default();
    config.managed_size = ByteSize(BUDGET);
    config.strict_capacity_limit = strict_capacity_limit;
    let mem = SlotMemory::build_shared(&config)?;
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), &mem)?;

    let peaks = Mutex::new(Peaks::default());
    let stop = AtomicBool::new(false);
    let write_failures = AtomicU64::new(0);
    let read_failures = AtomicU64::new(0);
    let first_failure = Mutex::new(None::<String>);
    let fail = |counter: &AtomicU64, what: String| {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = first_failure.lock() {
            first.get_or_insert(what);
        }
    };
    let sample = || {
        let report = MemoryReport::collect(&db, &CF_NAMES, &mem);
        if let Ok(mut peaks) = peaks.lock() {
            peaks.add(report);
        }
    };

    let mut keys_written = 0;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sample();
                std::thread::sleep(Duration::from_millis(2));
            }
        });

        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        // A write-buffer-manager stall returns `Incomplete` instead of blocking, so a DB that stops
        // after a background error makes this test fail instead of hang; the retry loop below
        // waits like a blocking write would.
        write_opts.set_no_slowdown(true);
        let handles = CF_NAMES.map(|name| db.cf_handle(name));
        let mut buf = Vec::with_capacity(VALUE_LEN);
        'write: for i in 0..KEYS {
            let Some(cf) = &handles[(i % CF_NAMES.len() as u64) as usize] else {
                return Err(format!("column family {} is not open", cf_of(i)).into());
            };
            value(i, &mut buf);
            let mut stalled_since = None;
            loop {
                match db.put_cf_opt(cf, key(i), &buf, &write_opts) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::Incomplete => {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > STUCK_AFTER {
                            fail(
                                &write_failures,
                                format!("put {i}: stalled for {STUCK_AFTER:?}"),
                            );
                            break 'write;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        // The DB stopped (background error): every further write fails the same.
                        fail(&write_failures, format!("put {i}: {e}"));
                        break 'write;
                    }
                }
            }
            keys_written = i + 1;
            if i % 4096 == 0 {
                sample();
            }
        }
        let wrote = started.elapsed();

        let readers: Vec<_> = (0..2u64)
            .map(|t| {
                let (db, fail, read_failures, peaks, mem) =
                    (&db, &fail, &read_failures, &peaks, &mem);
                let keys_written = keys_written;
                scope.spawn(move || {
                    let mut state = mix(t + 1);
                    let mut expected = Vec::with_capacity(VALUE_LEN);
                    for n in 0..READS_PER_THREAD {
                        state = mix(state);
                        let i = state % keys_written.max(1);
                        let Some(cf) = db.cf_handle(cf_of(i)) else {
                            fail(read_failures, format!("cf of {i} not open"));
                            continue;
                        };
                        value(i, &mut expected);
                        match db.get_pinned_cf(&cf, key(i)) {
                            Ok(Some(v)) if *v == expected[..] => {}
                            Ok(Some(_)) => fail(read_failures, format!("get {i}: wrong value")),
                            Ok(None) => fail(read_failures, format!("get {i}: missing")),
                            Err(e) => fail(read_failures, format!("get {i}: {e}")),
                        }
                        if n % 4096 == 0 {
                            let report = MemoryReport::collect(db, &CF_NAMES, mem);
                            if let Ok(mut peaks) = peaks.lock() {
                                peaks.add(report);
                            }
                        }
                    }
                })
            })
            .collect();
        for reader in readers {
            if reader.join().is_err() {
                return Err("reader thread panicked".into());
            }
        }
        stop.store(true, Ordering::Relaxed);
        eprintln!(
            "strict={strict_capacity_limit}: wrote {} of {} keys ({}) in {:.1?}, read {} in {:.1?}",
            keys_written,
            KEYS,
            ByteSize(keys_written * VALUE_LEN as u64),
            wrote,
            2 * READS_PER_THREAD,
            started.elapsed() - wrote
        );
        Ok(())
    })?;
    sample();

    let peaks = peaks.into_inner().map_err(|_| "sampler panicked")?;
    let first_failure = first_failure.into_inner().map_err(|_| "poisoned")?;
    Ok(Outcome {
        peaks,
        keys_written,
        write_failures: write_failures.into_inner(),
        read_failures: read_failures.into_inner(),
        first_failure,
    })
}

fn print(label: &str, outcome: &Outcome) {
    let p = &outcome.peaks;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{label}: budget {:.1} MiB, peak rocksdb_total {:.2} MiB = {:.3}x budget over {} samples \
         (at peak: cache {:.2}, memtables {:.2}, wbm {:.2}, charged {:.2}, table readers {:.2} MiB); \
         per-part peaks: cache {:.2}, pinned {:.2}, memtables {:.2}, wbm {:.2}, uncharged memtables {:.2}, \
         table readers {:.2} MiB; peak RSS {:.1} MiB; failures: {} writes, {} reads{}",
        mib(BUDGET),
        mib(p.total),
        p.total as f64 / BUDGET as f64,
        p.samples,
        mib(p.at_peak.block_cache_bytes),
        mib(p.at_peak.memtable_bytes),
        mib(p.at_peak.write_buffer_manager_bytes),
        mib(p.at_peak.wbm_charged_to_cache_bytes),
        mib(p.at_peak.table_readers_bytes),
        mib(p.block_cache),
        mib(p.pinned),
        mib(p.memtables),
        mib(p.wbm),
        mib(p.uncharged_memtables),
        mib(p.table_readers),
        mib(p.rss),
        outcome.write_failures,
        outcome.read_failures,
        outcome
            .first_failure
            .as_deref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default(),
    );
}

#[test]
fn default_budget_holds_under_10x_writes_and_random_reads() -> Result<()> {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = run(MemoryConfig::default().strict_capacity_limit)?;
    print("default settings", &outcome);
    assert_eq!(outcome.write_failures, 0, "{:?}", outcome.first_failure);
    assert_eq!(outcome.read_failures, 0, "{:?}", outcome.first_failure);
    assert_eq!(outcome.keys_written, KEYS);
    let limit = BUDGET + BUDGET / 10;
    assert!(
        outcome.peaks.total <= limit,
        "peak {} > 1.1 x budget {}: {:?}",
        outcome.peaks.total,
        BUDGET,
        outcome.peaks
    );
    Ok(())
}

/// Measures the alternative to the default; asserts only that it ran.
#[test]
fn strict_capacity_limit_for_comparison() -> Result<()> {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let strict = !MemoryConfig::default().strict_capacity_limit;
    let outcome = run(strict)?;
    print(&format!("strict-capacity-limit = {strict}"), &outcome);
    assert!(outcome.peaks.samples > 0);
    Ok(())
}
