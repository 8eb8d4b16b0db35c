//! Embedding Cairn as the state layer of a stream engine, seen from the host's side.
//!
//! A single loop stands in for a stream engine with 2 parallel workers: one [`Slot`] each
//! (RocksDB backend), every record routed to the slot owning its key's key group, a running
//! count per word in a `ValueState<u64>`, an event-time timer per word and window fired as the
//! watermark advances. The host takes two checkpoints (each storing its source position),
//! processes more records and "crashes". A new job restores the latest checkpoint, checks every
//! count against the host's own bookkeeping, rewinds the source, replays the lost records and
//! checks counts and timers again. Any mismatch is an error: the process exits non-zero.
//!
//! Not shown: rescaling. The checkpoint is restored into 2 slots again, because for the RocksDB
//! backend `Checkpointer::restore_slot` accepts only the key-group ranges the checkpoint's slots
//! had ("restoring into a different number of RocksDB slots (rescaling) is not supported yet");
//! only heap-backend checkpoints restore into another number of slots today.
//!
//! Run it: `. scripts/env.sh && cargo run --release --example embed`

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::Path;

use cairn::engine::codec;
use cairn::{
    BackendKind, CairnConfig, Checkpointer, KeyGroupRange, RestoreSource, Slot, SlotRestore,
    TimeDomain, ValueState, VoidNamespace, new_job_name, slot_for_key,
};

type Res<T = ()> = Result<T, Box<dyn Error>>;

/// Number of key groups. Fixed for the life of the job: a checkpoint restores only into a job
/// with the same max parallelism, and it bounds how many slots the job can ever have.
const MAX_PARALLELISM: u32 = 128;
/// Parallel workers, one slot each.
const SLOTS: u32 = 2;
/// Records of the source; record `g` has event time `g` ms.
const RECORDS: u64 = 10_000;
/// Tumbling event-time windows of this length, ms.
const WINDOW_MS: i64 = 1_000;
/// The watermark advances every this many records.
const WATERMARK_EVERY: u64 = 500;
/// The checkpoint property holding the source position a checkpoint was taken at.
const POSITION: &str = "position";
const WORDS: [&str; 12] = [
    "alder", "birch", "cairn", "delta", "ember", "fjord", "gorse", "heath", "inlet", "jetty",
    "knoll", "loch",
];

/// Record `g` of the source: a word picked by a fixed mix of `g` (splitmix64's), at `g` ms.
fn record(g: u64) -> (&'static str, i64) {
    let mut x = g.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (WORDS[(x % WORDS.len() as u64) as usize], g as i64)
}

/// The last millisecond of the window holding `ts` (Flink's `window.maxTimestamp()`).
fn window_end(ts: i64) -> i64 {
    ts - ts.rem_euclid(WINDOW_MS) + WINDOW_MS - 1
}

/// The worker owning `word` (a host's `keyBy`): the slot whose `KeyGroupRange::for_slot` holds
/// the key's key group. `slot_for_key` takes the typed key and hashes it serialized with Cairn's
/// codec, exactly as `Slot::scope` does; a host hashing its own bytes (`word.as_bytes()`) would
/// pick other key groups, and the slot would reject the key.
fn route(word: &str) -> Res<usize> {
    Ok(slot_for_key(word, MAX_PARALLELISM, SLOTS)? as usize)
}

/// A job's configuration: slots work below `<root>/<work>`, checkpoints go to
/// `<root>/checkpoints` (a path or `file://`; `s3://` with the `cairn/s3` feature).
fn config(root: &Path, work: &str) -> CairnConfig {
    let mut config = CairnConfig::default();
    config.state.backend = BackendKind::RocksDb; // the default, spelled out
    config.state.max_parallelism = Some(MAX_PARALLELISM);
    config.state.working_dir = root.join(work);
    config.checkpoint.dir = root.join("checkpoints").display().to_string();
    config
}

/// One worker: its slot and its handle of the count state (handles are per slot).
struct Worker {
    slot: Slot,
    count: ValueState<u64>,
}

/// Opens slot `index` of `SLOTS`, empty or from restored files, and registers the count state
/// (a restored slot already has it; registering it again returns it).
fn open_worker(config: &CairnConfig, index: u32, restore: Option<SlotRestore>) -> Res<Worker> {
    let mut builder = Slot::builder(config).slot(index, SLOTS);
    if let Some(files) = restore {
        builder = builder.restore(files);
    }
    let mut slot = builder.open()?;
    let count = slot.value_state::<u64>("wordcount", "count")?;
    Ok(Worker { slot, count })
}

