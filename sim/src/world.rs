//! One simulated world: fresh storage, a virtual clock, and the writers (coordinators of jobs)
//! that a seeded random generator drives step by step, checking the model after every step.
//!
//! Every writer is a real [`Checkpointer`] on the world's single current-thread runtime with
//! paused time, talking to the [`SimCloud`] through its own [`SimStore`] (its "process", which
//! can crash). A step is one of: mutate a slot, checkpoint, let time pass, change the fault
//! profile, crash a writer in the middle of a checkpoint and restart it (the same job taken
//! over after its lease expired, or a new job restoring it in claim or no-claim mode), stop a
//! writer cleanly and restart it, fork a job (a second job restores a live one in no-claim
//! mode and both go on), try a second writer on a live job, let a writer's lease lapse while it
//! is "paused" and let another take the job before the first tries again (a zombie), and run
//! garbage collection (from the middle of a checkpoint with a grace period, or with grace 0
//! when nothing is in flight).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_engine::EngineError;
use cairn_engine::checkpoint::{CheckpointConfig, Checkpointer, RestoreMode, RestoreSource};
use cairn_snapshot::{
    CheckpointStorage, CheckpointStore, Clock, GcReport, SnapshotError, StorageOptions, TokioClock,
    gc,
};
use object_store::ObjectStore;
use object_store::path::Path;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::det::{hash_all, mix};
use crate::inspect::{Inspector, View, compare_dir};
use crate::model::{Model, Outcome};
use crate::slots::{SimSlot, SlotState, key_groups};
use crate::stats::Stats;
use crate::store::{FaultProfile, Op, Process, SimCloud};
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
    /// Another writer took its job over (or claimed its checkpoint): it is a zombie.
    superseded: bool,
}

/// What the top lease record of a job says, read from storage directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Held and renewed recently (with a margin): a second writer must be refused.
    Live,
    /// Released, or not renewed for longer than the timeout (with a margin).
    Free,
    /// Too close to call.
    Unclear,
}

/// How a restarted writer gets its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    /// The same job, taken over (after its lease expired, or at once when released).
    SameJob,
    /// A new job restoring the old one's checkpoint in claim mode.
    Claim,
    /// A new job restoring the old one's checkpoint in no-claim mode.
    NoClaim,
}

/// Result of trying to open a writer.
enum Opened {
    Ok(Box<Checkpointer>, Arc<Process>),
    Locked(String),
    Failed(String),
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
    gc_storage: CheckpointStorage,
    gc_grace: Duration,
    gc_tasks: Arc<Mutex<Vec<GcHandle>>>,
    /// Stats of this world.
    pub stats: Stats,
    verbose: bool,
    /// (storage version, model revision) of the last check.
    checked: (u64, u64),
}

fn transient(e: &EngineError) -> bool {
    match e {
        EngineError::Checkpoint(s) => s.is_transient(),
        _ => false,
    }
}

