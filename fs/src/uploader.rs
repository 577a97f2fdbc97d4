//! The write path: streams → chunks → batches that span every concurrent store → dedup →
//! seal → packets → nodes → commit.
//!
//! ```text
//! store() ×N (blocking       collector task (async)                   committer task (async)
//! thread each)               one batch at a time:                     one batch at a time, in order:
//! read + FastCDC + id ──────▶ gather chunks of every store ──────────▶ AllocateChunks (1 round trip)
//!   (memory permits)         QueryChunks (1 round trip)               Reed-Solomon encode (CPU pool)
//!                            seal new chunks (CPU pool)               PutPackets: one request per node
//!                                                                     CommitChunks (1 round trip)
//!                                                                     → each store's ticket
//! ```
//!
//! **Batches span files.** Every `store` call (a file closed in the mount, a file of
//! `gridback backup`) hands its chunks to one shared engine, which cuts batches of up to
//! `batch_chunks` chunks or [`MAX_BATCH_BYTES`] across all of them. A small file is one
//! chunk: a batch of a few hundred of them costs one dedup query, one allocation, one commit
//! and one put request per node, instead of that many round trips per file. A batch is
//! closed when it is full, when the committer is idle (so a lone file is not held back), or
//! after [`BATCH_LINGER`] (so a trickle of files still moves). Chunks of one batch belong to
//! one snapshot (a chunk of another snapshot waits for the next batch), so each batch
//! commits with one request. Each `store` waits on its `ticket::Ticket` until all its
//! chunks are committed, and learns the first error any of them met.
//!
//! **Dedup across the pipeline.** A chunk already queried or uploaded by an earlier batch
//! that is not committed yet (two files with the same content written at once) is not
//! queried or uploaded again: it is committed as a reference after the batch that stores it,
//! because batches commit in order.
//!
//! **Bounded memory.** A chunk takes permits for its plaintext bytes from one budget of
//! [`UploadParams::memory_bytes`] before it enters the engine and gives them back when its
//! batch is done: readers of every store stall when the grid is slower than they are, so
//! backpressure reaches the writer. At most two batches exist at once (one being prepared,
//! one uploading). Sealing allocates one buffer per chunk with room for its parity
//! (`packet::seal_chunk_for`), each packet is a `Bytes` slice of it sent without a copy,
//! and buffers come back to a small pool (`pool`) when the last put of the chunk is
//! acknowledged.
//!
//! **Failures.** A node that fails a whole request, or one packet, gets its packets moved to
//! replacement targets (`ReplaceTargets`, then a single put), up to `MAX_PUT_ATTEMPTS`
//! targets per packet; such nodes are left out of allocations for `NODE_FAILURE_MEMORY`.
//! A chunk whose packets cannot all be placed fails its stores (and only them); the rest of
//! the batch is committed. A refusal of the whole batch (quota, suspended subscription, no
//! placement, coordinator unreachable) fails every store that had a chunk in it.

mod batch;
mod engine;
pub(crate) mod pool;
mod puts;
mod ticket;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gridback_proto::{ChunkId, NodeId};
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info_span};

use crate::chunker::{Chunker, ChunkingParams};
use crate::compress::Level;
use crate::config::{ClientConfig, ConfigError};
use crate::coord_client::CoordClient;
use crate::crypto::ChunkCrypto;
use crate::grid::{ChunkRef, GridError, StoredData};
use crate::node_client::NodeClient;
use gridback_proto::throttle::ResizableLimit;

use engine::Item;
use pool::BufferPool;
use ticket::Ticket;

/// Plaintext bytes per batch at most: large enough that a batch of small files amortises
/// its four round trips over hundreds of files, small enough that two batches (one
/// preparing, one uploading) and their packets stay well within the mount's memory budget.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Chunks per batch by default: a few hundred small files per coordinator round trip; the
/// coordinator takes up to 1,024 ids per request.
pub const DEFAULT_BATCH_CHUNKS: usize = 256;
/// Plaintext bytes the engine holds at once by default (all stores together): room for one
/// full batch being sealed and one uploading, with their packets (about 1.5 times the data
/// with 4 + 2 coding) inside the mount's 128 MiB.
pub const DEFAULT_MEMORY_BYTES: usize = 2 * MAX_BATCH_BYTES;
/// Longest a batch waits for more chunks while the committer is busy: a trickle of files
/// still moves at least this often, and a full batch never waits.
pub const BATCH_LINGER: Duration = Duration::from_millis(50);
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
    /// Put requests in flight (each to one node, with many packets).
    pub upload_concurrency: usize,
    /// Plaintext bytes in the engine at once, all stores together.
    pub memory_bytes: usize,
}

impl Default for UploadParams {
    fn default() -> Self {
        Self {
            chunking: ChunkingParams::default(),
            level: Level::default(),
            workers: crate::config::PipelineConfig::default().effective_workers(),
            batch_chunks: DEFAULT_BATCH_CHUNKS,
            upload_concurrency: 24,
            memory_bytes: DEFAULT_MEMORY_BYTES,
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
            memory_bytes: cfg.pipeline.upload_memory_bytes()?,
        })
    }

    /// The memory budget, never smaller than one largest chunk (else it could never be met).
    fn memory_permits(&self) -> usize {
        self.memory_bytes
            .max(self.chunking.max() as usize)
            .min(Semaphore::MAX_PERMITS)
    }
}

