//! File transfer between a slot's local directory and checkpoint storage: parallel, streaming
//! (memory stays bounded whatever the file size: an upload holds at most 3 parts of the
//! storage's `multipart-part-size-bytes`, measured by `tests/object_store_conformance.rs`; a
//! download at most 4 received chunks plus a 1 MiB write buffer), hashed, verified, and retried
//! as a whole on transient storage errors.
//!
//! Upload to local (`file://`) storage opened from its URL does not go through the object
//! store: the kernel copies the file into a staging name that is then renamed into place (see
//! `copy_into_place`), so uploads hold no buffer in the process at all.
//!
//! Restore from local (`file://`) storage does not copy shared files at all: it hard-links
//! them (see [`place_local`]) and hashes the result, so it costs one sha256 pass per byte,
//! which is the floor of any verified restore (sha256 at ~1.8 GB/s per core with SHA-NI).

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{Result, SnapshotError};
use crate::storage::StorageRoot;

/// In-flight parts per multipart upload: with the part being filled, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) x part size` whatever the file size.
const PARTS_IN_FLIGHT: usize = 2;
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
    let f = std::fs::File::open(path).map_err(SnapshotError::io("open", path))?;
    hash_reader(f, path)
}

/// Hex sha256 and size of everything `f` yields (`path` names it in errors).
fn hash_reader(mut f: impl Read, path: &FsPath) -> Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
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

/// Uploads a local file to `to`: a kernel copy into `file://` storage opened from its URL
/// (`copy_into_place`); otherwise streaming, one PUT up to the storage's part size, else a
/// multipart upload with that part size. A transient failure uploads the file again (see
/// [`StorageRoot::retrying`]); a failed multipart upload is aborted so S3 keeps no parts.
pub async fn upload_file(storage: &StorageRoot, local: &FsPath, to: &Path) -> Result<u64> {
    let size = tokio::fs::metadata(local)
        .await
        .map_err(SnapshotError::io("stat", local))?
        .len();
    storage.check_capacity(size).await?;
    storage
        .retrying("upload", to, |_| upload_once(storage, local, to, size))
        .await
}

async fn upload_once(storage: &StorageRoot, local: &FsPath, to: &Path, size: u64) -> Result<u64> {
    if let Some(direct) = storage.direct_local() {
        let (local, target, fsync) = (local.to_path_buf(), direct.path_of(to), direct.fsync);
        blocking(move || copy_into_place(&local, &target, fsync)).await?;
        return Ok(size);
    }
    let store = storage.store();
    let part_size = storage.part_size();
    if size <= part_size as u64 {
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
    let mut w = WriteMultipart::new_with_chunk_size(upload, part_size);
    let r = async {
        let mut f = tokio::fs::File::open(local)
            .await
            .map_err(SnapshotError::io("open", local))?;
        // Reads of at most one part: `WriteMultipart` copies them into the part it fills.
        let mut buf = vec![0u8; part_size.min(BUF_SIZE)];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(SnapshotError::io("read", local))?;
            if n == 0 {
                return Ok(());
            }
            // Bounded parts in flight per file: bounded memory for any file size.
            w.wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(SnapshotError::storage("upload part", to))?;
            w.write(&buf[..n]);
        }
    }
    .await;
    if let Err(e) = r {
        // Best effort: S3 would otherwise keep (and bill) the parts of an upload nobody completes.
        if let Err(abort) = w.abort().await {
            tracing::debug!(%to, error = %abort, "aborting a failed multipart upload failed");
        }
        return Err(e);
    }
    w.finish()
        .await
        .map_err(SnapshotError::storage("finish multipart upload", to))?;
    Ok(size)
}

