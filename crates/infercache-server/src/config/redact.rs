//! The effective configuration for the start-up log, every secret redacted.

use std::fmt;
use std::path::PathBuf;

use infercache_engine::LocalReads;

use super::{RedisTarget, ServerConfig};

impl ServerConfig {
    /// A display of the effective configuration for the start-up log. It holds no secret:
    /// API keys live only in their file, whose path is shown, never its contents.
    pub fn redacted(&self) -> impl fmt::Display + '_ {
        Redacted(self)
    }
}

struct Redacted<'a>(&'a ServerConfig);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("none".to_owned(), |p| p.display().to_string())
        };
        write!(f, "bind={} enable_cache={}", c.bind, c.enable_cache)?;
        write!(
            f,
            " memory={} ({} bytes) policy={}",
            c.memory, c.memory_bytes, c.policy
        )?;
        match &c.disk {
            Some(d) => write!(
                f,
                " disk_dir={} disk_size={} disk_compression={}",
                d.dir.display(),
                d.capacity,
                d.compression
            )?,
            None => write!(f, " disk_dir=none")?,
        }
        write!(
            f,
            " ttl={:?} write_back_queue={:?} cache_version={} model_dir={}",
            c.ttl,
            c.write_back_queue,
            c.cache_version,
            opt(&c.model_dir)
        )?;
        match &c.weights_from {
            Some(w) => write!(
                f,
                " weights_from={} weights_model={}",
                infercache_core::redact_url(&w.url),
                w.model
            )?,
            None => write!(f, " weights_from=none weights_model=none")?,
        }
        write!(f, " weights_dir={}", opt(&c.weights_dir))?;
        write!(
            f,
            " max_batch={} max_wait={:?} inference_queue={}",
            c.batch.max_batch, c.batch.max_wait, c.batch.queue
        )?;
        write!(
            f,
            " api_keys_file={} (keys redacted)",
            opt(&c.api_keys_file)
        )?;
        match c.redis.as_ref().map(|r| &r.target) {
            None => write!(f, " redis=none")?,
            Some(RedisTarget::Auto {
                memory_fraction,
                dir,
            }) => write!(
                f,
                " redis=auto redis_memory_fraction={memory_fraction} redis_dir={}",
                dir.display()
            )?,
            Some(RedisTarget::Url(u)) => {
                write!(f, " redis={}", infercache_core::redact_url(u))?;
            }
            Some(RedisTarget::Cluster(us)) => {
                let shown: Vec<String> =
                    us.iter().map(|u| infercache_core::redact_url(u)).collect();
                write!(f, " redis_cluster={}", shown.join(","))?;
            }
        }
        if let Some(r) = &c.redis {
            write!(
                f,
                " redis_prefix={} redis_write_back_queue={:?} redis_timeout={:?}",
                r.prefix, r.write_back_queue, r.timeout
            )?;
            match r.local_reads {
                LocalReads::InSync { grace } => {
                    write!(f, " redis_local_reads=in-sync redis_local_grace={grace:?}")?;
                }
                LocalReads::Always => write!(f, " redis_local_reads=always")?,
            }
            if let Some(ca) = &r.ca_file {
                write!(f, " redis_ca_file={}", ca.display())?;
            }
        }
        let l = &c.limits;
        write!(
            f,
            " max_body_size={} body_budget={} max_items={} max_input_chars={} max_concurrent_requests={} request_timeout={:?} shutdown_timeout={:?}",
            l.max_body_bytes,
            l.body_budget_bytes,
            l.max_items,
            l.max_input_chars,
            l.max_concurrent_requests,
            l.request_timeout,
            c.shutdown_timeout
        )?;
        for m in &c.models {
            let url = m
                .url
                .as_deref()
                .map_or_else(|| "in-process".to_owned(), infercache_core::redact_url);
            write!(f, " model={}:{}@{url}", m.name, m.backend)?;
        }
        let d = &c.datasets_cache;
        write!(
            f,
            " datasets_dir={} datasets_cache=disk_size:{},memory_size:{},policy:{}",
            c.datasets_dir
                .as_ref()
                .map_or("none".to_owned(), |p| p.display().to_string()),
            d.disk_size,
            d.memory_size,
            d.policy
        )?;
        Ok(())
    }
}
