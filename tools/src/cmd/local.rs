//! `gridback local up`: a whole grid on this machine, one process per role, mounted.
//!
//! Layout of `--data DIR`:
//! ```text
//! DIR/coordinator.toml   DIR/coordinator/   coordinator state (CA, keys, meta.redb)
//! DIR/nodes/node-NN.toml DIR/nodes/node-NN/ each node's allocated storage
//! DIR/client.toml        DIR/client/        client state (certificate, keys, metadata, spool)
//! DIR/admin.toml                            admin config (`gridback admin --config`)
//! DIR/logs/*.log                            one log per process
//! ```
//! Every address is bound on 127.0.0.1 port 0 and discovered, so a restart never collides
//! with a busy port; node and client configs are rewritten with the coordinator's address
//! at each start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridback_proto::units::parse_size;

mod topology;
pub use topology::Topology;
use topology::location_toml;

use super::status::fetch_status;
use crate::cli::LocalUpArgs;
use crate::procs::{Proc, wait_for};

/// How long each daemon gets to come up before `local up` gives up and says why.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each daemon gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Paths of a local grid.
#[derive(Debug, Clone)]
pub struct LocalLayout {
    /// The `--data` directory.
    pub root: PathBuf,
}

impl LocalLayout {
    /// Coordinator config.
    pub fn coordinator_toml(&self) -> PathBuf {
        self.root.join("coordinator.toml")
    }
    /// Coordinator data dir.
    pub fn coordinator_dir(&self) -> PathBuf {
        self.root.join("coordinator")
    }
    /// File the coordinator writes its bound address to.
    pub fn coordinator_addr_file(&self) -> PathBuf {
        self.coordinator_dir().join("coordinator.addr")
    }
    /// Node `i` (1-based) config.
    pub fn node_toml(&self, i: usize) -> PathBuf {
        self.root.join("nodes").join(format!("node-{i:02}.toml"))
    }
    /// Node `i` data dir.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.root.join("nodes").join(format!("node-{i:02}"))
    }
    /// Client config.
    pub fn client_toml(&self) -> PathBuf {
        self.root.join("client.toml")
    }
    /// Client state dir.
    pub fn client_dir(&self) -> PathBuf {
        self.root.join("client")
    }
    /// Admin config.
    pub fn admin_toml(&self) -> PathBuf {
        self.root.join("admin.toml")
    }
    /// Log of a process.
    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// Refuse a mountpoint that does not exist, is not a directory or is not empty; clear a
/// stale FUSE mount left by a killed mount process.
pub fn check_mountpoint(mount: &Path) -> Result<()> {
    match std::fs::metadata(mount) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mount = %mount.display(), "clearing a stale mount left by a killed process");
            nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("cannot clear the stale mount at {}", mount.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mountpoint {} does not exist (create an empty directory first)",
                mount.display()
            )
        }
        Err(e) => bail!("cannot use mountpoint {}: {e}", mount.display()),
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory", mount.display()),
        Ok(_) => {}
    }
    let mut entries = std::fs::read_dir(mount)
        .with_context(|| format!("cannot read mountpoint {}", mount.display()))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty (gridback mounts only on an empty directory)",
            mount.display()
        );
    }
    Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The running processes of a local grid.
#[derive(Debug)]
pub struct LocalGrid {
    /// Paths.
    pub layout: LocalLayout,
    /// Coordinator process.
    pub coordinator: Proc,
    /// Coordinator address.
    pub coordinator_addr: String,
    /// Node processes.
    pub nodes: Vec<Proc>,
    /// Mount process, once mounted.
    pub mount: Option<Proc>,
    /// Client agent process, once started.
    pub agent: Option<Proc>,
}

