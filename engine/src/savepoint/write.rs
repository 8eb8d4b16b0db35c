//! Writing a savepoint from a committed checkpoint (`cairn savepoint create`, and a host's
//! stop-with-savepoint after its final checkpoint): the checkpoint is consistent and
//! committed, so the savepoint is exactly its state, written off the slots' threads.
//!
//! - Canonical: each old slot is restored into a scratch slot of its own backend (timers on the
//!   heap), its key groups scanned state by state into chunks, its timers drained into the
//!   chunks after its entries; operator state is copied per old slot. A canonical savepoint is
//!   a full snapshot: entries of states registered with full-snapshot TTL cleanup that are
//!   expired at the savepoint's time are left out (Flink's `cleanupFullSnapshot`; the
//!   checkpoint records those TTLs, see `StateInfo::full_snapshot_ttl_ms`).
//! - Native: every file of the checkpoint is copied as it is (server-side on one store) under
//!   the savepoint directory, and the manifest records the checkpoint's metadata with names
//!   relative to it.
//!
//! The manifest is written last; a failed write deletes what it uploaded, best effort (an
//! uncommitted savepoint directory is not a savepoint: restore refuses it).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cairn_snapshot::savepoint::{
    CANONICAL_DIR, ChunkFile, FORMAT, OPERATOR_DIR, OperatorStateFile, SavepointDir, SavepointKind,
    SavepointManifest, SavepointSource, VERSION,
};
use cairn_snapshot::transfer;
use cairn_snapshot::{
    CheckpointMetadata, CheckpointStore, Clock, StateInfo, StorageRoot, SystemClock,
};
use cairn_timers::{TimeDomain, Timer};
use serde::Serialize;

use super::canonical::ChunkWriter;
use crate::backend::StateKind;
use crate::checkpoint::{CheckpointLocation, RestoredCheckpoint, checkpointer};
use crate::config::{BackendKind, CairnConfig, TimerServiceKind};
use crate::error::{EngineError, Result};
use crate::operator_state::OPERATOR_STATE_FILE;
use crate::slot::{Slot, TIMER_OPERATOR};
use crate::ttl::{self, ListCleanup};

/// Chunks are cut at about this many uncompressed bytes (a reader holds one in memory).
pub const CHUNK_TARGET_BYTES: usize = 8 << 20;

/// What [`create_savepoint`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SavepointReport {
    /// Where the savepoint is (`<storage url>/<name>`).
    pub location: String,
    /// Canonical or native.
    pub kind: SavepointKind,
    /// The checkpoint it was made from.
    pub checkpoint_id: u64,
    /// Slots of that checkpoint.
    pub parallelism: u32,
    /// Objects written (manifest excluded).
    pub files: u64,
    /// Bytes written, as stored.
    pub stored_bytes: u64,
    /// State entries written (canonical).
    pub entries: u64,
    /// Timers written (canonical).
    pub timers: u64,
    /// State entries and list elements left out because their time-to-live had expired
    /// (canonical; states with full-snapshot TTL cleanup only).
    pub expired: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A savepoint's place: `<storage url>/<name>`, the name one plain directory name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointLocation {
    /// The storage root URL.
    pub storage_url: String,
    /// The savepoint directory's name.
    pub name: String,
}

impl SavepointLocation {
    /// Parses `<storage url>/<name>` (e.g. `file:///data/savepoints/sp-1`).
    pub fn parse(url: &str) -> Result<Self> {
        let loc = CheckpointLocation::parse(url)?;
        if loc.checkpoint.is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "savepoint location {url}: a savepoint is a directory <storage url>/<name>, not a chk-<id>"
            )));
        }
        cairn_snapshot::object_layout::check_job_name(&loc.job)?;
        Ok(Self {
            storage_url: loc.storage_url,
            name: loc.job,
        })
    }

    /// `<storage url>/<name>`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.storage_url.trim_end_matches('/'), self.name)
    }
}

/// Writes a savepoint of `kind` at `target` from the committed checkpoint `source` (the given
/// id or the job's latest). `config` gives the storage options and a working directory for
/// scratch files (removed after). The source is only read. The savepoint's time (its
/// `created_at_ms`, and "now" for full-snapshot TTL cleanup) is the system clock's; see
/// [`create_savepoint_with_clock`].
pub fn create_savepoint(
    config: &CairnConfig,
    source: &CheckpointLocation,
    target: &SavepointLocation,
    kind: SavepointKind,
) -> Result<SavepointReport> {
    create_savepoint_with_clock(config, source, target, kind, Arc::new(SystemClock))
}

