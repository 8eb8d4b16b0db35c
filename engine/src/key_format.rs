//! The byte layout of keyed state in RocksDB (and of the heap backend's table keys).
//!
//! ## Format
//! ```text
//! [key group: 1 or 2 bytes, big-endian] [varint len(key)] [key] [varint len(ns)] [namespace] [map user key]
//! ```
//! - The key-group prefix is big-endian, so RocksDB's byte order is key-group order and a key
//!   group (or a range of them) is one contiguous key range: checkpoints can be split and clipped
//!   by key group. It takes 1 byte when `max_parallelism <= 128`, else 2 (as Flink).
//! - Key and namespace are written with a LEB128 length *before* their bytes. Flink writes the
//!   length *after* the bytes when both serializers are variable-length; a trailing length is not
//!   prefix-free (key `61` + len `01` is a prefix of key `61 01 ..`), so a prefix scan over one
//!   (key, namespace) could see another key's entries. A leading length makes every
//!   `[kg][key][ns]` prefix unambiguous, which map iteration and `clear` rely on.
//! - Map state appends the user key's raw bytes; the composite prefix delimits it.
//!
//! A golden test pins this layout: changing it breaks every stored checkpoint.

use crate::keygroup::KeyGroup;

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes [`write_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads an unsigned LEB128 varint; returns the value and the bytes consumed.
#[inline]
pub fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

pub use cairn_base::prefix::{key_group_prefix, key_group_upper_bound, write_key_group};

/// Encodes the composite `[kg][len][key][len][ns]` prefix into `out` (cleared first).
#[inline]
pub fn encode_composite(
    out: &mut Vec<u8>,
    key_group: KeyGroup,
    prefix_bytes: usize,
    key: &[u8],
    namespace: &[u8],
) {
    out.clear();
    out.reserve(prefix_bytes + key.len() + namespace.len() + 4);
    write_key_group(out, key_group, prefix_bytes);
    write_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    write_varint(out, namespace.len() as u64);
    out.extend_from_slice(namespace);
}

/// A decoded composite key (borrowed from the stored bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct CompositeKey<'a> {
    /// The key group.
    pub key_group: KeyGroup,
    /// The serialized key.
    pub key: &'a [u8],
    /// The serialized namespace.
    pub namespace: &'a [u8],
    /// The map user key (empty for other state kinds).
    pub user_key: &'a [u8],
}

/// Decodes a stored composite key; `None` when the bytes do not follow the layout.
pub fn decode_composite(buf: &[u8], prefix_bytes: usize) -> Option<CompositeKey<'_>> {
    if buf.len() < prefix_bytes {
        return None;
    }
    let key_group = if prefix_bytes == 1 {
        KeyGroup::from(buf[0])
    } else {
        u16::from_be_bytes([buf[0], buf[1]])
    };
    let mut pos = prefix_bytes;
    let (klen, n) = read_varint(&buf[pos..])?;
    pos += n;
    let key = buf.get(pos..pos.checked_add(klen as usize)?)?;
    pos += klen as usize;
    let (nlen, n) = read_varint(&buf[pos..])?;
    pos += n;
    let namespace = buf.get(pos..pos.checked_add(nlen as usize)?)?;
    pos += nlen as usize;
    Some(CompositeKey {
        key_group,
        key,
        namespace,
        user_key: &buf[pos..],
    })
}

/// The exclusive upper bound of all keys starting with `prefix` (for bounded iteration), or `None`
/// when every byte is `0xff` (no finite bound).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_is_what_write_varint_writes() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    /// Golden bytes: this layout is the on-disk format of every RocksDB slot and checkpoint.
    #[test]
    fn layout_is_pinned() {
        let mut out = Vec::new();
        encode_composite(&mut out, 5, 1, b"key", b"ns");
        assert_eq!(out, [0x05, 3, b'k', b'e', b'y', 2, b'n', b's']);
        encode_composite(&mut out, 0x0102, 2, b"", b"");
        assert_eq!(out, [0x01, 0x02, 0, 0]);
        let long = vec![7u8; 200];
        encode_composite(&mut out, 1, 1, &long, b"");
        assert_eq!(&out[..3], &[0x01, 0xc8, 0x01]);
        assert_eq!(out.len(), 1 + 2 + 200 + 1);
    }

    #[test]
    fn decode_roundtrips_and_rejects_garbage() {
        let mut out = Vec::new();
        encode_composite(&mut out, 300, 2, b"abc", b"window-1");
        out.extend_from_slice(b"user");
        let d = decode_composite(&out, 2).unwrap();
        assert_eq!(
            d,
            CompositeKey {
                key_group: 300,
                key: b"abc",
                namespace: b"window-1",
                user_key: b"user"
            }
        );
        assert!(decode_composite(&[1, 9, 1], 1).is_none());
    }

    /// The case that makes a trailing length ambiguous stays unambiguous here.
    #[test]
    fn composite_prefixes_are_prefix_free() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode_composite(&mut a, 0, 1, b"a", b"");
        encode_composite(&mut b, 0, 1, b"a\x01", b"");
        assert!(!b.starts_with(&a));
        encode_composite(&mut b, 0, 1, b"a", b"\x00");
        assert!(!b.starts_with(&a));
    }

    #[test]
    fn successor_and_bounds() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff]), None);
        assert_eq!(key_group_upper_bound(3, 1), Some(vec![4]));
        assert_eq!(key_group_upper_bound(255, 1), None);
        assert_eq!(key_group_upper_bound(255, 2), Some(vec![1, 0]));
    }

    #[test]
    fn varint_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
    }
}
