//! Errors of the engine: one internal enum whose messages name the object and the values, sorted
//! into a small public [`ErrorKind`] that tells callers what to do.

pub use cairn_base::{ConfigError, ErrorKind};

/// Engine errors. Each message names what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configuration file could not be read or parsed (unknown keys included).
    #[error("cannot read config {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: String,
        /// Parser message, naming the key and line.
        reason: String,
    },
    /// A value or list element is larger than `state.max-value-size`.
    #[error("value of {size} bytes for state '{state}' exceeds state.max-value-size = {max} bytes")]
    ValueTooLarge {
        /// The state the write was for.
        state: String,
        /// Size of the rejected value.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A state name is registered twice with different kinds, or is used with the wrong kind.
    #[error("state '{state}' is a {registered} state, not a {requested} state")]
    StateKindMismatch {
        /// Full state name (`operator/state`).
        state: String,
        /// The kind it was registered with.
        registered: &'static str,
        /// The kind the caller asked for.
        requested: &'static str,
    },
    /// A state is registered with a time-to-live when it was stored without one, or the
    /// reverse (Flink: an incompatible state serializer). Its stored bytes would be read with
    /// the wrong layout, so the registration is refused: register it as it was stored, or
    /// move its data into a new state under another name.
    #[error(
        "state '{state}' {} but is registered {}: TTL can't be switched on or off for a stored state (register it as it was, or use a new state name)",
        if *.stored_with_ttl { "holds TTL timestamps" } else { "was stored without TTL" },
        if *.requested_ttl { "with TTL" } else { "without TTL" }
    )]
    StateTtlMismatch {
        /// Full state name (`operator/state`).
        state: String,
        /// Whether the stored state (files, or this run's first registration) has TTL.
        stored_with_ttl: bool,
        /// Whether the registration asked for TTL.
        requested_ttl: bool,
    },
    /// A state id that this slot never handed out.
    #[error("unknown state id {0}")]
    UnknownState(u32),
    /// Any other invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The key's key group is not in this slot's range.
    #[error("key group {key_group} is outside this slot's range {range}")]
    KeyGroupOutOfRange {
        /// The key's key group.
        key_group: u16,
        /// The slot's range.
        range: crate::keygroup::KeyGroupRange,
    },
    /// The working directory cannot be created or written.
    #[error("working directory {path} is not writable: {source}")]
    WorkingDirNotWritable {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another slot (or process) has the working directory open.
    #[error("working directory {path} is locked by another slot or process: {detail}")]
    WorkingDirLocked {
        /// The directory.
        path: String,
        /// RocksDB's message.
        detail: String,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt state in '{state}': {reason}")]
    Corrupt {
        /// The state.
        state: String,
        /// What failed to decode.
        reason: String,
    },
    /// A typed value could not be encoded.
    #[error("cannot encode value for state '{state}': {reason}")]
    Encode {
        /// The state.
        state: String,
        /// Codec message.
        reason: String,
    },
    /// RocksDB returned an error during `op`.
    #[error("rocksdb {op} failed: {source}")]
    RocksDb {
        /// What Cairn was doing.
        op: &'static str,
        /// RocksDB's status.
        source: rocksdb::Error,
    },
    /// A lazily restored slot could not fetch a file RocksDB needed (storage unavailable after
    /// retries, the object missing, or its size or sha256 not the recorded one): the access
    /// failed instead of answering without the data. Restore the slot again.
    #[error("{op} failed: lazy restore could not fetch {detail}")]
    LazyFetch {
        /// What Cairn was doing.
        op: &'static str,
        /// The file and the cause.
        detail: String,
        /// `Corrupt` for a size or checksum mismatch, else `Unavailable`.
        kind: ErrorKind,
    },
    /// Checkpoint storage failed (missing or corrupt file, storage unavailable, ...).
    #[error(transparent)]
    Checkpoint(#[from] cairn_snapshot::SnapshotError),
    /// A checkpoint was aborted (failure or timeout) and the tolerance is used up.
    #[error("checkpoint {id} failed: {reason}")]
    CheckpointFailed {
        /// The checkpoint.
        id: u64,
        /// Why.
        reason: String,
    },
    /// A timer service failed (see `cairn_timers::TimerError`).
    #[error(transparent)]
    Timers(#[from] cairn_timers::TimerError),
    /// An I/O error outside RocksDB.
    #[error("{op}: {source}")]
    Io {
        /// What Cairn was doing.
        op: String,
        /// The error.
        source: std::io::Error,
    },
    /// A write-back of the state cache into RocksDB failed, so RocksDB may lack writes the slot
    /// acknowledged: the backend refuses every later call (see [`ErrorKind::Closed`]).
    #[error(
        "slot refuses all calls since a state cache write-back failed ({reason}): its state may lack acknowledged writes; restore the slot from its last checkpoint"
    )]
    Poisoned {
        /// The original failure.
        reason: String,
    },
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// An out-of-range configuration value naming the field and the allowed range.
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        EngineError::Config(ConfigError::OutOfRange {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        })
    }

    /// Wraps a RocksDB error with the operation that failed.
    pub fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Self {
        move |source| {
            let msg = source.to_string();
            match msg.find(crate::backend::rocks::lazy::FETCH_FAILED) {
                // The lazy-restore file system's status: "... fetching <path> failed:
                // <kind>|<file>: <cause>".
                Some(at) => {
                    let rest = &msg[at..];
                    let detail = rest.split_once(" failed: ").map_or(rest, |(_, d)| d);
                    Self::from_fetch_failure(op, detail)
                }
                None => EngineError::RocksDb { op, source },
            }
        }
    }

    /// The error of a failed lazy fetch recorded as `<kind>|<file>: <cause>`.
    pub(crate) fn from_fetch_failure(op: &'static str, recorded: &str) -> Self {
        let (kind, detail) = match recorded.split_once('|') {
            Some(("Corrupt", d)) => (ErrorKind::Corrupt, d),
            Some((_, d)) => (ErrorKind::Unavailable, d),
            None => (ErrorKind::Unavailable, recorded),
        };
        EngineError::LazyFetch {
            op,
            detail: detail.to_owned(),
            kind,
        }
    }

    /// The kind of the error: what the caller must do.
    pub fn kind(&self) -> ErrorKind {
        use rocksdb::ErrorKind as R;
        match self {
            EngineError::Config(_) | EngineError::ConfigFile { .. } => ErrorKind::InvalidConfig,
            EngineError::ValueTooLarge { .. }
            | EngineError::StateKindMismatch { .. }
            | EngineError::StateTtlMismatch { .. }
            | EngineError::UnknownState(_)
            | EngineError::InvalidArgument(_)
            | EngineError::KeyGroupOutOfRange { .. }
            | EngineError::Encode { .. } => ErrorKind::InvalidArgument,
            EngineError::Corrupt { .. } => ErrorKind::Corrupt,
            EngineError::Poisoned { .. } => ErrorKind::Closed,
            EngineError::WorkingDirNotWritable { .. }
            | EngineError::WorkingDirLocked { .. }
            | EngineError::CheckpointFailed { .. }
            | EngineError::Io { .. } => ErrorKind::Unavailable,
            EngineError::Checkpoint(e) => e.kind(),
            EngineError::LazyFetch { kind, .. } => *kind,
            EngineError::Timers(e) => match e {
                cairn_timers::TimerError::KeyGroupOutOfRange { .. } => ErrorKind::InvalidArgument,
                cairn_timers::TimerError::Corrupt { .. } => ErrorKind::Corrupt,
                cairn_timers::TimerError::Io { .. } => ErrorKind::Unavailable,
                cairn_timers::TimerError::RocksDb { source, .. } => rocks_kind(source),
                _ => ErrorKind::Internal,
            },
            EngineError::RocksDb { source, .. } => match source.kind() {
                R::Corruption => ErrorKind::Corrupt,
                R::IOError | R::Busy | R::TimedOut | R::TryAgain | R::Incomplete => {
                    ErrorKind::Unavailable
                }
                R::InvalidArgument | R::NotSupported => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// The kind of a RocksDB status (timer services' errors).
fn rocks_kind(e: &rocksdb::Error) -> ErrorKind {
    use rocksdb::ErrorKind as R;
    match e.kind() {
        R::Corruption => ErrorKind::Corrupt,
        R::IOError | R::Busy | R::TimedOut | R::TryAgain | R::Incomplete => ErrorKind::Unavailable,
        R::InvalidArgument | R::NotSupported => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}
