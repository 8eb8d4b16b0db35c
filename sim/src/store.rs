//! The simulated object store: one [`SimCloud`] (the objects, the fault schedule, the virtual
//! clock) and one [`SimStore`] per simulated process (its client; an `ObjectStore`).
//!
//! ## Determinism
//! Tasks of one checkpoint run concurrently (slots upload in parallel, the lease is renewed in
//! the background, a garbage collection may run alongside), and some of their work runs on
//! tokio's blocking threads (hashing, compressing, local file I/O), whose completion order is
//! real-time and varies from run to run. Two rules make the effects on storage reproducible
//! anyway:
//! - **Faults are keyed, not ordered.** What a call suffers is a pure function of (seed,
//!   operation, exact path, how many times that (operation, path) was called before), never of
//!   the global call order.
//! - **Effects happen at virtual instants, in a fixed order.** Every call first sleeps a
//!   latency (virtual time; a runtime with paused time advances only when every task waits
//!   and no blocking work runs, so the instant a call starts is deterministic), then waits for
//!   its turn: calls due at the same millisecond take effect in the order of their keys, not
//!   of their arrival. So the n-th effect of the run is the same in every run.
//!
//! ## Faults
//! Latency (with occasional long stalls), a transient error before the call, an error after
//! the call took effect (a lost answer), a partial write (a truncated object is stored, then
//! an error; never for create-only puts unless [`SimCloud::new`] is told so: real stores write
//! a create-only object atomically), a cut download stream, and a *late landing* put: the write
//! runs in a spawned task after a delay and still lands if the caller gave up on it (what
//! `LocalFileSystem` does: its writes run on blocking threads and outlive a dropped future).
//!
//! A process can also be *crashed*: from a chosen effect on, every call of it fails without
//! effect (the process is gone); late writes it had started still land. And a test can refuse
//! calls by path (a rule), or run code at the n-th effect of the run (a hook: a garbage
//! collection that starts in the middle of a checkpoint).
//!
//! `last_modified` in every answer is the virtual time of the object's last write (the
//! in-memory store would stamp real time), because garbage collection's grace period is
//! virtual.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_snapshot::Clock;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};

use crate::det::{Stream, hash_all, hash_bytes};

/// The kind of a store call (what fault decisions and counters are keyed by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A PUT (plain or create-only; multipart uploads complete as one).
    Put,
    /// A GET of an object's bytes.
    Get,
    /// A HEAD.
    Head,
    /// A LIST (recursive or with a delimiter).
    List,
    /// A DELETE.
    Delete,
    /// A server-side COPY.
    Copy,
}

/// How hostile storage is for a while (the world switches profiles between steps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultProfile {
    /// Name, for the trace and the report.
    pub name: &'static str,
    /// Probability of a transient error before the call.
    pub error: f64,
    /// Probability that a write (put, delete, copy) takes effect and its answer is lost.
    pub lost_answer: f64,
    /// Probability that a put stores a truncated object, then fails.
    pub partial: f64,
    /// Probability that a put lands late, in a task of its own.
    pub late: f64,
    /// Probability that a download stream is cut mid-body.
    pub cut: f64,
    /// Latency of every call, ms (inclusive range).
    pub latency_ms: (u64, u64),
    /// Probability of a stall on top of the latency.
    pub spike: f64,
    /// Length of a stall, ms.
    pub spike_ms: (u64, u64),
    /// Delay of a late landing, ms.
    pub late_ms: (u64, u64),
    /// Extra probability of a transient error (and as much of a lost answer) on a checkpoint's
    /// `_metadata`: the commit point, where doubt matters most.
    pub metadata_error: f64,
}

impl FaultProfile {
    /// No fault, short latency.
    pub const CALM: FaultProfile = FaultProfile {
        name: "calm",
        error: 0.0,
        lost_answer: 0.0,
        partial: 0.0,
        late: 0.0,
        cut: 0.0,
        latency_ms: (1, 20),
        spike: 0.0,
        spike_ms: (0, 0),
        late_ms: (0, 0),
        metadata_error: 0.0,
    };

