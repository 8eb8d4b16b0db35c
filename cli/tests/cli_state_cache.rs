//! `cairn run` reports the RocksDB backend's write-back state cache: on by default (hit rate,
//! write-back, sync-phase flushes, cache bytes inside the memory budget), absent with
//! `--state-cache-ratio 0`, the same final state either way, and a bad ratio is a usage error
//! naming the setting.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cairn(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
}

/// The update job on 3,000 keys with 200 ms checkpoints; returns the JSON summary and stdout.
fn run(dir: &Path, extra: &[&str]) -> Result<(Value, String), Box<dyn std::error::Error>> {
    let json = dir.join("summary.json");
    let mut args = vec![
        "--workload",
        "update",
        "--records",
        "300000",
        "--keys",
        "3000",
        "--memory",
        "32MiB",
        "--checkpoint-interval",
        "200ms",
    ];
    let work = dir.join("work");
    let cp = dir.join("checkpoints");
    let (work, cp, json_s) = (
        work.to_str().ok_or("utf-8 path")?,
        cp.to_str().ok_or("utf-8 path")?,
        json.to_str().ok_or("utf-8 path")?,
    );
    args.extend_from_slice(&[
        "--working-dir",
        work,
        "--checkpoint-dir",
        cp,
        "--json",
        json_s,
    ]);
    args.extend_from_slice(extra);
    let out = cairn(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cairn run {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        serde_json::from_str(&std::fs::read_to_string(&json)?)?,
        stdout,
    ))
}

fn f64_at(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

#[test]
fn run_reports_the_cache_and_keeps_the_same_state_without_it() -> TestResult {
    let on_dir = tempfile::tempdir()?;
    let (on, stdout) = run(on_dir.path(), &[])?;
    // 3,000 keys: each misses once, every later read hits.
    let hits = f64_at(&on, "/state_cache/hits");
    let misses = f64_at(&on, "/state_cache/misses");
    assert_eq!(misses, 3000.0, "{on:#}");
    assert_eq!(hits, 297_000.0, "{on:#}");
    assert!((f64_at(&on, "/state_cache/hit_rate") - 0.99).abs() < 1e-9);
    let flushes = f64_at(&on, "/state_cache/checkpoint_flush_ms/count");
    let checkpoints = on["checkpoints"].as_array().map_or(0, Vec::len);
    assert_eq!(
        flushes as usize, checkpoints,
        "one cache flush per checkpoint"
    );
    // Every key is written back before some checkpoint: by a pre-flush or the sync phase.
    assert!(
        f64_at(&on, "/state_cache/checkpoint_flushed_entries")
            + f64_at(&on, "/state_cache/pre_flushed_entries")
            >= 3000.0,
        "{on:#}"
    );
    let cache_bytes = f64_at(&on, "/memory/state_cache_bytes");
    let per_entry = cairn::engine::backend::rocks::cache::ENTRY_OVERHEAD as f64;
    assert!(cache_bytes >= 3000.0 * per_entry, "{on:#}");
    assert!(f64_at(&on, "/memory/total_bytes") >= cache_bytes);
    assert!(f64_at(&on, "/memory/peak_bytes") <= f64_at(&on, "/memory/budget_bytes"));
    assert_eq!(
        f64_at(&on, "/memory/state_cache_capacity_bytes"),
        (32.0 * 1024.0 * 1024.0 * 0.4_f64).floor()
    );
    assert!(stdout.contains("hit rate 99.0 %"), "{stdout}");
    assert!(stdout.contains("checkpoint flush"), "{stdout}");

    let off_dir = tempfile::tempdir()?;
    let (off, _) = run(off_dir.path(), &["--state-cache-ratio", "0"])?;
    assert!(off["state_cache"].is_null(), "{off:#}");
    assert_eq!(f64_at(&off, "/memory/state_cache_bytes"), 0.0);
    assert_eq!(on["checksum"], off["checksum"], "same final state");
    assert_eq!(f64_at(&on, "/checksum/counter_total"), 300_000.0);
    Ok(())
}

/// A dirty bound in bytes replaces the ratio: 3,000 dirty counters (~300 KB with their overhead)
/// stay under the default bound (0.1 of a 12.8 MiB cache) and are written back only at
/// checkpoints, while an 8 KiB bound writes them back many times in between; the final state is
/// the same.
#[test]
fn a_dirty_bound_in_bytes_replaces_the_ratio() -> TestResult {
    let ratio_dir = tempfile::tempdir()?;
    let (ratio, _) = run(ratio_dir.path(), &[])?;
    let bytes_dir = tempfile::tempdir()?;
    let (bytes, _) = run(bytes_dir.path(), &["--max-dirty-bytes", "8KiB"])?;
    assert_eq!(
        f64_at(&ratio, "/state_cache/dirty_flushes"),
        0.0,
        "{ratio:#}"
    );
    assert!(
        f64_at(&bytes, "/state_cache/dirty_flushes") > 10.0,
        "{bytes:#}"
    );
    assert_eq!(ratio["checksum"], bytes["checksum"], "same final state");
    Ok(())
}

#[test]
fn bad_cache_ratios_are_usage_errors_naming_the_setting() -> TestResult {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    for (flag, value, setting) in [
        ("--state-cache-ratio", "0.95", "memory.state-cache-ratio"),
        ("--state-cache-ratio", "-0.1", "memory.state-cache-ratio"),
        ("--max-dirty-ratio", "0", "state-cache.max-dirty-ratio"),
        ("--max-dirty-bytes", "1KiB", "state-cache.max-dirty-bytes"),
    ] {
        let out = cairn(&[
            "--records",
            "10",
            "--working-dir",
            work.to_str().ok_or("utf-8 path")?,
            "--checkpoint-interval",
            "off",
            flag,
            value,
        ])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(setting), "{flag} {value}: {stderr}");
    }
    Ok(())
}
