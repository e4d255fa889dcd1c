//! `POST /v1/embeddings`, compatible with OpenAI's embeddings API and its clients.
//!
//! Request: `model` (required), `input` (a string or an array of strings),
//! `encoding_format` (`float`, the default, or `base64`: the little-endian `f32` bytes),
//! `user` (accepted, ignored). Any other field, `dimensions` included, is refused with a
//! 400 naming it.
//!
//! Response: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//! "model", "usage": {"prompt_tokens", "total_tokens"}}` plus a `cache` object
//! (`hits`, `misses`, `coalesced`, `keys`) that OpenAI clients ignore; the same counts are
//! in the `X-Cache*` headers.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde::Serialize;

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::metrics::Rejection;
use crate::service::{self, Embedded};
use crate::state::AppState;
use crate::{cache_control, routes};

const FIELDS: &[&str] = &["model", "input", "encoding_format", "user"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Usage,
    cache: CacheSummary,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The cache's part of a response body.
#[derive(Debug, Serialize)]
pub struct CacheSummary {
    /// Inputs a tier served.
    pub hits: usize,
    /// Inputs computed.
    pub misses: usize,
    /// Of the misses, those computed by a concurrent request.
    pub coalesced: usize,
    /// Each input's key (hex), for `DELETE /v1/cache/entries/{key}`.
    pub keys: Vec<String>,
}

impl CacheSummary {
    /// The summary of `e`.
    pub fn of(e: &Embedded) -> Self {
        Self {
            hits: e.hit_count(),
            misses: e.miss_count(),
            coalesced: e.coalesced,
            keys: e.keys.iter().map(|k| k.to_hex()).collect(),
        }
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let directives = cache_control::parse(&headers)?;
    let mut obj = body::object(body, state.limits())?;
    body::only_fields(&obj, FIELDS, |field| match field {
        "dimensions" => format!(
            "this server returns the model's native {} dimensions; remove `dimensions`",
            state.model().dims
        ),
        _ => format!("supported fields are {}", FIELDS.join(", ")),
    })?;
    let model = body::opt_str(&mut obj, "model")?.ok_or(ApiError::MissingField("model"))?;
    let texts = body::texts(&mut obj, "input", state.limits())?;
    let encoding = match body::opt_str(&mut obj, "encoding_format")?.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("expected \"float\" or \"base64\", got {other:?}"),
            ));
        }
    };
    body::opt_str(&mut obj, "user")?;
    if !state.model().answers_to(&model) {
        return Err(ApiError::UnknownModel {
            requested: model,
            served: state.model().id.clone(),
        });
    }

    // Held until the response is rendered: bounds the memory of vectors and JSON in flight.
    let _room = state.reserve_items(texts.len()).ok_or_else(|| {
        state.metrics().rejected(Rejection::Overloaded);
        ApiError::Overloaded
    })?;
    let embedded = service::embed_texts(&state, &caller.tenant, &texts, &directives).await?;
    let headers = routes::cache_headers(&embedded);
    let outcome = embedded.outcome();
    // Rendering counts tokens (proportional to the input) and writes the vectors.
    let work = texts.len() * state.model().dims + texts.iter().map(String::len).sum::<usize>();
    let render_state = state.clone();
    let body = routes::render(work, move || {
        render(&render_state, &texts, embedded, encoding)
    })
    .await?;
    state.metrics().request(outcome, start.elapsed());
    Ok(routes::json_response(body, headers))
}

fn render(
    state: &AppState,
    texts: &[String],
    embedded: Embedded,
    encoding: Encoding,
) -> Result<EmbeddingsResponse, ApiError> {
    let dims = state.model().dims;
    let tokens: usize = texts.iter().map(|t| state.embedder().count_tokens(t)).sum();
    let cache = CacheSummary::of(&embedded);
    let data = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match encoding {
                Encoding::Float => Embedding::Float(service::decode(v, dims)?),
                Encoding::Base64 => {
                    service::check_len(v, dims)?;
                    Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(v))
                }
            };
            Ok(Item {
                object: "embedding",
                index,
                embedding,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: state.model().id.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
        cache,
    })
}
