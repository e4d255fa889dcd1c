//! Two servers sharing one real Redis: shared hits, invalidation everywhere, one model
//! invocation for concurrent identical requests, a Redis killed under load, and the
//! managed local Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infercache_engine::LocalReads;
use infercache_model::BuiltinModel;
use infercache_redis::testing::{RedisServer, RedisServerOptions};
use infercache_server::ServerConfig;
use infercache_server::config::{RedisSettings, RedisTarget};
use serde_json::{Value, json};

use crate::process::ChildServer;
use crate::support::{Server, model};

/// A server on `target`. Timeouts of 1 s: the model keeps both cores of a CI machine busy,
/// and these tests are not about a slow Redis (the fault test sets its own).
fn config(target: RedisTarget) -> ServerConfig {
    ServerConfig {
        redis: Some(RedisSettings {
            target,
            prefix: "infercache:".into(),
            write_back_queue: None,
            timeout: Duration::from_secs(1),
            local_reads: LocalReads::default(),
            ca_file: None,
        }),
        ..ServerConfig::default()
    }
}

/// Two servers on one Redis, each with its own model.
async fn pair(redis: &RedisServer) -> (Server, Arc<BuiltinModel>, Server, Arc<BuiltinModel>) {
    pair_with(redis, Duration::from_secs(1)).await
}

/// Two servers whose Redis tier is in use (connected, epochs in sync).
async fn pair_with(
    redis: &RedisServer,
    timeout: Duration,
) -> (Server, Arc<BuiltinModel>, Server, Arc<BuiltinModel>) {
    let (ma, mb) = (model().await, model().await);
    let mut cfg = config(RedisTarget::Url(redis.url()));
    cfg.redis.as_mut().unwrap().timeout = timeout;
    let a = Server::start(cfg.clone(), Arc::clone(&ma)).await;
    let b = Server::start(cfg, Arc::clone(&mb)).await;
    for s in [&a, &b] {
        wait_for(
            "the Redis tier in use",
            Duration::from_secs(5),
            async || redis_stats(s).await["connected"] == true,
        )
        .await;
    }
    (a, ma, b, mb)
}

fn texts(m: &BuiltinModel) -> u64 {
    crate::support::texts(m)
}

