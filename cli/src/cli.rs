//! The `cairn` command line: `cairn run` (more subcommands hang off [`Command`]).
//!
//! Exit codes: 0 on success, 1 when the run fails (I/O, RocksDB, a slot error), 2 for invalid
//! arguments or configuration (the same code clap uses for usage errors).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytesize::ByteSize;
use cairn_engine::{BackendKind, CairnConfig, EngineError, ErrorKind, Metrics};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics_server::MetricsServer;
use crate::run::{self, RunError, RunOptions};
use crate::wordcount::{self, WordcountSpec};
use crate::workload::{Skew, WorkloadKind, WorkloadSpec};

/// Cairn: a RocksDB state engine for stream processors.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a keyed workload against N slots on embedded defaults and print a summary.
    Run(RunArgs),
    /// List, inspect, verify and garbage-collect checkpoints.
    Checkpoints(crate::checkpoints_cmd::CheckpointsArgs),
    /// Create savepoints from checkpoints, and inspect them.
    Savepoint(crate::savepoint_cmd::SavepointArgs),
    /// Benchmarks that write JSON (checkpoint churn, restore speed).
    Bench(crate::bench_cmd::BenchArgs),
    /// Kill -9 rounds against checkpoint storage; verifies every restore and that GC leaks nothing.
    Torture(crate::torture::TortureArgs),
    /// Sweep config keys over a workload, repetitions alternated: the best point for an
    /// objective and its distance to the runner-up in units of the noise (JSON, CSV, SVG;
    /// resumable). `--guide` prints the knobs that matter.
    Tune(crate::tune::TuneArgs),
}

/// Which backend the slots use (`state.backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// One RocksDB per slot (Flink's EmbeddedRocksDBStateBackend).
    Rocksdb,
    /// In-memory tables (Flink's HashMapStateBackend).
    Heap,
}

/// Where RocksDB slots keep timers (`state.timer-service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimerServiceArg {
    /// Column families of the slot's RocksDB (Flink's ROCKSDB timer-service factory).
    Rocksdb,
    /// On the heap (Flink's HEAP), snapshotted asynchronously.
    Heap,
}

impl From<TimerServiceArg> for cairn_engine::TimerServiceKind {
    fn from(t: TimerServiceArg) -> Self {
        match t {
            TimerServiceArg::Rocksdb => cairn_engine::TimerServiceKind::RocksDb,
            TimerServiceArg::Heap => cairn_engine::TimerServiceKind::Heap,
        }
    }
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Rocksdb => BackendKind::RocksDb,
            BackendArg::Heap => BackendKind::Heap,
        }
    }
}

