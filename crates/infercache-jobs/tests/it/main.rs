//! Bulk jobs in this process, on the per-row path, against real upstream servers on
//! loopback that count their calls and rows, with a real memory and disk cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use infercache_backend::{BackendKind, ModelConfig};
use infercache_core::SystemClock;
use infercache_engine::{Cache, CacheConfig, DiskConfig, MemoryConfig};
use infercache_infer::{Infer, Models};
use infercache_jobs::{
    CallCounter, Counts, Format, InferModel, JobError, JobOptions, Mode, Progress, Summary,
};
use infercache_upstream::testing::{self, TestUpstream};
use serde_json::{Value, json};

/// A cache with memory and disk tiers under `dir`, serving `models`.
fn infer(dir: &Path, models: &[ModelConfig], counter: &Arc<CallCounter>) -> Infer {
    let config = CacheConfig {
        memory: Some(MemoryConfig::bytes(256 << 20)),
        disk: Some(DiskConfig::new(dir.join("disk"), 1 << 30)),
        ..CacheConfig::default()
    };
    let cache = Cache::open(config, SystemClock::shared()).unwrap();
    let client = infercache_upstream::Pool::new(256 << 20).unwrap();
    let models = Models::configured(models, None, None, |m| {
        infercache_upstream::backend(m, &client).unwrap()
    })
    .unwrap();
    Infer::new(
        Some(cache),
        models,
        std::time::Duration::from_secs(30),
        Arc::clone(counter) as _,
    )
}

fn config(kind: BackendKind, url: &str, version: &str) -> ModelConfig {
    let path = match kind {
        BackendKind::HttpJson => format!("{url}/predict"),
        _ => url.to_owned(),
    };
    ModelConfig {
        version: version.to_owned(),
        retries: 0,
        ..ModelConfig::new("m", kind, Some(&path))
    }
}

/// A job's world: its upstream, cache directory and files.
struct World {
    dir: tempfile::TempDir,
    url: String,
    up: Arc<TestUpstream>,
}

impl World {
    async fn new() -> Self {
        let (url, up) = testing::start().await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            url,
            up,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self, input: &str, format: Format) -> JobOptions {
        JobOptions {
            input: self.path(input),
            output: Some(self.path("out")),
            errors: Some(self.path("errors.jsonl")),
            format,
            column: None,
            tenant: "default".into(),
            parameters: None,
            batch_size: 64,
            concurrency: 4,
            mode: Mode::Auto,
            jobs_dir: self.path("jobs"),
            max_input_chars: 100,
        }
    }

    /// The model `m` of `kind`, version `version`, on a cache opened afresh on this
    /// world's directory (as a new process would).
    fn model(&self, kind: BackendKind, version: &str) -> InferModel {
        self.model_with(kind, version, None)
    }

