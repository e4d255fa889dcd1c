//! Errors: [`ApiError`], the one mapping from what went wrong in a request to an HTTP
//! status and an OpenAI-shaped body, and [`ServerError`], what stops the server.
//!
//! Every error body reads `{"error": {"message", "type", "param", "code"}}`
//! ([`infercache_api::ErrorBody`]), the shape the `openai` client parses. An upstream's failure adds `"model"` (the model whose upstream
//! failed) and, when the upstream answered with an error status, `"upstream_status"`:
//!
//! ```json
//! {"error": {"message": "the upstream of model `sol` answered 500", "type": "server_error",
//!            "param": null, "code": "upstream_error", "model": "sol", "upstream_status": 500}}
//! ```
//!
//! | code | status | when |
//! |---|---|---|
//! | `upstream_timeout` | 504 | no answer within the model's `timeout` (or the upstream answered 504) |
//! | `upstream_unavailable` | 503 | connection refused or failed; the upstream answered 429 or 503 |
//! | `upstream_connection_broken` | 502 | the connection broke after the request was sent |
//! | `upstream_error` | 502 | any other error status from the upstream |
//! | `upstream_bad_response` | 502 | a 2xx body the protocol cannot use (wrong row count, not JSON, a KServe v2 answer whose outputs are not batched by the rows sent) |
//!
//! On `/v2` and every path under it (KServe v2 / Triton), the same errors, status and
//! headers have the protocol's body instead, `{"error": "<message>"}`, with the same
//! message: [`crate::App`] rewrites the body from the [`ErrorMessage`]
//! every error response carries.
//!
//! A KServe v2 inference request the codec refuses is 400 `invalid_inference_request`
//! with the codec's message (the tensor and field at fault); a path naming a version the
//! model is not served at is 404 `model_version_not_found`. Messages name the field and the limit at fault; an internal
//! error is logged here, with its cause, and reaches the client only as "internal server
//! error".

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infercache_api::{ErrorBody, ErrorDetail};
use infercache_backend::{BackendError, BackendKind, UpstreamError};
use infercache_infer::{InferError, ResolveError};
use infercache_kserve::KserveError;

use crate::config::ConfigError;

