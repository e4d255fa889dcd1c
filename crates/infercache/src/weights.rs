//! `infercache weights chunk|verify|serve|embed`: model weights by layer
//! ([`infercache_weights`]).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use infercache_core::SystemClock;
use infercache_weights::client::{DiskConfig, HttpConfig};
use infercache_weights::server::{self, DEFAULT_BIND, DEFAULT_CACHE_MB, ServerConfig};
use infercache_weights::{ChunkOptions, ClientConfig, Progress, StreamingBertModel, WeightServer};
use tokio::signal::unix::{SignalKind, signal};

use crate::serve::shutdown_signal;

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Split a model directory into one safetensors chunk per component (embeddings,
    /// layer_N, pooler) with a manifest of their SHA-256s (chunk_info.json).
    Chunk(ChunkCommand),
    /// Check every file of a chunk directory against its manifest.
    Verify(VerifyCommand),
    /// Serve chunk directories over HTTP through a byte-bounded LRU cache.
    Serve(ServeCommand),
    /// Embed texts with a model streamed layer by layer from a weight server: one JSON
    /// object per line, {"index": i, "embedding": [...]}, in input order.
    Embed(EmbedCommand),
}

#[derive(Debug, Args)]
pub struct ChunkCommand {
    /// The model directory: config.json, tokenizer.json and model.safetensors (or
    /// model.safetensors.index.json and its shards).
    model_dir: PathBuf,
    /// Where to write the chunks (created if missing; a re-run rewrites nothing that
    /// is already right).
    #[arg(long, short)]
    out: PathBuf,
    /// Cast F32 tensors to F16 (recorded in the manifest).
    #[arg(long)]
    fp16: bool,
    /// The model's name in the manifest and in URLs. Default: the model directory's name.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyCommand {
    /// The chunk directory.
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeCommand {
    /// A chunk directory, or a directory of chunk directories (one model each).
    #[arg(long, env = "INFERCACHE_WEIGHTS_CHUNKS_DIR")]
    chunks_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "INFERCACHE_WEIGHTS_BIND", default_value = DEFAULT_BIND)]
    bind: String,
    /// Server cache size in MiB (0: no cache).
    #[arg(long, env = "INFERCACHE_WEIGHTS_CACHE_SIZE", default_value_t = DEFAULT_CACHE_MB)]
    cache_size: u64,
    /// A Redis shared with other weight servers (redis://host:port); chunks are served
    /// from disk while it is down.
    #[arg(long, env = "INFERCACHE_WEIGHTS_REDIS")]
    redis: Option<String>,
}

#[derive(Debug, Args)]
pub struct EmbedCommand {
    /// The weight server (http://host:port).
    #[arg(long)]
    server: String,
    /// The model's name on the server.
    #[arg(long)]
    model: String,
    /// Layers the client keeps.
    #[arg(long, default_value_t = 3)]
    cache_size: usize,
    /// Layers fetched ahead of the one running.
    #[arg(long, default_value_t = 1)]
    prefetch: usize,
    /// Threads of the forward pass (default: one per core, as the built-in model).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep chunks in this directory between runs (content-addressed, least recently
    /// used first out, shared safely by several processes, downloads resumed).
    #[arg(long, env = "INFERCACHE_WEIGHTS_DISK_DIR")]
    disk_dir: Option<PathBuf>,
    /// Bytes the disk tier keeps (`512MiB`, `2GiB`).
    #[arg(
        long,
        env = "INFERCACHE_WEIGHTS_DISK_SIZE",
        default_value = "1GiB",
        requires = "disk_dir"
    )]
    disk_size: String,
    /// Print the inference stats and the cache info as JSON on stderr.
    #[arg(long)]
    stats: bool,
    /// Read the texts from this file, one per line (instead of the arguments).
    #[arg(long, conflicts_with = "texts")]
    file: Option<PathBuf>,
    /// The texts.
    texts: Vec<String>,
}

pub fn run(cmd: WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::Chunk(c) => chunk(&c),
        WeightsCommand::Verify(c) => verify(&c),
        WeightsCommand::Serve(c) => serve(c),
        WeightsCommand::Embed(c) => embed(c),
    }
}

/// A progress bar on stderr (drawn only on a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self(ProgressBar::with_draw_target(Some(0), target))
    }
}

