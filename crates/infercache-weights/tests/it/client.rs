//! The streaming client against real weight servers on loopback: exactness, caching,
//! prefetch, restarts, and every bad input.

use std::time::Duration;

use infercache_weights::client::HttpConfig;
use infercache_weights::testing::{TinyBert, reference_embeddings, sample_texts};
use infercache_weights::{ClientConfig, ClientError, StreamingBertModel};

use crate::common::{THREADS, TINY, TestServer, Tiny, config, eventually};

/// Quick retries, so tests of failures take milliseconds.
pub fn quick() -> HttpConfig {
    HttpConfig {
        attempts: 3,
        backoff: Duration::from_millis(5),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(2),
    }
}

async fn connect(url: &str, cache_size: usize, prefetch: usize) -> StreamingBertModel {
    StreamingBertModel::connect_with(
        url,
        TINY,
        ClientConfig {
            cache_size,
            prefetch,
            threads: THREADS,
            http: quick(),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap()
}

fn refs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

/// Bit-for-bit equality (`==` on f32 would equate 0.0 and -0.0).
pub fn assert_bits_eq(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let x: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
        let y: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        assert_eq!(x, y, "{what}: text {i}");
    }
}

#[tokio::test]
async fn streamed_embeddings_are_bit_identical_to_the_whole_model_at_every_cache_size() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let texts = sample_texts();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    // Each text alone too: the same batching on both sides.
    let alone: Vec<Vec<Vec<f32>>> = texts
        .iter()
        .map(|x| reference_embeddings(&t.model, std::slice::from_ref(x), THREADS))
        .collect();
    for cache_size in [1, 2, 4] {
        for prefetch in [0, 1, 2] {
            let model = connect(&server.url(), cache_size, prefetch).await;
            let what = format!("cache_size {cache_size}, prefetch {prefetch}");
            for round in 0..2 {
                let got = model.embed(&refs(&texts)).await.unwrap();
                assert_bits_eq(&got, &reference, &format!("{what}, round {round}"));
            }
            for (x, want) in texts.iter().zip(&alone) {
                assert_bits_eq(&model.embed(&[x]).await.unwrap(), want, &what);
            }
            let info = model.cache_info();
            assert!(info.cache_size <= cache_size, "{what}: {info:?}");
        }
    }
    assert!(
        connect(&server.url(), 1, 0)
            .await
            .embed(&[])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn with_room_for_every_layer_the_warm_path_fetches_nothing() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let model = connect(&server.url(), 4, 1).await;
    let texts = sample_texts();
    model.embed(&refs(&texts)).await.unwrap();
    let first = model.inference_stats();
    assert_eq!(first.fetches, 5, "embeddings and four layers");
    for _ in 0..3 {
        model.embed(&refs(&texts)).await.unwrap();
    }
    let warm = model.inference_stats();
    assert_eq!(warm.fetches, first.fetches, "no fetch once warm");
    assert_eq!(warm.bytes_fetched, first.bytes_fetched);
    assert_eq!(warm.demand_hits, 12);
    assert_eq!(warm.total_inferences, 4);
    assert!(warm.avg_inference_time > 0.0);
    let info = model.cache_info();
    assert_eq!(
        info.cached_components,
        ["layer_0", "layer_1", "layer_2", "layer_3"]
    );
    assert_eq!(
        info.access_order,
        ["layer_0", "layer_1", "layer_2", "layer_3"]
    );
    assert_eq!(info.max_cache_size, 4);
    assert_eq!(info.resident_components, ["embeddings"]);
    // Tensor bytes as loaded: f32 weights of four layers and the embeddings (the I64
    // position ids are not loaded: positions are computed).
    let layer_floats = t.manifest.chunks["layer_0"]
        .tensors
        .iter()
        .map(|e| e.shape.iter().product::<usize>())
        .sum::<usize>();
    let emb_bytes: usize = t.manifest.chunks["embeddings"]
        .tensors
        .iter()
        .filter(|e| e.dtype == "F32")
        .map(|e| e.shape.iter().product::<usize>() * 4)
        .sum();
    assert_eq!(
        info.memory_usage_bytes as usize,
        4 * layer_floats * 4 + emb_bytes
    );
}

#[tokio::test]
async fn exactly_one_fetch_per_layer_per_pass_with_prefetch_and_a_small_cache() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let model = connect(&server.url(), 2, 1).await;
    let texts = sample_texts();
    let passes = 5;
    for _ in 0..passes {
        model.embed(&refs(&texts)).await.unwrap();
    }
    let s = model.inference_stats();
    // A cache of two under a sequential scan of four layers: every pass fetches every
    // layer, once, prefetched while the previous one runs.
    for i in 0..4 {
        let name = format!("layer_{i}");
        let c = s.chunks.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.fetches, passes, "{name}");
        assert_eq!(
            c.bytes_fetched,
            passes * t.size(&name),
            "{name}: exactly 1x the chunk bytes"
        );
    }
    let served = server.server.stats();
    for c in served
        .chunks
        .iter()
        .filter(|c| c.chunk.starts_with("layer_"))
    {
        assert_eq!(c.requests, passes, "{} requested once per pass", c.chunk);
    }
    assert_eq!(
        s.misses, passes,
        "only layer_0 is demanded cold; the rest were prefetched"
    );
    assert_eq!(s.prefetch_hits, 3 * passes);
    assert_eq!(s.prefetches, 3 * passes);
    assert!(
        (s.cache_hit_rate - 0.75).abs() < 1e-9,
        "{}",
        s.cache_hit_rate
    );
    assert_eq!(s.prefetch_wasted, 0);
}

