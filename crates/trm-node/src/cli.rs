//! The `trm-node --config FILE` command: runs one node until SIGINT or SIGTERM. The binary
//! is this function; the tests that kill a node run it as a process too.

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

/// Parses the command line, runs the node and returns the process's exit code.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match crate::NodeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trm-node: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_logging(&config.log);
    crate::install_crypto_provider();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::NodeError::from)
        .and_then(|rt| rt.block_on(start(config)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node stopped");
            eprintln!("trm-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs as the configuration says (`RUST_LOG` overrides the level): text or JSON lines,
/// structured fields, never personal data (the code logs ids, kinds and reasons only).
fn init_logging(log: &crate::config::LogSection) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_str()));
    // Colours only for a person at a terminal: a file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if log.format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn start(config: crate::NodeConfig) -> Result<(), crate::NodeError> {
    let listeners = crate::Listeners::bind(&config.listen).await?;
    crate::run(config, listeners, shutdown_signal()).await
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
