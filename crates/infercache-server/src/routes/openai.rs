//! `POST /v1/embeddings`, compatible with OpenAI's embeddings API and its clients.
//!
//! Request: `model` (required), `input` (a string or an array of strings),
//! `encoding_format` (`float`, the default, or `base64`: the little-endian `f32` bytes),
//! `user` (accepted, ignored). Any other field is refused with a 400 naming it;
//! `dimensions` is accepted only for a model with an `openai` upstream.
//!
//! Response: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//! "model", "usage": {"prompt_tokens", "total_tokens"}}` plus a `cache` object
//! (`hits`, `misses`, `coalesced`, `keys`) that OpenAI clients ignore; the same counts are
//! in the `X-Cache*` headers.
//!
//! # Upstream models
//!
//! When `model` names a `[[models]]` entry with an `openai` or `tei` backend, each input
//! is a row of the per-row path ([`crate::upstream::rows`]): keyed by its text (and
//! `dimensions`), and only the inputs no tier holds are sent, in one request, to
//! `{url}/v1/embeddings` (`{"model": upstream_name, "input": [...],
//! "encoding_format": "float"}`, plus `dimensions` when given) or to TEI's `{url}/embed`
//! (`{"inputs": [...]}`). Vectors are stored as little-endian `f32` bytes. `usage` counts
//! zero tokens: infercache has no tokenizer for a remote model.

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
use crate::service::{self, Embedded};
use crate::state::AppState;
use crate::upstream::{
    Backend, CanonicalInput, RemoteModel, RowRequest, Rows, UpstreamError, fetch_rows,
};
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
    /// Inputs served stale because the upstream failed (upstream models only).
    #[serde(skip_serializing_if = "is_zero")]
    pub stale: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl CacheSummary {
    /// The summary of `e`.
    pub fn of(e: &Embedded) -> Self {
        Self {
            hits: e.hit_count(),
            misses: e.miss_count(),
            coalesced: e.coalesced,
            keys: e.keys.iter().map(|k| k.to_hex()).collect(),
            stale: 0,
        }
    }

    /// The summary of an upstream model's rows.
    pub fn of_rows(r: &Rows) -> Self {
        Self {
            hits: r.hits(),
            misses: r.misses(),
            coalesced: r.coalesced(),
            keys: r.keys.iter().map(|k| k.to_hex()).collect(),
            stale: r.stale(),
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
    if let Some(serde_json::Value::String(name)) = obj.get("model")
        && state.models().remote(name).is_some()
    {
        let model =
            state
                .models()
                .resolve(name, &[Backend::OpenAi, Backend::Tei], &state.model().id)?;
        return remote(state, caller, directives, obj, model).await;
    }
    body::only_fields(&obj, FIELDS, |field| match field {
        "dimensions" => format!(
            "this server returns the model's native {} dimensions; remove `dimensions`",
            state.model().dims
        ),
        _ => format!("supported fields are {}", FIELDS.join(", ")),
    })?;
    let model = body::opt_str(&mut obj, "model")?.ok_or(ApiError::MissingField("model"))?;
    let texts = body::texts(&mut obj, "input", state.limits())?;
    let encoding = encoding(&mut obj)?;
    body::opt_str(&mut obj, "user")?;
    if !state.models().serves_builtin() || !state.model().answers_to(&model) {
        return Err(state.models().unknown(&model, &state.model().id));
    }

    // Held until the response is rendered: bounds the memory of vectors and JSON in flight.
    let _room = state.reserve_items(texts.len())?;
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

const REMOTE_FIELDS: &[&str] = &["model", "input", "encoding_format", "user", "dimensions"];

/// `POST /v1/embeddings` for a model behind an OpenAI-compatible or TEI upstream.
async fn remote(
    state: AppState,
    caller: Caller,
    directives: cache_control::Directives,
    mut obj: serde_json::Map<String, serde_json::Value>,
    model: std::sync::Arc<RemoteModel>,
) -> Result<Response, ApiError> {
    let backend = model.config().backend;
    body::only_fields(&obj, REMOTE_FIELDS, |_| {
        format!("supported fields are {}", REMOTE_FIELDS.join(", "))
    })?;
    obj.remove("model");
    let texts = body::texts(&mut obj, "input", state.limits())?;
    let encoding = encoding(&mut obj)?;
    body::opt_str(&mut obj, "user")?;
    let dimensions = match obj.remove("dimensions") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|d| d > 0) => n.as_u64(),
        Some(_) => {
            return Err(ApiError::invalid(
                "dimensions",
                "expected a positive whole number",
            ));
        }
    };
    if dimensions.is_some() && backend == Backend::Tei {
        return Err(ApiError::UnsupportedField {
            field: "dimensions".to_owned(),
            hint: format!(
                "model `{}` is served by TEI, which returns its native dimensions; remove `dimensions`",
                model.name()
            ),
        });
    }
    let mut protocol = serde_json::Map::new();
    if let Some(d) = dimensions {
        protocol.insert("dimensions".to_owned(), d.into());
    }
    let params = model.key_params(None, protocol)?;
    let _room = state.reserve_items(texts.len())?;

    let request = RowRequest {
        model: std::sync::Arc::clone(&model),
        tenant: caller.tenant,
        rows: texts.iter().map(|t| CanonicalInput::text(t)).collect(),
        params,
        control: directives.into(),
    };
    let texts = std::sync::Arc::new(texts);
    let fetch_model = std::sync::Arc::clone(&model);
    let rows = fetch_rows(&state, request, move |indices: Vec<usize>| {
        let model = std::sync::Arc::clone(&fetch_model);
        let batch: Vec<String> = indices.iter().map(|&i| texts[i].clone()).collect();
        async move { embed_upstream(&model, batch, dimensions).await }
    })
    .await?;

    let headers = rows.headers();
    let work = rows
        .values
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| v.len() / 4))
        .sum::<usize>();
    let name = model.name().to_owned();
    let body = routes::render(work, move || {
        let cache = CacheSummary::of_rows(&rows);
        let data = rows
            .values
            .into_iter()
            .enumerate()
            .map(|(index, v)| {
                let v =
                    v.ok_or_else(|| ApiError::internal("an embedding row is absent (a bug)"))?;
                if v.len() % 4 != 0 {
                    return Err(ApiError::internal(format!(
                        "a cached embedding has {} bytes, not a multiple of 4 (a bug)",
                        v.len()
                    )));
                }
                let embedding = match encoding {
                    Encoding::Float => Embedding::Float(service::decode(&v, v.len() / 4)?),
                    Encoding::Base64 => {
                        Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(&v))
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
            model: name,
            usage: Usage {
                prompt_tokens: 0,
                total_tokens: 0,
            },
            cache,
        })
    })
    .await?;
    Ok(routes::json_response(body, headers))
}

