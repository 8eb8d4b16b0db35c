//! Savepoints: canonical savepoints switch backends (heap <-> RocksDB, both ways) and slot
//! counts with every state kind, both timer domains and operator state; native savepoints
//! restore into the same backend; a savepoint is self-contained (the source job can be gone),
//! relocatable (its directory can move), never deleted by Cairn, and damaged or hostile
//! savepoints are refused with typed errors. A savepoint written by an earlier version
//! (`tests/fixtures/savepoint-v1`) restores exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cairn::{
    AggregateFunction, BackendKind, CairnConfig, CheckpointLocation, Checkpointer, ErrorKind,
    Redistribution, SavepointKind, SavepointLocation, Slot, TimeDomain, Timer, TimerServiceKind,
    VoidNamespace, create_savepoint, new_job_name, slot_for_key,
};

mod support;

use support::checkpoints::{checkpoint_slots, open_slots, restore_slots};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MAX_P: u32 = 128;

/// Averages inputs: the accumulator is (sum, count).
struct Average;

impl AggregateFunction for Average {
    type In = u64;
    type Acc = (u64, u64);
    type Out = u64;
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: &u64, acc: (u64, u64)) -> (u64, u64) {
        (acc.0 + value, acc.1 + 1)
    }
    fn get_result(&self, acc: &(u64, u64)) -> u64 {
        acc.0 / acc.1.max(1)
    }
}

/// Every kind of state of one key, in two namespaces for the value state, and its timers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyState {
    value: Option<String>,
    windowed: BTreeMap<u64, u64>,
    list: Vec<u64>,
    map: BTreeMap<String, u64>,
    sum: Option<u64>,
    average: Option<u64>,
    event_timers: BTreeSet<i64>,
    processing_timers: BTreeSet<i64>,
}

type Model = BTreeMap<u64, KeyState>;

fn config(backend: BackendKind, timers: TimerServiceKind, root: &Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.state.max_parallelism = Some(MAX_P);
    cfg.state.timer_service = timers;
    cfg.checkpoint.interval = None;
    cfg
}

/// Writes round `round` of keys `0..keys` into the slots that own them and into `model`.
/// The version-1 fixture savepoints hold what this wrote: it must not change (add a new
/// function for new tests).
fn write(slots: &mut [Slot], model: &mut Model, keys: u64, round: u64) -> R {
    let n = slots.len() as u32;
    for k in 0..keys {
        let slot = &mut slots[slot_for_key(&k, MAX_P, n)? as usize];
        let value = slot.value_state::<String>("op", "value")?;
        let list = slot.list_state::<u64>("op", "list")?;
        let map = slot.map_state::<String, u64>("op", "map")?;
        let sum = slot.reducing_state::<u64, _>("op", "sum", |a, b| a + b)?;
        let average = slot.aggregating_state("op", "average", Average)?;
        let scope = slot.scope(&k, &VoidNamespace)?;
        let m = model.entry(k).or_default();
        let v = k * 1000 + round;
        value.update(slot, &scope, &format!("key {k} round {round}"))?;
        m.value = Some(format!("key {k} round {round}"));
        list.add(slot, &scope, &v)?;
        m.list.push(v);
        map.put(slot, &scope, &format!("r{round}"), &v)?;
        m.map.insert(format!("r{round}"), v);
        if k % 4 == 0 && m.map.len() > 1 {
            let oldest = m.map.keys().next().cloned().ok_or("map")?;
            map.remove(slot, &scope, &oldest)?;
            m.map.remove(&oldest);
        }
        sum.add(slot, &scope, &v)?;
        *m.sum.get_or_insert(0) += v;
        average.add(slot, &scope, &v)?;
        let (total, count) = m.list.iter().fold((0, 0), |(s, c), x| (s + x, c + 1));
        m.average = Some(total / count);
        // A value in a window namespace.
        let window = round % 3;
        let windowed = slot.scope(&k, &window)?;
        value.update(slot, &windowed, &format!("w{v}"))?;
        m.windowed.insert(window, v);
        let ts = (k * 10 + round) as i64;
        slot.register_timer(TimeDomain::EventTime, &scope, ts)?;
        m.event_timers.insert(ts);
        if k % 2 == 0 {
            slot.register_timer(TimeDomain::ProcessingTime, &windowed, -ts)?;
            m.processing_timers.insert(-ts);
        }
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        let ops = slot.operator_state_mut();
        ops.set_list_of(
            "offsets",
            Redistribution::EvenSplit,
            &[i as u64 * 100 + round],
        )?;
        ops.broadcast_mut("rules")
            .insert(b"version".to_vec(), round.to_le_bytes().to_vec());
    }
    Ok(())
}

