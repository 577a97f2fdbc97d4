//! Limits from the coordinator honoured live (bandwidth per direction, picked up by the terms
//! poller without a restart) and hedged reads around a stalled node, over real QUIC with the
//! pipeline test cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::io::Cursor;
use std::time::{Duration, Instant};

use gridback_fs::grid::{ChunkRef, Grid};
use gridback_proto::subscription::Limits;
use support::Cluster;

#[path = "pipeline_support/cluster.rs"]
#[allow(dead_code)]
mod support;

/// Incompressible bytes, so packet bytes are about the plaintext bytes.
fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read_all(grid: &gridback_fs::client::GridClient, chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in grid.read_chunks(chunks).await {
        out.extend_from_slice(&r.unwrap());
    }
    out
}

/// Poll `f` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_apply_from_the_greeting_and_change_without_restart() {
    let cluster = Cluster::start(6, 4, 2).await;
    // 2 MB/s up meters the client's data, not the parity: 3 MB of incompressible data is
    // about 4.5 MB of packets with 4 + 2 coding but is charged about 3.1 MB (sealed and
    // padded), so at least ~1.3 s after the first quarter second's burst; unlimited, it
    // takes a fraction of that on loopback.
    cluster.coordinator.set_limits(Limits {
        bandwidth_up: Some(2_000_000),
        ..Limits::default()
    });
    let client = cluster.client().await;
    client.start_terms_poller();
    client.snapshot_create("s".into(), None).await.unwrap();
    let data = random_data(3_000_000, 7);
    let start = Instant::now();
    let stored = client
        .store_reader("s".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    let limited_up = start.elapsed();
    println!(
        "upload of {} packet bytes at 2 MB/s took {limited_up:?}",
        stored.uploaded_bytes
    );
    assert!(stored.uploaded_bytes > 4_000_000, "{stored:?}");
    // Charged: k / (k + m) of every packet (rounded up per packet), i.e. the data shards.
    let charged = client.live_terms().limits().up.taken_bytes();
    let data_shards = stored.uploaded_bytes * 4 / 6;
    let packets = 6 * stored.chunks.len() as u64;
    assert!(
        (data_shards..=data_shards + packets).contains(&charged),
        "charged {charged} for {} packet bytes ({data_shards} of data shards)",
        stored.uploaded_bytes
    );
    assert!(
        charged >= data.len() as u64,
        "less than the data itself: {charged}"
    );
    assert!(limited_up >= Duration::from_millis(1_000), "{limited_up:?}");

    // The operator changes the limits: the poller picks them up, no reconnect.
    cluster.coordinator.set_limits(Limits {
        bandwidth_down: Some(2_000_000),
        threads: Some(1),
        transfers: Some(2),
        ..Limits::default()
    });
    let limits = client.live_terms().limits().clone();
    assert!(
        eventually(Duration::from_secs(10), || limits.up.rate().is_none()
            && limits.down.rate() == Some(2_000_000))
        .await,
        "new limits not picked up (polls: {})",
        cluster.coordinator.polls()
    );
    assert_eq!(limits.threads.limit(), Some(1));
    assert_eq!(limits.transfers.limit(), Some(2));
    assert_eq!(client.terms().subscription.limits.transfers, Some(2));

    // 2 MB/s down: at least k = 4 of 6 packets per chunk, about 3 MB, so at least ~1.2 s;
    // every packet fetched is charged whole (k of them is the chunk's data size).
    let start = Instant::now();
    assert_eq!(read_all(&client, &stored.chunks).await, data);
    let fetched = limits.down.taken_bytes();
    assert!(
        fetched >= data_shards,
        "charged {fetched} for reading {data_shards}"
    );
    let limited_down = start.elapsed();
    println!("read back at 2 MB/s took {limited_down:?}");
    assert!(
        limited_down >= Duration::from_millis(1_000),
        "{limited_down:?}"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_hedge_around_a_node_that_never_answers() {
    let cluster = Cluster::start(6, 4, 2).await;
    let writer = cluster.client().await;
    writer.snapshot_create("s".into(), None).await.unwrap();
    let data = random_data(2_000_000, 11);
    let stored = writer
        .store_reader("s".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert!(stored.chunks.len() >= 8, "{}", stored.chunks.len());
    // Node 0 stalls: connected, but its gets never answer (the call deadline is 30 s).
    cluster.stall_gets(0, true);
    // The writer has measured no get yet, so it starts as ignorant as a fresh client (a new
    // client of this test cluster would have other keys).
    let reader = &writer;
    let start = Instant::now();
    for c in &stored.chunks {
        // One chunk at a time, so every chunk has to get past the stalled node on its own.
        reader.read_chunk(*c).await.unwrap();
    }
    assert_eq!(read_all(reader, &stored.chunks).await, data);
    let took = start.elapsed();
    println!(
        "{} chunks read around a stalled node in {took:?}",
        stored.chunks.len()
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    cluster.stall_gets(0, false);
}