/// Embeds `texts` with the model's upstream: little-endian `f32` bytes per text, in order.
async fn embed_upstream(
    model: &RemoteModel,
    texts: Vec<String>,
    dimensions: Option<u64>,
) -> Result<Vec<Bytes>, UpstreamError> {
    let upstream = model.upstream();
    let bad = |reason: String| UpstreamError::bad_response(model.name(), reason);
    let n = texts.len();
    if model.config().backend == Backend::Tei {
        let reply = upstream
            .post_json("/embed", &serde_json::json!({ "inputs": texts }))
            .await?;
        let vectors: Vec<Vec<f32>> = serde_json::from_slice(&reply.body)
            .map_err(|e| bad(format!("expected an array of vectors: {e}")))?;
        return Ok(vectors.iter().map(|v| service::encode(v)).collect());
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        data: Vec<Datum>,
    }
    #[derive(serde::Deserialize)]
    struct Datum {
        index: usize,
        embedding: Vec<f32>,
    }
    let mut request = serde_json::json!({
        "model": model.config().upstream_name,
        "input": texts,
        "encoding_format": "float",
    });
    if let Some(d) = dimensions {
        request["dimensions"] = d.into();
    }
    let reply = upstream.post_json("/v1/embeddings", &request).await?;
    let reply: Reply = serde_json::from_slice(&reply.body)
        .map_err(|e| bad(format!("expected an OpenAI embeddings list: {e}")))?;
    let mut out: Vec<Option<Bytes>> = vec![None; n];
    for d in reply.data {
        match out.get_mut(d.index) {
            Some(slot @ None) => *slot = Some(service::encode(&d.embedding)),
            _ => {
                return Err(bad(format!(
                    "index {} is out of range or repeated",
                    d.index
                )));
            }
        }
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad(format!("fewer than {n} embeddings")))
}

fn encoding(obj: &mut serde_json::Map<String, serde_json::Value>) -> Result<Encoding, ApiError> {
    match body::opt_str(obj, "encoding_format")?.as_deref() {
        None | Some("float") => Ok(Encoding::Float),
        Some("base64") => Ok(Encoding::Base64),
        Some(other) => Err(ApiError::invalid(
            "encoding_format",
            format!("expected \"float\" or \"base64\", got {other:?}"),
        )),
    }
}
