//! Restarts, tenants, metrics and shutdown.

use infercache_server::ServerConfig;
use infercache_server::config::DiskSettings;
use serde_json::json;

use crate::support::{Server, model};

#[tokio::test]
async fn hits_come_from_disk_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        disk: Some(DiskSettings {
            dir: dir.path().join("cache"),
            capacity: 64 << 20,
            compression: infercache_engine::Compression::Lz4,
        }),
        write_back_queue: Some(64),
        ..ServerConfig::default()
    };
    let model = model().await;
    let s = Server::start(config.clone(), model.clone()).await;
    let first = s.embed(&[], json!(["persist me", "and me"])).await;
    assert_eq!(first.header("x-cache"), "MISS");
    // Stopping drains the write-back queue and syncs the disk tier.
    s.stop().await;

    let s = Server::start(config, model.clone()).await;
    let again = s.embed(&[], json!(["persist me", "and me"])).await;
    assert_eq!(again.header("x-cache"), "HIT", "{}", again.body);
    assert_eq!(again.body["data"], first.body["data"]);
    let stats = s.get("/v1/cache/stats", &[]).await.body;
    assert_eq!(
        stats["models"]["all-MiniLM-L6-v2"]["disk_hits"], 2,
        "{stats}"
    );
    assert!(
        stats["tiers"]["disk"]["entries"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert_eq!(
        crate::support::texts(&model),
        2,
        "nothing recomputed after the restart"
    );
    s.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_and_admin_routes_need_admin_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[key]]\nkey = \"sk-tenant-a\"\ntenant = \"a\"\n\n[[key]]\nkey = \"sk-tenant-b\"\ntenant = \"b\"\n\n[[key]]\nkey = \"sk-admin\"\ntenant = \"ops\"\nadmin = true\n",
    )
    .unwrap();
    let config = ServerConfig {
        api_keys_file: Some(keys),
        ..ServerConfig::default()
    };
    let s = Server::start(config, model().await).await;
    let a = [("authorization", "Bearer sk-tenant-a")];
    let b = [("authorization", "Bearer sk-tenant-b")];
    let admin = [("authorization", "Bearer sk-admin")];

    let r = s.embed(&[], json!("secret")).await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"));
    assert_eq!(
        s.embed(&a, json!("shared text")).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        s.embed(&b, json!("shared text")).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        s.embed(&a, json!("shared text")).await.header("x-cache"),
        "HIT"
    );

    assert_eq!(s.get("/v1/cache/stats", &a).await.status, 403);
    let inv = s
        .post(
            "/v1/cache/invalidate",
            &admin,
            &json!({"scope": "namespace", "namespace": "a"}),
        )
        .await;
    assert_eq!(inv.status, 200, "{}", inv.body);
    assert_eq!(
        s.embed(&a, json!("shared text")).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        s.embed(&b, json!("shared text")).await.header("x-cache"),
        "HIT"
    );

    let metrics = s.get("/metrics", &admin).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("infercache_model_invocations_total{model=\"all-MiniLM-L6-v2\"}"),
        "{text}"
    );
    assert!(
        text.contains("infercache_request_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(s.get("/healthz", &[]).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    // A batch slow enough to still be running when shutdown begins.
    let texts: Vec<String> = (0..8)
        .map(|i| format!("document {i}: {}", "lorem ipsum dolor sit amet ".repeat(40)))
        .collect();
    let url = format!("{}/v1/embeddings", s.url);
    let in_flight = tokio::spawn(async move {
        let r = infercache_core::tls::client()
            .post(url)
            .json(&json!({"model": "all-MiniLM-L6-v2", "input": texts}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !in_flight.is_finished(),
        "the batch finished before shutdown began"
    );
    let stopped = tokio::spawn(s.stop());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 8);
    stopped.await.unwrap();
}

/// A value served from memory or from disk is bit-identical to a fresh computation.
#[tokio::test]
async fn memory_and_disk_hits_are_bit_identical_to_a_fresh_computation() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        disk: Some(DiskSettings {
            dir: dir.path().join("cache"),
            capacity: 64 << 20,
            compression: infercache_engine::Compression::Zstd,
        }),
        ..ServerConfig::default()
    };
    let body = json!({
        "model": "all-MiniLM-L6-v2",
        "input": ["The weather is lovely today.", "He drove to the stadium."],
        "encoding_format": "base64",
    });
    let bytes = |r: &crate::support::Reply| -> Vec<String> {
        let data = r.body["data"].as_array().unwrap();
        data.iter()
            .map(|d| d["embedding"].as_str().unwrap().to_owned())
            .collect()
    };
    let model = model().await;
    let s = Server::start(config.clone(), model.clone()).await;
    let computed = s.post("/v1/embeddings", &[], &body).await;
    assert_eq!(computed.header("x-cache"), "MISS");
    let from_memory = s.post("/v1/embeddings", &[], &body).await;
    assert_eq!(from_memory.header("x-cache"), "HIT");
    let fresh = s
        .post("/v1/embeddings", &[("cache-control", "no-cache")], &body)
        .await;
    assert_eq!(fresh.header("x-cache"), "MISS");
    s.stop().await;
    let s = Server::start(config, model).await;
    let from_disk = s.post("/v1/embeddings", &[], &body).await;
    assert_eq!(from_disk.header("x-cache"), "HIT");
    let stats = s.get("/v1/cache/stats", &[]).await.body;
    assert_eq!(
        stats["models"]["all-MiniLM-L6-v2"]["disk_hits"], 2,
        "{stats}"
    );
    assert_eq!(bytes(&from_memory), bytes(&computed));
    assert_eq!(
        bytes(&fresh),
        bytes(&computed),
        "a recomputation differs from the cached bytes"
    );
    assert_eq!(bytes(&from_disk), bytes(&computed));
    s.stop().await;
}
