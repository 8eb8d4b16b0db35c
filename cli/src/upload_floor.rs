//! Upload amplification against its floor: what each checkpoint of `cairn run` uploaded,
//! divided by the serialized bytes of the entries that changed since the previous checkpoint
//! (the least any incremental checkpoint must write: RocksDB keys as Cairn stores them plus
//! their values).
//!
//! Barriers sit at stream positions, so the entries a checkpoint covers are known from the
//! stream alone: the distinct keys of records `[previous position, position)`, each with the
//! value it holds at `position`. This module replays the stream after the run (nothing on the
//! record path), for the workloads whose entries are one value per key: `update` (a counter,
//! postcard `u64`) and `load` (a payload of `--value-size` bytes). Other workloads report none.

use std::collections::{HashMap, HashSet};

use cairn_engine::ScopeKey;
use cairn_engine::keygroup::{assign_to_key_group, prefix_bytes};
use foldhash::fast::FixedState;
use serde::Serialize;

use crate::stream;
use crate::workload::{WorkloadKind, WorkloadSpec};

/// One checkpoint's upload against its floor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorRow {
    /// The checkpoint.
    pub id: u64,
    /// Its barrier position: it holds the records `< position`.
    pub position: u64,
    /// Distinct keys written since the previous checkpoint (or the run's start).
    pub changed_keys: u64,
    /// Their serialized entries: composite RocksDB key (key-group prefix, key, namespace) plus
    /// value, bytes.
    pub changed_bytes: u64,
    /// What the checkpoint uploaded (its incremental bytes, metadata included).
    pub uploaded_bytes: u64,
    /// `uploaded_bytes / changed_bytes` (`None` when nothing changed).
    pub amplification: Option<f64>,
}

/// The run's checkpoints against their floors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UploadFloor {
    /// One row per completed checkpoint, in order.
    pub checkpoints: Vec<FloorRow>,
    /// Median amplification over the checkpoints after the first (the first uploads the whole
    /// state of a fresh run, which is its own floor only when nothing was restored).
    pub median_amplification: Option<f64>,
}

/// The floor of each completed checkpoint `(id, position, uploaded bytes)`, sorted by
/// position, of a run of `spec` that started at `start` with `max_parallelism` key groups;
/// `None` for workloads with more than one value per key.
pub fn compute(
    spec: &WorkloadSpec,
    start: u64,
    max_parallelism: u32,
    checkpoints: &[(u64, u64, u64)],
) -> Option<UploadFloor> {
    let key_of = |g: u64| match spec.kind {
        WorkloadKind::Update => Some(stream::key_for(g, spec.keys, spec.seed)),
        WorkloadKind::Load => Some(g % spec.keys),
        WorkloadKind::Mixed | WorkloadKind::Wordcount => None,
    };
    key_of(0)?;
    let prefix = prefix_bytes(max_parallelism);
    let mut key_bytes = Vec::new();
    let mut value_bytes = Vec::new();
    // Composite key length per key (computed once) and the count so far (update).
    // foldhash: the replay hashes every record's key twice; SipHash made it a third of the
    // process's CPU on the 10M-record counter (perf, 2026-12-05).
    let mut keys: HashMap<u64, (u32, u64), FixedState> = HashMap::default();
    let mut changed: HashSet<u64, FixedState> = HashSet::default();
    let mut g = 0u64;
    let mut rows = Vec::new();
    let mut sorted = checkpoints.to_vec();
    sorted.sort_by_key(|&(_, pos, _)| pos);
    for (id, position, uploaded) in sorted {
        let end = position.min(spec.records);
        while g < end {
            let key = key_of(g)?;
            let entry = keys.entry(key).or_insert_with(|| {
                cairn_engine::codec::encode_into(&mut key_bytes, &key, "<key>").ok();
                let kg = assign_to_key_group(&key_bytes, max_parallelism);
                let composite = ScopeKey::new(kg, prefix, &key_bytes, &[]).composite().len();
                (u32::try_from(composite).unwrap_or(u32::MAX), 0)
            });
            entry.1 += 1;
            if g >= start {
                changed.insert(key);
            }
            g += 1;
        }
        let mut changed_bytes = 0u64;
        for key in &changed {
            let (composite, count) = keys.get(key).copied().unwrap_or_default();
            let value = match spec.kind {
                WorkloadKind::Update => {
                    cairn_engine::codec::encode_into(&mut value_bytes, &count, "<value>").ok();
                    value_bytes.len() as u64
                }
                _ => spec.value_size as u64,
            };
            changed_bytes += u64::from(composite) + value;
        }
        rows.push(FloorRow {
            id,
            position,
            changed_keys: changed.len() as u64,
            changed_bytes,
            uploaded_bytes: uploaded,
            amplification: (changed_bytes > 0).then(|| uploaded as f64 / changed_bytes as f64),
        });
        changed.clear();
    }
    let mut later: Vec<f64> = rows
        .iter()
        .skip(1)
        .filter_map(|r| r.amplification)
        .collect();
    later.sort_by(f64::total_cmp);
    let median_amplification = (!later.is_empty()).then(|| later[later.len() / 2]);
    Some(UploadFloor {
        checkpoints: rows,
        median_amplification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: WorkloadKind, records: u64, keys: u64) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            records,
            keys,
            value_size: 8,
            seed: 42,
            skew: crate::workload::Skew::Uniform,
            zipf_exponent: 1.0,
        }
    }

    #[test]
    fn load_floor_counts_each_changed_key_once_per_interval() {
        // load: record g writes key g % 10 with a 100-byte value.
        let mut s = spec(WorkloadKind::Load, 100, 10);
        s.value_size = 100;
        let f = compute(&s, 0, 128, &[(2, 25, 5_000), (1, 5, 1_000)]).unwrap();
        let rows = &f.checkpoints;
        assert_eq!((rows[0].id, rows[0].changed_keys), (1, 5));
        assert_eq!((rows[1].id, rows[1].changed_keys), (2, 10));
        // Every key < 128 serializes to one byte, so every composite key has the same length.
        let composite = ScopeKey::new(0, 1, &[0], &[]).composite().len() as u64;
        assert_eq!(rows[0].changed_bytes, 5 * (composite + 100));
        let floor = 10.0 * (composite + 100) as f64;
        assert_eq!(rows[1].amplification, Some(5_000.0 / floor));
        assert_eq!(f.median_amplification, rows[1].amplification);
    }

    #[test]
    fn a_restored_run_counts_only_what_changed_after_its_start() {
        let s = spec(WorkloadKind::Update, 1_000, 1_000_000);
        let f = compute(&s, 990, 128, &[(1, 1_000, 10)]).unwrap();
        // 10 records on a million keys: 10 distinct keys (almost surely).
        assert!(f.checkpoints[0].changed_keys <= 10);
        assert!(f.checkpoints[0].changed_keys >= 9);
        assert!(compute(&spec(WorkloadKind::Mixed, 10, 10), 0, 128, &[(1, 5, 1)]).is_none());
    }
}
