//! Fetching over HTTP: every body checked against the manifest's size and SHA-256 as it
//! arrives, resumed with `Range` after a dropped connection, retried with backoff.
//!
//! The digest is computed piece by piece as the body arrives (SHA-256 runs faster than a
//! loopback link delivers), so verification costs no second pass over the bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_MATCH, IF_RANGE, RANGE};

use super::disk::{Begin, DiskTier, Writer};
use super::error::{Cause, ClientError};
use crate::digest::Hasher;
use crate::manifest::{Manifest, is_valid_model_name};

/// Largest manifest accepted.
const MAX_MANIFEST: u64 = 16 << 20;

/// Most bytes allocated up front for a body (larger ones grow as they arrive).
const MAX_PREALLOCATION: u64 = 256 << 20;

/// Longest error message read from an error response.
const MAX_ERROR_BODY: usize = 4 << 10;

/// How the client talks to a weight server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Attempts per fetch (the first included). Default 3.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one. Default 100 ms.
    pub backoff: Duration,
    /// Time to connect. Default 2 s.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response. Default 10 s.
    pub read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// A verified body.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bytes, verified.
    pub bytes: Bytes,
    /// From the first request to the last byte.
    pub elapsed: Duration,
    /// Body bytes received, retries included (0 from the disk tier).
    pub wire_bytes: u64,
    /// Whether it came from the disk tier (no request made).
    pub from_disk: bool,
}

/// One weight server and model: the verified transfers a [`StreamingModel`] makes, for
/// tools that need the bytes alone (a mirror, a benchmark of the link).
///
/// [`StreamingModel`]: super::StreamingModel
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    /// `{server}/v1/weights/{model}`.
    base: String,
    config: HttpConfig,
    /// Chunks kept on local disk between runs.
    disk: Option<DiskTier>,
}

/// How one attempt ended.
enum Attempt {
    /// The whole body arrived.
    Done,
    /// Worth another attempt (resuming from what arrived).
    Retry(Cause),
}

