//! A replayable, split-partitioned source whose read positions are Cairn operator state.
//!
//! The input is `splits` partitions (as a Kafka topic's); each split is a deterministic
//! sequence of records addressed by offset, read `per_epoch` records per epoch: epoch `t`
//! holds offsets `t * per_epoch .. (t + 1) * per_epoch` of every split. Each worker reads the
//! splits it owns. Its positions at the end of every epoch are handed to the keyed operator
//! ([`SourcePositions`]), which stores those of a checkpoint epoch in its slot's operator state
//! (list `source.splits`, even-split redistribution: Flink's source-split state) just before
//! the snapshot. A restore with another worker count gives each worker a contiguous part of
//! all positions ([`cairn::OperatorState::redistribute`]), and the source resumes from them.
//!
//! The source runs at most `max_ahead` epochs ahead of the job's committed frontier (a probe),
//! so a slow checkpoint slows the source instead of queueing epochs without bound.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use cairn::{OperatorState, Redistribution};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::error::{HostError, Result};

/// The operator-state list holding the source's split positions.
pub const SPLITS_STATE: &str = "source.splits";

/// Epochs a source emits per activation at most (a burst): the keyed operators downstream then
/// hold records of several epochs at once, as with a real source's batches.
pub const BURST: u32 = 4;

/// Where a worker's reader of one split is: the next offset it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPosition {
    /// The split.
    pub split: u32,
    /// The next offset to read.
    pub offset: u64,
}

/// The positions of a new job's worker `index` of `peers`: a contiguous share of the splits at
/// offset 0 (the same cut a restore's even split makes).
pub fn initial_positions(splits: u32, index: u32, peers: u32) -> Vec<SplitPosition> {
    let (s, i, p) = (splits as u64, index as u64, peers as u64);
    (s * i / p..s * (i + 1) / p)
        .map(|split| SplitPosition {
            split: split as u32,
            offset: 0,
        })
        .collect()
}

/// Stores `positions` as list [`SPLITS_STATE`] of `state`.
pub fn store_positions(state: &mut OperatorState, positions: &[SplitPosition]) -> Result<()> {
    let entries = positions
        .iter()
        .map(|p| serde_json::to_vec(p).map_err(|e| HostError::Protocol(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    state.set_list(SPLITS_STATE, Redistribution::EvenSplit, entries);
    Ok(())
}

/// The positions in list [`SPLITS_STATE`] of a restored `state` (checked: stored input).
pub fn restored_positions(state: &OperatorState) -> Result<Vec<SplitPosition>> {
    state
        .list(SPLITS_STATE)
        .iter()
        .map(|e| {
            serde_json::from_slice(e).map_err(|e| {
                HostError::Protocol(format!("restored operator state {SPLITS_STATE}: {e}"))
            })
        })
        .collect()
}

/// The positions each epoch ended at, from the source to its worker's keyed operator.
#[derive(Debug, Default)]
pub struct SourcePositions {
    by_epoch: BTreeMap<u64, Vec<SplitPosition>>,
}

impl SourcePositions {
    /// The source finished epoch `epoch` at `positions`.
    pub fn record(&mut self, epoch: u64, positions: Vec<SplitPosition>) {
        self.by_epoch.insert(epoch, positions);
    }

    /// The positions at the end of `epoch` (forgetting those of earlier epochs).
    pub fn take(&mut self, epoch: u64) -> Option<Vec<SplitPosition>> {
        let p = self.by_epoch.remove(&epoch);
        self.by_epoch.retain(|e, _| *e > epoch);
        p
    }
}

/// What one worker's source reads.
pub struct SourceSpec<G> {
    /// The splits this worker reads and where it starts (all at `start_epoch * per_epoch`).
    pub positions: Vec<SplitPosition>,
    /// Records per split and epoch.
    pub per_epoch: u64,
    /// The first epoch to emit.
    pub start_epoch: u64,
    /// The last epoch to emit.
    pub last_epoch: u64,
    /// How many epochs past the committed frontier the source may run.
    pub max_ahead: u64,
    /// One epoch per this interval on average (a live source's pace, in bursts of up to
    /// [`BURST`] epochs; timely's scheduler times it); `None`: as fast as the committed
    /// frontier allows.
    pub pace: Option<Duration>,
    /// The record at `(split, offset)`.
    pub generate: G,
}

/// The source operator of one worker. See the module doc. Fails when a restored position is
/// not at the start epoch's boundary (the checkpoint and its positions disagree).
pub fn epoch_source<'scope, D, G>(
    scope: Scope<'scope, u64>,
    spec: SourceSpec<G>,
    shared: Rc<RefCell<SourcePositions>>,
    committed: ProbeHandle<u64>,
) -> Result<StreamVec<'scope, u64, D>>
where
    D: timely::ExchangeData,
    G: Fn(u32, u64) -> D + 'static,
{
    let SourceSpec {
        mut positions,
        per_epoch,
        start_epoch,
        last_epoch,
        max_ahead,
        pace,
        generate,
    } = spec;
    let expected = start_epoch * per_epoch;
    if let Some(p) = positions.iter().find(|p| p.offset != expected) {
        return Err(HostError::Protocol(format!(
            "source split {} restored at offset {}, but epoch {start_epoch} starts at {expected}",
            p.split, p.offset
        )));
    }
    let activator_scope = scope;
    Ok(source(scope, "CairnSource", move |cap, info| {
        let activator = activator_scope.activator_for(info.address.clone());
        let mut cap = Some(cap.delayed(&start_epoch));
        let mut next = start_epoch;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            // A few epochs per activation at most, so the worker gets to its other operators.
            let mut emitted = 0u32;
            for _ in 0..BURST {
                if next > last_epoch || committed.less_than(&next.saturating_sub(max_ahead)) {
                    break;
                }
                {
                    let mut session = output.session(&*c);
                    for p in positions.iter_mut() {
                        for o in p.offset..p.offset + per_epoch {
                            session.give(generate(p.split, o));
                        }
                        p.offset += per_epoch;
                    }
                }
                shared.borrow_mut().record(next, positions.clone());
                emitted += 1;
                next += 1;
                if next <= last_epoch {
                    c.downgrade(&next);
                }
            }
            if next > last_epoch {
                cap = None;
            } else if let Some(p) = pace {
                activator.activate_after(p * emitted.max(1));
            } else if committed.less_than(&next.saturating_sub(max_ahead)) {
                activator.activate_after(Duration::from_millis(1));
            } else {
                activator.activate();
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initial shares cover every split once, contiguously, for any worker count.
    #[test]
    fn initial_positions_partition_the_splits() {
        for peers in 1..=9 {
            let all: Vec<u32> = (0..peers)
                .flat_map(|i| initial_positions(8, i, peers))
                .map(|p| p.split)
                .collect();
            assert_eq!(all, (0..8).collect::<Vec<_>>(), "{peers} workers");
        }
    }

    /// Positions survive operator state and its even split into another worker count.
    #[test]
    fn positions_round_trip_through_operator_state() -> Result<()> {
        let mut parts = Vec::new();
        for i in 0..4 {
            let mut s = OperatorState::new();
            let mut p = initial_positions(8, i, 4);
            p.iter_mut().for_each(|p| p.offset = 30);
            store_positions(&mut s, &p)?;
            parts.push(s);
        }
        let mut all = Vec::new();
        for i in 0..3 {
            let s = OperatorState::redistribute(&parts, i, 3)?;
            all.extend(restored_positions(&s)?);
        }
        assert_eq!(all.len(), 8);
        assert!(all.iter().all(|p| p.offset == 30));
        Ok(())
    }
}
