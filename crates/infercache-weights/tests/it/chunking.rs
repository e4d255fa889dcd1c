//! The chunker and `verify` on real files: tiny models, a sharded model, the real
//! all-MiniLM-L6-v2, and every kind of bad input.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use infercache_weights::chunk::ChunkError;
use infercache_weights::digest::{sha256_file, sha256_hex};
use infercache_weights::manifest::{ChunkKind, MANIFEST_FILE, Manifest};
use infercache_weights::testing::TinyBert;
use infercache_weights::verify::Problem;
use infercache_weights::{ChunkOptions, NoProgress, chunk_model, verify_dir};
use safetensors::SafeTensors;

use crate::common::{TINY, Tiny, minilm_dir};

fn chunk(
    model: &Path,
    out: &Path,
    fp16: bool,
) -> Result<infercache_weights::ChunkReport, ChunkError> {
    let options = ChunkOptions {
        fp16,
        model_name: Some(TINY.into()),
    };
    chunk_model(model, out, &options, &mut NoProgress)
}

/// The data section of a safetensors file.
fn data_section(bytes: &[u8]) -> &[u8] {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    &bytes[8 + usize::try_from(n).unwrap()..]
}

#[test]
fn a_tiny_model_becomes_one_chunk_per_component_with_surfings_fields() {
    let t = Tiny::new(TinyBert::default());
    let m = &t.manifest;
    let names: Vec<&str> = m.chunks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "embeddings",
            "layer_0",
            "layer_1",
            "layer_2",
            "layer_3",
            "pooler"
        ]
    );
    assert_eq!(
        (m.model_name.as_str(), m.model_type.as_str(), m.num_layers),
        (TINY, "bert", 4)
    );

    // Surfing's fields, as Surfing tooling reads them.
    let raw: serde_json::Value =
        serde_json::from_slice(&fs::read(t.chunks.join(MANIFEST_FILE)).unwrap()).unwrap();
    for field in [
        "model_name",
        "model_type",
        "num_layers",
        "chunks",
        "total_size_mb",
    ] {
        assert!(raw.get(field).is_some(), "{field} missing");
    }
    for (name, c) in raw["chunks"].as_object().unwrap() {
        assert!(
            c["file"].is_string() && c["size_mb"].is_f64(),
            "{name}: {c}"
        );
    }

    let source = fs::read(t.model.join("model.safetensors")).unwrap();
    let original = SafeTensors::deserialize(&source).unwrap();
    let mut seen = 0;
    for (name, info) in &m.chunks {
        let bytes = fs::read(t.chunks.join(&info.file)).unwrap();
        assert_eq!(bytes.len() as u64, info.size_bytes, "{name}");
        assert_eq!(sha256_hex(&bytes), info.sha256, "{name}");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), info.tensors.len(), "{name}");
        for entry in &info.tensors {
            // Original names, dtypes, shapes and bytes.
            let got = st.tensor(&entry.name).unwrap();
            let want = original.tensor(&entry.name).unwrap();
            assert_eq!(got.dtype(), want.dtype());
            assert_eq!(got.shape(), want.shape());
            assert_eq!(got.data(), want.data(), "{}", entry.name);
            seen += 1;
        }
        // The source writer sorted like safetensors does: each chunk's data section is
        // the source range, verbatim.
        let src = &info.sources[0];
        let [b, e] = src.range.expect("contiguous in a safetensors-written file");
        let range = &source[usize::try_from(src.data_start + b).unwrap()
            ..usize::try_from(src.data_start + e).unwrap()];
        assert_eq!(data_section(&bytes), range, "{name}");
        assert_eq!(
            src.sha256_of_range.as_deref(),
            Some(sha256_hex(range).as_str())
        );
        assert_eq!(info.kind == ChunkKind::Layer, info.index.is_some());
    }
    assert_eq!(seen, original.len(), "every tensor is in exactly one chunk");
    assert_eq!(
        m.chunks["embeddings"].dtype, "F32",
        "I64 position ids aside"
    );
    assert_eq!(
        m.total_size_bytes,
        m.chunks.values().map(|c| c.size_bytes).sum::<u64>()
    );
    let (size, sha) = sha256_file(&t.model.join("model.safetensors"), |_| {}).unwrap();
    assert_eq!(
        (m.source.files[0].size_bytes, &m.source.files[0].sha256),
        (size, &sha)
    );
    assert_eq!(
        m.config_sha256,
        sha256_hex(&fs::read(t.model.join("config.json")).unwrap())
    );
    assert!(verify_dir(&t.chunks, &mut NoProgress).unwrap().is_ok());
}

