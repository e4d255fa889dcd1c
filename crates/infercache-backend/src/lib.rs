//! What infercache knows about a model, whatever runs it.
//!
//! Every model a server serves, the built-in embedder included, is a [`Backend`]: an
//! identity ([`ModelInfo`]: the name clients use and what goes into its keys) and one
//! operation, [`Backend::compute`], which turns some rows of a request's [`Inputs`] into
//! one opaque stored value per row. The registry and the per-row path through the cache
//! (`infercache-infer`) know models only through this trait; the HTTP routes
//! (`infercache-server`) parse a protocol into [`Inputs`] and render stored values back.
//!
//! ```text
//!   infercache-model (faer)        ─┐
//!   infercache-upstream (reqwest)  ─┼─ impl Backend ─► infercache-infer (registry, rows)
//!   a test double                  ─┘
//! ```
//!
//! # Parts
//!
//! - [`Backend`], [`BoxFuture`], [`BackendStats`]: the trait and what it reports.
//! - [`Inputs`]: a request's rows in the form a protocol gives them (texts, JSON rows,
//!   KServe v2 tensor rows), each with its canonical key form; a JSON row is
//!   [`JsonText`], the client's own text, never a parsed tree.
//! - [`ModelInfo`], [`BackendKind`]: a model's identity and the protocol it speaks.
//! - [`ModelConfig`]: the validated settings of one `[[models]]` entry, and
//!   [`ModelConfig::artifact_key`], the upstream's identity every key of the model holds.
//! - [`BackendError`], [`UpstreamError`]: why a computation failed, cheap to clone
//!   because the cache hands one error to every request waiting on the same rows.
//! - [`vector`]: the stored form of an embedding (little-endian `f32`).
//!
//! This crate is light on purpose (serde and the KServe codec): a backend crate, the
//! registry and the server all depend on it, and none of them on another's runtime.

mod backend;
mod dirs;
mod error;
mod info;
mod inputs;
mod settings;
pub mod vector;

pub use backend::{Backend, BackendStats, BoxFuture, CallStats, InferenceStats};
pub use dirs::default_cache_dir;
pub use error::{BackendError, UpstreamError};
pub use info::{BUILTIN_ALIAS, BUILTIN_MODEL, BackendKind, ModelInfo};
pub use inputs::{Inputs, JsonText};
pub use settings::{DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_RETRIES, ModelConfig};
