//! Requests a storage node serves. Clients send packets directly to nodes; every data request
//! carries a coordinator-signed order for exactly that node, packet and client certificate.

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::order::SignedOrder;
use crate::wire::{self, FrameError, HEADER_LEN, MAX_FRAME_BYTES, Rpc};

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

impl PutPacket {
    /// The bytes of the request frame of `NodeRequest::Put(PutPacket { order, data })` that
    /// come before `data`, for a `data` of `data_len` bytes: frame header, variant, order and
    /// the data's length prefix. `head ++ data` is byte for byte the frame that
    /// [`wire::encode_frame`] builds, so a sender can hand the packet bytes to the transport
    /// as they are instead of copying them into a frame (the data is the last field of the
    /// last thing encoded; postcard writes a byte string as a LEB128 length, then the bytes).
    pub fn frame_head(order: &SignedOrder, data_len: usize) -> Vec<u8> {
        let empty = NodeRequest::Put(PutPacket {
            order: order.clone(),
            data: Vec::new(),
        });
        let mut head = wire::encode_frame(&empty);
        // An empty byte string is the one-byte length prefix 0: replace it with the real one.
        debug_assert_eq!(head.last(), Some(&0));
        head.pop();
        let mut n = data_len as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                head.push(byte);
                break;
            }
            head.push(byte | 0x80);
        }
        let body_len = (head.len() - HEADER_LEN + data_len) as u32;
        head[4..8].copy_from_slice(&body_len.to_le_bytes());
        head
    }
}

/// Decode a [`NodeRequest`] body. A put's packet bytes are moved within `body` (which then
/// becomes the packet's `data`) instead of being copied into a new allocation; every other
/// request, and any body that is not a well-formed put, decodes exactly as
/// [`wire::decode_body`] does.
pub fn decode_request(mut body: Vec<u8>) -> Result<NodeRequest, FrameError> {
    // `NodeRequest::Put` is variant 0: its index, the order, then the data's LEB128 length.
    let put = (|| {
        let (variant, rest) = postcard::take_from_bytes::<u32>(&body).ok()?;
        if variant != 0 {
            return None;
        }
        let (order, rest) = postcard::take_from_bytes::<SignedOrder>(rest).ok()?;
        let (len, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
        (rest.len() as u64 == len).then_some((order, body.len() - rest.len()))
    })();
    let Some((order, offset)) = put else {
        return wire::decode_body(&body);
    };
    body.drain(..offset);
    Ok(NodeRequest::Put(PutPacket { order, data: body }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CertFingerprint, PacketName};
    use crate::order::{Order, OrderOp};
    use proptest::prelude::*;

    fn order() -> SignedOrder {
        SignedOrder {
            order: Order {
                op: OrderOp::Put,
                node: NodeId([1; 16]),
                packet: PacketName([2; 32]),
                size_bytes: 77,
                client: CertFingerprint([3; 32]),
                expires_unix_ms: 1_700_000_000_000,
            },
            signature: vec![9; 64],
        }
    }

    /// The split frame (head, then the raw packet bytes) must be exactly the frame the plain
    /// encoder builds, at every length where the LEB128 prefix changes size.
    #[test]
    fn put_frame_head_matches_the_full_encoding() {
        for len in [
            0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_151, 2_097_152,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut split = PutPacket::frame_head(&order(), len);
            split.extend_from_slice(&data);
            let full = wire::encode_frame(&NodeRequest::Put(PutPacket {
                order: order(),
                data,
            }));
            assert_eq!(split, full, "data of {len} bytes");
        }
    }

    /// The moving decoder must agree with the plain one on every request kind, and on
    /// damaged puts (truncated, or with bytes past the packet) it must give the plain
    /// decoder's answer.
    #[test]
    fn decode_request_moves_put_data_and_matches_the_plain_decoder() {
        let data: Vec<u8> = (0..70_000).map(|i| (i % 253) as u8).collect();
        let put = NodeRequest::Put(PutPacket {
            order: order(),
            data: data.clone(),
        });
        let body = wire::encode_frame(&put)[HEADER_LEN..].to_vec();
        match decode_request(body.clone()).unwrap() {
            NodeRequest::Put(p) => {
                assert_eq!(p.data, data);
                assert_eq!(p.order, order());
            }
            other => panic!("decoded {other:?}"),
        }
        let get = NodeRequest::Get(GetPacket { order: order() });
        let body_get = wire::encode_frame(&get)[HEADER_LEN..].to_vec();
        assert!(matches!(
            decode_request(body_get).unwrap(),
            NodeRequest::Get(_)
        ));
        let health = wire::encode_frame(&NodeRequest::Health(NodeHealth))[HEADER_LEN..].to_vec();
        assert!(matches!(
            decode_request(health).unwrap(),
            NodeRequest::Health(_)
        ));
        for damaged in [
            body[..body.len() - 1].to_vec(),
            [&body[..], &[1, 2]].concat(),
        ] {
            let plain = wire::decode_body::<NodeRequest>(&damaged);
            let moving = decode_request(damaged);
            assert_eq!(plain.is_ok(), moving.is_ok());
            if let (Ok(NodeRequest::Put(a)), Ok(NodeRequest::Put(b))) = (plain, moving) {
                assert_eq!(a.data, b.data);
            }
        }
        assert!(decode_request(vec![0xff; 3]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn put_frame_head_decodes(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut f = PutPacket::frame_head(&order(), data.len());
            f.extend_from_slice(&data);
            match wire::decode_frame::<NodeRequest>(&f, MAX_FRAME_BYTES).unwrap() {
                NodeRequest::Put(p) => prop_assert_eq!(p.data, data),
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }
    }
}
