//! In-process stand-ins for the coordinator and the storage nodes, speaking the real protocol
//! over QUIC with mutual TLS (certificates from a per-test cluster CA, orders signed and
//! checked with the real order key types).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gridback_fs::chunker::ChunkingParams;
use gridback_fs::client::GridClient;
use gridback_fs::coord_client::CoordClient;
use gridback_fs::erasure::shard_bytes_for;
use gridback_fs::keys::ClientKeys;
use gridback_fs::node_client::NodeClient;
use gridback_fs::uploader::UploadParams;
use gridback_proto::coord_api::*;
use gridback_proto::location::Location;
use gridback_proto::node_api::{NodeRequest, PacketData, PutAck, PutAcks, PutPacket};
use gridback_proto::subscription::{ClientTerms, Limits, Subscription, SubscriptionState, Usage};
use gridback_proto::tls::{
    COORDINATOR_SERVER_NAME, ClusterCa, client_server_name, node_server_name,
};
use gridback_proto::transport::{
    ConnPool, Peer, Service, client_endpoint, respond, serve, server_endpoint,
};
use gridback_proto::{
    ChunkId, ClientId, ErrorCode, NodeId, Order, OrderOp, OrderSigner, OrderVerifier, PacketName,
    SignedOrder, WireError, now_unix_ms,
};
use tokio_util::sync::CancellationToken;

/// Orders are valid this long.
const ORDER_TTL_MS: u64 = 120_000;

pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    packets: Mutex<HashMap<PacketName, Vec<u8>>>,
    corrupt: AtomicBool,
    /// Gets never answer (a stalled process) until cleared or the node stops.
    stall_gets: AtomicBool,
    /// While true, puts wait (a stalled network); `pending_puts` counts the waiting ones.
    hold: tokio::sync::watch::Receiver<bool>,
    pending_puts: Arc<AtomicUsize>,
    /// Put requests (single or batch) received.
    put_requests: AtomicUsize,
    /// Get requests (single or batch) received.
    get_requests: AtomicUsize,
    verifier: OrderVerifier,
    stop: CancellationToken,
}

fn answer<T: serde::Serialize>(r: Result<T, WireError>) -> Vec<u8> {
    respond(&r)
}

impl Node {
    /// Wait while puts are held (a stalled network).
    async fn wait_unheld(&self) {
        self.put_requests.fetch_add(1, Ordering::SeqCst);
        let mut hold = self.hold.clone();
        self.pending_puts.fetch_add(1, Ordering::SeqCst);
        let _ = hold.wait_for(|h| !*h).await;
        self.pending_puts.fetch_sub(1, Ordering::SeqCst);
    }

    /// Keep one packet whose order was checked.
    fn store(&self, p: PutPacket) -> Result<PutAck, WireError> {
        if p.data.len() as u64 != p.order.order.size_bytes {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "size differs from order",
            ));
        }
        let checksum = *blake3::hash(&p.data).as_bytes();
        let mut packets = self.packets.lock().unwrap();
        let already_present = packets
            .insert(p.order.order.packet, p.data.to_vec())
            .is_some();
        Ok(PutAck {
            checksum,
            already_present,
        })
    }
}

