//! Local recovery (`checkpoint.local-recovery`) on real RocksDB and the heap backend: a restore
//! uses the slot's local snapshot when it is the restored checkpoint and verifies, falls back to
//! storage when it is missing, damaged (one flipped byte) or of another checkpoint, and either
//! way the restored state equals a model of the state at the checkpoint. Stale local snapshots
//! are removed.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn::engine::checkpoint::{
    CheckpointLocation, Checkpointer, FileVerify, RestoredVia, SlotRestoreReport, new_job_name,
};
use cairn::{BackendKind, CairnConfig, KeyGroupRange, Slot, VoidNamespace};

mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Model = BTreeMap<u64, String>;

const KEYS: u64 = 3000;

fn config(backend: BackendKind, root: &Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.checkpoint.local_recovery = true;
    cfg
}

fn write(slot: &mut Slot, model: &mut Model, round: u64) -> TestResult {
    let v = slot.value_state::<String>("op", "v")?;
    for k in 0..KEYS {
        let scope = slot.scope(&k, &VoidNamespace)?;
        if (k + round).is_multiple_of(11) && round > 0 {
            v.clear(slot, &scope)?;
            model.remove(&k);
        } else if (k + round).is_multiple_of(4) || round == 0 {
            let val = format!("{k}-{round}-{}", "x".repeat((k % 50) as usize));
            v.update(slot, &scope, &val)?;
            model.insert(k, val);
        }
    }
    Ok(())
}

fn read_back(slot: &mut Slot) -> Result<Model, Box<dyn std::error::Error>> {
    let v = slot.value_state::<String>("op", "v")?;
    let mut m = Model::new();
    for k in 0..KEYS {
        let scope = slot.scope(&k, &VoidNamespace)?;
        if let Some(x) = v.get(slot, &scope)? {
            m.insert(k, x);
        }
    }
    Ok(m)
}

/// Runs a job for `rounds` checkpoints, then writes more (not checkpointed). Returns the job's
/// URL, the last checkpoint id and the model at it.
fn run_job(
    cfg: &CairnConfig,
    rounds: u64,
) -> Result<(String, u64, Model), Box<dyn std::error::Error>> {
    let mut slot = Slot::builder(cfg).open()?;
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let mut model = Model::new();
    let mut id = 0;
    for r in 0..rounds {
        write(&mut slot, &mut model, r)?;
        id = cp.trigger_checkpoint();
        let sync = slot.snapshot_for_checkpoint(id)?;
        let rep = cp.complete(id, vec![sync])?;
        assert_eq!(rep.kept_locally, cfg.checkpoint.local_recovery);
    }
    let at_checkpoint = model.clone();
    write(&mut slot, &mut model, rounds)?;
    assert_ne!(model, at_checkpoint);
    Ok((cp.job_url(), id, at_checkpoint))
}

/// Restores `job_url` (its latest checkpoint) into slot 0 of `cfg`'s working directory, the way
/// `cairn run --restore-from` does, and returns the report and the restored state.
fn restore(
    cfg: &CairnConfig,
    job_url: &str,
) -> Result<(SlotRestoreReport, Model), Box<dyn std::error::Error>> {
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored = cp.resume_from(&CheckpointLocation::parse(job_url)?)?;
    let slot_dir = cfg.state.working_dir.join("slot-0");
    let dest = cfg.state.working_dir.join("restore-slot-0");
    let range = KeyGroupRange::for_slot(128, 1, 0)?;
    let (files, report) = cp.fetch_slot_files(&restored, range, &slot_dir, &dest)?;
    let mut slot = Slot::builder(cfg).restore(files).open()?;
    let state = read_back(&mut slot)?;
    // The restored slot checkpoints on (its SSTs may be links into the local snapshot).
    let id = cp.trigger_checkpoint();
    let sync = slot.snapshot_for_checkpoint(id)?;
    cp.complete(id, vec![sync])?;
    let _ = std::fs::remove_dir_all(&dest);
    Ok((report, state))
}

fn local_snapshot(cfg: &CairnConfig, id: u64) -> PathBuf {
    cfg.state
        .working_dir
        .join("slot-0")
        .join("local-recovery")
        .join(format!("chk-{id}"))
}

fn local_entries(cfg: &CairnConfig) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(cfg.state.working_dir.join("slot-0").join("local-recovery"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
    v.sort();
    v
}

/// The largest file of `dir` ending in `suffix`.
fn largest(dir: &Path, suffix: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let len = e.metadata()?.len();
        if e.file_name().to_string_lossy().ends_with(suffix)
            && best.as_ref().is_none_or(|(l, _)| len > *l)
        {
            best = Some((len, e.path()));
        }
    }
    Ok(best.ok_or("no such file")?.1)
}

/// Flips one byte in the middle of `path`, in place.
fn flip_byte(path: &Path) -> TestResult {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mid = f.metadata()?.len() / 2;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(mid))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(mid))?;
    f.write_all(&b)?;
    Ok(())
}

