//! The heap backend: keyed state in memory (Flink's `HashMapStateBackend`).
//!
//! Each state has one table per key group of the slot, each behind an `Arc`. A snapshot clones
//! the `Arc`s (O(key groups), no entry copied), and a later write to a key group still shared
//! with a snapshot copies that one key group first (`Arc::make_mut`). So a consistent snapshot
//! costs a pause proportional to the number of key groups, not to the state size, and the copy
//! work is spread over the key groups that are actually written afterwards — copy-on-write at
//! key-group granularity, where Flink's `CopyOnWriteStateMap` copies entry by entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::backend::{
    ScopeKey, StateBackend, StateDescriptor, StateEntry, StateId, StateSize, list_codec,
};
use crate::error::{EngineError, Result};
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::layout;

/// One (key, namespace) entry.
#[derive(Clone, Debug)]
enum HeapEntry {
    Value(Vec<u8>),
    List(Vec<Vec<u8>>),
    Map(BTreeMap<Vec<u8>, Vec<u8>>),
}

type Table = HashMap<Box<[u8]>, HeapEntry, foldhash::fast::RandomState>;

struct HeapState {
    desc: StateDescriptor,
    /// One table per key group of the slot, indexed by `range.index_of(kg)`.
    tables: Vec<Arc<Table>>,
}

/// In-memory keyed state of one slot. See the module doc.
pub struct HeapBackend {
    range: KeyGroupRange,
    prefix_bytes: usize,
    states: Vec<HeapState>,
}

impl HeapBackend {
    /// An empty backend for the key groups `range` of a job with `max_parallelism` key groups.
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Self {
        Self {
            range,
            prefix_bytes: crate::keygroup::prefix_bytes(max_parallelism),
            states: Vec::new(),
        }
    }

    fn state(&self, id: StateId) -> Result<&HeapState> {
        self.states
            .get(id as usize)
            .ok_or(EngineError::UnknownState(id))
    }

    fn table(&self, id: StateId, kg: KeyGroup) -> Result<&Table> {
        let idx = self.range.index_of(kg);
        Ok(&self.state(id)?.tables[idx])
    }

    /// The table to write, copied first if a snapshot still shares it.
    fn table_mut(&mut self, id: StateId, kg: KeyGroup) -> Result<&mut Table> {
        let idx = self.range.index_of(kg);
        let state = self
            .states
            .get_mut(id as usize)
            .ok_or(EngineError::UnknownState(id))?;
        Ok(Arc::make_mut(&mut state.tables[idx]))
    }

    fn corrupt(&self, id: StateId, what: &str) -> EngineError {
        let state = self
            .states
            .get(id as usize)
            .map(|s| s.desc.full_name())
            .unwrap_or_default();
        EngineError::Corrupt {
            state,
            reason: format!("heap entry is not a {what}"),
        }
    }
}

impl StateBackend for HeapBackend {
    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn create_state(&mut self, id: StateId, desc: &StateDescriptor) -> Result<()> {
        debug_assert_eq!(id as usize, self.states.len());
        let tables = (0..self.range.len())
            .map(|_| Arc::new(Table::default()))
            .collect();
        self.states.push(HeapState {
            desc: desc.clone(),
            tables,
        });
        Ok(())
    }

