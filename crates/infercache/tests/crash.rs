//! `infercache serve` with memory and disk tiers in front of a real upstream, SIGKILLed at
//! random instants under concurrent write load, restarted each time: it must start within
//! a bounded time, and every answer it serves with `X-Cache: HIT` must equal what a fresh
//! computation of that input gives.
//!
//! The upstream is a plain JSON model server in this process (so it outlives the kills),
//! and it is deterministic, so "a fresh computation" is known:
//!
//! - [`a_killed_server_serves_only_fresh_answers`]: the answer is a pure function of the
//!   input. Workers send new inputs, repeats and `Cache-Control: no-cache` overwrites (which
//!   recompute the same answer), the same inputs from several workers at once. Every answer
//!   must equal the function's value.
//! - [`a_killed_server_never_serves_an_overwritten_answer`]: the answer to an input changes
//!   over time: its `n`-th computation answers generation `n / 2` (so consecutive
//!   computations often agree). Here a fresh computation is the newest one, and the
//!   question is which stored answer may stand for it. Every input has one writer at a time
//!   (its worker), so its answers are ordered. A HIT must carry the generation of the
//!   newest *answered* write of that input, or a newer one that the upstream computed for a
//!   write still in flight when the server was killed (it may or may not have been stored
//!   before the kill: both are computations the upstream made); an older generation is
//!   served only when it equals the newest (the same generation). Anything older is an
//!   overwritten answer brought back, a wrong answer.
//!
//! The seed is printed; set `INFERCACHE_CRASH_SEED` to replay a run.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// Kills (and restarts) per test.
const KILLS: usize = 20;
/// Concurrent client workers.
const WORKERS: usize = 4;
/// The longest a restarted server may take to listen and be ready.
const START_BOUND: Duration = Duration::from_secs(15);

/// The deterministic answer to `input`.
fn pure(input: &str) -> String {
    infercache_core::Digest::of(input.as_bytes()).to_hex()
}

/// How the upstream answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Upstream {
    /// Always [`pure`].
    Pure,
    /// The `n`-th computation of an input (from 0) answers generation `n / 2`.
    Changing,
}

