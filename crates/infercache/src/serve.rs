//! `infercache serve`: [`infercache_server::run`] with the built-in model, wired as the
//! server crate's `examples/serve.rs` documents: validated [`ServerConfig`], a bound
//! listener, and a shutdown future that completes on SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Args;
use infercache_server::{ServeArgs, ServerConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};

#[derive(Debug, Args)]
pub struct ServeCommand {
    #[command(flatten)]
    serve: ServeArgs,
}

pub fn run(cmd: &ServeCommand) -> anyhow::Result<()> {
    let config = ServerConfig::from_args(&cmd.serve)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            // Handlers go in before the model loads, so a signal that arrives during the
            // load is kept and stops the server gracefully once it starts, rather than
            // killing the process.
            let shutdown = shutdown_signal(
                signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            );
            let listener = tokio::net::TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("binding {}", config.bind))?;
            let addr = listener.local_addr().context("reading the bound address")?;
            tracing::info!("listening on http://{addr}");
            infercache_server::run(config, listener, shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        })
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal(mut term: Signal, mut interrupt: Signal) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!("{name} received");
}
