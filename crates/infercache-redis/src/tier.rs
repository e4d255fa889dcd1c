//! [`RedisTier`]: the engine's [`RemoteTier`] on Redis or Redis Cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use infercache_core::{Digest, SharedClock};
use infercache_engine::remote::BoxFuture;
use infercache_engine::{EpochSync, Lease, RemoteEntry, RemoteStats, RemoteTier, Scope};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tokio::sync::{mpsc, oneshot};

use crate::breaker::Breaker;
use crate::codec;
use crate::config::{RedisConfig, Target, WriteMode};
use crate::error::RedisTierError;

/// Raises a scope's epoch to `max(remote, local) + 1`, stores and publishes it.
/// KEYS[1]: the epoch hash. ARGV: field, local epoch, channel.
const BUMP: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local loc = tonumber(ARGV[2])
if loc > cur then cur = loc end
cur = cur + 1
redis.call('HSET', KEYS[1], ARGV[1], cur)
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\n' .. cur)
return cur
";

/// Raises each given field to at least its value (publishing those raised) and returns
/// the whole hash. KEYS[1]: the epoch hash. ARGV: channel, then field, value pairs.
const MERGE: &str = r"
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local v = tonumber(ARGV[i + 1])
  if v > cur then
    redis.call('HSET', KEYS[1], ARGV[i], v)
    redis.call('PUBLISH', ARGV[1], ARGV[i] .. '\n' .. v)
  end
end
return redis.call('HGETALL', KEYS[1])
";

/// Deletes a lease if this node still holds it. KEYS[1]: the lease. ARGV[1]: the token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Extends a lease if this node still holds it. KEYS[1]: the lease. ARGV: token, ttl ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// A connection to a single server (reconnecting by itself) or to a cluster.
#[derive(Clone)]
enum Conn {
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
enum Connector {
    /// Connects lazily and reconnects by itself.
    Single(ConnectionManager),
    /// Connected on first use; the connection then follows the cluster's topology.
    Cluster {
        client: Box<ClusterClient>,
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    writeback_dropped: AtomicU64,
    leases_granted: AtomicU64,
    leases_contended: AtomicU64,
    lease_waits_filled: AtomicU64,
    lease_waits_empty: AtomicU64,
    epoch_updates: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

enum WriteJob {
    Put(Digest, RemoteEntry),
    /// Leases to release once the puts queued before them are written.
    Release(Vec<String>, String),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    config: RedisConfig,
    clock: SharedClock,
    connector: Connector,
    /// For the pub/sub connection (a cluster's first node: publications reach every node).
    pubsub_client: redis::Client,
    breaker: Breaker,
    connected: AtomicBool,
    /// The epochs were synchronised with Redis since the last failure.
    synced: AtomicBool,
    /// The epoch channel is subscribed (changes made elsewhere reach this node).
    subscribed: AtomicBool,
    /// Scopes invalidated here while Redis was unreachable: bumped in Redis (not merged)
    /// at the next synchronisation, so they are not lost in a concurrent bump elsewhere.
    pending_bumps: parking_lot::Mutex<Vec<Scope>>,
    counters: Counters,
    epochs: OnceLock<EpochSync>,
    write_tx: Option<mpsc::Sender<WriteJob>>,
    /// Unique per process: lease tokens.
    node: String,
    next_token: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("target", &self.config.target.redacted())
            .field("prefix", &self.config.prefix)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// The Redis tier. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct RedisTier {
    shared: Arc<Shared>,
}

impl RedisTier {
    /// A tier on `config`'s Redis. Nothing is contacted yet: a node starts (and serves)
    /// while Redis is down, and the tier comes into use when Redis answers. Starts the
    /// prober, the pub/sub listener and (for write-back) the writer; call inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`RedisTierError::Url`] for a URL that cannot be parsed.
    pub fn connect(config: RedisConfig, clock: SharedClock) -> Result<Self, RedisTierError> {
        config.validate()?;
        let urls = config.target.urls();
        let pubsub_client = redis::Client::open(urls[0].as_str()).map_err(RedisTierError::url)?;
        let connector = match &config.target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(RedisTierError::url)?;
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
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
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
        };
        let (write_tx, write_rx) = match config.write {
            WriteMode::Back { queue } => {
                let (tx, rx) = mpsc::channel(queue.max(1));
                (Some(tx), Some(rx))
            }
            WriteMode::Through => (None, None),
        };
        let breaker = Breaker::new(
            config.breaker_failures,
            config.breaker_min_open,
            config.breaker_max_open,
        );
        let shared = Arc::new(Shared {
            pubsub_client,
            connector,
            breaker,
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            pending_bumps: parking_lot::Mutex::new(Vec::new()),
            counters: Counters::default(),
            epochs: OnceLock::new(),
            write_tx,
            node: format!("{:016x}", rand::random::<u64>()),
            next_token: AtomicU64::new(0),
            config,
            clock,
        });
        tokio::spawn(probe(Arc::downgrade(&shared)));
        if let Some(rx) = write_rx {
            tokio::spawn(write_back(Arc::downgrade(&shared), rx));
        }
        Ok(Self { shared })
    }

    /// The breaker's state.
    pub fn breaker(&self) -> crate::BreakerState {
        self.shared.breaker.state()
    }

    /// Whether Redis answered the last call.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The Redis key of a value.
    pub fn value_key(&self, key: &Digest) -> String {
        self.shared.value_key(key)
    }
}

impl Shared {
    fn value_key(&self, key: &Digest) -> String {
        self.redis_key("v:", key)
    }

