//! The per-row path against a counting backend and a real cache on a manual clock.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendKind, BackendStats, BoxFuture, InferenceStats, Inputs, ModelInfo,
    UpstreamError,
};
use infercache_core::ManualClock;
use infercache_engine::{Cache, CacheConfig};

use super::*;
use crate::models::{CachePolicy, Models};

/// Each text's value is its own bytes; every call's rows are recorded.
#[derive(Debug)]
struct Echo {
    info: ModelInfo,
    calls: Mutex<Vec<Vec<String>>>,
    fail: AtomicBool,
    hang: AtomicBool,
    /// The next call answers `unfit` for every row (a value `fits` refuses).
    unfit_once: AtomicBool,
    /// Each call takes 20 ms (real time).
    slow: AtomicBool,
    /// Calls running now, and the most that ever ran at once.
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Echo {
    fn new(kind: BackendKind) -> Arc<Self> {
        Arc::new(Self {
            info: ModelInfo {
                name: "echo".into(),
                aliases: vec!["echo-alias".into()],
                kind,
                version: "1".into(),
                digest: None,
                dims: None,
                upstream: None,
            },
            calls: Mutex::default(),
            fail: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            unfit_once: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }

    fn rows(&self) -> usize {
        self.calls().iter().map(Vec::len).sum()
    }
}

impl Backend for Echo {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(UpstreamError::Status {
                    model: "echo".into(),
                    status: 500,
                }
                .into());
            }
            if self.slow.load(Ordering::SeqCst) {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
            }
            let Inputs::Texts { texts, .. } = inputs else {
                return Err(BackendError::failed("texts only"));
            };
            let batch: Vec<String> = rows.iter().map(|&i| texts[i].clone()).collect();
            self.calls.lock().unwrap().push(batch.clone());
            if self.unfit_once.swap(false, Ordering::SeqCst) {
                return Ok(batch.iter().map(|_| Bytes::from_static(b"unfit")).collect());
            }
            Ok(batch.into_iter().map(Bytes::from).collect())
        })
    }

    fn keep(&self, value: &[u8]) -> bool {
        value != b"refused"
    }

    fn fits(&self, value: &[u8], _inputs: &Inputs) -> bool {
        value != b"unfit"
    }

    fn stats(&self) -> BackendStats {
        BackendStats::InProcess(InferenceStats::default())
    }
}

/// Counts the backend calls it hears of.
#[derive(Debug, Default)]
struct Counted(AtomicUsize);

