//! [`HeapTimers`]: timers on the heap (Flink's `HeapPriorityQueueSetFactory`).
//!
//! Per domain and key group, a queue behind an `Arc`: an ordered map from timestamp to a bucket
//! of payloads (`[len(key)][key][namespace]`). Until its timestamp starts firing, a bucket is
//! appended to: a registration is a push, with no lookup. Duplicates collapse when the bucket
//! fires (it is sorted once into the contract's tie-break order and drained from the end; later
//! registrations at that timestamp are inserted by binary search), and whenever it doubles
//! (see [`Bucket::Appending`]), so repeats hold at most twice the memory; counts and snapshots
//! skip them. A delete on a bucket of more than 16 timers turns it into a hash set (one probe
//! per operation from then on). Streams register many timers per distinct timestamp (every
//! (word, window) of a window shares its end): a hash probe per registration was a cache miss
//! and 14-23 % of the word count's time, and an ordered set of `(timestamp, payload)` before it
//! compared payload bytes at every step (memcmp and malloc were 35 %). Flink pairs a binary heap
//! with a hash map instead. An index of the key groups' heads (`(earliest timestamp, key
//! group)`) makes the next timer of the whole slot an O(log k) lookup — Flink's heap-of-heaps
//! (`KeyGroupPartitionedPriorityQueue`).
//!
//! Registrations are filed in batches: a registration (`register`, or `insert_payload` from
//! RocksDB timers' buffer) appends to a log of up to [`PENDING_MAX`] pending timers, and every
//! other method and a full log first file them, grouped by (domain, key group), so each queue
//! is visited once per batch; `head_of` counts them without filing (a per-queue minimum), so
//! the buffer's bookkeeping of heads does not force a filing per registration. Visiting a
//! queue per registration missed the cache on the queue, its B-tree node and its bucket's
//! tail (scattered among the state's entries): 21 % of the word count's time; with the log
//! the job took about a tenth less CPU (1.69 -> 1.49 s, 5 alternated rounds).
//!
//! ## Memory
//! Every queue keeps its heap bytes up to date as it changes ([`HeapTimers::heap_bytes`], O(1)):
//! RocksDB timers use a `HeapTimers` as their write-back buffer and bound it by this count
//! (through the crate-internal payload-level methods, `insert_payload` … `pop_last_bucket`).
//!
//! ## Snapshots
//! [`HeapTimers::snapshot`] clones the `Arc`s (O(key groups), no timer copied); a later write to
//! a key group still shared with a snapshot copies that key group first (`Arc::make_mut`). The
//! [`HeapTimersSnapshot`] is `Send` and is written to a file off the slot's thread, so heap
//! timers are snapshotted asynchronously, also next to RocksDB state (where Flink writes them
//! synchronously into raw keyed state).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::{Result, TimerError};
use crate::{KeyGroup, TimeDomain, Timer, TimerService, check_key_group, key_format};

/// `[len(key)][key][namespace]`, inline up to [`INLINE`] bytes (a word and a window: 19):
/// registering and firing a timer allocate nothing, where a boxed payload cost a malloc and a
/// free each.
pub(crate) type Payload = SmallVec<[u8; INLINE]>;

type PayloadSet = HashSet<Payload, foldhash::fast::RandomState>;

/// Payload bytes held inline.
const INLINE: usize = 24;

/// Appending buckets up to this size answer a lookup by a scan instead of becoming a set.
const SMALL_BUCKET: usize = 16;

/// Bytes of one payload slot in a bucket.
const SLOT: usize = std::mem::size_of::<Payload>();

/// Bytes of one bucket in its queue's ordered map: key and value, with the B-tree's nodes
/// about two-thirds full.
const BUCKET_ENTRY: usize = std::mem::size_of::<(i64, Bucket)>() * 3 / 2;

/// Heap bytes of a payload of `len` bytes beyond its slot: none inline, else the allocation
/// (malloc rounds to 16 bytes and adds a 16-byte header).
fn spilled_bytes(len: usize) -> usize {
    if len > INLINE {
        len.next_multiple_of(16) + 16
    } else {
        0
    }
}

