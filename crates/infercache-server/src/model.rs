//! The built-in model: all-MiniLM-L6-v2 from `infercache-model`, behind its batching
//! pool, as an [`Embed`]; and [`run`], which loads it and serves.
//!
//! Identity in keys: the model id `all-MiniLM-L6-v2`, a version that names the
//! preprocessing that changes outputs (truncation at `MAX_TOKENS`), and the SHA-256 of the
//! weights, which `ModelFiles` verified before loading.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use infercache_model::{
    DIMS, Embedder, InferencePool, MAX_TOKENS, MODEL_ID, MODEL_NAME, ModelError, ModelFiles,
    PoolConfig, WEIGHTS_SHA256,
};
use tokio::net::TcpListener;

use crate::config::{BatchSettings, ServerConfig};
use crate::embed::{Embed, EmbedError, EmbedFuture, InferenceStats, ModelInfo};
use crate::error::ServerError;
use crate::server::run_with;

/// all-MiniLM-L6-v2 behind an [`InferencePool`].
pub struct ModelPool {
    pool: InferencePool,
    info: ModelInfo,
}

impl std::fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPool")
            .field("info", &self.info)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl ModelPool {
    /// Loads the model from `model_dir`, or from (fetching into) the default cache
    /// directory, and starts its pool. Blocks: hashing and loading ~90 MB.
    ///
    /// # Errors
    /// Missing or corrupt files, a failed fetch, or a model that does not load.
    pub fn load(model_dir: Option<&Path>, batch: &BatchSettings) -> Result<Self, ModelError> {
        let files = ModelFiles::locate(model_dir, infercache_model::default_cache_dir(), false)?;
        Self::from_files(&files, batch)
    }

    /// Loads the model from verified `files` and starts its pool. Blocks.
    ///
    /// # Errors
    /// A model that does not load.
    pub fn from_files(files: &ModelFiles, batch: &BatchSettings) -> Result<Self, ModelError> {
        // `ModelFiles` were verified against the pinned digests: the weights are these.
        let artifact = format!("sha256:{WEIGHTS_SHA256}");
        let embedder = Embedder::load(files)?;
        let pool = InferencePool::new(
            embedder,
            PoolConfig::default()
                .max_batch(batch.max_batch)
                .max_wait(batch.max_wait)
                .queue_capacity(batch.queue),
        )?;
        Ok(Self {
            pool,
            info: ModelInfo {
                artifact: Some(artifact),
                ..builtin_info()
            },
        })
    }
}

/// The built-in model's identity (the artifact digest is added once the weights are
/// verified).
fn builtin_info() -> ModelInfo {
    ModelInfo {
        id: MODEL_NAME.to_owned(),
        aliases: vec![MODEL_ID.to_owned()],
        version: format!("1+max_tokens={MAX_TOKENS}"),
        artifact: None,
        dims: DIMS,
    }
}

/// What a server holds in the built-in model's place when its `[[models]]` leave the
/// built-in model out: its identity without its weights, so a proxy-only deployment never
/// loads or downloads them. No route reaches it (the model is not served), and `embed`
/// refuses.
#[derive(Debug)]
pub struct NotServed {
    info: ModelInfo,
}

impl Default for NotServed {
    fn default() -> Self {
        Self {
            info: builtin_info(),
        }
    }
}

impl Embed for NotServed {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, _text: &str) -> usize {
        0
    }

    fn embed(&self, _texts: Vec<String>) -> EmbedFuture<'_> {
        Box::pin(async {
            Err(EmbedError::Failed(
                "the built-in model is not served by this configuration".into(),
            ))
        })
    }

    fn stats(&self) -> InferenceStats {
        InferenceStats::default()
    }
}

impl Embed for ModelPool {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.pool.count_tokens(text).unwrap_or(0)
    }

    fn embed(&self, texts: Vec<String>) -> EmbedFuture<'_> {
        Box::pin(async move {
            self.pool.embed(texts).await.map_err(|e| match e {
                ModelError::Overloaded => EmbedError::Overloaded,
                e => EmbedError::Failed(Box::new(e)),
            })
        })
    }

    fn stats(&self) -> InferenceStats {
        let s = self.pool.stats();
        InferenceStats {
            invocations: s.invocations,
            texts: s.texts,
        }
    }
}

/// Loads the built-in model per `config` (on the blocking pool) and serves it on
/// `listener` until `shutdown` completes; see [`crate::serve`] for the drain.
///
/// # Errors
/// The model does not load, or anything [`run_with`] fails with.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let serves_builtin = config.models.is_empty()
        || config
            .models
            .iter()
            .any(|m| m.backend == crate::upstream::Backend::Builtin);
    if !serves_builtin {
        tracing::info!("{MODEL_NAME} is not among the configured models: not loading it");
        return run_with(config, Arc::new(NotServed::default()), listener, shutdown).await;
    }
    let model_dir = config.model_dir.clone();
    let batch = config.batch;
    match &model_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), "loading {MODEL_NAME}"),
        None => tracing::info!(
            cache_dir = %infercache_model::default_cache_dir().display(),
            "loading {MODEL_NAME}, fetching it into the cache directory if absent"
        ),
    }
    let pool = tokio::task::spawn_blocking(move || ModelPool::load(model_dir.as_deref(), &batch))
        .await
        .map_err(|e| ServerError::Model(Box::new(e)))?
        .map_err(|e| ServerError::Model(Box::new(e)))?;
    run_with(config, Arc::new(pool), listener, shutdown).await
}
