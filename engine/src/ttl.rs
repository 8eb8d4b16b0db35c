//! State time-to-live (Flink's `StateTtlConfig`): a per-state expiry of values, list elements
//! and map entries, measured in processing time from the slot's injected clock
//! ([`SlotBuilder::clock`](crate::SlotBuilder::clock)).
//!
//! A state registered with a [`StateTtlConfig`] (the typed `Slot::*_state_with_ttl` methods, or
//! [`StateDescriptor::with_ttl`](crate::StateDescriptor::with_ttl) for the raw API) stores a
//! timestamp with every value, list element and map entry, and its reads stop returning what
//! expired. What is expired is removed on read (always), and in the background as configured:
//! from heap snapshots ([`StateTtlConfigBuilder::cleanup_full_snapshot`]), incrementally on
//! access on the heap backend ([`StateTtlConfigBuilder::cleanup_incrementally`]), and by a
//! RocksDB compaction filter ([`StateTtlConfigBuilder::cleanup_in_rocksdb_compaction_filter`]),
//! so expired state stops costing disk and checkpoint upload bytes.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cairn_engine::{CairnConfig, Slot, StateTtlConfig, TtlUpdateType, VoidNamespace};
//! use cairn_timers::ManualClock;
//!
//! let dir = tempfile::tempdir()?;
//! let mut config = CairnConfig::default();
//! config.state.working_dir = dir.path().to_path_buf();
//! let clock = Arc::new(ManualClock::new(1_000));
//! let mut slot = Slot::builder(&config).clock(clock.clone()).open()?;
//! let ttl = StateTtlConfig::builder(Duration::from_secs(60))
//!     .update_type(TtlUpdateType::OnReadAndWrite)
//!     .build()?;
//! let last_seen = slot.value_state_with_ttl::<u64>("sessions", "last-seen", ttl)?;
//! let scope = slot.scope(&"user-1", &VoidNamespace)?;
//! last_seen.update(&mut slot, &scope, &7)?;
//! clock.set(1_000 + 59_999);
//! assert_eq!(last_seen.get(&mut slot, &scope)?, Some(7)); // a read renews it (OnReadAndWrite)
//! clock.set(1_000 + 59_999 + 60_000);
//! assert_eq!(last_seen.get(&mut slot, &scope)?, None); // 60 s without access: expired
//! # Ok(()) }
//! ```
//!
//! ## Stored format
//! Flink's: the timestamp travels inside the stored value bytes, so checkpoints, rescaling and
//! savepoints, which move stored bytes as they are, carry it unchanged.
//! - value, reducing and aggregating state: `[last access, i64 ms big-endian][user bytes]`;
//! - list state: every element is `[ts][element bytes]` (the list encoding
//!   [`list_codec`](crate::backend::list_codec) wraps the stamped elements, so RocksDB's merge
//!   operator still appends without reading);
//! - map state: every entry's value is `[ts][value bytes]` (user keys are not stamped).
//!
//! Raw reads of a TTL state through the slot ([`Slot::get`](crate::Slot::get),
//! [`Slot::list_get`](crate::Slot::list_get), ...) apply the TTL and return user bytes;
//! [`Slot::scan_key_group`](crate::Slot::scan_key_group) and the backends return stored bytes.
//!
//! ## Restoring
//! A state keeps its TTL-ness across checkpoints: the heap snapshot records it per state, and a
//! RocksDB column family of a TTL state carries Cairn's TTL compaction filter, which RocksDB
//! records in the checkpoint's `OPTIONS` file. Registering a restored state with TTL when it was
//! stored without (or the reverse) fails with
//! [`EngineError::StateTtlMismatch`](crate::EngineError::StateTtlMismatch) (Flink: an
//! incompatible serializer): its stored bytes would be read with the wrong layout. The TTL
//! itself, the update type, visibility and cleanups may change between runs; timestamps keep
//! their meaning (the last access), so a longer TTL makes old entries live longer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// When an entry's timestamp is renewed (Flink's `StateTtlConfig.UpdateType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlUpdateType {
    /// On creation and on every write (Flink's default).
    #[default]
    OnCreateAndWrite,
    /// Also on every read that returns it: an entry expires `ttl` after its last access.
    OnReadAndWrite,
}

