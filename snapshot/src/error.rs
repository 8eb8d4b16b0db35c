//! Errors of checkpoint storage. Messages name the object and the values.

use cairn_base::ErrorKind;

/// Checkpoint-storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file a checkpoint references does not exist.
    #[error("checkpoint file {path} is missing")]
    MissingFile {
        /// The object path.
        path: String,
    },
    /// A file's content does not hash to what the metadata says.
    #[error("checksum mismatch in {path}: expected sha256 {expected}, actual {actual}")]
    ChecksumMismatch {
        /// The object path.
        path: String,
        /// Hash recorded in metadata.
        expected: String,
        /// Hash of the bytes read.
        actual: String,
    },
    /// A file's size differs from the metadata.
    #[error("size mismatch in {path}: expected {expected} bytes, actual {actual}")]
    SizeMismatch {
        /// The object path.
        path: String,
        /// Size recorded in metadata.
        expected: u64,
        /// Size read.
        actual: u64,
    },
    /// Metadata that can't be parsed.
    #[error("bad checkpoint metadata {path}: {reason}")]
    BadMetadata {
        /// The object path.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// Metadata of a version this build can't read.
    #[error(
        "checkpoint metadata {path} has version {actual}; this build reads versions 1 to {supported}"
    )]
    UnsupportedVersion {
        /// The object path.
        path: String,
        /// The newest version this build reads.
        supported: u32,
        /// The version found.
        actual: u32,
    },
    /// No checkpoint with that id (or none at all) under a job directory.
    #[error("no checkpoint {what} under {location}")]
    NoCheckpoint {
        /// Which checkpoint was asked for.
        what: String,
        /// Where it was looked for.
        location: String,
    },
    /// A checkpoint id that is already committed.
    #[error("checkpoint {0} already exists")]
    AlreadyExists(u64),
    /// The in-memory store's size cap would be exceeded.
    #[error(
        "in-memory checkpoint storage is full: {used} + {needed} bytes exceeds the cap of {cap} bytes (raise it or use file:// or s3://)"
    )]
    StorageFull {
        /// Bytes stored.
        used: u64,
        /// Bytes the put needed.
        needed: u64,
        /// The cap.
        cap: u64,
    },
    /// A checkpoint URL that can't be used.
    #[error("bad checkpoint location {url}: {reason}")]
    BadLocation {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("storage {op} of {path} failed: {source}")]
    Storage {
        /// The operation.
        op: &'static str,
        /// The object path.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The local path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A fail point fired (tests only: see [`crate::fault::FailPoints`]).
    #[error("injected failure at {point} ({path})")]
    Injected {
        /// The protocol step, e.g. `upload-shared-sst`.
        point: &'static str,
        /// The object the step was about to touch.
        path: String,
    },
    /// A storage option outside its allowed range.
    #[error("invalid storage option {field} = {value}: allowed {allowed}")]
    InvalidOption {
        /// The option, as written in the config file (`checkpoint.storage.<field>`).
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed values.
        allowed: &'static str,
    },
    /// A name read from storage (or given for a job) that could name something it must not: a
    /// path outside a slot directory, another object, a different directory on another store.
    #[error("bad {what} {name:?}: must be {rule}")]
    BadName {
        /// What the name is for (e.g. `shared file of slot 0`, `job name`).
        what: String,
        /// The name, escaped.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Metadata that parses but breaks a structural rule (id, key-group partition, object
    /// outside the job, counts).
    #[error("invalid checkpoint metadata {path}: {reason}")]
    InvalidMetadata {
        /// The metadata object.
        path: String,
        /// The rule broken, with the values.
        reason: String,
    },
    /// A stored object larger than Cairn reads (e.g. a `_metadata` above its size cap).
    #[error("{path} is larger than {limit} bytes ({what}); refusing to read it")]
    TooLarge {
        /// The object path.
        path: String,
        /// What the limit is.
        what: &'static str,
        /// The limit, bytes.
        limit: u64,
    },
    /// Another writer holds the job's lease and renewed it recently: two writers on one job
    /// would delete each other's files.
    #[error(
        "job {job} is held by writer epoch {epoch} ({holder}), last renewed {age_ms} ms ago; stop it or wait {wait_ms} ms for its lease to expire"
    )]
    JobLocked {
        /// The job directory.
        job: String,
        /// The holder's epoch.
        epoch: u64,
        /// Who holds it (host, process, start time).
        holder: String,
        /// How long ago the lease was renewed, ms.
        age_ms: u64,
        /// How long until it expires if not renewed, ms.
        wait_ms: u64,
    },
    /// This writer lost the job to a writer with a higher epoch: it must stop writing.
    #[error(
        "writer epoch {epoch} of job {job} was fenced by epoch {by}; it can no longer commit or delete"
    )]
    Fenced {
        /// The job directory.
        job: String,
        /// This writer's epoch.
        epoch: u64,
        /// The newer writer's epoch.
        by: u64,
    },
    /// A directory that is not a Cairn job (no `_metadata` ever written, no writer lease):
    /// garbage collection refuses to touch it.
    #[error(
        "{location} is not a Cairn checkpoint job (no chk-*/_metadata and no _writers/); refusing to touch it"
    )]
    NotAJob {
        /// The directory.
        location: String,
    },
    /// Another writer committed this checkpoint id first (a create-only put found a different
    /// `_metadata`): this attempt is not the commit.
    #[error("checkpoint {id} of job {job} was committed by another writer")]
    CommitConflict {
        /// The job.
        job: String,
        /// The checkpoint id.
        id: u64,
    },
    /// A commit whose outcome storage could not tell (the put failed and reading `_metadata`
    /// back failed too): nothing of the checkpoint is deleted until a later check knows.
    #[error(
        "checkpoint {id} of job {job}: commit outcome unknown ({reason}); its files are kept until it is known"
    )]
    CommitInDoubt {
        /// The job.
        job: String,
        /// The checkpoint id.
        id: u64,
        /// The errors seen.
        reason: String,
    },
    /// A slot's checkpoint handle the committer can't accept (uploaded by another process): a
    /// slot missing or twice, key groups not covering the job, an object missing or of the
    /// wrong size, an object no retained checkpoint holds any more. Nothing was committed.
    #[error("checkpoint {id}: slot {slot}'s handle refused: {reason}")]
    BadSlotHandle {
        /// The checkpoint id.
        id: u64,
        /// The slot whose handle is wrong.
        slot: u32,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A protocol invariant does not hold (a bug); nothing was committed.
    #[error("checkpoint invariant violated: {0}")]
    Invariant(String),
}

