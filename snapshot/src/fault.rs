//! Fault injection, scoped per instance so tests run in parallel:
//!
//! - [`FaultStore`] wraps any `ObjectStore` and injects transport faults by rule: latency,
//!   the N-th matching call fails, failures by path pattern, truncated (partial) writes, and
//!   writes that land but whose answer is lost. It also records what passed through (calls per
//!   operation, the largest number of multipart bytes in flight), which is how the tests show
//!   that uploads stream with bounded memory.
//! - [`FailPoints`] fail a *protocol step* (`upload-shared-sst`, `write-metadata`,
//!   `delete-subsumed`, `download-shared-sst`, ...). The checkpoint protocol checks them with
//!   one call ([`crate::StorageRoot::fail_point`]) before the step touches storage.
//!
//! Transport faults surface as `object_store::Error::Generic` (transient: the storage layer's
//! retries see them, see [`SnapshotError::is_transient`]) unless the rule says `Permanent`.
//! Fail points surface as [`SnapshotError::Injected`], which is never retried: they model a step
//! that fails for good, so the checkpoint must abort cleanly.
//!
//! Both are always compiled: a store without fail points pays one `Option` check per protocol
//! step, and the wrapper is only ever built by tests and `cairn torture`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::error::{Result, SnapshotError};

/// A protocol step a [`FailPoints`] registry can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailPoint {
    /// Uploading a new shared (SST) file of a checkpoint.
    UploadSharedSst,
    /// Uploading a private file (MANIFEST, OPTIONS, heap snapshot) of a checkpoint.
    UploadPrivateFile,
    /// Writing `_metadata`, the commit point.
    WriteMetadata,
    /// Deleting what a subsumed checkpoint alone referenced (after the new one committed).
    DeleteSubsumed,
    /// Downloading a shared file for restore.
    DownloadSharedSst,
    /// Downloading a private file for restore.
    DownloadPrivateFile,
}

impl FailPoint {
    /// Every fail point.
    pub const ALL: [FailPoint; 6] = [
        FailPoint::UploadSharedSst,
        FailPoint::UploadPrivateFile,
        FailPoint::WriteMetadata,
        FailPoint::DeleteSubsumed,
        FailPoint::DownloadSharedSst,
        FailPoint::DownloadPrivateFile,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailPoint::UploadSharedSst => "upload-shared-sst",
            FailPoint::UploadPrivateFile => "upload-private-file",
            FailPoint::WriteMetadata => "write-metadata",
            FailPoint::DeleteSubsumed => "delete-subsumed",
            FailPoint::DownloadSharedSst => "download-shared-sst",
            FailPoint::DownloadPrivateFile => "download-private-file",
        }
    }
}

impl fmt::Display for FailPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailPoint {
    type Err = SnapshotError;
    fn from_str(s: &str) -> Result<Self> {
        FailPoint::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| SnapshotError::InvalidOption {
                field: "fail-point",
                value: s.to_string(),
                allowed: "upload-shared-sst, upload-private-file, write-metadata, delete-subsumed, download-shared-sst, download-private-file",
            })
    }
}

/// When an armed fail point fires: it lets `skip` hits pass, then fails the next `times`.
#[derive(Clone, Copy, Debug, Default)]
struct Arming {
    skip: u64,
    times: u64,
}

/// A per-instance registry of armed fail points (slatedb's fail-parallel style, without
/// globals). Share it through [`crate::StorageRoot::with_fail_points`].
#[derive(Debug, Default)]
pub struct FailPoints {
    armed: Mutex<HashMap<FailPoint, Arming>>,
    hits: Mutex<HashMap<FailPoint, u64>>,
    fired: AtomicU64,
}

impl FailPoints {
    /// An empty registry (nothing armed).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Arms `point`: the next `skip` hits pass, then `times` hits fail (`u64::MAX` = always).
    pub fn arm(&self, point: FailPoint, skip: u64, times: u64) {
        if let Ok(mut a) = self.armed.lock() {
            a.insert(point, Arming { skip, times });
        }
    }

