//! The tiers below the single-flight logic: memory hits and writes under the stripe locks,
//! disk and remote lookups with their promotion to the tiers above, and stores per the
//! write policy.

use std::sync::Arc;

use infercache_core::clock::duration_ms;
use infercache_core::{Digest, SharedClock};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::freshness::Times;
use super::types::{CacheKey, Found, RequestOptions};
use super::write_back::WriteOp;
use super::{Cache, Inner, WRITE_STRIPES};
use crate::disk::{DiskConfig, DiskEntry, DiskTier};
use crate::epochs::EpochTable;
use crate::error::EngineError;
use crate::memory::{MemEntry, MemoryTier, NEVER};
use crate::remote::{Lease, RemoteEntry};

/// The disk tier, behind a semaphore: its operations run on tokio's blocking pool, at most
/// `disk_io_concurrency` at once, never on the async workers.
#[derive(Debug)]
pub(super) struct DiskIo {
    pub(super) tier: Arc<DiskTier>,
    permits: Arc<Semaphore>,
}

impl DiskIo {
    /// Opens the disk tier and the epoch table persisted beside it (both block).
    pub(super) fn open(
        config: DiskConfig,
        cache_version: u64,
        concurrency: usize,
        clock: &SharedClock,
    ) -> Result<(Self, EpochTable), EngineError> {
        let dir = config.dir.clone();
        let tier = DiskTier::open(config, Arc::clone(clock))?;
        let epochs = EpochTable::open(&dir, cache_version)?;
        let io = Self {
            tier: Arc::new(tier),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        };
        Ok((io, epochs))
    }

    /// Runs `f` on the blocking pool, at most `disk_io_concurrency` at once.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&DiskTier) -> R + Send + 'static,
    ) -> R {
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

/// A tier below memory, in lookup order.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tier {
    Disk,
    Remote,
}

impl Cache {
    /// Looks `keys` up on disk in one blocking task. Entries not expired are promoted to
    /// memory with their times (each caller judges their freshness for itself).
    pub(super) async fn disk_lookup(&self, keys: &[CacheKey]) -> Vec<Option<Found>> {
        let Some(disk) = &self.inner.disk else {
            return vec![None; keys.len()];
        };
        if keys.is_empty() {
            return Vec::new();
        }
        if !self.inner.local_reads_allowed() {
            return vec![None; keys.len()];
        }
        let digests: Vec<Digest> = keys.iter().map(|k| k.digest).collect();
        // Generations before the pending removals: a removal marks its key pending before
        // it moves the stripe, so a read that sees the moved stripe sees the mark too.
        let generations = self.inner.generations(&digests);
        // A key pending removal is not read; nor is one the disk's index does not hold
        // (counted as a miss, as a read would): a lookup none of whose keys is on disk,
        // as in a bulk job's first run, then costs no blocking task.
        let skip: Vec<bool> = digests
            .iter()
            .map(|d| self.inner.pending_removals.contains_key(d) || !disk.tier.indexed_or_miss(d))
            .collect();
        if skip.iter().all(|s| *s) {
            return vec![None; keys.len()];
        }
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
                let entry = entry?;
                let times = Times {
                    created_ms: entry.created_ms,
                    expires_ms: entry.expires_ms.unwrap_or(NEVER),
                };
                if times.expires_ms <= now {
                    return None;
                }
                self.inner.promote(
                    &key.digest,
                    MemEntry {
                        value: entry.value.clone(),
                        created_ms: times.created_ms,
                        expires_ms: times.expires_ms,
                    },
                    Some(generation),
                );
                Some(Found::hit(entry.value, times))
            })
            .collect()
    }

    /// Looks `keys` up in the remote tier in one call. Entries not expired are promoted
    /// to memory and disk with their times.
    pub(super) async fn remote_lookup(&self, keys: &[CacheKey]) -> Vec<Option<Found>> {
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
                let entry = entry?;
                let times = Times {
                    created_ms: entry.created_ms,
                    expires_ms: entry.expires_ms.unwrap_or(NEVER),
                };
                if times.expires_ms <= now {
                    return None;
                }
                self.inner
                    .promote_remote(&key.digest, &entry, generation, &mut to_disk);
                Some(Found::hit(entry.value, times))
            })
            .collect();
        self.store_promoted(to_disk).await;
        out
    }

    /// Stores computed values in every tier.
    pub(super) async fn store(&self, found: Vec<(CacheKey, Found)>) {
        self.inner.store_memory(&found);
        self.store_below_memory(found, None).await;
    }

    /// Writes to the tiers below memory, per the write policy: disk, then the remote tier
    /// (through `lease` when the values were computed under one: it stores them, then
    /// lets the keys go).
    pub(super) async fn store_below_memory(
        &self,
        found: Vec<(CacheKey, Found)>,
        lease: Option<Box<dyn Lease>>,
    ) {
        let entries: Vec<(Digest, MemEntry)> = found
            .into_iter()
            .map(|(k, f)| {
                let entry = MemEntry {
                    value: f.value,
                    created_ms: f.created_ms,
                    expires_ms: f.expires_ms,
                };
                (k.digest, entry)
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
        match (lease, &self.inner.remote) {
            (Some(lease), _) => lease.release(remote).await,
            (None, Some(r)) if !remote.is_empty() => r.put_many(remote).await,
            (None, _) => {}
        }
    }

    /// Writes to the disk tier, per the write policy.
    pub(super) async fn store_disk(&self, entries: Vec<(Digest, MemEntry)>) {
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
                let entries: Vec<(Digest, &[u8], u64, Option<u64>)> = entries
                    .iter()
                    .map(|(k, e)| {
                        let expires = (e.expires_ms != NEVER).then_some(e.expires_ms);
                        (*k, &e.value[..], e.created_ms, expires)
                    })
                    .collect();
                d.insert_many(&entries)
            })
            .await;
        if let Err(e) = failed {
            tracing::warn!(error = %e, "disk write failed; the value stays in memory only");
        }
        self.inner.charge_disk_index();
    }

    /// Clears the disk tier (behind every queued write under write-back, then flushed).
    pub(super) async fn clear_disk(&self) {
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
        self.inner.charge_disk_index();
    }
}

