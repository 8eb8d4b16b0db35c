//! The checkpoint storage as the source of a lazily restored slot's SSTs
//! ([`crate::backend::rocks::lazy::FetchSource`]): each file is downloaded with the storage
//! layer's retries and verified against the metadata's size and sha256
//! ([`CheckpointStore::fetch_lazy`]); a RocksDB read of a file not yet local is a ranged read
//! of its object ([`CheckpointStore::read_lazy_range`]), or a `pread` of the object's file for
//! `file://` storage ([`CheckpointStore::pread_lazy_range`]). The restore path itself stays in
//! `checkpointer.rs` (`download_slot`), which builds this source.
//!
//! Two runtimes, so that the record path never waits behind the background: range reads (a
//! record waits for each) on one at normal priority; whole-file fetches, whose hashing and
//! copying would otherwise take the CPU the slot's thread needs, on one whose threads run at
//! lowered priority ([`lower_this_threads_priority`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use cairn_snapshot::{CheckpointStore, LazySharedFile, StorageRoot};

use crate::backend::rocks::lazy::{FetchSource, LazyFile, lower_this_threads_priority};
use crate::error::{EngineError, Result};

/// Fetches one slot's shared files from `storage` on runtimes of its own (the fetch threads
/// and RocksDB's reading threads are plain threads that block on them; the job's runtime may
/// be gone before the slot is).
pub(crate) struct StoreSource {
    /// Range reads' runtime (normal priority).
    rt: Option<tokio::runtime::Runtime>,
    /// Whole-file fetches' runtime (lowered priority).
    fetch_rt: Option<tokio::runtime::Runtime>,
    storage: StorageRoot,
    files: HashMap<String, SourceFile>,
}

/// One shared file and, for `file://` storage, its object opened for range reads on first use.
struct SourceFile {
    file: LazySharedFile,
    local: OnceLock<std::fs::File>,
}

impl StoreSource {
    /// A source of `files` (checked by [`CheckpointStore::download_slot_lazy`]) and the list
    /// the slot registers as pending.
    pub(crate) fn new(
        storage: StorageRoot,
        files: Vec<LazySharedFile>,
    ) -> Result<(Self, Vec<LazyFile>)> {
        let runtime = |name: &str, background: bool| {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(1).thread_name(name).enable_all();
            if background {
                b.on_thread_start(lower_this_threads_priority);
            }
            b.build().map_err(|e| EngineError::Io {
                op: "start the lazy restore's runtime".into(),
                source: e,
            })
        };
        let rt = runtime("cairn-lazy-read", false)?;
        let fetch_rt = runtime("cairn-lazy-fetch", true)?;
        let list = files
            .iter()
            .map(|f| LazyFile {
                name: f.name.clone(),
                size: f.size,
            })
            .collect();
        let files = files
            .into_iter()
            .map(|file| {
                let local = OnceLock::new();
                (file.name.clone(), SourceFile { file, local })
            })
            .collect();
        Ok((
            Self {
                rt: Some(rt),
                fetch_rt: Some(fetch_rt),
                storage,
                files,
            },
            list,
        ))
    }
}

impl StoreSource {
    /// The file `name`.
    fn file(&self, name: &str) -> Result<&SourceFile> {
        self.files.get(name).ok_or_else(|| {
            EngineError::InvalidArgument(format!("{name} is not a file of the restored slot"))
        })
    }

    /// A runtime of this source (`None` once it is shut down).
    fn runtime(rt: &Option<tokio::runtime::Runtime>) -> Result<&tokio::runtime::Runtime> {
        rt.as_ref().ok_or_else(|| {
            EngineError::InvalidArgument("the lazy restore's runtime is shut down".into())
        })
    }

    /// For `file://` storage, `f`'s object opened for reads (once; a failed open is retried
    /// by the next read); `None` for other storage.
    fn local_object<'a>(&self, f: &'a SourceFile) -> Result<Option<&'a std::fs::File>> {
        if let Some(file) = f.local.get() {
            return Ok(Some(file));
        }
        let Some(opened) = CheckpointStore::open_lazy_local(&self.storage, &f.file)? else {
            return Ok(None);
        };
        // Another reader may have set it meanwhile: either handle reads the same object.
        Ok(Some(f.local.get_or_init(|| opened)))
    }
}

impl FetchSource for StoreSource {
    fn fetch(&self, name: &str, to: &Path) -> Result<u64> {
        let f = self.file(name)?;
        let rt = Self::runtime(&self.fetch_rt)?;
        Ok(rt.block_on(CheckpointStore::fetch_lazy(&self.storage, &f.file, to))?)
    }

    fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = self.file(name)?;
        if let Some(object) = self.local_object(f)? {
            return Ok(CheckpointStore::pread_lazy_range(
                &f.file, object, offset, buf,
            )?);
        }
        let rt = Self::runtime(&self.rt)?;
        // The caller is a RocksDB read on the record path, possibly inside the host's own
        // runtime, where `Runtime::block_on` would panic: block this thread on the future
        // with this source's runtime entered (its worker drives the I/O and timers).
        let _entered = rt.enter();
        Ok(futures::executor::block_on(
            CheckpointStore::read_lazy_range(&self.storage, &f.file, offset, buf),
        )?)
    }
}

impl Drop for StoreSource {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's async context panics; this does not.
        for rt in [self.rt.take(), self.fetch_rt.take()].into_iter().flatten() {
            rt.shutdown_background();
        }
    }
}
