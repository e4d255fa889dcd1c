//! Serving per a configuration: [`run`] loads the built-in model when the configuration
//! serves it (never otherwise) and serves.

use std::future::Future;
use std::sync::Arc;

use infercache_backend::Backend;
use infercache_model::{BuiltinModel, MODEL_NAME, PoolConfig};
use tokio::net::TcpListener;

use crate::config::{BatchSettings, ServerConfig};
use crate::error::ServerError;
use crate::server::run_with;

/// Loads the built-in model per `config` (on the blocking pool) when `config` serves it
/// and serves on `listener` until `shutdown` completes; see [`crate::serve`] for the
/// drain.
///
/// # Errors
/// The model does not load, or anything [`run_with`] fails with.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if !infercache_infer::serves_builtin(&config.models) {
        tracing::info!("{MODEL_NAME} is not among the configured models: not loading it");
        return run_with(config, None, listener, shutdown).await;
    }
    let model_dir = config.model_dir.clone();
    let cache_dir = infercache_backend::default_cache_dir();
    let batch = config.batch;
    match &model_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), "loading {MODEL_NAME}"),
        None => tracing::info!(
            cache_dir = %cache_dir.display(),
            "loading {MODEL_NAME}, fetching it into the cache directory if absent"
        ),
    }
    let pool = pool_config(&batch);
    let model = tokio::task::spawn_blocking(move || {
        BuiltinModel::load(model_dir.as_deref(), &cache_dir, pool)
    })
    .await
    .map_err(|e| ServerError::Model(Box::new(e)))?
    .map_err(|e| ServerError::Model(Box::new(e)))?;
    let builtin: Arc<dyn Backend> = Arc::new(model);
    run_with(config, Some(builtin), listener, shutdown).await
}

/// The built-in model's pool, batching per `batch`.
pub fn pool_config(batch: &BatchSettings) -> PoolConfig {
    PoolConfig::default()
        .max_batch(batch.max_batch)
        .max_wait(batch.max_wait)
        .queue_capacity(batch.queue)
}
