//! Garbage collection: objects no committed checkpoint references (the uploads of crashed or
//! aborted checkpoints, deletions a crash interrupted), found by listing and deleted after a
//! grace period.
//!
//! ## Rules
//! - **References come from every job under the root.** A job that restored another job's
//!   checkpoint in `claim` mode references objects in that job's directory; collecting one
//!   job with only its own metadata in view would delete them. So the referenced set is built
//!   from the committed metadata of every Cairn job under the storage root.
//! - **A damaged job stops deletion.** If any committed metadata under the root can't be read,
//!   what it references is unknown: nothing is deleted (the report names the damage).
//! - **Only Cairn jobs are touched.** A directory with no `chk-*/_metadata` and no `_writers/`
//!   lease is not a Cairn job: it is skipped and reported, never collected.
//! - **Commits are never collected.** `_metadata` objects and writer leases stay: only
//!   subsumption or an explicit user command removes a committed checkpoint.
//! - **In-flight uploads are not orphans.** Objects younger than `grace` stay; a writer
//!   collecting its own job also keeps what its in-flight checkpoints use. Ages are measured
//!   from a time read *before* the references. `grace` must exceed the longest time from an
//!   upload to the landing of the commit that references it: the checkpoint timeout (the
//!   commit starts within it) plus the commit's three storage operations (lease check, lease
//!   renewal, `_metadata` put; `StorageOptions::max_operation_time` each):
//!   `CheckpointConfig::min_gc_grace` in the engine, which refuses a shorter grace for the
//!   collection it runs after each checkpoint. A writer never references an object that only uncommitted checkpoints reference
//!   without uploading it again (see the registry), so older uploads need no protection.
//! - **Staging files count.** `file://` storage writes `<name>#<n>` and renames it into place;
//!   a crash leaves the staging file, which object listings never show. For local storage the
//!   job directories are also walked on disk for them.
//! - **Listings race commits.** The referenced set is rebuilt until two listings of the
//!   committed ids agree, so a checkpoint committed (and its predecessor subsumed) while the
//!   collection reads metadata is not missed.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Result, SnapshotError};
use crate::object_layout::{self, JobLayout, ObjectKind};
use crate::storage::StorageRoot;
use crate::store::{committed_ids, load_metadata};

/// Result of a garbage collection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Objects no committed checkpoint references and older than the grace period (paths
    /// relative to the storage root; staging files as local paths).
    pub orphans: Vec<String>,
    /// Their total size.
    pub orphan_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub too_young: usize,
    /// Whether the orphans were deleted.
    pub applied: bool,
    /// Directories that are not Cairn jobs, left alone.
    pub not_jobs: Vec<String>,
    /// Committed checkpoints whose metadata could not be read (then nothing is deleted).
    pub damaged: Vec<String>,
}

/// What the committed checkpoints under a root reference.
#[derive(Debug, Default)]
pub struct RootReferences {
    /// Every object (relative to the root) any committed checkpoint references.
    pub objects: HashSet<String>,
    /// Committed checkpoints whose metadata could not be read, with the error.
    pub damaged: Vec<String>,
}

/// The job directories under the storage root (valid job names only).
pub async fn jobs_under_root(storage: &StorageRoot) -> Result<Vec<String>> {
    let mut jobs: Vec<String> = storage
        .list_dirs(storage.root())
        .await?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|j| object_layout::check_job_name(j).is_ok())
        .collect();
    jobs.sort();
    Ok(jobs)
}

/// Whether `job` is a Cairn job: it has a committed checkpoint or a writer lease.
pub async fn is_job(storage: &StorageRoot, job: &str) -> Result<bool> {
    if object_layout::check_job_name(job).is_err() {
        return Ok(false);
    }
    let l = JobLayout::new(storage.root().clone(), job);
    if !storage.list(&l.writers_dir()).await?.is_empty() {
        return Ok(true);
    }
    Ok(!committed_ids(storage, &l).await?.is_empty())
}

