//! One repetition of one sweep point: a `cairn run` child process, and what `cairn tune`
//! takes from it.
//!
//! Each repetition runs in its own process so its peak RSS is its own (read from the kernel's
//! `wait4` accounting, exact rather than sampled) and no allocator or page-cache state carries
//! over from the previous point. The figures come from the child's run JSON: `cairn run`'s
//! [`crate::report::RunSummary`] or, for `--workload wordcount`,
//! [`crate::wordcount::WordcountSummary`].

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_timers::Clock;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The figures of one repetition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Records per second over the run.
    pub records_per_sec: f64,
    /// p99 latency in ms: per record for `cairn run`'s workloads, of timer firing for
    /// `wordcount`.
    pub latency_p99_ms: f64,
    /// p99 over the run's checkpoints of the synchronous pause (the slowest slot's), ms; 0
    /// without checkpoints.
    pub sync_pause_p99_ms: f64,
    /// Bytes uploaded by all the run's checkpoints.
    pub uploaded_bytes: u64,
    /// Peak resident set size of the process (the kernel's high-water mark).
    pub rss_peak_bytes: u64,
    /// Bytes of state on local disk at the end.
    pub disk_bytes: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
}

/// A figure the sweep compares points on (`--objective`), and that its table and plot show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Records per second (higher is better).
    Throughput,
    /// p99 latency (lower is better).
    Latency,
    /// p99 synchronous checkpoint pause (lower is better).
    SyncPause,
    /// Uploaded bytes (lower is better).
    Uploaded,
    /// Peak RSS (lower is better).
    Rss,
    /// State bytes on disk (lower is better).
    Disk,
}

impl Metric {
    /// Every metric, in the order of tables, CSV columns and plot panels.
    pub const ALL: [Metric; 6] = [
        Metric::Throughput,
        Metric::Latency,
        Metric::SyncPause,
        Metric::Uploaded,
        Metric::Rss,
        Metric::Disk,
    ];

    /// Short name with unit, for tables and captions.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Throughput => "records/s",
            Metric::Latency => "p99 latency, ms",
            Metric::SyncPause => "p99 sync pause, ms",
            Metric::Uploaded => "uploaded, MB",
            Metric::Rss => "peak RSS, MiB",
            Metric::Disk => "disk, MB",
        }
    }

    /// Column name in CSV and JSON.
    pub fn column(self) -> &'static str {
        match self {
            Metric::Throughput => "records_per_sec",
            Metric::Latency => "latency_p99_ms",
            Metric::SyncPause => "sync_pause_p99_ms",
            Metric::Uploaded => "uploaded_mb",
            Metric::Rss => "rss_peak_mib",
            Metric::Disk => "disk_mb",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        self == Metric::Throughput
    }

    /// The value of this metric in `m`, in the unit of [`Metric::title`].
    pub fn of(self, m: &Measurement) -> f64 {
        const MB: f64 = 1e6;
        const MIB: f64 = 1024.0 * 1024.0;
        match self {
            Metric::Throughput => m.records_per_sec,
            Metric::Latency => m.latency_p99_ms,
            Metric::SyncPause => m.sync_pause_p99_ms,
            Metric::Uploaded => m.uploaded_bytes as f64 / MB,
            Metric::Rss => m.rss_peak_bytes as f64 / MIB,
            Metric::Disk => m.disk_bytes as f64 / MB,
        }
    }
}

