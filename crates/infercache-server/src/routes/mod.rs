//! The HTTP routes, one file per API, and what they share.
//!
//! | route | file |
//! |---|---|
//! | `POST /v1/embeddings` (OpenAI) | [`openai`] |
//! | `POST /v1/embed` (Smally) | [`smally`] |
//! | `GET /v1/cache/stats`, `POST /v1/cache/invalidate`, `DELETE /v1/cache/entries/{key}`, `POST /v1/cache/warm`, `GET /metrics` | [`admin`] |
//! | `GET /healthz`, `GET /readyz` | [`health`] |
//! | `POST /v1/models/{name}/predict` (plain JSON upstreams) | [`predict`] |
//! | `POST /v1/models/{name}/run` (Ersilia upstreams) | [`ersilia`] |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` (KServe v2 upstreams) | [`kserve`] |
//! | `GET /v1/datasets`, `GET /v1/datasets/{name}`, `GET /v1/datasets/{name}/batches` | [`datasets`] |
//! | `GET /v1/models`, `GET /v2`, `GET /v2/health/ready`, `GET /v2/health/live`, `GET /v2/models/{name}[/versions/{v}][/ready]`, `GET /v2/models/{name}[/versions/{v}]/config` | [`models`] |

pub mod admin;
pub mod body;
pub mod datasets;
pub mod ersilia;
pub mod health;
pub mod kserve;
pub mod models;
pub mod openai;
pub mod predict;
pub mod smally;
mod write;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use infercache_infer::{Outcome, Rows};
use serde::Serialize;

use crate::error::{ApiError, ErrorMessage};
use crate::metrics::Rejection;
use crate::state::AppState;

/// Renders whose work (values written plus input bytes tokenized) reaches this run on the
/// blocking pool.
pub(crate) const BLOCKING_RENDER_WORK: usize = 16 * 1024;

/// Bounds `/v1/*`: 503 once draining for shutdown, at most `max_concurrent_requests` in flight (others get 429 at once,
/// with `Retry-After`), at most `body_budget` bytes of bodies in flight (others get 429
/// with `Retry-After` once their body is read and dropped), each within `request_timeout` (else 504). A request cut off by the
/// timeout is dropped; the cache hands any key it was computing to a waiting request.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = *state.limits();
    if !state.is_ready() {
        // Draining: a request that arrives on a kept-alive connection is turned away.
        return ApiError::ShuttingDown.into_response();
    }
    let Ok(_permit) = std::sync::Arc::clone(state.permits()).try_acquire_owned() else {
        state.metrics().rejected(Rejection::Concurrency);
        return ApiError::TooManyRequests {
            limit: limits.max_concurrent_requests,
        }
        .into_response();
    };
    let Some(_bytes) = body_budget(&state, &request) else {
        state.metrics().rejected(Rejection::BodyBudget);
        let refused = ApiError::BodyBudget {
            budget: limits.body_budget_bytes,
        };
        // Read the body to its end and drop it as it comes, holding no more than a chunk,
        // so that the client reads the 429 instead of a reset connection.
        let mut body = request.into_body().into_data_stream();
        let drained = tokio::time::timeout(limits.request_timeout, async {
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
                seen += chunk.len();
                if seen > limits.max_body_bytes {
                    break;
                }
            }
        });
        let _ = drained.await;
        return refused.into_response();
    };
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics().rejected(Rejection::Timeout);
            ApiError::Timeout(limits.request_timeout).into_response()
        }
    }
}

/// The body budget's share of `request`: its `Content-Length`, or `max_body_bytes` when
/// it gives none and may have a body, in KiB, held until the response is made (the body,
/// what is parsed from it and what is computed for it live that long). `None` when the
/// budget has no room: the request is refused at once, never queued.
fn body_budget(
    state: &AppState,
    request: &Request,
) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    let max = state.limits().max_body_bytes;
    let length = match request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max),
        None if request.method() == axum::http::Method::GET
            || request.method() == axum::http::Method::HEAD =>
        {
            0
        }
        None => max,
    };
    if length == 0 {
        return Some(None);
    }
    let kib = u32::try_from(length.div_ceil(1024)).unwrap_or(u32::MAX);
    std::sync::Arc::clone(state.body_budget())
        .try_acquire_many_owned(kib)
        .ok()
        .map(Some)
}

