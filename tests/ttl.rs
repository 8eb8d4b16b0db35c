//! State TTL (Flink's `StateTtlConfig`, `cairn::engine::ttl`): reads of every state kind on
//! both backends match a model of Flink's TTL semantics under a manual clock (both update types
//! x both visibilities); expired data leaves RocksDB's files in compactions and the heap in
//! incremental and full-snapshot cleanups; timestamps survive a checkpoint and restore; a
//! restore that switches TTL on or off for a stored state is refused.
//!
//! The model runs are seeded: `PROPTEST_RNG_SEED` when set, else a fixed seed; a failure prints
//! the seed and the shrunk operation sequence. `PROPTEST_CASES` overrides the number of cases.
//!
//! Breakages checked to fail these tests (each applied alone, the named tests run, reverted):
//! the RocksDB filter keeping everything (`rocksdb_compaction_*`); the list filter keeping
//! partially expired lists (`rocksdb_compaction_drops_*`); the filter reading the system clock
//! (`rocksdb_compaction_keeps_*`); reads ignoring expiry (all `model_*`); `OnReadAndWrite` not
//! renewing (`model_on_read_*`, `*_timestamps_survive_*`); expired values shown under
//! `NeverReturnExpired` (`model_*_never_*`); a list read not removing an all-expired list and a
//! reducing/aggregating add not seeing an expired value under `ReturnExpiredIfNotCleanedUp`
//! (`model_*_return_*`); heap incremental cleanup off (`heap_incremental_*`); full-snapshot
//! cleanup off (`heap_full_snapshot_*`); the heap snapshot forgetting TTL flags
//! (`heap_restore_refuses_*`); RocksDB ignoring the `OPTIONS` mark
//! (`rocksdb_restore_refuses_*`, `rocksdb_timestamps_*`) or accepting a TTL switch
//! (`rocksdb_restore_refuses_*`); the filter ignoring a changed TTL (`a_changed_ttl_*`); a
//! rescale ignoring merged old slots' marks (`rocksdb_rescale_*`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn::engine::checkpoint::{Checkpointer, new_job_name};
use cairn::timers::{Clock, ManualClock};
use cairn::{
    AggregateFunction, AggregatingState, BackendKind, CairnConfig, EngineError, ErrorKind,
    ListState, MapState, ReducingState, Slot, StateDescriptor, StateKind, StateTtlConfig,
    TtlUpdateType, TtlVisibility, ValueState,
};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestError, TestRunner,
};
use support::checkpoints::{
    TestResult, checkpoint, checkpoint_slots, config, open_slots, restore_slots, restore_with,
};

/// Seed used when `PROPTEST_RNG_SEED` is not set.
const DEFAULT_SEED: u64 = 0x00ca_1a5e_0077_0001;
/// Cases per combination when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 48;
const MAX_OPS: usize = 160;
const TTL_MS: i64 = 100;
const T0: i64 = 1_000_000;
/// Few scopes, so reads meet earlier writes and renewals of the same entry often.
const KEYS: u8 = 2;
const NAMESPACES: u8 = 2;
const USER_KEYS: u8 = 3;

type Scope = (u8, u8);

#[derive(Clone, Debug)]
enum Op {
    /// Moves the clock forward by this many ms.
    Advance(i64),
    ValueUpdate(Scope, u32),
    ValueGet(Scope),
    ValueClear(Scope),
    ListAdd(Scope, u16),
    ListAddAll(Scope, Vec<u16>),
    ListUpdate(Scope, Vec<u16>),
    ListGet(Scope),
    ListClear(Scope),
    MapPut(Scope, u8, u32),
    MapGet(Scope, u8),
    MapContains(Scope, u8),
    MapRemove(Scope, u8),
    MapEntries(Scope),
    MapIsEmpty(Scope),
    ReduceAdd(Scope, u32),
    ReduceGet(Scope),
    AggAdd(Scope, u32),
    AggGet(Scope),
    /// RocksDB: write the state cache back and flush the memtables. Heap: nothing.
    Flush,
    /// RocksDB: flush and compact every state (the TTL filter runs). Heap: nothing.
    Compact,
}

/// What a read returned; writes return `Done`.
#[derive(Clone, Debug, PartialEq)]
enum Read {
    Done,
    Value(Option<u32>),
    List(Vec<u16>),
    MapValue(Option<u32>),
    Bool(bool),
    Entries(Vec<(u8, u32)>),
    Sum(Option<u64>),
    Avg(Option<(u64, u32)>),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let scope = (0..KEYS, 0..NAMESPACES);
    let uk = 0..USER_KEYS;
    let elems = proptest::collection::vec(any::<u16>(), 0..4);
    // Steps that land on, just before and just after the TTL boundary of earlier writes.
    let advance = proptest::sample::select(vec![0, 1, 10, 30, 49, 50, 99, 100, 101, 250]);
    prop_oneof![
        6 => advance.prop_map(Op::Advance),
        3 => (scope.clone(), any::<u32>()).prop_map(|(s, v)| Op::ValueUpdate(s, v)),
        3 => scope.clone().prop_map(Op::ValueGet),
        1 => scope.clone().prop_map(Op::ValueClear),
        3 => (scope.clone(), any::<u16>()).prop_map(|(s, e)| Op::ListAdd(s, e)),
        1 => (scope.clone(), elems.clone()).prop_map(|(s, e)| Op::ListAddAll(s, e)),
        1 => (scope.clone(), elems).prop_map(|(s, e)| Op::ListUpdate(s, e)),
        3 => scope.clone().prop_map(Op::ListGet),
        1 => scope.clone().prop_map(Op::ListClear),
        3 => (scope.clone(), uk.clone(), any::<u32>()).prop_map(|(s, k, v)| Op::MapPut(s, k, v)),
        2 => (scope.clone(), uk.clone()).prop_map(|(s, k)| Op::MapGet(s, k)),
        1 => (scope.clone(), uk.clone()).prop_map(|(s, k)| Op::MapContains(s, k)),
        1 => (scope.clone(), uk).prop_map(|(s, k)| Op::MapRemove(s, k)),
        2 => scope.clone().prop_map(Op::MapEntries),
        1 => scope.clone().prop_map(Op::MapIsEmpty),
        2 => (scope.clone(), 0..1000u32).prop_map(|(s, v)| Op::ReduceAdd(s, v)),
        2 => scope.clone().prop_map(Op::ReduceGet),
        2 => (scope.clone(), 0..1000u32).prop_map(|(s, v)| Op::AggAdd(s, v)),
        2 => scope.prop_map(Op::AggGet),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
    ]
}

