//! Replayed traces against a reference model of each policy: the store must evict exactly
//! the blobs, in exactly the order, that the model does, and never exceed its cap.

use std::collections::VecDeque;
use std::time::Duration;

use infercache_artifact::{Digest, Policy};
use infercache_core::ManualClock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{content, store_with};

/// The reference: a recency list for `lru`, an insertion queue for `fifo` and `time`, and
/// a scan for the largest under `size`, written from the policies' definitions alone.
struct Model {
    policy: Policy,
    cap: u64,
    low: u64,
    /// (id, size, inserted_ms), in insertion order.
    queue: VecDeque<(u64, u64, u64)>,
    /// ids, least recently used first.
    recency: VecDeque<u64>,
}

impl Model {
    fn used(&self) -> u64 {
        self.queue.iter().map(|e| e.1).sum()
    }

    fn contains(&self, id: u64) -> bool {
        self.queue.iter().any(|e| e.0 == id)
    }

    fn remove(&mut self, id: u64) -> (u64, u64) {
        let pos = self.queue.iter().position(|e| e.0 == id).unwrap();
        let (_, size, _) = self.queue.remove(pos).unwrap();
        self.recency.retain(|&r| r != id);
        (id, size)
    }

    /// `true` if `id` is held and its `time` policy has expired it: it is no longer
    /// served, and inserting its bytes again gives it a new life.
    fn expired(&self, id: u64, now: u64) -> bool {
        let Policy::Time { max_age } = self.policy else {
            return false;
        };
        let max = max_age.as_millis() as u64;
        self.queue.iter().any(|e| e.0 == id && now - e.2 >= max)
    }

    fn access(&mut self, id: u64) {
        if self.contains(id) {
            self.recency.retain(|&r| r != id);
            self.recency.push_back(id);
        }
    }

    /// The victim the policy picks next.
    fn victim(&self) -> u64 {
        match self.policy {
            Policy::Lru => self.recency[0],
            Policy::Fifo | Policy::Time { .. } => self.queue[0].0,
            Policy::Size => {
                let mut best = self.queue[0];
                for &e in &self.queue {
                    // Strictly larger wins; on a tie the earlier insertion stays.
                    if e.1 > best.1 {
                        best = e;
                    }
                }
                best.0
            }
        }
    }

    /// Inserts; returns the evicted ids in order.
    fn insert(&mut self, id: u64, size: u64, now: u64) -> Vec<u64> {
        if self.expired(id, now) {
            // Replaced in place, not reported as evicted.
            self.remove(id);
        }
        if self.contains(id) {
            self.access(id);
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Policy::Time { max_age } = self.policy {
            let max = max_age.as_millis() as u64;
            let expired: Vec<u64> = self
                .queue
                .iter()
                .filter(|e| now - e.2 >= max)
                .map(|e| e.0)
                .collect();
            for id in expired {
                self.remove(id);
                out.push(id);
            }
        }
        if self.used() + size > self.cap {
            while self.used() + size > self.low && !self.queue.is_empty() {
                let v = self.victim();
                self.remove(v);
                out.push(v);
            }
        }
        self.queue.push_back((id, size, now));
        self.recency.push_back(id);
        out
    }
}

fn replay(policy: Policy, seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let cap = 64 << 10;
    let threshold = 0.75;
    let store = store_with(dir.path(), cap, policy, threshold, &clock);
    let mut model = Model {
        policy,
        cap,
        low: (cap as f64 * threshold) as u64,
        queue: VecDeque::new(),
        recency: VecDeque::new(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut digest_of = std::collections::HashMap::new();
    let mut id_of = std::collections::HashMap::new();
    let mut evictions = 0;
    for op in 0..ops {
        clock.advance(Duration::from_millis(1));
        let now = 1_000 + op as u64 + 1;
        let id = rng.random_range(0..60u64);
        // Sizes from a small set, so that the size policy meets ties.
        let size = [512usize, 1024, 4096, 8192, 12_000][(id % 5) as usize];
        if rng.random_bool(0.4) && model.contains(id) {
            let blob = store.open_blob(&digest_of[&id]).unwrap();
            if model.expired(id, now) {
                assert!(blob.is_none(), "{policy}: op {op}: {id} expired but served");
                continue;
            }
            assert!(blob.is_some(), "{policy}: op {op}: {id} should be present");
            model.access(id);
            continue;
        }
        let bytes = content(id, size);
        let inserted = store.insert_bytes("c", &bytes, None).unwrap();
        digest_of.insert(id, inserted.digest);
        id_of.insert(inserted.digest, id);
        let got: Vec<u64> = inserted.evicted.iter().map(|e| id_of[&e.digest]).collect();
        let want = model.insert(id, size as u64, now);
        assert_eq!(got, want, "{policy}: op {op}: eviction sequence");
        evictions += got.len();
        let used = store.usage().unwrap()["c"].used;
        assert_eq!(used, model.used(), "{policy}: op {op}: usage");
        assert!(used <= cap, "{policy}: op {op}: {used} > cap {cap}");
    }
    assert!(
        evictions > 20,
        "{policy}: the trace evicted only {evictions} blobs"
    );
    // Everything the model holds, the store holds.
    for (id, _, _) in &model.queue {
        let d: &Digest = &digest_of[id];
        assert!(store.contains(d).unwrap(), "{policy}: {id} missing");
    }
}

#[test]
fn lru_trace_matches_the_reference() {
    replay(Policy::Lru, 1, 1_500);
}

#[test]
fn fifo_trace_matches_the_reference() {
    replay(Policy::Fifo, 2, 1_500);
}

#[test]
fn size_trace_matches_the_reference() {
    replay(Policy::Size, 3, 1_500);
}

#[test]
fn time_trace_matches_the_reference() {
    replay(
        Policy::Time {
            max_age: Duration::from_millis(40),
        },
        4,
        1_500,
    );
}

#[test]
fn lru_order_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(10_000);
    let mut digests = Vec::new();
    {
        let store = store_with(dir.path(), 10_000, Policy::Lru, 1.0, &clock);
        for id in 0..5 {
            clock.advance(Duration::from_millis(5));
            digests.push(
                store
                    .insert_bytes("c", &content(id, 2_000), None)
                    .unwrap()
                    .digest,
            );
        }
        // Use them in the order 3, 0, 4, 1, 2: 2 is now the most recent.
        for id in [3, 0, 4, 1, 2] {
            clock.advance(Duration::from_millis(5));
            drop(store.open_blob(&digests[id]).unwrap().unwrap());
        }
    }
    let store = store_with(dir.path(), 10_000, Policy::Lru, 1.0, &clock);
    let mut order = Vec::new();
    for id in 10..15 {
        clock.advance(Duration::from_millis(5));
        let inserted = store.insert_bytes("c", &content(id, 2_000), None).unwrap();
        order.extend(
            inserted
                .evicted
                .iter()
                .map(|e| digests.iter().position(|d| *d == e.digest).unwrap()),
        );
    }
    assert_eq!(order, [3, 0, 4, 1, 2]);
}
