//! The inference pool: batching across callers, backpressure, shutdown.

use std::sync::Arc;
use std::time::Duration;

use infercache_model::{InferencePool, ModelError, PoolConfig};

use crate::{embedder, max_abs_diff};

const SENTENCE: &str = "The weather is lovely today.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_forward_passes() {
    let expected = embedder().embed(&[SENTENCE]).unwrap().remove(0);
    let config = PoolConfig::default()
        .max_batch(64)
        .max_wait(Duration::from_millis(50));
    let pool = Arc::new(InferencePool::new(embedder(), config).unwrap());

    let callers = 16;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.embed(vec![SENTENCE.to_owned()]).await })
        })
        .collect();
    for task in tasks {
        let vectors = task.await.unwrap().unwrap();
        assert_eq!(vectors.len(), 1);
        assert!(max_abs_diff(&vectors[0], &expected) < 1e-5);
    }
    let stats = pool.stats();
    assert_eq!(stats.requests, callers);
    assert_eq!(stats.texts, callers);
    assert!(
        stats.invocations < callers,
        "{callers} concurrent callers took {} forward passes",
        stats.invocations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_overloaded_at_once() {
    let config = PoolConfig::default()
        .max_batch(16)
        .max_wait(Duration::ZERO)
        .queue_capacity(1);
    let pool = InferencePool::new(embedder(), config).unwrap();

    // Keep the single worker busy: one job, a forward pass over 16 long texts.
    let busy = pool
        .submit(vec!["a long text to keep the worker busy ".repeat(20); 16])
        .unwrap();
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for _ in 0..10 {
        match pool.submit(vec![SENTENCE.to_owned()]) {
            Ok(pending) => accepted.push(pending),
            Err(ModelError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(
        accepted.len() <= 2,
        "queue of 1 accepted {}",
        accepted.len()
    );
    assert!(overloaded >= 8, "only {overloaded} of 10 were refused");
    assert_eq!(pool.stats().overloaded, overloaded);

    // What was accepted is still answered.
    assert_eq!(busy.await.unwrap().len(), 16);
    for pending in accepted {
        assert_eq!(pending.await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_max_batch_is_split() {
    let embedder = embedder();
    let texts: Vec<String> = (0..10).map(|i| format!("sentence number {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = embedder.embed(&refs).unwrap();

    let pool = InferencePool::new(embedder, PoolConfig::default().max_batch(4)).unwrap();
    let got = pool.embed(texts).await.unwrap();
    assert_eq!(got.len(), 10);
    for (g, e) in got.iter().zip(&expected) {
        assert!(max_abs_diff(g, e) < 1e-5);
    }
    assert_eq!(
        pool.stats().invocations,
        3,
        "10 texts in passes of at most 4"
    );

    assert!(pool.embed(Vec::new()).await.unwrap().is_empty());
    assert_eq!(pool.stats().invocations, 3, "an empty request runs nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_requests_then_refuses() {
    let pool = InferencePool::new(embedder(), PoolConfig::default().threads(2)).unwrap();
    let pending = pool.submit(vec![SENTENCE.to_owned(); 3]).unwrap();
    tokio::task::spawn_blocking(move || pool.shutdown())
        .await
        .unwrap();
    assert_eq!(pending.await.unwrap().len(), 3);
}

#[test]
fn invalid_configs_are_refused() {
    for config in [
        PoolConfig::default().threads(0),
        PoolConfig::default().max_batch(0),
        PoolConfig::default().queue_capacity(0),
    ] {
        let err = InferencePool::new(embedder(), config).unwrap_err();
        assert!(matches!(err, ModelError::InvalidConfig(_)), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_pass_fails_its_batch_and_the_thread_is_replaced() {
    let pool = InferencePool::new(embedder(), PoolConfig::default()).unwrap();
    let expected = embedder().embed(&[SENTENCE]).unwrap().remove(0);

    pool.inject_panics(1);
    let failed = pool.embed(vec![SENTENCE.to_owned()]).await;
    assert!(
        matches!(failed, Err(ModelError::Panicked(_))),
        "the batch in flight fails with the panic: {failed:?}"
    );
    // The one thread that panicked was replaced: the pool serves again.
    assert!(pool.is_ready());
    let vectors = pool.embed(vec![SENTENCE.to_owned()]).await.unwrap();
    assert!(max_abs_diff(&vectors[0], &expected) < 1e-5);
    let stats = pool.stats();
    assert_eq!((stats.panics, stats.failed_invocations), (1, 1));

    // With no thread to replace it, the pool is unready and refuses at once; it recovers
    // once a thread can be started again.
    pool.refuse_spawns(true);
    pool.inject_panics(1);
    assert!(matches!(
        pool.embed(vec![SENTENCE.to_owned()]).await,
        Err(ModelError::Panicked(_))
    ));
    assert!(!pool.is_ready());
    assert!(matches!(
        pool.embed(vec![SENTENCE.to_owned()]).await,
        Err(ModelError::NoWorkers)
    ));
    pool.refuse_spawns(false);
    assert!(pool.is_ready());
    assert_eq!(
        pool.embed(vec![SENTENCE.to_owned()]).await.unwrap().len(),
        1
    );
    pool.shutdown();
}