/// Flink's TTL semantics over plain maps: every entry, element and map entry carries the time of
/// its last renewal.
struct Model {
    now: i64,
    renew_on_read: bool,
    show_expired: bool,
    values: BTreeMap<Scope, (i64, u32)>,
    lists: BTreeMap<Scope, Vec<(i64, u16)>>,
    maps: BTreeMap<Scope, BTreeMap<u8, (i64, u32)>>,
    sums: BTreeMap<Scope, (i64, u64)>,
    avgs: BTreeMap<Scope, (i64, (u64, u32))>,
}

fn expired(ts: i64, now: i64) -> bool {
    ts + TTL_MS <= now
}

/// Flink's `getWithTtlCheckAndUpdate` on one entry of `map`: an expired entry is removed (and
/// shown only when `show`), an unexpired one renewed when `renew`.
fn read_one<K: Ord + Clone, V: Clone>(
    map: &mut BTreeMap<K, (i64, V)>,
    k: &K,
    now: i64,
    renew: bool,
    show: bool,
) -> Option<V> {
    let (ts, v) = map.get(k)?.clone();
    if expired(ts, now) {
        map.remove(k);
        show.then_some(v)
    } else {
        if renew {
            map.insert(k.clone(), (now, v.clone()));
        }
        Some(v)
    }
}

impl Model {
    fn new(update: TtlUpdateType, visibility: TtlVisibility) -> Self {
        Self {
            now: T0,
            renew_on_read: update == TtlUpdateType::OnReadAndWrite,
            show_expired: visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp,
            values: BTreeMap::new(),
            lists: BTreeMap::new(),
            maps: BTreeMap::new(),
            sums: BTreeMap::new(),
            avgs: BTreeMap::new(),
        }
    }

    /// The current user value of a reducing/aggregating entry as its add sees it.
    fn fold_base<V: Clone>(&self, cur: Option<&(i64, V)>) -> Option<V> {
        cur.and_then(|(ts, v)| (!expired(*ts, self.now) || self.show_expired).then(|| v.clone()))
    }

    fn apply(&mut self, op: &Op) -> Read {
        let (now, renew, show) = (self.now, self.renew_on_read, self.show_expired);
        match op {
            Op::Advance(ms) => {
                self.now += ms;
                Read::Done
            }
            Op::ValueUpdate(s, v) => {
                self.values.insert(*s, (now, *v));
                Read::Done
            }
            Op::ValueGet(s) => Read::Value(read_one(&mut self.values, s, now, renew, show)),
            Op::ValueClear(s) => {
                self.values.remove(s);
                Read::Done
            }
            Op::ListAdd(s, e) => {
                self.lists.entry(*s).or_default().push((now, *e));
                Read::Done
            }
            Op::ListAddAll(s, es) => {
                if !es.is_empty() {
                    let l = self.lists.entry(*s).or_default();
                    l.extend(es.iter().map(|e| (now, *e)));
                }
                Read::Done
            }
            Op::ListUpdate(s, es) => {
                if es.is_empty() {
                    self.lists.remove(s);
                } else {
                    self.lists
                        .insert(*s, es.iter().map(|e| (now, *e)).collect());
                }
                Read::Done
            }
            Op::ListGet(s) => {
                let Some(l) = self.lists.get_mut(s) else {
                    return Read::List(Vec::new());
                };
                let shown = l
                    .iter()
                    .filter(|(ts, _)| show || !expired(*ts, now))
                    .map(|(_, e)| *e)
                    .collect();
                if l.iter().all(|(ts, _)| expired(*ts, now)) {
                    self.lists.remove(s);
                } else if renew {
                    l.retain(|(ts, _)| !expired(*ts, now));
                    for e in l.iter_mut() {
                        e.0 = now;
                    }
                }
                Read::List(shown)
            }
            Op::ListClear(s) => {
                self.lists.remove(s);
                Read::Done
            }
            Op::MapPut(s, k, v) => {
                self.maps.entry(*s).or_default().insert(*k, (now, *v));
                Read::Done
            }
            Op::MapGet(s, k) | Op::MapContains(s, k) => {
                let v = self
                    .maps
                    .get_mut(s)
                    .and_then(|m| read_one(m, k, now, renew, show));
                if matches!(op, Op::MapGet(..)) {
                    Read::MapValue(v)
                } else {
                    Read::Bool(v.is_some())
                }
            }
            Op::MapRemove(s, k) => {
                if let Some(m) = self.maps.get_mut(s) {
                    m.remove(k);
                }
                Read::Done
            }
            Op::MapEntries(s) | Op::MapIsEmpty(s) => {
                let mut shown = Vec::new();
                if let Some(m) = self.maps.get_mut(s) {
                    let keys: Vec<u8> = m.keys().copied().collect();
                    for k in keys {
                        if let Some(v) = read_one(m, &k, now, renew, show) {
                            shown.push((k, v));
                        }
                    }
                }
                if matches!(op, Op::MapEntries(_)) {
                    Read::Entries(shown)
                } else {
                    Read::Bool(shown.is_empty())
                }
            }
            Op::ReduceAdd(s, v) => {
                let base = self.fold_base(self.sums.get(s));
                let sum = base.map_or(u64::from(*v), |b| b + u64::from(*v));
                self.sums.insert(*s, (now, sum));
                Read::Done
            }
            Op::ReduceGet(s) => Read::Sum(read_one(&mut self.sums, s, now, renew, show)),
            Op::AggAdd(s, v) => {
                let (sum, n) = self.fold_base(self.avgs.get(s)).unwrap_or((0, 0));
                self.avgs.insert(*s, (now, (sum + u64::from(*v), n + 1)));
                Read::Done
            }
            Op::AggGet(s) => Read::Avg(read_one(&mut self.avgs, s, now, renew, show)),
            Op::Flush | Op::Compact => Read::Done,
        }
    }
}

