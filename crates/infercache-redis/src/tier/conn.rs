//! Connections and calls: a single server's connection manager or a cluster connection,
//! and every round trip through the circuit breaker, bounded by the command timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

use super::{Shared, bump};
use crate::breaker::Breaker;
use crate::config::{RedisConfig, Target};
use crate::error::RedisTierError;

/// A connection to a single server (reconnecting by itself) or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to get a connection.
pub(super) enum Connector {
    /// Connects lazily and reconnects by itself.
    Single(ConnectionManager),
    /// Connected on first use; the connection then follows the cluster's topology.
    Cluster {
        client: Box<ClusterClient>,
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

impl Connector {
    /// The connector for `config`'s target; nothing is contacted yet.
    pub(super) fn new(config: &RedisConfig) -> Result<Self, RedisTierError> {
        Ok(match &config.target {
            Target::Single(url) => {
                let client = client(url, config)?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(5))
                    .set_max_delay(config.connect_timeout);
                let manager = ConnectionManager::new_lazy_with_config(client, cfg)
                    .map_err(RedisTierError::url)?;
                Connector::Single(manager)
            }
            Target::Cluster(urls) => {
                if urls.iter().any(|u| u.starts_with("rediss://")) {
                    install_crypto_provider();
                }
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str));
                if let Some(certs) = config.tls_certificates()? {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout)
                    .retries(1)
                    .build()
                    .map_err(RedisTierError::url)?;
                Connector::Cluster {
                    client: Box::new(client),
                    conn: tokio::sync::Mutex::new(None),
                }
            }
        })
    }
}

/// A client of the server at `url`, trusting `config`'s CA file if it has one.
pub(crate) fn client(url: &str, config: &RedisConfig) -> Result<redis::Client, RedisTierError> {
    if url.starts_with("rediss://") {
        install_crypto_provider();
    }
    match config.tls_certificates()? {
        Some(certs) => redis::Client::build_with_tls(url, certs)
            .map_err(|e| RedisTierError::Tls(format!("{}: {e}", infercache_core::redact_url(url)))),
        None => redis::Client::open(url).map_err(RedisTierError::url),
    }
}

