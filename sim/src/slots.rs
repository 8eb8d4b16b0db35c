//! Synthetic slots: what a host hands the coordinator, without RocksDB.
//!
//! A slot's state is a set of immutable "SST" files (shared: content-addressed and reused
//! across checkpoints) plus a private `MANIFEST` listing them (uploaded with every
//! checkpoint), like a RocksDB checkpoint directory. Steps add files, compact (several files
//! replaced by a merged one), drop files, and sometimes re-create a content the slot dropped
//! earlier under a new name, or one it holds now (one content-addressed object for two
//! files, at different times or at once). Contents never repeat
//! across slots: which of two slots uploading one new object acquires it first is real-time
//! order, which would make runs irreproducible. File contents are a pure function of the
//! seed, the slot and a file counter, so shared object names (sha256) and fault decisions
//! (keyed by path) are the same in every run.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use cairn_engine::KeyGroupRange;
use cairn_snapshot::{LocalSnapshot, StateInfo};

use crate::det::{Stream, hash_all};

/// The private file listing a slot's SSTs (uploaded with every checkpoint).
pub const MANIFEST: &str = "MANIFEST";

/// The files of one slot at one moment: what a checkpoint of it must restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// The slot's index.
    pub slot: u32,
    /// Its key groups.
    pub key_groups: KeyGroupRange,
    /// Shared files, name -> content.
    pub shared: BTreeMap<String, Bytes>,
    /// Private files, name -> content.
    pub private: BTreeMap<String, Bytes>,
}

impl SlotState {
    /// Every file, name -> content (shared and private names never collide).
    pub fn all_files(&self) -> BTreeMap<String, Bytes> {
        let mut all = self.shared.clone();
        all.extend(self.private.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }
}

/// One slot of a simulated writer.
#[derive(Clone, Debug)]
pub struct SimSlot {
    index: u32,
    key_groups: KeyGroupRange,
    files: BTreeMap<String, Bytes>,
    generation: u64,
    /// Contents of files it dropped (the last few), to re-create under new names.
    dropped: Vec<Bytes>,
}

/// Dropped contents remembered per slot.
const DROPPED: usize = 16;

/// The key groups of slot `index` of `slots` over `max_parallelism` key groups: contiguous
/// ranges that partition `[0, max_parallelism)`.
pub fn key_groups(index: u32, slots: u32, max_parallelism: u32) -> KeyGroupRange {
    let start = index * max_parallelism / slots;
    let end = (index + 1) * max_parallelism / slots - 1;
    KeyGroupRange { start, end }
}

/// Deterministic content of file `counter` of slot `slot` (24 to 300 bytes).
pub fn sst_content(seed: u64, slot: u32, counter: u64) -> Bytes {
    let mut s = Stream::new(hash_all(&[seed, 0x557, u64::from(slot), counter]));
    let len = s.range(24, 300) as usize;
    let mut out = format!("sst slot={slot} file={counter}\n").into_bytes();
    let header = out.len();
    while out.len() < len {
        out.extend_from_slice(&s.next_u64().to_le_bytes());
    }
    out.truncate(len.max(header));
    Bytes::from(out)
}

impl SimSlot {
    /// An empty slot.
    pub fn new(index: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            index,
            key_groups,
            files: BTreeMap::new(),
            generation: 0,
            dropped: Vec::new(),
        }
    }

    /// A slot continuing from restored state.
    pub fn restored(state: &SlotState) -> Self {
        Self {
            index: state.slot,
            key_groups: state.key_groups,
            files: state.shared.clone(),
            generation: manifest_generation(state.private.get(MANIFEST)),
            dropped: Vec::new(),
        }
    }

    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Number of SST files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it has no SST file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Adds file `counter` with its content.
    pub fn add(&mut self, seed: u64, counter: u64) {
        self.files
            .insert(sst_name(counter), sst_content(seed, self.index, counter));
        self.generation += 1;
    }

    /// Adds file `counter` with `content` (a second name for a content-addressed object when
    /// another file has that content).
    pub fn add_content(&mut self, counter: u64, content: Bytes) {
        self.files.insert(sst_name(counter), content);
        self.generation += 1;
    }

    /// Whether a file of the slot has `content`.
    pub fn holds(&self, content: &Bytes) -> bool {
        self.files.values().any(|c| c == content)
    }

    /// A content this slot dropped earlier and does not hold now, chosen by `pick`: the same
    /// content again under a new name is one content-addressed object, reused while a retained
    /// checkpoint still references it and uploaded again after that.
    pub fn dropped_content(&self, pick: u64) -> Option<Bytes> {
        let gone: Vec<&Bytes> = self.dropped.iter().filter(|c| !self.holds(c)).collect();
        (!gone.is_empty()).then(|| gone[(pick % gone.len() as u64) as usize].clone())
    }

