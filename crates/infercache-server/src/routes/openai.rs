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
//!
//! # The hit path
//!
//! A request with only the usual fields, well formed, is read in one typed pass; any other
//! is read field by field, which names what is wrong (both read every body the first
//! takes the same way). The answer is written from the stored bytes (`routes/write.rs`):
//! base64 is the stored bytes encoded and floats are formatted, straight into the body,
//! or either is copied from the text kept for a hot entry (`routes/rendered.rs`); and
//! `usage` adds the token counts the built-in model stored with its vectors, so a hit
//! runs no tokenizer. The same request bytes again, once their answer was kept, are
//! answered from it without any of this (`routes/replay.rs`), while their rows are fresh
//! in memory and hold the same bytes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use infercache_backend::{BackendKind, Inputs, vector};
use infercache_infer::{Model, RowRequest, Rows};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::rendered::{Form, RenderedVectors};
use super::replay::{self, Ask, Written};
use super::{body, write};
use crate::auth::Caller;
use crate::cache_control::Directives;
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// The kinds of model this route serves: embedders.
pub(crate) const KINDS: &[BackendKind] =
    &[BackendKind::Builtin, BackendKind::OpenAi, BackendKind::Tei];

const FIELDS: &[&str] = &["model", "input", "encoding_format", "user"];

const UPSTREAM_FIELDS: &[&str] = &["model", "input", "encoding_format", "user", "dimensions"];

/// A request, validated.
struct Parsed {
    model: Arc<Model>,
    texts: Vec<String>,
    dimensions: Option<u64>,
    /// `encoding_format`: `float` or `base64`.
    encoding: Form,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    directives: Directives,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body::bytes(body, state.limits())?;
    let ask = Ask {
        route: "/v1/embeddings",
        path: ("", None),
        tenant: &caller.tenant,
        header: None,
        body: &body,
    };
    if let Some(replayed) = replay::answer(&state, &ask, directives, start) {
        return Ok(replayed);
    }
    let epoch_changes = replay::epoch_changes(&state);
    let parsed = parse(&state, body.clone())?;
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
            tenant: Arc::clone(&caller.tenant),
            inputs: Arc::clone(&inputs),
            control: directives.into(),
        })
        .await?;
    let headers = routes::cache_headers(&rows);
    let outcome = rows.outcome();
    // Rendering writes the vectors and, for a model with a tokenizer here whose rows came
    // without their token counts, tokenizes (proportional to the input).
    let mut work = rows
        .values
        .iter()
        .flatten()
        .map(|v| v.len() / 4)
        .sum::<usize>();
    let dims = model.info().dims;
    if model.kind().in_process() {
        work += texts_of(&inputs)
            .iter()
            .zip(&rows.values)
            .filter(|(_, v)| v.as_ref().is_none_or(|v| counted(v, dims).is_none()))
            .map(|(t, _)| t.len())
            .sum::<usize>();
    }
    let render_model = Arc::clone(&model);
    let rows = Arc::new(rows);
    let rendered = if work < routes::BLOCKING_RENDER_WORK {
        render(state.rendered(), &render_model, &inputs, &rows, encoding)?
    } else {
        let state = state.clone();
        let rows = Arc::clone(&rows);
        tokio::task::spawn_blocking(move || {
            render(state.rendered(), &render_model, &inputs, &rows, encoding)
        })
        .await
        .map_err(ApiError::internal)??
    };
    state.metrics().request(&model, outcome, start.elapsed());
    let rendered = Bytes::from(rendered);
    let response = routes::json_response(rendered.clone(), headers);
    let written = Written {
        model: &model,
        epoch_changes,
        rows: &rows,
        headers: response.headers(),
        body: &rendered,
        latency_at: None,
    };
    replay::keep(&state, &ask, directives, &written);
    Ok(response)
}

/// The request: read with [`Fast`] when it is the common, well-formed kind, else field by
/// field, which names whatever is wrong. Both give the same [`Parsed`] for every body the
/// fast reading takes (the tests compare them on random bodies).
fn parse(state: &AppState, body: Bytes) -> Result<Parsed, ApiError> {
    if let Some(parsed) = parse_fast(state, &body) {
        return Ok(parsed);
    }
    parse_slow(state, body)
}

/// The request, field by field.
fn parse_slow(state: &AppState, body: Bytes) -> Result<Parsed, ApiError> {
    let obj = body::object(Ok(body), state.limits())?;
    let named = match obj.get("model") {
        Some(Value::String(name)) => state.models().get(name).cloned(),
        _ => None,
    };
    match named {
        Some(m) if !m.kind().in_process() => {
            // 400 naming its route for a model of another protocol.
            let m = state.models().resolve(m.name(), KINDS)?;
            parse_upstream(state, obj, m)
        }
        named => parse_in_process(state, obj, named.as_deref()),
    }
}

