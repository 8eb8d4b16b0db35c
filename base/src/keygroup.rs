//! Key groups: the unit in which keyed state is partitioned, checkpointed and rescaled.
//!
//! A job has a fixed `max_parallelism` (the number of key groups). Every key maps to one key group
//! by a stable hash of its *serialized* bytes, and every slot owns one contiguous range of key
//! groups. A checkpoint taken with N slots can therefore be restored into M slots by handing out
//! the key-group ranges again — the same scheme as Flink's `KeyGroupRangeAssignment`.
//!
//! ## Hash
//! `key_group = xxh3_64(serialized_key) % max_parallelism`. XXH3 is specified and stable across
//! platforms and crate versions (unlike `std`'s `DefaultHasher`, which may change between Rust
//! releases and would silently move every key to another key group after an upgrade). Golden
//! values in the tests pin it. Flink hashes the Java `hashCode()` with murmur3 instead; the
//! assignment of key groups to slots below is Flink's exactly.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Smallest default max parallelism (Flink: `1 << 7`).
pub const DEFAULT_LOWER_BOUND_MAX_PARALLELISM: u32 = 1 << 7;
/// Largest max parallelism (Flink: `1 << 15`): key groups must fit the 2-byte key prefix.
pub const UPPER_BOUND_MAX_PARALLELISM: u32 = 1 << 15;

/// A key group id in `[0, max_parallelism)`.
pub type KeyGroup = u16;

/// Flink's default max parallelism for a parallelism `p`:
/// `round_up_pow2(p + p/2)` clamped to `[128, 32768]`.
pub fn default_max_parallelism(parallelism: u32) -> u32 {
    let p = parallelism.max(1);
    let wanted = (p + p / 2).next_power_of_two();
    wanted.clamp(
        DEFAULT_LOWER_BOUND_MAX_PARALLELISM,
        UPPER_BOUND_MAX_PARALLELISM,
    )
}

/// Checks an explicitly configured max parallelism: `[1, 32768]`.
pub fn validate_max_parallelism(max_parallelism: u32) -> Result<(), ConfigError> {
    if (1..=UPPER_BOUND_MAX_PARALLELISM).contains(&max_parallelism) {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(
            "state.max-parallelism",
            max_parallelism,
            "[1, 32768]",
        ))
    }
}

/// Number of bytes of the key-group prefix of every RocksDB key: 1 when `max_parallelism <= 128`,
/// else 2 (Flink's `computeRequiredBytesInKeyGroupPrefix`).
pub fn prefix_bytes(max_parallelism: u32) -> usize {
    if max_parallelism > 128 { 2 } else { 1 }
}

/// The stable 64-bit hash of a serialized key (see the module doc).
#[inline]
pub fn key_hash(serialized_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(serialized_key)
}

/// The key group of a serialized key.
#[inline]
pub fn assign_to_key_group(serialized_key: &[u8], max_parallelism: u32) -> KeyGroup {
    let h = key_hash(serialized_key);
    let mp = u64::from(max_parallelism);
    // The same value as `h % mp`; without the 64-bit division for the usual power of two
    // (Flink's defaults are; the division was a quarter of this function's time).
    if mp.is_power_of_two() {
        (h & (mp - 1)) as KeyGroup
    } else {
        (h % mp) as KeyGroup
    }
}

/// Checks a slot count against the max parallelism: `[1, max_parallelism]` (the `slots`
/// setting).
pub fn check_parallelism(max_parallelism: u32, parallelism: u32) -> Result<(), ConfigError> {
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(ConfigError::out_of_range(
            "slots",
            parallelism,
            format!("[1, max-parallelism = {max_parallelism}]"),
        ));
    }
    Ok(())
}

/// The slot (operator index) that owns a key group: `kg * parallelism / max_parallelism`.
#[inline]
pub fn slot_for_key_group(key_group: KeyGroup, max_parallelism: u32, parallelism: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// An inclusive, contiguous range of key groups `[start, end]`, possibly empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group (inclusive).
    pub start: u32,
    /// Last key group (inclusive); `end < start` means empty.
    pub end: u32,
}

impl KeyGroupRange {
    /// A range `[start, end]` (inclusive).
    pub fn new(start: u32, end: u32) -> Self {
        Self { start, end }
    }

    /// All key groups of a job with `max_parallelism` key groups.
    pub fn all(max_parallelism: u32) -> Self {
        Self::new(0, max_parallelism.saturating_sub(1))
    }

