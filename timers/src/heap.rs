//! [`HeapTimers`]: timers on the heap (Flink's `HeapPriorityQueueSetFactory`).
//!
//! Per domain and key group, a queue behind an `Arc`: an ordered map from timestamp to a bucket
//! of payloads (`[len(key)][key][namespace]`). A bucket is a hash set until its timestamp starts
//! firing — register, dedup and delete are one hash probe, with no allocation for a duplicate —
//! (a sorted vector while it holds at most 16 timers, so distinct timestamps stay cheap) and is
//! then sorted once into the contract's tie-break order and drained from the end (later
//! registrations at that timestamp are inserted by binary search). Streams register many timers
//! per distinct timestamp (every (word, window) of a window shares its end), so this beats an
//! ordered set of `(timestamp, payload)`, which compares payload bytes at every step (measured:
//! memcmp and malloc were 35 % of the word count's time). Flink pairs a binary heap with a hash
//! map instead. An index of the key groups' heads (`(earliest timestamp, key group)`) makes the
//! next timer of the whole slot an O(log k) lookup — Flink's heap-of-heaps
//! (`KeyGroupPartitionedPriorityQueue`).
//!
//! ## Snapshots
//! [`HeapTimers::snapshot`] clones the `Arc`s (O(key groups), no timer copied); a later write to
//! a key group still shared with a snapshot copies that key group first (`Arc::make_mut`). The
//! [`HeapTimersSnapshot`] is `Send` and is written to a file off the slot's thread, so heap
//! timers are snapshotted asynchronously, also next to RocksDB state (where Flink writes them
//! synchronously into raw keyed state).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::{Result, TimerError};
use crate::{KeyGroup, TimeDomain, Timer, TimerService, TimerServiceKind, check_key_group, layout};

/// `[len(key)][key][namespace]`, inline up to 24 bytes (a word and a window: 19): registering
/// and firing a timer allocate nothing, where a boxed payload cost a malloc and a free each.
type Payload = SmallVec<[u8; 24]>;

type PayloadSet = HashSet<Payload, foldhash::fast::RandomState>;

/// Buckets up to this size stay a sorted vector (a hash set costs ~100 bytes even for one
/// timer, which made distinct timestamps cost 170 bytes per timer).
const SMALL_BUCKET: usize = 16;

/// The timers of one timestamp in one key group.
#[derive(Clone)]
enum Bucket {
    /// Many timers, not firing yet: dedup and delete by hash.
    Set(PayloadSet),
    /// Sorted descending, so the next timer to fire is the last: small buckets, and every
    /// bucket once it fires.
    Sorted {
        /// The payloads.
        v: Vec<Payload>,
        /// Firing: stays sorted whatever its size.
        firing: bool,
    },
}

impl Bucket {
    fn iter(&self) -> Box<dyn Iterator<Item = &Payload> + '_> {
        match self {
            Bucket::Set(s) => Box::new(s.iter()),
            Bucket::Sorted { v, .. } => Box::new(v.iter()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Bucket::Set(s) => s.len(),
            Bucket::Sorted { v, .. } => v.len(),
        }
    }
}

/// The timers of one key group and domain.
#[derive(Clone, Default)]
struct Queue {
    buckets: BTreeMap<i64, Bucket>,
    len: usize,
    /// Size of the last bucket that started firing (capped at [`MAX_SIZE_HINT`]): a bucket
    /// that outgrows the sorted vector starts as a hash set of that capacity, so the windows of
    /// a stream, which look alike, skip the set's rehashes while they fill.
    size_hint: usize,
}

/// Largest capacity a new hash-set bucket reserves from the previous bucket's size.
const MAX_SIZE_HINT: usize = 4096;

impl Queue {
    fn head(&self) -> Option<i64> {
        self.buckets.first_key_value().map(|(ts, _)| *ts)
    }