/// Every key of `model` reads exactly the model's state from the slot owning it, no slot holds
/// an entry the model does not place there, the timers are exactly the model's (this fires
/// them), and the operator state is the old slots' redistributed.
fn check(slots: &mut [Slot], model: &Model, old_slots: u32, round: u64, what: &str) -> R {
    let n = slots.len() as u32;
    for (k, want) in model {
        let slot = &mut slots[slot_for_key(k, MAX_P, n)? as usize];
        let value = slot.value_state::<String>("op", "value")?;
        let list = slot.list_state::<u64>("op", "list")?;
        let map = slot.map_state::<String, u64>("op", "map")?;
        let sum = slot.reducing_state::<u64, _>("op", "sum", |a, b| a + b)?;
        let average = slot.aggregating_state("op", "average", Average)?;
        let scope = slot.scope(k, &VoidNamespace)?;
        let mut windowed = BTreeMap::new();
        for w in 0..3u64 {
            let ws = slot.scope(k, &w)?;
            if let Some(s) = value.get(slot, &ws)? {
                windowed.insert(w, s.trim_start_matches('w').parse()?);
            }
        }
        let got = KeyState {
            value: value.get(slot, &scope)?,
            windowed,
            list: list.get(slot, &scope)?,
            map: map.entries(slot, &scope)?.into_iter().collect(),
            sum: sum.get(slot, &scope)?,
            average: average.get(slot, &scope)?,
            event_timers: want.event_timers.clone(),
            processing_timers: want.processing_timers.clone(),
        };
        assert_eq!(&got, want, "{what}: key {k}");
    }
    for slot in slots.iter_mut() {
        let range = slot.key_groups();
        let mut entries = 0usize;
        for id in 0..slot.states().len() as u32 {
            if slot.state_name(id).starts_with("_timers") {
                continue;
            }
            for kg in range.start..=range.end {
                entries += slot.scan_key_group(id, kg as cairn::KeyGroup)?.len();
            }
        }
        let mut want = 0usize;
        for (k, s) in model {
            if slot_for_key(k, MAX_P, n)? == slot.index().0 {
                want += 1 + s.windowed.len() + 1 + s.map.len() + 2;
            }
        }
        assert_eq!(entries, want, "{what}: entries of slot {:?}", slot.index());
    }
    for (domain, pick) in [
        (
            TimeDomain::EventTime,
            (|s: &KeyState| s.event_timers.clone()) as fn(&KeyState) -> BTreeSet<i64>,
        ),
        (TimeDomain::ProcessingTime, |s: &KeyState| {
            s.processing_timers.clone()
        }),
    ] {
        let mut fired: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
        for slot in slots.iter_mut() {
            let mut t = Timer::default();
            while slot.poll_timer(domain, i64::MAX, &mut t)? {
                let key: u64 = cairn::engine::codec::decode(&t.key, "timer key")?;
                assert_eq!(slot_for_key(&key, MAX_P, n)?, slot.index().0, "{what}");
                assert!(fired.entry(key).or_default().insert(t.timestamp), "{what}");
            }
        }
        let want: BTreeMap<u64, BTreeSet<i64>> = model
            .iter()
            .map(|(k, s)| (*k, pick(s)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        assert_eq!(fired, want, "{what}: {domain:?} timers");
    }
    // Operator state: the old offsets split over the new slots, the broadcast state everywhere.
    let mut offsets = Vec::new();
    for slot in slots.iter() {
        offsets.extend(slot.operator_state().list_of::<u64>("offsets")?);
        let rules = slot.operator_state().broadcast("rules").ok_or("rules")?;
        assert_eq!(
            rules.get(&b"version"[..]),
            Some(&round.to_le_bytes().to_vec())
        );
    }
    offsets.sort_unstable();
    let want: Vec<u64> = (0..old_slots as u64).map(|i| i * 100 + round).collect();
    assert_eq!(offsets, want, "{what}: operator state");
    Ok(())
}

/// A job of `n` slots of `cfg` with two rounds of state checkpointed below `root`: its URL
/// and model.
fn job(cfg: &CairnConfig, work: &Path, n: u32, keys: u64) -> R<(String, Model)> {
    let mut slots = open_slots(cfg, work, n, |b| b)?;
    let mut model = Model::new();
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    write(&mut slots, &mut model, keys, 1)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    write(&mut slots, &mut model, keys, 2)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    Ok((cp.job_url(), model))
}

fn savepoint_url(root: &Path, name: &str) -> String {
    format!("file://{}/{name}", root.join("savepoints").display())
}

#[test]
fn canonical_savepoints_switch_backends_both_ways_and_any_slot_count() -> R {
    let dir = tempfile::tempdir()?;
    let kinds = [
        (BackendKind::RocksDb, TimerServiceKind::RocksDb),
        (BackendKind::RocksDb, TimerServiceKind::Heap),
        (BackendKind::Heap, TimerServiceKind::Heap),
    ];
    for (i, &(from, from_timers)) in kinds.iter().enumerate() {
        let root = dir.path().join(format!("from-{i}"));
        let cfg = config(from, from_timers, &root);
        let (url, model) = job(&cfg, &root.join("job"), 3, 200)?;
        let sp = savepoint_url(&root, "sp");
        let report = create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&url)?,
            &SavepointLocation::parse(&sp)?,
            SavepointKind::Canonical,
        )?;
        assert_eq!(report.parallelism, 3);
        assert!(
            report.entries > 200 * 5 && report.timers > 200,
            "{report:?}"
        );
        for (j, &(to, to_timers)) in kinds.iter().enumerate() {
            for m in [1, 4] {
                let cfg = config(to, to_timers, &root);
                let what = format!("{from:?}/{from_timers:?} x3 -> {to:?}/{to_timers:?} x{m}");
                let (_cp, mut slots) =
                    restore_slots(&cfg, &sp, &root.join(format!("to-{j}-{m}")), m, |b| b)?;
                check(&mut slots, &model, 3, 2, &what)?;
            }
        }
    }
    Ok(())
}

