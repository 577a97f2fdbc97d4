//! The allocation service path measured without a network: what one `AllocateChunks` batch
//! costs the coordinator on a grid of N nodes, with the cached placement view (`grid_view`)
//! and with the view rebuilt from the store for every batch (what every batch cost before
//! the view was cached). `gridback bench --phases placement` reports both next to the pure
//! placement figures of [`crate::placement::bench_placement`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridback_proto::coord_api::{AllocateChunks, ChunkAlloc};
use gridback_proto::location::{Bounds, Distance, Location, Proximity};
use gridback_proto::subscription::Subscription;
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId, WireError, now_unix_ms};

use super::{CoordService, Inner, Settings};
use crate::init::{GridSecrets, InitError};
use crate::store::{
    ClientRecord, MetaStore, NewLogEntry, NewMember, NodeRecord, PlaceRecord, RedbStore, StoreError,
};

/// Chunks per batch: a client's uploader sends at most 32 chunks per round trip.
pub const BENCH_BATCH_CHUNKS: usize = 32;
/// Blob bytes of every simulated chunk (the average chunk size).
const BLOB_BYTES: u64 = 1 << 20;

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum AllocationBenchError {
    /// Secrets could not be made.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The in-memory store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The coordinator refused a request of the simulated grid.
    #[error("the coordinator refused: {0}")]
    Refused(#[from] WireError),
}

/// What [`bench_allocation`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationBenchResult {
    /// Nodes in the store.
    pub nodes: usize,
    /// Chunks per batch.
    pub batch_chunks: usize,
    /// Batches allocated with the cached view.
    pub cached_batches: usize,
    /// Time per batch with the cached view.
    pub cached_per_batch: Duration,
    /// Views built during the cached batches (0: every batch used the cached view).
    pub cached_view_builds: u64,
    /// Batches allocated with the view rebuilt before each.
    pub rebuilt_batches: usize,
    /// Time per batch with the view rebuilt from the store before each.
    pub rebuilt_per_batch: Duration,
}

fn log(kind: &'static str) -> NewLogEntry {
    NewLogEntry {
        client: None,
        node: None,
        kind,
        detail: String::new(),
    }
}

/// A coordinator over an in-memory redb store holding `nodes` nodes (4 regions × 8 zones,
/// each with a heartbeat) and one client; rules as in the pure bench (packet proximity min 2,
/// backup proximity min 1), 4+2 coding.
pub(crate) fn grid(
    nodes: usize,
) -> Result<(Arc<Inner>, ClientId, CertFingerprint), AllocationBenchError> {
    let store: Arc<dyn MetaStore> = Arc::new(RedbStore::in_memory()?);
    let settings = Settings {
        erasure_k: 4,
        erasure_m: 2,
        node_timeout: Duration::from_secs(3600),
        order_ttl: Duration::from_secs(600),
    };
    let svc = CoordService::new(
        store.clone(),
        GridSecrets::ephemeral()?,
        settings,
        Subscription::default(),
        ([127, 0, 0, 1], 1).into(),
    );
    let inner = svc.inner.clone();
    let now = now_unix_ms();
    // Written straight to the store, as heartbeats would leave them (the heartbeat handler
    // itself also answers with every client's limits, which is not what is measured here).
    for i in 0..nodes {
        let id = NodeId::random();
        let mut rec = NodeRecord {
            label: format!("n{i}"),
            addr: String::new(),
            capacity_bytes: 0,
            used_bytes: 0,
            packet_count: 0,
            pid: 0,
            last_heartbeat_unix_ms: 0,
            joined_unix_ms: now,
        };
        let mut fp = [0u8; 32];
        fp[..8].copy_from_slice(&(i as u64).to_le_bytes());
        store.register(
            &CertFingerprint(fp),
            &NewMember::Node(id, rec.clone()),
            &log("node.join"),
        )?;
        rec.addr = format!("10.0.{}.{}:7000", i / 250, i % 250 + 1);
        rec.capacity_bytes = 1 << 42;
        rec.last_heartbeat_unix_ms = now;
        store.update_node(&id, &rec, None)?;
        let place = PlaceRecord {
            reported: Some(Location::new(
                &format!("r{}", i % 4),
                &format!("z{}", (i / 4) % 8),
                &format!("h{i}"),
            )),
            ..PlaceRecord::default()
        };
        store.set_node_place(&id, &place, None)?;
    }
    let client = ClientId::random();
    let fp = CertFingerprint([0xff; 32]);
    let rec = ClientRecord {
        label: "bench".into(),
        joined_unix_ms: now,
        last_seen_unix_ms: now,
        pid: 0,
        stored_bytes: 0,
    };
    store.register(&fp, &NewMember::Client(client, rec), &log("client.join"))?;
    let place = PlaceRecord {
        reported: Some(Location::new("r0", "z0", "client")),
        ..PlaceRecord::default()
    };
    store.set_client_place(&client, &place, None)?;
    let rules = Proximity {
        packet: Bounds {
            min: Some(Distance::Level(2)),
            max: None,
        },
        backup: Bounds {
            min: Some(Distance::Level(1)),
            max: None,
        },
    };
    store.set_proximity(&rules, &log("placement.set"))?;
    Ok((inner, client, fp))
}

