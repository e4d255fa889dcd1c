//! `infercache datasets build|stream|ls|show|explain|verify|audit|rm|prune|clear`: the
//! dataset cache ([`infercache_datasets`]).
//!
//! `embed` steps run on `serve`'s models and prediction cache: in this process (its
//! `--config`), or, with `--url`, through a running server ([`remote`]), as `bulk --url`
//! does. A server holds its disk tier's lock; opening the tier here while it runs is
//! refused with a message saying to pass `--url` ([`crate::tier_in_use`]).

mod remote;

use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infercache_datasets::{
    BatchWriter, BuildOptions, CacheKeys, CacheSettings, DatasetCache, DatasetError, DatasetInfo,
    DatasetSource, Embedders, OutputFormat, StepContext, StepSpec, StreamOptions, TextEmbedder,
};
use infercache_infer::Infer;
use infercache_jobs::CallCounter;
use infercache_model::{MODEL_NAME, ModelFiles};
use infercache_server::{RegistryEmbedders, ServeArgs, ServerConfig};

use crate::listing::{self, Field, Filter, Listed, Sort};

#[derive(Debug, Args)]
pub struct DatasetsCommand {
    #[command(flatten)]
    cache: CacheArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Args)]
struct CacheArgs {
    /// A TOML file whose `[cache]` table configures the cache (LlamaHome's keys; the
    /// `serve --config` file may be the same: its other keys are not read here).
    #[arg(long, env = "INFERCACHE_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The cache's directory (`[cache.disk] path`, `INFERCACHE_CACHE_DISK_PATH`)
    /// [default: `datasets/` in the cache directory].
    #[arg(
        long,
        env = "INFERCACHE_DATASETS_DIR",
        value_name = "DIR",
        global = true
    )]
    dir: Option<PathBuf>,
    /// Bytes of shards held in memory (`memory_size`, `INFERCACHE_CACHE_MEMORY_SIZE`):
    /// `4GB`, or whole megabytes [default: 1000].
    #[arg(long, value_name = "SIZE", global = true)]
    memory_size: Option<String>,
    /// Bytes of shards kept on disk (`disk_size`, `INFERCACHE_CACHE_DISK_SIZE`): `10GB`,
    /// `500MiB`, or whole megabytes [default: 10000].
    #[arg(long, value_name = "SIZE", global = true)]
    disk_size: Option<String>,
    /// Which shards go first at the cap (`policy`, `INFERCACHE_CACHE_POLICY`): `lru`,
    /// `fifo`, `size`, `time`, `time:SECONDS` [default: lru].
    #[arg(long, global = true)]
    policy: Option<String>,
    /// At the cap, evict down to this fraction of it (`eviction_threshold`,
    /// `INFERCACHE_CACHE_EVICTION_THRESHOLD`) [default: 0.9].
    #[arg(long, value_name = "FRACTION", global = true)]
    eviction_threshold: Option<String>,
    /// How often a long-lived process prunes the cache (`cleanup_interval`,
    /// `INFERCACHE_CACHE_CLEANUP_INTERVAL`): seconds or `1h` [default: 3600].
    #[arg(long, value_name = "DURATION", global = true)]
    cleanup_interval: Option<String>,
    /// The built-in model's files (its tokenizer for `tokenize`, the model for `embed`)
    /// [default: fetched once into the cache directory].
    #[arg(long, env = "INFERCACHE_MODEL_DIR", value_name = "DIR", global = true)]
    model_dir: Option<PathBuf>,
    /// The namespace (tenant) whose prediction cache entries `embed` steps use: a
    /// server's texts are hits for the tenant that sent them (with `--url`, the tenant
    /// of `--api-key`, as for any request).
    #[arg(long, value_name = "NS", default_value = infercache_server::auth::DEFAULT_TENANT, global = true)]
    tenant: String,
    /// Run `embed` steps through the infercache server at this URL (its models and
    /// prediction cache, its API key's namespace) rather than opening `serve`'s tiers in
    /// this process, which a running server holds.
    #[arg(long, value_name = "URL", global = true)]
    url: Option<String>,
    /// API key for --url, sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "INFERCACHE_API_KEY",
        value_name = "KEY",
        hide_env_values = true,
        global = true
    )]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Build (or find) a dataset: its sources through its steps, cached in shards.
    Build {
        /// Its name.
        name: String,
        /// Source files (JSON lines, CSV, Parquet, Arrow), read in order.
        #[arg(long = "source", required = true, value_name = "PATH")]
        sources: Vec<PathBuf>,
        /// A step: `tokenize[:max_len=N]`, `embed:MODEL[:column=C]` or
        /// `cmd:VERSION:COMMAND`; repeat for several, applied in order.
        #[arg(long = "step", value_name = "SPEC")]
        steps: Vec<String>,
        /// Rows per shard.
        #[arg(long, default_value_t = infercache_datasets::DEFAULT_SHARD_ROWS, value_parser = clap::value_parser!(u64).range(1..).map(|n| usize::try_from(n).unwrap_or(usize::MAX)))]
        shard_rows: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a dataset's rows to stdout.
    Stream {
        /// Its name or fingerprint.
        name: String,
        /// Rows per batch.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..).map(|n| usize::try_from(n).unwrap_or(usize::MAX)))]
        batch: usize,
        /// Batches decoded ahead.
        #[arg(long, default_value_t = 4)]
        prefetch: usize,
        /// Shuffle with this seed.
        #[arg(long, value_name = "SEED")]
        shuffle: Option<u64>,
        /// The epoch (another permutation per epoch).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// Continue from a token printed by an earlier stream.
        #[arg(long, value_name = "TOKEN")]
        resume: Option<String>,
        /// Stop after N batches (the resume token goes to stderr).
        #[arg(long, value_name = "N")]
        max_batches: Option<u64>,
        /// `jsonl` (one JSON object per row) or `arrow` (an Arrow IPC stream).
        #[arg(long, default_value_t = OutputFormat::Jsonl)]
        format: OutputFormat,
    },
    /// List datasets.
    Ls {
        /// Keep datasets matching FIELD OP VALUE (`size>1GB`, `rows>1000`, `built>7d`,
        /// `name=x`, `recomputable`).
        #[arg(long, value_name = "EXPR")]
        filter: Vec<Filter>,
        /// Order by `name`, `size`, `cached`, `rows` or `built`, `:asc` or `:desc`.
        #[arg(long, value_name = "FIELD[:asc|desc]")]
        sort: Option<Sort>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a dataset: its fingerprint chain, schema and shards.
    Show {
        /// Its name or fingerprint.
        name: String,
        /// Print JSON (with the shard files' paths).
        #[arg(long)]
        json: bool,
    },
    /// Say why two datasets' fingerprints differ; or, with --source/--step, why a build
    /// of those would not find NAME.
    Explain {
        /// A name or fingerprint.
        a: String,
        /// Another one.
        b: Option<String>,
        /// Sources of the build to compare with.
        #[arg(long = "source", value_name = "PATH")]
        sources: Vec<PathBuf>,
        /// Steps of the build to compare with.
        #[arg(long = "step", value_name = "SPEC")]
        steps: Vec<String>,
    },
    /// Check every cached shard (of NAME, or of all) against its digest.
    Verify {
        /// A name or fingerprint [default: all].
        name: Option<String>,
    },
    /// Recompute N random rows from the sources and compare them with the cache.
    Audit {
        /// The dataset's name.
        name: String,
        /// Rows to recompute.
        #[arg(long, default_value_t = 100)]
        sample: u64,
        /// Which rows.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Remove datasets by name.
    Rm {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring the shards under the cap, drop unnamed datasets and leftovers.
    Prune {
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every dataset.
    Clear {
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl Listed for DatasetInfo {
    fn fields() -> &'static [&'static str] {
        &[
            "name",
            "size",
            "cached",
            "rows",
            "shards",
            "built",
            "recomputable",
        ]
    }

    fn field(&self, field: &str) -> Option<Field> {
        Some(match field {
            "name" => Field::Text(self.name.clone()),
            "size" => Field::Number(self.bytes),
            "cached" => Field::Number(self.bytes_cached),
            "rows" => Field::Number(self.rows),
            "shards" => Field::Number(self.shards),
            "built" => Field::Time(self.built_ms),
            "recomputable" => Field::Flag(self.recomputable),
            _ => return None,
        })
    }
}

/// The models and the prediction cache of `serve`'s configuration (`--config`), for
/// `embed` steps: each text goes through the cache as `POST /v1/embeddings` would, so the
/// texts a server (with the same configuration) embedded before are hits. With `--url`,
/// the server's own.
#[derive(Debug)]
struct Registry {
    runtime: tokio::runtime::Runtime,
    opened: Option<infercache_server::Opened>,
    embedders: RegistryKind,
}

/// Where a [`Registry`]'s models run.
#[derive(Debug)]
enum RegistryKind {
    /// In this process.
    Local {
        embedders: RegistryEmbedders,
        calls: Arc<CallCounter>,
    },
    /// In the server at `--url`.
    Server(remote::ServerEmbedders),
}

impl Registry {
    fn open(args: &RegistryArgs) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        if let Some(url) = &args.url {
            let embedders = remote::ServerEmbedders::connect(
                url,
                args.api_key.clone(),
                runtime.handle().clone(),
            )?;
            return Ok(Self {
                runtime,
                opened: None,
                embedders: RegistryKind::Server(embedders),
            });
        }
        let config = ServerConfig::from_args(&ServeArgs {
            config: args.config.clone(),
            model_dir: args.model_dir.clone(),
            ..ServeArgs::default()
        })?;
        let opened = runtime
            .block_on(infercache_server::open(&config))
            .map_err(|e| crate::tier_in_use(e, "datasets build"))
            .context("opening serve's models and cache for an embed step")?;
        let calls = Arc::new(CallCounter::default());
        let infer = Infer::new(
            opened.cache.clone(),
            opened.models.clone(),
            config.limits.request_timeout,
            Arc::clone(&calls) as _,
        );
        let embedders = RegistryEmbedders::new(infer, &args.tenant, runtime.handle().clone());
        Ok(Self {
            runtime,
            opened: Some(opened),
            embedders: RegistryKind::Local { embedders, calls },
        })
    }

    /// What `embed` steps did: texts from the cache, texts computed, model calls.
    fn embedded(&self) -> serde_json::Value {
        match &self.embedders {
            RegistryKind::Local { embedders, calls } => {
                let counts = embedders.counts();
                serde_json::json!({
                    "cached": counts.cached(),
                    "computed": counts.computed(),
                    "model_calls": calls.calls(),
                })
            }
            RegistryKind::Server(embedders) => embedders.embedded(),
        }
    }

    fn embedders(&self) -> &dyn Embedders {
        match &self.embedders {
            RegistryKind::Local { embedders, .. } => embedders,
            RegistryKind::Server(embedders) => embedders,
        }
    }

    /// Flushes the prediction cache (its disk tier keeps what was computed).
    fn close(mut self) {
        if let Some(opened) = self.opened.take() {
            self.runtime.block_on(opened.close());
        }
    }
}

/// What opening the registry needs.
#[derive(Debug, Clone)]
struct RegistryArgs {
    config: Option<PathBuf>,
    model_dir: Option<PathBuf>,
    tenant: String,
    url: Option<String>,
    api_key: Option<String>,
}

/// The registry, opened when a step first needs a model (a stream opens it only to
/// recompute an evicted shard), as the cache's [`Embedders`].
#[derive(Debug)]
struct LazyRegistry {
    args: RegistryArgs,
    opened: std::sync::Mutex<Option<Registry>>,
}

impl LazyRegistry {
    fn new(args: &CacheArgs) -> Arc<Self> {
        Arc::new(Self {
            args: RegistryArgs {
                config: args.config.clone(),
                model_dir: args.model_dir.clone(),
                tenant: args.tenant.clone(),
                url: args.url.clone(),
                api_key: args.api_key.clone(),
            },
            opened: std::sync::Mutex::new(None),
        })
    }

    /// What `embed` steps did, if the registry was opened.
    fn embedded(&self) -> Option<serde_json::Value> {
        let opened = self.opened.lock().expect("registry lock poisoned");
        opened.as_ref().map(Registry::embedded)
    }

    /// Opens the registry now (a build's `embed` steps need it at once, for their
    /// versions), so that a failure to open it is reported as itself, not as a step's.
    fn open_now(&self) -> anyhow::Result<()> {
        let mut opened = self.opened.lock().expect("registry lock poisoned");
        if opened.is_none() {
            *opened = Some(Registry::open(&self.args)?);
        }
        Ok(())
    }

    /// Flushes the prediction cache if the registry was opened.
    fn close(&self) {
        let opened = self.opened.lock().expect("registry lock poisoned").take();
        if let Some(r) = opened {
            r.close();
        }
    }
}

impl Embedders for LazyRegistry {
    fn embedder(&self, model: &str) -> Result<Arc<dyn TextEmbedder>, DatasetError> {
        let mut opened = self.opened.lock().expect("registry lock poisoned");
        if opened.is_none() {
            let registry = Registry::open(&self.args).map_err(|e| DatasetError::InvalidStep {
                spec: format!("embed:{model}"),
                reason: format!("{e:#}"),
            })?;
            *opened = Some(registry);
        }
        let registry = opened.as_ref().expect("opened above");
        registry.embedders().embedder(model)
    }
}

fn needs_tokenizer(specs: &[String]) -> bool {
    specs.iter().any(|s| s.starts_with("tokenize"))
}

fn needs_registry(specs: &[String]) -> bool {
    specs.iter().any(|s| s.starts_with("embed"))
}

/// The step specifications a dataset was built with.
fn record_steps(cache: &DatasetCache, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(cache
        .get_dataset(name)?
        .and_then(|d| d.record)
        .map(|r| r.steps.into_iter().flatten().collect())
        .unwrap_or_default())
}

/// The model files when the steps need them: `--model-dir`, else the cache directory's
/// copy (fetched once when `fetch`).
fn model_files(args: &CacheArgs, fetch: bool) -> anyhow::Result<Option<ModelFiles>> {
    let cache_dir = infercache_model::default_cache_dir();
    match &args.model_dir {
        Some(dir) => {
            Ok(Some(ModelFiles::from_dir(dir).with_context(|| {
                format!("the model files in {}", dir.display())
            })?))
        }
        None if fetch => Ok(Some(
            ModelFiles::ensure(&cache_dir, std::io::stderr().is_terminal())
                .context("fetching the built-in model's files")?,
        )),
        None => Ok(ModelFiles::from_dir(cache_dir.join(MODEL_NAME)).ok()),
    }
}

/// The `[cache]` settings: flags over `INFERCACHE_CACHE_*` variables over the file's
/// `[cache]` table.
fn settings(args: &CacheArgs) -> anyhow::Result<CacheSettings> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            CacheKeys::from_toml(&text).with_context(|| path.display().to_string())?
        }
        None => CacheKeys::default(),
    };
    let flags = CacheKeys {
        memory_size: args.memory_size.clone(),
        disk_size: args.disk_size.clone(),
        policy: args.policy.clone(),
        eviction_threshold: args.eviction_threshold.clone(),
        cleanup_interval: args.cleanup_interval.clone(),
        disk_path: None,
        use_mmap: None,
    };
    Ok(flags
        .or(CacheKeys::from_env(|name| std::env::var(name).ok()))
        .or(file)
        .resolve()?)
}

fn open(
    args: &CacheArgs,
    model: Option<ModelFiles>,
    registry: Option<&Arc<LazyRegistry>>,
) -> anyhow::Result<DatasetCache> {
    let settings = settings(args)?;
    let dir = args
        .dir
        .clone()
        .or_else(|| settings.dir.clone())
        .unwrap_or_else(|| infercache_model::default_cache_dir().join("datasets"));
    let steps = StepContext {
        tokenizer: model.as_ref().map(|m| m.dir().join("tokenizer.json")),
        embedders: registry.map(|r| Arc::clone(r) as Arc<dyn Embedders>),
    };
    DatasetCache::open(
        &dir,
        settings.dataset_config(steps),
        infercache_core::SystemClock::shared(),
    )
    .with_context(|| format!("opening the dataset cache in {}", dir.display()))
}

/// The cache with what the steps `specs` need: the tokenizer, and serve's registry for
/// `embed` (then returned, to be closed when done).
fn open_with(
    args: &CacheArgs,
    specs: &[String],
    fetch: bool,
) -> anyhow::Result<(DatasetCache, Option<Arc<LazyRegistry>>)> {
    let model = if needs_tokenizer(specs) {
        model_files(args, fetch)?
    } else {
        None
    };
    let registry = needs_registry(specs).then(|| LazyRegistry::new(args));
    Ok((open(args, model, registry.as_ref())?, registry))
}

/// The cache with what the dataset `name`'s steps need to recompute a shard.
fn open_for(
    args: &CacheArgs,
    name: &str,
) -> anyhow::Result<(DatasetCache, Option<Arc<LazyRegistry>>)> {
    let specs = record_steps(&open(args, None, None)?, name)?;
    open_with(args, &specs, false)
}

pub fn run(cmd: &DatasetsCommand) -> anyhow::Result<()> {
    let args = &cmd.cache;
    match &cmd.action {
        Action::Build {
            name,
            sources,
            steps,
            shard_rows,
            json,
        } => {
            let (cache, registry) = open_with(args, steps, true)?;
            if let Some(r) = &registry {
                r.open_now()?;
            }
            let specs: Vec<StepSpec> = steps.iter().map(|s| StepSpec::Text(s.clone())).collect();
            let bar = spinner("building");
            let built = cache.cache_dataset(
                name,
                DatasetSource::Files(sources.clone()),
                &specs,
                BuildOptions {
                    shard_rows: *shard_rows,
                },
                &mut |rows| bar.set_position(rows),
            );
            bar.finish_and_clear();
            let embedded = registry.as_ref().and_then(|r| r.embedded());
            if let Some(r) = &registry {
                r.close();
            }
            let built = built?;
            if *json {
                let mut out = serde_json::to_value(&built)?;
                if let Some(e) = embedded {
                    out["embedded"] = e;
                }
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!("{name} {}", built.fingerprint);
                println!(
                    "{} rows in {} shards: {} computed, {} reused",
                    built.rows, built.shards, built.rows_computed, built.rows_reused
                );
                if let Some(e) = embedded {
                    println!(
                        "embedded: {} texts from the prediction cache, {} computed in {} model calls",
                        e["cached"], e["computed"], e["model_calls"]
                    );
                }
            }
            Ok(())
        }
        Action::Stream {
            name,
            batch,
            prefetch,
            shuffle,
            epoch,
            resume,
            max_batches,
            format,
        } => {
            let (cache, registry) = open_for(args, name)?;
            let options = StreamOptions {
                batch_size: *batch,
                prefetch: *prefetch,
                shuffle: *shuffle,
                epoch: *epoch,
                resume: resume.clone(),
            };
            let streamed = stream(&cache, name, options, *max_batches, *format);
            if let Some(r) = &registry {
                r.close();
            }
            streamed
        }
        Action::Ls { filter, sort, json } => {
            let cache = open(args, None, None)?;
            let now = listing::now_ms();
            let mut items = listing::filter(cache.list()?, filter, now)?;
            if let Some(s) = sort {
                s.apply(&mut items)?;
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&items)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<16} {:>10} {:>9} {:>12} {:>7}  notes",
                "name", "fingerprint", "rows", "shards", "size", "built"
            );
            for d in &items {
                println!(
                    "{:<24} {:<16} {:>10} {:>9} {:>12} {:>7}  {}",
                    d.name,
                    &d.fingerprint.hex()[..16],
                    d.rows,
                    format!("{}/{}", d.shards_cached, d.shards),
                    listing::bytes(d.bytes),
                    listing::age(now, d.built_ms),
                    if d.recomputable {
                        ""
                    } else {
                        "only copy (pinned)"
                    }
                );
            }
            let usage = cache.store().usage()?;
            if let Some(u) = usage.get(infercache_datasets::SHARD_CLASS) {
                println!(
                    "\nshards on disk: {} of {} ({})",
                    listing::bytes(u.used),
                    listing::bytes(u.cap),
                    u.policy
                );
            }
            Ok(())
        }
        Action::Show { name, json } => {
            let cache = open(args, None, None)?;
            let d = cache
                .details(name)?
                .with_context(|| format!("no dataset `{name}` in the cache"))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let m = &d.manifest;
            println!(
                "{} {}",
                d.name.as_deref().unwrap_or("(unnamed)"),
                m.fingerprint
            );
            println!(
                "{} rows, {} shards of {} rows",
                m.rows,
                m.shards.len(),
                m.shard_rows
            );
            println!("schema: {}", m.schema.join(", "));
            println!("chain:");
            for link in &m.chain {
                println!(
                    "  {} {} v{} {}",
                    &link.fingerprint.hex()[..16],
                    link.id,
                    link.version,
                    link.params
                );
            }
            Ok(())
        }
        Action::Explain {
            a,
            b,
            sources,
            steps,
        } => {
            let why = match (b, sources.is_empty()) {
                (Some(b), true) => open(args, None, None)?.explain(a, b)?,
                (None, false) => {
                    let (cache, registry) = open_with(args, steps, false)?;
                    let d = cache
                        .get_dataset(a)?
                        .with_context(|| format!("no dataset `{a}` in the cache"))?;
                    let specs: Vec<StepSpec> =
                        steps.iter().map(|s| StepSpec::Text(s.clone())).collect();
                    let plan = cache.plan(&DatasetSource::Files(sources.clone()), &specs);
                    if let Some(r) = &registry {
                        r.close();
                    }
                    infercache_datasets::fingerprint::explain(&d.manifest.chain, &plan?)
                }
                _ => {
                    bail!("give either a second dataset or --source (with --step) to compare with")
                }
            };
            if why.is_empty() {
                println!("the same fingerprint: nothing differs");
            }
            for line in why {
                println!("{line}");
            }
            Ok(())
        }
        Action::Verify { name } => {
            let cache = open(args, None, None)?;
            let r = cache.verify(name.as_deref())?;
            for (dataset, shard) in &r.corrupt {
                println!("corrupt: shard {shard} of {dataset} (removed; recomputed when read)");
            }
            println!(
                "{} shards ok, {} not cached, {} corrupt",
                r.ok,
                r.missing,
                r.corrupt.len()
            );
            if r.corrupt.is_empty() {
                Ok(())
            } else {
                bail!("{} corrupt shards", r.corrupt.len())
            }
        }
        Action::Audit { name, sample, seed } => {
            let (cache, registry) = open_for(args, name)?;
            let a = cache.audit(name, *sample, *seed);
            if let Some(r) = &registry {
                r.close();
            }
            let a = a?;
            println!(
                "{} rows recomputed, {} differ, {} not cached",
                a.checked,
                a.mismatched.len(),
                a.not_cached
            );
            if a.mismatched.is_empty() {
                Ok(())
            } else {
                bail!(
                    "rows {:?} differ from their recomputation: a source or step changed without a version bump",
                    a.mismatched
                )
            }
        }
        Action::Rm { names, dry_run } => {
            let cache = open(args, None, None)?;
            for name in names {
                if *dry_run {
                    let d = cache
                        .get_dataset(name)?
                        .with_context(|| format!("no dataset `{name}` in the cache"))?;
                    println!("would remove {name} ({} shards)", d.manifest.shards.len());
                } else {
                    let freed = cache.remove(name)?;
                    println!("removed {name} ({})", listing::bytes(freed));
                }
            }
            Ok(())
        }
        Action::Prune { dry_run } => {
            let cache = open(args, None, None)?;
            let r = cache.prune(*dry_run)?;
            let verb = if *dry_run { "would remove" } else { "removed" };
            for e in &r.evicted {
                println!("{verb} shard {} ({})", e.digest, listing::bytes(e.size));
            }
            for (path, size) in &r.temporaries {
                println!("{verb} {} ({})", path.display(), listing::bytes(*size));
            }
            Ok(())
        }
        Action::Clear { dry_run } => {
            let cache = open(args, None, None)?;
            if *dry_run {
                let items = cache.list()?;
                for d in &items {
                    println!(
                        "would remove {} ({})",
                        d.name,
                        listing::bytes(d.bytes_cached)
                    );
                }
                return Ok(());
            }
            let freed = cache.clear()?;
            println!("cleared ({} freed)", listing::bytes(freed));
            Ok(())
        }
    }
}

fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what}: {{pos}} rows ({{per_sec}})"))
            .expect("the progress template is valid: a bug if not"),
    )
}

fn stream(
    cache: &DatasetCache,
    name: &str,
    options: StreamOptions,
    max_batches: Option<u64>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut s = cache.stream_dataset(name, options)?;
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut writer = BatchWriter::new(format);
    let mut batches = 0u64;
    let result = (|| -> anyhow::Result<()> {
        while max_batches.is_none_or(|m| batches < m) {
            let Some(batch) = s.next() else { break };
            out.write_all(&writer.write(&batch?)?)?;
            batches += 1;
        }
        out.write_all(&writer.finish()?)?;
        Ok(())
    })();
    let flushed = out.flush();
    let broken_pipe = |e: &anyhow::Error| {
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                || c.to_string().contains("Broken pipe")
        })
    };
    match result {
        Err(e) if broken_pipe(&e) => return Ok(()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    if let Err(e) = flushed
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    let stats = s.stats();
    eprintln!(
        "{} rows of {}; shards read {}, recomputed {}, corrupt {}",
        s.position(),
        s.rows(),
        stats.shards_read,
        stats.shards_rebuilt,
        stats.corrupt
    );
    eprintln!("resume: {}", s.resume_token());
    Ok(())
}
