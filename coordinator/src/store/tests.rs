//! Round trips of every record family through a real redb file.

use gridback_proto::coord_api::{ChunkCommit, PacketPlacement, Role, SnapshotState, TreeChunk};
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};

use super::*;

pub(super) fn client_rec() -> ClientRecord {
    ClientRecord {
        label: "c".into(),
        joined_unix_ms: 1,
        last_seen_unix_ms: 1,
        pid: 7,
        stored_bytes: 0,
    }
}

fn node_rec(label: &str) -> NodeRecord {
    NodeRecord {
        label: label.into(),
        addr: "127.0.0.1:9".into(),
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        packet_count: 0,
        pid: 3,
        last_heartbeat_unix_ms: 5,
        joined_unix_ms: 4,
    }
}

pub(super) fn log(kind: &'static str) -> NewLogEntry {
    NewLogEntry {
        client: None,
        node: None,
        kind,
        detail: String::new(),
    }
}

pub(super) fn chunk(id: ChunkId, nodes: &[NodeId]) -> ChunkCommit {
    ChunkCommit {
        id,
        k: 1,
        m: (nodes.len() - 1) as u8,
        shard_bytes: 100,
        packets: nodes
            .iter()
            .zip(0u8..)
            .map(|(n, i)| PacketPlacement {
                index: i,
                node: *n,
                packet: PacketName::random(),
                checksum: [i; 32],
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev() // out of order on purpose: the record sorts by index
            .collect(),
    }
}

fn setup(path: &std::path::Path) -> (RedbStore, ClientId) {
    let s = RedbStore::open(path).unwrap();
    let c = ClientId::random();
    s.register(
        &CertFingerprint::random(),
        &NewMember::Client(c, client_rec()),
        &log("client.join"),
    )
    .unwrap();
    (s, c)
}

#[test]
fn members_and_certs_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let fp = CertFingerprint::random();
    let n = NodeId::random();
    {
        let s = RedbStore::open(&path).unwrap();
        s.register(&fp, &NewMember::Node(n, node_rec("a")), &log("node.join"))
            .unwrap();
        assert!(matches!(
            s.register(
                &fp,
                &NewMember::Node(NodeId::random(), node_rec("b")),
                &log("node.join")
            ),
            Err(StoreError::Conflict(_))
        ));
        let mut r = node_rec("a");
        r.used_bytes = 42;
        s.update_node(&n, &r, None).unwrap();
        // A later durable commit makes the non-durable heartbeat durable too.
        s.append_log(&log("x"), 9).unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(
        s.cert(&fp).unwrap(),
        Some(CertRecord {
            role: Role::Node,
            id: n.0
        })
    );
    assert_eq!(s.node(&n).unwrap().unwrap().used_bytes, 42);
    assert_eq!(s.nodes().unwrap().len(), 1);
    assert!(s.cert(&CertFingerprint::random()).unwrap().is_none());
    let kinds: Vec<_> = s
        .log_since(0, None, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![(1, "node.join".to_string()), (2, "x".to_string())]
    );
    assert_eq!(s.log_since(2, None, 10).unwrap().len(), 1);
    assert_eq!(s.log_since(1, None, 1).unwrap().len(), 1);
}

#[test]
fn second_open_of_a_locked_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let _s = RedbStore::open(&path).unwrap();
    let e = RedbStore::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("already open by another coordinator"),
        "{e}"
    );
}

