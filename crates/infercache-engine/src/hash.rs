//! Hashing for maps keyed by [`Digest`].
//!
//! A digest is BLAKE3 output, already uniform, and its `Hash` impl writes its first eight
//! bytes as one `u64`. This hasher passes that word through instead of hashing it again.
//! Hand-written because it is five lines; `nohash-hasher` does the same but panics on
//! anything but a single integer write, which a `Digest` always is, yet a wrapper type
//! that also hashes a length prefix would trip it.

use std::hash::{BuildHasherDefault, Hasher};

/// The pass-through hasher state.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only reached by keys that are not a `Digest`; mix them in FNV-style.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Builds [`PassThrough`] hashers.
pub type DigestHasher = BuildHasherDefault<PassThrough>;
