//! The committer: the job's [`CheckpointCoordinator`] on worker 0, fed by an exchange to 0.
//!
//! Every worker's sink forwards its slot's [`cairn::SlotAck`] and its own
//! [`Control::SinkStaged`] at the checkpoint epoch. When the committer's input frontier passes a
//! checkpoint epoch `e`, every message of `e` is in: it triggers the coordinator's checkpoint
//! (whose id must be the plan's), records the epoch as a checkpoint property
//! ([`EPOCH_PROPERTY`]: where a restore resumes), acknowledges every slot's ack (the
//! coordinator checks them and commits), and broadcasts [`Committed`] to every worker's sink.
//! A missing ack or an aborted checkpoint fails the job over.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use cairn::snapshot::{Clock, SystemClock};
use cairn::{CheckpointCoordinator, CheckpointEvent, CheckpointKind, SlotAck, SlotReply};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::error::{HostError, Result};
use crate::messages::{Committed, Control};
use crate::plan::CheckpointPlan;

/// The checkpoint property holding the epoch a checkpoint was taken at.
pub const EPOCH_PROPERTY: &str = "timely.epoch";

/// One committed checkpoint, as the committer logs it (a JSON line per checkpoint in the
/// progress file: what the benchmarks and the supervisor read).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The run.
    pub attempt: u32,
    /// The checkpoint epoch.
    pub epoch: u64,
    /// The checkpoint id.
    pub id: u64,
    /// When it committed, ms since the Unix epoch (the system clock).
    pub at_ms: u64,
    /// The longest synchronous phase of any slot, ms.
    pub sync_ms_max: f64,
    /// The longest upload of any slot, ms.
    pub upload_ms_max: f64,
    /// The commit itself (checks, metadata write), ms.
    pub commit_ms: f64,
    /// Bytes uploaded by all slots for this checkpoint.
    pub incremental_bytes: u64,
    /// The checkpoint's full size.
    pub full_bytes: u64,
}

/// The committer's side of one run: the coordinator (worker 0 only), where to log commits.
pub struct CommitterSetup {
    /// The job's coordinator: `Some` on worker 0.
    pub coordinator: Option<CheckpointCoordinator>,
    /// The run's plan.
    pub plan: CheckpointPlan,
    /// The number of slots (workers).
    pub peers: u32,
    /// The run number (logged).
    pub attempt: u32,
    /// Where to append a [`CommitRecord`] per commit.
    pub progress: Option<PathBuf>,
}

/// The committer operator. See the module doc.
pub fn committer<'scope>(
    control: StreamVec<'scope, u64, Control>,
    setup: CommitterSetup,
) -> StreamVec<'scope, u64, Committed> {
    let CommitterSetup {
        mut coordinator,
        plan,
        peers,
        attempt,
        progress,
    } = setup;
    control.unary_frontier(
        Exchange::new(|_: &Control| 0),
        "CairnCommitter",
        move |_cap, _info| {
            let mut acks: BTreeMap<u64, BTreeMap<u32, String>> = BTreeMap::new();
            let mut staged: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
            let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|c, data| {
                    let Some(&t) = c.least() else { return };
                    held.entry(t).or_insert_with(|| c.delayed(&t, 0));
                    for m in data.drain(..) {
                        match m {
                            Control::SlotAck(a) => {
                                acks.entry(a.epoch).or_default().insert(a.slot, a.ack_json);
                            }
                            Control::SinkStaged { epoch, worker } => {
                                staged.entry(epoch).or_default().insert(worker);
                            }
                        }
                    }
                });
                while let Some((&e, _)) = held.first_key_value() {
                    if frontier.less_equal(&e) {
                        break;
                    }
                    let Some((e, cap)) = held.pop_first() else {
                        break;
                    };
                    let Some(coordinator) = coordinator.as_mut() else {
                        panic!("committer: messages for epoch {e} reached a worker other than 0");
                    };
                    let acks = acks.remove(&e).unwrap_or_default();
                    let staged = staged.remove(&e).unwrap_or_default();
                    match commit(coordinator, &plan, peers, e, acks, staged) {
                        Ok((committed, record)) => {
                            output.session(&cap).give(committed);
                            if let Some(p) = &progress {
                                log_commit(p, &CommitRecord { attempt, ..record });
                            }
                        }
                        Err(err) => panic!("committer, checkpoint epoch {e}: {err}"),
                    }
                }
            }
        },
    )
}

/// Commits checkpoint epoch `e` from every slot's ack.
fn commit(
    coordinator: &mut CheckpointCoordinator,
    plan: &CheckpointPlan,
    peers: u32,
    e: u64,
    acks: BTreeMap<u32, String>,
    staged: BTreeSet<u32>,
) -> Result<(Committed, CommitRecord)> {
    let expected = plan.id_for(e).ok_or_else(|| {
        HostError::Protocol(format!("acks for epoch {e}, which is no checkpoint"))
    })?;
    if acks.len() != peers as usize || staged.len() != peers as usize {
        return Err(HostError::Protocol(format!(
            "{} of {peers} slot acks and {} of {peers} sinks staged when the frontier passed the epoch",
            acks.len(),
            staged.len()
        )));
    }
    let t = std::time::Instant::now();
    coordinator.request(CheckpointKind::Forced);
    let triggered = coordinator
        .poll()?
        .ok_or_else(|| HostError::Protocol("a requested checkpoint did not trigger".into()))?;
    if triggered.id != expected {
        return Err(HostError::Protocol(format!(
            "the coordinator gave id {}, the plan says {expected}",
            triggered.id
        )));
    }
    coordinator.set_property(triggered.id, EPOCH_PROPERTY, &e.to_string())?;
    let (mut sync_ms_max, mut upload_ms_max) = (0.0f64, 0.0f64);
    for (slot, json) in acks {
        let ack: SlotAck = serde_json::from_str(&json)
            .map_err(|err| HostError::Protocol(format!("slot {slot}'s ack: {err}")))?;
        sync_ms_max = sync_ms_max.max(ack.sync_ms);
        upload_ms_max = upload_ms_max.max(ack.upload_ms);
        coordinator.acknowledge(triggered.id, slot, SlotReply::Uploaded(ack))?;
    }
    let events = coordinator.take_events();
    match events.as_slice() {
        [CheckpointEvent::Completed { id, report, .. }] if *id == triggered.id => Ok((
            Committed { epoch: e, id: *id },
            CommitRecord {
                attempt: 0,
                epoch: e,
                id: *id,
                at_ms: SystemClock.now_ms(),
                sync_ms_max,
                upload_ms_max,
                commit_ms: t.elapsed().as_secs_f64() * 1000.0,
                incremental_bytes: report.incremental_bytes,
                full_bytes: report.full_bytes,
            },
        )),
        [] => Err(HostError::Protocol(format!(
            "checkpoint {} did not complete with every slot's ack",
            triggered.id
        ))),
        other => Err(HostError::Protocol(format!(
            "checkpoint {}: {other:?}",
            triggered.id
        ))),
    }
}

/// Appends `record` as a JSON line (a lost log line loses a measurement, not a commit).
fn log_commit(path: &std::path::Path, record: &CommitRecord) {
    let line = match serde_json::to_string(record) {
        Ok(l) => l,
        Err(e) => return eprintln!("cairn-timely: progress record: {e}"),
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("cairn-timely: progress {}: {e}", path.display());
    }
}
