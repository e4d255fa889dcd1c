//! `infercache datasets` and `infercache artifacts`, run as a user runs them: real
//! processes, killed with SIGKILL at random instants.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "datasets/server.rs"]
mod server;

fn infercache(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_infercache"));
    c.env("INFERCACHE_DATASETS_DIR", cache.join("datasets"))
        .env("INFERCACHE_ARTIFACTS_DIR", cache.join("artifacts"))
        .env("INFERCACHE_LOG", "warn");
    c
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn jsonl(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("rows.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..rows {
        writeln!(f, r#"{{"id": {i}, "text": "row {i}"}}"#).unwrap();
    }
    f.flush().unwrap();
    path
}

fn manifest_of(cache: &Path, name: &str) -> String {
    let (out, _) = run_ok(infercache(cache).args(["datasets", "show", name, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::to_string(&v["manifest"]).unwrap()
}

#[test]
fn twenty_sigkills_during_a_build_lose_at_most_the_shard_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 2_000);
    let count = dir.path().join("invocations");
    // Each shard takes ~40 ms, and leaves a mark when its computation starts.
    let step = format!("cmd:1:echo x >> {}; sleep 0.04; cat", count.display());
    let build = |cache: &Path| {
        let mut c = infercache(cache);
        c.args([
            "datasets",
            "build",
            "d",
            "--shard-rows",
            "50",
            "--step",
            &step,
            "--source",
        ])
        .arg(&src);
        c
    };
    let reference = dir.path().join("reference");
    run_ok(&mut build(&reference));
    let shards = std::fs::read_to_string(&count).unwrap().lines().count();
    assert_eq!(shards, 40);
    std::fs::remove_file(&count).unwrap();

    let cache = dir.path().join("killed");
    let mut rng = StdRng::seed_from_u64(20);
    let mut kills = 0;
    for _ in 0..20 {
        let mut child = build(&cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 15,
        "only {kills} of the builds were still running when killed"
    );
    let (out, _) = run_ok(&mut build(&cache));
    assert!(out.contains("2000 rows in 40 shards"), "{out}");
    // Let the commands of killed builds (orphaned `sh`) finish writing their mark.
    std::thread::sleep(Duration::from_millis(200));
    let computed = std::fs::read_to_string(&count).unwrap().lines().count();
    assert!(
        computed <= shards + kills,
        "{computed} shard computations for {shards} shards and {kills} kills"
    );
    assert_eq!(manifest_of(&cache, "d"), manifest_of(&reference, "d"));
    // And what it streams is every row.
    let (rows, _) = run_ok(infercache(&cache).args(["datasets", "stream", "d", "--batch", "64"]));
    assert_eq!(rows.lines().count(), 2_000);
    assert!(rows.lines().nth(1999).unwrap().contains(r#""id":1999"#));
}

#[test]
fn stream_resumes_from_the_token_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 500);
    run_ok(
        infercache(dir.path())
            .args(["datasets", "build", "d", "--shard-rows", "64", "--source"])
            .arg(&src),
    );
    let stream = |extra: &[&str]| {
        let mut c = infercache(dir.path());
        c.args(["datasets", "stream", "d", "--shuffle", "9", "--batch", "10"])
            .args(extra);
        run_ok(&mut c)
    };
    let (full, _) = stream(&[]);
    let (head, err) = stream(&["--max-batches", "13"]);
    let token = err
        .lines()
        .find_map(|l| l.strip_prefix("resume: "))
        .unwrap_or_else(|| panic!("no token in {err}"))
        .to_owned();
    let (tail, _) = stream(&["--resume", &token]);
    // A batch never spans two shards: 13 batches of 10 are one shard of 64 rows (six
    // batches of 10 and one of 4) and six more batches of 10.
    assert_eq!(head.lines().count(), 64 + 60);
    assert_eq!(format!("{head}{tail}"), full);
}

#[test]
fn commands_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 10);
    let fails = |args: &[&str], words: &[&str]| {
        let out = infercache(dir.path()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        for w in words {
            assert!(err.contains(w), "{args:?}: `{err}` does not say `{w}`");
        }
    };
    let src = src.to_str().unwrap();
    fails(
        &["datasets", "build", "d", "--source", "/nonexistent/x.jsonl"],
        &["/nonexistent/x.jsonl"],
    );
    fails(
        &[
            "datasets",
            "build",
            "d",
            "--source",
            src,
            "--step",
            "cmd:1:exit 7",
        ],
        &["cmd:1:exit 7", "exit status: 7"],
    );
    fails(&["datasets", "stream", "nope"], &["no dataset `nope`"]);
    fails(
        &[
            "datasets",
            "build",
            "d",
            "--source",
            src,
            "--disk-size",
            "1KB",
        ],
        &["below two shards"],
    );
    fails(&["artifacts", "rm", "blake3:zz"], &["neither a digest"]);
    fails(
        &["artifacts", "ls", "--filter", "colour>3"],
        &["unknown filter field `colour`"],
    );
    // Nothing was lost: a good build still works after all that.
    run_ok(infercache(dir.path()).args(["datasets", "build", "d", "--source", src]));
}

fn random_file(path: &Path, bytes: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; bytes];
    rng.fill(&mut data[..]);
    std::fs::write(path, data).unwrap();
}

#[test]
fn twenty_sigkills_during_inserts_leave_no_corrupt_hit_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut kills = 0;
    // Kill instants are random; on a fast or a loaded machine some inserts finish before
    // their instant, so try until twenty were killed in flight (bounded).
    for i in 0..200 {
        let file = dir.path().join(format!("f{i}.bin"));
        random_file(&file, 16 << 20, i);
        let mut child = infercache(dir.path())
            .args(["artifacts", "add", "--class", "models"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..80)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        std::fs::remove_file(&file).unwrap();
        if kills == 20 {
            break;
        }
    }
    assert_eq!(kills, 20, "only {kills} inserts were killed in flight");
    // The next start cleans up; every blob there is whole and verified.
    let (ls, _) = run_ok(infercache(dir.path()).args(["artifacts", "ls", "--json"]));
    let tmp = dir.path().join("artifacts/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary files left"
    );
    run_ok(infercache(dir.path()).args(["artifacts", "verify"]));
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    for blob in v["blobs"].as_array().unwrap() {
        assert_eq!(blob["size"], 16 << 20, "a truncated blob: {blob}");
    }
}

#[test]
fn eight_processes_missing_one_blob_copy_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.bin");
    random_file(&file, 64 << 20, 8);
    let sha = infercache_artifact::Digest::sha256_of(&std::fs::read(&file).unwrap());
    let children: Vec<_> = (0..8)
        .map(|_| {
            infercache(dir.path())
                .args(["artifacts", "add", "--expect", &sha.to_string()])
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut added = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(" added") {
            added += 1;
        } else {
            assert!(text.contains("already there"), "{text}");
        }
    }
    assert_eq!(added, 1);
}

/// The built-in model's files (`serve` loads the model): `INFERCACHE_MODEL_DIR`, or the
/// copy `scripts/test` fetches into `target/model-cache`.
fn model_dir() -> PathBuf {
    let dir = std::env::var_os("INFERCACHE_MODEL_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/model-cache/all-MiniLM-L6-v2")
            },
            PathBuf::from,
        );
    assert!(
        dir.join("model.safetensors").is_file(),
        "this test needs the model in {}: run scripts/test or set INFERCACHE_MODEL_DIR",
        dir.display()
    );
    dir
}

