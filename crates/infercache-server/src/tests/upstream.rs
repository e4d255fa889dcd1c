//! The per-row path against real upstream servers on loopback (axum on port 0) that count
//! their calls and rows, with infercache's router driven without a socket and its cache
//! on a manual clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::routing;
use infercache_core::ManualClock;
use infercache_engine::{Cache, CacheConfig};
use serde_json::{Value, json};
use std::sync::Mutex;

use infercache_backend::{BackendKind as Backend, ModelConfig};
use infercache_infer::Models;

use super::{Fake, Reply, get as get_req, post, request, send};
use crate::{ApiKeys, AppState, Limits, app};

use infercache_upstream::testing::start as upstream;

/// A URL nothing listens on: connections are refused.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn model(name: &str, backend: Backend, url: &str) -> ModelConfig {
    ModelConfig {
        timeout: Duration::from_secs(5),
        ..ModelConfig::new(name, backend, Some(url))
    }
}

/// The registry of `models`, the fake as the built-in model, upstreams through real
/// clients.
fn registry(models: &[ModelConfig]) -> Models {
    let client = infercache_upstream::Pool::new(Limits::default().body_budget_bytes).unwrap();
    Models::configured(
        models,
        None,
        Some(Fake::new() as Arc<dyn infercache_backend::Backend>),
        |m| infercache_upstream::backend(m, &client).unwrap(),
    )
    .unwrap()
}

struct Harness {
    app: crate::App,
    clock: Arc<ManualClock>,
}

fn harness(models: Vec<ModelConfig>) -> Harness {
    harness_with(
        models,
        Limits {
            max_items: 16,
            ..Limits::default()
        },
    )
}

fn harness_with(models: Vec<ModelConfig>, limits: Limits) -> Harness {
    let clock = ManualClock::new(1_000_000);
    let models = registry(&models);
    let config = CacheConfig {
        policies: models.freshness(),
        ..CacheConfig::default()
    };
    let cache = Cache::open(config, clock.clone()).unwrap();
    let state = AppState::new(Some(cache), models, ApiKeys::none(), limits);
    Harness {
        app: app(state),
        clock,
    }
}

/// One `http-json` model `m` at `url`/predict, tuned by `f`.
fn json_model(url: &str, f: impl FnOnce(&mut ModelConfig)) -> Harness {
    let mut m = model("m", Backend::HttpJson, &format!("{url}/predict"));
    f(&mut m);
    harness(vec![m])
}

async fn predict_rows(h: &Harness, inputs: Value) -> Reply {
    post(
        &h.app,
        "/v1/models/m/predict",
        &[],
        &json!({ "inputs": inputs }),
    )
    .await
}

fn echoes(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["echo"].clone())
        .collect()
}

#[tokio::test]
async fn a_batch_of_8_with_3_cached_sends_exactly_5_rows_in_one_request() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    let all: Vec<Value> = (0..8).map(|i| json!({ "row": i })).collect();
    let cached = vec![all[1].clone(), all[4].clone(), all[6].clone()];
    let r = predict_rows(&h, Value::Array(cached)).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!((up.calls(), up.rows()), (1, 3));

    let r = predict_rows(&h, Value::Array(all.clone())).await;
    assert_eq!(echoes(&r), all, "all 8 rows, in order");
    assert_eq!(r.header("x-cache"), "PARTIAL");
    assert_eq!(r.header("x-cache-hits"), "3");
    assert_eq!(r.header("x-cache-misses"), "5");
    assert_eq!(up.calls(), 2, "one more upstream request");
    let sent = up.batches.lock().unwrap()[1].clone();
    let expected: Vec<Value> = [0, 2, 3, 5, 7].iter().map(|&i| all[i].clone()).collect();
    assert_eq!(sent, expected, "exactly the 5 missing rows, in order");

    let r = predict_rows(&h, Value::Array(all.clone())).await;
    assert_eq!((r.header("x-cache"), echoes(&r)), ("HIT", all));
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn repeated_rows_in_one_batch_go_upstream_once() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    let r = predict_rows(&h, json!(["a", "b", "a", "a", "b"])).await;
    assert_eq!(
        echoes(&r),
        [json!("a"), json!("b"), json!("a"), json!("a"), json!("b")]
    );
    assert_eq!(up.batches.lock().unwrap()[0], [json!("a"), json!("b")]);
    assert_eq!((up.calls(), up.rows()), (1, 2));
}

#[tokio::test]
async fn json_rows_whose_keys_differ_only_in_order_share_an_entry() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    let first = r#"{"inputs": [{"smiles": "CCO", "opts": {"a": 1, "b": [1, 2]}}]}"#;
    let second = r#"{"inputs": [{"opts": {"b": [1, 2], "a": 1}, "smiles": "CCO"}]}"#;
    for (body, cache) in [(first, "MISS"), (second, "HIT")] {
        let r = send(
            &h.app,
            request(Method::POST, "/v1/models/m/predict", &[], body),
        )
        .await;
        assert_eq!(r.header("x-cache"), cache, "{}", r.body);
    }
    assert_eq!(up.rows(), 1);
    // An array's order is data: it is a different row.
    let r = predict_rows(
        &h,
        json!([{"smiles": "CCO", "opts": {"a": 1, "b": [2, 1]}}]),
    )
    .await;
    assert_eq!(r.header("x-cache"), "MISS");
}