impl Progress for Bar {
    fn phase(&mut self, what: &str, total: u64) {
        self.0.set_style(
            ProgressStyle::with_template(&format!(
                "{what:>18} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, eta {{eta}})"
            ))
            .expect("the progress template is valid: a bug if not")
            .progress_chars("=> "),
        );
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

fn chunk(cmd: &ChunkCommand) -> anyhow::Result<()> {
    let options = ChunkOptions {
        fp16: cmd.fp16,
        model_name: cmd.name.clone(),
    };
    let report =
        infercache_weights::chunk_model(&cmd.model_dir, &cmd.out, &options, &mut Bar::new())
            .with_context(|| format!("chunking {}", cmd.model_dir.display()))?;
    let m = &report.manifest;
    println!(
        "{}: {} chunks ({} layers), {:.2} MB{} in {}: {} written, {} unchanged, {} removed",
        m.model_name,
        m.chunks.len(),
        m.num_layers,
        m.total_size_mb,
        if m.fp16 { " (fp16)" } else { "" },
        cmd.out.display(),
        report.written.len(),
        report.unchanged.len(),
        report.removed.len(),
    );
    Ok(())
}

fn verify(cmd: &VerifyCommand) -> anyhow::Result<()> {
    let report = infercache_weights::verify_dir(&cmd.dir, &mut Bar::new())
        .with_context(|| format!("verifying {}", cmd.dir.display()))?;
    for (name, problem) in &report.problems {
        eprintln!("{name}: {problem}");
    }
    if !report.is_ok() {
        anyhow::bail!(
            "{} of {} files in {} do not match the manifest",
            report.problems.len(),
            report.problems.len() + report.checked.len(),
            cmd.dir.display()
        );
    }
    let bytes: u64 = report.checked.iter().map(|(_, b)| b).sum();
    println!(
        "{}: {} files verified ({:.2} MB)",
        report.manifest.model_name,
        report.checked.len(),
        infercache_weights::manifest::size_mb(bytes)
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(cmd: ServeCommand) -> anyhow::Result<()> {
    let bind: std::net::SocketAddr = cmd
        .bind
        .parse()
        .with_context(|| format!("--bind {:?} is not host:port", cmd.bind))?;
    let config = ServerConfig {
        cache_bytes: cmd
            .cache_size
            .checked_mul(1 << 20)
            .context("--cache-size is too large")?,
        redis: cmd.redis.as_deref().map(server::redis_config),
        ..ServerConfig::new(cmd.chunks_dir.clone())
    };
    runtime()?.block_on(async move {
        let shutdown = shutdown_signal(
            signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
        );
        let server = WeightServer::open(config, SystemClock::shared())
            .with_context(|| format!("opening {}", cmd.chunks_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(
            models = ?server.model_names(),
            cache_mb = cmd.cache_size,
            redis = cmd.redis.as_deref().map(infercache_core::redact_url),
            "serving weights on http://{addr}"
        );
        server::serve(listener, server, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn embed(cmd: EmbedCommand) -> anyhow::Result<()> {
    let texts: Vec<String> = match &cmd.file {
        Some(f) => std::fs::File::open(f)
            .map(std::io::BufReader::new)
            .and_then(|r| r.lines().collect::<Result<_, _>>())
            .with_context(|| format!("reading {}", f.display()))?,
        None => cmd.texts.clone(),
    };
    if texts.is_empty() {
        anyhow::bail!("no texts: pass them as arguments or with --file");
    }
    let disk = match &cmd.disk_dir {
        Some(dir) => {
            let max_bytes = match cmd.disk_size.parse::<infercache_core::Capacity>() {
                Ok(infercache_core::Capacity::Bytes(b)) if b > 0 => b,
                _ => anyhow::bail!(
                    "--disk-size {:?}: give a positive byte size such as 2GiB",
                    cmd.disk_size
                ),
            };
            Some(DiskConfig {
                dir: dir.clone(),
                max_bytes,
            })
        }
        None => None,
    };
    let config = ClientConfig {
        cache_size: cmd.cache_size,
        prefetch: cmd.prefetch,
        http: HttpConfig::default(),
        disk,
        ..ClientConfig::default()
    };
    let config = ClientConfig {
        threads: cmd.threads.unwrap_or(config.threads),
        ..config
    };
    runtime()?.block_on(async move {
        let model = StreamingBertModel::connect_with(&cmd.server, &cmd.model, config)
            .await
            .with_context(|| format!("connecting to {} for {}", cmd.server, cmd.model))?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let embeddings = model.embed(&refs).await.context("embedding")?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (index, embedding) in embeddings.iter().enumerate() {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({ "index": index, "embedding": embedding }),
            )?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        if cmd.stats {
            let stats = serde_json::json!({
                "inference_stats": model.inference_stats(),
                "cache_info": model.cache_info(),
            });
            eprintln!("{}", serde_json::to_string(&stats)?);
        }
        Ok(())
    })
}
