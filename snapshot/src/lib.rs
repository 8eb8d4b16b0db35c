//! Cairn's checkpoint storage: incremental SST snapshots with a refcounted shared-file
//! registry, commit by metadata written last, subsumption, orphan collection, verification and
//! verified parallel downloads for restore.
//!
//! This crate moves files; it knows nothing about slots or RocksDB. The engine takes a slot's
//! local snapshot (RocksDB native checkpoint or heap snapshot file) in its synchronous phase and
//! hands the directory to [`CheckpointStore::upload_slot`]; a checkpoint commits when
//! [`CheckpointStore::commit`] writes its `_metadata`.
//!
//! Storage is untrusted input: every name, size and count read from it is checked before it
//! becomes a path, an allocation or a loop bound ([`object_layout`], [`CheckpointMetadata::validate`]),
//! and a download never writes past the size its metadata records. One writer holds a job at a
//! time ([`lease`]); time is read from an injected [`Clock`].
//!
//! ```no_run
//! # async fn demo() -> cairn_snapshot::Result<()> {
//! use cairn_snapshot::{StorageRoot, CheckpointStore, StorageOptions};
//! let storage = StorageRoot::from_url("file:///tmp/cairn-checkpoints", &StorageOptions::default())?;
//! let store = CheckpointStore::open(storage, "job-1", 1).await?;
//! println!("retained: {:?}", store.retained_ids()?);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod clock;
pub mod error;
pub mod fault;
pub mod gc;
pub mod lease;
pub mod metadata;
pub mod object_layout;
pub mod registry;
pub mod savepoint;
pub mod slot_upload;
pub mod storage;
pub mod store;
pub mod transfer;

pub use cairn_base::ErrorKind;
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use error::{Result, SnapshotError};
pub use fault::{FailPoint, FailPoints, Fault, FaultAction, FaultStore};
pub use gc::GcReport;
pub use lease::{LeaseOptions, Takeover, WriterLease};
pub use metadata::{CheckpointMetadata, RestoredFrom, SlotHandle, StateInfo};
pub use object_layout::{CheckpointId, Epoch, JobLayout};
pub use registry::SharedRegistry;
pub use savepoint::{SavepointDir, SavepointKind, SavepointManifest};
pub use slot_upload::{UploadTarget, upload_slot_files};
pub use storage::{StorageOptions, StorageRoot};
pub use store::{
    CheckpointStore, FetchedObjects, LazySharedFile, LocalSnapshot, SlotUploadReport,
    SlotUploadState, UploadPolicy, VerifyProblem, load_metadata,
};