/// Sum and count of the inputs (the accumulator is the result).
struct SumCount;

impl AggregateFunction for SumCount {
    type In = u32;
    type Acc = (u64, u32);
    type Out = (u64, u32);
    fn create_accumulator(&self) -> (u64, u32) {
        (0, 0)
    }
    fn add(&self, v: &u32, acc: (u64, u32)) -> (u64, u32) {
        (acc.0 + u64::from(*v), acc.1 + 1)
    }
    fn get_result(&self, acc: &(u64, u32)) -> (u64, u32) {
        *acc
    }
}

type Sum = fn(&u64, &u64) -> u64;

/// One slot under test with a handle of every state kind, all with the same TTL.
struct Side {
    slot: Slot,
    clock: Arc<ManualClock>,
    value: ValueState<u32>,
    list: ListState<u16>,
    map: MapState<u8, u32>,
    sum: ReducingState<u64, Sum>,
    avg: AggregatingState<SumCount>,
}

impl Side {
    fn open(cfg: &CairnConfig, ttl: StateTtlConfig) -> cairn::engine::Result<Self> {
        let clock = Arc::new(ManualClock::new(T0));
        let mut slot = Slot::builder(cfg).clock(clock.clone()).open()?;
        let value = slot.value_state_with_ttl("op", "value", ttl)?;
        let list = slot.list_state_with_ttl("op", "list", ttl)?;
        let map = slot.map_state_with_ttl("op", "map", ttl)?;
        let add: Sum = |a, b| a + b;
        let sum = slot.reducing_state_with_ttl("op", "sum", add, ttl)?;
        let avg = slot.aggregating_state_with_ttl("op", "avg", SumCount, ttl)?;
        Ok(Self {
            slot,
            clock,
            value,
            list,
            map,
            sum,
            avg,
        })
    }

    fn apply(&mut self, op: &Op) -> cairn::engine::Result<Read> {
        let slot = &mut self.slot;
        let scope = |slot: &mut Slot, s: &Scope| slot.scope(&u32::from(s.0), &u32::from(s.1));
        Ok(match op {
            Op::Advance(ms) => {
                self.clock.set(self.clock.now_ms() + ms);
                Read::Done
            }
            Op::ValueUpdate(s, v) => {
                let sc = scope(slot, s)?;
                self.value.update(slot, &sc, v)?;
                Read::Done
            }
            Op::ValueGet(s) => {
                let sc = scope(slot, s)?;
                Read::Value(self.value.get(slot, &sc)?)
            }
            Op::ValueClear(s) => {
                let sc = scope(slot, s)?;
                self.value.clear(slot, &sc)?;
                Read::Done
            }
            Op::ListAdd(s, e) => {
                let sc = scope(slot, s)?;
                self.list.add(slot, &sc, e)?;
                Read::Done
            }
            Op::ListAddAll(s, es) => {
                let sc = scope(slot, s)?;
                self.list.add_all(slot, &sc, es)?;
                Read::Done
            }
            Op::ListUpdate(s, es) => {
                let sc = scope(slot, s)?;
                self.list.update(slot, &sc, es)?;
                Read::Done
            }
            Op::ListGet(s) => {
                let sc = scope(slot, s)?;
                Read::List(self.list.get(slot, &sc)?)
            }
            Op::ListClear(s) => {
                let sc = scope(slot, s)?;
                self.list.clear(slot, &sc)?;
                Read::Done
            }
            Op::MapPut(s, k, v) => {
                let sc = scope(slot, s)?;
                self.map.put(slot, &sc, k, v)?;
                Read::Done
            }
            Op::MapGet(s, k) => {
                let sc = scope(slot, s)?;
                Read::MapValue(self.map.get(slot, &sc, k)?)
            }
            Op::MapContains(s, k) => {
                let sc = scope(slot, s)?;
                Read::Bool(self.map.contains(slot, &sc, k)?)
            }
            Op::MapRemove(s, k) => {
                let sc = scope(slot, s)?;
                self.map.remove(slot, &sc, k)?;
                Read::Done
            }
            Op::MapEntries(s) => {
                let sc = scope(slot, s)?;
                Read::Entries(self.map.entries(slot, &sc)?)
            }
            Op::MapIsEmpty(s) => {
                let sc = scope(slot, s)?;
                Read::Bool(self.map.is_empty(slot, &sc)?)
            }
            Op::ReduceAdd(s, v) => {
                let sc = scope(slot, s)?;
                self.sum.add(slot, &sc, &u64::from(*v))?;
                Read::Done
            }
            Op::ReduceGet(s) => {
                let sc = scope(slot, s)?;
                Read::Sum(self.sum.get(slot, &sc)?)
            }
            Op::AggAdd(s, v) => {
                let sc = scope(slot, s)?;
                self.avg.add(slot, &sc, v)?;
                Read::Done
            }
            Op::AggGet(s) => {
                let sc = scope(slot, s)?;
                Read::Avg(self.avg.get(slot, &sc)?)
            }
            Op::Flush => {
                slot.flush()?;
                Read::Done
            }
            Op::Compact => {
                slot.flush()?;
                slot.compact_state()?;
                Read::Done
            }
        })
    }
}

