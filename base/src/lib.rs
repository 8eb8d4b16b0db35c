//! What every Cairn crate shares, and nothing else: key groups (the unit keyed state is
//! partitioned, checkpointed and rescaled in) with their byte prefix, the configuration error,
//! and the error kinds that tell a caller what to do.
//!
//! One definition each: the engine, the timer services, checkpoint metadata and the memory
//! budget all use these types, so a key group or a range means the same thing everywhere.
#![deny(missing_docs)]

pub mod error;
pub mod keygroup;
pub mod prefix;

pub use error::{ConfigError, ErrorKind};
pub use keygroup::{KeyGroup, KeyGroupRange};
