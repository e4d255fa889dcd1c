//! The fast reading and writing of `POST /v1/embed` against the field-by-field reading
//! and `serde_json`'s rendering of the same answer, on random requests and vectors.

use std::sync::Arc;

use infercache_backend::{Backend, vector};
use infercache_infer::{CachePolicy, Models};
use proptest::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use infercache_core::Digest;

use super::{Answer, parse_fast, parse_slow};
use crate::routes::rendered::RenderedVectors;
use crate::routes::write;
use crate::tests::Fake;
use crate::{ApiKeys, AppState, Limits};

fn state() -> AppState {
    let models = Models::new([(Fake::new() as Arc<dyn Backend>, CachePolicy::builtin())]);
    let limits = Limits {
        max_input_chars: 12,
        ..Limits::default()
    };
    AppState::new(None, models, ApiKeys::none(), limits)
}

fn field(right: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => right,
        1 => Just(Value::Null),
        1 => any::<i32>().prop_map(Value::from),
        1 => Just(json!(["a"])),
    ]
    .boxed()
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let text = proptest::string::string_regex("[a-z \t\"\\\\\n\u{e9}\u{3000}]{0,14}").unwrap();
    (
        proptest::option::weighted(0.9, field(text.prop_map(Value::from).boxed())),
        proptest::option::of(field(any::<bool>().prop_map(Value::from).boxed())),
        proptest::option::weighted(0.1, prop_oneof![Just("text"), Just("model")]),
    )
        .prop_map(|(text, normalize, extra)| {
            let mut fields = Vec::new();
            if let Some(v) = text {
                fields.push(format!("\"text\":{v}"));
            }
            if let Some(v) = normalize {
                fields.push(format!("\"normalize\":{v}"));
            }
            if let Some(name) = extra {
                fields.push(format!("\"{name}\":\"x\""));
            }
            format!("{{{}}}", fields.join(",")).into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_fast_reading_agrees_with_the_field_by_field_one(body in body()) {
        let state = state();
        let slow = parse_slow(&state, body.clone().into()).map_err(|e| e.to_string());
        if let Some(fast) = parse_fast(&state, &body) {
            prop_assert_eq!(Ok(fast), slow, "{}", String::from_utf8_lossy(&body));
        }
    }
}

#[test]
fn the_fast_reading_takes_the_requests_clients_send() {
    let state = state();
    for body in [
        r#"{"text": "hello"}"#,
        r#"{"text": "a \"b\"", "normalize": true}"#,
    ] {
        let fast = parse_fast(&state, body.as_bytes()).expect(body);
        assert_eq!(
            Ok(fast),
            parse_slow(&state, body.into()).map_err(|e| e.to_string())
        );
    }
    for refused in [
        r#"{"text": " "}"#,
        r#"{"text": "a", "model": "m"}"#,
        r#"{"normalize": true}"#,
    ] {
        assert!(
            parse_fast(&state, refused.as_bytes()).is_none(),
            "{refused}"
        );
    }
}

// The rendering the route had before it wrote its answers itself: the reference.
#[derive(Serialize)]
struct EmbedResponse {
    embedding: Vec<f32>,
    model: String,
    tokens: usize,
    cached: bool,
    latency_ms: f64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_written_answer_is_what_serde_json_writes(
        bits in proptest::collection::vec(any::<u32>(), 0..12),
        small in proptest::collection::vec(-4.0f32..4.0, 0..12),
        pick_small in any::<bool>(),
        normalize in any::<bool>(),
        tokens in any::<usize>(),
        cached in any::<bool>(),
        latency_ms in any::<f64>(),
    ) {
        let values: Vec<f32> = if pick_small { small } else { bits.into_iter().map(f32::from_bits).collect() };
        let stored = vector::encode(&values);
        let decoded = vector::decode(&stored, None).unwrap();
        let expected = serde_json::to_vec(&EmbedResponse {
            embedding: if normalize { vector::l2_normalize(decoded) } else { decoded },
            model: "all-MiniLM-L6-v2".to_owned(),
            tokens,
            cached,
            latency_ms,
        })
        .unwrap();
        // Formatted, then through a table of kept arrays: filled, then served from it.
        let table = RenderedVectors::new();
        let key = Digest([3; 32]);
        for kept in [false, true, true] {
            let (written, latency_at) = Answer {
                vector: &stored,
                kept: kept.then(|| (&table, &key, stored.clone())),
                normalize,
                model: "all-MiniLM-L6-v2",
                tokens,
                cached,
                latency_ms,
            }
            .write();
            // A replay writes the body up to `latency_at`, then its own latency and `}`.
            prop_assert!(written[..latency_at].ends_with(br#","latency_ms":"#));
            let mut latency = Vec::new();
            write::f64(&mut latency, latency_ms);
            latency.push(b'}');
            prop_assert_eq!(&written[latency_at..], &latency[..]);
            prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected.clone()).unwrap());
        }
    }
}
