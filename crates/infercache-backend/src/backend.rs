//! The [`Backend`] trait: the only thing the registry and the per-row path know about a
//! model.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;

use crate::error::BackendError;
use crate::info::ModelInfo;
use crate::inputs::Inputs;

/// A boxed, sendable future: what [`Backend`]'s async methods return, so the trait can be
/// used as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A model, as the cache sees it.
///
/// # Contract
///
/// [`compute`](Backend::compute) is called with a request's [`Inputs`] and the indices of
/// the rows no cache tier holds (each once, in request order, at most the model's
/// `max_batch` of them) and returns one value per index, in the same order. The value is
/// what the cache stores and what the routes later render: its format is the backend's
/// (an embedding's little-endian `f32` bytes, a JSON row's compact text, a KServe v2
/// row's encoding). The per-row path never decodes it, so a hit can be served from the
/// stored bytes; a backend may put a small side value beside its output (a token count)
/// as long as its renderers and its key's format version say so.
///
/// Calls for different chunks of one request may run concurrently. Implementations that
/// queue work (an inference pool) answer [`BackendError::Overloaded`] at once rather than
/// queue without bound; a call for inputs of a kind the backend does not take is a bug of
/// the caller ([`BackendError::Failed`]).
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The model's identity.
    fn info(&self) -> &ModelInfo;

    /// One stored value per index of `rows` into `inputs`, in order.
    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>>;

    /// Whether a value this backend computed may be kept in the cache. Default: always.
    /// An upstream whose answer for a failed input is a row of its own (Ersilia's row of
    /// nulls) refuses it, so the failure does not stick.
    fn keep(&self, value: &[u8]) -> bool {
        let _ = value;
        true
    }

    /// Whether `value`, which a cache tier holds under the key of a row of `inputs`, can be
    /// this backend's output for it: an embedder checks the embedding's length
    /// ([`vector::fits`](crate::vector::fits)). A value that cannot is never served: it is a
    /// miss, counted as corrupt, and recomputed. Keys cover the model and its upstream, so
    /// only a bug or a foreign writer on a shared tier stores one. Default: any value.
    fn fits(&self, value: &[u8], inputs: &Inputs) -> bool {
        let _ = (value, inputs);
        true
    }

    /// Tokens `text` counts as, for a response's `usage`. Default: 0 (a model whose
    /// tokenizer runs elsewhere).
    fn count_tokens(&self, text: &str) -> usize {
        let _ = text;
        0
    }

    /// The model's own metadata document, when its protocol has one (a KServe v2
    /// upstream's `GET /v2/models/{name}`). Default: none.
    fn metadata(&self) -> BoxFuture<'_, Result<Option<serde_json::Value>, BackendError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The model's configuration document, when its protocol has one (a Triton
    /// upstream's `GET /v2/models/{name}/config`). Default: none.
    fn model_config(&self) -> BoxFuture<'_, Result<Option<serde_json::Value>, BackendError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether the model can serve now, when its protocol can tell (a KServe v2
    /// upstream's readiness route). Default: ready.
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The work done so far.
    fn stats(&self) -> BackendStats;
}

/// What a backend has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStats {
    /// A model run in this process: its inference work.
    InProcess(InferenceStats),
    /// A model behind an upstream server: its calls.
    Upstream(CallStats),
}

/// The work of a model run in this process since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InferenceStats {
    /// Model invocations (forward passes over one batch).
    pub invocations: u64,
    /// Texts embedded.
    pub texts: u64,
}

/// What one model's upstream calls did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// HTTP attempts made (a retried call counts each attempt).
    pub attempts: u64,
    /// Attempts that failed (transport error, timeout, error status, unusable body).
    pub failures: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Time spent in attempts, in microseconds.
    pub micros: u64,
}
