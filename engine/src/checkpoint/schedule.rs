//! When to trigger checkpoints, and when a triggered one has taken too long: the timing half of
//! a checkpoint coordinator, with Flink's semantics, on an injected clock.
//!
//! A host asks [`CheckpointSchedule::due`] between records (or sleeps until
//! [`CheckpointSchedule::next_due_ms`]), injects a barrier with the id it got from
//! [`Checkpointer::trigger_checkpoint`](crate::checkpoint::Checkpointer::trigger_checkpoint) and reports it with
//! [`CheckpointSchedule::triggered`]; when the checkpoint ends it calls
//! [`CheckpointSchedule::finished`]. [`CheckpointSchedule::expired`] names the checkpoints in
//! flight longer than the timeout: the host aborts them (and counts the failure through
//! [`Checkpointer::checkpoint_failed`](crate::checkpoint::Checkpointer::checkpoint_failed)).
//!
//! Rules (Flink's `CheckpointRequestDecider` and `CheckpointCoordinator`):
//! - **Interval**: a periodic checkpoint is due `interval` after the previous trigger (the
//!   first one `interval` after the schedule starts); `None` = only forced checkpoints.
//! - **Min pause**: and not before `min-pause` after the last *completed* checkpoint ended.
//! - **Max concurrent**: and not while `max-concurrent` checkpoints are in flight.
//! - **Timeout**: measured from the trigger, so it covers barrier collection (the slots'
//!   synchronous phases) as well as uploads and the commit's start.
//! - **Forced** checkpoints (a savepoint, a user's request) ignore interval, min pause and max
//!   concurrent: the host triggers them whenever it wants and reports them the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_snapshot::Clock;

use crate::checkpoint::CheckpointConfig;

