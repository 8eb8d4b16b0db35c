//! `cairn run --local-recovery` end to end with the built binary and two slots: a restore from
//! the same working directory takes the local path for every slot, a slot whose local snapshot
//! is gone falls back to storage (and says why), and the final state's checksum is the same
//! whichever path each slot took.

use std::path::Path;
use std::process::Command;

use cairn::engine::checkpoint::RestoreFetch;
use serde_json::Value;

#[path = "../../tests/support/mod.rs"]
mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `cairn run` with checkpoints and local recovery in `dir`; returns the JSON summary.
fn run(dir: &Path, name: &str, extra: &[&str]) -> Result<Value, Box<dyn std::error::Error>> {
    let json = dir.join(format!("{name}.json"));
    let work = dir.join("work");
    let checkpoints = dir.join("checkpoints");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args([
            "--records",
            "30000",
            "--keys",
            "3000",
            "--slots",
            "2",
            "--memory",
            "16MiB",
            "--checkpoint-interval",
            "100ms",
            "--local-recovery",
        ])
        .arg("--working-dir")
        .arg(&work)
        .arg("--checkpoint-dir")
        .arg(&checkpoints)
        .arg("--json")
        .arg(&json)
        .args(extra)
        // Restores fetch in the mode under test (see `tests/support/mod.rs`).
        .args(support::restore_fetch_args())
        .env_remove("RUST_LOG")
        .output()?;
    assert!(
        out.status.success(),
        "cairn run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&std::fs::read(json)?)?)
}

fn paths(v: &Value) -> Vec<String> {
    v["restored_from"]["slots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["path"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_restores_locally_and_falls_back_per_slot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = run(dir.path(), "first", &[])?;
    let digest = first["checksum"]["digest"].clone();
    assert!(!digest.is_null());
    let checkpoints = first["checkpoints"].as_array().ok_or("no checkpoints")?;
    assert!(checkpoints.iter().all(|c| c["kept_locally"] == true));
    let job = first["job_url"].as_str().ok_or("no job_url")?.to_string();

    // Same working directory: both slots restore from their local snapshots.
    let second = run(dir.path(), "second", &["--restore-from", &job])?;
    assert_eq!(
        paths(&second),
        vec!["local", "local"],
        "{}",
        second["restored_from"]
    );
    assert_eq!(second["checksum"]["digest"], digest);

    // Slot 1 lost its local snapshot: it downloads, slot 0 still restores locally.
    std::fs::remove_dir_all(dir.path().join("work/slot-1/local-recovery"))?;
    let job2 = second["job_url"].as_str().ok_or("no job_url")?.to_string();
    let third = run(dir.path(), "third", &["--restore-from", &job2])?;
    assert_eq!(
        paths(&third),
        vec!["local", "remote"],
        "{}",
        third["restored_from"]
    );
    let why = third["restored_from"]["slots"][1]["local_rejected"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("no complete local snapshot"), "{why}");
    // A local snapshot is placed whole; the download is lazy in the lazy mode.
    let lazy = support::restore_fetch() == RestoreFetch::Lazy;
    let slots = &third["restored_from"]["slots"];
    assert_eq!(slots[0]["lazy"], false, "{slots}");
    assert_eq!(slots[1]["lazy"], lazy, "{slots}");
    assert_eq!(third["checksum"]["digest"], digest);
    Ok(())
}
