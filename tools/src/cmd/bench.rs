//! `gridback bench`: measure a local grid, phase by phase (`--phases`):
//!
//! - `write`: copy a generated mixed data set ([`dataset`]) into the mount with `cp -a`;
//! - `read`: read it all back through a fresh mount process (nothing cached), verified
//!   against the source's BLAKE3;
//! - `browse`: a snapshot of `--browse-files` files, listed (`find | wc -l`), `ls -l` of its
//!   10,000-entry directory and `stat` of sample files through a fresh mount while every
//!   storage node is frozen, which proves that browsing fetches no chunk;
//! - `cat-restore`: one `--size` file read by `cat` through a fresh mount against
//!   `gridback restore` of the same file;
//! - `placement`: the coordinator's placement speed for 100, 1,000 and 10,000 nodes: the pure
//!   function, and one `AllocateChunks` batch through the service with the cached grid view
//!   and with the view rebuilt per batch.
//!
//! Every phase reports MB/s or seconds; the process table gives CPU seconds and peak RSS.

mod browse;
mod cat_restore;
mod copy;
mod dataset;
mod placement;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gridback_fs::backup::{BackupOptions, BackupSummary, backup};
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::progress::NoProgress;
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::units::{format_size, parse_size};
use serde_json::{Value, json};

use super::local::{LocalGrid, StartOptions, mount, start};
use crate::cli::BenchArgs;

/// Every phase, in the order they run.
const PHASES: [&str; 5] = ["write", "read", "browse", "cat-restore", "placement"];
/// How long any one measured command may take before the bench gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a mount process gets to stop before it is killed.
const MOUNT_STOP_GRACE: Duration = Duration::from_secs(30);
/// How long the nodes get to report in again after being frozen.
const NODES_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What one phase measured: a JSON object for `--json` and lines for a person.
pub struct Section {
    /// Key in the JSON report.
    pub name: &'static str,
    /// Figures.
    pub json: Value,
    /// The same figures, for a terminal.
    pub text: Vec<String>,
}

/// The running local grid and where the bench works.
pub struct Ctx {
    /// The grid (its mount, when mounted).
    pub grid: LocalGrid,
    /// Mountpoint.
    pub mnt: PathBuf,
    /// Work directory.
    pub work: PathBuf,
}

impl Ctx {
    /// Stop the mount process (if any) and start a fresh one: no page cache, no chunk cache.
    pub async fn remount(&mut self) -> Result<()> {
        if let Some(m) = &mut self.grid.mount {
            m.stop(MOUNT_STOP_GRACE);
        }
        self.grid.mount = None;
        mount(&mut self.grid, &self.mnt).await
    }

    /// The mount process id.
    pub fn mount_pid(&self) -> Option<u32> {
        self.grid.mount.as_ref().map(|m| m.pid())
    }

    /// Back up `dir` into a new sealed snapshot, in this process, without the mount.
    pub async fn backup(&self, dir: &Path, snapshot: &str) -> Result<BackupSummary> {
        let cfg = ClientConfig::load(&self.grid.layout.client_toml())?;
        let client = GridClient::connect_for(&cfg, "bench").await?;
        let cipher = MasterKeyCipher::new(client.keys());
        let opts = BackupOptions::new(snapshot.to_string());
        let r = backup(
            &client,
            &cipher,
            dir,
            &opts,
            std::sync::Arc::new(NoProgress),
        )
        .await;
        client.close();
        r.with_context(|| format!("backup of {} failed", dir.display()))
    }

    /// Run `gridback ARGS… --config CLIENT` (this executable) and wait for it.
    pub fn gridback(&self, args: &[&str]) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "gridback".into()));
        c.args(args)
            .arg("--config")
            .arg(self.grid.layout.client_toml());
        c
    }
}

/// Run a command to completion with [`COMMAND_TIMEOUT`]; returns (seconds, stdout).
pub fn timed(what: &str, cmd: &mut Command) -> Result<(f64, String)> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = t.elapsed().as_secs_f64();
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("{what} failed ({status}): {}", err.trim());
    }
    Ok((secs, out))
}

/// `sh -c SCRIPT sh ARGS…`: a shell pipeline with its paths passed as arguments.
pub fn shell(script: &str, args: &[&Path]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh").args(args);
    c
}

/// CPU seconds (user + system) and peak RSS of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
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

