//! The weight routes mounted in the server (`weights_dir`): behind the API's keys, with
//! admin-only stats and invalidation, their counters in `/metrics`, and bad input
//! answered with a 4xx while everything keeps serving.

use axum::http::{Method, StatusCode};
use infercache_core::ManualClock;
use infercache_engine::{Cache, CacheConfig};
use infercache_infer::{CachePolicy, Models};
use infercache_weights::testing::TinyBert;
use infercache_weights::{ChunkOptions, NoProgress, ServerConfig, WeightServer};
use serde_json::json;

use super::{Fake, get, limits, post, request, send};
use crate::{ApiKeys, AppState, app};

struct Mounted {
    app: crate::App,
    chunks: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A server with keys `sk-a` (tenant) and `sk-root` (admin), the fake model, and the
/// chunks of a seeded tiny BERT named `tiny` at `/v1/weights`.
fn mounted() -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let (model, chunks) = (dir.path().join("model"), dir.path().join("chunks"));
    TinyBert::default().write(&model).unwrap();
    let options = ChunkOptions {
        model_name: Some("tiny".into()),
        ..ChunkOptions::default()
    };
    infercache_weights::chunk_model(&model, &chunks.join("tiny"), &options, &mut NoProgress)
        .unwrap();
    let clock = ManualClock::new(1_000_000);
    let weights = WeightServer::open(ServerConfig::new(chunks.clone()), clock.clone()).unwrap();
    let keys = ApiKeys::new([("sk-a", "a", false), ("sk-root", "ops", true)]).unwrap();
    let cache = Cache::open(CacheConfig::default(), clock).unwrap();
    let fake = Fake::new();
    let models = Models::new([(
        fake as std::sync::Arc<dyn infercache_backend::Backend>,
        CachePolicy::builtin(),
    )]);
    let state = AppState::with_weights(Some(cache), models, keys, limits(), Some(weights));
    Mounted {
        app: app(state),
        chunks: chunks.join("tiny"),
        _dir: dir,
    }
}

const TENANT: (&str, &str) = ("authorization", "Bearer sk-a");
const ADMIN: (&str, &str) = ("authorization", "Bearer sk-root");

#[tokio::test]
async fn weight_routes_need_a_key_and_their_admin_routes_an_admin_key() {
    let m = mounted();
    for uri in [
        "/v1/weights",
        "/v1/weights/tiny/manifest",
        "/v1/weights/tiny/chunks/layer_0",
        "/v1/weights/tiny/files/config.json",
        "/v1/weights/stats",
    ] {
        for headers in [&[][..], &[("authorization", "Bearer sk-nope")][..]] {
            let r = get(&m.app, uri, headers).await;
            r.error(StatusCode::UNAUTHORIZED, "invalid_api_key");
            assert_eq!(r.header("www-authenticate"), "Bearer", "{uri}");
        }
    }
    let invalidate = json!({"scope": "all"});
    post(&m.app, "/v1/weights/invalidate", &[], &invalidate)
        .await
        .error(StatusCode::UNAUTHORIZED, "invalid_api_key");

    // A tenant key reads models, manifests, chunks and files, not stats or invalidation.
    let list = get(&m.app, "/v1/weights", &[TENANT]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["models"][0]["name"], "tiny", "{}", list.body);
    let manifest = get(&m.app, "/v1/weights/tiny/manifest", &[TENANT]).await;
    assert_eq!(manifest.status, StatusCode::OK);
    let sha = manifest.body["chunks"]["layer_0"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = tower::ServiceExt::oneshot(
        m.app.clone(),
        request(
            Method::GET,
            "/v1/weights/tiny/chunks/layer_0",
            &[TENANT],
            axum::body::Body::empty(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], format!("\"{sha}\""));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        body,
        std::fs::read(m.chunks.join("layer_0.safetensors")).unwrap()
    );
    let part = send(
        &m.app,
        request(
            Method::GET,
            "/v1/weights/tiny/chunks/layer_0",
            &[TENANT, ("range", "bytes=0-7")],
            axum::body::Body::empty(),
        ),
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    get(&m.app, "/v1/weights/stats", &[TENANT])
        .await
        .error(StatusCode::FORBIDDEN, "admin_required");
    post(&m.app, "/v1/weights/invalidate", &[TENANT], &invalidate)
        .await
        .error(StatusCode::FORBIDDEN, "admin_required");

    // An admin key reads the stats, invalidates, and finds the counters in /metrics.
    let stats = get(&m.app, "/v1/weights/stats", &[ADMIN]).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    assert_eq!(stats.body["cache"]["storage_reads"], 1, "{}", stats.body);
    let done = post(
        &m.app,
        "/v1/weights/invalidate",
        &[ADMIN],
        &json!({"scope": "model", "model": "tiny"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["reloaded"], json!(["tiny"]), "{}", done.body);
    let metrics = get(&m.app, "/metrics", &[ADMIN]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(
            "infercache_weights_chunk_requests_total{model=\"tiny\",chunk=\"layer_0\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("infercache_cache_entries"),
        "the server's own metrics: {text}"
    );
}

#[tokio::test]
async fn bad_input_to_the_weight_routes_is_a_4xx_and_the_server_keeps_serving() {
    let m = mounted();
    let chunk = |uri: &'static str, range: Option<&'static str>| {
        let mut headers = vec![TENANT];
        if let Some(r) = range {
            headers.push(("range", r));
        }
        send(
            &m.app,
            request(Method::GET, uri, &headers, axum::body::Body::empty()),
        )
    };
    for (uri, range, status) in [
        ("/v1/weights/nope/manifest", None, StatusCode::NOT_FOUND),
        (
            "/v1/weights/tiny/chunks/layer_99",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/weights/tiny/chunks/layer_01",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/weights/tiny/files/model.safetensors",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/weights/tiny/chunks/layer_0",
            Some("bytes=z-"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/weights/tiny/chunks/layer_0",
            Some("bytes=99999999-"),
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
    ] {
        let r = chunk(uri, range).await;
        assert_eq!(r.status, status, "{uri} {range:?}: {}", r.body);
        assert!(r.body["error"]["message"].is_string(), "{uri}: {}", r.body);
    }
    for body in [
        json!({"scope": "everything"}),
        json!({"scope": "model"}),
        json!([1, 2]),
    ] {
        let r = post(&m.app, "/v1/weights/invalidate", &[ADMIN], &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
    }
    let r = post(
        &m.app,
        "/v1/weights/invalidate",
        &[ADMIN],
        &json!({"scope": "model", "model": "nope"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Still serving: the weights and the API.
    assert_eq!(
        get(&m.app, "/v1/weights/tiny/manifest", &[TENANT])
            .await
            .status,
        StatusCode::OK
    );
    let r = post(
        &m.app,
        "/v1/embeddings",
        &[TENANT],
        &json!({"model": "all-MiniLM-L6-v2", "input": "still here"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
