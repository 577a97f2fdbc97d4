//! Requests a storage node serves. Clients send packets directly to nodes; every data request
//! carries a coordinator-signed order for exactly that node, packet and client certificate.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::NodeId;
use crate::order::SignedOrder;
use crate::wire::{self, FrameError, HEADER_LEN, MAGIC, MAX_FRAME_BYTES, PROTOCOL_VERSION, Rpc};

/// Most packets in one [`PutPackets`] or [`GetPackets`] request: a batch of small chunks
/// sends one or two packets of each chunk to a node, so a few hundred chunks fit; the frame
/// limit ([`MAX_FRAME_BYTES`]) bounds the bytes.
pub const MAX_BATCH_PACKETS: usize = 1024;

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
    /// Store several packets, made durable together (one sync for the whole batch).
    PutBatch(PutPackets),
    /// Read several packets.
    GetBatch(GetPackets),
}

/// Store `data` under the order's packet name. Answered only once the packet is durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutPacket {
    /// Put order for this node, packet, size and client.
    pub order: SignedOrder,
    /// The packet bytes (opaque ciphertext shard).
    pub data: Bytes,
}

/// Append the LEB128 length prefix postcard writes before a byte string.
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
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
            data: Bytes::new(),
        });
        let mut head = wire::encode_frame(&empty);
        // An empty byte string is the one-byte length prefix 0: replace it with the real one.
        debug_assert_eq!(head.last(), Some(&0));
        head.pop();
        push_varint(&mut head, data_len as u64);
        let body_len = (head.len() - HEADER_LEN + data_len) as u32;
        head[4..8].copy_from_slice(&body_len.to_le_bytes());
        head
    }
}

/// Decode a [`NodeRequest`] body. The packet bytes of a put (or of every put of a batch) are
/// slices of `body` (which is moved into one shared buffer), never copies; every other
/// request, and any body that is not a well-formed put, decodes exactly as
/// [`wire::decode_body`] does.
pub fn decode_request(body: Vec<u8>) -> Result<NodeRequest, FrameError> {
    /// Where each packet of a put lies in the body: (order, start, end).
    type Spans = Vec<(SignedOrder, usize, usize)>;
    fn put_at(body: &[u8], at: usize) -> Option<(SignedOrder, usize, usize)> {
        let rest = body.get(at..)?;
        let (order, rest) = postcard::take_from_bytes::<SignedOrder>(rest).ok()?;
        let (len, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
        let start = body.len() - rest.len();
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= body.len()).then_some((order, start, end))
    }
    // `NodeRequest::Put` is variant 0 (the order, then the data's LEB128 length), `PutBatch`
    // variant 4 (a count, then as many orders each followed by its data).
    let spans: Option<(bool, Spans)> = (|| {
        let (variant, rest) = postcard::take_from_bytes::<u32>(&body).ok()?;
        let mut at = body.len() - rest.len();
        match variant {
            0 => {
                let one = put_at(&body, at)?;
                (one.2 == body.len()).then(|| (false, vec![one]))
            }
            4 => {
                let (count, rest) = postcard::take_from_bytes::<u64>(&body[at..]).ok()?;
                at = body.len() - rest.len();
                let count = usize::try_from(count).ok()?;
                if count > MAX_BATCH_PACKETS {
                    return None;
                }
                let mut spans = Vec::with_capacity(count);
                for _ in 0..count {
                    let one = put_at(&body, at)?;
                    at = one.2;
                    spans.push(one);
                }
                (at == body.len()).then_some((true, spans))
            }
            _ => None,
        }
    })();
    let Some((batch, spans)) = spans else {
        return wire::decode_body(&body);
    };
    let shared = Bytes::from(body);
    let mut puts = spans.into_iter().map(|(order, start, end)| PutPacket {
        order,
        data: shared.slice(start..end),
    });
    Ok(if batch {
        NodeRequest::PutBatch(PutPackets {
            packets: puts.collect(),
        })
    } else {
        NodeRequest::Put(
            puts.next()
                .ok_or(FrameError::Truncated { need: 1, have: 0 })?,
        )
    })
}

/// Store several packets with one request. The node makes them durable together (one sync
/// for the batch) and answers each packet on its own: a refused or failed packet does not
/// fail the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutPackets {
    /// At most [`MAX_BATCH_PACKETS`] puts, each with its own order.
    pub packets: Vec<PutPacket>,
}

