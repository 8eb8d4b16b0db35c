//! What a backend hands the checkpoint and restore paths, in the backend's own (native) format:
//! the snapshot of the synchronous phase, the restored files a slot opens from, and what a
//! compaction did. The slot and the checkpoint code see only these types and the
//! [`StateBackend`](super::StateBackend) methods that produce them, never a concrete backend.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::StateDescriptor;
use crate::error::Result;
use crate::keygroup::KeyGroupRange;

/// What a backend's native snapshot
/// ([`StateBackend::native_snapshot`](super::StateBackend::native_snapshot)) left for the
/// checkpoint.
pub enum NativeSnapshot {
    /// Files already in the snapshot directory (RocksDB's checkpoint: hard links of its live
    /// files). `shared` files (SSTs: immutable) can be reused by later checkpoints; `private`
    /// ones (MANIFEST, OPTIONS, CURRENT) belong to this checkpoint only (Flink's rule).
    Files {
        /// Names of the shared files, sorted.
        shared: Vec<String>,
        /// Names of the private files, sorted.
        private: Vec<String>,
    },
    /// A consistent view that the asynchronous phase writes into the snapshot directory as
    /// private files (the heap backend's copy-on-write tables).
    Deferred(Box<dyn DeferredSnapshot>),
}

/// A native snapshot taken on the slot's thread and written off it.
pub trait DeferredSnapshot: Send {
    /// Writes the snapshot into `dir` (which exists); returns the names of the files written.
    fn write_into(self: Box<Self>, dir: &Path) -> Result<Vec<String>>;
}

/// Local files a slot opens from, in its backend's native format (downloaded and verified by
/// the checkpoint layer: [`Checkpointer::download_slot_files`](crate::checkpoint::Checkpointer::download_slot_files)).
#[derive(Clone, Debug)]
pub enum RestoredFiles {
    /// A RocksDB checkpoint of an old slot (the base, moved into place as the slot's database)
    /// and, when the slot's key groups are not exactly the base's (rescaling), the other old
    /// slots with key groups of this slot, brought in after it opens (see
    /// [`crate::backend::rocks::rescale`]).
    RocksDb {
        /// The base's directory with SSTs, MANIFEST, CURRENT, OPTIONS.
        files: PathBuf,
        /// The base's states, in id order.
        states: Vec<StateDescriptor>,
        /// The base's old slot index.
        slot: u32,
        /// The base's key groups.
        key_groups: KeyGroupRange,
        /// The other old slots overlapping this slot's key groups (empty unless rescaling).
        merge: Vec<MergeSource>,
        /// The base's SSTs not yet in `files`, fetched as RocksDB needs them
        /// (`checkpoint.restore-fetch = "lazy"`); `None` when every file is there.
        lazy: Option<crate::backend::rocks::lazy::LazyRestore>,
    },
    /// Heap snapshot files; entries of key groups outside the slot's range are skipped, so
    /// snapshots of any number of slots restore into any other number.
    Heap {
        /// The snapshot files.
        files: Vec<PathBuf>,
    },
    /// Chunks of a canonical savepoint (downloaded and verified): the slot opens empty in
    /// whichever backend it is configured with, creates `states`, and loads the entries and
    /// timers of its key groups (see [`crate::savepoint`]).
    Canonical {
        /// The chunk files (uncompressed), those overlapping the slot's key groups.
        chunks: Vec<PathBuf>,
        /// Every keyed state of the savepoint, in the order its records number them.
        states: Vec<StateDescriptor>,
    },
}

/// An old slot's RocksDB checkpoint, brought into a rescaled slot for the key groups they share.
#[derive(Clone, Debug)]
pub struct MergeSource {
    /// Its checkpoint directory (on the slot's file system; removed once merged).
    pub files: PathBuf,
    /// Its states, in its id order.
    pub states: Vec<StateDescriptor>,
    /// Its old slot index.
    pub slot: u32,
    /// Its key groups.
    pub key_groups: KeyGroupRange,
}

/// What compacting a slot's state did
/// ([`StateBackend::compact`](super::StateBackend::compact)).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactionStats {
    /// Wall time of the compaction, ms.
    pub ms: f64,
    /// Live SST bytes of the state's column families before.
    pub sst_bytes_before: u64,
    /// Live SST bytes after.
    pub sst_bytes_after: u64,
}
