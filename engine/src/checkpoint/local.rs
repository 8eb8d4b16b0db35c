//! Local recovery (Flink: `execution.state-recovery.from-local`): each slot keeps its last
//! completed checkpoint's local snapshot, and a restore uses it instead of downloading when it
//! is the checkpoint being restored and its files check out.
//!
//! ## Layout
//! ```text
//! <slot working dir>/local-recovery/chk-<id>/      the snapshot directory of the sync phase,
//!                                                  renamed here after chk-<id> committed: hard
//!                                                  links to the SSTs + copies of MANIFEST etc.
//! <slot working dir>/local-recovery/chk-<id>/cairn-local.json
//!                                                  which storage, job, checkpoint and key
//!                                                  groups it is; written last, so a snapshot
//!                                                  without it is incomplete and never used
//! ```
//! After each completed checkpoint everything else under `local-recovery/` is removed (the
//! previous snapshot, anything a crash left), and with local recovery off the directory is
//! removed. The cost is local disk: the hard links keep SSTs alive that the live database has
//! already compacted away, at most one checkpoint's worth per slot.
//!
//! ## Checks before use
//! The snapshot must be of the restored storage, job and checkpoint (a same-named job in other
//! storage is another job), with the slot's exact key groups (no rescaling from local state,
//! as in Flink), and hold every file of the slot's handle with
//! its size and, by default, its sha256 from the metadata (`local-recovery-verify = "size"`
//! skips the hashing). Files are placed first (SSTs and heap snapshots hard-linked, RocksDB's
//! small MANIFEST/CURRENT/OPTIONS copied, since the restored database rewrites those) and the
//! placed files are hashed: exactly the bytes the restored slot reads. Any failure removes
//! what was placed and the restore downloads from storage instead.
//!
//! The local directory is not trusted either: `local-recovery/`, the snapshot directory and
//! every file in it must be what they seem (a directory, regular files), never symbolic links
//! that could lead outside the slot directory, and every file name comes from the validated
//! metadata and is checked again where the path is built.

use std::path::{Path, PathBuf};

use cairn_snapshot::metadata::SlotHandle;
use cairn_snapshot::{object_layout, transfer};

use crate::keygroup::KeyGroupRange;
use serde::{Deserialize, Serialize};

use super::config::FileVerify;
use super::sync::HEAP_SNAPSHOT_FILE;
use crate::error::{EngineError, Result};

/// Directory of local snapshots inside a slot's working directory.
pub const LOCAL_DIR: &str = "local-recovery";
/// The marker that makes a local snapshot complete.
const MARKER: &str = "cairn-local.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The storage the checkpoint is in ([`cairn_snapshot::StorageRoot::identity`]).
    root: String,
    job: String,
    checkpoint_id: u64,
    slot: u32,
    key_groups: KeyGroupRange,
}

/// Which way a slot was restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoredVia {
    /// From the slot's local snapshot.
    Local,
    /// Downloaded from checkpoint storage.
    Remote,
}

/// How one slot was restored (the run JSON's `restored_from.slots[]`).
#[derive(Clone, Debug, Serialize)]
pub struct SlotRestoreReport {
    /// The key groups restored, `start..=end`.
    pub key_groups: String,
    /// Local snapshot or storage.
    pub path: RestoredVia,
    /// Wall time until the slot's files were in place and verified, ms.
    pub ms: f64,
    /// Bytes placed: downloaded (remote) or checked (local).
    pub bytes: u64,
    /// Whether the slot's SSTs are fetched after it opens (`checkpoint.restore-fetch = lazy`
    /// restoring a RocksDB slot from storage); `ms` and `bytes` then cover its private files
    /// only.
    pub lazy: bool,
    /// With local recovery on: why the local snapshot was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rejected: Option<String>,
    /// When the slot's key groups were not one old slot's (rescaling a RocksDB checkpoint):
    /// the base, the old slots ingested or inserted, and their times. Set by the host once
    /// the slot is open ([`Slot::rescale_report`](crate::Slot::rescale_report)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale: Option<crate::backend::rocks::rescale::RescaleReport>,
}

fn io(op: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { op, source }
}

/// Keeps `snapshot_dir` (the sync-phase directory of completed checkpoint `id`) as the slot's
/// local snapshot and removes every other entry under `<slot_dir>/local-recovery/`.
pub(crate) fn keep(
    slot_dir: &Path,
    snapshot_dir: &Path,
    storage: &str,
    job: &str,
    id: u64,
    slot: u32,
    key_groups: KeyGroupRange,
) -> Result<()> {
    let root = slot_dir.join(LOCAL_DIR);
    std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
    let target = root.join(format!("chk-{id}"));
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(format!("remove {}", target.display())))?;
    }
    std::fs::rename(snapshot_dir, &target).map_err(io(format!(
        "move {} to {}",
        snapshot_dir.display(),
        target.display()
    )))?;
    let marker = Marker {
        root: storage.to_string(),
        job: job.to_string(),
        checkpoint_id: id,
        slot,
        key_groups,
    };
    let tmp = target.join(format!("{MARKER}.tmp"));
    let bytes = serde_json::to_vec(&marker).map_err(|e| EngineError::Io {
        op: "encode the local snapshot marker".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, target.join(MARKER)).map_err(io(format!("commit {}", tmp.display())))?;
    remove_others(&root, Some(&target))
}

