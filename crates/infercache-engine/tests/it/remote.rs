//! The engine's lease and epoch logic over an in-process remote tier
//! ([`infercache_engine::testing::MemoryRemote`]): several caches on one shared tier stand
//! for several nodes. The Redis tier's tests run the same logic against real servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, SharedClock, SystemClock};
use infercache_engine::testing::MemoryRemote;
use infercache_engine::*;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("the model failed")]
struct Failed;

fn clock() -> SharedClock {
    SystemClock::shared()
}

/// A node: a memory tier over `remote`.
fn node(remote: Arc<MemoryRemote>) -> Cache {
    let config = CacheConfig {
        remote: Some(remote as Arc<dyn RemoteTier>),
        ..CacheConfig::default()
    };
    Cache::open(config, clock()).unwrap()
}

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

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what}: not within 2 s");
}

/// Node A leads `input` with a computation that waits for `go`, then yields `outcome`;
/// node B asks for it once A's lease is taken. What B got and how often B computed.
async fn b_while_a_holds_the_lease(
    outcome: Result<&'static str, Failed>,
) -> (
    Result<Fetched, ComputeError>,
    Result<Fetched, ComputeError>,
    usize,
) {
    let remote_a = MemoryRemote::new(clock(), Duration::from_secs(5));
    let remote_b = remote_a.node();
    let (a, b) = (node(Arc::clone(&remote_a)), node(Arc::clone(&remote_b)));
    let go = Arc::new(Notify::new());
    let digest = *key(&a, "x").digest();

    let leader = tokio::spawn({
        let (a, go) = (a.clone(), Arc::clone(&go));
        async move {
            let k = key(&a, "x");
            a.get_or_compute(&k, &RequestOptions::default(), || async move {
                go.notified().await;
                outcome.map(|s| Bytes::from_static(s.as_bytes()))
            })
            .await
        }
    });
    until("A holds the lease", || remote_a.is_leased(&digest)).await;

    let b_calls = Arc::new(AtomicUsize::new(0));
    let waiter = tokio::spawn({
        let (b, calls) = (b.clone(), Arc::clone(&b_calls));
        async move {
            let k = key(&b, "x");
            b.get_or_compute(&k, &RequestOptions::default(), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Failed>(Bytes::from_static(b"from b"))
            })
            .await
        }
    });
    until("B waits for A's lease", || {
        remote_b.stats().leases_contended == 1
    })
    .await;
    go.notify_one();
    let (a_got, b_got) = (leader.await.unwrap(), waiter.await.unwrap());
    (a_got, b_got, b_calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_the_lease_holder_and_takes_its_value() {
    let (a, b, b_calls) = b_while_a_holds_the_lease(Ok("from a")).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.source, Source::Computed);
    assert_eq!(
        (b.source, &b.value[..]),
        (Source::Coalesced, &b"from a"[..])
    );
    assert_eq!(b_calls, 0, "computed once across the nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lease_holder_lets_the_waiting_node_compute() {
    let (a, b, b_calls) = b_while_a_holds_the_lease(Err(Failed)).await;
    assert!(a.is_err());
    let b = b.unwrap();
    assert_eq!((b.source, &b.value[..]), (Source::Computed, &b"from b"[..]));
    assert_eq!(b_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_node_reaches_the_other() {
    let remote_a = MemoryRemote::new(clock(), Duration::from_secs(1));
    let (a, b) = (node(Arc::clone(&remote_a)), node(remote_a.node()));
    let compute = || async { Ok::<_, Failed>(Bytes::from_static(b"v")) };
    let opts = RequestOptions::default();
    a.get_or_compute(&key(&a, "x"), &opts, compute)
        .await
        .unwrap();
    let before = key(&b, "x");
    let hit = b.get_or_compute(&before, &opts, compute).await.unwrap();
    assert_eq!(hit.source, Source::Remote);

    a.invalidate(Scope::All).await.unwrap();
    let after = key(&b, "x");
    assert_ne!(after.digest(), before.digest(), "B's epochs were raised");
    assert_eq!(after.digest(), key(&a, "x").digest());
    let fresh = b.get_or_compute(&after, &opts, compute).await.unwrap();
    assert_eq!(fresh.source, Source::Computed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bump_made_while_cut_off_reaches_the_others_on_reconnecting() {
    let remote_a = MemoryRemote::new(clock(), Duration::from_secs(1));
    let (a, b) = (node(Arc::clone(&remote_a)), node(remote_a.node()));
    let before = *key(&b, "x").digest();

    remote_a.set_reachable(false).await;
    a.invalidate(Scope::All).await.unwrap();
    assert_ne!(*key(&a, "x").digest(), before, "bumped locally");
    assert_eq!(*key(&b, "x").digest(), before, "not yet known elsewhere");

    remote_a.set_reachable(true).await;
    let after = *key(&b, "x").digest();
    assert_ne!(after, before, "replayed on reconnecting");
    assert_eq!(after, *key(&a, "x").digest());
}