impl Service for Node {
    type Request = NodeRequest;
    async fn handle(&self, peer: Peer, req: NodeRequest) -> Vec<u8> {
        let Some(client) = peer.fingerprint else {
            return answer::<()>(Err(WireError::new(
                ErrorCode::Unauthorized,
                "no certificate",
            )));
        };
        if matches!(req, NodeRequest::Get(_) | NodeRequest::GetBatch(_)) {
            self.get_requests.fetch_add(1, Ordering::SeqCst);
        }
        let check = |o: &SignedOrder, op| {
            self.verifier
                .check(o, op, self.id, o.order.packet, client, now_unix_ms())
                .map_err(|e| WireError::new(ErrorCode::Unauthorized, e.to_string()))
        };
        match req {
            NodeRequest::Put(p) => {
                self.wait_unheld().await;
                answer(check(&p.order, OrderOp::Put).and_then(|()| self.store(p)))
            }
            NodeRequest::PutBatch(b) => {
                self.wait_unheld().await;
                let acks = b
                    .packets
                    .into_iter()
                    .map(|p| check(&p.order, OrderOp::Put).and_then(|()| self.store(p)))
                    .collect();
                answer(Ok(PutAcks { acks }))
            }
            NodeRequest::Get(_) if self.stall_gets.load(Ordering::SeqCst) => {
                self.stop.cancelled().await;
                answer::<()>(Err(WireError::new(ErrorCode::Unavailable, "stopped")))
            }
            NodeRequest::Get(g) => answer(check(&g.order, OrderOp::Get).and_then(|()| {
                let mut data = self
                    .packets
                    .lock()
                    .unwrap()
                    .get(&g.order.order.packet)
                    .cloned()
                    .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such packet"))?;
                if self.corrupt.load(Ordering::Relaxed) {
                    data[0] ^= 1;
                }
                let checksum = *blake3::hash(&data).as_bytes();
                Ok(PacketData { data, checksum })
            })),
            _ => answer::<()>(Err(WireError::new(ErrorCode::BadRequest, "unsupported"))),
        }
    }
}

#[derive(Default)]
struct CoordState {
    chunks: HashMap<ChunkId, ChunkCommit>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    quota_exceeded: bool,
    limits: Limits,
    polls: usize,
    /// Dedup queries, allocations and commits answered.
    round_trips: RoundTrips,
}

/// Chunk-protocol requests the coordinator answered, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundTrips {
    pub queries: usize,
    pub allocations: usize,
    pub commits: usize,
    pub locates: usize,
}

pub struct Coordinator {
    client: ClientId,
    k: u8,
    m: u8,
    nodes: Vec<(NodeId, String)>,
    signer: OrderSigner,
    state: Mutex<CoordState>,
}

fn refuse<T>(code: ErrorCode, msg: &str) -> Result<T, WireError> {
    Err(WireError::new(code, msg))
}

impl Coordinator {
    fn order(
        &self,
        op: OrderOp,
        node: NodeId,
        packet: PacketName,
        size: u64,
        peer: &Peer,
    ) -> SignedOrder {
        self.signer.sign(Order {
            op,
            node,
            packet,
            size_bytes: size,
            client: peer.fingerprint.expect("mutual TLS"),
            expires_unix_ms: now_unix_ms() + ORDER_TTL_MS,
        })
    }

    fn targets(
        &self,
        id: &ChunkId,
        indices: &[u8],
        exclude: &HashSet<NodeId>,
        size: u64,
        peer: &Peer,
    ) -> Result<Vec<Target>, WireError> {
        let start = id.0[0] as usize;
        let eligible: Vec<&(NodeId, String)> = (0..self.nodes.len())
            .map(|i| &self.nodes[(start + i) % self.nodes.len()])
            .filter(|(n, _)| !exclude.contains(n))
            .collect();
        if eligible.len() < indices.len() {
            return refuse(
                ErrorCode::NoPlacement,
                &format!(
                    "{} eligible nodes for {} packets",
                    eligible.len(),
                    indices.len()
                ),
            );
        }
        Ok(indices
            .iter()
            .zip(eligible)
            .map(|(&index, (node, addr))| Target {
                index,
                node: *node,
                addr: addr.clone(),
                order: self.order(OrderOp::Put, *node, PacketName::random(), size, peer),
            })
            .collect())
    }

    pub fn chunk_count(&self) -> usize {
        self.state.lock().unwrap().chunks.len()
    }

    pub fn all_chunks_fully_placed(&self, total: usize) -> bool {
        self.state.lock().unwrap().chunks.values().all(|c| {
            let nodes: HashSet<_> = c.packets.iter().map(|p| p.node).collect();
            c.packets.len() == total && nodes.len() == total
        })
    }

