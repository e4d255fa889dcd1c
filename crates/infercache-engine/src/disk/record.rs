//! The on-disk record: a fixed 72-byte header followed by the stored payload.
//!
//! ```text
//! offset size field
//!      0    4 magic         0x5243_4349 ("ICCR" little endian)
//!      4    1 flags         bit 0: tombstone; bits 1-2: compression (0 none, 1 lz4, 2 zstd)
//!      5    3 reserved      zero
//!      8    4 stored_len    payload bytes as stored (after compression)
//!     12    4 raw_len       payload bytes after decompression
//!     16    8 created_ms    creation time, ms since the Unix epoch
//!     24    8 expires_ms    expiry, ms since the Unix epoch; 0 = never
//!     32   32 key           the entry's Digest
//!     64    4 payload_crc   CRC-32 over key ++ stored payload
//!     68    4 header_crc    CRC-32 over bytes 0..68
//!     72    * payload       stored_len bytes
//! ```
//!
//! All integers are little endian. The header CRC lets recovery trust a header without
//! reading its payload; the payload CRC (which also covers the key) is checked on every read.

use infercache_core::Digest;

use super::Compression;

/// Bytes in a record header.
pub(crate) const HEADER_LEN: usize = 72;
/// [`HEADER_LEN`] as a file offset.
pub(crate) const HEADER_LEN_U64: u64 = HEADER_LEN as u64;

const MAGIC: u32 = 0x5243_4349;
const FLAG_TOMBSTONE: u8 = 0b0000_0001;
const COMPRESSION_SHIFT: u8 = 1;
const COMPRESSION_MASK: u8 = 0b0000_0110;
const ZSTD_LEVEL: i32 = 3;

/// A decoded, CRC-checked record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub tombstone: bool,
    pub compression: Compression,
    pub stored_len: u32,
    pub raw_len: u32,
    pub created_ms: u64,
    /// 0 means the record never expires.
    pub expires_ms: u64,
    pub key: Digest,
    pub payload_crc: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Magic,
    Crc,
    Flags,
}

impl Header {
    /// The record's total length on disk.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN_U64 + u64::from(self.stored_len)
    }

    /// Decodes and checks the header in `buf`.
    pub(crate) fn decode(buf: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        let u32_at = |at: usize| u32::from_le_bytes(array(&buf[at..at + 4]));
        let u64_at = |at: usize| u64::from_le_bytes(array(&buf[at..at + 8]));
        if u32_at(0) != MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32fast::hash(&buf[..68]) != u32_at(68) {
            return Err(HeaderError::Crc);
        }
        let flags = buf[4];
        let compression = match (flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            _ => return Err(HeaderError::Flags),
        };
        if flags & !(FLAG_TOMBSTONE | COMPRESSION_MASK) != 0 || buf[5..8] != [0; 3] {
            return Err(HeaderError::Flags);
        }
        Ok(Self {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            compression,
            stored_len: u32_at(8),
            raw_len: u32_at(12),
            created_ms: u64_at(16),
            expires_ms: u64_at(24),
            key: Digest(array(&buf[32..64])),
            payload_crc: u32_at(64),
        })
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        let codec: u8 = match self.compression {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        };
        buf[4] = (codec << COMPRESSION_SHIFT) | if self.tombstone { FLAG_TOMBSTONE } else { 0 };
        buf[8..12].copy_from_slice(&self.stored_len.to_le_bytes());
        buf[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        buf[16..24].copy_from_slice(&self.created_ms.to_le_bytes());
        buf[24..32].copy_from_slice(&self.expires_ms.to_le_bytes());
        buf[32..64].copy_from_slice(&self.key.0);
        buf[64..68].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&buf[..68]);
        buf[68..72].copy_from_slice(&crc.to_le_bytes());
        buf
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes
        .try_into()
        .expect("bug: slice length is fixed by the record layout")
}

fn payload_crc(key: &Digest, stored: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&key.0);
    hasher.update(stored);
    hasher.finalize()
}

