//! The real all-MiniLM-L6-v2, chunked, served and streamed layer by layer, against the
//! built-in model loaded from its local files.

use infercache_model::bert::Threads;
use infercache_model::{
    Embedder, ModelFiles, TensorDigest, WEIGHTS_SHA256, WEIGHTS_TENSORS_SHA256,
};
use infercache_weights::{
    ChunkOptions, ClientConfig, NoProgress, StreamingBertModel, chunk_model, fetch_builtin,
};

use crate::client::{assert_bits_eq, quick};
use crate::common::{THREADS, TestServer, config, minilm_dir};

const NAME: &str = "all-MiniLM-L6-v2";

fn texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "A man is eating food.",
        "The weights stream from a server, one layer at a time.",
        "ok",
        "Ünïcödé, emoji 🦀 and 中文 in one sentence.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Past the model's 256 tokens: truncated the same way on both sides.
    texts.push("layer by layer ".repeat(120));
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_all_minilm_l6_v2_is_bit_identical_to_the_built_in_model() {
    let dir = minilm_dir();
    let files = ModelFiles::from_dir(&dir).unwrap();
    let embedder = Embedder::load_with(&files, Threads::new(THREADS).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let chunks = tmp.path().join(NAME);
    let options = ChunkOptions {
        model_name: Some(NAME.into()),
        ..ChunkOptions::default()
    };
    let report = chunk_model(&dir, &chunks, &options, &mut NoProgress).unwrap();
    assert_eq!(report.manifest.num_layers, 6);
    let server = TestServer::start(config(tmp.path(), 100 << 20)).await;

    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = embedder.embed(&refs).unwrap();
    let alone: Vec<Vec<Vec<f32>>> = refs.iter().map(|t| embedder.embed(&[t]).unwrap()).collect();

    for cache_size in [1, 3, 6] {
        for prefetch in [0, 1] {
            let what = format!("cache_size {cache_size}, prefetch {prefetch}");
            let model = StreamingBertModel::connect_with(
                &server.url(),
                NAME,
                ClientConfig {
                    cache_size,
                    prefetch,
                    threads: THREADS,
                    http: quick(),
                    ..ClientConfig::default()
                },
            )
            .await
            .unwrap();
            for round in 0..2 {
                let got = model.embed(&refs).await.unwrap();
                assert_bits_eq(&got, &batch, &format!("{what}, batch, round {round}"));
            }
            for (text, want) in refs.iter().zip(&alone) {
                let got = model.embed(&[text]).await.unwrap();
                assert_bits_eq(&got, want, &format!("{what}, {text:?} alone"));
            }
            let passes = 2 + refs.len() as u64;
            let s = model.inference_stats();
            let layer_fetches = s.fetches - 1;
            if cache_size == 6 {
                assert_eq!(layer_fetches, 6, "{what}: every layer once, then warm");
            } else {
                // A scan of six layers through a smaller LRU cache misses every layer.
                assert_eq!(layer_fetches, 6 * passes, "{what}: {s:?}");
            }
            let info = model.cache_info();
            assert_eq!(info.cache_size, cache_size, "{what}");
            assert_eq!(s.total_inferences, passes, "{what}");
        }
    }
}

#[test]
fn the_pinned_tensor_digest_is_the_local_model_files() {
    let bytes = std::fs::read(minilm_dir().join("model.safetensors")).unwrap();
    let mut digest = TensorDigest::default();
    digest
        .add(&safetensors::SafeTensors::deserialize(&bytes).unwrap())
        .unwrap();
    assert_eq!(digest.len(), 104);
    assert_eq!(digest.finish(), WEIGHTS_TENSORS_SHA256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_model_from_chunks_is_the_local_one_with_its_digest() {
    let dir = minilm_dir();
    let files = ModelFiles::from_dir(&dir).unwrap();
    let local = Embedder::load_with(&files, Threads::new(THREADS).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    chunk_model(
        &dir,
        &tmp.path().join(NAME),
        &ChunkOptions::default(),
        &mut NoProgress,
    )
    .unwrap();
    let fp16 = ChunkOptions {
        fp16: true,
        model_name: Some("minilm-fp16".into()),
    };
    chunk_model(
        &dir,
        &tmp.path().join("minilm-fp16"),
        &fp16,
        &mut NoProgress,
    )
    .unwrap();
    let server = TestServer::start(config(tmp.path(), 100 << 20)).await;

    let streamed = fetch_builtin(&server.url(), NAME, quick(), Threads::new(THREADS).unwrap())
        .await
        .unwrap();
    assert!(streamed.pinned);
    assert_eq!(streamed.digest, format!("sha256:{WEIGHTS_SHA256}"));
    assert_eq!(streamed.chunks, 8, "embeddings, 6 layers, pooler");
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_bits_eq(
        &streamed.embedder.embed(&refs).unwrap(),
        &local.embed(&refs).unwrap(),
        "the built-in model from chunks",
    );

    // Other weights (the same model cast to fp16) get a digest of their own.
    let other = fetch_builtin(
        &server.url(),
        "minilm-fp16",
        quick(),
        Threads::new(THREADS).unwrap(),
    )
    .await
    .unwrap();
    assert!(!other.pinned);
    assert!(
        other.digest.starts_with("tensors-sha256:"),
        "{}",
        other.digest
    );
    assert_ne!(other.digest, streamed.digest);
}