    pub fn packets_on(&self, node: NodeId, ids: &[ChunkId]) -> usize {
        let st = self.state.lock().unwrap();
        ids.iter()
            .filter_map(|id| st.chunks.get(id))
            .flat_map(|c| &c.packets)
            .filter(|p| p.node == node)
            .count()
    }

    /// Limits sent in the greeting and every poll from now on.
    pub fn set_limits(&self, limits: Limits) {
        self.state.lock().unwrap().limits = limits;
    }

    /// Polls answered so far.
    pub fn round_trips(&self) -> RoundTrips {
        self.state.lock().unwrap().round_trips
    }

    pub fn polls(&self) -> usize {
        self.state.lock().unwrap().polls
    }

    fn terms(&self, location: Location, st: &CoordState) -> ClientTerms {
        ClientTerms {
            client: self.client,
            subscription: Subscription {
                limits: st.limits,
                ..Subscription::default()
            },
            state: SubscriptionState::Active,
            usage: Usage::default(),
            location,
        }
    }

    pub fn set_quota_exceeded(&self, on: bool) {
        self.state.lock().unwrap().quota_exceeded = on;
    }

    fn info(name: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            state: SnapshotState::Open,
            created_unix_ms: now_unix_ms(),
            sealed_unix_ms: None,
            tree_bytes: 0,
            chunk_refs: 0,
        }
    }
}