/// `cairn run`: drives a deterministic keyed workload and measures it.
///
/// Flags override the `--config` file; without either, Cairn's defaults apply.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workload: `mixed` (value read-modify-write, list and map operations), `update`
    /// (the Flink comparison's keyed counter), `load` (the Flink comparison's bulk load) or `wordcount`
    /// (the Flink comparison's windowed word count: state + one timer per word and window,
    /// checkpointed like the others; its JSON is `wordcount::WordcountSummary`).
    #[arg(long, value_enum, default_value_t = WorkloadKind::Mixed)]
    pub workload: WorkloadKind,
    /// State backend [default: the config file's state.backend, else rocksdb].
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Number of slots, each on its own thread with its own RocksDB and memory budget; records
    /// are routed to slots by key group.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Number of records [default: 5000000 for wordcount (the Flink comparison's), else 1000000].
    #[arg(long)]
    pub records: Option<u64>,
    /// Number of distinct keys (the vocabulary of `wordcount`).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes for `mixed` and `load` (ignored by `update`, whose value is a u64).
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Managed memory budget per slot, e.g. `256MiB` (sets memory.managed-size and turns
    /// memory.managed on) [default: the config file's, else 256MiB].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<ByteSize>,
    /// Let every RocksDB use its own memory defaults (memory.managed = false).
    #[arg(long, conflicts_with = "memory")]
    pub unmanaged: bool,
    /// Share of the budget for the RocksDB backend's write-back state cache, `0` = off
    /// (memory.state-cache-ratio) [default: the config file's, else 0.4].
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true)]
    pub state_cache_ratio: Option<f64>,
    /// Share of the budget for RocksDB timers' write-back buffer of registrations, `0` = write
    /// every registration (memory.timer-buffer-ratio) [default: the config file's, else 0.2].
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true)]
    pub timer_buffer_ratio: Option<f64>,
    /// Fraction of the state cache that may be dirty (state-cache.max-dirty-ratio).
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true)]
    pub max_dirty_ratio: Option<f64>,
    /// Dirty bound of the state cache in bytes, e.g. `8MiB`; replaces the ratio
    /// (state-cache.max-dirty-bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_dirty_bytes: Option<ByteSize>,
    /// Seed of the record stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Key distribution of the `mixed` workload.
    #[arg(long, value_enum, default_value_t = Skew::Uniform)]
    pub skew: Skew,
    /// Zipf exponent for `--skew zipf` (> 0).
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    pub zipf_exponent: f64,
    /// A TOML configuration file (`CairnConfig`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Working directory of the slots (`<dir>/slot-<i>`, wiped on open) [default: the config
    /// file's state.working-dir, else ./cairn-data/work].
    #[arg(long, value_name = "DIR")]
    pub working_dir: Option<PathBuf>,
    /// Skip the final scan that checksums the state.
    #[arg(long)]
    pub no_checksum: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while the run lasts, e.g.
    /// `127.0.0.1:9249` (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Write the final metrics, in Prometheus's text format, to this file.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Checkpoint storage: `file:///dir`, a path, `s3://bucket/prefix` or `memory://`
    /// [default: the config file's checkpoint.dir, else ./cairn-data/checkpoints].
    #[arg(long, value_name = "URL")]
    pub checkpoint_dir: Option<String>,
    /// Time between checkpoints, e.g. `2s`, `200ms`, or `off` [default: the config file's
    /// checkpoint.interval, else 2s]. A final checkpoint is taken at the end of the run.
    #[arg(long, value_name = "DURATION|off")]
    pub checkpoint_interval: Option<String>,
    /// Completed checkpoints to keep (checkpoint.retained).
    #[arg(long, value_name = "N")]
    pub retained: Option<u32>,
    /// Continue from a checkpoint: `<checkpoint dir>/<job>` (its latest) or `.../<job>/chk-<id>`;
    /// or from a savepoint: `<storage url>/<savepoint>`.
    #[arg(long, value_name = "URL")]
    pub restore_from: Option<String>,
    /// Stop with a savepoint: after the final checkpoint, write a savepoint of it here
    /// (`<storage url>/<name>`, a new directory).
    #[arg(long, value_name = "URL")]
    pub savepoint: Option<String>,
    /// The format of `--savepoint`.
    #[arg(long, value_enum, default_value_t = crate::savepoint_cmd::FormatArg::Canonical)]
    pub savepoint_format: crate::savepoint_cmd::FormatArg,
    /// Ownership of the restored checkpoint (checkpoint.restore-mode).
    #[arg(long, value_enum)]
    pub restore_mode: Option<ClaimModeArg>,
    /// When a restored RocksDB slot fetches its SSTs: all before it opens, or as RocksDB needs
    /// them and in the background (checkpoint.restore-fetch).
    #[arg(long, value_enum)]
    pub restore_fetch: Option<RestoreFetchArg>,
    /// Keep each slot's last checkpoint locally and restore from it when it verifies
    /// (checkpoint.local-recovery).
    #[arg(long)]
    pub local_recovery: bool,
    /// Where the RocksDB backend keeps timers (state.timer-service; the heap backend always
    /// uses heap timers) [default: the config file's, else rocksdb].
    #[arg(long, value_enum)]
    pub timer_service: Option<TimerServiceArg>,
    /// `wordcount`: words per second of event time.
    #[arg(long, default_value_t = 100_000)]
    pub events_per_sec: u64,
    /// `wordcount`: tumbling window length in ms.
    #[arg(long, default_value_t = 1_000)]
    pub window_ms: i64,
    /// `wordcount`: event time between watermarks in ms.
    #[arg(long, default_value_t = 50)]
    pub watermark_interval_ms: i64,
    /// `wordcount`: throttle the source to this many records per second (fire latency then
    /// includes backlog) [default: unthrottled].
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    pub offered_rate: Option<f64>,
}

