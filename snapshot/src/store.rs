//! The checkpoint protocol of one job: upload a slot's snapshot incrementally, commit the
//! checkpoint by writing its metadata last, subsume old checkpoints through the shared-file
//! registry, abort cleanly, list, verify and download for restore.
//!
//! One checkpoint is in flight at a time per job (Flink's default `max-concurrent-checkpoints =
//! 1`): subsumption deletes shared objects only between checkpoints, so no upload races a delete
//! of the same content-addressed object.
//!
//! ## The commit point is final
//! A checkpoint is committed when its `_metadata` exists. Nothing in this module deletes a
//! `_metadata` except [`CheckpointStore::subsume`] (a later checkpoint committed) and explicit
//! user commands. [`CheckpointStore::abort`] releases only a checkpoint that is still pending;
//! a commit whose put failed is read back first ([`CheckpointStore::commit`]): it is either
//! committed (the write landed), not committed (nothing there: abort may delete its files), or
//! in doubt (storage can't tell: nothing of it is deleted until a later check knows).
//!
//! ## One writer per job
//! A writing store holds the job's writer lease ([`crate::lease`]): a second writer on a live job
//! fails fast, a writer that lost the job is fenced before it commits or deletes, and each writer
//! names its objects with its epoch, so an abort never touches another writer's files.

use cairn_base::KeyGroupRange;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::TryFutureExt;
use object_store::path::Path;
use serde::Serialize;

use crate::error::{Result, SnapshotError};
use crate::fault::FailPoint;
use crate::lease::{LeaseOptions, Takeover, WriterLease};
use crate::metadata::{
    CheckpointMetadata, FORMAT, MAX_METADATA_BYTES, PrivateFile, RestoredFrom, SharedFile,
    SlotHandle, StateInfo, VERSION,
};
use crate::object_layout::{self, CheckpointId, Epoch, JobLayout, ObjectRef};
use crate::registry::SharedRegistry;
use crate::storage::StorageRoot;
use crate::transfer::{self, Expected};

/// The local result of a slot's synchronous snapshot phase: a directory of immutable files.
#[derive(Clone, Debug)]
pub struct LocalSnapshot {
    /// The slot's index.
    pub slot: u32,
    /// The slot's key groups.
    pub key_groups: KeyGroupRange,
    /// `rocksdb` or `heap`.
    pub backend: String,
    /// Registered states.
    pub states: Vec<StateInfo>,
    /// The directory holding the files.
    pub dir: PathBuf,
    /// Files shared across checkpoints (RocksDB `*.sst`), by name inside `dir`.
    pub shared: Vec<String>,
    /// Files uploaded anew every checkpoint (MANIFEST, CURRENT, OPTIONS, heap snapshot).
    pub private: Vec<String>,
}

/// Per-slot memory of what earlier checkpoints uploaded, so the next one uploads only new
/// files. Only files of a *completed* checkpoint are reused (an aborted checkpoint's uploads
/// may already be deleted; Flink's FLINK-25395).
#[derive(Clone, Debug, Default)]
pub struct SlotUploadState {
    confirmed: HashMap<String, SharedFile>,
    /// After a rescaling restore: the files of the old slots whose key groups the slot took,
    /// by sha256. RocksDB renames the files it ingests, so a new file whose content and size
    /// match one keeps its object (until the first checkpoint completes).
    by_content: HashMap<String, SharedFile>,
    pending: BTreeMap<CheckpointId, HashMap<String, SharedFile>>,
}

impl SlotUploadState {
    /// A fresh slot: nothing uploaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// After a restore: the restored files are known. Whether the next checkpoint references
    /// them where they are or copies them into this writer's own objects first is the store's
    /// decision ([`CheckpointStore::reusable`]: a no-claim restore's files, and the files of a
    /// writer whose lease expired, are copied).
    pub fn restored(handle: &SlotHandle) -> Self {
        Self::rescaled(handle, &[])
    }

    /// After a rescaling restore: the slot opened `base`'s files under their names and brought
    /// in `others`' files (renamed); their objects are found by name and by content.
    pub fn rescaled(base: &SlotHandle, others: &[&SlotHandle]) -> Self {
        Self {
            confirmed: base
                .shared
                .iter()
                .map(|f| (f.name.clone(), f.clone()))
                .collect(),
            by_content: std::iter::once(base)
                .chain(others.iter().copied())
                .flat_map(|h| h.shared.iter())
                .map(|f| (f.sha256.clone(), f.clone()))
                .collect(),
            pending: BTreeMap::new(),
        }
    }

    /// Checkpoint `id` completed: its files become the base of the next checkpoint.
    pub fn confirm(&mut self, id: CheckpointId) {
        if let Some(files) = self.pending.remove(&id) {
            self.confirmed = files;
            self.by_content.clear();
        }
        self.pending.retain(|k, _| *k > id);
    }

    /// Checkpoint `id` was aborted: forget its uploads.
    pub fn discard(&mut self, id: CheckpointId) {
        self.pending.remove(&id);
    }

    /// Checkpoint `id` committed with `handle` as this slot's part (read back from its
    /// `_metadata`): its files, under the objects the committer chose (copies included), become
    /// the base of the next checkpoint.
    pub fn confirm_committed(&mut self, id: CheckpointId, handle: &SlotHandle) {
        self.confirmed = handle
            .shared
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        self.by_content.clear();
        self.pending.retain(|k, _| *k > id);
    }

    /// The file of the last confirmed checkpoint named `name` (a file of the slot's database).
    pub(crate) fn confirmed_file(&self, name: &str) -> Option<&SharedFile> {
        self.confirmed.get(name)
    }

    /// A restored file of another old slot with this content and size (see `by_content`),
    /// under the local name `name`.
    pub(crate) fn restored_content(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
    ) -> Option<SharedFile> {
        self.by_content
            .get(sha256)
            .filter(|f| f.size == size)
            .map(|f| SharedFile {
                name: name.to_string(),
                ..f.clone()
            })
    }

    /// Checkpoint `id` references `files`: they become the base once it is confirmed.
    pub(crate) fn record_pending(&mut self, id: CheckpointId, files: &[SharedFile]) {
        self.pending.insert(
            id,
            files.iter().map(|f| (f.name.clone(), f.clone())).collect(),
        );
    }
}

/// How a checkpoint treats files earlier checkpoints already uploaded (the rebase policy's
/// decision, made by the engine per checkpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadPolicy {
    /// Upload every shared file again as a new object (`<sha>-c<id>`): the checkpoint shares
    /// nothing with earlier ones, so their objects are deleted once they are subsumed.
    /// Flink: a `FULL_CHECKPOINT`.
    pub full: bool,
    /// Re-upload (as new objects) reused files whose `uploaded_at_ms` is before this time, ms
    /// since the Unix epoch (`rebase.max-file-age`); files of unknown age (0) count as older.
    pub reupload_before_ms: Option<u64>,
}

impl UploadPolicy {
    /// The incremental default: reuse every confirmed upload.
    pub fn incremental() -> Self {
        Self::default()
    }

    /// A full upload that shares nothing with earlier checkpoints.
    pub fn full() -> Self {
        Self {
            full: true,
            ..Self::default()
        }
    }

    /// Re-upload files uploaded before `before_ms`.
    pub fn reupload_before(before_ms: u64) -> Self {
        Self {
            reupload_before_ms: Some(before_ms),
            ..Self::default()
        }
    }

    fn too_old(&self, uploaded_at_ms: u64) -> bool {
        self.reupload_before_ms
            .is_some_and(|before| uploaded_at_ms < before)
    }
}

