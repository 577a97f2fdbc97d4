//! `gridback coordinator run` and `gridback node run`: the daemons, in the foreground, until
//! Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cli::{CoordinatorCmd, NodeCmd};

/// `gridback coordinator run`.
pub async fn coordinator(cmd: CoordinatorCmd, stop: &super::StopSignal) -> Result<ExitCode> {
    let CoordinatorCmd::Run { config } = cmd;
    let cfg = gridback_coordinator::CoordinatorConfig::load(&config)
        .with_context(|| format!("cannot load {}", config.display()))?;
    let server = gridback_coordinator::Server::bind(cfg).context("the coordinator cannot start")?;
    tracing::info!(addr = %server.local_addr(), grid = %hex::encode(server.grid_id()), "coordinator listening");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    stop.wait().await;
    tracing::info!("stopping");
    shutdown.cancel();
    task.await.context("coordinator task failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `gridback node run`.
pub async fn node(cmd: NodeCmd, stop: &super::StopSignal) -> Result<ExitCode> {
    let NodeCmd::Run { config } = cmd;
    let cfg = gridback_storage_node::NodeConfig::load(&config)
        .with_context(|| format!("cannot load {}", config.display()))?;
    let label = cfg.label.clone();
    let server = gridback_storage_node::Server::bind(cfg)
        .instrument(tracing::info_span!("node", label = %label))
        .await
        .context("the storage node cannot start")?;
    tracing::info!(addr = %server.local_addr(), node = %server.node_id(), "node listening");
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(server.run(shutdown.clone()));
    tokio::select! {
        _ = stop.wait() => {}
        r = &mut task => {
            // The node stopped on its own (a fatal error, e.g. a data dir of another grid).
            return r.context("node task failed")?.context("node failed").map(|()| ExitCode::FAILURE);
        }
    }
    tracing::info!("stopping");
    shutdown.cancel();
    task.await
        .context("node task failed")?
        .context("node failed")?;
    Ok(ExitCode::SUCCESS)
}