    /// Disarms `point`.
    pub fn disarm(&self, point: FailPoint) {
        if let Ok(mut a) = self.armed.lock() {
            a.remove(&point);
        }
    }

    /// How often `point` was reached (fired or not).
    pub fn hits(&self, point: FailPoint) -> u64 {
        self.hits
            .lock()
            .map(|h| h.get(&point).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// How many failures were injected in total.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Called by the protocol before a step: fails with [`SnapshotError::Injected`] when armed.
    pub fn check(&self, point: FailPoint, path: &Path) -> Result<()> {
        if let Ok(mut h) = self.hits.lock() {
            *h.entry(point).or_default() += 1;
        }
        let fire = match self.armed.lock() {
            Ok(mut a) => match a.get_mut(&point) {
                Some(arm) if arm.skip > 0 => {
                    arm.skip -= 1;
                    false
                }
                Some(arm) if arm.times > 0 => {
                    arm.times = arm.times.saturating_sub(1);
                    true
                }
                _ => false,
            },
            Err(_) => false,
        };
        if fire {
            self.fired.fetch_add(1, Ordering::Relaxed);
            return Err(SnapshotError::Injected {
                point: point.as_str(),
                path: path.to_string(),
            });
        }
        Ok(())
    }
}

/// The kind of object-store call a [`Fault`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// A single PUT (including create-only puts).
    Put,
    /// Starting a multipart upload, one of its parts, or its completion.
    Multipart,
    /// GET (including HEAD).
    Get,
    /// LIST (recursive or with delimiter).
    List,
    /// DELETE.
    Delete,
    /// Server-side COPY.
    Copy,
}

/// What a matching call suffers.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Fails before reaching the store with a transient error (`Generic`): retries may help.
    Error,
    /// Fails before reaching the store with `PermissionDenied`: retrying does not help.
    Permanent,
    /// Performs the call, then reports a transient error: a write that landed but whose answer
    /// was lost (the case that makes a retried create-only put see `AlreadyExists`).
    ErrorAfter,
    /// For a PUT: stores only the first `fraction` of the payload at the path, then reports a
    /// transient error (a non-atomic store cut mid-write). Other calls fail as [`Self::Error`].
    PartialWrite {
        /// The share of the payload stored, in [0, 1).
        fraction: f64,
    },
    /// Sleeps, then performs the call normally.
    Delay(Duration),
    /// For a PUT: the write runs in a task of its own that sleeps, then writes; the caller
    /// waits for it, but a caller that gives up (its future dropped, e.g. by a timeout) does
    /// not stop it: the write still lands later. That is how `object_store`'s local store
    /// behaves (its writes run on blocking threads that outlive a cancelled future). Other
    /// calls are delayed like [`FaultAction::Delay`].
    LateLanding(Duration),
}

/// One fault rule: calls of kind `op` whose path contains `path_contains` are matched; the
/// first `skip` matches pass, the next `times` suffer `action`.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The kind of call; `None` = any.
    pub op: Option<Op>,
    /// A substring of the object path (for lists: of the prefix); `None` = any path.
    pub path_contains: Option<String>,
    /// Matching calls let through before the fault starts ("the N-th call fails" = `N - 1`).
    pub skip: u64,
    /// Matching calls that suffer the fault (`u64::MAX` = every one).
    pub times: u64,
    /// What happens.
    pub action: FaultAction,
}

impl Fault {
    /// The `n`-th (1-based) call of kind `op` fails with a transient error.
    pub fn nth(op: Op, n: u64) -> Self {
        Self {
            op: Some(op),
            path_contains: None,
            skip: n.saturating_sub(1),
            times: 1,
            action: FaultAction::Error,
        }
    }

    /// Every call of kind `op` (any kind when `None`) on a path containing `pattern` suffers
    /// `action`.
    pub fn on_path(op: Option<Op>, pattern: &str, action: FaultAction) -> Self {
        Self {
            op,
            path_contains: Some(pattern.to_string()),
            skip: 0,
            times: u64::MAX,
            action,
        }
    }