/// The timers of one timestamp in one key group.
#[derive(Clone)]
enum Bucket {
    /// Only registered to since it was created: payloads in arrival order, possibly repeated.
    /// A registration is a push (no lookup: the bucket's memory is written in order, where a
    /// hash probe missed the cache). Repeats collapse when the bucket fires and when it
    /// reaches `compact_at`: twice its distinct timers at the last collapse, or twice the
    /// previous bucket's (so a bucket like the previous one is sorted once, when it fires).
    /// Counting and snapshots skip the repeats without changing the bucket.
    Appending {
        /// The payloads.
        v: Vec<Payload>,
        /// Length at which `v` is sorted and deduplicated.
        compact_at: usize,
    },
    /// A bucket larger than [`SMALL_BUCKET`] that was asked to delete a timer: dedup and
    /// delete by hash from then on.
    Set(PayloadSet),
    /// Firing: sorted descending and distinct, so the next timer to fire is the last (later
    /// registrations at this timestamp are inserted by binary search).
    Firing(Vec<Payload>),
    /// One timer, held in the bucket itself: a timestamp of one timer (processing-time
    /// deadlines, sessions, timers spread over time) costs no vector, no allocation and no
    /// sort. A second distinct timer makes it an appending bucket.
    One(Payload),
}

impl Bucket {
    fn appending(capacity: usize) -> Self {
        Bucket::Appending {
            v: Vec::with_capacity(capacity),
            compact_at: (2 * capacity).max(2 * SMALL_BUCKET),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Bucket::Appending { v, .. } | Bucket::Firing(v) => v.is_empty(),
            Bucket::Set(s) => s.is_empty(),
            Bucket::One(_) => false,
        }
    }

    /// Bytes of the bucket's slots (its capacity, not its length; a hash set's at ~7/8 load
    /// with a control byte each), payloads spilled to the heap not included.
    fn slot_bytes(&self) -> usize {
        match self {
            Bucket::Appending { v, .. } | Bucket::Firing(v) => v.capacity() * SLOT,
            Bucket::Set(s) => s.capacity() * (SLOT + 1) * 8 / 7,
            // In the bucket itself (counted in its map entry).
            Bucket::One(_) => 0,
        }
    }

    /// The distinct timers, in no particular order.
    fn distinct(&self) -> Vec<&Payload> {
        match self {
            Bucket::Appending { v, .. } => {
                let mut d: Vec<&Payload> = v.iter().collect();
                d.sort_unstable();
                d.dedup();
                d
            }
            Bucket::Set(s) => s.iter().collect(),
            Bucket::Firing(v) => v.iter().collect(),
            Bucket::One(x) => vec![x],
        }
    }

    /// Whether the bucket holds `p`; `None` when answering would take a scan of a large
    /// appending bucket.
    fn contains_cheaply(&self, p: &[u8]) -> Option<bool> {
        match self {
            Bucket::Appending { v, .. } if v.len() <= SMALL_BUCKET => {
                Some(v.iter().any(|x| x[..] == *p))
            }
            Bucket::Appending { .. } => None,
            Bucket::Set(s) => Some(s.contains(p)),
            Bucket::Firing(v) => Some(v.binary_search_by(|x| p.cmp(x)).is_ok()),
            Bucket::One(x) => Some(x[..] == *p),
        }
    }

    /// Whether the bucket holds `p` (a scan for an appending bucket).
    fn contains(&self, p: &[u8]) -> bool {
        match self {
            Bucket::Appending { v, .. } => v.iter().any(|x| x[..] == *p),
            b => b.contains_cheaply(p).unwrap_or(false),
        }
    }

    /// Inserts `p`; `spilled` (the queue's heap bytes of payloads) follows what is stored and
    /// what collapses.
    #[inline]
    fn insert(&mut self, p: &[u8], size_hint: usize, spilled: &mut usize) {
        match self {
            Bucket::Appending { v, compact_at } => {
                if v.len() == SMALL_BUCKET {
                    // A bucket of many timers: reserve what the last bucket that fired held
                    // (the windows of a stream look alike), skipping the regrowth copies.
                    v.reserve(size_hint);
                    *compact_at = (*compact_at).max(2 * size_hint);
                }
                v.push(Payload::from_slice(p));
                *spilled += spilled_bytes(p.len());
                if v.len() >= *compact_at {
                    sort_distinct(v, spilled);
                    *compact_at = (2 * v.len()).max(*compact_at);
                }
            }
            Bucket::Set(s) => {
                if s.insert(Payload::from_slice(p)) {
                    *spilled += spilled_bytes(p.len());
                }
            }
            Bucket::Firing(v) => {
                if let Err(i) = v.binary_search_by(|x| p.cmp(x)) {
                    v.insert(i, Payload::from_slice(p));
                    *spilled += spilled_bytes(p.len());
                }
            }
            Bucket::One(x) => {
                if x[..] != *p {
                    let first = std::mem::take(x);
                    *self = Bucket::appending(2);
                    if let Bucket::Appending { v, .. } = self {
                        v.push(first);
                    }
                    self.insert(p, size_hint, spilled);
                }
            }
        }
    }

