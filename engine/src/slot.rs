//! A [`Slot`]: the keyed state of one parallel worker of the host engine.
//!
//! A slot owns one backend (one RocksDB instance, or heap tables) for its range of key groups,
//! registers states on first use, and is the one entry point for state access: it checks state
//! kinds, value sizes and key groups before the backend sees a call, so a rejected call has
//! written nothing.
//!
//! ```
//! use cairn_engine::{CairnConfig, Slot, VoidNamespace};
//! let dir = tempfile::tempdir().unwrap();
//! let mut config = CairnConfig::default();
//! config.state.working_dir = dir.path().to_path_buf();
//! let mut slot = Slot::builder(&config).open().unwrap();
//! let count = slot.value_state::<u64>("counter", "count").unwrap();
//! let scope = slot.scope(&"user-1", &VoidNamespace).unwrap();
//! let n = count.get(&mut slot, &scope).unwrap().unwrap_or(0);
//! count.update(&mut slot, &scope, &(n + 1)).unwrap();
//! assert_eq!(count.get(&mut slot, &scope).unwrap(), Some(1));
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::heap::HeapBackend;
use crate::backend::rocks::{RocksDbBackend, RocksDbOptionsHook, RocksDbParams, WriteBackFault};
use crate::backend::{
    ScopeKey, StateBackend, StateDescriptor, StateEntry, StateId, StateKind, StateSize, Update,
};
use crate::checkpoint::TIMERS_SNAPSHOT_FILE;
use crate::codec;
use crate::config::{BackendKind, CairnConfig, TimerServiceKind};
use crate::error::{EngineError, Result};
use crate::keygroup::{self, KeyGroup, KeyGroupRange};
use crate::operator_state::OperatorState;
use cairn_timers::{
    HeapTimers, HeapTimersSnapshot, RocksDbTimers, TimeDomain, Timer, TimerService, TimerServiceExt,
};

/// Operator name of the timer column families (`_timers/event-time`,
/// `_timers/processing-time`); reserved: user states can't use it.
pub const TIMER_OPERATOR: &str = "_timers";
/// State name of the event-time timers' column family.
pub const EVENT_TIMERS: &str = "event-time";
/// State name of the processing-time timers' column family.
pub const PROCESSING_TIMERS: &str = "processing-time";

/// Opens a [`Slot`]: which slot of how many, and the live parts that are not configuration.
#[must_use]
pub struct SlotBuilder<'a> {
    config: &'a CairnConfig,
    index: u32,
    parallelism: u32,
    hook: Option<Arc<dyn RocksDbOptionsHook>>,
    working_dir: Option<PathBuf>,
    restore: Option<SlotRestore>,
    operator_state: OperatorState,
    write_back_fault: Option<Arc<WriteBackFault>>,
}

/// Local files to open a slot from (downloaded and verified by the checkpoint layer).
#[derive(Clone, Debug)]
pub enum SlotRestore {
    /// A RocksDB checkpoint directory (moved into place) and the states it holds, in id order.
    RocksDb {
        /// The directory with SSTs, MANIFEST, CURRENT, OPTIONS.
        files: PathBuf,
        /// The registered states.
        states: Vec<StateDescriptor>,
    },
    /// Heap snapshot files; entries of key groups outside the slot's range are skipped, so
    /// snapshots of any number of slots restore into any other number.
    Heap {
        /// The snapshot files.
        files: Vec<PathBuf>,
    },
}

impl<'a> SlotBuilder<'a> {
    /// Opens the slot from restored files instead of empty.
    pub fn restore(mut self, restore: SlotRestore) -> Self {
        self.restore = Some(restore);
        self
    }

    /// Opens the slot with this operator state (restored with
    /// [`Checkpointer::operator_state_for_slot`](crate::checkpoint::Checkpointer::operator_state_for_slot)).
    pub fn operator_state(mut self, state: OperatorState) -> Self {
        self.operator_state = state;
        self
    }

    /// This slot's index among `parallelism` slots (default: slot 0 of 1).
    pub fn slot(mut self, index: u32, parallelism: u32) -> Self {
        self.index = index;
        self.parallelism = parallelism;
        self
    }

