//! The `write` and `read` phases: `cp -a` of the generated data set into the mount, then
//! every file read back through a fresh mount and checked against the source's BLAKE3.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use gridback_proto::units::format_size;
use serde_json::json;

use super::{Ctx, Section, dataset, mbps, proc_usage, shell, timed};

/// Usage rows of the processes measured here.
type Procs = Vec<(String, Option<(f64, u64)>)>;

/// Run `write`, and `read` when `read` is set.
pub async fn run(ctx: &mut Ctx, size: u64, read: bool, procs: &mut Procs) -> Result<Vec<Section>> {
    let src = ctx.work.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    eprintln!("bench: generating {} of mixed data…", format_size(size));
    let (files, bytes) = dataset::generate(&src, size)?;
    let target = ctx.mnt.join("snapshots/bench");
    std::fs::create_dir(&target).context("cannot open the bench snapshot")?;

    eprintln!(
        "bench: copying {} files ({}) in…",
        files.len(),
        format_size(bytes)
    );
    let (write_secs, _) = timed(
        "cp -a into the mount",
        &mut shell(r#"cp -a "$1/." "$2""#, &[&src, &target]),
    )?;
    procs.push(("mount (write)".into(), ctx.mount_pid().and_then(proc_usage)));
    let status = super::super::status::fetch_status(&ctx.grid.layout.client_toml()).await?;
    let packets = status.stored_bytes;
    let mut out = vec![Section {
        name: "write",
        json: json!({
            "data_bytes": bytes,
            "files": files.len(),
            "seconds": write_secs,
            "mb_per_s": mbps(bytes, write_secs),
            "packet_bytes_on_nodes": packets,
            "packet_bytes_per_data_byte": packets as f64 / bytes.max(1) as f64,
        }),
        text: vec![
            format!(
                "write (cp -a of {} files, {}) {:>8.1} MB/s  ({write_secs:.2} s)",
                files.len(),
                format_size(bytes),
                mbps(bytes, write_secs)
            ),
            format!(
                "on nodes: {} of packets ({:.2} bytes per data byte, parity and dedup included)",
                format_size(packets),
                packets as f64 / bytes.max(1) as f64
            ),
        ],
    }];
    if !read {
        return Ok(out);
    }

    ctx.remount().await?;
    eprintln!("bench: reading everything back through a fresh mount…");
    let t = Instant::now();
    let mut read_bytes = 0u64;
    for (rel, hash) in &files {
        let data = std::fs::read(target.join(rel))
            .with_context(|| format!("reading {}", rel.display()))?;
        read_bytes += data.len() as u64;
        if blake3::hash(&data) != *hash {
            bail!("{} read back different bytes", rel.display());
        }
    }
    let read_secs = t.elapsed().as_secs_f64();
    procs.push(("mount (read)".into(), ctx.mount_pid().and_then(proc_usage)));
    out.push(Section {
        name: "read",
        json: json!({
            "bytes": read_bytes,
            "files_verified": files.len(),
            "seconds": read_secs,
            "mb_per_s": mbps(read_bytes, read_secs),
        }),
        text: vec![format!(
            "read  (fresh mount, verified)   {:>8.1} MB/s  ({read_secs:.2} s)",
            mbps(read_bytes, read_secs)
        )],
    });
    Ok(out)
}