    /// Removes `p`; whether it was there.
    fn remove(&mut self, p: &[u8], spilled: &mut usize) -> bool {
        let removed = match self {
            Bucket::Appending { v, .. } if v.len() <= SMALL_BUCKET => {
                let before = v.len();
                v.retain(|x| x[..] != *p);
                // Repeats of `p` go too.
                *spilled -= (before - v.len()) * spilled_bytes(p.len());
                return v.len() != before;
            }
            Bucket::Appending { v, .. } => {
                let mut set = PayloadSet::with_capacity_and_hasher(v.len(), Default::default());
                for x in v.drain(..) {
                    let bytes = spilled_bytes(x.len());
                    if !set.insert(x) {
                        *spilled -= bytes;
                    }
                }
                let removed = set.remove(p);
                *self = Bucket::Set(set);
                removed
            }
            Bucket::Set(s) => s.remove(p),
            Bucket::Firing(v) => match v.binary_search_by(|x| p.cmp(x)) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
            Bucket::One(x) => {
                let found = x[..] == *p;
                if found {
                    // Empty (no allocation): its queue drops it.
                    *self = Bucket::Firing(Vec::new());
                }
                found
            }
        };
        if removed {
            *spilled -= spilled_bytes(p.len());
        }
        removed
    }

    /// Turns the bucket into its firing form (sorted descending, distinct; one timer already
    /// is).
    fn start_firing(&mut self, spilled: &mut usize) {
        let mut v = match self {
            Bucket::Firing(_) | Bucket::One(_) => return,
            Bucket::Appending { v, .. } => std::mem::take(v),
            Bucket::Set(s) => s.drain().collect(),
        };
        sort_distinct(&mut v, spilled);
        *self = Bucket::Firing(v);
    }
}

/// Sorts `v` descending (the firing order, see [`Bucket::Firing`]) and drops repeats, taking
/// their heap bytes off `spilled`.
fn sort_distinct(v: &mut Vec<Payload>, spilled: &mut usize) {
    v.sort_unstable_by(|a, b| payload_cmp(b, a));
    v.dedup_by(|a, b| {
        let repeat = a == b;
        if repeat {
            *spilled -= spilled_bytes(a.len());
        }
        repeat
    });
}

/// Byte order of two payloads (`a.cmp(b)`), faster for payloads of 16 bytes or more: their
/// first 16 bytes (the key's length and at least 12 bytes of key) compare as one big-endian
/// integer, so sorting a bucket calls `memcmp` only for ties (sorting was 12 % of the word
/// count's time, most of it in `memcmp` calls on 19-byte payloads).
#[inline]
fn payload_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a.split_first_chunk::<16>(), b.split_first_chunk::<16>()) {
        (Some((x, a_rest)), Some((y, b_rest))) => u128::from_be_bytes(*x)
            .cmp(&u128::from_be_bytes(*y))
            .then_with(|| a_rest.cmp(b_rest)),
        _ => a.cmp(b),
    }
}

/// The timers of one key group and domain.
#[derive(Clone, Default)]
struct Queue {
    buckets: BTreeMap<i64, Bucket>,
    /// Distinct timers of the last bucket that started firing (capped at [`MAX_SIZE_HINT`]):
    /// a bucket that outgrows [`SMALL_BUCKET`] reserves that many.
    size_hint: usize,
    /// Heap bytes of the buckets' slots and map entries (see [`Bucket::slot_bytes`]).
    slot_bytes: usize,
    /// Heap bytes of payloads longer than [`INLINE`].
    spilled: usize,
}

