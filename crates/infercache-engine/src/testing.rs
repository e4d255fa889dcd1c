//! Test support (feature `test-support`): [`MemoryRemote`], an in-process [`RemoteTier`],
//! so the engine's lease and epoch logic can be tested without a Redis server. The Redis
//! tier's own tests (`infercache-redis`) run the same logic against real servers.
//!
//! One [`MemoryRemote`] is one node's handle; [`MemoryRemote::node`] gives another node's
//! handle on the same shared store, so several caches stand for several nodes. A node can
//! be cut off ([`MemoryRemote::set_reachable`]): it then misses, drops writes, is granted
//! every lease and bumps epochs locally, as a node with Redis down does; when it is
//! reachable again it replays its bumps and merges its epochs, as the Redis tier does on
//! reconnecting.
//!
//! Where it is simpler than Redis, and why that is enough for the engine's tests:
//! invalidations reach the other nodes before [`RemoteTier::bump_epoch`] returns (Redis
//! publishes them; the nodes apply them a moment later), and a lease is held until its
//! holder releases or drops it (the Redis tier renews it while held and lets it expire
//! when the holder dies, which a dropped lease stands for).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use infercache_core::stats::Counter;
use infercache_core::{Digest, SharedClock};
use parking_lot::Mutex;

use crate::epochs::Scope;
use crate::remote::{
    Accept, BoxFuture, EpochSync, EpochsInSync, Lease, RemoteEntry, RemoteRemoval, RemoteStats,
    RemoteTier,
};

/// How often [`RemoteTier::wait_for`] looks again.
const WAIT_POLL: Duration = Duration::from_millis(1);

/// What every node's handle shares: the values, the leases and the epochs.
#[derive(Debug, Default)]
struct Store {
    values: Mutex<HashMap<Digest, RemoteEntry>>,
    /// Per leased key, the token of the lease holding it.
    leases: Mutex<HashMap<Digest, u64>>,
    epochs: Mutex<HashMap<Scope, u64>>,
    /// Every attached node, to publish epoch changes to.
    nodes: Mutex<Vec<EpochSync>>,
    next_token: AtomicU64,
}

impl Store {
    /// Raises `scope` to at least `value` in the store; the value it holds now.
    fn merge(&self, scope: &Scope, value: u64) -> u64 {
        let mut epochs = self.epochs.lock();
        let cur = epochs.entry(scope.clone()).or_insert(0);
        *cur = (*cur).max(value);
        *cur
    }

