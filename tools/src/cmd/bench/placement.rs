//! The `placement` phase: how fast the coordinator places chunks as the grid grows, on
//! simulated grids of 100, 1,000 and 10,000 nodes (no processes, no network).

use anyhow::Result;
use gridback_coordinator::placement::bench_placement;
use serde_json::json;

use super::Section;

/// Grid sizes measured.
const NODES: [usize; 3] = [100, 1_000, 10_000];
/// Chunks placed on each.
const CHUNKS: usize = 100_000;

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
        json: json!({ "runs": json_rows, "time_per_chunk_growth_100_to_10000_nodes": growth }),
        text,
    })
}
