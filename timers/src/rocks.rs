//! [`RocksDbTimers`]: timers in column families of the slot's RocksDB (Flink's
//! `RocksDBPriorityQueueSetFactory`), one per time domain, keyed by [`crate::key_format`].
//!
//! ## Cache
//! Per domain and key group, an in-memory ordered set holds the key group's *earliest* timers
//! (at most `cache_size`, Flink's `timer-service.cache-size` = 128): always a prefix of the
//! key group's timers in RocksDB, plus a flag saying whether it holds all of them. Firing pops
//! from the cache; only when a key group's cache runs dry while RocksDB holds more is RocksDB
//! read, with one bounded scan (`[kg prefix, next kg prefix)`) that refills it. A registration
//! earlier than the cache's last timer goes into the cache too (dedup without a read); a later
//! one is only written (a RocksDB put of an existing key is idempotent). An index of the key
//! groups' heads gives the slot's next timer without touching RocksDB.
//!
//! ## Write-back buffer
//! With a byte budget ([`RocksDbTimers::with_write_buffer`]; the engine gives it
//! `memory.timer-buffer-ratio` of the slot's budget), registrations are not written at all at
//! first: they go into an in-memory buffer (a [`HeapTimers`], so a registration is a push) and
//! fire from there, merged with the key group's cache in the contract's order. Stream timers
//! mostly fire soon after they are registered (window ends), so most never reach RocksDB.
//! When the buffer outgrows its budget, its latest timestamps are written to RocksDB until it
//! is three quarters full, and registrations at or after the earliest timestamp written go
//! straight to RocksDB from then on (the buffer keeps what fires next; writing everything out
//! cost more than writing each registration at once), until the buffer is down to a quarter.
//! [`TimerService::count`] writes it all out (RocksDB must hold every timer).
//!
//! Checkpoints do not write the buffer: the engine snapshots it
//! ([`RocksDbTimers::buffer_snapshot`], copy-on-write like heap timers) into the checkpoint's
//! private files next to the RocksDB files, and a restore registers those timers again.
//! Whether a buffered registration is already in RocksDB is not checked (that would be a
//! read): such a timer is in both, both heads are equal when it is due, and it fires once. A delete removes it from the buffer, and writes a RocksDB delete unless the
//! cache shows RocksDB does not hold it. (Flink writes every registration to RocksDB.)
//!
//! ## Writes
//! Puts and deletes are buffered (WAL off, like state writes) and written in one write batch
//! when [`BATCH_OPS`] operations are pending, before any scan, and on [`TimerService::flush`] —
//! which the engine calls before a checkpoint's native RocksDB snapshot. The cache always
//! reflects the buffer, so nothing is read through it. Point operations go into the batch
//! sorted by (column family, key) (a stable sort: the last operation on a key still wins):
//! RocksDB's memtable skip list reuses its last insert position, so ascending inserts skip most
//! of the search that random ones pay (the memtable insert was most of a registration's cost).
//! A range delete first moves the pending point operations into the batch, so their order
//! relative to it is kept.
//!
//! ## Fired timers: range deletes
//! Firing writes nothing: fired timers are always the front of their key group, so the service
//! remembers the last fired key (`low`) and deletes `[key-group prefix, low]` with one range
//! tombstone per [`GARBAGE_PER_RANGE_DELETE`] firings and at every [`TimerService::flush`]
//! (before each checkpoint, so checkpoints never hold fired timers). Refill scans start at
//! `low`, so they never walk fired timers or their tombstones. A registration at or below
//! `low` writes the pending range delete first. (Flink writes a point delete per firing and
//! seeks from the key-group prefix, skipping tombstones one by one.)

use std::collections::{BTreeSet, BinaryHeap};
use std::ops::RangeInclusive;
use std::sync::Arc;

use rocksdb::{DBWithThreadMode, MultiThreaded, ReadOptions, WriteBatch, WriteOptions};

use crate::error::{Result, TimerError};
use crate::heap::{HeapTimers, HeapTimersSnapshot};
use crate::{KeyGroup, TimeDomain, Timer, TimerService, check_key_group, key_format};

/// The RocksDB type of a slot (`cairn-engine`'s).
pub type TimerDb = DBWithThreadMode<MultiThreaded>;

