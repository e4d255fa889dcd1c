//! JSON written straight into a response buffer, for the bodies every hit renders.
//!
//! The embedding routes write their answers here rather than through `serde` structs: the
//! stored vector bytes go out as base64 or as floats without being decoded into a vector
//! first, keys go out as hex without a `String` each, and the buffer is sized once. The
//! output is byte for byte what `serde_json` writes for the same values (the tests of
//! [`super::openai`] and [`super::smally`] compare the two on random inputs): strings
//! through `serde_json`'s own escaping, integers as `itoa` writes them, floats as
//! `serde_json` does (`zmij`'s shortest round-trip form, `null` when not finite).
//!
//! Written by hand because no serializer writes a JSON array of floats from
//! little-endian bytes, or base64 into the middle of a buffer, without an intermediate.

use base64::Engine as _;
use infercache_core::Digest;

/// The bytes a float takes at most, with its comma: `-1.1754944e-38,`.
pub(crate) const MAX_F32_BYTES: usize = 16;

/// The bytes a key takes, quoted, with its comma.
pub(crate) const KEY_BYTES: usize = 64 + 3;

/// `s` as a JSON string, escaped as `serde_json` escapes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string into a Vec cannot fail");
}

/// `n` in decimal.
pub(crate) fn uint(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `x` as `serde_json` writes an `f32`: its shortest round-trip form, `null` when not
/// finite.
pub(crate) fn f32(out: &mut Vec<u8>, x: f32) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// `x` as `serde_json` writes an `f64`.
pub(crate) fn f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// The little-endian `f32`s of `bytes` (whole floats; a trailing part is ignored) as a
/// JSON array, each divided by `divisor` when one is given.
pub(crate) fn f32_array(out: &mut Vec<u8>, bytes: &[u8], divisor: Option<f32>) {
    out.push(b'[');
    for (i, c) in bytes.chunks_exact(4).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        f32(out, divisor.map_or(x, |d| x / d));
    }
    out.push(b']');
}

/// `bytes` as a quoted base64 string (standard alphabet, padded): nothing in it needs
/// escaping.
pub(crate) fn base64_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let engine = &base64::engine::general_purpose::STANDARD;
    out.push(b'"');
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).expect("a response-sized value");
    out.resize(start + len, 0);
    let written = engine
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer was sized for the encoding");
    debug_assert_eq!(written, len);
    out.push(b'"');
}

/// `keys` as a JSON array of lower-case hex strings.
pub(crate) fn keys(out: &mut Vec<u8>, keys: &[Digest]) {
    out.push(b'[');
    let mut hex = [0u8; 64];
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        hex::encode_to_slice(k.0, &mut hex).expect("64 hex digits for 32 bytes");
        out.push(b'"');
        out.extend_from_slice(&hex);
        out.push(b'"');
    }
    out.push(b']');
}

/// `"cache":{…}`, the [`super::CacheSummary`] of `rows`, as its `Serialize` writes it.
pub(crate) fn cache_summary(out: &mut Vec<u8>, rows: &infercache_infer::Rows) {
    out.extend_from_slice(br#""cache":{"hits":"#);
    uint(out, rows.hits());
    out.extend_from_slice(br#","misses":"#);
    uint(out, rows.misses());
    out.extend_from_slice(br#","coalesced":"#);
    uint(out, rows.coalesced());
    out.extend_from_slice(br#","keys":"#);
    keys(out, &rows.keys);
    let stale = rows.stale();
    if stale > 0 {
        out.extend_from_slice(br#","stale":"#);
        uint(out, stale);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn floats_are_written_as_serde_json_writes_them_and_read_back_exactly(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let mut out = Vec::new();
            f32(&mut out, x);
            prop_assert_eq!(&out, &serde_json::to_vec(&x).unwrap());
            if x.is_finite() {
                let back: f32 = std::str::from_utf8(&out).unwrap().parse().unwrap();
                prop_assert_eq!(back.to_bits(), x.to_bits());
            }
        }

        #[test]
        fn doubles_and_integers_are_written_as_serde_json_writes_them(bits in any::<u64>(), n in any::<usize>()) {
            let x = f64::from_bits(bits);
            let mut out = Vec::new();
            f64(&mut out, x);
            prop_assert_eq!(&out, &serde_json::to_vec(&x).unwrap());
            out.clear();
            uint(&mut out, n);
            prop_assert_eq!(&out, &serde_json::to_vec(&n).unwrap());
        }

        #[test]
        fn strings_and_base64_are_written_as_serde_json_writes_them(s in any::<String>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(&out, &serde_json::to_vec(&s).unwrap());
            out.clear();
            base64_string(&mut out, &bytes);
            let expected = base64::engine::general_purpose::STANDARD.encode(&bytes);
            prop_assert_eq!(&out, &serde_json::to_vec(&expected).unwrap());
        }
    }

    #[test]
    fn the_widest_float_fits_its_bound() {
        for x in [
            -f32::MIN_POSITIVE,
            -1.175_494_2e-38,
            f32::MIN,
            -1.234_567_9e-12,
            -f32::from_bits(1),
        ] {
            let mut out = Vec::new();
            f32(&mut out, x);
            assert!(
                out.len() < MAX_F32_BYTES,
                "{}",
                String::from_utf8(out).unwrap()
            );
        }
    }
}