/// `--restore-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClaimModeArg {
    /// Never delete the restored checkpoint; the first checkpoint copies its files.
    NoClaim,
    /// Adopt the restored checkpoint; delete it when subsumed.
    Claim,
}

/// `--restore-fetch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestoreFetchArg {
    /// Download every file before the slot opens.
    Eager,
    /// Open from the metadata; fetch each SST when first needed and in the background.
    Lazy,
}

/// The largest `--slots` (one thread each).
pub const MAX_SLOTS: u32 = 1024;

/// Errors of the CLI, with the exit code they map to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag value is out of range.
    #[error("{flag} = {value} is out of range: allowed {allowed}")]
    Flag {
        /// The flag, e.g. `--keys`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        allowed: String,
    },
    /// The configuration (file plus flags) is invalid.
    #[error("invalid configuration: {source}{hint}")]
    Config {
        /// The engine's message (names the key).
        source: Box<EngineError>,
        /// Which flag set the key, if one did.
        hint: String,
    },
    /// The run failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The JSON summary could not be written.
    #[error("cannot write the JSON summary to {path}: {source}")]
    WriteJson {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics file could not be written.
    #[error("cannot write the metrics to {path}: {source}")]
    WriteMetrics {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Flag { .. } | CliError::Config { .. } => 2,
            CliError::Run(RunError::Open { source, .. }) if is_input_error(source) => 2,
            _ => 1,
        }
    }
}

fn is_input_error(e: &EngineError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidConfig | ErrorKind::InvalidArgument
    )
}

/// Parses the command line, runs it and returns the exit code (the binary's `main`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => run_command(&args),
        Command::Checkpoints(args) => return crate::checkpoints_cmd::run(args),
        Command::Savepoint(args) => return crate::savepoint_cmd::run(args),
        Command::Bench(args) => return crate::bench_cmd::run(args),
        Command::Torture(args) => return crate::torture::command(args),
        Command::Tune(args) => return crate::tune::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // `try_init`: a second initialisation (tests) is not an error worth failing for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The config keys that `args`' flags set, each with its flag: flags override the config file,
/// so a `cairn tune` sweep of one of these keys would be overridden (it refuses), and a config
/// error on one of them names the flag.
pub fn keys_set_by_flags(args: &RunArgs) -> Vec<(&'static str, &'static str)> {
    let flags = [
        (args.backend.is_some(), "state.backend", "--backend"),
        (
            args.working_dir.is_some(),
            "state.working-dir",
            "--working-dir",
        ),
        (args.memory.is_some(), "memory.managed-size", "--memory"),
        (args.memory.is_some(), "memory.managed", "--memory"),
        (args.memory.is_some(), "memory.fixed-per-slot", "--memory"),
        (args.unmanaged, "memory.managed", "--unmanaged"),
        (
            args.state_cache_ratio.is_some(),
            "memory.state-cache-ratio",
            "--state-cache-ratio",
        ),
        (
            args.timer_buffer_ratio.is_some(),
            "memory.timer-buffer-ratio",
            "--timer-buffer-ratio",
        ),
        (
            args.max_dirty_ratio.is_some(),
            "state-cache.max-dirty-ratio",
            "--max-dirty-ratio",
        ),
        (
            args.max_dirty_bytes.is_some(),
            "state-cache.max-dirty-bytes",
            "--max-dirty-bytes",
        ),
        (
            args.checkpoint_dir.is_some(),
            "checkpoint.dir",
            "--checkpoint-dir",
        ),
        (
            args.checkpoint_interval.is_some(),
            "checkpoint.interval",
            "--checkpoint-interval",
        ),
        (args.retained.is_some(), "checkpoint.retained", "--retained"),
        (
            args.local_recovery,
            "checkpoint.local-recovery",
            "--local-recovery",
        ),
        (
            args.timer_service.is_some(),
            "state.timer-service",
            "--timer-service",
        ),
        (
            args.restore_mode.is_some(),
            "checkpoint.restore-mode",
            "--restore-mode",
        ),
        (
            args.restore_fetch.is_some(),
            "checkpoint.restore-fetch",
            "--restore-fetch",
        ),
    ];
    flags
        .into_iter()
        .filter(|(set, _, _)| *set)
        .map(|(_, key, flag)| (key, flag))
        .collect()
}

