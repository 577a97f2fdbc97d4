//! The command line: one `gridback` binary for every role.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod admin;
pub use admin::*;

/// gridback: a backup filesystem over a grid of storage nodes.
///
/// Copy files into MOUNT/snapshots/NAME, seal the snapshot, browse any old snapshot as
/// ordinary files. Data is chunked, deduplicated, compressed, encrypted and erasure-coded
/// across storage nodes; only your keys can read it back.
///
/// Start here:  gridback local up --nodes 6 --data ~/gridback --mount ~/gridback-mnt
#[derive(Debug, Parser)]
#[command(
    name = "gridback",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole grid on this machine (coordinator, nodes, client, mount).
    #[command(subcommand)]
    Local(LocalCmd),
    /// Run the coordinator (global sequence manager).
    #[command(subcommand)]
    Coordinator(CoordinatorCmd),
    /// Run a storage node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Join a grid as a client: get a certificate, create keys, write a client config.
    Join(JoinArgs),
    /// Mount the grid at MOUNTPOINT (foreground; Ctrl-C unmounts).
    Mount(MountArgs),
    /// List, open and seal snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Show the grid: coordinator, nodes, capacity, health.
    Status(StatusArgs),
    /// Back up a directory into a new sealed snapshot, without the mount.
    Backup(BackupArgs),
    /// Restore a sealed snapshot (or a path inside it) into a directory.
    Restore(RestoreArgs),
    /// Operator commands: records, placement rules, subscriptions, requested backups.
    Admin(AdminArgs),
    /// Run the client agent: pick up backups the coordinator requests, run and seal them.
    Agent(AgentArgs),
    /// Measure throughput, CPU and memory of a local grid.
    Bench(BenchArgs),
    /// Print a configuration file with every default filled in.
    PrintConfig(PrintConfigArgs),
}

/// Where the client configuration comes from.
#[derive(Debug, Args, Clone)]
pub struct ClientConfigArg {
    /// Client configuration file (written by `gridback local up` or `gridback join`).
    #[arg(long, env = "GRIDBACK_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LocalCmd {
    /// Start a coordinator and N storage nodes on 127.0.0.1 (one process each), join a
    /// client, and mount. Ctrl-C or SIGTERM unmounts and stops everything. Running it again
    /// with the same --data brings back the same grid and snapshots.
    Up(LocalUpArgs),
}

#[derive(Debug, Args)]
pub struct LocalUpArgs {
    /// Number of storage nodes (default 6, or one per `node` line of --topology).
    #[arg(long, env = "GRIDBACK_NODES")]
    pub nodes: Option<usize>,
    /// Simulated locations: a file of lines `node REGION/ZONE/HOST [LAT,LON]` (one per node,
    /// in order) and `client REGION/ZONE/HOST [LAT,LON]`; `#` starts a comment.
    #[arg(long, env = "GRIDBACK_TOPOLOGY", value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Do not start the client agent (which runs backups the coordinator requests).
    #[arg(long)]
    pub no_agent: bool,
    /// Directory holding the whole grid's state (created if missing).
    #[arg(long, env = "GRIDBACK_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Empty directory to mount the filesystem on.
    #[arg(long, env = "GRIDBACK_MOUNT", value_name = "DIR")]
    pub mount: PathBuf,
    /// Allocated storage of each node.
    #[arg(
        long,
        default_value = "20GiB",
        value_name = "SIZE",
        help_heading = "Grid"
    )]
    pub node_capacity: String,
    /// Data packets per chunk.
    #[arg(long, default_value_t = 4, help_heading = "Grid")]
    pub erasure_k: u8,
    /// Parity packets per chunk (the number of nodes that may be lost).
    #[arg(long, default_value_t = 2, help_heading = "Grid")]
    pub erasure_m: u8,
    /// Exit after everything is up and the mount answers (for scripts and tests that only
    /// need the grid prepared); the processes keep running.
    #[arg(long, hide = true)]
    pub detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum CoordinatorCmd {
    /// Run the coordinator daemon.
    Run {
        /// Coordinator configuration file.
        #[arg(long, env = "GRIDBACK_COORDINATOR_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Run a storage node daemon.
    Run {
        /// Node configuration file.
        #[arg(long, env = "GRIDBACK_NODE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Coordinator address (host:port).
    #[arg(long)]
    pub coordinator: String,
    /// Cluster CA certificate (PEM) to trust.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// File holding the join token.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Directory for this client's state (certificates, keys, metadata cache, spool).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Key file of another client whose dedup domain to share (cross-client dedup).
    #[arg(long, value_name = "FILE")]
    pub domain_from: Option<PathBuf>,
    /// Where to write the client configuration.
    #[arg(long, value_name = "FILE")]
    pub write_config: PathBuf,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub config: ClientConfigArg,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots with their state.
    List {
        #[command(flatten)]
        config: ClientConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Open a new writable snapshot (same as `mkdir MOUNT/snapshots/NAME`).
    Create {
        /// Name.
        name: String,
        /// Start as a cheap metadata clone of this snapshot.
        #[arg(long, value_name = "OLD")]
        from: Option<String>,
        #[command(flatten)]
        config: ClientConfigArg,
    },
    /// Make a snapshot read-only and durable.
    Seal {
        /// Name.
        name: String,
        /// Seal even while files in it are open for writing: everything written to them so
        /// far is stored and sealed, and later writes through those open handles fail with
        /// EROFS.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ClientConfigArg,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ClientConfigArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Directory to back up.
    pub path: PathBuf,
    /// Name of the new snapshot.
    #[arg(long, value_name = "NAME")]
    pub snapshot: String,
    /// Previous backup of the same directory: files with the same path, size, mtime and
    /// inode number are not read again.
    #[arg(long, value_name = "OLD")]
    pub from: Option<String>,
    /// Leave out paths matching this glob (relative to PATH, or an entry's name; `*`
    /// matches `/` too). Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Directories listed and stat'ed at once while walking PATH (more helps on network
    /// filesystems and cold disks).
    #[arg(long, value_name = "N", default_value_t = gridback_fs::backup::DEFAULT_WALK_THREADS as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub walk_threads: u16,
    /// Print a one-line JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ClientConfigArg,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// What to restore: SNAPSHOT, or SNAPSHOT/PATH for one directory, file or symlink.
    #[arg(value_name = "SNAPSHOT[/PATH]")]
    pub source: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite or
    /// resuming an interrupted restore of the same SNAPSHOT[/PATH]).
    pub dest: PathBuf,
    /// Write into a non-empty DEST: files with the same size and mtime are kept, others
    /// replaced; nothing is deleted.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a one-line JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ClientConfigArg,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bytes of generated data to copy in (write and read phases), and the size of the one
    /// file the cat-restore phase reads.
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    pub size: String,
    /// Storage nodes in the local grid.
    #[arg(long, default_value_t = 6)]
    pub nodes: usize,
    /// Work directory (default: a temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Phases to run, comma-separated: write, read (needs write), browse, cat-restore,
    /// placement; or `all` (about two minutes with the defaults on a 2-core machine).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        value_name = "LIST"
    )]
    pub phases: Vec<String>,
    /// Files in the browse phase's snapshot.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub browse_files: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PrintConfigArgs {
    /// Which configuration: client, node or coordinator.
    #[arg(value_parser = ["client", "node", "coordinator"])]
    pub which: String,
}
