//! Operator requests (F4 records, F12/F13 placement rules, F15-F17 subscriptions, F18
//! schedules). The coordinator answers them only for the admin certificate it issued at
//! `coordinator init`.
//!
//! Records are views: data assembly records (encrypted trees) are shown by size and chunk
//! references only; the coordinator cannot decrypt them.

use serde::{Deserialize, Serialize};

use crate::ChunkId;
use crate::coord_api::{NodeStatus, SnapshotInfo};
use crate::ids::{ClientId, NodeId};
use crate::location::{Distance, Location, Proximity};
use crate::subscription::{Subscription, SubscriptionState, Usage};

/// List every client (the global client profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClients;

/// One client in the global client profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientProfile {
    /// Id.
    pub id: ClientId,
    /// Label given at join.
    pub label: String,
    /// Registered location (an operator override wins over what the client reports).
    pub location: Location,
    /// Join time.
    pub joined_unix_ms: u64,
    /// Last request seen.
    pub last_seen_unix_ms: u64,
    /// Plan name.
    pub plan: String,
    /// State now.
    pub state: SubscriptionState,
    /// Usage against the quota.
    pub usage: Usage,
    /// Snapshots held.
    pub snapshot_count: u64,
}

/// Answer to [`AdminClients`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientProfiles {
    /// Every client, by id.
    pub clients: Vec<ClientProfile>,
}

/// One client in detail (the source client profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClient {
    /// The client.
    pub id: ClientId,
}

/// Answer to [`AdminClient`] and to every subscription request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientDetail {
    /// The profile.
    pub profile: ClientProfile,
    /// The full contract.
    pub subscription: Subscription,
    /// Cluster-wide proximity with this subscription's overrides applied (what placement
    /// uses for this client).
    pub effective_proximity: Proximity,
}

/// A client's snapshots (its source data records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSnapshots {
    /// The client.
    pub client: ClientId,
}

/// Answer to [`AdminSnapshots`]: public records only (trees stay encrypted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSnapshotList {
    /// Snapshots by name.
    pub snapshots: Vec<AdminSnapshot>,
}

/// One snapshot as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSnapshot {
    /// Public record.
    pub info: SnapshotInfo,
    /// Chunks of the encrypted tree (the data assembly record), by id.
    pub tree_chunks: Vec<ChunkId>,
}

/// One node in detail (the target data record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminNode {
    /// The node.
    pub id: NodeId,
}

/// Answer to [`AdminNode`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDetail {
    /// Status as in `gridback status`.
    pub status: NodeStatus,
    /// Registered location (operator override wins).
    pub location: Location,
    /// Packets the coordinator's records place on this node.
    pub recorded_packets: u64,
    /// Their bytes.
    pub recorded_bytes: u64,
}

/// One chunk's sequence and sources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminChunk {
    /// The chunk.
    pub id: ChunkId,
}

/// A chunk record: where its packets are and who references it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkView {
    /// The chunk id.
    pub id: ChunkId,
    /// Data packets.
    pub k: u8,
    /// Parity packets.
    pub m: u8,
    /// Bytes per packet.
    pub packet_bytes: u64,
    /// Every target, in packet order.
    pub targets: Vec<ChunkTarget>,
    /// Clients that reference the chunk.
    pub sources: Vec<ClientId>,
}

/// One target of a chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkTarget {
    /// The node.
    pub node: NodeId,
    /// Its location as `REGION/ZONE/HOST`.
    pub location: String,
    /// Packet index (0..k data, k..k+m parity).
    pub packet: u8,
}

/// Every chunk a client references, optionally within one snapshot; paged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminChunks {
    /// The client.
    pub client: ClientId,
    /// Only chunks of this snapshot.
    pub snapshot: Option<String>,
    /// Start after this chunk id (for paging).
    pub after: Option<ChunkId>,
    /// Chunks at most in this answer.
    pub limit: u32,
}

/// Answer to [`AdminChunks`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkViews {
    /// Chunks in id order.
    pub chunks: Vec<ChunkView>,
    /// Set when more chunks follow: pass as `after`.
    pub next: Option<ChunkId>,
}

/// Change a node's record at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminNodeSet {
    /// The node.
    pub id: NodeId,
    /// New labels.
    pub location: Option<String>,
    /// New coordinates `LAT,LON`.
    pub coords: Option<String>,
    /// New target storage allocation in bytes.
    pub capacity_bytes: Option<u64>,
}

/// Change a client's location at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClientSet {
    /// The client.
    pub id: ClientId,
    /// New labels.
    pub location: Option<String>,
    /// New coordinates `LAT,LON`.
    pub coords: Option<String>,
}

/// Change the cluster-wide proximity rules; unset fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminPlacementSet {
    /// Packet proximity minimum.
    pub packet_min: Option<Distance>,
    /// Packet proximity maximum.
    pub packet_max: Option<Distance>,
    /// Backup proximity minimum.
    pub backup_min: Option<Distance>,
    /// Backup proximity maximum.
    pub backup_max: Option<Distance>,
    /// Remove every cluster-wide bound first.
    pub clear: bool,
}

/// Read the cluster-wide proximity rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminPlacementGet;

/// Answer to placement requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementRules {
    /// Cluster-wide rules.
    pub proximity: Proximity,
}

/// Change a subscription; unset fields keep their value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSubscriptionSet {
    /// The client.
    pub client: ClientId,
    /// Plan name.
    pub plan: Option<String>,
    /// Source storage allocation in bytes.
    pub quota_bytes: Option<u64>,
    /// Upload bytes per second.
    pub bandwidth_up: Option<u64>,
    /// Download bytes per second.
    pub bandwidth_down: Option<u64>,
    /// Worker threads.
    pub threads: Option<u32>,
    /// Concurrent transfers.
    pub transfers: Option<u32>,
    /// Packet proximity minimum override.
    pub packet_min: Option<Distance>,
    /// Packet proximity maximum override.
    pub packet_max: Option<Distance>,
    /// Backup proximity minimum override.
    pub backup_min: Option<Distance>,
    /// Backup proximity maximum override.
    pub backup_max: Option<Distance>,
    /// Expiry (ms since the Unix epoch).
    pub expires_unix_ms: Option<u64>,
    /// Names of limits to remove (`quota`, `bandwidth-up`, `bandwidth-down`, `threads`,
    /// `transfers`, `expires`, `packet-min`, `packet-max`, `backup-min`, `backup-max`).
    pub unset: Vec<String>,
}

/// Show a subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSubscriptionShow {
    /// The client.
    pub client: ClientId,
}

/// Suspend (`suspend: true`) or resume a subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminSubscriptionSuspend {
    /// The client.
    pub client: ClientId,
    /// Suspend or resume.
    pub suspend: bool,
}
