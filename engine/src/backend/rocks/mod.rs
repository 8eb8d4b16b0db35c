//! The RocksDB backend: one RocksDB instance per slot in a local working directory, one column
//! family per registered state (`<operator>/<state>`), all sharing the slot's block cache and
//! write-buffer manager (see `cairn-memory`).
//!
//! Writes skip the WAL (Flink's choice): durability comes from checkpoints, and the working
//! directory is disposable — a slot wipes its RocksDB directory when it opens and only ever
//! restores from a checkpoint. A `cairn.lock` file (an OS file lock) keeps two slots, in this or
//! another process, from using one directory.
//!
//! In front of RocksDB sits the slot's write-back [`cache::StateCache`] (on by default; see its
//! module doc): reads check it first, writes go to it, and RocksDB sees them when they are
//! evicted, when the dirty bound is passed, and at the latest in the checkpoint's sync phase
//! ([`RocksDbBackend::flush_cache`]).
//!
//! ## A failed write-back poisons the backend
//! The cache lets go of a write-back's writes (marks the entries clean, evicts them, drops list
//! deltas) as it hands them to the `WriteBatch`, before the batch is committed. When
//! `DB::write` then fails (disk full, an I/O error, a background error that left RocksDB
//! read-only), those writes exist nowhere else: RocksDB lacks writes the slot acknowledged, a
//! later checkpoint would silently miss them, and an evicted key would read its older stored
//! value (a deleted one would come back). So the first failed write-back commit **poisons** the
//! backend: every later call (reads, writes, scans, `flush_cache` and so every checkpoint's
//! sync phase, pre-flushes, `flush`) fails with [`EngineError::Poisoned`]
//! ([`crate::ErrorKind::Closed`]) naming the original failure, and so does the call that hit
//! it. The slot must be dropped and restored from its last checkpoint, which predates every
//! lost write.
//!
//! Why not keep the entries dirty until the batch commits, and retry?
//! - WAL is off and the working directory is disposable: the last checkpoint is the unit of
//!   durability already, and a failed write is handled like a crash of the slot (fjall poisons
//!   its keyspace after a failed journal write the same way);
//! - after a failed write RocksDB itself is in doubt: a background error keeps it read-only
//!   until resumed, and the slot's RocksDB timers write to the same DB, so a retry in place
//!   would rarely succeed and would run on with state nobody checked;
//! - undoing a write-back means restoring the bookkeeping of four paths (eviction victims
//!   already out of the hash table, dirty-queue positions, a drain's position, deltas dropped
//!   after their merge), where any slip loses a write silently again; the poison flag is one
//!   branch per call, and every path is covered by `tests/state_cache_write_failure.rs`
//!   through [`WriteBackFault`].
//!
//! A state with TTL ([`crate::ttl`]) gets a compaction filter on its column family that drops
//! expired entries in compactions; the filter also marks the column family as holding TTL
//! timestamps across checkpoints (see `ttl_filter`).

pub mod cache;
mod files;
pub mod lazy;
#[cfg(test)]
mod lazy_range_tests;
pub mod native_metrics;
mod options;
pub mod rescale;
mod stall_guard;
mod ttl_filter;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_memory::{MemoryReport, SlotMemory};
use rocksdb::{
    ColumnFamilyDescriptor, DBWithThreadMode, MergeOperands, MultiThreaded, Options, ReadOptions,
    WriteBatch, WriteOptions,
};

use options::OptionsBuilder;
pub use options::RocksDbOptionsHook;

/// The DB and column-family options a slot would use, for tools and benchmarks that open a
/// plain RocksDB with exactly Cairn's settings (e.g. the raw-RocksDB baseline of
/// `benches/state_ops.rs`).
pub fn slot_options(
    config: &RocksDbConfig,
    memory: &SlotMemory,
    hook: Option<&Arc<dyn RocksDbOptionsHook>>,
) -> (rocksdb::Options, rocksdb::Options) {
    let b = OptionsBuilder {
        config,
        memory,
        hook,
    };
    (b.db_options(), b.cf_options("default"))
}

use crate::backend::{
    CompactionStats, NativeSnapshot, ScopeKey, StateBackend, StateDescriptor, StateEntry, StateId,
    StateKind, StateSize, StoredTimers, list_codec,
};
use crate::config::{RocksDbConfig, StateCacheConfig};
use crate::error::{EngineError, Result};
use crate::key_format;
use crate::keygroup::{self, KeyGroup, KeyGroupRange};
use cache::{CacheStats, CacheWrite, Cached, StateCache};
use cairn_timers::{Clock, RocksDbTimers};
use ttl_filter::TtlFilterShared;

/// Name of the merge operator that appends encoded list elements.
pub(crate) const LIST_MERGE_OPERATOR: &str = "cairn.list-append";

/// The list merge: encoded lists concatenate (see [`list_codec`]), so a merge is an append.
pub(crate) fn list_append_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let extra: usize = operands.iter().map(|o| o.len()).sum();
    let mut out = Vec::with_capacity(existing.map_or(0, |e| e.len()) + extra);
    if let Some(e) = existing {
        out.extend_from_slice(e);
    }
    for op in operands {
        out.extend_from_slice(op);
    }
    Some(out)
}

type Db = DBWithThreadMode<MultiThreaded>;

