//! Browsing a sealed snapshot through `FsCore` the way `tar -cf - .` does (list a directory,
//! then look up, open and read each file in turn), over real QUIC with the pipeline test
//! cluster, on a fresh core and client (nothing cached): the files' chunks are located in
//! batched round trips when the directory is listed, and the data of the files after the one
//! opened is fetched into the chunk cache before the reader asks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::path::Path;
use std::sync::Arc;

use gridback_fs::client::GridClient;
use gridback_fs::core::namespace::Owner;
use gridback_fs::core::{CoreConfig, FsCore};
use gridback_fs::keys::ClientKeys;
use gridback_fs::meta::SNAPSHOTS_INO;
use gridback_fs::tree::MasterKeyCipher;
use gridback_fs::uploader::UploadParams;
use support::Cluster;

#[path = "pipeline_support/cluster.rs"]
#[allow(dead_code)]
mod support;

const OWNER: Owner = Owner { uid: 0, gid: 0 };
/// Files in the browsed directory: more than one window of prefetch ahead.
const FILES: usize = 150;

fn content(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..2_000 + 37 * i)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn core_over(dir: &Path, grid: &GridClient) -> FsCore {
    let cipher = Arc::new(MasterKeyCipher::new(grid.keys()));
    let config = CoreConfig {
        cache_bytes: 16 << 20,
        readahead_chunks: 2,
    };
    FsCore::new(dir, Arc::new(grid.clone()), cipher, config).unwrap()
}

async fn lookup(core: &FsCore, parent: u64, name: &[u8]) -> u64 {
    core.lookup(parent, name).await.unwrap().ino
}

async fn read_all(core: &FsCore, ino: u64) -> Vec<u8> {
    let fh = core.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let d = core.read(fh, out.len() as u64, 128 << 10).await.unwrap();
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    core.release(fh).await.unwrap();
    out
}

/// Snapshot `s` with `d/f000…` sealed; returns the state directory of the mount that wrote it
/// and its keys.
async fn sealed_snapshot(cluster: &Cluster) -> (tempfile::TempDir, ClientKeys) {
    let state = tempfile::tempdir().unwrap();
    let grid = cluster.client().await;
    let core = core_over(state.path(), &grid);
    let root = core
        .mkdir(SNAPSHOTS_INO, b"s", 0o755, OWNER)
        .await
        .unwrap()
        .ino;
    let d = core.mkdir(root, b"d", 0o755, OWNER).await.unwrap().ino;
    for i in 0..FILES {
        let name = format!("f{i:03}");
        let (_, fh) = core
            .create(d, name.as_bytes(), 0o644, OWNER, false)
            .await
            .unwrap();
        core.write(fh, 0, &content(i)).await.unwrap();
        core.flush(fh).await.unwrap();
        core.release(fh).await.unwrap();
    }
    core.seal("s", false).await.unwrap();
    grid.shutdown().await;
    (state, grid.keys().clone())
}

/// Bug (issue 8): every small file read through the mount paid its own `LocateChunks` round
/// trip and then its packet gets, one file after the other, so `tar` of a snapshot ran at a
/// third of Borg's speed. Listing a sealed directory now locates its files' chunks in one
/// batched call, each lookup locates the next entries, and each open of a file fetches the
/// next files' data ahead (a lookup alone, as `ls -l` does, fetches none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_a_sealed_directory_locates_in_batches_and_reads_ahead() {
    let cluster = Cluster::start(6, 4, 2).await;
    let (state, keys) = sealed_snapshot(&cluster).await;
    // A fresh mount: new core (empty chunk cache), new client (empty location cache).
    let grid = cluster
        .client_with_keys(UploadParams::default(), keys)
        .await;
    let core = core_over(state.path(), &grid);
    let root = lookup(&core, SNAPSHOTS_INO, b"s").await;
    let d = lookup(&core, root, b"d").await;
    let locates_before = cluster.coordinator.round_trips().locates;
    let entries = core.readdir(d).await.unwrap();
    assert_eq!(entries.len(), FILES);
    core.prefetch_settled().await;
    // 150 one-chunk files: one LocateChunks call for all of them.
    assert_eq!(
        cluster.coordinator.round_trips().locates - locates_before,
        1
    );

    // `ls -l`: every entry looked up, nothing read: no chunk is fetched.
    for e in &entries {
        lookup(&core, d, &e.name).await;
    }
    core.prefetch_settled().await;
    assert_eq!(core.cache().stats().chunk_fetches, 0);

    // `tar`: look up, open and read each file in turn.
    for (i, e) in entries.iter().enumerate() {
        let ino = lookup(&core, d, &e.name).await;
        core.prefetch_settled().await;
        assert_eq!(read_all(&core, ino).await, content(i), "{:?}", e.name);
    }
    // Every read found its location cached: no locate after the listing.
    assert_eq!(
        cluster.coordinator.round_trips().locates - locates_before,
        1
    );
    // Each chunk fetched once; every file but the first was in the cache before it was read.
    let stats = core.cache().stats();
    assert_eq!(stats.chunk_fetches, FILES as u64, "{stats:?}");
    assert!(stats.cache_hits >= FILES as u64 - 1, "{stats:?}");
    // k = 4 packet gets per chunk (no node is slow or lying here; hedges would add a few).
    assert!(
        cluster.get_requests() <= FILES * 6,
        "{}",
        cluster.get_requests()
    );
}

/// An open snapshot changes under the reader: nothing is prefetched there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_snapshots_are_not_prefetched() {
    let cluster = Cluster::start(6, 4, 2).await;
    let state = tempfile::tempdir().unwrap();
    let grid = cluster.client().await;
    let core = core_over(state.path(), &grid);
    let root = core
        .mkdir(SNAPSHOTS_INO, b"o", 0o755, OWNER)
        .await
        .unwrap()
        .ino;
    for i in 0..8 {
        let (_, fh) = core
            .create(root, format!("f{i}").as_bytes(), 0o644, OWNER, false)
            .await
            .unwrap();
        core.write(fh, 0, &content(i)).await.unwrap();
        core.flush(fh).await.unwrap();
        core.release(fh).await.unwrap();
    }
    let locates_before = cluster.coordinator.round_trips().locates;
    let fetches_before = core.cache().stats().chunk_fetches;
    let entries = core.readdir(root).await.unwrap();
    for e in &entries {
        lookup(&core, root, &e.name).await;
    }
    core.prefetch_settled().await;
    assert_eq!(cluster.coordinator.round_trips().locates, locates_before);
    assert_eq!(core.cache().stats().chunk_fetches, fetches_before);
}
