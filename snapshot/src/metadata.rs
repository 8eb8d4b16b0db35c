//! `_metadata`: the versioned description of one committed checkpoint. Written last, with a
//! create-only put; its existence is the commit.
//!
//! ## Format (version 3)
//! JSON (readable with `cairn checkpoints inspect`, small next to the files it lists):
//! `{"format":"cairn-checkpoint","version":3,"checkpoint_id":..,"job":..,"created_at_ms":..,
//!   "max_parallelism":..,"slots":[SlotHandle..],"restored_from":..,"referenced_jobs":[..]}`.
//!
//! Version 3 names objects by writer epoch (`shared/<sha>-e<E>`, `chk-<id>/e<E>/...`, see
//! [`crate::object_layout`]) and lists in `referenced_jobs` the other jobs whose shared objects it
//! references (claimed checkpoints); a reference into any other job is refused at load.
//!
//! Version 2 adds `uploaded_at_ms` to every shared file (when its object was written, for
//! `rebase.max-file-age`). Version 1 documents still read: the field is then 0, "unknown", which
//! the age policy treats as older than any limit (re-uploading once is safe; keeping an object
//! past a storage lifecycle rule is not).
//! One [`SlotHandle`] per slot with its key-group range, so a checkpoint of N slots commits once
//! and can be restored into M slots by handing out key-group ranges again.

use cairn_base::KeyGroupRange;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};
use crate::object_layout::CheckpointId;

/// The `format` field of every metadata file.
pub const FORMAT: &str = "cairn-checkpoint";
/// The metadata version this build writes.
pub const VERSION: u32 = 3;
/// The largest `_metadata` this build reads. A checkpoint of 1,000 slots with 1,000 files each
/// is ~200 MB of JSON; 64 MiB is ~300,000 files, far beyond any job here, and small enough
/// that a hostile object can't exhaust memory.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;
/// The largest max parallelism (Flink's limit: key groups are numbered in 15 bits).
pub const MAX_PARALLELISM: u32 = 32_768;
/// The largest file a checkpoint may list (1 TiB): a sanity bound on sizes read from storage,
/// which downloads and decompression also stop at.
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// Most files one slot may list.
const MAX_FILES_PER_SLOT: usize = 1_000_000;
/// Most states one slot may list.
const MAX_STATES_PER_SLOT: usize = 65_536;
/// The oldest metadata version this build reads.
pub const MIN_VERSION: u32 = 1;

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
    pub key_groups: KeyGroupRange,
    /// `rocksdb` or `heap`.
    pub backend: String,
    /// Registered states (`operator/name` and kind), so a restore recreates every column family.
    pub states: Vec<StateInfo>,
    /// Shared files (RocksDB SSTs).
    pub shared: Vec<SharedFile>,
    /// Private files.
    pub private: Vec<PrivateFile>,
}

