//! Content digests: BLAKE3 names every blob; SHA-256 is kept beside it because model
//! files are published with SHA-256.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::Digest as _;

use crate::ArtifactError;

/// A content digest with its algorithm, written `blake3:<64 hex>` or `sha256:<64 hex>`.
///
/// The store names blobs by BLAKE3: it is several times faster than SHA-256 on CPUs
/// without SHA extensions (verifying a cached file is one pass at memory speed), it is
/// the hash the rest of infercache keys with, and dataset fingerprints are BLAKE3 chains.
/// Every blob's SHA-256 is computed on insert too, so a file known only by its published
/// SHA-256 (a model on the Hugging Face hub, a weight chunk's `ETag`) is found and
/// verified by that digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    /// BLAKE3-256: the blob's name in the store.
    Blake3([u8; 32]),
    /// SHA-256: an alias, verified on insert.
    Sha256([u8; 32]),
}

impl Digest {
    /// The algorithm's name as written before the colon.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Blake3(_) => "blake3",
            Self::Sha256(_) => "sha256",
        }
    }

    /// The 32 digest bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        match self {
            Self::Blake3(b) | Self::Sha256(b) => b,
        }
    }

    /// The digest bytes in lower-case hex, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes())
    }

    /// BLAKE3 of `bytes`.
    pub fn blake3_of(bytes: &[u8]) -> Self {
        Self::Blake3(*blake3::hash(bytes).as_bytes())
    }

    /// SHA-256 of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<hex>` from a bare 64-character hex string (the form model
    /// manifests and `ETag`s use).
    pub fn sha256_hex(hex: &str) -> Result<Self, ArtifactError> {
        Ok(Self::Sha256(parse_hex(hex, hex)?))
    }

    /// A name safe as a file name: `blake3-<hex>` or `sha256-<hex>`.
    pub(crate) fn file_stem(&self) -> String {
        format!("{}-{}", self.algorithm(), self.hex())
    }
}

fn parse_hex(hex_part: &str, whole: &str) -> Result<[u8; 32], ArtifactError> {
    let invalid = |reason: &str| ArtifactError::InvalidDigest {
        input: whole.to_owned(),
        reason: reason.to_owned(),
    };
    if hex_part.len() != 64 {
        return Err(invalid("expected 64 hex digits"));
    }
    let mut out = [0; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| invalid("not hex"))?;
    Ok(out)
}

impl FromStr for Digest {
    type Err = ArtifactError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let Some((algorithm, hex_part)) = t.split_once(':') else {
            return Err(ArtifactError::InvalidDigest {
                input: s.to_owned(),
                reason: "expected blake3:<hex> or sha256:<hex>".to_owned(),
            });
        };
        let bytes = parse_hex(&hex_part.to_ascii_lowercase(), s)?;
        match algorithm.to_ascii_lowercase().as_str() {
            "blake3" => Ok(Self::Blake3(bytes)),
            "sha256" => Ok(Self::Sha256(bytes)),
            _ => Err(ArtifactError::InvalidDigest {
                input: s.to_owned(),
                reason: format!("unknown algorithm `{algorithm}` (blake3 or sha256)"),
            }),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Both digests of one byte string, computed in one pass.
#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
    len: u64,
}

impl Hasher {
    pub(crate) fn new() -> Self {
        Self {
            blake3: blake3::Hasher::new(),
            sha256: sha2::Sha256::new(),
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.blake3.update(bytes);
        self.sha256.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(crate) fn finish(&self) -> Hashes {
        Hashes {
            blake3: Digest::Blake3(*self.blake3.finalize().as_bytes()),
            sha256: Digest::Sha256(self.sha256.clone().finalize().into()),
            size: self.len,
        }
    }
}

/// What hashing a byte string found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hashes {
    pub(crate) blake3: Digest,
    pub(crate) sha256: Digest,
    pub(crate) size: u64,
}

impl Hashes {
    /// `Ok` if `expected` (of either algorithm) names these bytes.
    pub(crate) fn check(&self, expected: &Digest) -> Result<(), ArtifactError> {
        let actual = match expected {
            Digest::Blake3(_) => self.blake3,
            Digest::Sha256(_) => self.sha256,
        };
        if actual == *expected {
            Ok(())
        } else {
            Err(ArtifactError::DigestMismatch {
                expected: *expected,
                actual,
            })
        }
    }
}

/// A writer that hashes what passes through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything `reader` yields, in 1 MiB reads.
pub(crate) fn hash_reader(mut reader: impl io::Read) -> io::Result<Hashes> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for d in [Digest::blake3_of(b"x"), Digest::sha256_of(b"x")] {
            assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
            assert_eq!(d.to_string().to_uppercase().parse::<Digest>().unwrap(), d);
        }
    }

    #[test]
    fn refuses_malformed_digests() {
        for bad in [
            "",
            "blake3:",
            "md5:00",
            "sha256:zz",
            "abcd",
            &"0".repeat(64),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hasher_matches_one_shot_digests() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        let hashes = h.finish();
        assert_eq!(hashes.blake3, Digest::blake3_of(b"hello world"));
        assert_eq!(hashes.sha256, Digest::sha256_of(b"hello world"));
        assert_eq!(hashes.size, 11);
        // The published SHA-256 of "hello world".
        assert_eq!(
            hashes.sha256.hex(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
