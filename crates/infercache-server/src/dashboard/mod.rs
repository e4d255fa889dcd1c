//! The live dashboard: `GET /dashboard`, one page that draws the server's counters over
//! the last hour and updates itself every few seconds.
//!
//! - [`samples`]: a sampler task takes a snapshot of every counter (tiers, models,
//!   requests by outcome, latency buckets, the Redis tier) every
//!   [`SAMPLE_EVERY`](samples::SAMPLE_EVERY) into a bounded ring
//!   ([`SAMPLES_KEPT`](samples::SAMPLES_KEPT): one hour), so the page shows the last hour
//!   when opened. Invalidations are kept as marks.
//! - The page and its assets (`assets/`: the HTML, its script and style, and uPlot,
//!   vendored from npm with its licence) are compiled into the binary: no CDN, no build
//!   step.
//!
//! The page holds no data: `GET /dashboard` and its assets answer anyone, and the page
//! fetches `GET /dashboard/data?since=T` (samples and marks after `T`, and the counters
//! now), which needs an admin key when keys are configured. The page sends the key it
//! was given in its address (`/dashboard#key=…`, a fragment, which no request carries) or
//! asks for one when the server answers 401 or 403, and keeps it for the browser tab
//! only (`sessionStorage`). `/dashboard/data` is outside the `/v1` guard, so it answers
//! while the server drains, and the page says so.

pub mod samples;

use std::sync::Mutex;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;
use samples::{Data, Ring, SAMPLE_EVERY};

/// The page, its script and style, and the charting library, by file name.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("assets/uplot/uPlot.min.css"),
    ),
];

const PAGE: &str = include_str!("assets/index.html");

/// The samples and marks the page draws. Cheap to lock: a sample is taken every two
/// seconds and the page asks as often; neither holds the lock across an `.await`.
#[derive(Debug, Default)]
pub struct Dashboard {
    ring: Mutex<Ring>,
}

impl Dashboard {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a sample of `state` and keeps it.
    pub fn record(&self, state: &AppState) {
        self.ring().record(state);
    }

    /// Marks now on the time axis with `what` (an invalidation).
    pub fn mark(&self, what: String) {
        self.ring().mark(what);
    }

    /// The samples and marks after `since` (Unix milliseconds), and the counters now.
    pub fn data(&self, state: &AppState, since: u64) -> Data {
        self.ring().data(state, since)
    }
}

/// Samples `state` every [`SAMPLE_EVERY`], the first at once, until the task is aborted.
pub(crate) async fn sample(state: AppState) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        state.dashboard().record(&state);
    }
}

/// `GET /dashboard`.
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /dashboard/{asset}`.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::NoRoute(format!("/dashboard/{name}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        *body,
    )
        .into_response())
}

/// The query of `GET /dashboard/data`.
#[derive(Debug, Deserialize)]
pub struct Since {
    /// Unix milliseconds; samples and marks after it are sent (default: all).
    #[serde(default)]
    since: u64,
}

/// `GET /dashboard/data?since=T`.
pub async fn data(
    State(state): State<AppState>,
    _admin: Admin,
    since: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Data>, ApiError> {
    let Query(Since { since }) = since.map_err(|e| ApiError::invalid("since", e.body_text()))?;
    Ok(Json(state.dashboard().data(&state, since)))
}