impl SlotHandle {
    /// The per-slot rules of [`CheckpointMetadata::validate`]; the error is the reason.
    fn validate(
        &self,
        meta: &CheckpointMetadata,
        jobs: &[&str],
    ) -> std::result::Result<(), String> {
        if self.backend != "rocksdb" && self.backend != "heap" {
            return Err(format!("backend {:?} is not rocksdb or heap", self.backend));
        }
        if self.states.len() > MAX_STATES_PER_SLOT {
            return Err(format!(
                "{} states (at most {MAX_STATES_PER_SLOT})",
                self.states.len()
            ));
        }
        for st in &self.states {
            st.check()?;
        }
        if self.shared.len() + self.private.len() > MAX_FILES_PER_SLOT {
            return Err(format!(
                "{} files (at most {MAX_FILES_PER_SLOT})",
                self.shared.len() + self.private.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        let files = self
            .shared
            .iter()
            .map(|f| (&f.name, &f.object, &f.sha256, f.size, f.size, true))
            .chain(
                self.private
                    .iter()
                    .map(|f| (&f.name, &f.object, &f.sha256, f.size, f.stored_size, false)),
            );
        for (name, object, sha, size, stored, shared) in files {
            crate::object_layout::check_file_name("file name", name).map_err(|e| e.to_string())?;
            if !names.insert(name.as_str()) {
                return Err(format!("file {name} is listed twice"));
            }
            if !crate::object_layout::is_sha256_hex(sha) {
                return Err(format!(
                    "file {name} has sha256 {sha:?}, not 64 lower-case hex digits"
                ));
            }
            if size > MAX_FILE_BYTES || stored > MAX_FILE_BYTES {
                return Err(format!(
                    "file {name} claims {size} bytes (at most {MAX_FILE_BYTES})"
                ));
            }
            let r = crate::object_layout::ObjectRef::parse(object).map_err(|e| e.to_string())?;
            if shared {
                let Some(n) = r.shared() else {
                    return Err(format!(
                        "shared file {name} names {object:?}, not <job>/shared/<sha256>..."
                    ));
                };
                if n.sha256 != *sha {
                    return Err(format!(
                        "shared file {name} names object {object} but records sha256 {sha}: shared objects are named by their content"
                    ));
                }
                if !jobs.contains(&r.job) {
                    return Err(format!(
                        "shared file {name} names {object}, outside job {} and the jobs it records ({})",
                        meta.job,
                        jobs[1..].join(", ")
                    ));
                }
            } else if r.job != meta.job || r.checkpoint() != Some(meta.checkpoint_id) {
                return Err(format!(
                    "private file {name} names {object}, outside {}/chk-{}/",
                    meta.job, meta.checkpoint_id
                ));
            }
        }
        Ok(())
    }
}

/// A registered state, as recorded in metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// `operator/name`.
    pub name: String,
    /// `value`, `list`, `map`, `reducing` or `aggregating`.
    pub kind: String,
    /// Whether its stored values carry TTL timestamps (a state registered with a
    /// time-to-live). Written by canonical savepoints, whose restore must create the state
    /// with TTL; checkpoints record it in their own files instead. Absent = `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ttl: bool,
    /// The time-to-live in ms of a state registered with full-snapshot cleanup (the engine's
    /// `StateTtlConfig::cleanup_full_snapshot`), as the job had it when it took this
    /// checkpoint: a canonical savepoint written from the checkpoint leaves out what is expired
    /// by then. Absent = no such cleanup (every entry is kept). 1 ..= `i64::MAX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_snapshot_ttl_ms: Option<u64>,
}

impl StateInfo {
    /// Checks a state read from storage: `operator/name` (both parts non-empty, at most 1 KiB,
    /// no control characters) and a known kind; the error is the reason.
    pub fn check(&self) -> std::result::Result<(), String> {
        let ok_name = self.name.len() <= 1024
            && !self.name.chars().any(char::is_control)
            && self
                .name
                .split_once('/')
                .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty());
        if !ok_name {
            return Err(format!(
                "state name {:?} is not operator/name (1 KiB, no control characters)",
                self.name.escape_debug().to_string()
            ));
        }
        if !matches!(
            self.kind.as_str(),
            "value" | "list" | "map" | "reducing" | "aggregating"
        ) {
            return Err(format!(
                "state {} has unknown kind {:?}",
                self.name, self.kind
            ));
        }
        if let Some(ms) = self.full_snapshot_ttl_ms
            && (ms == 0 || i64::try_from(ms).is_err())
        {
            return Err(format!(
                "state {} has full_snapshot_ttl_ms {ms} (1 ..= {})",
                self.name,
                i64::MAX
            ));
        }
        Ok(())
    }
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
    /// Jobs other than [`CheckpointMetadata::job`] whose shared objects this checkpoint
    /// references (the files of a claimed checkpoint). Version 3; empty before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced_jobs: Vec<String>,
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

    /// Checks the structure of metadata read from `path`, which storage says is checkpoint `id`
    /// of job `job`: the rules of the module doc and [`crate::object_layout`]. Metadata is untrusted
    /// input: nothing it names becomes a path, an allocation or a loop bound before this passed.
    pub fn validate(&self, path: &str, job: &str, id: CheckpointId) -> Result<()> {
        let bad = |reason: String| SnapshotError::InvalidMetadata {
            path: path.to_string(),
            reason,
        };
        if self.checkpoint_id != id {
            return Err(bad(format!(
                "checkpoint_id is {}, but it was read from chk-{id}",
                self.checkpoint_id
            )));
        }
        if self.job != job {
            return Err(bad(format!(
                "job is {:?}, but it was read from job directory {job:?}",
                self.job
            )));
        }
        crate::object_layout::check_job_name(&self.job)?;
        let mut jobs: Vec<&str> = vec![self.job.as_str()];
        if self.referenced_jobs.len() > 64 {
            return Err(bad(format!(
                "{} referenced jobs (at most 64)",
                self.referenced_jobs.len()
            )));
        }
        for j in &self.referenced_jobs {
            crate::object_layout::check_job_name(j)?;
            jobs.push(j);
        }
        if let Some(r) = &self.restored_from {
            crate::object_layout::check_job_name(&r.job)?;
            if r.mode != "claim" && r.mode != "no-claim" {
                return Err(bad(format!(
                    "restore mode {:?} is not claim or no-claim",
                    r.mode
                )));
            }
            jobs.push(&r.job);
        }
        if !(1..=MAX_PARALLELISM).contains(&self.max_parallelism) {
            return Err(bad(format!(
                "max_parallelism {} is outside [1, {MAX_PARALLELISM}]",
                self.max_parallelism
            )));
        }
        if self.slots.is_empty() || self.slots.len() > self.max_parallelism as usize {
            return Err(bad(format!(
                "{} slots for max parallelism {}",
                self.slots.len(),
                self.max_parallelism
            )));
        }
        // The slots' key groups partition [0, max parallelism): no gap, no overlap.
        let mut ranges: Vec<(u32, u32, u32)> = self
            .slots
            .iter()
            .map(|s| (s.key_groups.start, s.key_groups.end, s.slot))
            .collect();
        ranges.sort_unstable();
        let mut next = 0u32;
        for (start, end, slot) in &ranges {
            if start > end || *end >= self.max_parallelism {
                return Err(bad(format!(
                    "slot {slot} has key groups {start}..={end}, not a range inside [0, {})",
                    self.max_parallelism
                )));
            }
            if *start != next {
                return Err(bad(format!(
                    "slot {slot}'s key groups start at {start}, expected {next}: the slots' key groups must partition [0, {}) without gap or overlap",
                    self.max_parallelism
                )));
            }
            next = end + 1;
        }
        if next != self.max_parallelism {
            return Err(bad(format!(
                "the slots' key groups end at {next}, not at max parallelism {}: key groups {next}.. are not covered",
                self.max_parallelism
            )));
        }
        let mut indices = std::collections::HashSet::new();
        for s in &self.slots {
            if !indices.insert(s.slot) {
                return Err(bad(format!("slot {} is listed twice", s.slot)));
            }
            s.validate(self, &jobs)
                .map_err(|reason| bad(format!("slot {}: {reason}", s.slot)))?;
        }
        if let Some(first) = self.slots.first()
            && self.slots.iter().any(|s| s.backend != first.backend)
        {
            return Err(bad("slots of different backends".into()));
        }
        Ok(())
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

    const SHA_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const SHA_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

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
                key_groups: KeyGroupRange { start: 0, end: 127 },
                backend: "rocksdb".into(),
                states: vec![StateInfo {
                    name: "op/count".into(),
                    kind: "value".into(),
                    ttl: false,
                    full_snapshot_ttl_ms: None,
                }],
                shared: vec![SharedFile {
                    name: "000009.sst".into(),
                    object: format!("job-1/shared/{SHA_A}-e1"),
                    sha256: SHA_A.into(),
                    size: 100,
                    uploaded_at_ms: 1,
                }],
                private: vec![PrivateFile {
                    name: "CURRENT".into(),
                    object: "job-1/chk-3/e1/slot-0/CURRENT.zst".into(),
                    sha256: SHA_B.into(),
                    size: 16,
                    stored_size: 25,
                }],
            }],
            restored_from: None,
            properties: Default::default(),
            referenced_jobs: Vec::new(),
        }
    }

    #[test]
    fn roundtrip_and_sizes() {
        let m = sample();
        let back = CheckpointMetadata::from_bytes("x", &m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.full_bytes(), 125);
        m.validate("x", "job-1", 3).unwrap();
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

    /// Each rule of `validate`, broken once: the error names the rule.
    #[test]
    fn validate_refuses_hostile_or_inconsistent_metadata() {
        type Edit = fn(&mut CheckpointMetadata);
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("id", |m| m.checkpoint_id = 4, "read from chk-3"),
            ("job", |m| m.job = "job-2".into(), "job directory"),
            (
                "relative name",
                |m| m.slots[0].shared[0].name = "../x.sst".into(),
                "../x.sst",
            ),
            (
                "absolute name",
                |m| m.slots[0].private[0].name = "/etc/passwd".into(),
                "/etc/passwd",
            ),
            (
                "separator",
                |m| m.slots[0].shared[0].name = "a/b.sst".into(),
                "a/b.sst",
            ),
            (
                "nul",
                |m| m.slots[0].shared[0].name = "a\0b".into(),
                "no NUL",
            ),
            (
                "dot",
                |m| m.slots[0].shared[0].name = "..".into(),
                "not . or ..",
            ),
            (
                "duplicate",
                |m| m.slots[0].private[0].name = "000009.sst".into(),
                "twice",
            ),
            (
                "object outside the job",
                |m| m.slots[0].shared[0].object = format!("job-2/shared/{SHA_A}-e1"),
                "outside job",
            ),
            (
                "object escaping",
                |m| m.slots[0].shared[0].object = format!("job-1/../job-2/shared/{SHA_A}"),
                "object reference",
            ),
            (
                "object not named by its content",
                |m| m.slots[0].shared[0].object = format!("job-1/shared/{SHA_B}-e1"),
                "named by their content",
            ),
            (
                "private file of another checkpoint",
                |m| m.slots[0].private[0].object = "job-1/chk-2/e1/slot-0/CURRENT.zst".into(),
                "outside job-1/chk-3/",
            ),
            (
                "bad sha",
                |m| m.slots[0].shared[0].sha256 = "AB".into(),
                "hex",
            ),
            (
                "huge file",
                |m| m.slots[0].private[0].size = u64::MAX,
                "at most",
            ),
            ("gap", |m| m.slots[0].key_groups.start = 1, "expected 0"),
            ("short", |m| m.slots[0].key_groups.end = 100, "not covered"),
            (
                "beyond",
                |m| m.slots[0].key_groups.end = 128,
                "inside [0, 128)",
            ),
            (
                "max parallelism",
                |m| m.max_parallelism = 0,
                "max_parallelism",
            ),
            ("backend", |m| m.slots[0].backend = "lmdb".into(), "backend"),
            (
                "state kind",
                |m| m.slots[0].states[0].kind = "bag".into(),
                "unknown kind",
            ),
            (
                "state name",
                |m| m.slots[0].states[0].name = "nameonly".into(),
                "operator/name",
            ),
            (
                "state ttl",
                |m| m.slots[0].states[0].full_snapshot_ttl_ms = Some(0),
                "full_snapshot_ttl_ms",
            ),
            (
                "state ttl beyond i64",
                |m| m.slots[0].states[0].full_snapshot_ttl_ms = Some(u64::MAX),
                "full_snapshot_ttl_ms",
            ),
            ("no slots", |m| m.slots.clear(), "slots"),
            (
                "overlap",
                |m| {
                    let mut s = m.slots[0].clone();
                    s.slot = 1;
                    s.key_groups = KeyGroupRange {
                        start: 64,
                        end: 127,
                    };
                    m.slots.push(s);
                },
                "overlap",
            ),
            (
                "restore mode",
                |m| {
                    m.restored_from = Some(RestoredFrom {
                        job: "job-0".into(),
                        checkpoint_id: 1,
                        mode: "steal".into(),
                    })
                },
                "claim or no-claim",
            ),
        ];
        for (what, edit, needle) in cases {
            let mut m = sample();
            edit(&mut m);
            let e = m
                .validate("chk-3/_metadata", "job-1", 3)
                .expect_err(what)
                .to_string();
            assert!(e.contains(needle), "{what}: {e}");
            assert!(
                e.contains("chk-3/_metadata") || e.contains("bad "),
                "{what}: {e}"
            );
        }
        // Another job's objects are allowed when the metadata records that job.
        let mut m = sample();
        m.slots[0].shared[0].object = format!("job-0/shared/{SHA_A}");
        m.referenced_jobs = vec!["job-0".into()];
        m.validate("x", "job-1", 3).unwrap();
        m.referenced_jobs.clear();
        m.restored_from = Some(RestoredFrom {
            job: "job-0".into(),
            checkpoint_id: 2,
            mode: "claim".into(),
        });
        m.validate("x", "job-1", 3).unwrap();
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

    /// The version-2 document as written by that build.
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

    /// The version-3 document as written by this build: epoch-named objects, a claimed job's
    /// objects listed in `referenced_jobs`; it validates.
    #[test]
    fn reads_v3_fixture() {
        let text = include_str!("../tests/fixtures/metadata-v3.json");
        let m = CheckpointMetadata::from_bytes("fixture", text.as_bytes()).unwrap();
        assert_eq!(m.version, 3);
        assert_eq!(m.referenced_jobs, vec!["job-0".to_string()]);
        m.validate("fixture", "job-1", 3).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, fixture);
    }
}
