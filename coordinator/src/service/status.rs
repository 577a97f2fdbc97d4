//! Read-only views: grid status and the global backup log.

use gridback_proto::coord_api::{BackupLog, BackupLogQuery, NodeStatus, StatusReport};
use gridback_proto::now_unix_ms;

use super::{Caller, Inner, Reply, store_err};
use crate::membership::node_state;

impl Inner {
    pub(super) fn status(&self, caller: Caller) -> Reply<StatusReport> {
        let now = now_unix_ms();
        let mut nodes: Vec<NodeStatus> = self
            .store
            .nodes()
            .map_err(store_err)?
            .into_iter()
            .map(|(id, n)| NodeStatus {
                id,
                state: node_state(&n, now, self.settings.node_timeout),
                label: n.label,
                addr: n.addr,
                pid: n.pid,
                capacity_bytes: n.capacity_bytes,
                used_bytes: n.used_bytes,
                packet_count: n.packet_count,
                last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
            })
            .collect();
        nodes.sort_by(|a, b| a.label.cmp(&b.label).then(a.id.cmp(&b.id)));
        let stats = self.store.stats().map_err(store_err)?;
        Ok(StatusReport {
            grid: self.secrets.grid,
            client: match caller {
                Caller::Client { id, .. } => Some(id),
                _ => None,
            },
            coordinator_addr: self.local_addr.to_string(),
            coordinator_pid: std::process::id(),
            nodes,
            chunk_count: stats.chunk_count,
            stored_bytes: stats.stored_bytes,
            erasure_k: self.settings.erasure_k,
            erasure_m: self.settings.erasure_m,
        })
    }

    pub(super) fn backup_log(&self, q: BackupLogQuery) -> Reply<BackupLog> {
        Ok(BackupLog {
            entries: self
                .store
                .log_since(q.since_seq, q.limit)
                .map_err(store_err)?,
        })
    }
}
