//! `infercache bulk`: a whole file of inputs through a model, each unique input computed
//! once, output in input order, resumable ([`infercache_jobs`]). In this process on the
//! configuration `serve` takes (tiers, `[[models]]`, Redis): the job leaves the cache
//! warm for a server on the same tiers.
//!
//! With `--url`, the job runs through a running server instead ([`remote`]).
//!
//! SIGINT and SIGTERM stop it cleanly: the batches in flight finish and are journaled, and
//! the same command resumes. At the end one JSON summary line goes to stderr.

pub(crate) mod remote;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infercache_backend::{BUILTIN_MODEL, BackendKind};
use infercache_infer::Infer;
use infercache_jobs::{
    CallCounter, Counts, Format, InferModel, JobOptions, Mode, Progress, Summary,
};
use infercache_server::ServeArgs;
use tokio::signal::unix::{SignalKind, signal};

/// The tenant of a job when none is given: the server's tenant for requests without
/// API keys, so a job warms what such a server answers.
const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Args)]
pub struct BulkCommand {
    /// The model, by name or alias [default: the built-in model].
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// The input file: CSV (`key,input` or a --column), JSON lines, or OpenAI batch lines.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The output file, in the input's format and order.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    serve: ServeArgs,
}

/// The settings `bulk` and `warm` share.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// csv, jsonl, openai-batch or lines [default: csv for a `.csv` input, else jsonl].
    #[arg(long, value_name = "FORMAT")]
    format: Option<Format>,
    /// The CSV column holding the input [default: `input`, or the only column besides `key`].
    #[arg(long, value_name = "C")]
    column: Option<String>,
    /// New inputs per model call.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Model calls in flight (the cache work around them runs beside them).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Resume the job; refused, with the difference, when the last job for this output
    /// had another input, model, version or parameter.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Forget the job's journal and start it over (cached rows are still hits).
    #[arg(long)]
    restart: bool,
    /// Where failed inputs go, one JSON line each with its line, key and reason
    /// [default: OUTPUT.errors.jsonl when there are any].
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// The namespace (tenant) whose cache entries the job uses.
    #[arg(long, value_name = "NS", default_value = DEFAULT_TENANT)]
    namespace: String,
    /// Parameters sent with every row, a JSON object (http-json models); they are part
    /// of the job and of every key.
    #[arg(long, value_name = "JSON")]
    parameters: Option<String>,
    /// Where jobs keep their journals [default: `jobs/` in the cache directory].
    #[arg(long, value_name = "DIR", env = "INFERCACHE_JOBS_DIR")]
    jobs_dir: Option<PathBuf>,
    /// Run through the infercache server at this URL rather than in this process (the
    /// server's cache and models; the tier flags are then unused).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Share the job with other `bulk` processes (on any machines) through this Redis: the
    /// job's batches go into a Redis Stream read by a consumer group, each process
    /// computes batches into the shared Redis tier, and each writes the output once the
    /// batches are done. Without a URL: the configuration's `redis`.
    #[arg(
        long,
        value_name = "REDIS_URL",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with = "url"
    )]
    workers: Option<String>,
    /// With --workers: how long a batch may stay unfinished at a worker that stopped
    /// answering before another worker takes it over.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = infercache_server::config::parse_duration, requires = "workers")]
    claim_timeout: std::time::Duration,
    /// With --workers: take no batches; wait until the workers have done every batch, then
    /// write the output (all hits).
    #[arg(long, requires = "workers")]
    collect: bool,
    /// API key for --url, sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "INFERCACHE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
}

pub fn run(cmd: &BulkCommand) -> anyhow::Result<()> {
    run_job(
        cmd.model.as_deref(),
        &cmd.input,
        Some(&cmd.output),
        &cmd.job,
        &cmd.serve,
    )
}

