//! Measurements of the timely host (`cairn-timely bench`): throughput of the word count and the
//! keyed counter per shape, checkpoint durations per epoch, and recovery time after a SIGKILL
//! against state size. Every run is a real supervised job (processes on loopback, RocksDB,
//! checkpoints to a local directory); the figures come from the supervisor's report and the
//! committer's progress log ([`CommitRecord`]).
//!
//! - **Throughput** = the records of the epochs committed after the first checkpoint, over the
//!   time between the first and the last commit (process start-up and connection excluded), and
//!   also over the whole run (start to exit).
//! - **Recovery time** = from the SIGKILL to the first commit past the last epoch committed
//!   before it (the job has caught up with its pre-kill durable position and made new progress).

use std::path::{Path, PathBuf};

use cairn::CheckpointConfig;
use cairn::snapshot::Clock;
use serde::{Deserialize, Serialize};

use crate::committer::CommitRecord;
use crate::error::{HostError, Result, io};
use crate::supervisor::{Kills, Shape, SupervisorConfig, SupervisorReport, supervise};

/// One job to measure.
#[derive(Clone, Debug)]
pub struct BenchJob {
    /// `wordcount` or `counter`.
    pub kind: String,
    /// Splits x per-epoch x epochs records.
    pub splits: u32,
    /// Records per split and epoch.
    pub per_epoch: u64,
    /// Epochs.
    pub epochs: u64,
    /// Distinct keys (words).
    pub keys: u64,
    /// Checkpoint every this many epochs.
    pub checkpoint_every: u64,
}

impl BenchJob {
    fn records(&self) -> u64 {
        self.splits as u64 * self.per_epoch * self.epochs
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("--kind={}", self.kind),
            format!("--splits={}", self.splits),
            format!("--per-epoch={}", self.per_epoch),
            format!("--epochs={}", self.epochs),
            format!("--vocab={}", self.keys),
            format!("--checkpoint-every={}", self.checkpoint_every),
            "--window=5".into(),
        ]
    }
}

/// Throughput of one job at one shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputRow {
    /// `wordcount` or `counter`.
    pub kind: String,
    /// Processes x workers.
    pub shape: String,
    /// Records in the stream.
    pub records: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Records/s between the first and the last commit.
    pub steady_records_per_sec: f64,
    /// Records/s from the start of the processes to their exit.
    pub end_to_end_records_per_sec: f64,
    /// Start to exit, ms.
    pub wall_ms: u64,
    /// Checkpoints committed.
    pub checkpoints: usize,
    /// Median checkpoint: longest slot's synchronous phase, ms.
    pub median_sync_ms: f64,
    /// Median checkpoint: longest slot's upload, ms.
    pub median_upload_ms: f64,
    /// Median checkpoint: the commit on worker 0, ms.
    pub median_commit_ms: f64,
}

/// One recovery measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRow {
    /// Shape.
    pub shape: String,
    /// Distinct keys of the counter job (the state).
    pub keys: u64,
    /// The full size of the checkpoint the restart restored, bytes.
    pub restored_checkpoint_bytes: u64,
    /// The last epoch committed before the kill.
    pub epoch_before_kill: u64,
    /// SIGKILL -> every process of the next run started, ms.
    pub restart_ms: u64,
    /// SIGKILL -> first commit past `epoch_before_kill`, ms.
    pub recovery_ms: u64,
}

/// Everything `bench` measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// Throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// Every committed checkpoint of the throughput runs, with its run's kind and shape.
    pub checkpoints: Vec<(String, String, CommitRecord)>,
    /// Recovery rows.
    pub recovery: Vec<RecoveryRow>,
}

fn read_progress(path: &Path) -> Result<Vec<CommitRecord>> {
    let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| HostError::Protocol(format!("{}: {e}", path.display())))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_job(
    exe: &Path,
    dir: &Path,
    job: &BenchJob,
    shape: Shape,
    kills: Kills,
    clock: &dyn Clock,
) -> Result<(SupervisorReport, Vec<CommitRecord>)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let checkpoint_dir = format!("file://{}", dir.join("checkpoints").display());
    let mut checkpoint = CheckpointConfig::default();
    checkpoint.dir = checkpoint_dir.clone();
    let cfg = SupervisorConfig {
        exe: exe.to_path_buf(),
        run_dir: dir.to_path_buf(),
        checkpoint_dir,
        checkpoint,
        job_base: job.kind.clone(),
        shape,
        restart_shapes: Vec::new(),
        restore_from: None,
        first_attempt: 1,
        job_args: job.args(),
        kills,
        max_attempts: 3,
    };
    let report = supervise(&cfg, clock)?;
    if !report.completed {
        return Err(HostError::Protocol(format!(
            "{} {shape}: the job did not complete (logs in {})",
            job.kind,
            dir.display()
        )));
    }
    let progress = read_progress(&dir.join("progress.jsonl"))?;
    Ok((report, progress))
}

