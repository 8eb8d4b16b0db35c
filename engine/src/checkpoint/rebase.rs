//! The rebase policy: when a checkpoint stops reusing old uploads (`checkpoint.rebase.*`).
//!
//! Three independent triggers, decided by the [`Checkpointer`](super::Checkpointer):
//! - `every-n-checkpoints`: the checkpoint uploads every live file again as new objects
//!   ([`UploadPolicy::full`]); once the older checkpoints are subsumed, their objects go.
//! - `max-file-age`: reused files whose object is older than the limit are uploaded again.
//! - `max-space-amplification`: after a checkpoint, a slot whose referenced shared bytes exceed
//!   the limit times its live-data estimate is asked to compact its column families
//!   ([`Slot::compact_state`]) before the next checkpoint, which then uploads the compacted
//!   files; the dead data in the old ones is freed when they are subsumed.
//!
//! The first two change only which objects a checkpoint references; the third changes the
//! files themselves, and is the only one that can reduce stored bytes: on churned state, not on
//! state with a large cold part (measured in `benches/RESULTS.md`, "Periodic rebase"). All three
//! are off by default (see [`RebaseConfig`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_snapshot::UploadPolicy;
use serde::Serialize;

use super::config::RebaseConfig;
use crate::error::{EngineError, Result};
use crate::slot::Slot;

/// RocksDB's estimate of the live data in a column family: the sizes of a maximal set of files
/// with no key-range overlap, bottom level first (overlapping files, i.e. overwritten and
/// deleted data not yet compacted away, are not counted).
const LIVE_DATA_PROPERTY: &str = "rocksdb.estimate-live-data-size";

/// What compacting a slot's state did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactionStats {
    /// Wall time of the compaction, ms.
    pub ms: f64,
    /// Live SST bytes of the state's column families before.
    pub sst_bytes_before: u64,
    /// Live SST bytes after.
    pub sst_bytes_after: u64,
}

impl Slot {
    /// An estimate of the live data in the slot's state column families, bytes: per column
    /// family the larger of RocksDB's `rocksdb.estimate-live-data-size` and the size of its
    /// largest sorted run (an L0 file, or a level), summed. `None` for the heap backend (it has
    /// no dead data to compact away).
    ///
    /// Why not RocksDB's property alone: it adds up a maximal set of files with no key-range
    /// overlap, bottom level first. Every Cairn SST spans almost the whole key space (keys start
    /// with the key group), so one small file in the bottom level hides all the others, and the
    /// estimate collapses: measured 42-55x "amplification" after a bulk load with universal
    /// compaction (`benches/RESULTS.md`, "Periodic rebase"). The largest sorted run is a floor
    /// that does not collapse; both stay optimistic about overwritten data in the largest run.
    pub fn live_data_estimate(&self) -> Option<u64> {
        let rocks = self.backend().as_rocksdb()?;
        let db = rocks.db();
        let mut runs: HashMap<(&str, i32, Option<&str>), u64> = HashMap::new();
        let files = db.live_files().unwrap_or_default();
        for f in &files {
            // L0 files are sorted runs each; a level >= 1 is one run.
            let file = (f.level == 0).then_some(f.name.as_str());
            *runs
                .entry((f.column_family_name.as_str(), f.level, file))
                .or_default() += f.size as u64;
        }
        Some(
            rocks
                .column_families()
                .map(|n| {
                    let property = db
                        .cf_handle(n)
                        .and_then(|cf| {
                            db.property_int_value_cf(&cf, LIVE_DATA_PROPERTY)
                                .ok()
                                .flatten()
                        })
                        .unwrap_or(0);
                    let largest_run = runs
                        .iter()
                        .filter(|((cf, _, _), _)| *cf == n)
                        .map(|(_, size)| *size)
                        .max()
                        .unwrap_or(0);
                    property.max(largest_run)
                })
                .sum(),
        )
    }

