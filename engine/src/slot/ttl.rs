//! The slot's side of state TTL ([`crate::ttl`]): which registered states have TTL, the clock,
//! and the TTL variants of the raw state operations, which stamp what they write and check what
//! they read (Flink's `TtlValueState`, `TtlListState`, `TtlMapState`, `TtlReduceFunction`,
//! `TtlAggregateFunction`, with the same semantics). Backends store the stamped bytes as they
//! are; only their cleanups (heap incremental cleanup and snapshots, the RocksDB compaction
//! filter) look inside.

use std::cell::Cell;
use std::sync::Arc;

use cairn_timers::{Clock, SystemClock};

use super::Slot;
use crate::backend::{ScopeKey, StateId, Update};
use crate::error::{EngineError, Result};
use crate::ttl::{self, StateTtlConfig, TtlUpdateType, TtlVisibility};

/// Records past which per-record cleanups owed are not run all at once (a host that builds many
/// scopes before its next state access gets a bounded step).
const MAX_OWED_RECORDS: u32 = 64;

/// TTL bookkeeping of a slot.
pub(crate) struct SlotTtl {
    /// Processing time for timestamps and expiry ([`crate::SlotBuilder::clock`]).
    clock: Arc<dyn Clock>,
    /// Whether each state (by id) was registered in this run, so its TTL is known: a restored
    /// state's descriptor says nothing about TTL until then.
    confirmed: Vec<bool>,
    /// States whose incremental cleanup also runs for every record.
    per_record: Vec<StateId>,
    /// Records seen (scopes built) since the last state access: per-record cleanup steps owed.
    owed_records: Cell<u32>,
    /// Stamped bytes being written (the slot's value buffer may be in use by the caller:
    /// `put_encoded` encodes into it).
    scratch: Vec<u8>,
}

impl SlotTtl {
    /// TTL bookkeeping reading `clock` (the system clock when `None`).
    pub(crate) fn new(clock: Option<Arc<dyn Clock>>) -> Self {
        Self {
            clock: clock.unwrap_or_else(|| Arc::new(SystemClock)),
            confirmed: Vec::new(),
            per_record: Vec::new(),
            owed_records: Cell::new(0),
            scratch: Vec::new(),
        }
    }

    /// Counts one record for the per-record cleanups (nothing when no state asks for them).
    #[inline]
    pub(super) fn record(&self) {
        if !self.per_record.is_empty() {
            self.owed_records
                .set(self.owed_records.get().saturating_add(1));
        }
    }

    #[inline]
    pub(super) fn owes_cleanup(&self) -> bool {
        self.owed_records.get() != 0
    }

    fn confirmed(&self, id: StateId) -> bool {
        self.confirmed.get(id as usize).copied().unwrap_or(false)
    }

    fn confirm(&mut self, id: StateId) {
        let i = id as usize;
        if self.confirmed.len() <= i {
            self.confirmed.resize(i + 1, false);
        }
        self.confirmed[i] = true;
    }
}

/// What a read of one stored TTL value decided.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Leave it.
    Keep,
    /// It expired: remove it.
    Remove,
    /// It was read unexpired under `OnReadAndWrite`: store it again with the new timestamp.
    Renew,
}

/// The parts of a config the read and write paths use.
#[derive(Clone, Copy)]
struct Ttl {
    ttl_ms: i64,
    renew_on_read: bool,
    return_expired: bool,
    now: i64,
}

impl Ttl {
    /// Decides about stored bytes: what to do with them and what the reader sees (`None`:
    /// absent). `Err(())` when the bytes are too short for a timestamp.
    #[inline]
    fn read<'a>(&self, stored: &'a [u8]) -> std::result::Result<(After, Option<&'a [u8]>), ()> {
        let (ts, user) = ttl::split(stored).ok_or(())?;
        Ok(if ttl::expired(ts, self.ttl_ms, self.now) {
            (After::Remove, self.return_expired.then_some(user))
        } else if self.renew_on_read {
            (After::Renew, Some(user))
        } else {
            (After::Keep, Some(user))
        })
    }
}