    /// A RocksDB options hook (runs after profile and knobs).
    pub fn options_hook(mut self, hook: Arc<dyn RocksDbOptionsHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Overrides the slot's working directory (default `<state.working-dir>/slot-<index>`).
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Test and torture only: fails the RocksDB backend's state-cache write-back commits that
    /// `fault` is armed for (ignored by the heap backend; see [`WriteBackFault`]).
    pub fn write_back_fault(mut self, fault: Arc<WriteBackFault>) -> Self {
        self.write_back_fault = Some(fault);
        self
    }

    /// Validates the configuration and opens the backend.
    pub fn open(self) -> Result<Slot> {
        let config = self.config;
        config.validate()?;
        let max_parallelism = config.max_parallelism_for(self.parallelism)?;
        // A slot index beyond the slot count is a wrong call, not a wrong setting.
        if self.parallelism > 0 && self.index >= self.parallelism {
            return Err(EngineError::InvalidArgument(format!(
                "slot index {} is not below parallelism {}",
                self.index, self.parallelism
            )));
        }
        let range = KeyGroupRange::for_slot(max_parallelism, self.parallelism, self.index)?;
        let dir = self.working_dir.unwrap_or_else(|| {
            config
                .state
                .working_dir
                .join(format!("slot-{}", self.index))
        });
        let mut restored_states: Vec<StateDescriptor> = Vec::new();
        let timer_kind = config.state.effective_timer_service();
        let kg_range = range.start as KeyGroup..=range.end as KeyGroup;
        // Heap timers of the checkpoint: a `timers.snapshot` next to each heap snapshot, or in
        // the RocksDB files (read now: those files are moved into the DB directory below).
        let timer_files: Vec<PathBuf> = match &self.restore {
            Some(SlotRestore::Heap { files }) => files
                .iter()
                .map(|f| f.with_file_name(TIMERS_SNAPSHOT_FILE))
                .collect(),
            Some(SlotRestore::RocksDb { files, .. }) => vec![files.join(TIMERS_SNAPSHOT_FILE)],
            None => Vec::new(),
        };
        let mut restored_heap_timers: Option<HeapTimers> = None;
        for f in timer_files.iter().filter(|f| f.exists()) {
            let h = restored_heap_timers.get_or_insert_with(|| HeapTimers::new(kg_range.clone()));
            h.restore(f)?;
            std::fs::remove_file(f).map_err(|e| EngineError::Io {
                op: format!("remove restored {}", f.display()),
                source: e,
            })?;
        }
        let backend: Box<dyn StateBackend> = match (config.state.backend, self.restore) {
            (BackendKind::Heap, restore) => {
                let mut heap = HeapBackend::new(range, max_parallelism);
                match restore {
                    None => {}
                    Some(SlotRestore::Heap { files }) => {
                        for f in files {
                            heap.load(&f, |b, desc| {
                                if let Some(i) = restored_states.iter().position(|d| d == desc) {
                                    return Ok(i as StateId);
                                }
                                let id = restored_states.len() as StateId;
                                b.create_state(id, desc)?;
                                restored_states.push(desc.clone());
                                Ok(id)
                            })?;
                        }
                    }
                    Some(SlotRestore::RocksDb { .. }) => {
                        return Err(EngineError::InvalidArgument(
                            "a RocksDB checkpoint can't be restored into the heap backend (use a savepoint)".into(),
                        ));
                    }
                }
                Box::new(heap)
            }
            (BackendKind::RocksDb, restore) => {
                let memory = cairn_memory::SlotMemory::build_shared(&config.memory)?;
                let restore = match restore {
                    None => None,
                    Some(SlotRestore::RocksDb { files, states }) => {
                        restored_states = states.clone();
                        Some((files, states))
                    }
                    Some(SlotRestore::Heap { .. }) => {
                        return Err(EngineError::InvalidArgument(
                            "a heap checkpoint can't be restored into the RocksDB backend (use a savepoint)".into(),
                        ));
                    }
                };
                Box::new(
                    RocksDbBackend::open(RocksDbParams {
                        dir: &dir,
                        range,
                        max_parallelism,
                        config: &config.rocksdb,
                        memory,
                        hook: self.hook,
                        restore,
                        state_cache: &config.state_cache,
                    })?
                    .with_write_back_fault(self.write_back_fault),
                )
            }
        };
        let mut slot = Slot {
            timers: None,
            timer_kind,
            timer_cache_size: config.state.timer_cache_size as usize,
            backend,
            kind: config.state.backend,
            index: self.index,
            parallelism: self.parallelism,
            max_parallelism,
            range,
            prefix_bytes: keygroup::prefix_bytes(max_parallelism),
            states: Vec::new(),
            by_name: HashMap::new(),
            max_value_size: config.state.max_value_size.as_u64() as usize,
            working_dir: dir,
            key_buf: Vec::new(),
            ns_buf: Vec::new(),
            value_buf: Vec::new(),
            operator_state: self.operator_state,
        };
        match slot.kind {
            // Heap tables were created while loading; record them.
            BackendKind::Heap => {
                for (i, d) in restored_states.into_iter().enumerate() {
                    slot.by_name.insert(d.full_name(), i as StateId);
                    slot.states.push(d);
                }
            }
            BackendKind::RocksDb => {
                for d in &restored_states {
                    slot.register_internal(d)?;
                }
            }
        }
        slot.restore_timers(restored_heap_timers)?;
        Ok(slot)
    }
}

/// The slot's timer service (opened on first use). One per slot, so the variants' sizes do not
/// matter; heap timers stay unboxed (no indirection on every timer call).
#[allow(clippy::large_enum_variant)]
enum Timers {
    Heap(HeapTimers),
    // Boxed: RocksDB timers hold a heap-timer buffer and much more.
    RocksDb(Box<RocksDbTimers>),
}

impl Timers {
    #[inline]
    fn svc(&mut self) -> &mut dyn TimerService {
        match self {
            Timers::Heap(h) => h,
            Timers::RocksDb(r) => r.as_mut(),
        }
    }
}

/// The keyed state of one parallel worker. See the module doc.
pub struct Slot {
    // Declared before `backend`, so it drops first: RocksDB timers share the backend's DB.
    timers: Option<Timers>,
    timer_kind: TimerServiceKind,
    timer_cache_size: usize,
    backend: Box<dyn StateBackend>,
    kind: BackendKind,
    index: u32,
    parallelism: u32,
    max_parallelism: u32,
    range: KeyGroupRange,
    prefix_bytes: usize,
    states: Vec<StateDescriptor>,
    by_name: HashMap<String, StateId>,
    max_value_size: usize,
    working_dir: PathBuf,
    key_buf: Vec<u8>,
    ns_buf: Vec<u8>,
    value_buf: Vec<u8>,
    operator_state: OperatorState,
}

impl Slot {
    /// The slot's operator (non-keyed) state, checkpointed with it (see
    /// [`crate::operator_state`]).
    pub fn operator_state(&self) -> &OperatorState {
        &self.operator_state
    }

