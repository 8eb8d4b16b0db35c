//! Real crashes: a child `cairn run` checkpoints every 200 ms and is killed with SIGKILL at
//! pseudo-random moments. After each kill the latest committed checkpoint verifies (deep) and
//! restores to a state consistent with the position it was taken at (the update workload adds
//! exactly 1 per record, so the counters sum to the position), and orphan collection leaves no
//! unreferenced file. Each round continues from the previous round's latest checkpoint.
//!
//! Rounds rotate the child's write-back state cache: the default, a tiny one that evicts and
//! writes back on nearly every record, and none.
//!
//! `CAIRN_CRASH_ROUNDS` sets the number of rounds (default 20).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn::engine::checkpoint::{Checkpointer, RestoreSource, new_job_name};
use cairn::{BackendKind, CairnConfig, KeyGroupRange, Slot, VoidNamespace};
use cairn_snapshot::{CheckpointStorage, CheckpointStore, StorageOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEYS: u64 = 5000;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn jobs(cp_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cp_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Restores `job/chk-id` and returns the sum of all counters.
fn restored_sum(
    root: &Path,
    cp_url: &str,
    job: &str,
    id: u64,
    round: u32,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.working_dir = root.join(format!("verify-work-{round}"));
    cfg.checkpoint.dir = format!("{}/verify-cp", root.display());
    let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
    let restored =
        cp.prepare_restore(&RestoreSource::parse(&format!("{cp_url}/{job}/chk-{id}"))?)?;
    std::fs::create_dir_all(&cfg.state.working_dir)?;
    let (files, _) = cp.download_for_slot(
        &restored,
        KeyGroupRange::for_slot(128, 1, 0)?,
        &cfg.state.working_dir.join("restore"),
    )?;
    let mut slot = Slot::builder(&cfg).restore(files).open()?;
    let count = slot.value_state::<u64>("counter", "count")?;
    let mut sum = 0;
    for k in 0..KEYS {
        let scope = slot.scope(&k, &VoidNamespace)?;
        sum += count.get(&mut slot, &scope)?.unwrap_or(0);
    }
    drop(slot);
    std::fs::remove_dir_all(&cfg.state.working_dir)?;
    Ok(sum)
}

#[test]
fn kill_9_during_checkpoints_never_loses_committed_state() -> TestResult {
    let rounds: u32 = std::env::var("CAIRN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let root = tempfile::tempdir()?;
    let cp_dir = root.path().join("checkpoints");
    std::fs::create_dir_all(&cp_dir)?;
    let cp_url = format!("file://{}", cp_dir.display());
    let storage = CheckpointStorage::from_url(&cp_url, &StorageOptions::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut previous: Option<(String, u64)> = None;
    let (mut committed_rounds, mut restores) = (0, 0);
    for round in 0..rounds {
        let before = jobs(&cp_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["run", "--workload", "update", "--records", "1000000000"])
            .args(["--keys", &KEYS.to_string()])
            .args([
                "--checkpoint-interval",
                "200ms",
                "--checkpoint-dir",
                &cp_url,
            ])
            .arg("--working-dir")
            .arg(root.path().join("work"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((job, id)) = &previous {
            cmd.args(["--restore-from", &format!("{cp_url}/{job}/chk-{id}")]);
        }
        match round % 3 {
            0 => {}
            1 => {
                cmd.args(["--state-cache-ratio", "0.0001", "--max-dirty-ratio", "0.5"]);
            }
            _ => {
                cmd.args(["--state-cache-ratio", "0"]);
            }
        }
        let mut child = cmd.spawn()?;
        let delay = 300 + mix64(u64::from(round) + 1) % 1200;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill()?; // SIGKILL
        child.wait()?;

        let new_jobs: Vec<String> = jobs(&cp_dir)
            .into_iter()
            .filter(|j| !before.contains(j))
            .collect();
        let Some(job) = new_jobs.first() else {
            continue; // killed before it created its job directory
        };
        let store = rt.block_on(CheckpointStore::open_read_only(storage.clone(), job))?;
        let ids = rt.block_on(store.committed_ids())?;
        let Some(&latest) = ids.last() else {
            continue; // killed before its first checkpoint committed
        };
        committed_rounds += 1;
        let problems = rt.block_on(store.verify(&[latest], true))?;
        assert!(problems.is_empty(), "round {round}: {problems:?}");
        let meta = rt.block_on(store.load(latest))?;
        let position: u64 = meta
            .properties
            .get("position")
            .ok_or("checkpoint has no position property")?
            .parse()?;
        assert_eq!(
            restored_sum(root.path(), &cp_url, job, latest, round)?,
            position,
            "round {round}: restored counters do not sum to the checkpoint's position"
        );
        restores += 1;

        // Collect orphans (uploads of the killed in-flight checkpoint); afterwards nothing is
        // unreferenced and the retained checkpoints still verify.
        let gc_store = rt.block_on(CheckpointStore::open(storage.clone(), job, usize::MAX))?;
        rt.block_on(gc_store.gc(Duration::ZERO, true))?;
        let after = rt.block_on(gc_store.gc(Duration::ZERO, false))?;
        assert!(
            after.orphans.is_empty(),
            "round {round}: leaked {:?}",
            after.orphans
        );
        let ids = rt.block_on(gc_store.committed_ids())?;
        let problems = rt.block_on(gc_store.verify(&ids, false))?;
        assert!(problems.is_empty(), "round {round} after gc: {problems:?}");
        previous = Some((job.clone(), latest));
    }
    eprintln!(
        "{rounds} rounds, {committed_rounds} with committed checkpoints, {restores} restores verified"
    );
    assert!(
        committed_rounds >= rounds / 2,
        "too few rounds committed a checkpoint: {committed_rounds}/{rounds}"
    );
    Ok(())
}
