//! Requests the coordinator serves: joining, node heartbeats, the client's batched chunk
//! protocol (dedup query, allocate, commit, locate), snapshots, status and the backup log.
//!
//! Every chunk request is batched: a client sends hundreds of chunks per round trip.

use serde::{Deserialize, Serialize};

use crate::admin_api::{
    AdminChunk, AdminChunks, AdminClient, AdminClientSet, AdminClients, AdminNode, AdminNodeSet,
    AdminPlacementGet, AdminPlacementSet, AdminSnapshotList, AdminSnapshots, AdminSubscriptionSet,
    AdminSubscriptionShow, AdminSubscriptionSuspend, ChunkView, ChunkViews, ClientDetail,
    ClientProfiles, NodeDetail, PlacementRules,
};
use crate::ids::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};
use crate::location::Location;
use crate::order::SignedOrder;
use crate::schedule_api::{
    BackupRequests, ScheduleAdd, ScheduleList, SchedulePoll, ScheduleRemove, ScheduleReport,
    Schedules,
};
use crate::subscription::{ClientTerms, Limits};
use crate::wire::Rpc;

/// The coordinator service's dispatch enum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordRequest {
    /// Join the grid with a token (the only request allowed without a certificate).
    Join(Join),
    /// A node announces itself and its usage.
    NodeHeartbeat(NodeHeartbeat),
    /// A client says hello.
    ClientHello(ClientHello),
    /// Which of these chunks are already stored?
    QueryChunks(QueryChunks),
    /// Sequences and put orders for new chunks.
    AllocateChunks(AllocateChunks),
    /// New targets for packets whose upload failed.
    ReplaceTargets(ReplaceTargets),
    /// Record uploaded chunks and references to existing ones.
    CommitChunks(CommitChunks),
    /// Where are these chunks, with get orders.
    LocateChunks(LocateChunks),
    /// Open a snapshot.
    SnapshotCreate(SnapshotCreate),
    /// This client's snapshots.
    SnapshotList(SnapshotList),
    /// Make a snapshot immutable, storing its encrypted tree.
    SnapshotSeal(SnapshotSeal),
    /// One snapshot with its tree reference.
    SnapshotGet(SnapshotGet),
    /// Grid status.
    Status(Status),
    /// Entries of the global backup log.
    BackupLog(BackupLogQuery),
    /// A client refreshes its terms (subscription, limits, usage).
    ClientPoll(ClientPoll),
    /// Admin: every client.
    AdminClients(AdminClients),
    /// Admin: one client in detail.
    AdminClient(AdminClient),
    /// Admin: a client's snapshots.
    AdminSnapshots(AdminSnapshots),
    /// Admin: one node in detail.
    AdminNode(AdminNode),
    /// Admin: one chunk's sequence and sources.
    AdminChunk(AdminChunk),
    /// Admin: every chunk of a client (or snapshot).
    AdminChunks(AdminChunks),
    /// Admin: change a node's location or capacity.
    AdminNodeSet(AdminNodeSet),
    /// Admin: change a client's location.
    AdminClientSet(AdminClientSet),
    /// Admin: change the cluster-wide proximity rules.
    AdminPlacementSet(AdminPlacementSet),
    /// Admin: read the cluster-wide proximity rules.
    AdminPlacementGet(AdminPlacementGet),
    /// Admin: change a subscription.
    AdminSubscriptionSet(AdminSubscriptionSet),
    /// Admin: show a subscription.
    AdminSubscriptionShow(AdminSubscriptionShow),
    /// Admin: suspend or resume a subscription.
    AdminSubscriptionSuspend(AdminSubscriptionSuspend),
    /// Admin: add a backup schedule.
    ScheduleAdd(ScheduleAdd),
    /// Admin (all) or client (its own): list schedules.
    ScheduleList(ScheduleList),
    /// Admin: remove a schedule.
    ScheduleRemove(ScheduleRemove),
    /// Client agent: due backup requests.
    SchedulePoll(SchedulePoll),
    /// Client agent: a finished run.
    ScheduleReport(ScheduleReport),
}

