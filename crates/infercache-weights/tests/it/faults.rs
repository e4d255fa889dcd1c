//! Chunks a real weight server never sends (it checks every chunk before serving it):
//! tampered, truncated, oversized, foreign, cut mid-stream. A small HTTP double serves
//! the real chunk directory and injects one fault at a time; the client must refuse each
//! with its typed error naming the chunk, and never use the bytes.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use infercache_weights::client::{DiskConfig, Fetcher};
use infercache_weights::manifest::Manifest;
use infercache_weights::testing::{TinyBert, reference_embeddings, sample_texts};
use infercache_weights::{ClientConfig, ClientError, StreamingBertModel};
use parking_lot::Mutex;

use crate::client::quick;
use crate::common::{THREADS, TINY, Tiny};

/// The fault injected into responses for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    None,
    /// One byte flipped; size and ETag as the manifest says.
    Tampered,
    /// The full `Content-Length`, then half the body, then the connection drops; on every
    /// request (`always`) or only the first (then `Range` is honoured).
    CutShort {
        always: bool,
    },
    /// A `Content-Length` and body shorter than the chunk.
    ShortLength,
    /// More bytes than the chunk.
    Oversized,
    /// Another chunk's ETag.
    WrongEtag,
    /// 503 on every request.
    Unavailable,
    /// 404.
    Missing,
}

struct Double {
    dir: std::path::PathBuf,
    manifest: Vec<u8>,
    target: String,
    fault: Mutex<Fault>,
    /// `(chunk, Range header)` of every chunk request.
    seen: Mutex<Vec<(String, Option<String>)>>,
}

async fn manifest(State(d): State<Arc<Double>>) -> Response {
    d.manifest.clone().into_response()
}

async fn file(State(d): State<Arc<Double>>, Path((_, name)): Path<(String, String)>) -> Response {
    std::fs::read(d.dir.join(name)).unwrap().into_response()
}

async fn chunk(
    State(d): State<Arc<Double>>,
    Path((_, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_owned());
    let first = {
        let mut seen = d.seen.lock();
        let first = !seen.iter().any(|(n, _)| *n == name);
        seen.push((name.clone(), range.clone()));
        first
    };
    let m = Manifest::parse(&d.manifest).unwrap();
    let info = &m.chunks[&name];
    let bytes = Bytes::from(std::fs::read(d.dir.join(&info.file)).unwrap());
    let etag = format!("\"{}\"", info.sha256);
    let fault = if name == d.target {
        d.fault.lock().clone()
    } else {
        Fault::None
    };
    let ok = |status: StatusCode, body: Body, len: usize, etag: &str| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(etag).unwrap());
        r
    };
    match fault {
        Fault::None => ok(
            StatusCode::OK,
            Body::from(bytes.clone()),
            bytes.len(),
            &etag,
        ),
        Fault::Tampered => {
            let mut v = bytes.to_vec();
            let last = v.len() - 1;
            v[last] ^= 0x01;
            ok(StatusCode::OK, Body::from(v), bytes.len(), &etag)
        }
        Fault::CutShort { always } if always || first => {
            let half = bytes.slice(..bytes.len() / 2);
            // The half is flushed before the connection drops.
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err(std::io::Error::other("the server went away"))
            });
            let stream = futures_util::StreamExt::chain(
                futures_util::stream::iter(vec![Ok::<_, std::io::Error>(half)]),
                cut,
            );
            ok(
                StatusCode::OK,
                Body::from_stream(stream),
                bytes.len(),
                &etag,
            )
        }
        Fault::CutShort { .. } if range.is_none() => ok(
            StatusCode::OK,
            Body::from(bytes.clone()),
            bytes.len(),
            &etag,
        ),
        Fault::CutShort { .. } => {
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .map_or(0, |s| s.parse().unwrap());
            let rest = bytes.slice(start..);
            let mut r = ok(
                StatusCode::PARTIAL_CONTENT,
                Body::from(rest.clone()),
                rest.len(),
                &etag,
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!(
                    "bytes {start}-{}/{}",
                    bytes.len() - 1,
                    bytes.len()
                ))
                .unwrap(),
            );
            r
        }
        Fault::ShortLength => {
            let short = bytes.slice(..bytes.len() - 10);
            ok(StatusCode::OK, Body::from(short), bytes.len() - 10, &etag)
        }
        Fault::Oversized => {
            let mut v = bytes.to_vec();
            v.extend_from_slice(b"extra");
            let n = v.len();
            ok(StatusCode::OK, Body::from(v), n, &etag)
        }
        Fault::WrongEtag => {
            let other = format!("\"{}\"", m.chunks["pooler"].sha256);
            ok(
                StatusCode::OK,
                Body::from(bytes.clone()),
                bytes.len(),
                &other,
            )
        }
        Fault::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        Fault::Missing => (
            StatusCode::NOT_FOUND,
            "{\"error\": {\"message\": \"gone\"}}",
        )
            .into_response(),
    }
}

