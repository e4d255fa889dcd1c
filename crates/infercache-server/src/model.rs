//! Serving per a configuration: [`run`] loads the built-in model when the configuration
//! serves it (never otherwise) and serves. A build without the `builtin` feature has no
//! built-in model: it serves upstream models only, and refuses a configuration that
//! serves the built-in one.

use std::future::Future;
use std::sync::Arc;

use infercache_backend::{BUILTIN_MODEL, Backend};
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::server::{open_cache, registry, run_with};

/// The cache and the registry of a configuration, opened as `serve` opens them, for
/// commands that run models in this process (bulk jobs). [`Opened::close`] flushes the
/// cache and stops a managed `redis-server`.
#[derive(Debug)]
pub struct Opened {
    /// The cache; `None` when disabled.
    pub cache: Option<infercache_engine::Cache>,
    /// Every configured model.
    pub models: infercache_infer::Models,
    managed: Option<crate::remote::Managed>,
}

impl Opened {
    /// Flushes the cache (the write-back queue, the disk tier's sync), then stops the
    /// managed `redis-server`, if any.
    pub async fn close(self) {
        if let Some(cache) = &self.cache {
            cache.shutdown().await;
        }
        if let Some(redis) = self.managed {
            redis.stop().await;
        }
    }
}

/// Opens `config`'s cache and registry, loading the built-in model (on the blocking
/// pool) when `config` serves it.
///
/// # Errors
/// The model does not load, the Redis tier cannot be set up, or the cache cannot open.
pub async fn open(config: &ServerConfig) -> Result<Opened, ServerError> {
    let builtin = if infercache_infer::serves_builtin(&config.models) {
        Some(load(config).await?)
    } else {
        None
    };
    let models = registry(config, builtin)?;
    let (cache, managed) = open_cache(config, &models).await?;
    Ok(Opened {
        cache,
        models,
        managed,
    })
}

/// Loads the built-in model per `config` (on the blocking pool) when `config` serves it
/// and serves on `listener` until `shutdown` completes; see [`crate::serve`] for the
/// drain.
///
/// # Errors
/// The model does not load (or this build has none, [`ServerError::NoBuiltinModel`]), or
/// anything [`run_with`] fails with.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if !infercache_infer::serves_builtin(&config.models) {
        tracing::info!("{BUILTIN_MODEL} is not among the configured models: not loading it");
        return run_with(config, None, listener, shutdown).await;
    }
    let builtin = load(&config).await?;
    run_with(config, Some(builtin), listener, shutdown).await
}

/// The built-in model per `config`, loaded on the blocking pool.
#[cfg(feature = "builtin")]
async fn load(config: &ServerConfig) -> Result<Arc<dyn Backend>, ServerError> {
    use infercache_model::BuiltinModel;

    if let Some(from) = &config.weights_from {
        return crate::weights::load_builtin(from, &config.batch).await;
    }
    let model_dir = config.model_dir.clone();
    let cache_dir = infercache_backend::default_cache_dir();
    match &model_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), "loading {BUILTIN_MODEL}"),
        None => tracing::info!(
            cache_dir = %cache_dir.display(),
            "loading {BUILTIN_MODEL}, fetching it into the cache directory if absent"
        ),
    }
    let pool = pool_config(&config.batch);
    let model = tokio::task::spawn_blocking(move || {
        BuiltinModel::load(model_dir.as_deref(), &cache_dir, pool)
    })
    .await
    .map_err(|e| ServerError::Model(Box::new(e)))?
    .map_err(|e| ServerError::Model(Box::new(e)))?;
    Ok(Arc::new(model))
}

/// A build without the built-in model cannot serve it.
#[cfg(not(feature = "builtin"))]
async fn load(_config: &ServerConfig) -> Result<Arc<dyn Backend>, ServerError> {
    Err(infercache_infer::NoBuiltinModel.into())
}

/// The built-in model's pool, batching per `batch`.
#[cfg(feature = "builtin")]
pub fn pool_config(batch: &crate::config::BatchSettings) -> infercache_model::PoolConfig {
    infercache_model::PoolConfig::default()
        .max_batch(batch.max_batch)
        .max_wait(batch.max_wait)
        .queue_capacity(batch.queue)
}
