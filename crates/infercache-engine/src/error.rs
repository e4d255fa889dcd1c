//! The engine's typed errors.

use std::fmt;
use std::sync::Arc;

use crate::disk::DiskError;
use crate::epochs::EpochError;

/// Errors opening or operating the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The disk tier failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The epoch table failed.
    #[error(transparent)]
    Epoch(#[from] EpochError),
    /// A computation returned a different number of values than keys it was given.
    #[error("computation returned {got} values for {expected} keys")]
    BatchLength {
        /// Keys passed in.
        expected: usize,
        /// Values returned.
        got: usize,
    },
    /// A configuration that cannot work.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(&'static str),
    /// A capacity was given as a fraction of RAM, and this platform does not report its RAM.
    #[error(
        "cannot size a cache as a fraction of RAM: the system's memory size is unknown; give bytes instead"
    )]
    UnknownRam,
    /// A trace file could not be read.
    #[error("trace {path}: {reason}")]
    Trace {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// The error of a computation run through the cache, shared by every caller that waited
/// for it (hence an `Arc`). Errors are never cached.
#[derive(Clone)]
pub struct ComputeError(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl ComputeError {
    /// Wraps an error.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Self(Arc::new(e))
    }

    /// The original error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// The shared inner error.
    pub fn inner(&self) -> &Arc<dyn std::error::Error + Send + Sync + 'static> {
        &self.0
    }
}

impl fmt::Debug for ComputeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ComputeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ComputeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
