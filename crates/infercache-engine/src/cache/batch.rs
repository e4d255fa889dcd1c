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

use dashmap::mapref::entry::Entry;
use infercache_core::Digest;
use tokio::sync::watch;

use super::flight::{Flight, FlightResult, LeaderGuard};
use super::freshness::{Stale, Verdict, judge};
use super::tiers::Tier;
use super::types::{CacheKey, Computed, Fetched, Found, RequestOptions, Source};
use super::{Cache, Inner};
use crate::error::{ComputeError, EngineError};
use crate::hash::DigestHasher;
use crate::remote::Lease;

/// How a call may use values past their freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A caller's call whose computation cannot outlive it: values within
    /// stale-while-revalidate are recomputed before answering.
    Answer,
    /// A caller's call that can refresh in the background: values within
    /// stale-while-revalidate are served at once, marked stale, and listed for a refresh.
    AnswerStale,
    /// A background refresh: it never waits for a key another caller or node is
    /// computing, and counts no hits.
    Refresh,
}

/// Calls with at most this many keys are de-duplicated by a scan, larger ones by a hash map.
pub(super) const LINEAR_DEDUP: usize = 8;

/// The keys of one call, de-duplicated, and what has been resolved for each.
pub(super) struct Batch<'a> {
    pub(super) opts: &'a RequestOptions,
    pub(super) mode: Mode,
    /// The distinct keys, in first-appearance order; steps name them by index here.
    unique: Vec<&'a CacheKey>,
    /// For each input key, its index in `unique`.
    positions: Vec<usize>,
    results: Vec<Option<Fetched>>,
    /// The keys served stale-while-revalidate, to refresh.
    pub(super) revalidate: Vec<usize>,
}

