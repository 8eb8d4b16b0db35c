//! `cairn-timely`: runs one process of the word count (`run`), supervises a job of several
//! processes with failover (`supervise`), checks committed output (`verify`), and measures
//! (`bench`). See the crate docs of `cairn_timely` and the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn::engine::checkpoint::RestoreFetch;
use cairn::snapshot::SystemClock;
use cairn::{BackendKind, CairnConfig, CheckpointConfig, TimerServiceKind};
use cairn_timely::run::RunSpec;
use cairn_timely::supervisor::{Kills, Shape, SupervisorConfig, supervise};
use cairn_timely::wordcount::{JobKind, SourcePace, WordCountParams, check_output, run_worker};
use cairn_timely::{HostError, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-timely",
    about = "Cairn under timely-dataflow: the windowed word count across processes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One process of a run (the supervisor starts these).
    Run(RunArgs),
    /// Starts N processes x W workers on loopback and restarts them all from the latest
    /// checkpoint whenever one dies.
    Supervise(SuperviseArgs),
    /// Compares the committed output with the word count computed directly; exit 1 on any
    /// difference.
    Verify(VerifyArgs),
    /// Throughput per shape, checkpoint durations, recovery time against state size (JSON and
    /// CSV under --out).
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Where bench.json and the CSV files go.
    #[arg(long, default_value = "benches/timely")]
    out: PathBuf,
    /// Scratch directory for the runs.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Shapes of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1x1,1x2,2x1,2x2")]
    shapes: Vec<Shape>,
    /// Records per split and epoch (8 splits).
    #[arg(long, default_value_t = 2500)]
    per_epoch: u64,
    /// Epochs of the throughput runs.
    #[arg(long, default_value_t = 100)]
    epochs: u64,
    /// Words of the word count.
    #[arg(long, default_value_t = 10_000)]
    vocab: u64,
    /// Keys of the keyed counter.
    #[arg(long, default_value_t = 100_000)]
    counter_keys: u64,
    /// Key counts of the recovery runs (keyed counter, 2x2).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    recovery_keys: Vec<u64>,
    /// The in-process baseline (`workload,slots,records,keys,records_per_sec`, from
    /// scripts/timely-bench.sh) drawn next to the timely figures in throughput.svg.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// When the recovery runs' SIGKILL comes, ms after the start.
    #[arg(long, default_value_t = 4000)]
    kill_ms: u64,
}

/// `--kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// The windowed word count.
    Wordcount,
    /// The keyed counter.
    Counter,
}

/// The job's parameters (the same for every process and every run of a job).
/// `checkpoint.restore-fetch` of the slots a run restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fetch {
    /// Every SST is downloaded before the slot opens.
    Eager,
    /// The slot opens from the metadata; SSTs are fetched as needed and in the background.
    Lazy,
}

#[derive(Args, Clone, Debug)]
struct JobArgs {
    /// Seeds the word stream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Source splits.
    #[arg(long, default_value_t = 8)]
    splits: u32,
    /// Records per split and epoch.
    #[arg(long, default_value_t = 500)]
    per_epoch: u64,
    /// Epochs of the whole stream (a multiple of --window).
    #[arg(long, default_value_t = 120)]
    epochs: u64,
    /// Tumbling window length, epochs.
    #[arg(long, default_value_t = 5)]
    window: u64,
    /// Distinct words.
    #[arg(long, default_value_t = 2000)]
    vocab: u64,
    /// Checkpoint every this many epochs (and at the last).
    #[arg(long, default_value_t = 4)]
    checkpoint_every: u64,
    /// End this run after this epoch (its last checkpoint), to restart it later, e.g. with
    /// another shape; default: the stream's end.
    #[arg(long)]
    stop_after_epoch: Option<u64>,
    /// The keyed logic: the windowed word count, or the keyed counter (benchmarks).
    #[arg(long, value_enum, default_value_t = Kind::Wordcount)]
    kind: Kind,
    /// How many epochs the source may run ahead of the committed frontier.
    #[arg(long, default_value_t = 8)]
    max_ahead: u64,
    /// Emit one epoch per this many ms on average, in bursts of 4 (a live source's pace; 0: as
    /// fast as possible).
    #[arg(long, default_value_t = 0)]
    epoch_ms: u64,
    /// When a restored slot fetches its SST files (`checkpoint.restore-fetch`).
    #[arg(long, value_enum, default_value_t = Fetch::Eager)]
    restore_fetch: Fetch,
}

