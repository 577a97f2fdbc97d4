//! Shared test harness: a per-test cluster CA, order signer and identities, a storage node
//! running in-process on 127.0.0.1:0, and a mutual-TLS client to talk to it.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gridback_proto::node_api::{
    GetPacket, NodeHealth, NodeHealthReport, PacketData, PutAck, PutPacket,
};
use gridback_proto::tls::{ClusterCa, Identity, node_server_name};
use gridback_proto::transport::{self, CallError};
use gridback_proto::{
    CertFingerprint, ErrorCode, NodeId, Order, OrderOp, OrderSigner, PacketName, SignedOrder,
};
use gridback_storage_node::{NodeConfig, NodeError, PacketStore, Server};
use tokio_util::sync::CancellationToken;

/// Deadline for one call in tests.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A coordinator address where nothing answers: heartbeats fail harmlessly.
pub const NO_COORDINATOR: &str = "127.0.0.1:9";

/// Install a per-test subscriber that writes through the test harness.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gridback=debug,gridback_storage_node=debug".into()),
        )
        .try_init();
}

/// The coordinator's side of a test grid: CA, order key, one node identity, one client.
pub struct Grid {
    pub ca: ClusterCa,
    pub signer: OrderSigner,
    pub node_id: NodeId,
    pub node_tls: Identity,
    pub client: Identity,
}

impl Grid {
    pub fn new() -> Self {
        let ca = ClusterCa::generate("test").unwrap();
        let (signer, _) = OrderSigner::generate();
        let node_id = NodeId::random();
        let node_tls = ca
            .issue_with_key(&node_server_name(node_id), "node")
            .unwrap();
        let client = ca.issue_with_key("client.gridback", "client").unwrap();
        Self {
            ca,
            signer,
            node_id,
            node_tls,
            client,
        }
    }

    /// An order as the coordinator would issue it to `self.client`, valid for a minute.
    pub fn raw_order(&self, op: OrderOp, packet: PacketName, size_bytes: u64) -> Order {
        Order {
            op,
            node: self.node_id,
            packet,
            size_bytes,
            client: self.client.fingerprint(),
            expires_unix_ms: gridback_proto::now_unix_ms() + 60_000,
        }
    }

    pub fn order(&self, op: OrderOp, packet: PacketName, size_bytes: u64) -> SignedOrder {
        self.signer.sign(self.raw_order(op, packet, size_bytes))
    }

    pub fn config(&self, dir: &Path, capacity_bytes: u64) -> NodeConfig {
        let mut c = NodeConfig::new(dir, NO_COORDINATOR);
        c.capacity_bytes = capacity_bytes;
        c.label = "test-node".into();
        c
    }

    /// Start the node on `dir` with this grid's identity.
    pub async fn start(&self, dir: &Path, capacity_bytes: u64) -> RunningNode {
        let server = Server::bind_with_identity(
            self.config(dir, capacity_bytes),
            self.node_tls.clone(),
            self.node_id,
            self.signer.public_key(),
        )
        .await
        .unwrap();
        RunningNode::spawn(server)
    }
}

/// A node running in a task.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub node_id: NodeId,
    pub store: PacketStore,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    pub fn spawn(server: Server) -> Self {
        let shutdown = CancellationToken::new();
        let addr = server.local_addr();
        let node_id = server.node_id();
        let store = server.store().clone();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            node_id,
            store,
            shutdown,
            task,
        }
    }

    /// Stop the node and return how `run` ended.
    pub async fn stop(self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        tokio::time::timeout(CALL_TIMEOUT, self.task)
            .await
            .expect("node stops in time")
            .unwrap()
    }

    /// Wait (bounded) for `run` to end by itself.
    pub async fn finished(self) -> Result<(), NodeError> {
        tokio::time::timeout(CALL_TIMEOUT, self.task)
            .await
            .expect("node stops in time")
            .unwrap()
    }
}

/// A client connection to a node, presenting `identity`.
pub struct Client {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl Client {
    pub async fn connect(identity: &Identity, node: &RunningNode) -> Result<Self, CallError> {
        let endpoint = transport::client_endpoint(identity).unwrap();
        let conn = transport::connect(
            &endpoint,
            &node.addr.to_string(),
            &node_server_name(node.node_id),
        )
        .await?;
        Ok(Self { endpoint, conn })
    }

    pub async fn put(&self, order: SignedOrder, data: Vec<u8>) -> Result<PutAck, CallError> {
        transport::call(
            &self.conn,
            PutPacket {
                order,
                data: data.into(),
            },
            CALL_TIMEOUT,
        )
        .await
    }

    pub async fn get(&self, order: SignedOrder) -> Result<PacketData, CallError> {
        transport::call(&self.conn, GetPacket { order }, CALL_TIMEOUT).await
    }

    pub async fn health(&self) -> Result<NodeHealthReport, CallError> {
        transport::call(&self.conn, NodeHealth, CALL_TIMEOUT).await
    }
}

/// Assert that a call was refused by the node with `code`.
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, CallError>, code: ErrorCode) {
    match r {
        Err(e) => assert_eq!(e.code(), Some(code), "expected {code:?}, got {e}"),
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// A deterministic test packet.
pub fn packet(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// A fingerprint nobody holds.
pub fn stranger() -> CertFingerprint {
    CertFingerprint::random()
}
