//! `gridback status`: the coordinator, every node, capacity and health.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use gridback_fs::config::ClientConfig;
use gridback_fs::control::{self, ControlRequest};
use gridback_fs::coord_client::CoordClient;
use gridback_fs::core::WriteBackStatus;
use gridback_proto::coord_api::{NodeState, Status, StatusReport};
use gridback_proto::tls::Identity;
use gridback_proto::transport::{ConnPool, client_endpoint};
use gridback_proto::units::format_size;
use serde_json::json;

use crate::cli::StatusArgs;

/// Load the client's TLS identity from its state.
pub fn client_identity(cfg: &ClientConfig) -> Result<Identity> {
    let dir = cfg.tls_dir();
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (has this client joined the grid?)",
                p.display()
            )
        })
    };
    Ok(Identity::from_pem(
        &read("client.crt")?,
        &read("client.key")?,
        &read("ca.crt")?,
    )?)
}

/// A coordinator client for one-off commands.
pub fn coord_client(cfg: &ClientConfig) -> Result<CoordClient> {
    let identity = client_identity(cfg)?;
    let ep = client_endpoint(&identity)?;
    Ok(CoordClient::new(
        ConnPool::new(ep),
        cfg.coordinator_addr.clone(),
    ))
}

/// Ask the coordinator for the grid status, as the client of `config`.
pub async fn fetch_status(config: &Path) -> Result<StatusReport> {
    let cfg = ClientConfig::load(config)?;
    let c = coord_client(&cfg)?;
    let r = c
        .call(Status)
        .await
        .with_context(|| format!("coordinator {}", cfg.coordinator_addr))?;
    c.pool().close_all();
    Ok(r)
}

/// What the running mount of this client (if any) still has to upload.
async fn mount_write_back(config: &Path) -> Option<WriteBackStatus> {
    let cfg = ClientConfig::load(config).ok()?;
    let ask = control::request(&cfg.state_dir, &ControlRequest::Stats);
    match tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
        Ok(Ok(Some(r))) => r.write_back,
        _ => None,
    }
}

/// `gridback status`.
pub async fn run(args: StatusArgs) -> Result<ExitCode> {
    let s = fetch_status(&args.config.config).await?;
    let uploads = mount_write_back(&args.config.config).await;
    if args.json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id.to_string(),
                    "label": n.label,
                    "addr": n.addr,
                    "pid": n.pid,
                    "state": match n.state { NodeState::Up => "up", NodeState::Down => "down" },
                    "capacity_bytes": n.capacity_bytes,
                    "reported_capacity_bytes": n.reported_capacity_bytes,
                    "used_bytes": n.used_bytes,
                    "packet_count": n.packet_count,
                    "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
                    "location": n.location.labels(),
                })
            })
            .collect();
        let out = json!({
            "grid": hex::encode(s.grid),
            "client": s.client.map(|c| c.to_string()),
            "coordinator": { "addr": s.coordinator_addr, "pid": s.coordinator_pid },
            "erasure": { "k": s.erasure_k, "m": s.erasure_m },
            "chunks": s.chunk_count,
            "stored_bytes": s.stored_bytes,
            "nodes": nodes,
            "subscription": s.terms.as_ref().map(|t| json!({
                "plan": t.subscription.plan,
                "state": t.state.as_str(),
                "expires_unix_ms": t.subscription.expires_unix_ms,
                "limits": t.subscription.limits,
                "usage": t.usage,
                "location": t.location.labels(),
            })),
            "placement": s.proximity,
            "mount": uploads.as_ref().map(|u| json!({
                "pending_files": u.pending_files,
                "pending_bytes": u.pending_bytes,
                "upload_errors": u.errors,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("grid         {}", hex::encode(s.grid));
    if let Some(c) = s.client {
        println!("client       {c}");
    }
    println!(
        "coordinator  {}  pid {}",
        s.coordinator_addr, s.coordinator_pid
    );
    println!("erasure      {}+{}", s.erasure_k, s.erasure_m);
    if let Some(u) = &uploads {
        println!(
            "mount        {} file(s), {} closed and waiting for the grid",
            u.pending_files,
            format_size(u.pending_bytes)
        );
        for e in &u.errors {
            println!("             upload refused: {e}");
        }
    }
    if let Some(t) = &s.terms {
        let l = &t.subscription.limits;
        println!("location     {}", t.location);
        println!(
            "subscription {} ({})",
            t.subscription.plan,
            t.state.as_str()
        );
        if !t.state.allows_writes() {
            println!(
                "             new writes are refused (EACCES): the subscription is {}; \
                 browsing and restore still work",
                t.state.as_str()
            );
        }
        println!(
            "storage      {} used{}",
            format_size(t.usage.charged_bytes),
            l.quota_bytes
                .map(|q| format!(" of {} quota", format_size(q)))
                .unwrap_or_default()
        );
    }
    println!(
        "placement    packet {}, backup {}",
        s.proximity.packet, s.proximity.backup
    );
    println!(
        "chunks       {} ({} in packets)",
        s.chunk_count,
        format_size(s.stored_bytes)
    );
    let up = s.nodes.iter().filter(|n| n.state == NodeState::Up).count();
    println!("nodes        {up} up of {}", s.nodes.len());
    println!(
        "  {:<32} {:<8} {:<21} {:<7} {:<5} {:>10} {:>10} {:>8}  location",
        "id", "label", "addr", "pid", "state", "used", "capacity", "packets"
    );
    for n in &s.nodes {
        println!(
            "  {:<32} {:<8} {:<21} {:<7} {:<5} {:>10} {:>10} {:>8}  {}",
            n.id.to_string(),
            n.label,
            n.addr,
            n.pid,
            match n.state {
                NodeState::Up => "up",
                NodeState::Down => "DOWN",
            },
            format_size(n.used_bytes),
            format_size(n.capacity_bytes),
            n.packet_count,
            n.location.labels()
        );
    }
    Ok(ExitCode::SUCCESS)
}