/// Seconds a client is told to wait after a 429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Everything a request can fail with. [`ApiError::status`] is the only place a status is
/// chosen.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body could not be read (a broken upload).
    #[error("request body could not be read")]
    UnreadableBody,
    /// A field has the wrong JSON type or an invalid value.
    #[error("invalid `{param}`: {message}")]
    InvalidField {
        /// The field (`input[3]`).
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field this server does not support.
    #[error("unsupported field `{field}`: {hint}")]
    UnsupportedField {
        /// The field.
        field: String,
        /// Why, or what to do instead.
        hint: String,
    },
    /// `input` is an empty array.
    #[error("`{0}` must contain at least one string")]
    EmptyInput(&'static str),
    /// An input string is empty.
    #[error("`{param}` is an empty string; every input must contain text")]
    EmptyString {
        /// The field (`input[2]`).
        param: String,
    },
    /// An input string of only whitespace, where the API refuses one (`/v1/embed`).
    #[error("`{param}` contains only whitespace; every input must contain text")]
    BlankString {
        /// The field (`text`).
        param: String,
    },
    /// More inputs than the per-request limit.
    #[error("`{param}` has {got} items; at most {limit} are allowed per request")]
    TooManyItems {
        /// The field.
        param: &'static str,
        /// Items sent.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// An input longer than the limit.
    #[error("`{param}` has {chars} characters; at most {limit} are allowed per input")]
    InputTooLong {
        /// The field (`input[0]`).
        param: String,
        /// Its length.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// A model this server does not serve.
    #[error("model `{requested}` does not exist; this server serves `{served}`")]
    UnknownModel {
        /// What was asked for.
        requested: String,
        /// What is served.
        served: String,
    },
    /// A KServe v2 inference request the codec refused (malformed, inconsistent, too
    /// many rows).
    #[error("invalid inference request: {0}")]
    InvalidInference(KserveError),
    /// A model version that is not the one served.
    #[error("model `{model}` has no version `{requested}`; this server serves version `{served}`")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        requested: String,
        /// The version served.
        served: String,
    },
    /// A model served by another route.
    #[error("model `{model}` is a {backend} model; use {}", backend.route())]
    WrongRoute {
        /// The model.
        model: String,
        /// Its backend.
        backend: BackendKind,
    },
    /// `GET /v2/models/{name}/config` for a model that is not behind a KServe v2 / Triton
    /// upstream.
    #[error(
        "model `{model}` is a {backend} model and has no model configuration; only kserve-v2 models have one (from their upstream)"
    )]
    NoModelConfig {
        /// The model.
        model: String,
        /// Its backend.
        backend: BackendKind,
    },
    /// The model's upstream failed.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// A malformed `Cache-Control` header.
    #[error("invalid Cache-Control header: {0}")]
    InvalidCacheControl(String),
    /// A malformed entry key.
    #[error("invalid cache key `{0}`: expected 64 hexadecimal characters")]
    InvalidKey(String),
    /// The body is larger than the limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// No or an unknown API key.
    #[error("missing or invalid API key; send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// A tenant key on an admin route.
    #[error("this route needs an admin API key")]
    Forbidden,
    /// No route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// `DELETE /v1/cache/entries/{key}` for a key no tier holds.
    #[error("no cache entry with key `{0}`")]
    EntryNotFound(String),
    /// A cache route while the server runs with `--disable-cache`.
    #[error("the cache is disabled on this server (--disable-cache)")]
    CacheDisabled,
    /// `Cache-Control: only-if-cached` and some input was not cached.
    #[error("only-if-cached: {misses} of {total} inputs are not in the cache")]
    NotCached {
        /// Inputs not cached.
        misses: usize,
        /// Inputs asked for.
        total: usize,
    },
    /// Too many requests in flight.
    #[error("too many concurrent requests (limit {limit}); retry shortly")]
    TooManyRequests {
        /// The limit.
        limit: usize,
    },
    /// The inference queue is full.
    #[error("the model is overloaded; retry shortly")]
    Overloaded,
    /// The bodies being read and parsed already fill the body budget.
    #[error("too many request bytes in flight (budget {budget} bytes); retry shortly")]
    BodyBudget {
        /// The budget.
        budget: usize,
    },
    /// The request took longer than the limit.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The server is draining for shutdown.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A dataset route on a server that serves no dataset cache.
    #[error("this server serves no datasets (start it with --datasets-dir)")]
    DatasetsDisabled,
    /// No dataset by this name or fingerprint.
    #[error("no dataset `{0}` in the cache")]
    DatasetNotFound(String),
    /// Too many streams of batches are being sent.
    #[error("too many dataset streams in flight (limit {limit}); retry shortly")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },
    /// A bug or an infrastructure failure; the cause is logged, not sent.
    #[error("internal server error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// An internal error with its cause (logged when the response is made).
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    /// `InvalidField` for `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::UnreadableBody
            | Self::InvalidField { .. }
            | Self::MissingField(_)
            | Self::UnsupportedField { .. }
            | Self::EmptyInput(_)
            | Self::EmptyString { .. }
            | Self::BlankString { .. }
            | Self::TooManyItems { .. }
            | Self::InputTooLong { .. }
            | Self::InvalidCacheControl(_)
            | Self::InvalidInference(_)
            | Self::WrongRoute { .. }
            | Self::InvalidKey(_) => StatusCode::BAD_REQUEST,
            Self::Upstream(e) => upstream_status(e),
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownModel { .. }
            | Self::UnknownVersion { .. }
            | Self::NoModelConfig { .. }
            | Self::NoRoute(_)
            | Self::EntryNotFound(_)
            | Self::DatasetsDisabled
            | Self::DatasetNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::CacheDisabled => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. }
            | Self::Overloaded
            | Self::BodyBudget { .. }
            | Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotCached { .. } | Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "invalid_json",
            Self::UnreadableBody => "unreadable_body",
            Self::InvalidField { .. } => "invalid_value",
            Self::MissingField(_) => "missing_required_parameter",
            Self::UnsupportedField { .. } => "unsupported_parameter",
            Self::EmptyInput(_) => "empty_input",
            Self::EmptyString { .. } | Self::BlankString { .. } => "empty_string",
            Self::TooManyItems { .. } => "too_many_inputs",
            Self::InputTooLong { .. } => "input_too_long",
            Self::UnknownModel { .. } => "model_not_found",
            Self::UnknownVersion { .. } => "model_version_not_found",
            Self::InvalidInference(_) => "invalid_inference_request",
            Self::WrongRoute { .. } => "wrong_route",
            Self::NoModelConfig { .. } => "model_config_not_found",
            Self::Upstream(e) => upstream_code(e),
            Self::InvalidCacheControl(_) => "invalid_cache_control",
            Self::InvalidKey(_) => "invalid_cache_key",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unauthorized => "invalid_api_key",
            Self::Forbidden => "admin_required",
            Self::NoRoute(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::EntryNotFound(_) => "entry_not_found",
            Self::CacheDisabled => "cache_disabled",
            Self::NotCached { .. } => "not_cached",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Overloaded => "model_overloaded",
            Self::BodyBudget { .. } => "body_budget_exhausted",
            Self::Timeout(_) => "timeout",
            Self::ShuttingDown => "shutting_down",
            Self::DatasetsDisabled => "datasets_disabled",
            Self::DatasetNotFound(_) => "dataset_not_found",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::Internal(_) => "internal_error",
        }
    }

    /// OpenAI's error `type`.
    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::GATEWAY_TIMEOUT => "timeout_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The request field at fault, if one is.
    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidField { param, .. }
            | Self::EmptyString { param }
            | Self::BlankString { param }
            | Self::InputTooLong { param, .. } => Some(param),
            Self::UnsupportedField { field, .. } => Some(field),
            Self::MissingField(p) | Self::EmptyInput(p) | Self::TooManyItems { param: p, .. } => {
                Some(p)
            }
            Self::UnknownModel { .. } | Self::WrongRoute { .. } | Self::NoModelConfig { .. } => {
                Some("model")
            }
            Self::UnknownVersion { .. } => Some("version"),
            _ => None,
        }
    }
}

