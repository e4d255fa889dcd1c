//! The `infercache` binary, run as a user runs it.

use std::io::{BufRead as _, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn infercache() -> Command {
    Command::new(env!("CARGO_BIN_EXE_infercache"))
}

fn trace(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn hit_ratio_prints_one_line_per_policy_and_capacity() {
    // Keys 0..4, then 0..4 again: a capacity of 4 hits every second pass under any policy.
    let t = trace("0 4 0 0\n0 4 0 1\n");
    let out = infercache()
        .args(["bench", "hit-ratio", "--trace"])
        .arg(t.path())
        .args(["--capacity", "4,2", "--policy", "all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{stdout}");
    assert!(
        lines.contains(&"policy=lru capacity=4 requests=8 hit_ratio=50.00"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"policy=lru capacity=2 requests=8 hit_ratio=0.00"),
        "{stdout}"
    );
    for line in lines {
        assert!(line.starts_with("policy="), "{line}");
    }
}

#[test]
fn bad_arguments_and_bad_traces_fail_with_a_message() {
    let t = trace("0 4 0 0\n");
    for (args, needle) in [
        (
            vec!["--capacity", "4", "--policy", "arc"],
            "unknown eviction policy",
        ),
        (vec!["--capacity", "0"], "--capacity must be positive"),
    ] {
        let out = infercache()
            .args(["bench", "hit-ratio", "--trace"])
            .arg(t.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let garbage = trace("this is not a trace\n");
    let out = infercache()
        .args(["bench", "hit-ratio", "--capacity", "4", "--trace"])
        .arg(garbage.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: bad START"));
}

/// The model directory for tests that serve: `INFERCACHE_MODEL_DIR`, else what
/// `scripts/test` fetched into `<target dir>/model-cache`. Panics (fails, never skips)
/// when it is missing.
fn model_dir() -> PathBuf {
    let dir = std::env::var_os("INFERCACHE_MODEL_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || {
                std::env::var_os("CARGO_TARGET_DIR")
                    .filter(|d| !d.is_empty())
                    .map_or_else(
                        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
                        PathBuf::from,
                    )
                    .join("model-cache/all-MiniLM-L6-v2")
            },
            PathBuf::from,
        );
    assert!(
        dir.join("model.safetensors").is_file(),
        "this test needs the model in {}: run scripts/test, or \
         `cargo run -p infercache-model --example fetch_model -- target/model-cache`, \
         or set INFERCACHE_MODEL_DIR",
        dir.display()
    );
    dir
}

/// A running `infercache serve` on a loopback port the OS chose, with a disk tier in a
/// temporary directory. Killed on drop if a test ends without stopping it.
struct Served {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

const ADMIN_KEY: &str = "sk-test-admin";
const TENANT_KEY: &str = "sk-test-tenant";

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.toml");
        std::fs::write(
            &keys,
            format!(
                "[[key]]\nkey = \"{ADMIN_KEY}\"\ntenant = \"ops\"\nadmin = true\n\n\
                 [[key]]\nkey = \"{TENANT_KEY}\"\ntenant = \"acme\"\n"
            ),
        )
        .unwrap();
        let disk = dir.path().to_owned();
        Self::start_on(dir, &disk, Some(&keys))
    }

    /// A server whose disk tier is `disk_parent/disk`, with `keys` (none: every request
    /// is the tenant `default`).
    fn start_on(
        dir: tempfile::TempDir,
        disk_parent: &std::path::Path,
        keys: Option<&std::path::Path>,
    ) -> Self {
        let mut cmd = infercache();
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--disk-size", "64MiB"])
            .arg("--disk-dir")
            .arg(disk_parent.join("disk"))
            .arg("--model-dir")
            .arg(model_dir());
        if let Some(keys) = keys {
            cmd.arg("--api-keys-file").arg(keys);
        }
        Self::spawn(dir, cmd)
    }

    /// Runs `cmd` (an `infercache serve` command line) until it is ready.
    fn spawn(dir: tempfile::TempDir, mut cmd: Command) -> Self {
        let mut child = cmd
            .env_remove("INFERCACHE_CONFIG")
            .env("INFERCACHE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drain stderr for as long as the server runs, so it never blocks on a full pipe,
        // and pick the address out of its "listening on" line.
        let log = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, url)) = line.split_once("listening on ") {
                    let _ = url_tx.send(url.trim().to_owned());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut served = Self {
            child,
            url: String::new(),
            log,
            dir,
        };
        served.url = url_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("the server never said where it listens:\n{}", served.log())
            });
        served.wait_ready();
        served
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls `GET /readyz` until it answers 200 (the model loads first).
    fn wait_ready(&mut self) {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the server exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if http_status(&addr, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server was not ready within 60 s:\n{}", self.log());
    }

    /// Runs `infercache ARGS --url URL` with `key` in `INFERCACHE_API_KEY`.
    fn admin(&self, key: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = infercache();
        cmd.args(args)
            .args(["--url", &self.url])
            .env("INFERCACHE_JOBS_DIR", self.dir.path().join("jobs"));
        match key {
            Some(key) => cmd.env("INFERCACHE_API_KEY", key),
            None => cmd.env_remove("INFERCACHE_API_KEY"),
        };
        cmd.output().unwrap()
    }

    /// Sends SIGTERM and returns the exit status, failing if it takes over 10 s.
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within 10 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.0 request: the status, the headers (lowercased names) and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read as _;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The status code of `GET path` over plain HTTP/1.0, or `None` if there is no answer.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[track_caller]
fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[track_caller]
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn serve_then_warm_stats_invalidate_over_http_and_stop_on_sigterm() {
    let mut server = Served::start();
    let inputs = server.dir.path().join("inputs.txt");
    std::fs::write(
        &inputs,
        "the cat sat on the mat\nembeddings of text\n\nsolubility of ethanol\nCCO\nhello, world\n",
    )
    .unwrap();
    let inputs = inputs.to_str().unwrap();

    // Warm in batches of two (three requests); the blank line is skipped.
    let out = succeeded(&server.admin(Some(ADMIN_KEY), &["warm", inputs, "--batch", "2"]));
    assert!(
        out.contains("warmed 5 inputs") && out.contains("5 computed and stored"),
        "{out}"
    );

    let out = succeeded(&server.admin(Some(ADMIN_KEY), &["stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    for tier in ["memory", "disk"] {
        assert_eq!(stats["tiers"][tier]["entries"], 5, "{tier}: {stats:#}");
        assert_eq!(stats["tiers"][tier]["inserts"], 5, "{tier}: {stats:#}");
    }
    assert_eq!(
        stats["models"]["all-MiniLM-L6-v2"]["inserts"], 5,
        "{stats:#}"
    );
    assert_eq!(
        stats["models"]["all-MiniLM-L6-v2"]["misses"], 5,
        "{stats:#}"
    );

    let table = succeeded(&server.admin(Some(ADMIN_KEY), &["stats"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("tier") && lines[0].contains("hit rate"),
        "{table}"
    );
    assert!(lines[1].starts_with("memory"), "{table}");
    assert!(lines[2].starts_with("disk"), "{table}");
    let model = lines
        .iter()
        .find(|l| l.starts_with("all-MiniLM-L6-v2"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(model.contains("0.0%"), "{table}");

    // Warm again: every input is a hit.
    let out = succeeded(&server.admin(Some(ADMIN_KEY), &["warm", inputs]));
    assert!(out.contains("5 already cached"), "{out}");

    // Errors show the server's own message: no key (401), a tenant's key (403).
    let stderr = failed(&server.admin(None, &["stats"]));
    assert!(
        stderr.contains("401") && stderr.contains("missing or invalid API key"),
        "{stderr}"
    );
    let stderr = failed(&server.admin(Some(TENANT_KEY), &["invalidate", "--all"]));
    assert!(
        stderr.contains("403") && stderr.contains("needs an admin API key"),
        "{stderr}"
    );

    // The flag works as well as the variable; after invalidating, every input recomputes.
    let out = succeeded(&server.admin(None, &["invalidate", "--all", "--api-key", ADMIN_KEY]));
    assert_eq!(out.trim(), "invalidated everything");
    let out = succeeded(&server.admin(Some(ADMIN_KEY), &["warm", inputs]));
    assert!(out.contains("5 computed and stored"), "{out}");
    let out = succeeded(&server.admin(
        Some(ADMIN_KEY),
        &[
            "invalidate",
            "--model",
            "all-MiniLM-L6-v2",
            "--version",
            "0",
        ],
    ));
    assert!(out.contains("version \"0\""), "{out}");

    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}

#[test]
fn admin_commands_say_when_no_server_answers() {
    // A port that was free a moment ago; nothing listens on it now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let file = trace("one input\n");
    for args in [
        vec!["stats"],
        vec!["invalidate", "--all"],
        vec!["warm", file.path().to_str().unwrap()],
    ] {
        let out = infercache()
            .args(&args)
            .args(["--url", &url])
            .output()
            .unwrap();
        let stderr = failed(&out);
        assert!(
            stderr.contains(&format!("cannot reach the infercache server at {url}")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn invalidate_needs_exactly_one_scope() {
    for args in [
        vec!["invalidate"],
        vec!["invalidate", "--all", "--namespace", "a"],
        vec!["invalidate", "--version", "3"],
    ] {
        let out = infercache().args(&args).output().unwrap();
        let stderr = failed(&out);
        assert!(stderr.contains("Usage"), "{args:?}: {stderr}");
    }
}

#[path = "cli/bulk.rs"]
mod bulk;
#[path = "cli/settings.rs"]
mod settings;
#[path = "cli/weights.rs"]
mod weights;
#[path = "cli/workers.rs"]
mod workers;
