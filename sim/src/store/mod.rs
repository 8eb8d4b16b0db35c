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
//! an error; only checkpoint data, unless [`SimCloud::new`] is told otherwise: real stores
//! write every object atomically, and a truncated lease record or `_metadata` is a different
//! failure, see `SimConfig::partial_everywhere`), a cut download stream, and a *late landing*
//! put: the write
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

mod client;
mod faults;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_snapshot::Clock;
use object_store::memory::InMemory;

use crate::det::{Stream, hash_all, hash_bytes};

pub use client::SimStore;
pub use faults::{FaultCounts, FaultProfile};

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

/// What the cloud may do besides the fault profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloudOptions {
    /// Let any put be truncated (lease records and commits too), not only checkpoint data
    /// (shared and private files).
    pub partial_everywhere: bool,
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
    /// Paths of late landings not landed yet (with multiplicity).
    late_paths: BTreeMap<String, u32>,
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
    options: CloudOptions,
    /// Print every effect (`CAIRN_SIM_TRACE=1`), to find where two runs diverge.
    print_trace: bool,
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
    /// clock is the virtual clock); `clock` reads it as wall-clock ms.
    pub fn new(
        seed: u64,
        runtime: &tokio::runtime::Handle,
        clock: Arc<dyn Clock>,
        options: CloudOptions,
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
            options,
            print_trace: std::env::var("CAIRN_SIM_TRACE").is_ok_and(|v| v == "1"),
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
                late_paths: BTreeMap::new(),
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
        Arc::new(SimStore::new(self.clone(), process.clone()))
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

    /// Whether a late landing under `prefix` has not landed yet.
    pub fn late_pending_under(&self, prefix: &str) -> bool {
        self.st()
            .late_paths
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(p, _)| p.starts_with(prefix))
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
        st.trace = hash_all(&[
            st.trace,
            process,
            op as u64,
            hash_bytes(key.as_bytes()),
            code,
            now,
        ]);
        if self.print_trace {
            eprintln!(
                "effect {} t={now} p{process} {op:?} {key} -> {code}",
                st.counts.effects
            );
        }
    }

    /// Decides what a call suffers: a pure function of (seed, op, key, n, profile).
    fn decide(&self, op: Op, key: &str, n: u64, faults: bool, partial_ok: bool) -> (Fault, u64) {
        let p = self.st().profile;
        let mut s = Stream::new(hash_all(&[
            self.seed,
            op as u64,
            hash_bytes(key.as_bytes()),
            n,
        ]));
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
            let f = if writes {
                Fault::LostAnswer
            } else {
                Fault::Error
            };
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

    /// Returns once every call due in the next millisecond took effect (and every blocking
    /// task finished: virtual time can't pass before). The main thread calls it before it
    /// reads storage directly, so what it reads does not depend on whether a background task
    /// due at the same instant happened to run before its last `block_on` returned.
    pub async fn settle(self: &Arc<Self>) {
        drop(self.schedule(1, u64::MAX).await);
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
        let faults = process.faults;
        let (fault, latency) = self.decide(op, key, n, faults, partial_ok);
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
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.hooks)
                .into_iter()
                .partition(|(at, _)| *at == no);
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
