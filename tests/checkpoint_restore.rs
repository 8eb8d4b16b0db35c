//! Checkpoint and restore on both backends: the state read after restore equals a model of the
//! state at the checkpoint (writes after it are absent), checkpoints are incremental, old ones
//! are subsumed without leaking files, and damaged files fail restore with a typed error.
//!
//! RocksDB's equivalence runs with the default write-back state cache (nothing is evicted, so
//! every write reaches RocksDB through the sync phase's cache flush), without it, and with a tiny
//! cache that evicts and writes back on nearly every record.

use std::collections::BTreeMap;

use cairn::engine::checkpoint::{
    CheckpointLocation, Checkpointer, ClaimMode, FileVerify, RestoreFetch, new_job_name,
};
use cairn::engine::slot::SlotBuilder;
use cairn::{BackendKind, CairnConfig, ErrorKind, Slot, VoidNamespace};

mod support;
use support::checkpoints::config;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The expected state: counters, lists and maps per key.
#[derive(Clone, Default, PartialEq, Debug)]
struct Model {
    counts: BTreeMap<u64, u64>,
    lists: BTreeMap<u64, Vec<u32>>,
    maps: BTreeMap<u64, BTreeMap<u32, String>>,
}

fn apply(slot: &mut Slot, model: &mut Model, from: u64, to: u64, keys: u64) -> TestResult {
    let count = slot.value_state::<u64>("op", "count")?;
    let list = slot.list_state::<u32>("op", "list")?;
    let map = slot.map_state::<u32, String>("op", "map")?;
    for g in from..to {
        let key = g.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys;
        let scope = slot.scope(&key, &VoidNamespace)?;
        let n = count.get(slot, &scope)?.unwrap_or(0) + 1;
        count.update(slot, &scope, &n)?;
        model.counts.insert(key, n);
        if g % 3 == 0 {
            list.add(slot, &scope, &(g as u32))?;
            model.lists.entry(key).or_default().push(g as u32);
        }
        if g % 5 == 0 {
            map.put(slot, &scope, &((g % 7) as u32), &format!("v{g}"))?;
            model
                .maps
                .entry(key)
                .or_default()
                .insert((g % 7) as u32, format!("v{g}"));
        }
        if g % 97 == 0 {
            map.clear(slot, &scope)?;
            model.maps.remove(&key);
        }
    }
    Ok(())
}

fn read_back(slot: &mut Slot, keys: u64) -> Result<Model, Box<dyn std::error::Error>> {
    let count = slot.value_state::<u64>("op", "count")?;
    let list = slot.list_state::<u32>("op", "list")?;
    let map = slot.map_state::<u32, String>("op", "map")?;
    let mut m = Model::default();
    for key in 0..keys {
        let scope = slot.scope(&key, &VoidNamespace)?;
        if let Some(n) = count.get(slot, &scope)? {
            m.counts.insert(key, n);
        }
        let l = list.get(slot, &scope)?;
        if !l.is_empty() {
            m.lists.insert(key, l);
        }
        let e = map.entries(slot, &scope)?;
        if !e.is_empty() {
            m.maps.insert(key, e.into_iter().collect());
        }
    }
    Ok(m)
}

/// Takes one checkpoint of `slot` and returns its id.
fn checkpoint(cp: &mut Checkpointer, slot: &mut Slot) -> Result<u64, Box<dyn std::error::Error>> {
    let id = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(id)?;
    cp.complete(id, vec![sync])?;
    Ok(id)
}

/// Opens a new job that restores `source` and returns the restored slot.
fn restore(
    cfg: &CairnConfig,
    source: &str,
) -> Result<(Checkpointer, Slot), Box<dyn std::error::Error>> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(source)?)?;
    let builder: SlotBuilder<'_> = Slot::builder(cfg);
    let range = cairn::KeyGroupRange::for_slot(128, 1, 0)?;
    let dest = cfg.state.working_dir.join("restore-slot-0");
    let (restore, _bytes) = cp.download_slot_files(&restored, range, &dest)?;
    let slot = builder.restore(restore).open()?;
    Ok((cp, slot))
}

fn restore_equivalence(backend: BackendKind) -> TestResult {
    restore_equivalence_with(backend, |_| {})
}