impl Slot {
    /// The clock TTL timestamps and expiry read.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.ttl.clock
    }

    /// Reconciles a registration's TTL with the state's: a state registered in this run keeps
    /// whether it has TTL (a changed TTL config is applied); a restored state's first
    /// registration is checked against its stored files by the backend.
    pub(super) fn reconcile_ttl(
        &mut self,
        id: StateId,
        requested: Option<StateTtlConfig>,
    ) -> Result<()> {
        if let Some(t) = &requested {
            t.validate()?;
        }
        let current = self.states[id as usize].ttl;
        if self.ttl.confirmed(id) {
            if current.is_some() != requested.is_some() {
                return Err(EngineError::StateTtlMismatch {
                    state: self.state_name(id),
                    stored_with_ttl: current.is_some(),
                    requested_ttl: requested.is_some(),
                });
            }
            if current == requested {
                return Ok(());
            }
        }
        self.backend
            .configure_ttl(id, requested.as_ref(), &self.ttl.clock)?;
        self.states[id as usize].ttl = requested;
        self.ttl.confirm(id);
        self.refresh_per_record();
        Ok(())
    }

    /// After a new state was created in the backend: its TTL (if any) goes to the backend.
    pub(super) fn created_with_ttl(&mut self, id: StateId) -> Result<()> {
        self.ttl.confirm(id);
        let Some(t) = self.states[id as usize].ttl else {
            return Ok(());
        };
        self.backend.configure_ttl(id, Some(&t), &self.ttl.clock)?;
        self.refresh_per_record();
        Ok(())
    }

    fn refresh_per_record(&mut self) {
        self.ttl.per_record = self
            .states
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.ttl
                    .and_then(|t| t.incremental_cleanup)
                    .is_some_and(|c| c.run_for_every_record)
            })
            .map(|(i, _)| i as StateId)
            .collect();
    }

    /// Runs the per-record incremental cleanup steps owed since the last state access.
    #[cold]
    #[inline(never)]
    pub(super) fn run_owed_cleanups(&mut self) -> Result<()> {
        let owed = self.ttl.owed_records.replace(0).min(MAX_OWED_RECORDS) as usize;
        let now = self.ttl.clock.now_ms();
        for i in 0..self.ttl.per_record.len() {
            let id = self.ttl.per_record[i];
            if let Some(c) = self.states[id as usize]
                .ttl
                .and_then(|t| t.incremental_cleanup)
            {
                self.backend
                    .ttl_cleanup_step(id, now, c.check_entries as usize * owed)?;
            }
        }
        Ok(())
    }

    fn ttl_parts(&self, config: &StateTtlConfig) -> Ttl {
        Ttl {
            ttl_ms: config.ttl_ms(),
            renew_on_read: config.update_type == TtlUpdateType::OnReadAndWrite,
            return_expired: config.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp,
            now: self.ttl.clock.now_ms(),
        }
    }

    /// An access to a TTL state happened: one incremental cleanup step, when configured.
    fn ttl_accessed(&mut self, state: StateId, config: &StateTtlConfig, now: i64) -> Result<()> {
        match config.incremental_cleanup {
            Some(c) => self
                .backend
                .ttl_cleanup_step(state, now, c.check_entries as usize),
            None => Ok(()),
        }
    }

    fn short_ttl_value(&self, state: StateId) -> EngineError {
        EngineError::Corrupt {
            state: self.state_name(state),
            reason: format!(
                "a stored value of a TTL state is shorter than its {}-byte timestamp",
                ttl::TIMESTAMP_BYTES
            ),
        }
    }

    /// [`Slot::get_with`] of a TTL state (Flink's `TtlValueState.value`): an expired value is
    /// removed (and shown only under `ReturnExpiredIfNotCleanedUp`); an unexpired one is renewed
    /// under `OnReadAndWrite`.
    #[inline(never)]
    pub(super) fn ttl_get_with<T>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T> {
        let t = self.ttl_parts(&config);
        let mut f = Some(f);
        let mut out = None;
        let mut after = After::Keep;
        let mut corrupt = false;
        let mut renewed = std::mem::take(&mut self.ttl.scratch);
        self.backend.get_with(state, scope, &mut |v| {
            let Some(f) = f.take() else { return };
            let Some(stored) = v else {
                out = Some(f(None));
                return;
            };
            match t.read(stored) {
                Ok((a, shown)) => {
                    if a == After::Renew
                        && let Some(user) = shown
                    {
                        ttl::stamp_into(&mut renewed, t.now, user);
                    }
                    after = a;
                    out = Some(f(shown));
                }
                Err(()) => corrupt = true,
            }
        })?;
        let r = match after {
            After::Keep => Ok(()),
            After::Remove => self.backend.clear(state, scope),
            After::Renew => self.backend.put(state, scope, &renewed),
        };
        self.ttl.scratch = renewed;
        r?;
        if corrupt {
            return Err(self.short_ttl_value(state));
        }
        self.ttl_accessed(state, &config, t.now)?;
        out.ok_or_else(|| EngineError::InvalidArgument("backend did not answer a get".into()))
    }

    /// [`Slot::put`] of a TTL state: stores `[now][value]`.
    #[inline(never)]
    pub(super) fn ttl_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        value: &[u8],
    ) -> Result<()> {
        let now = self.ttl.clock.now_ms();
        let mut buf = std::mem::take(&mut self.ttl.scratch);
        ttl::stamp_into(&mut buf, now, value);
        let r = self.backend.put(state, scope, &buf);
        self.ttl.scratch = buf;
        r?;
        self.ttl_accessed(state, &config, now)
    }

    /// [`Slot::update_with`] of a TTL state (Flink's `TtlReduceFunction` /
    /// `TtlAggregateFunction`): `f` sees the current user bytes (`None` when absent, or expired
    /// under `NeverReturnExpired`); what it puts is stamped with the current time. Keeping an
    /// expired value removes it (it was read expired), and keeping an unexpired one renews it
    /// under `OnReadAndWrite` (it was read).
    #[inline(never)]
    pub(super) fn ttl_update_with<T>(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        f: impl FnOnce(Option<&[u8]>, &mut Vec<u8>) -> (Update, T),
    ) -> Result<T> {
        let t = self.ttl_parts(&config);
        let max = self.max_value_size;
        let mut f = Some(f);
        let (mut out, mut too_large, mut corrupt) = (None, None, false);
        let mut buf = std::mem::take(&mut self.value_buf);
        let r = self
            .backend
            .update_with(state, scope, &mut buf, &mut |v, buf| {
                let Some(f) = f.take() else {
                    return Update::Keep;
                };
                let (after, shown) = match v.map(|stored| t.read(stored)) {
                    None => (After::Keep, None),
                    Some(Ok(read)) => read,
                    Some(Err(())) => {
                        corrupt = true;
                        return Update::Keep;
                    }
                };
                let (op, res) = f(shown, buf);
                out = Some(res);
                match op {
                    Update::Put if buf.len() > max => {
                        too_large = Some(buf.len());
                        Update::Keep
                    }
                    Update::Put => {
                        buf.splice(0..0, t.now.to_be_bytes());
                        Update::Put
                    }
                    Update::Delete => Update::Delete,
                    Update::Keep => match (after, shown) {
                        (After::Remove, _) => Update::Delete,
                        (After::Renew, Some(user)) => {
                            ttl::stamp_into(buf, t.now, user);
                            Update::Put
                        }
                        _ => Update::Keep,
                    },
                }
            });
        self.value_buf = buf;
        r?;
        if corrupt {
            return Err(self.short_ttl_value(state));
        }
        if let Some(size) = too_large {
            return Err(EngineError::ValueTooLarge {
                state: self.state_name(state),
                size,
                max,
            });
        }
        self.ttl_accessed(state, &config, t.now)?;
        out.ok_or_else(|| EngineError::InvalidArgument("backend did not answer an update".into()))
    }

    /// [`Slot::list_get`] of a TTL state (Flink's `TtlListState.get`): the unexpired elements
    /// (and the expired ones under `ReturnExpiredIfNotCleanedUp`); a list with nothing unexpired
    /// is removed; under `OnReadAndWrite` the stored list becomes its unexpired elements renewed.
    #[inline(never)]
    pub(super) fn ttl_list_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
    ) -> Result<Vec<Vec<u8>>> {
        let t = self.ttl_parts(&config);
        let stored = self.backend.list_get(state, scope)?;
        if stored.is_empty() {
            self.ttl_accessed(state, &config, t.now)?;
            return Ok(stored);
        }
        let mut shown = Vec::with_capacity(stored.len());
        let mut renewed: Vec<Vec<u8>> = Vec::new();
        let mut any_unexpired = false;
        for mut e in stored {
            let (after, visible) = match t.read(&e) {
                Ok((a, v)) => (a, v.is_some()),
                Err(()) => return Err(self.short_ttl_value(state)),
            };
            if after != After::Remove {
                any_unexpired = true;
                if t.renew_on_read {
                    e[..ttl::TIMESTAMP_BYTES].copy_from_slice(&t.now.to_be_bytes());
                    renewed.push(e.clone());
                }
            }
            if visible {
                e.drain(..ttl::TIMESTAMP_BYTES);
                shown.push(e);
            }
        }
        if !any_unexpired {
            self.backend.clear(state, scope)?;
        } else if t.renew_on_read {
            let refs: Vec<&[u8]> = renewed.iter().map(Vec::as_slice).collect();
            self.backend.list_update(state, scope, &refs)?;
        }
        self.ttl_accessed(state, &config, t.now)?;
        Ok(shown)
    }

    /// [`Slot::list_append`] / [`Slot::list_update`] of a TTL state: every element stamped.
    #[inline(never)]
    pub(super) fn ttl_list_write(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        elements: &[&[u8]],
        replace: bool,
    ) -> Result<()> {
        let now = self.ttl.clock.now_ms();
        let stamped: Vec<Vec<u8>> = elements.iter().map(|e| ttl::stamped(now, e)).collect();
        let refs: Vec<&[u8]> = stamped.iter().map(Vec::as_slice).collect();
        if replace {
            self.backend.list_update(state, scope, &refs)?;
        } else {
            self.backend.list_append(state, scope, &refs)?;
        }
        self.ttl_accessed(state, &config, now)
    }

    /// [`Slot::map_get`] of a TTL state: the value read like a value state's (Flink's
    /// `TtlMapState.get`).
    #[inline(never)]
    pub(super) fn ttl_map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let t = self.ttl_parts(&config);
        let shown = match self.backend.map_get(state, scope, user_key)? {
            None => None,
            Some(mut stored) => {
                let after = match t.read(&stored) {
                    Ok((a, v)) => (a, v.is_some()),
                    Err(()) => return Err(self.short_ttl_value(state)),
                };
                match after {
                    (After::Remove, _) => self.backend.map_remove(state, scope, user_key)?,
                    (After::Renew, _) => {
                        let mut renewed = stored.clone();
                        renewed[..ttl::TIMESTAMP_BYTES].copy_from_slice(&t.now.to_be_bytes());
                        self.backend.map_put(state, scope, user_key, &renewed)?;
                    }
                    (After::Keep, _) => {}
                }
                after.1.then(|| {
                    stored.drain(..ttl::TIMESTAMP_BYTES);
                    stored
                })
            }
        };
        self.ttl_accessed(state, &config, t.now)?;
        Ok(shown)
    }

    /// [`Slot::map_put`] of a TTL state: the value stamped.
    #[inline(never)]
    pub(super) fn ttl_map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let now = self.ttl.clock.now_ms();
        self.backend
            .map_put(state, scope, user_key, &ttl::stamped(now, value))?;
        self.ttl_accessed(state, &config, now)
    }

    /// [`Slot::map_entries`] of a TTL state: every entry read like [`Slot::map_get`] reads one
    /// (Flink's `TtlMapState.entries`).
    #[inline(never)]
    pub(super) fn ttl_map_entries(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        config: StateTtlConfig,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let t = self.ttl_parts(&config);
        let stored = self.backend.map_entries(state, scope)?;
        let mut shown = Vec::with_capacity(stored.len());
        for (k, mut v) in stored {
            let (after, visible) = match t.read(&v) {
                Ok((a, v)) => (a, v.is_some()),
                Err(()) => return Err(self.short_ttl_value(state)),
            };
            match after {
                After::Remove => self.backend.map_remove(state, scope, &k)?,
                After::Renew => {
                    v[..ttl::TIMESTAMP_BYTES].copy_from_slice(&t.now.to_be_bytes());
                    self.backend.map_put(state, scope, &k, &v)?;
                }
                After::Keep => {}
            }
            if visible {
                v.drain(..ttl::TIMESTAMP_BYTES);
                shown.push((k, v));
            }
        }
        self.ttl_accessed(state, &config, t.now)?;
        Ok(shown)
    }

    /// [`Slot::clear`] / [`Slot::map_remove`] of a TTL state: nothing to stamp, but an access.
    #[inline(never)]
    pub(super) fn ttl_removed(&mut self, state: StateId, config: StateTtlConfig) -> Result<()> {
        let now = self.ttl.clock.now_ms();
        self.ttl_accessed(state, &config, now)
    }
}
