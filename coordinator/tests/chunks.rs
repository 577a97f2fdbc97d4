//! The batched chunk protocol over real QUIC with mutual TLS: joining and authorisation,
//! erasure choice, allocation with signed put orders, replacement, commit checks, locate with
//! get orders, and cross-client dedup.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use gridback_proto::coord_api::*;
use gridback_proto::transport::call;
use gridback_proto::{
    ChunkId, ClientId, ErrorCode, NodeId, OrderOp, OrderVerifier, PacketName, now_unix_ms,
};
use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_allocate_commit_locate_and_dedup_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let srv = Running::start(cfg.clone()).await;
    let written = std::fs::read_to_string(dir.path().join("coordinator.addr")).unwrap();
    assert_eq!(written.trim(), srv.addr.to_string());

    // Joining: bad token refused, anonymous requests other than Join refused.
    assert_eq!(
        code(
            srv.join_with("not-the-token", Role::Node, "evil")
                .await
                .map(|_| ())
        ),
        ErrorCode::Unauthorized
    );
    let (_ep, anon) = srv.anonymous().await;
    assert_eq!(code(call(&anon, Status, T).await), ErrorCode::Unauthorized);
    assert_eq!(
        code(call(&anon, SnapshotList, T).await),
        ErrorCode::Unauthorized
    );

    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(srv.join(Role::Node, &format!("node-{i}")).await);
    }
    let client = srv.join(Role::Client, "laptop").await;
    assert_eq!(client.joined.role, Role::Client);
    let verifier = OrderVerifier::new(client.joined.order_public_key.clone());

    // Role checks.
    assert_eq!(
        code(
            nodes[0]
                .call(ClientHello {
                    pid: 1,
                    purpose: "x".into(),
                    location: harness::loc("eu/z1/laptop"),
                })
                .await
        ),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(
            client
                .call(NodeHeartbeat {
                    advertise_addr: "127.0.0.1:1".into(),
                    capacity_bytes: 1,
                    used_bytes: 0,
                    packet_count: 0,
                    pid: 1,
                    location: harness::loc("eu/z1/n"),
                })
                .await
        ),
        ErrorCode::Unauthorized
    );

    let welcome = client
        .call(ClientHello {
            pid: 99,
            purpose: "test".into(),
            location: harness::loc("eu/z1/laptop"),
        })
        .await
        .unwrap();
    assert_eq!(welcome.client, ClientId(client.joined.id));
    assert_eq!((welcome.erasure_k, welcome.erasure_m), (4, 2));
    assert_eq!(welcome.grid, client.joined.grid);

    // No node has beaten yet: nothing is up.
    assert_eq!(
        code(allocate(&client, &[ChunkId::random()]).await),
        ErrorCode::NoPlacement
    );

    // Three up nodes with 4+2 configured: replication keeping the tolerance, (1, 2).
    for n in &nodes {
        n.beat(1 << 30).await;
    }
    client
        .call(SnapshotCreate {
            name: "s1".into(),
            from: None,
        })
        .await
        .unwrap();
    let a = ChunkId::random();
    let alloc = allocate(&client, &[a]).await.unwrap();
    assert_eq!((alloc.chunks[0].k, alloc.chunks[0].m), (1, 2));
    check_put_orders(&alloc.chunks[0], &client, &verifier);
    let small = alloc.chunks[0].clone();

    // Four more nodes: 4+2 out of 7.
    for i in 3..7 {
        let n = srv.join(Role::Node, &format!("node-{i}")).await;
        n.beat(1 << 30).await;
        nodes.push(n);
    }
    let (b, c) = (ChunkId::random(), ChunkId::random());
    assert_eq!(
        client
            .call(QueryChunks { ids: vec![a, b, c] })
            .await
            .unwrap()
            .present,
        vec![false; 3]
    );
    let allocs = allocate(&client, &[b, c]).await.unwrap().chunks;
    for x in &allocs {
        assert_eq!((x.k, x.m), (4, 2));
        check_put_orders(x, &client, &verifier);
    }
    // Same packet index of different chunks gets unrelated names.
    assert_ne!(
        allocs[0].targets[0].order.order.packet,
        allocs[1].targets[0].order.order.packet
    );

    // Replace packet 0 of c: a node outside its allocation, same size, valid order.
    let failed = allocs[1].targets[0].node;
    let rep = client
        .call(ReplaceTargets {
            id: c,
            shard_bytes: allocs[1].shard_bytes,
            indices: vec![0],
            exclude: vec![failed],
        })
        .await
        .unwrap();
    let new = &rep.targets[0];
    assert!(allocs[1].targets.iter().all(|t| t.node != new.node));
    verifier
        .check(
            &new.order,
            OrderOp::Put,
            new.node,
            new.order.order.packet,
            client.fp(),
            now_unix_ms(),
        )
        .unwrap();
    // Every node is now in use by c: a second replacement has nowhere to go.
    assert_eq!(
        code(
            client
                .call(ReplaceTargets {
                    id: c,
                    shard_bytes: allocs[1].shard_bytes,
                    indices: vec![1],
                    exclude: vec![]
                })
                .await
        ),
        ErrorCode::NoPlacement
    );

    // A placement that was never allocated is refused, and so is a chunk never allocated.
    let mut forged = commit_of(&allocs[0]);
    forged.packets[2].node = NodeId::random();
    assert_eq!(
        code(commit(&client, "s1", vec![forged], vec![]).await),
        ErrorCode::Unauthorized
    );
    let mut stranger = commit_of(&allocs[0]);
    stranger.id = ChunkId::random();
    assert_eq!(
        code(commit(&client, "s1", vec![stranger], vec![]).await),
        ErrorCode::Unauthorized
    );
    let mut renamed = commit_of(&allocs[0]);
    renamed.packets[1].packet = PacketName::random();
    assert_eq!(
        code(commit(&client, "s1", vec![renamed], vec![]).await),
        ErrorCode::Unauthorized
    );
    // Unknown snapshot.
    assert_eq!(
        code(commit(&client, "nope", vec![commit_of(&small)], vec![]).await),
        ErrorCode::NotFound
    );

    let mut with_replacement = commit_of(&allocs[1]);
    with_replacement.packets[0].node = new.node;
    with_replacement.packets[0].packet = new.order.order.packet;
    let done = commit(
        &client,
        "s1",
        vec![commit_of(&small), commit_of(&allocs[0]), with_replacement],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        (done.stored, done.already_stored, done.referenced),
        (3, 0, 3)
    );
    assert_eq!(
        client
            .call(QueryChunks {
                ids: vec![a, b, c, ChunkId::random()]
            })
            .await
            .unwrap()
            .present,
        vec![true, true, true, false]
    );

    // Locate: packets in index order with get orders for this client; unknown ids are None.
    let locs = client
        .call(LocateChunks {
            ids: vec![c, ChunkId::random()],
        })
        .await
        .unwrap()
        .chunks;
    let loc = locs[0].as_ref().unwrap();
    assert!(locs[1].is_none());
    assert_eq!(loc.packets.len(), 6);
    assert_eq!(
        loc.packets[0].node, new.node,
        "the replacement is what was recorded"
    );
    for (i, p) in loc.packets.iter().enumerate() {
        assert_eq!(usize::from(p.index), i);
        assert!(p.node_up && !p.addr.is_empty());
        assert_eq!(p.checksum, [p.index; 32]);
        assert_eq!(p.order.order.size_bytes, loc.shard_bytes);
        verifier
            .check(
                &p.order,
                OrderOp::Get,
                p.node,
                p.order.order.packet,
                client.fp(),
                now_unix_ms(),
            )
            .unwrap();
    }

    // A second client cannot locate the first one's data until it references it (dedup).
    let other = srv.join(Role::Client, "desktop").await;
    other
        .call(SnapshotCreate {
            name: "mine".into(),
            from: None,
        })
        .await
        .unwrap();
    assert!(
        other
            .call(LocateChunks { ids: vec![a] })
            .await
            .unwrap()
            .chunks[0]
            .is_none()
    );
    assert_eq!(
        code(commit(&other, "mine", vec![], vec![ChunkId::random()]).await),
        ErrorCode::NotFound
    );
    let refd = commit(&other, "mine", vec![], vec![a]).await.unwrap();
    assert_eq!((refd.stored, refd.referenced), (0, 1));
    let theirs = other
        .call(LocateChunks { ids: vec![a] })
        .await
        .unwrap()
        .chunks
        .remove(0)
        .unwrap();
    verifier
        .check(
            &theirs.packets[0].order,
            OrderOp::Get,
            theirs.packets[0].node,
            theirs.packets[0].order.order.packet,
            other.fp(),
            now_unix_ms(),
        )
        .unwrap();
    // A concurrent writer that uploaded b again: counted as already stored, referenced.
    let dup = allocate(&other, &[b]).await.unwrap().chunks.remove(0);
    let again = commit(&other, "mine", vec![commit_of(&dup)], vec![])
        .await
        .unwrap();
    assert_eq!(
        (again.stored, again.already_stored, again.referenced),
        (0, 1, 1)
    );

    // One client storing the same new chunk twice at once (two files with the same content):
    // the two allocations are one, the first commit releases it, and the second commit is
    // recorded as a reference instead of being refused. So is a commit sent again after
    // its answer was lost.
    let d = ChunkId::random();
    let first = allocate(&other, &[d]).await.unwrap().chunks.remove(0);
    let second = allocate(&other, &[d]).await.unwrap().chunks.remove(0);
    let c1 = commit(&other, "mine", vec![commit_of(&first)], vec![])
        .await
        .unwrap();
    assert_eq!((c1.stored, c1.already_stored), (1, 0));
    let c2 = commit(&other, "mine", vec![commit_of(&second)], vec![])
        .await
        .unwrap();
    assert_eq!((c2.stored, c2.already_stored), (0, 0), "a reference");
    let c3 = commit(&other, "mine", vec![commit_of(&first)], vec![])
        .await
        .unwrap();
    assert_eq!((c3.stored, c3.already_stored), (0, 0), "a reference");
    // Still refused: a chunk nobody stored, committed without an allocation.
    let mut never = commit_of(&first);
    never.id = ChunkId::random();
    assert_eq!(
        code(commit(&other, "mine", vec![never], vec![]).await),
        ErrorCode::Unauthorized
    );

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_refused_when_nodes_are_full_and_silent_nodes_go_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.node_timeout = Duration::from_millis(400);
    let srv = Running::start(cfg).await;
    let client = srv.join(Role::Client, "c").await;
    let node = srv.join(Role::Node, "tiny").await;
    node.beat(1000).await;
    let err = allocate(&client, &[ChunkId::random()]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoPlacement));
    assert!(
        err.to_string().contains("need 1 nodes with 1.0 MiB free"),
        "{err}"
    );
    // Capacity counts in-flight allocations: room for one packet, not two.
    node.beat(3 * MIB / 2).await;
    allocate(&client, &[ChunkId::random()]).await.unwrap();
    assert_eq!(
        code(allocate(&client, &[ChunkId::random()]).await),
        ErrorCode::NoPlacement
    );

    // No more heartbeats: the node goes down, is logged, and status says so.
    eventually("node.down in the log", Duration::from_secs(10), || async {
        let log = client
            .call(BackupLogQuery {
                since_seq: 0,
                limit: 100,
                since_unix_ms: None,
            })
            .await
            .unwrap()
            .entries;
        log.iter()
            .any(|e| e.kind == "node.down" && e.node == Some(node.node_id()))
    })
    .await;
    assert_eq!(
        client.call(Status).await.unwrap().nodes[0].state,
        NodeState::Down
    );
    let err = allocate(&client, &[ChunkId::random()]).await.unwrap_err();
    assert!(err.to_string().contains("no storage node is up"), "{err}");
    // A heartbeat brings it back, with a node.up entry.
    node.beat(1 << 30).await;
    let log = client
        .call(BackupLogQuery {
            since_seq: 0,
            limit: 100,
            since_unix_ms: None,
        })
        .await
        .unwrap()
        .entries;
    assert!(
        log.last().unwrap().kind == "node.up" && log.last().unwrap().detail.contains("back after")
    );
    srv.stop().await;
}
