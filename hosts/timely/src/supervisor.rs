//! The supervisor: starts every process of a job on loopback, and when one dies, stops the
//! others and restarts all of them from the job's latest committed checkpoint.
//!
//! timely is fail-stop: a process that dies makes its peers fail or hang, and a new process
//! can't join a running computation. So recovery is a restart of the whole run:
//! 1. Run `k` gets the Cairn job name `<base>-a<k>` (a new checkpoint writer: no waiting for the
//!    dead writer's lease), a fresh loopback port per process written to a host file, and
//!    `--restore-from` = the latest committed checkpoint of run `k - 1`, or what run `k - 1`
//!    restored if it committed none ([`cairn::recovery_location`], Flink's rule).
//! 2. The processes are `cairn-timely run --process p --processes N --workers W --hostfile F ...`;
//!    each logs to `<run dir>/logs/a<k>-p<p>.log`.
//! 3. When every process exits 0 the job is done. When any exits otherwise (killed, a panic:
//!    the workers abort on any failure), the supervisor kills the rest (SIGKILL), waits for
//!    them, and starts run `k + 1`, with the next shape of `restart_shapes` when one is given
//!    (a rescale: key groups and source splits move with their state).
//!
//! For tests and the torture script it can also kill a process itself: `kills` runs each get
//! one process SIGKILLed at a seeded random moment. Time comes from an injected [`Clock`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn::snapshot::Clock;
use cairn::{CheckpointConfig, CheckpointLocation, recovery_location};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{HostError, Result, io};

/// A job's shape: processes x worker threads per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Processes.
    pub processes: u32,
    /// Worker threads per process.
    pub workers: u32,
}

impl std::str::FromStr for Shape {
    type Err = HostError;

    /// `NxW`, e.g. `2x2`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || HostError::InvalidArgument(format!("shape {s:?}: expected NxW, e.g. 2x2"));
        let (n, w) = s.split_once('x').ok_or_else(bad)?;
        let shape = Shape {
            processes: n.parse().map_err(|_| bad())?,
            workers: w.parse().map_err(|_| bad())?,
        };
        if shape.processes == 0 || shape.workers == 0 {
            return Err(bad());
        }
        Ok(shape)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.processes, self.workers)
    }
}

/// Processes the supervisor kills on purpose (tests, torture).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Kills {
    /// The first `count` runs each get one SIGKILL.
    pub count: u32,
    /// Seeds which process and when.
    pub seed: u64,
    /// The kill comes this many ms after the run starts, at the earliest...
    pub min_ms: u64,
    /// ...and at the latest.
    pub max_ms: u64,
}

/// What the supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The `cairn-timely` executable.
    pub exe: PathBuf,
    /// Logs, host files, working directories, the sink and the progress log go here.
    pub run_dir: PathBuf,
    /// Checkpoint storage URL.
    pub checkpoint_dir: String,
    /// Its options (credentials, endpoint: read from the environment when unset).
    pub checkpoint: CheckpointConfig,
    /// Job names are `<job_base>-a<run>`.
    pub job_base: String,
    /// The first run's shape.
    pub shape: Shape,
    /// The shapes of runs 2, 3, ... (the last one repeats); empty: always `shape`.
    pub restart_shapes: Vec<Shape>,
    /// The checkpoint the first run restores.
    pub restore_from: Option<String>,
    /// Run numbers start here (above any earlier run of the same sink directory).
    pub first_attempt: u32,
    /// Arguments passed to every `cairn-timely run` (the job's parameters).
    pub job_args: Vec<String>,
    /// Deliberate kills.
    pub kills: Kills,
    /// Give up after this many runs.
    pub max_attempts: u32,
}

/// One run, as the supervisor saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptReport {
    /// The run number.
    pub attempt: u32,
    /// Its shape.
    pub shape: String,
    /// Its Cairn job name.
    pub job: String,
    /// What it restored.
    pub restored_from: Option<String>,
    /// Started, clock ms.
    pub started_ms: u64,
    /// Ended, clock ms.
    pub ended_ms: u64,
    /// The process the supervisor killed, and when (clock ms).
    pub killed: Option<(u32, u64)>,
    /// `completed` or why it failed.
    pub outcome: String,
}

/// What a supervised job did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SupervisorReport {
    /// Every run in order.
    pub attempts: Vec<AttemptReport>,
    /// Restarts after a failure.
    pub recoveries: u32,
    /// Whether the last run completed.
    pub completed: bool,
    /// The latest committed checkpoint when the supervisor stopped (what a later run, e.g.
    /// with another shape, restores).
    pub final_checkpoint: Option<String>,
}

/// The URL of a checkpoint location (`<dir>/<job>[/chk-<id>]`).
pub fn location_url(l: &CheckpointLocation) -> String {
    let base = format!("{}/{}", l.storage_url.trim_end_matches('/'), l.job);
    match l.checkpoint {
        Some(id) => format!("{base}/chk-{id}"),
        None => base,
    }
}

/// Free loopback ports, one per process (bound, read, released).
fn free_ports(n: u32) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback port")))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(io("read a bound port"))?.port()))
        .collect()
}

