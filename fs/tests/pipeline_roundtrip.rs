//! The client pipeline over real QUIC with mutual TLS: `GridClient` against in-process
//! storage-node-like servers and a small stand-in coordinator (placement by rotation, records
//! in memory). The real coordinator and storage node are tested end to end in `tests/`; this
//! file checks the client's side of the protocol: batching, dedup, parallel puts, target
//! replacement when a node vanishes, fallback to parity and checksum failures on reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use gridback_fs::grid::{Grid, GridError};
use gridback_fs::uploader::UploadParams;
use support::Cluster;

fn mixed_data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        // Alternate text-like, random and zero runs so compression is exercised both ways.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = 20_000 + (x % 60_000) as usize;
        match x % 3 {
            0 => out.extend(
                b"gridback stores backups on many nodes. "
                    .iter()
                    .cycle()
                    .take(run),
            ),
            1 => out.extend((0..run).map(|i| (x >> (i % 56)) as u8 ^ i as u8)),
            _ => out.extend(std::iter::repeat_n(0u8, run)),
        }
    }
    out.truncate(len);
    out
}

async fn read_all(
    grid: &impl Grid,
    chunks: &[gridback_fs::grid::ChunkRef],
) -> Result<Vec<u8>, GridError> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&grid.read_chunk(*c).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_dedup_and_read_back_over_quic() {
    let cluster = Cluster::start(6, 4, 2).await;
    let client = cluster.client().await;
    client.snapshot_create("s1".into(), None).await.unwrap();
    let data = mixed_data(3_000_000, 7);
    let stored = client
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(stored.len, data.len() as u64);
    assert!(
        stored.chunks.len() > 8,
        "expected several batches, got {} chunks",
        stored.chunks.len()
    );
    assert_eq!(
        stored.new_chunks as usize,
        cluster.coordinator.chunk_count()
    );
    assert!(stored.uploaded_bytes >= stored.new_chunks * 6 * 2);
    // Every chunk is on k + m distinct nodes, committed with their checksums.
    assert!(cluster.coordinator.all_chunks_fully_placed(6));
    assert_eq!(read_all(&client, &stored.chunks).await.unwrap(), data);

    // The same bytes again: nothing new is uploaded, only references.
    let before = cluster.packet_count();
    let again = client
        .store_reader("s1".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    assert_eq!(again.new_chunks, 0);
    assert_eq!(again.chunks, stored.chunks);
    assert_eq!(cluster.packet_count(), before);

    // Batched readahead returns results in order.
    let batch = client.read_chunks(&stored.chunks[..5]).await;
    let joined: Vec<u8> = batch
        .into_iter()
        .flat_map(|r| r.unwrap().to_vec())
        .collect();
    let first5: u64 = stored.chunks[..5].iter().map(|c| u64::from(c.len)).sum();
    assert_eq!(joined, data[..first5 as usize]);

    // An empty stream stores nothing.
    let empty = client
        .store_reader("s1".into(), Box::new(Cursor::new(Vec::new())))
        .await
        .unwrap();
    assert!(empty.chunks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_survives_a_node_vanishing_and_reads_survive_m_losses() {
    let cluster = Cluster::start(8, 4, 2).await;
    let client = cluster.client().await;
    client.snapshot_create("s".into(), None).await.unwrap();
    // Warm the connections, then kill a node the coordinator still believes is up.
    let warm = client
        .store_reader("s".into(), Box::new(Cursor::new(mixed_data(400_000, 1))))
        .await;
    warm.unwrap();
    cluster.stop_node(0);
    let data = mixed_data(2_000_000, 2);
    let stored = tokio::time::timeout(
        Duration::from_secs(60),
        client.store_reader("s".into(), Box::new(Cursor::new(data.clone()))),
    )
    .await
    .expect("upload finished")
    .unwrap();
    assert!(stored.new_chunks > 0);
    assert!(cluster.coordinator.all_chunks_fully_placed(6));
    let ids: Vec<_> = stored.chunks.iter().map(|c| c.id).collect();
    assert_eq!(cluster.coordinator.packets_on(cluster.node_id(0), &ids), 0);
    // Lose one more node (m = 2 in total): everything still reads.
    cluster.stop_node(1);
    assert_eq!(read_all(&client, &stored.chunks).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_fails_clearly_when_no_target_is_left() {
    let cluster = Cluster::start(6, 4, 2).await;
    let client = cluster.client().await;
    client.snapshot_create("s".into(), None).await.unwrap();
    cluster.stop_node(3);
    let r = client
        .store_reader("s".into(), Box::new(Cursor::new(mixed_data(500_000, 3))))
        .await;
    match r {
        Err(GridError::UploadFailed { reason, .. }) => {
            assert!(reason.contains("no replacement target"), "{reason}")
        }
        other => panic!("expected UploadFailed, got {other:?}"),
    }
    assert_eq!(
        cluster.coordinator.chunk_count(),
        0,
        "nothing may be committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_packets_fall_back_to_parity_and_coordinator_errors_map() {
    let cluster = Cluster::start(6, 4, 2).await;
    let client = cluster.client().await;
    client.snapshot_create("s".into(), None).await.unwrap();
    let data = mixed_data(1_000_000, 4);
    let stored = client
        .store_reader("s".into(), Box::new(Cursor::new(data.clone())))
        .await
        .unwrap();
    // Two nodes return flipped bytes: their checksums fail and parity is used.
    cluster.corrupt_node(0);
    cluster.corrupt_node(1);
    assert_eq!(read_all(&client, &stored.chunks).await.unwrap(), data);
    // A third corrupt node leaves fewer than k good packets for some chunk.
    cluster.corrupt_node(2);
    let all = client.read_chunks(&stored.chunks).await;
    assert!(
        all.iter()
            .any(|r| matches!(r, Err(GridError::ChunkUnavailable { .. })))
    );

    cluster.coordinator.set_quota_exceeded(true);
    let r = client
        .store_reader("s".into(), Box::new(Cursor::new(mixed_data(300_000, 5))))
        .await;
    assert!(matches!(r, Err(GridError::QuotaExceeded(_))), "{r:?}");
    assert_eq!(r.unwrap_err().errno(), libc::EDQUOT);
    assert!(matches!(
        client.snapshot_get("missing".into()).await,
        Err(GridError::NoSuchSnapshot(_))
    ));
}

/// A source that yields `total` bytes of mixed data and counts what was read.
struct CountingReader {
    read: Arc<std::sync::atomic::AtomicU64>,
    total: u64,
    pattern: Vec<u8>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        let done = self.read.load(Ordering::SeqCst);
        let n = buf.len().min((self.total - done) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let pos = done as usize + i;
            *b = self.pattern[pos % self.pattern.len()] ^ (pos / 7919) as u8;
        }
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// Batches span files: hundreds of small files stored at once cost a handful of dedup
/// queries, allocations, commits and put requests, not several per file; every file reads
/// back, and two files with the same content share one stored chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_stored_together_share_round_trips() {
    let cluster = Cluster::start(6, 4, 2).await;
    let client = cluster.client_with(UploadParams::default()).await;
    client.snapshot_create("s".into(), None).await.unwrap();
    let mut files: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut f = mixed_data(8 * 1024 + (i as usize % 5) * 100, u64::from(i));
            f[..4].copy_from_slice(&i.to_le_bytes());
            f
        })
        .collect();
    files[299] = files[7].clone();
    let stores = files.iter().map(|f| {
        let c = client.clone();
        let f = f.clone();
        async move {
            c.store_reader("s".into(), Box::new(std::io::Cursor::new(f)))
                .await
                .unwrap()
        }
    });
    let stored = futures::future::join_all(stores).await;
    let rt = cluster.coordinator.round_trips();
    assert!(
        rt.commits <= 30 && rt.allocations <= 30 && rt.queries <= 30,
        "300 small files took {rt:?}"
    );
    assert!(
        cluster.put_requests() <= 6 * rt.allocations,
        "{} put requests for {} allocations",
        cluster.put_requests(),
        rt.allocations
    );
    // Files 7 and 299 have the same content: one stored copy.
    assert_eq!(stored[7].chunks, stored[299].chunks);
    assert_eq!(stored[7].new_chunks + stored[299].new_chunks, 1);
    assert_eq!(cluster.coordinator.chunk_count(), 299);
    for (f, s) in files.iter().zip(&stored) {
        let mut back = Vec::new();
        for c in &s.chunks {
            back.extend_from_slice(&client.read_chunk(*c).await.unwrap());
        }
        assert_eq!(&back, f);
    }
}

/// Backpressure: with every put stalled, the pipeline stops reading the source once its
/// memory budget is taken, whatever the stream's length; released, it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_when_the_network_stalls() {
    use std::sync::atomic::Ordering;
    let cluster = Cluster::start(6, 4, 2).await;
    let client = cluster.client().await;
    client.snapshot_create("s".into(), None).await.unwrap();
    cluster.hold_puts(true);
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = 64u64 << 20;
    let src = CountingReader {
        read: read.clone(),
        total,
        pattern: mixed_data(1 << 20, 9),
    };
    let c2 = client.clone();
    let store = tokio::spawn(async move { c2.store_reader("s".into(), Box::new(src)).await });
    // The client's budget (2 MiB of plaintext in the engine), plus what the chunker holds
    // beyond it: its read block of 4 largest chunks (256 KiB each) and one chunk waiting
    // for its permit.
    let bound = (2 << 20) + 5 * 256 * 1024;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Wait until put requests are stalled and the reader has stopped.
    let mut last = u64::MAX;
    loop {
        let now = read.load(Ordering::SeqCst);
        assert!(now <= bound, "read {now} bytes ahead");
        if cluster.pending_puts.load(Ordering::SeqCst) >= 1 && now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipeline did not fill up"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        read.load(Ordering::SeqCst) < total / 4,
        "the reader did not stop"
    );
    cluster.hold_puts(false);
    let stored = tokio::time::timeout(Duration::from_secs(120), store)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stored.len, total);
}

#[cfg(test)]
#[path = "pipeline_support/cluster.rs"]
#[allow(dead_code)] // shared with live_limits.rs, which uses other parts
mod support;

/// Many more concurrent stores than tokio has blocking threads, with a memory budget they
/// exhaust: every reader waits for memory on a blocking thread, and the batches that give it
/// back must still find threads to seal on (the write-back uploader of a `cp -a` runs 32
/// stores at once in a binary capped at 16 blocking threads; before readers were bounded
/// this hung for good). Fails by its timeout.
#[test]
fn many_concurrent_stores_on_a_small_blocking_pool_finish() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(6, 4, 2).await;
        let params = UploadParams {
            memory_bytes: 1 << 20,
            ..UploadParams::default()
        };
        let client = cluster.client_with(params).await;
        client.snapshot_create("s".into(), None).await.unwrap();
        let files: Vec<Vec<u8>> = (0..48u64)
            .map(|i| mixed_data(200 * 1024, 1000 + i))
            .collect();
        let stores = files.iter().map(|f| {
            let c = client.clone();
            let f = f.clone();
            async move {
                c.store_reader("s".into(), Box::new(Cursor::new(f)))
                    .await
                    .unwrap()
            }
        });
        let stored =
            tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(stores))
                .await
                .expect("concurrent stores hung");
        for (f, s) in files.iter().zip(&stored) {
            assert_eq!(s.len, f.len() as u64);
        }
    });
}
