//! The `browse` phase: a snapshot of many small files (100 directories plus one directory of
//! 10,000 entries), browsed through a fresh mount with `stat`, `ls -l` and `find | wc -l`.
//!
//! Browsing must answer from the client's local metadata and fetch no file contents. The
//! phase proves it by freezing every storage node (SIGSTOP) for the whole measurement: a
//! chunk fetch would have to wait for a frozen node, so the phase fails (error or timeout)
//! if any happens. The mount's own count of chunk fetches (its control socket's `stats`)
//! and the nodes' read counters (`rchar` in /proc/PID/io) are reported too.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use gridback_fs::config::ClientConfig;
use gridback_fs::control::{self, ControlRequest};
use gridback_fs::core::CacheStats;
use nix::sys::signal::Signal;
use serde_json::json;

use super::dataset::Rng;
use super::{Ctx, NODES_UP_TIMEOUT, Section, proc_usage, shell, timed};
use crate::procs::signal;

/// Directories of small files.
const DIRS: usize = 100;
/// Entries of the one large directory.
const BIG_DIR_ENTRIES: usize = 10_000;
/// Distinct contents the small files are drawn from: the snapshot then costs few uploads,
/// while every file still has its own size and chunk list to list and stat.
const DISTINCT_CONTENTS: usize = 1_000;
/// Files `stat`ed one by one (before anything else touched them).
const STAT_SAMPLES: usize = 1_000;

/// Usage rows of the processes measured here.
type Procs = Vec<(String, Option<(f64, u64)>)>;

/// Storage nodes stopped with SIGSTOP until this is dropped.
struct Frozen(Vec<u32>);

