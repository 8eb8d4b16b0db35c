//! State-operation micro-benchmarks: Cairn's backends against raw rust-rocksdb in one run.
//!
//! - `value_update/*`: one get + one put of a 100-byte value over 1M preloaded keys, uniform
//!   keys from the same mix64 stream: Cairn's RocksDB backend, raw rust-rocksdb opened with
//!   exactly the slot's options (shared cache, write-buffer manager, WAL off), and the heap
//!   backend.
//! - `list_append/*` and `map_put/*`: Cairn's RocksDB and heap backends.
//!
//! After criterion, an interleaved A/B run (rounds of 200k updates, Cairn and raw alternating)
//! prints the ratio Cairn/raw of records per second; alternation keeps the ratio meaningful on a
//! shared, noisy machine. Target: >= 0.85.
//!
//! `BENCH_KEYS` overrides the 1M keys (e.g. for a quick run).
//!
//! Run with the release profile (a separate bench profile would compile RocksDB again):
//! `cargo test --release --bench state_ops -- --bench`.

use std::hint::black_box;
use std::time::Instant;

use cairn::engine::backend::rocks::slot_options;
use cairn::engine::{StateDescriptor, StateId, StateKind};
use cairn::{BackendKind, CairnConfig, Slot, VoidNamespace};
use criterion::{Criterion, criterion_group};
use rocksdb::{DBWithThreadMode, MultiThreaded, WriteOptions};

const VALUE_SIZE: usize = 100;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn key_for(g: u64, keys: u64) -> u64 {
    mix64(g ^ 42u64.wrapping_mul(0x9E3779B97F4A7C15)) % keys
}

