//! What storage holds, read straight from the in-memory store behind the faults: the
//! invariant checks must see the truth and must not disturb the run (no virtual time passes,
//! no fault decision is consumed, no task of the simulation is driven).

use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use cairn_snapshot::{CheckpointMetadata, CheckpointStore, SlotHandle, StorageRoot};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::slots::{SlotState, read_dir};

/// A committed checkpoint found in storage.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Its metadata.
    pub meta: Arc<CheckpointMetadata>,
    /// The simulation's attempt that wrote it (`sim.attempt` in its properties).
    pub attempt: Option<u64>,
}

/// Storage at one moment.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Every object, path -> size.
    pub objects: BTreeMap<String, u64>,
    /// Committed checkpoints, (job, id) -> metadata.
    pub committed: BTreeMap<(String, u64), Committed>,
    /// `_metadata` objects that can't be read or don't validate: (path, error).
    pub unreadable: Vec<(String, String)>,
}

/// Metadata as read from one `_metadata` object: parsed and validated, or why not.
type Parsed = Result<Arc<CheckpointMetadata>, String>;

/// Reads views of storage, caching parsed metadata by (path, e-tag).
pub struct Inspector {
    inner: Arc<InMemory>,
    cache: HashMap<String, (Option<String>, Parsed)>,
    /// Runs restores of the checks (its own runtime: the simulation's is not driven).
    rt: tokio::runtime::Runtime,
    /// The store without faults or latency, for restores of the checks.
    storage: StorageRoot,
}

