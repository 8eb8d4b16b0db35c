//! Lazy restore: a RocksDB slot that opens from its checkpoint's private files alone, reads
//! the SSTs not yet local as ranges of their stored objects, and fetches each whole SST first
//! when RocksDB opens it, and in the background (largest first) until the slot is fully local
//! (`checkpoint.restore-fetch = "lazy"`).
//!
//! ## How RocksDB is hooked
//! rust-rocksdb has no custom `FileSystem`, so a small C++ shim (`engine/native/lazy_fs.cc`,
//! compiled by `engine/build.rs` against the headers of the RocksDB that `rust-librocksdb-sys`
//! builds) wraps RocksDB's default `FileSystem` in a `FileSystemWrapper` and an Env
//! (`NewCompositeEnv`, so thread pools stay the default Env's), handed to rust-rocksdb with
//! `Env::from_raw`. The wrapper calls back into [`LazyFiles`] (`extern "C"` functions):
//! - `NewRandomAccessFile` of a pending SST (how table readers open files: a read of the
//!   record path, and compactions, which read through the same table cache) does not wait: it
//!   moves the file to the front of the fetch queue and returns a reader whose every `Read`
//!   comes back to Rust ([`FetchSource::read_range`]): a positional read of the local copy once
//!   the file is fetched, verified and renamed into place (the open `File` is then kept, so a
//!   read costs one callback and one `pread`), else a range of the stored object (a ranged GET;
//!   a pread of the object for `file://`). Table readers stay open for the life of the database
//!   (bounded `max_open_files`), which is why the switch to the local copy is made per read.
//!   A compaction reading a file not yet local therefore reads ranges too (RocksDB's
//!   `compaction_readahead_size`, 2 MiB by default, sizes them) rather than waiting for it;
//! - before RocksDB opens sequentially, for writing, links or counts the links of a file
//!   (`NewSequentialFile`, `NewRandomRWFile`, `LinkFile`, `NumFileLinks`,
//!   `GetFileModificationTime`): a pending SST is fetched and verified, and only then does the
//!   call reach the local file system; the caller waits for that file only (one fetch thread
//!   serves such demands alone, the others serve them first). These are background and
//!   checkpoint paths (a checkpoint links every file, so it waits until the slot is local:
//!   uploading reads whole files anyway, and a link to a file not there cannot be made);
//! - `FileExists` and `GetFileSize` of a pending SST answer from the checkpoint's metadata
//!   without fetching;
//! - `DeleteFile` of a pending SST (a compaction made it obsolete before it was fetched) drops
//!   it from the fetch list.
//!
//! ## Why DB::Open does not read every SST
//! The slot's options for a lazy open (`tune_options`): `skip_stats_update_on_db_open`
//! (otherwise Open reads the table properties of up to 20 files), `open_files_async` (otherwise
//! Open loads up to 16 table readers before returning; async, RocksDB loads them on a
//! background thread after Open, reading their tails (footer, indexes) as ranges), one table
//! at a time (`max_file_opening_threads` 1: with RocksDB's 16, up to 16 such ranges were in
//! flight ahead of the first record's, which took 3.6-4.1 s instead of about 1 s from a
//! 1.7 GB state on moto), and a bounded `max_open_files` (with -1 RocksDB opens every table at
//! start). The sizes RocksDB checks come from the metadata through `GetFileSize`.
//!
//! ## Integrity and failures
//! Every fetched file lands in `<slot dir>/lazy-fetch/`, is checked against its recorded size
//! and sha256 there ([`FetchSource`]), and is renamed into the database directory only then.
//!
//! A range read cannot be checked against the file's sha256. What checks it instead:
//! - its length: a read within the recorded size must return every byte asked (a read past the
//!   end returns what is left, as a local file does); any other count is a `Corrupt` error on
//!   that read, never a short answer RocksDB would take for the end of the file;
//! - RocksDB's block checksums: every block it reads (data, index, filter, metaindex,
//!   properties) carries a checksum that `ReadOptions::verify_checksums` (RocksDB's default,
//!   which Cairn keeps for every read; compactions always verify) checks on read. The slot's
//!   tables use RocksDB's default `format_version` (7 in the RocksDB built here), in which the
//!   footer is checksummed too (since version 6) and block checksums are mixed with the
//!   block's offset, so a block from another file or another offset fails like random
//!   corruption. A damaged range is RocksDB's `Corruption` status on that read (`block checksum
//!   mismatch ... in <db>/<file>.sst`, an [`EngineError::RocksDb`] of kind `Corrupt`), not
//!   wrong data, up to the strength of a 32-bit checksum: RocksDB's own guarantee for a local
//!   file, weaker than the sha256 the whole file gets.
//!
//! So bytes RocksDB takes from a range read are checked per block, and the whole file is
//! still sha256-checked before it replaces the ranges. A failed fetch (after the storage
//! layer's retries) is sticky: every access that needs the file fails with a RocksDB status naming it, which
//! the backend reports as [`EngineError::LazyFetch`] (kind `Unavailable`, or `Corrupt` for a
//! checksum or size mismatch): the slot must be restored again, never answering with data
//! it does not have. The status is a `Corruption` whatever the cause: RocksDB's error handler
//! then makes a failed background open or compaction an unrecoverable error that stops the
//! database. With an `IOError`, a failed `open_files_async` open was a soft error whose
//! automatic recovery waits for a flush that never comes, and closing the database hung
//! (found by the damaged-file test, about one run in four). A failed range read (after the
//! storage layer's retries) fails that read the same way ([`EngineError::LazyFetch`], through
//! the same status), without marking the file failed: its whole fetch may still succeed. On
//! the record path that is an error of that access; in a background job (the table loading
//! after Open, a compaction) it stops the database, as a failed fetch does.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use cairn_base::ErrorKind;

