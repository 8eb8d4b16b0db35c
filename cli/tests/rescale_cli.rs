//! `cairn run --restore-from <job> --slots M` with the built binary: a RocksDB run of 2 slots
//! restored into 3 and into 1 ends with the state of the run without the restore (the
//! checksum does not depend on the slot count), and the summary says how each new slot got its
//! key groups (base, ingested, inserted).

use std::path::Path;
use std::process::Command;

use cairn::engine::checkpoint::RestoreFetch;
use serde_json::Value;

#[path = "../../tests/support/mod.rs"]
mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `cairn run` (update workload, RocksDB, checkpoints) with `slots` slots in `dir`.
fn run(
    dir: &Path,
    name: &str,
    slots: &str,
    extra: &[&str],
) -> Result<Value, Box<dyn std::error::Error>> {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args([
            "--workload",
            "update",
            "--backend",
            "rocksdb",
            "--records",
            "40000",
            "--keys",
            "4000",
            "--slots",
            slots,
            "--memory",
            "16MiB",
            "--checkpoint-interval",
            "100ms",
        ])
        .arg("--working-dir")
        .arg(dir.join(format!("work-{name}")))
        .arg("--checkpoint-dir")
        .arg(dir.join("checkpoints"))
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

#[test]
fn run_rescales_a_rocksdb_checkpoint_and_reports_each_slots_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = run(dir.path(), "first", "2", &[])?;
    let digest = first["checksum"]["digest"].clone();
    assert!(!digest.is_null());
    let job = first["job_url"].as_str().ok_or("no job_url")?.to_string();
    for slots in ["3", "1"] {
        let v = run(
            dir.path(),
            &format!("into-{slots}"),
            slots,
            &["--restore-from", &job],
        )?;
        assert_eq!(v["checksum"]["digest"], digest, "2 -> {slots}: final state");
        let restored = v["restored_from"]["slots"].as_array().ok_or("no restore")?;
        assert_eq!(restored.len().to_string(), slots);
        let lazy = support::restore_fetch() == RestoreFetch::Lazy;
        for (i, s) in restored.iter().enumerate() {
            // Each new slot opens its base as the mode under test says.
            assert_eq!(s["lazy"], lazy, "2 -> {slots}: slot {i}: {s}");
            let parts = s["rescale"]["parts"]
                .as_array()
                .ok_or_else(|| format!("2 -> {slots}: slot {i} has no rescale report: {s}"))?;
            assert_eq!(parts[0]["path"], "base", "2 -> {slots}: slot {i}");
            for p in &parts[1..] {
                assert!(
                    p["path"] == "ingest" || p["path"] == "insert",
                    "2 -> {slots}: slot {i}: {p}"
                );
            }
        }
        // 2 -> 1: the one slot takes both old slots; 2 -> 3: the middle one too.
        let merged: usize = restored
            .iter()
            .map(|s| s["rescale"]["parts"].as_array().map_or(0, |p| p.len() - 1))
            .sum();
        assert!(merged >= 1, "2 -> {slots}: nothing merged");
    }
    Ok(())
}