impl JobArgs {
    fn params(&self) -> WordCountParams {
        WordCountParams {
            seed: self.seed,
            splits: self.splits,
            per_epoch: self.per_epoch,
            epochs: self.epochs,
            window: self.window,
            vocab: self.vocab,
        }
    }

    /// The arguments that give a child process the same job.
    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--seed={}", self.seed),
            format!("--splits={}", self.splits),
            format!("--per-epoch={}", self.per_epoch),
            format!("--epochs={}", self.epochs),
            format!("--window={}", self.window),
            format!("--vocab={}", self.vocab),
            format!("--checkpoint-every={}", self.checkpoint_every),
        ];
        a.push(format!("--max-ahead={}", self.max_ahead));
        if self.kind == Kind::Counter {
            a.push("--kind=counter".into());
        }
        if self.epoch_ms > 0 {
            a.push(format!("--epoch-ms={}", self.epoch_ms));
        }
        if let Some(s) = self.stop_after_epoch {
            a.push(format!("--stop-after-epoch={s}"));
        }
        if self.restore_fetch == Fetch::Lazy {
            a.push("--restore-fetch=lazy".into());
        }
        a
    }
}

#[derive(Args)]
struct RunArgs {
    /// This process's index.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// Processes of the run.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Worker threads per process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// One `host:port` line per process (needed with more than one process).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// The Cairn job name of this run.
    #[arg(long)]
    job: String,
    /// The run number.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// The checkpoint to restore (`<dir>/<job>/chk-<id>`).
    #[arg(long)]
    restore_from: Option<String>,
    /// Checkpoint storage (a path, file://, s3://).
    #[arg(long)]
    checkpoint_dir: String,
    /// Working directories of the slots.
    #[arg(long)]
    work_dir: PathBuf,
    /// The sink's directory.
    #[arg(long)]
    sink_dir: PathBuf,
    /// Where the committer logs each commit (JSON lines).
    #[arg(long)]
    progress: Option<PathBuf>,
    #[command(flatten)]
    job_args: JobArgs,
}

#[derive(Args)]
struct SuperviseArgs {
    /// The first run's shape, processes x workers.
    #[arg(long, default_value = "2x2")]
    shape: Shape,
    /// The shapes of the runs after a failure (comma-separated; the last repeats).
    #[arg(long, value_delimiter = ',')]
    restart_as: Vec<Shape>,
    /// Logs, host files, working directories, the sink, the progress log.
    #[arg(long)]
    run_dir: PathBuf,
    /// Checkpoint storage (default: <run-dir>/checkpoints).
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Job names are <job>-a<run>.
    #[arg(long, default_value = "wordcount")]
    job: String,
    /// The checkpoint the first run restores.
    #[arg(long)]
    restore_from: Option<String>,
    /// The first run's number (above every earlier run using the same sink).
    #[arg(long, default_value_t = 1)]
    first_attempt: u32,
    /// SIGKILL one random process in each of the first N runs.
    #[arg(long, default_value_t = 0)]
    kills: u32,
    /// Seeds which process is killed and when.
    #[arg(long, default_value_t = 1)]
    kill_seed: u64,
    /// Kill between these many ms after a run starts...
    #[arg(long, default_value_t = 500)]
    kill_min_ms: u64,
    /// ...and these.
    #[arg(long, default_value_t = 4000)]
    kill_max_ms: u64,
    /// Give up after this many runs.
    #[arg(long, default_value_t = 20)]
    max_attempts: u32,
    /// Check the committed output against the direct computation at the end.
    #[arg(long)]
    verify: bool,
    /// Write the report (JSON) here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    job_args: JobArgs,
}

#[derive(Args)]
struct VerifyArgs {
    /// The sink's directory.
    #[arg(long)]
    sink_dir: PathBuf,
    #[command(flatten)]
    job_args: JobArgs,
}