/// Turns `b` into its firing form if it is not yet (see [`Bucket::start_firing`]), keeping
/// its queue's byte counts and size hint (the queue's fields, passed apart from its map).
#[inline]
fn fire_bucket(b: &mut Bucket, slot_bytes: &mut usize, spilled: &mut usize, size_hint: &mut usize) {
    if matches!(b, Bucket::Firing(_) | Bucket::One(_)) {
        return;
    }
    let before = b.slot_bytes();
    b.start_firing(spilled);
    *slot_bytes = *slot_bytes + b.slot_bytes() - before;
    if let Bucket::Firing(v) = b {
        *size_hint = v.len().min(MAX_SIZE_HINT);
    }
}

/// Largest capacity a bucket reserves from the previous bucket's size.
const MAX_SIZE_HINT: usize = 4096;

impl Queue {
    fn head(&self) -> Option<i64> {
        self.buckets.first_key_value().map(|(ts, _)| *ts)
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Heap bytes held (an estimate kept up to date by every operation, O(1)).
    fn bytes(&self) -> usize {
        self.slot_bytes + self.spilled
    }

    /// `Some(true)` if the timer is registered, `Some(false)` if not, `None` if finding out
    /// would scan a large bucket.
    fn contains_cheaply(&self, ts: i64, p: &[u8]) -> Option<bool> {
        self.buckets
            .get(&ts)
            .map_or(Some(false), |b| b.contains_cheaply(p))
    }

    fn contains(&self, ts: i64, p: &[u8]) -> bool {
        self.buckets.get(&ts).is_some_and(|b| b.contains(p))
    }

    #[inline]
    fn insert(&mut self, ts: i64, p: &[u8]) {
        let (b, before) = match self.buckets.entry(ts) {
            Entry::Occupied(e) => {
                let b = e.into_mut();
                let before = b.slot_bytes();
                (b, before)
            }
            Entry::Vacant(e) => {
                // Most timestamps hold one timer (processing-time deadlines, sessions).
                self.slot_bytes += BUCKET_ENTRY;
                self.spilled += spilled_bytes(p.len());
                e.insert(Bucket::One(Payload::from_slice(p)));
                return;
            }
        };
        b.insert(p, self.size_hint, &mut self.spilled);
        self.slot_bytes = self.slot_bytes + b.slot_bytes() - before;
    }

    fn remove(&mut self, ts: i64, p: &[u8]) -> bool {
        let Some(b) = self.buckets.get_mut(&ts) else {
            return false;
        };
        let before = b.slot_bytes();
        let removed = b.remove(p, &mut self.spilled);
        self.slot_bytes = self.slot_bytes + b.slot_bytes() - before;
        if b.is_empty() {
            self.slot_bytes -= b.slot_bytes() + BUCKET_ENTRY;
            self.buckets.remove(&ts);
        }
        removed
    }

    /// Sorts the first bucket into its firing form (once, when it starts firing).
    #[inline]
    fn start_firing_first(&mut self) {
        if let Some(mut e) = self.buckets.first_entry() {
            fire_bucket(
                e.get_mut(),
                &mut self.slot_bytes,
                &mut self.spilled,
                &mut self.size_hint,
            );
        }
    }

    /// The earliest timer, in the contract's order, once [`Queue::start_firing_first`] has
    /// sorted its bucket (`None` before).
    fn first_fired(&self) -> Option<(i64, &Payload)> {
        match self.buckets.first_key_value()? {
            (ts, Bucket::Firing(v)) => v.last().map(|p| (*ts, p)),
            (ts, Bucket::One(p)) => Some((*ts, p)),
            _ => None,
        }
    }

    #[inline]
    fn pop_first(&mut self) -> Option<(i64, Payload)> {
        let mut e = self.buckets.first_entry()?;
        let ts = *e.key();
        let b = e.get_mut();
        fire_bucket(
            b,
            &mut self.slot_bytes,
            &mut self.spilled,
            &mut self.size_hint,
        );
        let p = match b {
            Bucket::Firing(v) => {
                let p = v.pop()?;
                if v.is_empty() {
                    self.slot_bytes -= e.remove().slot_bytes() + BUCKET_ENTRY;
                }
                p
            }
            Bucket::One(_) => {
                self.slot_bytes -= BUCKET_ENTRY;
                match e.remove() {
                    Bucket::One(p) => p,
                    _ => return None,
                }
            }
            _ => return None,
        };
        self.spilled -= spilled_bytes(p.len());
        Some((ts, p))
    }

    fn pop_last_bucket(&mut self) -> Option<(i64, Vec<Payload>)> {
        let (ts, mut b) = self.buckets.pop_last()?;
        self.slot_bytes -= b.slot_bytes() + BUCKET_ENTRY;
        b.start_firing(&mut self.spilled);
        let v = match b {
            Bucket::Firing(v) => v,
            Bucket::One(p) => vec![p],
            _ => return None,
        };
        self.spilled -= v.iter().map(|p| spilled_bytes(p.len())).sum::<usize>();
        Some((ts, v))
    }

    /// The distinct timers, bucket by bucket.
    fn distinct(&self) -> Vec<(i64, &Payload)> {
        let mut out = Vec::new();
        for (ts, b) in &self.buckets {
            out.extend(b.distinct().into_iter().map(|p| (*ts, p)));
        }
        out
    }

    fn len(&self) -> usize {
        self.buckets.values().map(|b| b.distinct().len()).sum()
    }
}

#[derive(Clone, Default)]
struct DomainQueues {
    /// One queue per key group, indexed by `kg - range.start()`.
    groups: Vec<Arc<Queue>>,
    /// `(head timestamp, key group)` of every non-empty queue.
    heads: BTreeSet<(i64, KeyGroup)>,
}

impl DomainQueues {
    fn new(n: usize) -> Self {
        Self {
            groups: (0..n).map(|_| Arc::new(Queue::default())).collect(),
            heads: BTreeSet::new(),
        }
    }