/// Runs one job in this process: `output` `None` only warms the cache.
pub fn run_job(
    model: Option<&str>,
    input: &std::path::Path,
    output: Option<&std::path::Path>,
    job: &JobArgs,
    serve: &ServeArgs,
) -> anyhow::Result<()> {
    let (config, distributed) = workers::configure(job.workers.as_deref(), serve)?;
    let distributed = distributed.map(|redis| workers::Settings {
        redis,
        claim_timeout: job.claim_timeout,
        collect: job.collect,
    });
    let parameters = job
        .parameters
        .as_deref()
        .map(infercache_jobs::format::parameters)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--parameters")?;
    let options = JobOptions {
        input: input.to_owned(),
        output: output.map(ToOwned::to_owned),
        errors: job.errors.clone(),
        format: job.format.unwrap_or_else(|| Format::guess(input)),
        column: job.column.clone(),
        tenant: job.namespace.clone(),
        parameters,
        batch_size: job.batch_size as usize,
        concurrency: job.concurrency as usize,
        mode: match (job.resume, job.restart) {
            (true, _) => Mode::Resume,
            (_, true) => Mode::Restart,
            _ => Mode::Auto,
        },
        jobs_dir: job
            .jobs_dir
            .clone()
            .unwrap_or_else(|| infercache_backend::default_cache_dir().join("jobs")),
        max_input_chars: config.limits.max_input_chars,
    };
    let name = model.unwrap_or(BUILTIN_MODEL).to_owned();
    let summary = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let stop = Arc::new(AtomicBool::new(false));
            listen_for_stop(Arc::clone(&stop))?;
            if let Some(url) = &job.url {
                let client = crate::client::Client::connect(url, job.api_key.clone())?;
                let model =
                    remote::ServerModel::connect(client, &name, options.parameters.clone()).await?;
                let bar = Bar::new();
                let summary = infercache_jobs::run(&model, &options, &stop, &bar).await?;
                bar.finish();
                return anyhow::Ok(summary);
            }
            let opened = infercache_server::open(&config)
                .await
                .map_err(|e| crate::tier_in_use(e, "bulk"))?;
            if let Some(cache) = &opened.cache {
                wait_for_shared_tier(cache).await;
            }
            let counter = Arc::new(CallCounter::default());
            let infer = Infer::new(
                opened.cache.clone(),
                opened.models.clone(),
                config.limits.request_timeout,
                Arc::clone(&counter) as _,
            )
            // `--concurrency` model calls at once; the rows' keys, lookups and stores run
            // beside them rather than holding a call's slot.
            .with_call_limit(options.concurrency);
            let result = async {
                let model = opened.models.resolve(&name, &BackendKind::ALL)?;
                let model = InferModel::new(
                    infer,
                    model,
                    &options.tenant,
                    options.parameters.clone(),
                    counter,
                )?;
                let bar = Bar::new();
                let summary = match &distributed {
                    Some(settings) => workers::run(&model, &options, settings, &stop, &bar).await?,
                    None => infercache_jobs::run(&model, &options, &stop, &bar).await?,
                };
                bar.finish();
                anyhow::Ok(summary)
            }
            .await;
            opened.close().await;
            result
        })?;
    report(&summary)
}

/// Waits, up to [`SHARED_TIER_WAIT`], until a shared (Redis) tier knows its epochs: until
/// then the tier neither reads nor stores, so rows a job computed meanwhile would reach no
/// other machine. A tier still out of sync after that (Redis down) leaves the job to run on
/// the local tiers, as `serve` does; a cache without a shared tier returns at once. A poll
/// of the stats, not a backoff: the sync is one round trip away, and nothing is retried.
async fn wait_for_shared_tier(cache: &infercache_engine::Cache) {
    let deadline = tokio::time::Instant::now() + SHARED_TIER_WAIT;
    loop {
        match cache.stats().sync {
            None => return,
            Some(sync) if sync.in_sync => return,
            Some(_) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(
                    "the shared tier is not in sync after {SHARED_TIER_WAIT:?}: the job runs on the local tiers until it is"
                );
                return;
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// The longest a job waits for its shared tier before it starts.
const SHARED_TIER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Prints the summary line; a stopped job is an error saying how to resume.
pub(crate) fn report(summary: &Summary) -> anyhow::Result<()> {
    eprintln!(
        "{}",
        serde_json::to_string(summary).expect("a summary always serializes")
    );
    if summary.stopped {
        anyhow::bail!(
            "job {} stopped before the end; run the same command again to resume",
            summary.job
        );
    }
    Ok(())
}

/// Sets `stop` on the first SIGINT or SIGTERM; the job then drains its batches in
/// flight. A second signal ends the process at once.
pub(crate) fn listen_for_stop(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    tokio::spawn(async move {
        for n in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            if n > 0 {
                eprintln!("{name} again: stopping now");
                std::process::exit(130);
            }
            tracing::info!("{name} received: finishing the batches in flight");
            stop.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

/// The progress bar: total, done, hits, duplicates, computed, errors, rows/s and ETA,
/// starting at the journaled count on resume. Drawn only on a terminal.
pub(crate) struct Bar(ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} rows {msg} ({per_sec}, eta {eta})",
            )
            .expect("the progress template is valid: a bug if not")
            .progress_chars("=> "),
        );
        Self(bar)
    }

    /// Takes the bar off the terminal.
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }

    fn show(&self, c: &Counts) {
        self.0.set_position(c.rows);
        self.0.set_message(format!(
            "hits {} dup {} computed {} errors {}",
            c.hits, c.duplicates, c.computed, c.errors
        ));
    }
}

impl Progress for Bar {
    fn begin(&self, total: u64, done: &Counts) {
        self.0.set_length(total);
        self.show(done);
        // Rows/s and the ETA count from here, not from the journaled count.
        self.0.reset_eta();
    }

    fn advance(&self, done: &Counts) {
        self.show(done);
    }
}
