//! The tiered cache: memory over a persistent disk tier, single-flight computation,
//! invalidation epochs, TTLs and per-model stats.
//!
//! # Lookups
//!
//! A read goes memory → disk → compute. A disk hit is promoted to memory (backfill) with
//! its original creation time and expiry. Expired entries are never returned; an entry
//! older than a request's `max_age` is treated as a miss and recomputed.
//!
//! # Concurrency contract
//!
//! For each key, at most one caller at a time is its *leader*: the one that looks it up
//! below memory and, on a miss, computes it. Concurrent callers for the same key wait for
//! the leader and all receive its value, or its error; errors are never stored. The leader
//! stores a computed value in memory *before* it hands the key back, and a new leader
//! re-checks memory after taking over, so a key present in no tier is computed exactly
//! once however many callers ask for it at once. If a leader is cancelled (its future
//! dropped) before finishing, its waiters wake and one of them takes over.
//!
//! Memory hits never touch the in-flight table: the hot path is one sharded map lookup.
//!
//! # Writes
//!
//! [`WritePolicy::WriteThrough`] (default): a store returns once every tier has the value.
//! [`WritePolicy::WriteBack`]: memory is written at once and lower tiers through a bounded
//! queue that a background task drains; a full queue drops the lower-tier write (counted,
//! never blocking a request), and [`Cache::flush`] / [`Cache::shutdown`] drain it. A
//! removal in write-back mode is queued too, in order, and until it is applied the disk
//! tier is not consulted for that key, so a removed value cannot reappear.
//!
//! Disk I/O runs on tokio's blocking pool behind a semaphore (bounded concurrency), never
//! on the async workers.
//!
//! # The caching strategies, expressed
//!
//! - *read-through*: [`Cache::get_or_compute`] / [`Cache::get_many_or_compute`].
//! - *cache-aside*: the caller reads with [`Cache::get`], computes on a miss and stores
//!   with [`Cache::insert`].
//! - *write-through*: `WritePolicy::WriteThrough`, the default.
//! - *write-back*: `WritePolicy::WriteBack { queue }`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use infercache_core::clock::duration_ms;
use infercache_core::stats::{Counter, ModelCounters, ModelStats, TierStats};
use infercache_core::{Digest, KeyParts, SharedClock};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::disk::{DiskConfig, DiskEntry, DiskTier};
use crate::epochs::{EpochTable, Scope};
use crate::error::{ComputeError, EngineError};
use crate::hash::DigestHasher;
use crate::memory::{MemEntry, MemoryConfig, MemoryTier, NEVER};
use crate::remote::{EpochSync, Lease, RemoteEntry, RemoteStats, RemoteTier};

/// How writes reach the tiers below memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Every tier is written before a store returns (the default).
    #[default]
    WriteThrough,
    /// Lower tiers are written from a bounded queue of `queue` operations.
    WriteBack {
        /// Queue capacity.
        queue: usize,
    },
}

/// Configuration of a [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The memory tier; `None` for none.
    pub memory: Option<MemoryConfig>,
    /// The disk tier; `None` for none.
    pub disk: Option<DiskConfig>,
    /// A remote tier shared with other nodes, below disk; `None` for none.
    pub remote: Option<Arc<dyn RemoteTier>>,
    /// TTL of entries whose model and request set none. Default: none.
    pub default_ttl: Option<Duration>,
    /// TTL per model, overriding `default_ttl`.
    pub model_ttls: HashMap<String, Duration>,
    /// Write policy. Default: write-through.
    pub write_policy: WritePolicy,
    /// Folded into every key; bumping it invalidates everything. Default: 0.
    pub cache_version: u64,
    /// How often expired entries are reclaimed. Default: 60 s.
    pub cleanup_interval: Duration,
    /// Disk operations in flight at once. Default: 4.
    pub disk_io_concurrency: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: Some(MemoryConfig::bytes(256 << 20)),
            disk: None,
            remote: None,
            default_ttl: None,
            model_ttls: HashMap::new(),
            write_policy: WritePolicy::WriteThrough,
            cache_version: 0,
            cleanup_interval: Duration::from_secs(60),
            disk_io_concurrency: 4,
        }
    }
}

/// A model's handle: its name, TTL and counters, resolved once per key.
#[derive(Debug)]
pub struct Model {
    name: Arc<str>,
    ttl: Option<Duration>,
    counters: ModelCounters,
}

impl Model {
    /// The model id.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A key with the handle of the model it belongs to.
#[derive(Debug, Clone)]
pub struct CacheKey {
    digest: Digest,
    model: Arc<Model>,
}

impl CacheKey {
    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
    /// The remote tier shared with other nodes.
    Remote,
    /// Computed by this caller.
    Computed,
    /// Computed by a concurrent caller this one waited for.
    Coalesced,
}

impl Source {
    /// Whether the value was served from a cache tier.
    pub fn is_hit(self) -> bool {
        matches!(self, Source::Memory | Source::Disk | Source::Remote)
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: Source,
    /// When it was computed (ms since the Unix epoch).
    pub created_ms: u64,
}

/// The result of a plain lookup. A miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Found in a tier.
    Hit(Fetched),
    /// In no tier.
    Miss,
}

/// Per-request cache control (what `Cache-Control` carries over HTTP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Accept only entries younger than this (`max-age`).
    pub max_age: Option<Duration>,
    /// Skip the lookup, compute and overwrite (`no-cache`).
    pub no_cache: bool,
    /// Do not store what is computed (`no-store`).
    pub no_store: bool,
    /// TTL of what is stored, overriding the model's and the cache's.
    pub ttl: Option<Duration>,
}

