//! One module per subcommand.

mod admin;
mod agent;
mod backup;
mod bench;
mod daemons;
mod join;
mod local;
mod mount;
mod print_config;
mod progress;
mod restore;
mod snapshot;
mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command, LocalCmd};

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stop = StopSignal::install()?;
    let stop = &stop;
    match cli.command {
        Command::Local(LocalCmd::Up(a)) => local::up(a, stop).await,
        Command::Coordinator(c) => daemons::coordinator(c, stop).await,
        Command::Node(n) => daemons::node(n, stop).await,
        Command::Join(a) => join::run(a).await,
        Command::Mount(a) => mount::run(a, stop).await,
        Command::Snapshot(s) => snapshot::run(s).await,
        Command::Status(a) => status::run(a).await,
        Command::Backup(a) => backup::run(a).await,
        Command::Restore(a) => restore::run(a).await,
        Command::Admin(a) => admin::run(a, stop).await,
        Command::Agent(a) => agent::run(a, stop).await,
        Command::Bench(a) => bench::run(a).await,
        Command::PrintConfig(a) => print_config::run(a),
    }
}

/// SIGINT and SIGTERM, listened for from the moment the process starts: a signal that
/// arrives before a command reaches its wait loop (say, right after `local up` printed that the
/// grid is up) is still seen, instead of killing the process with the default action and
/// leaving children and mounts behind.
pub struct StopSignal {
    int: tokio::sync::Mutex<tokio::signal::unix::Signal>,
    term: tokio::sync::Mutex<tokio::signal::unix::Signal>,
}

impl StopSignal {
    /// Install the handlers now.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: tokio::sync::Mutex::new(signal(SignalKind::interrupt())?),
            term: tokio::sync::Mutex::new(signal(SignalKind::terminate())?),
        })
    }

    /// Resolve when the process is asked to stop (Ctrl-C or SIGTERM).
    pub async fn wait(&self) {
        let mut int = self.int.lock().await;
        let mut term = self.term.lock().await;
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
}
