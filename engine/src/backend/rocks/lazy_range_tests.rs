//! Range reads of a lazily restored slot's SSTs before they are local ([`lazy`]), on a real
//! RocksDB: a slot is written and flushed in one directory, then restored lazily in another
//! from its private files alone, its SSTs served by a [`FetchSource`] whose whole-file fetch
//! waits behind a gate the test opens.

use std::sync::Condvar;
use std::time::Duration;

use super::lazy::{FetchSource, LazyFile, LazyRestore};
use super::*;
use crate::ErrorKind;
use crate::backend::{ScopeKey, StateBackend, StateDescriptor, StateKind};

/// How long a gated fetch waits before it fails: long enough for any test, short enough that
/// code which waits for whole files fails instead of hanging.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`Gated`] answers range reads.
#[derive(Clone, Copy, PartialEq)]
enum Ranges {
    /// The bytes asked for.
    Serve,
    /// An error.
    Fail,
    /// One byte fewer than asked (storage answering short: a truncated or misbehaving object).
    Short,
}

/// Serves the SSTs of `from`: whole files once `open` is set, ranges at any time as `ranges`
/// says.
struct Gated {
    from: PathBuf,
    open: Mutex<bool>,
    opened: Condvar,
    ranges: Ranges,
}

impl Gated {
    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl FetchSource for Gated {
    fn fetch(&self, name: &str, to: &Path) -> Result<u64> {
        let (open, _) = self
            .opened
            .wait_timeout_while(self.open.lock().unwrap(), GATE_TIMEOUT, |open| !*open)
            .unwrap();
        if !*open {
            return Err(EngineError::InvalidArgument(format!(
                "{name}: the gate stayed closed"
            )));
        }
        drop(open);
        std::fs::copy(self.from.join(name), to).map_err(|e| EngineError::Io {
            op: format!("copy {name}"),
            source: e,
        })
    }

    fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.ranges == Ranges::Fail {
            return Err(EngineError::Corrupt {
                state: name.to_owned(),
                reason: "injected range-read failure".into(),
            });
        }
        let io = |e| EngineError::Io {
            op: format!("read {name}"),
            source: e,
        };
        let f = std::fs::File::open(self.from.join(name)).map_err(io)?;
        let mut done = 0;
        while done < buf.len() {
            match f
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(io)?
            {
                0 => break,
                k => done += k,
            }
        }
        if self.ranges == Ranges::Short {
            done = done.saturating_sub(1);
        }
        Ok(done)
    }
}

const KEYS: u32 = 3000;

fn scope(i: u32) -> ScopeKey {
    ScopeKey::new(0, 1, format!("key-{i:05}").as_bytes(), b"")
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(200)).into_bytes()
}

fn desc() -> StateDescriptor {
    StateDescriptor::new("op", "v", StateKind::Value)
}

fn params<'a>(
    dir: &'a Path,
    config: &'a RocksDbConfig,
    cache: &'a StateCacheConfig,
    restore: Option<RocksDbRestore>,
) -> RocksDbParams<'a> {
    RocksDbParams {
        dir,
        range: KeyGroupRange::for_slot(128, 1, 0).unwrap(),
        max_parallelism: 128,
        config,
        memory: SlotMemory::build_shared(&cairn_memory::MemoryConfig::default()).unwrap(),
        hook: None,
        state_cache: cache,
        restore,
    }
}

/// Writes [`KEYS`] values into a slot under `dir` and flushes them into SSTs (several flushes,
/// so reads go through several files); returns the database directory and its SSTs.
fn written_slot(dir: &Path) -> (PathBuf, Vec<LazyFile>) {
    let (config, cache) = (RocksDbConfig::default(), StateCacheConfig::default());
    let (mut b, _) = RocksDbBackend::open(params(dir, &config, &cache, None)).unwrap();
    b.create_state(0, &desc()).unwrap();
    for i in 0..KEYS {
        b.put(0, &scope(i), &value(i)).unwrap();
        if i % 1000 == 999 {
            b.flush().unwrap();
        }
    }
    b.flush().unwrap();
    drop(b);
    let db = dir.join("db");
    let mut ssts = Vec::new();
    for e in std::fs::read_dir(&db).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.ends_with(".sst") {
            let size = e.metadata().unwrap().len();
            ssts.push(LazyFile { name, size });
        }
    }
    assert!(ssts.len() >= 2, "{ssts:?}");
    (db, ssts)
}

/// The restored slot's private files (what a checkpoint's private set holds), copied.
fn private_files(db: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(db).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name == "CURRENT" || name.starts_with("MANIFEST-") || name.starts_with("OPTIONS-") {
            std::fs::copy(db.join(&name), to.join(&name)).unwrap();
        }
    }
}

