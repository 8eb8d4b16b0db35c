//! The state API of a slot: raw-bytes reads and writes of every state kind, checked (kind,
//! value size, key group) before the backend sees them; sizes, memory, flushes.

use serde::Serialize;

use super::{Slot, Timers};
use crate::backend::{LoadEntry, ScopeKey, StateEntry, StateId, StateKind, StateSize, Update};
use crate::codec;
use crate::error::{EngineError, Result};
use crate::keygroup::KeyGroup;
use cairn_timers::TimerService;

impl Slot {
    const SINGLE: &'static [StateKind] = &[
        StateKind::Value,
        StateKind::Reducing,
        StateKind::Aggregating,
    ];

    /// Raw get of a value, reducing or aggregating state.
    pub fn get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Option<Vec<u8>>> {
        if let Some(ttl) = self.check(state, Self::SINGLE, StateKind::Value)? {
            return self.ttl_get_with(state, scope, ttl, |b| b.map(<[u8]>::to_vec));
        }
        self.backend.get(state, scope)
    }

    /// Raw get that lends the stored bytes to `f` instead of copying them.
    pub fn get_with<T>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T> {
        if let Some(ttl) = self.check(state, Self::SINGLE, StateKind::Value)? {
            return self.ttl_get_with(state, scope, ttl, f);
        }
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
        if let Some(ttl) = self.check(state, Self::SINGLE, StateKind::Value)? {
            return self.ttl_update_with(state, scope, ttl, f);
        }
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
        let ttl = self.check(state, Self::SINGLE, StateKind::Value)?;
        self.check_size(state, value.len())?;
        if let Some(ttl) = ttl {
            return self.ttl_put(state, scope, ttl, value);
        }
        self.backend.put(state, scope, value)
    }

    /// Removes the (key, namespace) entry of any state kind.
    pub fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()> {
        let Some(desc) = self.states.get(state as usize) else {
            return Err(EngineError::UnknownState(state));
        };
        let ttl = desc.ttl;
        self.backend.clear(state, scope)?;
        match ttl {
            Some(ttl) => self.ttl_removed(state, ttl),
            None => Ok(()),
        }
    }

    /// Raw list read.
    pub fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>> {
        if let Some(ttl) = self.check(state, &[StateKind::List], StateKind::List)? {
            return self.ttl_list_get(state, scope, ttl);
        }
        self.backend.list_get(state, scope)
    }

    /// Raw list append (no read).
    pub fn list_append(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        elements: &[&[u8]],
    ) -> Result<()> {
        let ttl = self.check(state, &[StateKind::List], StateKind::List)?;
        for e in elements {
            self.check_size(state, e.len())?;
        }
        if let Some(ttl) = ttl {
            if elements.is_empty() {
                return self.ttl_removed(state, ttl);
            }
            return self.ttl_list_write(state, scope, ttl, elements, false);
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
        let ttl = self.check(state, &[StateKind::List], StateKind::List)?;
        for e in elements {
            self.check_size(state, e.len())?;
        }
        if let Some(ttl) = ttl {
            return self.ttl_list_write(state, scope, ttl, elements, true);
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
        if let Some(ttl) = self.check(state, &[StateKind::Map], StateKind::Map)? {
            return self.ttl_map_get(state, scope, ttl, user_key);
        }
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
        let ttl = self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.check_size(state, value.len())?;
        self.check_size(state, user_key.len())?;
        if let Some(ttl) = ttl {
            return self.ttl_map_put(state, scope, ttl, user_key, value);
        }
        self.backend.map_put(state, scope, user_key, value)
    }

    /// Raw map remove.
    pub fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()> {
        let ttl = self.check(state, &[StateKind::Map], StateKind::Map)?;
        self.backend.map_remove(state, scope, user_key)?;
        match ttl {
            Some(ttl) => self.ttl_removed(state, ttl),
            None => Ok(()),
        }
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
        if let Some(ttl) = self.check(state, &[StateKind::Map], StateKind::Map)? {
            return self.ttl_map_entries(state, scope, ttl);
        }
        self.backend.map_entries(state, scope)
    }

    /// Every entry of one key group of one state, as stored (a TTL state's values, list
    /// elements and map values carry their timestamps, see [`crate::ttl`]).
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

    /// Loads restored entries into a state ([`StateBackend::load_entries`]), after checking
    /// their key groups and value sizes as a write would.
    pub(crate) fn load_entries(&mut self, state: StateId, entries: Vec<LoadEntry>) -> Result<()> {
        let kind = self
            .states
            .get(state as usize)
            .map(|d| d.kind)
            .ok_or(EngineError::UnknownState(state))?;
        for e in &entries {
            self.check_key_group(e.scope.key_group)?;
            self.check_size(state, e.value.len())?;
        }
        self.backend.load_entries(state, kind, entries)
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

    /// Progress of a lazy restore (`None` unless the slot was restored with
    /// `checkpoint.restore-fetch = "lazy"`).
    pub fn lazy_progress(&self) -> Option<crate::backend::rocks::lazy::LazyProgress> {
        self.backend.lazy_progress()
    }

    /// Blocks until a lazily restored slot has every file locally (at once otherwise); the
    /// first failed fetch, if any, as [`crate::EngineError::LazyFetch`].
    pub fn wait_local(&self) -> crate::Result<()> {
        self.backend.wait_local()
    }

    /// Counters of the RocksDB backend's state cache (`None` when off or heap).
    pub fn cache_stats(&self) -> Option<crate::backend::rocks::cache::CacheStats> {
        self.backend.cache_stats()
    }

    /// RocksDB's own metrics of this slot as `rocksdb.metrics` configures them, read now
    /// (`None` on the heap backend or with nothing configured); publish them with
    /// [`Metrics::observe_native`](crate::Metrics::observe_native).
    pub fn native_metrics(&self) -> Option<crate::backend::rocks::native_metrics::NativeMetrics> {
        self.backend.native_metrics()
    }

    /// Flushes buffered writes (the state cache's and timers' included) into the backend's
    /// files.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(t) = &mut self.timers {
            t.svc().flush()?;
        }
        self.backend.flush()
    }
}