/// A snapshot of the cache's stats.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// The memory tier.
    pub memory: Option<TierStats>,
    /// The disk tier.
    pub disk: Option<TierStats>,
    /// The remote tier.
    pub remote: Option<RemoteStats>,
    /// Per model.
    pub models: std::collections::BTreeMap<String, ModelStats>,
    /// Callers that waited for another caller's computation.
    pub coalesced: u64,
    /// Lower-tier writes dropped because the write-back queue was full.
    pub writeback_dropped: u64,
    /// Operations waiting in the write-back queue.
    pub writeback_queued: u64,
}

#[derive(Debug, Clone)]
struct Found {
    value: Bytes,
    created_ms: u64,
    /// Computed by the leader (not read from a tier): what a `no-cache` waiter needs.
    computed: bool,
}

impl Found {
    /// A value read from a tier.
    fn hit(hit: &Fetched) -> Self {
        Self {
            value: hit.value.clone(),
            created_ms: hit.created_ms,
            computed: false,
        }
    }
}

type FlightResult = Option<Result<Found, ComputeError>>;

#[derive(Debug)]
struct Flight {
    id: u64,
    tx: watch::Sender<FlightResult>,
}

#[derive(Debug)]
struct DiskIo {
    tier: Arc<DiskTier>,
    permits: Arc<Semaphore>,
}

impl DiskIo {
    /// Runs `f` on the blocking pool, at most `disk_io_concurrency` at once.
    async fn run<R: Send + 'static>(&self, f: impl FnOnce(&DiskTier) -> R + Send + 'static) -> R {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the disk semaphore is never closed");
        let tier = Arc::clone(&self.tier);
        // The permit lives as long as the blocking task, even if this caller is cancelled.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&tier)
        })
        .await
        .expect("a disk operation panicked (a bug)")
    }
}

#[derive(Debug)]
enum WriteOp {
    Put { key: Digest, entry: MemEntry },
    Remove { key: Digest },
    Clear,
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
struct WriteBack {
    tx: mpsc::Sender<WriteOp>,
    dropped: Counter,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    clock: SharedClock,
    memory: Option<MemoryTier>,
    disk: Option<DiskIo>,
    remote: Option<Arc<dyn RemoteTier>>,
    pub(crate) epochs: EpochTable,
    default_ttl: Option<Duration>,
    model_ttls: HashMap<String, Duration>,
    models: DashMap<String, Arc<Model>>,
    inflight: DashMap<Digest, Flight, DigestHasher>,
    next_flight: AtomicU64,
    coalesced: Counter,
    write_back: Option<WriteBack>,
    /// Keys with a queued write-back removal, and how many.
    pending_removals: DashMap<Digest, u32, DigestHasher>,
    /// Write generations per key stripe. Every memory write or removal happens under its
    /// stripe's lock and bumps it; a disk read promotes its value to memory only if the
    /// stripe did not move meanwhile, so a backfill never overwrites a newer value nor
    /// resurrects a removed one.
    stripes: Box<[Mutex<u64>]>,
}

const WRITE_STRIPES: usize = 64;

/// The tiered cache. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// Opens a cache. With a disk tier this recovers its index and epoch table from disk,
    /// which blocks: call it before serving (or from a blocking task). Background tasks
    /// (expiry cleanup, write-back) start when called inside a tokio runtime.
    ///
    /// # Errors
    /// The disk tier's or the epoch table's error.
    pub fn open(config: CacheConfig, clock: SharedClock) -> Result<Self, EngineError> {
        if matches!(config.write_policy, WritePolicy::WriteBack { .. }) && config.memory.is_none() {
            // Values would live only in the queue until written: a reader in between would
            // miss everywhere and compute them again.
            return Err(EngineError::InvalidConfig("write-back needs a memory tier"));
        }
        let memory = config
            .memory
            .map(|m| MemoryTier::new(m, Arc::clone(&clock)));
        let (disk, epochs) = match config.disk {
            Some(d) => {
                let dir = d.dir.clone();
                let tier = DiskTier::open(d, Arc::clone(&clock))?;
                let epochs = EpochTable::open(&dir, config.cache_version)?;
                let io = DiskIo {
                    tier: Arc::new(tier),
                    permits: Arc::new(Semaphore::new(config.disk_io_concurrency.max(1))),
                };
                (Some(io), epochs)
            }
            None => (None, EpochTable::in_memory(config.cache_version)),
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (write_back, rx) = match (config.write_policy, &disk, &runtime) {
            (WritePolicy::WriteBack { queue }, Some(_), Some(_)) => {
                let (tx, rx) = mpsc::channel(queue.max(1));
                let wb = WriteBack {
                    tx,
                    dropped: Counter::default(),
                    task: Mutex::new(None),
                };
                (Some(wb), Some(rx))
            }
            _ => (None, None),
        };
        let inner = Arc::new(Inner {
            clock,
            memory,
            disk,
            remote: config.remote,
            epochs,
            default_ttl: config.default_ttl,
            model_ttls: config.model_ttls,
            models: DashMap::new(),
            inflight: DashMap::with_hasher(DigestHasher::default()),
            next_flight: AtomicU64::new(0),
            coalesced: Counter::default(),
            write_back,
            pending_removals: DashMap::with_hasher(DigestHasher::default()),
            stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(0)).collect(),
        });
        if let Some(remote) = &inner.remote {
            remote.attach(EpochSync {
                inner: Arc::downgrade(&inner),
            });
        }
        if let Some(rt) = runtime {
            if let (Some(rx), Some(wb)) = (rx, &inner.write_back) {
                *wb.task.lock() = Some(rt.spawn(drain_write_back(Arc::downgrade(&inner), rx)));
            }
            rt.spawn(cleanup(Arc::downgrade(&inner), config.cleanup_interval));
        }
        Ok(Self { inner })
    }

