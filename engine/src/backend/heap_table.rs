//! The heap backend's per-key-group table: hashbrown's `HashTable` of cache-line-aligned
//! slots.
//!
//! A lookup's cost is the cache miss on its slot (the control bytes, 1/64 of the table, mostly
//! stay cached): 71 % of the word count's hash-table time sat on that one load. hashbrown's
//! `HashTable` (unlike its `HashMap`) tells where a hash's candidates are
//! ([`HashTable::iter_hash`]) without reading them, so [`Table::prefetch`] can fetch the slot
//! ahead of the access: a caller that knows its next keys (a batch of records, the next
//! timers to fire) hides the miss behind the work before it.
//!
//! Each slot is one cache line (64-byte aligned), so a prefetch covers key and value.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as RawEntry;

use super::heap::{HeapEntry, HeapKey};

/// One (composite key, entry) pair in one cache line.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub(crate) struct KeyedEntry {
    pub key: HeapKey,
    pub entry: HeapEntry,
}

const _: () = assert!(std::mem::size_of::<KeyedEntry>() == 64);

/// Entries of one state in one key group, by composite key (`[kg][key][namespace]`).
#[derive(Clone, Default)]
pub(crate) struct Table {
    slots: HashTable<KeyedEntry>,
    hasher: foldhash::fast::RandomState,
}

/// A key's place in a [`Table`]: its slot, or where it would go.
pub(crate) type Entry<'a> = RawEntry<'a, KeyedEntry>;

impl Table {
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// Starts loading the slot `key` is likely in (a tag match in its control group) into the
    /// cache, without waiting for it. A hint: a new key (no candidate) or a false candidate
    /// costs only the hash.
    #[inline]
    pub fn prefetch(&self, key: &[u8]) {
        if let Some(slot) = self.slots.iter_hash(self.hash(key)).next() {
            prefetch_line(std::ptr::from_ref(slot).cast());
        }
    }

