//! Starting, serving and stopping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use infercache_backend::{Backend, BackendKind, ModelConfig};
use infercache_core::SystemClock;
use infercache_engine::Cache;
use infercache_infer::Models;
use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::remote;
use crate::state::AppState;

/// Serves the models of `config` on `listener` until `shutdown` completes, with
/// `builtin` as the built-in model when `config` serves it.
///
/// Opens the cache (recovering the disk tier, on the blocking pool), loads the API keys,
/// builds the registry, logs the effective configuration with secrets redacted, then
/// serves; see [`serve`] for the shutdown sequence.
///
/// # Errors
/// An unreadable keys file, a cache that cannot open, a configuration that serves the
/// built-in model without one given, or a failing listener.
pub async fn run_with(
    config: ServerConfig,
    builtin: Option<Arc<dyn Backend>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let models = registry(&config, builtin)?;
    let keys = match &config.api_keys_file {
        Some(path) => ApiKeys::load(path)?,
        None => ApiKeys::none(),
    };
    let (cache, managed) = open_cache(&config, &models).await?;
    let addr = listener.local_addr()?;
    for m in models.iter() {
        let info = m.info();
        tracing::info!(
            model = %info.name,
            backend = %info.kind,
            version = %info.version,
            artifact = info.digest.as_deref().unwrap_or("none"),
            "serving model"
        );
    }
    tracing::info!(
        %addr,
        api_keys = keys.len(),
        "effective config: {}",
        config.redacted()
    );
    if keys.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "no API keys configured and listening beyond loopback: anyone who can reach this \
             address can use and administer the cache (set --api-keys-file)"
        );
    }
    let weights = match &config.weights_dir {
        Some(dir) => Some(crate::weights::open(dir).await?),
        None => None,
    };
    let mut state = AppState::with_weights(cache, models, keys, config.limits, weights);
    if let Some(dir) = &config.datasets_dir {
        let embedders = crate::RegistryEmbedders::new(
            state.infer().clone(),
            crate::auth::DEFAULT_TENANT,
            tokio::runtime::Handle::current(),
        );
        state = state.with_datasets(open_datasets(dir, &config, embedders).await?);
        tracing::info!(dir = %dir.display(), "serving datasets on /v1/datasets");
    }
    let served = serve(state, listener, shutdown, config.shutdown_timeout).await;
    if let Some(redis) = managed {
        redis.stop().await;
    }
    served
}

/// The dataset cache in `dir`, sized by `config`'s `[cache]` table, with what recomputing
/// an evicted shard needs: the built-in model's tokenizer for `tokenize`, the served
/// models through the prediction cache (as the tenant `default`) for `embed`.
///
/// # Errors
/// [`ServerError::Datasets`] when it cannot be opened.
async fn open_datasets(
    dir: &std::path::Path,
    config: &ServerConfig,
    embedders: crate::RegistryEmbedders,
) -> Result<infercache_datasets::DatasetCache, ServerError> {
    let dir = dir.to_owned();
    let settings = config.datasets_cache.clone();
    let tokenizer = config
        .model_dir
        .clone()
        .unwrap_or_else(|| {
            infercache_backend::default_cache_dir().join(infercache_backend::BUILTIN_MODEL)
        })
        .join("tokenizer.json");
    let steps = infercache_datasets::StepContext {
        tokenizer: tokenizer.is_file().then_some(tokenizer),
        embedders: Some(std::sync::Arc::new(embedders)),
    };
    tokio::task::spawn_blocking(move || {
        infercache_datasets::DatasetCache::open(
            &dir,
            settings.dataset_config(steps),
            SystemClock::shared(),
        )
    })
    .await
    .map_err(|e| ServerError::Io(std::io::Error::other(e)))?
    .map_err(ServerError::Datasets)
}

/// The cache of `config` (`None` when disabled), with the `redis-server` it started for
/// `redis = "auto"`, to be stopped once the cache has flushed.
///
/// # Errors
/// The Redis tier cannot be set up, or the cache cannot open.
pub(crate) async fn open_cache(
    config: &ServerConfig,
    models: &Models,
) -> Result<(Option<Cache>, Option<remote::Managed>), ServerError> {
    // A managed Redis starts before the cache and stops after it has flushed.
    let (remote, managed) = match (&config.redis, config.enable_cache) {
        (Some(settings), true) => {
            let (tier, managed) = remote::connect(settings).await?;
            (Some(tier), managed)
        }
        _ => (None, None),
    };
    let cache = match config.cache_config() {
        Some(mut cache_config) => Some({
            cache_config.remote = remote;
            cache_config.policies = models.freshness();
            tokio::task::spawn_blocking(move || Cache::open(cache_config, SystemClock::shared()))
                .await
                .map_err(|e| ServerError::Io(std::io::Error::other(e)))??
        }),
        None => None,
    };
    Ok((cache, managed))
}

/// The registry of `config`'s models: `builtin` for the built-in model, an upstream
/// client for each other one, sharing one connection pool (a model with a `ca_file` has
/// a pool of its own; its file is read here).
///
/// # Errors
/// [`ServerError::NoBuiltinModel`] when `config` serves the built-in model and `builtin`
/// is `None`; [`ServerError::Upstream`] when an HTTP client cannot be built or a model's
/// `ca_file` cannot be used.
pub fn registry(
    config: &ServerConfig,
    builtin: Option<Arc<dyn Backend>>,
) -> Result<Models, ServerError> {
    let upstreams: Vec<&ModelConfig> = config
        .models
        .iter()
        .filter(|m| m.backend != BackendKind::Builtin)
        .collect();
    let mut clients = HashMap::with_capacity(upstreams.len());
    if !upstreams.is_empty() {
        // Upstream answers have a budget of their own, as large as the request bodies'.
        let shared = infercache_upstream::Pool::new(config.limits.body_budget_bytes)?;
        for m in upstreams {
            clients.insert(m.name.clone(), shared.for_model(m)?);
        }
    }
    let models = Models::configured(&config.models, config.ttl, builtin, |m| {
        let client = clients
            .get(&m.name)
            .expect("built above: a model has an upstream");
        infercache_upstream::backend(m, client)
            .expect("every model but the built-in one has an upstream")
    })?;
    Ok(models)
}

/// Serves [`crate::app`] on `listener` until `shutdown` completes, then drains.
///
/// Shutdown: `/readyz` turns 503, the listener closes, in-flight requests get up to
/// `drain` to finish (those still running then are dropped), and finally the cache is shut
/// down, which drains the write-back queue and syncs the disk tier, before this returns.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> Result<(), ServerError> {
    let sampler = tokio::spawn(crate::dashboard::sample(state.clone()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        axum::ServiceExt::into_make_service(crate::app(state.clone())),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    })
    .into_future();
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            tracing::info!(?drain, "shutting down: draining in-flight requests");
            state.set_ready(false);
            let _ = stop_tx.send(true);
            match tokio::time::timeout(drain, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(?drain, "drain deadline passed; dropping the requests still running");
                    Ok(())
                }
            }
        }
    };
    state.set_ready(false);
    sampler.abort();
    if let Some(cache) = state.cache() {
        // Bounded: a slow Redis must not hold the process past its drain time.
        match tokio::time::timeout(drain, cache.shutdown()).await {
            Ok(()) => tracing::info!("cache flushed"),
            Err(_) => tracing::warn!(?drain, "the cache did not finish flushing in time"),
        }
    }
    result.map_err(ServerError::Io)
}