/// Kills the children still running when dropped (an early return, a panic).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the job until a run completes (or `max_attempts` runs failed). See the module doc.
pub fn supervise(cfg: &SupervisorConfig, clock: &dyn Clock) -> Result<SupervisorReport> {
    let logs = cfg.run_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.kills.seed);
    let mut report = SupervisorReport {
        attempts: Vec::new(),
        recoveries: 0,
        completed: false,
        final_checkpoint: None,
    };
    let mut restore = cfg.restore_from.clone();
    for n in 0..cfg.max_attempts {
        let attempt = cfg.first_attempt + n;
        let shape = match n {
            0 => cfg.shape,
            _ => cfg
                .restart_shapes
                .get(n as usize - 1)
                .or(cfg.restart_shapes.last())
                .copied()
                .unwrap_or(cfg.shape),
        };
        let job = format!("{}-a{attempt}", cfg.job_base);
        let hostfile = cfg.run_dir.join(format!("hosts-a{attempt}.txt"));
        let hosts: String = free_ports(shape.processes)?
            .iter()
            .map(|p| format!("127.0.0.1:{p}\n"))
            .collect();
        std::fs::write(&hostfile, hosts).map_err(io(format!("write {}", hostfile.display())))?;
        let started_ms = clock.now_ms();
        let kill = (n < cfg.kills.count).then(|| {
            let at = rng.random_range(cfg.kills.min_ms..=cfg.kills.max_ms.max(cfg.kills.min_ms));
            (rng.random_range(0..shape.processes), started_ms + at)
        });
        let mut children = Children(Vec::new());
        for p in 0..shape.processes {
            children.0.push(spawn(
                cfg,
                &job,
                attempt,
                shape,
                p,
                &hostfile,
                restore.as_deref(),
                &logs,
            )?);
        }
        let mut killed = None;
        let outcome = loop {
            std::thread::sleep(Duration::from_millis(20));
            if let Some((victim, at)) = kill
                && killed.is_none()
                && clock.now_ms() >= at
            {
                let c = &mut children.0[victim as usize];
                if c.try_wait().map_err(io("poll a process"))?.is_none() {
                    c.kill().map_err(io("SIGKILL a process"))?;
                    killed = Some((victim, clock.now_ms()));
                }
            }
            let mut failed = None;
            let mut running = 0;
            for (p, c) in children.0.iter_mut().enumerate() {
                match c.try_wait().map_err(io("poll a process"))? {
                    None => running += 1,
                    Some(s) if !s.success() => {
                        failed = failed.or(Some(format!("process {p}: {s}")))
                    }
                    Some(_) => {}
                }
            }
            if let Some(why) = failed {
                break why;
            }
            if running == 0 {
                break "completed".to_string();
            }
        };
        // Stops whatever still runs (SIGKILL) and reaps it.
        drop(children);
        let ended_ms = clock.now_ms();
        let done = outcome == "completed";
        report.attempts.push(AttemptReport {
            attempt,
            shape: shape.to_string(),
            job: job.clone(),
            restored_from: restore.clone(),
            started_ms,
            ended_ms,
            killed,
            outcome,
        });
        let job_url = format!("{}/{job}", cfg.checkpoint_dir.trim_end_matches('/'));
        let started_from = restore
            .as_deref()
            .map(CheckpointLocation::parse)
            .transpose()?;
        restore = recovery_location(&cfg.checkpoint, &job_url, started_from.as_ref())?
            .map(|l| location_url(&l));
        report.final_checkpoint = restore.clone();
        if done {
            report.completed = true;
            return Ok(report);
        }
        report.recoveries += 1;
    }
    Ok(report)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one process's command line, spelled out"
)]
fn spawn(
    cfg: &SupervisorConfig,
    job: &str,
    attempt: u32,
    shape: Shape,
    process: u32,
    hostfile: &Path,
    restore: Option<&str>,
    logs: &Path,
) -> Result<Child> {
    let log_path = logs.join(format!("a{attempt}-p{process}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(io(format!("create {}", log_path.display())))?;
    let err = log.try_clone().map_err(io("clone a log handle"))?;
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg("run")
        .args(["--process", &process.to_string()])
        .args(["--processes", &shape.processes.to_string()])
        .args(["--workers", &shape.workers.to_string()])
        .arg("--hostfile")
        .arg(hostfile)
        .args(["--job", job])
        .args(["--attempt", &attempt.to_string()])
        .args(["--checkpoint-dir", &cfg.checkpoint_dir])
        .arg("--work-dir")
        .arg(cfg.run_dir.join("work"))
        .arg("--sink-dir")
        .arg(cfg.run_dir.join("sink"))
        .arg("--progress")
        .arg(cfg.run_dir.join("progress.jsonl"))
        .args(&cfg.job_args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(r) = restore {
        cmd.args(["--restore-from", r]);
    }
    cmd.spawn()
        .map_err(io(format!("start {}", cfg.exe.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() -> Result<()> {
        let s: Shape = "2x3".parse()?;
        assert_eq!((s.processes, s.workers), (2, 3));
        assert_eq!(s.to_string(), "2x3");
        assert!("2".parse::<Shape>().is_err());
        assert!("0x2".parse::<Shape>().is_err());
        Ok(())
    }

    #[test]
    fn location_urls_round_trip() -> Result<()> {
        let url = "file:///tmp/cp/job-a1/chk-7";
        assert_eq!(location_url(&CheckpointLocation::parse(url)?), url);
        Ok(())
    }
}
