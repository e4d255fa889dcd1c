//! The eviction order of each policy, as a pure function of the blobs' records.

use std::cmp::Reverse;

use crate::config::Policy;
use crate::digest::Digest;

/// What a policy knows about one committed blob.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) inserted_ms: u64,
    pub(crate) accessed_ms: u64,
}

/// `true` if a `time` policy has expired the blob at `now_ms`.
pub(crate) fn expired(policy: Policy, c: &Candidate, now_ms: u64) -> bool {
    match policy {
        Policy::Time { max_age } => {
            let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(c.inserted_ms) >= max_ms
        }
        _ => false,
    }
}

/// Sorts `candidates` into the order `policy` evicts them: first to go first. Ties are
/// broken by insertion time, then by digest, so the order is total and the same in every
/// process.
pub(crate) fn sort(policy: Policy, candidates: &mut [Candidate]) {
    match policy {
        Policy::Lru => {
            candidates.sort_by_key(|c| (c.accessed_ms, c.inserted_ms, *c.digest.bytes()));
        }
        Policy::Fifo | Policy::Time { .. } => {
            candidates.sort_by_key(|c| (c.inserted_ms, *c.digest.bytes()));
        }
        Policy::Size => {
            candidates.sort_by_key(|c| (Reverse(c.size), c.inserted_ms, *c.digest.bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn c(n: u8, size: u64, inserted_ms: u64, accessed_ms: u64) -> Candidate {
        Candidate {
            digest: Digest::Blake3([n; 32]),
            size,
            inserted_ms,
            accessed_ms,
        }
    }

    fn order(policy: Policy, mut v: Vec<Candidate>) -> Vec<u8> {
        sort(policy, &mut v);
        v.iter().map(|c| c.digest.bytes()[0]).collect()
    }

    #[test]
    fn each_policy_orders_as_documented() {
        let v = vec![c(1, 10, 1, 9), c(2, 30, 2, 3), c(3, 20, 3, 5)];
        assert_eq!(order(Policy::Lru, v.clone()), [2, 3, 1]);
        assert_eq!(order(Policy::Fifo, v.clone()), [1, 2, 3]);
        assert_eq!(order(Policy::Size, v.clone()), [2, 3, 1]);
        let time = Policy::Time {
            max_age: Duration::from_millis(5),
        };
        assert_eq!(order(time, v.clone()), [1, 2, 3]);
        assert!(expired(time, &v[0], 6));
        assert!(!expired(time, &v[0], 5));
        assert!(!expired(Policy::Lru, &v[0], u64::MAX));
    }
}