    fn lease_key(&self, key: &Digest) -> String {
        self.redis_key("l:", key)
    }

    /// `{prefix}{kind}{hex of key}` in one allocation: this runs for every key of every
    /// batch.
    fn redis_key(&self, kind: &str, key: &Digest) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.config.prefix.len() + kind.len() + 64);
        out.push_str(&self.config.prefix);
        out.push_str(kind);
        for b in key.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    fn epoch_key(&self) -> String {
        format!("{}epochs", self.config.prefix)
    }

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
    async fn call<T: FromRedisValue>(&self, what: Call<'_>) -> Option<T> {
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
        match outcome {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.connected.store(true, Ordering::Relaxed);
                Some(v)
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

    fn failed(&self) {
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
    fn usable(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            && (self.epochs.get().is_none() || self.subscribed.load(Ordering::Acquire))
    }

    /// PX for an entry: its remaining life, capped by the default TTL; `None` if expired.
    fn px(&self, entry: &RemoteEntry) -> Option<u64> {
        let cap = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        match entry.expires_ms {
            Some(at) => {
                let left = at.checked_sub(self.clock.now_ms())?;
                (left > 0).then_some(left.min(cap))
            }
            None => Some(cap),
        }
    }

    /// Writes entries in one round trip.
    async fn write(&self, entries: &[(Digest, RemoteEntry)]) {
        let mut cmds = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            if entry.value.len() > self.config.max_value_bytes {
                continue;
            }
            let Some(px) = self.px(entry) else { continue };
            let mut set = redis::cmd("SET");
            set.arg(self.value_key(key))
                .arg(codec::encode(key, entry))
                .arg("PX")
                .arg(px);
            cmds.push(set);
        }
        if cmds.is_empty() {
            return;
        }
        let n = cmds.len() as u64;
        if self
            .call::<Value>(Call::Each(&pipeline(cmds)))
            .await
            .is_some()
        {
            bump(&self.counters.writes, n);
        }
    }

    /// Decodes a value read under `key`, counting what it was.
    fn decode(&self, key: &Digest, bytes: Option<Vec<u8>>) -> Option<RemoteEntry> {
        let Some(bytes) = bytes else {
            bump(&self.counters.misses, 1);
            return None;
        };
        match codec::decode_owned(key, bytes) {
            Ok(entry) if entry.expires_ms.is_none_or(|at| at > self.clock.now_ms()) => {
                bump(&self.counters.hits, 1);
                Some(entry)
            }
            Ok(_) => {
                bump(&self.counters.misses, 1);
                None
            }
            Err(e) => {
                tracing::warn!(key = %key.to_hex(), error = %e, "redis value refused");
                bump(&self.counters.corrupt, 1);
                None
            }
        }
    }

    fn token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.node)
    }

