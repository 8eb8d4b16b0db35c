//! One run of a job on one timely worker: restore (or start empty), find the committer's upload
//! target, open the worker's slot, and hand the job what it builds its dataflow from.
//!
//! A run is one attempt of the job: the supervisor starts every process of a run with the same
//! run number and a new Cairn job name (a new checkpoint writer, so a restart never waits for
//! the dead writer's lease), restoring the latest committed checkpoint of the earlier runs.
//!
//! Steps, in every worker:
//! 1. Read the restored checkpoint (if any) and its [`EPOCH_PROPERTY`]: the run starts at the
//!    next epoch, with ids after the restored one ([`CheckpointPlan`]).
//! 2. Worker 0 settles the sink files earlier runs left ([`crate::sink::recover`]), opens the
//!    job's [`Checkpointer`] (taking its writer lease) and coordinator, and broadcasts the
//!    coordinator's [`UploadTarget`] (it names the writer epoch every object carries) through a
//!    first small dataflow; every worker waits for it, so no worker stages output before the
//!    recovery is done.
//! 3. Every worker opens [`SlotUploader`] on that target and its slot `index` of `peers`:
//!    restored from the checkpoint (its key groups, from whichever old slots held them: a
//!    rescale when the worker count changed) with its share of the operator state.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use cairn::{
    CairnConfig, CheckpointCoordinator, CheckpointLocation, Checkpointer, KeyGroupRange,
    OperatorState, RestoredCheckpoint, Slot, SlotUploader, UploadTarget,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::committer::EPOCH_PROPERTY;
use crate::error::{HostError, Result};
use crate::plan::CheckpointPlan;
use crate::sink::{self, SinkDir};
use crate::upload::UploadWorker;

/// What every process of a run is told.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// State and checkpoint configuration; `state.working_dir` is the root of every worker's
    /// own working directory, `checkpoint.dir` the checkpoint storage URL.
    pub cfg: CairnConfig,
    /// The Cairn job name of this run (new for every run).
    pub job: String,
    /// The run number (grows by one per restart).
    pub attempt: u32,
    /// The checkpoint to restore (`<dir>/<job>/chk-<id>`), or `None` for a new job.
    pub restore_from: Option<String>,
    /// The sink's directory.
    pub sink_dir: PathBuf,
    /// Checkpoint every this many epochs.
    pub checkpoint_every: u64,
    /// The last epoch of this run.
    pub last_epoch: u64,
    /// Where the committer logs its commits (JSON lines).
    pub progress: Option<PathBuf>,
}

/// What a worker builds its part of the job from.
pub struct WorkerRun {
    /// The worker index (= slot index).
    pub index: u32,
    /// The workers of the run (= slots).
    pub peers: u32,
    /// The worker's slot.
    pub slot: Slot,
    /// The slot's upload thread.
    pub uploads: Rc<UploadWorker>,
    /// The epoch of the restored checkpoint.
    pub restored_epoch: Option<u64>,
    /// The run's checkpoint plan.
    pub plan: CheckpointPlan,
    /// The coordinator (worker 0).
    pub coordinator: Option<CheckpointCoordinator>,
    /// The sink's directory.
    pub sink: SinkDir,
}

/// The epoch a restored checkpoint was taken at (its [`EPOCH_PROPERTY`]).
pub fn restored_epoch(restored: &RestoredCheckpoint) -> Result<u64> {
    let v = restored
        .metadata
        .properties
        .get(EPOCH_PROPERTY)
        .ok_or_else(|| {
            HostError::InvalidArgument(format!(
                "checkpoint {} of job {} has no {EPOCH_PROPERTY} property: not a checkpoint of this host",
                restored.metadata.checkpoint_id, restored.metadata.job
            ))
        })?;
    v.parse().map_err(|_| {
        HostError::Protocol(format!(
            "checkpoint {}: {EPOCH_PROPERTY} = {v:?} is not an epoch",
            restored.metadata.checkpoint_id
        ))
    })
}