/// Tells this process's staging files apart (with its pid).
static STAGING_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes the object at `target` (a file of `file://` storage) as a copy of `local`, the way
/// `LocalFileSystem::put` writes one: into a staging file `<target>#<digits>` beside it (the
/// name checkpoint GC collects as a crash leftover), synced when `fsync`, then renamed over
/// `target`, so a reader sees the whole object or none.
///
/// Why not through the store: a multipart upload holds up to 3 parts of
/// `multipart-part-size-bytes` (8 MiB) per transfer thread, and a smaller file is read
/// whole, so 4 transfer threads added up to 45 MiB of peak RSS to a 64 MiB slot budget
/// (benches/RESULTS.md, "Where the write-heavy run's memory goes"). `std::fs::copy` copies in
/// the kernel (`copy_file_range`; a reflink on file systems that have them): no buffer here.
fn copy_into_place(local: &FsPath, target: &FsPath, fsync: bool) -> Result<()> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(SnapshotError::Invariant(format!(
            "object path {} has no directory",
            target.display()
        )));
    };
    let created = create_dirs(parent)?;
    let seq = STAGING_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut staging_name = name.to_os_string();
    staging_name.push(format!("#{}{seq:06}", std::process::id()));
    let staging = parent.join(staging_name);
    let written = (|| {
        std::fs::copy(local, &staging).map_err(SnapshotError::io("copy", local))?;
        if fsync {
            std::fs::File::open(&staging)
                .and_then(|f| f.sync_all())
                .map_err(SnapshotError::io("sync", &staging))?;
        }
        std::fs::rename(&staging, target).map_err(SnapshotError::io("rename", &staging))
    })();
    if let Err(e) = written {
        // Best effort: GC collects a staging file a failed cleanup leaves.
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    if fsync {
        // The rename, and the entries of directories created for it, reach the disk.
        for dir in std::iter::once(parent).chain(created.iter().filter_map(|d| d.parent())) {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors; returns the ones it created.
fn create_dirs(dir: &FsPath) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.exists()) {
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::create_dir_all(dir).map_err(SnapshotError::io("create directory", dir))?;
    Ok(missing)
}

fn sync_dir(dir: &FsPath) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(SnapshotError::io("sync directory", dir))
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
        let len = input
            .metadata()
            .map_err(SnapshotError::io("stat", &src))?
            .len();
        let mut reader = HashingReader {
            inner: std::io::BufReader::new(input),
            hasher: Sha256::new(),
            size: 0,
        };
        let out = std::fs::File::create(&dst).map_err(SnapshotError::io("create", &dst))?;
        let mut enc =
            zstd::Encoder::new(out, ZSTD_LEVEL).map_err(SnapshotError::io("compress", &dst))?;
        // The size up front lets zstd size its window and tables to the file: a MANIFEST of
        // a few KiB then needs a context of tens of KiB instead of ~3 MiB (window 2 MiB at
        // level 3), and the private files of a checkpoint compress in parallel. A file that
        // changes size while read fails the compression (a checkpoint's files never do).
        enc.set_pledged_src_size(Some(len))
            .map_err(SnapshotError::io("compress", &dst))?;
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

/// Compresses `bytes` with zstd at `level` (1 is fast; savepoint chunks use it) and hashes
/// them on a blocking thread, then writes the compressed object `to`. Returns (sha256 of
/// `bytes`, their size, the stored size). For objects built in memory (savepoint chunks):
/// files on disk go through [`compress_file`] and [`upload_file`].
pub async fn upload_compressed(
    storage: &StorageRoot,
    bytes: Vec<u8>,
    to: &Path,
    level: i32,
) -> Result<(String, u64, u64)> {
    let (sha, size, compressed) = tokio::task::spawn_blocking(move || {
        let sha = hex(&Sha256::digest(&bytes));
        zstd::bulk::compress(&bytes, level)
            .map(|c| (sha, bytes.len() as u64, c))
            .map_err(|e| SnapshotError::Invariant(format!("zstd compression failed: {e}")))
    })
    .await
    .map_err(|e| SnapshotError::Invariant(format!("compress task failed: {e}")))??;
    let stored = compressed.len() as u64;
    storage.put(to, Bytes::from(compressed)).await?;
    Ok((sha, size, stored))
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
    /// The size of the object as stored, when it differs from `size` (compressed objects): a
    /// download stops reading past it. `None` = `size`.
    pub stored_size: Option<u64>,
    /// Whether a file placed straight from local storage (hard link or kernel copy) is hashed.
    /// `false` checks its size only, which makes a `file://` restore as fast as linking: the
    /// object was hashed when it was uploaded, and RocksDB verifies every block's checksum when
    /// it reads it, so damage surfaces as a corruption error on first read instead of at
    /// restore. Streamed and compressed objects are always hashed (the hash is nearly free
    /// next to moving the bytes).
    pub hash_placed: bool,
}

impl Expected {
    /// What a private file of a checkpoint must be: zstd-compressed as stored, its content
    /// hashed whatever the path.
    pub fn private(f: &crate::metadata::PrivateFile) -> Self {
        Self {
            sha256: f.sha256.clone(),
            size: f.size,
            compressed: true,
            stored_size: Some(f.stored_size),
            hash_placed: true,
        }
    }
}

/// Downloads `from` into `to`, verifying size and sha256 of the bytes `to` ends up holding. A
/// mismatch removes `to` and names the object (`ChecksumMismatch` / `SizeMismatch`; a missing
/// object is `MissingFile`).
///
/// How the bytes get there depends on what the store hands over:
/// - a local file ([`GetResultPayload::File`], `file://` storage), uncompressed: placed by
///   [`place_local`] (a hard link, else a kernel copy), then `to` itself is hashed;
/// - a local file, zstd-compressed (private files, small): decompressed while hashing;
/// - a stream (S3, memory): written while hashing, on a blocking thread fed by a channel.
///
/// A transient storage failure (e.g. the stream cut mid-body) downloads the file again.
pub async fn download_file(
    storage: &StorageRoot,
    from: &Path,
    to: &FsPath,
    expected: &Expected,
) -> Result<()> {
    storage
        .retrying("download", from, |_| {
            download_once(storage, from, to, expected)
        })
        .await
}

async fn download_once(
    storage: &StorageRoot,
    from: &Path,
    to: &FsPath,
    expected: &Expected,
) -> Result<()> {
    let r = storage
        .store()
        .get(from)
        .await
        .map_err(SnapshotError::storage("get", from))?;
    let to_owned = to.to_path_buf();
    let compressed = expected.compressed;
    let hash_placed = expected.hash_placed;
    // Never more than the metadata records: reading stops one byte past it (so the excess is
    // seen) and so does writing.
    let stored_limit = expected.stored_size.unwrap_or(expected.size);
    let limit = expected.size;
    if r.meta.size > stored_limit {
        return Err(SnapshotError::SizeMismatch {
            path: from.to_string(),
            expected: stored_limit,
            actual: r.meta.size,
        });
    }
    let (written, stream_err) = match r.payload {
        GetResultPayload::File(file, src) => {
            let placed = blocking(move || {
                remove_stale(&to_owned)?;
                if compressed {
                    let reader = std::io::BufReader::with_capacity(
                        BUF_SIZE,
                        file.take(stored_limit.saturating_add(1)),
                    );
                    return write_hashed(reader, &to_owned, true, limit)
                        .map(|(sha, n)| (Some(sha), n));
                }
                drop(file);
                place_local(&src, &to_owned)?;
                if hash_placed {
                    return hash_file_blocking(&to_owned).map(|(sha, n)| (Some(sha), n));
                }
                let size = std::fs::metadata(&to_owned)
                    .map_err(SnapshotError::io("stat", &to_owned))?
                    .len();
                Ok((None, size))
            });
            (placed.await, None)
        }
        GetResultPayload::Stream(stream) => {
            let (written, err) =
                receive_stream(stream, from, to_owned, compressed, stored_limit, limit).await;
            (written.map(|(sha, n)| (Some(sha), n)), err)
        }
    };
    let fail = |e: SnapshotError| {
        // Only ever unlinks the name `to`: when `to` is a hard link the object stays in storage.
        let _ = std::fs::remove_file(to);
        Err(e)
    };
    if let Some(e) = stream_err {
        return fail(e);
    }
    let (sha, size) = match written {
        Ok(v) => v,
        Err(SnapshotError::TooLarge { .. }) => {
            return fail(SnapshotError::SizeMismatch {
                path: from.to_string(),
                expected: limit,
                actual: limit.saturating_add(1),
            });
        }
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
    check(from, expected, sha, size).or_else(fail)
}

/// Compares what was read of `from` with what metadata recorded (`sha` is `None` when the file
/// was not hashed: see [`Expected::hash_placed`]).
fn check(from: &Path, expected: &Expected, sha: Option<String>, size: u64) -> Result<()> {
    if size != expected.size {
        return Err(SnapshotError::SizeMismatch {
            path: from.to_string(),
            expected: expected.size,
            actual: size,
        });
    }
    match sha {
        Some(sha) if sha != expected.sha256 => Err(SnapshotError::ChecksumMismatch {
            path: from.to_string(),
            expected: expected.sha256.clone(),
            actual: sha,
        }),
        _ => Ok(()),
    }
}

/// Runs blocking file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Invariant(format!("download task failed: {e}")))?
}

/// Removes whatever is at `to` before a file is placed there. Never write through an existing
/// `to`: it may be a hard link into checkpoint storage left by an earlier restore, and
/// truncating it would destroy the stored object.
fn remove_stale(to: &FsPath) -> Result<()> {
    match std::fs::remove_file(to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io("remove", to)(e)),
    }
}

/// Puts the stored file `src` at `to` (which must not exist) without moving bytes through user
/// space: a hard link when `src` and `to` are on one filesystem, else a kernel copy. The caller
/// verifies by hashing `to`, i.e. exactly the bytes the restored database will read.
///
/// Why a hard link is safe for shared objects (uncompressed SSTs):
/// - objects are content-addressed and immutable: `object_store`'s `LocalFileSystem` writes by
///   staging and renaming (its own `copy` hard-links too) and never writes into an existing
///   object, and RocksDB never writes into a finished SST (it opens them read-only);
/// - deleting is unlinking a name: RocksDB dropping an obsolete SST leaves the object in
///   storage, and checkpoint GC deleting the object leaves the database's file intact;
///   RocksDB's rate-limited deleter only truncates files whose link count is 1;
/// - the trade-off: the restored database and storage share the inode, so damaging the stored
///   object *in place* (not through Cairn) would damage the live file too; block checksums in
///   RocksDB then report it as corruption.
///
/// The link fails across filesystems (`EXDEV`), on filesystems without links, on protected
/// links (`EPERM`) or at the link-count limit (`EMLINK`); any of these falls back to a copy.
pub fn place_local(src: &FsPath, to: &FsPath) -> Result<()> {
    match std::fs::hard_link(src, to) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(from = %src.display(), error = %e, "hard link failed; copying");
            std::fs::copy(src, to).map_err(SnapshotError::io("copy", src))?;
            Ok(())
        }
    }
}