    fn channel(&self) -> String {
        self.epoch_key()
    }

    /// Pushes this node's epochs (raising Redis's where lower) and adopts Redis's.
    async fn sync_epochs(&self) -> bool {
        let Some(epochs) = self.epochs.get() else {
            self.synced.store(true, Ordering::Release);
            return true;
        };
        let pending: Vec<Scope> = std::mem::take(&mut *self.pending_bumps.lock());
        for (i, scope) in pending.iter().enumerate() {
            match self.bump(scope, epochs.get(scope)).await {
                Some(value) => {
                    epochs.raise(scope.clone(), value).await;
                }
                None => {
                    self.pending_bumps.lock().extend_from_slice(&pending[i..]);
                    return false;
                }
            }
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(MERGE)
            .arg(1)
            .arg(self.epoch_key())
            .arg(self.channel());
        for (scope, value) in epochs.entries() {
            cmd.arg(scope_field(&scope)).arg(value);
        }
        let Some(all) = self.call::<Vec<(String, u64)>>(Call::Cmd(&cmd)).await else {
            return false;
        };
        for (field, value) in all {
            if let Some(scope) = field_scope(&field)
                && epochs.raise(scope, value).await
            {
                bump(&self.counters.epoch_updates, 1);
            }
        }
        self.synced.store(true, Ordering::Release);
        true
    }

    /// The BUMP script: `max(redis, local) + 1` for `scope`, published.
    async fn bump(&self, scope: &Scope, local: u64) -> Option<u64> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP)
            .arg(1)
            .arg(self.epoch_key())
            .arg(scope_field(scope))
            .arg(local)
            .arg(self.channel());
        self.call::<u64>(Call::Cmd(&cmd)).await
    }

    async fn apply_message(&self, payload: &[u8]) {
        let Some((field, value)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.rsplit_once('\n'))
        else {
            return;
        };
        let (Some(scope), Ok(value), Some(epochs)) =
            (field_scope(field), value.parse::<u64>(), self.epochs.get())
        else {
            tracing::warn!("ignoring a malformed epoch message");
            return;
        };
        if epochs.raise(scope, value).await {
            bump(&self.counters.epoch_updates, 1);
        }
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

enum Call<'a> {
    /// One command.
    Cmd(&'a Cmd),
    /// Several commands in one round trip; their replies in order.
    Each(&'a Pipeline),
}

/// The commands as one pipeline (moved, not copied).
fn pipeline(cmds: Vec<Cmd>) -> Pipeline {
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

/// The hash field of a scope: its JSON (serde's field order is fixed, so it is canonical).
fn scope_field(scope: &Scope) -> String {
    serde_json::to_string(scope).expect("a scope serializes")
}

fn field_scope(field: &str) -> Option<Scope> {
    serde_json::from_str(field).ok()
}

impl RemoteTier for RedisTier {
    fn attach(&self, epochs: EpochSync) {
        if self.shared.epochs.set(epochs).is_ok() {
            tokio::spawn(listen(Arc::downgrade(&self.shared)));
        }
    }

    fn get_many<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(async move {
            let s = &*self.shared;
            if keys.is_empty() {
                return Vec::new();
            }
            if !s.usable() {
                bump(&s.counters.skipped, 1);
                return vec![None; keys.len()];
            }
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(s.value_key(k));
            }
            match s.call::<Vec<Option<Vec<u8>>>>(Call::Cmd(&cmd)).await {
                Some(values) if values.len() == keys.len() => keys
                    .iter()
                    .zip(values)
                    .map(|(k, v)| s.decode(k, v))
                    .collect(),
                _ => vec![None; keys.len()],
            }
        })
    }

    fn put_many(&self, entries: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &*self.shared;
            if !s.usable() {
                bump(&s.counters.skipped, 1);
                return;
            }
            match &s.write_tx {
                Some(tx) => {
                    for (k, e) in entries {
                        if tx.try_send(WriteJob::Put(k, e)).is_err() {
                            bump(&s.counters.writeback_dropped, 1);
                        }
                    }
                }
                None => s.write(&entries).await,
            }
        })
    }

