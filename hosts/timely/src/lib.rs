//! Cairn as the state layer of [timely-dataflow](https://crates.io/crates/timely): the same
//! program on N processes x W worker threads, with keyed state, timers, exactly-once output,
//! failover and rescale, on Cairn's public host API only.
//!
//! timely routes records between workers and tracks progress with frontiers, but keeps no
//! state and has no fault tolerance (a process crash fails every peer). This crate adds both:
//! - **One slot per worker** ([`run`]): worker `i` of `n` opens Cairn slot `i` of `n`, which
//!   owns a contiguous range of key groups; keyed edges exchange records to the owner of their
//!   key group ([`keyed`]).
//! - **Checkpoints on epochs** ([`plan`], [`keyed`], [`committer`]): timestamps are epochs;
//!   when a keyed operator's input frontier passes a checkpoint epoch it snapshots its slot
//!   (later epochs wait, staged), uploads asynchronously ([`upload`]) and sends its
//!   [`cairn::SlotAck`] to the committer on worker 0, which commits once every slot's ack is in.
//! - **Exactly-once output** ([`sink`]): rows are staged per epoch and published when the
//!   checkpoint covering them commits.
//! - **Replayable sources** ([`source`]): split positions are operator state, redistributed on a
//!   rescale.
//! - **Failover and rescale** ([`supervisor`]): one supervisor per job starts the processes,
//!   and when one dies stops the others and restarts every process from the latest committed
//!   checkpoint, with the same or another shape (processes x workers).
//!
//! [`wordcount`] is the job the tests, the torture script and the benchmarks run. The
//! `cairn-timely` binary runs it (`run`), supervises it (`supervise`) and checks its output
//! (`verify`).
#![deny(missing_docs)]

pub mod bench;
pub mod committer;
pub mod error;
pub mod keyed;
pub mod messages;
pub mod plan;
pub mod run;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod upload;
pub mod wordcount;

pub use error::{HostError, Result};
