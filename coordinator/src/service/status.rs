//! Read-only views: grid status and the global backup log.

use gridback_proto::NodeId;
use gridback_proto::coord_api::{BackupLog, BackupLogQuery, NodeStatus, StatusReport};
use gridback_proto::now_unix_ms;

use super::{Caller, Inner, Reply, store_err};
use crate::membership::node_state;
use crate::store::{NodeRecord, PlaceRecord};

impl Inner {
    /// A node as `gridback status` shows it: effective location and capacity.
    pub(super) fn node_status(
        &self,
        id: NodeId,
        n: NodeRecord,
        place: &PlaceRecord,
        now: u64,
    ) -> NodeStatus {
        NodeStatus {
            id,
            state: node_state(&n, now, self.settings.node_timeout),
            location: place.effective(&id.to_string()),
            capacity_bytes: place.capacity_override.unwrap_or(n.capacity_bytes),
            label: n.label,
            addr: n.addr,
            pid: n.pid,
            used_bytes: n.used_bytes,
            packet_count: n.packet_count,
            last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
            reported_capacity_bytes: n.capacity_bytes,
        }
    }

    pub(super) fn status(&self, caller: Caller) -> Reply<StatusReport> {
        let now = now_unix_ms();
        let places: std::collections::HashMap<NodeId, PlaceRecord> = self
            .store
            .node_places()
            .map_err(store_err)?
            .into_iter()
            .collect();
        let mut nodes: Vec<NodeStatus> = self
            .store
            .nodes()
            .map_err(store_err)?
            .into_iter()
            .map(|(id, n)| {
                let place = places.get(&id).cloned().unwrap_or_default();
                self.node_status(id, n, &place, now)
            })
            .collect();
        nodes.sort_by(|a, b| a.label.cmp(&b.label).then(a.id.cmp(&b.id)));
        let stats = self.store.stats().map_err(store_err)?;
        let (client, terms) = match caller {
            Caller::Client { id, .. } => (Some(id), Some(self.terms(id)?)),
            _ => (None, None),
        };
        Ok(StatusReport {
            grid: self.secrets.grid,
            client,
            coordinator_addr: self.local_addr.to_string(),
            coordinator_pid: std::process::id(),
            nodes,
            chunk_count: stats.chunk_count,
            stored_bytes: stats.stored_bytes,
            erasure_k: self.settings.erasure_k,
            erasure_m: self.settings.erasure_m,
            terms,
            proximity: self.store.proximity().map_err(store_err)?,
        })
    }

    pub(super) fn backup_log(&self, q: BackupLogQuery) -> Reply<BackupLog> {
        Ok(BackupLog {
            entries: self
                .store
                .log_since(q.since_seq, q.since_unix_ms, q.limit)
                .map_err(store_err)?,
        })
    }
}
