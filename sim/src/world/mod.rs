//! One simulated world: fresh storage, a virtual clock, and the writers (coordinators of jobs)
//! that a seeded random generator drives step by step, checking the model after every step.
//!
//! Every writer is a real [`Checkpointer`] on the world's single current-thread runtime with
//! paused time, talking to the [`SimCloud`] through its own [`crate::store::SimStore`] (its
//! "process", which can crash). A step is one of: mutate a slot, checkpoint, let time pass, change the fault
//! profile, crash a writer in the middle of a checkpoint and restart it (the same job taken
//! over after its lease expired, or a new job restoring it in claim or no-claim mode), stop a
//! writer cleanly and restart it, fork a job (a second job restores a live one in no-claim
//! mode and both go on), try a second writer on a live job, let a writer's lease lapse while it
//! is "paused" and let another take the job before the first tries again (a zombie), and run
//! garbage collection (from the middle of a checkpoint with a grace period, or with grace 0
//! when nothing is in flight).

mod collection;
mod scenarios;
mod writers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_engine::checkpoint::{CheckpointConfig, Checkpointer, ClaimMode};
use cairn_snapshot::{Clock, GcReport, SnapshotError, StorageOptions, StorageRoot, TokioClock};
use object_store::ObjectStore;
use object_store::path::Path;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::det::{hash_all, mix};
use crate::inspect::{Inspector, View};
use crate::model::{Model, Outcome};
use crate::slots::{SimSlot, SlotState};
use crate::stats::Stats;
use crate::store::{CloudOptions, FaultProfile, Process, SimCloud};
use crate::{Failure, SimConfig};

/// Virtual wall-clock time at the start of every world (2027-01-15).
const START_MS: u64 = 1_800_000_000_000;
/// Jobs restored from or written to live in this storage "URL" (it names the storage; the
/// store itself is handed in).
const URL: &str = "sim://";

/// A writer: one job's coordinator and its slots.
struct Writer {
    /// The simulation's id of the writer.
    uid: u64,
    job: String,
    cp: Checkpointer,
    process: Arc<Process>,
    slots: Vec<SimSlot>,
    /// Another writer took its job over: it is a zombie.
    superseded: bool,
}

type GcHandle = tokio::task::JoinHandle<Result<GcReport, SnapshotError>>;

/// One world. See the module doc.
pub struct World {
    run_seed: u64,
    seed: u64,
    step: u64,
    rng: StdRng,
    rt: Arc<tokio::runtime::Runtime>,
    clock: Arc<TokioClock>,
    cloud: Arc<SimCloud>,
    tmp: tempfile::TempDir,
    cfg: CheckpointConfig,
    nslots: u32,
    max_parallelism: u32,
    writers: Vec<Writer>,
    next_writer: u64,
    next_job: u64,
    next_file: u64,
    model: Model,
    inspector: Inspector,
    gc_storage: StorageRoot,
    gc_grace: Duration,
    gc_tasks: Arc<Mutex<Vec<GcHandle>>>,
    /// Stats of this world.
    pub stats: Stats,
    verbose: bool,
    /// (storage version, model revision) of the last check.
    checked: (u64, u64),
    /// `resume_from` can't open this storage: restores go through
    /// [`World::prepare_restore_workaround`].
    restore_workaround: bool,
}

