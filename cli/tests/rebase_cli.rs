//! `cairn run` with `checkpoint.rebase.*` from a config file: the slot threads compact when a
//! checkpoint asks for it, the next checkpoint says why it rebased, every-n checkpoints say so
//! too, and the final state's checksum equals a run without any policy.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn run(dir: &Path, name: &str, config: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let json = dir.join(format!("{name}.json"));
    let toml = dir.join(format!("{name}.toml"));
    std::fs::write(&toml, config)?;
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args([
            "--workload",
            "update",
            "--records",
            "600000",
            "--keys",
            "20000",
            "--memory",
            "16MiB",
            "--checkpoint-interval",
            "20ms",
        ])
        .arg("--config")
        .arg(&toml)
        .arg("--working-dir")
        .arg(dir.join(format!("work-{name}")))
        .arg("--checkpoint-dir")
        .arg(dir.join("checkpoints"))
        .arg("--json")
        .arg(&json)
        .env_remove("RUST_LOG")
        .output()?;
    assert!(
        out.status.success(),
        "cairn run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&std::fs::read(json)?)?)
}

fn reasons(v: &Value) -> Vec<String> {
    v["checkpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["rebase"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_applies_rebase_policies_from_config() -> TestResult {
    let dir = tempfile::tempdir()?;
    let off = run(dir.path(), "off", "")?;
    assert!(reasons(&off).is_empty(), "{:?}", reasons(&off));
    // Every counter is overwritten ~10 times: referenced bytes soon exceed 1.1x the live data.
    let amp = run(
        dir.path(),
        "amp",
        "[checkpoint.rebase]\nmax-space-amplification = 1.1\n",
    )?;
    let r = reasons(&amp);
    assert!(
        r.iter().any(|w| w.contains("max-space-amplification")),
        "{r:?} / {}",
        amp["checkpoints"]
    );
    assert_eq!(amp["checksum"]["digest"], off["checksum"]["digest"]);
    let every = run(
        dir.path(),
        "every",
        "[checkpoint.rebase]\nevery-n-checkpoints = 2\n",
    )?;
    let n = every["checkpoints"].as_array().map_or(0, Vec::len);
    let r = reasons(&every);
    assert!(n >= 3, "{n} checkpoints");
    assert_eq!(r.len(), (n - 1) / 2, "{r:?}");
    assert!(r.iter().all(|w| w.contains("every-n-checkpoints")), "{r:?}");
    assert_eq!(every["checksum"]["digest"], off["checksum"]["digest"]);
    Ok(())
}
