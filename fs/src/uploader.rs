//! The write path: stream → chunks → batched dedup → seal → packets → nodes → commit.
//!
//! ```text
//! blocking thread        driver task (async)                          CPU pool (spawn_blocking)
//! read + FastCDC + id ─▶ QueryChunks (1 round trip per batch) ─────▶ compress, encrypt, pad
//!   (batch permits)      AllocateChunks (1 round trip) ─────────────▶ Reed-Solomon encode
//!                        PutPacket × (k+m) per chunk, parallel, bounded; ReplaceTargets on failure
//!                        CommitChunks (1 round trip)
//! ```
//!
//! **Bounded memory.** A batch holds at most `batch_chunks` chunks and [`MAX_BATCH_BYTES`] of
//! plaintext. The chunker must take one of [`BATCHES_IN_MEMORY`] permits before it starts a
//! batch, and the permit is released only when the batch is committed (or dropped), so at most
//! that many batches exist at once: one being chunked, one being sealed, one uploading. Slow
//! nodes therefore stall the reader of the source stream: backpressure reaches the writer.
//!
//! **Copies.** A chunk is a slice of the chunker's read block (no copy). Sealing allocates one
//! buffer per chunk, sized once for the padded blob plus the erasure zero fill and parity
//! (`packet::seal_chunk_for`): the body is compressed into a per-thread scratch (or copied)
//! into it, encrypted in place and padded in place, and `erasure::encode_in_place` appends
//! the parity. Each packet is a `Bytes` slice of that buffer, sent as frame head + slice
//! (quinn keeps a reference, no frame copy), and the buffer is freed when the chunk's last
//! put is acknowledged. So a batch costs its plaintext while it is sealed and about
//! (k + m) / k × its sealed size while it uploads, and nothing grows with the stream.
//!
//! **Pipelining.** While batch N uploads, batch N+1 is queried and sealed. Batches commit in
//! order, so a chunk first seen in batch N can be a plain reference in batch N+1.

mod batch;
pub(crate) mod pool;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use gridback_proto::NodeId;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info_span};

use crate::chunker::{Chunker, ChunkingParams};
use crate::compress::Level;
use crate::config::{ClientConfig, ConfigError};
use crate::coord_client::CoordClient;
use crate::crypto::ChunkCrypto;
use crate::grid::{GridError, StoredData};
use crate::node_client::NodeClient;
use gridback_proto::throttle::ResizableLimit;

use batch::{BatchOutcome, chunk_stream};
use pool::BufferPool;

/// Plaintext bytes per batch at most: with the default 1 MiB chunks this is the 32-chunk
/// batch; it stops a batch of 4 MiB chunks from holding 128 MiB.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Batches in memory at once (chunking, sealing, uploading); see the module doc.
pub const BATCHES_IN_MEMORY: usize = 3;
/// Targets tried for one packet before the upload gives up.
const MAX_PUT_ATTEMPTS: usize = 6;
/// How long a node that failed a put is left out of new allocations: long enough to skip it
/// for the rest of a typical copy, short enough that a restarted node is used again soon.
const NODE_FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Parameters of the write pipeline.
#[derive(Debug, Clone)]
pub struct UploadParams {
    /// Chunk sizes.
    pub chunking: ChunkingParams,
    /// zstd level.
    pub level: Level,
    /// CPU workers for sealing and encoding.
    pub workers: usize,
    /// Chunks per batch.
    pub batch_chunks: usize,
    /// Packet puts in flight.
    pub upload_concurrency: usize,
}

impl Default for UploadParams {
    fn default() -> Self {
        Self {
            chunking: ChunkingParams::default(),
            level: Level::default(),
            workers: crate::config::PipelineConfig::default().effective_workers(),
            batch_chunks: 32,
            upload_concurrency: 24,
        }
    }
}

impl UploadParams {
    /// From the client configuration.
    pub fn from_config(cfg: &ClientConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            chunking: cfg.chunking_params()?,
            level: cfg.compression_level()?,
            workers: cfg.pipeline.effective_workers(),
            batch_chunks: cfg.pipeline.batch_chunks,
            upload_concurrency: cfg.pipeline.upload_concurrency,
        })
    }
}

/// The write pipeline of one client (shared by every concurrent store).
#[derive(Debug)]
pub struct Uploader {
    coord: CoordClient,
    nodes: NodeClient,
    crypto: Arc<ChunkCrypto>,
    params: UploadParams,
    /// Bounds the CPU stages (sealing, erasure coding) over all concurrent stores: the
    /// coordinator's `threads` limit, else `workers`; resized live by the terms poller.
    cpu: ResizableLimit,
    /// Nodes that failed a put recently, left out of allocations.
    failed_nodes: Mutex<HashMap<NodeId, Instant>>,
    /// `k << 8 | m` of the last allocation (0: none yet): sealing reserves room for that many
    /// packets in the chunk's buffer, so erasure coding fills it in place.
    erasure_hint: AtomicU16,
    /// Reused chunk-sized buffers (read blocks, sealed chunks); see [`pool`].
    pool: Arc<BufferPool>,
}