/// Who a certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A storage node.
    Node,
    /// A source client.
    Client,
    /// The operator (issued once, at `coordinator init`; never through a join token).
    Admin,
}

/// Join request. The joiner generated its own key; the private key never leaves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    /// One-time (or reusable, per coordinator config) join token.
    pub token: String,
    /// The role asked for.
    pub role: Role,
    /// DER-encoded PKCS#10 certificate signing request.
    #[serde(with = "serde_bytes")]
    pub csr_der: Vec<u8>,
    /// Free-form label (host name) for records and logs.
    pub label: String,
}

/// Answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    /// Role granted.
    pub role: Role,
    /// Assigned id (a `NodeId` for nodes, a `ClientId` for clients).
    pub id: [u8; 16],
    /// Id of the grid (also stored in every data dir, to refuse mixing grids).
    pub grid: [u8; 16],
    /// The issued certificate (DER).
    #[serde(with = "serde_bytes")]
    pub cert_der: Vec<u8>,
    /// The cluster CA certificate (DER).
    #[serde(with = "serde_bytes")]
    pub ca_der: Vec<u8>,
    /// Raw Ed25519 public key that signs orders.
    #[serde(with = "serde_bytes")]
    pub order_public_key: Vec<u8>,
}

/// Periodic node announcement (also the first registration of its address).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// Address clients should dial (`ip:port`).
    pub advertise_addr: String,
    /// Allocated storage.
    pub capacity_bytes: u64,
    /// Bytes used by packets.
    pub used_bytes: u64,
    /// Packets held.
    pub packet_count: u64,
    /// Process id, for `gridback status`.
    pub pid: u32,
    /// Location from the node's config (an operator override at the coordinator wins).
    pub location: Location,
}

/// Limits a node enforces for one client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// The client's certificate.
    pub client: CertFingerprint,
    /// Its limits (bandwidth per direction, concurrent transfers).
    pub limits: Limits,
    /// Whether the client may store new packets (its subscription is active).
    pub writes_allowed: bool,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The node's id as the coordinator knows it.
    pub node: NodeId,
    /// Current order key.
    #[serde(with = "serde_bytes")]
    pub order_public_key: Vec<u8>,
    /// Grid id.
    pub grid: [u8; 16],
    /// Target storage allocation set by an operator (overrides the node's config).
    pub capacity_bytes: Option<u64>,
    /// Per-client limits to enforce (clients without an entry are unlimited).
    pub client_limits: Vec<ClientLimits>,
}

/// Client greeting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientHello {
    /// Process id of the client (mount or tool).
    pub pid: u32,
    /// What the process is (`mount`, `backup`, `status`…), for records.
    pub purpose: String,
    /// Location from the client's config (an operator override at the coordinator wins).
    pub location: Location,
}

/// A client refreshes its terms; sent every few seconds by long-running clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientPoll;

/// Answer to a client greeting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientWelcome {
    /// This client's id.
    pub client: ClientId,
    /// Grid id.
    pub grid: [u8; 16],
    /// Default data packets per chunk.
    pub erasure_k: u8,
    /// Default parity packets per chunk.
    pub erasure_m: u8,
    /// Subscription, limits, usage and location.
    pub terms: ClientTerms,
}

/// Dedup query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryChunks {
    /// Chunk ids to look up.
    pub ids: Vec<ChunkId>,
}

/// Answer to a dedup query: `present[i]` is true when `ids[i]` is already stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkPresence {
    /// One flag per queried id.
    pub present: Vec<bool>,
}

/// One chunk to place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkAlloc {
    /// Its identifier.
    pub id: ChunkId,
    /// Size of the padded encrypted blob that will be split into packets.
    pub blob_bytes: u64,
}

