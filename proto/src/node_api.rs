//! Requests a storage node serves. Clients send packets directly to nodes; every data request
//! carries a coordinator-signed order for exactly that node, packet and client certificate.

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::order::SignedOrder;
use crate::wire::{MAX_FRAME_BYTES, Rpc};

/// The storage node service's dispatch enum.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum NodeRequest {
    /// Store a packet.
    Put(PutPacket),
    /// Read a packet.
    Get(GetPacket),
    /// Delete a packet.
    Delete(DeletePacket),
    /// Liveness and usage.
    Health(NodeHealth),
}

/// Store `data` under the order's packet name. Answered only once the packet is durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutPacket {
    /// Put order for this node, packet, size and client.
    pub order: SignedOrder,
    /// The packet bytes (opaque ciphertext shard).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Reply to a put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAck {
    /// BLAKE3 of the stored bytes, as the node computed it.
    pub checksum: [u8; 32],
    /// True if an identical packet was already stored (an idempotent retry).
    pub already_present: bool,
}

/// Read a packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetPacket {
    /// Get order for this node, packet and client.
    pub order: SignedOrder,
}

/// A packet read back, verified against its stored checksum before it was sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketData {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// BLAKE3 of the bytes.
    pub checksum: [u8; 32],
}

/// Delete a packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletePacket {
    /// Delete order.
    pub order: SignedOrder,
}

/// Reply to a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    /// Whether the packet existed.
    pub existed: bool,
}

/// Ask a node for its health and usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeHealth;

/// A node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealthReport {
    /// The node's id.
    pub node: NodeId,
    /// Allocated storage (the node's byte limit).
    pub capacity_bytes: u64,
    /// Bytes held in packets.
    pub used_bytes: u64,
    /// Number of packets held.
    pub packet_count: u64,
}

impl From<PutPacket> for NodeRequest {
    fn from(r: PutPacket) -> Self {
        NodeRequest::Put(r)
    }
}
impl From<GetPacket> for NodeRequest {
    fn from(r: GetPacket) -> Self {
        NodeRequest::Get(r)
    }
}
impl From<DeletePacket> for NodeRequest {
    fn from(r: DeletePacket) -> Self {
        NodeRequest::Delete(r)
    }
}
impl From<NodeHealth> for NodeRequest {
    fn from(r: NodeHealth) -> Self {
        NodeRequest::Health(r)
    }
}

impl Rpc for PutPacket {
    type Envelope = NodeRequest;
    type Response = PutAck;
    const NAME: &'static str = "put";
}
impl Rpc for GetPacket {
    type Envelope = NodeRequest;
    type Response = PacketData;
    const NAME: &'static str = "get";
    const RESPONSE_LIMIT: u32 = MAX_FRAME_BYTES;
}
impl Rpc for DeletePacket {
    type Envelope = NodeRequest;
    type Response = Deleted;
    const NAME: &'static str = "delete";
}
impl Rpc for NodeHealth {
    type Envelope = NodeRequest;
    type Response = NodeHealthReport;
    const NAME: &'static str = "health";
}