/// Removes the slot's local snapshots (local recovery is off).
pub(crate) fn discard_all(slot_dir: &Path) -> Result<()> {
    let root = slot_dir.join(LOCAL_DIR);
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io(format!("remove {}", root.display())))?;
    }
    Ok(())
}

fn remove_others(root: &Path, keep: Option<&Path>) -> Result<()> {
    for e in std::fs::read_dir(root).map_err(io(format!("list {}", root.display())))? {
        let p = e.map_err(io(format!("list {}", root.display())))?.path();
        if Some(p.as_path()) == keep {
            continue;
        }
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io(format!("remove stale {}", p.display())))?;
    }
    Ok(())
}

/// Places the slot's local snapshot of `job`/`checkpoint_id` at `dest` (removed first) and
/// verifies it against `handle`. Returns the bytes checked, or why the snapshot can't be used
/// (then `dest` is removed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn place(
    slot_dir: &Path,
    handle: &SlotHandle,
    root: &str,
    job: &str,
    checkpoint_id: u64,
    dest: &Path,
    verify: FileVerify,
    parallelism: usize,
) -> std::result::Result<u64, String> {
    let base = slot_dir.join(LOCAL_DIR);
    let src = base.join(format!("chk-{checkpoint_id}"));
    let marker_path = src.join(MARKER);
    if std::fs::symlink_metadata(&marker_path).is_err() {
        let found = std::fs::read_dir(&base)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        return Err(format!(
            "no complete local snapshot of chk-{checkpoint_id} (found: [{found}])"
        ));
    }
    real(&base, true)?;
    real(&src, true)?;
    real(&marker_path, false)?;
    let marker = std::fs::read(&marker_path)
        .map_err(|e| format!("unreadable {}: {e}", marker_path.display()))?;
    let marker: Marker = serde_json::from_slice(&marker)
        .map_err(|e| format!("unreadable {}: {e}", src.join(MARKER).display()))?;
    if marker.root != root {
        return Err(format!(
            "local snapshot is of storage {}, not {root}",
            marker.root
        ));
    }
    if marker.job != job
        || marker.checkpoint_id != checkpoint_id
        || marker.key_groups != handle.key_groups
    {
        return Err(format!(
            "local snapshot is of {}/chk-{} key groups {}..={}, not {job}/chk-{checkpoint_id} key groups {}..={}",
            marker.job,
            marker.checkpoint_id,
            marker.key_groups.start,
            marker.key_groups.end,
            handle.key_groups.start,
            handle.key_groups.end
        ));
    }
    let r = place_verified(&src, handle, dest, verify, parallelism).await;
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

/// The metadata of `path` itself (a symbolic link is never followed); an error unless it is a
/// directory (`dir`) or a regular file.
fn real(path: &Path, dir: bool) -> std::result::Result<std::fs::Metadata, String> {
    let m =
        std::fs::symlink_metadata(path).map_err(|_| format!("{} is missing", path.display()))?;
    let (ok, kind) = if dir {
        (m.is_dir(), "a directory")
    } else {
        (m.is_file(), "a regular file")
    };
    if !ok {
        return Err(format!(
            "{} is not {kind} (a symbolic link is never followed)",
            path.display()
        ));
    }
    Ok(m)
}

async fn place_verified(
    src: &Path,
    handle: &SlotHandle,
    dest: &Path,
    verify: FileVerify,
    parallelism: usize,
) -> std::result::Result<u64, String> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| format!("remove {}: {e}", dest.display()))?;
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    // (name, size, sha256, link?)
    let mut files: Vec<(&str, u64, &str, bool)> = handle
        .shared
        .iter()
        .map(|f| (f.name.as_str(), f.size, f.sha256.as_str(), true))
        .collect();
    files.extend(handle.private.iter().map(|f| {
        let link = f.name == HEAP_SNAPSHOT_FILE;
        (f.name.as_str(), f.size, f.sha256.as_str(), link)
    }));
    let mut total = 0;
    for (name, size, _, link) in &files {
        let from = object_layout::local_path(src, "local snapshot file", name)
            .map_err(|e| e.to_string())?;
        let to =
            object_layout::local_path(dest, "restored file", name).map_err(|e| e.to_string())?;
        // Not followed: a link could lead anywhere outside the slot directory.
        let actual = real(&from, false)?.len();
        if actual != *size {
            return Err(format!(
                "{} has {actual} bytes, the checkpoint recorded {size}",
                from.display()
            ));
        }
        if *link {
            transfer::place_local(&from, &to).map_err(|e| e.to_string())?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        }
        total += size;
    }
    if verify == FileVerify::Sha256 {
        let jobs: Vec<_> = files
            .iter()
            .map(|(name, _, sha, _)| {
                let path: PathBuf = dest.join(name); // checked above
                let expected = sha.to_string();
                async move {
                    let (actual, _) = transfer::hash_file(&path).await?;
                    Ok((path, expected, actual))
                }
            })
            .collect();
        let hashed = transfer::run_parallel(jobs, parallelism)
            .await
            .map_err(|e| e.to_string())?;
        for (path, expected, actual) in hashed {
            if actual != expected {
                return Err(format!(
                    "{} has sha256 {actual}, the checkpoint recorded {expected}",
                    path.display()
                ));
            }
        }
    }
    Ok(total)
}