fn keys() -> u64 {
    std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A Cairn slot with one raw value state preloaded with every key.
struct CairnValue {
    slot: Slot,
    state: StateId,
    key_buf: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl CairnValue {
    fn open(backend: BackendKind, n: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.working_dir = dir.path().to_path_buf();
        let mut slot = Slot::builder(&cfg).open().expect("open slot");
        let state = slot
            .register(&StateDescriptor::new("bench", "value", StateKind::Value))
            .expect("register");
        let mut me = Self {
            slot,
            state,
            key_buf: Vec::new(),
            _dir: dir,
        };
        let v = vec![7u8; VALUE_SIZE];
        for k in 0..n {
            let scope = me.slot.scope(&k, &VoidNamespace).expect("scope");
            me.slot.put(state, &scope, &v).expect("put");
        }
        me
    }

    #[inline]
    fn update(&mut self, key: u64) {
        let scope = self.slot.scope(&key, &VoidNamespace).expect("scope");
        let mut v = self
            .slot
            .get(self.state, &scope)
            .expect("get")
            .unwrap_or_else(|| vec![0; VALUE_SIZE]);
        v[0] = v[0].wrapping_add(1);
        self.slot.put(self.state, &scope, &v).expect("put");
        self.key_buf.clear();
    }
}

/// Plain rust-rocksdb with the slot's options; keys are the 8-byte big-endian key.
struct RawValue {
    db: DBWithThreadMode<MultiThreaded>,
    wo: WriteOptions,
    _memory: cairn::memory::SlotMemory,
    _dir: tempfile::TempDir,
}

impl RawValue {
    fn open(n: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = CairnConfig::default();
        let memory = cairn::memory::SlotMemory::build_shared(&cfg.memory).expect("memory");
        let (db_opts, cf_opts) = slot_options(&cfg.rocksdb, &memory, None);
        let db = DBWithThreadMode::<MultiThreaded>::open_cf_descriptors(
            &db_opts,
            dir.path(),
            [rocksdb::ColumnFamilyDescriptor::new("default", cf_opts)],
        )
        .expect("open raw");
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let v = vec![7u8; VALUE_SIZE];
        for k in 0..n {
            db.put_opt(k.to_be_bytes(), &v, &wo).expect("put");
        }
        Self {
            db,
            wo,
            _memory: memory,
            _dir: dir,
        }
    }

    #[inline]
    fn update(&mut self, key: u64) {
        let k = key.to_be_bytes();
        let mut v = self
            .db
            .get_pinned(k)
            .expect("get")
            .map(|p| p.to_vec())
            .unwrap_or_else(|| vec![0; VALUE_SIZE]);
        v[0] = v[0].wrapping_add(1);
        self.db.put_opt(k, &v, &self.wo).expect("put");
    }
}

fn value_update(c: &mut Criterion) {
    let n = keys();
    let mut g = c.benchmark_group("value_update");
    let mut raw = RawValue::open(n);
    let mut i = 0u64;
    g.bench_function("raw_rocksdb", |b| {
        b.iter(|| {
            raw.update(key_for(i, n));
            i += 1;
        })
    });
    drop(raw);
    let mut cairn = CairnValue::open(BackendKind::RocksDb, n);
    g.bench_function("cairn_rocksdb", |b| {
        b.iter(|| {
            cairn.update(key_for(i, n));
            i += 1;
        })
    });
    drop(cairn);
    let mut heap = CairnValue::open(BackendKind::Heap, n);
    g.bench_function("cairn_heap", |b| {
        b.iter(|| {
            heap.update(key_for(i, n));
            i += 1;
        })
    });
    g.finish();
}

fn list_and_map(c: &mut Criterion) {
    for backend in [BackendKind::RocksDb, BackendKind::Heap] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.working_dir = dir.path().to_path_buf();
        let mut slot = Slot::builder(&cfg).open().expect("open slot");
        let list = slot.list_state::<u64>("bench", "list").expect("list");
        let map = slot.map_state::<u64, u64>("bench", "map").expect("map");
        let keys = 100_000u64;
        let mut i = 0u64;
        c.bench_function(&format!("list_append/{backend}"), |b| {
            b.iter(|| {
                let scope = slot
                    .scope(&key_for(i, keys), &VoidNamespace)
                    .expect("scope");
                list.add(&mut slot, &scope, &i).expect("add");
                i += 1;
            })
        });
        c.bench_function(&format!("map_put/{backend}"), |b| {
            b.iter(|| {
                let scope = slot
                    .scope(&key_for(i, keys), &VoidNamespace)
                    .expect("scope");
                map.put(&mut slot, &scope, &(i % 16), &i).expect("put");
                i += 1;
            })
        });
    }
}

/// Interleaved rounds: the ratio of Cairn's to raw RocksDB's update rate.
fn ratio_report() {
    let n = keys();
    let rounds = 6;
    let per_round = 200_000u64;
    let mut raw = RawValue::open(n);
    let mut cairn = CairnValue::open(BackendKind::RocksDb, n);
    let mut heap = CairnValue::open(BackendKind::Heap, n);
    let (mut t_raw, mut t_cairn, mut t_heap) = (0f64, 0f64, 0f64);
    let mut g = 0u64;
    for _ in 0..rounds {
        let t = Instant::now();
        for j in 0..per_round {
            raw.update(key_for(g + j, n));
        }
        t_raw += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for j in 0..per_round {
            cairn.update(key_for(g + j, n));
        }
        t_cairn += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for j in 0..per_round {
            heap.update(key_for(g + j, n));
        }
        t_heap += t.elapsed().as_secs_f64();
        g += per_round;
    }
    let total = (rounds as u64 * per_round) as f64;
    let (r_raw, r_cairn, r_heap) = (total / t_raw, total / t_cairn, total / t_heap);
    black_box(&mut cairn.key_buf);
    println!(
        "\nvalue update (get + put, {VALUE_SIZE} B values, {n} keys), interleaved {rounds} x {per_round}:"
    );
    println!("  raw rust-rocksdb : {r_raw:>12.0} updates/s");
    println!("  cairn rocksdb    : {r_cairn:>12.0} updates/s");
    println!("  cairn heap       : {r_heap:>12.0} updates/s");
    println!(
        "  ratio cairn_rocksdb / raw_rocksdb = {:.3} (target >= 0.85)",
        r_cairn / r_raw
    );
    println!(
        "  ratio cairn_heap / raw_rocksdb    = {:.3}",
        r_heap / r_raw
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = value_update, list_and_map
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only in a real benchmark run, not when `cargo test` smoke-runs the benches.
    if std::env::args().any(|a| a == "--bench") {
        ratio_report();
    }
}
