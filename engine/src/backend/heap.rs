//! The heap backend: keyed state in memory (Flink's `HashMapStateBackend`).
//!
//! Each state has one table per key group of the slot, each behind an `Arc`. A snapshot clones
//! the `Arc`s (O(key groups), no entry copied), and a later write to a key group still shared
//! with a snapshot copies that one key group first (`Arc::make_mut`). So a consistent snapshot
//! costs a pause proportional to the number of key groups, not to the state size, and the copy
//! work is spread over the key groups that are actually written afterwards — copy-on-write at
//! key-group granularity, where Flink's `CopyOnWriteStateMap` copies entry by entry. The
//! tables (`heap_table`) can prefetch an entry ahead of its access
//! ([`StateBackend::prefetch`]).
//!
//! State TTL ([`crate::ttl`]): the slot stamps and checks values; the backend removes expired
//! values, list elements and map entries in two background ways. Incremental cleanup
//! ([`StateBackend::ttl_cleanup_step`], Flink's `cleanupIncrementally`) walks a cursor over
//! each TTL state's key groups (bucket by bucket, so it resumes where it stopped) and only
//! copies a key group shared with a snapshot when it finds something expired. Full-snapshot
//! cleanup (Flink's `cleanupFullSnapshot`) leaves expired entries out of the snapshot file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_timers::Clock;
use smallvec::SmallVec;

use crate::backend::{
    DeferredSnapshot, NativeSnapshot, ScopeKey, StateBackend, StateDescriptor, StateEntry, StateId,
    StateKind, StateSize, Update, UpdateFn, list_codec,
};
use crate::error::{EngineError, Result};
use crate::key_format;
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::ttl::{self, StateTtlConfig};

use super::heap_table::{Entry, KeyedEntry, Table};

/// One (key, namespace) entry.
#[derive(Clone, Debug)]
pub(crate) enum HeapEntry {
    Value(HeapValue),
    List(Vec<Vec<u8>>),
    Map(BTreeMap<Vec<u8>, Vec<u8>>),
}

/// A `[kg][key][namespace]` composite, inline up to 24 bytes (a word and its window: 18): no
/// allocation per entry, and a lookup compares the key inside the table's bucket instead of
/// following a pointer (a cache miss per probe).
pub(crate) type HeapKey = SmallVec<[u8; 24]>;
/// A value, inline up to 16 bytes (counters, small aggregates).
type HeapValue = SmallVec<[u8; 16]>;

struct HeapState {
    desc: StateDescriptor,
    /// One table per key group of the slot, indexed by `range.index_of(kg)`.
    tables: Vec<Arc<Table>>,
    /// Whether the state stores TTL timestamps (from its registration or its snapshot file).
    has_ttl: bool,
    /// Its TTL cleanups, once the slot configured them.
    ttl: Option<HeapTtl>,
}

/// The TTL cleanups of one heap state.
struct HeapTtl {
    ttl_ms: i64,
    /// Leave expired entries out of snapshots.
    full_snapshot: bool,
    /// Where incremental cleanup resumes: (table index, bucket index).
    cursor: (usize, usize),
}

/// What TTL cleanup does with one heap entry.
enum Cleaned {
    /// Nothing expired.
    Keep,
    /// Everything expired: remove the entry.
    Remove,
    /// Some list elements or map entries expired: the entry without them.
    Replace(HeapEntry),
}

/// TTL cleanup of one entry: an expired value, list elements, map entries (bytes too short to
/// carry a timestamp are kept; reads report them).
fn clean(entry: &HeapEntry, ttl_ms: i64, now: i64) -> Cleaned {
    let gone = |stored: &[u8]| ttl::stored_expired(stored, ttl_ms, now);
    match entry {
        HeapEntry::Value(v) if gone(v) => Cleaned::Remove,
        HeapEntry::Value(_) => Cleaned::Keep,
        HeapEntry::List(l) => {
            let expired = l.iter().filter(|e| gone(e)).count();
            if expired == 0 {
                Cleaned::Keep
            } else if expired == l.len() {
                Cleaned::Remove
            } else {
                Cleaned::Replace(HeapEntry::List(
                    l.iter().filter(|e| !gone(e)).cloned().collect(),
                ))
            }
        }
        HeapEntry::Map(m) => {
            let expired = m.values().filter(|v| gone(v)).count();
            if expired == 0 {
                Cleaned::Keep
            } else if expired == m.len() {
                Cleaned::Remove
            } else {
                Cleaned::Replace(HeapEntry::Map(
                    m.iter()
                        .filter(|(_, v)| !gone(v))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ))
            }
        }
    }
}