/// The TTL of the model runs. Under `NeverReturnExpired` every background cleanup is on and as
/// eager as it goes (what it removes is invisible, so reads must not change); under
/// `ReturnExpiredIfNotCleanedUp` they are off, because which expired entries a read still sees
/// depends on what a cleanup removed first.
fn model_ttl(update: TtlUpdateType, visibility: TtlVisibility) -> StateTtlConfig {
    let b = StateTtlConfig::builder(Duration::from_millis(TTL_MS as u64))
        .update_type(update)
        .visibility(visibility)
        .cleanup_full_snapshot();
    match visibility {
        TtlVisibility::NeverReturnExpired => b
            .cleanup_incrementally(3, true)
            .cleanup_in_rocksdb_compaction_filter(1),
        _ => b.disable_cleanup_in_background(),
    }
    .build()
    .expect("valid TTL")
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(EngineError) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

/// Runs `ops` on the model and on a heap slot, a RocksDB slot and a RocksDB slot without the
/// state cache, comparing every read.
fn check_sequence(
    dir: &Path,
    update: TtlUpdateType,
    visibility: TtlVisibility,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let ttl = model_ttl(update, visibility);
    let mut sides = Vec::new();
    for (name, backend, cache_ratio) in [
        ("heap", BackendKind::Heap, None),
        ("rocksdb", BackendKind::RocksDb, None),
        (
            "rocksdb without state cache",
            BackendKind::RocksDb,
            Some(0.0),
        ),
    ] {
        let mut cfg = config(backend, &dir.join(name.replace(' ', "-")));
        if let Some(r) = cache_ratio {
            cfg.memory.state_cache_ratio = r;
        }
        sides.push((name, Side::open(&cfg, ttl).map_err(fail(name))?));
    }
    let mut model = Model::new(update, visibility);
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        for (name, side) in &mut sides {
            let got = side
                .apply(op)
                .map_err(fail(format!("{name} op #{i} {op:?}")))?;
            prop_assert_eq!(&got, &want, "{} vs model at op #{} {:?}", name, i, op);
        }
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model_runs(update: TtlUpdateType, visibility: TtlVisibility) -> TestResult {
    let seed = env_or("PROPTEST_RNG_SEED", DEFAULT_SEED);
    let cases = env_or("PROPTEST_CASES", DEFAULT_CASES);
    let config = ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    };
    // Every case opens two RocksDB slots (five column families each): on tmpfs when there is
    // one, so the run is not paced by the disk's syncs.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(
        &proptest::collection::vec(op_strategy(), 0..=MAX_OPS),
        |ops| check_sequence(dir.path(), update, visibility, &ops),
    );
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, ops)) => panic!(
            "{update:?}/{visibility:?}: slot and model disagree (rerun with PROPTEST_RNG_SEED={seed}): {reason}\n\
             minimal failing sequence ({} ops):\n{ops:#?}",
            ops.len()
        ),
        Err(TestError::Abort(reason)) => {
            panic!("property run aborted (PROPTEST_RNG_SEED={seed}): {reason}")
        }
    }
}

#[test]
fn model_on_create_and_write_never_return_expired() -> TestResult {
    model_runs(
        TtlUpdateType::OnCreateAndWrite,
        TtlVisibility::NeverReturnExpired,
    )
}

#[test]
fn model_on_read_and_write_never_return_expired() -> TestResult {
    model_runs(
        TtlUpdateType::OnReadAndWrite,
        TtlVisibility::NeverReturnExpired,
    )
}

#[test]
fn model_on_create_and_write_return_expired_if_not_cleaned_up() -> TestResult {
    model_runs(
        TtlUpdateType::OnCreateAndWrite,
        TtlVisibility::ReturnExpiredIfNotCleanedUp,
    )
}

#[test]
fn model_on_read_and_write_return_expired_if_not_cleaned_up() -> TestResult {
    model_runs(
        TtlUpdateType::OnReadAndWrite,
        TtlVisibility::ReturnExpiredIfNotCleanedUp,
    )
}

/// `len` incompressible characters determined by `i` (so SST sizes measure the data).
fn payload(i: u64, len: usize) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// (bytes, entries) of state `op/<name>` ([`Slot::state_sizes`]: RocksDB's live SST and
/// memtable bytes and `rocksdb.estimate-num-keys`; the heap's estimate and entry count).
fn size_of(slot: &Slot, name: &str) -> (u64, u64) {
    slot.state_sizes()
        .into_iter()
        .find(|s| s.state == format!("op/{name}"))
        .map(|s| (s.bytes, s.entries))
        .unwrap_or_default()
}

/// Raw stored entries (user bytes with their timestamps) of a state, over the slot's key groups.
fn scan_all(slot: &mut Slot, id: u32) -> cairn::engine::Result<Vec<cairn::engine::StateEntry>> {
    let mut out = Vec::new();
    for kg in slot.key_groups().iter() {
        out.extend(slot.scan_key_group(id, kg)?);
    }
    Ok(out)
}

fn timestamps_of_list(value: &[u8]) -> Vec<i64> {
    cairn::engine::backend::list_codec::decode(value)
        .expect("list encoding")
        .iter()
        .map(|e| cairn::engine::ttl::split(e).expect("timestamp").0)
        .collect()
}

