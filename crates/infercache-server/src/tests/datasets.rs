//! The dataset routes against a real dataset cache in a temporary directory.

use std::io::Write as _;

use axum::http::StatusCode;
use infercache_datasets::{BuildOptions, DatasetCache, DatasetConfig, DatasetSource};
use tower::ServiceExt as _;

use super::*;

/// A cache holding `rows` (300 rows of `{"id", "text"}`, in shards of 64 rows).
fn cache(dir: &std::path::Path) -> DatasetCache {
    let source = dir.join("rows.jsonl");
    let mut f = std::fs::File::create(&source).unwrap();
    for i in 0..300 {
        writeln!(f, r#"{{"id": {i}, "text": "row {i}"}}"#).unwrap();
    }
    drop(f);
    let cache = DatasetCache::open(
        dir.join("datasets"),
        DatasetConfig::default(),
        infercache_core::SystemClock::shared(),
    )
    .unwrap();
    cache
        .cache_dataset(
            "rows",
            DatasetSource::Files(vec![source]),
            &[],
            BuildOptions { shard_rows: 64 },
            &mut |_| {},
        )
        .unwrap();
    cache
}

fn served(cache: DatasetCache, keys: ApiKeys) -> App {
    let models = Models::new([(Fake::new() as Arc<dyn Backend>, CachePolicy::builtin())]);
    app(AppState::new(None, models, keys, limits()).with_datasets(cache))
}

/// The body of `uri`, with its status and headers.
async fn bytes(app: &App, uri: &str) -> (StatusCode, HeaderMap, Bytes) {
    let response = app
        .clone()
        .oneshot(request(Method::GET, uri, &[], Body::empty()))
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes)
}

/// The body of `uri` as text, with its status and headers.
async fn text(app: &App, uri: &str) -> (StatusCode, HeaderMap, String) {
    let (status, headers, body) = bytes(app, uri).await;
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn ids(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn list_show_and_batches_with_a_resume_that_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let app = served(cache(dir.path()), ApiKeys::none());

    let list = get(&app, "/v1/datasets", &[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["data"][0]["name"], "rows");
    assert_eq!(list.body["data"][0]["rows"], 300);
    assert_eq!(list.body["data"][0]["shards"], 5);

    let show = get(&app, "/v1/datasets/rows", &[]).await;
    assert_eq!(show.status, StatusCode::OK, "{}", show.body);
    assert_eq!(show.body["manifest"]["rows"], 300);
    assert_eq!(show.body["files"].as_array().unwrap().len(), 5);
    let fingerprint = show.body["manifest"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_fingerprint = get(&app, &format!("/v1/datasets/{fingerprint}"), &[]).await;
    assert_eq!(by_fingerprint.body["manifest"], show.body["manifest"]);

    let (status, headers, plain) = text(&app, "/v1/datasets/rows/batches").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["x-dataset-rows"], "300");
    assert_eq!(ids(&plain), (0..300).collect::<Vec<_>>());

    let uri = "/v1/datasets/rows/batches?shuffle=9&epoch=2&batch=10";
    let (_, headers, full) = text(&app, uri).await;
    let full = ids(&full);
    let mut sorted = full.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..300).collect::<Vec<_>>());
    assert_ne!(full, sorted, "shuffled");
    let token = headers["x-resume-token"].to_str().unwrap();
    assert!(token.ends_with(".9.2.0"), "{token}");
    // A client that read 137 rows continues from POSITION + 137.
    let resumed = format!("{}137", token.strip_suffix('0').unwrap());
    let (status, headers, rest) =
        text(&app, &format!("/v1/datasets/rows/batches?resume={resumed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-dataset-position"], "137");
    assert_eq!(ids(&rest), full[137..]);

    let (_, headers, arrow) = bytes(&app, "/v1/datasets/rows/batches?format=arrow").await;
    assert_eq!(
        headers["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    assert!(!arrow.is_empty());
}

#[tokio::test]
async fn bad_names_options_and_tokens_are_4xx_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let app = served(cache(dir.path()), ApiKeys::none());
    get(&app, "/v1/datasets/nope", &[])
        .await
        .error(StatusCode::NOT_FOUND, "dataset_not_found");
    get(&app, "/v1/datasets/nope/batches", &[])
        .await
        .error(StatusCode::NOT_FOUND, "dataset_not_found");
    for (uri, param) in [
        ("/v1/datasets/rows/batches?batch=0", "batch"),
        ("/v1/datasets/rows/batches?format=csv", "format"),
        ("/v1/datasets/rows/batches?shuffle=x", "shuffle"),
        ("/v1/datasets/rows/batches?resume=v1.zz", "resume"),
        ("/v1/datasets/.hidden", "name"),
        ("/v1/datasets/.hidden/batches", "name"),
    ] {
        let r = get(&app, uri, &[]).await;
        r.error(StatusCode::BAD_REQUEST, "invalid_value");
        assert_eq!(r.body["error"]["param"], param, "{uri}: {}", r.body);
    }
    get(&app, "/v1/datasets/rows/batches?colour=red", &[])
        .await
        .error(StatusCode::BAD_REQUEST, "unsupported_parameter");
    // A token of another stream of the same dataset is refused, never misread.
    let other = "v1.0000000000000000000000000000000000000000000000000000000000000000.-.0.5";
    get(
        &app,
        &format!("/v1/datasets/rows/batches?resume={other}"),
        &[],
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_value");
    // And the server goes on serving.
    let (status, _, rows) = text(&app, "/v1/datasets/rows/batches?batch=7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&rows).len(), 300);
}

#[tokio::test]
async fn datasets_need_a_key_when_keys_are_set_and_a_datasets_dir() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::new([("sk-a", "acme", false)]).unwrap();
    let app = served(cache(dir.path()), keys);
    get(&app, "/v1/datasets", &[])
        .await
        .error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    get(&app, "/v1/datasets/rows/batches", &[])
        .await
        .error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    let r = get(&app, "/v1/datasets", &[("authorization", "Bearer sk-a")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let plain = harness();
    get(&plain.app, "/v1/datasets/rows/batches", &[])
        .await
        .error(StatusCode::NOT_FOUND, "datasets_disabled");
}
