//! Checkpoints of slots: the synchronous phase on the slot's thread (a RocksDB native checkpoint
//! of hard links, or a copy-on-write view of the heap tables), the asynchronous phase on the
//! [`Checkpointer`] (heap view written to a file, files uploaded incrementally through
//! `cairn-snapshot`, metadata committed), and restore.

pub(crate) mod checkpointer;
mod config;
mod coordinator;
mod lazy_source;
mod local;
mod rebase;
mod schedule;
mod slot_uploader;
mod sync;

pub use crate::backend::CompactionStats;
pub use checkpointer::{
    CheckpointLocation, CheckpointReport, Checkpointer, RestoredCheckpoint, new_job_name,
    recovery_location,
};
pub use config::{
    CheckpointConfig, CheckpointingMode, ClaimMode, FileVerify, RebaseConfig, RestoreFetch,
};
pub use coordinator::{
    AbortReason, CancelOutcome, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
    DeclineReason, KIND_PROPERTY, MODE_PROPERTY, SlotReply, TriggeredCheckpoint,
};
pub use local::{RestoredVia, SlotRestoreReport};
pub use schedule::CheckpointSchedule;
pub use slot_uploader::{SlotAck, SlotUploader};
pub use sync::{HEAP_SNAPSHOT_FILE, SyncSnapshot, TIMERS_SNAPSHOT_FILE};