    /// Some transient errors of every kind; most are absorbed by retries.
    pub const FLAKY: FaultProfile = FaultProfile {
        name: "flaky",
        error: 0.06,
        lost_answer: 0.04,
        partial: 0.02,
        late: 0.03,
        cut: 0.03,
        latency_ms: (1, 40),
        spike: 0.01,
        spike_ms: (200, 2_000),
        late_ms: (5, 800),
        metadata_error: 0.10,
    };

    /// Long stalls and late writes: checkpoints time out, commits take long.
    pub const SLOW: FaultProfile = FaultProfile {
        name: "slow",
        error: 0.02,
        lost_answer: 0.02,
        partial: 0.0,
        late: 0.10,
        cut: 0.0,
        latency_ms: (10, 300),
        spike: 0.05,
        spike_ms: (1_000, 6_000),
        late_ms: (100, 12_000),
        metadata_error: 0.05,
    };

    /// Everything often: retries run out, commits end in doubt.
    pub const CHAOS: FaultProfile = FaultProfile {
        name: "chaos",
        error: 0.25,
        lost_answer: 0.15,
        partial: 0.05,
        late: 0.08,
        cut: 0.08,
        latency_ms: (1, 100),
        spike: 0.03,
        spike_ms: (500, 5_000),
        late_ms: (5, 6_000),
        metadata_error: 0.35,
    };
}

/// What one call suffers (decided when it starts).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    Error,
    LostAnswer,
    /// Keep this many thousandths of the payload.
    Partial(u64),
    /// Land after this many ms.
    Late(u64),
    /// Deliver this many thousandths of the body, then fail.
    Cut(u64),
}

/// Counters of what the store did to its callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Calls that took effect (or were refused) in total.
    pub effects: u64,
    /// Transient errors before the call.
    pub error: u64,
    /// Writes whose answer was lost.
    pub lost_answer: u64,
    /// Truncated writes.
    pub partial: u64,
    /// Late landings (scheduled).
    pub late: u64,
    /// Cut download streams.
    pub cut: u64,
    /// Stalls.
    pub spike: u64,
    /// Calls refused because their process had crashed.
    pub crashed: u64,
    /// Calls refused by a rule (a lost lease renewal).
    pub refused: u64,
}

impl FaultCounts {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.effects += other.effects;
        self.error += other.error;
        self.lost_answer += other.lost_answer;
        self.partial += other.partial;
        self.late += other.late;
        self.cut += other.cut;
        self.spike += other.spike;
        self.crashed += other.crashed;
        self.refused += other.refused;
    }

    /// Faults injected (stalls and refusals of a dead process not counted).
    pub fn injected(&self) -> u64 {
        self.error + self.lost_answer + self.partial + self.late + self.cut + self.refused
    }
}

/// Code run at the n-th effect of the run (inside the runtime, from the call's task).
pub type Hook = Box<dyn FnOnce() + Send>;

struct Rule {
    id: u64,
    op: Op,
    path_contains: String,
}

struct State {
    profile: FaultProfile,
    /// Calls so far per (operation, key): the `n` of the fault decision.
    calls: HashMap<(Op, String), u64>,
    /// Virtual time of each object's last write, ms since the Unix epoch.
    mtimes: HashMap<String, u64>,
    /// Calls waiting for their effect: (due tick, key hash, unique).
    waiting: BTreeSet<(u64, u64, u64)>,
    unique: u64,
    rules: Vec<Rule>,
    next_rule: u64,
    hooks: Vec<(u64, Hook)>,
    late_pending: u64,
    trace: u64,
    counts: FaultCounts,
    /// Bumped by every write or delete that took effect.
    version: u64,
}

/// The simulated storage service shared by every simulated process. See the module doc.
pub struct SimCloud {
    inner: Arc<InMemory>,
    seed: u64,
    clock: Arc<dyn Clock>,
    base: tokio::time::Instant,
    partial_create: bool,
    state: Mutex<State>,
    turn: tokio::sync::Notify,
    next_process: AtomicU64,
}

impl fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimCloud(seed {})", self.seed)
    }
}

/// One simulated process's view of the cloud: whether its calls suffer faults, and whether it
/// crashed.
#[derive(Debug)]
pub struct Process {
    id: u64,
    name: String,
    faults: bool,
    /// The process dies at its n-th effect (`u64::MAX`: never).
    crash_at: AtomicU64,
    effects: AtomicU64,
    dead: AtomicBool,
}

