//! Restore treats storage as untrusted input (issue "checkpoint protocol hardening"): a
//! `_metadata` edited by an attacker or damaged by a bug is refused with a typed error naming
//! the object and the rule, and touches nothing outside the slot's restore directory.
//!
//! Each case commits a real checkpoint (heap and RocksDB backends, `file://` storage), edits its
//! `_metadata` (or an object) on disk, restores, and asserts the error and that every file
//! outside the restore directory is exactly as before: the sentinel `outside/victim.txt` that
//! hostile names point at, the checkpoint storage and the slots' working directories.
//!
//! Before the fix, names were joined onto the restore directory unchecked: the download removed
//! `../../outside/victim.txt` and hard-linked the object there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn::engine::checkpoint::{CheckpointLocation, Checkpointer, RestoreFetch, new_job_name};
use cairn::{BackendKind, CairnConfig, ErrorKind, KeyGroupRange, Slot, VoidNamespace};
use serde_json::Value;

mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const VICTIM: &str = "precious bytes outside the slot directory";

/// A committed checkpoint of `slots` slots, and where everything is.
struct Committed {
    root: tempfile::TempDir,
    cfg: CairnConfig,
    job: String,
    id: u64,
    slots: u32,
}

impl Committed {
    fn new(backend: BackendKind, slots: u32) -> Result<Self, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let mut cfg = CairnConfig::default();
        cfg.state.backend = backend;
        cfg.state.working_dir = root.path().join("work");
        cfg.checkpoint.dir = format!("file://{}", root.path().join("checkpoints").display());
        cfg.checkpoint.restore_fetch = support::restore_fetch();
        std::fs::create_dir_all(root.path().join("outside"))?;
        std::fs::write(root.path().join("outside/victim.txt"), VICTIM)?;
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
        let id = cp.trigger_checkpoint();
        let mut syncs = Vec::new();
        for i in 0..slots {
            let mut slot = Slot::builder(&cfg).slot(i, slots).open()?;
            let count = slot.value_state::<u64>("op", "count")?;
            for k in 0..2_000u64 {
                let Ok(scope) = slot.scope(&k, &VoidNamespace) else {
                    continue; // not this slot's key group
                };
                count.update(&mut slot, &scope, &(k + 1))?;
            }
            syncs.push(slot.snapshot_for_checkpoint(id)?);
        }
        cp.complete(id, syncs)?;
        let job = cp.job().to_string();
        Ok(Self {
            root,
            cfg,
            job,
            id,
            slots,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn metadata_path(&self, id: u64) -> PathBuf {
        self.path(&format!("checkpoints/{}/chk-{id}/_metadata", self.job))
    }

    fn metadata(&self) -> Result<Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_slice(&std::fs::read(
            self.metadata_path(self.id),
        )?)?)
    }

    fn write_metadata(&self, id: u64, m: &Value) -> TestResult {
        let p = self.metadata_path(id);
        std::fs::create_dir_all(p.parent().ok_or("no parent")?)?;
        std::fs::write(p, serde_json::to_vec_pretty(m)?)?;
        Ok(())
    }

    /// Restores checkpoint `id` into every slot of a new job; the first error.
    fn restore(&self, id: u64) -> cairn::engine::Result<()> {
        let work = self.path("restore-work");
        let mut cfg = self.cfg.clone();
        cfg.state.working_dir = work.clone();
        let mut cp = Checkpointer::open(&cfg.checkpoint, &new_job_name(), 128)?;
        let restored = cp.resume_from(&CheckpointLocation::parse(&format!(
            "{}/{}/chk-{id}",
            cfg.checkpoint.dir, self.job
        ))?)?;
        for i in 0..self.slots {
            let range = KeyGroupRange::for_slot(128, self.slots, i)?;
            let dest = work.join(format!("restore-slot-{i}"));
            let (files, _) =
                cp.fetch_slot_files(&restored, range, &work.join(format!("slot-{i}")), &dest)?;
            let slot = Slot::builder(&cfg)
                .slot(i, self.slots)
                .restore(files)
                .open()?;
            // A lazily restored slot fetches its SSTs now (a no-op when eager).
            slot.wait_local()?;
            drop(slot);
        }
        Ok(())
    }
}

/// Every file under `root` except the restore's own working directory and the restoring job's
/// own checkpoint directory (its writer lease): path -> (size, bytes hash, link target).
fn tree(root: &Path, job: &str) -> BTreeMap<PathBuf, (u64, u64, Option<PathBuf>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.starts_with(root.join("restore-work")) {
                continue;
            }
            if p.parent() == Some(&root.join("checkpoints")) && !p.ends_with(job) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
                continue;
            }
            let link = std::fs::read_link(&p).ok();
            let bytes = std::fs::read(&p).unwrap_or_default();
            let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
            });
            out.insert(p, (m.len(), hash, link));
        }
    }
    out
}