/// What uploading one slot's snapshot did (Flink's "Checkpointed Data Size" is `incremental`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SlotUploadReport {
    /// Shared files uploaded now.
    pub files_uploaded: u64,
    /// Shared files referenced from earlier checkpoints (not uploaded).
    pub files_reused: u64,
    /// Shared files copied inside the store (no-claim restore).
    pub files_copied: u64,
    /// Bytes sent from the slot (new shared files + compressed private files).
    pub bytes_uploaded: u64,
    /// Bytes copied server-side.
    pub bytes_copied: u64,
    /// Bytes of all files the slot's handle references.
    pub full_bytes: u64,
    /// Of `files_uploaded`: files an earlier checkpoint had uploaded, sent again as new objects
    /// because of the [`UploadPolicy`] (a full upload or their age).
    pub files_reuploaded: u64,
    /// Bytes of those files.
    pub bytes_reuploaded: u64,
    /// Bytes of the slot's shared files (what its checkpoint references of them, for the space
    /// amplification of the rebase policy).
    pub shared_bytes: u64,
}

/// A problem `verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyProblem {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// What is wrong (the typed error's message).
    pub problem: String,
}

/// The checkpoint store of one job. See the module doc.
#[derive(Debug)]
pub struct CheckpointStore {
    storage: StorageRoot,
    layout: JobLayout,
    registry: Mutex<SharedRegistry>,
    /// Checkpoints of other jobs adopted by a `claim` restore (id -> their job's layout):
    /// deleted from their job's directory when subsumed. Rebuilt at open from the latest
    /// checkpoint's `restored_from`, so the bookkeeping survives a restart.
    claimed: Mutex<BTreeMap<CheckpointId, JobLayout>>,
    retained: usize,
    /// Shared objects released by subsumption whose deletion failed: retried by the next
    /// subsumption unless a checkpoint references them again by then.
    undeleted: Mutex<Vec<String>>,
    /// The job's writer lease; `None` for a read-only store.
    lease: Option<WriterLease>,
    /// Subsumptions that failed after a commit (the commit stands; retried later).
    subsume_failures: AtomicU64,
}

/// One shared-file transfer (upload or server-side copy) of a slot: (bytes sent, bytes copied).
type Transfer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, u64)>> + Send + 'a>>;

/// Reads and validates `chk-<id>/_metadata` of the job `layout` (at most
/// [`MAX_METADATA_BYTES`]). A missing one is [`SnapshotError::NoCheckpoint`].
pub async fn load_metadata(
    storage: &StorageRoot,
    layout: &JobLayout,
    id: CheckpointId,
) -> Result<CheckpointMetadata> {
    let path = layout.metadata(id);
    let bytes = storage
        .get_capped(
            &path,
            MAX_METADATA_BYTES,
            "the checkpoint metadata size cap",
        )
        .await
        .map_err(|e| match e {
            SnapshotError::MissingFile { .. } => SnapshotError::NoCheckpoint {
                what: format!("chk-{id}"),
                location: layout.job_dir().to_string(),
            },
            e => e,
        })?;
    let meta = CheckpointMetadata::from_bytes(path.as_ref(), &bytes)?;
    meta.validate(path.as_ref(), layout.job(), id)?;
    Ok(meta)
}

/// Committed checkpoint ids of job `layout` (those whose `_metadata` exists), ascending.
pub async fn committed_ids(storage: &StorageRoot, layout: &JobLayout) -> Result<Vec<CheckpointId>> {
    let mut ids: Vec<CheckpointId> = storage
        .list_dirs(&layout.job_dir())
        .await?
        .iter()
        .filter_map(|p| p.filename().and_then(object_layout::parse_checkpoint_dir))
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        if storage.size(&layout.metadata(id)).await?.is_some() {
            out.push(id);
        }
    }
    Ok(out)
}

impl CheckpointStore {
    /// Opens job `job` under `storage` for writing, keeping `retained` completed checkpoints,
    /// with the default writer lease ([`LeaseOptions::default`]). See
    /// [`CheckpointStore::open_writer`].
    pub async fn open(storage: StorageRoot, job: &str, retained: usize) -> Result<Self> {
        Self::open_writer(storage, job, retained, &LeaseOptions::default()).await
    }