/// Restores the slot written under `src` lazily under `dst` from `source`.
fn restore_lazily(src: &Path, dst: &Path, ranges: Ranges) -> (RocksDbBackend, Arc<Gated>, usize) {
    let (db, ssts) = written_slot(src);
    let files = dst.join("restore-files");
    private_files(&db, &files);
    let source = Arc::new(Gated {
        from: db,
        open: Mutex::new(false),
        opened: Condvar::new(),
        ranges,
    });
    let n = ssts.len();
    let restore = RocksDbRestore {
        files,
        states: vec![desc()],
        slot: 0,
        key_groups: KeyGroupRange::for_slot(128, 1, 0).unwrap(),
        merge: Vec::new(),
        lazy: Some(LazyRestore {
            files: ssts,
            source: source.clone(),
            threads: 2,
        }),
    };
    let (config, cache) = (RocksDbConfig::default(), StateCacheConfig::default());
    let slot = dst.join("slot");
    let (mut b, _) = RocksDbBackend::open(params(&slot, &config, &cache, Some(restore))).unwrap();
    b.create_state(0, &desc()).unwrap();
    (b, source, n)
}

/// Issue 20: a lazily restored slot answers its first read from ranges of files not yet
/// local, without waiting for a whole file. Before range reads, `NewRandomAccessFile` waited
/// for the whole fetch, which here waits behind the closed gate (and fails after
/// [`GATE_TIMEOUT`]).
#[test]
fn a_lazily_restored_slot_reads_before_any_file_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, source, n) = restore_lazily(
        &dir.path().join("src"),
        &dir.path().join("dst"),
        Ranges::Serve,
    );
    let t = std::time::Instant::now();
    for i in [0, KEYS / 2, KEYS - 1] {
        assert_eq!(b.get(0, &scope(i)).unwrap(), Some(value(i)), "key {i}");
    }
    assert!(
        t.elapsed() < GATE_TIMEOUT / 2,
        "reads waited {:?}",
        t.elapsed()
    );
    let p = b.lazy_progress().unwrap();
    assert_eq!(p.pending_files, n, "nothing could be fetched: {p:?}");
    assert!(p.range_reads > 0 && p.range_read_bytes > 0, "{p:?}");
    assert!(p.failure.is_none(), "{p:?}");
    // Once every file is local, the same readers read the local copies.
    source.open_gate();
    b.lazy.as_ref().unwrap().wait_local().unwrap();
    let ranges = b.lazy_progress().unwrap().range_reads;
    for i in 0..KEYS {
        assert_eq!(b.get(0, &scope(i)).unwrap(), Some(value(i)), "key {i}");
    }
    let p = b.lazy_progress().unwrap();
    assert_eq!(p.pending_files, 0, "{p:?}");
    assert_eq!(
        p.range_reads, ranges,
        "reads of local files went to storage: {p:?}"
    );
}

/// A failed range read fails the read that asked with a typed error naming the file, never
/// with wrong data or a silent miss; it does not fail the file, whose whole fetch then
/// succeeds and serves every value.
#[test]
fn a_failed_range_read_is_a_typed_error_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, source, _) = restore_lazily(
        &dir.path().join("src"),
        &dir.path().join("dst"),
        Ranges::Fail,
    );
    let e = b.get(0, &scope(1)).unwrap_err();
    assert!(matches!(e, EngineError::LazyFetch { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains(".sst"), "{e}");
    assert!(e.to_string().contains("range read"), "{e}");
    assert!(b.lazy_progress().unwrap().range_read_errors > 0);
    source.open_gate();
    b.lazy.as_ref().unwrap().wait_local().unwrap();
    for i in 0..KEYS {
        assert_eq!(b.get(0, &scope(i)).unwrap(), Some(value(i)), "key {i}");
    }
}

/// Storage answering a range read with fewer bytes than the recorded size promises is a typed
/// `Corrupt` error on that read, never a short answer RocksDB would take for the end of the
/// file; once the file is fetched (sha256-verified) every value reads back.
#[test]
fn a_short_range_read_is_corrupt_not_a_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, source, _) = restore_lazily(
        &dir.path().join("src"),
        &dir.path().join("dst"),
        Ranges::Short,
    );
    let e = b.get(0, &scope(1)).unwrap_err();
    assert!(matches!(e, EngineError::LazyFetch { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("returned"), "{e}");
    source.open_gate();
    b.lazy.as_ref().unwrap().wait_local().unwrap();
    for i in 0..KEYS {
        assert_eq!(b.get(0, &scope(i)).unwrap(), Some(value(i)), "key {i}");
    }
}