/// Whether an expired entry that is not yet cleaned up can still be read (Flink's
/// `StateTtlConfig.StateVisibility`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlVisibility {
    /// An expired entry reads as absent (Flink's default).
    #[default]
    NeverReturnExpired,
    /// A read returns an expired entry once, then removes it. What background cleanup removed
    /// first is gone: which reads still see an expired entry depends on cleanup timing.
    ReturnExpiredIfNotCleanedUp,
}

/// Incremental cleanup of the heap backend (Flink's `cleanupIncrementally`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IncrementalCleanup {
    /// Entries of the state checked per step: each access to the state runs one step over the
    /// next entries of a cursor that walks all its key groups round and round, removing expired
    /// values, list elements and map entries. Default 5 (Flink's). More = expired entries leave
    /// memory sooner, each access costs more.
    pub check_entries: u32,
    /// Also run a step for every record the slot processes (every [`crate::Slot::scope`],
    /// [`crate::Slot::scope_raw`], [`crate::Slot::rescope_raw`] and timer fired), even when the
    /// record does not touch this state: the step runs at the slot's next state access.
    /// Default false (Flink's).
    pub run_for_every_record: bool,
}

/// RocksDB compaction-filter cleanup (Flink's `cleanupInRocksdbCompactFilter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CompactionFilterCleanup {
    /// The filter reads the clock again after this many entries (RocksDB compacts on its own
    /// threads; reading the clock per entry costs). Default 1000 (Flink's). Fewer = more
    /// precise expiry during long compactions, more clock reads.
    pub query_time_after_num_entries: u64,
    /// SST files older than this are compacted even when no write leads RocksDB to them
    /// (RocksDB's `periodic_compaction_seconds` of the state's column family), so the filter
    /// also reaches data of a state that stopped changing. Default 30 days (Flink's); zero =
    /// off; otherwise at least one second (whole seconds).
    #[serde(default = "default_periodic_compaction", with = "humantime_serde")]
    pub periodic_compaction: Duration,
}

/// Flink's default periodic compaction time for the compaction filter: 30 days.
pub const DEFAULT_PERIODIC_COMPACTION: Duration = Duration::from_secs(30 * 24 * 3600);

fn default_periodic_compaction() -> Duration {
    DEFAULT_PERIODIC_COMPACTION
}

/// The time-to-live of one state (Flink's `StateTtlConfig`); see the [module doc](self).
/// Built with [`StateTtlConfig::builder`], which validates it.
///
/// Defaults are Flink's (1.10+): update on create and write, never return expired, and both
/// background cleanups on (incremental cleanup of 5 entries per access on the heap backend, the
/// compaction filter on RocksDB); full-snapshot cleanup off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct StateTtlConfig {
    /// How long an entry lives after its last renewal (creation/write, and reads with
    /// [`TtlUpdateType::OnReadAndWrite`]), in processing time. An entry written at `t` is
    /// expired from `t + ttl` on. Whole milliseconds, >= 1 ms.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// When timestamps are renewed.
    pub update_type: TtlUpdateType,
    /// Whether expired entries not yet cleaned up are returned.
    pub visibility: TtlVisibility,
    /// Leave expired entries out of full snapshots (Flink's `cleanupFullSnapshot`). In Cairn
    /// those are the heap backend's snapshots (every heap checkpoint is a full snapshot) and
    /// canonical savepoints of either backend: expired entries are not written, so a restore
    /// does not bring them back, while the running slot keeps them until another cleanup
    /// removes them. A checkpoint records the TTL of such states
    /// ([`StateInfo::full_snapshot_ttl_ms`](cairn_snapshot::metadata::StateInfo::full_snapshot_ttl_ms))
    /// so that a savepoint written from it later knows what expired. RocksDB checkpoints are
    /// incremental (RocksDB's files as they are, Flink's incremental checkpoints alike), so
    /// this does not apply to them: the compaction filter keeps expired data out of their files.
    pub cleanup_full_snapshot: bool,
    /// Heap backend: incremental cleanup on access; `None` = off.
    pub incremental_cleanup: Option<IncrementalCleanup>,
    /// RocksDB backend: drop expired entries in compactions; `None` = off.
    pub compaction_filter_cleanup: Option<CompactionFilterCleanup>,
}