impl Process {
    /// Its name (trace, errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Crash at the `n`-th effect from now (0 = the next call fails).
    pub fn crash_after(&self, n: u64) {
        let now = self.effects.load(Ordering::SeqCst);
        self.crash_at.store(now.saturating_add(n), Ordering::SeqCst);
    }

    /// Crash now: every later call fails.
    pub fn crash_now(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// Whether it crashed.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Effects of its calls so far.
    pub fn effects(&self) -> u64 {
        self.effects.load(Ordering::SeqCst)
    }
}

/// Removes its call from the waiting set when the call ends or is dropped, and lets the next
/// one go.
struct Turn {
    cloud: Arc<SimCloud>,
    entry: (u64, u64, u64),
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.cloud.st().waiting.remove(&self.entry);
        self.cloud.turn.notify_waiters();
    }
}

fn injected(op: Op, path: &str, what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "SimStore",
        source: format!("injected {what} on {op:?} {path}").into(),
    }
}

/// Outcome codes of the trace.
mod outcome {
    pub const OK: u64 = 0;
    pub const INNER_ERR: u64 = 1;
    pub const ERROR: u64 = 2;
    pub const LOST: u64 = 3;
    pub const PARTIAL: u64 = 4;
    pub const LATE_SCHEDULED: u64 = 5;
    pub const LATE_LANDED: u64 = 6;
    pub const CUT: u64 = 7;
    pub const CRASHED: u64 = 8;
    pub const REFUSED: u64 = 9;
}