    /// Tells every attached node that `scope` is at `value`.
    async fn publish(&self, scope: &Scope, value: u64) {
        let nodes = self.nodes.lock().clone();
        for node in nodes {
            node.raise(scope.clone(), value).await;
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: Counter,
    misses: Counter,
    /// Shared with this node's leases, which write on release.
    writes: Arc<Counter>,
    skipped: Counter,
    leases_granted: Counter,
    leases_contended: Counter,
    lease_waits_filled: Counter,
    lease_waits_empty: Counter,
}

/// One node's handle on an in-process shared tier. See the module docs.
#[derive(Debug)]
pub struct MemoryRemote {
    store: Arc<Store>,
    clock: SharedClock,
    lease_wait: Duration,
    /// Shared with this node's leases.
    reachable: Arc<AtomicBool>,
    /// When it was last cut off (ms; 0: never).
    cut_off_at: AtomicU64,
    /// Scopes bumped while cut off: bumped in the store when reachable again.
    pending_bumps: Mutex<Vec<Scope>>,
    /// Keys removed while cut off: removed when reachable again.
    pending_removals: Mutex<Vec<Digest>>,
    epochs: Mutex<Option<EpochSync>>,
    counters: Counters,
}

impl MemoryRemote {
    /// A new, empty shared tier, and the first node's handle on it. `lease_wait` bounds
    /// [`RemoteTier::wait_for`].
    pub fn new(clock: SharedClock, lease_wait: Duration) -> Arc<Self> {
        Arc::new(Self::on(Arc::default(), clock, lease_wait))
    }

    fn on(store: Arc<Store>, clock: SharedClock, lease_wait: Duration) -> Self {
        Self {
            store,
            clock,
            lease_wait,
            reachable: Arc::new(AtomicBool::new(true)),
            cut_off_at: AtomicU64::new(0),
            pending_bumps: Mutex::new(Vec::new()),
            pending_removals: Mutex::new(Vec::new()),
            epochs: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Another node's handle on the same shared tier.
    pub fn node(&self) -> Arc<Self> {
        Arc::new(Self::on(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            self.lease_wait,
        ))
    }

    /// Cuts this node off (`false`) or reconnects it (`true`). Reconnecting replays the
    /// bumps made while cut off, then merges this node's epochs with the store's both
    /// ways, before it returns.
    pub async fn set_reachable(&self, reachable: bool) {
        if reachable && !self.reachable.load(Ordering::Acquire) {
            let pending = std::mem::take(&mut *self.pending_removals.lock());
            for key in pending {
                self.remove_everywhere(key).await;
            }
            self.sync_epochs().await;
        }
        if !reachable && self.reachable() {
            self.cut_off_at
                .store(self.clock.now_ms().max(1), Ordering::Release);
        }
        self.reachable.store(reachable, Ordering::Release);
    }

    /// Whether a value is stored under `key` (expired or not).
    pub fn contains(&self, key: &Digest) -> bool {
        self.store.values.lock().contains_key(key)
    }

    /// Whether `key` is leased by some node.
    pub fn is_leased(&self, key: &Digest) -> bool {
        self.store.leases.lock().contains_key(key)
    }

    fn handle(&self) -> WriteHandle {
        WriteHandle {
            reachable: Arc::clone(&self.reachable),
            writes: Arc::clone(&self.counters.writes),
        }
    }

    fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// Replays the bumps made while cut off, then merges this node's epochs with the
    /// store's both ways.
    async fn sync_epochs(&self) {
        let Some(local) = self.epochs.lock().clone() else {
            return;
        };
        let pending = std::mem::take(&mut *self.pending_bumps.lock());
        for scope in pending {
            let agreed = self.store.merge(&scope, local.get(&scope) + 1);
            self.store.publish(&scope, agreed).await;
        }
        for (scope, value) in local.entries() {
            let agreed = self.store.merge(&scope, value);
            self.store.publish(&scope, agreed).await;
        }
        let all: Vec<(Scope, u64)> = self
            .store
            .epochs
            .lock()
            .iter()
            .map(|(s, v)| (s.clone(), *v))
            .collect();
        for (scope, value) in all {
            local.raise(scope, value).await;
        }
    }

    /// Removes `key` from the store and from every other node's tiers; whether the store
    /// held it.
    async fn remove_everywhere(&self, key: Digest) -> bool {
        let found = self.store.values.lock().remove(&key).is_some();
        let me = self.epochs.lock().clone();
        let nodes = self.store.nodes.lock().clone();
        for node in nodes {
            if me.as_ref().is_none_or(|me| !me.same_node(&node)) {
                node.remove_local(key).await;
            }
        }
        found
    }

    /// The stored value of `key`, unless it expired.
    fn live(&self, key: &Digest) -> Option<RemoteEntry> {
        let now = self.clock.now_ms();
        self.store
            .values
            .lock()
            .get(key)
            .filter(|e| e.expires_ms.is_none_or(|at| at > now))
            .cloned()
    }
}

impl RemoteTier for MemoryRemote {
    fn attach(&self, epochs: EpochSync) {
        self.store.nodes.lock().push(epochs.clone());
        *self.epochs.lock() = Some(epochs);
    }

    fn get_many<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(async move {
            if !self.reachable() {
                self.counters.skipped.incr();
                return vec![None; keys.len()];
            }
            keys.iter()
                .map(|k| {
                    let found = self.live(k);
                    match found {
                        Some(_) => self.counters.hits.incr(),
                        None => self.counters.misses.incr(),
                    }
                    found
                })
                .collect()
        })
    }

    fn put_many(&self, entries: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.reachable() {
                self.counters.skipped.incr();
                return;
            }
            let mut values = self.store.values.lock();
            for (k, e) in entries {
                self.counters.writes.incr();
                values.insert(k, e);
            }
        })
    }

    fn remove(&self, key: Digest) -> BoxFuture<'_, RemoteRemoval> {
        Box::pin(async move {
            if !self.reachable() {
                self.pending_removals.lock().push(key);
                return RemoteRemoval::Deferred;
            }
            RemoteRemoval::Removed {
                found: self.remove_everywhere(key).await,
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn bump_epoch<'a>(&'a self, scope: &'a Scope, local: u64) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move {
            if !self.reachable() {
                self.pending_bumps.lock().push(scope.clone());
                return None;
            }
            let agreed = {
                let mut epochs = self.store.epochs.lock();
                let cur = epochs.entry(scope.clone()).or_insert(0);
                *cur = (*cur).max(local) + 1;
                *cur
            };
            self.store.publish(scope, agreed).await;
            Some(agreed)
        })
    }

    fn lease<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Box<dyn Lease>> {
        Box::pin(async move {
            let token = self.store.next_token.fetch_add(1, Ordering::Relaxed);
            if !self.reachable() {
                // Like an unreachable Redis: every key granted, nothing coordinated.
                return Box::new(MemoryLease {
                    store: Arc::clone(&self.store),
                    writes: None,
                    token,
                    granted: vec![true; keys.len()],
                    found: vec![None; keys.len()],
                    held: Vec::new(),
                }) as Box<dyn Lease>;
            }
            let mut granted = Vec::with_capacity(keys.len());
            let mut held = Vec::new();
            {
                let mut leases = self.store.leases.lock();
                for k in keys {
                    let free = !leases.contains_key(k);
                    if free {
                        leases.insert(*k, token);
                        held.push(*k);
                    }
                    granted.push(free);
                }
            }
            self.counters.leases_granted.add(held.len() as u64);
            self.counters
                .leases_contended
                .add((keys.len() - held.len()) as u64);
            let found = keys.iter().map(|k| self.live(k)).collect();
            Box::new(MemoryLease {
                store: Arc::clone(&self.store),
                writes: Some(self.handle()),
                token,
                granted,
                found,
                held,
            }) as Box<dyn Lease>
        })
    }

    fn wait_for<'a>(
        &'a self,
        keys: &'a [Digest],
        accept: &'a Accept<'a>,
    ) -> BoxFuture<'a, Vec<Option<RemoteEntry>>> {
        Box::pin(async move {
            let mut out = vec![None; keys.len()];
            let mut pending: Vec<usize> = (0..keys.len()).collect();
            let deadline = tokio::time::Instant::now() + self.lease_wait;
            while !pending.is_empty() && self.reachable() {
                // The lease before the value, as the Redis tier reads them: a holder
                // stores, then releases.
                pending.retain(|&i| {
                    let leased = self.is_leased(&keys[i]);
                    out[i] = self.live(&keys[i]).filter(|e| accept(i, e));
                    out[i].is_none() && leased
                });
                if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
            let filled = out.iter().filter(|v| v.is_some()).count() as u64;
            self.counters.lease_waits_filled.add(filled);
            self.counters
                .lease_waits_empty
                .add(keys.len() as u64 - filled);
            out
        })
    }

