//! One storage conformance suite run against every checkpoint storage: the local directory
//! (`file://`), the in-memory store (`memory://`) and S3 (the loopback server of
//! `scripts/test.sh`; see `tests/support/mod.rs` for when the S3 leg runs). It checks what the
//! checkpoint protocol relies on: put/get/list/delete semantics, multipart uploads of large
//! SSTs with bounded memory, the create-only commit of `_metadata` (including a retried create
//! whose first answer was lost), and that orphans are listed and collected.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn::KeyGroupRange;
use cairn_snapshot::fault::Op;
use cairn_snapshot::transfer::{self, Expected};
use cairn_snapshot::{
    CheckpointStore, Fault, FaultAction, FaultStore, LocalSnapshot, SlotUploadState, SnapshotError,
    StorageOptions, StorageRoot,
};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PART: u64 = 5 << 20;

fn options(base: StorageOptions) -> StorageOptions {
    let mut o = base;
    o.multipart_part_size_bytes = PART;
    o.retry_initial_backoff = Duration::from_millis(10);
    o.memory_cap_bytes = 1 << 30;
    o
}

/// The storage under test wrapped in a [`FaultStore`] (no faults until a check adds some).
fn wrapped(base: &StorageRoot, opts: &StorageOptions) -> (StorageRoot, Arc<FaultStore>) {
    let faults = FaultStore::new(base.store().clone());
    let storage = StorageRoot::with_options(
        faults.clone() as Arc<dyn ObjectStore>,
        base.root().clone(),
        base.url(),
        opts,
    );
    (storage, faults)
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The whole contract, in order.
fn storage_contract(url: &str, base_opts: StorageOptions) -> TestResult {
    let opts = options(base_opts);
    let base = StorageRoot::from_url(url, &opts)?;
    let (storage, faults) = wrapped(&base, &opts);
    let rt = rt();
    eprintln!("{url}: put/get/list/delete");
    rt.block_on(put_get_list_delete(&storage))?;
    eprintln!("{url}: create-only commit");
    rt.block_on(create_only_commit(&storage, &faults))?;
    let scratch = tempfile::tempdir()?;
    eprintln!("{url}: multipart");
    rt.block_on(multipart_streams_with_bounded_memory(
        &storage,
        &faults,
        scratch.path(),
    ))?;
    eprintln!("{url}: orphans");
    rt.block_on(orphans_are_listed_and_collected(&storage, scratch.path()))?;
    Ok(())
}

fn root_path(storage: &StorageRoot, rel: &str) -> Path {
    let root = storage.root().as_ref();
    if root.is_empty() {
        Path::from(rel)
    } else {
        Path::from(format!("{root}/{rel}"))
    }
}

async fn put_get_list_delete(s: &StorageRoot) -> TestResult {
    let a = root_path(s, "conf/dir/a");
    let b = root_path(s, "conf/dir/sub/b");
    let c = root_path(s, "conf/other/c");
    s.put(&a, Bytes::from_static(b"alpha")).await?;
    s.put(&b, Bytes::from_static(b"beta")).await?;
    s.put(&c, Bytes::from_static(b"gamma")).await?;
    assert_eq!(s.get(&a).await?, Bytes::from_static(b"alpha"));
    assert_eq!(s.size(&b).await?, Some(4));
    // Overwrite (private files and tests rely on it; commits never do).
    s.put(&a, Bytes::from_static(b"alpha2")).await?;
    assert_eq!(s.get(&a).await?, Bytes::from_static(b"alpha2"));
    // Recursive listing (order is not guaranteed: compare sets).
    let listed: BTreeSet<String> = s
        .list(&root_path(s, "conf/dir"))
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    let want: BTreeSet<String> = [a.to_string(), b.to_string()].into();
    assert_eq!(listed, want);
    // Listing with a delimiter gives the child directories.
    let dirs: BTreeSet<String> = s
        .list_dirs(&root_path(s, "conf"))
        .await?
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    let want: BTreeSet<String> = [
        root_path(s, "conf/dir").to_string(),
        root_path(s, "conf/other").to_string(),
    ]
    .into();
    assert_eq!(dirs, want);
    // Delete; deleting a missing object is not an error; reading it is `MissingFile`.
    s.delete(&a).await?;
    s.delete(&a).await?;
    assert_eq!(s.size(&a).await?, None);
    let e = s.get(&a).await.unwrap_err();
    assert!(matches!(e, SnapshotError::MissingFile { .. }), "{e}");
    for p in [&b, &c] {
        s.delete(p).await?;
    }
    assert!(s.list(&root_path(s, "conf")).await?.is_empty());
    Ok(())
}

async fn create_only_commit(s: &StorageRoot, faults: &FaultStore) -> TestResult {
    let p = root_path(s, "commit/chk-1/_metadata");
    assert!(
        s.put_create(&p, b"v1".to_vec()).await?,
        "the first create wrote"
    );
    assert!(
        !s.put_create(&p, b"v2".to_vec()).await?,
        "a second create of the same key must report that it did not write"
    );
    assert_eq!(
        s.get(&p).await?,
        Bytes::from_static(b"v1"),
        "a create overwrote"
    );
    // Raw race: of 8 concurrent creates of one key exactly one wins.
    let race = root_path(s, "commit/chk-2/_metadata");
    let store = s.store().clone();
    let results = futures::future::join_all((0..8u8).map(|i| {
        let (store, race) = (store.clone(), race.clone());
        async move {
            store
                .put_opts(
                    &race,
                    PutPayload::from(vec![i]),
                    PutOptions::from(PutMode::Create),
                )
                .await
        }
    }))
    .await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(object_store::Error::AlreadyExists { .. })))
        .count();
    assert_eq!((winners, lost), (1, 7), "{results:?}");
    // A create whose write landed but whose answer was lost: the retry finds its own bytes.
    let lost_answer = root_path(s, "commit/chk-3/_metadata");
    faults.add(Fault::on_path(Some(Op::Put), "chk-3/_metadata", FaultAction::ErrorAfter).times(1));
    let retries = s.retries();
    assert!(s.put_create(&lost_answer, b"mine".to_vec()).await?);
    assert_eq!(s.retries(), retries + 1);
    assert_eq!(s.get(&lost_answer).await?, Bytes::from_static(b"mine"));
    // ... but a retry that finds someone else's bytes is refused.
    let theirs = root_path(s, "commit/chk-4/_metadata");
    faults.add(Fault::on_path(Some(Op::Put), "chk-4/_metadata", FaultAction::Error).times(1));
    s.put(&theirs, Bytes::from_static(b"theirs")).await?; // consumes the fault, then retried
    assert!(!s.put_create(&theirs, b"mine".to_vec()).await?);
    assert_eq!(s.get(&theirs).await?, Bytes::from_static(b"theirs"));
    faults.clear();
    for m in s.list(&root_path(s, "commit")).await? {
        s.delete(&m.location).await?;
    }
    Ok(())
}

