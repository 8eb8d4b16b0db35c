//! RocksDB stays within the slot's memory budget while state grows far past it.
//!
//! One RocksDB slot with a 32 MiB budget and three states (value, map, list) takes more than ten
//! times its budget in 1 KiB values at scattered keys, then serves random reads of it. The memory
//! report is sampled every 2000 operations; its peak (block cache + memtables not charged to the
//! cache + table readers, each counted once) must stay within 110 % of the budget, and every
//! operation must succeed and read back what was written.
//!
//! `CAIRN_BUDGET_TEST_WRITE_MIB` overrides the amount written (default 330 MiB).

use std::collections::HashMap;
use std::time::Instant;

use bytesize::ByteSize;
use cairn::memory::MemoryReport;
use cairn::{BackendKind, CairnConfig, Slot, VoidNamespace};

const BUDGET: u64 = 32 << 20;
const VALUE_BYTES: usize = 1024;
const SAMPLE_EVERY: u64 = 2000;
const TOLERANCE: f64 = 1.1;

const VALUE_KEYS: u64 = 150_000;
const MAP_KEYS: u64 = 20_000;
const MAP_USER_KEYS: u64 = 64;
const LIST_KEYS: u64 = 40_000;

/// SplitMix64: a tiny deterministic generator, so a run is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// 1 KiB of incompressible bytes that start with `tag`, so a read can check what it got.
    fn payload(&mut self, tag: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(VALUE_BYTES);
        out.extend_from_slice(&tag.to_le_bytes());
        while out.len() < VALUE_BYTES {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(VALUE_BYTES);
        out
    }
}

fn tag_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
}

/// The largest figures seen over all samples.
#[derive(Default)]
struct Peak {
    samples: u64,
    total: u64,
    at: Option<MemoryReport>,
    rss: u64,
}

impl Peak {
    fn sample(&mut self, slot: &Slot) {
        let report = slot.memory_report();
        self.samples += 1;
        self.rss = self.rss.max(report.rss_bytes);
        if report.rocksdb_total_bytes() >= self.total {
            self.total = report.rocksdb_total_bytes();
            self.at = Some(report);
        }
    }
}

/// What a workload run measured.
struct Figures {
    writes: u64,
    write_time: std::time::Duration,
    reads: u64,
    read_time: std::time::Duration,
    disk: u64,
    peak: Peak,
}

/// Writes `write_mib` MiB of 1 KiB values over three states of a fresh RocksDB slot with
/// `config`, then reads a third as many at random, checking each read; samples memory throughout.
fn run_workload(
    mut config: CairnConfig,
    write_mib: u64,
) -> Result<Figures, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    config.state.backend = BackendKind::RocksDb;
    config.state.working_dir = dir.path().to_path_buf();
    let mut slot = Slot::builder(&config).open()?;

    let values = slot.value_state::<Vec<u8>>("budget", "values")?;
    let maps = slot.map_state::<u32, Vec<u8>>("budget", "maps")?;
    let events = slot.list_state::<Vec<u8>>("budget", "events")?;
    let mut peak = Peak::default();
    peak.sample(&slot);

    // What was written last, by tag, to check reads against.
    let mut value_tags: HashMap<u64, u64> = HashMap::new();
    let mut map_tags: HashMap<(u64, u32), u64> = HashMap::new();
    let mut list_lens: HashMap<u64, usize> = HashMap::new();

    let mut rng = Rng(0x5eed_cafe);
    let writes = write_mib * (1 << 20) / VALUE_BYTES as u64;
    let started = Instant::now();
    for op in 0..writes {
        let tag = rng.next();
        let payload = rng.payload(tag);
        match rng.below(100) {
            0..40 => {
                let key = rng.below(VALUE_KEYS);
                let scope = slot.scope(&key, &VoidNamespace)?;
                values.update(&mut slot, &scope, &payload)?;
                value_tags.insert(key, tag);
            }
            40..75 => {
                let key = rng.below(MAP_KEYS);
                let user_key = rng.below(MAP_USER_KEYS) as u32;
                let scope = slot.scope(&key, &VoidNamespace)?;
                maps.put(&mut slot, &scope, &user_key, &payload)?;
                map_tags.insert((key, user_key), tag);
            }
            _ => {
                let key = rng.below(LIST_KEYS);
                let scope = slot.scope(&key, &VoidNamespace)?;
                events.add(&mut slot, &scope, &payload)?;
                *list_lens.entry(key).or_default() += 1;
            }
        }
        if op % SAMPLE_EVERY == 0 {
            peak.sample(&slot);
        }
    }
    let write_time = started.elapsed();
    peak.sample(&slot);
    let disk = slot.disk_bytes();

    // Random reads of everything written, checked against the last write.
    let reads = writes / 3;
    let started = Instant::now();
    let value_keys: Vec<u64> = value_tags.keys().copied().collect();
    let map_keys: Vec<(u64, u32)> = map_tags.keys().copied().collect();
    let list_keys: Vec<u64> = list_lens.keys().copied().collect();
    for op in 0..reads {
        match rng.below(3) {
            0 => {
                let key = value_keys[rng.below(value_keys.len() as u64) as usize];
                let scope = slot.scope(&key, &VoidNamespace)?;
                let got = values.get(&mut slot, &scope)?.ok_or("value lost")?;
                assert_eq!((got.len(), tag_of(&got)), (VALUE_BYTES, value_tags[&key]));
            }
            1 => {
                let (key, user_key) = map_keys[rng.below(map_keys.len() as u64) as usize];
                let scope = slot.scope(&key, &VoidNamespace)?;
                let got = maps
                    .get(&mut slot, &scope, &user_key)?
                    .ok_or("map entry lost")?;
                assert_eq!(
                    (got.len(), tag_of(&got)),
                    (VALUE_BYTES, map_tags[&(key, user_key)])
                );
            }
            _ => {
                let key = list_keys[rng.below(list_keys.len() as u64) as usize];
                let scope = slot.scope(&key, &VoidNamespace)?;
                let got = events.get(&mut slot, &scope)?;
                assert_eq!(got.len(), list_lens[&key], "list of key {key}");
                assert!(got.iter().all(|e| e.len() == VALUE_BYTES));
            }
        }
        if op % SAMPLE_EVERY == 0 {
            peak.sample(&slot);
        }
    }
    let read_time = started.elapsed();
    peak.sample(&slot);

    Ok(Figures {
        writes,
        write_time,
        reads,
        read_time,
        disk,
        peak,
    })
}

