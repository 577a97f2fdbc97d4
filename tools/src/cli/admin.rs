//! `gridback admin …`: the operator's view of the coordinator's records and rules.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Where the admin configuration comes from.
#[derive(Debug, Args, Clone)]
pub struct AdminConfigArg {
    /// Admin configuration file: the coordinator's address and the admin certificate
    /// (written by `gridback local up` as DATA/admin.toml; for a real deployment, point
    /// `tls_dir` at COORDINATOR_DATA/admin).
    #[arg(
        long,
        env = "GRIDBACK_ADMIN_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Operator commands: records (F4), placement rules (F12, F13), subscriptions and
/// resources (F15-F17), requested backups (F18). Every change is written to the global
/// backup log and takes effect without restarting anything.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub config: AdminConfigArg,
    #[command(subcommand)]
    pub command: AdminCmd,
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Every client: location, plan, state, usage (the global client profile).
    Clients,
    /// One client with its usage against its limits, or `client set` to move it.
    Client(ClientArgs),
    /// A client's snapshots (source data records; trees stay encrypted).
    Snapshots {
        /// The client id.
        #[arg(long, value_name = "ID")]
        client: String,
    },
    /// One node: location, capacity, what it holds; or `node set` to change it.
    Node(NodeArgs),
    /// One chunk's sequence: each target with its location and packet, and its sources.
    Chunk {
        /// The chunk id (64 hex digits).
        id: String,
    },
    /// Every chunk a client references (optionally only one snapshot's).
    Chunks {
        /// The client id.
        #[arg(long, value_name = "ID")]
        client: String,
        /// Only chunks of this snapshot.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
    },
    /// The global backup log.
    Log {
        /// Keep printing new entries as they arrive (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        /// Only entries since T: RFC 3339 (2026-11-25T10:00:00Z), a date (2026-11-25) or
        /// a duration ago (10m, 2h, 1d).
        #[arg(long, value_name = "T")]
        since: Option<String>,
    },
    /// Cluster-wide proximity rules.
    #[command(subcommand)]
    Placement(PlacementCmd),
    /// A client's contract: plan, state, quota, bandwidth, threads, transfers, proximity.
    #[command(subcommand)]
    Subscription(SubscriptionCmd),
    /// Backups the coordinator requests from a client's agent (F18).
    #[command(subcommand)]
    Schedule(ScheduleCmd),
}

/// `admin client ID` or `admin client set ID …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClientArgs {
    /// The client id.
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    #[command(subcommand)]
    pub set: Option<ClientSetCmd>,
}

#[derive(Debug, Subcommand)]
pub enum ClientSetCmd {
    /// Change a client's registered location (placement uses it from the next write).
    Set {
        /// The client id.
        #[arg(value_name = "CLIENT_ID")]
        id: String,
        #[command(flatten)]
        place: LocationArgs,
    },
}

/// `admin node ID` or `admin node set ID …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// The node id.
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    #[command(subcommand)]
    pub set: Option<NodeSetCmd>,
}

#[derive(Debug, Subcommand)]
pub enum NodeSetCmd {
    /// Change a node's location or its target storage allocation.
    Set {
        /// The node id.
        #[arg(value_name = "NODE_ID")]
        id: String,
        #[command(flatten)]
        place: LocationArgs,
        /// Target storage allocation (50GB, 2TiB); the node enforces it from its next
        /// heartbeat, and placement never exceeds it.
        #[arg(long, value_name = "SIZE")]
        capacity: Option<String>,
    },
}

/// Location flags.
#[derive(Debug, Args)]
pub struct LocationArgs {
    /// Labels REGION/ZONE/HOST (distance: same host 0, zone 1, region 2, other region 3).
    #[arg(long, value_name = "REGION/ZONE/HOST")]
    pub location: Option<String>,
    /// Coordinates in degrees, for distances in kilometres.
    #[arg(long, value_name = "LAT,LON", allow_hyphen_values = true)]
    pub coords: Option<String>,
}