/// Megabytes (10^6) per second.
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// The phases asked for, in run order; `read` pulls in `write`.
fn selected_phases(asked: &[String]) -> Result<Vec<&'static str>> {
    let mut want: Vec<&str> = Vec::new();
    for p in asked {
        let p = p.trim();
        if p == "all" {
            want.extend(PHASES);
        } else if let Some(known) = PHASES.iter().find(|k| **k == p) {
            want.push(known);
        } else if !p.is_empty() {
            bail!(
                "unknown bench phase {p:?} (phases: {}, or all)",
                PHASES.join(", ")
            );
        }
    }
    if want.contains(&"read") {
        want.push("write");
    }
    if want.is_empty() {
        bail!("--phases is empty (phases: {}, or all)", PHASES.join(", "));
    }
    Ok(PHASES.into_iter().filter(|p| want.contains(p)).collect())
}

/// `gridback bench`.
pub async fn run(a: BenchArgs) -> Result<ExitCode> {
    let size = parse_size(&a.size)?;
    let phases = selected_phases(&a.phases)?;
    let mut sections = Vec::new();
    let mut procs = Vec::new();
    let needs_grid = phases.iter().any(|p| *p != "placement");
    let tmp;
    if needs_grid {
        let work = match &a.workdir {
            Some(w) => {
                std::fs::create_dir_all(w)?;
                w.canonicalize()?
            }
            None => {
                tmp = tempfile::tempdir()?;
                tmp.path().to_path_buf()
            }
        };
        let mnt = work.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let opts = StartOptions {
            nodes: a.nodes,
            node_capacity: 64 << 30,
            k: 4,
            m: 2,
        };
        let mut grid = start(&work.join("grid"), &opts).await?;
        if let Err(e) = mount(&mut grid, &mnt).await {
            grid.stop();
            return Err(e);
        }
        let mut ctx = Ctx { grid, mnt, work };
        let r = run_grid_phases(&mut ctx, &phases, size, &a, &mut procs).await;
        let coord = proc_usage(ctx.grid.coordinator.pid());
        procs.push(("coordinator".to_string(), coord));
        for n in &ctx.grid.nodes {
            procs.push((n.name.clone(), proc_usage(n.pid())));
        }
        ctx.grid.stop();
        sections.extend(r?);
    }
    if phases.contains(&"placement") {
        sections.push(placement::run()?);
    }
    report(&a, &phases, sections, procs)
}

async fn run_grid_phases(
    ctx: &mut Ctx,
    phases: &[&str],
    size: u64,
    a: &BenchArgs,
    procs: &mut Vec<(String, Option<(f64, u64)>)>,
) -> Result<Vec<Section>> {
    let mut out = Vec::new();
    if phases.contains(&"write") {
        out.extend(copy::run(ctx, size, phases.contains(&"read"), procs).await?);
    }
    if phases.contains(&"browse") {
        out.push(browse::run(ctx, a.browse_files, procs).await?);
    }
    if phases.contains(&"cat-restore") {
        out.push(cat_restore::run(ctx, size, procs).await?);
    }
    Ok(out)
}

fn report(
    a: &BenchArgs,
    phases: &[&str],
    sections: Vec<Section>,
    procs: Vec<(String, Option<(f64, u64)>)>,
) -> Result<ExitCode> {
    let rows: Vec<Value> = procs
        .iter()
        .map(|(name, u)| {
            json!({ "process": name, "cpu_seconds": u.map(|x| x.0), "peak_rss_bytes": u.map(|x| x.1) })
        })
        .collect();
    if a.json {
        let mut v = json!({ "nodes": a.nodes, "erasure": "4+2", "phases": phases });
        for s in &sections {
            v[s.name] = s.json.clone();
        }
        v["processes"] = json!(rows);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "gridback bench: {} nodes, 4+2, phases {}",
        a.nodes,
        phases.join(",")
    );
    for s in &sections {
        for l in &s.text {
            println!("  {l}");
        }
    }
    if !procs.is_empty() {
        println!("  {:<20} {:>10} {:>12}", "process", "CPU s", "peak RSS");
        for (name, u) in &procs {
            println!(
                "  {:<20} {:>10.2} {:>12}",
                name,
                u.map(|x| x.0).unwrap_or(f64::NAN),
                u.map(|x| format_size(x.1)).unwrap_or_else(|| "?".into())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::selected_phases;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn phases_run_in_order_and_read_needs_write() {
        assert_eq!(selected_phases(&s(&["read"])).unwrap(), ["write", "read"]);
        assert_eq!(
            selected_phases(&s(&["placement", "browse"])).unwrap(),
            ["browse", "placement"]
        );
        assert_eq!(selected_phases(&s(&["all"])).unwrap().len(), 5);
        let e = selected_phases(&s(&["brows"])).unwrap_err().to_string();
        assert!(
            e.contains("unknown bench phase") && e.contains("cat-restore"),
            "{e}"
        );
        assert!(selected_phases(&s(&[""])).is_err());
    }
}