fn restore_equivalence_with(backend: BackendKind, tune: impl Fn(&mut CairnConfig)) -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(backend, root.path());
    tune(&mut cfg);
    let keys = 3000;
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::default();
    apply(&mut slot, &mut model, 0, 20_000, keys)?;
    checkpoint(&mut cp, &mut slot)?;
    apply(&mut slot, &mut model, 20_000, 30_000, keys)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    let at_checkpoint = model.clone();
    // Writes after the checkpoint must not be restored.
    apply(&mut slot, &mut model, 30_000, 35_000, keys)?;
    assert_ne!(model, at_checkpoint);
    let job_url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);

    let (mut cp2, mut restored) = restore(&cfg, &job_url)?;
    // Heap restores are eager whatever the mode (`RestoreFetch::Lazy`).
    let lazy =
        cfg.checkpoint.restore_fetch == RestoreFetch::Lazy && backend == BackendKind::RocksDb;
    if backend == BackendKind::Heap {
        assert!(restored.lazy_progress().is_none());
    }
    if lazy {
        // Opened without its SSTs: some are still to fetch (the background fetch is racing
        // this check, so only "not all fetched before open returned" is certain: pending or
        // fetched after open).
        let p = restored.lazy_progress().ok_or("a lazily restored slot")?;
        assert!(p.pending_files > 0 || p.fetched_bytes > 0, "{p:?}");
        // The database's open waited for no SST (RocksDB read none synchronously).
        assert_eq!(p.open_fetches, 0, "{p:?}");
    }
    assert_eq!(read_back(&mut restored, keys)?, at_checkpoint);
    if lazy {
        restored.wait_local()?;
        let p = restored.lazy_progress().ok_or("a lazily restored slot")?;
        assert_eq!((p.pending_files, p.failure), (0, None));
        // A checkpoint of the lazily restored slot restores the same state again.
        let id = checkpoint(&mut cp2, &mut restored)?;
        let url = format!("{}/chk-{id}", cp2.job_url());
        drop(restored);
        drop(cp2);
        let (_cp3, mut again) = restore(&cfg, &url)?;
        assert_eq!(read_back(&mut again, keys)?, at_checkpoint);
    }
    Ok(())
}

#[test]
fn rocksdb_lazy_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence_with(BackendKind::RocksDb, |c| {
        c.checkpoint.restore_fetch = RestoreFetch::Lazy;
    })
}

#[test]
fn rocksdb_lazy_restore_without_state_cache_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence_with(BackendKind::RocksDb, |c| {
        c.checkpoint.restore_fetch = RestoreFetch::Lazy;
        c.memory.state_cache_ratio = 0.0;
    })
}

#[test]
fn rocksdb_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence(BackendKind::RocksDb)
}

#[test]
fn rocksdb_without_state_cache_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence_with(BackendKind::RocksDb, |c| c.memory.state_cache_ratio = 0.0)
}

#[test]
fn rocksdb_with_tiny_state_cache_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence_with(BackendKind::RocksDb, |c| {
        // ~27 KB of the 256 MiB default budget: a few hundred of the 3000 keys' entries.
        c.memory.state_cache_ratio = 0.0001;
        c.state_cache.max_dirty_ratio = 0.5;
    })
}

/// The default cache holds all of this test's state, so only the sync phase's flush brings the
/// writes since the last checkpoint into RocksDB: the checkpoint must contain them.
#[test]
fn rocksdb_checkpoint_contains_writes_still_in_the_state_cache() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::default();
    apply(&mut slot, &mut model, 0, 2_000, 500)?;
    let dirty = slot
        .cache_stats()
        .ok_or("cache is on by default")?
        .dirty_bytes;
    assert!(dirty > 0, "writes are still only in the cache");
    let id = checkpoint(&mut cp, &mut slot)?;
    let stats = slot.cache_stats().ok_or("cache is on by default")?;
    assert_eq!(
        stats.dirty_bytes, 0,
        "the sync phase wrote every dirty entry"
    );
    assert!(stats.checkpoint_flushed_entries > 0);
    let job_url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);
    let (_cp2, mut restored) = restore(&cfg, &job_url)?;
    assert_eq!(read_back(&mut restored, 500)?, model);
    Ok(())
}

#[test]
fn heap_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence(BackendKind::Heap)
}