/// The host's job: its workers and what the host knows without asking Cairn (to check it).
#[derive(Default)]
struct Job {
    workers: Vec<Worker>,
    /// Every word's count over the records processed so far.
    expected: BTreeMap<String, u64>,
    /// Timers registered and not fired yet: (timestamp, word).
    pending: BTreeSet<(i64, String)>,
    /// Timers fired so far.
    fired: u64,
}

impl Job {
    /// Processes records `from..to`: count the word in its slot, register the timer of its
    /// window, and advance the watermark (firing timers) every `WATERMARK_EVERY` records.
    fn process(&mut self, from: u64, to: u64) -> Res {
        for g in from..to {
            if g > 0 && g % WATERMARK_EVERY == 0 {
                self.advance_watermark(g as i64 - 1)?;
            }
            let (word, ts) = record(g);
            let w = &mut self.workers[route(word)?];
            // The scope (key group, key, namespace) every state access of this record uses.
            let scope = w.slot.scope(word, &VoidNamespace)?;
            let n = w.count.get(&mut w.slot, &scope)?.unwrap_or(0) + 1;
            w.count.update(&mut w.slot, &scope, &n)?;
            // One timer per (word, window): registering it again is a no-op.
            let end = window_end(ts);
            w.slot.register_timer(TimeDomain::EventTime, &scope, end)?;
            *self.expected.entry(word.to_string()).or_default() += 1;
            self.pending.insert((end, word.to_string()));
        }
        Ok(())
    }

    /// The watermark reached `watermark`: every slot fires its due event-time timers, in
    /// timestamp order. The callback reads the word's count, as a windowed operator would before
    /// emitting it; here it checks the count against the host's.
    fn advance_watermark(&mut self, watermark: i64) -> Res {
        let (expected, pending) = (&self.expected, &mut self.pending);
        let mut wrong = Vec::new();
        for w in &mut self.workers {
            let count = &w.count;
            // `scope` is set to the timer's key and namespace, so state reads are that key's.
            self.fired +=
                w.slot
                    .fire_timers(TimeDomain::EventTime, watermark, |slot, scope, timer| {
                        let word: String = codec::decode(&timer.key, "<key>")?;
                        let got = count.get(slot, scope)?;
                        let want = expected.get(&word).copied();
                        if got != want || !pending.remove(&(timer.timestamp, word.clone())) {
                            wrong.push(format!(
                                "timer {word}@{}: count {got:?}, want {want:?}",
                                timer.timestamp
                            ));
                        }
                        Ok(())
                    })?;
        }
        match wrong.first() {
            Some(w) => Err(w.clone().into()),
            None => Ok(()),
        }
    }

    /// Checkpoint `position` (records `0..position` processed). Called between two records, so
    /// the slots' snapshots are a consistent cut. The synchronous phase runs on every slot (the
    /// only part that stops it: RocksDB's hard-link checkpoint); the checkpointer then uploads
    /// the files and commits, storing the source position in the checkpoint's metadata.
    fn checkpoint(&mut self, cp: &mut Checkpointer, position: u64) -> Res {
        let id = cp.next_id();
        let mut syncs = Vec::new();
        for w in &mut self.workers {
            syncs.push(w.slot.snapshot_for_checkpoint(id)?);
        }
        let props = BTreeMap::from([(POSITION.to_string(), position.to_string())]);
        let r = cp.complete_with(id, syncs, props)?;
        println!(
            "checkpoint {id} at record {position}: {} files uploaded, {} reused, {} bytes in all",
            r.files_uploaded, r.files_reused, r.full_bytes
        );
        Ok(())
    }

