//! The client's typed error. Every failure to fetch or use a chunk names the chunk;
//! nothing falls back to a layer that was not fetched and verified.

use std::sync::Arc;

/// A shared cause (errors are cloned to every caller waiting on one fetch).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in the streaming client. `chunk` names what was being fetched: a chunk
/// (`layer_3`), a file (`tokenizer.json`) or `manifest`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The client was configured wrongly.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The server answered with an error status.
    #[error("{chunk}: the weight server answered {status}: {message}")]
    Status {
        /// What was fetched.
        chunk: String,
        /// The HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server could not be reached, or the connection failed, on every attempt.
    #[error(
        "{chunk}: the weight server failed after {attempts} attempts ({received} bytes received): {source}"
    )]
    Transport {
        /// What was fetched.
        chunk: String,
        /// Attempts made.
        attempts: u32,
        /// Bytes of the body received before giving up.
        received: u64,
        /// The last failure.
        #[source]
        source: Cause,
    },
    /// The body ended before the chunk's size.
    #[error("{chunk}: truncated: {received} of {expected} bytes arrived")]
    Truncated {
        /// What was fetched.
        chunk: String,
        /// Its size in the manifest.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The body went past the chunk's size.
    #[error("{chunk}: the server sent more than the manifest's {expected} bytes")]
    Oversized {
        /// What was fetched.
        chunk: String,
        /// Its size in the manifest.
        expected: u64,
    },
    /// The bytes are not the ones the manifest names.
    #[error("{chunk}: sha256 {actual} does not match the manifest's {expected}")]
    Digest {
        /// What was fetched.
        chunk: String,
        /// The manifest's digest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The server's copy is not the one this client's manifest names (it was re-chunked):
    /// reconnect to read the new manifest.
    #[error(
        "{chunk}: the server's copy changed since the manifest was read (ETag {etag}); reconnect"
    )]
    Changed {
        /// What was fetched.
        chunk: String,
        /// The ETag the server sent.
        etag: String,
    },
    /// The server's manifest is not usable.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The server's manifest is for another model.
    #[error("the weight server's manifest is for model {found:?}, not {expected:?}")]
    ForeignManifest {
        /// The model asked for.
        expected: String,
        /// The model the manifest names.
        found: String,
    },
    /// A verified chunk could not be built into its component.
    #[error("{chunk}: cannot be built: {source}")]
    Build {
        /// The chunk.
        chunk: String,
        /// The runtime's error.
        #[source]
        source: Cause,
    },
    /// No memory could be mapped for a body.
    #[error("{chunk}: no memory for its body: {source}")]
    Memory {
        /// The chunk.
        chunk: String,
        /// The system's error.
        #[source]
        source: Cause,
    },
    /// The disk tier's store cannot be opened.
    #[error("the chunk store on disk cannot be opened: {source}")]
    Disk {
        /// The store's error.
        #[source]
        source: Cause,
    },
    /// The forward pass failed.
    #[error("inference failed: {source}")]
    Inference {
        /// The runtime's error.
        #[source]
        source: Cause,
    },
}

impl ClientError {
    /// What was being fetched or built, when the error concerns one chunk or file.
    pub fn chunk(&self) -> Option<&str> {
        match self {
            Self::Status { chunk, .. }
            | Self::Transport { chunk, .. }
            | Self::Truncated { chunk, .. }
            | Self::Oversized { chunk, .. }
            | Self::Digest { chunk, .. }
            | Self::Changed { chunk, .. }
            | Self::Build { chunk, .. }
            | Self::Memory { chunk, .. } => Some(chunk),
            _ => None,
        }
    }
}
