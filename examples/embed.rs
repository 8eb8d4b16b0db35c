//! Embedding Cairn as the state layer of a stream engine, seen from the host's side.
//!
//! A single loop stands in for a stream engine with 2 parallel workers: one [`Slot`] each
//! (RocksDB), every record of a replayable source routed to the slot owning its key's key group,
//! a running count per word in a `ValueState<u64>`, and an event-time timer per word and window
//! whose firing emits `(window end, word, count)` to a two-phase sink. A
//! [`CheckpointCoordinator`], the API a host codes against, decides when to checkpoint. The job
//! "crashes" after 9000 records; a new job restores the latest checkpoint, replays the source
//! from the offset stored with it, and must end with the state and sink output of a run without
//! the crash (no output lost or published twice), else the process exits non-zero.
//!
//! Not shown: rescaling. The restore below works the same for another slot count: each new
//! slot asks for its own key-group range and gets the files of every old slot overlapping it.
//!
//! Run it: `. scripts/env.sh && cargo run --release --example embed`

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::Path;
use std::time::Duration;

use cairn::engine::codec;
use cairn::{
    BackendKind, CairnConfig, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
    CheckpointLocation, Checkpointer, DeclineReason, KeyGroupRange, Slot, SlotReply, TimeDomain,
    TriggeredCheckpoint, ValueState, VoidNamespace, new_job_name, slot_for_key,
};

type Res<T = ()> = Result<T, Box<dyn Error>>;

/// Key groups: fixed for the life of the job (the unit state moves in when the slot count changes).
const MAX_PARALLELISM: u32 = 128;
/// Parallel workers, one slot each.
const SLOTS: u32 = 2;
/// Records of the source; record `g` has event time `g` ms.
const RECORDS: u64 = 10_000;
/// Tumbling event-time windows of this length, ms; the watermark advances every 500 records.
const WINDOW_MS: i64 = 1_000;
const WATERMARK_EVERY: u64 = 500;
/// The source delivers about this many records per ms, as a live source would: a run lasts
/// about a second, so the periodic checkpoints (every 100 ms) fall between records.
const PACE: u64 = 10;
/// The host also requests checkpoints at these offsets: with a real clock, how many periodic
/// ones fall within a run depends on the machine. Slot 1 declines the first (an abort).
const FORCED_AT: [u64; 3] = [2_500, 5_000, 7_500];
/// The first run "crashes" after this many records.
const CRASH_AT: u64 = 9_000;
/// The checkpoint property holding the source offset the checkpoint was taken at.
const OFFSET: &str = "source.offset";
const WORDS: [&str; 12] = [
    "alder", "birch", "cairn", "delta", "ember", "fjord", "gorse", "heath", "inlet", "jetty",
    "knoll", "loch",
];

/// What the sink receives: (window end, word, the word's count when the window's timer fired).
type Output = (i64, String, u64);

/// The source: record `offset` of a deterministic, replayable stream (a word, at `offset` ms),
/// as a partition read from a position (a Kafka offset). Picks the word with splitmix64's mix.
fn source(offset: u64) -> (&'static str, i64) {
    let mut x = offset.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (WORDS[(x % WORDS.len() as u64) as usize], offset as i64)
}

/// The last millisecond of the window holding `ts` (Flink's `window.maxTimestamp()`).
fn window_end(ts: i64) -> i64 {
    ts - ts.rem_euclid(WINDOW_MS) + WINDOW_MS - 1
}

/// The worker owning `word` (a host's `keyBy`). `slot_for_key` hashes the key as `Slot::scope`
/// serializes it: hashing other bytes would pick key groups the slot rejects.
fn route(word: &str) -> Res<usize> {
    Ok(slot_for_key(word, MAX_PARALLELISM, SLOTS)? as usize)
}

/// A job's configuration: slots work below `<root>/<work>`, checkpoints go to
/// `<root>/checkpoints`, a periodic one every 100 ms (small, so a short run has several).
fn config(root: &Path, work: &str) -> CairnConfig {
    let mut config = CairnConfig::default();
    config.state.backend = BackendKind::RocksDb; // the default, spelled out
    config.state.max_parallelism = Some(MAX_PARALLELISM);
    config.state.working_dir = root.join(work);
    config.checkpoint.dir = root.join("checkpoints").display().to_string();
    config.checkpoint.interval = Some(Duration::from_millis(100));
    config
}

