//! The heap and RocksDB backends are interchangeable: random operation sequences give the same
//! reads on both, and the same reads as a plain in-test model (`BTreeMap`s), and leave the same
//! entries in every key group.
//!
//! RocksDB runs with its default write-back state cache, without it, and with a tiny cache that
//! evicts on nearly every write (one `#[test]` each, same sequences).
//!
//! Seeded: the run uses `PROPTEST_RNG_SEED` when set, else a fixed seed, and a failure prints the
//! seed and the shrunk operation sequence. `PROPTEST_CASES` overrides the number of cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cairn::engine::backend::list_codec;
use cairn::engine::codec;
use cairn::engine::{ScopeKey, StateEntry};
use cairn::{BackendKind, CairnConfig, ListState, MapState, Slot, ValueState};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestError, TestRunner,
};
use serde::Serialize;

/// Seed used when `PROPTEST_RNG_SEED` is not set.
const DEFAULT_SEED: u64 = 0x00ca_1a5e_ed00_0001;
/// Cases when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 128;
const MAX_OPS: usize = 200;

const KEYS: u32 = 20;
const NAMESPACES: u8 = 3;
/// Map user keys whose varint encodings sort differently from their numeric order.
const USER_KEYS: [u16; 12] = [0, 1, 5, 127, 128, 129, 200, 255, 256, 300, 1000, 16384];

type Scope = (u32, u8);

#[derive(Clone, Debug)]
enum Op {
    ValueUpdate(Scope, u32),
    ValueGet(Scope),
    ValueClear(Scope),
    ListAdd(Scope, u16),
    ListAddAll(Scope, Vec<u16>),
    ListUpdate(Scope, Vec<u16>),
    ListGet(Scope),
    ListClear(Scope),
    MapPut(Scope, u16, u32),
    MapGet(Scope, u16),
    MapContains(Scope, u16),
    MapRemove(Scope, u16),
    MapEntries(Scope),
    MapIsEmpty(Scope),
    MapClear(Scope),
    /// RocksDB: flush memtables, so later reads merge SST and memtable data. Heap: no-op.
    Flush,
}

/// What a read returned; writes return `Done`.
#[derive(Clone, Debug, PartialEq)]
enum Read {
    Done,
    Value(Option<u32>),
    List(Vec<u16>),
    MapValue(Option<u32>),
    Bool(bool),
    Entries(Vec<(u16, u32)>),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let scope = (0..KEYS, 0..NAMESPACES);
    let uk = proptest::sample::select(USER_KEYS.to_vec());
    let elems = proptest::collection::vec(any::<u16>(), 0..4);
    prop_oneof![
        4 => (scope.clone(), any::<u32>()).prop_map(|(s, v)| Op::ValueUpdate(s, v)),
        3 => scope.clone().prop_map(Op::ValueGet),
        1 => scope.clone().prop_map(Op::ValueClear),
        3 => (scope.clone(), any::<u16>()).prop_map(|(s, e)| Op::ListAdd(s, e)),
        2 => (scope.clone(), elems.clone()).prop_map(|(s, e)| Op::ListAddAll(s, e)),
        1 => (scope.clone(), elems).prop_map(|(s, e)| Op::ListUpdate(s, e)),
        3 => scope.clone().prop_map(Op::ListGet),
        1 => scope.clone().prop_map(Op::ListClear),
        4 => (scope.clone(), uk.clone(), any::<u32>()).prop_map(|(s, k, v)| Op::MapPut(s, k, v)),
        2 => (scope.clone(), uk.clone()).prop_map(|(s, k)| Op::MapGet(s, k)),
        1 => (scope.clone(), uk.clone()).prop_map(|(s, k)| Op::MapContains(s, k)),
        2 => (scope.clone(), uk).prop_map(|(s, k)| Op::MapRemove(s, k)),
        2 => scope.clone().prop_map(Op::MapEntries),
        1 => scope.clone().prop_map(Op::MapIsEmpty),
        1 => scope.prop_map(Op::MapClear),
        1 => Just(Op::Flush),
    ]
}

fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    codec::encode(v, "test").expect("test values encode")
}