/// Everything needed to open a slot's RocksDB.
pub struct RocksDbParams<'a> {
    /// The slot's working directory (`cairn.lock` + `db/` inside).
    pub dir: &'a Path,
    /// The key groups of the slot.
    pub range: KeyGroupRange,
    /// Number of key groups of the job.
    pub max_parallelism: u32,
    /// RocksDB knobs.
    pub config: &'a RocksDbConfig,
    /// The slot's shared cache and write-buffer manager.
    pub memory: SlotMemory,
    /// Optional user options hook.
    pub hook: Option<Arc<dyn RocksDbOptionsHook>>,
    /// The state cache's dirty bound (its capacity comes from `memory`).
    pub state_cache: &'a StateCacheConfig,
    /// Restore: the files to open from (see [`RocksDbRestore`]).
    pub restore: Option<RocksDbRestore>,
}

/// What a RocksDB slot opens from: an old slot's checkpoint as its base and, when rescaling,
/// other old slots to bring in ([`rescale`]).
pub struct RocksDbRestore {
    /// The base's checkpoint directory (moved into place as the new RocksDB directory; must be
    /// on the working directory's file system).
    pub files: PathBuf,
    /// Every state of the slot, in id order: the base's, then those only merged slots have.
    pub states: Vec<StateDescriptor>,
    /// The base's old slot index.
    pub slot: u32,
    /// The base's key groups.
    pub key_groups: KeyGroupRange,
    /// The other old slots with key groups of this slot.
    pub merge: Vec<crate::backend::MergeSource>,
    /// The base's SSTs to fetch lazily ([`lazy`]); `None` when they are all in `files`.
    pub lazy: Option<lazy::LazyRestore>,
}

/// Numbers the SST files [`StateBackend::load_entries`] writes (unique in the process).
static LOAD_FILES: AtomicU64 = AtomicU64::new(0);

/// Keyed state of one slot in RocksDB. See the module doc.
pub struct RocksDbBackend {
    // Field order is drop order: the stall guard stops before the DB closes, and the DB closes
    // before the cache and write-buffer manager it uses.
    /// Wakes writers the write-buffer manager would stall forever once flushes fail
    /// (`None` without a manager).
    _stall_guard: Option<stall_guard::StallGuard>,
    // Shared (`Arc`) with the slot's RocksDB timer service, which the slot drops first.
    db: Arc<Db>,
    /// The lazily restored files still fetched (after `db`: stops once RocksDB closed).
    lazy: Option<lazy::LazyFiles>,
    memory: SlotMemory,
    config: RocksDbConfig,
    hook: Option<Arc<dyn RocksDbOptionsHook>>,
    db_path: PathBuf,
    range: KeyGroupRange,
    prefix_bytes: usize,
    /// Key groups of the job (a rescaled slot clips everything outside its own up to there).
    max_parallelism: u32,
    states: Vec<(String, StateKind)>,
    write_opts: WriteOptions,
    scratch: Vec<u8>,
    /// `None` when `memory.state-cache-ratio` is 0 or memory is unmanaged.
    cache: Option<StateCache>,
    /// A pre-flush is under way: its memtable flush starts once the cache's drain is done.
    memtable_flush_pending: bool,
    /// Test and torture only: fails chosen write-back commits.
    write_back_fault: Option<Arc<WriteBackFault>>,
    /// Set by a failed write-back commit (the original failure): every later call is refused
    /// (see the module doc).
    poisoned: Option<String>,
    /// The TTL compaction filter of each state (by id), `None` for a state without TTL.
    ttl_filters: Vec<Option<Arc<TtlFilterShared>>>,
    /// Column families the restored files had with the TTL filter, not yet created as states.
    restored_ttl: HashSet<String>,
    /// Filters of restored column families opened with the database, taken by `create_state`.
    opened_filters: HashMap<String, Arc<TtlFilterShared>>,
    /// The options the database was opened with: they hold its statistics (when
    /// `rocksdb.metrics.statistics` is on).
    db_opts: Options,
    _lock: File,
}

