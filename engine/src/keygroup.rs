//! Key groups (`cairn-base`'s, re-exported: one definition for every crate) and the routing of
//! a host's typed keys to them.

use serde::Serialize;

pub use cairn_base::keygroup::*;

use crate::error::Result;

/// The key group of a typed key: the key serialized with [`crate::codec`] (as
/// [`crate::Slot::scope`] serializes it), then hashed. A host routes each record by it.
///
/// ```
/// use cairn_engine::keygroup::{KeyGroupRange, key_group_of, slot_for_key};
/// let (max_parallelism, parallelism) = (128, 3);
/// let kg = key_group_of("apple", max_parallelism)?;
/// let slot = slot_for_key("apple", max_parallelism, parallelism)?;
/// assert!(KeyGroupRange::for_slot(max_parallelism, parallelism, slot)?.contains(kg));
/// # Ok::<(), cairn_engine::EngineError>(())
/// ```
pub fn key_group_of<K: Serialize + ?Sized>(key: &K, max_parallelism: u32) -> Result<KeyGroup> {
    let bytes = crate::codec::encode(key, "<key>")?;
    Ok(assign_to_key_group(&bytes, max_parallelism))
}

/// The slot (of `parallelism`) that owns a typed key: the slot whose
/// [`KeyGroupRange::for_slot`] holds [`key_group_of`]`(key)`.
pub fn slot_for_key<K: Serialize + ?Sized>(
    key: &K,
    max_parallelism: u32,
    parallelism: u32,
) -> Result<u32> {
    check_parallelism(max_parallelism, parallelism)?;
    let kg = key_group_of(key, max_parallelism)?;
    Ok(slot_for_key_group(kg, max_parallelism, parallelism))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_routes_to_the_slot_whose_range_holds_its_key_group() -> Result<()> {
        for (m, p) in [(128, 1), (128, 3), (128, 128), (1000, 7), (32768, 5)] {
            for i in 0..2_000u64 {
                let kg = key_group_of(&i, m)?;
                let slot = slot_for_key(&i, m, p)?;
                assert!(
                    KeyGroupRange::for_slot(m, p, slot)?.contains(kg),
                    "{i} {m} {p}"
                );
            }
        }
        // What a slot's `scope` hashes: the codec's bytes of the key.
        let bytes = crate::codec::encode("apple", "<key>")?;
        assert_eq!(
            key_group_of("apple", 128)?,
            assign_to_key_group(&bytes, 128)
        );
        assert!(slot_for_key(&1u32, 128, 0).is_err());
        assert!(slot_for_key(&1u32, 128, 129).is_err());
        Ok(())
    }
}
