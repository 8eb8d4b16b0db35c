//! What `checkpoint.mode` means for a host whose keyed operator has two inputs.
//!
//! Cairn's [`CheckpointCoordinator`] records the mode (`cairn.mode` in every checkpoint's
//! properties) but moves no data: whether a restore is exactly-once or at-least-once depends on
//! how the HOST handles the barriers of an operator with several inputs. This example is such a
//! host: two replayable sources, A and B (records `(key, amount)` at offsets, as Kafka
//! partitions), feed one keyed operator, a sum per key in a `ValueState<u64>` in one RocksDB
//! slot. Each source reads a few records ahead into its channel (Flink's network buffers), and
//! the operator reads A three times as often as B (B is the slower input), so a checkpoint's
//! barrier reaches the operator on A well before B.
//!
//! At a checkpoint each source stores its offset with it (a checkpoint property) and emits the
//! barrier behind the records in its channel. Then, as Flink's barrier handlers do:
//! - `ExactlyOnce` (aligned barriers): once the barrier arrived on A, A's records are held back
//!   (left in its channel) until it arrives on B; the slot then snapshots exactly the records
//!   before both barriers, which is what the stored offsets say.
//! - `AtLeastOnce` (Flink's `CheckpointBarrierTracker`): no input is held back, and the slot
//!   snapshots once the barrier arrived on every input. A's records processed between its
//!   barrier and B's are in the snapshot *and* after A's stored offset: a restore replays them,
//!   and they count twice. (Snapshotting at the *first* barrier instead would lose B's records
//!   still in flight: before B's offset, yet not in the snapshot.)
//!
//! Per mode: a run without a crash (the reference), a run that crashes after two checkpoints,
//! and a new job that restores the latest one and replays both sources from its offsets. The
//! process exits non-zero unless exactly-once restores the reference exactly and at-least-once
//! over-counts by exactly the records of A processed past their barrier (never under-counts).
//!
//! Run it: `. scripts/env.sh && cargo run --release --example checkpointing_modes`

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::path::Path;

use cairn::{
    BackendKind, CairnConfig, CheckpointCoordinator, CheckpointEvent, CheckpointKind,
    CheckpointLocation, Checkpointer, CheckpointingMode, KeyGroupRange, MODE_PROPERTY, Slot,
    SlotReply, ValueState, VoidNamespace, new_job_name,
};

type Res<T = ()> = Result<T, Box<dyn Error>>;

/// Key groups: fixed for the life of the job; its one slot owns them all.
const MAX_PARALLELISM: u32 = 128;
/// The checkpoint properties holding each source's (A's, B's) offset at its barrier.
const OFFSET: [&str; 2] = ["source.a.offset", "source.b.offset"];
/// Records per source: A is read three times as often as B, so both end at about the same time.
const LEN: [u64; 2] = [300, 100];
/// Events a source reads ahead of the operator into its channel; a barrier queues behind them.
const IN_FLIGHT: usize = 4;
/// Operator steps (one event read each) at which the host requests a checkpoint. Requested at
/// fixed positions, not by the clock, so every run is the same on any machine.
const FORCED_AT: [u64; 2] = [100, 250];
/// The crashing run stops after this many steps, after both checkpoints completed.
const CRASH_AT: u64 = 320;
const KEYS: [&str; 5] = ["alder", "birch", "cairn", "delta", "ember"];

/// Record `offset` of source `input`: a key and an amount, the same on every read (replayable).
/// Mixes with splitmix64.
fn record(input: usize, offset: u64) -> (&'static str, u64) {
    let mut x = offset.wrapping_add(0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(input as u64 + 1));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (KEYS[(x % KEYS.len() as u64) as usize], 1 + (x >> 8) % 9)
}

/// What travels in a channel from a source to the operator.
enum Event {
    /// The source's record at this offset.
    Record(u64),
    /// Checkpoint `id`'s barrier.
    Barrier(u64),
}

