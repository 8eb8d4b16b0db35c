//! `_metadata`: the versioned description of one committed checkpoint. Written last, with a
//! create-only put; its existence is the commit.
//!
//! ## Format (version 2)
//! JSON (readable with `cairn checkpoints inspect`, small next to the files it lists):
//! `{"format":"cairn-checkpoint","version":2,"checkpoint_id":..,"job":..,"created_at_ms":..,
//!   "max_parallelism":..,"slots":[SlotHandle..],"restored_from":..}`.
//!
//! Version 2 adds `uploaded_at_ms` to every shared file (when its object was written, for
//! `rebase.max-file-age`). Version 1 documents still read: the field is then 0, "unknown", which
//! the age policy treats as older than any limit (re-uploading once is safe; keeping an object
//! past a storage lifecycle rule is not).
//! One [`SlotHandle`] per slot with its key-group range, so a checkpoint of N slots commits once
//! and can be restored into M slots by handing out key-group ranges again.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};
use crate::layout::CheckpointId;

/// The `format` field of every metadata file.
pub const FORMAT: &str = "cairn-checkpoint";
/// The metadata version this build writes.
pub const VERSION: u32 = 2;
/// The oldest metadata version this build reads.
pub const MIN_VERSION: u32 = 1;

/// An inclusive key-group range `[start, end]` (mirrors the engine's, which this crate can't use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroups {
    /// First key group.
    pub start: u32,
    /// Last key group (inclusive).
    pub end: u32,
}

/// A shared (content-addressed) file of a slot's snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    /// The file's name in the slot's RocksDB directory (e.g. `000012.sst`).
    pub name: String,
    /// Object path relative to the storage root (`<job>/shared/<sha256>`).
    pub object: String,
    /// Hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was written (uploaded or copied), ms since the Unix epoch; 0 = unknown
    /// (version-1 metadata). Reused files keep the time of their first upload.
    #[serde(default)]
    pub uploaded_at_ms: u64,
}

/// A private file of a slot's snapshot (stored zstd-compressed under `chk-<id>/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateFile {
    /// The file's name in the snapshot directory (e.g. `MANIFEST-000005`, `heap.snapshot`).
    pub name: String,
    /// Object path relative to the storage root.
    pub object: String,
    /// Hex sha256 of the uncompressed content.
    pub sha256: String,
    /// Uncompressed size.
    pub size: u64,
    /// Stored (compressed) size.
    pub stored_size: u64,
}

/// What one slot contributed to a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHandle {
    /// The slot's index at checkpoint time.
    pub slot: u32,
    /// The slot's key groups.
    pub key_groups: KeyGroups,
    /// `rocksdb` or `heap`.
    pub backend: String,
    /// Registered states (`operator/name` and kind), so a restore recreates every column family.
    pub states: Vec<StateInfo>,
    /// Shared files (RocksDB SSTs).
    pub shared: Vec<SharedFile>,
    /// Private files.
    pub private: Vec<PrivateFile>,
}

/// A registered state, as recorded in metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// `operator/name`.
    pub name: String,
    /// `value`, `list`, `map`, `reducing` or `aggregating`.
    pub kind: String,
}

/// How the job that wrote this checkpoint started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFrom {
    /// The job directory restored from (relative to the storage root).
    pub job: String,
    /// The checkpoint restored.
    pub checkpoint_id: CheckpointId,
    /// `claim` or `no-claim`.
    pub mode: String,
}