#[tokio::test]
async fn output_affecting_parameters_are_keyed_and_others_ignored() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.params = Some(vec!["temperature".into()]));
    let ask = |params: Value| {
        let app = h.app.clone();
        async move {
            let body = json!({ "inputs": ["x"], "parameters": params });
            post(&app, "/v1/models/m/predict", &[], &body).await
        }
    };
    assert_eq!(
        ask(json!({"temperature": 0.1})).await.header("x-cache"),
        "MISS"
    );
    let r = ask(json!({"temperature": 0.1, "request_id": "abc"})).await;
    assert_eq!(
        r.header("x-cache"),
        "HIT",
        "an unlisted parameter does not change the key"
    );
    let r = ask(json!({"temperature": 0.2})).await;
    assert_eq!(r.header("x-cache"), "MISS", "a listed one does");
    assert_eq!(r.body["outputs"][0]["params"]["temperature"], 0.2);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn without_a_params_setting_every_parameter_is_keyed() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    let ask = |params: Value| {
        let app = h.app.clone();
        async move {
            let body = json!({ "inputs": ["x"], "parameters": params });
            post(&app, "/v1/models/m/predict", &[], &body).await
        }
    };
    assert_eq!(
        ask(json!({"scale": 1, "trace": true}))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(
        ask(json!({"trace": true, "scale": 1}))
            .await
            .header("x-cache"),
        "HIT"
    );
    assert_eq!(
        ask(json!({"scale": 1, "trace": false}))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn changing_version_or_digest_makes_old_entries_unreachable() {
    let (url, up) = upstream().await;
    // One cache across the configurations, as across restarts with a changed config.
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::open(CacheConfig::default(), clock).unwrap();
    let mut outcomes = Vec::new();
    for (version, digest) in [
        ("1", None),
        ("1", None),
        ("2", None),
        ("2", Some("sha256:b")),
    ] {
        let mut m = model("m", Backend::HttpJson, &format!("{url}/predict"));
        m.version = version.into();
        m.digest = digest.map(Into::into);
        let state = AppState::new(
            Some(cache.clone()),
            registry(&[m]),
            ApiKeys::none(),
            Limits::default(),
        );
        let r = post(
            &app(state),
            "/v1/models/m/predict",
            &[],
            &json!({"inputs": ["x"]}),
        )
        .await;
        outcomes.push(r.header("x-cache").to_owned());
    }
    assert_eq!(outcomes, ["MISS", "HIT", "MISS", "MISS"]);
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn changing_the_upstream_server_or_name_without_a_version_is_a_miss() {
    let (a, up_a) = upstream().await;
    let (b, up_b) = upstream().await;
    // One cache across the configurations, as one Redis across deployments.
    let cache = Cache::open(CacheConfig::default(), ManualClock::new(1_000_000)).unwrap();
    let mut outcomes = Vec::new();
    // The same server, spelled otherwise: the URL is normalised before it is keyed.
    let same_a = a.replacen("http://", "HTTP://", 1);
    for (url, upstream_name, digest) in [
        (&a, "m", None),
        (&same_a, "m", None),
        (&b, "m", None),
        (&a, "other", None),
        (&a, "m", Some("sha256:d")),
        // An explicit digest wins: the server and name it is served under do not matter.
        (&b, "other", Some("sha256:d")),
    ] {
        let mut m = model("m", Backend::HttpJson, &format!("{url}/predict"));
        m.upstream_name = upstream_name.into();
        m.digest = digest.map(Into::into);
        let state = AppState::new(
            Some(cache.clone()),
            registry(&[m]),
            ApiKeys::none(),
            Limits::default(),
        );
        let r = post(
            &app(state),
            "/v1/models/m/predict",
            &[],
            &json!({"inputs": ["x"]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        outcomes.push(r.header("x-cache").to_owned());
    }
    assert_eq!(outcomes, ["MISS", "HIT", "MISS", "MISS", "MISS", "HIT"]);
    assert_eq!((up_a.calls(), up_b.calls()), (3, 1));
}

/// A plain JSON upstream that keeps the raw bytes of every body it is sent and answers
/// each row with its index.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let router = Router::new().route(
        "/predict",
        routing::post(move |body: axum::body::Bytes| {
            let record = Arc::clone(&record);
            async move {
                let text = String::from_utf8(body.to_vec()).unwrap();
                let rows = serde_json::from_str::<Value>(&text).unwrap()["inputs"]
                    .as_array()
                    .unwrap()
                    .len();
                record.lock().unwrap().push(text);
                axum::Json(json!({ "outputs": (0..rows).collect::<Vec<_>>() }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn numbers_reach_the_upstream_as_sent_and_1_and_1_0_are_other_rows() {
    let (url, seen) = recording_upstream().await;
    let h = json_model(&url, |_| {});
    let body = br#"{"inputs": [12345678901234567890123, 1.0, {"p": 0.10000000000000000000001}], "parameters": {"t": 1.50}}"#;
    let r = send(
        &h.app,
        request(Method::POST, "/v1/models/m/predict", &[], body.to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [
            r#"{"inputs":[12345678901234567890123,1.0,{"p": 0.10000000000000000000001}],"parameters":{"t": 1.50}}"#
        ]
    );
    // `1` is not `1.0`, and a neighbouring big integer is not the one sent.
    let other = send(
        &h.app,
        request(
            Method::POST,
            "/v1/models/m/predict",
            &[],
            br#"{"inputs": [1, 12345678901234567890124, 1.0], "parameters": {"t": 1.50}}"#.to_vec(),
        ),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    assert_eq!(other.header("x-cache"), "PARTIAL");
    assert_eq!(
        seen.lock().unwrap()[1],
        r#"{"inputs":[1,12345678901234567890124],"parameters":{"t": 1.50}}"#
    );
}

#[tokio::test]
async fn a_non_deterministic_model_is_never_cached() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.deterministic = false);
    for _ in 0..2 {
        let r = predict_rows(&h, json!(["a", "a"])).await;
        assert_eq!(r.header("x-cache"), "MISS");
        assert_eq!(echoes(&r).len(), 2);
    }
    assert_eq!(
        (up.calls(), up.rows()),
        (2, 4),
        "repeats are samples, each sent"
    );
    let r = send(
        &h.app,
        request(
            Method::POST,
            "/v1/models/m/predict",
            &[("cache-control", "only-if-cached")],
            r#"{"inputs": ["a"]}"#,
        ),
    )
    .await;
    r.error(StatusCode::GATEWAY_TIMEOUT, "not_cached");
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_503_naming_the_model() {
    let h = json_model(&dead_url().await, |m| m.retries = 1);
    let r = predict_rows(&h, json!(["a"])).await;
    r.error(StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable");
    assert_eq!(r.body["error"]["model"], "m");
    assert!(r.body["error"]["upstream_status"].is_null());
    assert_eq!(r.header("retry-after"), "1");
}

#[tokio::test]
async fn upstream_error_statuses_map_to_502_503_504_with_the_status() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.retries = 0);
    for (status, ours, code) in [
        (500, StatusCode::BAD_GATEWAY, "upstream_error"),
        (400, StatusCode::BAD_GATEWAY, "upstream_error"),
        (503, StatusCode::SERVICE_UNAVAILABLE, "upstream_error"),
        (504, StatusCode::GATEWAY_TIMEOUT, "upstream_error"),
    ] {
        up.fail(1, status);
        let r = predict_rows(&h, json!(["a"])).await;
        r.error(ours, code);
        assert_eq!(r.body["error"]["upstream_status"], status);
        assert_eq!(r.body["error"]["model"], "m");
    }
    up.short.store(true, Ordering::SeqCst);
    let r = predict_rows(&h, json!(["a", "b"])).await;
    r.error(StatusCode::BAD_GATEWAY, "upstream_bad_response");
    up.short.store(false, Ordering::SeqCst);
    // Nothing failed was stored: the row is fetched now.
    let r = predict_rows(&h, json!(["a"])).await;
    assert_eq!(r.header("x-cache"), "MISS");
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_504() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.timeout = Duration::from_millis(50));
    up.delay_ms.store(400, Ordering::SeqCst);
    let r = predict_rows(&h, json!(["a"])).await;
    r.error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(r.body["error"]["model"], "m");
}

#[tokio::test]
async fn a_hung_upstream_whose_timeout_is_the_requests_still_gets_stale_rows_or_its_error() {
    let (url, up) = upstream().await;
    let mut m = model("m", Backend::HttpJson, &format!("{url}/predict"));
    m.ttl = Some(Duration::from_secs(60));
    m.stale_if_error = Some(Duration::from_secs(600));
    m.retries = 0;
    // The longest a model's timeout may be: the request's own.
    m.timeout = Duration::from_millis(600);
    let h = harness_with(
        vec![m],
        Limits {
            max_items: 16,
            request_timeout: Duration::from_millis(600),
            ..Limits::default()
        },
    );
    assert_eq!(
        predict_rows(&h, json!(["a"])).await.header("x-cache"),
        "MISS"
    );
    h.clock.advance(Duration::from_secs(61));
    up.delay_ms.store(3000, Ordering::SeqCst);
    let r = predict_rows(&h, json!(["a"])).await;
    assert_eq!(r.header("x-cache"), "STALE", "{}", r.body);
    let r = predict_rows(&h, json!(["never cached"])).await;
    r.error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(r.body["error"]["model"], "m");
}

#[tokio::test]
async fn a_version_in_a_metadata_path_must_be_the_served_one() {
    let (url, up) = upstream().await;
    let mut m = model("k", Backend::KServeV2, &url);
    m.version = "3".into();
    let h = harness(vec![m]);
    let before = up.calls();
    for path in [
        "/v2/models/k/versions/2",
        "/v2/models/k/versions/..%2F..%2Fadmin",
        "/v2/models/k/versions/2/ready",
    ] {
        let r = send(&h.app, request(Method::GET, path, &[], "")).await;
        let msg = r.kserve_error(StatusCode::NOT_FOUND);
        assert!(msg.contains("has no version"), "{path}: {msg}");
    }
    assert_eq!(up.calls(), before, "nothing reached the upstream");
}

#[tokio::test]
async fn deterministic_inference_is_retried_after_503_and_non_deterministic_is_not() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.retries = 2);
    up.fail(2, 503);
    let r = predict_rows(&h, json!(["a"])).await;
    assert_eq!(echoes(&r), [json!("a")], "third attempt answers");
    // A 500 may mean the batch itself is the problem: no retry.
    up.fail(1, 500);
    let r = predict_rows(&h, json!(["b"])).await;
    r.error(StatusCode::BAD_GATEWAY, "upstream_error");

    let h = json_model(&url, |m| {
        m.retries = 2;
        m.deterministic = false;
    });
    up.fail(1, 503);
    let r = predict_rows(&h, json!(["a"])).await;
    r.error(StatusCode::SERVICE_UNAVAILABLE, "upstream_error");
}

#[tokio::test]
async fn stale_if_error_serves_expired_rows_marked_stale() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| {
        m.ttl = Some(Duration::from_secs(60));
        m.stale_if_error = Some(Duration::from_secs(600));
        m.retries = 0;
    });
    assert_eq!(
        predict_rows(&h, json!(["a", "b"])).await.header("x-cache"),
        "MISS"
    );
    h.clock.advance(Duration::from_secs(61));
    // Past its ttl, a healthy upstream is asked again.
    up.fail(1, 500);
    let r = predict_rows(&h, json!(["a", "b"])).await;
    assert_eq!(r.header("x-cache"), "STALE", "{}", r.body);
    assert_eq!(r.header("x-cache-stale"), "2");
    assert_eq!(echoes(&r), [json!("a"), json!("b")]);
    // A request asking for a fresh answer gets the error.
    up.fail(1, 500);
    let r = send(
        &h.app,
        request(
            Method::POST,
            "/v1/models/m/predict",
            &[("cache-control", "no-cache")],
            r#"{"inputs": ["a"]}"#,
        ),
    )
    .await;
    r.error(StatusCode::BAD_GATEWAY, "upstream_error");
    // A row never cached cannot be served stale: the error stands.
    up.fail(1, 500);
    predict_rows(&h, json!(["a", "new"]))
        .await
        .error(StatusCode::BAD_GATEWAY, "upstream_error");
    // Healthy again: refreshed and fresh.
    let r = predict_rows(&h, json!(["a", "b"])).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(
        predict_rows(&h, json!(["a"])).await.header("x-cache"),
        "HIT"
    );
    // Past ttl + stale_if_error, nothing stands in.
    h.clock.advance(Duration::from_secs(61 + 600));
    up.fail(1, 500);
    predict_rows(&h, json!(["a"]))
        .await
        .error(StatusCode::BAD_GATEWAY, "upstream_error");
}

#[tokio::test]
async fn without_stale_if_error_an_expired_row_is_not_served() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| {
        m.ttl = Some(Duration::from_secs(60));
        m.retries = 0;
    });
    predict_rows(&h, json!(["a"])).await;
    h.clock.advance(Duration::from_secs(61));
    up.fail(1, 500);
    predict_rows(&h, json!(["a"]))
        .await
        .error(StatusCode::BAD_GATEWAY, "upstream_error");
}

#[tokio::test]
async fn max_batch_splits_missing_rows_into_chunks_and_keeps_order() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.max_batch = Some(2));
    let rows = json!(["a", "b", "c", "d", "e"]);
    let r = predict_rows(&h, rows.clone()).await;
    assert_eq!(Value::Array(echoes(&r)), rows);
    let mut sizes: Vec<usize> = up.batches.lock().unwrap().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 2, 2]);
}