    /// Compacts every state column family of the slot over its whole key range, bottommost
    /// level included, so overwritten and deleted data is dropped (RocksDB `compact_range`).
    /// Runs on the caller's thread: the slot is stopped for its duration, like Flink's manual
    /// compaction. A no-op for the heap backend.
    pub fn compact_state(&mut self) -> Result<CompactionStats> {
        let t = Instant::now();
        let Some(rocks) = self.backend().as_rocksdb() else {
            return Ok(CompactionStats::default());
        };
        let db = rocks.db();
        let sst_bytes = || -> u64 {
            rocks
                .column_families()
                .filter_map(|n| db.cf_handle(n))
                .filter_map(|cf| {
                    db.property_int_value_cf(&cf, "rocksdb.live-sst-files-size")
                        .ok()
                        .flatten()
                })
                .sum()
        };
        let before = sst_bytes();
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let names: Vec<String> = rocks.column_families().map(str::to_string).collect();
        for name in &names {
            let cf = db.cf_handle(name).ok_or_else(|| {
                EngineError::InvalidArgument(format!("column family {name} is not open"))
            })?;
            db.compact_range_cf_opt(&cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(CompactionStats {
            ms: t.elapsed().as_secs_f64() * 1000.0,
            sst_bytes_before: before,
            sst_bytes_after: sst_bytes(),
        })
    }
}

/// The policy's running state inside the checkpointer.
#[derive(Clone, Debug, Default)]
pub(crate) struct RebaseState {
    /// Completed checkpoints since the last one that shared nothing with earlier ones (the
    /// first of a job, the first after a no-claim restore, a rebase). `None` before the first.
    since_full: Option<u32>,
}

/// The decision for one checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub policy: UploadPolicy,
    pub reason: Option<String>,
}

impl RebaseState {
    /// Decides the upload policy of the next checkpoint at wall time `now_ms`.
    pub fn decide(&self, cfg: &RebaseConfig, now_ms: u64) -> Decision {
        let n = cfg.every_n_checkpoints;
        if n > 0
            && let Some(since) = self.since_full
            && since + 1 >= n
        {
            // The last full checkpoint and the `since` after it make a chain of `since + 1`.
            return Decision {
                policy: UploadPolicy::full(),
                reason: Some(format!(
                    "every-n-checkpoints: full upload after a chain of {} checkpoints",
                    since + 1
                )),
            };
        }
        let mut policy = UploadPolicy::incremental();
        if let Some(age) = cfg.max_file_age {
            policy = UploadPolicy::reupload_before(
                now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        Decision {
            policy,
            reason: None,
        }
    }

    /// A checkpoint completed; `full` when it shared nothing with earlier checkpoints.
    pub fn completed(&mut self, full: bool) {
        self.since_full = Some(match self.since_full {
            Some(n) if !full => n + 1,
            _ => 0,
        });
    }

    /// After a restore whose files the next checkpoint reuses (claim mode): the chain continues
    /// from an unknown point, so count from here.
    pub fn restored(&mut self) {
        self.since_full = Some(0);
    }
}

/// `referenced / live`, or 0 when there is no live-data estimate.
pub(crate) fn amplification(referenced: u64, live: Option<u64>) -> f64 {
    match live {
        Some(l) if l > 0 => referenced as f64 / l as f64,
        _ => 0.0,
    }
}

/// Formats a duration for reasons ("7d", "90s").
pub(crate) fn human(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_n_counts_from_the_last_full_checkpoint() {
        let cfg = RebaseConfig {
            every_n_checkpoints: 3,
            ..RebaseConfig::off()
        };
        let mut s = RebaseState::default();
        let mut fulls = Vec::new();
        // The first checkpoint of a job uploads everything anyway (full), then every 3rd.
        for _ in 0..10 {
            let d = s.decide(&cfg, 0);
            fulls.push(d.policy.full);
            s.completed(d.policy.full);
        }
        assert_eq!(
            fulls,
            [
                false, false, false, true, false, false, true, false, false, true
            ]
        );
        let off = RebaseConfig::off();
        assert!(!s.decide(&off, 0).policy.full);
    }

    #[test]
    fn file_age_sets_a_cutoff() {
        let cfg = RebaseConfig {
            max_file_age: Some(Duration::from_secs(10)),
            ..RebaseConfig::off()
        };
        let d = RebaseState::default().decide(&cfg, 100_000);
        assert_eq!(d.policy.reupload_before_ms, Some(90_000));
        assert!(!d.policy.full);
        assert_eq!(amplification(300, Some(100)), 3.0);
        assert_eq!(amplification(300, Some(0)), 0.0);
        assert_eq!(amplification(300, None), 0.0);
    }
}
