//! Configuration of the Redis tier: every default, the validation of every field (URLs
//! included), and how URLs are shown (passwords redacted). Servers build a
//! [`RedisConfig`] from their settings and call [`RedisConfig::validate`] rather than
//! restate any of it.

use std::path::PathBuf;
use std::time::Duration;

use infercache_core::redact_url;

use crate::error::RedisTierError;

/// The URL schemes of a Redis server: plain and TLS.
pub const URL_SCHEMES: [&str; 2] = ["redis", "rediss"];

/// Which Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    Single(String),
    /// A cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// The target a setting names: one URL, or several joined by commas (a cluster);
    /// `cluster` makes a single URL a cluster node too. Every URL is checked
    /// ([`Target::validate`]).
    ///
    /// # Errors
    /// [`RedisTierError::Url`] naming the (redacted) URL that is not a Redis URL.
    pub fn parse(spec: &str, cluster: bool) -> Result<Self, RedisTierError> {
        let urls: Vec<String> = spec.split(',').map(|u| u.trim().to_owned()).collect();
        let target = if urls.len() > 1 || cluster {
            Target::Cluster(urls)
        } else {
            Target::Single(urls.into_iter().next().expect("split yields one item"))
        };
        target.validate()?;
        Ok(target)
    }

    /// Checks that there is a URL and that every URL is `redis://` or `rediss://` with a
    /// host.
    ///
    /// # Errors
    /// [`RedisTierError::Url`] naming the (redacted) URL.
    pub fn validate(&self) -> Result<(), RedisTierError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(RedisTierError::Config(
                "at least one Redis URL is needed".into(),
            ));
        }
        for u in &urls {
            let ok = url::Url::parse(u).is_ok_and(|parsed| {
                URL_SCHEMES.contains(&parsed.scheme())
                    && parsed.host_str().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(RedisTierError::Url(format!(
                    "{}: give URLs starting with redis:// or rediss://, with a host",
                    redact_url(u)
                )));
            }
        }
        Ok(())
    }

    /// Every URL.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Target::Single(u) => vec![u.clone()],
            Target::Cluster(us) => us.clone(),
        }
    }

    /// The URLs with any password replaced by `***`, for logs.
    pub fn redacted(&self) -> String {
        self.urls()
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How values reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// A store awaits the Redis write (the default).
    Through,
    /// Writes queue (bounded) and a background task sends them in batches; a full queue
    /// drops the write (counted), never blocking a request. Drained by `flush`.
    Back {
        /// Queue capacity, in values.
        queue: usize,
    },
}

