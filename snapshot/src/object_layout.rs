//! The object layout of checkpoint storage, and the names it accepts. This module is the only
//! place that formats or parses object keys and checks names read from storage.
//!
//! ```text
//! <root>/                           the checkpoint directory URL (file://, s3://, memory://)
//!   <job>/                          one directory per job (e.g. job-20261125T130000Z-3fa1...)
//!     _writers/epoch-<020>          writer leases, one per writer that ever opened the job, taken
//!                                   with a create-only put (see `lease`); their presence marks
//!                                   the directory as a Cairn job
//!     shared/<sha256>-e<E>          SST files uploaded by the writer of epoch E, content-addressed
//!                                   within it: identical files dedupe and every download is
//!                                   verified against the name. Two writers never write one name.
//!     shared/<sha256>-e<E>-c<id>    the same content uploaded again by checkpoint <id> (a rebase
//!                                   or a `max-file-age` re-upload): a new object, so the new chain
//!                                   shares nothing with the old one, which subsumption then frees
//!     chk-<id>/e<E>/slot-<i>/<f>.zst  private files of a slot written by epoch E's attempt at
//!                                   checkpoint <id> (RocksDB MANIFEST, CURRENT, OPTIONS, heap
//!                                   snapshots; zstd): an abort deletes only its own attempt
//!     chk-<id>/_metadata            the checkpoint's metadata, written LAST with a create-only
//!                                   put: a checkpoint exists iff its _metadata exists
//! ```
//! Versions before 3 wrote `shared/<sha256>[-c<id>]` and `chk-<id>/slot-<i>/<f>.zst`; both are
//! still read. Metadata refers to shared files by their path relative to `<root>`
//! (`<job>/shared/<name>`), so a job that restores another job's checkpoint in `claim` mode can
//! reference (and later delete) the files where they are.
//!
//! ## Names read from storage
//! Every name that can become a local path or an object key is checked before use
//! ([`check_file_name`], [`check_job_name`], [`ObjectRef::parse`]): one plain component of
//! `[A-Za-z0-9._-]`, never `.` or `..`, at most 255 bytes. Metadata is checked when it is
//! loaded (`CheckpointMetadata::validate`) and local paths are checked again where they are
//! built ([`local_path`]).

use object_store::path::Path;

use crate::error::{Result, SnapshotError};

/// Name of the commit object inside `chk-<id>/`.
pub const METADATA_FILE: &str = "_metadata";
/// Directory of content-addressed shared files inside a job.
pub const SHARED_DIR: &str = "shared";
/// Directory of writer leases inside a job.
pub const WRITERS_DIR: &str = "_writers";
/// Suffix of compressed private files.
pub const PRIVATE_SUFFIX: &str = ".zst";
/// Longest job name.
pub const MAX_JOB_NAME: usize = 128;
/// Longest file name (and object name component).
pub const MAX_FILE_NAME: usize = 255;

/// A checkpoint id: positive, increasing within a job.
pub type CheckpointId = u64;

/// The epoch of a writer of a job: 1 for the job's first writer, one more for each writer
/// that took the job over (see `lease`).
pub type Epoch = u64;

