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
//! is split into one stored row per input row ([`RowOutput::encode`]); an answer whose
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

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::kserve::{
    self, Encoded, HEADER_LENGTH, InferRequest, ResponseMeta, Row, RowOutput, WireFormat,
};
use crate::state::AppState;
use crate::upstream::{Backend, CacheControl, RemoteModel, RowRequest, UpstreamError, fetch_rows};
use crate::{cache_control, routes};

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = routes::path_name(name)?;
    serve(&state, caller, &name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((name, version)) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    serve(&state, caller, &name, Some(&version), &headers, body).await
}

async fn serve(
    state: &AppState,
    caller: Caller,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let directives = cache_control::parse(headers)?;
    let model = state
        .models()
        .resolve(name, &[Backend::KServeV2], &state.model().id)?;
    if let Some(v) = version
        && v != model.config().version
    {
        return Err(ApiError::UnknownVersion {
            model: name.to_owned(),
            requested: v.to_owned(),
            served: model.config().version.clone(),
        });
    }
    let body = body::bytes(body, state.limits())?;
    let work = body.len();
    let header_length = headers.get(HEADER_LENGTH).cloned();
    let max_rows = state.limits().max_items;
    let whole = !model.config().batched;
    let parse = move || -> Result<(InferRequest, Vec<Row>), ApiError> {
        let mut request = kserve::parse_request(body, header_length.as_ref())?;
        if whole {
            // Dimension 0 is not a batch: the request is one row, seen as a batch of one
            // (a leading dimension of 1 moves no byte).
            for t in &mut request.inputs {
                t.shape.insert(0, 1);
            }
        }
        let rows = request.split(max_rows)?;
        Ok((request, rows))
    };
    let (request, rows) = off_worker(work, parse).await?;

    let mut protocol = Map::new();
    protocol.insert(
        "outputs".to_owned(),
        Value::String(
            String::from_utf8(request.outputs.key_bytes())
                .expect("the output selection's key is canonical JSON or `*`"),
        ),
    );
    protocol.insert(
        "row_format".to_owned(),
        Value::from(kserve::ROW_FORMAT_VERSION),
    );
    let params = model.key_params(Some(&request.parameters), protocol)?;
    let _room = state.reserve_items(rows.len())?;

    let mut control: CacheControl = directives.into();
    // A sequence (stateful) request advances the model's state: never served from, nor
    // kept in, the cache.
    control.bypass = SEQUENCE_PARAMETERS
        .iter()
        .any(|p| request.parameters.contains_key(*p));
    let row_request = RowRequest {
        model: Arc::clone(&model),
        tenant: caller.tenant,
        rows: rows.iter().map(Row::canonical_input).collect(),
        params,
        control,
    };
    let request = Arc::new(request);
    let upstream_request = Arc::clone(&request);
    let upstream_model = Arc::clone(&model);
    let rows = Arc::new(rows);
    let fetched = fetch_rows(state, row_request, move |indices: Vec<usize>| {
        let (model, request, rows) = (
            Arc::clone(&upstream_model),
            Arc::clone(&upstream_request),
            Arc::clone(&rows),
        );
        async move { infer_upstream(&model, &request, &rows, &indices).await }
    })
    .await?;

    let headers = fetched.headers();
    let stored: Vec<Bytes> = fetched
        .values
        .into_iter()
        .map(|v| v.ok_or_else(|| ApiError::internal("a KServe row has no value")))
        .collect::<Result<_, _>>()?;
    let work = stored.iter().map(Bytes::len).sum();
    let encoded = off_worker(work, move || {
        let outputs = stored
            .iter()
            .map(RowOutput::decode)
            .collect::<Result<Vec<_>, _>>()?;
        let meta = ResponseMeta {
            model_name: model.name(),
            model_version: Some(&model.config().version),
            id: request.id.as_deref(),
        };
        let assembled =
            kserve::assemble_response(meta, &outputs, &request.outputs).map_err(|e| {
                // The rows are the upstream's (a requested output's presence is checked
                // before a row is stored): rows that cannot share one tensor were
                // answered with different shapes by different calls.
                ApiError::Upstream(UpstreamError::bad_response(
                    model.name(),
                    format!("cached and fetched rows cannot be batched together: {e}"),
                ))
            })?;
        if whole {
            // One row assembled: every output is led by a dimension of 1.
            leading_dimension(assembled, "outputs", Shift::Remove).map_err(ApiError::internal)
        } else {
            Ok(assembled)
        }
    })
    .await?;
    Ok(respond(encoded, headers))
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
fn respond(
    encoded: Encoded,
    headers: impl IntoIterator<Item = (axum::http::HeaderName, HeaderValue)>,
) -> Response {
    let content_type = encoded.content_type();
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        encoded.body,
    )
        .into_response();
    if let Some(len) = encoded.header_length {
        response
            .headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(len));
    }
    response.headers_mut().extend(headers);
    response
}

