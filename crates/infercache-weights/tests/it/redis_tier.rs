//! Weight servers sharing a real `redis-server`: chunks read from disk once for all of
//! them, values checked against their SHA-256, and Redis killed under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use infercache_core::Digest;
use infercache_engine::RemoteEntry;
use infercache_redis::testing::RedisServer;
use infercache_weights::server::{ServerConfig, redis_config};
use infercache_weights::testing::{TinyBert, reference_embeddings, sample_texts};
use infercache_weights::{ClientConfig, StreamingBertModel};

use crate::client::quick;
use crate::common::{THREADS, TINY, TestServer, Tiny, eventually};

fn with_redis(t: &Tiny, redis: &RedisServer) -> ServerConfig {
    ServerConfig {
        cache_bytes: 100 << 20,
        redis: Some(redis_config(&redis.url())),
        ..ServerConfig::new(t.root())
    }
}

/// A weight server on `redis`, once its Redis tier is in use.
async fn start(config: ServerConfig) -> TestServer {
    let s = TestServer::start(config).await;
    let server = s.server.clone();
    eventually("the Redis tier in use", move || {
        server.stats().redis.is_some_and(|r| r.tier.connected)
    })
    .await;
    s
}

async fn fetch_all(url: &str, t: &Tiny) {
    let client = infercache_core::tls::client();
    for name in t.manifest.chunks.keys() {
        let resp = client
            .get(format!("{url}/v1/weights/{TINY}/chunks/{name}"))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{name}: {}", resp.status());
        assert_eq!(resp.bytes().await.unwrap().len() as u64, t.size(name));
    }
}

/// The chunk values the weight servers keep in Redis, by key.
fn redis_values(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.client().get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("infercache:weights:v:*")
        .query(&mut conn)
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn two_weight_servers_share_chunks_through_redis() {
    let redis = RedisServer::start();
    let t = Tiny::new(TinyBert::default());
    let a = start(with_redis(&t, &redis)).await;
    let b = start(with_redis(&t, &redis)).await;
    let n = t.manifest.chunks.len();

    fetch_all(&a.url(), &t).await;
    assert_eq!(a.server.stats().storage.reads as usize, n);
    eventually("server A's chunks in Redis", || {
        redis_values(&redis).len() == n
    })
    .await;

    // B has never read a chunk: Redis has them all.
    fetch_all(&b.url(), &t).await;
    let s = b.server.stats();
    assert_eq!(s.storage.reads, 0, "{:?}", s.cache);
    assert_eq!(s.cache.redis_hits as usize, n);
    let r = s.redis.unwrap();
    assert_eq!(r.tier.hits as usize, n);
    assert_eq!(r.sha256_mismatches, 0);
    // And B's memory now has them.
    fetch_all(&b.url(), &t).await;
    assert_eq!(b.server.stats().cache.hits as usize, n);
}

#[tokio::test]
async fn a_value_in_redis_that_fails_its_sha256_is_dropped_and_read_from_disk() {
    let redis = RedisServer::start();
    let t = Tiny::new(TinyBert::default());
    let a = start(with_redis(&t, &redis)).await;
    fetch_all(&a.url(), &t).await;
    let n = t.manifest.chunks.len();
    eventually("chunks in Redis", || redis_values(&redis).len() == n).await;

    // Another writer stores wrong bytes under each chunk's key, well-formed for the tier
    // (its checksum and key match): only the SHA-256 can tell.
    let mut conn = redis.client().get_connection().unwrap();
    for key in redis_values(&redis) {
        let digest: Digest = key.rsplit(':').next().unwrap().parse().unwrap();
        let entry = RemoteEntry {
            value: bytes::Bytes::from_static(b"not the chunk"),
            created_ms: 1,
            expires_ms: None,
        };
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(infercache_redis::codec::encode(&digest, &entry))
            .query(&mut conn)
            .unwrap();
    }
    let b = start(with_redis(&t, &redis)).await;
    fetch_all(&b.url(), &t).await; // every body checked against its size above
    let s = b.server.stats();
    assert_eq!(s.redis.unwrap().sha256_mismatches as usize, n);
    assert_eq!(s.storage.reads as usize, n);
    assert_eq!(s.cache.redis_hits, 0);
}

#[tokio::test]
async fn with_redis_killed_under_load_every_fetch_is_served_from_disk() {
    let mut redis = RedisServer::start();
    let t = Tiny::new(TinyBert::default());
    let a = start(with_redis(&t, &redis)).await;
    fetch_all(&a.url(), &t).await;
    let n = t.manifest.chunks.len();
    eventually("chunks in Redis", || redis_values(&redis).len() == n).await;

    // B has no memory cache, so every layer a client needs comes from Redis or disk.
    let b = start(ServerConfig {
        cache_bytes: 0,
        ..with_redis(&t, &redis)
    })
    .await;
    let texts = sample_texts();
    let reference = reference_embeddings(&t.model, &texts, THREADS);
    let model = StreamingBertModel::connect_with(
        &b.url(),
        TINY,
        ClientConfig {
            cache_size: 1,
            prefetch: 1,
            threads: THREADS,
            http: quick(),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let texts = texts.clone();
        tokio::spawn(async move {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let mut passes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                passes.push(model.embed(&refs).await);
            }
            passes
        })
    };
    eventually("reads from Redis", || {
        b.server.stats().redis.unwrap().tier.hits >= 8
    })
    .await;
    let before = b.server.stats().storage.reads;
    redis.kill9();
    eventually("reads from disk", || {
        b.server.stats().storage.reads >= before + 8
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let passes = load.await.unwrap();
    assert!(passes.len() >= 4);
    for (i, pass) in passes.into_iter().enumerate() {
        let got = pass.unwrap_or_else(|e| panic!("pass {i} failed: {e}"));
        assert_eq!(got, reference, "pass {i}");
    }
}
