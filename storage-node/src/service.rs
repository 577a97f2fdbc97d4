//! The node's request handler: checks each data request's signed order against the connection's
//! client certificate, then hands it to the packet store. Every refusal maps to one
//! `WireError` code (see [`order_error`] and `StoreError::code`).

use std::sync::{Arc, RwLock};

use gridback_proto::node_api::{
    DeletePacket, Deleted, GetPacket, GetPackets, MAX_BATCH_PACKETS, NodeHealthReport, NodeRequest,
    PacketData, PacketsData, PutAck, PutAcks, PutPacket, PutPackets,
};
use gridback_proto::order::OrderError;
use gridback_proto::transport::{Peer, Service, respond};
use gridback_proto::wire::FrameError;
use gridback_proto::{ErrorCode, NodeId, OrderOp, OrderVerifier, SignedOrder, WireError};
use tracing::{Instrument, debug, debug_span, warn};

use crate::client_limits::ClientGates;
use crate::store::PacketStore;

/// The coordinator's order key, shared by the service (which checks orders) and the heartbeat
/// worker (which refreshes it from every heartbeat answer).
#[derive(Debug, Clone)]
pub struct OrderKey {
    inner: Arc<RwLock<(Vec<u8>, OrderVerifier)>>,
}

impl OrderKey {
    /// Start with a raw Ed25519 public key.
    pub fn new(public_key: Vec<u8>) -> Self {
        let verifier = OrderVerifier::new(public_key.clone());
        Self {
            inner: Arc::new(RwLock::new((public_key, verifier))),
        }
    }

    /// The key in force.
    pub fn public_key(&self) -> Vec<u8> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// A verifier for the key in force.
    pub fn verifier(&self) -> OrderVerifier {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Replace the key; returns whether it changed.
    pub fn update(&self, public_key: &[u8]) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.0 == public_key {
            return false;
        }
        *g = (public_key.to_vec(), OrderVerifier::new(public_key.to_vec()));
        true
    }
}

/// Refuse a batch of more than [`MAX_BATCH_PACKETS`] packets.
fn check_batch_len(n: usize) -> Result<(), WireError> {
    if n > MAX_BATCH_PACKETS {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("batch of {n} packets exceeds the limit of {MAX_BATCH_PACKETS}"),
        ));
    }
    Ok(())
}

/// The storage node service served over QUIC.
#[derive(Debug)]
pub struct NodeService {
    node_id: NodeId,
    store: PacketStore,
    order_key: OrderKey,
    gates: ClientGates,
    span: tracing::Span,
}

/// Map an order check failure to its wire error.
pub fn order_error(e: OrderError) -> WireError {
    let code = match e {
        OrderError::Expired { .. } => ErrorCode::Expired,
        OrderError::BadSignature | OrderError::Mismatch(_) => ErrorCode::Unauthorized,
    };
    WireError::new(code, e.to_string())
}

impl NodeService {
    /// A service for `store`, checking orders for `node_id` against `order_key`. Request spans
    /// are children of `span` (the node's root span).
    pub fn new(
        node_id: NodeId,
        store: PacketStore,
        order_key: OrderKey,
        span: tracing::Span,
    ) -> Self {
        Self {
            node_id,
            store,
            order_key,
            gates: ClientGates::default(),
            span,
        }
    }

    /// Enforce `gates` (per-client limits, shared with the heartbeat worker that refreshes
    /// them).
    pub fn with_gates(mut self, gates: ClientGates) -> Self {
        self.gates = gates;
        self
    }

    /// The client's certificate on this connection (checked by [`Self::check`] first).
    fn client(peer: &Peer) -> Result<gridback_proto::CertFingerprint, WireError> {
        peer.fingerprint.ok_or_else(|| {
            WireError::new(
                ErrorCode::Unauthorized,
                "no client certificate on this connection",
            )
        })
    }

    /// Check that `signed` allows `op` on its packet for this node and this peer.
    fn check(&self, peer: &Peer, signed: &SignedOrder, op: OrderOp) -> Result<(), WireError> {
        let client = Self::client(peer)?;
        let o = &signed.order;
        self.order_key
            .verifier()
            .check(
                signed,
                op,
                self.node_id,
                o.packet,
                client,
                gridback_proto::now_unix_ms(),
            )
            .map_err(|e| {
                let err = order_error(e);
                if err.code == ErrorCode::Expired {
                    debug!(packet = %o.packet, error = %err, "order refused");
                } else {
                    warn!(packet = %o.packet, peer = %peer.addr, error = %err, "order refused");
                }
                err
            })
    }

