//! Checkpoint storage chosen by URL, through `object_store` (no hand-written storage client):
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/dir`, or a plain path | `LocalFileSystem` rooted at the directory (created) |
//! | `s3://bucket/prefix` | `AmazonS3`, configured from `AWS_*` env vars and [`StorageOptions`] |
//! | `memory://` | `InMemory`, with a total size cap (like Flink's JobManager storage) |
//!
//! ## Retries
//! Two layers. S3 requests go through `object_store`'s own `RetryConfig` (exponential
//! backoff on connection errors, 5xx and throttling, per HTTP request; `s3-max-retries`,
//! `s3-retry-timeout`). On top, every store gets Cairn's retry of whole operations
//! (`retry-max-attempts`, exponential backoff from `retry-initial-backoff` to
//! `retry-max-backoff`) for what a request-level retry cannot redo: a download stream cut
//! mid-body, a multipart upload whose part failed (the file is uploaded again from the start),
//! a local or in-memory store that has no retry of its own, and anything still failing after
//! `object_store` gave up. Only transient errors are retried ([`SnapshotError::is_transient`]);
//! "missing", "exists", permission and checksum errors are answers, not glitches. On S3 the two
//! layers multiply (3 x 11 attempts at most with the defaults), bounded in time by
//! `s3-retry-timeout` per request and the checkpoint timeout overall.
//!
//! ## The commit is a create-only put
//! `_metadata` is written with `PutMode::Create` (S3: `If-None-Match: *`; local: a hard link
//! that fails on an existing name), so two writers can never both commit one checkpoint id and
//! a commit never overwrites another. The loopback S3 server of the tests (moto 5.x) honours it:
//! the conformance suite (`tests/object_store_conformance.rs`) checks that a second create gets
//! `AlreadyExists` and leaves the first content, and that of 8 concurrent creates exactly one
//! wins; a server that ignored the header would fail that test, not weaken the commit silently.
//! A retried create can meet its own earlier attempt (the write landed, the answer was lost):
//! [`StorageRoot::put_create`] then reads the object back and succeeds only if it holds
//! exactly the bytes it was writing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, SnapshotError};
use crate::fault::{FailPoint, FailPoints};

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
    /// Files larger than this upload with a multipart upload in parts of this size; smaller
    /// ones with one PUT. Memory per upload stays at about 3 parts whatever the file size.
    /// Default 8 MiB, allowed [5 MiB, 5 GiB] (S3's part limits). Larger parts = fewer requests
    /// (S3 bills per request) but more memory per transfer thread.
    /// Flink: `s3.upload.part.size` of its S3 filesystems.
    pub multipart_part_size_bytes: u64,
    /// Attempts of one storage operation (an upload, a download, a put, a list) on transient
    /// errors, the first included. Default 3; 1 disables Cairn's retry. See the module doc.
    pub retry_max_attempts: u32,
    /// Backoff before the first retry; doubles per attempt. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Upper bound of the backoff. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// `object_store`'s retries per S3 request. Default 10 (its default).
    /// Flink (Presto S3): `s3.max-error-retries`.
    pub s3_max_retries: usize,
    /// `object_store` stops retrying an S3 request after this long. Default 3 min (its default;
    /// keep it below the 5 min validity of a signed request).
    #[serde(with = "humantime_serde")]
    pub s3_retry_timeout: Duration,
    /// `file://` storage only: flush every written file and its directory to the disk before a
    /// write returns, so a `_metadata` never reaches the disk before the files it names (a
    /// power loss could otherwise leave a committed checkpoint over empty files). Default true;
    /// the cost is measured in `benches/RESULTS.md` ("fsync"). S3 is durable when it answers.
    pub fsync: bool,
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
            multipart_part_size_bytes: 8 << 20,
            retry_max_attempts: 3,
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            s3_max_retries: 10,
            s3_retry_timeout: Duration::from_secs(180),
            fsync: true,
        }
    }
}