#[tokio::test]
async fn unknown_models_are_404_naming_them_and_wrong_routes_400() {
    let (url, _up) = upstream().await;
    let h = harness(vec![
        model("m", Backend::HttpJson, &format!("{url}/predict")),
        model("e", Backend::Tei, &url),
    ]);
    for (path, body) in [
        ("/v1/models/nope/predict", json!({"inputs": [1]})),
        ("/v1/models/nope/run", json!(["CCO"])),
        ("/v1/embeddings", json!({"model": "nope", "input": "x"})),
        (
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": "x"}),
        ),
    ] {
        let r = post(&h.app, path, &[], &body).await;
        let msg = r.error(StatusCode::NOT_FOUND, "model_not_found");
        let asked = body["model"].as_str().unwrap_or("nope");
        assert!(
            msg.contains(&format!("`{asked}`")) && msg.contains("`m`"),
            "{msg}"
        );
    }
    let r = get_req(&h.app, "/v2/models/nope", &[]).await;
    let msg = r.kserve_error(StatusCode::NOT_FOUND);
    assert!(msg.contains("model `nope` does not exist"), "{msg}");
    let r = post(&h.app, "/v1/models/e/predict", &[], &json!({"inputs": [1]})).await;
    let msg = r.error(StatusCode::BAD_REQUEST, "wrong_route");
    assert!(msg.contains("POST /v1/embeddings"), "{msg}");
}