/// One input: its source's position and the channel from the source to the operator.
#[derive(Default)]
struct Input {
    /// The next offset the source reads: what a checkpoint stores for it.
    offset: u64,
    channel: VecDeque<Event>,
    /// (checkpoint, step): the barrier of the checkpoint being taken arrived at that step.
    barrier: Option<(u64, u64)>,
}

/// The host's job: two inputs into one keyed operator (one slot, a sum per key).
struct Job {
    mode: CheckpointingMode,
    inputs: [Input; 2],
    slot: Slot,
    sum: ValueState<u64>,
    /// Events the operator has read.
    step: u64,
    /// Per checkpoint, the records processed after their input's barrier and before the
    /// snapshot: in the snapshot and after the stored offset. Only at-least-once has any.
    past_barrier: BTreeMap<u64, Vec<(&'static str, u64)>>,
    completed: usize,
    verbose: bool,
}

impl Job {
    /// Runs the operator until step `until` or the end of both sources.
    fn run(&mut self, coord: &mut CheckpointCoordinator, until: u64) -> Res {
        while self.step < until {
            if FORCED_AT.contains(&self.step) {
                self.trigger(coord)?;
            }
            // Each source reads ahead until its channel is full (backpressure beyond that).
            for (i, input) in self.inputs.iter_mut().enumerate() {
                while input.channel.len() < IN_FLIGHT && input.offset < LEN[i] {
                    input.channel.push_back(Event::Record(input.offset));
                    input.offset += 1;
                }
            }
            let Some((i, event)) = self.next_event() else {
                return Ok(()); // both sources consumed
            };
            self.step += 1;
            match event {
                Event::Record(offset) => self.process(i, offset)?,
                Event::Barrier(id) => self.on_barrier(coord, i, id)?,
            }
        }
        Ok(())
    }

    /// The next event the operator reads: from A three steps out of four, from B the fourth. An
    /// input with nothing to read, or held back by alignment (exactly-once, after its barrier),
    /// yields its turn: its records wait in its channel.
    fn next_event(&mut self) -> Option<(usize, Event)> {
        let first = if self.step % 4 == 3 { 1 } else { 0 };
        let align = self.mode == CheckpointingMode::ExactlyOnce;
        for i in [first, 1 - first] {
            let held_back = align && self.inputs[i].barrier.is_some();
            if !held_back && let Some(event) = self.inputs[i].channel.pop_front() {
                return Some((i, event));
            }
        }
        None
    }

    /// A checkpoint: each source stores its offset with it (where a restore resumes reading)
    /// and emits the barrier behind the records already in its channel.
    fn trigger(&mut self, coord: &mut CheckpointCoordinator) -> Res {
        coord.request(CheckpointKind::Forced);
        let t = coord
            .poll()?
            .ok_or("a requested checkpoint triggers at the next poll")?;
        for (input, key) in self.inputs.iter_mut().zip(OFFSET) {
            coord.set_property(t.id, key, &input.offset.to_string())?;
            input.channel.push_back(Event::Barrier(t.id));
        }
        Ok(())
    }

    /// Adds record `offset` of input `i` to its key's sum.
    fn process(&mut self, i: usize, offset: u64) -> Res {
        let (key, amount) = record(i, offset);
        let scope = self.slot.scope(key, &VoidNamespace)?;
        let n = self.sum.get(&mut self.slot, &scope)?.unwrap_or(0) + amount;
        self.sum.update(&mut self.slot, &scope, &n)?;
        if let Some((id, _)) = self.inputs[i].barrier {
            self.past_barrier.entry(id).or_default().push((key, amount));
        }
        Ok(())
    }