/// `<job>/chk-<id>/_metadata` -> (job, id).
fn metadata_key(path: &str) -> Option<(String, u64)> {
    let mut parts = path.split('/');
    let (job, chk, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || file != cairn_snapshot::object_layout::METADATA_FILE {
        return None;
    }
    let id = cairn_snapshot::object_layout::parse_checkpoint_dir(chk)?;
    Some((job.to_string(), id))
}

impl Inspector {
    /// An inspector of `inner`.
    pub fn new(inner: Arc<InMemory>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let storage = StorageRoot::from_store(
            inner.clone() as Arc<dyn ObjectStore>,
            Path::default(),
            "sim-inspect://",
        );
        Ok(Self {
            inner,
            cache: HashMap::new(),
            rt,
            storage,
        })
    }

    /// Reads an object's bytes (`None` when missing).
    pub fn bytes(&self, path: &str) -> Option<Bytes> {
        let p = Path::from(path);
        futures::executor::block_on(async {
            match self.inner.get(&p).await {
                Ok(r) => r.bytes().await.ok(),
                Err(_) => None,
            }
        })
    }

    /// What storage holds now.
    pub fn view(&mut self) -> View {
        let metas: Vec<object_store::ObjectMeta> =
            futures::executor::block_on(self.inner.list(None).try_collect()).unwrap_or_default();
        let mut view = View::default();
        for m in metas {
            let path = m.location.to_string();
            view.objects.insert(path.clone(), m.size);
            let Some((job, id)) = metadata_key(&path) else {
                continue;
            };
            let cached = self
                .cache
                .get(&path)
                .filter(|(etag, _)| *etag == m.e_tag)
                .map(|(_, r)| r.clone());
            let parsed = match cached {
                Some(r) => r,
                None => {
                    let r = match self.bytes(&path) {
                        None => Err("vanished while read".to_string()),
                        Some(b) => CheckpointMetadata::from_bytes(&path, &b)
                            .and_then(|meta| meta.validate(&path, &job, id).map(|()| meta))
                            .map(Arc::new)
                            .map_err(|e| e.to_string()),
                    };
                    self.cache
                        .insert(path.clone(), (m.e_tag.clone(), r.clone()));
                    r
                }
            };
            match parsed {
                Ok(meta) => {
                    let attempt = meta
                        .properties
                        .get("sim.attempt")
                        .and_then(|a| a.parse().ok());
                    view.committed
                        .insert((job, id), Committed { meta, attempt });
                }
                Err(e) => view.unreadable.push((path, e)),
            }
        }
        view
    }

    /// Compares a committed checkpoint's stored bytes with the expected slot states, reading
    /// the objects directly (shared: raw; private: zstd). Returns the first difference.
    pub fn compare_contents(
        &self,
        meta: &CheckpointMetadata,
        expected: &[SlotState],
    ) -> Result<(), String> {
        compare_shape(meta, expected)?;
        for h in &meta.slots {
            let Some(want) = expected.iter().find(|s| s.slot == h.slot) else {
                continue;
            };
            for f in &h.shared {
                let got = self.bytes(&f.object).ok_or_else(|| {
                    format!(
                        "slot {} file {}: object {} is missing",
                        h.slot, f.name, f.object
                    )
                })?;
                if Some(&got) != want.shared.get(&f.name) {
                    return Err(format!(
                        "slot {} file {}: object {} holds {} bytes that differ from the model's",
                        h.slot,
                        f.name,
                        f.object,
                        got.len()
                    ));
                }
            }
            for f in &h.private {
                let got = self.bytes(&f.object).ok_or_else(|| {
                    format!(
                        "slot {} file {}: object {} is missing",
                        h.slot, f.name, f.object
                    )
                })?;
                let plain = zstd::stream::decode_all(&got[..]).map_err(|e| {
                    format!(
                        "slot {} file {}: object {} is not zstd: {e}",
                        h.slot, f.name, f.object
                    )
                })?;
                if want.private.get(&f.name).map(|b| &b[..]) != Some(&plain[..]) {
                    return Err(format!(
                        "slot {} private file {}: object {} differs from the model's",
                        h.slot, f.name, f.object
                    ));
                }
            }
        }
        Ok(())
    }

    /// Restores every slot of `meta` the way a restarting job does
    /// ([`CheckpointStore::download_slot`], verified) into directories under `dir`, and
    /// compares the files with the expected slot states.
    pub fn restore_and_compare(
        &self,
        meta: &CheckpointMetadata,
        expected: &[SlotState],
        dir: &FsPath,
    ) -> Result<(), String> {
        compare_shape(meta, expected)?;
        for h in &meta.slots {
            let dest = dir.join(format!("slot-{}", h.slot));
            let _ = std::fs::remove_dir_all(&dest);
            self.rt
                .block_on(CheckpointStore::download_slot(
                    &self.storage,
                    h,
                    &dest,
                    2,
                    true,
                ))
                .map_err(|e| format!("restoring slot {} failed: {e}", h.slot))?;
            compare_dir(h, &dest, expected)?;
            let _ = std::fs::remove_dir_all(&dest);
        }
        Ok(())
    }
}

/// The slots, key groups and file names of `meta` against the expected states.
pub fn compare_shape(meta: &CheckpointMetadata, expected: &[SlotState]) -> Result<(), String> {
    if meta.slots.len() != expected.len() {
        return Err(format!(
            "{} slots in storage, {} in the model",
            meta.slots.len(),
            expected.len()
        ));
    }
    for h in &meta.slots {
        let Some(want) = expected.iter().find(|s| s.slot == h.slot) else {
            return Err(format!("slot {} is not in the model", h.slot));
        };
        if h.key_groups != want.key_groups {
            return Err(format!(
                "slot {} has key groups {:?}, the model {:?}",
                h.slot, h.key_groups, want.key_groups
            ));
        }
        let shared: Vec<&str> = h.shared.iter().map(|f| f.name.as_str()).collect();
        let want_shared: Vec<&str> = want.shared.keys().map(String::as_str).collect();
        if shared != want_shared {
            return Err(format!(
                "slot {} shared files {shared:?}, the model {want_shared:?}",
                h.slot
            ));
        }
        let mut private: Vec<&str> = h.private.iter().map(|f| f.name.as_str()).collect();
        private.sort_unstable();
        let want_private: Vec<&str> = want.private.keys().map(String::as_str).collect();
        if private != want_private {
            return Err(format!(
                "slot {} private files {private:?}, the model {want_private:?}",
                h.slot
            ));
        }
    }
    Ok(())
}

/// A restored slot directory against the expected state of its slot.
pub fn compare_dir(h: &SlotHandle, dest: &FsPath, expected: &[SlotState]) -> Result<(), String> {
    let want = expected
        .iter()
        .find(|s| s.slot == h.slot)
        .ok_or_else(|| format!("slot {} is not in the model", h.slot))?;
    let got = read_dir(dest).map_err(|e| format!("reading {}: {e}", dest.display()))?;
    let want = want.all_files();
    if got != want {
        let names = |m: &BTreeMap<String, Bytes>| m.keys().cloned().collect::<Vec<_>>();
        let differing: Vec<&String> = want
            .iter()
            .filter(|(n, c)| got.get(*n) != Some(*c))
            .map(|(n, _)| n)
            .collect();
        return Err(format!(
            "slot {} restored files {:?}, the model {:?} (differing: {differing:?})",
            h.slot,
            names(&got),
            names(&want)
        ));
    }
    Ok(())
}

/// Every object a committed checkpoint of `view` references (shared and private).
pub fn referenced(view: &View) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for c in view.committed.values() {
        for s in &c.meta.slots {
            out.extend(s.shared.iter().map(|f| f.object.clone()));
            out.extend(s.private.iter().map(|f| f.object.clone()));
        }
    }
    out
}
