//! Checkpoint settings (Flink: `execution.checkpointing.*`, `state.checkpoints.*`).

use std::time::Duration;

use cairn_snapshot::StorageOptions;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// How a restored checkpoint is owned (Flink's `RecoveryClaimMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimMode {
    /// Never delete the restored checkpoint's files; the first checkpoint after the restore
    /// shares nothing with it (Cairn copies the files inside the store instead of uploading
    /// them again). Flink's default.
    #[default]
    NoClaim,
    /// Take ownership: the restored checkpoint is refcounted like this job's own and deleted
    /// when subsumed.
    Claim,
}

/// The consistency a host's barriers give (Flink's `execution.checkpointing.mode`). Cairn
/// snapshots whatever the slot holds when the host calls
/// [`Slot::snapshot_for_checkpoint`](crate::Slot::snapshot_for_checkpoint); the mode says how
/// the host got the slot there, and the coordinator records it in every checkpoint's
/// properties (`cairn.mode`) and report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointingMode {
    /// Aligned barriers: a slot with several inputs snapshots once the barrier arrived on all
    /// of them, holding back records of inputs whose barrier came first. State reflects each
    /// record exactly once after a restore. Flink's default.
    #[default]
    ExactlyOnce,
    /// No alignment (Flink's `CheckpointBarrierTracker`): a slot keeps processing every input
    /// and snapshots once the barrier has arrived on all of them, so records of a faster input
    /// read after its barrier are in the snapshot and are replayed again after a restore (the
    /// source offsets are the barrier positions). Lower latency under backpressure; duplicates
    /// possible, never a lost record. Snapshotting at the *first* barrier would lose the
    /// records of slower inputs still in flight before theirs: `examples/checkpointing_modes.rs`
    /// shows both modes and that mistake.
    AtLeastOnce,
}

impl std::str::FromStr for CheckpointingMode {
    type Err = EngineError;

    /// Parses the name [`Display`](std::fmt::Display) writes (what a restored checkpoint's
    /// `cairn.mode` property holds).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exactly-once" => Ok(CheckpointingMode::ExactlyOnce),
            "at-least-once" => Ok(CheckpointingMode::AtLeastOnce),
            other => Err(EngineError::InvalidArgument(format!(
                "checkpointing mode {other:?}: expected exactly-once or at-least-once"
            ))),
        }
    }
}

impl std::fmt::Display for CheckpointingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointingMode::ExactlyOnce => "exactly-once",
            CheckpointingMode::AtLeastOnce => "at-least-once",
        })
    }
}

/// When a checkpoint stops reusing old uploads. Bounds what an incremental history pins in
/// storage and how old its objects get. Flink's RocksDB backend has no such policy: history is
/// pruned only by RocksDB's own compactions (FLINK-7449), and a `FULL_CHECKPOINT` is taken only
/// after a no-claim restore or by hand.
///
/// Every policy is off by default, from `cairn bench rebase` (100 checkpoints, `retained = 1`,
/// figures in `benches/RESULTS.md`, "Periodic rebase"): Cairn reuses whole files and deletes a
/// file as soon as no retained checkpoint references it, so the history never pins deleted files;
/// what is left to gain is dead data *inside* live SSTs, and only `max-space-amplification`
/// reaches it, with gains on churn-only state and losses on state with a large cold part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct RebaseConfig {
    /// Every N-th checkpoint uploads all live files again as new objects (`<sha>-c<id>`),
    /// sharing nothing with earlier checkpoints, so the old chain is deleted once subsumed. 0 =
    /// never (default). Buys objects no older than N intervals and a chain independent of any
    /// older object (a damaged old object can't affect it); costs uploads without reducing
    /// storage: measured at N = 10, +34..46 % uploaded bytes on churn-only state and +130 % with a
    /// cold majority, stored bytes unchanged (-1..+4 %, noise). Flink: none (a manual
    /// `FULL_CHECKPOINT`; the changelog backend's `periodic-materialize.interval` is the nearest).
    pub every_n_checkpoints: u32,
    /// Compact a slot's state column families (`compact_range`, bottommost level included) before
    /// the next checkpoint when, after a checkpoint, its referenced shared bytes exceed this
    /// multiple of its live-data estimate ([`Slot::live_data_estimate`]). The next checkpoint
    /// uploads the compacted files; the dead data in the old ones is deleted when they are
    /// subsumed. `None` = off (default). Recommended 2.0 for state that is mostly churned: there
    /// it measured -11..-20 % stored and restored bytes and -7..-13 % uploads (1.5: -24..-31 %
    /// stored, +7..+14 % uploads; 3.0: rarely triggers). Off by default because (1) the
    /// compaction stops the slot for its duration (a full rewrite, ~100 MB/s here: minutes for a
    /// large state); (2) the estimate reads live data spread over several sorted runs as dead
    /// (3.5x right after a bulk load), so a state with a large cold part compacts for nothing
    /// and then keeps more (+9..+13 % stored measured). Flink: none (RocksDB's
    /// `periodic-compaction-time` is the nearest).
    ///
    /// [`Slot::live_data_estimate`]: crate::Slot::live_data_estimate
    pub max_space_amplification: Option<f64>,
    /// Re-upload (as new objects) shared files whose object is older than this, to stay ahead of
    /// a storage lifecycle rule that moves or expires old objects. `None` = off (default):
    /// without such a rule it only costs uploads (+35 % at 5 s with a cold majority; files that
    /// compaction keeps rewriting never get old). Files from version-1 metadata have no upload
    /// time and count as older than any limit. Flink: none.
    #[serde(with = "humantime_serde")]
    pub max_file_age: Option<Duration>,
}

