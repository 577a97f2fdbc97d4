//! The grid below the filesystem: real QUIC with mutual TLS, real redb, real packet stores,
//! all in this process (`TestCluster`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::io::Cursor;
use std::time::Duration;

use gridback_fs::grid::Grid;
use gridback_fs::keys::ClientKeys;
use gridback_proto::node_api::{NodeHealth, PutPacket};
use gridback_proto::order::{Order, OrderOp, OrderSigner};
use gridback_proto::tls::{ClusterCa, node_server_name};
use gridback_proto::transport::{CallError, client_endpoint, connect};
use gridback_proto::{ErrorCode, PacketName};
use gridback_tests::cluster::TestCluster;
use gridback_tests::tree::{Rng, random, text, tree_contains};

fn mixed_data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = text(&mut rng, len / 2);
    v.extend(random(&mut rng, len - len / 2));
    v
}

async fn read_all(grid: &dyn Grid, chunks: &[gridback_fs::grid::ChunkRef]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&grid.read_chunk(*c).await.expect("chunk reads back"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_data_reads_back_identical() {
    gridback_tests::init_tracing();
    let cluster = TestCluster::builder().start().await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    grid.snapshot_create("s1".into(), None).await.unwrap();
    let data = mixed_data(1, 9 << 20);
    let stored = grid
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(stored.len, data.len() as u64);
    assert!(stored.chunks.len() >= 3, "9 MiB should make several chunks");
    assert_eq!(read_all(grid.as_ref(), &stored.chunks).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_m_nodes_stopped() {
    gridback_tests::init_tracing();
    let mut cluster = TestCluster::builder().start().await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    grid.snapshot_create("s1".into(), None).await.unwrap();
    let data = mixed_data(2, 6 << 20);
    let stored = grid
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    cluster.stop_node(0).await;
    cluster.stop_node(3).await;
    // A fresh client: no cached connections or chunks.
    let (cfg2, _) = (cfg.clone(), ());
    let grid2 = cluster.grid(&cfg2).await;
    assert_eq!(read_all(grid2.as_ref(), &stored.chunks).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_data_twice_is_stored_once_across_clients() {
    gridback_tests::init_tracing();
    let cluster = TestCluster::builder().start().await;
    let (cfg_a, keys_a) = cluster.client("a").await;
    let grid_a = cluster.grid(&cfg_a).await;
    grid_a.snapshot_create("s1".into(), None).await.unwrap();
    let data = mixed_data(3, 8 << 20);
    let first = grid_a
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert!(first.new_chunks > 0);
    let used_after_first = cluster.status(&grid_a).await.stored_bytes;

    let again = grid_a
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(again.new_chunks, 0, "a second copy uploads nothing");
    assert_eq!(again.chunks, first.chunks);

    // Another client of the same dedup domain (its own master key).
    let (cfg_b, _) = cluster
        .client_with_keys("b", ClientKeys::with_domain(keys_a.domain.clone()))
        .await;
    let grid_b = cluster.grid(&cfg_b).await;
    grid_b.snapshot_create("s1".into(), None).await.unwrap();
    let third = grid_b
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(third.new_chunks, 0, "cross-client dedup within a domain");
    assert_eq!(cluster.status(&grid_b).await.stored_bytes, used_after_first);
    assert_eq!(read_all(grid_b.as_ref(), &third.chunks).await, data);

    // A client of another domain stores its own copy (no equality leak across domains).
    let (cfg_c, _) = cluster.client("c").await;
    let grid_c = cluster.grid(&cfg_c).await;
    grid_c.snapshot_create("s1".into(), None).await.unwrap();
    let other = grid_c
        .store_reader("s1".into(), Box::new(Cursor::new(data)))
        .await
        .unwrap();
    assert!(other.new_chunks > 0, "another domain stores its own copy");
    assert!(cluster.status(&grid_c).await.stored_bytes > used_after_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_hold_no_plaintext() {
    gridback_tests::init_tracing();
    let cluster = TestCluster::builder().start().await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    grid.snapshot_create("s1".into(), None).await.unwrap();
    let marker = b"PLAINTEXT-MARKER-THAT-MUST-NOT-LEAK";
    let mut data = Vec::new();
    for _ in 0..20_000 {
        data.extend_from_slice(marker);
    }
    grid.store_reader("s1".into(), Box::new(Cursor::new(data)))
        .await
        .unwrap();
    for i in 0..cluster.node_count() {
        assert_eq!(
            tree_contains(cluster.node_dir(i), &marker[..20]),
            None,
            "node {i} leaks plaintext"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_goes_on_when_a_node_vanishes() {
    gridback_tests::init_tracing();
    // 3+2 on 6 nodes: with one node gone, k+m targets can still be found. The coordinator
    // still believes the node is up (60 s timeout), so sequences include it and the client
    // must route around it.
    let mut cluster = TestCluster::builder()
        .erasure(3, 2)
        .node_timeout(Duration::from_secs(60))
        .start()
        .await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    grid.snapshot_create("s1".into(), None).await.unwrap();
    cluster.stop_node(2).await;
    let data = mixed_data(5, 8 << 20);
    let stored = grid
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(read_all(grid.as_ref(), &stored.chunks).await, data);
    let report = cluster.status(&grid).await;
    let gone = cluster.node_id(2);
    let n = report.nodes.iter().find(|n| n.id == gone).unwrap();
    assert_eq!(n.packet_count, 0, "nothing was stored on the stopped node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_fails_with_eio_when_too_few_nodes_remain() {
    gridback_tests::init_tracing();
    let mut cluster = TestCluster::builder()
        .node_timeout(Duration::from_secs(60))
        .start()
        .await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    grid.snapshot_create("s1".into(), None).await.unwrap();
    cluster.stop_node(1).await;
    let err = grid
        .store_reader("s1".into(), Box::new(Cursor::new(mixed_data(6, 2 << 20))))
        .await
        .expect_err("4+2 cannot be placed on 5 live nodes");
    assert_eq!(err.errno(), libc::EIO, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    gridback_tests::init_tracing();
    let cluster = TestCluster::builder().storage_nodes(1).start().await;
    let rogue_ca = ClusterCa::generate("rogue").unwrap();
    let rogue = rogue_ca
        .issue_with_key("x.client.gridback", "rogue")
        .unwrap();
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    let node = cluster.status(&grid).await.nodes[0].clone();
    // The rogue identity does not even trust our CA; give it our CA as trust root so that
    // only *its own* certificate is the problem.
    let mut rogue_trusting_us = rogue.clone();
    rogue_trusting_us.ca_der = gridback_proto::tls::cert_from_pem(
        &std::fs::read_to_string(cluster.coordinator_dir().join("ca.crt")).unwrap(),
    )
    .unwrap();
    let ep = client_endpoint(&rogue_trusting_us).unwrap();
    let outcome = async {
        let conn = connect(&ep, &node.addr, &node_server_name(node.id)).await?;
        gridback_proto::transport::call(&conn, NodeHealth, Duration::from_secs(5)).await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a node served a client with a foreign certificate"
    );
    let outcome = async {
        let conn = connect(
            &ep,
            cluster.coordinator_addr(),
            gridback_proto::tls::COORDINATOR_SERVER_NAME,
        )
        .await?;
        gridback_proto::transport::call(
            &conn,
            gridback_proto::coord_api::Status,
            Duration::from_secs(5),
        )
        .await
    }
    .await;
    assert!(
        outcome.is_err(),
        "the coordinator served a client with a foreign certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_without_a_valid_order_is_refused() {
    gridback_tests::init_tracing();
    let cluster = TestCluster::builder().storage_nodes(1).start().await;
    let (cfg, _) = cluster.client("a").await;
    let grid = cluster.grid(&cfg).await;
    let node = cluster.status(&grid).await.nodes[0].clone();
    let (identity, _) = gridback_fs::join::load_identity(&cfg.tls_dir()).unwrap();
    let (forger, _) = OrderSigner::generate();
    let order = forger.sign(Order {
        op: OrderOp::Put,
        node: node.id,
        packet: PacketName::random(),
        size_bytes: 4,
        client: identity.fingerprint(),
        expires_unix_ms: gridback_proto::now_unix_ms() + 60_000,
    });
    let ep = client_endpoint(&identity).unwrap();
    let conn = connect(&ep, &node.addr, &node_server_name(node.id))
        .await
        .unwrap();
    let r = gridback_proto::transport::call(
        &conn,
        PutPacket {
            order,
            data: vec![1, 2, 3, 4].into(),
        },
        Duration::from_secs(5),
    )
    .await;
    match r {
        Err(CallError::Remote { error, .. }) => assert_eq!(error.code, ErrorCode::Unauthorized),
        other => panic!("forged order was not refused: {other:?}"),
    }
    let s = cluster.status(&grid).await;
    assert_eq!(s.nodes[0].packet_count, 0);
}