    fn epochs_in_sync(&self) -> EpochsInSync {
        // A node's handle starts in sync (the store is in-process), so a cut-off one was
        // in sync when it was cut off.
        if self.reachable() {
            EpochsInSync::Now
        } else {
            EpochsInSync::Since(self.cut_off_at.load(Ordering::Acquire))
        }
    }

    fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        RemoteStats {
            kind: "memory".into(),
            endpoint: "in-process".into(),
            connected: self.reachable(),
            hits: c.hits.get(),
            misses: c.misses.get(),
            writes: c.writes.get(),
            skipped: c.skipped.get(),
            leases_granted: c.leases_granted.get(),
            leases_contended: c.leases_contended.get(),
            lease_waits_filled: c.lease_waits_filled.get(),
            lease_waits_empty: c.lease_waits_empty.get(),
            removals_pending: self.pending_removals.lock().len() as u64,
            ..RemoteStats::default()
        }
    }
}

/// What a lease needs of its node to write on release.
#[derive(Debug)]
struct WriteHandle {
    reachable: Arc<AtomicBool>,
    writes: Arc<Counter>,
}

/// The leases of one [`RemoteTier::lease`] call on a [`MemoryRemote`].
#[derive(Debug)]
struct MemoryLease {
    store: Arc<Store>,
    /// Where values are written on release; `None` when the node was cut off.
    writes: Option<WriteHandle>,
    token: u64,
    granted: Vec<bool>,
    found: Vec<Option<RemoteEntry>>,
    held: Vec<Digest>,
}

