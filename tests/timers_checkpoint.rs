//! Timers in checkpoints: restore gives exactly the timers present at the checkpoint (those
//! registered or fired after it are not), and firing continues in the contract's order — for
//! RocksDB timers (a column family of the incremental checkpoint), heap timers with the RocksDB
//! backend (a private file written asynchronously), heap timers with the heap backend, and
//! across kinds (a checkpoint restored with the other `state.timer-service`).

use std::collections::BTreeSet;
use std::path::Path;

use cairn::engine::checkpoint::{
    CheckpointLocation, Checkpointer, TIMERS_SNAPSHOT_FILE, new_job_name,
};
use cairn::engine::codec;
use cairn::engine::{TimeDomain, Timer, TimerServiceKind};
use cairn::timers::key_format;
use cairn::{BackendKind, CairnConfig, ScopeKey, Slot};

mod support;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn config(backend: BackendKind, timers: TimerServiceKind, root: &Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.state.timer_service = timers;
    cfg.state.timer_cache_size = 8;
    cfg
}

/// (timestamp, key, namespace) of the registered timers.
type Model = BTreeSet<(i64, u64, u32)>;

fn timer_of(g: u64) -> (i64, u64, u32) {
    ((g * 37 % 1_000) as i64 - 100, g % 700, (g % 5) as u32)
}

fn register(slot: &mut Slot, model: &mut Model, from: u64, to: u64) -> R {
    for g in from..to {
        let (ts, key, ns) = timer_of(g);
        let scope = slot.scope(&key, &ns)?;
        slot.register_timer(TimeDomain::EventTime, &scope, ts)?;
        if g % 11 == 0 {
            slot.register_timer(TimeDomain::ProcessingTime, &scope, ts + 5)?;
        }
        model.insert((ts, key, ns));
    }
    Ok(())
}

fn fire(slot: &mut Slot, up_to: i64) -> R<Vec<(i64, u64, u32)>> {
    let mut t = Timer::default();
    let mut out = Vec::new();
    let mut scope = ScopeKey::new(0, 1, &[], &[]);
    while slot.poll_timer(TimeDomain::EventTime, up_to, &mut t)? {
        // The fired timer's scope, from the key group it carries, is the key's own.
        slot.rescope_timer(&mut scope, &t)?;
        assert_eq!(scope, slot.scope_raw(&t.key, &t.namespace)?);
        out.push((
            t.timestamp,
            codec::decode::<u64>(&t.key, "key")?,
            codec::decode::<u32>(&t.namespace, "ns")?,
        ));
    }
    Ok(out)
}

/// The contract's firing order of `model`'s timers: timestamp, key group, payload bytes.
fn contract_order(slot: &mut Slot, model: &Model) -> R<Vec<(i64, u64, u32)>> {
    let mut v = Vec::new();
    for &(ts, key, ns) in model {
        let kb = codec::encode(&key, "key")?;
        let nb = codec::encode(&ns, "ns")?;
        let mut p = Vec::new();
        key_format::encode_payload(&mut p, &kb, &nb);
        v.push(((ts, slot.key_group_of_bytes(&kb), p), (ts, key, ns)));
    }
    v.sort();
    Ok(v.into_iter().map(|(_, t)| t).collect())
}

fn restore(cfg: &CairnConfig, source: &str) -> R<(Checkpointer, Slot)> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(source)?)?;
    let range = cairn::KeyGroupRange::for_slot(128, 1, 0)?;
    let dest = cfg.state.working_dir.join("restore-slot-0");
    let (files, _) = cp.download_slot_files(&restored, range, &dest)?;
    let slot = Slot::builder(cfg).restore(files).open()?;
    Ok((cp, slot))
}

/// The RocksDB timers' write-back buffer in a round trip (`memory.timer-buffer-ratio`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Buffer {
    /// 0: every registration written to RocksDB.
    Off,
    /// 0.0001 of the 256 MiB budget, ~27 kB: a few hundred of the 3,000 timers stay buffered,
    /// the rest are written out (both halves in the checkpoint).
    Tiny,
    /// The default: every timer stays buffered.
    Default,
}

fn round_trip(
    (backend, timers): (BackendKind, TimerServiceKind),
    restore_timers: TimerServiceKind,
) -> R {
    round_trip_with(Buffer::Default, (backend, timers), restore_timers)
}

