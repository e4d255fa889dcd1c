use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::{Digest, ManualClock};
use proptest::prelude::*;

use super::*;

fn entry(v: &[u8]) -> MemEntry {
    MemEntry {
        value: Bytes::copy_from_slice(v),
        created_ms: 0,
        expires_ms: NEVER,
    }
}

fn unit_tier(policy: Policy, capacity: u64) -> MemoryTier {
    MemoryTier::new(
        MemoryConfig {
            capacity,
            policy,
            weigher: Weigher::Unit,
            shards: Some(1),
        },
        ManualClock::new(0),
    )
}

#[test]
fn every_policy_round_trips_and_removes() {
    for policy in Policy::ALL {
        let tier = MemoryTier::new(
            MemoryConfig {
                policy,
                ..MemoryConfig::bytes(1 << 20)
            },
            ManualClock::new(0),
        );
        let k = Digest::of(b"k");
        assert!(tier.get(&k).is_none(), "{policy}");
        tier.insert(k, entry(b"v1"));
        assert_eq!(tier.get(&k).unwrap().value, "v1", "{policy}");
        tier.insert(k, entry(b"v2"));
        assert_eq!(tier.get(&k).unwrap().value, "v2", "{policy}");
        assert_eq!(tier.entries(), 1, "{policy}");
        assert_eq!(tier.weight(), charge(policy, 2), "{policy}");
        assert!(tier.remove(&k), "{policy}");
        assert!(tier.get(&k).is_none(), "{policy}");
        assert_eq!(tier.weight(), 0, "{policy}");
        let s = tier.stats();
        assert_eq!(
            (s.hits, s.misses, s.inserts, s.removals),
            (2, 2, 2, 1),
            "{policy}"
        );
    }
}

#[test]
fn policy_names_parse() {
    for p in Policy::ALL {
        assert_eq!(p.name().parse::<Policy>().unwrap(), p);
    }
    assert_eq!("default".parse::<Policy>().unwrap(), Policy::S3fifo);
    assert!("arc".parse::<Policy>().is_err());
}

#[test]
fn lru_evicts_least_recently_used() {
    let tier = unit_tier(Policy::Lru, 2);
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    tier.insert(a, entry(b"a"));
    tier.insert(b, entry(b"b"));
    tier.get(&a);
    tier.insert(c, entry(b"c"));
    assert!(tier.get(&a).is_some());
    assert!(tier.get(&b).is_none());
    assert!(tier.get(&c).is_some());
    assert_eq!(tier.stats().evictions, 1);
}

#[test]
fn fifo_ignores_reads() {
    let tier = unit_tier(Policy::Fifo, 2);
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    tier.insert(a, entry(b"a"));
    tier.insert(b, entry(b"b"));
    tier.get(&a);
    tier.insert(c, entry(b"c"));
    assert!(tier.get(&a).is_none());
    assert!(tier.get(&b).is_some());
}

#[test]
fn lfu_evicts_least_frequently_used() {
    let tier = unit_tier(Policy::Lfu, 2);
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    tier.insert(a, entry(b"a"));
    tier.insert(b, entry(b"b"));
    for _ in 0..3 {
        tier.get(&a);
    }
    tier.get(&b);
    tier.insert(c, entry(b"c"));
    assert!(tier.get(&a).is_some());
    assert!(tier.get(&b).is_none());
}

#[test]
fn oversized_values_are_not_admitted_and_do_not_leave_stale_values() {
    for policy in Policy::ALL {
        let tier = MemoryTier::new(
            MemoryConfig {
                policy,
                shards: Some(1),
                ..MemoryConfig::bytes(4096)
            },
            ManualClock::new(0),
        );
        let k = Digest::of(b"k");
        tier.insert(k, entry(b"small"));
        tier.insert(k, entry(&[7u8; 8192]));
        assert!(tier.weight() <= 4096, "{policy}");
        let got = tier.get(&k).map(|e| e.value);
        assert!(got.is_none(), "{policy}: an oversized write left {got:?}");
    }
}

#[test]
fn expired_entries_are_never_returned_and_are_reclaimed() {
    for policy in Policy::ALL {
        let clock = ManualClock::new(1_000);
        let tier = MemoryTier::new(
            MemoryConfig {
                policy,
                ..MemoryConfig::bytes(1 << 20)
            },
            clock.clone(),
        );
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        tier.insert(
            a,
            MemEntry {
                expires_ms: 1_500,
                ..entry(b"a")
            },
        );
        tier.insert(
            b,
            MemEntry {
                expires_ms: 5_000,
                ..entry(b"b")
            },
        );
        tier.insert(c, entry(b"c"));
        clock.advance(Duration::from_millis(499));
        assert!(tier.get(&a).is_some(), "{policy}");
        clock.advance(Duration::from_millis(1));
        assert!(tier.get(&a).is_none(), "{policy}: expired at 1500");
        clock.advance(Duration::from_secs(10));
        assert_eq!(tier.purge_expired(), 1, "{policy}: b reclaimed");
        assert_eq!(tier.entries(), 1, "{policy}");
        assert!(tier.get(&c).is_some(), "{policy}");
        assert_eq!(tier.stats().expirations, 2, "{policy}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8, u16),
    Remove(u8),
    Purge,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Get),
        4 => (any::<u8>(), 0u16..3000).prop_map(|(k, n)| Op::Insert(k, n)),
        1 => any::<u8>().prop_map(Op::Remove),
        1 => Just(Op::Purge),
    ]
}

