//! Node liveness: a node is up while its heartbeats are younger than `node_timeout`. The
//! [`MembershipWorker`] notices nodes going silent and records `node.down` in the backup log;
//! heartbeats record `node.up` when a node comes (back) up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gridback_proto::NodeId;
use gridback_proto::coord_api::NodeState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{MetaStore, NewLogEntry, NodeRecord};

/// Liveness of a node at `now_unix_ms`.
pub(crate) fn node_state(rec: &NodeRecord, now_unix_ms: u64, timeout: Duration) -> NodeState {
    if heartbeat_current(rec.last_heartbeat_unix_ms, now_unix_ms, timeout) {
        NodeState::Up
    } else {
        NodeState::Down
    }
}

/// Whether a node whose last heartbeat was at `last_unix_ms` (0: never) counts as up at
/// `now_unix_ms`: the one liveness rule of the coordinator.
pub(crate) fn heartbeat_current(last_unix_ms: u64, now_unix_ms: u64, timeout: Duration) -> bool {
    last_unix_ms != 0 && u128::from(now_unix_ms.saturating_sub(last_unix_ms)) <= timeout.as_millis()
}

/// Periodically checks liveness and logs nodes that stopped beating.
pub(crate) struct MembershipWorker {
    store: Arc<dyn MetaStore>,
    timeout: Duration,
    /// The state each node had at the previous check.
    last: HashMap<NodeId, NodeState>,
}

impl MembershipWorker {
    pub fn new(store: Arc<dyn MetaStore>, timeout: Duration) -> Self {
        Self {
            store,
            timeout,
            last: HashMap::new(),
        }
    }

    /// One check: log every node that was up at the previous check and is down now.
    pub fn work(&mut self, now_unix_ms: u64) {
        let nodes = match self.store.nodes() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "liveness check cannot read nodes");
                return;
            }
        };
        for (id, rec) in nodes {
            let state = node_state(&rec, now_unix_ms, self.timeout);
            let was = self.last.insert(id, state);
            if was == Some(NodeState::Up) && state == NodeState::Down {
                info!(node = %id, label = %rec.label, "node is down");
                let entry = NewLogEntry {
                    client: None,
                    node: Some(id),
                    kind: "node.down",
                    detail: format!(
                        "label={} addr={} no heartbeat for {} ms",
                        rec.label,
                        rec.addr,
                        now_unix_ms.saturating_sub(rec.last_heartbeat_unix_ms)
                    ),
                };
                if let Err(e) = self.store.append_log(&entry, now_unix_ms) {
                    warn!(error = %e, "cannot log node.down");
                }
            }
        }
    }

    /// Check every quarter of the timeout until `shutdown`, so a silent node is logged at most
    /// a quarter timeout late.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let period = (self.timeout / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            // The store blocks on disk: check on the blocking pool.
            let task = tokio::task::spawn_blocking(move || {
                self.work(gridback_proto::now_unix_ms());
                self
            });
            match task.await {
                Ok(w) => self = w,
                Err(e) => {
                    warn!(error = %e, "liveness check failed; stopping it");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(last: u64) -> NodeRecord {
        NodeRecord {
            label: "n".into(),
            addr: "127.0.0.1:1".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            packet_count: 0,
            pid: 1,
            last_heartbeat_unix_ms: last,
            joined_unix_ms: 1,
        }
    }

    #[test]
    fn state_follows_heartbeat_age() {
        let t = Duration::from_secs(10);
        assert_eq!(node_state(&rec(0), 5_000, t), NodeState::Down);
        assert_eq!(node_state(&rec(1_000), 11_000, t), NodeState::Up);
        assert_eq!(node_state(&rec(1_000), 11_001, t), NodeState::Down);
        // A clock that went backwards does not make a node down.
        assert_eq!(node_state(&rec(20_000), 11_000, t), NodeState::Up);
    }
}