    /// The slot's operator state, to change it.
    pub fn operator_state_mut(&mut self) -> &mut OperatorState {
        &mut self.operator_state
    }

    /// Starts opening a slot with `config`.
    pub fn builder(config: &CairnConfig) -> SlotBuilder<'_> {
        SlotBuilder {
            config,
            index: 0,
            parallelism: 1,
            hook: None,
            working_dir: None,
            restore: None,
            operator_state: OperatorState::new(),
            write_back_fault: None,
        }
    }

    /// The backend kind.
    pub fn backend_kind(&self) -> BackendKind {
        self.kind
    }

    /// This slot's index and the parallelism it was opened with.
    pub fn index(&self) -> (u32, u32) {
        (self.index, self.parallelism)
    }

    /// The number of key groups of the job.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// The key groups this slot owns.
    pub fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    /// The slot's working directory.
    pub fn working_dir(&self) -> &std::path::Path {
        &self.working_dir
    }

    /// The registered states, by id.
    pub fn states(&self) -> &[StateDescriptor] {
        &self.states
    }

    /// The backend (checkpointing and reports need backend-specific access).
    pub fn backend(&self) -> &dyn StateBackend {
        self.backend.as_ref()
    }

    /// Registers a state (creating its column family or table) or returns the id it already has.
    /// Registering a name again with another kind is an error. The operator name `_timers` is
    /// reserved for the timer column families.
    pub fn register(&mut self, desc: &StateDescriptor) -> Result<StateId> {
        if desc.operator == TIMER_OPERATOR {
            return Err(EngineError::InvalidArgument(format!(
                "state name '{}': the operator name '{TIMER_OPERATOR}' is reserved for timers",
                desc.full_name()
            )));
        }
        self.register_internal(desc)
    }

