//! Responses kept for hot requests (`routes/replay.rs`) against rows changed under them:
//! a kept response is answered again only while its rows hold the bytes it was written
//! from, judged on the cache's manual clock.

use std::time::Duration;

use axum::http::StatusCode;
use infercache_backend::vector;
use infercache_core::Digest;
use infercache_engine::RequestOptions;
use serde_json::{Value, json};

use super::{Harness, floats, get, harness, post};

const REPLAYED: &str = "infercache_replayed_responses_total{model=\"all-MiniLM-L6-v2\"}";

async fn replayed(h: &Harness) -> f64 {
    let r = get(&h.app, "/metrics", &[]).await;
    let text = r.body.as_str().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(REPLAYED)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{REPLAYED}` in:\n{text}"))
}

async fn ask(h: &Harness, body: &Value) -> super::Reply {
    let r = post(&h.app, "/v1/embeddings", &[], body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r
}

#[tokio::test]
async fn a_kept_response_is_never_answered_once_its_row_holds_other_bytes() {
    let h = harness();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "kept, then overwritten"});
    let first = ask(&h, &body).await;
    for _ in 0..3 {
        assert_eq!(ask(&h, &body).await.header("x-cache"), "HIT");
    }
    assert_eq!(replayed(&h).await, 1.0, "the third hit is replayed");

    // The row's entry now holds other bytes (a refresh, another node's write): the next
    // hit is written from them.
    let digest: Digest = first.body["cache"]["keys"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cache = h.state.cache().unwrap();
    let key = cache.key_from_digest(digest, "all-MiniLM-L6-v2");
    let other = [9.0_f32; super::DIMS];
    cache
        .insert(&key, vector::encode(&other), &RequestOptions::default())
        .await;
    let r = ask(&h, &body).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(floats(&r.body["data"][0]["embedding"]), other);
    assert_eq!(replayed(&h).await, 1.0);
    assert_eq!(h.fake.invocations(), 1);

    // That answer was kept in place of the old one (its request was seen last in its
    // slot), and is replayed with the new bytes.
    for _ in 0..2 {
        let r = ask(&h, &body).await;
        assert_eq!(floats(&r.body["data"][0]["embedding"]), other);
    }
    assert_eq!(replayed(&h).await, 3.0);
}

#[tokio::test]
async fn a_request_directive_is_judged_on_the_full_path() {
    let h = harness();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "kept, then asked fresher"});
    for _ in 0..4 {
        ask(&h, &body).await;
    }
    assert_eq!(replayed(&h).await, 1.0);
    h.clock.advance(Duration::from_secs(10));
    let r = post(
        &h.app,
        "/v1/embeddings",
        &[("cache-control", "max-age=5")],
        &body,
    )
    .await;
    assert_eq!(
        r.header("x-cache"),
        "MISS",
        "ten seconds old is too old for max-age=5"
    );
    assert_eq!(h.fake.invocations(), 2);
    let r = ask(&h, &body).await;
    assert_eq!(r.header("x-cache"), "HIT");
}
