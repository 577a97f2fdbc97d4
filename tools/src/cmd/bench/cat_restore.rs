//! The `cat-restore` phase: one large file, read with `cat FILE > /dev/null` through a fresh
//! mount (readahead and the chunk cache at work) against `gridback restore SNAP/FILE DEST`
//! (parallel fetches, no FUSE), both from the same nodes. The issue's goal: `cat` at least
//! half as fast as `restore`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use gridback_proto::units::format_size;
use serde_json::json;

use super::dataset::Rng;
use super::{Ctx, Section, mbps, proc_usage, shell, timed};

/// The snapshot and file the phase measures.
const SNAPSHOT: &str = "cat-restore";
/// Name of the file.
const FILE: &str = "large.bin";

/// Usage rows of the processes measured here.
type Procs = Vec<(String, Option<(f64, u64)>)>;

/// Write `len` random bytes to `path`, returning their BLAKE3.
fn write_random(path: &std::path::Path, len: u64) -> Result<blake3::Hash> {
    let mut rng = Rng(0xca7_0001);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(h.finalize())
}

fn hash_file(path: &std::path::Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    )?;
    Ok(h.finalize())
}

/// Run the phase with a file of `size` bytes.
pub async fn run(ctx: &mut Ctx, size: u64, procs: &mut Procs) -> Result<Section> {
    let src = ctx.work.join("cat-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    eprintln!(
        "bench: cat-restore: backing up one {} file…",
        format_size(size)
    );
    let hash = write_random(&src.join(FILE), size)?;
    ctx.backup(&src, SNAPSHOT).await?;
    std::fs::remove_dir_all(&src)?;

    // First visit imports the snapshot's tree; then a fresh mount for the measurement.
    let file = ctx.mnt.join("snapshots").join(SNAPSHOT).join(FILE);
    ctx.remount().await?;
    std::fs::metadata(&file).context("the cat-restore snapshot is not visible")?;
    ctx.remount().await?;

    eprintln!("bench: cat-restore: cat through a fresh mount…");
    let (cat_secs, _) = timed(
        "cat through the mount",
        &mut shell(r#"cat "$1" > /dev/null"#, &[&file]),
    )?;
    procs.push(("mount (cat)".into(), ctx.mount_pid().and_then(proc_usage)));
    if hash_file(&file)? != hash {
        bail!("cat read different bytes than were backed up");
    }

    eprintln!("bench: cat-restore: gridback restore…");
    let dest = ctx.work.join("cat-restored");
    let _ = std::fs::remove_dir_all(&dest);
    let spec = format!("{SNAPSHOT}/{FILE}");
    let (restore_secs, _) = timed(
        "gridback restore",
        ctx.gridback(&["restore", &spec]).arg(&dest).arg("--json"),
    )?;
    let restored = dest.join(FILE);
    if hash_file(&restored)? != hash {
        bail!("restore wrote different bytes than were backed up");
    }
    std::fs::remove_dir_all(&dest)?;

    let cat = mbps(size, cat_secs);
    let restore = mbps(size, restore_secs);
    let ratio = cat / restore.max(1e-9);
    Ok(Section {
        name: "cat_restore",
        json: json!({
            "bytes": size,
            "cat_seconds": cat_secs,
            "cat_mb_per_s": cat,
            "restore_seconds": restore_secs,
            "restore_mb_per_s": restore,
            "cat_to_restore_ratio": ratio,
            "goal_ratio": 0.5,
        }),
        text: vec![
            format!(
                "cat vs restore of one {} file (both verified)",
                format_size(size)
            ),
            format!("  cat (fresh mount)   {cat:>8.1} MB/s  ({cat_secs:.2} s)"),
            format!(
                "  gridback restore    {restore:>8.1} MB/s  ({restore_secs:.2} s, process start included)"
            ),
            format!(
                "  cat / restore       {ratio:>8.2}    (goal ≥ 0.50: {})",
                if ratio >= 0.5 { "met" } else { "NOT met" }
            ),
        ],
    })
}
