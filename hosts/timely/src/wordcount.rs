//! The windowed word count: the job the failover and rescale tests, the torture script and the
//! benchmarks run.
//!
//! Input: `splits` splits of a deterministic word stream (word `(split, offset)` is
//! [`word_at`]: seeded, replayable from any offset), `per_epoch` records per split and epoch,
//! `epochs` epochs in all. A keyed operator counts each word per tumbling window of `window`
//! epochs in a RocksDB `ValueState<u64>` (namespace: the window), with one RocksDB event-time
//! timer per word and window at the window's last epoch; the timer emits
//! `window word count` and clears the count. The sink publishes rows exactly once
//! ([`crate::sink`]). [`reference()`] computes the same output directly, for checks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use cairn::engine::codec;
use cairn::{ScopeKey, Slot, TimeDomain, Timer, ValueState};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{ProbeHandle, Scope};

use crate::committer::{CommitterSetup, committer};
use crate::error::{HostError, Result, io};
use crate::keyed::{KeyedLogic, KeyedOperatorBuilder, KeyedWorker};
use crate::run::{RunSpec, WorkerRun};
use crate::sink::{StagedFiles, publish, stage};
use crate::source::{
    SourcePositions, SourceSpec, epoch_source, initial_positions, restored_positions,
};

/// The word count's input and windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCountParams {
    /// Seeds the word stream.
    pub seed: u64,
    /// Source splits.
    pub splits: u32,
    /// Records per split and epoch.
    pub per_epoch: u64,
    /// Epochs of the whole stream (a multiple of `window`).
    pub epochs: u64,
    /// Window length, epochs.
    pub window: u64,
    /// Distinct words.
    pub vocab: u64,
}

impl WordCountParams {
    /// Checks the parameters (names the field and the rule).
    pub fn validate(&self) -> Result<()> {
        if self.splits == 0 || self.per_epoch == 0 || self.vocab == 0 || self.window == 0 {
            return Err(HostError::InvalidArgument(
                "splits, per-epoch, vocab and window must be at least 1".into(),
            ));
        }
        // Every window closes inside the stream, so the output is complete at its end.
        if self.epochs == 0 || !self.epochs.is_multiple_of(self.window) {
            return Err(HostError::InvalidArgument(format!(
                "epochs = {}: must be a positive multiple of window = {}",
                self.epochs, self.window
            )));
        }
        Ok(())
    }
}

/// splitmix64's finalizer: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The word at `offset` of `split`.
pub fn word_at(p: &WordCountParams, split: u32, offset: u64) -> String {
    let h = mix(p.seed ^ mix(((split as u64) << 40) ^ offset));
    format!("w{:05}", h % p.vocab)
}

/// One output row: `count` occurrences of `word` in window `window`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowCount {
    /// The window (epochs `window * w .. window * (w + 1)`).
    pub window: u64,
    /// The word.
    pub word: String,
    /// Its count in the window.
    pub count: u64,
}

impl WindowCount {
    /// The row as the sink writes it.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{} {} {}", self.window, self.word, self.count);
    }

    /// Parses a rendered row.
    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.split(' ');
        let row = Self {
            window: it.next()?.parse().ok()?,
            word: it.next()?.to_string(),
            count: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(row)
    }
}

/// The keyed logic: a count per (word, window) and a timer at the window's last epoch.
pub struct WindowedCount {
    window: u64,
    count: ValueState<u64>,
}

impl WindowedCount {
    /// Registers its state on `slot`.
    pub fn new(slot: &mut Slot, window: u64) -> cairn::engine::Result<Self> {
        Ok(Self {
            window,
            count: slot.value_state::<u64>("wordcount", "count")?,
        })
    }
}

impl KeyedLogic for WindowedCount {
    type In = String;
    type Out = WindowCount;

    fn on_record(
        &mut self,
        slot: &mut Slot,
        epoch: u64,
        word: String,
        _out: &mut Vec<WindowCount>,
    ) -> cairn::engine::Result<()> {
        let w = epoch / self.window;
        let scope = slot.scope(&word, &w)?;
        let n = self.count.get(slot, &scope)?.unwrap_or(0) + 1;
        self.count.update(slot, &scope, &n)?;
        // One timer per (word, window): registering it again is a no-op.
        slot.register_timer(
            TimeDomain::EventTime,
            &scope,
            ((w + 1) * self.window - 1) as i64,
        )
    }

