//! `infercache datasets build|stream|ls|show|explain|verify|audit|rm|prune|clear`: the
//! dataset cache ([`infercache_datasets`]).

use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use infercache_artifact::Policy;
use infercache_datasets::{
    BuildOptions, DatasetCache, DatasetConfig, DatasetError, DatasetInfo, DatasetSource, Embedders,
    StepContext, StepSpec, StreamOptions, TextEmbedder,
};
use infercache_model::{Embedder, MODEL_ID, MODEL_NAME, ModelFiles};

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
    /// The cache's directory [default: `datasets/` in the cache directory].
    #[arg(
        long,
        env = "INFERCACHE_DATASETS_DIR",
        value_name = "DIR",
        global = true
    )]
    dir: Option<PathBuf>,
    /// Bytes of shards kept on disk (`10GB`, `500MiB`).
    #[arg(
        long,
        env = "INFERCACHE_DATASETS_DISK_SIZE",
        value_name = "SIZE",
        default_value = "10000MiB",
        global = true
    )]
    disk_size: String,
    /// Which shards go first at the cap: `lru`, `fifo`, `size`, `time:SECONDS`.
    #[arg(
        long,
        env = "INFERCACHE_DATASETS_POLICY",
        default_value = "lru",
        global = true
    )]
    policy: String,
    /// The built-in model's files (its tokenizer for `tokenize`, the model for `embed`)
    /// [default: fetched once into the cache directory].
    #[arg(long, env = "INFERCACHE_MODEL_DIR", value_name = "DIR", global = true)]
    model_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// One JSON object per row.
    Jsonl,
    /// An Arrow IPC stream.
    Arrow,
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
        #[arg(long, value_enum, default_value_t = OutputFormat::Jsonl)]
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

/// The built-in model, for `embed:all-MiniLM-L6-v2` (loaded on first use).
#[derive(Debug)]
struct BuiltinModels {
    files: ModelFiles,
    loaded: Mutex<Option<Arc<BuiltinEmbedder>>>,
}

#[derive(Debug)]
struct BuiltinEmbedder(Embedder);

impl TextEmbedder for BuiltinEmbedder {
    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn version(&self) -> String {
        format!("{MODEL_ID}+sha256:{}", infercache_model::WEIGHTS_SHA256)
    }

    fn dims(&self) -> usize {
        self.0.dims()
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.embed(texts)?)
    }
}

impl Embedders for BuiltinModels {
    fn embedder(&self, model: &str) -> Result<Arc<dyn TextEmbedder>, DatasetError> {
        if model != MODEL_NAME && model != MODEL_ID {
            return Err(DatasetError::InvalidStep {
                spec: format!("embed:{model}"),
                reason: format!("unknown model `{model}`; the command embeds with `{MODEL_NAME}`"),
            });
        }
        let mut loaded = self.loaded.lock().expect("model lock poisoned");
        if let Some(e) = &*loaded {
            return Ok(e.clone());
        }
        let embedder = Embedder::load(&self.files).map_err(|e| DatasetError::InvalidStep {
            spec: format!("embed:{model}"),
            reason: e.to_string(),
        })?;
        let e = Arc::new(BuiltinEmbedder(embedder));
        *loaded = Some(e.clone());
        Ok(e)
    }
}

fn needs_model(specs: &[String]) -> bool {
    specs
        .iter()
        .any(|s| s.starts_with("tokenize") || s.starts_with("embed"))
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

fn open(args: &CacheArgs, model: Option<ModelFiles>) -> anyhow::Result<DatasetCache> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| infercache_model::default_cache_dir().join("datasets"));
    let disk_size = listing::parse_size(&args.disk_size).context("--disk-size")?;
    let policy: Policy = args.policy.parse().context("--policy")?;
    let steps = StepContext {
        tokenizer: model.as_ref().map(|m| m.dir().join("tokenizer.json")),
        embedders: model.map(|files| {
            Arc::new(BuiltinModels {
                files,
                loaded: Mutex::new(None),
            }) as Arc<dyn Embedders>
        }),
    };
    let config = DatasetConfig {
        disk_size,
        policy,
        steps,
        ..DatasetConfig::default()
    };
    DatasetCache::open(&dir, config, infercache_core::SystemClock::shared())
        .with_context(|| format!("opening the dataset cache in {}", dir.display()))
}

