//! `infercache bulk`, run as a user runs it: killed with SIGKILL at random instants and
//! resumed, stopped with SIGINT and resumed, and a server on the same tiers answering
//! the job's inputs as hits. Upstreams are real HTTP servers in this test process that
//! count their rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infercache_upstream::testing::{self, TestUpstream};
use rand::Rng as _;
use serde_json::Value;

use super::{infercache, model_dir};

/// A job's directory, its configuration (an http-json model `scorer` at `url`), and the
/// upstream behind it.
struct Job {
    dir: tempfile::TempDir,
    up: Arc<TestUpstream>,
}

impl Job {
    fn new(rt: &tokio::runtime::Runtime, input: &str) -> Self {
        let (url, up) = rt.block_on(testing::start());
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "disk_dir = \"{}\"\ndisk_size = \"256MiB\"\n\n[[models]]\nname = \"scorer\"\nbackend = \"http-json\"\nurl = \"{url}/predict\"\n",
            dir.path().join("disk").display()
        );
        std::fs::write(dir.path().join("infercache.toml"), config).unwrap();
        std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
        Self { dir, up }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> Command {
        let mut cmd = infercache();
        cmd.arg("bulk")
            .arg("--config")
            .arg(self.path("infercache.toml"))
            .args([
                "--model",
                "scorer",
                "--batch-size",
                "8",
                "--concurrency",
                "2",
            ])
            .arg("--input")
            .arg(self.path("in.jsonl"))
            .arg("--output")
            .arg(self.path("out.jsonl"))
            .arg("--jobs-dir")
            .arg(self.path("jobs"))
            .env_remove("INFERCACHE_CONFIG")
            .env("INFERCACHE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self) -> Output {
        self.command().output().unwrap()
    }

    /// Whether some window of the job has been journaled.
    fn journaled(&self) -> bool {
        let Ok(dirs) = std::fs::read_dir(self.path("jobs")) else {
            return false;
        };
        dirs.flatten()
            .any(|d| std::fs::metadata(d.path().join("journal")).is_ok_and(|m| m.len() > 0))
    }
}

/// `n` lines, every input twice.
pub(super) fn half_repeated(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"key\": \"r{i}\", \"input\": {{\"id\": {}}}}}\n",
                (i * 7919) % (n / 2)
            )
        })
        .collect()
}

/// The summary line a run printed last on stderr.
#[track_caller]
pub(super) fn summary(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

pub(super) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The output of the same job run once, uninterrupted, elsewhere.
pub(super) fn clean_output(rt: &tokio::runtime::Runtime, input: &str) -> Vec<u8> {
    let clean = Job::new(rt, input);
    let out = clean.run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read(&clean.path("out.jsonl"))
}

#[test]
fn twenty_sigkills_at_random_instants_then_resume_compute_each_input_once_plus_what_was_in_flight()
{
    const KILLS: u64 = 20;
    const IN_FLIGHT: u64 = 2 * 8; // --concurrency 2 --batch-size 8
    let rt = tokio::runtime::Runtime::new().unwrap();
    let input = half_repeated(20_000);
    let job = Job::new(&rt, &input);
    job.up.delay(Duration::from_millis(10));
    let mut rng = rand::rng();
    let mut kills = 0;
    while kills < KILLS {
        let mut child = job.command().stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..450)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 10,
        "the job ended after {kills} kills: make it longer"
    );
    let killed_rows = job.up.rows() as u64;
    let out = job.run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert!(s["resumed_at"].as_u64().unwrap() > 0, "{s}");
    assert!(killed_rows > 0);

    let unique = 10_000;
    let computed = job.up.rows() as u64;
    assert!(
        (unique..=unique + kills * IN_FLIGHT).contains(&computed),
        "{computed} rows computed for {unique} unique inputs over {kills} kills"
    );
    assert_eq!(s["unique"], unique);
    assert_eq!(s["rows"], 20_000);
    assert!(
        read(&job.path("out.jsonl")) == clean_output(&rt, &input),
        "the outputs differ"
    );
}

