//! Placement properties: every produced sequence satisfies liveness, capacity and both
//! proximity rules (checked with proto's own `Bounds::check`), and rules no set of nodes can
//! satisfy are refused with the constraint named.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

fn node(i: usize, region: usize, zone: usize) -> PlacementNode {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    PlacementNode {
        id: NodeId(b),
        location: Location::new(&format!("r{region}"), &format!("z{zone}"), &format!("h{i}")),
        up: true,
        free_bytes: 1 << 30,
    }
}

/// `regions × zones × hosts` nodes.
fn grid(regions: usize, zones: usize, hosts: usize) -> Vec<PlacementNode> {
    let mut out = Vec::new();
    for r in 0..regions {
        for z in 0..zones {
            for _ in 0..hosts {
                out.push(node(out.len(), r, z));
            }
        }
    }
    out
}

fn topo(key: &SequenceKey, nodes: Vec<PlacementNode>, exclude: &[NodeId]) -> Topology {
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    Topology::new(Arc::new(Ring::build(key, &ids)), nodes, exclude)
}

fn level(l: u8) -> Option<Distance> {
    Some(Distance::Level(l))
}

fn rules(pmin: Option<u8>, pmax: Option<u8>, bmin: Option<u8>, bmax: Option<u8>) -> Proximity {
    Proximity {
        packet: Bounds {
            min: pmin.and_then(level),
            max: pmax.and_then(level),
        },
        backup: Bounds {
            min: bmin.and_then(level),
            max: bmax.and_then(level),
        },
    }
}