impl SimCloud {
    /// A cloud over a fresh in-memory store. `runtime` must be the simulation's runtime (its
    /// clock is the virtual clock); `clock` reads it as wall-clock ms. `partial_create` lets
    /// create-only puts be truncated too (no real store does that).
    pub fn new(
        seed: u64,
        runtime: &tokio::runtime::Handle,
        clock: Arc<dyn Clock>,
        partial_create: bool,
    ) -> Arc<Self> {
        let base = {
            let _in = runtime.enter();
            tokio::time::Instant::now()
        };
        Arc::new(Self {
            inner: Arc::new(InMemory::new()),
            seed,
            clock,
            base,
            partial_create,
            state: Mutex::new(State {
                profile: FaultProfile::CALM,
                calls: HashMap::new(),
                mtimes: HashMap::new(),
                waiting: BTreeSet::new(),
                unique: 0,
                rules: Vec::new(),
                next_rule: 1,
                hooks: Vec::new(),
                late_pending: 0,
                trace: 0,
                counts: FaultCounts::default(),
                version: 0,
            }),
            turn: tokio::sync::Notify::new(),
            next_process: AtomicU64::new(1),
        })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock already fails the simulation; keep going to report it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The in-memory store behind the faults (read by the invariant checks, which must not
    /// disturb the run).
    pub fn inner(&self) -> &Arc<InMemory> {
        &self.inner
    }

    /// A new process (`faults = false`: latency only, e.g. the garbage collector).
    pub fn process(&self, name: impl Into<String>, faults: bool) -> Arc<Process> {
        Arc::new(Process {
            id: self.next_process.fetch_add(1, Ordering::SeqCst),
            name: name.into(),
            faults,
            crash_at: AtomicU64::new(u64::MAX),
            effects: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        })
    }

    /// The client of `process`.
    pub fn store(self: &Arc<Self>, process: &Arc<Process>) -> Arc<SimStore> {
        Arc::new(SimStore {
            cloud: self.clone(),
            process: process.clone(),
        })
    }

    /// Sets the fault profile of calls that start from now on.
    pub fn set_profile(&self, profile: FaultProfile) {
        self.st().profile = profile;
    }

    /// The current fault profile.
    pub fn profile(&self) -> FaultProfile {
        self.st().profile
    }

    /// Refuses every call `op` on a path containing `path_contains` (transient error, no
    /// effect) until [`SimCloud::remove_rule`]. Returns the rule's id.
    pub fn add_rule(&self, op: Op, path_contains: impl Into<String>) -> u64 {
        let mut st = self.st();
        let id = st.next_rule;
        st.next_rule += 1;
        st.rules.push(Rule {
            id,
            op,
            path_contains: path_contains.into(),
        });
        id
    }

    /// Removes a rule.
    pub fn remove_rule(&self, id: u64) {
        self.st().rules.retain(|r| r.id != id);
    }

    /// Runs `hook` when the run's effect number `after_effects + 1` from now is reached.
    pub fn add_hook(&self, after_effects: u64, hook: Hook) {
        let mut st = self.st();
        let at = st.counts.effects + after_effects + 1;
        st.hooks.push((at, hook));
    }

    /// Drops hooks that have not fired.
    pub fn clear_hooks(&self) {
        self.st().hooks.clear();
    }

    /// Late landings scheduled and not landed yet.
    pub fn late_pending(&self) -> u64 {
        self.st().late_pending
    }

    /// A hash of every effect so far (operation, path, outcome, process, virtual time): two runs
    /// of one seed must agree on it.
    pub fn trace_hash(&self) -> u64 {
        self.st().trace
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.st().counts
    }

    /// The virtual time of `path`'s last write, ms (0 when unknown).
    pub fn mtime_ms(&self, path: &str) -> u64 {
        self.st().mtimes.get(path).copied().unwrap_or(0)
    }

    fn mtime(&self, path: &str) -> chrono::DateTime<chrono::Utc> {
        let ms = i64::try_from(self.mtime_ms(path)).unwrap_or(i64::MAX);
        chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    /// Changes whenever an object was written or deleted: a view of storage taken at the same
    /// version is still true.
    pub fn version(&self) -> u64 {
        self.st().version
    }

    fn wrote(&self, path: &str) {
        let now = self.clock.now_ms();
        let mut st = self.st();
        st.mtimes.insert(path.to_string(), now);
        st.version += 1;
    }

    fn removed(&self, path: &str) {
        let mut st = self.st();
        st.mtimes.remove(path);
        st.version += 1;
    }

    fn record(&self, process: u64, op: Op, key: &str, code: u64) {
        let now = self.clock.now_ms();
        let mut st = self.st();
        st.trace = hash_all(&[st.trace, process, op as u64, hash_bytes(key.as_bytes()), code, now]);
    }

    /// Decides what a call suffers: a pure function of (seed, op, key, n, profile).
    fn decide(&self, op: Op, key: &str, n: u64, faults: bool, partial_ok: bool) -> (Fault, u64) {
        let p = self.st().profile;
        let mut s = Stream::new(hash_all(&[self.seed, op as u64, hash_bytes(key.as_bytes()), n]));
        let mut latency = s.range(p.latency_ms.0.max(1), p.latency_ms.1.max(1));
        let spike = s.unit() < p.spike;
        let u = s.unit();
        let size = s.range(1, 999);
        let late_ms = s.range(p.late_ms.0.max(1), p.late_ms.1.max(1));
        let spike_ms = s.range(p.spike_ms.0, p.spike_ms.1);
        if !faults {
            return (Fault::None, latency);
        }
        if spike {
            latency += spike_ms;
            self.st().counts.spike += 1;
        }
        let extra = if key.ends_with("/_metadata") {
            p.metadata_error
        } else {
            0.0
        };
        let writes = matches!(op, Op::Put | Op::Delete | Op::Copy);
        let mut acc = p.error + extra;
        if u < acc {
            return (Fault::Error, latency);
        }
        acc += p.lost_answer + extra;
        if u < acc {
            let f = if writes { Fault::LostAnswer } else { Fault::Error };
            return (f, latency);
        }
        acc += p.partial;
        if u < acc {
            let f = if op == Op::Put && partial_ok {
                Fault::Partial(size)
            } else {
                Fault::None
            };
            return (f, latency);
        }
        acc += p.late;
        if u < acc {
            let f = if op == Op::Put {
                Fault::Late(late_ms)
            } else {
                Fault::None
            };
            return (f, latency);
        }
        acc += p.cut;
        if u < acc && op == Op::Get {
            return (Fault::Cut(size), latency);
        }
        (Fault::None, latency)
    }

    /// Registers a call due in `latency_ms`, sleeps until then, and waits for its turn among
    /// the calls due at the same millisecond (ordered by `key`).
    async fn schedule(self: &Arc<Self>, latency_ms: u64, key: u64) -> Turn {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(latency_ms);
        // tokio rounds deadlines up to whole milliseconds.
        let tick = u64::try_from(
            deadline
                .saturating_duration_since(self.base)
                .as_micros()
                .div_ceil(1000),
        )
        .unwrap_or(u64::MAX);
        let entry = {
            let mut st = self.st();
            st.unique += 1;
            let e = (tick, key, st.unique);
            st.waiting.insert(e);
            e
        };
        let turn = Turn {
            cloud: self.clone(),
            entry,
        };
        tokio::time::sleep_until(deadline).await;
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.st().waiting.first() == Some(&entry) {
                return turn;
            }
            notified.await;
        }
    }

    /// Decides and schedules a call of `process`. Returns its turn, its fault and its key hash.
    async fn admit(
        self: &Arc<Self>,
        process: &Process,
        op: Op,
        key: &str,
        partial_ok: bool,
    ) -> (Turn, Fault, u64) {
        let n = {
            let mut st = self.st();
            let c = st.calls.entry((op, key.to_string())).or_insert(0);
            let n = *c;
            *c += 1;
            n
        };
        let (fault, latency) = self.decide(op, key, n, process.faults, partial_ok);
        let keyhash = hash_all(&[op as u64, hash_bytes(key.as_bytes()), n]);
        let turn = self.schedule(latency, keyhash).await;
        (turn, fault, keyhash)
    }

    /// The call's effect is due: counts it, fires hooks, and refuses it when its process
    /// crashed or a rule matches.
    fn begin(&self, process: &Process, op: Op, key: &str) -> object_store::Result<()> {
        let hooks: Vec<Hook> = {
            let mut st = self.st();
            st.counts.effects += 1;
            let no = st.counts.effects;
            let (due, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut st.hooks).into_iter().partition(|(at, _)| *at == no);
            st.hooks = keep;
            due.into_iter().map(|(_, h)| h).collect()
        };
        for h in hooks {
            h();
        }
        let n = process.effects.fetch_add(1, Ordering::SeqCst);
        if n >= process.crash_at.load(Ordering::SeqCst) {
            process.dead.store(true, Ordering::SeqCst);
        }
        if process.dead.load(Ordering::SeqCst) {
            self.st().counts.crashed += 1;
            self.record(process.id, op, key, outcome::CRASHED);
            return Err(injected(op, key, "refusal (the process crashed)"));
        }
        let refused = self
            .st()
            .rules
            .iter()
            .any(|r| r.op == op && key.contains(&r.path_contains));
        if refused {
            self.st().counts.refused += 1;
            self.record(process.id, op, key, outcome::REFUSED);
            return Err(injected(op, key, "refusal (rule)"));
        }
        Ok(())
    }

    fn count(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.st().counts);
    }
}

/// A simulated process's client of the [`SimCloud`]: an `ObjectStore`. See the module doc.
#[derive(Clone, Debug)]
pub struct SimStore {
    cloud: Arc<SimCloud>,
    process: Arc<Process>,
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({})", self.process.name)
    }
}

