//! Checkpoint storage chosen by URL, through `object_store` (no hand-written storage client):
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/dir`, or a plain path | `LocalFileSystem` rooted at the directory (created) |
//! | `s3://bucket/prefix` | `AmazonS3`, configured from `AWS_*` env vars and [`StorageOptions`] |
//! | `memory://` | `InMemory`, with a total size cap (like Flink's JobManager storage) |

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};

/// Storage settings that are not part of the URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageOptions {
    /// S3 endpoint (e.g. `http://127.0.0.1:5055` for a local S3-compatible server). Default: AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region. Default: `AWS_REGION` or `us-east-1`.
    pub s3_region: Option<String>,
    /// Access key id. Default: `AWS_ACCESS_KEY_ID`.
    pub s3_access_key_id: Option<String>,
    /// Secret key. Default: `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: Option<String>,
    /// Allow plain HTTP endpoints (local test servers). Default false.
    pub s3_allow_http: bool,
    /// Size cap of `memory://` storage in bytes. Default 512 MiB.
    pub memory_cap_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            memory_cap_bytes: 512 << 20,
        }
    }
}

/// An object store plus the root path inside it where checkpoint jobs live.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    memory_cap: Option<u64>,
}

impl CheckpointStorage {
    /// Opens the storage named by `url` (see the module doc).
    pub fn from_url(url: &str, options: &StorageOptions) -> Result<Self> {
        let bad = |reason: String| SnapshotError::BadLocation {
            url: url.to_string(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("memory://") {
            if !rest.trim_matches('/').is_empty() {
                return Err(bad("memory:// takes no path".into()));
            }
            return Ok(Self {
                store: Arc::new(InMemory::new()),
                root: Path::default(),
                url: url.into(),
                memory_cap: Some(options.memory_cap_bytes),
            });
        }
        if url.starts_with("s3://") {
            let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("missing bucket".into()))?;
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(e) = &options.s3_endpoint {
                b = b.with_endpoint(e);
            }
            let region = options
                .s3_region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into());
            b = b.with_region(region).with_allow_http(options.s3_allow_http);
            if let Some(k) = &options.s3_access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &options.s3_secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let store = b.build().map_err(|e| bad(e.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                root: Path::from(parsed.path().trim_matches('/')),
                url: url.into(),
                memory_cap: None,
            });
        }
        let dir = match url.strip_prefix("file://") {
            Some(p) => std::path::PathBuf::from(p),
            None if url.contains("://") => {
                return Err(bad("supported schemes: file://, s3://, memory://".into()));
            }
            None => std::path::PathBuf::from(url),
        };
        std::fs::create_dir_all(&dir).map_err(|e| bad(format!("cannot create directory: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store.with_automatic_cleanup(true)),
            root: Path::default(),
            url: url.into(),
            memory_cap: None,
        })
    }

    /// Wraps any object store (tests inject fault-injecting stores this way).
    pub fn from_store(store: Arc<dyn ObjectStore>, root: Path, url: impl Into<String>) -> Self {
        Self {
            store,
            root,
            url: url.into(),
            memory_cap: None,
        }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The root path of checkpoint jobs inside the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fails with `StorageFull` when a put of `needed` bytes would exceed the memory cap.
    pub async fn check_capacity(&self, needed: u64) -> Result<()> {
        let Some(cap) = self.memory_cap else {
            return Ok(());
        };
        let used: u64 = self.list(&self.root).await?.iter().map(|m| m.size).sum();
        if used + needed > cap {
            return Err(SnapshotError::StorageFull { used, needed, cap });
        }
        Ok(())
    }

    /// Writes `bytes` only if `path` does not exist (the commit of a checkpoint).
    pub async fn put_create(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        self.check_capacity(bytes.len() as u64).await?;
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(SnapshotError::Invariant(
                format!("{path} already exists; refusing to overwrite a commit"),
            )),
            Err(e) => Err(SnapshotError::storage("create", path)(e)),
        }
    }

    /// Writes (or overwrites) a small object.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.check_capacity(bytes.len() as u64).await?;
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(SnapshotError::storage("put", path))
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        let r = self
            .store
            .get(path)
            .await
            .map_err(SnapshotError::storage("get", path))?;
        r.bytes().await.map_err(SnapshotError::storage("get", path))
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn size(&self, path: &Path) -> Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(SnapshotError::storage("head", path)(e)),
        }
    }

    /// Deletes an object; a missing object is not an error (S3 and local disagree otherwise).
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(SnapshotError::storage("delete", path)(e)),
        }
    }

    /// Server-side copy (S3: CopyObject; local: a file copy).
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.store
            .copy(from, to)
            .await
            .map_err(SnapshotError::storage("copy", from))
    }

    /// Every object under `prefix` (recursive).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let prefix_opt = (!prefix.as_ref().is_empty()).then_some(prefix);
        self.store
            .list(prefix_opt)
            .try_collect()
            .await
            .map_err(SnapshotError::storage("list", prefix))
    }

    /// The immediate child directories of `prefix`.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        let prefix_opt = (!prefix.as_ref().is_empty()).then_some(prefix);
        let r = self
            .store
            .list_with_delimiter(prefix_opt)
            .await
            .map_err(SnapshotError::storage("list", prefix))?;
        Ok(r.common_prefixes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_enforces_its_cap() {
        let opts = StorageOptions {
            memory_cap_bytes: 1000,
            ..StorageOptions::default()
        };
        let s = CheckpointStorage::from_url("memory://", &opts).unwrap();
        s.put(&Path::from("a"), Bytes::from(vec![0u8; 600]))
            .await
            .unwrap();
        let e = s
            .put(&Path::from("b"), Bytes::from(vec![0u8; 600]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::StorageFull {
                    used: 600,
                    needed: 600,
                    cap: 1000
                }
            ),
            "{e}"
        );
        // Deleting frees room.
        s.delete(&Path::from("a")).await.unwrap();
        s.put(&Path::from("b"), Bytes::from(vec![0u8; 600]))
            .await
            .unwrap();
    }

    #[test]
    fn bad_urls_are_named() {
        let e = CheckpointStorage::from_url("ftp://x/y", &StorageOptions::default()).unwrap_err();
        assert!(e.to_string().contains("ftp://x/y"), "{e}");
        assert!(CheckpointStorage::from_url("memory://x", &StorageOptions::default()).is_err());
        assert!(CheckpointStorage::from_url("s3://", &StorageOptions::default()).is_err());
    }
}