impl Fetcher {
    /// A fetcher for `model` on the server at `url` (`http://host:port`).
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad URL, model name or setting.
    pub fn new(url: &str, model: &str, config: HttpConfig) -> Result<Self, ClientError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Config(format!("server URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ClientError::Config(format!(
                "server URL {url:?} must be http:// or https:// with a host"
            )));
        }
        if !is_valid_model_name(model) {
            return Err(ClientError::Config(format!(
                "model name {model:?} is not 1 to 128 of A-Z a-z 0-9 . _ -"
            )));
        }
        if config.attempts == 0 {
            return Err(ClientError::Config("attempts must be at least 1".into()));
        }
        let http = infercache_core::tls::client_builder(&[])
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/v1/weights/{model}", url.trim_end_matches('/')),
            config,
            disk: None,
        })
    }

    /// Keeps chunks in `disk` ([`super::disk`]).
    pub(crate) fn with_disk(mut self, disk: DiskTier) -> Self {
        self.disk = Some(disk);
        self
    }

    /// The model's manifest and its bytes.
    ///
    /// # Errors
    /// [`ClientError::Manifest`] for one that does not parse; a transfer's error.
    pub async fn manifest(&self) -> Result<(Manifest, Bytes), ClientError> {
        let url = format!("{}/manifest", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure: Cause = match self.http.get(&url).send().await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    match read_capped(resp, MAX_MANIFEST).await {
                        Ok(bytes) => {
                            let manifest = Manifest::parse(&bytes)
                                .map_err(|e| ClientError::Manifest(e.to_string()))?;
                            return Ok((manifest, bytes));
                        }
                        Err(ReadError::TooLarge) => {
                            return Err(ClientError::Manifest(format!(
                                "larger than {MAX_MANIFEST} bytes"
                            )));
                        }
                        Err(ReadError::Http(e)) => Arc::new(e),
                    }
                }
                Ok(resp) if retryable(resp.status()) => Arc::new(StatusFailure(resp.status())),
                Ok(resp) => return Err(status_error("manifest", resp).await),
                Err(e) => Arc::new(e),
            };
            if attempt >= self.config.attempts {
                return Err(ClientError::Transport {
                    chunk: "manifest".into(),
                    attempts: attempt,
                    received: 0,
                    source: failure,
                });
            }
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// Chunk `name`, checked against `size` and `sha256`.
    ///
    /// # Errors
    /// A [`ClientError`] naming the chunk: its status, a transfer that failed every
    /// attempt, a body of the wrong size or digest.
    pub async fn chunk(&self, name: &str, size: u64, sha256: &str) -> Result<Fetched, ClientError> {
        let url = format!("{}/chunks/{name}", self.base);
        let Some(disk) = &self.disk else {
            return self.verified(name, &url, size, sha256, None).await;
        };
        let started = Instant::now();
        let stored = |bytes: Bytes| Fetched {
            bytes,
            elapsed: started.elapsed(),
            wire_bytes: 0,
            from_disk: true,
        };
        if let Some(bytes) = disk.get(sha256).await {
            return Ok(stored(bytes));
        }
        match disk.begin(sha256).await {
            Begin::Stored(bytes) => Ok(stored(bytes)),
            Begin::Unavailable => self.verified(name, &url, size, sha256, None).await,
            Begin::Download { so_far, writer } => {
                let result = self
                    .verified(name, &url, size, sha256, Some((so_far, &writer)))
                    .await;
                if result.is_ok() {
                    writer.commit().await;
                }
                result
            }
        }
    }

    /// File `name` (`config.json`, `tokenizer.json`), checked against `size` and `sha256`.
    ///
    /// # Errors
    /// As [`Fetcher::chunk`].
    pub async fn file(&self, name: &str, size: u64, sha256: &str) -> Result<Fetched, ClientError> {
        let url = format!("{}/files/{name}", self.base);
        self.verified(name, &url, size, sha256, None).await
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.config
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
    }

    /// Fetches `url` until it has `size` bytes whose SHA-256 is `sha256`. With `disk`,
    /// starts from the bytes a cut-short download left (a `Range` request for the rest)
    /// and hands every byte that arrives to its writer; a resumed body that fails its
    /// digest is fetched once more from the start.
    async fn verified(
        &self,
        what: &str,
        url: &str,
        size: u64,
        sha256: &str,
        disk: Option<(Vec<u8>, &Writer)>,
    ) -> Result<Fetched, ClientError> {
        let started = Instant::now();
        let etag = format!("\"{sha256}\"");
        let mut body = Body {
            what,
            size,
            buf: BytesMut::with_capacity(
                usize::try_from(size.min(MAX_PREALLOCATION)).expect("bounded above"),
            ),
            hasher: Hasher::default(),
            wire: 0,
        };
        let (so_far, writer) = match disk {
            Some((so_far, writer)) => (so_far, Some(writer)),
            None => (Vec::new(), None),
        };
        let mut resumed = false;
        if let Some(w) = writer {
            if so_far.len() as u64 <= size {
                body.hasher.update(&so_far);
                body.buf.extend_from_slice(&so_far);
                resumed = !so_far.is_empty();
            } else {
                w.restart().await;
            }
        }
        loop {
            let result = if resumed && body.buf.len() as u64 == size {
                // A download that arrived whole but was not stored: nothing to request.
                Fetched {
                    bytes: std::mem::take(&mut body.buf).freeze(),
                    elapsed: started.elapsed(),
                    wire_bytes: 0,
                    from_disk: false,
                }
            } else {
                self.receive(url, &etag, &mut body, writer, started).await?
            };
            let actual = std::mem::take(&mut body.hasher).finish_hex();
            if actual == sha256 {
                return Ok(result);
            }
            if let Some(w) = writer {
                w.restart().await;
            }
            if resumed {
                // The bytes kept on disk were not the chunk's: once more, from the start.
                tracing::warn!(
                    chunk = what,
                    "a resumed chunk failed its digest; fetching it whole"
                );
                resumed = false;
                body.restart();
                continue;
            }
            return Err(ClientError::Digest {
                chunk: what.to_owned(),
                expected: sha256.to_owned(),
                actual,
            });
        }
    }

    /// Attempts until `body` holds `size` bytes (not yet checked against the digest).
    async fn receive(
        &self,
        url: &str,
        etag: &str,
        body: &mut Body<'_>,
        writer: Option<&Writer>,
        started: Instant,
    ) -> Result<Fetched, ClientError> {
        let what = body.what;
        let size = body.size;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cause = match self.attempt(url, etag, body, writer).await? {
                Attempt::Done => break,
                Attempt::Retry(cause) => cause,
            };
            if attempt >= self.config.attempts {
                let received = body.buf.len() as u64;
                return Err(if received > 0 {
                    ClientError::Truncated {
                        chunk: what.to_owned(),
                        expected: size,
                        received,
                    }
                } else {
                    ClientError::Transport {
                        chunk: what.to_owned(),
                        attempts: attempt,
                        received,
                        source: cause,
                    }
                });
            }
            tracing::debug!(chunk = what, attempt, error = %cause, "fetch failed; retrying");
            tokio::time::sleep(self.backoff(attempt)).await;
        }
        Ok(Fetched {
            bytes: std::mem::take(&mut body.buf).freeze(),
            elapsed: started.elapsed(),
            wire_bytes: body.wire,
            from_disk: false,
        })
    }

    /// One request: the whole body, or the rest of it when some arrived before.
    async fn attempt(
        &self,
        url: &str,
        etag: &str,
        body: &mut Body<'_>,
        writer: Option<&Writer>,
    ) -> Result<Attempt, ClientError> {
        let resume = body.buf.len() as u64;
        let mut req = self.http.get(url).header(IF_MATCH, etag);
        if resume > 0 {
            req = req
                .header(RANGE, format!("bytes={resume}-"))
                .header(IF_RANGE, etag);
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(Arc::new(e))),
        };
        let status = resp.status();
        if let Some(sent) = resp.headers().get(ETAG)
            && sent.as_bytes() != etag.as_bytes()
            && (status.is_success() || status == StatusCode::PRECONDITION_FAILED)
        {
            return Err(ClientError::Changed {
                chunk: body.what.to_owned(),
                etag: String::from_utf8_lossy(sent.as_bytes()).into_owned(),
            });
        }
        match status {
            StatusCode::OK => {
                body.restart();
                if resume > 0
                    && let Some(w) = writer
                {
                    w.restart().await;
                }
            }
            StatusCode::PARTIAL_CONTENT if resume > 0 => {
                let expected = format!("bytes {resume}-{}/{}", body.size - 1, body.size);
                if resp.headers().get(CONTENT_RANGE).map(|v| v.as_bytes())
                    != Some(expected.as_bytes())
                {
                    body.restart();
                    if let Some(w) = writer {
                        w.restart().await;
                    }
                    return Ok(Attempt::Retry(Arc::new(StatusFailure(status))));
                }
            }
            StatusCode::PRECONDITION_FAILED => {
                return Err(ClientError::Changed {
                    chunk: body.what.to_owned(),
                    etag: "(none)".into(),
                });
            }
            s if retryable(s) => return Ok(Attempt::Retry(Arc::new(StatusFailure(s)))),
            _ => return Err(status_error(body.what, resp).await),
        }
        let remaining = body.size - body.buf.len() as u64;
        match resp.content_length() {
            Some(n) if n > remaining => {
                return Err(ClientError::Oversized {
                    chunk: body.what.to_owned(),
                    expected: body.size,
                });
            }
            Some(n) if n < remaining => {
                return Err(ClientError::Truncated {
                    chunk: body.what.to_owned(),
                    expected: body.size,
                    received: body.buf.len() as u64 + n,
                });
            }
            _ => {}
        }
        loop {
            match resp.chunk().await {
                Ok(Some(piece)) => {
                    body.push(&piece)?;
                    if let Some(w) = writer {
                        w.push(piece).await;
                    }
                }
                Ok(None) => break,
                Err(e) => return Ok(Attempt::Retry(Arc::new(e))),
            }
        }
        if (body.buf.len() as u64) < body.size {
            return Ok(Attempt::Retry(Arc::new(ShortBody)));
        }
        Ok(Attempt::Done)
    }
}