impl Observer for Counted {
    fn computed(&self, _model: &Model, _rows: usize, _took: Duration) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Harness {
    infer: Infer,
    echo: Arc<Echo>,
    clock: Arc<ManualClock>,
    observed: Arc<Counted>,
}

fn harness(kind: BackendKind, policy: CachePolicy) -> Harness {
    let clock = ManualClock::new(1_000_000);
    let echo = Echo::new(kind);
    let observed = Arc::new(Counted::default());
    let models = Models::new([(Arc::clone(&echo) as Arc<dyn Backend>, policy)]);
    let config = CacheConfig {
        policies: models.freshness(),
        ..CacheConfig::default()
    };
    let cache = Cache::open(config, clock.clone()).unwrap();
    let infer = Infer::new(
        Some(cache),
        models,
        Duration::from_secs(1),
        Arc::clone(&observed) as Arc<dyn Observer>,
    );
    Harness {
        infer,
        echo,
        clock,
        observed,
    }
}

impl Harness {
    async fn rows(&self, texts: &[&str], control: CacheControl) -> Result<Rows, InferError> {
        let model = Arc::clone(self.infer.models().get("echo").unwrap());
        self.infer
            .rows(RowRequest {
                model,
                tenant: "t".into(),
                inputs: Arc::new(Inputs::texts(
                    texts.iter().map(|t| (*t).to_owned()).collect(),
                )),
                control,
            })
            .await
    }
}

fn values(rows: &Rows) -> Vec<&[u8]> {
    rows.values.iter().map(|v| v.as_deref().unwrap()).collect()
}

#[tokio::test]
async fn repeated_rows_are_computed_once_and_come_back_in_order() {
    let h = harness(BackendKind::Builtin, CachePolicy::builtin());
    let r = h
        .rows(&["a", "b", "a"], CacheControl::default())
        .await
        .unwrap();
    assert_eq!(values(&r), [&b"a"[..], b"b", b"a"]);
    assert_eq!((r.hits(), r.misses(), r.outcome()), (0, 3, Outcome::Miss));
    assert_eq!(h.echo.calls(), [vec!["a".to_owned(), "b".to_owned()]]);
    assert_eq!(r.keys[0], r.keys[2]);
    assert_ne!(r.keys[0], r.keys[1]);
    let r = h.rows(&["b", "c"], CacheControl::default()).await.unwrap();
    assert_eq!(r.sources, [RowSource::Hit, RowSource::Computed]);
    assert_eq!(r.outcome(), Outcome::Partial);
    assert_eq!(h.echo.rows(), 3);
    assert_eq!(h.observed.0.load(Ordering::SeqCst), 2);
}

/// Eight requests of distinct rows at once through `infer`: the most backend calls that
/// ran at once.
async fn peak_calls(h: &Harness, infer: &Infer, round: usize) -> usize {
    h.echo.slow.store(true, Ordering::SeqCst);
    h.echo.peak.store(0, Ordering::SeqCst);
    let model = Arc::clone(infer.models().get("echo").unwrap());
    let requests = (0..8).map(|i| {
        infer.rows(RowRequest {
            model: Arc::clone(&model),
            tenant: "t".into(),
            inputs: Arc::new(Inputs::texts(vec![format!("{round}-{i}")])),
            control: CacheControl::default(),
        })
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().sources, [RowSource::Computed]);
    }
    h.echo.peak.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_limit_bounds_backend_calls_across_requests() {
    let h = harness(BackendKind::HttpJson, CachePolicy::default());
    assert_eq!(h.infer.call_limit(), None);
    assert!(
        peak_calls(&h, &h.infer, 0).await > 2,
        "unbounded, the calls overlap"
    );
    let limited = h.infer.clone().with_call_limit(2);
    assert_eq!(limited.call_limit(), Some(2));
    assert_eq!(peak_calls(&h, &limited, 1).await, 2);
    assert_eq!(h.echo.rows(), 16);
}

#[tokio::test]
async fn rows_past_max_batch_go_in_chunks_and_keep_their_order() {
    let policy = CachePolicy {
        max_batch: Some(3),
        ..CachePolicy::default()
    };
    let h = harness(BackendKind::HttpJson, policy);
    let texts: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let r = h.rows(&refs, CacheControl::default()).await.unwrap();
    let got: Vec<String> = r
        .values
        .iter()
        .map(|v| String::from_utf8(v.as_ref().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(got, texts);
    let sizes: Vec<usize> = h.echo.calls().iter().map(Vec::len).collect();
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 3, 3, 3]);
}

#[tokio::test]
async fn a_value_the_backend_refuses_is_returned_but_not_kept() {
    let h = harness(BackendKind::Ersilia, CachePolicy::default());
    let r = h
        .rows(&["refused", "kept"], CacheControl::default())
        .await
        .unwrap();
    assert_eq!(values(&r), [&b"refused"[..], b"kept"]);
    let r = h
        .rows(&["refused", "kept"], CacheControl::default())
        .await
        .unwrap();
    assert_eq!(r.sources, [RowSource::Computed, RowSource::Hit]);
}

#[tokio::test]
async fn a_model_that_is_not_deterministic_computes_every_row_every_time() {
    let policy = CachePolicy {
        deterministic: false,
        ..CachePolicy::default()
    };
    let h = harness(BackendKind::HttpJson, policy);
    for _ in 0..2 {
        let r = h.rows(&["a", "a"], CacheControl::default()).await.unwrap();
        assert!(r.keys.is_empty());
        assert_eq!(r.sources, [RowSource::Computed; 2]);
    }
    assert_eq!(h.echo.rows(), 4);
    let only = CacheControl {
        only_if_cached: true,
        ..CacheControl::default()
    };
    let e = h.rows(&["a"], only).await.unwrap_err();
    assert!(
        matches!(
            e,
            InferError::NotCached {
                misses: 1,
                total: 1
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn only_if_cached_and_cache_only_never_compute() {
    let h = harness(BackendKind::Builtin, CachePolicy::builtin());
    h.rows(&["a"], CacheControl::default()).await.unwrap();
    let only = CacheControl {
        only_if_cached: true,
        ..CacheControl::default()
    };
    let e = h.rows(&["a", "b", "b"], only).await.unwrap_err();
    assert!(
        matches!(
            e,
            InferError::NotCached {
                misses: 2,
                total: 3
            }
        ),
        "{e}"
    );
    let cache_only = CacheControl {
        cache_only: true,
        ..CacheControl::default()
    };
    let r = h.rows(&["a", "b"], cache_only).await.unwrap();
    assert_eq!(r.sources, [RowSource::Hit, RowSource::Absent]);
    assert_eq!(r.values[1], None);
    assert_eq!(h.echo.rows(), 1);
}

#[tokio::test]
async fn a_failing_model_is_answered_with_stale_rows_within_its_window() {
    let policy = CachePolicy {
        ttl: Some(Duration::from_secs(10)),
        stale_if_error: Some(Duration::from_secs(60)),
        ..CachePolicy::default()
    };
    let h = harness(BackendKind::HttpJson, policy);
    h.rows(&["a"], CacheControl::default()).await.unwrap();
    h.clock.advance(Duration::from_secs(20));
    h.echo.fail.store(true, Ordering::SeqCst);
    let r = h.rows(&["a"], CacheControl::default()).await.unwrap();
    assert_eq!(
        (r.sources[0], r.stale()),
        (RowSource::Stale(Stale::IfError), 1)
    );
    assert_eq!(values(&r), [&b"a"[..]]);
    let no_cache = CacheControl {
        options: RequestOptions {
            no_cache: true,
            ..RequestOptions::default()
        },
        ..CacheControl::default()
    };
    let e = h.rows(&["a"], no_cache).await.unwrap_err();
    assert!(
        matches!(e, InferError::Backend(BackendError::Upstream(_))),
        "{e}"
    );
    h.clock.advance(Duration::from_secs(60));
    let e = h.rows(&["a"], CacheControl::default()).await.unwrap_err();
    assert!(
        matches!(e, InferError::Backend(BackendError::Upstream(_))),
        "{e}"
    );
}

#[tokio::test]
async fn a_row_within_stale_while_revalidate_is_served_at_once_and_refreshed_once() {
    let policy = CachePolicy {
        ttl: Some(Duration::from_secs(10)),
        stale_while_revalidate: Some(Duration::from_secs(60)),
        ..CachePolicy::default()
    };
    let h = harness(BackendKind::HttpJson, policy);
    h.rows(&["a"], CacheControl::default()).await.unwrap();
    h.clock.advance(Duration::from_secs(20));
    let requests = (0..8).map(|_| h.rows(&["a"], CacheControl::default()));
    let answered = futures_util::future::join_all(requests).await;
    let sources: Vec<RowSource> = answered
        .into_iter()
        .map(|r| r.unwrap().sources[0])
        .collect();
    assert_eq!(sources[0], RowSource::Stale(Stale::WhileRevalidate));
    assert!(
        sources
            .iter()
            .all(|s| matches!(s, RowSource::Stale(Stale::WhileRevalidate) | RowSource::Hit)),
        "{sources:?}"
    );
    let mut waited = 0;
    while h
        .rows(&["a"], CacheControl::default())
        .await
        .unwrap()
        .sources[0]
        != RowSource::Hit
    {
        waited += 1;
        assert!(waited < 200, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.echo.rows(), 2, "the first computation and one refresh");
    // Past the request's own window (zero here) the row is computed before answering.
    h.clock.advance(Duration::from_secs(20));
    let no_window = CacheControl {
        options: RequestOptions {
            stale_while_revalidate: Some(Duration::ZERO),
            ..RequestOptions::default()
        },
        ..CacheControl::default()
    };
    let r = h.rows(&["a"], no_window).await.unwrap();
    assert_eq!(r.sources, [RowSource::Computed]);
    assert_eq!(h.echo.rows(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hung_upstream_gets_stale_rows_within_the_budget() {
    let policy = CachePolicy {
        ttl: Some(Duration::from_secs(10)),
        stale_if_error: Some(Duration::from_secs(60)),
        ..CachePolicy::default()
    };
    let h = harness(BackendKind::HttpJson, policy);
    h.rows(&["a"], CacheControl::default()).await.unwrap();
    h.clock.advance(Duration::from_secs(20));
    h.echo.hang.store(true, Ordering::SeqCst);
    let r = h.rows(&["a"], CacheControl::default()).await.unwrap();
    assert_eq!(r.sources, [RowSource::Stale(Stale::IfError)]);
    let e = h
        .rows(&["never"], CacheControl::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            InferError::Backend(BackendError::Upstream(UpstreamError::Timeout { .. }))
        ),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_upstream_is_answered_within_the_budget_naming_the_model() {
    let h = harness(BackendKind::HttpJson, CachePolicy::default());
    h.echo.hang.store(true, Ordering::SeqCst);
    let e = h.rows(&["a"], CacheControl::default()).await.unwrap_err();
    let InferError::Backend(BackendError::Upstream(UpstreamError::Timeout { model, timeout })) = e
    else {
        panic!("{e}");
    };
    assert_eq!(
        (model.as_str(), timeout),
        ("echo", answer_budget(Duration::from_secs(1)))
    );
}

#[test]
fn the_budget_leaves_a_tenth_at_most_a_second() {
    assert_eq!(
        answer_budget(Duration::from_secs(1)),
        Duration::from_millis(900)
    );
    assert_eq!(
        answer_budget(Duration::from_secs(30)),
        Duration::from_secs(29)
    );
}

#[tokio::test]
async fn rows_all_in_memory_are_answered_at_once_and_counted_as_the_full_path_counts() {
    let h = harness(BackendKind::Builtin, CachePolicy::builtin());
    let cache = h.infer.cache().unwrap().clone();
    let counts = || {
        let s = cache.stats();
        let m = &s.models["echo"];
        let tier = s.memory.as_ref().unwrap();
        (m.hits, m.memory_hits, m.misses, tier.hits, tier.misses)
    };
    h.rows(&["a", "b"], CacheControl::default()).await.unwrap();
    let after_miss = counts();
    // Every row in memory: the at-once path, one hit per distinct row.
    let r = h
        .rows(&["a", "b", "a"], CacheControl::default())
        .await
        .unwrap();
    assert_eq!(values(&r), [&b"a"[..], b"b", b"a"]);
    assert_eq!(r.sources, [RowSource::Hit; 3]);
    assert_eq!(r.keys.len(), 3);
    let (hits, memory_hits, misses, tier_hits, tier_misses) = counts();
    assert_eq!(
        (hits, memory_hits, misses, tier_hits, tier_misses),
        (
            after_miss.0 + 2,
            after_miss.1 + 2,
            after_miss.2,
            after_miss.3 + 2,
            after_miss.4
        )
    );
    // One row in memory, one not: the full path, which counts the hit once, not twice.
    let r = h.rows(&["a", "c"], CacheControl::default()).await.unwrap();
    assert_eq!(r.sources, [RowSource::Hit, RowSource::Computed]);
    let now = counts();
    assert_eq!(
        (now.0, now.1, now.3),
        (hits + 1, memory_hits + 1, tier_hits + 1)
    );
    assert_eq!(h.echo.rows(), 3);
    // `no-cache` never takes an entry, in memory or not.
    let control = CacheControl {
        options: RequestOptions {
            no_cache: true,
            ..RequestOptions::default()
        },
        ..CacheControl::default()
    };
    let r = h.rows(&["a"], control).await.unwrap();
    assert_eq!(r.sources, [RowSource::Computed]);
}

#[tokio::test]
async fn a_value_in_memory_that_does_not_fit_is_never_answered_at_once() {
    let h = harness(BackendKind::Builtin, CachePolicy::builtin());
    // A value the model's check refuses, in memory (as a foreign value promoted there
    // would be).
    h.echo.unfit_once.store(true, Ordering::SeqCst);
    let r = h.rows(&["a"], CacheControl::default()).await.unwrap();
    assert_eq!(values(&r), [&b"unfit"[..]]);
    // Not served from memory: the full path counts it corrupt and computes it afresh.
    let r = h.rows(&["a"], CacheControl::default()).await.unwrap();
    assert_eq!(values(&r), [&b"a"[..]]);
    assert_eq!(r.sources, [RowSource::Computed]);
    assert_eq!(h.echo.rows(), 2);
    // The fresh value replaced it: now a hit.
    let r = h.rows(&["a"], CacheControl::default()).await.unwrap();
    assert_eq!(values(&r), [&b"a"[..]]);
    assert_eq!(r.sources, [RowSource::Hit]);
}
