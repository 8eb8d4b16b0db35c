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

use std::time::Duration;

use cairn_snapshot::UploadPolicy;

use super::config::RebaseConfig;

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
