//! [`GridMap`]: the ring's members with their locations interned (so distance levels
//! compare integers), shared by every request until membership or a location changes;
//! [`Topology`]: one request's view on top of it (each member's liveness and room through
//! [`SlotFacts`], exclusions, reservations) and the greedy ring walk that places a chunk
//! under capacity and the proximity rules.

use std::collections::HashMap;
use std::sync::Arc;

use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::{ChunkId, NodeId};

use super::{ATTEMPTS, MAX_WALK, PlacementNode, Ring, Shortfall, keyed_u64};

/// One ring member with its interned labels.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) id: NodeId,
    pub(super) location: Location,
    pub(super) region: u32,
    pub(super) zone: u32,
    pub(super) host: u32,
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

/// The part of the grid that changes only with membership and locations: the ring and
/// every member's location, interned. Built once and shared by every request until a node
/// joins or moves ([`Topology`] adds what each request sees on top).
#[derive(Debug)]
pub struct GridMap {
    ring: Arc<Ring>,
    pub(super) slots: Vec<Slot>,
    labels: Labels,
    pub(super) index: HashMap<NodeId, u32>,
}

impl GridMap {
    /// The map of `ring`'s members, located by `location_of` (called once per member).
    pub fn new(ring: Arc<Ring>, mut location_of: impl FnMut(&NodeId) -> Location) -> Self {
        let mut labels = Labels::default();
        let mut slots = Vec::with_capacity(ring.ids.len());
        let mut index = HashMap::with_capacity(ring.ids.len());
        for (i, id) in ring.ids.iter().enumerate() {
            let location = location_of(id);
            let (region, zone, host) = labels.intern(&location);
            slots.push(Slot {
                id: *id,
                location,
                region,
                zone,
                host,
            });
            index.insert(*id, i as u32);
        }
        GridMap {
            ring,
            slots,
            labels,
            index,
        }
    }

    /// The slot of a member (its position in [`Ring::ids`]).
    pub fn slot_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).map(|&i| i as usize)
    }

    /// The effective location of the member in `slot`.
    pub fn location(&self, slot: usize) -> Option<&Location> {
        self.slots.get(slot).map(|s| &s.location)
    }

    /// Resolve the source client's location.
    pub fn source(&self, location: &Location) -> Source {
        Source {
            ids: self.labels.lookup(location),
            location: location.clone(),
        }
    }
}

/// What a request knows about each member, by slot: liveness and room left. The service
/// answers from live per-node state, tests and the bench from plain vectors
/// ([`StaticFacts`]); both are read only for the members a walk visits.
pub trait SlotFacts {
    /// Whether the member's heartbeats are current.
    fn up(&self, slot: usize) -> bool;
    /// Room left on the member: effective capacity minus reported use and in-flight
    /// allocations.
    fn free_bytes(&self, slot: usize) -> u64;
}

/// [`SlotFacts`] from vectors aligned with the slots.
#[derive(Debug, Clone, Default)]
pub struct StaticFacts {
    up: Vec<bool>,
    free: Vec<u64>,
}

impl SlotFacts for StaticFacts {
    fn up(&self, slot: usize) -> bool {
        self.up.get(slot).copied().unwrap_or(false)
    }

    fn free_bytes(&self, slot: usize) -> u64 {
        self.free.get(slot).copied().unwrap_or(0)
    }
}