    /// Checkpoint `id`'s barrier arrived on input `i`. Once it arrived on every input, the
    /// slot snapshots and the host acknowledges (one slot: that commits the checkpoint), and
    /// inputs held back are released.
    fn on_barrier(&mut self, coord: &mut CheckpointCoordinator, i: usize, id: u64) -> Res {
        self.inputs[i].barrier = Some((id, self.step));
        if self.inputs.iter().any(|input| input.barrier.is_none()) {
            return Ok(());
        }
        let snapshot = self.slot.snapshot_for_checkpoint(id)?;
        coord.acknowledge(id, 0, SlotReply::Snapshot(snapshot))?;
        for event in coord.take_events() {
            if let CheckpointEvent::Aborted { id, reason, .. } = event {
                return Err(format!("chk-{id} aborted: {reason:?}").into());
            }
            self.completed += 1;
        }
        // Records waiting behind a barrier that came first (none without alignment).
        let held = match self.mode {
            CheckpointingMode::ExactlyOnce => self
                .inputs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, input)| &input.channel)
                .filter(|event| matches!(event, Event::Record(_)))
                .count(),
            CheckpointingMode::AtLeastOnce => 0,
        };
        let [a, b] = self.inputs.each_mut().map(|input| input.barrier.take());
        let [a, b] = [a, b].map(|barrier| barrier.map_or(0, |(_, step)| step));
        if self.verbose {
            let past = self.past_barrier.get(&id).map_or(0, Vec::len);
            println!(
                "  chk-{id}: barrier on A at step {a}, on B at step {b}; snapshot at step {}: \
                 {held} records held back, {past} read past their barrier",
                self.step
            );
        }
        Ok(())
    }

    /// Every key's sum.
    fn sums(&mut self) -> Res<BTreeMap<&'static str, u64>> {
        let mut sums = BTreeMap::new();
        for key in KEYS {
            let scope = self.slot.scope(key, &VoidNamespace)?;
            sums.insert(key, self.sum.get(&mut self.slot, &scope)?.unwrap_or(0));
        }
        Ok(sums)
    }
}

/// The checkpoint a job was restored from: its id and the mode recorded in it.
type Restored = Option<(u64, String)>;

/// Starts a job in `mode` working below `<root>/<work>`, checkpointing to `<root>/checkpoints`.
/// With `restore_from` (a job's URL), from that job's latest checkpoint: the slot downloads its
/// files, and each source resumes at the offset stored with the checkpoint.
fn start(
    root: &Path,
    work: &str,
    mode: CheckpointingMode,
    restore_from: Option<&str>,
) -> Res<(Job, CheckpointCoordinator, Restored)> {
    let mut config = CairnConfig::default();
    config.state.backend = BackendKind::RocksDb;
    config.state.max_parallelism = Some(MAX_PARALLELISM);
    config.state.working_dir = root.join(work);
    config.checkpoint.dir = root.join("checkpoints").display().to_string();
    config.checkpoint.interval = None; // only the checkpoints the host requests
    config.checkpoint.mode = mode;
    let mut cp = Checkpointer::open(&config.checkpoint, &new_job_name(), MAX_PARALLELISM)?;
    let mut inputs = [Input::default(), Input::default()];
    let mut builder = Slot::builder(&config).slot(0, 1);
    let mut restored = None;
    if let Some(url) = restore_from {
        // No `/chk-<id>` at the end of the URL: the latest committed checkpoint.
        let r = cp.resume_from(&CheckpointLocation::parse(url)?)?;
        let properties = &r.metadata.properties;
        for (input, key) in inputs.iter_mut().zip(OFFSET) {
            input.offset = properties.get(key).ok_or("no source offset")?.parse()?;
        }
        let recorded = properties.get(MODE_PROPERTY).ok_or("no mode recorded")?;
        restored = Some((r.metadata.checkpoint_id, recorded.clone()));
        let range = KeyGroupRange::for_slot(MAX_PARALLELISM, 1, 0)?;
        let dest = config.state.working_dir.join("restore");
        builder = builder.restore(cp.download_slot_files(&r, range, &dest)?.0);
    }
    let mut slot = builder.open()?;
    // A restored slot already has the state: registering it again returns it.
    let sum = slot.value_state::<u64>("sum", "amount")?;
    let job = Job {
        mode,
        inputs,
        slot,
        sum,
        step: 0,
        past_barrier: BTreeMap::new(),
        completed: 0,
        verbose: false,
    };
    Ok((job, CheckpointCoordinator::new(cp, 1)?, restored))
}

