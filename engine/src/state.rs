//! Typed state handles over the raw-bytes slot API. A handle is a registered state id plus its
//! codec; every call takes the slot and the [`ScopeKey`] of the current key and namespace.
//!
//! A handle registered with a [`StateTtlConfig`] (the `*_with_ttl` registrations) has Flink's
//! TTL semantics; its methods are the same (see [`crate::ttl`]).
//!
//! Reducing and aggregating state read, fold and write back (as Flink's RocksDB backend does):
//! a RocksDB merge operator cannot run user functions that capture Rust closures safely across
//! restores, and the read is served by the block cache for hot keys.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{ScopeKey, StateDescriptor, StateId, StateKind, Update};
use crate::codec;
use crate::error::Result;
use crate::slot::Slot;
use crate::ttl::StateTtlConfig;

/// Bounds of every stored type.
pub trait StateValue: Serialize + DeserializeOwned {}
impl<T: Serialize + DeserializeOwned> StateValue for T {}

fn register(
    slot: &mut Slot,
    operator: &str,
    name: &str,
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
) -> Result<(StateId, Arc<str>)> {
    let mut desc = StateDescriptor::new(operator, name, kind);
    desc.ttl = ttl;
    let id = slot.register(&desc)?;
    Ok((id, Arc::from(desc.full_name())))
}

/// One value per (key, namespace).
pub struct ValueState<V> {
    id: StateId,
    name: Arc<str>,
    _v: PhantomData<fn() -> V>,
}

