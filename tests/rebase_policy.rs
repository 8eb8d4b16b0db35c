//! The rebase policy (`checkpoint.rebase.*`) on real RocksDB with file storage: a full upload
//! every N checkpoints shares nothing and frees the old chain once subsumed; `max-file-age`
//! re-uploads old files (including files of version-1 metadata, whose age is unknown); space
//! amplification above the limit compacts the slot and cuts the referenced bytes. Every restore
//! is compared with a model of the state at the checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cairn::engine::checkpoint::{
    CheckpointLocation, CheckpointReport, Checkpointer, RebaseConfig, new_job_name,
};
use cairn::{BackendKind, CairnConfig, KeyGroupRange, Slot, VoidNamespace};

mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Model = BTreeMap<u64, u64>;

/// Every policy off except what `set` turns on.
fn rebase(set: impl FnOnce(&mut RebaseConfig)) -> RebaseConfig {
    let mut r = RebaseConfig::off();
    set(&mut r);
    r
}

fn config(root: &Path, rebase: RebaseConfig) -> CairnConfig {
    let mut cfg = support::checkpoints::config(BackendKind::RocksDb, root);
    cfg.checkpoint.rebase = rebase;
    cfg
}

/// Round `r` of churn over `keys` keys: updates every `update_every`-th key and deletes every
/// 13th (shifted by the round), mirrored in the model.
fn churn(slot: &mut Slot, model: &mut Model, keys: u64, r: u64, update_every: u64) -> TestResult {
    let v = slot.value_state::<u64>("op", "v")?;
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        if (k + r).is_multiple_of(13) && r > 0 {
            v.clear(slot, &scope)?;
            model.remove(&k);
        } else if (k + r).is_multiple_of(update_every) || r == 0 {
            let val = k * 1000 + r;
            v.update(slot, &scope, &val)?;
            model.insert(k, val);
        }
    }
    Ok(())
}

fn read_back(slot: &mut Slot, keys: u64) -> Result<Model, Box<dyn std::error::Error>> {
    let v = slot.value_state::<u64>("op", "v")?;
    let mut m = Model::new();
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        if let Some(x) = v.get(slot, &scope)? {
            m.insert(k, x);
        }
    }
    Ok(m)
}

fn checkpoint(
    cp: &mut Checkpointer,
    slot: &mut Slot,
) -> Result<CheckpointReport, Box<dyn std::error::Error>> {
    cp.compact_if_due(slot)?;
    let id = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(id)?;
    Ok(cp.complete(id, vec![sync])?)
}

/// Shared objects of checkpoint `id` (object -> uploaded_at_ms).
fn objects(
    cp: &Checkpointer,
    id: u64,
) -> Result<BTreeMap<String, u64>, Box<dyn std::error::Error>> {
    let meta = cp.block_on(cp.store().load(id))?;
    Ok(meta
        .shared_objects()
        .into_iter()
        .map(|f| (f.object.clone(), f.uploaded_at_ms))
        .collect())
}

