//! Wakes a writer that RocksDB's write-buffer manager would otherwise stall forever.
//!
//! With `allow_stall` on (Cairn's managed-memory default, so that memtables stay inside the
//! budget under write bursts), a write that finds the memtables at the manager's capacity waits
//! inside RocksDB (`DBImpl::WriteBufferManagerStallWrites`) until a flush frees memory. If
//! flushes fail, nothing frees memory and nothing wakes the writer. A full disk is the common
//! case: RocksDB records a background error and keeps retrying the flush. The slot's thread then
//! hangs with no error, and its checkpoints expire one after another. `cairn tune` found this on
//! a full disk, and `tests/full_disk.rs` reproduces it with a file-size limit.
//!
//! The guard is one thread per RocksDB slot. Every [`POLL_INTERVAL`] it reads the DB's
//! `rocksdb.background-errors`. On the first error it turns the manager's stalls off, which
//! wakes every stalled writer. Their write then fails with the DB's background error, which the
//! slot reports as a typed error so the host can restart from the last checkpoint. If RocksDB
//! recovered in the meantime, the write goes through. Stalls stay off for the rest of the slot's
//! life, since a DB that failed once is about to be replaced.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::{DBWithThreadMode, MultiThreaded, WriteBufferManager};

/// How often the guard reads the DB's background error count: a stalled writer waits at most
/// about this long after the error.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// RocksDB's count of background errors (failed flushes and compactions) since the DB opened.
const BACKGROUND_ERRORS: &str = "rocksdb.background-errors";

/// The guard's thread; stopped and joined on drop.
pub(crate) struct StallGuard {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StallGuard {
    /// Starts watching `db`, whose writes `wbm` may stall. Holds the DB only weakly, so the
    /// guard never keeps it open.
    pub(crate) fn start(
        db: &Arc<DBWithThreadMode<MultiThreaded>>,
        wbm: WriteBufferManager,
        db_path: &Path,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let db: Weak<DBWithThreadMode<MultiThreaded>> = Arc::downgrade(db);
        let path = db_path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("cairn-stall-guard".into())
            .spawn(move || {
                loop {
                    // A message or a dropped sender both mean stop.
                    if stopped.recv_timeout(POLL_INTERVAL) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                    let Some(db) = db.upgrade() else { return };
                    let errors = db
                        .property_int_value(BACKGROUND_ERRORS)
                        .ok()
                        .flatten()
                        .unwrap_or(0);
                    if errors > 0 {
                        wbm.set_allow_stall(false);
                        tracing::error!(
                            db = %path,
                            errors,
                            "RocksDB reports a background error (a failed flush or compaction, \
                             e.g. a full disk): write stalls are off, so writes fail with the \
                             error instead of waiting for a flush that cannot come"
                        );
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
