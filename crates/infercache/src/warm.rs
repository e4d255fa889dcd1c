//! `infercache warm FILE`: a bulk job with no output file ([`infercache_jobs::run`])
//! through a running server, so later requests for the file's inputs are hits.
//!
//! The job engine does what it does for `bulk`: the whole file is de-duplicated (each
//! distinct input sent once), windows are journaled (a stopped or killed warm resumes
//! where it stopped; a finished one run again is a fresh pass, every input a hit), a
//! failing batch is split until its failing inputs are alone, a progress bar shows on a
//! terminal, and one JSON summary line goes to stderr. Each batch goes to
//! `POST /v1/cache/warm` ([`ServerModel::warming`]), which stores the rows for the API
//! key's tenant or `--namespace`, retried while the server answers 429.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Args;
use infercache_backend::BUILTIN_MODEL;
use infercache_jobs::{Format, JobOptions, Mode, Summary};

use crate::bulk::{Bar, listen_for_stop, remote::ServerModel};
use crate::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub struct WarmCommand {
    /// Inputs: one per line (blank lines skipped), or a JSON array of strings if the file
    /// starts with `[`; or a bulk job's input with --format.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Inputs per request (the server refuses more than its --max-items, 2048 by default).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Requests in flight.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Namespace (tenant) to warm [default: the API key's tenant].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// The model to warm, one whose inputs are texts [default: the built-in model].
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// lines, csv, jsonl or openai-batch: the file's shape, as `bulk` reads it.
    #[arg(long, value_name = "FORMAT", default_value = "lines")]
    format: Format,
    /// The CSV column holding the input [default: `input`, or the only column besides `key`].
    #[arg(long, value_name = "C")]
    column: Option<String>,
    /// Where inputs that failed go, one JSON line each with its line, key and reason
    /// [default: not written; the summary counts them].
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// Forget the journal of a stopped warm of this file and start it over.
    #[arg(long)]
    restart: bool,
    /// Where jobs keep their journals [default: `jobs/` in the cache directory].
    #[arg(long, value_name = "DIR", env = "INFERCACHE_JOBS_DIR")]
    jobs_dir: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(cmd: &WarmCommand) -> anyhow::Result<()> {
    let client = Client::new(&cmd.server)?;
    let name = cmd.model.as_deref().unwrap_or(BUILTIN_MODEL);
    let options = JobOptions {
        input: cmd.file.clone(),
        output: None,
        errors: cmd.errors.clone(),
        format: cmd.format,
        column: cmd.column.clone(),
        tenant: tenant(cmd.namespace.as_deref(), cmd.server.api_key()),
        parameters: None,
        batch_size: cmd.batch as usize,
        concurrency: cmd.concurrency as usize,
        mode: if cmd.restart {
            Mode::Restart
        } else {
            Mode::Auto
        },
        jobs_dir: cmd
            .jobs_dir
            .clone()
            .unwrap_or_else(|| infercache_backend::default_cache_dir().join("jobs")),
        // The server's own limit applies: an input over it fails alone (400).
        max_input_chars: usize::MAX,
    };
    let summary = crate::client::runtime()?.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        listen_for_stop(Arc::clone(&stop))?;
        let model = ServerModel::warming(client, name, cmd.namespace.clone()).await?;
        let bar = Bar::new();
        let summary = infercache_jobs::run(&model, &options, &stop, &bar)
            .await
            .with_context(|| format!("warming {}", cmd.file.display()))?;
        bar.finish();
        anyhow::Ok(summary)
    })?;
    if summary.rows == 0 {
        anyhow::bail!("{} holds no inputs", cmd.file.display());
    }
    println!("{}", described(&summary));
    crate::bulk::report(&summary)
}

/// The job's tenant in its spec: the namespace, else the API key's tenant, which only the
/// server knows, named by a digest of the key (never the key itself), so a warm resumed
/// with another key is another job.
fn tenant(namespace: Option<&str>, api_key: Option<&str>) -> String {
    match (namespace, api_key) {
        (Some(ns), _) => ns.to_owned(),
        (None, Some(key)) => format!(
            "the tenant of API key {}",
            &blake3::hash(key.as_bytes()).to_hex()[..16]
        ),
        (None, None) => "the tenant of requests without an API key".to_owned(),
    }
}

/// The one line `warm` prints on stdout.
fn described(s: &Summary) -> String {
    let mut line = format!(
        "warmed {} inputs in {:.1}s: {} computed and stored, {} already cached",
        s.rows, s.elapsed_s, s.computed, s.hits
    );
    if s.duplicates > 0 {
        line.push_str(&format!(", {} repeats", s.duplicates));
    }
    if s.errors > 0 {
        line.push_str(&format!(", {} failed", s.errors));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warms_tenant_names_the_namespace_or_a_digest_of_the_key() {
        assert_eq!(tenant(Some("acme"), Some("k")), "acme");
        let a = tenant(None, Some("secret-a"));
        assert!(!a.contains("secret-a"), "{a}");
        assert_ne!(a, tenant(None, Some("secret-b")));
        assert_ne!(a, tenant(None, None));
    }
}