    fn remove(&self, key: Digest) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let s = &*self.shared;
            let mut cmd = redis::cmd("DEL");
            cmd.arg(s.value_key(&key));
            s.call::<u64>(Call::Cmd(&cmd)).await.unwrap_or(0) > 0
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(tx) = &self.shared.write_tx {
                let (ack, done) = oneshot::channel();
                if tx.send(WriteJob::Flush(ack)).await.is_ok() {
                    let _ = done.await;
                }
            }
        })
    }

    fn bump_epoch<'a>(&'a self, scope: &'a Scope, local: u64) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move {
            let s = &*self.shared;
            let agreed = s.bump(scope, local).await;
            if agreed.is_none() {
                s.pending_bumps.lock().push(scope.clone());
                s.synced.store(false, Ordering::Release);
            }
            agreed
        })
    }

    fn lease<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Box<dyn Lease>> {
        Box::pin(async move {
            let s = &self.shared;
            let token = s.token();
            let ttl = u64::try_from(s.config.lease_ttl.as_millis()).unwrap_or(u64::MAX);
            // Per key, the lease and the value in one round trip: a value stored by
            // another node since this node's lookup is found here instead of computed
            // again.
            let mut cmds = Vec::with_capacity(keys.len() * 2);
            for k in keys {
                let mut set = redis::cmd("SET");
                set.arg(s.lease_key(k))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl);
                let mut get = redis::cmd("GET");
                get.arg(s.value_key(k));
                cmds.push(set);
                cmds.push(get);
            }
            let replies = if s.usable() {
                s.call::<Vec<Value>>(Call::Each(&pipeline(cmds))).await
            } else {
                None
            };
            let (granted, found): (Vec<bool>, Vec<Option<RemoteEntry>>) = match replies {
                Some(r) if r.len() == keys.len() * 2 => keys
                    .iter()
                    .zip(r.chunks(2))
                    .map(|(k, pair)| {
                        let granted = !matches!(pair[0], Value::Nil);
                        // Already counted as a miss (or as corrupt) by the lookup before.
                        let now = s.clock.now_ms();
                        let value = Option::<Vec<u8>>::from_redis_value(pair[1].clone())
                            .ok()
                            .flatten()
                            .and_then(|bytes| codec::decode_owned(k, bytes).ok())
                            .filter(|e| e.expires_ms.is_none_or(|at| at > now));
                        (granted, value)
                    })
                    .unzip(),
                // Unreachable Redis: every key is granted (no coordination, never a wait).
                _ => {
                    let lease = RedisLease {
                        tier: Arc::downgrade(s),
                        granted: vec![true; keys.len()],
                        found: vec![None; keys.len()],
                        held: Vec::new(),
                        token,
                        renew: None,
                    };
                    return Box::new(lease) as Box<dyn Lease>;
                }
            };
            let held: Vec<String> = keys
                .iter()
                .zip(&granted)
                .filter(|(_, g)| **g)
                .map(|(k, _)| s.lease_key(k))
                .collect();
            bump(&s.counters.leases_granted, held.len() as u64);
            bump(
                &s.counters.leases_contended,
                (keys.len() - held.len()) as u64,
            );
            let renew = (!held.is_empty()).then(|| {
                tokio::spawn(renew(
                    Arc::downgrade(s),
                    held.clone(),
                    token.clone(),
                    s.config.lease_ttl,
                ))
                .abort_handle()
            });
            Box::new(RedisLease {
                tier: Arc::downgrade(s),
                granted,
                found,
                held,
                token,
                renew,
            }) as Box<dyn Lease>
        })
    }

    fn wait_for<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(async move {
            let s = &*self.shared;
            let mut out: Vec<Option<RemoteEntry>> = vec![None; keys.len()];
            let mut pending: Vec<usize> = (0..keys.len()).collect();
            let deadline = tokio::time::Instant::now() + s.config.lease_wait;
            let mut pause = Duration::from_millis(2);
            while !pending.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
                // The lease before the value: a holder stores, then releases, so a lease
                // seen gone means the value (if any) is already readable.
                let mut cmds = Vec::with_capacity(pending.len() * 2);
                for &i in &pending {
                    let mut exists = redis::cmd("EXISTS");
                    exists.arg(s.lease_key(&keys[i]));
                    let mut get = redis::cmd("GET");
                    get.arg(s.value_key(&keys[i]));
                    cmds.push(exists);
                    cmds.push(get);
                }
                let Some(replies) = s.call::<Vec<Value>>(Call::Each(&pipeline(cmds))).await else {
                    break; // Redis is gone: compute.
                };
                let mut still = Vec::new();
                for (&i, pair) in pending.iter().zip(replies.chunks(2)) {
                    let leased = matches!(pair.first(), Some(Value::Int(1)));
                    let value = pair
                        .get(1)
                        .and_then(|v| Option::<Vec<u8>>::from_redis_value(v.clone()).ok())
                        .flatten();
                    match (value, leased) {
                        (Some(bytes), _) => match codec::decode_owned(&keys[i], bytes) {
                            Ok(entry) => out[i] = Some(entry),
                            Err(_) => bump(&s.counters.corrupt, 1),
                        },
                        (None, true) => still.push(i),
                        (None, false) => {}
                    }
                }
                pending = still;
            }
            let filled = out.iter().filter(|v| v.is_some()).count() as u64;
            bump(&s.counters.lease_waits_filled, filled);
            bump(&s.counters.lease_waits_empty, keys.len() as u64 - filled);
            out
        })
    }

    fn stats(&self) -> RemoteStats {
        let s = &*self.shared;
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            kind: match s.config.target {
                Target::Single(_) => "redis".into(),
                Target::Cluster(_) => "redis-cluster".into(),
            },
            endpoint: s.config.target.redacted(),
            breaker: s.breaker.state().as_str().into(),
            connected: s.connected.load(Ordering::Relaxed) && s.usable(),
            breaker_opened: s.breaker.opened(),
            hits: get(&c.hits),
            misses: get(&c.misses),
            corrupt: get(&c.corrupt),
            writes: get(&c.writes),
            errors: get(&c.errors),
            skipped: get(&c.skipped),
            writeback_dropped: get(&c.writeback_dropped),
            writeback_queued: s
                .write_tx
                .as_ref()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64),
            leases_granted: get(&c.leases_granted),
            leases_contended: get(&c.leases_contended),
            lease_waits_filled: get(&c.lease_waits_filled),
            lease_waits_empty: get(&c.lease_waits_empty),
            epoch_updates: get(&c.epoch_updates),
        }
    }
}

