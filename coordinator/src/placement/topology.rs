//! [`Topology`]: the grid as one request sees it (locations interned so distance levels
//! compare integers, liveness, room left, exclusions), aligned with a [`Ring`], and the
//! greedy ring walk that places a chunk under capacity and the proximity rules.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::{ChunkId, NodeId};

use super::{ATTEMPTS, MAX_WALK, PlacementNode, Ring, Shortfall, keyed_u64};

/// One ring member with its interned labels.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) node: PlacementNode,
    pub(super) region: u32,
    pub(super) zone: u32,
    pub(super) host: u32,
    pub(super) blocked: bool,
}

/// Interned labels, so that distance levels compare integers.
#[derive(Debug, Default)]
struct Labels {
    regions: HashMap<String, u32>,
    zones: HashMap<(u32, String), u32>,
    hosts: HashMap<(u32, String), u32>,
}

/// Label ids of a location not in the grid: distinct from every node's.
const UNKNOWN: u32 = u32::MAX;

impl Labels {
    fn intern(&mut self, l: &Location) -> (u32, u32, u32) {
        let n = self.regions.len() as u32;
        let r = *self.regions.entry(l.region.clone()).or_insert(n);
        let n = self.zones.len() as u32;
        let z = *self.zones.entry((r, l.zone.clone())).or_insert(n);
        let n = self.hosts.len() as u32;
        let h = *self.hosts.entry((z, l.host.clone())).or_insert(n);
        (r, z, h)
    }

    fn lookup(&self, l: &Location) -> (u32, u32, u32) {
        let r = self.regions.get(&l.region).copied().unwrap_or(UNKNOWN);
        let z = self
            .zones
            .get(&(r, l.zone.clone()))
            .copied()
            .unwrap_or(UNKNOWN);
        let h = self
            .hosts
            .get(&(z, l.host.clone()))
            .copied()
            .unwrap_or(UNKNOWN);
        (r, z, h)
    }
}

/// The source client's place, resolved against a topology.
#[derive(Debug, Clone)]
pub struct Source {
    pub(super) location: Location,
    ids: (u32, u32, u32),
}

/// The grid as one request sees it, aligned with a [`Ring`].
#[derive(Debug)]
pub struct Topology {
    ring: Arc<Ring>,
    pub(super) slots: Vec<Slot>,
    labels: Labels,
    pub(super) index: HashMap<NodeId, u32>,
}

fn ok(b: &Bounds, level: u8, a: &Location, c: &Location) -> bool {
    let pass = |d: Distance, is_min: bool| match d {
        Distance::Level(l) => {
            if is_min {
                level >= l
            } else {
                level <= l
            }
        }
        Distance::Km(k) => a
            .km(c)
            .is_some_and(|km| if is_min { km >= k } else { km <= k }),
    };
    b.min.is_none_or(|d| pass(d, true)) && b.max.is_none_or(|d| pass(d, false))
}

fn level(a: (u32, u32, u32), b: (u32, u32, u32)) -> u8 {
    if a.0 != b.0 {
        3
    } else if a.1 != b.1 {
        2
    } else if a.2 != b.2 {
        1
    } else {
        0
    }
}

impl Topology {
    /// The request's view: `nodes` (members missing from the ring are ignored; ring members
    /// missing here are down) with `exclude` never chosen.
    pub fn new(ring: Arc<Ring>, nodes: Vec<PlacementNode>, exclude: &[NodeId]) -> Topology {
        let mut by_id: HashMap<NodeId, PlacementNode> =
            nodes.into_iter().map(|n| (n.id, n)).collect();
        let excluded: HashSet<&NodeId> = exclude.iter().collect();
        let mut labels = Labels::default();
        let mut slots = Vec::with_capacity(ring.ids.len());
        let mut index = HashMap::with_capacity(ring.ids.len());
        for (i, id) in ring.ids.iter().enumerate() {
            let node = by_id.remove(id).unwrap_or_else(|| PlacementNode {
                id: *id,
                location: Location::new("default", "default", &id.to_string()),
                up: false,
                free_bytes: 0,
            });
            let (region, zone, host) = labels.intern(&node.location);
            slots.push(Slot {
                blocked: excluded.contains(id),
                node,
                region,
                zone,
                host,
            });
            index.insert(*id, i as u32);
        }
        Topology {
            ring,
            slots,
            labels,
            index,
        }
    }

    /// Nodes that are up and not excluded.
    pub fn up_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.node.up && !s.blocked)
            .count()
    }

    /// Resolve the source client's location.
    pub fn source(&self, location: &Location) -> Source {
        Source {
            ids: self.labels.lookup(location),
            location: location.clone(),
        }
    }

    /// Take `bytes` off a node's room for the rest of the request.
    pub fn reserve(&mut self, node: &NodeId, bytes: u64) {
        if let Some(&i) = self.index.get(node) {
            let n = &mut self.slots[i as usize].node;
            n.free_bytes = n.free_bytes.saturating_sub(bytes);
        }
    }

    fn ids(&self, i: usize) -> (u32, u32, u32) {
        let s = &self.slots[i];
        (s.region, s.zone, s.host)
    }

    pub(super) fn fits(&self, i: usize, shard: u64, src: &Source, rules: &Proximity) -> bool {
        let s = &self.slots[i];
        s.node.up
            && !s.blocked
            && s.node.free_bytes >= shard
            && ok(
                &rules.backup,
                level(src.ids, self.ids(i)),
                &src.location,
                &s.node.location,
            )
    }

    fn compatible(&self, i: usize, with: &[usize], rules: &Proximity) -> bool {
        with.iter().all(|&j| {
            ok(
                &rules.packet,
                level(self.ids(i), self.ids(j)),
                &self.slots[i].node.location,
                &self.slots[j].node.location,
            )
        })
    }

    /// `need` more distinct nodes for `chunk`, in packet order, compatible with the nodes in
    /// `fixed` (which hold the chunk's other packets and are never chosen again).
    pub fn place(
        &self,
        chunk: &ChunkId,
        need: usize,
        fixed: &[NodeId],
        shard_bytes: u64,
        src: &Source,
        rules: &Proximity,
    ) -> Result<Vec<NodeId>, Shortfall> {
        let fixed: Vec<usize> = fixed
            .iter()
            .filter_map(|id| self.index.get(id).map(|&i| i as usize))
            .collect();
        let points = &self.ring.points;
        let walk = points.len().min(MAX_WALK);
        let mut best = 0;
        if need == 0 {
            return Ok(Vec::new());
        }
        for attempt in 0..ATTEMPTS {
            let anchor = keyed_u64(&self.ring.key, &[chunk.as_bytes(), &attempt.to_le_bytes()]);
            let start = points.partition_point(|p| p.0 < anchor);
            let mut taken: Vec<usize> = fixed.clone();
            let mut picked = Vec::with_capacity(need);
            for step in 0..walk {
                let i = points[(start + step) % points.len()].1 as usize;
                if taken.contains(&i)
                    || !self.fits(i, shard_bytes, src, rules)
                    || !self.compatible(i, &taken, rules)
                {
                    continue;
                }
                taken.push(i);
                picked.push(self.slots[i].node.id);
                if picked.len() == need {
                    return Ok(picked);
                }
            }
            best = best.max(picked.len());
        }
        Err(self.diagnose(best, need, shard_bytes, src, rules))
    }
}