fn is_locked(e: &EngineError) -> bool {
    matches!(e, EngineError::Checkpoint(SnapshotError::JobLocked { .. }))
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
            cfg.partial_create,
        );
        let inspector =
            Inspector::new(cloud.inner().clone()).map_err(|e| early(format!("inspector: {e}")))?;
        let tmp = tempfile::Builder::new()
            .prefix("cairn-sim-")
            .tempdir()
            .map_err(|e| early(format!("temp dir: {e}")))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cfg_cp = CheckpointConfig::default();
        cfg_cp.dir = URL.into();
        cfg_cp.interval = None;
        cfg_cp.timeout = Duration::from_millis(rng.random_range(3_000..=9_000));
        cfg_cp.writer_lease_timeout = Duration::from_secs(3);
        cfg_cp.retained = rng.random_range(1..=3);
        cfg_cp.transfer_threads = rng.random_range(1..=3);
        let mut storage = StorageOptions::default();
        storage.retry_max_attempts = 3;
        storage.retry_initial_backoff = Duration::from_millis(100);
        storage.retry_max_backoff = Duration::from_secs(2);
        cfg_cp.storage = storage;
        // Above the checkpoint timeout, as `gc` asks; how far above is part of the search.
        let gc_grace = cfg_cp.timeout + Duration::from_secs(rng.random_range(1..=60));
        let nslots = rng.random_range(1..=3);
        let gc_process = cloud.process("gc", false);
        let gc_storage = CheckpointStorage::with_options(
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
            eprintln!("[step {} t={}] {}", self.step, self.clock.now_ms() - START_MS, what());
        }
    }

    fn sleep(&self, d: Duration) {
        self.rt.block_on(tokio::time::sleep(d));
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
            let w = self.start_writer(&job, None, RestoreMode::NoClaim)?;
            self.writers.push(w);
        }
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            0..400 => self.mutate(),
            400..620 => {
                let wi = self.pick_writer();
                self.checkpoint(wi).map(|_| ())?;
            }
            620..700 => {
                let d = Duration::from_millis(self.rng.random_range(50..=4_000));
                self.sleep(d);
            }
            700..740 => self.change_profile(),
            740..790 => self.checkpoint_with_gc()?,
            790..815 => self.crash_and_restart()?,
            815..830 => self.stop_and_restart()?,
            830..850 => self.second_writer()?,
            850..865 => self.lost_renewal()?,
            865..880 => self.gc_quiescent()?,
            880..890 => self.writer_gc()?,
            890..905 => self.fork()?,
            905..915 => self.retire(),
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

    fn storage_for(&self, process: &Arc<Process>) -> CheckpointStorage {
        CheckpointStorage::with_options(
            self.cloud.store(process) as Arc<dyn ObjectStore>,
            Path::default(),
            URL,
            &self.cfg.storage,
        )
        .with_clock(self.clock.clone())
    }

    // ---- steps -------------------------------------------------------------------------

    fn mutate(&mut self) {
        let wi = self.pick_writer();
        let seed = self.seed;
        let si = self.rng.random_range(0..self.writers[wi].slots.len());
        let pick: u64 = self.rng.random();
        let what = self.rng.random_range(0..100u32);
        let counter = self.next_file;
        self.next_file += 2;
        let slot = &mut self.writers[wi].slots[si];
        match what {
            _ if slot.len() > 10 => slot.compact(seed, counter, 4, pick),
            0..45 => {
                slot.add(seed, counter);
                if what % 3 == 0 {
                    slot.add(seed, counter + 1);
                }
            }
            45..70 if slot.len() >= 3 => slot.compact(seed, counter, 3, pick),
            70..80 => slot.drop_file(pick),
            80..90 => slot.add_duplicate(seed, counter, pick),
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
        let id = self.writers[wi].cp.next_id();
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

    /// Arms a garbage collection (with a grace period above the checkpoint timeout) at a
    /// random call of the next checkpoint, then runs it.
    fn checkpoint_with_gc(&mut self) -> Result<(), Failure> {
        let at = self.rng.random_range(0..30);
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
        let wi = self.pick_writer();
        self.checkpoint(wi)?;
        Ok(())
    }

    /// Waits for garbage collections started by hooks.
    fn join_gc(&mut self) -> Result<(), Failure> {
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
    fn gc_quiescent(&mut self) -> Result<(), Failure> {
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
        let view = self.inspector.view();
        Model::check_no_orphans(&view).map_err(|e| self.fail(e))
    }

    /// A writer collects its own job's orphans (keeping what its checkpoints in flight use).
    fn writer_gc(&mut self) -> Result<(), Failure> {
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

    // ---- writers -----------------------------------------------------------------------

    /// What the top lease record of `job` says now.
    fn lease(&mut self, job: &str) -> Lease {
        let prefix = format!("{job}/_writers/");
        let view = self.inspector.view();
        let Some(top) = view
            .objects
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .max()
            .cloned()
        else {
            return Lease::Free;
        };
        let Some(bytes) = self.inspector.bytes(&top) else {
            return Lease::Unclear;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Lease::Unclear;
        };
        let released = v["released"].as_bool().unwrap_or(false);
        let renewed = v["renewed_at_ms"].as_u64().unwrap_or(0);
        let now = self.clock.now_ms();
        let timeout = self.cfg.writer_lease_timeout.as_millis() as u64;
        let age = now.saturating_sub(renewed);
        let late = self.cloud.late_pending() > 0;
        if !released && age + 500 < timeout {
            Lease::Live
        } else if (released || age > timeout + 500) && !late {
            Lease::Free
        } else {
            Lease::Unclear
        }
    }

    /// Tries once to open a writer of `job`.
    fn try_open(&mut self, job: &str, mode: RestoreMode) -> Opened {
        let uid = self.next_writer;
        let process = self.cloud.process(format!("writer-{uid}"), true);
        let storage = self.storage_for(&process);
        let mut cfg = self.cfg.clone();
        cfg.restore_mode = mode;
        match Checkpointer::open_on(&cfg, storage, job, self.max_parallelism, self.rt.clone()) {
            Ok(cp) => {
                self.next_writer += 1;
                Opened::Ok(Box::new(cp), process)
            }
            Err(e) if is_locked(&e) => Opened::Locked(e.to_string()),
            Err(e) => Opened::Failed(e.to_string()),
        }
    }

    /// Opens a writer of `job`, waiting out a live lease and retrying transient failures.
    fn open(&mut self, job: &str, mode: RestoreMode) -> Result<(Checkpointer, Arc<Process>), Failure> {
        let profile = self.cloud.profile();
        let mut last = String::new();
        for attempt in 0..10 {
            if attempt == 6 {
                // Storage this hostile for this long is not what is being tested.
                self.cloud.set_profile(FaultProfile::CALM);
            }
            match self.try_open(job, mode) {
                Opened::Ok(cp, p) => {
                    self.cloud.set_profile(profile);
                    return Ok((*cp, p));
                }
                Opened::Locked(e) => {
                    last = e;
                    self.sleep(self.cfg.writer_lease_timeout + Duration::from_millis(100));
                }
                Opened::Failed(e) => {
                    last = e;
                    self.sleep(Duration::from_millis(300));
                }
            }
        }
        Err(self.fail(format!("could not open a writer of {job}: {last}")))
    }

    /// Starts a writer of `job`, restoring `source` (job, checkpoint or latest) when given.
    fn start_writer(
        &mut self,
        job: &str,
        source: Option<(String, Option<u64>)>,
        mode: RestoreMode,
    ) -> Result<Writer, Failure> {
        let (cp, process) = self.open(job, mode)?;
        let uid = self.next_writer - 1;
        let mut w = Writer {
            uid,
            job: job.to_string(),
            cp,
            process,
            slots: (0..self.nslots)
                .map(|i| SimSlot::new(i, key_groups(i, self.nslots, self.max_parallelism)))
                .collect(),
            superseded: false,
        };
        match source {
            Some((src, id)) => {
                if !self.restore(&mut w, &src, id, mode)? {
                    self.stats.fresh_starts += 1;
                }
            }
            None => self.stats.fresh_starts += 1,
        }
        self.log(|| format!("writer {uid} of {job} started ({:?})", w.cp.store().lease().map(|l| (l.epoch(), l.takeover()))));
        Ok(w)
    }

    /// Restores checkpoint `id` (or the latest) of job `src` into writer `w` the way a host
    /// does, and compares what was downloaded with the model. Returns false when there was
    /// nothing to restore.
    fn restore(
        &mut self,
        w: &mut Writer,
        src: &str,
        id: Option<u64>,
        mode: RestoreMode,
    ) -> Result<bool, Failure> {
        let source = RestoreSource {
            storage_url: URL.into(),
            job: src.to_string(),
            checkpoint: id,
        };
        let mut last = String::new();
        let mut restored = None;
        for attempt in 0..10 {
            match w.cp.prepare_restore(&source) {
                Ok(r) => {
                    restored = Some(r);
                    break;
                }
                Err(EngineError::Checkpoint(SnapshotError::NoCheckpoint { .. })) => {
                    return Ok(false);
                }
                Err(e) if is_locked(&e) => {
                    last = e.to_string();
                    self.sleep(self.cfg.writer_lease_timeout + Duration::from_millis(100));
                }
                Err(e) if transient(&e) || attempt < 3 => {
                    last = e.to_string();
                    self.sleep(Duration::from_millis(300));
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        let Some(restored) = restored else {
            return Err(self.fail(format!(
                "writer of {} could not restore {src}/{id:?}: {last}",
                w.job
            )));
        };
        let meta = restored.metadata.clone();
        let uid = meta
            .properties
            .get("sim.attempt")
            .and_then(|a| a.parse::<u64>().ok())
            .ok_or_else(|| self.fail(format!("{src}/chk-{} names no attempt", meta.checkpoint_id)))?;
        let expected = self
            .model
            .attempt(uid)
            .map(|a| a.slots.clone())
            .ok_or_else(|| self.fail(format!("{src}/chk-{} names unknown attempt {uid}", meta.checkpoint_id)))?;
        let dest = self
            .tmp
            .path()
            .join(format!("restore-{}-{}", w.uid, meta.checkpoint_id));
        for h in &meta.slots {
            let d = dest.join(format!("slot-{}", h.slot));
            let mut result = Err(String::new());
            for _ in 0..5 {
                let _ = std::fs::remove_dir_all(&d);
                let storage = w.cp.store().storage().clone();
                let threads = self.cfg.transfer_threads as usize;
                let r = self.rt.block_on(CheckpointStore::download_slot(
                    &storage, h, &d, threads, true,
                ));
                match r {
                    Ok(_) => {
                        result = Ok(());
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        result = Err(e.to_string());
                        self.sleep(Duration::from_millis(300));
                    }
                    Err(e) => {
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            if let Err(e) = result {
                return Err(self.fail(format!(
                    "invariant 1: restoring slot {} of committed {src}/chk-{} (attempt {uid}) failed: {e}",
                    h.slot, meta.checkpoint_id
                )));
            }
            compare_dir(h, &d, &expected).map_err(|e| {
                self.fail(format!(
                    "invariant 1: {src}/chk-{} (attempt {uid}) restored other files than the model's: {e}",
                    meta.checkpoint_id
                ))
            })?;
        }
        let _ = std::fs::remove_dir_all(&dest);
        self.stats.restores += 1;
        w.slots = expected.iter().map(SimSlot::restored).collect();
        match mode {
            RestoreMode::Claim => {
                self.stats.claims += 1;
                if src != w.job {
                    self.model.claimed(src, meta.checkpoint_id, &w.job);
                }
            }
            RestoreMode::NoClaim => self.stats.no_claims += 1,
        }
        self.log(|| format!("writer {} restored {src}/chk-{} ({mode:?})", w.uid, meta.checkpoint_id));
        Ok(true)
    }

    /// A committed checkpoint of `job` to restore: the latest, sometimes an older retained one.
    fn restore_target(&mut self, job: &str) -> Option<u64> {
        let view = self.inspector.view();
        let ids: Vec<u64> = view
            .committed
            .keys()
            .filter(|(j, _)| j == job)
            .map(|(_, i)| *i)
            .collect();
        if ids.len() > 1 && self.rng.random_bool(0.25) {
            Some(ids[self.rng.random_range(0..ids.len())])
        } else {
            None
        }
    }

    fn random_mode(&mut self) -> RestoreMode {
        if self.rng.random_bool(0.5) {
            RestoreMode::Claim
        } else {
            RestoreMode::NoClaim
        }
    }

    /// Restarts the job of a writer that stopped (crashed or cleanly).
    fn restart(&mut self, old_job: &str) -> Result<(), Failure> {
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
                if w.cp.store().lease().is_some_and(|l| l.takeover() == cairn_snapshot::Takeover::Expired) {
                    self.stats.takeovers += 1;
                }
                w
            }
            Restart::Claim => {
                let job = self.new_job();
                self.start_writer(&job, Some((old_job.to_string(), target)), RestoreMode::Claim)?
            }
            Restart::NoClaim => {
                let job = self.new_job();
                self.start_writer(&job, Some((old_job.to_string(), target)), RestoreMode::NoClaim)?
            }
        };
        self.writers.push(w);
        self.restore_all()
    }

    /// Invariant 6 at a restart: while the old writer's lease is live, a new writer of its job
    /// is refused. Probed under calm storage, so the probe itself is quick.
    fn probe_locked(&mut self, job: &str) -> Result<(), Failure> {
        let profile = self.cloud.profile();
        self.cloud.set_profile(FaultProfile::CALM);
        let lease = self.lease(job);
        let r = if lease == Lease::Live {
            match self.try_open(job, RestoreMode::NoClaim) {
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
    fn crash_and_restart(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        let k = self.rng.random_range(0..40);
        self.writers[wi].process.crash_after(k);
        if self.rng.random_bool(0.3) {
            let storage = self.gc_storage.clone();
            let grace = self.gc_grace;
            let tasks = self.gc_tasks.clone();
            let at = self.rng.random_range(0..30);
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
    fn stop_and_restart(&mut self) -> Result<(), Failure> {
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
    fn second_writer(&mut self) -> Result<(), Failure> {
        let wi = self.pick_writer();
        if self.writers[wi].superseded {
            return Ok(());
        }
        let job = self.writers[wi].job.clone();
        self.probe_locked(&job)
    }

    /// A writer's lease renewals are lost while it is "paused" until its lease expires;
    /// another writer takes its job over; then the first tries to checkpoint (a zombie).
    fn lost_renewal(&mut self) -> Result<(), Failure> {
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
        let pause = self.cfg.writer_lease_timeout + Duration::from_millis(self.rng.random_range(200..=2_000));
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

    fn mutate_writer(&mut self, wi: usize) {
        let seed = self.seed;
        let counter = self.next_file;
        self.next_file += 2;
        let si = self.rng.random_range(0..self.writers[wi].slots.len());
        self.writers[wi].slots[si].add(seed, counter);
        self.stats.mutations += 1;
    }

    /// A second job restores a live job's latest checkpoint in no-claim mode; both go on.
    fn fork(&mut self) -> Result<(), Failure> {
        if self.writers.len() >= 3 {
            return Ok(());
        }
        let wi = self.pick_writer();
        let src = self.writers[wi].job.clone();
        let target = self.restore_target(&src);
        let job = self.new_job();
        let w = self.start_writer(&job, Some((src, target)), RestoreMode::NoClaim)?;
        self.writers.push(w);
        Ok(())
    }

    /// Stops one of several writers cleanly.
    fn retire(&mut self) {
        if self.writers.len() > 1 {
            let wi = self.pick_writer();
            let w = self.writers.remove(wi);
            drop(w);
        }
    }

    // ---- checks ------------------------------------------------------------------------

    /// The model's invariants against storage; contents of newly committed checkpoints.
    fn check(&mut self) -> Result<(), Failure> {
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
    /// storage; a quarter of them also through a full restore).
    fn verify_new(&mut self, view: &View) -> Result<(), Failure> {
        for (job, id, states) in self.model.unverified() {
            let Some(c) = view.committed.get(&(job.clone(), id)) else {
                continue;
            };
            self.inspector
                .compare_contents(&c.meta, &states)
                .map_err(|e| self.fail(format!("invariant 1: {job}/chk-{id}: {e}")))?;
            if mix(hash_all(&[self.seed, id, job.len() as u64])) % 4 == 0 {
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

    /// At a restart: every committed checkpoint of every job restores the model's state.
    fn restore_all(&mut self) -> Result<(), Failure> {
        let view = self.inspector.view();
        self.model.check(&view).map_err(|e| self.fail(e))?;
        let dir = self.tmp.path().join("verify");
        for ((job, id), c) in &view.committed {
            let Some(states) = c
                .attempt
                .and_then(|u| self.model.attempt(u))
                .map(|a| a.slots.clone())
            else {
                continue;
            };
            self.inspector
                .restore_and_compare(&c.meta, &states, &dir)
                .map_err(|e| self.fail(format!("invariant 1 at a restart: {job}/chk-{id}: {e}")))?;
            self.stats.restores += 1;
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