async fn multipart_streams_with_bounded_memory(
    s: &StorageRoot,
    faults: &FaultStore,
    scratch: &std::path::Path,
) -> TestResult {
    // Small file: one PUT, no multipart.
    let small = scratch.join("small.sst");
    std::fs::write(&small, pseudo_random(100_000, 1))?;
    let (puts, mps) = (faults.calls(Op::Put), faults.calls(Op::Multipart));
    transfer::upload_file(s, &small, &root_path(s, "mp/small.sst")).await?;
    assert_eq!(faults.calls(Op::Put), puts + 1);
    assert_eq!(faults.calls(Op::Multipart), mps);
    // Large file: 6.5 parts, uploaded in parts with at most 2 parts in flight, whatever the size.
    let content = pseudo_random((6 * PART + PART / 2) as usize, 2);
    let large = scratch.join("large.sst");
    std::fs::write(&large, &content)?;
    let to = root_path(s, "mp/large.sst");
    let n = transfer::upload_file(s, &large, &to).await?;
    assert_eq!(n, content.len() as u64);
    // start + 7 parts + complete
    assert_eq!(faults.calls(Op::Multipart), mps + 9);
    assert!(
        faults.max_multipart_bytes_in_flight() <= 2 * PART,
        "{} bytes in flight",
        faults.max_multipart_bytes_in_flight()
    );
    assert_eq!(s.size(&to).await?, Some(content.len() as u64));
    // A part that fails once: the file is uploaded again and the object is whole.
    faults.add(Fault::nth(Op::Multipart, 3));
    transfer::upload_file(s, &large, &root_path(s, "mp/retried.sst")).await?;
    // Streaming, verified download of both.
    let expected = Expected {
        sha256: transfer::hex(&Sha256::digest(&content)),
        size: content.len() as u64,
        compressed: false,
        stored_size: None,
        hash_placed: true,
    };
    for name in ["large.sst", "retried.sst"] {
        let dest = scratch.join(format!("down-{name}"));
        transfer::download_file(s, &root_path(s, &format!("mp/{name}")), &dest, &expected).await?;
        assert_eq!(std::fs::metadata(&dest)?.len(), content.len() as u64);
    }
    // A download whose stream fails once is retried.
    faults.add(Fault::nth(Op::Get, 1));
    let dest = scratch.join("down-again.sst");
    transfer::download_file(s, &to, &dest, &expected).await?;
    assert_eq!(std::fs::read(&dest)?, content);
    for m in s.list(&root_path(s, "mp")).await? {
        s.delete(&m.location).await?;
    }
    Ok(())
}

