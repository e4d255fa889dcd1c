//! The server as one service: [`App`], the router behind the work every request shares.
//!
//! In order, for each request:
//!
//! 1. the body limit (`max_body_bytes`) for the extractors that read a body;
//! 2. on the API paths (everything under `/v1/` and `/v2`, but `/v2/health/*`):
//!    admission ([`admit`]): 503 once draining for shutdown, 429 past
//!    `max_concurrent_requests` in flight or past the body budget, then the request
//!    within `request_timeout` (else 504);
//! 3. the router;
//! 4. on `/v2` and the paths under it, every error in KServe v2's body,
//!    `{"error": "<message>"}` (the message [`ApiError`] left on the response), keeping
//!    its status and headers: `tritonclient` reads the error from that field.
//!
//! Written as one `tower::Service` by hand, rather than as `axum::middleware::from_fn`
//! layers: axum applies a layer to every route separately, so each one costs a request
//! several heap allocations (a boxed clone of the layered route, a boxed `Next`, boxed
//! futures); here a request pays for one boxed future.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tokio::sync::OwnedSemaphorePermit;
use tower::Service;

use crate::error::{ApiError, ErrorMessage};
use crate::metrics::Rejection;
use crate::state::AppState;

/// The whole server: the router behind admission and the KServe v2 error body. Cheap
/// to clone; clones share everything. Tests drive it without a socket
/// (`tower::ServiceExt::oneshot`).
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
    body_limit: DefaultBodyLimit,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// `router` served with `state`'s limits.
    pub(crate) fn new(router: Router, state: AppState) -> Self {
        let body_limit = DefaultBodyLimit::max(state.limits().max_body_bytes);
        Self {
            router,
            state,
            body_limit,
        }
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        self.body_limit.apply(&mut request);
        let path = request.uri().path();
        let v2 = path == "/v2" || path.starts_with("/v2/");
        let api = path.starts_with("/v1/") || (v2 && !path.starts_with("/v2/health/"));
        if !api {
            let routed = self.router.call(request);
            return Box::pin(async move {
                let response = routed.await?;
                Ok(if v2 { kserve_error(response) } else { response })
            });
        }
        let state = self.state.clone();
        let limits = *state.limits();
        let routed = match admit(&state, &request) {
            Ok(held) => Ok((held, self.router.call(request))),
            Err(refused) => Err((refused, request)),
        };
        Box::pin(async move {
            let response = match routed {
                Ok((held, routed)) => {
                    let answered = tokio::time::timeout(limits.request_timeout, routed).await;
                    drop(held);
                    match answered {
                        Ok(response) => response?,
                        Err(_) => {
                            state.metrics().rejected(Rejection::Timeout);
                            ApiError::Timeout(limits.request_timeout).into_response()
                        }
                    }
                }
                Err((refused, request)) => {
                    if matches!(refused, ApiError::BodyBudget { .. }) {
                        drain(request, &limits).await;
                    }
                    refused.into_response()
                }
            };
            Ok(if v2 { kserve_error(response) } else { response })
        })
    }
}

/// What an admitted request holds until its response is made: its place among the
/// requests in flight and its share of the body budget.
struct Held {
    _permit: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Admits `request` to the API, or says why not (counted): 503 while draining, 429 when
/// `max_concurrent_requests` are in flight, 429 when the body budget has no room.
fn admit(state: &AppState, request: &Request) -> Result<Held, ApiError> {
    let limits = state.limits();
    if !state.is_ready() {
        // Draining: a request that arrives on a kept-alive connection is turned away.
        return Err(ApiError::ShuttingDown);
    }
    let Ok(permit) = Arc::clone(state.permits()).try_acquire_owned() else {
        state.metrics().rejected(Rejection::Concurrency);
        return Err(ApiError::TooManyRequests {
            limit: limits.max_concurrent_requests,
        });
    };
    let Some(bytes) = body_budget(state, request) else {
        state.metrics().rejected(Rejection::BodyBudget);
        return Err(ApiError::BodyBudget {
            budget: limits.body_budget_bytes,
        });
    };
    Ok(Held {
        _permit: permit,
        _bytes: bytes,
    })
}

/// Reads a refused request's body to its end, dropping it as it comes and holding no
/// more than a chunk, so that the client reads the 429 instead of a reset connection.
async fn drain(request: Request, limits: &crate::config::Limits) {
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
}

/// The body budget's share of `request`: its `Content-Length`, or `max_body_bytes` when
/// it gives none and may have a body, in KiB, held until the response is made (the body,
/// what is parsed from it and what is computed for it live that long). `None` when the
/// budget has no room: the request is refused at once, never queued.
fn body_budget(state: &AppState, request: &Request) -> Option<Option<OwnedSemaphorePermit>> {
    let max = state.limits().max_body_bytes;
    let length = match request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max),
        None if request.method() == Method::GET || request.method() == Method::HEAD => 0,
        None => max,
    };
    if length == 0 {
        return Some(None);
    }
    let kib = u32::try_from(length.div_ceil(1024)).unwrap_or(u32::MAX);
    Arc::clone(state.body_budget())
        .try_acquire_many_owned(kib)
        .ok()
        .map(Some)
}

/// `response` with KServe v2's error body when it is an error [`ApiError`] made.
fn kserve_error(response: Response) -> Response {
    let Some(ErrorMessage(message)) = response.extensions().get::<ErrorMessage>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .expect("a JSON value serializes");
    Response::from_parts(parts, axum::body::Body::from(body))
}