use crate::error::{EngineError, Result};

/// Where a lazily restored slot's SSTs come from: the checkpoint layer's implementation
/// downloads from the checkpoint storage (`checkpoint::lazy_source`).
pub trait FetchSource: Send + Sync {
    /// Downloads SST `name` into `to` (absent), verified against its recorded size and sha256;
    /// returns its size. Called from the fetch threads only, never from an async context.
    fn fetch(&self, name: &str, to: &Path) -> Result<u64>;

    /// Reads bytes `offset..` of SST `name` into `buf` from where it is stored (not verified
    /// against its sha256: see the module doc). Returns the count: `buf.len()` within the
    /// recorded size, what is left at its end (0 past it); the caller checks it. Called from
    /// RocksDB's reading threads (the record path), which may be inside an async context.
    fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize>;
}

/// An SST a lazily restored slot opens without.
#[derive(Clone, Debug)]
pub struct LazyFile {
    /// Its name in the database directory (checked: one plain component).
    pub name: String,
    /// Its recorded size, bytes (what RocksDB's size checks are answered).
    pub size: u64,
}

/// What a RocksDB slot restored lazily is handed with its private files.
#[derive(Clone)]
pub struct LazyRestore {
    /// The SSTs not yet local.
    pub files: Vec<LazyFile>,
    /// Where they come from.
    pub source: Arc<dyn FetchSource>,
    /// Fetch threads (at least 2: one only for files RocksDB waits for).
    pub threads: usize,
}

impl std::fmt::Debug for LazyRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRestore")
            .field("files", &self.files.len())
            .field("threads", &self.threads)
            .finish()
    }
}

/// Progress of a lazily restored slot, for reports and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct LazyProgress {
    /// SSTs still to fetch (pending or being fetched).
    pub pending_files: usize,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Bytes fetched so far.
    pub fetched_bytes: u64,
    /// Files moved to the front of the fetch queue because RocksDB opened (range reads) or
    /// needed (waits) them.
    pub demand_fetches: u64,
    /// Of those, the fetches the thread opening the database waited for before the open
    /// returned (0 is the point of the mode; RocksDB's own background opening of table
    /// readers after the open is not counted).
    pub open_fetches: u64,
    /// The first failed fetch, if any (the slot must be restored again).
    pub failure: Option<String>,
    /// Milliseconds from the open until nothing was pending, once that happened.
    pub local_after_ms: Option<f64>,
    /// Reads of files not yet local served from storage (ranges).
    pub range_reads: u64,
    /// Their bytes.
    pub range_read_bytes: u64,
    /// Their summed latency, milliseconds (reads on several threads overlap).
    pub range_read_ms: f64,
    /// Range reads that failed (each failed the RocksDB read that asked).
    pub range_read_errors: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Pending,
    Fetching,
    Local,
    /// RocksDB deleted it (compacted away) before or while it was fetched.
    Forgotten,
    Failed(String),
}

struct Entry {
    size: u64,
    status: Status,
}

struct State {
    files: HashMap<String, Entry>,
    /// Files RocksDB waits for, in the order asked.
    demands: VecDeque<String>,
    closed: bool,
    fetched_bytes: u64,
    demand_fetches: u64,
    /// The thread opening the database, until it is open.
    opener: Option<std::thread::ThreadId>,
    open_fetches: u64,
    failure: Option<String>,
    local_after_ms: Option<f64>,
    range_reads: u64,
    range_read_bytes: u64,
    range_read_nanos: u64,
    range_read_errors: u64,
}