impl StateTtlConfig {
    /// Starts a configuration with Flink's defaults and `ttl`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn_engine::{StateTtlConfig, TtlVisibility};
    /// let ttl = StateTtlConfig::builder(Duration::from_secs(3600))
    ///     .visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp)
    ///     .cleanup_full_snapshot()
    ///     .cleanup_incrementally(10, true)
    ///     .cleanup_in_rocksdb_compaction_filter(500)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(ttl.ttl_ms(), 3_600_000);
    /// // A zero TTL is refused, naming the field.
    /// let e = StateTtlConfig::builder(Duration::ZERO).build().unwrap_err();
    /// assert!(e.to_string().contains("ttl"), "{e}");
    /// ```
    pub fn builder(ttl: Duration) -> StateTtlConfigBuilder {
        StateTtlConfigBuilder {
            config: StateTtlConfig {
                ttl,
                update_type: TtlUpdateType::default(),
                visibility: TtlVisibility::default(),
                cleanup_full_snapshot: false,
                incremental_cleanup: Some(IncrementalCleanup {
                    check_entries: 5,
                    run_for_every_record: false,
                }),
                compaction_filter_cleanup: Some(CompactionFilterCleanup {
                    query_time_after_num_entries: 1000,
                    periodic_compaction: DEFAULT_PERIODIC_COMPACTION,
                }),
            },
        }
    }

    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a timestamp `ts` (ms) is expired at `now_ms` under this TTL.
    pub fn is_expired(&self, ts: i64, now_ms: i64) -> bool {
        expired(ts, self.ttl_ms(), now_ms)
    }

    /// Checks the rules the builder promises (also run on configurations built otherwise, e.g.
    /// deserialized).
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Flink refuses a non-positive TTL; timestamps are whole milliseconds, and the expiry
        // `ts + ttl` must stay an i64.
        if self.ttl < Duration::from_millis(1) || self.ttl.as_millis() > i64::MAX as u128 {
            return Err(ConfigError::out_of_range(
                "ttl",
                format!("{:?}", self.ttl),
                ">= 1ms and <= i64::MAX ms",
            ));
        }
        // A step that checks nothing never cleans up: turn the cleanup off instead.
        if let Some(c) = self.incremental_cleanup
            && c.check_entries == 0
        {
            return Err(ConfigError::out_of_range(
                "ttl.incremental-cleanup.check-entries",
                0,
                ">= 1 (or no incremental cleanup)",
            ));
        }
        // 0 would mean "never read the clock"; 1 reads it for every entry.
        if let Some(c) = self.compaction_filter_cleanup
            && c.query_time_after_num_entries == 0
        {
            return Err(ConfigError::out_of_range(
                "ttl.compaction-filter-cleanup.query-time-after-num-entries",
                0,
                ">= 1",
            ));
        }
        // RocksDB counts whole seconds: a non-zero age under a second would silently be 0 (off).
        if let Some(c) = self.compaction_filter_cleanup
            && !c.periodic_compaction.is_zero()
            && c.periodic_compaction < Duration::from_secs(1)
        {
            return Err(ConfigError::out_of_range(
                "ttl.compaction-filter-cleanup.periodic-compaction",
                format!("{:?}", c.periodic_compaction),
                "0 (off) or >= 1 s",
            ));
        }
        Ok(())
    }
}

/// Builds a validated [`StateTtlConfig`] (errors surface in [`StateTtlConfigBuilder::build`]).
#[must_use]
#[derive(Clone, Debug)]
pub struct StateTtlConfigBuilder {
    config: StateTtlConfig,
}

impl StateTtlConfigBuilder {
    /// When timestamps are renewed (default [`TtlUpdateType::OnCreateAndWrite`]).
    pub fn update_type(mut self, update_type: TtlUpdateType) -> Self {
        self.config.update_type = update_type;
        self
    }

    /// Whether expired entries not yet cleaned up are returned (default
    /// [`TtlVisibility::NeverReturnExpired`]).
    pub fn visibility(mut self, visibility: TtlVisibility) -> Self {
        self.config.visibility = visibility;
        self
    }

    /// Leaves expired entries out of full snapshots (the heap backend's checkpoints); see
    /// [`StateTtlConfig::cleanup_full_snapshot`].
    pub fn cleanup_full_snapshot(mut self) -> Self {
        self.config.cleanup_full_snapshot = true;
        self
    }

