//! The forward pass run component by component, each loaded from its own tensors.

use infercache_model::ModelError;
use infercache_model::bert::{BertConfig, Embeddings, Hidden, Layer, MeanPooling, Threads};
use safetensors::SafeTensors;

use crate::{embedder, max_abs_diff, model_files};

const TEXTS: [&str; 4] = [
    "The weather is lovely today.",
    "He drove to the stadium.",
    "A much longer sentence, so that the batch holds sequences of different lengths.",
    "ok",
];

/// A safetensors file holding only the tensors of `file` whose names start with `prefix`,
/// names unchanged: what a per-layer chunk holds.
fn chunk(file: &SafeTensors<'_>, prefix: &str) -> Vec<u8> {
    let tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    assert!(!tensors.is_empty(), "no tensor under {prefix}");
    safetensors::serialize(tensors, None).unwrap()
}

fn bits(vectors: &[Vec<f32>]) -> Vec<Vec<u32>> {
    vectors
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn components_loaded_from_their_own_chunks_give_the_embedders_bits() {
    let embedder = embedder();
    let want = embedder.embed(&TEXTS).unwrap();

    let files = model_files();
    let weights = std::fs::read(files.dir().join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&weights).unwrap();
    let config_json = std::fs::read(files.dir().join("config.json")).unwrap();
    let config = BertConfig::from_json(&config_json).unwrap();
    assert_eq!(config.num_hidden_layers, 6);
    // A thread pool of the same size as the embedder's, built anew.
    let threads = Threads::new(embedder.threads().count()).unwrap();

    let tokens = embedder.tokenize(&TEXTS).unwrap();
    let bytes = chunk(&file, "embeddings.");
    let embeddings = Embeddings::load(&SafeTensors::deserialize(&bytes).unwrap(), &config).unwrap();
    let mut hidden = embeddings.forward(&tokens, &threads).unwrap();
    assert_eq!(hidden.lengths(), tokens.lengths());
    for i in 0..config.num_hidden_layers {
        let bytes = chunk(&file, &format!("encoder.layer.{i}."));
        let layer = Layer::load(&SafeTensors::deserialize(&bytes).unwrap(), i, &config).unwrap();
        assert_eq!(layer.index(), i);
        hidden = layer.forward(&hidden, &threads).unwrap();
    }
    let got = MeanPooling.forward(&hidden);
    assert_eq!(
        bits(&got),
        bits(&want),
        "step by step differs from Embedder::embed"
    );
}

#[test]
fn the_embedder_streams_the_same_components_as_the_whole_file_gives() {
    // `Embedder::load` reads the weights a tensor at a time; the components must be the
    // ones loading from the file read whole gives, value for value.
    let embedder = embedder();
    let files = model_files();
    let weights = std::fs::read(files.dir().join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&weights).unwrap();
    let config = embedder.config().clone();
    assert!(Embeddings::load(&file, &config).unwrap() == *embedder.embeddings());
    assert_eq!(embedder.layers().len(), config.num_hidden_layers);
    for (i, layer) in embedder.layers().iter().enumerate() {
        assert!(
            Layer::load(&file, i, &config).unwrap() == *layer,
            "layer {i}"
        );
    }
}

#[test]
fn one_thread_and_two_agree_within_float_rounding() {
    let files = model_files();
    let one = infercache_model::Embedder::load_with(&files, Threads::new(1).unwrap()).unwrap();
    let two = infercache_model::Embedder::load_with(&files, Threads::new(2).unwrap()).unwrap();
    let a = one.embed(&TEXTS).unwrap();
    let b = two.embed(&TEXTS).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) < 1e-6);
    }
    // And a pass is deterministic: the same batch twice gives the same bits.
    assert_eq!(bits(&two.embed(&TEXTS).unwrap()), bits(&b));
}

#[test]
fn a_chunk_without_a_tensor_or_with_a_wrong_shape_is_a_typed_error() {
    let files = model_files();
    let weights = std::fs::read(files.dir().join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&weights).unwrap();
    let config =
        BertConfig::from_json(&std::fs::read(files.dir().join("config.json")).unwrap()).unwrap();

    // Layer 2's chunk does not hold layer 3.
    let bytes = chunk(&file, "encoder.layer.2.");
    let err = Layer::load(&SafeTensors::deserialize(&bytes).unwrap(), 3, &config).unwrap_err();
    match err {
        ModelError::Weights { tensor, reason } => {
            assert!(tensor.starts_with("encoder.layer.3."), "{tensor}");
            assert_eq!(reason, "missing");
        }
        other => panic!("expected a weights error, got {other:?}"),
    }

    // A layer of the wrong width.
    let mut narrow = config.clone();
    narrow.hidden_size = 192;
    let err = Layer::load(&SafeTensors::deserialize(&bytes).unwrap(), 2, &narrow).unwrap_err();
    assert!(
        matches!(&err, ModelError::Weights { reason, .. } if reason.contains("shape")),
        "{err:?}"
    );

    // Not a safetensors file at all.
    assert!(matches!(
        SafeTensors::deserialize(b"not a safetensors file").map_err(ModelError::from),
        Err(ModelError::Safetensors(_))
    ));

    // Hidden states of the wrong width into a layer.
    let layer = Layer::load(&SafeTensors::deserialize(&bytes).unwrap(), 2, &config).unwrap();
    let hidden = Hidden::new(vec![0.0; 2 * 8], vec![2], 8).unwrap();
    let threads = Threads::new(1).unwrap();
    assert!(matches!(
        layer.forward(&hidden, &threads),
        Err(ModelError::Shape(_))
    ));
    assert!(matches!(
        Hidden::new(vec![0.0; 5], vec![2], 8),
        Err(ModelError::Shape(_))
    ));
}

#[test]
fn an_unsupported_config_is_refused() {
    let files = model_files();
    let json = std::fs::read_to_string(files.dir().join("config.json")).unwrap();
    let relu = json.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\"");
    assert_ne!(relu, json);
    assert!(matches!(
        BertConfig::from_json(relu.as_bytes()),
        Err(ModelError::UnsupportedConfig(_))
    ));
    assert!(matches!(
        BertConfig::from_json(b"{}"),
        Err(ModelError::Config(_))
    ));
}