struct Running {
    url: String,
    double: Arc<Double>,
    _task: tokio::task::JoinHandle<()>,
}

async fn start(t: &Tiny, target: &str, manifest_bytes: Vec<u8>) -> Running {
    let double = Arc::new(Double {
        dir: t.chunks.clone(),
        manifest: manifest_bytes,
        target: target.to_owned(),
        fault: Mutex::new(Fault::None),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/weights/{model}/manifest", get(manifest))
        .route("/v1/weights/{model}/files/{name}", get(file))
        .route("/v1/weights/{model}/chunks/{name}", get(chunk))
        .with_state(Arc::clone(&double));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Running {
        url,
        double,
        _task: task,
    }
}

async fn connect(url: &str, cache_size: usize) -> Result<StreamingBertModel, ClientError> {
    StreamingBertModel::connect_with(
        url,
        TINY,
        ClientConfig {
            cache_size,
            prefetch: 0,
            threads: THREADS,
            http: quick(),
            ..ClientConfig::default()
        },
    )
    .await
}

#[tokio::test]
async fn every_bad_chunk_is_refused_with_its_typed_error_naming_it() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "layer_1", manifest).await;
    let size = t.size("layer_1");
    let texts = sample_texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();

    type Check = fn(&ClientError, u64) -> bool;
    let cases: [(Fault, Check); 7] = [
        (
            Fault::Tampered,
            |e, _| matches!(e, ClientError::Digest { chunk, .. } if chunk == "layer_1"),
        ),
        (
            Fault::CutShort { always: true },
            |e, size| matches!(e, ClientError::Truncated { chunk, expected, received } if chunk == "layer_1" && *expected == size && *received < size),
        ),
        (
            Fault::ShortLength,
            |e, size| matches!(e, ClientError::Truncated { chunk, received, .. } if chunk == "layer_1" && *received == size - 10),
        ),
        (
            Fault::Oversized,
            |e, _| matches!(e, ClientError::Oversized { chunk, .. } if chunk == "layer_1"),
        ),
        (
            Fault::WrongEtag,
            |e, _| matches!(e, ClientError::Changed { chunk, .. } if chunk == "layer_1"),
        ),
        (
            Fault::Unavailable,
            |e, _| matches!(e, ClientError::Transport { chunk, attempts: 3, .. } if chunk == "layer_1"),
        ),
        (
            Fault::Missing,
            |e, _| matches!(e, ClientError::Status { chunk, status: 404, message } if chunk == "layer_1" && message == "gone"),
        ),
    ];
    for (fault, check) in cases {
        let model = connect(&d.url, 4).await.unwrap();
        *d.double.fault.lock() = fault.clone();
        let err = model.embed(&texts).await.unwrap_err();
        assert!(check(&err, size), "{fault:?}: {err:?}");
        assert_eq!(err.chunk(), Some("layer_1"), "{fault:?}");
        assert!(err.to_string().contains("layer_1"), "{fault:?}: {err}");
        let info = model.cache_info();
        assert!(
            !info.cached_components.contains(&"layer_1".to_owned()),
            "{fault:?}: never cached"
        );
        // Errors are not cached: once the chunk is good again, the same client works.
        *d.double.fault.lock() = Fault::None;
        let reference = reference_embeddings(&t.model, &sample_texts(), THREADS);
        assert_eq!(model.embed(&texts).await.unwrap(), reference, "{fault:?}");
    }
}

#[tokio::test]
async fn a_body_cut_mid_stream_is_resumed_with_a_range_and_verified() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "layer_2", manifest).await;
    *d.double.fault.lock() = Fault::CutShort { always: false };
    let model = connect(&d.url, 4).await.unwrap();
    let texts = sample_texts();
    let got = model
        .embed(&texts.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(got, reference_embeddings(&t.model, &texts, THREADS));
    let size = t.size("layer_2");
    let seen: Vec<_> = d
        .double
        .seen
        .lock()
        .iter()
        .filter(|(n, _)| n == "layer_2")
        .cloned()
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].1.as_deref(), Some(&*format!("bytes={}-", size / 2)));
    let c = model
        .inference_stats()
        .chunks
        .into_iter()
        .find(|c| c.name == "layer_2")
        .unwrap();
    assert_eq!(
        c.bytes_fetched, size,
        "the resumed fetch moved each byte once"
    );
}

