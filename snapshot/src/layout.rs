//! The object layout of checkpoint storage. This module is the only place that formats or
//! parses object keys.
//!
//! ```text
//! <root>/                           the checkpoint directory URL (file://, s3://, memory://)
//!   <job>/                          one directory per job run (e.g. job-20261125T130000Z-3fa1)
//!     shared/<sha256>               SST files, content-addressed: identical files dedupe and every
//!                                   download is verified against its name
//!     shared/<sha256>-c<id>         the same content uploaded again by checkpoint <id> (a rebase
//!                                   or a `max-file-age` re-upload): a new object, so the new chain
//!                                   shares nothing with the old one, which subsumption then frees
//!     chk-<id>/slot-<i>/<file>.zst  private files of a slot: RocksDB MANIFEST, CURRENT, OPTIONS,
//!                                   heap snapshots (zstd-compressed)
//!     chk-<id>/_metadata            the checkpoint's metadata, written LAST with a create-only
//!                                   put: a checkpoint exists iff its _metadata exists
//! ```
//! Metadata refers to shared files by their path relative to `<root>` (`<job>/shared/<sha>`), so
//! a job that restores another job's checkpoint in `claim` mode can reference (and later delete)
//! the files where they are.

use object_store::path::Path;

/// Name of the commit object inside `chk-<id>/`.
pub const METADATA_FILE: &str = "_metadata";
/// Directory of content-addressed shared files inside a job.
pub const SHARED_DIR: &str = "shared";
/// Suffix of compressed private files.
pub const PRIVATE_SUFFIX: &str = ".zst";

/// A checkpoint id: positive, increasing within a job.
pub type CheckpointId = u64;

/// Object keys of one job inside a checkpoint storage root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLayout {
    root: Path,
    job: String,
}

/// What an object under a job directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// `shared/<sha256>`.
    Shared {
        /// Hex sha256 of the content.
        sha256: String,
    },
    /// `chk-<id>/_metadata`.
    Metadata(CheckpointId),
    /// Any other object under `chk-<id>/`.
    Private(CheckpointId),
    /// Anything else (left alone by garbage collection).
    Other,
}

impl JobLayout {
    /// The layout of job `job` under `root`.
    pub fn new(root: Path, job: impl Into<String>) -> Self {
        Self {
            root,
            job: job.into(),
        }
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<job>`.
    pub fn job_dir(&self) -> Path {
        self.root.clone().join(self.job.as_str())
    }

    /// `<job>/shared/<sha>` relative to the root: how metadata names a shared file.
    pub fn shared_ref(&self, sha256: &str) -> String {
        format!("{}/{SHARED_DIR}/{sha256}", self.job)
    }

    /// `<job>/shared/<sha>-c<id>` relative to the root: content `sha` uploaded again by checkpoint
    /// `id` (rebase, file-age re-upload), deliberately a different object from `shared_ref(sha)`.
    pub fn shared_ref_at(&self, sha256: &str, id: CheckpointId) -> String {
        format!("{}/{SHARED_DIR}/{sha256}-c{id}", self.job)
    }

    /// The absolute object path of a shared-file reference (as stored in metadata).
    pub fn resolve(&self, reference: &str) -> Path {
        let mut p = self.root.clone();
        for part in reference.split('/') {
            p = p.join(part);
        }
        p
    }

    /// `<root>/<job>/chk-<id>`.
    pub fn checkpoint_dir(&self, id: CheckpointId) -> Path {
        self.job_dir().join(format!("chk-{id}").as_str())
    }

    /// `<root>/<job>/chk-<id>/_metadata`.
    pub fn metadata(&self, id: CheckpointId) -> Path {
        self.checkpoint_dir(id).join(METADATA_FILE)
    }

    /// `<job>/chk-<id>/slot-<i>/<name>.zst` relative to the root.
    pub fn private_ref(&self, id: CheckpointId, slot: u32, name: &str) -> String {
        format!("{}/chk-{id}/slot-{slot}/{name}{PRIVATE_SUFFIX}", self.job)
    }

    /// Classifies an object path under this job.
    pub fn classify(&self, path: &Path) -> ObjectKind {
        let job_dir = self.job_dir();
        let Some(parts) = path.prefix_match(&job_dir) else {
            return ObjectKind::Other;
        };
        let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
        match parts.as_slice() {
            [dir, name] if dir == SHARED_DIR => match parse_shared_name(name) {
                Some(sha) => ObjectKind::Shared {
                    sha256: sha.to_string(),
                },
                None => ObjectKind::Other,
            },
            [chk, rest @ ..] if !rest.is_empty() => match parse_checkpoint_dir(chk) {
                Some(id) if rest.len() == 1 && rest[0] == METADATA_FILE => ObjectKind::Metadata(id),
                Some(id) => ObjectKind::Private(id),
                None => ObjectKind::Other,
            },
            _ => ObjectKind::Other,
        }
    }
}

/// Parses `chk-<id>`.
pub fn parse_checkpoint_dir(name: &str) -> Option<CheckpointId> {
    name.strip_prefix("chk-")?.parse().ok()
}

/// The sha256 of a shared object's name: `<sha256>` or `<sha256>-c<id>`.
fn parse_shared_name(name: &str) -> Option<&str> {
    let (sha, rest) = match name.split_once("-c") {
        Some((sha, id)) => (sha, Some(id)),
        None => (name, None),
    };
    let id_ok = rest.is_none_or(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    (is_sha256_hex(sha) && id_ok).then_some(sha)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn layout_is_pinned() {
        let l = JobLayout::new(Path::from("base"), "job-1");
        assert_eq!(l.metadata(7).as_ref(), "base/job-1/chk-7/_metadata");
        assert_eq!(l.shared_ref(SHA), format!("job-1/shared/{SHA}"));
        assert_eq!(
            l.resolve(&l.shared_ref(SHA)).as_ref(),
            format!("base/job-1/shared/{SHA}")
        );
        assert_eq!(l.shared_ref_at(SHA, 9), format!("job-1/shared/{SHA}-c9"));
        assert_eq!(
            l.private_ref(7, 2, "MANIFEST-000005"),
            "job-1/chk-7/slot-2/MANIFEST-000005.zst"
        );
    }

    #[test]
    fn classify_objects() {
        let l = JobLayout::new(Path::from("base"), "job-1");
        assert_eq!(
            l.classify(&Path::from(format!("base/job-1/shared/{SHA}"))),
            ObjectKind::Shared { sha256: SHA.into() }
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-12/_metadata")),
            ObjectKind::Metadata(12)
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-12/slot-0/CURRENT.zst")),
            ObjectKind::Private(12)
        );
        assert_eq!(
            l.classify(&Path::from(format!("base/job-1/shared/{SHA}-c12"))),
            ObjectKind::Shared { sha256: SHA.into() }
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/shared/not-a-sha")),
            ObjectKind::Other
        );
        for bad in [format!("{SHA}-c"), format!("{SHA}-cx"), format!("{SHA}-d1")] {
            assert_eq!(
                l.classify(&Path::from(format!("base/job-1/shared/{bad}"))),
                ObjectKind::Other,
                "{bad}"
            );
        }
        assert_eq!(
            l.classify(&Path::from("base/job-2/chk-1/_metadata")),
            ObjectKind::Other
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-x/_metadata")),
            ObjectKind::Other
        );
    }
}