/// The cache with what the dataset `name`'s steps need.
fn open_for(args: &CacheArgs, name: Option<&str>) -> anyhow::Result<DatasetCache> {
    let plain = open(args, None)?;
    let needs = match name {
        Some(n) => plain
            .get_dataset(n)?
            .and_then(|d| d.record)
            .is_some_and(|r| needs_model(&r.steps.iter().flatten().cloned().collect::<Vec<_>>())),
        None => true,
    };
    if !needs {
        return Ok(plain);
    }
    drop(plain);
    open(args, model_files(args, false)?)
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
            let cache = open(
                args,
                model_files(args, needs_model(steps))?.filter(|_| needs_model(steps)),
            )?;
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
            let built = built?;
            if *json {
                println!("{}", serde_json::to_string(&built)?);
            } else {
                println!("{name} {}", built.fingerprint);
                println!(
                    "{} rows in {} shards: {} computed, {} reused",
                    built.rows, built.shards, built.rows_computed, built.rows_reused
                );
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
            let cache = open_for(args, Some(name))?;
            let options = StreamOptions {
                batch_size: *batch,
                prefetch: *prefetch,
                shuffle: *shuffle,
                epoch: *epoch,
                resume: resume.clone(),
            };
            stream(&cache, name, options, *max_batches, *format)
        }
        Action::Ls { filter, sort, json } => {
            let cache = open(args, None)?;
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
            let cache = open(args, None)?;
            let d = cache
                .get_dataset(name)?
                .with_context(|| format!("no dataset `{name}` in the cache"))?;
            let files: Vec<_> = d
                .manifest
                .shards
                .iter()
                .map(|s| {
                    let path = cache.store().root().join("blobs").join(s.digest.hex());
                    serde_json::json!({
                        "index": s.index,
                        "path": path,
                        "cached": path.exists(),
                    })
                })
                .collect();
            if *json {
                let out = serde_json::json!({
                    "name": d.name,
                    "manifest": d.manifest,
                    "record": d.record,
                    "files": files,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
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
                (Some(b), true) => open(args, None)?.explain(a, b)?,
                (None, false) => {
                    let cache = open(
                        args,
                        model_files(args, false)?.filter(|_| needs_model(steps)),
                    )?;
                    let d = cache
                        .get_dataset(a)?
                        .with_context(|| format!("no dataset `{a}` in the cache"))?;
                    let specs: Vec<StepSpec> =
                        steps.iter().map(|s| StepSpec::Text(s.clone())).collect();
                    let plan = cache.plan(&DatasetSource::Files(sources.clone()), &specs)?;
                    infercache_datasets::fingerprint::explain(&d.manifest.chain, &plan)
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
            let cache = open(args, None)?;
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
            let cache = open_for(args, Some(name))?;
            let a = cache.audit(name, *sample, *seed)?;
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
            let cache = open(args, None)?;
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
            let cache = open(args, None)?;
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
            let cache = open(args, None)?;
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
    let mut ipc: Option<arrow_ipc::writer::StreamWriter<BufWriter<std::io::StdoutLock<'_>>>> = None;
    let mut batches = 0u64;
    let result = (|| -> anyhow::Result<()> {
        while max_batches.is_none_or(|m| batches < m) {
            let Some(batch) = s.next() else { break };
            let batch = batch?;
            match format {
                OutputFormat::Jsonl => {
                    let mut w = arrow_json::LineDelimitedWriter::new(&mut out);
                    w.write_batches(&[&batch])?;
                    w.finish()?;
                }
                OutputFormat::Arrow => {
                    if ipc.is_none() {
                        ipc = Some(arrow_ipc::writer::StreamWriter::try_new(
                            BufWriter::with_capacity(1 << 20, std::io::stdout().lock()),
                            batch.schema().as_ref(),
                        )?);
                    }
                    ipc.as_mut().expect("set above").write(&batch)?;
                }
            }
            batches += 1;
        }
        if let Some(w) = ipc.as_mut() {
            w.finish()?;
        }
        Ok(())
    })();
    drop(ipc);
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
