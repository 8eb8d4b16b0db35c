//! The errors every crate shares: [`ConfigError`] for settings, [`ErrorKind`] for what a caller
//! does about any error (each crate's error enum sorts its variants into these kinds).

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is wrong: fix the config and start again.
    InvalidConfig,
    /// A call's argument is wrong (oversized value, unknown state, wrong state kind): fix the call.
    /// Nothing was written.
    InvalidArgument,
    /// Stored state is damaged (checksum mismatch, undecodable bytes): restore from a checkpoint.
    Corrupt,
    /// A resource is unavailable (directory not writable, locked by another slot, I/O error):
    /// retry later or fix the environment.
    Unavailable,
    /// Another writer owns the job, or took it over (checkpoint storage): stop this one, or
    /// wait for the other's lease to expire.
    Conflict,
    /// A bug or an unexpected RocksDB status; report it.
    Internal,
    /// The slot refuses every call: a failure left its state unknown (a write-back of the state
    /// cache to RocksDB failed: the engine's `EngineError::Poisoned`). Retrying does not help and no
    /// checkpoint can be taken from it: drop the slot and restore it from its last checkpoint.
    Closed,
}

/// A configuration value Cairn cannot run with.
///
/// This is the configuration error type of all of Cairn: the memory budget, the engine and the
/// checkpoint settings report through it. Every variant names the setting as it is
/// spelled in the configuration file (`memory.write-buffer-ratio`), so the user knows what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value lies outside the range its setting allows.
    #[error("{field} = {value} is out of range: allowed {allowed}")]
    OutOfRange {
        /// The setting, e.g. `memory.write-buffer-ratio`.
        field: String,
        /// The rejected value, as the user wrote it (or as it was derived).
        value: String,
        /// The allowed range, e.g. `(0, 1)` or `>= 16 MiB`.
        allowed: String,
    },
    /// A value is in range on its own but breaks a rule (often together with another setting).
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// The setting to change.
        field: String,
        /// Which rule is broken and why it exists.
        reason: String,
    },
    /// The configuration text could not be read (syntax error, wrong type, unknown key).
    #[error("cannot parse configuration: {message}")]
    Parse {
        /// The parser's message, which names the offending key and position.
        message: String,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::OutOfRange`] from anything displayable.
    pub fn out_of_range(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Self::OutOfRange {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// Builds an [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The setting this error is about, if it names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::OutOfRange { field, .. } | Self::Invalid { field, .. } => Some(field),
            Self::Parse { .. } => None,
        }
    }
}
