//! `GET /metrics` of real servers sharing a real Redis, read before and after the events
//! each metric counts: stale rows of both kinds, a refresh, a value not stored, Redis
//! error replies, removals pending, replayed and received, and the epoch sync gauges
//! through an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use infercache_redis::testing::{RedisServer, RedisServerOptions};
use infercache_server::{ServeArgs, ServerConfig};
use serde_json::{Value, json};

use crate::support::{Server, model};

/// A JSON upstream at `/score` (each output names the call that computed it, 500 while
/// `failing`) and an ersilia-pack one at `/run` (an input starting with `!` is a row of
/// nulls).
async fn upstream() -> (String, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let fails = Arc::clone(&failing);
    let app = Router::new()
        .route(
            "/score",
            post(move |body: axum::Json<Value>| {
                let (fails, calls) = (Arc::clone(&fails), Arc::clone(&calls));
                async move {
                    let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if fails.load(Ordering::SeqCst) {
                        let e = json!({ "error": "down" });
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(e));
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
        )
        .route(
            "/run",
            post(|body: axum::Json<Vec<String>>| async move {
                let rows: Vec<Value> = body
                    .iter()
                    .map(|t| match t.strip_prefix('!') {
                        Some(_) => json!({ "mw": null }),
                        None => json!({ "mw": t.len() }),
                    })
                    .collect();
                axum::Json(rows)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, failing)
}

fn config(redis: &RedisServer, url: &str) -> ServerConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infercache.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            no_disk = true
            redis = "{redis}"
            redis_timeout = "200ms"
            redis_local_grace = "1s"

            [[models]]
            name = "scorer"
            backend = "http-json"
            url = "{url}/score"
            retries = 0
            ttl = "1s"
            stale_while_revalidate = "1h"
            stale_if_error = "1h"

            [[models]]
            name = "eos"
            backend = "ersilia"
            url = "{url}"
            "#,
            redis = redis.url()
        ),
    )
    .unwrap();
    ServerConfig::from_args(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap()
}

/// The value of the series `series` (its name, and its labels as written if it has any) in `s`'s `/metrics`.
pub async fn metric(s: &Server, series: &str) -> f64 {
    let r = s.get("/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            // A series without labels is written `name{} value`.
            rest.strip_prefix("{}").unwrap_or(rest).strip_prefix(' ')
        })
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
        .parse()
        .unwrap()
}

async fn wait_for_metric(s: &Server, series: &str, want: impl Fn(f64) -> bool) {
    let start = Instant::now();
    loop {
        let v = metric(s, series).await;
        if want(v) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "`{series}` stays at {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn predict(s: &Server, headers: &[(&str, &str)], input: &str) -> Value {
    let r = s
        .post(
            "/v1/models/scorer/predict",
            headers,
            &json!({ "inputs": [input] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    json!({ "x-cache": r.header("x-cache"), "call": r.body["outputs"][0]["call"] })
}

/// `DELETE /v1/cache/entries/{key}` of some key.
async fn delete(s: &Server) -> crate::support::Reply {
    let url = format!("{}/v1/cache/entries/{}", s.url, "ab".repeat(32));
    s.send(infercache_core::tls::client().delete(url), &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_stale_rows_refreshes_failed_rows_error_replies_removals_and_sync() {
    let mut redis = RedisServer::start_with(RedisServerOptions { appendonly: true });
    let (url, failing) = upstream().await;
    let cfg = config(&redis, &url);
    let a = Server::start(cfg.clone(), model().await).await;
    let b = Server::start(cfg, model().await).await;
    for s in [&a, &b] {
        wait_for_metric(s, "infercache_epochs_in_sync", |v| v == 1.0).await;
    }
    assert_eq!(metric(&a, "infercache_local_reads_enabled").await, 1.0);
    assert_eq!(metric(&a, "infercache_epochs_unsynced_seconds").await, 0.0);
    assert_eq!(metric(&a, "infercache_redis_removals_pending").await, 0.0);

    // Stale-while-revalidate: served stale, refreshed once.
    let swr = r#"infercache_stale_served_total{model="scorer",kind="while_revalidate"}"#;
    let if_error = r#"infercache_stale_served_total{model="scorer",kind="if_error"}"#;
    let refreshes = r#"infercache_refreshes_total{model="scorer"}"#;
    assert_eq!(metric(&a, swr).await, 0.0);
    assert_eq!(predict(&a, &[], "x").await["x-cache"], "MISS");
    assert_eq!(metric(&a, refreshes).await, 0.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(predict(&a, &[], "x").await["x-cache"], "STALE");
    assert_eq!(metric(&a, swr).await, 1.0);
    wait_for_metric(&a, refreshes, |v| v == 1.0).await;

    // Stale-if-error: the request allows no revalidation, the upstream fails.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failing.store(true, Ordering::SeqCst);
    let r = predict(&a, &[("cache-control", "stale-while-revalidate=0")], "x").await;
    assert_eq!(r["x-cache"], "STALE");
    assert_eq!(
        (metric(&a, if_error).await, metric(&a, swr).await),
        (1.0, 1.0)
    );
    failing.store(false, Ordering::SeqCst);

    // An Ersilia row of nulls is stored nowhere, and counted.
    let not_stored = r#"infercache_not_stored_total{model="eos"}"#;
    let r = a.post("/v1/models/eos/run", &[], &json!(["!bad"])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(metric(&a, not_stored).await, 1.0);

    // Error replies, by kind: a Redis out of memory under noeviction refuses writes.
    let oom = r#"infercache_redis_error_replies_total{kind="oom"}"#;
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(predict(&a, &[], "under oom").await["x-cache"], "MISS");
    wait_for_metric(&a, oom, |v| v >= 1.0).await;
    assert_eq!(
        metric(&a, "infercache_redis_breaker_state{state=\"closed\"}").await,
        1.0
    );
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();

    // A removal on `a` reaches `b`.
    let received = "infercache_redis_removals_received_total";
    let before = metric(&b, received).await;
    let r = delete(&a).await;
    assert!(matches!(r.status, 200 | 404), "{} {}", r.status, r.body);
    wait_for_metric(&b, received, |v| v == before + 1.0).await;

    // Redis goes away: out of sync past the grace, local reads skipped, a removal pending.
    redis.kill9();
    wait_for_metric(&a, "infercache_epochs_in_sync", |v| v == 0.0).await;
    wait_for_metric(&a, "infercache_local_reads_enabled", |v| v == 0.0).await;
    assert!(metric(&a, "infercache_epochs_unsynced_seconds").await >= 1.0);
    let skipped = "infercache_local_reads_skipped_total";
    let before = metric(&a, skipped).await;
    predict(&a, &[], "x").await;
    assert!(metric(&a, skipped).await > before);
    let r = delete(&a).await;
    assert_eq!(
        (r.status, &r.body["pending"]),
        (202, &json!(true)),
        "{}",
        r.body
    );
    assert_eq!(metric(&a, "infercache_redis_removals_pending").await, 1.0);

    // Back: the removal replayed, in sync, local reads again.
    redis.restart();
    wait_for_metric(&a, "infercache_redis_removals_replayed_total", |v| v == 1.0).await;
    wait_for_metric(&a, "infercache_epochs_in_sync", |v| v == 1.0).await;
    assert_eq!(metric(&a, "infercache_redis_removals_pending").await, 0.0);
    assert_eq!(metric(&a, "infercache_local_reads_enabled").await, 1.0);
    assert_eq!(metric(&a, "infercache_epochs_unsynced_seconds").await, 0.0);
    a.stop().await;
    b.stop().await;
}
