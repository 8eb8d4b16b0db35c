//! The write-back state cache in front of a slot's RocksDB.
//!
//! Flink's RocksDB backend sends every state access through JNI, the serializer and RocksDB (a
//! memtable and block-cache lookup for a read, a memtable insert for a write): ~7 µs per
//! read-modify-write on these machines, ~10x its heap backend. This cache keeps the hot entries of
//! a slot in memory, as Kafka Streams' record cache and RisingWave's executor caches do,
//! while RocksDB holds the rest.
//!
//! ## What it holds
//! One entry per RocksDB key (state id + `[kg][key][ns]` composite, plus the user key for map
//! state), in one of four states:
//! - **clean value**: RocksDB holds the same bytes (cached on a read miss or after a flush);
//! - **clean absent**: RocksDB holds nothing (a negative entry, cached on a read miss);
//! - **dirty value / dirty tombstone**: a put or a delete RocksDB has not seen yet;
//! - **dirty delta**: list elements appended while the list itself was not cached; flushed as a
//!   RocksDB merge (the list merge operator appends), so `add` never reads.
//!
//! Entries are **serialized bytes**, not decoded values. Measured with `cairn bench cache` (the
//! "codec" line of benches/RESULTS.md): postcard encode + decode of the update job's counter
//! costs 23-53 ns, 2-6 % of a cached read-modify-write through the typed handle (0.6-1.4 µs
//! including its share of write-back), so decoded values could save at most that. Bytes keep the
//! rest simple and exact: the backend trait stays raw bytes (typed handles, the raw `Slot` API and
//! host engines take one path), an entry's size is known for the budget (accounted 72 bytes per
//! counter entry against 74 bytes of measured RSS growth), a write-back writes the bytes as they
//! are, and scans compare keys as RocksDB does. Decoded values would need a type-erased
//! `Box<dyn Any>` per entry (one more allocation and a downcast per access), a size estimate per
//! type, and an encode at every write-back anyway.
//!
//! ## Structure
//! A slab of entries (`key ++ value` in one allocation each), a `hashbrown::HashTable` of slab
//! indices for point lookups, and, for map states only, a sorted set of the cached keys so that
//! `entries()` of one (key, namespace) reads a narrow range. Eviction is CLOCK (a reference bit
//! per entry, one sweeping hand): LRU-like for skewed access at 1 bit instead of two list
//! pointers per entry.
//!
//! ## Memory
//! An entry counts `ENTRY_OVERHEAD` bytes (slab slot with up to `INLINE_BYTES` of key and value
//! inline, hash bucket), plus its heap buffer when key and value do not fit inline, plus, for map
//! state, its sorted-set copy; the capacity is
//! `memory.state-cache-ratio` of the slot budget, taken out of the block cache and write-buffer
//! manager. When a put or insert takes the cache past its capacity, the CLOCK hand evicts down to
//! `capacity - capacity / EVICT_SLACK_DIVISOR`, and the dirty entries among the evicted are
//! written to RocksDB in one `WriteBatch` before the call returns, so a later read of an evicted
//! key finds it in RocksDB.
//!
//! ## Dirty bound and checkpoints
//! When the dirty bytes pass `state-cache.max-dirty-ratio` of the capacity, a second hand writes
//! dirty entries (one `WriteBatch`) until half of that is left, and they stay cached as clean
//! entries. The checkpoint's sync phase writes every dirty entry before RocksDB's native
//! checkpoint, so the dirty bound is what bounds that flush (the stall). This runs on the slot's
//! thread between records, like RisingWave's mem-table spill, rather than on a thread of its own:
//! the entries would otherwise need locking on every access.
//!
//! Every write-back (eviction, dirty bound, pre-flush drain, full flush) lets go of its entries
//! as it hands their writes out: they are clean, evicted or dropped before the caller has
//! committed them. A caller that cannot commit them must stop using the cache; the RocksDB
//! backend poisons itself (see its module doc).
//!
//! ## Scans
//! Map iteration and key-group scans merge the cached entries of the range (sorted) with a
//! RocksDB iterator: on an equal key the cache wins, a tombstone hides the stored entry and a
//! delta is appended to the stored list (Kafka Streams' merged iterator). A map `clear` drops the
//! cached entries of its (key, namespace) and deletes the stored ones.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashTable;
use serde::Serialize;
use smallvec::SmallVec;

use crate::backend::StateId;

/// Bytes counted per entry: the 48-byte slab slot (key and value inline up to [`INLINE_BYTES`]),
/// its hash bucket (4-byte index + control byte, at a load between 7/16 and 7/8: 6-11 bytes) and
/// the slack of slab and table, which grow by doubling. `cairn bench cache` measured 74 bytes of
/// RSS growth per entry while filling 1M counter entries, growth transients included.
pub const ENTRY_OVERHEAD: u64 = 72;
/// Key + value bytes kept inside the slab slot.
pub const INLINE_BYTES: usize = 24;
/// Bytes counted per heap buffer beyond its capacity (allocator header and rounding).
pub const HEAP_BUFFER_OVERHEAD: u64 = 16;
/// Bytes counted per map-state entry for its copy in the sorted key set (B-tree node share and
/// the copy's allocation header), beyond the key bytes themselves.
pub const MAP_INDEX_OVERHEAD: u64 = 48;
/// Eviction frees this fraction of the capacity beyond what is needed (1/256), so that evictions
/// write their dirty entries in batches rather than one per put.
pub const EVICT_SLACK_DIVISOR: u64 = 256;

const OCCUPIED: u8 = 1;
const REFERENCED: u8 = 2;
const DIRTY: u8 = 4;
const TOMBSTONE: u8 = 8;
const DELTA: u8 = 16;
/// Chosen by the CLOCK hand in the current eviction round.
const EVICTING: u8 = 32;
/// Has a copy of its index in the dirty queue (every dirty entry has).
const QUEUED: u8 = 64;
/// Scratch bit of the queue compaction.
const SEEN: u8 = 128;