impl StorageOptions {
    /// The longest one storage operation takes through Cairn's retry on S3: every attempt
    /// runs until `object_store` gives up (`s3-retry-timeout`), with the longest backoff
    /// between attempts. Garbage collection's grace must cover a commit, which is three
    /// operations (the lease check and renewal, the `_metadata` put): see
    /// `cairn_snapshot::gc`.
    pub fn max_operation_time(&self) -> Duration {
        (self.s3_retry_timeout + self.retry_max_backoff) * self.retry_max_attempts.max(1)
    }

    /// Checks the options, naming the field.
    pub fn validate(&self) -> Result<()> {
        // S3 rejects non-final parts under 5 MiB and parts over 5 GiB.
        if !(5 << 20..=5 << 30).contains(&self.multipart_part_size_bytes) {
            return Err(SnapshotError::InvalidOption {
                field: "multipart-part-size-bytes",
                value: self.multipart_part_size_bytes.to_string(),
                allowed: "[5 MiB, 5 GiB]",
            });
        }
        if !(1..=100).contains(&self.retry_max_attempts) {
            return Err(SnapshotError::InvalidOption {
                field: "retry-max-attempts",
                value: self.retry_max_attempts.to_string(),
                allowed: "[1, 100]",
            });
        }
        // A zero backoff would hammer a struggling server; a backoff above the maximum is a typo.
        if self.retry_initial_backoff.is_zero()
            || self.retry_initial_backoff > self.retry_max_backoff
        {
            return Err(SnapshotError::InvalidOption {
                field: "retry-initial-backoff",
                value: format!("{:?}", self.retry_initial_backoff),
                allowed: "> 0 and <= retry-max-backoff",
            });
        }
        Ok(())
    }
}

/// Cairn's retry of whole operations (see the module doc).
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    max: Duration,
}

impl From<&StorageOptions> for RetryPolicy {
    fn from(o: &StorageOptions) -> Self {
        Self {
            max_attempts: o.retry_max_attempts,
            initial: o.retry_initial_backoff,
            max: o.retry_max_backoff,
        }
    }
}

/// The root of checkpoint storage (one `checkpoint.dir` URL): an object store plus the path
/// inside it where the jobs' directories live. One job's checkpoints under it are a
/// [`CheckpointStore`](crate::CheckpointStore).
#[derive(Clone, Debug)]
pub struct StorageRoot {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    memory_cap: Option<u64>,
    part_size: usize,
    retry: RetryPolicy,
    retries: Arc<AtomicU64>,
    fail_points: Option<Arc<FailPoints>>,
    clock: Arc<dyn Clock>,
    /// The directory behind `file://` storage (its crash leftovers are found by walking it).
    local_dir: Option<std::path::PathBuf>,
    /// Set for `file://` storage opened by [`StorageRoot::from_url`]: uploads copy straight
    /// into the directory (see [`StorageRoot::direct_local`]).
    direct: Option<DirectLocal>,
}

/// `file://` storage that uploads write without going through the object store.
#[derive(Clone, Debug)]
pub struct DirectLocal {
    /// The directory the store is rooted at: object `a/b` is the file `<dir>/a/b`.
    pub dir: std::path::PathBuf,
    /// [`StorageOptions::fsync`].
    pub fsync: bool,
}

impl DirectLocal {
    /// The file of object `path`. `object_store`'s `Path` has no empty, `.` or `..` part, so
    /// the file is inside `dir`.
    pub fn path_of(&self, path: &Path) -> std::path::PathBuf {
        let mut p = self.dir.clone();
        for part in path.parts() {
            p.push(part.as_ref());
        }
        p
    }
}

