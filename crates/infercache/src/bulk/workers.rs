//! `bulk --workers`: one job shared by several processes through a Redis
//! ([`infercache_jobs::distributed`]). The job's Redis is also the cache's Redis tier, so
//! the rows one worker computes are hits for every other and for the one writing the
//! output: when the configuration has no `redis`, the `--workers` URL becomes it.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use infercache_jobs::{JobModel, JobOptions, Progress, Summary};
use infercache_server::{ServeArgs, ServerConfig};

/// The Redis of a distributed job, as the tier's client settings.
#[cfg(feature = "redis")]
pub type Redis = infercache_redis::RedisConfig;
/// No Redis in a build without the `redis` feature.
#[cfg(not(feature = "redis"))]
pub type Redis = std::convert::Infallible;

/// How a distributed job runs.
#[derive(Debug)]
pub struct Settings {
    /// Its Redis.
    pub redis: Redis,
    /// `--claim-timeout`.
    pub claim_timeout: Duration,
    /// `--collect`.
    pub collect: bool,
}

/// The configuration a job runs on and, with `--workers` (`Some`, empty for the
/// configuration's own `redis`), the Redis of the distributed job.
///
/// # Errors
/// The configuration is invalid, or `--workers` names no single Redis server the workers
/// can share.
#[cfg(feature = "redis")]
pub fn configure(
    workers: Option<&str>,
    serve: &ServeArgs,
) -> anyhow::Result<(ServerConfig, Option<Redis>)> {
    use anyhow::Context as _;
    use infercache_server::config::RedisTarget;

    let Some(workers) = workers else {
        return Ok((ServerConfig::from_args(serve)?, None));
    };
    let given = Some(workers.trim()).filter(|u| !u.is_empty());
    let config = match (ServerConfig::from_args(serve), given) {
        (Ok(config), _) if config.redis.is_some() => config,
        // No cache tier on Redis: the job's Redis becomes it.
        (_, Some(url)) => {
            let mut serve = serve.clone();
            serve.redis = Some(url.to_owned());
            ServerConfig::from_args(&serve)?
        }
        (config, None) => {
            config?;
            anyhow::bail!(
                "--workers needs the Redis the workers share: give its URL, or set `redis` in the configuration"
            );
        }
    };
    let settings = config
        .redis
        .as_ref()
        .expect("the configuration has a Redis tier here");
    let url = match (given, &settings.target) {
        (Some(url), _) => url.to_owned(),
        (None, RedisTarget::Url(url)) => url.clone(),
        (None, RedisTarget::Auto { .. }) => anyhow::bail!(
            "--workers needs a Redis the workers share: `redis = auto` is this process's own; give a URL"
        ),
        (None, RedisTarget::Cluster(_)) => {
            anyhow::bail!("--workers needs a single Redis server, not a cluster")
        }
    };
    let target = infercache_redis::Target::parse(&url, false).context("--workers")?;
    let mut redis = infercache_redis::RedisConfig::new(target);
    redis.prefix.clone_from(&settings.prefix);
    redis.tls_ca_file.clone_from(&settings.ca_file);
    Ok((config, Some(redis)))
}

/// Without the `redis` feature, `--workers` is refused.
///
/// # Errors
/// `--workers` was given.
#[cfg(not(feature = "redis"))]
pub fn configure(
    workers: Option<&str>,
    serve: &ServeArgs,
) -> anyhow::Result<(ServerConfig, Option<Redis>)> {
    if workers.is_some() {
        anyhow::bail!("--workers: this build has no Redis (built without the `redis` feature)");
    }
    Ok((ServerConfig::from_args(serve)?, None))
}

/// Runs the distributed job: computes batches until the job's stream is drained (unless
/// `--collect`), then writes the output.
///
/// # Errors
/// Redis cannot be reached (before anything is written), or the job fails.
pub async fn run(
    model: &dyn JobModel,
    options: &JobOptions,
    settings: &Settings,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> anyhow::Result<Summary> {
    #[cfg(feature = "redis")]
    {
        let distributed = infercache_jobs::distributed::Distributed {
            redis: settings.redis.clone(),
            claim_timeout: settings.claim_timeout,
            collect: settings.collect,
        };
        Ok(infercache_jobs::distributed::run(model, options, &distributed, stop, progress).await?)
    }
    #[cfg(not(feature = "redis"))]
    match settings.redis {}
}