/// Shared by the fetch threads, the C++ file system (through the callback) and the backend.
struct Inner {
    /// The database directory as RocksDB names its files (`<dir>/<name>`).
    db_dir: String,
    db_path: PathBuf,
    /// Where fetches land before their verified rename into `db_path`.
    tmp: PathBuf,
    source: Arc<dyn FetchSource>,
    state: Mutex<State>,
    changed: Condvar,
    opened: Instant,
}

/// The lazily restored files of one slot: the fetch threads and the state the shim asks.
/// Dropping it stops the fetches (after the file each thread is on; nothing lands in the
/// database directory afterwards).
pub struct LazyFiles {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

const OP_NEED: c_int = 0;
const OP_QUERY: c_int = 1;
const OP_FORGET: c_int = 2;

/// The prefix of the RocksDB status message a failed fetch produces (the shim's), which
/// [`EngineError::rocks`] recognises; the message goes on with `<kind>|<error>`.
pub(crate) const FETCH_FAILED: &str = "cairn lazy restore: fetching ";

unsafe extern "C" {
    fn cairn_lazy_env_create(
        cb: unsafe extern "C" fn(
            *mut c_void,
            *const c_char,
            usize,
            c_int,
            *mut u64,
            *mut c_char,
            usize,
        ) -> c_int,
        release: unsafe extern "C" fn(*mut c_void),
        open: unsafe extern "C" fn(
            *mut c_void,
            *const c_char,
            usize,
            *mut u64,
            *mut *mut c_void,
            *mut c_char,
            usize,
        ) -> c_int,
        read: unsafe extern "C" fn(
            *mut c_void,
            u64,
            *mut c_char,
            usize,
            *mut usize,
            *mut c_char,
            usize,
        ) -> c_int,
        file_release: unsafe extern "C" fn(*mut c_void),
        ctx: *mut c_void,
    ) -> *mut rust_librocksdb_sys::rocksdb_env_t;
}

/// Copies `msg` (truncated) into the shim's `err` buffer of `cap` bytes, NUL-terminated.
///
/// # Safety
/// `err` is null or points at `cap` writable bytes.
unsafe fn write_err(msg: &str, err: *mut c_char, cap: usize) {
    if !err.is_null() && cap > 0 {
        let n = msg.len().min(cap - 1);
        // SAFETY: `err` has `cap` bytes; `n + 1 <= cap`.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), err as *mut u8, n);
            *err.add(n) = 0;
        }
    }
}

/// A pending SST RocksDB opened for random reads (the shim's `LazyRandomAccessFile` holds it
/// until RocksDB closes the table).
struct Reader {
    inner: Arc<Inner>,
    name: String,
    size: u64,
    /// The local copy, once it is there (opened by the first read after that).
    local: std::sync::OnceLock<std::fs::File>,
}

/// The shim's `NewRandomAccessFile` of a file of ours: see `cairn_lazy_open` in `lazy_fs.cc`.
///
/// # Safety
/// `ctx` is the `Arc<Inner>` given to `cairn_lazy_env_create` (alive until `release`), `path`
/// points at `len` bytes, `size` and `file` are valid out pointers, `err` has `cap` bytes.
unsafe extern "C" fn open_callback(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    size: *mut u64,
    file: *mut *mut c_void,
    err: *mut c_char,
    cap: usize,
) -> c_int {
    // SAFETY: see the function's contract.
    let inner = unsafe { &*(ctx as *const Inner) };
    // SAFETY: RocksDB's std::string data and size.
    let path = unsafe { std::slice::from_raw_parts(path as *const u8, len) };
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.open(path)))
        .unwrap_or_else(|_| Err("Internal|panic in the lazy-restore open".into()));
    match opened {
        Ok(None) => 0,
        Ok(Some((name, recorded))) => {
            // The reader holds its own reference to `Inner`: tables may outlive the file
            // system object in RocksDB's teardown order.
            // SAFETY: `ctx` is a live `Arc<Inner>` pointer (see above).
            let inner = unsafe {
                Arc::increment_strong_count(ctx as *const Inner);
                Arc::from_raw(ctx as *const Inner)
            };
            let reader = Box::new(Reader {
                inner,
                name,
                size: recorded,
                local: std::sync::OnceLock::new(),
            });
            // SAFETY: valid out pointers (the shim's locals).
            unsafe {
                *size = recorded;
                *file = Box::into_raw(reader) as *mut c_void;
            }
            1
        }
        Err(msg) => {
            // SAFETY: `err` has `cap` bytes.
            unsafe { write_err(&msg, err, cap) };
            -1
        }
    }
}

