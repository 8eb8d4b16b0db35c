//! Operator (non-keyed) state: what a host keeps per slot for itself, outside key groups, such as
//! a source's offsets or a broadcast rule set. Flink's operator state backend:
//! - **List state** whose entries are redistributed when the slot count changes: by **even
//!   split** (the entries of every old slot, concatenated in slot order, cut into as many
//!   contiguous parts as there are new slots: Flink's `ListState`, e.g. source partitions and
//!   their offsets) or by **union** (every new slot gets every entry: Flink's `UnionListState`).
//!   With the slot count unchanged, each slot gets its own entries back.
//! - **Broadcast state**: a map that is the same on every slot; a restore hands every new slot
//!   the copy of old slot 0.
//!
//! It is part of every checkpoint: the synchronous phase copies it (it is small by design: a
//! host keeps bulk data in keyed state) and the asynchronous phase writes it as the slot's private
//! file [`OPERATOR_STATE_FILE`]. [`OperatorState::redistribute`] builds a new slot's part from
//! the old slots' parts; [`Checkpointer::operator_state_for_slot`] does it from a checkpoint.
//!
//! [`Checkpointer::operator_state_for_slot`]: crate::checkpoint::Checkpointer::operator_state_for_slot

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{EngineError, Result};

/// Name of the operator state's file inside a slot's local snapshot (a private file).
pub const OPERATOR_STATE_FILE: &str = "operator.state";
/// The format tag of that file.
const FORMAT: &str = "cairn-operator-state";
/// The version this build writes and reads.
const VERSION: u32 = 1;

/// How a list state's entries go to the slots of a restore with another slot count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redistribution {
    /// The entries of all old slots, concatenated in slot order, cut into contiguous parts.
    EvenSplit,
    /// Every new slot gets every entry.
    Union,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ListState {
    mode: Option<Redistribution>,
    entries: Vec<Vec<u8>>,
}

/// One slot's operator state. See the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    lists: BTreeMap<String, ListState>,
    broadcast: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    state: OperatorState,
}