impl<V: StateValue> ValueState<V> {
    /// The raw state id.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The value, or `None`.
    pub fn get(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Option<V>> {
        slot.get_with(self.id, scope, |b| b.map(|b| codec::decode(b, &self.name)))?
            .transpose()
    }

    /// Sets the value.
    pub fn update(&self, slot: &mut Slot, scope: &ScopeKey, value: &V) -> Result<()> {
        slot.put_encoded(self.id, scope, value, &self.name)
    }

    /// Removes the value.
    pub fn clear(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<()> {
        slot.clear(self.id, scope)
    }
}

/// A list per (key, namespace); `add` appends without reading (a RocksDB merge).
pub struct ListState<V> {
    id: StateId,
    name: Arc<str>,
    _v: PhantomData<fn() -> V>,
}

impl<V: StateValue> ListState<V> {
    /// The raw state id.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// All elements in append order (empty when absent).
    pub fn get(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Vec<V>> {
        slot.list_get(self.id, scope)?
            .iter()
            .map(|b| codec::decode(b, &self.name))
            .collect()
    }

    /// Appends one element.
    pub fn add(&self, slot: &mut Slot, scope: &ScopeKey, value: &V) -> Result<()> {
        let bytes = codec::encode(value, &self.name)?;
        slot.list_append(self.id, scope, &[&bytes])
    }

    /// Appends several elements in one write.
    pub fn add_all(&self, slot: &mut Slot, scope: &ScopeKey, values: &[V]) -> Result<()> {
        let enc: Vec<Vec<u8>> = values
            .iter()
            .map(|v| codec::encode(v, &self.name))
            .collect::<Result<_>>()?;
        let refs: Vec<&[u8]> = enc.iter().map(|e| &e[..]).collect();
        slot.list_append(self.id, scope, &refs)
    }

    /// Replaces the list.
    pub fn update(&self, slot: &mut Slot, scope: &ScopeKey, values: &[V]) -> Result<()> {
        let enc: Vec<Vec<u8>> = values
            .iter()
            .map(|v| codec::encode(v, &self.name))
            .collect::<Result<_>>()?;
        let refs: Vec<&[u8]> = enc.iter().map(|e| &e[..]).collect();
        slot.list_update(self.id, scope, &refs)
    }

    /// Removes the list.
    pub fn clear(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<()> {
        slot.clear(self.id, scope)
    }
}

/// A map per (key, namespace), iterated in ascending order of the user key's encoded bytes.
pub struct MapState<K, V> {
    id: StateId,
    name: Arc<str>,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K: StateValue, V: StateValue> MapState<K, V> {
    /// The raw state id.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The value of `key`.
    pub fn get(&self, slot: &mut Slot, scope: &ScopeKey, key: &K) -> Result<Option<V>> {
        let uk = codec::encode(key, &self.name)?;
        slot.map_get(self.id, scope, &uk)?
            .map(|b| codec::decode(&b, &self.name))
            .transpose()
    }

    /// Sets `key` to `value`.
    pub fn put(&self, slot: &mut Slot, scope: &ScopeKey, key: &K, value: &V) -> Result<()> {
        let uk = codec::encode(key, &self.name)?;
        let v = codec::encode(value, &self.name)?;
        slot.map_put(self.id, scope, &uk, &v)
    }

    /// Whether `key` is present.
    pub fn contains(&self, slot: &mut Slot, scope: &ScopeKey, key: &K) -> Result<bool> {
        let uk = codec::encode(key, &self.name)?;
        slot.map_contains(self.id, scope, &uk)
    }

    /// Removes `key`.
    pub fn remove(&self, slot: &mut Slot, scope: &ScopeKey, key: &K) -> Result<()> {
        let uk = codec::encode(key, &self.name)?;
        slot.map_remove(self.id, scope, &uk)
    }

    /// All entries.
    pub fn entries(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Vec<(K, V)>> {
        slot.map_entries(self.id, scope)?
            .iter()
            .map(|(k, v)| Ok((codec::decode(k, &self.name)?, codec::decode(v, &self.name)?)))
            .collect()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<bool> {
        Ok(slot.map_entries(self.id, scope)?.is_empty())
    }

    /// Removes every entry.
    pub fn clear(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<()> {
        slot.clear(self.id, scope)
    }
}

/// One value folded with a reduce function on every `add`.
pub struct ReducingState<V, F> {
    id: StateId,
    name: Arc<str>,
    reduce: F,
    _v: PhantomData<fn() -> V>,
}

impl<V: StateValue, F: Fn(&V, &V) -> V> ReducingState<V, F> {
    /// The raw state id.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The folded value.
    pub fn get(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Option<V>> {
        slot.get(self.id, scope)?
            .map(|b| codec::decode(&b, &self.name))
            .transpose()
    }

    /// Folds `value` into the state (one read-modify-write: [`Slot::update_with`]).
    pub fn add(&self, slot: &mut Slot, scope: &ScopeKey, value: &V) -> Result<()> {
        slot.update_with(self.id, scope, |cur, out| {
            let r = match cur {
                Some(b) => codec::decode(b, &self.name).and_then(|cur| {
                    codec::encode_into(out, &(self.reduce)(&cur, value), &self.name)
                }),
                None => codec::encode_into(out, value, &self.name),
            };
            (if r.is_ok() { Update::Put } else { Update::Keep }, r)
        })?
    }

    /// Removes the value.
    pub fn clear(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<()> {
        slot.clear(self.id, scope)
    }
}

/// An aggregation (Flink's `AggregateFunction`): inputs fold into an accumulator, and the
/// result is computed from the accumulator on read.
pub trait AggregateFunction {
    /// Input type.
    type In;
    /// Stored accumulator.
    type Acc: StateValue;
    /// Result type.
    type Out;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Folds one input.
    fn add(&self, value: &Self::In, acc: Self::Acc) -> Self::Acc;
    /// The result of an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
}

/// One accumulator per (key, namespace), folded by an [`AggregateFunction`].
pub struct AggregatingState<A> {
    id: StateId,
    name: Arc<str>,
    agg: A,
}

impl<A: AggregateFunction> AggregatingState<A> {
    /// The raw state id.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The aggregation result, or `None` when nothing was added.
    pub fn get(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Option<A::Out>> {
        Ok(self
            .accumulator(slot, scope)?
            .map(|a| self.agg.get_result(&a)))
    }

    fn accumulator(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<Option<A::Acc>> {
        slot.get(self.id, scope)?
            .map(|b| codec::decode(&b, &self.name))
            .transpose()
    }

    /// Folds one input into the accumulator (one read-modify-write: [`Slot::update_with`]).
    pub fn add(&self, slot: &mut Slot, scope: &ScopeKey, value: &A::In) -> Result<()> {
        slot.update_with(self.id, scope, |cur, out| {
            let acc = match cur {
                Some(b) => codec::decode(b, &self.name),
                None => Ok(self.agg.create_accumulator()),
            };
            let r =
                acc.and_then(|acc| codec::encode_into(out, &self.agg.add(value, acc), &self.name));
            (if r.is_ok() { Update::Put } else { Update::Keep }, r)
        })?
    }

    /// Removes the accumulator.
    pub fn clear(&self, slot: &mut Slot, scope: &ScopeKey) -> Result<()> {
        slot.clear(self.id, scope)
    }
}

impl Slot {
    /// Registers (or looks up) a value state.
    pub fn value_state<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
    ) -> Result<ValueState<V>> {
        self.value_state_inner(operator, name, None)
    }

    /// Registers (or looks up) a value state with a time-to-live (see [`crate::ttl`]).
    pub fn value_state_with_ttl<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: StateTtlConfig,
    ) -> Result<ValueState<V>> {
        self.value_state_inner(operator, name, Some(ttl))
    }

    fn value_state_inner<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> Result<ValueState<V>> {
        let (id, name) = register(self, operator, name, StateKind::Value, ttl)?;
        Ok(ValueState {
            id,
            name,
            _v: PhantomData,
        })
    }

    /// Registers (or looks up) a list state.
    pub fn list_state<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
    ) -> Result<ListState<V>> {
        self.list_state_inner(operator, name, None)
    }

    /// Registers (or looks up) a list state with a time-to-live: each element expires on its
    /// own (see [`crate::ttl`]).
    pub fn list_state_with_ttl<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: StateTtlConfig,
    ) -> Result<ListState<V>> {
        self.list_state_inner(operator, name, Some(ttl))
    }

    fn list_state_inner<V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> Result<ListState<V>> {
        let (id, name) = register(self, operator, name, StateKind::List, ttl)?;
        Ok(ListState {
            id,
            name,
            _v: PhantomData,
        })
    }

    /// Registers (or looks up) a map state.
    pub fn map_state<K: StateValue, V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
    ) -> Result<MapState<K, V>> {
        self.map_state_inner(operator, name, None)
    }

    /// Registers (or looks up) a map state with a time-to-live: each entry expires on its own
    /// (see [`crate::ttl`]).
    pub fn map_state_with_ttl<K: StateValue, V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: StateTtlConfig,
    ) -> Result<MapState<K, V>> {
        self.map_state_inner(operator, name, Some(ttl))
    }

    fn map_state_inner<K: StateValue, V: StateValue>(
        &mut self,
        operator: &str,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> Result<MapState<K, V>> {
        let (id, name) = register(self, operator, name, StateKind::Map, ttl)?;
        Ok(MapState {
            id,
            name,
            _kv: PhantomData,
        })
    }

    /// Registers (or looks up) a reducing state with its reduce function.
    pub fn reducing_state<V: StateValue, F: Fn(&V, &V) -> V>(
        &mut self,
        operator: &str,
        name: &str,
        reduce: F,
    ) -> Result<ReducingState<V, F>> {
        self.reducing_state_inner(operator, name, reduce, None)
    }

    /// Registers (or looks up) a reducing state with a time-to-live (see [`crate::ttl`]): an
    /// `add` to an expired value starts from the added value (under
    /// `ReturnExpiredIfNotCleanedUp` it folds into the expired one, as Flink does).
    pub fn reducing_state_with_ttl<V: StateValue, F: Fn(&V, &V) -> V>(
        &mut self,
        operator: &str,
        name: &str,
        reduce: F,
        ttl: StateTtlConfig,
    ) -> Result<ReducingState<V, F>> {
        self.reducing_state_inner(operator, name, reduce, Some(ttl))
    }

    fn reducing_state_inner<V: StateValue, F: Fn(&V, &V) -> V>(
        &mut self,
        operator: &str,
        name: &str,
        reduce: F,
        ttl: Option<StateTtlConfig>,
    ) -> Result<ReducingState<V, F>> {
        let (id, name) = register(self, operator, name, StateKind::Reducing, ttl)?;
        Ok(ReducingState {
            id,
            name,
            reduce,
            _v: PhantomData,
        })
    }

    /// Registers (or looks up) an aggregating state with its aggregate function.
    pub fn aggregating_state<A: AggregateFunction>(
        &mut self,
        operator: &str,
        name: &str,
        agg: A,
    ) -> Result<AggregatingState<A>> {
        self.aggregating_state_inner(operator, name, agg, None)
    }

    /// Registers (or looks up) an aggregating state with a time-to-live (see [`crate::ttl`]):
    /// an `add` to an expired accumulator starts from a fresh one (under
    /// `ReturnExpiredIfNotCleanedUp` it folds into the expired one, as Flink does).
    pub fn aggregating_state_with_ttl<A: AggregateFunction>(
        &mut self,
        operator: &str,
        name: &str,
        agg: A,
        ttl: StateTtlConfig,
    ) -> Result<AggregatingState<A>> {
        self.aggregating_state_inner(operator, name, agg, Some(ttl))
    }

    fn aggregating_state_inner<A: AggregateFunction>(
        &mut self,
        operator: &str,
        name: &str,
        agg: A,
        ttl: Option<StateTtlConfig>,
    ) -> Result<AggregatingState<A>> {
        let (id, name) = register(self, operator, name, StateKind::Aggregating, ttl)?;
        Ok(AggregatingState { id, name, agg })
    }
}