async fn redis_stats(s: &Server) -> Value {
    let r = s.get("/v1/cache/stats", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["tiers"]["redis"].clone()
}

/// Waits until both servers of a pair listen on the epoch channel.
async fn both_subscribed(redis: &RedisServer) {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    wait_for("both subscribed", Duration::from_secs(5), async || {
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("infercache:epochs")
            .query_async(&mut c)
            .await
            .unwrap();
        n[0].1 >= 2
    })
    .await;
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_server_is_a_hit_on_the_other() {
    let redis = RedisServer::start();
    let (a, ma, b, mb) = pair(&redis).await;
    let first = a.embed(&[], json!(["shared across nodes"])).await;
    assert_eq!((first.status, first.header("x-cache")), (200, "MISS"));
    let second = b.embed(&[], json!(["shared across nodes"])).await;
    assert_eq!((second.status, second.header("x-cache")), (200, "HIT"));
    assert_eq!(
        first.body["data"], second.body["data"],
        "bit-identical vectors"
    );
    assert_eq!((texts(&ma), texts(&mb)), (1, 0));
    let stats = redis_stats(&b).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["breaker"].as_str()),
        (Some(1), Some("closed"))
    );
    let ready = b.get("/readyz", &[]).await;
    assert_eq!(ready.body["redis"]["breaker"], "closed", "{}", ready.body);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_server_reaches_the_other_within_a_second() {
    let redis = RedisServer::start();
    let (a, _ma, b, mb) = pair(&redis).await;
    assert_eq!(
        b.embed(&[], json!(["to invalidate"]))
            .await
            .header("x-cache"),
        "MISS"
    );
    let only_cached = [("cache-control", "only-if-cached")];
    assert_eq!(
        a.embed(&only_cached, json!(["to invalidate"])).await.status,
        200
    );
    // Both nodes subscribed to the epoch channel before the invalidation is made.
    both_subscribed(&redis).await;
    let r = a
        .post(
            "/v1/cache/invalidate",
            &[],
            &json!({"scope": "model", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let took = wait_for("B drops the entry", Duration::from_secs(1), async || {
        b.embed(&only_cached, json!(["to invalidate"])).await.status == 504
    })
    .await;
    eprintln!("the invalidation reached the other server in {took:?}");
    let before = texts(&mb);
    assert_eq!(
        b.embed(&[], json!(["to invalidate"]))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(texts(&mb), before + 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_kept_on_one_server_is_not_replayed_after_an_invalidation_on_the_other() {
    let redis = RedisServer::start();
    let (a, _ma, b, mb) = pair(&redis).await;
    let replayed = "infercache_replayed_responses_total{model=\"all-MiniLM-L6-v2\"}";
    for _ in 0..4 {
        let r = b.embed(&[], json!("kept on one node")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(crate::metrics::metric(&b, replayed).await, 1.0);
    both_subscribed(&redis).await;
    let r = a
        .post(
            "/v1/cache/invalidate",
            &[],
            &json!({"scope": "model", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Until the new epoch arrives B may still answer from its entry; once it has, the kept
    // response is not used: the request is computed again.
    wait_for(
        "B computes the row again",
        Duration::from_secs(2),
        async || {
            b.embed(&[], json!("kept on one node"))
                .await
                .header("x-cache")
                == "MISS"
        },
    )
    .await;
    assert_eq!(texts(&mb), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_to_both_servers_run_the_model_once() {
    let redis = RedisServer::start();
    let (a, ma, b, mb) = pair(&redis).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    for round in 0..3 {
        let text = format!("one computation for the whole fleet, round {round}");
        let before = texts(&ma) + texts(&mb);
        let mut tasks = Vec::new();
        for i in 0..10 {
            let server = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let text = text.clone();
            tasks.push(tokio::spawn(async move {
                server.embed(&[], json!([text])).await
            }));
        }
        let mut vectors = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            vectors.push(r.body["data"][0]["embedding"].clone());
        }
        assert!(vectors.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(texts(&ma) + texts(&mb) - before, 1, "round {round}");
    }
    Arc::try_unwrap(a).ok().unwrap().stop().await;
    Arc::try_unwrap(b).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fails_no_request_and_is_used_again_when_back() {
    let mut redis = RedisServer::start_with(RedisServerOptions { appendonly: true });
    // The default timeout: a dead Redis must not slow requests down.
    let (a, _ma, b, _mb) = pair_with(&redis, Duration::from_millis(50)).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for client in 0..4u64 {
        let (a, b, stop) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&stop));
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let server = if (i + client).is_multiple_of(2) {
                    &a
                } else {
                    &b
                };
                // Half repeats (hits), half new texts (model, then Redis writes), on both.
                let text = if (i / 2).is_multiple_of(2) {
                    format!("repeated {}", i % 10)
                } else {
                    format!("client {client} new {i}")
                };
                let r = server.embed(&[], json!([text])).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {} {}", r.status, r.body);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill9();
    wait_for("A's breaker opens", Duration::from_secs(5), async || {
        redis_stats(&a).await["breaker"] == "open"
    })
    .await;
    wait_for("B's breaker opens", Duration::from_secs(5), async || {
        redis_stats(&b).await["breaker"] == "open"
    })
    .await;
    let ready = a.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "a node without Redis still serves");
    assert_eq!(ready.body["redis"]["breaker"], "open");
    let metrics = a.get("/metrics", &[]).await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("redis_breaker_state{state=\"open\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    redis.restart();
    let back = Instant::now();
    wait_for(
        "both nodes use Redis again",
        Duration::from_secs(5),
        async || {
            let (sa, sb) = (redis_stats(&a).await, redis_stats(&b).await);
            sa["breaker"] == "closed"
                && sb["breaker"] == "closed"
                && sa["connected"] == true
                && sb["connected"] == true
        },
    )
    .await;
    // The tier is in use again: a value computed on A is a Redis hit on B.
    let probe = "written after Redis came back";
    assert_eq!(a.embed(&[], json!([probe])).await.header("x-cache"), "MISS");
    let hit = b.embed(&[], json!([probe])).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    let used_again = back.elapsed();
    assert!(used_again < Duration::from_secs(5), "{used_again:?}");
    eprintln!("Redis tier used again {used_again:?} after Redis came back");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 20, "the load ran: {ok}");
    for s in [&a, &b] {
        let stats = redis_stats(s).await;
        assert!(stats["breaker_opened"].as_u64() >= Some(1), "{stats}");
        assert!(stats["errors"].as_u64() >= Some(1), "{stats}");
        let metrics = s.get("/metrics", &[]).await.body;
        let metrics = metrics.as_str().unwrap();
        assert!(
            metrics.contains("redis_breaker_state{state=\"closed\"} 1"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("redis_breaker_opened_total 0"),
            "{metrics}"
        );
    }
    Arc::try_unwrap(a).ok().unwrap().stop().await;
    Arc::try_unwrap(b).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auto_starts_a_configured_local_redis_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RedisTarget::Auto {
        memory_fraction: 0.1,
        dir: dir.path().join("redis"),
    });
    let server = Server::start(cfg, model().await).await;
    wait_for(
        "the managed Redis in use",
        Duration::from_secs(5),
        async || redis_stats(&server).await["connected"] == true,
    )
    .await;
    assert_eq!(
        server
            .embed(&[], json!(["stored in the managed redis"]))
            .await
            .status,
        200
    );
    let stats = redis_stats(&server).await;
    let url = stats["endpoint"].as_str().unwrap().to_owned();
    assert!(url.starts_with("redis://127.0.0.1:"), "{url}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let get = async |c: &mut redis::aio::MultiplexedConnection, name: &str| -> String {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(c)
            .await
            .unwrap();
        v[1].clone()
    };
    assert_eq!(get(&mut c, "maxmemory-policy").await, "allkeys-lru");
    assert_eq!(get(&mut c, "appendonly").await, "yes");
    assert_eq!(get(&mut c, "appendfsync").await, "everysec");
    assert_eq!(get(&mut c, "save").await, "");
    let maxmemory: u64 = get(&mut c, "maxmemory").await.parse().unwrap();
    let ram = infercache_engine::total_ram().unwrap();
    assert_eq!(maxmemory, (ram as f64 * 0.1) as u64);
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert!(keys >= 1, "the value is stored there: {keys}");
    drop(c);
    server.stop().await;
    assert!(
        redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err(),
        "stopped with the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_while_redis_is_down_answers_202_pending() {
    let mut redis = RedisServer::start();
    let (a, _ma, b, _mb) = pair(&redis).await;
    let r = a.embed(&[], json!(["removed while Redis is down"])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = r.body["cache"]["keys"][0].as_str().unwrap().to_owned();
    redis.kill9();
    let delete =
        || infercache_core::tls::client().delete(format!("{}/v1/cache/entries/{key}", a.url));
    let d = a.send(delete(), &[]).await;
    assert_eq!(d.status, 202, "{}", d.body);
    assert_eq!(
        (d.body["pending"].clone(), d.body["removed"].clone()),
        (json!(true), json!(true))
    );
    // This node no longer serves it.
    let again = a.embed(&[], json!(["removed while Redis is down"])).await;
    assert_eq!(again.header("x-cache"), "MISS");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reads_follow_the_flag_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let model = model().await;
    let with = |local_reads: LocalReads| {
        let mut cfg = config(RedisTarget::Url(redis.url()));
        let settings = cfg.redis.as_mut().unwrap();
        settings.local_reads = local_reads;
        settings.timeout = Duration::from_millis(200);
        cfg
    };
    let grace = Duration::from_millis(500);
    let in_sync = Server::start(with(LocalReads::InSync { grace }), Arc::clone(&model)).await;
    let always = Server::start(with(LocalReads::Always), Arc::clone(&model)).await;
    // Each node its own text, so each holds it in its own memory.
    let (text_a, text_b) = (json!(["kept by in-sync"]), json!(["kept by always"]));
    for (s, text) in [(&in_sync, &text_a), (&always, &text_b)] {
        wait_for("in sync", Duration::from_secs(5), async || {
            sync_stats(s).await["in_sync"] == true
        })
        .await;
        assert_eq!(s.embed(&[], text.clone()).await.header("x-cache"), "MISS");
        assert_eq!(sync_stats(s).await["local_reads"], true);
    }
    redis.kill9();
    for s in [&in_sync, &always] {
        wait_for("out of sync", Duration::from_secs(5), async || {
            sync_stats(s).await["in_sync"] == false
        })
        .await;
    }
    // Past the grace the in-sync node computes rather than trust its memory...
    wait_for("local reads stop", Duration::from_secs(5), async || {
        sync_stats(&in_sync).await["local_reads"] == false
    })
    .await;
    let r = in_sync.embed(&[], text_a).await;
    assert_eq!((r.status, r.header("x-cache")), (200, "MISS"));
    assert!(sync_stats(&in_sync).await["local_reads_skipped"].as_u64() >= Some(1));
    // ...while `always` serves it, for availability.
    tokio::time::sleep(grace).await;
    let r = always.embed(&[], text_b).await;
    assert_eq!((r.status, r.header("x-cache")), (200, "HIT"));
    let sync = sync_stats(&always).await;
    assert_eq!(
        (&sync["local_reads"], &sync["in_sync"]),
        (&json!(true), &json!(false))
    );
    in_sync.stop().await;
    always.stop().await;
}

async fn sync_stats(s: &Server) -> Value {
    let r = s.get("/v1/cache/stats", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["sync"].clone()
}

/// A plain JSON upstream whose every output says which upstream computed it.
async fn labelled_upstream(label: &'static str) -> (String, Arc<AtomicU64>) {
    let rows = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&rows);
    let app = axum::Router::new().route(
        "/score",
        axum::routing::post(move |body: axum::Json<Value>| {
            let counted = Arc::clone(&counted);
            async move {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                counted.fetch_add(inputs.len() as u64, Ordering::SeqCst);
                let outputs: Vec<Value> = inputs
                    .iter()
                    .map(|i| json!({ "in": i, "from": label }))
                    .collect();
                axum::Json(json!({ "outputs": outputs }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rows)
}

/// A server process on `redis` whose only model is `scorer`, an `http-json` model at
/// `url`, once its Redis tier is in use.
async fn scorer_on(redis: &RedisServer, url: &str) -> ChildServer {
    let s = ChildServer::start(&format!(
        r#"
        no_disk = true
        redis = "{}"
        redis_timeout = "1s"

        [[models]]
        name = "scorer"
        backend = "http-json"
        url = "{url}/score"
        "#,
        redis.url()
    ));
    let client = infercache_core::tls::client();
    wait_for(
        "the Redis tier in use",
        Duration::from_secs(10),
        async || {
            let stats: Value = client
                .get(format!("{}/v1/cache/stats", s.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            stats["tiers"]["redis"]["connected"] == true
        },
    )
    .await;
    s
}

/// `POST /v1/models/scorer/predict` of the row `"x"` to `s`: the answer's `X-Cache` and
/// which upstream computed it.
async fn score_x(s: &ChildServer) -> (String, Value) {
    let r = infercache_core::tls::client()
        .post(format!("{}/v1/models/scorer/predict", s.url))
        .json(&json!({ "inputs": ["x"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    (cache, body["outputs"][0]["from"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_with_one_model_name_but_other_upstreams_never_share_rows() {
    let redis = RedisServer::start();
    let (url_a, rows_a) = labelled_upstream("a").await;
    let (url_b, rows_b) = labelled_upstream("b").await;
    // Two server processes: the same model name and version on one Redis, other upstreams.
    let a = scorer_on(&redis, &url_a).await;
    let b = scorer_on(&redis, &url_b).await;

    assert_eq!(score_x(&a).await, ("MISS".into(), json!("a")));
    assert_eq!(score_x(&b).await, ("MISS".into(), json!("b")));
    assert_eq!(score_x(&b).await, ("HIT".into(), json!("b")));
    assert_eq!(
        (rows_a.load(Ordering::SeqCst), rows_b.load(Ordering::SeqCst)),
        (1, 1)
    );

    // A third process with A's upstream shares A's rows through Redis.
    let c = scorer_on(&redis, &url_a).await;
    assert_eq!(score_x(&c).await, ("HIT".into(), json!("a")));
    assert_eq!(rows_a.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_vector_of_the_wrong_length_is_a_miss_counted_as_corrupt() {
    let redis = RedisServer::start();
    let (a, _ma, b, mb) = pair(&redis).await;
    let first = a.embed(&[], json!(["a foreign value"])).await;
    assert_eq!((first.status, first.header("x-cache")), (200, "MISS"));
    let key: infercache_core::Digest = first.body["cache"]["keys"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {}", first.body))
        .parse()
        .unwrap();

    // Another writer stores three floats under that key, in the tier's own format.
    let tier = infercache_redis::RedisTier::connect(
        infercache_redis::RedisConfig::new(infercache_redis::Target::Single(redis.url())),
        infercache_core::SystemClock::shared(),
    )
    .unwrap();
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let foreign = infercache_redis::codec::encode(
        &key,
        &infercache_engine::RemoteEntry {
            value: infercache_backend::vector::encode(&[1.0, 2.0, 3.0]),
            created_ms: now,
            expires_ms: None,
        },
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(tier.value_key(&key))
        .arg(foreign)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A node that has the key only in Redis refuses the value, counts it and recomputes.
    let second = b.embed(&[], json!(["a foreign value"])).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("x-cache"), "MISS");
    assert_eq!(
        second.body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        384
    );
    assert_eq!(first.body["data"], second.body["data"]);
    assert_eq!(texts(&mb), 1);
    assert_eq!(b.model_stats(&[]).await["corrupt"], 1);
    let metrics = b.get("/metrics", &[]).await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("infercache_model_lookups_total")
                && l.contains("outcome=\"corrupt\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // The recomputed value replaced it.
    let third = b.embed(&[], json!(["a foreign value"])).await;
    assert_eq!(third.header("x-cache"), "HIT");
    assert_eq!(first.body["data"], third.body["data"]);
    a.stop().await;
    b.stop().await;
}
