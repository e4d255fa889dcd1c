//! Bounded memory under hostile bodies: a server process of its own
//! ([`ChildServer`], so that its memory is measured alone), 256 concurrent 2 MiB bodies of
//! numbers, its peak resident memory read from `/proc/PID/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

use crate::process::ChildServer;
/// The body budget the child runs with.
const BUDGET: usize = 32 << 20; // as the configuration below says
/// Bytes of each hostile body.
const BODY: usize = 2 << 20;
/// What a request holds per byte of its body, at most, while it is parsed and served (the
/// body, its canonical form, the upstream request), allocator slack included; README,
/// "Guarantees and failure modes".
const MULTIPLE: usize = 3;
/// What a connection whose body is refused holds while the body is read and dropped: the
/// HTTP server's read buffer, which grows to about 400 KiB.
const PER_CONNECTION: usize = 512 << 10;
/// Room for the rest: task stacks, the answers, the allocator's own.
const SLACK: usize = 32 << 20;

/// A plain JSON upstream answering each row with its length in bytes.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let rows = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&rows);
    let app = Router::new().route(
        "/score",
        post(move |body: axum::body::Bytes| {
            let counted = Arc::clone(&counted);
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap();
                let inputs = body["inputs"].as_array().unwrap();
                counted.fetch_add(inputs.len(), Ordering::SeqCst);
                let outputs: Vec<Value> =
                    inputs.iter().map(|i| json!(i.to_string().len())).collect();
                axum::Json(json!({ "outputs": outputs }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rows)
}

/// `{"inputs": [[n, 0.123456, 0.123456, ...]]}` of about `BODY` bytes: one row of numbers,
/// a different one for each `n`.
fn hostile_body(n: usize) -> String {
    let mut body = format!("{{\"inputs\": [[{n}");
    while body.len() < BODY - 16 {
        body.push_str(",0.123456");
    }
    body.push_str("]]}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_keep_memory_bounded_and_the_server_serves() {
    let (url, rows) = upstream().await;
    let server = ChildServer::start(&format!(
        r#"
        no_disk = true
        memory = "64MiB"
        max_body_size = "3MiB"
        body_budget = "32MiB"
        max_concurrent_requests = 512

        [[models]]
        name = "m"
        backend = "http-json"
        url = "{url}/score"
        "#
    ));
    let client = infercache_core::tls::client();
    let predict = format!("{}/v1/models/m/predict", server.url);
    let normal = client
        .post(&predict)
        .json(&json!({ "inputs": [[1, 2, 3]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(normal.status(), 200);
    let baseline = server.memory("VmRSS");

    let mut load = Vec::new();
    for n in 0..256 {
        let (client, predict) = (client.clone(), predict.clone());
        load.push(tokio::spawn(async move {
            let r = client
                .post(&predict)
                .header("content-type", "application/json")
                .body(hostile_body(n))
                .send()
                .await
                .expect("every request is answered");
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.unwrap();
            (status, retry_after, body)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in load {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert!(retry_after, "{body}");
                assert_eq!(body["error"]["code"], "body_budget_exhausted", "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let peak = server.memory("VmHWM");
    let grown = peak.saturating_sub(baseline);
    let bound = MULTIPLE * BUDGET + 256 * PER_CONNECTION + SLACK;
    eprintln!(
        "baseline {} MiB, peak {} MiB, grown {} MiB (bound {} MiB); {ok} answered, {refused} refused",
        baseline >> 20,
        peak >> 20,
        grown >> 20,
        bound >> 20
    );
    assert!(
        grown <= bound,
        "grew by {} MiB, more than {} MiB",
        grown >> 20,
        bound >> 20
    );
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");
    assert_eq!(rows.load(Ordering::SeqCst), 1 + ok);

    // And it serves afterwards.
    let after = client
        .post(&predict)
        .json(&json!({ "inputs": [[1, 2, 3]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["x-cache"], "HIT");
}
