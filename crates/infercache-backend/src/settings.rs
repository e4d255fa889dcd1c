//! [`ModelConfig`]: the validated settings of one `[[models]]` entry, as the registry,
//! the upstream clients and `GET /v1/models` read them. Parsing and validating the TOML is
//! the configuration's job; this is its result.

use std::path::PathBuf;
use std::time::Duration;

use crate::info::BackendKind;

/// Per-attempt upstream timeout when a model sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of an idempotent call when a model sets none.
pub const DEFAULT_RETRIES: u32 = 2;
/// Most retries a model may ask for.
pub const MAX_RETRIES: u32 = 10;

/// A validated model. Each field documents its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// What clients call it.
    pub name: String,
    /// The protocol its upstream speaks.
    pub backend: BackendKind,
    /// The upstream's base URL, without a trailing `/`; `None` for `builtin`.
    pub url: Option<String>,
    /// The name the upstream knows the model by. Default: `name`.
    pub upstream_name: String,
    /// Part of every key. Default: `"1"`.
    pub version: String,
    /// Artifact digest, part of every key. Default: none.
    pub digest: Option<String>,
    /// Per-attempt upstream timeout. Default: 30 s.
    pub timeout: Duration,
    /// Entries older than this are not served (falls back to the global `ttl`). Default: none.
    pub ttl: Option<Duration>,
    /// How long past its freshness an entry is still served when the upstream fails.
    /// Default: none.
    pub stale_if_error: Option<Duration>,
    /// How long past its freshness an entry is still served at once while it is
    /// recomputed in the background. Default: none.
    pub stale_while_revalidate: Option<Duration>,
    /// Whether outputs may be cached. Default: true.
    pub deterministic: bool,
    /// Names of the request parameters that change the output, sorted; only these are
    /// keyed. Default (`None`): every request parameter is keyed, since a parameter not
    /// keyed but forwarded would let one request's output be served for another's.
    pub params: Option<Vec<String>>,
    /// Most rows in one upstream request. Default: no limit.
    pub max_batch: Option<usize>,
    /// `kserve-v2` only: whether dimension 0 of every tensor is a batch of independent
    /// rows (Triton's `max_batch_size > 0`). When false, a whole request is one entry.
    /// Default: true.
    pub batched: bool,
    /// `kserve-v2` only: whether the upstream takes Triton's binary tensor data
    /// extension. Default (`None`): asked once, from the `extensions` of its `GET /v2`
    /// server metadata.
    pub binary_tensors: Option<bool>,
    /// Retries of an idempotent upstream call. Default: 2.
    pub retries: u32,
    /// `https://` only: a PEM file of CA certificates trusted for this upstream, on top
    /// of the compiled-in and system roots. Not part of the model's identity (it changes
    /// who is trusted, not what is computed). Default: none.
    pub ca_file: Option<PathBuf>,
}

impl ModelConfig {
    /// A model of `backend` at `url` with every other setting at its default.
    pub fn new(name: &str, backend: BackendKind, url: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            backend,
            url: url.map(|u| u.trim_end_matches('/').to_owned()),
            upstream_name: name.to_owned(),
            version: "1".to_owned(),
            digest: None,
            timeout: DEFAULT_TIMEOUT,
            ttl: None,
            stale_if_error: None,
            stale_while_revalidate: None,
            deterministic: true,
            params: None,
            max_batch: None,
            batched: true,
            binary_tensors: None,
            retries: DEFAULT_RETRIES,
            ca_file: None,
        }
    }
}
