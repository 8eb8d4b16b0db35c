//! A slot's timers: heap or stored in the backend (`state.timer-service`), opened on first use,
//! fired with the slot's state in reach, checkpointed and restored with the slot.

use super::{EVENT_TIMERS, PROCESSING_TIMERS, Slot, TIMER_OPERATOR, Timers};
use crate::backend::{ScopeKey, StateDescriptor, StateKind, StoredTimers};
use crate::config::TimerServiceKind;
use crate::error::{EngineError, Result};
use crate::keygroup::KeyGroup;
use cairn_timers::{
    HeapTimers, HeapTimersSnapshot, TimeDomain, Timer, TimerService, TimerServiceExt,
};

impl Slot {
    /// Where this slot keeps timers (`state.timer-service`; always heap on the heap backend).
    pub fn timer_service_kind(&self) -> TimerServiceKind {
        self.timer_kind
    }

    /// The slot's timer service for its key groups, opened on first use (RocksDB timers create
    /// their column families `_timers/event-time` and `_timers/processing-time` then). Timers
    /// are part of every checkpoint of the slot and are restored with it.
    #[inline]
    pub fn timers(&mut self) -> Result<&mut dyn TimerService> {
        if self.timers.is_none() {
            self.open_timer_service()?;
        }
        match &mut self.timers {
            Some(t) => Ok(t.svc()),
            None => Err(EngineError::InvalidArgument(
                "timer service not open".into(),
            )),
        }
    }

    /// The first use of [`Slot::timers`] (kept out of the per-record path).
    #[cold]
    fn open_timer_service(&mut self) -> Result<()> {
        let t = self.open_timers(self.timer_kind, true)?;
        self.timers = Some(t);
        Ok(())
    }

    /// Opens a timer service of `kind`; `serving`: it becomes the slot's (RocksDB timers then
    /// take their write-back buffer's share of the budget), else it is only drained at restore
    /// and RocksDB keeps that share.
    fn open_timers(&mut self, kind: TimerServiceKind, serving: bool) -> Result<Timers> {
        let range = self.range.start as KeyGroup..=self.range.end as KeyGroup;
        Ok(match kind {
            TimerServiceKind::Heap => Timers::Heap(HeapTimers::new(range)),
            TimerServiceKind::RocksDb => {
                let mut names = Vec::new();
                for name in [EVENT_TIMERS, PROCESSING_TIMERS] {
                    let d = StateDescriptor::new(TIMER_OPERATOR, name, StateKind::Value);
                    self.register_internal(&d)?;
                    names.push(d.full_name());
                }
                Timers::RocksDb(Box::new(self.backend.open_stored_timers(StoredTimers {
                    event_time_state: &names[0],
                    processing_time_state: &names[1],
                    key_groups: range,
                    prefix_bytes: self.prefix_bytes,
                    cache_size: self.timer_cache_size,
                    reserve_buffer: serving,
                })?))
            }
        })
    }

    /// Installs restored timers: heap timers read from the checkpoint, RocksDB timers found in
    /// restored column families; timers of the other kind are moved into this slot's kind.
    pub(super) fn restore_timers(&mut self, heap: Option<HeapTimers>) -> Result<()> {
        let has_cfs = self
            .by_name
            .contains_key(&format!("{TIMER_OPERATOR}/{EVENT_TIMERS}"));
        match self.timer_kind {
            TimerServiceKind::Heap => {
                if heap.is_none() && !has_cfs {
                    return Ok(());
                }
                let mut to = match heap {
                    Some(h) => Timers::Heap(h),
                    None => self.open_timers(TimerServiceKind::Heap, true)?,
                };
                // RocksDB timers of the checkpoint (next to their buffer's snapshot, if any).
                if has_cfs {
                    let mut from = self.open_timers(TimerServiceKind::RocksDb, false)?;
                    let n = from.svc().drain_into(to.svc())?;
                    tracing::info!(timers = n, "moved restored RocksDB timers onto the heap");
                }
                self.timers = Some(to);
            }
            TimerServiceKind::RocksDb => {
                // Heap timers of the checkpoint, or the snapshot of a RocksDB timer buffer.
                if let Some(mut h) = heap {
                    let n = h.drain_into(self.timers()?)?;
                    tracing::info!(timers = n, "registered restored heap timers");
                }
            }
        }
        Ok(())
    }