/// After the clock passes the TTL, a compaction removes expired values, list elements and map
/// entries from RocksDB's files: live SST bytes and RocksDB's key estimate of each TTL state
/// fall to what was written after, while a state without TTL holding the same data keeps its
/// size. Lists written by merges lose their expired elements in the compaction after the one
/// that merged them (RocksDB passes merge results to the filter only as plain values).
#[test]
fn rocksdb_compaction_drops_expired_data_from_disk() -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::RocksDb, root.path());
    // Values spread over many SSTs, so the measurement is of files, not of a memtable.
    cfg.memory.state_cache_ratio = 0.0;
    let clock = Arc::new(ManualClock::new(T0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let ttl = StateTtlConfig::builder(Duration::from_secs(60)).build()?;
    let value = slot.value_state_with_ttl::<String>("op", "value", ttl)?;
    let list = slot.list_state_with_ttl::<String>("op", "list", ttl)?;
    let map = slot.map_state_with_ttl::<u32, String>("op", "map", ttl)?;
    let plain = slot.value_state::<String>("op", "plain")?;
    let keys = 20_000u64;
    for k in 0..keys {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &payload(k, 200))?;
        plain.update(&mut slot, &scope, &payload(k, 200))?;
        if k % 10 == 0 {
            for e in 0..10 {
                list.add(&mut slot, &scope, &payload(k * 100 + e, 100))?;
                map.put(&mut slot, &scope, &(e as u32), &payload(k * 100 + e, 100))?;
            }
        }
    }
    slot.flush()?;
    slot.compact_state()?;
    let before: Vec<(u64, u64)> = ["value", "list", "map", "plain"]
        .iter()
        .map(|n| size_of(&slot, n))
        .collect();
    for (n, (bytes, entries)) in ["value", "list", "map", "plain"].iter().zip(&before) {
        assert!(*bytes > 300_000, "{n}: {bytes} bytes before");
        assert!(*entries > 1000, "{n}: {entries} keys before");
    }

    // One minute later: 1 % of the values and one element of 10 % of the lists are new.
    clock.set(T0 + 60_000);
    for k in (0..keys).step_by(100) {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &payload(k, 200))?;
        if k % 1000 == 0 {
            list.add(&mut slot, &scope, &payload(k, 100))?;
            map.put(&mut slot, &scope, &99, &payload(k, 100))?;
        }
    }
    slot.flush()?;
    // The first compaction merges the new list elements into the old lists; the second one
    // filters the merged lists.
    slot.compact_state()?;
    slot.compact_state()?;
    let after: Vec<(u64, u64)> = ["value", "list", "map", "plain"]
        .iter()
        .map(|n| size_of(&slot, n))
        .collect();
    eprintln!("(bytes, keys) before {before:?}, after {after:?}");
    for (i, n) in ["value", "list", "map"].iter().enumerate() {
        assert!(
            after[i].0 * 20 < before[i].0,
            "{n}: {} of {} bytes left after the expiry and compaction",
            after[i].0,
            before[i].0
        );
    }
    assert_eq!(after[0].1, keys / 100, "value keys left");
    assert_eq!(after[2].1, keys / 1000, "map entries left");
    assert!(
        after[3].0 * 10 > before[3].0 * 9,
        "the state without TTL keeps its data"
    );
    assert_eq!(after[3].1, before[3].1);

    // What is stored is exactly what was written after the expiry, with its timestamp.
    let values = scan_all(&mut slot, value.id())?;
    assert_eq!(values.len() as u64, keys / 100);
    for e in &values {
        assert_eq!(
            cairn::engine::ttl::split(&e.value).map(|s| s.0),
            Some(T0 + 60_000)
        );
    }
    let lists = scan_all(&mut slot, list.id())?;
    assert_eq!(lists.len() as u64, keys / 1000, "lists left");
    for e in &lists {
        assert_eq!(timestamps_of_list(&e.value), vec![T0 + 60_000]);
    }
    assert_eq!(scan_all(&mut slot, map.id())?.len() as u64, keys / 1000);
    // And reads agree.
    let scope = slot.scope(&0u64, &())?;
    assert_eq!(list.get(&mut slot, &scope)?, vec![payload(0, 100)]);
    assert_eq!(map.entries(&mut slot, &scope)?, vec![(99, payload(0, 100))]);
    let scope = slot.scope(&1u64, &())?;
    assert_eq!(value.get(&mut slot, &scope)?, None);
    assert_eq!(plain.get(&mut slot, &scope)?, Some(payload(1, 200)));
    Ok(())
}

/// The compaction filter reads the slot's clock, not the system clock: before the manual clock
/// passes the TTL nothing is dropped, whatever the wall time.
#[test]
fn rocksdb_compaction_keeps_unexpired_data() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    // A clock far in the past: by wall time everything written is long expired.
    let clock = Arc::new(ManualClock::new(1));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let ttl = StateTtlConfig::builder(Duration::from_millis(10)).build()?;
    let value = slot.value_state_with_ttl::<u64>("op", "value", ttl)?;
    for k in 0..1000u64 {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &k)?;
    }
    clock.set(10);
    slot.flush()?;
    slot.compact_state()?;
    assert_eq!(size_of(&slot, "value").1, 1000);
    clock.set(11);
    slot.compact_state()?;
    assert_eq!(size_of(&slot, "value").1, 0);
    Ok(())
}

/// `periodic_compaction_seconds` of a column family in the newest RocksDB `OPTIONS-<n>` file
/// below `dir`.
fn periodic_compaction_of(dir: &Path, state: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let path = e?.path();
            let n = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("OPTIONS-"))
                .and_then(|n| n.parse::<u64>().ok());
            match n {
                _ if path.is_dir() => stack.push(path),
                Some(n) if newest.as_ref().is_none_or(|(m, _)| n > *m) => {
                    newest = Some((n, path));
                }
                _ => {}
            }
        }
    }
    let (_, path) = newest.ok_or("no OPTIONS file")?;
    let text = std::fs::read_to_string(path)?;
    let section = format!("[CFOptions \"{state}\"]");
    let value = text
        .split(&section)
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .and_then(|body| {
            body.lines()
                .find_map(|l| l.trim().strip_prefix("periodic_compaction_seconds="))
        })
        .ok_or_else(|| format!("no periodic_compaction_seconds for {state}"))?;
    Ok(value.parse()?)
}

