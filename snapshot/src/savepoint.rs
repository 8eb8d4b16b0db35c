//! Savepoints: self-contained, user-owned, relocatable copies of a job's state. This module is
//! the storage side: the `_savepoint` manifest (the commit point, written last with a
//! create-only put), its validation, and the object names inside a savepoint directory. The
//! engine writes and reads the data files (`cairn_engine::savepoint`).
//!
//! ## Layout
//! ```text
//! <root>/<savepoint>/               any directory name that is a valid job name
//!   _savepoint                      the manifest (JSON), written LAST: a savepoint exists iff
//!                                   its manifest exists
//!   canonical/<slot>-<n>.chunk.zst  canonical format: key-grouped entries and timers (zstd)
//!   operator/slot-<i>.zst           canonical format: operator state of old slot i (zstd)
//!   shared/<sha256>-e<E>...         native format: the checkpoint's SST files as they are
//!   chk-<id>/e<E>/slot-<i>/<f>.zst  native format: the checkpoint's private files
//! ```
//! Every object name in the manifest is relative to the savepoint directory, so moving or
//! renaming the directory (on one store, or to another) keeps the savepoint valid. A savepoint
//! shares no object with any checkpoint: Cairn never deletes it (a job restored from it copies
//! what it needs into its own checkpoints).
//!
//! ## Manifest (version 1)
//! `{"format":"cairn-savepoint","version":1,"kind":"canonical"|"native","created_at_ms":..,
//!   "max_parallelism":..,"parallelism":..,"backend":"rocksdb"|"heap","source":{"job":..,
//!   "checkpoint_id":..},"properties":{..},"states":[{"name","kind"}..],
//!   "chunks":[ChunkFile..],"operator_state":[OperatorStateFile..],"checkpoint":<metadata>}`.
//! `chunks`/`operator_state` are the canonical format's files, `checkpoint` the native
//! format's checkpoint metadata with object names relative to the savepoint directory.

use std::collections::BTreeMap;

use cairn_base::KeyGroupRange;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};
use crate::metadata::{CheckpointMetadata, MAX_PARALLELISM, StateInfo};
use crate::object_layout::{CheckpointId, check_file_name, check_job_name, is_sha256_hex};
use crate::storage::StorageRoot;

/// Name of the manifest inside a savepoint directory.
pub const SAVEPOINT_FILE: &str = "_savepoint";
/// The `format` field of every manifest.
pub const FORMAT: &str = "cairn-savepoint";
/// The manifest version this build writes (and the newest it reads).
pub const VERSION: u32 = 1;
/// Directory of canonical chunks inside a savepoint.
pub const CANONICAL_DIR: &str = "canonical";
/// Directory of operator-state files inside a canonical savepoint.
pub const OPERATOR_DIR: &str = "operator";
/// The largest manifest this build reads (a native savepoint lists every file).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest chunk (uncompressed) a reader accepts: chunks are read whole into memory, and
/// the writer cuts them at a few MiB.
pub const MAX_CHUNK_BYTES: u64 = 256 << 20;
/// The largest operator-state file a reader accepts.
pub const MAX_OPERATOR_STATE_BYTES: u64 = 256 << 20;
/// Most chunks one savepoint may list.
const MAX_CHUNKS: usize = 1_000_000;
/// Most states one savepoint may list.
const MAX_STATES: usize = 65_536;

/// The two savepoint formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SavepointKind {
    /// Backend-independent, key-grouped entries: restores into either backend and any slot
    /// count.
    Canonical,
    /// The backend's own files as they are: fast, same backend only (any slot count for
    /// RocksDB, through rescaling).
    Native,
}

impl SavepointKind {
    /// `canonical` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            SavepointKind::Canonical => "canonical",
            SavepointKind::Native => "native",
        }
    }
}

impl std::str::FromStr for SavepointKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "canonical" => Ok(SavepointKind::Canonical),
            "native" => Ok(SavepointKind::Native),
            other => Err(format!(
                "savepoint format {other:?} is not canonical or native"
            )),
        }
    }
}

/// The checkpoint a savepoint was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointSource {
    /// Its job directory (informational: the savepoint does not reference it).
    pub job: String,
    /// Its id.
    pub checkpoint_id: CheckpointId,
}