/// Distance bounds. D is a level 0-3 (0 same host, 1 same zone, 2 same region, 3 other
/// region) or kilometres like `500km` (needs coordinates at both ends).
#[derive(Debug, Args, Default)]
pub struct ProximityArgs {
    /// Smallest distance between any two targets holding packets of one chunk.
    #[arg(long, value_name = "D")]
    pub packet_min: Option<String>,
    /// Largest distance between any two targets holding packets of one chunk.
    #[arg(long, value_name = "D")]
    pub packet_max: Option<String>,
    /// Smallest distance between the source client and each target of its data.
    #[arg(long, value_name = "D")]
    pub backup_min: Option<String>,
    /// Largest distance between the source client and each target of its data.
    #[arg(long, value_name = "D")]
    pub backup_max: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PlacementCmd {
    /// Set cluster-wide bounds (unset ones are kept); applies to new chunks.
    Set {
        #[command(flatten)]
        bounds: ProximityArgs,
        /// Remove every cluster-wide bound before applying the ones given.
        #[arg(long)]
        clear: bool,
    },
    /// Show the cluster-wide bounds.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCmd {
    /// Change a subscription (fields not given are kept). Clients pick changes up within
    /// seconds, without a restart.
    Set(Box<SubscriptionSetArgs>),
    /// Show a subscription with usage.
    Show {
        /// The client id.
        #[arg(value_name = "CLIENT_ID")]
        id: String,
    },
    /// Suspend: the client can browse and restore, new writes get EACCES.
    Suspend {
        /// The client id.
        #[arg(value_name = "CLIENT_ID")]
        id: String,
    },
    /// Resume a suspended subscription.
    Resume {
        /// The client id.
        #[arg(value_name = "CLIENT_ID")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct SubscriptionSetArgs {
    /// The client id.
    #[arg(value_name = "CLIENT_ID")]
    pub id: String,
    /// Plan name.
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,
    /// Source storage allocation (50MB, 2GiB; `none` removes it). Writes past it get
    /// EDQUOT.
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
    /// Upload bandwidth (5MB/s; `none` removes it). Meters the client's own data: sealed
    /// chunk bytes (after dedup, compression and encryption), not the parity the grid adds,
    /// so 5MB/s stores 50 MB of new incompressible data in about 10 s whatever the erasure
    /// coding. Each node also holds the client to this rate for the packets it receives.
    #[arg(long, value_name = "RATE")]
    pub bandwidth_up: Option<String>,
    /// Download bandwidth (5MB/s; `none` removes it). Meters the packets the client fetches
    /// to read its data (k per chunk, its sealed size; hedged extra fetches count too).
    #[arg(long, value_name = "RATE")]
    pub bandwidth_down: Option<String>,
    /// Worker threads for chunking, compression and encryption (`none` removes it).
    #[arg(long, value_name = "N")]
    pub threads: Option<String>,
    /// Concurrent packet transfers (`none` removes it).
    #[arg(long, value_name = "N")]
    pub transfers: Option<String>,
    #[command(flatten)]
    pub bounds: ProximityArgs,
    /// Expiry: RFC 3339, a date (2027-01-01), a duration from now (30d), or `never`.
    #[arg(long, value_name = "TIME")]
    pub expires: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Ask a client's agent to back up PATH every DURATION (the first run is due now).
    Add {
        /// The client id.
        #[arg(long, value_name = "ID")]
        client: String,
        /// Path on the client's machine.
        #[arg(long, value_name = "P")]
        path: String,
        /// Interval (1h, 1d, 30m).
        #[arg(long, value_name = "DURATION")]
        every: String,
    },
    /// List schedules with their last result.
    List {
        /// Only this client's.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
    },
    /// Remove a schedule.
    Remove {
        /// Schedule id.
        id: u64,
    },
}

/// `gridback agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub config: super::ClientConfigArg,
    /// How often to ask the coordinator for requested backups.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub poll: String,
    /// Handle the requests due now, then exit.
    #[arg(long)]
    pub once: bool,
}
