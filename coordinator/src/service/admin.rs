//! Operator requests (F4 records, F12/F13 rules, run-time changes): one handler per request
//! of `proto::admin_api`. Every change is written to the global backup log.

use gridback_proto::admin_api::{
    AdminChunks, AdminClientSet, AdminNodeSet, AdminPlacementSet, AdminSnapshot, AdminSnapshotList,
    AdminSnapshots, ChunkTarget, ChunkView, ChunkViews, ClientDetail, ClientProfiles, NodeDetail,
    PlacementRules,
};
use gridback_proto::location::{Coords, Location};
use gridback_proto::units::format_size;
use gridback_proto::{ChunkId, ClientId, ErrorCode, NodeId, WireError, now_unix_ms};
use tracing::info;

use super::{Inner, Reply, bad_request, store_err};
use crate::store::{NewLogEntry, PlaceRecord};

/// Most chunks in one [`AdminChunks`] answer: keeps it well under the control-frame limit.
pub const MAX_ADMIN_CHUNKS: u32 = 1000;

fn not_found(what: String) -> WireError {
    WireError::new(ErrorCode::NotFound, what)
}

/// Apply `--location` / `--coords` to a place's override (coordinates alone move the current
/// effective location).
fn relocate(
    place: &mut PlaceRecord,
    host: &str,
    labels: Option<&str>,
    coords: Option<&str>,
) -> Reply<Option<Location>> {
    if labels.is_none() && coords.is_none() {
        return Ok(None);
    }
    let mut loc = match labels {
        Some(l) => {
            let mut new: Location = l.parse().map_err(|e| bad_request(format!("{e}")))?;
            new.coords = place.effective(host).coords;
            new
        }
        None => place.effective(host),
    };
    if let Some(c) = coords {
        loc.coords = Some(
            c.parse::<Coords>()
                .map_err(|e| bad_request(format!("{e}")))?,
        );
    }
    place.location_override = Some(loc.clone());
    Ok(Some(loc))
}

impl Inner {
    pub(super) fn admin_clients(&self) -> Reply<ClientProfiles> {
        let mut clients = Vec::new();
        for (id, rec) in self.store.clients().map_err(store_err)? {
            clients.push(self.profile(id, rec)?);
        }
        clients.sort_by_key(|c| c.id);
        Ok(ClientProfiles { clients })
    }

    pub(super) fn admin_snapshots(&self, r: AdminSnapshots) -> Reply<AdminSnapshotList> {
        self.client_record(&r.client)?;
        let mut snapshots = Vec::new();
        for info in self.store.snapshot_list(&r.client).map_err(store_err)? {
            let tree = self
                .store
                .snapshot_get(&r.client, &info.name)
                .map_err(store_err)?
                .map(|row| row.tree)
                .unwrap_or_default();
            snapshots.push(AdminSnapshot {
                info,
                tree_chunks: tree.into_iter().map(|t| t.id).collect(),
            });
        }
        Ok(AdminSnapshotList { snapshots })
    }

    pub(super) fn admin_node(&self, id: NodeId) -> Reply<NodeDetail> {
        let rec = self
            .store
            .node(&id)
            .map_err(store_err)?
            .ok_or_else(|| not_found(format!("node {id} is unknown")))?;
        let place = self.store.node_place(&id).map_err(store_err)?;
        let packets = self.store.node_packets(&id).map_err(store_err)?;
        let status = self.node_status(id, rec, &place, now_unix_ms());
        Ok(NodeDetail {
            location: status.location.clone(),
            status,
            recorded_packets: packets.len() as u64,
            recorded_bytes: packets.iter().map(|(_, b)| *b).sum(),
        })
    }

    pub(super) fn admin_chunk(&self, id: ChunkId) -> Reply<ChunkView> {
        let rec = self
            .store
            .chunk(&id)
            .map_err(store_err)?
            .ok_or_else(|| not_found(format!("chunk {id} is not stored")))?;
        let mut targets = Vec::with_capacity(rec.packets.len());
        for p in &rec.packets {
            let place = self.store.node_place(&p.node).map_err(store_err)?;
            targets.push(ChunkTarget {
                node: p.node,
                location: place.effective(&p.node.to_string()).labels(),
                packet: p.index,
            });
        }
        Ok(ChunkView {
            id,
            k: rec.k,
            m: rec.m,
            packet_bytes: rec.shard_bytes,
            targets,
            sources: self.store.chunk_sources(&id).map_err(store_err)?,
        })
    }