/// Throughput of `job` at `shape` (a failure-free run in `dir`).
pub fn throughput(
    exe: &Path,
    dir: &Path,
    job: &BenchJob,
    shape: Shape,
    clock: &dyn Clock,
) -> Result<(ThroughputRow, Vec<CommitRecord>)> {
    let (report, progress) = run_job(exe, dir, job, shape, Kills::default(), clock)?;
    let a = report
        .attempts
        .last()
        .ok_or_else(|| HostError::Protocol("no run".into()))?;
    let per_epoch_all = job.splits as u64 * job.per_epoch;
    let steady = match (progress.first(), progress.last()) {
        (Some(f), Some(l)) if l.at_ms > f.at_ms => {
            (l.epoch - f.epoch) as f64 * per_epoch_all as f64
                / ((l.at_ms - f.at_ms) as f64 / 1000.0)
        }
        _ => 0.0,
    };
    let wall_ms = a.ended_ms.saturating_sub(a.started_ms);
    Ok((
        ThroughputRow {
            kind: job.kind.clone(),
            shape: shape.to_string(),
            records: job.records(),
            keys: job.keys,
            steady_records_per_sec: steady,
            end_to_end_records_per_sec: job.records() as f64 / (wall_ms.max(1) as f64 / 1000.0),
            wall_ms,
            checkpoints: progress.len(),
            median_sync_ms: median(progress.iter().map(|c| c.sync_ms_max).collect()),
            median_upload_ms: median(progress.iter().map(|c| c.upload_ms_max).collect()),
            median_commit_ms: median(progress.iter().map(|c| c.commit_ms).collect()),
        },
        progress,
    ))
}

/// Recovery of `job` at `shape` after a SIGKILL of process 0..N at `kill_ms` after the start.
pub fn recovery(
    exe: &Path,
    dir: &Path,
    job: &BenchJob,
    shape: Shape,
    kill_ms: u64,
    clock: &dyn Clock,
) -> Result<RecoveryRow> {
    let kills = Kills {
        count: 1,
        seed: 1,
        min_ms: kill_ms,
        max_ms: kill_ms,
    };
    let (report, progress) = run_job(exe, dir, job, shape, kills, clock)?;
    let [first, second, ..] = report.attempts.as_slice() else {
        return Err(HostError::Protocol(format!(
            "recovery {}: the kill at {kill_ms} ms came after the job ended; make it longer",
            dir.display()
        )));
    };
    let (_, killed_at) = first
        .killed
        .ok_or_else(|| HostError::Protocol("the first run was not killed".into()))?;
    let before: Vec<&CommitRecord> = progress
        .iter()
        .filter(|c| c.attempt == first.attempt)
        .collect();
    let last_before = before.last().ok_or_else(|| {
        HostError::Protocol(format!("nothing committed before the kill at {kill_ms} ms"))
    })?;
    let caught_up = progress
        .iter()
        .find(|c| c.attempt == second.attempt && c.epoch > last_before.epoch)
        .ok_or_else(|| HostError::Protocol("the second run committed nothing".into()))?;
    Ok(RecoveryRow {
        shape: shape.to_string(),
        keys: job.keys,
        restored_checkpoint_bytes: last_before.full_bytes,
        epoch_before_kill: last_before.epoch,
        restart_ms: second.started_ms.saturating_sub(killed_at),
        recovery_ms: caught_up.at_ms.saturating_sub(killed_at),
    })
}