/// In-memory keyed state of one slot. See the module doc.
pub struct HeapBackend {
    range: KeyGroupRange,
    prefix_bytes: usize,
    states: Vec<HeapState>,
    /// The slot's clock, given with the first TTL state ([`StateBackend::configure_ttl`]):
    /// snapshots read it for full-snapshot cleanup.
    clock: Option<Arc<dyn Clock>>,
}

impl HeapBackend {
    /// An empty backend for the key groups `range` of a job with `max_parallelism` key groups.
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Self {
        Self {
            range,
            prefix_bytes: crate::keygroup::prefix_bytes(max_parallelism),
            states: Vec::new(),
            clock: None,
        }
    }

    fn state(&self, id: StateId) -> Result<&HeapState> {
        self.states
            .get(id as usize)
            .ok_or(EngineError::UnknownState(id))
    }

    fn table(&self, id: StateId, kg: KeyGroup) -> Result<&Table> {
        let idx = self.range.index_of(kg);
        Ok(&self.state(id)?.tables[idx])
    }

    /// The table to write, copied first if a snapshot still shares it.
    fn table_mut(&mut self, id: StateId, kg: KeyGroup) -> Result<&mut Table> {
        let idx = self.range.index_of(kg);
        let state = self
            .states
            .get_mut(id as usize)
            .ok_or(EngineError::UnknownState(id))?;
        Ok(Arc::make_mut(&mut state.tables[idx]))
    }

    fn corrupt(&self, id: StateId, what: &str) -> EngineError {
        let state = self
            .states
            .get(id as usize)
            .map(|s| s.desc.full_name())
            .unwrap_or_default();
        EngineError::Corrupt {
            state,
            reason: format!("heap entry is not a {what}"),
        }
    }
}

impl StateBackend for HeapBackend {
    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn create_state(&mut self, id: StateId, desc: &StateDescriptor) -> Result<()> {
        debug_assert_eq!(id as usize, self.states.len());
        let tables = (0..self.range.len())
            .map(|_| Arc::new(Table::default()))
            .collect();
        self.states.push(HeapState {
            desc: desc.clone(),
            tables,
            has_ttl: desc.ttl.is_some(),
            ttl: None,
        });
        Ok(())
    }

    fn state_has_ttl(&self, state: StateId) -> bool {
        self.states.get(state as usize).is_some_and(|s| s.has_ttl)
    }

