//! `gridback bench`: copy a generated mixed data set into the mount of a local grid and read
//! it back, reporting MB/s, CPU seconds and peak RSS of every process.
//!
//! The data set mixes prose-like text, binary-like files (structured with runs and tables),
//! incompressible random data, a duplicated part (exact copies of earlier files, which dedup
//! must absorb) and many small files. The read phase starts a fresh mount process so that
//! neither the kernel's page cache nor the chunk cache can serve it: every byte comes from
//! the nodes and is verified against the source's BLAKE3.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use gridback_proto::units::{format_size, parse_size};
use serde_json::json;

use super::local::{StartOptions, mount, start};
use crate::cli::BenchArgs;

/// Small files in the data set: what a home directory is mostly made of.
const SMALL_FILES: usize = 400;
/// Size of the generated files, so that several chunks make up each large file.
const LARGE_FILE_BYTES: u64 = 32 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "grid",
        "stores",
        "every",
        "chunk",
        "of",
        "your",
        "files",
        "encrypted",
        "and",
        "erasure",
        "coded",
        "across",
        "nodes",
        "so",
        "that",
        "losing",
        "two",
        "loses",
        "nothing",
        "\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    // Like an executable: tables of small integers, runs of zeros, some random bytes.
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.next() % 4 {
            0 => out.extend(std::iter::repeat_n(0u8, 64 + (rng.next() % 512) as usize)),
            1 => {
                let mut b = vec![0u8; 64];
                rng.fill(&mut b);
                out.extend_from_slice(&b);
            }
            _ => {
                for _ in 0..64 {
                    out.extend_from_slice(&((rng.next() % 4096) as u32).to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// Generate the data set; returns (files with their BLAKE3, total bytes).
fn generate(root: &Path, total: u64) -> Result<(Vec<(PathBuf, blake3::Hash)>, u64)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut files = Vec::new();
    let mut written = 0u64;
    let mut write =
        |rel: PathBuf, data: Vec<u8>, files: &mut Vec<(PathBuf, blake3::Hash)>| -> Result<()> {
            let p = root.join(&rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, &data)?;
            written += data.len() as u64;
            files.push((rel, blake3::hash(&data)));
            Ok(())
        };
    let small_budget = (total / 20).min(SMALL_FILES as u64 * 16 * 1024);
    for i in 0..SMALL_FILES {
        let len = ((small_budget / SMALL_FILES as u64) as usize).max(1) * (1 + i % 3) / 2;
        let data = if i % 2 == 0 {
            text(&mut rng, len)
        } else {
            binary(&mut rng, len)
        };
        write(
            PathBuf::from(format!("small/dir {}/file {i:04}.dat", i % 20)),
            data,
            &mut files,
        )?;
    }
    let large_total = total.saturating_sub(small_budget);
    let dup_share = large_total * 15 / 100;
    let unique = large_total - dup_share;
    let mut produced = 0u64;
    let mut i = 0;
    while produced < unique {
        let len = LARGE_FILE_BYTES.min(unique - produced) as usize;
        let (kind, data) = match i % 3 {
            0 => ("text", text(&mut rng, len)),
            1 => ("binary", binary(&mut rng, len)),
            _ => {
                let mut b = vec![0u8; len];
                rng.fill(&mut b);
                ("random", b)
            }
        };
        write(
            PathBuf::from(format!("large/{kind}-{i:03}.bin")),
            data,
            &mut files,
        )?;
        produced += len as u64;
        i += 1;
    }
    // The duplicated part: copies of earlier large files under other names.
    let originals: Vec<PathBuf> = files
        .iter()
        .filter(|(p, _)| p.starts_with("large"))
        .map(|(p, _)| p.clone())
        .collect();
    let mut dup = 0u64;
    for (j, orig) in originals.iter().cycle().enumerate() {
        if dup >= dup_share || originals.is_empty() {
            break;
        }
        let data = std::fs::read(root.join(orig))?;
        dup += data.len() as u64;
        write(
            PathBuf::from(format!("copies/copy-{j:03}.bin")),
            data,
            &mut files,
        )?;
    }
    Ok((files, written))
}

/// CPU seconds (user + system) and peak RSS of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux we run on.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some((cpu, hwm * 1024))
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .output()
        .context("cannot run cp")?;
    if !out.status.success() {
        bail!("cp -a failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// `gridback bench`.
pub async fn run(a: BenchArgs) -> Result<ExitCode> {
    let size = parse_size(&a.size)?;
    let tmp;
    let work = match &a.workdir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let src = work.join("src");
    let mnt = work.join("mnt");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&mnt)?;
    eprintln!("bench: generating {} of mixed data…", format_size(size));
    let (files, bytes) = generate(&src, size)?;

    let opts = StartOptions {
        nodes: a.nodes,
        node_capacity: 64 << 30,
        k: 4,
        m: 2,
    };
    let mut grid = start(&work.join("grid"), &opts).await?;
    mount(&mut grid, &mnt).await?;
    let target = mnt.join("snapshots/bench");
    std::fs::create_dir(&target).context("cannot open the bench snapshot")?;

    eprintln!(
        "bench: copying {} files ({}) in…",
        files.len(),
        format_size(bytes)
    );
    let t = Instant::now();
    copy_tree(&src, &target)?;
    let write_secs = t.elapsed().as_secs_f64();
    let write_mount = grid.mount.as_ref().and_then(|m| proc_usage(m.pid()));
    let stored = super::status::fetch_status(&grid.layout.client_toml()).await?;

    // Fresh mount for the read phase: no cache can answer.
    if let Some(m) = &mut grid.mount {
        m.stop(std::time::Duration::from_secs(30));
    }
    mount(&mut grid, &mnt).await?;
    eprintln!("bench: reading everything back through a fresh mount…");
    let t = Instant::now();
    let mut read_bytes = 0u64;
    for (rel, hash) in &files {
        let data = std::fs::read(target.join(rel))
            .with_context(|| format!("reading {}", rel.display()))?;
        read_bytes += data.len() as u64;
        if blake3::hash(&data) != *hash {
            grid.stop();
            bail!("{} read back different bytes", rel.display());
        }
    }
    let read_secs = t.elapsed().as_secs_f64();
    let read_mount = grid.mount.as_ref().and_then(|m| proc_usage(m.pid()));
    let coord = proc_usage(grid.coordinator.pid());
    let nodes: Vec<(String, Option<(f64, u64)>)> = grid
        .nodes
        .iter()
        .map(|n| (n.name.clone(), proc_usage(n.pid())))
        .collect();
    grid.stop();

    let packets = stored.stored_bytes;
    let row = |name: &str, u: Option<(f64, u64)>| json!({ "process": name, "cpu_seconds": u.map(|x| x.0), "peak_rss_bytes": u.map(|x| x.1) });
    let mut procs = vec![
        row("mount (write)", write_mount),
        row("mount (read)", read_mount),
        row("coordinator", coord),
    ];
    for (n, u) in &nodes {
        procs.push(row(n, *u));
    }
    let report = json!({
        "data_bytes": bytes,
        "files": files.len(),
        "nodes": a.nodes,
        "erasure": "4+2",
        "write_seconds": write_secs,
        "write_mb_per_s": mbps(bytes, write_secs),
        "read_seconds": read_secs,
        "read_mb_per_s": mbps(read_bytes, read_secs),
        "packet_bytes_on_nodes": packets,
        "packet_bytes_per_data_byte": packets as f64 / bytes.max(1) as f64,
        "processes": procs,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "gridback bench: {} files, {}, {} nodes, 4+2",
        files.len(),
        format_size(bytes),
        a.nodes
    );
    println!(
        "  write (cp -a into the mount)   {:>8.1} MB/s  ({write_secs:.2} s)",
        mbps(bytes, write_secs)
    );
    println!(
        "  read  (fresh mount, verified)  {:>8.1} MB/s  ({read_secs:.2} s)",
        mbps(read_bytes, read_secs)
    );
    println!(
        "  on nodes: {} of packets ({:.2} bytes per data byte, parity and dedup included)",
        format_size(packets),
        packets as f64 / bytes.max(1) as f64
    );
    println!("  {:<16} {:>10} {:>12}", "process", "CPU s", "peak RSS");
    for p in report["processes"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:>10.2} {:>12}",
            p["process"].as_str().unwrap_or("?"),
            p["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
            p["peak_rss_bytes"]
                .as_u64()
                .map(format_size)
                .unwrap_or_else(|| "?".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}
