//! State backends: where a slot's keyed state lives. Two implementations behind one trait:
//! [`rocks::RocksDbBackend`] (one RocksDB per slot, one column family per state) and
//! [`heap::HeapBackend`] (in-memory tables per key group, copy-on-write for snapshots).
//!
//! The trait is a raw-bytes API scoped by a [`ScopeKey`] (key group + serialized key +
//! namespace). [`crate::Slot`] is the public entry point: it validates sizes, key groups and
//! state kinds before a backend sees a call, so backends only store.
//!
//! What differs between the backends beyond storing is a trait method too: the native snapshot
//! of a checkpoint's synchronous phase ([`StateBackend::native_snapshot`]), opening from
//! restored files (`BackendParams::open`), compaction, and timers kept in the backend's own
//! files. Slot and checkpoint code never ask which backend they hold.

pub mod heap;
mod heap_table;
mod native;
pub mod rocks;

use std::path::Path;
use std::sync::Arc;

use cairn_timers::RocksDbTimers;
use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, CairnConfig};
use crate::error::{EngineError, Result};
use crate::key_format;
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::ttl::StateTtlConfig;
use cairn_timers::Clock;
pub use native::{CompactionStats, DeferredSnapshot, MergeSource, NativeSnapshot, RestoredFiles};
use rocks::{RocksDbBackend, RocksDbOptionsHook, RocksDbParams, WriteBackFault};

/// Index of a registered state inside one slot.
pub type StateId = u32;

/// The kinds of keyed state (Flink's `ValueState`, `ListState`, `MapState`, `ReducingState`,
/// `AggregatingState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateKind {
    /// One value per (key, namespace).
    Value,
    /// A list per (key, namespace), appended without reading it.
    List,
    /// A map per (key, namespace), ordered by the user key's bytes.
    Map,
    /// One value folded by a reduce function.
    Reducing,
    /// One accumulator folded by an aggregate function.
    Aggregating,
}

impl StateKind {
    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        }
    }
}

/// A named state of an operator. Its column family is named `<operator>/<state>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// Operator id (e.g. `"counter"`).
    pub operator: String,
    /// State name inside the operator (e.g. `"count"`).
    pub name: String,
    /// The kind.
    pub kind: StateKind,
    /// Its time-to-live, if any (see [`crate::ttl`]). Backends read it in
    /// [`StateBackend::create_state`]; a restored state's descriptor has `None` until the state
    /// is registered in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<StateTtlConfig>,
}

impl StateDescriptor {
    /// A descriptor.
    pub fn new(operator: impl Into<String>, name: impl Into<String>, kind: StateKind) -> Self {
        Self {
            operator: operator.into(),
            name: name.into(),
            kind,
            ttl: None,
        }
    }

    /// The same descriptor with a time-to-live: registering it gives the state TTL semantics
    /// (the raw-bytes API of the slot applies them too). See [`crate::ttl`].
    pub fn with_ttl(mut self, ttl: StateTtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// `operator/name`: the column family name and the name in messages.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.operator, self.name)
    }
}

/// The serialized (key group, key, namespace) a state access is scoped to; built once per
/// record (or per namespace) and reused for every state access of that record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeKey {
    pub(crate) key_group: KeyGroup,
    /// `[kg][len][key][len][ns]`, see [`crate::key_format`].
    pub(crate) composite: Vec<u8>,
    /// Where the key starts and ends, and where the namespace starts, in `composite` (known
    /// when it is encoded: timers take key and namespace without decoding it again).
    key_start: u32,
    key_end: u32,
    ns_start: u32,
}

impl ScopeKey {
    /// Re-encodes this scope for another key and namespace, reusing its buffer.
    pub fn reset(
        &mut self,
        key_group: KeyGroup,
        prefix_bytes: usize,
        key: &[u8],
        namespace: &[u8],
    ) {
        self.key_group = key_group;
        key_format::encode_composite(&mut self.composite, key_group, prefix_bytes, key, namespace);
        self.locate(key.len(), namespace.len());
    }

    /// Builds the scope of `key`/`namespace` for a job with the given key-group prefix size.
    pub fn new(key_group: KeyGroup, prefix_bytes: usize, key: &[u8], namespace: &[u8]) -> Self {
        let mut scope = Self {
            key_group,
            composite: Vec::new(),
            key_start: 0,
            key_end: 0,
            ns_start: 0,
        };
        scope.reset(key_group, prefix_bytes, key, namespace);
        scope
    }

