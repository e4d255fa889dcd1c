//! `POST /v1/embed`, compatible with Smally's API.
//!
//! Request: `{"text": "…", "normalize": false}`; an empty text, or one of only whitespace,
//! is 400 `empty_string`, as Smally answers. Response: `{"embedding", "model",
//! "tokens", "cached", "latency_ms"}`, with the `X-Cache*` headers as on every embedding
//! route.
//!
//! # Normalization and the cache
//!
//! The cache stores the model's output verbatim, and `normalize` is applied after the
//! lookup, on the way out. So one entry serves both settings, `normalize` is not part of
//! the key, and the answer is right whatever the model returns: `normalize: true` always
//! gives a unit vector, `normalize: false` always gives exactly what the model produced.
//! Storing normalized vectors instead would make `normalize: false` wrong for any model
//! whose raw output is not unit length.
//!
//! For all-MiniLM-L6-v2 the two settings give the same vector (to rounding): the model's
//! pipeline ends in a `Normalize` layer, so its output is already unit length.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use infercache_backend::{BUILTIN_MODEL, BackendKind, Inputs, vector};
use infercache_core::Digest;
use infercache_infer::{Model, RowRequest};
use serde::Deserialize;

use super::rendered::{Form, RenderedVectors};
use super::replay::{self, Ask, Written};
use super::{body, write};
use crate::auth::Caller;
use crate::cache_control::Directives;
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// `POST /v1/embed`.
pub async fn embed(
    State(state): State<AppState>,
    caller: Caller,
    directives: Directives,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body::bytes(body, state.limits())?;
    let ask = Ask {
        route: "/v1/embed",
        path: ("", None),
        tenant: &caller.tenant,
        header: None,
        body: &body,
    };
    if let Some(replayed) = replay::answer(&state, &ask, directives, start) {
        return Ok(replayed);
    }
    let epoch_changes = replay::epoch_changes(&state);
    let (text, normalize) = parse(&state, body.clone())?;
    // Smally's API names no model: it is the built-in one.
    let model = state
        .models()
        .resolve(BUILTIN_MODEL, &[BackendKind::Builtin])?;

    let inputs = Arc::new(Inputs::texts(vec![text]));
    let rows = state
        .rows(RowRequest {
            model: Arc::clone(&model),
            tenant: Arc::clone(&caller.tenant),
            inputs: Arc::clone(&inputs),
            control: directives.into(),
        })
        .await?;
    let mut headers = routes::cache_headers(&rows);
    if let Some(key) = rows.keys.first() {
        headers.push((HeaderName::from_static("x-cache-key"), key_value(key)));
    }
    let outcome = rows.outcome();
    let stored = rows.values[0]
        .as_ref()
        .ok_or_else(|| ApiError::internal("an embedding row is absent (a bug)"))?;
    let (vector, counted) = vector::split(stored, model.info().dims).map_err(ApiError::internal)?;
    let tokens = match counted {
        Some(n) => n,
        None => count_tokens(&model, first_text(&inputs)).await?,
    };
    let response = Answer {
        vector,
        kept: rows
            .keys
            .first()
            .zip(state.rendered())
            .map(|(key, table)| (table, key, stored.slice_ref(vector))),
        normalize,
        model: model.name(),
        tokens,
        cached: rows.hits() == 1,
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
    };
    let (written, latency_at) = response.write();
    state.metrics().request(&model, outcome, start.elapsed());
    let written = Bytes::from(written);
    let answer = routes::json_response(written.clone(), headers);
    let kept = Written {
        model: &model,
        epoch_changes,
        rows: &rows,
        headers: answer.headers(),
        body: &written,
        latency_at: Some(latency_at),
    };
    replay::keep(&state, &ask, directives, &kept);
    Ok(answer)
}

/// The request's text and `normalize`: read with [`Fast`] when it is the common,
/// well-formed kind, else field by field, which names whatever is wrong. Both give the
/// same answer for every body the fast reading takes (the tests compare them).
fn parse(state: &AppState, body: Bytes) -> Result<(String, bool), ApiError> {
    if let Some(parsed) = parse_fast(state, &body) {
        return Ok(parsed);
    }
    parse_slow(state, body)
}

/// A request with the fields of Smally's API, each of the type it must have; anything
/// else fails this reading.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fast {
    text: String,
    #[serde(default)]
    normalize: Option<bool>,
}

