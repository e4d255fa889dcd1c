//! [`RedisTier`]: the engine's [`RemoteTier`] on Redis or Redis Cluster.
//!
//! - `conn`: connections, and every round trip through the circuit breaker.
//! - `values`: value keys, TTLs, batched reads and writes.
//! - `epochs`: the shared epoch hash, bumps, the listener and the synchronisation.
//! - `lease`: distributed single flight (leases, renewals, waits for another node).
//! - `removals`: removals that reach every node (the removal log, messages, replays).
//! - `write_back`: the write-back queue and its drainer.
//! - `lua/`: the scripts (`include_str!`), each atomic on the Redis side.

pub(crate) mod conn;
mod epochs;
mod lease;
mod removals;
mod values;
mod write_back;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use infercache_core::{Digest, SharedClock};
use infercache_engine::remote::{Accept, BoxFuture};
use infercache_engine::{
    BreakerState, EpochSync, EpochsInSync, Lease, RemoteEntry, RemoteRemoval, RemoteStats,
    RemoteTier, Scope,
};
use tokio::sync::mpsc;

use self::conn::Connector;
use self::write_back::WriteJob;
use crate::breaker::Breaker;
use crate::config::{RedisConfig, Target, WriteMode};
use crate::error::RedisTierError;

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
    lease_replies_lost: AtomicU64,
    lease_release_retries: AtomicU64,
    epoch_updates: AtomicU64,
    removals_replayed: AtomicU64,
    removals_received: AtomicU64,
    round_trips: AtomicU64,
    round_trip_micros: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What every clone of a [`RedisTier`] and its background tasks share.