impl StorageRoot {
    /// Opens the storage named by `url` (see the module doc).
    pub fn from_url(url: &str, options: &StorageOptions) -> Result<Self> {
        options.validate()?;
        let bad = |reason: String| SnapshotError::BadLocation {
            url: url.to_string(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("memory://") {
            if !rest.trim_matches('/').is_empty() {
                return Err(bad("memory:// takes no path".into()));
            }
            let mut s =
                Self::with_options(Arc::new(InMemory::new()), Path::default(), url, options);
            s.memory_cap = Some(options.memory_cap_bytes);
            return Ok(s);
        }
        if url.starts_with("s3://") {
            return s3(url, options).map_err(bad);
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
        let store = Arc::new(store.with_automatic_cleanup(true).with_fsync(options.fsync));
        let mut s = Self::with_options(store, Path::default(), url, options);
        let dir = std::fs::canonicalize(&dir)
            .map_err(|e| bad(format!("cannot resolve directory: {e}")))?;
        s.direct = Some(DirectLocal {
            dir: dir.clone(),
            fsync: options.fsync,
        });
        s.local_dir = Some(dir);
        Ok(s)
    }

    /// Wraps any object store (tests inject fault-injecting stores this way), with default
    /// options.
    pub fn from_store(store: Arc<dyn ObjectStore>, root: Path, url: impl Into<String>) -> Self {
        Self::with_options(store, root, url, &StorageOptions::default())
    }

    /// Wraps any object store with `options` (part size, retries; the S3 and memory settings
    /// only apply to [`StorageRoot::from_url`]).
    pub fn with_options(
        store: Arc<dyn ObjectStore>,
        root: Path,
        url: impl Into<String>,
        options: &StorageOptions,
    ) -> Self {
        Self {
            store,
            root,
            url: url.into(),
            memory_cap: None,
            part_size: usize::try_from(options.multipart_part_size_bytes).unwrap_or(8 << 20),
            retry: RetryPolicy::from(options),
            retries: Arc::new(AtomicU64::new(0)),
            fail_points: None,
            clock: Arc::new(SystemClock),
            local_dir: None,
            direct: None,
        }
    }

    /// The same storage, reading time from `clock` (tests, the simulation).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The clock every decision by time reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time of [`StorageRoot::clock`], ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// What makes this storage the same as another: the canonical local directory for
    /// `file://` storage (so `dir`, `./dir` and `file:///abs/dir` agree), else the URL without
    /// trailing slashes. Local recovery records it, so a snapshot of a same-named job in other
    /// storage is never taken for this one.
    pub fn identity(&self) -> String {
        if let Some(d) = &self.local_dir {
            return format!("file://{}", d.display());
        }
        // A store built by the caller over a local directory (a fault injector, say): resolve
        // its URL the way `from_url` resolves a local one.
        let local = match self.url.strip_prefix("file://") {
            Some(p) => Some(p),
            None if !self.url.contains("://") => Some(self.url.as_str()),
            None => None,
        };
        match local.and_then(|p| std::fs::canonicalize(p).ok()) {
            Some(d) => format!("file://{}", d.display()),
            None => self.url.trim_end_matches('/').to_string(),
        }
    }

    /// For `file://` storage, the local directory behind it.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    /// For `file://` storage opened from its URL, the directory that file uploads copy into
    /// directly (a kernel copy, no buffer in the process: see `transfer::upload_file`).
    /// `None` for every store built by the caller, e.g. a fault injector over a local
    /// directory, so that every write of those goes through the store they wrap.
    pub fn direct_local(&self) -> Option<&DirectLocal> {
        self.direct.as_ref()
    }

    /// The same storage reading the local directory `dir` behind the store (a store built by
    /// the caller over a `LocalFileSystem`, e.g. wrapped in a fault injector).
    pub fn with_local_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }

    /// The same storage, with `fail_points` checked at each protocol step.
    pub fn with_fail_points(mut self, fail_points: Arc<FailPoints>) -> Self {
        self.fail_points = Some(fail_points);
        self
    }

    /// The protocol is about to do `point` on `path`: fails when a test armed that fail point.
    pub fn fail_point(&self, point: FailPoint, path: &Path) -> Result<()> {
        match &self.fail_points {
            Some(fp) => fp.check(point, path),
            None => Ok(()),
        }
    }

    /// Multipart part size in bytes (files up to this size go in one PUT).
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Operations retried so far by Cairn's retry layer (all clones of this storage count).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs `op` (named `what` on `path` in logs) until it succeeds, fails with a
    /// non-transient error, or used `retry-max-attempts`; the backoff doubles from
    /// `retry-initial-backoff` up to `retry-max-backoff`. `op` gets the attempt number (1-based).
    pub async fn retrying<T, F, Fut>(&self, what: &str, path: &Path, mut op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut backoff = self.retry.initial;
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Err(e) if e.is_transient() && attempt < self.retry.max_attempts => {
                    tracing::warn!(%path, attempt, error = %e, "storage {what} failed; retrying in {backoff:?}");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max);
                    attempt += 1;
                }
                r => return r,
            }
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

    /// Writes `bytes` only if `path` does not exist (the commit of a checkpoint, a writer's
    /// lease). Returns `true` when this call wrote it, `false` when `path` already held other
    /// bytes (someone else's commit: never overwritten).
    ///
    /// Retried on transient errors. A retry that finds the object already there reads it back:
    /// holding exactly `bytes`, it is this call's own earlier attempt whose answer was lost, and
    /// the put succeeded. The call is never abandoned halfway by Cairn (no timeout wraps it), so
    /// when it returns, no attempt of it is still running.
    pub async fn put_create(&self, path: &Path, bytes: Vec<u8>) -> Result<bool> {
        self.check_capacity(bytes.len() as u64).await?;
        let bytes = Bytes::from(bytes);
        let exists = self
            .retrying("create", path, |attempt| {
                let bytes = bytes.clone();
                async move {
                    let opts = PutOptions::from(PutMode::Create);
                    match self
                        .store
                        .put_opts(path, PutPayload::from(bytes), opts)
                        .await
                    {
                        Ok(_) => Ok(None),
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(Some(attempt)),
                        Err(e) => Err(SnapshotError::storage("create", path)(e)),
                    }
                }
            })
            .await?;
        match exists {
            None => Ok(true),
            Some(attempt) if attempt > 1 => Ok(self.get(path).await? == bytes),
            Some(_) => Ok(false),
        }
    }

    /// Reads a whole object of at most `limit` bytes; a larger one is refused with `TooLarge`
    /// after reading at most `limit + 1` bytes of it (`what` names the limit).
    pub async fn get_capped(&self, path: &Path, limit: u64, what: &'static str) -> Result<Bytes> {
        self.retrying("get", path, |_| async {
            let r = self
                .store
                .get(path)
                .await
                .map_err(SnapshotError::storage("get", path))?;
            if r.meta.size > limit {
                return Err(SnapshotError::TooLarge {
                    path: path.to_string(),
                    what,
                    limit,
                });
            }
            let mut stream = r.into_stream();
            let mut out = bytes::BytesMut::new();
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(SnapshotError::storage("get", path))?
            {
                if (out.len() + chunk.len()) as u64 > limit {
                    return Err(SnapshotError::TooLarge {
                        path: path.to_string(),
                        what,
                        limit,
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out.freeze())
        })
        .await
    }

    /// Writes (or overwrites) a small object.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.check_capacity(bytes.len() as u64).await?;
        self.retrying("put", path, |_| async {
            self.store
                .put(path, PutPayload::from(bytes.clone()))
                .await
                .map(|_| ())
                .map_err(SnapshotError::storage("put", path))
        })
        .await
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        self.retrying("get", path, |_| async {
            let r = self
                .store
                .get(path)
                .await
                .map_err(SnapshotError::storage("get", path))?;
            r.bytes().await.map_err(SnapshotError::storage("get", path))
        })
        .await
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn size(&self, path: &Path) -> Result<Option<u64>> {
        self.retrying("head", path, |_| async {
            match self.store.head(path).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(SnapshotError::storage("head", path)(e)),
            }
        })
        .await
    }

    /// Deletes an object; a missing object is not an error (S3 and local disagree otherwise).
    pub async fn delete(&self, path: &Path) -> Result<()> {
        self.retrying("delete", path, |_| async {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(SnapshotError::storage("delete", path)(e)),
            }
        })
        .await
    }

    /// Server-side copy (S3: CopyObject; local: a file copy).
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.retrying("copy", from, |_| async {
            self.store
                .copy(from, to)
                .await
                .map_err(SnapshotError::storage("copy", from))
        })
        .await
    }

    /// Every object under `prefix` (recursive).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let prefix_opt = (!prefix.as_ref().is_empty()).then_some(prefix);
        self.retrying("list", prefix, |_| async {
            self.store
                .list(prefix_opt)
                .try_collect()
                .await
                .map_err(SnapshotError::storage("list", prefix))
        })
        .await
    }

