//! Fetching over HTTP: every body checked against the manifest's size and SHA-256 as it
//! arrives, resumed with `Range` after a dropped connection, retried with backoff
//! (`backon`'s exponential backoff without jitter: transport errors, 5xx and 429 are
//! retried, up to [`HttpConfig::attempts`] attempts in all; any other status, a body of
//! the wrong size and a changed chunk are final).
//!
//! The digest is computed piece by piece as the body arrives, on a blocking thread of its
//! own: the task reading the connection copies each piece into the body's buffer, hands
//! the piece as it arrived over (shared, not copied again) and reads on, so hashing
//! overlaps the network instead of stalling it, and verification costs no second pass
//! over the bytes. On a loopback link the SHA-256 of a piece takes about as long as
//! receiving it: run in line, it held the connection's reader up for half its time.
//!
//! Bodies are received into buffers from a [`BufferPool`] (one per fetcher unless
//! shared with [`Fetcher::with_buffer_pool`]): a body dropped gives its buffer back for
//! the next, so a stream of chunks does not fault in and zero fresh pages for each.
//! [`Fetcher::chunks`] fetches a list of chunks in order with the next one's request and
//! body under way while the previous one's digest finishes (at most [`PIPELINE`] at
//! once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _, RetryableWithContext as _};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_MATCH, IF_RANGE, RANGE};

use super::disk::{Begin, DiskTier, Writer};
use super::error::{Cause, ClientError};
use super::pool::{Buffer, BufferPool, DEFAULT_POOL_BYTES};
use crate::digest::Hasher;
use crate::manifest::{
    CONFIG_FILE, ChunkInfo, FileInfo, Manifest, TOKENIZER_FILE, is_valid_model_name,
};

/// Largest manifest accepted.
const MAX_MANIFEST: u64 = 16 << 20;

/// Most bytes allocated up front for a body (larger ones grow as they arrive).
const MAX_PREALLOCATION: u64 = 256 << 20;

/// Parts of a body queued for its [`Verifier`] (each one piece as the HTTP client read it,
/// at most a few hundred KiB).
const VERIFY_QUEUE: usize = 16;

/// Chunks [`Fetcher::chunks`] has under way at once: the one whose digest is finishing
/// (or that waits to be taken) and the next, already requested.
pub const PIPELINE: usize = 2;

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
    model: String,
    /// `{server}/v1/weights/{model}`.
    base: String,
    config: HttpConfig,
    /// Chunks kept on local disk between runs.
    disk: Option<DiskTier>,
    /// Buffers for bodies.
    pool: BufferPool,
}

/// What a client reads first ([`Fetcher::connect`]).
#[derive(Debug, Clone)]
pub struct Connected {
    /// The model's manifest, for the model asked for.
    pub manifest: Manifest,
    /// `config.json`: its manifest entry and its bytes, verified.
    pub config: (FileInfo, Fetched),
    /// `tokenizer.json`: its manifest entry and its bytes, verified.
    pub tokenizer: (FileInfo, Fetched),
}

/// Why an attempt did not end the fetch.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Worth another attempt.
    #[error(transparent)]
    Retry(Cause),
    /// The fetch's answer.
    #[error(transparent)]
    Final(ClientError),
}