    fn move_head(&mut self, kg: KeyGroup, old: Option<i64>, new: Option<i64>) {
        if old != new {
            if let Some(o) = old {
                self.heads.remove(&(o, kg));
            }
            if let Some(n) = new {
                self.heads.insert((n, kg));
            }
        }
    }
}

/// A registration not yet in its queue (see [`HeapTimers::register`]).
struct PendingTimer {
    ts: i64,
    /// Key group index.
    idx: u16,
    /// Domain index.
    d: u8,
    payload: Payload,
}

/// Registrations [`HeapTimers::register`] holds before it files them into their queues (48 KiB
/// of log; in the word count 256 was slower and 4,096 no faster, over 7 alternated rounds).
const PENDING_MAX: usize = 1024;

/// Timers on the heap. See the module doc.
pub struct HeapTimers {
    range: RangeInclusive<KeyGroup>,
    domains: [DomainQueues; 2],
    /// Heap bytes of all queues (the sum of [`Queue::bytes`]).
    bytes: usize,
    /// Registrations not yet filed into their queues, in arrival order (at most
    /// [`PENDING_MAX`]); every method but the registrations and `head_of` files them first.
    pending: Vec<PendingTimer>,
    /// Payload bytes of `pending` beyond their inline slots.
    pending_spilled: usize,
    /// Per (domain, key group): the earliest timestamp in `pending`, so
    /// [`HeapTimers::head_of`] is right without filing.
    pending_heads: Vec<Option<i64>>,
    /// Per (domain, key group): where its run of `pending` starts once grouped (see
    /// [`HeapTimers::file_pending`]).
    run_starts: Vec<u32>,
    scratch: Vec<u8>,
}

impl HeapTimers {
    /// An empty service for the key groups `range`.
    pub fn new(range: RangeInclusive<KeyGroup>) -> Self {
        let n = if range.is_empty() {
            0
        } else {
            usize::from(range.end() - range.start()) + 1
        };
        Self {
            range,
            domains: [DomainQueues::new(n), DomainQueues::new(n)],
            bytes: 0,
            pending: Vec::new(),
            pending_spilled: 0,
            pending_heads: vec![None; 2 * n],
            run_starts: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Files the pending registrations into their queues, grouped by (domain, key group) so
    /// each queue is visited once per run of its timers (a counting sort: two sequential
    /// passes). See the module doc.
    #[inline]
    fn file_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.file_pending_now();
    }

    #[cold]
    fn file_pending_now(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        self.pending_spilled = 0;
        self.pending_heads.fill(None);
        let groups = self.domains[0].groups.len();
        // Counting sort of indexes into `pending` by (domain, key group), arrival order kept.
        let mut starts = std::mem::take(&mut self.run_starts);
        starts.clear();
        starts.resize(2 * groups + 1, 0);
        for t in &pending {
            starts[usize::from(t.d) * groups + usize::from(t.idx) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; pending.len()];
        let mut next = starts.clone();
        for (i, t) in pending.iter().enumerate() {
            let g = usize::from(t.d) * groups + usize::from(t.idx);
            order[next[g] as usize] = i as u32;
            next[g] += 1;
        }
        for g in 0..2 * groups {
            let run = &order[starts[g] as usize..starts[g + 1] as usize];
            if run.is_empty() {
                continue;
            }
            let (d, idx) = (g / groups, g % groups);
            let q = &self.domains[d].groups[idx];
            // Shared with a snapshot: skip the copy-on-write when every timer is known to exist.
            if Arc::strong_count(q) > 1
                && run.iter().all(|&i| {
                    let t = &pending[i as usize];
                    q.contains_cheaply(t.ts, &t.payload) == Some(true)
                })
            {
                continue;
            }
            self.with_queue(d, idx, |q| {
                for &i in run {
                    let t = &pending[i as usize];
                    q.insert(t.ts, &t.payload);
                }
            });
        }
        pending.clear();
        self.pending = pending;
        self.run_starts = starts;
    }

    /// A consistent, `Send` view of every timer (the synchronous phase of a checkpoint).
    pub fn snapshot(&mut self) -> HeapTimersSnapshot {
        self.file_pending();
        HeapTimersSnapshot {
            start: *self.range.start(),
            groups: [
                self.domains[0].groups.clone(),
                self.domains[1].groups.clone(),
            ],
        }
    }

    /// Adds the timers of a snapshot file written by [`HeapTimersSnapshot::write`], keeping only
    /// this service's key groups (so snapshots of any slot layout restore into any other).
    /// Returns how many timers were kept.
    pub fn restore(&mut self, path: &Path) -> Result<u64> {
        let mut data = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| TimerError::Io {
                op: format!("read timer snapshot {}", path.display()),
                source: e,
            })?;
        let bad = |reason: String| TimerError::Corrupt {
            what: path.display().to_string(),
            reason,
        };
        let mut r = Reader { buf: &data, pos: 0 };
        if r.take(MAGIC.len()).map_err(bad)? != MAGIC {
            return Err(bad("not a timer snapshot (bad magic)".into()));
        }
        let version = r.take(1).map_err(bad)?[0];
        if version != VERSION {
            return Err(bad(format!(
                "timer snapshot version {version}, this build reads {VERSION}"
            )));
        }
        let mut kept = 0;
        loop {
            match r.take(1).map_err(bad)?[0] {
                0 => break,
                1 => {}
                t => return Err(bad(format!("unknown block tag {t}"))),
            }
            let domain = match r.take(1).map_err(bad)?[0] {
                0 => TimeDomain::EventTime,
                1 => TimeDomain::ProcessingTime,
                d => return Err(bad(format!("unknown time domain {d}"))),
            };
            let kg = r.u16().map_err(bad)?;
            let n = r.u32().map_err(bad)?;
            let keep = self.range.contains(&kg);
            for _ in 0..n {
                let ts = r.i64().map_err(bad)?;
                let len = r.u32().map_err(bad)? as usize;
                let payload = r.take(len).map_err(bad)?;
                let (key, ns) = key_format::decode_payload(payload)
                    .ok_or_else(|| bad(format!("bad payload in key group {kg}")))?;
                if keep {
                    self.register(domain, kg, ts, key, ns)?;
                    kept += 1;
                }
            }
        }
        Ok(kept)
    }

    /// Heap bytes held by the timers, kept up to date by every operation (O(1)): bucket slots
    /// (a vector's capacity, or a hash set's at ~7/8 load with a control byte each), the
    /// buckets' map entries, and payloads that do not fit inline (rounded to malloc's 16 bytes
    /// plus 16 of header), and the pending registrations' log entries. Queues still shared with
    /// a snapshot are counted once. An estimate that bounds RocksDB timers' write-back buffer;
    /// `benches/timers.rs` measures the real figure.
    pub fn heap_bytes(&self) -> u64 {
        (self.bytes
            + self.pending.len() * std::mem::size_of::<PendingTimer>()
            + self.pending_spilled) as u64
    }

    /// Runs `op` on the queue of (`d`, `idx`) (copied first if a snapshot shares it), then
    /// brings the byte count and the heads index up to date.
    #[inline]
    fn with_queue<R>(&mut self, d: usize, idx: usize, op: impl FnOnce(&mut Queue) -> R) -> R {
        debug_assert!(
            self.pending.is_empty(),
            "queues read before pending timers filed"
        );
        let kg = *self.range.start() + idx as KeyGroup;
        let dq = &mut self.domains[d];
        let q = Arc::make_mut(&mut dq.groups[idx]);
        let (old_head, old_bytes) = (q.head(), q.bytes());
        let r = op(q);
        let (new_head, new_bytes) = (q.head(), q.bytes());
        self.bytes = self.bytes - old_bytes + new_bytes;
        dq.move_head(kg, old_head, new_head);
        r
    }

    /// Registers an encoded payload ([`key_format::encode_payload`]) in key group index `idx` of
    /// domain index `d` (both checked by the caller): appended to the pending log (see the
    /// module doc).
    #[inline]
    pub(crate) fn insert_payload(&mut self, d: usize, idx: usize, ts: i64, payload: &[u8]) {
        if self.pending.len() == PENDING_MAX {
            self.file_pending_now();
        }
        let head = &mut self.pending_heads[d * self.domains[0].groups.len() + idx];
        *head = Some(head.map_or(ts, |h| h.min(ts)));
        self.pending_spilled += spilled_bytes(payload.len());
        self.pending.push(PendingTimer {
            ts,
            idx: idx as u16,
            d: d as u8,
            payload: Payload::from_slice(payload),
        });
    }

    /// Deletes an encoded payload; whether it was registered.
    #[inline]
    pub(crate) fn remove_payload(&mut self, d: usize, idx: usize, ts: i64, payload: &[u8]) -> bool {
        self.file_pending();
        let q = &self.domains[d].groups[idx];
        // Shared with a snapshot: skip the copy-on-write when there is nothing to delete.
        if Arc::strong_count(q) > 1 && !q.contains(ts, payload) {
            return false;
        }
        self.with_queue(d, idx, |q| q.remove(ts, payload))
    }

    /// The earliest timestamp of a key group (pending registrations included, without filing
    /// them).
    #[inline]
    pub(crate) fn head_of(&self, d: usize, idx: usize) -> Option<i64> {
        let pending = self.pending_heads[d * self.domains[0].groups.len() + idx];
        let filed = self.domains[d].groups[idx].head();
        match (filed, pending) {
            (Some(f), Some(p)) => Some(f.min(p)),
            (f, p) => f.or(p),
        }
    }

    /// The earliest timer of a key group, in the contract's order (its bucket starts firing).
    #[inline]
    pub(crate) fn first_of(&mut self, d: usize, idx: usize) -> Option<(i64, &[u8])> {
        self.file_pending();
        self.head_of(d, idx)?;
        self.with_queue(d, idx, Queue::start_firing_first);
        self.domains[d].groups[idx]
            .first_fired()
            .map(|(ts, p)| (ts, &p[..]))
    }

    /// Removes the earliest timer of a key group.
    #[inline]
    pub(crate) fn pop_of(&mut self, d: usize, idx: usize) -> Option<(i64, Payload)> {
        self.file_pending();
        self.with_queue(d, idx, Queue::pop_first)
    }

    /// The latest timestamp of a key group.
    pub(crate) fn tail_of(&mut self, d: usize, idx: usize) -> Option<i64> {
        self.file_pending();
        self.domains[d].groups[idx]
            .buckets
            .last_key_value()
            .map(|(ts, _)| *ts)
    }

    /// Removes the latest bucket of a key group: its timestamp and distinct timers.
    pub(crate) fn pop_last_bucket(&mut self, d: usize, idx: usize) -> Option<(i64, Vec<Payload>)> {
        self.tail_of(d, idx)?;
        self.with_queue(d, idx, Queue::pop_last_bucket)
    }

    /// The earliest (timestamp, key group) of a domain's filed timers.
    #[inline]
    fn first_head(&self, d: usize) -> Option<(i64, KeyGroup)> {
        self.domains[d].heads.first().copied()
    }
}

impl TimerService for HeapTimers {
    fn key_groups(&self) -> RangeInclusive<KeyGroup> {
        self.range.clone()
    }