/// [`create_savepoint`] reading the savepoint's time from `clock` (a host's processing-time
/// clock, a test's manual clock).
pub fn create_savepoint_with_clock(
    config: &CairnConfig,
    source: &CheckpointLocation,
    target: &SavepointLocation,
    kind: SavepointKind,
    clock: Arc<dyn Clock>,
) -> Result<SavepointReport> {
    let t = Instant::now();
    let restored = RestoredCheckpoint::load(&config.checkpoint, source)?;
    if restored.savepoint.is_some() {
        return Err(EngineError::InvalidArgument(format!(
            "{}/{} is a savepoint: create savepoints from checkpoints",
            source.storage_url, source.job
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.checkpoint.transfer_threads.clamp(1, 8) as usize)
        .enable_all()
        .build()
        .map_err(|e| EngineError::Io {
            op: "start savepoint runtime".into(),
            source: e,
        })?;
    let storage =
        StorageRoot::from_url(&target.storage_url, &config.checkpoint.storage)?.with_clock(clock);
    let dir = SavepointDir::new(storage.root(), &target.name)?;
    if rt.block_on(dir.read_manifest(&storage))?.is_some() {
        return Err(EngineError::InvalidArgument(format!(
            "a savepoint already exists at {}",
            target.url()
        )));
    }
    if !rt.block_on(dir.is_empty(&storage))? {
        return Err(EngineError::InvalidArgument(format!(
            "{} is not empty: a savepoint goes into a new directory (never into a job's)",
            target.url()
        )));
    }
    let scratch =
        config
            .state
            .working_dir
            .join(format!("savepoint-{}-{}", std::process::id(), target.name));
    let mut out = Output {
        rt: &rt,
        storage: &storage,
        dir: &dir,
        written: Vec::new(),
        stored_bytes: 0,
        pending: std::collections::VecDeque::new(),
    };
    let meta = &restored.metadata;
    let mut manifest = SavepointManifest {
        format: FORMAT.into(),
        version: VERSION,
        kind,
        created_at_ms: storage.now_ms(),
        max_parallelism: meta.max_parallelism,
        parallelism: meta.slots.len() as u32,
        backend: meta
            .slots
            .first()
            .map(|h| h.backend.clone())
            .unwrap_or_else(|| "rocksdb".into()),
        source: SavepointSource {
            job: meta.job.clone(),
            checkpoint_id: meta.checkpoint_id,
        },
        properties: meta.properties.clone(),
        states: Vec::new(),
        chunks: Vec::new(),
        operator_state: Vec::new(),
        checkpoint: None,
    };
    let result = match kind {
        SavepointKind::Canonical => {
            write_canonical(config, &restored, &scratch, &mut out, &mut manifest)
        }
        SavepointKind::Native => write_native(&restored, &scratch, &mut out, &mut manifest),
    }
    .and_then(|counts| {
        rt.block_on(dir.commit(&storage, &manifest))?;
        Ok(counts)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let Counts {
        entries,
        timers,
        expired,
    } = match result {
        Ok(c) => c,
        Err(e) => {
            out.remove_written();
            return Err(e);
        }
    };
    Ok(SavepointReport {
        location: target.url(),
        kind,
        checkpoint_id: meta.checkpoint_id,
        parallelism: manifest.parallelism,
        files: out.written.len() as u64,
        stored_bytes: out.stored_bytes,
        entries,
        timers,
        expired,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Where a savepoint's objects go, and what was written (removed if the savepoint fails).
struct Output<'a> {
    rt: &'a tokio::runtime::Runtime,
    storage: &'a StorageRoot,
    dir: &'a SavepointDir,
    written: Vec<object_store::path::Path>,
    stored_bytes: u64,
    /// Objects being compressed and uploaded, oldest first.
    pending: std::collections::VecDeque<Pending>,
}

/// An object in flight: where its facts go once written.
struct Pending {
    slot: Target,
    task: tokio::task::JoinHandle<Result<(String, u64, u64)>>,
}

/// Which manifest entry a pending object fills.
enum Target {
    Chunk(usize),
    Operator(usize),
}

/// Objects compressed and uploaded at once, per transfer thread (bounds the memory held:
/// chunks are [`CHUNK_TARGET_BYTES`]).
const IN_FLIGHT_PER_THREAD: usize = 2;

impl Output<'_> {
    /// Starts compressing `bytes` (zstd level 1) and uploading them as the savepoint's
    /// `relative` object, for manifest entry `slot`; waits for the oldest object first when
    /// `limit` are in flight. The scan goes on meanwhile.
    fn submit(
        &mut self,
        manifest: &mut SavepointManifest,
        relative: &str,
        bytes: Vec<u8>,
        slot: Target,
        limit: usize,
    ) -> Result<()> {
        while self.pending.len() >= limit.max(1) {
            self.finish_one(manifest)?;
        }
        let to = self.dir.object(relative);
        self.written.push(to.clone());
        let storage = self.storage.clone();
        let task = self
            .rt
            .spawn(async move { Ok(transfer::upload_compressed(&storage, bytes, &to, 1).await?) });
        self.pending.push_back(Pending { slot, task });
        Ok(())
    }

    /// Waits for the oldest object in flight and records its facts in the manifest.
    fn finish_one(&mut self, manifest: &mut SavepointManifest) -> Result<()> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let (sha256, size, stored) = self
            .rt
            .block_on(p.task)
            .map_err(|e| EngineError::InvalidArgument(format!("savepoint upload task: {e}")))??;
        self.stored_bytes += stored;
        match p.slot {
            Target::Chunk(i) => {
                let c = &mut manifest.chunks[i];
                (c.sha256, c.size, c.stored_size) = (sha256, size, stored);
            }
            Target::Operator(i) => {
                let f = &mut manifest.operator_state[i];
                (f.sha256, f.size, f.stored_size) = (sha256, size, stored);
            }
        }
        Ok(())
    }

    /// Waits for every object in flight.
    fn finish(&mut self, manifest: &mut SavepointManifest) -> Result<()> {
        while !self.pending.is_empty() {
            self.finish_one(manifest)?;
        }
        Ok(())
    }

    fn remove_written(&mut self) {
        for p in self.pending.drain(..) {
            p.task.abort();
            let _ = self.rt.block_on(p.task);
        }
        for p in &self.written {
            if let Err(e) = self.rt.block_on(self.storage.delete(p)) {
                tracing::warn!(object = %p, error = %e, "removing a failed savepoint's object failed");
            }
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |e| EngineError::Io {
        op: format!("{op} {}", path.display()),
        source: e,
    }
}

/// What a savepoint write counted.
#[derive(Default)]
struct Counts {
    entries: u64,
    timers: u64,
    expired: u64,
}

/// The canonical savepoint's chunks and operator state.
fn write_canonical(
    config: &CairnConfig,
    restored: &RestoredCheckpoint,
    scratch: &Path,
    out: &mut Output<'_>,
    manifest: &mut SavepointManifest,
) -> Result<Counts> {
    let meta = &restored.metadata;
    let parallelism = meta.slots.len() as u32;
    let mut handles: Vec<_> = meta.slots.iter().collect();
    handles.sort_by_key(|h| h.slot);
    let mut counts = Counts::default();
    // Full-snapshot TTL cleanup reads the time once: every slot's entries expire alike.
    let now = i64::try_from(manifest.created_at_ms).unwrap_or(i64::MAX);
    let limit = config.checkpoint.transfer_threads as usize * IN_FLIGHT_PER_THREAD;
    for (i, h) in handles.iter().enumerate() {
        if h.slot != i as u32 {
            return Err(EngineError::InvalidArgument(format!(
                "checkpoint {} has no slot {i} (slots must be 0..{parallelism})",
                meta.checkpoint_id
            )));
        }
        let slot_scratch = scratch.join(format!("slot-{}", h.slot));
        let restore_dir = slot_scratch.join("restore");
        let (files, _) = checkpointer::download_slot(
            out.rt,
            &config.checkpoint,
            restored,
            h.key_groups,
            &restore_dir,
        )?;
        let mut c = config.clone();
        c.state.backend = if h.backend == "heap" {
            BackendKind::Heap
        } else {
            BackendKind::RocksDb
        };
        c.state.timer_service = TimerServiceKind::Heap;
        c.state.max_parallelism = Some(meta.max_parallelism);
        c.checkpoint.interval = None;
        let mut slot = Slot::builder(&c)
            .slot(h.slot, parallelism)
            .working_dir(slot_scratch.join("db"))
            .restore(files)
            .open()?;
        if slot.key_groups() != h.key_groups {
            return Err(EngineError::InvalidArgument(format!(
                "slot {} of checkpoint {} has key groups {}, not those of slot {} of {parallelism} ({})",
                h.slot,
                meta.checkpoint_id,
                h.key_groups,
                h.slot,
                slot.key_groups()
            )));
        }
        // The slot's user states and their index in the manifest.
        let mut ids = Vec::new();
        for (id, d) in slot.states().iter().enumerate() {
            if d.operator == TIMER_OPERATOR {
                continue;
            }
            let name = d.full_name();
            let ttl = slot.backend().state_has_ttl(id as u32);
            let index = match manifest.states.iter().position(|s| s.name == name) {
                Some(i) if manifest.states[i].ttl != ttl => {
                    return Err(EngineError::Corrupt {
                        state: name,
                        reason: "old slots stored it with and without TTL".into(),
                    });
                }
                Some(i) if manifest.states[i].kind != d.kind.name() => {
                    return Err(EngineError::Corrupt {
                        state: name,
                        reason: format!(
                            "old slots registered it as {} and as {}",
                            manifest.states[i].kind,
                            d.kind.name()
                        ),
                    });
                }
                Some(i) => i,
                None => {
                    manifest.states.push(StateInfo {
                        name,
                        ttl,
                        full_snapshot_ttl_ms: None,
                        kind: d.kind.name().into(),
                    });
                    manifest.states.len() - 1
                }
            };
            // Full-snapshot TTL cleanup: the TTL the job had for this state, when it stores
            // timestamps.
            let cleanup_ttl_ms = h
                .states
                .iter()
                .find(|s| s.name == manifest.states[index].name)
                .and_then(|s| s.full_snapshot_ttl_ms)
                .filter(|_| ttl)
                .and_then(|ms| i64::try_from(ms).ok());
            ids.push((id as u32, index as u32, d.kind, cleanup_ttl_ms));
        }
        let mut chunks = Chunks {
            writer: ChunkWriter::new(),
            slot: h.slot,
            next: 0,
            limit,
        };
        let mut live_list = Vec::new();
        for kg in h.key_groups.iter() {
            for &(id, index, kind, cleanup_ttl_ms) in &ids {
                for e in slot.scan_key_group(id, kg)? {
                    let value = match cleanup_ttl_ms {
                        None => &e.value[..],
                        Some(ttl_ms) if kind == StateKind::List => {
                            match ttl::clean_stored_list(&e.value, ttl_ms, now, &mut live_list) {
                                ListCleanup::Keep => &e.value[..],
                                ListCleanup::Remove { expired } => {
                                    counts.expired += expired as u64;
                                    continue;
                                }
                                ListCleanup::Changed { expired } => {
                                    counts.expired += expired as u64;
                                    &live_list[..]
                                }
                            }
                        }
                        Some(ttl_ms) if ttl::stored_expired(&e.value, ttl_ms, now) => {
                            counts.expired += 1;
                            continue;
                        }
                        Some(_) => &e.value[..],
                    };
                    chunks
                        .writer
                        .entry(index, kg, &e.key, &e.namespace, &e.user_key, value);
                    counts.entries += 1;
                    chunks.cut_if_full(out, manifest)?;
                }
            }
        }
        let mut t = Timer::default();
        for domain in TimeDomain::ALL {
            while slot.poll_timer(domain, i64::MAX, &mut t)? {
                chunks
                    .writer
                    .timer(domain, t.key_group, t.timestamp, &t.key, &t.namespace);
                counts.timers += 1;
                chunks.cut_if_full(out, manifest)?;
            }
        }
        chunks.cut(out, manifest)?;
        drop(slot);
        let bytes = out.rt.block_on(CheckpointStore::read_private_file(
            restored.storage(),
            h,
            OPERATOR_STATE_FILE,
            &slot_scratch.join("operator"),
        ))?;
        if let Some(bytes) = bytes {
            let object = format!("{OPERATOR_DIR}/slot-{}.zst", h.slot);
            manifest.operator_state.push(OperatorStateFile {
                slot: h.slot,
                object: object.clone(),
                sha256: String::new(),
                size: 0,
                stored_size: 0,
            });
            let i = manifest.operator_state.len() - 1;
            out.submit(manifest, &object, bytes, Target::Operator(i), limit)?;
        }
        let _ = std::fs::remove_dir_all(&slot_scratch);
    }
    out.finish(manifest)?;
    Ok(counts)
}

/// The chunk being filled for one old slot.
struct Chunks {
    writer: ChunkWriter,
    slot: u32,
    next: u32,
    /// Objects in flight at most.
    limit: usize,
}

impl Chunks {
    fn cut_if_full(
        &mut self,
        out: &mut Output<'_>,
        manifest: &mut SavepointManifest,
    ) -> Result<()> {
        if self.writer.len() >= CHUNK_TARGET_BYTES {
            self.cut(out, manifest)?;
        }
        Ok(())
    }

    /// Hands the chunk (if it has records) to the uploads and starts the next.
    fn cut(&mut self, out: &mut Output<'_>, manifest: &mut SavepointManifest) -> Result<()> {
        let Some((lo, hi)) = self.writer.key_groups() else {
            return Ok(());
        };
        let records = self.writer.records();
        let bytes = self.writer.take();
        let object = format!(
            "{CANONICAL_DIR}/slot-{}-{:05}.chunk.zst",
            self.slot, self.next
        );
        self.next += 1;
        manifest.chunks.push(ChunkFile {
            object: object.clone(),
            key_groups: cairn_base::KeyGroupRange::new(lo as u32, hi as u32),
            records,
            sha256: String::new(),
            size: 0,
            stored_size: 0,
        });
        let i = manifest.chunks.len() - 1;
        out.submit(manifest, &object, bytes, Target::Chunk(i), self.limit)
    }
}

/// The native savepoint: every file of the checkpoint copied as it is; returns (0, 0).
fn write_native(
    restored: &RestoredCheckpoint,
    scratch: &Path,
    out: &mut Output<'_>,
    manifest: &mut SavepointManifest,
) -> Result<Counts> {
    let src = restored.storage();
    let same_store = src.identity() == out.storage.identity();
    let mut meta: CheckpointMetadata = restored.metadata.clone();
    let mut copied = std::collections::HashSet::new();
    for h in &mut meta.slots {
        for st in &h.states {
            if !st.name.starts_with(&format!("{TIMER_OPERATOR}/"))
                && !manifest.states.iter().any(|s| s.name == st.name)
            {
                manifest.states.push(st.clone());
            }
        }
        let files = h
            .shared
            .iter_mut()
            .map(|f| (&mut f.object, f.size))
            .chain(h.private.iter_mut().map(|f| (&mut f.object, f.stored_size)));
        for (object, size) in files {
            // `<job>/shared/<name>` -> `shared/<name>`; `<job>/chk-<id>/...` -> `chk-<id>/...`.
            let relative = object
                .split_once('/')
                .map(|(_, rest)| rest.to_string())
                .ok_or_else(|| EngineError::InvalidArgument(format!("object {object}")))?;
            let from = cairn_snapshot::JobLayout::new(src.root().clone(), "").resolve(object);
            let to = out.dir.object(&relative);
            if copied.insert(relative.clone()) {
                out.written.push(to.clone());
                if same_store {
                    out.rt.block_on(src.copy(&from, &to))?;
                } else {
                    std::fs::create_dir_all(scratch).map_err(io("create", scratch))?;
                    let local = scratch.join("copy");
                    out.rt.block_on(async {
                        transfer::copy_unverified(src, &from, &local).await?;
                        transfer::upload_file(out.storage, &local, &to).await
                    })?;
                    let _ = std::fs::remove_file(&local);
                }
                out.stored_bytes += size;
            }
            *object = relative;
        }
    }
    meta.job = out.dir.name().to_string();
    meta.referenced_jobs.clear();
    meta.restored_from = None;
    manifest.checkpoint = Some(meta);
    Ok(Counts::default())
}
