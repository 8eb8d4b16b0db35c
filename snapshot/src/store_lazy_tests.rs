//! Range reads of a lazily restored shared file from `file://` storage: one `pread` of the
//! object, bounded by the recorded size; an object of another size, a missing object and one
//! truncated after it was opened are typed errors, never a short answer.

use std::sync::Arc;

use super::*;
use crate::storage::StorageOptions;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn shared(object: &str, size: u64) -> LazySharedFile {
    LazySharedFile {
        name: "000001.sst".into(),
        size,
        object: Path::from(object),
        sha256: String::new(),
    }
}

#[test]
fn local_range_reads_are_preads_bounded_by_the_recorded_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let storage = StorageRoot::from_url(&url, &StorageOptions::default())?;
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("job/shared/a");
    std::fs::create_dir_all(dir.path().join("job/shared"))?;
    std::fs::write(&path, &bytes)?;
    let f = shared("job/shared/a", bytes.len() as u64);
    let file = CheckpointStore::open_lazy_local(&storage, &f)?
        .ok_or("file:// storage opened from its URL is read directly")?;
    let mut buf = vec![0; 4096];
    assert_eq!(
        CheckpointStore::pread_lazy_range(&f, &file, 100, &mut buf)?,
        4096
    );
    assert_eq!(buf[..], bytes[100..4196]);
    // At the end: what is left; past it: nothing.
    assert_eq!(
        CheckpointStore::pread_lazy_range(&f, &file, 9_000, &mut buf)?,
        1_000
    );
    assert_eq!(buf[..1_000], bytes[9_000..]);
    assert_eq!(
        CheckpointStore::pread_lazy_range(&f, &file, 10_000, &mut buf)?,
        0
    );
    // Truncated since it was opened: a size mismatch, never a short answer.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(5_000)?;
    let short = CheckpointStore::pread_lazy_range(&f, &file, 4_000, &mut buf);
    assert!(
        matches!(short, Err(SnapshotError::SizeMismatch { .. })),
        "{short:?}"
    );
    // Opened at another size, or gone: typed errors.
    let other = CheckpointStore::open_lazy_local(&storage, &f);
    assert!(
        matches!(
            other,
            Err(SnapshotError::SizeMismatch { actual: 5_000, .. })
        ),
        "{other:?}"
    );
    std::fs::remove_file(&path)?;
    let gone = CheckpointStore::open_lazy_local(&storage, &f);
    assert!(
        matches!(gone, Err(SnapshotError::MissingFile { .. })),
        "{gone:?}"
    );
    // A store built by the caller over the same directory is read through the store.
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path())?;
    let built = StorageRoot::from_store(Arc::new(local), Path::from(""), url);
    assert!(CheckpointStore::open_lazy_local(&built, &f)?.is_none());
    Ok(())
}
