//! The byte layout of a timer: the RocksDB key of the timers column family, and the in-memory
//! payload both implementations order by.
//!
//! ## Format
//! ```text
//! RocksDB key: [key group: 1 or 2 bytes BE] [timestamp: 8 bytes BE, sign bit flipped] [payload]
//! payload:     [len(key): u32 BE] [key] [namespace]
//! value:       empty
//! ```
//! - The key-group prefix has the width of the slot's state keys (1 byte when
//!   `max_parallelism <= 128`, else 2), so a key group's timers are one contiguous key range,
//!   clipped and iterated like state.
//! - The timestamp is Flink's `TimerSerializer` encoding (`flipSignBit`, big-endian): byte order
//!   equals numeric order, negative timestamps included, so a forward scan of a key group visits
//!   its timers in firing order.
//! - The key's length goes *before* it, so `(key, namespace)` splits unambiguously; ties on the
//!   timestamp sort by this payload's bytes (shorter keys first, then key bytes, then namespace).
//!
//! A golden test pins this layout: changing it breaks every checkpoint holding RocksDB timers.

use cairn_base::prefix::{
    key_group_prefix, key_group_upper_bound, read_key_group, write_key_group,
};

use crate::KeyGroup;

/// Bytes of the timestamp field.
pub const TIMESTAMP_BYTES: usize = 8;

/// The order-preserving encoding of a timestamp.
#[inline]
pub fn encode_timestamp(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`encode_timestamp`].
#[inline]
pub fn decode_timestamp(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Writes the payload `[len(key) u32 BE][key][namespace]` into `out` (cleared first).
#[inline]
pub fn encode_payload(out: &mut Vec<u8>, key: &[u8], namespace: &[u8]) {
    out.clear();
    out.reserve(4 + key.len() + namespace.len());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(namespace);
}

/// Splits a payload into `(key, namespace)`; `None` when it does not follow the layout.
#[inline]
pub fn decode_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let key = payload.get(4..4usize.checked_add(len)?)?;
    Some((key, &payload[4 + len..]))
}

/// Writes the RocksDB key of a timer into `out` (cleared first).
#[inline]
pub fn encode_db_key(
    out: &mut Vec<u8>,
    key_group: KeyGroup,
    prefix_bytes: usize,
    timestamp: i64,
    payload: &[u8],
) {
    out.clear();
    out.reserve(prefix_bytes + TIMESTAMP_BYTES + payload.len());
    write_key_group(out, key_group, prefix_bytes);
    out.extend_from_slice(&encode_timestamp(timestamp));
    out.extend_from_slice(payload);
}

/// Splits a RocksDB key into `(key group, timestamp, payload)`; `None` when it is too short or
/// its payload does not decode.
pub fn decode_db_key(buf: &[u8], prefix_bytes: usize) -> Option<(KeyGroup, i64, &[u8])> {
    if buf.len() < prefix_bytes + TIMESTAMP_BYTES {
        return None;
    }
    let kg = read_key_group(buf, prefix_bytes)?;
    let ts = decode_timestamp(buf[prefix_bytes..prefix_bytes + 8].try_into().ok()?);
    let payload = &buf[prefix_bytes + 8..];
    decode_payload(payload)?;
    Some((kg, ts, payload))
}

/// The first RocksDB key of `key_group`, and the exclusive upper bound (`None` for the last
/// possible key group of the prefix width).
pub fn key_group_bounds(key_group: KeyGroup, prefix_bytes: usize) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        key_group_prefix(key_group, prefix_bytes),
        key_group_upper_bound(key_group, prefix_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: this is the on-disk format of RocksDB timers in every checkpoint.
    #[test]
    fn layout_is_pinned() {
        let mut p = Vec::new();
        encode_payload(&mut p, b"key", b"ns");
        assert_eq!(p, [0, 0, 0, 3, b'k', b'e', b'y', b'n', b's']);
        let mut k = Vec::new();
        encode_db_key(&mut k, 5, 1, 1_000, &p);
        assert_eq!(
            k,
            [
                0x05, 0x80, 0, 0, 0, 0, 0, 0x03, 0xe8, 0, 0, 0, 3, b'k', b'e', b'y', b'n', b's'
            ]
        );
        encode_db_key(&mut k, 0x0102, 2, -1, &[0, 0, 0, 0]);
        assert_eq!(
            k,
            [
                0x01, 0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            decode_db_key(&k, 2),
            Some((0x0102, -1, &[0u8, 0, 0, 0][..]))
        );
    }

    #[test]
    fn timestamps_sort_like_their_bytes() {
        let ts = [i64::MIN, -1_000, -1, 0, 1, 999, 1_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(encode_timestamp(w[0]) < encode_timestamp(w[1]), "{w:?}");
        }
        for t in ts {
            assert_eq!(decode_timestamp(encode_timestamp(t)), t);
        }
    }

    #[test]
    fn payload_splits_and_rejects_garbage() {
        let mut p = Vec::new();
        encode_payload(&mut p, b"", b"window");
        assert_eq!(decode_payload(&p), Some((&b""[..], &b"window"[..])));
        assert_eq!(decode_payload(&[0, 0, 0, 9, 1]), None);
        assert_eq!(decode_payload(&[0, 0]), None);
        assert_eq!(decode_db_key(&[1, 2, 3], 1), None);
    }

    #[test]
    fn key_group_bounds_cover_one_group() {
        assert_eq!(key_group_bounds(3, 1), (vec![3], Some(vec![4])));
        assert_eq!(key_group_bounds(255, 1), (vec![255], None));
        assert_eq!(key_group_bounds(255, 2), (vec![0, 255], Some(vec![1, 0])));
    }
}
