//! `POST /v2/models/{name}/infer` and `POST /v2/models/{name}/versions/{version}/infer`:
//! KServe v2 / Triton inference, for a model with a `kserve-v2` upstream, cached per row.
//!
//! The body is a KServe v2 inference request, JSON tensors or Triton's binary tensor
//! extension (the JSON part's length in `Inference-Header-Content-Length`), as
//! `tritonclient` sends it. The answer has the same shape as the upstream's, each output
//! as JSON or binary as the request asks (`binary_data_output`, an output's
//! `binary_data`), with the `X-Cache*` headers.
//!
//! # From a request to rows
//!
//! The request is parsed and split along dimension 0 ([`crate::kserve`]): every input
//! must have the same batch size, at most `max_items` rows. Each row is keyed by the
//! model's name, version and digest, the row itself ([`Row::canonical_input`]: every
//! input's name, datatype, row shape, parameters and bytes, the same whether it came as
//! JSON or binary), and the output-affecting parameters: the request `parameters` the
//! model lists in `params`, the requested outputs with their parameters
//! ([`OutputSelection::key_bytes`](crate::kserve::OutputSelection::key_bytes);
//! `binary_data` is presentation and left out) and the stored row format's version.
//! The output selection is forwarded upstream rather than
//! widened to every output: the upstream computes and sends only what was asked for,
//! and an output's own parameters (Triton's `classification`) change what it holds. The
//! cost is that a request for a subset of the outputs does not share entries with one
//! for all of them.
//!
//! Only the rows no tier holds go upstream, each once, in one request (or chunks of
//! `max_batch`) to `POST {url}/v2/models/{upstream_name}/infer`, as binary tensors with
//! binary outputs asked for, carrying every request parameter, keyed or not. The answer
//! is split into one stored row per input row ([`RowOutput::encode`](kserve::RowOutput::encode)); an answer whose
//! outputs are not batched by the rows sent, or that lacks a requested output, is the
//! upstream's error (502 `upstream_bad_response`) and nothing of it is stored.
//!
//! # Versions
//!
//! A model is served at the one version its `version` names. A path with another
//! version is 404; the versioned and unversioned paths share entries. The upstream is
//! always called at its unversioned path, so both reach the same upstream model.
//!
//! # Errors
//!
//! A request the codec refuses is 400 `invalid_inference_request`, naming the tensor and
//! the field at fault; a body past `max_body_bytes` is 413. A stored row that does not
//! decode (the engine checks every entry's checksum, so this is a bug, not a bad disk)
//! is 500; the row format's version is part of the key, so a format change never reads
//! old rows.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use infercache_backend::{BackendKind, Inputs, UpstreamError};
use infercache_infer::{CacheControl, RowRequest};
use infercache_kserve::{
    self as kserve, Encoded, HEADER_LENGTH, InferRequest, KserveError, OutputSelection,
    ResponseMeta, Row, Shift, leading_dimension,
};

use super::body;
use super::replay::{self, Ask, Written};
use crate::auth::Caller;
use crate::cache_control::Directives;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{cache_control, routes};

/// The request parameters of Triton's sequence batcher: a request carrying one belongs to
/// a stateful sequence.
const SEQUENCE_PARAMETERS: [&str; 3] = ["sequence_id", "sequence_start", "sequence_end"];

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    headers: Headers,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let name = routes::path_name(name)?;
    serve(&state, caller, &name, None, headers, body, start).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: Headers,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let Path((name, version)) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    serve(&state, caller, &name, Some(&version), headers, body, start).await
}

/// The request headers the route reads, taken from the request without copying the
/// others: the `Cache-Control` directives (refused when malformed, in their turn) and
/// `Inference-Header-Content-Length`, moved out of the request (nothing after this
/// extractor reads it; a clone of a header parsed into its own buffer allocates).
#[derive(Debug)]
pub struct Headers {
    directives: Result<Directives, ApiError>,
    header_length: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Headers {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            directives: cache_control::parse(&parts.headers),
            header_length: parts.headers.remove(HEADER_LENGTH),
        })
    }
}

