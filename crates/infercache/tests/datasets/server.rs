//! `datasets build` with an `embed` step while `infercache serve` holds the same
//! prediction cache: both real processes on the same real files.

use super::*;

/// `infercache serve --config config` on a loopback port, once it accepts connections;
/// killed on drop.
fn serve(dir: &Path, config: &Path) -> Served {
    let served = Served::spawn(
        infercache(dir)
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--model-dir")
            .arg(model_dir()),
    );
    // The model loads after the listener binds: retry until ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(served.url.trim_start_matches("http://")).is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    served
}

#[test]
fn a_build_beside_a_running_server_is_refused_in_process_and_embeds_through_it_with_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "disk_dir = {:?}\ndisk_size = \"64MiB\"\n",
            dir.path().join("disk").display().to_string()
        ),
    )
    .unwrap();
    let texts: Vec<String> = (0..24)
        .map(|i| format!("a sentence the server embeds first, number {i}"))
        .collect();
    let mut served = serve(dir.path(), &config);
    let answer = post_json(
        &served.url,
        "/v1/embeddings",
        &serde_json::json!({"model": "all-MiniLM-L6-v2", "input": texts}),
    );
    assert_eq!(answer["cache"]["misses"], 24, "{}", answer["cache"]);
    let server: Vec<Vec<f32>> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    let source = dir.path().join("a.jsonl");
    texts_file(&source, &texts, 0);
    let build = |name: &str, url: Option<&str>| {
        let mut c = infercache(dir.path());
        c.args(["datasets", "build", name, "--json", "--shard-rows", "8"])
            .args(["--step", "embed:all-MiniLM-L6-v2", "--config"])
            .arg(&config)
            .arg("--source")
            .arg(&source);
        if let Some(url) = url {
            c.args(["--url", url]);
        }
        c
    };

    // In this process, the server's disk tier cannot be opened: the build is refused with
    // what to do, and builds nothing.
    let out = build("a", None).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another process") && stderr.contains("--url"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&dir.path().join("disk").display().to_string()),
        "{stderr}"
    );
    let (listed, _) = run_ok(infercache(dir.path()).args(["datasets", "ls", "--json"]));
    assert_eq!(listed.trim(), "[]", "{listed}");
    // A bulk job on the same configuration gets the same answer.
    let bulk = infercache(dir.path())
        .args(["bulk", "--input"])
        .arg(&source)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .arg("--jobs-dir")
        .arg(dir.path().join("jobs"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let bulk_err = String::from_utf8_lossy(&bulk.stderr);
    assert!(!bulk.status.success(), "{bulk_err}");
    assert!(
        bulk_err.contains("is in use by another process") && bulk_err.contains("`bulk`"),
        "{bulk_err}"
    );

    // Through the server: every text is its hit, none is computed.
    let (out, _) = run_ok(&mut build("a", Some(&served.url)));
    let built: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(built["rows"], 24, "{built}");
    assert_eq!(
        built["embedded"],
        serde_json::json!({"cached": 24, "computed": 0, "model_calls": 0}),
        "{built}"
    );
    // A text the server never saw is computed by it (and counted as such).
    let new = dir.path().join("new.jsonl");
    texts_file(&new, &["a text only the dataset has".to_owned()], 0);
    let (out, _) = run_ok(
        infercache(dir.path())
            .args(["datasets", "build", "new", "--json", "--url", &served.url])
            .args(["--step", "embed:all-MiniLM-L6-v2", "--source"])
            .arg(&new),
    );
    let built_new: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        built_new["embedded"],
        serde_json::json!({"cached": 0, "computed": 1, "model_calls": 1}),
        "{built_new}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(served.child.wait().unwrap().success());

    // The rows are the server's embeddings, bit for bit.
    let (rows, _) = run_ok(infercache(dir.path()).args(["datasets", "stream", "a"]));
    let dataset: Vec<Vec<f32>> = rows
        .lines()
        .map(|l| floats(&serde_json::from_str::<serde_json::Value>(l).unwrap()["embedding"]))
        .collect();
    assert_eq!(dataset.len(), 24);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (i, (d, s)) in dataset.iter().zip(&server).enumerate() {
        assert_eq!(bits(d), bits(s), "row {i}");
    }
    // With the server stopped, the same build in this process is the same dataset: same
    // fingerprint (the model's identity read from the server is the registry's), every
    // row reused.
    let (out, _) = run_ok(&mut build("b", None));
    let built_b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(built_b["fingerprint"], built["fingerprint"], "{built_b}");
    assert_eq!(built_b["rows_computed"], 0, "{built_b}");
    // And the text embedded for a dataset through the server is now a hit here.
    let other = dir.path().join("other.jsonl");
    texts_file(&other, &["a text only the dataset has".to_owned()], 5);
    let (out, _) = run_ok(
        infercache(dir.path())
            .args(["datasets", "build", "other", "--json"])
            .args(["--step", "embed:all-MiniLM-L6-v2", "--config"])
            .arg(&config)
            .arg("--source")
            .arg(&other),
    );
    let built_other: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        built_other["embedded"],
        serde_json::json!({"cached": 1, "computed": 0, "model_calls": 0}),
        "{built_other}"
    );
}

#[test]
fn a_build_through_a_server_that_does_not_serve_the_model_names_what_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let source = jsonl(dir.path(), 10);
    let out = infercache(dir.path())
        .args([
            "datasets",
            "build",
            "d",
            "--url",
            &served.url,
            "--api-key",
            KEY,
        ])
        .args(["--step", "embed:no-such-model", "--source"])
        .arg(&source)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not serve `no-such-model`") && stderr.contains("all-MiniLM-L6-v2"),
        "{stderr}"
    );
    // A URL nothing listens on: the build says it cannot reach the server.
    let out = infercache(dir.path())
        .args(["datasets", "build", "d", "--url", "http://127.0.0.1:9"])
        .args(["--step", "embed:all-MiniLM-L6-v2", "--source"])
        .arg(&source)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
}
