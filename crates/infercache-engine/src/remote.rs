//! A remote tier shared by many nodes (Redis, in `infercache-redis`), below disk.
//!
//! The engine knows only this trait, so network clients stay out of it. A remote tier is
//! *best effort*: every method answers, whatever the remote's state. A remote that is down,
//! slow or returning garbage reads as a miss, and writes to it are dropped (and counted by
//! the implementation); the cache keeps serving from its local tiers and computing.
//!
//! # What the cache does with it
//!
//! - **Reads.** Keys that memory and disk missed are looked up in one call
//!   ([`RemoteTier::get_many`], one round trip); hits are promoted to memory and disk.
//! - **Writes.** Computed values are written after the disk tier
//!   ([`RemoteTier::put_many`]); whether that awaits the remote (write-through) or queues
//!   (write-back) is the implementation's configuration. [`RemoteTier::flush`] drains.
//! - **Distributed single flight.** Before computing, the leader of a key on this node
//!   takes a lease on it ([`RemoteTier::lease`]). Keys leased by another node are not
//!   computed here: the cache waits for their values ([`RemoteTier::wait_for`], bounded) and
//!   computes only those whose lease vanished without a value or whose wait ran out. The
//!   lease holder stores its values and releases the leases in one step
//!   ([`Lease::release`]).
//! - **Freshness.** Every value read here (a lookup, a value found with a lease, one
//!   awaited from another node) is judged by the cache's one freshness rule
//!   (`cache/freshness.rs`) before it is served; a tier only drops expired entries.
//! - **Epochs.** [`crate::Cache::invalidate`] agrees on the new epoch with the remote
//!   ([`RemoteTier::bump_epoch`]), which tells the other nodes; the remote raises this
//!   node's epochs through the [`EpochSync`] handed to [`RemoteTier::attach`].
//! - **Removals.** [`crate::Cache::remove`] removes from the remote first
//!   ([`RemoteTier::remove`]), which tells the other nodes (they drop the key from their
//!   own tiers through [`EpochSync::remove_local`]) and keeps it in a log that a node
//!   replays before it uses the remote again. A removal the remote could not take is
//!   [`RemoteRemoval::Deferred`]: the remote replays it when it reconnects, before it
//!   serves or stores anything again.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use infercache_core::Digest;
use serde::Serialize;

use crate::epochs::{EpochTable, Scope};

/// A boxed, sendable future (what the trait's methods return, keeping it object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value as a remote tier stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The value.
    pub value: Bytes,
    /// When it was computed (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it expires (ms since the Unix epoch); `None`: the remote's default TTL.
    pub expires_ms: Option<u64>,
}

/// A remote tier. See the module docs for the contract: every method answers, failures
/// read as misses and dropped writes.
pub trait RemoteTier: Send + Sync + fmt::Debug + 'static {
    /// Called once by [`crate::Cache::open`]: the handle through which the remote raises
    /// this node's epochs when another node invalidates.
    fn attach(&self, epochs: EpochSync);

    /// Looks `keys` up in one round trip; `None` for a miss, an unreachable remote, or a
    /// value that failed its checks.
    fn get_many<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Vec<Option<RemoteEntry>>>;

    /// Stores values (awaited or queued, per the implementation's write policy).
    fn put_many(&self, entries: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'_, ()>;

    /// Removes `key` (after every write of it queued before this call) and tells the
    /// other nodes, which drop it from their own tiers.
    fn remove(&self, key: Digest) -> BoxFuture<'_, RemoteRemoval>;

    /// Waits until queued writes have been sent.
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// Agrees on a new epoch for `scope`: one more than the larger of the remote's and
    /// `local` (this node's), published to every node. `None` when the remote is
    /// unreachable; the cache then bumps locally and the remote pushes the local epochs
    /// when it reconnects.
    fn bump_epoch<'a>(&'a self, scope: &'a Scope, local: u64) -> BoxFuture<'a, Option<u64>>;

    /// Takes a lease on each of `keys` (distributed single flight). A key is granted when
    /// no other node holds its lease, or when the remote is unreachable.
    fn lease<'a>(&'a self, keys: &'a [Digest]) -> BoxFuture<'a, Box<dyn Lease>>;

    /// Waits, bounded, for the values of keys another node leased: for each key, a value
    /// that `accept(index, entry)` takes (the caller's freshness rule; a value too old
    /// for it, still stored while the other node recomputes it, is waited past). `None`
    /// for a key whose lease vanished without an accepted value, or that the bound ran
    /// out on: the caller computes those itself.
    fn wait_for<'a>(
        &'a self,
        keys: &'a [Digest],
        accept: &'a Accept<'a>,
    ) -> BoxFuture<'a, Vec<Option<RemoteEntry>>>;

    /// Whether this node's epochs are known to match the remote's (the cache reads its
    /// own tiers by it: see [`crate::LocalReads`]).
    fn epochs_in_sync(&self) -> EpochsInSync;

    /// A snapshot of the tier's counters and state.
    fn stats(&self) -> RemoteStats;
}