fn round_trip_with(
    buffer: Buffer,
    (backend, timers): (BackendKind, TimerServiceKind),
    restore_timers: TimerServiceKind,
) -> R {
    let what = format!(
        "{backend} backend, {timers} timers ({buffer:?} buffer) -> {restore_timers} timers"
    );
    let root = tempfile::tempdir()?;
    let mut cfg = config(backend, timers, root.path());
    match buffer {
        Buffer::Off => cfg.memory.timer_buffer_ratio = 0.0,
        Buffer::Tiny => cfg.memory.timer_buffer_ratio = 0.0001,
        Buffer::Default => {}
    }
    let mut slot = Slot::builder(&cfg).open()?;
    assert_eq!(slot.timer_service_kind(), timers);
    let mut model = Model::new();
    register(&mut slot, &mut model, 0, 3_000)?;
    let fired = fire(&mut slot, 300)?;
    let due: Model = model.iter().filter(|t| t.0 <= 300).copied().collect();
    assert_eq!(fired, contract_order(&mut slot, &due)?, "{what}");
    model.retain(|t| t.0 > 300);

    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let id = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(id)?;
    // Changes between the synchronous and the asynchronous phase are not in the checkpoint
    // (heap timers: copy-on-write of the key groups they touch).
    let mut later = Model::new();
    register(&mut slot, &mut later, 3_000, 4_000)?;
    fire(&mut slot, 600)?;
    cp.complete(id, vec![sync])?;
    let report = cp.reports()[0].clone();
    let meta = cp.block_on(cp.store().load(id))?;
    let timers_file = meta.slots[0]
        .private
        .iter()
        .any(|f| f.name.starts_with(TIMERS_SNAPSHOT_FILE));
    // Heap timers, and RocksDB timers' buffer, are a private file of the checkpoint.
    assert_eq!(
        timers_file,
        timers == TimerServiceKind::Heap
            || (backend == BackendKind::RocksDb && buffer != Buffer::Off),
        "{what}: {report:?}"
    );
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slot);
    drop(cp);

    let mut rcfg = cfg.clone();
    rcfg.state.timer_service = restore_timers;
    let (_cp, mut restored) = restore(&rcfg, &url)?;
    if backend == BackendKind::RocksDb && restore_timers == TimerServiceKind::Heap {
        // Drained into heap timers, RocksDB timers never serve: RocksDB keeps the buffer's
        // share of the budget.
        let reserved = restored.memory_report().timer_buffer_capacity_bytes;
        assert_eq!(reserved, 0, "{what}");
    }
    let expected = contract_order(&mut restored, &model)?;
    assert!(!expected.is_empty());
    let pt = restored.timers()?.count(TimeDomain::ProcessingTime)?;
    assert_eq!(
        pt,
        (0..3_000u64)
            .filter(|g| g % 11 == 0)
            .map(timer_of)
            .map(|t| (t.0 + 5, t.1, t.2))
            .collect::<BTreeSet<_>>()
            .len() as u64,
        "{what}"
    );
    // Firing continues exactly where the checkpoint left it.
    let mut got = fire(&mut restored, 300)?;
    assert!(
        got.is_empty(),
        "{what}: timers fired before the checkpoint fired again"
    );
    got.extend(fire(&mut restored, 700)?);
    got.extend(fire(&mut restored, i64::MAX)?);
    assert_eq!(got, expected, "{what}");
    Ok(())
}

#[test]
fn rocksdb_timers_restore_from_the_incremental_checkpoint() -> R {
    round_trip(
        (BackendKind::RocksDb, TimerServiceKind::RocksDb),
        TimerServiceKind::RocksDb,
    )
}

/// Every registration in RocksDB (no buffer), and a buffer that overflowed: part of the timers
/// in RocksDB, part in the checkpoint's buffer file.
#[test]
fn rocksdb_timers_restore_with_and_without_the_write_back_buffer() -> R {
    for buffer in [Buffer::Off, Buffer::Tiny] {
        round_trip_with(
            buffer,
            (BackendKind::RocksDb, TimerServiceKind::RocksDb),
            TimerServiceKind::RocksDb,
        )?;
    }
    Ok(())
}

#[test]
fn heap_timers_with_the_rocksdb_backend_restore() -> R {
    round_trip(
        (BackendKind::RocksDb, TimerServiceKind::Heap),
        TimerServiceKind::Heap,
    )
}

#[test]
fn heap_timers_with_the_heap_backend_restore() -> R {
    round_trip(
        (BackendKind::Heap, TimerServiceKind::Heap),
        TimerServiceKind::Heap,
    )
}

#[test]
fn timers_restore_across_timer_service_kinds() -> R {
    round_trip(
        (BackendKind::RocksDb, TimerServiceKind::Heap),
        TimerServiceKind::RocksDb,
    )?;
    // RocksDB timers to heap timers: both the column families and the buffer file.
    for buffer in [Buffer::Off, Buffer::Tiny, Buffer::Default] {
        round_trip_with(
            buffer,
            (BackendKind::RocksDb, TimerServiceKind::RocksDb),
            TimerServiceKind::Heap,
        )?;
    }
    Ok(())
}

