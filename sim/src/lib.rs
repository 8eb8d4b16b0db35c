//! A deterministic simulation of Cairn's checkpoint protocol (SlateDB's deterministic
//! simulation is the model).
//!
//! It drives the real coordinator ([`cairn_engine::checkpoint::Checkpointer`]), registry and
//! storage in one process, on one current-thread tokio runtime with paused (virtual) time,
//! against a fault-injecting in-memory object store ([`store`]), from a seed. Writers
//! checkpoint synthetic slots ([`slots`]), crash at any call and restart (the same job taken
//! over, or a new job restoring it in claim or no-claim mode), lose their lease while paused
//! and come back as zombies, meet a second writer, and share storage with garbage collection
//! running in the middle of their checkpoints. After every step the model ([`model`]) checks
//! storage ([`inspect`]): every committed checkpoint restores exactly what was checkpointed,
//! commits are final, failures never commit, nothing referenced is missing, garbage
//! collection leaves nothing behind, zombies commit nothing.
//!
//! What it is not: a benchmark, or a test of RocksDB (slots are synthetic files, see
//! [`slots`]).
//!
//! ## Reproducing a failure
//! A failure names its seed and step; `CAIRN_SIM_SEED=<seed> CAIRN_SIM_STEPS=<step + 1>` runs
//! the same steps again (every random choice is a function of the seed; see [`store`] for how
//! concurrent tasks are kept deterministic), and `CAIRN_SIM_VERBOSE=1` prints each step.
//!
//! ```no_run
//! let cfg = cairn_sim::SimConfig { seed: 7, steps: 1_000, ..cairn_sim::SimConfig::default() };
//! match cairn_sim::run(&cfg) {
//!     Ok(report) => println!("{}", report.stats),
//!     Err(failure) => panic!("{failure}"),
//! }
//! ```
//!
//! ## What it reads from error messages
//! The engine reports a failed checkpoint as `EngineError::CheckpointFailed { reason }`, a
//! string: a commit whose outcome is unknown (`SnapshotError::CommitInDoubt`) is recognized by
//! its message ("commit outcome unknown"), as are timeouts and fencing (for the counters only).
#![deny(missing_docs)]

pub mod det;
pub mod inspect;
pub mod model;
pub mod slots;
pub mod stats;
pub mod store;
pub mod world;

use std::fmt;
use std::time::Instant;

pub use stats::Stats;
pub use store::{FaultProfile, SimCloud, SimStore};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: everything follows from it.
    pub seed: u64,
    /// Steps in total.
    pub steps: u64,
    /// Steps per world: each world starts on fresh storage, so a long run stays fast.
    pub world_steps: u64,
    /// Let create-only puts (commits, leases) be truncated too. Off by default: no real store
    /// writes a create-only object non-atomically (S3's conditional put and `LocalFileSystem`'s
    /// link are atomic).
    pub partial_create: bool,
    /// Print every step's actions to stderr.
    pub verbose: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            steps: 1_000,
            world_steps: 2_000,
            partial_create: false,
            verbose: false,
        }
    }
}

impl SimConfig {
    /// The default configuration with `CAIRN_SIM_SEED`, `CAIRN_SIM_STEPS`,
    /// `CAIRN_SIM_WORLD_STEPS`, `CAIRN_SIM_PARTIAL_CREATE` and `CAIRN_SIM_VERBOSE` applied.
    pub fn from_env(seed: u64, steps: u64) -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let flag = |k: &str| std::env::var(k).is_ok_and(|v| v == "1" || v == "true");
        let d = Self::default();
        Self {
            seed: num("CAIRN_SIM_SEED").unwrap_or(seed),
            steps: num("CAIRN_SIM_STEPS").unwrap_or(steps),
            world_steps: num("CAIRN_SIM_WORLD_STEPS").unwrap_or(d.world_steps).max(1),
            partial_create: flag("CAIRN_SIM_PARTIAL_CREATE"),
            verbose: flag("CAIRN_SIM_VERBOSE"),
        }
    }
}

/// A broken invariant (or a harness error), with what it takes to reproduce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// The step (0-based over the whole run) at which it was found.
    pub step: u64,
    /// What is wrong.
    pub message: String,
    /// Hash of every storage effect of the failing world up to the failure: a rerun must
    /// reproduce it.
    pub trace: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed: seed {} step {}: {} (trace {:016x}); reproduce with CAIRN_SIM_SEED={} CAIRN_SIM_STEPS={}",
            self.seed,
            self.step,
            self.message,
            self.trace,
            self.seed,
            self.step + 1
        )
    }
}

impl std::error::Error for Failure {}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Counters.
    pub stats: Stats,
    /// Hash of every storage effect of every world: equal for two runs of one seed.
    pub trace: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Report {
    /// Steps per wall-clock second.
    pub fn steps_per_second(&self) -> f64 {
        self.stats.steps as f64 / self.seconds.max(1e-9)
    }
}

/// Runs the simulation: worlds of `world_steps` steps until `steps` ran, or the first
/// broken invariant.
pub fn run(cfg: &SimConfig) -> Result<Report, Failure> {
    let t = Instant::now();
    let mut stats = Stats::default();
    let mut trace = 0;
    let mut step = 0;
    let mut index = 0;
    while step < cfg.steps {
        let n = cfg.world_steps.min(cfg.steps - step);
        let seed = det::hash_all(&[cfg.seed, index]);
        let mut world = world::World::new(cfg, seed, step)?;
        world.run(n)?;
        stats.add(&world.stats);
        trace = det::hash_all(&[trace, world.trace_hash()]);
        step += n;
        index += 1;
    }
    Ok(Report {
        seed: cfg.seed,
        stats,
        trace,
        seconds: t.elapsed().as_secs_f64(),
    })
}