/// The state and checkpoint configuration of every run: RocksDB with RocksDB timers, 128 key
/// groups, checkpoints triggered by the host only, restores fetching as `fetch` says.
fn cairn_config(checkpoint_dir: &str, work_dir: &std::path::Path, fetch: Fetch) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.backend = BackendKind::RocksDb;
    cfg.state.timer_service = TimerServiceKind::RocksDb;
    cfg.state.max_parallelism = Some(128);
    cfg.state.working_dir = work_dir.to_path_buf();
    cfg.checkpoint.dir = checkpoint_dir.to_string();
    // The committer triggers on epochs, never on a clock.
    cfg.checkpoint.interval = None;
    cfg.checkpoint.restore_fetch = match fetch {
        Fetch::Eager => RestoreFetch::Eager,
        Fetch::Lazy => RestoreFetch::Lazy,
    };
    cfg
}

fn run(a: RunArgs) -> Result<()> {
    let params = a.job_args.params();
    params.validate()?;
    let last = a
        .job_args
        .stop_after_epoch
        .map_or(params.epochs - 1, |s| s.min(params.epochs - 1));
    let spec = RunSpec {
        cfg: cairn_config(&a.checkpoint_dir, &a.work_dir, a.job_args.restore_fetch),
        job: a.job,
        attempt: a.attempt,
        restore_from: a.restore_from,
        sink_dir: a.sink_dir,
        checkpoint_every: a.job_args.checkpoint_every,
        last_epoch: last,
        progress: a.progress,
    };
    let kind = match a.job_args.kind {
        Kind::Wordcount => JobKind::Wordcount,
        Kind::Counter => JobKind::Counter,
    };
    let pace = SourcePace {
        max_ahead: a.job_args.max_ahead,
        pace: (a.job_args.epoch_ms > 0).then(|| Duration::from_millis(a.job_args.epoch_ms)),
    };
    let communication = if a.processes <= 1 {
        timely::CommunicationConfig::Process(a.workers)
    } else {
        let hostfile = a.hostfile.ok_or_else(|| {
            HostError::InvalidArgument("--hostfile: needed with more than one process".into())
        })?;
        let text = std::fs::read_to_string(&hostfile)
            .map_err(|e| HostError::InvalidArgument(format!("{}: {e}", hostfile.display())))?;
        let addresses: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        if addresses.len() != a.processes {
            return Err(HostError::InvalidArgument(format!(
                "{}: {} addresses for --processes {}",
                hostfile.display(),
                addresses.len(),
                a.processes
            )));
        }
        timely::CommunicationConfig::Cluster {
            threads: a.workers,
            process: a.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    };
    let config = timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    };
    let guards = timely::execute(config, move |worker| {
        // An error in one worker fails the process (see the panic hook in main): its peers
        // would otherwise wait for it forever.
        if let Err(e) = run_worker(worker, &spec, params, pace, kind) {
            panic!("worker {}: {e}", worker.index());
        }
        Ok::<(), String>(())
    })
    .map_err(HostError::Timely)?;
    for r in guards.join() {
        r.map_err(HostError::Timely)?.map_err(HostError::Timely)?;
    }
    Ok(())
}

fn supervise_cmd(a: SuperviseArgs) -> Result<bool> {
    let params = a.job_args.params();
    params.validate()?;
    std::fs::create_dir_all(&a.run_dir)
        .map_err(|e| HostError::InvalidArgument(format!("{}: {e}", a.run_dir.display())))?;
    let run_dir = std::fs::canonicalize(&a.run_dir)
        .map_err(|e| HostError::InvalidArgument(format!("{}: {e}", a.run_dir.display())))?;
    let checkpoint_dir = a
        .checkpoint_dir
        .unwrap_or_else(|| format!("file://{}", run_dir.join("checkpoints").display()));
    let exe = std::env::current_exe()
        .map_err(|e| HostError::InvalidArgument(format!("this executable: {e}")))?;
    let mut checkpoint = CheckpointConfig::default();
    checkpoint.dir = checkpoint_dir.clone();
    let cfg = SupervisorConfig {
        exe,
        run_dir: run_dir.clone(),
        checkpoint_dir,
        checkpoint,
        job_base: a.job,
        shape: a.shape,
        restart_shapes: a.restart_as,
        restore_from: a.restore_from,
        first_attempt: a.first_attempt,
        job_args: a.job_args.to_args(),
        kills: Kills {
            count: a.kills,
            seed: a.kill_seed,
            min_ms: a.kill_min_ms,
            max_ms: a.kill_max_ms,
        },
        max_attempts: a.max_attempts,
    };
    let report = supervise(&cfg, &SystemClock)?;
    let mut ok = report.completed;
    let mut out = serde_json::json!({ "supervisor": report });
    if a.verify {
        let check = check_output(&run_dir.join("sink").join("committed"), &params)?;
        ok &= check.exact();
        out["output"] =
            serde_json::to_value(&check).map_err(|e| HostError::Protocol(e.to_string()))?;
    }
    let text =
        serde_json::to_string_pretty(&out).map_err(|e| HostError::Protocol(e.to_string()))?;
    println!("{text}");
    if let Some(p) = a.report {
        std::fs::write(&p, &text)
            .map_err(|e| HostError::InvalidArgument(format!("{}: {e}", p.display())))?;
    }
    Ok(ok)
}