/// The reference model.
#[derive(Default)]
struct Model {
    values: BTreeMap<Scope, u32>,
    lists: BTreeMap<Scope, Vec<u16>>,
    /// Per scope, by encoded user key (the order `entries` must follow).
    maps: BTreeMap<Scope, BTreeMap<Vec<u8>, (u16, u32)>>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Read {
        match op {
            Op::ValueUpdate(s, v) => {
                self.values.insert(*s, *v);
                Read::Done
            }
            Op::ValueGet(s) => Read::Value(self.values.get(s).copied()),
            Op::ValueClear(s) => {
                self.values.remove(s);
                Read::Done
            }
            Op::ListAdd(s, e) => {
                self.lists.entry(*s).or_default().push(*e);
                Read::Done
            }
            Op::ListAddAll(s, es) => {
                if !es.is_empty() {
                    self.lists.entry(*s).or_default().extend(es);
                }
                Read::Done
            }
            Op::ListUpdate(s, es) => {
                if es.is_empty() {
                    self.lists.remove(s);
                } else {
                    self.lists.insert(*s, es.clone());
                }
                Read::Done
            }
            Op::ListGet(s) => Read::List(self.lists.get(s).cloned().unwrap_or_default()),
            Op::ListClear(s) => {
                self.lists.remove(s);
                Read::Done
            }
            Op::MapPut(s, k, v) => {
                self.maps.entry(*s).or_default().insert(enc(k), (*k, *v));
                Read::Done
            }
            Op::MapGet(s, k) => {
                Read::MapValue(self.maps.get(s).and_then(|m| m.get(&enc(k))).map(|e| e.1))
            }
            Op::MapContains(s, k) => {
                Read::Bool(self.maps.get(s).is_some_and(|m| m.contains_key(&enc(k))))
            }
            Op::MapRemove(s, k) => {
                if let Some(m) = self.maps.get_mut(s) {
                    m.remove(&enc(k));
                    if m.is_empty() {
                        self.maps.remove(s);
                    }
                }
                Read::Done
            }
            Op::MapEntries(s) => Read::Entries(
                self.maps
                    .get(s)
                    .map(|m| m.values().copied().collect())
                    .unwrap_or_default(),
            ),
            Op::MapIsEmpty(s) => Read::Bool(self.maps.get(s).is_none_or(|m| m.is_empty())),
            Op::MapClear(s) => {
                self.maps.remove(s);
                Read::Done
            }
            Op::Flush => Read::Done,
        }
    }

    /// Every entry the model holds, per state, as scans report them.
    fn entries(&self) -> [BTreeSet<Entry>; 3] {
        let values = self
            .values
            .iter()
            .map(|((k, ns), v)| (enc(k), enc(ns), Vec::new(), enc(v)))
            .collect();
        let lists = self
            .lists
            .iter()
            .map(|((k, ns), l)| {
                let elems: Vec<Vec<u8>> = l.iter().map(enc).collect();
                let value = list_codec::encode(elems.iter().map(|e| &e[..]));
                (enc(k), enc(ns), Vec::new(), value)
            })
            .collect();
        let maps = self
            .maps
            .iter()
            .flat_map(|((k, ns), m)| {
                m.iter()
                    .map(move |(uk, (_, v))| (enc(k), enc(ns), uk.clone(), enc(v)))
            })
            .collect();
        [values, lists, maps]
    }
}

type Entry = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// One backend's slot and its three states (registered in the same order on both backends).
struct Side {
    slot: Slot,
    value: ValueState<u32>,
    list: ListState<u16>,
    map: MapState<u16, u32>,
}

/// The RocksDB state-cache variants every property runs on.
#[derive(Clone, Copy, Debug)]
enum Cache {
    /// The default `memory.state-cache-ratio`.
    Default,
    /// `memory.state-cache-ratio = 0`.
    Off,
    /// ~1.7 KB at the 16 MiB test budget (about 20 entries), half of it may be dirty.
    Tiny,
}

impl Side {
    fn open(kind: BackendKind, cache: Cache, dir: &Path) -> cairn::engine::Result<Self> {
        let mut config = CairnConfig::default();
        config.state.backend = kind;
        config.state.working_dir = dir.to_path_buf();
        config.memory.managed_size = bytesize::ByteSize::mib(16);
        match cache {
            Cache::Default => {}
            Cache::Off => config.memory.state_cache_ratio = 0.0,
            Cache::Tiny => {
                config.memory.state_cache_ratio = 0.0001;
                config.state_cache.max_dirty_ratio = 0.5;
            }
        }
        let mut slot = Slot::builder(&config).working_dir(dir).open()?;
        let value = slot.value_state("prop", "value")?;
        let list = slot.list_state("prop", "list")?;
        let map = slot.map_state("prop", "map")?;
        Ok(Self {
            slot,
            value,
            list,
            map,
        })
    }