/// Sends the rows at `indices` upstream in one request; returns each row's stored form.
async fn infer_upstream(
    model: &RemoteModel,
    request: &InferRequest,
    rows: &[Row],
    indices: &[usize],
) -> Result<Vec<Bytes>, UpstreamError> {
    let bad = |reason: String| UpstreamError::bad_response(model.name(), reason);
    let batch: Vec<&Row> = indices.iter().map(|&i| &rows[i]).collect();
    let encoded = kserve::build_request(
        &batch,
        &request.outputs,
        &request.parameters,
        WireFormat::Binary,
    )
    .expect("the rows of one request share their layout and parameters (a bug otherwise)");
    let whole = !model.config().batched;
    let encoded = if whole {
        leading_dimension(encoded, "inputs", Shift::Remove)
            .expect("a request this codec wrote, each input led by a dimension of 1")
    } else {
        encoded
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoded.content_type()),
    );
    if let Some(len) = encoded.header_length {
        headers.insert(HEADER_LENGTH, HeaderValue::from(len));
    }
    let path = format!("/v2/models/{}/infer", model.config().upstream_name);
    let reply = model
        .upstream()
        .send(
            Method::POST,
            &path,
            Some((Bytes::from(encoded.body), headers)),
            model.upstream().inference_retry(),
        )
        .await?;
    let (body, header_length) = if whole {
        let declared = reply
            .headers
            .get(HEADER_LENGTH)
            .map(|v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok()))
            .map(|n| n.ok_or_else(|| bad("a malformed Inference-Header-Content-Length".into())))
            .transpose()?;
        let encoded = Encoded {
            body: reply.body.to_vec(),
            header_length: declared,
        };
        let wrapped = leading_dimension(encoded, "outputs", Shift::Add).map_err(bad)?;
        let length = wrapped.header_length.map(HeaderValue::from);
        (Bytes::from(wrapped.body), length)
    } else {
        (reply.body, reply.headers.get(HEADER_LENGTH).cloned())
    };
    let parsed =
        kserve::parse_response(body, header_length.as_ref()).map_err(|e| bad(e.to_string()))?;
    if let Some(requested) = &request.outputs.requested
        && let Some(missing) = requested
            .iter()
            .find(|o| !parsed.outputs.iter().any(|t| t.name == o.name))
    {
        return Err(bad(format!(
            "output `{}` was requested but not answered",
            missing.name
        )));
    }
    let split = parsed.split(batch.len()).map_err(|e| bad(e.to_string()))?;
    Ok(split.iter().map(|row| Bytes::from(row.encode())).collect())
}

/// The request parameters of Triton's sequence batcher: a request carrying one belongs to
/// a stateful sequence.
const SEQUENCE_PARAMETERS: [&str; 3] = ["sequence_id", "sequence_start", "sequence_end"];

/// Which way [`leading_dimension`] moves shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shift {
    /// `[d, ...]` becomes `[1, d, ...]`.
    Add,
    /// `[1, d, ...]` becomes `[d, ...]`.
    Remove,
}

/// Adds or removes a leading dimension of 1 on every tensor of `field` (`inputs` or
/// `outputs`) of an encoded message, for a model whose dimension 0 is not a batch
/// (`batched = false`): its whole request travels through the per-row path as one row.
/// Only the JSON part changes; binary data and flat or nested JSON `data` are the same
/// bytes and values under either shape.
fn leading_dimension(encoded: Encoded, field: &str, shift: Shift) -> Result<Encoded, String> {
    let split = encoded.header_length.unwrap_or(encoded.body.len());
    let header = encoded
        .body
        .get(..split)
        .ok_or("the header length exceeds the body")?;
    let mut json: Value =
        serde_json::from_slice(header).map_err(|e| format!("the JSON part is not JSON: {e}"))?;
    if let Some(tensors) = json.get_mut(field).and_then(Value::as_array_mut) {
        for t in tensors {
            let shape = t
                .get_mut("shape")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| format!("a tensor of `{field}` has no shape"))?;
            match shift {
                Shift::Add => shape.insert(0, Value::from(1)),
                Shift::Remove if shape.first().and_then(Value::as_u64) == Some(1) => {
                    shape.remove(0);
                }
                Shift::Remove => {
                    return Err(format!("a tensor of `{field}` is not a batch of one"));
                }
            }
        }
    }
    let mut body = serde_json::to_vec(&json).expect("a JSON value serializes");
    let header_length = encoded.header_length.map(|_| body.len());
    body.extend_from_slice(&encoded.body[split..]);
    Ok(Encoded {
        body,
        header_length,
    })
}