/// Ask for sequences and put orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocateChunks {
    /// Chunks to place.
    pub chunks: Vec<ChunkAlloc>,
    /// Nodes the client could not reach recently (left out of the sequences).
    pub exclude: Vec<NodeId>,
}

/// A packet's destination with its put (or get) order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// Packet index: `0..k` are data packets, `k..k+m` parity.
    pub index: u8,
    /// The node.
    pub node: NodeId,
    /// Where to reach it.
    pub addr: String,
    /// The signed order (names the packet and its size).
    pub order: SignedOrder,
}

/// The placement of one chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    /// The chunk.
    pub id: ChunkId,
    /// Data packets.
    pub k: u8,
    /// Parity packets (with `k == 1`, the packets are plain replicas).
    pub m: u8,
    /// Size of every packet.
    pub shard_bytes: u64,
    /// `k + m` targets in sequence order.
    pub targets: Vec<Target>,
}

/// Answer to an allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocations {
    /// One allocation per requested chunk, in request order.
    pub chunks: Vec<Allocation>,
}

/// New targets for some packets of a chunk after failed uploads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplaceTargets {
    /// The chunk.
    pub id: ChunkId,
    /// Packet size.
    pub shard_bytes: u64,
    /// Packet indices that need a new home.
    pub indices: Vec<u8>,
    /// Nodes to leave out (those that failed, and those already holding a packet).
    pub exclude: Vec<NodeId>,
}

/// Answer: one target per requested index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replacements {
    /// New targets.
    pub targets: Vec<Target>,
}

/// Where one packet was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketPlacement {
    /// Packet index.
    pub index: u8,
    /// Node that acknowledged it.
    pub node: NodeId,
    /// Its name on the node.
    pub packet: PacketName,
    /// BLAKE3 of the packet bytes.
    pub checksum: [u8; 32],
}

/// A chunk whose packets are all durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkCommit {
    /// The chunk.
    pub id: ChunkId,
    /// Data packets.
    pub k: u8,
    /// Parity packets.
    pub m: u8,
    /// Packet size.
    pub shard_bytes: u64,
    /// Every placed packet.
    pub packets: Vec<PacketPlacement>,
}

/// Record new chunks and references, on behalf of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitChunks {
    /// The snapshot these chunks belong to.
    pub snapshot: String,
    /// Newly uploaded chunks.
    pub chunks: Vec<ChunkCommit>,
    /// Chunks already stored that this snapshot now references (dedup hits).
    pub refs: Vec<ChunkId>,
}

/// Answer to a commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    /// Chunks recorded as new stored copies.
    pub stored: u32,
    /// Chunks that turned out to be stored already (by a concurrent writer); their packets
    /// from this upload are surplus and are left for garbage collection.
    pub already_stored: u32,
    /// References added.
    pub referenced: u32,
}

/// Ask where chunks are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocateChunks {
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
}

/// One packet of a located chunk, with a get order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocatedPacket {
    /// Packet index.
    pub index: u8,
    /// Node holding it.
    pub node: NodeId,
    /// Node address.
    pub addr: String,
    /// Whether the coordinator currently considers the node up.
    pub node_up: bool,
    /// Checksum recorded at commit.
    pub checksum: [u8; 32],
    /// Get order.
    pub order: SignedOrder,
    /// The node's effective location (operator override or registered), so a reader can ask
    /// the nearest holders first before it has measured them.
    pub location: Location,
}

/// Where one chunk lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkLocation {
    /// The chunk.
    pub id: ChunkId,
    /// Data packets.
    pub k: u8,
    /// Parity packets.
    pub m: u8,
    /// Packet size.
    pub shard_bytes: u64,
    /// Packets in sequence order.
    pub packets: Vec<LocatedPacket>,
}

/// Answer to locate: `chunks[i]` is `None` when `ids[i]` is unknown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Locations {
    /// One entry per requested id.
    pub chunks: Vec<Option<ChunkLocation>>,
}

