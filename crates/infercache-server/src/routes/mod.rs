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
pub(crate) mod rendered;
pub(crate) mod replay;
pub mod smally;
mod write;

use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::Response;
use bytes::Bytes;
use infercache_infer::{Outcome, Rows};
use serde::Serialize;

use crate::error::ApiError;

/// Renders whose work (values written plus input bytes tokenized) reaches this run on the
/// blocking pool.
pub(crate) const BLOCKING_RENDER_WORK: usize = 16 * 1024;

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
/// (computed by a concurrent request) counts as a miss. Made without an allocation: an
/// array the response's header map takes.
pub fn cache_headers(rows: &Rows) -> CacheHeaders {
    // Names made at compile time: `HeaderName::from_static` checks its text each call.
    const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
    const X_CACHE_HITS: HeaderName = HeaderName::from_static("x-cache-hits");
    const X_CACHE_MISSES: HeaderName = HeaderName::from_static("x-cache-misses");
    const X_CACHE_COALESCED: HeaderName = HeaderName::from_static("x-cache-coalesced");
    const X_CACHE_STALE: HeaderName = HeaderName::from_static("x-cache-stale");
    let stale = rows.stale();
    let headers = [
        Some((X_CACHE, HeaderValue::from_static(x_cache(rows)))),
        Some((X_CACHE_HITS, count_value(rows.hits()))),
        Some((X_CACHE_MISSES, count_value(rows.misses()))),
        Some((X_CACHE_COALESCED, count_value(rows.coalesced()))),
        (stale > 0).then(|| (X_CACHE_STALE, count_value(stale))),
        None,
    ];
    CacheHeaders(headers)
}

/// [`cache_headers`]: up to five headers, and room for one a route adds
/// ([`CacheHeaders::push`]).
#[derive(Debug)]
pub struct CacheHeaders([Option<(HeaderName, HeaderValue)>; 6]);

impl CacheHeaders {
    /// Adds `header` after the cache headers.
    pub fn push(&mut self, header: (HeaderName, HeaderValue)) {
        self.0[5] = Some(header);
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for CacheHeaders {
    type Item = (HeaderName, HeaderValue);
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Self::Item>, 6>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// A count as a header value: the small counts of most requests are static, with no
/// allocation.
fn count_value(n: usize) -> HeaderValue {
    const SMALL: [HeaderValue; 10] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
        HeaderValue::from_static("4"),
        HeaderValue::from_static("5"),
        HeaderValue::from_static("6"),
        HeaderValue::from_static("7"),
        HeaderValue::from_static("8"),
        HeaderValue::from_static("9"),
    ];
    SMALL
        .get(n)
        .map_or_else(|| HeaderValue::from(n), HeaderValue::clone)
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
pub fn json_response(body: impl Into<Bytes>, headers: CacheHeaders) -> Response {
    response(
        HeaderValue::from_static("application/json"),
        body.into(),
        headers,
    )
}

/// A response of `body` with its `Content-Type` and `headers`, its header map made with
/// room for them and the `Content-Length` axum adds: a map made empty takes its first 6
/// entries in one allocation and grows at the seventh, in another.
pub fn response(content_type: HeaderValue, body: Bytes, headers: CacheHeaders) -> Response {
    let mut map = HeaderMap::with_capacity(2 + headers.len());
    map.insert(axum::http::header::CONTENT_TYPE, content_type);
    map.extend(headers);
    let mut response = Response::new(Body::from(body));
    *response.headers_mut() = map;
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
