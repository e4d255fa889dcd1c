//! Models behind upstream model servers, as [`Backend`]s: one client per protocol.
//!
//! | kind | upstream call | file |
//! |---|---|---|
//! | `kserve-v2` | `POST {url}/v2/models/{upstream_name}/infer`, binary tensors; `GET` metadata and readiness | [`kserve`] |
//! | `openai` | `POST {url}/v1/embeddings` | [`openai`] |
//! | `tei` | `POST {url}/embed` | [`tei`] |
//! | `ersilia` | `POST {url}/run` | [`ersilia`] |
//! | `http-json` | `POST {url}` with `{"inputs", "parameters"}` | [`http_json`] |
//!
//! Every call goes through [`client::Upstream`]: one shared connection pool (no
//! redirects, no proxy from the environment: an upstream is exactly the URL configured;
//! `http://` or `https://`, TLS as `infercache_core::tls` sets it up, and a pool of its
//! own for a model with a `ca_file`),
//! the model's timeout on every attempt, a bound on the answer's size, and retries only
//! where a retry is safe. A failure is an [`UpstreamError`] naming the model; a 2xx answer
//! the protocol cannot use (not JSON, the wrong number of rows) is
//! [`UpstreamError::BadResponse`], and nothing of it is stored.
//!
//! The inbound half of each protocol (parsing a client's request into
//! [`Inputs`], rendering stored rows back) is the server's;
//! this crate only talks to upstreams. [`backend`] builds the backend of one validated
//! `[[models]]` entry, sharing a [`Pool`]: the connection pool and the budget of answer
//! bytes being read at once.
//!
//! With the `test-support` feature, `testing` starts real upstreams of every protocol
//! on loopback that count their calls and rows.

pub mod client;
pub mod ersilia;
pub mod http_json;
pub mod kserve;
pub mod openai;
pub mod tei;
#[cfg(feature = "test-support")]
pub mod testing;

use std::sync::Arc;

use bytes::Bytes;
use infercache_backend::{Backend, BackendError, BackendKind, Inputs, ModelConfig, ModelInfo};
use infercache_core::tls;

pub use client::{MAX_RESPONSE_BYTES, Retry, Upstream, UpstreamReply};
pub use infercache_backend::UpstreamError;