/// Snapshot lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotState {
    /// Writable.
    Open,
    /// Immutable and durable.
    Sealed,
}

/// Open a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotCreate {
    /// Its name (unique per client).
    pub name: String,
    /// Snapshot to clone references from, if any.
    pub from: Option<String>,
}

/// A snapshot's public record (the source data record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// State.
    pub state: SnapshotState,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Seal time.
    pub sealed_unix_ms: Option<u64>,
    /// Size of the encrypted tree (the data assembly record), once sealed.
    pub tree_bytes: u64,
    /// Number of distinct chunks the snapshot references.
    pub chunk_refs: u64,
}

/// List this client's snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList;

/// Answer to a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotListing {
    /// Snapshots by name.
    pub snapshots: Vec<SnapshotInfo>,
}

/// A piece of an encrypted tree, stored like data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its plaintext length (of the encrypted tree's bytes).
    pub len: u64,
}

/// Seal a snapshot: its tree, encrypted with the client's key and stored as chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotSeal {
    /// Name.
    pub name: String,
    /// Chunks of the encrypted tree, in order.
    pub tree: Vec<TreeChunk>,
    /// Total bytes of the encrypted tree.
    pub tree_bytes: u64,
}

/// Fetch one snapshot's record, with its tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotGet {
    /// Name.
    pub name: String,
}

/// A snapshot and its tree (data assembly record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Public record.
    pub info: SnapshotInfo,
    /// Encrypted tree chunks (empty while open).
    pub tree: Vec<TreeChunk>,
}

/// Ask for grid status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status;

/// Liveness of a node as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeats are arriving.
    Up,
    /// No heartbeat for longer than the failure timeout.
    Down,
}

/// One node in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Id.
    pub id: NodeId,
    /// Label given at join.
    pub label: String,
    /// Address.
    pub addr: String,
    /// Process id from its last heartbeat.
    pub pid: u32,
    /// Up or down.
    pub state: NodeState,
    /// Allocated storage (an operator override wins over what the node reports).
    pub capacity_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Packets held.
    pub packet_count: u64,
    /// Last heartbeat.
    pub last_heartbeat_unix_ms: u64,
    /// Registered location (an operator override wins over the node's config).
    pub location: Location,
    /// The capacity the node itself reported in its last heartbeat: equal to
    /// `capacity_bytes` once the node has applied an operator override.
    pub reported_capacity_bytes: u64,
}

/// Grid status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Grid id.
    pub grid: [u8; 16],
    /// The asking client's id, if the asker is a client.
    pub client: Option<ClientId>,
    /// Coordinator's listen address.
    pub coordinator_addr: String,
    /// Coordinator's process id.
    pub coordinator_pid: u32,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// Distinct chunks stored.
    pub chunk_count: u64,
    /// Bytes in packets over all chunks.
    pub stored_bytes: u64,
    /// Default erasure parameters.
    pub erasure_k: u8,
    /// Default parity.
    pub erasure_m: u8,
    /// The asking client's terms (subscription state, limits, usage), if the asker is a
    /// client.
    pub terms: Option<ClientTerms>,
    /// Cluster-wide proximity rules.
    pub proximity: crate::location::Proximity,
}

/// Read the global backup log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupLogQuery {
    /// First sequence number to return.
    pub since_seq: u64,
    /// Entries at most.
    pub limit: u32,
    /// Only entries at or after this instant (ms since the Unix epoch).
    pub since_unix_ms: Option<u64>,
}

/// One entry of the append-only global backup log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Monotonic sequence number.
    pub seq: u64,
    /// When.
    pub at_unix_ms: u64,
    /// Client concerned, if any.
    pub client: Option<ClientId>,
    /// Node concerned, if any.
    pub node: Option<NodeId>,
    /// Event kind (`client.join`, `snapshot.create`, `snapshot.seal`, `chunks.commit`…).
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
}

