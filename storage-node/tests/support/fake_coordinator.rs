//! A minimal coordinator for node tests: it serves `Join` (issuing real certificates from
//! its CA) and `NodeHeartbeat` (recording them, answering with the operator capacity and
//! client limits a test sets), and nothing else.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridback_proto::coord_api::{
    ClientLimits, CoordRequest, HeartbeatAck, Join, Joined, NodeHeartbeat, Role,
};
use gridback_proto::tls::{COORDINATOR_SERVER_NAME, ClusterCa, node_server_name};
use gridback_proto::transport::{self, Peer, Service, respond};
use gridback_proto::{ErrorCode, NodeId, OrderSigner, WireError};
use tokio_util::sync::CancellationToken;

pub struct FakeCoordinator {
    pub ca: ClusterCa,
    pub token: String,
    pub grid: Mutex<[u8; 16]>,
    pub signer: Mutex<OrderSigner>,
    pub node_id: NodeId,
    pub heartbeats: Mutex<Vec<NodeHeartbeat>>,
    /// Operator capacity sent in every answer.
    pub capacity: Mutex<Option<u64>>,
    /// Client limits sent in every answer.
    pub client_limits: Mutex<Vec<ClientLimits>>,
}

impl FakeCoordinator {
    pub fn new(ca: ClusterCa, token: &str) -> Arc<Self> {
        Arc::new(Self {
            ca,
            token: token.to_string(),
            grid: Mutex::new([0x42; 16]),
            signer: Mutex::new(OrderSigner::generate().0),
            node_id: NodeId::random(),
            heartbeats: Mutex::default(),
            capacity: Mutex::default(),
            client_limits: Mutex::default(),
        })
    }

    /// Serve on 127.0.0.1:0 until `shutdown`; returns the bound address.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> SocketAddr {
        let identity = self
            .ca
            .issue_with_key(COORDINATOR_SERVER_NAME, "coordinator")
            .unwrap();
        let ep = transport::server_endpoint(&identity, ([127, 0, 0, 1], 0).into(), true).unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(transport::serve(ep, self.clone(), shutdown));
        addr
    }

    pub fn heartbeat_count(&self) -> usize {
        self.heartbeats.lock().unwrap().len()
    }

    pub fn last_heartbeat(&self) -> Option<NodeHeartbeat> {
        self.heartbeats.lock().unwrap().last().cloned()
    }

    fn join(&self, j: Join) -> Result<Joined, WireError> {
        if j.token != self.token {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "unknown join token",
            ));
        }
        let cert = self
            .ca
            .issue_from_csr(&j.csr_der, &node_server_name(self.node_id), &j.label)
            .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
        Ok(Joined {
            role: Role::Node,
            id: self.node_id.0,
            grid: *self.grid.lock().unwrap(),
            cert_der: cert.to_vec(),
            ca_der: self.ca.cert_der().to_vec(),
            order_public_key: self.signer.lock().unwrap().public_key(),
        })
    }

    fn heartbeat(&self, peer: Peer, h: NodeHeartbeat) -> Result<HeartbeatAck, WireError> {
        if peer.fingerprint.is_none() {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "heartbeat needs a certificate",
            ));
        }
        self.heartbeats.lock().unwrap().push(h);
        Ok(HeartbeatAck {
            node: self.node_id,
            order_public_key: self.signer.lock().unwrap().public_key(),
            grid: *self.grid.lock().unwrap(),
            capacity_bytes: *self.capacity.lock().unwrap(),
            client_limits: self.client_limits.lock().unwrap().clone(),
        })
    }
}

impl Service for FakeCoordinator {
    type Request = CoordRequest;

    async fn handle(&self, peer: Peer, req: CoordRequest) -> Vec<u8> {
        match req {
            CoordRequest::Join(j) => respond(&self.join(j)),
            CoordRequest::NodeHeartbeat(h) => respond(&self.heartbeat(peer, h)),
            _ => respond::<()>(&Err(WireError::new(
                ErrorCode::BadRequest,
                "not in the fake",
            ))),
        }
    }
}

/// Poll `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