/// The timing of a job's checkpoints. See the module doc.
#[derive(Debug)]
pub struct CheckpointSchedule {
    clock: Arc<dyn Clock>,
    interval: Option<u64>,
    min_pause: u64,
    timeout: u64,
    max_concurrent: usize,
    started_ms: u64,
    last_trigger_ms: Option<u64>,
    last_completion_ms: Option<u64>,
    /// Checkpoints in flight: id -> trigger time.
    in_flight: BTreeMap<u64, u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CheckpointSchedule {
    /// The schedule of `cfg` (`interval`, `min-pause`, `timeout`, `max-concurrent`), starting
    /// now on `clock`.
    pub fn new(cfg: &CheckpointConfig, clock: Arc<dyn Clock>) -> Self {
        let started_ms = clock.now_ms();
        Self {
            clock,
            interval: cfg.interval.map(ms),
            min_pause: ms(cfg.min_pause),
            timeout: ms(cfg.timeout),
            max_concurrent: usize::try_from(cfg.max_concurrent.max(1)).unwrap_or(1),
            started_ms,
            last_trigger_ms: None,
            last_completion_ms: None,
            in_flight: BTreeMap::new(),
        }
    }

    /// When the next periodic checkpoint is due (clock milliseconds), ignoring max concurrent;
    /// `None` when checkpoints are not periodic.
    pub fn next_due_ms(&self) -> Option<u64> {
        let interval = self.interval?;
        let by_interval = self.last_trigger_ms.unwrap_or(self.started_ms) + interval;
        let by_pause = self.last_completion_ms.map_or(0, |c| c + self.min_pause);
        Some(by_interval.max(by_pause))
    }

    /// Whether a periodic checkpoint should be triggered now.
    pub fn due(&self) -> bool {
        self.in_flight.len() < self.max_concurrent
            && self.next_due_ms().is_some_and(|t| self.clock.now_ms() >= t)
    }

    /// Periodic checkpoint `id` was triggered now: the next one is due an interval later.
    pub fn triggered(&mut self, id: u64) {
        let now = self.clock.now_ms();
        self.last_trigger_ms = Some(now);
        self.in_flight.insert(id, now);
    }

    /// Requested checkpoint `id` (forced, savepoint) was triggered now: it is in flight (max
    /// concurrent, timeout) but does not move the periodic schedule, as Flink's periodic
    /// trigger runs at its own rate whatever savepoints are taken in between.
    pub fn triggered_on_request(&mut self, id: u64) {
        self.in_flight.insert(id, self.clock.now_ms());
    }

    /// Checkpoint `id` ended now: `completed` (committed) or not (failed, declined, expired,
    /// aborted). Only a completion starts the min pause. Unknown ids are ignored.
    pub fn finished(&mut self, id: u64, completed: bool) {
        if self.in_flight.remove(&id).is_some() && completed {
            self.last_completion_ms = Some(self.clock.now_ms());
        }
    }

    /// Checkpoints in flight for longer than the timeout, oldest first: the host aborts them
    /// and reports them [`CheckpointSchedule::finished`].
    pub fn expired(&self) -> Vec<u64> {
        let now = self.clock.now_ms();
        self.in_flight
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= self.timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    /// How long checkpoint `id` has been in flight (`None` when it is not).
    pub fn age(&self, id: u64) -> Option<Duration> {
        let t = self.in_flight.get(&id)?;
        Some(Duration::from_millis(
            self.clock.now_ms().saturating_sub(*t),
        ))
    }

    /// Checkpoints in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use cairn_snapshot::ManualClock;

    use super::*;

    fn schedule(
        interval: Option<u64>,
        min_pause: u64,
        timeout: u64,
    ) -> (CheckpointSchedule, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cfg = CheckpointConfig {
            interval: interval.map(Duration::from_millis),
            min_pause: Duration::from_millis(min_pause),
            timeout: Duration::from_millis(timeout),
            ..CheckpointConfig::default()
        };
        (CheckpointSchedule::new(&cfg, clock.clone()), clock)
    }

    #[test]
    fn periodic_checkpoints_are_due_every_interval_from_the_previous_trigger() {
        let (mut s, clock) = schedule(Some(1_000), 0, 60_000);
        assert!(!s.due());
        clock.advance(999);
        assert!(!s.due());
        clock.advance(1);
        assert!(s.due());
        s.triggered(1);
        assert!(!s.due(), "one in flight (max concurrent 1)");
        clock.advance(300);
        s.finished(1, true);
        assert!(!s.due());
        clock.advance(700);
        assert!(
            s.due(),
            "1 s after the previous trigger, not after its completion"
        );
    }

    #[test]
    fn min_pause_counts_from_the_last_completion() {
        let (mut s, clock) = schedule(Some(1_000), 800, 60_000);
        clock.advance(1_000);
        s.triggered(1);
        clock.advance(900);
        s.finished(1, true);
        clock.advance(100);
        assert!(!s.due(), "interval passed, min pause not");
        assert_eq!(s.next_due_ms(), Some(clock.now_ms() + 700));
        clock.advance(700);
        assert!(s.due());
        // A failed checkpoint does not start a pause.
        s.triggered(2);
        clock.advance(1_000);
        s.finished(2, false);
        assert!(s.due());
    }

    #[test]
    fn the_timeout_runs_from_the_trigger_and_covers_barrier_collection() {
        let (mut s, clock) = schedule(Some(1_000), 0, 5_000);
        clock.advance(1_000);
        s.triggered(1);
        clock.advance(4_999);
        assert!(s.expired().is_empty());
        assert_eq!(s.age(1), Some(Duration::from_millis(4_999)));
        clock.advance(1);
        assert_eq!(s.expired(), vec![1]);
        s.finished(1, false);
        assert!(s.expired().is_empty());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn without_an_interval_only_forced_checkpoints_run() {
        let (mut s, clock) = schedule(None, 0, 5_000);
        clock.advance(3_600_000);
        assert!(!s.due());
        assert_eq!(s.next_due_ms(), None);
        s.triggered(7);
        assert_eq!(s.in_flight(), 1);
        s.finished(7, true);
        s.finished(7, true);
        assert_eq!(s.in_flight(), 0);
    }
}