#[test]
fn a_rerun_writes_nothing_and_changes_no_byte() {
    let t = Tiny::new(TinyBert::default());
    let before: BTreeMap<_, _> = fs::read_dir(&t.chunks)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name(),
                (
                    fs::read(e.path()).unwrap(),
                    e.metadata().unwrap().modified().unwrap(),
                ),
            )
        })
        .collect();
    let again = chunk(&t.model, &t.chunks, false).unwrap();
    assert!(again.written.is_empty(), "{:?}", again.written);
    assert_eq!(again.unchanged.len(), t.manifest.chunks.len() + 3);
    assert_eq!(again.manifest, t.manifest);
    let after: BTreeMap<_, _> = fs::read_dir(&t.chunks)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name(),
                (
                    fs::read(e.path()).unwrap(),
                    e.metadata().unwrap().modified().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_crashed_run_is_completed_and_its_partial_files_removed() {
    let t = Tiny::new(TinyBert::default());
    // What a crash leaves: a chunk missing, one half-written, a temporary file.
    fs::remove_file(t.chunk_path("layer_1")).unwrap();
    let half = fs::read(t.chunk_path("layer_2")).unwrap();
    fs::write(t.chunk_path("layer_2"), &half[..half.len() / 2]).unwrap();
    fs::write(
        t.chunks.join(".layer_3.safetensors.abc123.partial"),
        b"torn",
    )
    .unwrap();
    let report = chunk(&t.model, &t.chunks, false).unwrap();
    let mut written = report.written.clone();
    written.sort();
    assert_eq!(written, ["layer_1.safetensors", "layer_2.safetensors"]);
    assert!(
        !t.chunks
            .join(".layer_3.safetensors.abc123.partial")
            .exists()
    );
    assert!(verify_dir(&t.chunks, &mut NoProgress).unwrap().is_ok());
}

#[test]
fn fp16_is_opt_in_recorded_and_rounds_each_value() {
    let t = Tiny::new(TinyBert::default());
    let out = t.dir.path().join("fp16");
    let m = chunk(&t.model, &out, true).unwrap().manifest;
    assert!(m.fp16 && !t.manifest.fp16);
    let layer = &m.chunks["layer_0"];
    assert_eq!(layer.dtype, "F16");
    assert_eq!(layer.converted.as_deref(), Some("F32->F16"));
    assert!(layer.size_bytes < t.size("layer_0"));
    let emb = &m.chunks["embeddings"];
    assert!(
        emb.tensors.iter().any(|t| t.dtype == "I64"),
        "ints are kept"
    );
    let half_bytes = fs::read(out.join(&layer.file)).unwrap();
    let full_bytes = fs::read(t.chunk_path("layer_0")).unwrap();
    let (h, f) = (
        SafeTensors::deserialize(&half_bytes).unwrap(),
        SafeTensors::deserialize(&full_bytes).unwrap(),
    );
    let name = "encoder.layer.0.attention.self.query.weight";
    let (h, f) = (h.tensor(name).unwrap(), f.tensor(name).unwrap());
    for (hb, fb) in h.data().chunks_exact(2).zip(f.data().chunks_exact(4)) {
        let v = f32::from_le_bytes(fb.try_into().unwrap());
        assert_eq!(
            half::f16::from_le_bytes(hb.try_into().unwrap()),
            half::f16::from_f32(v)
        );
    }
    assert!(verify_dir(&out, &mut NoProgress).unwrap().is_ok());
}

#[test]
fn sharded_weights_give_the_same_chunks_as_one_file() {
    let t = Tiny::new(TinyBert::default());
    let sharded = t.dir.path().join("sharded");
    fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        fs::copy(t.model.join(f), sharded.join(f)).unwrap();
    }
    // Two shards, split in the middle of layer 1 (a layer across two files).
    let source = fs::read(t.model.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&source).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let split = names
        .iter()
        .position(|n| n == "encoder.layer.1.attention.self.value.bias")
        .unwrap();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..split], &names[split..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        fs::write(
            sharded.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let out = t.dir.path().join("from-shards");
    let m = chunk(&sharded, &out, false).unwrap().manifest;
    assert_eq!(m.source.files.len(), 2);
    assert!(m.source.index.is_some());
    for (name, c) in &m.chunks {
        assert_eq!(
            c.sha256, t.manifest.chunks[name].sha256,
            "{name}: same bytes as from one file"
        );
    }
    assert_eq!(
        m.chunks["layer_1"].sources.len(),
        2,
        "layer_1 spans both shards"
    );
}

#[test]
fn files_of_an_older_manifest_are_removed_others_are_kept() {
    let t = Tiny::new(TinyBert::default());
    fs::write(t.chunks.join("notes.txt"), b"the user's").unwrap();
    let smaller = t.dir.path().join("two-layers");
    TinyBert {
        layers: 2,
        ..TinyBert::default()
    }
    .write(&smaller)
    .unwrap();
    let report = chunk(&smaller, &t.chunks, false).unwrap();
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(removed, ["layer_2.safetensors", "layer_3.safetensors"]);
    assert!(t.chunks.join("notes.txt").exists());
    assert!(verify_dir(&t.chunks, &mut NoProgress).unwrap().is_ok());
}

#[test]
fn verify_names_every_damaged_file() {
    let t = Tiny::new(TinyBert::default());
    let mut bytes = fs::read(t.chunk_path("layer_1")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(t.chunk_path("layer_1"), &bytes).unwrap();
    let short = fs::read(t.chunk_path("layer_2")).unwrap();
    fs::write(t.chunk_path("layer_2"), &short[..10]).unwrap();
    fs::remove_file(t.chunk_path("pooler")).unwrap();
    fs::write(t.chunks.join("tokenizer.json"), b"{}").unwrap();

    let report = verify_dir(&t.chunks, &mut NoProgress).unwrap();
    let problems: BTreeMap<&str, &Problem> = report
        .problems
        .iter()
        .map(|(n, p)| (n.as_str(), p))
        .collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(matches!(problems["layer_1"], Problem::Digest { .. }));
    assert!(matches!(
        problems["layer_2"],
        Problem::Size { actual: 10, .. }
    ));
    assert_eq!(problems["pooler"], &Problem::Missing);
    assert!(matches!(problems["tokenizer.json"], Problem::Size { .. }));
    assert_eq!(report.checked.len(), t.manifest.chunks.len() + 2 - 4);
}

#[test]
fn a_manifest_that_lies_is_refused_by_verify() {
    let t = Tiny::new(TinyBert::default());
    // A chunk file swapped for another chunk's with the manifest rewritten to match its
    // digest and size: the tensors no longer match what the manifest lists.
    let mut m = t.manifest.clone();
    let other = m.chunks["layer_2"].clone();
    fs::copy(t.chunk_path("layer_2"), t.chunk_path("layer_1")).unwrap();
    let l1 = m.chunks.get_mut("layer_1").unwrap();
    l1.sha256 = other.sha256;
    l1.size_bytes = other.size_bytes;
    fs::write(t.chunks.join(MANIFEST_FILE), m.to_bytes()).unwrap();
    let report = verify_dir(&t.chunks, &mut NoProgress).unwrap();
    assert!(
        matches!(&report.problems[..], [(n, Problem::Tensors(_))] if n == "layer_1"),
        "{:?}",
        report.problems
    );

    fs::write(t.chunks.join(MANIFEST_FILE), b"{\"model_name\": 1}").unwrap();
    assert!(verify_dir(&t.chunks, &mut NoProgress).is_err());
}

#[test]
fn bad_model_directories_are_typed_errors_and_damage_nothing() {
    let t = Tiny::new(TinyBert::default());
    let out = t.chunks.clone();
    let broken = t.dir.path().join("broken");
    let fresh = |what: &str| {
        let d = broken.join(what);
        fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            fs::copy(t.model.join(f), d.join(f)).unwrap();
        }
        d
    };

    let d = fresh("no-config");
    fs::remove_file(d.join("config.json")).unwrap();
    assert!(matches!(
        chunk(&d, &out, false),
        Err(ChunkError::Missing { .. })
    ));

    let d = fresh("no-weights");
    fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(matches!(
        chunk(&d, &out, false),
        Err(ChunkError::Missing { .. })
    ));

    let d = fresh("config-without-layers");
    fs::write(d.join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
    assert!(
        matches!(chunk(&d, &out, false), Err(ChunkError::Config(m)) if m.contains("num_hidden_layers"))
    );

    let d = fresh("config-not-json");
    fs::write(d.join("config.json"), b"not json").unwrap();
    assert!(matches!(chunk(&d, &out, false), Err(ChunkError::Config(_))));

    let d = fresh("wrong-layer-count");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 5.into();
    fs::write(d.join("config.json"), config.to_string()).unwrap();
    assert!(matches!(chunk(&d, &out, false), Err(ChunkError::Layout(m)) if m.contains('5')));

    let d = fresh("bad-tokenizer");
    fs::write(d.join("tokenizer.json"), b"[]").unwrap();
    assert!(matches!(
        chunk(&d, &out, false),
        Err(ChunkError::Tokenizer(_))
    ));

    for (what, bytes) in [
        ("empty-weights", Vec::new()),
        ("huge-header", u64::MAX.to_le_bytes().to_vec()),
        (
            "garbage-header",
            [&12u64.to_le_bytes()[..], b"not a header"].concat(),
        ),
        ("offsets-past-the-end", {
            let h = br#"{"embeddings.x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            [&(h.len() as u64).to_le_bytes()[..], h, &[0u8; 8]].concat()
        }),
    ] {
        let d = fresh(what);
        fs::write(d.join("model.safetensors"), bytes).unwrap();
        assert!(
            matches!(chunk(&d, &out, false), Err(ChunkError::Safetensors { .. })),
            "{what}"
        );
    }

    let d = fresh("bad name");
    let options = ChunkOptions::default();
    assert!(matches!(
        chunk_model(&d, &out, &options, &mut NoProgress),
        Err(ChunkError::ModelName(n)) if n == "bad name"
    ));

    // None of it touched the good chunks.
    assert!(verify_dir(&out, &mut NoProgress).unwrap().is_ok());
    assert_eq!(Manifest::load(&out).unwrap().0, t.manifest);
}

#[test]
fn all_minilm_l6_v2_chunks_into_verbatim_ranges_of_its_file() {
    let model = minilm_dir();
    let out = tempfile::tempdir().unwrap();
    let options = ChunkOptions {
        model_name: Some("all-MiniLM-L6-v2".into()),
        ..ChunkOptions::default()
    };
    let m = chunk_model(&model, out.path(), &options, &mut NoProgress)
        .unwrap()
        .manifest;
    let names: Vec<&str> = m.chunks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "embeddings",
            "layer_0",
            "layer_1",
            "layer_2",
            "layer_3",
            "layer_4",
            "layer_5",
            "pooler"
        ]
    );
    // The layout the research notes measured: embeddings [0, 47,678,464), then six
    // layers of 7,097,856 bytes, then the pooler.
    assert_eq!(
        m.chunks["embeddings"].sources[0].range,
        Some([0, 47_678_464])
    );
    for i in 0..6 {
        let r = m.chunks[&format!("layer_{i}")].sources[0].range.unwrap();
        assert_eq!(r[1] - r[0], 7_097_856);
    }
    assert_eq!(m.source.files[0].size_bytes, 90_868_376);
    let source = fs::read(model.join("model.safetensors")).unwrap();
    for (name, c) in &m.chunks {
        let bytes = fs::read(out.path().join(&c.file)).unwrap();
        let src = &c.sources[0];
        let [b, e] = src.range.unwrap();
        let at = |x: u64| usize::try_from(src.data_start + x).unwrap();
        assert_eq!(data_section(&bytes), &source[at(b)..at(e)], "{name}");
    }
    assert!(verify_dir(out.path(), &mut NoProgress).unwrap().is_ok());
}
