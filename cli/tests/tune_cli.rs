//! `cairn tune` end to end: a sweep killed with SIGKILL in the middle resumes where it was
//! (measured repetitions kept, none measured twice), then writes its JSON, CSV, SVG and the
//! answer; a results file of another sweep and an invalid point are refused before anything
//! runs.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// `cairn tune` arguments of a small 2-point sweep into `dir`.
fn sweep_args(dir: &Path, values: &str) -> Vec<String> {
    let d = dir.display();
    [
        "tune".to_string(),
        "--out".into(),
        format!("{d}/out/t"),
        "--scratch".into(),
        format!("{d}/scratch"),
        "--reps".into(),
        "2".into(),
        "--sweep".into(),
        format!("memory.state-cache-ratio={values}"),
        "--".into(),
        "--workload".into(),
        "update".into(),
        "--records".into(),
        "150000".into(),
        "--keys".into(),
        "20000".into(),
        "--checkpoint-interval".into(),
        "100ms".into(),
        "--no-checksum".into(),
    ]
    .to_vec()
}

fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines().map(String::from).collect()
}

fn tune(args: &[String]) -> Result<Output, std::io::Error> {
    Command::new(CAIRN).args(args).output()
}

#[test]
fn a_killed_sweep_resumes_and_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let args = sweep_args(dir.path(), "0,0.4");
    let runs = dir.path().join("out/t.runs.jsonl");

    // Kill the sweep (SIGKILL) once its first repetition is recorded.
    let mut child = Command::new(CAIRN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(240);
    while complete_lines(&runs).is_empty() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            return Err("no repetition recorded before the deadline, or the sweep ended".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    let before = complete_lines(&runs);
    assert!(
        (1..4).contains(&before.len()),
        "killed after {} runs",
        before.len()
    );

    let out = tune(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    let after = complete_lines(&runs);
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[..before.len()], before[..], "measured runs are kept");
    let mut done: Vec<(u64, u64)> = after
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["point"].as_u64().expect("point"),
                v["rep"].as_u64().expect("rep"),
            )
        })
        .collect();
    done.sort_unstable();
    assert_eq!(done, [(0, 0), (0, 1), (1, 0), (1, 1)], "each run once");

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("best for records/s"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/t.json"))?)?;
    assert_eq!(report["points"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(4));
    let best = report["answer"]["best"].as_u64().ok_or("answer.best")?;
    assert!(best < 2);
    for p in report["points"].as_array().ok_or("points")? {
        assert_eq!(p["reps"], 2);
    }
    let csv = std::fs::read_to_string(dir.path().join("out/t.csv"))?;
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("point,memory.state-cache-ratio,reps,records_per_sec_median"));
    let svg = std::fs::read_to_string(dir.path().join("out/t.svg"))?;
    assert!(svg.contains("peak RSS"));
    // The cache off and on: the peak RSS of each run is its own process's, not the sweep's.
    let rss = |p: usize| report["points"][p]["metrics"][4][1]["median"].as_f64();
    assert!(rss(0).is_some_and(|r| r > 5.0) && rss(1).is_some_and(|r| r > 5.0));

    // Another sweep into the same results file is refused and leaves it alone.
    let other = tune(&sweep_args(dir.path(), "0,0.2"))?;
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("belongs to another sweep"), "{stderr}");
    assert_eq!(complete_lines(&runs), after);
    Ok(())
}

#[test]
fn an_invalid_point_is_refused_before_anything_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tune(&sweep_args(dir.path(), "0.4,2.5"))?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("point 1") && stderr.contains("state-cache-ratio"),
        "{stderr}"
    );
    assert!(!dir.path().join("out/t.runs.jsonl").exists());
    Ok(())
}

#[test]
fn a_failed_repetition_stops_the_sweep_and_keeps_what_was_measured() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    // Point 1's checkpoint storage cannot be created: it is valid config, and fails at run time.
    let out = tune(&[
        "tune".into(),
        "--out".into(),
        format!("{d}/out/t"),
        "--scratch".into(),
        format!("{d}/scratch"),
        "--reps".into(),
        "1".into(),
        "--sweep".into(),
        format!("checkpoint.dir={d}/checkpoints,/proc/cairn-no-such-dir"),
        "--".into(),
        "--workload".into(),
        "update".into(),
        "--records".into(),
        "20000".into(),
        "--keys".into(),
        "2000".into(),
        "--no-checksum".into(),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("point 1") && stderr.contains("repetition 0"),
        "{stderr}"
    );
    assert_eq!(
        complete_lines(&dir.path().join("out/t.runs.jsonl")).len(),
        1
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/t.json"))?)?;
    assert_eq!(report["points"][0]["reps"], 1);
    assert_eq!(report["points"][1]["reps"], 0);
    assert_eq!(report["answer"]["best"], 0);
    Ok(())
}