/// Everything the committed checkpoints of every job under the root reference. See the
/// module doc ("Listings race commits").
pub async fn root_references(storage: &StorageRoot) -> Result<RootReferences> {
    let mut out = RootReferences::default();
    for job in jobs_under_root(storage).await? {
        let l = JobLayout::new(storage.root().clone(), job.as_str());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = committed_ids(storage, &l).await?;
            let mut objects = Vec::new();
            let mut damaged = Vec::new();
            let mut vanished = false;
            for id in &before {
                match load_metadata(storage, &l, *id).await {
                    Ok(m) => {
                        objects.push(relative(storage, &l.metadata(*id)));
                        for s in &m.slots {
                            objects.extend(s.shared.iter().map(|f| f.object.clone()));
                            objects.extend(s.private.iter().map(|f| f.object.clone()));
                        }
                    }
                    // Subsumed while we read: the listing is stale.
                    Err(SnapshotError::NoCheckpoint { .. }) => vanished = true,
                    Err(e) => damaged.push(format!("{job}/chk-{id}: {e}")),
                }
            }
            let after = committed_ids(storage, &l).await?;
            if (vanished || before != after) && attempts < 10 {
                continue;
            }
            if vanished || before != after {
                return Err(SnapshotError::Invariant(format!(
                    "job {job}'s checkpoints kept changing while garbage collection read them"
                )));
            }
            out.objects.extend(objects);
            out.damaged.extend(damaged);
            break;
        }
    }
    Ok(out)
}

/// Collects the orphans of `jobs` (job names under the storage root): see the module doc.
/// `in_flight(object)` keeps objects a running writer uses that no committed metadata names
/// yet (pass `&|_| false` from outside a writer).
pub async fn collect(
    storage: &StorageRoot,
    jobs: &[String],
    grace: Duration,
    apply: bool,
    in_flight: &(dyn Fn(&str) -> bool + Sync),
) -> Result<GcReport> {
    // Ages are judged against the time before the references were read: an object whose
    // checkpoint committed after that read was uploaded less than the checkpoint's duration
    // before the commit, so it is younger than `grace` relative to this `now`.
    let now = storage.now_ms();
    let refs = root_references(storage).await?;
    let mut report = GcReport {
        applied: apply && refs.damaged.is_empty(),
        damaged: refs.damaged,
        ..Default::default()
    };
    let apply = report.applied;
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    for job in jobs {
        if !is_job(storage, job).await? {
            report.not_jobs.push(job.clone());
            continue;
        }
        let l = JobLayout::new(storage.root().clone(), job.as_str());
        for m in storage.list(&l.job_dir()).await? {
            let rel = relative(storage, &m.location);
            let keep = match l.classify(&m.location) {
                ObjectKind::Metadata(_) | ObjectKind::Writer(_) | ObjectKind::Other => true,
                ObjectKind::Shared { .. } | ObjectKind::Private(_) => {
                    refs.objects.contains(&rel) || in_flight(&rel)
                }
            };
            if keep {
                continue;
            }
            let modified = u64::try_from(m.last_modified.timestamp_millis().max(0)).unwrap_or(0);
            if now.saturating_sub(modified) < grace_ms {
                report.too_young += 1;
                continue;
            }
            report.orphan_bytes += m.size;
            if apply {
                storage.delete(&m.location).await?;
            }
            report.orphans.push(rel);
        }
        collect_staging(storage, &l, now, grace_ms, apply, &mut report)?;
    }
    Ok(report)
}

/// Staging files (`<name>#<digits>`) a crash left under a `file://` job directory.
fn collect_staging(
    storage: &StorageRoot,
    l: &JobLayout,
    now: u64,
    grace_ms: u64,
    apply: bool,
    report: &mut GcReport,
) -> Result<()> {
    let Some(base) = storage.local_dir() else {
        return Ok(());
    };
    let mut dir = base.to_path_buf();
    for part in l.job_dir().parts() {
        dir.push(part.as_ref());
    }
    let mut stack = vec![dir];
    let mut found = BTreeSet::new();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            // Never follow a link out of the storage directory.
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() && is_staging_name(&e.file_name().to_string_lossy()) {
                found.insert(path);
            }
        }
    }
    for path in found {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if now.saturating_sub(modified) < grace_ms {
            report.too_young += 1;
            continue;
        }
        report.orphan_bytes += meta.len();
        if apply {
            std::fs::remove_file(&path).map_err(SnapshotError::io("remove", &path))?;
        }
        report.orphans.push(path.display().to_string());
    }
    Ok(())
}

/// `<name>#<digits>`: a staging file of object_store's local store.
pub fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// `path` relative to the storage root, as metadata names objects.
pub fn relative(storage: &StorageRoot, path: &object_store::path::Path) -> String {
    match path.prefix_match(storage.root()) {
        Some(parts) => parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging_name("0a1b-e1#1"));
        assert!(is_staging_name("_metadata#12"));
        assert!(!is_staging_name("_metadata"));
        assert!(!is_staging_name("#1"));
        assert!(!is_staging_name("a#"));
        assert!(!is_staging_name("a#x1"));
    }
}