struct Shared {
    config: RedisConfig,
    clock: SharedClock,
    connector: Connector,
    /// For the pub/sub connection: one client per configured URL. On a cluster any node
    /// will do (publications reach every node), so the subscription moves to the next
    /// one that answers when its node fails.
    pubsub_clients: Vec<redis::Client>,
    /// The index in `pubsub_clients` of the last node that took the subscription.
    pubsub_node: std::sync::atomic::AtomicUsize,
    breaker: Breaker,
    connected: AtomicBool,
    /// The epochs were synchronised with Redis since the last failure.
    synced: AtomicBool,
    /// The epoch channel is subscribed (changes made elsewhere reach this node).
    subscribed: AtomicBool,
    /// Scopes invalidated here while Redis was unreachable: bumped in Redis (not merged)
    /// at the next synchronisation, so they are not lost in a concurrent bump elsewhere.
    pending_bumps: parking_lot::Mutex<Vec<Scope>>,
    /// Removals Redis could not take: replayed at the next synchronisation, before the
    /// tier is used again.
    pending_removals: parking_lot::Mutex<Vec<Digest>>,
    /// The newest removal time read from the removal log (ms; 0: never read).
    removals_seen_ms: AtomicU64,
    /// Bumped by every removal made here or heard of: a value computed under a lease is
    /// not written if a removal came in between (it could be of that key).
    removal_seq: AtomicU64,
    /// The last time the epochs were seen in sync (ms; 0: not since start). Updated by the
    /// prober every `probe_interval` and at every synchronisation.
    in_sync_at: AtomicU64,
    counters: Counters,
    /// Error replies by kind (a fixed set of kinds: see `conn::reply_kind`).
    error_replies: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
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
    /// [`RedisTierError::Config`] for a field out of range, [`RedisTierError::Url`] for a
    /// URL that cannot be parsed.
    pub fn connect(config: RedisConfig, clock: SharedClock) -> Result<Self, RedisTierError> {
        config.validate()?;
        let urls = config.target.urls();
        let pubsub_clients = urls
            .iter()
            .map(|u| conn::client(u, &config))
            .collect::<Result<Vec<_>, _>>()?;
        let connector = Connector::new(&config)?;
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
            pubsub_clients,
            pubsub_node: std::sync::atomic::AtomicUsize::new(0),
            connector,
            breaker,
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            pending_bumps: parking_lot::Mutex::new(Vec::new()),
            pending_removals: parking_lot::Mutex::new(Vec::new()),
            removal_seq: AtomicU64::new(0),
            removals_seen_ms: AtomicU64::new(0),
            in_sync_at: AtomicU64::new(0),
            counters: Counters::default(),
            error_replies: parking_lot::Mutex::default(),
            epochs: OnceLock::new(),
            write_tx,
            node: format!("{:016x}", rand::random::<u64>()),
            next_token: AtomicU64::new(0),
            config,
            clock,
        });
        tokio::spawn(probe(Arc::downgrade(&shared)));
        if let Some(rx) = write_rx {
            tokio::spawn(write_back::drain(Arc::downgrade(&shared), rx));
        }
        Ok(Self { shared })
    }

    /// Contacts Redis once (the first URL), bounded by the connect timeout, to refuse at
    /// start what would otherwise fail every call: a server whose TLS certificate the
    /// configured CAs do not sign. A Redis that is down or slow is not an error here (the
    /// tier comes into use when it answers).
    ///
    /// # Errors
    /// [`RedisTierError::Tls`] naming the (redacted) URL and the handshake's error.
    pub async fn verify(&self) -> Result<(), RedisTierError> {
        let s = &self.shared;
        let attempt = tokio::time::timeout(
            s.config.connect_timeout * 4,
            s.pubsub_clients[0].get_multiplexed_async_connection(),
        )
        .await;
        match attempt {
            // redis-rs wraps the TLS library's error in an I/O error whose kind it keeps
            // private: its text is what tells a refused certificate apart.
            Ok(Err(e)) if e.to_string().contains("certificate") => {
                Err(RedisTierError::Tls(format!(
                    "{}: the server's certificate is not trusted ({e}); check the CA file",
                    infercache_core::redact_url(&s.config.target.urls()[0])
                )))
            }
            _ => Ok(()),
        }
    }

    /// The breaker's state.
    pub fn breaker(&self) -> BreakerState {
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

impl RemoteTier for RedisTier {
    fn attach(&self, epochs: EpochSync) {
        if self.shared.epochs.set(epochs).is_ok() {
            tokio::spawn(epochs::listen(Arc::downgrade(&self.shared)));
        }
    }

    fn get_many<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(self.shared.get_many(keys))
    }

    fn put_many(&self, entries: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.put_many(entries))
    }

    fn remove(&self, key: Digest) -> BoxFuture<'_, RemoteRemoval> {
        Box::pin(self.shared.remove(key))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.flush())
    }

    fn bump_epoch<'a>(&'a self, scope: &'a Scope, local: u64) -> BoxFuture<'a, Option<u64>> {
        Box::pin(self.shared.bump_epoch(scope, local))
    }

    fn lease<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Box<dyn Lease>> {
        Box::pin(self.shared.lease(keys))
    }

    fn wait_for<'a>(
        &'a self,
        keys: &'a [Digest],
        accept: &'a Accept<'a>,
    ) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(self.shared.wait_for(keys, accept))
    }

    fn epochs_in_sync(&self) -> EpochsInSync {
        let s = &*self.shared;
        if s.usable() {
            return EpochsInSync::Now;
        }
        match s.in_sync_at.load(Ordering::Acquire) {
            0 => EpochsInSync::Never,
            at => EpochsInSync::Since(at),
        }
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
            breaker: s.breaker.state(),
            connected: s.connected.load(Ordering::Relaxed) && s.usable(),
            breaker_opened: s.breaker.opened(),
            hits: get(&c.hits),
            misses: get(&c.misses),
            corrupt: get(&c.corrupt),
            writes: get(&c.writes),
            errors: get(&c.errors),
            error_replies: s
                .error_replies
                .lock()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            skipped: get(&c.skipped),
            writeback_dropped: get(&c.writeback_dropped),
            writeback_queued: s.queued(),
            leases_granted: get(&c.leases_granted),
            leases_contended: get(&c.leases_contended),
            lease_waits_filled: get(&c.lease_waits_filled),
            lease_waits_empty: get(&c.lease_waits_empty),
            lease_replies_lost: get(&c.lease_replies_lost),
            lease_release_retries: get(&c.lease_release_retries),
            epoch_updates: get(&c.epoch_updates),
            removals_pending: s.pending_removals.lock().len() as u64,
            removals_replayed: get(&c.removals_replayed),
            removals_received: get(&c.removals_received),
            round_trips: get(&c.round_trips),
            round_trip_micros: get(&c.round_trip_micros),
        }
    }
}

impl Shared {
    /// Records now as the last moment the epochs were seen in sync, if they are.
    fn note_in_sync(&self) {
        if self.usable() {
            self.in_sync_at
                .store(self.clock.now_ms().max(1), Ordering::Release);
        }
    }
}

/// While the breaker is not closed, pings Redis so it closes as soon as Redis is back,
/// without waiting for traffic.
async fn probe(tier: Weak<Shared>) {
    loop {
        let Some(s) = tier.upgrade() else { return };
        let every = s.config.probe_interval;
        s.note_in_sync();
        if !s.usable() || s.breaker.state() != BreakerState::Closed {
            // Synchronising the epochs is the probe: the tier is used again only once it
            // succeeds.
            s.sync_epochs().await;
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}
