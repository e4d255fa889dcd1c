//! The crate's typed error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use infercache_artifact::{ArtifactError, Digest};

/// Everything that can go wrong building, reading or managing cached datasets. Each
/// variant names what it is about (the file, the step, the shard, the dataset).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A file system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A source file is missing, of an unknown format, or holds a malformed row.
    #[error("source {path}: {reason}")]
    Source {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A step failed on a shard (a command that exits non-zero or prints the wrong number
    /// of rows, a missing column, a tokenizer error).
    #[error("step `{step}`: {reason}")]
    Step {
        /// The step, as specified.
        step: String,
        /// What went wrong.
        reason: String,
    },
    /// A step specification could not be parsed or resolved.
    #[error("invalid step `{spec}`: {reason}")]
    InvalidStep {
        /// The specification given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },
    /// A step declares no version: it cannot be fingerprinted, so it is not built.
    #[error("step `{step}` declares no version; a step without a version cannot be built")]
    Unversioned {
        /// The step's id.
        step: String,
    },
    /// No dataset by this name or fingerprint.
    #[error("no dataset `{name}` in the cache")]
    NotFound {
        /// The name or fingerprint asked for.
        name: String,
    },
    /// The dataset name cannot be used.
    #[error("invalid dataset name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The byte cap cannot hold the two shards a stream needs (the one it reads and the
    /// next).
    #[error(
        "the dataset cache's cap of {cap} bytes is below two shards of {shard_bytes} bytes; raise disk_size to at least {} or build with fewer rows per shard",
        2 * shard_bytes
    )]
    CapTooSmall {
        /// The cap.
        cap: u64,
        /// The largest shard.
        shard_bytes: u64,
    },
    /// A manifest, name record or journal is unreadable; nothing was changed.
    #[error("corrupt dataset record {path}: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A resume token does not belong to this stream.
    #[error("invalid resume token `{token}`: {reason}")]
    BadToken {
        /// The token given.
        token: String,
        /// Why it was refused.
        reason: String,
    },
    /// A shard recomputed from its source rows is not the shard the manifest names: a step
    /// changed its output without a version bump, or a source changed. Nothing is served.
    #[error(
        "shard {shard} of `{dataset}` recomputes to {actual}, not {expected}: a source or a step changed without a version bump"
    )]
    ShardDiffers {
        /// The dataset.
        dataset: String,
        /// The shard's index.
        shard: u64,
        /// The digest in the manifest.
        expected: Digest,
        /// The digest recomputed.
        actual: Digest,
    },
    /// A shard is gone (evicted or corrupt) and cannot be recomputed (its source is gone,
    /// or it was built from in-memory rows).
    #[error("shard {shard} of `{dataset}` is not cached and cannot be recomputed: {reason}")]
    Unrecoverable {
        /// The dataset.
        dataset: String,
        /// The shard's index.
        shard: u64,
        /// Why.
        reason: String,
    },
    /// Arrow could not encode or decode data.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// Arrow's error.
        #[source]
        source: Arc<arrow_schema::ArrowError>,
    },
    /// A `[cache]` setting (file, variable or flag) that does not parse or is out of
    /// range.
    #[error("invalid {key} {value:?}: {reason}")]
    Config {
        /// The key (`disk_size`, `cache.disk.use_mmap`).
        key: String,
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The artifact store failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

impl DatasetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        Self::Arrow {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn step(step: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Step {
            step: step.into(),
            reason: reason.into(),
        }
    }
}

/// `map_err` helper: an I/O error on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |e| DatasetError::io(path, e)
}
