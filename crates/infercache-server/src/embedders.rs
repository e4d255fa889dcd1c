//! The `embed:MODEL` step of the dataset cache through the model registry and the
//! prediction cache: [`RegistryEmbedders`] finds `MODEL` among the served models, and each
//! text goes the per-row path of `POST /v1/embeddings` ([`Infer::rows`]), so a text the
//! server has embedded before is a hit, never a model call, and a text embedded for a
//! dataset is a hit for the server afterwards. The step's declared version is the model's
//! protocol, name, version and artifact digest: another model, version or set of weights
//! is another fingerprint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use infercache_backend::{Inputs, vector};
use infercache_datasets::{DatasetError, Embedders, TextEmbedder};
use infercache_infer::{Infer, Model, RowRequest, RowSource};

/// What the embedders did, over every model.
#[derive(Debug, Default)]
pub struct EmbedCounts {
    cached: AtomicU64,
    computed: AtomicU64,
}

impl EmbedCounts {
    /// Texts served by the prediction cache (or by a concurrent request's computation).
    pub fn cached(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
    }

    /// Texts computed by a model.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }
}

/// The registry's embedding models as [`Embedders`], for a [`DatasetCache`]'s
/// `embed` step.
///
/// Each call blocks its thread on `runtime` until its rows are ready: call it from a
/// thread of its own or the blocking pool (as builds and streams do), never from an
/// async task.
///
/// [`DatasetCache`]: infercache_datasets::DatasetCache
#[derive(Debug, Clone)]
pub struct RegistryEmbedders {
    infer: Infer,
    tenant: Arc<str>,
    runtime: tokio::runtime::Handle,
    counts: Arc<EmbedCounts>,
}

impl RegistryEmbedders {
    /// The models of `infer`, their rows stored under `tenant`'s namespace, run on
    /// `runtime`.
    pub fn new(infer: Infer, tenant: &str, runtime: tokio::runtime::Handle) -> Self {
        Self {
            infer,
            tenant: Arc::from(tenant),
            runtime,
            counts: Arc::default(),
        }
    }

    /// What every embedder made from these did so far.
    pub fn counts(&self) -> &Arc<EmbedCounts> {
        &self.counts
    }
}

impl Embedders for RegistryEmbedders {
    fn embedder(&self, model: &str) -> Result<Arc<dyn TextEmbedder>, DatasetError> {
        let invalid = |reason: String| DatasetError::InvalidStep {
            spec: format!("embed:{model}"),
            reason,
        };
        let m = self
            .infer
            .models()
            .resolve(model, crate::routes::openai::KINDS)
            .map_err(|e| invalid(e.to_string()))?;
        let dims = m.info().dims.ok_or_else(|| {
            invalid(format!(
                "model `{model}` does not declare its dimensions (`dims` in its [[models]] entry)"
            ))
        })?;
        Ok(Arc::new(RegistryEmbedder {
            registry: self.clone(),
            model: m,
            dims,
        }))
    }
}

/// One model of the registry as a [`TextEmbedder`].
#[derive(Debug)]
struct RegistryEmbedder {
    registry: RegistryEmbedders,
    model: Arc<Model>,
    dims: usize,
}

impl TextEmbedder for RegistryEmbedder {
    fn model(&self) -> &str {
        self.model.name()
    }

    fn version(&self) -> String {
        let info = self.model.info();
        format!(
            "{}:{}@{}+{}",
            info.kind,
            info.name,
            info.version,
            info.digest.as_deref().unwrap_or("no-digest")
        )
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        let r = &self.registry;
        let request = RowRequest {
            model: Arc::clone(&self.model),
            tenant: Arc::clone(&r.tenant),
            inputs: Arc::new(Inputs::texts(
                texts.iter().map(|t| (*t).to_owned()).collect(),
            )),
            control: Default::default(),
        };
        let rows = r.runtime.block_on(r.infer.rows(request))?;
        let mut out = Vec::with_capacity(texts.len());
        for (value, source) in rows.values.iter().zip(&rows.sources) {
            let value = value
                .as_ref()
                .ok_or("the model computed no row for a text")?;
            if !self.model.backend().keep(value) {
                return Err("the model returned no embedding for a text (a row of nulls)".into());
            }
            out.push(vector::decode(value, Some(self.dims))?);
            let counter = match source {
                RowSource::Computed => &r.counts.computed,
                _ => &r.counts.cached,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }
}
