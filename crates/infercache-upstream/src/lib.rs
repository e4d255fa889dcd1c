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
//! `[[models]]` entry, sharing the pool of [`client`](mod@client).

pub mod client;
pub mod ersilia;
pub mod http_json;
pub mod kserve;
pub mod openai;
pub mod tei;

use std::sync::Arc;

use bytes::Bytes;
use infercache_backend::{Backend, BackendError, BackendKind, Inputs, ModelConfig, ModelInfo};
use infercache_core::tls;

pub use client::{Retry, Upstream, UpstreamReply};
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

/// The connection pool every upstream without a `ca_file` shares.
///
/// # Errors
/// [`ClientError`] if the TLS or resolver setup of the HTTP client fails.
pub fn client() -> Result<reqwest::Client, ClientError> {
    build(&[])
}

/// The client of `config`: the shared `client` for a model without a `ca_file`, a pool
/// of its own, trusting the file's CAs as well, for one with it. The file is read here,
/// once, at start-up.
///
/// # Errors
/// [`ClientError::CaFile`] naming the model when its file cannot be read or holds no
/// usable CA certificate.
pub fn client_for(
    config: &ModelConfig,
    shared: &reqwest::Client,
) -> Result<reqwest::Client, ClientError> {
    let Some(path) = &config.ca_file else {
        return Ok(shared.clone());
    };
    let roots = tls::read_ca_file(path).map_err(|source| ClientError::CaFile {
        model: config.name.clone(),
        source,
    })?;
    build(&roots)
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

/// The backend of `config`, sharing `client`'s pool; `None` for the built-in model,
/// which has no upstream.
pub fn backend(config: &ModelConfig, client: &reqwest::Client) -> Option<Arc<dyn Backend>> {
    let upstream = Upstream::new(config.clone(), client.clone());
    Some(match config.backend {
        BackendKind::Builtin => return None,
        BackendKind::KServeV2 => Arc::new(kserve::Kserve::new(upstream)),
        BackendKind::OpenAi => Arc::new(openai::OpenAi::new(upstream)),
        BackendKind::Tei => Arc::new(tei::Tei::new(upstream)),
        BackendKind::Ersilia => Arc::new(ersilia::Ersilia::new(upstream)),
        BackendKind::HttpJson => Arc::new(http_json::HttpJson::new(upstream)),
    })
}

/// The identity of an upstream model: its configured name, version and digest.
fn info(config: &ModelConfig) -> ModelInfo {
    ModelInfo {
        name: config.name.clone(),
        aliases: Vec::new(),
        kind: config.backend,
        version: config.version.clone(),
        digest: config.digest.clone(),
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

/// Stored forms of JSON output rows: each row's compact JSON text.
fn json_rows(rows: &[serde_json::Value]) -> Vec<Bytes> {
    rows.iter()
        .map(|r| Bytes::from(serde_json::to_vec(r).expect("a JSON value serializes")))
        .collect()
}