    fn model_with(
        &self,
        kind: BackendKind,
        version: &str,
        parameters: Option<serde_json::Map<String, Value>>,
    ) -> InferModel {
        let counter = Arc::new(CallCounter::default());
        let infer = infer(
            self.dir.path(),
            &[config(kind, &self.url, version)],
            &counter,
        );
        let model = Arc::clone(infer.models().get("m").unwrap());
        InferModel::new(infer, model, "default", parameters, counter).unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

async fn run(model: &InferModel, options: &JobOptions) -> Result<Summary, JobError> {
    infercache_jobs::run(
        model,
        options,
        &AtomicBool::new(false),
        &infercache_jobs::NoProgress,
    )
    .await
}

/// 100,000 JSON lines, every input twice (the second copies spread over the file).
fn half_repeated(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        // i and i + n/2 share an input, in a shuffled order.
        let id = (i * 7919) % (n / 2);
        text.push_str(&format!(
            "{{\"key\": \"r{i}\", \"input\": {{\"id\": {id}}}}}\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_lines_half_repeated_compute_each_unique_input_once_and_a_rerun_none() {
    let w = World::new().await;
    w.write("in.jsonl", &half_repeated(100_000));
    let mut options = w.options("in.jsonl", Format::Jsonl);
    options.batch_size = 256;
    let model = w.model(BackendKind::HttpJson, "1");
    let s = run(&model, &options).await.unwrap();
    assert_eq!(w.up.rows(), 50_000);
    assert_eq!(
        (s.rows, s.unique, s.computed, s.duplicates, s.hits, s.errors),
        (100_000, 50_000, 50_000, 50_000, 0, 0)
    );
    assert_eq!(s.model_calls, w.up.calls() as u64);
    let first = w.read("out");
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 100_000);
    // In input order, each with its own key and its input's output.
    let line: Value = serde_json::from_str(lines[70_001]).unwrap();
    let id = (70_001 * 7919) % 50_000;
    assert_eq!(line["key"], "r70001");
    assert_eq!(line["output"]["echo"], json!({ "id": id }));

    // A re-run, in a fresh process's cache on the same directory: nothing computed, the
    // same bytes.
    std::fs::remove_file(w.path("out")).unwrap();
    drop(model);
    let model = w.model(BackendKind::HttpJson, "1");
    let s = run(&model, &options).await.unwrap();
    assert_eq!(w.up.rows(), 50_000);
    assert_eq!(
        (s.computed, s.hits, s.duplicates, s.model_calls),
        (0, 50_000, 50_000, 0)
    );
    assert!(w.read("out") == first, "the re-run's output differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_exactly_its_concurrency_of_model_calls_busy() {
    let w = World::new().await;
    w.up.delay(std::time::Duration::from_millis(20));
    let text: String = (0..48)
        .map(|i| format!("{{\"input\": {{\"id\": {i}}}}}\n"))
        .collect();
    w.write("in.jsonl", &text);
    let mut options = w.options("in.jsonl", Format::Jsonl);
    (options.batch_size, options.concurrency) = (2, 3);
    // As `infercache bulk` builds it: the job's concurrency bounds the backend calls, and
    // the job keeps more rows calls in flight than that so the bound stays busy.
    let counter = Arc::new(CallCounter::default());
    let limited = infer(
        w.dir.path(),
        &[config(BackendKind::HttpJson, &w.url, "1")],
        &counter,
    )
    .with_call_limit(options.concurrency);
    let m = Arc::clone(limited.models().get("m").unwrap());
    let model = InferModel::new(limited, m, "default", None, counter).unwrap();
    let s = run(&model, &options).await.unwrap();
    assert_eq!((s.computed, s.model_calls), (48, 24));
    assert_eq!(
        w.up.peak_in_flight(),
        3,
        "never more calls than --concurrency, and all used"
    );
}

/// Stops the job after `after` windows.
struct StopAfter<'a> {
    stop: &'a AtomicBool,
    after: usize,
    seen: AtomicUsize,
}

impl Progress for StopAfter<'_> {
    fn begin(&self, _total: u64, _done: &Counts) {}

    fn advance(&self, _done: &Counts) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_resumes_where_it_stopped_and_computes_nothing_twice() {
    let w = World::new().await;
    w.write("in.jsonl", &half_repeated(4_000));
    let mut options = w.options("in.jsonl", Format::Jsonl);
    // Windows of 8 rounds of 4 calls of 10 first occurrences: 2,000 unique inputs make 7.
    options.batch_size = 10;

    let stop = AtomicBool::new(false);
    let progress = StopAfter {
        stop: &stop,
        after: 5,
        seen: AtomicUsize::new(0),
    };
    let model = w.model(BackendKind::HttpJson, "1");
    let s = infercache_jobs::run(&model, &options, &stop, &progress)
        .await
        .unwrap();
    assert!(s.stopped);
    assert!(!w.path("out").exists(), "a stopped job writes no output");
    let done = s.computed + s.duplicates;
    assert!(done > 0 && done < 4_000, "{s:?}");

    drop(model);
    let model = w.model(BackendKind::HttpJson, "1");
    let resumed = run(&model, &options).await.unwrap();
    assert!(!resumed.stopped);
    assert_eq!(resumed.resumed_at, done);
    assert_eq!(w.up.rows(), 2_000, "a row was computed twice");
    assert_eq!(resumed.computed, 2_000);
    assert_eq!(resumed.computed + resumed.hits, resumed.unique);

    // The output equals an uninterrupted run's (in another directory, another upstream).
    let clean = World::new().await;
    clean.write("in.jsonl", &half_repeated(4_000));
    let model = clean.model(BackendKind::HttpJson, "1");
    run(&model, &clean.options("in.jsonl", Format::Jsonl))
        .await
        .unwrap();
    assert!(w.read("out") == clean.read("out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_version_or_parameter_reuses_nothing_and_resume_refuses_with_the_difference() {
    let w = World::new().await;
    w.write("in.jsonl", "\"a\"\n\"b\"\n\"c\"\n");
    let options = w.options("in.jsonl", Format::Jsonl);
    run(&w.model(BackendKind::HttpJson, "1"), &options)
        .await
        .unwrap();
    assert_eq!(w.up.rows(), 3);

    let resume = JobOptions {
        mode: Mode::Resume,
        ..options.clone()
    };
    let e = run(&w.model(BackendKind::HttpJson, "2"), &resume)
        .await
        .unwrap_err();
    assert!(matches!(e, JobError::Changed { .. }), "{e}");
    assert!(e.to_string().contains(r#"version: "1" -> "2""#), "{e}");
    assert_eq!(w.up.rows(), 3);

    let s = run(&w.model(BackendKind::HttpJson, "2"), &options)
        .await
        .unwrap();
    assert_eq!((s.computed, s.hits), (3, 0));
    assert_eq!(w.up.rows(), 6);

    let params = infercache_jobs::format::parameters(r#"{"t": 0.5}"#).unwrap();
    let with_params = JobOptions {
        parameters: Some(params.clone()),
        mode: Mode::Resume,
        ..options.clone()
    };
    let model = w.model_with(BackendKind::HttpJson, "2", Some(params.clone()));
    let e = run(&model, &with_params).await.unwrap_err();
    assert!(
        e.to_string().contains(r#"parameters: null -> {"t":0.5}"#),
        "{e}"
    );
    let with_params = JobOptions {
        mode: Mode::Auto,
        ..with_params
    };
    let s = run(&model, &with_params).await.unwrap();
    assert_eq!(s.computed, 3);
    assert_eq!(w.up.rows(), 9);
    let out: Value = serde_json::from_str(w.read("out").lines().next().unwrap()).unwrap();
    assert_eq!(out["output"]["params"], json!({ "t": 0.5 }));

    // Unchanged: the same job, resumed (it is done, so a fresh pass of hits).
    let s = run(
        &model,
        &JobOptions {
            mode: Mode::Resume,
            ..with_params.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!((s.computed, s.hits), (0, 3));
    assert_eq!(w.up.rows(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lines_and_a_failing_input_go_to_the_errors_file_and_the_rest_completes() {
    let w = World::new().await;
    w.up.poison("boom");
    let long = "x".repeat(101);
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("\"in{i}\"\n"));
        match i {
            3 => text.push_str("{not json\n"),
            7 => text.push_str("{\"key\": \"e\", \"input\": \"\"}\n"),
            11 => text.push_str(&format!("\"{long}\"\n")),
            13 => text.push_str("{\"key\": \"k\"}\n"),
            17 => text.push_str("{\"key\": \"bad\", \"input\": \"boom\"}\n"),
            _ => {}
        }
    }
    w.write("in.jsonl", &text);
    let mut options = w.options("in.jsonl", Format::Jsonl);
    options.batch_size = 16;
    let s = run(&w.model(BackendKind::HttpJson, "1"), &options)
        .await
        .unwrap();
    assert_eq!((s.rows, s.errors, s.computed), (45, 5, 40), "{s:?}");
    assert_eq!(w.up.rows(), 40);
    assert_eq!(w.read("out").lines().count(), 40);
    let errors: Vec<Value> = w
        .read("errors.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<(u64, String)> = errors
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].1.contains("not a JSON value"), "{reasons:?}");
    assert!(reasons[1].1.contains("empty"), "{reasons:?}");
    assert!(reasons[2].1.contains("101 characters"), "{reasons:?}");
    assert!(reasons[3].1.contains("no `input`"), "{reasons:?}");
    assert_eq!(errors[4]["key"], "bad");
    assert!(reasons[4].1.contains("500"), "{reasons:?}");

    // A re-run retries only the failed input: everything else is a hit.
    let s = run(&w.model(BackendKind::HttpJson, "1"), &options)
        .await
        .unwrap();
    assert_eq!((s.hits, s.computed, s.errors), (40, 0, 5));
    w.up.poison.lock().unwrap().clear();
    let calls = w.up.calls();
    let s = run(&w.model(BackendKind::HttpJson, "1"), &options)
        .await
        .unwrap();
    assert_eq!((s.hits, s.computed, s.errors), (40, 1, 4));
    assert_eq!((w.up.rows(), w.up.calls()), (41, calls + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ersilia_csv_comes_back_as_csv_with_the_models_columns_and_null_rows_as_errors() {
    let w = World::new().await;
    w.write("in.csv", "key,input\nk1,CCO\nk2,!bad\nk3,CCO\nk4,N\n");
    let mut options = w.options("in.csv", Format::Csv);
    options.output = Some(w.path("out.csv"));
    let s = run(&w.model(BackendKind::Ersilia, "1"), &options)
        .await
        .unwrap();
    assert_eq!((s.computed, s.duplicates, s.errors), (2, 1, 1), "{s:?}");
    assert_eq!(
        w.read("out.csv"),
        "key,input,input,mw\nk1,CCO,CCO,3\nk3,CCO,CCO,3\nk4,N,N,1\n"
    );
    let error: Value = serde_json::from_str(w.read("errors.jsonl").trim()).unwrap();
    assert_eq!(error["key"], "k2");
    assert!(
        error["reason"].as_str().unwrap().contains("null"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_batch_lines_come_back_as_batch_output_lines() {
    let w = World::new().await;
    let line = |id: &str, input: Value| {
        json!({ "custom_id": id, "method": "POST", "url": "/v1/embeddings",
                "body": { "model": "m", "input": input } })
        .to_string()
    };
    let text = [
        line("a", json!("hi")),
        line("b", json!(["hi", "yo"])),
        r#"{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {}}"#
            .to_owned(),
    ]
    .join("\n");
    w.write("batch.jsonl", &text);
    let s = run(
        &w.model(BackendKind::OpenAi, "1"),
        &w.options("batch.jsonl", Format::OpenaiBatch),
    )
    .await
    .unwrap();
    assert_eq!((s.rows, s.computed, s.duplicates, s.errors), (4, 2, 1, 1));
    let out: Vec<Value> = w
        .read("out")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["custom_id"], "a");
    assert_eq!(out[0]["response"]["status_code"], 200);
    assert_eq!(out[0]["error"], Value::Null);
    assert_eq!(
        out[1]["response"]["body"]["data"][1]["embedding"],
        json!([2.0, 121.0, 0.5])
    );
    assert_eq!(out[1]["response"]["body"]["data"][1]["index"], 1);
}

/// The rows of `inputs` on the server's per-row path (`Infer::rows`, as a route calls
/// it), each as a client writes it: how many were hits.
async fn served_hits(infer: &Infer, inputs: infercache_backend::Inputs) -> usize {
    let rows = infer
        .rows(infercache_infer::RowRequest {
            model: Arc::clone(infer.models().get("m").unwrap()),
            tenant: Arc::from("default"),
            inputs: Arc::new(inputs),
            control: infercache_infer::CacheControl::default(),
        })
        .await
        .unwrap();
    rows.hits()
}

fn json_rows(texts: &[&str]) -> infercache_backend::Inputs {
    infercache_backend::Inputs::Json {
        rows: texts
            .iter()
            .map(|t| infercache_backend::JsonText::new(bytes::Bytes::from(t.to_string())).unwrap())
            .collect(),
        parameters: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_entries_are_hits_for_the_servers_per_row_path_and_the_servers_for_a_job() {
    let w = World::new().await;
    let counter = Arc::new(CallCounter::default());
    let infer = infer(
        w.dir.path(),
        &[config(BackendKind::HttpJson, &w.url, "1")],
        &counter,
    );
    let model = InferModel::new(
        infer.clone(),
        Arc::clone(infer.models().get("m").unwrap()),
        "default",
        None,
        Arc::clone(&counter),
    )
    .unwrap();

    // A job first: the server's requests for the same rows, spelled otherwise (key
    // order, spacing, escapes), are hits.
    w.write(
        "in.jsonl",
        "{\"input\": {\"b\": [1.50, 2], \"a\": \"x\"}}\n{\"input\": \"caf\\u00e9\"}\n{\"input\": 12345678901234567890123}\n",
    );
    let s = run(&model, &w.options("in.jsonl", Format::Jsonl))
        .await
        .unwrap();
    assert_eq!((s.computed, s.errors), (3, 0), "{s:?}");
    let rows = w.up.rows();
    let client = json_rows(&[
        r#"{ "a":"x","b":[1.50,2] }"#,
        "\"café\"",
        "12345678901234567890123",
    ]);
    assert_eq!(served_hits(&infer, client).await, 3);
    assert_eq!(w.up.rows(), rows, "the server computed a row the job had");

    // The server first: a job over the same rows computes none of them.
    let client = json_rows(&[r#"{"n": 1.0, "m": [true, null]}"#, r#""text""#]);
    assert_eq!(served_hits(&infer, client).await, 0);
    let rows = w.up.rows();
    w.write(
        "in2.jsonl",
        "{\"key\": \"a\", \"input\": {\"m\": [true, null], \"n\": 1.0}}\n\"text\"\n",
    );
    let mut options = w.options("in2.jsonl", Format::Jsonl);
    options.output = Some(w.path("out2"));
    let s = run(&model, &options).await.unwrap();
    assert_eq!((s.hits, s.computed, s.errors), (2, 0, 0), "{s:?}");
    assert_eq!(w.up.rows(), rows, "the job computed a row the server had");

    // A number spelled otherwise is another input (a Python upstream reads 1 and 1.0
    // apart): computed, not served from 1.0's entry.
    w.write(
        "in3.jsonl",
        "{\"input\": {\"m\": [true, null], \"n\": 1}}\n",
    );
    let mut options = w.options("in3.jsonl", Format::Jsonl);
    options.output = Some(w.path("out3"));
    let s = run(&model, &options).await.unwrap();
    assert_eq!((s.hits, s.computed), (0, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_jobs_entries_are_hits_for_the_servers_per_row_path() {
    let w = World::new().await;
    let counter = Arc::new(CallCounter::default());
    let infer = infer(
        w.dir.path(),
        &[config(BackendKind::OpenAi, &w.url, "1")],
        &counter,
    );
    let model = InferModel::new(
        infer.clone(),
        Arc::clone(infer.models().get("m").unwrap()),
        "default",
        None,
        Arc::clone(&counter),
    )
    .unwrap();
    w.write("in.jsonl", "\"hi\"\n{\"input\": \"caf\\u00e9\"}\n");
    let s = run(&model, &w.options("in.jsonl", Format::Jsonl))
        .await
        .unwrap();
    assert_eq!(s.computed, 2, "{s:?}");
    let texts = infercache_backend::Inputs::texts(vec!["café".into(), "hi".into()]);
    assert_eq!(served_hits(&infer, texts).await, 2);
}
