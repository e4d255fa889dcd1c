//! Distributed single flight: the remote tier's leases on the keys this node leads, and
//! the values of keys another node computes (see "Distributed single flight" in
//! [`crate::remote`]). Values found in the remote tier here pass the freshness rule like
//! any other: one too old is recomputed by the lease holder, or waited past.

use super::Cache;
use super::batch::Batch;
use super::flight::LeaderGuard;
use super::freshness::{FreshnessPolicy, Times, Verdict, judge};
use super::removal::Promoted;
use super::types::{Found, Source};
use crate::memory::NEVER;
use crate::remote::{Lease, RemoteEntry};

impl Cache {
    /// Splits the keys at `missing` into those this node computes and those another node
    /// holds the lease of (none without a remote tier, or under `no-cache`). A key whose
    /// value another node stored meanwhile, fresh for this call, is neither: it is served
    /// as a remote hit.
    pub(super) async fn lease(
        &self,
        batch: &mut Batch<'_>,
        guard: &LeaderGuard<'_>,
        missing: &[usize],
    ) -> (Vec<usize>, Vec<usize>, Option<Box<dyn Lease>>) {
        let Some(remote) = self.inner.remote.as_ref().filter(|_| !batch.opts.no_cache) else {
            return (missing.to_vec(), Vec::new(), None);
        };
        let digests = batch.digests(missing);
        let generations = self.inner.generations(&digests);
        let mut lease = remote.lease(&digests).await;
        let found = lease.take_found();
        let now = self.inner.clock.now_ms();
        let (mut mine, mut theirs, mut to_disk) = (Vec::new(), Vec::new(), Vec::new());
        for (((&i, &granted), value), generation) in missing
            .iter()
            .zip(lease.granted())
            .zip(found.into_iter().chain(std::iter::repeat(None)))
            .zip(generations)
        {
            let adopted = value.is_some_and(|entry| {
                self.adopt(
                    batch,
                    guard,
                    i,
                    entry,
                    Source::Remote,
                    now,
                    generation,
                    &mut to_disk,
                )
            });
            if adopted {
                continue;
            }
            if granted {
                mine.push(i);
            } else {
                theirs.push(i);
            }
        }
        self.store_promoted(to_disk).await;
        (mine, theirs, Some(lease))
    }

    /// Takes a value another node stored if this call may serve it: promoted to memory (if
    /// its stripe did not move since `generation`) and queued for disk, handed to this
    /// node's waiters. Whether it was taken.
    #[expect(
        clippy::too_many_arguments,
        reason = "the steps of one adoption; a struct would only rename them"
    )]
    fn adopt(
        &self,
        batch: &mut Batch<'_>,
        guard: &LeaderGuard<'_>,
        i: usize,
        entry: RemoteEntry,
        source: Source,
        now: u64,
        generation: u64,
        to_disk: &mut Vec<Promoted>,
    ) -> bool {
        let key = batch.key(i);
        let found = Found {
            value: entry.value.clone(),
            created_ms: entry.created_ms,
            expires_ms: entry.expires_ms.unwrap_or(NEVER),
            computed: source == Source::Coalesced,
            store: true,
        };
        if !batch.accept(i, &found, source, now) {
            return false;
        }
        self.inner
            .promote_remote(&key.digest, &entry, generation, to_disk);
        guard.send(&key.digest, Ok(found));
        true
    }

    /// Waits for the values of keys another node is computing; returns the keys that did
    /// not come (to compute here). A value counts only if it is fresh for this call (an
    /// older one still stored while the other node recomputes it is waited past). Values
    /// that came go to memory, disk and this node's waiters.
    pub(super) async fn await_remote(
        &self,
        batch: &mut Batch<'_>,
        guard: &LeaderGuard<'_>,
        theirs: &[usize],
    ) -> Vec<usize> {
        let Some(remote) = &self.inner.remote else {
            return theirs.to_vec();
        };
        let digests = batch.digests(theirs);
        let generations = self.inner.generations(&digests);
        let policies: Vec<FreshnessPolicy> =
            theirs.iter().map(|&i| batch.key(i).model.policy).collect();
        let (opts, clock) = (*batch.opts, &self.inner.clock);
        let fresh = move |n: usize, entry: &RemoteEntry| {
            judge(&policies[n], &opts, times(entry), clock.now_ms()) == Verdict::Fresh
        };
        let values = remote.wait_for(&digests, &fresh).await;
        let now = self.inner.clock.now_ms();
        let (mut empty, mut to_disk) = (Vec::new(), Vec::new());
        for ((&i, entry), generation) in theirs.iter().zip(values).zip(generations) {
            let adopted = entry.is_some_and(|entry| {
                self.adopt(
                    batch,
                    guard,
                    i,
                    entry,
                    Source::Coalesced,
                    now,
                    generation,
                    &mut to_disk,
                )
            });
            if adopted {
                self.inner.coalesced.incr();
            } else {
                empty.push(i);
            }
        }
        self.store_promoted(to_disk).await;
        empty
    }
}

/// The times of a remote entry, for the freshness rule.
fn times(entry: &RemoteEntry) -> Times {
    Times {
        created_ms: entry.created_ms,
        expires_ms: entry.expires_ms.unwrap_or(NEVER),
    }
}