/// Timers cached per key group and domain (Flink: `state.backend.rocksdb.timer-service.cache-size`).
pub const DEFAULT_CACHE_SIZE: usize = 128;
/// Buffered operations that trigger a write of the batch (16k: longer sorted runs for the
/// memtable than 4k, spread timers 0.48-0.51 -> 0.69 of heap in benches/timers; ~0.5 MiB).
pub const BATCH_OPS: usize = 16384;
/// Fired timers of a key group deleted by one range tombstone (besides the one every
/// [`TimerService::flush`] writes): few range tombstones keep scans cheap, and fired timers stay
/// on disk only briefly.
pub const GARBAGE_PER_RANGE_DELETE: u32 = 4096;

type Entry = (i64, Box<[u8]>);

#[derive(Default)]
struct GroupCache {
    /// The earliest timers of the key group (a prefix of its RocksDB keys).
    cache: BTreeSet<Entry>,
    /// Whether `cache` holds every timer of the key group.
    complete: bool,
    /// Whether the cache was loaded at all (false after open until the first scan).
    loaded: bool,
    /// No live timer of the key group sorts below this key (empty: unknown): the last fired
    /// timer's key, or a key written below it. Refill scans start here.
    low: Vec<u8>,
    /// Whether `low` is a fired timer (still in RocksDB, deleted with the next range delete)
    /// rather than a live one.
    low_fired: bool,
    /// Timers fired since the key group's last range delete: all in `[prefix, low]`.
    garbage: u32,
}

impl GroupCache {
    /// Whether `(ts, payload)` sorts within the cache, which then tells whether RocksDB holds
    /// it.
    fn covers(&self, ts: i64, payload: &[u8]) -> bool {
        self.complete
            || self
                .cache
                .last()
                .is_some_and(|l| (ts, payload) <= (l.0, &l.1[..]))
    }

    /// Records that RocksDB holds `(ts, payload)` (written now or pending): cached if it sorts
    /// within the cache, which stays a prefix of RocksDB's timers of at most `cache_size`.
    /// `false` when the cache had it already.
    fn admit(&mut self, ts: i64, payload: &[u8], cache_size: usize) -> bool {
        if !self.covers(ts, payload) {
            return true;
        }
        if !self.cache.insert((ts, payload.into())) {
            return false;
        }
        if self.cache.len() > cache_size {
            self.cache.pop_last();
            self.complete = false;
        }
        true
    }
}

struct Domain {
    cf: String,
    groups: Vec<GroupCache>,
    heads: BTreeSet<(i64, KeyGroup)>,
    unloaded: usize,
}

/// Timers in RocksDB. See the module doc.
pub struct RocksDbTimers {
    db: Arc<TimerDb>,
    range: RangeInclusive<KeyGroup>,
    prefix_bytes: usize,
    cache_size: usize,
    garbage_per_range_delete: u32,
    domains: [Domain; 2],
    batch: WriteBatch,
    batch_ops: usize,
    /// Point operations not yet in `batch`: their keys back to back in `pending_keys`, and per
    /// operation (domain, start, end, put).
    pending: Vec<(u8, u32, u32, bool)>,
    pending_keys: Vec<u8>,
    write_opts: WriteOptions,
    /// Registrations not written to RocksDB (see the module doc).
    unwritten: HeapTimers,
    /// Bytes `unwritten` may hold; 0: no buffer.
    buffer_limit: usize,
    /// Per domain: registrations at or after this timestamp are written, not buffered (set
    /// when the buffer overflows, cleared at the next registration once the buffer is down to
    /// a quarter).
    horizon: [Option<i64>; 2],
    payload: Vec<u8>,
    key: Vec<u8>,
}

