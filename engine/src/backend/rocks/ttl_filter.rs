//! The compaction filter of TTL states (Flink's `FlinkCompactionFilter`): RocksDB's compactions
//! drop expired values and map entries, and rewrite list values without their expired
//! elements (dropping a list left empty), so expired state stops costing disk and checkpoint
//! bytes without being read. Time comes from the slot's clock, read again every
//! `query_time_after_num_entries` entries (see [`crate::ttl::CompactionFilterCleanup`]).
//!
//! Every column family of a TTL state carries the filter's factory from its creation, even
//! before the state is registered in this run (a restored one) and with the cleanup off: RocksDB
//! records the factory's name in the database's `OPTIONS` file, which a checkpoint carries, and
//! [`ttl_column_families`] reads it back on restore. That is how a restore knows which states
//! hold TTL timestamps (a registration that disagrees fails with
//! [`EngineError::StateTtlMismatch`](crate::EngineError::StateTtlMismatch)). Until the state is
//! configured the filter keeps everything.
//!
//! What the filter sees: RocksDB passes it values, not merge operands. A list appended to with
//! merges is filtered once a compaction has merged it into one value (the next compaction that
//! includes it after that); a list written whole ([`crate::Slot::list_update`], or a read that
//! renewed it) is filtered at once.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_timers::Clock;
use rocksdb::CompactionDecision as Decision;
use rocksdb::compaction_filter::CompactionFilter;
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

use crate::backend::StateKind;
use crate::error::{EngineError, Result};
use crate::ttl::{self, ListCleanup, StateTtlConfig};

/// Name of the filter factory, as RocksDB records it in `OPTIONS` (`compaction_filter_factory=`).
pub(crate) const TTL_FILTER_FACTORY: &CStr = c"cairn.ttl-filter";

/// What the factory of one column family and its filters share: the state's TTL, set (and
/// changed) when the slot configures the state.
pub(crate) struct TtlFilterShared {
    list: bool,
    /// The TTL in ms; 0 while not configured or with the compaction-filter cleanup off (the
    /// filter keeps everything).
    ttl_ms: AtomicI64,
    query_every: AtomicU64,
    clock: Mutex<Option<Arc<dyn Clock>>>,
}

impl TtlFilterShared {
    /// The shared part of a column family of a state of `kind`, keeping everything until
    /// configured.
    pub(crate) fn new(kind: StateKind) -> Arc<Self> {
        Arc::new(Self {
            list: kind == StateKind::List,
            ttl_ms: AtomicI64::new(0),
            query_every: AtomicU64::new(1000),
            clock: Mutex::new(None),
        })
    }

    /// Applies a state's TTL (compactions starting from now on use it).
    pub(crate) fn configure(&self, config: &StateTtlConfig, clock: &Arc<dyn Clock>) {
        if let Ok(mut c) = self.clock.lock() {
            *c = Some(Arc::clone(clock));
        }
        match config.compaction_filter_cleanup {
            Some(c) => {
                self.query_every
                    .store(c.query_time_after_num_entries.max(1), Ordering::Relaxed);
                self.ttl_ms.store(config.ttl_ms(), Ordering::Release);
            }
            None => self.ttl_ms.store(0, Ordering::Release),
        }
    }

    /// Installs the filter factory on a column family's options.
    pub(crate) fn install(self: &Arc<Self>, opts: &mut rocksdb::Options) {
        opts.set_compaction_filter_factory(TtlFilterFactory {
            shared: Arc::clone(self),
        });
    }
}

struct TtlFilterFactory {
    shared: Arc<TtlFilterShared>,
}

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        let s = &self.shared;
        let ttl_ms = s.ttl_ms.load(Ordering::Acquire);
        let clock = s.clock.lock().ok().and_then(|c| c.clone());
        TtlFilter {
            ttl_ms: if clock.is_some() { ttl_ms } else { 0 },
            clock,
            list: s.list,
            query_every: s.query_every.load(Ordering::Relaxed).max(1),
            until_query: 0,
            now: i64::MIN,
            changed: Vec::new(),
        }
    }

    fn name(&self) -> &CStr {
        TTL_FILTER_FACTORY
    }
}