#[test]
fn rocksdb_memory_stays_within_budget_while_writing_ten_times_the_budget()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let overridden: Option<u64> = std::env::var("CAIRN_BUDGET_TEST_WRITE_MIB")
        .ok()
        .and_then(|v| v.parse().ok());
    let write_mib = overridden.unwrap_or(330);
    let mut config = CairnConfig::default();
    config.memory.managed_size = ByteSize::b(BUDGET);
    let Figures {
        writes,
        write_time,
        reads,
        read_time,
        disk,
        peak,
    } = run_workload(config, write_mib)?;
    assert_eq!(peak.at.as_ref().and_then(|r| r.budget_bytes), Some(BUDGET));
    let ratio = peak.total as f64 / BUDGET as f64;
    eprintln!(
        "memory_budget: wrote {writes} x {VALUE_BYTES} B = {} in {write_time:.1?} ({} on disk), \
         {reads} random reads in {read_time:.1?}; {} samples",
        ByteSize::b(writes * VALUE_BYTES as u64),
        ByteSize::b(disk),
        peak.samples,
    );
    eprintln!(
        "memory_budget: budget {} peak rocksdb_total_bytes {} ({} bytes) = {ratio:.3} x budget; \
         peak RSS {}",
        ByteSize::b(BUDGET),
        ByteSize::b(peak.total),
        peak.total,
        ByteSize::b(peak.rss),
    );
    if let Some(at) = &peak.at {
        eprintln!(
            "memory_budget: at peak: block cache {} (pinned {}), memtables {}, write-buffer \
             manager {}, charged to cache {}, table readers {}",
            ByteSize::b(at.block_cache_bytes),
            ByteSize::b(at.block_cache_pinned_bytes),
            ByteSize::b(at.memtable_bytes),
            ByteSize::b(at.write_buffer_manager_bytes),
            ByteSize::b(at.wbm_charged_to_cache_bytes),
            ByteSize::b(at.table_readers_bytes),
        );
    }

    if overridden.is_none() {
        assert!(
            writes * VALUE_BYTES as u64 >= 10 * BUDGET,
            "the test must write at least ten times the budget"
        );
        assert!(
            disk > BUDGET,
            "state must outgrow memory: {disk} bytes on disk"
        );
    }
    assert!(
        ratio <= TOLERANCE,
        "peak RocksDB memory {} is {ratio:.3} x the {} budget (allowed {TOLERANCE})",
        peak.total,
        BUDGET
    );
    Ok(())
}

/// With `memory.strict-capacity-limit = true`, a flush that cannot cache a block fails with
/// `MemoryLimit`, RocksDB stops the DB with a background error, and the next write that the
/// write-buffer manager stalls waits forever (`DBImpl::WriteBufferManagerStallWrites`): the
/// caller never gets an error. Found by this suite while `true` was the default (it is `false`
/// now, and documented as experimental). A write must either succeed or return an error; this
/// test gives the workload 60 s (it needs under 10 s) and fails if it is still blocked.
/// Regression: writers used to stall forever (the write-buffer manager waited on a flush that
/// the full cache had made fail); the manager no longer stalls under the strict limit.
#[test]
fn strict_capacity_limit_failures_surface_as_errors_not_hangs() {
    let mut config = CairnConfig::default();
    config.memory.managed_size = ByteSize::b(BUDGET);
    config.memory.strict_capacity_limit = true;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = run_workload(config, 330).map(|f| f.peak.total);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Ok(peak)) => eprintln!("strict: completed, peak {}", ByteSize::b(peak)),
        Ok(Err(e)) => eprintln!("strict: failed with an error, as it may: {e}"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the workload panicked (a read returned wrong data?)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "a write has been blocked for 60 s: the background error never reached the caller"
        ),
    }
}