async fn orphans_are_listed_and_collected(
    s: &StorageRoot,
    scratch: &std::path::Path,
) -> TestResult {
    // One committed checkpoint with a shared and a private file.
    let dir = scratch.join("snap");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("000001.sst"), pseudo_random(50_000, 3))?;
    std::fs::write(dir.join("MANIFEST-000001"), b"manifest")?;
    let store = CheckpointStore::open(s.clone(), "conf-job", 1).await?;
    let snap = LocalSnapshot {
        slot: 0,
        key_groups: KeyGroupRange { start: 0, end: 127 },
        backend: "rocksdb".into(),
        states: Vec::new(),
        dir: dir.clone(),
        shared: vec!["000001.sst".into()],
        private: vec!["MANIFEST-000001".into()],
    };
    let mut state = SlotUploadState::new();
    let (handle, _) = store.upload_slot(1, &snap, &mut state, 2).await?;
    store
        .commit(1, 128, vec![handle], None, Default::default())
        .await?;
    let layout = store.layout().clone();
    // Plant orphans: an unreferenced shared object and a private file of a dead checkpoint.
    let orphan_shared = layout.resolve(&layout.shared_ref(&"ab".repeat(32), 1));
    let orphan_private = layout.resolve(&layout.private_ref(7, 1, 0, "MANIFEST-000009"));
    s.put(&orphan_shared, Bytes::from_static(b"x")).await?;
    s.put(&orphan_private, Bytes::from_static(b"y")).await?;
    let dry = store.gc(Duration::ZERO, false).await?;
    let found: BTreeSet<String> = dry.orphans.iter().cloned().collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .all(|o| orphan_shared.as_ref().ends_with(o.as_str())
                || orphan_private.as_ref().ends_with(o.as_str())),
        "{found:?}"
    );
    // Young orphans are kept (they may belong to an upload in flight).
    let young = store.gc(Duration::from_secs(3600), true).await?;
    assert_eq!((young.orphans.len(), young.too_young), (0, 2));
    store.gc(Duration::ZERO, true).await?;
    assert!(store.gc(Duration::ZERO, false).await?.orphans.is_empty());
    assert_eq!(s.size(&orphan_shared).await?, None);
    assert!(store.verify(&[1], true).await?.is_empty());
    Ok(())
}

#[test]
fn local_directory_conforms() -> TestResult {
    let dir = tempfile::tempdir()?;
    storage_contract(
        &format!("file://{}", dir.path().display()),
        StorageOptions::default(),
    )
}

#[test]
fn in_memory_store_conforms() -> TestResult {
    storage_contract("memory://", StorageOptions::default())
}

#[test]
fn s3_conforms() -> TestResult {
    let Some(t) = support::s3_target("s3_conforms") else {
        return Ok(());
    };
    storage_contract(&t.url, t.options)
}

#[test]
fn storage_options_are_validated() {
    let mut o = StorageOptions::default();
    o.multipart_part_size_bytes = 1 << 20;
    let e = StorageRoot::from_url("memory://", &o).unwrap_err();
    assert!(e.to_string().contains("multipart-part-size-bytes"), "{e}");
    let mut o = StorageOptions::default();
    o.retry_max_attempts = 0;
    let e = StorageRoot::from_url("memory://", &o).unwrap_err();
    assert!(e.to_string().contains("retry-max-attempts"), "{e}");
}
