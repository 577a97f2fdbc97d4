//! Joining a grid, heartbeats and grid mismatch, against a fake coordinator over real QUIC.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

#[path = "support/fake_coordinator.rs"]
mod fake_coordinator;
#[path = "support/harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_coordinator::{FakeCoordinator, eventually};
use gridback_proto::tls::ClusterCa;
use gridback_proto::{Order, OrderOp, OrderSigner, PacketName, SignedOrder};
use gridback_storage_node::error::FOREIGN_GRID_MESSAGE;
use gridback_storage_node::join::{CA_FILE, CERT_FILE, IDENTITY_FILE, KEY_FILE, TLS_DIR};
use gridback_storage_node::{JoinError, NodeConfig, NodeError, Server};
use harness::{Client, RunningNode, init_tracing, packet};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "let-me-in";

struct Setup {
    fake: Arc<FakeCoordinator>,
    coord_addr: String,
    config: NodeConfig,
    _stop: tokio_util::sync::DropGuard,
}

fn setup(dir: &Path) -> Setup {
    let fake = FakeCoordinator::new(ClusterCa::generate("grid").unwrap(), TOKEN);
    let stop = CancellationToken::new();
    let coord_addr = fake.start(stop.clone()).to_string();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, fake.ca.cert_pem()).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut config = NodeConfig::new(dir.join("data"), coord_addr.clone());
    config.ca_file = Some(ca_file);
    config.join_token_file = Some(token_file);
    config.heartbeat_interval = Duration::from_millis(100);
    config.capacity_bytes = 1 << 20;
    Setup {
        fake,
        coord_addr,
        config,
        _stop: stop.drop_guard(),
    }
}

fn order(
    fake: &FakeCoordinator,
    signer: &OrderSigner,
    client: &gridback_proto::tls::Identity,
    name: PacketName,
    op: OrderOp,
    size: u64,
) -> SignedOrder {
    signer.sign(Order {
        op,
        node: fake.node_id,
        packet: name,
        size_bytes: size,
        client: client.fingerprint(),
        expires_unix_ms: gridback_proto::now_unix_ms() + 60_000,
    })
}

