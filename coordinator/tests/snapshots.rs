//! Snapshots, status, the backup log and restarts, against a real coordinator over QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;

use gridback_proto::coord_api::*;
use gridback_proto::{ChunkId, ClientId, ErrorCode};
use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_status_log_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let srv = Running::start(cfg.clone()).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let n = srv.join(Role::Node, &format!("node-{i}")).await;
        n.beat(1 << 30).await;
        nodes.push(n);
    }
    let client = srv.join(Role::Client, "laptop").await;
    let other = srv.join(Role::Client, "desktop").await;
    other
        .call(SnapshotCreate {
            name: "mine".into(),
            from: None,
        })
        .await
        .unwrap();
    client
        .call(SnapshotCreate {
            name: "s1".into(),
            from: None,
        })
        .await
        .unwrap();
    let (a, b, c) = (ChunkId::random(), ChunkId::random(), ChunkId::random());
    let allocs = allocate(&client, &[a, b, c]).await.unwrap().chunks;
    commit(
        &client,
        "s1",
        allocs.iter().map(commit_of).collect(),
        vec![],
    )
    .await
    .unwrap();

    // Snapshots: clone, seal, list, get, conflicts.
    assert_eq!(
        code(
            client
                .call(SnapshotCreate {
                    name: "s1".into(),
                    from: None
                })
                .await
        ),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(
            client
                .call(SnapshotCreate {
                    name: "a/b".into(),
                    from: None
                })
                .await
        ),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(
            client
                .call(SnapshotCreate {
                    name: "x".into(),
                    from: Some("nope".into())
                })
                .await
        ),
        ErrorCode::NotFound
    );
    let clone = client
        .call(SnapshotCreate {
            name: "s2".into(),
            from: Some("s1".into()),
        })
        .await
        .unwrap();
    assert_eq!((clone.state, clone.chunk_refs), (SnapshotState::Open, 3));
    let tree = vec![TreeChunk { id: b, len: 1234 }];
    let sealed = client
        .call(SnapshotSeal {
            name: "s1".into(),
            tree: tree.clone(),
            tree_bytes: 1234,
        })
        .await
        .unwrap();
    assert_eq!(sealed.state, SnapshotState::Sealed);
    assert_eq!(
        code(
            client
                .call(SnapshotSeal {
                    name: "s1".into(),
                    tree: tree.clone(),
                    tree_bytes: 1234
                })
                .await
        ),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(commit(&client, "s1", vec![], vec![a]).await),
        ErrorCode::Conflict
    );
    let listing = client.call(SnapshotList).await.unwrap().snapshots;
    assert_eq!(
        listing.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["s1", "s2"]
    );
    assert_eq!(
        client
            .call(SnapshotGet { name: "s1".into() })
            .await
            .unwrap()
            .tree,
        tree
    );
    assert_eq!(
        code(client.call(SnapshotGet { name: "zzz".into() }).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        other.call(SnapshotList).await.unwrap().snapshots.len(),
        1,
        "per-client snapshots"
    );

    // Status and log.
    let st = client.call(Status).await.unwrap();
    assert_eq!(st.client, Some(ClientId(client.joined.id)));
    assert_eq!(st.nodes.len(), 3);
    assert!(
        st.nodes
            .iter()
            .all(|n| n.state == NodeState::Up && n.pid == 4242)
    );
    assert_eq!(st.chunk_count, 3);
    assert_eq!(st.coordinator_addr, srv.addr.to_string());
    assert_eq!(st.coordinator_pid, std::process::id());
    assert_eq!(nodes[0].call(Status).await.unwrap().client, None);
    let log = client
        .call(BackupLogQuery {
            since_seq: 0,
            limit: 1000,
            since_unix_ms: None,
        })
        .await
        .unwrap()
        .entries;
    let kinds: HashSet<&str> = log.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "node.join",
        "client.join",
        "node.up",
        "snapshot.create",
        "chunks.commit",
        "snapshot.seal",
    ] {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let tail = client
        .call(BackupLogQuery {
            since_seq: log[5].seq,
            limit: 2,
            since_unix_ms: None,
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(tail, log[5..7].to_vec());

    // Restart on the same data dir: identities, records and the log survive.
    srv.stop().await;
    let srv = Running::start(cfg).await;
    let client = client.reconnect(srv.addr).await;
    let st = client.call(Status).await.unwrap();
    assert_eq!((st.nodes.len(), st.chunk_count), (3, 3));
    assert_eq!(client.call(SnapshotList).await.unwrap().snapshots, listing);
    assert!(
        client
            .call(LocateChunks { ids: vec![a] })
            .await
            .unwrap()
            .chunks[0]
            .is_some()
    );
    let log2 = client
        .call(BackupLogQuery {
            since_seq: 0,
            limit: 1000,
            since_unix_ms: None,
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(log2[..log.len()], log[..]);
    srv.stop().await;
}