    fn contains(&self, ts: i64, p: &[u8]) -> bool {
        match self.buckets.get(&ts) {
            None => false,
            Some(Bucket::Set(s)) => s.contains(p),
            Some(Bucket::Sorted { v, .. }) => v.binary_search_by(|x| p.cmp(x)).is_ok(),
        }
    }

    fn insert(&mut self, ts: i64, p: &[u8]) -> bool {
        let b = self.buckets.entry(ts).or_insert_with(|| Bucket::Sorted {
            // Most timestamps hold one timer (processing-time deadlines, sessions): no spare
            // capacity (a first push would reserve 4).
            v: Vec::with_capacity(1),
            firing: false,
        });
        let new = match b {
            Bucket::Set(s) => s.insert(Payload::from_slice(p)),
            Bucket::Sorted { v, firing } => match v.binary_search_by(|x| p.cmp(x)) {
                Ok(_) => false,
                Err(i) => {
                    v.insert(i, Payload::from_slice(p));
                    if !*firing && v.len() > SMALL_BUCKET {
                        let mut set = PayloadSet::with_capacity_and_hasher(
                            self.size_hint.max(2 * SMALL_BUCKET),
                            Default::default(),
                        );
                        set.extend(std::mem::take(v));
                        *b = Bucket::Set(set);
                    }
                    true
                }
            },
        };
        self.len += usize::from(new);
        new
    }

    fn remove(&mut self, ts: i64, p: &[u8]) -> bool {
        let Some(b) = self.buckets.get_mut(&ts) else {
            return false;
        };
        let removed = match b {
            Bucket::Set(s) => s.remove(p),
            Bucket::Sorted { v, .. } => match v.binary_search_by(|x| p.cmp(x)) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
        };
        if b.len() == 0 {
            self.buckets.remove(&ts);
        }
        self.len -= usize::from(removed);
        removed
    }

    fn pop_first(&mut self) -> Option<(i64, Payload)> {
        let mut e = self.buckets.first_entry()?;
        let ts = *e.key();
        let b = e.get_mut();
        match b {
            Bucket::Set(s) => {
                let mut v: Vec<Payload> = s.drain().collect();
                // Descending: the next timer to fire is the last.
                v.sort_unstable_by(|a, b| b.cmp(a));
                self.size_hint = v.len().min(MAX_SIZE_HINT);
                *b = Bucket::Sorted { v, firing: true };
            }
            Bucket::Sorted { firing, .. } => *firing = true,
        }
        let p = match b {
            Bucket::Sorted { v, .. } => v.pop(),
            Bucket::Set(_) => None,
        };
        if b.len() == 0 {
            e.remove();
        }
        if p.is_some() {
            self.len -= 1;
        }
        p.map(|p| (ts, p))
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &Payload)> {
        self.buckets
            .iter()
            .flat_map(|(ts, b)| b.iter().map(move |p| (*ts, p)))
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

/// Timers on the heap. See the module doc.
pub struct HeapTimers {
    range: RangeInclusive<KeyGroup>,
    domains: [DomainQueues; 2],
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
            scratch: Vec::new(),
        }
    }

    /// A consistent, `Send` view of every timer (the synchronous phase of a checkpoint).
    pub fn snapshot(&self) -> HeapTimersSnapshot {
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
                let (key, ns) = layout::decode_payload(payload)
                    .ok_or_else(|| bad(format!("bad payload in key group {kg}")))?;
                if keep {
                    self.register(domain, kg, ts, key, ns)?;
                    kept += 1;
                }
            }
        }
        Ok(kept)
    }

    /// Heap bytes held by the timers (set entries, payload allocations; a B-tree node overhead
    /// estimate of 1/11 per entry). For reports; the benchmark measures the real figure.
    pub fn heap_bytes(&self) -> u64 {
        // Per timer: a hash-set slot (the 32-byte inline payload + 1 control byte, at ~7/8
        // load), plus the payload's allocation when it does not fit inline (rounded to malloc's
        // 16 bytes, + 16 of header).
        let mut b = 0u64;
        for d in &self.domains {
            for q in &d.groups {
                for (_, p) in q.iter() {
                    let slot = std::mem::size_of::<Payload>() * 8 / 7 + 2;
                    let spilled = if p.spilled() {
                        p.capacity().next_multiple_of(16) + 16
                    } else {
                        0
                    };
                    b += (slot + spilled) as u64;
                }
            }
        }
        b
    }
}

