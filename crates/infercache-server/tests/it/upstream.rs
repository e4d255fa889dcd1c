//! Upstream models configured in a TOML file, served by a real server: the whole path
//! from `[[models]]` to a cached row, with a real upstream on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use infercache_server::{ServeArgs, ServerConfig};
use serde_json::{Value, json};

use crate::support::{Server, model};

/// A plain JSON upstream that counts the rows it is sent.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let rows = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&rows);
    let app = Router::new().route(
        "/score",
        post(move |body: axum::Json<Value>| {
            let counted = Arc::clone(&counted);
            async move {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                counted.fetch_add(inputs.len(), Ordering::SeqCst);
                let outputs: Vec<Value> = inputs.iter().map(|i| json!({ "in": i })).collect();
                axum::Json(json!({ "outputs": outputs }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rows)
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

#[tokio::test]
async fn models_from_the_config_file_are_served_and_cached_per_row() {
    let (url, rows) = upstream().await;
    let config = from_file(&format!(
        r#"
        no_disk = true

        [[models]]
        name = "scorer"
        backend = "http-json"
        url = "{url}/score"
        version = "3"
        ttl = "1h"
        "#
    ));
    let s = Server::start(config, model().await).await;

    let listed = s.get("/v1/models", &[]).await;
    assert_eq!(listed.body["data"][0]["id"], "scorer", "{}", listed.body);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);

    let body = json!({ "inputs": [{"a": 1, "b": 2}, "x"] });
    let first = s.post("/v1/models/scorer/predict", &[], &body).await;
    assert_eq!(first.header("x-cache"), "MISS", "{}", first.body);
    let reordered = json!({ "inputs": ["x", {"b": 2, "a": 1}] });
    let second = s.post("/v1/models/scorer/predict", &[], &reordered).await;
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.body["outputs"][0], json!({"in": "x"}));
    assert_eq!(rows.load(Ordering::SeqCst), 2);

    // The list leaves the built-in model out, so it is not served.
    let builtin = s.embed(&[], json!("hello")).await;
    assert_eq!(builtin.status, 404);
    assert_eq!(builtin.code(), "model_not_found");
    let named = builtin.body["error"]["message"].as_str().unwrap();
    assert!(named.contains("`all-MiniLM-L6-v2`"), "{named}");
    let warm = s
        .post("/v1/cache/warm", &[], &json!({ "inputs": ["hello"] }))
        .await;
    assert_eq!(warm.status, 404, "{}", warm.body);
    assert_eq!(warm.code(), "model_not_found");
    let named = warm.body["error"]["message"].as_str().unwrap();
    assert!(named.contains("`all-MiniLM-L6-v2`"), "{named}");
    s.stop().await;
}

#[tokio::test]
async fn a_proxy_only_configuration_never_loads_the_builtin_model() {
    let (url, rows) = upstream().await;
    // A model directory that does not exist: loading the built-in model would fail.
    let missing = tempfile::tempdir().unwrap();
    let config = from_file(&format!(
        r#"
        no_disk = true
        model_dir = "{}"

        [[models]]
        name = "scorer"
        backend = "http-json"
        url = "{url}/score"
        "#,
        missing.path().join("no-model-here").display()
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(infercache_server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = infercache_core::tls::client();
    let mut reply = None;
    for _ in 0..100 {
        if let Ok(r) = client
            .post(format!("{base}/v1/models/scorer/predict"))
            .json(&json!({ "inputs": ["x"] }))
            .send()
            .await
        {
            reply = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reply = reply.expect("the server answers");
    assert_eq!(reply.status(), 200);
    assert_eq!(rows.load(Ordering::SeqCst), 1);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A plain JSON upstream that answers 500 to any request holding the input `"bad"` while
/// `failing` holds, and counts the rows it is sent.
async fn flaky_upstream() -> (String, Arc<AtomicUsize>, Arc<std::sync::atomic::AtomicBool>) {
    let rows = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (counted, fails) = (Arc::clone(&rows), Arc::clone(&failing));
    let app = Router::new().route(
        "/score",
        post(move |body: axum::Json<Value>| {
            let (counted, fails) = (Arc::clone(&counted), Arc::clone(&fails));
            async move {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                counted.fetch_add(inputs.len(), Ordering::SeqCst);
                if fails.load(Ordering::SeqCst) && inputs.contains(&json!("bad")) {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({ "error": "cannot score this batch" })),
                    );
                }
                let outputs: Vec<Value> = inputs.iter().map(|i| json!({ "in": i })).collect();
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({ "outputs": outputs })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rows, failing)
}

#[tokio::test]
async fn when_one_chunk_fails_the_rows_of_the_others_are_kept() {
    let (url, rows, failing) = flaky_upstream().await;
    let config = from_file(&format!(
        r#"
        no_disk = true

        [[models]]
        name = "scorer"
        backend = "http-json"
        url = "{url}/score"
        max_batch = 2
        "#
    ));
    let s = Server::start(config, model().await).await;

    // Three chunks: ["a", "b"], ["c", "d"], ["bad", "e"]; the last fails.
    let body = json!({ "inputs": ["a", "b", "c", "d", "bad", "e"] });
    let failed = s.post("/v1/models/scorer/predict", &[], &body).await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(rows.load(Ordering::SeqCst), 6);

    // The retry sends only the failed chunk's rows; the others are hits.
    failing.store(false, Ordering::SeqCst);
    rows.store(0, Ordering::SeqCst);
    let retried = s.post("/v1/models/scorer/predict", &[], &body).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.header("x-cache"), "PARTIAL");
    assert_eq!(
        rows.load(Ordering::SeqCst),
        2,
        "only `bad` and `e` go upstream"
    );
    assert_eq!(retried.body["outputs"][4], json!({"in": "bad"}));
    assert_eq!(retried.body["outputs"][0], json!({"in": "a"}));
    s.stop().await;
}
