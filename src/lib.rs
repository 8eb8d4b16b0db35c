//! Cairn: a RocksDB state engine for stream processors.
//!
//! This crate is the public API: re-exports of the workspace's crates under one name, and
//! nothing else (no command-line code; the `cairn` command is the `cairn-cli` package, one
//! user of this API). `examples/embed.rs` is a complete host; this is the short tour.
//!
//! # Embedding Cairn in a stream engine
//! 1. **Open one [`Slot`] per parallel worker** (`SlotBuilder::slot(index, count)`): each owns a
//!    contiguous range of key groups, in RocksDB (one column family per state) or in memory.
//! 2. **Route records** to the slot that owns their key with [`slot_for_key`]; in the slot,
//!    [`Slot::scope`] selects the key and typed handles ([`ValueState`], [`ListState`],
//!    [`MapState`], ...) read and write its state. Timers: [`Slot::register_timer`], fired
//!    with the key in scope by [`Slot::fire_timers`]. State that should expire is registered
//!    with a [`StateTtlConfig`] (`Slot::value_state_with_ttl`, ...: Flink's state TTL).
//! 3. **Checkpoint with the [`CheckpointCoordinator`]**: [`CheckpointCoordinator::poll`] says
//!    when to inject a barrier; at the barrier each slot takes its synchronous snapshot and the
//!    host acknowledges it ([`SlotReply::Snapshot`], or a [`SlotAck`] when the slot uploads
//!    itself in another process, see [`SlotUploader`]); [`CheckpointCoordinator::take_events`]
//!    says which checkpoints completed or were aborted (what a two-phase sink waits for).
//! 4. **Restore** after a failure: a new [`Checkpointer`] prepares the restore
//!    ([`Checkpointer::resume_from`]) and downloads each slot's files
//!    ([`Checkpointer::download_slot_files`], also into another slot count);
//!    host properties stored with [`CheckpointCoordinator::set_property`] (a source offset) come
//!    back in the restored metadata.
//! 5. **Cancel** with [`CheckpointCoordinator::cancel`]: checkpoints are kept or deleted as
//!    `checkpoint.retain-on-cancellation` says.
//!
//! ```
//! use cairn::{
//!     BackendKind, CairnConfig, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
//!     Checkpointer, Slot, SlotReply, VoidNamespace, new_job_name, slot_for_key,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut cfg = CairnConfig::default();
//! cfg.state.backend = BackendKind::Heap;
//! cfg.state.max_parallelism = Some(128);
//! cfg.state.working_dir = dir.path().join("work");
//! cfg.checkpoint.dir = format!("file://{}", dir.path().join("checkpoints").display());
//!
//! // 1. Two slots.
//! let mut slots: Vec<Slot> = (0..2)
//!     .map(|i| Slot::builder(&cfg).slot(i, 2).open())
//!     .collect::<Result<_, _>>()?;
//! // 2. Count words per slot that owns them.
//! for word in ["a", "b", "a", "c"] {
//!     let slot = &mut slots[slot_for_key(&word, 128, 2)? as usize];
//!     let count = slot.value_state::<u64>("counter", "count")?;
//!     let scope = slot.scope(&word, &VoidNamespace)?;
//!     let n = count.get(slot, &scope)?.unwrap_or(0);
//!     count.update(slot, &scope, &(n + 1))?;
//! }
//! // 3. A checkpoint (requested here; `poll` also triggers them every `checkpoint.interval`).
//! let checkpointer = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
//! let mut coordinator = CheckpointCoordinator::new(checkpointer, 2)?;
//! coordinator.request(CheckpointKind::Forced);
//! let barrier = coordinator.poll()?.expect("a requested checkpoint triggers at once");
//! coordinator.set_property(barrier.id, "source.offset", "4")?;
//! for slot in &mut slots {
//!     let snapshot = slot.snapshot_for_checkpoint(barrier.id)?;
//!     coordinator.acknowledge(barrier.id, slot.index().0, SlotReply::Snapshot(snapshot))?;
//! }
//! assert!(matches!(
//!     coordinator.take_events().as_slice(),
//!     [CheckpointEvent::Completed { .. }]
//! ));
//! // 5. Cancel: the checkpoint is kept for a later restore.
//! let (outcome, _) = coordinator.cancel()?;
//! println!("{outcome:?}");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub use cairn_base as base;
pub use cairn_engine as engine;
pub use cairn_memory as memory;
pub use cairn_snapshot as snapshot;
pub use cairn_timers as timers;

/// Bytes sizes in the configuration (`max-value-size`, memory budgets).
pub use bytesize::ByteSize;
pub use cairn_engine::backend::rocks::native_metrics::{
    HistogramSummary, NativeMetrics, NativeMetricsConfig, NativeProperty,
};
pub use cairn_engine::checkpoint::{
    AbortReason, CancelOutcome, CheckpointConfig, CheckpointCoordinator, CheckpointEvent,
    CheckpointKind, CheckpointLocation, CheckpointReport, CheckpointSchedule, Checkpointer,
    CheckpointingMode, ClaimMode, DeclineReason, KIND_PROPERTY, MODE_PROPERTY, RestoredCheckpoint,
    SlotAck, SlotReply, SlotUploader, SyncSnapshot, TriggeredCheckpoint, new_job_name,
    recovery_location,
};
pub use cairn_engine::savepoint::{
    SavepointKind, SavepointLocation, SavepointReport, create_savepoint,
    create_savepoint_with_clock,
};
pub use cairn_engine::{
    AggregateFunction, AggregatingState, BackendKind, CairnConfig, EngineError, ErrorKind,
    KeyGroup, KeyGroupRange, ListState, MapState, Metrics, OperatorState, Redistribution,
    ReducingState, RescalePath, RescaleReport, RescaledPart, RestoredFiles, ScopeKey, Slot,
    SlotBuilder, StateDescriptor, StateKind, StateTtlConfig, StateTtlConfigBuilder, TimeDomain,
    Timer, TimerServiceKind, TtlUpdateType, TtlVisibility, ValueState, VoidNamespace, key_group_of,
    slot_for_key,
};
pub use cairn_snapshot::UploadTarget;