/// The filter of one compaction (RocksDB runs each on one thread).
struct TtlFilter {
    /// 0: keep everything.
    ttl_ms: i64,
    clock: Option<Arc<dyn Clock>>,
    list: bool,
    query_every: u64,
    until_query: u64,
    now: i64,
    /// The rewritten list value handed to RocksDB (see `filter_list`).
    changed: Vec<u8>,
}

impl TtlFilter {
    /// The current time, read from the clock every `query_every` entries.
    fn now(&mut self) -> i64 {
        if self.until_query == 0 {
            if let Some(c) = &self.clock {
                self.now = c.now_ms();
            }
            self.until_query = self.query_every;
        }
        self.until_query -= 1;
        self.now
    }

    fn filter_list(&mut self, value: &[u8], now: i64) -> Decision {
        match ttl::clean_stored_list(value, self.ttl_ms, now, &mut self.changed) {
            ListCleanup::Keep => return Decision::Keep,
            ListCleanup::Remove { .. } => return Decision::Remove,
            ListCleanup::Changed { .. } => {}
        }
        // SAFETY: `Decision::Change` takes a `&'static [u8]` (rust-rocksdb 0.54), but RocksDB
        // only copies the bytes before the filter callback returns: its C API's
        // `rocksdb_compactionfilter_t::Filter` (db/c.cc) does `new_value->assign(c_new_value,
        // new_value_length)` right after calling us and never keeps the pointer. The bytes live
        // in `self.changed`, which this filter (used by one compaction thread, one call at a
        // time) does not touch again before its next `filter` call. So the slice is valid for
        // every read RocksDB makes of it. (rust-rocksdb PR #1042 describes the same.)
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(self.changed.as_ptr(), self.changed.len()) };
        Decision::Change(bytes)
    }
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
        if self.ttl_ms <= 0 {
            return Decision::Keep;
        }
        let now = self.now();
        if self.list {
            self.filter_list(value, now)
        } else if ttl::stored_expired(value, self.ttl_ms, now) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }

    fn name(&self) -> &CStr {
        TTL_FILTER_FACTORY
    }
}

/// Names of the column families that carry the TTL filter in the newest `OPTIONS-<n>` file of
/// a RocksDB directory (empty when there is none). See the module doc.
pub(crate) fn ttl_column_families(dir: &Path) -> Result<HashSet<String>> {
    let io = |e| EngineError::Io {
        op: format!("read the RocksDB OPTIONS of {}", dir.display()),
        source: e,
    };
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("OPTIONS-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(m, _)| n > *m) {
            newest = Some((n, e.path()));
        }
    }
    let Some((_, path)) = newest else {
        return Ok(HashSet::new());
    };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    Ok(parse_ttl_column_families(&text))
}

/// The column families whose `[CFOptions "<name>"]` section has Cairn's TTL filter factory.
fn parse_ttl_column_families(options: &str) -> HashSet<String> {
    let factory = TTL_FILTER_FACTORY.to_str().unwrap_or_default();
    let mut out = HashSet::new();
    let mut section: Option<String> = None;
    for line in options.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line
                .strip_prefix("[CFOptions \"")
                .and_then(|l| l.strip_suffix("\"]"))
                .map(unescape);
        } else if let (Some(cf), Some(v)) =
            (&section, line.strip_prefix("compaction_filter_factory="))
            && v.contains(factory)
        {
            out.insert(cf.clone());
        }
    }
    out
}