impl Service for Coordinator {
    type Request = CoordRequest;
    async fn handle(&self, peer: Peer, req: CoordRequest) -> Vec<u8> {
        let mut st = self.state.lock().unwrap();
        match req {
            CoordRequest::ClientHello(h) => answer(Ok(ClientWelcome {
                client: self.client,
                grid: [0; 16],
                erasure_k: self.k,
                erasure_m: self.m,
                terms: self.terms(h.location, &st),
            })),
            CoordRequest::ClientPoll(_) => {
                st.polls += 1;
                answer(Ok(self.terms(Location::new("test", "test", "client"), &st)))
            }
            CoordRequest::QueryChunks(q) => {
                st.round_trips.queries += 1;
                answer(Ok(ChunkPresence {
                    present: q.ids.iter().map(|i| st.chunks.contains_key(i)).collect(),
                }))
            }
            CoordRequest::AllocateChunks(a) => {
                st.round_trips.allocations += 1;
                if st.quota_exceeded {
                    return answer::<()>(refuse(ErrorCode::QuotaExceeded, "over 1 GiB"));
                }
                let exclude: HashSet<NodeId> = a.exclude.into_iter().collect();
                let indices: Vec<u8> = (0..self.k + self.m).collect();
                let r: Result<Vec<Allocation>, WireError> = a
                    .chunks
                    .iter()
                    .map(|c| {
                        let shard_bytes = shard_bytes_for(c.blob_bytes as usize, self.k) as u64;
                        let targets =
                            self.targets(&c.id, &indices, &exclude, shard_bytes, &peer)?;
                        Ok(Allocation {
                            id: c.id,
                            k: self.k,
                            m: self.m,
                            shard_bytes,
                            targets,
                        })
                    })
                    .collect();
                answer(r.map(|chunks| Allocations { chunks }))
            }
            CoordRequest::ReplaceTargets(r) => {
                let exclude: HashSet<NodeId> = r.exclude.into_iter().collect();
                answer(
                    self.targets(&r.id, &r.indices, &exclude, r.shard_bytes, &peer)
                        .map(|targets| Replacements { targets }),
                )
            }
            CoordRequest::CommitChunks(c) => {
                st.round_trips.commits += 1;
                let Some(snap) = st.snapshots.get_mut(&c.snapshot) else {
                    return answer::<()>(refuse(ErrorCode::NotFound, "no such snapshot"));
                };
                snap.info.chunk_refs += (c.chunks.len() + c.refs.len()) as u64;
                let (mut stored, mut already) = (0, 0);
                for chunk in c.chunks {
                    match st.chunks.entry(chunk.id) {
                        std::collections::hash_map::Entry::Occupied(_) => already += 1,
                        std::collections::hash_map::Entry::Vacant(v) => {
                            stored += 1;
                            v.insert(chunk);
                        }
                    }
                }
                answer(Ok(Committed {
                    stored,
                    already_stored: already,
                    referenced: c.refs.len() as u32,
                }))
            }
            CoordRequest::LocateChunks(l) => {
                st.round_trips.locates += 1;
                let chunks = l
                    .ids
                    .iter()
                    .map(|id| {
                        st.chunks.get(id).map(|c| ChunkLocation {
                            id: c.id,
                            k: c.k,
                            m: c.m,
                            shard_bytes: c.shard_bytes,
                            packets: c
                                .packets
                                .iter()
                                .map(|p| LocatedPacket {
                                    index: p.index,
                                    node: p.node,
                                    addr: self
                                        .nodes
                                        .iter()
                                        .find(|(n, _)| *n == p.node)
                                        .map(|(_, a)| a.clone())
                                        .unwrap_or_default(),
                                    node_up: true,
                                    checksum: p.checksum,
                                    order: self.order(
                                        OrderOp::Get,
                                        p.node,
                                        p.packet,
                                        c.shard_bytes,
                                        &peer,
                                    ),
                                    location: Location::new(
                                        "default",
                                        "default",
                                        &p.node.to_string(),
                                    ),
                                })
                                .collect(),
                        })
                    })
                    .collect();
                answer(Ok(Locations { chunks }))
            }
            CoordRequest::SnapshotCreate(s) => {
                if st.snapshots.contains_key(&s.name) {
                    return answer::<()>(refuse(ErrorCode::Conflict, "exists"));
                }
                let info = Self::info(&s.name);
                st.snapshots.insert(
                    s.name,
                    SnapshotRecord {
                        info: info.clone(),
                        tree: vec![],
                    },
                );
                answer(Ok(info))
            }
            CoordRequest::SnapshotSeal(s) => match st.snapshots.get_mut(&s.name) {
                Some(r) if r.info.state == SnapshotState::Open => {
                    r.info.state = SnapshotState::Sealed;
                    r.info.sealed_unix_ms = Some(now_unix_ms());
                    r.info.tree_bytes = s.tree_bytes;
                    r.tree = s.tree;
                    answer(Ok(r.info.clone()))
                }
                Some(_) => answer::<()>(refuse(ErrorCode::Conflict, "already sealed")),
                None => answer::<()>(refuse(ErrorCode::NotFound, "no such snapshot")),
            },
            CoordRequest::SnapshotGet(g) => match st.snapshots.get(&g.name) {
                Some(r) => answer(Ok(r.clone())),
                None => answer::<()>(refuse(ErrorCode::NotFound, "no such snapshot")),
            },
            CoordRequest::SnapshotList(_) => answer(Ok(SnapshotListing {
                snapshots: st.snapshots.values().map(|r| r.info.clone()).collect(),
            })),
            _ => answer::<()>(refuse(ErrorCode::BadRequest, "unsupported")),
        }
    }
}