#[test]
fn commit_dedups_refs_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (s, c) = setup(&dir.path().join("m.redb"));
    let nodes = [NodeId::random(), NodeId::random(), NodeId::random()];
    let id = ChunkId::random();
    let batch = |chunks: Vec<ChunkCommit>, refs: Vec<ChunkId>, snap: &str| CommitBatch {
        snapshot: snap.into(),
        chunks,
        refs,
        now_unix_ms: 10,
        quota_bytes: None,
    };
    // No snapshot yet.
    assert!(matches!(
        s.commit_chunks(&c, &batch(vec![chunk(id, &nodes)], vec![], "s")),
        Err(StoreError::NotFound(_))
    ));
    s.snapshot_create(&c, "s", None, 1).unwrap();
    let out = s
        .commit_chunks(&c, &batch(vec![chunk(id, &nodes)], vec![], "s"))
        .unwrap();
    assert_eq!(
        out,
        CommitOutcome {
            stored: 1,
            already_stored: 0,
            referenced: 1,
            stored_bytes: 300
        }
    );
    assert_eq!(
        s.chunks_present(&[id, ChunkId::random()]).unwrap(),
        vec![true, false]
    );
    let rec = s
        .chunks_of_client(&c, &[id])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.packets.iter().map(|p| p.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(rec.committed_by, c);
    assert_eq!(s.node_packets(&nodes[1]).unwrap().len(), 1);
    assert_eq!(
        s.stats().unwrap(),
        GridStats {
            chunk_count: 1,
            stored_bytes: 300
        }
    );
    assert_eq!(s.client(&c).unwrap().unwrap().stored_bytes, 300);

    // A second client: unknown ref aborts the whole commit; a known ref is added.
    let c2 = ClientId::random();
    s.register(
        &CertFingerprint::random(),
        &NewMember::Client(c2, client_rec()),
        &log("client.join"),
    )
    .unwrap();
    s.snapshot_create(&c2, "t", None, 1).unwrap();
    assert!(
        s.chunks_of_client(&c2, &[id]).unwrap()[0].is_none(),
        "not referenced yet"
    );
    let unknown = ChunkId::random();
    assert!(matches!(
        s.commit_chunks(&c2, &batch(vec![], vec![id, unknown], "t")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.chunk_refs_of_client(&c2, &[id]).unwrap(),
        vec![false],
        "aborted commit left nothing"
    );
    let out = s
        .commit_chunks(&c2, &batch(vec![chunk(id, &nodes[..1])], vec![], "t"))
        .unwrap();
    assert_eq!((out.stored, out.already_stored, out.referenced), (0, 1, 1));
    assert_eq!(s.chunk_refs_of_client(&c2, &[id]).unwrap(), vec![true]);
    assert_eq!(s.stats().unwrap().chunk_count, 1, "one stored copy per id");
    // The stored copy is still the first one (3 packets).
    assert_eq!(
        s.chunks_of_client(&c2, &[id]).unwrap()[0]
            .as_ref()
            .unwrap()
            .packets
            .len(),
        3
    );
    let commits = s
        .log_since(0, None, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "chunks.commit")
        .count();
    assert_eq!(commits, 2);
}

#[test]
fn snapshots_create_clone_seal_list() {
    let dir = tempfile::tempdir().unwrap();
    let (s, c) = setup(&dir.path().join("m.redb"));
    let nodes = [NodeId::random()];
    let (a, b) = (ChunkId::random(), ChunkId::random());
    s.snapshot_create(&c, "one", None, 1).unwrap();
    assert!(matches!(
        s.snapshot_create(&c, "one", None, 1),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.snapshot_create(&c, "x", Some("nope"), 1),
        Err(StoreError::NotFound(_))
    ));
    let batch = CommitBatch {
        snapshot: "one".into(),
        chunks: vec![chunk(a, &nodes), chunk(b, &nodes)],
        refs: vec![a],
        now_unix_ms: 2,
        quota_bytes: None,
    };
    assert_eq!(s.commit_chunks(&c, &batch).unwrap().referenced, 2);
    let two = s.snapshot_create(&c, "two", Some("one"), 3).unwrap();
    assert_eq!(two.chunk_refs, 2);
    let tree = vec![TreeChunk { id: b, len: 50 }];
    assert!(matches!(
        s.snapshot_seal(
            &c,
            "one",
            &[TreeChunk {
                id: ChunkId::random(),
                len: 1
            }],
            1,
            4
        ),
        Err(StoreError::NotFound(_))
    ));
    let sealed = s.snapshot_seal(&c, "one", &tree, 50, 5).unwrap();
    assert_eq!(
        (sealed.state, sealed.sealed_unix_ms, sealed.tree_bytes),
        (SnapshotState::Sealed, Some(5), 50)
    );
    assert!(matches!(
        s.snapshot_seal(&c, "one", &tree, 50, 6),
        Err(StoreError::Conflict(_))
    ));
    let bad = CommitBatch {
        snapshot: "one".into(),
        chunks: vec![],
        refs: vec![a],
        now_unix_ms: 7,
        quota_bytes: None,
    };
    assert!(matches!(
        s.commit_chunks(&c, &bad),
        Err(StoreError::Conflict(_))
    ));
    let row = s.snapshot_get(&c, "one").unwrap().unwrap();
    assert_eq!(row.tree, tree);
    let names: Vec<_> = s
        .snapshot_list(&c)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec!["one", "two"]);
    // Another client sees none of them.
    assert!(s.snapshot_list(&ClientId::random()).unwrap().is_empty());
    assert!(
        s.snapshot_get(&ClientId::random(), "one")
            .unwrap()
            .is_none()
    );
}

/// The quota rule: `k × shard bytes` once per chunk per client, whoever uploaded it; a
/// reference past the quota is refused before anything is recorded.
#[test]
fn usage_follows_the_dedup_rule_and_ref_quota_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a) = setup(&dir.path().join("m.redb"));
    let b = ClientId::random();
    s.register(
        &CertFingerprint::random(),
        &NewMember::Client(b, client_rec()),
        &log("client.join"),
    )
    .unwrap();
    let nodes = [NodeId::random(), NodeId::random(), NodeId::random()];
    let (x, y) = (ChunkId::random(), ChunkId::random());
    let batch = |chunks, refs, quota| CommitBatch {
        snapshot: "s".into(),
        chunks,
        refs,
        now_unix_ms: 3,
        quota_bytes: quota,
    };
    s.snapshot_create(&a, "s", None, 1).unwrap();
    s.snapshot_create(&b, "s", None, 1).unwrap();
    // k = 1, shard 100, 3 packets: charged 100, uploaded 300.
    s.commit_chunks(
        &a,
        &batch(vec![chunk(x, &nodes), chunk(y, &nodes)], vec![x], None),
    )
    .unwrap();
    let ua = s.usage(&a).unwrap();
    assert_eq!(
        (ua.charged_bytes, ua.chunk_count, ua.uploaded_packet_bytes),
        (200, 2, 600)
    );
    // Referencing twice, in two commits, charges once.
    s.commit_chunks(&a, &batch(vec![], vec![x, x], None))
        .unwrap();
    assert_eq!(s.usage(&a).unwrap(), ua);
    // Another client referencing a stored chunk is charged for it, uploads nothing.
    let e = s
        .commit_chunks(&b, &batch(vec![], vec![x, y], Some(150)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::QuotaExceeded {
                used: 0,
                quota: 150,
                needed: 200,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("100 B used") || e.to_string().contains("0 B used"),
        "{e}"
    );
    assert_eq!(s.usage(&b).unwrap(), Default::default(), "nothing recorded");
    s.commit_chunks(&b, &batch(vec![], vec![x], Some(150)))
        .unwrap();
    let ub = s.usage(&b).unwrap();
    assert_eq!(
        (ub.charged_bytes, ub.chunk_count, ub.uploaded_packet_bytes),
        (100, 1, 0)
    );
    assert_eq!(
        s.usage(&a).unwrap(),
        ua,
        "b's reference does not change a's usage"
    );
    let mut sources = s.chunk_sources(&x).unwrap();
    sources.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(sources, want);
    assert_eq!(s.client_chunks(&a, None, None, 10).unwrap().len(), 2);
    let first = s.client_chunks(&a, Some("s"), None, 1).unwrap();
    let rest = s.client_chunks(&a, Some("s"), first.first(), 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest, first);
}

#[test]
fn places_subscriptions_rules_and_schedules_round_trip() {
    use gridback_proto::location::{Distance, Location};
    use gridback_proto::schedule_api::ScheduleResult;
    use gridback_proto::subscription::Subscription;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let (s, c) = setup(&path);
    let n = NodeId::random();
    let place = PlaceRecord {
        reported: Some(Location::new("eu", "z1", "h")),
        location_override: Some(Location::parse("us/z9/h", Some("40.7,-74.0")).unwrap()),
        capacity_override: Some(5),
    };
    s.set_node_place(&n, &place, Some(&log("node.set")))
        .unwrap();
    s.set_client_place(&c, &place, None).unwrap();
    let mut p = s.proximity().unwrap();
    assert!(p.packet.is_unbounded());
    p.packet.min = Some(Distance::Level(2));
    s.set_proximity(&p, &log("placement.set")).unwrap();
    let sub = SubscriptionRecord {
        subscription: Subscription {
            suspended: true,
            ..Subscription::default()
        },
        expiry_logged: true,
    };
    assert_eq!(s.subscription(&c).unwrap(), None);
    s.set_subscription(&c, &sub, &log("subscription.suspend"))
        .unwrap();
    let sched = s
        .schedule_add(&c, "/home", 1000, 50, &log("schedule.add"))
        .unwrap();
    assert_eq!((sched.id, sched.next_due_unix_ms), (1, 50));
    // Due at 50: leased once until 50 + 100, then again after the lease ran out.
    assert_eq!(s.schedule_lease(&c, 60, 100).unwrap().len(), 1);
    assert!(s.schedule_lease(&c, 61, 100).unwrap().is_empty());
    assert!(
        s.schedule_lease(&ClientId::random(), 61, 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.schedule_lease(&c, 161, 100).unwrap().len(), 1);
    let result = ScheduleResult {
        finished_unix_ms: 200,
        ok: true,
        snapshot: "sched-1-x".into(),
        detail: "ok".into(),
    };
    assert!(
        s.schedule_report(&ClientId::random(), 1, &result, &log("x"))
            .is_err()
    );
    let done = s
        .schedule_report(&c, 1, &result, &log("backup.scheduled"))
        .unwrap();
    assert_eq!(done.next_due_unix_ms, 1200);
    assert!(
        s.schedule_lease(&c, 300, 100).unwrap().is_empty(),
        "not due"
    );
    drop(s);
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.node_place(&n).unwrap(), place);
    assert_eq!(s.node_places().unwrap(), vec![(n, place.clone())]);
    assert_eq!(s.client_place(&c).unwrap(), place);
    assert_eq!(s.proximity().unwrap(), p);
    assert_eq!(s.subscription(&c).unwrap(), Some(sub));
    let all = s.schedules(None).unwrap();
    assert_eq!(all[0].last_ok_snapshot.as_deref(), Some("sched-1-x"));
    assert_eq!(s.schedules(Some(&ClientId::random())).unwrap().len(), 0);
    assert_eq!(s.schedule_remove(1, &log("schedule.remove")).unwrap().id, 1);
    assert!(matches!(
        s.schedule_remove(1, &log("x")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(place.effective("q").labels(), "us/z9/h");
    assert_eq!(
        PlaceRecord::default().effective("q").labels(),
        "default/default/q"
    );
}
