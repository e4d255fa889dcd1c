//! The tiered cache: memory over a persistent disk tier, single-flight computation,
//! invalidation epochs, TTLs and per-model stats.
//!
//! # Lookups
//!
//! A read goes memory → disk → remote → compute. A disk hit is promoted to memory
//! (backfill), a remote hit to memory and disk, with their original creation time and
//! expiry. Every value, from any tier or from another node, passes one freshness rule
//! ([`freshness`]: expiry, the model's `ttl`, the request's `max-age`) before it is
//! served: a value too old is recomputed (by the lease holder, with a remote tier), or,
//! within a stale window, served marked [`Fetched::stale`] (stale-while-revalidate with
//! [`Cache::get_many_or_refresh`], stale-if-error when the computation fails).
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

mod batch;
mod flight;
pub mod freshness;
mod lease;
mod removal;
mod sync;
mod tiers;
mod types;
mod write_back;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use infercache_core::stats::{Counter, ModelCounters};
use infercache_core::{Digest, KeyParts, SharedClock};
use parking_lot::Mutex;

use self::batch::{Batch, Mode};
use self::flight::Flight;
pub use self::freshness::{FreshnessPolicy, Stale};
pub use self::removal::Removal;
pub use self::sync::{LocalReads, LocalSyncStats};
use self::tiers::DiskIo;
use self::types::Found;
pub use self::types::{
    CacheConfig, CacheKey, CacheStats, Computed, Fetched, Lookup, Model, RequestOptions, Source,
    WritePolicy,
};
use self::write_back::WriteBack;
use crate::disk::DiskTier;
use crate::epochs::{EpochTable, Scope};
use crate::error::{ComputeError, EngineError};
use crate::hash::DigestHasher;
use crate::memory::MemoryTier;
use crate::remote::{EpochSync, RemoteTier};

