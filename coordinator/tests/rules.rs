//! Issue 4 rules over real QUIC: the admin identity, subscriptions (suspend/resume), quotas
//! with the dedup rule, proximity placement with the constraint named, admin records,
//! heartbeat limits and schedules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

#[path = "support/harness.rs"]
mod harness;

use gridback_proto::admin_api::*;
use gridback_proto::coord_api::*;
use gridback_proto::location::Distance;
use gridback_proto::schedule_api::*;
use gridback_proto::{ChunkId, ClientId, ErrorCode};
use harness::*;

async fn hello(c: &Member) -> ClientWelcome {
    c.call(ClientHello {
        pid: 1,
        purpose: "test".into(),
        location: loc("eu/z1/laptop"),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_quotas_placement_and_admin_records() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config(dir.path())).await;
    let admin = admin(dir.path(), srv.addr).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let n = srv.join(Role::Node, &format!("node-{i}")).await;
        n.beat(64 * MIB).await;
        nodes.push(n);
    }
    let client = srv.join(Role::Client, "laptop").await;
    let other = srv.join(Role::Client, "desktop").await;
    let cid = ClientId(client.joined.id);
    let w = hello(&client).await;
    assert_eq!(w.terms.state.as_str(), "active");
    assert_eq!(w.terms.location, loc("eu/z1/laptop"));
    hello(&other).await;

    // Only the admin certificate may ask admin requests; admin may read status and log.
    let e = client.call(AdminClients).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    assert!(format!("{e}").contains("admin certificate"), "{e}");
    assert!(admin.call(Status).await.unwrap().terms.is_none());
    assert_eq!(admin.call(AdminClients).await.unwrap().clients.len(), 2);
    assert!(matches!(
        srv.join_with(&srv.token, Role::Admin, "x").await.map(|_| ()),
        Err(e) if e.code() == Some(ErrorCode::Unauthorized)
    ));

    // Heartbeats carry per-client limits.
    let ack = nodes[0]
        .call(NodeHeartbeat {
            advertise_addr: "127.0.0.1:20001".into(),
            capacity_bytes: 64 * MIB,
            used_bytes: 0,
            packet_count: 0,
            pid: 1,
            location: loc("eu/z1/n0"),
        })
        .await
        .unwrap();
    let mine = ack
        .client_limits
        .iter()
        .find(|l| l.client == client.fp())
        .unwrap();
    assert!(mine.writes_allowed);

    // Suspension: writes refused with the exact message, reads still work.
    admin
        .call(AdminSubscriptionSuspend {
            client: cid,
            suspend: true,
        })
        .await
        .unwrap();
    let e = client
        .call(SnapshotCreate {
            name: "s".into(),
            from: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Suspended));
    assert!(format!("{e}").contains(&format!(
        "subscription of client {cid} is suspended: browsing and restore still work; ask the \
         operator to resume it"
    )));
    assert_eq!(
        code(allocate(&client, &[ChunkId::random()]).await),
        ErrorCode::Suspended
    );
    client.call(SnapshotList).await.unwrap();
    let st = client.call(Status).await.unwrap();
    assert_eq!(st.terms.unwrap().state.as_str(), "suspended");
    admin
        .call(AdminSubscriptionSuspend {
            client: cid,
            suspend: false,
        })
        .await
        .unwrap();
    client
        .call(SnapshotCreate {
            name: "s".into(),
            from: None,
        })
        .await
        .unwrap();
    other
        .call(SnapshotCreate {
            name: "o".into(),
            from: None,
        })
        .await
        .unwrap();

    // Quota: one chunk fits (k=1 on 3 nodes: charged = shard bytes), a second does not.
    let a = allocate(&client, &[ChunkId::random()]).await.unwrap();
    let charge = u64::from(a.chunks[0].k) * a.chunks[0].shard_bytes;
    commit(&client, "s", vec![commit_of(&a.chunks[0])], vec![])
        .await
        .unwrap();
    let set = |client, quota| AdminSubscriptionSet {
        client,
        plan: Some("small".into()),
        quota_bytes: Some(quota),
        bandwidth_up: Some(5_000_000),
        bandwidth_down: None,
        threads: None,
        transfers: None,
        packet_min: None,
        packet_max: None,
        backup_min: None,
        backup_max: None,
        expires_unix_ms: None,
        unset: vec![],
    };
    let d = admin.call(set(cid, charge + charge / 2)).await.unwrap();
    assert_eq!(d.profile.usage.charged_bytes, charge);
    assert_eq!(d.profile.usage.chunk_count, 1);
    let e = allocate(&client, &[ChunkId::random()]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));
    assert!(
        format!("{e}").contains(&format!("quota exceeded for client {cid}: ")),
        "{e}"
    );
    // The dedup rule: another client referencing the chunk is charged too, once.
    let id = a.chunks[0].id;
    admin
        .call(set(ClientId(other.joined.id), charge))
        .await
        .unwrap();
    commit(&other, "o", vec![], vec![id, id]).await.unwrap();
    let od = admin
        .call(AdminClient {
            id: ClientId(other.joined.id),
        })
        .await
        .unwrap();
    assert_eq!(od.profile.usage.charged_bytes, charge);
    commit(&other, "o", vec![], vec![id]).await.unwrap();
    let terms = other.call(ClientPoll).await.unwrap();
    assert_eq!(
        (terms.usage.charged_bytes, terms.usage.chunk_count),
        (charge, 1)
    );
    assert_eq!(terms.subscription.limits.bandwidth_up, Some(5_000_000));

    // Admin chunk view: targets with locations, both sources.
    let view = admin.call(AdminChunk { id }).await.unwrap();
    assert_eq!(view.sources.len(), 2);
    assert!(
        view.targets
            .iter()
            .all(|t| t.location.starts_with("eu/z1/"))
    );
    let page = admin
        .call(AdminChunks {
            client: cid,
            snapshot: Some("s".into()),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.chunks.len(), 1);
    assert!(page.next.is_none());

    // Proximity: all nodes share one zone, so level 2 minimum (other zones) cannot be met.
    admin
        .call(AdminPlacementSet {
            packet_min: Some(Distance::Level(2)),
            ..Default::default()
        })
        .await
        .unwrap();
    admin.call(set(cid, 1 << 40)).await.unwrap();
    let e = allocate(&client, &[ChunkId::random()]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoPlacement));
    assert!(
        format!("{e}")
            .contains("packet proximity min 2 (same region) leaves 1 of 3 needed targets"),
        "{e}"
    );
    // Moving two nodes to other zones satisfies it.
    for (i, n) in nodes.iter().enumerate().skip(1) {
        admin
            .call(AdminNodeSet {
                id: n.node_id(),
                location: Some(format!("eu/z{}/n{i}", i + 1)),
                coords: None,
                capacity_bytes: Some(32 * MIB),
            })
            .await
            .unwrap();
    }
    allocate(&client, &[ChunkId::random()]).await.unwrap();
    // A maximum below the minimum is refused, naming both, and nothing changes: cluster
    // rules merged with the stored ones, a subscription's own, and a subscription's against
    // the cluster's.
    let e = admin
        .call(AdminPlacementSet {
            packet_max: Some(Distance::Level(1)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert!(
        format!("{e}").contains("packet-min 2 is more than packet-max 1"),
        "{e}"
    );
    let rules = admin.call(AdminPlacementGet).await.unwrap().proximity;
    assert_eq!(rules.packet.max, None, "a refused change was stored");
    let e = admin
        .call(AdminSubscriptionSet {
            backup_min: Some(Distance::Km(900.0)),
            backup_max: Some(Distance::Km(500.0)),
            ..set(cid, 1 << 40)
        })
        .await
        .unwrap_err();
    assert!(
        format!("{e}").contains("backup-min 900km is more than backup-max 500km"),
        "{e}"
    );
    let e = admin
        .call(AdminSubscriptionSet {
            packet_max: Some(Distance::Level(0)),
            ..set(cid, 1 << 40)
        })
        .await
        .unwrap_err();
    assert!(
        format!("{e}").contains("cluster-wide") && format!("{e}").contains("packet-max 0"),
        "{e}"
    );
    let nd = admin
        .call(AdminNode {
            id: nodes[1].node_id(),
        })
        .await
        .unwrap();
    assert_eq!(nd.status.capacity_bytes, 32 * MIB);
    assert_eq!(nd.location.labels(), "eu/z2/n1");

    // Schedules: added by the admin, leased once to the client, reported into the log.
    let s = admin
        .call(ScheduleAdd {
            client: cid,
            path: "/home".into(),
            every_ms: 3_600_000,
        })
        .await
        .unwrap()
        .schedules[0]
        .clone();
    assert_eq!(
        code(client.call(ScheduleRemove { id: s.id }).await),
        ErrorCode::Unauthorized
    );
    let reqs = client.call(SchedulePoll).await.unwrap().requests;
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].snapshot.starts_with(&format!("sched-{}-", s.id)),
        "{:?}",
        reqs[0]
    );
    assert!(
        client.call(SchedulePoll).await.unwrap().requests.is_empty(),
        "leased"
    );
    assert!(other.call(SchedulePoll).await.unwrap().requests.is_empty());
    let done = client
        .call(ScheduleReport {
            schedule: s.id,
            result: ScheduleResult {
                finished_unix_ms: 1000,
                ok: true,
                snapshot: reqs[0].snapshot.clone(),
                detail: "3 files".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(done.schedules[0].next_due_unix_ms, 1000 + 3_600_000);
    assert_eq!(
        client
            .call(ScheduleList { client: None })
            .await
            .unwrap()
            .schedules
            .len(),
        1
    );
    let log = admin
        .call(BackupLogQuery {
            since_seq: 0,
            limit: 1000,
            since_unix_ms: None,
        })
        .await
        .unwrap()
        .entries;
    for kind in [
        "subscription.suspend",
        "subscription.resume",
        "subscription.set",
        "placement.set",
        "node.set",
        "schedule.add",
        "backup.scheduled",
    ] {
        assert!(log.iter().any(|e| e.kind == kind), "{kind} missing");
    }
    let later = admin
        .call(BackupLogQuery {
            since_seq: 0,
            limit: 1000,
            since_unix_ms: Some(u64::MAX),
        })
        .await
        .unwrap();
    assert!(later.entries.is_empty());
    srv.stop().await;
}
