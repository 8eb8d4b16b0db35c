//! Operator (non-keyed) state in checkpoints: list state redistributed by even split or union,
//! broadcast state copied, on both backends, through the coordinator, restored into the same
//! and into other slot counts; a damaged operator-state object is refused, never read.

use std::path::Path;

use cairn::{
    BackendKind, CairnConfig, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
    CheckpointLocation, Checkpointer, ErrorKind, KeyGroupRange, OperatorState, Redistribution,
    Slot, SlotReply, new_job_name,
};

mod support;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MAX_P: u32 = 128;

fn config(backend: BackendKind, root: &Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.checkpoint.interval = None;
    cfg
}

/// A job of 2 slots whose sources own partitions {0,1,2} and {3,4} (offsets = partition * 100),
/// with a union list and a broadcast rule set; one checkpoint; its job URL.
fn checkpoint_two_slots(cfg: &CairnConfig) -> R<String> {
    let mut slots: Vec<Slot> = (0..2)
        .map(|i| Slot::builder(cfg).slot(i, 2).open())
        .collect::<Result<_, _>>()?;
    for (slot, partitions) in slots.iter_mut().zip([vec![0u64, 1, 2], vec![3, 4]]) {
        let offsets: Vec<(u64, u64)> = partitions.iter().map(|p| (*p, p * 100)).collect();
        let watermark = i64::from(slot.index().0) * 10;
        let ops = slot.operator_state_mut();
        ops.set_list_of("source-offsets", Redistribution::EvenSplit, &offsets)?;
        ops.set_list_of("watermarks", Redistribution::Union, &[watermark])?;
        let ops = slot.operator_state_mut();
        ops.broadcast_mut("rules")
            .insert(b"max".to_vec(), b"7".to_vec());
    }
    let cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let url = cp.job_url();
    let mut c = CheckpointCoordinator::new(cp, 2)?;
    c.request(CheckpointKind::Forced);
    let t = c.poll()?.ok_or("requested")?;
    for slot in &mut slots {
        let snap = slot.snapshot_for_checkpoint(t.id)?;
        c.acknowledge(t.id, slot.index().0, SlotReply::Snapshot(snap))?;
    }
    if !matches!(
        c.take_events().as_slice(),
        [CheckpointEvent::Completed { .. }]
    ) {
        return Err("the checkpoint did not complete".into());
    }
    Ok(url)
}

/// The operator state of every slot of `parallelism` restored from `url`.
fn restore(cfg: &CairnConfig, url: &str, parallelism: u32, root: &Path) -> R<Vec<OperatorState>> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    (0..parallelism)
        .map(|i| Ok(cp.operator_state_for_slot(&restored, i, parallelism, &root.join("tmp"))?))
        .collect()
}

#[test]
fn operator_state_is_checkpointed_and_redistributed() -> R {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let dir = tempfile::tempdir()?;
        let cfg = config(backend, dir.path());
        let url = checkpoint_two_slots(&cfg)?;
        for (parallelism, want) in [
            (2u32, vec![vec![0u64, 1, 2], vec![3, 4]]),
            (3, vec![vec![0, 1], vec![2, 3], vec![4]]),
            (1, vec![vec![0, 1, 2, 3, 4]]),
        ] {
            let states = restore(&cfg, &url, parallelism, dir.path())?;
            let got: Vec<Vec<u64>> = states
                .iter()
                .map(|s| {
                    Ok(s.list_of::<(u64, u64)>("source-offsets")?
                        .into_iter()
                        .map(|(p, o)| {
                            assert_eq!(o, p * 100);
                            p
                        })
                        .collect())
                })
                .collect::<R<_>>()?;
            assert_eq!(got, want, "{backend:?} into {parallelism}");
            for s in &states {
                assert_eq!(s.list_of::<i64>("watermarks")?, vec![0, 10], "union");
                let rules = s.broadcast("rules").ok_or("broadcast state restored")?;
                assert_eq!(rules.get(b"max".as_slice()), Some(&b"7".to_vec()));
            }
        }
        // A restored slot opens with its part and checkpoints it again.
        let states = restore(&cfg, &url, 2, dir.path())?;
        let mut cfg2 = cfg.clone();
        cfg2.state.working_dir = dir.path().join("work-2");
        let mut cp = Checkpointer::open(&cfg2.checkpoint, &new_job_name(), MAX_P)?;
        let restored = cp.resume_from(&CheckpointLocation::parse(&url)?)?;
        let (files, _) = cp.download_slot_files(
            &restored,
            KeyGroupRange::for_slot(MAX_P, 2, 1)?,
            &cfg2.state.working_dir.join("restore"),
        )?;
        let slot = Slot::builder(&cfg2)
            .slot(1, 2)
            .restore(files)
            .operator_state(states[1].clone())
            .open()?;
        assert_eq!(
            slot.operator_state()
                .list_of::<(u64, u64)>("source-offsets")?,
            vec![(3, 300), (4, 400)]
        );
    }
    Ok(())
}

#[test]
fn a_damaged_operator_state_object_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, dir.path());
    let url = checkpoint_two_slots(&cfg)?;
    let damaged = walk(&dir.path().join("checkpoints"))?
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("operator.state.zst"))
        .collect::<Vec<_>>();
    assert_eq!(damaged.len(), 2, "one operator-state object per slot");
    let mut bytes = std::fs::read(&damaged[0])?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged[0], bytes)?;
    let e = restore(&cfg, &url, 2, dir.path())
        .err()
        .ok_or("damage went unnoticed")?;
    let kind = e
        .downcast_ref::<cairn::EngineError>()
        .map(cairn::EngineError::kind);
    assert_eq!(kind, Some(ErrorKind::Corrupt), "{e}");
    Ok(())
}

fn walk(dir: &Path) -> R<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}