/// Idle connections kept per upstream host.
const POOL_IDLE_PER_HOST: usize = 64;

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file of a model cannot be used.
    #[error("model `{model}`: ca_file: {source}")]
    CaFile {
        /// The model.
        model: String,
        /// What is wrong with its file.
        #[source]
        source: tls::TlsError,
    },
    /// TLS setup failed.
    #[error("building the upstream HTTP client: {0}")]
    Tls(#[from] tls::TlsError),
    /// The client itself could not be built.
    #[error("building the upstream HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// What every upstream shares: one connection pool, and the budget of answer bytes being
/// read and parsed at once.
///
/// The budget bounds the memory upstream answers take: each answer holds its length
/// (its `Content-Length`, or the most it may be until it has been read) from before its
/// first byte is read until its rows are made; an answer that finds no room waits (its
/// computation is paid for already), within the model's timeout. It is separate from the
/// server's budget of request bodies, which a request holds while it waits for its
/// upstream: one budget for both could be filled by requests waiting on answers that can
/// never be read.
#[derive(Debug, Clone)]
pub struct Pool {
    client: reqwest::Client,
    answers: Arc<AnswerBudget>,
}

fn build(extra_roots: &[tls::CertificateDer<'static>]) -> Result<reqwest::Client, ClientError> {
    // No redirects (a POST would come back as a GET elsewhere) and no proxy from the
    // environment: an upstream is exactly the URL configured.
    tls::client_builder(extra_roots)?
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(ClientError::Build)
}

/// The answer budget: a semaphore of KiB.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    semaphore: Arc<tokio::sync::Semaphore>,
    bytes: usize,
}

impl Pool {
    /// A pool whose answers being read at once total at most `answer_budget` bytes
    /// (and no answer is larger than that).
    ///
    /// # Errors
    /// [`ClientError`] if the TLS or resolver setup of the HTTP client fails.
    pub fn new(answer_budget: usize) -> Result<Self, ClientError> {
        let client = build(&[])?;
        let kib = answer_budget.div_ceil(1024).max(1);
        Ok(Self {
            client,
            answers: Arc::new(AnswerBudget {
                semaphore: Arc::new(tokio::sync::Semaphore::new(kib)),
                bytes: kib * 1024,
            }),
        })
    }
}

impl Pool {
    /// The pool of `config`: this one for a model without a `ca_file`; for one with it, a
    /// connection pool of its own that trusts the file's CAs as well, sharing this one's
    /// answer budget. The file is read here, once, at start-up.
    ///
    /// # Errors
    /// [`ClientError::CaFile`] naming the model when its file cannot be read or holds no
    /// usable CA certificate.
    pub fn for_model(&self, config: &ModelConfig) -> Result<Self, ClientError> {
        let Some(path) = &config.ca_file else {
            return Ok(self.clone());
        };
        let roots = tls::read_ca_file(path).map_err(|source| ClientError::CaFile {
            model: config.name.clone(),
            source,
        })?;
        Ok(Self {
            client: build(&roots)?,
            answers: Arc::clone(&self.answers),
        })
    }

    /// The upstream of `config` (a model with a `url`), sharing this pool.
    pub fn upstream(&self, config: &ModelConfig) -> Upstream {
        Upstream::new(
            config.clone(),
            self.client.clone(),
            Arc::clone(&self.answers),
        )
    }
}

impl AnswerBudget {
    /// Room for `bytes` of an answer (at most the whole budget), waited for.
    pub(crate) async fn reserve(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let kib = bytes.min(self.bytes).div_ceil(1024).max(1);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        Arc::clone(&self.semaphore)
            .acquire_many_owned(kib)
            .await
            .expect("the answer budget is never closed")
    }

    /// Its size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The backend of `config`, sharing `pool`; `None` for the built-in model, which has no
/// upstream.
pub fn backend(config: &ModelConfig, pool: &Pool) -> Option<Arc<dyn Backend>> {
    let upstream = Upstream::new(
        config.clone(),
        pool.client.clone(),
        Arc::clone(&pool.answers),
    );
    Some(match config.backend {
        BackendKind::Builtin => return None,
        BackendKind::KServeV2 => Arc::new(kserve::Kserve::new(upstream)),
        BackendKind::OpenAi => Arc::new(openai::OpenAi::new(upstream)),
        BackendKind::Tei => Arc::new(tei::Tei::new(upstream)),
        BackendKind::Ersilia => Arc::new(ersilia::Ersilia::new(upstream)),
        BackendKind::HttpJson => Arc::new(http_json::HttpJson::new(upstream)),
    })
}

/// The identity of an upstream model: its configured name and version, and what
/// computes its output ([`ModelConfig::artifact_key`]: the operator's digest, else the
/// upstream's protocol, server and name).
fn info(config: &ModelConfig) -> ModelInfo {
    ModelInfo {
        name: config.name.clone(),
        aliases: Vec::new(),
        kind: config.backend,
        version: config.version.clone(),
        digest: config.digest.clone(),
        upstream: config.artifact_key(),
        dims: None,
    }
}

/// The texts at `rows` of text inputs, and the embedding size asked for.
fn texts_of(inputs: &Inputs, rows: &[usize]) -> Result<(Vec<String>, Option<u64>), BackendError> {
    match inputs {
        Inputs::Texts { texts, dimensions } => Ok((
            rows.iter().map(|&i| texts[i].clone()).collect(),
            *dimensions,
        )),
        _ => Err(BackendError::failed(
            "this model takes texts (a bug otherwise)",
        )),
    }
}

/// Stored forms of JSON output rows: each row's text as the upstream wrote it.
fn raw_rows(rows: &[&serde_json::value::RawValue]) -> Vec<Bytes> {
    rows.iter()
        .map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
        .collect()
}