#[test]
fn native_savepoints_restore_into_the_same_backend_only() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let cfg = config(BackendKind::RocksDb, TimerServiceKind::RocksDb, root);
    let (url, model) = job(&cfg, &root.join("job"), 2, 300)?;
    let sp = savepoint_url(root, "native");
    let report = create_savepoint(
        &cfg,
        &CheckpointLocation::parse(&url)?,
        &SavepointLocation::parse(&sp)?,
        SavepointKind::Native,
    )?;
    assert!(report.files > 0 && report.stored_bytes > 0, "{report:?}");
    for m in [2, 3] {
        let (_cp, mut slots) = restore_slots(&cfg, &sp, &root.join(format!("to-{m}")), m, |b| b)?;
        check(&mut slots, &model, 2, 2, &format!("native 2 -> {m}"))?;
    }
    let heap = config(BackendKind::Heap, TimerServiceKind::Heap, root);
    let Err(err) = restore_slots(&heap, &sp, &root.join("heap"), 1, |b| b) else {
        panic!("a native RocksDB savepoint opened in the heap backend");
    };
    assert!(err.to_string().contains("savepoint"), "{err}");
    Ok(())
}

/// Every file below `dir` with its content.
fn files(dir: &Path) -> R<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir)?.display().to_string(),
                    std::fs::read(&p)?,
                );
            }
        }
    }
    Ok(out)
}

#[test]
fn savepoints_are_self_contained_relocatable_and_never_deleted() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let mut cfg = config(BackendKind::RocksDb, TimerServiceKind::Heap, root);
    cfg.checkpoint.retained = 1;
    let (url, model) = job(&cfg, &root.join("job"), 2, 300)?;
    for kind in [SavepointKind::Canonical, SavepointKind::Native] {
        create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&url)?,
            &SavepointLocation::parse(&savepoint_url(root, kind.name()))?,
            kind,
        )?;
    }
    // A second savepoint at the same place is refused; the first is untouched.
    let before = files(&root.join("savepoints").join("native"))?;
    let again = create_savepoint(
        &cfg,
        &CheckpointLocation::parse(&url)?,
        &SavepointLocation::parse(&savepoint_url(root, "native"))?,
        SavepointKind::Native,
    );
    assert!(again.is_err());
    assert_eq!(files(&root.join("savepoints").join("native"))?, before);
    // The source job is gone; the savepoints move to another directory under new names.
    std::fs::remove_dir_all(root.join("checkpoints"))?;
    std::fs::create_dir_all(root.join("moved"))?;
    for kind in [SavepointKind::Canonical, SavepointKind::Native] {
        let from = root.join("savepoints").join(kind.name());
        let to = root.join("moved").join(format!("{}-renamed", kind.name()));
        std::fs::rename(&from, &to)?;
        let content = files(&to)?;
        let url = format!("file://{}", to.display());
        // Restore, then checkpoint three times with one retained (subsumption and GC run).
        let (mut cp, mut slots) = restore_slots(
            &cfg,
            &url,
            &root.join(format!("r-{}", kind.name())),
            2,
            |b| b,
        )?;
        let mut more = model.clone();
        write(&mut slots, &mut more, 50, 3)?;
        for _ in 0..3 {
            checkpoint_slots(&mut cp, &mut slots)?;
        }
        cp.gc(std::time::Duration::ZERO, true)?;
        let job = cp.job_url();
        drop((cp, slots));
        assert_eq!(files(&to)?, content, "{kind:?}: the savepoint changed");
        // The restored job's checkpoints stand alone too.
        let (_cp, mut slots) = restore_slots(
            &cfg,
            &job,
            &root.join(format!("c-{}", kind.name())),
            3,
            |b| b,
        )?;
        check(
            &mut slots,
            &more,
            2,
            3,
            &format!("{kind:?} moved, then checkpointed"),
        )?;
    }
    Ok(())
}

