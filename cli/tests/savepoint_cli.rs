//! `cairn run --savepoint` (stop with a savepoint), `cairn savepoint create|inspect` and
//! `cairn run --restore-from <savepoint>` with the built binary: a RocksDB run's canonical
//! savepoint restores into the heap backend with another slot count and ends with the state of
//! the run itself (the checksum does not depend on backend or slot count); a native savepoint
//! made from the job's checkpoint restores into RocksDB; bad input exits 2.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

#[path = "../../tests/support/mod.rs"]
mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cairn(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
}

/// `cairn run` of the update workload in `dir` (its summary JSON); `extra` flags last.
fn run(dir: &Path, name: &str, extra: &[&str]) -> Result<Value, Box<dyn std::error::Error>> {
    let json = dir.join(format!("{name}.json"));
    let work = dir.join(format!("work-{name}"));
    let checkpoints = dir.join("checkpoints");
    let mut args = vec![
        "run",
        "--workload",
        "update",
        "--records",
        "30000",
        "--keys",
        "3000",
        "--memory",
        "16MiB",
        "--checkpoint-interval",
        "100ms",
    ];
    let (work, checkpoints, json_s) = (
        work.display().to_string(),
        checkpoints.display().to_string(),
        json.display().to_string(),
    );
    args.extend([
        "--working-dir",
        &work,
        "--checkpoint-dir",
        &checkpoints,
        "--json",
        &json_s,
    ]);
    args.extend(extra);
    // Restores fetch in the mode under test (see `tests/support/mod.rs`).
    let fetch = support::restore_fetch_args();
    args.extend(fetch.iter().map(String::as_str));
    let out = cairn(&args)?;
    assert!(
        out.status.success(),
        "cairn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&std::fs::read(json)?)?)
}

#[test]
fn a_savepoint_moves_a_job_between_backends_and_slot_counts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sp = format!("file://{}/savepoints/final", dir.path().display());
    let first = run(
        dir.path(),
        "first",
        &["--backend", "rocksdb", "--slots", "2", "--savepoint", &sp],
    )?;
    let digest = first["checksum"]["digest"].clone();
    assert!(!digest.is_null());
    assert_eq!(
        first["savepoint"]["kind"], "canonical",
        "{}",
        first["savepoint"]
    );
    assert_eq!(first["savepoint"]["location"], sp.as_str());
    let inspect = cairn(&["savepoint", "inspect", &sp])?;
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success() && text.contains("canonical") && text.contains("rocksdb"),
        "{text}"
    );
    // Canonical: into the heap backend, 3 slots. No records left: the state is the savepoint's.
    let heap = run(
        dir.path(),
        "heap",
        &["--backend", "heap", "--slots", "3", "--restore-from", &sp],
    )?;
    assert_eq!(
        heap["checksum"]["digest"], digest,
        "rocksdb x2 -> savepoint -> heap x3"
    );
    let source = heap["restored_from"]["source"].as_str().unwrap_or_default();
    assert!(source.starts_with("savepoint "), "{source}");
    // Native, from the first job's latest checkpoint: into RocksDB, 1 slot.
    let job = first["job_url"].as_str().ok_or("no job_url")?;
    let native = format!("file://{}/savepoints/native", dir.path().display());
    let out = cairn(&[
        "savepoint",
        "create",
        job,
        &native,
        "--format",
        "native",
        "--json",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["kind"], "native");
    let rocks = run(
        dir.path(),
        "rocks",
        &[
            "--backend",
            "rocksdb",
            "--slots",
            "1",
            "--restore-from",
            &native,
        ],
    )?;
    assert_eq!(
        rocks["checksum"]["digest"], digest,
        "native savepoint -> rocksdb x1"
    );
    // The native savepoint can't open in the heap backend; a second savepoint at a taken place
    // is refused; both are bad input (exit 2) and change nothing.
    let heap_native = cairn(&[
        "run",
        "--backend",
        "heap",
        "--records",
        "1",
        "--restore-from",
        &native,
        "--working-dir",
        &dir.path().join("w").display().to_string(),
        "--checkpoint-dir",
        &dir.path().join("checkpoints").display().to_string(),
    ])?;
    assert!(!heap_native.status.success());
    let again = cairn(&["savepoint", "create", job, &native, "--format", "native"])?;
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}