/// A body being received.
struct Body<'a> {
    what: &'a str,
    size: u64,
    buf: BytesMut,
    hasher: Hasher,
    wire: u64,
}

impl Body<'_> {
    fn restart(&mut self) {
        self.buf.clear();
        self.hasher = Hasher::default();
    }

    fn push(&mut self, piece: &[u8]) -> Result<(), ClientError> {
        if self.buf.len() as u64 + piece.len() as u64 > self.size {
            return Err(ClientError::Oversized {
                chunk: self.what.to_owned(),
                expected: self.size,
            });
        }
        self.hasher.update(piece);
        self.buf.extend_from_slice(piece);
        self.wire += piece.len() as u64;
        Ok(())
    }
}

fn retryable(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS
}

/// A status worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {0}")]
struct StatusFailure(StatusCode);

/// A body that ended without an error before its length.
#[derive(Debug, thiserror::Error)]
#[error("the body ended early")]
struct ShortBody;

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_capped(mut resp: reqwest::Response, cap: u64) -> Result<Bytes, ReadError> {
    let mut out = BytesMut::new();
    while let Some(piece) = resp.chunk().await.map_err(ReadError::Http)? {
        if out.len() as u64 + piece.len() as u64 > cap {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&piece);
    }
    Ok(out.freeze())
}

/// The error for a final status, with the message of the server's JSON error body.
async fn status_error(what: &str, resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let body = read_capped(resp, MAX_ERROR_BODY as u64)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned()
        });
    ClientError::Status {
        chunk: what.to_owned(),
        status,
        message,
    }
}