/// Why a repetition produced no measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The child could not be started or waited for.
    #[error("cannot run {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child failed; `stderr` is the end of what it printed.
    #[error("cairn run failed ({status}): {stderr}")]
    Failed {
        /// Exit code or signal.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The child ran longer than the sweep's `--run-timeout` and was killed (SIGKILL).
    #[error("cairn run took longer than {}: killed", humantime::format_duration(*.limit))]
    TimedOut {
        /// The limit.
        limit: Duration,
    },
    /// Its JSON is missing or lacks a figure.
    #[error("cairn run's JSON {path}: {reason}")]
    Json {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// How long a repetition may run: a run that hangs (the full-disk hang of issue 19 was found
/// by a sweep that then waited for ever) is killed and reported, and the sweep stops with what
/// it measured. The time is read from `clock` (tests drive it).
#[derive(Clone)]
pub struct RunLimit {
    /// The longest a repetition may take.
    pub timeout: Duration,
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
}

/// How often a limited wait looks at its child and the clock.
const POLL: Duration = Duration::from_millis(20);

/// Runs `exe args...` with `env` added to its environment (a `cairn run` that writes its JSON
/// to `json`), waits for it (at most `limit`), and reads the figures; the child's stderr goes
/// to `stderr_log` (its tail is in the error on failure).
pub fn run_once(
    exe: &Path,
    args: &[OsString],
    env: &[(String, String)],
    json: &Path,
    stderr_log: &Path,
    limit: Option<&RunLimit>,
) -> Result<Measurement, MeasureError> {
    let spawn_err = |source| MeasureError::Spawn {
        exe: exe.display().to_string(),
        source,
    };
    let log = std::fs::File::create(stderr_log).map_err(spawn_err)?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    die_with_parent(&mut command);
    let child = command.spawn().map_err(spawn_err)?;
    let (status, rss_peak_bytes) = wait_with_peak_rss(child, limit).map_err(spawn_err)?;
    let status = match status {
        Ended::Ok => None,
        Ended::Failed(status) => Some(status),
        Ended::Killed => {
            return Err(MeasureError::TimedOut {
                limit: limit.map_or(Duration::ZERO, |l| l.timeout),
            });
        }
    };
    if let Some(status) = status {
        let text = std::fs::read_to_string(stderr_log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(MeasureError::Failed { status, stderr });
    }
    let json_err = |reason: String| MeasureError::Json {
        path: json.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(json).map_err(|e| json_err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
    from_run_json(&value, rss_peak_bytes).map_err(json_err)
}

/// A sweep killed mid-run (Ctrl-C, SIGKILL) takes its running repetition with it, so a resumed
/// sweep never shares the machine, or the scratch directory, with an orphan.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
        // is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// How a child ended.
enum Ended {
    /// Exit code 0.
    Ok,
    /// Another exit code or a signal, described.
    Failed(String),
    /// Killed by [`wait_with_peak_rss`] at its limit.
    Killed,
}

/// Waits for `child` and returns how it ended and its peak RSS. With a `limit`, the child is
/// polled (`WNOHANG`) and killed once the limit's clock says it has run too long; the kill
/// happens before the child is reaped, so its pid cannot have been reused.
fn wait_with_peak_rss(
    child: std::process::Child,
    limit: Option<&RunLimit>,
) -> std::io::Result<(Ended, u64)> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data that wait4 fills in; zeroed is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let started = limit.map(|l| l.clock.now_ms());
    let mut killed = false;
    let flags = if limit.is_some() { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: waits for our own child `pid` with valid pointers to `status` and `usage`.
        // std's `Child` is not waited for afterwards (it is dropped, which neither waits nor
        // kills), so the pid is reaped exactly once.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            break;
        }
        if r == 0 {
            // Still running (WNOHANG).
            if let (Some(l), Some(t0)) = (limit, started)
                && !killed
                && l.clock.now_ms().saturating_sub(t0)
                    >= i64::try_from(l.timeout.as_millis()).unwrap_or(i64::MAX)
            {
                // SAFETY: `pid` is our unreaped child: a live process or a zombie, never a
                // reused pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(POLL);
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    drop(child);
    // Linux reports ru_maxrss in KiB.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    let ended = if killed {
        Ended::Killed
    } else if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ended::Ok,
            code => Ended::Failed(format!("exit code {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        Ended::Failed(format!("signal {}", libc::WTERMSIG(status)))
    } else {
        Ended::Failed(format!("wait status {status}"))
    };
    Ok((ended, peak))
}

/// The figures of a run JSON (either summary kind); `rss_peak_bytes` is measured outside it.
pub fn from_run_json(v: &serde_json::Value, rss_peak_bytes: u64) -> Result<Measurement, String> {
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("no number at {what}"))
    };
    let records_per_sec = num(&v["records_per_sec"], "records_per_sec")?;
    let latency_p99_ms = if v.get("latency_us").is_some() {
        num(&v["latency_us"]["p99"], "latency_us.p99")? / 1000.0
    } else {
        num(&v["fire_latency_ms"]["p99"], "fire_latency_ms.p99")?
    };
    let checkpoints = v["checkpoints"].as_array().cloned().unwrap_or_default();
    let mut syncs = Vec::with_capacity(checkpoints.len());
    let mut uploaded_bytes = 0u64;
    for (i, c) in checkpoints.iter().enumerate() {
        syncs.push(num(&c["sync_ms"], &format!("checkpoints[{i}].sync_ms"))?);
        uploaded_bytes = uploaded_bytes.saturating_add(
            c["incremental_bytes"]
                .as_u64()
                .ok_or_else(|| format!("no count at checkpoints[{i}].incremental_bytes"))?,
        );
    }
    let disk_bytes = v["state_bytes_on_disk"]
        .as_u64()
        .ok_or("no count at state_bytes_on_disk")?;
    Ok(Measurement {
        records_per_sec,
        latency_p99_ms,
        sync_pause_p99_ms: nearest_rank(&mut syncs, 0.99),
        uploaded_bytes,
        rss_peak_bytes,
        disk_bytes,
        checkpoints: checkpoints.len() as u64,
    })
}

/// The nearest-rank percentile `q` of `v` (0 when empty).
fn nearest_rank(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_either_summary_kind() {
        let run = serde_json::json!({
            "records_per_sec": 1000.0,
            "latency_us": {"p99": 1500.0},
            "state_bytes_on_disk": 42,
            "checkpoints": [
                {"sync_ms": 10.0, "incremental_bytes": 100},
                {"sync_ms": 30.0, "incremental_bytes": 5},
                {"sync_ms": 20.0, "incremental_bytes": 0},
            ],
        });
        let m = from_run_json(&run, 7).expect("figures");
        assert_eq!(m.latency_p99_ms, 1.5);
        assert_eq!(m.sync_pause_p99_ms, 30.0);
        assert_eq!(m.uploaded_bytes, 105);
        assert_eq!((m.rss_peak_bytes, m.disk_bytes, m.checkpoints), (7, 42, 3));
        let wc = serde_json::json!({
            "records_per_sec": 5.0,
            "fire_latency_ms": {"p99": 12.0},
            "state_bytes_on_disk": 1,
            "checkpoints": [],
        });
        let m = from_run_json(&wc, 0).expect("figures");
        assert_eq!((m.latency_p99_ms, m.sync_pause_p99_ms), (12.0, 0.0));
        let e =
            from_run_json(&serde_json::json!({"records_per_sec": 1.0}), 0).expect_err("no latency");
        assert!(e.contains("fire_latency_ms.p99"), "{e}");
    }

    #[test]
    fn a_failing_child_reports_its_status_and_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = run_once(
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom >&2; exit 3".into()],
            &[],
            &dir.path().join("x.json"),
            &dir.path().join("log"),
            None,
        )
        .expect_err("fails");
        let m = e.to_string();
        assert!(m.contains("exit code 3") && m.contains("boom"), "{m}");
    }

    #[test]
    fn the_peak_rss_is_the_childs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = dir.path().join("run.json");
        // A child that touches ~64 MiB and writes a minimal run JSON.
        let script = format!(
            "v=$(head -c 67108864 /dev/zero | tr '\\0' x); \
             echo '{{\"records_per_sec\":1,\"latency_us\":{{\"p99\":1}},\"state_bytes_on_disk\":0}}' > {}",
            json.display()
        );
        let m = run_once(
            Path::new("/bin/bash"),
            &["-c".into(), script.into()],
            &[],
            &json,
            &dir.path().join("log"),
            None,
        )
        .expect("runs");
        assert!(m.rss_peak_bytes > 64 << 20, "{}", m.rss_peak_bytes);
    }

    #[test]
    fn a_run_past_its_limit_is_killed_when_the_clock_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(cairn_timers::ManualClock::new(1_000));
        let limit = RunLimit {
            timeout: Duration::from_secs(600),
            clock: clock.clone(),
        };
        // The clock, not the wall, decides: 10 minutes pass on it 300 ms into a child that
        // would otherwise sleep for 20 s of real time (and then fail for want of its JSON).
        let advance = std::thread::spawn({
            let clock = clock.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                clock.set(1_000 + 600_000);
            }
        });
        let t = std::time::Instant::now();
        let e = run_once(
            Path::new("/bin/sleep"),
            &["20".into()],
            &[],
            &dir.path().join("x.json"),
            &dir.path().join("log"),
            Some(&limit),
        )
        .expect_err("killed");
        advance.join().expect("clock thread");
        assert!(matches!(e, MeasureError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("10m"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        // A run inside its limit is measured as without one.
        let json = dir.path().join("ok.json");
        let script = format!(
            "echo '{{\"records_per_sec\":1,\"latency_us\":{{\"p99\":1}},\"state_bytes_on_disk\":0}}' > {}",
            json.display()
        );
        let m = run_once(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &[],
            &json,
            &dir.path().join("log"),
            Some(&limit),
        )
        .expect("runs");
        assert_eq!(m.records_per_sec, 1.0);
    }
}