impl OperatorState {
    /// No state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it holds no list and no broadcast state.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty() && self.broadcast.is_empty()
    }

    /// The entries of list `name` (empty when it has none).
    pub fn list(&self, name: &str) -> &[Vec<u8>] {
        self.lists.get(name).map_or(&[], |l| &l.entries)
    }

    /// Replaces list `name` with `entries`, redistributed by `mode` on a restore with another
    /// slot count.
    pub fn set_list(&mut self, name: &str, mode: Redistribution, entries: Vec<Vec<u8>>) {
        self.lists.insert(
            name.to_string(),
            ListState {
                mode: Some(mode),
                entries,
            },
        );
    }

    /// List `name` decoded as `T`s (serialized by [`OperatorState::set_list_of`]).
    pub fn list_of<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>> {
        self.list(name)
            .iter()
            .map(|e| codec::decode(e, name))
            .collect()
    }

    /// [`OperatorState::set_list`] with typed entries (serialized with the engine's codec).
    pub fn set_list_of<T: Serialize>(
        &mut self,
        name: &str,
        mode: Redistribution,
        entries: &[T],
    ) -> Result<()> {
        let bytes = entries
            .iter()
            .map(|e| codec::encode(e, name))
            .collect::<Result<Vec<_>>>()?;
        self.set_list(name, mode, bytes);
        Ok(())
    }

    /// Broadcast state `name` (`None` when it has none).
    pub fn broadcast(&self, name: &str) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        self.broadcast.get(name)
    }

    /// Broadcast state `name`, created empty. The host keeps it the same on every slot (it
    /// applies every broadcast update on each).
    pub fn broadcast_mut(&mut self, name: &str) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        self.broadcast.entry(name.to_string()).or_default()
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(&File {
            format: FORMAT.into(),
            version: VERSION,
            state: self.clone(),
        })
        .map_err(|e| EngineError::Encode {
            state: OPERATOR_STATE_FILE.into(),
            reason: e.to_string(),
        })
    }

    /// Reads a file written by [`OperatorState::to_bytes`]; anything else (another format or
    /// version, truncated or trailing bytes) is [`EngineError::Corrupt`]. Lengths inside are
    /// bounded by the bytes given, which a restore has checked against the checkpoint's sha256.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| EngineError::Corrupt {
            state: OPERATOR_STATE_FILE.into(),
            reason,
        };
        let (file, rest): (File, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes after the end", rest.len())));
        }
        if file.format != FORMAT || file.version != VERSION {
            return Err(corrupt(format!(
                "format {:?} version {}; this build reads {FORMAT} version {VERSION}",
                file.format, file.version
            )));
        }
        Ok(file.state)
    }

    /// The operator state of new slot `index` of `parallelism`, from the old slots' states in
    /// old slot order (see the module doc).
    pub fn redistribute(old: &[OperatorState], index: u32, parallelism: u32) -> Result<Self> {
        if parallelism == 0 || index >= parallelism {
            return Err(EngineError::InvalidArgument(format!(
                "slot {index} of {parallelism}: no such slot"
            )));
        }
        let same = old.len() == parallelism as usize;
        let mut out = OperatorState::new();
        let names: std::collections::BTreeSet<&String> =
            old.iter().flat_map(|s| s.lists.keys()).collect();
        for name in names {
            let parts: Vec<&ListState> = old.iter().filter_map(|s| s.lists.get(name)).collect();
            let mode = parts
                .iter()
                .find_map(|p| p.mode)
                .unwrap_or(Redistribution::EvenSplit);
            if parts.iter().any(|p| p.mode.is_some_and(|m| m != mode)) {
                return Err(EngineError::Corrupt {
                    state: OPERATOR_STATE_FILE.into(),
                    reason: format!("list {name} is split on some slots and a union on others"),
                });
            }
            let entries = match mode {
                Redistribution::Union => parts.iter().flat_map(|p| p.entries.clone()).collect(),
                Redistribution::EvenSplit if same => old[index as usize]
                    .lists
                    .get(name)
                    .map(|l| l.entries.clone())
                    .unwrap_or_default(),
                Redistribution::EvenSplit => {
                    let all: Vec<&Vec<u8>> = parts.iter().flat_map(|p| &p.entries).collect();
                    let (n, p, i) = (all.len(), parallelism as usize, index as usize);
                    // Contiguous parts whose sizes differ by at most one, larger ones first.
                    let start = i * (n / p) + i.min(n % p);
                    let len = n / p + usize::from(i < n % p);
                    all[start..start + len]
                        .iter()
                        .map(|e| (*e).clone())
                        .collect()
                }
            };
            out.lists.insert(
                name.clone(),
                ListState {
                    mode: Some(mode),
                    entries,
                },
            );
        }
        if let Some(first) = old.first() {
            out.broadcast = first.broadcast.clone();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(offsets: &[u64], rules: &[&str]) -> OperatorState {
        let mut s = OperatorState::new();
        s.set_list_of("offsets", Redistribution::EvenSplit, offsets)
            .unwrap();
        s.set_list_of("seen-by", Redistribution::Union, &[offsets.len() as u64])
            .unwrap();
        for r in rules {
            s.broadcast_mut("rules")
                .insert(r.as_bytes().to_vec(), b"on".to_vec());
        }
        s
    }

    #[test]
    fn even_split_union_and_broadcast_follow_flink() -> Result<()> {
        let old = vec![slot(&[1, 2, 3], &["a", "b"]), slot(&[4, 5], &["a", "b"])];
        // Same slot count: each slot its own.
        let s1 = OperatorState::redistribute(&old, 1, 2)?;
        assert_eq!(s1.list_of::<u64>("offsets")?, vec![4, 5]);
        // 2 -> 3: 5 entries cut 2, 2, 1; union everywhere; broadcast copied.
        let new: Vec<_> = (0..3)
            .map(|i| OperatorState::redistribute(&old, i, 3))
            .collect::<Result<_>>()?;
        let parts: Vec<Vec<u64>> = new
            .iter()
            .map(|s| s.list_of("offsets"))
            .collect::<Result<_>>()?;
        assert_eq!(parts, vec![vec![1, 2], vec![3, 4], vec![5]]);
        for s in &new {
            assert_eq!(s.list_of::<u64>("seen-by")?, vec![3, 2]);
            assert_eq!(s.broadcast("rules").map(|r| r.len()), Some(2));
        }
        // 2 -> 1: everything in one slot.
        let one = OperatorState::redistribute(&old, 0, 1)?;
        assert_eq!(one.list_of::<u64>("offsets")?, vec![1, 2, 3, 4, 5]);
        assert!(OperatorState::redistribute(&old, 3, 3).is_err());
        Ok(())
    }

    #[test]
    fn the_file_round_trips_and_damage_is_corrupt() -> Result<()> {
        let s = slot(&[7, 8], &["x"]);
        let bytes = s.to_bytes()?;
        assert_eq!(OperatorState::from_bytes(&bytes)?, s);
        for damaged in [
            bytes[..bytes.len() - 1].to_vec(),
            [bytes.clone(), vec![0]].concat(),
            vec![0xff; 16],
        ] {
            let e = OperatorState::from_bytes(&damaged).err().map(|e| e.kind());
            assert_eq!(e, Some(crate::ErrorKind::Corrupt));
        }
        Ok(())
    }
}
