//! The job-level checkpoint coordinator: ids, the asynchronous phase, failure tolerance,
//! restore. One per job (it owns the job's `CheckpointStore` and a small tokio runtime for
//! transfers); slots hand it their [`SyncSnapshot`]s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_snapshot::savepoint::{SavepointDir, SavepointManifest};
use cairn_snapshot::{
    CheckpointMetadata, CheckpointStore, FetchedObjects, JobLayout, LeaseOptions, LocalSnapshot,
    RestoredFrom, SlotHandle, SlotUploadReport, SlotUploadState, SnapshotError, StorageRoot,
    UploadPolicy, UploadTarget,
};
use serde::Serialize;

use super::config::{CheckpointConfig, ClaimMode, FileVerify, RestoreFetch};
use super::lazy_source::StoreSource;
use super::local::{self, RestoredVia, SlotRestoreReport};
use super::rebase::{self, RebaseState};
use super::slot_uploader::SlotAck;
use super::sync::{HEAP_SNAPSHOT_FILE, SyncSnapshot};
use crate::backend::rocks::lazy::LazyRestore;
use crate::backend::{CompactionStats, MergeSource, RestoredFiles, StateDescriptor, StateKind};
use crate::error::{EngineError, Result};
use crate::keygroup::KeyGroupRange;
use crate::operator_state::{OPERATOR_STATE_FILE, OperatorState};
use crate::slot::Slot;

/// What one completed checkpoint did (the run JSON's `checkpoints[]`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckpointReport {
    /// Checkpoint id.
    pub id: u64,
    /// Completion time, ms since the Unix epoch.
    pub completed_at_ms: u64,
    /// Bytes uploaded by this checkpoint (Flink's "Checkpointed Data Size").
    pub incremental_bytes: u64,
    /// Bytes of every file the checkpoint references (Flink's "Full Checkpoint Data Size").
    pub full_bytes: u64,
    /// Shared files uploaded now.
    pub files_uploaded: u64,
    /// Shared files reused from earlier checkpoints.
    pub files_reused: u64,
    /// Shared files copied inside the store (first checkpoint after a no-claim restore).
    pub files_copied: u64,
    /// Bytes copied inside the store.
    pub bytes_copied: u64,
    /// Longest synchronous pause over the slots, ms.
    pub sync_ms: f64,
    /// Asynchronous phase (materialize, upload, commit), ms.
    pub async_ms: f64,
    /// Upload throughput of the asynchronous phase, MB/s.
    pub upload_mb_per_s: f64,
    /// Why this checkpoint rebased (`checkpoint.rebase.*`), `None` when it did not: a full
    /// upload (`every-n-checkpoints`), files re-uploaded for their age (`max-file-age`), or
    /// compacted slots (`max-space-amplification`).
    pub rebase: Option<String>,
    /// Of `files_uploaded`: files uploaded again as new objects because of the rebase policy.
    pub files_reuploaded: u64,
    /// Bytes of those files.
    pub bytes_reuploaded: u64,
    /// Largest referenced shared bytes / RocksDB live-data estimate over the slots (0 without
    /// an estimate, e.g. the heap backend).
    pub space_amplification: f64,
    /// Slots whose space amplification exceeds `rebase.max-space-amplification`: the host
    /// compacts them ([`Slot::compact_state`], or [`Checkpointer::compact_if_due`]) before the
    /// next checkpoint.
    pub compact_slots: Vec<u32>,
    /// Whether each slot's snapshot was kept for local recovery.
    pub kept_locally: bool,
}

/// What the asynchronous phase produced.
struct AsyncOutcome {
    meta: CheckpointMetadata,
    incremental: u64,
    files: (u64, u64, u64, u64),
    reuploaded: (u64, u64),
    /// (slot, shared bytes referenced by its handle)
    shared_by_slot: Vec<(u32, u64)>,
}

/// What the slots handed in for a checkpoint.
enum Snapshots {
    /// Synchronous snapshots of [`Slot`]s (materialized in the asynchronous phase).
    Sync(Vec<SyncSnapshot>),
    /// Directories a host prepared itself.
    Local(Vec<LocalSnapshot>),
}

/// Where to restore from: `<storage url>/<job>[/chk-<id>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointLocation {
    /// The storage root (as for `checkpoint.dir`).
    pub storage_url: String,
    /// The job directory.
    pub job: String,
    /// The checkpoint; `None` = the latest committed one.
    pub checkpoint: Option<u64>,
}

impl CheckpointLocation {
    /// Parses `<storage url>/<job>` or `<storage url>/<job>/chk-<id>`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| {
            EngineError::InvalidArgument(format!("restore location {url}: {reason}"))
        };
        let trimmed = url.trim_end_matches('/');
        let (rest, checkpoint) = match trimmed.rsplit_once('/') {
            Some((rest, last)) if last.starts_with("chk-") => {
                let id = cairn_snapshot::object_layout::parse_checkpoint_dir(last)
                    .ok_or_else(|| bad("bad chk-<id>"))?;
                (rest, Some(id))
            }
            _ => (trimmed, None),
        };
        let (base, job) = rest
            .rsplit_once('/')
            .ok_or_else(|| bad("expected <checkpoint dir>/<job>[/chk-<id>]"))?;
        if job.is_empty() || base.is_empty() || base.ends_with(':') {
            return Err(bad("expected <checkpoint dir>/<job>[/chk-<id>]"));
        }
        let base = if base.ends_with(":/") {
            format!("{base}/")
        } else {
            base.to_string()
        };
        Ok(Self {
            storage_url: base,
            job: job.to_string(),
            checkpoint,
        })
    }
}

/// A checkpoint (or savepoint) chosen for restore.
#[derive(Clone, Debug)]
pub struct RestoredCheckpoint {
    /// Its metadata. For a canonical savepoint: the savepoint's facts (its source checkpoint's
    /// id, properties, max parallelism) and no slots; its chunks are in the manifest.
    pub metadata: CheckpointMetadata,
    /// Where it is.
    pub source: CheckpointLocation,
    storage: StorageRoot,
    /// Shared objects already downloaded for a slot of this process: a later slot links them.
    fetched: Arc<FetchedObjects>,
    /// Set when the location is a savepoint.
    pub(crate) savepoint: Option<RestoredSavepoint>,
}

/// A savepoint chosen for restore.
#[derive(Clone, Debug)]
pub(crate) struct RestoredSavepoint {
    pub dir: SavepointDir,
    pub manifest: Arc<SavepointManifest>,
}

