//! The records the coordinator keeps (F4), as stored values. Each value is encoded as one
//! version byte followed by the postcard encoding of the record, so a later layout can be
//! read next to this one and migrated explicitly.

use gridback_proto::coord_api::{ChunkCommit, Role, SnapshotInfo, TreeChunk};
use gridback_proto::location::Location;
use gridback_proto::schedule_api::Schedule;
use gridback_proto::subscription::Subscription;
use gridback_proto::{ChunkId, ClientId, NodeId, PacketName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Layout version of every record value written by this build.
pub const RECORD_VERSION: u8 = 1;

/// Encode a record value: version byte, then postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![RECORD_VERSION])
        .expect("invariant: postcard encoding into a Vec cannot fail")
}

/// Decode a record value written by [`encode`].
pub fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table, reason };
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

/// Who a certificate fingerprint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Node or client.
    pub role: Role,
    /// The `NodeId` or `ClientId` bytes.
    pub id: [u8; 16],
}

/// A storage node (the target client profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Label given at join.
    pub label: String,
    /// Address clients dial (empty until the first heartbeat).
    pub addr: String,
    /// Allocated storage the node offers.
    pub capacity_bytes: u64,
    /// Bytes of packets it reports holding.
    pub used_bytes: u64,
    /// Packets it reports holding.
    pub packet_count: u64,
    /// Process id from its last heartbeat.
    pub pid: u32,
    /// Last heartbeat (0: never).
    pub last_heartbeat_unix_ms: u64,
    /// Join time.
    pub joined_unix_ms: u64,
}

/// A source client (the global and source client profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Label given at join.
    pub label: String,
    /// Join time.
    pub joined_unix_ms: u64,
    /// Last request seen (hello).
    pub last_seen_unix_ms: u64,
    /// Process id from its last hello.
    pub pid: u32,
    /// Packet bytes of every distinct chunk this client references.
    pub stored_bytes: u64,
}

/// One stored packet of a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPacket {
    /// Packet index (`0..k` data, `k..k+m` parity).
    pub index: u8,
    /// Node holding it.
    pub node: NodeId,
    /// Its opaque name on that node.
    pub packet: PacketName,
    /// BLAKE3 of the packet bytes.
    pub checksum: [u8; 32],
}

/// One stored chunk: the dedup index entry (one stored copy per id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Data packets.
    pub k: u8,
    /// Parity packets.
    pub m: u8,
    /// Size of every packet.
    pub shard_bytes: u64,
    /// Every packet, in index order.
    pub packets: Vec<StoredPacket>,
    /// Commit time.
    pub committed_unix_ms: u64,
    /// The client whose upload is the stored copy.
    pub committed_by: ClientId,
}

impl ChunkRecord {
    /// Bytes held on nodes for this chunk.
    pub fn packet_bytes(&self) -> u64 {
        self.shard_bytes.saturating_mul(self.packets.len() as u64)
    }
}

/// A snapshot: the source data record plus the data assembly record (its encrypted tree,
/// of which the coordinator knows only chunk references and sizes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// Public record.
    pub info: SnapshotInfo,
    /// Encrypted tree chunks, once sealed.
    pub tree: Vec<TreeChunk>,
}

/// A log entry before the store gives it a sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogEntry {
    /// Client concerned.
    pub client: Option<ClientId>,
    /// Node concerned.
    pub node: Option<NodeId>,
    /// Event kind.
    pub kind: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// A new member, recorded with its certificate in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewMember {
    /// A storage node.
    Node(NodeId, NodeRecord),
    /// A source client.
    Client(ClientId, ClientRecord),
}

/// One commit request, already checked against the allocations.
#[derive(Debug, Clone)]
pub struct CommitBatch {
    /// The snapshot the chunks belong to (must be open).
    pub snapshot: String,
    /// Newly uploaded chunks.
    pub chunks: Vec<ChunkCommit>,
    /// Already stored chunks now referenced.
    pub refs: Vec<ChunkId>,
    /// Commit time.
    pub now_unix_ms: u64,
    /// The client's source storage allocation: references to stored chunks not yet charged
    /// to the client must fit in it (see [`gridback_proto::subscription::Usage`]).
    pub quota_bytes: Option<u64>,
}

/// What a commit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitOutcome {
    /// New stored copies.
    pub stored: u32,
    /// Chunks another writer had stored first.
    pub already_stored: u32,
    /// Snapshot references added.
    pub referenced: u32,
    /// Packet bytes of the new stored copies.
    pub stored_bytes: u64,
}

/// Grid-wide totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GridStats {
    /// Distinct stored chunks.
    pub chunk_count: u64,
    /// Packet bytes over every stored chunk.
    pub stored_bytes: u64,
}

/// Where a node or client is, and an operator's overrides. Kept apart from the member
/// record so records written before locations existed stay readable as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlaceRecord {
    /// What the member reported (node heartbeat, client hello).
    pub reported: Option<Location>,
    /// Set by an operator; wins over `reported`.
    pub location_override: Option<Location>,
    /// Nodes only: target storage allocation set by an operator; wins over the node's config.
    pub capacity_override: Option<u64>,
}

impl PlaceRecord {
    /// The location placement uses: the override, else the reported one, else a placeholder
    /// `default/default/<host>` that keeps unlocated members on distinct hosts.
    pub fn effective(&self, host: &str) -> Location {
        self.location_override
            .clone()
            .or_else(|| self.reported.clone())
            .unwrap_or_else(|| Location::new("default", "default", host))
    }
}

/// A client's contract as stored, with what the coordinator already noticed about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// The contract.
    pub subscription: Subscription,
    /// Whether the expiry of the current `expires_unix_ms` was written to the backup log.
    pub expiry_logged: bool,
}

/// A schedule as stored: the public record plus the lease and the last good snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The public record.
    pub schedule: Schedule,
    /// Not handed out again before this instant (0: not leased).
    pub leased_until_unix_ms: u64,
    /// Snapshot of the last successful run (the base of the next incremental run).
    pub last_ok_snapshot: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_codec_round_trips_and_rejects_unknown_versions() {
        let r = CertRecord {
            role: Role::Node,
            id: [3; 16],
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<CertRecord>("certs", &bytes).unwrap(), r);
        let mut future = bytes.clone();
        future[0] = 2;
        let e = decode::<CertRecord>("certs", &future)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown record version 2"), "{e}");
        assert!(decode::<CertRecord>("certs", &[]).is_err());
        assert!(decode::<CertRecord>("certs", &[RECORD_VERSION, 9]).is_err());
    }
}