    /// Heap backend: checks `check_entries` entries for expiry on every access to the state,
    /// and also for every record processed when `run_for_every_record` (see
    /// [`IncrementalCleanup`]). On by default with 5 entries, not per record (Flink's).
    pub fn cleanup_incrementally(mut self, check_entries: u32, run_for_every_record: bool) -> Self {
        self.config.incremental_cleanup = Some(IncrementalCleanup {
            check_entries,
            run_for_every_record,
        });
        self
    }

    /// RocksDB backend: compactions drop expired values, list elements and map entries,
    /// reading the clock every `query_time_after_num_entries` entries. On by default with 1000
    /// (Flink's).
    pub fn cleanup_in_rocksdb_compaction_filter(
        mut self,
        query_time_after_num_entries: u64,
    ) -> Self {
        self.config.compaction_filter_cleanup = Some(CompactionFilterCleanup {
            query_time_after_num_entries,
            periodic_compaction: self
                .config
                .compaction_filter_cleanup
                .map_or(DEFAULT_PERIODIC_COMPACTION, |c| c.periodic_compaction),
        });
        self
    }

    /// RocksDB backend, with the compaction filter on: compact SST files older than `age`
    /// (default 30 days, Flink's `periodicCompactionTime`; zero = off), so expired data in files
    /// no write-driven compaction reaches is dropped too. No effect with the filter off.
    pub fn periodic_compaction(mut self, age: Duration) -> Self {
        if let Some(c) = self.config.compaction_filter_cleanup.as_mut() {
            c.periodic_compaction = age;
        }
        self
    }

