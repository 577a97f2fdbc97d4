//! Throughput of the client pipeline on one thread, without the network:
//! - `write`: FastCDC + keyed BLAKE3 id + zstd (sampled) + XChaCha20-Poly1305 + padding +
//!   Reed-Solomon 4+2 encode;
//! - `read`: Reed-Solomon decode with two packets lost + un-pad + decrypt + decompress +
//!   id verification.
//!
//! Mixed data like dependency-notes.md's: files from /usr/lib and /usr/share, with random
//! and zero runs mixed in. Run: `cargo bench -p gridback-fs --bench pipeline -- --quick`.

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gridback_fs::chunker::{Chunker, ChunkingParams};
use gridback_fs::compress::Level;
use gridback_fs::crypto::ChunkCrypto;
use gridback_fs::erasure::{self, ErasureParams, shard_bytes_for};
use gridback_fs::keys::ClientKeys;
use gridback_fs::packet;

/// Bytes of test data: big enough for ~24 default-sized chunks.
const DATA_BYTES: usize = 24 << 20;

fn collect_files(dir: &Path, out: &mut Vec<u8>, limit: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= limit {
            return;
        }
        if p.is_symlink() {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out, limit);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.extend_from_slice(&bytes[..bytes.len().min(limit - out.len())]);
        }
    }
}

/// About 70 % real files, 20 % random, 10 % zeros, in runs of 512 KiB.
fn mixed_data() -> Vec<u8> {
    let mut files = Vec::new();
    collect_files(Path::new("/usr/share"), &mut files, DATA_BYTES * 7 / 20);
    collect_files(Path::new("/usr/lib"), &mut files, DATA_BYTES * 7 / 10);
    let mut out = Vec::with_capacity(DATA_BYTES);
    let run = 512 << 10;
    let mut f = files.chunks(run).cycle();
    let mut i = 0;
    while out.len() < DATA_BYTES {
        match i % 10 {
            0 | 5 => {
                let mut r = vec![0u8; run];
                getrandom::fill(&mut r).expect("random");
                out.extend_from_slice(&r);
            }
            7 => out.extend(std::iter::repeat_n(0u8, run)),
            _ => out.extend_from_slice(f.next().unwrap_or(&[1u8; 4096])),
        }
        i += 1;
    }
    out.truncate(DATA_BYTES);
    out
}

struct Stored {
    id: gridback_proto::ChunkId,
    len: u32,
    params: ErasureParams,
    packets: Vec<Vec<u8>>,
}

fn write(data: &[u8], crypto: &ChunkCrypto) -> Vec<Stored> {
    let p = ChunkingParams::default();
    Chunker::new(data, p, crypto.cdc_seed())
        .map(|c| {
            let c = c.expect("in-memory read");
            let id = crypto.chunk_id(&c);
            let blob = packet::seal_chunk(crypto, Level::default(), &id, &c).expect("seal");
            let params =
                ErasureParams::new(4, 2, shard_bytes_for(blob.len(), 4) as u64).expect("params");
            let packets = erasure::encode(&blob, params).expect("encode");
            Stored {
                id,
                len: c.len() as u32,
                params,
                packets,
            }
        })
        .collect()
}

fn read(stored: &[Stored], crypto: &ChunkCrypto) -> usize {
    stored
        .iter()
        .map(|s| {
            // Packets 1 and 3 (data) are lost: parity has to be used.
            let have: Vec<(u8, &[u8])> = [0u8, 2, 4, 5]
                .iter()
                .map(|&i| (i, s.packets[usize::from(i)].as_slice()))
                .collect();
            let padded = erasure::decode(s.params, &have).expect("decode");
            packet::open_chunk(crypto, &s.id, &padded, Some(s.len))
                .expect("open")
                .len()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let data = mixed_data();
    let crypto = ChunkCrypto::new(&ClientKeys::generate().domain);
    let stored = write(&data, &crypto);
    let compressed: usize = stored.iter().map(|s| s.params.capacity()).sum();
    eprintln!(
        "mixed data: {} MiB in {} chunks; padded blobs / plaintext = {:.2}",
        data.len() >> 20,
        stored.len(),
        compressed as f64 / data.len() as f64
    );
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("write_cdc_id_zstd3_encrypt_rs4+2", |b| {
        b.iter(|| write(&data, &crypto))
    });
    g.bench_function("read_rs_decode_2lost_decrypt_verify", |b| {
        b.iter(|| assert_eq!(read(&stored, &crypto), data.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
