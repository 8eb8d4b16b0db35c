//! Restoring from a savepoint: fetching the canonical chunks a slot needs (verified), loading
//! their entries and timers into a slot of either backend, and reading the old slots' operator
//! state. A native savepoint restores through the checkpoint path (its manifest carries the
//! checkpoint's metadata, see [`SavepointManifest::checkpoint_at`]).

use std::path::{Path, PathBuf};

use cairn_snapshot::savepoint::{ChunkFile, MAX_CHUNK_BYTES, SavepointDir, SavepointManifest};
use cairn_snapshot::transfer::{self, Expected};
use cairn_snapshot::{SnapshotError, StorageRoot, object_layout};
use cairn_timers::{HeapTimers, TimerService};

use super::canonical::{ChunkReader, Record};
use crate::backend::{LoadEntry, RestoredFiles, ScopeKey, StateDescriptor, StateKind, list_codec};
use crate::error::{EngineError, Result};
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::operator_state::OperatorState;
use crate::slot::Slot;
use crate::ttl::StateTtlConfig;

/// The states of a savepoint's manifest, in record order (names and kinds checked when the
/// manifest was read).
pub(crate) fn states_of(manifest: &SavepointManifest) -> Result<Vec<StateDescriptor>> {
    manifest
        .states
        .iter()
        .map(|s| {
            let (operator, name) = s.name.split_once('/').unwrap_or((&s.name, ""));
            let kind = match s.kind.as_str() {
                "value" => StateKind::Value,
                "list" => StateKind::List,
                "map" => StateKind::Map,
                "reducing" => StateKind::Reducing,
                "aggregating" => StateKind::Aggregating,
                other => {
                    return Err(EngineError::Corrupt {
                        state: s.name.clone(),
                        reason: format!("unknown kind {other:?} in the savepoint"),
                    });
                }
            };
            let desc = StateDescriptor::new(operator, name, kind);
            Ok(if s.ttl {
                desc.with_ttl(stored_ttl_mark()?)
            } else {
                desc
            })
        })
        .collect()
}

/// The TTL a state restored from a canonical savepoint with TTL is created with: it marks the
/// state as holding TTL timestamps (so registering it without TTL is refused, as after a
/// checkpoint) and expires nothing; the first registration replaces it with the job's TTL.
fn stored_ttl_mark() -> Result<StateTtlConfig> {
    Ok(StateTtlConfig::builder(std::time::Duration::from_secs(100 * 365 * 24 * 3600)).build()?)
}

fn overlaps(c: &ChunkFile, range: KeyGroupRange) -> bool {
    c.key_groups.start <= range.end && range.start <= c.key_groups.end
}

/// Downloads (verified, decompressed) the chunks of canonical savepoint `dir` with records of
/// key groups in `range` into `dest` (created), and says how to open the slot. Returns the bytes
/// fetched (as stored).
pub(crate) fn download_chunks(
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
    dir: &SavepointDir,
    manifest: &SavepointManifest,
    range: KeyGroupRange,
    dest: &Path,
    threads: usize,
) -> Result<(RestoredFiles, u64)> {
    std::fs::create_dir_all(dest).map_err(|e| EngineError::Io {
        op: format!("create {}", dest.display()),
        source: e,
    })?;
    let wanted: Vec<&ChunkFile> = manifest
        .chunks
        .iter()
        .filter(|c| overlaps(c, range))
        .collect();
    let mut jobs = Vec::with_capacity(wanted.len());
    let mut chunks = Vec::with_capacity(wanted.len());
    let mut bytes = 0;
    for (i, c) in wanted.iter().enumerate() {
        let to = object_layout::local_path(dest, "savepoint chunk", &format!("chunk-{i:06}"))?;
        chunks.push(to.clone());
        bytes += c.stored_size;
        let from = dir.object(&c.object);
        let expected = Expected {
            sha256: c.sha256.clone(),
            size: c.size,
            compressed: true,
            stored_size: Some(c.stored_size),
            hash_placed: true,
        };
        jobs.push(async move { transfer::download_file(storage, &from, &to, &expected).await });
    }
    rt.block_on(transfer::run_parallel(jobs, threads.max(1)))?;
    Ok((
        RestoredFiles::Canonical {
            chunks,
            states: states_of(manifest)?,
        },
        bytes,
    ))
}

