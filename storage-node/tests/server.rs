//! The storage node over real QUIC with mutual TLS on 127.0.0.1:0: orders, integrity,
//! capacity, restarts.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

#[path = "support/harness.rs"]
mod harness;

use gridback_proto::node_api::DeletePacket;
use gridback_proto::transport;
use gridback_proto::{ErrorCode, NodeId, OrderOp, OrderSigner, PacketName};
use gridback_storage_node::{NodeError, Server};
use harness::*;

#[tokio::test]
async fn put_get_delete_round_trip_over_quic() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 1 << 20).await;
    let client = Client::connect(&grid.client, &node).await.unwrap();

    let name = PacketName::random();
    let data = packet(70_000, 3);
    let ack = client
        .put(
            grid.order(OrderOp::Put, name, data.len() as u64),
            data.clone(),
        )
        .await
        .unwrap();
    assert!(!ack.already_present);
    assert_eq!(ack.checksum, *blake3::hash(&data).as_bytes());
    assert!(
        node.store.packet_path(name).is_file(),
        "acknowledged means on disk"
    );

    let got = client
        .get(grid.order(OrderOp::Get, name, data.len() as u64))
        .await
        .unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.checksum, ack.checksum);

    // Re-put of the same packet is idempotent.
    let again = client
        .put(
            grid.order(OrderOp::Put, name, data.len() as u64),
            data.clone(),
        )
        .await
        .unwrap();
    assert!(again.already_present);
    // A different packet under the same name is a conflict.
    let other = packet(70_000, 4);
    assert_code(
        client
            .put(grid.order(OrderOp::Put, name, 70_000), other)
            .await,
        ErrorCode::Conflict,
    );

    let health = client.health().await.unwrap();
    assert_eq!(health.node, grid.node_id);
    assert_eq!(health.packet_count, 1);
    assert_eq!(health.used_bytes, node.store.usage().used_bytes);
    assert_eq!(health.capacity_bytes, 1 << 20);

    let del = DeletePacket {
        order: grid.order(OrderOp::Delete, name, 0),
    };
    assert!(
        transport::call(&client.conn, del.clone(), CALL_TIMEOUT)
            .await
            .unwrap()
            .existed
    );
    assert!(
        !transport::call(&client.conn, del, CALL_TIMEOUT)
            .await
            .unwrap()
            .existed
    );
    assert_code(
        client.get(grid.order(OrderOp::Get, name, 0)).await,
        ErrorCode::NotFound,
    );
    assert_eq!(client.health().await.unwrap().used_bytes, 0);
    node.stop().await.unwrap();
}

/// Builds a (bad) order for a packet name.
type MakeOrder<'a> = Box<dyn Fn(PacketName) -> gridback_proto::SignedOrder + 'a>;

