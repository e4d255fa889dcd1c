//! The crate's typed error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Digest;

/// Everything that can go wrong in the artifact store.
///
/// `Clone` (sources behind `Arc`) so that one fetch's failure can be handed to every
/// caller that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// A file system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The bytes inserted are not the ones the caller named; nothing was stored.
    #[error("digest mismatch: expected {expected}, the bytes are {actual}")]
    DigestMismatch {
        /// The digest the caller expected.
        expected: Digest,
        /// The digest of the bytes seen, in the same algorithm.
        actual: Digest,
    },
    /// A digest could not be parsed.
    #[error("invalid digest `{input}`: {reason}")]
    InvalidDigest {
        /// The text given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A snapshot name could not be used.
    #[error("invalid snapshot name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration is not usable.
    #[error("invalid artifact store configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The class is not configured in this store.
    #[error("unknown artifact class `{class}` (configured: {known})")]
    UnknownClass {
        /// The class asked for.
        class: String,
        /// The configured classes, comma-separated.
        known: String,
    },
    /// The blob alone is larger than its class's cap; nothing was stored.
    #[error("a blob of {size} bytes exceeds the cap of class `{class}` ({cap} bytes)")]
    TooLarge {
        /// The class.
        class: String,
        /// The blob's size.
        size: u64,
        /// The class's cap.
        cap: u64,
    },
    /// The class cannot make room: what is left is pinned or in use.
    #[error(
        "class `{class}` is full: {used} of {cap} bytes are pinned or in use, and {size} more were asked for"
    )]
    Full {
        /// The class.
        class: String,
        /// The bytes still held after evicting everything evictable.
        used: u64,
        /// The class's cap.
        cap: u64,
        /// The size of the blob that did not fit.
        size: u64,
    },
    /// The blob is pinned; it is removed only when forced.
    #[error("{digest} is pinned ({reason}); unpin it or force the removal")]
    Pinned {
        /// The blob.
        digest: Digest,
        /// The pin's reason.
        reason: String,
    },
    /// The blob is open in some process; it is removed only when forced.
    #[error("{digest} is in use by an open reader; force the removal to unlink it anyway")]
    InUse {
        /// The blob.
        digest: Digest,
    },
    /// No blob or snapshot by this name.
    #[error("not in the artifact store: {what}")]
    NotFound {
        /// The digest or snapshot name.
        what: String,
    },
    /// A blob's bytes no longer match its name; it was removed and never served.
    #[error("{digest} is corrupt on disk (its bytes hash to {actual}); it was removed")]
    Corrupt {
        /// The blob's name.
        digest: Digest,
        /// What its bytes hash to now.
        actual: Digest,
    },
    /// A store file holds something this version cannot read.
    #[error("unreadable store record {path}: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller's fetch failed; nothing was stored (a partial download is kept).
    #[error("fetch failed: {0}")]
    Fetch(Arc<dyn std::error::Error + Send + Sync>),
}

impl ArtifactError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// `true` for an I/O error whose kind is `NotFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            || matches!(self, Self::NotFound { .. })
    }
}

/// `map_err` helper: an I/O error on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |e| ArtifactError::io(path, e)
}
