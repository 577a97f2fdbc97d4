//! Record views (F4): clients, one client, snapshots, nodes, chunks, the backup log.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use gridback_proto::admin_api::{
    AdminChunk, AdminChunks, AdminClient, AdminClients, AdminNode, AdminSnapshots, ChunkView,
    ClientDetail,
};
use gridback_proto::coord_api::{BackupLogQuery, LogEntry, NodeState, SnapshotState};
use gridback_proto::units::format_size;
use gridback_proto::{ChunkId, ClientId, NodeId};

use super::table::Table;
use super::when::format_instant;
use super::{Admin, print_json};

/// Chunks per page when listing a client's chunks.
const CHUNK_PAGE: u32 = 512;
/// Log entries per request.
const LOG_PAGE: u32 = 1000;
/// How often `admin log --follow` asks for new entries.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// `admin clients`.
pub async fn clients(admin: &Admin, json: bool) -> Result<ExitCode> {
    let r = admin.call(AdminClients).await?;
    if json {
        return print_json(&r.clients);
    }
    let mut t = Table::new(&[
        "CLIENT",
        "LABEL",
        "LOCATION",
        "PLAN",
        "STATE",
        "USED",
        "CHUNKS",
        "SNAPSHOTS",
        "LAST SEEN",
    ]);
    for c in &r.clients {
        t.row(vec![
            c.id.to_string(),
            c.label.clone(),
            c.location.labels(),
            c.plan.clone(),
            c.state.as_str().into(),
            format_size(c.usage.charged_bytes),
            c.usage.chunk_count.to_string(),
            c.snapshot_count.to_string(),
            format_instant(c.last_seen_unix_ms),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// Print a client's profile and contract (shared with the subscription commands).
pub fn print_client(d: &ClientDetail, json: bool) -> Result<ExitCode> {
    if json {
        return print_json(d);
    }
    let p = &d.profile;
    let s = &d.subscription;
    let l = &s.limits;
    let used = p.usage.charged_bytes;
    let quota = match l.quota_bytes {
        Some(q) if q > 0 => format!(
            "{} of {} ({:.1}%)",
            format_size(used),
            format_size(q),
            used as f64 * 100.0 / q as f64
        ),
        Some(q) => format!("{} of {}", format_size(used), format_size(q)),
        None => format!("{} (no quota)", format_size(used)),
    };
    let rate =
        |v: Option<u64>| v.map_or_else(|| "unlimited".into(), |b| format!("{}/s", format_size(b)));
    let num = |v: Option<u32>| v.map_or_else(|| "default".into(), |n| n.to_string());
    println!("client        {}", p.id);
    println!("label         {}", p.label);
    println!("location      {}", p.location);
    println!("plan          {}", s.plan);
    println!("state         {}", p.state.as_str());
    println!(
        "expires       {}",
        s.expires_unix_ms
            .map_or_else(|| "never".into(), format_instant)
    );
    println!("storage       {quota}");
    println!("chunks        {}", p.usage.chunk_count);
    println!(
        "packets       {} placed on nodes (parity included)",
        format_size(p.usage.uploaded_packet_bytes)
    );
    println!("snapshots     {}", p.snapshot_count);
    println!(
        "bandwidth     up {}, down {}",
        rate(l.bandwidth_up),
        rate(l.bandwidth_down)
    );
    println!("threads       {}", num(l.threads));
    println!("transfers     {}", num(l.transfers));
    println!("packet prox.  {}", d.effective_proximity.packet);
    println!("backup prox.  {}", d.effective_proximity.backup);
    println!("joined        {}", format_instant(p.joined_unix_ms));
    println!("last seen     {}", format_instant(p.last_seen_unix_ms));
    Ok(ExitCode::SUCCESS)
}

/// `admin client ID`.
pub async fn client(admin: &Admin, id: ClientId, json: bool) -> Result<ExitCode> {
    let d = admin.call(AdminClient { id }).await?;
    print_client(&d, json)
}

/// `admin snapshots --client ID`.
pub async fn snapshots(admin: &Admin, client: ClientId, json: bool) -> Result<ExitCode> {
    let r = admin.call(AdminSnapshots { client }).await?;
    if json {
        return print_json(&r.snapshots);
    }
    let mut t = Table::new(&[
        "SNAPSHOT",
        "STATE",
        "CREATED",
        "SEALED",
        "CHUNKS",
        "TREE",
        "TREE CHUNKS",
    ]);
    for s in &r.snapshots {
        let i = &s.info;
        t.row(vec![
            i.name.clone(),
            match i.state {
                SnapshotState::Open => "open".into(),
                SnapshotState::Sealed => "sealed".into(),
            },
            format_instant(i.created_unix_ms),
            i.sealed_unix_ms.map_or_else(|| "-".into(), format_instant),
            i.chunk_refs.to_string(),
            format!("{} (encrypted)", format_size(i.tree_bytes)),
            s.tree_chunks.len().to_string(),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// `admin node ID`.
pub async fn node(admin: &Admin, id: NodeId, json: bool) -> Result<ExitCode> {
    let d = admin.call(AdminNode { id }).await?;
    print_node(&d, json)
}

/// Print a node record (shared with `admin node set`).
pub fn print_node(d: &gridback_proto::admin_api::NodeDetail, json: bool) -> Result<ExitCode> {
    if json {
        return print_json(d);
    }
    let s = &d.status;
    println!("node          {}", s.id);
    println!("label         {}", s.label);
    println!("location      {}", d.location);
    println!("address       {}", s.addr);
    println!(
        "state         {}",
        match s.state {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    );
    println!(
        "capacity      {} used of {} ({} packets reported)",
        format_size(s.used_bytes),
        format_size(s.capacity_bytes),
        s.packet_count
    );
    if s.reported_capacity_bytes != s.capacity_bytes {
        println!(
            "              the node still reports {} (it applies the new capacity at its next heartbeat)",
            format_size(s.reported_capacity_bytes)
        );
    }
    println!(
        "records       {} packets, {}",
        d.recorded_packets,
        format_size(d.recorded_bytes)
    );
    println!("last beat     {}", format_instant(s.last_heartbeat_unix_ms));
    Ok(ExitCode::SUCCESS)
}

fn chunk_rows(t: &mut Table, c: &ChunkView) {
    let sources = c
        .sources
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for (i, tg) in c.targets.iter().enumerate() {
        t.row(vec![
            if i == 0 {
                c.id.to_string()
            } else {
                String::new()
            },
            tg.packet.to_string(),
            tg.node.to_string(),
            tg.location.clone(),
            if i == 0 {
                sources.clone()
            } else {
                String::new()
            },
        ]);
    }
}

/// `admin chunk ID`.
pub async fn chunk(admin: &Admin, id: ChunkId, json: bool) -> Result<ExitCode> {
    let c = admin.call(AdminChunk { id }).await?;
    if json {
        return print_json(&c);
    }
    println!(
        "chunk {}: {}+{} packets of {}",
        c.id,
        c.k,
        c.m,
        format_size(c.packet_bytes)
    );
    let mut t = Table::new(&["CHUNK", "PACKET", "NODE", "LOCATION", "SOURCES"]);
    chunk_rows(&mut t, &c);
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// `admin chunks --client ID [--snapshot NAME]`: every page, in id order.
pub async fn chunks(
    admin: &Admin,
    client: ClientId,
    snapshot: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = admin
            .call(AdminChunks {
                client,
                snapshot: snapshot.clone(),
                after,
                limit: CHUNK_PAGE,
            })
            .await?;
        all.extend(page.chunks);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if json {
        return print_json(&all);
    }
    let mut t = Table::new(&["CHUNK", "PACKET", "NODE", "LOCATION", "SOURCES"]);
    for c in &all {
        chunk_rows(&mut t, c);
    }
    t.print();
    println!("{} chunks", all.len());
    Ok(ExitCode::SUCCESS)
}

fn print_entry(e: &LogEntry, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        let who = match (e.client, e.node) {
            (Some(c), _) => format!("client {}", &c.to_string()[..12]),
            (None, Some(n)) => format!("node {}", &n.to_string()[..12]),
            (None, None) => "-".into(),
        };
        println!(
            "{:>6}  {}  {:<22} {:<20} {}",
            e.seq,
            format_instant(e.at_unix_ms),
            e.kind,
            who,
            e.detail
        );
    }
    Ok(())
}

/// `admin log [--follow] [--since T]`. With `--json`, one JSON object per line.
pub async fn log(
    admin: &Admin,
    follow: bool,
    since_unix_ms: Option<u64>,
    json: bool,
    stop: &crate::cmd::StopSignal,
) -> Result<ExitCode> {
    let mut next = 0u64;
    loop {
        let r = admin
            .call(BackupLogQuery {
                since_seq: next,
                limit: LOG_PAGE,
                since_unix_ms,
            })
            .await?;
        let full = r.entries.len() as u32 == LOG_PAGE;
        for e in &r.entries {
            print_entry(e, json)?;
            next = next.max(e.seq + 1);
        }
        if full {
            continue;
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = stop.wait() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}