impl Frozen {
    fn new(pids: Vec<u32>) -> Self {
        for p in &pids {
            signal(*p, Signal::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.0 {
            signal(*p, Signal::SIGCONT);
        }
    }
}

/// Bytes a process has read through read(2) and friends (files, not sockets).
fn rchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Write the tree; returns the relative path and size of every file.
fn generate(root: &Path, files: usize) -> Result<Vec<(String, u64)>> {
    let mut rng = Rng(0x5eed_b20e);
    let contents: Vec<Vec<u8>> = (0..DISTINCT_CONTENTS)
        .map(|_| {
            let mut b = vec![0u8; 64 + (rng.next() % 4032) as usize];
            rng.fill(&mut b);
            b
        })
        .collect();
    let mut out = Vec::with_capacity(files);
    let per_dir = (files - BIG_DIR_ENTRIES).div_ceil(DIRS);
    for i in 0..files {
        let rel = if i < BIG_DIR_ENTRIES {
            format!("big/entry-{i:05}")
        } else {
            let j = i - BIG_DIR_ENTRIES;
            format!("d{:03}/file-{:04}", j / per_dir, j % per_dir)
        };
        let p = root.join(&rel);
        if let Some(d) = p.parent()
            && !d.exists()
        {
            std::fs::create_dir_all(d)?;
        }
        let data = &contents[i % DISTINCT_CONTENTS];
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
        out.push((rel, data.len() as u64));
    }
    Ok(out)
}

/// The mount's chunk-cache counters, through its control socket.
async fn mount_stats(ctx: &Ctx) -> Result<CacheStats> {
    let cfg = ClientConfig::load(&ctx.grid.layout.client_toml())?;
    let r = control::request(&cfg.state_dir, &ControlRequest::Stats)
        .await
        .context("cannot reach the mount's control socket")?
        .context("no mount is listening on its control socket")?;
    r.stats
        .with_context(|| format!("the mount answered without stats: {}", r.message))
}

async fn wait_nodes_up(ctx: &Ctx, since_unix_ms: u64) -> Result<()> {
    let want: Vec<u32> = ctx.grid.nodes.iter().map(|n| n.pid()).collect();
    let deadline = Instant::now() + NODES_UP_TIMEOUT;
    loop {
        let s = super::super::status::fetch_status(&ctx.grid.layout.client_toml()).await?;
        let fresh = s
            .nodes
            .iter()
            .filter(|n| want.contains(&n.pid) && n.last_heartbeat_unix_ms > since_unix_ms)
            .filter(|n| n.state == gridback_proto::coord_api::NodeState::Up)
            .count();
        if fresh == want.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the nodes did not report in again after being resumed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run the phase with `files` files.
pub async fn run(ctx: &mut Ctx, files: usize, procs: &mut Procs) -> Result<Section> {
    if files < BIG_DIR_ENTRIES + DIRS {
        bail!("--browse-files must be at least {}", BIG_DIR_ENTRIES + DIRS);
    }
    let src = ctx.work.join("browse-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    eprintln!("bench: browse: writing {files} small files…");
    let list = generate(&src, files)?;
    let dirs = 1 + (files - BIG_DIR_ENTRIES).div_ceil((files - BIG_DIR_ENTRIES).div_ceil(DIRS));
    let t = Instant::now();
    let b = ctx.backup(&src, "browse").await?;
    let backup_secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&src)?;

    // A snapshot backed up elsewhere has its tree fetched once, at the first visit; do that
    // first, then browse through a fresh mount (nothing cached in memory or by the kernel).
    let snap = ctx.mnt.join("snapshots/browse");
    ctx.remount().await?;
    std::fs::metadata(snap.join("big")).context("the browse snapshot is not visible")?;
    ctx.remount().await?;

    eprintln!("bench: browse: listing with every storage node frozen…");
    let pids: Vec<u32> = ctx.grid.nodes.iter().map(|n| n.pid()).collect();
    let read_before: u64 = pids.iter().map(|p| rchar(*p)).sum();
    let stats_before = mount_stats(ctx).await?;
    let frozen = Frozen::new(pids.clone());
    let measured = measure(&snap, &list, files, dirs);
    drop(frozen);
    let read_during: u64 = pids.iter().map(|p| rchar(*p)).sum::<u64>() - read_before;
    let fetches = mount_stats(ctx).await?.chunk_fetches - stats_before.chunk_fetches;
    let thawed = now_ms();
    let (stat_secs, ls_secs, find_secs) = measured?;
    procs.push((
        "mount (browse)".into(),
        ctx.mount_pid().and_then(proc_usage),
    ));
    wait_nodes_up(ctx, thawed).await?;

    Ok(Section {
        name: "browse",
        json: json!({
            "files": files,
            "backup_seconds": backup_secs,
            "backup_files_per_s": files as f64 / backup_secs,
            "tree_bytes": b.tree_bytes,
            "stat_samples": STAT_SAMPLES,
            "stat_seconds": stat_secs,
            "stat_us_each": stat_secs * 1e6 / STAT_SAMPLES as f64,
            "ls_l_entries": BIG_DIR_ENTRIES,
            "ls_l_seconds": ls_secs,
            "find_entries": files + dirs + 1,
            "find_seconds": find_secs,
            "nodes_frozen": true,
            "node_bytes_read_during_browse": read_during,
            "chunk_fetches": fetches,
        }),
        text: vec![
            format!(
                "browse ({files} files, fresh mount, every node frozen; chunks fetched: {fetches})"
            ),
            format!(
                "  stat of {STAT_SAMPLES} files      {:>8.3} s  ({:.0} µs each)",
                stat_secs,
                stat_secs * 1e6 / STAT_SAMPLES as f64
            ),
            format!("  ls -l of {BIG_DIR_ENTRIES} entries  {ls_secs:>8.3} s"),
            format!(
                "  find | wc -l ({} entries) {find_secs:>6.3} s",
                files + dirs + 1
            ),
            format!(
                "  (backup of the tree took {backup_secs:.1} s; nodes read {read_during} bytes while browsing)"
            ),
        ],
    })
}

/// (stat, ls -l, find) seconds; checks every answer.
fn measure(
    snap: &Path,
    list: &[(String, u64)],
    files: usize,
    dirs: usize,
) -> Result<(f64, f64, f64)> {
    // stat first, spread over the small-file directories, before anything else looked.
    let step = ((list.len() - BIG_DIR_ENTRIES) / STAT_SAMPLES).max(1);
    let t = Instant::now();
    for (rel, size) in list[BIG_DIR_ENTRIES..]
        .iter()
        .step_by(step)
        .take(STAT_SAMPLES)
    {
        let m = std::fs::symlink_metadata(snap.join(rel))
            .with_context(|| format!("stat of {rel} failed"))?;
        if m.len() != *size {
            bail!("stat of {rel}: size {} instead of {size}", m.len());
        }
    }
    let stat_secs = t.elapsed().as_secs_f64();

    let (ls_secs, out) = timed(
        "ls -l of the large directory",
        &mut shell(r#"ls -l "$1" | wc -l"#, &[&snap.join("big")]),
    )?;
    let lines: usize = out.trim().parse().unwrap_or(0);
    if lines != BIG_DIR_ENTRIES + 1 {
        bail!(
            "ls -l listed {lines} lines, expected {}",
            BIG_DIR_ENTRIES + 1
        );
    }

    let (find_secs, out) = timed(
        "find over the snapshot",
        &mut shell(r#"find "$1" | wc -l"#, &[snap]),
    )?;
    let entries: usize = out.trim().parse().unwrap_or(0);
    if entries != files + dirs + 1 {
        bail!(
            "find listed {entries} entries, expected {}",
            files + dirs + 1
        );
    }
    Ok((stat_secs, ls_secs, find_secs))
}