    /// The checks of a put before it is admitted: the order, and the size it grants.
    fn check_put(&self, peer: &Peer, req: &PutPacket) -> Result<(), WireError> {
        self.check(peer, &req.order, OrderOp::Put)?;
        let o = &req.order.order;
        if o.size_bytes != req.data.len() as u64 {
            warn!(packet = %o.packet, order_bytes = o.size_bytes, data_bytes = req.data.len(),
                "put refused: size differs from the order");
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                format!(
                    "order is for {} bytes, packet has {}",
                    o.size_bytes,
                    req.data.len()
                ),
            ));
        }
        Ok(())
    }

    async fn put(&self, peer: Peer, req: PutPacket) -> Result<PutAck, WireError> {
        self.check_put(&peer, &req)?;
        let o = &req.order.order;
        let packet = o.packet;
        let admission = self
            .gates
            .admit(&Self::client(&peer)?, true)
            .await
            .inspect_err(|e| {
                warn!(packet = %packet, peer = %peer.addr, error = %e, "put refused");
            })?;
        admission.upload(req.data.len() as u64).await;
        let ack = self.store.put(packet, req.data).await?;
        debug!(packet = %packet, already_present = ack.already_present, "packet stored");
        Ok(ack)
    }

    /// A batch of puts: each packet is checked as a single put is (order, size), the client
    /// is admitted once for the whole batch, and the accepted packets are stored with one
    /// group sync ([`PacketStore::put_many`]). Each packet gets its own answer.
    async fn put_batch(&self, peer: Peer, req: PutPackets) -> Result<PutAcks, WireError> {
        check_batch_len(req.packets.len())?;
        let mut acks: Vec<Option<Result<PutAck, WireError>>> =
            Vec::with_capacity(req.packets.len());
        let mut accepted = Vec::with_capacity(req.packets.len());
        let mut bytes = 0u64;
        for (i, p) in req.packets.into_iter().enumerate() {
            match self.check_put(&peer, &p) {
                Ok(()) => {
                    bytes += p.data.len() as u64;
                    accepted.push((i, p.order.order.packet, p.data));
                    acks.push(None);
                }
                Err(e) => acks.push(Some(Err(e))),
            }
        }
        if !accepted.is_empty() {
            let admission = self
                .gates
                .admit(&Self::client(&peer)?, true)
                .await
                .inspect_err(|e| {
                    warn!(packets = accepted.len(), peer = %peer.addr, error = %e, "batch put refused");
                })?;
            admission.upload(bytes).await;
            let (idx, packets): (Vec<usize>, Vec<_>) = accepted
                .into_iter()
                .map(|(i, name, data)| (i, (name, data)))
                .unzip();
            let stored = self.store.put_many(packets).await;
            for (i, r) in idx.into_iter().zip(stored) {
                acks[i] = Some(r.map_err(WireError::from));
            }
        }
        debug!(packets = acks.len(), bytes, "batch stored");
        Ok(PutAcks {
            acks: acks
                .into_iter()
                .map(|a| a.expect("invariant: every packet was answered"))
                .collect(),
        })
    }

    async fn get_batch(&self, peer: Peer, req: GetPackets) -> Result<PacketsData, WireError> {
        check_batch_len(req.orders.len())?;
        let mut packets = Vec::with_capacity(req.orders.len());
        for order in req.orders {
            packets.push(self.get(peer, GetPacket { order }).await);
        }
        Ok(PacketsData { packets })
    }

    async fn get(&self, peer: Peer, req: GetPacket) -> Result<PacketData, WireError> {
        self.check(&peer, &req.order, OrderOp::Get)?;
        let admission = self.gates.admit(&Self::client(&peer)?, false).await?;
        let data = self.store.get(req.order.order.packet).await?;
        admission.download(data.data.len() as u64).await;
        Ok(data)
    }

    async fn delete(&self, peer: Peer, req: DeletePacket) -> Result<Deleted, WireError> {
        self.check(&peer, &req.order, OrderOp::Delete)?;
        let existed = self.store.delete(req.order.order.packet).await?;
        Ok(Deleted { existed })
    }

    fn health(&self) -> NodeHealthReport {
        let u = self.store.usage();
        NodeHealthReport {
            node: self.node_id,
            capacity_bytes: u.capacity_bytes,
            used_bytes: u.used_bytes,
            packet_count: u.packet_count,
        }
    }
}

impl Service for NodeService {
    type Request = NodeRequest;

    fn decode(body: Vec<u8>) -> Result<NodeRequest, FrameError> {
        // A put's packet stays in the buffer it arrived in.
        gridback_proto::node_api::decode_request(body)
    }

    async fn handle(&self, peer: Peer, req: NodeRequest) -> Vec<u8> {
        let method = match &req {
            NodeRequest::Put(_) => "put",
            NodeRequest::Get(_) => "get",
            NodeRequest::Delete(_) => "delete",
            NodeRequest::Health(_) => "health",
            NodeRequest::PutBatch(_) => "put_batch",
            NodeRequest::GetBatch(_) => "get_batch",
        };
        let span = debug_span!(parent: &self.span, "rpc", method, peer = %peer.addr);
        async {
            match req {
                NodeRequest::Put(r) => respond(&self.put(peer, r).await),
                NodeRequest::Get(r) => respond(&self.get(peer, r).await),
                NodeRequest::Delete(r) => respond(&self.delete(peer, r).await),
                NodeRequest::Health(_) => respond(&Ok::<_, WireError>(self.health())),
                NodeRequest::PutBatch(r) => respond(&self.put_batch(peer, r).await),
                NodeRequest::GetBatch(r) => respond(&self.get_batch(peer, r).await),
            }
        }
        .instrument(span)
        .await
    }
}