/// The request read with [`Fast`], when every value passes the checks the field-by-field
/// reading makes; `None` sends it that way.
fn parse_fast(state: &AppState, body: &[u8]) -> Option<(String, bool)> {
    let fast: Fast = serde_json::from_slice(body).ok()?;
    let text = fast.text;
    if text.trim().is_empty() || text.chars().count() > state.limits().max_input_chars {
        return None;
    }
    Some((text, fast.normalize.unwrap_or(false)))
}

/// The request, field by field.
fn parse_slow(state: &AppState, body: Bytes) -> Result<(String, bool), ApiError> {
    let mut obj = body::object(Ok(body), state.limits())?;
    body::only_fields(&obj, &["text", "normalize"], |_| {
        "supported fields are text, normalize".to_owned()
    })?;
    match obj.get("text") {
        None | Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "text",
                format!("expected a string, got {}", body::type_name(other)),
            ));
        }
    }
    let text = body::texts(&mut obj, "text", state.limits())?.remove(0);
    // As Smally answers: a text of only whitespace has nothing to embed.
    if text.trim().is_empty() {
        return Err(ApiError::BlankString {
            param: "text".to_owned(),
        });
    }
    let normalize = body::opt_bool(&mut obj, "normalize")?.unwrap_or(false);
    Ok((text, normalize))
}

/// The answer's fields, written by [`Answer::write`] in the order Smally's API has them:
/// `{"embedding", "model", "tokens", "cached", "latency_ms"}`.
struct Answer<'a> {
    /// The stored vector's bytes (little-endian `f32`s).
    vector: &'a [u8],
    /// The table of vectors kept rendered, the row's key and its vector as stored:
    /// the array is written through it when `normalize` is off.
    kept: Option<(&'a RenderedVectors, &'a Digest, Bytes)>,
    /// Scale it to unit length on the way out.
    normalize: bool,
    model: &'a str,
    tokens: usize,
    cached: bool,
    latency_ms: f64,
}

impl Answer<'_> {
    /// The body, written from the stored bytes without decoding them into a vector first,
    /// and where its `latency_ms` value starts (the body ends with it and `}`).
    /// `normalize` divides each value by the vector's norm, as `vector::l2_normalize` does.
    fn write(&self) -> (Vec<u8>, usize) {
        let divisor = self
            .normalize
            .then(|| norm(self.vector))
            .filter(|n| *n > 0.0);
        let mut out = Vec::with_capacity(
            128 + self.model.len() + self.vector.len() / 4 * write::MAX_F32_BYTES,
        );
        out.extend_from_slice(br#"{"embedding":"#);
        match (&self.kept, divisor) {
            (Some((table, key, vector)), None) => table.write(&mut out, key, vector, Form::Floats),
            _ => write::f32_array(&mut out, self.vector, divisor),
        }
        out.extend_from_slice(br#","model":"#);
        write::string(&mut out, self.model);
        out.extend_from_slice(br#","tokens":"#);
        write::uint(&mut out, self.tokens);
        out.extend_from_slice(br#","cached":"#);
        out.extend_from_slice(if self.cached { b"true" } else { b"false" });
        out.extend_from_slice(br#","latency_ms":"#);
        let latency_at = out.len();
        write::f64(&mut out, self.latency_ms);
        out.push(b'}');
        (out, latency_at)
    }
}

/// A key as a header value, its hex written in place.
fn key_value(key: &infercache_core::Digest) -> HeaderValue {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(key.0, &mut hex).expect("64 hex digits for 32 bytes");
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

/// The text of a one-text request.
fn first_text(inputs: &Inputs) -> &str {
    match inputs {
        Inputs::Texts { texts, .. } => texts.first().map_or("", String::as_str),
        _ => "",
    }
}

/// The Euclidean norm of little-endian `f32` bytes, summed in order as
/// `vector::l2_normalize` sums.
fn norm(bytes: &[u8]) -> f32 {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
}

/// Tokens in `text`, counted on the blocking pool when the text is long enough for the
/// tokenizer to stall an async worker.
async fn count_tokens(model: &Arc<Model>, text: &str) -> Result<usize, ApiError> {
    if text.len() < routes::BLOCKING_RENDER_WORK {
        return Ok(model.backend().count_tokens(text));
    }
    let (model, text) = (Arc::clone(model), text.to_owned());
    tokio::task::spawn_blocking(move || model.backend().count_tokens(&text))
        .await
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests;
