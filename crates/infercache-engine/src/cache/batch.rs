//! [`crate::Cache::get_many_or_compute`] as named steps over a [`Batch`].
//!
//! One call runs [`Inner::memory_pass`], then rounds ([`Cache::round`]) until every key is
//! resolved. A round leads the keys nobody is computing and waits for the others
//! ([`Inner::lead_or_wait`]); as leader it looks memory again, then disk, then the remote
//! tier ([`Cache::look_below`]); it computes what no tier had, with the remote tier's
//! leases ([`Cache::compute_missing`]); and it collects what the other leaders computed
//! ([`Cache::collect_waits`]), retrying keys whose leader vanished in the next round.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use infercache_core::Digest;
use tokio::sync::watch;

use super::flight::{Flight, FlightResult, LeaderGuard};
use super::tiers::Tier;
use super::types::{CacheKey, Fetched, Found, RequestOptions, Source, fresh_enough};
use super::{Cache, Inner};
use crate::error::{ComputeError, EngineError};
use crate::hash::DigestHasher;

/// The keys of one call, de-duplicated, and what has been resolved for each.
pub(super) struct Batch<'a> {
    pub(super) opts: &'a RequestOptions,
    /// The distinct keys, in first-appearance order; steps name them by index here.
    unique: Vec<&'a CacheKey>,
    /// For each input key, its index in `unique`.
    positions: Vec<usize>,
    results: Vec<Option<Fetched>>,
}

impl<'a> Batch<'a> {
    /// De-duplicates `keys`, keeping first-appearance order.
    pub(super) fn new(keys: &'a [CacheKey], opts: &'a RequestOptions) -> Self {
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
        let results = vec![None; unique.len()];
        Self {
            opts,
            unique,
            positions,
            results,
        }
    }

    /// The key at `i`.
    pub(super) fn key(&self, i: usize) -> &'a CacheKey {
        self.unique[i]
    }

    /// The keys at `idx`, cloned (what a computation or a lookup takes).
    pub(super) fn keys(&self, idx: &[usize]) -> Vec<CacheKey> {
        idx.iter().map(|&i| self.unique[i].clone()).collect()
    }

    /// The digests of the keys at `idx`.
    pub(super) fn digests(&self, idx: &[usize]) -> Vec<Digest> {
        idx.iter().map(|&i| self.unique[i].digest).collect()
    }

    /// Records the value of the key at `i`.
    pub(super) fn resolve(&mut self, i: usize, fetched: Fetched) {
        self.results[i] = Some(fetched);
    }

    /// The values in input order.
    pub(super) fn finish(self) -> Vec<Fetched> {
        let results = self.results;
        self.positions
            .into_iter()
            .map(|p| {
                results[p]
                    .clone()
                    .expect("every unique key resolved (a bug otherwise)")
            })
            .collect()
    }
}

/// What a round waits for: keys led by concurrent callers, with their flights.
type Waits = Vec<(usize, watch::Receiver<FlightResult>)>;

impl Inner {
    /// Step 1: memory, without touching the in-flight table. The keys it missed.
    pub(super) fn memory_pass(&self, batch: &mut Batch<'_>) -> Vec<usize> {
        let now = self.clock.now_ms();
        let mut pending = Vec::new();
        for i in 0..batch.unique.len() {
            match (!batch.opts.no_cache)
                .then(|| self.memory_hit(batch.key(i), batch.opts, now, true))
                .flatten()
            {
                Some(hit) => batch.resolve(i, hit),
                None => pending.push(i),
            }
        }
        pending
    }

    /// Step 2: leads the keys at `pending` that nobody is computing (the guard holds
    /// them) and subscribes to the flights of the others.
    fn lead_or_wait(
        &self,
        batch: &Batch<'_>,
        pending: &[usize],
    ) -> (LeaderGuard<'_>, Vec<usize>, Waits) {
        let mut guard = LeaderGuard {
            inner: self,
            flights: Vec::new(),
        };
        let mut waits = Vec::new();
        let mut leads = Vec::new();
        for &i in pending {
            match self.inflight.entry(batch.key(i).digest) {
                Entry::Occupied(e) => waits.push((i, e.get().tx.subscribe())),
                Entry::Vacant(v) => {
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    v.insert(Flight {
                        id,
                        tx: watch::channel(None).0,
                    });
                    guard.flights.push((batch.key(i).digest, id));
                    leads.push(i);
                }
            }
        }
        (guard, leads, waits)
    }
}