/// Writes `report` as `bench.json` and the CSV files under `out`.
pub fn write(out: &Path, report: &BenchReport) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io(format!("create {}", out.display())))?;
    let mut written = Vec::new();
    let json = out.join("bench.json");
    let text =
        serde_json::to_string_pretty(report).map_err(|e| HostError::Protocol(e.to_string()))?;
    std::fs::write(&json, text).map_err(io(format!("write {}", json.display())))?;
    written.push(json);
    let mut t = String::from(
        "kind,shape,records,keys,steady_records_per_sec,end_to_end_records_per_sec,wall_ms,checkpoints,median_sync_ms,median_upload_ms,median_commit_ms\n",
    );
    for r in &report.throughput {
        t.push_str(&format!(
            "{},{},{},{},{:.0},{:.0},{},{},{:.1},{:.1},{:.1}\n",
            r.kind,
            r.shape,
            r.records,
            r.keys,
            r.steady_records_per_sec,
            r.end_to_end_records_per_sec,
            r.wall_ms,
            r.checkpoints,
            r.median_sync_ms,
            r.median_upload_ms,
            r.median_commit_ms
        ));
    }
    let mut c = String::from(
        "kind,shape,epoch,id,sync_ms_max,upload_ms_max,commit_ms,incremental_bytes,full_bytes\n",
    );
    for (kind, shape, r) in &report.checkpoints {
        c.push_str(&format!(
            "{kind},{shape},{},{},{:.1},{:.1},{:.1},{},{}\n",
            r.epoch,
            r.id,
            r.sync_ms_max,
            r.upload_ms_max,
            r.commit_ms,
            r.incremental_bytes,
            r.full_bytes
        ));
    }
    let mut v = String::from(
        "shape,keys,restored_checkpoint_bytes,epoch_before_kill,restart_ms,recovery_ms\n",
    );
    for r in &report.recovery {
        v.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.shape,
            r.keys,
            r.restored_checkpoint_bytes,
            r.epoch_before_kill,
            r.restart_ms,
            r.recovery_ms
        ));
    }
    for (name, body) in [
        ("throughput.csv", t),
        ("checkpoints.csv", c),
        ("recovery.csv", v),
    ] {
        let p = out.join(name);
        std::fs::write(&p, body).map_err(io(format!("write {}", p.display())))?;
        written.push(p);
    }
    Ok(written)
}

/// One in-process `cairn run` figure (from the bench script's `baseline.csv`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineRow {
    /// `wordcount` or `update` (the keyed counter).
    pub workload: String,
    /// Slots (threads) of the run.
    pub slots: u32,
    /// Records/s.
    pub records_per_sec: f64,
}

/// Reads `workload,slots,records,keys,records_per_sec` lines.
pub fn read_baseline(path: &Path) -> Result<Vec<BaselineRow>> {
    let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || HostError::InvalidArgument(format!("{}: bad line {line:?}", path.display()));
        if f.len() != 5 {
            return Err(bad());
        }
        rows.push(BaselineRow {
            workload: f[0].to_string(),
            slots: f[1].parse().map_err(|_| bad())?,
            records_per_sec: f[4].parse().map_err(|_| bad())?,
        });
    }
    Ok(rows)
}

/// `throughput.svg`: records/s per shape for both jobs, then the in-process baselines.
pub fn chart(out: &Path, report: &BenchReport, baseline: &[BaselineRow]) -> Result<PathBuf> {
    use plotters::prelude::*;
    let path = out.join("throughput.svg");
    let mut groups: Vec<String> = Vec::new();
    for r in &report.throughput {
        if !groups.contains(&r.shape) {
            groups.push(r.shape.clone());
        }
    }
    let mut slots: Vec<u32> = baseline.iter().map(|b| b.slots).collect();
    slots.dedup();
    groups.extend(slots.iter().map(|s| format!("in-process {s}")));
    let value = |kind: &str, workload: &str, g: &str| -> f64 {
        report
            .throughput
            .iter()
            .find(|r| r.kind == kind && r.shape == g)
            .map(|r| r.steady_records_per_sec)
            .or_else(|| {
                baseline
                    .iter()
                    .find(|b| b.workload == workload && format!("in-process {}", b.slots) == g)
                    .map(|b| b.records_per_sec)
            })
            .unwrap_or(0.0)
    };
    let series: Vec<(&str, Vec<f64>)> = vec![
        (
            "word count",
            groups
                .iter()
                .map(|g| value("wordcount", "wordcount", g))
                .collect(),
        ),
        (
            "keyed counter",
            groups
                .iter()
                .map(|g| value("counter", "update", g))
                .collect(),
        ),
    ];
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(&path, (900, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_y = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0f64, f64::max)
            * 1.15;
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "records/s: timely processes x workers vs in-process cairn run (2-core VM)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n, 0f64..max_y)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len())
            .x_label_formatter(&|x| groups.get(x.floor() as usize).cloned().unwrap_or_default())
            .draw()?;
        let colours = [RGBColor(0xd6, 0x27, 0x28), RGBColor(0x1f, 0x77, 0xb4)];
        let width = 0.35;
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = colours[s % colours.len()];
            let bars = values.iter().enumerate().map(|(g, &v)| {
                let x = g as f64 + 0.15 + s as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.95, v)], colour.filled())
            });
            chart.draw_series(bars)?.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| HostError::Protocol(format!("chart {}: {e}", path.display())))?;
    Ok(path)
}