    fn scope(&mut self, (k, ns): Scope) -> cairn::engine::Result<ScopeKey> {
        self.slot.scope(&k, &ns)
    }

    fn apply(&mut self, op: &Op) -> cairn::engine::Result<Read> {
        let slot = &mut self.slot;
        Ok(match op {
            Op::ValueUpdate(s, v) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.value.update(slot, &s, v)?;
                Read::Done
            }
            Op::ValueGet(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::Value(self.value.get(slot, &s)?)
            }
            Op::ValueClear(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.value.clear(slot, &s)?;
                Read::Done
            }
            Op::ListAdd(s, e) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.list.add(slot, &s, e)?;
                Read::Done
            }
            Op::ListAddAll(s, es) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.list.add_all(slot, &s, es)?;
                Read::Done
            }
            Op::ListUpdate(s, es) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.list.update(slot, &s, es)?;
                Read::Done
            }
            Op::ListGet(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::List(self.list.get(slot, &s)?)
            }
            Op::ListClear(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.list.clear(slot, &s)?;
                Read::Done
            }
            Op::MapPut(s, k, v) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.map.put(slot, &s, k, v)?;
                Read::Done
            }
            Op::MapGet(s, k) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::MapValue(self.map.get(slot, &s, k)?)
            }
            Op::MapContains(s, k) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::Bool(self.map.contains(slot, &s, k)?)
            }
            Op::MapRemove(s, k) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.map.remove(slot, &s, k)?;
                Read::Done
            }
            Op::MapEntries(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::Entries(self.map.entries(slot, &s)?)
            }
            Op::MapIsEmpty(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                Read::Bool(self.map.is_empty(slot, &s)?)
            }
            Op::MapClear(s) => {
                let s = slot.scope(&s.0, &s.1)?;
                self.map.clear(slot, &s)?;
                Read::Done
            }
            Op::Flush => {
                slot.flush()?;
                Read::Done
            }
        })
    }

    fn state_ids(&self) -> [u32; 3] {
        [self.value.id(), self.list.id(), self.map.id()]
    }
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(cairn::EngineError) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

