//! The checkpoint storage as the source of a lazily restored slot's SSTs
//! ([`crate::backend::rocks::lazy::FetchSource`]): each file is downloaded with the storage
//! layer's retries and verified against the metadata's size and sha256
//! ([`CheckpointStore::fetch_lazy`]); a RocksDB read of a file not yet local is a ranged read
//! of its object ([`CheckpointStore::read_lazy_range`]). The restore path itself stays in `checkpointer.rs`
//! (`download_slot`), which builds this source.

use std::collections::HashMap;
use std::path::Path;

use cairn_snapshot::{CheckpointStore, LazySharedFile, StorageRoot};

use crate::backend::rocks::lazy::{FetchSource, LazyFile};
use crate::error::{EngineError, Result};

/// Fetches one slot's shared files from `storage` on a runtime of its own (the fetch threads
/// are plain threads that block on it; the job's runtime may be gone before the slot is).
pub(crate) struct StoreSource {
    rt: Option<tokio::runtime::Runtime>,
    storage: StorageRoot,
    files: HashMap<String, LazySharedFile>,
}

impl StoreSource {
    /// A source of `files` (checked by [`CheckpointStore::download_slot_lazy`]) and the list
    /// the slot registers as pending.
    pub(crate) fn new(
        storage: StorageRoot,
        files: Vec<LazySharedFile>,
    ) -> Result<(Self, Vec<LazyFile>)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cairn-lazy-io")
            .enable_all()
            .build()
            .map_err(|e| EngineError::Io {
                op: "start the lazy restore's runtime".into(),
                source: e,
            })?;
        let list = files
            .iter()
            .map(|f| LazyFile {
                name: f.name.clone(),
                size: f.size,
            })
            .collect();
        let files = files.into_iter().map(|f| (f.name.clone(), f)).collect();
        Ok((
            Self {
                rt: Some(rt),
                storage,
                files,
            },
            list,
        ))
    }
}

impl StoreSource {
    /// The file `name` and the runtime to reach storage on.
    fn file(&self, name: &str) -> Result<(&LazySharedFile, &tokio::runtime::Runtime)> {
        let f = self.files.get(name).ok_or_else(|| {
            EngineError::InvalidArgument(format!("{name} is not a file of the restored slot"))
        })?;
        let rt = self.rt.as_ref().ok_or_else(|| {
            EngineError::InvalidArgument("the lazy restore's runtime is shut down".into())
        })?;
        Ok((f, rt))
    }
}

impl FetchSource for StoreSource {
    fn fetch(&self, name: &str, to: &Path) -> Result<u64> {
        let (f, rt) = self.file(name)?;
        Ok(rt.block_on(CheckpointStore::fetch_lazy(&self.storage, f, to))?)
    }

    fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (f, rt) = self.file(name)?;
        // The caller is a RocksDB read on the record path, possibly inside the host's own
        // runtime, where `Runtime::block_on` would panic: block this thread on the future
        // with this source's runtime entered (its worker drives the I/O and timers).
        let _entered = rt.enter();
        Ok(futures::executor::block_on(
            CheckpointStore::read_lazy_range(&self.storage, f, offset, buf),
        )?)
    }
}

impl Drop for StoreSource {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's async context panics; this does not.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
