//! The handlers of the weight routes.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::cache::ChunkRef;
use super::error::WeightsApiError;
use super::range::{self, RangeError, RangeRequest};
use super::stats::{ChunkCounters, Counters, Outcome, bump};
use super::store::{ModelEntry, StoreError};
use super::{Invalidate, WeightServer};
use crate::digest::Hasher;
use crate::manifest::ChunkInfo;

/// Bytes read at a time when streaming a chunk from its file.
const STREAM_PIECE: usize = 1 << 20;

/// Pieces buffered between the file reader and the connection.
const STREAM_QUEUE: usize = 4;

/// Chunks never change under their ETag.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn etag(sha256: &str) -> String {
    format!("\"{sha256}\"")
}

/// Whether an `If-Match` / `If-None-Match` list names `etag` (or is `*`).
fn names(list: &HeaderValue, etag: &str) -> bool {
    list.to_str().is_ok_and(|s| {
        s.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

/// `If-Match` (412 when it names another version) and `If-None-Match` (304 when it names
/// this one).
fn preconditions(headers: &HeaderMap, etag: &str) -> Result<Option<Response>, WeightsApiError> {
    if let Some(m) = headers.get(header::IF_MATCH)
        && !names(m, etag)
    {
        return Err(WeightsApiError::PreconditionFailed {
            etag: etag.to_owned(),
        });
    }
    if let Some(m) = headers.get(header::IF_NONE_MATCH)
        && names(m, etag)
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(etag).expect("hex"));
        return Ok(Some(resp));
    }
    Ok(None)
}

/// The range asked for, honouring `If-Range`.
fn range_of(headers: &HeaderMap, etag: &str, len: u64) -> Result<RangeRequest, WeightsApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(RangeRequest::Full);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return Ok(RangeRequest::Full);
    }
    let value = value
        .to_str()
        .map_err(|_| WeightsApiError::InvalidRange("the Range header is not ASCII".into()))?;
    range::parse(value, len).map_err(|e| match e {
        RangeError::Malformed(_) => WeightsApiError::InvalidRange(e.to_string()),
        RangeError::Unsatisfiable(len) => WeightsApiError::RangeNotSatisfiable { len },
    })
}

/// The status and headers of a body of `len` bytes answering `range`.
fn head(etag: &str, len: u64, range: RangeRequest, content_type: &str, cache: &str) -> Response {
    let (status, body_len) = match range {
        RangeRequest::Full => (StatusCode::OK, len),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, end - start + 1),
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(cache).expect("ASCII"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("ASCII"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if let RangeRequest::Partial { start, end } = range {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ASCII"),
        );
    }
    resp
}

fn slice(bytes: &Bytes, range: RangeRequest) -> Bytes {
    match range {
        RangeRequest::Full => bytes.clone(),
        RangeRequest::Partial { start, end } => {
            let (s, e) = (
                usize::try_from(start).expect("within a body in memory"),
                usize::try_from(end).expect("within a body in memory"),
            );
            bytes.slice(s..=e)
        }
    }
}

fn body_len(len: u64, range: RangeRequest) -> u64 {
    match range {
        RangeRequest::Full => len,
        RangeRequest::Partial { start, end } => end - start + 1,
    }
}

/// `GET /v1/weights`.
pub(crate) async fn list(State(s): State<WeightServer>) -> Response {
    #[derive(Serialize)]
    struct Model<'a> {
        name: &'a str,
        model_type: &'a str,
        num_layers: usize,
        chunks: usize,
        total_size_bytes: u64,
        fp16: bool,
        manifest_sha256: &'a str,
    }
    let models = s.models();
    let list: Vec<Model<'_>> = models
        .values()
        .map(|m| Model {
            name: &m.manifest.model_name,
            model_type: &m.manifest.model_type,
            num_layers: m.manifest.num_layers,
            chunks: m.manifest.chunks.len(),
            total_size_bytes: m.manifest.total_size_bytes,
            fp16: m.manifest.fp16,
            manifest_sha256: &m.manifest_sha256,
        })
        .collect();
    Json(serde_json::json!({ "models": list })).into_response()
}