    /// The immediate child directories of `prefix`.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        let prefix_opt = (!prefix.as_ref().is_empty()).then_some(prefix);
        self.retrying("list", prefix, |_| async {
            let r = self
                .store
                .list_with_delimiter(prefix_opt)
                .await
                .map_err(SnapshotError::storage("list", prefix))?;
            Ok(r.common_prefixes)
        })
        .await
    }
}

/// An S3 store for `s3://bucket/prefix`, configured from `AWS_*` env vars and `options`. The
/// S3 client (object_store's `aws` feature: an HTTP and TLS stack) is only built with the `s3`
/// feature, so embedders checkpointing to local directories don't compile it.
#[cfg(feature = "s3")]
fn s3(url: &str, options: &StorageOptions) -> std::result::Result<StorageRoot, String> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{BackoffConfig, RetryConfig};
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| "missing bucket".to_string())?;
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &options.s3_endpoint {
        b = b.with_endpoint(e);
    }
    let region = options
        .s3_region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region).with_retry(RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: options.s3_max_retries,
        retry_timeout: options.s3_retry_timeout,
    });
    // `false` keeps what the environment says (`AWS_ALLOW_HTTP`).
    if options.s3_allow_http {
        b = b.with_allow_http(true);
    }
    if let Some(k) = &options.s3_access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &options.s3_secret_access_key {
        b = b.with_secret_access_key(k);
    }
    let store = b.build().map_err(|e| e.to_string())?;
    let root = Path::from(parsed.path().trim_matches('/'));
    Ok(StorageRoot::with_options(
        Arc::new(store),
        root,
        url,
        options,
    ))
}

