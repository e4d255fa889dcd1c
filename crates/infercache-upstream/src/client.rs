//! Calls to an upstream: one shared connection pool, a per-model timeout on every
//! attempt, a bound on response size, retries with backoff where a retry is safe, and
//! failures as [`UpstreamError`] values that name the model.
//!
//! # Which calls are retried
//!
//! | call | [`Retry`] | retried on |
//! |---|---|---|
//! | `GET` metadata | [`Retry::Idempotent`] | connect errors, timeouts, broken connections, 429, 502, 503, 504 |
//! | inference, `deterministic = true` | [`Retry::Unprocessed`] | connect errors, 429, 503 |
//! | inference, `deterministic = false` | [`Retry::Never`] | nothing |
//!
//! A metadata read has no effect, so any failure may be retried. An inference of a
//! deterministic model is a pure function of its input, so sending it twice is harmless,
//! but it is retried only when the upstream did not process it (the connection was never
//! made, or it answered 429/503, which say "not now"): a timeout or a 500 may mean the
//! upstream is struggling with exactly this batch, and a retry would double its load
//! while the client waits. A non-deterministic inference is never retried: the retry
//! would produce a different output and may have costs or effects of its own.
//!
//! Backoff (`backon`'s exponential backoff, without jitter): 50 ms before the first retry,
//! doubling, at most 1 s; at most `retries` retries (per model, default 2). Every attempt
//! has the model's full `timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use infercache_backend::{CallStats, ModelConfig, UpstreamError};

use crate::AnswerBudget;

/// Largest upstream response read; a larger one is a [`UpstreamError::BadResponse`].
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Wait before the first retry; doubled before each next one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// When a failed call may be sent again (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never.
    Never,
    /// Only when the upstream did not process it: connect errors, 429, 503.
    Unprocessed,
    /// On any transient failure: the call has no effect.
    Idempotent,
}

impl Retry {
    /// Whether a call that failed with `error` may be sent again.
    pub fn allows(self, error: &UpstreamError) -> bool {
        match self {
            Self::Never => false,
            Self::Unprocessed => matches!(
                error,
                UpstreamError::Unreachable { .. }
                    | UpstreamError::Status {
                        status: 429 | 503,
                        ..
                    }
            ),
            Self::Idempotent => matches!(
                error,
                UpstreamError::Timeout { .. }
                    | UpstreamError::Unreachable { .. }
                    | UpstreamError::Broken { .. }
                    | UpstreamError::Status {
                        status: 429 | 502 | 503 | 504,
                        ..
                    }
            ),
        }
    }
}

/// A successful (2xx) upstream answer. It holds its share of the answer budget until it
/// is dropped, so it should live only while its rows are made.
#[derive(Debug)]
pub struct UpstreamReply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, whole.
    pub body: Bytes,
    /// Its share of the answer budget.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// One model's upstream: its settings and the shared connection pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    config: ModelConfig,
    client: reqwest::Client,
    answers: Arc<AnswerBudget>,
    counters: Arc<CallCounters>,
}

/// What one model's upstream calls did, for `/metrics`.
#[derive(Debug, Default)]
struct CallCounters {
    attempts: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    micros: AtomicU64,
}

impl Upstream {
    /// The upstream of `config` (a model with a `url`), sharing `client`'s connections
    /// and the answer budget `answers`.
    pub(crate) fn new(
        config: ModelConfig,
        client: reqwest::Client,
        answers: Arc<AnswerBudget>,
    ) -> Self {
        Self {
            config,
            client,
            answers,
            counters: Arc::default(),
        }
    }