/// The grid as one request sees it: the shared [`GridMap`], the facts of each member, the
/// nodes the client excluded, and what the request has reserved so far. Creating one costs
/// O(excluded), not O(grid).
#[derive(Debug)]
pub struct Topology<F = StaticFacts> {
    map: Arc<GridMap>,
    facts: F,
    /// Slots the client excluded (a handful at most, usually none).
    blocked: Vec<u32>,
    /// Bytes this request reserved, by slot.
    reserved: HashMap<u32, u64>,
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

impl Topology<StaticFacts> {
    /// A self-contained view from a list of nodes (tests, the bench): members of `ring`
    /// missing from `nodes` are down; nodes not in the ring are ignored; `exclude` is never
    /// chosen.
    pub fn new(ring: Arc<Ring>, nodes: Vec<PlacementNode>, exclude: &[NodeId]) -> Self {
        let mut by_id: HashMap<NodeId, PlacementNode> =
            nodes.into_iter().map(|n| (n.id, n)).collect();
        let mut facts = StaticFacts::default();
        let map = GridMap::new(ring, |id| match by_id.remove(id) {
            Some(n) => {
                facts.up.push(n.up);
                facts.free.push(n.free_bytes);
                n.location
            }
            None => {
                facts.up.push(false);
                facts.free.push(0);
                Location::new("default", "default", &id.to_string())
            }
        });
        Topology::with_facts(Arc::new(map), facts, exclude)
    }
}

impl<F: SlotFacts> Topology<F> {
    /// A request's view over a shared map.
    pub fn with_facts(map: Arc<GridMap>, facts: F, exclude: &[NodeId]) -> Self {
        let mut blocked: Vec<u32> = exclude
            .iter()
            .filter_map(|id| map.index.get(id).copied())
            .collect();
        blocked.sort_unstable();
        blocked.dedup();
        Topology {
            map,
            facts,
            blocked,
            reserved: HashMap::new(),
        }
    }

    /// The shared map.
    pub fn map(&self) -> &GridMap {
        &self.map
    }

    fn usable(&self, i: usize) -> bool {
        (self.blocked.is_empty() || self.blocked.binary_search(&(i as u32)).is_err())
            && self.facts.up(i)
    }

    pub(super) fn free(&self, i: usize) -> u64 {
        let free = self.facts.free_bytes(i);
        if self.reserved.is_empty() {
            return free;
        }
        free.saturating_sub(self.reserved.get(&(i as u32)).copied().unwrap_or(0))
    }

    /// Nodes that are up and not excluded (visits every member: for diagnostics).
    pub fn up_count(&self) -> usize {
        self.up_at_least(usize::MAX)
    }

    /// `min(want, up_count())`, visiting members only until `want` are found: what choosing
    /// the erasure coding needs, at a cost that does not grow with the grid.
    pub fn up_at_least(&self, want: usize) -> usize {
        (0..self.map.slots.len())
            .filter(|&i| self.usable(i))
            .take(want)
            .count()
    }

    /// Resolve the source client's location.
    pub fn source(&self, location: &Location) -> Source {
        self.map.source(location)
    }

    /// Take `bytes` off a node's room for the rest of the request.
    pub fn reserve(&mut self, node: &NodeId, bytes: u64) {
        if let Some(&i) = self.map.index.get(node) {
            let r = self.reserved.entry(i).or_default();
            *r = r.saturating_add(bytes);
        }
    }

    fn ids(&self, i: usize) -> (u32, u32, u32) {
        let s = &self.map.slots[i];
        (s.region, s.zone, s.host)
    }

    pub(super) fn roomy(&self, i: usize, shard: u64) -> bool {
        self.usable(i) && self.free(i) >= shard
    }

    pub(super) fn fits(&self, i: usize, shard: u64, src: &Source, rules: &Proximity) -> bool {
        self.roomy(i, shard)
            && ok(
                &rules.backup,
                level(src.ids, self.ids(i)),
                &src.location,
                &self.map.slots[i].location,
            )
    }

    fn compatible(&self, i: usize, with: &[usize], rules: &Proximity) -> bool {
        with.iter().all(|&j| {
            ok(
                &rules.packet,
                level(self.ids(i), self.ids(j)),
                &self.map.slots[i].location,
                &self.map.slots[j].location,
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
            .filter_map(|id| self.map.index.get(id).map(|&i| i as usize))
            .collect();
        let ring = &self.map.ring;
        let points = &ring.points;
        let walk = points.len().min(MAX_WALK);
        let mut best = 0;
        if need == 0 {
            return Ok(Vec::new());
        }
        for attempt in 0..ATTEMPTS {
            let anchor = keyed_u64(&ring.key, &[chunk.as_bytes(), &attempt.to_le_bytes()]);
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
                picked.push(self.map.slots[i].id);
                if picked.len() == need {
                    return Ok(picked);
                }
            }
            best = best.max(picked.len());
        }
        Err(self.diagnose(best, need, shard_bytes, src, rules))
    }
}
