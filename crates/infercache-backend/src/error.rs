//! Why a backend could not compute: [`BackendError`], with [`UpstreamError`] for models
//! behind an upstream server.
//!
//! Both are cheap to clone: the cache computes a row once for every request waiting on it
//! and hands each of them the same error. Neither is ever cached. Which HTTP status each
//! becomes is the server's one error mapping, not this crate's.

use std::sync::Arc;
use std::time::Duration;

/// Why a computation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The model's queue is full; the client should retry later.
    #[error("the model is overloaded")]
    Overloaded,
    /// The model's upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The model failed. The cause is for logs, never for a client.
    #[error("inference failed: {0}")]
    Failed(Arc<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// A [`BackendError::Failed`] with `cause`.
    pub fn failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Failed(Arc::from(cause.into()))
    }
}

/// Why an upstream call failed. Every variant names the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No answer within the model's timeout (or the request's answer budget).
    #[error("the upstream of model `{model}` did not answer within {timeout:?}")]
    Timeout {
        /// The model.
        model: String,
        /// The time waited.
        timeout: Duration,
    },
    /// The connection could not be made.
    #[error("the upstream of model `{model}` is unreachable")]
    Unreachable {
        /// The model.
        model: String,
        /// The transport's message (logged, not sent).
        detail: String,
    },
    /// The TLS handshake failed: most often the upstream's certificate is not signed by a
    /// trusted CA (the model's `ca_file`, the system's roots) or names another host.
    #[error(
        "the TLS handshake with the upstream of model `{model}` failed: its certificate is \
         not trusted (a CA in neither the system's roots nor the model's ca_file) or not valid \
         for its host"
    )]
    Tls {
        /// The model.
        model: String,
        /// The TLS library's message (logged, not sent).
        detail: String,
    },
    /// The connection broke after the request was sent.
    #[error("the connection to the upstream of model `{model}` broke")]
    Broken {
        /// The model.
        model: String,
        /// The transport's message (logged, not sent).
        detail: String,
    },
    /// The upstream answered with an error status.
    #[error("the upstream of model `{model}` answered {status}")]
    Status {
        /// The model.
        model: String,
        /// Its status.
        status: u16,
    },
    /// The upstream answered 2xx with a body this protocol cannot use.
    #[error("the upstream of model `{model}` sent an unusable response: {reason}")]
    BadResponse {
        /// The model.
        model: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl UpstreamError {
    /// The model whose upstream failed.
    pub fn model(&self) -> &str {
        match self {
            Self::Timeout { model, .. }
            | Self::Unreachable { model, .. }
            | Self::Tls { model, .. }
            | Self::Broken { model, .. }
            | Self::Status { model, .. }
            | Self::BadResponse { model, .. } => model,
        }
    }

    /// The upstream's HTTP status, when it answered with one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A malformed-response error for `model`.
    pub fn bad_response(model: &str, reason: impl Into<String>) -> Self {
        Self::BadResponse {
            model: model.to_owned(),
            reason: reason.into(),
        }
    }
}
