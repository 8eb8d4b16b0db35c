//! One writer per job: writer leases with epochs (fencing).
//!
//! Two processes writing one job directory would delete each other's files: the loser of a
//! commit race would abort and delete what the winner's `_metadata` names. So a writer first
//! takes the job with a create-only put of `_writers/epoch-<E>` (E one more than the highest
//! epoch there; a create-only put has one winner on every store, see `crate::storage`). The
//! record says who holds it and when it was last renewed; the holder renews it (a plain
//! overwrite of its own record) in the background and before each commit.
//!
//! - **A second writer on a live job fails fast**: when the highest epoch's record is neither
//!   released nor older than the lease timeout, [`WriterLease::acquire`] returns
//!   [`SnapshotError::JobLocked`] naming the holder. A released lease (clean shutdown) or an
//!   expired one (a crashed holder) is taken over with the next epoch.
//! - **A writer that lost the job stops**: before every commit and every deletion of committed
//!   files the holder checks that no higher epoch exists ([`WriterLease::check`]); if one does,
//!   it is fenced for good ([`SnapshotError::Fenced`]) and commits nothing more.
//! - **Names never collide across epochs**: objects a writer uploads carry its epoch
//!   (`shared/<sha>-e<E>`, `chk-<id>/e<E>/...`), so an abort deletes only what its own attempt
//!   wrote, whatever another writer did meanwhile.
//! - **A takeover after expiry shares nothing with the old writer**: the old writer may be
//!   alive but paused (a "zombie") and still delete its own old files after it wakes. The new
//!   writer therefore treats the old epochs' objects like another job's (no-claim): its first
//!   checkpoint copies them into its own names. After a released lease it reuses them.
//!
//! Expiry compares the record's `renewed_at_ms` with the reader's clock (the storage's
//! [`crate::Clock`]), so clocks of writers sharing a job must roughly agree (well within the
//! timeout), the usual assumption of leases. Jobs written before leases existed have no
//! `_writers/`; they count as released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotError};
use crate::object_layout::{Epoch, JobLayout, parse_writer};
use crate::storage::StorageRoot;

/// The `format` of a lease record.
const FORMAT: &str = "cairn-writer";
/// Largest lease record read.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Lease settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeaseOptions {
    /// A lease not renewed for this long is expired: another writer may take the job. The
    /// holder renews every third of it. Default 30 s.
    pub timeout: Duration,
    /// Who holds it, for the error a second writer gets (default: host name and process id).
    pub holder: String,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        Self {
            timeout: Duration::from_secs(30),
            holder: format!("{host} pid {}", std::process::id()),
        }
    }
}

impl LeaseOptions {
    /// The default options with `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }
}

/// A lease record, `_writers/epoch-<E>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    format: String,
    epoch: Epoch,
    holder: String,
    started_at_ms: u64,
    renewed_at_ms: u64,
    /// The holder stopped cleanly (or the record only fences older epochs: a claim).
    released: bool,
    /// Set on a record written to fence the job for another job's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fenced_for: Option<String>,
}

/// How a writer came to hold its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// The job had no writer before.
    Fresh,
    /// The previous writer released its lease (or predates leases): its files can be reused.
    Released,
    /// The previous writer's lease expired without release: it may still be alive, so its
    /// files are not reused by reference.
    Expired,
}

/// The highest epoch of a job and its record.
struct Top {
    epoch: Epoch,
    record: Option<Record>,
}

