//! SHA-256 digests as the manifest writes them: 64 lower-case hex characters.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Bytes read at a time when hashing a file.
const READ_SIZE: usize = 1 << 20;

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The size and SHA-256 (lower-case hex) of the file at `path`, read in 1 MiB pieces;
/// `progress` is told how many bytes each piece held.
///
/// # Errors
/// The file's I/O error.
pub fn sha256_file(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        progress(n as u64);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether `s` is a SHA-256 as the manifest writes it.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An incremental SHA-256 over bytes as they arrive.
#[derive(Debug, Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added, as lower-case hex.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_format() {
        let d = sha256_hex(b"abc");
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&d));
        assert!(!is_sha256_hex(&d.to_uppercase()));
        assert!(!is_sha256_hex(&d[1..]));
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish_hex(), d);
    }
}
