//! The boundary between the filesystem core and the grid: everything `FsCore` needs from the
//! rest of the system, as one object-safe trait. [`crate::client::GridClient`] is the real
//! implementation (QUIC to the coordinator and the nodes); [`crate::testing::MemGrid`] keeps
//! everything in memory for model-based tests of the core.

use std::io::Read;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use gridback_proto::ChunkId;
use gridback_proto::coord_api::{SnapshotInfo, SnapshotRecord, TreeChunk};
use gridback_proto::subscription::{ClientTerms, SubscriptionState};
use serde::{Deserialize, Serialize};

/// A file's content is a list of these, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's unique data identifier.
    pub id: ChunkId,
    /// Plaintext length of the chunk.
    pub len: u32,
}

/// Result of storing a stream of bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredData {
    /// The chunks, in order; their lengths add up to `len`.
    pub chunks: Vec<ChunkRef>,
    /// Total plaintext bytes.
    pub len: u64,
    /// Chunks that were uploaded (not stored before).
    pub new_chunks: u64,
    /// Plaintext bytes of the uploaded chunks.
    pub new_bytes: u64,
    /// Bytes sent to nodes (packets, parity included).
    pub uploaded_bytes: u64,
}

/// Failures of grid operations, each a decision for the caller (and an errno for FUSE).
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// No placement satisfies the rules and capacities (ENOSPC).
    #[error("no placement for chunk {chunk}: {reason}")]
    NoPlacement {
        /// Chunk that could not be placed (short hex), or "-".
        chunk: String,
        /// Which constraint failed.
        reason: String,
    },
    /// The client's quota would be exceeded (EDQUOT).
    #[error("storage quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The subscription forbids writes (EACCES).
    #[error("subscription does not allow writes: {0}")]
    Suspended(String),
    /// A chunk could not be read back intact from any k packets (EIO).
    #[error("chunk {chunk} unavailable: {reason}")]
    ChunkUnavailable {
        /// Chunk.
        chunk: ChunkId,
        /// Why (nodes down, corrupt packets…).
        reason: String,
    },
    /// The upload could not find enough live targets (EIO).
    #[error("upload of chunk {chunk} failed: {reason}")]
    UploadFailed {
        /// Chunk.
        chunk: ChunkId,
        /// Why.
        reason: String,
    },
    /// The named snapshot does not exist (ENOENT).
    #[error("snapshot {0:?} does not exist")]
    NoSuchSnapshot(String),
    /// The snapshot exists already or is in the wrong state (EEXIST / EROFS).
    #[error("snapshot conflict: {0}")]
    Conflict(String),
    /// The coordinator could not be reached or failed (EIO).
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// Reading the source stream failed (EIO).
    #[error("reading source data: {0}")]
    Source(#[source] std::io::Error),
    /// A local failure (EIO).
    #[error("internal: {0}")]
    Internal(String),
}

impl GridError {
    /// The same error again, for each of many callers that one failure concerns (a batch
    /// carries chunks of many files): an I/O cause is carried over by kind and message.
    pub fn duplicate(&self) -> GridError {
        match self {
            GridError::NoPlacement { chunk, reason } => GridError::NoPlacement {
                chunk: chunk.clone(),
                reason: reason.clone(),
            },
            GridError::QuotaExceeded(m) => GridError::QuotaExceeded(m.clone()),
            GridError::Suspended(m) => GridError::Suspended(m.clone()),
            GridError::ChunkUnavailable { chunk, reason } => GridError::ChunkUnavailable {
                chunk: *chunk,
                reason: reason.clone(),
            },
            GridError::UploadFailed { chunk, reason } => GridError::UploadFailed {
                chunk: *chunk,
                reason: reason.clone(),
            },
            GridError::NoSuchSnapshot(m) => GridError::NoSuchSnapshot(m.clone()),
            GridError::Conflict(m) => GridError::Conflict(m.clone()),
            GridError::Coordinator(m) => GridError::Coordinator(m.clone()),
            GridError::Source(e) => GridError::Source(std::io::Error::new(e.kind(), e.to_string())),
            GridError::Internal(m) => GridError::Internal(m.clone()),
        }
    }

    /// The errno a FUSE caller sees.
    pub fn errno(&self) -> i32 {
        match self {
            GridError::NoPlacement { .. } => libc::ENOSPC,
            GridError::QuotaExceeded(_) => libc::EDQUOT,
            GridError::Suspended(_) => libc::EACCES,
            GridError::ChunkUnavailable { .. } => libc::EIO,
            GridError::UploadFailed { .. } => libc::EIO,
            GridError::NoSuchSnapshot(_) => libc::ENOENT,
            GridError::Conflict(_) => libc::EEXIST,
            GridError::Coordinator(_) => libc::EIO,
            GridError::Source(_) => libc::EIO,
            GridError::Internal(_) => libc::EIO,
        }
    }
}

/// What the filesystem core needs from the grid.
pub trait Grid: Send + Sync + 'static {
    /// Chunk, deduplicate, compress, encrypt, erasure-code and upload everything `reader`
    /// yields, on behalf of `snapshot`. When this returns `Ok`, every chunk is durable on
    /// enough nodes to survive the loss of m of them and committed at the coordinator.
    /// Memory use is bounded whatever the stream's length.
    fn store_reader(
        &self,
        snapshot: String,
        reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>>;

    /// Fetch, decode, decrypt, decompress and verify one chunk.
    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>>;

    /// Look up where `chunks` are, in as few round trips as possible, so that reading them
    /// soon after needs none (the files of a directory being browsed, a restore ahead of its
    /// small files). Best effort: a failure is only logged, and a read locates whatever is
    /// still unknown. The default does nothing (grids without locations).
    fn prefetch_locations<'a>(&'a self, chunks: &'a [ChunkId]) -> BoxFuture<'a, ()> {
        let _ = chunks;
        futures::future::ready(()).boxed()
    }

    /// Open a snapshot at the coordinator.
    fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>>;

    /// This client's snapshots.
    fn snapshot_list(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>, GridError>>;

    /// Seal a snapshot with its (already encrypted and stored) tree.
    fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>>;

    /// One snapshot's record.
    fn snapshot_get(&self, name: String) -> BoxFuture<'_, Result<SnapshotRecord, GridError>>;

    /// The client's latest terms (quota and usage for statfs); `None` when the grid has no
    /// subscriptions (in-memory test grids).
    fn terms(&self) -> Option<ClientTerms> {
        None
    }

    /// The subscription state of the latest terms (checked before every change the
    /// filesystem makes); `None` when the grid has no subscriptions.
    fn subscription_state(&self) -> Option<SubscriptionState> {
        self.terms().map(|t| t.state)
    }
}