    /// Every call (of kind `op`, or any) is delayed by `d`.
    pub fn latency(op: Option<Op>, d: Duration) -> Self {
        Self {
            op,
            path_contains: None,
            skip: 0,
            times: u64::MAX,
            action: FaultAction::Delay(d),
        }
    }

    /// Limits the fault to `times` matching calls.
    pub fn times(mut self, times: u64) -> Self {
        self.times = times;
        self
    }

    /// Lets `skip` matching calls pass first.
    pub fn skip(mut self, skip: u64) -> Self {
        self.skip = skip;
        self
    }

    fn matches(&self, op: Op, path: &str) -> bool {
        self.op.is_none_or(|o| o == op)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// Counters of what went through a [`FaultStore`].
#[derive(Debug, Default)]
struct Stats {
    calls: Mutex<HashMap<Op, u64>>,
    injected: AtomicU64,
    multipart_in_flight: AtomicU64,
    multipart_in_flight_max: AtomicU64,
}

/// Rules and counters, shared with the multipart uploads and delete streams a store hands out.
#[derive(Debug, Default)]
struct Shared {
    rules: Mutex<Vec<Fault>>,
    stats: Stats,
}

/// What [`Shared::decide`] picked for one call.
enum Decision {
    Pass,
    Delay(Duration),
    Late(Duration),
    Fail(object_store::Error),
    After,
    Partial(f64),
}

impl Shared {
    fn decide(&self, op: Op, path: &str) -> Decision {
        if let Ok(mut c) = self.stats.calls.lock() {
            *c.entry(op).or_default() += 1;
        }
        let Ok(mut rules) = self.rules.lock() else {
            return Decision::Pass;
        };
        let mut delay = None;
        for rule in rules.iter_mut() {
            if !rule.matches(op, path) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if rule.times == 0 {
                continue;
            }
            rule.times = rule.times.saturating_sub(1);
            // A delay never hides a failure rule further down the list.
            if let FaultAction::Delay(d) = rule.action {
                delay = Some(d);
                continue;
            }
            self.stats.injected.fetch_add(1, Ordering::Relaxed);
            return match rule.action {
                FaultAction::Permanent => Decision::Fail(object_store::Error::PermissionDenied {
                    path: path.to_string(),
                    source: "injected permanent fault".into(),
                }),
                FaultAction::ErrorAfter => Decision::After,
                FaultAction::LateLanding(d) if op == Op::Put => Decision::Late(d),
                FaultAction::LateLanding(d) => Decision::Delay(d),
                FaultAction::PartialWrite { fraction } if op == Op::Put => {
                    Decision::Partial(fraction)
                }
                _ => Decision::Fail(injected(op, path)),
            };
        }
        delay.map_or(Decision::Pass, Decision::Delay)
    }

    /// Applies the decision for one call that is not a PUT: delay or fail, or run `call` and
    /// lose its answer.
    async fn run<T>(
        &self,
        op: Op,
        path: &str,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        match self.decide(op, path) {
            Decision::Pass => call.await,
            Decision::Delay(d) | Decision::Late(d) => {
                tokio::time::sleep(d).await;
                call.await
            }
            Decision::Fail(e) => Err(e),
            Decision::After | Decision::Partial(_) => {
                call.await?;
                Err(injected(op, path))
            }
        }
    }
}

fn injected(op: Op, path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultStore",
        source: format!("injected transient fault on {op:?} {path}").into(),
    }
}

/// An `ObjectStore` wrapper that injects faults by rule. See the module doc.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl FaultStore {
    /// Wraps `inner`; no fault is active until [`FaultStore::add`].
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            shared: Arc::new(Shared::default()),
        })
    }

    /// Adds a rule. Rules are checked in the order added: the first failure that fires wins;
    /// delays apply when no failure fires.
    pub fn add(&self, fault: Fault) {
        if let Ok(mut r) = self.shared.rules.lock() {
            r.push(fault);
        }
    }

    /// Removes every rule.
    pub fn clear(&self) {
        if let Ok(mut r) = self.shared.rules.lock() {
            r.clear();
        }
    }

    /// Calls of kind `op` seen so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.shared
            .stats
            .calls
            .lock()
            .map(|c| c.get(&op).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Faults injected so far (delays not counted).
    pub fn injected(&self) -> u64 {
        self.shared.stats.injected.load(Ordering::Relaxed)
    }

    /// The most multipart-part bytes that were in flight at once (handed to the store and not
    /// yet acknowledged): what an upload holds in memory besides the part it is filling.
    pub fn max_multipart_bytes_in_flight(&self) -> u64 {
        self.shared
            .stats
            .multipart_in_flight_max
            .load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.shared.decide(Op::Put, location.as_ref()) {
            Decision::Partial(fraction) => {
                let bytes: bytes::Bytes = payload.into();
                let keep = ((bytes.len() as f64) * fraction.clamp(0.0, 1.0)) as usize;
                let cut = bytes.slice(..keep.min(bytes.len().saturating_sub(1)));
                self.inner
                    .put_opts(location, PutPayload::from(cut), PutOptions::default())
                    .await?;
                Err(injected(Op::Put, location.as_ref()))
            }
            Decision::Pass => self.inner.put_opts(location, payload, opts).await,
            Decision::Delay(d) => {
                tokio::time::sleep(d).await;
                self.inner.put_opts(location, payload, opts).await
            }
            Decision::Fail(e) => Err(e),
            Decision::After => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(Op::Put, location.as_ref()))
            }
            Decision::Late(d) => {
                let (inner, location) = (self.inner.clone(), location.clone());
                let task = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    inner.put_opts(&location, payload, opts).await
                });
                task.await
                    .map_err(|e| object_store::Error::JoinError { source: e })?
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let path = location.to_string();
        let inner = self
            .shared
            .run(
                Op::Multipart,
                &path,
                self.inner.put_multipart_opts(location, opts),
            )
            .await?;
        Ok(Box::new(FaultUpload {
            inner,
            shared: self.shared.clone(),
            path,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.shared
            .run(
                Op::Get,
                location.as_ref(),
                self.inner.get_opts(location, options),
            )
            .await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.shared
            .run(
                Op::Get,
                location.as_ref(),
                self.inner.get_ranges(location, ranges),
            )
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        locations
            .then(move |p| {
                let (inner, shared) = (inner.clone(), shared.clone());
                async move {
                    let p = p?;
                    let one = futures::stream::once(futures::future::ready(Ok(p.clone()))).boxed();
                    let delete = async {
                        match inner.delete_stream(one).next().await {
                            Some(r) => r,
                            None => Ok(p.clone()),
                        }
                    };
                    shared.run(Op::Delete, p.as_ref(), delete).await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.shared.decide(Op::List, &p) {
            Decision::Fail(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
            Decision::Delay(d) | Decision::Late(d) => {
                let s = self.inner.list(prefix);
                tokio::time::sleep(d).map(|_| s).flatten_stream().boxed()
            }
            // A list has no effect to lose: it passes.
            Decision::Pass | Decision::After | Decision::Partial(_) => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.shared
            .run(Op::List, &p, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.shared
            .run(
                Op::Copy,
                to.as_ref(),
                self.inner.copy_opts(from, to, options),
            )
            .await
    }
}

/// A multipart upload of a [`FaultStore`]: parts and completion are matched as
/// [`Op::Multipart`] calls, and part bytes in flight are counted.
#[derive(Debug)]
struct FaultUpload {
    inner: Box<dyn MultipartUpload>,
    shared: Arc<Shared>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        let decision = match self.shared.decide(Op::Multipart, &self.path) {
            Decision::Late(d) => Decision::Delay(d),
            d => d,
        };
        if let Decision::Fail(e) = decision {
            return futures::future::ready(Err(e)).boxed();
        }
        let stats = &self.shared.stats;
        let now = stats.multipart_in_flight.fetch_add(len, Ordering::SeqCst) + len;
        stats
            .multipart_in_flight_max
            .fetch_max(now, Ordering::SeqCst);
        let part = self.inner.put_part(data);
        let (shared, path) = (self.shared.clone(), self.path.clone());
        async move {
            if let Decision::Delay(d) = decision {
                tokio::time::sleep(d).await;
            }
            let r = part.await;
            shared
                .stats
                .multipart_in_flight
                .fetch_sub(len, Ordering::SeqCst);
            match decision {
                Decision::After | Decision::Partial(_) => {
                    r?;
                    Err(injected(Op::Multipart, &path))
                }
                _ => r,
            }
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let path = self.path.clone();
        let shared = self.shared.clone();
        shared
            .run(Op::Multipart, &path, self.inner.complete())
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[test]
    fn fail_points_skip_then_fire_a_number_of_times() {
        let fp = FailPoints::new();
        let p = Path::from("x");
        fp.check(FailPoint::WriteMetadata, &p).unwrap();
        fp.arm(FailPoint::WriteMetadata, 1, 2);
        fp.check(FailPoint::WriteMetadata, &p).unwrap(); // skipped
        for _ in 0..2 {
            let e = fp.check(FailPoint::WriteMetadata, &p).unwrap_err();
            assert!(
                matches!(
                    e,
                    SnapshotError::Injected {
                        point: "write-metadata",
                        ..
                    }
                ),
                "{e}"
            );
        }
        fp.check(FailPoint::WriteMetadata, &p).unwrap(); // used up
        fp.check(FailPoint::UploadSharedSst, &p).unwrap(); // other points unaffected
        assert_eq!((fp.hits(FailPoint::WriteMetadata), fp.fired()), (5, 2));
        assert_eq!(
            "delete-subsumed".parse::<FailPoint>().unwrap(),
            FailPoint::DeleteSubsumed
        );
        assert!("nope".parse::<FailPoint>().is_err());
    }

    #[tokio::test]
    async fn rules_match_by_op_path_and_count() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let s = FaultStore::new(inner.clone());
        s.add(Fault::nth(Op::Put, 2));
        s.add(Fault::on_path(
            Some(Op::Get),
            "/bad/",
            FaultAction::Permanent,
        ));
        let data = PutPayload::from_static(b"0123456789");
        let put = |p: &'static str| {
            let (s, data) = (s.clone(), data.clone());
            async move { s.put(&Path::from(p), data).await }
        };
        put("a/1").await.unwrap();
        let e = put("a/2").await.unwrap_err();
        assert!(matches!(e, object_store::Error::Generic { .. }), "{e}");
        put("a/2").await.unwrap();
        put("x/bad/y").await.unwrap();
        let e = s.get(&Path::from("x/bad/y")).await.unwrap_err();
        assert!(
            matches!(e, object_store::Error::PermissionDenied { .. }),
            "{e}"
        );
        assert!(s.get(&Path::from("a/1")).await.is_ok());
        assert_eq!(
            (s.calls(Op::Put), s.calls(Op::Get), s.injected()),
            (4, 2, 2)
        );
    }

    #[tokio::test]
    async fn partial_writes_leave_a_truncated_object_and_lost_answers_a_whole_one() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let s = FaultStore::new(inner.clone());
        s.add(Fault::on_path(
            Some(Op::Put),
            "cut",
            FaultAction::PartialWrite { fraction: 0.3 },
        ));
        s.add(Fault::on_path(
            Some(Op::Put),
            "lost",
            FaultAction::ErrorAfter,
        ));
        let data = PutPayload::from_static(b"0123456789");
        assert!(s.put(&Path::from("cut"), data.clone()).await.is_err());
        let cut = inner
            .get(&Path::from("cut"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&cut[..], b"012");
        assert!(s.put(&Path::from("lost"), data).await.is_err());
        let lost = inner
            .get(&Path::from("lost"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&lost[..], b"0123456789");
    }
}