/// Files under `<checkpoints>/<job>/shared/`, as `<job>/shared/<name>` (how metadata names them).
fn stored_shared(root: &Path, job: &str) -> BTreeSet<String> {
    std::fs::read_dir(root.join("checkpoints").join(job).join("shared"))
        .map(|rd| {
            rd.flatten()
                .map(|e| format!("{job}/shared/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// Restores `<job url>/chk-<id>` into a fresh working directory and returns its state.
fn restored_state(
    cfg: &CairnConfig,
    job_url: &str,
    id: u64,
    keys: u64,
    dir: &str,
) -> Result<Model, Box<dyn std::error::Error>> {
    let mut cfg = cfg.clone();
    cfg.state.working_dir = cfg.state.working_dir.with_file_name(dir);
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(&format!("{job_url}/chk-{id}"))?)?;
    std::fs::create_dir_all(&cfg.state.working_dir)?;
    let dest = cfg.state.working_dir.join("restore-slot-0");
    let (files, _) =
        cp.download_slot_files(&restored, KeyGroupRange::for_slot(128, 1, 0)?, &dest)?;
    let mut slot = Slot::builder(&cfg).restore(files).open()?;
    read_back(&mut slot, keys)
}

/// `every-n-checkpoints = 3`: checkpoints 4 and 7 upload everything as new `-c<id>` objects,
/// share no object with the checkpoint before, and once that one is subsumed the store holds
/// exactly the rebased checkpoint's objects.
#[test]
fn every_n_rebase_shares_nothing_and_frees_the_old_chain() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), rebase(|r| r.every_n_checkpoints = 3));
    let keys = 4000;
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let job = cp.job().to_string();
    let mut model = Model::new();
    let mut prev: BTreeMap<String, u64> = BTreeMap::new();
    let mut rebased = Vec::new();
    for r in 0..8u64 {
        churn(&mut slot, &mut model, keys, r, 10)?;
        let rep = checkpoint(&mut cp, &mut slot)?;
        let now = objects(&cp, rep.id)?;
        if rep.id == 4 || rep.id == 7 {
            rebased.push(rep.id);
            let why = rep.rebase.clone().unwrap_or_default();
            assert!(why.contains("every-n-checkpoints"), "{why}");
            assert_eq!(rep.files_reused, 0, "{rep:?}");
            assert!(rep.files_reuploaded > 0, "{rep:?}");
            let suffix = format!("-c{}", rep.id);
            assert!(now.keys().all(|o| o.ends_with(&suffix)), "{now:?}");
            assert!(
                now.keys().all(|o| !prev.contains_key(o)),
                "chk-{} shares objects with its predecessor",
                rep.id
            );
        } else {
            assert!(rep.rebase.is_none(), "{rep:?}");
            if rep.id > 1 {
                assert!(rep.files_reused > 0, "{rep:?}");
            }
        }
        // retained = 1: the predecessor was subsumed; the store holds exactly this checkpoint's
        // shared objects.
        assert_eq!(
            stored_shared(root.path(), &job),
            now.keys().cloned().collect::<BTreeSet<_>>(),
            "after chk-{}",
            rep.id
        );
        prev = now;
    }
    assert_eq!(rebased, vec![4, 7]);
    let gc = cp.gc(Duration::ZERO, false)?;
    assert!(gc.orphans.is_empty(), "{:?}", gc.orphans);
    let problems = cp.block_on(cp.store().verify(&[8], true))?;
    assert!(problems.is_empty(), "{problems:?}");
    // A rebased checkpoint restores like any other.
    let job_url = cp.job_url();
    drop(slot);
    drop(cp);
    let mut cfg7 = cfg.clone();
    cfg7.checkpoint.retained = 1;
    assert_eq!(
        restored_state(&cfg7, &job_url, 8, keys, "work-restored")?,
        model
    );
    Ok(())
}

/// `max-file-age`: a file older than the limit is uploaded again as a new object with a new
/// upload time; a young one is reused.
#[test]
fn max_file_age_reuploads_old_files_only() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(
        root.path(),
        rebase(|r| r.max_file_age = Some(Duration::from_secs(1))),
    );
    let keys = 3000;
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::new();
    churn(&mut slot, &mut model, keys, 0, 10)?;
    let first = checkpoint(&mut cp, &mut slot)?;
    let old = objects(&cp, first.id)?;
    // Young files: reused as they are.
    churn(&mut slot, &mut model, keys, 1, 10)?;
    let young = checkpoint(&mut cp, &mut slot)?;
    assert_eq!(young.files_reuploaded, 0, "{young:?}");
    assert!(young.rebase.is_none());
    let young_objects = objects(&cp, young.id)?;
    let kept: Vec<&String> = old
        .keys()
        .filter(|o| young_objects.contains_key(*o))
        .collect();
    assert!(!kept.is_empty(), "chk-2 should reuse chk-1's files");
    std::thread::sleep(Duration::from_millis(1100));
    churn(&mut slot, &mut model, keys, 2, 10)?;
    let aged = checkpoint(&mut cp, &mut slot)?;
    let why = aged.rebase.clone().unwrap_or_default();
    assert!(why.contains("max-file-age"), "{aged:?}");
    assert!(aged.files_reuploaded as usize >= kept.len(), "{aged:?}");
    let now = objects(&cp, aged.id)?;
    for o in kept {
        assert!(
            !now.contains_key(o),
            "{o} is older than 1s but still referenced"
        );
    }
    let limit = aged.completed_at_ms - 1000;
    assert!(
        now.values().all(|t| *t >= limit),
        "every referenced object is younger than the limit: {now:?}"
    );
    let job_url = cp.job_url();
    drop(slot);
    drop(cp);
    assert_eq!(
        restored_state(&cfg, &job_url, aged.id, keys, "work-restored")?,
        model
    );
    Ok(())
}

