//! A real coordinator on 127.0.0.1:0 and real QUIC members joining it with CSRs.
// Each test binary uses a different subset of the helpers, and test helpers may unwrap like
// tests do (clippy's allow-unwrap-in-tests covers only #[test] functions).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gridback_coordinator::{CoordinatorConfig, Server};
use std::collections::HashSet;

use gridback_proto::coord_api::*;
use gridback_proto::tls::{
    COORDINATOR_SERVER_NAME, Identity, anonymous_client_config, der_to_pem, new_key_and_csr,
};
use gridback_proto::transport::{CallError, call, client_endpoint, client_endpoint_with, connect};
use gridback_proto::{CertFingerprint, NodeId, Rpc};
use gridback_proto::{ChunkId, ErrorCode, OrderOp, OrderVerifier, now_unix_ms};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// Deadline for one call in tests.
pub const T: Duration = Duration::from_secs(10);

/// A running coordinator.
pub struct Running {
    pub addr: SocketAddr,
    pub ca_der: Vec<u8>,
    pub token: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn config(data_dir: &Path) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(data_dir);
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.addr_file = Some(data_dir.join("coordinator.addr"));
    c
}

impl Running {
    pub async fn start(cfg: CoordinatorConfig) -> Running {
        let data_dir = cfg.data_dir.clone();
        let server = Server::bind(cfg).expect("bind coordinator");
        let addr = server.local_addr();
        let ca_der = server.ca_cert_der().to_vec();
        let token = gridback_coordinator::read_join_token(&data_dir)
            .unwrap()
            .to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Running {
            addr,
            ca_der,
            token,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops in time")
            .unwrap();
    }

    pub fn ca(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.ca_der.clone())
    }

    /// An anonymous connection (no client certificate).
    pub async fn anonymous(&self) -> (quinn::Endpoint, quinn::Connection) {
        let ep = client_endpoint_with(anonymous_client_config(&self.ca()).unwrap()).unwrap();
        let conn = connect(&ep, &self.addr.to_string(), COORDINATOR_SERVER_NAME)
            .await
            .unwrap();
        (ep, conn)
    }

    /// Join with a fresh key and CSR.
    pub async fn join_with(
        &self,
        token: &str,
        role: Role,
        label: &str,
    ) -> Result<Member, CallError> {
        let (key_pem, csr_der) = new_key_and_csr(label).unwrap();
        let (_ep, conn) = self.anonymous().await;
        let joined = call(
            &conn,
            Join {
                token: token.to_string(),
                role,
                csr_der,
                label: label.to_string(),
            },
            T,
        )
        .await?;
        let identity = Identity::from_pem(
            &der_to_pem("CERTIFICATE", &joined.cert_der),
            &key_pem,
            &der_to_pem("CERTIFICATE", &joined.ca_der),
        )
        .unwrap();
        Ok(Member::connect(identity, joined, self.addr).await)
    }

    pub async fn join(&self, role: Role, label: &str) -> Member {
        self.join_with(&self.token.clone(), role, label)
            .await
            .expect("join")
    }
}

/// A joined node or client with its own mutual-TLS connection.
pub struct Member {
    pub identity: Identity,
    pub joined: Joined,
    pub conn: quinn::Connection,
    _ep: quinn::Endpoint,
}

impl Member {
    pub async fn connect(identity: Identity, joined: Joined, addr: SocketAddr) -> Member {
        let ep = client_endpoint(&identity).unwrap();
        let conn = connect(&ep, &addr.to_string(), COORDINATOR_SERVER_NAME)
            .await
            .unwrap();
        Member {
            identity,
            joined,
            conn,
            _ep: ep,
        }
    }

    /// Same identity, new connection (after a coordinator restart).
    pub async fn reconnect(self, addr: SocketAddr) -> Member {
        Member::connect(self.identity, self.joined, addr).await
    }

