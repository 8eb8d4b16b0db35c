//! Cairn: a RocksDB state engine for stream processors.
//!
//! This crate is the public API: re-exports of the workspace's crates under one name, and
//! nothing else (no command-line code; the `cairn` command is the `cairn-cli` package, one
//! user of this API). Library users embed [`Slot`]s, one per parallel worker; see [`engine`].
#![deny(missing_docs)]

pub use cairn_engine as engine;
pub use cairn_memory as memory;
pub use cairn_snapshot as snapshot;
pub use cairn_timers as timers;

/// Bytes sizes in the configuration (`max-value-size`, memory budgets).
pub use bytesize::ByteSize;
pub use cairn_engine::checkpoint::{
    AbortReason, CancelOutcome, CheckpointConfig, CheckpointCoordinator, CheckpointEvent,
    CheckpointKind, CheckpointReport, CheckpointSchedule, Checkpointer, CheckpointingMode,
    DeclineReason, RestoreMode, RestoreSource, RestoredCheckpoint, SlotAck, SlotReply,
    SlotUploader, SyncSnapshot, TriggeredCheckpoint, new_job_name,
};
pub use cairn_engine::{
    AggregateFunction, AggregatingState, BackendKind, CairnConfig, EngineError, ErrorKind,
    KeyGroup, KeyGroupRange, ListState, MapState, Metrics, ReducingState, ScopeKey, Slot,
    SlotBuilder, SlotRestore, StateDescriptor, StateKind, TimeDomain, Timer, ValueState,
    VoidNamespace, key_group_of, slot_for_key,
};
pub use cairn_snapshot::UploadTarget;