    /// The entry of `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&HeapEntry> {
        self.slots
            .find(self.hash(key), |s| s.key[..] == *key)
            .map(|s| &s.entry)
    }

    /// The entry of `key`, to change in place.
    #[inline]
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut HeapEntry> {
        let hash = self.hash(key);
        self.slots
            .find_mut(hash, |s| s.key[..] == *key)
            .map(|s| &mut s.entry)
    }

    /// Whether `key` has an entry.
    #[inline]
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// `key`'s slot or the vacancy for it: a read-modify-write finds its place once and copies
    /// the key only when it inserts.
    #[inline]
    pub fn entry(&mut self, key: &[u8]) -> Entry<'_> {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        self.slots.entry(
            hash,
            |s| s.key[..] == *key,
            |s| std::hash::BuildHasher::hash_one(hasher, &s.key[..]),
        )
    }

    /// Sets `key`'s entry.
    pub fn insert(&mut self, key: &[u8], entry: HeapEntry) {
        match self.entry(key) {
            RawEntry::Occupied(mut o) => o.get_mut().entry = entry,
            RawEntry::Vacant(v) => {
                v.insert(KeyedEntry {
                    key: HeapKey::from_slice(key),
                    entry,
                });
            }
        }
    }

    /// `key`'s entry, inserting `make()` first if it has none.
    pub fn get_or_insert_with(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> HeapEntry,
    ) -> &mut HeapEntry {
        let slot = match self.entry(key) {
            RawEntry::Occupied(o) => o.into_mut(),
            RawEntry::Vacant(v) => v
                .insert(KeyedEntry {
                    key: HeapKey::from_slice(key),
                    entry: make(),
                })
                .into_mut(),
        };
        &mut slot.entry
    }

    /// Removes `key`'s entry.
    #[inline]
    pub fn remove(&mut self, key: &[u8]) -> Option<HeapEntry> {
        let hash = self.hash(key);
        match self.slots.find_entry(hash, |s| s.key[..] == *key) {
            Ok(o) => Some(o.remove().0.entry),
            Err(_) => None,
        }
    }

    /// Buckets of the table (occupied or not): the range of [`Table::bucket`]'s index. A
    /// cursor over bucket indices survives removals (entries do not move) and a copy-on-write
    /// clone (hashbrown clones a table bucket for bucket); a growth reorders it.
    pub fn num_buckets(&self) -> usize {
        self.slots.num_buckets()
    }

    /// The entry in bucket `index`, if occupied.
    pub fn bucket(&self, index: usize) -> Option<&HeapEntry> {
        self.slots.get_bucket(index).map(|s| &s.entry)
    }

    /// The entry in bucket `index`, to change in place.
    pub fn bucket_mut(&mut self, index: usize) -> Option<&mut HeapEntry> {
        self.slots.get_bucket_mut(index).map(|s| &mut s.entry)
    }

    /// Removes the entry in bucket `index`, if occupied.
    pub fn remove_bucket(&mut self, index: usize) {
        if let Ok(o) = self.slots.get_bucket_entry(index) {
            o.remove();
        }
    }

    /// Every (composite key, entry), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeapKey, &HeapEntry)> {
        self.slots.iter().map(|s| (&s.key, &s.entry))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Asks the CPU to bring the cache line at `p` into all cache levels (x86-64's `prefetcht0`;
/// nothing elsewhere). A prefetch never faults and does not read the data into the program.
#[inline]
fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is part of SSE (baseline on x86-64) and only hints the cache: it
    // reads nothing into the program and cannot fault, whatever `p` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    fn value(v: &[u8]) -> HeapEntry {
        HeapEntry::Value(v.into())
    }

    fn as_value(e: Option<&HeapEntry>) -> Option<Vec<u8>> {
        match e {
            Some(HeapEntry::Value(v)) => Some(v.to_vec()),
            _ => None,
        }
    }

    proptest! {
        /// Any sequence of inserts, removes and read-modify-writes leaves the table holding
        /// what a `BTreeMap` holds (keys up to 40 bytes: inline and spilled).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(
            (0u8..4, proptest::collection::vec(0u8..3, 0..40), any::<u8>()), 0..600)
        ) {
            let mut t = Table::default();
            let mut m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (op, key, v) in ops {
                // A hint on any table state (empty, growing, after removals) changes nothing.
                t.prefetch(&key);
                match op {
                    0 => {
                        t.insert(&key, value(&[v]));
                        m.insert(key.clone(), vec![v]);
                    }
                    1 => {
                        prop_assert_eq!(as_value(t.remove(&key).as_ref()), m.remove(&key));
                    }
                    2 => {
                        // Append `v`, inserting an empty value first.
                        if let HeapEntry::Value(x) = t.get_or_insert_with(&key, || value(&[])) {
                            x.push(v);
                        }
                        m.entry(key.clone()).or_default().push(v);
                    }
                    _ => {
                        if let Some(HeapEntry::Value(x)) = t.get_mut(&key) {
                            x.push(v);
                        }
                        if let Some(x) = m.get_mut(&key) {
                            x.push(v);
                        }
                    }
                }
                prop_assert_eq!(as_value(t.get(&key)), m.get(&key).cloned());
                prop_assert_eq!(t.contains_key(&key), m.contains_key(&key));
            }
            prop_assert_eq!(t.len(), m.len());
            let mut all: Vec<(Vec<u8>, Vec<u8>)> = t
                .iter()
                .map(|(k, e)| (k.to_vec(), as_value(Some(e)).unwrap_or_default()))
                .collect();
            all.sort();
            prop_assert_eq!(all, m.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn slots_are_cache_line_aligned() {
        let mut t = Table::default();
        for i in 0..1000u32 {
            t.insert(&i.to_be_bytes(), value(b"x"));
        }
        for (k, _) in t.iter() {
            assert_eq!(std::ptr::from_ref(k) as usize % 64, 0);
        }
    }
}
