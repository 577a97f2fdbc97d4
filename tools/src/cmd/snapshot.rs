//! `gridback snapshot list | create | seal`. Create and seal go through the running mount's
//! control socket (the mount owns the local metadata); without a mount they run here.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gridback_fs::config::ClientConfig;
use gridback_fs::control::{self, ControlRequest};
use gridback_fs::core::FsCore;
use gridback_fs::core::namespace::Owner;
use gridback_proto::coord_api::{SnapshotList, SnapshotState};
use serde_json::json;

use super::status::coord_client;
use crate::cli::SnapshotCmd;

/// `gridback snapshot …`.
pub async fn run(cmd: SnapshotCmd) -> Result<ExitCode> {
    match cmd {
        SnapshotCmd::List { config, json } => {
            list(&ClientConfig::load(&config.config)?, json).await
        }
        SnapshotCmd::Create { name, from, config } => {
            let cfg = ClientConfig::load(&config.config)?;
            let req = ControlRequest::Create {
                name: name.clone(),
                from: from.clone(),
            };
            if let Some(r) = control::request(&cfg.state_dir, &req).await? {
                return answer(r.ok, &r.message);
            }
            let core = local_core(&cfg).await?;
            core.create_snapshot(&name, from.as_deref(), 0o755, Owner { uid: 0, gid: 0 })
                .await
                .with_context(|| format!("cannot open snapshot {name:?}"))?;
            answer(true, &format!("opened {name}"))
        }
        SnapshotCmd::Seal {
            name,
            force,
            config,
        } => {
            let cfg = ClientConfig::load(&config.config)?;
            let req = ControlRequest::Seal {
                name: name.clone(),
                force,
            };
            if let Some(r) = control::request(&cfg.state_dir, &req).await? {
                return answer(r.ok, &r.message);
            }
            let core = local_core(&cfg).await?;
            let r = core
                .seal(&name, force)
                .await
                .with_context(|| format!("cannot seal {name:?}"))?;
            answer(
                true,
                &format!(
                    "sealed {} ({} entries, tree {} bytes)",
                    r.name, r.entries, r.tree_bytes
                ),
            )
        }
    }
}

fn answer(ok: bool, message: &str) -> Result<ExitCode> {
    if ok {
        println!("{message}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{message}")
    }
}

/// An `FsCore` opened here, for when no mount is running.
async fn local_core(cfg: &ClientConfig) -> Result<Arc<FsCore>> {
    let core = super::mount::open_core(cfg).await?;
    core.sync_snapshots().await?;
    Ok(core)
}

async fn list(cfg: &ClientConfig, as_json: bool) -> Result<ExitCode> {
    let c = coord_client(cfg)?;
    let l = c
        .call(SnapshotList)
        .await
        .context("cannot list snapshots")?;
    let state = |s: SnapshotState| match s {
        SnapshotState::Open => "open",
        SnapshotState::Sealed => "sealed",
    };
    if as_json {
        let v: Vec<_> = l
            .snapshots
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "state": state(s.state),
                    "created_unix_ms": s.created_unix_ms,
                    "sealed_unix_ms": s.sealed_unix_ms,
                    "tree_bytes": s.tree_bytes,
                    "chunk_refs": s.chunk_refs,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "snapshots": v }))?
        );
    } else {
        println!("{:<32} {:<7} {:>10}", "name", "state", "chunks");
        for s in &l.snapshots {
            println!("{:<32} {:<7} {:>10}", s.name, state(s.state), s.chunk_refs);
        }
    }
    Ok(ExitCode::SUCCESS)
}
