//! The keyed-state contract, run against every backend.
//!
//! Each contract function takes a [`Backend`] (a backend kind and its own temporary working
//! directory) and checks one behaviour through the public [`Slot`] API; the `contract!` macro at
//! the bottom generates one `#[test]` per (backend, behaviour), so `heap::map_state_...` and
//! `rocks_db::map_state_...` are reported separately. RocksDB runs for real, on a tempdir, in
//! three variants: with the default write-back state cache (`rocks_db`), without it
//! (`rocks_db_no_cache`), and with a cache of a few dozen entries that evicts on nearly every
//! write (`rocks_db_tiny_cache`).

use std::collections::{BTreeMap, BTreeSet};

use cairn::engine::backend::list_codec;
use cairn::engine::codec;
use cairn::engine::keygroup::{self, KeyGroupRange};
use cairn::engine::{StateEntry, StateId};
use cairn::{
    AggregateFunction, BackendKind, CairnConfig, EngineError, ErrorKind, Slot, StateDescriptor,
    StateKind, VoidNamespace,
};
use serde::Serialize;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One backend under test: its kind and a working directory owned by this test.
struct Backend {
    kind: BackendKind,
    /// `memory.state-cache-ratio`; `None` keeps the default.
    cache_ratio: Option<f64>,
    dir: tempfile::TempDir,
}

/// A state cache of ~3.3 KB at the 32 MiB test budget: a few dozen entries.
const TINY_CACHE_RATIO: f64 = 0.0001;

impl Backend {
    fn new(kind: BackendKind) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Self {
            kind,
            cache_ratio: None,
            dir: tempfile::tempdir()?,
        })
    }

    fn with_cache_ratio(kind: BackendKind, ratio: f64) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Self {
            cache_ratio: Some(ratio),
            ..Self::new(kind)?
        })
    }

    fn config(&self) -> CairnConfig {
        let mut config = CairnConfig::default();
        config.state.backend = self.kind;
        config.state.working_dir = self.dir.path().to_path_buf();
        // Small budget: many RocksDB instances run in parallel in this binary.
        config.memory.managed_size = bytesize::ByteSize::mib(32);
        if let Some(r) = self.cache_ratio {
            config.memory.state_cache_ratio = r;
            // Half may be dirty: both eviction of dirty entries and the dirty bound write back.
            config.state_cache.max_dirty_ratio = 0.5;
        }
        config
    }

    /// Slot 0 of 1: every key group.
    fn open(&self) -> cairn::engine::Result<Slot> {
        Slot::builder(&self.config()).open()
    }

    /// Slot `index` of `parallelism`, in `<dir>/slot-<index>`.
    fn open_slot(&self, index: u32, parallelism: u32) -> cairn::engine::Result<Slot> {
        Slot::builder(&self.config())
            .slot(index, parallelism)
            .open()
    }

    /// Slot `index` of `parallelism` of a job with `max_parallelism` key groups.
    fn open_slot_of(
        &self,
        index: u32,
        parallelism: u32,
        max_parallelism: u32,
    ) -> cairn::engine::Result<Slot> {
        let mut config = self.config();
        config.state.max_parallelism = Some(max_parallelism);
        Slot::builder(&config).slot(index, parallelism).open()
    }
}

/// The serialized form of a typed key or namespace (what the slot hashes and stores).
fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    codec::encode(v, "test").expect("test values encode")
}

/// The key group of a typed key.
fn key_group_of<K: Serialize + ?Sized>(key: &K, max_parallelism: u32) -> u16 {
    keygroup::assign_to_key_group(&enc(key), max_parallelism)
}

/// Every entry of `state` over all of the slot's key groups.
fn scan_all(slot: &mut Slot, state: StateId) -> cairn::engine::Result<Vec<StateEntry>> {
    let mut out = Vec::new();
    for kg in slot.key_groups().iter() {
        out.extend(slot.scan_key_group(state, kg)?);
    }
    Ok(out)
}

/// (key, namespace, user key, value) of a scanned entry.
type Entry = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