/// Feeds a storage stream through a channel into [`write_hashed`] on a blocking thread.
/// Returns what the writer returned and the stream's error, if any.
async fn receive_stream(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    from: &Path,
    to: PathBuf,
    compressed: bool,
    stored_limit: u64,
    limit: u64,
) -> (Result<(String, u64)>, Option<SnapshotError>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    // Spawned now, not when awaited: the writer must drain the channel while the loop below
    // fills it (a lazily started writer deadlocked every download of more than 4 chunks).
    let writer = tokio::task::spawn_blocking(move || {
        remove_stale(&to)?;
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        write_hashed(reader, &to, compressed, limit)
    });
    let mut stream_err = None;
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                received += c.len() as u64;
                if received > stored_limit {
                    // A server sending more than the metadata records: stop reading.
                    stream_err = Some(SnapshotError::SizeMismatch {
                        path: from.to_string(),
                        expected: stored_limit,
                        actual: received,
                    });
                    break;
                }
                if tx.send(c).await.is_err() {
                    break; // the writer failed; its error is reported by `writer`
                }
            }
            Err(e) => {
                stream_err = Some(SnapshotError::storage("get", from)(e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.unwrap_or_else(|e| {
        Err(SnapshotError::Invariant(format!(
            "download task failed: {e}"
        )))
    });
    (written, stream_err)
}

/// Buffer size of local reads and writes. Measured on the 2-core test machine: 1 MiB hashes
/// as fast as 4 MiB (sha256 is the bottleneck, not syscalls) while staying closer to cache.
const BUF_SIZE: usize = 1 << 20;

/// Copies `reader` (decompressing when asked) into a new file at `to`, hashing what is written;
/// writing more than `limit` bytes fails with `TooLarge` (a decompression bomb stops there).
fn write_hashed(
    mut reader: impl Read,
    to: &FsPath,
    compressed: bool,
    limit: u64,
) -> Result<(String, u64)> {
    let file = std::fs::File::create_new(to).map_err(SnapshotError::io("create", to))?;
    let mut sink = HashingWriter {
        inner: std::io::BufWriter::with_capacity(BUF_SIZE, file),
        hasher: Sha256::new(),
        size: 0,
        limit,
        over: false,
    };
    let too_large = || SnapshotError::TooLarge {
        path: to.display().to_string(),
        what: "the size recorded in the checkpoint metadata",
        limit,
    };
    if compressed {
        let r = zstd::stream::copy_decode(&mut reader, &mut sink);
        if sink.over {
            return Err(too_large());
        }
        r.map_err(SnapshotError::io("decompress", to))?;
    } else {
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(SnapshotError::io("read", to))?;
            if n == 0 {
                break;
            }
            if let Err(e) = sink.write_all(&buf[..n]) {
                return Err(if sink.over {
                    too_large()
                } else {
                    SnapshotError::io("write", to)(e)
                });
            }
        }
    }
    sink.inner.flush().map_err(SnapshotError::io("write", to))?;
    Ok((hex(&sink.hasher.finalize()), sink.size))
}

/// Copies `from` to `to` with the storage client and no verification: `get`, then large-buffer
/// reads and writes (a local file) or the chunks as they arrive (a stream). Restore never uses
/// this; it is the "raw client copy" baseline of `cairn bench checkpoint`, i.e. what a
/// restore would cost if it skipped hashing and always moved bytes through user space.
pub async fn copy_unverified(storage: &StorageRoot, from: &Path, to: &FsPath) -> Result<u64> {
    let r = storage
        .store()
        .get(from)
        .await
        .map_err(SnapshotError::storage("get", from))?;
    let to_owned = to.to_path_buf();
    match r.payload {
        GetResultPayload::File(file, _) => {
            blocking(move || {
                // An explicit loop: `std::io::copy` between files would become a kernel
                // `copy_file_range`, which is the other baseline.
                let mut out = std::fs::File::create(&to_owned)
                    .map_err(SnapshotError::io("create", &to_owned))?;
                let (mut file, mut buf, mut n) = (file, vec![0u8; BUF_SIZE], 0u64);
                loop {
                    let k = file
                        .read(&mut buf)
                        .map_err(SnapshotError::io("read", &to_owned))?;
                    if k == 0 {
                        return Ok(n);
                    }
                    out.write_all(&buf[..k])
                        .map_err(SnapshotError::io("write", &to_owned))?;
                    n += k as u64;
                }
            })
            .await
        }
        GetResultPayload::Stream(mut stream) => {
            let mut out = tokio::fs::File::create(to)
                .await
                .map_err(SnapshotError::io("create", to))?;
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(SnapshotError::storage("get", from))?;
                tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                    .await
                    .map_err(SnapshotError::io("write", to))?;
                n += chunk.len() as u64;
            }
            tokio::io::AsyncWriteExt::flush(&mut out)
                .await
                .map_err(SnapshotError::io("write", to))?;
            Ok(n)
        }
    }
}