/// After changing 1% of the keys, the next checkpoint uploads only the new SSTs.
#[test]
fn rocksdb_checkpoints_are_incremental() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let mut slot = Slot::builder(&cfg).open()?;
    let state = slot.value_state::<Vec<u8>>("op", "payload")?;
    let keys = 50_000u64;
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        state.update(&mut slot, &scope, &vec![(k % 251) as u8; 100])?;
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    checkpoint(&mut cp, &mut slot)?;
    let first = cp.reports()[0].clone();
    let sst_before: BTreeMap<String, u64> = live_ssts(&slot);
    for k in (0..keys).step_by(100) {
        let scope = slot.scope(&k, &VoidNamespace)?;
        state.update(&mut slot, &scope, &vec![7; 100])?;
    }
    checkpoint(&mut cp, &mut slot)?;
    let second = cp.reports()[1].clone();
    let sst_after = live_ssts(&slot);
    let new_sst_bytes: u64 = sst_after
        .iter()
        .filter(|(name, _)| !sst_before.contains_key(*name))
        .map(|(_, size)| size)
        .sum();
    assert!(second.files_reused > 0, "{second:?}");
    assert!(
        second.incremental_bytes < first.incremental_bytes / 4,
        "{first:?} {second:?}"
    );
    // Uploaded = new SSTs + compressed private files + metadata: a few KiB on top.
    let overhead = second.incremental_bytes - new_sst_bytes;
    assert!(
        overhead < 64 * 1024,
        "uploaded {} for {new_sst_bytes} new SST bytes",
        second.incremental_bytes
    );
    Ok(())
}

/// A lazily restored slot checkpoints incrementally: its first checkpoint, taken right after
/// the restore (files may still be pending: the checkpoint waits for the ones it links), does
/// not upload the restored SSTs again, uploads only what changed since, and restores to the
/// changed state.
#[test]
fn rocksdb_lazily_restored_slot_checkpoints_incrementally() -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::RocksDb, root.path());
    cfg.checkpoint.restore_fetch = RestoreFetch::Lazy;
    let mut slot = Slot::builder(&cfg).open()?;
    let state = slot.value_state::<Vec<u8>>("op", "payload")?;
    let keys = 50_000u64;
    let mut model = BTreeMap::new();
    for k in 0..keys {
        let scope = slot.scope(&k, &VoidNamespace)?;
        let v = vec![(k % 251) as u8; 100];
        state.update(&mut slot, &scope, &v)?;
        model.insert(k, v);
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    let full = cp.reports()[0].clone();
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);

    let (mut cp2, mut restored) = restore(&cfg, &url)?;
    assert!(restored.lazy_progress().is_some(), "a lazily restored slot");
    let state = restored.value_state::<Vec<u8>>("op", "payload")?;
    for k in (0..keys).step_by(100) {
        let scope = restored.scope(&k, &VoidNamespace)?;
        state.update(&mut restored, &scope, &vec![7; 100])?;
        model.insert(k, vec![7; 100]);
    }
    let id2 = checkpoint(&mut cp2, &mut restored)?;
    let next = cp2.reports()[0].clone();
    // The restored SSTs are not uploaded again from the slot: they are referenced (claim) or
    // copied inside storage (no-claim, the default: the new job owns its files).
    assert!(next.files_reused + next.files_copied > 0, "{next:?}");
    assert!(
        next.incremental_bytes < full.incremental_bytes / 4,
        "{full:?} {next:?}"
    );
    let url2 = format!("{}/chk-{id2}", cp2.job_url());
    drop(restored);
    drop(cp2);
    let (_cp3, mut again) = restore(&cfg, &url2)?;
    let state = again.value_state::<Vec<u8>>("op", "payload")?;
    for (k, v) in &model {
        let scope = again.scope(k, &VoidNamespace)?;
        assert_eq!(state.get(&mut again, &scope)?.as_ref(), Some(v), "key {k}");
    }
    Ok(())
}

