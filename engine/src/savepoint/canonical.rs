//! The canonical savepoint's chunk format: backend-independent records of key-grouped state
//! entries and timers. A chunk is what [`ChunkWriter`] builds and [`ChunkReader`] parses; it
//! is stored zstd-compressed with the sha256 of these (uncompressed) bytes in the manifest.
//!
//! ## Chunk format (version 1; stable: a savepoint written by any later version of Cairn with
//! manifest version 1 uses exactly this)
//! ```text
//! chunk   := magic record*
//! magic   := "CAIRNCS1"                                   8 bytes
//! record  := 0x01 state:varint kg:varint key:bytes ns:bytes user_key:bytes value:bytes
//!          | 0x02 domain:u8 kg:varint timestamp:i64-LE key:bytes ns:bytes
//! bytes   := len:varint byte*len
//! varint  := unsigned LEB128 (at most 10 bytes)
//! ```
//! - `0x01`, a state entry: `state` indexes the manifest's `states`; `key`/`ns` are the
//!   serialized key and namespace, `user_key` the map key (empty for other kinds), `value` the
//!   stored value (a list's elements in the list encoding, [`crate::backend::list_codec`]).
//!   Entries of one key group of one state are in the backend's order (RocksDB: key bytes).
//! - `0x02`, a timer: `domain` 0 = event time, 1 = processing time.
//!
//! Records of key groups outside a reader's range are skipped, which is what restores one
//! savepoint into any slot count. Every length is checked against the bytes left before it is
//! used: a damaged or hostile chunk (already refused by its sha256) can't make a reader
//! allocate or loop beyond the chunk.

use crate::key_format::{read_varint, write_varint};
use crate::keygroup::KeyGroup;
use cairn_timers::TimeDomain;

/// First bytes of every chunk.
pub const CHUNK_MAGIC: &[u8; 8] = b"CAIRNCS1";
const TAG_ENTRY: u8 = 1;
const TAG_TIMER: u8 = 2;

/// One parsed record, borrowing the chunk's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A state entry.
    Entry {
        /// Index into the manifest's states.
        state: u32,
        /// Key group.
        key_group: KeyGroup,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
        /// Map user key (empty unless map state).
        user_key: &'a [u8],
        /// Stored value.
        value: &'a [u8],
    },
    /// A timer.
    Timer {
        /// Its clock.
        domain: TimeDomain,
        /// Key group of its key.
        key_group: KeyGroup,
        /// When it fires.
        timestamp: i64,
        /// Serialized key.
        key: &'a [u8],
        /// Serialized namespace.
        namespace: &'a [u8],
    },
}

impl Record<'_> {
    /// The record's key group.
    pub fn key_group(&self) -> KeyGroup {
        match self {
            Record::Entry { key_group, .. } | Record::Timer { key_group, .. } => *key_group,
        }
    }
}