impl World {
    /// A world of `seed` (derived from the run's seed), whose first step is `first_step` of
    /// the run.
    pub fn new(cfg: &SimConfig, seed: u64, first_step: u64) -> Result<Self, Failure> {
        let early = |e: String| Failure {
            seed: cfg.seed,
            step: first_step,
            message: e,
            trace: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| early(format!("runtime: {e}")))?;
        let rt = Arc::new(rt);
        let clock = Arc::new(TokioClock::new(rt.handle().clone(), START_MS));
        let cloud = SimCloud::new(
            seed,
            rt.handle(),
            clock.clone() as Arc<dyn Clock>,
            CloudOptions {
                partial_everywhere: cfg.partial_everywhere,
            },
        );
        let inspector =
            Inspector::new(cloud.inner().clone()).map_err(|e| early(format!("inspector: {e}")))?;
        // Snapshot and restore directories: on tmpfs when there is one (a step writes and
        // removes dozens of small files).
        let shm = std::path::Path::new("/dev/shm");
        let builder = || {
            let mut b = tempfile::Builder::new();
            b.prefix("cairn-sim-");
            b
        };
        let tmp = if shm.is_dir() {
            builder().tempdir_in(shm)
        } else {
            builder().tempdir()
        }
        .map_err(|e| early(format!("temp dir: {e}")))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cfg_cp = CheckpointConfig::default();
        cfg_cp.dir = URL.into();
        cfg_cp.interval = None;
        cfg_cp.timeout = Duration::from_millis(rng.random_range(3_000..=9_000));
        cfg_cp.writer_lease_timeout = Duration::from_secs(3);
        cfg_cp.retained = rng.random_range(1..=3);
        // One transfer at a time per slot: `transfer::run_parallel` yields in completion order,
        // and hashing runs on blocking threads (real time), so with more the order of a slot's
        // uploads would vary from run to run. Slots still run concurrently.
        cfg_cp.transfer_threads = 1;
        let mut storage = StorageOptions::default();
        storage.retry_max_attempts = 3;
        storage.retry_initial_backoff = Duration::from_millis(100);
        storage.retry_max_backoff = Duration::from_secs(2);
        cfg_cp.storage = storage;
        // The grace the engine asks for (`CheckpointConfig::min_gc_grace`: the checkpoint
        // timeout plus the commit's storage operations), computed for this store: one attempt
        // of a call takes at most the longest latency, spike and late landing of any fault
        // profile (this store has no request timeout of its own, so that bound stands in for
        // `s3-retry-timeout`). How far above is part of the search.
        cfg_cp.storage.s3_retry_timeout = FaultProfile::longest_call();
        let above = rng.random_range(0..=30);
        let gc_grace = cfg_cp.min_gc_grace() + Duration::from_secs(above);
        let nslots = rng.random_range(1..=3);
        let gc_process = cloud.process("gc", false);
        let gc_storage = StorageRoot::with_options(
            cloud.store(&gc_process) as Arc<dyn ObjectStore>,
            Path::default(),
            URL,
            &cfg_cp.storage,
        )
        .with_clock(clock.clone());
        let model = Model::new(cfg_cp.retained as usize);
        Ok(Self {
            run_seed: cfg.seed,
            seed,
            step: first_step,
            rng,
            rt,
            clock,
            cloud,
            tmp,
            cfg: cfg_cp,
            nslots,
            max_parallelism: 8,
            writers: Vec::new(),
            next_writer: 1,
            next_job: 1,
            next_file: 1,
            model,
            inspector,
            gc_storage,
            gc_grace,
            gc_tasks: Arc::new(Mutex::new(Vec::new())),
            stats: Stats {
                worlds: 1,
                ..Stats::default()
            },
            verbose: cfg.verbose,
            restore_workaround: false,
            checked: (u64::MAX, u64::MAX),
        })
    }

    /// A hash of every storage effect so far.
    pub fn trace_hash(&self) -> u64 {
        self.cloud.trace_hash()
    }

    fn fail(&self, message: impl Into<String>) -> Failure {
        Failure {
            seed: self.run_seed,
            step: self.step,
            message: format!(
                "{} [world seed {:#x}, {} slots, retained {}, timeout {:?}, gc grace {:?}, profile {}]",
                message.into(),
                self.seed,
                self.nslots,
                self.cfg.retained,
                self.cfg.timeout,
                self.gc_grace,
                self.cloud.profile().name
            ),
            trace: self.cloud.trace_hash(),
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!(
                "[step {} t={}] {}",
                self.step,
                self.clock.now_ms() - START_MS,
                what()
            );
        }
    }

    /// Lets everything due now take effect before storage is read directly (see
    /// [`SimCloud::settle`]).
    pub(super) fn settle(&self) {
        let cloud = self.cloud.clone();
        self.rt.block_on(async move { cloud.settle().await });
    }

    /// Lets `d` of virtual time pass (background tasks run meanwhile).
    fn sleep(&self, d: Duration) {
        // The timer must be made inside the runtime.
        self.rt.block_on(async move { tokio::time::sleep(d).await });
    }