impl RocksDbBackend {
    /// Locks the working directory, wipes its old RocksDB files and opens a fresh RocksDB, or
    /// the restored one (its states registered with ids in the order given; old slots of other
    /// key groups brought in and the slot clipped to its own, see [`rescale`], with what that
    /// did).
    pub fn open(p: RocksDbParams<'_>) -> Result<(Self, Option<rescale::RescaleReport>)> {
        let not_writable = |source| EngineError::WorkingDirNotWritable {
            path: p.dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(p.dir).map_err(not_writable)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p.dir.join("cairn.lock"))
            .map_err(not_writable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(EngineError::WorkingDirLocked {
                    path: p.dir.display().to_string(),
                    detail: "cairn.lock is held".into(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(not_writable(e)),
        }
        let db_path = p.dir.join("db");
        let mut restored_ttl = HashSet::new();
        if let Some(r) = &p.restore {
            for m in &r.merge {
                restored_ttl.extend(ttl_filter::ttl_column_families(&m.files)?);
            }
        }
        if db_path.exists() {
            std::fs::remove_dir_all(&db_path).map_err(not_writable)?;
        }
        let restored_states = match &p.restore {
            Some(RocksDbRestore { files, states, .. }) => {
                // Which states hold TTL timestamps: their column families carry the filter
                // (read before the files move; merged old slots' too).
                restored_ttl.extend(ttl_filter::ttl_column_families(files)?);
                std::fs::rename(files, &db_path).map_err(|e| EngineError::Io {
                    op: format!(
                        "move restored files {} into {}",
                        files.display(),
                        db_path.display()
                    ),
                    source: e,
                })?;
                states.clone()
            }
            None => Vec::new(),
        };
        let builder = OptionsBuilder {
            config: p.config,
            memory: &p.memory,
            hook: p.hook.as_ref(),
        };
        let mut db_opts = builder.db_options();
        // Lazy restore: RocksDB opens through the lazy file system (see `lazy`).
        let mut lazy_files = match p.restore.as_ref().and_then(|r| r.lazy.as_ref()) {
            Some(l) => {
                let mut files = lazy::LazyFiles::new(&db_path, &p.dir.join("lazy-fetch"), l)?;
                files.start_demand();
                lazy::tune_options(&mut db_opts, &files.env()?, p.config.max_open_files);
                Some((files, l.threads))
            }
            None => None,
        };
        // Always pass "default" with the shared options: without it RocksDB opens the default
        // column family with its own cache, outside the budget.
        let mut cfs = vec![ColumnFamilyDescriptor::new(
            "default",
            builder.cf_options("default"),
        )];
        // The base's column families; states only merged old slots have are created below.
        let existing: Vec<String> = if p.restore.is_some() {
            Db::list_cf(&db_opts, &db_path).map_err(EngineError::rocks("list column families"))?
        } else {
            Vec::new()
        };
        let mut opened_filters = HashMap::new();
        for s in &restored_states {
            let name = s.full_name();
            if existing.contains(&name) {
                let mut opts = builder.cf_options(&name);
                if restored_ttl.contains(&name) {
                    let filter = TtlFilterShared::new(s.kind);
                    filter.install(&mut opts);
                    opened_filters.insert(name.clone(), filter);
                }
                cfs.push(ColumnFamilyDescriptor::new(name, opts));
            }
        }
        let db = Db::open_cf_descriptors(&db_opts, &db_path, cfs).map_err(|e| {
            if e.to_string().to_lowercase().contains("lock") {
                EngineError::WorkingDirLocked {
                    path: db_path.display().to_string(),
                    detail: e.to_string(),
                }
            } else {
                EngineError::RocksDb {
                    op: "open",
                    source: e,
                }
            }
        })?;
        let lazy = lazy_files.take().map(|(mut files, threads)| {
            files.start_background(threads);
            files
        });
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        let capacity = p.memory.state_cache_bytes();
        let cache = (capacity > 0).then(|| {
            let max_dirty = p.state_cache.dirty_bound(capacity);
            StateCache::new(capacity, max_dirty)
        });
        let db = Arc::new(db);
        let stall_guard = match p.memory.write_buffer_manager() {
            Some(wbm) => Some(
                stall_guard::StallGuard::start(&db, wbm.clone(), &db_path).map_err(|e| {
                    EngineError::Io {
                        op: "start the write-stall guard thread".into(),
                        source: e,
                    }
                })?,
            ),
            None => None,
        };
        let mut backend = Self {
            _stall_guard: stall_guard,
            cache,
            db,
            lazy,
            memory: p.memory,
            config: p.config.clone(),
            hook: p.hook,
            db_path,
            range: p.range,
            prefix_bytes: keygroup::prefix_bytes(p.max_parallelism),
            max_parallelism: p.max_parallelism,
            states: Vec::new(),
            write_opts,
            scratch: Vec::new(),
            memtable_flush_pending: false,
            write_back_fault: None,
            poisoned: None,
            ttl_filters: Vec::new(),
            restored_ttl,
            opened_filters,
            db_opts,
            _lock: lock,
        };
        // Registering the restored states gives them their ids (and creates the column
        // families of states only merged old slots have).
        for (id, state) in restored_states.iter().enumerate() {
            backend.create_state(id as StateId, state)?;
        }
        let rescale = match p.restore {
            Some(r) if !r.merge.is_empty() || r.key_groups != p.range => {
                Some(backend.rescale(r.slot, r.key_groups, r.merge)?)
            }
            _ => None,
        };
        Ok((backend, rescale))
    }

    /// Test and torture only: the same backend, failing the write-back commits `fault` is armed
    /// for (see [`WriteBackFault`]).
    pub fn with_write_back_fault(mut self, fault: Option<Arc<WriteBackFault>>) -> Self {
        self.write_back_fault = fault;
        self
    }

    /// Refuses the call once a write-back failed (see the module doc).
    #[inline]
    fn check_open(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
        }
    }

    /// The outcome of a write-back commit: a failure poisons the backend, because the cache has
    /// already let go of the writes the batch carried.
    fn settle(&mut self, committed: Result<()>) -> Result<()> {
        let Err(e) = committed else {
            return Ok(());
        };
        let reason = e.to_string();
        tracing::error!(
            db = %self.db_path.display(),
            error = %reason,
            "state cache write-back failed: the slot refuses every further call; restore it from its last checkpoint"
        );
        self.poisoned = Some(reason.clone());
        Err(EngineError::Poisoned { reason })
    }

    /// The RocksDB directory (for checkpoints and disk-usage reports).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The underlying database (checkpointing takes native checkpoints from it).
    pub fn db(&self) -> &DBWithThreadMode<MultiThreaded> {
        &self.db
    }

    /// A shared handle of the database, for the slot's RocksDB timer service (its column
    /// families live next to the states'). Holders must drop it before the backend.
    pub fn shared_db(&self) -> Arc<DBWithThreadMode<MultiThreaded>> {
        Arc::clone(&self.db)
    }

    /// The slot's shared RocksDB memory (block cache, write-buffer manager, budget plan).
    pub fn memory(&self) -> &SlotMemory {
        &self.memory
    }

    /// Names of the column families of the registered states, by state id.
    pub fn column_families(&self) -> impl Iterator<Item = &str> {
        self.states.iter().map(|(n, _)| n.as_str())
    }

    fn cf(&self, state: StateId) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        let (name, _) = self
            .states
            .get(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        self.db
            .cf_handle(name)
            .ok_or(EngineError::UnknownState(state))
    }

    fn corrupt(&self, state: StateId, reason: impl Into<String>) -> EngineError {
        EngineError::Corrupt {
            state: self
                .states
                .get(state as usize)
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            reason: reason.into(),
        }
    }

    /// Iterates `[lower, upper)` of one column family, calling `f(key, value)`.
    fn scan(
        &self,
        state: StateId,
        lower: &[u8],
        upper: Option<Vec<u8>>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cf = self.cf(state)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(lower);
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                f(k, v)?;
            }
            it.next();
        }
        it.status().map_err(EngineError::rocks("iterate"))
    }

