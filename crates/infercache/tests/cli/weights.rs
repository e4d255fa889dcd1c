//! `infercache weights chunk|verify|serve|embed`, run as a user runs them, on a seeded
//! random tiny BERT.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use infercache_weights::testing::{TinyBert, reference_embeddings, sample_texts};

use super::{failed, infercache, succeeded};

fn chunk(model: &Path, out: &Path) -> std::process::Output {
    infercache()
        .args(["weights", "chunk"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--name", "tiny"])
        .output()
        .unwrap()
}

/// A running `infercache weights serve` on a port the OS chose.
struct WeightsServed {
    child: Child,
    url: String,
}

impl WeightsServed {
    fn start(dir: &Path) -> Self {
        let mut child = infercache()
            .args([
                "weights",
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--cache-size",
                "10",
            ])
            .arg("--chunks-dir")
            .arg(dir)
            .env("INFERCACHE_LOG", "info")
            .env_remove("INFERCACHE_WEIGHTS_REDIS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, rest)) = line.split_once("serving weights on ") {
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(url);
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the weight server never said where it listens");
        Self { child, url }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WeightsServed {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn chunk_verify_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    TinyBert::default().write(&model).unwrap();
    let out = dir.path().join("chunks");

    let first = succeeded(&chunk(&model, &out));
    assert!(
        first.contains("tiny: 6 chunks (4 layers)") && first.contains("9 written"),
        "{first}"
    );
    let again = succeeded(&chunk(&model, &out));
    assert!(
        again.contains("0 written, 9 unchanged, 0 removed"),
        "{again}"
    );
    let verified = succeeded(
        &infercache()
            .args(["weights", "verify"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(verified.contains("tiny: 8 files verified"), "{verified}");

    let layer = out.join("layer_1.safetensors");
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let err = failed(
        &infercache()
            .args(["weights", "verify"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("layer_1: sha256") && err.contains("1 of 8 files"),
        "{err}"
    );

    let err = failed(&chunk(&dir.path().join("nowhere"), &dir.path().join("x")));
    assert!(err.contains("config.json is missing"), "{err}");
    let err = failed(
        &infercache()
            .args(["weights", "verify"])
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    assert!(err.contains("chunk_info.json"), "{err}");
}

#[test]
fn serve_then_embed_prints_the_streamed_embeddings_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    TinyBert::default().write(&model).unwrap();
    let root = dir.path().join("chunks");
    succeeded(&chunk(&model, &root.join("tiny")));
    let mut served = WeightsServed::start(&root);
    let url = served.url.clone();

    let texts = sample_texts();
    let embed = |extra: &[&str], texts: &[String]| {
        infercache()
            .args(["weights", "embed", "--server", &url, "--model", "tiny"])
            .args(extra)
            .args(texts)
            .output()
            .unwrap()
    };
    let out = embed(
        &[
            "--cache-size",
            "2",
            "--prefetch",
            "1",
            "--threads",
            "2",
            "--stats",
        ],
        &texts,
    );
    let stdout = succeeded(&out);
    let reference = reference_embeddings(&model, &texts, 2);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (i, (line, want)) in lines.iter().zip(&reference).enumerate() {
        assert_eq!(line["index"], i);
        let got: Vec<f32> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&got, want, "text {i}");
    }
    let stats: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stderr)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["inference_stats"]["total_inferences"], 1);
    assert_eq!(stats["cache_info"]["max_cache_size"], 2);

    // One text per line from a file.
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, texts.join("\n")).unwrap();
    let from_file = succeeded(&embed(
        &["--file", file.to_str().unwrap(), "--threads", "2"],
        &[],
    ));
    assert_eq!(from_file, stdout);

    let err = failed(
        &infercache()
            .args([
                "weights",
                "embed",
                "--server",
                &served.url,
                "--model",
                "other",
                "hi",
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("404") && err.contains("other"), "{err}");
    let err = failed(&embed(&[], &[]));
    assert!(err.contains("no texts"), "{err}");

    assert!(served.terminate().success());
    let err = failed(&embed(&[], &texts));
    assert!(err.contains("manifest"), "{err}");
}

#[test]
fn serve_refuses_a_directory_without_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = infercache()
        .args(["weights", "serve", "--bind", "127.0.0.1:0", "--chunks-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("holds no chunk directory"), "{err}");
    let err = failed(
        &infercache()
            .args(["weights", "serve", "--bind", "nowhere", "--chunks-dir"])
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    assert!(err.contains("--bind"), "{err}");
}

/// all-MiniLM-L6-v2 chunked under `root/all-MiniLM-L6-v2`.
fn chunk_minilm(root: &Path) -> std::path::PathBuf {
    let out = root.join("all-MiniLM-L6-v2");
    infercache_weights::chunk_model(
        &super::model_dir(),
        &out,
        &infercache_weights::ChunkOptions::default(),
        &mut infercache_weights::NoProgress,
    )
    .unwrap();
    out
}

/// `infercache serve --weights-from URL` with its disk tier in `disk`, and no model
/// directory (the test environment's `INFERCACHE_MODEL_DIR` removed).
fn serve_weights_from(url: &str, disk: &Path, extra: &[&str]) -> Command {
    let mut cmd = infercache();
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--disk-size", "64MiB"])
        .arg("--disk-dir")
        .arg(disk)
        .args(["--weights-from", url])
        .args(extra)
        .env_remove("INFERCACHE_MODEL_DIR");
    cmd
}

/// `POST /v1/embeddings` on `served`: the status, `X-Cache` and the `data` array.
fn embeddings(served: &super::Served, extra: &[(&str, &str)]) -> (u16, String, serde_json::Value) {
    let body = serde_json::json!({
        "model": "all-MiniLM-L6-v2",
        "input": ["the cat sat on the mat", "solubility of ethanol", "CCO"],
    })
    .to_string();
    let addr = served.url.trim_start_matches("http://");
    let (status, headers, body) = super::http(addr, "POST", "/v1/embeddings", extra, &body);
    let x_cache = headers
        .iter()
        .find(|(k, _)| k == "x-cache")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    (status, x_cache, json["data"].clone())
}

#[test]
fn serve_weights_from_answers_as_the_local_model_and_shares_its_cache_entries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chunks");
    chunk_minilm(&root);
    let mut weights = WeightsServed::start(&root);
    let disk = dir.path().join("disk");

    let mut streamed = super::Served::spawn(
        tempfile::tempdir().unwrap(),
        serve_weights_from(&weights.url, &disk, &[]),
    );
    let (status, x_cache, first) = embeddings(&streamed, &[]);
    assert_eq!((status, x_cache.as_str()), (200, "MISS"), "{first}");
    assert_eq!(first.as_array().unwrap().len(), 3);
    let (status, x_cache, again) = embeddings(&streamed, &[]);
    assert_eq!((status, x_cache.as_str()), (200, "HIT"));
    assert_eq!(again, first);
    let log = streamed.log();
    assert!(log.contains("every chunk verified"), "{log}");
    assert!(!log.contains("not the pinned"), "{log}");
    assert!(streamed.terminate().success());
    assert!(weights.terminate().success());

    // The model from local files, on the same disk tier: the streamed server's entries
    // are its own (same keys), and its own computation gives the same bits.
    let mut local = super::Served::start_on(tempfile::tempdir().unwrap(), dir.path(), None);
    let (status, x_cache, hit) = embeddings(&local, &[]);
    assert_eq!((status, x_cache.as_str()), (200, "HIT"));
    assert_eq!(hit, first);
    let (status, x_cache, computed) = embeddings(&local, &[("cache-control", "no-cache")]);
    assert_eq!((status, x_cache.as_str()), (200, "MISS"));
    assert_eq!(computed, first, "the local model's bits");
    assert!(local.terminate().success());
}

/// Runs `cmd` (an `infercache serve` that must not start) and returns its stderr.
fn refused(mut cmd: Command) -> String {
    let out = cmd
        .env("INFERCACHE_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    failed(&out)
}

#[test]
fn serve_weights_from_stops_at_a_tampered_wrong_or_foreign_chunk_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chunks");
    let minilm = chunk_minilm(&root);
    let disk = dir.path().join("disk");

    // Tampered: a server that flips a byte of layer_3 on its way out.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = runtime.enter();
    let server = infercache_weights::WeightServer::open(
        infercache_weights::ServerConfig::new(root.clone()),
        infercache_core::SystemClock::shared(),
    )
    .unwrap();
    let tamper = axum::middleware::map_response(
        |uri: axum::http::Uri, response: axum::response::Response| async move {
            if !uri.path().ends_with("/chunks/layer_3") {
                return response;
            }
            let (parts, body) = response.into_parts();
            let mut bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap()
                .to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
        },
    );
    let app = server.app().layer(tamper);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await });
    let err = refused(serve_weights_from(&url, &disk, &[]));
    assert!(
        err.contains("layer_3") && err.contains("sha256") && err.contains("does not match"),
        "{err}"
    );

    // Wrong: layer_2's bytes listed as layer_3 (the manifest agrees, the tensors do not).
    let manifest_path = minilm.join("chunk_info.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    std::fs::copy(
        minilm.join("layer_2.safetensors"),
        minilm.join("layer_3.safetensors"),
    )
    .unwrap();
    let layer_2 = manifest["chunks"]["layer_2"].clone();
    for field in ["sha256", "size_bytes", "size_mb"] {
        manifest["chunks"]["layer_3"][field] = layer_2[field].clone();
    }
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let mut weights = WeightsServed::start(&root);
    let err = refused(serve_weights_from(&weights.url, &disk, &[]));
    assert!(
        err.contains("layer_3") && err.contains("cannot be built"),
        "{err}"
    );

    // Foreign: a model the weight server does not have, and a manifest for another one.
    let err = refused(serve_weights_from(
        &weights.url,
        &disk,
        &["--weights-model", "bge-small"],
    ));
    assert!(err.contains("manifest") && err.contains("404"), "{err}");
    assert!(weights.terminate().success());
    // Another model under this one's name: a BERT of another width.
    let tiny = dir.path().join("tiny");
    TinyBert::default().write(&tiny).unwrap();
    let other = dir.path().join("other");
    succeeded(
        &infercache()
            .args(["weights", "chunk"])
            .arg(&tiny)
            .arg("--out")
            .arg(other.join("all-MiniLM-L6-v2"))
            .args(["--name", "all-MiniLM-L6-v2"])
            .output()
            .unwrap(),
    );
    let mut weights = WeightsServed::start(&other);
    let err = refused(serve_weights_from(&weights.url, &disk, &[]));
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
    assert!(weights.terminate().success());

    // Settings that contradict each other never start anything.
    let mut both = serve_weights_from("http://127.0.0.1:9", &disk, &[]);
    both.arg("--model-dir").arg(&minilm);
    assert!(refused(both).contains("model_dir"));
    let err = refused(serve_weights_from("ftp://example.com", &disk, &[]));
    assert!(err.contains("weights_from"), "{err}");
}

#[test]
fn embed_with_a_disk_tier_fetches_no_chunk_in_a_second_process() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    TinyBert::default().write(&model).unwrap();
    let root = dir.path().join("chunks");
    succeeded(&chunk(&model, &root.join("tiny")));
    let mut served = WeightsServed::start(&root);
    let disk = dir.path().join("disk");
    let texts = sample_texts();
    let embed = |extra: &[&str]| {
        infercache()
            .args([
                "weights",
                "embed",
                "--server",
                &served.url,
                "--model",
                "tiny",
            ])
            .args(["--threads", "2", "--stats", "--disk-dir"])
            .arg(&disk)
            .args(extra)
            .args(&texts)
            .output()
            .unwrap()
    };
    let stats = |out: &std::process::Output| -> serde_json::Value {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        serde_json::from_str(stderr.lines().last().unwrap()).unwrap()
    };
    let first = embed(&["--disk-size", "64MiB"]);
    let stdout = succeeded(&first);
    let s = stats(&first);
    assert!(s["inference_stats"]["fetches"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["inference_stats"]["disk_hits"], 0, "{s}");
    let second = embed(&[]);
    assert_eq!(succeeded(&second), stdout, "the same bits from disk");
    let s = stats(&second);
    assert_eq!(s["inference_stats"]["fetches"], 0, "{s}");
    assert_eq!(s["inference_stats"]["bytes_fetched"], 0, "{s}");
    assert!(
        s["inference_stats"]["disk_hits"].as_u64().unwrap() > 0,
        "{s}"
    );
    let err = failed(&embed(&["--disk-size", "lots"]));
    assert!(err.contains("--disk-size"), "{err}");
    assert!(served.terminate().success());
}