/// Steps 1-3 of the module doc on `worker`.
pub fn open_worker(worker: &mut Worker, spec: &RunSpec) -> Result<WorkerRun> {
    let (index, peers) = (worker.index() as u32, worker.peers() as u32);
    let cfg = &spec.cfg;
    let max_p = cfg.state.max_parallelism.unwrap_or(128);
    let location = spec
        .restore_from
        .as_deref()
        .map(CheckpointLocation::parse)
        .transpose()?;
    let restored = location
        .as_ref()
        .map(|l| RestoredCheckpoint::load(&cfg.checkpoint, l))
        .transpose()?;
    let restored_epoch = restored.as_ref().map(restored_epoch).transpose()?;
    let first_id = restored
        .as_ref()
        .map_or(1, |r| r.metadata.checkpoint_id + 1);
    let start_epoch = restored_epoch.map_or(0, |e| e + 1);
    let plan = CheckpointPlan::new(
        spec.checkpoint_every,
        start_epoch,
        spec.last_epoch,
        first_id,
    )?;
    let sink = SinkDir::create(&spec.sink_dir)?;

    let mut coordinator = None;
    let mut target_json = None;
    if index == 0 {
        sink::recover(&sink, spec.attempt, restored_epoch)?;
        let mut checkpointer = Checkpointer::open(&cfg.checkpoint, &spec.job, max_p)?;
        if let Some(l) = &location {
            let r = checkpointer.resume_from(l)?;
            if Some(r.metadata.checkpoint_id) != restored.as_ref().map(|r| r.metadata.checkpoint_id)
            {
                return Err(HostError::Protocol(format!(
                    "the committer resumed checkpoint {}, the workers read another",
                    r.metadata.checkpoint_id
                )));
            }
        }
        let c = CheckpointCoordinator::new(checkpointer, peers)?;
        target_json = Some(
            serde_json::to_string(&c.upload_target())
                .map_err(|e| HostError::Protocol(e.to_string()))?,
        );
        coordinator = Some(c);
    }
    let target: UploadTarget = serde_json::from_str(&broadcast_from_0(worker, target_json))
        .map_err(|e| HostError::Protocol(format!("the committer's upload target: {e}")))?;

    let mut wcfg = cfg.clone();
    wcfg.state.working_dir = cfg
        .state
        .working_dir
        .join(format!("a{}-w{index}", spec.attempt));
    let mut uploader = SlotUploader::open(&cfg.checkpoint, target, index)?;
    let builder = Slot::builder(&wcfg).slot(index, peers);
    let slot = match &restored {
        Some(r) => {
            let range = KeyGroupRange::for_slot(max_p, peers, index)
                .map_err(|e| HostError::InvalidArgument(e.to_string()))?;
            let files = uploader.restore(
                &cfg.checkpoint,
                r,
                range,
                &wcfg.state.working_dir.join("restore"),
            )?;
            let ops: OperatorState = uploader.operator_state(
                r,
                index,
                peers,
                &wcfg.state.working_dir.join("operator-state"),
            )?;
            builder.restore(files).operator_state(ops).open()?
        }
        None => builder.open()?,
    };
    let uploads = Rc::new(UploadWorker::start(
        uploader,
        format!("cairn-upload-w{index}"),
    )?);
    Ok(WorkerRun {
        index,
        peers,
        slot,
        uploads,
        restored_epoch,
        plan,
        coordinator,
        sink,
    })
}

/// Sends `value` (given on worker 0) to every worker through a one-epoch dataflow and returns
/// it on each.
fn broadcast_from_0(worker: &mut Worker, value: Option<String>) -> String {
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<String>>> = InputHandle::new();
    let probe = ProbeHandle::new();
    let got = Rc::new(RefCell::new(None::<String>));
    let sink = got.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        input
            .to_stream(scope)
            .broadcast()
            .inspect(move |v: &String| *sink.borrow_mut() = Some(v.clone()))
            .probe_with(&probe);
    });
    if let Some(v) = value {
        input.send(v);
    }
    input.advance_to(1);
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(std::time::Duration::from_millis(10)));
    }
    got.borrow_mut().take().unwrap_or_default()
}