/// A request with only the fields every client sends, each of the type it must have.
/// Anything else (another field, a wrong type, a repeated field) fails this reading and
/// goes field by field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fast<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    input: FastInput,
    #[serde(default, borrow)]
    encoding_format: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    #[expect(dead_code, reason = "accepted and ignored, as OpenAI's API documents")]
    user: Option<Cow<'a, str>>,
}

/// `input`: a string or an array of strings.
struct FastInput(Vec<String>);

impl<'de> Deserialize<'de> for FastInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FastInput;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FastInput, E> {
                Ok(FastInput(vec![s.to_owned()]))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<FastInput, E> {
                Ok(FastInput(vec![s]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FastInput, A::Error> {
                let mut texts = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(FastInput(texts))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The request read with [`Fast`], when that reading takes it and every value passes
/// the checks the field-by-field reading makes; `None` sends it that way.
fn parse_fast(state: &AppState, body: &[u8]) -> Option<Parsed> {
    let fast: Fast<'_> = serde_json::from_slice(body).ok()?;
    let limits = state.limits();
    let texts = fast.input.0;
    let valid = |t: &String| !t.is_empty() && t.chars().count() <= limits.max_input_chars;
    if texts.is_empty() || texts.len() > limits.max_items || !texts.iter().all(valid) {
        return None;
    }
    let encoding = match fast.encoding_format.as_deref() {
        None | Some("float") => Form::Floats,
        Some("base64") => Form::Base64,
        Some(_) => return None,
    };
    // Resolved as the field-by-field reading resolves it; a model not served, or of
    // another protocol, is answered there.
    let model = state.models().get(&fast.model)?;
    let model = state.models().resolve(model.name(), KINDS).ok()?;
    Some(Parsed {
        model,
        texts,
        dimensions: None,
        encoding,
    })
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

/// A stored vector's token count, when it was stored with one.
fn counted(value: &[u8], dims: Option<usize>) -> Option<usize> {
    vector::split(value, dims)
        .ok()
        .and_then(|(_, tokens)| tokens)
}

/// The response body: OpenAI's shape, written from the stored vectors without decoding
/// them ([`write`]; vectors through `rendered`, which keeps the text of hot entries).
/// Tokens are the counts stored with the rows, else counted here where the
/// model's tokenizer runs (0 for a model behind an upstream).
fn render(
    rendered: Option<&RenderedVectors>,
    model: &Model,
    inputs: &Inputs,
    rows: &Rows,
    encoding: Form,
) -> Result<Vec<u8>, ApiError> {
    let dims = model.info().dims;
    let texts = texts_of(inputs);
    // First the checks and the token count, then the writing, each from the stored bytes.
    let mut tokens = 0;
    let mut capacity = 256 + model.name().len();
    for (i, v) in rows.values.iter().enumerate() {
        let v = v
            .as_deref()
            .ok_or_else(|| ApiError::internal("an embedding row is absent (a bug)"))?;
        let (vector, counted) = vector::split(v, dims).map_err(ApiError::internal)?;
        tokens += match counted {
            Some(n) => n,
            None => texts.get(i).map_or(0, |t| model.backend().count_tokens(t)),
        };
        capacity += 64 + write::KEY_BYTES;
        capacity += match encoding {
            Form::Floats => vector.len() / 4 * write::MAX_F32_BYTES,
            Form::Base64 => vector.len().div_ceil(3) * 4,
        };
    }
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (index, v) in rows.values.iter().flatten().enumerate() {
        let (vector, _) = vector::split(v, dims).map_err(ApiError::internal)?;
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"object":"embedding","index":"#);
        write::uint(&mut out, index);
        out.extend_from_slice(br#","embedding":"#);
        match (rendered, rows.keys.get(index)) {
            (Some(table), Some(key)) => {
                table.write(&mut out, key, &v.slice_ref(vector), encoding);
            }
            _ => encoding.write(&mut out, vector),
        }
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"model":"#);
    write::string(&mut out, model.name());
    out.extend_from_slice(br#","usage":{"prompt_tokens":"#);
    write::uint(&mut out, tokens);
    out.extend_from_slice(br#","total_tokens":"#);
    write::uint(&mut out, tokens);
    out.extend_from_slice(b"},");
    write::cache_summary(&mut out, rows);
    out.push(b'}');
    Ok(out)
}

fn encoding(obj: &mut Map<String, Value>) -> Result<Form, ApiError> {
    match body::opt_str(obj, "encoding_format")?.as_deref() {
        None | Some("float") => Ok(Form::Floats),
        Some("base64") => Ok(Form::Base64),
        Some(other) => Err(ApiError::invalid(
            "encoding_format",
            format!("expected \"float\" or \"base64\", got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests;