impl PutPackets {
    /// The request frame of a batch of `(order, data)` as consecutive byte chunks: small heads
    /// (frame header, count, each order and length prefix) between the packet bytes, which
    /// are passed through as they are (no copy). The chunks together are byte for byte the
    /// frame [`wire::encode_frame`] builds for the same batch.
    pub fn frame(parts: &[(SignedOrder, Bytes)]) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(parts.len() * 2 + 1);
        let mut head = Vec::with_capacity(64);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        push_varint(&mut head, 4); // NodeRequest::PutBatch
        push_varint(&mut head, parts.len() as u64);
        let mut body_len = 0usize;
        for (order, data) in parts {
            head = postcard::to_extend(order, head)
                .expect("invariant: postcard encoding into a Vec cannot fail");
            push_varint(&mut head, data.len() as u64);
            body_len += head.len() + data.len();
            out.push(Bytes::from(std::mem::take(&mut head)));
            out.push(data.clone());
        }
        if out.is_empty() {
            body_len = head.len();
            out.push(Bytes::from(head));
        }
        let body_len = (body_len - HEADER_LEN) as u32;
        let mut first = out[0].to_vec();
        first[4..8].copy_from_slice(&body_len.to_le_bytes());
        out[0] = Bytes::from(first);
        out
    }

    /// Bytes of the frame of a batch whose packets total `data_bytes`, for `packets` packets:
    /// an upper bound for sizing batches under [`MAX_FRAME_BYTES`].
    pub fn frame_bytes_bound(packets: usize, data_bytes: usize) -> usize {
        /// Order (with a 32-byte tag and varints at their widest) plus a length prefix.
        const PER_PACKET: usize = 192;
        HEADER_LEN + 16 + packets * PER_PACKET + data_bytes
    }
}

/// Reply to [`PutPackets`]: one result per packet, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutAcks {
    /// The acknowledgement or the refusal of each packet.
    pub acks: Vec<Result<PutAck, WireError>>,
}

/// Read several packets with one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetPackets {
    /// At most [`MAX_BATCH_PACKETS`] get orders; the packets they name must together fit in
    /// one response frame ([`MAX_FRAME_BYTES`]).
    pub orders: Vec<SignedOrder>,
}

/// Reply to [`GetPackets`]: one result per order, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketsData {
    /// The packet or the refusal for each order.
    pub packets: Vec<Result<PacketData, WireError>>,
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
impl From<PutPackets> for NodeRequest {
    fn from(r: PutPackets) -> Self {
        NodeRequest::PutBatch(r)
    }
}
impl From<GetPackets> for NodeRequest {
    fn from(r: GetPackets) -> Self {
        NodeRequest::GetBatch(r)
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
impl Rpc for PutPackets {
    type Envelope = NodeRequest;
    type Response = PutAcks;
    const NAME: &'static str = "put_batch";
}
impl Rpc for GetPackets {
    type Envelope = NodeRequest;
    type Response = PacketsData;
    const NAME: &'static str = "get_batch";
    const RESPONSE_LIMIT: u32 = MAX_FRAME_BYTES;
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
                data: Bytes::from(data),
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
            data: Bytes::from(data.clone()),
        });
        let body = wire::encode_frame(&put)[HEADER_LEN..].to_vec();
        match decode_request(body.clone()).unwrap() {
            NodeRequest::Put(p) => {
                assert_eq!(&p.data[..], &data[..]);
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

    /// The batch frame built from separate chunks is the plain encoding, and the moving
    /// decoder gives back every packet (as slices of one buffer) and agrees with the plain
    /// decoder on damaged batches.
    #[test]
    fn put_batch_frame_matches_the_full_encoding_and_decodes() {
        for sizes in [vec![], vec![0], vec![1, 127, 128, 70_000], vec![300; 40]] {
            let parts: Vec<(SignedOrder, Bytes)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut o = order();
                    o.order.size_bytes = n as u64;
                    o.order.packet.0[0] = i as u8;
                    (
                        o,
                        Bytes::from((0..n).map(|j| (j % 249) as u8).collect::<Vec<u8>>()),
                    )
                })
                .collect();
            let split: Vec<u8> = PutPackets::frame(&parts).concat();
            let full = wire::encode_frame(&NodeRequest::PutBatch(PutPackets {
                packets: parts
                    .iter()
                    .map(|(order, data)| PutPacket {
                        order: order.clone(),
                        data: data.clone(),
                    })
                    .collect(),
            }));
            assert_eq!(split, full, "sizes {sizes:?}");
            let total: usize = sizes.iter().sum();
            assert!(split.len() <= PutPackets::frame_bytes_bound(sizes.len(), total));
            let body = split[HEADER_LEN..].to_vec();
            match decode_request(body.clone()).unwrap() {
                NodeRequest::PutBatch(b) => {
                    assert_eq!(b.packets.len(), parts.len());
                    for (p, (o, d)) in b.packets.iter().zip(&parts) {
                        assert_eq!(&p.order, o);
                        assert_eq!(&p.data, d);
                    }
                }
                other => panic!("decoded {other:?}"),
            }
            if !body.is_empty() {
                for damaged in [body[..body.len() - 1].to_vec(), [&body[..], &[7]].concat()] {
                    let plain = wire::decode_body::<NodeRequest>(&damaged);
                    let moving = decode_request(damaged);
                    assert_eq!(plain.is_ok(), moving.is_ok(), "sizes {sizes:?}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn put_frame_head_decodes(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut f = PutPacket::frame_head(&order(), data.len());
            f.extend_from_slice(&data);
            match wire::decode_frame::<NodeRequest>(&f, MAX_FRAME_BYTES).unwrap() {
                NodeRequest::Put(p) => prop_assert_eq!(&p.data[..], &data[..]),
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }
    }
}