#[tokio::test]
async fn a_manifest_for_another_model_is_refused() {
    let t = Tiny::new(TinyBert::default());
    let mut m = t.manifest.clone();
    m.model_name = "someone-else".into();
    let d = start(&t, "none", m.to_bytes()).await;
    let err = connect(&d.url, 3).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ForeignManifest { expected, found } if expected == TINY && found == "someone-else"),
        "{err:?}"
    );

    let d = start(&t, "none", b"{\"format\": \"pickle\"}".to_vec()).await;
    assert!(matches!(
        connect(&d.url, 3).await.unwrap_err(),
        ClientError::Manifest(_)
    ));

    // A manifest whose tokenizer digest is not the file's: the tokenizer is refused.
    let mut m = t.manifest.clone();
    let bad = "0".repeat(64);
    m.tokenizer_sha256.clone_from(&bad);
    m.files.get_mut("tokenizer.json").unwrap().sha256 = bad;
    let d = start(&t, "none", m.to_bytes()).await;
    let err = connect(&d.url, 3).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Digest { chunk, .. } if chunk == "tokenizer.json"),
        "{err:?}"
    );
}

/// A client of `url` keeping chunks in `disk` (at most `max_bytes`), with `attempts`.
async fn connect_disk(
    url: &str,
    disk: &std::path::Path,
    max_bytes: u64,
    attempts: u32,
) -> Result<StreamingBertModel, ClientError> {
    StreamingBertModel::connect_with(
        url,
        TINY,
        ClientConfig {
            cache_size: 1,
            prefetch: 0,
            threads: THREADS,
            http: infercache_weights::client::HttpConfig {
                attempts,
                ..quick()
            },
            disk: Some(DiskConfig {
                dir: disk.to_owned(),
                max_bytes,
            }),
            ..ClientConfig::default()
        },
    )
    .await
}

fn chunk_requests(d: &Running) -> usize {
    d.double.seen.lock().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_on_the_disk_tier_fetches_no_chunk() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "none", manifest).await;
    let disk = tempfile::tempdir().unwrap();
    let texts = sample_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    let chunks = 1 + t.manifest.num_layers as u64;

    let first = connect_disk(&d.url, disk.path(), 64 << 20, 3)
        .await
        .unwrap();
    assert_eq!(first.embed(&refs).await.unwrap(), reference);
    let s = first.inference_stats();
    assert_eq!((s.fetches, s.disk_hits), (chunks, 0), "{s:?}");
    drop(first);
    let requests = chunk_requests(&d);

    for round in 0..2 {
        let again = connect_disk(&d.url, disk.path(), 64 << 20, 3)
            .await
            .unwrap();
        assert_eq!(
            again.embed(&refs).await.unwrap(),
            reference,
            "round {round}"
        );
        let s = again.inference_stats();
        assert_eq!(
            (s.fetches, s.disk_hits),
            (0, chunks),
            "round {round}: {s:?}"
        );
        assert_eq!(s.bytes_fetched, 0);
        assert_eq!(
            chunk_requests(&d),
            requests,
            "no chunk request reached the server"
        );
    }

    // A chunk damaged on disk is never used: it is dropped and fetched again.
    let store = infercache_artifact::Store::open(
        disk.path(),
        infercache_artifact::StoreConfig::single(
            "chunks",
            infercache_artifact::ClassConfig::new(64 << 20, infercache_artifact::Policy::Lru),
        ),
        infercache_core::SystemClock::shared(),
    )
    .unwrap();
    let digest =
        infercache_artifact::Digest::sha256_hex(&t.manifest.chunks["layer_1"].sha256).unwrap();
    let path = store.open_blob(&digest).unwrap().unwrap().path().to_owned();
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "a test damages a blob"
    )]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let healed = connect_disk(&d.url, disk.path(), 64 << 20, 3)
        .await
        .unwrap();
    assert_eq!(healed.embed(&refs).await.unwrap(), reference);
    let s = healed.inference_stats();
    assert_eq!((s.fetches, s.disk_hits), (1, chunks - 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_is_resumed_by_the_next_start_with_a_range() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "layer_1", manifest).await;
    // The first request for layer_1 is cut at half; later ones honour Range.
    *d.double.fault.lock() = Fault::CutShort { always: false };
    let disk = tempfile::tempdir().unwrap();
    let texts = sample_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let first = connect_disk(&d.url, disk.path(), 64 << 20, 1)
        .await
        .unwrap();
    let err = first.embed(&refs).await.unwrap_err();
    assert_eq!(err.chunk(), Some("layer_1"), "{err:?}");
    drop(first);

    let second = connect_disk(&d.url, disk.path(), 64 << 20, 1)
        .await
        .unwrap();
    assert_eq!(
        second.embed(&refs).await.unwrap(),
        reference_embeddings(&t.model, &texts, THREADS)
    );
    let size = t.size("layer_1");
    let seen: Vec<_> = d
        .double
        .seen
        .lock()
        .iter()
        .filter(|(n, _)| n == "layer_1")
        .cloned()
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].1, None);
    assert_eq!(seen[1].1.as_deref(), Some(&*format!("bytes={}-", size / 2)));
    let c = second
        .inference_stats()
        .chunks
        .into_iter()
        .find(|c| c.name == "layer_1")
        .unwrap();
    assert_eq!(c.bytes_fetched, size - size / 2, "only the rest moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_keeps_within_its_cap_least_recently_used_first_out() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "none", manifest).await;
    let disk = tempfile::tempdir().unwrap();
    let texts = sample_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    let total: u64 = t.manifest.chunks.values().map(|c| c.size_bytes).sum();
    let cap = t.size("embeddings") + 2 * t.size("layer_0") + t.size("layer_0") / 2;
    assert!(cap < total);

    for round in 0..2 {
        let model = connect_disk(&d.url, disk.path(), cap, 3).await.unwrap();
        assert_eq!(
            model.embed(&refs).await.unwrap(),
            reference,
            "round {round}"
        );
        let store = infercache_artifact::Store::open(
            disk.path(),
            infercache_artifact::StoreConfig::single(
                "chunks",
                infercache_artifact::ClassConfig::new(cap, infercache_artifact::Policy::Lru),
            ),
            infercache_core::SystemClock::shared(),
        )
        .unwrap();
        let usage = &store.usage().unwrap()["chunks"];
        assert!(usage.used <= cap, "round {round}: {usage:?}");
        assert!(usage.blobs >= 1, "round {round}: {usage:?}");
        // The last layer used is the most recent: it is kept.
        let last = infercache_artifact::Digest::sha256_hex(
            &t.manifest.chunks[&format!("layer_{}", t.manifest.num_layers - 1)].sha256,
        )
        .unwrap();
        assert!(store.contains(&last).unwrap(), "round {round}");
    }
}