proptest! {
    /// After every operation: weight within capacity, and a read is a miss or the last
    /// value written for that key.
    #[test]
    fn bytes_stay_within_capacity_and_values_are_right(
        policy in prop::sample::select(Policy::ALL.to_vec()),
        capacity in 2_000u64..40_000,
        ops in prop::collection::vec(arb_op(), 1..300),
    ) {
        let tier = MemoryTier::new(MemoryConfig { policy, shards: Some(2), ..MemoryConfig::bytes(capacity) }, ManualClock::new(0));
        let mut last: HashMap<u8, Vec<u8>> = HashMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Get(k) => {
                    if let Some(e) = tier.get(&Digest::of(&[k])) {
                        prop_assert_eq!(Some(&e.value.to_vec()), last.get(&k), "key {}", k);
                    }
                }
                Op::Insert(k, n) => {
                    let v: Vec<u8> = (0..n).map(|j| (usize::from(k) + i + usize::from(j)) as u8).collect();
                    tier.insert(Digest::of(&[k]), entry(&v));
                    last.insert(k, v);
                }
                Op::Remove(k) => {
                    tier.remove(&Digest::of(&[k]));
                    last.remove(&k);
                }
                Op::Purge => {
                    tier.purge_expired();
                }
            }
            prop_assert!(tier.weight() <= capacity, "{} > {}", tier.weight(), capacity);
        }
    }
}

#[test]
fn blocks_follow_jemallocs_size_classes() {
    // jemalloc 5's small size classes on x86-64 (16-byte quantum, 4 KiB pages), from the
    // table in its manual, at and around class boundaries; above 14 KiB, the pages filled.
    for (len, block) in [
        (0, 0),
        (1, 8),
        (8, 8),
        (9, 16),
        (17, 32),
        (33, 48),
        (100, 112),
        (128, 128),
        (129, 160),
        (256, 256),
        (257, 320),
        (1_024, 1_024),
        (1_025, 1_280),
        (1_536, 1_536),
        (1_537, 1_792),
        (1_540, 1_792),
        (2_049, 2_560),
        (4_097, 5_120),
        (14_336, 14_336),
        (14_337, 16_384),
        (16_385, 20_480),
        (100_000, 102_400),
    ] {
        assert_eq!(super::heap_block(len), block, "a block of {len} bytes");
    }
}

#[test]
fn a_reservation_evicts_at_once_and_bounds_every_later_insert() {
    // 64 KiB in 4 shards: 1 KiB values, about 50 of them fit.
    let capacity = 64 * 1024;
    let value = vec![7u8; 1000];
    for policy in Policy::ALL {
        let tier = MemoryTier::new(
            MemoryConfig {
                policy,
                shards: Some(4),
                ..MemoryConfig::bytes(capacity)
            },
            ManualClock::new(0),
        );
        let fill = |from: u32, to: u32| {
            for i in from..to {
                tier.insert(Digest::of(&i.to_le_bytes()), entry(&value));
            }
        };
        fill(0, 200);
        let full = tier.weight();
        assert!(full > capacity / 2, "{policy}: {full}");
        // Half the capacity goes to memory outside the tier: the tier is under the rest
        // at once, before any insert.
        tier.reserve(capacity / 2);
        assert_eq!(tier.reserved(), capacity / 2, "{policy}");
        assert_eq!(tier.stats().reserved_bytes, capacity / 2, "{policy}");
        assert!(tier.weight() <= capacity / 2, "{policy}: {}", tier.weight());
        let evicted = tier.stats().evictions;
        fill(200, 400);
        assert!(tier.weight() <= capacity / 2, "{policy}: {}", tier.weight());
        assert!(tier.stats().evictions > evicted, "{policy}");
        // Rounded up to a step: never less than asked.
        tier.reserve(capacity / 2 + 1);
        assert!(tier.reserved() > capacity / 2, "{policy}");
        assert!(tier.weight() + tier.reserved() <= capacity, "{policy}");
        // A reservation of the whole capacity leaves room for nothing, and is capped there.
        tier.reserve(capacity * 2);
        assert_eq!(tier.reserved(), capacity, "{policy}");
        fill(400, 450);
        assert_eq!(tier.entries(), 0, "{policy}");
        // Given back, the tier fills to its capacity again, and a clear keeps the
        // reservation in force.
        tier.reserve(0);
        fill(450, 650);
        assert!(tier.weight() > capacity / 2, "{policy}: {}", tier.weight());
        tier.reserve(capacity / 4);
        tier.clear();
        fill(650, 850);
        assert!(
            tier.weight() <= capacity - capacity / 4,
            "{policy}: {}",
            tier.weight()
        );
    }
}

#[test]
fn a_reservation_means_nothing_under_unit_weights() {
    let tier = unit_tier(Policy::S3fifo, 4);
    tier.reserve(1 << 20);
    assert_eq!(tier.reserved(), 0);
    for i in 0..4u32 {
        tier.insert(Digest::of(&i.to_le_bytes()), entry(b"v"));
    }
    assert_eq!(tier.entries(), 4);
}
