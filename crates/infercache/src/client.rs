//! The connection of the admin commands (`stats`, `warm`, `invalidate`) to a running
//! server: its URL and admin key, and one request function that turns "cannot connect"
//! and error responses into messages a user can act on.

use std::time::Duration;

use anyhow::Context as _;
use backon::{ConstantBuilder, Retryable as _};
use clap::Args;
use reqwest::{Method, StatusCode, Url, header};
use serde::Deserialize as _;
use serde_json::Value;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take; well above the server's default request timeout (30 s),
/// so the server's own 504 is what a user sees.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a request is sent again while the server answers 429 (busy).
pub const BUSY_RETRIES: usize = 10;
/// The longest wait before sending again, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Where the server is and how to authenticate to it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of the running server.
    #[arg(
        long,
        env = "INFERCACHE_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Admin API key, sent as `Authorization: Bearer KEY`; needed when the server has an
    /// API keys file.
    #[arg(
        long,
        env = "INFERCACHE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
}

impl ServerArgs {
    /// The API key, if one is given.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref().filter(|k| !k.is_empty())
    }
}

/// An HTTP client bound to one server.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    api_key: Option<String>,
}

/// A successful (2xx) or refused response, before it is judged.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// `Retry-After` in seconds, if the server sent one.
    pub retry_after: Option<u64>,
    pub body: Value,
    /// `X-Cache-Hits`: rows the server served from its cache, if it said.
    pub cache_hits: Option<u64>,
    /// The body as text, for error responses that are not JSON.
    text: String,
}

impl Client {
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        Self::connect(&args.url, args.api_key.clone())
    }

    /// A client of the server at `url`, authenticating with `api_key`.
    pub fn connect(url: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let mut base: Url = url.parse().with_context(|| {
            format!("invalid --url {url:?}: expected e.g. http://127.0.0.1:8080")
        })?;
        if base.scheme() != "http" {
            anyhow::bail!(
                "invalid --url {url:?}: only http:// is supported (put a TLS proxy in front of the server)"
            );
        }
        // Relative joins keep a path prefix such as `http://host/infercache/`.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = infercache_core::tls::client_builder(&[])
            .context("setting up TLS for the HTTP client")?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
        })
    }

    /// `GET path`; the JSON body of a 2xx answer, else an error with the server's message.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None).await?.into_ok()
    }

    /// `POST path` with a JSON body; the JSON body of a 2xx answer, else an error with the
    /// server's message.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Some(body)).await?.into_ok()
    }

    /// Sends a request and reads the whole answer, whatever its status. Fails only when
    /// the server cannot be reached or its answer cannot be read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let url = self
            .base
            .join(path)
            .with_context(|| format!("building the URL of {path}"))?;
        let mut request = self.http.request(method.clone(), url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let cache_hits = response
            .headers()
            .get("x-cache-hits")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} /{path}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() && body.is_null() {
            anyhow::bail!(
                "{method} /{path} answered {status} without a JSON body; is {} an infercache server?",
                self.base
            );
        }
        Ok(Reply {
            status,
            retry_after,
            body,
            cache_hits,
            text,
        })
    }

    /// Sends like [`Client::send`], and again while the server answers 429 (busy): after
    /// its `Retry-After` (1 s without one, at most 10 s), up to [`BUSY_RETRIES`] times, the
    /// last answer returned whatever it is. `on_wait` hears of each wait and its number.
    /// backon runs the retries: a 429 is the one error it retries, and `adjust` makes each
    /// pause the server's `Retry-After`.
    pub async fn send_while_busy(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        mut on_wait: impl FnMut(Duration, usize),
    ) -> anyhow::Result<Reply> {
        /// Why an attempt did not end the request.
        enum Failed {
            Busy(Reply),
            Other(anyhow::Error),
        }
        let attempt = || async {
            match self.send(method.clone(), path, body).await {
                Ok(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => {
                    Err(Failed::Busy(reply))
                }
                Ok(reply) => Ok(reply),
                Err(e) => Err(Failed::Other(e)),
            }
        };
        let mut waits = 0;
        let result = attempt
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_secs(1))
                    .with_max_times(BUSY_RETRIES),
            )
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, Failed::Busy(_)))
            .adjust(|e, pause| match e {
                Failed::Busy(reply) => pause.map(|_| {
                    Duration::from_secs(reply.retry_after.unwrap_or(1)).min(MAX_RETRY_WAIT)
                }),
                Failed::Other(_) => None,
            })
            .notify(|_, wait| {
                waits += 1;
                on_wait(wait, waits);
            })
            .await;
        match result {
            Ok(reply) | Err(Failed::Busy(reply)) => Ok(reply),
            Err(Failed::Other(e)) => Err(e),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let what = if e.is_timeout() {
            format!(
                "the infercache server at {} did not answer in time",
                self.base
            )
        } else {
            format!(
                "cannot reach the infercache server at {}; is `infercache serve` running \
                 there? (set --url or INFERCACHE_URL)",
                self.base
            )
        };
        anyhow::Error::new(e).context(what)
    }
}

impl Reply {
    /// The body of a 2xx answer; otherwise an error carrying the server's own message.
    pub fn into_ok(self) -> anyhow::Result<Value> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let error = infercache_api::ErrorBody::deserialize(&self.body).ok();
        let mut message = match &error {
            Some(e) => format!("the server answered {}: {}", self.status, e.error.message),
            None => {
                let text: String = self.text.trim().chars().take(200).collect();
                if text.is_empty() {
                    format!("the server answered {}", self.status)
                } else {
                    format!("the server answered {}: {text}", self.status)
                }
            }
        };
        if let Some(e) = &error {
            message.push_str(&format!(" ({})", e.error.code));
        }
        if matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            message.push_str("; pass an admin key with --api-key or INFERCACHE_API_KEY");
        }
        Err(anyhow::Error::msg(message))
    }
}

/// A current-thread runtime for the admin commands: one request at a time.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::StatusCode as Status;
    use axum::response::IntoResponse as _;

    use super::*;

    /// A server on a loopback port that answers 429 (`Retry-After: 0`) to its first
    /// `busy` requests and 200 to the rest; its URL and its count of requests.
    async fn busy_server(busy: usize) -> (String, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < busy {
                    (Status::TOO_MANY_REQUESTS, [("retry-after", "0")], "{}").into_response()
                } else {
                    (Status::OK, "{\"ok\": true}").into_response()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn a_busy_server_is_asked_again_after_its_retry_after() {
        let (url, seen) = busy_server(2).await;
        let client = Client::connect(&url, None).unwrap();
        let mut waits = Vec::new();
        let reply = client
            .send_while_busy(Method::POST, "x", Some(&Value::Null), |wait, n| {
                waits.push((wait, n));
            })
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(waits, [(Duration::ZERO, 1), (Duration::ZERO, 2)]);
    }

    #[tokio::test]
    async fn a_server_busy_every_time_gets_the_last_429_back_after_the_retries() {
        let (url, seen) = busy_server(usize::MAX).await;
        let client = Client::connect(&url, None).unwrap();
        let reply = client
            .send_while_busy(Method::GET, "x", None, |_, _| {})
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(seen.load(Ordering::SeqCst), 1 + BUSY_RETRIES);
        let e = reply.into_ok().unwrap_err().to_string();
        assert!(e.contains("429"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_not_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::connect(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let mut waits = 0;
        let e = client
            .send_while_busy(Method::GET, "x", None, |_, _| waits += 1)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("cannot reach"), "{e:#}");
        assert_eq!(waits, 0);
    }
}
