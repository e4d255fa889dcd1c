//! Starting, serving and stopping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use infercache_core::SystemClock;
use infercache_engine::Cache;
use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::config::ServerConfig;
use crate::embed::Embed;
use crate::error::ServerError;
use crate::state::AppState;
use crate::upstream::Models;

/// Serves `embedder` per `config` on `listener` until `shutdown` completes.
///
/// Opens the cache (recovering the disk tier, on the blocking pool), loads the API keys,
/// logs the effective configuration with secrets redacted, then serves; see [`serve`] for
/// the shutdown sequence.
///
/// # Errors
/// An unreadable keys file, a cache that cannot open, or a failing listener.
pub async fn run_with(
    config: ServerConfig,
    embedder: Arc<dyn Embed>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let keys = match &config.api_keys_file {
        Some(path) => ApiKeys::load(path)?,
        None => ApiKeys::none(),
    };
    let cache = match config.cache_config() {
        Some(cache_config) => Some(
            tokio::task::spawn_blocking(move || Cache::open(cache_config, SystemClock::shared()))
                .await
                .map_err(|e| ServerError::Io(std::io::Error::other(e)))??,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    let model = embedder.info();
    tracing::info!(
        %addr,
        model = %model.id,
        version = %model.version,
        artifact = model.artifact.as_deref().unwrap_or("unknown"),
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
    let models = Models::new(&config.models, config.ttl)?;
    let state = AppState::with_models(cache, embedder, models, keys, config.limits);
    serve(state, listener, shutdown, config.shutdown_timeout).await
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
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, crate::app(state.clone()))
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
    if let Some(cache) = state.cache() {
        cache.shutdown().await;
        tracing::info!("cache flushed");
    }
    result.map_err(ServerError::Io)
}
