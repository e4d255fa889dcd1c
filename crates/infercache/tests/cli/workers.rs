//! `infercache bulk --workers`: one job shared by several processes of the real binary
//! through a real `redis-server`, one of them killed with SIGKILL midway; and a Redis
//! that cannot be reached.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infercache_redis::testing::RedisServer;
use infercache_upstream::testing::{self, TestUpstream};
use serde_json::Value;

use super::bulk::{clean_output, half_repeated, read, summary};
use super::infercache;

/// One machine of a distributed job: its own directory (configuration, input copy, jobs,
/// output), the shared upstream and Redis.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(upstream: &str, input: &str) -> Self {
        Self::with_config(upstream, input, "")
    }

    /// A machine whose configuration also holds `extra` (top-level settings).
    fn with_config(upstream: &str, input: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Each machine its own disk tier; the Redis tier is the one they share.
        let config = format!(
            "{extra}disk_dir = \"{}\"\ndisk_size = \"64MiB\"\n\n[[models]]\nname = \"scorer\"\nbackend = \"http-json\"\nurl = \"{upstream}/predict\"\n",
            dir.path().join("disk").display()
        );
        std::fs::write(dir.path().join("infercache.toml"), config).unwrap();
        std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `bulk --workers REDIS` (`--workers` alone for an empty `redis`).
    fn command(&self, redis: &str) -> Command {
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
                "1",
            ])
            .arg("--workers")
            .args(Some(redis).filter(|r| !r.is_empty()))
            .args(["--claim-timeout", "1s"])
            // Generous for two busy cores: a timed-out read would be a recomputed row.
            .args(["--redis-timeout", "2s"])
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
}

#[track_caller]
fn succeeded(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary(out)
}

#[test]
fn three_workers_one_killed_midway_compute_each_input_once_and_write_the_single_process_output() {
    const LINES: usize = 8_000;
    const UNIQUE: usize = LINES / 2;
    // The killed worker's call in flight: --concurrency 1, --batch-size 8.
    const IN_FLIGHT: usize = 8;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start();
    let (url, up): (String, Arc<TestUpstream>) = rt.block_on(testing::start());
    up.delay(Duration::from_millis(10));
    let input = half_repeated(LINES);
    let machines: Vec<Machine> = (0..3).map(|_| Machine::new(&url, &input)).collect();
    let mut workers: Vec<Child> = machines
        .iter()
        .map(|m| m.command(&redis.url()).spawn().unwrap())
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while up.rows() < UNIQUE / 4 {
        assert!(
            Instant::now() < deadline,
            "the workers computed too little within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut killed = workers.remove(0);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let at_kill = up.rows();
    assert!(
        at_kill < UNIQUE,
        "the job was done before the kill: make it longer"
    );

    let summaries: Vec<Value> = workers
        .into_iter()
        .map(|w| succeeded(&w.wait_with_output().unwrap()))
        .collect();
    let computed = up.rows();
    assert!(
        (UNIQUE..=UNIQUE + IN_FLIGHT).contains(&computed),
        "{computed} rows computed for {UNIQUE} unique inputs (killed with one call in flight)"
    );
    let clean = clean_output(&rt, &input);
    for (machine, s) in machines[1..].iter().zip(&summaries) {
        assert_eq!(
            (s["rows"].as_u64(), s["unique"].as_u64()),
            (Some(LINES as u64), Some(UNIQUE as u64)),
            "{s}"
        );
        // The output is written from the shared cache: nothing computed for it.
        assert_eq!(s["computed"], 0, "{s}");
        assert!(
            read(&machine.path("out.jsonl")) == clean,
            "a worker's output differs from a single process's"
        );
    }
    let windows: u64 = summaries
        .iter()
        .map(|s| s["worker"]["windows"].as_u64().unwrap())
        .sum();
    let claimed: u64 = summaries
        .iter()
        .map(|s| s["worker"]["claimed"].as_u64().unwrap())
        .sum();
    // The killed worker held two windows at most.
    assert!(windows > 0 && claimed <= 2, "{summaries:?}");
    let enqueued = summaries
        .iter()
        .filter(|s| s["worker"]["enqueued"] == true)
        .count();
    assert!(enqueued <= 1, "two workers enqueued the job: {summaries:?}");

    // A final collecting run on a fourth machine: takes no window, computes nothing.
    let collector = Machine::new(&url, &input);
    let s = succeeded(
        &collector
            .command(&redis.url())
            .arg("--collect")
            .output()
            .unwrap(),
    );
    assert_eq!(up.rows(), computed, "the collecting run computed rows: {s}");
    assert_eq!(s["worker"]["windows"], 0, "{s}");
    assert!(read(&collector.path("out.jsonl")) == clean);
}

#[test]
fn workers_without_a_url_share_the_configured_redis_and_a_finished_job_runs_again_from_hits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start();
    let (url, up) = rt.block_on(testing::start());
    let input = half_repeated(400);
    let config = format!("redis = \"{}\"\n", redis.url());
    let machine = Machine::with_config(&url, &input, &config);
    let s = succeeded(&machine.command("").output().unwrap());
    assert_eq!(up.rows(), 200, "{s}");
    assert_eq!(s["worker"]["enqueued"], true, "{s}");
    assert_eq!(s["worker"]["computed"], 200, "{s}");
    let clean = clean_output(&rt, &input);
    assert!(read(&machine.path("out.jsonl")) == clean);

    // Another machine on the same Redis, the job already drained: nothing enqueued,
    // nothing computed, the same output.
    let other = Machine::with_config(&url, &input, &config);
    let s = succeeded(&other.command("").output().unwrap());
    assert_eq!(up.rows(), 200, "{s}");
    assert_eq!(
        (
            s["worker"]["enqueued"].as_bool(),
            s["worker"]["windows"].as_u64()
        ),
        (Some(false), Some(0)),
        "{s}"
    );
    assert!(read(&other.path("out.jsonl")) == clean);
}

#[test]
fn an_unreachable_redis_is_a_clear_error_and_nothing_is_written() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut redis = RedisServer::start();
    let gone = redis.url();
    redis.kill9();
    let (url, up) = rt.block_on(testing::start());
    let machine = Machine::new(&url, &half_repeated(100));
    let out = machine.command(&gone).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Redis at redis://127.0.0.1:"),
        "{stderr}"
    );
    assert!(!machine.path("out.jsonl").exists());
    assert!(!machine.path("jobs").exists());
    assert_eq!(up.rows(), 0);
}