    /// Reads every word's count from its slot and compares it with the host's count; the sum.
    fn verify(&mut self, what: &str) -> Res<u64> {
        let mut total = 0;
        for word in WORDS {
            let w = &mut self.workers[route(word)?];
            let scope = w.slot.scope(word, &VoidNamespace)?;
            let got = w.count.get(&mut w.slot, &scope)?;
            let want = self.expected.get(word).copied();
            if got != want {
                return Err(format!("{what}: {word:?} counts {got:?}, want {want:?}").into());
            }
            total += got.unwrap_or(0);
        }
        Ok(total)
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let root = tempfile::tempdir()?;

    // 1. The first run: a checkpointer (one per job: it names the job in checkpoint storage and
    //    holds its writer lease) and SLOTS slots, slot i owning `KeyGroupRange::for_slot(..., i)`.
    let first = config(root.path(), "work-1");
    let mut cp = Checkpointer::open(&first.checkpoint, &new_job_name(), MAX_PARALLELISM)?;
    let mut job = Job::default();
    for i in 0..SLOTS {
        job.workers.push(open_worker(&first, i, None)?);
        let range = KeyGroupRange::for_slot(MAX_PARALLELISM, SLOTS, i)?;
        let mine = |w: &&str| route(w).is_ok_and(|s| s == i as usize);
        let words: Vec<&str> = WORDS.into_iter().filter(mine).collect();
        println!("slot {i}: key groups {range}, words {}", words.join(" "));
    }

    // 2.-3. Process, checkpoint, process, checkpoint again. The host keeps a copy of its own
    //    bookkeeping at the latest checkpoint: it is what a restore must give back.
    job.process(0, 4_000)?;
    job.checkpoint(&mut cp, 4_000)?;
    job.process(4_000, 8_000)?;
    job.checkpoint(&mut cp, 8_000)?;
    let (at_checkpoint, pending_at_checkpoint) = (job.expected.clone(), job.pending.clone());
    job.process(8_000, RECORDS)?;
    let before_crash = job.verify("before the crash")?;
    println!(
        "processed {before_crash} records, {} timers fired",
        job.fired
    );

    // 4. The crash: records 8000.. are lost with the slots. `abandon` drops the checkpointer as a
    //    dying process would (its writer lease is left to expire).
    let job_url = cp.job_url(); // `<checkpoint dir>/<job>`, what `cairn run --restore-from` takes
    drop(job);
    cp.abandon();

    // A new job restores the old job's latest committed checkpoint. Its slots open in a new
    // working directory, as on another machine; `restore_slot` places each slot's files there.
    let second = config(root.path(), "work-2");
    let mut cp = Checkpointer::open(&second.checkpoint, &new_job_name(), MAX_PARALLELISM)?;
    // No `/chk-<id>` at the end of the URL: the latest committed checkpoint.
    let restored = cp.prepare_restore(&RestoreSource::parse(&job_url)?)?;
    let position: u64 = restored
        .metadata
        .properties
        .get(POSITION)
        .ok_or("the checkpoint has no source position")?
        .parse()?;
    let mut job = Job {
        expected: at_checkpoint,
        pending: pending_at_checkpoint,
        ..Job::default()
    };
    for i in 0..SLOTS {
        let range = KeyGroupRange::for_slot(MAX_PARALLELISM, SLOTS, i)?;
        // `restore_slot` takes the slot's directory (the builder's default `slot-<i>`: local
        // recovery looks there) and where to put the files (moved into the slot when it opens).
        let slot_dir = second.state.working_dir.join(format!("slot-{i}"));
        let dest = second.state.working_dir.join(format!("restore-{i}"));
        let (files, report) = cp.restore_slot(&restored, range, &slot_dir, &dest)?;
        println!(
            "restored slot {i} ({}): {} bytes from {:?}",
            report.key_groups, report.bytes, report.path
        );
        job.workers.push(open_worker(&second, i, Some(files))?);
    }

    // 5. Every restored count equals the host's count at the checkpoint.
    let restored_total = job.verify("after restore")?;
    println!(
        "restored checkpoint {} at record {position}: {} words counted \
         ({before_crash} before the crash), every count matches",
        restored.metadata.checkpoint_id, restored_total
    );

    // Then the source rewinds to the checkpoint's position and the job goes on: the records lost
    // in the crash are counted again, and the timers restored with the slots fire with them.
    job.process(position, RECORDS)?;
    job.advance_watermark(i64::MAX)?;
    let total = job.verify("after replay")?;
    if total != RECORDS || !job.pending.is_empty() {
        let left = job.pending.len();
        return Err(format!("after replay: {total} words counted, {left} timers unfired").into());
    }
    println!(
        "replayed records {position}..{RECORDS}: {total} words counted, {} timers fired after \
         restore, none left; OK",
        job.fired
    );
    Ok(())
}
