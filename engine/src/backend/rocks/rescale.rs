//! Rescaling a RocksDB slot: opening it from the old slots whose key groups overlap its own,
//! when a checkpoint taken with N slots restores into M.
//!
//! The slot opens the old slot that overlaps it most as its *base* (its files as they are: the
//! next checkpoint references them instead of uploading them again), brings in every other
//! overlapping old slot, then clips itself to its key groups:
//! - **ingest**: the other old slot's SST files go in as they are (RocksDB's
//!   `IngestExternalFile` with `allow_db_generated_files`: no rewrite, sequence numbers kept,
//!   lower levels first). Old slots hold disjoint key groups, so their files don't overlap the
//!   base's data; and they keep their content, so the next checkpoint finds their objects by
//!   sha256 and uploads nothing for them either.
//! - **insert**: when RocksDB refuses to ingest (a file overlaps data already in the slot: an old
//!   slot that was itself rescaled and not yet compacted still holds key groups outside its
//!   range, hidden by range deletions), the old slot's entries of this slot's key groups are
//!   read and written instead, Flink's only way.
//! - **clip**: files entirely outside the slot's key groups are dropped (`DeleteFilesInRange`),
//!   the rest of the outside is hidden by range deletions, and RocksDB's own compactions drop it
//!   over time. Compacting it away at once would rewrite every file the slot shares with the
//!   checkpoint, and the next checkpoint would upload the whole state again (Flink's first
//!   checkpoint after a rescale uploads 200 % of it); `checkpoint.rebase.max-space-amplification`
//!   compacts a slot whose dead data grows too large.

use std::path::Path;
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, IngestExternalFileOptions, WriteBatch};
use serde::Serialize;

use super::options::OptionsBuilder;
use super::{Db, RocksDbBackend};
use crate::backend::MergeSource;
use crate::error::{EngineError, Result};
use crate::keygroup::{KeyGroup, KeyGroupRange};

/// How an old slot's key groups came into a rescaled slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RescalePath {
    /// Opened as the slot's database (its files as they are).
    Base,
    /// Its SST files ingested as they are.
    Ingest,
    /// Its entries read and written (RocksDB refused the files of at least one state).
    Insert,
}

/// One old slot brought into a rescaled slot.
#[derive(Clone, Debug, Serialize)]
pub struct RescaledPart {
    /// The old slot's index.
    pub old_slot: u32,
    /// The key groups it gave this slot, `start..=end`.
    pub key_groups: String,
    /// How.
    pub path: RescalePath,
    /// Wall time, ms.
    pub ms: f64,
    /// SST files ingested.
    pub files_ingested: u64,
    /// Entries written one by one (the insert path).
    pub entries_inserted: u64,
}

/// What opening a slot from old slots of other key groups did (see the module doc).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RescaleReport {
    /// The base first, then every other old slot.
    pub parts: Vec<RescaledPart>,
    /// Time spent clipping the slot to its key groups, ms.
    pub clip_ms: f64,
}

/// Bytes a batch of the insert path holds before it is written.
const INSERT_BATCH_BYTES: usize = 4 << 20;

impl RocksDbBackend {
    /// Brings in the key groups of `sources` and clips the slot to its own (see the module
    /// doc). The base (old slot `base_slot`, key groups `base_range`) is the open database.
    pub(super) fn rescale(
        &self,
        base_slot: u32,
        base_range: KeyGroupRange,
        sources: Vec<MergeSource>,
    ) -> Result<RescaleReport> {
        let mut report = RescaleReport::default();
        report.parts.push(RescaledPart {
            old_slot: base_slot,
            key_groups: shared_key_groups(base_range, self.range),
            path: RescalePath::Base,
            ms: 0.0,
            files_ingested: 0,
            entries_inserted: 0,
        });
        // Dropping the base's files that hold only other key groups first leaves fewer files
        // for the ingested ones to overlap.
        let t = Instant::now();
        self.for_each_outside("delete files outside the key groups", |db, cf, from, to| {
            db.delete_file_in_range_cf(cf, from, to)
        })?;
        let mut clip_ms = t.elapsed().as_secs_f64() * 1000.0;
        for source in sources {
            report.parts.push(self.merge(&source)?);
            if let Err(e) = std::fs::remove_dir_all(&source.files) {
                tracing::warn!(error = %e, dir = %source.files.display(), "removing a merged old slot's files failed");
            }
        }
        let t = Instant::now();
        self.for_each_outside(
            "delete the key groups outside the slot",
            |db, cf, from, to| db.delete_range_cf_opt(cf, from, to, &self.write_opts),
        )?;
        clip_ms += t.elapsed().as_secs_f64() * 1000.0;
        report.clip_ms = clip_ms;
        Ok(report)
    }

    /// Calls `op` for every state's column family and every key range outside the slot's key
    /// groups (see [`RocksDbBackend::outside_ranges`]).
    fn for_each_outside(
        &self,
        what: &'static str,
        mut op: impl FnMut(
            &Db,
            &std::sync::Arc<rocksdb::BoundColumnFamily<'_>>,
            &[u8],
            &[u8],
        ) -> std::result::Result<(), rocksdb::Error>,
    ) -> Result<()> {
        for (from, to) in self.outside_ranges() {
            for name in self.column_families() {
                let cf = self.cf_named(name)?;
                op(&self.db, &cf, &from, &to).map_err(EngineError::rocks(what))?;
            }
        }
        Ok(())
    }

