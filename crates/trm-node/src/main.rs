//! `trm-node --config FILE`: runs one node until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Runs one TRM federation node.
#[derive(Debug, Parser)]
#[command(name = "trm-node", version)]
struct Args {
    /// The node's TOML configuration file.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    trm_node::install_crypto_provider();
    match start(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node stopped");
            eprintln!("trm-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start(args: Args) -> Result<(), trm_node::NodeError> {
    let config = trm_node::NodeConfig::load(&args.config)?;
    let listeners = trm_node::Listeners::bind(&config.listen).await?;
    trm_node::run(config, listeners, shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