impl Default for RebaseConfig {
    fn default() -> Self {
        Self::off()
    }
}

impl RebaseConfig {
    /// Every policy off: plain incremental checkpoints.
    pub fn off() -> Self {
        Self {
            every_n_checkpoints: 0,
            max_space_amplification: None,
            max_file_age: None,
        }
    }

    /// Checks the settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(a) = self.max_space_amplification
            && !(a.is_finite() && a > 1.0)
        {
            // Referenced bytes can't be below the live data for long; a limit <= 1 would compact
            // after every checkpoint.
            return Err(EngineError::config(
                "checkpoint.rebase.max-space-amplification",
                a,
                "> 1.0 (or unset to disable)",
            ));
        }
        if let Some(age) = self.max_file_age
            && age < Duration::from_secs(1)
        {
            return Err(EngineError::config(
                "checkpoint.rebase.max-file-age",
                format!("{age:?}"),
                ">= 1s (or unset to disable)",
            ));
        }
        Ok(())
    }
}

/// How restored files are checked: a local-recovery snapshot (`local-recovery-verify`) and SSTs
/// restored from `file://` storage (`restore-verify`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileVerify {
    /// Size and sha256 of every file against the metadata (default), for the cost of reading
    /// the files once.
    #[default]
    Sha256,
    /// Sizes only: no file is read. RocksDB still checks every block's checksum when it reads
    /// it, so a damaged file surfaces as a corruption error on first read (not, for local
    /// recovery, as a fallback to remote).
    Size,
}