/// A TTL state's column family compacts files older than the configured age (RocksDB's
/// periodic compaction), so the filter reaches files no write-driven compaction touches:
/// Flink's 30-day default, a configured age, and off with the filter off (RocksDB would
/// otherwise turn it on for any column family with a filter). Also after a restore, where the
/// column family comes back with the stored options.
#[test]
fn rocksdb_periodic_compaction_follows_the_ttl_config() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let ttl = |age: Option<Duration>| {
        let b = StateTtlConfig::builder(Duration::from_secs(60));
        match age {
            Some(age) => b.periodic_compaction(age).build(),
            None => b.disable_cleanup_in_background().build(),
        }
    };
    let default = StateTtlConfig::builder(Duration::from_secs(60)).build()?;
    let states = [
        ("default", default),
        ("hourly", ttl(Some(Duration::from_secs(3600)))?),
        ("no-filter", ttl(None)?),
    ];
    let want = [
        ("default", 30 * 24 * 3600),
        ("hourly", 3600),
        ("no-filter", 0),
    ];
    let mut slot = Slot::builder(&cfg).open()?;
    for (name, t) in states {
        let v = slot.value_state_with_ttl::<u64>("op", name, t)?;
        let scope = slot.scope(&1u64, &())?;
        v.update(&mut slot, &scope, &1)?;
    }
    for (name, secs) in want {
        let got = periodic_compaction_of(&cfg.state.working_dir, &format!("op/{name}"))?;
        assert_eq!(got, secs, "{name}");
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    drop(slot);
    // Restored with the ages swapped: the new run's configuration applies.
    let mut c = cfg.clone();
    c.state.working_dir = root.path().join("restored");
    let (_cp, mut slot) = restore_with(&c, &format!("{}/chk-{id}", cp.job_url()), |b| b)?;
    let swapped = [
        ("default", ttl(None)?),
        ("hourly", default),
        ("no-filter", ttl(Some(Duration::from_secs(60)))?),
    ];
    for (name, t) in swapped {
        slot.value_state_with_ttl::<u64>("op", name, t)?;
    }
    let want = [
        ("default", 0),
        ("hourly", 30 * 24 * 3600),
        ("no-filter", 60),
    ];
    for (name, secs) in want {
        let got = periodic_compaction_of(&c.state.working_dir, &format!("op/{name}"))?;
        assert_eq!(got, secs, "restored {name}");
    }
    Ok(())
}

/// Heap incremental cleanup: accesses to a TTL state walk its entries and drop the expired ones
/// (entries the state never reads again leave memory); with `run_for_every_record`, records that
/// touch other states clean it too.
#[test]
fn heap_incremental_cleanup_drops_expired_entries() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let base = StateTtlConfig::builder(Duration::from_secs(1));
    let on_access = base.clone().cleanup_incrementally(10, false).build()?;
    let per_record = base.clone().cleanup_incrementally(10, true).build()?;
    let off = base.disable_cleanup_in_background().build()?;
    let accessed = slot.list_state_with_ttl::<u64>("op", "accessed", on_access)?;
    let by_record = slot.map_state_with_ttl::<u64, u64>("op", "by-record", per_record)?;
    let never = slot.value_state_with_ttl::<u64>("op", "never", off)?;
    let other = slot.value_state::<u64>("op", "other")?;
    let keys = 2000u64;
    for k in 0..keys {
        let scope = slot.scope(&k, &())?;
        accessed.add(&mut slot, &scope, &k)?;
        by_record.put(&mut slot, &scope, &k, &k)?;
        never.update(&mut slot, &scope, &k)?;
    }
    clock.set(T0 + 1000);
    // 2000 entries over 128 key groups: a few hundred steps of 10 entries walk them all.
    let fresh = slot.scope(&u64::MAX, &())?;
    for _ in 0..600 {
        accessed.add(&mut slot, &fresh, &0)?;
        let scope = slot.scope(&1u64, &())?;
        other.update(&mut slot, &scope, &1)?;
    }
    assert_eq!(
        size_of(&slot, "accessed").1,
        1,
        "only the list written after the expiry"
    );
    assert_eq!(size_of(&slot, "by-record").1, 0);
    assert_eq!(
        size_of(&slot, "never").1,
        keys,
        "no background cleanup configured"
    );
    Ok(())
}

/// Heap full-snapshot cleanup: expired entries are not written into the checkpoint, so the
/// restored slot does not hold them, while the running slot still does.
#[test]
fn heap_full_snapshot_leaves_expired_entries_out() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let base = StateTtlConfig::builder(Duration::from_secs(1)).disable_cleanup_in_background();
    let full = base.clone().cleanup_full_snapshot().build()?;
    let kept = base.build()?;
    let value = slot.value_state_with_ttl::<u64>("op", "value", full)?;
    let list = slot.list_state_with_ttl::<u64>("op", "list", full)?;
    let map = slot.map_state_with_ttl::<u64, u64>("op", "map", full)?;
    let other = slot.value_state_with_ttl::<u64>("op", "other", kept)?;
    for k in 0..100u64 {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &k)?;
        list.add(&mut slot, &scope, &k)?;
        map.put(&mut slot, &scope, &k, &k)?;
        other.update(&mut slot, &scope, &k)?;
    }
    clock.set(T0 + 1000);
    for k in 0..10u64 {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &k)?;
        list.add(&mut slot, &scope, &(k + 1000))?;
        map.put(&mut slot, &scope, &(k + 1000), &k)?;
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    assert_eq!(
        size_of(&slot, "value").1,
        100,
        "the running slot keeps them"
    );
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    let mut cfg2 = cfg.clone();
    cfg2.state.working_dir = root.path().join("work2");
    let (_cp, mut restored) = restore_with(&cfg2, &url, |b| b.clock(clock.clone()))?;
    assert_eq!(size_of(&restored, "value").1, 10);
    assert_eq!(
        size_of(&restored, "list").1,
        10,
        "lists with an unexpired element"
    );
    assert_eq!(size_of(&restored, "map").1, 10, "unexpired map entries");
    assert_eq!(
        size_of(&restored, "other").1,
        100,
        "no full-snapshot cleanup configured"
    );
    let list = restored.list_state_with_ttl::<u64>("op", "list", full)?;
    let scope = restored.scope(&3u64, &())?;
    assert_eq!(list.get(&mut restored, &scope)?, vec![1003]);
    Ok(())
}