/// The status of an upstream's failure: 504 when it did not answer in time (or answered
/// 504), 503 when it could not be reached or said "not now" (429, 503), else 502.
fn upstream_status(e: &UpstreamError) -> StatusCode {
    match e {
        UpstreamError::Timeout { .. } | UpstreamError::Status { status: 504, .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        UpstreamError::Unreachable { .. }
        | UpstreamError::Status {
            status: 429 | 503, ..
        } => StatusCode::SERVICE_UNAVAILABLE,
        UpstreamError::Broken { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Status { .. }
        | UpstreamError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// The stable code of an upstream's failure.
fn upstream_code(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Timeout { .. } => "upstream_timeout",
        UpstreamError::Unreachable { .. } => "upstream_unavailable",
        UpstreamError::Broken { .. } => "upstream_connection_broken",
        UpstreamError::Tls { .. } => "upstream_tls_failed",
        UpstreamError::Status { .. } => "upstream_error",
        UpstreamError::BadResponse { .. } => "upstream_bad_response",
    }
}

/// A model's failure: 429 when its queue is full, the upstream's mapping, else 500.
impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Overloaded => Self::Overloaded,
            BackendError::Upstream(e) => Self::Upstream(e),
            e @ BackendError::Failed(_) => Self::internal(e),
        }
    }
}

/// The per-row path's failures.
impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::NotCached { misses, total } => Self::NotCached { misses, total },
            InferError::Backend(e) => e.into(),
            InferError::Internal(e) => Self::Internal(e),
        }
    }
}

