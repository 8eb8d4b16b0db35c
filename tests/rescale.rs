//! Rescaling: a checkpoint taken with N slots restores into M, for the RocksDB backend (the
//! heap backend's N -> M is covered here too). Every key must land in exactly one slot with its
//! exact state (value, list, map) and its timers, against a model; rescaling twice in a row,
//! checkpointing and crashing after a rescale; and the first checkpoint after a rescale uploads
//! only what is new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cairn::engine::checkpoint::{CheckpointReport, RestoreFetch};
use cairn::{
    BackendKind, CairnConfig, Checkpointer, ClaimMode, Slot, TimeDomain, Timer, TimerServiceKind,
    VoidNamespace, new_job_name, slot_for_key,
};

mod support;

use support::checkpoints::{checkpoint_slots, open_slots, restore_slots};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MAX_P: u32 = 128;

/// The state of one key: its counter, list, map entries and event-time timers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyState {
    count: Option<u64>,
    list: Vec<u64>,
    map: BTreeMap<u64, u64>,
    timers: BTreeSet<i64>,
}

type Model = BTreeMap<u64, KeyState>;

fn config(backend: BackendKind, root: &Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.state.timer_service = TimerServiceKind::RocksDb;
    cfg.checkpoint.interval = None;
    cfg
}

/// Writes round `round` of keys `0..keys` into the slots that own them, and into `model`:
/// counters set, list elements appended, map entries put, a timer registered; every third key
/// of a round also loses its oldest map entry.
fn write(slots: &mut [Slot], model: &mut Model, keys: u64, round: u64) -> R {
    let n = slots.len() as u32;
    for k in 0..keys {
        let slot = &mut slots[slot_for_key(&k, MAX_P, n)? as usize];
        let count = slot.value_state::<u64>("op", "count")?;
        let list = slot.list_state::<u64>("op", "list")?;
        let map = slot.map_state::<u64, u64>("op", "map")?;
        let scope = slot.scope(&k, &VoidNamespace)?;
        let m = model.entry(k).or_default();
        let v = k * 1000 + round;
        count.update(slot, &scope, &v)?;
        m.count = Some(v);
        list.add(slot, &scope, &round)?;
        m.list.push(round);
        map.put(slot, &scope, &round, &v)?;
        m.map.insert(round, v);
        if k % 3 == 0
            && let Some(&oldest) = m.map.keys().next()
            && m.map.len() > 1
        {
            map.remove(slot, &scope, &oldest)?;
            m.map.remove(&oldest);
        }
        let ts = (k * 10 + round) as i64;
        slot.register_timer(TimeDomain::EventTime, &scope, ts)?;
        m.timers.insert(ts);
    }
    Ok(())
}

/// Reads every key of `model` from the slot owning it and checks it is exactly the model's,
/// that every key group holds no entry of a key the model does not place there, and that the
/// timers are exactly the model's (fired up to the end of time: this consumes them).
fn check(slots: &mut [Slot], model: &Model, what: &str) -> R {
    let n = slots.len() as u32;
    for (k, want) in model {
        let slot = &mut slots[slot_for_key(k, MAX_P, n)? as usize];
        let count = slot.value_state::<u64>("op", "count")?;
        let list = slot.list_state::<u64>("op", "list")?;
        let map = slot.map_state::<u64, u64>("op", "map")?;
        let scope = slot.scope(k, &VoidNamespace)?;
        let got = KeyState {
            count: count.get(slot, &scope)?,
            list: list.get(slot, &scope)?,
            map: map.entries(slot, &scope)?.into_iter().collect(),
            timers: want.timers.clone(),
        };
        assert_eq!(&got, want, "{what}: key {k}");
    }
    // No entry of a key group belongs to a key the model puts elsewhere, and none is extra.
    for slot in slots.iter_mut() {
        let range = slot.key_groups();
        let ids: Vec<_> = slot
            .states()
            .iter()
            .enumerate()
            .map(|(i, _)| i as u32)
            .collect();
        let mut entries = 0usize;
        for kg in range.start..=range.end {
            for id in &ids {
                if slot.state_name(*id).starts_with("_timers") {
                    continue;
                }
                entries += slot.scan_key_group(*id, kg as cairn::KeyGroup)?.len();
            }
        }
        let mut want = 0usize;
        for (k, s) in model {
            if slot_for_key(k, MAX_P, n)? == slot.index().0 {
                want += usize::from(s.count.is_some()) + s.list.len().min(1) + s.map.len();
            }
        }
        assert_eq!(entries, want, "{what}: entries of slot {:?}", slot.index());
    }
    // Timers: each key's, in its own slot, none anywhere else.
    let mut fired: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    for slot in slots.iter_mut() {
        let mut t = Timer::default();
        while slot.poll_timer(TimeDomain::EventTime, i64::MAX, &mut t)? {
            let key: u64 = cairn::engine::codec::decode(&t.key, "timer key")?;
            assert_eq!(
                slot_for_key(&key, MAX_P, n)?,
                slot.index().0,
                "{what}: timer of key {key} in the wrong slot"
            );
            assert!(
                fired.entry(key).or_default().insert(t.timestamp),
                "{what}: timer {key}@{} fired twice",
                t.timestamp
            );
        }
    }
    let want: BTreeMap<u64, BTreeSet<i64>> = model
        .iter()
        .filter(|(_, s)| !s.timers.is_empty())
        .map(|(k, s)| (*k, s.timers.clone()))
        .collect();
    assert_eq!(fired, want, "{what}: timers");
    Ok(())
}