#[test]
fn rocksdb_restores_from_a_valid_local_snapshot() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let (job_url, id, model) = run_job(&cfg, 3)?;
    // Only the last completed checkpoint is kept.
    assert_eq!(local_entries(&cfg), vec![format!("chk-{id}")]);
    let (report, state) = restore(&cfg, &job_url)?;
    assert_eq!(report.path, RestoredVia::Local, "{report:?}");
    assert!(report.local_rejected.is_none());
    assert!(report.bytes > 0);
    assert_eq!(state, model);
    Ok(())
}

#[test]
fn heap_restores_from_a_valid_local_snapshot() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, root.path());
    let (job_url, _, model) = run_job(&cfg, 2)?;
    let (report, state) = restore(&cfg, &job_url)?;
    assert_eq!(report.path, RestoredVia::Local, "{report:?}");
    assert_eq!(state, model);
    Ok(())
}

#[test]
fn missing_local_snapshot_falls_back_to_storage() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let (job_url, id, model) = run_job(&cfg, 2)?;
    std::fs::remove_dir_all(local_snapshot(&cfg, id))?;
    let (report, state) = restore(&cfg, &job_url)?;
    assert_eq!(report.path, RestoredVia::Remote, "{report:?}");
    let why = report.local_rejected.unwrap_or_default();
    assert!(why.contains("no complete local snapshot"), "{why}");
    assert_eq!(state, model);
    Ok(())
}

#[test]
fn corrupt_local_snapshot_falls_back_to_storage() -> TestResult {
    for (file, verify) in [
        (".sst", FileVerify::Sha256),
        ("MANIFEST", FileVerify::Sha256),
    ] {
        let root = tempfile::tempdir()?;
        let mut cfg = config(BackendKind::RocksDb, root.path());
        cfg.checkpoint.local_recovery_verify = verify;
        let (job_url, id, model) = run_job(&cfg, 2)?;
        let snap = local_snapshot(&cfg, id);
        let victim = if file == ".sst" {
            largest(&snap, ".sst")?
        } else {
            std::fs::read_dir(&snap)?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(file))
                .ok_or("no MANIFEST")?
                .path()
        };
        // The local SSTs are hard links of the live database's files, which is closed now;
        // storage holds its own copy.
        flip_byte(&victim)?;
        let (report, state) = restore(&cfg, &job_url)?;
        assert_eq!(report.path, RestoredVia::Remote, "{file}: {report:?}");
        let why = report.local_rejected.unwrap_or_default();
        assert!(why.contains("sha256"), "{file}: {why}");
        assert_eq!(state, model, "{file}");
    }
    Ok(())
}

/// `local-recovery-verify = "size"` reads no file: a truncated file is still caught by its
/// size, and the restore falls back.
#[test]
fn size_only_check_catches_a_truncated_file() -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::RocksDb, root.path());
    cfg.checkpoint.local_recovery_verify = FileVerify::Size;
    let (job_url, id, model) = run_job(&cfg, 2)?;
    let victim = largest(&local_snapshot(&cfg, id), ".sst")?;
    let len = std::fs::metadata(&victim)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)?
        .set_len(len - 1)?;
    let (report, state) = restore(&cfg, &job_url)?;
    assert_eq!(report.path, RestoredVia::Remote, "{report:?}");
    assert!(report.local_rejected.unwrap_or_default().contains("bytes"));
    assert_eq!(state, model);
    Ok(())
}

/// A local snapshot of an older checkpoint than the one restored is not used.
#[test]
fn local_snapshot_of_another_checkpoint_is_not_used() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let mut cfg_retain = cfg.clone();
    cfg_retain.checkpoint.retained = 3;
    let (job_url, id, _) = run_job(&cfg_retain, 3)?;
    // Restore the previous checkpoint: the local snapshot is of the latest one.
    let older = format!("{job_url}/chk-{}", id - 1);
    let (report, _) = restore(&cfg_retain, &older)?;
    assert_eq!(report.path, RestoredVia::Remote, "{report:?}");
    assert!(
        report
            .local_rejected
            .unwrap_or_default()
            .contains(&format!("chk-{}", id - 1))
    );
    Ok(())
}