#[tokio::test]
async fn concurrent_forward_passes_share_every_fetch() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let model = connect(&server.url(), 4, 1).await;
    let texts = sample_texts();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let model = model.clone();
            let texts = texts.clone();
            tokio::spawn(async move { model.embed(&refs(&texts)).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_bits_eq(&task.await.unwrap(), &reference, "concurrent");
    }
    let s = model.inference_stats();
    assert_eq!(
        s.fetches, 5,
        "each layer fetched once for eight passes: {s:?}"
    );
    for c in server.server.stats().chunks {
        assert!(
            c.requests <= 1,
            "{} requested {} times",
            c.chunk,
            c.requests
        );
    }
}

#[tokio::test]
async fn warmup_and_resizing_and_clearing_the_cache() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let model = connect(&server.url(), 3, 0).await;
    model.warmup(None).await.unwrap();
    assert_eq!(
        model.cache_info().cached_components,
        ["layer_0", "layer_1", "layer_2"]
    );
    assert_eq!(model.inference_stats().prefetches, 3);

    // The three warmed layers are prefetch hits; layer_3 is fetched and evicts layer_0,
    // the least recently used.
    model.embed(&["the cat"]).await.unwrap();
    let s = model.inference_stats();
    assert_eq!(
        (s.prefetch_hits, s.misses, s.prefetch_wasted),
        (3, 1, 0),
        "{s:?}"
    );
    assert_eq!(
        model.cache_info().access_order,
        ["layer_1", "layer_2", "layer_3"]
    );

    model.set_cache_size(1).unwrap();
    let info = model.cache_info();
    assert_eq!(
        (info.cache_size, info.max_cache_size),
        (1, 1),
        "evicted at once"
    );
    assert_eq!(info.cached_components, ["layer_3"]);

    model.set_max_cache_bytes(Some(1));
    assert_eq!(
        model.cache_info().cache_size,
        0,
        "a byte bound below one layer holds none"
    );
    model.set_max_cache_bytes(None);
    model.set_cache_size(4).unwrap();
    model.warmup(None).await.unwrap();
    assert_eq!(model.cache_info().cache_size, 4);
    model.clear_cache();
    assert_eq!(model.cache_info().cache_size, 0);
    assert!(model.embed(&["still works"]).await.is_ok());

    assert!(matches!(
        model.set_cache_size(0),
        Err(ClientError::Config(_))
    ));
    assert!(
        matches!(model.warmup(Some(&[4])).await, Err(ClientError::Config(m)) if m.contains("layer 4"))
    );
}

#[tokio::test]
async fn the_client_survives_a_server_restart_and_a_new_client_finds_the_server_warm() {
    let t = Tiny::new(TinyBert::default());
    let mut server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let texts = sample_texts();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    let model = connect(&server.url(), 1, 1).await;
    assert_bits_eq(
        &model.embed(&refs(&texts)).await.unwrap(),
        &reference,
        "before",
    );

    // The server goes away: a pass that must fetch fails with an error naming a chunk.
    server.stop().await;
    let err = model.embed(&refs(&texts)).await.unwrap_err();
    assert!(
        err.chunk().is_some_and(|c| c.starts_with("layer_")),
        "{err}"
    );
    assert!(
        matches!(err, ClientError::Transport { attempts: 3, .. }),
        "{err:?}"
    );

    // It comes back (an empty cache, same port): the same client carries on.
    server.restart(config(&t.root(), 100 << 20)).await;
    assert_bits_eq(
        &model.embed(&refs(&texts)).await.unwrap(),
        &reference,
        "after",
    );
    assert_eq!(
        server.server.stats().storage.reads,
        4,
        "the new server read every layer"
    );

    // A new client (a restarted process) finds the server's cache warm.
    let again = connect(&server.url(), 4, 1).await;
    assert_bits_eq(
        &again.embed(&refs(&texts)).await.unwrap(),
        &reference,
        "new client",
    );
    let s = server.server.stats();
    assert_eq!(
        s.storage.reads,
        4 + 1,
        "only the embeddings were not yet cached"
    );
    eventually("stats", || server.server.stats().cache.hits >= 4).await;
}

#[tokio::test]
async fn bad_connections_are_typed_errors() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let connect_err = |url: String, model: &'static str, cache_size: usize| async move {
        StreamingBertModel::connect_with(
            &url,
            model,
            ClientConfig {
                cache_size,
                threads: THREADS,
                http: quick(),
                ..ClientConfig::default()
            },
        )
        .await
        .unwrap_err()
    };
    assert!(matches!(
        connect_err("ftp://x".into(), TINY, 3).await,
        ClientError::Config(_)
    ));
    assert!(matches!(
        connect_err("not a url".into(), TINY, 3).await,
        ClientError::Config(_)
    ));
    assert!(matches!(
        connect_err(server.url(), "a/b", 3).await,
        ClientError::Config(_)
    ));
    assert!(matches!(
        connect_err(server.url(), TINY, 0).await,
        ClientError::Config(_)
    ));
    let unknown = connect_err(server.url(), "other-model", 3).await;
    assert!(
        matches!(&unknown, ClientError::Status { chunk, status: 404, message } if chunk == "manifest" && message.contains("other-model")),
        "{unknown:?}"
    );
    // Nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    assert!(matches!(
        connect_err(closed, TINY, 3).await,
        ClientError::Transport { attempts: 3, .. }
    ));
}
