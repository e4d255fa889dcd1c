//! The stored form of an embedding: its values as little-endian `f32` bytes, verbatim.
//! It is also what OpenAI's `encoding_format: "base64"` sends, so a hit in that encoding
//! needs no decoding at all.

use bytes::Bytes;

/// `v` as little-endian `f32` bytes.
pub fn encode(v: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

/// The values of a stored embedding: `bytes` must hold whole `f32`s, and exactly `dims`
/// of them when the model's size is known.
///
/// # Errors
/// A message saying what the value holds instead (keys cover the model and its weights,
/// so this is a bug or a foreign value, never a client's mistake).
pub fn decode(bytes: &[u8], dims: Option<usize>) -> Result<Vec<f32>, String> {
    check(bytes, dims)?;
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
    !bytes.is_empty() && check(bytes, asked.or(dims)).is_ok()
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
        assert!(decode(&b, Some(3)).is_err());
        assert!(decode(&b[..5], None).is_err());
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
