//! Placement: which nodes receive the packets of a chunk (F2, F12, F13, F16).
//!
//! A keyed hash ring: every node owns [`VNODES`] points at `keyed_hash(placement_key, node,
//! i)`; a chunk's walk starts at `keyed_hash(placement_key, chunk, attempt)` and takes,
//! greedily and in ring order, distinct nodes that are up, not excluded, have room for one
//! packet, satisfy backup proximity against the source client's location, and satisfy packet
//! proximity against every node already taken for the chunk. The result is deterministic for
//! the coordinator, different for every chunk, and unpredictable without the secret sequence
//! key (the placement key is derived from it and never leaves the coordinator).
//!
//! Cost: the ring depends on membership only and is cached in [`RingCache`] until a node
//! joins; locations, liveness and capacity are applied per request in a [`Topology`] (one
//! O(N) pass per request, not per chunk). Per chunk the cost is a binary search plus a walk
//! that usually stops after a few points; it is bounded by [`MAX_WALK`] points per attempt.
//!
//! Honest limits: the walk is greedy. When a maximum bound forces all targets into one zone
//! or region, a bad first pick is corrected by retrying from up to [`ATTEMPTS`] other
//! anchors; a combination of rules that only an exhaustive search would satisfy can be
//! reported as no placement. On grids of up to `MAX_WALK / VNODES` nodes every attempt sees
//! every node, so a refusal there means the greedy found no set from any of the anchors.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::units::format_size;
use gridback_proto::{ChunkId, NodeId};

use crate::sequence::SequenceKey;

/// Ring points per node: enough to even out load across nodes, few enough that 10,000 nodes
/// make a ring of 160,000 points (a few MB, built in milliseconds).
pub const VNODES: u32 = 16;
/// Most ring points one attempt walks: bounds the per-chunk cost on huge grids while a zone
/// of 1/32 of the grid is still found well within it.
pub const MAX_WALK: usize = 4096;
/// Anchors tried before giving up (the first attempt almost always succeeds).
pub const ATTEMPTS: u32 = 8;
/// blake3 `derive_key` context of the placement subkey. Versioned like the packet names.
const PLACEMENT_CONTEXT: &str = "gridback placement ring v1";

fn keyed_u64(key: &[u8; 32], parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new_keyed(key);
    for p in parts {
        h.update(p);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The hash ring over the grid's members, in sorted node id order.
pub struct Ring {
    key: [u8; 32],
    ids: Vec<NodeId>,
    /// (point, index into `ids`), sorted.
    points: Vec<(u64, u32)>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ring({} nodes, {} points)",
            self.ids.len(),
            self.points.len()
        )
    }
}

impl Ring {
    /// Build the ring for `ids` (any order; duplicates collapse).
    pub fn build(key: &SequenceKey, ids: &[NodeId]) -> Ring {
        let key = blake3::derive_key(PLACEMENT_CONTEXT, key.expose_bytes());
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut points = Vec::with_capacity(ids.len() * VNODES as usize);
        for (i, id) in ids.iter().enumerate() {
            for v in 0..VNODES {
                let p = keyed_u64(&key, &[id.as_bytes(), &v.to_le_bytes()]);
                points.push((p, i as u32));
            }
        }
        points.sort_unstable();
        Ring { key, ids, points }
    }

    /// The members, sorted.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }
}

/// The ring of the current membership, rebuilt only when the set of nodes changes.
#[derive(Debug, Default)]
pub struct RingCache {
    ring: Mutex<Option<Arc<Ring>>>,
}

impl RingCache {
    /// The ring for `ids` (sorted or not), from the cache when the membership is the same.
    pub fn get(&self, key: &SequenceKey, ids: &[NodeId]) -> Arc<Ring> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut slot = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref().filter(|r| r.ids == sorted) {
            return r.clone();
        }
        let r = Arc::new(Ring::build(key, &sorted));
        *slot = Some(r.clone());
        r
    }
}

/// A node as one request sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementNode {
    /// The node.
    pub id: NodeId,
    /// Effective location (operator override or reported).
    pub location: Location,
    /// Whether its heartbeats are current.
    pub up: bool,
    /// Room left: effective capacity minus reported use and in-flight allocations.
    pub free_bytes: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    node: PlacementNode,
    region: u32,
    zone: u32,
    host: u32,
    blocked: bool,
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
    location: Location,
    ids: (u32, u32, u32),
}

/// Why a chunk could not be placed; [`Shortfall::message`] names the constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Shortfall {
    /// Too few nodes are up with room for one packet.
    Capacity {
        /// Eligible nodes.
        fit: usize,
        /// Up, not excluded nodes.
        up: usize,
    },
    /// Backup proximity leaves too few nodes.
    Backup {
        /// The bounds.
        bounds: Bounds,
        /// Nodes with room that satisfy them.
        fit: usize,
        /// The client's location (boxed: keeps the error small).
        client: Box<Location>,
    },
    /// Packet proximity: the best set found was too small.
    Packet {
        /// The bounds.
        bounds: Bounds,
        /// Largest compatible set found.
        best: usize,
        /// Zones with an eligible node.
        zones: usize,
        /// Regions with an eligible node.
        regions: usize,
    },
}

/// A bound with its level named: `min 2 (same region)`, `max 500km`.
pub fn describe(b: &Bounds) -> String {
    let name = |d: Distance| match d {
        Distance::Level(l) => {
            let what = ["same host", "same zone", "same region", "other region"];
            format!("{l} ({})", what.get(usize::from(l)).copied().unwrap_or("?"))
        }
        Distance::Km(_) => d.to_string(),
    };
    let mut s = String::new();
    if let Some(min) = b.min {
        let _ = write!(s, "min {}", name(min));
    }
    if let Some(max) = b.max {
        let sep = if s.is_empty() { "" } else { " " };
        let _ = write!(s, "{sep}max {}", name(max));
    }
    if s.is_empty() {
        s.push_str("unbounded");
    }
    s
}

