//! The `placement` phase: how fast the coordinator places chunks as the grid grows, on
//! simulated grids of 100, 1,000 and 10,000 nodes (no processes, no network): the pure
//! placement function, and the allocation service path (one `AllocateChunks` batch against
//! a store holding every node) with the cached grid view and with the view rebuilt from the
//! store for every batch, as it was before the cache.

use anyhow::{Context, Result};
use gridback_coordinator::placement::bench_placement;
use gridback_coordinator::{BENCH_BATCH_CHUNKS, bench_allocation};
use serde_json::json;

use super::Section;

/// Grid sizes measured.
const NODES: [usize; 3] = [100, 1_000, 10_000];
/// Chunks placed on each.
const CHUNKS: usize = 100_000;
/// Batches allocated through the service path with the cached view on each grid.
const CACHED_BATCHES: usize = 300;
/// Batches allocated with the view rebuilt before each (slow on big grids, so fewer).
const REBUILT_BATCHES: usize = 30;

/// Run the phase.
pub fn run() -> Result<Section> {
    let mut rows = Vec::new();
    let mut text = vec![format!(
        "placement of {CHUNKS} chunks (4+2) on simulated grids"
    )];
    for n in NODES {
        eprintln!("bench: placement on {n} nodes…");
        let r = bench_placement(n, CHUNKS);
        text.push(format!(
            "  {:>6} nodes  {:>10.0} chunks/s  ({:.2} s, ring {:.3} s, {} placed)",
            r.nodes,
            r.chunks_per_sec,
            r.elapsed.as_secs_f64(),
            r.ring_build.as_secs_f64(),
            r.placed
        ));
        rows.push(r);
    }
    let first = rows.first().map(|r| r.chunks_per_sec).unwrap_or(0.0);
    let last = rows.last().map(|r| r.chunks_per_sec).unwrap_or(0.0);
    // How much slower placing one chunk gets when the grid grows 100×.
    let growth = first / last.max(1e-9);
    text.push(format!(
        "  time per chunk grows {growth:.2}× from {} to {} nodes",
        NODES[0],
        NODES[NODES.len() - 1]
    ));
    text.push(format!(
        "allocation service path: one AllocateChunks of {BENCH_BATCH_CHUNKS} chunks (4+2) \
         against an in-memory store"
    ));
    let mut service = Vec::new();
    for n in NODES {
        eprintln!("bench: allocation service path on {n} nodes…");
        let r = bench_allocation(n, CACHED_BATCHES, REBUILT_BATCHES)
            .with_context(|| format!("allocation bench on {n} nodes"))?;
        text.push(format!(
            "  {:>6} nodes  {:>9.1} µs/batch cached view ({} rebuilds)  {:>9.1} µs/batch \
             view rebuilt per batch",
            r.nodes,
            r.cached_per_batch.as_secs_f64() * 1e6,
            r.cached_view_builds,
            r.rebuilt_per_batch.as_secs_f64() * 1e6,
        ));
        service.push(r);
    }
    // One result per grid size: the loop above returns early on any error.
    let (smallest, largest) = (&service[0], &service[service.len() - 1]);
    let per_batch_growth =
        |f: fn(&gridback_coordinator::AllocationBenchResult) -> std::time::Duration| {
            f(largest).as_secs_f64() / f(smallest).as_secs_f64().max(1e-12)
        };
    let cached_growth = per_batch_growth(|r| r.cached_per_batch);
    let rebuilt_growth = per_batch_growth(|r| r.rebuilt_per_batch);
    text.push(format!(
        "  time per batch grows {cached_growth:.2}× cached, {rebuilt_growth:.2}× rebuilt, from {} \
         to {} nodes",
        NODES[0],
        NODES[NODES.len() - 1]
    ));
    let service_rows: Vec<_> = service
        .iter()
        .map(|r| {
            json!({
                "nodes": r.nodes,
                "batch_chunks": r.batch_chunks,
                "cached_batches": r.cached_batches,
                "cached_us_per_batch": r.cached_per_batch.as_secs_f64() * 1e6,
                "cached_view_builds": r.cached_view_builds,
                "rebuilt_batches": r.rebuilt_batches,
                "rebuilt_us_per_batch": r.rebuilt_per_batch.as_secs_f64() * 1e6,
            })
        })
        .collect();
    let json_rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "nodes": r.nodes,
                "chunks": r.chunks,
                "placed": r.placed,
                "seconds": r.elapsed.as_secs_f64(),
                "ring_build_seconds": r.ring_build.as_secs_f64(),
                "chunks_per_s": r.chunks_per_sec,
            })
        })
        .collect();
    Ok(Section {
        name: "placement",
        json: json!({
            "runs": json_rows,
            "time_per_chunk_growth_100_to_10000_nodes": growth,
            "service": service_rows,
            "service_cached_growth_100_to_10000_nodes": cached_growth,
            "service_rebuilt_growth_100_to_10000_nodes": rebuilt_growth,
        }),
        text,
    })
}
