//! Model weights by layer in the main server (feature `weights`, on by default).
//!
//! - `weights_dir`: the weight server's routes ([`infercache_weights::WeightServer`]),
//!   `/v1/weights/...`, mounted beside the API. They take the API's keys: every route
//!   needs a key when keys are configured (401 without), `GET /v1/weights/stats` and
//!   `POST /v1/weights/invalidate` an admin key (403 otherwise), as `/v1/cache/*` do; and
//!   the guard of `/v1/*` (concurrency 429, drain 503, timeout 504). Their counters are in
//!   the server's `/metrics` (`infercache_weights_*`).
//! - `weights_from`: the built-in model built from a weight server's chunks, every one
//!   verified, instead of local files ([`infercache_weights::fetch_builtin`]); cache keys
//!   name its weights by the digest of their tensors, which for the pinned
//!   all-MiniLM-L6-v2 is the built-in model's own.
//!
//! A build without the feature refuses both settings at start.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The weight routes that need an admin key (the rest need any key).
const ADMIN_PATHS: [&str; 2] = ["/v1/weights/stats", "/v1/weights/invalidate"];

/// The API keys in front of the weight routes: 401 for a missing or unknown key, 403 for
/// a tenant key on an admin route.
pub(crate) async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let caller = match state
        .keys()
        .authenticate(request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
    {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if !caller.admin && ADMIN_PATHS.contains(&request.uri().path()) {
        return ApiError::Forbidden.into_response();
    }
    next.run(request).await
}

#[cfg(feature = "weights")]
mod imp {
    use std::path::Path;

    use infercache_core::SystemClock;
    use infercache_weights::ServerConfig;
    pub use infercache_weights::WeightServer;

    use crate::error::ServerError;
    use crate::metrics::Metrics;

    /// Reports `server`'s counters in `metrics` (`infercache_weights_*`).
    pub(crate) fn register_metrics(server: &WeightServer, metrics: &mut Metrics) {
        metrics.register_collector(Box::new(server.collector()));
    }

    /// The weight server of `dir`, its models read and checked on the blocking pool.
    ///
    /// # Errors
    /// [`ServerError::Weights`] for a directory without a valid model.
    pub(crate) async fn open(dir: &Path) -> Result<WeightServer, ServerError> {
        let config = ServerConfig::new(dir.to_owned());
        let server =
            tokio::task::spawn_blocking(move || WeightServer::open(config, SystemClock::shared()))
                .await
                .map_err(|e| ServerError::Weights(Box::new(e)))?
                .map_err(|e| ServerError::Weights(Box::new(e)))?;
        tracing::info!(
            dir = %dir.display(),
            models = ?server.model_names(),
            "serving model weights at /v1/weights"
        );
        Ok(server)
    }
}

#[cfg(not(feature = "weights"))]
mod imp {
    use std::path::Path;

    use crate::error::ServerError;
    use crate::metrics::Metrics;

    /// No weight server in a build without the `weights` feature.
    #[derive(Debug, Clone)]
    pub enum WeightServer {}

    impl WeightServer {
        pub(crate) fn router(&self) -> axum::Router {
            match *self {}
        }
    }

    /// Never called: no weight server exists.
    pub(crate) fn register_metrics(server: &WeightServer, _metrics: &mut Metrics) {
        match *server {}
    }

    /// Always fails: this build has no weight routes.
    ///
    /// # Errors
    /// Always [`ServerError::Weights`].
    pub(crate) async fn open(_dir: &Path) -> Result<WeightServer, ServerError> {
        Err(ServerError::Weights(
            "this build has no weight routes (built without the `weights` feature)".into(),
        ))
    }
}

pub use imp::WeightServer;
pub(crate) use imp::{open, register_metrics};

/// The built-in model built from the weight server `from` names, on a pool batching per
/// `batch`.
///
/// # Errors
/// [`ServerError::Model`] with the streaming client's error (it names the chunk at fault).
#[cfg(all(feature = "weights", feature = "builtin"))]
pub(crate) async fn load_builtin(
    from: &crate::config::WeightsFrom,
    batch: &crate::config::BatchSettings,
) -> Result<std::sync::Arc<dyn infercache_backend::Backend>, crate::error::ServerError> {
    use crate::error::ServerError;
    use infercache_backend::BUILTIN_MODEL;
    use infercache_model::BuiltinModel;
    use infercache_model::bert::Threads;
    use infercache_weights::client::HttpConfig;

    let url = infercache_core::redact_url(&from.url);
    tracing::info!(%url, model = %from.model, "building {BUILTIN_MODEL} from a weight server's chunks");
    let model_error = |e: infercache_model::ModelError| ServerError::Model(Box::new(e));
    let threads = Threads::available().map_err(model_error)?;
    let streamed =
        infercache_weights::fetch_builtin(&from.url, &from.model, HttpConfig::default(), threads)
            .await
            .map_err(|e| ServerError::Model(Box::new(e)))?;
    tracing::info!(
        %url,
        chunks = streamed.chunks,
        bytes = streamed.bytes_fetched,
        digest = %streamed.digest,
        "every chunk verified; {BUILTIN_MODEL} built from the weight server"
    );
    if !streamed.pinned {
        tracing::warn!(
            digest = %streamed.digest,
            "these weights are not the pinned {BUILTIN_MODEL}: served under its name with \
             cache keys of their own"
        );
    }
    let pool = crate::model::pool_config(batch);
    let digest = streamed.digest;
    let model = tokio::task::spawn_blocking(move || {
        BuiltinModel::from_embedder(streamed.embedder, pool, digest)
    })
    .await
    .map_err(|e| ServerError::Model(Box::new(e)))?
    .map_err(model_error)?;
    Ok(std::sync::Arc::new(model))
}

/// A build without the `weights` feature cannot build the model from a weight server.
///
/// # Errors
/// Always [`ServerError::Weights`].
#[cfg(all(not(feature = "weights"), feature = "builtin"))]
pub(crate) async fn load_builtin(
    _from: &crate::config::WeightsFrom,
    _batch: &crate::config::BatchSettings,
) -> Result<std::sync::Arc<dyn infercache_backend::Backend>, crate::error::ServerError> {
    Err(crate::error::ServerError::Weights(
        "this build cannot fetch weights (built without the `weights` feature)".into(),
    ))
}