    fn on_timer(
        &mut self,
        slot: &mut Slot,
        scope: &ScopeKey,
        timer: &Timer,
        out: &mut Vec<WindowCount>,
    ) -> cairn::engine::Result<()> {
        let word: String = codec::decode(&timer.key, "<key>")?;
        let window: u64 = codec::decode(&timer.namespace, "<namespace>")?;
        let count = self.count.get(slot, scope)?.unwrap_or(0);
        self.count.clear(slot, scope)?;
        out.push(WindowCount {
            window,
            word,
            count,
        });
        Ok(())
    }
}

/// How fast the word count's source reads.
#[derive(Clone, Copy, Debug)]
pub struct SourcePace {
    /// How far the source may run ahead of the committed frontier, epochs.
    pub max_ahead: u64,
    /// At most one epoch per this interval (`None`: unpaced).
    pub pace: Option<std::time::Duration>,
}

/// Runs one worker of the word count: builds the dataflow on `worker` and steps it until the
/// run's last epoch is committed.
pub fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: &RunSpec,
    params: WordCountParams,
    source: SourcePace,
    kind: JobKind,
) -> Result<()> {
    match kind {
        JobKind::Wordcount => run_keyed(
            worker,
            spec,
            params,
            source,
            |slot| WindowedCount::new(slot, params.window),
            WindowCount::render,
        ),
        JobKind::Counter => run_keyed(worker, spec, params, source, KeyedCounter::new, |_, _| {}),
    }
}

/// Which keyed logic a job runs on the word stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// [`WindowedCount`]: counts per word and window, rows when windows close.
    Wordcount,
    /// [`KeyedCounter`]: the keyed counter (one get and one put of a `u64` per record, no
    /// timers, no output): the Flink comparison's `update` workload on the word stream.
    Counter,
}

/// The keyed counter: a running count per word, nothing emitted.
pub struct KeyedCounter {
    count: ValueState<u64>,
}

impl KeyedCounter {
    /// Registers its state on `slot`.
    pub fn new(slot: &mut Slot) -> cairn::engine::Result<Self> {
        Ok(Self {
            count: slot.value_state::<u64>("counter", "count")?,
        })
    }
}

impl KeyedLogic for KeyedCounter {
    type In = String;
    type Out = WindowCount;

    fn on_record(
        &mut self,
        slot: &mut Slot,
        _epoch: u64,
        word: String,
        _out: &mut Vec<WindowCount>,
    ) -> cairn::engine::Result<()> {
        let scope = slot.scope(&word, &cairn::VoidNamespace)?;
        let n = self.count.get(slot, &scope)?.unwrap_or(0) + 1;
        self.count.update(slot, &scope, &n)
    }

    fn on_timer(
        &mut self,
        _slot: &mut Slot,
        _scope: &ScopeKey,
        _timer: &Timer,
        _out: &mut Vec<WindowCount>,
    ) -> cairn::engine::Result<()> {
        Ok(())
    }
}

/// [`run_worker`] for keyed logic `L` on the word stream.
fn run_keyed<L: KeyedLogic<In = String>>(
    worker: &mut timely::worker::Worker,
    spec: &RunSpec,
    params: WordCountParams,
    source: SourcePace,
    make_logic: impl FnOnce(&mut Slot) -> cairn::engine::Result<L>,
    render: fn(&L::Out, &mut String),
) -> Result<()> {
    let run: WorkerRun = crate::run::open_worker(worker, spec)?;
    if !run.plan.has_work() {
        return Ok(());
    }
    let WorkerRun {
        index,
        peers,
        mut slot,
        uploads,
        restored_epoch,
        plan,
        coordinator,
        sink,
    } = run;
    let positions = match restored_epoch {
        Some(_) => restored_positions(slot.operator_state())?,
        None => initial_positions(params.splits, index, peers),
    };
    let logic = make_logic(&mut slot)?;
    let committed_probe: ProbeHandle<u64> = ProbeHandle::new();
    let shared = Rc::new(RefCell::new(SourcePositions::default()));
    let files = Rc::new(RefCell::new(StagedFiles::default()));
    let attempt = spec.attempt;
    let progress = spec.progress.clone();
    let built: Result<()> = worker.dataflow::<u64, _, _>(|scope: Scope<'_, u64>| {
        let words = epoch_source(
            scope,
            SourceSpec {
                positions,
                per_epoch: params.per_epoch,
                start_epoch: plan.start_epoch(),
                last_epoch: plan.last_epoch(),
                max_ahead: source.max_ahead,
                pace: source.pace,
                generate: move |split, offset| word_at(&params, split, offset),
            },
            shared.clone(),
            committed_probe.clone(),
        )?;
        let keyed = KeyedOperatorBuilder::new("WindowedWordCount", |w: &String| w.clone()).build(
            words,
            KeyedWorker {
                slot,
                uploads: uploads.clone(),
                positions: shared,
                plan,
            },
            logic,
        );
        let control = stage(
            keyed,
            sink.clone(),
            attempt,
            index,
            plan,
            files.clone(),
            render,
        );
        let committed = committer(
            control,
            CommitterSetup {
                coordinator,
                plan,
                peers,
                attempt,
                progress,
            },
        )
        .broadcast();
        publish(committed, sink, attempt, index, files, uploads).probe_with(&committed_probe);
        Ok(())
    });
    built?;
    while !committed_probe.done() {
        worker.step_or_park(Some(std::time::Duration::from_millis(10)));
    }
    Ok(())
}