/// The leases of one call: renewed while held, released (if still ours) when done.
struct RedisLease {
    tier: Weak<Shared>,
    granted: Vec<bool>,
    found: Vec<Option<RemoteEntry>>,
    held: Vec<String>,
    token: String,
    renew: Option<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    fn take(&mut self) -> Option<(Arc<Shared>, Vec<String>, String)> {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return None;
        }
        Some((self.tier.upgrade()?, held, self.token.clone()))
    }
}

async fn release(tier: Arc<Shared>, held: Vec<String>, token: String) {
    let cmds: Vec<Cmd> = held
        .iter()
        .map(|key| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(RELEASE).arg(1).arg(key).arg(&token);
            eval
        })
        .collect();
    tier.call::<Value>(Call::Each(&pipeline(cmds))).await;
}

impl Lease for RedisLease {
    fn granted(&self) -> &[bool] {
        &self.granted
    }

    fn take_found(&mut self) -> Vec<Option<RemoteEntry>> {
        std::mem::take(&mut self.found)
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let job = self.take();
        Box::pin(async move {
            let Some((tier, held, token)) = job else {
                return;
            };
            // With write-back the values are still queued: release behind them, so a
            // node that sees the lease gone finds the value.
            if let Some(tx) = &tier.write_tx {
                match tx.try_send(WriteJob::Release(held, token)) {
                    Ok(()) => {}
                    Err(e) => {
                        let WriteJob::Release(held, token) = e.into_inner() else {
                            unreachable!("the job just sent")
                        };
                        release(tier, held, token).await;
                    }
                }
            } else {
                release(tier, held, token).await;
            }
        })
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        // A cancelled or failed computation: let the other nodes compute now rather than
        // wait for the leases to expire.
        if let Some((tier, held, token)) = self.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(release(tier, held, token));
        }
    }
}

