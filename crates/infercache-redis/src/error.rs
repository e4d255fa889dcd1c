//! Errors of the Redis tier. Redis being down is not an error: it reads as misses.

/// What can stop the tier from being built.
#[derive(Debug, thiserror::Error)]
pub enum RedisTierError {
    /// A URL that cannot be parsed.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// A configuration value out of range.
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    /// TLS cannot be set up: the CA file cannot be read or parsed, or the server's
    /// certificate is not signed by a trusted CA.
    #[error("Redis TLS: {0}")]
    Tls(String),
}

impl RedisTierError {
    pub(crate) fn url(e: redis::RedisError) -> Self {
        RedisTierError::Url(e.to_string())
    }
}
