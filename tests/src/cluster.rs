//! `TestCluster`: a coordinator and storage nodes running in this process on loopback, with
//! real QUIC and mutual TLS (certificates from the cluster's own CA), real redb and real
//! packet stores in temporary directories. Readiness is polled, never slept for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gridback_coordinator::CoordinatorConfig;
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::keys::ClientKeys;
use gridback_proto::NodeId;
use gridback_proto::coord_api::{NodeState, Status, StatusReport};
use gridback_storage_node::NodeConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Builder for [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    nodes: usize,
    k: u8,
    m: u8,
    node_capacity: u64,
    node_timeout: Duration,
}

impl Default for TestClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 6,
            k: 4,
            m: 2,
            node_capacity: 4 << 30,
            node_timeout: Duration::from_secs(10),
        }
    }
}

struct NodeHandle {
    config: NodeConfig,
    id: NodeId,
    task: Option<(JoinHandle<()>, CancellationToken)>,
}

/// A running in-process grid.
pub struct TestCluster {
    dir: tempfile::TempDir,
    coordinator_addr: String,
    coordinator: Option<(JoinHandle<()>, CancellationToken)>,
    nodes: Vec<NodeHandle>,
}

impl TestClusterBuilder {
    /// Number of storage nodes (at most 6 in CI).
    pub fn storage_nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    /// Erasure parameters.
    pub fn erasure(mut self, k: u8, m: u8) -> Self {
        self.k = k;
        self.m = m;
        self
    }
    /// Capacity of every node.
    pub fn node_capacity(mut self, bytes: u64) -> Self {
        self.node_capacity = bytes;
        self
    }
    /// How long before a silent node counts as down.
    pub fn node_timeout(mut self, t: Duration) -> Self {
        self.node_timeout = t;
        self
    }

    /// Start the coordinator and every node, and wait until all nodes are up.
    pub async fn start(self) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cdir = dir.path().join("coordinator");
        let mut ccfg = CoordinatorConfig::new(&cdir);
        ccfg.listen_addr = ([127, 0, 0, 1], 0).into();
        ccfg.erasure_k = self.k;
        ccfg.erasure_m = self.m;
        ccfg.node_timeout = self.node_timeout;
        let server = gridback_coordinator::Server::bind(ccfg).expect("coordinator binds");
        let coordinator_addr = server.local_addr().to_string();
        let token = CancellationToken::new();
        let task = tokio::spawn(server.run(token.clone()));
        let mut cluster = TestCluster {
            dir,
            coordinator_addr,
            coordinator: Some((task, token)),
            nodes: Vec::new(),
        };
        for i in 0..self.nodes {
            let ndir = cluster.dir.path().join(format!("node-{i}"));
            let mut cfg = NodeConfig::new(&ndir, cluster.coordinator_addr.clone());
            cfg.capacity_bytes = self.node_capacity;
            cfg.listen_addr = ([127, 0, 0, 1], 0).into();
            cfg.ca_file = Some(cdir.join("ca.crt"));
            cfg.join_token_file = Some(cdir.join("join-token"));
            cfg.label = format!("node-{i}");
            cfg.heartbeat_interval = Duration::from_millis(300);
            cluster.nodes.push(NodeHandle {
                config: cfg,
                id: NodeId([0; 16]),
                task: None,
            });
            cluster.start_node(i).await;
        }
        cluster.wait_nodes_up(self.nodes).await;
        cluster
    }
}

impl TestCluster {
    /// A builder with 6 nodes, 4+2.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// Coordinator address.
    pub fn coordinator_addr(&self) -> &str {
        &self.coordinator_addr
    }

    /// The coordinator's data dir.
    pub fn coordinator_dir(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// Node `i`'s allocated storage directory.
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.nodes[i].config.data_dir
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    async fn start_node(&mut self, i: usize) {
        let server = gridback_storage_node::Server::bind(self.nodes[i].config.clone())
            .await
            .expect("node binds");
        self.nodes[i].id = server.node_id();
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run(t).await {
                tracing::warn!(error = %e, "node stopped with an error");
            }
        });
        self.nodes[i].task = Some((task, token));
    }

    /// Stop node `i` (its data stays).
    pub async fn stop_node(&mut self, i: usize) {
        if let Some((task, token)) = self.nodes[i].task.take() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Start node `i` again on the same data dir.
    pub async fn restart_node(&mut self, i: usize) {
        self.stop_node(i).await;
        self.start_node(i).await;
    }

    /// Join a new client with fresh keys; its state lives in a new directory.
    pub async fn client(&self, name: &str) -> (ClientConfig, ClientKeys) {
        self.client_with_keys(name, ClientKeys::generate()).await
    }

    /// Join a new client with the given keys (share a domain key for cross-client dedup).
    pub async fn client_with_keys(
        &self,
        name: &str,
        keys: ClientKeys,
    ) -> (ClientConfig, ClientKeys) {
        let state = self.dir.path().join(format!("client-{name}"));
        let cfg = ClientConfig::new(self.coordinator_addr.clone(), &state);
        let token = std::fs::read_to_string(self.coordinator_dir().join("join-token")).unwrap();
        gridback_fs::join::join_client(
            &self.coordinator_addr,
            &self.coordinator_dir().join("ca.crt"),
            token.trim(),
            &cfg.tls_dir(),
            name,
        )
        .await
        .expect("client joins");
        keys.save(&cfg.key_file()).expect("save keys");
        (cfg, keys)
    }

    /// A connected grid client for `cfg`.
    pub async fn grid(&self, cfg: &ClientConfig) -> Arc<GridClient> {
        Arc::new(GridClient::connect(cfg).await.expect("client connects"))
    }

    /// Status as seen by a fresh client.
    pub async fn status(&self, grid: &GridClient) -> StatusReport {
        grid.coordinator().call(Status).await.expect("status")
    }

    async fn wait_nodes_up(&self, n: usize) {
        let (cfg, _) = self.client("status-probe").await;
        let grid = self.grid(&cfg).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(&grid).await;
            if s.nodes
                .iter()
                .filter(|x| x.state == NodeState::Up && !x.addr.is_empty())
                .count()
                >= n
            {
                return;
            }
            assert!(Instant::now() < deadline, "nodes did not come up: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some((task, token)) = n.task.take() {
                token.cancel();
                task.abort();
            }
        }
        if let Some((task, token)) = self.coordinator.take() {
            token.cancel();
            task.abort();
        }
    }
}