impl Failure {
    fn is_retry(&self) -> bool {
        matches!(self, Self::Retry(_))
    }
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
            model: model.to_owned(),
            base: format!("{}/v1/weights/{model}", url.trim_end_matches('/')),
            config,
            disk: None,
            pool: BufferPool::new(DEFAULT_POOL_BYTES),
        })
    }

    /// Receives bodies into `pool`'s buffers (default: a pool of its own keeping
    /// [`DEFAULT_POOL_BYTES`]); fetchers given one pool reuse each other's buffers.
    #[must_use]
    pub fn with_buffer_pool(mut self, pool: BufferPool) -> Self {
        self.pool = pool;
        self
    }

    /// The pool bodies are received into.
    pub fn buffer_pool(&self) -> &BufferPool {
        &self.pool
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
        let attempts = AtomicU32::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            match self.http.get(&url).send().await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    match read_capped(resp, MAX_MANIFEST).await {
                        Ok(bytes) => Manifest::parse(&bytes)
                            .map(|manifest| (manifest, bytes))
                            .map_err(|e| Failure::Final(ClientError::Manifest(e.to_string()))),
                        Err(ReadError::TooLarge) => Err(Failure::Final(ClientError::Manifest(
                            format!("larger than {MAX_MANIFEST} bytes"),
                        ))),
                        Err(ReadError::Http(e)) => Err(Failure::Retry(Arc::new(e))),
                    }
                }
                Ok(resp) if retryable(resp.status()) => {
                    Err(Failure::Retry(Arc::new(StatusFailure(resp.status()))))
                }
                Ok(resp) => Err(Failure::Final(status_error("manifest", resp).await)),
                Err(e) => Err(Failure::Retry(Arc::new(e))),
            }
        };
        attempt
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(Failure::is_retry)
            .notify(
                |e, _| tracing::debug!(chunk = "manifest", error = %e, "fetch failed; retrying"),
            )
            .await
            .map_err(|failure| match failure {
                Failure::Final(e) => e,
                Failure::Retry(source) => ClientError::Transport {
                    chunk: "manifest".into(),
                    attempts: attempts.load(Ordering::Relaxed),
                    received: 0,
                    source,
                },
            })
    }

    /// The connect step every client starts with: the manifest, refused when it names
    /// another model, and the `config.json` and `tokenizer.json` it lists, both fetched
    /// at once and verified.
    ///
    /// # Errors
    /// [`ClientError::ForeignManifest`] for another model's manifest;
    /// [`ClientError::Manifest`] for one that does not parse or lists no config or
    /// tokenizer; a transfer's error.
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        let (manifest, _) = self.manifest().await?;
        if manifest.model_name != self.model {
            return Err(ClientError::ForeignManifest {
                expected: self.model.clone(),
                found: manifest.model_name,
            });
        }
        let entry = |name: &str| {
            manifest
                .files
                .get(name)
                .cloned()
                .ok_or_else(|| ClientError::Manifest(format!("{name} is not listed")))
        };
        let (config, tokenizer) = (entry(CONFIG_FILE)?, entry(TOKENIZER_FILE)?);
        let (config_bytes, tokenizer_bytes) = tokio::try_join!(
            self.file(CONFIG_FILE, config.size_bytes, &config.sha256),
            self.file(TOKENIZER_FILE, tokenizer.size_bytes, &tokenizer.sha256),
        )?;
        Ok(Connected {
            manifest,
            config: (config, config_bytes),
            tokenizer: (tokenizer, tokenizer_bytes),
        })
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

    /// Every chunk of `wanted`, in its order, each checked as [`Fetcher::chunk`] checks
    /// it: the next chunk's request and body are under way while the previous one's
    /// digest finishes and while the caller uses it, at most [`PIPELINE`] chunks at once
    /// (so at most that many bodies in flight besides the ones the caller keeps). A chunk
    /// is yielded only once its digest passed; the first error is yielded and the stream
    /// should then be dropped (the chunks after it are not waited for).
    pub fn chunks<'a>(
        &'a self,
        wanted: impl IntoIterator<Item = (&'a str, &'a ChunkInfo)> + 'a,
    ) -> impl Stream<Item = Result<(&'a str, Fetched), ClientError>> + 'a {
        futures_util::stream::iter(wanted)
            .map(move |(name, info)| async move {
                let fetched = self.chunk(name, info.size_bytes, &info.sha256).await?;
                Ok((name, fetched))
            })
            .buffered(PIPELINE)
    }

    /// File `name` (`config.json`, `tokenizer.json`), checked against `size` and `sha256`.
    ///
    /// # Errors
    /// As [`Fetcher::chunk`].
    pub async fn file(&self, name: &str, size: u64, sha256: &str) -> Result<Fetched, ClientError> {
        let url = format!("{}/files/{name}", self.base);
        self.verified(name, &url, size, sha256, None).await
    }

    /// The waits between attempts: `backoff`, doubled before each later one, without
    /// jitter, `attempts - 1` of them.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(usize::try_from(self.config.attempts - 1).unwrap_or(usize::MAX))
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
        let mut body = Body::new(what, size, &self.pool);
        let (so_far, writer) = match disk {
            Some((so_far, writer)) => (so_far, Some(writer)),
            None => (Vec::new(), None),
        };
        let mut resumed = false;
        if let Some(w) = writer {
            if so_far.len() as u64 <= size {
                resumed = !so_far.is_empty();
                body.append(Bytes::from(so_far)).await?;
            } else {
                w.restart().await;
            }
        }
        loop {
            // A resumed download that arrived whole but was not stored needs no request.
            if !(resumed && body.received == size) {
                let outcome;
                (body, outcome) = self.receive(url, &etag, body, writer).await;
                outcome?;
            }
            let (actual, bytes) = body.finish().await?;
            if actual == sha256 {
                return Ok(Fetched {
                    bytes,
                    elapsed: started.elapsed(),
                    wire_bytes: body.wire,
                    from_disk: false,
                });
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

    /// Attempts until `body` holds `size` bytes (not yet checked against the digest);
    /// `body` comes back with the outcome.
    async fn receive<'a>(
        &self,
        url: &str,
        etag: &str,
        body: Body<'a>,
        writer: Option<&Writer>,
    ) -> (Body<'a>, Result<(), ClientError>) {
        let attempts = AtomicU32::new(0);
        let attempt = |mut body: Body<'a>| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                let outcome = match self.attempt(url, etag, &mut body, writer).await {
                    Ok(Attempt::Done) => Ok(()),
                    Ok(Attempt::Retry(cause)) => Err(Failure::Retry(cause)),
                    Err(e) => Err(Failure::Final(e)),
                };
                (body, outcome)
            }
        };
        let what = body.what;
        let (body, outcome) = attempt
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(Failure::is_retry)
            .notify(|e, _| tracing::debug!(chunk = what, error = %e, "fetch failed; retrying"))
            .context(body)
            .await;
        let outcome = outcome.map_err(|failure| match failure {
            Failure::Final(e) => e,
            Failure::Retry(_) if body.received > 0 => ClientError::Truncated {
                chunk: what.to_owned(),
                expected: body.size,
                received: body.received,
            },
            Failure::Retry(source) => ClientError::Transport {
                chunk: what.to_owned(),
                attempts: attempts.load(Ordering::Relaxed),
                received: 0,
                source,
            },
        });
        (body, outcome)
    }

    /// One request: the whole body, or the rest of it when some arrived before.
    async fn attempt(
        &self,
        url: &str,
        etag: &str,
        body: &mut Body<'_>,
        writer: Option<&Writer>,
    ) -> Result<Attempt, ClientError> {
        let resume = body.received;
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
        let remaining = body.size - body.received;
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
                    received: body.received + n,
                });
            }
            _ => {}
        }
        loop {
            match resp.chunk().await {
                Ok(Some(piece)) => {
                    body.push(piece.clone()).await?;
                    if let Some(w) = writer {
                        w.push(piece).await;
                    }
                }
                Ok(None) => break,
                Err(e) => return Ok(Attempt::Retry(Arc::new(e))),
            }
        }
        if body.received < body.size {
            return Ok(Attempt::Retry(Arc::new(ShortBody)));
        }
        Ok(Attempt::Done)
    }
}