impl Shortfall {
    /// The refusal as the client sees it and the log shows it.
    pub fn message(&self, chunk: &ChunkId, need: usize, shard_bytes: u64) -> String {
        match self {
            Shortfall::Capacity { fit, up } => format!(
                "no placement for chunk {chunk}: capacity: need {need} nodes with {} free, \
                 {fit} of {up} up nodes have room",
                format_size(shard_bytes)
            ),
            Shortfall::Backup {
                bounds,
                fit,
                client,
            } => format!(
                "no placement for chunk {chunk}: backup proximity {} from client location {} \
                 leaves {fit} of {need} needed targets",
                describe(bounds),
                client.labels()
            ),
            Shortfall::Packet {
                bounds,
                best,
                zones,
                regions,
            } => format!(
                "no placement for chunk {chunk}: packet proximity {} leaves {best} of {need} \
                 needed targets; {zones} zones in {regions} regions up",
                describe(bounds)
            ),
        }
    }

    /// The constraint's short name, for log fields.
    pub fn constraint(&self) -> &'static str {
        match self {
            Shortfall::Capacity { .. } => "capacity",
            Shortfall::Backup { .. } => "backup proximity",
            Shortfall::Packet { .. } => "packet proximity",
        }
    }
}

/// The grid as one request sees it, aligned with a [`Ring`].
#[derive(Debug)]
pub struct Topology {
    ring: Arc<Ring>,
    slots: Vec<Slot>,
    labels: Labels,
    index: HashMap<NodeId, u32>,
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

    fn fits(&self, i: usize, shard: u64, src: &Source, rules: &Proximity) -> bool {
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

    fn diagnose(
        &self,
        best: usize,
        need: usize,
        shard: u64,
        src: &Source,
        rules: &Proximity,
    ) -> Shortfall {
        let roomy: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.node.up && !s.blocked && s.node.free_bytes >= shard
            })
            .collect();
        if roomy.len() < need {
            return Shortfall::Capacity {
                fit: roomy.len(),
                up: self.up_count(),
            };
        }
        let fit: Vec<usize> = roomy
            .into_iter()
            .filter(|&i| self.fits(i, shard, src, rules))
            .collect();
        if fit.len() < need {
            return Shortfall::Backup {
                bounds: rules.backup,
                fit: fit.len(),
                client: Box::new(src.location.clone()),
            };
        }
        let zones: HashSet<u32> = fit.iter().map(|&i| self.slots[i].zone).collect();
        let regions: HashSet<u32> = fit.iter().map(|&i| self.slots[i].region).collect();
        Shortfall::Packet {
            bounds: rules.packet,
            best,
            zones: zones.len(),
            regions: regions.len(),
        }
    }
}

/// What [`bench_placement`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementBenchResult {
    /// Simulated nodes.
    pub nodes: usize,
    /// Chunks placed (or refused).
    pub chunks: usize,
    /// Chunks that got a full placement.
    pub placed: usize,
    /// Time to build the ring (once per membership change).
    pub ring_build: Duration,
    /// Time to place every chunk (topology view included).
    pub elapsed: Duration,
    /// `chunks / elapsed`.
    pub chunks_per_sec: f64,
}

/// Place `chunks` chunks of 4+2 packets on a simulated grid of `nodes` nodes spread over
/// 4 regions × 8 zones, with packet proximity min 2 (no two packets in one zone) and backup
/// proximity min 1 (never on the client's host), reserving capacity as allocation does.
pub fn bench_placement(nodes: usize, chunks: usize) -> PlacementBenchResult {
    let key = SequenceKey::from_bytes(*blake3::hash(b"gridback bench").as_bytes());
    let members: Vec<PlacementNode> = (0..nodes)
        .map(|i| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            PlacementNode {
                id: NodeId(
                    *blake3::hash(&b)
                        .as_bytes()
                        .first_chunk::<16>()
                        .unwrap_or(&b),
                ),
                location: Location::new(
                    &format!("r{}", i % 4),
                    &format!("z{}", (i / 4) % 8),
                    &format!("h{i}"),
                ),
                up: true,
                free_bytes: 1 << 40,
            }
        })
        .collect();
    let ids: Vec<NodeId> = members.iter().map(|n| n.id).collect();
    let t0 = Instant::now();
    let ring = Arc::new(Ring::build(&key, &ids));
    let ring_build = t0.elapsed();
    let rules = Proximity {
        packet: Bounds {
            min: Some(Distance::Level(2)),
            max: None,
        },
        backup: Bounds {
            min: Some(Distance::Level(1)),
            max: None,
        },
    };
    let need = 6.min(nodes);
    let shard = 256 * 1024;
    let t1 = Instant::now();
    let mut topo = Topology::new(ring, members, &[]);
    let src = topo.source(&Location::new("r0", "z0", "client"));
    let mut placed = 0;
    for c in 0..chunks as u64 {
        let id = ChunkId(*blake3::hash(&c.to_le_bytes()).as_bytes());
        if let Ok(seq) = topo.place(&id, need, &[], shard, &src, &rules) {
            for n in &seq {
                topo.reserve(n, shard);
            }
            placed += 1;
        }
    }
    let elapsed = t1.elapsed();
    PlacementBenchResult {
        nodes,
        chunks,
        placed,
        ring_build,
        elapsed,
        chunks_per_sec: chunks as f64 / elapsed.as_secs_f64().max(1e-9),
    }
}

#[cfg(test)]
mod tests;
