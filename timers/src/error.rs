//! Errors of the timer services; each message names the object and the values.

use crate::KeyGroup;

/// Timer service errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// The timer's key group is not one of the service's.
    #[error("timer key group {key_group} is outside this service's key groups [{start}, {end}]")]
    KeyGroupOutOfRange {
        /// The timer's key group.
        key_group: KeyGroup,
        /// First key group of the service.
        start: KeyGroup,
        /// Last key group of the service.
        end: KeyGroup,
    },
    /// The RocksDB column family of the timers does not exist.
    #[error("timer column family '{0}' does not exist in the slot's RocksDB")]
    MissingColumnFamily(String),
    /// RocksDB failed.
    #[error("rocksdb {op} on timers failed: {source}")]
    RocksDb {
        /// What the service was doing.
        op: &'static str,
        /// RocksDB's status.
        source: rocksdb::Error,
    },
    /// Stored timer bytes (a RocksDB key or a snapshot file) do not decode.
    #[error("corrupt timers in {what}: {reason}")]
    Corrupt {
        /// The column family or file.
        what: String,
        /// What failed to decode.
        reason: String,
    },
    /// A snapshot file could not be read or written.
    #[error("{op}: {source}")]
    Io {
        /// What the service was doing.
        op: String,
        /// The error.
        source: std::io::Error,
    },
}

impl TimerError {
    pub(crate) fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Self {
        move |source| TimerError::RocksDb { op, source }
    }
}

/// Result with [`TimerError`].
pub type Result<T, E = TimerError> = std::result::Result<T, E>;