/// The content of `chk-<id>/_metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The checkpoint id.
    pub checkpoint_id: CheckpointId,
    /// The job directory name.
    pub job: String,
    /// Wall-clock commit time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Number of key groups of the job.
    pub max_parallelism: u32,
    /// One handle per slot.
    pub slots: Vec<SlotHandle>,
    /// Set on the checkpoints of a job that started from another checkpoint.
    pub restored_from: Option<RestoredFrom>,
    /// The host's own facts about the checkpoint (e.g. the source position it was taken at),
    /// returned unchanged on restore.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl CheckpointMetadata {
    /// Every shared object this checkpoint references (with repeats across slots removed).
    pub fn shared_objects(&self) -> Vec<&SharedFile> {
        let mut seen = std::collections::HashSet::new();
        self.slots
            .iter()
            .flat_map(|s| s.shared.iter())
            .filter(|f| seen.insert(f.object.as_str()))
            .collect()
    }

    /// Bytes of every file referenced (Flink's "Full Checkpoint Data Size").
    pub fn full_bytes(&self) -> u64 {
        self.shared_objects().iter().map(|f| f.size).sum::<u64>()
            + self
                .slots
                .iter()
                .flat_map(|s| s.private.iter())
                .map(|f| f.stored_size)
                .sum::<u64>()
    }

    /// Serializes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data structs to JSON cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses stored metadata, checking format and version.
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError::BadMetadata {
                path: path.into(),
                reason: e.to_string(),
            })?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(SnapshotError::BadMetadata {
                path: path.into(),
                reason: format!("format is {:?}, expected {FORMAT:?}", header.format),
            });
        }
        match header.version {
            Some(v) if (MIN_VERSION..=VERSION).contains(&v) => {}
            other => {
                return Err(SnapshotError::UnsupportedVersion {
                    path: path.into(),
                    supported: VERSION,
                    actual: other.unwrap_or(0),
                });
            }
        }
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::BadMetadata {
            path: path.into(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointMetadata {
        CheckpointMetadata {
            format: FORMAT.into(),
            version: VERSION,
            checkpoint_id: 3,
            job: "job-1".into(),
            created_at_ms: 1,
            max_parallelism: 128,
            slots: vec![SlotHandle {
                slot: 0,
                key_groups: KeyGroups { start: 0, end: 127 },
                backend: "rocksdb".into(),
                states: vec![StateInfo {
                    name: "op/count".into(),
                    kind: "value".into(),
                }],
                shared: vec![SharedFile {
                    name: "000009.sst".into(),
                    object: "job-1/shared/ab".into(),
                    sha256: "ab".into(),
                    size: 100,
                    uploaded_at_ms: 1,
                }],
                private: vec![PrivateFile {
                    name: "CURRENT".into(),
                    object: "job-1/chk-3/slot-0/CURRENT.zst".into(),
                    sha256: "cd".into(),
                    size: 16,
                    stored_size: 25,
                }],
            }],
            restored_from: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn roundtrip_and_sizes() {
        let m = sample();
        let back = CheckpointMetadata::from_bytes("x", &m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.full_bytes(), 125);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let mut m = sample();
        m.version = VERSION + 1;
        let e = CheckpointMetadata::from_bytes("chk-3/_metadata", &m.to_bytes()).unwrap_err();
        assert!(
            matches!(e, SnapshotError::UnsupportedVersion { actual, .. } if actual == VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("chk-3/_metadata"));
        let e = CheckpointMetadata::from_bytes("p", b"{not json").unwrap_err();
        assert!(matches!(e, SnapshotError::BadMetadata { .. }));
        let e = CheckpointMetadata::from_bytes("p", br#"{"format":"x","version":1}"#).unwrap_err();
        assert!(matches!(e, SnapshotError::BadMetadata { .. }));
    }

    /// A version-1 document as written by this build: reading it must keep working.
    #[test]
    fn reads_v1_fixture() {
        let text = include_str!("../tests/fixtures/metadata-v1.json");
        let m = CheckpointMetadata::from_bytes("fixture", text.as_bytes()).unwrap();
        assert_eq!(m.checkpoint_id, 3);
        assert_eq!(m.slots[0].shared[0].size, 100);
        // Version 1 has no upload times: "unknown" (0), which `rebase.max-file-age` treats as
        // older than any limit.
        assert_eq!(m.slots[0].shared[0].uploaded_at_ms, 0);
    }

    /// The version-2 document as written by this build.
    #[test]
    fn reads_v2_fixture() {
        let text = include_str!("../tests/fixtures/metadata-v2.json");
        let m = CheckpointMetadata::from_bytes("fixture", text.as_bytes()).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.slots[0].shared[0].uploaded_at_ms, 1_764_000_000_000);
        assert_eq!(m.slots[0].shared[1].object, "job-1/shared/ef-c3");
        // Writing it again gives the same document (the encoding is pinned).
        let again: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, fixture);
    }
}