impl SimStore {
    /// Its process.
    pub fn process(&self) -> &Arc<Process> {
        &self.process
    }

    async fn list_once(&self, prefix: Option<Path>) -> object_store::Result<Vec<ObjectMeta>> {
        let key = prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let (turn, fault, _) = self
            .cloud
            .admit(&self.process, Op::List, &key, false)
            .await;
        self.cloud.begin(&self.process, Op::List, &key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(self.process.id, Op::List, &key, outcome::ERROR);
            return Err(injected(Op::List, &key, "transient error"));
        }
        let mut all: Vec<ObjectMeta> = self.cloud.inner.list(prefix.as_ref()).try_collect().await?;
        for m in &mut all {
            m.last_modified = self.cloud.mtime(m.location.as_ref());
        }
        all.sort_by(|a, b| a.location.cmp(&b.location));
        self.cloud.record(self.process.id, Op::List, &key, outcome::OK);
        drop(turn);
        Ok(all)
    }

    async fn delete_once(&self, path: &Path) -> object_store::Result<()> {
        let key = path.as_ref();
        let (turn, fault, _) = self
            .cloud
            .admit(&self.process, Op::Delete, key, false)
            .await;
        self.cloud.begin(&self.process, Op::Delete, key)?;
        if fault == Fault::Error {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(self.process.id, Op::Delete, key, outcome::ERROR);
            return Err(injected(Op::Delete, key, "transient error"));
        }
        let r = self.cloud.inner.delete(path).await;
        if r.is_ok() {
            self.cloud.removed(key);
        }
        drop(turn);
        if fault == Fault::LostAnswer && r.is_ok() {
            self.cloud.count(|c| c.lost_answer += 1);
            self.cloud.record(self.process.id, Op::Delete, key, outcome::LOST);
            return Err(injected(Op::Delete, key, "lost answer"));
        }
        let code = if r.is_ok() { outcome::OK } else { outcome::INNER_ERR };
        self.cloud.record(self.process.id, Op::Delete, key, code);
        r
    }

