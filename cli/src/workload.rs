//! The keyed workloads of `cairn run`: which key each record touches and what it does to state.
//!
//! Every record `g` of a run is a pure function of `(g, seed)` (see [`crate::stream`]), keys are
//! `u64` serialized by the engine's codec (postcard), and the namespace is [`VoidNamespace`](cairn_engine::codec::VoidNamespace).
//!
//! ## `update` (the Flink comparison's keyed counter)
//! Record `g` -> key `key_for(g, K, seed)`; `count[key] += 1` in a `ValueState<u64>`
//! (`counter/count`): one get and one put per record. The counter is postcard-encoded (a varint,
//! 1–3 bytes for these counts) where Flink's `Long` takes 8 bytes. `--value-size` is ignored.
//!
//! ## `load` (the Flink comparison's bulk load)
//! Record `g` -> key `g mod K`, value `payload(key, V)` with `V = --value-size`, written with the
//! raw slot API (`Slot::put` into the value state `load/payload`): the stored bytes are exactly the
//! payload, with no serde length prefix. One put per record, no read.
//!
//! ## `mixed` (the default)
//! Record `g` draws `r_0, r_1` from [`RecordRng`]`::new(g, seed, 0)`. Its key is
//! `key_for(g, K, seed)` with `--skew uniform`, or `rank - 1` with `rank` from
//! [`Zipf`]`(K, --zipf-exponent)` sampled with `RecordRng::new(g, seed, ZIPF_SALT)` with
//! `--skew zipf` (key 0 is the hottest). Then, by `r_0 mod 100`:
//!
//! | share | operation | state (raw slot API) |
//! |---|---|---|
//! | `[0, 50)`  50 % | value read-modify-write: get; absent -> `[0u64 BE][payload(key, V)[8..]]`; add 1 to the big-endian counter in bytes `0..8`; put | `mixed/value` (value) |
//! | `[50, 70)` 20 % | list append of `payload(g, V)` (a RocksDB merge, no read) | `mixed/list` (list) |
//! | `[70, 90)` 20 % | map put of user key `[r_1 mod 16]` -> `payload(g, V)` | `mixed/map` (map) |
//! | `[90, 95)`  5 % | map get of user key `[r_1 mod 16]` | `mixed/map` |
//! | `[95, 100)` 5 % | list read; when it holds more than 32 elements, replace it with its last 16 (a bounded buffer, so hot keys under zipf stay small) | `mixed/list` |
//!
//! Values are `V = --value-size` bytes (at least 8).
//!
//! ## Checksum
//! After a run, [`checksum`] scans every key group of every state and sums (wrapping) the XXH3 of
//! each entry (`state name, key, namespace, user key, value`, length-prefixed). The sum does not
//! depend on scan order, so the same workload gives the same digest on both backends and for any
//! number of slots. It also totals the counters (`update`: the counts, which sum to the number of
//! records; `mixed`: the value-state counters, which sum to the number of read-modify-writes).

use cairn_engine::backend::{StateId, StateKind};
use cairn_engine::{Result, ScopeKey, Slot, StateDescriptor, ValueState};
use serde::Serialize;

use crate::stream::{self, RecordRng, Zipf};

/// Salt of the zipf key draws (an independent stream from the op draws).
pub const ZIPF_SALT: u64 = 0x5a49_5046_5a49_5046;
/// A list read trims lists longer than this...
pub const LIST_TRIM_ABOVE: usize = 32;
/// ...to their last this many elements.
pub const LIST_KEEP: usize = 16;
/// Distinct map user keys per key.
pub const MAP_USER_KEYS: u64 = 16;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// 50 % value read-modify-write, 20 % list append, 20 % map put, 5 % map get, 5 % list read.
    Mixed,
    /// the Flink comparison's keyed counter: one get + one put of a `u64` per record.
    Update,
    /// the Flink comparison's load: one put of `payload(g mod K, V)` per record.
    Load,
    /// the Flink comparison's windowed word count: a reducing state and an event-time timer per
    /// (word, window); see [`crate::wordcount`].
    Wordcount,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Update => "update",
            WorkloadKind::Load => "load",
            WorkloadKind::Wordcount => "wordcount",
        })
    }
}

/// How the mixed workload picks keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Skew {
    /// `key_for(g, K, seed)`: every key equally likely.
    Uniform,
    /// Zipf ranks: key 0 hottest.
    Zipf,
}

impl std::fmt::Display for Skew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skew::Uniform => "uniform",
            Skew::Zipf => "zipf",
        })
    }
}