/// Result with [`SnapshotError`].
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

impl SnapshotError {
    /// Wraps an object-store error; `NotFound` becomes [`SnapshotError::MissingFile`].
    pub fn storage(
        op: &'static str,
        path: impl std::fmt::Display,
    ) -> impl FnOnce(object_store::Error) -> Self {
        move |source| match source {
            object_store::Error::NotFound { .. } => SnapshotError::MissingFile {
                path: path.to_string(),
            },
            source => SnapshotError::Storage {
                op,
                path: path.to_string(),
                source,
            },
        }
    }

    /// Wraps a local I/O error.
    pub fn io<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| SnapshotError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether retrying the same request may succeed: a storage error that is not a definite
    /// answer (missing, exists, precondition, permission, bad path, unsupported). Everything
    /// `object_store` reports as `Generic` is here: network errors, 5xx after its own retries,
    /// a stream cut mid-body. Local I/O errors and checksum mismatches are not transient.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SnapshotError::Storage {
                source: object_store::Error::Generic { .. } | object_store::Error::JoinError { .. },
                ..
            }
        )
    }

    /// What the caller should do.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::MissingFile { .. }
            | SnapshotError::ChecksumMismatch { .. }
            | SnapshotError::SizeMismatch { .. }
            | SnapshotError::BadMetadata { .. }
            | SnapshotError::UnsupportedVersion { .. }
            | SnapshotError::BadName { .. }
            | SnapshotError::InvalidMetadata { .. }
            | SnapshotError::TooLarge { .. }
            | SnapshotError::BadSlotHandle { .. } => ErrorKind::Corrupt,
            SnapshotError::JobLocked { .. }
            | SnapshotError::Fenced { .. }
            | SnapshotError::CommitConflict { .. } => ErrorKind::Conflict,
            SnapshotError::Storage { .. }
            | SnapshotError::CommitInDoubt { .. }
            | SnapshotError::Io { .. }
            | SnapshotError::Injected { .. } => ErrorKind::Unavailable,
            SnapshotError::NoCheckpoint { .. }
            | SnapshotError::AlreadyExists(_)
            | SnapshotError::StorageFull { .. }
            | SnapshotError::BadLocation { .. }
            | SnapshotError::InvalidOption { .. }
            | SnapshotError::NotAJob { .. } => ErrorKind::InvalidArgument,
            SnapshotError::Invariant(_) => ErrorKind::Internal,
        }
    }
}
