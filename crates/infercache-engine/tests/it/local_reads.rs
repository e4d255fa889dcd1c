//! Local tiers gated on the epochs: a node whose epochs are not known to match the shared
//! tier's reads its own memory and disk only within the grace after it was last in sync
//! (or always, with `LocalReads::Always`), and its stats say so.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, ManualClock, SharedClock};
use infercache_engine::testing::MemoryRemote;
use infercache_engine::*;

fn key(cache: &Cache, input: &str) -> CacheKey {
    let input = CanonicalInput::text(input);
    cache.key(KeyParts {
        namespace: "t",
        model: "m",
        version: "1",
        artifact: None,
        epochs: Epochs::default(),
        input: &input,
        params: b"",
    })
}

fn node(clock: &Arc<ManualClock>, local_reads: LocalReads) -> (Cache, Arc<MemoryRemote>) {
    let shared: SharedClock = clock.clone();
    let remote = MemoryRemote::new(shared.clone(), Duration::from_millis(20));
    let config = CacheConfig {
        remote: Some(Arc::clone(&remote) as Arc<dyn RemoteTier>),
        local_reads,
        ..CacheConfig::default()
    };
    (Cache::open(config, shared).unwrap(), remote)
}

/// A node cut off from the shared tier used to serve its memory for as long as the outage
/// lasted, whatever was invalidated elsewhere meanwhile.
#[tokio::test]
async fn a_cut_off_node_serves_local_entries_only_within_the_grace() {
    let clock = ManualClock::new(1_000_000);
    let (cache, remote) = node(&clock, LocalReads::default());
    let opts = RequestOptions::default();
    let k = key(&cache, "x");
    cache.insert(&k, Bytes::from_static(b"v"), &opts).await;
    assert!(matches!(cache.get(&k, &opts).await, Lookup::Hit(_)));

    remote.set_reachable(false).await;
    clock.advance(Duration::from_secs(5));
    assert!(
        matches!(cache.get(&k, &opts).await, Lookup::Hit(_)),
        "within the grace"
    );
    clock.advance(LocalReads::DEFAULT_GRACE);
    assert_eq!(cache.get(&k, &opts).await, Lookup::Miss, "past the grace");
    let sync = cache.stats().sync.unwrap();
    assert!(!sync.in_sync && !sync.local_reads);
    assert_eq!(sync.unsynced_ms, Some(15_000));
    assert!(sync.local_reads_skipped >= 1);

    remote.set_reachable(true).await;
    assert!(
        matches!(cache.get(&k, &opts).await, Lookup::Hit(_)),
        "in sync again"
    );
    let sync = cache.stats().sync.unwrap();
    assert!(sync.in_sync && sync.local_reads);
}

/// The availability option: local entries are served however long the outage lasts.
#[tokio::test]
async fn with_local_reads_always_a_cut_off_node_keeps_serving_local_entries() {
    let clock = ManualClock::new(1_000_000);
    let (cache, remote) = node(&clock, LocalReads::Always);
    let opts = RequestOptions::default();
    let k = key(&cache, "x");
    cache.insert(&k, Bytes::from_static(b"v"), &opts).await;
    remote.set_reachable(false).await;
    clock.advance(Duration::from_secs(3600));
    assert!(matches!(cache.get(&k, &opts).await, Lookup::Hit(_)));
    let sync = cache.stats().sync.unwrap();
    assert!(!sync.in_sync && sync.local_reads);
}