/// When a restored RocksDB slot's SST files are fetched (`checkpoint.restore-fetch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreFetch {
    /// Every file is downloaded and verified before the slot opens (default): restore time
    /// grows with the state.
    #[default]
    Eager,
    /// The slot opens from the checkpoint's private files (MANIFEST, OPTIONS, CURRENT) alone;
    /// each SST is fetched, sha256-verified, when RocksDB first opens it, and in the background
    /// largest-first until the slot is fully local (`backend::rocks::lazy`). Time to the first
    /// record no longer grows with the state; reads of a file not yet local read ranges of the
    /// stored object (checked by length and RocksDB's block checksums) until it is local, and
    /// a failed fetch fails the access that needed it (the slot must be restored again). Fetched files are always hashed (`restore-verify` does not apply: RocksDB reads
    /// them next). Applies to the slot's base (the old slot it opens as it is); old slots merged
    /// in by a rescale, local-recovery snapshots and heap or canonical restores stay eager.
    /// Flink: none (ForSt, experimental, reads state from remote storage directly).
    Lazy,
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
    /// Checkpoints in flight at once (triggered, not yet completed or aborted). Default 1;
    /// up to 16 when `min-pause` is 0 (a min pause leaves no room for a second one, as in
    /// Flink). Overlapping checkpoints overlap their barrier collection and uploads; commits
    /// happen one at a time, and a completed checkpoint subsumes older ones still in flight.
    /// Flink: `execution.checkpointing.max-concurrent-checkpoints`.
    pub max_concurrent: u32,
    /// The consistency of the host's barriers, recorded with every checkpoint. Default
    /// `exactly-once`. Flink: `execution.checkpointing.mode`.
    pub mode: CheckpointingMode,
    /// Consecutive failed checkpoints tolerated before the job fails. Default 0.
    /// Flink: `execution.checkpointing.tolerable-failed-checkpoints`.
    pub tolerable_failed: u32,
    /// Completed checkpoints kept. Default 1. Flink: `execution.checkpointing.num-retained`.
    pub retained: u32,
    /// What [`CheckpointCoordinator::cancel`](crate::checkpoint::CheckpointCoordinator::cancel)
    /// does with the job's committed checkpoints: keep them (`true`, Flink's
    /// RETAIN_ON_CANCELLATION) or delete them all (`false`, DELETE_ON_CANCELLATION). A job
    /// that fails or is dropped without `cancel` keeps them either way. Default true (Flink's
    /// default, NO_EXTERNALIZED_CHECKPOINTS, deletes them: Cairn keeps them, since a
    /// checkpoint deleted by accident can't come back). Flink:
    /// `execution.checkpointing.externalized-checkpoint-retention`.
    pub retain_on_cancellation: bool,
    /// Parallel file transfers per checkpoint and restore. Default 4.
    /// Flink: `state.backend.rocksdb.checkpoint.transfer.thread.num`.
    pub transfer_threads: u32,
    /// Restore ownership mode. Default `no-claim`. Flink: `execution.state-recovery.claim-mode`.
    pub restore_mode: ClaimMode,
    /// Orphan files younger than this are never collected (they may belong to an upload in
    /// flight). Default 1 h; with `gc-after-checkpoint` at least
    /// [`CheckpointConfig::min_gc_grace`].
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// Run orphan collection after each completed checkpoint. Default false.
    pub gc_after_checkpoint: bool,
    /// Start flushing RocksDB's memtables in the background as soon as a slot sees a checkpoint
    /// coming (its barrier is published a little ahead of the slot's position), so the
    /// synchronous phase only flushes what was written since, instead of every memtable byte
    /// written since the last checkpoint. The price: one more, smaller L0 file per checkpoint,
    /// so compactions come sooner. Measured on the 1M-counter job (benches/RESULTS.md): sync
    /// pause p50 ~130-215 ms -> ~35-60 ms, +17-35 % bytes uploaded. Default true; false for
    /// deployments that pay for upload bytes more than for pauses. Flink: none (its synchronous
    /// phase flushes everything).
    pub pre_flush: bool,
    /// Storage settings (S3 endpoint and credentials, memory cap, multipart part size, retries).
    pub storage: StorageOptions,
    /// When checkpoints stop reusing old uploads.
    pub rebase: RebaseConfig,
    /// Keep each slot's last completed checkpoint on local disk (hard links, in
    /// `<slot working dir>/local-recovery/`) and restore from it when it is present and
    /// verified, else from storage. Default false. Trade-off: local disk for up to one
    /// checkpoint of SSTs the live database has already compacted away, for a restore without
    /// downloads. Flink: `execution.state-recovery.from-local` (was `state.backend.local-recovery`).
    pub local_recovery: bool,
    /// How a local snapshot is checked before use. Default `sha256`.
    pub local_recovery_verify: FileVerify,
    /// How SSTs restored from `file://` storage (hard-linked, not downloaded) are checked.
    /// Default `sha256`: every byte hashed before the slot opens, which bounds a restore at
    /// sha256 speed (~1.8 GB/s per core with SHA-NI; 0.55 s for 1.74 GB on 2 cores). `size`
    /// links and checks sizes only, so the slot opens as fast as the links are made; the
    /// objects were hashed at upload and RocksDB checks every block's checksum when it reads
    /// it, so damage then surfaces as a corruption error on first read rather than at restore.
    /// Objects streamed from S3 or memory are always hashed (nearly free next to the transfer).
    /// Flink: none (it verifies nothing).
    pub restore_verify: FileVerify,
    /// When a restored RocksDB slot fetches its SST files: all before it opens (`eager`,
    /// default) or as RocksDB needs them and in the background (`lazy`; see [`RestoreFetch`]).
    pub restore_fetch: RestoreFetch,
    /// One writer per job: a writer holds the job's lease (`<job>/_writers/`) and renews it
    /// every third of this; another writer may take the job only after the lease went this
    /// long without renewal (a crashed holder) or was released (a clean stop). A second writer
    /// on a live job fails at once, naming the holder. Default 30 s. Longer = a job restarted
    /// in place after a crash waits longer; shorter = a long pause (GC, VM freeze) of a live
    /// writer can make it lose its job (it is fenced, never corrupting anything). Flink: the
    /// leader-election lease of its high-availability services (`high-availability.*`).
    #[serde(with = "humantime_serde")]
    pub writer_lease_timeout: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: "cairn-data/checkpoints".into(),
            interval: Some(Duration::from_secs(2)),
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            mode: CheckpointingMode::ExactlyOnce,
            tolerable_failed: 0,
            retained: 1,
            retain_on_cancellation: true,
            transfer_threads: 4,
            restore_mode: ClaimMode::NoClaim,
            gc_grace: Duration::from_secs(3600),
            gc_after_checkpoint: false,
            pre_flush: true,
            storage: StorageOptions::default(),
            rebase: RebaseConfig::default(),
            local_recovery: false,
            local_recovery_verify: FileVerify::Sha256,
            restore_verify: FileVerify::Sha256,
            restore_fetch: RestoreFetch::Eager,
            writer_lease_timeout: Duration::from_secs(30),
        }
    }
}