fn chunk(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

/// Whether any `need` nodes of `nodes` satisfy the rules (brute force, small grids only).
fn exists(nodes: &[PlacementNode], need: usize, client: &Location, r: &Proximity) -> bool {
    let ok: Vec<&PlacementNode> = nodes
        .iter()
        .filter(|n| n.up && r.backup.check(client, &n.location).is_ok())
        .collect();
    fn rec(
        ok: &[&PlacementNode],
        from: usize,
        set: &mut Vec<usize>,
        need: usize,
        r: &Proximity,
    ) -> bool {
        if set.len() == need {
            return true;
        }
        for i in from..ok.len() {
            if set
                .iter()
                .all(|&j| r.packet.check(&ok[i].location, &ok[j].location).is_ok())
            {
                set.push(i);
                if rec(ok, i + 1, set, need, r) {
                    return true;
                }
                set.pop();
            }
        }
        false
    }
    rec(&ok, 0, &mut Vec::new(), need, r)
}

#[test]
fn packet_min_region_level_spreads_over_zones_and_refusal_names_the_rule() {
    let key = SequenceKey::from_bytes([1; 32]);
    // 6 nodes over 3 zones in 2 regions, as in the end-to-end grid.
    let nodes = vec![
        node(0, 0, 0),
        node(1, 0, 0),
        node(2, 0, 1),
        node(3, 0, 1),
        node(4, 1, 2),
        node(5, 1, 2),
    ];
    let t = topo(&key, nodes, &[]);
    let src = t.source(&Location::new("r0", "z0", "laptop"));
    // Level 2 (same region) at least: never two packets in one zone.
    let r = rules(Some(2), None, None, None);
    let seq = t.place(&chunk(1), 3, &[], 100, &src, &r).unwrap();
    let zones: HashSet<_> = seq
        .iter()
        .map(|id| t.map().slots[t.map().index[id] as usize].zone)
        .collect();
    assert_eq!(zones.len(), 3);
    let e = t.place(&chunk(1), 6, &[], 100, &src, &r).unwrap_err();
    assert_eq!(
        e.message(&chunk(1), 6, 100),
        format!(
            "no placement for chunk {}: packet proximity min 2 (same region) leaves 3 of 6 needed \
             targets; 3 zones in 2 regions up",
            chunk(1)
        )
    );
    // Backup proximity min 3: nothing in the client's region; 2 nodes remain.
    let r = rules(None, None, Some(3), None);
    let seq = t.place(&chunk(2), 2, &[], 100, &src, &r).unwrap();
    assert!(
        seq.iter()
            .all(|id| t.map().slots[t.map().index[id] as usize].region == t.map().slots[4].region)
    );
    let e = t.place(&chunk(2), 3, &[], 100, &src, &r).unwrap_err();
    assert!(matches!(e, Shortfall::Backup { fit: 2, .. }), "{e:?}");
    assert!(
        e.message(&chunk(2), 3, 100)
            .contains("backup proximity min 3 (other region) from client location r0/z0/laptop")
    );
}

#[test]
fn packet_max_zone_keeps_a_chunk_in_one_zone() {
    let key = SequenceKey::from_bytes([2; 32]);
    let t = topo(&key, grid(2, 3, 4), &[]);
    let src = t.source(&Location::new("r0", "z0", "c"));
    let r = rules(None, Some(1), None, None);
    for c in 0..50 {
        let seq = t.place(&chunk(c), 4, &[], 100, &src, &r).unwrap();
        let zones: HashSet<_> = seq
            .iter()
            .map(|id| t.map().slots[t.map().index[id] as usize].zone)
            .collect();
        assert_eq!(zones.len(), 1);
    }
    assert!(t.place(&chunk(0), 5, &[], 100, &src, &r).is_err());
}

#[test]
fn full_down_and_excluded_nodes_are_left_out() {
    let key = SequenceKey::from_bytes([3; 32]);
    let mut nodes = grid(1, 2, 3);
    nodes[0].free_bytes = 99;
    nodes[1].up = false;
    let excluded = nodes[2].id;
    let left: HashSet<NodeId> = nodes[3..].iter().map(|n| n.id).collect();
    let mut t = topo(&key, nodes, &[excluded]);
    let src = t.source(&Location::new("x", "y", "z"));
    let seq = t
        .place(&chunk(9), 3, &[], 100, &src, &Proximity::default())
        .unwrap();
    assert!(seq.iter().all(|id| left.contains(id)));
    let e = t
        .place(&chunk(9), 4, &[], 100, &src, &Proximity::default())
        .unwrap_err();
    assert_eq!(e, Shortfall::Capacity { fit: 3, up: 4 });
    // Reservations count: after filling one node it is no longer chosen.
    let first = seq[0];
    t.reserve(&first, (1 << 30) - 50);
    let again = t
        .place(&chunk(9), 2, &[], 100, &src, &Proximity::default())
        .unwrap();
    assert!(!again.contains(&first));
}

#[test]
fn sequences_are_keyed_and_ring_is_cached() {
    let nodes = grid(2, 4, 4);
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    let a = SequenceKey::from_bytes([4; 32]);
    let b = SequenceKey::from_bytes([5; 32]);
    let (ta, tb) = (topo(&a, nodes.clone(), &[]), topo(&b, nodes.clone(), &[]));
    let src = ta.source(&Location::new("r0", "z0", "c"));
    let p = Proximity::default();
    let differs = (0..8).any(|c| {
        ta.place(&chunk(c), 6, &[], 1, &src, &p).unwrap()
            != tb.place(&chunk(c), 6, &[], 1, &src, &p).unwrap()
    });
    assert!(differs);
    let cache = RingCache::default();
    let r1 = cache.get(&a, &ids);
    let mut rev = ids.clone();
    rev.reverse();
    assert!(
        Arc::ptr_eq(&r1, &cache.get(&a, &rev)),
        "same membership reuses the ring"
    );
    assert!(!Arc::ptr_eq(&r1, &cache.get(&a, &ids[1..])));
}

#[test]
fn bench_places_every_chunk() {
    let r = bench_placement(256, 2000);
    assert_eq!((r.nodes, r.chunks, r.placed), (256, 2000, 2000));
    assert!(r.chunks_per_sec > 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn placements_satisfy_every_bound(
        key in any::<[u8; 32]>(),
        shape in (1usize..3, 1usize..4, 1usize..3),
        pmin in proptest::option::of(0u8..4), pmax in proptest::option::of(0u8..4),
        bmin in proptest::option::of(0u8..4), bmax in proptest::option::of(0u8..4),
        need in 1usize..6, c in any::<u64>(), down in any::<u8>(),
    ) {
        let k = SequenceKey::from_bytes(key);
        let mut nodes = grid(shape.0, shape.1, shape.2);
        for (i, n) in nodes.iter_mut().enumerate() {
            n.up = (down >> (i % 8)) & 1 == 0 || i >= 8;
        }
        let r = rules(pmin, pmax, bmin, bmax);
        let client = Location::new("r0", "z1", "laptop");
        let t = topo(&k, nodes.clone(), &[]);
        let src = t.source(&client);
        match t.place(&chunk(c), need, &[], 1, &src, &r) {
            Ok(seq) => {
                prop_assert_eq!(seq.len(), need);
                prop_assert_eq!(seq.iter().collect::<HashSet<_>>().len(), need);
                let loc = |id: &NodeId| nodes.iter().find(|n| n.id == *id).unwrap();
                for a in &seq {
                    prop_assert!(loc(a).up);
                    prop_assert!(r.backup.check(&client, &loc(a).location).is_ok());
                    for b in &seq {
                        if a != b {
                            prop_assert!(r.packet.check(&loc(a).location, &loc(b).location).is_ok());
                        }
                    }
                }
                prop_assert_eq!(seq, t.place(&chunk(c), need, &[], 1, &src, &r).unwrap());
            }
            Err(_) => prop_assert!(!exists(&nodes, need, &client, &r), "a placement exists"),
        }
    }
}