impl<'a> Batch<'a> {
    /// De-duplicates `keys`, keeping first-appearance order.
    pub(super) fn new(keys: &'a [CacheKey], opts: &'a RequestOptions, mode: Mode) -> Self {
        let mut unique: Vec<&CacheKey> = Vec::with_capacity(keys.len());
        let positions: Vec<usize> = if keys.len() <= LINEAR_DEDUP {
            // A scan beats hashing for the few keys of most requests, and allocates nothing.
            keys.iter()
                .map(|k| match unique.iter().position(|u| u.digest == k.digest) {
                    Some(p) => p,
                    None => {
                        unique.push(k);
                        unique.len() - 1
                    }
                })
                .collect()
        } else {
            let mut index: HashMap<Digest, usize, DigestHasher> =
                HashMap::with_capacity_and_hasher(keys.len(), DigestHasher::default());
            keys.iter()
                .map(|k| {
                    *index.entry(k.digest).or_insert_with(|| {
                        unique.push(k);
                        unique.len() - 1
                    })
                })
                .collect()
        };
        let results = vec![None; unique.len()];
        Self {
            opts,
            mode,
            unique,
            positions,
            results,
            revalidate: Vec::new(),
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

    /// The indices of the keys not resolved yet.
    pub(super) fn unresolved(&self) -> Vec<usize> {
        (0..self.unique.len())
            .filter(|&i| self.results[i].is_none())
            .collect()
    }

    /// Records the value of the key at `i`.
    pub(super) fn resolve(&mut self, i: usize, fetched: Fetched) {
        self.results[i] = Some(fetched);
    }

    /// Judges `found`, read from `source` for the key at `i`, by the freshness rule, and
    /// resolves the key with it if this call may serve it (counting the hit). Whether it
    /// did. Every value a call serves passes here.
    pub(super) fn accept(&mut self, i: usize, found: &Found, source: Source, now: u64) -> bool {
        let key = self.key(i);
        let stale = match judge(&key.model.policy, self.opts, found.times(), now) {
            Verdict::Fresh => None,
            Verdict::Revalidate if self.mode == Mode::AnswerStale => {
                self.revalidate.push(i);
                Some(Stale::WhileRevalidate)
            }
            Verdict::Revalidate | Verdict::Fallback | Verdict::Unusable => return false,
        };
        if self.mode != Mode::Refresh {
            let c = &key.model.counters;
            match source {
                Source::Memory => c.memory_hits.incr(),
                Source::Disk => c.disk_hits.incr(),
                Source::Remote => c.remote_hits.incr(),
                Source::Coalesced => c.coalesced.incr(),
                Source::Computed => {}
            }
            if stale.is_some() {
                c.stale_served.incr();
            }
        }
        self.resolve(i, found.fetched(source, stale));
        true
    }

    /// Resolves the key at `i` with `found` as a stand-in for a failed computation, if the
    /// freshness rule allows it (fresh, or within a stale window). Whether it did.
    pub(super) fn accept_if_error(
        &mut self,
        i: usize,
        found: &Found,
        source: Source,
        now: u64,
    ) -> bool {
        let key = self.key(i);
        let stale = match judge(&key.model.policy, self.opts, found.times(), now) {
            Verdict::Fresh => None,
            Verdict::Revalidate | Verdict::Fallback => Some(Stale::IfError),
            Verdict::Unusable => return false,
        };
        if stale.is_some() {
            key.model.counters.stale_served.incr();
        }
        self.resolve(i, found.fetched(source, stale));
        true
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
pub(super) type Waits = Vec<(usize, watch::Receiver<FlightResult>)>;

/// The bounds of a computation: `f(keys)` returns one value per key, in order.
pub(super) trait ComputeFn<V, E, Fut>: FnMut(Vec<CacheKey>) -> Fut
where
    Fut: Future<Output = Result<Vec<V>, E>>,
{
}

impl<F, V, E, Fut> ComputeFn<V, E, Fut> for F
where
    F: FnMut(Vec<CacheKey>) -> Fut,
    Fut: Future<Output = Result<Vec<V>, E>>,
{
}

impl Inner {
    /// Step 1: memory, without touching the in-flight table. The keys it missed.
    pub(super) fn memory_pass(&self, batch: &mut Batch<'_>) -> Vec<usize> {
        let now = self.clock.now_ms();
        let mut pending = Vec::new();
        for i in 0..batch.unique.len() {
            let found = (!batch.opts.no_cache)
                .then(|| self.memory_entry(&batch.key(i).digest, true))
                .flatten();
            if !found.is_some_and(|f| batch.accept(i, &f, Source::Memory, now)) {
                pending.push(i);
            }
        }
        pending
    }

    /// Step 2: leads the keys at `pending` that nobody is computing (the guard holds
    /// them) and subscribes to the flights of the others.
    pub(super) fn lead_or_wait(
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
    /// Every step of [`Cache::get_many_or_compute`] on `batch`, and stale-if-error when the
    /// computation fails.
    pub(super) async fn run<F, Fut, E, V>(
        &self,
        batch: &mut Batch<'_>,
        f: &mut F,
    ) -> Result<(), ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut pending = self.inner.memory_pass(batch);
        while !pending.is_empty() {
            match self.round(batch, pending, f).await {
                Ok(retry) => pending = retry,
                Err(err) if batch.mode == Mode::Refresh => return Err(err),
                Err(err) => return self.stale_if_error_pass(batch, err).await,
            }
        }
        Ok(())
    }

    /// One round over the keys at `pending`: steps 2 to 5. The keys to retry (their
    /// leader vanished).
    async fn round<F, Fut, E, V>(
        &self,
        batch: &mut Batch<'_>,
        pending: Vec<usize>,
        f: &mut F,
    ) -> Result<Vec<usize>, ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (mut guard, leads, mut waits) = self.inner.lead_or_wait(batch, &pending);
        if batch.mode == Mode::Refresh {
            // Another caller on this node is computing these keys already.
            waits.clear();
        }
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
    /// handing the key back), then disk, then the remote tier. The keys no tier had a
    /// value of that this call may serve.
    pub(super) async fn look_below(
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
            match self.inner.memory_entry(&batch.key(i).digest, false) {
                Some(found) if batch.accept(i, &found, Source::Memory, now) => {
                    guard.publish(&batch.key(i).digest, Ok(found));
                }
                _ => below.push(i),
            }
        }
        for tier in [Tier::Disk, Tier::Remote] {
            if below.is_empty() {
                break;
            }
            let keys = batch.keys(&below);
            let (found, source) = match tier {
                Tier::Disk => (self.disk_lookup(&keys).await, Source::Disk),
                Tier::Remote => (self.remote_lookup(&keys).await, Source::Remote),
            };
            let now = self.inner.clock.now_ms();
            let mut still = Vec::new();
            for (i, found) in below.into_iter().zip(found) {
                match found {
                    Some(found) if batch.accept(i, &found, source, now) => {
                        guard.publish(&batch.key(i).digest, Ok(found));
                    }
                    _ => still.push(i),
                }
            }
            below = still;
        }
        below
    }

    /// Step 4: computes what no tier had, in one call; with a remote tier, only the keys
    /// no other node is computing (their values are awaited, then computed here if they
    /// do not come; a refresh leaves them to that node).
    pub(super) async fn compute_missing<F, Fut, E, V>(
        &self,
        f: &mut F,
        batch: &mut Batch<'_>,
        guard: &mut LeaderGuard<'_>,
        missing: &[usize],
    ) -> Result<(), ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (mine, theirs, lease) = self.lease(batch, guard, missing).await;
        // The lease is released once the values are stored (or the computation failed),
        // so another node waiting for them either finds them or computes.
        self.compute_led(f, guard, batch, &mine, lease).await?;
        if !theirs.is_empty() && batch.mode != Mode::Refresh {
            let empty = self.await_remote(batch, guard, &theirs).await;
            self.compute_led(f, guard, batch, &empty, None).await?;
        }
        Ok(())
    }

    /// Step 5: collects what the other leaders computed. The keys whose leader vanished
    /// (to retry), and those whose value this caller may not serve (too old for it, or
    /// read from a tier while it asked for no-cache), which it computes itself.
    async fn collect_waits(
        &self,
        batch: &mut Batch<'_>,
        waits: Waits,
    ) -> Result<(Vec<usize>, Vec<usize>), ComputeError> {
        let mut retry = Vec::new();
        let mut own = Vec::new();
        for (i, mut rx) in waits {
            let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
            match outcome {
                Ok(Some(Ok(found))) => {
                    let usable = !batch.opts.no_cache || found.computed;
                    let now = self.inner.clock.now_ms();
                    if usable && batch.accept(i, &found, Source::Coalesced, now) {
                        self.inner.coalesced.incr();
                    } else {
                        own.push(i);
                    }
                }
                Ok(Some(Err(err))) => return Err(err),
                Ok(None) | Err(_) => retry.push(i),
            }
        }
        Ok((retry, own))
    }

    /// Computes the keys at `own` (refused as delivered by their leader) without leading
    /// them, and stores them.
    async fn compute_own<F, Fut, E, V>(
        &self,
        f: &mut F,
        batch: &mut Batch<'_>,
        own: &[usize],
    ) -> Result<(), ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if own.is_empty() {
            return Ok(());
        }
        let keys = batch.keys(own);
        for k in &keys {
            k.model.counters.misses.incr();
        }
        let found = self.compute(f, keys, batch.opts).await?;
        for (&i, (_, v)) in own.iter().zip(&found) {
            batch.resolve(i, v.fetched(Source::Computed, None));
        }
        let keep = self.keepable(found, batch.opts);
        self.store(keep).await;
        Ok(())
    }

    /// Computes the keys at `idx` (led by this caller) with one call of `f`: stores them in
    /// memory, hands them to this node's waiters, then stores them below memory (through
    /// `lease`, which then lets the keys go, when there is one).
    async fn compute_led<F, Fut, E, V>(
        &self,
        f: &mut F,
        guard: &mut LeaderGuard<'_>,
        batch: &mut Batch<'_>,
        idx: &[usize],
        lease: Option<Box<dyn Lease>>,
    ) -> Result<(), ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if idx.is_empty() {
            if let Some(lease) = lease {
                lease.release(Vec::new()).await;
            }
            return Ok(());
        }
        let opts = batch.opts;
        let keys = batch.keys(idx);
        for k in &keys {
            match batch.mode {
                Mode::Refresh => k.model.counters.refreshes.incr(),
                Mode::Answer | Mode::AnswerStale => k.model.counters.misses.incr(),
            }
        }
        let found = match self.compute(f, keys.clone(), opts).await {
            Ok(found) => found,
            Err(err) => {
                guard.fail(&err, &keys);
                if let Some(lease) = lease {
                    lease.release(Vec::new()).await;
                }
                return Err(err);
            }
        };
        // Memory, then the value to the waiters, then the slower tiers; the keys are
        // handed back only once every write-through tier has them, so a newcomer
        // meanwhile joins the flight (and gets the value at once) instead of missing
        // everywhere and computing again. A value not to be stored goes to the waiters
        // only, and its lease is released with no value: other nodes compute it.
        let keep = self.keepable(found.clone(), opts);
        self.inner.store_memory(&keep);
        for (&i, (k, v)) in idx.iter().zip(&found) {
            guard.send(&k.digest, Ok(v.clone()));
            batch.resolve(i, v.fetched(Source::Computed, None));
        }
        self.store_below_memory(keep, lease).await;
        Ok(())
    }