fn verify(a: VerifyArgs) -> Result<bool> {
    let params = a.job_args.params();
    params.validate()?;
    let check = check_output(&a.sink_dir.join("committed"), &params)?;
    let text =
        serde_json::to_string_pretty(&check).map_err(|e| HostError::Protocol(e.to_string()))?;
    println!("{text}");
    Ok(check.exact())
}

fn bench(a: BenchArgs) -> Result<()> {
    use cairn_timely::bench::{
        BenchJob, BenchReport, chart, read_baseline, recovery, throughput, write,
    };
    let exe = std::env::current_exe()
        .map_err(|e| HostError::InvalidArgument(format!("this executable: {e}")))?;
    let scratch = match a.scratch {
        Some(s) => s,
        None => std::env::temp_dir().join(format!("cairn-timely-bench-{}", std::process::id())),
    };
    let mut report = BenchReport::default();
    for (kind, keys) in [("wordcount", a.vocab), ("counter", a.counter_keys)] {
        let job = BenchJob {
            kind: kind.into(),
            splits: 8,
            per_epoch: a.per_epoch,
            epochs: a.epochs,
            keys,
            checkpoint_every: 10,
        };
        for shape in &a.shapes {
            let (row, commits) = throughput(
                &exe,
                &scratch.join(format!("{kind}-{shape}")),
                &job,
                *shape,
                &SystemClock,
            )?;
            eprintln!(
                "{kind} {shape}: {:.0} records/s steady, {:.0} end to end, {} checkpoints (median sync {:.1} ms, upload {:.1} ms, commit {:.1} ms)",
                row.steady_records_per_sec,
                row.end_to_end_records_per_sec,
                row.checkpoints,
                row.median_sync_ms,
                row.median_upload_ms,
                row.median_commit_ms
            );
            report.throughput.push(row);
            report.checkpoints.extend(
                commits
                    .into_iter()
                    .map(|c| (kind.to_string(), shape.to_string(), c)),
            );
        }
    }
    for keys in a.recovery_keys {
        let job = BenchJob {
            kind: "counter".into(),
            splits: 8,
            per_epoch: a.per_epoch,
            epochs: a.epochs * 3,
            keys,
            checkpoint_every: 10,
        };
        let shape = Shape {
            processes: 2,
            workers: 2,
        };
        let row = recovery(
            &exe,
            &scratch.join(format!("recovery-{keys}")),
            &job,
            shape,
            a.kill_ms,
            &SystemClock,
        )?;
        eprintln!(
            "recovery 2x2, {keys} keys: checkpoint {} bytes, restart {} ms, caught up {} ms after the kill",
            row.restored_checkpoint_bytes, row.restart_ms, row.recovery_ms
        );
        report.recovery.push(row);
    }
    let mut written = write(&a.out, &report)?;
    let baseline = a
        .baseline
        .as_deref()
        .map(read_baseline)
        .transpose()?
        .unwrap_or_default();
    written.push(chart(&a.out, &report, &baseline)?);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => {
            // Fail-stop: a failure in any worker (or in timely's network threads when a peer
            // dies) ends the whole process at once, so the supervisor sees it and restarts
            // the job; a process with one dead worker would otherwise hang its peers.
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                std::process::abort();
            }));
            run(a).map(|()| true)
        }
        Cmd::Supervise(a) => supervise_cmd(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Bench(a) => bench(a).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cairn-timely: {e}");
            ExitCode::FAILURE
        }
    }
}