    /// Records the key's and namespace's positions: `[kg][len][key][len][ns]` ends with the
    /// namespace, preceded by its length's varint, preceded by the key.
    fn locate(&mut self, key_len: usize, ns_len: usize) {
        let ns_start = self.composite.len() - ns_len;
        let key_end = ns_start - key_format::varint_len(ns_len as u64);
        self.ns_start = ns_start as u32;
        self.key_end = key_end as u32;
        self.key_start = (key_end - key_len) as u32;
    }

    /// The serialized key.
    pub fn key(&self) -> &[u8] {
        &self.composite[self.key_start as usize..self.key_end as usize]
    }

    /// The serialized namespace.
    pub fn namespace(&self) -> &[u8] {
        &self.composite[self.ns_start as usize..]
    }

    /// The key group.
    pub fn key_group(&self) -> KeyGroup {
        self.key_group
    }

    /// The encoded `[kg][key][ns]` bytes.
    pub fn composite(&self) -> &[u8] {
        &self.composite
    }
}

/// One stored entry, as a scan returns it (backend-portable: savepoints and rescaling use it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    /// The serialized key.
    pub key: Vec<u8>,
    /// The serialized namespace.
    pub namespace: Vec<u8>,
    /// The map user key (empty unless map state).
    pub user_key: Vec<u8>,
    /// The value; list state gives the [`list_codec`] encoding.
    pub value: Vec<u8>,
}

/// One entry for [`StateBackend::load_entries`].
#[derive(Clone, Debug)]
pub struct LoadEntry {
    /// Its key group, key and namespace.
    pub scope: ScopeKey,
    /// The map user key (empty unless map state).
    pub user_key: Vec<u8>,
    /// The value (a list's in the [`list_codec`] encoding).
    pub value: Vec<u8>,
}

/// Size of one column family / state table, for the run summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StateSize {
    /// `operator/state`.
    pub state: String,
    /// Bytes on disk (RocksDB live SST bytes) or estimated heap bytes.
    pub bytes: u64,
    /// Estimated number of entries.
    pub entries: u64,
}