/// One chunk of a canonical savepoint: entries and timers of a run of key groups of one old
/// slot, zstd-compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFile {
    /// Object name relative to the savepoint directory (`canonical/<name>`).
    pub object: String,
    /// The key groups its records belong to (a reader skips chunks outside its range).
    pub key_groups: KeyGroupRange,
    /// Records (state entries and timers) in it.
    pub records: u64,
    /// Hex sha256 of the uncompressed content.
    pub sha256: String,
    /// Uncompressed size.
    pub size: u64,
    /// Stored (compressed) size.
    pub stored_size: u64,
}

/// The operator state of one old slot in a canonical savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStateFile {
    /// The old slot's index.
    pub slot: u32,
    /// Object name relative to the savepoint directory (`operator/slot-<i>.zst`).
    pub object: String,
    /// Hex sha256 of the uncompressed content.
    pub sha256: String,
    /// Uncompressed size.
    pub size: u64,
    /// Stored (compressed) size.
    pub stored_size: u64,
}

/// The content of `<savepoint>/_savepoint`. See the module doc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Canonical or native.
    pub kind: SavepointKind,
    /// Wall-clock time it was written, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Number of key groups of the job (a restore needs the same).
    pub max_parallelism: u32,
    /// Slots of the job it was taken from.
    pub parallelism: u32,
    /// Backend of the job it was taken from (`rocksdb` or `heap`).
    pub backend: String,
    /// The checkpoint it was made from.
    pub source: SavepointSource,
    /// The host's own facts (e.g. the source position), returned unchanged on restore.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The keyed states, in the order canonical records number them.
    pub states: Vec<StateInfo>,
    /// Canonical: the chunks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkFile>,
    /// Canonical: operator state, one file per old slot that had any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_state: Vec<OperatorStateFile>,
    /// Native: the checkpoint's metadata, object names relative to the savepoint directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointMetadata>,
}

