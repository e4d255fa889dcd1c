//! Distributed single flight: the remote tier's leases on the keys this node leads, and
//! the values of keys another node computes (see "Distributed single flight" in
//! [`crate::remote`]).

use super::Cache;
use super::batch::Batch;
use super::flight::LeaderGuard;
use super::removal::Promoted;
use super::types::{CacheKey, Fetched, Found, Source};
use crate::remote::{Lease, RemoteEntry};

impl Cache {
    /// Splits the keys at `missing` into those this node computes and those another node
    /// holds the lease of (none without a remote tier, or under `no-cache`). A key whose
    /// value another node stored meanwhile is neither: it is served as a remote hit.
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
        let (mut mine, mut theirs, mut to_disk) = (Vec::new(), Vec::new(), Vec::new());
        for (((&i, &granted), value), generation) in missing
            .iter()
            .zip(lease.granted())
            .zip(found.into_iter().chain(std::iter::repeat(None)))
            .zip(generations)
        {
            match value {
                Some(entry) => {
                    let key = batch.key(i);
                    key.model.counters.remote_hits.incr();
                    let fetched =
                        self.adopt(guard, key, entry, Source::Remote, generation, &mut to_disk);
                    batch.resolve(i, fetched);
                }
                None if granted => mine.push(i),
                None => theirs.push(i),
            }
        }
        self.store_promoted(to_disk).await;
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
        to_disk: &mut Vec<Promoted>,
    ) -> Fetched {
        self.inner
            .promote_remote(&key.digest, &entry, generation, to_disk);
        let found = Found {
            value: entry.value,
            created_ms: entry.created_ms,
            computed: source == Source::Coalesced,
        };
        let fetched = found.fetched(source);
        guard.send(&key.digest, Ok(found));
        fetched
    }

    /// Waits for the values of keys another node is computing; returns the keys that did
    /// not come (to compute here). Values that came go to memory, disk and this node's
    /// waiters.
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
        let values = remote.wait_for(&digests).await;
        let (mut empty, mut to_disk) = (Vec::new(), Vec::new());
        for ((&i, entry), generation) in theirs.iter().zip(values).zip(generations) {
            let Some(entry) = entry else {
                empty.push(i);
                continue;
            };
            let key = batch.key(i);
            self.inner.coalesced.incr();
            key.model.counters.coalesced.incr();
            let fetched = self.adopt(
                guard,
                key,
                entry,
                Source::Coalesced,
                generation,
                &mut to_disk,
            );
            batch.resolve(i, fetched);
        }
        self.store_promoted(to_disk).await;
        empty
    }
}