#[cfg(not(feature = "s3"))]
fn s3(_url: &str, _options: &StorageOptions) -> std::result::Result<StorageRoot, String> {
    Err("this build has no S3 support: build Cairn with its `s3` feature".into())
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
        let s = StorageRoot::from_url("memory://", &opts).unwrap();
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
    fn options_read_kebab_case_keys_with_readable_durations() {
        let o: StorageOptions = serde_json::from_str(
            r#"{"multipart-part-size-bytes": 16777216, "retry-max-attempts": 5,
                "retry-initial-backoff": "250ms", "retry-max-backoff": "10s",
                "s3-max-retries": 2, "s3-retry-timeout": "30s"}"#,
        )
        .unwrap();
        assert_eq!(o.multipart_part_size_bytes, 16 << 20);
        assert_eq!(o.retry_initial_backoff, Duration::from_millis(250));
        assert_eq!(o.s3_retry_timeout, Duration::from_secs(30));
        o.validate().unwrap();
        let bad = StorageOptions {
            retry_initial_backoff: Duration::from_secs(60),
            ..StorageOptions::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("retry-initial-backoff"), "{e}");
        assert!(serde_json::from_str::<StorageOptions>(r#"{"retries": 3}"#).is_err());
    }

    #[test]
    fn bad_urls_are_named() {
        let e = StorageRoot::from_url("ftp://x/y", &StorageOptions::default()).unwrap_err();
        assert!(e.to_string().contains("ftp://x/y"), "{e}");
        assert!(StorageRoot::from_url("memory://x", &StorageOptions::default()).is_err());
        assert!(StorageRoot::from_url("s3://", &StorageOptions::default()).is_err());
    }
}