    fn get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Option<Vec<u8>>> {
        match self.table(state, scope.key_group)?.get(&scope.composite[..]) {
            None => Ok(None),
            Some(HeapEntry::Value(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.corrupt(state, "value")),
        }
    }

    fn put(&mut self, state: StateId, scope: &ScopeKey, value: &[u8]) -> Result<()> {
        let table = self.table_mut(state, scope.key_group)?;
        match table.get_mut(&scope.composite[..]) {
            Some(HeapEntry::Value(v)) => {
                v.clear();
                v.extend_from_slice(value);
            }
            _ => {
                table.insert(
                    scope.composite.clone().into_boxed_slice(),
                    HeapEntry::Value(value.to_vec()),
                );
            }
        }
        Ok(())
    }

    fn clear(&mut self, state: StateId, scope: &ScopeKey) -> Result<()> {
        // Skip the copy-on-write when there is nothing to remove.
        if self.table(state, scope.key_group)?.contains_key(&scope.composite[..]) {
            self.table_mut(state, scope.key_group)?
                .remove(&scope.composite[..]);
        }
        Ok(())
    }

    fn list_get(&mut self, state: StateId, scope: &ScopeKey) -> Result<Vec<Vec<u8>>> {
        match self.table(state, scope.key_group)?.get(&scope.composite[..]) {
            None => Ok(Vec::new()),
            Some(HeapEntry::List(l)) => Ok(l.clone()),
            Some(_) => Err(self.corrupt(state, "list")),
        }
    }

    fn list_append(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        let table = self.table_mut(state, scope.key_group)?;
        let entry = table
            .entry(scope.composite.clone().into_boxed_slice())
            .or_insert_with(|| HeapEntry::List(Vec::new()));
        match entry {
            HeapEntry::List(l) => {
                l.extend(elements.iter().map(|e| e.to_vec()));
                Ok(())
            }
            _ => Err(self.corrupt(state, "list")),
        }
    }

    fn list_update(&mut self, state: StateId, scope: &ScopeKey, elements: &[&[u8]]) -> Result<()> {
        if elements.is_empty() {
            return self.clear(state, scope);
        }
        let list = elements.iter().map(|e| e.to_vec()).collect();
        self.table_mut(state, scope.key_group)?.insert(
            scope.composite.clone().into_boxed_slice(),
            HeapEntry::List(list),
        );
        Ok(())
    }

    fn map_get(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match self.table(state, scope.key_group)?.get(&scope.composite[..]) {
            None => Ok(None),
            Some(HeapEntry::Map(m)) => Ok(m.get(user_key).cloned()),
            Some(_) => Err(self.corrupt(state, "map")),
        }
    }

    fn map_put(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let table = self.table_mut(state, scope.key_group)?;
        let entry = table
            .entry(scope.composite.clone().into_boxed_slice())
            .or_insert_with(|| HeapEntry::Map(BTreeMap::new()));
        match entry {
            HeapEntry::Map(m) => {
                m.insert(user_key.to_vec(), value.to_vec());
                Ok(())
            }
            _ => Err(self.corrupt(state, "map")),
        }
    }

    fn map_remove(&mut self, state: StateId, scope: &ScopeKey, user_key: &[u8]) -> Result<()> {
        let present = match self.table(state, scope.key_group)?.get(&scope.composite[..]) {
            Some(HeapEntry::Map(m)) => m.contains_key(user_key),
            Some(_) => return Err(self.corrupt(state, "map")),
            None => false,
        };
        if present {
            let table = self.table_mut(state, scope.key_group)?;
            let now_empty = match table.get_mut(&scope.composite[..]) {
                Some(HeapEntry::Map(m)) => {
                    m.remove(user_key);
                    m.is_empty()
                }
                _ => false,
            };
            // An empty map is an absent map, as in RocksDB.
            if now_empty {
                table.remove(&scope.composite[..]);
            }
        }
        Ok(())
    }

    fn map_entries(
        &mut self,
        state: StateId,
        scope: &ScopeKey,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self.table(state, scope.key_group)?.get(&scope.composite[..]) {
            None => Ok(Vec::new()),
            Some(HeapEntry::Map(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(_) => Err(self.corrupt(state, "map")),
        }
    }

    fn scan_key_group(&mut self, state: StateId, key_group: KeyGroup) -> Result<Vec<StateEntry>> {
        if !self.range.contains(key_group) {
            return Ok(Vec::new());
        }
        let table = self.table(state, key_group)?;
        let mut out = Vec::with_capacity(table.len());
        for (composite, entry) in table.iter() {
            let ck = layout::decode_composite(composite, self.prefix_bytes)
                .ok_or_else(|| self.corrupt(state, "composite key"))?;
            let mk = |user_key: &[u8], value: Vec<u8>| StateEntry {
                key: ck.key.to_vec(),
                namespace: ck.namespace.to_vec(),
                user_key: user_key.to_vec(),
                value,
            };
            match entry {
                HeapEntry::Value(v) => out.push(mk(&[], v.clone())),
                HeapEntry::List(l) => {
                    out.push(mk(&[], list_codec::encode(l.iter().map(|e| &e[..]))))
                }
                HeapEntry::Map(m) => out.extend(m.iter().map(|(uk, v)| mk(uk, v.clone()))),
            }
        }
        // Same order as RocksDB's: by composite key, then user key.
        out.sort_by(|a, b| {
            (a.key.len(), &a.key, a.namespace.len(), &a.namespace, &a.user_key).cmp(&(
                b.key.len(),
                &b.key,
                b.namespace.len(),
                &b.namespace,
                &b.user_key,
            ))
        });
        Ok(out)
    }

    fn state_sizes(&self) -> Vec<StateSize> {
        self.states
            .iter()
            .map(|s| {
                let mut bytes = 0u64;
                let mut entries = 0u64;
                for t in &s.tables {
                    for (k, e) in t.iter() {
                        bytes += k.len() as u64;
                        match e {
                            HeapEntry::Value(v) => {
                                bytes += v.len() as u64;
                                entries += 1;
                            }
                            HeapEntry::List(l) => {
                                bytes += l.iter().map(|x| x.len() as u64).sum::<u64>();
                                entries += 1;
                            }
                            HeapEntry::Map(m) => {
                                bytes += m.iter().map(|(a, b)| (a.len() + b.len()) as u64).sum::<u64>();
                                entries += m.len() as u64;
                            }
                        }
                    }
                }
                StateSize {
                    state: s.desc.full_name(),
                    bytes,
                    entries,
                }
            })
            .collect()
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn memory_report(&self) -> cairn_memory::MemoryReport {
        cairn_memory::MemoryReport {
            rss_bytes: cairn_memory::process_rss_bytes(),
            ..Default::default()
        }
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}
