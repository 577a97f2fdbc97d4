//! `HeartbeatWorker`: tells the coordinator, every `heartbeat_interval`, where the node can be
//! reached and how full it is. The first heartbeat goes out at start, which is how the
//! coordinator learns the node's address. Each answer refreshes the order key and is checked
//! against the grid recorded in the data dir; a coordinator of another grid stops the node.
//! Anything else that goes wrong is logged and retried at the next interval.
//!
//! Each answer also carries the operator's storage allocation for this node (applied to the
//! store at once; `None` returns to the configured capacity) and the per-client limits the
//! node enforces (applied to the shared [`ClientGates`]).

use std::path::PathBuf;
use std::time::Duration;

use gridback_proto::coord_api::{HeartbeatAck, NodeHeartbeat};
use gridback_proto::tls::COORDINATOR_SERVER_NAME;
use gridback_proto::transport::{CallError, ConnPool};
use gridback_proto::{Location, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client_limits::ClientGates;
use crate::error::{NodeError, is_untrusted_certificate};
use crate::join::{NodeIdentity, save_order_key};
use crate::service::OrderKey;
use crate::store::PacketStore;

/// Deadline for one heartbeat; a coordinator slower than this counts as unreachable.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// While failures persist, repeat the warning only every this many heartbeats (a minute at
/// the default interval), so a long coordinator outage does not flood the log.
const WARN_EVERY: u64 = 30;

/// State of the worker, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Sending a heartbeat.
    Busy,
    /// Waiting for the next interval.
    Idle,
    /// Stopped (shutdown, or a fatal mismatch).
    Done,
}

/// What one heartbeat attempt came to.
#[derive(Debug)]
enum BeatError {
    /// Retry at the next interval.
    Transient(CallError),
    /// The node must stop.
    Fatal(NodeError),
}

/// The periodic heartbeat to the coordinator.
#[derive(Debug)]
pub struct HeartbeatWorker {
    pool: ConnPool,
    coordinator_addr: String,
    advertise_addr: String,
    interval: Duration,
    store: PacketStore,
    order_key: OrderKey,
    node_id: NodeId,
    grid: Option<[u8; 16]>,
    /// Where to persist a rotated order key (the data dir and the identity to write).
    persist: Option<(PathBuf, NodeIdentity)>,
    state: WorkerState,
    failures: u64,
    /// Sent in every heartbeat.
    location: Location,
    /// The configured byte limit, used when the coordinator sets none.
    config_capacity_bytes: u64,
    /// Per-client limits, refreshed from every answer.
    gates: ClientGates,
}

/// What the worker sends besides usage, and what it applies from the answers.
#[derive(Debug, Clone)]
pub struct BeatSettings {
    /// The node's location.
    pub location: Location,
    /// The configured byte limit.
    pub config_capacity_bytes: u64,
    /// Per-client limits to refresh.
    pub gates: ClientGates,
}