/// Builds one chunk in memory.
pub struct ChunkWriter {
    buf: Vec<u8>,
    records: u64,
    key_groups: Option<(KeyGroup, KeyGroup)>,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkWriter {
    /// An empty chunk (just the magic).
    pub fn new() -> Self {
        Self {
            buf: CHUNK_MAGIC.to_vec(),
            records: 0,
            key_groups: None,
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The lowest and highest key group of its records.
    pub fn key_groups(&self) -> Option<(KeyGroup, KeyGroup)> {
        self.key_groups
    }

    /// The chunk's bytes; the writer starts over empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.records = 0;
        self.key_groups = None;
        std::mem::replace(&mut self.buf, CHUNK_MAGIC.to_vec())
    }

    fn note(&mut self, kg: KeyGroup) {
        self.records += 1;
        self.key_groups = Some(match self.key_groups {
            None => (kg, kg),
            Some((lo, hi)) => (lo.min(kg), hi.max(kg)),
        });
    }

    fn bytes(&mut self, b: &[u8]) {
        write_varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Appends a state entry.
    pub fn entry(
        &mut self,
        state: u32,
        key_group: KeyGroup,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
        value: &[u8],
    ) {
        self.buf.push(TAG_ENTRY);
        write_varint(&mut self.buf, u64::from(state));
        write_varint(&mut self.buf, u64::from(key_group));
        self.bytes(key);
        self.bytes(namespace);
        self.bytes(user_key);
        self.bytes(value);
        self.note(key_group);
    }

    /// Appends a timer.
    pub fn timer(
        &mut self,
        domain: TimeDomain,
        key_group: KeyGroup,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) {
        self.buf.push(TAG_TIMER);
        self.buf.push(match domain {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        });
        write_varint(&mut self.buf, u64::from(key_group));
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        self.bytes(key);
        self.bytes(namespace);
        self.note(key_group);
    }
}

/// Parses a chunk's records in order; the error is the reason a chunk is malformed.
pub struct ChunkReader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> ChunkReader<'a> {
    /// A reader over `chunk`, which must start with [`CHUNK_MAGIC`].
    pub fn new(chunk: &'a [u8]) -> Result<Self, String> {
        match chunk.strip_prefix(CHUNK_MAGIC.as_slice()) {
            Some(rest) => Ok(Self {
                rest,
                offset: CHUNK_MAGIC.len(),
            }),
            None => Err("not a canonical chunk (bad magic)".into()),
        }
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let (v, n) =
            read_varint(self.rest).ok_or_else(|| format!("bad {what} at byte {}", self.offset))?;
        self.advance(n);
        Ok(v)
    }

    fn advance(&mut self, n: usize) {
        self.rest = &self.rest[n..];
        self.offset += n;
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.varint(what)?;
        let rest = self.rest;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| {
                format!(
                    "{what} of {len} bytes at byte {} runs past the chunk",
                    self.offset
                )
            })?;
        let (b, _) = rest.split_at(len);
        self.advance(len);
        Ok(b)
    }

    fn key_group(&mut self) -> Result<KeyGroup, String> {
        let kg = self.varint("key group")?;
        KeyGroup::try_from(kg).map_err(|_| format!("key group {kg} at byte {}", self.offset))
    }

    /// The next record, `None` at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record<'a>>, String> {
        let Some((&tag, _)) = self.rest.split_first() else {
            return Ok(None);
        };
        self.advance(1);
        match tag {
            TAG_ENTRY => {
                let state = self.varint("state")?;
                let state = u32::try_from(state)
                    .map_err(|_| format!("state index {state} is too large"))?;
                Ok(Some(Record::Entry {
                    state,
                    key_group: self.key_group()?,
                    key: self.bytes("key")?,
                    namespace: self.bytes("namespace")?,
                    user_key: self.bytes("user key")?,
                    value: self.bytes("value")?,
                }))
            }
            TAG_TIMER => {
                let Some((&d, _)) = self.rest.split_first() else {
                    return Err("a timer record cut short".into());
                };
                self.advance(1);
                let domain = match d {
                    0 => TimeDomain::EventTime,
                    1 => TimeDomain::ProcessingTime,
                    other => return Err(format!("timer domain {other}")),
                };
                let key_group = self.key_group()?;
                let ts = self
                    .rest
                    .get(..8)
                    .ok_or_else(|| "a timer record cut short".to_string())?;
                let timestamp = i64::from_le_bytes(ts.try_into().map_err(|_| "timestamp")?);
                self.advance(8);
                Ok(Some(Record::Timer {
                    domain,
                    key_group,
                    timestamp,
                    key: self.bytes("timer key")?,
                    namespace: self.bytes("timer namespace")?,
                }))
            }
            other => Err(format!(
                "unknown record tag {other} at byte {}",
                self.offset - 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut w = ChunkWriter::new();
        w.entry(3, 17, b"k", b"", b"uk", &[0u8; 300]);
        w.timer(TimeDomain::ProcessingTime, 5, -7, b"key", b"ns");
        assert_eq!((w.records(), w.key_groups()), (2, Some((5, 17))));
        let bytes = w.take();
        assert!(w.is_empty());
        let mut r = ChunkReader::new(&bytes).unwrap();
        assert_eq!(
            r.next().unwrap(),
            Some(Record::Entry {
                state: 3,
                key_group: 17,
                key: b"k",
                namespace: b"",
                user_key: b"uk",
                value: &[0u8; 300],
            })
        );
        assert_eq!(
            r.next().unwrap(),
            Some(Record::Timer {
                domain: TimeDomain::ProcessingTime,
                key_group: 5,
                timestamp: -7,
                key: b"key",
                namespace: b"ns",
            })
        );
        assert_eq!(r.next().unwrap(), None);
    }

    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let mut w = ChunkWriter::new();
        w.entry(0, 1, b"key", b"ns", b"", b"value");
        let first_end = w.len();
        w.timer(TimeDomain::EventTime, 1, 5, b"key", b"ns");
        let good = w.take();
        assert!(ChunkReader::new(b"CAIRNCS0").is_err());
        // A chunk cut anywhere but between records is an error, never a panic.
        for cut in CHUNK_MAGIC.len()..good.len() {
            let mut r = ChunkReader::new(&good[..cut]).unwrap();
            let mut result = r.next();
            while let Ok(Some(_)) = result {
                result = r.next();
            }
            let boundary = cut == CHUNK_MAGIC.len() || cut == first_end;
            assert_eq!(result.is_err(), !boundary, "cut at {cut}");
        }
        // Any single-byte change parses or is an error, never a panic.
        for i in CHUNK_MAGIC.len()..good.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let mut r = ChunkReader::new(&bad).unwrap();
                while let Ok(Some(_)) = r.next() {}
            }
        }
    }
}