#[test]
fn damaged_or_hostile_savepoints_are_refused() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let cfg = config(BackendKind::Heap, TimerServiceKind::Heap, root);
    let (url, _) = job(&cfg, &root.join("job"), 1, 100)?;
    let fresh = |name: &str| -> R<std::path::PathBuf> {
        create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&url)?,
            &SavepointLocation::parse(&savepoint_url(root, name))?,
            SavepointKind::Canonical,
        )?;
        Ok(root.join("savepoints").join(name))
    };
    let open =
        |name: &str| restore_slots(&cfg, &savepoint_url(root, name), &root.join(name), 1, |b| b);
    // A flipped byte in a chunk: its checksum.
    let sp = fresh("flipped")?;
    let chunk = std::fs::read_dir(sp.join("canonical"))?
        .next()
        .ok_or("no chunk")??
        .path();
    let mut bytes = std::fs::read(&chunk)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&chunk, bytes)?;
    let err = open("flipped").err().ok_or("a damaged chunk restored")?;
    let kind = err
        .downcast_ref::<cairn::EngineError>()
        .map(|e| e.kind())
        .ok_or("not an engine error")?;
    assert_eq!(kind, ErrorKind::Corrupt, "{err}");
    // A missing chunk.
    let sp = fresh("missing")?;
    for e in std::fs::read_dir(sp.join("canonical"))? {
        std::fs::remove_file(e?.path())?;
    }
    assert!(open("missing").is_err());
    // A manifest naming an object outside the savepoint.
    let sp = fresh("hostile")?;
    let manifest = std::fs::read_to_string(sp.join("_savepoint"))?;
    let hostile = manifest.replacen("\"canonical/", "\"canonical/../../", 1);
    assert_ne!(hostile, manifest);
    std::fs::write(sp.join("_savepoint"), hostile)?;
    let err = open("hostile").err().ok_or("a hostile manifest restored")?;
    let msg = err.to_string();
    assert!(msg.contains("_savepoint") && msg.contains("../"), "{msg}");
    // No manifest: not a savepoint (and not a job either).
    let sp = fresh("uncommitted")?;
    std::fs::remove_file(sp.join("_savepoint"))?;
    assert!(open("uncommitted").is_err());
    Ok(())
}

/// The fixture savepoints of format version 1 (`tests/fixtures/savepoint-v1/`): written once by
/// `CAIRN_WRITE_FIXTURES=1 cargo test --release --test savepoint write_fixtures -- --ignored`,
/// never again. Every later version must restore them exactly.
const FIXTURE_KEYS: u64 = 40;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/savepoint-v1")
}

fn fixture_model() -> R<Model> {
    // The model is a pure function of keys and rounds: replay it without any slot.
    let dir = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, TimerServiceKind::Heap, dir.path());
    let mut slots = open_slots(&cfg, dir.path(), 2, |b| b)?;
    let mut model = Model::new();
    write(&mut slots, &mut model, FIXTURE_KEYS, 1)?;
    write(&mut slots, &mut model, FIXTURE_KEYS, 2)?;
    Ok(model)
}