/// State the engine's tasks share with the uploader.
#[derive(Debug)]
pub(crate) struct Shared {
    coord: CoordClient,
    nodes: NodeClient,
    crypto: Arc<ChunkCrypto>,
    params: UploadParams,
    /// Bounds the CPU stages (sealing, erasure coding): the coordinator's `threads` limit,
    /// else `workers`; resized live by the terms poller.
    cpu: ResizableLimit,
    /// Nodes that failed a put recently, left out of allocations.
    failed_nodes: Mutex<HashMap<NodeId, Instant>>,
    /// `k << 8 | m` of the last allocation (0: none yet): sealing reserves room for that many
    /// packets in the chunk's buffer, so erasure coding fills it in place.
    erasure_hint: AtomicU16,
    /// Reused chunk-sized buffers (read blocks, sealed chunks); see [`pool`].
    pool: Arc<BufferPool>,
    /// Plaintext bytes admitted into the engine (see the module doc).
    memory: Arc<Semaphore>,
    /// Chunks being uploaded by a batch that is not committed yet, with the batch's number.
    inflight: Mutex<HashMap<ChunkId, u64>>,
    /// Stores reading and cutting at once (each on a blocking thread; see [`MAX_READERS`]).
    readers: Arc<Semaphore>,
}

impl Shared {
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

/// The write pipeline of one client, shared by every concurrent store.
#[derive(Debug)]
pub struct Uploader {
    shared: Arc<Shared>,
    /// The engine's input, started by the first store (it needs a runtime); the engine's
    /// tasks end when the uploader is dropped and their queues drain.
    engine: OnceLock<mpsc::Sender<Item>>,
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
        let memory = Arc::new(Semaphore::new(params.memory_permits()));
        Self {
            shared: Arc::new(Shared {
                coord,
                nodes,
                crypto,
                params,
                cpu,
                failed_nodes: Mutex::default(),
                erasure_hint: AtomicU16::new(0),
                pool: BufferPool::new(pool::POOL_MAX_IDLE_BYTES),
                memory,
                inflight: Mutex::default(),
                readers: Arc::new(Semaphore::new(MAX_READERS)),
            }),
            engine: OnceLock::new(),
        }
    }

    fn engine(&self) -> mpsc::Sender<Item> {
        self.engine
            .get_or_init(|| engine::spawn(self.shared.clone()))
            .clone()
    }

    /// Bytes of plaintext the engine holds now (admitted, not yet committed).
    pub fn bytes_in_flight(&self) -> usize {
        let s = &self.shared;
        s.params
            .memory_permits()
            .saturating_sub(s.memory.available_permits())
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
        let ticket = Arc::new(Ticket::new(snapshot.to_string()));
        let tx = self.engine();
        let shared = self.shared.clone();
        let t = ticket.clone();
        let rt = tokio::runtime::Handle::current();
        // A reader waits for memory on its blocking thread; the batches that give memory
        // back need blocking threads too (sealing). Bounding the readers keeps threads for
        // them whatever the number of concurrent stores.
        let reading = shared
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GridError::Internal("the upload engine stopped".into()))?;
        let chunker = tokio::task::spawn_blocking(move || {
            let r = submit(&shared, reader, &t, &tx, &rt);
            drop(reading);
            r
        });
        let submitted = chunker
            .await
            .map_err(|e| GridError::Internal(format!("chunker thread: {e}")));
        ticket.close();
        let (chunks, len) = match submitted {
            Ok(Ok(x)) => x,
            Ok(Err(e)) | Err(e) => return Err(e),
        };
        let stats = ticket.wait().await?;
        let mut out = StoredData {
            chunks,
            len,
            ..StoredData::default()
        };
        stats.add_to(&mut out);
        debug!(
            chunks = out.chunks.len(),
            new_chunks = out.new_chunks,
            bytes = out.len,
            uploaded = out.uploaded_bytes,
            "stored stream"
        );
        Ok(out)
    }
}

/// Stores whose reader thread runs at once. Each blocks a thread of tokio's blocking pool
/// (16 in the `gridback` binary) while it waits for memory; the rest of the pool must stay
/// free for sealing and erasure coding, or many concurrent stores (the write-back uploads of
/// a `cp -a`) would hold every thread while waiting for batches that cannot be sealed.
pub const MAX_READERS: usize = 4;

/// Body of a store's blocking thread: read, cut, identify, and hand each chunk to the engine
/// once it has memory for it. Returns the stream's chunk list and length.
fn submit(
    shared: &Shared,
    reader: Box<dyn Read + Send>,
    ticket: &Arc<Ticket>,
    tx: &mpsc::Sender<Item>,
    rt: &tokio::runtime::Handle,
) -> Result<(Vec<ChunkRef>, u64), GridError> {
    let gone = || GridError::Internal("the upload engine stopped".into());
    let chunker = Chunker::new(reader, shared.params.chunking, shared.crypto.cdc_seed())
        .with_pool(shared.pool.clone());
    let mut refs = Vec::new();
    let mut len = 0u64;
    for chunk in chunker {
        let data = chunk.map_err(GridError::Source)?;
        if ticket.failed() {
            // An earlier chunk failed: the store fails anyway, stop reading.
            break;
        }
        let cost = u32::try_from(data.len()).map_err(|_| gone())?;
        let permit = rt
            .block_on(shared.memory.clone().acquire_many_owned(cost))
            .map_err(|_| gone())?;
        let id = shared.crypto.chunk_id(&data);
        refs.push(ChunkRef { id, len: cost });
        len += u64::from(cost);
        ticket.add();
        let item = Item {
            id,
            data,
            ticket: ticket.clone(),
            _memory: permit,
        };
        if tx.blocking_send(item).is_err() {
            ticket.finish(Err(&gone()));
            return Err(gone());
        }
    }
    Ok((refs, len))
}