fn name_chars_ok(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a file name read from storage (or about to be written there): one plain path
/// component of `[A-Za-z0-9._-]`, not `.` or `..`, 1 to 255 bytes. `what` names it in the
/// error (e.g. `shared file of slot 0`).
pub fn check_file_name(what: &str, name: &str) -> Result<()> {
    let rule = if name.is_empty() || name.len() > MAX_FILE_NAME {
        Some("1 to 255 bytes")
    } else if name == "." || name == ".." {
        Some("not . or ..")
    } else if !name_chars_ok(name) {
        Some("only A-Z a-z 0-9 . _ - (no separators, no NUL)")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(SnapshotError::BadName {
            what: what.to_string(),
            name: name.escape_debug().to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

/// Checks a job name: 1 to 128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `_` (names
/// starting with `_` are Cairn's own, like `_writers`), so that it is one directory on every
/// store and no object store encodes it differently.
pub fn check_job_name(name: &str) -> Result<()> {
    let rule = if name.is_empty() || name.len() > MAX_JOB_NAME {
        Some("1 to 128 bytes")
    } else if !name_chars_ok(name) {
        Some("only A-Z a-z 0-9 . _ - (no separators)")
    } else if name.starts_with('.') || name.starts_with('_') {
        Some("not starting with . or _")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(SnapshotError::BadName {
            what: "job name".into(),
            name: name.escape_debug().to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

/// `dir/name` for a file name read from storage: checks the name again (the one place local
/// paths are built from stored names), so nothing outside `dir` can be named.
pub fn local_path(dir: &std::path::Path, what: &str, name: &str) -> Result<std::path::PathBuf> {
    check_file_name(what, name)?;
    Ok(dir.join(name))
}

/// The parsed name of a shared object: `<sha256>[-e<epoch>][-c<id>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedName {
    /// Hex sha256 of the content.
    pub sha256: String,
    /// The writer epoch that uploaded it (`None`: written before version 3).
    pub epoch: Option<Epoch>,
    /// The checkpoint that uploaded it again (rebase), if any.
    pub rewrite: Option<CheckpointId>,
}

impl SharedName {
    /// Parses a shared object's file name.
    pub fn parse(name: &str) -> Option<Self> {
        let (sha, mut rest) = name.split_at_checked(64)?;
        if !is_sha256_hex(sha) {
            return None;
        }
        let mut number = |tag: &str| -> Option<Option<u64>> {
            match rest.strip_prefix(tag) {
                None => Some(None),
                Some(r) => {
                    let end = r.find('-').unwrap_or(r.len());
                    let digits = &r[..end];
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    rest = &r[end..];
                    digits.parse().ok().map(Some)
                }
            }
        };
        let epoch = number("-e")?;
        let rewrite = number("-c")?;
        rest.is_empty().then(|| Self {
            sha256: sha.to_string(),
            epoch,
            rewrite,
        })
    }
}

/// A reference to an object as metadata stores it, `<job>/<component>/...` relative to the
/// storage root, checked component by component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    /// The job whose directory holds the object.
    pub job: &'a str,
    /// The components below the job directory.
    pub parts: Vec<&'a str>,
}

impl<'a> ObjectRef<'a> {
    /// Parses and checks a reference: a valid job name, then at least one component, each a
    /// valid file name.
    pub fn parse(reference: &'a str) -> Result<Self> {
        let bad = |rule: &'static str| SnapshotError::BadName {
            what: "object reference".into(),
            name: reference.escape_debug().to_string(),
            rule,
        };
        let mut it = reference.split('/');
        let job = it.next().ok_or_else(|| bad("<job>/<path>"))?;
        check_job_name(job).map_err(|_| bad("<job>/<path> with a valid job name"))?;
        let parts: Vec<&str> = it.collect();
        if parts.is_empty() || parts.len() > 8 {
            return Err(bad("<job>/<path> of 1 to 8 components"));
        }
        for p in &parts {
            check_file_name("object reference component", p)
                .map_err(|_| bad("plain components of A-Z a-z 0-9 . _ -"))?;
        }
        Ok(Self { job, parts })
    }

    /// The shared object's name when this is `<job>/shared/<name>` with a valid shared name.
    pub fn shared(&self) -> Option<SharedName> {
        match self.parts.as_slice() {
            [dir, name] if *dir == SHARED_DIR => SharedName::parse(name),
            _ => None,
        }
    }

    /// The checkpoint whose directory holds this object (`<job>/chk-<id>/...`).
    pub fn checkpoint(&self) -> Option<CheckpointId> {
        match self.parts.as_slice() {
            [chk, _, ..] => parse_checkpoint_dir(chk),
            _ => None,
        }
    }
}

/// Object keys of one job inside a checkpoint storage root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLayout {
    root: Path,
    job: String,
}

/// What an object under a job directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// `shared/<sha256>[-e<E>][-c<id>]`.
    Shared {
        /// Hex sha256 of the content.
        sha256: String,
    },
    /// `chk-<id>/_metadata`.
    Metadata(CheckpointId),
    /// Any other object under `chk-<id>/`.
    Private(CheckpointId),
    /// `_writers/epoch-<E>`.
    Writer(Epoch),
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

    /// `<job>/shared/<sha>-e<epoch>` relative to the root: how metadata names a shared file
    /// uploaded by the writer of `epoch`.
    pub fn shared_ref(&self, sha256: &str, epoch: Epoch) -> String {
        format!("{}/{SHARED_DIR}/{sha256}-e{epoch}", self.job)
    }

    /// `<job>/shared/<sha>-e<epoch>-c<id>` relative to the root: content `sha` uploaded again by
    /// checkpoint `id` (rebase, file-age re-upload), deliberately a different object from
    /// `shared_ref(sha, epoch)`.
    pub fn shared_ref_at(&self, sha256: &str, epoch: Epoch, id: CheckpointId) -> String {
        format!("{}/{SHARED_DIR}/{sha256}-e{epoch}-c{id}", self.job)
    }

    /// The absolute object path of a reference (as stored in metadata; checked when the
    /// metadata was loaded).
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

    /// `<root>/<job>/chk-<id>/e<epoch>`: what the writer of `epoch` wrote for checkpoint `id`
    /// besides `_metadata` (all an abort of that attempt deletes).
    pub fn attempt_dir(&self, id: CheckpointId, epoch: Epoch) -> Path {
        self.checkpoint_dir(id).join(format!("e{epoch}").as_str())
    }

    /// `<root>/<job>/chk-<id>/_metadata`.
    pub fn metadata(&self, id: CheckpointId) -> Path {
        self.checkpoint_dir(id).join(METADATA_FILE)
    }

    /// `<job>/chk-<id>/e<epoch>/slot-<i>/<name>.zst` relative to the root.
    pub fn private_ref(&self, id: CheckpointId, epoch: Epoch, slot: u32, name: &str) -> String {
        format!(
            "{}/chk-{id}/e{epoch}/slot-{slot}/{name}{PRIVATE_SUFFIX}",
            self.job
        )
    }

    /// `<root>/<job>/_writers`.
    pub fn writers_dir(&self) -> Path {
        self.job_dir().join(WRITERS_DIR)
    }

    /// `<root>/<job>/_writers/epoch-<020>`.
    pub fn writer(&self, epoch: Epoch) -> Path {
        self.writers_dir()
            .join(format!("epoch-{epoch:020}").as_str())
    }

    /// Classifies an object path under this job.
    pub fn classify(&self, path: &Path) -> ObjectKind {
        let job_dir = self.job_dir();
        let Some(parts) = path.prefix_match(&job_dir) else {
            return ObjectKind::Other;
        };
        let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
        match parts.as_slice() {
            [dir, name] if dir == SHARED_DIR => match SharedName::parse(name) {
                Some(n) => ObjectKind::Shared { sha256: n.sha256 },
                None => ObjectKind::Other,
            },
            [dir, name] if dir == WRITERS_DIR => match parse_writer(name) {
                Some(e) => ObjectKind::Writer(e),
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
    let digits = name.strip_prefix("chk-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses `epoch-<digits>`.
pub fn parse_writer(name: &str) -> Option<Epoch> {
    let digits = name.strip_prefix("epoch-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
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
        assert_eq!(l.shared_ref(SHA, 3), format!("job-1/shared/{SHA}-e3"));
        assert_eq!(
            l.resolve(&l.shared_ref(SHA, 3)).as_ref(),
            format!("base/job-1/shared/{SHA}-e3")
        );
        assert_eq!(
            l.shared_ref_at(SHA, 3, 9),
            format!("job-1/shared/{SHA}-e3-c9")
        );
        assert_eq!(
            l.private_ref(7, 3, 2, "MANIFEST-000005"),
            "job-1/chk-7/e3/slot-2/MANIFEST-000005.zst"
        );
        assert_eq!(l.attempt_dir(7, 3).as_ref(), "base/job-1/chk-7/e3");
        assert_eq!(
            l.writer(2).as_ref(),
            "base/job-1/_writers/epoch-00000000000000000002"
        );
    }

    #[test]
    fn classify_objects() {
        let l = JobLayout::new(Path::from("base"), "job-1");
        for name in [
            SHA.to_string(),
            format!("{SHA}-c12"),
            format!("{SHA}-e1"),
            format!("{SHA}-e1-c12"),
        ] {
            assert_eq!(
                l.classify(&Path::from(format!("base/job-1/shared/{name}"))),
                ObjectKind::Shared { sha256: SHA.into() },
                "{name}"
            );
        }
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-12/_metadata")),
            ObjectKind::Metadata(12)
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-12/slot-0/CURRENT.zst")),
            ObjectKind::Private(12)
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-12/e2/slot-0/CURRENT.zst")),
            ObjectKind::Private(12)
        );
        assert_eq!(
            l.classify(&Path::from(
                "base/job-1/_writers/epoch-00000000000000000002"
            )),
            ObjectKind::Writer(2)
        );
        assert_eq!(
            l.classify(&Path::from("base/job-1/shared/not-a-sha")),
            ObjectKind::Other
        );
        for bad in [
            format!("{SHA}-c"),
            format!("{SHA}-cx"),
            format!("{SHA}-d1"),
            format!("{SHA}-c1-e1"),
            format!("{SHA}-e"),
            format!("{SHA}x"),
        ] {
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
        assert_eq!(
            l.classify(&Path::from("base/job-1/chk-+1/_metadata")),
            ObjectKind::Other
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "", ".", "..", "../x", "/abs", "a/b", "a\\b", "a\0b", "x y", "\u{e9}", "a:b",
        ] {
            assert!(check_file_name("test", bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(256);
        assert!(check_file_name("test", &long).is_err());
        for good in [
            "000012.sst",
            "MANIFEST-000005",
            "CURRENT",
            "heap.snapshot",
            ".hidden",
        ] {
            check_file_name("test", good).unwrap();
        }
        for bad in ["", "_writers", ".x", "a/b", "a b", &"j".repeat(129)] {
            assert!(check_job_name(bad).is_err(), "{bad:?}");
        }
        check_job_name("job-20261205T060000Z-1a2b").unwrap();
        let e = local_path(
            std::path::Path::new("/slot"),
            "shared file",
            "../etc/passwd",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shared file") && e.contains("../etc/passwd"),
            "{e}"
        );
    }

    #[test]
    fn object_refs_are_checked_component_by_component() {
        let reference = format!("job-1/shared/{SHA}-e2");
        let r = ObjectRef::parse(&reference).unwrap();
        assert_eq!(r.job, "job-1");
        assert_eq!(r.shared().unwrap().epoch, Some(2));
        let r = ObjectRef::parse("job-1/chk-4/e2/slot-0/CURRENT.zst").unwrap();
        assert_eq!(r.checkpoint(), Some(4));
        for bad in [
            "job-1",
            "job-1/",
            "/job-1/shared/x",
            "job-1/../job-2/shared/x",
            "job-1/shared/./x",
            "job-1//x",
            "_writers/x",
        ] {
            assert!(ObjectRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