/// The raw-bytes contract both backends implement. See the module doc.
///
/// # Contract
/// - Reads see every write made before them through the same backend.
/// - `clear` removes the (key, namespace) entry of any kind, including every map entry.
/// - `map_entries` returns entries in ascending byte order of the user key.
/// - `update_with` behaves exactly like `get_with` followed by `put` / `clear` / nothing.
/// - `scan_key_group` returns every entry of one key group of one state, and nothing else.
/// - Bytes are stored as given, TTL timestamps included ([`crate::ttl`]); only a TTL cleanup
///   (`ttl_cleanup_step`, snapshots, compactions of a state configured with
///   [`StateBackend::configure_ttl`]) removes anything the caller did not, and only what expired.
pub trait StateBackend: Send {
    /// The key groups this backend holds.
    fn key_groups(&self) -> KeyGroupRange;
    /// Creates the storage of a new state (a column family or a table). Called once per state.
    fn create_state(&mut self, id: StateId, desc: &StateDescriptor) -> Result<()>;
    /// Calls `f` with the value of a value/reducing/aggregating state, borrowed from the
    /// backend (no copy: the hot path of typed reads decodes straight from it).
    fn get_with(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<()>;
    /// Value of a value/reducing/aggregating state, copied.
    fn get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Option<Vec<u8>>> {
        let mut out = None;
        self.get_with(state, scope, &mut |v| out = v.map(<[u8]>::to_vec))?;
        Ok(out)
    }
    /// Read-modify-write of a value/reducing/aggregating state: `f` sees the current value and
    /// an empty `buf`, writes the new value into `buf` and answers what to do with the entry.
    /// The default is a `get_with` then a `put` or `clear` (the RocksDB backend's cache
    /// remembers its last lookup, so the second finds the entry without hashing); the heap
    /// backend finds the entry once for both.
    fn update_with(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        buf: &mut Vec<u8>,
        f: &mut UpdateFn<'_>,
    ) -> Result<()> {
        buf.clear();
        let mut op = Update::Keep;
        self.get_with(state, scope, &mut |v| op = f(v, buf))?;
        match op {
            Update::Keep => Ok(()),
            Update::Put => self.put(state, scope, buf),
            Update::Delete => self.clear(state, scope),
        }
    }
    /// A hint that `scope` of `state` is accessed soon: the heap backend starts loading its
    /// entry's cache line (see [`Slot::prefetch`](crate::Slot::prefetch)). Default: nothing.
    fn prefetch(&self, _state: StateId, _scope: &ScopeKey) {}
    /// Sets the value of a value/reducing/aggregating state.
    fn put(&mut self, state: StateId, scope: &ScopeKey, value: &[u8]) -> Result<()>;
    /// Removes the (key, namespace) entry of any state kind.
    fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()>;
    /// The list's elements, in append order (empty when absent).
    fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>>;
    /// Appends elements without reading the list (RocksDB: one merge).
    fn list_append(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()>;
    /// Replaces the list (empty `elements` clears it).
    fn list_update(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()>;
    /// One map entry.
    fn map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>>;
    /// Sets one map entry.
    fn map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()>;
    /// Removes one map entry.
    fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()>;
    /// All entries of the map, ascending by user key bytes.
    fn map_entries(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every entry of one key group of one state (map entries one by one).
    fn scan_key_group(&mut self, state: StateId, key_group: KeyGroup) -> Result<Vec<StateEntry>>;
    /// Loads `entries` of one state of `kind`, in any order, none of whose keys the state holds
    /// yet (a restore of a canonical savepoint). The default writes them one by one (a list's
    /// value is its [`list_codec`] encoding); RocksDB sorts them into an SST file and ingests
    /// it, bypassing memtables and the state cache.
    fn load_entries(
        &mut self,
        state: StateId,
        kind: StateKind,
        entries: Vec<LoadEntry>,
    ) -> Result<()> {
        for e in entries {
            match kind {
                StateKind::List => {
                    let elements = list_codec::decode(&e.value).ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "a loaded list of state {state} is not list-encoded"
                        ))
                    })?;
                    let refs: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
                    self.list_update(state, &e.scope, &refs)?;
                }
                StateKind::Map => self.map_put(state, &e.scope, &e.user_key, &e.value)?,
                StateKind::Value | StateKind::Reducing | StateKind::Aggregating => {
                    self.put(state, &e.scope, &e.value)?
                }
            }
        }
        Ok(())
    }
    /// Per-state sizes.
    fn state_sizes(&self) -> Vec<StateSize>;
    /// Bytes the backend's state takes on disk (0 for heap).
    fn disk_bytes(&self) -> u64;
    /// Memory the backend uses, as it reports it, plus process RSS.
    fn memory_report(&self) -> cairn_memory::MemoryReport;
    /// Takes the backend's native snapshot into `dir` (which does not exist yet: the backend
    /// creates it) on the slot's thread, the synchronous phase of a checkpoint. Writes still
    /// buffered in a state cache must have been written back first
    /// ([`StateBackend::flush_cache`]). RocksDB: its checkpoint (memtables flushed, live files
    /// hard-linked); heap: a copy-on-write view written later.
    fn native_snapshot(&mut self, dir: &Path) -> Result<NativeSnapshot>;
    /// An estimate of the live data in the backend's files, bytes; `None` when the backend has
    /// no dead data to compact away (heap). The rebase policy compares it with the bytes a
    /// checkpoint references.
    fn live_data_estimate(&self) -> Option<u64> {
        None
    }
    /// Compacts every state's files over its whole key range, so overwritten and deleted data
    /// is dropped. Runs on the caller's thread. Default: nothing to compact.
    fn compact(&mut self) -> Result<CompactionStats> {
        Ok(CompactionStats::default())
    }
    /// A native integer property summed over the backend's states (RocksDB's properties, such
    /// as `rocksdb.num-files-at-level0`); `None` when the backend has no such property.
    fn native_property(&self, _name: &str) -> Option<u64> {
        None
    }
    /// Progress of a lazy restore (`checkpoint.restore-fetch = "lazy"`): files and bytes still
    /// to fetch, the first failure. `None` when the backend was not restored lazily.
    fn lazy_progress(&self) -> Option<rocks::lazy::LazyProgress> {
        None
    }
    /// Blocks until a lazily restored backend is fully local (Ok at once otherwise); the
    /// first failed fetch if one failed.
    fn wait_local(&self) -> Result<()> {
        Ok(())
    }
    /// Opens a timer service that keeps its timers in the backend's own files (two states the
    /// caller created with [`StateBackend::create_state`]). Default: this backend can't.
    fn open_stored_timers(&mut self, _spec: StoredTimers<'_>) -> Result<RocksDbTimers> {
        Err(EngineError::InvalidArgument(
            "timers stored in the state backend (state.timer-service = rocksdb) need the RocksDB backend".into(),
        ))
    }
    /// Sets the time-to-live of a registered state and the clock its cleanups read (see
    /// [`crate::ttl`]): the slot calls it after creating a state with TTL, when a restored
    /// state is registered in this run, and when a registration changes a state's TTL.
    ///
    /// # Contract
    /// - A state whose stored files say it holds TTL timestamps (or none) accepts only a TTL
    ///   (or none): the other fails with [`EngineError::StateTtlMismatch`] and changes nothing.
    /// - Whether a state has TTL is fixed when its storage is created; the TTL itself, its
    ///   update type, visibility and cleanups may change at any call.
    ///
    /// Default: accepts anything (a backend without TTL-aware storage or cleanups).
    fn configure_ttl(
        &mut self,
        _state: StateId,
        _ttl: Option<&StateTtlConfig>,
        _clock: &Arc<dyn Clock>,
    ) -> Result<()> {
        Ok(())
    }
    /// Whether `state`'s stored values carry TTL timestamps (created with TTL, or restored from
    /// files that say so). Default: never.
    fn state_has_ttl(&self, _state: StateId) -> bool {
        false
    }
    /// One step of incremental TTL cleanup of `state` (Flink's `cleanupIncrementally`): checks
    /// up to `entries` entries after a cursor that walks the state's key groups round and
    /// round, removing expired values, list elements and map entries. Only the heap backend
    /// has one. Default: nothing.
    fn ttl_cleanup_step(&mut self, _state: StateId, _now_ms: i64, _entries: usize) -> Result<()> {
        Ok(())
    }
    /// Counters of the backend's state cache (`None`: no cache).
    fn cache_stats(&self) -> Option<rocks::cache::CacheStats> {
        None
    }
    /// RocksDB's own metrics as `rocksdb.metrics` configures them (`None`: not RocksDB, or
    /// nothing configured). Reads them now; see [`rocks::native_metrics`].
    fn native_metrics(&self) -> Option<rocks::native_metrics::NativeMetrics> {
        None
    }
    /// Writes every buffered (cached, dirty) write into the backend's store; the checkpoint's
    /// sync phase calls it before taking the snapshot. Returns the entries written.
    fn flush_cache(&mut self) -> Result<u64> {
        Ok(0)
    }
    /// Makes every write durable in the backend's files (RocksDB: write the state cache back and
    /// flush all memtables). Used before measuring disk size; checkpoints use their own
    /// snapshot path.
    fn flush(&mut self) -> Result<()>;
    /// Starts what [`StateBackend::flush`] does without waiting for the files (the checkpoint
    /// pre-flush): returns once the work is scheduled. Default: nothing to start.
    fn start_flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Continues what [`StateBackend::start_flush`] started, one bounded step (RocksDB: a chunk
    /// of the state cache's write-back, then the memtable flush); returns whether work is left.
    /// Default: nothing left.
    fn continue_flush(&mut self) -> Result<bool> {
        Ok(false)
    }
}

/// Timers kept in the backend's files ([`StateBackend::open_stored_timers`]).
pub struct StoredTimers<'a> {
    /// The state (`operator/name`) holding event-time timers.
    pub event_time_state: &'a str,
    /// The state holding processing-time timers.
    pub processing_time_state: &'a str,
    /// The slot's key groups.
    pub key_groups: std::ops::RangeInclusive<KeyGroup>,
    /// Bytes of the key-group prefix.
    pub prefix_bytes: usize,
    /// Timers cached per key group and time domain.
    pub cache_size: usize,
    /// The timer service serves the slot: its write-back buffer's share of the memory budget
    /// moves from the backend to it. `false`: timers only drained at restore.
    pub reserve_buffer: bool,
}