/// A write the cache hands to RocksDB (the backend turns it into a `WriteBatch` entry).
#[derive(Debug, PartialEq, Eq)]
pub enum CacheWrite<'a> {
    /// Put `value` at `key`.
    Put(StateId, &'a [u8], &'a [u8]),
    /// Delete `key`.
    Delete(StateId, &'a [u8]),
    /// Merge (list append) encoded elements into `key`.
    Merge(StateId, &'a [u8], &'a [u8]),
}

/// What the cache knows about a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// The current value.
    Value(&'a [u8]),
    /// The key has no value.
    Absent,
    /// Encoded list elements appended to whatever RocksDB holds.
    Delta(&'a [u8]),
}

impl Cached<'_> {
    fn owned(&self) -> CachedOwned {
        match self {
            Cached::Value(v) => CachedOwned::Value(v.to_vec()),
            Cached::Absent => CachedOwned::Absent,
            Cached::Delta(d) => CachedOwned::Delta(d.to_vec()),
        }
    }
}

/// [`Cached`], copied out for scans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachedOwned {
    /// The current value.
    Value(Vec<u8>),
    /// The key has no value.
    Absent,
    /// Encoded list elements appended to whatever RocksDB holds.
    Delta(Vec<u8>),
}

/// Counters of one slot's cache, for `cairn run`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes held now (entries + overhead).
    pub bytes: u64,
    /// Bytes of dirty entries now.
    pub dirty_bytes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
    /// Dirty entries written to RocksDB because they were evicted.
    pub evicted_dirty: u64,
    /// Rounds of writing dirty entries because the dirty bound was passed.
    pub dirty_flushes: u64,
    /// Entries written by those rounds.
    pub dirty_flushed_entries: u64,
    /// Entries written by full flushes (checkpoint sync phases and `Slot::flush`).
    pub checkpoint_flushed_entries: u64,
    /// Entries written by pre-flush drains (before a checkpoint's barrier).
    pub pre_flushed_entries: u64,
    /// Pending writes dropped because the key was deleted before its write-back while RocksDB
    /// held nothing for it (a window's count created and cleared within the dirty bound).
    pub writes_cancelled: u64,
    /// Duration of each checkpoint's sync-phase cache flush, in µs, in checkpoint order.
    pub checkpoint_flush_us: Vec<u64>,
    /// Duration of each pre-flush write-back (on the slot's thread when it sees a barrier
    /// ahead; `checkpoint.pre-flush`), in µs: the other pause a checkpoint costs the slot.
    pub pre_flush_us: Vec<u64>,
}

impl CacheStats {
    /// `hits / (hits + misses)`, 0 without reads.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }

    /// Adds another slot's counters (checkpoint flush times are appended).
    pub fn add(&mut self, o: &CacheStats) {
        self.capacity_bytes += o.capacity_bytes;
        self.bytes += o.bytes;
        self.dirty_bytes += o.dirty_bytes;
        self.entries += o.entries;
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.evicted_dirty += o.evicted_dirty;
        self.dirty_flushes += o.dirty_flushes;
        self.dirty_flushed_entries += o.dirty_flushed_entries;
        self.checkpoint_flushed_entries += o.checkpoint_flushed_entries;
        self.pre_flushed_entries += o.pre_flushed_entries;
        self.writes_cancelled += o.writes_cancelled;
        self.checkpoint_flush_us
            .extend_from_slice(&o.checkpoint_flush_us);
        self.pre_flush_us.extend_from_slice(&o.pre_flush_us);
    }
}

struct Entry {
    /// `key ++ value`, inline up to [`INLINE_BYTES`] (the update job's counters: no allocation
    /// and one cache miss less per lookup), else on the heap.
    buf: SmallVec<[u8; INLINE_BYTES]>,
    key_len: u32,
    state: StateId,
    flags: u8,
    /// RocksDB holds nothing for this key (known from a read that found nothing, or from a
    /// written-back delete), so deleting a pending value needs no write at all.
    unstored: bool,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.buf[..self.key_len as usize]
    }
    fn value(&self) -> &[u8] {
        &self.buf[self.key_len as usize..]
    }
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    fn cached(&self) -> Cached<'_> {
        if self.has(TOMBSTONE) {
            Cached::Absent
        } else if self.has(DELTA) {
            Cached::Delta(self.value())
        } else {
            Cached::Value(self.value())
        }
    }
    /// The write that makes RocksDB agree with a dirty entry.
    fn write(&self) -> CacheWrite<'_> {
        if self.has(TOMBSTONE) {
            CacheWrite::Delete(self.state, self.key())
        } else if self.has(DELTA) {
            CacheWrite::Merge(self.state, self.key(), self.value())
        } else {
            CacheWrite::Put(self.state, self.key(), self.value())
        }
    }
}

/// The cache of one slot. See the module doc.
pub struct StateCache {
    table: HashTable<u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    hasher: foldhash::fast::FixedState,
    /// Sorted cached keys of each map state (`None` for other kinds), by state id.
    map_keys: Vec<Option<BTreeSet<Box<[u8]>>>>,
    hand: usize,
    /// Slab indices of dirty entries, oldest first (a written or evicted entry's index stays
    /// behind until popped; a popped index counts only when its entry is `QUEUED`).
    dirty_queue: VecDeque<u32>,
    /// The entry of the last lookup: a read-modify-write's put finds it without hashing.
    last: usize,
    /// A pre-flush drain: the slab indices of the entries dirty when it began, sorted by key
    /// (so that its chunks reach RocksDB's memtable in key order, as one sorted batch would),
    /// and the next position. They stay in the dirty queue, so a full flush still finds them.
    drain: Vec<usize>,
    drain_pos: usize,
    capacity: u64,
    max_dirty: u64,
    bytes: u64,
    dirty_bytes: u64,
    stats: CacheStats,
}