    /// The range owned by slot `index` of `parallelism` slots (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`): `start = ceil(i*maxP/p)`,
    /// `end = ((i+1)*maxP - 1) / p`.
    pub fn for_slot(
        max_parallelism: u32,
        parallelism: u32,
        index: u32,
    ) -> Result<Self, ConfigError> {
        check_parallelism(max_parallelism, parallelism)?;
        if index >= parallelism {
            return Err(ConfigError::invalid(
                "slot index",
                format!("slot {index} is not below the parallelism {parallelism}"),
            ));
        }
        let (m, p, i) = (
            u64::from(max_parallelism),
            u64::from(parallelism),
            u64::from(index),
        );
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p;
        Ok(Self::new(start as u32, end as u32))
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        if self.end < self.start {
            0
        } else {
            self.end - self.start + 1
        }
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key_group` lies in the range.
    #[inline]
    pub fn contains(&self, key_group: KeyGroup) -> bool {
        let kg = u32::from(key_group);
        kg >= self.start && kg <= self.end
    }

    /// Position of `key_group` inside the range (for per-key-group tables).
    #[inline]
    pub fn index_of(&self, key_group: KeyGroup) -> usize {
        (u32::from(key_group) - self.start) as usize
    }

    /// Iterates the key groups of the range.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> + use<> {
        let (s, e) = (self.start, self.end);
        (s..=e).filter(move |_| e >= s).map(|kg| kg as KeyGroup)
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_max_parallelism_matches_flink() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(85), 128);
        assert_eq!(default_max_parallelism(86), 256);
        assert_eq!(default_max_parallelism(1000), 2048);
        assert_eq!(default_max_parallelism(30000), 32768);
    }

    #[test]
    fn max_parallelism_bounds_are_checked() {
        assert!(validate_max_parallelism(0).is_err());
        assert!(validate_max_parallelism(1).is_ok());
        assert!(validate_max_parallelism(32768).is_ok());
        let err = validate_max_parallelism(32769).unwrap_err().to_string();
        assert!(err.contains("state.max-parallelism"), "{err}");
    }

    /// Golden values: changing the hash would move every key of every existing checkpoint.
    #[test]
    fn key_group_hash_is_pinned() {
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(key_hash(b"hello"), 0x9555e8555c62dcfd);
        assert_eq!(
            assign_to_key_group(b"hello", 128),
            (0x9555e8555c62dcfdu64 % 128) as u16
        );
        let golden: Vec<u16> = (0u64..8)
            .map(|k| assign_to_key_group(&k.to_be_bytes(), 128))
            .collect();
        assert_eq!(golden, GOLDEN_KG_0_TO_7);
    }
    const GOLDEN_KG_0_TO_7: [u16; 8] = [89, 115, 28, 29, 30, 6, 66, 124];

    #[test]
    fn ranges_match_flink() {
        // Flink: maxP=128, p=3 -> [0,42], [43,85], [86,127]
        let r: Vec<_> = (0..3)
            .map(|i| KeyGroupRange::for_slot(128, 3, i).unwrap())
            .collect();
        assert_eq!(
            r,
            vec![
                KeyGroupRange::new(0, 42),
                KeyGroupRange::new(43, 85),
                KeyGroupRange::new(86, 127)
            ]
        );
        assert!(KeyGroupRange::for_slot(128, 129, 0).is_err());
        assert!(KeyGroupRange::for_slot(128, 2, 2).is_err());
    }

    proptest! {
        /// The power-of-two shortcut assigns exactly what `hash % max_parallelism` does.
        #[test]
        fn key_group_is_the_hash_modulo_max_parallelism(
            key in proptest::collection::vec(any::<u8>(), 0..40),
            max_p in 1u32..=32768,
            shift in 0u32..=15,
        ) {
            for mp in [max_p, 1 << shift] {
                let want = (key_hash(&key) % u64::from(mp)) as u16;
                prop_assert_eq!(assign_to_key_group(&key, mp), want);
            }
        }

        /// Every key group belongs to exactly one slot, and `slot_for_key_group` agrees with
        /// the ranges, for any parallelism <= max parallelism.
        #[test]
        fn every_key_group_has_exactly_one_slot(max_p in 1u32..=32768, p_seed in any::<u32>()) {
            let p = 1 + p_seed % max_p.min(512);
            let ranges: Vec<_> = (0..p).map(|i| KeyGroupRange::for_slot(max_p, p, i).unwrap()).collect();
            let total: u32 = ranges.iter().map(|r| r.len()).sum();
            prop_assert_eq!(total, max_p);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].end + 1, w[1].start);
            }
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges[p as usize - 1].end, max_p - 1);
            for kg in 0..max_p {
                let owner = slot_for_key_group(kg as u16, max_p, p);
                prop_assert!(ranges[owner as usize].contains(kg as u16));
                let owners = ranges.iter().filter(|r| r.contains(kg as u16)).count();
                prop_assert_eq!(owners, 1);
            }
        }
    }
}
