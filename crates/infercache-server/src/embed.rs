//! The boundary between the server and an embedding model.
//!
//! The server never names a model runtime: it holds an `Arc<dyn Embed>`. The built-in
//! all-MiniLM-L6-v2 behind `infercache-model`'s batching pool implements it
//! ([`crate::model`]), and so do the test doubles, so router tests need no weights.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

/// The future [`Embed::embed`] returns.
pub type EmbedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

/// What the server knows about the model behind an [`Embed`]: what clients call it and
/// what goes into its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model id clients name and responses report (`all-MiniLM-L6-v2`).
    pub id: String,
    /// Other names accepted for it (`sentence-transformers/all-MiniLM-L6-v2`).
    pub aliases: Vec<String>,
    /// The model version; part of every key.
    pub version: String,
    /// Digest of the weights (`sha256:…`); part of every key.
    pub artifact: Option<String>,
    /// Dimensions of one embedding.
    pub dims: usize,
}

impl ModelInfo {
    /// Whether `name` is this model's id or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }
}

/// Work the model has done since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InferenceStats {
    /// Model invocations (forward passes over one batch).
    pub invocations: u64,
    /// Texts embedded.
    pub texts: u64,
}

/// An embedding model as the server sees it.
///
/// `embed` is called with the cache misses of one request (never with texts the cache
/// holds, and never twice at once for the same text); implementations are expected to
/// batch concurrent calls and to answer [`EmbedError::Overloaded`] at once rather than
/// queue without bound.
pub trait Embed: Send + Sync + fmt::Debug + 'static {
    /// The model's identity.
    fn info(&self) -> &ModelInfo;

    /// Tokens `text` counts as (reported as `usage`).
    fn count_tokens(&self, text: &str) -> usize;

    /// One embedding of `info().dims` values per text, in order.
    fn embed(&self, texts: Vec<String>) -> EmbedFuture<'_>;

    /// Work done so far.
    fn stats(&self) -> InferenceStats;
}

/// Why an embedding could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The inference queue is full; the client should retry later (HTTP 429).
    #[error("the inference queue is full")]
    Overloaded,
    /// The model failed. The text is logged, never sent to a client.
    #[error("inference failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}
