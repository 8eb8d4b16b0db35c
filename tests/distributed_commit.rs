//! The checkpoint split along process lines: each slot snapshots and uploads in its own OS
//! process and sends a serialized [`SlotAck`]; the job's committer, in a third process (this
//! test), checks and commits. The second round's slot processes restore from the first
//! checkpoint and upload only what is new.
//!
//! The slot processes are this test executable run again with `CAIRN_SLOT_SPEC` set (the
//! `slot_process` test, ignored otherwise).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::engine::checkpoint::RestoredCheckpoint;
use cairn::{
    AbortReason, BackendKind, CairnConfig, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
    CheckpointLocation, Checkpointer, KeyGroupRange, Slot, SlotAck, SlotReply, SlotUploader,
    UploadTarget, VoidNamespace, new_job_name, slot_for_key,
};
use serde::{Deserialize, Serialize};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MAX_P: u32 = 128;
const SLOTS: u32 = 2;
const KEYS: u64 = 2_000;
const SPEC: &str = "CAIRN_SLOT_SPEC";

/// What a slot process does: open slot `slot` of `SLOTS` (restored from `restore_from` if
/// set), set every counter it owns to `key * 1000 + value`, snapshot for checkpoint `id`,
/// upload to `target`, write the ack as JSON to `ack_out`.
#[derive(Serialize, Deserialize)]
struct SlotSpec {
    checkpoint_dir: String,
    working_dir: PathBuf,
    target: UploadTarget,
    slot: u32,
    id: u64,
    value: u64,
    restore_from: Option<String>,
    ack_out: PathBuf,
}

fn config(checkpoint_dir: &str, working_dir: &Path) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.state.working_dir = working_dir.to_path_buf();
    cfg.checkpoint.dir = checkpoint_dir.to_string();
    cfg.checkpoint.interval = None;
    cfg.checkpoint.restore_fetch = support::restore_fetch();
    cfg
}

/// The slot process (runs only when spawned with `CAIRN_SLOT_SPEC`).
#[test]
#[ignore = "run as a child process by three_processes_checkpoint_one_job"]
fn slot_process() -> R {
    let Ok(spec) = std::env::var(SPEC) else {
        return Ok(());
    };
    let spec: SlotSpec = serde_json::from_slice(&std::fs::read(spec)?)?;
    let cfg = config(&spec.checkpoint_dir, &spec.working_dir);
    let mut uploader = SlotUploader::open(&cfg.checkpoint, spec.target.clone(), spec.slot)?;
    let range = KeyGroupRange::for_slot(MAX_P, SLOTS, spec.slot)?;
    let builder = Slot::builder(&cfg).slot(spec.slot, SLOTS);
    let mut slot = match &spec.restore_from {
        Some(url) => {
            let restored =
                RestoredCheckpoint::load(&cfg.checkpoint, &CheckpointLocation::parse(url)?)?;
            let files = uploader.restore(
                &cfg.checkpoint,
                &restored,
                range,
                &spec.working_dir.join("restore"),
            )?;
            builder.restore(files).open()?
        }
        None => builder.open()?,
    };
    let count = slot.value_state::<u64>("op", "count")?;
    for k in (0..KEYS).filter(|k| slot_for_key(k, MAX_P, SLOTS).ok() == Some(spec.slot)) {
        let scope = slot.scope(&k, &VoidNamespace)?;
        count.update(&mut slot, &scope, &(k * 1000 + spec.value))?;
    }
    let ack = uploader.upload(slot.snapshot_for_checkpoint(spec.id)?)?;
    std::fs::write(&spec.ack_out, serde_json::to_vec(&ack)?)?;
    Ok(())
}

/// Runs the slot processes of one checkpoint at once; their acks.
fn run_slots(root: &Path, specs: Vec<SlotSpec>) -> R<Vec<SlotAck>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for spec in &specs {
        let path = root.join(format!("spec-{}-{}.json", spec.id, spec.slot));
        std::fs::write(&path, serde_json::to_vec(spec)?)?;
        let child = Command::new(&exe)
            .args([
                "slot_process",
                "--exact",
                "--include-ignored",
                "--nocapture",
            ])
            .env(SPEC, &path)
            .spawn()?;
        children.push(child);
    }
    for mut c in children {
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("slot process failed: {status}").into());
        }
    }
    specs
        .iter()
        .map(|s| Ok(serde_json::from_slice(&std::fs::read(&s.ack_out)?)?))
        .collect()
}

