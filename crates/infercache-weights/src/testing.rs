//! A seeded random tiny BERT for tests (feature `test-support`): a model directory with
//! `config.json`, a WordPiece `tokenizer.json` and `model.safetensors` under the original
//! BERT tensor names, generated in milliseconds, so tests stream several layers, evict
//! and compare bit for bit without the 90 MB model.
//!
//! [`reference_embeddings`] runs the whole model at once, loaded from its single
//! `model.safetensors` as the built-in model loads it, not from chunks: what a streamed
//! forward pass must reproduce exactly.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use infercache_model::bert::{BertConfig, Embeddings, Layer, MeanPooling, TextTokenizer, Threads};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;

/// The shape of a tiny BERT.
#[derive(Debug, Clone, Copy)]
pub struct TinyBert {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward size.
    pub intermediate: usize,
    /// Positions (the longest input).
    pub max_positions: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinyBert {
    /// Four layers of width 32: about 40 KB per layer.
    fn default() -> Self {
        Self {
            layers: 4,
            hidden: 32,
            heads: 4,
            intermediate: 64,
            max_positions: 128,
            seed: 7,
        }
    }
}

/// Words of the tiny vocabulary (with `a`..`z`, `##a`..`##z` and `0`..`9`).
const WORDS: &[&str] = &[
    "the", "a", "cat", "dog", "sat", "on", "mat", "hello", "world", "weights", "layer", "by",
    "stream", "cache", "is", "of", "and", "to", "in", "it", "model", "chunk", "server", "fast",
];

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| (*s).to_owned()).collect();
    v.extend(WORDS.iter().map(|w| (*w).to_owned()));
    v.extend(('a'..='z').map(String::from));
    v.extend(('a'..='z').map(|c| format!("##{c}")));
    v.extend(('0'..='9').map(String::from));
    v.extend(['.', ',', '!', '?'].map(String::from));
    v
}

/// A BERT WordPiece `tokenizer.json` over the tiny vocabulary.
fn tokenizer_json() -> serde_json::Value {
    let vocab: BTreeMap<String, usize> = vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i))
        .collect();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

impl TinyBert {
    /// The model's `config.json`.
    pub fn config(&self) -> serde_json::Value {
        json!({
            "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": self.max_positions,
            "model_type": "bert",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "type_vocab_size": 2,
            "vocab_size": vocab().len()
        })
    }