fn live_ssts(slot: &Slot) -> BTreeMap<String, u64> {
    let dir = slot.working_dir().join("db");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// With `retained = 1`, older checkpoints and the files only they used are deleted, and no
/// object is left that the retained checkpoint doesn't reference.
#[test]
fn subsumed_checkpoints_leave_no_files() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::default();
    for round in 0..4u64 {
        apply(
            &mut slot,
            &mut model,
            round * 10_000,
            (round + 1) * 10_000,
            2000,
        )?;
        checkpoint(&mut cp, &mut slot)?;
        // Force compaction so later checkpoints drop earlier SSTs.
        slot.compact_state()?;
    }
    assert_eq!(cp.store().retained_ids()?, vec![4]);
    let report = cp.gc(std::time::Duration::ZERO, false)?;
    assert!(report.orphans.is_empty(), "leaked: {:?}", report.orphans);
    let problems = cp.block_on(cp.store().verify(&[4], true))?;
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// Flipping, truncating or deleting a shared or private file makes restore fail with a typed error naming
/// the file, and `verify --deep` reports it.
#[test]
fn damaged_checkpoint_files_fail_restore_with_typed_errors() -> TestResult {
    damaged_files_fail_typed(RestoreFetch::Eager)
}

/// Lazily, a damaged SST is found when it is fetched in the background (a `Corrupt` error
/// naming the object), or before that by the read that needs the damaged bytes: a range read
/// of the stored object, whose damage RocksDB's block checksum (or the range's length check)
/// reports as corruption in the SST named by its file name. Never wrong values. Damaged
/// private files fail the restore itself.
#[test]
fn lazy_restore_of_damaged_files_fails_with_typed_errors() -> TestResult {
    damaged_files_fail_typed(RestoreFetch::Lazy)
}

fn damaged_files_fail_typed(fetch: RestoreFetch) -> TestResult {
    for damage in [
        "flip",
        "truncate",
        "delete",
        "flip-private",
        "delete-private",
    ] {
        let root = tempfile::tempdir()?;
        let mut cfg = config(BackendKind::RocksDb, root.path());
        cfg.checkpoint.restore_fetch = fetch;
        let mut slot = Slot::builder(&cfg).open()?;
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
        let mut model = Model::default();
        apply(&mut slot, &mut model, 0, 5000, 500)?;
        let id = checkpoint(&mut cp, &mut slot)?;
        let meta = cp.block_on(cp.store().load(id))?;
        let (object, name, file) = if damage.ends_with("private") {
            let p = &meta.slots[0].private[0];
            (p.object.clone(), p.object.clone(), p.object.clone())
        } else {
            let f = &meta.slots[0].shared[0];
            (f.object.clone(), f.sha256.clone(), f.name.clone())
        };
        let path = root.path().join("checkpoints").join(&object);
        match damage {
            "flip" | "flip-private" => {
                let mut b = std::fs::read(&path)?;
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                std::fs::write(&path, b)?;
            }
            "truncate" => {
                let b = std::fs::read(&path)?;
                std::fs::write(&path, &b[..b.len() / 2])?;
            }
            _ => std::fs::remove_file(&path)?,
        }
        let problems = cp.block_on(cp.store().verify(&[id], true))?;
        assert_eq!(problems.len(), 1, "{damage}: {problems:?}");
        assert!(
            problems[0].problem.contains(&name),
            "{damage}: {problems:?}"
        );
        let url = format!("{}/chk-{id}", cp.job_url());
        drop(slot);
        let lazy_shared = fetch == RestoreFetch::Lazy && !damage.ends_with("private");
        let err = match restore(&cfg, &url) {
            Ok((_cp, mut restored)) if lazy_shared => {
                // Every key is read: the damaged file is needed by some access (or its
                // background fetch failed first, which `wait_local` reports).
                match read_back(&mut restored, 500) {
                    Ok(m) => {
                        assert_eq!(m, model, "{damage}: wrong data from a lazy slot");
                        match restored.wait_local() {
                            Ok(()) => panic!("{damage}: damaged SST fetched without error"),
                            Err(e) => Box::new(e) as Box<dyn std::error::Error>,
                        }
                    }
                    Err(e) => e,
                }
            }
            Ok(_) => panic!("{damage}: restore of a damaged checkpoint succeeded"),
            Err(e) => e,
        };
        let e = err.downcast::<cairn::EngineError>()?;
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{damage}: {e}");
        // A range read's damage is named by the SST's file name (RocksDB's checksum error).
        let named = e.to_string().contains(&name) || (lazy_shared && e.to_string().contains(&file));
        assert!(named, "{damage}: {e}");
    }
    Ok(())
}

#[test]
fn size_only_restore_equals_state_at_checkpoint() -> TestResult {
    restore_equivalence_with(BackendKind::RocksDb, |c| {
        c.checkpoint.restore_verify = FileVerify::Size;
    })
}

/// `restore-verify = size` skips hashing hard-linked SSTs; a flipped byte must then surface as
/// RocksDB's block-checksum error when the state is read, never as wrong values.
#[test]
fn size_only_restore_of_a_damaged_sst_fails_on_read_not_silently() -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::RocksDb, root.path());
    cfg.checkpoint.restore_verify = FileVerify::Size;
    let mut slot = Slot::builder(&cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::default();
    apply(&mut slot, &mut model, 0, 5000, 500)?;
    let id = checkpoint(&mut cp, &mut slot)?;
    let meta = cp.block_on(cp.store().load(id))?;
    let largest = meta.slots[0]
        .shared
        .iter()
        .max_by_key(|f| f.size)
        .ok_or("an SST")?;
    let path = root.path().join("checkpoints").join(&largest.object);
    let mut b = std::fs::read(&path)?;
    let mid = b.len() / 3;
    b[mid] ^= 0x40;
    std::fs::write(&path, b)?;
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    // Either the slot refuses to open (the flip hit a block read at open) or reading fails.
    let outcome = restore(&cfg, &url).and_then(|(_cp, mut slot)| read_back(&mut slot, 500));
    match outcome {
        Ok(m) => panic!(
            "damaged SST read without error (equal to model: {})",
            m == model
        ),
        Err(e) => assert!(
            e.to_string().to_lowercase().contains("corruption")
                || e.to_string().contains("checksum"),
            "{e}"
        ),
    }
    Ok(())
}