/// A body being received: each piece is copied once, into a buffer sized for the whole
/// body (from the fetcher's pool), and handed as it arrived (shared, not copied) to its
/// [`Verifier`].
struct Body<'a> {
    what: &'a str,
    size: u64,
    pool: &'a BufferPool,
    /// The body so far, in room for all of it (taken from the pool with the first bytes).
    buf: Option<Buffer>,
    received: u64,
    verifier: Verifier,
    wire: u64,
}

impl<'a> Body<'a> {
    fn new(what: &'a str, size: u64, pool: &'a BufferPool) -> Self {
        Self {
            what,
            size,
            pool,
            buf: None,
            received: 0,
            verifier: Verifier::default(),
            wire: 0,
        }
    }

    fn restart(&mut self) {
        if let Some(buf) = &mut self.buf {
            buf.clear();
        }
        self.received = 0;
        self.verifier = Verifier::default();
    }

    /// Bytes that arrived before (a resumed download's), not counted as received now.
    async fn append(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        let buf = match &mut self.buf {
            Some(buf) => buf,
            empty => {
                let room = usize::try_from(self.size.min(MAX_PREALLOCATION)).expect("bounded");
                empty.insert(self.pool.take(room).map_err(|e| no_memory(self.what, e))?)
            }
        };
        buf.extend_from_slice(&bytes)
            .map_err(|e| no_memory(self.what, e))?;
        self.received += bytes.len() as u64;
        self.verifier.update(bytes).await;
        Ok(())
    }

    async fn push(&mut self, piece: Bytes) -> Result<(), ClientError> {
        if self.received + piece.len() as u64 > self.size {
            return Err(ClientError::Oversized {
                chunk: self.what.to_owned(),
                expected: self.size,
            });
        }
        self.wire += piece.len() as u64;
        self.append(piece).await
    }

    /// The SHA-256 of the bytes received and the bytes (their buffer goes back to the
    /// pool when they are dropped); the body starts over empty.
    async fn finish(&mut self) -> Result<(String, Bytes), ClientError> {
        let verifier = std::mem::take(&mut self.verifier);
        self.received = 0;
        let digest = verifier.finish().await?;
        let body = match self.buf.take() {
            Some(whole) => self.pool.hand_out(whole),
            None => Bytes::new(),
        };
        Ok((digest, body))
    }
}

fn no_memory(chunk: &str, e: std::io::Error) -> ClientError {
    ClientError::Memory {
        chunk: chunk.to_owned(),
        source: Arc::new(e),
    }
}

/// The SHA-256 of a body, computed on the blocking pool while the body arrives: its
/// pieces queue for it (at most [`VERIFY_QUEUE`], so a slow hash slows the reader instead
/// of piling up memory) and [`Verifier::finish`] waits for the last one. The thread starts
/// with the first piece; dropping the verifier lets it end.
#[derive(Default)]
struct Verifier(Option<Hashing>);

struct Hashing {
    parts: tokio::sync::mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<String>,
}

impl Verifier {
    async fn update(&mut self, part: Bytes) {
        let hashing = self.0.get_or_insert_with(|| {
            let (parts, mut rx) = tokio::sync::mpsc::channel::<Bytes>(VERIFY_QUEUE);
            let done = tokio::task::spawn_blocking(move || {
                let mut hasher = Hasher::default();
                while let Some(part) = rx.blocking_recv() {
                    hasher.update(&part);
                }
                hasher.finish_hex()
            });
            Hashing { parts, done }
        });
        // The thread receives until this sender is dropped.
        let _ = hashing.parts.send(part).await;
    }

    /// The digest of every part.
    async fn finish(self) -> Result<String, ClientError> {
        let Some(Hashing { parts, done }) = self.0 else {
            return Ok(Hasher::default().finish_hex());
        };
        drop(parts);
        done.await.map_err(|e| ClientError::Inference {
            source: Arc::new(e),
        })
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