    /// Registers a timer for the key and namespace of `scope` (no-op when it exists).
    pub fn register_timer(
        &mut self,
        domain: TimeDomain,
        scope: &ScopeKey,
        timestamp: i64,
    ) -> Result<()> {
        self.timer_op(scope, |svc, kg, key, ns| {
            svc.register(domain, kg, timestamp, key, ns)
        })
    }

    /// Deletes the timer of `scope`'s key and namespace (no-op when absent).
    pub fn delete_timer(
        &mut self,
        domain: TimeDomain,
        scope: &ScopeKey,
        timestamp: i64,
    ) -> Result<()> {
        self.timer_op(scope, |svc, kg, key, ns| {
            svc.delete(domain, kg, timestamp, key, ns)
        })
    }

    #[inline]
    fn timer_op(
        &mut self,
        scope: &ScopeKey,
        op: impl FnOnce(&mut dyn TimerService, KeyGroup, &[u8], &[u8]) -> cairn_timers::Result<()>,
    ) -> Result<()> {
        let svc = self.timers()?;
        Ok(op(svc, scope.key_group, scope.key(), scope.namespace())?)
    }

    /// Fires every timer of `domain` due at `up_to` (a watermark, or the processing time), in
    /// order, calling `on_timer(slot, scope, timer)` for each with `scope` set to the timer's
    /// key and namespace, so the callback reads and writes that key's state (and may register
    /// timers, which fire in this call when due). Returns how many fired; stops at the first
    /// error of the callback or the timer service.
    ///
    /// ```no_run
    /// # use cairn_engine::{Slot, TimeDomain, ValueState, VoidNamespace};
    /// # fn f(slot: &mut Slot, count: &ValueState<u64>, watermark: i64) -> cairn_engine::Result<()> {
    /// slot.fire_timers(TimeDomain::EventTime, watermark, |slot, scope, timer| {
    ///     let n = count.get(slot, scope)?.unwrap_or(0);
    ///     println!("window ending {} of key {:?}: {n}", timer.timestamp, timer.key);
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn fire_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        mut on_timer: impl FnMut(&mut Slot, &ScopeKey, &Timer) -> Result<()>,
    ) -> Result<u64> {
        let mut timer = Timer::default();
        let mut scope = ScopeKey::new(0, self.prefix_bytes, &[], &[]);
        let mut fired = 0;
        while self.poll_timer(domain, up_to, &mut timer)? {
            self.rescope_timer(&mut scope, &timer)?;
            on_timer(self, &scope, &timer)?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Removes the next timer of `domain` due at `up_to` into `out` (see
    /// [`TimerService::poll`]); `false` when none is due.
    pub fn poll_timer(&mut self, domain: TimeDomain, up_to: i64, out: &mut Timer) -> Result<bool> {
        Ok(self.timers()?.poll(domain, up_to, out)?)
    }

    /// The synchronous part of a checkpoint for timers: RocksDB timers write their batch (so
    /// the native checkpoint has them) and hand out a copy-on-write view of their write-back
    /// buffer (timers not in RocksDB); heap timers hand out a copy-on-write view.
    pub(crate) fn snapshot_timers(&mut self) -> Result<Option<HeapTimersSnapshot>> {
        match &mut self.timers {
            None => Ok(None),
            Some(Timers::RocksDb(r)) => {
                r.flush()?;
                Ok(r.buffer_snapshot())
            }
            Some(Timers::Heap(h)) => Ok(Some(h.snapshot())),
        }
    }
}