/// `GET /v1/weights/{model}/manifest`: the file as it is, revalidated by ETag.
pub(crate) async fn manifest(
    State(s): State<WeightServer>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WeightsApiError> {
    let entry = s.model(&model)?;
    let etag = etag(&entry.manifest_sha256);
    if let Some(resp) = preconditions(&headers, &etag)? {
        bump(&s.counters().not_modified, 1);
        return Ok(resp);
    }
    let bytes = entry.manifest_bytes.clone();
    let mut resp = head(
        &etag,
        bytes.len() as u64,
        RangeRequest::Full,
        "application/json",
        "no-cache",
    );
    bump(&s.counters().bytes_sent, bytes.len() as u64);
    *resp.body_mut() = Body::from(bytes);
    Ok(resp)
}

/// `GET|HEAD /v1/weights/{model}/files/{name}`: `config.json`, `tokenizer.json`.
pub(crate) async fn file(
    State(s): State<WeightServer>,
    method: Method,
    Path((model, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WeightsApiError> {
    let entry = s.model(&model)?;
    let (Some(info), Some(bytes)) = (entry.manifest.files.get(&name), entry.files.get(&name))
    else {
        return Err(WeightsApiError::FileNotFound { model, file: name });
    };
    let etag = etag(&info.sha256);
    if let Some(resp) = preconditions(&headers, &etag)? {
        bump(&s.counters().not_modified, 1);
        return Ok(resp);
    }
    let range = range_of(&headers, &etag, bytes.len() as u64)?;
    let mut resp = head(
        &etag,
        bytes.len() as u64,
        range,
        "application/json",
        IMMUTABLE,
    );
    if method != Method::HEAD {
        let body = slice(bytes, range);
        count_range(s.counters(), range);
        bump(&s.counters().bytes_sent, body.len() as u64);
        *resp.body_mut() = Body::from(body);
    }
    Ok(resp)
}

/// `GET|HEAD /v1/weights/{model}/chunks/{name}`.
pub(crate) async fn chunk(
    State(s): State<WeightServer>,
    method: Method,
    Path((model, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WeightsApiError> {
    let entry = s.model(&model)?;
    let Some((info, counters)) = entry.chunk(&name) else {
        return Err(WeightsApiError::ChunkNotFound { model, chunk: name });
    };
    let etag = etag(&info.sha256);
    if let Some(resp) = preconditions(&headers, &etag)? {
        bump(&s.counters().not_modified, 1);
        return Ok(resp);
    }
    let range = range_of(&headers, &etag, info.size_bytes)?;
    let mut resp = head(
        &etag,
        info.size_bytes,
        range,
        "application/octet-stream",
        IMMUTABLE,
    );
    if method == Method::HEAD {
        return Ok(resp);
    }
    let storage = |e: StoreError| store_error(&e, &model, &name);
    let chunk = ChunkRef {
        info: info.clone(),
        path: entry.path(info),
    };
    let (body, outcome) = if s.cache().admits(info.size_bytes) {
        let (bytes, outcome) = s.cache().get(&chunk).await.map_err(storage)?;
        (Body::from(slice(&bytes, range)), outcome)
    } else {
        let body = stream_file(chunk, range, Arc::clone(s.counters_arc()))
            .await
            .map_err(storage)?;
        (body, Outcome::Bypass)
    };
    record(
        s.counters(),
        counters,
        outcome,
        body_len(info.size_bytes, range),
    );
    count_range(s.counters(), range);
    *resp.body_mut() = body;
    Ok(resp)
}

fn count_range(counters: &Counters, range: RangeRequest) {
    if matches!(range, RangeRequest::Partial { .. }) {
        bump(&counters.ranges, 1);
    }
}

fn record(counters: &Counters, chunk: &ChunkCounters, outcome: Outcome, sent: u64) {
    counters.outcome(outcome);
    bump(&counters.bytes_sent, sent);
    bump(&chunk.requests, 1);
    bump(&chunk.bytes_sent, sent);
    if outcome == Outcome::MemoryHit {
        bump(&chunk.hits, 1);
    } else {
        bump(&chunk.misses, 1);
    }
}

fn store_error(e: &StoreError, model: &str, chunk: &str) -> WeightsApiError {
    tracing::error!(model, chunk, error = %e, "serving a chunk failed");
    match e {
        StoreError::Corrupt { .. } => WeightsApiError::Corrupt {
            model: model.to_owned(),
            chunk: chunk.to_owned(),
        },
        _ => WeightsApiError::Storage {
            model: model.to_owned(),
            chunk: chunk.to_owned(),
        },
    }
}

/// Streams a chunk from its file, for chunks the cache does not admit. A whole-file read
/// is hashed as it goes and its last piece held back until the digest matches: a damaged
/// file ends the body with an error instead of completing it. The reader runs on the
/// blocking pool, a few pieces ahead of the connection.
async fn stream_file(
    chunk: ChunkRef,
    range: RangeRequest,
    counters: Arc<Counters>,
) -> Result<Body, StoreError> {
    let (start, end) = match range {
        RangeRequest::Full => (0, chunk.info.size_bytes.saturating_sub(1)),
        RangeRequest::Partial { start, end } => (start, end),
    };
    let path = chunk.path.clone();
    let file = tokio::task::spawn_blocking(move || -> Result<std::fs::File, StoreError> {
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok(f)
    })
    .await
    .map_err(|e| StoreError::Io {
        path: chunk.path.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(STREAM_QUEUE);
    let verify = range == RangeRequest::Full;
    tokio::task::spawn_blocking(move || {
        pump(file, &chunk.info, end + 1 - start, verify, &tx, &counters);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Body::from_stream(stream))
}

/// The blocking half of [`stream_file`]: reads `len` bytes into the channel.
fn pump(
    mut file: std::fs::File,
    info: &ChunkInfo,
    len: u64,
    verify: bool,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    counters: &Counters,
) {
    let mut hasher = Hasher::default();
    let mut held: Option<Bytes> = None;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(STREAM_PIECE as u64)).expect("bounded");
        let mut buf = vec![0u8; want];
        if let Err(e) = file.read_exact(&mut buf) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        left -= want as u64;
        let piece = Bytes::from(buf);
        if verify {
            hasher.update(&piece);
        }
        if let Some(previous) = held.replace(piece)
            && tx.blocking_send(Ok(previous)).is_err()
        {
            return; // the client went away
        }
    }
    if verify && hasher.finish_hex() != info.sha256 {
        bump(&counters.storage_corrupt, 1);
        tracing::error!(chunk = %info.file, "a streamed chunk failed its sha256; the body is cut short");
        let _ = tx.blocking_send(Err(std::io::Error::other("the chunk failed its sha256")));
        return;
    }
    if let Some(last) = held {
        let _ = tx.blocking_send(Ok(last));
    }
}

/// `GET /v1/weights/stats`.
pub(crate) async fn stats(State(s): State<WeightServer>) -> Response {
    Json(s.stats()).into_response()
}

/// The body of `POST /v1/weights/invalidate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    scope: String,
    model: Option<String>,
}

/// `POST /v1/weights/invalidate`: `{"scope": "all"}` or `{"scope": "model", "model"}`.
pub(crate) async fn invalidate(
    State(s): State<WeightServer>,
    body: Bytes,
) -> Result<Response, WeightsApiError> {
    let shape = "the body must be {\"scope\": \"all\"} or {\"scope\": \"model\", \"model\": NAME}";
    let parsed: InvalidateBody = serde_json::from_slice(&body)
        .map_err(|e| WeightsApiError::InvalidRequest(format!("{shape}: {e}")))?;
    let scope = match (parsed.scope.as_str(), parsed.model) {
        ("all", None) => Invalidate::All,
        ("model", Some(model)) => Invalidate::Model(model),
        _ => return Err(WeightsApiError::InvalidRequest(shape.into())),
    };
    Ok(Json(s.invalidate(scope).await?).into_response())
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(s): State<WeightServer>) -> Response {
    match s.metrics_text() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Any other route.
pub(crate) async fn not_found(uri: Uri) -> WeightsApiError {
    WeightsApiError::RouteNotFound(uri.path().chars().take(200).collect())
}

impl WeightServer {
    pub(crate) fn model(&self, name: &str) -> Result<Arc<ModelEntry>, WeightsApiError> {
        self.models()
            .get(name)
            .cloned()
            .ok_or_else(|| WeightsApiError::ModelNotFound(name.chars().take(200).collect()))
    }
}