/// What opening a slot's backend needs besides the restored files.
pub(crate) struct BackendParams<'a> {
    pub config: &'a CairnConfig,
    /// The slot's working directory.
    pub dir: &'a Path,
    pub range: KeyGroupRange,
    pub max_parallelism: u32,
    pub hook: Option<Arc<dyn RocksDbOptionsHook>>,
    pub write_back_fault: Option<Arc<WriteBackFault>>,
}

impl BackendParams<'_> {
    /// Opens the backend `state.backend` names, empty or from `restore`'s files. Returns it
    /// with the states the restore brought, already created in it, in id order, and what
    /// rescaling did when the files were of other key groups (RocksDB). Files of the other
    /// backend are refused (switching backends takes a canonical savepoint, which opens in
    /// either).
    pub(crate) fn open(self, restore: Option<RestoredFiles>) -> Result<OpenedBackend> {
        match (self.config.state.backend, restore) {
            // A canonical savepoint fits either backend: open it empty with the states; the
            // slot then loads the entries.
            (_, Some(RestoredFiles::Canonical { states, .. })) => {
                let mut opened = self.open(None)?;
                for (id, desc) in states.iter().enumerate() {
                    opened.backend.create_state(id as StateId, desc)?;
                }
                opened.states = states;
                Ok(opened)
            }
            (BackendKind::Heap, None) => Ok(OpenedBackend {
                backend: Box::new(heap::HeapBackend::new(self.range, self.max_parallelism)),
                states: Vec::new(),
                rescale: None,
            }),
            (BackendKind::Heap, Some(RestoredFiles::Heap { files })) => {
                let (heap, states) =
                    heap::HeapBackend::open_restored(self.range, self.max_parallelism, &files)?;
                Ok(OpenedBackend {
                    backend: Box::new(heap),
                    states,
                    rescale: None,
                })
            }
            (BackendKind::RocksDb, restore @ (None | Some(RestoredFiles::RocksDb { .. }))) => {
                let restore = match restore {
                    Some(RestoredFiles::RocksDb {
                        files,
                        states,
                        slot,
                        key_groups,
                        merge,
                        lazy,
                    }) => Some(rocks::RocksDbRestore {
                        files,
                        states: union_of_states(states, &merge)?,
                        slot,
                        key_groups,
                        merge,
                        lazy,
                    }),
                    _ => None,
                };
                let states = restore
                    .as_ref()
                    .map(|r| r.states.clone())
                    .unwrap_or_default();
                let memory = cairn_memory::SlotMemory::build_shared(&self.config.memory)?;
                let (rocks, rescale) = RocksDbBackend::open(RocksDbParams {
                    dir: self.dir,
                    range: self.range,
                    max_parallelism: self.max_parallelism,
                    config: &self.config.rocksdb,
                    memory,
                    hook: self.hook,
                    restore,
                    state_cache: &self.config.state_cache,
                })?;
                Ok(OpenedBackend {
                    backend: Box::new(rocks.with_write_back_fault(self.write_back_fault)),
                    states,
                    rescale,
                })
            }
            (BackendKind::Heap, Some(RestoredFiles::RocksDb { .. })) => {
                Err(EngineError::InvalidArgument(
                    "a RocksDB checkpoint can't be restored into the heap backend (use a savepoint)"
                        .into(),
                ))
            }
            (BackendKind::RocksDb, Some(RestoredFiles::Heap { .. })) => {
                Err(EngineError::InvalidArgument(
                    "a heap checkpoint can't be restored into the RocksDB backend (use a savepoint)"
                        .into(),
                ))
            }
        }
    }
}

