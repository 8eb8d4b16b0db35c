//! Wall-clock time, injected: the checkpoint protocol never reads the system clock itself.
//!
//! Everything that decides by time reads the [`Clock`] of its [`crate::StorageRoot`]:
//! commit and upload times written into metadata, the age of a file for `rebase.max-file-age`,
//! the grace period of garbage collection, and whether a writer's lease has expired. Tests and
//! the deterministic simulation hand in a [`ManualClock`] or a [`TokioClock`] (which follows
//! tokio's clock, so a runtime with paused time drives it).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, ms since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    /// The current time, ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one place that reads the system clock"
    )]
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }

    /// Sets the time.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wall-clock time that follows the clock of one tokio runtime from a fixed start: `start_ms`
/// plus the time that runtime says has passed since the clock was made, read inside the
/// runtime's context from any thread. Under a runtime whose time is paused (`start_paused`),
/// it is virtual and deterministic, so timeouts, retries' backoff and every decision by age
/// move together.
#[derive(Debug)]
pub struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
    runtime: tokio::runtime::Handle,
}

impl TokioClock {
    /// A clock reading `start_ms` now, following `runtime`'s clock.
    pub fn new(runtime: tokio::runtime::Handle, start_ms: u64) -> Self {
        let start = {
            let _in = runtime.enter();
            tokio::time::Instant::now()
        };
        Self {
            start_ms,
            start,
            runtime,
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let _in = self.runtime.enter();
        let passed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_ms.saturating_add(passed)
    }
}
