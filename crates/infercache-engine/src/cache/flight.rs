//! Single flight on one node: the in-flight table's entries and the guard of the keys one
//! caller leads (see the concurrency contract in [`crate::cache`]).

use infercache_core::Digest;
use tokio::sync::watch;

use super::Inner;
use super::types::{CacheKey, Found};
use crate::error::ComputeError;

/// What a flight's waiters receive: nothing yet, the value, or the shared error.
pub(super) type FlightResult = Option<Result<Found, ComputeError>>;

/// One key being looked up below memory (and computed on a miss) by its leader.
#[derive(Debug)]
pub(super) struct Flight {
    /// Tells this flight from a later one of the same key.
    pub(super) id: u64,
    pub(super) tx: watch::Sender<FlightResult>,
}

/// The flights one caller leads. Publishing a result hands the key back; dropping the
/// guard (a cancelled caller) removes unpublished flights so their waiters take over.
pub(super) struct LeaderGuard<'a> {
    pub(super) inner: &'a Inner,
    pub(super) flights: Vec<(Digest, u64)>,
}

impl LeaderGuard<'_> {
    /// Sends the result to the waiters but keeps leading the key until the guard drops.
    pub(super) fn send(&self, digest: &Digest, result: Result<Found, ComputeError>) {
        if let Some(flight) = self.inner.inflight.get(digest) {
            flight.tx.send_replace(Some(result));
        }
    }

    /// Sends the result and hands the key back.
    pub(super) fn publish(&mut self, digest: &Digest, result: Result<Found, ComputeError>) {
        let Some(pos) = self.flights.iter().position(|(d, _)| d == digest) else {
            return;
        };
        let (digest, id) = self.flights.swap_remove(pos);
        if let Some((_, flight)) = self.inner.inflight.remove_if(&digest, |_, f| f.id == id) {
            flight.tx.send_replace(Some(result));
        }
    }

    /// Hands `err` to the waiters of `keys` and the keys back, counting the failures.
    pub(super) fn fail(&mut self, err: &ComputeError, keys: &[CacheKey]) {
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