impl TimerService for HeapTimers {
    fn kind(&self) -> TimerServiceKind {
        TimerServiceKind::Heap
    }

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
        layout::encode_payload(&mut self.scratch, key, namespace);
        let d = &mut self.domains[domain.index()];
        let old = d.groups[idx].head();
        // Not shared with a snapshot: one lookup inserts or finds the duplicate. Shared: skip
        // the copy-on-write when the timer exists.
        let shared = Arc::get_mut(&mut d.groups[idx]).is_none();
        if shared && d.groups[idx].contains(timestamp, &self.scratch) {
            return Ok(());
        }
        let queue = Arc::make_mut(&mut d.groups[idx]);
        if queue.insert(timestamp, &self.scratch) {
            let new = queue.head();
            d.move_head(key_group, old, new);
        }
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
        layout::encode_payload(&mut self.scratch, key, namespace);
        let d = &mut self.domains[domain.index()];
        if !d.groups[idx].contains(timestamp, &self.scratch) {
            return Ok(());
        }
        let old = d.groups[idx].head();
        Arc::make_mut(&mut d.groups[idx]).remove(timestamp, &self.scratch);
        let new = d.groups[idx].head();
        d.move_head(key_group, old, new);
        Ok(())
    }

    fn peek(&mut self, domain: TimeDomain) -> Result<Option<i64>> {
        Ok(self.domains[domain.index()].heads.first().map(|h| h.0))
    }

    fn poll(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool> {
        let start = *self.range.start();
        let d = &mut self.domains[domain.index()];
        let Some(&(ts, kg)) = d.heads.first() else {
            return Ok(false);
        };
        if ts > up_to {
            return Ok(false);
        }
        let q = Arc::make_mut(&mut d.groups[usize::from(kg - start)]);
        let Some((ts, payload)) = q.pop_first() else {
            // The heads index only lists non-empty queues.
            d.heads.remove(&(ts, kg));
            return Ok(false);
        };
        let new = q.head();
        d.move_head(kg, Some(ts), new);
        let (key, ns) = layout::decode_payload(&payload).ok_or_else(|| TimerError::Corrupt {
            what: "heap timers".into(),
            reason: format!("bad payload in key group {kg}"),
        })?;
        out.domain = domain;
        out.timestamp = ts;
        out.key_group = kg;
        out.key.clear();
        out.key.extend_from_slice(key);
        out.namespace.clear();
        out.namespace.extend_from_slice(ns);
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn count(&mut self, domain: TimeDomain) -> Result<u64> {
        Ok(self.domains[domain.index()]
            .groups
            .iter()
            .map(|q| q.len as u64)
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
        self.groups.iter().flatten().map(|q| q.len as u64).sum()
    }

    /// Whether the view holds no timer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the view to `path` (fsynced) and returns its size.
    ///
    /// ## Format (version 1)
    /// `"CAIRNTIMERS" 0x01`, then per non-empty (domain, key group) a block
    /// `0x01 domain:u8 key_group:u16 n:u32 (timestamp:i64 len:u32 payload)*`, then `0x00`.
    /// Integers are big-endian; `domain` is 0 for event time, 1 for processing time; `payload`
    /// is [`layout::encode_payload`]'s. Blocks are per key group so a restore into other key
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
                if q.len == 0 {
                    continue;
                }
                let kg = self.start + i as KeyGroup;
                w.write_all(&[1, di as u8]).map_err(io)?;
                w.write_all(&kg.to_be_bytes()).map_err(io)?;
                w.write_all(&(q.len as u32).to_be_bytes()).map_err(io)?;
                for (ts, p) in q.iter() {
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
