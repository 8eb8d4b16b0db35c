//! The checkpoint protocol of one job: upload a slot's snapshot incrementally, commit the
//! checkpoint by writing its metadata last, subsume old checkpoints through the shared-file
//! registry, abort cleanly, collect orphans, list, verify and download for restore.
//!
//! One checkpoint is in flight at a time per job (Flink's default `max-concurrent-checkpoints =
//! 1`): subsumption deletes shared objects only between checkpoints, so no upload races a delete
//! of the same content-addressed object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryFutureExt;
use object_store::path::Path;
use serde::Serialize;

use crate::error::{Result, SnapshotError};
use crate::fault::FailPoint;
use crate::layout::{CheckpointId, JobLayout, ObjectKind};
use crate::metadata::{
    CheckpointMetadata, FORMAT, KeyGroups, PrivateFile, RestoredFrom, SharedFile, SlotHandle,
    StateInfo, VERSION,
};
use crate::registry::SharedRegistry;
use crate::storage::CheckpointStorage;
use crate::transfer::{self, Expected};

/// The local result of a slot's synchronous snapshot phase: a directory of immutable files.
#[derive(Clone, Debug)]
pub struct LocalSnapshot {
    /// The slot's index.
    pub slot: u32,
    /// The slot's key groups.
    pub key_groups: KeyGroups,
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
    pending: BTreeMap<CheckpointId, HashMap<String, SharedFile>>,
    copy_foreign: bool,
}

impl SlotUploadState {
    /// A fresh slot: nothing uploaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// After a restore: the restored files are known. `copy_foreign = true` (no-claim) makes
    /// the next checkpoint copy files that live outside the job into it, server-side, so it
    /// shares nothing with the restored checkpoint.
    pub fn restored(handle: &SlotHandle, copy_foreign: bool) -> Self {
        Self {
            confirmed: handle
                .shared
                .iter()
                .map(|f| (f.name.clone(), f.clone()))
                .collect(),
            pending: BTreeMap::new(),
            copy_foreign,
        }
    }

    /// Checkpoint `id` completed: its files become the base of the next checkpoint.
    pub fn confirm(&mut self, id: CheckpointId) {
        if let Some(files) = self.pending.remove(&id) {
            self.confirmed = files;
            self.copy_foreign = false;
        }
        self.pending.retain(|k, _| *k > id);
    }