/// RocksDB's `UnescapeOptionString`: `\n`, `\r`, and `\c` for any other `c`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::list_codec;
    use cairn_timers::ManualClock;

    fn filter(kind: StateKind, ttl_ms: u64, clock: &Arc<ManualClock>) -> TtlFilter {
        let shared = TtlFilterShared::new(kind);
        let config = StateTtlConfig::builder(std::time::Duration::from_millis(ttl_ms))
            .cleanup_in_rocksdb_compaction_filter(2)
            .build()
            .unwrap();
        let clock: Arc<dyn Clock> = clock.clone();
        shared.configure(&config, &clock);
        TtlFilterFactory { shared }.create(CompactionFilterContext {
            is_full_compaction: true,
            is_manual_compaction: true,
        })
    }

    fn decision(d: Decision) -> Option<Option<Vec<u8>>> {
        match d {
            Decision::Keep => None,
            Decision::Remove => Some(None),
            Decision::Change(b) => Some(Some(b.to_vec())),
        }
    }

    #[test]
    fn values_expire_at_ts_plus_ttl() {
        let clock = Arc::new(ManualClock::new(109));
        let mut f = filter(StateKind::Value, 10, &clock);
        assert!(decision(f.filter(0, b"k", &ttl::stamped(100, b"v"))).is_none());
        clock.set(110);
        // Read again after 2 entries (query_time_after_num_entries = 2).
        assert!(decision(f.filter(0, b"k", &ttl::stamped(100, b"v"))).is_none());
        assert_eq!(
            decision(f.filter(0, b"k", &ttl::stamped(100, b"v"))),
            Some(None)
        );
        // Too short to carry a timestamp: kept for a read to report.
        assert!(decision(f.filter(0, b"k", b"short")).is_none());
    }

    #[test]
    fn lists_lose_expired_elements_and_empty_lists_go() {
        let clock = Arc::new(ManualClock::new(1000));
        let mut f = filter(StateKind::List, 100, &clock);
        let (old, new) = (ttl::stamped(800, b"a"), ttl::stamped(950, b"bb"));
        let mixed = list_codec::encode([&old[..], &new[..], &old[..]]);
        assert_eq!(
            decision(f.filter(0, b"k", &mixed)),
            Some(Some(list_codec::encode([&new[..]])))
        );
        assert!(decision(f.filter(0, b"k", &list_codec::encode([&new[..]]))).is_none());
        assert_eq!(
            decision(f.filter(0, b"k", &list_codec::encode([&old[..], &old[..]]))),
            Some(None)
        );
        assert!(decision(f.filter(0, b"k", &[5, 1])).is_none());
    }

    #[test]
    fn unconfigured_or_disabled_keeps_everything() {
        let shared = TtlFilterShared::new(StateKind::Value);
        let ctx = || CompactionFilterContext {
            is_full_compaction: true,
            is_manual_compaction: false,
        };
        let mut factory = TtlFilterFactory {
            shared: Arc::clone(&shared),
        };
        let expired = ttl::stamped(i64::MIN / 2, b"v");
        assert!(decision(factory.create(ctx()).filter(0, b"k", &expired)).is_none());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let off = StateTtlConfig::builder(std::time::Duration::from_millis(1))
            .disable_cleanup_in_background()
            .build()
            .unwrap();
        shared.configure(&off, &clock);
        assert!(decision(factory.create(ctx()).filter(0, b"k", &expired)).is_none());
    }

    #[test]
    fn options_sections_name_the_ttl_column_families() {
        let text = "[Version]\n  rocksdb_version=11.12.0\n[DBOptions]\n  x=1\n\
            [CFOptions \"default\"]\n  compaction_filter_factory=nullptr\n\
            [TableOptions/BlockBasedTable \"default\"]\n  compaction_filter_factory=cairn.ttl-filter\n\
            [CFOptions \"op/ttl\"]\n  merge_operator=cairn.list-append\n  compaction_filter_factory=cairn.ttl-filter\n\
            [CFOptions \"op/plain\"]\n  compaction_filter_factory=nullptr\n\
            [CFOptions \"op/a\\:b\"]\n  compaction_filter_factory={id=cairn.ttl-filter;}\n";
        let got = parse_ttl_column_families(text);
        let want: HashSet<String> = ["op/ttl", "op/a:b"].into_iter().map(String::from).collect();
        assert_eq!(got, want);
    }
}