    fn register_internal(&mut self, desc: &StateDescriptor) -> Result<StateId> {
        let full = desc.full_name();
        if let Some(&id) = self.by_name.get(&full) {
            let registered = self.states[id as usize].kind;
            if registered != desc.kind {
                return Err(EngineError::StateKindMismatch {
                    state: full,
                    registered: registered.name(),
                    requested: desc.kind.name(),
                });
            }
            return Ok(id);
        }
        if desc.operator.is_empty() || desc.name.is_empty() || full == "default" {
            return Err(EngineError::InvalidArgument(format!(
                "state name '{full}' needs a non-empty operator and name"
            )));
        }
        let id = self.states.len() as StateId;
        self.backend.create_state(id, desc)?;
        self.states.push(desc.clone());
        self.by_name.insert(full, id);
        Ok(id)
    }

    /// The scope of raw key and namespace bytes. The key's key group must belong to this slot.
    pub fn scope_raw(&self, key: &[u8], namespace: &[u8]) -> Result<ScopeKey> {
        let kg = keygroup::assign_to_key_group(key, self.max_parallelism);
        self.check_key_group(kg)?;
        Ok(ScopeKey::new(kg, self.prefix_bytes, key, namespace))
    }

    /// Re-targets `scope` at raw key and namespace bytes, reusing its buffer (the per-record
    /// hot path of a host engine).
    pub fn rescope_raw(&self, scope: &mut ScopeKey, key: &[u8], namespace: &[u8]) -> Result<()> {
        let kg = keygroup::assign_to_key_group(key, self.max_parallelism);
        self.check_key_group(kg)?;
        scope.reset(kg, self.prefix_bytes, key, namespace);
        Ok(())
    }

    /// Re-targets `scope` at a fired timer's key and namespace. The timer carries its key
    /// group, so the key is not hashed again (firing a timer usually reads its key's state).
    pub fn rescope_timer(&self, scope: &mut ScopeKey, timer: &Timer) -> Result<()> {
        self.check_key_group(timer.key_group)?;
        scope.reset(
            timer.key_group,
            self.prefix_bytes,
            &timer.key,
            &timer.namespace,
        );
        Ok(())
    }

    /// The scope of a typed key and namespace (both serialized with [`crate::codec`]).
    pub fn scope<K: Serialize + ?Sized, N: Serialize + ?Sized>(
        &mut self,
        key: &K,
        namespace: &N,
    ) -> Result<ScopeKey> {
        let mut kb = std::mem::take(&mut self.key_buf);
        let mut nb = std::mem::take(&mut self.ns_buf);
        let r = codec::encode_into(&mut kb, key, "<key>")
            .and_then(|_| codec::encode_into(&mut nb, namespace, "<namespace>"))
            .and_then(|_| self.scope_raw(&kb, &nb));
        self.key_buf = kb;
        self.ns_buf = nb;
        r
    }

    /// The key group of already serialized key bytes, hashed as given (what
    /// [`Slot::scope_raw`] does). A typed key is routed with
    /// [`crate::keygroup::key_group_of`] / [`crate::keygroup::slot_for_key`], which serialize
    /// it first.
    pub fn key_group_of_bytes(&self, key: &[u8]) -> KeyGroup {
        keygroup::assign_to_key_group(key, self.max_parallelism)
    }

    fn check_key_group(&self, kg: KeyGroup) -> Result<()> {
        if self.range.contains(kg) {
            Ok(())
        } else {
            Err(EngineError::KeyGroupOutOfRange {
                key_group: kg,
                range: self.range,
            })
        }
    }

    fn check(&self, state: StateId, kinds: &[StateKind], requested: StateKind) -> Result<()> {
        let desc = self
            .states
            .get(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        if kinds.contains(&desc.kind) {
            Ok(())
        } else {
            Err(EngineError::StateKindMismatch {
                state: desc.full_name(),
                registered: desc.kind.name(),
                requested: requested.name(),
            })
        }
    }

    fn check_size(&self, state: StateId, len: usize) -> Result<()> {
        if len > self.max_value_size {
            return Err(EngineError::ValueTooLarge {
                state: self.state_name(state),
                size: len,
                max: self.max_value_size,
            });
        }
        Ok(())
    }

    /// `operator/name` of a state id (for messages).
    pub fn state_name(&self, state: StateId) -> String {
        self.states
            .get(state as usize)
            .map(|d| d.full_name())
            .unwrap_or_else(|| format!("#{state}"))
    }

    const SINGLE: &'static [StateKind] = &[
        StateKind::Value,
        StateKind::Reducing,
        StateKind::Aggregating,
    ];