/// Stale local snapshots go: a checkpoint replaces the previous one (and anything left by a
/// crash), and with local recovery turned off the directory is removed.
#[test]
fn stale_local_snapshots_are_removed() -> TestResult {
    let root = tempfile::tempdir()?;
    let cfg = config(BackendKind::RocksDb, root.path());
    let (_, id, _) = run_job(&cfg, 1)?;
    // Plant what a crash between rename and marker would leave.
    let crash = cfg
        .state
        .working_dir
        .join("slot-0")
        .join("local-recovery")
        .join("chk-99");
    std::fs::create_dir_all(&crash)?;
    std::fs::write(crash.join("000001.sst"), b"partial")?;
    assert_eq!(local_entries(&cfg).len(), 2);
    let (_, id2, _) = run_job(&cfg, 1)?;
    assert_eq!(id2, id);
    assert_eq!(local_entries(&cfg), vec![format!("chk-{id2}")]);
    let mut off = cfg.clone();
    off.checkpoint.local_recovery = false;
    run_job(&off, 1)?;
    assert!(local_entries(&off).is_empty());
    assert!(
        !off.state
            .working_dir
            .join("slot-0")
            .join("local-recovery")
            .exists()
    );
    Ok(())
}

/// The local snapshot directory is untrusted too: a file or the snapshot directory itself
/// replaced by a symbolic link (here to an identical copy outside the slot directory, so sizes
/// and hashes still match) is never followed: the restore falls back to storage, and the
/// outside files are untouched.
#[test]
fn symbolic_links_in_a_local_snapshot_are_never_followed() -> TestResult {
    use std::os::unix::fs::symlink;
    for link_the_dir in [false, true] {
        let root = tempfile::tempdir()?;
        let cfg = config(BackendKind::RocksDb, root.path());
        let (job_url, id, model) = run_job(&cfg, 2)?;
        let snap = local_snapshot(&cfg, id);
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside)?;
        if link_the_dir {
            let copy = outside.join("snapshot");
            std::fs::create_dir_all(&copy)?;
            for e in std::fs::read_dir(&snap)? {
                let e = e?;
                std::fs::copy(e.path(), copy.join(e.file_name()))?;
            }
            std::fs::remove_dir_all(&snap)?;
            symlink(&copy, &snap)?;
        } else {
            let sst = largest(&snap, ".sst")?;
            let copy = outside.join("copy.sst");
            std::fs::copy(&sst, &copy)?;
            std::fs::remove_file(&sst)?;
            symlink(&copy, &sst)?;
        }
        let before: Vec<(PathBuf, u64)> = std::fs::read_dir(&outside)?
            .flatten()
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        let (report, state) = restore(&cfg, &job_url)?;
        assert_eq!(
            report.path,
            RestoredVia::Remote,
            "link_the_dir={link_the_dir}: a symbolic link was followed: {report:?}"
        );
        let why = report.local_rejected.unwrap_or_default();
        assert!(why.contains("symbolic link"), "{why}");
        assert_eq!(state, model);
        let after: Vec<(PathBuf, u64)> = std::fs::read_dir(&outside)?
            .flatten()
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        assert_eq!(before, after);
    }
    Ok(())
}

/// The marker records the storage: a local snapshot of a same-named job and checkpoint id in
/// other storage is not used, even when its files have the sizes this checkpoint records
/// (heap snapshots of equal-length values; `local-recovery-verify = "size"`).
#[test]
fn a_local_snapshot_from_other_storage_is_not_used() -> TestResult {
    let root = tempfile::tempdir()?;
    let mut cfg = config(BackendKind::Heap, root.path());
    cfg.checkpoint.local_recovery_verify = FileVerify::Size;
    let job = new_job_name();
    // The same job name and checkpoint id in two storages, with different values of one length.
    let run = |dir: &str, value: char| -> Result<(String, u64), Box<dyn std::error::Error>> {
        let mut c = cfg.clone();
        c.checkpoint.dir = format!("file://{}", root.path().join(dir).display());
        let mut slot = Slot::builder(&c).open()?;
        let v = slot.value_state::<String>("op", "v")?;
        for k in 0..KEYS {
            let scope = slot.scope(&k, &VoidNamespace)?;
            v.update(&mut slot, &scope, &value.to_string().repeat(8))?;
        }
        let mut cp = Checkpointer::open(&c.checkpoint, &job, 128)?;
        let id = cp.trigger_checkpoint();
        let sync = slot.snapshot_for_checkpoint(id)?;
        cp.complete(id, vec![sync])?;
        Ok((c.checkpoint.dir.clone(), id))
    };
    let (dir_a, id_a) = run("cp-a", 'a')?;
    let (dir_b, id_b) = run("cp-b", 'b')?;
    assert_eq!(id_a, id_b);
    // The slot's local snapshot is now job/chk-1 of storage B; restore job/chk-1 of A.
    let mut c = cfg.clone();
    c.checkpoint.dir = dir_a.clone();
    let (report, state) = restore(&c, &format!("{dir_a}/{job}"))?;
    assert_eq!(
        report.path,
        RestoredVia::Remote,
        "the local snapshot of {dir_b} was used for {dir_a}: {report:?}"
    );
    assert!(
        report
            .local_rejected
            .unwrap_or_default()
            .contains("storage"),
        "the rejection does not name the storage"
    );
    assert!(
        state.values().all(|v| v == "aaaaaaaa"),
        "restored the wrong storage's state"
    );
    Ok(())
}