/// Encodes one record (header and payload) into a single buffer, so that it reaches the
/// file in one write. `value` is compressed with `compression` only when that shrinks it.
///
/// The caller has checked that `value` fits a segment, so its length fits a `u32`.
pub(crate) fn encode(
    key: &Digest,
    value: &[u8],
    tombstone: bool,
    created_ms: u64,
    expires_ms: u64,
    compression: Compression,
) -> Vec<u8> {
    let raw_len =
        u32::try_from(value.len()).expect("bug: value length checked against the segment size");
    let compressed = match compression {
        Compression::None => None,
        Compression::Lz4 => Some(lz4_flex::block::compress(value)),
        // Compressing into a Vec cannot fail short of allocation failure; store raw if it does.
        Compression::Zstd => zstd::bulk::compress(value, ZSTD_LEVEL).ok(),
    };
    let (codec, stored): (Compression, &[u8]) = match &compressed {
        Some(c) if c.len() < value.len() => (compression, c),
        _ => (Compression::None, value),
    };
    let header = Header {
        tombstone,
        compression: codec,
        stored_len: u32::try_from(stored.len())
            .expect("bug: stored payload is no longer than the value"),
        raw_len,
        created_ms,
        expires_ms,
        key: *key,
        payload_crc: payload_crc(key, stored),
    };
    let mut buf = Vec::with_capacity(HEADER_LEN + stored.len());
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(stored);
    buf
}

/// Why a record read back from disk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordError {
    Header(HeaderError),
    WrongKey,
    WrongLength,
    PayloadCrc,
    Tombstone,
    Decompress,
}

/// Checks a whole record read from disk and returns its header and decompressed value.
pub(crate) fn decode(buf: &[u8], expected_key: &Digest) -> Result<(Header, Vec<u8>), RecordError> {
    let Some((head, stored)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(RecordError::WrongLength);
    };
    let header = Header::decode(head).map_err(RecordError::Header)?;
    if header.key != *expected_key {
        return Err(RecordError::WrongKey);
    }
    if u64::try_from(stored.len()).ok() != Some(u64::from(header.stored_len)) {
        return Err(RecordError::WrongLength);
    }
    if payload_crc(&header.key, stored) != header.payload_crc {
        return Err(RecordError::PayloadCrc);
    }
    if header.tombstone {
        return Err(RecordError::Tombstone);
    }
    let raw_len = usize::try_from(header.raw_len).map_err(|_| RecordError::WrongLength)?;
    let value = match header.compression {
        Compression::None => stored.to_vec(),
        Compression::Lz4 => {
            lz4_flex::block::decompress(stored, raw_len).map_err(|_| RecordError::Decompress)?
        }
        Compression::Zstd => {
            zstd::bulk::decompress(stored, raw_len).map_err(|_| RecordError::Decompress)?
        }
    };
    if value.len() != raw_len {
        return Err(RecordError::WrongLength);
    }
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_any_flipped_bit() {
        let key = Digest::of(b"k");
        let rec = encode(
            &key,
            b"hello hello hello hello",
            false,
            7,
            9,
            Compression::None,
        );
        let head: &[u8; HEADER_LEN] = rec[..HEADER_LEN].try_into().unwrap();
        let h = Header::decode(head).unwrap();
        assert_eq!(
            (h.created_ms, h.expires_ms, h.key, h.raw_len),
            (7, 9, key, 23)
        );
        for bit in 0..HEADER_LEN * 8 {
            let mut bad = *head;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&bad).is_err(), "flipped bit {bit} accepted");
        }
    }

    #[test]
    fn compression_is_used_only_when_it_shrinks() {
        let key = Digest::of(b"k");
        let repetitive = vec![b'a'; 4096];
        for codec in [Compression::Lz4, Compression::Zstd] {
            let rec = encode(&key, &repetitive, false, 0, 0, codec);
            assert!(rec.len() < HEADER_LEN + 4096);
            let (h, v) = decode(&rec, &key).unwrap();
            assert_eq!(h.compression, codec);
            assert_eq!(v, repetitive);
            let tiny = encode(&key, b"x", false, 0, 0, codec);
            assert_eq!(
                Header::decode(tiny[..HEADER_LEN].try_into().unwrap())
                    .unwrap()
                    .compression,
                Compression::None
            );
        }
    }

    #[test]
    fn decode_rejects_wrong_key_payload_and_tombstones() {
        let key = Digest::of(b"k");
        let mut rec = encode(&key, b"value", false, 0, 0, Compression::None);
        assert_eq!(
            decode(&rec, &Digest::of(b"other")),
            Err(RecordError::WrongKey)
        );
        let last = rec.len() - 1;
        rec[last] ^= 0x40;
        assert_eq!(decode(&rec, &key), Err(RecordError::PayloadCrc));
        let tomb = encode(&key, b"", true, 0, 0, Compression::None);
        assert_eq!(decode(&tomb, &key), Err(RecordError::Tombstone));
        assert_eq!(decode(&tomb[..10], &key), Err(RecordError::WrongLength));
    }
}