impl RocksDbTimers {
    /// A service over the existing column families `event_cf` and `processing_cf` of `db`, for
    /// the key groups `range` with `prefix_bytes`-wide key-group prefixes. Timers already in
    /// the column families (a restored checkpoint) are found lazily, with one bounded scan per
    /// key group at the first `peek`/`poll`.
    pub fn open(
        db: Arc<TimerDb>,
        event_cf: &str,
        processing_cf: &str,
        range: RangeInclusive<KeyGroup>,
        prefix_bytes: usize,
        cache_size: usize,
    ) -> Result<Self> {
        for cf in [event_cf, processing_cf] {
            if db.cf_handle(cf).is_none() {
                return Err(TimerError::MissingColumnFamily(cf.to_string()));
            }
        }
        let n = if range.is_empty() {
            0
        } else {
            usize::from(range.end() - range.start()) + 1
        };
        let domain = |cf: &str| Domain {
            cf: cf.to_string(),
            groups: (0..n).map(|_| GroupCache::default()).collect(),
            heads: BTreeSet::new(),
            unloaded: n,
        };
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        Ok(Self {
            db,
            range: range.clone(),
            prefix_bytes,
            cache_size: cache_size.max(1),
            garbage_per_range_delete: GARBAGE_PER_RANGE_DELETE,
            domains: [domain(event_cf), domain(processing_cf)],
            batch: WriteBatch::default(),
            batch_ops: 0,
            pending: Vec::new(),
            pending_keys: Vec::new(),
            write_opts,
            unwritten: HeapTimers::new(range.clone()),
            buffer_limit: 0,
            horizon: [None; 2],
            payload: Vec::new(),
            key: Vec::new(),
        })
    }

    /// Fired timers per key group between range deletes (default
    /// `GARBAGE_PER_RANGE_DELETE`; tests lower it to exercise the path).
    pub fn with_range_delete_every(mut self, fired: u32) -> Self {
        self.garbage_per_range_delete = fired.max(1);
        self
    }

    /// Buffers registrations in memory up to `bytes` (see the module doc); 0 (the default)
    /// writes every registration.
    pub fn with_write_buffer(mut self, bytes: u64) -> Self {
        self.buffer_limit = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// A copy-on-write view of the buffered timers for a checkpoint (they are not in RocksDB);
    /// `None` when the buffer is empty. Restore registers them again.
    pub fn buffer_snapshot(&mut self) -> Option<HeapTimersSnapshot> {
        let s = self.unwritten.snapshot();
        (!s.is_empty()).then_some(s)
    }

    /// The earliest timestamp of a key group: its cache's or its buffer's.
    fn group_head(&self, d: usize, idx: usize) -> Option<i64> {
        let cached = self.domains[d].groups[idx].cache.first().map(|e| e.0);
        cached
            .into_iter()
            .chain(self.unwritten.head_of(d, idx))
            .min()
    }

    /// Writes buffered timers to RocksDB, the latest first, until the buffer holds at most
    /// `keep` bytes (`None`: all of them): those that fire last leave, those that fire next
    /// stay.
    fn write_out(&mut self, keep: Option<u64>) -> Result<()> {
        // The latest timestamp of every non-empty (domain, key group).
        let mut latest = BinaryHeap::new();
        for d in 0..self.domains.len() {
            for idx in 0..self.domains[d].groups.len() {
                if let Some(ts) = self.unwritten.tail_of(d, idx) {
                    latest.push((ts, d, idx));
                }
            }
        }
        while keep.is_none_or(|k| self.unwritten.heap_bytes() > k) {
            let Some((_, d, idx)) = latest.pop() else {
                break;
            };
            let kg = *self.range.start() + idx as KeyGroup;
            let old = self.group_head(d, idx);
            let Some((ts, timers)) = self.unwritten.pop_last_bucket(d, idx) else {
                continue;
            };
            self.horizon[d] = Some(self.horizon[d].map_or(ts, |h| h.min(ts)));
            for p in timers {
                self.domains[d].groups[idx].admit(ts, &p, self.cache_size);
                key_format::encode_db_key(&mut self.key, kg, self.prefix_bytes, ts, &p);
                self.buffer(d, idx, true)?;
            }
            let new = self.group_head(d, idx);
            move_head(&mut self.domains[d].heads, kg, old, new);
            if let Some(ts) = self.unwritten.tail_of(d, idx) {
                latest.push((ts, d, idx));
            }
        }
        Ok(())
    }

    /// Moves the pending point operations into the batch, sorted by (domain, key).
    fn drain_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let keys = &self.pending_keys;
        let key = |&(_, a, b, _): &(u8, u32, u32, bool)| &keys[a as usize..b as usize];
        self.pending
            .sort_by(|x, y| x.0.cmp(&y.0).then_with(|| key(x).cmp(key(y))));
        for d in 0..self.domains.len() {
            let from = self.pending.partition_point(|op| usize::from(op.0) < d);
            let to = self.pending.partition_point(|op| usize::from(op.0) <= d);
            if from == to {
                continue;
            }
            let cf = self
                .db
                .cf_handle(&self.domains[d].cf)
                .ok_or_else(|| TimerError::MissingColumnFamily(self.domains[d].cf.clone()))?;
            for op in &self.pending[from..to] {
                if op.3 {
                    self.batch.put_cf(&cf, key(op), []);
                } else {
                    self.batch.delete_cf(&cf, key(op));
                }
            }
        }
        self.pending.clear();
        self.pending_keys.clear();
        Ok(())
    }

