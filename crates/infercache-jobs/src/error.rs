//! [`JobError`]: why a job could not run.

use std::io;

/// Why a job could not run. A failing input is not one: it goes to the errors file and
/// the job completes.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input as a whole cannot be read (not UTF-8, a CSV without its input column).
    #[error("{0}")]
    Input(String),
    /// The model cannot run a job.
    #[error("{0}")]
    Model(String),
    /// `--resume`, and the last job for this output had another spec.
    #[error(
        "refusing to resume: the last job for this output ({previous}) differs in {}; run without --resume (or with --restart) to start the new job",
        diff.join("; ")
    )]
    Changed {
        /// The previous job's id.
        previous: String,
        /// Each field that changed, `field: OLD -> NEW`.
        diff: Vec<String>,
    },
    /// `--resume`, and no job for this output was ever started.
    #[error("nothing to resume: no job has written this output yet")]
    NothingToResume,
    /// A distributed job's Redis cannot be reached, or its stream is not a job's.
    #[error("distributed job: {0}")]
    Distributed(String),
    /// A job file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl JobError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
