//! The fast reading and writing of `POST /v1/embeddings` against the field-by-field
//! reading and `serde_json`'s rendering of the same answer, on random requests and rows.

use std::sync::Arc;

use infercache_backend::{Backend, Inputs, vector};
use infercache_core::Digest;
use infercache_infer::{CachePolicy, Models, RowSource, Rows};
use proptest::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Parsed, parse_fast, parse_slow, render};
use crate::routes::CacheSummary;
use crate::routes::rendered::{Form, RenderedVectors};
use crate::tests::Fake;
use crate::{ApiKeys, AppState, Limits};

fn state() -> AppState {
    let models = Models::new([(Fake::new() as Arc<dyn Backend>, CachePolicy::builtin())]);
    let limits = Limits {
        max_items: 4,
        max_input_chars: 12,
        ..Limits::default()
    };
    AppState::new(None, models, ApiKeys::none(), limits)
}

/// What a reading yields, comparable.
fn summary(p: &Parsed) -> (String, Vec<String>, Option<u64>, Form) {
    (
        p.model.name().to_owned(),
        p.texts.clone(),
        p.dimensions,
        p.encoding,
    )
}

/// A text: empty, short or too long, with characters that JSON escapes.
fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z \"\\\\\n\u{e9}\u{1F600}]{0,14}").unwrap()
}

/// A value for a field: mostly of the right kind, sometimes not.
fn field(right: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => right,
        1 => Just(Value::Null),
        1 => any::<i32>().prop_map(Value::from),
        1 => Just(json!({"a": 1})),
    ]
    .boxed()
}

/// A request body: some of the fields, any of them wrong, an unknown one now and then,
/// written with or without spaces, sometimes with a field repeated.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let model = field(
        prop_oneof![
            Just(json!("all-MiniLM-L6-v2")),
            Just(json!("sentence-transformers/all-MiniLM-L6-v2")),
            Just(json!("nope")),
        ]
        .boxed(),
    );
    let input = field(
        prop_oneof![
            text().prop_map(Value::from),
            proptest::collection::vec(
                prop_oneof![8 => text().prop_map(Value::from), 1 => Just(json!(7))],
                0..6
            )
            .prop_map(Value::from),
        ]
        .boxed(),
    );
    let encoding = field(
        prop_oneof![
            Just(json!("float")),
            Just(json!("base64")),
            Just(json!("hex"))
        ]
        .boxed(),
    );
    let user = field(text().prop_map(Value::from).boxed());
    let extra = prop_oneof![Just("dimensions"), Just("extra"), Just("input")];
    (
        proptest::option::weighted(0.9, model),
        proptest::option::weighted(0.9, input),
        proptest::option::of(encoding),
        proptest::option::of(user),
        proptest::option::weighted(0.1, (extra, any::<u8>())),
        any::<bool>(),
    )
        .prop_map(|(model, input, encoding, user, extra, pretty)| {
            let mut fields = Vec::new();
            for (name, v) in [
                ("model", model),
                ("input", input),
                ("encoding_format", encoding),
                ("user", user),
            ] {
                if let Some(v) = v {
                    fields.push(format!("{}:{v}", json!(name)));
                }
            }
            if let Some((name, n)) = extra {
                fields.push(format!("{}:{n}", json!(name)));
            }
            let sep = if pretty { ",\n  " } else { "," };
            format!("{{{}}}", fields.join(sep)).into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_fast_reading_agrees_with_the_field_by_field_one(body in body()) {
        let state = state();
        let slow = parse_slow(&state, body.clone().into());
        if let Some(fast) = parse_fast(&state, &body) {
            let slow = slow.map_err(|e| e.to_string());
            prop_assert!(slow.is_ok(), "fast took {:?}, slow refused it: {:?}",
                String::from_utf8_lossy(&body), slow.err());
            prop_assert_eq!(summary(&fast), summary(&slow.unwrap()));
        }
    }
}

#[test]
fn the_fast_reading_takes_the_requests_clients_send() {
    let state = state();
    for body in [
        json!({"model": "all-MiniLM-L6-v2", "input": "hello"}),
        json!({"model": "all-MiniLM-L6-v2", "input": ["a", "b"], "encoding_format": "base64"}),
        json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x\"y", "user": "u"}),
        json!({"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": null}),
    ] {
        let body = body.to_string();
        let fast = parse_fast(&state, body.as_bytes()).expect(&body);
        let slow = parse_slow(&state, body.clone().into()).unwrap();
        assert_eq!(summary(&fast), summary(&slow), "{body}");
    }
    for refused in [
        r#"{"model": "all-MiniLM-L6-v2", "input": ""}"#,
        r#"{"model": "all-MiniLM-L6-v2", "input": []}"#,
        r#"{"model": "all-MiniLM-L6-v2", "input": "a", "input": "b"}"#,
        r#"{"model": "all-MiniLM-L6-v2", "input": "a", "dimensions": 3}"#,
        r#"{"model": "nope", "input": "a"}"#,
        r#"{"model": "all-MiniLM-L6-v2", "input": "far too long a text"}"#,
    ] {
        assert!(
            parse_fast(&state, refused.as_bytes()).is_none(),
            "{refused}"
        );
    }
}