/// Answer to a log query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupLog {
    /// Entries in sequence order.
    pub entries: Vec<LogEntry>,
}

macro_rules! rpc {
    ($req:ident, $variant:ident, $resp:ty, $name:expr) => {
        impl From<$req> for CoordRequest {
            fn from(r: $req) -> Self {
                CoordRequest::$variant(r)
            }
        }
        impl Rpc for $req {
            type Envelope = CoordRequest;
            type Response = $resp;
            const NAME: &'static str = $name;
        }
    };
}

rpc!(Join, Join, Joined, "join");
rpc!(NodeHeartbeat, NodeHeartbeat, HeartbeatAck, "heartbeat");
rpc!(ClientHello, ClientHello, ClientWelcome, "client_hello");
rpc!(QueryChunks, QueryChunks, ChunkPresence, "query_chunks");
rpc!(
    AllocateChunks,
    AllocateChunks,
    Allocations,
    "allocate_chunks"
);
rpc!(
    ReplaceTargets,
    ReplaceTargets,
    Replacements,
    "replace_targets"
);
rpc!(CommitChunks, CommitChunks, Committed, "commit_chunks");
rpc!(LocateChunks, LocateChunks, Locations, "locate_chunks");
rpc!(
    SnapshotCreate,
    SnapshotCreate,
    SnapshotInfo,
    "snapshot_create"
);
rpc!(SnapshotList, SnapshotList, SnapshotListing, "snapshot_list");
rpc!(SnapshotSeal, SnapshotSeal, SnapshotInfo, "snapshot_seal");
rpc!(SnapshotGet, SnapshotGet, SnapshotRecord, "snapshot_get");
rpc!(Status, Status, StatusReport, "status");
rpc!(BackupLogQuery, BackupLog, BackupLog, "backup_log");
rpc!(ClientPoll, ClientPoll, ClientTerms, "client_poll");
rpc!(AdminClients, AdminClients, ClientProfiles, "admin_clients");
rpc!(AdminClient, AdminClient, ClientDetail, "admin_client");
rpc!(
    AdminSnapshots,
    AdminSnapshots,
    AdminSnapshotList,
    "admin_snapshots"
);
rpc!(AdminNode, AdminNode, NodeDetail, "admin_node");
rpc!(AdminChunk, AdminChunk, ChunkView, "admin_chunk");
rpc!(AdminChunks, AdminChunks, ChunkViews, "admin_chunks");
rpc!(AdminNodeSet, AdminNodeSet, NodeDetail, "admin_node_set");
rpc!(
    AdminClientSet,
    AdminClientSet,
    ClientDetail,
    "admin_client_set"
);
rpc!(
    AdminPlacementSet,
    AdminPlacementSet,
    PlacementRules,
    "admin_placement_set"
);
rpc!(
    AdminPlacementGet,
    AdminPlacementGet,
    PlacementRules,
    "admin_placement_get"
);
rpc!(
    AdminSubscriptionSet,
    AdminSubscriptionSet,
    ClientDetail,
    "admin_subscription_set"
);
rpc!(
    AdminSubscriptionShow,
    AdminSubscriptionShow,
    ClientDetail,
    "admin_subscription_show"
);
rpc!(
    AdminSubscriptionSuspend,
    AdminSubscriptionSuspend,
    ClientDetail,
    "admin_subscription_suspend"
);
rpc!(ScheduleAdd, ScheduleAdd, Schedules, "schedule_add");
rpc!(ScheduleList, ScheduleList, Schedules, "schedule_list");
rpc!(ScheduleRemove, ScheduleRemove, Schedules, "schedule_remove");
rpc!(SchedulePoll, SchedulePoll, BackupRequests, "schedule_poll");
rpc!(ScheduleReport, ScheduleReport, Schedules, "schedule_report");

/// Largest number of chunks in one batched request; a client splits bigger batches.
pub const MAX_BATCH_CHUNKS: usize = 1024;
