//! `rediss://` with `redis_ca_file` against a real `redis-server` serving TLS, with
//! certificates made here: the right CA serves two nodes through Redis; a server signed by
//! another CA stops the start with an error naming the verification problem.

use std::sync::Arc;
use std::time::Duration;

use infercache_redis::testing::RedisServer;
use infercache_redis::testing::{ca, server_cert};
use infercache_server::{ServeArgs, ServerConfig};
use serde_json::json;

use crate::support::{Server, model};

/// `serve --redis URL --redis-ca-file CA --no-disk`, as the flags give it.
fn config(url: &str, ca_file: &std::path::Path) -> ServerConfig {
    ServerConfig::from_args(&ServeArgs {
        redis: Some(url.to_owned()),
        redis_ca_file: Some(ca_file.to_owned()),
        redis_timeout: Some("1s".into()),
        no_disk: Some(true),
        ..ServeArgs::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_the_right_ca_file_is_shared_by_two_servers() {
    let dir = tempfile::tempdir().unwrap();
    let authority = ca("infercache test CA");
    let (cert, private) = server_cert(&authority);
    let redis = RedisServer::start_tls(&cert, &private);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    let cfg = config(&redis.tls_url(), &ca_file);
    let a = Server::start(cfg.clone(), model().await).await;
    let b = Server::start(cfg, model().await).await;
    for s in [&a, &b] {
        let start = std::time::Instant::now();
        loop {
            let r = s.get("/v1/cache/stats", &[]).await;
            if r.body["tiers"]["redis"]["connected"] == true {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{}", r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first = a.embed(&[], json!(["over TLS"])).await;
    assert_eq!((first.status, first.header("x-cache")), (200, "MISS"));
    let second = b.embed(&[], json!(["over TLS"])).await;
    assert_eq!((second.status, second.header("x-cache")), (200, "HIT"));
    assert_eq!(first.body["data"], second.body["data"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_signed_by_another_ca_stops_the_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, private) = server_cert(&ca("the server's CA"));
    let redis = RedisServer::start_tls(&cert, &private);
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, ca("another CA").pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let builtin = model().await as Arc<dyn infercache_backend::Backend>;
    let started = infercache_server::run_with(
        config(&redis.tls_url(), &ca_file),
        Some(builtin),
        listener,
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("the start fails rather than serving")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not trusted") && err.contains("CA file") && err.contains(&redis.tls_url()),
        "names the server and the verification problem: {err}"
    );
}
