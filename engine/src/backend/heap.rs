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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::backend::{
    DeferredSnapshot, NativeSnapshot, ScopeKey, StateBackend, StateDescriptor, StateEntry, StateId,
    StateKind, StateSize, Update, UpdateFn, list_codec,
};
use crate::error::{EngineError, Result};
use crate::key_format;
use crate::keygroup::{KeyGroup, KeyGroupRange};

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
}

/// In-memory keyed state of one slot. See the module doc.
pub struct HeapBackend {
    range: KeyGroupRange,
    prefix_bytes: usize,
    states: Vec<HeapState>,
}

impl HeapBackend {
    /// An empty backend for the key groups `range` of a job with `max_parallelism` key groups.
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Self {
        Self {
            range,
            prefix_bytes: crate::keygroup::prefix_bytes(max_parallelism),
            states: Vec::new(),
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
        });
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
    states: Vec<(StateDescriptor, Vec<Arc<Table>>)>,
}

/// Name of the heap backend's snapshot file inside a local snapshot directory.
pub const HEAP_SNAPSHOT_FILE: &str = "heap.snapshot";

impl DeferredSnapshot for HeapSnapshotView {
    fn write_into(self: Box<Self>, dir: &Path) -> Result<Vec<String>> {
        self.write(&dir.join(HEAP_SNAPSHOT_FILE))?;
        Ok(vec![HEAP_SNAPSHOT_FILE.to_string()])
    }
}

/// Magic and version of the heap snapshot file.
const HEAP_MAGIC: &[u8; 9] = b"CAIRNHEAP";
const HEAP_VERSION: u8 = 1;

impl HeapBackend {
    /// Takes a consistent view for a snapshot (the synchronous phase).
    pub fn snapshot_view(&self) -> HeapSnapshotView {
        HeapSnapshotView {
            range: self.range,
            states: self
                .states
                .iter()
                .map(|s| (s.desc.clone(), s.tables.clone()))
                .collect(),
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
            heap.load(f, |b, desc| {
                if let Some(i) = states.iter().position(|d| d == desc) {
                    return Ok(i as StateId);
                }
                let id = states.len() as StateId;
                b.create_state(id, desc)?;
                states.push(desc.clone());
                Ok(id)
            })?;
        }
        Ok((heap, states))
    }

    /// Loads a snapshot file written by [`HeapSnapshotView::write`], keeping only the entries
    /// of this backend's key groups (so a snapshot of any slot layout restores into any other).
    /// States are registered through `register` in file order.
    pub fn load(
        &mut self,
        path: &Path,
        mut register: impl FnMut(&mut Self, &StateDescriptor) -> Result<StateId>,
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
        if version != HEAP_VERSION {
            return Err(bad(format!(
                "heap snapshot version {version}, this build reads {HEAP_VERSION}"
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
            ids.push(register(self, &StateDescriptor::new(operator, name, kind))?);
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
    /// Writes the view to `path`.
    ///
    /// ## Format (version 1)
    /// `"CAIRNHEAP" 0x01 varint(n_states) (bytes(operator) bytes(name) kind)*` then blocks
    /// `0x01 varint(key group) varint(state index) varint(n) (bytes(composite) entry)*`, then
    /// `0x00`. `bytes(x)` is `varint(len) x`; an entry is `0x00 bytes(value)`,
    /// `0x01 varint(n) bytes(element)*` or `0x02 varint(n) (bytes(user key) bytes(value))*`.
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
        buf.push(HEAP_VERSION);
        key_format::write_varint(&mut buf, self.states.len() as u64);
        for (desc, _) in &self.states {
            put_bytes(&mut buf, desc.operator.as_bytes());
            put_bytes(&mut buf, desc.name.as_bytes());
            buf.push(match desc.kind {
                StateKind::Value => 0,
                StateKind::List => 1,
                StateKind::Map => 2,
                StateKind::Reducing => 3,
                StateKind::Aggregating => 4,
            });
        }
        for (si, (_, tables)) in self.states.iter().enumerate() {
            for (ti, table) in tables.iter().enumerate() {
                if table.is_empty() {
                    continue;
                }
                buf.push(1);
                key_format::write_varint(&mut buf, u64::from(self.range.start) + ti as u64);
                key_format::write_varint(&mut buf, si as u64);
                key_format::write_varint(&mut buf, table.len() as u64);
                for (k, e) in table.iter() {
                    put_bytes(&mut buf, k);
                    match e {
                        HeapEntry::Value(v) => {
                            buf.push(0);
                            put_bytes(&mut buf, v);
                        }
                        HeapEntry::List(l) => {
                            buf.push(1);
                            key_format::write_varint(&mut buf, l.len() as u64);
                            for x in l {
                                put_bytes(&mut buf, x);
                            }
                        }
                        HeapEntry::Map(m) => {
                            buf.push(2);
                            key_format::write_varint(&mut buf, m.len() as u64);
                            for (a, b) in m {
                                put_bytes(&mut buf, a);
                                put_bytes(&mut buf, b);
                            }
                        }
                    }
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

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    key_format::write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
