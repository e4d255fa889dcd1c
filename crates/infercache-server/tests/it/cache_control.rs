//! Per-request Cache-Control, invalidation and entry removal over real HTTP.

use std::time::Duration;

use infercache_server::ServerConfig;
use serde_json::json;

use crate::support::{Server, model};

async fn texts_embedded(s: &Server) -> u64 {
    s.model_stats(&[]).await["inference"]["texts"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn each_directive_does_what_it_says() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let cc = |v: &'static str| [("cache-control", v)];

    // only-if-cached on a miss: 504, nothing computed.
    let r = s.embed(&cc("only-if-cached"), json!("directive")).await;
    assert_eq!((r.status, r.code()), (504, "not_cached"));
    assert_eq!(texts_embedded(&s).await, 0);

    // no-store: computed, not kept.
    assert_eq!(
        s.embed(&cc("no-store"), json!("directive"))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(
        s.embed(&cc("only-if-cached"), json!("directive"))
            .await
            .status,
        504
    );

    // Stored now; only-if-cached answers.
    assert_eq!(
        s.embed(&[], json!("directive")).await.header("x-cache"),
        "MISS"
    );
    let r = s.embed(&cc("only-if-cached"), json!("directive")).await;
    assert_eq!((r.status, r.header("x-cache")), (200, "HIT"));

    // no-cache: recomputed and overwritten.
    assert_eq!(
        s.embed(&cc("no-cache"), json!("directive"))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(texts_embedded(&s).await, 3);

    // max-age: a young enough entry hits, an older one is recomputed.
    assert_eq!(
        s.embed(&cc("max-age=3600"), json!("directive"))
            .await
            .header("x-cache"),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        s.embed(&cc("max-age=0"), json!("directive"))
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(texts_embedded(&s).await, 4);
    s.stop().await;
}

#[tokio::test]
async fn invalidation_and_removal_make_entries_miss() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let r = s.embed(&[], json!(["one", "two"])).await;
    let key = r.body["cache"]["keys"][0].as_str().unwrap().to_owned();

    let d = s
        .send(
            infercache_core::tls::client().delete(format!("{}/v1/cache/entries/{key}", s.url)),
            &[],
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(
        s.embed(&[], json!(["one", "two"])).await.header("x-cache"),
        "PARTIAL"
    );

    let i = s
        .post(
            "/v1/cache/invalidate",
            &[],
            &json!({"scope": "model", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(i.status, 200, "{}", i.body);
    assert_eq!(
        s.embed(&[], json!(["one", "two"])).await.header("x-cache"),
        "MISS"
    );

    let w = s
        .post("/v1/cache/warm", &[], &json!({"inputs": ["three"]}))
        .await;
    assert_eq!((w.status, w.body["misses"].clone()), (200, json!(1)));
    assert_eq!(s.embed(&[], json!("three")).await.header("x-cache"), "HIT");
    s.stop().await;
}