impl StateCache {
    /// A cache of `capacity` bytes that starts writing dirty entries at `max_dirty` dirty bytes.
    pub fn new(capacity: u64, max_dirty: u64) -> Self {
        Self {
            table: HashTable::new(),
            entries: Vec::new(),
            free: Vec::new(),
            hasher: foldhash::fast::FixedState::with_seed(0xca1e_cac4e),
            map_keys: Vec::new(),
            hand: 0,
            dirty_queue: VecDeque::new(),
            last: usize::MAX,
            drain: Vec::new(),
            drain_pos: 0,
            capacity,
            max_dirty: max_dirty.min(capacity),
            bytes: 0,
            dirty_bytes: 0,
            stats: CacheStats {
                capacity_bytes: capacity,
                ..CacheStats::default()
            },
        }
    }

    /// Registers state `id`; map states get a sorted key set for range reads.
    pub fn register_state(&mut self, id: StateId, is_map: bool) {
        let i = id as usize;
        if self.map_keys.len() <= i {
            self.map_keys.resize_with(i + 1, || None);
        }
        if is_map {
            self.map_keys[i] = Some(BTreeSet::new());
        }
    }

    /// The counters, with the current sizes.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bytes: self.bytes,
            dirty_bytes: self.dirty_bytes,
            entries: (self.entries.len() - self.free.len()) as u64,
            ..self.stats.clone()
        }
    }

    /// Bytes held (the figure the memory report shows).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of dirty entries.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes
    }

    /// Records the duration of a checkpoint's cache flush.
    pub fn record_checkpoint_flush(&mut self, took: Duration) {
        self.stats.checkpoint_flush_us.push(took.as_micros() as u64);
    }

    /// Records the duration of a pre-flush write-back.
    pub fn record_pre_flush(&mut self, took: Duration) {
        self.stats.pre_flush_us.push(took.as_micros() as u64);
    }

    fn hash(&self, state: StateId, key: &[u8]) -> u64 {
        self.hasher.hash_one((state, key))
    }

    fn find(&self, hash: u64, state: StateId, key: &[u8]) -> Option<usize> {
        let entries = &self.entries;
        self.table
            .find(hash, |&i| {
                let e = &entries[i as usize];
                e.state == state && e.key() == key
            })
            .map(|&i| i as usize)
    }

    /// Entry `i` of `state`/`key`: the last one looked up, else a hash lookup.
    fn locate(&mut self, state: StateId, key: &[u8]) -> Option<usize> {
        if let Some(e) = self.entries.get(self.last)
            && e.has(OCCUPIED)
            && e.state == state
            && e.key() == key
        {
            return Some(self.last);
        }
        let found = self.find(self.hash(state, key), state, key);
        if let Some(i) = found {
            self.last = i;
        }
        found
    }

    fn size_of(&self, e: &Entry) -> u64 {
        let mut size = ENTRY_OVERHEAD;
        if e.buf.spilled() {
            size += e.buf.capacity() as u64 + HEAP_BUFFER_OVERHEAD;
        }
        if self.is_map(e.state) {
            size += e.key_len as u64 + MAP_INDEX_OVERHEAD;
        }
        size
    }

    fn is_map(&self, state: StateId) -> bool {
        matches!(self.map_keys.get(state as usize), Some(Some(_)))
    }

    /// Looks `key` up, marking it recently used; counts a hit, or a miss when the caller must
    /// read RocksDB (not cached, or a list delta without its base).
    pub fn get(&mut self, state: StateId, key: &[u8]) -> Option<Cached<'_>> {
        match self.locate(state, key) {
            Some(i) => {
                let e = &mut self.entries[i];
                e.flags |= REFERENCED;
                if e.has(DELTA) {
                    self.stats.misses += 1;
                } else {
                    self.stats.hits += 1;
                }
                Some(self.entries[i].cached())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Looks `key` up without touching counters or reference bits (scans, tests).
    pub fn peek(&self, state: StateId, key: &[u8]) -> Option<Cached<'_>> {
        let h = self.hash(state, key);
        self.find(h, state, key).map(|i| self.entries[i].cached())
    }

    /// Caches what RocksDB returned for a missed read; a no-op when the key is cached meanwhile.
    pub fn insert_clean(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) {
        let h = self.hash(state, key);
        if self.find(h, state, key).is_some() {
            return;
        }
        let (v, flags) = match value {
            Some(v) => (v, 0),
            None => (&[][..], TOMBSTONE),
        };
        self.insert_new(h, state, key, v, flags, value.is_none());
    }

    /// Sets `key` to `value` (dirty).
    pub fn put(&mut self, state: StateId, key: &[u8], value: &[u8]) {
        self.upsert(state, key, value, DIRTY);
    }

    /// Deletes `key` (a dirty tombstone). A key known to be absent stays a clean negative entry,
    /// and a pending value of a key RocksDB does not hold is dropped without any write (it
    /// becomes a clean negative entry): state created and cleared between two write-backs, like
    /// a window's count that fires soon, never reaches RocksDB.
    pub fn delete(&mut self, state: StateId, key: &[u8]) {
        if let Some(i) = self.locate(state, key) {
            let e = &self.entries[i];
            if e.has(TOMBSTONE) && !e.has(DIRTY) {
                return;
            }
            if e.unstored && !e.has(DELTA) {
                if e.has(DIRTY) {
                    self.stats.writes_cancelled += 1;
                }
                self.replace(i, &[], TOMBSTONE);
                return;
            }
            self.replace(i, &[], DIRTY | TOMBSTONE);
            return;
        }
        self.insert_new(
            self.hash(state, key),
            state,
            key,
            &[],
            DIRTY | TOMBSTONE,
            false,
        );
    }

    /// Replaces a list delta by the full list (base from RocksDB + delta), dirty.
    pub fn resolve(&mut self, state: StateId, key: &[u8], full: &[u8]) {
        self.upsert(state, key, full, DIRTY);
    }

    /// Appends encoded list elements without reading: extends a cached list (or starts one on a
    /// known-absent key), or records/extends a delta.
    pub fn append(&mut self, state: StateId, key: &[u8], encoded: &[u8]) {
        let h = self.hash(state, key);
        let Some(i) = self.find(h, state, key) else {
            self.insert_new(h, state, key, encoded, DIRTY | DELTA, false);
            return;
        };
        let e = &self.entries[i];
        let mut value = if e.has(TOMBSTONE) {
            Vec::with_capacity(encoded.len())
        } else {
            e.value().to_vec()
        };
        value.extend_from_slice(encoded);
        // A delta stays a delta; a value or tombstone becomes a full (dirty) value.
        let flags = DIRTY | (e.flags & DELTA);
        self.replace(i, &value, flags);
    }

    fn upsert(&mut self, state: StateId, key: &[u8], value: &[u8], flags: u8) {
        match self.locate(state, key) {
            Some(i) => self.replace(i, value, flags),
            None => self.insert_new(self.hash(state, key), state, key, value, flags, false),
        }
    }

    /// Replaces entry `i`'s value and state flags, keeping its key and reference bit (and what
    /// RocksDB holds: only a write-back changes that).
    fn replace(&mut self, i: usize, value: &[u8], flags: u8) {
        let old_size = self.size_of(&self.entries[i]);
        let was_dirty = self.entries[i].has(DIRTY);
        let e = &mut self.entries[i];
        let k = e.key_len as usize;
        if e.buf.len() - k == value.len() {
            e.buf[k..].copy_from_slice(value);
        } else {
            e.buf.truncate(k);
            e.buf.extend_from_slice(value);
            // A value that shrank back gives its heap buffer up.
            if e.buf.spilled() && e.buf.len() <= INLINE_BYTES {
                e.buf.shrink_to_fit();
            }
        }
        // A clean entry leaves the dirty queue (its stale index there is skipped when popped).
        let queued = if flags & DIRTY != 0 {
            e.flags & QUEUED
        } else {
            0
        };
        e.flags = OCCUPIED | REFERENCED | flags | queued;
        let new_size = self.size_of(&self.entries[i]);
        self.bytes = self.bytes - old_size + new_size;
        if was_dirty {
            self.dirty_bytes -= old_size;
        }
        if flags & DIRTY != 0 {
            self.dirty_bytes += new_size;
            self.enqueue(i);
        }
    }

    /// Puts a dirty entry's index into the dirty queue unless it is there already.
    fn enqueue(&mut self, i: usize) {
        let e = &mut self.entries[i];
        if !e.has(QUEUED) {
            e.flags |= QUEUED;
            self.dirty_queue.push_back(i as u32);
            if self.dirty_queue.len() > 64 + 2 * self.entries.len() {
                self.compact_queue();
            }
        }
    }

    /// Drops the stale and duplicate indices that evictions leave in the dirty queue, keeping
    /// the order of the rest (bounds the queue by twice the slab).
    fn compact_queue(&mut self) {
        let entries = &mut self.entries;
        self.dirty_queue.retain(|&i| {
            let e = &mut entries[i as usize];
            let keep = e.has(QUEUED) && !e.has(SEEN);
            e.flags |= SEEN;
            keep
        });
        for &i in &self.dirty_queue {
            self.entries[i as usize].flags &= !SEEN;
        }
    }

    fn insert_new(
        &mut self,
        h: u64,
        state: StateId,
        key: &[u8],
        value: &[u8],
        flags: u8,
        unstored: bool,
    ) {
        let mut buf = SmallVec::with_capacity(key.len() + value.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        let entry = Entry {
            buf,
            key_len: key.len() as u32,
            state,
            flags: OCCUPIED | REFERENCED | flags,
            unstored,
        };
        let size = self.size_of(&entry);
        if let Some(Some(set)) = self.map_keys.get_mut(state as usize) {
            set.insert(key.into());
        }
        let idx = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table.insert_unique(h, idx, |&i| {
            let e = &entries[i as usize];
            hasher.hash_one((e.state, e.key()))
        });
        self.bytes += size;
        if flags & DIRTY != 0 {
            self.dirty_bytes += size;
            self.enqueue(idx as usize);
        }
    }

    /// Drops entry `i` without writing it.
    fn remove(&mut self, i: usize) {
        let size = self.size_of(&self.entries[i]);
        let e = &self.entries[i];
        let (state, dirty) = (e.state, e.has(DIRTY));
        let h = self.hasher.hash_one((state, e.key()));
        if let Ok(found) = self.table.find_entry(h, |&j| j as usize == i) {
            found.remove();
        }
        if let Some(Some(set)) = self.map_keys.get_mut(state as usize) {
            set.remove(self.entries[i].key());
        }
        self.bytes -= size;
        if dirty {
            self.dirty_bytes -= size;
        }
        let e = &mut self.entries[i];
        e.buf = SmallVec::new();
        e.flags = 0;
        self.free.push(i as u32);
    }

    /// Whether a put or insert left work for [`StateCache::maintain`] (cheap: call it after
    /// every write).
    pub fn needs_maintenance(&self) -> bool {
        self.bytes > self.capacity || self.dirty_bytes > self.max_dirty
    }

    /// Evicts down to the capacity (with slack) and, past the dirty bound, writes dirty entries
    /// down to half of it; every write RocksDB must see goes to `out`, which the caller must
    /// apply before the next read (or stop using the cache: see the module doc).
    pub fn maintain(&mut self, out: &mut dyn FnMut(CacheWrite<'_>)) {
        if self.bytes > self.capacity {
            self.evict(out);
        }
        if self.dirty_bytes > self.max_dirty {
            self.stats.dirty_flushes += 1;
            self.flush_dirty(self.max_dirty / 2, out);
        }
    }

    fn evict(&mut self, out: &mut dyn FnMut(CacheWrite<'_>)) {
        let target = self
            .capacity
            .saturating_sub(self.capacity / EVICT_SLACK_DIVISOR);
        let n = self.entries.len();
        let mut victims = Vec::new();
        let mut freed = 0;
        // Two full sweeps clear every reference bit, so this ends while anything is cached.
        let mut steps = 0;
        while self.bytes - freed > target && steps < 2 * n + 1 {
            steps += 1;
            if self.hand >= n {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let e = &mut self.entries[i];
            if !e.has(OCCUPIED) || e.has(EVICTING) {
                continue;
            }
            if e.has(REFERENCED) {
                e.flags &= !REFERENCED;
                continue;
            }
            e.flags |= EVICTING;
            victims.push(i);
            freed += self.size_of(&self.entries[i]);
        }
        let mut dirty: Vec<usize> = victims
            .iter()
            .copied()
            .filter(|&i| self.entries[i].has(DIRTY))
            .collect();
        self.sort_by_key(&mut dirty);
        for &i in &dirty {
            out(self.entries[i].write());
        }
        self.stats.evicted_dirty += dirty.len() as u64;
        self.stats.evictions += victims.len() as u64;
        for i in victims {
            self.remove(i);
        }
    }

    /// Sorts slab indices by (state, key): RocksDB's memtable skip list inserts a sorted batch
    /// much faster than a random one (it keeps the previous insert's position). Sorts on the
    /// keys' first 16 bytes as integers (one memory access per entry instead of two per
    /// comparison), then orders ties by the full key.
    fn sort_by_key(&self, idx: &mut [usize]) {
        let e = &self.entries;
        let mut keyed: Vec<(StateId, u128, usize)> = idx
            .iter()
            .map(|&i| {
                let k = e[i].key();
                let mut p = [0u8; 16];
                let n = k.len().min(16);
                p[..n].copy_from_slice(&k[..n]);
                (e[i].state, u128::from_be_bytes(p), i)
            })
            .collect();
        keyed.sort_unstable();
        let mut start = 0;
        while start < keyed.len() {
            let (s0, p0, _) = keyed[start];
            let mut end = start + 1;
            while end < keyed.len() && keyed[end].0 == s0 && keyed[end].1 == p0 {
                end += 1;
            }
            if end - start > 1 {
                keyed[start..end].sort_by(|a, b| e[a.2].key().cmp(e[b.2].key()));
            }
            start = end;
        }
        for (slot, (_, _, i)) in idx.iter_mut().zip(keyed) {
            *slot = i;
        }
    }

    /// Writes dirty entries until at most `target` dirty bytes are left; written entries stay
    /// cached as clean (deltas are dropped: their full value is unknown).
    fn flush_dirty(&mut self, target: u64, out: &mut dyn FnMut(CacheWrite<'_>)) -> u64 {
        let mut picked = Vec::new();
        let mut left = self.dirty_bytes;
        while left > target {
            let Some(i) = self.dirty_queue.pop_front() else {
                break;
            };
            let i = i as usize;
            if self.entries[i].has(QUEUED) {
                self.entries[i].flags &= !QUEUED;
                // A drain may have written it already (it stays queued until popped).
                if self.entries[i].has(DIRTY) {
                    left = left.saturating_sub(self.size_of(&self.entries[i]));
                    picked.push(i);
                }
            }
        }
        let written = self.write_back_sorted(picked, out);
        self.stats.dirty_flushed_entries += written;
        written
    }

    /// Writes the dirty entries among `idx`, sorted by key; returns how many.
    fn write_back_sorted(
        &mut self,
        mut idx: Vec<usize>,
        out: &mut dyn FnMut(CacheWrite<'_>),
    ) -> u64 {
        self.sort_by_key(&mut idx);
        let mut written = 0;
        for i in idx {
            if self.write_back(i, out) {
                written += 1;
            }
        }
        written
    }

    /// Writes entry `i` when dirty; returns whether it did.
    fn write_back(&mut self, i: usize, out: &mut dyn FnMut(CacheWrite<'_>)) -> bool {
        let e = &self.entries[i];
        if !e.has(OCCUPIED) || !e.has(DIRTY) {
            return false;
        }
        out(e.write());
        if e.has(DELTA) {
            self.remove(i);
        } else {
            let size = self.size_of(&self.entries[i]);
            let e = &mut self.entries[i];
            e.flags &= !DIRTY;
            e.unstored = e.has(TOMBSTONE);
            self.dirty_bytes -= size;
        }
        true
    }

    /// Starts a pre-flush drain: [`StateCache::drain_step`] then writes the entries dirty now,
    /// in key order, a chunk at a time.
    pub fn begin_drain(&mut self) {
        let entries = &self.entries;
        let mut idx: Vec<usize> = self
            .dirty_queue
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| entries[i].has(QUEUED) && entries[i].has(DIRTY))
            .collect();
        self.sort_by_key(&mut idx);
        // An index can stand in the queue twice (evicted, its slot reused): the same index is
        // the same entry, so its copies are neighbours in key order; write it once.
        idx.dedup();
        self.drain = idx;
        self.drain_pos = 0;
    }

    /// Whether a drain has entries left to write.
    pub fn draining(&self) -> bool {
        self.drain_pos < self.drain.len()
    }

    /// Writes the drain's next `max` entries that are still dirty; returns how many it wrote.
    pub fn drain_step(&mut self, max: usize, out: &mut dyn FnMut(CacheWrite<'_>)) -> u64 {
        let end = self.drain_pos.saturating_add(max).min(self.drain.len());
        let mut written = 0;
        for k in self.drain_pos..end {
            let i = self.drain[k];
            if self.write_back(i, out) {
                written += 1;
            }
        }
        self.drain_pos = end;
        self.stats.pre_flushed_entries += written;
        if !self.draining() {
            self.drain = Vec::new();
            self.drain_pos = 0;
        }
        written
    }

    /// Writes every dirty entry (the checkpoint's sync phase); returns how many.
    pub fn flush_all(&mut self, out: &mut dyn FnMut(CacheWrite<'_>)) -> u64 {
        self.drain = Vec::new();
        self.drain_pos = 0;
        if self.dirty_bytes == 0 {
            return 0;
        }
        let mut dirty = Vec::new();
        while let Some(i) = self.dirty_queue.pop_front() {
            let e = &mut self.entries[i as usize];
            if e.has(QUEUED) {
                e.flags &= !QUEUED;
                dirty.push(i as usize);
            }
        }
        let written = self.write_back_sorted(dirty, out);
        debug_assert_eq!(self.dirty_bytes, 0, "every dirty entry was queued");
        self.stats.checkpoint_flushed_entries += written;
        written
    }

    /// Drops every cached entry of `state` whose key starts with `prefix`, without writing
    /// (the caller deletes the stored ones).
    pub fn remove_prefix(&mut self, state: StateId, prefix: &[u8]) {
        for i in self.indices_in(state, prefix, crate::key_format::prefix_successor(prefix)) {
            self.remove(i);
        }
    }

    /// The cached entries of `state` with keys in `[lower, upper)`, ascending by key.
    pub fn range(
        &self,
        state: StateId,
        lower: &[u8],
        upper: Option<Vec<u8>>,
    ) -> Vec<(Vec<u8>, CachedOwned)> {
        self.indices_in(state, lower, upper)
            .into_iter()
            .map(|i| {
                let e = &self.entries[i];
                (e.key().to_vec(), e.cached().owned())
            })
            .collect()
    }

    /// Slab indices of `state`'s keys in `[lower, upper)`, ascending by key: a range of the
    /// sorted set for map states, else a sweep of the slab (key-group scans are rare: savepoints,
    /// rescaling).
    fn indices_in(&self, state: StateId, lower: &[u8], upper: Option<Vec<u8>>) -> Vec<usize> {
        use std::ops::Bound;
        let in_range = |k: &[u8]| k >= lower && upper.as_deref().is_none_or(|u| k < u);
        match self.map_keys.get(state as usize) {
            Some(Some(set)) => {
                let hi = match &upper {
                    Some(u) => Bound::Excluded(&u[..]),
                    None => Bound::Unbounded,
                };
                set.range::<[u8], _>((Bound::Included(lower), hi))
                    .filter_map(|k| self.find(self.hash(state, k), state, k))
                    .collect()
            }
            _ => {
                let mut found: Vec<usize> = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.has(OCCUPIED) && e.state == state && in_range(e.key()))
                    .map(|(i, _)| i)
                    .collect();
                found.sort_by(|&a, &b| self.entries[a].key().cmp(self.entries[b].key()));
                found
            }
        }
    }
}

/// Merges a sorted store scan with the sorted cached entries of the same range: the cache wins
/// on equal keys, a tombstone hides the stored entry, a delta is appended to the stored list.
pub fn merge_sorted(
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    cached: Vec<(Vec<u8>, CachedOwned)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::cmp::Ordering;
    let mut out = Vec::with_capacity(stored.len() + cached.len());
    let mut s = stored.into_iter().peekable();
    let mut c = cached.into_iter().peekable();
    loop {
        let order = match (s.peek(), c.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((sk, _)), Some((ck, _))) => sk.cmp(ck),
        };
        let base = match order {
            Ordering::Less => {
                if let Some(kv) = s.next() {
                    out.push(kv);
                }
                continue;
            }
            Ordering::Equal => s.next().map(|(_, v)| v),
            Ordering::Greater => None,
        };
        let Some((k, cv)) = c.next() else { break };
        match cv {
            CachedOwned::Value(v) => out.push((k, v)),
            CachedOwned::Absent => {}
            CachedOwned::Delta(d) => {
                let mut v = base.unwrap_or_default();
                v.extend_from_slice(&d);
                out.push((k, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A model store the cache's writes are applied to.
    #[derive(Default)]
    struct Store(BTreeMap<(StateId, Vec<u8>), Vec<u8>>);

    impl Store {
        fn apply(&mut self, w: CacheWrite<'_>) {
            match w {
                CacheWrite::Put(s, k, v) => {
                    self.0.insert((s, k.to_vec()), v.to_vec());
                }
                CacheWrite::Delete(s, k) => {
                    self.0.remove(&(s, k.to_vec()));
                }
                CacheWrite::Merge(s, k, v) => {
                    self.0
                        .entry((s, k.to_vec()))
                        .or_default()
                        .extend_from_slice(v);
                }
            }
        }
    }

    /// A value created on a key RocksDB does not hold and deleted before its write-back never
    /// reaches RocksDB; once written back, the delete must be written.
    #[test]
    fn deleting_an_unstored_value_writes_nothing() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        let mut writes = Vec::new();
        let mut record = |w: CacheWrite<'_>| writes.push(format!("{w:?}"));
        // Read miss (RocksDB holds nothing), put, update, delete: no write at all.
        c.insert_clean(0, b"fresh", None);
        assert_eq!(c.get(0, b"fresh"), Some(Cached::Absent));
        c.put(0, b"fresh", b"1");
        c.put(0, b"fresh", b"2");
        c.delete(0, b"fresh");
        assert_eq!(c.get(0, b"fresh"), Some(Cached::Absent));
        assert_eq!(c.dirty_bytes(), 0);
        assert_eq!(c.stats().writes_cancelled, 1);
        // A blind put (RocksDB may hold the key): the delete must be written.
        c.put(0, b"blind", b"1");
        c.delete(0, b"blind");
        // Written back, then deleted: RocksDB holds the value, so the delete is written...
        c.insert_clean(0, b"old", None);
        c.put(0, b"old", b"1");
        assert_eq!(c.flush_all(&mut record), 2);
        c.delete(0, b"old");
        // ...and once that tombstone is written back, a new value deleted again writes nothing.
        assert_eq!(c.flush_all(&mut record), 1);
        c.put(0, b"old", b"2");
        c.delete(0, b"old");
        assert_eq!(c.flush_all(&mut record), 0);
        assert_eq!(
            writes,
            [
                r#"Delete(0, [98, 108, 105, 110, 100])"#,
                r#"Put(0, [111, 108, 100], [49])"#,
                r#"Delete(0, [111, 108, 100])"#,
            ]
        );
        assert_eq!(c.stats().writes_cancelled, 2);
    }

    /// A pre-flush drain writes the entries dirty at its start, in key order across its chunks;
    /// later writes wait for a full flush, which also finds whatever the drain had left.
    #[test]
    fn drain_writes_the_dirty_set_in_key_order_and_flush_finds_the_rest() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        let mut store = Store::default();
        for k in (0..100u32).rev() {
            c.put(0, &k.to_be_bytes(), b"v1");
        }
        c.begin_drain();
        let mut keys = Vec::new();
        let mut record = |w: CacheWrite<'_>| {
            if let CacheWrite::Put(_, k, _) = &w {
                keys.push(k.to_vec());
            }
        };
        assert_eq!(c.drain_step(30, &mut record), 30);
        // Dirtied during the drain: one already drained (written again later), one not yet
        // drained (the drain writes its newest value), one new key (left to the full flush).
        c.put(0, &0u32.to_be_bytes(), b"v2");
        c.put(0, &99u32.to_be_bytes(), b"v2");
        c.put(0, &1000u32.to_be_bytes(), b"v2");
        assert_eq!(c.drain_step(30, &mut record), 30);
        assert!(c.draining());
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "drain chunks continue in key order");
        assert_eq!(keys.len(), 60);
        // A full flush mid-drain writes every dirty entry, drained or not, and ends the drain.
        let n = c.flush_all(&mut |w| store.apply(w));
        assert_eq!(
            n,
            40 + 2,
            "the 40 not drained yet, key 0 again and key 1000"
        );
        assert!(!c.draining());
        assert_eq!(c.dirty_bytes(), 0);
        assert_eq!(
            store.0.get(&(0, 0u32.to_be_bytes().to_vec())),
            Some(&b"v2".to_vec())
        );
        assert_eq!(
            store.0.get(&(0, 99u32.to_be_bytes().to_vec())),
            Some(&b"v2".to_vec())
        );
        // A drained entry stays in the dirty queue, so when it is dirtied again (not queued a
        // second time) the next drain still finds it.
        c.put(0, &5u32.to_be_bytes(), b"v3");
        c.begin_drain();
        while c.draining() {
            c.drain_step(7, &mut |w| store.apply(w));
        }
        assert_eq!(
            store.0.get(&(0, 5u32.to_be_bytes().to_vec())),
            Some(&b"v3".to_vec())
        );
        c.put(0, &5u32.to_be_bytes(), b"v4");
        c.begin_drain();
        assert!(c.draining(), "the re-dirtied entry is found");
        while c.draining() {
            c.drain_step(7, &mut |w| store.apply(w));
        }
        assert_eq!(
            store.0.get(&(0, 5u32.to_be_bytes().to_vec())),
            Some(&b"v4".to_vec())
        );
        assert_eq!(c.dirty_bytes(), 0);
        assert_eq!(c.flush_all(&mut |w| store.apply(w)), 0);
    }

    #[test]
    fn reads_see_writes_and_tombstones() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        assert_eq!(c.get(0, b"a"), None);
        // A blind put: RocksDB may hold the key (it does below), so the delete must be written.
        c.put(0, b"a", b"1");
        assert_eq!(c.get(0, b"a"), Some(Cached::Value(b"1")));
        c.put(0, b"a", b"22");
        assert_eq!(c.get(0, b"a"), Some(Cached::Value(b"22")));
        c.delete(0, b"a");
        assert_eq!(c.get(0, b"a"), Some(Cached::Absent));
        // Another state, same key bytes: independent.
        assert_eq!(c.get(1, b"a"), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (3, 2, 1));
        assert_eq!(s.bytes, c.bytes());
        assert_eq!(c.dirty_bytes(), c.bytes());
        let mut store = Store::default();
        store.0.insert((0, b"a".to_vec()), b"old".to_vec());
        assert_eq!(c.flush_all(&mut |w| store.apply(w)), 1);
        assert!(store.0.is_empty());
        assert_eq!(c.dirty_bytes(), 0);
        // Still cached, clean.
        assert_eq!(c.peek(0, b"a"), Some(Cached::Absent));
    }

    #[test]
    fn appends_absorb_into_deltas_and_values() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        c.append(0, b"l", b"\x01x");
        c.append(0, b"l", b"\x01y");
        assert_eq!(c.get(0, b"l"), Some(Cached::Delta(b"\x01x\x01y")));
        let mut store = Store::default();
        store.0.insert((0, b"l".to_vec()), b"\x01w".to_vec());
        c.flush_all(&mut |w| store.apply(w));
        assert_eq!(store.0[&(0, b"l".to_vec())], b"\x01w\x01x\x01y");
        // A flushed delta is dropped; a clean list is extended in place and written whole.
        assert_eq!(c.peek(0, b"l"), None);
        c.insert_clean(0, b"l", Some(b"\x01w\x01x\x01y"));
        c.append(0, b"l", b"\x01z");
        assert_eq!(c.get(0, b"l"), Some(Cached::Value(b"\x01w\x01x\x01y\x01z")));
        c.flush_all(&mut |w| store.apply(w));
        assert_eq!(store.0[&(0, b"l".to_vec())], b"\x01w\x01x\x01y\x01z");
        // Append after a delete starts a fresh list.
        c.delete(0, b"l");
        c.append(0, b"l", b"\x01q");
        c.flush_all(&mut |w| store.apply(w));
        assert_eq!(store.0[&(0, b"l".to_vec())], b"\x01q");
    }

    #[test]
    fn eviction_keeps_the_budget_and_writes_dirty_entries() {
        let cap = 40 * (ENTRY_OVERHEAD + 9);
        let mut c = StateCache::new(cap, cap);
        let mut store = Store::default();
        for i in 0u32..1000 {
            c.put(
                0,
                &i.to_be_bytes(),
                &(i * 2).to_be_bytes()[..1 + (i % 4) as usize],
            );
            if c.needs_maintenance() {
                c.maintain(&mut |w| store.apply(w));
            }
            assert!(c.bytes() <= cap, "{} > {cap}", c.bytes());
            // Evicted dirty entries leave stale indices; compaction keeps the queue bounded.
            assert!(
                c.dirty_queue.len() <= 65 + 2 * c.entries.len(),
                "{}",
                c.dirty_queue.len()
            );
        }
        let s = c.stats();
        assert!(
            s.evictions >= 900 && s.evicted_dirty == s.evictions,
            "{s:?}"
        );
        c.flush_all(&mut |w| store.apply(w));
        assert_eq!(store.0.len(), 1000);
        for i in 0u32..1000 {
            let want = &(i * 2).to_be_bytes()[..1 + (i % 4) as usize];
            assert_eq!(store.0[&(0, i.to_be_bytes().to_vec())], want);
        }
    }

    #[test]
    fn dirty_bound_writes_back_and_keeps_entries() {
        let per = ENTRY_OVERHEAD;
        let mut c = StateCache::new(1000 * per, 100 * per);
        let mut store = Store::default();
        for i in 0u32..500 {
            c.put(0, &i.to_be_bytes(), b"abcd");
            if c.needs_maintenance() {
                c.maintain(&mut |w| store.apply(w));
            }
            assert!(c.dirty_bytes() <= 100 * per);
        }
        let s = c.stats();
        assert_eq!(s.evictions, 0);
        assert!(s.dirty_flushes >= 8, "{s:?}");
        assert_eq!(s.entries, 500);
        assert_eq!(store.0.len() as u64, s.dirty_flushed_entries);
    }

    #[test]
    fn write_back_is_sorted_by_state_then_key_bytes() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        // Keys sharing 16-byte prefixes, zero padding and different lengths.
        let keys: Vec<Vec<u8>> = vec![
            b"b".to_vec(),
            [vec![7u8; 16], b"z".to_vec()].concat(),
            vec![7u8; 16],
            [vec![7u8; 16], b"a".to_vec()].concat(),
            b"a\0".to_vec(),
            b"a".to_vec(),
            vec![],
        ];
        for (i, k) in keys.iter().enumerate() {
            c.put(1, k, b"v");
            c.put(0, k, &[i as u8]);
        }
        let mut order = Vec::new();
        c.flush_all(&mut |w| {
            if let CacheWrite::Put(s, k, _) = w {
                order.push((s, k.to_vec()));
            }
        });
        let mut want: Vec<(StateId, Vec<u8>)> = keys
            .iter()
            .flat_map(|k| [(0, k.clone()), (1, k.clone())])
            .collect();
        want.sort();
        assert_eq!(order, want);
    }

    #[test]
    fn map_ranges_are_sorted_and_merge_with_the_store() {
        let mut c = StateCache::new(1 << 20, 1 << 20);
        c.register_state(0, true);
        c.put(0, b"p\x03", b"c3");
        c.put(0, b"p\x01", b"c1");
        c.delete(0, b"p\x02");
        c.append(0, b"p\x04", b"+");
        c.put(0, b"q\x01", b"other");
        let cached = c.range(0, b"p", Some(b"q".to_vec()));
        assert_eq!(
            cached.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            vec![
                b"p\x01".to_vec(),
                b"p\x02".to_vec(),
                b"p\x03".to_vec(),
                b"p\x04".to_vec()
            ]
        );
        let stored = vec![
            (b"p\x00".to_vec(), b"s0".to_vec()),
            (b"p\x02".to_vec(), b"s2".to_vec()),
            (b"p\x03".to_vec(), b"s3".to_vec()),
            (b"p\x04".to_vec(), b"s4".to_vec()),
        ];
        assert_eq!(
            merge_sorted(stored, cached),
            vec![
                (b"p\x00".to_vec(), b"s0".to_vec()),
                (b"p\x01".to_vec(), b"c1".to_vec()),
                (b"p\x03".to_vec(), b"c3".to_vec()),
                (b"p\x04".to_vec(), b"s4+".to_vec()),
            ]
        );
        c.remove_prefix(0, b"p");
        assert!(c.range(0, b"p", Some(b"q".to_vec())).is_empty());
        assert_eq!(c.range(0, b"", None).len(), 1);
        assert_eq!(c.stats().entries, 1);
        // The sorted set is accounted: removing the last entry frees every byte.
        c.remove_prefix(0, b"q");
        assert_eq!((c.bytes(), c.dirty_bytes()), (0, 0));
    }
}
