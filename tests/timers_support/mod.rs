//! Shared harness of the timer suites: one [`Instance`] type over both implementations, with
//! snapshot + restore the way a checkpoint does it (heap: snapshot file; RocksDB: flush, native
//! RocksDB checkpoint, reopen from its files, and register the write-back buffer's snapshot
//! file again).

#![allow(dead_code)]

use std::ops::RangeInclusive;
use std::sync::Arc;

use cairn::timers::{HeapTimers, KeyGroup, RocksDbTimers, TimerDb, TimerService, TimerServiceExt};
use rocksdb::{ColumnFamilyDescriptor, Options};

/// Column families of the RocksDB instances.
pub const EVENT_CF: &str = "_timers/event-time";
/// Processing-time column family.
pub const PROCESSING_CF: &str = "_timers/processing-time";
/// Key-group prefix width used by the suites (`max_parallelism > 128`).
pub const PREFIX_BYTES: usize = 2;
/// A tiny cache, so refills and evictions happen all the time.
pub const CACHE: usize = 4;
/// Fired timers per range delete: small, so range deletes happen between flushes too.
pub const RANGE_DELETE_EVERY: u32 = 3;
/// Write-back buffer of [`Impl::RocksDbBuffered`]: a few dozen timers, so it overflows (its
/// latest timers written out, later ones past the horizon written at once) all the time.
pub const BUFFER_BYTES: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Heap,
    /// RocksDB timers writing every registration.
    RocksDb,
    /// RocksDB timers with a small write-back buffer ([`BUFFER_BYTES`]).
    RocksDbBuffered,
}

pub const IMPLS: [Impl; 3] = [Impl::Heap, Impl::RocksDb, Impl::RocksDbBuffered];

/// A timer service of either implementation, with what it needs to live.
pub enum Instance {
    Heap(HeapTimers),
    Rocks {
        // Boxed: the service is much larger than the heap variant.
        svc: Box<RocksDbTimers>,
        db: Arc<TimerDb>,
        dir: tempfile::TempDir,
        buffer: u64,
    },
}

fn open_db(path: &std::path::Path) -> Arc<TimerDb> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = ["default", EVENT_CF, PROCESSING_CF]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    Arc::new(TimerDb::open_cf_descriptors(&opts, path, cfs).expect("open timer db"))
}

impl Instance {
    /// A fresh, empty service.
    pub fn new(which: Impl, range: RangeInclusive<KeyGroup>) -> Self {
        match which {
            Impl::Heap => Instance::Heap(HeapTimers::new(range)),
            Impl::RocksDb | Impl::RocksDbBuffered => {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = open_db(&dir.path().join("db"));
                let buffer = if which == Impl::RocksDbBuffered {
                    BUFFER_BYTES
                } else {
                    0
                };
                let svc = rocks(&db, range, buffer);
                Instance::Rocks {
                    svc: Box::new(svc),
                    db,
                    dir,
                    buffer,
                }
            }
        }
    }

    pub fn svc(&mut self) -> &mut dyn TimerService {
        match self {
            Instance::Heap(h) => h,
            Instance::Rocks { svc, .. } => svc.as_mut(),
        }
    }

    /// Snapshots this service and restores the snapshot into a new service for `range`.
    pub fn snapshot_restore(&mut self, range: RangeInclusive<KeyGroup>) -> Instance {
        match self {
            Instance::Heap(h) => {
                let snap = h.snapshot();
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("timers.snapshot");
                snap.write(&path).expect("write timer snapshot");
                let mut restored = HeapTimers::new(range);
                restored.restore(&path).expect("restore timer snapshot");
                Instance::Heap(restored)
            }
            Instance::Rocks {
                svc, db, buffer, ..
            } => {
                svc.flush().expect("flush timers");
                let dir = tempfile::tempdir().expect("tempdir");
                let chk = dir.path().join("db");
                rocksdb::checkpoint::Checkpoint::new(db)
                    .and_then(|c| c.create_checkpoint(&chk))
                    .expect("native checkpoint");
                // The buffer's timers are not in RocksDB: a file beside it, registered again.
                let buffered = dir.path().join("timers.snapshot");
                let has_buffered = match svc.buffer_snapshot() {
                    Some(snap) => {
                        snap.write(&buffered).expect("write buffer snapshot");
                        true
                    }
                    None => false,
                };
                let db = open_db(&chk);
                let mut svc = rocks(&db, range.clone(), *buffer);
                if has_buffered {
                    let mut h = HeapTimers::new(range);
                    h.restore(&buffered).expect("restore buffer snapshot");
                    h.drain_into(&mut svc).expect("register restored timers");
                }
                Instance::Rocks {
                    svc: Box::new(svc),
                    db,
                    dir,
                    buffer: *buffer,
                }
            }
        }
    }
}

fn rocks(db: &Arc<TimerDb>, range: RangeInclusive<KeyGroup>, buffer: u64) -> RocksDbTimers {
    RocksDbTimers::open(
        db.clone(),
        EVENT_CF,
        PROCESSING_CF,
        range,
        PREFIX_BYTES,
        CACHE,
    )
    .expect("open rocksdb timers")
    .with_range_delete_every(RANGE_DELETE_EVERY)
    .with_write_buffer(buffer)
}
