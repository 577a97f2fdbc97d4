//! [`GridViews`]: the grid as placement sees it, kept across requests instead of being read
//! from the store for every batch.
//!
//! A [`GridView`] holds the placement [`GridMap`] (ring members with their effective
//! locations), each node's address and capacity override, and each node's live state:
//! reported capacity, bytes used and last heartbeat. The map and the addresses change only
//! on a few writes (a node joins, a node's address or reported location changes, an operator
//! moves a node or overrides its capacity): each of them, after its store transaction
//! commits, calls [`GridViews::changed`], which bumps a version, and the next request rebuilds
//! the view from the store. Live state changes with every heartbeat and is updated in place
//! ([`GridViews::heartbeat`]), so the capacity check always sees the latest reported use;
//! liveness is derived from the last heartbeat at the moment a request looks, so a node going
//! silent needs no write at all.
//!
//! Races are benign: a rebuild reads the version before the store, so a write that lands in
//! between only causes one more rebuild; a heartbeat that lands during a rebuild may be
//! missing from the new view until the node's next heartbeat (one interval later).
//!
//! With several coordinators on one shared store (not built yet), the version and the live
//! state would have to come from the store; with the embedded store there is one
//! coordinator, and it sees every write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gridback_proto::NodeId;
use gridback_proto::location::Location;

use crate::membership::heartbeat_current;
use crate::placement::{GridMap, RingCache, SlotFacts};
use crate::sequence::SequenceKey;
use crate::store::{MetaStore, NodeRecord, PlaceRecord, StoreError};

/// One node's state as the last heartbeat reported it.
#[derive(Debug, Default)]
struct Live {
    reported_capacity_bytes: AtomicU64,
    used_bytes: AtomicU64,
    last_heartbeat_unix_ms: AtomicU64,
}

impl Live {
    fn set(&self, rec: &NodeRecord) {
        self.reported_capacity_bytes
            .store(rec.capacity_bytes, Ordering::Relaxed);
        self.used_bytes.store(rec.used_bytes, Ordering::Relaxed);
        self.last_heartbeat_unix_ms
            .store(rec.last_heartbeat_unix_ms, Ordering::Relaxed);
    }
}

/// A node in a view, aligned with the map's slots.
#[derive(Debug)]
struct ViewNode {
    addr: String,
    capacity_override: Option<u64>,
    live: Live,
}

/// The grid at one version; see the module doc.
#[derive(Debug)]
pub(crate) struct GridView {
    version: u64,
    map: Arc<GridMap>,
    nodes: Vec<ViewNode>,
}

impl GridView {
    /// The placement map.
    pub fn map(&self) -> &Arc<GridMap> {
        &self.map
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, id: &NodeId) -> Option<&ViewNode> {
        self.map.slot_of(id).and_then(|i| self.nodes.get(i))
    }

    /// The node's address (empty before its first heartbeat, or when unknown).
    pub fn addr(&self, id: &NodeId) -> String {
        self.node(id).map(|n| n.addr.clone()).unwrap_or_default()
    }

    /// The node's effective location (the default one when unknown).
    pub fn location(&self, id: &NodeId) -> Location {
        match self.map.slot_of(id).and_then(|i| self.map.location(i)) {
            Some(l) => l.clone(),
            None => PlaceRecord::default().effective(&id.to_string()),
        }
    }

    fn up_at(&self, slot: usize, now_unix_ms: u64, timeout: Duration) -> bool {
        self.nodes.get(slot).is_some_and(|n| {
            let last = n.live.last_heartbeat_unix_ms.load(Ordering::Relaxed);
            !n.addr.is_empty() && heartbeat_current(last, now_unix_ms, timeout)
        })
    }

    /// Whether the node's heartbeats are current at `now_unix_ms` (the rule of
    /// [`heartbeat_current`]).
    pub fn up(&self, id: &NodeId, now_unix_ms: u64, timeout: Duration) -> bool {
        self.map
            .slot_of(id)
            .is_some_and(|i| self.up_at(i, now_unix_ms, timeout))
    }
}

/// One request's facts over a view: liveness at `now`, room left after in-flight
/// allocations.
#[derive(Debug)]
pub(crate) struct RequestFacts {
    view: Arc<GridView>,
    now_unix_ms: u64,
    timeout: Duration,
    /// In-flight bytes by slot.
    in_flight: HashMap<usize, u64>,
}

impl SlotFacts for RequestFacts {
    fn up(&self, slot: usize) -> bool {
        self.view.up_at(slot, self.now_unix_ms, self.timeout)
    }

    fn free_bytes(&self, slot: usize) -> u64 {
        let Some(n) = self.view.nodes.get(slot) else {
            return 0;
        };
        let capacity = n
            .capacity_override
            .unwrap_or_else(|| n.live.reported_capacity_bytes.load(Ordering::Relaxed));
        capacity
            .saturating_sub(n.live.used_bytes.load(Ordering::Relaxed))
            .saturating_sub(self.in_flight.get(&slot).copied().unwrap_or(0))
    }
}

impl RequestFacts {
    /// Facts over `view` at `now_unix_ms`, with `in_flight` bytes per node (from the pending
    /// allocations: as many entries as packets in flight, whatever the grid's size).
    pub fn new(
        view: Arc<GridView>,
        now_unix_ms: u64,
        timeout: Duration,
        in_flight: HashMap<NodeId, u64>,
    ) -> Self {
        let in_flight = in_flight
            .into_iter()
            .filter_map(|(id, b)| view.map.slot_of(&id).map(|i| (i, b)))
            .collect();
        Self {
            view,
            now_unix_ms,
            timeout,
            in_flight,
        }
    }
}

