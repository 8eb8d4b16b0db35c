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

//!
//! The slot's code is one module tree: the struct, registration and scopes here; opening it
//! (empty or restored) in `builder`; the state API in `state_access`; timers in `timers`; its
//! part of a checkpoint (pre-flush, synchronous phase, compaction) in `checkpoint`.

mod builder;
mod checkpoint;
mod state_access;
mod timers;
mod ttl;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::backend::rocks::rescale::RescaleReport;
use crate::backend::{ScopeKey, StateBackend, StateDescriptor, StateId, StateKind};
use crate::codec;
use crate::config::{BackendKind, TimerServiceKind};
use crate::error::{EngineError, Result};
use crate::keygroup::{self, KeyGroup, KeyGroupRange};
use crate::operator_state::OperatorState;
use cairn_timers::{HeapTimers, RocksDbTimers, Timer, TimerService};

pub use builder::SlotBuilder;
pub(crate) use ttl::SlotTtl;

/// Operator name of the timer column families (`_timers/event-time`,
/// `_timers/processing-time`); reserved: user states can't use it.
pub const TIMER_OPERATOR: &str = "_timers";
/// State name of the event-time timers' column family.
pub const EVENT_TIMERS: &str = "event-time";
/// State name of the processing-time timers' column family.
pub const PROCESSING_TIMERS: &str = "processing-time";

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
    /// What rescaling did when the slot opened from old slots of other key groups.
    rescale: Option<RescaleReport>,
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
    /// Which states have TTL, the clock, per-record cleanups owed ([`crate::ttl`]).
    ttl: SlotTtl,
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

    /// What rescaling did when the slot opened from a RocksDB checkpoint of other key groups
    /// (which old slot was its base, which were ingested or inserted, and how long each took);
    /// `None` otherwise.
    pub fn rescale_report(&self) -> Option<&RescaleReport> {
        self.rescale.as_ref()
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

    /// Bytes of the key-group prefix of this job's keys.
    pub fn prefix_bytes(&self) -> usize {
        self.prefix_bytes
    }

    /// The backend, for reports and its native properties ([`StateBackend::native_property`]).
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
            self.reconcile_ttl(id, desc.ttl)?;
            return Ok(id);
        }
        if desc.operator.is_empty() || desc.name.is_empty() || full == "default" {
            return Err(EngineError::InvalidArgument(format!(
                "state name '{full}' needs a non-empty operator and name"
            )));
        }
        if let Some(t) = &desc.ttl {
            t.validate()?;
        }
        let id = self.states.len() as StateId;
        self.backend.create_state(id, desc)?;
        self.states.push(desc.clone());
        self.by_name.insert(full, id);
        self.created_with_ttl(id)?;
        Ok(id)
    }

    /// The scope of raw key and namespace bytes. The key's key group must belong to this slot.
    pub fn scope_raw(&self, key: &[u8], namespace: &[u8]) -> Result<ScopeKey> {
        let kg = keygroup::assign_to_key_group(key, self.max_parallelism);
        self.check_key_group(kg)?;
        self.ttl.record();
        Ok(ScopeKey::new(kg, self.prefix_bytes, key, namespace))
    }

    /// Re-targets `scope` at raw key and namespace bytes, reusing its buffer (the per-record
    /// hot path of a host engine).
    pub fn rescope_raw(&self, scope: &mut ScopeKey, key: &[u8], namespace: &[u8]) -> Result<()> {
        let kg = keygroup::assign_to_key_group(key, self.max_parallelism);
        self.check_key_group(kg)?;
        self.ttl.record();
        scope.reset(kg, self.prefix_bytes, key, namespace);
        Ok(())
    }

    /// Re-targets `scope` at a fired timer's key and namespace. The timer carries its key
    /// group, so the key is not hashed again (firing a timer usually reads its key's state).
    pub fn rescope_timer(&self, scope: &mut ScopeKey, timer: &Timer) -> Result<()> {
        self.check_key_group(timer.key_group)?;
        self.ttl.record();
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

    /// Checks a state access (known id, one of `kinds`) and returns the state's TTL. Runs the
    /// per-record TTL cleanups owed first (see [`crate::ttl::IncrementalCleanup`]).
    #[inline]
    fn check(
        &mut self,
        state: StateId,
        kinds: &[StateKind],
        requested: StateKind,
    ) -> Result<Option<crate::ttl::StateTtlConfig>> {
        if self.ttl.owes_cleanup() {
            self.run_owed_cleanups()?;
        }
        let desc = self
            .states
            .get(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        if kinds.contains(&desc.kind) {
            Ok(desc.ttl)
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
}
