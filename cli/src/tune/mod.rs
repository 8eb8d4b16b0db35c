//! `cairn tune`: a sweep over any config keys on any workload, answering "which setting is
//! best for my job, and is it really?".
//!
//! ```text
//! cairn tune --out benches/tune/update-memory \
//!     --sweep memory.write-buffer-ratio=0.25,0.5 \
//!     --sweep memory.state-cache-ratio=0,0.2,0.4 \
//!     --reps 3 --objective throughput \
//!     -- --workload update --records 10000000 --keys 1000000
//! ```
//!
//! Everything after `--` is `cairn run`'s flags: the workload. A key `env.NAME` sweeps an
//! environment variable of the runs instead (`--sweep env.MALLOC_ARENA_MAX=1,2,8`; allocators
//! side by side through `env.LD_PRELOAD`). Each point of the grid (the
//! cartesian product of the `--sweep` flags, applied to the `--config` file) runs `--reps`
//! times as its own `cairn run` process ([`measure`]); repetitions are alternated (round `r`
//! runs every point once, starting at point `r`) so a machine that slows down or speeds up
//! during the sweep shifts every point alike. Every finished repetition is appended to
//! `<out>.runs.jsonl` ([`run_log`]): running the same command again resumes the sweep, and more
//! `--reps` extend it. At the end: `<out>.json` (grid, per-point medians and ranges, the answer,
//! every run), `<out>.csv` (one row per point), `<out>.svg` (a panel per figure, the best point
//! highlighted), and the answer printed ([`answer`]).
//!
//! `cairn tune --guide` prints the knobs that matter and what they did on Cairn.

pub mod answer;
pub mod grid;
pub mod measure;
pub mod run_log;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::Digest as _;

use crate::bench_files::BenchFiles;
use crate::chart::{BarPanel, bar_panels};
use crate::cli::{Cli, Command};
use answer::{Answer, PointStats};
use grid::{Point, Sweep};
use measure::{Measurement, Metric};
use run_log::{RunLog, RunRecord};

/// The built-in guide (`cairn tune --guide`).
pub const GUIDE: &str = include_str!("guide.md");

/// `cairn tune` flags.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// A config key and its values, e.g. `memory.write-buffer-ratio=0.25,0.5`, or
    /// `env.NAME=...` for an environment variable of the runs (repeat the flag to sweep several
    /// keys; the grid is their product).
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub sweeps: Vec<Sweep>,
    /// Repetitions per point (alternated across points).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// The figure the answer optimises.
    #[arg(long, value_enum, default_value_t = Metric::Throughput)]
    pub objective: Metric,
    /// Prefix of the output files: `<out>.json`, `<out>.csv`, `<out>.svg` and the resumable
    /// `<out>.runs.jsonl`.
    #[arg(long, value_name = "PREFIX", required_unless_present = "guide")]
    pub out: Option<PathBuf>,
    /// The base configuration (TOML) every point starts from [default: Cairn's defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the runs keep their working directory and checkpoints (wiped after each run)
    /// [default: ./cairn-data/tune/<the sweep's fingerprint>].
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Kill a repetition that runs longer than this (e.g. `30m`), report it as failed and stop
    /// the sweep with what was measured [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub run_timeout: Option<std::time::Duration>,
    /// Print the guide to the knobs that matter, and exit.
    #[arg(long)]
    pub guide: bool,
    /// `cairn run`'s flags for the workload (after `--`).
    #[arg(last = true, value_name = "RUN FLAGS")]
    pub run_args: Vec<String>,
}

/// Why a sweep cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// A flag or the grid is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A point's configuration is invalid (found before anything runs).
    #[error("point {point} ({settings}): {reason}")]
    Point {
        /// Its index.
        point: usize,
        /// Its `key=value` pairs.
        settings: String,
        /// The error.
        reason: String,
    },
    /// The results file cannot be used.
    #[error(transparent)]
    RunLog(#[from] run_log::RunLogError),
    /// A repetition failed; the ones before it are kept in the results file.
    #[error("point {point} ({settings}), repetition {rep}: {source}")]
    Run {
        /// Its index.
        point: usize,
        /// Its `key=value` pairs.
        settings: String,
        /// The repetition.
        rep: u32,
        /// What failed.
        source: measure::MeasureError,
    },
    /// Scratch or output files.
    #[error("{what}: {reason}")]
    Files {
        /// Which file or directory.
        what: String,
        /// The error.
        reason: String,
    },
}