/// The cached view and its version; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct GridViews {
    /// Bumped after every store write that changes the map or an address.
    version: AtomicU64,
    current: RwLock<Option<Arc<GridView>>>,
    /// The ring, rebuilt only when the set of members changes.
    ring: RingCache,
    /// Views built since start (for tests and the bench).
    builds: AtomicU64,
}

impl GridViews {
    /// Call after a store write that adds a node, or changes a node's address, location,
    /// coordinates or capacity override: the next request rebuilds the view.
    pub fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Views built so far.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The current view, rebuilt from `store` when a change was announced since it was built.
    pub fn get(
        &self,
        store: &dyn MetaStore,
        key: &SequenceKey,
    ) -> Result<Arc<GridView>, StoreError> {
        let version = self.version.load(Ordering::Acquire);
        if let Some(v) = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|v| v.version == version)
        {
            return Ok(v.clone());
        }
        let view = Arc::new(self.build(store, key, version)?);
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        // Keep the newer of two concurrent rebuilds.
        if cur.as_ref().is_none_or(|c| c.version <= version) {
            *cur = Some(view.clone());
        }
        Ok(view)
    }

    fn build(
        &self,
        store: &dyn MetaStore,
        key: &SequenceKey,
        version: u64,
    ) -> Result<GridView, StoreError> {
        let mut records: HashMap<NodeId, NodeRecord> = store.nodes()?.into_iter().collect();
        let mut places: HashMap<NodeId, PlaceRecord> = store.node_places()?.into_iter().collect();
        let ids: Vec<NodeId> = records.keys().copied().collect();
        let ring = self.ring.get(key, &ids);
        let mut nodes = Vec::with_capacity(ids.len());
        let map = GridMap::new(ring, |id| {
            let place = places.remove(id).unwrap_or_default();
            let rec = records.remove(id);
            let live = Live::default();
            if let Some(r) = &rec {
                live.set(r);
            }
            nodes.push(ViewNode {
                addr: rec.map(|r| r.addr).unwrap_or_default(),
                capacity_override: place.capacity_override,
                live,
            });
            place.effective(&id.to_string())
        });
        self.builds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(version, nodes = nodes.len(), "placement view rebuilt");
        Ok(GridView {
            version,
            map: Arc::new(map),
            nodes,
        })
    }

    /// A node's heartbeat was stored: make its reported capacity, use and liveness current
    /// in the view without a rebuild.
    pub fn heartbeat(&self, id: &NodeId, rec: &NodeRecord) {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = cur.as_ref().and_then(|v| v.node(id)) {
            n.live.set(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use gridback_proto::admin_api::AdminNodeSet;
    use gridback_proto::coord_api::{AllocateChunks, ChunkAlloc, NodeHeartbeat};
    use gridback_proto::subscription::Subscription;
    use gridback_proto::{ChunkId, NodeId};

    use crate::service::Inner;
    use crate::service::bench::grid;

    fn targets(
        inner: &Inner,
        client: gridback_proto::ClientId,
        fp: gridback_proto::CertFingerprint,
    ) -> Vec<NodeId> {
        let chunks: Vec<ChunkAlloc> = (0..16)
            .map(|_| ChunkAlloc {
                id: ChunkId::random(),
                blob_bytes: 4096,
            })
            .collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        let a = inner
            .allocate(
                client,
                fp,
                &Subscription::default(),
                AllocateChunks {
                    chunks,
                    exclude: Vec::new(),
                },
            )
            .unwrap();
        inner.pending.remove(client, ids);
        a.chunks
            .iter()
            .flat_map(|c| c.targets.iter().map(|t| t.node))
            .collect()
    }

    /// A heartbeat that reports a node full keeps it out of the next batch without a
    /// rebuild; an operator's change rebuilds the view and takes effect at once.
    #[test]
    fn heartbeats_update_the_cached_view_and_changes_rebuild_it() {
        let (inner, client, fp) = grid(8).unwrap();
        let used = targets(&inner, client, fp);
        let builds = inner.views.builds();
        let full = used[0];
        let rec = inner.store.node(&full).unwrap().unwrap();
        let place = inner.store.node_place(&full).unwrap();
        inner
            .heartbeat(
                full,
                NodeHeartbeat {
                    advertise_addr: rec.addr.clone(),
                    capacity_bytes: rec.capacity_bytes,
                    used_bytes: rec.capacity_bytes,
                    packet_count: 1,
                    pid: 1,
                    location: place.reported.clone().unwrap(),
                },
            )
            .unwrap();
        for _ in 0..3 {
            assert!(
                !targets(&inner, client, fp).contains(&full),
                "a full node chosen"
            );
        }
        assert_eq!(inner.views.builds(), builds, "a heartbeat rebuilt the view");
        // Room again, then an operator override of 0 bytes: rebuilt, and left out again.
        inner
            .heartbeat(
                full,
                NodeHeartbeat {
                    advertise_addr: rec.addr.clone(),
                    capacity_bytes: rec.capacity_bytes,
                    used_bytes: 0,
                    packet_count: 0,
                    pid: 1,
                    location: place.reported.unwrap(),
                },
            )
            .unwrap();
        let mut seen = false;
        for _ in 0..8 {
            seen |= targets(&inner, client, fp).contains(&full);
        }
        assert!(seen, "a node with room again is never chosen");
        inner
            .admin_node_set(AdminNodeSet {
                id: full,
                location: None,
                coords: None,
                capacity_bytes: Some(0),
            })
            .unwrap();
        for _ in 0..3 {
            assert!(!targets(&inner, client, fp).contains(&full));
        }
        assert_eq!(inner.views.builds(), builds + 1);
    }
}
