//! The stored form of an embedding: its values as little-endian `f32` bytes, verbatim.
//! It is also what OpenAI's `encoding_format: "base64"` sends, so a hit in that encoding
//! needs no decoding at all.
//!
//! A model whose size is known and that counts tokens here (the built-in model) stores the
//! input's token count after the values ([`encode_counted`]: 4 more bytes, a little-endian
//! `u32`), so that a hit answers `usage` without tokenizing again. The two forms differ in
//! length by exactly those 4 bytes, so [`split`] tells them apart by the model's size, and
//! values stored before the count was kept still read (their count is `None`). The price:
//! a value of exactly one float too many is not caught as the wrong size.

use bytes::Bytes;

/// `v` as little-endian `f32` bytes.
pub fn encode(v: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

/// `v` as little-endian `f32` bytes followed by `tokens`, the input's token count, as a
/// little-endian `u32` (saturated): the stored form for a model of known size that counts
/// tokens.
pub fn encode_counted(v: &[f32], tokens: usize) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * 4 + 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
    out.extend_from_slice(&tokens.to_le_bytes());
    Bytes::from(out)
}

/// A stored embedding's vector bytes and, when it was stored with one
/// ([`encode_counted`]), its input's token count. With `dims` unknown a value is all
/// vector.
///
/// # Errors
/// As [`check`], for a value that is neither `dims` values nor `dims` values and a count.
pub fn split(bytes: &[u8], dims: Option<usize>) -> Result<(&[u8], Option<usize>), String> {
    if let Some(d) = dims
        && bytes.len() == d * 4 + 4
    {
        let (vector, count) = bytes.split_at(d * 4);
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
        return Ok((vector, Some(count as usize)));
    }
    check(bytes, dims)?;
    Ok((bytes, None))
}

/// The values of a stored embedding: `bytes` must hold whole `f32`s, and exactly `dims`
/// of them (and perhaps a token count, see [`split`]) when the model's size is known.
///
/// # Errors
/// A message saying what the value holds instead (keys cover the model and its weights,
/// so this is a bug or a foreign value, never a client's mistake).
pub fn decode(bytes: &[u8], dims: Option<usize>) -> Result<Vec<f32>, String> {
    let (bytes, _) = split(bytes, dims)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Checks that `bytes` hold whole `f32`s, `dims` of them when given.
///
/// # Errors
/// As [`decode`].
pub fn check(bytes: &[u8], dims: Option<usize>) -> Result<(), String> {
    match dims {
        Some(d) if bytes.len() != d * 4 => Err(format!(
            "a cached value has {} bytes, expected {} (a bug)",
            bytes.len(),
            d * 4
        )),
        None if !bytes.len().is_multiple_of(4) => Err(format!(
            "a cached embedding has {} bytes, not a multiple of 4 (a bug)",
            bytes.len()
        )),
        _ => Ok(()),
    }
}

/// Whether `bytes` can be an embedding for a row of `inputs` of a model whose embeddings
/// have `dims` values (when known): the size the request asked for (OpenAI's
/// `dimensions`), else `dims`, else whole `f32`s.
pub fn fits(bytes: &[u8], inputs: &crate::Inputs, dims: Option<usize>) -> bool {
    let asked = match inputs {
        crate::Inputs::Texts {
            dimensions: Some(d),
            ..
        } => usize::try_from(*d).ok(),
        _ => None,
    };
    !bytes.is_empty() && split(bytes, asked.or(dims)).is_ok()
}

/// `v` scaled to unit length (a zero vector stays zero).
pub fn l2_normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_checks_length() {
        let v = vec![0.5, -1.25, f32::MIN_POSITIVE, 3.0e7];
        let b = encode(&v);
        assert_eq!(&b[..4], &0.5f32.to_le_bytes());
        assert_eq!(decode(&b, Some(4)).unwrap(), v);
        assert_eq!(decode(&b, None).unwrap(), v);
        assert!(decode(&b, Some(5)).is_err());
        assert!(decode(&b, Some(2)).is_err());
        assert!(decode(&b[..5], None).is_err());
        // One value more than the model's size reads as a vector and its token count.
        assert_eq!(
            split(&b, Some(3)).unwrap().1,
            Some(3.0e7f32.to_bits() as usize)
        );
    }

    #[test]
    fn a_counted_value_splits_into_its_vector_and_count() {
        let v = vec![0.5, -1.25, 2.0];
        let counted = encode_counted(&v, 12);
        assert_eq!(counted.len(), 16);
        let (vector, tokens) = split(&counted, Some(3)).unwrap();
        assert_eq!(vector, &encode(&v)[..]);
        assert_eq!(tokens, Some(12));
        assert_eq!(decode(&counted, Some(3)).unwrap(), v);
        // A value stored without a count reads as before.
        let plain = encode(&v);
        assert_eq!(split(&plain, Some(3)).unwrap(), (&plain[..], None));
        // Without a known size the count cannot be told from a fourth value.
        assert_eq!(split(&counted, None).unwrap(), (&counted[..], None));
        assert!(split(&counted, Some(2)).is_err());
        assert_eq!(
            split(&encode_counted(&v, usize::MAX), Some(3)).unwrap().1,
            Some(u32::MAX as usize)
        );
    }

    #[test]
    fn an_embedding_fits_the_size_asked_for_else_the_models() {
        let four = encode(&[1.0, 2.0, 3.0, 4.0]);
        let plain = crate::Inputs::texts(vec!["a".into()]);
        let sized = crate::Inputs::Texts {
            texts: vec!["a".into()],
            dimensions: Some(4),
        };
        assert!(fits(&four, &plain, Some(4)));
        assert!(!fits(&four, &plain, Some(384)));
        assert!(fits(&four, &sized, Some(384)));
        assert!(fits(&four, &plain, None));
        assert!(!fits(&four[..6], &plain, None));
        assert!(!fits(&[], &plain, None));
    }

    #[test]
    fn normalizing_gives_unit_length() {
        let v = l2_normalize(vec![3.0, 4.0]);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(l2_normalize(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
