//! Packet store throughput: many small and some large packets through `PacketStore` (puts
//! with many in flight, then gets), and through the QUIC service in batches.
//!
//! `cargo bench -p gridback-storage-node --bench store` prints one table. The store writes
//! under `GRIDBACK_BENCH_DIR` (default: the system temp dir; it must be a real disk, not a
//! tmpfs, or fsyncs cost nothing). `GRIDBACK_BENCH_SCALE` (default 1) divides every count,
//! for a quick look. Compare figures taken in the same run: the machine is shared.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench aborts on the first failure

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gridback_proto::node_api::{GetPackets, PutPackets};
use gridback_proto::tls::{ClusterCa, node_server_name};
use gridback_proto::transport;
use gridback_proto::{NodeId, Order, OrderOp, OrderSigner, PacketName, SignedOrder};
use gridback_storage_node::{NodeConfig, PacketStore, Server};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A workload: how many packets of which size, with how many in flight.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    count: usize,
    bytes: usize,
    in_flight: usize,
}

/// Deadline for one call of the QUIC part.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Capacity of the benchmark stores: far more than any run writes.
const CAPACITY: u64 = 1 << 40;

fn packet(len: usize, seed: u64) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn report(what: &str, load: &Load, took: Duration) {
    let secs = took.as_secs_f64();
    let mb = (load.count * load.bytes) as f64 / 1e6;
    println!(
        "{what:<34} {:>6} x {:>7} B  in flight {:>3}  {:>8.3} s  {:>9.0} packets/s  {:>8.1} MB/s",
        load.count,
        load.bytes,
        load.in_flight,
        secs,
        load.count as f64 / secs,
        mb / secs
    );
}

fn bench_dir() -> PathBuf {
    std::env::var_os("GRIDBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn scale(n: usize) -> usize {
    let s: usize = std::env::var("GRIDBACK_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    (n / s.max(1)).max(1)
}

/// Put `load` through the store with `in_flight` single puts at a time, then get them all.
async fn store_puts(dir: &Path, load: Load) {
    let store = PacketStore::open(dir, CAPACITY).await.unwrap();
    let names: Vec<PacketName> = (0..load.count).map(|_| PacketName::random()).collect();
    let data: Vec<Bytes> = (0..load.count)
        .map(|i| packet(load.bytes, i as u64))
        .collect();
    let gate = Arc::new(Semaphore::new(load.in_flight));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(load.count);
    for (name, d) in names.iter().zip(&data) {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (store, name, d) = (store.clone(), *name, d.clone());
        tasks.push(tokio::spawn(async move {
            let r = store.put(name, d).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    report(
        &format!("store put ({})", load.name),
        &load,
        start.elapsed(),
    );

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(load.count);
    for name in &names {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (store, name) = (store.clone(), *name);
        tasks.push(tokio::spawn(async move {
            let r = store.get(name).await;
            drop(permit);
            r
        }));
    }
    for (t, d) in tasks.into_iter().zip(&data) {
        assert_eq!(t.await.unwrap().unwrap().data.len(), d.len());
    }
    report(
        &format!("store get ({})", load.name),
        &load,
        start.elapsed(),
    );
}

/// Put `load` through a node over QUIC in batches of `batch`, `load.in_flight` batches at a
/// time, then get every packet back in batches.
async fn quic_batches(dir: &Path, load: Load, batch: usize) {
    let ca = ClusterCa::generate("bench").unwrap();
    let (signer, _) = OrderSigner::generate();
    let node_id = NodeId::random();
    let node_tls = ca
        .issue_with_key(&node_server_name(node_id), "node")
        .unwrap();
    let client = ca.issue_with_key("client.gridback", "client").unwrap();
    let mut cfg = NodeConfig::new(dir, "127.0.0.1:9");
    cfg.capacity_bytes = CAPACITY;
    let server = Server::bind_with_identity(cfg, node_tls, node_id, signer.public_key())
        .await
        .unwrap();
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let run = tokio::spawn(server.run(stop.clone()));
    let ep = transport::client_endpoint(&client).unwrap();
    let conn = transport::connect(&ep, &addr.to_string(), &node_server_name(node_id))
        .await
        .unwrap();
    let fp = client.fingerprint();
    let signer = Arc::new(signer);
    let order = move |signer: &OrderSigner, op, packet, size: usize| -> SignedOrder {
        signer.sign(Order {
            op,
            node: node_id,
            packet,
            size_bytes: size as u64,
            client: fp,
            expires_unix_ms: gridback_proto::now_unix_ms() + 3_600_000,
        })
    };
    let names: Vec<PacketName> = (0..load.count).map(|_| PacketName::random()).collect();
    let data: Vec<Bytes> = (0..load.count)
        .map(|i| packet(load.bytes, i as u64))
        .collect();
    let gate = Arc::new(Semaphore::new(load.in_flight));

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (names, data) in names.chunks(batch).zip(data.chunks(batch)) {
        let permit = gate.clone().acquire_owned().await.unwrap();
        // Orders are signed per batch as the coordinator would, outside the node's time.
        let parts: Vec<(SignedOrder, Bytes)> = names
            .iter()
            .zip(data)
            .map(|(n, d)| (order(&signer, OrderOp::Put, *n, d.len()), d.clone()))
            .collect();
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let acks = transport::call_encoded::<PutPackets>(
                &conn,
                PutPackets::frame(&parts),
                CALL_TIMEOUT,
            )
            .await
            .unwrap();
            drop(permit);
            acks.acks.into_iter().all(|a| a.is_ok())
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a put of the batch failed");
    }
    report(
        &format!("quic put_batch/{batch} ({})", load.name),
        &load,
        start.elapsed(),
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for names in names.chunks(batch) {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let orders = names
            .iter()
            .map(|n| order(&signer, OrderOp::Get, *n, load.bytes))
            .collect();
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let got = transport::call(&conn, GetPackets { orders }, CALL_TIMEOUT)
                .await
                .unwrap();
            drop(permit);
            got.packets.into_iter().all(|p| p.is_ok())
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a get of the batch failed");
    }
    report(
        &format!("quic get_batch/{batch} ({})", load.name),
        &load,
        start.elapsed(),
    );
    conn.close(0u32.into(), b"done");
    stop.cancel();
    run.await.unwrap().unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = bench_dir();
    println!("packet store bench in {}", base.display());
    let small = Load {
        name: "4 KiB",
        count: scale(10_000),
        bytes: 4096,
        in_flight: 64,
    };
    let large = Load {
        name: "1 MiB",
        count: scale(1_000),
        bytes: 1 << 20,
        in_flight: 8,
    };
    let serial = Load {
        name: "4 KiB, one at a time",
        count: scale(1_000),
        bytes: 4096,
        in_flight: 1,
    };
    rt.block_on(async {
        for load in [serial, small, large] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            store_puts(dir.path(), load).await;
        }
        let dir = tempfile::tempdir_in(&base).unwrap();
        quic_batches(
            dir.path(),
            Load {
                in_flight: 4,
                ..small
            },
            64,
        )
        .await;
        let dir = tempfile::tempdir_in(&base).unwrap();
        quic_batches(
            dir.path(),
            Load {
                in_flight: 2,
                ..large
            },
            12,
        )
        .await;
    });
}