/// Restores the latest checkpoint of `job` into `SLOTS` slots in this process and reads every
/// counter from its owner.
fn read_back(cfg: &CairnConfig, root: &Path, job: &str) -> R<Vec<Option<u64>>> {
    let url = format!("{}/{job}", cfg.checkpoint.dir);
    let work = root.join(format!("read-back-{}", new_job_name()));
    support::checkpoints::read_counters_from(cfg, &work, &url, SLOTS, KEYS)
}

#[test]
fn three_processes_checkpoint_one_job() -> R {
    if std::env::var(SPEC).is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let checkpoint_dir = format!("file://{}", root.join("cp").display());
    let cfg = config(&checkpoint_dir, &root.join("committer"));
    let job = new_job_name();
    let mut coordinator =
        CheckpointCoordinator::new(Checkpointer::open(&cfg.checkpoint, &job, MAX_P)?, SLOTS)?;
    let target = coordinator.upload_target();
    let mut reports = Vec::new();
    let mut restore_from: Option<String> = None;
    for (round, value) in [(1u32, 1u64), (2, 2)] {
        coordinator.request(CheckpointKind::Forced);
        let t = coordinator
            .poll()?
            .ok_or("a requested checkpoint triggers")?;
        let specs = (0..SLOTS)
            .map(|slot| SlotSpec {
                checkpoint_dir: checkpoint_dir.clone(),
                working_dir: root.join(format!("slot-{slot}-round-{round}")),
                target: target.clone(),
                slot,
                id: t.id,
                value,
                restore_from: restore_from.clone(),
                ack_out: root.join(format!("ack-{}-{slot}.json", t.id)),
            })
            .collect();
        for ack in run_slots(root, specs)? {
            let slot = ack.handle.slot;
            coordinator.acknowledge(t.id, slot, SlotReply::Uploaded(ack))?;
        }
        match coordinator.take_events().as_slice() {
            [CheckpointEvent::Completed { id, report, .. }] if *id == t.id => {
                reports.push(report.clone())
            }
            other => return Err(format!("checkpoint {}: {other:?}", t.id).into()),
        }
        restore_from = Some(format!("{checkpoint_dir}/{job}/chk-{}", t.id));
        let expected: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + value)).collect();
        assert_eq!(read_back(&cfg, root, &job)?, expected, "round {round}");
    }
    // The second round's slots restored the first checkpoint and reused its files.
    assert!(reports[0].files_uploaded > 0);
    assert!(
        reports[1].files_reused > 0 && reports[1].incremental_bytes < reports[1].full_bytes,
        "round 2 reuses round 1's files: {:?}",
        reports[1]
    );
    // A checkpoint with one slot's ack missing never commits; cancel aborts it and keeps the
    // committed one.
    coordinator.request(CheckpointKind::Forced);
    let t = coordinator.poll()?.ok_or("triggers")?;
    let spec = SlotSpec {
        checkpoint_dir: checkpoint_dir.clone(),
        working_dir: root.join("slot-0-round-3"),
        target: target.clone(),
        slot: 0,
        id: t.id,
        value: 3,
        restore_from: restore_from.clone(),
        ack_out: root.join(format!("ack-{}-0.json", t.id)),
    };
    for ack in run_slots(root, vec![spec])? {
        coordinator.acknowledge(t.id, 0, SlotReply::Uploaded(ack))?;
    }
    assert!(
        coordinator.take_events().is_empty(),
        "slot 1 never answered"
    );
    let (_, events) = coordinator.cancel()?;
    assert!(matches!(
        events.as_slice(),
        [CheckpointEvent::Aborted {
            reason: AbortReason::Cancelled,
            ..
        }]
    ));
    let expected: Vec<Option<u64>> = (0..KEYS).map(|k| Some(k * 1000 + 2)).collect();
    assert_eq!(read_back(&cfg, root, &job)?, expected);
    Ok(())
}
