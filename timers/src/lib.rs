//! Cairn's timer services: per-key callbacks at event-time watermarks and processing-time
//! deadlines, kept on the heap ([`HeapTimers`]) or in a column family of the slot's RocksDB
//! ([`RocksDbTimers`]) — Flink's `state.backend.rocksdb.timer-service.factory` = `HEAP` |
//! `ROCKSDB`.
//!
//! A timer is `(domain, timestamp, key, namespace)`; it belongs to the key group of its key, so
//! timers follow their keys through checkpoints, restore and rescaling. Both implementations obey
//! the contract of [`TimerService`] (one conformance suite runs on both) and fire in exactly the
//! same order.
//!
//! Not here: key hashing (the engine computes key groups and passes them in), checkpoint storage
//! (the engine writes [`HeapTimersSnapshot`]s and RocksDB column families into checkpoints).
//!
//! ```
//! use cairn_timers::{HeapTimers, TimeDomain, Timer, TimerService, TimerServiceExt};
//! let mut timers = HeapTimers::new(0..=127);
//! timers.register(TimeDomain::EventTime, 5, 1_000, b"word", b"window-0").unwrap();
//! timers.register(TimeDomain::EventTime, 5, 1_000, b"word", b"window-0").unwrap(); // collapses
//! let mut fired = Vec::new();
//! timers.advance_watermark(999, |t: &Timer| { fired.push(t.clone()); Ok(()) }).unwrap();
//! assert!(fired.is_empty());
//! timers.advance_watermark(1_000, |t: &Timer| { fired.push(t.clone()); Ok(()) }).unwrap();
//! assert_eq!(fired.len(), 1);
//! assert_eq!(fired[0].key, b"word");
//! ```
#![deny(missing_docs)]

mod clock;
mod error;
mod heap;
pub mod key_format;
mod rocks;

use std::ops::RangeInclusive;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Result, TimerError};
pub use heap::{HeapTimers, HeapTimersSnapshot};
pub use rocks::{DEFAULT_CACHE_SIZE, RocksDbTimers, TimerDb};

pub use cairn_base::KeyGroup;

/// The clock a timer fires on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timestamp ([`TimerServiceExt::advance_watermark`]).
    #[default]
    EventTime,
    /// Fires when the injected [`Clock`] reaches the timestamp
    /// ([`TimerServiceExt::advance_processing_time`]).
    ProcessingTime,
}

impl TimeDomain {
    /// Both domains, in index order.
    pub const ALL: [TimeDomain; 2] = [TimeDomain::EventTime, TimeDomain::ProcessingTime];

    pub(crate) fn index(self) -> usize {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }
}

/// A fired timer (reused by [`TimerService::poll`] so firing allocates nothing per timer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timer {
    /// Its clock.
    pub domain: TimeDomain,
    /// When it fires (ms).
    pub timestamp: i64,
    /// The key group of its key.
    pub key_group: KeyGroup,
    /// The serialized key.
    pub key: Vec<u8>,
    /// The serialized namespace (e.g. a window).
    pub namespace: Vec<u8>,
}

impl Timer {
    /// Sets `self` to the fired timer `payload` ([`key_format::encode_payload`]'s) of key group
    /// `kg`, reusing its buffers; `what` names the payload's source in the error.
    #[inline]
    pub(crate) fn fill(
        &mut self,
        domain: TimeDomain,
        timestamp: i64,
        kg: KeyGroup,
        payload: &[u8],
        what: &str,
    ) -> Result<()> {
        let (key, ns) = key_format::decode_payload(payload).ok_or_else(|| TimerError::Corrupt {
            what: what.to_string(),
            reason: format!("bad payload in key group {kg}"),
        })?;
        self.domain = domain;
        self.timestamp = timestamp;
        self.key_group = kg;
        self.key.clear();
        self.key.extend_from_slice(key);
        self.namespace.clear();
        self.namespace.extend_from_slice(ns);
        Ok(())
    }
}