    /// The key ranges outside the slot's key groups, `[from, to)`: below its first key group
    /// and above its last, up to the end of the job's key groups.
    fn outside_ranges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let pb = self.prefix_bytes;
        let mut out = Vec::new();
        if self.range.start > 0 {
            out.push((
                Vec::new(),
                cairn_base::prefix::key_group_prefix(self.range.start as KeyGroup, pb),
            ));
        }
        let last = self.max_parallelism.saturating_sub(1);
        if self.range.end < last
            && let (Some(from), Some(to)) = (
                cairn_base::prefix::key_group_upper_bound(self.range.end as KeyGroup, pb),
                cairn_base::prefix::key_group_upper_bound(last as KeyGroup, pb),
            )
        {
            out.push((from, to));
        }
        out
    }

    fn cf_named(&self, name: &str) -> Result<std::sync::Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.db.cf_handle(name).ok_or_else(|| {
            EngineError::InvalidArgument(format!("column family {name} is not open"))
        })
    }

    /// Brings in one old slot: its files ingested state by state, or its entries of this slot's
    /// key groups inserted where RocksDB refuses the files.
    fn merge(&self, source: &MergeSource) -> Result<RescaledPart> {
        let t = Instant::now();
        let builder = OptionsBuilder {
            config: &self.config,
            memory: &self.memory,
            hook: self.hook.as_ref(),
        };
        let names: Vec<String> = source.states.iter().map(|s| s.full_name()).collect();
        let mut cfs = vec![ColumnFamilyDescriptor::new(
            "default",
            builder.cf_options("default"),
        )];
        cfs.extend(
            names
                .iter()
                .map(|n| ColumnFamilyDescriptor::new(n, builder.cf_options(n))),
        );
        let old =
            Db::open_cf_descriptors_read_only(&builder.db_options(), &source.files, cfs, false)
                .map_err(EngineError::rocks("open an old slot's files"))?;
        let live = old
            .live_files()
            .map_err(EngineError::rocks("list an old slot's files"))?;
        let mut part = RescaledPart {
            old_slot: source.slot,
            key_groups: shared_key_groups(source.key_groups, self.range),
            path: RescalePath::Ingest,
            ms: 0.0,
            files_ingested: 0,
            entries_inserted: 0,
        };
        for name in &names {
            let mut files: Vec<&rocksdb::LiveFile> = live
                .iter()
                .filter(|f| &f.column_family_name == name)
                .collect();
            if files.is_empty() {
                continue;
            }
            // Lower levels first and, within L0, older files first: for a key in several
            // files, the later file must hold the newer version (RocksDB's rule for ingesting
            // a database's own files).
            files.sort_by_key(|f| (std::cmp::Reverse(f.level), f.largest_seqno));
            let paths: Vec<std::path::PathBuf> = files
                .iter()
                .map(|f| Path::new(&f.directory).join(f.name.trim_start_matches('/')))
                .collect();
            let cf = self.cf_named(name)?;
            let mut opts = IngestExternalFileOptions::default();
            opts.set_move_files(true);
            opts.set_allow_db_generated_files(true);
            match self.db.ingest_external_file_cf_opts(&cf, &opts, paths) {
                Ok(()) => part.files_ingested += files.len() as u64,
                Err(e) => {
                    tracing::info!(state = %name, old_slot = source.slot, error = %e, "ingestion refused; inserting the old slot's entries");
                    part.path = RescalePath::Insert;
                    part.entries_inserted += self.insert_from(&old, name)?;
                }
            }
        }
        part.ms = t.elapsed().as_secs_f64() * 1000.0;
        Ok(part)
    }

    /// Copies the entries of this slot's key groups of state `name` from `old`, batch by batch.
    fn insert_from(&self, old: &Db, name: &str) -> Result<u64> {
        let from_cf = old.cf_handle(name).ok_or_else(|| {
            EngineError::InvalidArgument(format!("column family {name} is not in the old slot"))
        })?;
        let lower =
            cairn_base::prefix::key_group_prefix(self.range.start as KeyGroup, self.prefix_bytes);
        let upper = cairn_base::prefix::key_group_upper_bound(
            self.range.end as KeyGroup,
            self.prefix_bytes,
        );
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_lower_bound(lower);
        if let Some(u) = upper {
            read.set_iterate_upper_bound(u);
        }
        read.fill_cache(false);
        let cf = self.cf_named(name)?;
        let mut batch = WriteBatch::default();
        let mut n = 0u64;
        for item in old.iterator_cf_opt(&from_cf, read, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(EngineError::rocks("read an old slot"))?;
            batch.put_cf(&cf, k, v);
            n += 1;
            if batch.size_in_bytes() >= INSERT_BATCH_BYTES {
                self.db
                    .write_opt(&batch, &self.write_opts)
                    .map_err(EngineError::rocks("write an old slot's entries"))?;
                batch.clear();
            }
        }
        self.db
            .write_opt(&batch, &self.write_opts)
            .map_err(EngineError::rocks("write an old slot's entries"))?;
        Ok(n)
    }
}

/// `a ∩ b` as `start..=end` (for reports).
fn shared_key_groups(a: KeyGroupRange, b: KeyGroupRange) -> String {
    format!("{}..={}", a.start.max(b.start), a.end.min(b.end))
}