/// Gives every error on `/v2` and the paths under it KServe v2's body,
/// `{"error": "<message>"}` (the message [`ApiError`] left on the response), keeping its
/// status and headers: `tritonclient` reads the error from that field.
pub async fn kserve_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let v2 = path == "/v2" || path.starts_with("/v2/");
    let response = next.run(request).await;
    if !v2 {
        return response;
    }
    let Some(ErrorMessage(message)) = response.extensions().get::<ErrorMessage>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .expect("a JSON value serializes");
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// 404 in the API's error shape.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

/// 405 in the API's error shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The `X-Cache` value: `STALE` when any row was served stale, else `HIT` (every row
/// from the cache), `MISS` (none) or `PARTIAL`.
pub fn x_cache(rows: &Rows) -> &'static str {
    if rows.stale() > 0 {
        return "STALE";
    }
    match rows.outcome() {
        Outcome::Hit => "HIT",
        Outcome::Miss => "MISS",
        Outcome::Partial => "PARTIAL",
    }
}

/// The cache headers of every row route, set here only: `X-Cache`, `X-Cache-Hits`,
/// `X-Cache-Misses`, `X-Cache-Coalesced`, and `X-Cache-Stale` when any row was stale.
/// Counts are per row; a repeated row counts as its first copy does, and a coalesced row
/// (computed by a concurrent request) counts as a miss.
pub fn cache_headers(rows: &Rows) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = Vec::with_capacity(5);
    h.extend([
        (
            HeaderName::from_static("x-cache"),
            HeaderValue::from_static(x_cache(rows)),
        ),
        (
            HeaderName::from_static("x-cache-hits"),
            count_value(rows.hits()),
        ),
        (
            HeaderName::from_static("x-cache-misses"),
            count_value(rows.misses()),
        ),
        (
            HeaderName::from_static("x-cache-coalesced"),
            count_value(rows.coalesced()),
        ),
    ]);
    if rows.stale() > 0 {
        h.push((
            HeaderName::from_static("x-cache-stale"),
            count_value(rows.stale()),
        ));
    }
    h
}

/// A count as a header value: the small counts of most requests are static, with no
/// allocation.
fn count_value(n: usize) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    SMALL
        .get(n)
        .map_or_else(|| HeaderValue::from(n), |s| HeaderValue::from_static(s))
}

/// The cache's part of a response body (OpenAI clients ignore it): its shape, which
/// `write::cache_summary` writes.
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
    /// Inputs served past their freshness: within the stale-while-revalidate window, or
    /// standing in for a failed upstream.
    #[serde(skip_serializing_if = "is_zero")]
    pub stale: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl CacheSummary {
    /// The summary of a request's rows.
    pub fn of(rows: &Rows) -> Self {
        Self {
            hits: rows.hits(),
            misses: rows.misses(),
            coalesced: rows.coalesced(),
            keys: rows.keys.iter().map(|k| k.to_hex()).collect(),
            stale: rows.stale(),
        }
    }
}

/// A JSON response with `headers`.
pub fn json_response(
    body: Vec<u8>,
    headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
) -> Response {
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response.headers_mut().extend(headers);
    response
}

/// A model name from the URL path, with a 400 in the API's shape when it does not decode.
pub fn path_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    name.map(|Path(n)| n)
        .map_err(|e| ApiError::invalid("name", e.body_text()))
}

/// `prefix [row, row, ...] suffix`, each row's stored JSON text written verbatim
/// (`absent` for a row that has none), so a response is assembled without parsing a row.
pub fn json_rows(prefix: &[u8], rows: &[Option<Bytes>], absent: &[u8], suffix: &[u8]) -> Vec<u8> {
    let len = rows
        .iter()
        .map(|r| r.as_ref().map_or(absent.len(), Bytes::len) + 1)
        .sum::<usize>();
    let mut out = Vec::with_capacity(prefix.len() + len + suffix.len() + 2);
    out.extend_from_slice(prefix);
    out.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(row.as_deref().unwrap_or(absent));
    }
    out.push(b']');
    out.extend_from_slice(suffix);
    out
}