/// Registers, deletes and fires timers of one slot's key groups.
///
/// # Contract
/// - A timer is identified by `(domain, timestamp, key, namespace)`; its key group is the one of
///   its key (the caller's hash). Registering an existing timer again is a no-op (duplicates
///   collapse to one); deleting an absent timer is a no-op.
/// - [`poll`](TimerService::poll) removes and returns the earliest timer of a domain whose
///   timestamp is `<= up_to`. Order: ascending timestamp; ties are broken by key group, then by
///   the bytes of the encoded `[len(key): u32 BE][key][namespace]` (see [`key_format`]) — the order
///   of the RocksDB keys, so both implementations fire identically. Every timer fires at most
///   once; a timer registered while firing with a timestamp `<= up_to` fires in the same loop
///   (`poll` always takes the earliest due timer, even one sorting before those already fired).
/// - [`peek`](TimerService::peek) gives the earliest timestamp of a domain (cheap: a lookup in
///   an index of the key groups' heads).
/// - Key groups outside the service's range are rejected with
///   [`TimerError::KeyGroupOutOfRange`]; nothing is written.
/// - Restore (the implementation's `restore`/`open`) yields exactly the timers that were present
///   at the snapshot, of the restoring service's key groups only, and firing continues in the
///   same order.
pub trait TimerService: Send {
    /// The key groups the service holds.
    fn key_groups(&self) -> RangeInclusive<KeyGroup>;
    /// Registers a timer (no-op when it exists).
    fn register(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()>;
    /// Deletes a timer (no-op when absent).
    fn delete(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()>;
    /// The earliest timestamp of `domain`, if any timer is registered.
    fn peek(&mut self, domain: TimeDomain) -> Result<Option<i64>>;
    /// Removes the earliest timer of `domain` with timestamp `<= up_to` into `out`; `false`
    /// when there is none.
    fn poll(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool>;
    /// Makes every registration and deletion visible to a snapshot of the backing store
    /// (RocksDB: writes the buffered write batch; heap: nothing).
    fn flush(&mut self) -> Result<()>;
    /// Number of timers of `domain` (RocksDB: counted by a scan; for tests and reports).
    fn count(&mut self, domain: TimeDomain) -> Result<u64>;
    /// Heap bytes held by timers (an O(1) estimate, see [`HeapTimers::heap_bytes`]): every
    /// timer of heap timers; the write-back buffer of RocksDB timers (their per-key-group
    /// caches of at most `cache-size` timers are not counted).
    fn heap_bytes(&self) -> u64;
}

/// Conveniences over [`TimerService`].
pub trait TimerServiceExt: TimerService {
    /// Fires every event-time timer `<= watermark`, in the contract's order, calling `on_fire`
    /// for each (the callback cannot touch the service; host engines that register timers while
    /// firing loop over [`TimerService::poll`] themselves). Returns how many fired.
    fn advance_watermark(
        &mut self,
        watermark: i64,
        mut on_fire: impl FnMut(&Timer) -> Result<()>,
    ) -> Result<u64> {
        let mut t = Timer::default();
        let mut n = 0;
        while self.poll(TimeDomain::EventTime, watermark, &mut t)? {
            on_fire(&t)?;
            n += 1;
        }
        Ok(n)
    }

    /// Fires every processing-time timer `<= clock.now_ms()`.
    fn advance_processing_time(
        &mut self,
        clock: &dyn Clock,
        mut on_fire: impl FnMut(&Timer) -> Result<()>,
    ) -> Result<u64> {
        let now = clock.now_ms();
        let mut t = Timer::default();
        let mut n = 0;
        while self.poll(TimeDomain::ProcessingTime, now, &mut t)? {
            on_fire(&t)?;
            n += 1;
        }
        Ok(n)
    }

    /// Moves every timer of both domains into `to` (each polled here, registered there) and
    /// returns how many moved: how a restore turns timers of one kind into the other, or
    /// registers a RocksDB timer buffer's snapshot again.
    fn drain_into(&mut self, to: &mut dyn TimerService) -> Result<u64> {
        let mut t = Timer::default();
        let mut n = 0;
        for d in TimeDomain::ALL {
            while self.poll(d, i64::MAX, &mut t)? {
                to.register(d, t.key_group, t.timestamp, &t.key, &t.namespace)?;
                n += 1;
            }
        }
        self.flush()?;
        Ok(n)
    }
}

impl<T: TimerService + ?Sized> TimerServiceExt for T {}

pub(crate) fn check_key_group(range: &RangeInclusive<KeyGroup>, kg: KeyGroup) -> Result<usize> {
    if range.contains(&kg) {
        Ok(usize::from(kg - range.start()))
    } else {
        Err(TimerError::KeyGroupOutOfRange {
            key_group: kg,
            start: *range.start(),
            end: *range.end(),
        })
    }
}