    /// What this model's upstream calls did so far.
    pub fn stats(&self) -> CallStats {
        let c = &self.counters;
        CallStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            micros: c.micros.load(Ordering::Relaxed),
        }
    }

    /// The model's settings.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `path` under the model's base URL (`path` starts with `/`, or is empty for the
    /// base URL itself).
    pub fn url(&self, path: &str) -> String {
        let base = self
            .config
            .url
            .as_deref()
            .expect("an upstream model has a url (validated at start-up)");
        format!("{base}{path}")
    }

    /// How an inference call of this model may be retried: [`Retry::Unprocessed`] for a
    /// deterministic model, [`Retry::Never`] otherwise.
    pub fn inference_retry(&self) -> Retry {
        if self.config.deterministic {
            Retry::Unprocessed
        } else {
            Retry::Never
        }
    }

    /// `POST`s a JSON body to `path` as an inference call.
    ///
    /// # Errors
    /// The last attempt's [`UpstreamError`].
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<UpstreamReply, UpstreamError> {
        let bytes = Bytes::from(serde_json::to_vec(body).expect("a JSON value serializes"));
        self.post_json_text(path, bytes).await
    }

    /// `POST`s `body`, JSON text the caller wrote, to `path` as an inference call.
    ///
    /// # Errors
    /// The last attempt's [`UpstreamError`].
    pub async fn post_json_text(
        &self,
        path: &str,
        bytes: Bytes,
    ) -> Result<UpstreamReply, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send(
            Method::POST,
            path,
            Some((bytes, headers)),
            self.inference_retry(),
        )
        .await
    }

    /// `GET`s `path` (idempotent: retried on any transient failure).
    ///
    /// # Errors
    /// The last attempt's [`UpstreamError`].
    pub async fn get(&self, path: &str) -> Result<UpstreamReply, UpstreamError> {
        self.send(Method::GET, path, None, Retry::Idempotent).await
    }

    /// Sends `method` to `path` with an optional body and its headers, retrying per
    /// `retry`. Each attempt has the model's timeout; a non-2xx answer is an error.
    ///
    /// # Errors
    /// The last attempt's [`UpstreamError`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, HeaderMap)>,
        retry: Retry,
    ) -> Result<UpstreamReply, UpstreamError> {
        let url = self.url(path);
        let backoff = ExponentialBuilder::new()
            .with_min_delay(FIRST_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.config.retries as usize);
        let attempt = || {
            let mut request = self
                .client
                .request(method.clone(), &url)
                .timeout(self.config.timeout);
            if let Some((bytes, headers)) = &body {
                request = request.headers(headers.clone()).body(bytes.clone());
            }
            self.timed(request)
        };
        let retried = AtomicU32::new(0);
        let result = attempt
            .retry(backoff)
            .when(|e| retry.allows(e))
            .notify(|e, _| {
                let attempt = retried.fetch_add(1, Ordering::Relaxed) + 1;
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(model = %self.config.name, %url, attempt, error = %e, "retrying upstream call");
            })
            .await;
        if let Err(e) = &result {
            log_failure(e, &url, retried.load(Ordering::Relaxed));
        }
        result
    }

    /// One attempt, counted and timed.
    async fn timed(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamReply, UpstreamError> {
        let started = std::time::Instant::now();
        let outcome = self.attempt(request).await;
        let c = &self.counters;
        c.attempts.fetch_add(1, Ordering::Relaxed);
        c.micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if outcome.is_err() {
            c.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn attempt(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamReply, UpstreamError> {
        let mut response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamError::Status {
                model: self.config.name.clone(),
                status: status.as_u16(),
            });
        }
        let headers = response.headers().clone();
        let max = MAX_RESPONSE_BYTES.min(self.answers.bytes());
        let length = response.content_length();
        if length.is_some_and(|n| n > max as u64) {
            return Err(self.too_large(max));
        }
        // Room for the whole answer before its first byte is read: its length, or the
        // most it may be (the excess is handed back once it has been read).
        let expected = length.map_or(max, |n| usize::try_from(n).unwrap_or(max));
        let mut budget = self.answers.reserve(expected).await;
        let mut body = BytesMut::with_capacity(length.map_or(0, |_| expected));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            if body.len() + chunk.len() > max {
                return Err(self.too_large(max));
            }
            body.extend_from_slice(&chunk);
        }
        let excess = budget
            .num_permits()
            .saturating_sub(body.len().div_ceil(1024).max(1));
        if excess > 0 {
            drop(budget.split(excess));
        }
        Ok(UpstreamReply {
            status,
            headers,
            body: body.freeze(),
            _budget: budget,
        })
    }

    fn transport(&self, e: &reqwest::Error) -> UpstreamError {
        let model = self.config.name.clone();
        if e.is_timeout() {
            UpstreamError::Timeout {
                model,
                timeout: self.config.timeout,
            }
        } else if infercache_core::tls::is_tls_failure(e) {
            UpstreamError::Tls {
                model,
                detail: error_chain(e),
            }
        } else if e.is_connect() {
            UpstreamError::Unreachable {
                model,
                detail: error_chain(e),
            }
        } else {
            UpstreamError::Broken {
                model,
                detail: error_chain(e),
            }
        }
    }

    fn too_large(&self, max: usize) -> UpstreamError {
        UpstreamError::bad_response(
            &self.config.name,
            format!(
                "the response exceeds {max} bytes (the answer budget or the largest answer read)"
            ),
        )
    }
}

fn log_failure(error: &UpstreamError, url: &str, retries: u32) {
    match error {
        UpstreamError::Unreachable { detail, .. }
        | UpstreamError::Tls { detail, .. }
        | UpstreamError::Broken { detail, .. } => {
            tracing::warn!(model = error.model(), %url, retries, %detail, "upstream call failed: {error}");
        }
        _ => tracing::warn!(model = error.model(), %url, retries, "upstream call failed: {error}"),
    }
}

/// `e` and its causes, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> UpstreamError {
        UpstreamError::Status {
            model: "m".into(),
            status,
        }
    }

    #[test]
    fn only_safe_failures_are_retried() {
        let refused = UpstreamError::Unreachable {
            model: "m".into(),
            detail: String::new(),
        };
        let timeout = UpstreamError::Timeout {
            model: "m".into(),
            timeout: Duration::from_secs(1),
        };
        for e in [&refused, &status(429), &status(503)] {
            assert!(
                Retry::Unprocessed.allows(e) && Retry::Idempotent.allows(e),
                "{e}"
            );
            assert!(!Retry::Never.allows(e), "{e}");
        }
        for e in [&timeout, &status(502), &status(504)] {
            assert!(
                !Retry::Unprocessed.allows(e) && Retry::Idempotent.allows(e),
                "{e}"
            );
        }
        for e in [&status(500), &UpstreamError::bad_response("m", "x")] {
            assert!(!Retry::Idempotent.allows(e), "{e}");
        }
    }
}
