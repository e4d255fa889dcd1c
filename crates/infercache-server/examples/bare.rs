//! The ceiling for a cache hit over HTTP: a bare axum server that answers every `POST` on
//! one path with fixed bytes (no cache, no model, no parsing). `scripts/bench-serve`
//! captures one real hit response per request kind (its body and headers), serves it from
//! here, and compares throughput; see BENCHMARKS.md.
//!
//! `cargo run --release --example bare -p infercache-server -- --body hit.json [--headers hit.headers] [--path /v1/embeddings] --bind 127.0.0.1:0`
//! prints the bound address on stdout, then serves until SIGTERM or Ctrl-C. `--headers`
//! takes a response head as `curl -D` writes it and sends its headers (less
//! `content-length`, `date` and `connection`, which the HTTP stack writes itself); without
//! it, the headers of an `X-Cache: HIT` on `/v1/embeddings`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Parser;

/// Serve fixed response bytes on `POST PATH`.
#[derive(Debug, Parser)]
struct Cli {
    /// The response body to send, byte for byte.
    #[arg(long, value_name = "FILE")]
    body: PathBuf,
    /// A response head (`curl -D`) whose headers to send.
    #[arg(long, value_name = "FILE")]
    headers: Option<PathBuf>,
    /// The path to answer `POST` on.
    #[arg(long, default_value = "/v1/embeddings")]
    path: String,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    bind: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let body = Bytes::from(
        std::fs::read(&cli.body).with_context(|| format!("reading {}", cli.body.display()))?,
    );
    let headers = match &cli.headers {
        Some(path) => replayed(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => hit_headers(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            // The same headers a hit gets from the real server, so only the work differs.
            let embeddings = move |_request: Bytes| {
                let (headers, body) = (headers.clone(), body.clone());
                async move { (headers, body).into_response() }
            };
            let app = Router::new()
                .route(&cli.path, post(embeddings))
                .route("/readyz", get(|| async { r#"{"status":"ready"}"# }));
            let listener = tokio::net::TcpListener::bind(&cli.bind)
                .await
                .with_context(|| format!("binding {}", cli.bind))?;
            let mut stdout = std::io::stdout();
            writeln!(stdout, "{}", listener.local_addr()?)?;
            stdout.flush()?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            Ok(())
        })
}

/// The headers of a response head as `curl -D` writes it, less those the HTTP stack sets.
fn replayed(head: &str) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = HeaderName::try_from(name.trim()).context("a header name")?;
        if [header::CONTENT_LENGTH, header::DATE, header::CONNECTION].contains(&name) {
            continue;
        }
        headers.append(
            name,
            HeaderValue::try_from(value.trim()).context("a header value")?,
        );
    }
    Ok(headers)
}

/// What `infercache serve` sends with a one-input hit on `/v1/embeddings`.
fn hit_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-cache", HeaderValue::from_static("HIT"));
    headers.insert("x-cache-hits", HeaderValue::from(1));
    headers.insert("x-cache-misses", HeaderValue::from(0));
    headers.insert("x-cache-coalesced", HeaderValue::from(0));
    headers
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