/// User states can't take the timers' reserved operator name.
#[test]
fn the_timer_operator_name_is_reserved() -> R {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, TimerServiceKind::RocksDb, root.path());
    let mut slot = Slot::builder(&cfg).open()?;
    let e = slot
        .value_state::<u64>("_timers", "event-time")
        .err()
        .ok_or("reserved name accepted")?;
    assert!(e.to_string().contains("reserved"), "{e}");
    Ok(())
}

/// Heap backend, 2 slots -> 1 slot: each old slot's timer file is read and filtered by key group,
/// so the restored slot has every timer exactly once (timers follow their keys on rescale).
#[test]
fn heap_timers_follow_their_key_groups_when_rescaling() -> R {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, TimerServiceKind::Heap, root.path());
    let max_p = cfg.max_parallelism_for(2)?;
    let mut slots: Vec<Slot> = (0..2)
        .map(|i| Slot::builder(&cfg).slot(i, 2).open())
        .collect::<Result<_, _>>()?;
    let mut model = Model::new();
    for g in 0..2_000u64 {
        let (ts, key, ns) = timer_of(g);
        let kb = codec::encode(&key, "key")?;
        let owner = cairn::engine::keygroup::slot_for_key_group(
            cairn::engine::keygroup::assign_to_key_group(&kb, max_p),
            max_p,
            2,
        ) as usize;
        let slot = &mut slots[owner];
        let scope = slot.scope(&key, &ns)?;
        slot.register_timer(TimeDomain::EventTime, &scope, ts)?;
        model.insert((ts, key, ns));
    }
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), max_p)?;
    let id = cp.trigger_checkpoint();
    let syncs = slots
        .iter_mut()
        .map(|s| s.snapshot_for_checkpoint(id))
        .collect::<Result<Vec<_>, _>>()?;
    cp.complete(id, syncs)?;
    let url = format!("{}/chk-{id}", cp.job_url());
    drop(slots);
    drop(cp);

    let mut one = cfg.clone();
    one.state.max_parallelism = Some(max_p);
    let mut cp = Checkpointer::open(&one.checkpoint, &new_job_name(), max_p)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(&url)?)?;
    let dest = one.state.working_dir.join("restore-slot-0");
    let (files, _) = cp.download_slot_files(&restored, cairn::KeyGroupRange::all(max_p), &dest)?;
    let mut slot = Slot::builder(&one).restore(files).open()?;
    let expected = contract_order(&mut slot, &model)?;
    assert_eq!(fire(&mut slot, i64::MAX)?, expected);
    Ok(())
}

/// A timer whose key group is not the slot's gets a typed error, not a scope.
#[test]
fn rescoping_a_timer_of_another_slot_is_refused() -> R {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, TimerServiceKind::Heap, root.path());
    let max_p = cfg.max_parallelism_for(2)?;
    let slot = Slot::builder(&cfg).slot(0, 2).open()?;
    let mut scope = ScopeKey::new(0, 1, &[], &[]);
    let foreign = Timer {
        key_group: (max_p - 1) as u16,
        ..Timer::default()
    };
    let err = slot
        .rescope_timer(&mut scope, &foreign)
        .expect_err("key group of slot 1");
    assert!(
        err.to_string().contains("key group"),
        "error names the key group: {err}"
    );
    Ok(())
}

/// RocksDB timers' buffer takes its share of the budget from RocksDB's when they open (block
/// cache and write-buffer manager shrink then; `cairn-memory` tests the sizes): before, and
/// with heap timers, the slot reports no buffer capacity.
#[test]
fn the_timer_buffer_takes_its_share_when_rocksdb_timers_open() -> R {
    for kind in [TimerServiceKind::RocksDb, TimerServiceKind::Heap] {
        let root = tempfile::tempdir()?;
        let cfg = config(BackendKind::RocksDb, kind, root.path());
        let mut slot = Slot::builder(&cfg).open()?;
        assert_eq!(slot.memory_report().timer_buffer_capacity_bytes, 0);
        let scope = slot.scope(&1u64, &0u32)?;
        slot.register_timer(TimeDomain::EventTime, &scope, 10)?;
        let expected = match kind {
            TimerServiceKind::RocksDb => cfg.memory.timer_buffer_bytes(),
            TimerServiceKind::Heap => 0,
        };
        assert_eq!(
            slot.memory_report().timer_buffer_capacity_bytes,
            expected,
            "{kind}"
        );
        assert!(expected == 0 || slot.memory_report().timer_buffer_bytes > 0);
    }
    Ok(())
}
