//! [`SimStore`]: one simulated process's client of the [`SimCloud`], an `ObjectStore`. Every
//! call is decided and scheduled by the cloud (see the parent module), then takes effect on
//! the in-memory store, with `last_modified` rewritten to virtual time.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};

use super::{Fault, Op, Process, SimCloud, injected, outcome};
use crate::det::hash_all;

/// A simulated process's client of the [`SimCloud`]: an `ObjectStore`. See the module doc.
#[derive(Clone, Debug)]
pub struct SimStore {
    cloud: Arc<SimCloud>,
    process: Arc<Process>,
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({})", self.process.name)
    }
}

impl SimStore {
    /// The client of `process`.
    pub(super) fn new(cloud: Arc<SimCloud>, process: Arc<Process>) -> Self {
        Self { cloud, process }
    }

    /// Its process.
    pub fn process(&self) -> &Arc<Process> {
        &self.process
    }

    async fn list_once(&self, prefix: Option<Path>) -> object_store::Result<Vec<ObjectMeta>> {
        let key = prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let (turn, fault, _) = self.cloud.admit(&self.process, Op::List, &key, false).await;
        self.cloud.begin(&self.process, Op::List, &key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::List, &key, outcome::ERROR);
            return Err(injected(Op::List, &key, "transient error"));
        }
        let mut all: Vec<ObjectMeta> = self.cloud.inner.list(prefix.as_ref()).try_collect().await?;
        for m in &mut all {
            m.last_modified = self.cloud.mtime(m.location.as_ref());
        }
        all.sort_by(|a, b| a.location.cmp(&b.location));
        self.cloud
            .record(self.process.id, Op::List, &key, outcome::OK);
        drop(turn);
        Ok(all)
    }

    async fn delete_once(&self, path: &Path) -> object_store::Result<()> {
        let key = path.as_ref();
        let (turn, fault, _) = self
            .cloud
            .admit(&self.process, Op::Delete, key, false)
            .await;
        self.cloud.begin(&self.process, Op::Delete, key)?;
        if fault == Fault::Error {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::Delete, key, outcome::ERROR);
            return Err(injected(Op::Delete, key, "transient error"));
        }
        let r = self.cloud.inner.delete(path).await;
        if r.is_ok() {
            self.cloud.removed(key);
        }
        drop(turn);
        if fault == Fault::LostAnswer && r.is_ok() {
            self.cloud.count(|c| c.lost_answer += 1);
            self.cloud
                .record(self.process.id, Op::Delete, key, outcome::LOST);
            return Err(injected(Op::Delete, key, "lost answer"));
        }
        let code = if r.is_ok() {
            outcome::OK
        } else {
            outcome::INNER_ERR
        };
        self.cloud.record(self.process.id, Op::Delete, key, code);
        r
    }

    /// A put that lands `delay_ms` from now in a task of its own, whether or not the caller
    /// still waits for it.
    async fn put_late(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
        delay_ms: u64,
        keyhash: u64,
    ) -> object_store::Result<PutResult> {
        let cloud = self.cloud.clone();
        let process = self.process.id;
        let location = location.clone();
        {
            let mut st = cloud.st();
            st.late_pending += 1;
            *st.late_paths.entry(location.to_string()).or_default() += 1;
        }
        cloud.count(|c| c.late += 1);
        cloud.record(process, Op::Put, location.as_ref(), outcome::LATE_SCHEDULED);
        let task = tokio::spawn(async move {
            let turn = cloud.schedule(delay_ms, hash_all(&[keyhash, 0x1a7e])).await;
            let r = cloud.inner.put_opts(&location, payload, opts).await;
            let code = if r.is_ok() {
                cloud.wrote(location.as_ref());
                outcome::LATE_LANDED
            } else {
                outcome::INNER_ERR
            };
            cloud.record(process, Op::Put, location.as_ref(), code);
            {
                let mut st = cloud.st();
                st.late_pending -= 1;
                let key = location.to_string();
                if let Some(n) = st.late_paths.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        st.late_paths.remove(&key);
                    }
                }
            }
            drop(turn);
            r
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(object_store::Error::JoinError { source: e }),
        }
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let key = location.as_ref();
        let data = !matches!(opts.mode, PutMode::Create)
            && (key.contains("/shared/") || key.contains("/chk-"));
        let partial_ok = data || self.cloud.options.partial_everywhere;
        let (turn, fault, keyhash) = self
            .cloud
            .admit(&self.process, Op::Put, key, partial_ok)
            .await;
        self.cloud.begin(&self.process, Op::Put, key)?;
        let id = self.process.id;
        match fault {
            Fault::Error => {
                self.cloud.count(|c| c.error += 1);
                self.cloud.record(id, Op::Put, key, outcome::ERROR);
                Err(injected(Op::Put, key, "transient error"))
            }
            Fault::Partial(thousandths) => {
                let bytes = Bytes::from(payload);
                let keep = (bytes.len() as u64 * thousandths / 1000) as usize;
                let cut = bytes.slice(..keep.min(bytes.len().saturating_sub(1)));
                self.cloud
                    .inner
                    .put_opts(location, PutPayload::from(cut), PutOptions::default())
                    .await?;
                self.cloud.wrote(key);
                self.cloud.count(|c| c.partial += 1);
                self.cloud.record(id, Op::Put, key, outcome::PARTIAL);
                Err(injected(Op::Put, key, "partial write"))
            }
            Fault::Late(delay) => {
                drop(turn);
                self.put_late(location, payload, opts, delay, keyhash).await
            }
            Fault::LostAnswer => {
                let r = self.cloud.inner.put_opts(location, payload, opts).await;
                if r.is_err() {
                    self.cloud.record(id, Op::Put, key, outcome::INNER_ERR);
                    return r;
                }
                self.cloud.wrote(key);
                self.cloud.count(|c| c.lost_answer += 1);
                self.cloud.record(id, Op::Put, key, outcome::LOST);
                Err(injected(Op::Put, key, "lost answer"))
            }
            Fault::None | Fault::Cut(_) => {
                let r = self.cloud.inner.put_opts(location, payload, opts).await;
                let code = if r.is_ok() {
                    self.cloud.wrote(key);
                    outcome::OK
                } else {
                    outcome::INNER_ERR
                };
                self.cloud.record(id, Op::Put, key, code);
                r
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(SimUpload {
            store: self.clone(),
            location: location.clone(),
            parts: Vec::new(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let op = if options.head { Op::Head } else { Op::Get };
        let (turn, fault, _) = self.cloud.admit(&self.process, op, key, false).await;
        self.cloud.begin(&self.process, op, key)?;
        let id = self.process.id;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(id, op, key, outcome::ERROR);
            return Err(injected(op, key, "transient error"));
        }
        let mut r = match self.cloud.inner.get_opts(location, options).await {
            Ok(r) => r,
            Err(e) => {
                self.cloud.record(id, op, key, outcome::INNER_ERR);
                return Err(e);
            }
        };
        drop(turn);
        r.meta.last_modified = self.cloud.mtime(key);
        let Fault::Cut(thousandths) = fault else {
            self.cloud.record(id, op, key, outcome::OK);
            return Ok(r);
        };
        if op != Op::Get {
            self.cloud.record(id, op, key, outcome::OK);
            return Ok(r);
        }
        let chunks: Vec<Bytes> = match r.payload {
            GetResultPayload::Stream(s) => s.try_collect().await?,
            other => {
                r.payload = other;
                return Ok(r);
            }
        };
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let keep = (body.len() as u64 * thousandths / 1000) as usize;
        let head = Bytes::from(body).slice(..keep);
        let err = injected(op, key, "cut stream");
        r.payload =
            GetResultPayload::Stream(futures::stream::iter(vec![Ok(head), Err(err)]).boxed());
        self.cloud.count(|c| c.cut += 1);
        self.cloud.record(id, op, key, outcome::CUT);
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let key = location.as_ref();
        let (turn, fault, _) = self.cloud.admit(&self.process, Op::Get, key, false).await;
        self.cloud.begin(&self.process, Op::Get, key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::Get, key, outcome::ERROR);
            return Err(injected(Op::Get, key, "transient error"));
        }
        let r = self.cloud.inner.get_ranges(location, ranges).await;
        drop(turn);
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .then(move |p| {
                let this = this.clone();
                async move {
                    let p = p?;
                    this.delete_once(&p).await.map(|()| p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move { this.list_once(prefix).await })
            .flat_map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let (turn, fault, _) = self.cloud.admit(&self.process, Op::List, &key, false).await;
        self.cloud.begin(&self.process, Op::List, &key)?;
        if matches!(fault, Fault::Error | Fault::LostAnswer) {
            self.cloud.count(|c| c.error += 1);
            self.cloud
                .record(self.process.id, Op::List, &key, outcome::ERROR);
            return Err(injected(Op::List, &key, "transient error"));
        }
        let mut r = self.cloud.inner.list_with_delimiter(prefix).await?;
        for m in &mut r.objects {
            m.last_modified = self.cloud.mtime(m.location.as_ref());
        }
        r.objects.sort_by(|a, b| a.location.cmp(&b.location));
        r.common_prefixes.sort();
        self.cloud
            .record(self.process.id, Op::List, &key, outcome::OK);
        drop(turn);
        Ok(r)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let key = format!("{from}>{to}");
        let (turn, fault, _) = self.cloud.admit(&self.process, Op::Copy, &key, false).await;
        self.cloud.begin(&self.process, Op::Copy, &key)?;
        let id = self.process.id;
        if fault == Fault::Error {
            self.cloud.count(|c| c.error += 1);
            self.cloud.record(id, Op::Copy, &key, outcome::ERROR);
            return Err(injected(Op::Copy, &key, "transient error"));
        }
        let r = self.cloud.inner.copy_opts(from, to, options).await;
        drop(turn);
        if r.is_err() {
            self.cloud.record(id, Op::Copy, &key, outcome::INNER_ERR);
            return r;
        }
        self.cloud.wrote(to.as_ref());
        if fault == Fault::LostAnswer {
            self.cloud.count(|c| c.lost_answer += 1);
            self.cloud.record(id, Op::Copy, &key, outcome::LOST);
            return Err(injected(Op::Copy, &key, "lost answer"));
        }
        self.cloud.record(id, Op::Copy, &key, outcome::OK);
        Ok(())
    }
}

/// A multipart upload: parts are buffered and the completion is one simulated put (Cairn's
/// simulated files are far below the part size, so this path is only here for completeness).
#[derive(Debug)]
struct SimUpload {
    store: SimStore,
    location: Path,
    parts: Vec<Bytes>,
}

#[async_trait]
impl MultipartUpload for SimUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(Bytes::from(data));
        Box::pin(futures::future::ready(Ok(())))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let body: Vec<u8> = self.parts.iter().flat_map(|p| p.iter().copied()).collect();
        self.store
            .put_opts(
                &self.location,
                PutPayload::from(body),
                PutOptions::default(),
            )
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}
