//! Placement cost as the grid grows: 1,000 chunks (4+2 packets, packet proximity min 2,
//! backup proximity min 1) on 100, 1,000 and 10,000 simulated nodes. The per-chunk cost
//! should stay nearly flat: the ring is built once per membership and each chunk walks only a
//! few ring points.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gridback_coordinator::bench_placement;

fn placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement");
    g.sample_size(10);
    let chunks = 1000;
    for nodes in [100usize, 1000, 10_000] {
        g.throughput(Throughput::Elements(chunks as u64));
        g.bench_with_input(BenchmarkId::from_parameter(nodes), &nodes, |b, &n| {
            b.iter(|| bench_placement(n, chunks));
        });
    }
    g.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
