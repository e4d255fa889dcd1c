//! `embed` steps through a running server (`datasets build --url`), the choice `bulk
//! --url` makes: a server holds its disk tier's lock, so a second process cannot open
//! the tier while it runs; through the server, the step uses the server's models and
//! prediction cache (a text it embedded before is a hit, a text embedded here is a hit for
//! it afterwards).
//!
//! Each call of the step (at most 32 texts) is one `POST /v1/embeddings` with
//! `encoding_format: base64`, the stored little-endian `f32` bytes, so the rows equal
//! those a build in the server's process computes, bit for bit. The step's declared
//! version is built from the model's entry in `GET /v1/models` exactly as the registry
//! builds it in-process (protocol, name, version, artifact digest), so a build through the
//! server and one in-process have the same fingerprint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use base64::Engine as _;
use infercache_backend::vector;
use infercache_datasets::{DatasetError, Embedders, TextEmbedder};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;

/// The embedding models of the server at one URL, as the dataset cache's [`Embedders`].
///
/// Each call blocks its thread on the runtime it was made with: call it from a thread of
/// its own (as builds and streams do), never from an async task.
#[derive(Debug, Clone)]
pub struct ServerEmbedders {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    client: Client,
    runtime: tokio::runtime::Handle,
    /// `GET /v1/models`'s entries, read once.
    models: Vec<Value>,
    cached: AtomicU64,
    computed: AtomicU64,
    calls: AtomicU64,
}

impl ServerEmbedders {
    /// The models of the server at `url` (listed now, so a wrong URL fails before any
    /// row is read), authenticating with `api_key`.
    pub fn connect(
        url: &str,
        api_key: Option<String>,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let client = Client::connect(url, api_key)?;
        let listed = runtime
            .block_on(client.get("v1/models"))
            .with_context(|| format!("listing the models of the server at {url}"))?;
        let models = listed["data"].as_array().cloned().unwrap_or_default();
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                client,
                runtime,
                models,
                cached: AtomicU64::new(0),
                computed: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            }),
        })
    }

    /// What the `embed` steps did: texts the server had cached, texts it computed, and
    /// requests in which it computed any.
    pub fn embedded(&self) -> Value {
        let i = &self.inner;
        json!({
            "cached": i.cached.load(Ordering::Relaxed),
            "computed": i.computed.load(Ordering::Relaxed),
            "model_calls": i.calls.load(Ordering::Relaxed),
        })
    }
}

impl Embedders for ServerEmbedders {
    fn embedder(&self, model: &str) -> Result<Arc<dyn TextEmbedder>, DatasetError> {
        let invalid = |reason: String| DatasetError::InvalidStep {
            spec: format!("embed:{model}"),
            reason,
        };
        let inner = &self.inner;
        let entry = inner
            .models
            .iter()
            .find(|m| m["id"] == model)
            .ok_or_else(|| {
                let served: Vec<&str> = inner
                    .models
                    .iter()
                    .filter_map(|m| m["id"].as_str())
                    .collect();
                invalid(format!(
                    "the server at {} does not serve `{model}` (by that name); it serves {}",
                    inner.url,
                    served.join(", ")
                ))
            })?;
        let dims = entry["dims"]
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| *d > 0)
            .ok_or_else(|| {
                invalid(format!(
                    "model `{model}` of the server at {} does not declare its dimensions (`dims` in its [[models]] entry)",
                    inner.url
                ))
            })?;
        let text = |field: &str| entry[field].as_str().unwrap_or_default().to_owned();
        // As `RegistryEmbedder::version` in infercache-server writes it.
        let version = format!(
            "{}:{model}@{}+{}",
            text("backend"),
            text("version"),
            entry["digest"].as_str().unwrap_or("no-digest")
        );
        Ok(Arc::new(ServerEmbedder {
            inner: Arc::clone(inner),
            model: model.to_owned(),
            version,
            dims,
        }))
    }
}

/// One model of the server as a [`TextEmbedder`].
#[derive(Debug)]
struct ServerEmbedder {
    inner: Arc<Inner>,
    model: String,
    version: String,
    dims: usize,
}

impl ServerEmbedder {
    async fn request(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let body = json!({ "model": self.model, "input": texts, "encoding_format": "base64" });
        let reply = self
            .inner
            .client
            .send_while_busy(Method::POST, "v1/embeddings", Some(&body), |_, _| {})
            .await?;
        let hits = reply.cache_hits.unwrap_or(0);
        let answer = reply.into_ok()?;
        let data = answer["data"]
            .as_array()
            .context("the server's answer has no `data` array")?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for d in data {
            let index = d["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < texts.len())
                .context("the server's answer has an embedding without a valid `index`")?;
            let bytes = d["embedding"]
                .as_str()
                .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
                .context("the server's answer has an embedding that is not a base64 string")?
                .context("the server's answer has an embedding that is not valid base64")?;
            let v = vector::decode(&bytes, Some(self.dims)).map_err(anyhow::Error::msg)?;
            vectors[index] = Some(v);
        }
        let vectors = vectors
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!(
                    "the server answered {} embeddings for {} texts",
                    data.len(),
                    texts.len()
                )
            })?;
        let hits = usize::try_from(hits).unwrap_or(usize::MAX).min(texts.len());
        let i = &self.inner;
        i.cached.fetch_add(hits as u64, Ordering::Relaxed);
        i.computed
            .fetch_add((texts.len() - hits) as u64, Ordering::Relaxed);
        if hits < texts.len() {
            i.calls.fetch_add(1, Ordering::Relaxed);
        }
        Ok(vectors)
    }
}

impl TextEmbedder for ServerEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        self.inner
            .runtime
            .block_on(self.request(texts))
            .map_err(|e| format!("{e:#}").into())
    }
}