    /// The values of `found` that may be stored: none under `no-store`, and none marked
    /// not to be (counted).
    fn keepable(
        &self,
        found: Vec<(CacheKey, Found)>,
        opts: &RequestOptions,
    ) -> Vec<(CacheKey, Found)> {
        if opts.no_store {
            return Vec::new();
        }
        found
            .into_iter()
            .filter(|(k, f)| {
                if !f.store {
                    k.model.counters.not_stored.incr();
                }
                f.store
            })
            .collect()
    }

    /// Runs `f` on `keys` and pairs each key with its value, stamped now.
    async fn compute<F, Fut, E, V>(
        &self,
        f: &mut F,
        keys: Vec<CacheKey>,
        opts: &RequestOptions,
    ) -> Result<Vec<(CacheKey, Found)>, ComputeError>
    where
        F: ComputeFn<V, E, Fut>,
        Fut: Future<Output = Result<Vec<V>, E>>,
        V: Into<Computed>,
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
                let Computed { value, store } = value.into();
                let found = Found {
                    value,
                    created_ms,
                    expires_ms: self.inner.expiry(&k, created_ms, opts),
                    computed: true,
                    store,
                };
                (k, found)
            })
            .collect())
    }

    /// After a failed computation: every key not resolved yet from any tier, within its
    /// stale-if-error window (or fresh), marked stale; the error if any key has none, or
    /// under `no-cache`.
    async fn stale_if_error_pass(
        &self,
        batch: &mut Batch<'_>,
        err: ComputeError,
    ) -> Result<(), ComputeError> {
        if batch.opts.no_cache || !self.fallback_pass(batch).await {
            return Err(err);
        }
        tracing::debug!(error = %err, "computation failed; serving stale entries");
        Ok(())
    }

    /// Resolves every unresolved key of `batch` from memory, disk or the remote tier with a
    /// value allowed to stand in for a failed computation; whether every key was.
    pub(super) async fn fallback_pass(&self, batch: &mut Batch<'_>) -> bool {
        let now = self.inner.clock.now_ms();
        let mut below = Vec::new();
        for i in batch.unresolved() {
            match self.inner.memory_entry(&batch.key(i).digest, false) {
                Some(found) if batch.accept_if_error(i, &found, Source::Memory, now) => {}
                _ => below.push(i),
            }
        }
        for tier in [Tier::Disk, Tier::Remote] {
            if below.is_empty() {
                return true;
            }
            let keys = batch.keys(&below);
            let (found, source) = match tier {
                Tier::Disk => (self.disk_lookup(&keys).await, Source::Disk),
                Tier::Remote => (self.remote_lookup(&keys).await, Source::Remote),
            };
            let now = self.inner.clock.now_ms();
            let mut still = Vec::new();
            for (i, found) in below.into_iter().zip(found) {
                match found {
                    Some(found) if batch.accept_if_error(i, &found, source, now) => {}
                    _ => still.push(i),
                }
            }
            below = still;
        }
        below.is_empty()
    }
}