/// A name that does not resolve: 404 naming what is served, or 400 naming the route.
impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Unknown { requested, served } => Self::UnknownModel { requested, served },
            ResolveError::WrongRoute { model, kind } => Self::WrongRoute {
                model,
                backend: kind,
            },
        }
    }
}

/// A KServe v2 request the codec refused is the client's error (400); a stored row that
/// does not decode is an internal one (500). The codec's errors about an upstream's
/// answer never pass here: the route turns them into [`UpstreamError::BadResponse`].
impl From<KserveError> for ApiError {
    fn from(e: KserveError) -> Self {
        match e {
            KserveError::CorruptRow(_) => Self::internal(e),
            e => Self::InvalidInference(e),
        }
    }
}

/// The dataset cache's failures: a bad name or resume token is the client's (400 naming
/// the parameter), an unknown dataset 404; anything else (an unreadable manifest, a shard
/// that cannot be recomputed, I/O) is logged and answered 500.
impl From<infercache_datasets::DatasetError> for ApiError {
    fn from(e: infercache_datasets::DatasetError) -> Self {
        use infercache_datasets::DatasetError;
        match e {
            DatasetError::NotFound { name } => Self::DatasetNotFound(name),
            e @ DatasetError::InvalidName { .. } => Self::invalid("name", e.to_string()),
            e @ DatasetError::BadToken { .. } => Self::invalid("resume", e.to_string()),
            e => Self::internal(e),
        }
    }
}

/// The message of an error response, carried on it (a response extension) so that a
/// protocol with its own error shape can render the same message.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %cause, "request failed with an internal error");
        }
        let message = self.to_string();
        let body = ErrorBody {
            error: ErrorDetail {
                message: message.clone(),
                kind: self.kind().to_owned(),
                param: self.param().map(str::to_owned),
                code: self.code().to_owned(),
                model: match &self {
                    Self::Upstream(e) => Some(e.model().to_owned()),
                    _ => None,
                },
                upstream_status: match &self {
                    Self::Upstream(e) => e.upstream_status(),
                    _ => None,
                },
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorMessage(message));
        let headers = response.headers_mut();
        match self {
            Self::TooManyRequests { .. }
            | Self::Overloaded
            | Self::BodyBudget { .. }
            | Self::TooManyStreams { .. }
            | Self::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::Upstream(e) if upstream_status(&e) == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// What stops the server from starting or serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cache could not be opened.
    #[error("opening the cache: {0}")]
    Engine(#[from] infercache_engine::EngineError),
    /// The model could not be loaded.
    #[error("loading the model: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Binding or serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration serves the built-in model, and none was given (or this build
    /// has none).
    #[error(transparent)]
    NoBuiltinModel(#[from] infercache_infer::NoBuiltinModel),
    /// The upstreams' HTTP client could not be built.
    #[error(transparent)]
    Upstream(#[from] infercache_upstream::ClientError),
    /// The Redis tier could not be set up (a bad URL, `--redis auto` could not start
    /// redis-server, an unreadable CA file, or a TLS server the CAs do not sign). Redis
    /// being down is not an error: the node serves without it.
    #[error("redis tier: {0}")]
    Redis(String),
    /// The dataset cache (`datasets_dir`) could not be opened.
    #[error("opening the dataset cache: {0}")]
    Datasets(#[source] infercache_datasets::DatasetError),
    /// The weight routes could not be set up (`weights_dir` holds no valid model, or
    /// this build has none).
    #[error("weight routes: {0}")]
    Weights(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_inference_request_is_400_and_a_corrupt_stored_row_is_500() {
        let refused = ApiError::from(KserveError::EmptyBatch);
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.code(), "invalid_inference_request");
        assert!(refused.to_string().contains("batch dimension"), "{refused}");
        let corrupt = ApiError::from(KserveError::CorruptRow("truncated"));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(corrupt.to_string(), "internal server error");
    }
}