impl Cache {
    /// One round over the keys at `pending`: steps 2 to 5. The keys to retry (their
    /// leader vanished).
    pub(super) async fn round<F, Fut, E>(
        &self,
        batch: &mut Batch<'_>,
        pending: Vec<usize>,
        f: &mut F,
    ) -> Result<Vec<usize>, ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (mut guard, leads, waits) = self.inner.lead_or_wait(batch, &pending);
        let missing = self.look_below(batch, &mut guard, leads).await;
        if !missing.is_empty() {
            self.compute_missing(f, batch, &mut guard, &missing).await?;
        }
        drop(guard);
        let (retry, own) = self.collect_waits(batch, waits).await?;
        self.compute_own(f, batch, &own).await?;
        Ok(retry)
    }

    /// Step 3: as leader, memory again (a leader that just finished stored there before
    /// handing the key back), then disk, then the remote tier. The keys no tier had.
    async fn look_below(
        &self,
        batch: &mut Batch<'_>,
        guard: &mut LeaderGuard<'_>,
        leads: Vec<usize>,
    ) -> Vec<usize> {
        if batch.opts.no_cache {
            return leads;
        }
        let now = self.inner.clock.now_ms();
        let mut below = Vec::new();
        for i in leads {
            match self.inner.memory_hit(batch.key(i), batch.opts, now, false) {
                Some(hit) => {
                    guard.publish(&batch.key(i).digest, Ok(Found::hit(&hit)));
                    batch.resolve(i, hit);
                }
                None => below.push(i),
            }
        }
        for tier in [Tier::Disk, Tier::Remote] {
            let keys = batch.keys(&below);
            let found = match tier {
                Tier::Disk => self.disk_lookup(&keys, batch.opts).await,
                Tier::Remote => self.remote_lookup(&keys, batch.opts).await,
            };
            let mut still = Vec::new();
            for (i, hit) in below.into_iter().zip(found) {
                match hit {
                    Some(hit) => {
                        guard.publish(&batch.key(i).digest, Ok(Found::hit(&hit)));
                        batch.resolve(i, hit);
                    }
                    None => still.push(i),
                }
            }
            below = still;
        }
        below
    }

    /// Step 4: computes what no tier had, in one call; with a remote tier, only the keys
    /// no other node is computing (their values are awaited, then computed here if they
    /// do not come).
    async fn compute_missing<F, Fut, E>(
        &self,
        f: &mut F,
        batch: &mut Batch<'_>,
        guard: &mut LeaderGuard<'_>,
        missing: &[usize],
    ) -> Result<(), ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (mine, theirs, lease) = self.lease(batch, guard, missing).await;
        let computed = self.compute_led(f, guard, batch, &mine).await;
        if let Some(lease) = lease {
            // Released once the values are stored (or the computation failed), so
            // another node waiting for them either finds them or computes.
            lease.release().await;
        }
        computed?;
        if !theirs.is_empty() {
            let empty = self.await_remote(batch, guard, &theirs).await;
            self.compute_led(f, guard, batch, &empty).await?;
        }
        Ok(())
    }

    /// Step 5: collects what the other leaders computed. The keys whose leader vanished
    /// (to retry), and those whose value this caller's options refuse (too old for its
    /// max-age, or read from a tier while it asked for no-cache), which it computes itself.
    async fn collect_waits(
        &self,
        batch: &mut Batch<'_>,
        waits: Waits,
    ) -> Result<(Vec<usize>, Vec<usize>), ComputeError> {
        let opts = batch.opts;
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
                    batch.key(i).model.counters.coalesced.incr();
                    batch.resolve(i, found.fetched(Source::Coalesced));
                }
                Ok(Some(Err(err))) => return Err(err),
                Ok(None) | Err(_) => retry.push(i),
            }
        }
        Ok((retry, own))
    }

    /// Computes the keys at `own` (refused as delivered by their leader) without leading
    /// them, and stores them.
    async fn compute_own<F, Fut, E>(
        &self,
        f: &mut F,
        batch: &mut Batch<'_>,
        own: &[usize],
    ) -> Result<(), ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if own.is_empty() {
            return Ok(());
        }
        let keys = batch.keys(own);
        for k in &keys {
            k.model.counters.misses.incr();
        }
        let found = self.compute(f, keys).await?;
        for (&i, (_, v)) in own.iter().zip(&found) {
            batch.resolve(i, v.fetched(Source::Computed));
        }
        if !batch.opts.no_store {
            self.store(found, batch.opts).await;
        }
        Ok(())
    }

    /// Computes the keys at `idx` (led by this caller) with one call of `f`: stores them in
    /// memory, hands them to this node's waiters, then stores them below memory.
    async fn compute_led<F, Fut, E>(
        &self,
        f: &mut F,
        guard: &mut LeaderGuard<'_>,
        batch: &mut Batch<'_>,
        idx: &[usize],
    ) -> Result<(), ComputeError>
    where
        F: FnMut(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if idx.is_empty() {
            return Ok(());
        }
        let opts = batch.opts;
        let keys = batch.keys(idx);
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
            batch.resolve(i, v.fetched(Source::Computed));
        }
        if !opts.no_store {
            self.store_below_memory(found, opts).await;
        }
        Ok(())
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
}