/// Whether a node's epochs are known to match the remote's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochsInSync {
    /// Yes: synchronised and following the remote's changes.
    Now,
    /// Not now; they last were at this time (ms since the Unix epoch).
    Since(u64),
    /// Not since this process started.
    Never,
}

/// What [`RemoteTier::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteRemoval {
    /// Removed, and the other nodes told; whether the remote held the key.
    Removed {
        /// The remote held the key.
        found: bool,
    },
    /// The remote was unreachable: the removal is kept and replayed when it reconnects,
    /// before this node reads or writes it again. Until then another node may still read
    /// the value from the remote.
    Deferred,
}

/// What [`RemoteTier::wait_for`] takes a value with: the key's index in the call, and the
/// value found.
pub type Accept<'a> = dyn Fn(usize, &RemoteEntry) -> bool + Send + Sync + 'a;

/// The leases one call of [`RemoteTier::lease`] asked for.
///
/// A lease is never left behind by a caller that gave up: dropping it (a cancelled or
/// failed computation) releases what it holds, and an implementation that cannot tell
/// whether a lease was taken (its reply came late) releases it as if it had been.
pub trait Lease: Send + fmt::Debug {
    /// Per key, in the order asked: whether this node holds its lease.
    fn granted(&self) -> &[bool];

    /// Per key, in the order asked: a value found while taking the leases (stored by
    /// another node since this node looked). Such a key is not computed. Taken once.
    fn take_found(&mut self) -> Vec<Option<RemoteEntry>>;

    /// Stores `values` (computed under these leases; keys of this call, possibly fewer
    /// of them: a value not to be stored is left out) and then releases every lease held,
    /// so that a node waiting for a key either finds its value or computes it. The
    /// returned future may be dropped: the store and the release still happen.
    fn release(self: Box<Self>, values: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'static, ()>;
}

/// The state of a remote tier's circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// The remote is called (the default).
    #[default]
    Closed,
    /// The remote is not called: lookups miss and writes are dropped.
    Open,
    /// One call at a time probes whether the remote is back.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Counters and state of a remote tier, whatever the tier is (each implementation fills
/// what applies to it and leaves the rest at zero).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteStats {
    /// What the tier is (e.g. `redis`, `redis-cluster`).
    pub kind: String,
    /// Where it is, with any password redacted.
    pub endpoint: String,
    /// The circuit breaker in front of the remote.
    pub breaker: BreakerState,
    /// Whether the tier is in use: the remote answered the last call and this node's
    /// epochs are in sync with it.
    pub connected: bool,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Values dropped because their checksum or key did not match.
    pub corrupt: u64,
    /// Values written.
    pub writes: u64,
    /// Operations that failed because the remote could not be reached or did not answer
    /// in time (what drives the breaker).
    pub errors: u64,
    /// Operations the remote answered with an error reply, by kind (e.g. `oom`,
    /// `readonly`, `moved`): that operation failed, the breaker is not affected.
    pub error_replies: BTreeMap<String, u64>,
    /// Operations skipped because the breaker was open or the epochs were not in sync.
    pub skipped: u64,
    /// Writes dropped because the write-back queue was full.
    pub writeback_dropped: u64,
    /// Writes waiting in the write-back queue.
    pub writeback_queued: u64,
    /// Leases granted to this node.
    pub leases_granted: u64,
    /// Keys found leased by another node.
    pub leases_contended: u64,
    /// Waits for another node's value that got it.
    pub lease_waits_filled: u64,
    /// Waits that ended without a value (the caller computed).
    pub lease_waits_empty: u64,
    /// Lease requests whose reply was lost or late (the keys computed here, their leases
    /// released with the values in case they were taken).
    pub lease_replies_lost: u64,
    /// Stores of computed values under a lease tried again after Redis did not answer.
    pub lease_release_retries: u64,
    /// Epoch changes received from other nodes.
    pub epoch_updates: u64,
    /// Removals that could not reach the remote and wait to be replayed.
    pub removals_pending: u64,
    /// Removals replayed once the remote was back.
    pub removals_replayed: u64,
    /// Removals made on other nodes, applied to this node's tiers.
    pub removals_received: u64,
    /// Round trips the remote answered (successfully or with an error reply).
    pub round_trips: u64,
    /// Their total time, in microseconds: with `round_trips`, the mean round-trip time.
    pub round_trip_micros: u64,
}