/// TTL timestamps are part of the stored bytes: a checkpoint and restore carries them unchanged,
/// so an entry expires at the same instant in the restored slot (both backends, with renewals by
/// reads under `OnReadAndWrite`).
fn timestamps_survive_restore(backend: BackendKind) -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(backend, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let ttl = StateTtlConfig::builder(Duration::from_millis(1000))
        .update_type(TtlUpdateType::OnReadAndWrite)
        .build()?;
    let value = slot.value_state_with_ttl::<u64>("op", "value", ttl)?;
    let list = slot.list_state_with_ttl::<u64>("op", "list", ttl)?;
    let map = slot.map_state_with_ttl::<u64, u64>("op", "map", ttl)?;
    for k in 0..50u64 {
        let scope = slot.scope(&k, &())?;
        value.update(&mut slot, &scope, &k)?;
        list.add(&mut slot, &scope, &k)?;
        map.put(&mut slot, &scope, &k, &k)?;
    }
    // Keys 0..10 are read (renewed) at +600.
    clock.set(T0 + 600);
    for k in 0..10u64 {
        let scope = slot.scope(&k, &())?;
        assert_eq!(value.get(&mut slot, &scope)?, Some(k));
        assert_eq!(list.get(&mut slot, &scope)?, vec![k]);
        assert_eq!(map.get(&mut slot, &scope, &k)?, Some(k));
    }
    let stored: Vec<_> = [value.id(), list.id(), map.id()]
        .into_iter()
        .map(|id| scan_all(&mut slot, id))
        .collect::<Result<_, _>>()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);

    let mut cfg2 = cfg.clone();
    cfg2.state.working_dir = root.path().join("work2");
    let (_cp, mut restored) = restore_with(&cfg2, &url, |b| b.clock(clock.clone()))?;
    let value = restored.value_state_with_ttl::<u64>("op", "value", ttl)?;
    let list = restored.list_state_with_ttl::<u64>("op", "list", ttl)?;
    let map = restored.map_state_with_ttl::<u64, u64>("op", "map", ttl)?;
    let again: Vec<_> = [value.id(), list.id(), map.id()]
        .into_iter()
        .map(|id| scan_all(&mut restored, id))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        again, stored,
        "stored bytes (with their timestamps) restored unchanged"
    );
    // +999: nothing expired yet (read without renewing: a fresh OnCreateAndWrite handle).
    let peek = StateTtlConfig::builder(Duration::from_millis(1000)).build()?;
    let value_peek = restored.value_state_with_ttl::<u64>("op", "value", peek)?;
    clock.set(T0 + 999);
    for k in [0u64, 9, 10, 49] {
        let scope = restored.scope(&k, &())?;
        assert_eq!(
            value_peek.get(&mut restored, &scope)?,
            Some(k),
            "key {k} at +999"
        );
    }
    // +1000: the keys not read at +600 expire; the renewed ones live until +1600.
    clock.set(T0 + 1000);
    for k in 0..50u64 {
        let scope = restored.scope(&k, &())?;
        let want = (k < 10).then_some(k);
        assert_eq!(
            value_peek.get(&mut restored, &scope)?,
            want,
            "value {k} at +1000"
        );
        assert_eq!(
            map.get(&mut restored, &scope, &k)?,
            want,
            "map {k} at +1000"
        );
        assert_eq!(
            list.get(&mut restored, &scope)?,
            want.into_iter().collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn rocksdb_timestamps_survive_checkpoint_and_restore() -> TestResult {
    timestamps_survive_restore(BackendKind::RocksDb)
}

#[test]
fn heap_timestamps_survive_checkpoint_and_restore() -> TestResult {
    timestamps_survive_restore(BackendKind::Heap)
}

fn assert_ttl_mismatch<T>(r: cairn::engine::Result<T>, state: &str, stored_with_ttl: bool) {
    match r.map(|_| ()) {
        Err(e @ EngineError::StateTtlMismatch { .. }) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(state), "{e}");
            let EngineError::StateTtlMismatch {
                stored_with_ttl: s,
                requested_ttl: r,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((s, r), (stored_with_ttl, !stored_with_ttl));
        }
        other => panic!("{state}: expected a TTL mismatch, got {other:?}"),
    }
}

/// A restored state keeps whether it has TTL, even through a restore and checkpoint that never
/// registers it: registering it the other way is refused with a typed error naming it (Flink:
/// incompatible serializer), registering it as stored works. Also within one run.
fn ttl_switch_is_refused(backend: BackendKind) -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(backend, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let ttl = StateTtlConfig::builder(Duration::from_secs(60)).build()?;
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let with = slot.value_state_with_ttl::<u64>("op", "with-ttl", ttl)?;
    let without = slot.list_state::<u64>("op", "without-ttl")?;
    let scope = slot.scope(&1u64, &())?;
    with.update(&mut slot, &scope, &1)?;
    without.add(&mut slot, &scope, &2)?;
    // Within the run.
    assert_ttl_mismatch(
        slot.value_state::<u64>("op", "with-ttl"),
        "op/with-ttl",
        true,
    );
    assert_ttl_mismatch(
        slot.list_state_with_ttl::<u64>("op", "without-ttl", ttl),
        "op/without-ttl",
        false,
    );
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);

    // Restore, register nothing, checkpoint again: the TTL-ness travels on.
    let mut cfg2 = cfg.clone();
    cfg2.state.working_dir = root.path().join("work2");
    let (mut cp2, mut restored) = restore_with(&cfg2, &url, |b| b.clock(clock.clone()))?;
    let id2 = checkpoint(&mut cp2, &mut restored)?;
    let url2 = format!("{}/chk-{id2}", cp2.job_url());
    drop(restored);
    drop(cp2);

    for (i, url) in [url, url2].iter().enumerate() {
        let mut c = cfg.clone();
        c.state.working_dir = root.path().join(format!("check-{i}"));
        let (_cp, mut r) = restore_with(&c, url, |b| b.clock(clock.clone()))?;
        assert_ttl_mismatch(r.value_state::<u64>("op", "with-ttl"), "op/with-ttl", true);
        let desc = StateDescriptor::new("op", "without-ttl", StateKind::List).with_ttl(ttl);
        assert_ttl_mismatch(r.register(&desc), "op/without-ttl", false);
        // A refused registration changed nothing: registered as stored, both read back.
        let with = r.value_state_with_ttl::<u64>("op", "with-ttl", ttl)?;
        let without = r.list_state::<u64>("op", "without-ttl")?;
        let scope = r.scope(&1u64, &())?;
        assert_eq!(with.get(&mut r, &scope)?, Some(1));
        assert_eq!(without.get(&mut r, &scope)?, vec![2]);
    }
    Ok(())
}

#[test]
fn rocksdb_restore_refuses_a_ttl_switch() -> TestResult {
    ttl_switch_is_refused(BackendKind::RocksDb)
}

