//! The built-in model heals: a panic in a forward pass fails only its batch.

use infercache_server::ServerConfig;
use serde_json::json;

use crate::support::{Server, model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_model_fails_one_batch_and_readiness_follows_the_threads() {
    let model = model().await;
    let s = Server::start(ServerConfig::default(), model.clone()).await;

    model.pool().inject_panics(1);
    let failed = s.embed(&[], json!(["a panic on this batch"])).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_eq!(failed.code(), "internal_error", "{}", failed.body);

    // The thread was replaced; the failure was not cached.
    assert_eq!(s.get("/readyz", &[]).await.status, 200);
    let again = s.embed(&[], json!(["a panic on this batch"])).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("x-cache"), "MISS");
    assert_eq!(
        again.body["data"][0]["embedding"].as_array().unwrap().len(),
        384
    );

    // While no thread can run, /readyz is 503 and requests fail at once.
    model.pool().refuse_spawns(true);
    model.pool().inject_panics(1);
    assert_eq!(s.embed(&[], json!(["second panic"])).await.status, 500);
    let ready = s.get("/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["status"], "model_unavailable");
    let refused = s.embed(&[], json!(["no thread"])).await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(refused.code(), "internal_error");

    model.pool().refuse_spawns(false);
    assert_eq!(s.get("/readyz", &[]).await.status, 200);
    assert_eq!(s.embed(&[], json!(["no thread"])).await.status, 200);
    s.stop().await;
}
