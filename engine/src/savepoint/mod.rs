//! Savepoints: self-contained, user-owned, relocatable copies of a job's state, made from a
//! committed checkpoint (see `cairn_snapshot::savepoint` for the layout and manifest).
//!
//! - **Canonical** ([`SavepointKind::Canonical`]): backend-independent chunks of key-grouped
//!   state entries and timers ([`canonical`]), plus each old slot's operator state. Restores
//!   into either backend and any slot count: the way to switch heap <-> RocksDB.
//! - **Native** ([`SavepointKind::Native`]): the checkpoint's files as they are. Restores into
//!   the same backend (RocksDB into any slot count, through rescaling), as fast as a checkpoint.
//!
//! Restore with the savepoint's location wherever a checkpoint location is taken
//! ([`Checkpointer::resume_from`](crate::checkpoint::Checkpointer::resume_from),
//! `cairn run --restore-from <url>/<savepoint>`). A savepoint is never claimed: the restored
//! job's first checkpoint uploads its own copy, and Cairn never deletes a savepoint.
//!
//! ```no_run
//! use cairn_engine::CairnConfig;
//! use cairn_engine::checkpoint::CheckpointLocation;
//! use cairn_engine::savepoint::{SavepointKind, SavepointLocation, create_savepoint};
//! let config = CairnConfig::default();
//! let source = CheckpointLocation::parse("file:///data/checkpoints/job-1")?; // latest
//! let target = SavepointLocation::parse("file:///data/savepoints/before-upgrade")?;
//! let report = create_savepoint(&config, &source, &target, SavepointKind::Canonical)?;
//! println!("{} entries, {} timers in {:.1} s", report.entries, report.timers, report.seconds);
//! # Ok::<(), cairn_engine::EngineError>(())
//! ```

pub mod canonical;
pub(crate) mod restore;
mod write;

pub use cairn_snapshot::savepoint::{SavepointKind, SavepointManifest};
pub(crate) use restore::load_chunks;
pub use write::{
    CHUNK_TARGET_BYTES, SavepointLocation, SavepointReport, create_savepoint,
    create_savepoint_with_clock,
};