/// Allocate `batches` batches; with `rebuild`, announce a change before each so the view
/// is rebuilt from the store. Allocations are released after each batch, as a commit would.
fn run(
    inner: &Inner,
    client: ClientId,
    fp: CertFingerprint,
    batches: usize,
    rebuild: bool,
    seed: u64,
) -> Result<Duration, AllocationBenchError> {
    let sub = Subscription::default();
    let started = Instant::now();
    for b in 0..batches as u64 {
        let chunks: Vec<ChunkAlloc> = (0..BENCH_BATCH_CHUNKS as u64)
            .map(|c| ChunkAlloc {
                id: ChunkId(
                    *blake3::hash(&[seed.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes()].concat())
                        .as_bytes(),
                ),
                blob_bytes: BLOB_BYTES,
            })
            .collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        if rebuild {
            inner.views.changed();
        }
        inner.allocate(
            client,
            fp,
            &sub,
            AllocateChunks {
                chunks,
                exclude: Vec::new(),
            },
        )?;
        inner.pending.remove(client, ids);
    }
    Ok(started.elapsed() / batches.max(1) as u32)
}

/// Measure the allocation service path on `nodes` nodes: `cached_batches` batches of
/// [`BENCH_BATCH_CHUNKS`] chunks with the cached view, `rebuilt_batches` with the view
/// rebuilt before each.
pub fn bench_allocation(
    nodes: usize,
    cached_batches: usize,
    rebuilt_batches: usize,
) -> Result<AllocationBenchResult, AllocationBenchError> {
    let (inner, client, fp) = grid(nodes)?;
    // Warm up: the first request builds the view and the ring.
    run(&inner, client, fp, 1, false, 0)?;
    let builds = inner.views.builds();
    let cached_per_batch = run(&inner, client, fp, cached_batches, false, 1)?;
    let cached_view_builds = inner.views.builds() - builds;
    let rebuilt_per_batch = run(&inner, client, fp, rebuilt_batches, true, 2)?;
    Ok(AllocationBenchResult {
        nodes,
        batch_chunks: BENCH_BATCH_CHUNKS,
        cached_batches,
        cached_per_batch,
        cached_view_builds,
        rebuilt_batches,
        rebuilt_per_batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached view is built once for many batches and kept current by heartbeats; an
    /// announced change rebuilds it, and allocation places every chunk either way.
    #[test]
    fn batches_reuse_the_view_until_a_change_is_announced() {
        let (inner, client, fp) = grid(64).unwrap();
        let before = inner.views.builds();
        run(&inner, client, fp, 5, false, 7).unwrap();
        assert_eq!(
            inner.views.builds(),
            before + 1,
            "one build for five batches"
        );
        run(&inner, client, fp, 3, true, 8).unwrap();
        assert_eq!(
            inner.views.builds(),
            before + 4,
            "one build per announced change"
        );
        let r = bench_allocation(32, 2, 2).unwrap();
        assert_eq!((r.nodes, r.batch_chunks), (32, BENCH_BATCH_CHUNKS));
        assert!(r.cached_per_batch > Duration::ZERO);
        assert_eq!(r.cached_view_builds, 0);
    }
}