    /// Runs `n` steps; the world's step counter continues the run's.
    pub fn run(&mut self, n: u64) -> Result<(), Failure> {
        for _ in 0..n {
            self.one_step()?;
            self.step += 1;
            self.stats.steps += 1;
        }
        self.stats.faults = self.cloud.counts();
        Ok(())
    }

    fn one_step(&mut self) -> Result<(), Failure> {
        if self.writers.is_empty() {
            let job = self.new_job();
            let w = self.start_writer(&job, None, ClaimMode::NoClaim)?;
            self.writers.push(w);
        }
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            0..520 => self.mutate(),
            520..660 => {
                let wi = self.pick_writer();
                self.checkpoint(wi).map(|_| ())?;
            }
            660..720 => {
                let d = Duration::from_millis(self.rng.random_range(50..=4_000));
                self.sleep(d);
            }
            720..750 => self.change_profile(),
            750..790 => self.checkpoint_with_gc()?,
            790..805 => self.crash_and_restart()?,
            805..812 => self.stop_and_restart()?,
            812..830 => self.second_writer()?,
            830..840 => self.lost_renewal()?,
            840..855 => self.gc_quiescent()?,
            855..862 => self.writer_gc()?,
            862..872 => self.fork()?,
            872..880 => self.retire(),
            _ => self.mutate(),
        }
        self.join_gc()?;
        self.cloud.clear_hooks();
        self.check()
    }

    fn pick_writer(&mut self) -> usize {
        self.rng.random_range(0..self.writers.len())
    }

    fn new_job(&mut self) -> String {
        let j = format!("job-{}", self.next_job);
        self.next_job += 1;
        j
    }

    fn storage_for(&self, process: &Arc<Process>) -> StorageRoot {
        StorageRoot::with_options(
            self.cloud.store(process) as Arc<dyn ObjectStore>,
            Path::default(),
            URL,
            &self.cfg.storage,
        )
        .with_clock(self.clock.clone())
    }

    fn mutate(&mut self) {
        let wi = self.pick_writer();
        let seed = self.seed;
        let si = self.rng.random_range(0..self.writers[wi].slots.len());
        let pick: u64 = self.rng.random();
        let what = self.rng.random_range(0..100u32);
        let counter = self.next_file;
        self.next_file += 2;
        // Two files of one content: one the slot dropped earlier, or one it holds now.
        let dup = if what % 2 == 0 {
            self.writers[wi].slots[si].content_of(mix(pick))
        } else {
            self.writers[wi].slots[si].dropped_content(mix(pick))
        };
        let slot = &mut self.writers[wi].slots[si];
        match what {
            _ if slot.len() > 7 => slot.compact(seed, counter, 4, pick),
            0..45 => {
                slot.add(seed, counter);
                if what % 3 == 0 {
                    slot.add(seed, counter + 1);
                }
            }
            45..70 if slot.len() >= 3 => slot.compact(seed, counter, 3, pick),
            70..80 => slot.drop_file(pick),
            80..90 => match dup {
                Some(content) => slot.add_content(counter, content),
                None => slot.add(seed, counter),
            },
            _ => slot.add(seed, counter),
        }
        self.stats.mutations += 1;
    }

    fn change_profile(&mut self) {
        let p = match self.rng.random_range(0..100u32) {
            0..40 => FaultProfile::CALM,
            40..75 => FaultProfile::FLAKY,
            75..90 => FaultProfile::SLOW,
            _ => FaultProfile::CHAOS,
        };
        self.log(|| format!("profile {}", p.name));
        self.cloud.set_profile(p);
    }

    /// Runs one checkpoint of writer `wi` and records it in the model.
    fn checkpoint(&mut self, wi: usize) -> Result<Outcome, Failure> {
        let step = self.step;
        let (job, writer, zombie, states) = {
            let w = &self.writers[wi];
            let states: Vec<SlotState> = w.slots.iter().map(SimSlot::state).collect();
            (w.job.clone(), w.uid, w.superseded, states)
        };
        let id = self.writers[wi].cp.trigger_checkpoint();
        let uid = self
            .model
            .begin(&job, id, writer, step, states.clone(), zombie);
        let base = self.tmp.path().join(format!("snap-{uid}"));
        let mut locals = Vec::new();
        for s in &states {
            let dir = base.join(format!("slot-{}", s.slot));
            match SimSlot::write_snapshot(s, &dir) {
                Ok(l) => locals.push(l),
                Err(e) => return Err(self.fail(format!("writing a snapshot: {e}"))),
            }
        }
        let props = BTreeMap::from([("sim.attempt".to_string(), uid.to_string())]);
        let w = &mut self.writers[wi];
        let r = w.cp.complete_local(id, locals, props);
        let _ = std::fs::remove_dir_all(&base);
        let dead = w.process.is_dead();
        let outcome = match &r {
            Ok(_) => Outcome::Committed,
            Err(_) if dead => Outcome::Crashed,
            // The engine folds the typed error into a message (see the crate doc, "API").
            Err(e) if e.to_string().contains("commit outcome unknown") => Outcome::InDoubt,
            Err(_) => Outcome::Failed,
        };
        self.stats.checkpoints += 1;
        match &outcome {
            Outcome::Committed => self.stats.committed += 1,
            Outcome::InDoubt => self.stats.in_doubt += 1,
            Outcome::Crashed => self.stats.crashed += 1,
            _ => {
                self.stats.failed += 1;
                if let Err(e) = &r
                    && e.to_string().contains("timed out")
                {
                    self.stats.timed_out += 1;
                }
            }
        }
        if zombie {
            self.stats.zombie_attempts += 1;
            if let Err(e) = &r
                && e.to_string().contains("fenced")
            {
                self.stats.fenced_zombies += 1;
            }
        }
        self.log(|| match &r {
            Ok(_) => format!("{job}/chk-{id} (attempt {uid}) committed"),
            Err(e) => format!("{job}/chk-{id} (attempt {uid}) {outcome:?}: {e}"),
        });
        self.model.finish(uid, outcome.clone());
        Ok(outcome)
    }

    /// The model's invariants against storage; contents of newly committed checkpoints.
    fn check(&mut self) -> Result<(), Failure> {
        self.settle();
        let now = (self.cloud.version(), self.model.revision());
        if now == self.checked {
            return Ok(());
        }
        self.checked = now;
        let view = self.inspector.view();
        let changes = self.model.check(&view).map_err(|e| self.fail(e))?;
        if changes.any() {
            self.verify_new(&view)?;
        }
        Ok(())
    }

    /// Compares every committed checkpoint not compared yet with the model (its bytes in
    /// storage; one in 16 also through a full restore, [`cairn_snapshot::CheckpointStore::download_slot`]).
    fn verify_new(&mut self, view: &View) -> Result<(), Failure> {
        for (job, id, states) in self.model.unverified() {
            let Some(c) = view.committed.get(&(job.clone(), id)) else {
                continue;
            };
            self.inspector
                .compare_contents(&c.meta, &states)
                .map_err(|e| self.fail(format!("invariant 1: {job}/chk-{id}: {e}")))?;
            if mix(hash_all(&[self.seed, id, job.len() as u64])).is_multiple_of(16) {
                let dir = self.tmp.path().join("verify");
                self.inspector
                    .restore_and_compare(&c.meta, &states, &dir)
                    .map_err(|e| self.fail(format!("invariant 1: {job}/chk-{id}: {e}")))?;
                self.stats.restores += 1;
            }
            self.model.verified(&job, id);
            self.stats.verified += 1;
        }
        Ok(())
    }

    /// At a restart: every committed checkpoint of every job holds the model's state (its
    /// stored bytes; the restarted writer's own restore went through a full download).
    fn restore_all(&mut self) -> Result<(), Failure> {
        self.checked = (u64::MAX, u64::MAX);
        self.check()?;
        let view = self.inspector.view();
        for ((job, id), c) in &view.committed {
            let Some(states) = c
                .attempt
                .and_then(|u| self.model.attempt(u))
                .map(|a| a.slots.clone())
            else {
                continue;
            };
            self.inspector
                .compare_contents(&c.meta, &states)
                .map_err(|e| self.fail(format!("invariant 1 at a restart: {job}/chk-{id}: {e}")))?;
            self.stats.verified += 1;
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Writers release their leases on the runtime they share; drop them before it.
        self.writers.clear();
    }
}