/// A two-phase sink: output is staged per checkpoint and published (appended to `committed`,
/// what downstream sees) when that checkpoint or a later one completes, so downstream never
/// sees output of records a restore replays. Staged output dies with the process: correct here
/// because the crash comes between records, after every event was handled. A crash between a
/// commit and its `Completed` event would lose that batch, so a real sink stages durably (a
/// transaction) and, on restore, publishes what it staged up to the restored checkpoint.
#[derive(Default)]
struct Sink {
    /// Output since the last barrier.
    open: Vec<Output>,
    /// Output between barrier `id` and the one before, not published yet.
    staged: BTreeMap<u64, Vec<Output>>,
    /// Published output: outside the process, it survives a crash.
    committed: Vec<Output>,
}

impl Sink {
    /// Barrier `id` passed: what was emitted before it belongs to checkpoint `id`.
    fn barrier(&mut self, id: u64) {
        self.staged.insert(id, std::mem::take(&mut self.open));
    }

    /// Checkpoint `id` completed: publish its batch and those of older, aborted checkpoints.
    /// Those were kept rather than dropped: an abort does not rewind the source, so their
    /// records are never replayed and dropping their output would leave a gap.
    fn completed(&mut self, id: u64) {
        let later = self.staged.split_off(&(id + 1));
        for (_, batch) in std::mem::replace(&mut self.staged, later) {
            self.committed.extend(batch);
        }
    }
}

/// One worker: its slot and its handle of the count state (handles are per slot).
struct Worker {
    slot: Slot,
    count: ValueState<u64>,
}

/// The host's job in one process.
#[derive(Default)]
struct Job {
    workers: Vec<Worker>,
    /// The source position: records before it are processed.
    offset: u64,
    sink: Sink,
    /// Checkpoints this job saw complete and abort.
    completed: usize,
    aborted: usize,
}

impl Job {
    /// Runs the source up to offset `until`, polling the coordinator between records.
    fn run(&mut self, coord: &mut CheckpointCoordinator, until: u64) -> Res {
        while self.offset < until {
            if self.offset.is_multiple_of(PACE) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if FORCED_AT.contains(&self.offset) {
                coord.request(CheckpointKind::Forced);
            }
            if let Some(t) = coord.poll()? {
                self.barrier(coord, &t)?;
            }
            self.on_events(coord);
            self.process()?;
        }
        Ok(())
    }

    /// Processes the record at the source's offset: counts its word in the word's slot and
    /// registers the timer of its window, after advancing the watermark when it is due.
    fn process(&mut self) -> Res {
        let g = self.offset;
        if g > 0 && g.is_multiple_of(WATERMARK_EVERY) {
            self.advance_watermark(g as i64 - 1)?;
        }
        let (word, ts) = source(g);
        let w = &mut self.workers[route(word)?];
        // The scope (key group, key, namespace) every state access of this record uses.
        let scope = w.slot.scope(word, &VoidNamespace)?;
        let n = w.count.get(&mut w.slot, &scope)?.unwrap_or(0) + 1;
        w.count.update(&mut w.slot, &scope, &n)?;
        // One timer per (word, window): registering it again is a no-op.
        let end = window_end(ts);
        w.slot.register_timer(TimeDomain::EventTime, &scope, end)?;
        self.offset += 1;
        Ok(())
    }

    /// The watermark reached `watermark`: every slot fires its due event-time timers, each
    /// emitting its word's count (the callback's `scope` is the timer's key) to the sink.
    fn advance_watermark(&mut self, watermark: i64) -> Res {
        for w in &mut self.workers {
            let (count, out) = (&w.count, &mut self.sink.open);
            w.slot
                .fire_timers(TimeDomain::EventTime, watermark, |slot, scope, timer| {
                    let word: String = codec::decode(&timer.key, "<key>")?;
                    let n = count.get(slot, scope)?.unwrap_or(0);
                    out.push((timer.timestamp, word, n));
                    Ok(())
                })?;
        }
        Ok(())
    }