/// Restores after `edit`, expects a `Corrupt` error whose message contains `needle`, and checks
/// that nothing outside the restore directory changed.
fn expect_refused(c: &Committed, id: u64, needle: &str, what: &str) -> TestResult {
    let before = tree(c.root.path(), &c.job);
    let r = c.restore(id);
    let after = tree(c.root.path(), &c.job);
    let e = match r {
        Ok(()) => panic!("{what}: restore succeeded"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
    assert!(e.to_string().contains(needle), "{what}: {e}");
    assert_eq!(
        std::fs::read_to_string(c.path("outside/victim.txt"))?,
        VICTIM,
        "{what}: the file outside the slot directory was touched"
    );
    assert_eq!(
        before, after,
        "{what}: files outside the restore directory changed"
    );
    let _ = std::fs::remove_dir_all(c.path("restore-work"));
    Ok(())
}

/// The first file of slot 0 (a shared SST for RocksDB, the heap snapshot for heap): the one
/// whose name the hostile cases change.
fn first_file(m: &mut Value, backend: BackendKind) -> &mut Value {
    let list = if backend == BackendKind::RocksDb {
        "shared"
    } else {
        "private"
    };
    &mut m["slots"][0][list][0]
}

fn hostile_names(backend: BackendKind) -> TestResult {
    hostile_names_with(backend, RestoreFetch::Eager)
}

fn hostile_names_with(backend: BackendKind, fetch: RestoreFetch) -> TestResult {
    let mut c = Committed::new(backend, 1)?;
    c.cfg.checkpoint.restore_fetch = fetch;
    let original = c.metadata()?;
    // From the restore directory (`restore-work/restore-slot-0`, heap snapshots one level
    // deeper) up to the root, then into `outside/`.
    let up = if backend == BackendKind::RocksDb {
        "../../outside/victim.txt"
    } else {
        "../../../outside/victim.txt"
    };
    let absolute = c.path("outside/victim.txt").display().to_string();
    let cases = [
        ("relative name", up.to_string()),
        ("absolute name", absolute),
        ("name with a separator", "outside/victim.txt".to_string()),
        ("name with NUL", "victim\0.sst".to_string()),
        ("dot-dot", "..".to_string()),
    ];
    for (what, name) in cases {
        let mut m = original.clone();
        first_file(&mut m, backend)["name"] = Value::String(name);
        c.write_metadata(c.id, &m)?;
        expect_refused(&c, c.id, "bad file name", &format!("{backend:?} {what}"))?;
    }
    // An object outside the job's own directory (and not of a job it records).
    let mut m = original.clone();
    let obj = first_file(&mut m, backend)["object"]
        .as_str()
        .ok_or("object")?
        .to_string();
    let moved = obj.replacen(&c.job, "another-job", 1);
    first_file(&mut m, backend)["object"] = Value::String(moved);
    c.write_metadata(c.id, &m)?;
    expect_refused(&c, c.id, "outside", &format!("{backend:?} foreign object"))?;
    // And one escaping the storage root.
    let mut m = original.clone();
    first_file(&mut m, backend)["object"] =
        Value::String(format!("{}/../../outside/victim.txt", c.job));
    c.write_metadata(c.id, &m)?;
    expect_refused(
        &c,
        c.id,
        "object reference",
        &format!("{backend:?} escaping object"),
    )?;
    // The untouched metadata still restores.
    c.write_metadata(c.id, &original)?;
    c.restore(c.id)?;
    Ok(())
}

#[test]
fn hostile_file_names_are_refused_and_touch_nothing_outside_heap() -> TestResult {
    hostile_names(BackendKind::Heap)
}

#[test]
fn hostile_file_names_are_refused_and_touch_nothing_outside_rocksdb() -> TestResult {
    hostile_names(BackendKind::RocksDb)
}

/// Lazily, the same names and objects are refused before anything is created, and the
/// untouched metadata restores and fetches every file.
#[test]
fn hostile_file_names_are_refused_and_touch_nothing_outside_rocksdb_lazy() -> TestResult {
    hostile_names_with(BackendKind::RocksDb, RestoreFetch::Lazy)
}

#[test]
fn metadata_of_another_checkpoint_id_is_refused() -> TestResult {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let c = Committed::new(backend, 1)?;
        // A copy of chk-1's metadata under chk-9: it says it is checkpoint 1.
        c.write_metadata(9, &c.metadata()?)?;
        expect_refused(&c, 9, "read from chk-9", &format!("{backend:?}"))?;
    }
    Ok(())
}

/// Slot 1 of 2 dropped from the metadata: its key groups are covered by nothing. Before the
/// fix the heap backend restored them as empty state.
#[test]
fn key_groups_not_covered_are_an_error_not_empty_state() -> TestResult {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let c = Committed::new(backend, 2)?;
        let original = c.metadata()?;
        let mut m = original.clone();
        m["slots"].as_array_mut().ok_or("slots")?.truncate(1);
        c.write_metadata(c.id, &m)?;
        expect_refused(
            &c,
            c.id,
            "not covered",
            &format!("{backend:?} missing slot"),
        )?;
        // Two slots claiming the same key groups.
        let mut m = original.clone();
        m["slots"][1]["key_groups"]["start"] = Value::from(0);
        c.write_metadata(c.id, &m)?;
        expect_refused(&c, c.id, "overlap", &format!("{backend:?} overlap"))?;
    }
    Ok(())
}