    fn register(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        let idx = check_key_group(&self.range, key_group)?;
        let mut p = std::mem::take(&mut self.scratch);
        key_format::encode_payload(&mut p, key, namespace);
        self.insert_payload(domain.index(), idx, timestamp, &p);
        self.scratch = p;
        Ok(())
    }

    fn delete(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        let idx = check_key_group(&self.range, key_group)?;
        let mut p = std::mem::take(&mut self.scratch);
        key_format::encode_payload(&mut p, key, namespace);
        self.remove_payload(domain.index(), idx, timestamp, &p);
        self.scratch = p;
        Ok(())
    }

    fn peek(&mut self, domain: TimeDomain) -> Result<Option<i64>> {
        self.file_pending();
        Ok(self.domains[domain.index()].heads.first().map(|h| h.0))
    }

    fn poll(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool> {
        self.file_pending();
        let d = domain.index();
        let Some((ts, kg)) = self.first_head(d) else {
            return Ok(false);
        };
        if ts > up_to {
            return Ok(false);
        }
        let Some((ts, payload)) = self.pop_of(d, usize::from(kg - self.range.start())) else {
            return Ok(false);
        };
        out.fill(domain, ts, kg, &payload, "heap timers")?;
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        self.file_pending();
        Ok(())
    }

    fn heap_bytes(&self) -> u64 {
        HeapTimers::heap_bytes(self)
    }

    fn count(&mut self, domain: TimeDomain) -> Result<u64> {
        self.file_pending();
        Ok(self.domains[domain.index()]
            .groups
            .iter()
            .map(|q| q.len() as u64)
            .sum())
    }
}

const MAGIC: &[u8; 11] = b"CAIRNTIMERS";
const VERSION: u8 = 1;

/// A consistent view of a [`HeapTimers`] at one instant; written by a checkpoint's
/// asynchronous phase. See the module doc.
pub struct HeapTimersSnapshot {
    start: KeyGroup,
    groups: [Vec<Arc<Queue>>; 2],
}

impl HeapTimersSnapshot {
    /// Number of timers in the view.
    pub fn len(&self) -> u64 {
        self.groups.iter().flatten().map(|q| q.len() as u64).sum()
    }

