//! The ceiling for a cache hit over HTTP: a bare axum server with the same route shape as
//! `infercache serve` that answers every `POST /v1/embeddings` with fixed bytes (no cache,
//! no model, no JSON parsing). `scripts/bench-serve` captures one real hit response, serves
//! it from here, and compares throughput; see BENCHMARKS.md.
//!
//! `cargo run --release --example bare -p infercache-server -- --body hit.json --bind 127.0.0.1:0`
//! prints the bound address on stdout, then serves until SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Parser;

/// Serve fixed response bytes on `POST /v1/embeddings`.
#[derive(Debug, Parser)]
struct Cli {
    /// The response body to send, byte for byte.
    #[arg(long, value_name = "FILE")]
    body: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    bind: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let body = Bytes::from(
        std::fs::read(&cli.body).with_context(|| format!("reading {}", cli.body.display()))?,
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            // The same headers a hit gets from the real server, so only the work differs.
            let embeddings = move |_request: Bytes| {
                let body = body.clone();
                async move {
                    (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            ),
                            (
                                HeaderName::from_static("x-cache"),
                                HeaderValue::from_static("HIT"),
                            ),
                            (
                                HeaderName::from_static("x-cache-hits"),
                                HeaderValue::from(1),
                            ),
                            (
                                HeaderName::from_static("x-cache-misses"),
                                HeaderValue::from(0),
                            ),
                            (
                                HeaderName::from_static("x-cache-coalesced"),
                                HeaderValue::from(0),
                            ),
                        ],
                        body,
                    )
                        .into_response()
                }
            };
            let app = Router::new()
                .route("/v1/embeddings", post(embeddings))
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
