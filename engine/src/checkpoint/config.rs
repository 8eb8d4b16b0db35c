//! Checkpoint settings (Flink: `execution.checkpointing.*`, `state.checkpoints.*`).

use std::time::Duration;

use cairn_snapshot::StorageOptions;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// How a restored checkpoint is owned (Flink's `RecoveryClaimMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Never delete the restored checkpoint's files; the first checkpoint after the restore
    /// shares nothing with it (Cairn copies the files inside the store instead of uploading
    /// them again). Flink's default.
    #[default]
    NoClaim,
    /// Take ownership: the restored checkpoint is refcounted like this job's own and deleted
    /// when subsumed.
    Claim,
}

/// Checkpoint settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// Where checkpoints go: `file:///dir`, a plain path, `s3://bucket/prefix` or `memory://`.
    /// Each run writes a job directory below it. Default `cairn-data/checkpoints`.
    /// Flink: `execution.checkpointing.dir`.
    pub dir: String,
    /// Time between checkpoint triggers; `None` disables periodic checkpoints. Default 2 s for
    /// `cairn run` (Flink has none by default). Flink: `execution.checkpointing.interval`.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A checkpoint whose asynchronous phase takes longer is aborted. Default 10 min.
    /// Flink: `execution.checkpointing.timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Minimum time from the completion of one checkpoint to the trigger of the next. Default 0.
    /// Flink: `execution.checkpointing.min-pause`.
    #[serde(with = "humantime_serde")]
    pub min_pause: Duration,
    /// Checkpoints in flight at once. Only 1 is supported (Flink's default): subsumption then
    /// never races an upload. Flink: `execution.checkpointing.max-concurrent-checkpoints`.
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated before the job fails. Default 0.
    /// Flink: `execution.checkpointing.tolerable-failed-checkpoints`.
    pub tolerable_failed: u32,
    /// Completed checkpoints kept. Default 1. Flink: `execution.checkpointing.num-retained`.
    pub retained: u32,
    /// Keep the last checkpoint when the job is cancelled (`true`, Flink's RETAIN_ON_CANCELLATION)
    /// or delete them all. Default true. Flink: `execution.checkpointing.externalized-checkpoint-retention`.
    pub retain_on_cancellation: bool,
    /// Parallel file transfers per checkpoint and restore. Default 4.
    /// Flink: `state.backend.rocksdb.checkpoint.transfer.thread.num`.
    pub transfer_threads: u32,
    /// Restore ownership mode. Default `no-claim`. Flink: `execution.state-recovery.claim-mode`.
    pub restore_mode: RestoreMode,
    /// Orphan files younger than this are never collected (they may belong to an upload in
    /// flight). Default 1 h.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// Run orphan collection after each completed checkpoint. Default false.
    pub gc_after_checkpoint: bool,
    /// Storage settings (S3 endpoint and credentials, memory cap, multipart part size, retries).
    pub storage: StorageOptions,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: "cairn-data/checkpoints".into(),
            interval: Some(Duration::from_secs(2)),
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failed: 0,
            retained: 1,
            retain_on_cancellation: true,
            transfer_threads: 4,
            restore_mode: RestoreMode::NoClaim,
            gc_grace: Duration::from_secs(3600),
            gc_after_checkpoint: false,
            storage: StorageOptions::default(),
        }
    }
}

impl CheckpointConfig {
    /// Checks the settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.storage.validate()?;
        if self.max_concurrent != 1 {
            return Err(EngineError::config(
                "checkpoint.max-concurrent",
                self.max_concurrent,
                "1 (concurrent checkpoints are not supported)",
            ));
        }
        if self.retained == 0 || self.retained > 1000 {
            return Err(EngineError::config(
                "checkpoint.retained",
                self.retained,
                "[1, 1000]",
            ));
        }
        if self.transfer_threads == 0 || self.transfer_threads > 256 {
            return Err(EngineError::config(
                "checkpoint.transfer-threads",
                self.transfer_threads,
                "[1, 256]",
            ));
        }
        if let Some(i) = self.interval
            && i < Duration::from_millis(10)
        {
            return Err(EngineError::config(
                "checkpoint.interval",
                format!("{i:?}"),
                ">= 10ms",
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(EngineError::config(
                "checkpoint.timeout",
                format!("{:?}", self.timeout),
                ">= 100ms",
            ));
        }
        if self.dir.trim().is_empty() {
            return Err(EngineError::config(
                "checkpoint.dir",
                "\"\"",
                "a URL or path",
            ));
        }
        Ok(())
    }
}