impl CheckpointConfig {
    /// The shortest safe grace period of garbage collection for this configuration: an object
    /// is uploaded at the earliest when its checkpoint starts, the commit starts within
    /// `timeout`, and the commit lands after at most three storage operations (the lease
    /// check, the lease renewal, the `_metadata` put; each at most
    /// [`StorageOptions::max_operation_time`]). A younger orphan may be an upload whose commit
    /// is still to land. Default settings: 10 min + 3 x 555 s = 37 min 45 s.
    pub fn min_gc_grace(&self) -> Duration {
        self.timeout + self.storage.max_operation_time() * 3
    }

    /// Checks the settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.rebase.validate()?;
        self.storage.validate()?;
        if self.max_concurrent == 0 || self.max_concurrent > 16 {
            return Err(EngineError::config(
                "checkpoint.max-concurrent",
                self.max_concurrent,
                "[1, 16]",
            ));
        }
        if self.max_concurrent > 1 && !self.min_pause.is_zero() {
            return Err(EngineError::config(
                "checkpoint.max-concurrent",
                self.max_concurrent,
                "1 when checkpoint.min-pause is above 0 (a pause between checkpoints leaves none concurrent)",
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
        // Renewal every third of the timeout: under 300 ms it would be a storage write every
        // 100 ms.
        if self.writer_lease_timeout < Duration::from_millis(300) {
            return Err(EngineError::config(
                "checkpoint.writer-lease-timeout",
                format!("{:?}", self.writer_lease_timeout),
                ">= 300ms",
            ));
        }
        if self.gc_after_checkpoint && self.gc_grace < self.min_gc_grace() {
            return Err(EngineError::config(
                "checkpoint.gc-grace",
                format!("{:?}", self.gc_grace),
                format!(
                    ">= {:?} (checkpoint.timeout + three storage operations, see \
                     CheckpointConfig::min_gc_grace)",
                    self.min_gc_grace()
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointing_mode_names_round_trip() {
        for m in [
            CheckpointingMode::ExactlyOnce,
            CheckpointingMode::AtLeastOnce,
        ] {
            assert_eq!(m.to_string().parse::<CheckpointingMode>().unwrap(), m);
        }
        assert!("aligned".parse::<CheckpointingMode>().is_err());
    }

    #[test]
    fn rebase_keys_parse_and_validate() {
        let c: CheckpointConfig = toml::from_str(
            "local-recovery = true\n[rebase]\nevery-n-checkpoints = 10\nmax-space-amplification = 3.5\nmax-file-age = \"7d\"\n",
        )
        .unwrap();
        assert_eq!(c.rebase.every_n_checkpoints, 10);
        assert_eq!(c.rebase.max_space_amplification, Some(3.5));
        assert_eq!(c.rebase.max_file_age, Some(Duration::from_secs(7 * 86_400)));
        assert!(c.local_recovery);
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.rebase.max_space_amplification = Some(1.0);
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("checkpoint.rebase.max-space-amplification"),
            "{e}"
        );
        let mut bad = c;
        bad.rebase.max_file_age = Some(Duration::from_millis(10));
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("checkpoint.rebase.max-file-age"), "{e}");
        assert!(toml::from_str::<CheckpointConfig>("[rebase]\nevery-n = 1\n").is_err());
    }
}