    fn forget(&mut self, name: &str) {
        if let Some(c) = self.files.remove(name) {
            if self.dropped.len() == DROPPED {
                self.dropped.remove(0);
            }
            self.dropped.push(c);
        }
    }

    /// The content of a file chosen by `pick` (`None` when the slot is empty).
    pub fn content_of(&self, pick: u64) -> Option<Bytes> {
        self.nth(pick).map(|(_, c)| c)
    }

    /// Replaces up to `k` files chosen from `pick` by one merged file `counter`.
    pub fn compact(&mut self, seed: u64, counter: u64, k: usize, mut pick: u64) {
        for _ in 0..k {
            if let Some((name, _)) = self.nth(pick) {
                self.forget(&name);
            }
            pick = crate::det::mix(pick);
        }
        self.add(seed, counter);
    }

    /// Drops one file chosen by `pick` (a compaction whose output was empty).
    pub fn drop_file(&mut self, pick: u64) {
        if let Some((name, _)) = self.nth(pick) {
            self.forget(&name);
            self.generation += 1;
        }
    }

    fn nth(&self, pick: u64) -> Option<(String, Bytes)> {
        if self.files.is_empty() {
            return None;
        }
        let i = (pick % self.files.len() as u64) as usize;
        self.files
            .iter()
            .nth(i)
            .map(|(n, c)| (n.clone(), c.clone()))
    }

    /// The files a checkpoint taken now must restore.
    pub fn state(&self) -> SlotState {
        let mut manifest = format!(
            "MANIFEST slot={} generation={}\n",
            self.index, self.generation
        );
        for (name, content) in &self.files {
            manifest.push_str(&format!("{name} {}\n", content.len()));
        }
        let mut private = BTreeMap::new();
        private.insert(MANIFEST.to_string(), Bytes::from(manifest));
        SlotState {
            slot: self.index,
            key_groups: self.key_groups,
            shared: self.files.clone(),
            private,
        }
    }

    /// Writes the snapshot `state` into `dir` (created) and describes it for the coordinator,
    /// which removes the directory when it is done with it.
    pub fn write_snapshot(state: &SlotState, dir: &Path) -> std::io::Result<LocalSnapshot> {
        std::fs::create_dir_all(dir)?;
        for (name, content) in state.shared.iter().chain(state.private.iter()) {
            std::fs::write(dir.join(name), content)?;
        }
        Ok(LocalSnapshot {
            slot: state.slot,
            key_groups: state.key_groups,
            backend: "rocksdb".into(),
            states: vec![StateInfo {
                name: "sim/state".into(),
                kind: "value".into(),
                ttl: false,
                full_snapshot_ttl_ms: None,
            }],
            dir: dir.to_path_buf(),
            shared: state.shared.keys().cloned().collect(),
            private: state.private.keys().cloned().collect(),
        })
    }
}

/// `<counter>.sst`, zero-padded like RocksDB's file numbers.
pub fn sst_name(counter: u64) -> String {
    format!("{counter:06}.sst")
}

fn manifest_generation(manifest: Option<&Bytes>) -> u64 {
    let Some(m) = manifest else { return 0 };
    let text = String::from_utf8_lossy(m);
    text.lines()
        .next()
        .and_then(|l| l.split("generation=").nth(1))
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads every file of a restored slot directory, name -> content.
pub fn read_dir(dir: &Path) -> std::io::Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.insert(name, Bytes::from(std::fs::read(e.path())?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_deterministic_and_states_round_trip() {
        assert_eq!(sst_content(1, 0, 5), sst_content(1, 0, 5));
        assert_ne!(sst_content(1, 0, 5), sst_content(2, 0, 5));
        let mut s = SimSlot::new(0, key_groups(0, 2, 8));
        assert_eq!(s.state().key_groups, KeyGroupRange { start: 0, end: 3 });
        assert_eq!(key_groups(1, 2, 8), KeyGroupRange { start: 4, end: 7 });
        s.add(1, 1);
        s.add(1, 2);
        let c = s.content_of(0).unwrap();
        s.add_content(3, c);
        s.compact(1, 4, 2, 9);
        let state = s.state();
        let back = SimSlot::restored(&state);
        assert_eq!(back.state(), state);
        let dir = tempfile::tempdir().unwrap();
        let snap = SimSlot::write_snapshot(&state, &dir.path().join("s")).unwrap();
        assert_eq!(snap.shared.len(), state.shared.len());
        assert_eq!(read_dir(&snap.dir).unwrap(), state.all_files());
    }
}