/// Reads every old slot's operator state of canonical savepoint `dir` (verified; `tmp` is
/// scratch space), in old-slot order; a slot without a file had none.
pub(crate) fn read_operator_states(
    rt: &tokio::runtime::Runtime,
    storage: &StorageRoot,
    dir: &SavepointDir,
    manifest: &SavepointManifest,
    tmp: &Path,
) -> Result<Vec<OperatorState>> {
    std::fs::create_dir_all(tmp).map_err(|e| EngineError::Io {
        op: format!("create {}", tmp.display()),
        source: e,
    })?;
    let mut out = Vec::with_capacity(manifest.parallelism as usize);
    for slot in 0..manifest.parallelism {
        let Some(f) = manifest.operator_state.iter().find(|f| f.slot == slot) else {
            out.push(OperatorState::new());
            continue;
        };
        let to = object_layout::local_path(tmp, "operator state", &format!("slot-{slot}"))?;
        let expected = Expected {
            sha256: f.sha256.clone(),
            size: f.size,
            compressed: true,
            stored_size: Some(f.stored_size),
            hash_placed: true,
        };
        rt.block_on(transfer::download_file(
            storage,
            &dir.object(&f.object),
            &to,
            &expected,
        ))?;
        let bytes = std::fs::read(&to).map_err(|e| EngineError::Io {
            op: format!("read {}", to.display()),
            source: e,
        })?;
        let _ = std::fs::remove_file(&to);
        out.push(OperatorState::from_bytes(&bytes)?);
    }
    Ok(out)
}

/// Loads the entries of `slot`'s key groups from canonical chunk files into it (its states
/// already created in record order) and returns the timers of its key groups. Each file is
/// removed once loaded. A malformed chunk (it passed its sha256, so it was written wrong or
/// forged) is [`EngineError::Corrupt`] and the slot is not opened.
pub(crate) fn load_chunks(slot: &mut Slot, chunks: &[PathBuf]) -> Result<HeapTimers> {
    let range = slot.key_groups();
    let mut timers = HeapTimers::new(range.start as KeyGroup..=range.end as KeyGroup);
    let kinds: Vec<StateKind> = slot.states().iter().map(|d| d.kind).collect();
    let states = kinds.len();
    let prefix_bytes = slot.prefix_bytes();
    for path in chunks {
        let corrupt = |reason: String| EngineError::Corrupt {
            state: format!("savepoint chunk {}", path.display()),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| EngineError::Io {
                op: format!("stat {}", path.display()),
                source: e,
            })?
            .len();
        // Downloads stop at the manifest's size, which is capped; checked again here.
        if len > MAX_CHUNK_BYTES {
            return Err(EngineError::Checkpoint(SnapshotError::TooLarge {
                path: path.display().to_string(),
                limit: MAX_CHUNK_BYTES,
                what: "the savepoint chunk size cap",
            }));
        }
        let bytes = std::fs::read(path).map_err(|e| EngineError::Io {
            op: format!("read {}", path.display()),
            source: e,
        })?;
        // One batch per state per chunk: RocksDB turns each into one ingested SST file.
        let mut batches: Vec<Vec<LoadEntry>> = (0..states).map(|_| Vec::new()).collect();
        let mut reader = ChunkReader::new(&bytes).map_err(corrupt)?;
        while let Some(record) = reader.next().map_err(corrupt)? {
            let kg = record.key_group();
            if !range.contains(kg) {
                continue;
            }
            match record {
                Record::Entry {
                    state,
                    key,
                    namespace,
                    user_key,
                    value,
                    ..
                } => {
                    let batch = batches.get_mut(state as usize).ok_or_else(|| {
                        corrupt(format!(
                            "an entry of state {state} (the savepoint has {states})"
                        ))
                    })?;
                    if kinds[state as usize] == StateKind::List && !list_codec::is_valid(value) {
                        return Err(corrupt(format!(
                            "a list of state {state} is not list-encoded"
                        )));
                    }
                    batch.push(LoadEntry {
                        scope: ScopeKey::new(kg, prefix_bytes, key, namespace),
                        user_key: user_key.to_vec(),
                        value: value.to_vec(),
                    });
                }
                Record::Timer {
                    domain,
                    timestamp,
                    key,
                    namespace,
                    ..
                } => timers.register(domain, kg, timestamp, key, namespace)?,
            }
        }
        drop(bytes);
        for (state, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                slot.load_entries(state as u32, batch)?;
            }
        }
        let _ = std::fs::remove_file(path);
    }
    Ok(timers)
}