/// Closes the batch semaphore when the store ends, so a chunker waiting for a permit stops.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Uploader {
    /// A pipeline over the given clients, with `params.workers` CPU workers.
    pub fn new(
        coord: CoordClient,
        nodes: NodeClient,
        crypto: Arc<ChunkCrypto>,
        params: UploadParams,
    ) -> Self {
        let cpu = ResizableLimit::new(Some(params.workers.max(1)));
        Self::with_cpu_limit(coord, nodes, crypto, params, cpu)
    }

    /// A pipeline whose CPU stages are bounded by `cpu` (shared, resizable while running:
    /// see [`crate::terms::LiveLimits::threads`]).
    pub fn with_cpu_limit(
        coord: CoordClient,
        nodes: NodeClient,
        crypto: Arc<ChunkCrypto>,
        params: UploadParams,
        cpu: ResizableLimit,
    ) -> Self {
        Self {
            coord,
            nodes,
            crypto,
            params,
            cpu,
            failed_nodes: Mutex::default(),
            erasure_hint: AtomicU16::new(0),
            pool: BufferPool::new(pool::POOL_MAX_IDLE_BYTES),
        }
    }

    /// Store everything `reader` yields on behalf of `snapshot`. Returns once every chunk is
    /// durable on its nodes and committed at the coordinator.
    pub async fn store(
        &self,
        snapshot: &str,
        reader: Box<dyn Read + Send>,
    ) -> Result<StoredData, GridError> {
        let span = info_span!("store", snapshot = %snapshot);
        self.store_inner(snapshot, reader).instrument(span).await
    }

    async fn store_inner(
        &self,
        snapshot: &str,
        reader: Box<dyn Read + Send>,
    ) -> Result<StoredData, GridError> {
        let permits = Arc::new(Semaphore::new(BATCHES_IN_MEMORY));
        let _close = CloseOnDrop(permits.clone());
        // Depth 1: the permits, not the channel, bound memory; one slot lets the chunker run
        // ahead by a batch.
        let (tx, mut rx) = mpsc::channel(1);
        let (crypto, chunking, batch_chunks) = (
            self.crypto.clone(),
            self.params.chunking,
            self.params.batch_chunks.max(1),
        );
        let rt = tokio::runtime::Handle::current();
        let pool = self.pool.clone();
        let chunker = tokio::task::spawn_blocking(move || {
            let chunker = Chunker::new(reader, chunking, crypto.cdc_seed()).with_pool(pool);
            chunk_stream(chunker, &crypto, batch_chunks, &permits, &tx, &rt)
        });

        let mut out = StoredData::default();
        let mut seen = HashSet::new();
        let mut uploading: Option<BoxFuture<'_, Result<BatchOutcome, GridError>>> = None;
        loop {
            let next = async {
                match rx.recv().await {
                    None => Ok(None),
                    Some(Err(e)) => Err(e),
                    Some(Ok(raw)) => self.prepare(raw, &mut seen).await.map(Some),
                }
            };
            let (prepared, done) = match uploading.take() {
                Some(up) => {
                    let (p, d) = tokio::join!(next, up);
                    (p, Some(d))
                }
                None => (next.await, None),
            };
            if let Some(done) = done {
                done?.add_to(&mut out);
            }
            let Some(batch) = prepared? else { break };
            out.len += batch.refs.iter().map(|r| u64::from(r.len)).sum::<u64>();
            out.chunks.extend_from_slice(&batch.refs);
            uploading = Some(Box::pin(self.upload_batch(snapshot, batch)));
        }
        chunker
            .await
            .map_err(|e| GridError::Internal(format!("chunker thread: {e}")))?;
        debug!(
            chunks = out.chunks.len(),
            new_chunks = out.new_chunks,
            bytes = out.len,
            uploaded = out.uploaded_bytes,
            "stored stream"
        );
        Ok(out)
    }

    fn note_failure(&self, node: NodeId) {
        let mut f = self.failed_nodes.lock().unwrap_or_else(|p| p.into_inner());
        f.insert(node, Instant::now());
    }

    fn note_erasure(&self, k: u8, m: u8) {
        self.erasure_hint
            .store(u16::from(k) << 8 | u16::from(m), Ordering::Relaxed);
    }

    fn erasure_hint(&self) -> Option<(u8, u8)> {
        let [k, m] = self.erasure_hint.load(Ordering::Relaxed).to_be_bytes();
        (k > 0).then_some((k, m))
    }

    fn recent_failures(&self) -> Vec<NodeId> {
        let mut f = self.failed_nodes.lock().unwrap_or_else(|p| p.into_inner());
        f.retain(|_, at| at.elapsed() < NODE_FAILURE_MEMORY);
        f.keys().copied().collect()
    }
}