#[test]
fn heap_restore_refuses_a_ttl_switch() -> TestResult {
    ttl_switch_is_refused(BackendKind::Heap)
}

/// A state's TTL may change between runs (Flink allows it): timestamps keep their meaning, so a
/// longer TTL keeps entries written under the shorter one alive longer.
#[test]
fn a_changed_ttl_applies_to_stored_timestamps() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let mut slot = Slot::builder(&cfg).clock(clock.clone()).open()?;
    let short = StateTtlConfig::builder(Duration::from_millis(100)).build()?;
    let long = StateTtlConfig::builder(Duration::from_millis(1000)).build()?;
    let v = slot.value_state_with_ttl::<u64>("op", "v", short)?;
    let scope = slot.scope(&1u64, &())?;
    v.update(&mut slot, &scope, &7)?;
    clock.set(T0 + 500);
    let v = slot.value_state_with_ttl::<u64>("op", "v", long)?;
    assert_eq!(v.get(&mut slot, &scope)?, Some(7));
    slot.flush()?;
    slot.compact_state()?;
    assert_eq!(size_of(&slot, "v").1, 1, "the filter uses the new TTL too");
    let v = slot.value_state_with_ttl::<u64>("op", "v", short)?;
    assert_eq!(v.get(&mut slot, &scope)?, None);
    Ok(())
}

/// Rescaling moves stored bytes, so TTL timestamps and TTL-ness follow their key groups: 2 -> 1
/// and 2 -> 3 slots. State `op/only-in-1` exists only in old slot 1, which is not the base of
/// the 2 -> 1 restore (RocksDB brings it in from a merged slot: its TTL-ness comes from that
/// slot's files). After the restore, reads expire at the original instants and, on RocksDB,
/// compactions drop the expired data of both states.
fn rescale_keeps_ttl(backend: BackendKind) -> TestResult {
    use cairn::slot_for_key;
    let root = tempfile::tempdir()?;
    let cfg = config(backend, root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let ttl = StateTtlConfig::builder(Duration::from_millis(1000)).build()?;
    let old = root.path().join("old");
    let mut slots = open_slots(&cfg, &old, 2, |b| b.clock(clock.clone()))?;
    let keys = 400u64;
    for k in 0..keys {
        let owner = slot_for_key(&k, 128, 2)?;
        let slot = &mut slots[owner as usize];
        let v = slot.value_state_with_ttl::<u64>("op", "v", ttl)?;
        let scope = slot.scope(&k, &())?;
        if k % 2 == 1 {
            clock.set(T0 + 500);
        }
        v.update(slot, &scope, &k)?;
        if owner == 1 {
            let only = slot.list_state_with_ttl::<u64>("op", "only-in-1", ttl)?;
            only.add(slot, &scope, &k)?;
        }
        clock.set(T0);
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint_slots(&mut cp, &mut slots)?.id;
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slots);
    drop(cp);

    let alive_in_1 = (0..keys)
        .filter(|k| k % 2 == 1 && slot_for_key(k, 128, 2).is_ok_and(|o| o == 1))
        .count() as u64;
    for m in [1u32, 3] {
        let work = root.path().join(format!("new-{m}"));
        let (_cp, mut slots) = restore_slots(&cfg, &url, &work, m, |b| b.clock(clock.clone()))?;
        for slot in &mut slots {
            // Only slots with key groups of old slot 1 have the state.
            if slot
                .states()
                .iter()
                .any(|d| d.full_name() == "op/only-in-1")
            {
                let r = slot.list_state::<u64>("op", "only-in-1");
                assert_ttl_mismatch(r, "op/only-in-1", true);
            }
        }
        let read =
            |slots: &mut Vec<Slot>, k: u64| -> cairn::engine::Result<(Option<u64>, Vec<u64>)> {
                let slot = &mut slots[slot_for_key(&k, 128, m)? as usize];
                let v = slot.value_state_with_ttl::<u64>("op", "v", ttl)?;
                let only = slot.list_state_with_ttl::<u64>("op", "only-in-1", ttl)?;
                let scope = slot.scope(&k, &())?;
                Ok((v.get(slot, &scope)?, only.get(slot, &scope)?))
            };
        clock.set(T0 + 999);
        for k in 0..keys {
            let (v, only) = read(&mut slots, k)?;
            assert_eq!(v, Some(k), "{m} slots: key {k} at +999");
            let in_1 = slot_for_key(&k, 128, 2)? == 1;
            assert_eq!(
                only,
                if in_1 { vec![k] } else { vec![] },
                "{m} slots: key {k}"
            );
        }
        // +1000: what was written at T0 expired, what was written at +500 not.
        clock.set(T0 + 1000);
        for slot in &mut slots {
            slot.flush()?;
            // Twice: the first merges appended list elements into values, the second filters.
            slot.compact_state()?;
            slot.compact_state()?;
        }
        if backend == BackendKind::RocksDb {
            let v: u64 = slots.iter().map(|s| size_of(s, "v").1).sum();
            assert_eq!(
                v,
                keys / 2,
                "{m} slots: the compaction left the unexpired values"
            );
            let only: u64 = slots.iter().map(|s| size_of(s, "only-in-1").1).sum();
            assert_eq!(
                only, alive_in_1,
                "{m} slots: the compaction left the unexpired lists"
            );
        }
        for k in 0..keys {
            let (v, only) = read(&mut slots, k)?;
            let alive = k % 2 == 1;
            assert_eq!(v, alive.then_some(k), "{m} slots: key {k} at +1000");
            let in_1 = slot_for_key(&k, 128, 2)? == 1;
            assert_eq!(only, if in_1 && alive { vec![k] } else { vec![] });
        }
        clock.set(T0);
    }
    Ok(())
}

#[test]
fn rocksdb_rescale_keeps_ttl() -> TestResult {
    rescale_keeps_ttl(BackendKind::RocksDb)
}

#[test]
fn heap_rescale_keeps_ttl() -> TestResult {
    rescale_keeps_ttl(BackendKind::Heap)
}