/// One mode: the reference run, a run that crashes, and its restore. Fails unless the restored
/// job's sums differ from the reference by exactly the records read past their barrier before
/// the restored checkpoint's snapshot, and the mode's own rule holds.
fn check_mode(root: &Path, mode: CheckpointingMode) -> Res {
    println!("{mode}:");
    let (mut job, mut coord, _) = start(root, &format!("{mode}-reference"), mode, None)?;
    job.run(&mut coord, u64::MAX)?;
    coord.cancel()?;
    let want = job.sums()?;
    // Without a crash both modes count each record once.
    let mut once = BTreeMap::new();
    for (i, len) in LEN.into_iter().enumerate() {
        for (key, amount) in (0..len).map(|offset| record(i, offset)) {
            *once.entry(key).or_insert(0) += amount;
        }
    }
    if want != once {
        return Err(format!("reference {want:?}, each record once {once:?}").into());
    }

    let (mut job, mut coord, _) = start(root, &format!("{mode}-crash"), mode, None)?;
    job.verbose = true;
    job.run(&mut coord, CRASH_AT)?;
    if job.completed < FORCED_AT.len() {
        return Err(format!("{} checkpoints completed before the crash", job.completed).into());
    }
    println!("  crash at step {CRASH_AT}");
    // The crash: slot and coordinator are lost without `cancel`; what the job knew of its
    // checkpoints is kept only to check the restore against.
    let job_url = coord.checkpointer().job_url();
    let past_barrier = std::mem::take(&mut job.past_barrier);
    drop(job);
    coord.abandon();

    let (mut job, mut coord, restored) =
        start(root, &format!("{mode}-restored"), mode, Some(&job_url))?;
    let (id, recorded) = restored.ok_or("no checkpoint restored")?;
    let [a, b] = job.inputs.each_ref().map(|input| input.offset);
    job.run(&mut coord, u64::MAX)?;
    coord.cancel()?;
    let got = job.sums()?;

    let mut diffs = BTreeMap::new();
    for key in KEYS {
        let d =
            got.get(key).copied().unwrap_or(0) as i64 - want.get(key).copied().unwrap_or(0) as i64;
        if d != 0 {
            diffs.insert(key, d);
        }
    }
    let mut expected = BTreeMap::new();
    for (key, amount) in past_barrier.get(&id).into_iter().flatten() {
        *expected.entry(*key).or_insert(0) += *amount as i64;
    }
    let shown: Vec<String> = diffs.iter().map(|(k, d)| format!("{k} {d:+}")).collect();
    println!(
        "  restored chk-{id} (cairn.mode = {recorded}) at offsets A {a}, B {b}; {} of {} keys \
         differ from the reference{}{}",
        diffs.len(),
        KEYS.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );

    if recorded.parse::<CheckpointingMode>()? != mode {
        return Err(format!("checkpoint records mode {recorded}, the job ran {mode}").into());
    }
    if diffs != expected {
        return Err(
            format!("differences {diffs:?}, records read past a barrier {expected:?}").into(),
        );
    }
    let ok = match mode {
        CheckpointingMode::ExactlyOnce => diffs.is_empty(),
        CheckpointingMode::AtLeastOnce => !diffs.is_empty() && diffs.values().all(|d| *d > 0),
    };
    if !ok {
        return Err(format!("{mode}: differences from the reference {diffs:?}").into());
    }
    Ok(())
}

fn main() -> Res {
    let root = tempfile::tempdir()?;
    check_mode(root.path(), CheckpointingMode::ExactlyOnce)?;
    check_mode(root.path(), CheckpointingMode::AtLeastOnce)?;
    println!(
        "exactly-once restored the reference; at-least-once over-counted only the records read \
         past their barrier; OK"
    );
    Ok(())
}
