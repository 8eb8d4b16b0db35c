//! Cairn's engine: slots, state backends (heap and RocksDB), keyed state and key groups.
//!
//! A host stream engine opens one [`Slot`] per parallel worker. Each slot owns one backend for
//! its contiguous range of key groups: one RocksDB instance (one column family per state, all
//! sharing the slot's memory budget) or in-memory tables. State is accessed through typed
//! handles ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`],
//! [`AggregatingState`]) or the raw-bytes methods of [`Slot`], always scoped by a key and a
//! namespace ([`ScopeKey`]).
//!
//! Timers (`cairn-timers`) are reached through [`Slot::timers`] and checkpointed with the slot.
//! State can expire: a state registered with a [`StateTtlConfig`] has Flink's state TTL
//! ([`ttl`]).
//!
//! Not here: checkpoint storage (`cairn-snapshot`), the memory budget arithmetic
//! (`cairn-memory`).
#![deny(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod error;
pub mod key_format;
pub mod keygroup;
pub mod metrics;
pub mod operator_state;
pub mod savepoint;
pub mod slot;
pub mod state;
pub mod ttl;

pub use backend::rocks::rescale::{RescalePath, RescaleReport, RescaledPart};
pub use backend::{
    RestoredFiles, ScopeKey, StateDescriptor, StateEntry, StateId, StateKind, StateSize,
};
pub use cairn_timers::{TimeDomain, Timer, TimerService};
pub use codec::VoidNamespace;
pub use config::{BackendKind, CairnConfig, TimerServiceKind};
pub use error::{EngineError, ErrorKind, Result};
pub use keygroup::{KeyGroup, KeyGroupRange, key_group_of, slot_for_key};
pub use metrics::Metrics;
pub use operator_state::{OperatorState, Redistribution};
pub use slot::{Slot, SlotBuilder};
pub use state::{
    AggregateFunction, AggregatingState, ListState, MapState, ReducingState, ValueState,
};
pub use ttl::{
    CompactionFilterCleanup, IncrementalCleanup, StateTtlConfig, StateTtlConfigBuilder,
    TtlUpdateType, TtlVisibility,
};