/// The upstream model server: its base URL and, per input, how often it computed it.
async fn upstream(kind: Upstream) -> (String, Arc<Mutex<HashMap<String, u64>>>) {
    let computed = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let log = Arc::clone(&computed);
    let app = Router::new().route(
        "/predict",
        post(move |body: axum::Json<Value>| {
            let log = Arc::clone(&log);
            async move {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                let mut log = log.lock().unwrap();
                let outputs: Vec<Value> = inputs
                    .iter()
                    .map(|i| {
                        let input = i.as_str().expect("the inputs are strings").to_owned();
                        let n = log.entry(input.clone()).or_default();
                        let generation = *n / 2;
                        *n += 1;
                        match kind {
                            Upstream::Pure => json!({ "v": pure(&input) }),
                            Upstream::Changing => json!({ "v": input, "g": generation }),
                        }
                    })
                    .collect();
                axum::Json(json!({ "outputs": outputs }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/predict", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, computed)
}

/// A running `infercache serve`; SIGKILLed on drop.
struct Served {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `infercache serve` on `dir` (its config and disk tier) and waits, at most
    /// [`START_BOUND`], until it is ready.
    async fn start(dir: &Path) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_infercache"))
            .args(["serve", "--bind", "127.0.0.1:0", "--memory", "16MiB"])
            .arg("--config")
            .arg(dir.join("infercache.toml"))
            .arg("--disk-dir")
            .arg(dir.join("disk"))
            .args(["--disk-size", "32MiB"])
            .env_remove("INFERCACHE_CONFIG")
            .env("INFERCACHE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = std::sync::mpsc::channel();
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
        let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(START_BOUND))
            .await
            .unwrap();
        let mut served = Self {
            child,
            url: String::new(),
            log,
        };
        served.url = url.unwrap_or_else(|_| {
            panic!(
                "the server did not listen within {START_BOUND:?}:\n{}",
                served.log()
            )
        });
        let client = infercache_core::tls::client();
        loop {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("the server exited with {status}:\n{}", served.log());
            }
            let ready = client.get(format!("{}/readyz", served.url)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                started.elapsed() < START_BOUND,
                "the server was not ready within {START_BOUND:?}:\n{}",
                served.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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

/// One answer: `X-Cache` and the output row.
struct Answer {
    cache: String,
    row: Value,
}

/// `POST /v1/models/m/predict` with one input; `None` when the server is gone (killed).
async fn predict(
    client: &reqwest::Client,
    url: &str,
    input: &str,
    no_cache: bool,
) -> Option<Answer> {
    let mut request = client
        .post(format!("{url}/v1/models/m/predict"))
        .json(&json!({ "inputs": [input] }));
    if no_cache {
        request = request.header("cache-control", "no-cache");
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.ok()?;
    assert_eq!(status, 200, "{input}: {body}");
    Some(Answer {
        cache,
        row: body["outputs"][0].clone(),
    })
}

/// What the test knows of the inputs written so far.
#[derive(Default)]
struct Known {
    /// Inputs answered at least once, in order.
    inputs: Vec<String>,
    /// Per input, the generation of its newest answered write ([`Upstream::Changing`]).
    answered: HashMap<String, u64>,
    /// Answers to the load so far.
    answers: usize,
}

/// Checks one answer to `input`: for [`Upstream::Pure`] every answer is the function's
/// value; for [`Upstream::Changing`] see the module docs. Returns its generation.
fn check(
    kind: Upstream,
    input: &str,
    answer: &Answer,
    known: &Known,
    computed: &Mutex<HashMap<String, u64>>,
    seed: u64,
) -> u64 {
    match kind {
        Upstream::Pure => {
            assert_eq!(
                answer.row,
                json!({ "v": pure(input) }),
                "seed {seed}: {input} answered {} with a value no computation gives",
                answer.cache
            );
            0
        }
        Upstream::Changing => {
            assert_eq!(answer.row["v"], input, "seed {seed}: a foreign row");
            let generation = answer.row["g"].as_u64().expect("a generation");
            let made = computed.lock().unwrap().get(input).copied().unwrap_or(0);
            assert!(
                generation * 2 < made,
                "seed {seed}: {input} answered generation {generation}, which the upstream \
                 never computed ({made} computations)"
            );
            if answer.cache == "HIT" {
                let newest = known.answered.get(input).copied().unwrap_or(0);
                assert!(
                    generation >= newest,
                    "seed {seed}: {input} answered HIT with generation {generation}, older than \
                     its newest answered write (generation {newest}): an overwritten answer"
                );
            }
            generation
        }
    }
}

/// One worker's load until the server is gone: new inputs, repeats, `no-cache`
/// overwrites. With [`Upstream::Changing`], worker `w` writes only inputs it owns.
#[expect(
    clippy::too_many_arguments,
    reason = "the test's whole state, spelled out"
)]
async fn load(
    kind: Upstream,
    w: usize,
    url: String,
    known: Arc<Mutex<Known>>,
    computed: Arc<Mutex<HashMap<String, u64>>>,
    mut rng: StdRng,
    round: usize,
    seed: u64,
) -> usize {
    let client = infercache_core::tls::client();
    let mut sent = 0;
    loop {
        let n = sent;
        let (input, no_cache) = {
            let known = known.lock().unwrap();
            let owned: Vec<&String> = known
                .inputs
                .iter()
                .filter(|i| kind == Upstream::Pure || i.starts_with(&format!("w{w}-")))
                .collect();
            match rng.random_range(0..10) {
                0..3 => (format!("w{w}-r{round}-{n}"), false),
                _ if owned.is_empty() => (format!("w{w}-r{round}-{n}"), false),
                3..7 => (owned[rng.random_range(0..owned.len())].clone(), false),
                _ => (owned[rng.random_range(0..owned.len())].clone(), true),
            }
        };
        let Some(answer) = predict(&client, &url, &input, no_cache).await else {
            return sent;
        };
        sent += 1;
        let mut known = known.lock().unwrap();
        let generation = check(kind, &input, &answer, &known, &computed, seed);
        known.answers += 1;
        if !known.answered.contains_key(&input) {
            known.inputs.push(input.clone());
        }
        let newest = known.answered.entry(input).or_default();
        *newest = (*newest).max(generation);
    }
}

/// Reads every known input once (no writes), checking each answer.
async fn verify_all(
    kind: Upstream,
    url: &str,
    known: &Mutex<Known>,
    computed: &Mutex<HashMap<String, u64>>,
    seed: u64,
) -> usize {
    let client = infercache_core::tls::client();
    let inputs = known.lock().unwrap().inputs.clone();
    let mut hits = 0;
    for input in &inputs {
        let answer = predict(&client, url, input, false)
            .await
            .expect("the server answers");
        let mut known = known.lock().unwrap();
        let generation = check(kind, input, &answer, &known, computed, seed);
        hits += usize::from(answer.cache == "HIT");
        let newest = known.answered.entry(input.clone()).or_default();
        *newest = (*newest).max(generation);
    }
    hits
}

async fn crash_test(kind: Upstream) {
    let seed = std::env::var("INFERCACHE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{kind:?}: seed {seed} (INFERCACHE_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (upstream_url, computed) = upstream(kind).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("infercache.toml"),
        format!(
            "[[models]]\nname = \"m\"\nbackend = \"http-json\"\nurl = \"{upstream_url}\"\n\
             timeout = \"5s\"\n"
        ),
    )
    .unwrap();
    let known = Arc::new(Mutex::new(Known::default()));
    let mut hits_after_restart = 0;
    for round in 0..KILLS {
        let mut server = Served::start(dir.path()).await;
        hits_after_restart += verify_all(kind, &server.url, &known, &computed, seed).await;
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(load(
                    kind,
                    w,
                    server.url.clone(),
                    Arc::clone(&known),
                    Arc::clone(&computed),
                    StdRng::seed_from_u64(rng.random()),
                    round,
                    seed,
                ))
            })
            .collect();
        // The kill comes at a random instant once the load is under way (on a busy machine
        // the first answers can take longer than the shortest wait).
        let under_way = known.lock().unwrap().answers;
        let deadline = Instant::now() + Duration::from_secs(10);
        while known.lock().unwrap().answers == under_way && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..350))).await;
        server.kill();
        let mut sent = 0;
        for worker in workers {
            sent += worker.await.unwrap();
        }
        assert!(
            sent > 0,
            "seed {seed}: round {round} sent nothing:\n{}",
            server.log()
        );
    }
    let server = Served::start(dir.path()).await;
    hits_after_restart += verify_all(kind, &server.url, &known, &computed, seed).await;
    let known = known.lock().unwrap();
    println!(
        "{kind:?}: {} inputs, {hits_after_restart} HITs read back after restarts",
        known.inputs.len()
    );
    // Most of what was answered before a kill is read back from disk after it.
    assert!(
        hits_after_restart > known.inputs.len(),
        "seed {seed}: the disk tier kept almost nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_serves_only_fresh_answers() {
    crash_test(Upstream::Pure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_never_serves_an_overwritten_answer() {
    crash_test(Upstream::Changing).await;
}
