//! One freshness rule on every path (the lease's read, a value awaited from another node,
//! every tier), the model's freshness policy, stale-if-error, stale-while-revalidate and
//! values not to be stored, over an in-process remote tier
//! ([`infercache_engine::testing::MemoryRemote`]): two caches on it stand for two nodes,
//! and a [`ManualClock`] moves time. The Redis tier's tests run the lease paths against
//! real servers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, ManualClock, SharedClock};
use infercache_engine::testing::MemoryRemote;
use infercache_engine::*;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("the model failed")]
struct Failed;

const S: Duration = Duration::from_secs(1);

/// A node: a memory tier over `remote`, with `policies` per model name.
fn node(
    remote: &Arc<MemoryRemote>,
    clock: &Arc<ManualClock>,
    policies: &[(&str, FreshnessPolicy)],
) -> Cache {
    let config = CacheConfig {
        remote: Some(Arc::clone(remote) as Arc<dyn RemoteTier>),
        policies: policies
            .iter()
            .map(|(m, p)| ((*m).to_owned(), *p))
            .collect::<HashMap<_, _>>(),
        ..CacheConfig::default()
    };
    Cache::open(config, Arc::clone(clock) as SharedClock).unwrap()
}

/// Two nodes on one shared tier, and its two handles.
fn two_nodes(
    clock: &Arc<ManualClock>,
    policies: &[(&str, FreshnessPolicy)],
) -> (Cache, Cache, Arc<MemoryRemote>, Arc<MemoryRemote>) {
    let clock_dyn = Arc::clone(clock) as SharedClock;
    let ra = MemoryRemote::new(clock_dyn, Duration::from_secs(5));
    let rb = ra.node();
    (
        node(&ra, clock, policies),
        node(&rb, clock, policies),
        ra,
        rb,
    )
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

fn policy(ttl: u64, stale_if_error: u64, stale_while_revalidate: u64) -> FreshnessPolicy {
    FreshnessPolicy {
        ttl: Some(S * u32::try_from(ttl).unwrap()),
        stale_if_error: S * u32::try_from(stale_if_error).unwrap(),
        stale_while_revalidate: S * u32::try_from(stale_while_revalidate).unwrap(),
    }
}

fn max_age(secs: u64) -> RequestOptions {
    RequestOptions {
        max_age: Some(Duration::from_secs(secs)),
        ..RequestOptions::default()
    }
}

/// `get_or_compute` with a computation that counts its calls and yields `value`.
async fn get(
    cache: &Cache,
    k: &CacheKey,
    opts: &RequestOptions,
    calls: &AtomicUsize,
    value: &'static str,
) -> Fetched {
    cache
        .get_or_compute(k, opts, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failed>(Bytes::from_static(value.as_bytes()))
        })
        .await
        .unwrap()
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

/// The HTTP scenario of a `max-age` request on a second node: the value read with the
/// lease (the remote tier's `GET` beside `SET NX`) is judged like any other, so a value
/// older than `max-age` is recomputed by the lease holder, not adopted as a hit.
#[tokio::test]
async fn a_value_read_with_the_lease_is_judged_by_the_request_max_age() {
    let clock = ManualClock::new(1_000_000);
    let (a, b, _, rb) = two_nodes(&clock, &[]);
    let calls = AtomicUsize::new(0);
    get(&a, &key(&a, "x"), &RequestOptions::default(), &calls, "old").await;
    clock.advance(3 * S);

    let got = get(&b, &key(&b, "x"), &max_age(1), &calls, "new").await;
    assert_eq!(got.value, "new", "{got:?}");
    assert_eq!(got.source, Source::Computed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(rb.stats().leases_granted, 1);
    // Every node now serves the new value to the same request, from any tier.
    let again = get(&a, &key(&a, "x"), &max_age(1), &calls, "newer").await;
    assert_eq!((again.value, again.source), ("new".into(), Source::Remote));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// While another node recomputes a key whose stored value is too old, a node waiting for
/// it waits past the old value and gets the new one.
#[tokio::test]
async fn a_value_awaited_from_another_node_is_judged_too() {
    let clock = ManualClock::new(1_000_000);
    let (a, b, _, rb) = two_nodes(&clock, &[]);
    let calls = AtomicUsize::new(0);
    get(&a, &key(&a, "x"), &RequestOptions::default(), &calls, "old").await;
    clock.advance(3 * S);

    let go = Arc::new(Notify::new());
    let leader = tokio::spawn({
        let (a, go) = (a.clone(), Arc::clone(&go));
        async move {
            let k = key(&a, "x");
            a.get_or_compute(&k, &max_age(1), || async move {
                go.notified().await;
                Ok::<_, Failed>(Bytes::from_static(b"new"))
            })
            .await
        }
    });
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let k = key(&b, "x");
            b.get_or_compute(&k, &max_age(1), || async {
                Ok::<_, Failed>(Bytes::from_static(b"b computed it"))
            })
            .await
        }
    });
    until("B finds A's lease", || rb.stats().leases_contended == 1).await;
    go.notify_one();
    let (led, waited) = (
        leader.await.unwrap().unwrap(),
        waiter.await.unwrap().unwrap(),
    );
    assert_eq!(led.value, "new");
    assert_eq!(
        (waited.value, waited.source),
        ("new".into(), Source::Coalesced)
    );
}

