//! The crate's typed error.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong while fetching, loading or running the model.
///
/// The error is `Clone` (sources are behind `Arc`) because the [`InferencePool`] hands the
/// error of one batched forward pass to every caller whose texts were in that batch.
///
/// [`InferencePool`]: crate::InferencePool
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading or writing a model file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A model file does not have the expected SHA-256; it was not used.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The file name (`model.safetensors`, `tokenizer.json` or `config.json`).
        file: String,
        /// The expected hex digest.
        expected: String,
        /// The digest of the bytes actually seen.
        actual: String,
    },
    /// No source could provide the model files.
    #[error("could not fetch the model files: {reason}")]
    Fetch {
        /// What each source said, in the order they were tried.
        reason: String,
    },
    /// `config.json` could not be parsed as a BERT configuration.
    #[error("invalid model config: {0}")]
    Config(Arc<serde_json::Error>),
    /// `config.json` describes a model this forward pass does not run.
    #[error("unsupported model config: {0}")]
    UnsupportedConfig(String),
    /// The weights file is not a valid safetensors file.
    #[error("invalid safetensors file: {0}")]
    Safetensors(Arc<safetensors::SafeTensorError>),
    /// A tensor a component needs is missing or has the wrong shape or dtype.
    #[error("tensor {tensor}: {reason}")]
    Weights {
        /// The tensor's name, as in the safetensors file.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Inputs to a component do not fit it (token ids, lengths, widths).
    #[error("invalid forward-pass input: {0}")]
    Shape(String),
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer error: {0}")]
    Tokenizer(Arc<dyn std::error::Error + Send + Sync>),
    /// The inference queue is full; the request was not queued. A server answers 429.
    #[error("the inference queue is full")]
    Overloaded,
    /// The inference pool has shut down before answering.
    #[error("the inference pool has shut down")]
    Shutdown,
    /// The forward pass of this request's batch panicked; the thread that ran it was
    /// replaced. The message is the panic's, for logs.
    #[error("a forward pass panicked: {0}")]
    Panicked(String),
    /// No inference thread runs (a replacement could not be started): the request was not
    /// queued.
    #[error("no inference thread is running")]
    NoWorkers,
    /// A pool setting is out of range.
    #[error("invalid inference pool configuration: {0}")]
    InvalidConfig(&'static str),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<safetensors::SafeTensorError> for ModelError {
    fn from(error: safetensors::SafeTensorError) -> Self {
        Self::Safetensors(Arc::new(error))
    }
}

impl From<tokenizers::Error> for ModelError {
    fn from(error: tokenizers::Error) -> Self {
        Self::Tokenizer(Arc::from(error))
    }
}