    pub fn fp(&self) -> CertFingerprint {
        self.identity.fingerprint()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.joined.id)
    }

    pub async fn call<R: Rpc>(&self, req: R) -> Result<R::Response, CallError> {
        call(&self.conn, req, T).await
    }

    /// Heartbeat as a node offering `capacity_bytes` at a made-up address.
    pub async fn beat(&self, capacity_bytes: u64) {
        let port = 20_000 + u16::from(self.joined.id[0]);
        self.call(NodeHeartbeat {
            advertise_addr: format!("127.0.0.1:{port}"),
            capacity_bytes,
            used_bytes: 0,
            packet_count: 0,
            pid: 4242,
            location: loc(&format!("eu/z1/{}", self.node_id())),
        })
        .await
        .expect("heartbeat");
    }
}

/// Poll `f` until it returns true, or panic at the deadline.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const MIB: u64 = 1 << 20;

/// A location from `REGION/ZONE/HOST`.
pub fn loc(s: &str) -> gridback_proto::location::Location {
    s.parse().unwrap()
}

/// Connect as the admin with the identity the coordinator wrote into its data dir.
pub async fn admin(data_dir: &Path, addr: SocketAddr) -> Member {
    let dir = gridback_coordinator::admin_tls_dir(data_dir);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let identity =
        Identity::from_pem(&read("admin.crt"), &read("admin.key"), &read("ca.crt")).unwrap();
    let joined = Joined {
        role: Role::Admin,
        id: [0; 16],
        grid: [0; 16],
        cert_der: identity.cert_der.to_vec(),
        ca_der: identity.ca_der.to_vec(),
        order_public_key: Vec::new(),
    };
    Member::connect(identity, joined, addr).await
}

pub fn code<T: std::fmt::Debug>(r: Result<T, CallError>) -> ErrorCode {
    r.expect_err("the call must fail")
        .code()
        .expect("a remote error")
}

pub fn placements(a: &Allocation) -> Vec<PacketPlacement> {
    a.targets
        .iter()
        .map(|t| PacketPlacement {
            index: t.index,
            node: t.node,
            packet: t.order.order.packet,
            checksum: [t.index; 32],
        })
        .collect()
}

pub fn commit_of(a: &Allocation) -> ChunkCommit {
    ChunkCommit {
        id: a.id,
        k: a.k,
        m: a.m,
        shard_bytes: a.shard_bytes,
        packets: placements(a),
    }
}

pub async fn allocate(c: &Member, ids: &[ChunkId]) -> Result<Allocations, CallError> {
    let chunks = ids
        .iter()
        .map(|id| ChunkAlloc {
            id: *id,
            blob_bytes: MIB + 3,
        })
        .collect();
    c.call(AllocateChunks {
        chunks,
        exclude: vec![],
    })
    .await
}

pub async fn commit(
    c: &Member,
    snap: &str,
    chunks: Vec<ChunkCommit>,
    refs: Vec<ChunkId>,
) -> Result<Committed, CallError> {
    c.call(CommitChunks {
        snapshot: snap.into(),
        chunks,
        refs,
    })
    .await
}

pub fn check_put_orders(a: &Allocation, client: &Member, verifier: &OrderVerifier) {
    let nodes: HashSet<NodeId> = a.targets.iter().map(|t| t.node).collect();
    assert_eq!(nodes.len(), a.targets.len(), "distinct nodes");
    assert_eq!(a.targets.len(), usize::from(a.k + a.m));
    assert!(a.shard_bytes.is_multiple_of(2) && a.shard_bytes * u64::from(a.k) >= MIB + 3);
    for (i, t) in a.targets.iter().enumerate() {
        assert_eq!(usize::from(t.index), i);
        assert!(!t.addr.is_empty());
        let o = &t.order.order;
        assert_eq!(o.size_bytes, a.shard_bytes);
        verifier
            .check(
                &t.order,
                OrderOp::Put,
                t.node,
                o.packet,
                client.fp(),
                now_unix_ms(),
            )
            .expect("valid put order");
        // Bound to this client: nobody else may present it.
        assert!(
            verifier
                .check(
                    &t.order,
                    OrderOp::Put,
                    t.node,
                    o.packet,
                    gridback_proto::CertFingerprint::random(),
                    now_unix_ms()
                )
                .is_err()
        );
    }
}
