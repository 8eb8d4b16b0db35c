//! `cairn savepoint`: create a savepoint from a committed checkpoint, and inspect one.
//!
//! A savepoint is the user's: self-contained (it shares nothing with the checkpoints it came
//! from), relocatable (move its directory anywhere) and never deleted by Cairn. Restore one with
//! `cairn run --restore-from <savepoint url>`; a canonical savepoint also switches the backend
//! (`--backend heap|rocksdb`) and any savepoint the slot count (`--slots`).

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_engine::CairnConfig;
use cairn_engine::checkpoint::CheckpointLocation;
use cairn_engine::savepoint::{SavepointKind, SavepointLocation, create_savepoint};
use cairn_snapshot::savepoint::SavepointDir;
use cairn_snapshot::{StorageOptions, StorageRoot};
use clap::{Args, Subcommand, ValueEnum};

/// `cairn savepoint ...`
#[derive(Debug, Args)]
pub struct SavepointArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SavepointCommand,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Backend-independent entries: restores into either backend and any slot count.
    Canonical,
    /// The backend's files as they are: fast, same backend only.
    Native,
}

impl From<FormatArg> for SavepointKind {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Canonical => SavepointKind::Canonical,
            FormatArg::Native => SavepointKind::Native,
        }
    }
}

/// The `cairn savepoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum SavepointCommand {
    /// Write a savepoint of a committed checkpoint.
    Create {
        /// The checkpoint: `<checkpoint dir>/<job>` (its latest) or `.../<job>/chk-<id>`.
        checkpoint: String,
        /// Where the savepoint goes: `<storage url>/<name>` (a new directory).
        savepoint: String,
        /// The format.
        #[arg(long, value_enum, default_value_t = FormatArg::Canonical)]
        format: FormatArg,
        /// A TOML configuration file (storage options, working directory for scratch files).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a savepoint's manifest.
    Inspect {
        /// The savepoint: `<storage url>/<name>`.
        savepoint: String,
        /// Print the whole manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `cairn savepoint`; the exit code: 0 done, 1 failed, 2 bad input.
pub fn run(args: SavepointArgs) -> ExitCode {
    match dispatch(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("error: {e}");
            ExitCode::from(code)
        }
    }
}

type CmdResult = Result<(), (u8, String)>;

fn input(e: impl std::fmt::Display) -> (u8, String) {
    (2, e.to_string())
}

fn failed(e: impl std::fmt::Display) -> (u8, String) {
    (1, e.to_string())
}

fn dispatch(cmd: SavepointCommand) -> CmdResult {
    match cmd {
        SavepointCommand::Create {
            checkpoint,
            savepoint,
            format,
            config,
            json,
        } => {
            let config = match config {
                Some(p) => CairnConfig::from_toml_file(&p).map_err(input)?,
                None => CairnConfig::default(),
            };
            let source = CheckpointLocation::parse(&checkpoint).map_err(input)?;
            let target = SavepointLocation::parse(&savepoint).map_err(input)?;
            let report =
                create_savepoint(&config, &source, &target, format.into()).map_err(|e| {
                    if matches!(
                        e.kind(),
                        cairn_engine::ErrorKind::InvalidArgument
                            | cairn_engine::ErrorKind::InvalidConfig
                    ) {
                        input(e)
                    } else {
                        failed(e)
                    }
                })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
            } else {
                println!(
                    "savepoint {} ({}) of checkpoint {} ({} slots): {} entries, {} timers, {} expired left out, {} objects, {} bytes stored, {:.2} s",
                    report.location,
                    report.kind.name(),
                    report.checkpoint_id,
                    report.parallelism,
                    report.entries,
                    report.timers,
                    report.expired,
                    report.files,
                    report.stored_bytes,
                    report.seconds
                );
            }
            Ok(())
        }
        SavepointCommand::Inspect { savepoint, json } => {
            let target = SavepointLocation::parse(&savepoint).map_err(input)?;
            let storage = StorageRoot::from_url(&target.storage_url, &StorageOptions::default())
                .map_err(input)?;
            let dir = SavepointDir::new(storage.root(), &target.name).map_err(input)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(failed)?;
            let manifest = rt
                .block_on(dir.read_manifest(&storage))
                .map_err(failed)?
                .ok_or_else(|| failed(format!("no savepoint at {}", target.url())))?;
            if json {
                println!("{}", String::from_utf8_lossy(&manifest.to_bytes()));
                return Ok(());
            }
            println!("savepoint   {}", target.url());
            println!(
                "format      {} (version {})",
                manifest.kind.name(),
                manifest.version
            );
            println!(
                "taken from  {} chk-{} ({} slots, {} backend, max parallelism {})",
                manifest.source.job,
                manifest.source.checkpoint_id,
                manifest.parallelism,
                manifest.backend,
                manifest.max_parallelism
            );
            for s in &manifest.states {
                println!("state       {} ({})", s.name, s.kind);
            }
            let (files, bytes) = match &manifest.checkpoint {
                Some(c) => c.slots.iter().fold((0, 0), |(n, b), h| {
                    (
                        n + h.shared.len() + h.private.len(),
                        b + h.shared.iter().map(|f| f.size).sum::<u64>()
                            + h.private.iter().map(|f| f.stored_size).sum::<u64>(),
                    )
                }),
                None => (
                    manifest.chunks.len() + manifest.operator_state.len(),
                    manifest.chunks.iter().map(|c| c.stored_size).sum::<u64>()
                        + manifest
                            .operator_state
                            .iter()
                            .map(|f| f.stored_size)
                            .sum::<u64>(),
                ),
            };
            println!("files       {files} ({bytes} bytes stored)");
            for (k, v) in &manifest.properties {
                println!("property    {k} = {v}");
            }
            Ok(())
        }
    }
}