/// A claim-mode restore adopts the checkpoint and deletes it once subsumed; no-claim never
/// touches it, and its first checkpoint copies the files into the new job. Both with eager and
/// lazy fetch: a lazily restored slot whose claimed checkpoint was just deleted still reads
/// every key (its first checkpoint fetched what it links before the old one went).
#[test]
fn claim_and_no_claim_ownership() -> TestResult {
    for (mode, fetch) in [
        (ClaimMode::NoClaim, RestoreFetch::Eager),
        (ClaimMode::Claim, RestoreFetch::Eager),
        (ClaimMode::NoClaim, RestoreFetch::Lazy),
        (ClaimMode::Claim, RestoreFetch::Lazy),
    ] {
        let root = tempfile::tempdir()?;
        let mut cfg = config(BackendKind::RocksDb, root.path());
        cfg.checkpoint.restore_fetch = fetch;
        let mut slot = Slot::builder(&cfg).open()?;
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
        let mut model = Model::default();
        apply(&mut slot, &mut model, 0, 5000, 500)?;
        let id = checkpoint(&mut cp, &mut slot)?;
        let url = format!("{}/chk-{id}", cp.job_url());
        let old_job = cp.job().to_string();
        drop(slot);
        drop(cp);
        cfg.checkpoint.restore_mode = mode;
        let (mut cp2, mut slot2) = restore(&cfg, &url)?;
        // The lazy legs really restore lazily.
        assert_eq!(
            slot2.lazy_progress().is_some(),
            fetch == RestoreFetch::Lazy,
            "{fetch:?}"
        );
        apply(&mut slot2, &mut model, 5000, 6000, 500)?;
        let id2 = checkpoint(&mut cp2, &mut slot2)?;
        assert_eq!(id2, id + 1);
        let report = cp2.reports()[0].clone();
        let old_meta = root
            .path()
            .join("checkpoints")
            .join(&old_job)
            .join(format!("chk-{id}/_metadata"));
        match mode {
            ClaimMode::NoClaim => {
                assert!(report.files_copied > 0, "{report:?}");
                assert!(
                    old_meta.exists(),
                    "no-claim deleted the restored checkpoint"
                );
                let meta = cp2.block_on(cp2.store().load(id2))?;
                assert!(
                    meta.slots[0]
                        .shared
                        .iter()
                        .all(|f| f.object.starts_with(cp2.job()))
                );
            }
            ClaimMode::Claim => {
                assert_eq!(report.files_copied, 0);
                assert!(!old_meta.exists(), "claimed checkpoint was not subsumed");
            }
        }
        // Nothing the restored slot reads was in what the claim deleted.
        assert_eq!(read_back(&mut slot2, 500)?, model, "{mode:?} {fetch:?}");
        drop(slot2);
        // The restoring job must be stopped first: a claim refuses a job whose writer is live.
        let url2 = format!("{}/chk-{id2}", cp2.job_url());
        drop(cp2);
        let (_cp3, mut slot3) = restore(&cfg, &url2)?;
        assert_eq!(read_back(&mut slot3, 500)?, model);
    }
    Ok(())
}
