//! The shared Redis tier of a configuration, when this build has one (feature `redis`):
//! [`connect`] builds it, starting a local `redis-server` for `redis = "auto"`, and
//! [`Managed`] is that process, stopped once the cache has flushed. Built without the
//! feature, the configuration refuses `redis` and [`connect`] fails.

use std::sync::Arc;

use infercache_engine::RemoteTier;

use crate::config::RedisSettings;
use crate::error::ServerError;

pub(crate) use imp::{Managed, connect};

#[cfg(feature = "redis")]
mod imp {
    use infercache_core::SystemClock;
    use infercache_redis::managed::{ManagedConfig, ManagedRedis};
    use infercache_redis::{RedisConfig, RedisTier, Target, WriteMode};

    use super::{Arc, RedisSettings, RemoteTier, ServerError};
    use crate::config::RedisTarget;

    /// A `redis-server` this process started (`redis = "auto"`).
    #[derive(Debug)]
    pub(crate) struct Managed(ManagedRedis);

    impl Managed {
        /// Stops it (Redis flushes its append-only file), logging the outcome.
        pub(crate) async fn stop(self) {
            match self.0.stop().await {
                Ok(status) => tracing::info!(%status, "managed redis-server stopped"),
                Err(e) => tracing::warn!(error = %e, "stopping the managed redis-server failed"),
            }
        }
    }

    /// The Redis tier per `settings`, with the `redis-server` started for `auto`.
    ///
    /// # Errors
    /// [`ServerError::Redis`]: `redis-server` could not start, the target is invalid, the
    /// CA file cannot be read, or a `rediss://` server's certificate is not signed by the
    /// trusted CAs. Redis being down is not an error: the tier reconnects.
    pub(crate) async fn connect(
        settings: &RedisSettings,
    ) -> Result<(Arc<dyn RemoteTier>, Option<Managed>), ServerError> {
        let mut managed = None;
        let target = match &settings.target {
            RedisTarget::Auto {
                memory_fraction,
                dir,
            } => {
                let managed_config = ManagedConfig {
                    memory_fraction: *memory_fraction,
                    ..ManagedConfig::new(dir.clone())
                };
                let redis = ManagedRedis::start(managed_config)
                    .await
                    .map_err(|e| ServerError::Redis(e.to_string()))?;
                tracing::info!(url = %redis.url(), dir = %dir.display(), "managed redis-server started");
                let url = redis.url();
                managed = Some(Managed(redis));
                Target::Single(url)
            }
            RedisTarget::Url(u) => Target::Single(u.clone()),
            RedisTarget::Cluster(us) => Target::Cluster(us.clone()),
        };
        let mut config = RedisConfig::new(target);
        config.prefix.clone_from(&settings.prefix);
        config.connect_timeout = settings.timeout;
        config.command_timeout = settings.timeout;
        if let Some(queue) = settings.write_back_queue {
            config.write = WriteMode::Back { queue };
        }
        config.tls_ca_file.clone_from(&settings.ca_file);
        let tier = RedisTier::connect(config, SystemClock::shared())
            .map_err(|e| ServerError::Redis(e.to_string()))?;
        // A server whose certificate the CAs do not sign would fail every call: refuse
        // it now, naming it. A Redis merely down is not an error (the tier reconnects).
        tier.verify()
            .await
            .map_err(|e| ServerError::Redis(e.to_string()))?;
        Ok((Arc::new(tier), managed))
    }
}

#[cfg(not(feature = "redis"))]
mod imp {
    use super::{Arc, RedisSettings, RemoteTier, ServerError};

    /// No `redis-server` is ever started by a build without the Redis tier.
    #[derive(Debug)]
    pub(crate) enum Managed {}

    impl Managed {
        pub(crate) async fn stop(self) {
            match self {}
        }
    }

    /// Always fails: this build has no Redis tier.
    ///
    /// # Errors
    /// Always [`ServerError::Redis`].
    pub(crate) async fn connect(
        _settings: &RedisSettings,
    ) -> Result<(Arc<dyn RemoteTier>, Option<Managed>), ServerError> {
        Err(ServerError::Redis(
            "this build has no Redis tier (built without the `redis` feature)".to_owned(),
        ))
    }
}