/// A model's `ttl` holds on every path although its entries are kept for `ttl +
/// stale_if_error`: past the `ttl` no node serves the entry as fresh.
#[tokio::test]
async fn a_model_ttl_holds_on_every_node_though_entries_are_kept_longer() {
    let clock = ManualClock::new(1_000_000);
    let policies = [("m", policy(60, 600, 0))];
    let (a, b, ra, _) = two_nodes(&clock, &policies);
    let calls = AtomicUsize::new(0);
    let k = key(&a, "x");
    get(&a, &k, &RequestOptions::default(), &calls, "v1").await;
    clock.advance(59 * S);
    let hit = get(&b, &key(&b, "x"), &RequestOptions::default(), &calls, "no").await;
    assert_eq!((hit.value, hit.stale), ("v1".into(), None));

    clock.advance(2 * S);
    assert!(
        ra.contains(k.digest()),
        "kept for the stale-if-error window"
    );
    assert_eq!(
        b.get(&key(&b, "x"), &RequestOptions::default()).await,
        Lookup::Miss
    );
    assert_eq!(a.get(&k, &RequestOptions::default()).await, Lookup::Miss);
    let got = get(&b, &key(&b, "x"), &RequestOptions::default(), &calls, "v2").await;
    assert_eq!((got.value, got.source), ("v2".into(), Source::Computed));
    let got = get(&a, &k, &RequestOptions::default(), &calls, "v3").await;
    assert_eq!((got.value, got.source), ("v2".into(), Source::Remote));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A failed computation is answered with entries within the stale-if-error window (the
/// model's, or the request's), marked stale, from any tier of any node; past the window
/// the error comes through.
#[tokio::test]
async fn stale_if_error_answers_a_failed_computation_within_its_window() {
    let clock = ManualClock::new(1_000_000);
    let (a, b, _, _) = two_nodes(&clock, &[("m", policy(10, 100, 0))]);
    let calls = AtomicUsize::new(0);
    get(&a, &key(&a, "x"), &RequestOptions::default(), &calls, "v").await;
    let fail = |cache: &Cache, opts: RequestOptions| {
        let cache = cache.clone();
        async move {
            let k = key(&cache, "x");
            cache
                .get_or_compute(&k, &opts, || async { Err::<Bytes, _>(Failed) })
                .await
        }
    };
    clock.advance(50 * S);
    for node in [&a, &b] {
        let got = fail(node, RequestOptions::default()).await.unwrap();
        assert_eq!(got.value, "v");
        assert_eq!(got.stale, Some(Stale::IfError));
    }
    // A request can narrow the window.
    let narrow = RequestOptions {
        stale_if_error: Some(5 * S),
        ..RequestOptions::default()
    };
    assert!(fail(&b, narrow).await.is_err());
    assert!(
        fail(
            &a,
            RequestOptions {
                no_cache: true,
                ..RequestOptions::default()
            }
        )
        .await
        .is_err()
    );
    clock.advance(61 * S);
    assert!(fail(&a, RequestOptions::default()).await.is_err());
    let stats = a.stats().models["m"].clone();
    assert!(stats.stale_served >= 1, "{stats:?}");
}

/// Within the stale-while-revalidate window, every caller on every node is answered at
/// once with the stale value, and it is recomputed once in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_across_nodes() {
    let clock = ManualClock::new(1_000_000);
    let (a, b, _, _) = two_nodes(&clock, &[("m", policy(10, 0, 30))]);
    let calls = Arc::new(AtomicUsize::new(0));
    get(&a, &key(&a, "x"), &RequestOptions::default(), &calls, "v1").await;
    clock.advance(15 * S);

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                let k = key(&cache, "x");
                cache
                    .get_many_or_refresh(&[k], &RequestOptions::default(), move |keys| {
                        let calls = Arc::clone(&calls);
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, Failed>(vec![Bytes::from_static(b"v2"); keys.len()])
                        }
                    })
                    .await
                    .unwrap()
                    .remove(0)
            })
        })
        .collect();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.value, "v1", "{got:?}");
        assert_eq!(got.stale, Some(Stale::WhileRevalidate));
    }
    for node in [&a, &b] {
        let k = key(node, "x");
        for _ in 0..2_000 {
            if matches!(node.get(&k, &RequestOptions::default()).await,
                Lookup::Hit(f) if f.value == "v2")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let fresh = node.get(&k, &RequestOptions::default()).await;
        assert!(
            matches!(&fresh, Lookup::Hit(f) if f.value == "v2" && f.stale.is_none()),
            "{fresh:?}"
        );
    }
    // One computation for the initial value, one refresh across 16 callers on 2 nodes.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let refreshes = a.stats().models["m"].refreshes + b.stats().models["m"].refreshes;
    assert_eq!(refreshes, 1);
}