    fn write_batch(&mut self) -> Result<()> {
        self.drain_pending()?;
        if self.batch_ops > 0 {
            let batch = std::mem::take(&mut self.batch);
            self.batch_ops = 0;
            self.db
                .write_opt(&batch, &self.write_opts)
                .map_err(TimerError::rocks("write batch"))?;
        }
        Ok(())
    }

    /// Deletes the fired timers of a key group, `[prefix, low]`, with one range tombstone.
    fn delete_garbage(&mut self, d: usize, idx: usize) -> Result<()> {
        let kg = *self.range.start() + idx as KeyGroup;
        let g = &mut self.domains[d].groups[idx];
        if g.garbage == 0 || !g.low_fired {
            return Ok(());
        }
        g.garbage = 0;
        let (from, _) = key_format::key_group_bounds(kg, self.prefix_bytes);
        let mut to = g.low.clone();
        to.push(0); // the smallest key above `low`
        // Pending operations precede the range delete.
        self.drain_pending()?;
        let cf = self
            .db
            .cf_handle(&self.domains[d].cf)
            .ok_or_else(|| TimerError::MissingColumnFamily(self.domains[d].cf.clone()))?;
        self.batch.delete_range_cf(&cf, from, to);
        drop(cf);
        self.batch_ops += 1;
        Ok(())
    }