/// Builds the run's options from the flags and the config file, checking every value.
pub fn resolve(args: &RunArgs) -> Result<RunOptions, CliError> {
    let mut config = match &args.config {
        Some(path) => CairnConfig::from_toml_file(path).map_err(|source| CliError::Config {
            source: Box::new(source),
            hint: String::new(),
        })?,
        None => CairnConfig::default(),
    };
    let set_by = keys_set_by_flags(args);
    if let Some(b) = args.backend {
        config.state.backend = b.into();
    }
    if let Some(dir) = &args.working_dir {
        config.state.working_dir = dir.clone();
    }
    if let Some(m) = args.memory {
        config.memory.managed = true;
        config.memory.managed_size = m;
        if config.memory.fixed_per_slot.take().is_some() {
            tracing::warn!("--memory overrides memory.fixed-per-slot from the config file");
        }
    }
    if args.unmanaged {
        config.memory.managed = false;
    }
    if let Some(r) = args.state_cache_ratio {
        config.memory.state_cache_ratio = r;
    }
    if let Some(r) = args.timer_buffer_ratio {
        config.memory.timer_buffer_ratio = r;
    }
    if let Some(r) = args.max_dirty_ratio {
        config.state_cache.max_dirty_ratio = r;
    }
    if let Some(b) = args.max_dirty_bytes {
        config.state_cache.max_dirty_bytes = Some(b);
    }
    if let Some(d) = &args.checkpoint_dir {
        config.checkpoint.dir = d.clone();
    }
    if let Some(i) = &args.checkpoint_interval {
        config.checkpoint.interval = if i == "off" {
            None
        } else {
            Some(humantime::parse_duration(i).map_err(|e| CliError::Flag {
                flag: "--checkpoint-interval",
                value: i.clone(),
                allowed: format!("a duration like 2s or 200ms, or off ({e})"),
            })?)
        };
    }
    if let Some(r) = args.retained {
        config.checkpoint.retained = r;
    }
    if args.local_recovery {
        config.checkpoint.local_recovery = true;
    }
    if let Some(t) = args.timer_service {
        config.state.timer_service = t.into();
    }
    if let Some(m) = args.restore_mode {
        config.checkpoint.restore_mode = match m {
            ClaimModeArg::NoClaim => cairn_engine::checkpoint::ClaimMode::NoClaim,
            ClaimModeArg::Claim => cairn_engine::checkpoint::ClaimMode::Claim,
        };
    }
    if let Some(f) = args.restore_fetch {
        config.checkpoint.restore_fetch = match f {
            RestoreFetchArg::Eager => cairn_engine::checkpoint::RestoreFetch::Eager,
            RestoreFetchArg::Lazy => cairn_engine::checkpoint::RestoreFetch::Lazy,
        };
    }
    let restore_from = match &args.restore_from {
        Some(u) => Some(
            cairn_engine::checkpoint::CheckpointLocation::parse(u).map_err(|e| CliError::Flag {
                flag: "--restore-from",
                value: u.clone(),
                allowed: format!("<checkpoint dir>/<job>[/chk-<id>] ({e})"),
            })?,
        ),
        None => None,
    };
    let savepoint = match &args.savepoint {
        Some(u) => {
            let target = cairn_engine::savepoint::SavepointLocation::parse(u).map_err(|e| {
                CliError::Flag {
                    flag: "--savepoint",
                    value: u.clone(),
                    allowed: format!("<storage url>/<name> ({e})"),
                }
            })?;
            Some((target, args.savepoint_format.into()))
        }
        None => None,
    };
    config.validate().map_err(|source| {
        let msg = source.to_string();
        let hint = set_by
            .iter()
            .find(|(key, _)| msg.contains(key))
            .map_or_else(String::new, |(key, flag)| format!(" ({flag} sets {key})"));
        CliError::Config {
            source: Box::new(source),
            hint,
        }
    })?;

    let flag = |flag: &'static str, value: &dyn std::fmt::Display, allowed: &str| CliError::Flag {
        flag,
        value: value.to_string(),
        allowed: allowed.to_string(),
    };
    if savepoint.is_some()
        && (config.checkpoint.interval.is_none() || args.workload == WorkloadKind::Wordcount)
    {
        return Err(flag(
            "--savepoint",
            &args.savepoint.as_deref().unwrap_or_default(),
            "only with checkpointing on (the savepoint is made from the final checkpoint) and not with --workload wordcount",
        ));
    }
    if !(1..=MAX_SLOTS).contains(&args.slots) {
        return Err(flag("--slots", &args.slots, &format!("[1, {MAX_SLOTS}]")));
    }
    if args.workload == WorkloadKind::Wordcount && args.restore_from.is_some() {
        return Err(flag(
            "--restore-from",
            &args.restore_from.as_deref().unwrap_or_default(),
            "not with --workload wordcount (its checkpoints do not record the output sink's state, so it cannot resume)",
        ));
    }
    let records = args.records.unwrap_or(match args.workload {
        WorkloadKind::Wordcount => WordcountSpec::default().records,
        _ => 1_000_000,
    });
    if records == 0 {
        return Err(flag("--records", &records, ">= 1"));
    }
    if args.keys == 0 {
        return Err(flag("--keys", &args.keys, ">= 1"));
    }
    if !matches!(
        args.workload,
        WorkloadKind::Update | WorkloadKind::Wordcount
    ) {
        // The first 8 bytes of every value carry its key (load) or counter (mixed).
        let max = config.state.max_value_size.as_u64();
        if args.value_size < 8 || args.value_size as u64 > max {
            return Err(flag(
                "--value-size",
                &args.value_size,
                &format!("[8, state.max-value-size = {max}]"),
            ));
        }
    }
    if args.skew == Skew::Zipf {
        if !matches!(args.workload, WorkloadKind::Mixed | WorkloadKind::Wordcount) {
            return Err(flag(
                "--skew",
                &args.skew,
                "uniform for the update and load workloads (they follow the Flink comparison's streams); \
                 zipf only with --workload mixed or wordcount",
            ));
        }
        if !(args.zipf_exponent > 0.0 && args.zipf_exponent.is_finite()) {
            return Err(flag(
                "--zipf-exponent",
                &args.zipf_exponent,
                "> 0 and finite",
            ));
        }
    }
    Ok(RunOptions {
        spec: WorkloadSpec {
            kind: args.workload,
            records,
            keys: args.keys,
            value_size: args.value_size,
            seed: args.seed,
            skew: args.skew,
            zipf_exponent: args.zipf_exponent,
        },
        slots: args.slots,
        config,
        checksum: !args.no_checksum,
        restore_from,
        savepoint,
        metrics: Arc::new(Metrics::new()),
    })
}