    /// A put that lands `delay_ms` from now in a task of its own, whether or not the caller
    /// still waits for it.
    async fn put_late(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
        delay_ms: u64,
        keyhash: u64,
    ) -> object_store::Result<PutResult> {
        let cloud = self.cloud.clone();
        let process = self.process.id;
        let location = location.clone();
        cloud.st().late_pending += 1;
        cloud.count(|c| c.late += 1);
        cloud.record(process, Op::Put, location.as_ref(), outcome::LATE_SCHEDULED);
        let task = tokio::spawn(async move {
            let turn = cloud.schedule(delay_ms, hash_all(&[keyhash, 0x1a7e])).await;
            let r = cloud.inner.put_opts(&location, payload, opts).await;
            let code = if r.is_ok() {
                cloud.wrote(location.as_ref());
                outcome::LATE_LANDED
            } else {
                outcome::INNER_ERR
            };
            cloud.record(process, Op::Put, location.as_ref(), code);
            cloud.st().late_pending -= 1;
            drop(turn);
            r
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(object_store::Error::JoinError { source: e }),
        }
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let key = location.as_ref();
        let create = matches!(opts.mode, PutMode::Create);
        let partial_ok = !create || self.cloud.partial_create;
        let (turn, fault, keyhash) = self
            .cloud
            .admit(&self.process, Op::Put, key, partial_ok)
            .await;
        self.cloud.begin(&self.process, Op::Put, key)?;
        let id = self.process.id;
        match fault {
            Fault::Error => {
                self.cloud.count(|c| c.error += 1);
                self.cloud.record(id, Op::Put, key, outcome::ERROR);
                Err(injected(Op::Put, key, "transient error"))
            }
            Fault::Partial(thousandths) => {
                let bytes = Bytes::from(payload);
                let keep = (bytes.len() as u64 * thousandths / 1000) as usize;
                let cut = bytes.slice(..keep.min(bytes.len().saturating_sub(1)));
                self.cloud
                    .inner
                    .put_opts(location, PutPayload::from(cut), PutOptions::default())
                    .await?;
                self.cloud.wrote(key);
                self.cloud.count(|c| c.partial += 1);
                self.cloud.record(id, Op::Put, key, outcome::PARTIAL);
                Err(injected(Op::Put, key, "partial write"))
            }
            Fault::Late(delay) => {
                drop(turn);
                self.put_late(location, payload, opts, delay, keyhash).await
            }
            Fault::LostAnswer => {
                let r = self.cloud.inner.put_opts(location, payload, opts).await;
                if r.is_err() {
                    self.cloud.record(id, Op::Put, key, outcome::INNER_ERR);
                    return r;
                }
                self.cloud.wrote(key);
                self.cloud.count(|c| c.lost_answer += 1);
                self.cloud.record(id, Op::Put, key, outcome::LOST);
                Err(injected(Op::Put, key, "lost answer"))
            }
            Fault::None | Fault::Cut(_) => {
                let r = self.cloud.inner.put_opts(location, payload, opts).await;
                let code = if r.is_ok() {
                    self.cloud.wrote(key);
                    outcome::OK
                } else {
                    outcome::INNER_ERR
                };
                self.cloud.record(id, Op::Put, key, code);
                r
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(SimUpload {
            store: self.clone(),
            location: location.clone(),
            parts: Vec::new(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let op = if options.head { Op::Head } else { Op::Get };
        let (turn, fault, _) = self.cloud.admit(&self.process, op, key, false).await;
        self.cloud.begin(&self.process, op, key)?;
        let id = self.process.id;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(id, op, key, outcome::ERROR);
            return Err(injected(op, key, "transient error"));
        }
        let mut r = match self.cloud.inner.get_opts(location, options).await {
            Ok(r) => r,
            Err(e) => {
                self.cloud.record(id, op, key, outcome::INNER_ERR);
                return Err(e);
            }
        };
        drop(turn);
        r.meta.last_modified = self.cloud.mtime(key);
        let Fault::Cut(thousandths) = fault else {
            self.cloud.record(id, op, key, outcome::OK);
            return Ok(r);
        };
        if op != Op::Get {
            self.cloud.record(id, op, key, outcome::OK);
            return Ok(r);
        }
        let chunks: Vec<Bytes> = match r.payload {
            GetResultPayload::Stream(s) => s.try_collect().await?,
            other => {
                r.payload = other;
                return Ok(r);
            }
        };
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let keep = (body.len() as u64 * thousandths / 1000) as usize;
        let head = Bytes::from(body).slice(..keep);
        let err = injected(op, key, "cut stream");
        r.payload =
            GetResultPayload::Stream(futures::stream::iter(vec![Ok(head), Err(err)]).boxed());
        self.cloud.count(|c| c.cut += 1);
        self.cloud.record(id, op, key, outcome::CUT);
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let key = location.as_ref();
        let (turn, fault, _) = self.cloud.admit(&self.process, Op::Get, key, false).await;
        self.cloud.begin(&self.process, Op::Get, key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::Get, key, outcome::ERROR);
            return Err(injected(Op::Get, key, "transient error"));
        }
        let r = self.cloud.inner.get_ranges(location, ranges).await;
        drop(turn);
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .then(move |p| {
                let this = this.clone();
                async move {
                    let p = p?;
                    this.delete_once(&p).await.map(|()| p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move { this.list_once(prefix).await })
            .flat_map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let (turn, fault, _) = self
            .cloud
            .admit(&self.process, Op::List, &key, false)
            .await;
        self.cloud.begin(&self.process, Op::List, &key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::List, &key, outcome::ERROR);
            return Err(injected(Op::List, &key, "transient error"));
        }
        let mut r = self.cloud.inner.list_with_delimiter(prefix).await?;
        for m in &mut r.objects {
            m.last_modified = self.cloud.mtime(m.location.as_ref());
        }
        r.objects.sort_by(|a, b| a.location.cmp(&b.location));
        r.common_prefixes.sort();
        self.cloud
            .record(self.process.id, Op::List, &key, outcome::OK);
        drop(turn);
        Ok(r)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let key = format!("{from}>{to}");
        let (turn, fault, _) = self
            .cloud
            .admit(&self.process, Op::Copy, &key, false)
            .await;
        self.cloud.begin(&self.process, Op::Copy, &key)?;
        let id = self.process.id;
        if fault == Fault::Error {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(id, Op::Copy, &key, outcome::ERROR);
            return Err(injected(Op::Copy, &key, "transient error"));
        }
        let r = self.cloud.inner.copy_opts(from, to, options).await;
        drop(turn);
        if r.is_err() {
            self.cloud.record(id, Op::Copy, &key, outcome::INNER_ERR);
            return r;
        }
        self.cloud.wrote(to.as_ref());
        if fault == Fault::LostAnswer {
            self.cloud.count(|c| c.lost_answer += 1);
            self.cloud.record(id, Op::Copy, &key, outcome::LOST);
            return Err(injected(Op::Copy, &key, "lost answer"));
        }
        self.cloud.record(id, Op::Copy, &key, outcome::OK);
        Ok(())
    }
}

/// A multipart upload: parts are buffered and the completion is one simulated put (Cairn's
/// simulated files are far below the part size, so this path is only here for completeness).
#[derive(Debug)]
struct SimUpload {
    store: SimStore,
    location: Path,
    parts: Vec<Bytes>,
}

#[async_trait]
impl MultipartUpload for SimUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(Bytes::from(data));
        Box::pin(futures::future::ready(Ok(())))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let body: Vec<u8> = self.parts.iter().flat_map(|p| p.iter().copied()).collect();
        self.store
            .put_opts(
                &self.location,
                PutPayload::from(body),
                PutOptions::default(),
            )
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}
