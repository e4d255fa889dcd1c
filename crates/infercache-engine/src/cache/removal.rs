//! Removals that stick: [`Cache::remove`], the same removal applied here when another node
//! removed a key, and the disk writes of promoted values, which a removal must be able to
//! fence off.
//!
//! # Why a removal cannot be undone by a lookup in flight
//!
//! A lookup that read a value from a lower tier before a removal may try to write it back
//! into a higher tier after the removal (memory from disk, memory and disk from the shared
//! tier). Two counters per key stripe stop that:
//!
//! - the stripe's *write generation* ([`Inner::promote`]): a promotion to memory is refused
//!   if any write or removal of the stripe happened since the lookup began;
//! - the stripe's *removal mark* ([`Fence`]): a promotion's disk write is refused if a
//!   removal happened since the promotion to memory, and it runs under the fence's lock,
//!   so a disk write that passed the check has finished before the removal's own disk
//!   step begins (which then tombstones what it wrote).
//!
//! A removal runs: the shared tier (after its queued writes; it tells the other nodes),
//! then under the fence the memory entry and both counters, then the disk (a tombstone,
//! whether or not the index held the key: a write-back drop may have unindexed an older
//! record that a restart would otherwise re-index), then memory and the write generation
//! once more, for a lookup that read the disk between the first step and the tombstone.
//! Under write-back the disk step is queued behind earlier writes, and the key is marked
//! as pending before anything else, so disk reads skip it until the tombstone is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use infercache_core::Digest;
use parking_lot::Mutex;

use super::write_back::WriteOp;
use super::{Cache, CacheKey, Inner, WRITE_STRIPES};
use crate::memory::{MemEntry, NEVER};
use crate::remote::{BoxFuture, LocalTiers, RemoteRemoval};

/// What [`Cache::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Some tier held the key.
    pub found: bool,
    /// Every tier took the removal. `false` only when the shared tier was unreachable:
    /// the removal is replayed there when it is back (before this node reads or writes it
    /// again), and until then another node may still read the value from it.
    pub confirmed: bool,
}

/// A value read from the shared tier and promoted to memory, on its way to disk: the
/// removal mark of its stripe when it was promoted.
pub(super) type Promoted = (Digest, MemEntry, u64);

/// The removal mark of a key stripe and the lock that orders promotions' disk writes with
/// removals (see the module docs). Taken only on the blocking pool, or for non-blocking
/// work (a queue's `try_send`).
#[derive(Debug, Default)]
pub(super) struct Fence {
    lock: Mutex<()>,
    removals: AtomicU64,
}

/// The fences, one per write stripe.
pub(super) fn fences() -> Box<[Fence]> {
    (0..WRITE_STRIPES).map(|_| Fence::default()).collect()
}

impl Cache {
    /// Removes `key` from every tier: the shared one first (which tells the other nodes),
    /// then this node's. Once it has returned, no lookup here serves the old value, not
    /// after a restart either; other nodes drop it when the shared tier's message reaches
    /// them, and a node that was away replays the removals it missed before it uses the
    /// shared tier again.
    pub async fn remove(&self, key: &CacheKey) -> Removal {
        let remote = match &self.inner.remote {
            Some(remote) => Some(remote.remove(key.digest).await),
            None => None,
        };
        let here = Arc::clone(&self.inner).remove_here(key.digest).await;
        Removal {
            found: here || remote == Some(RemoteRemoval::Removed { found: true }),
            confirmed: remote != Some(RemoteRemoval::Deferred),
        }
    }