/// What every clone of a [`Cache`] shares.
#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    memory: Option<MemoryTier>,
    disk: Option<DiskIo>,
    remote: Option<Arc<dyn RemoteTier>>,
    /// Shared with the remote tier's [`EpochSync`], which raises it.
    epochs: Arc<EpochTable>,
    default_ttl: Option<Duration>,
    policies: HashMap<String, FreshnessPolicy>,
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
    /// Removal marks per key stripe (see `cache/removal.rs`).
    fences: Box<[removal::Fence]>,
    /// This cache, for the remote tier's removals (see [`crate::remote::LocalTiers`]).
    me: Weak<Inner>,
    /// When memory and disk are read (see `cache/sync.rs`).
    local_reads: sync::LocalReads,
    /// Lookups that skipped memory and disk because the epochs were not in sync.
    local_skipped: Counter,
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
                let (io, epochs) =
                    DiskIo::open(d, config.cache_version, config.disk_io_concurrency, &clock)?;
                (Some(io), epochs)
            }
            None => (None, EpochTable::in_memory(config.cache_version)),
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        // Write-back needs a tier below memory to write to and a runtime to drain it.
        let (write_back, rx) = match (config.write_policy, disk.is_some() && runtime.is_some()) {
            (WritePolicy::WriteBack { queue }, true) => {
                let (wb, rx) = WriteBack::new(queue);
                (Some(wb), Some(rx))
            }
            _ => (None, None),
        };
        let inner = Arc::new_cyclic(|me| Inner {
            clock,
            memory,
            disk,
            remote: config.remote,
            epochs: Arc::new(epochs),
            default_ttl: config.default_ttl,
            policies: config.policies,
            models: DashMap::new(),
            inflight: DashMap::with_hasher(DigestHasher::default()),
            next_flight: AtomicU64::new(0),
            coalesced: Counter::default(),
            write_back,
            pending_removals: DashMap::with_hasher(DigestHasher::default()),
            stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(0)).collect(),
            fences: removal::fences(),
            me: me.clone(),
            local_reads: config.local_reads,
            local_skipped: Counter::default(),
        });
        // A recovered index is charged before anything is served.
        inner.charge_disk_index();
        if let Some(remote) = &inner.remote {
            let local: Weak<dyn crate::remote::LocalTiers> = Arc::downgrade(&inner) as _;
            remote.attach(EpochSync::new(Arc::downgrade(&inner.epochs)).with_local(local));
        }
        if let Some(rt) = runtime {
            if let (Some(rx), Some(wb)) = (rx, &inner.write_back) {
                wb.start(&rt, write_back::drain(Arc::downgrade(&inner), rx));
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
        let policy = self.inner.policies.get(name).copied().unwrap_or_default();
        Arc::clone(
            self.inner
                .models
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Arc::new(Model {
                        name: name.into(),
                        policy,
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

    /// How many times an invalidation has changed this cache's epochs
    /// ([`EpochTable::changes`]): a key made while this reads the same number is still
    /// the key of its row.
    pub fn epoch_changes(&self) -> u64 {
        self.inner.epochs.changes()
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

    /// Looks `key` up in every tier: a hit only for a value fresh for this request (see
    /// [`freshness`]); a stale one is a miss here.
    pub async fn get(&self, key: &CacheKey, opts: &RequestOptions) -> Lookup {
        if opts.no_cache {
            return Lookup::Miss;
        }
        let keys = std::slice::from_ref(key);
        let mut batch = Batch::new(keys, opts, Mode::Answer);
        if self.inner.memory_pass(&mut batch).is_empty() {
            return Lookup::Hit(batch.finish().remove(0));
        }
        let now = self.inner.clock.now_ms();
        if let Some(found) = self.disk_lookup(keys).await.pop().flatten()
            && batch.accept(0, &found, Source::Disk, now)
        {
            return Lookup::Hit(batch.finish().remove(0));
        }
        let now = self.inner.clock.now_ms();
        if let Some(found) = self.remote_lookup(keys).await.pop().flatten()
            && batch.accept(0, &found, Source::Remote, now)
        {
            return Lookup::Hit(batch.finish().remove(0));
        }
        key.model.counters.misses.incr();
        Lookup::Miss
    }

    /// The values of `keys` in input order, when the memory tier holds every one fresh for
    /// this request: the synchronous path of a memory hit, with no task, no in-flight
    /// table and no lower tier. The hits are counted as [`Cache::get_many_or_compute`]
    /// counts them. `None`, having counted nothing, when any key is missing, not fresh,
    /// or barred (`no-cache`, local reads paused), or when `accept` refuses a value (the
    /// caller's own check of the value of `keys[i]`, e.g. an embedding's length): the
    /// caller then takes the full path, which gives the same answer for every key this
    /// one would have served.
    pub fn get_many_from_memory(
        &self,
        keys: &[CacheKey],
        opts: &RequestOptions,
        accept: impl Fn(usize, &[u8]) -> bool,
    ) -> Option<Vec<Fetched>> {
        let memory = self.inner.memory.as_ref()?;
        if opts.no_cache {
            return None;
        }
        let now = self.inner.clock.now_ms();
        // Read quietly, row by row (a repeated key is read again rather than
        // de-duplicated first: no `Batch` to build); the hits are counted only once every
        // key is found (a request only partly in memory counts its hits on the full path).
        let mut fetched = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let entry = self.inner.memory_entry(&key.digest, false)?;
            let verdict = freshness::judge(&key.model.policy, opts, entry.times(), now);
            if verdict != freshness::Verdict::Fresh || !accept(i, &entry.value) {
                return None;
            }
            fetched.push(entry.fetched(Source::Memory, None));
        }
        // As `Batch::accept` counts a fresh memory hit: once per distinct key.
        let mut seen: HashSet<Digest, DigestHasher> = HashSet::default();
        for (i, key) in keys.iter().enumerate() {
            let first = if keys.len() <= batch::LINEAR_DEDUP {
                !keys[..i].iter().any(|k| k.digest == key.digest)
            } else {
                seen.insert(key.digest)
            };
            if first {
                memory.count_hit();
                key.model.counters.memory_hits.incr();
            }
        }
        Some(fetched)
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
            expires_ms: self.inner.expiry(key, created_ms, opts),
            computed: true,
            store: true,
        };
        self.store(vec![(key.clone(), found)]).await;
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
        self.clear_disk().await;
    }

    /// Returns the value of `key`, computing it with `f` if no tier has one fresh for
    /// this request.
    ///
    /// Concurrent callers for a missing key run `f` once and all receive its result; an
    /// error reaches every waiter and is not cached (see the module docs). `f` returns a
    /// [`Bytes`] (stored) or a [`Computed`] (which may say not to store it).
    ///
    /// # Errors
    /// The computation's error, shared, unless a stale entry stands in for it (see
    /// [`Cache::get_many_or_compute`]).
    pub async fn get_or_compute<F, Fut, E, V>(
        &self,
        key: &CacheKey,
        opts: &RequestOptions,
        f: F,
    ) -> Result<Fetched, ComputeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        V: Into<Computed>,
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

    /// Returns the values of `keys` in input order, computing with one call of `f` those
    /// no tier has a value of that is fresh for this request.
    ///
    /// Duplicate keys are looked up and computed once. `f` receives only the keys that no
    /// tier holds and no concurrent caller is already computing, and must return their
    /// values in the same order ([`Bytes`], or [`Computed`] to mark some not to be
    /// stored). It is called again only for keys whose computing caller was cancelled
    /// before finishing.
    ///
    /// A value within its stale-while-revalidate window is recomputed before answering
    /// here ([`Cache::get_many_or_refresh`] serves it at once). When `f` fails, every key
    /// with an entry within its stale-if-error window (the request's, else its model's)
    /// is answered with it, marked [`Stale::IfError`]; the error is returned only if some
    /// key has none (or under `no-cache`).
    ///
    /// The steps (memory; lead or wait; memory again, disk, remote; lease, compute, store;
    /// collect what others computed) are named in `cache/batch.rs`.
    ///
    /// # Errors
    /// The computation's error (shared with every waiter), or
    /// [`EngineError::BatchLength`] if `f` returned the wrong number of values.
    pub async fn get_many_or_compute<F, Fut, E, V>(
        &self,
        keys: &[CacheKey],
        opts: &RequestOptions,
        mut f: F,
    ) -> Result<Vec<Fetched>, ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut batch = Batch::new(keys, opts, Mode::Answer);
        self.run(&mut batch, &mut f).await?;
        Ok(batch.finish())
    }

    /// [`Cache::get_many_or_compute`] with stale-while-revalidate: a value past its
    /// freshness but within its stale-while-revalidate window (the request's, else its
    /// model's) is served at once, marked [`Stale::WhileRevalidate`], and recomputed in
    /// the background with `f`, once across concurrent callers (the single flight) and
    /// nodes (the remote tier's lease: a key another node is computing is left to it).
    /// A refresh that fails keeps the stale value (counted in `compute_errors`). Under
    /// `no-store` the stale value is served but not refreshed.
    ///
    /// # Errors
    /// As [`Cache::get_many_or_compute`].
    pub async fn get_many_or_refresh<F, Fut, E, V>(
        &self,
        keys: &[CacheKey],
        opts: &RequestOptions,
        mut f: F,
    ) -> Result<Vec<Fetched>, ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<V>, E>> + Send + 'static,
        V: Into<Computed> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut batch = Batch::new(keys, opts, Mode::AnswerStale);
        self.run(&mut batch, &mut f).await?;
        let stale = batch.keys(&batch.revalidate);
        // Under `no-store` a refresh would store nothing: a later request recomputes.
        if !stale.is_empty() && !opts.no_store {
            let (cache, opts) = (self.clone(), *opts);
            tokio::spawn(async move { cache.refresh(stale, opts, f).await });
        }
        Ok(batch.finish())
    }

    /// Recomputes `keys` (served stale-while-revalidate) and stores them, skipping those
    /// another caller or node is computing, or that are fresh again by now.
    async fn refresh<F, Fut, E, V>(self, keys: Vec<CacheKey>, opts: RequestOptions, mut f: F)
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut batch = Batch::new(&keys, &opts, Mode::Refresh);
        if let Err(e) = self.run(&mut batch, &mut f).await {
            tracing::debug!(error = %e, "a stale-while-revalidate refresh failed");
        }
    }

    /// Waits until every queued write-back operation has reached the lower tiers, then
    /// syncs the disk tier.
    pub async fn flush(&self) {
        if let Some(wb) = &self.inner.write_back {
            wb.flush().await;
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
            self.inner.charge_disk_index();
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
            writeback_queued: inner.write_back.as_ref().map_or(0, WriteBack::queued),
            sync: inner.sync_stats(),
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