/// This node's own tiers (memory, disk), as a remote tier sees them: what it calls when
/// another node removed a key.
pub trait LocalTiers: Send + Sync + fmt::Debug {
    /// Removes `key` from this node's tiers (not from the remote).
    fn remove_local(&self, key: Digest) -> BoxFuture<'_, ()>;

    /// Whether memory or the disk index holds `key` now (no I/O).
    fn holds(&self, key: &Digest) -> bool;
}

/// The handle through which a remote tier reads and raises this node's epochs and applies
/// other nodes' removals. It holds the cache weakly: a no-op once the cache is gone.
#[derive(Debug, Clone)]
pub struct EpochSync {
    table: Weak<EpochTable>,
    local: Option<Weak<dyn LocalTiers>>,
}

impl EpochSync {
    /// A handle on `table`.
    pub fn new(table: Weak<EpochTable>) -> Self {
        Self { table, local: None }
    }

    /// The same handle, applying removals to `local`.
    pub fn with_local(self, local: Weak<dyn LocalTiers>) -> Self {
        Self {
            local: Some(local),
            ..self
        }
    }

    /// Removes `key` from this node's own tiers (another node removed it). A no-op once
    /// the cache is gone.
    pub async fn remove_local(&self, key: Digest) {
        if let Some(local) = self.local.as_ref().and_then(Weak::upgrade) {
            local.remove_local(key).await;
        }
    }

    /// Raises `scope`'s epoch to `value` if lower, persisting it; whether it changed. A
    /// no-op once the cache is gone.
    pub async fn raise(&self, scope: Scope, value: u64) -> bool {
        let Some(table) = self.table.upgrade() else {
            return false;
        };
        tokio::task::spawn_blocking(move || raise_persisted(&table, &scope, value))
            .await
            // Cancelled only when the runtime shuts down.
            .unwrap_or(false)
    }

    /// Whether this node's memory or disk index holds `key` (false once the cache is
    /// gone): a removal log replayed at a synchronisation skips the keys not held, rather
    /// than write a tombstone for each.
    pub fn holds(&self, key: &Digest) -> bool {
        self.local
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|local| local.holds(key))
    }

    /// Whether `other` is a handle on the same node's epoch table.
    pub fn same_node(&self, other: &EpochSync) -> bool {
        Weak::ptr_eq(&self.table, &other.table)
    }

    /// The epoch of `scope` on this node (0 once the cache is gone).
    pub fn get(&self, scope: &Scope) -> u64 {
        self.table.upgrade().map_or(0, |table| table.get(scope))
    }

    /// Every scope with a non-zero epoch on this node.
    pub fn entries(&self) -> Vec<(Scope, u64)> {
        self.table
            .upgrade()
            .map(|table| table.entries())
            .unwrap_or_default()
    }
}

/// Raises `scope` in `table`; a failure to persist is logged (the raise applies in memory).
fn raise_persisted(table: &Arc<EpochTable>, scope: &Scope, value: u64) -> bool {
    table.raise(scope, value).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "persisting an epoch from the remote tier failed");
        true
    })
}