#[test]
#[ignore = "writes the format fixtures; run once per format version"]
fn write_fixtures() -> R {
    if std::env::var("CAIRN_WRITE_FIXTURES").as_deref() != Ok("1") {
        return Err("set CAIRN_WRITE_FIXTURES=1 to overwrite tests/fixtures/savepoint-v1".into());
    }
    let dir = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, TimerServiceKind::RocksDb, dir.path());
    let (url, _) = job(&cfg, &dir.path().join("job"), 2, FIXTURE_KEYS)?;
    let out = fixture_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for kind in [SavepointKind::Canonical, SavepointKind::Native] {
        create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&url)?,
            &SavepointLocation::parse(&format!("file://{}/{}", out.display(), kind.name()))?,
            kind,
        )?;
    }
    Ok(())
}

#[test]
fn fixture_savepoints_of_version_1_restore_exactly() -> R {
    let model = fixture_model()?;
    let dir = tempfile::tempdir()?;
    // Copied first: a restore reads a savepoint where it is, and the fixture must stay as is.
    let copy = dir.path().join("fixtures");
    for (name, _) in files(&fixture_dir())? {
        let to = copy.join(&name);
        std::fs::create_dir_all(to.parent().ok_or("parent")?)?;
        std::fs::copy(fixture_dir().join(&name), to)?;
    }
    let cases = [
        ("canonical", BackendKind::Heap, TimerServiceKind::Heap, 3),
        (
            "canonical",
            BackendKind::RocksDb,
            TimerServiceKind::RocksDb,
            1,
        ),
        ("native", BackendKind::RocksDb, TimerServiceKind::Heap, 3),
    ];
    for (i, (name, backend, timers, m)) in cases.into_iter().enumerate() {
        let cfg = config(backend, timers, dir.path());
        let url = format!("file://{}/{name}", copy.display());
        let (_cp, mut slots) =
            restore_slots(&cfg, &url, &dir.path().join(format!("r{i}")), m, |b| b)?;
        check(
            &mut slots,
            &model,
            2,
            2,
            &format!("fixture {name} -> {backend:?} x{m}"),
        )?;
    }
    Ok(())
}