/// A private file replaced by a zstd bomb (50 MB of zeros in ~5 KB): decompression stops at
/// the size the metadata records instead of writing all of it.
#[test]
fn decompression_stops_at_the_recorded_size() -> TestResult {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let c = Committed::new(backend, 1)?;
        let m = c.metadata()?;
        let private = &m["slots"][0]["private"][0];
        let recorded = private["size"].as_u64().ok_or("size")?;
        let object = private["object"].as_str().ok_or("object")?;
        let bomb = zstd::encode_all(std::io::Read::take(std::io::repeat(0), 50 << 20), 19)?;
        std::fs::write(c.path(&format!("checkpoints/{object}")), &bomb)?;
        let mut m = m.clone();
        m["slots"][0]["private"][0]["stored_size"] = Value::from(bomb.len() as u64);
        c.write_metadata(c.id, &m)?;
        let e = c.restore(c.id).expect_err("a bomb restored");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "expected {recorded} bytes, actual {}",
                recorded + 1
            )),
            "{backend:?}: decompression did not stop at the recorded size: {msg}"
        );
    }
    Ok(())
}

/// `_metadata` above the 64 MiB cap is refused before it is parsed.
#[test]
fn oversized_metadata_is_refused() -> TestResult {
    let c = Committed::new(BackendKind::Heap, 1)?;
    let mut m = c.metadata()?;
    m["properties"]["padding"] = Value::String("x".repeat(65 << 20));
    c.write_metadata(c.id, &m)?;
    expect_refused(&c, c.id, "larger than", "oversized _metadata")?;
    Ok(())
}

/// A stored full-snapshot TTL (`full_snapshot_ttl_ms`, read by canonical savepoints as a loop's
/// expiry bound) of 0 or beyond `i64::MAX` is refused on restore and by a savepoint written from
/// the checkpoint, before either uses it; the checkpoint stays as committed.
#[test]
fn hostile_full_snapshot_ttls_are_refused() -> TestResult {
    use cairn::{SavepointKind, SavepointLocation, create_savepoint};
    let c = Committed::new(BackendKind::RocksDb, 1)?;
    let original = c.metadata()?;
    for bad in [0u64, u64::MAX] {
        let mut m = original.clone();
        m["slots"][0]["states"][0]["full_snapshot_ttl_ms"] = Value::from(bad);
        c.write_metadata(c.id, &m)?;
        expect_refused(&c, c.id, "full_snapshot_ttl_ms", &format!("ttl {bad}"))?;
        let before = tree(c.root.path(), &c.job);
        let target = format!("file://{}/sp-{bad}", c.path("savepoints").display());
        let source = CheckpointLocation::parse(&format!(
            "file://{}/{}/chk-{}",
            c.path("checkpoints").display(),
            c.job,
            c.id
        ))?;
        let e = create_savepoint(
            &c.cfg,
            &source,
            &SavepointLocation::parse(&target)?,
            SavepointKind::Canonical,
        )
        .err()
        .ok_or("a savepoint of hostile metadata was written")?;
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("full_snapshot_ttl_ms"), "{e}");
        assert_eq!(
            before,
            tree(c.root.path(), &c.job),
            "ttl {bad}: the job changed"
        );
    }
    // The checkpoint as committed still restores.
    c.write_metadata(c.id, &original)?;
    c.restore(c.id)?;
    Ok(())
}