#[tokio::test]
async fn openai_upstream_miss_then_hit_with_dimensions_keyed() {
    let (url, up) = upstream().await;
    let mut m = model("remote-emb", Backend::OpenAi, &url);
    m.upstream_name = "text-embedding-3-small".into();
    let h = harness(vec![m]);
    let ask = |body: Value| {
        let app = h.app.clone();
        async move { post(&app, "/v1/embeddings", &[], &body).await }
    };
    let r = ask(json!({"model": "remote-emb", "input": ["hello", "hi"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(r.body["data"][0]["embedding"], json!([5.0, 104.0, 0.5]));
    assert_eq!(r.body["data"][1]["embedding"], json!([2.0, 104.0, 0.5]));
    assert_eq!(r.body["model"], "remote-emb");
    let r =
        ask(json!({"model": "remote-emb", "input": ["hi", "hello"], "encoding_format": "base64"}))
            .await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert!(r.body["data"][0]["embedding"].is_string());
    assert_eq!(up.calls(), 1);
    let r = ask(json!({"model": "remote-emb", "input": "hello", "dimensions": 2})).await;
    assert_eq!(r.header("x-cache"), "MISS", "dimensions change the output");
    assert_eq!(r.body["data"][0]["embedding"], json!([5.0, 104.0]));
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn tei_upstream_miss_then_hit() {
    let (url, up) = upstream().await;
    let h = harness(vec![model("bge", Backend::Tei, &url)]);
    let body = json!({"model": "bge", "input": ["a", "bb", "a"]});
    let r = post(&h.app, "/v1/embeddings", &[], &body).await;
    assert_eq!(r.header("x-cache"), "MISS", "{}", r.body);
    assert_eq!(r.body["data"][1]["embedding"], json!([2.0, 98.0, 0.5]));
    assert_eq!(up.batches.lock().unwrap()[0], [json!("a"), json!("bb")]);
    let r = post(&h.app, "/v1/embeddings", &[], &body).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(up.calls(), 1);
    let r = post(
        &h.app,
        "/v1/embeddings",
        &[],
        &json!({"model": "bge", "input": "a", "dimensions": 2}),
    )
    .await;
    r.error(StatusCode::BAD_REQUEST, "unsupported_parameter");
}

#[tokio::test]
async fn invalidating_a_model_named_like_the_builtin_alias_invalidates_that_model_only() {
    // A TEI model under the built-in model's hub id: its name means it, not the built-in
    // model the id is an alias of.
    let alias = "sentence-transformers/all-MiniLM-L6-v2";
    let (url, up) = upstream().await;
    let h = harness(vec![
        model(alias, Backend::Tei, &url),
        ModelConfig::new("all-MiniLM-L6-v2", Backend::Builtin, None),
    ]);
    let tei = json!({"model": alias, "input": "a"});
    let builtin = json!({"model": "all-MiniLM-L6-v2", "input": "a"});
    for body in [&tei, &builtin] {
        let r = post(&h.app, "/v1/embeddings", &[], body).await;
        assert_eq!(r.header("x-cache"), "MISS", "{}", r.body);
        assert_eq!(r.body["model"], body["model"], "{}", r.body);
    }
    assert_eq!(up.calls(), 1, "the TEI model's upstream served it");

    let r = post(
        &h.app,
        "/v1/cache/invalidate",
        &[],
        &json!({"scope": "model", "model": alias}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["invalidated"],
        json!({"scope": "model", "model": alias}),
        "no rewrite to the built-in model"
    );
    let r = post(&h.app, "/v1/embeddings", &[], &tei).await;
    assert_eq!(
        r.header("x-cache"),
        "MISS",
        "the TEI model's entries are gone"
    );
    assert_eq!(up.calls(), 2);
    let r = post(&h.app, "/v1/embeddings", &[], &builtin).await;
    assert_eq!(r.header("x-cache"), "HIT", "the built-in model's are kept");
}

#[tokio::test]
async fn ersilia_miss_then_hit_and_cache_only_returns_null_rows() {
    let (url, up) = upstream().await;
    let h = harness(vec![model("eos3b5e", Backend::Ersilia, &url)]);
    let run = |q: &'static str, body: Value| {
        let app = h.app.clone();
        async move { post(&app, &format!("/v1/models/eos3b5e/run{q}"), &[], &body).await }
    };
    let r = run("", json!(["CCO", "CCCO"])).await;
    assert_eq!(r.header("x-cache"), "MISS", "{}", r.body);
    assert_eq!(
        r.body,
        json!([{"input": "CCO", "mw": 3}, {"input": "CCCO", "mw": 4}])
    );
    let r = run(
        "",
        json!([{"input": "CCCO", "key": "k1"}, {"key": "k2", "input": "CCO"}]),
    )
    .await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(up.calls(), 1);

    let r = run("?cache_only=true", json!(["CCO", "C1CCCCC1"])).await;
    assert_eq!(
        r.body,
        json!([{"input": "CCO", "mw": 3}, {"input": null, "mw": null}])
    );
    assert_eq!(r.header("x-cache"), "PARTIAL");
    let r = run("?cache_only=1", json!(["C1CCCCC1"])).await;
    assert_eq!(r.body, json!([null]));
    assert_eq!(up.calls(), 1, "cache_only never computes");

    let r = run("?save_cache=false", json!(["N"])).await;
    assert_eq!(r.header("x-cache"), "MISS");
    let r = run("?cache_only=true", json!(["N"])).await;
    assert_eq!(r.body, json!([null]), "save_cache=false stored nothing");
    let r = run("?fetch_cache=false", json!(["CCO"])).await;
    assert_eq!(r.header("x-cache"), "MISS", "fetch_cache=false recomputes");
    assert_eq!(up.calls(), 3);
}

/// `POST /v1/models/{name}/run` on `h` with `query` (e.g. `?cache_only=true`).
async fn ersilia_run(h: &Harness, name: &str, query: &str, body: Value) -> Reply {
    let uri = format!("/v1/models/{name}/run{query}");
    post(&h.app, &uri, &[], &body).await
}

#[tokio::test]
async fn ersilia_keys_rows_by_input_alone_and_sends_strings_upstream() {
    let (url, up) = upstream().await;
    let h = harness(vec![model("e", Backend::Ersilia, &url)]);
    let body = json!([{"key": "k1", "input": "CCO"}, {"key": "k2", "input": "CCCO"}]);
    let r = ersilia_run(&h, "e", "", body).await;
    assert_eq!(r.header("x-cache"), "MISS", "{}", r.body);
    assert_eq!(up.batches.lock().unwrap()[0], [json!("CCO"), json!("CCCO")]);

    // The same inputs as bare strings, or under other keys: the same entries.
    let r = ersilia_run(&h, "e", "", json!(["CCCO", "CCO"])).await;
    assert_eq!(r.header("x-cache"), "HIT", "{}", r.body);
    assert_eq!(r.body[0], json!({"input": "CCCO", "mw": 4}));
    let r = ersilia_run(&h, "e", "", json!([{"key": "other", "input": "CCO"}])).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(up.calls(), 1);

    let body = json!([{"key": "a", "input": "N"}, {"key": "b", "input": "CCO"}]);
    let r = ersilia_run(&h, "e", "", body).await;
    assert_eq!(r.header("x-cache"), "PARTIAL");
    assert_eq!(r.body[0], json!({"input": "N", "mw": 1}));
    assert_eq!(up.batches.lock().unwrap()[1], [json!("N")]);
}

#[tokio::test]
async fn ersilia_fake_upstream_refuses_what_ersilia_pack_refuses() {
    let (url, up) = upstream().await;
    let client = infercache_core::tls::client();
    let status = |body: &'static str| {
        let req = client
            .post(format!("{url}/run"))
            .header("content-type", "application/json")
            .body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for refused in [
        r#"["C", {"key": "k", "input": "C"}]"#,
        r#"[{"input": "C"}]"#,
        r#"[{"key": "k", "input": 3}]"#,
        r#"[{"key": 1, "input": "C"}]"#,
        r#"[1]"#,
        r#"[]"#,
        r#"{"inputs": ["C"]}"#,
    ] {
        assert_eq!(status(refused).await, 422, "{refused}");
    }
    assert_eq!(up.calls(), 0);
    assert_eq!(status(r#"["C"]"#).await, 200);
    assert_eq!(status(r#"[{"key": "k", "input": "C", "x": 1}]"#).await, 200);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn ersilia_flags_do_what_ersilia_pack_does() {
    let (url, up) = upstream().await;
    let mut variable = model("v", Backend::Ersilia, &url);
    variable.deterministic = false;
    let h = harness(vec![model("e", Backend::Ersilia, &url), variable]);
    let cached = |input: &'static str| {
        let h = &h;
        async move {
            let r = ersilia_run(h, "e", "?cache_only=true", json!([input])).await;
            r.header("x-cache") == "HIT"
        }
    };

    // fetch_cache=false: computed, stored nothing, save_cache and cache_only ignored.
    let r = ersilia_run(&h, "e", "?fetch_cache=false&save_cache=true", json!(["A"])).await;
    assert_eq!(r.body, json!([{"input": "A", "mw": 1}]));
    assert!(
        !cached("A").await,
        "fetch_cache=false implies save_cache=false"
    );
    let q = "?fetch_cache=false&cache_only=true";
    let r = ersilia_run(&h, "e", q, json!(["A"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!([{"input": "A", "mw": 1}]));
    assert!(!cached("A").await);
    assert_eq!(up.calls(), 2);

    // Stored by default; fetch_cache=false computes it again.
    ersilia_run(&h, "e", "", json!(["A"])).await;
    assert!(cached("A").await);
    let r = ersilia_run(&h, "e", "?fetch_cache=0", json!(["A"])).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(up.calls(), 4);

    // save_cache=false reads the cache and stores nothing new.
    let r = ersilia_run(&h, "e", "?save_cache=false", json!(["A", "B"])).await;
    assert_eq!(r.header("x-cache"), "PARTIAL");
    assert_eq!(up.batches.lock().unwrap()[4], [json!("B")]);
    assert!(!cached("B").await);
    let r = ersilia_run(&h, "e", "?cache_only=true&save_cache=false", json!(["A"])).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(up.calls(), 5);

    // cache_only has nothing to read on a model that is never cached: computed.
    let r = ersilia_run(&h, "v", "?cache_only=true", json!(["A"])).await;
    assert_eq!(r.body, json!([{"input": "A", "mw": 1}]));
    assert_eq!(up.calls(), 6);

    let r = post(
        &h.app,
        "/v1/models/e/run?cache_only=true",
        &[("cache-control", "no-cache")],
        &json!(["A"]),
    )
    .await;
    r.error(StatusCode::BAD_REQUEST, "invalid_value");
    assert_eq!(up.calls(), 6);
}

#[tokio::test]
async fn ersilia_failed_rows_are_returned_but_not_cached() {
    let (url, up) = upstream().await;
    let h = harness(vec![model("e", Backend::Ersilia, &url)]);
    let r = ersilia_run(&h, "e", "", json!(["CCO", "!x", "!x"])).await;
    assert_eq!(r.header("x-cache"), "MISS");
    let failed = json!({"input": null, "mw": null});
    assert_eq!(
        r.body,
        json!([{"input": "CCO", "mw": 3}, failed.clone(), failed.clone()])
    );
    assert_eq!(up.batches.lock().unwrap()[0], [json!("CCO"), json!("!x")]);

    let r = ersilia_run(&h, "e", "?cache_only=true", json!(["!x", "CCO"])).await;
    assert_eq!(r.header("x-cache"), "PARTIAL", "the failure is not cached");
    assert_eq!(r.header("x-cache-hits"), "1");
    assert_eq!(r.body, json!([failed.clone(), {"input": "CCO", "mw": 3}]));

    let r = ersilia_run(&h, "e", "", json!(["!x", "CCO"])).await;
    assert_eq!(r.header("x-cache"), "PARTIAL");
    assert_eq!(r.body[0], failed);
    assert_eq!(
        up.batches.lock().unwrap()[1],
        [json!("!x")],
        "computed again"
    );
}

#[tokio::test]
async fn http_json_miss_then_hit() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    let r = predict_rows(&h, json!([[1, 2], {"a": null}])).await;
    assert_eq!(r.header("x-cache"), "MISS");
    let r = predict_rows(&h, json!([[1, 2], {"a": null}])).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(echoes(&r), [json!([1, 2]), json!({"a": null})]);
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn malformed_bodies_are_4xx_and_the_server_keeps_serving() {
    let (url, up) = upstream().await;
    let h = harness(vec![
        model("m", Backend::HttpJson, &format!("{url}/predict")),
        model("e", Backend::Ersilia, &url),
    ]);
    let raw = |path: &'static str, body: &'static str| {
        let app = h.app.clone();
        async move { send(&app, request(Method::POST, path, &[], body)).await }
    };
    let cases = [
        ("/v1/models/m/predict", "{", "invalid_json"),
        ("/v1/models/m/predict", "", "invalid_json"),
        ("/v1/models/m/predict", "[1]", "invalid_value"),
        ("/v1/models/m/predict", r#"{"inputs": 3}"#, "invalid_value"),
        ("/v1/models/m/predict", r#"{"inputs": []}"#, "invalid_value"),
        (
            "/v1/models/m/predict",
            r#"{}"#,
            "missing_required_parameter",
        ),
        (
            "/v1/models/m/predict",
            r#"{"inputs": [1], "parameters": 2}"#,
            "invalid_value",
        ),
        (
            "/v1/models/m/predict",
            r#"{"inputs": [1], "extra": 2}"#,
            "unsupported_parameter",
        ),
        (
            "/v1/models/e/run",
            r#"{"inputs": ["CCO"]}"#,
            "invalid_value",
        ),
        ("/v1/models/e/run", r#"[3]"#, "invalid_value"),
        ("/v1/models/e/run", r#"[""]"#, "empty_string"),
        ("/v1/models/e/run", r#"[{"key": "k"}]"#, "invalid_value"),
        ("/v1/models/e/run", r#"[{"input": "C"}]"#, "invalid_value"),
        (
            "/v1/models/e/run",
            r#"[{"key": "k", "input": "C", "x": 1}]"#,
            "invalid_value",
        ),
        (
            "/v1/models/e/run",
            r#"["C", {"key": "k", "input": "C"}]"#,
            "invalid_value",
        ),
        (
            "/v1/models/e/run",
            r#"[{"key": "k", "input": "C"}, "C"]"#,
            "invalid_value",
        ),
        (
            "/v1/models/e/run",
            r#"[{"key": "k", "input": 3}]"#,
            "invalid_value",
        ),
        (
            "/v1/models/e/run",
            r#"[{"key": 1, "input": "C"}]"#,
            "invalid_value",
        ),
        ("/v1/models/e/run", r#"[]"#, "invalid_value"),
        (
            "/v1/models/e/run?orient=split",
            r#"["C"]"#,
            "unsupported_parameter",
        ),
        (
            "/v1/models/e/run?cache_only=maybe",
            r#"["C"]"#,
            "invalid_value",
        ),
    ];
    for (path, body, code) in cases {
        let r = raw(path, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            r.body
        );
        r.error(StatusCode::BAD_REQUEST, code);
    }
    let too_many = json!({ "inputs": (0..17).collect::<Vec<_>>() });
    post(&h.app, "/v1/models/m/predict", &[], &too_many)
        .await
        .error(StatusCode::BAD_REQUEST, "too_many_inputs");
    assert_eq!(up.calls(), 0);
    assert_eq!(echoes(&predict_rows_at(&h, "m").await), [json!(1)]);
}

async fn predict_rows_at(h: &Harness, name: &str) -> Reply {
    post(
        &h.app,
        &format!("/v1/models/{name}/predict"),
        &[],
        &json!({ "inputs": [1] }),
    )
    .await
}

#[tokio::test]
async fn models_are_listed_and_described() {
    let (url, up) = upstream().await;
    let mut kserve = model("resnet", Backend::KServeV2, &url);
    kserve.upstream_name = "resnet50".into();
    kserve.retries = 2;
    let mut builtin = ModelConfig::new("all-MiniLM-L6-v2", Backend::Builtin, None);
    builtin.timeout = Duration::from_secs(1);
    let mut sol = model("sol", Backend::HttpJson, &url);
    sol.ttl = Some(Duration::from_secs(3600));
    sol.params = Some(vec!["t".into()]);
    sol.digest = Some("sha256:ab".into());
    let h = harness(vec![sol, kserve, builtin]);

    let r = get_req(&h.app, "/v1/models", &[]).await;
    assert_eq!(r.body["object"], "list");
    let data = r.body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sol", "resnet", "all-MiniLM-L6-v2"]);
    assert_eq!(data[0]["backend"], "http-json");
    assert_eq!(data[0]["ttl_secs"], 3600);
    assert_eq!(data[0]["params"], json!(["t"]));
    assert_eq!(data[0]["digest"], "sha256:ab");
    assert_eq!(data[2]["backend"], "builtin");
    assert!(
        data.iter()
            .all(|m| m["object"] == "model" && m.get("url").is_none())
    );

    // KServe metadata is proxied, retried past two 503s, and named as clients call it.
    up.fail(2, 503);
    let r = get_req(&h.app, "/v2/models/resnet", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["name"], "resnet");
    assert_eq!(r.body["platform"], "onnxruntime_onnx");
    assert_eq!(up.metadata_calls.load(Ordering::SeqCst), 3);
    let r = get_req(&h.app, "/v2/models/sol", &[]).await;
    assert_eq!(r.body["versions"], json!(["1"]));
    assert_eq!(r.body["platform"], "infercache-http-json");
    assert_eq!(
        get_req(&h.app, "/v2/health/ready", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_req(&h.app, "/v2/health/live", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_req(&h.app, "/v2/models/sol/ready", &[]).await.status,
        StatusCode::OK
    );
    // The built-in model is served because the list names it.
    let r = post(
        &h.app,
        "/v1/embeddings",
        &[],
        &json!({"model": "all-MiniLM-L6-v2", "input": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn server_metadata_answers_and_only_kserve_models_have_a_model_config() {
    let (url, _up) = upstream().await;
    let h = harness(vec![model("sol", Backend::HttpJson, &url)]);
    let r = get_req(&h.app, "/v2", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["name"], "infercache");
    assert_eq!(r.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        r.body["extensions"],
        json!(["binary_tensor_data", "model_configuration"])
    );
    for path in ["/v2/models/sol/config", "/v2/models/sol/versions/1/config"] {
        let r = get_req(&h.app, path, &[]).await;
        let msg = r.kserve_error(StatusCode::NOT_FOUND);
        assert!(
            msg.contains("model `sol` is a http-json model and has no model configuration"),
            "{path}: {msg}"
        );
    }
    let r = get_req(&h.app, "/v2/models/nope/config", &[]).await;
    let msg = r.kserve_error(StatusCode::NOT_FOUND);
    assert!(msg.contains("model `nope` does not exist"), "{msg}");
    // Outside /v2 the same error keeps OpenAI's shape.
    let r = post(
        &h.app,
        "/v1/models/nope/predict",
        &[],
        &json!({"inputs": [1]}),
    )
    .await;
    let msg = r.error(StatusCode::NOT_FOUND, "model_not_found");
    assert!(msg.contains("model `nope` does not exist"), "{msg}");
}

#[tokio::test]
async fn metadata_of_an_upstream_that_stays_down_is_503_after_retries() {
    let (url, up) = upstream().await;
    let mut kserve = model("resnet", Backend::KServeV2, &url);
    kserve.retries = 1;
    let h = harness(vec![kserve]);
    up.fail(5, 503);
    let r = get_req(&h.app, "/v2/models/resnet", &[]).await;
    let msg = r.kserve_error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        msg.contains("model `resnet`") && msg.contains("503"),
        "{msg}"
    );
    assert_eq!(r.headers["retry-after"], "1", "the headers are kept");
    assert_eq!(up.metadata_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_requests_for_the_same_rows_send_them_once() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |_| {});
    up.delay_ms.store(100, Ordering::SeqCst);
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move {
                post(
                    &app,
                    "/v1/models/m/predict",
                    &[],
                    &json!({"inputs": ["x", "y"]}),
                )
                .await
            })
        })
        .collect();
    for a in asks {
        assert_eq!(echoes(&a.await.unwrap()), [json!("x"), json!("y")]);
    }
    assert_eq!((up.calls(), up.rows()), (1, 2));
}

#[tokio::test]
async fn tenants_never_share_rows() {
    let (url, up) = upstream().await;
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::open(CacheConfig::default(), clock).unwrap();
    let keys = ApiKeys::new([("sk-a", "a", false), ("sk-b", "b", false)]).unwrap();
    let state = AppState::new(
        Some(cache),
        registry(&[model("m", Backend::HttpJson, &format!("{url}/predict"))]),
        keys,
        Limits::default(),
    );
    let app = app(state);
    for (key, cache) in [
        ("Bearer sk-a", "MISS"),
        ("Bearer sk-b", "MISS"),
        ("Bearer sk-a", "HIT"),
    ] {
        let r = post(
            &app,
            "/v1/models/m/predict",
            &[("authorization", key)],
            &json!({"inputs": ["x"]}),
        )
        .await;
        assert_eq!(r.header("x-cache"), cache);
    }
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn upstream_calls_are_counted_per_model_in_the_metrics() {
    let (url, up) = upstream().await;
    let h = json_model(&url, |m| m.retries = 1);
    assert_eq!(predict_rows(&h, json!(["a"])).await.status, StatusCode::OK);
    up.fail(1, 503);
    assert_eq!(predict_rows(&h, json!(["b"])).await.status, StatusCode::OK);
    let r = send(&h.app, request(Method::GET, "/metrics", &[], "")).await;
    let text = r.body.as_str().unwrap().to_owned();
    for line in [
        "infercache_upstream_attempts_total{model=\"m\"} 3",
        "infercache_upstream_failures_total{model=\"m\"} 1",
        "infercache_upstream_retries_total{model=\"m\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

/// An upstream whose every answer to `POST /big` is `bytes` long.
async fn big_answers(bytes: usize) -> String {
    let router = Router::new().route(
        "/big",
        routing::post(move || async move {
            let padding = "x".repeat(bytes.saturating_sub(20));
            axum::Json(json!({ "outputs": [padding] }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::test]
async fn upstream_answers_are_read_within_their_budget() {
    let url = big_answers(600 << 10).await;
    let pool = infercache_upstream::Pool::new(1 << 20).unwrap();
    let upstream = pool.upstream(&model("m", Backend::HttpJson, &format!("{url}/big")));
    let call = || {
        let upstream = upstream.clone();
        async move {
            upstream
                .post_json_text("", axum::body::Bytes::from_static(b"{}"))
                .await
        }
    };
    let first = call().await.unwrap();
    assert!(first.body.len() > 500 << 10);
    // A second 600 KiB answer does not fit beside the first: it waits for its room.
    let second = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "read beside an answer that fills the budget"
    );
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("read once the first answer is gone")
        .unwrap()
        .unwrap();
    assert!(second.body.len() > 500 << 10);

    // An answer larger than the whole budget is refused, naming the model.
    let small = infercache_upstream::Pool::new(256 << 10).unwrap();
    let e = small
        .upstream(&model("m", Backend::HttpJson, &format!("{url}/big")))
        .post_json_text("", axum::body::Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, infercache_backend::UpstreamError::BadResponse { .. }),
        "{e}"
    );
    assert_eq!(e.model(), "m");
}