/// A backend [`BackendParams::open`] opened.
pub(crate) struct OpenedBackend {
    pub backend: Box<dyn StateBackend>,
    /// The states the restore brought, created in the backend, in id order.
    pub states: Vec<StateDescriptor>,
    /// What rescaling did (RocksDB files of other key groups), else `None`.
    pub rescale: Option<rocks::rescale::RescaleReport>,
}

/// The base's states, then every state only the merged old slots have (in their order): the
/// states of a rescaled slot. A name registered with two kinds is refused.
fn union_of_states(
    mut states: Vec<StateDescriptor>,
    merge: &[MergeSource],
) -> Result<Vec<StateDescriptor>> {
    for source in merge {
        for d in &source.states {
            match states.iter().find(|s| s.full_name() == d.full_name()) {
                Some(s) if s.kind != d.kind => {
                    return Err(EngineError::Corrupt {
                        state: d.full_name(),
                        reason: format!(
                            "old slots registered it as {} and as {}",
                            s.kind.name(),
                            d.kind.name()
                        ),
                    });
                }
                Some(_) => {}
                None => states.push(d.clone()),
            }
        }
    }
    Ok(states)
}

/// What a read-modify-write ([`StateBackend::update_with`], [`crate::Slot::update_with`]) does
/// with its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Leave the entry as it is.
    Keep,
    /// Store the bytes written into the buffer.
    Put,
    /// Remove the entry.
    Delete,
}