impl RestoredCheckpoint {
    /// Reads checkpoint `source` (the given id or the latest committed one) without taking
    /// any lease: what a slot in another process restores from, once the job's committer
    /// prepared the restore ([`Checkpointer::resume_from`]) and told it which checkpoint.
    /// A location naming a savepoint directory reads the savepoint.
    pub fn load(cfg: &CheckpointConfig, source: &CheckpointLocation) -> Result<Self> {
        let storage = StorageRoot::from_url(&source.storage_url, &cfg.storage)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Io {
                op: "start restore runtime".into(),
                source: e,
            })?;
        rt.block_on(locate(storage, source))
    }

    /// The storage the checkpoint is in.
    pub(crate) fn storage(&self) -> &StorageRoot {
        &self.storage
    }

    /// Whether this is a savepoint (which a job never claims).
    pub fn is_savepoint(&self) -> bool {
        self.savepoint.is_some()
    }
}

/// Where a job restarting after a failure restores from (Flink's priority): its own latest
/// committed checkpoint (`job_url` is `<checkpoint dir>/<job>`, as
/// [`Checkpointer::job_url`] gives it) when it has one, else the checkpoint or savepoint it
/// started from (`started_from`), else nothing (`None`: start empty). A savepoint is never
/// preferred over a newer checkpoint of the job: the checkpoint holds everything the job did
/// since, and restoring the savepoint again would replay it.
pub fn recovery_location(
    cfg: &CheckpointConfig,
    job_url: &str,
    started_from: Option<&CheckpointLocation>,
) -> Result<Option<CheckpointLocation>> {
    let job = CheckpointLocation::parse(job_url)?;
    let storage = StorageRoot::from_url(&job.storage_url, &cfg.storage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::Io {
            op: "start recovery runtime".into(),
            source: e,
        })?;
    let layout = JobLayout::new(storage.root().clone(), job.job.clone());
    let latest = rt
        .block_on(cairn_snapshot::store::committed_ids(&storage, &layout))?
        .last()
        .copied();
    Ok(match latest {
        Some(id) => Some(CheckpointLocation {
            checkpoint: Some(id),
            ..job
        }),
        None => started_from.cloned(),
    })
}

/// Reads what `source` names: a savepoint (a directory with a `_savepoint` manifest, no
/// `chk-<id>`), else checkpoint `chk-<id>` of job `source.job` or its latest committed one.
async fn locate(storage: StorageRoot, source: &CheckpointLocation) -> Result<RestoredCheckpoint> {
    if source.checkpoint.is_none() {
        let dir = SavepointDir::new(storage.root(), &source.job)?;
        if let Some(manifest) = dir.read_manifest(&storage).await? {
            let metadata = match manifest.checkpoint_at(&source.job)? {
                Some(native) => native,
                None => CheckpointMetadata {
                    format: cairn_snapshot::metadata::FORMAT.into(),
                    version: cairn_snapshot::metadata::VERSION,
                    checkpoint_id: manifest.source.checkpoint_id,
                    job: source.job.clone(),
                    created_at_ms: manifest.created_at_ms,
                    max_parallelism: manifest.max_parallelism,
                    slots: Vec::new(),
                    restored_from: None,
                    properties: manifest.properties.clone(),
                    referenced_jobs: Vec::new(),
                },
            };
            return Ok(RestoredCheckpoint {
                metadata,
                source: source.clone(),
                storage,
                fetched: Arc::default(),
                savepoint: Some(RestoredSavepoint {
                    dir,
                    manifest: Arc::new(manifest),
                }),
            });
        }
    }
    let store = CheckpointStore::open_read_only(storage.clone(), &source.job).await?;
    let id = match source.checkpoint {
        Some(id) => id,
        None => {
            *store
                .committed_ids()
                .await?
                .last()
                .ok_or_else(|| SnapshotError::NoCheckpoint {
                    what: "(none committed, and no savepoint there)".into(),
                    location: format!("{}/{}", source.storage_url, source.job),
                })?
        }
    };
    let metadata = store.load(id).await?;
    Ok(RestoredCheckpoint {
        metadata,
        source: source.clone(),
        storage,
        fetched: Arc::default(),
        savepoint: None,
    })
}

/// The job-level checkpoint coordinator. See the module doc.
pub struct Checkpointer {
    rt: Arc<tokio::runtime::Runtime>,
    store: Arc<CheckpointStore>,
    cfg: CheckpointConfig,
    uploads: HashMap<u32, SlotUploadState>,
    next_id: u64,
    /// When each id was handed out by [`Checkpointer::trigger_checkpoint`] (the trigger), storage-clock
    /// ms: the timeout runs from there, so barrier collection and the synchronous phases are
    /// under it (as in Flink), not only the uploads.
    triggered_at_ms: BTreeMap<u64, u64>,
    max_parallelism: u32,
    restored_from: Option<RestoredFrom>,
    /// The slots of the checkpoint this job restored (when in this job's storage): a slot's
    /// first checkpoint references their files instead of uploading them again.
    restored_slots: Vec<SlotHandle>,
    consecutive_failures: u32,
    reports: Vec<CheckpointReport>,
    rebase: RebaseState,
    /// Slots asked to compact (slot -> amplification measured then).
    compact_due: HashMap<u32, f64>,
    /// Compactions done since the last checkpoint (slot, amplification, stats).
    compacted: Vec<(u32, f64, CompactionStats)>,
    /// Renews the writer lease every third of its timeout (aborted on drop).
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Dropped by [`Checkpointer::abandon`]: the lease is not released.
    abandoned: bool,
}

impl Drop for Checkpointer {
    /// Stops renewing the writer lease and releases it, so the next writer of the job takes it
    /// at once (and may reuse its files). A crash skips this: the lease then expires.
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if self.abandoned {
            return;
        }
        if let Err(e) = self.rt.block_on(self.store.release_lease()) {
            tracing::debug!(error = %e, "releasing the writer lease failed; it expires instead");
        }
    }
}

/// A readable job name that no other process picks: `job-YYYYMMDDTHHMMSSZ-<pid>-<64 random
/// bits>` (hex). The random part comes from the standard library's per-process hash keys, so
/// two processes started in the same second, even with the same pid on two machines sharing a
/// bucket, get different names.
pub fn new_job_name() -> String {
    use cairn_snapshot::Clock;
    new_job_name_at(cairn_snapshot::SystemClock.now_ms())
}

/// [`new_job_name`] at wall-clock time `now_ms`.
pub fn new_job_name_at(now_ms: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms);
    h.write_u32(std::process::id());
    let random = h.finish();
    let secs = (now_ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "job-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{:x}-{random:016x}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        std::process::id(),
    )
}