pub struct Cluster {
    ca: ClusterCa,
    pub coordinator: Arc<Coordinator>,
    coord_addr: SocketAddr,
    nodes: Vec<Arc<Node>>,
    stop: CancellationToken,
    hold: tokio::sync::watch::Sender<bool>,
    pub pending_puts: Arc<AtomicUsize>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cluster {
    pub async fn start(n: usize, k: u8, m: u8) -> Self {
        let ca = ClusterCa::generate("pipeline-test").unwrap();
        let (signer, _) = OrderSigner::generate();
        let stop = CancellationToken::new();
        let (hold, hold_rx) = tokio::sync::watch::channel(false);
        let pending_puts = Arc::new(AtomicUsize::new(0));
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = NodeId::random();
            let ident = ca
                .issue_with_key(&node_server_name(id), &format!("node-{i}"))
                .unwrap();
            let ep = server_endpoint(&ident, "127.0.0.1:0".parse().unwrap(), false).unwrap();
            let node = Arc::new(Node {
                id,
                addr: ep.local_addr().unwrap(),
                packets: Mutex::default(),
                corrupt: AtomicBool::new(false),
                stall_gets: AtomicBool::new(false),
                hold: hold_rx.clone(),
                pending_puts: pending_puts.clone(),
                put_requests: AtomicUsize::new(0),
                get_requests: AtomicUsize::new(0),
                verifier: OrderVerifier::new(signer.public_key()),
                stop: stop.child_token(),
            });
            tokio::spawn(serve(ep, node.clone(), node.stop.clone()));
            nodes.push(node);
        }
        let ident = ca
            .issue_with_key(COORDINATOR_SERVER_NAME, "coordinator")
            .unwrap();
        let ep = server_endpoint(&ident, "127.0.0.1:0".parse().unwrap(), false).unwrap();
        let coord_addr = ep.local_addr().unwrap();
        let coordinator = Arc::new(Coordinator {
            client: ClientId::random(),
            k,
            m,
            nodes: nodes.iter().map(|n| (n.id, n.addr.to_string())).collect(),
            signer,
            state: Mutex::default(),
        });
        tokio::spawn(serve(ep, coordinator.clone(), stop.child_token()));
        Self {
            ca,
            coordinator,
            coord_addr,
            nodes,
            stop,
            hold,
            pending_puts,
        }
    }

    /// A client with small chunks (64 KiB average) and small batches, so a few MB of data
    /// make many batches and exercise the pipelining.
    pub async fn client(&self) -> GridClient {
        self.client_with(UploadParams {
            chunking: ChunkingParams::new(16 * 1024, 64 * 1024, 256 * 1024).unwrap(),
            batch_chunks: 4,
            workers: 2,
            memory_bytes: 2 << 20,
            ..UploadParams::default()
        })
        .await
    }

    /// Get requests (single or batch) every node received.
    pub fn get_requests(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.get_requests.load(Ordering::SeqCst))
            .sum()
    }

    /// Put requests (single or batch) every node received.
    pub fn put_requests(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.put_requests.load(Ordering::SeqCst))
            .sum()
    }

    /// A client with the given pipeline parameters.
    pub async fn client_with(&self, params: UploadParams) -> GridClient {
        self.client_with_keys(params, ClientKeys::generate()).await
    }

    /// A client with the given keys (a second process of the same client: a fresh mount).
    pub async fn client_with_keys(&self, params: UploadParams, keys: ClientKeys) -> GridClient {
        let ident = self
            .ca
            .issue_with_key(&client_server_name(self.coordinator.client), "client")
            .unwrap();
        let pool = ConnPool::new(client_endpoint(&ident).unwrap());
        let coord = CoordClient::new(pool.clone(), self.coord_addr.to_string());
        let welcome = coord
            .hello("test", Location::new("test", "test", "client"))
            .await
            .unwrap();
        GridClient::from_parts(coord, NodeClient::new(pool), keys, welcome, params)
    }

    pub fn stop_node(&self, i: usize) {
        self.nodes[i].stop.cancel();
    }

    /// Stall (true) or release (false) every put.
    pub fn hold_puts(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Make node `i` never answer gets (as if stopped with SIGSTOP).
    pub fn stall_gets(&self, i: usize, on: bool) {
        self.nodes[i].stall_gets.store(on, Ordering::SeqCst);
    }

    pub fn corrupt_node(&self, i: usize) {
        self.nodes[i].corrupt.store(true, Ordering::Relaxed);
    }

    pub fn node_id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    pub fn packet_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.packets.lock().unwrap().len())
            .sum()
    }
}