impl Inner {
    /// Charges the disk tier's in-memory index against the memory tier's capacity: the
    /// memory tier gives up what the index holds, so that `--memory` bounds both. The
    /// index grows with the disk tier's entries (about 270 bytes each), which a large
    /// `disk_size` would otherwise leave unbounded. Called after every change of the disk
    /// tier's contents; the memory tier acts only when the figure crosses a step.
    pub(super) fn charge_disk_index(&self) {
        let (Some(memory), Some(disk)) = (&self.memory, &self.disk) else {
            return;
        };
        let index = disk.tier.index_bytes();
        let capacity = memory.config().capacity;
        if index >= capacity && memory.reserved() < capacity {
            tracing::warn!(
                index_bytes = index,
                memory_capacity = capacity,
                "the disk tier's index takes the whole memory budget, so the memory tier holds \
                 nothing: raise --memory or lower --disk-size"
            );
        }
        memory.reserve(index);
    }

    /// The memory tier's entry for `key`, not expired (counted by the tier when
    /// `count_tier`); the caller judges its freshness.
    pub(super) fn memory_entry(&self, key: &Digest, count_tier: bool) -> Option<Found> {
        let memory = self.memory.as_ref()?;
        if !self.local_reads_allowed() {
            return None;
        }
        let entry = if count_tier {
            memory.get(key)
        } else {
            memory.get_quiet(key)
        }?;
        let times = Times {
            created_ms: entry.created_ms,
            expires_ms: entry.expires_ms,
        };
        Some(Found::hit(entry.value, times))
    }

    /// The absolute expiry of a value of `key` created at `created_ms`: the request's
    /// `ttl`, else the model's `ttl` and stale windows, else the cache's `default_ttl`.
    pub(super) fn expiry(&self, key: &CacheKey, created_ms: u64, opts: &RequestOptions) -> u64 {
        opts.ttl
            .or_else(|| key.model.policy.keep_for())
            .or(self.default_ttl)
            .map_or(NEVER, |ttl| created_ms.saturating_add(duration_ms(ttl)))
    }

    pub(super) fn store_memory(&self, found: &[(CacheKey, Found)]) {
        for (k, f) in found {
            k.model.counters.inserts.incr();
            let entry = MemEntry {
                value: f.value.clone(),
                created_ms: f.created_ms,
                expires_ms: f.expires_ms,
            };
            self.with_stripe(&k.digest, |m| m.insert(k.digest, entry));
        }
    }

    /// Promotes a value read from a lower tier to memory: only if no write or removal of
    /// its stripe happened since `generation` was read (`None`: now). Whether it did.
    pub(super) fn promote(&self, key: &Digest, entry: MemEntry, generation: Option<u64>) -> bool {
        let stripe = self.stripe(key).lock();
        if generation.is_some_and(|g| g != *stripe) {
            return false;
        }
        if let Some(m) = &self.memory {
            m.insert(*key, entry);
        }
        true
    }

    /// The write generation of each key's stripe now (see [`Inner::promote`]).
    pub(super) fn generations(&self, keys: &[Digest]) -> Vec<u64> {
        keys.iter().map(|d| *self.stripe(d).lock()).collect()
    }

    pub(super) fn stripe(&self, key: &Digest) -> &Mutex<u64> {
        &self.stripes[usize::from(key.0[30]) % WRITE_STRIPES]
    }

    /// Runs a memory write for `key` under its stripe lock and bumps the stripe.
    pub(super) fn with_stripe<R>(
        &self,
        key: &Digest,
        write: impl FnOnce(&MemoryTier) -> R,
    ) -> Option<R> {
        let memory = self.memory.as_ref()?;
        let mut generation = self.stripe(key).lock();
        let r = write(memory);
        *generation += 1;
        Some(r)
    }
}
