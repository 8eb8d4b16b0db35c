//! The typed-state codec: serde + [postcard](https://docs.rs/postcard).
//!
//! Why postcard: its wire format is specified and frozen at 1.0 (stored state must stay readable
//! across upgrades), it is compact (varint integers: a counter below 128 takes one byte, which
//! keeps RocksDB keys and values small), and encoding is a single pass with no schema or
//! allocation beyond the output buffer. Keys are serialized with the same codec before hashing,
//! so the key group of a key depends only on its value.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{EngineError, Result};

/// Encodes `value` into `out` (cleared first).
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T, state: &str) -> Result<()> {
    out.clear();
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).map_err(|e| EngineError::Encode {
        state: state.to_string(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T, state: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(&mut out, value, state)?;
    Ok(out)
}

/// Decodes bytes written by [`encode`]; failures are `Corrupt` naming the state.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], state: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt {
        state: state.to_string(),
        reason: format!("cannot decode {} bytes: {e}", bytes.len()),
    })
}

/// The namespace of state that is not scoped by a window (Flink's `VoidNamespace`); encodes to
/// zero bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct VoidNamespace;

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: stored values must decode after an upgrade.
    #[test]
    fn encoding_is_pinned() {
        assert_eq!(encode(&1u64, "s").unwrap(), [1]);
        assert_eq!(encode(&300u64, "s").unwrap(), [0xac, 0x02]);
        assert_eq!(encode(&"ab", "s").unwrap(), [2, b'a', b'b']);
        assert_eq!(encode(&VoidNamespace, "s").unwrap(), Vec::<u8>::new());
        assert_eq!(encode(&(7u32, -1i64), "s").unwrap(), [7, 1]);
    }

    #[test]
    fn decode_failure_names_state() {
        let e = decode::<u64>(&[0xff], "op/count").unwrap_err();
        assert!(e.to_string().contains("op/count"), "{e}");
    }
}
