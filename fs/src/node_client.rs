//! Typed calls to storage nodes: put and get one packet, each carrying its coordinator-signed
//! order. One pooled QUIC connection per node (server name `<node>.node.gridback`, so the
//! client also proves it reached the node it meant), one stream per packet.
//!
//! Every transfer honours the process's [`LiveLimits`]: it takes a transfer permit, then its
//! charge from the upload or download token bucket, before the call (so the call's deadline
//! measures the node, not our own throttling). Successful gets feed the per-node latency
//! estimate ([`NodeLatency`]) the read path orders holders by.
//!
//! **What the bandwidth limits meter: the client's own data**, the sealed chunk bytes
//! (after dedup, compression, encryption and padding; before erasure coding). Redundancy is
//! the grid operator's choice, so parity travels at the same pace but is not charged: a put
//! is charged `k / (k + m)` of its packet ([`put_charge`]), so the k + m packets of a chunk
//! together cost its k data shards, spread evenly over its packets. A get is charged its
//! whole packet: a read needs k packets, which is the chunk's data size; a hedged extra get
//! (a slow holder raced by one more) and a retried put are charged too, so the limit bounds
//! what the client actually moves for its data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gridback_proto::node_api::{GetPacket, PacketData, PutAck, PutPacket, PutPackets};
use gridback_proto::tls::node_server_name;
use gridback_proto::transport::{CallError, ConnPool, DEFAULT_CALL_TIMEOUT};
use gridback_proto::{NodeId, SignedOrder};
use tracing::{Instrument, debug_span};

use crate::latency::NodeLatency;
use crate::terms::LiveLimits;

/// After a failed dial, a node is reported down without dialling again for this long: a dial
/// to a vanished node costs the full handshake timeout, and a batch may hold many packets for
/// it. Short, so a restarted node is used again soon.
const DOWN_MEMORY: Duration = Duration::from_secs(10);

/// What the upload limit charges for one packet of a chunk coded `k` data + `m` parity:
/// `k / (k + m)` of its bytes, so a whole chunk costs `k × packet bytes`, its sealed size
/// (the same data size the quota charges).
pub fn put_charge(packet_bytes: usize, k: u8, m: u8) -> u64 {
    let (k, n) = (u64::from(k), u64::from(k) + u64::from(m));
    if n == 0 {
        return packet_bytes as u64;
    }
    (packet_bytes as u64 * k).div_ceil(n)
}

/// A client of the storage nodes. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct NodeClient {
    pool: ConnPool,
    timeout: Duration,
    /// Nodes whose last dial failed, with when.
    down: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// One dial at a time per node, and a re-check of `down` after waiting: concurrent calls
    /// to a dead node fail after one attempt instead of each waiting out the connect timeout.
    dial_locks: Arc<Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Bandwidth and transfer limits of the process.
    limits: Arc<LiveLimits>,
    /// Get latency per node.
    latency: Arc<NodeLatency>,
}

/// Why a packet transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The call failed (connection, timeout, or the node refused).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The bytes do not hash to the expected checksum.
    #[error("checksum mismatch on node {node}")]
    Checksum {
        /// The node that sent or acknowledged the bytes.
        node: NodeId,
    },
    /// A recent dial to the node failed; it was not tried again.
    #[error("node {node} is unreachable (a dial failed {ago_ms} ms ago)")]
    Down {
        /// The node.
        node: NodeId,
        /// Since the failed dial.
        ago_ms: u64,
    },
    /// The packet has the wrong size.
    #[error("node {node} returned {got} bytes, expected {expected}")]
    Size {
        /// The node.
        node: NodeId,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
}

impl NodeClient {
    /// Calls go through `pool`, each with the default deadline.
    pub fn new(pool: ConnPool) -> Self {
        Self {
            pool,
            timeout: DEFAULT_CALL_TIMEOUT,
            down: Arc::default(),
            dial_locks: Arc::default(),
            limits: LiveLimits::unlimited(1),
            latency: Arc::default(),
        }
    }

