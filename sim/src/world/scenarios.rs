//! The writer scenarios: a crash at any call of a checkpoint then a restart (the same job
//! taken over, or a new job restoring it in claim or no-claim mode), a clean stop and
//! restart, a second writer on a live job, a lease lost while "paused" (a zombie comes back),
//! a fork (a second job restores a live one in no-claim mode), and a writer retiring.

use std::time::Duration;

use cairn_engine::checkpoint::ClaimMode;
use rand::Rng;

use super::World;
use super::writers::{Lease, Opened};
use crate::Failure;
use crate::store::{FaultProfile, Op};

/// How a restarted writer gets its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Restart {
    /// The same job, taken over (after its lease expired, or at once when released).
    SameJob,
    /// A new job restoring the old one's checkpoint in claim mode.
    Claim,
    /// A new job restoring the old one's checkpoint in no-claim mode.
    NoClaim,
}

impl World {
    /// Restarts the job of a writer that stopped (crashed or cleanly).
    pub(super) fn restart(&mut self, old_job: &str) -> Result<(), Failure> {
        let how = match self.rng.random_range(0..10u32) {
            0..4 => Restart::SameJob,
            4..7 => Restart::Claim,
            _ => Restart::NoClaim,
        };
        self.stats.restarts += 1;
        let target = self.restore_target(old_job);
        let w = match how {
            Restart::SameJob => {
                // A second writer while the crashed one's lease is live must be refused.
                self.probe_locked(old_job)?;
                let mode = self.random_mode();
                let w = self.start_writer(old_job, Some((old_job.to_string(), target)), mode)?;
                if w.cp
                    .store()
                    .lease()
                    .is_some_and(|l| l.takeover() == cairn_snapshot::Takeover::Expired)
                {
                    self.stats.takeovers += 1;
                }
                w
            }
            Restart::Claim => {
                let job = self.new_job();
                self.start_writer(&job, Some((old_job.to_string(), target)), ClaimMode::Claim)?
            }
            Restart::NoClaim => {
                let job = self.new_job();
                self.start_writer(
                    &job,
                    Some((old_job.to_string(), target)),
                    ClaimMode::NoClaim,
                )?
            }
        };
        self.writers.push(w);
        self.restore_all()
    }

    /// Invariant 6 at a restart: while the old writer's lease is live, a new writer of its job
    /// is refused. Probed under calm storage, so the probe itself is quick.
    pub(super) fn probe_locked(&mut self, job: &str) -> Result<(), Failure> {
        let profile = self.cloud.profile();
        self.cloud.set_profile(FaultProfile::CALM);
        let lease = self.lease(job);
        let r = if lease == Lease::Live {
            match self.try_open(job, ClaimMode::NoClaim) {
                Opened::Ok(cp, _) => {
                    (*cp).abandon();
                    Err(self.fail(format!(
                        "invariant 6: a second writer opened {job} while its lease was live"
                    )))
                }
                Opened::Locked(_) => {
                    self.stats.refused_writers += 1;
                    Ok(())
                }
                Opened::Failed(e) => Err(self.fail(format!(
                    "opening a second writer of {job} under calm storage failed with {e}, not JobLocked"
                ))),
            }
        } else {
            Ok(())
        };
        self.cloud.set_profile(profile);
        r
    }

    /// Crashes a writer at a random call of a checkpoint (sometimes with a garbage collection
    /// starting alongside), then restarts its job.
    pub(super) fn crash_and_restart(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        let k = self.rng.random_range(0..40);
        self.writers[wi].process.crash_after(k);
        if self.rng.random_bool(0.3) {
            let at = self.rng.random_range(0..30);
            self.arm_gc(at);
        }
        self.checkpoint(wi)?;
        let w = self.writers.remove(wi);
        w.process.crash_now();
        let job = w.job.clone();
        let superseded = w.superseded;
        w.cp.abandon();
        self.stats.crashes += 1;
        self.log(|| format!("writer {} of {job} crashed", w.uid));
        self.join_gc()?;
        if superseded {
            // Its job has another writer already.
            return Ok(());
        }
        self.restart(&job)
    }

    /// Stops a writer cleanly (its lease is released) and restarts its job.
    pub(super) fn stop_and_restart(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        let w = self.writers.remove(wi);
        let job = w.job.clone();
        let superseded = w.superseded;
        drop(w);
        if superseded {
            return Ok(());
        }
        self.restart(&job)
    }

    /// A second writer on a live job must fail fast with `JobLocked`.
    pub(super) fn second_writer(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        if self.writers[wi].superseded {
            return Ok(());
        }
        let job = self.writers[wi].job.clone();
        self.probe_locked(&job)
    }

    /// A writer's lease renewals are lost while it is "paused" until its lease expires;
    /// another writer takes its job over; then the first tries to checkpoint (a zombie).
    pub(super) fn lost_renewal(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        if self.writers[wi].superseded {
            return Ok(());
        }
        let job = self.writers[wi].job.clone();
        let Some(epoch) = self.writers[wi].cp.store().epoch() else {
            return Ok(());
        };
        let rule = self
            .cloud
            .add_rule(Op::Put, format!("{job}/_writers/epoch-{epoch:020}"));
        self.stats.lost_renewals += 1;
        let pause = self.cfg.writer_lease_timeout
            + Duration::from_millis(self.rng.random_range(200..=2_000));
        self.sleep(pause);
        if self.rng.random_bool(0.3) {
            // Expired but not taken over yet: its commit can't renew the lease.
            self.checkpoint(wi)?;
        }
        let target = self.restore_target(&job);
        let mode = self.random_mode();
        let b = self.start_writer(&job, Some((job.clone(), target)), mode)?;
        self.stats.takeovers += 1;
        self.writers[wi].superseded = true;
        self.cloud.remove_rule(rule);
        self.writers.push(b);
        let bi = self.writers.len() - 1;
        for _ in 0..self.rng.random_range(0..=2) {
            self.mutate_writer(bi);
            self.checkpoint(bi)?;
            self.check()?;
        }
        self.mutate_writer(wi);
        // The zombie's attempt must not commit (checked by the model).
        self.checkpoint(wi)?;
        self.check()?;
        let a = self.writers.remove(wi);
        drop(a);
        Ok(())
    }

    pub(super) fn mutate_writer(&mut self, wi: usize) {
        let seed = self.seed;
        let counter = self.next_file;
        self.next_file += 2;
        let si = self.rng.random_range(0..self.writers[wi].slots.len());
        self.writers[wi].slots[si].add(seed, counter);
        self.stats.mutations += 1;
    }

    /// A second job restores a live job's latest checkpoint in no-claim mode; both go on.
    pub(super) fn fork(&mut self) -> Result<(), Failure> {
        if self.writers.len() >= 3 {
            return Ok(());
        }
        let wi = self.pick_writer();
        let src = self.writers[wi].job.clone();
        let target = self.restore_target(&src);
        let job = self.new_job();
        let w = self.start_writer(&job, Some((src, target)), ClaimMode::NoClaim)?;
        self.writers.push(w);
        Ok(())
    }

    /// Stops one of several writers cleanly.
    pub(super) fn retire(&mut self) {
        if self.writers.len() > 1 {
            let wi = self.pick_writer();
            let w = self.writers.remove(wi);
            drop(w);
        }
    }
}