/// Runs `ops` on the model, a heap slot and a RocksDB slot (in `dir`), comparing every read,
/// then compares every key group's scan.
fn check_sequence(dir: &Path, cache: Cache, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut heap = Side::open(BackendKind::Heap, cache, dir).map_err(fail("open heap slot"))?;
    let mut rocks =
        Side::open(BackendKind::RocksDb, cache, dir).map_err(fail("open rocksdb slot"))?;
    prop_assert_eq!(heap.state_ids(), rocks.state_ids());
    let mut model = Model::default();

    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let h = heap
            .apply(op)
            .map_err(fail(format!("heap op #{i} {op:?}")))?;
        let r = rocks
            .apply(op)
            .map_err(fail(format!("rocksdb op #{i} {op:?}")))?;
        prop_assert_eq!(&h, &want, "heap vs model at op #{} {:?}", i, op);
        prop_assert_eq!(&r, &want, "rocksdb vs model at op #{} {:?}", i, op);
    }

    let model_entries = model.entries();
    let key_groups = heap.slot.key_groups();
    prop_assert_eq!(key_groups, rocks.slot.key_groups());
    for (n, id) in heap.state_ids().into_iter().enumerate() {
        let mut union = BTreeSet::new();
        for kg in key_groups.iter() {
            let h = heap
                .slot
                .scan_key_group(id, kg)
                .map_err(fail("heap scan"))?;
            let r = rocks
                .slot
                .scan_key_group(id, kg)
                .map_err(fail("rocksdb scan"))?;
            prop_assert_eq!(&h, &r, "scan of state {} key group {}", id, kg);
            union.extend(
                h.into_iter()
                    .map(|e| (e.key, e.namespace, e.user_key, e.value)),
            );
        }
        prop_assert_eq!(&union, &model_entries[n], "scans of state {} vs model", id);
    }
    // A scope of each key maps to the key group its entries were scanned under.
    for k in 0..KEYS {
        let s = heap.scope((k, 0)).map_err(fail("scope"))?;
        prop_assert_eq!(s.key_group(), heap.slot.key_group_of_bytes(&enc(&k)));
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_operation_sequences_agree_on_heap_rocksdb_and_model()
-> Result<(), Box<dyn std::error::Error>> {
    random_sequences_agree(Cache::Default)
}

#[test]
fn random_operation_sequences_agree_without_the_state_cache()
-> Result<(), Box<dyn std::error::Error>> {
    random_sequences_agree(Cache::Off)
}

#[test]
fn random_operation_sequences_agree_with_a_tiny_evicting_state_cache()
-> Result<(), Box<dyn std::error::Error>> {
    random_sequences_agree(Cache::Tiny)
}

fn random_sequences_agree(cache: Cache) -> Result<(), Box<dyn std::error::Error>> {
    let seed = env_or("PROPTEST_RNG_SEED", DEFAULT_SEED);
    let cases = env_or("PROPTEST_CASES", DEFAULT_CASES);
    let config = ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    };
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(
        &proptest::collection::vec(op_strategy(), 0..=MAX_OPS),
        |ops| check_sequence(dir.path(), cache, &ops),
    );
    match result {
        Ok(()) => {
            eprintln!(
                "{cache:?} cache: {cases} cases of up to {MAX_OPS} ops with seed {seed} passed in {:?}",
                started.elapsed()
            );
            Ok(())
        }
        Err(TestError::Fail(reason, ops)) => panic!(
            "heap/rocksdb ({cache:?} cache)/model disagree (rerun with PROPTEST_RNG_SEED={seed}): {reason}\n\
             minimal failing sequence ({} ops):\n{ops:#?}",
            ops.len()
        ),
        Err(TestError::Abort(reason)) => {
            panic!("property run aborted (PROPTEST_RNG_SEED={seed}): {reason}")
        }
    }
}

/// Regression (found by this suite): the heap backend sorted scans by (key length, key, ...),
/// which differs from RocksDB's byte order once a length needs two varint bytes.
///
/// Keys of 128 bytes and more have a 2-byte length varint in the stored key, whose byte order is
/// not the numeric order of the lengths (255 = `ff 01`, 256 = `80 02`). Scans must still list
/// entries in the same order on both backends (snapshots and rescaling read scans).
#[test]
fn scans_of_long_keys_list_entries_in_the_same_order_on_both_backends()
-> Result<(), Box<dyn std::error::Error>> {
    // Find a 255-byte and a 256-byte key in the same key group (128 key groups, 1 slot).
    let max_p = 128;
    let group = |k: &[u8]| cairn::engine::keygroup::assign_to_key_group(k, max_p);
    let (short, long) = (0..=255u8)
        .flat_map(|a| (0..=255u8).map(move |b| (vec![a; 255], vec![b; 256])))
        .find(|(s, l)| group(s) == group(l))
        .ok_or("no pair of keys in one key group")?;
    let kg = group(&short);

    let dir = tempfile::tempdir()?;
    let mut scans = Vec::new();
    for (kind, cache) in [
        (BackendKind::Heap, Cache::Default),
        (BackendKind::RocksDb, Cache::Default),
        (BackendKind::RocksDb, Cache::Off),
    ] {
        let mut side = Side::open(kind, cache, dir.path())?;
        assert_eq!(side.slot.max_parallelism(), max_p);
        let id = side.value.id();
        for (i, key) in [&short, &long].into_iter().enumerate() {
            let scope = side.slot.scope_raw(key, &[])?;
            assert_eq!(scope.key_group(), kg);
            side.slot.put(id, &scope, &enc(&(i as u32)))?;
        }
        let entries: Vec<StateEntry> = side.slot.scan_key_group(id, kg)?;
        scans.push(entries.into_iter().map(|e| e.key.len()).collect::<Vec<_>>());
        drop(side);
    }
    assert_eq!(
        scans[0], scans[1],
        "key lengths in scan order: heap {:?} vs rocksdb {:?}",
        scans[0], scans[1]
    );
    assert_eq!(scans[1], scans[2], "rocksdb with and without the cache");
    Ok(())
}