#[test]
fn the_coordinator_writes_a_requested_savepoint_from_its_checkpoint() -> R {
    use cairn::{CheckpointCoordinator, CheckpointEvent, CheckpointKind, SlotReply};
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let mut cfg = config(BackendKind::RocksDb, TimerServiceKind::RocksDb, root);
    cfg.checkpoint.retained = 1;
    let mut slots = open_slots(&cfg, &root.join("job"), 2, |b| b)?;
    let mut model = Model::new();
    let cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
    let mut coord = CheckpointCoordinator::new(cp, 2)?;
    let round =
        |coord: &mut CheckpointCoordinator, slots: &mut [Slot]| -> R<Vec<CheckpointEvent>> {
            let t = coord.poll()?.ok_or("a request triggers at the next poll")?;
            for (i, s) in slots.iter_mut().enumerate() {
                coord.acknowledge(
                    t.id,
                    i as u32,
                    SlotReply::Snapshot(s.snapshot_for_checkpoint(t.id)?),
                )?;
            }
            Ok(coord.take_events())
        };
    write(&mut slots, &mut model, 150, 1)?;
    let sp = savepoint_url(root, "from-coordinator");
    coord.request_savepoint(
        SavepointLocation::parse(&sp)?,
        SavepointKind::Canonical,
        &cfg,
    );
    let events = round(&mut coord, &mut slots)?;
    let [
        CheckpointEvent::Completed {
            id,
            kind,
            properties,
            ..
        },
        CheckpointEvent::SavepointWritten { id: sp_id, report },
    ] = events.as_slice()
    else {
        panic!("expected a completion then the savepoint: {events:?}");
    };
    assert_eq!(
        (*kind, id, properties.get("cairn.kind").map(String::as_str)),
        (CheckpointKind::Savepoint, sp_id, Some("savepoint"))
    );
    assert_eq!(report.location, sp);
    // Later checkpoints subsume its checkpoint; the savepoint stands alone.
    write(&mut slots, &mut model.clone(), 150, 2)?;
    for _ in 0..2 {
        coord.request(CheckpointKind::Forced);
        round(&mut coord, &mut slots)?;
    }
    // A savepoint at a place already taken fails; its checkpoint still completes, uncounted.
    coord.request_savepoint(SavepointLocation::parse(&sp)?, SavepointKind::Native, &cfg);
    let events = round(&mut coord, &mut slots)?;
    assert!(
        matches!(
            events.as_slice(),
            [
                CheckpointEvent::Completed { .. },
                CheckpointEvent::SavepointFailed { .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(coord.checkpointer().consecutive_failures(), 0);
    // Its checkpoint stays committed.
    let CheckpointEvent::Completed { id: last, .. } = &events[0] else {
        panic!("{events:?}");
    };
    let committed =
        support::checkpoints::committed_verified(&cfg.checkpoint.dir, coord.checkpointer().job())?;
    assert!(committed.contains(last), "{committed:?}");
    drop(slots);
    let heap = config(BackendKind::Heap, TimerServiceKind::Heap, root);
    let (_cp, mut restored) = restore_slots(&heap, &sp, &root.join("restored"), 3, |b| b)?;
    check(&mut restored, &model, 2, 1, "the coordinator's savepoint")?;
    Ok(())
}

#[test]
fn recovery_prefers_the_jobs_latest_checkpoint_over_the_savepoint_it_started_from() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let cfg = config(BackendKind::Heap, TimerServiceKind::Heap, root);
    let (url, model) = job(&cfg, &root.join("job"), 1, 50)?;
    let sp = savepoint_url(root, "start");
    create_savepoint(
        &cfg,
        &CheckpointLocation::parse(&url)?,
        &SavepointLocation::parse(&sp)?,
        SavepointKind::Canonical,
    )?;
    let started = CheckpointLocation::parse(&sp)?;
    // A job started from the savepoint fails before its first checkpoint: the savepoint.
    let (mut cp, mut slots) = restore_slots(&cfg, &sp, &root.join("a"), 1, |b| b)?;
    let job_url = cp.job_url();
    assert_eq!(
        cairn::recovery_location(&cfg.checkpoint, &job_url, Some(&started))?,
        Some(started.clone())
    );
    // After a checkpoint: that checkpoint.
    let mut more = model.clone();
    write(&mut slots, &mut more, 50, 3)?;
    checkpoint_slots(&mut cp, &mut slots)?;
    let at = cairn::recovery_location(&cfg.checkpoint, &job_url, Some(&started))?
        .ok_or("no recovery location")?;
    assert_eq!(at.checkpoint, Some(cp.reports().last().ok_or("report")?.id));
    drop((cp, slots));
    let url = format!(
        "{}/{}/chk-{}",
        at.storage_url,
        at.job,
        at.checkpoint.ok_or("id")?
    );
    let (_cp, mut slots) = restore_slots(&cfg, &url, &root.join("b"), 2, |b| b)?;
    check(
        &mut slots,
        &more,
        1,
        3,
        "recovered from the job's checkpoint",
    )?;
    // A job that never started from anything and has no checkpoint: start empty.
    let empty = format!("{}/job-none", cfg.checkpoint.dir);
    assert_eq!(
        cairn::recovery_location(&cfg.checkpoint, &empty, None)?,
        None
    );
    Ok(())
}

#[test]
fn canonical_savepoints_keep_ttl_timestamps_and_refuse_a_ttl_switch() -> R {
    use cairn::StateTtlConfig;
    use cairn::timers::ManualClock;
    use std::sync::Arc;
    use std::time::Duration;
    const T0: i64 = 1_000_000;
    let ttl = StateTtlConfig::builder(Duration::from_secs(60)).build()?;
    for (from, to) in [
        (BackendKind::RocksDb, BackendKind::Heap),
        (BackendKind::Heap, BackendKind::RocksDb),
    ] {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let cfg = config(from, TimerServiceKind::Heap, root);
        let clock = Arc::new(ManualClock::new(T0));
        let mut slot =
            open_slots(&cfg, &root.join("job"), 1, |b| b.clock(clock.clone()))?.remove(0);
        let value = slot.value_state_with_ttl::<u64>("op", "value", ttl)?;
        let list = slot.list_state_with_ttl::<u64>("op", "list", ttl)?;
        let map = slot.map_state_with_ttl::<u64, u64>("op", "map", ttl)?;
        // Keys 0..50 written at T0, keys 50..100 written 40 s later.
        for k in 0..100u64 {
            if k == 50 {
                clock.set(T0 + 40_000);
            }
            let scope = slot.scope(&k, &VoidNamespace)?;
            value.update(&mut slot, &scope, &k)?;
            list.add(&mut slot, &scope, &k)?;
            map.put(&mut slot, &scope, &k, &k)?;
        }
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
        checkpoint_slots(&mut cp, std::slice::from_mut(&mut slot))?;
        let sp = savepoint_url(root, "ttl");
        create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&cp.job_url())?,
            &SavepointLocation::parse(&sp)?,
            SavepointKind::Canonical,
        )?;
        drop(slot);
        let what = format!("{from:?} -> {to:?}");
        let cfg = config(to, TimerServiceKind::Heap, root);
        for (i, with_ttl) in [false, true].into_iter().enumerate() {
            let clock = Arc::new(ManualClock::new(T0 + 70_000));
            let work = root.join(format!("restored-{i}"));
            let (_cp, mut slots) = restore_slots(&cfg, &sp, &work, 1, |b| b.clock(clock.clone()))?;
            let mut slot = slots.remove(0);
            if !with_ttl {
                // Registering it without TTL would read timestamps as values: refused.
                let err = slot.value_state::<u64>("op", "value").err();
                assert!(
                    matches!(err, Some(cairn::EngineError::StateTtlMismatch { .. })),
                    "{what}: {err:?}"
                );
                continue;
            }
            let value = slot.value_state_with_ttl::<u64>("op", "value", ttl)?;
            let list = slot.list_state_with_ttl::<u64>("op", "list", ttl)?;
            let map = slot.map_state_with_ttl::<u64, u64>("op", "map", ttl)?;
            // At T0 + 70 s the first 50 keys (written at T0) expired; the others did not.
            for k in 0..100u64 {
                let scope = slot.scope(&k, &VoidNamespace)?;
                let live = k >= 50;
                assert_eq!(
                    value.get(&mut slot, &scope)?,
                    live.then_some(k),
                    "{what}: key {k}"
                );
                let want_list: Vec<u64> = if live { vec![k] } else { Vec::new() };
                assert_eq!(list.get(&mut slot, &scope)?, want_list, "{what}: list {k}");
                assert_eq!(
                    map.get(&mut slot, &scope, &k)?,
                    live.then_some(k),
                    "{what}: map {k}"
                );
            }
        }
    }
    Ok(())
}

/// A canonical savepoint is a full snapshot: entries of states registered with full-snapshot
/// TTL cleanup that are expired at the savepoint's time are left out (values, list elements,
/// map entries), whatever the source backend; a TTL state without that cleanup keeps them. The
/// checkpoint is taken before anything expired, so only the savepoint's cleanup can drop them;
/// the restored job reads with "return expired if not cleaned up", so anything left in would
/// be read back.
#[test]
fn canonical_savepoints_leave_out_what_expired_in_full_snapshot_cleanup_states() -> R {
    use cairn::StateTtlConfig;
    use cairn::TtlVisibility;
    use cairn::timers::ManualClock;
    use std::sync::Arc;
    use std::time::Duration;
    const T0: i64 = 1_000_000;
    let builder = || {
        // No background cleanup: only the savepoint removes anything.
        StateTtlConfig::builder(Duration::from_secs(60))
            .visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp)
            .disable_cleanup_in_background()
    };
    let full = builder().cleanup_full_snapshot().build()?;
    let plain = builder().build()?;
    for (from, to) in [
        (BackendKind::RocksDb, BackendKind::Heap),
        (BackendKind::Heap, BackendKind::RocksDb),
    ] {
        let what = format!("{from:?} -> {to:?}");
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let cfg = config(from, TimerServiceKind::Heap, root);
        let clock = Arc::new(ManualClock::new(T0));
        let mut slot =
            open_slots(&cfg, &root.join("job"), 1, |b| b.clock(clock.clone()))?.remove(0);
        let value = slot.value_state_with_ttl::<u64>("op", "value", full)?;
        let list = slot.list_state_with_ttl::<u64>("op", "list", full)?;
        let map = slot.map_state_with_ttl::<u64, u64>("op", "map", full)?;
        let kept = slot.value_state_with_ttl::<u64>("op", "kept", plain)?;
        // At T0 every key; 40 s later keys 50..100 again (a new value, list element and map
        // entry; the T0 element and entry keep their T0 timestamps).
        for k in 0..100u64 {
            let scope = slot.scope(&k, &VoidNamespace)?;
            value.update(&mut slot, &scope, &k)?;
            list.add(&mut slot, &scope, &k)?;
            map.put(&mut slot, &scope, &k, &k)?;
            kept.update(&mut slot, &scope, &k)?;
        }
        clock.set(T0 + 40_000);
        for k in 50..100u64 {
            let scope = slot.scope(&k, &VoidNamespace)?;
            value.update(&mut slot, &scope, &(k + 1))?;
            list.add(&mut slot, &scope, &(k + 1000))?;
            map.put(&mut slot, &scope, &(k + 1000), &k)?;
        }
        // The checkpoint at T0 + 40 s: nothing expired yet (a heap snapshot drops nothing).
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), MAX_P)?;
        checkpoint_slots(&mut cp, std::slice::from_mut(&mut slot))?;
        drop(slot);
        // The savepoint at T0 + 70 s: everything written at T0 expired.
        let sp = savepoint_url(root, "ttl-full");
        let report = cairn::create_savepoint_with_clock(
            &cfg,
            &CheckpointLocation::parse(&cp.job_url())?,
            &SavepointLocation::parse(&sp)?,
            SavepointKind::Canonical,
            Arc::new(cairn::snapshot::ManualClock::new((T0 + 70_000) as u64)),
        )?;
        // 50 values, 50 + 50 list elements, 50 + 50 map entries.
        assert_eq!(report.expired, 250, "{what}: {report:?}");
        let cfg = config(to, TimerServiceKind::Heap, root);
        let clock = Arc::new(ManualClock::new(T0 + 70_000));
        let work = root.join("restored");
        let (_cp, mut slots) = restore_slots(&cfg, &sp, &work, 1, |b| b.clock(clock.clone()))?;
        let mut slot = slots.remove(0);
        let value = slot.value_state_with_ttl::<u64>("op", "value", full)?;
        let list = slot.list_state_with_ttl::<u64>("op", "list", full)?;
        let map = slot.map_state_with_ttl::<u64, u64>("op", "map", full)?;
        let kept = slot.value_state_with_ttl::<u64>("op", "kept", plain)?;
        for k in 0..100u64 {
            let scope = slot.scope(&k, &VoidNamespace)?;
            let renewed = k >= 50;
            assert_eq!(
                value.get(&mut slot, &scope)?,
                renewed.then_some(k + 1),
                "{what}: value {k}"
            );
            let want: Vec<u64> = if renewed { vec![k + 1000] } else { vec![] };
            assert_eq!(list.get(&mut slot, &scope)?, want, "{what}: list {k}");
            let want: Vec<(u64, u64)> = if renewed { vec![(k + 1000, k)] } else { vec![] };
            assert_eq!(map.entries(&mut slot, &scope)?, want, "{what}: map {k}");
            // Without full-snapshot cleanup the expired value travelled (and is read once).
            assert_eq!(kept.get(&mut slot, &scope)?, Some(k), "{what}: kept {k}");
        }
    }
    Ok(())
}

