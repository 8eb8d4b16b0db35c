//! Cairn: a RocksDB state engine for stream processors.
//!
//! This crate re-exports the workspace's crates under one name and holds the `cairn` CLI's
//! workloads. Library users embed [`Slot`]s (one per parallel worker); see [`engine`].
#![deny(missing_docs)]

pub use cairn_engine as engine;
pub use cairn_memory as memory;
pub use cairn_snapshot as snapshot;
pub use cairn_timers as timers;

pub use cairn_engine::{
    AggregateFunction, AggregatingState, BackendKind, CairnConfig, EngineError, ErrorKind,
    KeyGroupRange, ListState, MapState, ReducingState, ScopeKey, Slot, StateDescriptor, StateKind,
    ValueState, VoidNamespace,
};

pub mod bench_cmd;
pub mod cache_bench;
pub mod checkpointing;
pub mod checkpoints_cmd;
pub mod cli;
pub mod metrics_server;
pub mod rebase_bench;
pub mod report;
pub mod run;
pub mod stream;
pub mod torture;
pub mod wordcount;
pub mod workload;
