//! The weight routes' errors and their one mapping to HTTP: a status, a stable `code` and
//! the main server's body shape, `{"error": {"message", "type", "param", "code"}}`.
//! Messages name the model and chunk, never a path on the server.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a weight route refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsApiError {
    /// No model of that name.
    #[error("model {0:?} is not served here (GET /v1/weights lists the models)")]
    ModelNotFound(String),
    /// The model has no chunk of that name.
    #[error("model {model:?} has no chunk {chunk:?} (its manifest lists them)")]
    ChunkNotFound {
        /// The model.
        model: String,
        /// The chunk asked for.
        chunk: String,
    },
    /// The model has no file of that name.
    #[error("model {model:?} has no file {file:?} (config.json and tokenizer.json are served)")]
    FileNotFound {
        /// The model.
        model: String,
        /// The file asked for.
        file: String,
    },
    /// No route matches.
    #[error("no route {0}")]
    RouteNotFound(String),
    /// A malformed `Range` header.
    #[error("{0}")]
    InvalidRange(String),
    /// A range past the end of the body.
    #[error("the range starts past the end of the {len}-byte body")]
    RangeNotSatisfiable {
        /// The body's length.
        len: u64,
    },
    /// `If-Match` names another version of the chunk.
    #[error("the chunk's current version is {etag}, not the one If-Match names")]
    PreconditionFailed {
        /// The current ETag.
        etag: String,
    },
    /// A malformed request body.
    #[error("{0}")]
    InvalidRequest(String),
    /// The server's copy of a chunk failed its size or digest check; it is not served.
    #[error("the server's copy of {model}/{chunk} is damaged and is not served")]
    Corrupt {
        /// The model.
        model: String,
        /// The chunk.
        chunk: String,
    },
    /// The server could not read a chunk.
    #[error("the server could not read {model}/{chunk}")]
    Storage {
        /// The model.
        model: String,
        /// The chunk.
        chunk: String,
    },
    /// Reloading the manifests failed; the models already loaded are still served.
    #[error(
        "reloading the chunk directories failed ({0}); the models loaded before are still served"
    )]
    Reload(String),
}

impl WeightsApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotFound(_)
            | Self::ChunkNotFound { .. }
            | Self::FileNotFound { .. }
            | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidRange(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::Corrupt { .. } | Self::Storage { .. } | Self::Reload(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ModelNotFound(_) => "model_not_found",
            Self::ChunkNotFound { .. } => "chunk_not_found",
            Self::FileNotFound { .. } => "file_not_found",
            Self::RouteNotFound(_) => "not_found",
            Self::InvalidRange(_) => "invalid_range",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Corrupt { .. } => "chunk_corrupt",
            Self::Storage { .. } => "storage_error",
            Self::Reload(_) => "reload_failed",
        }
    }

    fn kind(&self) -> &'static str {
        if self.status().is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRange(_) | Self::RangeNotSatisfiable { .. } => Some("Range"),
            Self::PreconditionFailed { .. } => Some("If-Match"),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl IntoResponse for WeightsApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Body {
            error: Detail {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        };
        let json = serde_json::to_vec(&body).expect("an error body always serializes");
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], json).into_response();
        match &self {
            Self::RangeNotSatisfiable { len } => {
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII"),
                );
            }
            Self::PreconditionFailed { etag } => {
                if let Ok(v) = HeaderValue::from_str(etag) {
                    resp.headers_mut().insert(header::ETAG, v);
                }
            }
            _ => {}
        }
        resp
    }
}