/// Reads an object fully and checks it against `expected` without keeping it (for `verify --deep`).
/// A local uncompressed object is hashed where it is; anything else is downloaded to a
/// temporary file that is removed afterwards.
pub async fn verify_object(storage: &StorageRoot, from: &Path, expected: &Expected) -> Result<()> {
    if !expected.compressed {
        let r = storage
            .store()
            .get(from)
            .await
            .map_err(SnapshotError::storage("get", from))?;
        if let GetResultPayload::File(file, src) = r.payload {
            let (sha, size) = blocking(move || hash_reader(file, &src)).await?;
            return check(from, expected, Some(sha), size);
        }
    }
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
    /// Most bytes it accepts; `over` is set when a write would pass it.
    limit: u64,
    over: bool,
}

impl<W: Write> Write for HashingWriter<W> {
    /// Hashes before writing: the bytes are still in cache from the read, and a kernel copy
    /// out of a buffer just hashed measured much cheaper than hashing after the copy.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size.saturating_add(buf.len() as u64) > self.limit {
            self.over = true;
            return Err(std::io::Error::other(
                "more bytes than the checkpoint records",
            ));
        }
        self.hasher.update(buf);
        self.inner.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
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

/// Hashes local files `(name, path)`, at most `parallelism` at once: `(name, path, sha256, size)`
/// of each, in no particular order.
pub async fn hash_files(
    files: Vec<(String, PathBuf)>,
    parallelism: usize,
) -> Result<Vec<(String, PathBuf, String, u64)>> {
    run_parallel(
        files
            .into_iter()
            .map(|(name, local)| async move {
                let (sha, size) = hash_file(&local).await?;
                Ok((name, local, sha, size))
            })
            .collect(),
        parallelism,
    )
    .await
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::storage::StorageOptions;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// Local storage in a temporary directory, with `objects` (name -> content) stored at the
    /// root, and a destination directory on the same filesystem.
    fn setup(objects: &[(&str, &[u8])]) -> (tempfile::TempDir, StorageRoot, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageRoot::from_url(
            &dir.path().join("store").display().to_string(),
            &StorageOptions::default(),
        )
        .unwrap();
        for (name, content) in objects {
            std::fs::write(dir.path().join("store").join(name), content).unwrap();
        }
        let dest = dir.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        (dir, storage, dest)
    }

    fn expected(content: &[u8]) -> Expected {
        Expected {
            sha256: hex(&Sha256::digest(content)),
            size: content.len() as u64,
            compressed: false,
            stored_size: None,
            hash_placed: true,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn upload_to_local_storage_is_a_copy_renamed_into_place() -> TestResult {
        let (dir, storage, _) = setup(&[]);
        // Larger than a multipart part: through the store it would be a multipart upload.
        let content: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        let local = dir.path().join("000042.sst");
        std::fs::write(&local, &content)?;
        let to = Path::from("job/shared/ab/000042.sst");
        let rt = rt();
        assert_eq!(
            rt.block_on(upload_file(&storage, &local, &to))?,
            content.len() as u64
        );
        // Readable through the store, as a copy (not a link to the local file).
        assert_eq!(rt.block_on(storage.get(&to))?, content.as_slice());
        let stored = dir.path().join("store/job/shared/ab/000042.sst");
        assert_eq!(std::fs::metadata(&stored)?.nlink(), 1);
        // An object uploaded again is replaced whole, and no staging file stays behind.
        std::fs::write(&local, b"second")?;
        rt.block_on(upload_file(&storage, &local, &to))?;
        assert_eq!(std::fs::read(&stored)?, b"second");
        let names: Vec<_> = std::fs::read_dir(stored.parent().ok_or("no parent")?)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(names, ["000042.sst"]);
        // A failed copy leaves neither the object nor a staging file, and a failed copy over
        // an existing (committed) object leaves that object as it was.
        let missing = dir.path().join("missing.sst");
        let to2 = Path::from("job/shared/cd/000043.sst");
        assert!(rt.block_on(upload_file(&storage, &missing, &to2)).is_err());
        assert!(!dir.path().join("store/job/shared/cd/000043.sst").exists());
        assert!(rt.block_on(upload_file(&storage, &missing, &to)).is_err());
        assert_eq!(std::fs::read(&stored)?, b"second");
        let names: Vec<_> = std::fs::read_dir(stored.parent().ok_or("no parent")?)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(names, ["000042.sst"]);
        Ok(())
    }

    #[test]
    fn local_object_is_hard_linked_and_verified() -> TestResult {
        let content = vec![7u8; 3 << 20];
        let (dir, storage, dest) = setup(&[("a", &content)]);
        let to = dest.join("000001.sst");
        rt().block_on(download_file(
            &storage,
            &Path::from("a"),
            &to,
            &expected(&content),
        ))?;
        assert_eq!(std::fs::read(&to)?, content);
        // Same filesystem: the restored file is the stored object's inode, not a copy.
        let stored = std::fs::metadata(dir.path().join("store/a"))?;
        assert_eq!(std::fs::metadata(&to)?.ino(), stored.ino());
        assert_eq!(stored.nlink(), 2);
        Ok(())
    }

    #[test]
    fn size_only_placement_skips_the_hash_but_not_the_size() -> TestResult {
        let good = vec![1u8; 1 << 20];
        let mut flipped = good.clone();
        flipped[4096] ^= 0x40;
        let (_dir, storage, dest) = setup(&[("flip", &flipped), ("short", &good[..1000])]);
        let rt = rt();
        let size_only = Expected {
            hash_placed: false,
            ..expected(&good)
        };
        // Same size, other bytes: accepted (RocksDB's block checksums are the check then).
        let to = dest.join("a.sst");
        rt.block_on(download_file(
            &storage,
            &Path::from("flip"),
            &to,
            &size_only,
        ))?;
        assert_eq!(std::fs::read(&to)?, flipped);
        // A wrong size is still refused, and the placed file removed.
        let to = dest.join("b.sst");
        let err = rt
            .block_on(download_file(
                &storage,
                &Path::from("short"),
                &to,
                &size_only,
            ))
            .unwrap_err();
        assert!(matches!(err, SnapshotError::SizeMismatch { .. }), "{err}");
        assert!(!to.exists());
        Ok(())
    }

    #[test]
    fn damaged_local_objects_fail_with_typed_errors_and_leave_storage_alone() -> TestResult {
        let good = vec![1u8; 1 << 20];
        let mut flipped = good.clone();
        flipped[4096] ^= 0x40;
        let (dir, storage, dest) = setup(&[("flip", &flipped), ("short", &good[..1000])]);
        let rt = rt();
        let to = dest.join("x.sst");
        let err = rt
            .block_on(download_file(
                &storage,
                &Path::from("flip"),
                &to,
                &expected(&good),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, SnapshotError::ChecksumMismatch { path, .. } if path == "flip"),
            "{err}"
        );
        assert!(!to.exists(), "a failed download leaves no file behind");
        let err = rt
            .block_on(verify_object(
                &storage,
                &Path::from("flip"),
                &expected(&good),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, SnapshotError::ChecksumMismatch { .. }),
            "{err}"
        );
        rt.block_on(verify_object(
            &storage,
            &Path::from("flip"),
            &expected(&flipped),
        ))?;
        assert_eq!(std::fs::read(dir.path().join("store/flip"))?, flipped);
        let err = rt
            .block_on(download_file(
                &storage,
                &Path::from("short"),
                &to,
                &expected(&good),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, SnapshotError::SizeMismatch { path, actual: 1000, .. } if path == "short"),
            "{err}"
        );
        let err = rt
            .block_on(download_file(
                &storage,
                &Path::from("gone"),
                &to,
                &expected(&good),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, SnapshotError::MissingFile { path } if path == "gone"),
            "{err}"
        );
        Ok(())
    }

    /// A destination left over from an earlier restore may be a hard link into storage: it is
    /// replaced, never written through (which would overwrite the stored object).
    #[test]
    fn stale_destination_link_is_replaced_not_written_through() -> TestResult {
        let (a, b) = (vec![0xaau8; 100_000], vec![0xbbu8; 50_000]);
        let (dir, storage, dest) = setup(&[("a", &a), ("b", &b)]);
        let to = dest.join("000001.sst");
        std::fs::hard_link(dir.path().join("store/b"), &to)?;
        let rt = rt();
        rt.block_on(download_file(
            &storage,
            &Path::from("a"),
            &to,
            &expected(&a),
        ))?;
        assert_eq!(std::fs::read(&to)?, a);
        assert_eq!(std::fs::read(dir.path().join("store/b"))?, b);
        // The compressed path (decompress + write) replaces it too.
        let mut zst = Vec::new();
        zstd::stream::copy_encode(&a[..], &mut zst, 3)?;
        std::fs::write(dir.path().join("store/a.zst"), &zst)?;
        std::fs::remove_file(&to)?;
        std::fs::hard_link(dir.path().join("store/b"), &to)?;
        let exp = Expected {
            compressed: true,
            stored_size: None,
            ..expected(&a)
        };
        rt.block_on(download_file(&storage, &Path::from("a.zst"), &to, &exp))?;
        assert_eq!(std::fs::read(&to)?, a);
        assert_eq!(std::fs::read(dir.path().join("store/b"))?, b);
        Ok(())
    }

    /// Regression: the writer of a streamed download (S3, memory) was only spawned when awaited,
    /// after the whole stream had been sent into a 4-chunk channel, so any object of more than 4
    /// chunks hung forever (found restoring from an S3-compatible server in `cairn bench rebase`).
    #[test]
    fn streamed_download_of_many_chunks_completes() -> TestResult {
        use futures::StreamExt;
        let dir = tempfile::tempdir()?;
        let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 4096])).collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let stream = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
        let to = dir.path().join("out");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()?;
        let (written, err) = rt.block_on(async {
            // A deadlock fails the test instead of hanging it.
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                receive_stream(
                    stream,
                    &Path::from("obj"),
                    to.clone(),
                    false,
                    all.len() as u64,
                    all.len() as u64,
                ),
            )
            .await
        })?;
        assert!(err.is_none());
        let (sha, size) = written?;
        assert_eq!(size, all.len() as u64);
        assert_eq!(sha, hex(&Sha256::digest(&all)));
        assert_eq!(std::fs::read(&to)?, all);
        Ok(())
    }

    /// A store that sends more than the metadata records (here 64 chunks where 10 are recorded)
    /// is cut off: reading stops one chunk past the recorded size, nothing past it is written,
    /// and the download fails with a size mismatch.
    #[test]
    fn a_stream_longer_than_recorded_is_cut_off() -> TestResult {
        use futures::StreamExt;
        let dir = tempfile::tempdir()?;
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let stream = futures::stream::iter((0..64u8).map(move |i| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Bytes::from(vec![i; 4096]))
        }))
        .boxed();
        let to = dir.path().join("out");
        let rt = rt();
        let recorded = 10 * 4096;
        let (written, err) = rt.block_on(receive_stream(
            stream,
            &Path::from("obj"),
            to.clone(),
            false,
            recorded,
            recorded,
        ));
        assert!(
            matches!(err, Some(SnapshotError::SizeMismatch { expected, .. }) if expected == recorded),
            "{err:?}"
        );
        assert_eq!(pulled.load(std::sync::atomic::Ordering::Relaxed), 11);
        let _ = written;
        assert!(std::fs::metadata(&to).map_or(0, |m| m.len()) <= recorded);
        Ok(())
    }

    #[test]
    fn copy_unverified_copies_bytes() -> TestResult {
        let content: Vec<u8> = (0..(3u32 << 20)).map(|i| i as u8).collect();
        let (_dir, storage, dest) = setup(&[("a", &content)]);
        let to = dest.join("a");
        let n = rt().block_on(copy_unverified(&storage, &Path::from("a"), &to))?;
        assert_eq!(n, content.len() as u64);
        assert_eq!(std::fs::read(&to)?, content);
        Ok(())
    }
}
