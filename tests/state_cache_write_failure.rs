//! A failed write-back of the RocksDB backend's state cache never loses a write.
//!
//! Regression test: the write-back cache used to mark entries clean (or evict them) *before*
//! the `WriteBatch` carrying them reached RocksDB. When `DB::write` then failed (disk full, I/O
//! error), a later checkpoint silently missed those writes, and a key deleted after the last
//! checkpoint came back with its old value. Each test fails one write-back commit on purpose
//! (a per-slot `WriteBackFault`) on one write-back path: eviction, the dirty bound, a
//! checkpoint's flush, a pre-flush drain. Then:
//! - the call that triggered the commit returns an error;
//! - the next checkpoint either holds every acknowledged write or is refused with
//!   `ErrorKind::Closed` (the backend is poisoned: reads are refused too);
//! - restoring the last committed checkpoint gives exactly the model's state at that checkpoint,
//!   and no key deleted since the previous checkpoint comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use cairn::engine::backend::rocks::WriteBackFault;
use cairn::engine::checkpoint::{CheckpointLocation, Checkpointer, new_job_name};
use cairn::engine::state::ValueState;
use cairn::{BackendKind, CairnConfig, ErrorKind, Slot, VoidNamespace};

mod support;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Keys written before the first checkpoint.
const KEYS: u64 = 2000;

/// Which write-back path the injected failure hits.
#[derive(Clone, Copy, Debug)]
enum WriteBack {
    /// A write that takes the cache past its capacity: the evicted dirty entries' batch.
    Eviction,
    /// A write that takes the dirty bytes past `state-cache.max-dirty-ratio`.
    DirtyBound,
    /// The checkpoint's synchronous phase (`snapshot_for_checkpoint` -> `flush_cache`).
    CheckpointFlush,
    /// The checkpoint pre-flush (`start_pre_flush`), a chunk of the drain.
    PreFlush,
}

fn config(root: &Path, path: WriteBack) -> CairnConfig {
    let mut cfg = support::checkpoints::config(BackendKind::RocksDb, root);
    match path {
        WriteBack::Eviction => {
            // ~27 KB of the 256 MiB budget (a few hundred entries of the 2000 keys); a dirty
            // bound equal to the capacity, so only evictions write back.
            cfg.memory.state_cache_ratio = 0.0001;
            cfg.state_cache.max_dirty_ratio = 1.0;
        }
        WriteBack::DirtyBound => {
            // The default (large) cache, with a dirty bound of ~10 KB: ~140 entries.
            cfg.state_cache.max_dirty_ratio = 0.0001;
        }
        // The default cache holds everything: only a checkpoint (or pre-flush) writes back.
        WriteBack::CheckpointFlush | WriteBack::PreFlush => {}
    }
    cfg
}

/// The expected state of the value state: key -> value.
type Model = BTreeMap<u64, u64>;

fn put(
    slot: &mut Slot,
    v: &ValueState<u64>,
    model: &mut Model,
    key: u64,
    value: u64,
) -> TestResult {
    let scope = slot.scope(&key, &VoidNamespace)?;
    v.update(slot, &scope, &value)?;
    model.insert(key, value);
    Ok(())
}

/// Updates and deletes after the first checkpoint, so that dirty values and dirty tombstones
/// sit in the cache; returns the keys deleted.
fn churn(slot: &mut Slot, v: &ValueState<u64>, model: &mut Model) -> TestResult<BTreeSet<u64>> {
    let mut deleted = BTreeSet::new();
    for i in 0..1500u64 {
        let key = i.wrapping_mul(7919) % KEYS;
        if i % 4 == 0 {
            let scope = slot.scope(&key, &VoidNamespace)?;
            v.clear(slot, &scope)?;
            model.remove(&key);
            deleted.insert(key);
        } else {
            put(slot, v, model, key, 1_000_000 + i)?;
            deleted.remove(&key);
        }
    }
    Ok(deleted)
}

