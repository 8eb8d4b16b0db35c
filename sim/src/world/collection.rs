//! Garbage collection steps: a collection started from the middle of a checkpoint (grace
//! above the checkpoint timeout), one with grace 0 while nothing is in flight (then nothing
//! unreferenced may remain: invariant 5), and a writer collecting its own job.

use std::time::Duration;

use cairn_snapshot::gc;
use rand::Rng;

use super::{GcHandle, World};
use crate::Failure;
use crate::model::Model;

impl World {
    /// Arms a garbage collection (with a grace period above the checkpoint timeout) to start at
    /// the `at`-th storage effect from now, in the middle of whatever runs then.
    pub(super) fn arm_gc(&mut self, at: u64) {
        let storage = self.gc_storage.clone();
        let grace = self.gc_grace;
        let tasks = self.gc_tasks.clone();
        self.cloud.add_hook(
            at,
            Box::new(move || {
                let h = tokio::spawn(async move {
                    let jobs = gc::jobs_under_root(&storage).await?;
                    gc::collect(&storage, &jobs, grace, true, &|_| false).await
                });
                if let Ok(mut t) = tasks.lock() {
                    t.push(h);
                }
            }),
        );
    }

    /// Arms a garbage collection at a random call of the next checkpoint, then runs it.
    pub(super) fn checkpoint_with_gc(&mut self) -> Result<(), Failure> {
        let at = self.rng.random_range(0..30);
        self.arm_gc(at);
        let wi = self.pick_writer();
        self.checkpoint(wi)?;
        Ok(())
    }

    /// Waits for garbage collections started by hooks.
    pub(super) fn join_gc(&mut self) -> Result<(), Failure> {
        let tasks: Vec<GcHandle> = match self.gc_tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return Err(self.fail("gc task list poisoned")),
        };
        for h in tasks {
            match self.rt.block_on(h) {
                Ok(Ok(report)) => {
                    self.stats.gc_runs += 1;
                    self.stats.gc_concurrent += 1;
                    self.stats.gc_deleted += report.orphans.len() as u64;
                    self.log(|| format!("concurrent gc deleted {:?}", report.orphans));
                }
                Ok(Err(e)) => self.log(|| format!("concurrent gc failed: {e}")),
                Err(e) => return Err(self.fail(format!("gc task panicked: {e}"))),
            }
        }
        Ok(())
    }

    /// Garbage collection with grace 0 while no checkpoint is in flight, then invariant 5.
    pub(super) fn gc_quiescent(&mut self) -> Result<(), Failure> {
        // Nothing in flight: no checkpoint runs between steps, and none is in doubt.
        let busy = self
            .writers
            .iter()
            .any(|w| !matches!(w.cp.store().pending_ids(), Ok(p) if p.is_empty()));
        if busy {
            return Ok(());
        }
        // Writes that land late would be orphans again after the collection.
        for _ in 0..100 {
            if self.cloud.late_pending() == 0 {
                break;
            }
            self.sleep(Duration::from_millis(500));
        }
        if self.cloud.late_pending() > 0 {
            return Ok(());
        }
        let storage = self.gc_storage.clone();
        let r = self.rt.block_on(async {
            let jobs = gc::jobs_under_root(&storage).await?;
            gc::collect(&storage, &jobs, Duration::ZERO, true, &|_| false).await
        });
        let report = r.map_err(|e| self.fail(format!("gc with grace 0 failed: {e}")))?;
        self.stats.gc_runs += 1;
        self.stats.gc_zero += 1;
        self.stats.gc_deleted += report.orphans.len() as u64;
        self.log(|| format!("gc grace 0 deleted {:?}", report.orphans));
        if !report.damaged.is_empty() {
            return Err(self.fail(format!(
                "gc found damaged committed checkpoints: {:?}",
                report.damaged
            )));
        }
        self.settle();
        let view = self.inspector.view();
        Model::check_no_orphans(&view).map_err(|e| self.fail(e))
    }

    /// A writer collects its own job's orphans (keeping what its checkpoints in flight use).
    pub(super) fn writer_gc(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        let grace = if self.rng.random_bool(0.5) {
            Duration::ZERO
        } else {
            self.gc_grace
        };
        match self.writers[wi].cp.gc(grace, true) {
            Ok(report) => {
                self.stats.gc_runs += 1;
                self.stats.gc_deleted += report.orphans.len() as u64;
            }
            Err(e) => self.log(|| format!("writer gc failed: {e}")),
        }
        Ok(())
    }
}