    /// The handle of model `name` (created on first use).
    ///
    /// The table grows with the number of distinct model names; callers validate names
    /// against their configured models before building keys.
    pub fn model(&self, name: &str) -> Arc<Model> {
        if let Some(m) = self.inner.models.get(name) {
            return Arc::clone(&m);
        }
        let ttl = self.inner.model_ttls.get(name).copied();
        Arc::clone(
            self.inner
                .models
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Arc::new(Model {
                        name: name.into(),
                        ttl,
                        counters: ModelCounters::default(),
                    })
                })
                .value(),
        )
    }

    /// The key for `parts`, with the cache's current epochs folded in (the `epochs` field
    /// of `parts` is ignored).
    pub fn key(&self, parts: KeyParts<'_>) -> CacheKey {
        let epochs = self
            .inner
            .epochs
            .current(parts.namespace, parts.model, parts.version);
        let digest = KeyParts { epochs, ..parts }.digest();
        CacheKey {
            digest,
            model: self.model(parts.model),
        }
    }

    /// A key for a digest the caller made itself (e.g. from `DELETE /entries/{key}`).
    pub fn key_from_digest(&self, digest: Digest, model: &str) -> CacheKey {
        CacheKey {
            digest,
            model: self.model(model),
        }
    }

    /// Invalidates `scope` in every tier at once by bumping its epoch. With a remote tier
    /// the new epoch is agreed with it, which tells every other node; when it is
    /// unreachable the bump is local and reaches the others when it reconnects.
    ///
    /// # Errors
    /// [`EngineError::Epoch`] if the bump could not be persisted (it still applies here).
    pub async fn invalidate(&self, scope: Scope) -> Result<(), EngineError> {
        let agreed = match &self.inner.remote {
            Some(remote) => {
                let local = self.inner.epochs.get(&scope);
                remote.bump_epoch(&scope, local).await
            }
            None => None,
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || match agreed {
            Some(epoch) => inner.epochs.raise(&scope, epoch).map(drop),
            None => inner.epochs.bump(&scope).map(drop),
        })
        .await
        .expect("an epoch bump panicked (a bug)")?;
        Ok(())
    }

    /// Looks `key` up in every tier.
    pub async fn get(&self, key: &CacheKey, opts: &RequestOptions) -> Lookup {
        if opts.no_cache {
            return Lookup::Miss;
        }
        let now = self.inner.clock.now_ms();
        if let Some(hit) = self.inner.memory_hit(key, opts, now, true) {
            return Lookup::Hit(hit);
        }
        let mut hit = self
            .disk_lookup(std::slice::from_ref(key), opts)
            .await
            .pop()
            .flatten();
        if hit.is_none() {
            hit = self
                .remote_lookup(std::slice::from_ref(key), opts)
                .await
                .pop()
                .flatten();
        }
        match hit {
            Some(hit) => Lookup::Hit(hit),
            None => {
                key.model.counters.misses.incr();
                Lookup::Miss
            }
        }
    }

    /// Stores `value` under `key` in every tier (per the write policy).
    pub async fn insert(&self, key: &CacheKey, value: Bytes, opts: &RequestOptions) {
        if opts.no_store {
            return;
        }
        let created_ms = self.inner.clock.now_ms();
        let found = Found {
            value,
            created_ms,
            computed: true,
        };
        self.store(vec![(key.clone(), found)], opts).await;
    }

    /// Removes `key` from every tier; whether any tier held it.
    pub async fn remove(&self, key: &CacheKey) -> bool {
        let digest = key.digest;
        // The shared tier first: a concurrent lookup that read it before the removal
        // then finds the stripe moved and does not promote what it read.
        let in_remote = match &self.inner.remote {
            Some(remote) => remote.remove(digest).await,
            None => false,
        };
        let in_memory = self
            .inner
            .with_stripe(&digest, |m| m.remove(&digest))
            .unwrap_or(false);
        let in_memory = in_memory || in_remote;
        let Some(disk) = &self.inner.disk else {
            return in_memory;
        };
        if let Some(wb) = &self.inner.write_back {
            let on_disk = disk.tier.contains(&digest);
            *self.inner.pending_removals.entry(digest).or_insert(0) += 1;
            if wb.tx.send(WriteOp::Remove { key: digest }).await.is_err() {
                // The drainer is gone (shutdown): remove directly.
                self.inner.finish_pending_removal(&digest);
            } else {
                return in_memory || on_disk;
            }
        }
        let on_disk = disk
            .run(move |d| d.remove(&digest))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "disk remove failed");
                false
            });
        in_memory || on_disk
    }

    /// Removes everything from this node's tiers. A remote tier is shared with other nodes
    /// and left alone: [`Cache::invalidate`] with [`Scope::All`] makes its entries
    /// unreachable everywhere.
    pub async fn clear(&self) {
        {
            let mut stripes: Vec<_> = self.inner.stripes.iter().map(|s| s.lock()).collect();
            if let Some(m) = &self.inner.memory {
                m.clear();
            }
            for generation in &mut stripes {
                **generation += 1;
            }
        }
        if let Some(wb) = &self.inner.write_back {
            // Ordered after every queued write, so none of them survives the clear.
            if wb.tx.send(WriteOp::Clear).await.is_ok() {
                self.flush().await;
                return;
            }
        }
        if let Some(disk) = &self.inner.disk
            && let Err(e) = disk.run(DiskTier::clear).await
        {
            tracing::warn!(error = %e, "disk clear failed");
        }
    }

    /// Returns the value of `key`, computing it with `f` if no tier has it.
    ///
    /// Concurrent callers for a missing key run `f` once and all receive its result; an
    /// error reaches every waiter and is not cached (see the module docs).
    ///
    /// # Errors
    /// The computation's error, shared.
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        key: &CacheKey,
        opts: &RequestOptions,
        f: F,
    ) -> Result<Fetched, ComputeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut f = Some(f);
        let mut out = self
            .get_many_or_compute(std::slice::from_ref(key), opts, |_keys| {
                // With one key, a caller computes only as leader, and a leader never retries.
                let f = f
                    .take()
                    .expect("a single-key computation runs at most once (a bug otherwise)");
                async move { f().await.map(|v| vec![v]) }
            })
            .await?;
        Ok(out.pop().expect("one key in, one value out"))
    }

    /// Returns the values of `keys` in input order, computing the missing ones with one
    /// call of `f`.
    ///
    /// Duplicate keys are looked up and computed once. `f` receives only the keys that no
    /// tier holds and no concurrent caller is already computing, and must return their
    /// values in the same order. It is called again only for keys whose computing caller
    /// was cancelled before finishing.
    ///
    /// # Errors
    /// The computation's error (shared with every waiter), or
    /// [`EngineError::BatchLength`] if `f` returned the wrong number of values.
    pub async fn get_many_or_compute<F, Fut, E>(
        &self,
        keys: &[CacheKey],
        opts: &RequestOptions,
        mut f: F,
    ) -> Result<Vec<Fetched>, ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        // De-duplicate, keeping first-appearance order.
        let mut index: HashMap<Digest, usize, DigestHasher> =
            HashMap::with_capacity_and_hasher(keys.len(), DigestHasher::default());
        let mut unique: Vec<&CacheKey> = Vec::with_capacity(keys.len());
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                *index.entry(k.digest).or_insert_with(|| {
                    unique.push(k);
                    unique.len() - 1
                })
            })
            .collect();
        let mut results: Vec<Option<Fetched>> = vec![None; unique.len()];

        // 1. Memory, without touching the in-flight table.
        let now = self.inner.clock.now_ms();
        let mut pending: Vec<usize> = Vec::new();
        for (i, key) in unique.iter().enumerate() {
            match (!opts.no_cache)
                .then(|| self.inner.memory_hit(key, opts, now, true))
                .flatten()
            {
                Some(hit) => results[i] = Some(hit),
                None => pending.push(i),
            }
        }

        while !pending.is_empty() {
            // 2. Lead the keys nobody is computing; wait for the others.
            let mut guard = LeaderGuard {
                inner: &self.inner,
                flights: Vec::new(),
            };
            let mut waits: Vec<(usize, watch::Receiver<FlightResult>)> = Vec::new();
            let mut leads: Vec<usize> = Vec::new();
            for &i in &pending {
                match self.inner.inflight.entry(unique[i].digest) {
                    Entry::Occupied(e) => waits.push((i, e.get().tx.subscribe())),
                    Entry::Vacant(v) => {
                        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
                        v.insert(Flight {
                            id,
                            tx: watch::channel(None).0,
                        });
                        guard.flights.push((unique[i].digest, id));
                        leads.push(i);
                    }
                }
            }

            // 3. As leader: memory again (a leader that just finished stored there before
            //    handing the key back), then disk, then the remote tier.
            let missing: Vec<usize> = if opts.no_cache {
                leads
            } else {
                let now = self.inner.clock.now_ms();
                let mut below = Vec::new();
                for i in leads {
                    match self.inner.memory_hit(unique[i], opts, now, false) {
                        Some(hit) => {
                            guard.publish(&unique[i].digest, Ok(Found::hit(&hit)));
                            results[i] = Some(hit);
                        }
                        None => below.push(i),
                    }
                }
                for lookup in [Tier::Disk, Tier::Remote] {
                    let keys: Vec<CacheKey> = below.iter().map(|&i| unique[i].clone()).collect();
                    let found = match lookup {
                        Tier::Disk => self.disk_lookup(&keys, opts).await,
                        Tier::Remote => self.remote_lookup(&keys, opts).await,
                    };
                    let mut still = Vec::new();
                    for (i, hit) in below.into_iter().zip(found) {
                        match hit {
                            Some(hit) => {
                                guard.publish(&unique[i].digest, Ok(Found::hit(&hit)));
                                results[i] = Some(hit);
                            }
                            None => still.push(i),
                        }
                    }
                    below = still;
                }
                below
            };

            // 4. Compute what no tier had, in one call; with a remote tier, only the keys
            //    no other node is computing (their values are awaited, then computed here
            //    if they do not come).
            if !missing.is_empty() {
                let (mine, theirs, lease) = self
                    .lease(&missing, &unique, opts, &guard, &mut results)
                    .await;
                let computed = self
                    .compute_led(&mut f, &mut guard, &mine, &unique, &mut results, opts)
                    .await;
                if let Some(lease) = lease {
                    // Released once the values are stored (or the computation failed), so
                    // another node waiting for them either finds them or computes.
                    lease.release().await;
                }
                computed?;
                if !theirs.is_empty() {
                    let empty = self
                        .await_remote(&guard, &theirs, &unique, &mut results)
                        .await;
                    self.compute_led(&mut f, &mut guard, &empty, &unique, &mut results, opts)
                        .await?;
                }
            }
            drop(guard);

            // 5. Collect what others computed; retry keys whose leader vanished. A value
            //    this caller's options refuse (too old for its max-age, or read from a
            //    tier while it asked for no-cache) is computed by this caller itself.
            let mut retry = Vec::new();
            let mut own = Vec::new();
            for (i, mut rx) in waits {
                let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
                match outcome {
                    Ok(Some(Ok(found)))
                        if (opts.no_cache && !found.computed)
                            || !fresh_enough(found.created_ms, self.inner.clock.now_ms(), opts) =>
                    {
                        own.push(i);
                    }
                    Ok(Some(Ok(found))) => {
                        self.inner.coalesced.incr();
                        unique[i].model.counters.coalesced.incr();
                        results[i] = Some(Fetched {
                            value: found.value,
                            source: Source::Coalesced,
                            created_ms: found.created_ms,
                        });
                    }
                    Ok(Some(Err(err))) => return Err(err),
                    Ok(None) | Err(_) => retry.push(i),
                }
            }
            if !own.is_empty() {
                let keys: Vec<CacheKey> = own.iter().map(|&i| unique[i].clone()).collect();
                for k in &keys {
                    k.model.counters.misses.incr();
                }
                let found = self.compute(&mut f, keys).await?;
                for (&i, (_, v)) in own.iter().zip(&found) {
                    results[i] = Some(Fetched {
                        value: v.value.clone(),
                        source: Source::Computed,
                        created_ms: v.created_ms,
                    });
                }
                if !opts.no_store {
                    self.store(found, opts).await;
                }
            }
            pending = retry;
        }

        Ok(positions
            .into_iter()
            .map(|p| {
                results[p]
                    .clone()
                    .expect("every unique key resolved (a bug otherwise)")
            })
            .collect())
    }

    /// Computes the keys at `idx` (led by this caller) with one call of `f`: stores them in
    /// memory, hands them to this node's waiters, then stores them below memory.
    async fn compute_led<F, Fut, E>(
        &self,
        f: &mut F,
        guard: &mut LeaderGuard<'_>,
        idx: &[usize],
        unique: &[&CacheKey],
        results: &mut [Option<Fetched>],
        opts: &RequestOptions,
    ) -> Result<(), ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if idx.is_empty() {
            return Ok(());
        }
        let keys: Vec<CacheKey> = idx.iter().map(|&i| unique[i].clone()).collect();
        for k in &keys {
            k.model.counters.misses.incr();
        }
        let found = match self.compute(f, keys.clone()).await {
            Ok(found) => found,
            Err(err) => {
                guard.fail(&err, &keys);
                return Err(err);
            }
        };
        // Memory, then the value to the waiters, then the slower tiers; the keys are
        // handed back only once every write-through tier has them, so a newcomer
        // meanwhile joins the flight (and gets the value at once) instead of missing
        // everywhere and computing again.
        if !opts.no_store {
            self.inner.store_memory(&found, opts);
        }
        for (&i, (k, v)) in idx.iter().zip(&found) {
            guard.send(&k.digest, Ok(v.clone()));
            results[i] = Some(Fetched {
                value: v.value.clone(),
                source: Source::Computed,
                created_ms: v.created_ms,
            });
        }
        if !opts.no_store {
            self.store_below_memory(found, opts).await;
        }
        Ok(())
    }

    /// Splits the keys at `missing` into those this node computes and those another node
    /// holds the lease of (none without a remote tier, or under `no-cache`). A key whose
    /// value another node stored meanwhile is neither: it is served as a remote hit.
    async fn lease(
        &self,
        missing: &[usize],
        unique: &[&CacheKey],
        opts: &RequestOptions,
        guard: &LeaderGuard<'_>,
        results: &mut [Option<Fetched>],
    ) -> (Vec<usize>, Vec<usize>, Option<Box<dyn Lease>>) {
        let Some(remote) = self.inner.remote.as_ref().filter(|_| !opts.no_cache) else {
            return (missing.to_vec(), Vec::new(), None);
        };
        let digests: Vec<Digest> = missing.iter().map(|&i| unique[i].digest).collect();
        let generations = self.inner.generations(&digests);
        let mut lease = remote.lease(&digests).await;
        let found = lease.take_found();
        let (mut mine, mut theirs, mut to_disk) = (Vec::new(), Vec::new(), Vec::new());
        for (((&i, &granted), value), generation) in missing
            .iter()
            .zip(lease.granted())
            .zip(found.into_iter().chain(std::iter::repeat(None)))
            .zip(generations)
        {
            match value {
                Some(entry) => {
                    unique[i].model.counters.remote_hits.incr();
                    let fetched = self.adopt(
                        guard,
                        unique[i],
                        entry,
                        Source::Remote,
                        generation,
                        &mut to_disk,
                    );
                    results[i] = Some(fetched);
                }
                None if granted => mine.push(i),
                None => theirs.push(i),
            }
        }
        self.store_disk(to_disk).await;
        (mine, theirs, Some(lease))
    }

    /// Takes a value another node stored: promoted to memory (if its stripe did not move
    /// since `generation`) and queued for disk, handed to this node's waiters.
    fn adopt(
        &self,
        guard: &LeaderGuard<'_>,
        key: &CacheKey,
        entry: RemoteEntry,
        source: Source,
        generation: u64,
        to_disk: &mut Vec<(Digest, MemEntry)>,
    ) -> Fetched {
        self.inner
            .promote_remote(&key.digest, &entry, generation, to_disk);
        let found = Found {
            value: entry.value.clone(),
            created_ms: entry.created_ms,
            computed: source == Source::Coalesced,
        };
        guard.send(&key.digest, Ok(found));
        Fetched {
            value: entry.value,
            source,
            created_ms: entry.created_ms,
        }
    }

    /// Waits for the values of keys another node is computing; returns the keys that did
    /// not come (to compute here). Values that came go to memory, disk and this node's
    /// waiters.
    async fn await_remote(
        &self,
        guard: &LeaderGuard<'_>,
        theirs: &[usize],
        unique: &[&CacheKey],
        results: &mut [Option<Fetched>],
    ) -> Vec<usize> {
        let Some(remote) = &self.inner.remote else {
            return theirs.to_vec();
        };
        let digests: Vec<Digest> = theirs.iter().map(|&i| unique[i].digest).collect();
        let generations = self.inner.generations(&digests);
        let values = remote.wait_for(&digests).await;
        let (mut empty, mut to_disk) = (Vec::new(), Vec::new());
        for ((&i, entry), generation) in theirs.iter().zip(values).zip(generations) {
            let Some(entry) = entry else {
                empty.push(i);
                continue;
            };
            self.inner.coalesced.incr();
            unique[i].model.counters.coalesced.incr();
            let fetched = self.adopt(
                guard,
                unique[i],
                entry,
                Source::Coalesced,
                generation,
                &mut to_disk,
            );
            results[i] = Some(fetched);
        }
        self.store_disk(to_disk).await;
        empty
    }

    /// Runs `f` on `keys` and pairs each key with its value, stamped now.
    async fn compute<F, Fut, E>(
        &self,
        f: &mut F,
        keys: Vec<CacheKey>,
    ) -> Result<Vec<(CacheKey, Found)>, ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let values = f(keys.clone()).await.map_err(ComputeError::new)?;
        if values.len() != keys.len() {
            return Err(ComputeError::new(EngineError::BatchLength {
                expected: keys.len(),
                got: values.len(),
            }));
        }
        let created_ms = self.inner.clock.now_ms();
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, value)| {
                let found = Found {
                    value,
                    created_ms,
                    computed: true,
                };
                (k, found)
            })
            .collect())
    }

    /// Waits until every queued write-back operation has reached the lower tiers, then
    /// syncs the disk tier.
    pub async fn flush(&self) {
        if let Some(wb) = &self.inner.write_back {
            let (tx, rx) = oneshot::channel();
            if wb.tx.send(WriteOp::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
        if let Some(disk) = &self.inner.disk
            && let Err(e) = disk.run(DiskTier::flush).await
        {
            tracing::warn!(error = %e, "disk flush failed");
        }
        if let Some(remote) = &self.inner.remote {
            remote.flush().await;
        }
    }

    /// Drains the write-back queue and syncs the disk tier; call before exit.
    pub async fn shutdown(&self) {
        self.flush().await;
    }

    /// Reclaims expired entries in every tier now (the cleanup task does this on its
    /// interval); returns how many.
    pub async fn purge_expired(&self) -> u64 {
        let mut n = self
            .inner
            .memory
            .as_ref()
            .map_or(0, MemoryTier::purge_expired);
        if let Some(disk) = &self.inner.disk {
            n += disk.run(DiskTier::purge_expired).await;
        }
        n
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> CacheStats {
        let inner = &self.inner;
        CacheStats {
            memory: inner.memory.as_ref().map(MemoryTier::stats),
            disk: inner.disk.as_ref().map(|d| d.tier.stats()),
            remote: inner.remote.as_ref().map(|r| r.stats()),
            models: inner
                .models
                .iter()
                .map(|m| (m.key().clone(), m.value().counters.snapshot()))
                .collect(),
            coalesced: inner.coalesced.get(),
            writeback_dropped: inner.write_back.as_ref().map_or(0, |w| w.dropped.get()),
            writeback_queued: inner
                .write_back
                .as_ref()
                .map_or(0, |w| (w.tx.max_capacity() - w.tx.capacity()) as u64),
        }
    }

    /// The memory tier, if any.
    pub fn memory(&self) -> Option<&MemoryTier> {
        self.inner.memory.as_ref()
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.inner.disk.as_ref().map(|d| &*d.tier)
    }

    /// Looks `keys` up on disk in one blocking task; hits are promoted to memory.
    async fn disk_lookup(&self, keys: &[CacheKey], opts: &RequestOptions) -> Vec<Option<Fetched>> {
        let Some(disk) = &self.inner.disk else {
            return vec![None; keys.len()];
        };
        if keys.is_empty() {
            return Vec::new();
        }
        let digests: Vec<Digest> = keys.iter().map(|k| k.digest).collect();
        let skip: Vec<bool> = digests
            .iter()
            .map(|d| self.inner.pending_removals.contains_key(d))
            .collect();
        let generations = self.inner.generations(&digests);
        let entries: Vec<Option<DiskEntry>> = disk
            .run(move |d| {
                digests
                    .iter()
                    .zip(skip)
                    .map(|(k, skip)| {
                        if skip {
                            return None;
                        }
                        d.get(k).unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "disk read failed; treating as a miss");
                            None
                        })
                    })
                    .collect()
            })
            .await;
        let now = self.inner.clock.now_ms();
        keys.iter()
            .zip(entries)
            .zip(generations)
            .map(|((key, entry), generation)| {
                let entry = entry.filter(|e| fresh_enough(e.created_ms, now, opts))?;
                self.inner.promote(
                    &key.digest,
                    MemEntry {
                        value: entry.value.clone(),
                        created_ms: entry.created_ms,
                        expires_ms: entry.expires_ms.unwrap_or(NEVER),
                    },
                    Some(generation),
                );
                key.model.counters.disk_hits.incr();
                Some(Fetched {
                    value: entry.value,
                    source: Source::Disk,
                    created_ms: entry.created_ms,
                })
            })
            .collect()
    }

    /// Looks `keys` up in the remote tier in one call; hits are promoted to memory and disk.
    async fn remote_lookup(
        &self,
        keys: &[CacheKey],
        opts: &RequestOptions,
    ) -> Vec<Option<Fetched>> {
        let Some(remote) = &self.inner.remote else {
            return vec![None; keys.len()];
        };
        if keys.is_empty() {
            return Vec::new();
        }
        let digests: Vec<Digest> = keys.iter().map(|k| k.digest).collect();
        let generations = self.inner.generations(&digests);
        let entries = remote.get_many(&digests).await;
        let now = self.inner.clock.now_ms();
        let mut to_disk = Vec::new();
        let out = keys
            .iter()
            .zip(entries)
            .zip(generations)
            .map(|((key, entry), generation)| {
                let entry = entry.filter(|e| {
                    e.expires_ms.is_none_or(|x| x > now) && fresh_enough(e.created_ms, now, opts)
                })?;
                self.inner
                    .promote_remote(&key.digest, &entry, generation, &mut to_disk);
                key.model.counters.remote_hits.incr();
                Some(Fetched {
                    value: entry.value,
                    source: Source::Remote,
                    created_ms: entry.created_ms,
                })
            })
            .collect();
        self.store_disk(to_disk).await;
        out
    }

    /// Stores computed values in every tier.
    async fn store(&self, found: Vec<(CacheKey, Found)>, opts: &RequestOptions) {
        self.inner.store_memory(&found, opts);
        self.store_below_memory(found, opts).await;
    }

    /// Writes to the tiers below memory, per the write policy.
    async fn store_below_memory(&self, found: Vec<(CacheKey, Found)>, opts: &RequestOptions) {
        let entries: Vec<(Digest, MemEntry)> = found
            .into_iter()
            .map(|(k, f)| {
                let expires_ms = self.inner.expiry(&k, f.created_ms, opts);
                (
                    k.digest,
                    MemEntry {
                        value: f.value,
                        created_ms: f.created_ms,
                        expires_ms,
                    },
                )
            })
            .collect();
        let remote: Vec<(Digest, RemoteEntry)> = match &self.inner.remote {
            Some(_) => entries
                .iter()
                .map(|(k, e)| {
                    let entry = RemoteEntry {
                        value: e.value.clone(),
                        created_ms: e.created_ms,
                        expires_ms: (e.expires_ms != NEVER).then_some(e.expires_ms),
                    };
                    (*k, entry)
                })
                .collect(),
            None => Vec::new(),
        };
        self.store_disk(entries).await;
        if let Some(r) = &self.inner.remote {
            r.put_many(remote).await;
        }
    }

    /// Writes to the disk tier, per the write policy.
    async fn store_disk(&self, entries: Vec<(Digest, MemEntry)>) {
        let Some(disk) = &self.inner.disk else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        if let Some(wb) = &self.inner.write_back {
            for (key, entry) in entries {
                if wb.tx.try_send(WriteOp::Put { key, entry }).is_err() {
                    // The disk's value (if any) is now older than memory's: stop serving it.
                    wb.dropped.incr();
                    disk.tier.unindex(&key);
                }
            }
            return;
        }
        let failed = disk
            .run(move |d| {
                entries
                    .iter()
                    .filter_map(|(k, e)| {
                        d.insert(
                            *k,
                            &e.value,
                            e.created_ms,
                            (e.expires_ms != NEVER).then_some(e.expires_ms),
                        )
                        .err()
                    })
                    .last()
            })
            .await;
        if let Some(e) = failed {
            tracing::warn!(error = %e, "disk write failed; the value stays in memory only");
        }
    }
}

