//! The per-slot half of a checkpoint that runs in any process: upload one slot's local snapshot
//! and return its [`SlotHandle`], without the job's registry or writer lease. The per-job half,
//! [`CheckpointStore::accept_slot`](crate::CheckpointStore::accept_slot), runs where the job's
//! writer is: it checks each handle (objects exist with their sizes, reused objects are still
//! held by a retained checkpoint), registers it, and the checkpoint commits as usual.
//!
//! Why a second upload path next to [`CheckpointStore::upload_slot_with`](crate::CheckpointStore::upload_slot_with): that one consults the
//! registry (upload a content once across slots and checkpoints, never rewrite an object another
//! checkpoint references). A remote slot has no registry, so it never writes an object another
//! checkpoint could reference: every new file goes to an object named after this attempt
//! (`<sha>-e<E>-c<id>`), and files of the slot's last *confirmed* checkpoint are referenced
//! where they are. The committer refuses a handle that reuses an object no retained checkpoint
//! holds any more (a confirmation that reached the slot late), so a stale reuse fails one
//! checkpoint and never commits a dangling reference.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};
use crate::fault::FailPoint;
use crate::metadata::{PrivateFile, SharedFile, SlotHandle};
use crate::object_layout::{self, CheckpointId, Epoch, JobLayout};
use crate::storage::StorageRoot;
use crate::store::{LocalSnapshot, SlotUploadReport, SlotUploadState};
use crate::transfer;

/// Where a slot in another process uploads: the storage URL (as `checkpoint.dir`), the job and
/// the epoch of the job's writer (the committer). The committer hands it out; it is plain data
/// so a host can send it with its barrier or at deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTarget {
    /// The storage root URL (`checkpoint.dir`).
    pub storage_url: String,
    /// The job directory.
    pub job: String,
    /// The committer's writer epoch: every object a slot writes carries it, so an abort or a
    /// fenced writer's cleanup never touches another writer's objects.
    pub epoch: Epoch,
}

/// Uploads one slot's snapshot for checkpoint `id` to `target`'s job: files of the slot's last
/// confirmed checkpoint by reference, new shared files under `<sha>-e<E>-c<id>`, private files
/// compressed under the attempt's own prefix. At most `parallelism` transfers at once. The
/// handle's objects are recorded as pending in `state` (confirm or discard them when the
/// checkpoint completes or aborts).
pub async fn upload_slot_files(
    storage: &StorageRoot,
    target: &UploadTarget,
    id: CheckpointId,
    snap: &LocalSnapshot,
    state: &mut SlotUploadState,
    parallelism: usize,
) -> Result<(SlotHandle, SlotUploadReport)> {
    object_layout::check_job_name(&target.job)?;
    let job = JobLayout::new(storage.root().clone(), target.job.clone());
    let now = storage.now_ms();
    let mut report = SlotUploadReport::default();
    let mut files: Vec<SharedFile> = Vec::new();
    let mut to_hash = Vec::new();
    for name in &snap.shared {
        let local = object_layout::local_path(&snap.dir, "local snapshot file", name)?;
        let size = std::fs::metadata(&local)
            .map_err(SnapshotError::io("stat", &local))?
            .len();
        match state.confirmed_file(name) {
            Some(f) if f.size == size => {
                report.files_reused += 1;
                files.push(f.clone());
            }
            _ => to_hash.push((name.clone(), local)),
        }
    }
    let hashed = transfer::hash_files(to_hash, parallelism).await?;
    let mut sent: HashSet<String> = HashSet::new();
    let mut uploads = Vec::new();
    for (name, local, sha256, size) in hashed {
        // A file a rescaling restore brought in under a new name keeps its object.
        if let Some(f) = state.restored_content(&name, &sha256, size) {
            report.files_reused += 1;
            files.push(f);
            continue;
        }
        let object = job.shared_ref_at(&sha256, target.epoch, id);
        if sent.insert(object.clone()) {
            report.files_uploaded += 1;
            uploads.push((local, job.resolve(&object)));
        } else {
            report.files_reused += 1;
        }
        files.push(SharedFile {
            name,
            object,
            sha256,
            size,
            uploaded_at_ms: now,
        });
    }
    let shared = transfer::run_parallel(
        uploads
            .into_iter()
            .map(|(local, to)| async move {
                storage.fail_point(FailPoint::UploadSharedSst, &to)?;
                transfer::upload_file(storage, &local, &to).await
            })
            .collect(),
        parallelism,
    )
    .await?;
    let private = transfer::run_parallel(
        snap.private
            .iter()
            .map(|name| {
                let object = job.private_ref(id, target.epoch, snap.slot, name);
                let job = &job;
                async move {
                    let local = object_layout::local_path(&snap.dir, "local snapshot file", name)?;
                    let (zst, sha256, size, stored_size) = transfer::compress_file(&local).await?;
                    let to = job.resolve(&object);
                    storage.fail_point(FailPoint::UploadPrivateFile, &to)?;
                    let r = transfer::upload_file(storage, &zst, &to).await;
                    let _ = tokio::fs::remove_file(&zst).await;
                    r?;
                    Ok(PrivateFile {
                        name: name.clone(),
                        object,
                        sha256,
                        size,
                        stored_size,
                    })
                }
            })
            .collect(),
        parallelism,
    )
    .await?;
    report.bytes_uploaded =
        shared.iter().sum::<u64>() + private.iter().map(|p| p.stored_size).sum::<u64>();
    report.shared_bytes = files.iter().map(|f| f.size).sum();
    report.full_bytes = report.shared_bytes + private.iter().map(|p| p.stored_size).sum::<u64>();
    state.record_pending(id, &files);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((
        SlotHandle {
            slot: snap.slot,
            key_groups: snap.key_groups,
            backend: snap.backend.clone(),
            states: snap.states.clone(),
            shared: files,
            private,
        },
        report,
    ))
}
