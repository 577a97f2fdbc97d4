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
//! **Pipelining.** While batch N uploads, batch N+1 is queried and sealed. Batches commit in
//! order, so a chunk first seen in batch N can be a plain reference in batch N+1.

mod batch;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use gridback_proto::NodeId;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info_span};

use crate::chunker::ChunkingParams;
use crate::compress::Level;
use crate::config::{ClientConfig, ConfigError};
use crate::coord_client::CoordClient;
use crate::crypto::ChunkCrypto;
use crate::grid::{GridError, StoredData};
use crate::node_client::NodeClient;

use batch::{BatchOutcome, chunk_stream};

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
    /// Bounds the CPU stages over all concurrent stores.
    cpu: Arc<Semaphore>,
    /// Nodes that failed a put recently, left out of allocations.
    failed_nodes: Mutex<HashMap<NodeId, Instant>>,
}

/// Closes the batch semaphore when the store ends, so a chunker waiting for a permit stops.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Uploader {
    /// A pipeline over the given clients.
    pub fn new(
        coord: CoordClient,
        nodes: NodeClient,
        crypto: Arc<ChunkCrypto>,
        params: UploadParams,
    ) -> Self {
        let cpu = Arc::new(Semaphore::new(params.workers.max(1)));
        Self {
            coord,
            nodes,
            crypto,
            params,
            cpu,
            failed_nodes: Mutex::default(),
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
        let chunker = tokio::task::spawn_blocking(move || {
            chunk_stream(reader, chunking, &crypto, batch_chunks, &permits, &tx, &rt)
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

    fn recent_failures(&self) -> Vec<NodeId> {
        let mut f = self.failed_nodes.lock().unwrap_or_else(|p| p.into_inner());
        f.retain(|_, at| at.elapsed() < NODE_FAILURE_MEMORY);
        f.keys().copied().collect()
    }
}
