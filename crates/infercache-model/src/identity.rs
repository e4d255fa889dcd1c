//! What names a set of weights whatever files carry them: the digest of its tensors.
//!
//! The built-in model's artifact digest is the SHA-256 of `model.safetensors`
//! ([`WEIGHTS_SHA256`](crate::WEIGHTS_SHA256)). Weights that arrive another way (one
//! chunk per layer from a weight server) have no such file to hash, but they have the same
//! tensors: [`TensorDigest`] hashes each tensor's name, dtype, shape and bytes, in name
//! order, so any split of one set of tensors into files gives one digest, and any other
//! tensor, name, dtype, shape or byte gives another. [`WEIGHTS_TENSORS_SHA256`] is that
//! digest of the pinned `model.safetensors`: weights with it are the built-in model's.

use infercache_core::encode::{put_field, put_u64};
use safetensors::SafeTensors;
use sha2::{Digest as _, Sha256};

use crate::ModelError;

/// The [`TensorDigest`] of the pinned `model.safetensors` (all 104 tensors, the pooler
/// and `embeddings.position_ids` included).
pub const WEIGHTS_TENSORS_SHA256: &str =
    "97e2e0cd16a6dbe438367eebb9807c15eb3000c21a861c1eb2df7e1782e00f2e";

/// The digest of a set of tensors gathered from one or more safetensors files.
///
/// The digest is the SHA-256 of: the tensor count (u64 LE), then per tensor in name
/// order its name, dtype (safetensors' name, `F32`), rank and dimensions, and the SHA-256
/// of its bytes, each field length-prefixed ([`infercache_core::encode`]).
#[derive(Debug, Default)]
pub struct TensorDigest {
    /// Name, then the encoded rest of the entry.
    entries: Vec<(String, Vec<u8>)>,
}

impl TensorDigest {
    /// Adds every tensor of `tensors`.
    ///
    /// # Errors
    /// [`ModelError::Weights`] for a tensor already added (two files hold one name).
    pub fn add(&mut self, tensors: &SafeTensors<'_>) -> Result<(), ModelError> {
        for (name, view) in tensors.tensors() {
            if self.entries.iter().any(|(n, _)| *n == name) {
                return Err(ModelError::Weights {
                    tensor: name,
                    reason: "appears in more than one file".into(),
                });
            }
            let mut entry = Vec::with_capacity(96);
            put_field(&mut entry, format!("{:?}", view.dtype()).as_bytes());
            put_u64(&mut entry, view.shape().len() as u64);
            for &d in view.shape() {
                put_u64(&mut entry, d as u64);
            }
            put_field(&mut entry, &Sha256::digest(view.data()));
            self.entries.push((name, entry));
        }
        Ok(())
    }

    /// Tensors added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest, as lowercase hex.
    pub fn finish(mut self) -> String {
        self.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(8 + self.entries.len() * 160);
        put_u64(&mut out, self.entries.len() as u64);
        for (name, entry) in &self.entries {
            put_field(&mut out, name.as_bytes());
            out.extend_from_slice(entry);
        }
        hex::encode(Sha256::digest(&out))
    }
}

#[cfg(test)]
mod tests {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    use super::*;

    fn file(tensors: &[(&str, Dtype, &[usize], &[u8])]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| ((*n).to_owned(), TensorView::new(*d, s.to_vec(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn digest(files: &[&[u8]]) -> String {
        let mut d = TensorDigest::default();
        for f in files {
            d.add(&SafeTensors::deserialize(f).unwrap()).unwrap();
        }
        d.finish()
    }

    #[test]
    fn any_split_gives_one_digest_and_any_change_another() {
        let (a, b) = ([1u8, 2, 3, 4], [5u8, 6, 7, 8]);
        let whole = file(&[("a", Dtype::F32, &[1], &a), ("b", Dtype::F32, &[1], &b)]);
        let one = file(&[("a", Dtype::F32, &[1], &a)]);
        let two = file(&[("b", Dtype::F32, &[1], &b)]);
        let d = digest(&[&whole]);
        assert_eq!(digest(&[&one, &two]), d);
        assert_eq!(digest(&[&two, &one]), d);
        for other in [
            file(&[("a", Dtype::F32, &[1], &a), ("b", Dtype::F32, &[1], &a)]),
            file(&[("a", Dtype::F32, &[1], &a), ("c", Dtype::F32, &[1], &b)]),
            file(&[("a", Dtype::F32, &[1], &a), ("b", Dtype::I32, &[1], &b)]),
            file(&[("a", Dtype::F32, &[1], &a), ("b", Dtype::F16, &[2], &b)]),
            file(&[("a", Dtype::F32, &[1], &a)]),
        ] {
            assert_ne!(digest(&[&other]), d);
        }
        let mut twice = TensorDigest::default();
        twice.add(&SafeTensors::deserialize(&one).unwrap()).unwrap();
        assert!(matches!(
            twice.add(&SafeTensors::deserialize(&whole).unwrap()),
            Err(ModelError::Weights { tensor, .. }) if tensor == "a"
        ));
    }
}
