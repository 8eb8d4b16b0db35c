//! Counters of a simulation run, printed by the test and `scripts/sim.sh`.

use std::fmt;

use crate::store::FaultCounts;

/// What a run did. Every field is a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps run.
    pub steps: u64,
    /// Worlds started (each runs a bounded number of steps on fresh storage).
    pub worlds: u64,
    /// Slot mutations.
    pub mutations: u64,
    /// Checkpoints attempted.
    pub checkpoints: u64,
    /// Reported committed.
    pub committed: u64,
    /// Reported failed.
    pub failed: u64,
    /// Reported "commit outcome unknown".
    pub in_doubt: u64,
    /// Cut by a crash of their writer.
    pub crashed: u64,
    /// Failed because the pre-commit phase timed out.
    pub timed_out: u64,
    /// Writers crashed (abandoned without releasing their lease).
    pub crashes: u64,
    /// Writers started again after a crash or a stop (same job or a new one).
    pub restarts: u64,
    /// Jobs taken over by a new writer after the old one's lease expired.
    pub takeovers: u64,
    /// Restores in claim mode.
    pub claims: u64,
    /// Restores in no-claim mode.
    pub no_claims: u64,
    /// Starts with nothing to restore.
    pub fresh_starts: u64,
    /// Second writers refused on a live job (`JobLocked`).
    pub refused_writers: u64,
    /// Lease renewals lost on purpose (the writer "paused").
    pub lost_renewals: u64,
    /// Checkpoint attempts by writers already superseded.
    pub zombie_attempts: u64,
    /// Of those, failed with `Fenced`.
    pub fenced_zombies: u64,
    /// Garbage collections run (all kinds).
    pub gc_runs: u64,
    /// Of those, started in the middle of a checkpoint.
    pub gc_concurrent: u64,
    /// Of those, with grace 0 and nothing in flight (then invariant 5 is checked).
    pub gc_zero: u64,
    /// Objects garbage collection deleted.
    pub gc_deleted: u64,
    /// Committed checkpoints whose stored bytes were compared with the model.
    pub verified: u64,
    /// Full restores (download + compare) by the checks and by restarting writers.
    pub restores: u64,
    /// Worlds whose restores could not use `Checkpointer::resume_from` (it opens storage
    /// from its URL) and went through the simulation's workaround instead.
    pub restore_workarounds: u64,
    /// What storage injected.
    pub faults: FaultCounts,
}

impl Stats {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += other.$f;)* };
        }
        sum!(
            steps,
            worlds,
            mutations,
            checkpoints,
            committed,
            failed,
            in_doubt,
            crashed,
            timed_out,
            crashes,
            restarts,
            takeovers,
            claims,
            no_claims,
            fresh_starts,
            refused_writers,
            lost_renewals,
            zombie_attempts,
            fenced_zombies,
            gc_runs,
            gc_concurrent,
            gc_zero,
            gc_deleted,
            verified,
            restores,
            restore_workarounds
        );
        self.faults.add(&other.faults);
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "steps {} in {} worlds; mutations {}",
            self.steps, self.worlds, self.mutations
        )?;
        writeln!(
            f,
            "checkpoints {}: committed {}, failed {} (timed out {}), in doubt {}, cut by a crash {}",
            self.checkpoints,
            self.committed,
            self.failed,
            self.timed_out,
            self.in_doubt,
            self.crashed
        )?;
        writeln!(
            f,
            "writers: crashes {}, restarts {}, takeovers {}, claims {}, no-claims {}, fresh starts {}",
            self.crashes,
            self.restarts,
            self.takeovers,
            self.claims,
            self.no_claims,
            self.fresh_starts
        )?;
        writeln!(
            f,
            "fencing: second writers refused {}, lost renewals {}, zombie attempts {} (fenced {})",
            self.refused_writers, self.lost_renewals, self.zombie_attempts, self.fenced_zombies
        )?;
        writeln!(
            f,
            "gc: runs {} (concurrent {}, grace 0 {}), objects deleted {}",
            self.gc_runs, self.gc_concurrent, self.gc_zero, self.gc_deleted
        )?;
        writeln!(
            f,
            "checks: checkpoints verified {}, full restores {}, worlds restoring without resume_from {}",
            self.verified, self.restores, self.restore_workarounds
        )?;
        let x = &self.faults;
        write!(
            f,
            "faults injected {} of {} store effects: errors {}, lost answers {}, partial writes {}, late landings {}, cut streams {}, stalls {}, refused renewals {}, calls of crashed writers {}",
            x.injected(),
            x.effects,
            x.error,
            x.lost_answer,
            x.partial,
            x.late,
            x.cut,
            x.spike,
            x.refused,
            x.crashed
        )
    }
}
