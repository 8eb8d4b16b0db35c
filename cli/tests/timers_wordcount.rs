//! The windowed word count gives the same output on every backend x timer service (and any
//! number of slots), and its output matches an independent count of the stream.

use std::collections::HashMap;

use cairn::engine::TimerServiceKind;
use cairn::{BackendKind, CairnConfig};
use cairn_cli::stream::key_for;
use cairn_cli::wordcount::{self, WordcountSpec};

fn spec() -> WordcountSpec {
    WordcountSpec {
        records: 60_000,
        vocabulary: 3_000,
        events_per_sec: 10_000,
        ..WordcountSpec::default()
    }
}

/// The expected output: count per (word, window), digested the way the module doc says.
fn expected(spec: &WordcountSpec) -> (u64, String) {
    let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
    for g in 0..spec.records {
        let ts = spec.event_time(g);
        let window = ts - ts % spec.window_ms;
        *counts
            .entry((key_for(g, spec.vocabulary, spec.seed), window))
            .or_default() += 1;
    }
    let mut digest = 0u64;
    for ((word, window), count) in &counts {
        let mut buf = format!("w{word}").into_bytes();
        buf.extend_from_slice(&window.to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        digest = digest.wrapping_add(cairn::engine::keygroup::key_hash(&buf));
    }
    (counts.len() as u64, format!("{digest:#018x}"))
}

#[test]
fn output_checksum_is_identical_for_every_backend_and_timer_service()
-> Result<(), Box<dyn std::error::Error>> {
    let spec = spec();
    let (windows, digest) = expected(&spec);
    let configs = [
        (BackendKind::Heap, TimerServiceKind::Heap, 1),
        (BackendKind::Heap, TimerServiceKind::RocksDb, 1),
        (BackendKind::RocksDb, TimerServiceKind::Heap, 1),
        (BackendKind::RocksDb, TimerServiceKind::RocksDb, 1),
        (BackendKind::Heap, TimerServiceKind::Heap, 3),
        (BackendKind::RocksDb, TimerServiceKind::RocksDb, 2),
    ];
    for (backend, timers, slots) in configs {
        let dir = tempfile::tempdir()?;
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.timer_service = timers;
        cfg.state.working_dir = dir.path().join("work");
        // Checkpoints every 10 ms (barriers inside the stream) must not change the output;
        // every second configuration runs without them.
        cfg.checkpoint.dir = dir.path().join("checkpoints").display().to_string();
        let checkpointing = slots != 1 || timers == TimerServiceKind::RocksDb;
        cfg.checkpoint.interval = checkpointing.then(|| std::time::Duration::from_millis(10));
        let s = wordcount::run(&cfg, slots, &spec)?;
        let what = format!("{backend} backend, {timers} timers, {slots} slot(s)");
        if checkpointing {
            // At least the final checkpoint, taken after the last firing: nothing is left.
            assert!(!s.checkpoints.is_empty(), "{what}");
            assert!(s.job_url.is_some(), "{what}");
        } else {
            assert!(s.checkpoints.is_empty() && s.job_url.is_none(), "{what}");
        }
        assert_eq!(s.output_checksum, digest, "{what}");
        assert_eq!(s.windows_fired, windows, "{what}");
        assert_eq!(s.counted_records, spec.records, "{what}");
        assert_eq!(s.fire_latency_ms.samples, windows, "{what}");
        // The run JSON's documented fields.
        let json = serde_json::to_value(&s)?;
        assert_eq!(json["output_checksum"], digest);
        assert!(json["records_per_sec"].as_f64().is_some_and(|r| r > 0.0));
        for p in ["p50", "p99", "max"] {
            assert!(json["fire_latency_ms"][p].as_f64().is_some(), "{p}");
        }
    }
    Ok(())
}

/// `cairn run --workload wordcount` end to end: checkpoints during the run that `cairn
/// checkpoints verify --deep` accepts, the JSON fields (checkpoints, state cache), the checksum of
/// the independent count, and `--restore-from` refused with the reason.
#[test]
fn cli_wordcount_checkpoints_reports_and_refuses_restore() -> Result<(), Box<dyn std::error::Error>>
{
    use std::process::Command;
    // Long enough that barriers (placed ~74k records ahead of the slot) fall inside the stream.
    let spec = WordcountSpec {
        records: 400_000,
        ..spec()
    };
    let (windows, digest) = expected(&spec);
    let dir = tempfile::tempdir()?;
    let (work, ck, json) = (
        dir.path().join("work"),
        dir.path().join("ck"),
        dir.path().join("wc.json"),
    );
    let records = spec.records.to_string();
    let vocabulary = spec.vocabulary.to_string();
    let rate = spec.events_per_sec.to_string();
    let path = |p: &std::path::Path| p.to_str().map(str::to_owned).ok_or("utf-8 path");
    let args = [
        "run",
        "--workload",
        "wordcount",
        "--records",
        &records,
        "--keys",
        &vocabulary,
        "--events-per-sec",
        &rate,
        // Throttled so that the 10 ms checkpoints fall inside the run.
        "--offered-rate",
        "400000",
        "--checkpoint-interval",
        "10ms",
        "--working-dir",
        &path(&work)?,
        "--checkpoint-dir",
        &path(&ck)?,
        "--json",
        &path(&json)?,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("checkpoints") && stdout.contains("state cache"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(v["output_checksum"], digest);
    assert_eq!(v["windows_fired"], windows);
    let checkpoints = v["checkpoints"].as_array().ok_or("checkpoints[]")?;
    assert!(checkpoints.len() >= 2, "{v:#}");
    let job = v["job_url"].as_str().ok_or("job_url")?;
    // The default backend: RocksDB with its state cache.
    assert!(
        v["state_cache"]["writes_cancelled"].as_u64().is_some(),
        "{v:#}"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["checkpoints", "verify", "--deep", job])
        .output()?;
    assert!(
        verify.status.success(),
        "verify {job}: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // No resuming a word count from a checkpoint: exit 2, naming the flag and why.
    let refused = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["run", "--workload", "wordcount", "--restore-from", job])
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--restore-from") && stderr.contains("sink"),
        "{stderr}"
    );
    Ok(())
}
