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
//! Cost: the ring depends on membership only ([`RingCache`]); the [`GridMap`] (the ring's
//! members with their interned locations) changes only when a node joins or moves, and the
//! coordinator keeps it across requests. A request adds a [`Topology`] over it at a cost
//! independent of the grid's size: liveness and room are read per visited member through
//! [`SlotFacts`]. Per chunk the cost is a binary search plus a walk that usually stops after
//! a few points; it is bounded by [`MAX_WALK`] points per attempt.
//!
//! Honest limits: the walk is greedy. When a maximum bound forces all targets into one zone
//! or region, a bad first pick is corrected by retrying from up to [`ATTEMPTS`] other
//! anchors; a combination of rules that only an exhaustive search would satisfy can be
//! reported as no placement. On grids of up to `MAX_WALK / VNODES` nodes every attempt sees
//! every node, so a refusal there means the greedy found no set from any of the anchors.
//!
//! Files: the ring, its cache and the benchmark here; the shared map, the per-request view
//! and the walk in `topology.rs`; refusals (which constraint fell short, and the message) in `shortfall.rs`.

mod shortfall;
mod topology;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::{ChunkId, NodeId};

use crate::sequence::SequenceKey;

pub use shortfall::{Shortfall, describe};
pub use topology::{GridMap, SlotFacts, Source, StaticFacts, Topology};

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
