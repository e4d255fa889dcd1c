//! The Redis tier on a real three-node Redis Cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use infercache_engine::{CacheKey, RemoteTier, RequestOptions, Scope, Source};
use infercache_redis::Target;
use infercache_redis::testing::RedisCluster;

use crate::tier::{get, key, node, tier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_works_as_the_tier() {
    let cluster = RedisCluster::start(3);
    let (ta, tb) = (
        tier(Target::Cluster(cluster.urls()), |_| {}),
        tier(Target::Cluster(cluster.urls()), |_| {}),
    );
    let (a, b) = (node(&ta, false).await, node(&tb, false).await);
    // 64 keys spread over the three masters' slots: one batch in, one batch out.
    let keys: Vec<CacheKey> = (0..64).map(|i| key(&a, "m", &format!("t{i}"))).collect();
    let computed = a
        .get_many_or_compute(&keys, &RequestOptions::default(), |ks| async move {
            Ok::<_, std::io::Error>(
                ks.iter()
                    .map(|k| Bytes::from(k.digest().to_hex()))
                    .collect(),
            )
        })
        .await
        .unwrap();
    assert!(computed.iter().all(|f| f.source == Source::Computed));
    let found = b
        .get_many_or_compute(&keys, &RequestOptions::default(), |_| async {
            Err::<Vec<Bytes>, _>(std::io::Error::other("everything is in the cluster"))
        })
        .await
        .unwrap();
    for (f, k) in found.iter().zip(&keys) {
        assert_eq!(f.source, Source::Remote);
        assert_eq!(f.value, Bytes::from(k.digest().to_hex()));
    }
    let stats = tb.stats();
    assert_eq!(
        (stats.kind.as_str(), stats.hits, stats.errors),
        ("redis-cluster", 64, 0)
    );

    // The keys really are spread over the masters.
    let mut holding = 0;
    for n in cluster.nodes() {
        let mut c = n.client().get_connection().unwrap();
        let size: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        holding += usize::from(size > 0);
    }
    assert_eq!(holding, 3);

    // Invalidation travels through the cluster too.
    let calls = AtomicUsize::new(0);
    let before = key(&b, "m", "t0").digest().to_owned();
    a.invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while key(&b, "m", "t0").digest() == &before {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "B never saw the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&b, &key(&b, "m", "t0"), &calls).await.1,
        Source::Computed
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The subscription used to stay on the first configured node: with it down, even after
/// the cluster failed over, the tier was off on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_replicas_loses_no_tier_to_one_dead_master() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let (ta, tb) = (
        tier(Target::Cluster(cluster.urls()), |_| {}),
        tier(Target::Cluster(cluster.urls()), |_| {}),
    );
    let (a, b) = (node(&ta, false).await, node(&tb, false).await);

    cluster.nodes_mut()[0].kill9();
    let killed = std::time::Instant::now();
    crate::tier::wait_until(
        "the tiers notice the dead node",
        Duration::from_secs(2),
        async || !ta.stats().connected && !tb.stats().connected,
    )
    .await;
    crate::tier::wait_until(
        "both tiers in use again",
        Duration::from_secs(5),
        async || ta.stats().connected && tb.stats().connected,
    )
    .await;
    eprintln!("in use again {:?} after the kill", killed.elapsed());

    // Values and invalidations flow again, through the nodes that are left.
    let calls = AtomicUsize::new(0);
    let before = *key(&b, "m", "x").digest();
    a.invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    crate::tier::wait_until(
        "B hears the invalidation",
        Duration::from_secs(2),
        async || *key(&b, "m", "x").digest() != before,
    )
    .await;
    get(&a, &key(&a, "m", "after"), &calls).await;
    assert_eq!(
        get(&b, &key(&b, "m", "after"), &calls).await.1,
        Source::Remote
    );
}