    /// Whether the view holds no timer.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().flatten().all(|q| q.is_empty())
    }

    /// Writes the view to `path` (fsynced) and returns its size.
    ///
    /// ## Format (version 1)
    /// `"CAIRNTIMERS" 0x01`, then per non-empty (domain, key group) a block
    /// `0x01 domain:u8 key_group:u16 n:u32 (timestamp:i64 len:u32 payload)*`, then `0x00`.
    /// Integers are big-endian; `domain` is 0 for event time, 1 for processing time; `payload`
    /// is [`key_format::encode_payload`]'s. Blocks are per key group so a restore into other key
    /// ranges keeps exactly its own.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let io = |e| TimerError::Io {
            op: format!("write timer snapshot {}", path.display()),
            source: e,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&[VERSION]).map_err(io)?;
        for (di, groups) in self.groups.iter().enumerate() {
            for (i, q) in groups.iter().enumerate() {
                if q.is_empty() {
                    continue;
                }
                let timers = q.distinct();
                let kg = self.start + i as KeyGroup;
                w.write_all(&[1, di as u8]).map_err(io)?;
                w.write_all(&kg.to_be_bytes()).map_err(io)?;
                w.write_all(&(timers.len() as u32).to_be_bytes())
                    .map_err(io)?;
                for (ts, p) in timers {
                    w.write_all(&ts.to_be_bytes()).map_err(io)?;
                    w.write_all(&(p.len() as u32).to_be_bytes()).map_err(io)?;
                    w.write_all(p).map_err(io)?;
                }
            }
        }
        w.write_all(&[0]).map_err(io)?;
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|e| *e <= self.buf.len()) {
            Some(e) => {
                let s = &self.buf[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.pos)),
        }
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> std::result::Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
}