impl LocalGrid {
    /// Stop everything: the agent, then unmount, then the nodes, then the coordinator.
    pub fn stop(&mut self) {
        if let Some(a) = &mut self.agent {
            a.stop(STOP_GRACE);
        }
        if let Some(m) = &mut self.mount {
            m.stop(STOP_GRACE);
        }
        for n in &mut self.nodes {
            n.stop(STOP_GRACE);
        }
        self.coordinator.stop(STOP_GRACE);
    }
}

/// Options for [`start`].
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Capacity of each node.
    pub node_capacity: u64,
    /// Erasure k.
    pub k: u8,
    /// Erasure m.
    pub m: u8,
}

/// Start (or restart) the coordinator, the nodes and the client of a local grid, and wait
/// until every node has reported in. Does not mount.
pub async fn start(data: &Path, opts: &StartOptions) -> Result<LocalGrid> {
    start_with(data, opts, None).await
}

/// [`start`], with simulated locations for the nodes and the client.
pub async fn start_with(
    data: &Path,
    opts: &StartOptions,
    topology: Option<&Topology>,
) -> Result<LocalGrid> {
    if let Some(t) = topology
        && t.nodes.len() != opts.nodes
    {
        bail!(
            "the topology names {} nodes but {} were asked for",
            t.nodes.len(),
            opts.nodes
        );
    }
    let client_location = topology
        .and_then(|t| t.client.as_ref())
        .map(location_toml)
        .unwrap_or_default();
    if opts.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let data = data.canonicalize()?;
    let layout = LocalLayout { root: data.clone() };

    // Coordinator.
    let cdir = layout.coordinator_dir();
    gridback_coordinator::init_data_dir(&cdir)
        .with_context(|| format!("cannot prepare the coordinator in {}", cdir.display()))?;
    let _ = std::fs::remove_file(layout.coordinator_addr_file());
    let ctext = format!(
        "# gridback coordinator of a local grid (written by `gridback local up`)\n\
         data_dir = {}\nlisten_addr = \"127.0.0.1:0\"\naddr_file = {}\nerasure_k = {}\nerasure_m = {}\n",
        toml_str(&cdir),
        toml_str(&layout.coordinator_addr_file()),
        opts.k,
        opts.m
    );
    write_if_changed(&layout.coordinator_toml(), &ctext)?;
    let ctoml = layout.coordinator_toml().display().to_string();
    let mut coordinator = Proc::spawn_self(
        "coordinator",
        &["coordinator", "run", "--config", &ctoml],
        &layout.log("coordinator"),
    )?;
    let addr_file = layout.coordinator_addr_file();
    let coordinator_addr = wait_for("the coordinator to listen", START_TIMEOUT, || {
        coordinator.check_alive()?;
        Ok(std::fs::read_to_string(&addr_file)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    })
    .await?;

    let token_file = cdir.join("join-token");
    let ca_file = cdir.join("ca.crt");

    // Client identity and config.
    let client_dir = layout.client_dir();
    let tls_dir = client_dir.join("tls");
    if !tls_dir.join("client.crt").exists() {
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read the join token {}", token_file.display()))?;
        gridback_fs::join::join_client(
            &coordinator_addr,
            &ca_file,
            token.trim(),
            &tls_dir,
            "local-client",
        )
        .await
        .context("the client could not join the grid")?;
    }
    let key_file = client_dir.join("keys.toml");
    if !key_file.exists() {
        gridback_fs::keys::ClientKeys::generate()
            .save(&key_file)
            .with_context(|| format!("cannot write client keys to {}", key_file.display()))?;
    }
    let client_text = format!(
        "# gridback client of a local grid (written by `gridback local up`)\n\
         # keys.toml in the state dir is this client's recovery key: keep a copy.\n\
         coordinator_addr = \"{coordinator_addr}\"\nstate_dir = {}\n{client_location}",
        toml_str(&client_dir)
    );
    write_if_changed(&layout.client_toml(), &client_text)?;
    let admin_text = format!(
        "# gridback admin config of a local grid (written by `gridback local up`)\n\
         # use: gridback admin clients --config {}\n\
         coordinator_addr = \"{coordinator_addr}\"\ntls_dir = {}\n",
        layout.admin_toml().display(),
        toml_str(&gridback_coordinator::admin_tls_dir(&cdir))
    );
    write_if_changed(&layout.admin_toml(), &admin_text)?;

    // Nodes.
    let mut nodes = Vec::new();
    for i in 1..=opts.nodes {
        let ndir = layout.node_dir(i);
        std::fs::create_dir_all(&ndir)?;
        let ntext = format!(
            "# gridback storage node of a local grid (written by `gridback local up`)\n\
             data_dir = {}\ncapacity = \"{}\"\nlisten_addr = \"127.0.0.1:0\"\n\
             coordinator_addr = \"{coordinator_addr}\"\nca_file = {}\njoin_token_file = {}\n\
             label = \"node-{i:02}\"\nheartbeat_interval = \"1s\"\n{}",
            toml_str(&ndir),
            opts.node_capacity,
            toml_str(&ca_file),
            toml_str(&token_file),
            topology
                .map(|t| location_toml(&t.nodes[i - 1]))
                .unwrap_or_default(),
        );
        write_if_changed(&layout.node_toml(i), &ntext)?;
        let ntoml = layout.node_toml(i).display().to_string();
        let name = format!("node-{i:02}");
        nodes.push(Proc::spawn_self(
            &name,
            &["node", "run", "--config", &ntoml],
            &layout.log(&name),
        )?);
    }
    let mut grid = LocalGrid {
        layout,
        coordinator,
        coordinator_addr,
        nodes,
        mount: None,
        agent: None,
    };
    let client_toml = grid.layout.client_toml();
    let want: Vec<u32> = grid.nodes.iter().map(|n| n.pid()).collect();
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        grid.coordinator.check_alive()?;
        for n in &mut grid.nodes {
            n.check_alive()?;
        }
        if let Ok(s) = fetch_status(&client_toml).await {
            let up = s
                .nodes
                .iter()
                .filter(|n| {
                    n.state == gridback_proto::coord_api::NodeState::Up && want.contains(&n.pid)
                })
                .count();
            if up == want.len() {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            grid.stop();
            bail!(
                "timed out waiting for {} nodes to report in; see {}",
                want.len(),
                grid.layout.root.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(grid)
}

/// Start the mount process and wait until the mount answers.
pub async fn mount(grid: &mut LocalGrid, mountpoint: &Path) -> Result<()> {
    let mp = mountpoint.display().to_string();
    let cfg = grid.layout.client_toml().display().to_string();
    let mut m = Proc::spawn_self(
        "mount",
        &["mount", &mp, "--config", &cfg],
        &grid.layout.log("mount"),
    )?;
    let snapshots = mountpoint.join("snapshots");
    let r = wait_for("the mount to answer", START_TIMEOUT, || {
        m.check_alive()?;
        Ok(snapshots.is_dir().then_some(()))
    })
    .await;
    grid.mount = Some(m);
    r
}

/// Start the client agent (requested backups, F18).
pub fn start_agent(grid: &mut LocalGrid) -> Result<()> {
    let cfg = grid.layout.client_toml().display().to_string();
    grid.agent = Some(Proc::spawn_self(
        "agent",
        &["agent", "--config", &cfg],
        &grid.layout.log("agent"),
    )?);
    Ok(())
}

/// Default number of nodes of a local grid.
const DEFAULT_NODES: usize = 6;

/// `gridback local up`.
pub async fn up(args: LocalUpArgs, stop: &super::StopSignal) -> Result<ExitCode> {
    check_mountpoint(&args.mount)?;
    let mountpoint = args.mount.canonicalize()?;
    let topology = args.topology.as_deref().map(Topology::load).transpose()?;
    let nodes = match (&topology, args.nodes) {
        (Some(t), Some(n)) if n != t.nodes.len() => bail!(
            "--nodes {n} but the topology file names {} nodes (leave --nodes out)",
            t.nodes.len()
        ),
        (Some(t), _) => t.nodes.len(),
        (None, n) => n.unwrap_or(DEFAULT_NODES),
    };
    let opts = StartOptions {
        nodes,
        node_capacity: parse_size(&args.node_capacity)?,
        k: args.erasure_k,
        m: args.erasure_m,
    };
    let mut grid = match start_with(&args.data, &opts, topology.as_ref()).await {
        Ok(g) => g,
        Err(e) => return Err(e.context("the local grid did not start")),
    };
    if let Err(e) = mount(&mut grid, &mountpoint).await {
        grid.stop();
        return Err(e.context("the mount did not start"));
    }
    if !args.no_agent
        && let Err(e) = start_agent(&mut grid)
    {
        grid.stop();
        return Err(e.context("the client agent did not start"));
    }
    print_summary(&grid, &mountpoint).await;

    // Run until asked to stop, or until a process we cannot do without dies.
    let code = loop {
        tokio::select! {
            _ = stop.wait() => break ExitCode::SUCCESS,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Some(m) = &mut grid.mount
            && let Some(status) = m.exited()
        {
            eprintln!(
                "gridback: the mount process exited ({status}); see {}",
                m.log.display()
            );
            break ExitCode::FAILURE;
        }
        if let Some(status) = grid.coordinator.exited() {
            eprintln!(
                "gridback: the coordinator exited ({status}); see {}",
                grid.coordinator.log.display()
            );
            break ExitCode::FAILURE;
        }
        if let Some(a) = &mut grid.agent
            && let Some(status) = a.exited()
        {
            tracing::warn!(%status, log = %a.log.display(), "the client agent exited; requested backups will not run");
            grid.agent = None;
        }
        for n in &mut grid.nodes {
            if let Some(status) = n.exited() {
                tracing::warn!(node = %n.name, %status, "node process exited; the grid runs degraded");
            }
        }
    };
    eprintln!("gridback: unmounting and stopping the local grid…");
    grid.stop();
    eprintln!("gridback: stopped.");
    Ok(code)
}

async fn print_summary(grid: &LocalGrid, mountpoint: &Path) {
    let l = &grid.layout;
    println!("gridback local grid is up");
    println!("  data         {}", l.root.display());
    println!(
        "  coordinator  {:<21} pid {:<7} log {}",
        grid.coordinator_addr,
        grid.coordinator.pid(),
        grid.coordinator.log.display()
    );
    let status = fetch_status(&l.client_toml()).await.ok();
    for n in &grid.nodes {
        let addr = status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|x| x.pid == n.pid()))
            .map(|x| x.addr.clone())
            .unwrap_or_else(|| "?".into());
        println!(
            "  {:<12} {:<21} pid {:<7} log {}",
            n.name,
            addr,
            n.pid(),
            n.log.display()
        );
    }
    if let Some(s) = &status
        && let Some(c) = s.client
    {
        println!("  client       {c}");
    }
    println!("  config       {}", l.client_toml().display());
    println!("  admin        {}", l.admin_toml().display());
    if let Some(a) = &grid.agent {
        println!(
            "  agent        {:<21} pid {:<7} log {}",
            "",
            a.pid(),
            a.log.display()
        );
    }
    if let Some(m) = &grid.mount {
        println!(
            "  mount        {:<21} pid {:<7} log {}",
            mountpoint.display(),
            m.pid(),
            m.log.display()
        );
    }
    let cfg = l.client_toml();
    println!();
    println!("Try:");
    println!("  mkdir {}/snapshots/today", mountpoint.display());
    println!(
        "  cp -a ~/Documents {}/snapshots/today/",
        mountpoint.display()
    );
    println!("  gridback snapshot seal today --config {}", cfg.display());
    println!("  gridback status --config {}", cfg.display());
    println!("Press Ctrl-C to unmount and stop.");
}