/// A tier below memory, in lookup order.
#[derive(Debug, Clone, Copy)]
enum Tier {
    Disk,
    Remote,
}

impl Inner {
    /// A memory hit for `key` that `opts` accepts, counted for the model.
    fn memory_hit(
        &self,
        key: &CacheKey,
        opts: &RequestOptions,
        now: u64,
        count_tier: bool,
    ) -> Option<Fetched> {
        let memory = self.memory.as_ref()?;
        let entry = if count_tier {
            memory.get(&key.digest)
        } else {
            memory.get_quiet(&key.digest)
        }?;
        if !fresh_enough(entry.created_ms, now, opts) {
            return None;
        }
        key.model.counters.memory_hits.incr();
        Some(Fetched {
            value: entry.value,
            source: Source::Memory,
            created_ms: entry.created_ms,
        })
    }

    /// The absolute expiry of a value of `key` created at `created_ms`.
    fn expiry(&self, key: &CacheKey, created_ms: u64, opts: &RequestOptions) -> u64 {
        opts.ttl
            .or(key.model.ttl)
            .or(self.default_ttl)
            .map_or(NEVER, |ttl| created_ms.saturating_add(duration_ms(ttl)))
    }

    fn store_memory(&self, found: &[(CacheKey, Found)], opts: &RequestOptions) {
        for (k, f) in found {
            k.model.counters.inserts.incr();
            let entry = MemEntry {
                value: f.value.clone(),
                created_ms: f.created_ms,
                expires_ms: self.expiry(k, f.created_ms, opts),
            };
            self.with_stripe(&k.digest, |m| m.insert(k.digest, entry));
        }
    }

