//! The host-facing helpers of the `cairn` crate: routing a typed key to its slot, and firing
//! timers with the state of each timer's key in scope (for every backend).

use cairn::{
    BackendKind, CairnConfig, KeyGroupRange, Slot, TimeDomain, VoidNamespace, key_group_of,
    slot_for_key,
};

mod support;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MAX_P: u32 = 128;

fn config(backend: BackendKind, root: &std::path::Path) -> CairnConfig {
    let mut cfg = support::checkpoints::config(backend, root);
    cfg.state.max_parallelism = Some(MAX_P);
    cfg
}

/// A record routed by `slot_for_key` is accepted by that slot and refused by the others.
#[test]
fn slot_for_key_picks_the_slot_that_accepts_the_key() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = config(BackendKind::Heap, dir.path());
    let mut slots: Vec<Slot> = (0..3)
        .map(|i| Slot::builder(&cfg).slot(i, 3).open())
        .collect::<Result<_, _>>()?;
    for i in 0..500u64 {
        let owner = slot_for_key(&i, MAX_P, 3)?;
        let kg = key_group_of(&i, MAX_P)?;
        assert!(KeyGroupRange::for_slot(MAX_P, 3, owner)?.contains(kg));
        for (s, slot) in slots.iter_mut().enumerate() {
            let accepted = slot.scope(&i, &VoidNamespace).is_ok();
            assert_eq!(accepted, s as u32 == owner, "key {i} on slot {s}");
        }
    }
    Ok(())
}

/// `fire_timers` fires every due timer in order with its key's state in scope, including a
/// timer the callback registers that is already due, and leaves later ones.
#[test]
fn fire_timers_scopes_each_timer_to_its_key() -> R {
    for backend in [BackendKind::Heap, BackendKind::RocksDb] {
        let dir = tempfile::tempdir()?;
        let mut slot = Slot::builder(&config(backend, dir.path())).open()?;
        let count = slot.value_state::<u64>("op", "count")?;
        for key in 0..50u64 {
            let scope = slot.scope(&key, &VoidNamespace)?;
            count.update(&mut slot, &scope, &(key * 10))?;
            slot.register_timer(TimeDomain::EventTime, &scope, 100 + key as i64)?;
        }
        let mut seen = Vec::new();
        let fired = slot.fire_timers(TimeDomain::EventTime, 120, |slot, scope, timer| {
            let key: u64 = cairn::engine::codec::decode(&timer.key, "key")?;
            assert_eq!(
                count.get(slot, scope)?,
                Some(key * 10),
                "{backend:?}: key {key}"
            );
            seen.push((timer.timestamp, key));
            if key == 3 && timer.timestamp == 103 {
                // Due within this call: fires in it, after the ones before it.
                slot.register_timer(TimeDomain::EventTime, scope, 115)?;
            }
            Ok(())
        })?;
        assert_eq!(fired, 22, "{backend:?}: 21 due + 1 registered while firing");
        // Ties break by the contract's payload order, not by key value: compare timestamps.
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "{backend:?}: in timestamp order: {seen:?}"
        );
        assert!(seen.contains(&(115, 3)), "{backend:?}");
        assert_eq!(
            slot.fire_timers(TimeDomain::EventTime, 120, |_, _, _| Ok(()))?,
            0
        );
        assert_eq!(
            slot.fire_timers(TimeDomain::EventTime, 200, |_, _, _| Ok(()))?,
            29
        );
    }
    Ok(())
}