impl MemoryLease {
    fn release_held(&mut self) {
        let mut leases = self.store.leases.lock();
        for k in self.held.drain(..) {
            if leases.get(&k) == Some(&self.token) {
                leases.remove(&k);
            }
        }
    }
}

impl Lease for MemoryLease {
    fn granted(&self) -> &[bool] {
        &self.granted
    }

    fn take_found(&mut self) -> Vec<Option<RemoteEntry>> {
        std::mem::take(&mut self.found)
    }

    fn release(mut self: Box<Self>, values: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'static, ()> {
        if let Some(w) = &self.writes
            && w.reachable.load(Ordering::Acquire)
        {
            let mut stored = self.store.values.lock();
            for (k, e) in values {
                w.writes.incr();
                stored.insert(k, e);
            }
        }
        self.release_held();
        Box::pin(async {})
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.release_held();
    }
}

/// Directories whose disk tier fails every segment read and write with `EIO`, each with
/// the number of [`DiskFault`]s holding it.
static DISK_FAULTS: std::sync::LazyLock<Mutex<Vec<std::path::PathBuf>>> =
    std::sync::LazyLock::new(Mutex::default);

/// Whether any [`DiskFault`] is held (a read of the list costs a lock; this does not).
static ANY_DISK_FAULT: AtomicBool = AtomicBool::new(false);

/// While held, every read and write of a segment file of the disk tier in `dir` fails
/// with `EIO`, as on a failing device: the seam on the tier's file layer
/// (`disk/health.rs`) for machines where no failing device can be made (no
/// device-mapper `error` target). Dropping it makes the disk answer again.
#[derive(Debug)]
pub struct DiskFault {
    dir: std::path::PathBuf,
}

impl DiskFault {
    /// Makes the disk tier in `dir` fail until the returned guard drops.
    pub fn eio(dir: impl Into<std::path::PathBuf>) -> Self {
        let dir = dir.into();
        let mut faults = DISK_FAULTS.lock();
        faults.push(dir.clone());
        ANY_DISK_FAULT.store(true, Ordering::Release);
        Self { dir }
    }
}

impl Drop for DiskFault {
    fn drop(&mut self) {
        let mut faults = DISK_FAULTS.lock();
        if let Some(i) = faults.iter().position(|d| *d == self.dir) {
            faults.swap_remove(i);
        }
        ANY_DISK_FAULT.store(!faults.is_empty(), Ordering::Release);
    }
}

/// Whether a [`DiskFault`] makes the disk tier in `dir` fail.
pub(crate) fn disk_fault(dir: &std::path::Path) -> bool {
    ANY_DISK_FAULT.load(Ordering::Acquire) && DISK_FAULTS.lock().iter().any(|d| d == dir)
}
