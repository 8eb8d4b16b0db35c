//! The host's errors: Cairn's, I/O naming the operation and path, and the host's own protocol
//! checks (a message the dataflow should never carry).

use cairn::EngineError;

/// What went wrong in the timely host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Cairn refused or failed (state, checkpoint, restore).
    #[error(transparent)]
    Cairn(#[from] EngineError),
    /// A file operation of the host (the sink's files, the supervisor's logs).
    #[error("{op}: {source}")]
    Io {
        /// What the host was doing, with the path.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A wrong argument or configuration (names the value and the rule).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host's checkpoint protocol saw something it never sends (a missing ack, an id that
    /// is not the plan's): the job fails over.
    #[error("protocol: {0}")]
    Protocol(String),
    /// timely-dataflow failed to start or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
}

/// The host's result.
pub type Result<T, E = HostError> = std::result::Result<T, E>;

/// An I/O error with its operation.
pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let op = op.into();
    move |source| HostError::Io { op, source }
}