impl SavepointManifest {
    /// Parses a stored manifest, checking format and version, then [`Self::validate`].
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let bad = |reason: String| SnapshotError::BadMetadata {
            path: path.into(),
            reason,
        };
        let header: Header = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                header.format
            )));
        }
        match header.version {
            Some(v) if (1..=VERSION).contains(&v) => {}
            other => {
                return Err(SnapshotError::UnsupportedVersion {
                    path: path.into(),
                    supported: VERSION,
                    actual: other.unwrap_or(0),
                });
            }
        }
        let m: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Serializes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data structs to JSON cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks everything a reader trusts: counts, sizes, key groups, state names, and that
    /// every object name is a plain relative path inside the savepoint (see
    /// [`check_relative_object`]). The error is the reason.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_parallelism == 0 || self.max_parallelism > MAX_PARALLELISM {
            return Err(format!(
                "max parallelism {} (1 to {MAX_PARALLELISM})",
                self.max_parallelism
            ));
        }
        if self.parallelism == 0 || self.parallelism > self.max_parallelism {
            return Err(format!(
                "parallelism {} (1 to the max parallelism {})",
                self.parallelism, self.max_parallelism
            ));
        }
        if self.backend != "rocksdb" && self.backend != "heap" {
            return Err(format!("backend {:?} is not rocksdb or heap", self.backend));
        }
        if self.states.len() > MAX_STATES {
            return Err(format!(
                "{} states (at most {MAX_STATES})",
                self.states.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for st in &self.states {
            st.check()?;
            if !names.insert(st.name.as_str()) {
                return Err(format!("state {} is listed twice", st.name));
            }
        }
        match self.kind {
            SavepointKind::Canonical => {
                if self.checkpoint.is_some() {
                    return Err("a canonical savepoint lists checkpoint files".into());
                }
                self.validate_canonical()
            }
            SavepointKind::Native => {
                if !self.chunks.is_empty() || !self.operator_state.is_empty() {
                    return Err("a native savepoint lists canonical files".into());
                }
                let Some(c) = &self.checkpoint else {
                    return Err("a native savepoint without its checkpoint".into());
                };
                if c.max_parallelism != self.max_parallelism {
                    return Err(format!(
                        "its checkpoint has max parallelism {}, the savepoint {}",
                        c.max_parallelism, self.max_parallelism
                    ));
                }
                Ok(())
            }
        }
    }

    fn validate_canonical(&self) -> std::result::Result<(), String> {
        if self.chunks.len() > MAX_CHUNKS {
            return Err(format!(
                "{} chunks (at most {MAX_CHUNKS})",
                self.chunks.len()
            ));
        }
        let mut objects = std::collections::HashSet::new();
        for c in &self.chunks {
            check_relative_object(CANONICAL_DIR, &c.object)?;
            if !objects.insert(c.object.as_str()) {
                return Err(format!("chunk {} is listed twice", c.object));
            }
            check_file(&c.object, &c.sha256, c.size, c.stored_size, MAX_CHUNK_BYTES)?;
            if c.key_groups.start > c.key_groups.end || c.key_groups.end >= self.max_parallelism {
                return Err(format!(
                    "chunk {} has key groups {}..={} (max parallelism {})",
                    c.object, c.key_groups.start, c.key_groups.end, self.max_parallelism
                ));
            }
        }
        let mut slots = std::collections::HashSet::new();
        for f in &self.operator_state {
            check_relative_object(OPERATOR_DIR, &f.object)?;
            if f.slot >= self.parallelism || !slots.insert(f.slot) {
                return Err(format!(
                    "operator state of slot {} (parallelism {}, listed once each)",
                    f.slot, self.parallelism
                ));
            }
            check_file(
                &f.object,
                &f.sha256,
                f.size,
                f.stored_size,
                MAX_OPERATOR_STATE_BYTES,
            )?;
        }
        Ok(())
    }

    /// A native savepoint's checkpoint metadata as if the savepoint directory `name` were a
    /// job of the storage root: object names prefixed with `name/`, job `name`, checked like
    /// any stored checkpoint ([`CheckpointMetadata::validate`]). `None` for a canonical one.
    pub fn checkpoint_at(&self, name: &str) -> Result<Option<CheckpointMetadata>> {
        let Some(c) = &self.checkpoint else {
            return Ok(None);
        };
        check_job_name(name)?;
        let mut meta = c.clone();
        meta.job = name.to_string();
        meta.referenced_jobs.clear();
        for h in &mut meta.slots {
            for f in &mut h.shared {
                f.object = format!("{name}/{}", f.object);
            }
            for f in &mut h.private {
                f.object = format!("{name}/{}", f.object);
            }
        }
        meta.validate(
            &format!("{name}/{SAVEPOINT_FILE}"),
            name,
            meta.checkpoint_id,
        )?;
        Ok(Some(meta))
    }
}

fn check_file(
    object: &str,
    sha256: &str,
    size: u64,
    stored: u64,
    max: u64,
) -> std::result::Result<(), String> {
    if !is_sha256_hex(sha256) {
        return Err(format!(
            "{object} has sha256 {sha256:?}, not 64 lower-case hex digits"
        ));
    }
    if size > max || stored > max {
        return Err(format!(
            "{object} claims {size} bytes ({stored} stored; at most {max})"
        ));
    }
    Ok(())
}

/// Checks an object name read from a manifest: `<dir>/<file>`, the file one plain name
/// ([`check_file_name`]), so it can only name an object inside the savepoint's `dir`.
pub fn check_relative_object(dir: &str, object: &str) -> std::result::Result<(), String> {
    match object.split_once('/') {
        Some((d, file)) if d == dir => {
            check_file_name("savepoint file", file).map_err(|e| e.to_string())
        }
        _ => Err(format!("object {object:?} is not {dir}/<name>")),
    }
}

/// Where a savepoint is: its directory relative to the storage root.
#[derive(Clone, Debug)]
pub struct SavepointDir {
    dir: Path,
    name: String,
}

impl SavepointDir {
    /// The savepoint directory `name` under `root` (a job name: one plain component).
    pub fn new(root: &Path, name: &str) -> Result<Self> {
        check_job_name(name)?;
        Ok(Self {
            dir: root.clone().join(name),
            name: name.to_string(),
        })
    }

    /// Its name (the last component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its manifest.
    pub fn manifest(&self) -> Path {
        self.dir.clone().join(SAVEPOINT_FILE)
    }

    /// An object given by its manifest name (`dir/file`, checked by
    /// [`SavepointManifest::validate`]).
    pub fn object(&self, relative: &str) -> Path {
        relative
            .split('/')
            .fold(self.dir.clone(), |p, part| p.join(part))
    }

    /// Whether nothing is stored under the directory yet. A savepoint is only written into an
    /// empty place: written into a job's directory, its objects would be the job's, deleted by
    /// the job's subsumption, and a failed write's cleanup would delete the job's files.
    pub async fn is_empty(&self, storage: &StorageRoot) -> Result<bool> {
        Ok(storage.list(&self.dir).await?.is_empty())
    }

    /// Reads and validates the manifest; `None` when the directory holds none (not a
    /// savepoint, or one not committed).
    pub async fn read_manifest(&self, storage: &StorageRoot) -> Result<Option<SavepointManifest>> {
        let path = self.manifest();
        match storage
            .get_capped(&path, MAX_MANIFEST_BYTES, "the savepoint manifest size cap")
            .await
        {
            Ok(bytes) => Ok(Some(SavepointManifest::from_bytes(path.as_ref(), &bytes)?)),
            Err(SnapshotError::MissingFile { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Commits the savepoint: writes its manifest with a create-only put. An existing
    /// savepoint at this place is never overwritten ([`SnapshotError::BadLocation`]).
    pub async fn commit(&self, storage: &StorageRoot, manifest: &SavepointManifest) -> Result<()> {
        manifest
            .validate()
            .map_err(|reason| SnapshotError::BadMetadata {
                path: self.manifest().to_string(),
                reason,
            })?;
        if storage
            .put_create(&self.manifest(), manifest.to_bytes())
            .await?
        {
            Ok(())
        } else {
            Err(SnapshotError::BadLocation {
                url: format!("{}/{}", storage.url().trim_end_matches('/'), self.name),
                reason: "a savepoint already exists there".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical() -> SavepointManifest {
        SavepointManifest {
            format: FORMAT.into(),
            version: VERSION,
            kind: SavepointKind::Canonical,
            created_at_ms: 1,
            max_parallelism: 128,
            parallelism: 2,
            backend: "heap".into(),
            source: SavepointSource {
                job: "job-1".into(),
                checkpoint_id: 3,
            },
            properties: BTreeMap::new(),
            states: vec![StateInfo {
                name: "op/count".into(),
                kind: "value".into(),
                ttl: false,
                full_snapshot_ttl_ms: None,
            }],
            chunks: vec![ChunkFile {
                object: "canonical/slot-0-0.chunk.zst".into(),
                key_groups: KeyGroupRange { start: 0, end: 63 },
                records: 10,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                size: 100,
                stored_size: 50,
            }],
            operator_state: Vec::new(),
            checkpoint: None,
        }
    }

    #[test]
    fn a_valid_manifest_round_trips() {
        let m = canonical();
        assert_eq!(
            SavepointManifest::from_bytes("sp", &m.to_bytes()).unwrap(),
            m
        );
    }

    #[test]
    fn hostile_manifests_are_refused() {
        type Mutation = fn(&mut SavepointManifest);
        let cases: [(&str, Mutation); 8] = [
            ("traversal", |m| {
                m.chunks[0].object = "canonical/../x".into()
            }),
            ("other dir", |m| m.chunks[0].object = "shared/x".into()),
            ("nested", |m| m.chunks[0].object = "canonical/a/b".into()),
            ("key groups", |m| m.chunks[0].key_groups.end = 128),
            ("size", |m| m.chunks[0].size = MAX_CHUNK_BYTES + 1),
            ("sha", |m| m.chunks[0].sha256 = "zz".into()),
            ("state", |m| m.states[0].name = "nooperator".into()),
            ("parallelism", |m| m.parallelism = 0),
        ];
        for (what, mutate) in cases {
            let mut m = canonical();
            mutate(&mut m);
            let err = SavepointManifest::from_bytes("sp", &m.to_bytes()).unwrap_err();
            assert!(
                matches!(err, SnapshotError::BadMetadata { .. }),
                "{what}: {err}"
            );
        }
        let mut m = canonical();
        m.version = VERSION + 1;
        assert!(matches!(
            SavepointManifest::from_bytes("sp", &m.to_bytes()),
            Err(SnapshotError::UnsupportedVersion { .. })
        ));
    }
}