/// A python with pyarrow: `INFERCACHE_TEST_PYTHON` (the pinned environment).
fn python() -> std::ffi::OsString {
    std::env::var_os("INFERCACHE_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .expect("INFERCACHE_TEST_PYTHON must name a python with pyarrow (scripts/test sets it)")
}

/// `infercache serve` on a loopback port with the dataset cache of `cache` and one API
/// key; killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
}

const KEY: &str = "sk-datasets-reader";

impl Served {
    fn start(cache: &Path) -> Self {
        let keys = cache.join("keys.toml");
        std::fs::write(
            &keys,
            format!("[[key]]\nkey = \"{KEY}\"\ntenant = \"ml\"\n"),
        )
        .unwrap();
        let mut cmd = infercache(cache);
        cmd.args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-disk",
            "--datasets-dir",
        ])
        .arg(cache.join("datasets"))
        .arg("--api-keys-file")
        .arg(&keys)
        .arg("--model-dir")
        .arg(model_dir())
        .env_remove("INFERCACHE_CONFIG");
        Self::spawn(&mut cmd)
    }

    /// Runs a `serve` command and waits until it says where it listens.
    fn spawn(cmd: &mut Command) -> Self {
        use std::io::BufRead as _;
        let mut child = cmd
            .env("INFERCACHE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, url)) = line.split_once("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server never said where it listens");
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the routes with real pyarrow and Python's HTTP client: the Arrow stream's rows
/// and batch sizes, the JSON lines of a shuffled stream cut after 37 rows and resumed
/// with its token, and the status and code of each bad request.
const HTTP_CLIENT: &str = r#"
import json, sys, time, urllib.request, urllib.error
import pyarrow.ipc as ipc
base, key = sys.argv[1], sys.argv[2]
def get(path, auth=True):
    req = urllib.request.Request(base + path)
    if auth:
        req.add_header("Authorization", "Bearer " + key)
    return urllib.request.urlopen(req, timeout=60)
deadline = time.time() + 60
while True:
    try:
        get("/readyz", auth=False); break
    except Exception:
        if time.time() > deadline: raise
        time.sleep(0.1)
out = {}
with get("/v1/datasets/d/batches?format=arrow&batch=10&shuffle=5&epoch=1") as r:
    out["content_type"] = r.headers["Content-Type"]
    reader = ipc.open_stream(r)
    batches = list(reader)
out["arrow_rows"] = [row for b in batches for row in b.to_pylist()]
out["arrow_batch_rows"] = [b.num_rows for b in batches]
with get("/v1/datasets/d/batches?shuffle=5&epoch=1&batch=10") as r:
    token = r.headers["X-Resume-Token"]
    head = [json.loads(r.readline()) for _ in range(37)]
prefix, position = token.rsplit(".", 1)
with get("/v1/datasets/d/batches?batch=10&resume=%s.%d" % (prefix, int(position) + 37)) as r:
    tail = [json.loads(line) for line in r]
out["resumed"] = head + tail
out["list"] = json.load(get("/v1/datasets"))
out["show"] = json.load(get("/v1/datasets/d"))
errors = {}
for name, path, auth in [
    ("no_key", "/v1/datasets/d/batches", False),
    ("unknown", "/v1/datasets/nope/batches", True),
    ("bad_name", "/v1/datasets/.d/batches", True),
    ("bad_batch", "/v1/datasets/d/batches?batch=0", True),
    ("bad_format", "/v1/datasets/d/batches?format=parquet", True),
    ("bad_token", "/v1/datasets/d/batches?resume=v1.x", True),
]:
    try:
        get(path, auth); errors[name] = [200, None]
    except urllib.error.HTTPError as e:
        errors[name] = [e.code, json.load(e)["error"]["code"]]
out["errors"] = errors
print(json.dumps(out))
"#;

#[test]
fn http_batches_read_by_pyarrow_equal_the_commands_rows_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 500);
    run_ok(
        infercache(dir.path())
            .args(["datasets", "build", "d", "--shard-rows", "64", "--source"])
            .arg(&src),
    );
    let (command, _) = run_ok(infercache(dir.path()).args([
        "datasets",
        "stream",
        "d",
        "--format",
        "jsonl",
        "--batch",
        "10",
        "--shuffle",
        "5",
        "--epoch",
        "1",
    ]));
    let command: Vec<serde_json::Value> = command
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(command.len(), 500);
    let (show, _) = run_ok(infercache(dir.path()).args(["datasets", "show", "d", "--json"]));
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();

    let served = Served::start(dir.path());
    let (out, _) = run_ok(
        Command::new(python())
            .arg("-c")
            .arg(HTTP_CLIENT)
            .args([&served.url, KEY]),
    );
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["content_type"], "application/vnd.apache.arrow.stream");
    assert_eq!(out["arrow_rows"].as_array().unwrap(), &command);
    let sizes: Vec<u64> = out["arrow_batch_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(sizes.iter().all(|n| (1..=10).contains(n)), "{sizes:?}");
    assert_eq!(out["resumed"].as_array().unwrap(), &command);
    assert_eq!(out["show"], show);
    assert_eq!(out["list"]["data"][0]["name"], "d");
    assert_eq!(out["list"]["data"][0]["rows"], 500);
    let errors = &out["errors"];
    for (case, status, code) in [
        ("no_key", 401, "invalid_api_key"),
        ("unknown", 404, "dataset_not_found"),
        ("bad_name", 400, "invalid_value"),
        ("bad_batch", 400, "invalid_value"),
        ("bad_format", 400, "invalid_value"),
        ("bad_token", 400, "invalid_value"),
    ] {
        assert_eq!(
            errors[case],
            serde_json::json!([status, code]),
            "{case}: {errors}"
        );
    }
}

