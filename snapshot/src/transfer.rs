//! File transfer between a slot's local directory and checkpoint storage: parallel, streaming
//! (memory stays bounded by `parallelism x part size` whatever the file size), hashed, verified.

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{Result, SnapshotError};
use crate::storage::CheckpointStorage;

/// Files at most this large are uploaded with one PUT; larger ones with multipart uploads.
pub const SINGLE_PUT_MAX: usize = 8 << 20;
/// Multipart part size (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// zstd level of private files: fast, and MANIFEST/OPTIONS compress well at any level.
const ZSTD_LEVEL: i32 = 3;

/// Hex sha256 and size of a local file (streaming; blocking I/O on a blocking thread).
pub async fn hash_file(path: &FsPath) -> Result<(String, u64)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash_file_blocking(&p))
        .await
        .map_err(|e| SnapshotError::Invariant(format!("hash task failed: {e}")))?
}

fn hash_file_blocking(path: &FsPath) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(SnapshotError::io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(SnapshotError::io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&h.finalize()), size))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Uploads a local file to `to`, streaming: one PUT up to [`SINGLE_PUT_MAX`], else multipart.
pub async fn upload_file(storage: &CheckpointStorage, local: &FsPath, to: &Path) -> Result<u64> {
    let size = tokio::fs::metadata(local)
        .await
        .map_err(SnapshotError::io("stat", local))?
        .len();
    storage.check_capacity(size).await?;
    let store = storage.store();
    if size as usize <= SINGLE_PUT_MAX {
        let data = tokio::fs::read(local)
            .await
            .map_err(SnapshotError::io("read", local))?;
        store
            .put(to, PutPayload::from(data))
            .await
            .map_err(SnapshotError::storage("put", to))?;
        return Ok(size);
    }
    let upload = store
        .put_multipart(to)
        .await
        .map_err(SnapshotError::storage("start multipart upload", to))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut f = tokio::fs::File::open(local)
        .await
        .map_err(SnapshotError::io("open", local))?;
    let mut buf = vec![0u8; PART_SIZE];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(SnapshotError::io("read", local))?;
        if n == 0 {
            break;
        }
        // At most 2 parts in flight per file: bounded memory for any file size.
        if let Err(e) = w.wait_for_capacity(2).await {
            return Err(SnapshotError::storage("upload part", to)(e));
        }
        w.write(&buf[..n]);
    }
    w.finish()
        .await
        .map_err(SnapshotError::storage("finish multipart upload", to))?;
    Ok(size)
}

/// Compresses `local` with zstd into `<local>.zst` while hashing the uncompressed bytes.
/// Returns (compressed path, sha256 of the original, original size, compressed size).
pub async fn compress_file(local: &FsPath) -> Result<(PathBuf, String, u64, u64)> {
    let src = local.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut dst = src.clone().into_os_string();
        dst.push(".zst");
        let dst = PathBuf::from(dst);
        let input = std::fs::File::open(&src).map_err(SnapshotError::io("open", &src))?;
        let mut reader = HashingReader {
            inner: std::io::BufReader::new(input),
            hasher: Sha256::new(),
            size: 0,
        };
        let out = std::fs::File::create(&dst).map_err(SnapshotError::io("create", &dst))?;
        let mut enc =
            zstd::Encoder::new(out, ZSTD_LEVEL).map_err(SnapshotError::io("compress", &dst))?;
        std::io::copy(&mut reader, &mut enc).map_err(SnapshotError::io("compress", &src))?;
        let mut out = enc.finish().map_err(SnapshotError::io("compress", &dst))?;
        out.flush().map_err(SnapshotError::io("write", &dst))?;
        let stored = std::fs::metadata(&dst)
            .map_err(SnapshotError::io("stat", &dst))?
            .len();
        Ok((dst, hex(&reader.hasher.finalize()), reader.size, stored))
    })
    .await
    .map_err(|e| SnapshotError::Invariant(format!("compress task failed: {e}")))?
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// What a download must match.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Hex sha256 of the (uncompressed) content.
    pub sha256: String,
    /// Size of the (uncompressed) content.
    pub size: u64,
    /// Whether the object is zstd-compressed.
    pub compressed: bool,
}

/// Downloads `from` into `to` (streaming, decompressing when needed), verifying size and
/// sha256. A mismatch removes the partial file and names the object.
pub async fn download_file(
    storage: &CheckpointStorage,
    from: &Path,
    to: &FsPath,
    expected: &Expected,
) -> Result<()> {
    let r = storage
        .store()
        .get(from)
        .await
        .map_err(SnapshotError::storage("get", from))?;
    let mut stream = r.into_stream();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let to_owned = to.to_path_buf();
    let compressed = expected.compressed;
    let writer = tokio::task::spawn_blocking(move || -> Result<(String, u64)> {
        let file =
            std::fs::File::create(&to_owned).map_err(SnapshotError::io("create", &to_owned))?;
        let mut sink = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
        };
        let mut chan = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        if compressed {
            zstd::stream::copy_decode(&mut chan, &mut sink)
                .map_err(SnapshotError::io("decompress", &to_owned))?;
        } else {
            std::io::copy(&mut chan, &mut sink).map_err(SnapshotError::io("write", &to_owned))?;
        }
        sink.inner
            .flush()
            .map_err(SnapshotError::io("write", &to_owned))?;
        Ok((hex(&sink.hasher.finalize()), sink.size))
    });
    let mut send_err = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                send_err = Some(SnapshotError::storage("get", from)(e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| SnapshotError::Invariant(format!("download task failed: {e}")))?;
    let fail = |e: SnapshotError| {
        let _ = std::fs::remove_file(to);
        Err(e)
    };
    if let Some(e) = send_err {
        return fail(e);
    }
    let (sha, size) = match written {
        Ok(v) => v,
        Err(SnapshotError::Io {
            op: "decompress", ..
        }) => {
            return fail(SnapshotError::ChecksumMismatch {
                path: from.to_string(),
                expected: expected.sha256.clone(),
                actual: "<not a valid zstd stream>".into(),
            });
        }
        Err(e) => return fail(e),
    };
    if size != expected.size {
        return fail(SnapshotError::SizeMismatch {
            path: from.to_string(),
            expected: expected.size,
            actual: size,
        });
    }
    if sha != expected.sha256 {
        return fail(SnapshotError::ChecksumMismatch {
            path: from.to_string(),
            expected: expected.sha256.clone(),
            actual: sha,
        });
    }
    Ok(())
}

/// Reads an object fully and checks it against `expected` without keeping it (for `verify --deep`).
pub async fn verify_object(
    storage: &CheckpointStorage,
    from: &Path,
    expected: &Expected,
) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!(
        "cairn-verify-{}-{}",
        std::process::id(),
        hex(&Sha256::digest(from.as_ref().as_bytes()))
    ));
    let r = download_file(storage, from, &tmp, expected).await;
    let _ = std::fs::remove_file(&tmp);
    r
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Runs `jobs` with at most `parallelism` at once; the first error wins (the rest are dropped,
/// which cancels them).
pub async fn run_parallel<T, F>(jobs: Vec<F>, parallelism: usize) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    futures::stream::iter(jobs)
        .buffer_unordered(parallelism.max(1))
        .try_collect()
        .await
}