    fn buffer(&mut self, d: usize, idx: usize, put: bool) -> Result<()> {
        if put {
            let g = &self.domains[d].groups[idx];
            if !g.low.is_empty() && self.key <= g.low {
                // A timer at or below fired ones: delete those first (the range delete goes
                // into the batch before this put), then it is the new low.
                self.delete_garbage(d, idx)?;
                let g = &mut self.domains[d].groups[idx];
                g.low.clear();
                g.low.extend_from_slice(&self.key);
                g.low_fired = false;
            }
        }
        let start = self.pending_keys.len() as u32;
        self.pending_keys.extend_from_slice(&self.key);
        self.pending
            .push((d as u8, start, self.pending_keys.len() as u32, put));
        self.batch_ops += 1;
        if self.batch_ops >= BATCH_OPS {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Buffers a put or delete of the timer (`timestamp`, `self.payload`) of key group index
    /// `idx`.
    fn buffer_payload(&mut self, d: usize, idx: usize, timestamp: i64, put: bool) -> Result<()> {
        let kg = *self.range.start() + idx as KeyGroup;
        key_format::encode_db_key(
            &mut self.key,
            kg,
            self.prefix_bytes,
            timestamp,
            &self.payload,
        );
        self.buffer(d, idx, put)
    }

    /// Reloads the cache of one key group from RocksDB (one bounded scan) and updates the heads
    /// index.
    fn load(&mut self, d: usize, idx: usize) -> Result<()> {
        let old = self.group_head(d, idx);
        self.scan_into_cache(d, idx)?;
        let new = self.group_head(d, idx);
        let kg = *self.range.start() + idx as KeyGroup;
        move_head(&mut self.domains[d].heads, kg, old, new);
        Ok(())
    }

    /// Reloads the cache of one key group from RocksDB (one bounded scan); the caller updates
    /// the heads index.
    fn scan_into_cache(&mut self, d: usize, idx: usize) -> Result<()> {
        self.write_batch()?;
        let kg = *self.range.start() + idx as KeyGroup;
        let (mut lower, upper) = key_format::key_group_bounds(kg, self.prefix_bytes);
        let dom = &mut self.domains[d];
        if !dom.groups[idx].low.is_empty() {
            lower.clone_from(&dom.groups[idx].low);
        }
        let cf = self
            .db
            .cf_handle(&dom.cf)
            .ok_or_else(|| TimerError::MissingColumnFamily(dom.cf.clone()))?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        // Timers are read once and deleted soon after: keep them out of the block cache's
        // hot part.
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(&lower);
        let g = &mut dom.groups[idx];
        g.cache.clear();
        let mut complete = true;
        while it.valid() {
            if g.cache.len() == self.cache_size {
                complete = false;
                break;
            }
            let Some(k) = it.key() else { break };
            if g.low_fired && k == &g.low[..] {
                it.next();
                continue;
            }
            let (_, ts, payload) =
                key_format::decode_db_key(k, self.prefix_bytes).ok_or_else(|| {
                    TimerError::Corrupt {
                        what: dom.cf.clone(),
                        reason: format!("key {k:02x?} does not follow the timer layout"),
                    }
                })?;
            g.cache.insert((ts, payload.into()));
            it.next();
        }
        it.status().map_err(TimerError::rocks("scan timers"))?;
        g.complete = complete;
        if !g.loaded {
            g.loaded = true;
            dom.unloaded -= 1;
        }
        Ok(())
    }

    fn load_all(&mut self, d: usize) -> Result<()> {
        if self.domains[d].unloaded == 0 {
            return Ok(());
        }
        for idx in 0..self.domains[d].groups.len() {
            if !self.domains[d].groups[idx].loaded {
                self.load(d, idx)?;
            }
        }
        Ok(())
    }
}

fn move_head(
    heads: &mut BTreeSet<(i64, KeyGroup)>,
    kg: KeyGroup,
    old: Option<i64>,
    new: Option<i64>,
) {
    if old != new {
        if let Some(o) = old {
            heads.remove(&(o, kg));
        }
        if let Some(n) = new {
            heads.insert((n, kg));
        }
    }
}

impl RocksDbTimers {
    /// The common start of `register` and `delete`: checks the key group, loads its cached
    /// head on first use and encodes the payload into `self.payload`. Returns (domain index,
    /// key-group index).
    fn prepare(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<(usize, usize)> {
        let idx = check_key_group(&self.range, key_group)?;
        let d = domain.index();
        if !self.domains[d].groups[idx].loaded {
            self.load(d, idx)?;
        }
        key_format::encode_payload(&mut self.payload, key, namespace);
        Ok((d, idx))
    }
}

impl TimerService for RocksDbTimers {
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
        let (d, idx) = self.prepare(domain, key_group, key, namespace)?;
        let old = self.group_head(d, idx);
        let g = &mut self.domains[d].groups[idx];
        if self.horizon[d].is_some() && self.unwritten.heap_bytes() < self.buffer_limit as u64 / 4 {
            self.horizon[d] = None;
        }
        let buffered = self.buffer_limit > 0 && self.horizon[d].is_none_or(|h| timestamp < h);
        if buffered {
            if g.covers(timestamp, &self.payload)
                && !g.cache.is_empty()
                && g.cache
                    .contains(&(timestamp, self.payload.as_slice().into()))
            {
                return Ok(()); // in RocksDB already
            }
            self.unwritten
                .insert_payload(d, idx, timestamp, &self.payload);
            // A registration can only lower the key group's head.
            let new = Some(old.map_or(timestamp, |o| o.min(timestamp)));
            move_head(&mut self.domains[d].heads, key_group, old, new);
            if self.unwritten.heap_bytes() > self.buffer_limit as u64 {
                // Full: the latest quarter leaves (evicting by timestamp keeps what fires next;
                // evicting half, alternated with this in benches/timers: windows 0.27-0.30 vs
                // 0.39-0.40 of heap at ratio 0.1, spread 0.51-0.60 vs 0.59-0.63 at 0.2).
                self.write_out(Some(self.buffer_limit as u64 / 4 * 3))?;
            }
            return Ok(());
        }
        if !g.admit(timestamp, &self.payload, self.cache_size) {
            return Ok(()); // exists: no write
        }
        let new = self.group_head(d, idx);
        move_head(&mut self.domains[d].heads, key_group, old, new);
        self.buffer_payload(d, idx, timestamp, true)
    }

    fn delete(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        let (d, idx) = self.prepare(domain, key_group, key, namespace)?;
        let old = self.group_head(d, idx);
        self.unwritten
            .remove_payload(d, idx, timestamp, &self.payload);
        let g = &mut self.domains[d].groups[idx];
        let in_cache_range = g.covers(timestamp, &self.payload);
        let entry: Entry = (timestamp, self.payload.as_slice().into());
        // Within the cache's range the cache tells whether RocksDB holds the timer; beyond it,
        // RocksDB may (also when the buffer held it), so the delete is written.
        let in_rocksdb = !in_cache_range || g.cache.remove(&entry);
        let refill = in_cache_range && in_rocksdb && g.cache.is_empty() && !g.complete;
        if in_rocksdb {
            self.buffer_payload(d, idx, timestamp, false)?;
        }
        if refill {
            self.scan_into_cache(d, idx)?;
        }
        let new = self.group_head(d, idx);
        move_head(&mut self.domains[d].heads, key_group, old, new);
        Ok(())
    }

    fn peek(&mut self, domain: TimeDomain) -> Result<Option<i64>> {
        let d = domain.index();
        self.load_all(d)?;
        Ok(self.domains[d].heads.first().map(|h| h.0))
    }

    fn poll(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool> {
        let d = domain.index();
        self.load_all(d)?;
        let Some(&(head, kg)) = self.domains[d].heads.first() else {
            return Ok(false);
        };
        if head > up_to {
            return Ok(false);
        }
        let idx = usize::from(kg - self.range.start());
        // The earliest timer is the cache's or the buffer's; equal: RocksDB holds a buffered
        // timer too (see the module doc), and it fires once.
        let (from_cache, from_buffer) = {
            let cached = self.domains[d].groups[idx].cache.first();
            match (cached, self.unwritten.first_of(d, idx)) {
                (Some(c), Some(b)) => match (c.0, &c.1[..]).cmp(&b) {
                    std::cmp::Ordering::Less => (true, false),
                    std::cmp::Ordering::Greater => (false, true),
                    std::cmp::Ordering::Equal => (true, true),
                },
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, true),
                (None, None) => {
                    self.domains[d].heads.remove(&(head, kg));
                    return Ok(false);
                }
            }
        };
        let buffered = if from_buffer {
            self.unwritten.pop_of(d, idx)
        } else {
            None
        };
        if from_cache {
            let g = &mut self.domains[d].groups[idx];
            let Some((ts, payload)) = g.cache.pop_first() else {
                return Ok(false);
            };
            let refill = g.cache.is_empty() && !g.complete;
            out.fill(domain, ts, kg, &payload, &self.domains[d].cf)?;
            key_format::encode_db_key(&mut self.key, kg, self.prefix_bytes, ts, &payload);
            // The popped timer was the key group's smallest live one in RocksDB: it becomes
            // garbage below `low`, deleted in bulk later (no tombstone per firing).
            let g = &mut self.domains[d].groups[idx];
            g.low.clear();
            g.low.extend_from_slice(&self.key);
            g.low_fired = true;
            g.garbage += 1;
            if g.garbage >= self.garbage_per_range_delete {
                self.delete_garbage(d, idx)?;
            }
            if refill {
                self.scan_into_cache(d, idx)?;
            }
        } else if let Some((ts, payload)) = &buffered {
            // Never written: nothing to delete, and `low` stays (RocksDB's fired timers are
            // still all below it).
            out.fill(domain, *ts, kg, payload, &self.domains[d].cf)?;
        }
        let new = self.group_head(d, idx);
        move_head(&mut self.domains[d].heads, kg, Some(head), new);
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        for d in 0..self.domains.len() {
            for idx in 0..self.domains[d].groups.len() {
                self.delete_garbage(d, idx)?;
            }
        }
        self.write_batch()
    }

    fn heap_bytes(&self) -> u64 {
        self.unwritten.heap_bytes()
    }

    /// Counts by a scan of RocksDB, after writing out the write-back buffer (so buffered
    /// timers that RocksDB holds too count once).
    fn count(&mut self, domain: TimeDomain) -> Result<u64> {
        self.write_out(None)?;
        self.flush()?;
        let dom = &self.domains[domain.index()];
        let cf = self
            .db
            .cf_handle(&dom.cf)
            .ok_or_else(|| TimerError::MissingColumnFamily(dom.cf.clone()))?;
        let (lower, _) = key_format::key_group_bounds(*self.range.start(), self.prefix_bytes);
        let (_, upper) = key_format::key_group_bounds(*self.range.end(), self.prefix_bytes);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(&lower);
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status().map_err(TimerError::rocks("count timers"))?;
        Ok(n)
    }
}