/// A workload with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// The workload.
    pub kind: WorkloadKind,
    /// Number of records `N` (`g = 0..N`).
    pub records: u64,
    /// Number of keys `K` (at least 1).
    pub keys: u64,
    /// Value size `V` in bytes (`mixed` and `load`; at least 8).
    pub value_size: usize,
    /// Seed of the stream.
    pub seed: u64,
    /// Key skew (`mixed` only).
    pub skew: Skew,
    /// Zipf exponent (`mixed` with `Skew::Zipf` only; `> 0`).
    pub zipf_exponent: f64,
}

/// How many operations of each kind a slot ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// Value read-modify-writes (`update` and `mixed`).
    pub value_rmw: u64,
    /// Value puts without a read (`load`).
    pub value_put: u64,
    /// List appends.
    pub list_append: u64,
    /// List reads.
    pub list_read: u64,
    /// List reads that trimmed the list.
    pub list_trim: u64,
    /// Map puts.
    pub map_put: u64,
    /// Map gets.
    pub map_get: u64,
    /// Map gets that found the user key.
    pub map_hit: u64,
}

impl OpCounts {
    /// Adds another slot's counts.
    pub fn add(&mut self, o: &OpCounts) {
        self.value_rmw += o.value_rmw;
        self.value_put += o.value_put;
        self.list_append += o.list_append;
        self.list_read += o.list_read;
        self.list_trim += o.list_trim;
        self.map_put += o.map_put;
        self.map_get += o.map_get;
        self.map_hit += o.map_hit;
    }
}

enum States {
    Update {
        count: ValueState<u64>,
    },
    Load {
        payload: StateId,
    },
    Mixed {
        value: StateId,
        list: StateId,
        map: StateId,
    },
}

/// Drives one slot: registers the workload's states and applies records to them.
pub struct Driver {
    spec: WorkloadSpec,
    zipf: Option<Zipf>,
    states: States,
    buf: Vec<u8>,
    /// Operations run so far.
    pub ops: OpCounts,
}

impl Driver {
    /// Registers the workload's states in `slot`.
    ///
    /// # Panics
    /// When `spec.keys == 0` or, for zipf skew, the exponent is not positive and finite: callers
    /// validate both.
    pub fn new(spec: &WorkloadSpec, slot: &mut Slot) -> Result<Self> {
        assert!(spec.keys >= 1, "keys must be >= 1");
        let states = match spec.kind {
            WorkloadKind::Update => States::Update {
                count: slot.value_state::<u64>("counter", "count")?,
            },
            WorkloadKind::Load => States::Load {
                payload: slot.register(&StateDescriptor::new(
                    "load",
                    "payload",
                    StateKind::Value,
                ))?,
            },
            WorkloadKind::Wordcount => {
                return Err(cairn_engine::EngineError::InvalidArgument(
                    "the wordcount workload runs through cairn_cli::wordcount::run".into(),
                ));
            }
            WorkloadKind::Mixed => States::Mixed {
                value: slot.register(&StateDescriptor::new("mixed", "value", StateKind::Value))?,
                list: slot.register(&StateDescriptor::new("mixed", "list", StateKind::List))?,
                map: slot.register(&StateDescriptor::new("mixed", "map", StateKind::Map))?,
            },
        };
        let zipf = (spec.kind == WorkloadKind::Mixed && spec.skew == Skew::Zipf)
            .then(|| Zipf::new(spec.keys, spec.zipf_exponent).expect("validated zipf parameters"));
        Ok(Self {
            spec: spec.clone(),
            zipf,
            states,
            buf: Vec::with_capacity(spec.value_size),
            ops: OpCounts::default(),
        })
    }

    /// The key of record `g`.
    #[inline]
    pub fn key(&self, g: u64) -> u64 {
        let s = &self.spec;
        match (s.kind, &self.zipf) {
            (WorkloadKind::Load, _) => g % s.keys,
            (WorkloadKind::Mixed, Some(z)) => {
                z.sample(&mut RecordRng::new(g, s.seed, ZIPF_SALT)) - 1
            }
            _ => stream::key_for(g, s.keys, s.seed),
        }
    }