/// Every chunk of the manifest through [`Fetcher::chunks`], collected until the first
/// error.
async fn pipelined(
    fetcher: &Fetcher,
    manifest: &Manifest,
) -> (Vec<(String, Bytes)>, Option<ClientError>) {
    let mut stream =
        std::pin::pin!(fetcher.chunks(manifest.chunks.iter().map(|(n, c)| (n.as_str(), c))));
    let mut got = Vec::new();
    while let Some(next) = stream.next().await {
        match next {
            Ok((name, f)) => got.push((name.to_owned(), f.bytes)),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[tokio::test]
async fn a_pipelined_stream_yields_verified_chunks_in_order_and_stops_at_a_tampered_one() {
    let t = Tiny::new(TinyBert::default());
    let manifest = std::fs::read(t.chunks.join("chunk_info.json")).unwrap();
    let d = start(&t, "layer_1", manifest).await;
    let fetcher = Fetcher::new(&d.url, TINY, quick()).unwrap();
    let names: Vec<String> = t.manifest.chunks.keys().cloned().collect();
    let on_disk = |name: &str| std::fs::read(t.chunk_path(name)).unwrap();

    // Twice: the second stream's bodies go into the buffers the first one's gave back,
    // and still hold exactly each chunk's bytes.
    for pass in 0..2 {
        let (got, err) = pipelined(&fetcher, &t.manifest).await;
        assert!(err.is_none(), "pass {pass}: {err:?}");
        let got_names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
        assert_eq!(
            got_names,
            names.iter().collect::<Vec<_>>(),
            "manifest order"
        );
        for (name, bytes) in &got {
            assert_eq!(&bytes[..], &on_disk(name)[..], "pass {pass}: {name}");
        }
    }
    let stats = fetcher.buffer_pool().stats();
    assert!(stats.reused > 0, "{stats:?}");

    // A tampered chunk ends the stream with its digest error; nothing of it is yielded.
    *d.double.fault.lock() = Fault::Tampered;
    let (got, err) = pipelined(&fetcher, &t.manifest).await;
    assert!(
        matches!(&err, Some(ClientError::Digest { chunk, .. }) if chunk == "layer_1"),
        "{err:?}"
    );
    let before: Vec<&String> = names.iter().take_while(|n| *n != "layer_1").collect();
    assert_eq!(got.iter().map(|(n, _)| n).collect::<Vec<_>>(), before);
}