#[tokio::test]
async fn puts_without_a_valid_order_are_refused_and_store_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 1 << 20).await;
    let client = Client::connect(&grid.client, &node).await.unwrap();
    let data = packet(1000, 1);
    let size = data.len() as u64;
    let (foreign_signer, _) = OrderSigner::generate();

    let cases: Vec<(&str, MakeOrder, ErrorCode)> = vec![
        (
            "bad signature",
            Box::new(|p| foreign_signer.sign(grid.raw_order(OrderOp::Put, p, size))),
            ErrorCode::Unauthorized,
        ),
        (
            "tampered order",
            Box::new(|p| {
                let mut s = grid.order(OrderOp::Put, p, size);
                s.order.expires_unix_ms += 1;
                s
            }),
            ErrorCode::Unauthorized,
        ),
        (
            "wrong node",
            Box::new(|p| {
                let mut o = grid.raw_order(OrderOp::Put, p, size);
                o.node = NodeId::random();
                grid.signer.sign(o)
            }),
            ErrorCode::Unauthorized,
        ),
        (
            "wrong size",
            Box::new(|p| grid.order(OrderOp::Put, p, size + 1)),
            ErrorCode::Unauthorized,
        ),
        (
            "wrong client",
            Box::new(|p| {
                let mut o = grid.raw_order(OrderOp::Put, p, size);
                o.client = stranger();
                grid.signer.sign(o)
            }),
            ErrorCode::Unauthorized,
        ),
        (
            "get order used to put",
            Box::new(|p| grid.order(OrderOp::Get, p, size)),
            ErrorCode::Unauthorized,
        ),
        (
            "expired",
            Box::new(|p| {
                let mut o = grid.raw_order(OrderOp::Put, p, size);
                o.expires_unix_ms = gridback_proto::now_unix_ms() - 1_000;
                grid.signer.sign(o)
            }),
            ErrorCode::Expired,
        ),
    ];
    for (what, make, code) in cases {
        let name = PacketName::random();
        let r = client.put(make(name), data.clone()).await;
        match r {
            Err(e) => assert_eq!(e.code(), Some(code), "{what}: {e}"),
            Ok(a) => panic!("{what}: accepted {a:?}"),
        }
        assert!(
            !node.store.packet_path(name).exists(),
            "{what}: nothing stored"
        );
    }
    assert_eq!(node.store.usage().packet_count, 0);
    assert_eq!(node.store.usage().used_bytes, 0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn another_client_cannot_read_a_packet_with_someone_elses_order() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 1 << 20).await;
    let owner = Client::connect(&grid.client, &node).await.unwrap();
    let name = PacketName::random();
    owner
        .put(grid.order(OrderOp::Put, name, 10), packet(10, 0))
        .await
        .unwrap();

    let other_identity = grid.ca.issue_with_key("other.gridback", "other").unwrap();
    let other = Client::connect(&other_identity, &node).await.unwrap();
    assert_code(
        other.get(grid.order(OrderOp::Get, name, 10)).await,
        ErrorCode::Unauthorized,
    );
    let del = DeletePacket {
        order: grid.order(OrderOp::Delete, name, 0),
    };
    assert_code(
        transport::call(&other.conn, del, CALL_TIMEOUT).await,
        ErrorCode::Unauthorized,
    );
    assert!(owner.get(grid.order(OrderOp::Get, name, 10)).await.is_ok());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_from_another_ca_cannot_connect() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 1 << 20).await;
    let foreign_ca = gridback_proto::tls::ClusterCa::generate("foreign").unwrap();
    let mut foreign = foreign_ca
        .issue_with_key("client.gridback", "intruder")
        .unwrap();
    // It trusts the real CA (so it accepts the node), but its own certificate is foreign.
    foreign.ca_der = grid.ca.cert_der().clone();
    let name = PacketName::random();
    let mut order = grid.raw_order(OrderOp::Put, name, 10);
    order.client = foreign.fingerprint();
    let order = grid.signer.sign(order);
    let outcome = match Client::connect(&foreign, &node).await {
        Err(e) => Err(e),
        Ok(c) => c.put(order, packet(10, 1)).await,
    };
    let e = outcome.expect_err("a foreign certificate must not get through");
    assert_eq!(
        e.code(),
        None,
        "refused in the TLS handshake, not by a handler: {e}"
    );
    assert!(!node.store.packet_path(name).exists());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_packet_corrupted_on_disk_is_reported_corrupt_not_served() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 1 << 20).await;
    let client = Client::connect(&grid.client, &node).await.unwrap();
    let name = PacketName::random();
    client
        .put(grid.order(OrderOp::Put, name, 5000), packet(5000, 9))
        .await
        .unwrap();
    let path = node.store.packet_path(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    assert_code(
        client.get(grid.order(OrderOp::Get, name, 5000)).await,
        ErrorCode::Corrupt,
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_put_beyond_the_capacity_gets_node_full() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let node = grid.start(dir.path(), 3000).await;
    let client = Client::connect(&grid.client, &node).await.unwrap();
    client
        .put(
            grid.order(OrderOp::Put, PacketName::random(), 2000),
            packet(2000, 1),
        )
        .await
        .unwrap();
    let name = PacketName::random();
    assert_code(
        client
            .put(grid.order(OrderOp::Put, name, 2000), packet(2000, 2))
            .await,
        ErrorCode::NodeFull,
    );
    assert!(!node.store.packet_path(name).exists());
    let h = client.health().await.unwrap();
    assert_eq!(h.packet_count, 1);
    assert!(h.used_bytes <= 3000);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_packets_and_usage() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::new();
    let names: Vec<PacketName> = (0..4).map(|_| PacketName::random()).collect();
    let before = {
        let node = grid.start(dir.path(), 1 << 20).await;
        let client = Client::connect(&grid.client, &node).await.unwrap();
        for (i, n) in names.iter().enumerate() {
            let d = packet(1000 * (i + 1), i as u8);
            client
                .put(grid.order(OrderOp::Put, *n, d.len() as u64), d)
                .await
                .unwrap();
        }
        let h = client.health().await.unwrap();
        node.stop().await.unwrap();
        h
    };
    let node = grid.start(dir.path(), 1 << 20).await;
    let client = Client::connect(&grid.client, &node).await.unwrap();
    assert_eq!(client.health().await.unwrap(), before);
    for (i, n) in names.iter().enumerate() {
        let d = packet(1000 * (i + 1), i as u8);
        assert_eq!(
            client
                .get(grid.order(OrderOp::Get, *n, d.len() as u64))
                .await
                .unwrap()
                .data,
            d
        );
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn binding_a_port_in_use_names_the_address() {
    init_tracing();
    let grid = Grid::new();
    let dir = tempfile::tempdir().unwrap();
    let node = grid.start(dir.path(), 1 << 20).await;
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = grid.config(dir2.path(), 1 << 20);
    cfg.listen_addr = node.addr;
    let e = Server::bind_with_identity(
        cfg,
        grid.node_tls.clone(),
        grid.node_id,
        grid.signer.public_key(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NodeError::Bind { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&node.addr.to_string()) && msg.contains("in use"),
        "{msg}"
    );
    node.stop().await.unwrap();
}
