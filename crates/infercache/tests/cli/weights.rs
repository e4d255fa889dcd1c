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