/// Extends held leases every third of their TTL until aborted.
async fn renew(tier: Weak<Shared>, held: Vec<String>, token: String, ttl: Duration) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(tier) = tier.upgrade() else { return };
        let cmds: Vec<Cmd> = held
            .iter()
            .map(|key| {
                let mut eval = redis::cmd("EVAL");
                eval.arg(RENEW).arg(1).arg(key).arg(&token).arg(ttl_ms);
                eval
            })
            .collect();
        tier.call::<Value>(Call::Each(&pipeline(cmds))).await;
    }
}

/// While the breaker is not closed, pings Redis so it closes as soon as Redis is back,
/// without waiting for traffic.
async fn probe(tier: Weak<Shared>) {
    loop {
        let Some(s) = tier.upgrade() else { return };
        let every = s.config.probe_interval;
        if !s.usable() || s.breaker.state() != crate::BreakerState::Closed {
            // Synchronising the epochs is the probe: the tier is used again only once it
            // succeeds.
            s.sync_epochs().await;
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

/// Listens for epoch changes; on every (re)subscription and every `epoch_resync`, pushes
/// this node's epochs and adopts Redis's, so a node that missed messages while
/// disconnected catches up.
async fn listen(tier: Weak<Shared>) {
    loop {
        let Some(s) = tier.upgrade() else { return };
        let every = s.config.probe_interval;
        let resync = s.config.epoch_resync;
        let channel = s.channel();
        let pubsub = tokio::time::timeout(
            s.config.connect_timeout * 4,
            s.pubsub_client.get_async_pubsub(),
        )
        .await;
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            _ => {
                drop(s);
                tokio::time::sleep(every).await;
                continue;
            }
        };
        if pubsub.subscribe(&channel).await.is_err() {
            drop(s);
            tokio::time::sleep(every).await;
            continue;
        }
        // Messages published before the subscription are covered by this sync.
        s.subscribed.store(true, Ordering::Release);
        s.synced.store(false, Ordering::Release);
        s.sync_epochs().await;
        drop(s);
        let mut messages = pubsub.on_message();
        let mut ticker = tokio::time::interval(resync);
        ticker.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        // Disconnected: changes may be missed until resubscribed and synced.
                        if let Some(s) = tier.upgrade() {
                            s.subscribed.store(false, Ordering::Release);
                            s.synced.store(false, Ordering::Release);
                        }
                        break;
                    };
                    let Some(s) = tier.upgrade() else { return };
                    s.apply_message(msg.get_payload_bytes()).await;
                }
                _ = ticker.tick() => {
                    let Some(s) = tier.upgrade() else { return };
                    s.sync_epochs().await;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Drains the write-back queue in batches, one round trip each.
async fn write_back(tier: Weak<Shared>, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(s) = tier.upgrade() else { return };
        let mut puts = Vec::with_capacity(batch.len());
        let mut releases = Vec::new();
        let mut acks = Vec::new();
        for job in batch.drain(..) {
            match job {
                WriteJob::Put(k, e) => puts.push((k, e)),
                WriteJob::Release(held, token) => releases.push((held, token)),
                WriteJob::Flush(ack) => acks.push(ack),
            }
        }
        s.write(&puts).await;
        for (held, token) in releases {
            release(Arc::clone(&s), held, token).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