/// Takes one checkpoint; `Err` carries the engine error of the synchronous phase.
fn checkpoint(
    cp: &mut Checkpointer,
    slot: &mut Slot,
) -> TestResult<Result<u64, cairn::EngineError>> {
    let id = cp.trigger_checkpoint();
    match slot.snapshot_for_checkpoint(id) {
        Ok(sync) => {
            cp.complete(id, vec![sync])?;
            Ok(Ok(id))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// Restores checkpoint `id` of `cp`'s job into a new slot and reads keys `0..upto` back.
fn restore_and_read(cfg: &CairnConfig, cp: &Checkpointer, id: u64, upto: u64) -> TestResult<Model> {
    let source = format!("{}/chk-{id}", cp.job_url());
    let mut cp2 = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp2.resume_from(&CheckpointLocation::parse(&source)?)?;
    let range = cairn::KeyGroupRange::for_slot(128, 1, 0)?;
    let dest = cfg.state.working_dir.join(format!("restore-{id}"));
    let (restore, _bytes) = cp2.download_slot_files(&restored, range, &dest)?;
    let mut slot = Slot::builder(cfg)
        .working_dir(cfg.state.working_dir.join(format!("restored-slot-{id}")))
        .restore(restore)
        .open()?;
    let v = slot.value_state::<u64>("op", "v")?;
    let mut out = Model::new();
    for key in 0..upto {
        let scope = slot.scope(&key, &VoidNamespace)?;
        if let Some(n) = v.get(&mut slot, &scope)? {
            out.insert(key, n);
        }
    }
    Ok(out)
}

/// A key whose last write is the call that failed: either outcome is acceptable for it.
struct Uncertain {
    key: u64,
    before: Option<u64>,
    after: Option<u64>,
}

/// Asserts that `restored` is `want` (up to the uncertain key) and that no key of `deleted`
/// (deleted after the previous checkpoint, absent from `want`) came back.
fn assert_state(
    what: &str,
    restored: &Model,
    want: &Model,
    uncertain: Option<&Uncertain>,
    deleted: &BTreeSet<u64>,
) {
    let keys: BTreeSet<u64> = restored.keys().chain(want.keys()).copied().collect();
    let mut wrong = Vec::new();
    for k in keys {
        let (got, exp) = (restored.get(&k).copied(), want.get(&k).copied());
        if let Some(u) = uncertain.filter(|u| u.key == k) {
            if got != u.before && got != u.after {
                wrong.push((k, got, exp));
            }
            continue;
        }
        if got != exp {
            wrong.push((k, got, exp));
        }
    }
    let resurrected = deleted
        .iter()
        .filter(|k| !want.contains_key(k) && restored.contains_key(k))
        .count();
    assert!(
        wrong.is_empty(),
        "{what}: {} keys differ from the model ({resurrected} deleted keys came back); first (key, restored, expected): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(8)]
    );
}

/// The scenario, on one write-back path. See the module doc.
fn write_back_failure_loses_nothing(path: WriteBack) -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), path);
    let fault = WriteBackFault::new();
    let mut slot = Slot::builder(&cfg)
        .write_back_fault(Arc::clone(&fault))
        .open()?;
    let v = slot.value_state::<u64>("op", "v")?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::new();
    for key in 0..KEYS {
        put(&mut slot, &v, &mut model, key, key)?;
    }
    let first = checkpoint(&mut cp, &mut slot)??;
    let at_first = model.clone();
    let deleted = churn(&mut slot, &v, &mut model)?;
    assert!(!deleted.is_empty());
    let dirty = slot.cache_stats().ok_or("the cache is on")?.dirty_bytes;
    assert!(dirty > 0, "{path:?}: the churn left dirty entries");

    // Fail the next write-back commit, and trigger it.
    fault.arm(0, 1);
    let commits = fault.commits();
    let mut uncertain = None;
    // Keys `0..upto` hold every value written.
    let mut upto = KEYS;
    let failure = match path {
        WriteBack::Eviction | WriteBack::DirtyBound => {
            // New keys (blind puts: no read) until a write's write-back fails.
            let mut failure = None;
            for key in KEYS..KEYS + 100_000 {
                upto = key + 1;
                let before = model.get(&key).copied();
                let scope = slot.scope(&key, &VoidNamespace)?;
                if let Err(e) = v.update(&mut slot, &scope, &key) {
                    uncertain = Some(Uncertain {
                        key,
                        before,
                        after: Some(key),
                    });
                    failure = Some(e);
                    break;
                }
                model.insert(key, key);
            }
            failure.ok_or("no write-back commit was reached")?
        }
        WriteBack::CheckpointFlush => match checkpoint(&mut cp, &mut slot)? {
            Ok(id) => return Err(format!("checkpoint {id} ignored the failed flush").into()),
            Err(e) => e,
        },
        WriteBack::PreFlush => match slot.start_pre_flush() {
            Ok(()) => return Err("the pre-flush ignored the failed write-back".into()),
            Err(e) => e,
        },
    };
    assert_eq!(fault.fired(), 1, "{path:?}: {failure}");
    assert_eq!(
        fault.commits(),
        commits + 1,
        "{path:?}: one commit, the failed one"
    );
    eprintln!(
        "{path:?}: the failing call returned: {failure} ({:?})",
        failure.kind()
    );
    fault.disarm();

    // The next checkpoint holds every acknowledged write, or is refused.
    let last = match checkpoint(&mut cp, &mut slot)? {
        Ok(id) => (id, model.clone(), uncertain),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Closed, "{path:?}: {e}");
            // Poisoned: reads are refused as well (a stale value must not be visible).
            let scope = slot.scope(&0u64, &VoidNamespace)?;
            let read = v.get(&mut slot, &scope);
            assert!(
                matches!(&read, Err(e) if e.kind() == ErrorKind::Closed),
                "{path:?}: a read after the failure: {read:?}"
            );
            (first, at_first.clone(), None)
        }
    };
    drop(slot);
    let (id, want, uncertain) = last;
    let restored = restore_and_read(&cfg, &cp, id, upto)?;
    assert_state(
        &format!("{path:?}: checkpoint {id} restored"),
        &restored,
        &want,
        uncertain.as_ref(),
        &deleted,
    );
    // The first checkpoint is intact either way.
    if id != first {
        let restored = restore_and_read(&cfg, &cp, first, KEYS)?;
        assert_state(
            &format!("{path:?}: checkpoint {first} restored"),
            &restored,
            &at_first,
            None,
            &BTreeSet::new(),
        );
    }
    Ok(())
}

#[test]
fn failed_eviction_write_back_loses_no_write() -> TestResult {
    write_back_failure_loses_nothing(WriteBack::Eviction)
}

#[test]
fn failed_dirty_bound_write_back_loses_no_write() -> TestResult {
    write_back_failure_loses_nothing(WriteBack::DirtyBound)
}

#[test]
fn failed_checkpoint_flush_loses_no_write() -> TestResult {
    write_back_failure_loses_nothing(WriteBack::CheckpointFlush)
}

#[test]
fn failed_pre_flush_write_back_loses_no_write() -> TestResult {
    write_back_failure_loses_nothing(WriteBack::PreFlush)
}