    /// Honour `limits` (shared with the rest of the process) on every transfer.
    pub fn with_limits(mut self, limits: Arc<LiveLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// The per-node get latency estimates.
    pub fn latency(&self) -> &Arc<NodeLatency> {
        &self.latency
    }

    fn check_down(&self, node: NodeId) -> Result<(), TransferError> {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.get(&node).map(Instant::elapsed) {
            Some(ago) if ago < DOWN_MEMORY => Err(TransferError::Down {
                node,
                ago_ms: ago.as_millis() as u64,
            }),
            Some(_) => {
                down.remove(&node);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Make sure a connection to `node` exists (dialling at most once at a time per node).
    async fn ensure_connected(&self, node: NodeId, addr: &str) -> Result<(), TransferError> {
        self.check_down(node)?;
        let lock = {
            let mut locks = self.dial_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(node).or_default().clone()
        };
        let _dial = lock.lock().await;
        self.check_down(node)?;
        match self.pool.get(addr, &node_server_name(node)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.down
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node, Instant::now());
                Err(e.into())
            }
        }
    }

    /// Whether a dial to `node` failed recently.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.check_down(node).is_err()
    }

    /// Change the per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Store a packet; returns the node's acknowledgement once it is durable, after checking
    /// that the node hashed the same bytes we sent. `data` is sent as it is (quinn keeps a
    /// reference until the node has it): the frame is a small head plus these bytes, never a
    /// copy of them. `charged_bytes` is what the upload limit counts for it (see the module
    /// doc and [`put_charge`]).
    pub async fn put(
        &self,
        node: NodeId,
        addr: &str,
        order: SignedOrder,
        data: Bytes,
        charged_bytes: u64,
    ) -> Result<PutAck, TransferError> {
        let expected = blake3::hash(&data);
        let span = debug_span!("put", node = %node, bytes = data.len());
        let _transfer = self.limits.transfers.acquire().await;
        self.limits.up.acquire(charged_bytes).await;
        self.ensure_connected(node, addr).await?;
        let head = Bytes::from(PutPacket::frame_head(&order, data.len()));
        let ack = self
            .pool
            .call_encoded::<PutPacket>(
                addr,
                &node_server_name(node),
                vec![head, data],
                self.timeout,
            )
            .instrument(span)
            .await?;
        if blake3::Hash::from_bytes(ack.checksum) != expected {
            return Err(TransferError::Checksum { node });
        }
        Ok(ack)
    }

    /// Store several packets on one node with one request (the node makes them durable with
    /// one sync). Each part is `(order, data, charged_bytes)`; the answer has one result per
    /// part, in order, each checked like [`NodeClient::put`]'s. An error of the call itself
    /// (node unreachable, timeout, refused batch) fails every part.
    pub async fn put_batch(
        &self,
        node: NodeId,
        addr: &str,
        parts: Vec<(SignedOrder, Bytes, u64)>,
    ) -> Result<Vec<Result<PutAck, TransferError>>, TransferError> {
        let expected: Vec<blake3::Hash> = parts.iter().map(|p| blake3::hash(&p.1)).collect();
        let bytes: usize = parts.iter().map(|p| p.1.len()).sum();
        let charge: u64 = parts.iter().map(|p| p.2).sum();
        let span = debug_span!("put_batch", node = %node, packets = parts.len(), bytes);
        let _transfer = self.limits.transfers.acquire().await;
        self.limits.up.acquire(charge).await;
        self.ensure_connected(node, addr).await?;
        let frame: Vec<(SignedOrder, Bytes)> = parts.into_iter().map(|(o, d, _)| (o, d)).collect();
        let n = frame.len();
        let acks = self
            .pool
            .call_encoded::<PutPackets>(
                addr,
                &node_server_name(node),
                PutPackets::frame(&frame),
                self.timeout,
            )
            .instrument(span)
            .await?;
        if acks.acks.len() != n {
            return Err(TransferError::Call(CallError::Io {
                addr: addr.to_string(),
                reason: format!("put_batch answered {} results for {n}", acks.acks.len()),
            }));
        }
        Ok(acks
            .acks
            .into_iter()
            .zip(expected)
            .map(|(ack, want)| match ack {
                Ok(a) if blake3::Hash::from_bytes(a.checksum) == want => Ok(a),
                Ok(_) => Err(TransferError::Checksum { node }),
                Err(error) => Err(TransferError::Call(CallError::Remote {
                    addr: addr.to_string(),
                    rpc: "put_batch",
                    error,
                })),
            })
            .collect())
    }

    /// Read a packet and check it against the checksum recorded at commit and its size.
    pub async fn get(
        &self,
        node: NodeId,
        addr: &str,
        order: SignedOrder,
        checksum: [u8; 32],
        expected_len: usize,
    ) -> Result<Vec<u8>, TransferError> {
        let span = debug_span!("get", node = %node);
        let _transfer = self.limits.transfers.acquire().await;
        self.limits.down.acquire(expected_len as u64).await;
        let started = Instant::now();
        let answer = async {
            self.ensure_connected(node, addr).await?;
            let name = node_server_name(node);
            let call = self
                .pool
                .call(addr, &name, GetPacket { order }, self.timeout);
            Ok::<_, TransferError>(call.instrument(span).await?)
        }
        .await;
        let PacketData { data, .. } = match answer {
            Ok(a) => {
                self.latency.record(node, started.elapsed());
                a
            }
            Err(e) => {
                self.latency.record_failure(node);
                return Err(e);
            }
        };
        if data.len() != expected_len {
            self.latency.record_failure(node);
            return Err(TransferError::Size {
                node,
                got: data.len(),
                expected: expected_len,
            });
        }
        if blake3::hash(&data) != blake3::Hash::from_bytes(checksum) {
            self.latency.record_failure(node);
            return Err(TransferError::Checksum { node });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::put_charge;

    #[test]
    fn a_chunk_is_charged_its_data_shards_not_its_parity() {
        // 4 + 2: six packets of 1 MiB cost 4 MiB together (rounded up per packet).
        let chunk = 6 * put_charge(1 << 20, 4, 2);
        assert!((4 << 20..(4 << 20) + 6).contains(&chunk), "{chunk}");
        assert_eq!(6 * put_charge(3 << 20, 4, 2), 12 << 20);
        // Replicas (k = 1): three copies cost one.
        assert_eq!(3 * put_charge(999, 1, 2), 999);
        // No parity: the whole packet.
        assert_eq!(put_charge(12345, 3, 0), 12345);
    }
}
