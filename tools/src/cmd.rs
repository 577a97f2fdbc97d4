//! One module per subcommand.

mod bench;
mod daemons;
mod join;
mod local;
mod mount;
mod print_config;
mod snapshot;
mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command, LocalCmd};

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Local(LocalCmd::Up(a)) => local::up(a).await,
        Command::Coordinator(c) => daemons::coordinator(c).await,
        Command::Node(n) => daemons::node(n).await,
        Command::Join(a) => join::run(a).await,
        Command::Mount(a) => mount::run(a).await,
        Command::Snapshot(s) => snapshot::run(s).await,
        Command::Status(a) => status::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::PrintConfig(a) => print_config::run(a),
    }
}

/// Resolve when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