impl Checkpointer {
    /// Opens the coordinator of job `job` (a fresh name from [`new_job_name`] for a new run).
    pub fn open(cfg: &CheckpointConfig, job: &str, max_parallelism: u32) -> Result<Self> {
        cfg.validate()?;
        let storage = StorageRoot::from_url(&cfg.dir, &cfg.storage)?;
        Self::open_with_storage(cfg, storage, job, max_parallelism)
    }

    /// [`Checkpointer::open`] on storage built by the caller (`cfg.dir` then only names it):
    /// tests hand in fault-injecting stores and fail points this way.
    pub fn open_with_storage(
        cfg: &CheckpointConfig,
        storage: StorageRoot,
        job: &str,
        max_parallelism: u32,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-checkpoint")
            .enable_all()
            .build()
            .map_err(|e| EngineError::Io {
                op: "start checkpoint runtime".into(),
                source: e,
            })?;
        Self::open_on(cfg, storage, job, max_parallelism, Arc::new(rt))
    }

    /// [`Checkpointer::open_with_storage`] on a runtime built by the caller (and possibly shared
    /// with other coordinators): the deterministic simulation runs every writer of a job on one
    /// current-thread runtime with paused (virtual) time, so every timeout, retry backoff and
    /// lease expiry happens at a reproducible instant of one clock.
    ///
    /// Takes the job's writer lease (a live writer of the same job makes this fail with
    /// `JobLocked`, naming it) and renews it in the background on `rt`.
    pub fn open_on(
        cfg: &CheckpointConfig,
        storage: StorageRoot,
        job: &str,
        max_parallelism: u32,
        rt: Arc<tokio::runtime::Runtime>,
    ) -> Result<Self> {
        cfg.validate()?;
        let lease = LeaseOptions::with_timeout(cfg.writer_lease_timeout);
        let store = rt.block_on(CheckpointStore::open_writer(
            storage,
            job,
            cfg.retained as usize,
            &lease,
        ))?;
        let next_id = store.retained_ids()?.last().map_or(1, |l| l + 1);
        let store = Arc::new(store);
        let renewal = {
            let store = store.clone();
            let every = cfg.writer_lease_timeout / 3;
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match store.renew_lease().await {
                        Ok(()) => {}
                        Err(e @ SnapshotError::Fenced { .. }) => {
                            tracing::error!(error = %e, "this writer lost its job; no checkpoint commits any more");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the writer lease failed; retrying"),
                    }
                }
            })
        };
        Ok(Self {
            rt,
            store,
            cfg: cfg.clone(),
            uploads: HashMap::new(),
            next_id,
            triggered_at_ms: BTreeMap::new(),
            max_parallelism,
            restored_from: None,
            restored_slots: Vec::new(),
            consecutive_failures: 0,
            reports: Vec::new(),
            rebase: RebaseState::default(),
            compact_due: HashMap::new(),
            compacted: Vec::new(),
            renewal: Some(renewal),
            abandoned: false,
        })
    }

    /// Drops the coordinator as a crash would: the writer lease is neither renewed nor
    /// released, so it expires after `writer-lease-timeout` (tests and the simulation of
    /// crashes; a real process gets this by dying).
    pub fn abandon(mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        self.abandoned = true;
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        self.store.layout().job()
    }

    /// `<checkpoint dir>/<job>`: what `--restore-from` takes.
    pub fn job_url(&self) -> String {
        format!("{}/{}", self.cfg.dir.trim_end_matches('/'), self.job())
    }

    /// The job's checkpoint store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Runs a future on the coordinator's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Reports of the checkpoints completed so far.
    pub fn reports(&self) -> &[CheckpointReport] {
        &self.reports
    }

    /// The settings.
    pub fn config(&self) -> &CheckpointConfig {
        &self.cfg
    }

    /// Triggers the next checkpoint: its id (ids continue after a restored checkpoint's, as
    /// Flink's). Its timeout (`checkpoint.timeout`) runs from now.
    pub fn trigger_checkpoint(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        // Ids never completed (declined, expired) are dropped when a later one completes.
        self.triggered_at_ms
            .insert(id, self.store.storage().now_ms());
        id
    }

    /// Whether the consecutive failures so far are within `tolerable-failed`. A writer fenced
    /// by another one never is: it can't commit any more.
    pub fn failure_tolerated(&self) -> bool {
        self.consecutive_failures <= self.cfg.tolerable_failed && !self.fenced()
    }

    /// Whether another writer took this job over (see `cairn_snapshot::lease`).
    pub fn fenced(&self) -> bool {
        self.store.lease().is_some_and(|l| l.fenced().is_err())
    }

    /// The asynchronous phase of checkpoint `id` for all slots: materialize, upload in
    /// parallel, commit. On failure or timeout the checkpoint is aborted (its uploads
    /// released and deleted), counted as a failure, and the error returned.
    pub fn complete(&mut self, id: u64, syncs: Vec<SyncSnapshot>) -> Result<CheckpointReport> {
        self.complete_with(id, syncs, Default::default())
    }

    /// [`Checkpointer::complete`] with host properties stored in the metadata (e.g. the source
    /// position the checkpoint was taken at; read back from [`RestoredCheckpoint::metadata`]).
    pub fn complete_with(
        &mut self,
        id: u64,
        syncs: Vec<SyncSnapshot>,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<CheckpointReport> {
        let sync_ms = syncs
            .iter()
            .map(|s| s.sync_duration.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        // (slot, snapshot dir, slot working dir, live-data estimate)
        let dirs: Vec<(u32, PathBuf, Option<PathBuf>, Option<u64>)> = syncs
            .iter()
            .map(|s| {
                (
                    s.slot,
                    s.dir().to_path_buf(),
                    Some(s.slot_dir().to_path_buf()),
                    s.live_data_bytes(),
                )
            })
            .collect();
        self.finish(id, sync_ms, dirs, Snapshots::Sync(syncs), properties)
    }

    /// The asynchronous phase for snapshots a host built itself: directories of immutable
    /// files described by [`LocalSnapshot`]s (the deterministic simulation's synthetic slots;
    /// a host's own operator state). Same protocol as [`Checkpointer::complete_with`]; no local
    /// recovery copy is kept, and the directories are removed afterwards.
    pub fn complete_local(
        &mut self,
        id: u64,
        locals: Vec<LocalSnapshot>,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<CheckpointReport> {
        let dirs = locals
            .iter()
            .map(|l| (l.slot, l.dir.clone(), None, None))
            .collect();
        self.finish(id, 0.0, dirs, Snapshots::Local(locals), properties)
    }

    /// Where slots of this job in other processes upload ([`SlotUploader`]): the storage URL,
    /// the job and this writer's epoch.
    ///
    /// [`SlotUploader`]: crate::checkpoint::SlotUploader
    pub fn upload_target(&self) -> UploadTarget {
        UploadTarget {
            storage_url: self.cfg.dir.clone(),
            job: self.job().to_string(),
            epoch: self.store.epoch().unwrap_or_default(),
        }
    }

    /// Commits checkpoint `id` from slots' acks uploaded elsewhere ([`SlotAck`]s, one per
    /// slot): each handle is checked and registered
    /// ([`CheckpointStore::accept_slot`]), then the metadata is committed. On failure the
    /// checkpoint is aborted (what its slots uploaded is deleted), counted as a failure and the
    /// error returned, as for [`Checkpointer::complete_with`].
    pub fn commit_acknowledged(
        &mut self,
        id: u64,
        acks: Vec<SlotAck>,
        properties: BTreeMap<String, String>,
    ) -> Result<CheckpointReport> {
        let t = Instant::now();
        let sync_ms = acks.iter().map(|a| a.sync_ms).fold(0.0, f64::max);
        let upload_ms = acks.iter().map(|a| a.upload_ms).fold(0.0, f64::max);
        let mut totals = SlotUploadReport::default();
        for a in &acks {
            let u = &a.upload;
            totals.files_uploaded += u.files_uploaded;
            totals.files_reused += u.files_reused;
            totals.bytes_uploaded += u.bytes_uploaded;
        }
        let handles: Vec<SlotHandle> = acks.iter().map(|a| a.handle.clone()).collect();
        let store = self.store.clone();
        let (max_p, restored_from) = (self.max_parallelism, self.restored_from.clone());
        let committed = self.rt.block_on(async {
            let mut accepted = Vec::with_capacity(handles.len());
            for h in handles.iter().cloned() {
                let (h, copied) = store.accept_slot(id, h).await?;
                totals.files_copied += copied.0;
                totals.bytes_copied += copied.1;
                accepted.push(h);
            }
            store
                .commit(id, max_p, accepted, restored_from, properties)
                .await
        });
        self.triggered_at_ms.remove(&id);
        self.triggered_at_ms.retain(|i, _| *i > id);
        match committed {
            Ok(meta) => {
                self.consecutive_failures = 0;
                let async_ms = upload_ms + t.elapsed().as_secs_f64() * 1000.0;
                let report = CheckpointReport {
                    id,
                    completed_at_ms: meta.created_at_ms,
                    incremental_bytes: totals.bytes_uploaded + meta.to_bytes().len() as u64,
                    full_bytes: meta.full_bytes() + meta.to_bytes().len() as u64,
                    files_uploaded: totals.files_uploaded,
                    files_reused: totals.files_reused,
                    files_copied: totals.files_copied,
                    bytes_copied: totals.bytes_copied,
                    sync_ms,
                    async_ms,
                    upload_mb_per_s: totals.bytes_uploaded as f64
                        / 1e6
                        / (async_ms / 1000.0).max(1e-6),
                    ..CheckpointReport::default()
                };
                self.reports.push(report.clone());
                Ok(report)
            }
            Err(e) => {
                self.discard_uploads(id, &handles);
                self.consecutive_failures += 1;
                tracing::warn!(error = %e, failures = self.consecutive_failures, "checkpoint {id} failed");
                Err(EngineError::CheckpointFailed {
                    id,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Checkpoint `id` was aborted after slots uploaded for it elsewhere: releases what it
    /// registered and deletes what only this attempt wrote (its private files and the shared
    /// objects named after it). Objects a slot uploads after this are orphans for garbage
    /// collection. Never touches a committed checkpoint.
    pub fn discard_uploads(&mut self, id: u64, handles: &[SlotHandle]) {
        let epoch = self.store.epoch().unwrap_or_default();
        let layout = self.store.layout().clone();
        let store = self.store.clone();
        let r = self.rt.block_on(async {
            store.abort(id).await?;
            if store.committed_ids().await?.contains(&id) {
                return Ok(());
            }
            for f in handles.iter().flat_map(|h| h.shared.iter()) {
                if f.object == layout.shared_ref_at(&f.sha256, epoch, id)
                    && !store.is_referenced(&f.object)?
                {
                    store.storage().delete(&layout.resolve(&f.object)).await?;
                }
            }
            for m in store.storage().list(&layout.attempt_dir(id, epoch)).await? {
                store.storage().delete(&m.location).await?;
            }
            Ok::<_, cairn_snapshot::SnapshotError>(())
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cleaning up aborted checkpoint {id} failed; GC will collect its files");
        }
    }

    /// Deletes every committed checkpoint of this job: a cancel without retention
    /// (`retain-on-cancellation = false`). Returns the ids deleted.
    pub fn discard_all_checkpoints(&mut self) -> Result<Vec<u64>> {
        Ok(self.rt.block_on(self.store.discard_all_checkpoints())?)
    }

    /// Counts a checkpoint that failed outside [`Checkpointer::complete_with`] and
    /// [`Checkpointer::commit_acknowledged`] against `tolerable-failed`, as Flink counts it: a
    /// slot declined it after a failure, or it expired before its snapshots were all
    /// collected (nothing of it was uploaded; the host removes the snapshots it collected).
    pub fn checkpoint_failed(&mut self, id: u64, reason: &str) {
        self.consecutive_failures += 1;
        tracing::warn!(
            failures = self.consecutive_failures,
            "checkpoint {id} failed: {reason}"
        );
    }

    /// Consecutive failed checkpoints since the last completed one.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn finish(
        &mut self,
        id: u64,
        sync_ms: f64,
        dirs: Vec<(u32, PathBuf, Option<PathBuf>, Option<u64>)>,
        snapshots: Snapshots,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<CheckpointReport> {
        let t = Instant::now();
        let decision = self
            .rebase
            .decide(&self.cfg.rebase, self.store.storage().now_ms());
        let result = self.run_async_phase(id, snapshots, properties, decision.policy);
        match result {
            Ok(out) => {
                for s in self.uploads.values_mut() {
                    s.confirm(id);
                }
                self.consecutive_failures = 0;
                let kept_locally = self.keep_local_snapshots(id, &out.meta, &dirs);
                // A checkpoint shares nothing with earlier ones when it is the job's first (or
                // the first after a no-claim restore, which copies) or a full rebase.
                self.rebase.completed(decision.policy.full);
                let mut reasons: Vec<String> = decision.reason.into_iter().collect();
                if out.reuploaded.0 > 0 && !decision.policy.full {
                    reasons.push(format!(
                        "max-file-age: {} files ({} bytes) older than {} uploaded again",
                        out.reuploaded.0,
                        out.reuploaded.1,
                        self.cfg
                            .rebase
                            .max_file_age
                            .map(rebase::human)
                            .unwrap_or_default()
                    ));
                }
                for (slot, amp, stats) in self.compacted.drain(..) {
                    reasons.push(format!(
                        "max-space-amplification: slot {slot} compacted at {amp:.2} (SSTs {} -> {} bytes, {:.0} ms)",
                        stats.sst_bytes_before, stats.sst_bytes_after, stats.ms
                    ));
                }
                let (mut max_amp, mut compact_slots) = (0.0f64, Vec::new());
                for (slot, shared) in &out.shared_by_slot {
                    let live = dirs.iter().find(|d| d.0 == *slot).and_then(|d| d.3);
                    let amp = rebase::amplification(*shared, live);
                    max_amp = max_amp.max(amp);
                    if self
                        .cfg
                        .rebase
                        .max_space_amplification
                        .is_some_and(|max| amp > max)
                    {
                        compact_slots.push(*slot);
                        self.compact_due.insert(*slot, amp);
                    }
                }
                let async_ms = t.elapsed().as_secs_f64() * 1000.0;
                let meta = &out.meta;
                let report = CheckpointReport {
                    id,
                    completed_at_ms: meta.created_at_ms,
                    incremental_bytes: out.incremental + meta.to_bytes().len() as u64,
                    full_bytes: meta.full_bytes() + meta.to_bytes().len() as u64,
                    files_uploaded: out.files.0,
                    files_reused: out.files.1,
                    files_copied: out.files.2,
                    bytes_copied: out.files.3,
                    sync_ms,
                    async_ms,
                    upload_mb_per_s: out.incremental as f64 / 1e6 / (async_ms / 1000.0).max(1e-6),
                    rebase: (!reasons.is_empty()).then(|| reasons.join("; ")),
                    files_reuploaded: out.reuploaded.0,
                    bytes_reuploaded: out.reuploaded.1,
                    space_amplification: max_amp,
                    compact_slots,
                    kept_locally,
                };
                if self.cfg.gc_after_checkpoint
                    && let Err(e) = self.rt.block_on(self.store.gc(self.cfg.gc_grace, true))
                {
                    tracing::warn!(error = %e, "orphan collection after checkpoint {id} failed");
                }
                self.reports.push(report.clone());
                Ok(report)
            }
            Err(e) => {
                for (_, d, _, _) in &dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
                for s in self.uploads.values_mut() {
                    s.discard(id);
                }
                if let Err(abort_err) = self.rt.block_on(self.store.abort(id)) {
                    tracing::warn!(error = %abort_err, "cleaning up aborted checkpoint {id} failed; GC will collect its files");
                }
                self.consecutive_failures += 1;
                tracing::warn!(error = %e, failures = self.consecutive_failures, "checkpoint {id} failed");
                Err(EngineError::CheckpointFailed {
                    id,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// After checkpoint `id` committed: keeps each slot's snapshot directory as its local
    /// snapshot (local recovery on), or removes it and any old local snapshot. Failures only
    /// cost local recovery, never the checkpoint. Returns whether every slot kept its snapshot.
    fn keep_local_snapshots(
        &self,
        id: u64,
        meta: &CheckpointMetadata,
        dirs: &[(u32, PathBuf, Option<PathBuf>, Option<u64>)],
    ) -> bool {
        let mut all = !dirs.is_empty();
        for (slot, dir, slot_dir, _) in dirs {
            let handle = meta.slots.iter().find(|h| h.slot == *slot);
            let Some(slot_dir) = slot_dir else {
                // A host's own snapshot directory: nothing to keep.
                let _ = std::fs::remove_dir_all(dir);
                all = false;
                continue;
            };
            let kept = match (self.cfg.local_recovery, handle) {
                (true, Some(h)) => {
                    let root = self.store.storage().identity();
                    match local::keep(slot_dir, dir, &root, self.job(), id, *slot, h.key_groups) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, slot, "keeping the local snapshot of checkpoint {id} failed");
                            false
                        }
                    }
                }
                _ => {
                    if let Err(e) = local::discard_all(slot_dir) {
                        tracing::warn!(error = %e, slot, "removing old local snapshots failed");
                    }
                    false
                }
            };
            if !kept {
                let _ = std::fs::remove_dir_all(dir);
            }
            all &= kept;
        }
        all
    }

    /// Compacts `slot` when the last checkpoint found its space amplification above
    /// `rebase.max-space-amplification`; the next checkpoint's report says so. Hosts that own
    /// their slots call this before each synchronous snapshot.
    pub fn compact_if_due(&mut self, slot: &mut Slot) -> Result<Option<CompactionStats>> {
        let Some(amp) = self.compact_due.remove(&slot.index().0) else {
            return Ok(None);
        };
        let stats = slot.compact_state()?;
        self.compacted.push((slot.index().0, amp, stats.clone()));
        Ok(Some(stats))
    }

    /// Records a compaction a host ran on `slot` (from [`CheckpointReport::compact_slots`]) on
    /// another thread, for the next checkpoint's report.
    pub fn note_compaction(&mut self, slot: u32, stats: CompactionStats) {
        let amp = self.compact_due.remove(&slot).unwrap_or(0.0);
        self.compacted.push((slot, amp, stats));
    }

    fn run_async_phase(
        &mut self,
        id: u64,
        snapshots: Snapshots,
        properties: std::collections::BTreeMap<String, String>,
        policy: UploadPolicy,
    ) -> Result<AsyncOutcome> {
        let locals = match snapshots {
            Snapshots::Sync(syncs) => {
                let mut locals = Vec::new();
                for s in syncs {
                    locals.push(s.materialize()?);
                }
                locals
            }
            Snapshots::Local(locals) => locals,
        };
        let threads = self.cfg.transfer_threads as usize;
        let store = self.store.clone();
        let (uploads, restored) = (&mut self.uploads, &self.restored_slots);
        let mut states: Vec<SlotUploadState> = locals
            .iter()
            .map(|l| {
                uploads
                    .remove(&l.slot)
                    .unwrap_or_else(|| upload_state_after_restore(restored, l.key_groups))
            })
            .collect();
        // What is left of the timeout since the trigger (all of it for an id this checkpointer
        // did not hand out).
        let now = self.store.storage().now_ms();
        let since_trigger = self
            .triggered_at_ms
            .remove(&id)
            .map_or(0, |t| now.saturating_sub(t));
        self.triggered_at_ms.retain(|i, _| *i > id);
        let timeout = self.cfg.timeout;
        let budget = timeout.saturating_sub(Duration::from_millis(since_trigger));
        let restored_from = self.restored_from.clone();
        let max_p = self.max_parallelism;
        // Before the commit: materialized, uploaded, within the timeout. A timeout here aborts
        // (the upload futures are dropped; a write that lands late is an orphan for GC).
        let uploads = async {
            let uploads = futures::future::join_all(
                locals
                    .iter()
                    .zip(states.iter_mut())
                    .map(|(l, st)| store.upload_slot_with(id, l, st, threads, policy)),
            )
            .await;
            let mut handles: Vec<SlotHandle> = Vec::new();
            let mut totals = (0u64, (0u64, 0u64, 0u64, 0u64));
            let mut reuploaded = (0u64, 0u64);
            let mut shared_by_slot = Vec::new();
            for u in uploads {
                let (h, r) = u?;
                totals.0 += r.bytes_uploaded;
                totals.1.0 += r.files_uploaded;
                totals.1.1 += r.files_reused;
                totals.1.2 += r.files_copied;
                totals.1.3 += r.bytes_copied;
                reuploaded.0 += r.files_reuploaded;
                reuploaded.1 += r.bytes_reuploaded;
                shared_by_slot.push((h.slot, r.shared_bytes));
                handles.push(h);
            }
            Ok::<_, SnapshotError>((handles, totals, reuploaded, shared_by_slot))
        };
        let uploaded = self
            .rt
            .block_on(async { tokio::time::timeout(budget, uploads).await });
        for (l, st) in locals.iter().zip(states) {
            self.uploads.insert(l.slot, st);
        }
        let (handles, totals, reuploaded, shared_by_slot) = match uploaded {
            Ok(r) => r?,
            Err(_) => {
                return Err(EngineError::CheckpointFailed {
                    id,
                    reason: format!(
                        "timed out after {timeout:?} (from its trigger) before its commit"
                    ),
                });
            }
        };
        // The commit and what follows run to completion, never under the timeout: a put of
        // `_metadata` abandoned halfway could still land after the checkpoint was reported
        // failed, and once it landed the checkpoint is committed (the commit point is final).
        // The put is bounded by the storage's own retries; subsumption after it never fails it.
        let meta = self
            .rt
            .block_on(store.commit(id, max_p, handles, restored_from, properties))?;
        Ok(AsyncOutcome {
            meta,
            incremental: totals.0,
            files: totals.1,
            reuploaded,
            shared_by_slot,
        })
    }

    /// Orphan collection over the job directory.
    pub fn gc(&self, grace: Duration, apply: bool) -> Result<cairn_snapshot::GcReport> {
        Ok(self.rt.block_on(self.store.gc(grace, apply))?)
    }

    /// Picks the checkpoint to restore (the given id or the latest committed one) and prepares
    /// this job to continue from it: ids continue after it; in `claim` mode it is adopted into
    /// this job's registry, in `no-claim` mode the first checkpoint copies its files.
    pub fn resume_from(&mut self, source: &CheckpointLocation) -> Result<RestoredCheckpoint> {
        let storage = StorageRoot::from_url(&source.storage_url, &self.cfg.storage)?;
        let restored = self.rt.block_on(locate(storage.clone(), source))?;
        let (metadata, id) = (&restored.metadata, restored.metadata.checkpoint_id);
        if metadata.max_parallelism != self.max_parallelism {
            return Err(EngineError::InvalidArgument(format!(
                "{} {}/{} has max parallelism {}, this job {}: max parallelism can't change",
                if restored.is_savepoint() {
                    "savepoint"
                } else {
                    "checkpoint"
                },
                source.job,
                id,
                metadata.max_parallelism,
                self.max_parallelism
            )));
        }
        if restored.is_savepoint() {
            // A savepoint is the user's: never claimed, never referenced. The first checkpoint
            // uploads the job's own copy of everything.
            if self.cfg.restore_mode == ClaimMode::Claim {
                tracing::info!(
                    "restoring a savepoint: claim mode does not apply (a savepoint is never claimed)"
                );
            }
            self.uploads.clear();
            self.restored_slots = Vec::new();
            self.next_id = self.next_id.max(id + 1);
            self.restored_from = Some(RestoredFrom {
                job: source.job.clone(),
                checkpoint_id: id,
                mode: "no-claim".into(),
            });
            return Ok(restored);
        }
        let metadata = restored.metadata.clone();
        let same_store =
            source.storage_url.trim_end_matches('/') == self.cfg.dir.trim_end_matches('/');
        let mode = self.cfg.restore_mode;
        if mode == ClaimMode::Claim {
            // The next checkpoint reuses the claimed files: the chain goes on.
            self.rebase.restored();
            if !same_store {
                return Err(EngineError::InvalidArgument(format!(
                    "claim mode needs the checkpoint in this job's storage {}, not {}",
                    self.cfg.dir, source.storage_url
                )));
            }
            self.rt.block_on(self.store.claim(
                &JobLayout::new(storage.root().clone(), source.job.clone()),
                &metadata,
            ))?;
        }
        // Different storage: nothing can be referenced or copied; the first checkpoint
        // uploads everything.
        self.uploads.clear();
        self.restored_slots = if same_store {
            metadata.slots.clone()
        } else {
            Vec::new()
        };
        self.next_id = self.next_id.max(id + 1);
        self.restored_from = Some(RestoredFrom {
            job: source.job.clone(),
            checkpoint_id: id,
            mode: match mode {
                ClaimMode::Claim => "claim".into(),
                ClaimMode::NoClaim => "no-claim".into(),
            },
        });
        Ok(restored)
    }

    /// Restores the files of the slot owning `range` into `dest`: from the slot's local snapshot
    /// under `slot_dir` when `local-recovery` is on and the snapshot is of this checkpoint and
    /// checks out, else downloaded from storage ([`Checkpointer::download_slot_files`]). The
    /// report says which path was taken, why the local one was not, and how long it took.
    pub fn fetch_slot_files(
        &self,
        restored: &RestoredCheckpoint,
        range: KeyGroupRange,
        slot_dir: &Path,
        dest: &Path,
    ) -> Result<(RestoredFiles, SlotRestoreReport)> {
        let t = Instant::now();
        let key_groups = format!("{}..={}", range.start, range.end);
        let mut rejected = None;
        if self.cfg.local_recovery && !restored.is_savepoint() {
            let overlapping = covering(&restored.metadata, range)?;
            match overlapping.as_slice() {
                [h] if h.key_groups.start == range.start && h.key_groups.end == range.end => {
                    let placed = self.rt.block_on(local::place(
                        slot_dir,
                        h,
                        &restored.storage.identity(),
                        &restored.source.job,
                        restored.metadata.checkpoint_id,
                        dest,
                        self.cfg.local_recovery_verify,
                        self.cfg.transfer_threads as usize,
                    ));
                    match placed {
                        Ok(bytes) => {
                            let restore = if h.backend == "rocksdb" {
                                RestoredFiles::RocksDb {
                                    files: dest.to_path_buf(),
                                    states: states_of(h)?,
                                    slot: h.slot,
                                    key_groups: h.key_groups,
                                    merge: Vec::new(),
                                    lazy: None,
                                }
                            } else {
                                RestoredFiles::Heap {
                                    files: vec![dest.join(HEAP_SNAPSHOT_FILE)],
                                }
                            };
                            let report = SlotRestoreReport {
                                key_groups,
                                path: RestoredVia::Local,
                                ms: t.elapsed().as_secs_f64() * 1000.0,
                                bytes,
                                lazy: false,
                                local_rejected: None,
                                rescale: None,
                            };
                            return Ok((restore, report));
                        }
                        Err(reason) => {
                            tracing::warn!(%reason, "local snapshot not used; restoring from storage");
                            rejected = Some(reason);
                        }
                    }
                }
                _ => {
                    rejected = Some(format!(
                        "the checkpoint has no single slot with key groups {key_groups} (rescaling restores from storage)"
                    ))
                }
            }
        }
        let (restore, bytes) = self.download_slot_files(restored, range, dest)?;
        let lazy = matches!(restore, RestoredFiles::RocksDb { lazy: Some(_), .. });
        Ok((
            restore,
            SlotRestoreReport {
                key_groups,
                path: RestoredVia::Remote,
                ms: t.elapsed().as_secs_f64() * 1000.0,
                bytes,
                lazy,
                local_rejected: rejected,
                rescale: None,
            },
        ))
    }

    /// The operator state of slot `index` of `parallelism` from the restored checkpoint: every
    /// old slot's part, redistributed ([`OperatorState::redistribute`]: lists by even split or
    /// union, broadcast state copied). `tmp` is a scratch directory (removed after). Open the
    /// slot with it through [`SlotBuilder::operator_state`](crate::SlotBuilder::operator_state).
    pub fn operator_state_for_slot(
        &self,
        restored: &RestoredCheckpoint,
        index: u32,
        parallelism: u32,
        tmp: &Path,
    ) -> Result<OperatorState> {
        restore_operator_state(&self.rt, restored, index, parallelism, tmp)
    }

    /// Downloads (in parallel, verified) what the slot owning `range` needs from the restored
    /// checkpoint into `dest` (on the working directory's file system), and says how to open
    /// the slot. RocksDB needs a handle with exactly this key-group range; heap snapshots of
    /// any ranges are filtered by key group.
    pub fn download_slot_files(
        &self,
        restored: &RestoredCheckpoint,
        range: KeyGroupRange,
        dest: &Path,
    ) -> Result<(RestoredFiles, u64)> {
        download_slot(&self.rt, &self.cfg, restored, range, dest)
    }
}

/// [`Checkpointer::operator_state_for_slot`] on runtime `rt`: reads every old slot's operator
/// state file of `restored` (in `tmp`) and redistributes it to slot `index` of `parallelism`.
pub(crate) fn restore_operator_state(
    rt: &tokio::runtime::Runtime,
    restored: &RestoredCheckpoint,
    index: u32,
    parallelism: u32,
    tmp: &Path,
) -> Result<OperatorState> {
    if let Some(sp) = restored
        .savepoint
        .as_ref()
        .filter(|s| s.manifest.checkpoint.is_none())
    {
        let old = crate::savepoint::restore::read_operator_states(
            rt,
            &restored.storage,
            &sp.dir,
            &sp.manifest,
            tmp,
        );
        let _ = std::fs::remove_dir_all(tmp);
        return OperatorState::redistribute(&old?, index, parallelism);
    }
    let mut handles: Vec<&SlotHandle> = restored.metadata.slots.iter().collect();
    handles.sort_by_key(|h| h.slot);
    let mut old = Vec::with_capacity(handles.len());
    for h in handles {
        let bytes = rt.block_on(CheckpointStore::read_private_file(
            &restored.storage,
            h,
            OPERATOR_STATE_FILE,
            tmp,
        ))?;
        old.push(match bytes {
            Some(b) => OperatorState::from_bytes(&b)?,
            None => OperatorState::new(),
        });
    }
    let _ = std::fs::remove_dir_all(tmp);
    OperatorState::redistribute(&old, index, parallelism)
}

/// [`Checkpointer::download_slot_files`] on runtime `rt` with `cfg`'s transfer threads and
/// verification: also what a slot in another process restores with
/// ([`SlotUploader::restore`](crate::checkpoint::SlotUploader::restore)).
pub(crate) fn download_slot(
    rt: &tokio::runtime::Runtime,
    cfg: &CheckpointConfig,
    restored: &RestoredCheckpoint,
    range: KeyGroupRange,
    dest: &Path,
) -> Result<(RestoredFiles, u64)> {
    let threads = cfg.transfer_threads as usize;
    if let Some(sp) = restored
        .savepoint
        .as_ref()
        .filter(|s| s.manifest.checkpoint.is_none())
    {
        if dest.exists() {
            std::fs::remove_dir_all(dest).map_err(|e| EngineError::Io {
                op: format!("remove {}", dest.display()),
                source: e,
            })?;
        }
        return crate::savepoint::restore::download_chunks(
            rt,
            &restored.storage,
            &sp.dir,
            &sp.manifest,
            range,
            dest,
            threads,
        );
    }
    let handles = covering(&restored.metadata, range)?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| EngineError::Io {
            op: format!("remove {}", dest.display()),
            source: e,
        })?;
    }
    let backend = handles
        .first()
        .map(|h| h.backend.clone())
        .unwrap_or_default();
    if backend == "rocksdb" {
        // The old slot overlapping most is the base; the others are merged into it (rescale).
        let (base, others) = split_base(&handles, range).ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "checkpoint {} has no slot with key groups of {range}",
                restored.metadata.checkpoint_id
            ))
        })?;
        let verify = cfg.restore_verify == FileVerify::Sha256;
        let (mut bytes, lazy) = match cfg.restore_fetch {
            RestoreFetch::Eager => {
                let bytes = rt.block_on(CheckpointStore::download_slot_with(
                    &restored.storage,
                    base,
                    dest,
                    threads,
                    verify,
                    &restored.fetched,
                ))?;
                (bytes, None)
            }
            // Private files now; SSTs when RocksDB needs them (`backend::rocks::lazy`).
            RestoreFetch::Lazy => {
                let (bytes, shared) = rt.block_on(CheckpointStore::download_slot_lazy(
                    &restored.storage,
                    base,
                    dest,
                    threads,
                ))?;
                let (source, files) = StoreSource::new(restored.storage.clone(), shared)?;
                let lazy = LazyRestore {
                    files,
                    source: Arc::new(source),
                    threads: threads.max(2),
                };
                (bytes, Some(lazy))
            }
        };
        let mut merge = Vec::new();
        for h in others {
            let files = merge_dir(dest, h.slot);
            if files.exists() {
                std::fs::remove_dir_all(&files).map_err(|e| EngineError::Io {
                    op: format!("remove {}", files.display()),
                    source: e,
                })?;
            }
            bytes += rt.block_on(CheckpointStore::download_slot_with(
                &restored.storage,
                h,
                &files,
                threads,
                verify,
                &restored.fetched,
            ))?;
            merge.push(MergeSource {
                files,
                states: states_of(h)?,
                slot: h.slot,
                key_groups: h.key_groups,
            });
        }
        return Ok((
            RestoredFiles::RocksDb {
                files: dest.to_path_buf(),
                states: states_of(base)?,
                slot: base.slot,
                key_groups: base.key_groups,
                merge,
                lazy,
            },
            bytes,
        ));
    }
    let mut files = Vec::new();
    let mut bytes = 0;
    for h in handles {
        let d = dest.join(format!("slot-{}", h.slot));
        bytes += rt.block_on(CheckpointStore::download_slot(
            &restored.storage,
            h,
            &d,
            threads,
            true,
        ))?;
        files.push(d.join(HEAP_SNAPSHOT_FILE));
    }
    Ok((RestoredFiles::Heap { files }, bytes))
}

/// The slot handles of `meta` whose key groups overlap `range`; an error unless together they
/// cover every key group of `range` (restoring into uncovered key groups would silently start
/// them empty).
fn covering(meta: &CheckpointMetadata, range: KeyGroupRange) -> Result<Vec<&SlotHandle>> {
    let handles: Vec<&SlotHandle> = meta
        .slots
        .iter()
        .filter(|h| h.key_groups.start <= range.end && range.start <= h.key_groups.end)
        .collect();
    let covered: u64 = handles
        .iter()
        .map(|h| {
            let (a, b) = (
                h.key_groups.start.max(range.start),
                h.key_groups.end.min(range.end),
            );
            u64::from(b - a) + 1
        })
        .sum();
    if covered != u64::from(range.end - range.start) + 1 {
        return Err(EngineError::Checkpoint(SnapshotError::InvalidMetadata {
            path: format!("chk-{}/_metadata", meta.checkpoint_id),
            reason: format!(
                "its slots cover {covered} of the {} key groups {range} to restore",
                u64::from(range.end - range.start) + 1
            ),
        }));
    }
    Ok(handles)
}

/// What a slot with key groups `range` starts its uploads from after a restore of `restored`
/// (nothing when the job did not restore): its base's files by name, every overlapping old
/// slot's by content (see [`split_base`]).
pub(crate) fn upload_state_after_restore(
    restored: &[SlotHandle],
    range: KeyGroupRange,
) -> SlotUploadState {
    let handles: Vec<&SlotHandle> = restored.iter().collect();
    match split_base(&handles, range) {
        Some((base, others)) => SlotUploadState::rescaled(base, &others),
        None => SlotUploadState::new(),
    }
}

/// Where old slot `slot`'s files go when merged into the slot restoring into `dest`: next to it,
/// on the same file system (RocksDB links the files it ingests).
fn merge_dir(dest: &Path, slot: u32) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".old-slot-{slot}"));
    dest.with_file_name(name)
}

/// The old slot a slot with key groups `range` opens as its base when rescaling (the one whose
/// key groups overlap `range` most; the lowest index on a tie) and the other old slots that
/// overlap it. `None` when none overlaps. Restore and the first checkpoint's upload state use
/// the same choice: the base's files keep their names in the slot's database.
pub(crate) fn split_base<'a>(
    handles: &[&'a SlotHandle],
    range: KeyGroupRange,
) -> Option<(&'a SlotHandle, Vec<&'a SlotHandle>)> {
    let overlap = |h: &SlotHandle| {
        let (a, b) = (
            h.key_groups.start.max(range.start),
            h.key_groups.end.min(range.end),
        );
        if a <= b { b - a + 1 } else { 0 }
    };
    let mut overlapping: Vec<&SlotHandle> =
        handles.iter().copied().filter(|h| overlap(h) > 0).collect();
    overlapping.sort_by_key(|h| (std::cmp::Reverse(overlap(h)), h.slot));
    let base = *overlapping.first()?;
    Some((base, overlapping.split_off(1)))
}

fn states_of(h: &SlotHandle) -> Result<Vec<StateDescriptor>> {
    h.states
        .iter()
        .map(|s| {
            let (op, name) = s.name.split_once('/').ok_or_else(|| {
                EngineError::Checkpoint(SnapshotError::BadMetadata {
                    path: format!("slot {}", h.slot),
                    reason: format!("state name {:?} is not operator/name", s.name),
                })
            })?;
            let kind = match s.kind.as_str() {
                "value" => StateKind::Value,
                "list" => StateKind::List,
                "map" => StateKind::Map,
                "reducing" => StateKind::Reducing,
                "aggregating" => StateKind::Aggregating,
                k => {
                    return Err(EngineError::Checkpoint(SnapshotError::BadMetadata {
                        path: format!("slot {}", h.slot),
                        reason: format!("unknown state kind {k:?}"),
                    }));
                }
            };
            Ok(StateDescriptor::new(op, name, kind))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_source_parsing() {
        let s = CheckpointLocation::parse("file:///tmp/cp/job-1/chk-7").unwrap();
        assert_eq!(
            s,
            CheckpointLocation {
                storage_url: "file:///tmp/cp".into(),
                job: "job-1".into(),
                checkpoint: Some(7)
            }
        );
        let s = CheckpointLocation::parse("cairn-data/checkpoints/job-1/").unwrap();
        assert_eq!(s.storage_url, "cairn-data/checkpoints");
        assert_eq!(s.checkpoint, None);
        let s = CheckpointLocation::parse("memory:///job-1").unwrap();
        assert_eq!(s.storage_url, "memory://");
        assert!(CheckpointLocation::parse("job-only").is_err());
        assert!(CheckpointLocation::parse("x/job/chk-x").is_err());
    }

    #[test]
    fn job_names_are_readable() {
        let n = new_job_name();
        assert!(n.starts_with("job-2"), "{n}");
        assert_eq!(&n[12..13], "T");
    }
}