    /// Raw get of a value, reducing or aggregating state.
    pub fn get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Option<Vec<u8>>> {
        self.check(state, Self::SINGLE, StateKind::Value)?;
        self.backend.get(state, scope)
    }

    /// Raw get that lends the stored bytes to `f` instead of copying them.
    pub fn get_with<T>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T> {
        self.check(state, Self::SINGLE, StateKind::Value)?;
        let mut f = Some(f);
        let mut out = None;
        self.backend.get_with(state, scope, &mut |v| {
            if let Some(f) = f.take() {
                out = Some(f(v));
            }
        })?;
        out.ok_or_else(|| EngineError::InvalidArgument("backend did not answer a get".into()))
    }

    /// A hint that `scope` of `state` is read or written soon. The heap backend starts loading
    /// the entry's cache line and returns at once; the access then finds it in the cache
    /// instead of waiting for memory (a miss on a large table is most of a heap access's
    /// time). Worth it a few accesses ahead: an operator holding a batch of records, or the
    /// next timers to fire, prefetches them all, then processes them. Other backends ignore it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cairn_engine::backend::{ScopeKey, Update};
    /// use cairn_engine::{BackendKind, CairnConfig, Slot, StateDescriptor, StateKind};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let mut config = CairnConfig::default();
    /// config.state.backend = BackendKind::Heap;
    /// config.state.working_dir = dir.path().to_path_buf();
    /// let mut slot = Slot::builder(&config).open()?;
    /// let count = slot.register(&StateDescriptor::new("op", "count", StateKind::Reducing))?;
    /// let batch: Vec<ScopeKey> = [&b"a"[..], b"b", b"c"]
    ///     .iter()
    ///     .map(|k| slot.scope_raw(k, b""))
    ///     .collect::<Result<_, _>>()?;
    /// for scope in &batch {
    ///     slot.prefetch(count, scope);
    /// }
    /// for scope in &batch {
    ///     slot.update_with(count, scope, |_, out| {
    ///         out.extend_from_slice(&1u64.to_be_bytes());
    ///         (Update::Put, ())
    ///     })?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn prefetch(&self, state: StateId, scope: &ScopeKey) {
        self.backend.prefetch(state, scope);
    }

    /// Read-modify-write of a value, reducing or aggregating state in one step: `f` gets the
    /// current bytes and an empty buffer, writes the new value into the buffer and says what to
    /// do ([`Update`]); what it returns besides is handed back. The heap backend finds the entry
    /// once where `get_with` + `put` look it up twice. A new value larger than
    /// `state.max-value-size` is not written and fails with [`EngineError::ValueTooLarge`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cairn_engine::backend::Update;
    /// use cairn_engine::{BackendKind, CairnConfig, Slot, StateDescriptor, StateKind};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let mut config = CairnConfig::default();
    /// config.state.backend = BackendKind::Heap;
    /// config.state.working_dir = dir.path().to_path_buf();
    /// let mut slot = Slot::builder(&config).open()?;
    /// let count = slot.register(&StateDescriptor::new("op", "count", StateKind::Value))?;
    /// let scope = slot.scope_raw(b"key", b"")?;
    /// for _ in 0..3 {
    ///     // Increment an 8-byte big-endian counter; answer whether it was new.
    ///     slot.update_with(count, &scope, |cur, out| {
    ///         let n = cur.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    ///         out.extend_from_slice(&(n + 1).to_be_bytes());
    ///         (Update::Put, cur.is_none())
    ///     })?;
    /// }
    /// assert_eq!(slot.get(count, &scope)?, Some(3u64.to_be_bytes().to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn update_with<T>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: impl FnOnce(Option<&[u8]>, &mut Vec<u8>) -> (Update, T),
    ) -> Result<T> {
        self.check(state, Self::SINGLE, StateKind::Value)?;
        let max = self.max_value_size;
        let mut f = Some(f);
        let (mut out, mut too_large) = (None, None);
        let mut buf = std::mem::take(&mut self.value_buf);
        let r = self
            .backend
            .update_with(state, scope, &mut buf, &mut |v, buf| {
                let Some(f) = f.take() else {
                    return Update::Keep;
                };
                let (op, t) = f(v, buf);
                out = Some(t);
                if op == Update::Put && buf.len() > max {
                    too_large = Some(buf.len());
                    return Update::Keep;
                }
                op
            });
        self.value_buf = buf;
        r?;
        if let Some(size) = too_large {
            return Err(EngineError::ValueTooLarge {
                state: self.state_name(state),
                size,
                max,
            });
        }
        out.ok_or_else(|| EngineError::InvalidArgument("backend did not answer an update".into()))
    }

    /// Encodes `value` into the slot's scratch buffer and puts it (no allocation per write).
    pub(crate) fn put_encoded<V: Serialize + ?Sized>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        value: &V,
        name: &str,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut self.value_buf);
        let r =
            codec::encode_into(&mut buf, value, name).and_then(|_| self.put(state, scope, &buf));
        self.value_buf = buf;
        r
    }

    /// Raw put of a value, reducing or aggregating state.
    pub fn put(&mut self, state: StateId, scope: &ScopeKey, value: &[u8]) -> Result<()> {
        self.check(state, Self::SINGLE, StateKind::Value)?;
        self.check_size(state, value.len())?;
        self.backend.put(state, scope, value)
    }

    /// Removes the (key, namespace) entry of any state kind.
    pub fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()> {
        if state as usize >= self.states.len() {
            return Err(EngineError::UnknownState(state));
        }
        self.backend.clear(state, scope)
    }

    /// Raw list read.
    pub fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>> {
        self.check(state, &[StateKind::List], StateKind::List)?;
        self.backend.list_get(state, scope)
    }

    /// Raw list append (no read).
    pub fn list_append(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        elements: &[&[u8]],
    ) -> Result<()> {
        self.check(state, &[StateKind::List], StateKind::List)?;
        for e in elements {
            self.check_size(state, e.len())?;
        }
        self.backend.list_append(state, scope, elements)
    }

    /// Raw list replace.
    pub fn list_update(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        elements: &[&[u8]],
    ) -> Result<()> {
        self.check(state, &[StateKind::List], StateKind::List)?;
        for e in elements {
            self.check_size(state, e.len())?;
        }
        self.backend.list_update(state, scope, elements)
    }

    /// Raw map get.
    pub fn map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.backend.map_get(state, scope, user_key)
    }

    /// Raw map put.
    pub fn map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.check_size(state, value.len())?;
        self.check_size(state, user_key.len())?;
        self.backend.map_put(state, scope, user_key, value)
    }

    /// Raw map remove.
    pub fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()> {
        self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.backend.map_remove(state, scope, user_key)
    }

    /// Whether the map has `user_key`.
    pub fn map_contains(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<bool> {
        Ok(self.map_get(state, scope, user_key)?.is_some())
    }

    /// All map entries, ascending by user-key bytes.
    pub fn map_entries(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.backend.map_entries(state, scope)
    }

    /// Every entry of one key group of one state.
    pub fn scan_key_group(
        &mut self,
        state: StateId,
        key_group: KeyGroup,
    ) -> Result<Vec<StateEntry>> {
        if state as usize >= self.states.len() {
            return Err(EngineError::UnknownState(state));
        }
        self.check_key_group(key_group)?;
        self.backend.scan_key_group(state, key_group)
    }

    /// Per-state sizes (RocksDB: live SST + memtable bytes per column family).
    pub fn state_sizes(&self) -> Vec<StateSize> {
        self.backend.state_sizes()
    }

    /// Bytes of state on local disk.
    pub fn disk_bytes(&self) -> u64 {
        self.backend.disk_bytes()
    }

    /// Memory figures of the backend and the process.
    pub fn memory_report(&self) -> cairn_memory::MemoryReport {
        let mut report = self.backend.memory_report();
        if let Some(Timers::RocksDb(r)) = &self.timers {
            report.timer_buffer_bytes = r.heap_bytes();
        }
        report
    }

    /// A copy-on-write view of the heap tables (heap backend only).
    pub(crate) fn heap_view(&self) -> Result<crate::backend::heap::HeapSnapshotView> {
        self.backend
            .as_heap()
            .map(|h| h.snapshot_view())
            .ok_or_else(|| EngineError::InvalidArgument("backend is not heap".into()))
    }

    /// Counters of the RocksDB backend's state cache (`None` when off or heap).
    pub fn cache_stats(&self) -> Option<crate::backend::rocks::cache::CacheStats> {
        self.backend.cache_stats()
    }

    /// Writes the state cache's dirty entries into the backend (the checkpoint's sync phase).
    pub(crate) fn flush_cache(&mut self) -> Result<u64> {
        self.backend.flush_cache()
    }

    /// Starts the backend's flush without waiting for it (the checkpoint pre-flush).
    pub(crate) fn start_backend_flush(&mut self) -> Result<()> {
        self.backend.start_flush()
    }

    /// Continues the backend's flush (the checkpoint pre-flush), one bounded step.
    pub(crate) fn continue_backend_flush(&mut self) -> Result<bool> {
        self.backend.continue_flush()
    }

    /// Flushes buffered writes (the state cache's and timers' included) into the backend's
    /// files.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(t) = &mut self.timers {
            t.svc().flush()?;
        }
        self.backend.flush()
    }

    /// Where this slot keeps timers (`state.timer-service`; always heap on the heap backend).
    pub fn timer_service_kind(&self) -> TimerServiceKind {
        self.timer_kind
    }

    /// The slot's timer service for its key groups, opened on first use (RocksDB timers create
    /// their column families `_timers/event-time` and `_timers/processing-time` then). Timers
    /// are part of every checkpoint of the slot and are restored with it.
    #[inline]
    pub fn timers(&mut self) -> Result<&mut dyn TimerService> {
        if self.timers.is_none() {
            self.open_timer_service()?;
        }
        match &mut self.timers {
            Some(t) => Ok(t.svc()),
            None => Err(EngineError::InvalidArgument(
                "timer service not open".into(),
            )),
        }
    }

    /// The first use of [`Slot::timers`] (kept out of the per-record path).
    #[cold]
    fn open_timer_service(&mut self) -> Result<()> {
        let t = self.open_timers(self.timer_kind, true)?;
        self.timers = Some(t);
        Ok(())
    }

    /// Opens a timer service of `kind`; `serving`: it becomes the slot's (RocksDB timers then
    /// take their write-back buffer's share of the budget), else it is only drained at restore
    /// and RocksDB keeps that share.
    fn open_timers(&mut self, kind: TimerServiceKind, serving: bool) -> Result<Timers> {
        let range = self.range.start as KeyGroup..=self.range.end as KeyGroup;
        Ok(match kind {
            TimerServiceKind::Heap => Timers::Heap(HeapTimers::new(range)),
            TimerServiceKind::RocksDb => {
                let mut names = Vec::new();
                for name in [EVENT_TIMERS, PROCESSING_TIMERS] {
                    let d = StateDescriptor::new(TIMER_OPERATOR, name, StateKind::Value);
                    self.register_internal(&d)?;
                    names.push(d.full_name());
                }
                let rocks = self.backend.as_rocksdb().ok_or_else(|| {
                    EngineError::InvalidArgument("RocksDB timers need the RocksDB backend".into())
                })?;
                let db = rocks.shared_db();
                // The buffer's share of the budget leaves RocksDB's now, not before: a slot
                // without RocksDB timers keeps it.
                let buffer_bytes = if serving {
                    rocks.memory().reserve_timer_buffer()
                } else {
                    0
                };
                Timers::RocksDb(Box::new(
                    RocksDbTimers::open(
                        db,
                        &names[0],
                        &names[1],
                        range,
                        self.prefix_bytes,
                        self.timer_cache_size,
                    )?
                    .with_write_buffer(buffer_bytes),
                ))
            }
        })
    }

    /// Installs restored timers: heap timers read from the checkpoint, RocksDB timers found in
    /// restored column families; timers of the other kind are moved into this slot's kind.
    fn restore_timers(&mut self, heap: Option<HeapTimers>) -> Result<()> {
        let has_cfs = self
            .by_name
            .contains_key(&format!("{TIMER_OPERATOR}/{EVENT_TIMERS}"));
        match self.timer_kind {
            TimerServiceKind::Heap => {
                if heap.is_none() && !has_cfs {
                    return Ok(());
                }
                let mut to = match heap {
                    Some(h) => Timers::Heap(h),
                    None => self.open_timers(TimerServiceKind::Heap, true)?,
                };
                // RocksDB timers of the checkpoint (next to their buffer's snapshot, if any).
                if has_cfs {
                    let mut from = self.open_timers(TimerServiceKind::RocksDb, false)?;
                    let n = from.svc().drain_into(to.svc())?;
                    tracing::info!(timers = n, "moved restored RocksDB timers onto the heap");
                }
                self.timers = Some(to);
            }
            TimerServiceKind::RocksDb => {
                // Heap timers of the checkpoint, or the snapshot of a RocksDB timer buffer.
                if let Some(mut h) = heap {
                    let n = h.drain_into(self.timers()?)?;
                    tracing::info!(timers = n, "registered restored heap timers");
                }
            }
        }
        Ok(())
    }

    /// Registers a timer for the key and namespace of `scope` (no-op when it exists).
    pub fn register_timer(
        &mut self,
        domain: TimeDomain,
        scope: &ScopeKey,
        timestamp: i64,
    ) -> Result<()> {
        self.timer_op(scope, |svc, kg, key, ns| {
            svc.register(domain, kg, timestamp, key, ns)
        })
    }

    /// Deletes the timer of `scope`'s key and namespace (no-op when absent).
    pub fn delete_timer(
        &mut self,
        domain: TimeDomain,
        scope: &ScopeKey,
        timestamp: i64,
    ) -> Result<()> {
        self.timer_op(scope, |svc, kg, key, ns| {
            svc.delete(domain, kg, timestamp, key, ns)
        })
    }

    #[inline]
    fn timer_op(
        &mut self,
        scope: &ScopeKey,
        op: impl FnOnce(&mut dyn TimerService, KeyGroup, &[u8], &[u8]) -> cairn_timers::Result<()>,
    ) -> Result<()> {
        let svc = self.timers()?;
        Ok(op(svc, scope.key_group, scope.key(), scope.namespace())?)
    }

    /// Fires every timer of `domain` due at `up_to` (a watermark, or the processing time), in
    /// order, calling `on_timer(slot, scope, timer)` for each with `scope` set to the timer's
    /// key and namespace, so the callback reads and writes that key's state (and may register
    /// timers, which fire in this call when due). Returns how many fired; stops at the first
    /// error of the callback or the timer service.
    ///
    /// ```no_run
    /// # use cairn_engine::{Slot, TimeDomain, ValueState, VoidNamespace};
    /// # fn f(slot: &mut Slot, count: &ValueState<u64>, watermark: i64) -> cairn_engine::Result<()> {
    /// slot.fire_timers(TimeDomain::EventTime, watermark, |slot, scope, timer| {
    ///     let n = count.get(slot, scope)?.unwrap_or(0);
    ///     println!("window ending {} of key {:?}: {n}", timer.timestamp, timer.key);
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn fire_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        mut on_timer: impl FnMut(&mut Slot, &ScopeKey, &Timer) -> Result<()>,
    ) -> Result<u64> {
        let mut timer = Timer::default();
        let mut scope = ScopeKey::new(0, self.prefix_bytes, &[], &[]);
        let mut fired = 0;
        while self.poll_timer(domain, up_to, &mut timer)? {
            self.rescope_timer(&mut scope, &timer)?;
            on_timer(self, &scope, &timer)?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Removes the next timer of `domain` due at `up_to` into `out` (see
    /// [`TimerService::poll`]); `false` when none is due.
    pub fn poll_timer(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool> {
        Ok(self.timers()?.poll(domain, up_to, out)?)
    }

    /// The synchronous part of a checkpoint for timers: RocksDB timers write their batch (so
    /// the native checkpoint has them) and hand out a copy-on-write view of their write-back
    /// buffer (timers not in RocksDB); heap timers hand out a copy-on-write view.
    pub(crate) fn snapshot_timers(&mut self) -> Result<Option<HeapTimersSnapshot>> {
        match &mut self.timers {
            None => Ok(None),
            Some(Timers::RocksDb(r)) => {
                r.flush()?;
                Ok(r.buffer_snapshot())
            }
            Some(Timers::Heap(h)) => Ok(Some(h.snapshot())),
        }
    }
}
