//! The core crate's typed error.

/// What can go wrong building keys or parsing sizes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The input is not valid JSON.
    #[error("input is not valid JSON: {0}")]
    InvalidJson(#[from] serde_json::Error),
    /// A JSON number cannot be represented (NaN or infinite after parsing).
    #[error("JSON number {0} is not finite")]
    NonFiniteNumber(String),
    /// A tensor's byte length disagrees with its dtype and shape.
    #[error("tensor of dtype {dtype} and shape {shape:?} needs {expected} bytes, got {actual}")]
    TensorSize {
        /// The declared dtype.
        dtype: String,
        /// The declared shape.
        shape: Vec<u64>,
        /// Bytes the dtype and shape imply.
        expected: u64,
        /// Bytes supplied.
        actual: u64,
    },
    /// A tensor dtype we do not know the element size of.
    #[error("unknown tensor dtype {0:?}")]
    UnknownDtype(String),
    /// A size that is neither a byte count nor a fraction in (0, 1].
    #[error("invalid size {input:?}: {reason}")]
    InvalidSize {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A digest that is not 64 hex characters.
    #[error("invalid key digest {0:?}: expected 64 hex characters")]
    InvalidDigest(String),
}