    /// Opens job `job` under `storage` for writing: takes the job's writer lease (a live
    /// writer makes this fail with `JobLocked`), rebuilds the registry from the committed
    /// checkpoints found there (and a checkpoint of another job the latest one claimed), and
    /// subsumes any beyond `retained` (a crash between commit and subsumption leaves them).
    pub async fn open_writer(
        storage: StorageRoot,
        job: &str,
        retained: usize,
        lease: &LeaseOptions,
    ) -> Result<Self> {
        object_layout::check_job_name(job)?;
        let layout = JobLayout::new(storage.root().clone(), job);
        let lease = WriterLease::acquire(&storage, &layout, lease).await?;
        let me = Self {
            storage,
            layout,
            registry: Mutex::new(SharedRegistry::new()),
            claimed: Mutex::new(BTreeMap::new()),
            retained: retained.max(1),
            undeleted: Mutex::new(Vec::new()),
            lease: Some(lease),
            subsume_failures: AtomicU64::new(0),
        };
        me.rebuild().await?;
        if let Err(e) = me.subsume().await {
            me.subsume_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, job, "subsuming at open failed; retried after the next checkpoint");
        }
        Ok(me)
    }

    /// Opens a job's directory to read it (list, load, verify, download): no lease, nothing is
    /// subsumed or deleted.
    pub async fn open_read_only(storage: StorageRoot, job: &str) -> Result<Self> {
        object_layout::check_job_name(job)?;
        let layout = JobLayout::new(storage.root().clone(), job);
        Ok(Self {
            storage,
            layout,
            registry: Mutex::new(SharedRegistry::new()),
            claimed: Mutex::new(BTreeMap::new()),
            retained: usize::MAX,
            undeleted: Mutex::new(Vec::new()),
            lease: None,
            subsume_failures: AtomicU64::new(0),
        })
    }

    /// Registers the committed checkpoints found in storage, and the claimed checkpoints they
    /// restored from that still exist (a claim is recorded in every checkpoint of the job that
    /// made it, as `restored_from` with mode `claim`; once subsumed, the claimed checkpoint is
    /// gone from its job and is not registered again).
    async fn rebuild(&self) -> Result<()> {
        let mut claims: BTreeMap<CheckpointId, String> = BTreeMap::new();
        for id in self.committed_ids().await? {
            let meta = self.load(id).await?;
            self.registry()?
                .register_completed(id, shared_objects(&meta), true)?;
            if let Some(r) = meta.restored_from.filter(|r| r.mode == "claim") {
                claims.insert(r.checkpoint_id, r.job);
            }
        }
        for (id, job) in claims {
            if job == self.layout.job() || self.registry()?.phase(id).is_some() {
                continue;
            }
            let source = JobLayout::new(self.storage.root().clone(), job);
            match load_metadata(&self.storage, &source, id).await {
                Ok(meta) => {
                    self.registry()?
                        .register_completed(id, shared_objects(&meta), true)?;
                    self.claimed()?.insert(id, source);
                }
                // Subsumed (deleted) before the restart.
                Err(SnapshotError::NoCheckpoint { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn registry(&self) -> Result<std::sync::MutexGuard<'_, SharedRegistry>> {
        self.registry
            .lock()
            .map_err(|_| SnapshotError::Invariant("registry lock poisoned".into()))
    }

    fn claimed(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<CheckpointId, JobLayout>>> {
        self.claimed
            .lock()
            .map_err(|_| SnapshotError::Invariant("claimed lock poisoned".into()))
    }

    fn writer(&self) -> Result<&WriterLease> {
        self.lease.as_ref().ok_or_else(|| {
            SnapshotError::Invariant(format!(
                "job {} was opened read-only; it can't be written",
                self.layout.job()
            ))
        })
    }

    /// The storage.
    pub fn storage(&self) -> &StorageRoot {
        &self.storage
    }

    /// The job's layout.
    pub fn layout(&self) -> &JobLayout {
        &self.layout
    }

    /// This writer's epoch (`None` when read-only).
    pub fn epoch(&self) -> Option<Epoch> {
        self.lease.as_ref().map(WriterLease::epoch)
    }

    /// The writer lease (`None` when read-only).
    pub fn lease(&self) -> Option<&WriterLease> {
        self.lease.as_ref()
    }

    /// Renews the writer lease (the coordinator does it in the background; a commit does it
    /// too). Fails with `Fenced` once another writer took the job.
    pub async fn renew_lease(&self) -> Result<()> {
        self.writer()?.renew(&self.storage).await
    }

    /// Releases the writer lease (clean shutdown): the next writer may take the job at once.
    pub async fn release_lease(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l.release(&self.storage).await,
            None => Ok(()),
        }
    }

    /// Subsumptions that failed after their commit (each retried later).
    pub fn subsume_failures(&self) -> u64 {
        self.subsume_failures.load(Ordering::Relaxed)
    }

    /// Committed checkpoint ids found in storage, ascending.
    pub async fn committed_ids(&self) -> Result<Vec<CheckpointId>> {
        committed_ids(&self.storage, &self.layout).await
    }

    /// Completed checkpoints the registry retains, ascending (claimed ones included).
    pub fn retained_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self.registry()?.completed())
    }

    /// Checkpoints in flight or whose commit is in doubt.
    pub fn pending_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self.registry()?.pending())
    }

    /// Whether a pending, in-doubt or retained checkpoint of this writer references `object`.
    pub fn is_referenced(&self, object: &str) -> Result<bool> {
        Ok(self.registry()?.is_referenced(object))
    }

    /// Shared objects (count, bytes) the retained and in-flight checkpoints reference.
    pub fn referenced_totals(&self) -> Result<(usize, u64)> {
        Ok(self.registry()?.totals())
    }

    /// Objects (count, bytes) stored under the job directory, by listing it: what the storage
    /// holds (and bills), including anything not yet subsumed or collected.
    pub async fn stored_totals(&self) -> Result<(usize, u64)> {
        let list = self.storage.list(&self.layout.job_dir()).await?;
        Ok((list.len(), list.iter().map(|m| m.size).sum()))
    }

    /// Reads and validates a committed checkpoint's metadata (of this job, or a checkpoint it
    /// claimed).
    pub async fn load(&self, id: CheckpointId) -> Result<CheckpointMetadata> {
        let layout = self.claimed()?.get(&id).cloned();
        load_metadata(&self.storage, layout.as_ref().unwrap_or(&self.layout), id).await
    }

    /// Whether this writer may reference `object` where it is (rather than copy it into its
    /// own objects first): objects of its own epoch; objects of the job's earlier writers when
    /// the last of them released its lease (not when it expired: that writer may be paused,
    /// not dead, and delete them when it wakes); objects of a job whose checkpoint it claimed.
    pub fn reusable(&self, object: &str) -> bool {
        let Ok(r) = ObjectRef::parse(object) else {
            return false;
        };
        if r.job != self.layout.job() {
            return self
                .claimed
                .lock()
                .is_ok_and(|c| c.values().any(|l| l.job() == r.job));
        }
        let Some(lease) = &self.lease else {
            return false;
        };
        match r.shared().and_then(|n| n.epoch) {
            Some(e) if e == lease.epoch() => true,
            _ => lease.takeover() != Takeover::Expired,
        }
    }

    /// Uploads one slot's local snapshot for checkpoint `id`: new shared files (hashed, then
    /// uploaded unless the store already has the content), reused ones by reference, private
    /// files compressed. At most `parallelism` transfers run at once.
    pub async fn upload_slot(
        &self,
        id: CheckpointId,
        snap: &LocalSnapshot,
        state: &mut SlotUploadState,
        parallelism: usize,
    ) -> Result<(SlotHandle, SlotUploadReport)> {
        self.upload_slot_with(id, snap, state, parallelism, UploadPolicy::incremental())
            .await
    }

    /// [`CheckpointStore::upload_slot`] under a rebase [`UploadPolicy`]: files the policy
    /// selects are uploaded again from the local snapshot as new objects (`<sha>-e<E>-c<id>`),
    /// with their known sha256 (the local file is the one hashed when it was first uploaded:
    /// same name and size in the same database).
    ///
    /// Files this writer may not reference where they are ([`CheckpointStore::reusable`]) are
    /// copied into its own objects server-side; when the source object is gone (the restored
    /// job deleted it since), the local file is uploaded instead.
    pub async fn upload_slot_with(
        &self,
        id: CheckpointId,
        snap: &LocalSnapshot,
        state: &mut SlotUploadState,
        parallelism: usize,
        policy: UploadPolicy,
    ) -> Result<(SlotHandle, SlotUploadReport)> {
        let lease = self.writer()?;
        lease.fenced()?;
        let epoch = lease.epoch();
        let mut report = SlotUploadReport::default();
        let now = self.storage.now_ms();
        // 1. Decide each shared file: reuse a confirmed upload, upload it again (policy), or
        //    hash it.
        let mut reused = Vec::new();
        let mut again = Vec::new();
        let mut to_hash = Vec::new();
        for name in &snap.shared {
            let local = object_layout::local_path(&snap.dir, "local snapshot file", name)?;
            let size = std::fs::metadata(&local)
                .map_err(SnapshotError::io("stat", &local))?
                .len();
            match state.confirmed.get(name) {
                Some(f) if f.size == size && (policy.full || policy.too_old(f.uploaded_at_ms)) => {
                    again.push((local, f.clone()))
                }
                Some(f) if f.size == size => reused.push((local, f.clone())),
                _ => to_hash.push((name.clone(), local)),
            }
        }
        let mut hashed = transfer::hash_files(to_hash, parallelism).await?;
        // A file a rescaling restore brought in under a new name keeps its object.
        if !policy.full {
            hashed.retain(|(name, local, sha, size)| {
                match state.restored_content(name, sha, *size) {
                    Some(f) => {
                        reused.push((local.clone(), f));
                        false
                    }
                    None => true,
                }
            });
        }
        // 2. Files this writer may not reference where they are are copied into its own
        //    objects; everything else keeps its object.
        let mut files: Vec<SharedFile> = Vec::new();
        let mut copies = Vec::new();
        let mut uploads = Vec::new();
        for (local, f) in reused {
            if self.reusable(&f.object) {
                // Uploaded again below if it turns out not to be stored any more.
                uploads.push((local, f.clone()));
                files.push(f);
            } else {
                let own = SharedFile {
                    object: self.layout.shared_ref(&f.sha256, epoch),
                    uploaded_at_ms: now,
                    ..f.clone()
                };
                copies.push((f.object.clone(), local, own.clone()));
                files.push(own);
            }
        }
        // A new file whose content the store already holds keeps that object's upload time.
        let known_times: HashMap<&str, u64> = state
            .confirmed
            .values()
            .map(|f| (f.object.as_str(), f.uploaded_at_ms))
            .collect();
        let mut reuploads: HashSet<String> = HashSet::new();
        for (local, f) in again {
            let f = SharedFile {
                object: self.layout.shared_ref_at(&f.sha256, epoch, id),
                uploaded_at_ms: now,
                ..f
            };
            reuploads.insert(f.object.clone());
            uploads.push((local, f.clone()));
            files.push(f);
        }
        for (name, local, sha, size) in hashed {
            let object = if policy.full {
                self.layout.shared_ref_at(&sha, epoch, id)
            } else {
                self.layout.shared_ref(&sha, epoch)
            };
            let uploaded_at_ms = known_times.get(object.as_str()).copied().unwrap_or(now);
            let f = SharedFile {
                name,
                object,
                sha256: sha,
                size,
                uploaded_at_ms,
            };
            uploads.push((local, f.clone()));
            files.push(f);
        }
        // 3. Acquire every reference before transferring anything. An object is transferred
        //    once however many files of the slot have its content, and not at all when it is
        //    stored (see the registry: a completed checkpoint references it).
        //    An object that is not stored but that another checkpoint references (one whose
        //    commit is in doubt, or one being subsumed) is not written again under its name:
        //    that checkpoint may be committed, and a failed overwrite on a store without
        //    atomic puts would damage it. This checkpoint uploads the content under an object
        //    of its own (`<sha>-e<E>-c<id>`) instead.
        let mut renamed: HashMap<String, String> = HashMap::new();
        let stored = {
            let mut reg = self.registry()?;
            for f in &mut files {
                if !reg.is_stored(&f.object) && reg.is_referenced_elsewhere(id, &f.object) {
                    let own = self.layout.shared_ref_at(&f.sha256, epoch, id);
                    renamed.insert(std::mem::replace(&mut f.object, own.clone()), own);
                }
            }
            let objs = files.iter().map(|f| (f.object.clone(), f.size));
            reg.acquire(id, objs, true)?
        };
        let rename = |object: &mut String| {
            if let Some(own) = renamed.get(object.as_str()) {
                object.clone_from(own);
            }
        };
        let mut skip: HashSet<String> = files
            .iter()
            .zip(&stored)
            .filter(|(_, s)| **s)
            .map(|(f, _)| f.object.clone())
            .collect();
        let fallbacks = AtomicU64::new(0);
        let fallbacks = &fallbacks;
        let mut jobs: Vec<Transfer<'_>> = Vec::new();
        for (from, local, mut own) in copies {
            rename(&mut own.object);
            if !skip.insert(own.object.clone()) {
                report.files_reused += 1;
                continue;
            }
            report.files_copied += 1;
            report.bytes_copied += own.size;
            let to = self.layout.resolve(&own.object);
            let from = self.layout.resolve(&from);
            jobs.push(Box::pin(async move {
                match self.storage.copy(&from, &to).await {
                    Ok(()) => Ok((0, own.size)),
                    // The restored job deleted its object since: the local file has the same
                    // content (same name and size in the same database), so send that.
                    Err(SnapshotError::MissingFile { .. }) => {
                        tracing::info!(%from, "restored object is gone; uploading the local file instead");
                        fallbacks.fetch_add(1, Ordering::Relaxed);
                        self.storage.fail_point(FailPoint::UploadSharedSst, &to)?;
                        let n = transfer::upload_file(&self.storage, &local, &to).await?;
                        Ok((n, 0))
                    }
                    Err(e) => Err(e),
                }
            }));
        }
        for (local, mut f) in uploads {
            rename(&mut f.object);
            if !skip.insert(f.object.clone()) {
                report.files_reused += 1;
                continue;
            }
            report.files_uploaded += 1;
            if reuploads.contains(&f.object) {
                report.files_reuploaded += 1;
                report.bytes_reuploaded += f.size;
            }
            let to = self.layout.resolve(&f.object);
            jobs.push(Box::pin(async move {
                self.storage.fail_point(FailPoint::UploadSharedSst, &to)?;
                let n = transfer::upload_file(&self.storage, &local, &to).await?;
                Ok((n, 0))
            }));
        }
        // 4. Private files, compressed, under this attempt's own prefix.
        let private = transfer::run_parallel(
            snap.private
                .iter()
                .map(|name| {
                    let object = self.layout.private_ref(id, epoch, snap.slot, name);
                    async move {
                        let local =
                            object_layout::local_path(&snap.dir, "local snapshot file", name)?;
                        let (zst, sha, size, stored) = transfer::compress_file(&local).await?;
                        let to = self.layout.resolve(&object);
                        self.storage.fail_point(FailPoint::UploadPrivateFile, &to)?;
                        let r = transfer::upload_file(&self.storage, &zst, &to).await;
                        let _ = tokio::fs::remove_file(&zst).await;
                        r?;
                        Ok(PrivateFile {
                            name: name.clone(),
                            object,
                            sha256: sha,
                            size,
                            stored_size: stored,
                        })
                    }
                })
                .collect(),
            parallelism,
        )
        .await?;
        report.bytes_copied = 0;
        for (up, copied) in transfer::run_parallel(jobs, parallelism).await? {
            report.bytes_uploaded += up;
            report.bytes_copied += copied;
        }
        // Copies that fell back to an upload count as uploads.
        let fell_back = fallbacks.load(Ordering::Relaxed);
        report.files_copied -= fell_back.min(report.files_copied);
        report.files_uploaded += fell_back;
        report.bytes_uploaded += private.iter().map(|p| p.stored_size).sum::<u64>();
        report.shared_bytes = files.iter().map(|f| f.size).sum::<u64>();
        report.full_bytes =
            report.shared_bytes + private.iter().map(|p| p.stored_size).sum::<u64>();
        state.pending.insert(
            id,
            files.iter().map(|f| (f.name.clone(), f.clone())).collect(),
        );
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let handle = SlotHandle {
            slot: snap.slot,
            key_groups: snap.key_groups,
            backend: snap.backend.clone(),
            states: snap.states.clone(),
            shared: files,
            private,
        };
        Ok((handle, report))
    }

    /// Accepts a slot's handle for checkpoint `id` uploaded by
    /// [`upload_slot_files`](crate::slot_upload::upload_slot_files), possibly in another
    /// process: checks it and registers its objects, as [`CheckpointStore::upload_slot_with`]
    /// registers an in-process slot's. Returns the handle to commit (objects this writer may
    /// not reference where they are, [`CheckpointStore::reusable`], are copied into its own
    /// objects first) and (files, bytes) copied.
    ///
    /// Refused with [`SnapshotError::BadSlotHandle`]: a private file not under this attempt's
    /// prefix, an object of this attempt missing or of another size, a reused object no
    /// retained checkpoint holds (it may be deleted already), a copy whose source is gone.
    pub async fn accept_slot(
        &self,
        id: CheckpointId,
        mut handle: SlotHandle,
    ) -> Result<(SlotHandle, (u64, u64))> {
        let lease = self.writer()?;
        lease.fenced()?;
        let epoch = lease.epoch();
        let slot = handle.slot;
        let bad = |reason: String| SnapshotError::BadSlotHandle { id, slot, reason };
        let exists = |object: String, size: u64| async move {
            let path = self.layout.resolve(&object);
            match self.storage.size(&path).await? {
                Some(s) if s == size => Ok(()),
                Some(s) => Err(bad(format!(
                    "{object} has {s} bytes, the handle says {size}"
                ))),
                None => Err(bad(format!("{object} does not exist"))),
            }
        };
        for p in &handle.private {
            object_layout::check_file_name("private file", &p.name)?;
            if p.object != self.layout.private_ref(id, epoch, slot, &p.name) {
                return Err(bad(format!(
                    "private file {} is at {}, not under this attempt (epoch {epoch})",
                    p.name, p.object
                )));
            }
            exists(p.object.clone(), p.stored_size).await?;
        }
        let now = self.storage.now_ms();
        let mut copied = (0u64, 0u64);
        let mut copies_done: HashSet<String> = HashSet::new();
        for f in &mut handle.shared {
            object_layout::check_file_name("shared file", &f.name)?;
            if !object_layout::is_sha256_hex(&f.sha256) {
                return Err(bad(format!("{} has no sha256", f.name)));
            }
            let attempt = self.layout.shared_ref_at(&f.sha256, epoch, id);
            if f.object == attempt {
                exists(f.object.clone(), f.size).await?;
                continue;
            }
            if !self.reusable(&f.object) {
                // A no-claim restore's file, or one of a writer whose lease expired: copied
                // into this attempt's own object (once per content).
                if copies_done.insert(attempt.clone()) {
                    let (from, to) = (
                        self.layout.resolve(&f.object),
                        self.layout.resolve(&attempt),
                    );
                    self.storage.copy(&from, &to).await.map_err(|e| {
                        bad(format!("copying {} into this job failed: {e}", f.object))
                    })?;
                    copied.0 += 1;
                    copied.1 += f.size;
                }
                f.object = attempt;
                f.uploaded_at_ms = now;
                continue;
            }
            if !self.registry()?.is_stored(&f.object) {
                return Err(bad(format!(
                    "{} reuses {}, which no retained checkpoint holds (the slot's confirmation of an earlier checkpoint is stale)",
                    f.name, f.object
                )));
            }
        }
        self.registry()?.acquire(
            id,
            handle.shared.iter().map(|f| (f.object.clone(), f.size)),
            true,
        )?;
        Ok((handle, copied))
    }

    /// Commits checkpoint `id`: checks the metadata against the rules it is read with and the
    /// registry's invariants, renews the writer lease (a fenced writer stops here), then writes
    /// `_metadata` with a create-only put (the commit point), then subsumes checkpoints beyond
    /// `retained`.
    ///
    /// Outcomes: `Ok` = committed (also when the put's answer was lost and the read-back found
    /// this metadata). `CommitConflict` = another writer committed this id. `CommitInDoubt` =
    /// the put failed and reading back failed too: the checkpoint's files are kept until a
    /// later commit or [`CheckpointStore::open_writer`] finds out. Any other error = not
    /// committed. [`CheckpointStore::abort`] is safe to call after every error: it never
    /// releases a committed or in-doubt checkpoint. Once committed, nothing after the put
    /// (subsumption included) can fail this call.
    pub async fn commit(
        &self,
        id: CheckpointId,
        max_parallelism: u32,
        mut slots: Vec<SlotHandle>,
        restored_from: Option<RestoredFrom>,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<CheckpointMetadata> {
        let lease = self.writer()?;
        slots.sort_by_key(|s| s.slot);
        let referenced_jobs: BTreeSet<String> = slots
            .iter()
            .flat_map(|s| s.shared.iter())
            .filter_map(|f| ObjectRef::parse(&f.object).ok().map(|r| r.job.to_string()))
            .filter(|j| j != self.layout.job())
            .collect();
        let meta = CheckpointMetadata {
            format: FORMAT.into(),
            version: VERSION,
            checkpoint_id: id,
            job: self.layout.job().to_string(),
            created_at_ms: self.storage.now_ms(),
            max_parallelism,
            slots,
            restored_from,
            properties,
            referenced_jobs: referenced_jobs.into_iter().collect(),
        };
        let path = self.layout.metadata(id);
        // Never write a checkpoint this build would refuse to read.
        meta.validate(path.as_ref(), self.layout.job(), id)
            .map_err(|e| SnapshotError::Invariant(format!("checkpoint {id} is malformed: {e}")))?;
        {
            let reg = self.registry()?;
            reg.check_invariants(id)?;
            for f in meta.shared_objects() {
                if !reg.is_referenced(&f.object) {
                    return Err(SnapshotError::Invariant(format!(
                        "checkpoint {id} references {} which is not registered",
                        f.object
                    )));
                }
            }
        }
        lease.renew(&self.storage).await?;
        self.storage.fail_point(FailPoint::WriteMetadata, &path)?;
        let bytes = meta.to_bytes();
        let written = match self.storage.put_create(&path, bytes.clone()).await {
            Ok(w) => w,
            Err(e) => self.read_back(id, &path, &bytes, e).await?,
        };
        if !written {
            return Err(SnapshotError::CommitConflict {
                job: self.layout.job().to_string(),
                id,
            });
        }
        self.registry()?.complete(id)?;
        // Committed: nothing below may fail (and so abort) this checkpoint. What subsumption
        // leaves is subsumed again after the next commit (or at open), or collected by GC.
        self.resolve_in_doubt().await;
        if let Err(e) = self.subsume().await {
            self.subsume_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "subsuming after checkpoint {id} failed; retried after the next one");
        }
        Ok(meta)
    }

    /// After a failed put of `_metadata`: reads it back. `Ok(true)`: this metadata is there
    /// (the put landed, its answer was lost). `Ok(false)`: another writer's. `Err(put_err)`:
    /// nothing there, not committed. `CommitInDoubt`: storage can't tell; the checkpoint is
    /// marked in doubt.
    async fn read_back(
        &self,
        id: CheckpointId,
        path: &Path,
        bytes: &[u8],
        put_err: SnapshotError,
    ) -> Result<bool> {
        match self
            .storage
            .get_capped(path, MAX_METADATA_BYTES, "the checkpoint metadata size cap")
            .await
        {
            Ok(found) => Ok(found.as_ref() == bytes),
            Err(SnapshotError::MissingFile { .. }) => Err(put_err),
            Err(read_err) => {
                self.registry()?.mark_in_doubt(id);
                Err(SnapshotError::CommitInDoubt {
                    job: self.layout.job().to_string(),
                    id,
                    reason: format!("put: {put_err}; read back: {read_err}"),
                })
            }
        }
    }

    /// Settles checkpoints whose commit was in doubt: committed if their `_metadata` exists
    /// now, else aborted. Errors leave them in doubt for the next try.
    async fn resolve_in_doubt(&self) {
        let ids = match self.registry() {
            Ok(r) => r.in_doubt(),
            Err(_) => return,
        };
        for id in ids {
            match self.storage.size(&self.layout.metadata(id)).await {
                Ok(Some(_)) => {
                    tracing::info!(id, "checkpoint whose commit was in doubt is committed");
                    if let Ok(mut r) = self.registry() {
                        let _ = r.complete(id);
                    }
                }
                Ok(None) => {
                    tracing::info!(id, "checkpoint whose commit was in doubt is not committed");
                    if let Err(e) = self.abort_attempt(id, true).await {
                        tracing::warn!(error = %e, id, "cleaning up an uncommitted checkpoint failed; GC will collect its files");
                    }
                }
                Err(e) => tracing::warn!(error = %e, id, "commit of checkpoint still in doubt"),
            }
        }
    }

    /// Aborts checkpoint `id` if it is still pending: releases its references and deletes what
    /// only this attempt uploaded (its own epoch's objects and `chk-<id>/e<epoch>/`). Never
    /// deletes a `_metadata`, and does nothing for a committed checkpoint or one whose commit
    /// is in doubt.
    pub async fn abort(&self, id: CheckpointId) -> Result<()> {
        self.abort_attempt(id, false).await
    }

    async fn abort_attempt(&self, id: CheckpointId, known_uncommitted: bool) -> Result<()> {
        let lease = self.writer()?;
        let Some(released) = self.registry()?.abort(id, known_uncommitted) else {
            return Ok(());
        };
        let epoch = lease.epoch();
        for m in self
            .storage
            .list(&self.layout.attempt_dir(id, epoch))
            .await?
        {
            self.storage.delete(&m.location).await?;
        }
        for obj in released.delete {
            let own = ObjectRef::parse(&obj).is_ok_and(|r| {
                r.job == self.layout.job() && r.shared().and_then(|n| n.epoch) == Some(epoch)
            });
            if own && !self.registry()?.is_referenced(&obj) {
                self.storage.delete(&self.layout.resolve(&obj)).await?;
            }
        }
        Ok(())
    }

    /// Subsumes completed checkpoints beyond `retained`, oldest first: metadata, then private
    /// files, then shared objects no retained checkpoint references. A fenced writer deletes
    /// nothing.
    ///
    /// A checkpoint's objects stop counting as stored before its `_metadata` is deleted (see
    /// [`SharedRegistry::begin_subsume`]): once that delete is tried, no committed metadata may
    /// protect them from garbage collection, so a new checkpoint must not reference them
    /// without uploading them. A subsumption that fails halfway is finished by the next call.
    pub async fn subsume(&self) -> Result<Vec<CheckpointId>> {
        let ids = self.registry()?.subsumable(self.retained);
        self.subsume_ids(ids).await
    }

    /// Deletes every committed checkpoint of this job (and its shared objects no other job
    /// references), as subsumption deletes them: `_metadata` first. Only for an explicit
    /// request: a job cancelled with `retain-on-cancellation = false`, or a user's command.
    pub async fn discard_all_checkpoints(&self) -> Result<Vec<CheckpointId>> {
        let ids = self.registry()?.discardable();
        self.subsume_ids(ids).await
    }

    async fn subsume_ids(&self, ids: Vec<CheckpointId>) -> Result<Vec<CheckpointId>> {
        let undeleted = self
            .undeleted
            .lock()
            .map_err(|_| SnapshotError::Invariant("undeleted lock poisoned".into()))?
            .len();
        if ids.is_empty() && undeleted == 0 {
            return Ok(ids);
        }
        self.writer()?.check(&self.storage).await?;
        for id in &ids {
            let layout = self
                .claimed()?
                .get(id)
                .cloned()
                .unwrap_or_else(|| self.layout.clone());
            self.registry()?.begin_subsume(*id);
            self.storage.delete(&layout.metadata(*id)).await?;
            for m in self.storage.list(&layout.checkpoint_dir(*id)).await? {
                self.storage.delete(&m.location).await?;
            }
            let released = self.registry()?.release(*id);
            self.claimed()?.remove(id);
            self.delete_released(released.delete).await?;
        }
        if ids.is_empty() {
            self.delete_released(Vec::new()).await?;
        }
        Ok(ids)
    }

    /// Deletes released shared objects, and those an earlier subsumption failed to delete. An
    /// object of another job (a claimed checkpoint's) is deleted only when no committed
    /// checkpoint of any job under the root references it, and kept for a later call while
    /// some committed metadata under the root can't be read (what it references is unknown).
    /// On failure the rest is kept for the next call, so a failed delete leaks nothing.
    async fn delete_released(&self, released: Vec<String>) -> Result<()> {
        let lock = || {
            self.undeleted
                .lock()
                .map_err(|_| SnapshotError::Invariant("undeleted lock poisoned".into()))
        };
        let mut todo = std::mem::take(&mut *lock()?);
        todo.extend(released);
        let mut elsewhere: Option<crate::gc::RootReferences> = None;
        let mut later = Vec::new();
        for (i, obj) in todo.iter().enumerate() {
            // Content-addressed: a later checkpoint may have uploaded the same content again.
            if self.registry()?.is_referenced(obj) {
                continue;
            }
            let foreign = ObjectRef::parse(obj).map_or(true, |r| r.job != self.layout.job());
            if foreign {
                if elsewhere.is_none() {
                    match crate::gc::root_references(&self.storage).await {
                        Ok(refs) => elsewhere = Some(refs),
                        Err(e) => {
                            lock()?.extend(todo[i..].iter().cloned().chain(later));
                            return Err(e);
                        }
                    }
                }
                let Some(refs) = &elsewhere else { continue };
                if !refs.damaged.is_empty() {
                    later.push(obj.clone());
                    continue;
                }
                if refs.objects.contains(obj) {
                    continue;
                }
            }
            let path = self.layout.resolve(obj);
            let r = self.storage.fail_point(FailPoint::DeleteSubsumed, &path);
            if let Err(e) = futures::future::ready(r)
                .and_then(|()| self.storage.delete(&path))
                .await
            {
                lock()?.extend(todo[i..].iter().cloned().chain(later));
                return Err(e);
            }
        }
        if let Some(refs) = elsewhere.filter(|_| !later.is_empty()) {
            tracing::warn!(objects = later.len(), damaged = ?refs.damaged,
                "kept released objects of other jobs: some committed metadata can't be read");
        }
        lock()?.extend(later);
        Ok(())
    }

    /// Adopts a checkpoint of another job restored in `claim` mode: fences that job (a live
    /// writer there makes this fail with `JobLocked`; a paused one is fenced when it wakes),
    /// then refcounts the checkpoint's files like this job's: the checkpoint is deleted (from
    /// the other job's directory) once subsumed, and its objects once nothing references them.
    pub async fn claim(&self, source: &JobLayout, meta: &CheckpointMetadata) -> Result<()> {
        let lease = self.writer()?;
        if source.job() != self.layout.job() {
            WriterLease::fence(&self.storage, source, lease.timeout(), self.layout.job()).await?;
        }
        let mut reg = self.registry()?;
        if reg.phase(meta.checkpoint_id).is_some() {
            // This job's own checkpoint (a restore of the same job): already registered.
            return Ok(());
        }
        reg.register_completed(meta.checkpoint_id, shared_objects(meta), true)?;
        drop(reg);
        self.claimed()?.insert(meta.checkpoint_id, source.clone());
        Ok(())
    }

    /// Objects under the job directory that no committed checkpoint of any job under the root
    /// references, and that this writer's in-flight checkpoints do not use, older than
    /// `grace`; deleted when `apply`. See [`crate::gc`].
    pub async fn gc(&self, grace: Duration, apply: bool) -> Result<crate::gc::GcReport> {
        let pending = self.registry()?.pending();
        let in_flight = |object: &str| {
            self.registry.lock().is_ok_and(|r| r.is_referenced(object))
                || ObjectRef::parse(object)
                    .ok()
                    .and_then(|r| r.checkpoint())
                    .is_some_and(|id| pending.contains(&id))
        };
        crate::gc::collect(
            &self.storage,
            &[self.layout.job().to_string()],
            grace,
            apply,
            &in_flight,
        )
        .await
    }

    /// Checks every retained checkpoint: each referenced file exists with the right size;
    /// `deep` also re-hashes every file. Returns the problems found (empty = healthy).
    pub async fn verify(&self, ids: &[CheckpointId], deep: bool) -> Result<Vec<VerifyProblem>> {
        let mut problems = Vec::new();
        for id in ids {
            let meta = match self.load(*id).await {
                Ok(m) => m,
                Err(e) => {
                    problems.push(VerifyProblem {
                        checkpoint: *id,
                        problem: e.to_string(),
                    });
                    continue;
                }
            };
            for (object, expected, stored) in files_of(&meta) {
                let path = self.layout.resolve(&object);
                let r = if deep {
                    transfer::verify_object(&self.storage, &path, &expected).await
                } else {
                    match self.storage.size(&path).await {
                        Ok(Some(n)) if n == stored => Ok(()),
                        Ok(Some(n)) => Err(SnapshotError::SizeMismatch {
                            path: path.to_string(),
                            expected: stored,
                            actual: n,
                        }),
                        Ok(None) => Err(SnapshotError::MissingFile {
                            path: path.to_string(),
                        }),
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = r {
                    problems.push(VerifyProblem {
                        checkpoint: *id,
                        problem: e.to_string(),
                    });
                }
            }
        }
        Ok(problems)
    }

    /// Downloads private file `name` of `handle` (verified, decompressed) into `dest` and returns
    /// its bytes; `None` when the handle has no such file. For small files read whole (a slot's
    /// operator state), of every slot of a checkpoint. The recorded size bounds what is read.
    pub async fn read_private_file(
        storage: &StorageRoot,
        handle: &SlotHandle,
        name: &str,
        dest: &FsPath,
    ) -> Result<Option<Vec<u8>>> {
        let Some(f) = handle.private.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        object_layout::check_file_name(&format!("file of slot {}", handle.slot), &f.name)?;
        ObjectRef::parse(&f.object)?;
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(SnapshotError::io("create", dest))?;
        let path = JobLayout::new(storage.root().clone(), "").resolve(&f.object);
        let to = object_layout::local_path(
            dest,
            "private file",
            &format!("slot-{}-{}", handle.slot, f.name),
        )?;
        transfer::download_file(storage, &path, &to, &Expected::private(f)).await?;
        let bytes = tokio::fs::read(&to)
            .await
            .map_err(SnapshotError::io("read", &to))?;
        let _ = tokio::fs::remove_file(&to).await;
        Ok(Some(bytes))
    }

    /// Downloads one slot's files of a checkpoint into `dest` (created; must not exist), in
    /// parallel, verifying each file's size and sha256 (`hash_placed = false`: SSTs placed
    /// straight from local storage are checked by size only, see
    /// [`transfer::Expected::hash_placed`]). Returns the bytes downloaded. Every local path is
    /// built with [`object_layout::local_path`], so a name from storage can't leave `dest`, and no
    /// download writes more than the size the metadata records.
    pub async fn download_slot(
        storage: &StorageRoot,
        handle: &SlotHandle,
        dest: &FsPath,
        parallelism: usize,
        hash_placed: bool,
    ) -> Result<u64> {
        Self::download_slot_with(
            storage,
            handle,
            dest,
            parallelism,
            hash_placed,
            &FetchedObjects::default(),
        )
        .await
    }

    /// [`CheckpointStore::download_slot`], linking shared objects `fetched` already placed
    /// (verified) instead of downloading them again, and recording the ones it downloads.
    pub async fn download_slot_with(
        storage: &StorageRoot,
        handle: &SlotHandle,
        dest: &FsPath,
        parallelism: usize,
        hash_placed: bool,
        fetched: &FetchedObjects,
    ) -> Result<u64> {
        // Checked before anything is created or written.
        let what = check_slot_files(handle)?;
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(SnapshotError::io("create", dest))?;
        let root_layout = JobLayout::new(storage.root().clone(), "");
        // Largest first: verifying a file is one sequential sha256, so a big file started last
        // would finish alone on one core while the others idle.
        let mut shared: Vec<_> = handle.shared.iter().collect();
        shared.sort_by_key(|f| std::cmp::Reverse(f.size));
        let mut jobs = Vec::new();
        for f in shared {
            let path = root_layout.resolve(&f.object);
            let to = object_layout::local_path(dest, &what, &f.name)?;
            if fetched.link(&f.object, f.size, &to) {
                continue;
            }
            let expected = Expected {
                sha256: f.sha256.clone(),
                size: f.size,
                compressed: false,
                stored_size: None,
                hash_placed,
            };
            let object = f.object.clone();
            jobs.push(async move {
                storage.fail_point(FailPoint::DownloadSharedSst, &path)?;
                transfer::download_file(storage, &path, &to, &expected).await?;
                fetched.record(object, expected.size, to);
                Ok(expected.size)
            });
        }
        let shared: u64 = transfer::run_parallel(jobs, parallelism)
            .await?
            .iter()
            .sum();
        let private =
            download_private(storage, handle, &root_layout, dest, &what, parallelism).await?;
        Ok(shared + private)
    }
}

/// A shared file (SST) of a slot restored lazily: the slot opens without it, and it is fetched
/// ([`CheckpointStore::fetch_lazy`]) when RocksDB first needs it or in the background. Built
/// only by [`CheckpointStore::download_slot_lazy`], after its name and object were checked.
#[derive(Clone, Debug)]
pub struct LazySharedFile {
    /// The file's name in the slot's directory (one plain component).
    pub name: String,
    /// Its recorded size, bytes.
    pub size: u64,
    object: Path,
    sha256: String,
}

impl CheckpointStore {
    /// The lazy counterpart of [`CheckpointStore::download_slot_with`]: checks every name and
    /// object of `handle` the same way, downloads only its private files (MANIFEST, CURRENT,
    /// OPTIONS: small) into `dest`, and returns the shared files for fetching on demand.
    pub async fn download_slot_lazy(
        storage: &StorageRoot,
        handle: &SlotHandle,
        dest: &FsPath,
        parallelism: usize,
    ) -> Result<(u64, Vec<LazySharedFile>)> {
        let what = check_slot_files(handle)?;
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(SnapshotError::io("create", dest))?;
        let root_layout = JobLayout::new(storage.root().clone(), "");
        let mut shared = Vec::with_capacity(handle.shared.len());
        for f in &handle.shared {
            // Checked as the eager path checks it, though nothing is written there yet.
            object_layout::local_path(dest, &what, &f.name)?;
            shared.push(LazySharedFile {
                name: f.name.clone(),
                size: f.size,
                object: root_layout.resolve(&f.object),
                sha256: f.sha256.clone(),
            });
        }
        let private =
            download_private(storage, handle, &root_layout, dest, &what, parallelism).await?;
        Ok((private, shared))
    }

    /// Downloads a lazily restored shared file into `to`, its size and sha256 verified whatever
    /// the storage (a local object is hashed too: RocksDB reads it next).
    pub async fn fetch_lazy(storage: &StorageRoot, f: &LazySharedFile, to: &FsPath) -> Result<u64> {
        storage.fail_point(FailPoint::DownloadSharedSst, &f.object)?;
        let expected = Expected {
            sha256: f.sha256.clone(),
            size: f.size,
            compressed: false,
            stored_size: None,
            hash_placed: true,
        };
        transfer::download_file(storage, &f.object, to, &expected).await?;
        Ok(f.size)
    }

    /// Reads bytes `offset..` of a lazily restored shared file into `buf` straight from
    /// storage (a ranged GET; a pread for `file://`), for a RocksDB read of a file not yet
    /// local. Returns the bytes read: `buf.len()` within the recorded size, fewer only at its
    /// end (0 at or past it), as a local file answers. Storage returning any other length is a
    /// `SizeMismatch`. Not checked against the sha256 (a range cannot be): RocksDB's block
    /// checksums check what it reads, and the whole file is verified before it becomes local.
    pub async fn read_lazy_range(
        storage: &StorageRoot,
        f: &LazySharedFile,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        // Bounded by the recorded size (checked metadata) and by the caller's buffer.
        let want = f.size.saturating_sub(offset).min(buf.len() as u64);
        if want == 0 {
            return Ok(0);
        }
        use object_store::ObjectStoreExt;
        let range = offset..offset + want;
        let bytes = storage
            .retrying("get range", &f.object, |_| {
                let range = range.clone();
                async move {
                    storage
                        .store()
                        .get_range(&f.object, range)
                        .await
                        .map_err(SnapshotError::storage("get range", &f.object))
                }
            })
            .await;
        let bytes = match bytes {
            Ok(b) => b,
            // A range outside a shorter object is an error of the store, not a short answer:
            // name what is wrong with the object when it is its size.
            Err(e) => {
                return Err(match storage.size(&f.object).await {
                    Ok(Some(actual)) if actual != f.size => SnapshotError::SizeMismatch {
                        path: f.object.to_string(),
                        expected: f.size,
                        actual,
                    },
                    _ => e,
                });
            }
        };
        if bytes.len() as u64 != want {
            return Err(SnapshotError::SizeMismatch {
                path: format!("{} (bytes {offset}..{})", f.object, offset + want),
                expected: want,
                actual: bytes.len() as u64,
            });
        }
        let n = bytes.len();
        buf[..n].copy_from_slice(&bytes);
        Ok(n)
    }

    /// For `file://` storage opened from its URL ([`StorageRoot::direct_local`]), the stored
    /// object of `f` opened for [`CheckpointStore::pread_lazy_range`]: a range read is then one
    /// `pread`, with no runtime, file open or buffer in between (through the object store each
    /// read opened the file on a blocking thread, several times a local read's cost). `None`
    /// for other storage. An object whose size is not the recorded one is a `SizeMismatch`.
    pub fn open_lazy_local(
        storage: &StorageRoot,
        f: &LazySharedFile,
    ) -> Result<Option<std::fs::File>> {
        let Some(direct) = storage.direct_local() else {
            return Ok(None);
        };
        let path = direct.path_of(&f.object);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::MissingFile {
                    path: f.object.to_string(),
                });
            }
            Err(e) => return Err(SnapshotError::io("open", &path)(e)),
        };
        let actual = file
            .metadata()
            .map_err(SnapshotError::io("stat", &path))?
            .len();
        if actual != f.size {
            return Err(SnapshotError::SizeMismatch {
                path: f.object.to_string(),
                expected: f.size,
                actual,
            });
        }
        Ok(Some(file))
    }

    /// [`CheckpointStore::read_lazy_range`] from the object `file` opened by
    /// [`CheckpointStore::open_lazy_local`]: the same answer (`buf.len()` bytes within the
    /// recorded size, fewer only at its end), and a file that ends early (truncated since it
    /// was opened) is a `SizeMismatch`.
    pub fn pread_lazy_range(
        f: &LazySharedFile,
        file: &std::fs::File,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        // Bounded by the recorded size (checked metadata) and by the caller's buffer.
        let want = f.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(SnapshotError::Io {
                        op: "pread",
                        path: f.object.to_string(),
                        source: e,
                    });
                }
            }
        }
        if done != want {
            return Err(SnapshotError::SizeMismatch {
                path: format!("{} (bytes {offset}..{})", f.object, offset + want as u64),
                expected: want as u64,
                actual: done as u64,
            });
        }
        Ok(done)
    }
}