/// Installs rustls's ring provider as the process default unless one is installed
/// already: redis-rs's TLS needs one and selects none (without it, the first `rediss://`
/// connection panics).
pub(super) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; its provider serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// One round trip.
pub(super) enum Call<'a> {
    /// One command.
    Cmd(&'a Cmd),
    /// Several commands in one round trip; their replies in order.
    Each(&'a Pipeline),
}

impl Shared {
    async fn conn(&self) -> Option<Conn> {
        match &self.connector {
            Connector::Single(m) => Some(Conn::Single(m.clone())),
            Connector::Cluster { client, conn } => {
                let mut slot = conn.lock().await;
                if let Some(c) = &*slot {
                    return Some(Conn::Cluster(c.clone()));
                }
                let fresh = tokio::time::timeout(
                    self.config.connect_timeout * 4,
                    client.get_async_connection(),
                )
                .await;
                match fresh {
                    Ok(Ok(c)) => {
                        *slot = Some(c.clone());
                        Some(Conn::Cluster(c))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Runs one round trip through the breaker, bounded by the command timeout; `None` if
    /// skipped or failed (counted either way).
    pub(super) async fn call<T: FromRedisValue>(&self, what: Call<'_>) -> Option<T> {
        if !self.breaker.permits() {
            bump(&self.counters.skipped, 1);
            return None;
        }
        let permit = Permit(&self.breaker);
        // Connecting (a cluster's first use) has its own bound in `conn`.
        let Some(mut conn) = self.conn().await else {
            self.failed();
            return None;
        };
        // A measurement for the stats, not a decision: the monotonic clock, not the
        // tier's injected one (whole milliseconds).
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.config.command_timeout * 2, async {
            match what {
                Call::Cmd(c) => c.query_async::<T>(&mut conn).await,
                Call::Each(cmds) => each(&mut conn, cmds).await.and_then(|values| {
                    T::from_redis_value(Value::Array(values)).map_err(Into::into)
                }),
            }
            .map_err(Some)
        })
        .await;
        drop(permit);
        let answered = match &outcome {
            Ok(Ok(_)) => true,
            Ok(Err(Some(e))) => !is_outage(e),
            _ => false,
        };
        if answered {
            // Redis answered: a round trip, for the tier's mean round-trip time.
            bump(&self.counters.round_trips, 1);
            bump(
                &self.counters.round_trip_micros,
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
        }
        match outcome {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.connected.store(true, Ordering::Relaxed);
                Some(v)
            }
            Ok(Err(Some(e))) if !is_outage(&e) => {
                // Redis answered: the command failed, Redis is not down.
                tracing::debug!(error = %e, "redis refused a command");
                self.breaker.success();
                self.connected.store(true, Ordering::Relaxed);
                self.count_error_reply(reply_kind(&e));
                None
            }
            Ok(Err(e)) => {
                if let Some(e) = &e {
                    tracing::debug!(error = %e, "redis call failed");
                }
                self.failed();
                None
            }
            Err(_) => {
                self.failed();
                None
            }
        }
    }

    fn count_error_reply(&self, kind: &'static str) {
        *self.error_replies.lock().entry(kind).or_insert(0) += 1;
    }

    pub(super) fn failed(&self) {
        bump(&self.counters.errors, 1);
        self.breaker.failure();
        self.connected.store(false, Ordering::Relaxed);
        // Epoch changes may be missed from now on: no value is read or written until
        // the epochs are synchronised again (see `usable`).
        self.synced.store(false, Ordering::Release);
    }

    /// Whether values may be read and written: the epochs are known to match Redis's. A
    /// node whose epochs may be behind (at start, after a failure, while its subscription
    /// is down) could otherwise read entries from before an invalidation.
    pub(super) fn usable(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            && (self.epochs.get().is_none() || self.subscribed.load(Ordering::Acquire))
    }
}

/// Whether `e` means Redis could not be reached or did not answer (what drives the
/// breaker), rather than an answer refusing the command (an error reply such as `OOM`
/// under `noeviction`, `READONLY` from a replica, `MOVED` during resharding, or a reply of
/// an unexpected type).
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// The kinds error replies are counted by: the server's error code, lower-cased, for the
/// codes Redis sends; `other` for the rest (a server's codes are not trusted to be few).
fn reply_kind(e: &redis::RedisError) -> &'static str {
    const CODES: [&str; 17] = [
        "ERR",
        "OOM",
        "READONLY",
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "CROSSSLOT",
        "MASTERDOWN",
        "LOADING",
        "NOSCRIPT",
        "NOPERM",
        "NOAUTH",
        "BUSY",
        "WRONGTYPE",
        "EXECABORT",
        "MISCONF",
    ];
    const KINDS: [&str; 17] = [
        "err",
        "oom",
        "readonly",
        "moved",
        "ask",
        "tryagain",
        "clusterdown",
        "crossslot",
        "masterdown",
        "loading",
        "noscript",
        "noperm",
        "noauth",
        "busy",
        "wrongtype",
        "execabort",
        "misconf",
    ];
    // A pipeline's error keeps its commands' codes apart from its own.
    let code = e.code().map(str::to_owned).or_else(|| {
        let items = e.clone().into_server_errors()?;
        items.first().map(|(_, err)| err.code().to_owned())
    });
    if let Some(code) = code {
        return CODES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(&code))
            .map_or("other", |i| KINDS[i]);
    }
    match e.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => "type",
        redis::ErrorKind::AuthenticationFailed => "auth",
        _ => "other",
    }
}

/// A call the breaker let through. Dropped before its outcome is recorded (the caller was
/// cancelled), it frees the half-open probe for the next caller; dropped after, it does
/// nothing that matters (the breaker left half-open when the outcome was recorded).
struct Permit<'a>(&'a Breaker);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// The commands as one pipeline (moved, not copied).
pub(super) fn pipeline(cmds: Vec<Cmd>) -> Pipeline {
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd);
    }
    pipe
}

/// Runs `cmds` in one round trip: a pipeline on a single server; on a cluster, where a
/// pipeline must stay within one slot, every command at once over the multiplexed
/// connections (each routed to its key's node).
async fn each(conn: &mut Conn, cmds: &Pipeline) -> redis::RedisResult<Vec<Value>> {
    match conn {
        Conn::Single(c) => cmds.query_async(c).await,
        Conn::Cluster(c) => {
            let replies = futures_util::future::join_all(cmds.cmd_iter().map(|cmd| {
                let mut c = c.clone();
                async move { cmd.query_async::<Value>(&mut c).await }
            }))
            .await;
            replies.into_iter().collect()
        }
    }
}