#[test]
fn every_key_lands_in_exactly_one_slot_for_every_n_and_m() -> R {
    every_key_lands(
        &[BackendKind::RocksDb, BackendKind::Heap],
        RestoreFetch::Eager,
    )
}

/// The same with lazy restore: each new slot's base opens from its metadata and fetches its
/// SSTs as read (merged old slots are downloaded before they are ingested).
#[test]
fn every_key_lands_in_exactly_one_slot_for_every_n_and_m_lazy() -> R {
    every_key_lands(&[BackendKind::RocksDb], RestoreFetch::Lazy)
}

fn every_key_lands(backends: &[BackendKind], fetch: RestoreFetch) -> R {
    let dir = tempfile::tempdir()?;
    for &backend in backends {
        let mut cfg = config(backend, dir.path());
        cfg.checkpoint.restore_fetch = fetch;
        for n in 1..=8u32 {
            let work = dir.path().join(format!("{backend:?}-{n}"));
            let mut slots = open_slots(&cfg, &work.join("old"), n, |b| b)?;
            let mut model = Model::new();
            let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
            let url = cp.job_url();
            write(&mut slots, &mut model, 300, 1)?;
            checkpoint_slots(&mut cp, &mut slots)?;
            // A second round: files of two checkpoints, deletions of map entries.
            write(&mut slots, &mut model, 300, 2)?;
            checkpoint_slots(&mut cp, &mut slots)?;
            drop(slots);
            for m in 1..=8u32 {
                let (_cp, mut restored) =
                    restore_slots(&cfg, &url, &work.join(format!("new-{m}")), m, |b| b)?;
                check(&mut restored, &model, &format!("{backend:?} {n} -> {m}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn rescale_twice_then_checkpoint_crash_and_restore() -> R {
    rescale_twice_crash_restore(RestoreFetch::Eager)
}

#[test]
fn rescale_twice_then_checkpoint_crash_and_restore_lazy() -> R {
    rescale_twice_crash_restore(RestoreFetch::Lazy)
}

fn rescale_twice_crash_restore(fetch: RestoreFetch) -> R {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::RocksDb, dir.path());
    cfg.checkpoint.restore_fetch = fetch;
    let mut model = Model::new();
    let mut slots = open_slots(&cfg, &dir.path().join("a"), 2, |b| b)?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    write(&mut slots, &mut model, 500, 1)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    let url = cp.job_url();
    drop((cp, slots));
    // 2 -> 5: write, checkpoint.
    let (mut cp, mut slots) = restore_slots(&cfg, &url, &dir.path().join("b"), 5, |b| b)?;
    write(&mut slots, &mut model, 500, 2)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    let url = cp.job_url();
    drop((cp, slots));
    // 5 -> 3 (old slots that were themselves rescaled and not compacted): write, checkpoint.
    let (mut cp, mut slots) = restore_slots(&cfg, &url, &dir.path().join("c"), 3, |b| b)?;
    write(&mut slots, &mut model, 500, 3)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    // Writes after the checkpoint are lost in the crash.
    let mut lost = model.clone();
    write(&mut slots, &mut lost, 500, 4)?;
    let url = cp.job_url();
    cp.abandon();
    drop(slots);
    let (_cp, mut slots) = restore_slots(&cfg, &url, &dir.path().join("d"), 3, |b| b)?;
    check(&mut slots, &model, "2 -> 5 -> 3, crash, restore")?;
    let ids = support::checkpoints::committed_verified(
        &cfg.checkpoint.dir,
        url.rsplit('/').next().ok_or("job")?,
    )?;
    assert!(!ids.is_empty());
    Ok(())
}

/// A job of 2 RocksDB slots holding ~6 MB of incompressible state, checkpointed once: its URL
/// and the checkpoint's report.
fn two_slots_of_random_state(cfg: &CairnConfig, work: &Path) -> R<(String, CheckpointReport)> {
    let mut slots = open_slots(cfg, work, 2, |b| b)?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for k in 0..30_000u64 {
        let payload: Vec<u8> = (0..25)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let slot = &mut slots[slot_for_key(&k, MAX_P, 2)? as usize];
        let v = slot.value_state::<Vec<u8>>("op", "payload")?;
        let scope = slot.scope(&k, &VoidNamespace)?;
        v.update(slot, &scope, &payload)?;
    }
    let report = checkpoint_slots(&mut cp, &mut slots)?;
    Ok((cp.job_url(), report))
}

#[test]
fn the_first_checkpoint_after_a_rescale_uploads_only_what_is_new() -> R {
    let dir = tempfile::tempdir()?;
    for mode in [ClaimMode::NoClaim, ClaimMode::Claim] {
        let mut cfg = config(BackendKind::RocksDb, dir.path());
        cfg.state.timer_service = TimerServiceKind::Heap;
        cfg.checkpoint.restore_mode = mode;
        for m in [1u32, 3, 4, 2] {
            let work = dir.path().join(format!("{mode:?}-{m}"));
            // A job of its own each time: a claimed checkpoint goes with its first subsumption.
            let (url, first) = two_slots_of_random_state(&cfg, &work.join("old"))?;
            let (mut cp, mut slots) = restore_slots(&cfg, &url, &work.join("new"), m, |b| b)?;
            let report = checkpoint_slots(&mut cp, &mut slots)?;
            let share = report.incremental_bytes as f64 / first.full_bytes as f64;
            println!(
                "{mode:?} 2 -> {m}: the first checkpoint uploaded {} of {} bytes ({:.2} %); files reused {}, copied in storage {}",
                report.incremental_bytes,
                first.full_bytes,
                share * 100.0,
                report.files_reused,
                report.files_copied,
            );
            assert!(
                share <= 0.05,
                "{mode:?} 2 -> {m}: the first checkpoint uploaded {:.1} % of the state",
                share * 100.0
            );
            match mode {
                // The old files are referenced where they are.
                ClaimMode::Claim => assert!(
                    report.files_copied == 0 && report.files_reused > 0,
                    "{mode:?} 2 -> {m}"
                ),
                // Copied inside the store, never sent from the slot.
                ClaimMode::NoClaim => assert!(report.files_copied > 0, "{mode:?} 2 -> {m}"),
            }
            // The next checkpoint subsumes the first (and, claimed, the restored one): objects
            // several new slots reference stay until none does, and every retained checkpoint
            // still reads back whole.
            checkpoint_slots(&mut cp, &mut slots)?;
            let url = cp.job_url();
            let job = url.rsplit('/').next().ok_or("job")?;
            let ids = support::checkpoints::committed_verified(&cfg.checkpoint.dir, job)?;
            assert!(!ids.is_empty(), "{mode:?} 2 -> {m}");
        }
    }
    Ok(())
}

#[test]
fn old_slots_that_registered_a_state_with_two_kinds_are_refused() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, dir.path());
    let mut slots = open_slots(&cfg, &dir.path().join("old"), 2, |b| b)?;
    // The same name, a value in slot 0 and a list in slot 1: each slot alone is consistent.
    let k0 = (0u64..)
        .find(|k| slot_for_key(k, MAX_P, 2).ok() == Some(0))
        .ok_or("key")?;
    let k1 = (0u64..)
        .find(|k| slot_for_key(k, MAX_P, 2).ok() == Some(1))
        .ok_or("key")?;
    let v = slots[0].value_state::<u64>("op", "x")?;
    let scope = slots[0].scope(&k0, &VoidNamespace)?;
    v.update(&mut slots[0], &scope, &1)?;
    let l = slots[1].list_state::<u64>("op", "x")?;
    let scope = slots[1].scope(&k1, &VoidNamespace)?;
    l.add(&mut slots[1], &scope, &1)?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    let url = cp.job_url();
    drop((cp, slots));
    match restore_slots(&cfg, &url, &dir.path().join("new"), 1, |b| b) {
        Err(e) => {
            let e = e
                .downcast::<cairn::EngineError>()
                .map_err(|e| format!("{e}"))?;
            assert_eq!(e.kind(), cairn::ErrorKind::Corrupt, "{e}");
        }
        Ok(_) => panic!("a state with two kinds was merged"),
    }
    Ok(())
}