/// Reads the highest epoch under `_writers/` (0 when there is none) and its record.
async fn top(storage: &StorageRoot, layout: &JobLayout) -> Result<Top> {
    let epoch = storage
        .list(&layout.writers_dir())
        .await?
        .iter()
        .filter_map(|m| m.location.filename().and_then(parse_writer))
        .max()
        .unwrap_or(0);
    if epoch == 0 {
        return Ok(Top {
            epoch,
            record: None,
        });
    }
    let path = layout.writer(epoch);
    let bytes = match storage
        .get_capped(&path, MAX_RECORD_BYTES, "lease record")
        .await
    {
        Ok(b) => b,
        // Deleted by hand (an explicit user command): treat as released.
        Err(SnapshotError::MissingFile { .. }) => {
            return Ok(Top {
                epoch,
                record: None,
            });
        }
        Err(e) => return Err(e),
    };
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::BadMetadata {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    if record.format != FORMAT || record.epoch != epoch {
        return Err(SnapshotError::BadMetadata {
            path: path.to_string(),
            reason: format!(
                "format {:?} epoch {}, expected {FORMAT:?} epoch {epoch}",
                record.format, record.epoch
            ),
        });
    }
    Ok(Top {
        epoch,
        record: Some(record),
    })
}

/// Fails with `JobLocked` when `top` is a live lease at `now_ms`.
fn refuse_live(layout: &JobLayout, top: &Top, now_ms: u64, timeout: Duration) -> Result<()> {
    let Some(r) = &top.record else {
        return Ok(());
    };
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let age_ms = now_ms.saturating_sub(r.renewed_at_ms);
    if r.released || age_ms >= timeout_ms {
        return Ok(());
    }
    Err(SnapshotError::JobLocked {
        job: layout.job().to_string(),
        epoch: top.epoch,
        holder: r.holder.clone(),
        age_ms,
        wait_ms: timeout_ms - age_ms,
    })
}

/// This writer's hold on a job. See the module doc.
#[derive(Debug)]
pub struct WriterLease {
    layout: JobLayout,
    epoch: Epoch,
    holder: String,
    started_at_ms: u64,
    timeout: Duration,
    takeover: Takeover,
    /// The epoch that fenced this writer (0 = none seen).
    fenced_by: AtomicU64,
    /// Held across each write of the record: a renewal from the background task and one from
    /// a commit never run at once, so a slow earlier put can't land after a later one and
    /// rewind `renewed_at_ms` (a live lease would look expired to the next writer).
    writing: tokio::sync::Mutex<()>,
}

impl WriterLease {
    /// Takes job `layout` for writing: the next epoch, unless a live writer holds it (then
    /// `JobLocked`, naming it).
    pub async fn acquire(
        storage: &StorageRoot,
        layout: &JobLayout,
        options: &LeaseOptions,
    ) -> Result<Self> {
        let top = top(storage, layout).await?;
        let now = storage.now_ms();
        refuse_live(layout, &top, now, options.timeout)?;
        let takeover = match &top.record {
            None if top.epoch == 0 => Takeover::Fresh,
            None => Takeover::Released,
            // A claim's fence record: the writer before it may have been expired, not stopped.
            Some(r) if r.fenced_for.is_some() => Takeover::Expired,
            Some(r) if r.released => Takeover::Released,
            Some(_) => Takeover::Expired,
        };
        let epoch = top.epoch + 1;
        let record = Record {
            format: FORMAT.into(),
            epoch,
            holder: options.holder.clone(),
            started_at_ms: now,
            renewed_at_ms: now,
            released: false,
            fenced_for: None,
        };
        let path = layout.writer(epoch);
        if !storage.put_create(&path, to_bytes(&record)).await? {
            // Another writer took this epoch between our list and our put: it is live now.
            let top = self::top(storage, layout).await?;
            refuse_live(layout, &top, storage.now_ms(), options.timeout)?;
            return Err(SnapshotError::JobLocked {
                job: layout.job().to_string(),
                epoch,
                holder: "another writer (it took the job a moment ago)".into(),
                age_ms: 0,
                wait_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        tracing::debug!(
            job = layout.job(),
            epoch,
            ?takeover,
            "took the job's writer lease"
        );
        Ok(Self {
            layout: layout.clone(),
            epoch,
            holder: options.holder.clone(),
            started_at_ms: now,
            timeout: options.timeout,
            takeover,
            fenced_by: AtomicU64::new(0),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Fences job `layout` for a claim by `by`: fails with `JobLocked` when a live writer holds
    /// it; otherwise writes a released record with the next epoch, so that a writer of the job
    /// that is paused rather than dead is fenced when it wakes.
    pub async fn fence(
        storage: &StorageRoot,
        layout: &JobLayout,
        timeout: Duration,
        by: &str,
    ) -> Result<()> {
        let top = top(storage, layout).await?;
        let now = storage.now_ms();
        refuse_live(layout, &top, now, timeout)?;
        if top.epoch == 0 && top.record.is_none() {
            // A job from before leases: nothing to fence.
            return Ok(());
        }
        let epoch = top.epoch + 1;
        let record = Record {
            format: FORMAT.into(),
            epoch,
            holder: format!("claimed by {by}"),
            started_at_ms: now,
            renewed_at_ms: now,
            released: true,
            fenced_for: Some(by.to_string()),
        };
        if !storage
            .put_create(&layout.writer(epoch), to_bytes(&record))
            .await?
        {
            return Err(SnapshotError::JobLocked {
                job: layout.job().to_string(),
                epoch,
                holder: "another writer (it took the job a moment ago)".into(),
                age_ms: 0,
                wait_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    /// This writer's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// How this writer came to hold the job.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// The lease timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fails with `Fenced` when a higher epoch exists (remembered: once fenced, always).
    pub async fn check(&self, storage: &StorageRoot) -> Result<()> {
        self.fenced()?;
        let top = storage
            .list(&self.layout.writers_dir())
            .await?
            .iter()
            .filter_map(|m| m.location.filename().and_then(parse_writer))
            .max()
            .unwrap_or(0);
        if top > self.epoch {
            self.fenced_by.store(top, Ordering::Release);
            return self.fenced();
        }
        Ok(())
    }

    /// Fails with `Fenced` if a check ever found a higher epoch.
    pub fn fenced(&self) -> Result<()> {
        match self.fenced_by.load(Ordering::Acquire) {
            0 => Ok(()),
            by => Err(SnapshotError::Fenced {
                job: self.layout.job().to_string(),
                epoch: self.epoch,
                by,
            }),
        }
    }

    /// Checks, then renews the lease (its record's `renewed_at_ms` becomes now).
    pub async fn renew(&self, storage: &StorageRoot) -> Result<()> {
        self.check(storage).await?;
        self.write(storage, false).await
    }

    /// Marks the lease released (clean shutdown): the next writer may take the job at once and
    /// reuse this writer's files. Does nothing when fenced.
    pub async fn release(&self, storage: &StorageRoot) -> Result<()> {
        self.check(storage).await?;
        self.write(storage, true).await
    }

    async fn write(&self, storage: &StorageRoot, released: bool) -> Result<()> {
        let _one_at_a_time = self.writing.lock().await;
        let record = Record {
            format: FORMAT.into(),
            epoch: self.epoch,
            holder: self.holder.clone(),
            started_at_ms: self.started_at_ms,
            renewed_at_ms: storage.now_ms(),
            released,
            fenced_for: None,
        };
        storage
            .put(
                &self.layout.writer(self.epoch),
                bytes::Bytes::from(to_bytes(&record)),
            )
            .await
    }
}

fn to_bytes(r: &Record) -> Vec<u8> {
    // Serializing a plain struct to JSON cannot fail.
    serde_json::to_vec(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::path::Path;

    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::StorageOptions;

    fn storage(clock: Arc<ManualClock>) -> StorageRoot {
        StorageRoot::from_url("memory://", &StorageOptions::default())
            .unwrap()
            .with_clock(clock)
    }

    #[tokio::test]
    async fn a_live_lease_refuses_a_second_writer_and_an_expired_one_is_taken_over() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let s = storage(clock.clone());
        let layout = JobLayout::new(Path::default(), "job");
        let opts = LeaseOptions {
            timeout: Duration::from_secs(30),
            holder: "first".into(),
        };
        let first = WriterLease::acquire(&s, &layout, &opts).await.unwrap();
        assert_eq!((first.epoch(), first.takeover()), (1, Takeover::Fresh));
        clock.advance(10_000);
        let e = WriterLease::acquire(&s, &layout, &opts).await.unwrap_err();
        assert!(
            matches!(&e, SnapshotError::JobLocked { epoch: 1, holder, age_ms: 10_000, wait_ms: 20_000, .. } if holder == "first"),
            "{e}"
        );
        // Renewed: still live 29 s later.
        first.renew(&s).await.unwrap();
        clock.advance(29_000);
        assert!(WriterLease::acquire(&s, &layout, &opts).await.is_err());
        // Expired: taken over, and the first writer is fenced from then on.
        clock.advance(1_000);
        let second = WriterLease::acquire(&s, &layout, &opts).await.unwrap();
        assert_eq!((second.epoch(), second.takeover()), (2, Takeover::Expired));
        let e = first.renew(&s).await.unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Fenced {
                    epoch: 1,
                    by: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(first.fenced().is_err());
        second.check(&s).await.unwrap();
        // Released: taken over at once, files reusable.
        second.release(&s).await.unwrap();
        let third = WriterLease::acquire(&s, &layout, &opts).await.unwrap();
        assert_eq!((third.epoch(), third.takeover()), (3, Takeover::Released));
        // A claim fences the job: the holder of epoch 3 is refused while live...
        assert!(
            WriterLease::fence(&s, &layout, opts.timeout, "other-job")
                .await
                .is_err()
        );
        third.release(&s).await.unwrap();
        WriterLease::fence(&s, &layout, opts.timeout, "other-job")
            .await
            .unwrap();
        // ...and fenced once the claim wrote epoch 4 (the record is released: no wait).
        assert!(third.check(&s).await.is_err());
        let fifth = WriterLease::acquire(&s, &layout, &opts).await.unwrap();
        assert_eq!(fifth.epoch(), 5);
    }
}