async fn serve(
    state: &AppState,
    caller: Caller,
    name: &str,
    version: Option<&str>,
    headers: Headers,
    body: Result<Bytes, BytesRejection>,
    start: Instant,
) -> Result<Response, ApiError> {
    let directives = headers.directives?;
    let model = state.models().resolve(name, &[BackendKind::KServeV2])?;
    super::models::check_version(name, version, &model.info().version)?;
    let body = body::bytes(body, state.limits())?;
    let ask = Ask {
        route: "/v2/models/{name}/infer",
        path: (name, version),
        tenant: &caller.tenant,
        header: headers.header_length.as_ref(),
        body: &body,
    };
    if let Some(replayed) = replay::answer(state, &ask, directives, start) {
        return Ok(replayed);
    }
    let epoch_changes = replay::epoch_changes(state);
    let whole = !model.policy().batched;
    let (request, rows) = parse(
        body.clone(),
        headers.header_length.clone(),
        state.limits().max_items,
        whole,
    )
    .await?;
    let _room = state.reserve_items(rows.len())?;

    let mut control: CacheControl = directives.into();
    // A sequence (stateful) request advances the model's state: never served from, nor
    // kept in, the cache.
    control.bypass = SEQUENCE_PARAMETERS
        .iter()
        .any(|p| request.parameters.contains_key(*p));
    // Shared with the rows; the response reads the request's `id` and output selection
    // from it afterwards, copying neither.
    let inputs = Arc::new(Inputs::Tensors { request, rows });
    let fetched = state
        .rows(RowRequest {
            model: Arc::clone(&model),
            tenant: Arc::clone(&caller.tenant),
            inputs: Arc::clone(&inputs),
            control,
        })
        .await?;

    let cache_headers = routes::cache_headers(&fetched);
    let stored: Vec<Bytes> = fetched
        .values
        .iter()
        .map(|v| {
            v.clone()
                .ok_or_else(|| ApiError::internal("a KServe row has no value"))
        })
        .collect::<Result<_, _>>()?;
    let work = stored.iter().map(Bytes::len).sum();
    let answer_model = Arc::clone(&model);
    let encoded = off_worker(work, move || {
        let model = answer_model;
        let Inputs::Tensors { request, .. } = &*inputs else {
            unreachable!("built as tensors above");
        };
        let meta = ResponseMeta {
            model_name: model.name(),
            model_version: Some(&model.info().version),
            id: request.id.as_deref(),
        };
        assemble(meta, &request.outputs, &stored, whole)
    })
    .await?;
    let (answer, body) = respond(encoded, cache_headers);
    // A sequence request bypassed the cache: its rows are computed, never kept.
    let written = Written {
        model: &model,
        epoch_changes,
        rows: &fetched,
        headers: answer.headers(),
        body: &body,
        latency_at: None,
    };
    replay::keep(state, &ask, directives, &written);
    Ok(answer)
}

/// Parses and splits the body (off the async workers when large). A model whose
/// dimension 0 is not a batch (`whole`) sees its request as one row: a batch of one
/// (a leading dimension of 1 moves no byte).
async fn parse(
    body: Bytes,
    header_length: Option<HeaderValue>,
    max_rows: usize,
    whole: bool,
) -> Result<(InferRequest, Vec<Row>), ApiError> {
    let work = body.len();
    off_worker(work, move || {
        let mut request = kserve::parse_request(body, header_length.as_ref())?;
        if whole {
            for t in &mut request.inputs {
                t.shape.insert(0, 1);
            }
        }
        let rows = request.split(max_rows)?;
        Ok((request, rows))
    })
    .await
}

/// The response from the stored rows, in request order, JSON or binary as asked, written
/// from the stored bytes ([`kserve::assemble_stored`]).
fn assemble(
    meta: ResponseMeta<'_>,
    selection: &OutputSelection,
    stored: &[Bytes],
    whole: bool,
) -> Result<Encoded, ApiError> {
    let name = meta.model_name;
    let assembled = kserve::assemble_stored(meta, stored, selection).map_err(|e| match e {
        e @ KserveError::CorruptRow(_) => ApiError::from(e),
        // The rows are the upstream's (a requested output's presence is checked before
        // a row is stored): rows that cannot share one tensor were answered with
        // different shapes by different calls.
        e => ApiError::Upstream(UpstreamError::bad_response(
            name,
            format!("cached and fetched rows cannot be batched together: {e}"),
        )),
    })?;
    if whole {
        // One row assembled: every output is led by a dimension of 1.
        leading_dimension(assembled, "outputs", Shift::Remove).map_err(ApiError::internal)
    } else {
        Ok(assembled)
    }
}

/// Runs `f` inline when `work` is small, else on the blocking pool, so that converting
/// a large tensor to or from JSON never stalls an async worker.
async fn off_worker<T, F>(work: usize, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    if work < routes::BLOCKING_RENDER_WORK {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// The response: the body, `Content-Type`, `Inference-Header-Content-Length` when
/// binary data follows the JSON part, and the cache headers.
fn respond(encoded: Encoded, mut headers: routes::CacheHeaders) -> (Response, Bytes) {
    let content_type = HeaderValue::from_static(encoded.content_type());
    if let Some(len) = encoded.header_length {
        // Named statically: a name parsed from `HEADER_LENGTH`'s mixed case is a copy.
        // The value from its digits' own `String`: `HeaderValue::from(usize)` writes
        // them into a buffer it then reallocates.
        let value = HeaderValue::from_maybe_shared(Bytes::from(len.to_string()))
            .expect("digits are a valid header value");
        headers.push((
            HeaderName::from_static("inference-header-content-length"),
            value,
        ));
    }
    let body = Bytes::from(encoded.body);
    (routes::response(content_type, body.clone(), headers), body)
}
