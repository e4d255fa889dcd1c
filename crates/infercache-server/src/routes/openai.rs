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
//! Every model takes the one per-row path (`infercache_infer::rows`): each input is a row,
//! keyed by its text (and `dimensions`), and only the inputs no tier holds are computed.
//! The built-in model embeds them in this process. When `model` names a `[[models]]`
//! entry with an `openai` or `tei` backend, they are sent, in one request, to
//! `{url}/v1/embeddings` (`{"model": upstream_name, "input": [...],
//! "encoding_format": "float"}`, plus `dimensions` when given) or to TEI's `{url}/embed`
//! (`{"inputs": [...]}`). Vectors are stored as little-endian `f32` bytes. `usage` counts
//! zero tokens: infercache has no tokenizer for a remote model.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use infercache_backend::{BackendKind, Inputs, vector};
use infercache_infer::{Model, RowRequest, Rows};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{CacheSummary, body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{cache_control, routes};

/// The kinds of model this route serves: embedders.
const KINDS: &[BackendKind] = &[BackendKind::Builtin, BackendKind::OpenAi, BackendKind::Tei];

const FIELDS: &[&str] = &["model", "input", "encoding_format", "user"];

const UPSTREAM_FIELDS: &[&str] = &["model", "input", "encoding_format", "user", "dimensions"];

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

/// A request, validated.
struct Parsed {
    model: Arc<Model>,
    texts: Vec<String>,
    dimensions: Option<u64>,
    encoding: Encoding,
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
    let obj = body::object(body, state.limits())?;
    let named = match obj.get("model") {
        Some(Value::String(name)) => state.models().get(name).cloned(),
        _ => None,
    };
    let parsed = match named {
        Some(m) if !m.kind().in_process() => {
            // 400 naming its route for a model of another protocol.
            let m = state.models().resolve(m.name(), KINDS)?;
            parse_upstream(&state, obj, m)?
        }
        named => parse_in_process(&state, obj, named.as_deref())?,
    };
    let Parsed {
        model,
        texts,
        dimensions,
        encoding,
    } = parsed;

    // Held until the response is rendered: bounds the memory of vectors and JSON in flight.
    let _room = state.reserve_items(texts.len())?;
    let inputs = Arc::new(Inputs::Texts { texts, dimensions });
    let rows = state
        .rows(RowRequest {
            model: Arc::clone(&model),
            tenant: caller.tenant,
            inputs: Arc::clone(&inputs),
            control: directives.into(),
        })
        .await?;
    let headers = routes::cache_headers(&rows);
    let outcome = rows.outcome();
    // Rendering writes the vectors and, for a model with a tokenizer here, counts tokens
    // (proportional to the input).
    let mut work = rows
        .values
        .iter()
        .flatten()
        .map(|v| v.len() / 4)
        .sum::<usize>();
    if model.kind().in_process() {
        work += texts_of(&inputs).iter().map(String::len).sum::<usize>();
    }
    let render_model = Arc::clone(&model);
    let body = routes::render(work, move || render(&render_model, &inputs, rows, encoding)).await?;
    state.metrics().request(&model, outcome, start.elapsed());
    Ok(routes::json_response(body, headers))
}

/// The fields of a request for the built-in model (or for a model not served, which
/// answers 404 once the body is known to be well formed).
fn parse_in_process(
    state: &AppState,
    mut obj: Map<String, Value>,
    named: Option<&Model>,
) -> Result<Parsed, ApiError> {
    body::only_fields(&obj, FIELDS, |field| match field {
        "dimensions" => match named.and_then(|m| m.info().dims) {
            Some(dims) => format!(
                "this server returns the model's native {dims} dimensions; remove `dimensions`"
            ),
            None => {
                "this server returns the model's native dimensions; remove `dimensions`".to_owned()
            }
        },
        _ => format!("supported fields are {}", FIELDS.join(", ")),
    })?;
    let name = body::opt_str(&mut obj, "model")?.ok_or(ApiError::MissingField("model"))?;
    let texts = body::texts(&mut obj, "input", state.limits())?;
    let encoding = encoding(&mut obj)?;
    body::opt_str(&mut obj, "user")?;
    let model = state.models().resolve(&name, KINDS)?;
    Ok(Parsed {
        model,
        texts,
        dimensions: None,
        encoding,
    })
}

/// The fields of a request for a model behind an OpenAI-compatible or TEI upstream.
fn parse_upstream(
    state: &AppState,
    mut obj: Map<String, Value>,
    model: Arc<Model>,
) -> Result<Parsed, ApiError> {
    body::only_fields(&obj, UPSTREAM_FIELDS, |_| {
        format!("supported fields are {}", UPSTREAM_FIELDS.join(", "))
    })?;
    obj.remove("model");
    let texts = body::texts(&mut obj, "input", state.limits())?;
    let encoding = encoding(&mut obj)?;
    body::opt_str(&mut obj, "user")?;
    let dimensions = match obj.remove("dimensions") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|d| d > 0) => n.as_u64(),
        Some(_) => {
            return Err(ApiError::invalid(
                "dimensions",
                "expected a positive whole number",
            ));
        }
    };
    if dimensions.is_some() && model.kind() == BackendKind::Tei {
        return Err(ApiError::UnsupportedField {
            field: "dimensions".to_owned(),
            hint: format!(
                "model `{}` is served by TEI, which returns its native dimensions; remove `dimensions`",
                model.name()
            ),
        });
    }
    Ok(Parsed {
        model,
        texts,
        dimensions,
        encoding,
    })
}

fn texts_of(inputs: &Inputs) -> &[String] {
    match inputs {
        Inputs::Texts { texts, .. } => texts,
        _ => &[],
    }
}

/// The response body: OpenAI's shape from the stored vectors, tokens counted where the
/// model's tokenizer runs here (0 for a model behind an upstream).
fn render(
    model: &Model,
    inputs: &Inputs,
    rows: Rows,
    encoding: Encoding,
) -> Result<EmbeddingsResponse, ApiError> {
    let dims = model.info().dims;
    let tokens: usize = texts_of(inputs)
        .iter()
        .map(|t| model.backend().count_tokens(t))
        .sum();
    let cache = CacheSummary::of(&rows);
    let data = rows
        .values
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = v.ok_or_else(|| ApiError::internal("an embedding row is absent (a bug)"))?;
            let embedding = match encoding {
                Encoding::Float => {
                    Embedding::Float(vector::decode(&v, dims).map_err(ApiError::internal)?)
                }
                Encoding::Base64 => {
                    vector::check(&v, dims).map_err(ApiError::internal)?;
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
        model: model.name().to_owned(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
        cache,
    })
}

fn encoding(obj: &mut Map<String, Value>) -> Result<Encoding, ApiError> {
    match body::opt_str(obj, "encoding_format")?.as_deref() {
        None | Some("float") => Ok(Encoding::Float),
        Some("base64") => Ok(Encoding::Base64),
        Some(other) => Err(ApiError::invalid(
            "encoding_format",
            format!("expected \"float\" or \"base64\", got {other:?}"),
        )),
    }
}
