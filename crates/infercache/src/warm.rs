//! `infercache warm FILE`: reads inputs and posts them to `POST /v1/cache/warm` in batches,
//! so later requests for them are hits.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infercache_api::{WarmRequest, WarmResponse};
use reqwest::Method;
use serde_json::Value;

use crate::client::{self, Client, ServerArgs};

#[derive(Debug, Args)]
pub struct WarmCommand {
    /// Inputs: one per line (blank lines skipped), or a JSON array of strings if the file
    /// starts with `[`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Inputs per request (the server refuses more than its --max-items, 2048 by default).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Namespace (tenant) to warm [default: the API key's tenant].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// What the server reported, summed over the batches.
#[derive(Debug, Default)]
struct Totals {
    inputs: usize,
    hits: usize,
    misses: usize,
    coalesced: usize,
}

pub fn run(cmd: &WarmCommand) -> anyhow::Result<()> {
    let inputs = read_inputs(&cmd.file)?;
    if inputs.is_empty() {
        anyhow::bail!("{} holds no inputs", cmd.file.display());
    }
    let client = Client::new(&cmd.server)?;
    let started = Instant::now();
    let progress = ProgressBar::new(inputs.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} warming [{bar:40}] {pos}/{len} inputs ({per_sec}, eta {eta})",
        )
        .expect("the progress template is valid: a bug if not")
        .progress_chars("=> "),
    );
    let batch = usize::try_from(cmd.batch).unwrap_or(usize::MAX);
    let totals = client::runtime()?.block_on(async {
        let mut totals = Totals::default();
        for (i, chunk) in inputs.chunks(batch).enumerate() {
            let request = WarmRequest {
                inputs: chunk.to_vec(),
                namespace: cmd.namespace.clone(),
                model: None,
            };
            let body = serde_json::to_value(&request).context("encoding a warm request")?;
            let answer = post_batch(&client, &body, &progress)
                .await
                .with_context(|| {
                    let first = i * batch;
                    let done = if first == 0 {
                        String::new()
                    } else {
                        format!("; the {first} inputs before it were warmed")
                    };
                    format!(
                        "batch {} (inputs {}..={}){done}",
                        i + 1,
                        first + 1,
                        first + chunk.len(),
                    )
                })?;
            let answer: WarmResponse = serde_json::from_value(answer)
                .context("the server's warm answer is not in the expected shape")?;
            totals.inputs += answer.inputs;
            totals.hits += answer.hits;
            totals.misses += answer.misses;
            totals.coalesced += answer.coalesced;
            progress.inc(chunk.len() as u64);
        }
        anyhow::Ok(totals)
    });
    progress.finish_and_clear();
    let totals = totals?;
    println!(
        "warmed {} inputs in {:.1?}: {} computed and stored, {} already cached, {} computed by concurrent requests",
        totals.inputs,
        started.elapsed(),
        totals.misses - totals.coalesced.min(totals.misses),
        totals.hits,
        totals.coalesced,
    );
    Ok(())
}

/// Posts one batch, waiting and retrying while the server is busy (429).
async fn post_batch(
    client: &Client,
    body: &Value,
    progress: &ProgressBar,
) -> anyhow::Result<Value> {
    client
        .send_while_busy(Method::POST, "v1/cache/warm", Some(body), |wait, n| {
            progress.println(format!(
                "server busy (429); retrying in {wait:?} ({n}/{})",
                client::BUSY_RETRIES
            ));
        })
        .await?
        .into_ok()
}

/// The inputs of `path`: a JSON array of strings if its first non-blank character is `[`,
/// else one input per line (line endings and blank lines dropped).
fn read_inputs(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_inputs(&text).with_context(|| format!("reading {}", path.display()))
}

fn parse_inputs(text: &str) -> anyhow::Result<Vec<String>> {
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text)
            .context("the file starts with `[` but is not a JSON array")?;
        return values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.is_empty() => Ok(s),
                Value::String(_) => anyhow::bail!("element {i} is an empty string"),
                other => anyhow::bail!("element {i} is not a string: {other}"),
            })
            .collect();
    }
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_arrays_both_read() {
        assert_eq!(
            parse_inputs("a b\r\n\n  \nc\n").unwrap(),
            ["a b".to_owned(), "c".to_owned()]
        );
        assert_eq!(
            parse_inputs(" [\"x\", \"line\\nbreak\"]").unwrap(),
            ["x".to_owned(), "line\nbreak".to_owned()]
        );
        let e = parse_inputs("[\"x\", 3]").unwrap_err();
        assert!(
            format!("{e:#}").contains("element 1 is not a string"),
            "{e:#}"
        );
        assert!(parse_inputs("[not json").is_err());
    }
}