/// `POST path` with a JSON body to `url` (`http://host:port`), over a plain socket; the
/// answer's body as JSON.
fn post_json(url: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::Read as _;
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn texts_file(path: &Path, texts: &[String], id_from: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (i, t) in texts.iter().enumerate() {
        writeln!(f, "{}", serde_json::json!({"id": id_from + i, "text": t})).unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn embed_reuses_what_the_server_embedded_and_equals_it_bit_for_bit() {
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
    let texts: Vec<String> = (0..40)
        .map(|i| format!("sentence {i}: the cat sat on mat number {}", i * 7))
        .collect();

    // A server embeds the texts (misses, computed by the model), then stops and flushes.
    let mut served = {
        let mut child = infercache(dir.path())
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--model-dir")
            .arg(model_dir())
            .env("INFERCACHE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead as _;
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, url)) = line.split_once("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        Served { child, url }
    };
    // The model loads after the listener binds: retry until ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(served.url.trim_start_matches("http://")).is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = post_json(
        &served.url,
        "/v1/embeddings",
        &serde_json::json!({"model": "all-MiniLM-L6-v2", "input": texts}),
    );
    assert_eq!(answer["cache"]["misses"], 40, "{}", answer["cache"]);
    let server: Vec<Vec<f32>> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(served.child.wait().unwrap().success());

    // A dataset of those texts embeds with 0 model calls: every text is a hit.
    let a = dir.path().join("a.jsonl");
    texts_file(&a, &texts, 0);
    let build = |name: &str, source: &Path| {
        let (out, _) = run_ok(
            infercache(dir.path())
                .args(["datasets", "build", name, "--json", "--shard-rows", "16"])
                .args(["--step", "embed:all-MiniLM-L6-v2", "--config"])
                .arg(&config)
                .arg("--source")
                .arg(source),
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let built = build("a", &a);
    assert_eq!(built["rows"], 40);
    assert_eq!(
        built["embedded"],
        serde_json::json!({"cached": 40, "computed": 0, "model_calls": 0}),
        "{built}"
    );
    let (rows, _) = run_ok(
        infercache(dir.path())
            .args(["datasets", "stream", "a", "--config"])
            .arg(&config),
    );
    let dataset: Vec<Vec<f32>> = rows
        .lines()
        .map(|l| floats(&serde_json::from_str::<serde_json::Value>(l).unwrap()["embedding"]))
        .collect();
    assert_eq!(dataset.len(), 40);
    for (i, (d, s)) in dataset.iter().zip(&server).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(d), bits(s), "row {i}");
    }

    // Another dataset over the same texts (other ids: another fingerprint) computes none.
    let b = dir.path().join("b.jsonl");
    texts_file(&b, &texts, 1000);
    let built_b = build("b", &b);
    assert_ne!(built_b["fingerprint"], built["fingerprint"]);
    assert_eq!(built_b["rows_computed"], 40);
    assert_eq!(
        built_b["embedded"],
        serde_json::json!({"cached": 40, "computed": 0, "model_calls": 0})
    );
    // New texts are computed: the counts are the model's work, not a constant.
    let c = dir.path().join("c.jsonl");
    texts_file(&c, &["a text no one embedded".to_owned()], 0);
    let built_c = build("c", &c);
    assert_eq!(built_c["embedded"]["computed"], 1, "{built_c}");
    assert_eq!(built_c["embedded"]["model_calls"], 1, "{built_c}");

    // The model's identity is part of the step's fingerprint.
    let (show, _) = run_ok(infercache(dir.path()).args(["datasets", "show", "a", "--json"]));
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    let params = &show["manifest"]["chain"][1]["params"];
    assert_eq!(params["model"], "all-MiniLM-L6-v2", "{params}");
    let version = params["model_version"].as_str().unwrap();
    assert!(
        version.starts_with("builtin:all-MiniLM-L6-v2@"),
        "{version}"
    );
    assert!(version.contains("sha256:"), "{version}");
}

#[test]
fn the_cache_table_its_variables_and_flags_configure_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 300);
    let table_dir = dir.path().join("from-the-table");
    let config = dir.path().join("infercache.toml");
    let write = |cache: &str| {
        std::fs::write(
            &config,
            format!(
                "bind = \"127.0.0.1:1\"\ndisk_size = \"1GiB\"\n[cache]\n{cache}\n[cache.disk]\npath = {:?}\nuse_mmap = true\n",
                table_dir.display().to_string()
            ),
        )
        .unwrap();
    };
    write(
        "memory_size = \"64MB\"\ndisk_size = 3\npolicy = \"fifo\"\neviction_threshold = 0.5\ncleanup_interval = \"30m\"",
    );
    // Without --dir or INFERCACHE_DATASETS_DIR, `[cache.disk] path` is the directory.
    let cmd = |args: &[&str]| {
        let mut c = infercache(dir.path());
        c.env_remove("INFERCACHE_DATASETS_DIR")
            .args(args)
            .arg("--config")
            .arg(&config);
        c
    };
    run_ok(
        cmd(&["datasets", "build", "d", "--shard-rows", "64"])
            .arg("--source")
            .arg(&src),
    );
    assert!(table_dir.join("names").join("d.json").is_file());
    let usage = |c: &mut Command| {
        let (out, _) = run_ok(c);
        out.lines()
            .find(|l| l.starts_with("shards on disk"))
            .unwrap_or_else(|| panic!("no usage line in {out}"))
            .to_owned()
    };
    // The file's disk_size (3 MB, the integer in megabytes) and policy.
    let line = usage(&mut cmd(&["datasets", "ls"]));
    assert!(line.ends_with("of 3.0 MiB (fifo)"), "{line}");
    // A variable beats the file, a flag beats the variable.
    let line = usage(cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_POLICY", "size"));
    assert!(line.ends_with("(size)"), "{line}");
    let line = usage(
        cmd(&["datasets", "ls", "--policy", "lru", "--disk-size", "2GB"])
            .env("INFERCACHE_CACHE_POLICY", "size")
            .env("INFERCACHE_CACHE_DISK_SIZE", "5"),
    );
    assert!(line.ends_with("of 1.9 GiB (lru)"), "{line}");

    // Bad values fail naming their key, and lose nothing.
    let fails = |c: &mut Command, key: &str| {
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{c:?} succeeded");
        assert!(err.contains(key), "{c:?}: `{err}` does not name `{key}`");
    };
    fails(
        cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_POLICY", "random"),
        "policy",
    );
    fails(
        &mut cmd(&["datasets", "ls", "--disk-size", "lots"]),
        "disk_size",
    );
    fails(
        cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_EVICTION_THRESHOLD", "2"),
        "eviction_threshold",
    );
    fails(
        cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_CLEANUP_INTERVAL", "soon"),
        "cleanup_interval",
    );
    fails(
        cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_MEMORY_SIZE", "0.5"),
        "memory_size",
    );
    fails(
        cmd(&["datasets", "ls"]).env("INFERCACHE_CACHE_USE_MMAP", "sometimes"),
        "use_mmap",
    );
    write("colour = \"red\"");
    fails(&mut cmd(&["datasets", "ls"]), "colour");
    write("disk_size = \"12 parsecs\"");
    fails(&mut cmd(&["datasets", "ls"]), "disk_size");
    write("");
    let (out, _) = run_ok(&mut cmd(&["datasets", "stream", "d"]));
    assert_eq!(out.lines().count(), 300);
    // Shards read with plain reads instead of memory maps: the same rows.
    let (read, _) =
        run_ok(cmd(&["datasets", "stream", "d"]).env("INFERCACHE_CACHE_USE_MMAP", "false"));
    assert_eq!(read, out);
}