    /// Turns both background cleanups off (incremental and compaction filter): expired entries
    /// are removed only when read (and from full snapshots if configured). Flink's
    /// `disableCleanupInBackground`.
    pub fn disable_cleanup_in_background(mut self) -> Self {
        self.config.incremental_cleanup = None;
        self.config.compaction_filter_cleanup = None;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<StateTtlConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Bytes of the timestamp in front of every stored TTL value, element and map value.
pub const TIMESTAMP_BYTES: usize = 8;

/// Whether a timestamp `ts` is expired at `now` under a TTL of `ttl_ms` (Flink's
/// `TtlUtils.expired`: expired from `ts + ttl` on, saturating).
#[inline]
pub fn expired(ts: i64, ttl_ms: i64, now: i64) -> bool {
    ts.saturating_add(ttl_ms) <= now
}

/// Splits stored TTL bytes into (timestamp, user bytes); `None` when shorter than a timestamp.
#[inline]
pub fn split(stored: &[u8]) -> Option<(i64, &[u8])> {
    let (ts, user) = stored.split_first_chunk::<TIMESTAMP_BYTES>()?;
    Some((i64::from_be_bytes(*ts), user))
}

/// Writes `[ts][user]` into `out` (cleared first).
#[inline]
pub fn stamp_into(out: &mut Vec<u8>, ts: i64, user: &[u8]) {
    out.clear();
    out.reserve(TIMESTAMP_BYTES + user.len());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(user);
}

/// `[ts][user]`.
#[inline]
pub fn stamped(ts: i64, user: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    stamp_into(&mut out, ts, user);
    out
}

/// Whether stored TTL bytes are expired (`false` for bytes too short to carry a timestamp:
/// they are reported as corrupt when read, never dropped by a cleanup).
#[inline]
pub fn stored_expired(stored: &[u8], ttl_ms: i64, now: i64) -> bool {
    split(stored).is_some_and(|(ts, _)| expired(ts, ttl_ms, now))
}

/// What TTL cleanup leaves of a stored list ([`clean_stored_list`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListCleanup {
    /// No element expired (or the bytes are not a list encoding: a read reports them).
    Keep,
    /// Every element expired (this many): remove the list.
    Remove {
        /// Elements expired.
        expired: usize,
    },
    /// Some elements expired (this many): the list without them was written to `out`.
    Changed {
        /// Elements expired.
        expired: usize,
    },
}

/// TTL cleanup of one stored list (a [`list_codec`](crate::backend::list_codec) encoding of
/// stamped elements) at `now`: what to do with it, and on [`ListCleanup::Changed`] the encoding
/// of the live elements in `out` (cleared first). One function for every cleanup of lists that
/// works on stored bytes (RocksDB's compaction filter, canonical savepoints).
pub fn clean_stored_list(encoded: &[u8], ttl_ms: i64, now: i64, out: &mut Vec<u8>) -> ListCleanup {
    use crate::backend::list_codec;
    let (mut total, mut expired) = (0usize, 0usize);
    let complete = list_codec::for_each(encoded, |e| {
        total += 1;
        expired += usize::from(stored_expired(e, ttl_ms, now));
    });
    if !complete || expired == 0 {
        return ListCleanup::Keep;
    }
    if expired == total {
        return ListCleanup::Remove { expired };
    }
    out.clear();
    list_codec::for_each(encoded, |e| {
        if !stored_expired(e, ttl_ms, now) {
            list_codec::push(out, e);
        }
    });
    ListCleanup::Changed { expired }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_inclusive_and_saturates() {
        assert!(!expired(100, 10, 109));
        assert!(expired(100, 10, 110));
        assert!(!expired(i64::MAX - 1, 10, i64::MAX - 1));
        assert!(expired(-20, 10, -10));
    }

    #[test]
    fn list_cleanup_keeps_live_elements_in_order() {
        use crate::backend::list_codec;
        let list = |ts: &[i64]| {
            let stamped: Vec<Vec<u8>> = ts.iter().map(|&t| stamped(t, &t.to_be_bytes())).collect();
            list_codec::encode(stamped.iter().map(Vec::as_slice))
        };
        let mut out = Vec::new();
        assert_eq!(
            clean_stored_list(&list(&[5, 6]), 10, 14, &mut out),
            ListCleanup::Keep
        );
        assert_eq!(
            clean_stored_list(&list(&[1, 2]), 10, 14, &mut out),
            ListCleanup::Remove { expired: 2 }
        );
        assert_eq!(
            clean_stored_list(&list(&[1, 6, 2, 7]), 10, 14, &mut out),
            ListCleanup::Changed { expired: 2 }
        );
        assert_eq!(out, list(&[6, 7]));
        // Damaged bytes are kept for a read to report.
        assert_eq!(
            clean_stored_list(&[0x05, 1], 10, 14, &mut out),
            ListCleanup::Keep
        );
    }

    #[test]
    fn stamp_and_split_round_trip() {
        let s = stamped(-5, b"abc");
        assert_eq!(s.len(), TIMESTAMP_BYTES + 3);
        assert_eq!(split(&s), Some((-5, &b"abc"[..])));
        assert_eq!(split(&s[..7]), None);
        assert_eq!(split(&stamped(7, b"")), Some((7, &b""[..])));
        // Pinned: big-endian i64 first (a golden value of the stored format).
        assert_eq!(stamped(0x0102, b"x"), [0, 0, 0, 0, 0, 0, 1, 2, b'x']);
    }

    #[test]
    fn builder_validates_and_names_fields() {
        let ok = StateTtlConfig::builder(Duration::from_millis(1))
            .build()
            .unwrap();
        assert_eq!(ok.update_type, TtlUpdateType::OnCreateAndWrite);
        assert_eq!(ok.visibility, TtlVisibility::NeverReturnExpired);
        assert_eq!(ok.incremental_cleanup.unwrap().check_entries, 5);
        let filter = ok.compaction_filter_cleanup.unwrap();
        assert_eq!(filter.query_time_after_num_entries, 1000);
        assert_eq!(
            filter.periodic_compaction,
            Duration::from_secs(30 * 24 * 3600)
        );
        let e = StateTtlConfig::builder(Duration::from_secs(1))
            .periodic_compaction(Duration::from_millis(500))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("periodic-compaction"), "{e}");
        let e = StateTtlConfig::builder(Duration::from_micros(999))
            .build()
            .unwrap_err();
        assert!(e.to_string().starts_with("ttl = "), "{e}");
        let e = StateTtlConfig::builder(Duration::from_secs(1))
            .cleanup_incrementally(0, false)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("check-entries"), "{e}");
        let e = StateTtlConfig::builder(Duration::from_secs(1))
            .cleanup_in_rocksdb_compaction_filter(0)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("query-time"), "{e}");
        let off = StateTtlConfig::builder(Duration::from_secs(1))
            .disable_cleanup_in_background()
            .build()
            .unwrap();
        assert!(off.incremental_cleanup.is_none() && off.compaction_filter_cleanup.is_none());
    }
}