    /// Promotes a value read from a lower tier to memory: only if no write or removal of
    /// its stripe happened since `generation` was read (`None`: now). Whether it did.
    fn promote(&self, key: &Digest, entry: MemEntry, generation: Option<u64>) -> bool {
        let stripe = self.stripe(key).lock();
        if generation.is_some_and(|g| g != *stripe) {
            return false;
        }
        if let Some(m) = &self.memory {
            m.insert(*key, entry);
        }
        true
    }

    /// Promotes a value read from the remote tier to memory (see [`Inner::promote`]) and,
    /// if promoted, queues it for disk.
    fn promote_remote(
        &self,
        key: &Digest,
        entry: &RemoteEntry,
        generation: u64,
        to_disk: &mut Vec<(Digest, MemEntry)>,
    ) {
        let mem = MemEntry {
            value: entry.value.clone(),
            created_ms: entry.created_ms,
            expires_ms: entry.expires_ms.unwrap_or(NEVER),
        };
        if self.promote(key, mem.clone(), Some(generation)) {
            to_disk.push((*key, mem));
        }
    }

    /// The write generation of each key's stripe now (see [`Inner::promote`]).
    fn generations(&self, keys: &[Digest]) -> Vec<u64> {
        keys.iter().map(|d| *self.stripe(d).lock()).collect()
    }

