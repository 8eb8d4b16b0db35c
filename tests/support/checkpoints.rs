//! Checkpoint helpers shared by the checkpoint tests: one slot whose state is a counter per key,
//! a checkpoint of it, a restore into a new job, and an independent look at what storage holds.

use std::error::Error;
use std::path::Path;

use cairn::engine::checkpoint::{CheckpointLocation, CheckpointReport, Checkpointer, new_job_name};
use cairn::{BackendKind, CairnConfig, KeyGroupRange, Slot, SlotBuilder, VoidNamespace};
use cairn_snapshot::{CheckpointStore, StorageOptions, StorageRoot};

/// A test's result.
pub type TestResult = Result<(), Box<dyn Error>>;

/// The configuration tests start from: `backend`, the working directory `<root>/work`,
/// checkpoints in `<root>/checkpoints` (file://), restores fetching in the mode under test
/// ([`super::restore_fetch`]); everything else default.
pub fn config(backend: BackendKind, root: &Path) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.checkpoint.restore_fetch = super::restore_fetch();
    cfg.state.backend = backend;
    cfg.state.working_dir = root.join("work");
    cfg.checkpoint.dir = format!("file://{}", root.join("checkpoints").display());
    cfg
}

/// Sets the counter (`op/count`) of every key in `0..keys` to `value(key)`.
pub fn write_counters(slot: &mut Slot, keys: u64, value: impl Fn(u64) -> u64) -> TestResult {
    let count = slot.value_state::<u64>("op", "count")?;
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        count.update(slot, &scope, &value(k))?;
    }
    Ok(())
}

/// The counters of keys `0..keys` (`None` where a key has none).
pub fn read_counters(slot: &mut Slot, keys: u64) -> Result<Vec<Option<u64>>, Box<dyn Error>> {
    let count = slot.value_state::<u64>("op", "count")?;
    let mut out = Vec::new();
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        out.push(count.get(slot, &scope)?);
    }
    Ok(out)
}

/// Takes one checkpoint of `slot` (the synchronous and the asynchronous phase); its id.
pub fn checkpoint(cp: &mut Checkpointer, slot: &mut Slot) -> cairn::engine::Result<u64> {
    let id = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(id)?;
    cp.complete(id, vec![sync]).map(|_| id)
}

/// `n` slots of `cfg`'s job, slot `i` working in `<work>/slot-<i>`, each builder adjusted by
/// `tune` before it opens (a clock; `|b| b` for none).
pub fn open_slots(
    cfg: &CairnConfig,
    work: &Path,
    n: u32,
    tune: impl Fn(SlotBuilder<'_>) -> SlotBuilder<'_>,
) -> Result<Vec<Slot>, Box<dyn Error>> {
    (0..n)
        .map(|i| {
            let mut c = cfg.clone();
            c.state.working_dir = work.join(format!("slot-{i}"));
            Ok(tune(Slot::builder(&c).slot(i, n)).open()?)
        })
        .collect()
}

/// One checkpoint of every slot through `cp` (each slot's synchronous snapshot, then the
/// uploads and the commit); its report.
pub fn checkpoint_slots(
    cp: &mut Checkpointer,
    slots: &mut [Slot],
) -> cairn::engine::Result<CheckpointReport> {
    let id = cp.trigger_checkpoint();
    let syncs = slots
        .iter_mut()
        .map(|s| s.snapshot_for_checkpoint(id))
        .collect::<Result<Vec<_>, _>>()?;
    cp.complete(id, syncs)
}

/// A new job restoring `url` (a checkpoint or a savepoint) into `m` slots of `cfg` (its max
/// parallelism, 128 if unset), slot `i` working in `<work>/slot-<i>` with its share of the
/// operator state, each builder adjusted by `tune` before it opens (a clock; `|b| b` for
/// none); the job's checkpointer and the slots.
pub fn restore_slots(
    cfg: &CairnConfig,
    url: &str,
    work: &Path,
    m: u32,
    tune: impl Fn(SlotBuilder<'_>) -> SlotBuilder<'_>,
) -> Result<(Checkpointer, Vec<Slot>), Box<dyn Error>> {
    let max_p = cfg.state.max_parallelism.unwrap_or(128);
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), max_p)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    let mut slots = Vec::new();
    for i in 0..m {
        let mut c = cfg.clone();
        c.state.working_dir = work.join(format!("slot-{i}"));
        let (files, _) = cp.download_slot_files(
            &restored,
            KeyGroupRange::for_slot(max_p, m, i)?,
            &c.state.working_dir.join("restore"),
        )?;
        let ops = cp.operator_state_for_slot(&restored, i, m, &work.join(format!("ops-{i}")))?;
        let builder = Slot::builder(&c)
            .slot(i, m)
            .restore(files)
            .operator_state(ops);
        slots.push(tune(builder).open()?);
    }
    Ok((cp, slots))
}

/// [`restore`] with the slot's builder adjusted by `tune` before it opens (a clock, a hook).
pub fn restore_with(
    cfg: &CairnConfig,
    url: &str,
    tune: impl FnOnce(SlotBuilder<'_>) -> SlotBuilder<'_>,
) -> Result<(Checkpointer, Slot), Box<dyn Error>> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    let (files, _) = cp.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg.state.working_dir.join("restore"),
    )?;
    let slot = tune(Slot::builder(cfg).restore(files)).open()?;
    Ok((cp, slot))
}

/// Opens a new job that restores `url` (`<dir>/<job>[/chk-<id>]`) into slot 0 of 1, working in
/// `cfg`'s working directory; the coordinator (mode and storage from `cfg`) and the slot.
pub fn restore(cfg: &CairnConfig, url: &str) -> Result<(Checkpointer, Slot), Box<dyn Error>> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(url)?)?;
    let (files, _) = cp.download_slot_files(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg.state.working_dir.join("restore"),
    )?;
    let slot = Slot::builder(cfg).restore(files).open()?;
    Ok((cp, slot))
}

/// The committed checkpoint ids of `job` in storage `dir`, read by a reader of its own after
/// it re-hashed every file of every one of them (a problem fails the test).
pub fn committed_verified(dir: &str, job: &str) -> Result<Vec<u64>, Box<dyn Error>> {
    let storage = StorageRoot::from_url(dir, &StorageOptions::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    let store = rt.block_on(CheckpointStore::open_read_only(storage, job))?;
    let ids = rt.block_on(store.committed_ids())?;
    let problems = rt.block_on(store.verify(&ids, true))?;
    assert!(problems.is_empty(), "{job}: {problems:?}");
    Ok(ids)
}

/// Restores `job_url` (`<dir>/<job>[/chk-<id>]`) into `slots` slots working below `work` and
/// reads the counter (`op/count`) of every key in `0..keys` from the slot that owns it.
pub fn read_counters_from(
    cfg: &CairnConfig,
    work: &std::path::Path,
    job_url: &str,
    slots: u32,
    keys: u64,
) -> Result<Vec<Option<u64>>, Box<dyn Error>> {
    let max_p = cfg.state.max_parallelism.unwrap_or(128);
    let (_cp, mut opened) = restore_slots(cfg, job_url, work, slots, |b| b)?;
    let mut out = Vec::new();
    for k in 0..keys {
        let slot = &mut opened[cairn::slot_for_key(&k, max_p, slots)? as usize];
        let count = slot.value_state::<u64>("op", "count")?;
        let scope = slot.scope(&k, &VoidNamespace)?;
        out.push(count.get(slot, &scope)?);
    }
    Ok(out)
}