fn as_set(entries: Vec<StateEntry>) -> BTreeSet<Entry> {
    entries
        .into_iter()
        .map(|e| (e.key, e.namespace, e.user_key, e.value))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Value state

fn value_state_get_update_clear(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let count = slot.value_state::<u64>("counter", "count")?;
    let alice = slot.scope(&"alice", &VoidNamespace)?;
    let bob = slot.scope(&"bob", &VoidNamespace)?;

    assert_eq!(
        count.get(&mut slot, &alice)?,
        None,
        "absent value reads None"
    );
    count.update(&mut slot, &alice, &1)?;
    assert_eq!(count.get(&mut slot, &alice)?, Some(1));
    count.update(&mut slot, &alice, &u64::MAX)?;
    assert_eq!(
        count.get(&mut slot, &alice)?,
        Some(u64::MAX),
        "update replaces"
    );
    assert_eq!(
        count.get(&mut slot, &bob)?,
        None,
        "other keys are untouched"
    );

    count.update(&mut slot, &bob, &7)?;
    count.clear(&mut slot, &alice)?;
    assert_eq!(
        count.get(&mut slot, &alice)?,
        None,
        "clear removes the value"
    );
    assert_eq!(
        count.get(&mut slot, &bob)?,
        Some(7),
        "clear leaves other keys"
    );
    count.clear(&mut slot, &alice)?; // clearing an absent value is a no-op
    assert_eq!(count.get(&mut slot, &alice)?, None);

    count.update(&mut slot, &alice, &3)?;
    assert_eq!(
        count.get(&mut slot, &alice)?,
        Some(3),
        "a cleared value can be set again"
    );
    Ok(())
}

fn value_state_stores_structured_and_empty_values(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let records = slot.value_state::<(String, Vec<u32>, Option<i64>)>("op", "records")?;
    let unit = slot.value_state::<()>("op", "seen")?;
    let s = slot.scope(&42u64, &VoidNamespace)?;

    let v = ("hello".to_string(), vec![1, 2, 300], Some(-5));
    records.update(&mut slot, &s, &v)?;
    assert_eq!(records.get(&mut slot, &s)?, Some(v));

    // `()` encodes to zero bytes: an empty stored value is present, not absent.
    assert_eq!(unit.get(&mut slot, &s)?, None);
    unit.update(&mut slot, &s, &())?;
    assert_eq!(unit.get(&mut slot, &s)?, Some(()));
    assert_eq!(slot.get(unit.id(), &s)?, Some(Vec::new()));
    unit.clear(&mut slot, &s)?;
    assert_eq!(unit.get(&mut slot, &s)?, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// List state

fn list_state_add_get_update_clear(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let events = slot.list_state::<String>("op", "events")?;
    let s = slot.scope(&"k", &VoidNamespace)?;
    let other = slot.scope(&"other", &VoidNamespace)?;

    assert!(
        events.get(&mut slot, &s)?.is_empty(),
        "absent list reads empty"
    );
    events.add(&mut slot, &s, &"a".into())?;
    events.add(&mut slot, &s, &"b".into())?;
    events.add_all(&mut slot, &s, &["c".into(), "".into(), "d".into()])?;
    events.add(&mut slot, &s, &"a".into())?;
    assert_eq!(
        events.get(&mut slot, &s)?,
        ["a", "b", "c", "", "d", "a"],
        "elements come back in append order, duplicates and empty elements included"
    );
    events.add(&mut slot, &other, &"x".into())?;

    events.update(&mut slot, &s, &["z".into(), "y".into()])?;
    assert_eq!(events.get(&mut slot, &s)?, ["z", "y"], "update replaces");
    events.add(&mut slot, &s, &"after".into())?;
    assert_eq!(
        events.get(&mut slot, &s)?,
        ["z", "y", "after"],
        "add after update appends"
    );

    events.update(&mut slot, &s, &[])?;
    assert!(
        events.get(&mut slot, &s)?.is_empty(),
        "update with nothing clears"
    );
    let kg = s.key_group();
    assert!(
        slot.scan_key_group(events.id(), kg)?
            .iter()
            .all(|e| e.key != enc("k")),
        "a list updated to empty is absent from scans"
    );

    events.add_all(&mut slot, &s, &["p".into(), "q".into()])?;
    events.clear(&mut slot, &s)?;
    assert!(
        events.get(&mut slot, &s)?.is_empty(),
        "clear removes the list"
    );
    assert_eq!(
        events.get(&mut slot, &other)?,
        ["x"],
        "other keys keep their lists"
    );
    Ok(())
}

/// Regression (found by this suite): the heap backend's `list_append` inserted an empty list
/// entry for `add_all(&[])`, which scans then returned and RocksDB (no merge) did not.
fn list_state_add_all_of_nothing_stores_nothing(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let events = slot.list_state::<u32>("op", "events")?;
    let s = slot.scope(&"k", &VoidNamespace)?;
    events.add_all(&mut slot, &s, &[])?;
    assert!(events.get(&mut slot, &s)?.is_empty());
    let entries = slot.scan_key_group(events.id(), s.key_group())?;
    assert!(
        entries.is_empty(),
        "add_all(&[]) on an absent list must not create an entry, scan gave {entries:?}"
    );
    Ok(())
}

fn list_state_reads_back_after_flush(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let events = slot.list_state::<u64>("op", "events")?;
    let keys: Vec<_> = (0..50u64)
        .map(|k| slot.scope(&k, &VoidNamespace))
        .collect::<Result<_, _>>()?;
    let mut expected: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // Rounds of appends (merge operands) with flushes between them: flushed lists are merged
    // into SSTs, and later operands must still append to them.
    for round in 0..4u64 {
        for (k, s) in keys.iter().enumerate() {
            let k = k as u64;
            let n = (k + round) % 4;
            let elems: Vec<u64> = (0..n).map(|i| k * 1000 + round * 10 + i).collect();
            if n == 1 {
                events.add(&mut slot, s, &elems[0])?;
            } else {
                events.add_all(&mut slot, s, &elems)?;
            }
            expected.entry(k).or_default().extend(elems);
        }
        if round == 2 {
            // A full replace of some lists between flushes.
            for (k, s) in keys.iter().enumerate().step_by(5) {
                let replacement = vec![u64::MAX - k as u64];
                events.update(&mut slot, s, &replacement)?;
                expected.insert(k as u64, replacement);
            }
        }
        slot.flush()?;
        for (k, s) in keys.iter().enumerate() {
            let want = expected.get(&(k as u64)).cloned().unwrap_or_default();
            assert_eq!(
                events.get(&mut slot, s)?,
                want,
                "key {k} after round {round}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Map state

fn map_state_put_get_contains_remove(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let m = slot.map_state::<String, u64>("op", "m")?;
    let s = slot.scope(&"k", &VoidNamespace)?;

    assert!(m.is_empty(&mut slot, &s)?);
    assert_eq!(m.get(&mut slot, &s, &"a".into())?, None);
    assert!(!m.contains(&mut slot, &s, &"a".into())?);

    m.put(&mut slot, &s, &"a".into(), &1)?;
    m.put(&mut slot, &s, &"b".into(), &2)?;
    assert_eq!(m.get(&mut slot, &s, &"a".into())?, Some(1));
    assert!(m.contains(&mut slot, &s, &"b".into())?);
    assert!(!m.is_empty(&mut slot, &s)?);

    m.put(&mut slot, &s, &"a".into(), &10)?;
    assert_eq!(
        m.get(&mut slot, &s, &"a".into())?,
        Some(10),
        "put overwrites"
    );

    m.remove(&mut slot, &s, &"a".into())?;
    assert_eq!(m.get(&mut slot, &s, &"a".into())?, None);
    assert!(!m.contains(&mut slot, &s, &"a".into())?);
    m.remove(&mut slot, &s, &"never".into())?; // removing an absent key is a no-op
    assert_eq!(m.entries(&mut slot, &s)?, [("b".to_string(), 2)]);

    m.remove(&mut slot, &s, &"b".into())?;
    assert!(
        m.is_empty(&mut slot, &s)?,
        "a map whose last key was removed is empty"
    );
    assert!(
        slot.scan_key_group(m.id(), s.key_group())?.is_empty(),
        "an emptied map leaves no entry"
    );
    Ok(())
}

fn map_state_entries_ascend_by_encoded_user_key(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let by_str = slot.map_state::<String, u32>("op", "by-str")?;
    let by_num = slot.map_state::<u32, u32>("op", "by-num")?;
    let s = slot.scope(&"k", &VoidNamespace)?;

    // postcard writes a length before the string, so "zz" sorts after "b" but before "aaa";
    // and varint integers: 300 ([0xac, 0x02]) sorts before 200 ([0xc8, 0x01]).
    let strs = ["b", "aaa", "zz", "a", "", "ab", "ba"];
    for (i, k) in strs.iter().enumerate() {
        by_str.put(&mut slot, &s, &k.to_string(), &(i as u32))?;
    }
    let nums = [1000u32, 5, 128, 300, 0, 127, 200, 16384, 129];
    for n in nums {
        by_num.put(&mut slot, &s, &n, &(n + 1))?;
    }

    let mut want_str: Vec<(Vec<u8>, String, u32)> = strs
        .iter()
        .enumerate()
        .map(|(i, k)| (enc(*k), k.to_string(), i as u32))
        .collect();
    want_str.sort();
    let want_str: Vec<(String, u32)> = want_str.into_iter().map(|(_, k, v)| (k, v)).collect();
    assert_eq!(by_str.entries(&mut slot, &s)?, want_str);

    let mut want_num: Vec<(Vec<u8>, u32)> = nums.iter().map(|&n| (enc(&n), n)).collect();
    want_num.sort();
    let want_num: Vec<(u32, u32)> = want_num.into_iter().map(|(_, n)| (n, n + 1)).collect();
    assert_eq!(by_num.entries(&mut slot, &s)?, want_num);
    assert_ne!(
        want_num.iter().map(|e| e.0).collect::<Vec<_>>(),
        {
            let mut v = nums.to_vec();
            v.sort();
            v
        },
        "the fixture must distinguish byte order from numeric order"
    );

    // The raw API agrees, and is ascending by raw user-key bytes.
    let raw = slot.map_entries(by_num.id(), &s)?;
    assert!(raw.windows(2).all(|w| w[0].0 < w[1].0));
    Ok(())
}

fn map_state_clear_removes_only_its_key_and_namespace(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let m = slot.map_state::<u32, String>("op", "m")?;
    // Keys and namespaces chosen so that one's encoding is a prefix of another's.
    let target = slot.scope(&"a", &"w")?;
    let same_key_other_ns = slot.scope(&"a", &"w1")?;
    let longer_key = slot.scope(&"a\u{1}", &"w")?;
    let other_key = slot.scope(&"b", &"w")?;
    let scopes = [&target, &same_key_other_ns, &longer_key, &other_key];
    for (i, s) in scopes.iter().enumerate() {
        for uk in 0..20u32 {
            m.put(&mut slot, s, &uk, &format!("{i}-{uk}"))?;
        }
    }
    let before = as_set(scan_all(&mut slot, m.id())?);
    assert_eq!(before.len(), 4 * 20);

    m.clear(&mut slot, &target)?;
    assert!(m.is_empty(&mut slot, &target)?);
    assert_eq!(m.get(&mut slot, &target, &3)?, None);
    for (i, s) in scopes.iter().enumerate().skip(1) {
        let entries = m.entries(&mut slot, s)?;
        assert_eq!(entries.len(), 20, "scope {i} lost entries");
        assert_eq!(entries[3].1, format!("{i}-3"));
    }
    let after = as_set(scan_all(&mut slot, m.id())?);
    let removed: Vec<_> = before.difference(&after).collect();
    assert_eq!(removed.len(), 20);
    assert!(
        removed
            .iter()
            .all(|(k, ns, _, _)| *k == enc("a") && *ns == enc("w")),
        "clear removed entries of another (key, namespace)"
    );
    assert!(after.is_subset(&before));

    m.put(&mut slot, &target, &1, &"again".into())?;
    assert_eq!(m.entries(&mut slot, &target)?, [(1, "again".to_string())]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reducing and aggregating state

fn reducing_state_sums(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let sum = slot.reducing_state::<i64, _>("op", "sum", |a, b| a + b)?;
    let s = slot.scope(&"k", &VoidNamespace)?;
    let t = slot.scope(&"t", &VoidNamespace)?;
    assert_eq!(sum.get(&mut slot, &s)?, None);
    sum.add(&mut slot, &s, &5)?;
    assert_eq!(
        sum.get(&mut slot, &s)?,
        Some(5),
        "first add stores the value"
    );
    for v in [1, -3, 100, 0] {
        sum.add(&mut slot, &s, &v)?;
    }
    sum.add(&mut slot, &t, &1)?;
    assert_eq!(sum.get(&mut slot, &s)?, Some(103));
    assert_eq!(sum.get(&mut slot, &t)?, Some(1));
    sum.clear(&mut slot, &s)?;
    assert_eq!(sum.get(&mut slot, &s)?, None);
    sum.add(&mut slot, &s, &2)?;
    assert_eq!(
        sum.get(&mut slot, &s)?,
        Some(2),
        "a cleared reduction starts again"
    );
    Ok(())
}

/// `Slot::update_with`: one read-modify-write that puts, keeps or deletes, answering the
/// closure's result; equivalent to a get followed by a put or clear (also across a flush).
fn update_with_puts_keeps_and_deletes(b: &Backend) -> TestResult {
    use cairn::engine::backend::Update;
    let mut slot = b.open()?;
    let count = slot.register(&StateDescriptor::new("op", "count", StateKind::Reducing))?;
    let list = slot.register(&StateDescriptor::new("op", "list", StateKind::List))?;
    let decode = |v: Option<&[u8]>| v.map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    let keys: Vec<_> = (0..200u32)
        .map(|i| slot.scope(&i, &7u64))
        .collect::<Result<_, _>>()?;
    // Absent: the closure sees None; Keep writes nothing.
    let seen = slot.update_with(count, &keys[0], |v, _| (Update::Keep, v.is_none()))?;
    assert!(seen);
    assert_eq!(
        slot.get(count, &keys[0])?,
        None,
        "Keep on an absent key stores nothing"
    );
    // Increment every key 3 times (twice before a flush, once after).
    for round in 0..3u64 {
        for k in &keys {
            let was = slot.update_with(count, k, |v, out| {
                let n = decode(v);
                out.extend_from_slice(&(n.unwrap_or(0) + 1).to_be_bytes());
                (Update::Put, n)
            })?;
            assert_eq!(was, (round > 0).then_some(round));
        }
        if round == 1 {
            slot.flush()?;
        }
    }
    for k in &keys {
        assert_eq!(slot.get(count, k)?, Some(3u64.to_be_bytes().to_vec()));
    }
    // Keep leaves a stored value alone; Delete reads and removes it in one step.
    slot.update_with(count, &keys[1], |_, out| {
        out.extend_from_slice(b"ignored");
        (Update::Keep, ())
    })?;
    assert_eq!(
        slot.get(count, &keys[1])?,
        Some(3u64.to_be_bytes().to_vec())
    );
    for k in &keys[..100] {
        let taken = slot.update_with(count, k, |v, _| (Update::Delete, decode(v)))?;
        assert_eq!(taken, Some(3));
        assert_eq!(slot.get(count, k)?, None);
    }
    slot.flush()?;
    let left = scan_all(&mut slot, count)?;
    assert_eq!(
        left.len(),
        100,
        "the deleted half is gone after a flush, the rest stays"
    );
    // Only single-value kinds.
    let e = slot
        .update_with(list, &keys[0], |_, _| (Update::Keep, ()))
        .expect_err("update_with on a list state");
    assert!(matches!(e, EngineError::StateKindMismatch { .. }), "{e}");
    Ok(())
}

/// Flink's classic example: the average of the inputs, with a (sum, count) accumulator.
struct Average;

impl AggregateFunction for Average {
    type In = u32;
    type Acc = (u64, u64);
    type Out = f64;
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: &u32, (sum, count): (u64, u64)) -> (u64, u64) {
        (sum + u64::from(*value), count + 1)
    }
    fn get_result(&self, &(sum, count): &(u64, u64)) -> f64 {
        sum as f64 / count as f64
    }
}

fn aggregating_state_averages(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let avg = slot.aggregating_state("op", "avg", Average)?;
    let s = slot.scope(&"k", &1u32)?;
    let t = slot.scope(&"k", &2u32)?;
    assert_eq!(avg.get(&mut slot, &s)?, None, "nothing added: no result");
    for v in [1, 2, 3, 10] {
        avg.add(&mut slot, &s, &v)?;
    }
    avg.add(&mut slot, &t, &7)?;
    assert_eq!(avg.get(&mut slot, &s)?, Some(4.0));
    assert_eq!(avg.get(&mut slot, &t)?, Some(7.0));
    // The accumulator is what is stored.
    assert_eq!(slot.get(avg.id(), &s)?, Some(enc(&(16u64, 4u64))));
    avg.clear(&mut slot, &s)?;
    assert_eq!(avg.get(&mut slot, &s)?, None);
    assert_eq!(avg.get(&mut slot, &t)?, Some(7.0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn namespaces_of_one_key_are_independent(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let v = slot.value_state::<u32>("op", "v")?;
    let l = slot.list_state::<u32>("op", "l")?;
    let m = slot.map_state::<u32, u32>("op", "m")?;
    let w1 = slot.scope(&"k", &(0u64, 100u64))?;
    let w2 = slot.scope(&"k", &(100u64, 200u64))?;
    let void = slot.scope(&"k", &VoidNamespace)?;
    assert_eq!(
        w1.key_group(),
        w2.key_group(),
        "the key group depends on the key only"
    );

    for (i, s) in [&w1, &w2, &void].into_iter().enumerate() {
        let i = i as u32;
        v.update(&mut slot, s, &i)?;
        l.add_all(&mut slot, s, &[i, i + 10])?;
        m.put(&mut slot, s, &i, &i)?;
    }
    assert_eq!(v.get(&mut slot, &w1)?, Some(0));
    assert_eq!(v.get(&mut slot, &w2)?, Some(1));
    assert_eq!(v.get(&mut slot, &void)?, Some(2));
    assert_eq!(l.get(&mut slot, &w2)?, [1, 11]);
    assert_eq!(m.entries(&mut slot, &w2)?, [(1, 1)]);

    v.clear(&mut slot, &w1)?;
    l.clear(&mut slot, &w1)?;
    m.clear(&mut slot, &w1)?;
    assert_eq!(v.get(&mut slot, &w1)?, None);
    assert!(l.get(&mut slot, &w1)?.is_empty());
    assert!(m.is_empty(&mut slot, &w1)?);
    for (i, s) in [(1u32, &w2), (2, &void)] {
        assert_eq!(
            v.get(&mut slot, s)?,
            Some(i),
            "clear of one namespace leaves the other"
        );
        assert_eq!(l.get(&mut slot, s)?, [i, i + 10]);
        assert_eq!(m.entries(&mut slot, s)?, [(i, i)]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Key groups and slots

fn scan_key_group_returns_exactly_its_key_groups_entries(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let max_p = slot.max_parallelism();
    let v = slot.value_state::<u64>("op", "v")?;
    let l = slot.list_state::<u64>("op", "l")?;
    let m = slot.map_state::<u8, u64>("op", "m")?;

    let mut want_v = BTreeSet::new();
    let mut want_l = BTreeSet::new();
    let mut want_m = BTreeSet::new();
    for k in 0..300u64 {
        let ns = (k % 3) as u8;
        let s = slot.scope(&k, &ns)?;
        assert_eq!(s.key_group(), key_group_of(&k, max_p));
        v.update(&mut slot, &s, &(k * 2))?;
        want_v.insert((enc(&k), enc(&ns), Vec::new(), enc(&(k * 2))));
        if k % 2 == 0 {
            l.add_all(&mut slot, &s, &[k, k + 1])?;
            let list = list_codec::encode([&enc(&k)[..], &enc(&(k + 1))[..]]);
            want_l.insert((enc(&k), enc(&ns), Vec::new(), list));
        }
        if k % 3 == 0 {
            for uk in 0..(k % 4) as u8 {
                m.put(&mut slot, &s, &uk, &k)?;
                want_m.insert((enc(&k), enc(&ns), enc(&uk), enc(&k)));
            }
        }
    }
    // A cleared entry is absent from scans.
    let gone = slot.scope(&0u64, &0u8)?;
    v.clear(&mut slot, &gone)?;
    want_v.remove(&(enc(&0u64), enc(&0u8), Vec::new(), enc(&0u64)));

    for (state, want) in [(v.id(), &want_v), (l.id(), &want_l), (m.id(), &want_m)] {
        let mut union = BTreeSet::new();
        let mut non_empty_groups = 0;
        for kg in slot.key_groups().iter() {
            let entries = slot.scan_key_group(state, kg)?;
            non_empty_groups += usize::from(!entries.is_empty());
            for e in entries {
                assert_eq!(
                    keygroup::assign_to_key_group(&e.key, max_p),
                    kg,
                    "scan of key group {kg} returned a key of another group"
                );
                assert!(
                    union.insert((e.key, e.namespace, e.user_key, e.value)),
                    "duplicate"
                );
            }
        }
        assert!(
            non_empty_groups > 10,
            "the fixture must spread over key groups"
        );
        assert_eq!(
            &union, want,
            "union of the scans of state {state} = all its entries"
        );
    }
    Ok(())
}

fn scan_key_group_orders_by_key_namespace_user_key(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let m = slot.map_state::<u32, u32>("op", "m")?;
    let mut entries_in = 0;
    for k in 0..100u32 {
        for ns in [2u8, 0, 1] {
            let s = slot.scope(&k, &ns)?;
            for uk in [300u32, 1, 200] {
                m.put(&mut slot, &s, &uk, &k)?;
                entries_in += 1;
            }
        }
    }
    let mut seen = 0;
    for kg in slot.key_groups().iter() {
        let entries = slot.scan_key_group(m.id(), kg)?;
        seen += entries.len();
        // Ascending by the stored composite key: (len(key), key, len(ns), ns, user key) for
        // short keys.
        let order: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.key.len(),
                    &e.key,
                    e.namespace.len(),
                    &e.namespace,
                    &e.user_key,
                )
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key group {kg}: {order:?}"
        );
    }
    assert_eq!(seen, entries_in);
    Ok(())
}

fn scan_of_foreign_key_group_or_unknown_state_is_rejected(b: &Backend) -> TestResult {
    let mut slot = b.open_slot(0, 2)?;
    let v = slot.value_state::<u32>("op", "v")?;
    let foreign = slot.key_groups().end as u16 + 1;
    let e = slot.scan_key_group(v.id(), foreign).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(matches!(e, EngineError::KeyGroupOutOfRange { key_group, .. } if key_group == foreign));

    let e = slot.scan_key_group(99, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(matches!(e, EngineError::UnknownState(99)), "{e:?}");
    let s = slot.scope_raw(&[], &[]);
    if let Ok(s) = s {
        let e = slot.get(99, &s).unwrap_err();
        assert!(matches!(e, EngineError::UnknownState(99)), "{e:?}");
    }
    Ok(())
}

fn each_slot_accepts_only_keys_of_its_key_groups(b: &Backend) -> TestResult {
    const SLOTS: u32 = 3;
    let mut slots: Vec<Slot> = (0..SLOTS)
        .map(|i| b.open_slot(i, SLOTS))
        .collect::<Result<_, _>>()?;
    let max_p = slots[0].max_parallelism();
    assert_eq!(max_p, keygroup::default_max_parallelism(SLOTS));

    // The slots' ranges tile the key groups.
    for (i, slot) in slots.iter().enumerate() {
        assert_eq!(
            slot.key_groups(),
            KeyGroupRange::for_slot(max_p, SLOTS, i as u32)?
        );
        assert_eq!(slot.index(), (i as u32, SLOTS));
    }
    let handles: Vec<_> = slots
        .iter_mut()
        .map(|s| s.value_state::<u64>("op", "v"))
        .collect::<Result<_, _>>()?;

    let mut owned = vec![BTreeSet::new(); SLOTS as usize];
    for k in 0..200u64 {
        let kg = key_group_of(&k, max_p);
        let owner = keygroup::slot_for_key_group(kg, max_p, SLOTS) as usize;
        for (i, slot) in slots.iter_mut().enumerate() {
            assert_eq!(slot.key_group_of_bytes(&enc(&k)), kg);
            match slot.scope(&k, &VoidNamespace) {
                Ok(s) => {
                    assert_eq!(i, owner, "slot {i} accepted key {k} of key group {kg}");
                    handles[i].update(slot, &s, &k)?;
                    owned[i].insert(enc(&k));
                }
                Err(e) => {
                    assert_ne!(i, owner, "slot {i} rejected its own key {k}: {e}");
                    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
                    assert!(
                        matches!(e, EngineError::KeyGroupOutOfRange { key_group, range }
                            if key_group == kg && range == slot.key_groups()),
                        "{e:?}"
                    );
                    // The raw API checks the same.
                    let raw = slot.scope_raw(&enc(&k), &[]).unwrap_err();
                    assert!(matches!(raw, EngineError::KeyGroupOutOfRange { .. }));
                }
            }
        }
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        assert!(!owned[i].is_empty(), "every slot gets some of 200 keys");
        let keys: BTreeSet<_> = scan_all(slot, handles[i].id())?
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, owned[i], "slot {i} holds exactly its keys");
    }
    Ok(())
}

fn two_byte_key_group_prefix_scopes_and_scans_exactly(b: &Backend) -> TestResult {
    // 1000 key groups need a 2-byte prefix; slot 1 of 3 owns [334, 666].
    let max_p = 1000;
    let mut slot = b.open_slot_of(1, 3, max_p)?;
    assert_eq!(slot.max_parallelism(), max_p);
    assert_eq!(slot.key_groups(), KeyGroupRange::new(334, 666));
    let v = slot.value_state::<u64>("op", "v")?;
    let m = slot.map_state::<u16, u64>("op", "m")?;
    let mut want = BTreeSet::new();
    let mut rejected = 0;
    for k in 0..3000u64 {
        let kg = key_group_of(&k, max_p);
        match slot.scope(&k, &VoidNamespace) {
            Ok(s) => {
                assert!(slot.key_groups().contains(kg));
                assert_eq!(s.key_group(), kg);
                v.update(&mut slot, &s, &k)?;
                m.put(&mut slot, &s, &300, &k)?;
                want.insert(enc(&k));
            }
            Err(e) => {
                assert!(!slot.key_groups().contains(kg), "{e}");
                assert!(matches!(e, EngineError::KeyGroupOutOfRange { .. }), "{e:?}");
                rejected += 1;
            }
        }
    }
    assert!(
        want.len() > 500 && rejected > 1000,
        "{} accepted",
        want.len()
    );
    for state in [v.id(), m.id()] {
        let mut keys = BTreeSet::new();
        for kg in slot.key_groups().iter() {
            for e in slot.scan_key_group(state, kg)? {
                assert_eq!(keygroup::assign_to_key_group(&e.key, max_p), kg);
                assert!(keys.insert(e.key));
            }
        }
        assert_eq!(keys, want, "state {state}");
    }
    // Clearing a map of a key in the last key group leaves its neighbours.
    let last = (0..3000u64)
        .rev()
        .find(|k| key_group_of(k, max_p) == 666)
        .ok_or("no key in key group 666")?;
    let s = slot.scope(&last, &VoidNamespace)?;
    m.clear(&mut slot, &s)?;
    let mut remaining = 0;
    for kg in slot.key_groups().iter() {
        remaining += slot.scan_key_group(m.id(), kg)?.len();
    }
    assert_eq!(remaining, want.len() - 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Registration

fn registering_a_name_with_another_kind_fails(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let v = slot.value_state::<u64>("op", "s")?;
    let s = slot.scope(&"k", &VoidNamespace)?;
    v.update(&mut slot, &s, &1)?;

    let e = slot
        .list_state::<u64>("op", "s")
        .err()
        .expect("list over a value state");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        matches!(&e, EngineError::StateKindMismatch { state, registered: "value", requested: "list" } if state == "op/s"),
        "{e:?}"
    );
    for kind in [StateKind::Map, StateKind::Reducing, StateKind::Aggregating] {
        let e = slot
            .register(&StateDescriptor::new("op", "s", kind))
            .unwrap_err();
        assert!(
            matches!(e, EngineError::StateKindMismatch { .. }),
            "{kind:?}: {e:?}"
        );
    }
    // The raw API checks kinds too.
    let e = slot.list_get(v.id(), &s).unwrap_err();
    assert!(matches!(e, EngineError::StateKindMismatch { .. }), "{e:?}");
    let e = slot.map_put(v.id(), &s, b"u", b"v").unwrap_err();
    assert!(matches!(e, EngineError::StateKindMismatch { .. }), "{e:?}");

    // The failed registrations changed nothing.
    assert_eq!(slot.states().len(), 1);
    assert_eq!(v.get(&mut slot, &s)?, Some(1));
    // The same name in another operator is another state.
    let other = slot.list_state::<u64>("other-op", "s")?;
    assert_ne!(other.id(), v.id());
    Ok(())
}

fn reopening_a_state_returns_the_same_id_and_data(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let first = slot.map_state::<u32, u32>("op", "m")?;
    let _unrelated = slot.value_state::<u32>("op", "v")?;
    let s = slot.scope(&"k", &VoidNamespace)?;
    first.put(&mut slot, &s, &1, &2)?;

    let again = slot.map_state::<u32, u32>("op", "m")?;
    assert_eq!(again.id(), first.id());
    let desc = StateDescriptor::new("op", "m", StateKind::Map);
    assert_eq!(slot.register(&desc)?, first.id());
    assert_eq!(again.get(&mut slot, &s, &1)?, Some(2));
    again.put(&mut slot, &s, &3, &4)?;
    assert_eq!(first.entries(&mut slot, &s)?, [(1, 2), (3, 4)]);
    assert_eq!(slot.states().len(), 2);
    assert_eq!(slot.states()[first.id() as usize], desc);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw bytes API

fn raw_api_is_equivalent_to_typed_api(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let v = slot.value_state::<(u32, String)>("op", "v")?;
    let l = slot.list_state::<u64>("op", "l")?;
    let m = slot.map_state::<String, i32>("op", "m")?;

    let typed = slot.scope(&("user", 7u32), &9u64)?;
    let raw = slot.scope_raw(&enc(&("user", 7u32)), &enc(&9u64))?;
    assert_eq!(
        typed, raw,
        "typed scope = raw scope of the encoded key and namespace"
    );

    // Typed write, raw read.
    v.update(&mut slot, &typed, &(1, "x".into()))?;
    assert_eq!(slot.get(v.id(), &raw)?, Some(enc(&(1u32, "x"))));
    // Raw write, typed read.
    slot.put(v.id(), &raw, &enc(&(2u32, "y")))?;
    assert_eq!(v.get(&mut slot, &typed)?, Some((2, "y".to_string())));
    slot.clear(v.id(), &raw)?;
    assert_eq!(v.get(&mut slot, &typed)?, None);

    l.add(&mut slot, &typed, &1)?;
    slot.list_append(l.id(), &raw, &[&enc(&2u64)[..], &enc(&300u64)[..]])?;
    l.add_all(&mut slot, &typed, &[4])?;
    assert_eq!(l.get(&mut slot, &typed)?, [1, 2, 300, 4]);
    assert_eq!(
        slot.list_get(l.id(), &raw)?,
        [enc(&1u64), enc(&2u64), enc(&300u64), enc(&4u64)]
    );
    slot.list_update(l.id(), &raw, &[&enc(&9u64)[..]])?;
    assert_eq!(l.get(&mut slot, &typed)?, [9]);

    m.put(&mut slot, &typed, &"a".into(), &-1)?;
    slot.map_put(m.id(), &raw, &enc("b"), &enc(&-2i32))?;
    assert_eq!(m.get(&mut slot, &typed, &"b".into())?, Some(-2));
    assert_eq!(slot.map_get(m.id(), &raw, &enc("a"))?, Some(enc(&-1i32)));
    assert!(slot.map_contains(m.id(), &raw, &enc("a"))?);
    assert_eq!(
        slot.map_entries(m.id(), &raw)?,
        [(enc("a"), enc(&-1i32)), (enc("b"), enc(&-2i32))]
    );
    slot.map_remove(m.id(), &raw, &enc("a"))?;
    assert!(!m.contains(&mut slot, &typed, &"a".into())?);

    // Scans return the same bytes whichever API wrote them.
    let entries = slot.scan_key_group(m.id(), typed.key_group())?;
    assert_eq!(
        entries,
        [StateEntry {
            key: enc(&("user", 7u32)),
            namespace: enc(&9u64),
            user_key: enc("b"),
            value: enc(&-2i32),
        }]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Many keys (the tiny state cache evicts on nearly every write)

/// Hundreds of keys of every kind, overwritten, appended, removed and cleared, then read back
/// through gets, map iteration and key-group scans, before and after a flush into the backend's
/// files. With the tiny cache this runs through eviction, write-back of dirty entries, list
/// deltas merged into RocksDB and tombstones hiding stored entries.
fn many_keys_read_back_through_eviction(b: &Backend) -> TestResult {
    let mut slot = b.open()?;
    let count = slot.value_state::<u64>("op", "count")?;
    let events = slot.list_state::<u32>("op", "events")?;
    let attrs = slot.map_state::<u16, u64>("op", "attrs")?;
    const KEYS: u32 = 300;
    for round in 0..3u64 {
        for k in 0..KEYS {
            let s = slot.scope(&k, &VoidNamespace)?;
            let n = count.get(&mut slot, &s)?.unwrap_or(0);
            count.update(&mut slot, &s, &(n + 1))?;
            if k % 3 == 0 {
                events.add(&mut slot, &s, &(k + round as u32))?;
            }
            if k % 5 == 0 {
                attrs.put(&mut slot, &s, &(round as u16), &u64::from(k))?;
                attrs.put(&mut slot, &s, &300, &round)?;
            }
        }
    }
    for k in (0..KEYS).step_by(7) {
        let s = slot.scope(&k, &VoidNamespace)?;
        count.clear(&mut slot, &s)?;
        attrs.remove(&mut slot, &s, &1)?;
    }
    for k in (0..KEYS).step_by(30) {
        let s = slot.scope(&k, &VoidNamespace)?;
        attrs.clear(&mut slot, &s)?;
        events.update(&mut slot, &s, &[7, 8])?;
    }
    let check = |slot: &mut Slot| -> TestResult {
        let mut values = BTreeSet::new();
        for k in 0..KEYS {
            let s = slot.scope(&k, &VoidNamespace)?;
            let want = (k % 7 != 0).then_some(3);
            assert_eq!(count.get(slot, &s)?, want, "count of {k}");
            if let Some(v) = want {
                values.insert((enc(&k), Vec::new(), Vec::new(), enc(&v)));
            }
            let list = events.get(slot, &s)?;
            let want_list: Vec<u32> = match (k % 30 == 0, k % 3 == 0) {
                (true, _) => vec![7, 8],
                (false, true) => (0..3).map(|r| k + r).collect(),
                (false, false) => vec![],
            };
            assert_eq!(list, want_list, "list of {k}");
            let mut want_map: Vec<(u16, u64)> = Vec::new();
            if k % 5 == 0 && k % 30 != 0 {
                want_map = vec![
                    (0, u64::from(k)),
                    (1, u64::from(k)),
                    (2, u64::from(k)),
                    (300, 2),
                ];
                if k % 7 == 0 {
                    want_map.retain(|(uk, _)| *uk != 1);
                }
            }
            let mut got = attrs.entries(slot, &s)?;
            got.sort();
            assert_eq!(got, want_map, "map of {k}");
            assert_eq!(
                attrs.get(slot, &s, &2)?,
                want_map.iter().find(|e| e.0 == 2).map(|e| e.1)
            );
        }
        assert_eq!(as_set(scan_all(slot, count.id())?), values, "value scan");
        let lists = scan_all(slot, events.id())?;
        assert_eq!(lists.len(), (0..KEYS).filter(|k| k % 3 == 0).count());
        let maps = scan_all(slot, attrs.id())?;
        let want_maps: usize = (0..KEYS)
            .filter(|k| k % 5 == 0 && k % 30 != 0)
            .map(|k| if k % 7 == 0 { 3 } else { 4 })
            .sum();
        assert_eq!(maps.len(), want_maps, "map entries in scans");
        Ok(())
    };
    check(&mut slot)?;
    slot.flush()?;
    check(&mut slot)?;
    if let Some(stats) = slot.cache_stats()
        && b.cache_ratio == Some(TINY_CACHE_RATIO)
    {
        assert!(stats.evictions > 1000, "{stats:?}");
        assert!(stats.evicted_dirty > 5, "{stats:?}");
        assert!(stats.dirty_flushes > 10, "{stats:?}");
        assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod heap {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(&super::Backend::new(super::BackendKind::Heap)?)
                }
            )*
        }
        mod rocks_db {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(&super::Backend::new(super::BackendKind::RocksDb)?)
                }
            )*
        }
        mod rocks_db_no_cache {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(&super::Backend::with_cache_ratio(super::BackendKind::RocksDb, 0.0)?)
                }
            )*
        }
        mod rocks_db_tiny_cache {
            $(
                #[test]
                fn $name() -> super::TestResult {
                    super::$name(&super::Backend::with_cache_ratio(
                        super::BackendKind::RocksDb,
                        super::TINY_CACHE_RATIO,
                    )?)
                }
            )*
        }
    };
}

contract!(
    value_state_get_update_clear,
    value_state_stores_structured_and_empty_values,
    list_state_add_get_update_clear,
    list_state_add_all_of_nothing_stores_nothing,
    list_state_reads_back_after_flush,
    map_state_put_get_contains_remove,
    map_state_entries_ascend_by_encoded_user_key,
    map_state_clear_removes_only_its_key_and_namespace,
    reducing_state_sums,
    update_with_puts_keeps_and_deletes,
    aggregating_state_averages,
    namespaces_of_one_key_are_independent,
    scan_key_group_returns_exactly_its_key_groups_entries,
    scan_key_group_orders_by_key_namespace_user_key,
    scan_of_foreign_key_group_or_unknown_state_is_rejected,
    each_slot_accepts_only_keys_of_its_key_groups,
    two_byte_key_group_prefix_scopes_and_scans_exactly,
    registering_a_name_with_another_kind_fails,
    reopening_a_state_returns_the_same_id_and_data,
    raw_api_is_equivalent_to_typed_api,
    many_keys_read_back_through_eviction,
);
