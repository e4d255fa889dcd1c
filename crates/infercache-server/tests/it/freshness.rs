//! One freshness rule on every path, over real HTTP: `max-age` against memory, disk and a
//! real Redis shared by two servers; stale-while-revalidate (answered at once, refreshed
//! once across requests and nodes); stale-if-error only when the upstream fails; and
//! Ersilia's failed rows, never kept. The upstreams are real HTTP servers on loopback that
//! count their calls.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use infercache_redis::testing::RedisServer;
use infercache_server::{ServeArgs, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::{Reply, Server, model};

/// A plain JSON upstream (`POST /score`): each output is `{"in": input, "call": n}`, `n`
/// the number of the call that computed it. It answers 500 while `failing`, and holds
/// every call until `open` is true.
struct Upstream {
    url: String,
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    open: watch::Sender<bool>,
}

impl Upstream {
    async fn start() -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (open, gate) = watch::channel(true);
        let (counted, fails) = (Arc::clone(&calls), Arc::clone(&failing));
        let app = Router::new().route(
            "/score",
            post(move |body: axum::Json<Value>| {
                let (counted, fails, mut gate) =
                    (Arc::clone(&counted), Arc::clone(&fails), gate.clone());
                async move {
                    let call = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.wait_for(|open| *open).await.unwrap();
                    if fails.load(Ordering::SeqCst) {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({ "error": "the model is down" })),
                        );
                    }
                    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                    let outputs: Vec<Value> = inputs
                        .iter()
                        .map(|i| json!({ "in": i, "call": call }))
                        .collect();
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({ "outputs": outputs })),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/score", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            calls,
            failing,
            open,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The configuration `serve --config FILE` resolves from a file holding `toml`.
fn from_file(toml: &str) -> ServerConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infercache.toml");
    std::fs::write(&path, toml).unwrap();
    ServerConfig::from_args(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap()
}

/// A server whose only model is `scorer` at `url` with the model keys `model_keys`, and
/// the top-level keys `top` (storage, Redis).
fn scorer(top: &str, url: &str, model_keys: &str) -> ServerConfig {
    from_file(&format!(
        "{top}\n\n[[models]]\nname = \"scorer\"\nbackend = \"http-json\"\nurl = \"{url}\"\n\
         retries = 0\n{model_keys}\n"
    ))
}

fn redis_top(redis: &RedisServer) -> String {
    format!(
        "no_disk = true\nredis = \"{}\"\nredis_timeout = \"1s\"",
        redis.url()
    )
}

fn disk_top(dir: &Path) -> String {
    format!("disk_dir = \"{}\"", dir.display())
}

async fn predict(s: &Server, headers: &[(&str, &str)], inputs: Value) -> Reply {
    s.post(
        "/v1/models/scorer/predict",
        headers,
        &json!({ "inputs": inputs }),
    )
    .await
}

/// The call that computed each output of `r`.
fn calls_of(r: &Reply) -> Vec<u64> {
    r.body["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("outputs: {}", r.body))
        .iter()
        .map(|o| o["call"].as_u64().unwrap())
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two servers on `redis` whose Redis tier is in use.
async fn pair(config: &ServerConfig) -> (Server, Server) {
    let a = Server::start(config.clone(), model().await).await;
    let b = Server::start(config.clone(), model().await).await;
    for s in [&a, &b] {
        wait_for(
            "the Redis tier in use",
            Duration::from_secs(5),
            async || {
                let r = s.get("/v1/cache/stats", &[]).await;
                r.body["tiers"]["redis"]["connected"] == true
            },
        )
        .await;
    }
    (a, b)
}

const MAX_AGE_1: [(&str, &str); 1] = [("cache-control", "max-age=1")];

/// Long enough for an entry to be older than `max-age=1` (ages are whole milliseconds).
const PAST_ONE_SECOND: Duration = Duration::from_millis(2100);

#[tokio::test]
async fn a_value_too_old_for_max_age_is_recomputed_from_memory() {
    let up = Upstream::start().await;
    let s = Server::start(scorer("no_disk = true", &up.url, ""), model().await).await;
    assert_eq!(
        predict(&s, &[], json!(["x"])).await.header("x-cache"),
        "MISS"
    );
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let r = predict(&s, &MAX_AGE_1, json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("MISS", vec![2]));
    let r = predict(&s, &[], json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("HIT", vec![2]));
    s.stop().await;
}

#[tokio::test]
async fn a_value_too_old_for_max_age_is_recomputed_from_disk() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = scorer(&disk_top(dir.path()), &up.url, "");
    let a = Server::start(config.clone(), model().await).await;
    assert_eq!(
        predict(&a, &[], json!(["x", "y"])).await.header("x-cache"),
        "MISS"
    );
    a.stop().await;
    // A new process: its memory is empty, its disk holds both rows.
    let b = Server::start(config, model().await).await;
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let r = predict(&b, &[], json!(["y"])).await;
    assert_eq!(
        (r.header("x-cache"), calls_of(&r)),
        ("HIT", vec![1]),
        "from disk"
    );
    let r = predict(&b, &MAX_AGE_1, json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("MISS", vec![2]));
    assert_eq!(up.calls(), 2);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_old_for_max_age_is_recomputed_from_redis_on_another_node() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (a, b) = pair(&scorer(&redis_top(&redis), &up.url, "")).await;
    assert_eq!(
        predict(&a, &[], json!(["x", "y"])).await.header("x-cache"),
        "MISS"
    );
    tokio::time::sleep(PAST_ONE_SECOND).await;
    // `b` has nothing of its own: both rows come from Redis, one with its lease.
    let r = predict(&b, &[], json!(["y"])).await;
    assert_eq!(
        (r.header("x-cache"), calls_of(&r)),
        ("HIT", vec![1]),
        "from Redis"
    );
    let r = predict(&b, &MAX_AGE_1, json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("MISS", vec![2]));
    // The recomputed value replaced the old one in Redis too.
    let r = predict(&a, &MAX_AGE_1, json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("HIT", vec![2]));
    assert_eq!(up.calls(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_across_two_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let config = scorer(
        &redis_top(&redis),
        &up.url,
        "ttl = \"1s\"\nstale_while_revalidate = \"1h\"",
    );
    let (a, b) = pair(&config).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    assert_eq!(
        predict(&a, &[], json!(["x"])).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        predict(&b, &[], json!(["x"])).await.header("x-cache"),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The upstream holds every call: each answer below comes without one.
    up.open.send_replace(false);
    let requests: Vec<_> = (0..16)
        .map(|i| {
            let s = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { predict(&s, &[], json!(["x"])).await })
        })
        .collect();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!((r.header("x-cache"), calls_of(&r)), ("STALE", vec![1]));
        assert_eq!(r.header("x-cache-stale"), "1");
    }
    wait_for(
        "the refresh reaches the upstream",
        Duration::from_secs(5),
        async || up.calls() == 2,
    )
    .await;
    up.open.send_replace(true);

    for s in [&a, &b] {
        wait_for("the refreshed value", Duration::from_secs(5), async || {
            let r = predict(s, &[], json!(["x"])).await;
            r.header("x-cache") == "HIT" && calls_of(&r) == [2]
        })
        .await;
    }
    assert_eq!(up.calls(), 2, "one refresh for 16 requests on two nodes");
    let stats = a.model_stats_of("scorer").await;
    assert!(stats["stale_served"].as_u64().unwrap() >= 1, "{stats}");
    for s in [a, b] {
        Arc::into_inner(s).unwrap().stop().await;
    }
}

#[tokio::test]
async fn stale_if_error_serves_a_stale_row_only_when_the_upstream_fails() {
    let up = Upstream::start().await;
    let config = scorer(
        "no_disk = true",
        &up.url,
        "ttl = \"1s\"\nstale_if_error = \"1h\"",
    );
    let s = Server::start(config, model().await).await;
    assert_eq!(
        predict(&s, &[], json!(["x"])).await.header("x-cache"),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past its ttl with a healthy upstream: recomputed, never stale.
    let r = predict(&s, &[], json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("MISS", vec![2]));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    up.failing.store(true, Ordering::SeqCst);
    let r = predict(&s, &[], json!(["x"])).await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (200, "STALE"),
        "{}",
        r.body
    );
    assert_eq!((calls_of(&r), r.header("x-cache-stale")), (vec![2], "1"));
    // The request's own window overrides the model's.
    let r = predict(&s, &[("cache-control", "stale-if-error=0")], json!(["x"])).await;
    assert_eq!((r.status, r.code()), (502, "upstream_error"), "{}", r.body);
    // A row never cached has nothing to stand in.
    let r = predict(&s, &[], json!(["x", "never cached"])).await;
    assert_eq!((r.status, r.code()), (502, "upstream_error"), "{}", r.body);
    s.stop().await;
}

#[tokio::test]
async fn the_request_directive_stale_while_revalidate_serves_stale_and_refreshes() {
    let up = Upstream::start().await;
    let s = Server::start(scorer("no_disk = true", &up.url, ""), model().await).await;
    assert_eq!(
        predict(&s, &[], json!(["x"])).await.header("x-cache"),
        "MISS"
    );
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let swr = [("cache-control", "max-age=1, stale-while-revalidate=3600")];
    let r = predict(&s, &swr, json!(["x"])).await;
    assert_eq!((r.header("x-cache"), calls_of(&r)), ("STALE", vec![1]));
    wait_for("the refreshed value", Duration::from_secs(5), async || {
        let r = predict(&s, &MAX_AGE_1, json!(["x"])).await;
        r.header("x-cache") == "HIT" && calls_of(&r) == [2]
    })
    .await;
    assert_eq!(up.calls(), 2);
    let bad = predict(
        &s,
        &[("cache-control", "stale-while-revalidate=soon")],
        json!(["x"]),
    )
    .await;
    assert_eq!(
        (bad.status, bad.code()),
        (400, "invalid_cache_control"),
        "{}",
        bad.body
    );
    s.stop().await;
}

/// An ersilia-pack server (`POST /run`): an input starting with `!` is one the model fails
/// on (a row of nulls). Counts the inputs it is sent.
async fn ersilia() -> (String, Arc<AtomicUsize>) {
    let rows = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&rows);
    let app = Router::new().route(
        "/run",
        post(move |body: axum::Json<Vec<String>>| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(body.len(), Ordering::SeqCst);
                let rows: Vec<Value> = body
                    .iter()
                    .map(|t| match t.strip_prefix('!') {
                        Some(_) => json!({ "mw": null, "logp": null }),
                        None => json!({ "mw": t.len(), "logp": 1.5 }),
                    })
                    .collect();
                axum::Json(rows)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ersilia_row_of_nulls_is_never_a_hit_nor_on_another_node() {
    let redis = RedisServer::start();
    let (url, rows) = ersilia().await;
    let config = from_file(&format!(
        "{}\n\n[[models]]\nname = \"eos\"\nbackend = \"ersilia\"\nurl = \"{url}\"\n",
        redis_top(&redis)
    ));
    let (a, b) = pair(&config).await;
    let first = a
        .post("/v1/models/eos/run", &[], &json!(["!bad", "CCO"]))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.body,
        json!([{"mw": null, "logp": null}, {"mw": 3, "logp": 1.5}])
    );
    for s in [&a, &b, &a] {
        let r = s.post("/v1/models/eos/run", &[], &json!(["!bad"])).await;
        assert_eq!((r.status, r.header("x-cache")), (200, "MISS"), "{}", r.body);
        assert_eq!(r.body, json!([{"mw": null, "logp": null}]));
    }
    let r = b.post("/v1/models/eos/run", &[], &json!(["CCO"])).await;
    assert_eq!(r.header("x-cache"), "HIT", "a good row is shared");
    assert_eq!(
        rows.load(Ordering::SeqCst),
        5,
        "`!bad` four times, `CCO` once"
    );
    let stats = a.model_stats_of("eos").await;
    assert_eq!(stats["not_stored"], 3, "{stats}");
    a.stop().await;
    b.stop().await;
}