/// The word-count parameters of `cairn run --workload wordcount` (after [`resolve`]).
pub fn wordcount_spec(args: &RunArgs, opts: &RunOptions) -> Result<WordcountSpec, CliError> {
    let spec = WordcountSpec {
        records: opts.spec.records,
        vocabulary: opts.spec.keys,
        events_per_sec: args.events_per_sec,
        window_ms: args.window_ms,
        watermark_interval_ms: args.watermark_interval_ms,
        seed: opts.spec.seed,
        skew: opts.spec.skew,
        zipf_exponent: opts.spec.zipf_exponent,
        offered_rate: args.offered_rate,
    };
    spec.validate().map_err(|e| CliError::Flag {
        flag: "wordcount",
        value: e,
        allowed: "see cairn run --help".into(),
    })?;
    Ok(spec)
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), CliError> {
    let write_err = |source| CliError::WriteJson {
        path: path.display().to_string(),
        source,
    };
    let json =
        serde_json::to_string_pretty(value).map_err(|e| write_err(std::io::Error::other(e)))?;
    std::fs::write(path, json + "\n").map_err(write_err)
}

fn run_command(args: &RunArgs) -> Result<(), CliError> {
    let opts = resolve(args)?;
    let _metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let server = MetricsServer::start(addr, Arc::clone(&opts.metrics)).map_err(|e| {
                CliError::Flag {
                    flag: "--metrics-addr",
                    value: addr.clone(),
                    allowed: format!("a bindable HOST:PORT ({e})"),
                }
            })?;
            eprintln!("metrics: http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    if opts.spec.kind == WorkloadKind::Wordcount {
        let spec = wordcount_spec(args, &opts)?;
        let summary = wordcount::run(&opts.config, opts.slots, &spec)?;
        print!("{}", summary.render());
        if let Some(path) = &args.json {
            write_json(path, &summary)?;
        }
        return Ok(());
    }
    let bar = progress_bar(opts.spec.records);
    let summary = run::run(&opts, &|n, last| {
        bar.set_position(n);
        if !last.is_empty() {
            bar.set_message(last.to_string());
        }
    });
    bar.finish_and_clear();
    let summary = summary?;
    print!("{}", summary.render());
    if let Some(path) = &args.json {
        let write_err = |source| CliError::WriteJson {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        std::fs::write(path, json + "\n").map_err(write_err)?;
    }
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, opts.metrics.encode()).map_err(|source| CliError::WriteMetrics {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(records: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records \
         ({rate} records/s, eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}", state.per_sec());
        },
    );
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["cairn", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(a) => a,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = resolve(&args(&[])).expect("valid");
        assert_eq!(o.spec.kind, WorkloadKind::Mixed);
        assert_eq!(o.spec.records, 1_000_000);
        assert_eq!(o.spec.keys, 100_000);
        assert_eq!(o.spec.seed, 42);
        assert_eq!(o.slots, 1);
        assert_eq!(o.config.state.backend, BackendKind::RocksDb);
        assert_eq!(o.config, CairnConfig::default());
    }

    #[test]
    fn flags_override_the_config() {
        let o = resolve(&args(&[
            "--memory",
            "64MiB",
            "--backend",
            "heap",
            "--working-dir",
            "/tmp/x",
        ]))
        .expect("valid");
        assert_eq!(o.config.memory.managed_size, ByteSize::mib(64));
        assert_eq!(o.config.state.backend, BackendKind::Heap);
        assert_eq!(o.config.state.working_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = resolve(&args(&["--memory", "1KiB"])).expect_err("too small");
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(
            m.contains("memory.managed-size") && m.contains("--memory"),
            "{m}"
        );
        for (a, flag) in [
            (vec!["--keys", "0"], "--keys"),
            (vec!["--records", "0"], "--records"),
            (vec!["--slots", "0"], "--slots"),
            (vec!["--value-size", "4"], "--value-size"),
            (vec!["--workload", "update", "--skew", "zipf"], "--skew"),
            (
                vec!["--skew", "zipf", "--zipf-exponent", "-1"],
                "--zipf-exponent",
            ),
        ] {
            let e = resolve(&args(&a)).expect_err("invalid");
            assert!(e.to_string().contains(flag), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
        // --value-size is ignored by update.
        assert!(resolve(&args(&["--workload", "update", "--value-size", "1"])).is_ok());
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_rejected_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "[memory]\nmanaged-sise = \"64MiB\"\n").expect("write");
        let e = resolve(&args(&["--config", path.to_str().expect("utf-8")])).expect_err("bad");
        assert!(e.to_string().contains("managed-sise"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