/// A checkpoint whose `_metadata` is version 1 (no upload times) still loads, restores, and
/// its files count as older than any `max-file-age`.
#[test]
fn version_1_metadata_reads_and_its_files_have_unknown_age() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), RebaseConfig::off());
    let keys = 2000;
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::new();
    churn(&mut slot, &mut model, keys, 0, 10)?;
    let rep = checkpoint(&mut cp, &mut slot)?;
    let job_url = cp.job_url();
    let meta_path = root
        .path()
        .join("checkpoints")
        .join(cp.job())
        .join(format!("chk-{}", rep.id))
        .join("_metadata");
    drop(slot);
    drop(cp);
    // Rewrite it as version 1 wrote it: no `uploaded_at_ms`.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path)?)?;
    doc["version"] = 1.into();
    for slot in doc["slots"].as_array_mut().ok_or("no slots")? {
        for f in slot["shared"].as_array_mut().ok_or("no shared")? {
            f.as_object_mut()
                .ok_or("not an object")?
                .remove("uploaded_at_ms");
        }
    }
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&doc)?)?;

    // Claim it into a job with a day-long max-file-age: its files have unknown age, so the
    // first checkpoint uploads them again.
    let mut cfg2 = config(
        root.path(),
        rebase(|r| r.max_file_age = Some(Duration::from_secs(86_400))),
    );
    cfg2.state.working_dir = root.path().join("work2");
    cfg2.checkpoint.restore_mode = cairn::engine::checkpoint::ClaimMode::Claim;
    let mut cp2 = Checkpointer::open(&cfg2.checkpoint, &new_job_name(), 128)?;
    let restored = cp2.resume_from(&CheckpointLocation::parse(&format!(
        "{job_url}/chk-{}",
        rep.id
    ))?)?;
    assert_eq!(restored.metadata.version, 1);
    assert!(
        restored
            .metadata
            .shared_objects()
            .iter()
            .all(|f| f.uploaded_at_ms == 0)
    );
    std::fs::create_dir_all(&cfg2.state.working_dir)?;
    let dest = cfg2.state.working_dir.join("restore-slot-0");
    let (files, _) =
        cp2.download_slot_files(&restored, KeyGroupRange::for_slot(128, 1, 0)?, &dest)?;
    let mut slot2 = Slot::builder(&cfg2).restore(files).open()?;
    assert_eq!(read_back(&mut slot2, keys)?, model);
    let next = checkpoint(&mut cp2, &mut slot2)?;
    assert!(next.files_reuploaded > 0, "{next:?}");
    assert_eq!(next.files_reused, 0, "{next:?}");
    assert!(next.rebase.unwrap_or_default().contains("max-file-age"));
    Ok(())
}

/// Overwriting the same keys in several flushed runs leaves dead data in the referenced SSTs;
/// with `max-space-amplification = 1.5` the checkpoint asks for a compaction, the next one
/// uploads the compacted files and references fewer bytes, and the store shrinks once the old
/// checkpoint is subsumed. Without the policy nothing is compacted.
#[test]
fn space_amplification_compacts_and_cuts_referenced_bytes() -> TestResult {
    for on in [true, false] {
        let root = tempfile::tempdir()?;
        let cfg = config(
            root.path(),
            rebase(|r| r.max_space_amplification = on.then_some(1.5)),
        );
        let keys = 5000;
        let mut slot = Slot::builder(&cfg).open()?;
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
        let mut model = Model::new();
        // Four full overwrites, each flushed into its own file by a checkpoint (fewer than the
        // universal compaction trigger of 8 files; RocksDB may still merge a few).
        let mut last = None;
        for r in 0..4u64 {
            churn(&mut slot, &mut model, keys, r, 1)?;
            last = Some(checkpoint(&mut cp, &mut slot)?);
        }
        let before = last.ok_or("no checkpoint")?;
        assert!(
            before.space_amplification > 1.5,
            "four overlapping runs: {before:?}"
        );
        let (_, stored_before) = cp.block_on(cp.store().stored_totals())?;
        let (_, referenced_before) = cp.store().referenced_totals()?;
        if on {
            assert_eq!(before.compact_slots, vec![0], "{before:?}");
        } else {
            assert!(before.compact_slots.is_empty());
        }
        // One more checkpoint without new writes: the compaction (if due) runs before it.
        let after = checkpoint(&mut cp, &mut slot)?;
        let (_, referenced_after) = cp.store().referenced_totals()?;
        let (_, stored_after) = cp.block_on(cp.store().stored_totals())?;
        if on {
            let why = after.rebase.clone().unwrap_or_default();
            assert!(why.contains("max-space-amplification"), "{after:?}");
            assert!(after.space_amplification < 1.5, "{after:?}");
            // Compacted, the referenced bytes are about the live data: down by the measured
            // amplification (give or take the estimate's error).
            assert!(
                (referenced_after as f64) * before.space_amplification * 0.8
                    < referenced_before as f64,
                "referenced {referenced_before} -> {referenced_after} at amplification {}",
                before.space_amplification
            );
            assert!(
                stored_after < stored_before,
                "stored {stored_before} -> {stored_after}"
            );
            assert!(after.compact_slots.is_empty());
        } else {
            assert!(after.rebase.is_none());
            assert_eq!(referenced_after, referenced_before);
        }
        let job_url = cp.job_url();
        drop(slot);
        drop(cp);
        assert_eq!(
            restored_state(&cfg, &job_url, after.id, keys, "work-restored")?,
            model
        );
    }
    Ok(())
}
