//! The format of a value in Redis.
//!
//! ```text
//! magic "ICR1" (4) │ digest (32) │ created_ms u64 LE │ expires_ms u64 LE (0: none)
//!                  │ crc32 u32 LE of everything before it and of the payload │ payload
//! ```
//!
//! The digest is the entry's full cache key: a value stored under one Redis key and read
//! under another (a foreign writer, a bug, a prefix collision) is refused, as is any value
//! whose checksum fails. Other data under our prefix never reads as a hit.

use bytes::Bytes;
use infercache_core::Digest;
use infercache_engine::RemoteEntry;

const MAGIC: &[u8; 4] = b"ICR1";
/// Bytes before the payload.
pub const HEADER: usize = 4 + 32 + 8 + 8 + 4;

/// Encodes `entry` stored under `key`.
pub fn encode(key: &Digest, entry: &RemoteEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entry.value.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&entry.created_ms.to_le_bytes());
    out.extend_from_slice(&entry.expires_ms.unwrap_or(0).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(&entry.value);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&entry.value);
    out
}

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a header, or not our magic.
    #[error("not an infercache value")]
    Foreign,
    /// Stored for another key.
    #[error("stored for another key")]
    WrongKey,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// Decodes a value read under `key`.
///
/// # Errors
/// [`DecodeError`] for anything but an intact value of `key`.
pub fn decode(key: &Digest, bytes: &[u8]) -> Result<RemoteEntry, DecodeError> {
    let (created_ms, expires_ms) = check(key, bytes)?;
    Ok(RemoteEntry {
        value: Bytes::copy_from_slice(&bytes[HEADER..]),
        created_ms,
        expires_ms,
    })
}

/// [`decode`] of bytes the caller owns: the value is a slice of them, not a copy.
///
/// # Errors
/// As [`decode`].
pub fn decode_owned(key: &Digest, bytes: Vec<u8>) -> Result<RemoteEntry, DecodeError> {
    let (created_ms, expires_ms) = check(key, &bytes)?;
    Ok(RemoteEntry {
        value: Bytes::from(bytes).slice(HEADER..),
        created_ms,
        expires_ms,
    })
}

/// Verifies a stored value of `key`; its creation and expiry times.
fn check(key: &Digest, bytes: &[u8]) -> Result<(u64, Option<u64>), DecodeError> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let stored_crc = u32::from_le_bytes(bytes[52..56].try_into().expect("4 bytes"));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..52]);
    crc.update(&bytes[HEADER..]);
    if crc.finalize() != stored_crc {
        return Err(DecodeError::Checksum);
    }
    if bytes[4..36] != key.0 {
        return Err(DecodeError::WrongKey);
    }
    let expires = u64_at(44);
    Ok((u64_at(36), (expires != 0).then_some(expires)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RemoteEntry {
        RemoteEntry {
            value: Bytes::from_static(b"value bytes"),
            created_ms: 1_700_000_000_000,
            expires_ms: Some(1_700_000_060_000),
        }
    }

    #[test]
    fn round_trips() {
        let k = Digest::of(b"k");
        assert_eq!(decode(&k, &encode(&k, &entry())).unwrap(), entry());
        let no_ttl = RemoteEntry {
            expires_ms: None,
            ..entry()
        };
        assert_eq!(decode(&k, &encode(&k, &no_ttl)).unwrap(), no_ttl);
        assert_eq!(decode_owned(&k, encode(&k, &entry())).unwrap(), entry());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let k = Digest::of(b"k");
        let good = encode(&k, &entry());
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&k, &bad).is_err(), "bit {i}");
        }
        for n in 0..good.len() {
            assert!(decode(&k, &good[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn another_keys_value_and_foreign_data_are_refused() {
        let k = Digest::of(b"k");
        let other = Digest::of(b"other");
        assert_eq!(
            decode(&other, &encode(&k, &entry())),
            Err(DecodeError::WrongKey)
        );
        assert_eq!(decode(&k, b"hello"), Err(DecodeError::Foreign));
        assert_eq!(decode(&k, &[0u8; 200]), Err(DecodeError::Foreign));
    }
}