#[test]
fn an_input_that_failed_at_a_worker_is_reported_by_every_writer_and_never_computed_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start();
    let (url, up) = rt.block_on(testing::start());
    up.poison("\"id\":77}");
    // The last record repeats the failing input, in a later window of the same worker.
    let input: String = (0..200)
        .map(|i| format!("{{\"key\": \"r{i}\", \"input\": {{\"id\": {i}}}}}\n"))
        .chain(["{\"key\": \"again\", \"input\": {\"id\": 77}}\n".to_owned()])
        .collect();
    let worker = Machine::new(&url, &input);
    let s = succeeded(&worker.command(&redis.url()).output().unwrap());
    assert_eq!(
        (
            s["errors"].as_u64(),
            s["worker"]["errors"].as_u64(),
            s["computed"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "{s}"
    );
    // A collecting run on another machine writes the same output and errors.
    let collector = Machine::new(&url, &input);
    let c = succeeded(
        &collector
            .command(&redis.url())
            .arg("--collect")
            .output()
            .unwrap(),
    );
    assert_eq!(
        (c["errors"].as_u64(), c["computed"].as_u64()),
        (Some(2), Some(0)),
        "{c}"
    );
    assert_eq!(up.rows(), 199);
    // The failing input was tried on its own once, by the worker whose window held it:
    // neither its later window nor a writing pass called the model for it again.
    let refused = up.refused();
    let alone = refused.iter().filter(|rows| rows.len() == 1).count();
    assert_eq!(alone, 1, "{refused:?}");
    for machine in [&worker, &collector] {
        let errors = String::from_utf8(read(&machine.path("out.jsonl.errors.jsonl"))).unwrap();
        let lines: Vec<Value> = errors
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{errors}");
        assert_eq!(lines[0]["key"], "r77", "{errors}");
        assert_eq!(lines[1]["key"], "again", "{errors}");
        assert!(
            lines[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("500")),
            "{errors}"
        );
        assert_eq!(
            String::from_utf8(read(&machine.path("out.jsonl")))
                .unwrap()
                .lines()
                .count(),
            199
        );
    }
}