    /// Every tensor: name, dtype, shape, little-endian bytes.
    fn tensors(&self) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (h, m) = (self.hidden, self.intermediate);
        let mut out = Vec::new();
        let mut f32s = |name: String, shape: Vec<usize>, center: f32, spread: f32| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| (center + rng.random_range(-spread..spread)).to_le_bytes())
                .collect();
            out.push((name, Dtype::F32, shape, bytes));
        };
        let e = "embeddings";
        f32s(
            format!("{e}.word_embeddings.weight"),
            vec![vocab().len(), h],
            0.0,
            0.5,
        );
        f32s(
            format!("{e}.position_embeddings.weight"),
            vec![self.max_positions, h],
            0.0,
            0.5,
        );
        f32s(
            format!("{e}.token_type_embeddings.weight"),
            vec![2, h],
            0.0,
            0.5,
        );
        f32s(format!("{e}.LayerNorm.weight"), vec![h], 1.0, 0.1);
        f32s(format!("{e}.LayerNorm.bias"), vec![h], 0.0, 0.1);
        for i in 0..self.layers {
            let l = format!("encoder.layer.{i}");
            for p in ["query", "key", "value"] {
                f32s(
                    format!("{l}.attention.self.{p}.weight"),
                    vec![h, h],
                    0.0,
                    0.3,
                );
                f32s(format!("{l}.attention.self.{p}.bias"), vec![h], 0.0, 0.1);
            }
            f32s(
                format!("{l}.attention.output.dense.weight"),
                vec![h, h],
                0.0,
                0.3,
            );
            f32s(
                format!("{l}.attention.output.dense.bias"),
                vec![h],
                0.0,
                0.1,
            );
            f32s(
                format!("{l}.attention.output.LayerNorm.weight"),
                vec![h],
                1.0,
                0.1,
            );
            f32s(
                format!("{l}.attention.output.LayerNorm.bias"),
                vec![h],
                0.0,
                0.1,
            );
            f32s(
                format!("{l}.intermediate.dense.weight"),
                vec![m, h],
                0.0,
                0.3,
            );
            f32s(format!("{l}.intermediate.dense.bias"), vec![m], 0.0, 0.1);
            f32s(format!("{l}.output.dense.weight"), vec![h, m], 0.0, 0.3);
            f32s(format!("{l}.output.dense.bias"), vec![h], 0.0, 0.1);
            f32s(format!("{l}.output.LayerNorm.weight"), vec![h], 1.0, 0.1);
            f32s(format!("{l}.output.LayerNorm.bias"), vec![h], 0.0, 0.1);
        }
        f32s("pooler.dense.weight".into(), vec![h, h], 0.0, 0.3);
        f32s("pooler.dense.bias".into(), vec![h], 0.0, 0.1);
        // An I64 tensor, as all-MiniLM-L6-v2 has: chunks are not all one dtype.
        let ids: Vec<u8> = (0..self.max_positions as i64)
            .flat_map(i64::to_le_bytes)
            .collect();
        out.push((
            "embeddings.position_ids".into(),
            Dtype::I64,
            vec![1, self.max_positions],
            ids,
        ));
        out
    }

    /// The bytes of `model.safetensors`.
    pub fn safetensors(&self) -> Vec<u8> {
        let tensors = self.tensors();
        let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).expect("shapes match the bytes"),
            )
        });
        let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::serialize(views, Some(metadata)).expect("a tiny model serializes")
    }

    /// Writes `config.json`, `tokenizer.json` and `model.safetensors` into `dir`.
    ///
    /// # Errors
    /// The file system's.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config())?,
        )?;
        std::fs::write(
            dir.join("tokenizer.json"),
            serde_json::to_vec(&tokenizer_json())?,
        )?;
        std::fs::write(dir.join("model.safetensors"), self.safetensors())
    }
}

/// Texts of 1 to about 40 tokens over the tiny vocabulary.
pub fn sample_texts() -> Vec<String> {
    [
        "the cat sat on the mat",
        "hello world",
        "a",
        "weights stream layer by layer, and the cache is fast!",
        "the model chunk server is in the cache of the dog and it sat on 42 mats",
        "zyx qwv",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The embeddings of `texts` by the whole model in `model_dir`, loaded at once from its
/// `model.safetensors` and run as the built-in model runs it
/// ([`Embedder::embed_tokens`](infercache_model::Embedder::embed_tokens): embeddings,
/// every layer, mean pooling) on `threads` threads.
///
/// # Panics
/// On any failure: it is a test helper.
pub fn reference_embeddings(model_dir: &Path, texts: &[String], threads: usize) -> Vec<Vec<f32>> {
    let read = |name: &str| std::fs::read(model_dir.join(name)).unwrap();
    let config = BertConfig::from_json(&read("config.json")).unwrap();
    let tokenizer = TextTokenizer::from_bytes(read("tokenizer.json")).unwrap();
    let threads = Threads::new(threads).unwrap();
    let weights = read("model.safetensors");
    let tensors = SafeTensors::deserialize(&weights).unwrap();
    let embeddings = Embeddings::load(&tensors, &config).unwrap();
    let layers: Vec<Layer> = (0..config.num_hidden_layers)
        .map(|i| Layer::load(&tensors, i, &config).unwrap())
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = tokenizer.tokenize(&texts).unwrap();
    let mut hidden = embeddings.forward(&tokens, &threads).unwrap();
    for layer in &layers {
        hidden = layer.forward(&hidden, &threads).unwrap();
    }
    MeanPooling.forward(&hidden)
}
