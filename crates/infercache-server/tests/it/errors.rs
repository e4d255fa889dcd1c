//! Every bad input gets its documented 4xx, and the server keeps serving.

use infercache_server::{Limits, ServerConfig};
use serde_json::json;

use crate::support::{Server, model};

#[tokio::test]
async fn bad_inputs_get_their_4xx_and_the_server_keeps_serving() {
    let config = ServerConfig {
        limits: Limits {
            max_body_bytes: 64 << 10,
            max_items: 8,
            max_input_chars: 1000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let s = Server::start(config, model().await).await;
    let m = "all-MiniLM-L6-v2";
    let cases = [
        (
            json!({"model": m, "input": "x", "dimensions": 256}),
            400,
            "unsupported_parameter",
        ),
        (json!({"model": m, "input": []}), 400, "empty_input"),
        (json!({"model": m, "input": ""}), 400, "empty_string"),
        (json!({"model": m, "input": 42}), 400, "invalid_value"),
        (
            json!({"model": m, "input": [[101, 102]]}),
            400,
            "invalid_value",
        ),
        (
            json!({"model": m, "input": vec!["x"; 9]}),
            400,
            "too_many_inputs",
        ),
        (
            json!({"model": m, "input": "y".repeat(1001)}),
            400,
            "input_too_long",
        ),
        (
            json!({"model": m, "input": "x", "encoding_format": "hex"}),
            400,
            "invalid_value",
        ),
        (json!({"input": "x"}), 400, "missing_required_parameter"),
        (
            json!({"model": "gpt-4", "input": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": m, "input": "z".repeat(70_000)}),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let r = s.post("/v1/embeddings", &[], &body).await;
        assert_eq!((r.status, r.code()), (status, code), "{}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 10);
        assert!(r.body["error"]["type"].is_string());
    }
    let r = s
        .post_raw("/v1/embeddings", "{\"model\": \"all-MiniLM")
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_json"));
    let r = s.post("/v1/embed", &[], &json!({"text": ["a"]})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_value"));
    let r = s.get("/v1/nope", &[]).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));

    let ok = s.embed(&[], json!("still serving")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        s.model_stats(&[]).await["inference"]["texts"],
        1,
        "no bad request reached the model"
    );
    s.stop().await;
}