/// Stale-while-revalidate per request (`max-age=10, stale-while-revalidate=30`), on a model
/// without a policy; past the window, and through `get_or_compute`, the value is
/// recomputed before answering.
#[tokio::test]
async fn stale_while_revalidate_per_request_and_its_bounds() {
    let clock = ManualClock::new(1_000_000);
    let (a, _, _, _) = two_nodes(&clock, &[]);
    let calls = AtomicUsize::new(0);
    let k = key(&a, "x");
    get(&a, &k, &RequestOptions::default(), &calls, "v1").await;
    clock.advance(15 * S);
    let swr = RequestOptions {
        stale_while_revalidate: Some(30 * S),
        ..max_age(10)
    };
    let refresh = |opts: RequestOptions| {
        let a = a.clone();
        async move {
            let k = key(&a, "x");
            a.get_many_or_refresh(&[k], &opts, |keys| async move {
                Ok::<_, Failed>(vec![Bytes::from_static(b"v2"); keys.len()])
            })
            .await
            .unwrap()
            .remove(0)
        }
    };
    let got = refresh(swr).await;
    assert_eq!(
        (got.value, got.stale),
        ("v1".into(), Some(Stale::WhileRevalidate))
    );
    until("the refresh stored v2", || {
        a.stats().models["m"].refreshes == 1 && a.stats().models["m"].inserts == 2
    })
    .await;
    // Without the directive, past its max-age: recomputed before answering.
    clock.advance(15 * S);
    let got = refresh(max_age(10)).await;
    assert_eq!(
        (got.value, got.source, got.stale),
        ("v2".into(), Source::Computed, None)
    );
    // Within the window but through get_or_compute: recomputed before answering too.
    clock.advance(15 * S);
    let got = get(&a, &k, &swr, &calls, "v3").await;
    assert_eq!((got.value, got.stale), ("v3".into(), None));
}

/// A value marked not to be stored reaches this call and its waiters, no tier on no node,
/// and the lease is released without a value: a node waiting for it computes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_not_to_be_stored_reaches_its_waiters_and_no_tier() {
    let clock = ManualClock::new(1_000_000);
    let (a, b, ra, rb) = two_nodes(&clock, &[]);
    let digest = *key(&a, "x").digest();
    let go = Arc::new(Notify::new());
    let leader = tokio::spawn({
        let (a, go) = (a.clone(), Arc::clone(&go));
        async move {
            let k = key(&a, "x");
            a.get_or_compute(&k, &RequestOptions::default(), || async move {
                go.notified().await;
                Ok::<_, Failed>(Computed::do_not_store(Bytes::from_static(b"failed row")))
            })
            .await
        }
    });
    until("A leases the key", || ra.is_leased(&digest)).await;
    let same_node = tokio::spawn({
        let a = a.clone();
        async move {
            let k = key(&a, "x");
            a.get_or_compute(&k, &RequestOptions::default(), || async {
                Ok::<_, Failed>(Bytes::from_static(b"computed twice"))
            })
            .await
        }
    });
    let other_node = tokio::spawn({
        let b = b.clone();
        async move {
            let k = key(&b, "x");
            let started = Instant::now();
            let got = b
                .get_or_compute(&k, &RequestOptions::default(), || async {
                    Ok::<_, Failed>(Bytes::from_static(b"b's row"))
                })
                .await;
            (got, started.elapsed())
        }
    });
    until("B waits for A", || rb.stats().leases_contended == 1).await;
    // Time for A's second caller to join A's flight.
    tokio::time::sleep(Duration::from_millis(20)).await;
    go.notify_one();

    let led = leader.await.unwrap().unwrap();
    assert_eq!(
        (led.value, led.source),
        ("failed row".into(), Source::Computed)
    );
    let joined = same_node.await.unwrap().unwrap();
    assert_eq!(
        (joined.value, joined.source),
        ("failed row".into(), Source::Coalesced)
    );
    let (theirs, waited) = other_node.await.unwrap();
    let theirs = theirs.unwrap();
    assert_eq!(
        (theirs.value, theirs.source),
        ("b's row".into(), Source::Computed)
    );
    assert!(waited < Duration::from_secs(2), "B waited {waited:?}");
    let s = a.stats().models["m"].clone();
    assert_eq!((s.not_stored, s.inserts), (1, 0), "{s:?}");
    assert_eq!(a.memory().map(MemoryTier::entries), Some(0));
    // What B computed (storable) is shared as usual.
    assert!(ra.contains(&digest));
}
