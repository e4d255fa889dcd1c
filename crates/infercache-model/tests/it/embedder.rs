//! Fidelity of the embedder against sentence-transformers' own numbers.

use infercache_model::{DIMS, MAX_TOKENS};

use crate::{cosine, embedder, max_abs_diff};

const WEATHER: &str = "The weather is lovely today.";
const SUNNY: &str = "It's so sunny outside!";
const STADIUM: &str = "He drove to the stadium.";

#[test]
fn matches_sentence_transformers_vector() {
    let embedder = embedder();
    assert_eq!(embedder.dims(), DIMS);
    let vectors = embedder.embed(&[WEATHER]).unwrap();
    assert_eq!(vectors.len(), 1);
    let v = &vectors[0];
    assert_eq!(v.len(), 384);
    let expected = [
        0.019195763,
        0.12008538,
        0.15959832,
        0.06706585,
        0.05007478,
        -0.02591874,
        0.056468215,
        -0.09285774,
    ];
    let diff = max_abs_diff(&v[..8], &expected);
    assert!(
        diff < 1e-4,
        "first values {:?} differ from {expected:?} by {diff}",
        &v[..8]
    );
    let norm = cosine(v, v).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
}

#[test]
fn matches_sentence_transformers_similarities() {
    let embedder = embedder();
    let v = embedder.embed(&[WEATHER, SUNNY, STADIUM]).unwrap();
    let pairs = [
        ("weather/sunny", cosine(&v[0], &v[1]), 0.6660),
        ("weather/stadium", cosine(&v[0], &v[2]), 0.1046),
        ("sunny/stadium", cosine(&v[1], &v[2]), 0.1411),
    ];
    for (name, got, want) in pairs {
        assert!(
            (got - want).abs() < 6e-4,
            "{name}: cosine {got}, expected {want}"
        );
    }
}

#[test]
fn a_sentence_alone_and_in_a_padded_batch_embed_the_same() {
    let embedder = embedder();
    let alone = embedder.embed(&[STADIUM]).unwrap().remove(0);
    let long = "A much longer sentence that forces every other text in this batch to be padded \
                with many padding tokens, which must be masked out of attention and pooling.";
    let batch = embedder.embed(&[long, STADIUM, WEATHER]).unwrap();
    let diff = max_abs_diff(&alone, &batch[1]);
    assert!(diff < 1e-5, "padded vector differs by {diff}");
    assert_eq!(embedder.embed(&[]).unwrap(), Vec::<Vec<f32>>::new());
}

#[test]
fn a_sentence_in_a_later_group_of_a_long_batch_embeds_as_alone() {
    // A layer computes at most 1,024 tokens at once, in groups of whole sequences: three
    // texts of about 500 tokens put the last sentence in the batch's second group.
    let embedder = embedder();
    let alone = embedder.embed(&[STADIUM]).unwrap().remove(0);
    let long = "word ".repeat(500);
    let batch = embedder.embed(&[&long, &long, &long, STADIUM]).unwrap();
    let diff = max_abs_diff(&alone, &batch[3]);
    assert!(diff < 1e-5, "vector in a later group differs by {diff}");
    let first = embedder.embed(&[long.as_str()]).unwrap().remove(0);
    let diff = max_abs_diff(&first, &batch[2]);
    assert!(
        diff < 1e-5,
        "a long text grouped with others differs by {diff}"
    );
}

#[test]
fn truncation_matches_the_tokenizer_librarys_own() {
    // The embedder truncates token ids itself (one tokenizer for counting and embedding);
    // the library's own truncation at 256 must give the same ids for short and long texts.
    let embedder = embedder();
    let json = std::fs::read(crate::model_files().dir().join("tokenizer.json")).unwrap();
    let mut library = tokenizers::Tokenizer::from_bytes(&json).unwrap();
    library.with_padding(None);
    library
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: MAX_TOKENS,
            ..tokenizers::TruncationParams::default()
        }))
        .unwrap();
    let long = "lorem ipsum dolor sit amet, consectetur ".repeat(80);
    let edge = "word ".repeat(MAX_TOKENS - 2);
    let over = "word ".repeat(MAX_TOKENS - 1);
    let texts = [
        "hello",
        WEATHER,
        long.as_str(),
        edge.as_str(),
        over.as_str(),
    ];
    let tokens = embedder.tokenize(&texts).unwrap();
    let mut offset = 0;
    for (text, &len) in texts.iter().zip(tokens.lengths()) {
        let want = library.encode_fast(*text, true).unwrap();
        assert_eq!(
            &tokens.ids()[offset..offset + len],
            want.get_ids(),
            "{text:.40}"
        );
        offset += len;
    }
    assert_eq!(tokens.lengths()[2], MAX_TOKENS);
    assert_eq!(tokens.lengths()[3], MAX_TOKENS);
    assert_eq!(tokens.lengths()[4], MAX_TOKENS);
}

#[test]
fn long_inputs_are_truncated_at_256_tokens() {
    let embedder = embedder();
    let base = "lorem ipsum dolor sit amet ".repeat(200); // far beyond 512 positions
    let base_tokens = embedder.count_tokens(&base).unwrap();
    assert!(base_tokens > 2 * MAX_TOKENS, "{base_tokens}");
    assert_eq!(
        embedder.count_tokens("hello").unwrap(),
        3,
        "[CLS] hello [SEP]"
    );

    // Only the first 256 tokens count: different tails past them change nothing.
    let a = format!("{base} and then the weather was lovely");
    let b = format!("{base} until he drove to the stadium");
    let v = embedder.embed(&[&a, &b]).unwrap();
    let diff = max_abs_diff(&v[0], &v[1]);
    assert!(
        diff < 1e-6,
        "tails past the limit changed the vector by {diff}"
    );

    // While a difference inside the window does change it.
    let c = format!("stadium {base}");
    let w = embedder.embed(&[&c]).unwrap();
    assert!(max_abs_diff(&v[0], &w[0]) > 1e-3);
}