/// Configuration of [`crate::RedisTier`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Which Redis.
    pub target: Target,
    /// Prefix of every key this tier reads or writes. Default `infercache:`.
    pub prefix: String,
    /// Time to establish a connection. Default 50 ms.
    pub connect_timeout: Duration,
    /// Time for one command or pipeline. Default 50 ms.
    pub command_timeout: Duration,
    /// TTL of a value with none of its own, and the cap of every value's. Default 7 days.
    pub ttl: Duration,
    /// Write-through or write-back.
    pub write: WriteMode,
    /// Consecutive failures that open the breaker. Default 3.
    pub breaker_failures: u32,
    /// First time the breaker stays open. Default 250 ms.
    pub breaker_min_open: Duration,
    /// Longest time it stays open before probing. Default 2 s.
    pub breaker_max_open: Duration,
    /// How often an open breaker or a lost connection is probed. Default 250 ms.
    pub probe_interval: Duration,
    /// How often epochs are re-synchronised besides pub/sub. Default 5 s.
    pub epoch_resync: Duration,
    /// TTL of a computation lease; renewed while computing, so it matters only when its
    /// holder dies. Default 3 s.
    pub lease_ttl: Duration,
    /// Longest wait for a value another node is computing (then this node computes it).
    /// Default 10 s; keep it below the server's request timeout.
    pub lease_wait: Duration,
    /// Values larger than this are not written (a batch of them must fit the command
    /// timeout). Default 8 MiB.
    pub max_value_bytes: usize,
    /// For `rediss://` URLs: a PEM file of the CA certificates that sign the servers'
    /// certificates, trusted instead of the built-in web roots (what a private Redis with
    /// its own CA needs). Read when the tier is built. Default: none (the web roots).
    pub tls_ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// The TLS settings the clients are built with: the CA file's certificates, or `None`
    /// (plain connections, or TLS with the built-in web roots).
    ///
    /// # Errors
    /// [`RedisTierError::Tls`] naming the file when it cannot be read or holds no PEM
    /// certificate.
    pub(crate) fn tls_certificates(
        &self,
    ) -> Result<Option<redis::TlsCertificates>, RedisTierError> {
        let Some(path) = &self.tls_ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| {
            RedisTierError::Tls(format!(
                "the CA file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(RedisTierError::Tls(format!(
                "the CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        Ok(Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    /// A client of the server at `url` (one of the target's), trusting the CA file if
    /// there is one: how the tier connects, for other uses of the same Redis.
    ///
    /// # Errors
    /// [`RedisTierError::Url`] for a URL the client cannot parse, [`RedisTierError::Tls`]
    /// when the CA file cannot be read.
    pub fn client(&self, url: &str) -> Result<redis::Client, RedisTierError> {
        crate::tier::conn::client(url, self)
    }

    /// The default key prefix.
    pub const DEFAULT_PREFIX: &str = "infercache:";

    /// The default connect and command timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

    /// The defaults for `target`.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            prefix: Self::DEFAULT_PREFIX.into(),
            connect_timeout: Self::DEFAULT_TIMEOUT,
            command_timeout: Self::DEFAULT_TIMEOUT,
            ttl: Duration::from_secs(7 * 24 * 3600),
            write: WriteMode::Through,
            breaker_failures: 3,
            breaker_min_open: Duration::from_millis(250),
            breaker_max_open: Duration::from_secs(2),
            probe_interval: Duration::from_millis(250),
            epoch_resync: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(3),
            lease_wait: Duration::from_secs(10),
            max_value_bytes: 8 << 20,
            tls_ca_file: None,
        }
    }

    /// Checks every field, the URLs included.
    ///
    /// # Errors
    /// [`RedisTierError::Url`] naming the (redacted) URL, or [`RedisTierError::Config`]
    /// naming the field.
    pub fn validate(&self) -> Result<(), RedisTierError> {
        let bad = |what: &str| Err(RedisTierError::Config(what.to_owned()));
        self.target.validate()?;
        if self.prefix.is_empty() {
            return bad("the key prefix must not be empty (it keeps other data apart)");
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return bad("Redis timeouts must be positive");
        }
        if self.ttl < Duration::from_secs(1) {
            return bad("the Redis TTL must be at least 1 s");
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return bad("the lease TTL must be at least 30 ms");
        }
        if self.probe_interval.is_zero() || self.epoch_resync.is_zero() {
            return bad("the probe and epoch resync intervals must be positive");
        }
        if self.lease_wait.is_zero() {
            return bad("the lease wait must be positive");
        }
        if matches!(self.write, WriteMode::Back { queue: 0 }) {
            return bad("the write-back queue must hold at least one value");
        }
        if self.tls_ca_file.is_some()
            && self
                .target
                .urls()
                .iter()
                .any(|u| !u.starts_with("rediss://"))
        {
            return bad("a TLS CA file needs rediss:// URLs");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_show_no_password() {
        assert_eq!(
            Target::parse("rediss://:pw@h:6380/2", false).unwrap(),
            Target::Single("rediss://:pw@h:6380/2".into())
        );
        assert_eq!(
            Target::parse("redis://a:1, redis://b:2", false).unwrap(),
            Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            Target::parse("redis://a:1", true).unwrap(),
            Target::Cluster(vec!["redis://a:1".into()])
        );
        assert_eq!(
            Target::Cluster(vec!["redis://u:secret@a:1".into(), "redis://b".into()]).redacted(),
            "redis://u:***@a:1,redis://b"
        );
        for bad in ["http://:secret@h", "redis://", "h:6379", "redis://a:1,"] {
            let err = Target::parse(bad, false).unwrap_err().to_string();
            assert!(
                err.contains("redis://") && !err.contains("secret"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = RedisConfig::new(Target::Single("redis://127.0.0.1".into()));
        assert!(c.validate().is_ok());
        c.prefix.clear();
        assert!(matches!(c.validate(), Err(RedisTierError::Config(m)) if m.contains("prefix")));
    }
}
