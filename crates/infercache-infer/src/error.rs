//! [`InferError`]: why the per-row path could not answer.

use infercache_backend::BackendError;

/// Why a request's rows could not be served. A miss is not an error: a row no tier holds
/// is computed, or (`cache_only`) reported absent.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// `only-if-cached`, and some row is not cached.
    #[error("only-if-cached: {misses} of {total} inputs are not in the cache")]
    NotCached {
        /// Rows not cached.
        misses: usize,
        /// Rows asked for.
        total: usize,
    },
    /// The model failed, and no stale entries could stand in.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A bug or a failed task; the cause is for logs.
    #[error("{0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl InferError {
    /// An internal error with its cause.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }
}