/// Downloads and verifies a slot's private files into `dest` (eager and lazy restore alike);
/// returns their stored bytes.
async fn download_private(
    storage: &StorageRoot,
    handle: &SlotHandle,
    root_layout: &JobLayout,
    dest: &FsPath,
    what: &str,
    parallelism: usize,
) -> Result<u64> {
    let mut jobs = Vec::new();
    for f in &handle.private {
        let path = root_layout.resolve(&f.object);
        let to = object_layout::local_path(dest, what, &f.name)?;
        let expected = Expected::private(f);
        let stored = f.stored_size;
        jobs.push(async move {
            storage.fail_point(FailPoint::DownloadPrivateFile, &path)?;
            transfer::download_file(storage, &path, &to, &expected).await?;
            Ok(stored)
        });
    }
    Ok(transfer::run_parallel(jobs, parallelism)
        .await?
        .iter()
        .sum())
}

/// Checks every file name and object reference of a slot's stored handle (untrusted input)
/// before a restore creates or writes anything; returns the `what` its errors name.
fn check_slot_files(handle: &SlotHandle) -> Result<String> {
    let what = format!("file of slot {}", handle.slot);
    for name in handle
        .shared
        .iter()
        .map(|f| &f.name)
        .chain(handle.private.iter().map(|f| &f.name))
    {
        object_layout::check_file_name(&what, name)?;
    }
    for object in handle
        .shared
        .iter()
        .map(|f| &f.object)
        .chain(handle.private.iter().map(|f| &f.object))
    {
        ObjectRef::parse(object)?;
    }
    Ok(what)
}

