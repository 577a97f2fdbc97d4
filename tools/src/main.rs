//! `gridback`: the one binary people run. This file only parses the command line, sets up
//! logging and the runtime, and hands over to one module per subcommand.

mod cli;
mod cmd;
mod procs;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// mimalloc keeps freed chunk-sized buffers for reuse: with glibc's allocator every 1 MiB
/// buffer of the pipeline was a fresh mmap, and page faults plus zeroing took a fifth of the
/// mount's CPU time (measured with perf during a copy). Built with `no_thp`: backing arenas
/// with transparent huge pages made every process's RSS follow its allocation rate (nodes
/// ~250 MiB instead of ~65 MiB) and most of the remaining page-zeroing cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Upper bound on tokio's blocking threads (see `main`).
const MAX_BLOCKING_THREADS: usize = 16;

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: daemons of a local grid log to files that people grep.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default(info);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Local(_) | Command::Coordinator(_) | Command::Node(_) | Command::Mount(_)
    );
    init_tracing(if daemon {
        "info,quinn=warn,rustls=warn"
    } else {
        "warn"
    });
    install_panic_hook();
    // Blocking threads each keep allocator caches and the pipeline's per-thread scratch
    // buffers; the pipeline never needs more than a handful at once (one reader per stream
    // plus the CPU workers), so a small cap keeps the mount's memory flat under load.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gridback: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(cmd::run(cli));
    // Do not wait for stray blocking tasks (a stuck network read) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gridback: {e:#}");
            ExitCode::FAILURE
        }
    }
}