    fn stripe(&self, key: &Digest) -> &Mutex<u64> {
        &self.stripes[usize::from(key.0[30]) % WRITE_STRIPES]
    }

    /// Runs a memory write for `key` under its stripe lock and bumps the stripe.
    fn with_stripe<R>(&self, key: &Digest, write: impl FnOnce(&MemoryTier) -> R) -> Option<R> {
        let memory = self.memory.as_ref()?;
        let mut generation = self.stripe(key).lock();
        let r = write(memory);
        *generation += 1;
        Some(r)
    }

    fn finish_pending_removal(&self, key: &Digest) {
        if let Entry::Occupied(mut e) = self.pending_removals.entry(*key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Whether an entry created at `created_ms` satisfies the request's `max_age`.
fn fresh_enough(created_ms: u64, now: u64, opts: &RequestOptions) -> bool {
    opts.max_age
        .is_none_or(|max| now.saturating_sub(created_ms) <= duration_ms(max))
}

/// The flights one caller leads. Publishing a result hands the key back; dropping the
/// guard (a cancelled caller) removes unpublished flights so their waiters take over.
struct LeaderGuard<'a> {
    inner: &'a Inner,
    flights: Vec<(Digest, u64)>,
}

impl LeaderGuard<'_> {
    /// Sends the result to the waiters but keeps leading the key until the guard drops.
    fn send(&self, digest: &Digest, result: Result<Found, ComputeError>) {
        if let Some(flight) = self.inner.inflight.get(digest) {
            flight.tx.send_replace(Some(result));
        }
    }

    /// Sends the result and hands the key back.
    fn publish(&mut self, digest: &Digest, result: Result<Found, ComputeError>) {
        let Some(pos) = self.flights.iter().position(|(d, _)| d == digest) else {
            return;
        };
        let (digest, id) = self.flights.swap_remove(pos);
        if let Some((_, flight)) = self.inner.inflight.remove_if(&digest, |_, f| f.id == id) {
            flight.tx.send_replace(Some(result));
        }
    }

    fn fail(&mut self, err: &ComputeError, keys: &[CacheKey]) {
        for k in keys {
            k.model.counters.compute_errors.incr();
            self.publish(&k.digest, Err(err.clone()));
        }
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        for (digest, id) in self.flights.drain(..) {
            // Hands back the keys still led. Waiters of a key whose result was sent have
            // it; for the others, dropping the sender wakes them with no value and they
            // retry.
            self.inner.inflight.remove_if(&digest, |_, f| f.id == id);
        }
    }
}

/// Applies queued write-back operations in order, in batches, off the async workers.
async fn drain_write_back(inner: Weak<Inner>, mut rx: mpsc::Receiver<WriteOp>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(disk) = &inner.disk else {
            return;
        };
        let ops = std::mem::take(&mut batch);
        let (ops, acks) = disk
            .run(move |d| {
                let mut acks = Vec::new();
                let mut removed = Vec::new();
                for op in ops {
                    let result = match op {
                        WriteOp::Put { key, entry } => d
                            .insert(
                                key,
                                &entry.value,
                                entry.created_ms,
                                (entry.expires_ms != NEVER).then_some(entry.expires_ms),
                            )
                            .map(drop),
                        WriteOp::Remove { key } => {
                            removed.push(key);
                            d.remove(&key).map(drop)
                        }
                        WriteOp::Clear => d.clear(),
                        WriteOp::Flush(ack) => {
                            acks.push(ack);
                            Ok(())
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "write-back to disk failed");
                    }
                }
                (removed, acks)
            })
            .await;
        for key in &ops {
            inner.finish_pending_removal(key);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Reclaims expired entries every `interval` until the cache is dropped.
async fn cleanup(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let cache = Cache { inner };
        let n = cache.purge_expired().await;
        if n > 0 {
            tracing::debug!(reclaimed = n, "expired entries reclaimed");
        }
    }
}

#[cfg(test)]
mod tests;