    /// Checkpoint `t`'s barrier, between two records: the checkpoint stores the source offset
    /// (where a restore resumes), the sink stages what came before, and every slot answers with
    /// its synchronous snapshot (the coordinator uploads and commits once all have answered).
    ///
    /// `t.mode` (`CheckpointingMode`) is how barriers are aligned. With one input, as here, a
    /// barrier is aligned as it arrives; an operator with several inputs would, in
    /// `ExactlyOnce` mode, hold back records of the inputs whose barrier came first until the
    /// barrier arrived on all of them.
    fn barrier(&mut self, coord: &mut CheckpointCoordinator, t: &TriggeredCheckpoint) -> Res {
        coord.set_property(t.id, OFFSET, &self.offset.to_string())?;
        self.sink.barrier(t.id);
        for (i, w) in (0..).zip(&mut self.workers) {
            if self.offset == FORCED_AT[0] && i == 1 {
                // As a slot still starting would: the checkpoint is aborted, not counted.
                coord.decline(t.id, i, DeclineReason::NotReady);
                continue;
            }
            match w.slot.snapshot_for_checkpoint(t.id) {
                Ok(snapshot) => _ = coord.acknowledge(t.id, i, SlotReply::Snapshot(snapshot))?,
                Err(e) => coord.decline(t.id, i, DeclineReason::Failed(e.to_string())),
            }
        }
        Ok(())
    }

    /// What became of checkpoints, for the sink (and for the `SlotUploader`s of slots that
    /// upload their own snapshots).
    fn on_events(&mut self, coord: &mut CheckpointCoordinator) {
        for event in coord.take_events() {
            match event {
                CheckpointEvent::Completed {
                    id, kind, report, ..
                } => {
                    let (sync, upload) = (report.sync_ms, report.async_ms);
                    println!("  chk-{id} ({kind}): sync {sync:.0} ms, upload {upload:.0} ms");
                    self.sink.completed(id);
                    self.completed += 1;
                }
                CheckpointEvent::Aborted { id, reason, .. } => {
                    println!("  chk-{id} aborted ({reason:?}): its output stays staged");
                    self.aborted += 1;
                }
                // Asked for with `coord.request_savepoint(..)` (stop-with-savepoint).
                CheckpointEvent::SavepointWritten { id, report } => {
                    println!("  savepoint of chk-{id} at {}", report.location);
                }
                CheckpointEvent::SavepointFailed { id, reason } => {
                    println!("  savepoint of chk-{id} failed: {reason}");
                }
            }
        }
    }

    /// End of input: fire every timer left (Flink's final watermark), then one last checkpoint
    /// so the sink publishes the rest (Flink's final checkpoint of a bounded job).
    fn finish(&mut self, coord: &mut CheckpointCoordinator) -> Res {
        self.advance_watermark(i64::MAX)?;
        coord.request(CheckpointKind::Forced);
        let t = coord.poll()?.ok_or("a request triggers at the next poll")?;
        self.barrier(coord, &t)?;
        self.on_events(coord);
        Ok(())
    }

    /// Every word's count, read from the slot owning it.
    fn counts(&mut self) -> Res<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        for word in WORDS {
            let w = &mut self.workers[route(word)?];
            let scope = w.slot.scope(word, &VoidNamespace)?;
            counts.insert(word, w.count.get(&mut w.slot, &scope)?.unwrap_or(0));
        }
        Ok(counts)
    }
}

/// A started job, its coordinator, and the id of the checkpoint it was restored from (or 0).
type Started = (Job, CheckpointCoordinator, u64);

