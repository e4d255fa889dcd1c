//! The integration tests' KServe v2 model server, standalone: for trying clients such as
//! `scripts/tritonclient_check.py` against it, with or without infercache in between.
//!
//! `cargo run --example kserve_upstream -p infercache-server -- [ADDR] [DELAY_MS]`
//! (default `127.0.0.1:0`, no delay) prints `http://ADDR` on stdout, then serves until
//! Ctrl-C, and prints its call and row counts when it stops.

#[path = "../tests/it/kserve_upstream.rs"]
#[expect(dead_code, reason = "the tests' constructors bind their own port")]
mod kserve_upstream;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let delay_ms: u64 = args
        .next()
        .map_or(Ok(0), |d| d.parse())
        .context("DELAY_MS must be an integer")?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let upstream = kserve_upstream::Upstream::serve(listener, Duration::from_millis(delay_ms));
    println!("{}", upstream.url);
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    eprintln!(
        "calls {}, rows {}, binary requests {}",
        upstream.calls(),
        upstream.rows(),
        upstream.binary_requests()
    );
    upstream.stop().await;
    Ok(())
}