    /// Counters of the state cache, `None` when it is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(StateCache::stats)
    }

    /// Writes every dirty cache entry into RocksDB (one `WriteBatch`): the checkpoint's sync
    /// phase calls it right before the native checkpoint, and its duration is recorded in the
    /// cache's counters. Returns the entries written.
    pub fn flush_cache(&mut self) -> Result<u64> {
        self.check_open()?;
        // The sync phase flushes the memtables itself: a pre-flush still under way is moot.
        self.memtable_flush_pending = false;
        self.write_back_all(WriteBackFor::Checkpoint)
    }

    /// One step of a started pre-flush: writes the next [`PRE_FLUSH_CHUNK`] entries of the
    /// cache's drain (timed: it holds the slot's thread), and once the drain is done starts the
    /// memtable flush. Returns whether work is left.
    fn pre_flush_step(&mut self) -> Result<bool> {
        if let Some(cache) = self.cache.as_mut()
            && cache.draining()
        {
            let t = std::time::Instant::now();
            let mut w = BatchWriter::new(&self.db, &self.states);
            cache.drain_step(PRE_FLUSH_CHUNK, &mut |op| w.add(op));
            let r = w.commit(
                &self.db,
                &self.write_opts,
                self.write_back_fault.as_deref(),
                "pre-flush state cache",
            );
            cache.record_pre_flush(t.elapsed());
            let more = cache.draining();
            self.settle(r)?;
            if more {
                return Ok(true);
            }
        }
        if std::mem::take(&mut self.memtable_flush_pending) {
            self.flush_memtables(false)?;
        }
        Ok(false)
    }

    /// Flushes every state's memtables, waiting for the SSTs or not.
    pub(super) fn flush_memtables(&self, wait: bool) -> Result<()> {
        // `flush()` alone flushes only the default column family.
        let cfs: Vec<_> = self
            .states
            .iter()
            .filter_map(|(n, _)| self.db.cf_handle(n))
            .collect();
        let refs: Vec<_> = cfs.iter().collect();
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(wait);
        self.db
            .flush_cfs_opt(&refs, &opts)
            .map_err(EngineError::rocks("flush"))
    }

    fn write_back_all(&mut self, purpose: WriteBackFor) -> Result<u64> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(0);
        };
        let t = std::time::Instant::now();
        let mut w = BatchWriter::new(&self.db, &self.states);
        let n = cache.flush_all(&mut |op| w.add(op));
        let batched = t.elapsed();
        let r = w.commit(
            &self.db,
            &self.write_opts,
            self.write_back_fault.as_deref(),
            "flush state cache",
        );
        match purpose {
            WriteBackFor::Checkpoint => cache.record_checkpoint_flush(t.elapsed()),
            WriteBackFor::Flush => {}
        }
        tracing::debug!(
            entries = n,
            batch_ms = batched.as_secs_f64() * 1e3,
            write_ms = (t.elapsed() - batched).as_secs_f64() * 1e3,
            ?purpose,
            "wrote every dirty state cache entry"
        );
        self.settle(r).map(|()| n)
    }

    /// Evicts and writes back after a cache write, when the cache asks for it.
    fn maintain_cache(&mut self) -> Result<()> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(());
        };
        if !cache.needs_maintenance() {
            return Ok(());
        }
        let mut w = BatchWriter::new(&self.db, &self.states);
        cache.maintain(&mut |op| w.add(op));
        let r = w.commit(
            &self.db,
            &self.write_opts,
            self.write_back_fault.as_deref(),
            "write back state cache",
        );
        self.settle(r)
    }

    /// Reads `key` through the cache: a hit is answered from memory; a miss reads RocksDB and
    /// caches what it found; a list delta is completed with the stored list.
    fn read_through(
        &mut self,
        state: StateId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<()> {
        self.check_open()?;
        if let Some(cache) = self.cache.as_mut() {
            let delta = match cache.get(state, key) {
                Some(Cached::Value(v)) => {
                    f(Some(v));
                    return Ok(());
                }
                Some(Cached::Absent) => {
                    f(None);
                    return Ok(());
                }
                Some(Cached::Delta(d)) => Some(d.to_vec()),
                None => None,
            };
            let cf = self.cf(state)?;
            let stored = self
                .db
                .get_pinned_cf(&cf, key)
                .map_err(EngineError::rocks("get"))?;
            drop(cf);
            let cache = self
                .cache
                .as_mut()
                .ok_or(EngineError::UnknownState(state))?;
            match delta {
                Some(d) => {
                    let mut full = stored.as_deref().unwrap_or_default().to_vec();
                    full.extend_from_slice(&d);
                    f(Some(&full));
                    cache.resolve(state, key, &full);
                }
                None => {
                    f(stored.as_deref());
                    cache.insert_clean(state, key, stored.as_deref());
                }
            }
            drop(stored);
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        let v = self
            .db
            .get_pinned_cf(&cf, key)
            .map_err(EngineError::rocks("get"))?;
        f(v.as_deref());
        Ok(())
    }

    /// Iterates `[lower, upper)` of a state, merged with the cache (see [`cache::merge_sorted`]).
    fn merged_scan(
        &self,
        state: StateId,
        lower: &[u8],
        upper: Option<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_open()?;
        let mut stored = Vec::new();
        self.scan(state, lower, upper.clone(), |k, v| {
            stored.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(match &self.cache {
            Some(cache) => cache::merge_sorted(stored, cache.range(state, lower, upper)),
            None => stored,
        })
    }

    fn map_key(&mut self, scope: &ScopeKey, user_key: &[u8]) -> Vec<u8> {
        let mut k = std::mem::take(&mut self.scratch);
        k.clear();
        k.extend_from_slice(&scope.composite);
        k.extend_from_slice(user_key);
        k
    }
}

impl StateBackend for RocksDbBackend {
    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn create_state(&mut self, id: StateId, desc: &StateDescriptor) -> Result<()> {
        self.check_open()?;
        debug_assert_eq!(id as usize, self.states.len());
        let name = desc.full_name();
        let builder = OptionsBuilder {
            config: &self.config,
            memory: &self.memory,
            hook: self.hook.as_ref(),
        };
        // A restored column family already exists (opened with the slot's options, and the
        // TTL filter when the files say it had one).
        let mut filter = self.opened_filters.remove(&name);
        if self.db.cf_handle(&name).is_none() {
            let mut opts = builder.cf_options(&name);
            if desc.ttl.is_some() || self.restored_ttl.contains(&name) {
                let f = TtlFilterShared::new(desc.kind);
                f.install(&mut opts);
                filter = Some(f);
            }
            self.db
                .create_cf(&name, &opts)
                .map_err(EngineError::rocks("create column family"))?;
        }
        self.states.push((name.clone(), desc.kind));
        self.ttl_filters.push(filter);
        if let Some(c) = self.cache.as_mut() {
            c.register_state(id, desc.kind == StateKind::Map);
        }
        if let Some(cache) = self.memory.cache() {
            let cf = self.cf(id)?;
            let cap = self
                .db
                .property_int_value_cf(&cf, "rocksdb.block-cache-capacity")
                .map_err(EngineError::rocks("read block-cache-capacity"))?;
            if cap != Some(cache.get_capacity() as u64) {
                tracing::warn!(
                    state = name,
                    capacity = ?cap,
                    "column family does not use the slot's shared block cache; its memory is outside the budget"
                );
            }
        }
        Ok(())
    }

    fn state_has_ttl(&self, state: StateId) -> bool {
        self.ttl_filters
            .get(state as usize)
            .is_some_and(Option::is_some)
    }

    fn configure_ttl(
        &mut self,
        state: StateId,
        config: Option<&crate::ttl::StateTtlConfig>,
        clock: &Arc<dyn Clock>,
    ) -> Result<()> {
        self.check_open()?;
        let filter = self
            .ttl_filters
            .get(state as usize)
            .ok_or(EngineError::UnknownState(state))?;
        match (filter, config) {
            (Some(f), Some(c)) => {
                f.configure(c, clock);
                // Periodic compaction brings the filter to files no write-driven compaction
                // reaches; without the filter it would rewrite files for nothing (RocksDB
                // turns it on by itself for a column family with a filter: 0 turns it off).
                let age = c
                    .compaction_filter_cleanup
                    .map_or(0, |f| f.periodic_compaction.as_secs());
                let cf = self.cf(state)?;
                self.db
                    .set_options_cf(&cf, &[("periodic_compaction_seconds", &age.to_string())])
                    .map_err(EngineError::rocks("set periodic_compaction_seconds"))
            }
            (None, None) => Ok(()),
            (f, c) => Err(EngineError::StateTtlMismatch {
                state: self.states[state as usize].0.clone(),
                stored_with_ttl: f.is_some(),
                requested_ttl: c.is_some(),
            }),
        }
    }

    fn get_with(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<()> {
        self.read_through(state, &scope.composite, f)
    }

    fn put(&mut self, state: StateId, scope: &ScopeKey, value: &[u8]) -> Result<()> {
        self.check_open()?;
        if let Some(c) = self.cache.as_mut() {
            c.put(state, &scope.composite, value);
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        self.db
            .put_cf_opt(&cf, &scope.composite, value, &self.write_opts)
            .map_err(EngineError::rocks("put"))
    }

    fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()> {
        self.check_open()?;
        let kind = self
            .states
            .get(state as usize)
            .map(|s| s.1)
            .ok_or(EngineError::UnknownState(state))?;
        if kind != StateKind::Map
            && let Some(c) = self.cache.as_mut()
        {
            c.delete(state, &scope.composite);
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        if kind != StateKind::Map {
            return self
                .db
                .delete_cf_opt(&cf, &scope.composite, &self.write_opts)
                .map_err(EngineError::rocks("delete"));
        }
        // Point deletes of the map's entries rather than a range tombstone per clear: many
        // range tombstones slow every later read of the column family.
        let mut batch = WriteBatch::default();
        self.scan(
            state,
            &scope.composite,
            key_format::prefix_successor(&scope.composite),
            |k, _| {
                batch.delete_cf(&cf, k);
                Ok(())
            },
        )?;
        self.db
            .write_opt(&batch, &self.write_opts)
            .map_err(EngineError::rocks("clear map"))?;
        // Then the cached entries are dropped (dirty ones included: the clear supersedes them).
        // Not before: a failed scan or write must leave the map as it was, pending writes and all.
        drop(cf);
        if let Some(c) = self.cache.as_mut() {
            c.remove_prefix(state, &scope.composite);
        }
        Ok(())
    }

    fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>> {
        let mut out = Ok(Vec::new());
        self.read_through(state, &scope.composite, &mut |v| {
            if let Some(bytes) = v {
                out = list_codec::decode(bytes).ok_or(());
            }
        })?;
        out.map_err(|()| self.corrupt(state, "list value is not a valid list encoding"))
    }

    fn list_append(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        self.check_open()?;
        if elements.is_empty() {
            return Ok(());
        }
        let encoded = list_codec::encode(elements.iter().copied());
        if let Some(c) = self.cache.as_mut() {
            c.append(state, &scope.composite, &encoded);
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        self.db
            .merge_cf_opt(&cf, &scope.composite, encoded, &self.write_opts)
            .map_err(EngineError::rocks("merge list"))
    }

    fn list_update(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        self.check_open()?;
        if elements.is_empty() {
            return self.clear(state, scope);
        }
        let encoded = list_codec::encode(elements.iter().copied());
        if let Some(c) = self.cache.as_mut() {
            c.put(state, &scope.composite, &encoded);
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        self.db
            .put_cf_opt(&cf, &scope.composite, encoded, &self.write_opts)
            .map_err(EngineError::rocks("put list"))
    }

    fn map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let k = self.map_key(scope, user_key);
        let mut out = None;
        let r = self.read_through(state, &k, &mut |v| out = v.map(<[u8]>::to_vec));
        self.scratch = k;
        r.map(|()| out)
    }

    fn map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.check_open()?;
        let k = self.map_key(scope, user_key);
        if let Some(c) = self.cache.as_mut() {
            c.put(state, &k, value);
            self.scratch = k;
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        let r = self
            .db
            .put_cf_opt(&cf, &k, value, &self.write_opts)
            .map_err(EngineError::rocks("map put"));
        drop(cf);
        self.scratch = k;
        r
    }

    fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()> {
        self.check_open()?;
        let k = self.map_key(scope, user_key);
        if let Some(c) = self.cache.as_mut() {
            c.delete(state, &k);
            self.scratch = k;
            return self.maintain_cache();
        }
        let cf = self.cf(state)?;
        let r = self
            .db
            .delete_cf_opt(&cf, &k, &self.write_opts)
            .map_err(EngineError::rocks("map remove"));
        drop(cf);
        self.scratch = k;
        r
    }

    fn map_entries(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let plen = scope.composite.len();
        let merged = self.merged_scan(
            state,
            &scope.composite,
            key_format::prefix_successor(&scope.composite),
        )?;
        Ok(merged
            .into_iter()
            .map(|(mut k, v)| {
                k.drain(..plen);
                (k, v)
            })
            .collect())
    }

    fn scan_key_group(&mut self, state: StateId, key_group: KeyGroup) -> Result<Vec<StateEntry>> {
        let lower = key_format::key_group_prefix(key_group, self.prefix_bytes);
        let upper = key_format::key_group_upper_bound(key_group, self.prefix_bytes);
        let prefix_bytes = self.prefix_bytes;
        self.merged_scan(state, &lower, upper)?
            .into_iter()
            .map(|(k, value)| {
                let ck = key_format::decode_composite(&k, prefix_bytes).ok_or_else(|| {
                    self.corrupt(state, "key does not follow the composite layout")
                })?;
                Ok(StateEntry {
                    key: ck.key.to_vec(),
                    namespace: ck.namespace.to_vec(),
                    user_key: ck.user_key.to_vec(),
                    value,
                })
            })
            .collect()
    }

    fn load_entries(
        &mut self,
        state: StateId,
        _kind: StateKind,
        entries: Vec<crate::backend::LoadEntry>,
    ) -> Result<()> {
        self.check_open()?;
        if entries.is_empty() {
            return Ok(());
        }
        let name = self
            .states
            .get(state as usize)
            .map(|s| s.0.clone())
            .ok_or(EngineError::UnknownState(state))?;
        let mut keyed: Vec<(Vec<u8>, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                let mut k = e.scope.composite;
                k.extend_from_slice(&e.user_key);
                (k, e.value)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A key given twice keeps its last value (the order given).
        keyed.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(&mut later.1, &mut earlier.1);
                true
            } else {
                false
            }
        });
        let opts = OptionsBuilder {
            config: &self.config,
            memory: &self.memory,
            hook: self.hook.as_ref(),
        }
        .cf_options(&name);
        let path = self.db_path.join(format!(
            "load-{state}-{}.sst",
            LOAD_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut writer = rocksdb::SstFileWriter::create(&opts);
        writer
            .open(&path)
            .map_err(EngineError::rocks("create an SST file to load"))?;
        for (k, v) in &keyed {
            writer
                .put(k, v)
                .map_err(EngineError::rocks("write an SST file to load"))?;
        }
        writer
            .finish()
            .map_err(EngineError::rocks("finish an SST file to load"))?;
        let cf = self.cf(state)?;
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(&cf, &ingest, vec![&path])
            .map_err(EngineError::rocks("ingest a loaded SST file"))
    }

    fn state_sizes(&self) -> Vec<StateSize> {
        let prop = |name: &str, p: &str| -> u64 {
            self.db
                .cf_handle(name)
                .and_then(|cf| self.db.property_int_value_cf(&cf, p).ok().flatten())
                .unwrap_or(0)
        };
        self.states
            .iter()
            .map(|(name, _)| StateSize {
                state: name.clone(),
                bytes: prop(name, "rocksdb.live-sst-files-size")
                    + prop(name, "rocksdb.cur-size-all-mem-tables"),
                entries: prop(name, "rocksdb.estimate-num-keys"),
            })
            .collect()
    }

    fn disk_bytes(&self) -> u64 {
        dir_size(&self.db_path)
    }

    fn memory_report(&self) -> MemoryReport {
        let names: Vec<&str> = std::iter::once("default")
            .chain(self.states.iter().map(|(n, _)| n.as_str()))
            .collect();
        let mut report = MemoryReport::collect(&self.db, &names, &self.memory);
        report.state_cache_bytes = self.cache.as_ref().map_or(0, StateCache::bytes);
        report
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        RocksDbBackend::cache_stats(self)
    }

    fn native_metrics(&self) -> Option<native_metrics::NativeMetrics> {
        let config = &self.config.metrics;
        config.is_enabled().then(|| {
            let names: Vec<&str> = self.states.iter().map(|(n, _)| n.as_str()).collect();
            native_metrics::collect(&self.db, &names, config, &self.db_opts)
        })
    }

    fn flush_cache(&mut self) -> Result<u64> {
        RocksDbBackend::flush_cache(self)
    }

    fn native_snapshot(&mut self, dir: &Path) -> Result<NativeSnapshot> {
        self.checkpoint_into(dir)
    }

    fn live_data_estimate(&self) -> Option<u64> {
        Some(self.estimate_live_data())
    }

    fn compact(&mut self) -> Result<CompactionStats> {
        self.compact_all()
    }

    fn lazy_progress(&self) -> Option<lazy::LazyProgress> {
        self.lazy.as_ref().map(|l| l.progress())
    }

    fn wait_local(&self) -> Result<()> {
        self.lazy.as_ref().map_or(Ok(()), |l| l.wait_local())
    }

    fn native_property(&self, name: &str) -> Option<u64> {
        self.int_property_sum(name)
    }

    fn open_stored_timers(&mut self, spec: StoredTimers<'_>) -> Result<RocksDbTimers> {
        // The buffer's share of the budget leaves RocksDB's now, not before: a slot without
        // RocksDB timers keeps it.
        let buffer_bytes = if spec.reserve_buffer {
            self.memory.reserve_timer_buffer()
        } else {
            0
        };
        Ok(RocksDbTimers::open(
            self.shared_db(),
            spec.event_time_state,
            spec.processing_time_state,
            spec.key_groups,
            spec.prefix_bytes,
            spec.cache_size,
        )?
        .with_write_buffer(buffer_bytes))
    }

    fn flush(&mut self) -> Result<()> {
        self.check_open()?;
        self.memtable_flush_pending = false;
        self.write_back_all(WriteBackFor::Flush)?;
        self.flush_memtables(true)
    }

    fn start_flush(&mut self) -> Result<()> {
        self.check_open()?;
        match self.cache.as_mut() {
            Some(cache) => {
                cache.begin_drain();
                self.memtable_flush_pending = true;
                self.pre_flush_step().map(|_| ())
            }
            None => self.flush_memtables(false),
        }
    }

    fn continue_flush(&mut self) -> Result<bool> {
        self.check_open()?;
        self.pre_flush_step()
    }
}

/// Why every dirty cache entry is written back (which durations record it).
#[derive(Clone, Copy, Debug)]
enum WriteBackFor {
    /// The checkpoint's synchronous phase.
    Checkpoint,
    /// `flush()` (end of a run, disk-size measurements).
    Flush,
}

/// Dirty entries a pre-flush step writes (one sorted `WriteBatch`, ~0.3-0.5 ms here): the
/// pre-flush spreads the write-back over the records between a barrier's sighting and the
/// barrier (~74k records later) instead of holding the slot for all of it at once (60-80 ms at
/// the default dirty bound on the 1M-counter job).
pub const PRE_FLUSH_CHUNK: usize = 512;

/// Collects the cache's writes into one `WriteBatch`, resolving each state's column family once.
struct BatchWriter<'a> {
    batch: WriteBatch,
    cfs: Vec<Option<Arc<rocksdb::BoundColumnFamily<'a>>>>,
    /// A write of a state without a column family (a bug): the commit fails, so the backend is
    /// poisoned rather than the write dropped.
    unknown_state: Option<StateId>,
}

impl<'a> BatchWriter<'a> {
    fn new(db: &'a Db, states: &[(String, StateKind)]) -> Self {
        Self {
            batch: WriteBatch::default(),
            cfs: states.iter().map(|(n, _)| db.cf_handle(n)).collect(),
            unknown_state: None,
        }
    }

    fn add(&mut self, op: CacheWrite<'_>) {
        let state = match op {
            CacheWrite::Put(s, ..) | CacheWrite::Delete(s, _) | CacheWrite::Merge(s, ..) => s,
        };
        // Every cached state was registered, so its column family exists; if not, the write
        // cannot be placed and the commit fails (the cache has let go of it already).
        let Some(Some(cf)) = self.cfs.get(state as usize) else {
            self.unknown_state.get_or_insert(state);
            return;
        };
        match op {
            CacheWrite::Put(_, k, v) => self.batch.put_cf(cf, k, v),
            CacheWrite::Delete(_, k) => self.batch.delete_cf(cf, k),
            CacheWrite::Merge(_, k, v) => self.batch.merge_cf(cf, k, v),
        }
    }

    fn commit(
        self,
        db: &Db,
        opts: &WriteOptions,
        fault: Option<&WriteBackFault>,
        op: &'static str,
    ) -> Result<()> {
        if let Some(state) = self.unknown_state {
            return Err(EngineError::InvalidArgument(format!(
                "{op}: the state cache holds a write of state id {state}, which has no column family"
            )));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        if let Some(f) = fault {
            f.check(op)?;
        }
        db.write_opt(&self.batch, opts)
            .map_err(EngineError::rocks(op))
    }
}

/// Test and torture only: fails chosen write-back commits of one RocksDB backend, the
/// `WriteBatch`es that carry the state cache's evicted, dirty-bound, pre-flush and checkpoint
/// writes into RocksDB (what a full disk or an I/O error does to `DB::write`). Scoped per
/// instance like `cairn_snapshot::FailPoints`, so tests run in parallel: hand it to
/// [`crate::SlotBuilder::write_back_fault`]. A backend without one pays one `Option` check per
/// write-back commit. An injected failure writes nothing and surfaces as an
/// [`EngineError::Io`] of kind `StorageFull`.
#[derive(Debug, Default)]
pub struct WriteBackFault {
    /// (commits to let pass, commits to fail after them).
    armed: Mutex<(u64, u64)>,
    commits: AtomicU64,
    fired: AtomicU64,
}

impl WriteBackFault {
    /// A hook with nothing armed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Arms the hook: the next `skip` write-back commits pass, then `times` fail (`u64::MAX`:
    /// all). `arm(0, 1)` fails the next one.
    pub fn arm(&self, skip: u64, times: u64) {
        if let Ok(mut a) = self.armed.lock() {
            *a = (skip, times);
        }
    }

    /// Lets every later commit pass.
    pub fn disarm(&self) {
        self.arm(0, 0);
    }

    /// Write-back commits reached (failed or not; empty batches are not commits).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Failures injected so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Called right before a write-back commit: the injected failure, when armed.
    fn check(&self, op: &'static str) -> Result<()> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let fire = match self.armed.lock() {
            Ok(mut a) if a.0 > 0 => {
                a.0 -= 1;
                false
            }
            Ok(mut a) if a.1 > 0 => {
                a.1 -= 1;
                true
            }
            _ => false,
        };
        if !fire {
            return Ok(());
        }
        self.fired.fetch_add(1, Ordering::Relaxed);
        Err(EngineError::Io {
            op: format!("rocksdb {op}"),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "write-back commit failed by an injected fault (WriteBackFault)",
            ),
        })
    }
}

/// Total size of the regular files under `dir` (0 when unreadable).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn open(dir: &Path) -> RocksDbBackend {
        let memory = SlotMemory::build_shared(&cairn_memory::MemoryConfig::default()).unwrap();
        let range = KeyGroupRange::for_slot(128, 1, 0).unwrap();
        RocksDbBackend::open(RocksDbParams {
            dir,
            range,
            max_parallelism: 128,
            config: &RocksDbConfig::default(),
            memory,
            hook: None,
            state_cache: &StateCacheConfig::default(),
            restore: None,
        })
        .unwrap()
        .0
    }

    fn assert_poisoned(r: Result<impl std::fmt::Debug>, what: &str) {
        match r {
            Err(e @ EngineError::Poisoned { .. }) => assert_eq!(e.kind(), ErrorKind::Closed),
            other => panic!("{what}: {other:?}"),
        }
    }

    /// A cache write of a state without a column family used to be dropped silently in release
    /// builds; now its write-back fails and poisons the backend.
    #[test]
    fn a_write_of_an_unknown_state_poisons_instead_of_vanishing() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        let desc = StateDescriptor::new("op", "v", StateKind::Value);
        b.create_state(0, &desc).unwrap();
        let scope = ScopeKey::new(0, 1, b"k", b"");
        b.put(0, &scope, b"1").unwrap();
        // A bug's write: state 7 was never created.
        b.cache.as_mut().unwrap().put(7, b"orphan", b"x");
        let e = b.flush_cache().unwrap_err();
        assert!(e.to_string().contains("state id 7"), "{e}");
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert_poisoned(b.get(0, &scope), "read");
        assert_poisoned(b.put(0, &scope, b"2"), "write");
        assert_poisoned(b.flush_cache(), "flush_cache");
        assert_poisoned(b.start_flush(), "pre-flush");
    }

    /// Every call after a failed write-back commit is refused with the original failure named,
    /// and the faulted commit wrote nothing.
    #[test]
    fn a_failed_write_back_refuses_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let fault = WriteBackFault::new();
        let mut b = open(dir.path()).with_write_back_fault(Some(Arc::clone(&fault)));
        b.create_state(0, &StateDescriptor::new("op", "v", StateKind::Value))
            .unwrap();
        b.create_state(1, &StateDescriptor::new("op", "m", StateKind::Map))
            .unwrap();
        let scope = ScopeKey::new(0, 1, b"k", b"");
        b.put(0, &scope, b"1").unwrap();
        fault.arm(0, 1);
        let e = b.flush_cache().unwrap_err();
        assert!(e.to_string().contains("injected fault"), "{e}");
        assert_eq!(fault.fired(), 1);
        let cf = b.cf(0).unwrap();
        assert_eq!(b.db.get_cf(&cf, scope.composite()).unwrap(), None);
        drop(cf);
        assert_poisoned(b.get(0, &scope), "get");
        assert_poisoned(b.put(0, &scope, b"2"), "put");
        assert_poisoned(b.clear(0, &scope), "clear");
        assert_poisoned(b.list_get(0, &scope), "list_get");
        assert_poisoned(b.map_get(1, &scope, b"u"), "map_get");
        assert_poisoned(b.map_put(1, &scope, b"u", b"v"), "map_put");
        assert_poisoned(b.map_remove(1, &scope, b"u"), "map_remove");
        assert_poisoned(b.map_entries(1, &scope), "map_entries");
        assert_poisoned(b.scan_key_group(0, 0), "scan_key_group");
        assert_poisoned(b.flush_cache(), "flush_cache");
        assert_poisoned(b.flush(), "flush");
        assert_poisoned(b.start_flush(), "start_flush");
        assert_poisoned(b.continue_flush(), "continue_flush");
        assert_poisoned(
            b.create_state(2, &StateDescriptor::new("op", "w", StateKind::Value)),
            "create_state",
        );
    }
}
