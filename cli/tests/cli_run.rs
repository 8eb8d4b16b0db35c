//! `cairn run` end to end: the built binary on both backends, its JSON contract, the checksums
//! (same final state whatever the backend or the number of slots), and bad input.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const RECORDS: u64 = 20_000;
const KEYS: u64 = 2_000;

fn cairn(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
}

/// Runs `cairn run` with small flags in `dir` and returns the parsed JSON summary.
fn run_json(dir: &Path, extra: &[&str]) -> Result<Value, Box<dyn std::error::Error>> {
    let json = dir.join("summary.json");
    let work = dir.join("work");
    let records = RECORDS.to_string();
    let keys = KEYS.to_string();
    let mut args = vec![
        "--records",
        &records,
        "--keys",
        &keys,
        "--memory",
        "16MiB",
        "--working-dir",
        work.to_str().ok_or("utf-8 path")?,
        "--json",
        json.to_str().ok_or("utf-8 path")?,
    ];
    // Checkpoints go below `dir` too, never into `./cairn-data` of the test's directory.
    let cp = dir.join("checkpoints");
    let cp = cp.to_str().ok_or("utf-8 path")?;
    if !extra.contains(&"--checkpoint-dir") {
        args.extend_from_slice(&["--checkpoint-dir", cp]);
    }
    args.extend_from_slice(extra);
    let out = cairn(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cairn run {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("records/s"), "{stdout}");
    assert!(
        stdout.contains(work.to_str().ok_or("utf-8")?),
        "working dir not printed: {stdout}"
    );
    Ok(serde_json::from_str(&std::fs::read_to_string(&json)?)?)
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a u64 in {v:#}"))
}

fn f64_at(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

fn check_contract(v: &Value, workload: &str, backend: &str) {
    assert_eq!(v["workload"], workload);
    assert_eq!(v["backend"], backend);
    assert_eq!(u64_at(v, "/records"), RECORDS);
    assert_eq!(u64_at(v, "/keys"), KEYS);
    assert_eq!(u64_at(v, "/seed"), 42);
    assert!(u64_at(v, "/slots") >= 1);
    assert!(f64_at(v, "/elapsed_s") > 0.0);
    assert!(f64_at(v, "/records_per_sec") > 0.0);
    let (p50, p99) = (f64_at(v, "/latency_us/p50"), f64_at(v, "/latency_us/p99"));
    assert!(p50 > 0.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    u64_at(v, "/state_bytes_on_disk");
    for field in [
        "block_cache_bytes",
        "memtable_bytes",
        "table_readers_bytes",
        "peak_bytes",
        "rss_bytes",
    ] {
        u64_at(v, &format!("/memory/{field}"));
    }
    assert!(u64_at(v, "/memory/rss_bytes") > 0);
    let per_state = v["per_state"].as_array().expect("per_state array");
    assert!(!per_state.is_empty());
    for s in per_state {
        assert!(s["state"].is_string() && s["bytes"].is_u64() && s["entries"].is_u64());
    }
    if backend == "rocksdb" {
        let budget = u64_at(v, "/memory/budget_bytes");
        assert_eq!(budget, 16 * 1024 * 1024 * u64_at(v, "/slots"));
        assert_eq!(v["memory"]["managed"], true);
        assert!(u64_at(v, "/state_bytes_on_disk") > 0);
        assert!(u64_at(v, "/memory/peak_bytes") > 0);
        assert!(u64_at(v, "/memory/peak_bytes") >= u64_at(v, "/memory/total_bytes"));
    } else {
        assert!(v["memory"]["budget_bytes"].is_null());
        assert_eq!(v["memory"]["managed"], false);
    }
}

#[test]
fn update_workload_on_both_backends_counts_every_record() -> TestResult {
    let mut digests = Vec::new();
    for backend in ["heap", "rocksdb"] {
        let dir = tempfile::tempdir()?;
        let v = run_json(dir.path(), &["--workload", "update", "--backend", backend])?;
        check_contract(&v, "update", backend);
        assert!(v["value_size"].is_null());
        assert_eq!(u64_at(&v, "/checksum/counter_total"), RECORDS);
        // Nearly every key is hit (20,000 uniform draws over 2,000 keys).
        let entries = u64_at(&v, "/checksum/entries");
        assert!((KEYS * 9 / 10..=KEYS).contains(&entries), "{entries}");
        assert_eq!(u64_at(&v, "/ops/value_rmw"), RECORDS);
        // The final checkpoint covers every record since the run's start (the only one at
        // this size, or the last): its changed keys are the distinct keys of its interval.
        let floor = &v["upload_floor"]["checkpoints"];
        let last = floor
            .as_array()
            .and_then(|a| a.last())
            .ok_or("upload_floor.checkpoints")?;
        assert_eq!(u64_at(last, "/position"), RECORDS);
        assert!(u64_at(last, "/changed_keys") <= KEYS, "{last}");
        assert!(u64_at(last, "/changed_bytes") > 0, "{last}");
        digests.push(v["checksum"]["digest"].clone());
    }
    assert_eq!(
        digests[0], digests[1],
        "heap and RocksDB end in different states"
    );
    Ok(())
}

#[test]
fn mixed_workload_state_is_the_same_on_any_backend_and_slot_count() -> TestResult {
    let mut digests = Vec::new();
    for (backend, slots) in [("heap", "1"), ("rocksdb", "1"), ("rocksdb", "2")] {
        let dir = tempfile::tempdir()?;
        let v = run_json(dir.path(), &["--backend", backend, "--slots", slots])?;
        check_contract(&v, "mixed", backend);
        assert_eq!(u64_at(&v, "/value_size"), 200);
        assert_eq!(
            u64_at(&v, "/checksum/counter_total"),
            u64_at(&v, "/ops/value_rmw")
        );
        let per_slot = v["per_slot"].as_array().ok_or("per_slot")?;
        assert_eq!(per_slot.len().to_string(), slots);
        let routed: u64 = per_slot.iter().map(|s| u64_at(s, "/records")).sum();
        assert_eq!(routed, RECORDS);
        digests.push(v["checksum"]["digest"].clone());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    Ok(())
}

#[test]
fn load_and_zipf_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let v = run_json(dir.path(), &["--workload", "load", "--value-size", "64"])?;
    check_contract(&v, "load", "rocksdb");
    assert_eq!(u64_at(&v, "/checksum/entries"), KEYS);
    assert!(v["checksum"]["counter_total"].is_null());
    let dir = tempfile::tempdir()?;
    let v = run_json(dir.path(), &["--skew", "zipf", "--backend", "heap"])?;
    check_contract(&v, "mixed", "heap");
    assert_eq!(v["skew"], "zipf");
    assert!(f64_at(&v, "/zipf_exponent") > 0.0);
    Ok(())
}

#[test]
fn bad_input_exits_non_zero_naming_the_field() -> TestResult {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let work = work.to_str().ok_or("utf-8")?;

    let out = cairn(&["--memory", "1KiB", "--working-dir", work])?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory.managed-size") && err.contains("--memory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let config = dir.path().join("cairn.toml");
    std::fs::write(
        &config,
        "[state]\nbackend = \"heap\"\nworking-dirr = \"/tmp\"\n",
    )?;
    let out = cairn(&[
        "--config",
        config.to_str().ok_or("utf-8")?,
        "--working-dir",
        work,
    ])?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("working-dirr"), "{err}");

    let out = cairn(&["--keys", "0", "--working-dir", work])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keys"));
    Ok(())
}

/// The Prometheus file agrees with the JSON summary of the same run: records, checkpoint count,
/// bytes uploaded, the last checkpoint's full size.
#[test]
fn metrics_file_agrees_with_the_json_summary() -> TestResult {
    let dir = tempfile::tempdir()?;
    let prom = dir.path().join("metrics.prom");
    let checkpoints = dir.path().join("checkpoints");
    let v = run_json(
        dir.path(),
        &[
            "--checkpoint-dir",
            checkpoints.to_str().ok_or("utf-8 path")?,
            "--checkpoint-interval",
            "100ms",
            "--metrics-file",
            prom.to_str().ok_or("utf-8 path")?,
        ],
    )?;
    let text = std::fs::read_to_string(&prom)?;
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let cps = v["checkpoints"].as_array().ok_or("checkpoints array")?;
    assert!(!cps.is_empty(), "the final checkpoint at least");
    let uploaded: u64 = cps.iter().map(|c| u64_at(c, "/incremental_bytes")).sum();
    let last = cps.last().ok_or("a checkpoint")?;
    assert_eq!(
        sample("cairn_records_processed_total{slot=\"0\"}"),
        RECORDS as f64
    );
    assert_eq!(
        sample("cairn_checkpoints_completed_total"),
        cps.len() as f64
    );
    assert_eq!(
        sample("cairn_checkpoint_sync_seconds_count"),
        cps.len() as f64
    );
    assert_eq!(
        sample("cairn_checkpoint_uploaded_bytes_total"),
        uploaded as f64
    );
    assert_eq!(
        sample("cairn_last_checkpoint_full_bytes"),
        u64_at(last, "/full_bytes") as f64
    );
    assert_eq!(
        sample("cairn_last_checkpoint_id"),
        u64_at(last, "/id") as f64
    );
    assert_eq!(
        sample("cairn_memory_budget_bytes{slot=\"0\"}"),
        (16u64 << 20) as f64
    );
    // The state cache's counters agree with the summary's.
    assert_eq!(
        sample("cairn_state_cache_events_total{event=\"hits\",slot=\"0\"}"),
        u64_at(&v, "/state_cache/hits") as f64
    );
    assert_eq!(
        sample("cairn_state_cache_events_total{event=\"misses\",slot=\"0\"}"),
        u64_at(&v, "/state_cache/misses") as f64
    );
    Ok(())
}

#[test]
fn unbindable_metrics_address_is_a_flag_error() -> TestResult {
    let out = cairn(&["--records", "10", "--metrics-addr", "not-an-address"])?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-addr = not-an-address"),
        "{stderr}"
    );
    Ok(())
}