/// A read of a pending file RocksDB opened: see `cairn_lazy_read` in `lazy_fs.cc`.
///
/// # Safety
/// `file` is a pointer `open_callback` returned, not yet released; `buf` has `n` writable
/// bytes; `read` is a valid out pointer; `err` has `cap` bytes.
unsafe extern "C" fn read_callback(
    file: *mut c_void,
    offset: u64,
    buf: *mut c_char,
    n: usize,
    read: *mut usize,
    err: *mut c_char,
    cap: usize,
) -> c_int {
    // SAFETY: see the function's contract.
    let reader = unsafe { &*(file as *const Reader) };
    let buf: &mut [u8] = if n == 0 || buf.is_null() {
        &mut []
    } else {
        // SAFETY: RocksDB's scratch buffer of `n` bytes, ours until Read returns.
        unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, n) }
    };
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.read(offset, buf)))
        .unwrap_or_else(|_| Err("Internal|panic in the lazy-restore read".into()));
    match got {
        Ok(count) => {
            // SAFETY: valid out pointer.
            unsafe { *read = count };
            0
        }
        Err(msg) => {
            // SAFETY: `err` has `cap` bytes.
            unsafe { write_err(&msg, err, cap) };
            -1
        }
    }
}

/// Drops a reader when RocksDB closes the table.
///
/// # Safety
/// `file` is a pointer `open_callback` returned, released once.
unsafe extern "C" fn file_release(file: *mut c_void) {
    // SAFETY: see the function's contract.
    drop(unsafe { Box::from_raw(file as *mut Reader) });
}

impl Reader {
    /// Reads at `offset` into `buf` from the local copy, or from storage while there is none.
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, String> {
        if let Some(f) = self.local.get() {
            return self.read_local(f, offset, buf);
        }
        let status = {
            let st = self.inner.lock();
            if st.closed {
                return Err(format!("Unavailable|{}: the slot is closing", self.name));
            }
            st.files.get(&self.name).map(|e| e.status.clone())
        };
        match status {
            Some(Status::Failed(msg)) => return Err(msg),
            Some(Status::Local) => {
                let path = self.inner.db_path.join(&self.name);
                match std::fs::File::open(&path) {
                    Ok(f) => {
                        let f = self.local.get_or_init(|| f);
                        return self.read_local(f, offset, buf);
                    }
                    // Deleted since (RocksDB dropped it): the stored object still has it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("Unavailable|{}: open: {e}", self.name)),
                }
            }
            _ => {}
        }
        self.read_stored(offset, buf)
    }

    /// The count a read at `offset` of `len` bytes must return: all of it within the
    /// recorded size, what is left at its end.
    fn expected(&self, offset: u64, len: usize) -> usize {
        // `min` with `len` first: the result fits a usize.
        self.size.saturating_sub(offset).min(len as u64) as usize
    }

    fn read_local(
        &self,
        f: &std::fs::File,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<usize, String> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("Unavailable|{}: read: {e}", self.name)),
            }
        }
        Ok(done)
    }

    fn read_stored(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, String> {
        let want = self.expected(offset, buf.len());
        if want == 0 {
            return Ok(0);
        }
        let t = Instant::now();
        let got = self
            .inner
            .source
            .read_range(&self.name, offset, &mut buf[..want]);
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let result = match got {
            Ok(k) if k == want => Ok(k),
            Ok(k) => Err(format!(
                "Corrupt|{}: a range read at {offset} returned {k} bytes, not {want} (recorded size {})",
                self.name, self.size
            )),
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::Corrupt => "Corrupt",
                    _ => "Unavailable",
                };
                Err(format!(
                    "{kind}|{}: range read of {want} bytes at {offset}: {e}",
                    self.name
                ))
            }
        };
        let mut st = self.inner.lock();
        match &result {
            Ok(k) => {
                st.range_reads += 1;
                st.range_read_bytes += *k as u64;
                st.range_read_nanos = st.range_read_nanos.saturating_add(nanos);
            }
            Err(msg) => {
                st.range_read_errors += 1;
                drop(st);
                tracing::error!(file = %self.name, error = %msg, "lazy restore: range read failed");
            }
        }
        result
    }
}

/// The callback of the C++ file system (see `lazy_fs.cc` for the protocol).
///
/// # Safety
/// `ctx` is the `Arc<Inner>` given to `cairn_lazy_env_create` (alive until `release`), `path`
/// points at `len` bytes, `err` at `cap` writable bytes.
unsafe extern "C" fn callback(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    op: c_int,
    size: *mut u64,
    err: *mut c_char,
    cap: usize,
) -> c_int {
    // SAFETY: see the function's contract; the shim keeps `ctx` alive until `release`.
    let inner = unsafe { &*(ctx as *const Inner) };
    // SAFETY: RocksDB's std::string data and size.
    let path = unsafe { std::slice::from_raw_parts(path as *const u8, len) };
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.answer(path, op)))
        .unwrap_or_else(|_| Answer::Failed("Internal|panic in the lazy-restore callback".into()));
    match answer {
        Answer::Local => 0,
        Answer::Pending(s) => {
            if !size.is_null() {
                // SAFETY: the shim passes a valid out pointer.
                unsafe { *size = s };
            }
            1
        }
        Answer::Failed(msg) => {
            // SAFETY: `err` has `cap` bytes.
            unsafe { write_err(&msg, err, cap) };
            -1
        }
    }
}