#[tokio::test]
async fn first_start_joins_heartbeats_and_restarts_without_a_token() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let server = Server::bind(s.config.clone()).await.unwrap();
    assert_eq!(server.node_id(), s.fake.node_id);
    let data = &s.config.data_dir;
    for f in [CERT_FILE, KEY_FILE, CA_FILE] {
        assert!(data.join(TLS_DIR).join(f).is_file(), "{f} written");
    }
    let key_mode = std::fs::metadata(data.join(TLS_DIR).join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let node = RunningNode::spawn(server);

    // The first heartbeat announces the bound address and the allocation.
    eventually("first heartbeat", || s.fake.heartbeat_count() > 0).await;
    let hb = s.fake.last_heartbeat().unwrap();
    assert_eq!(hb.advertise_addr, node.addr.to_string());
    assert_eq!(hb.capacity_bytes, 1 << 20);
    assert_eq!(hb.pid, std::process::id());

    // Orders signed with the key handed out at join are obeyed.
    let client = s
        .fake
        .ca
        .issue_with_key("client.gridback", "client")
        .unwrap();
    let c = Client::connect(&client, &node).await.unwrap();
    let name = PacketName::random();
    let put = |signer: &OrderSigner, name| order(&s.fake, signer, &client, name, OrderOp::Put, 100);
    let old_key = s.fake.signer.lock().unwrap().public_key();
    let first = put(&s.fake.signer.lock().unwrap(), name);
    c.put(first, packet(100, 1)).await.unwrap();
    eventually("usage in a heartbeat", || {
        s.fake
            .last_heartbeat()
            .is_some_and(|h| h.packet_count == 1 && h.used_bytes > 100)
    })
    .await;

    // The coordinator rotates its order key; the next heartbeat answer brings it, and the
    // node records it in its data dir.
    let (new_signer, _) = OrderSigner::generate();
    let new_key = hex::encode(new_signer.public_key());
    let (old_signer, seen) = {
        let mut g = s.fake.signer.lock().unwrap();
        (
            std::mem::replace(&mut *g, new_signer),
            s.fake.heartbeat_count(),
        )
    };
    assert_ne!(hex::encode(&old_key), new_key);
    eventually("a heartbeat answered with the new key", || {
        s.fake.heartbeat_count() >= seen + 2
    })
    .await;
    let fresh = put(&s.fake.signer.lock().unwrap(), PacketName::random());
    c.put(fresh, packet(100, 2)).await.unwrap();
    let stale = put(&old_signer, PacketName::random());
    harness::assert_code(
        c.put(stale, packet(100, 3)).await,
        gridback_proto::ErrorCode::Unauthorized,
    );
    let record = std::fs::read_to_string(data.join(IDENTITY_FILE)).unwrap();
    assert!(record.contains(&new_key), "{record}");
    node.stop().await.unwrap();

    // Restart: the identity comes from the data dir; no token is needed any more.
    let mut again = s.config.clone();
    std::fs::remove_file(again.join_token_file.take().unwrap()).unwrap();
    let server = Server::bind(again).await.unwrap();
    assert_eq!(server.node_id(), s.fake.node_id);
    assert_eq!(server.usage().packet_count, 2);
    let node = RunningNode::spawn(server);
    let c = Client::connect(&client, &node).await.unwrap();
    let get = order(
        &s.fake,
        &s.fake.signer.lock().unwrap(),
        &client,
        name,
        OrderOp::Get,
        100,
    );
    assert_eq!(c.get(get).await.unwrap().data, packet(100, 1));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_token_or_an_untrusted_coordinator_fails_the_join_clearly() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let mut cfg = s.config.clone();
    let token = dir.path().join("wrong-token");
    std::fs::write(&token, "guess").unwrap();
    cfg.join_token_file = Some(token);
    let e = Server::bind(cfg).await.unwrap_err();
    assert!(
        matches!(&e, NodeError::Join(JoinError::Call(c)) if c.code() == Some(gridback_proto::ErrorCode::Unauthorized)),
        "{e}"
    );
    assert!(!s.config.data_dir.join(IDENTITY_FILE).exists());

    let mut cfg = s.config.clone();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, ClusterCa::generate("other").unwrap().cert_pem()).unwrap();
    cfg.ca_file = Some(other_ca);
    let e = Server::bind(cfg).await.unwrap_err();
    assert!(
        matches!(e, NodeError::Join(JoinError::UntrustedCoordinator { .. })),
        "{e}"
    );
    assert!(e.to_string().contains(&s.coord_addr), "{e}");
}

#[tokio::test]
async fn a_data_dir_of_another_grid_stops_the_node() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let server = Server::bind(s.config.clone()).await.unwrap();
    RunningNode::spawn(server).stop().await.unwrap();

    // Same CA, but the coordinator now speaks for another grid.
    *s.fake.grid.lock().unwrap() = [0x99; 16];
    let server = Server::bind(s.config.clone()).await.unwrap();
    let e = RunningNode::spawn(server).finished().await.unwrap_err();
    assert!(matches!(e, NodeError::ForeignGrid { .. }), "{e}");
    assert!(e.to_string().contains(FOREIGN_GRID_MESSAGE), "{e}");

    // A coordinator whose CA is not the one this node joined with.
    let other = FakeCoordinator::new(ClusterCa::generate("other").unwrap(), TOKEN);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let mut cfg = s.config.clone();
    cfg.coordinator_addr = other.start(stop).to_string();
    let server = Server::bind(cfg).await.unwrap();
    let e = RunningNode::spawn(server).finished().await.unwrap_err();
    assert!(matches!(e, NodeError::ForeignGrid { .. }), "{e}");
    assert!(e.to_string().contains(FOREIGN_GRID_MESSAGE), "{e}");
    assert_eq!(other.heartbeat_count(), 0);
}
