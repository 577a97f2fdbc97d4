//! `Server`: a bound storage node. `bind` establishes the identity (joining the grid on the
//! first start), opens the packet store and binds the QUIC endpoint; `run` serves requests and
//! sends heartbeats until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridback_proto::NodeId;
use gridback_proto::tls::Identity;
use gridback_proto::transport::{self, ConnPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::client_limits::ClientGates;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::heartbeat::{BeatSettings, HeartbeatWorker};
use crate::join::{self, NodeIdentity};
use crate::service::{NodeService, OrderKey};
use crate::store::{PacketStore, StoreUsage};

/// How long `run` waits, after shutdown, for connections to close politely. The close frames
/// go out at once; this only bounds the wait for peers that never answered (a heartbeat still
/// handshaking with an unreachable coordinator would otherwise hold shutdown for seconds).
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// A storage node, bound and ready to run.
#[derive(Debug)]
pub struct Server {
    config: NodeConfig,
    identity: NodeIdentity,
    /// Whether the identity came from (or went into) the data dir, so a rotated order key is
    /// written back there.
    persist_identity: bool,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    store: PacketStore,
    order_key: OrderKey,
    gates: ClientGates,
    span: tracing::Span,
}

impl Server {
    /// Bind a node: load its identity from the data dir (or join the grid with the configured
    /// token), open the packet store and bind the QUIC endpoint on `listen_addr`.
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let identity = join::load_or_join(&config).await?;
        Self::bind_inner(config, identity, true).await
    }

    /// Bind a node with an identity made elsewhere (tests, in-process grids), skipping the
    /// join. Heartbeats still go to `coordinator_addr` but do not check the grid id; if no
    /// coordinator answers there they fail harmlessly.
    pub async fn bind_with_identity(
        config: NodeConfig,
        identity: Identity,
        node_id: NodeId,
        order_public_key: Vec<u8>,
    ) -> Result<Self, NodeError> {
        let id = NodeIdentity {
            tls: identity,
            node_id,
            grid: None,
            order_public_key,
        };
        Self::bind_with_node_identity(config, id).await
    }

    /// Like [`Server::bind_with_identity`], with a full [`NodeIdentity`] (a known grid id makes
    /// heartbeats check it). The identity is not written to the data dir.
    pub async fn bind_with_node_identity(
        config: NodeConfig,
        identity: NodeIdentity,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        Self::bind_inner(config, identity, false).await
    }

    async fn bind_inner(
        config: NodeConfig,
        identity: NodeIdentity,
        persist_identity: bool,
    ) -> Result<Self, NodeError> {
        let span = info_span!("node", id = %identity.node_id, role = "node");
        let store = PacketStore::open(&config.data_dir, config.capacity_bytes)
            .instrument(span.clone())
            .await?;
        let endpoint = transport::server_endpoint(&identity.tls, config.listen_addr, false)
            .map_err(NodeError::from_endpoint)?;
        let local_addr = endpoint.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen_addr,
            source,
            hint: "",
        })?;
        let order_key = OrderKey::new(identity.order_public_key.clone());
        Ok(Self {
            config,
            identity,
            persist_identity,
            endpoint,
            local_addr,
            store,
            order_key,
            gates: ClientGates::default(),
            span,
        })
    }

    /// The address the QUIC server is bound to (the real port when `listen_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address announced to the coordinator: `advertise_addr`, or the bound address.
    pub fn advertise_addr(&self) -> String {
        self.config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| self.local_addr.to_string())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id
    }

    /// This node's TLS identity (its certificate is what clients see).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The packet store (shared with the running server).
    pub fn store(&self) -> &PacketStore {
        &self.store
    }

    /// The per-client limits the node enforces (refreshed by heartbeats; shared with the
    /// running server, so tests can set them directly).
    pub fn client_gates(&self) -> &ClientGates {
        &self.gates
    }

    /// Current usage of the allocated storage.
    pub fn usage(&self) -> StoreUsage {
        self.store.usage()
    }

    /// Serve requests and send heartbeats until `shutdown` fires. Returns an error only if
    /// the node has to stop by itself (its data dir belongs to another grid).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let span = self.span.clone();
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let advertise = self.advertise_addr();
        if self.config.advertise_addr.is_none() && self.local_addr.ip().is_unspecified() {
            warn!(addr = %self.local_addr, "listening on an unspecified address without \
                advertise_addr: clients will be told to dial {advertise}");
        }
        info!(addr = %self.local_addr, advertise = %advertise, "storage node running");
        let stop = shutdown.child_token();
        let service = Arc::new(
            NodeService::new(
                self.identity.node_id,
                self.store.clone(),
                self.order_key.clone(),
                self.span.clone(),
            )
            .with_gates(self.gates.clone()),
        );
        let serve = tokio::spawn(
            transport::serve(self.endpoint.clone(), service, stop.clone()).in_current_span(),
        );
        let persist_to = self.persist_identity.then(|| self.config.data_dir.clone());
        let worker = HeartbeatWorker::new(
            ConnPool::new(self.endpoint.clone()),
            self.config.coordinator_addr.clone(),
            advertise,
            self.config.heartbeat_interval,
            self.store.clone(),
            self.order_key.clone(),
            &self.identity,
            persist_to,
            BeatSettings {
                location: self.config.location()?,
                config_capacity_bytes: self.config.capacity_bytes,
                gates: self.gates.clone(),
            },
        );
        let result = worker.run(stop.clone()).await;
        if let Err(e) = &result {
            error!(error = %e, "stopping the storage node");
        }
        stop.cancel();
        let served = serve.await.map_err(|e| NodeError::Task(e.to_string()));
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.endpoint.wait_idle()).await;
        info!("storage node stopped");
        result.and(served)
    }
}