/// Drops the shim's reference to `Inner` when RocksDB destroys the file system.
///
/// # Safety
/// `ctx` is the pointer `Arc::into_raw` gave `cairn_lazy_env_create`, released once.
unsafe extern "C" fn release(ctx: *mut c_void) {
    // SAFETY: see the function's contract.
    drop(unsafe { Arc::from_raw(ctx as *const Inner) });
}

enum Answer {
    Local,
    Pending(u64),
    Failed(String),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file name of `path` when it is one of ours (in the database directory).
    fn name_of<'a>(&self, path: &'a [u8]) -> Option<&'a str> {
        let path = std::str::from_utf8(path).ok()?;
        let rest = path.strip_prefix(self.db_dir.as_str())?;
        let name = rest.strip_prefix('/')?;
        (!name.contains('/')).then_some(name)
    }

    fn answer(&self, path: &[u8], op: c_int) -> Answer {
        let Some(name) = self.name_of(path) else {
            return Answer::Local;
        };
        let mut st = self.lock();
        let Some(e) = st.files.get_mut(name) else {
            return Answer::Local;
        };
        match op {
            OP_QUERY => match e.status {
                Status::Pending | Status::Fetching | Status::Failed(_) => Answer::Pending(e.size),
                Status::Local | Status::Forgotten => Answer::Local,
            },
            OP_FORGET => {
                let was = std::mem::replace(&mut e.status, Status::Forgotten);
                self.changed.notify_all();
                match was {
                    Status::Local | Status::Forgotten => Answer::Local,
                    _ => Answer::Pending(e.size),
                }
            }
            OP_NEED => self.need(st, name),
            _ => Answer::Local,
        }
    }

    /// `NewRandomAccessFile` of `path`: `None` when the local file system opens it, else its
    /// name and recorded size (it is pending; moved to the front of the fetch queue, not
    /// waited for).
    fn open(&self, path: &[u8]) -> std::result::Result<Option<(String, u64)>, String> {
        let Some(name) = self.name_of(path) else {
            return Ok(None);
        };
        let mut st = self.lock();
        let closed = st.closed;
        let Some(e) = st.files.get(name) else {
            return Ok(None);
        };
        let (status, size) = (e.status.clone(), e.size);
        match status {
            Status::Local | Status::Forgotten => Ok(None),
            Status::Failed(msg) => Err(msg),
            _ if closed => Err(format!("Unavailable|{name}: the slot is closing")),
            Status::Fetching => Ok(Some((name.to_owned(), size))),
            Status::Pending => {
                st.demands.push_back(name.to_owned());
                st.demand_fetches += 1;
                self.changed.notify_all();
                Ok(Some((name.to_owned(), size)))
            }
        }
    }

    /// Waits until `name` is local (asking the demand thread for it first) or failed.
    fn need(&self, mut st: MutexGuard<'_, State>, name: &str) -> Answer {
        let mut asked = false;
        loop {
            let Some(e) = st.files.get(name) else {
                return Answer::Local;
            };
            match &e.status {
                Status::Local | Status::Forgotten => return Answer::Local,
                Status::Failed(msg) => return Answer::Failed(msg.clone()),
                Status::Pending | Status::Fetching => {}
            }
            if st.closed {
                return Answer::Failed(format!("Unavailable|{name}: the slot is closing"));
            }
            if !asked && e.status == Status::Pending {
                st.demands.push_back(name.to_owned());
                st.demand_fetches += 1;
                if st.opener == Some(std::thread::current().id()) {
                    st.open_fetches += 1;
                }
                asked = true;
                self.changed.notify_all();
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next file for a fetch thread: a demanded one, else (unless `demand_only`) the
    /// largest pending one; marked as being fetched. `None` when the thread should stop.
    fn next(&self, demand_only: bool) -> Option<(String, u64)> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            while let Some(name) = st.demands.pop_front() {
                if let Some(e) = st.files.get_mut(&name)
                    && e.status == Status::Pending
                {
                    e.status = Status::Fetching;
                    return Some((name, e.size));
                }
            }
            let any_pending = st
                .files
                .values()
                .any(|e| matches!(e.status, Status::Pending | Status::Fetching));
            if !any_pending {
                if st.local_after_ms.is_none() {
                    st.local_after_ms = Some(self.opened.elapsed().as_secs_f64() * 1000.0);
                    self.changed.notify_all();
                }
                return None;
            }
            if !demand_only {
                let largest = st
                    .files
                    .iter()
                    .filter(|(_, e)| e.status == Status::Pending)
                    .max_by_key(|(n, e)| (e.size, std::cmp::Reverse(n.as_str())))
                    .map(|(n, e)| (n.clone(), e.size));
                if let Some((name, size)) = largest {
                    if let Some(e) = st.files.get_mut(&name) {
                        e.status = Status::Fetching;
                    }
                    return Some((name, size));
                }
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Fetches `name` into the temporary directory, then (still wanted, not closed) renames
    /// it into the database directory and marks it local; a failure is recorded for good.
    fn fetch(&self, name: &str) {
        let tmp = self.tmp.join(name);
        let result = self.source.fetch(name, &tmp);
        let mut st = self.lock();
        let wanted = !st.closed
            && st
                .files
                .get(name)
                .is_some_and(|e| e.status == Status::Fetching);
        let status = match result {
            Ok(_) if !wanted => {
                let _ = std::fs::remove_file(&tmp);
                None
            }
            Ok(size) => match std::fs::rename(&tmp, self.db_path.join(name)) {
                Ok(()) => {
                    st.fetched_bytes += size;
                    Some(Status::Local)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Some(Status::Failed(format!(
                        "Unavailable|{name}: move into {}: {e}",
                        self.db_path.display()
                    )))
                }
            },
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !wanted {
                    None
                } else {
                    let kind = match e.kind() {
                        ErrorKind::Corrupt => "Corrupt",
                        _ => "Unavailable",
                    };
                    Some(Status::Failed(format!("{kind}|{name}: {e}")))
                }
            }
        };
        if let Some(status) = status {
            if let Status::Failed(msg) = &status {
                tracing::error!(file = name, error = %msg, "lazy restore: fetch failed");
                st.failure.get_or_insert_with(|| msg.clone());
            }
            if let Some(e) = st.files.get_mut(name) {
                e.status = status;
            }
        }
        self.changed.notify_all();
    }
}

/// How much lower than the slot's the CPU priority of the threads that fetch whole files is
/// (a nice increment): at +10 the scheduler gives a runnable slot thread about 9 times their
/// share (CFS weights 1024 against 110), so the background fetch uses the CPU the slot leaves
/// and yields the rest, and the slot converges to fully local even when it is busy.
/// Measured in `benches/RESULTS.md` (lazy restore throughput while fetching).
const FETCH_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority by [`FETCH_NICE`] (on Linux the nice value is per
/// thread, so `nice` applies to the caller only; threads it starts inherit it). For the
/// threads that fetch and hash whole files of a lazy restore, so that a record's reads never
/// queue behind them. A failure is logged and harmless (the thread keeps its priority).
pub(crate) fn lower_this_threads_priority() {
    // SAFETY: a plain syscall on the calling thread; errno is read right after (`nice` may
    // return -1 on success).
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(FETCH_NICE) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "lazy restore: fetch thread priority not lowered"
        );
    }
}

impl LazyFiles {
    /// Registers `restore.files` as pending in `db_path` (whose private files are in place),
    /// with fetches landing in `tmp` first. The fetch threads start with [`LazyFiles::start`].
    pub(crate) fn new(db_path: &Path, tmp: &Path, restore: &LazyRestore) -> Result<Self> {
        let io = |op: &str, p: &Path| {
            let op = format!("{op} {}", p.display());
            move |source| EngineError::Io { op, source }
        };
        if tmp.exists() {
            std::fs::remove_dir_all(tmp).map_err(io("remove", tmp))?;
        }
        std::fs::create_dir_all(tmp).map_err(io("create", tmp))?;
        let db_dir = db_path
            .to_str()
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "lazy restore needs a UTF-8 working directory, not {}",
                    db_path.display()
                ))
            })?
            .to_owned();
        let files = restore
            .files
            .iter()
            .map(|f| {
                let e = Entry {
                    size: f.size,
                    status: Status::Pending,
                };
                (f.name.clone(), e)
            })
            .collect();
        let inner = Arc::new(Inner {
            db_dir,
            db_path: db_path.to_path_buf(),
            tmp: tmp.to_path_buf(),
            source: restore.source.clone(),
            state: Mutex::new(State {
                files,
                demands: VecDeque::new(),
                closed: false,
                fetched_bytes: 0,
                demand_fetches: 0,
                opener: None,
                open_fetches: 0,
                failure: None,
                local_after_ms: None,
                range_reads: 0,
                range_read_bytes: 0,
                range_read_nanos: 0,
                range_read_errors: 0,
            }),
            changed: Condvar::new(),
            opened: Instant::now(),
        });
        Ok(Self {
            inner,
            threads: Vec::new(),
        })
    }

    /// The Env RocksDB opens the slot with: the default Env with the lazy file system.
    pub(crate) fn env(&self) -> Result<rocksdb::Env> {
        let ctx = Arc::into_raw(self.inner.clone()) as *mut c_void;
        // SAFETY: the callbacks match the shim's typedefs; `ctx` is released by the shim's
        // file system destructor (or at once when creation fails).
        let raw = unsafe {
            cairn_lazy_env_create(
                callback,
                release,
                open_callback,
                read_callback,
                file_release,
                ctx,
            )
        };
        if raw.is_null() {
            return Err(EngineError::InvalidArgument(
                "lazy restore: the RocksDB Env could not be created".into(),
            ));
        }
        // SAFETY: `raw` is a fresh `rocksdb_env_t` ({Env* rep; bool is_default}) owned by the
        // returned Env, which destroys it with `rocksdb_env_destroy`.
        Ok(unsafe { rocksdb::Env::from_raw(raw) })
    }

    /// Starts the thread that fetches only what RocksDB waits for (before the database opens,
    /// so an open that needs a file gets it).
    pub(crate) fn start_demand(&mut self) {
        self.inner.lock().opener = Some(std::thread::current().id());
        self.spawn(0..1);
    }

    /// Starts `threads - 1` more fetch threads (at least 1), once the database is open: they
    /// fetch what RocksDB waits for first and then the largest pending file.
    pub(crate) fn start_background(&mut self, threads: usize) {
        self.inner.lock().opener = None;
        self.spawn(1..threads.max(2));
    }

    fn spawn(&mut self, ids: std::ops::Range<usize>) {
        for i in ids {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cairn-lazy-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    while let Some((name, _)) = inner.next(i == 0) {
                        inner.fetch(&name);
                    }
                });
            match spawned {
                Ok(h) => self.threads.push(h),
                Err(e) => tracing::warn!(error = %e, "lazy restore: fetch thread not started"),
            }
        }
    }

    /// Where the slot is.
    pub fn progress(&self) -> LazyProgress {
        let st = self.inner.lock();
        let pending: Vec<u64> = st
            .files
            .values()
            .filter(|e| matches!(e.status, Status::Pending | Status::Fetching))
            .map(|e| e.size)
            .collect();
        LazyProgress {
            pending_files: pending.len(),
            pending_bytes: pending.iter().sum(),
            fetched_bytes: st.fetched_bytes,
            demand_fetches: st.demand_fetches,
            open_fetches: st.open_fetches,
            failure: st.failure.clone(),
            local_after_ms: st.local_after_ms,
            range_reads: st.range_reads,
            range_read_bytes: st.range_read_bytes,
            range_read_ms: st.range_read_nanos as f64 / 1e6,
            range_read_errors: st.range_read_errors,
        }
    }

    /// Blocks until every file is local (or forgotten) or a fetch failed; the failure then.
    pub fn wait_local(&self) -> Result<()> {
        let mut st = self.inner.lock();
        loop {
            if let Some(f) = &st.failure {
                return Err(EngineError::from_fetch_failure("wait for lazy restore", f));
            }
            let pending = st
                .files
                .values()
                .any(|e| matches!(e.status, Status::Pending | Status::Fetching));
            if !pending || st.closed {
                return Ok(());
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for LazyFiles {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.closed = true;
            self.inner.changed.notify_all();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.inner.tmp);
    }
}

/// The options a lazily restored slot opens with, on top of the slot's own: see the module
/// doc for why each is needed.
pub(crate) fn tune_options(
    db: &mut rocksdb::Options,
    env: &rocksdb::Env,
    max_open_files: Option<i32>,
) {
    db.set_env(env);
    db.set_skip_stats_update_on_db_open(true);
    // The table loading after Open reads each table's tail (footer, indexes) as a range from
    // storage: with RocksDB's 16 opening threads, 16 ranges go ahead of the first record's.
    db.set_max_file_opening_threads(1);
    if let Err(e) = db.set_open_files_async(true) {
        tracing::warn!(error = %e, "lazy restore: open_files_async unavailable; Open loads some tables");
    }
    // -1 (RocksDB's default) opens every table at start, i.e. fetches the whole state on the
    // flush thread pool.
    db.set_max_open_files(
        max_open_files
            .filter(|n| *n > 0)
            .unwrap_or(LAZY_MAX_OPEN_FILES),
    );
}

/// `max_open_files` of a lazy slot whose configuration leaves it unbounded: enough table
/// readers for 256 GiB of 64 MiB files, so none is closed again in practice.
const LAZY_MAX_OPEN_FILES: i32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves files of `size` zero bytes, failing those named in `fail` (as a mismatch); notes
    /// the nice value of each fetching thread.
    struct Fake {
        size: u64,
        fail: Vec<String>,
        fetched: Mutex<Vec<String>>,
        nice: Mutex<Vec<i32>>,
    }

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: a plain syscall on the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    impl FetchSource for Fake {
        fn fetch(&self, name: &str, to: &Path) -> Result<u64> {
            self.fetched.lock().unwrap().push(name.to_owned());
            self.nice.lock().unwrap().push(nice());
            if self.fail.iter().any(|f| f == name) {
                return Err(EngineError::Corrupt {
                    state: name.to_owned(),
                    reason: "sha256 mismatch".into(),
                });
            }
            std::fs::write(to, vec![0u8; self.size as usize]).map_err(|e| EngineError::Io {
                op: "write".into(),
                source: e,
            })?;
            Ok(self.size)
        }

        fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
            if self.fail.iter().any(|f| f == name) {
                return Err(EngineError::Corrupt {
                    state: name.to_owned(),
                    reason: "range read failed".into(),
                });
            }
            let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            Ok(n)
        }
    }

    fn files(dir: &Path, fail: &[&str]) -> (LazyFiles, Arc<Fake>) {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let fake = Arc::new(Fake {
            size: 10,
            fail: fail.iter().map(|s| s.to_string()).collect(),
            fetched: Mutex::new(Vec::new()),
            nice: Mutex::new(Vec::new()),
        });
        let restore = LazyRestore {
            files: ["000010.sst", "000011.sst", "000012.sst"]
                .iter()
                .map(|n| LazyFile {
                    name: n.to_string(),
                    size: 10,
                })
                .collect(),
            source: fake.clone(),
            threads: 2,
        };
        (
            LazyFiles::new(&db, &dir.join("lazy-fetch"), &restore).unwrap(),
            fake,
        )
    }

    fn path(l: &LazyFiles, name: &str) -> Vec<u8> {
        format!("{}/{name}", l.inner.db_dir).into_bytes()
    }

    #[test]
    fn pending_files_are_sized_from_the_metadata_and_fetched_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, fake) = files(dir.path(), &[]);
        assert!(matches!(
            l.inner.answer(&path(&l, "000010.sst"), OP_QUERY),
            Answer::Pending(10)
        ));
        // Not ours: the local file system answers.
        assert!(matches!(
            l.inner.answer(b"/elsewhere/000010.sst", OP_NEED),
            Answer::Local
        ));
        l.start_demand();
        assert!(matches!(
            l.inner.answer(&path(&l, "000011.sst"), OP_NEED),
            Answer::Local
        ));
        assert!(dir.path().join("db/000011.sst").exists());
        assert_eq!(*fake.fetched.lock().unwrap(), vec!["000011.sst"]);
        // The thread opening the database was this one: it waited for one fetch.
        assert_eq!(l.progress().open_fetches, 1);
        l.start_background(2);
        l.wait_local().unwrap();
        let p = l.progress();
        assert_eq!((p.pending_files, p.fetched_bytes), (0, 30));
        assert!(p.local_after_ms.is_some() || p.pending_files == 0);
        // Every fetch ran below the slot's priority (nice is capped at 19).
        let lowered = (nice() + FETCH_NICE).min(19);
        assert_eq!(*fake.nice.lock().unwrap(), vec![lowered; 3]);
    }

    #[test]
    fn a_forgotten_file_is_never_fetched_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, fake) = files(dir.path(), &[]);
        assert!(matches!(
            l.inner.answer(&path(&l, "000012.sst"), OP_FORGET),
            Answer::Pending(_)
        ));
        l.start_demand();
        l.start_background(3);
        l.wait_local().unwrap();
        assert!(!dir.path().join("db/000012.sst").exists());
        assert!(
            !fake
                .fetched
                .lock()
                .unwrap()
                .contains(&"000012.sst".to_string())
        );
        // A local file's delete goes to the local file system.
        assert!(matches!(
            l.inner.answer(&path(&l, "000010.sst"), OP_FORGET),
            Answer::Local
        ));
    }

    #[test]
    fn a_failed_fetch_fails_every_access_with_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = files(dir.path(), &["000010.sst"]);
        l.start_demand();
        for _ in 0..2 {
            match l.inner.answer(&path(&l, "000010.sst"), OP_NEED) {
                Answer::Failed(msg) => assert!(msg.starts_with("Corrupt|000010.sst"), "{msg}"),
                _ => panic!("a failed fetch answered as local"),
            }
        }
        assert!(!dir.path().join("db/000010.sst").exists());
        let e = l.wait_local().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("000010.sst"), "{e}");
    }
}