// The rendering the route had before it wrote its answers itself: the reference.

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Usage,
    cache: CacheSummary,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

fn reference(
    model: &str,
    backend: &dyn Backend,
    texts: &[String],
    rows: &Rows,
    encoding: Form,
) -> Vec<u8> {
    use base64::Engine as _;
    let dims = backend.info().dims;
    let tokens = texts.iter().map(|t| backend.count_tokens(t)).sum();
    let data = rows
        .values
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let v = v.as_ref().unwrap();
            let floats = vector::decode(v, dims).unwrap();
            let embedding = match encoding {
                Form::Floats => Embedding::Float(floats),
                Form::Base64 => Embedding::Base64(
                    base64::engine::general_purpose::STANDARD.encode(vector::encode(&floats)),
                ),
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    serde_json::to_vec(&EmbeddingsResponse {
        object: "list",
        data,
        model: model.to_owned(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
        cache: CacheSummary::of(rows),
    })
    .unwrap()
}

/// A stored row: 8 floats of any bits (non-finite ones included), with or without the
/// token count the built-in model stores.
fn row() -> impl Strategy<Value = (Vec<f32>, bool, String, RowSource)> {
    (
        proptest::collection::vec(any::<u32>().prop_map(f32::from_bits), 8),
        any::<bool>(),
        text(),
        prop_oneof![
            Just(RowSource::Hit),
            Just(RowSource::Computed),
            Just(RowSource::Coalesced),
            Just(RowSource::Stale(infercache_infer::Stale::IfError)),
            Just(RowSource::Stale(infercache_infer::Stale::WhileRevalidate)),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_written_answer_is_what_serde_json_writes(
        rows in proptest::collection::vec(row(), 1..5),
        keyed in any::<bool>(),
        base64 in any::<bool>(),
    ) {
        let state = state();
        let model = state.models().get("all-MiniLM-L6-v2").unwrap().clone();
        let backend = model.backend();
        let texts: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
        let rows = Rows {
            values: rows
                .iter()
                .map(|(v, counted, text, _)| {
                    Some(if *counted {
                        vector::encode_counted(v, backend.count_tokens(text))
                    } else {
                        vector::encode(v)
                    })
                })
                .collect(),
            sources: rows.iter().map(|r| r.3).collect(),
            keys: if keyed {
                texts.iter().map(|t| Digest::of(t.as_bytes())).collect()
            } else {
                Vec::new()
            },
        };
        let encoding = if base64 { Form::Base64 } else { Form::Floats };
        let inputs = Inputs::texts(texts.clone());
        let expected = reference(model.name(), backend, &texts, &rows, encoding);
        // Formatted, then through a table of kept arrays: filled, then served from it
        // (repeated texts share a key with other vectors).
        let table = RenderedVectors::new();
        for kept in [None, Some(&table), Some(&table)] {
            let written = render(kept, &model, &inputs, &rows, encoding).unwrap();
            prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected.clone()).unwrap());
        }
    }
}
