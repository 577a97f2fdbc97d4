//! What the coordinator sets for a node at run time, through heartbeat answers, over real
//! QUIC: the node's location goes out in every heartbeat, the operator's capacity applies at
//! once, and per-client limits (write permission, upload and download bandwidth) are
//! enforced for the client certificate they name and nobody else.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

#[path = "support/fake_coordinator.rs"]
mod fake_coordinator;
#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_coordinator::{FakeCoordinator, eventually};
use gridback_proto::coord_api::ClientLimits;
use gridback_proto::subscription::Limits;
use gridback_proto::tls::{ClusterCa, Identity};
use gridback_proto::{ErrorCode, Order, OrderOp, PacketName, SignedOrder};
use gridback_storage_node::{NodeConfig, Server};
use harness::{Client, RunningNode, init_tracing, packet};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "limits-token";

struct Setup {
    fake: Arc<FakeCoordinator>,
    node: RunningNode,
    _stop: tokio_util::sync::DropGuard,
}

async fn start(dir: &std::path::Path) -> Setup {
    let fake = FakeCoordinator::new(ClusterCa::generate("grid").unwrap(), TOKEN);
    let stop = CancellationToken::new();
    let coord_addr = fake.start(stop.clone()).to_string();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, fake.ca.cert_pem()).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut config = NodeConfig::new(dir.join("data"), coord_addr);
    config.ca_file = Some(ca_file);
    config.join_token_file = Some(token_file);
    config.heartbeat_interval = Duration::from_millis(100);
    config.capacity_bytes = 4 << 20;
    config.location = "eu/eu-1/rack7".into();
    config.coords = Some("48.14,11.58".into());
    let node = RunningNode::spawn(Server::bind(config).await.unwrap());
    Setup {
        fake,
        node,
        _stop: stop.drop_guard(),
    }
}

fn order(s: &Setup, client: &Identity, op: OrderOp, name: PacketName, size: u64) -> SignedOrder {
    s.fake.signer.lock().unwrap().sign(Order {
        op,
        node: s.fake.node_id,
        packet: name,
        size_bytes: size,
        client: client.fingerprint(),
        expires_unix_ms: gridback_proto::now_unix_ms() + 60_000,
    })
}

/// Set the client limits the fake answers with, and wait until the node has had two
/// answers since (the second surely carried them).
async fn set_limits(s: &Setup, list: Vec<ClientLimits>, capacity: Option<u64>) {
    *s.fake.client_limits.lock().unwrap() = list;
    *s.fake.capacity.lock().unwrap() = capacity;
    let seen = s.fake.heartbeat_count();
    eventually("two heartbeats", || s.fake.heartbeat_count() >= seen + 2).await;
}

async fn put(s: &Setup, c: &Client, who: &Identity, len: usize) -> Result<PacketName, ErrorCode> {
    let name = PacketName::random();
    let o = order(s, who, OrderOp::Put, name, len as u64);
    c.put(o, packet(len, 9))
        .await
        .map(|_| name)
        .map_err(|e| e.code().unwrap())
}

#[tokio::test]
async fn location_and_operator_capacity_travel_with_heartbeats() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    eventually("first heartbeat", || s.fake.heartbeat_count() > 0).await;
    let hb = s.fake.last_heartbeat().unwrap();
    assert_eq!(hb.location.labels(), "eu/eu-1/rack7");
    assert_eq!(hb.location.coords.map(|c| c.lat), Some(48.14));

    let client = s.fake.ca.issue_with_key("c.gridback", "client").unwrap();
    let c = Client::connect(&client, &s.node).await.unwrap();
    put(&s, &c, &client, 3000).await.unwrap();
    // The operator shrinks the allocation below what a second packet needs.
    set_limits(&s, vec![], Some(4000)).await;
    assert_eq!(s.node.store.usage().capacity_bytes, 4000);
    assert_eq!(put(&s, &c, &client, 3000).await, Err(ErrorCode::NodeFull));
    let used = s.node.store.usage().used_bytes;
    assert!(used <= 4000, "{used}");
    eventually("the new capacity reported", || {
        s.fake
            .last_heartbeat()
            .is_some_and(|h| h.capacity_bytes == 4000)
    })
    .await;
    // Back to the configured allocation when the operator clears it.
    set_limits(&s, vec![], None).await;
    assert_eq!(s.node.store.usage().capacity_bytes, 4 << 20);
    put(&s, &c, &client, 3000).await.unwrap();
}

#[tokio::test]
async fn client_limits_apply_to_their_certificate_only() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let limited = s.fake.ca.issue_with_key("a.gridback", "client").unwrap();
    let free = s.fake.ca.issue_with_key("b.gridback", "client").unwrap();
    let ca = Client::connect(&limited, &s.node).await.unwrap();
    let cb = Client::connect(&free, &s.node).await.unwrap();
    let stored = put(&s, &ca, &limited, 1000).await.unwrap();

    // Suspended: puts refused with a clear message, gets still served.
    let entry = |limits, writes_allowed| ClientLimits {
        client: limited.fingerprint(),
        limits,
        writes_allowed,
    };
    set_limits(&s, vec![entry(Limits::default(), false)], None).await;
    let name = PacketName::random();
    let refused = ca
        .put(
            order(&s, &limited, OrderOp::Put, name, 1000),
            packet(1000, 1),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Suspended));
    assert!(
        refused.to_string().contains("does not allow new writes"),
        "{refused}"
    );
    assert!(!s.node.store.packet_path(name).exists());
    let got = ca
        .get(order(&s, &limited, OrderOp::Get, stored, 1000))
        .await
        .unwrap();
    assert_eq!(got.data, packet(1000, 9));
    put(&s, &cb, &free, 1000).await.unwrap();

    // Bandwidth: 200 kB/s up and down (burst 50 kB). Four 100 kB puts wait out 350 kB of
    // debt before the last one starts: about 1.25 s; the unlisted client is not slowed (asserted loosely: it finishes first).
    let slow = Limits {
        bandwidth_up: Some(200_000),
        bandwidth_down: Some(200_000),
        ..Limits::default()
    };
    set_limits(&s, vec![entry(slow, true)], None).await;
    let start = Instant::now();
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(put(&s, &ca, &limited, 100_000).await.unwrap());
    }
    let up = start.elapsed();
    let start = Instant::now();
    for n in &names {
        let o = order(&s, &limited, OrderOp::Get, *n, 100_000);
        assert_eq!(ca.get(o).await.unwrap().data.len(), 100_000);
    }
    let down = start.elapsed();
    println!("limited client: 400 kB up in {up:?}, down in {down:?}");
    assert!(up >= Duration::from_millis(1_000), "{up:?}");
    assert!(down >= Duration::from_millis(1_000), "{down:?}");
    let start = Instant::now();
    for _ in 0..4 {
        put(&s, &cb, &free, 100_000).await.unwrap();
    }
    let free_up = start.elapsed();
    assert!(free_up < up, "unlimited {free_up:?} vs limited {up:?}");

    // Limits lifted: the client is unlimited again without reconnecting.
    set_limits(&s, vec![], None).await;
    let start = Instant::now();
    for _ in 0..4 {
        put(&s, &ca, &limited, 100_000).await.unwrap();
    }
    assert!(start.elapsed() < up, "{:?} vs {up:?}", start.elapsed());
}
