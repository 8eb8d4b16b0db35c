//! The key-group prefix every RocksDB key of keyed state and of timers starts with:
//! big-endian, so RocksDB's byte order is key-group order and one key group (or a range of
//! them) is one contiguous key range (checkpoints are split and clipped by key group). It
//! takes 1 byte when `max_parallelism <= 128`, else 2 ([`crate::keygroup::prefix_bytes`];
//! Flink's `computeRequiredBytesInKeyGroupPrefix`). A golden test pins it: changing it breaks
//! every stored checkpoint.

use crate::keygroup::KeyGroup;

/// Appends the prefix of `key_group` (`prefix_bytes` wide) to `out`.
#[inline]
pub fn write_key_group(out: &mut Vec<u8>, key_group: KeyGroup, prefix_bytes: usize) {
    if prefix_bytes == 1 {
        out.push(key_group as u8);
    } else {
        out.extend_from_slice(&key_group.to_be_bytes());
    }
}

/// Reads the key group from the prefix of `key`; `None` when the key is shorter than it.
#[inline]
pub fn read_key_group(key: &[u8], prefix_bytes: usize) -> Option<KeyGroup> {
    match (prefix_bytes, key) {
        (1, [b, ..]) => Some(KeyGroup::from(*b)),
        (_, [a, b, ..]) if prefix_bytes == 2 => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// The smallest key of `key_group` (its prefix alone).
pub fn key_group_prefix(key_group: KeyGroup, prefix_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(2);
    write_key_group(&mut out, key_group, prefix_bytes);
    out
}

/// The exclusive upper bound of `key_group`'s keys: the prefix of the next key group, or `None`
/// for the last key group the prefix width can hold (iterate to the end).
pub fn key_group_upper_bound(key_group: KeyGroup, prefix_bytes: usize) -> Option<Vec<u8>> {
    let max = if prefix_bytes == 1 { 0xff } else { 0xffff };
    (u32::from(key_group) < max).then(|| key_group_prefix(key_group + 1, prefix_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: stored checkpoints depend on them.
    #[test]
    fn the_prefix_is_big_endian_and_one_or_two_bytes_wide() {
        assert_eq!(key_group_prefix(5, 1), vec![5]);
        assert_eq!(key_group_prefix(0x0102, 2), vec![1, 2]);
        assert_eq!(read_key_group(&[7, 9, 9], 1), Some(7));
        assert_eq!(read_key_group(&[1, 2, 9], 2), Some(0x0102));
        assert_eq!(read_key_group(&[1], 2), None);
        assert_eq!(read_key_group(&[], 1), None);
        assert_eq!(key_group_upper_bound(5, 1), Some(vec![6]));
        assert_eq!(key_group_upper_bound(0xff, 1), None);
        assert_eq!(key_group_upper_bound(0xfffe, 2), Some(vec![0xff, 0xff]));
        assert_eq!(key_group_upper_bound(0xffff, 2), None);
    }
}