impl HeartbeatWorker {
    /// A worker sending heartbeats through `pool` (an endpoint carrying the node's identity).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: ConnPool,
        coordinator_addr: String,
        advertise_addr: String,
        interval: Duration,
        store: PacketStore,
        order_key: OrderKey,
        identity: &NodeIdentity,
        persist_to: Option<PathBuf>,
        settings: BeatSettings,
    ) -> Self {
        Self {
            pool,
            coordinator_addr,
            advertise_addr,
            interval,
            store,
            order_key,
            node_id: identity.node_id,
            grid: identity.grid,
            persist: persist_to.map(|dir| (dir, identity.clone())),
            state: WorkerState::Idle,
            failures: 0,
            location: settings.location,
            config_capacity_bytes: settings.config_capacity_bytes,
            gates: settings.gates,
        }
    }

    /// The worker's state.
    pub fn state(&self) -> WorkerState {
        self.state
    }

    /// Send heartbeats until `shutdown`; returns an error only when the coordinator turns out
    /// to belong to another grid.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), NodeError> {
        loop {
            self.state = WorkerState::Busy;
            let outcome = tokio::select! {
                r = self.work() => r,
                _ = shutdown.cancelled() => break,
            };
            match outcome {
                Ok(()) => {
                    if self.failures > 0 {
                        info!(
                            after_failures = self.failures,
                            "coordinator reachable again"
                        );
                    }
                    self.failures = 0;
                }
                Err(BeatError::Fatal(e)) => {
                    self.state = WorkerState::Done;
                    return Err(e);
                }
                Err(BeatError::Transient(e)) => {
                    self.failures += 1;
                    if self.failures % WARN_EVERY == 1 {
                        warn!(coordinator = %self.coordinator_addr, failures = self.failures,
                            error = %e, "heartbeat failed; retrying");
                    } else {
                        debug!(error = %e, "heartbeat failed");
                    }
                }
            }
            self.state = WorkerState::Idle;
            if !self.wait_for_work(&shutdown).await {
                break;
            }
        }
        self.state = WorkerState::Done;
        Ok(())
    }

    /// Wait for the next interval; false when shutting down.
    async fn wait_for_work(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.interval) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Send one heartbeat and apply its answer.
    async fn work(&mut self) -> Result<(), BeatError> {
        let usage = self.store.usage();
        let beat = NodeHeartbeat {
            advertise_addr: self.advertise_addr.clone(),
            capacity_bytes: usage.capacity_bytes,
            used_bytes: usage.used_bytes,
            packet_count: usage.packet_count,
            pid: std::process::id(),
            location: self.location.clone(),
        };
        let addr = &self.coordinator_addr;
        let ack = match self
            .pool
            .call(addr, COORDINATOR_SERVER_NAME, beat, HEARTBEAT_TIMEOUT)
            .await
        {
            Ok(ack) => ack,
            Err(CallError::Connect { reason, .. }) if is_untrusted_certificate(&reason) => {
                return Err(BeatError::Fatal(NodeError::ForeignGrid {
                    detail: format!("TLS with the coordinator at {addr} failed: {reason}"),
                }));
            }
            Err(e) => {
                if matches!(e, CallError::Connect { .. } | CallError::Remote { .. }) {
                    self.pool.forget(addr, COORDINATOR_SERVER_NAME);
                }
                return Err(BeatError::Transient(e));
            }
        };
        self.apply(ack).await.map_err(BeatError::Fatal)
    }

    async fn apply(&mut self, ack: HeartbeatAck) -> Result<(), NodeError> {
        if let Some(grid) = self.grid
            && grid != ack.grid
        {
            return Err(NodeError::ForeignGrid {
                detail: format!(
                    "data dir grid {}, coordinator grid {}",
                    hex::encode(grid),
                    hex::encode(ack.grid)
                ),
            });
        }
        if ack.node != self.node_id {
            warn!(coordinator_says = %ack.node, "the coordinator knows this node by another id");
        }
        let capacity = ack.capacity_bytes.unwrap_or(self.config_capacity_bytes);
        let before = self.store.set_capacity(capacity);
        if before != capacity {
            info!(
                capacity_bytes = capacity,
                previous_bytes = before,
                from_operator = ack.capacity_bytes.is_some(),
                "storage allocation changed"
            );
        }
        self.gates.update(&ack.client_limits);
        debug!(
            used_bytes = self.store.usage().used_bytes,
            "heartbeat acknowledged"
        );
        if self.order_key.update(&ack.order_public_key) {
            info!("coordinator order key changed; using the new key");
            if let Some((dir, identity)) = &mut self.persist {
                identity.order_public_key = ack.order_public_key;
                let (dir, identity) = (dir.clone(), identity.clone());
                let saved = tokio::task::spawn_blocking(move || save_order_key(&dir, &identity))
                    .await
                    .map_err(|e| NodeError::Task(e.to_string()))?;
                if let Err(e) = saved {
                    warn!(error = %e, "cannot record the new order key; it is used until restart");
                }
            }
        }
        Ok(())
    }
}
