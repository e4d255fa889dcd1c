//! [`ModelConfig`]: the validated settings of one `[[models]]` entry, as the registry,
//! the upstream clients and `GET /v1/models` read them. Parsing and validating the TOML is
//! the configuration's job; this is its result.

use std::path::PathBuf;
use std::time::Duration;

use infercache_core::encode::put_field;
use infercache_core::{Digest, server_identity};

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
    /// Artifact digest, part of every key. When given, it names what computes the output
    /// in place of the upstream's server and name ([`ModelConfig::artifact_key`]).
    /// Default: none.
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

impl ModelConfig {
    /// What computes this model's output beyond its name and version: the artifact part of
    /// every key of the model ([`ModelInfo::digest`](crate::ModelInfo::digest)).
    ///
    /// It is a digest over the protocol and either the operator's `digest` (which then
    /// wins: the digest names the weights, so the server and name they are served under do
    /// not matter, and a model moved to another server keeps its entries) or, without
    /// one, the upstream's identity: its base URL as [`server_identity`] normalises it
    /// (credentials left out), `upstream_name`, and for `kserve-v2` whether dimension 0 is
    /// a batch (it changes what one row is). So pointing a model at another server or
    /// another upstream model without a new `version` is a miss, and two deployments that
    /// share a Redis and a model name but not an upstream never share an entry. `version`
    /// is always keyed besides; bumping it is a miss either way. `None` for the built-in
    /// model, whose weights' digest is its own.
    pub fn artifact_key(&self) -> Option<String> {
        let url = self.url.as_deref()?;
        let mut fields = Vec::with_capacity(128);
        put_field(&mut fields, b"upstream/1");
        put_field(&mut fields, self.backend.as_str().as_bytes());
        match &self.digest {
            Some(digest) => {
                put_field(&mut fields, b"digest");
                put_field(&mut fields, digest.as_bytes());
            }
            None => {
                put_field(&mut fields, b"server");
                put_field(&mut fields, server_identity(url).as_bytes());
                put_field(&mut fields, self.upstream_name.as_bytes());
                if self.backend == BackendKind::KServeV2 {
                    put_field(&mut fields, &[u8::from(self.batched)]);
                }
            }
        }
        Some(format!("upstream:{}", Digest::of(&fields).to_hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tei(url: &str) -> ModelConfig {
        ModelConfig::new("emb", BackendKind::Tei, Some(url))
    }

    #[test]
    fn the_upstreams_identity_is_in_the_key() {
        let base = tei("http://a:8080").artifact_key();
        assert_eq!(base, tei("http://A:8080/").artifact_key());
        assert_eq!(base, tei("http://user:secret@a:8080").artifact_key());
        assert_ne!(base, tei("http://b:8080").artifact_key());
        let mut renamed = tei("http://a:8080");
        renamed.upstream_name = "text-embedding-3-large".into();
        assert_ne!(base, renamed.artifact_key());
        let mut other_protocol = tei("http://a:8080");
        other_protocol.backend = BackendKind::OpenAi;
        assert_ne!(base, other_protocol.artifact_key());
        let mut kserve = ModelConfig::new("m", BackendKind::KServeV2, Some("http://a:8000"));
        let batched = kserve.artifact_key();
        kserve.batched = false;
        assert_ne!(batched, kserve.artifact_key());
        assert_eq!(
            ModelConfig::new("all-MiniLM-L6-v2", BackendKind::Builtin, None).artifact_key(),
            None
        );
    }

    #[test]
    fn an_explicit_digest_wins_over_the_server() {
        let mut a = tei("http://a:8080");
        let mut b = tei("http://b:9090");
        b.upstream_name = "other".into();
        a.digest = Some("sha256:ab".into());
        b.digest = Some("sha256:ab".into());
        assert_eq!(a.artifact_key(), b.artifact_key());
        b.digest = Some("sha256:cd".into());
        assert_ne!(a.artifact_key(), b.artifact_key());
        assert_ne!(a.artifact_key(), tei("http://a:8080").artifact_key());
    }
}