    /// Checkpoint `id` was aborted: forget its uploads.
    pub fn discard(&mut self, id: CheckpointId) {
        self.pending.remove(&id);
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
#[derive(Clone, Debug, Default, Serialize)]
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

/// Result of a garbage collection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Objects no retained checkpoint references and older than the grace period.
    pub orphans: Vec<String>,
    /// Their total size.
    pub orphan_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub too_young: usize,
    /// Whether the orphans were deleted.
    pub applied: bool,
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
    storage: CheckpointStorage,
    layout: JobLayout,
    registry: Mutex<SharedRegistry>,
    /// Checkpoints of other jobs adopted by a `claim` restore: deleted from their job's dir.
    claimed: Mutex<HashMap<CheckpointId, (JobLayout, CheckpointMetadata)>>,
    retained: usize,
    /// Shared objects released by subsumption whose deletion failed: retried by the next
    /// subsumption unless a checkpoint references them again by then.
    undeleted: Mutex<Vec<String>>,
}

/// One shared-file transfer (upload or server-side copy) of a slot: (bytes sent, bytes copied).
type Transfer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, u64)>> + Send + 'a>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CheckpointStore {
    /// Opens job `job` under `storage`, keeping `retained` completed checkpoints. The registry
    /// is rebuilt from the committed checkpoints found there; any beyond `retained` are
    /// subsumed now (a crash between commit and subsumption leaves them).
    pub async fn open(storage: CheckpointStorage, job: &str, retained: usize) -> Result<Self> {
        let layout = JobLayout::new(storage.root().clone(), job);
        let me = Self {
            storage,
            layout,
            registry: Mutex::new(SharedRegistry::new()),
            claimed: Mutex::new(HashMap::new()),
            retained: retained.max(1),
            undeleted: Mutex::new(Vec::new()),
        };
        for id in me.committed_ids().await? {
            let meta = me.load(id).await?;
            let objs = meta
                .shared_objects()
                .into_iter()
                .map(|f| (f.object.clone(), f.size))
                .collect::<Vec<_>>();
            me.registry()?.register_completed(id, objs, true)?;
        }
        me.subsume().await?;
        Ok(me)
    }

    /// Opens another job's directory to read it (list, load, verify, download): nothing is
    /// subsumed or deleted.
    pub async fn open_read_only(storage: CheckpointStorage, job: &str) -> Result<Self> {
        let layout = JobLayout::new(storage.root().clone(), job);
        Ok(Self {
            storage,
            layout,
            registry: Mutex::new(SharedRegistry::new()),
            claimed: Mutex::new(HashMap::new()),
            retained: usize::MAX,
            undeleted: Mutex::new(Vec::new()),
        })
    }

    fn registry(&self) -> Result<std::sync::MutexGuard<'_, SharedRegistry>> {
        self.registry
            .lock()
            .map_err(|_| SnapshotError::Invariant("registry lock poisoned".into()))
    }

    /// The storage.
    pub fn storage(&self) -> &CheckpointStorage {
        &self.storage
    }

    /// The job's layout.
    pub fn layout(&self) -> &JobLayout {
        &self.layout
    }

    /// Committed checkpoint ids found in storage, ascending.
    pub async fn committed_ids(&self) -> Result<Vec<CheckpointId>> {
        let mut ids: Vec<CheckpointId> = self
            .storage
            .list_dirs(&self.layout.job_dir())
            .await?
            .iter()
            .filter_map(|p| p.filename().and_then(crate::layout::parse_checkpoint_dir))
            .collect();
        ids.sort_unstable();
        let mut out = Vec::new();
        for id in ids {
            if self
                .storage
                .size(&self.layout.metadata(id))
                .await?
                .is_some()
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Completed checkpoints the registry retains, ascending.
    pub fn retained_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self.registry()?.completed())
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

    /// Reads a committed checkpoint's metadata.
    pub async fn load(&self, id: CheckpointId) -> Result<CheckpointMetadata> {
        let path = self.layout.metadata(id);
        let bytes = self.storage.get(&path).await.map_err(|e| match e {
            SnapshotError::MissingFile { .. } => SnapshotError::NoCheckpoint {
                what: format!("chk-{id}"),
                location: self.layout.job_dir().to_string(),
            },
            e => e,
        })?;
        CheckpointMetadata::from_bytes(path.as_ref(), &bytes)
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
    /// selects are uploaded again from the local snapshot as new objects (`<sha>-c<id>`), with
    /// their known sha256 (the local file is the one hashed when it was first uploaded: same
    /// name and size in the same database).
    pub async fn upload_slot_with(
        &self,
        id: CheckpointId,
        snap: &LocalSnapshot,
        state: &mut SlotUploadState,
        parallelism: usize,
        policy: UploadPolicy,
    ) -> Result<(SlotHandle, SlotUploadReport)> {
        let mut report = SlotUploadReport::default();
        let job_prefix = format!("{}/", self.layout.job());
        let now = now_ms();
        // 1. Decide each shared file: reuse a confirmed upload, upload it again (policy), or
        //    hash it.
        let mut reused = Vec::new();
        let mut again = Vec::new();
        let mut to_hash = Vec::new();
        for name in &snap.shared {
            let local = snap.dir.join(name);
            let size = std::fs::metadata(&local)
                .map_err(SnapshotError::io("stat", &local))?
                .len();
            match state.confirmed.get(name) {
                Some(f) if f.size == size && (policy.full || policy.too_old(f.uploaded_at_ms)) => {
                    again.push((local, f.clone()))
                }
                Some(f) if f.size == size => reused.push(f.clone()),
                _ => to_hash.push((name.clone(), local)),
            }
        }
        let hashed = transfer::run_parallel(
            to_hash
                .into_iter()
                .map(|(name, local)| async move {
                    let (sha, size) = transfer::hash_file(&local).await?;
                    Ok((name, local, sha, size))
                })
                .collect(),
            parallelism,
        )
        .await?;
        // 2. Foreign files (no-claim restore) are copied into this job; everything else keeps
        //    its object.
        let mut files: Vec<SharedFile> = Vec::new();
        let mut copies = Vec::new();
        for f in reused {
            if state.copy_foreign && !f.object.starts_with(&job_prefix) {
                let own = SharedFile {
                    object: self.layout.shared_ref(&f.sha256),
                    uploaded_at_ms: now,
                    ..f.clone()
                };
                copies.push((f.object.clone(), own.clone()));
                files.push(own);
            } else {
                report.files_reused += 1;
                files.push(f);
            }
        }
        // A new file whose content the store already holds keeps that object's upload time.
        let known_times: HashMap<&str, u64> = state
            .confirmed
            .values()
            .map(|f| (f.object.as_str(), f.uploaded_at_ms))
            .collect();
        let mut uploads = Vec::new();
        let mut reuploads: HashSet<String> = HashSet::new();
        for (local, f) in again {
            let f = SharedFile {
                object: self.layout.shared_ref_at(&f.sha256, id),
                uploaded_at_ms: now,
                ..f
            };
            reuploads.insert(f.object.clone());
            uploads.push((local, f.clone()));
            files.push(f);
        }
        for (name, local, sha, size) in hashed {
            let object = if policy.full {
                self.layout.shared_ref_at(&sha, id)
            } else {
                self.layout.shared_ref(&sha)
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
        // 3. Acquire every reference before transferring anything.
        let present = {
            let objs = files.iter().map(|f| (f.object.clone(), f.size));
            self.registry()?.acquire(id, objs, true)?
        };
        let already: HashSet<&str> = files
            .iter()
            .zip(&present)
            .filter(|(_, p)| **p)
            .map(|(f, _)| f.object.as_str())
            .collect();
        let mut jobs: Vec<Transfer<'_>> = Vec::new();
        for (from, own) in copies {
            if already.contains(own.object.as_str()) {
                report.files_reused += 1;
                continue;
            }
            report.files_copied += 1;
            report.bytes_copied += own.size;
            let to = self.layout.resolve(&own.object);
            let from = self.layout.resolve(&from);
            jobs.push(Box::pin(async move {
                self.storage.copy(&from, &to).await?;
                Ok((0, own.size))
            }));
        }
        for (local, f) in uploads {
            if already.contains(f.object.as_str()) {
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
        // 4. Private files, compressed.
        let private = transfer::run_parallel(
            snap.private
                .iter()
                .map(|name| {
                    let local = snap.dir.join(name);
                    let object = self.layout.private_ref(id, snap.slot, name);
                    async move {
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
        for (up, _copied) in transfer::run_parallel(jobs, parallelism).await? {
            report.bytes_uploaded += up;
        }
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

    /// Commits checkpoint `id`: checks the registry's invariants, then writes `_metadata` with a
    /// create-only put (the commit point), then subsumes checkpoints beyond `retained`.
    pub async fn commit(
        &self,
        id: CheckpointId,
        max_parallelism: u32,
        mut slots: Vec<SlotHandle>,
        restored_from: Option<RestoredFrom>,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<CheckpointMetadata> {
        slots.sort_by_key(|s| s.slot);
        let meta = CheckpointMetadata {
            format: FORMAT.into(),
            version: VERSION,
            checkpoint_id: id,
            job: self.layout.job().to_string(),
            created_at_ms: now_ms(),
            max_parallelism,
            slots,
            restored_from,
            properties,
        };
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
        self.storage
            .fail_point(FailPoint::WriteMetadata, &self.layout.metadata(id))?;
        self.storage
            .put_create(&self.layout.metadata(id), meta.to_bytes())
            .await?;
        self.registry()?.complete(id)?;
        // Committed: a failed subsumption must not fail (and so abort) this checkpoint. What it
        // left is subsumed again after the next commit (or at `open`), or collected by GC.
        if let Err(e) = self.subsume().await {
            tracing::warn!(error = %e, "subsuming after checkpoint {id} failed; retried after the next one");
        }
        Ok(meta)
    }

    /// Aborts checkpoint `id`: releases its references and deletes what only it uploaded
    /// (shared objects and its private files).
    ///
    /// `_metadata` goes first: a commit whose answer was lost (or that timed out) may have
    /// written it, and a checkpoint reported failed must not stay committed over deleted files.
    pub async fn abort(&self, id: CheckpointId) -> Result<()> {
        self.storage.delete(&self.layout.metadata(id)).await?;
        let released = self.registry()?.release(id);
        self.delete_checkpoint_files(id, &self.layout).await?;
        for obj in released.delete {
            self.storage.delete(&self.layout.resolve(&obj)).await?;
        }
        Ok(())
    }

    /// Subsumes completed checkpoints beyond `retained`, oldest first: metadata, then private
    /// files, then shared objects no retained checkpoint references.
    pub async fn subsume(&self) -> Result<Vec<CheckpointId>> {
        let ids = self.registry()?.subsumable(self.retained);
        for id in &ids {
            let claimed = self
                .claimed
                .lock()
                .map_err(|_| SnapshotError::Invariant("claimed lock poisoned".into()))?
                .remove(id);
            let layout = claimed.map(|c| c.0).unwrap_or_else(|| self.layout.clone());
            self.storage.delete(&layout.metadata(*id)).await?;
            self.delete_checkpoint_files(*id, &layout).await?;
            let released = self.registry()?.release(*id);
            self.delete_released(released.delete).await?;
        }
        if ids.is_empty() {
            self.delete_released(Vec::new()).await?;
        }
        Ok(ids)
    }

    /// Deletes released shared objects, and those an earlier subsumption failed to delete. On
    /// failure the rest is kept for the next call, so a failed delete leaks nothing.
    async fn delete_released(&self, released: Vec<String>) -> Result<()> {
        let lock = || {
            self.undeleted
                .lock()
                .map_err(|_| SnapshotError::Invariant("undeleted lock poisoned".into()))
        };
        let mut todo = std::mem::take(&mut *lock()?);
        todo.extend(released);
        for (i, obj) in todo.iter().enumerate() {
            // Content-addressed: a later checkpoint may have uploaded the same content again.
            if self.registry()?.is_referenced(obj) {
                continue;
            }
            let path = self.layout.resolve(obj);
            let r = self.storage.fail_point(FailPoint::DeleteSubsumed, &path);
            if let Err(e) = futures::future::ready(r)
                .and_then(|()| self.storage.delete(&path))
                .await
            {
                lock()?.extend(todo[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    async fn delete_checkpoint_files(&self, id: CheckpointId, layout: &JobLayout) -> Result<()> {
        for m in self.storage.list(&layout.checkpoint_dir(id)).await? {
            if m.location.filename() != Some(crate::layout::METADATA_FILE) {
                self.storage.delete(&m.location).await?;
            }
        }
        Ok(())
    }

    /// Adopts a checkpoint of another job restored in `claim` mode: its files are refcounted
    /// like this job's and deleted (from the other job's directory) once nothing references them.
    pub fn claim(&self, source: &JobLayout, meta: &CheckpointMetadata) -> Result<()> {
        let objs = meta
            .shared_objects()
            .into_iter()
            .map(|f| (f.object.clone(), f.size));
        self.registry()?
            .register_completed(meta.checkpoint_id, objs, true)?;
        self.claimed
            .lock()
            .map_err(|_| SnapshotError::Invariant("claimed lock poisoned".into()))?
            .insert(meta.checkpoint_id, (source.clone(), meta.clone()));
        Ok(())
    }

    /// Objects under the job directory that no retained or in-flight checkpoint references and
    /// that are older than `grace`; deleted when `apply`.
    pub async fn gc(&self, grace: Duration, apply: bool) -> Result<GcReport> {
        let mut referenced: HashSet<String> = HashSet::new();
        let ids = self.retained_ids()?;
        for id in &ids {
            let meta = self.load(*id).await?;
            for s in &meta.slots {
                referenced.extend(s.shared.iter().map(|f| f.object.clone()));
                referenced.extend(s.private.iter().map(|f| f.object.clone()));
            }
        }
        let pending = self.registry()?.pending();
        let now = chrono_now();
        let mut report = GcReport {
            applied: apply,
            ..Default::default()
        };
        for m in self.storage.list(&self.layout.job_dir()).await? {
            let kind = self.layout.classify(&m.location);
            let rel = relative(self.storage.root(), &m.location);
            let keep = match kind {
                ObjectKind::Metadata(id) => ids.contains(&id),
                ObjectKind::Shared { .. } => {
                    referenced.contains(&rel) || self.registry()?.is_referenced(&rel)
                }
                // An in-flight checkpoint's private files are not in any metadata yet.
                ObjectKind::Private(id) => referenced.contains(&rel) || pending.contains(&id),
                ObjectKind::Other => true,
            };
            if keep {
                continue;
            }
            let age = now
                .checked_sub(Duration::from_millis(
                    m.last_modified.timestamp_millis().max(0) as u64,
                ))
                .unwrap_or_default();
            if age < grace {
                report.too_young += 1;
                continue;
            }
            report.orphan_bytes += m.size;
            if apply {
                self.storage.delete(&m.location).await?;
            }
            report.orphans.push(rel);
        }
        Ok(report)
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

    /// Downloads one slot's files of a checkpoint into `dest` (created; must not exist), in
    /// parallel, verifying each file's size and sha256 (`hash_placed = false`: SSTs placed
    /// straight from local storage are checked by size only, see
    /// [`transfer::Expected::hash_placed`]). Returns the bytes downloaded.
    pub async fn download_slot(
        storage: &CheckpointStorage,
        handle: &SlotHandle,
        dest: &FsPath,
        parallelism: usize,
        hash_placed: bool,
    ) -> Result<u64> {
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
            let to = dest.join(&f.name);
            let expected = Expected {
                sha256: f.sha256.clone(),
                size: f.size,
                compressed: false,
                hash_placed,
            };
            jobs.push(async move {
                storage.fail_point(FailPoint::DownloadSharedSst, &path)?;
                transfer::download_file(storage, &path, &to, &expected).await?;
                Ok(expected.size)
            });
        }
        let shared: u64 = transfer::run_parallel(jobs, parallelism)
            .await?
            .iter()
            .sum();
        let mut jobs = Vec::new();
        for f in &handle.private {
            let path = root_layout.resolve(&f.object);
            let to = dest.join(&f.name);
            let expected = Expected {
                sha256: f.sha256.clone(),
                size: f.size,
                compressed: true,
                hash_placed: true,
            };
            let stored = f.stored_size;
            jobs.push(async move {
                storage.fail_point(FailPoint::DownloadPrivateFile, &path)?;
                transfer::download_file(storage, &path, &to, &expected).await?;
                Ok(stored)
            });
        }
        let private: u64 = transfer::run_parallel(jobs, parallelism)
            .await?
            .iter()
            .sum();
        Ok(shared + private)
    }
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
                    hash_placed: true,
                },
                p.stored_size,
            ));
        }
    }
    out
}

fn relative(root: &Path, path: &Path) -> String {
    match path.prefix_match(root) {
        Some(parts) => parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/"),
        None => path.to_string(),
    }
}

fn chrono_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
