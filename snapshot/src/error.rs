//! Errors of checkpoint storage. Messages name the object and the values.

/// What the caller should do about a snapshot error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotErrorKind {
    /// A stored checkpoint is damaged or incomplete: restore another checkpoint.
    Corrupt,
    /// Storage can't be reached or refused the operation: retry later.
    Unavailable,
    /// The request is wrong (bad URL, unknown checkpoint, storage full): fix it.
    InvalidArgument,
    /// A bug: an invariant of the protocol does not hold.
    Internal,
}

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
    pub fn kind(&self) -> SnapshotErrorKind {
        match self {
            SnapshotError::MissingFile { .. }
            | SnapshotError::ChecksumMismatch { .. }
            | SnapshotError::SizeMismatch { .. }
            | SnapshotError::BadMetadata { .. }
            | SnapshotError::UnsupportedVersion { .. } => SnapshotErrorKind::Corrupt,
            SnapshotError::Storage { .. }
            | SnapshotError::Io { .. }
            | SnapshotError::Injected { .. } => SnapshotErrorKind::Unavailable,
            SnapshotError::NoCheckpoint { .. }
            | SnapshotError::AlreadyExists(_)
            | SnapshotError::StorageFull { .. }
            | SnapshotError::BadLocation { .. }
            | SnapshotError::InvalidOption { .. } => SnapshotErrorKind::InvalidArgument,
            SnapshotError::Invariant(_) => SnapshotErrorKind::Internal,
        }
    }
}