#[test]
fn sigint_drains_the_batches_in_flight_and_a_resume_computes_nothing_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let input = half_repeated(4_000);
    let job = Job::new(&rt, &input);
    job.up.delay(Duration::from_millis(10));
    let child = job.command().spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !job.journaled() {
        assert!(Instant::now() < deadline, "nothing journaled within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a stopped job exits with an error");
    let s = summary(&out);
    assert_eq!(s["stopped"], true, "{s}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );

    let mut resume = job.command();
    let out = resume.arg("--resume").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(job.up.rows(), 2_000, "a row was computed twice");
    assert!(summary(&out)["resumed_at"].as_u64().unwrap() > 0);
    assert!(read(&job.path("out.jsonl")) == clean_output(&rt, &input));
}

#[test]
fn after_a_job_with_the_builtin_model_a_server_on_the_same_tiers_answers_its_inputs_as_hits() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "the cat sat on the mat",
        "CCO",
        "the cat sat on the mat",
        "hello",
    ];
    let input: String = texts.iter().map(|t| format!("\"{t}\"\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let out = infercache()
        .arg("bulk")
        .arg("--input")
        .arg(dir.path().join("in.jsonl"))
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .arg("--jobs-dir")
        .arg(dir.path().join("jobs"))
        .arg("--disk-dir")
        .arg(dir.path().join("disk"))
        .args(["--disk-size", "64MiB"])
        .arg("--model-dir")
        .arg(model_dir())
        .env_remove("INFERCACHE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(
        (s["computed"].as_u64(), s["duplicates"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    let outputs: Vec<Value> = String::from_utf8(read(&dir.path().join("out.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outputs.len(), 4);
    assert_eq!(outputs[1]["input"], "CCO");
    assert_eq!(outputs[1]["output"].as_array().unwrap().len(), 384);

    let mut server = super::Served::start_on(tempfile::tempdir().unwrap(), dir.path(), None);
    server.wait_ready();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cache, body): (String, Value) = rt.block_on(async {
        let r = infercache_core::tls::client()
            .post(format!("{}/v1/embeddings", server.url))
            .json(&serde_json::json!({ "model": "all-MiniLM-L6-v2", "input": ["CCO", "hello"] }))
            .send()
            .await
            .unwrap();
        let cache = r.headers().get("x-cache").map_or_else(
            || format!("status {}", r.status()),
            |v| v.to_str().unwrap().to_owned(),
        );
        (cache, r.json().await.unwrap())
    });
    assert_eq!(cache, "HIT", "{body}\n{}", server.log());
    let served: Vec<f64> = body["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let written: Vec<f64> = outputs[1]["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(served.len(), written.len());
    for (a, b) in served.iter().zip(&written) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    server.terminate();
}

#[test]
fn through_a_running_server_the_job_fills_its_cache_and_writes_the_same_output() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let input = half_repeated(2_000);
    let job = Job::new(&rt, &input);
    let mut server = infercache()
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(job.path("infercache.toml"))
        .env_remove("INFERCACHE_CONFIG")
        .env("INFERCACHE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, url)) = line.split_once("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let bulk = |jobs: &str| {
        infercache()
            .args(["bulk", "--model", "scorer", "--url", &url])
            .arg("--input")
            .arg(job.path("in.jsonl"))
            .arg("--output")
            .arg(job.path("via-server.jsonl"))
            .arg("--jobs-dir")
            .arg(job.path(jobs))
            .env_remove("INFERCACHE_API_KEY")
            .output()
            .unwrap()
    };
    let out = bulk("jobs-a");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(job.up.rows(), 1_000);
    let s = summary(&out);
    // The server counts a request's hits, not which rows they were: the job's split
    // between hits and computed is approximate, their sum is not.
    let (hits, computed) = (s["hits"].as_u64().unwrap(), s["computed"].as_u64().unwrap());
    assert_eq!(
        (s["unique"].as_u64(), hits + computed),
        (Some(1_000), 1_000),
        "{s}"
    );
    let first = read(&job.path("via-server.jsonl"));
    // Another job directory: a new pass, every row a hit in the server's cache.
    let out = bulk("jobs-b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(job.up.rows(), 1_000);
    assert_eq!(summary(&out)["hits"], 1_000);
    assert!(read(&job.path("via-server.jsonl")) == first);
    assert!(
        first == clean_output(&rt, &input),
        "in-process and server outputs differ"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// `infercache serve` on `config`, on a loopback port the OS chose: the child and its URL.
fn serve(config: &Path) -> (std::process::Child, String) {
    let mut server = infercache()
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("INFERCACHE_CONFIG")
        .env("INFERCACHE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, url)) = line.split_once("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (server, url)
}

#[test]
fn warm_is_a_job_with_no_output_each_distinct_input_sent_once_and_the_server_then_answers_hits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (upstream, up) = rt.block_on(testing::start());
    up.poison("poisoned");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("infercache.toml");
    std::fs::write(
        &config,
        format!(
            "disk_dir = \"{}\"\ndisk_size = \"64MiB\"\n\n[[models]]\nname = \"emb\"\nbackend = \"openai\"\nurl = \"{upstream}\"\nretries = 0\n",
            dir.path().join("disk").display()
        ),
    )
    .unwrap();
    let (mut server, url) = serve(&config);
    // 40 distinct texts, each twice, a blank line, and one the model fails on.
    let texts: Vec<String> = (0..40).map(|i| format!("text number {i}")).collect();
    let mut file = String::new();
    for t in texts.iter().chain(&texts) {
        file.push_str(t);
        file.push('\n');
    }
    file.push_str("\na poisoned text\n");
    std::fs::write(dir.path().join("inputs.txt"), file).unwrap();
    let warm = || {
        infercache()
            .args(["warm", "--model", "emb", "--batch", "16", "--url", &url])
            .arg(dir.path().join("inputs.txt"))
            .arg("--errors")
            .arg(dir.path().join("errors.jsonl"))
            .arg("--jobs-dir")
            .arg(dir.path().join("jobs"))
            .env_remove("INFERCACHE_API_KEY")
            .env("INFERCACHE_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = warm();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(
        (
            s["rows"].as_u64(),
            s["unique"].as_u64(),
            s["duplicates"].as_u64(),
            s["computed"].as_u64(),
            s["errors"].as_u64(),
        ),
        (Some(81), Some(41), Some(40), Some(40), Some(1)),
        "{s}"
    );
    // Each distinct text reached the model once; the repeats never left the job.
    assert_eq!(up.rows(), 40, "{s}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warmed 81 inputs") && stdout.contains("40 computed and stored"),
        "{stdout}"
    );
    let errors = String::from_utf8(read(&dir.path().join("errors.jsonl"))).unwrap();
    let errors: Vec<Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["input"].as_str()),
        (Some(82), Some("a poisoned text"))
    );

    // The server answers the warmed texts from its cache.
    let cache: String = rt.block_on(async {
        let r = infercache_core::tls::client()
            .post(format!("{url}/v1/embeddings"))
            .json(&serde_json::json!({ "model": "emb", "input": [texts[3], texts[39]] }))
            .send()
            .await
            .unwrap();
        r.headers().get("x-cache").map_or_else(
            || format!("status {}", r.status()),
            |v| v.to_str().unwrap().to_owned(),
        )
    });
    assert_eq!(cache, "HIT");
    // So does a bulk job through it, and warming again computes nothing.
    let jsonl: String = texts.iter().map(|t| format!("\"{t}\"\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), jsonl).unwrap();
    let out = infercache()
        .args(["bulk", "--model", "emb", "--url", &url])
        .arg("--input")
        .arg(dir.path().join("in.jsonl"))
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .arg("--jobs-dir")
        .arg(dir.path().join("jobs"))
        .env_remove("INFERCACHE_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&out)["hits"], 40);
    let out = warm();
    let s = summary(&out);
    assert_eq!(
        (s["hits"].as_u64(), s["computed"].as_u64()),
        (Some(40), Some(0)),
        "{s}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("40 already cached"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(up.rows(), 40);
    let _ = server.kill();
    let _ = server.wait();
}