    pub(super) fn admin_chunks(&self, r: AdminChunks) -> Reply<ChunkViews> {
        self.client_record(&r.client)?;
        if let Some(s) = &r.snapshot {
            super::snapshots::validate_name(s)?;
            if self
                .store
                .snapshot_get(&r.client, s)
                .map_err(store_err)?
                .is_none()
            {
                return Err(not_found(format!("snapshot {s:?} does not exist")));
            }
        }
        let limit = r.limit.clamp(1, MAX_ADMIN_CHUNKS) as usize;
        let mut ids = self
            .store
            .client_chunks(
                &r.client,
                r.snapshot.as_deref(),
                r.after.as_ref(),
                limit + 1,
            )
            .map_err(store_err)?;
        let next = (ids.len() > limit).then(|| ids[limit - 1]);
        ids.truncate(limit);
        let chunks = ids
            .into_iter()
            .map(|id| self.admin_chunk(id))
            .collect::<Reply<Vec<_>>>()?;
        Ok(ChunkViews { chunks, next })
    }

    pub(super) fn admin_node_set(&self, r: AdminNodeSet) -> Reply<NodeDetail> {
        self.store
            .node(&r.id)
            .map_err(store_err)?
            .ok_or_else(|| not_found(format!("node {} is unknown", r.id)))?;
        let mut place = self.store.node_place(&r.id).map_err(store_err)?;
        let mut changes = Vec::new();
        if let Some(loc) = relocate(
            &mut place,
            &r.id.to_string(),
            r.location.as_deref(),
            r.coords.as_deref(),
        )? {
            changes.push(format!("location={loc}"));
        }
        if let Some(c) = r.capacity_bytes {
            place.capacity_override = Some(c);
            changes.push(format!("capacity={}", format_size(c)));
        }
        if changes.is_empty() {
            return Err(bad_request(
                "nothing to change: give --location, --coords or --capacity",
            ));
        }
        let entry = NewLogEntry {
            client: None,
            node: Some(r.id),
            kind: "node.set",
            detail: changes.join(" "),
        };
        self.store
            .set_node_place(&r.id, &place, Some(&entry))
            .map_err(store_err)?;
        self.views.changed();
        info!(node = %r.id, detail = %entry.detail, "node record changed");
        self.admin_node(r.id)
    }

    pub(super) fn admin_client_set(&self, r: AdminClientSet) -> Reply<ClientDetail> {
        self.client_record(&r.id)?;
        let mut place = self.store.client_place(&r.id).map_err(store_err)?;
        let Some(loc) = relocate(
            &mut place,
            &r.id.to_string(),
            r.location.as_deref(),
            r.coords.as_deref(),
        )?
        else {
            return Err(bad_request(
                "nothing to change: give --location or --coords",
            ));
        };
        let entry = NewLogEntry {
            client: Some(r.id),
            node: None,
            kind: "client.set",
            detail: format!("location={loc}"),
        };
        self.store
            .set_client_place(&r.id, &place, Some(&entry))
            .map_err(store_err)?;
        info!(client = %r.id, location = %loc, "client location changed");
        self.client_detail(r.id)
    }

    pub(super) fn admin_placement_set(&self, r: AdminPlacementSet) -> Reply<PlacementRules> {
        let mut p = if r.clear {
            Default::default()
        } else {
            self.store.proximity().map_err(store_err)?
        };
        p.packet.min = r.packet_min.or(p.packet.min);
        p.packet.max = r.packet_max.or(p.packet.max);
        p.backup.min = r.backup_min.or(p.backup.min);
        p.backup.max = r.backup_max.or(p.backup.max);
        p.check_consistent()
            .map_err(|e| bad_request(e.to_string()))?;
        let entry = NewLogEntry {
            client: None,
            node: None,
            kind: "placement.set",
            detail: format!(
                "packet {} backup {}{}",
                p.packet,
                p.backup,
                if r.clear { " (cleared first)" } else { "" }
            ),
        };
        self.store.set_proximity(&p, &entry).map_err(store_err)?;
        info!(rules = %entry.detail, "placement rules changed");
        Ok(PlacementRules { proximity: p })
    }

    pub(super) fn admin_placement_get(&self) -> Reply<PlacementRules> {
        Ok(PlacementRules {
            proximity: self.store.proximity().map_err(store_err)?,
        })
    }

    /// Used by the schedule handlers: the client must exist.
    pub(super) fn require_client(&self, id: &ClientId) -> Reply<()> {
        self.client_record(id).map(drop)
    }
}