    /// Writes values promoted from the shared tier to disk, unless a removal of their
    /// stripe happened since they were promoted.
    pub(super) async fn store_promoted(&self, entries: Vec<Promoted>) {
        let Some(disk) = &self.inner.disk else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        if let Some(wb) = &self.inner.write_back {
            for (key, entry, mark) in entries {
                let fence = self.inner.fence(&key);
                let _order = fence.lock.lock();
                if fence.removals.load(Ordering::Acquire) != mark {
                    continue;
                }
                if wb.tx.try_send(WriteOp::Put { key, entry }).is_err() {
                    wb.dropped.incr();
                    disk.tier.unindex(&key);
                }
            }
            return;
        }
        let inner = Arc::clone(&self.inner);
        disk.run(move |d| {
            for (key, e, mark) in entries {
                let fence = inner.fence(&key);
                let _order = fence.lock.lock();
                if fence.removals.load(Ordering::Acquire) != mark {
                    continue;
                }
                let expires = (e.expires_ms != NEVER).then_some(e.expires_ms);
                if let Err(err) = d.insert(key, &e.value, e.created_ms, expires) {
                    tracing::warn!(error = %err, "disk write of a promoted value failed");
                }
            }
        })
        .await;
        self.inner.charge_disk_index();
    }
}

impl Inner {
    pub(super) fn fence(&self, key: &Digest) -> &Fence {
        &self.fences[usize::from(key.0[30]) % WRITE_STRIPES]
    }

    /// Promotes a value read from the shared tier to memory (see [`Inner::promote`]) and,
    /// if promoted, queues it for disk with its stripe's removal mark.
    pub(super) fn promote_remote(
        &self,
        key: &Digest,
        entry: &crate::remote::RemoteEntry,
        generation: u64,
        to_disk: &mut Vec<Promoted>,
    ) {
        let mem = MemEntry {
            value: entry.value.clone(),
            created_ms: entry.created_ms,
            expires_ms: entry.expires_ms.unwrap_or(NEVER),
        };
        let stripe = self.stripe(key).lock();
        if *stripe != generation {
            return;
        }
        if let Some(m) = &self.memory {
            m.insert(*key, mem.clone());
        }
        // Read under the stripe lock: a removal moves the stripe before its mark, so a
        // promotion that got here read the mark from before any removal it did not see.
        let mark = self.fence(key).removals.load(Ordering::Acquire);
        drop(stripe);
        to_disk.push((*key, mem, mark));
    }

    /// Removes `key` from memory and moves its stripe's write generation; whether memory
    /// held it.
    fn drop_from_memory(&self, key: &Digest) -> bool {
        let mut generation = self.stripe(key).lock();
        let held = self.memory.as_ref().is_some_and(|m| m.remove(key));
        *generation += 1;
        held
    }

    /// The first local step of a removal: memory, the write generation, then the removal
    /// mark, under the fence. Whether memory held the key.
    fn fence_off(&self, key: &Digest) -> bool {
        let fence = self.fence(key);
        let _order = fence.lock.lock();
        let held = self.drop_from_memory(key);
        fence.removals.fetch_add(1, Ordering::AcqRel);
        held
    }

    /// Removes `key` from this node's memory and disk (see the module docs for the
    /// order); whether either held it.
    async fn remove_here(self: Arc<Self>, key: Digest) -> bool {
        let Some(disk) = &self.disk else {
            return self.fence_off(&key);
        };
        if let Some(wb) = &self.write_back {
            *self.pending_removals.entry(key).or_insert(0) += 1;
            let on_disk = disk.tier.contains(&key);
            let in_memory = self.fence_off(&key);
            if wb.tx.send(WriteOp::Remove { key }).await.is_ok() {
                return in_memory || on_disk;
            }
            // The drainer is gone (shutdown): remove directly.
            self.finish_pending_removal(&key);
        }
        let inner = Arc::clone(&self);
        disk.run(move |d| {
            let in_memory = inner.fence_off(&key);
            let on_disk = d.remove(&key).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "disk remove failed");
                false
            });
            inner.drop_from_memory(&key) || in_memory || on_disk
        })
        .await
    }
}

/// What a remote tier calls when another node removed a key.
impl LocalTiers for Inner {
    fn remove_local(&self, key: Digest) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(inner) = self.me.upgrade() {
                inner.remove_here(key).await;
            }
        })
    }

    fn holds(&self, key: &Digest) -> bool {
        self.memory
            .as_ref()
            .is_some_and(|m| m.get_quiet(key).is_some())
            || self.disk.as_ref().is_some_and(|d| d.tier.contains(key))
    }
}