/// Starts a job: a checkpointer (one per job: it names the job in checkpoint storage and holds
/// its writer lease), `SLOTS` slots and the coordinator. With `restore_from` (a job's URL), from
/// that job's latest checkpoint: each slot downloads its key groups' files into its new working
/// directory (as on another machine), and the source resumes at the offset stored with it.
fn start(root: &Path, work: &str, restore_from: Option<&str>) -> Res<Started> {
    let config = config(root, work);
    let mut cp = Checkpointer::open(&config.checkpoint, &new_job_name(), MAX_PARALLELISM)?;
    let mut job = Job::default();
    // No `/chk-<id>` at the end of the URL: the latest committed checkpoint.
    let restored = match restore_from {
        Some(url) => Some(cp.resume_from(&CheckpointLocation::parse(url)?)?),
        None => None,
    };
    if let Some(r) = &restored {
        let properties = &r.metadata.properties;
        job.offset = properties.get(OFFSET).ok_or("no source offset")?.parse()?;
    }
    for i in 0..SLOTS {
        let mut builder = Slot::builder(&config).slot(i, SLOTS);
        if let Some(r) = &restored {
            let range = KeyGroupRange::for_slot(MAX_PARALLELISM, SLOTS, i)?;
            let dest = config.state.working_dir.join(format!("restore-{i}"));
            builder = builder.restore(cp.download_slot_files(r, range, &dest)?.0);
        }
        let mut slot = builder.open()?;
        // A restored slot already has the state: registering it again returns it.
        let count = slot.value_state::<u64>("wordcount", "count")?;
        job.workers.push(Worker { slot, count });
    }
    let restored_id = restored.map_or(0, |r| r.metadata.checkpoint_id);
    Ok((job, CheckpointCoordinator::new(cp, SLOTS)?, restored_id))
}

/// The published output has every (window, word) of the source exactly once, and equals `want`.
fn check_output(got: &[Output], want: &[Output]) -> Res {
    let windows: BTreeSet<_> = (0..RECORDS)
        .map(|g| (window_end(g as i64), source(g).0))
        .collect();
    let seen: BTreeSet<_> = got.iter().map(|(t, w, _)| (*t, w.as_str())).collect();
    let (dups, gaps) = (got.len() - seen.len(), windows.difference(&seen).count());
    if dups > 0 || gaps > 0 || seen.len() != windows.len() || got != want {
        let n = got.len();
        return Err(format!("sink: {n} outputs, {dups} duplicated, {gaps} missing").into());
    }
    Ok(())
}

fn main() -> Res {
    let root = tempfile::tempdir()?;

    // The run without a crash: what the crashed and restored job must end with.
    println!("reference run, {RECORDS} records:");
    let (mut reference, mut coord, _) = start(root.path(), "reference", None)?;
    reference.run(&mut coord, RECORDS)?;
    reference.finish(&mut coord)?;
    coord.cancel()?;
    let want_counts = reference.counts()?;

    // The run that crashes, checkpointed periodically and on request until then.
    println!("first run, until record {CRASH_AT}:");
    let (mut job, mut coord, _) = start(root.path(), "work-1", None)?;
    job.run(&mut coord, CRASH_AT)?;
    let (first_completed, first_aborted) = (job.completed, job.aborted);
    if first_completed < 2 {
        return Err(format!("{first_completed} checkpoints completed before the crash").into());
    }
    // The crash: slots, staged output and coordinator are lost without `cancel`; what the sink
    // published is downstream's. `abandon` leaves the writer lease to expire as a dying process
    // would; the restore is a new job, it needs no lease of this one.
    let job_url = coord.checkpointer().job_url(); // `<checkpoint dir>/<job>`
    let published = std::mem::take(&mut job.sink.committed);
    drop(job);
    coord.abandon();

    // The restore: the latest checkpoint, then the source replayed from its offset.
    let (mut job, mut coord, restored_id) = start(root.path(), "work-2", Some(&job_url))?;
    let restored_offset = job.offset;
    println!("restored chk-{restored_id} at offset {restored_offset}, replaying:");
    job.sink.committed = published;
    job.run(&mut coord, RECORDS)?;
    job.finish(&mut coord)?;

    // Same state and same published output (no duplicates, no gaps) as without the crash.
    let counts = job.counts()?;
    if counts != want_counts || counts.values().sum::<u64>() != RECORDS {
        return Err(format!("counts {counts:?}, want {want_counts:?}").into());
    }
    check_output(&job.sink.committed, &reference.sink.committed)?;

    // The end of the job: what is in flight is aborted and, with retain-on-cancellation (on by
    // default), the checkpoints are kept for a later restore.
    let (outcome, _aborted) = coord.cancel()?;
    println!("cancelled: {outcome:?}");
    let (after, outputs) = (job.completed, job.sink.committed.len());
    println!(
        "{RECORDS} records; checkpoints completed: {first_completed} before the crash \
         ({first_aborted} aborted), {after} after; restored from chk-{restored_id} at offset \
         {restored_offset}; {outputs} sink outputs, each (window, word) once; OK"
    );
    Ok(())
}