    /// Applies record `g` (whose key is `key`, scoped by `scope`) to the slot's state.
    pub fn apply(&mut self, slot: &mut Slot, g: u64, key: u64, scope: &ScopeKey) -> Result<()> {
        let v = self.spec.value_size;
        match &self.states {
            States::Update { count } => {
                let n = count.get(slot, scope)?.unwrap_or(0);
                count.update(slot, scope, &(n + 1))?;
                self.ops.value_rmw += 1;
            }
            States::Load { payload } => {
                stream::payload_into(&mut self.buf, key, v);
                slot.put(*payload, scope, &self.buf)?;
                self.ops.value_put += 1;
            }
            &States::Mixed { value, list, map } => {
                let mut rng = RecordRng::new(g, self.spec.seed, 0);
                let op = rng.next_u64() % 100;
                let user_key = [(rng.next_u64() % MAP_USER_KEYS) as u8];
                match op {
                    0..50 => {
                        let mut bytes = match slot.get(value, scope)? {
                            Some(b) => b,
                            None => {
                                let mut b = stream::payload(key, v);
                                b[..8].fill(0);
                                b
                            }
                        };
                        let n = counter_of(&bytes).wrapping_add(1);
                        bytes[..8].copy_from_slice(&n.to_be_bytes());
                        slot.put(value, scope, &bytes)?;
                        self.ops.value_rmw += 1;
                    }
                    50..70 => {
                        stream::payload_into(&mut self.buf, g, v);
                        slot.list_append(list, scope, &[&self.buf])?;
                        self.ops.list_append += 1;
                    }
                    70..90 => {
                        stream::payload_into(&mut self.buf, g, v);
                        slot.map_put(map, scope, &user_key, &self.buf)?;
                        self.ops.map_put += 1;
                    }
                    90..95 => {
                        if slot.map_get(map, scope, &user_key)?.is_some() {
                            self.ops.map_hit += 1;
                        }
                        self.ops.map_get += 1;
                    }
                    _ => {
                        let elements = slot.list_get(list, scope)?;
                        if elements.len() > LIST_TRIM_ABOVE {
                            let keep: Vec<&[u8]> = elements[elements.len() - LIST_KEEP..]
                                .iter()
                                .map(Vec::as_slice)
                                .collect();
                            slot.list_update(list, scope, &keep)?;
                            self.ops.list_trim += 1;
                        }
                        self.ops.list_read += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The state whose values are counters, and how to read one: `update`'s postcard `u64`s or
    /// `mixed`'s big-endian prefix.
    fn counter_state(&self) -> Option<(StateId, bool)> {
        match &self.states {
            States::Update { count } => Some((count.id(), true)),
            States::Mixed { value, .. } => Some((*value, false)),
            States::Load { .. } => None,
        }
    }
}

/// The big-endian counter in the first 8 bytes of a mixed value (0 if shorter).
fn counter_of(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// An order-independent digest of a slot's (or a whole run's) state. See the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checksum {
    /// Wrapping sum of the XXH3 of every entry, as `0x`-prefixed hex (a JSON number would lose
    /// bits above 2^53).
    pub digest: String,
    /// Number of entries scanned (map entries one by one; a list counts once).
    pub entries: u64,
    /// Sum of the counters (`update`: equals `records`; `mixed`: equals `ops.value_rmw`); `null`
    /// for `load`.
    pub counter_total: Option<u64>,
    #[serde(skip)]
    raw: u64,
}

impl Checksum {
    fn from_parts(raw: u64, entries: u64, counter_total: Option<u64>) -> Self {
        Self {
            digest: format!("{raw:#018x}"),
            entries,
            counter_total,
            raw,
        }
    }

    /// Combines the checksums of several slots.
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Checksum>) -> Checksum {
        let (mut raw, mut entries, mut total) = (0u64, 0u64, None::<u64>);
        for p in parts {
            raw = raw.wrapping_add(p.raw);
            entries += p.entries;
            if let Some(t) = p.counter_total {
                total = Some(total.unwrap_or(0) + t);
            }
        }
        Checksum::from_parts(raw, entries, total)
    }
}

/// Scans every entry of the slot's states (see the module doc).
pub fn checksum(slot: &mut Slot, driver: &Driver) -> Result<Checksum> {
    let counter = driver.counter_state();
    let names: Vec<String> = slot.states().iter().map(|d| d.full_name()).collect();
    let (mut raw, mut entries, mut total) = (0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    for (id, name) in names.iter().enumerate() {
        let id = id as StateId;
        for kg in slot.key_groups().iter() {
            for e in slot.scan_key_group(id, kg)? {
                buf.clear();
                for part in [name.as_bytes(), &e.key, &e.namespace, &e.user_key, &e.value] {
                    buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    buf.extend_from_slice(part);
                }
                raw = raw.wrapping_add(cairn_engine::keygroup::key_hash(&buf));
                entries += 1;
                match counter {
                    Some((cid, true)) if cid == id => {
                        total += cairn_engine::codec::decode::<u64>(&e.value, name)?;
                    }
                    Some((cid, false)) if cid == id => total += counter_of(&e.value),
                    _ => {}
                }
            }
        }
    }
    Ok(Checksum::from_parts(raw, entries, counter.map(|_| total)))
}

#[cfg(test)]
mod tests {
    use cairn_engine::{BackendKind, CairnConfig, VoidNamespace};

    use super::*;

    fn spec(kind: WorkloadKind, skew: Skew) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            records: 3000,
            keys: 100,
            value_size: 24,
            seed: 42,
            skew,
            zipf_exponent: 0.99,
        }
    }

    fn heap_slot(dir: &std::path::Path) -> Slot {
        let mut config = CairnConfig::default();
        config.state.backend = BackendKind::Heap;
        config.state.working_dir = dir.to_path_buf();
        Slot::builder(&config).open().expect("heap slot")
    }

    /// The routing shortcut (`scope_raw` of the codec's key bytes and an empty namespace) builds
    /// the same scope as `Slot::scope(&key, &VoidNamespace)`.
    #[test]
    fn raw_scope_equals_typed_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slot = heap_slot(dir.path());
        let mut kb = Vec::new();
        for key in [0u64, 1, 127, 128, 300, u64::MAX] {
            cairn_engine::codec::encode_into(&mut kb, &key, "<key>").expect("encode");
            let raw = slot.scope_raw(&kb, &[]).expect("raw");
            let typed = slot.scope(&key, &VoidNamespace).expect("typed");
            assert_eq!(raw, typed);
            assert_eq!(raw.key_group(), slot.key_group_of_bytes(&kb));
        }
    }

    #[test]
    fn update_counts_sum_to_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slot = heap_slot(dir.path());
        let s = spec(WorkloadKind::Update, Skew::Uniform);
        let mut d = Driver::new(&s, &mut slot).expect("driver");
        for g in 0..s.records {
            let key = d.key(g);
            assert_eq!(key, stream::key_for(g, 100, 42));
            let scope = slot.scope(&key, &VoidNamespace).expect("scope");
            d.apply(&mut slot, g, key, &scope).expect("apply");
        }
        let c = checksum(&mut slot, &d).expect("checksum");
        assert_eq!(c.counter_total, Some(s.records));
        assert_eq!(c.entries, 100);
    }

    #[test]
    fn mixed_counters_sum_to_rmws_and_lists_stay_bounded() {
        for skew in [Skew::Uniform, Skew::Zipf] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut slot = heap_slot(dir.path());
            let s = spec(WorkloadKind::Mixed, skew);
            let mut d = Driver::new(&s, &mut slot).expect("driver");
            for g in 0..s.records {
                let key = d.key(g);
                assert!(key < s.keys);
                let scope = slot.scope(&key, &VoidNamespace).expect("scope");
                d.apply(&mut slot, g, key, &scope).expect("apply");
            }
            let ops = d.ops;
            assert_eq!(
                ops.value_rmw + ops.list_append + ops.list_read + ops.map_put + ops.map_get,
                s.records
            );
            // The documented mix, within sampling noise.
            assert!((1350..1650).contains(&ops.value_rmw), "{ops:?}");
            assert!((500..700).contains(&ops.list_append), "{ops:?}");
            assert!((500..700).contains(&ops.map_put), "{ops:?}");
            let c = checksum(&mut slot, &d).expect("checksum");
            assert_eq!(c.counter_total, Some(ops.value_rmw));
        }
    }

    #[test]
    fn load_writes_the_payload_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slot = heap_slot(dir.path());
        let s = spec(WorkloadKind::Load, Skew::Uniform);
        let mut d = Driver::new(&s, &mut slot).expect("driver");
        for g in 0..250 {
            let key = d.key(g);
            assert_eq!(key, g % 100);
            let scope = slot.scope(&key, &VoidNamespace).expect("scope");
            d.apply(&mut slot, g, key, &scope).expect("apply");
        }
        let scope = slot.scope(&7u64, &VoidNamespace).expect("scope");
        let id = slot.states()[0].clone();
        assert_eq!(id.full_name(), "load/payload");
        assert_eq!(
            slot.get(0, &scope).expect("get"),
            Some(stream::payload(7, 24))
        );
    }
}