/// The closure of [`StateBackend::update_with`]: current value, buffer for the new one.
pub type UpdateFn<'a> = dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> Update + 'a;

/// The list encoding shared by both backends and by snapshots:
/// `([varint len][element bytes])*`. Concatenating two encoded lists gives the encoded
/// concatenation, which is what makes RocksDB's merge operator a plain byte append.
pub mod list_codec {
    use crate::key_format::{read_varint, write_varint};

    /// Appends one encoded element.
    pub fn push(out: &mut Vec<u8>, element: &[u8]) {
        write_varint(out, element.len() as u64);
        out.extend_from_slice(element);
    }

    /// Encodes elements.
    pub fn encode<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for e in elements {
            push(&mut out, e);
        }
        out
    }

    /// Whether `buf` is a valid encoding (what [`decode`] checks, without allocating).
    pub fn is_valid(mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            let Some((len, n)) = read_varint(buf) else {
                return false;
            };
            let end = usize::try_from(len).ok().and_then(|l| n.checked_add(l));
            match end {
                Some(end) if end <= buf.len() => buf = &buf[end..],
                _ => return false,
            }
        }
        true
    }

    /// Calls `f` with each element, in order, without allocating; `false` when the bytes are
    /// not a valid encoding (`f` has then seen the elements before the damage).
    pub fn for_each(mut buf: &[u8], mut f: impl FnMut(&[u8])) -> bool {
        while !buf.is_empty() {
            let Some((len, n)) = read_varint(buf) else {
                return false;
            };
            let Some(end) = usize::try_from(len).ok().and_then(|l| n.checked_add(l)) else {
                return false;
            };
            let Some(e) = buf.get(n..end) else {
                return false;
            };
            f(e);
            buf = &buf[end..];
        }
        true
    }

    /// Decodes; `None` when the bytes are not a valid encoding.
    pub fn decode(mut buf: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let (len, n) = read_varint(buf)?;
            let end = n.checked_add(usize::try_from(len).ok()?)?;
            out.push(buf.get(n..end)?.to_vec());
            buf = &buf[end..];
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{ScopeKey, list_codec};

    #[test]
    fn scope_key_and_namespace_match_the_decoded_composite() {
        let mut reused = ScopeKey::new(0, 1, &[], &[]);
        for prefix in [1, 2] {
            for klen in [0usize, 5, 127, 128, 300] {
                for nlen in [0usize, 8, 127, 200] {
                    let key: Vec<u8> = (0..klen).map(|i| i as u8).collect();
                    let ns: Vec<u8> = (0..nlen).map(|i| (i * 7) as u8).collect();
                    let s = ScopeKey::new(3, prefix, &key, &ns);
                    reused.reset(3, prefix, &key, &ns);
                    assert_eq!(s, reused);
                    let c = crate::key_format::decode_composite(s.composite(), prefix).unwrap();
                    assert_eq!((s.key(), s.namespace()), (c.key, c.namespace));
                    assert_eq!((s.key(), s.namespace()), (&key[..], &ns[..]));
                }
            }
        }
    }

    #[test]
    fn list_encoding_concatenates() {
        let a = list_codec::encode([&b"x"[..], b""]);
        let b = list_codec::encode([&b"yz"[..]]);
        let mut ab = a.clone();
        ab.extend_from_slice(&b);
        assert_eq!(
            list_codec::decode(&ab).unwrap(),
            vec![b"x".to_vec(), vec![], b"yz".to_vec()]
        );
        assert_eq!(a, [1, b'x', 0]);
        assert!(list_codec::decode(&[5, 1]).is_none());
        assert!(!list_codec::is_valid(&[5, 1]) && list_codec::is_valid(&ab));
    }
}
