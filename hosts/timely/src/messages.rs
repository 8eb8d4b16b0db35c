//! What flows between the host's operators besides user records.

use serde::{Deserialize, Serialize};

/// The keyed operator's output: user rows, and the slot's checkpoint acks (both at the epoch
/// they belong to).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Keyed<O> {
    /// A row for the sink.
    Row(O),
    /// The slot uploaded its part of checkpoint epoch `epoch`.
    Ack(AckMsg),
}

/// One slot's [`cairn::SlotAck`] for a checkpoint epoch. The ack travels as JSON: it is Cairn's
/// serde format, and timely's own wire encoding need not support every serde feature it uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AckMsg {
    /// The checkpoint epoch.
    pub epoch: u64,
    /// The slot (= the timely worker index).
    pub slot: u32,
    /// The ack, `serde_json`.
    pub ack_json: String,
}

/// What the committer (worker 0) receives, at the epoch it is about.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Control {
    /// A slot's ack, forwarded by its worker's sink once the sink staged every row up to the
    /// epoch.
    SlotAck(AckMsg),
    /// Worker `worker`'s sink staged (durably) every row of epochs `<= epoch`.
    SinkStaged {
        /// The checkpoint epoch.
        epoch: u64,
        /// The worker.
        worker: u32,
    },
}

/// Broadcast by the committer: checkpoint `id` (epoch `epoch`) committed, so every row of
/// epochs `<= epoch` may become visible.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Committed {
    /// The checkpoint epoch.
    pub epoch: u64,
    /// The checkpoint id.
    pub id: u64,
}