/// Shared objects a restore placed locally, verified: another slot restoring in the same
/// process from the same checkpoint links them instead of downloading them again (scaling up,
/// every new slot opens the same old slot's files). Only a file that still exists with the
/// recorded size is linked; RocksDB never rewrites an SST in place.
#[derive(Debug, Default)]
pub struct FetchedObjects(Mutex<HashMap<String, (PathBuf, u64)>>);

impl FetchedObjects {
    /// Links the local copy of `object` (of `size` bytes) to `to`; `false` when there is none
    /// (any more) or the link fails (then the caller downloads it).
    fn link(&self, object: &str, size: u64, to: &FsPath) -> bool {
        let from = match self.0.lock() {
            Ok(m) => m.get(object).cloned(),
            Err(_) => None,
        };
        match from {
            Some((from, recorded)) if recorded == size => {
                let same = std::fs::metadata(&from).is_ok_and(|m| m.len() == size);
                same && std::fs::hard_link(&from, to).is_ok()
            }
            _ => false,
        }
    }

    fn record(&self, object: String, size: u64, at: PathBuf) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(object, (at, size));
        }
    }
}

/// (object, size) of every shared object `meta` references.
fn shared_objects(meta: &CheckpointMetadata) -> Vec<(String, u64)> {
    meta.shared_objects()
        .into_iter()
        .map(|f| (f.object.clone(), f.size))
        .collect()
}

fn files_of(meta: &CheckpointMetadata) -> Vec<(String, Expected, u64)> {
    let mut out = Vec::new();
    for f in meta.shared_objects() {
        out.push((
            f.object.clone(),
            Expected {
                sha256: f.sha256.clone(),
                size: f.size,
                compressed: false,
                stored_size: None,
                hash_placed: true,
            },
            f.size,
        ));
    }
    for s in &meta.slots {
        for p in &s.private {
            out.push((
                p.object.clone(),
                Expected {
                    sha256: p.sha256.clone(),
                    size: p.size,
                    compressed: true,
                    stored_size: Some(p.stored_size),
                    hash_placed: true,
                },
                p.stored_size,
            ));
        }
    }
    out
}

#[cfg(test)]
#[path = "store_lazy_tests.rs"]
mod lazy_tests;