#[test]
fn a_savepoint_never_goes_into_a_job_directory_and_a_native_manifest_cannot_point_outside() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let cfg = config(BackendKind::RocksDb, TimerServiceKind::RocksDb, root);
    let (url, model) = job(&cfg, &root.join("job"), 1, 100)?;
    let job_name = url.rsplit('/').next().ok_or("job")?.to_string();
    let before = files(&root.join("checkpoints").join(&job_name))?;
    // Into the job's own directory (its objects would become the savepoint's, and a failed
    // write's cleanup would delete them): refused before anything is written.
    for kind in [SavepointKind::Native, SavepointKind::Canonical] {
        let err = create_savepoint(
            &cfg,
            &CheckpointLocation::parse(&url)?,
            &SavepointLocation::parse(&url)?,
            kind,
        )
        .err()
        .ok_or("a savepoint went into a job directory")?;
        assert!(err.to_string().contains("not empty"), "{err}");
    }
    assert_eq!(files(&root.join("checkpoints").join(&job_name))?, before);
    support::checkpoints::committed_verified(&cfg.checkpoint.dir, &job_name)?;
    // A native manifest whose checkpoint names an object outside the savepoint is refused.
    let sp = savepoint_url(root, "native");
    create_savepoint(
        &cfg,
        &CheckpointLocation::parse(&url)?,
        &SavepointLocation::parse(&sp)?,
        SavepointKind::Native,
    )?;
    let path = root.join("savepoints").join("native").join("_savepoint");
    let manifest = std::fs::read_to_string(&path)?;
    let hostile = manifest.replacen("\"shared/", &format!("\"../{job_name}/shared/"), 1);
    assert_ne!(hostile, manifest);
    std::fs::write(&path, hostile)?;
    assert!(restore_slots(&cfg, &sp, &root.join("hostile"), 1, |b| b).is_err());
    std::fs::write(&path, manifest)?;
    let (_cp, mut slots) = restore_slots(&cfg, &sp, &root.join("whole"), 1, |b| b)?;
    check(&mut slots, &model, 1, 2, "native, manifest restored")?;
    Ok(())
}
