//! The fingerprint misses no change and recomputes nothing on a harmless one.

use std::collections::HashMap;
use std::time::Duration;

use infercache_datasets::fingerprint::{self, SourceDigest, StepDecl};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::{build, jsonl, open};

fn digest(bytes: &[u8], format: &str) -> SourceDigest {
    SourceDigest {
        format: format.to_owned(),
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

fn steps() -> Vec<StepDecl> {
    vec![
        StepDecl {
            id: "tokenize".into(),
            version: "1".into(),
            params: json!({"column": "text", "max_len": 128, "tokenizer": "sha256:ab", "special_tokens": true}),
            output: Some(vec!["+input_ids: List(UInt32)".into()]),
        },
        StepDecl {
            id: "cmd".into(),
            version: "3".into(),
            params: json!({"command": "python3 clean.py", "threshold": 0.5, "tags": ["a", "b"]}),
            output: None,
        },
        StepDecl {
            id: "embed".into(),
            version: "1".into(),
            params: json!({"model": "m", "column": "text", "normalize": true}),
            output: Some(vec!["+embedding: FixedSizeList(384 x Float32)".into()]),
        },
    ]
}

/// Changes one value to something else of the same or another type.
fn mutate_value(rng: &mut StdRng, v: &mut Value) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            match rng.random_range(0..4) {
                // Add a key.
                0 => {
                    map.insert(format!("k{}", rng.random::<u32>()), json!(1));
                }
                // Remove one.
                1 if !keys.is_empty() => {
                    map.remove(&keys[rng.random_range(0..keys.len())]);
                }
                // Mutate one value.
                _ if !keys.is_empty() => {
                    let k = &keys[rng.random_range(0..keys.len())];
                    mutate_value(rng, map.get_mut(k).unwrap());
                }
                _ => {
                    map.insert("new".into(), json!(true));
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.5) => {
            let i = rng.random_range(0..items.len());
            mutate_value(rng, &mut items[i]);
        }
        other => {
            // Another value or another type: never one that canonicalizes to the same.
            let before = infercache_core::canonical::canonical_json(other).unwrap();
            loop {
                let candidate = match rng.random_range(0..6) {
                    0 => json!(rng.random_range(-1000..1000)),
                    1 => json!(rng.random::<f64>() * 10.0),
                    2 => json!(format!("{}", rng.random_range(0..1000))),
                    3 => json!(rng.random_bool(0.5)),
                    4 => Value::Null,
                    _ => json!([other.clone()]),
                };
                if infercache_core::canonical::canonical_json(&candidate).unwrap() != before {
                    *other = candidate;
                    break;
                }
            }
        }
    }
}

#[test]
fn ten_thousand_single_mutations_never_keep_the_fingerprint() {
    let mut rng = StdRng::seed_from_u64(13);
    let source_a: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let source_b = b"{\"id\": 1}\n{\"id\": 2}\n".to_vec();
    let base_sources = [digest(&source_a, "jsonl"), digest(&source_b, "csv")];
    let base = fingerprint::chain(&base_sources, &steps()).unwrap();
    let base_fp = base.last().unwrap().fingerprint;
    // Fingerprint → the mutated declaration it came from: two different declarations
    // must never share one.
    let mut seen: HashMap<_, String> = HashMap::new();
    let mut kinds = [0usize; 6];
    for i in 0..10_000 {
        let mut a = source_a.clone();
        let b = source_b.clone();
        let mut formats = ["jsonl", "csv"];
        let mut decls = steps();
        let kind = rng.random_range(0..6);
        kinds[kind] += 1;
        let s = rng.random_range(0..decls.len());
        match kind {
            // A byte of a source file.
            0 => {
                let at = rng.random_range(0..a.len());
                a[at] ^= 1 << rng.random_range(0..8);
            }
            // A step's id.
            1 => decls[s]
                .id
                .push_str(&format!("{}", rng.random_range(0..10))),
            // Its version.
            2 => decls[s].version = format!("{}", rng.random_range(4..1_000_000)),
            // A parameter's value or type.
            3 => mutate_value(&mut rng, &mut decls[s].params),
            // Its output schema.
            4 => match &mut decls[s].output {
                Some(fields) if rng.random_bool(0.5) => {
                    fields[0] = fields[0].replace("32", "64").replace("384", "768");
                    if rng.random_bool(0.5) {
                        fields.push(format!("+extra{i}: Utf8"));
                    }
                }
                Some(_) => decls[s].output = None,
                None => decls[s].output = Some(vec![format!("+out{i}: Int64")]),
            },
            // A source's format.
            _ => formats[rng.random_range(0..2)] = "parquet",
        }
        let sources = [digest(&a, formats[0]), digest(&b, formats[1])];
        let fp = fingerprint::chain(&sources, &decls)
            .unwrap()
            .last()
            .unwrap()
            .fingerprint;
        assert_ne!(
            fp, base_fp,
            "mutation {i} (kind {kind}) kept the fingerprint"
        );
        let canon = |d: &StepDecl| {
            let mut d = d.clone();
            d.params = serde_json::from_slice(
                &infercache_core::canonical::canonical_json(&d.params).unwrap(),
            )
            .unwrap();
            d
        };
        let decls_canon: Vec<StepDecl> = decls.iter().map(canon).collect();
        let what = serde_json::to_string(&(&sources, &decls_canon)).unwrap();
        if let Some(prev) = seen.insert(fp, what.clone()) {
            assert_eq!(prev, what, "two different declarations share {fp}");
        }
        // `explain` names something for every change.
        if i % 100 == 0 {
            let chain = fingerprint::chain(&sources, &decls).unwrap();
            assert!(!fingerprint::explain(&base, &chain).is_empty());
        }
    }
    assert!(kinds.iter().all(|&k| k > 1_000), "{kinds:?}");
    assert!(seen.len() > 1_000, "{} distinct fingerprints", seen.len());
}

#[test]
fn key_order_and_number_spelling_are_harmless() {
    let sources = [digest(b"x", "jsonl")];
    let mut reordered = steps();
    reordered[1].params =
        json!({"tags": ["a", "b"], "threshold": 0.5, "command": "python3 clean.py"});
    reordered[0].params = json!({"max_len": 128.0, "special_tokens": true, "tokenizer": "sha256:ab", "column": "text"});
    assert_eq!(
        fingerprint::chain(&sources, &steps()).unwrap(),
        fingerprint::chain(&sources, &reordered).unwrap()
    );
}

#[test]
fn touch_move_shard_size_cache_dir_and_new_handles_recompute_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 500, 10);
    let cache_dir = dir.path().join("cache");
    let steps = ["tokenize:max_len=32", "cmd:1:cat"];
    let cache = open(&cache_dir, 1 << 30);
    let first = build(&cache, "a", std::slice::from_ref(&src), &steps, 100).unwrap();
    assert_eq!(first.rows_computed, 500);

    // Touched: same content, new mtime.
    std::thread::sleep(Duration::from_millis(20));
    let f = std::fs::File::options().append(true).open(&src).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    let again = build(&cache, "a", std::slice::from_ref(&src), &steps, 100).unwrap();
    assert_eq!(
        (again.rows_computed, again.fingerprint),
        (0, first.fingerprint)
    );

    // Moved, and built with another shard size, as another name.
    let moved = dir.path().join("moved.jsonl");
    std::fs::rename(&src, &moved).unwrap();
    let other = build(&cache, "b", std::slice::from_ref(&moved), &steps, 77).unwrap();
    assert_eq!(
        (other.rows_computed, other.fingerprint),
        (0, first.fingerprint)
    );

    // The cache directory moved, and a new handle on it.
    drop(cache);
    let new_dir = dir.path().join("cache-moved");
    std::fs::rename(&cache_dir, &new_dir).unwrap();
    let cache = open(&new_dir, 1 << 30);
    let moved_cache = build(&cache, "a", std::slice::from_ref(&moved), &steps, 100).unwrap();
    assert_eq!(moved_cache.rows_computed, 0);

    // A real change: one byte of the source.
    let mut bytes = std::fs::read(&moved).unwrap();
    let at = bytes.iter().position(|&b| b == b'7').unwrap();
    bytes[at] = b'8';
    std::fs::write(&moved, &bytes).unwrap();
    let changed = build(&cache, "a", std::slice::from_ref(&moved), &steps, 100).unwrap();
    assert_ne!(changed.fingerprint, first.fingerprint);
    assert_eq!(changed.rows_computed, 500);
    // And a step's parameter.
    let longer = build(
        &cache,
        "c",
        &[moved],
        &["tokenize:max_len=33", "cmd:1:cat"],
        100,
    )
    .unwrap();
    assert_ne!(longer.fingerprint, changed.fingerprint);
    let why = cache
        .explain("a", &longer.fingerprint.hex())
        .unwrap()
        .join("\n");
    assert!(
        why.contains("max_len") && why.contains("32") && why.contains("33"),
        "{why}"
    );
}
