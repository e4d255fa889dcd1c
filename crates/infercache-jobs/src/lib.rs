//! Resumable bulk jobs: a whole file of inputs through any model, each unique input
//! computed once, output in input order, resumable after any crash.
//!
//! ```text
//!  input file ─► format::read (CSV, JSON lines, OpenAI batch; bad records kept as errors)
//!     └► JobSpec (input digest, model, version, digest, tenant, parameters) ─► JobId
//!     └► first occurrences over the whole file ─► windows of ≤ batch_size new inputs
//!          └► JobModel::rows, `concurrency` windows at once (InferModel: Infer::rows, the
//!             per-row path: cache, single flight, every backend); a failing call is
//!             split until the failing inputs are alone
//!     ◄─ in input order: output and errors appended to JOBS/<id>/*.partial, then the
//!        journal entry (after the cache write, so a kill loses only rows in flight)
//!     └► at the end: partial files renamed onto --output and --errors
//! ```
//!
//! - [`JobSpec`] and [`JobId`] ([`spec`]): what makes two runs the same job; a changed
//!   model, version or parameter is a new job, and resuming across a change is refused
//!   with the difference.
//! - [`journal`]: the append-only journal, torn tails cut on open.
//! - [`format`](mod@format): reading records and writing outputs and errors in each format.
//! - [`JobModel`] and [`InferModel`] ([`model`]): what computes rows; in-process over
//!   [`infercache_infer::Infer`], or through a running server (the `infercache` binary's
//!   `--url` client).
//! - [`run`] ([`runner`]): the job from input to output.
//! - `distributed` (feature `distributed`): one job shared by several processes through
//!   a Redis Stream and a consumer group, each computing windows into the shared Redis
//!   tier, any of them then writing the output from hits.
//!
//! No HTTP and no terminal here: the binary wires the configuration, the progress bar and
//! the signals.

#[cfg(feature = "distributed")]
pub mod distributed;
mod error;
pub mod format;
mod input;
pub mod journal;
pub mod model;
pub mod runner;
pub mod spec;

pub use error::JobError;
pub use format::{Format, InputKind};
pub use input::Input;
pub use journal::Counts;
pub use model::{CallCounter, Identity, InferModel, JobModel, Output, RowResult, Served};
pub use runner::{JobOptions, Mode, NoProgress, Progress, Summary, WorkerCounts, run};
pub use spec::{JobId, JobSpec};