    fn configure_ttl(
        &mut self,
        state: StateId,
        config: Option<&StateTtlConfig>,
        clock: &Arc<dyn Clock>,
    ) -> Result<()> {
        let s = self
            .states
            .get_mut(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        if s.has_ttl != config.is_some() {
            return Err(EngineError::StateTtlMismatch {
                state: s.desc.full_name(),
                stored_with_ttl: s.has_ttl,
                requested_ttl: config.is_some(),
            });
        }
        s.desc.ttl = config.copied();
        let cursor = s.ttl.as_ref().map_or((0, 0), |t| t.cursor);
        s.ttl = config.map(|c| HeapTtl {
            ttl_ms: c.ttl_ms(),
            full_snapshot: c.cleanup_full_snapshot,
            cursor,
        });
        if config.is_some() {
            self.clock = Some(Arc::clone(clock));
        }
        Ok(())
    }

    fn ttl_cleanup_step(&mut self, state: StateId, now: i64, entries: usize) -> Result<()> {
        let s = self
            .states
            .get_mut(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        let Some(ttl) = s.ttl.as_mut() else {
            return Ok(());
        };
        let n_tables = s.tables.len();
        // Buckets visited (occupied or not) are bounded too: a sparse table costs a bounded
        // step, and an empty state ends after one round of its tables.
        let max_visits = entries.saturating_mul(8);
        let (mut checked, mut visits, mut tables_left) = (0, 0, n_tables);
        while checked < entries && visits < max_visits && tables_left > 0 {
            let (ti, bi) = ttl.cursor;
            let Some(table) = s.tables.get(ti) else {
                ttl.cursor = (0, 0);
                tables_left -= 1;
                continue;
            };
            if table.is_empty() || bi >= table.num_buckets() {
                ttl.cursor = ((ti + 1) % n_tables, 0);
                tables_left -= 1;
                continue;
            }
            ttl.cursor.1 += 1;
            visits += 1;
            let Some(entry) = table.bucket(bi) else {
                continue;
            };
            checked += 1;
            // Decided on the shared table; copied (a snapshot may share it) only to change it.
            // The copy keeps every entry in its bucket, so `bi` is the same entry there.
            match clean(entry, ttl.ttl_ms, now) {
                Cleaned::Keep => {}
                Cleaned::Remove => Arc::make_mut(&mut s.tables[ti]).remove_bucket(bi),
                Cleaned::Replace(e) => {
                    if let Some(slot) = Arc::make_mut(&mut s.tables[ti]).bucket_mut(bi) {
                        *slot = e;
                    }
                }
            }
        }
        Ok(())
    }

    fn get_with(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<()> {
        match self
            .table(state, scope.key_group)?
            .get(&scope.composite[..])
        {
            None => f(None),
            Some(HeapEntry::Value(v)) => f(Some(v)),
            Some(_) => return Err(self.corrupt(state, "value")),
        }
        Ok(())
    }

    #[inline]
    fn prefetch(&self, state: StateId, scope: &ScopeKey) {
        if !self.range.contains(scope.key_group) {
            return;
        }
        let idx = self.range.index_of(scope.key_group);
        if let Some(table) = self
            .states
            .get(state as usize)
            .and_then(|s| s.tables.get(idx))
        {
            table.prefetch(&scope.composite);
        }
    }

    fn put(&mut self, state: StateId, scope: &ScopeKey, value: &[u8]) -> Result<()> {
        let table = self.table_mut(state, scope.key_group)?;
        match table.entry(&scope.composite) {
            Entry::Occupied(mut o) => match &mut o.get_mut().entry {
                HeapEntry::Value(v) => {
                    v.clear();
                    v.extend_from_slice(value);
                }
                other => *other = HeapEntry::Value(HeapValue::from_slice(value)),
            },
            Entry::Vacant(slot) => {
                slot.insert(KeyedEntry {
                    key: HeapKey::from_slice(&scope.composite),
                    entry: HeapEntry::Value(HeapValue::from_slice(value)),
                });
            }
        }
        Ok(())
    }

    fn update_with(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        buf: &mut Vec<u8>,
        f: &mut UpdateFn<'_>,
    ) -> Result<()> {
        buf.clear();
        let table = self.table_mut(state, scope.key_group)?;
        let corrupt = match table.entry(&scope.composite) {
            Entry::Occupied(mut o) => match &mut o.get_mut().entry {
                HeapEntry::Value(v) => {
                    match f(Some(v), buf) {
                        Update::Keep => {}
                        Update::Put => {
                            v.clear();
                            v.extend_from_slice(buf);
                        }
                        Update::Delete => {
                            o.remove();
                        }
                    }
                    false
                }
                _ => true,
            },
            Entry::Vacant(slot) => {
                if f(None, buf) == Update::Put {
                    slot.insert(KeyedEntry {
                        key: HeapKey::from_slice(&scope.composite),
                        entry: HeapEntry::Value(HeapValue::from_slice(buf)),
                    });
                }
                false
            }
        };
        if corrupt {
            return Err(self.corrupt(state, "value"));
        }
        Ok(())
    }

    fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()> {
        // Skip the copy-on-write when there is nothing to remove.
        if self
            .table(state, scope.key_group)?
            .contains_key(&scope.composite[..])
        {
            self.table_mut(state, scope.key_group)?
                .remove(&scope.composite[..]);
        }
        Ok(())
    }

    fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>> {
        match self
            .table(state, scope.key_group)?
            .get(&scope.composite[..])
        {
            None => Ok(Vec::new()),
            Some(HeapEntry::List(l)) => Ok(l.clone()),
            Some(_) => Err(self.corrupt(state, "list")),
        }
    }

    fn list_append(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        // Appending nothing must not create an (empty) entry: RocksDB wouldn't either.
        if elements.is_empty() {
            return Ok(());
        }
        let table = self.table_mut(state, scope.key_group)?;
        let entry = table.get_or_insert_with(&scope.composite, || HeapEntry::List(Vec::new()));
        match entry {
            HeapEntry::List(l) => {
                l.extend(elements.iter().map(|e| e.to_vec()));
                Ok(())
            }
            _ => Err(self.corrupt(state, "list")),
        }
    }

    fn list_update(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        if elements.is_empty() {
            return self.clear(state, scope);
        }
        let list = elements.iter().map(|e| e.to_vec()).collect();
        self.table_mut(state, scope.key_group)?
            .insert(&scope.composite, HeapEntry::List(list));
        Ok(())
    }

    fn map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match self
            .table(state, scope.key_group)?
            .get(&scope.composite[..])
        {
            None => Ok(None),
            Some(HeapEntry::Map(m)) => Ok(m.get(user_key).cloned()),
            Some(_) => Err(self.corrupt(state, "map")),
        }
    }

    fn map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let table = self.table_mut(state, scope.key_group)?;
        let entry = table.get_or_insert_with(&scope.composite, || HeapEntry::Map(BTreeMap::new()));
        match entry {
            HeapEntry::Map(m) => {
                m.insert(user_key.to_vec(), value.to_vec());
                Ok(())
            }
            _ => Err(self.corrupt(state, "map")),
        }
    }

    fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()> {
        let present = match self
            .table(state, scope.key_group)?
            .get(&scope.composite[..])
        {
            Some(HeapEntry::Map(m)) => m.contains_key(user_key),
            Some(_) => return Err(self.corrupt(state, "map")),
            None => false,
        };
        if present {
            let table = self.table_mut(state, scope.key_group)?;
            let now_empty = match table.get_mut(&scope.composite[..]) {
                Some(HeapEntry::Map(m)) => {
                    m.remove(user_key);
                    m.is_empty()
                }
                _ => false,
            };
            // An empty map is an absent map, as in RocksDB.
            if now_empty {
                table.remove(&scope.composite[..]);
            }
        }
        Ok(())
    }

    fn map_entries(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self
            .table(state, scope.key_group)?
            .get(&scope.composite[..])
        {
            None => Ok(Vec::new()),
            Some(HeapEntry::Map(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(_) => Err(self.corrupt(state, "map")),
        }
    }

    fn scan_key_group(&mut self, state: StateId, key_group: KeyGroup) -> Result<Vec<StateEntry>> {
        if !self.range.contains(key_group) {
            return Ok(Vec::new());
        }
        let table = self.table(state, key_group)?;
        // (stored key bytes, entry): sorting by the bytes RocksDB would store gives RocksDB's
        // order exactly (a length varint's bytes do not sort like the length).
        let mut out: Vec<(Vec<u8>, StateEntry)> = Vec::with_capacity(table.len());
        for (composite, entry) in table.iter() {
            let ck = key_format::decode_composite(composite, self.prefix_bytes)
                .ok_or_else(|| self.corrupt(state, "composite key"))?;
            let mk = |user_key: &[u8], value: Vec<u8>| {
                let mut stored = composite.to_vec();
                stored.extend_from_slice(user_key);
                let e = StateEntry {
                    key: ck.key.to_vec(),
                    namespace: ck.namespace.to_vec(),
                    user_key: user_key.to_vec(),
                    value,
                };
                (stored, e)
            };
            match entry {
                HeapEntry::Value(v) => out.push(mk(&[], v.to_vec())),
                HeapEntry::List(l) => {
                    out.push(mk(&[], list_codec::encode(l.iter().map(|e| &e[..]))))
                }
                HeapEntry::Map(m) => out.extend(m.iter().map(|(uk, v)| mk(uk, v.clone()))),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    fn state_sizes(&self) -> Vec<StateSize> {
        self.states
            .iter()
            .map(|s| {
                let mut bytes = 0u64;
                let mut entries = 0u64;
                for t in &s.tables {
                    for (k, e) in t.iter() {
                        bytes += k.len() as u64;
                        match e {
                            HeapEntry::Value(v) => {
                                bytes += v.len() as u64;
                                entries += 1;
                            }
                            HeapEntry::List(l) => {
                                bytes += l.iter().map(|x| x.len() as u64).sum::<u64>();
                                entries += 1;
                            }
                            HeapEntry::Map(m) => {
                                bytes += m
                                    .iter()
                                    .map(|(a, b)| (a.len() + b.len()) as u64)
                                    .sum::<u64>();
                                entries += m.len() as u64;
                            }
                        }
                    }
                }
                StateSize {
                    state: s.desc.full_name(),
                    bytes,
                    entries,
                }
            })
            .collect()
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn native_snapshot(&mut self, dir: &Path) -> Result<NativeSnapshot> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::Io {
            op: format!("create {}", dir.display()),
            source: e,
        })?;
        Ok(NativeSnapshot::Deferred(Box::new(self.snapshot_view())))
    }

    fn memory_report(&self) -> cairn_memory::MemoryReport {
        let mut r = cairn_memory::MemoryReport::default();
        r.rss_bytes = cairn_memory::process_rss_bytes();
        r
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A consistent view of a heap backend's tables at one instant: cloning the `Arc`s of every
/// key group's table (O(states x key groups)). Writes after the view copy a key group's table
/// on first touch, so the view never changes; it is `Send` and is written out by the
/// checkpoint's asynchronous phase.
pub struct HeapSnapshotView {
    range: KeyGroupRange,
    states: Vec<ViewedState>,
    /// The clock's time when the view was taken (full-snapshot TTL cleanup).
    now: i64,
}

/// One state of a [`HeapSnapshotView`].
struct ViewedState {
    desc: StateDescriptor,
    tables: Vec<Arc<Table>>,
    has_ttl: bool,
    /// TTL of a state with full-snapshot cleanup: its expired entries are not written.
    drop_expired: Option<i64>,
}

/// Name of the heap backend's snapshot file inside a local snapshot directory.
pub const HEAP_SNAPSHOT_FILE: &str = "heap.snapshot";

impl DeferredSnapshot for HeapSnapshotView {
    fn write_into(self: Box<Self>, dir: &Path) -> Result<Vec<String>> {
        self.write(&dir.join(HEAP_SNAPSHOT_FILE))?;
        Ok(vec![HEAP_SNAPSHOT_FILE.to_string()])
    }
}

/// Magic and versions of the heap snapshot file: version 2 adds per-state flags (TTL); a
/// snapshot without TTL states is written as version 1, as before.
const HEAP_MAGIC: &[u8; 9] = b"CAIRNHEAP";
const HEAP_VERSION: u8 = 1;
const HEAP_VERSION_FLAGS: u8 = 2;
/// Flag bit of a state that stores TTL timestamps (version 2).
const STATE_FLAG_TTL: u8 = 1;

impl HeapBackend {
    /// Takes a consistent view for a snapshot (the synchronous phase).
    pub fn snapshot_view(&self) -> HeapSnapshotView {
        HeapSnapshotView {
            range: self.range,
            states: self
                .states
                .iter()
                .map(|s| ViewedState {
                    desc: s.desc.clone(),
                    tables: s.tables.clone(),
                    has_ttl: s.has_ttl,
                    drop_expired: s
                        .ttl
                        .as_ref()
                        .and_then(|t| t.full_snapshot.then_some(t.ttl_ms)),
                })
                .collect(),
            now: self.clock.as_ref().map_or(0, |c| c.now_ms()),
        }
    }

    /// Opens a backend for `range` from heap snapshot files (of any slot layout). Returns it
    /// with the states the files hold, created in it, in id order (a state in several files is
    /// one state).
    pub fn open_restored(
        range: KeyGroupRange,
        max_parallelism: u32,
        files: &[PathBuf],
    ) -> Result<(Self, Vec<StateDescriptor>)> {
        let mut heap = Self::new(range, max_parallelism);
        let mut states: Vec<StateDescriptor> = Vec::new();
        for f in files {
            heap.load(f, |b, desc, has_ttl| {
                if let Some(i) = states.iter().position(|d| d == desc) {
                    if b.states[i].has_ttl != has_ttl {
                        return Err(EngineError::Corrupt {
                            state: desc.full_name(),
                            reason: "heap snapshot files disagree on whether it has TTL".into(),
                        });
                    }
                    return Ok(i as StateId);
                }
                let id = states.len() as StateId;
                b.create_state(id, desc)?;
                b.states[id as usize].has_ttl = has_ttl;
                states.push(desc.clone());
                Ok(id)
            })?;
        }
        Ok((heap, states))
    }

    /// Loads a snapshot file written by [`HeapSnapshotView::write`], keeping only the entries
    /// of this backend's key groups (so a snapshot of any slot layout restores into any other).
    /// States are registered through `register` in file order, with whether they store TTL
    /// timestamps.
    pub fn load(
        &mut self,
        path: &Path,
        mut register: impl FnMut(&mut Self, &StateDescriptor, bool) -> Result<StateId>,
    ) -> Result<()> {
        use std::io::Read;
        let bad = |reason: String| EngineError::Corrupt {
            state: path.display().to_string(),
            reason,
        };
        let mut data = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| EngineError::Io {
                op: format!("read heap snapshot {}", path.display()),
                source: e,
            })?;
        let mut r = Reader { buf: &data, pos: 0 };
        if r.take(HEAP_MAGIC.len()).map_err(bad)? != HEAP_MAGIC {
            return Err(bad("not a heap snapshot (bad magic)".into()));
        }
        let version = r.take(1).map_err(bad)?[0];
        if version != HEAP_VERSION && version != HEAP_VERSION_FLAGS {
            return Err(bad(format!(
                "heap snapshot version {version}, this build reads {HEAP_VERSION} and {HEAP_VERSION_FLAGS}"
            )));
        }
        let n_states = r.varint().map_err(bad)?;
        let mut ids = Vec::new();
        for _ in 0..n_states {
            let operator = String::from_utf8(r.bytes().map_err(bad)?.to_vec())
                .map_err(|e| bad(e.to_string()))?;
            let name = String::from_utf8(r.bytes().map_err(bad)?.to_vec())
                .map_err(|e| bad(e.to_string()))?;
            let kind = match r.take(1).map_err(bad)?[0] {
                0 => StateKind::Value,
                1 => StateKind::List,
                2 => StateKind::Map,
                3 => StateKind::Reducing,
                4 => StateKind::Aggregating,
                k => return Err(bad(format!("unknown state kind {k}"))),
            };
            let flags = if version == HEAP_VERSION_FLAGS {
                r.take(1).map_err(bad)?[0]
            } else {
                0
            };
            if flags & !STATE_FLAG_TTL != 0 {
                return Err(bad(format!("unknown state flags {flags:#04x}")));
            }
            let desc = StateDescriptor::new(operator, name, kind);
            ids.push(register(self, &desc, flags & STATE_FLAG_TTL != 0)?);
        }
        loop {
            let tag = r.take(1).map_err(bad)?[0];
            if tag == 0 {
                break;
            }
            let kg = r.varint().map_err(bad)? as KeyGroup;
            let state = r.varint().map_err(bad)? as usize;
            let n = r.varint().map_err(bad)?;
            let id = *ids
                .get(state)
                .ok_or_else(|| bad(format!("state index {state} out of range")))?;
            let keep = self.range.contains(kg);
            for _ in 0..n {
                let composite = r.bytes().map_err(bad)?;
                let entry = match r.take(1).map_err(bad)?[0] {
                    0 => HeapEntry::Value(HeapValue::from_slice(r.bytes().map_err(bad)?)),
                    1 => {
                        let m = r.varint().map_err(bad)?;
                        let mut l = Vec::new();
                        for _ in 0..m {
                            l.push(r.bytes().map_err(bad)?.to_vec());
                        }
                        HeapEntry::List(l)
                    }
                    2 => {
                        let m = r.varint().map_err(bad)?;
                        let mut map = BTreeMap::new();
                        for _ in 0..m {
                            let k = r.bytes().map_err(bad)?.to_vec();
                            let v = r.bytes().map_err(bad)?.to_vec();
                            map.insert(k, v);
                        }
                        HeapEntry::Map(map)
                    }
                    t => return Err(bad(format!("unknown entry tag {t}"))),
                };
                if keep {
                    self.table_mut(id, kg)?.insert(composite, entry);
                }
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(e) => {
                let s = &self.buf[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.pos)),
        }
    }
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let (v, n) = key_format::read_varint(&self.buf[self.pos..])
            .ok_or_else(|| format!("bad varint at byte {}", self.pos))?;
        self.pos += n;
        Ok(v)
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        self.take(n)
    }
}

impl HeapSnapshotView {
    /// Writes the view to `path`, without the expired entries of states with full-snapshot
    /// TTL cleanup.
    ///
    /// ## Format (version 1)
    /// `"CAIRNHEAP" 0x01 varint(n_states) (bytes(operator) bytes(name) kind)*` then blocks
    /// `0x01 varint(key group) varint(state index) varint(n) (bytes(composite) entry)*`, then
    /// `0x00`. `bytes(x)` is `varint(len) x`; an entry is `0x00 bytes(value)`,
    /// `0x01 varint(n) bytes(element)*` or `0x02 varint(n) (bytes(user key) bytes(value))*`.
    ///
    /// ## Format (version 2)
    /// Version 1 with `0x02` and a flags byte after each state's kind: bit 0 = the state stores
    /// TTL timestamps (its values, elements and map values start with them, see
    /// [`crate::ttl`]). Written only when some state has TTL.
    pub fn write(&self, path: &Path) -> Result<u64> {
        use std::io::Write;
        let io = |e| EngineError::Io {
            op: format!("write heap snapshot {}", path.display()),
            source: e,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(HEAP_MAGIC);
        let flags = self.states.iter().any(|s| s.has_ttl);
        buf.push(if flags {
            HEAP_VERSION_FLAGS
        } else {
            HEAP_VERSION
        });
        key_format::write_varint(&mut buf, self.states.len() as u64);
        for s in &self.states {
            put_bytes(&mut buf, s.desc.operator.as_bytes());
            put_bytes(&mut buf, s.desc.name.as_bytes());
            buf.push(match s.desc.kind {
                StateKind::Value => 0,
                StateKind::List => 1,
                StateKind::Map => 2,
                StateKind::Reducing => 3,
                StateKind::Aggregating => 4,
            });
            if flags {
                buf.push(if s.has_ttl { STATE_FLAG_TTL } else { 0 });
            }
        }
        // The entries of one key group of a state with full-snapshot cleanup: their count is
        // known once the expired ones are left out.
        let mut block = Vec::new();
        for (si, s) in self.states.iter().enumerate() {
            for (ti, table) in s.tables.iter().enumerate() {
                if table.is_empty() {
                    continue;
                }
                let n = match s.drop_expired {
                    None => {
                        block.clear();
                        table.len()
                    }
                    Some(ttl_ms) => {
                        block.clear();
                        let mut n = 0;
                        for (k, e) in table.iter() {
                            match clean(e, ttl_ms, self.now) {
                                Cleaned::Remove => continue,
                                Cleaned::Keep => put_entry(&mut block, k, e),
                                Cleaned::Replace(c) => put_entry(&mut block, k, &c),
                            }
                            n += 1;
                        }
                        if n == 0 {
                            continue;
                        }
                        n
                    }
                };
                buf.push(1);
                key_format::write_varint(&mut buf, u64::from(self.range.start) + ti as u64);
                key_format::write_varint(&mut buf, si as u64);
                key_format::write_varint(&mut buf, n as u64);
                if s.drop_expired.is_some() {
                    buf.extend_from_slice(&block);
                    if buf.len() >= 1 << 16 {
                        w.write_all(&buf).map_err(io)?;
                        buf.clear();
                    }
                    continue;
                }
                for (k, e) in table.iter() {
                    put_entry(&mut buf, k, e);
                    if buf.len() >= 1 << 16 {
                        w.write_all(&buf).map_err(io)?;
                        buf.clear();
                    }
                }
            }
        }
        buf.push(0);
        w.write_all(&buf).map_err(io)?;
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }
}

/// One `bytes(composite) entry` of the snapshot format.
fn put_entry(buf: &mut Vec<u8>, composite: &[u8], e: &HeapEntry) {
    put_bytes(buf, composite);
    match e {
        HeapEntry::Value(v) => {
            buf.push(0);
            put_bytes(buf, v);
        }
        HeapEntry::List(l) => {
            buf.push(1);
            key_format::write_varint(buf, l.len() as u64);
            for x in l {
                put_bytes(buf, x);
            }
        }
        HeapEntry::Map(m) => {
            buf.push(2);
            key_format::write_varint(buf, m.len() as u64);
            for (a, b) in m {
                put_bytes(buf, a);
                put_bytes(buf, b);
            }
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    key_format::write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use cairn_timers::{Clock, ManualClock};

    /// A backend with one value state (`op/v`, with TTL or not) holding `value` under key `k`.
    fn one_entry(ttl: Option<StateTtlConfig>, value: &[u8]) -> HeapBackend {
        let mut b = HeapBackend::new(KeyGroupRange::for_slot(128, 1, 0).unwrap(), 128);
        let mut desc = StateDescriptor::new("op", "v", StateKind::Value);
        desc.ttl = ttl;
        b.create_state(0, &desc).unwrap();
        b.put(0, &ScopeKey::new(0, 1, b"k", b""), value).unwrap();
        b
    }

    fn written(b: &HeapBackend) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HEAP_SNAPSHOT_FILE);
        b.snapshot_view().write(&path).unwrap();
        std::fs::read(&path).unwrap()
    }

    /// Pinned bytes (## Format on `HeapSnapshotView::write`): a snapshot without TTL states is
    /// version 1, byte for byte what Cairn wrote before TTL existed; a TTL state makes it
    /// version 2 with a flags byte per state. Both load, with their TTL-ness.
    #[test]
    fn snapshot_format_versions_are_pinned_and_load() {
        let header = |v: u8| [&b"CAIRNHEAP"[..], &[v, 1, 2, b'o', b'p', 1, b'v', 0]].concat();
        let block = |value: &[u8]| {
            let mut b = vec![1, 0, 0, 1, 4, 0, 1, b'k', 0, 0, value.len() as u8];
            b.extend_from_slice(value);
            b.push(0);
            b
        };
        let v1 = [header(1), block(b"x")].concat();
        assert_eq!(written(&one_entry(None, b"x")), v1);

        let ttl = StateTtlConfig::builder(std::time::Duration::from_millis(10))
            .build()
            .unwrap();
        let stamped = ttl::stamped(5, b"x");
        let mut v2 = header(2);
        v2.push(STATE_FLAG_TTL);
        v2.extend(block(&stamped));
        assert_eq!(written(&one_entry(Some(ttl), &stamped)), v2);

        for (bytes, has_ttl) in [(v1, false), (v2, true)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(HEAP_SNAPSHOT_FILE);
            std::fs::write(&path, bytes).unwrap();
            let range = KeyGroupRange::for_slot(128, 1, 0).unwrap();
            let (b, states) = HeapBackend::open_restored(range, 128, &[path]).unwrap();
            assert_eq!(states.len(), 1);
            assert_eq!(b.states[0].has_ttl, has_ttl);
        }
    }

    /// Incremental cleanup walks every key group and removes expired values, list elements and
    /// map entries, and copies a key group shared with a snapshot only to change it.
    #[test]
    fn incremental_cleanup_removes_only_what_expired() {
        let range = KeyGroupRange::for_slot(128, 1, 0).unwrap();
        let mut b = HeapBackend::new(range, 128);
        let ttl = StateTtlConfig::builder(std::time::Duration::from_millis(10))
            .build()
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        for (id, kind) in [StateKind::Value, StateKind::List, StateKind::Map]
            .into_iter()
            .enumerate()
        {
            let desc = StateDescriptor::new("op", format!("s{id}"), kind).with_ttl(ttl);
            b.create_state(id as StateId, &desc).unwrap();
            b.configure_ttl(id as StateId, Some(&ttl), &clock).unwrap();
        }
        let (old, new) = (ttl::stamped(0, b"o"), ttl::stamped(100, b"n"));
        for k in 0..300u32 {
            let kg = (k % 128) as KeyGroup;
            let s = ScopeKey::new(kg, 1, &k.to_be_bytes(), b"");
            b.put(0, &s, if k % 2 == 0 { &old } else { &new }).unwrap();
            b.list_append(1, &s, &[&old, &new]).unwrap();
            b.map_put(2, &s, b"a", &old).unwrap();
            if k % 3 == 0 {
                b.map_put(2, &s, b"b", &new).unwrap();
            }
        }
        let view = b.snapshot_view();
        // Nothing expired at 9: the walk copies no key group.
        for id in 0..3 {
            b.ttl_cleanup_step(id, 9, 10_000).unwrap();
        }
        assert!(b.states.iter().zip(&view.states).all(|(s, v)| {
            s.tables
                .iter()
                .zip(&v.tables)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        }));
        for id in 0..3 {
            for _ in 0..100 {
                b.ttl_cleanup_step(id, 10, 10).unwrap();
            }
        }
        let sizes: Vec<u64> = b.state_sizes().iter().map(|s| s.entries).collect();
        assert_eq!(sizes, vec![150, 300, 100]);
        let s = ScopeKey::new(0, 1, &0u32.to_be_bytes(), b"");
        assert_eq!(b.list_get(1, &s).unwrap(), vec![new.clone()]);
        drop(view);
    }
}