impl TuneError {
    fn exit_code(&self) -> u8 {
        match self {
            TuneError::Invalid(_) | TuneError::Point { .. } => 2,
            _ => 1,
        }
    }
}

/// `cairn run` flags a sweep sets itself, per repetition.
const OWNED_FLAGS: [&str; 7] = [
    "--config",
    "--json",
    "--working-dir",
    "--metrics-addr",
    "--metrics-file",
    "--restore-from",
    "--savepoint",
];

/// Runs `cairn tune` and returns the exit code.
pub fn run(args: TuneArgs) -> ExitCode {
    if args.guide {
        print!("{GUIDE}");
        return ExitCode::SUCCESS;
    }
    match tune(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What `<out>.json` holds.
#[derive(Serialize)]
struct TuneReport<'a> {
    cairn_version: &'static str,
    /// The sweep's fingerprint (also on every line of the results file).
    sweep: &'a str,
    keys: Vec<&'a str>,
    run_args: &'a [String],
    base_config: Option<String>,
    reps: u32,
    points: &'a [PointStats],
    answer: Option<&'a Answer>,
    runs: &'a [RunRecord],
}

fn tune(args: &TuneArgs) -> Result<(), TuneError> {
    let out = args
        .out
        .as_deref()
        .ok_or_else(|| TuneError::Invalid("--out is required".into()))?;
    if args.reps == 0 {
        return Err(TuneError::Invalid("--reps = 0: at least 1".into()));
    }
    grid::check(&args.sweeps).map_err(|e| TuneError::Invalid(e.to_string()))?;
    let points = grid::points(&args.sweeps);
    let (base_text, base) = read_base(args.config.as_deref())?;
    let run_args = check_run_args(args)?;
    let fingerprint = fingerprint(&args.sweeps, &run_args, base_text.as_deref());
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| PathBuf::from("cairn-data/tune").join(&fingerprint));
    let files = |what: &Path, e: &dyn std::fmt::Display| TuneError::Files {
        what: what.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&scratch).map_err(|e| files(&scratch, &e))?;
    let scratch = scratch.canonicalize().map_err(|e| files(&scratch, &e))?;

    let configs = point_configs(&points, &base, &scratch, &run_args)?;

    let bench = BenchFiles::new(out).map_err(|e| files(out, &e))?;
    let mut log = RunLog::open(&bench.path(".runs.jsonl"), &fingerprint, points.len())?;
    let order = alternated_order(points.len(), args.reps);
    let todo: Vec<(usize, u32)> = order.into_iter().filter(|&(p, r)| !log.has(p, r)).collect();
    if todo.len() < points.len() * args.reps as usize {
        eprintln!(
            "resuming {}: {} of {} runs already measured",
            bench.path(".runs.jsonl").display(),
            points.len() * args.reps as usize - todo.len(),
            points.len() * args.reps as usize
        );
    }

    let exe = std::env::current_exe().map_err(|e| files(Path::new("current_exe"), &e))?;
    // Checkpoints go to the scratch directory (wiped after each run) unless the workload's
    // flags, the base config or the sweep choose their storage.
    let own_checkpoints = !run_args.iter().any(|a| flag_is(a, "--checkpoint-dir"))
        && !base
            .get("checkpoint")
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key("dir"))
        && !args.sweeps.iter().any(|s| s.key == "checkpoint.dir");
    let limit = args.run_timeout.map(|timeout| measure::RunLimit {
        timeout,
        clock: Arc::new(cairn_timers::SystemClock),
    });
    let bar = progress_bar(todo.len() as u64);
    // A failed repetition stops the sweep, but what was measured is still written out.
    let mut failed = None;
    for (point, rep) in todo {
        let p = &points[point];
        bar.set_message(p.describe());
        let run_dir = scratch.join("run");
        wipe(&run_dir).map_err(|e| files(&run_dir, &e))?;
        std::fs::create_dir_all(&run_dir).map_err(|e| files(&run_dir, &e))?;
        let json = run_dir.join("run.json");
        let argv = child_argv(&run_args, &configs[point], &run_dir, own_checkpoints);
        let measured = measure::run_once(
            &exe,
            &argv,
            &p.env(),
            &json,
            &scratch.join("run.stderr"),
            limit.as_ref(),
        );
        wipe(&run_dir).map_err(|e| files(&run_dir, &e))?;
        let measurement = match measured {
            Ok(m) => m,
            Err(source) => {
                failed = Some(TuneError::Run {
                    point,
                    settings: p.describe(),
                    rep,
                    source,
                });
                break;
            }
        };
        bar.suspend(|| {
            eprintln!(
                "  {} rep {rep}: {} records/s, peak RSS {} MiB",
                p.describe(),
                answer::fmt(measurement.records_per_sec),
                measurement.rss_peak_bytes >> 20
            );
        });
        log.append(RunRecord {
            sweep: fingerprint.clone(),
            point,
            rep,
            settings: p.describe(),
            measurement,
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let stats = summarize(&points, log.records(), args.objective);
    let best = answer::answer(&stats, args.objective);
    let report = TuneReport {
        cairn_version: env!("CARGO_PKG_VERSION"),
        sweep: &fingerprint,
        keys: args.sweeps.iter().map(|s| s.key.as_str()).collect(),
        run_args: &run_args,
        base_config: base_text,
        reps: args.reps,
        points: &stats,
        answer: best.as_ref(),
        runs: log.records(),
    };
    write_outputs(&bench, args, &points, &report).map_err(|e| files(out, &e))?;
    print!("{}", render(args, &stats, best.as_ref()));
    bench.announce();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes every point's config into `scratch` and checks it as `cairn run` will, before
/// anything runs: a bad value fails the sweep at once, naming its point.
fn point_configs(
    points: &[Point],
    base: &toml::Table,
    scratch: &Path,
    run_args: &[String],
) -> Result<Vec<PathBuf>, TuneError> {
    let mut configs = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let point_err = |reason: String| TuneError::Point {
            point: i,
            settings: p.describe(),
            reason,
        };
        let text = p.apply(base).map_err(|e| point_err(e.to_string()))?;
        let path = scratch.join(format!("point-{i}.toml"));
        std::fs::write(&path, &text).map_err(|e| TuneError::Files {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        validate_point(&path, run_args).map_err(point_err)?;
        configs.push(path);
    }
    Ok(configs)
}

/// `cairn run` with the workload's flags, the point's config, and this run's JSON, working
/// directory and (unless the sweep's own) checkpoint storage under `run_dir`.
fn child_argv(
    run_args: &[String],
    config: &Path,
    run_dir: &Path,
    own_checkpoints: bool,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["run".into()];
    argv.extend(run_args.iter().map(OsString::from));
    argv.extend([
        "--config".into(),
        config.as_os_str().to_owned(),
        "--json".into(),
        run_dir.join("run.json").into_os_string(),
        "--working-dir".into(),
        run_dir.join("work").into_os_string(),
    ]);
    if own_checkpoints {
        argv.extend([
            "--checkpoint-dir".into(),
            run_dir.join("checkpoints").into_os_string(),
        ]);
    }
    argv
}

/// The base config's text (canonical TOML) and table; Cairn's defaults without a file.
fn read_base(path: Option<&Path>) -> Result<(Option<String>, toml::Table), TuneError> {
    let Some(path) = path else {
        return Ok((None, toml::Table::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|e| TuneError::Files {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        TuneError::Invalid(format!("--config {}: {e}", path.display()))
    })?;
    Ok((Some(toml::to_string(&table).unwrap_or_default()), table))
}

/// Whether command-line word `arg` is `flag` (alone or as `flag=value`).
fn flag_is(arg: &str, flag: &str) -> bool {
    arg == flag
        || arg
            .strip_prefix(flag)
            .is_some_and(|rest| rest.starts_with('='))
}

/// The workload flags, checked: they parse as `cairn run`'s, leave the flags a sweep sets to
/// it, and set none of the swept keys (a flag overrides the config file, so the sweep would
/// measure one point many times).
fn check_run_args(args: &TuneArgs) -> Result<Vec<String>, TuneError> {
    if let Some(owned) = args
        .run_args
        .iter()
        .find_map(|a| OWNED_FLAGS.iter().find(|f| flag_is(a, f)))
    {
        return Err(TuneError::Invalid(format!(
            "{owned} after `--`: cairn tune sets it for each run (use `cairn tune --config` for a base config)"
        )));
    }
    if let Some(s) = args.sweeps.iter().find(|s| s.key == "state.working-dir") {
        return Err(TuneError::Invalid(format!(
            "--sweep {}: cairn tune gives each run its own working directory (under --scratch)",
            s.key
        )));
    }
    let parsed = parse_run(&args.run_args).map_err(TuneError::Invalid)?;
    let set_by = crate::cli::keys_set_by_flags(&parsed);
    for s in &args.sweeps {
        if let Some((_, flag)) = set_by.iter().find(|(key, _)| *key == s.key) {
            return Err(TuneError::Invalid(format!(
                "--sweep {} is overridden by {flag} after `--`: drop the flag (set the base value with --config)",
                s.key
            )));
        }
    }
    Ok(args.run_args.clone())
}

/// `cairn run`'s flags parsed as the child will parse them.
fn parse_run(run_args: &[String]) -> Result<crate::cli::RunArgs, String> {
    let argv = ["cairn", "run"]
        .into_iter()
        .map(String::from)
        .chain(run_args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(a),
        }) => Ok(a),
        Ok(_) => Err("the flags after `--` are not cairn run's".into()),
        Err(e) => Err(format!("flags after `--`: {e}")),
    }
}

/// Resolves the child's flags with the point's config, as `cairn run` will.
fn validate_point(config: &Path, run_args: &[String]) -> Result<(), String> {
    let mut with_config = run_args.to_vec();
    with_config.extend(["--config".into(), config.display().to_string()]);
    let parsed = parse_run(&with_config)?;
    let opts = crate::cli::resolve(&parsed).map_err(|e| e.to_string())?;
    if opts.spec.kind == crate::workload::WorkloadKind::Wordcount {
        crate::cli::wordcount_spec(&parsed, &opts).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A short hash of everything that makes two sweeps' runs comparable (the repetitions are not
/// part of it: more `--reps` extend a sweep).
fn fingerprint(sweeps: &[Sweep], run_args: &[String], base: Option<&str>) -> String {
    let mut h = sha2::Sha256::new();
    for s in sweeps {
        h.update(s.key.as_bytes());
        for v in &s.values {
            h.update(b"\x1f");
            h.update(v.to_string().as_bytes());
        }
        h.update(b"\x1e");
    }
    for a in run_args {
        h.update(a.as_bytes());
        h.update(b"\x1f");
    }
    h.update(b"\x1e");
    h.update(base.unwrap_or_default().as_bytes());
    h.finalize()[..8].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `(point, rep)` in the order they run: round `r` runs every point once, starting at point
/// `r mod n`, so no point always runs first or right after the same neighbour.
fn alternated_order(points: usize, reps: u32) -> Vec<(usize, u32)> {
    (0..reps)
        .flat_map(|r| (0..points).map(move |i| ((i + r as usize) % points, r)))
        .collect()
}

fn wipe(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Each point's statistics from the records.
fn summarize(points: &[Point], records: &[RunRecord], objective: Metric) -> Vec<PointStats> {
    let mut measured: Vec<Vec<Measurement>> = vec![Vec::new(); points.len()];
    let mut sorted: Vec<&RunRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.point, r.rep));
    for r in sorted {
        if let Some(m) = measured.get_mut(r.point) {
            m.push(r.measurement.clone());
        }
    }
    let labels: Vec<(String, String)> = points.iter().map(|p| (p.label(), p.describe())).collect();
    answer::point_stats(&labels, &measured, objective)
}

fn write_outputs(
    bench: &BenchFiles,
    args: &TuneArgs,
    points: &[Point],
    report: &TuneReport<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    bench.write_json(report)?;
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(points.len() + 1);
    let mut header: Vec<String> = vec!["point".into()];
    header.extend(args.sweeps.iter().map(|s| s.key.clone()));
    header.push("reps".into());
    for m in Metric::ALL {
        for stat in ["median", "min", "max"] {
            header.push(format!("{}_{stat}", m.column()));
        }
    }
    rows.push(header);
    for (p, s) in points.iter().zip(report.points) {
        let mut row = vec![s.point.to_string()];
        row.extend(p.shown_values());
        row.push(s.reps.to_string());
        for m in Metric::ALL {
            match s.spread(m) {
                Some(x) => row.extend([x.median, x.min, x.max].map(|v| v.to_string())),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
        }
        rows.push(row);
    }
    bench.write_csv(&rows)?;
    let labels: Vec<String> = if points.len() <= 8 {
        points.iter().map(Point::label).collect()
    } else {
        (0..points.len()).map(|i| format!("p{i}")).collect()
    };
    let keys: Vec<&str> = args.sweeps.iter().map(|s| s.key.as_str()).collect();
    let panels: Vec<BarPanel> = Metric::ALL
        .iter()
        .map(|&m| BarPanel {
            caption: format!("{} by {}", m.title(), keys.join(" / ")),
            bars: report
                .points
                .iter()
                .map(|s| s.spread(m).map(|x| (x.median, x.min, x.max)))
                .collect(),
            highlight: report.answer.map(|a| a.best),
        })
        .collect();
    bar_panels(&bench.svg(), &labels, &panels)?;
    Ok(())
}

/// The table and the answer, as printed.
fn render(args: &TuneArgs, stats: &[PointStats], best: Option<&Answer>) -> String {
    let mut o = String::new();
    let keys: Vec<&str> = args.sweeps.iter().map(|s| s.key.as_str()).collect();
    let _ = writeln!(
        o,
        "cairn tune: {} point(s) x {} rep(s) of `cairn run {}`",
        stats.len(),
        args.reps,
        args.run_args.join(" ")
    );
    let head = keys.join(" / ");
    let width = stats
        .iter()
        .map(|s| s.label.chars().count())
        .chain([head.chars().count()])
        .max()
        .unwrap_or(0);
    let _ = write!(o, "{:>5}  {head:<width$} {:>4}", "point", "reps");
    for m in Metric::ALL {
        let _ = write!(o, " {:>20}", m.title());
    }
    o.push('\n');
    for s in stats {
        let mark = if best.is_some_and(|a| a.best == s.point) {
            '*'
        } else {
            ' '
        };
        let _ = write!(o, "{mark}{:>4}  {:<width$} {:>4}", s.point, s.label, s.reps);
        for m in Metric::ALL {
            let cell = s.spread(m).map_or_else(String::new, |x| {
                format!(
                    "{} ±{}",
                    answer::fmt(x.median),
                    answer::fmt((x.max - x.min) / 2.0)
                )
            });
            let _ = write!(o, " {cell:>20}");
        }
        o.push('\n');
    }
    if let Some(a) = best {
        let _ = writeln!(o, "{}", a.text);
    }
    o
}

/// A progress bar over the runs on stderr, hidden when stderr is not a terminal.
fn progress_bar(runs: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(runs), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs (eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_and_rotate() {
        assert_eq!(
            alternated_order(3, 2),
            vec![(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (0, 1)]
        );
    }

    #[test]
    fn the_fingerprint_changes_with_what_makes_runs_comparable() {
        let s: Vec<Sweep> = vec!["a.b=1,2".parse().expect("ok")];
        let args = vec!["--workload".to_string(), "update".to_string()];
        let f = fingerprint(&s, &args, None);
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint(&s, &args, None));
        assert_ne!(f, fingerprint(&s, &args[..1], None));
        assert_ne!(f, fingerprint(&s, &args, Some("x")));
        let other: Vec<Sweep> = vec!["a.b=1,3".parse().expect("ok")];
        assert_ne!(f, fingerprint(&other, &args, None));
    }

    #[test]
    fn flags_the_sweep_owns_or_that_override_a_swept_key_are_refused() {
        let tune = |extra: &[&str], sweep: &str| {
            let mut argv = vec!["cairn", "tune", "--out", "x", "--sweep", sweep, "--"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).expect("parses").command {
                Command::Tune(a) => check_run_args(&a),
                other => panic!("{other:?}"),
            }
        };
        let e = tune(&["--json=x.json"], "a.b=1").expect_err("owned");
        assert!(e.to_string().contains("--json"), "{e}");
        let e = tune(&["--memory", "64MiB"], "memory.managed-size=64MiB,128MiB").expect_err("set");
        assert!(e.to_string().contains("--memory"), "{e}");
        let e = tune(&["--bogus"], "a.b=1").expect_err("unknown flag");
        assert!(e.to_string().contains("--bogus"), "{e}");
        assert!(tune(&["--workload", "update"], "memory.managed-size=64MiB").is_ok());
    }
}