/// The word count's complete output computed directly: `(window, word) -> count`.
pub fn reference(p: &WordCountParams) -> BTreeMap<(u64, String), u64> {
    let mut out = BTreeMap::new();
    for split in 0..p.splits {
        for offset in 0..p.epochs * p.per_epoch {
            let window = offset / p.per_epoch / p.window;
            *out.entry((window, word_at(p, split, offset))).or_insert(0) += 1;
        }
    }
    out
}

/// What the committed output holds against [`reference()`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCheck {
    /// Rows read from committed files.
    pub rows: u64,
    /// Committed files.
    pub files: u64,
    /// Rows of a (window, word) published more than once.
    pub duplicates: u64,
    /// Expected rows not published.
    pub missing: u64,
    /// Rows with a wrong count or not expected at all.
    pub wrong: u64,
    /// Order-independent checksum of the committed rows (FNV-1a of each, summed).
    pub checksum: u64,
    /// The checksum of the reference.
    pub expected_checksum: u64,
    /// The highest epoch of a committed file.
    pub max_epoch: Option<u64>,
}

impl OutputCheck {
    /// Whether the output is exactly the reference.
    pub fn exact(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.wrong == 0
            && self.checksum == self.expected_checksum
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn checksum<'a>(rows: impl Iterator<Item = &'a WindowCount>) -> u64 {
    let mut line = String::new();
    rows.fold(0u64, |acc, r| {
        line.clear();
        r.render(&mut line);
        acc.wrapping_add(fnv(&line))
    })
}

/// Reads every committed file under `committed_dir` and compares with [`reference()`]`(p)`.
pub fn check_output(committed_dir: &Path, p: &WordCountParams) -> Result<OutputCheck> {
    let expected = reference(p);
    let mut seen: BTreeMap<(u64, String), u64> = BTreeMap::new();
    let mut check = OutputCheck::default();
    let mut rows = Vec::new();
    let entries = std::fs::read_dir(committed_dir)
        .map_err(io(format!("list {}", committed_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("list {}", committed_dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let epoch = name
            .strip_prefix('e')
            .and_then(|r| r.split('-').next())
            .and_then(|e| e.parse::<u64>().ok());
        check.max_epoch = check.max_epoch.max(epoch);
        check.files += 1;
        let text = std::fs::read_to_string(entry.path())
            .map_err(io(format!("read {}", entry.path().display())))?;
        for line in text.lines() {
            let row = WindowCount::parse(line)
                .ok_or_else(|| HostError::Protocol(format!("{name}: unreadable row {line:?}")))?;
            check.rows += 1;
            let n = seen.entry((row.window, row.word.clone())).or_insert(0);
            *n += 1;
            if *n > 1 {
                check.duplicates += 1;
            }
            if expected.get(&(row.window, row.word.clone())) != Some(&row.count) {
                check.wrong += 1;
            }
            rows.push(row);
        }
    }
    check.missing = expected.keys().filter(|k| !seen.contains_key(*k)).count() as u64;
    check.checksum = checksum(rows.iter());
    let exp_rows: Vec<WindowCount> = expected
        .into_iter()
        .map(|((window, word), count)| WindowCount {
            window,
            word,
            count,
        })
        .collect();
    check.expected_checksum = checksum(exp_rows.iter());
    Ok(check)
}
