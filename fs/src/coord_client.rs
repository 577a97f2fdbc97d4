//! Typed calls to the coordinator over the shared connection pool: one QUIC connection, one
//! stream per request, a deadline on each call, and batches split at
//! [`MAX_BATCH_CHUNKS`].

use std::time::Duration;

use gridback_proto::coord_api::{
    AllocateChunks, Allocation, ChunkAlloc, ChunkCommit, ChunkLocation, ClientHello, ClientPoll,
    ClientWelcome, CommitChunks, Committed, CoordRequest, LocateChunks, MAX_BATCH_CHUNKS,
    QueryChunks, ReplaceTargets, SnapshotCreate, SnapshotGet, SnapshotInfo, SnapshotList,
    SnapshotRecord, SnapshotSeal, Target, TreeChunk,
};
use gridback_proto::subscription::ClientTerms;
use gridback_proto::tls::COORDINATOR_SERVER_NAME;
use gridback_proto::transport::{CallError, ConnPool, DEFAULT_CALL_TIMEOUT};
use gridback_proto::{ChunkId, ErrorCode, Location, NodeId, Rpc};
use tracing::debug;

use crate::grid::GridError;

/// A client of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordClient {
    pool: ConnPool,
    addr: String,
    timeout: Duration,
}

impl CoordClient {
    /// Calls go to `addr` through `pool`, each with the default deadline.
    pub fn new(pool: ConnPool, addr: impl Into<String>) -> Self {
        Self {
            pool,
            addr: addr.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Change the per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The coordinator's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The pool (shared with the node client).
    pub fn pool(&self) -> &ConnPool {
        &self.pool
    }

    /// One typed call.
    pub async fn call<R: Rpc<Envelope = CoordRequest>>(
        &self,
        req: R,
    ) -> Result<R::Response, CallError> {
        debug!(rpc = R::NAME, coordinator = %self.addr, "coordinator call");
        self.pool
            .call(&self.addr, COORDINATOR_SERVER_NAME, req, self.timeout)
            .await
    }

    /// Greet the coordinator, registering this client's `location`.
    pub async fn hello(
        &self,
        purpose: &str,
        location: Location,
    ) -> Result<ClientWelcome, CallError> {
        self.call(ClientHello {
            pid: std::process::id(),
            purpose: purpose.to_string(),
            location,
        })
        .await
    }

    /// This client's current terms (subscription, limits, usage).
    pub async fn poll(&self) -> Result<ClientTerms, CallError> {
        self.call(ClientPoll).await
    }

    /// Which of `ids` are stored already (one flag per id).
    pub async fn query_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, CallError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_BATCH_CHUNKS) {
            let r = self.call(QueryChunks { ids: part.to_vec() }).await?;
            out.extend(answer_len(
                r.present,
                part.len(),
                &self.addr,
                QueryChunks::NAME,
            )?);
        }
        Ok(out)
    }

    /// Sequences and put orders for new chunks, in request order.
    pub async fn allocate(
        &self,
        chunks: Vec<ChunkAlloc>,
        exclude: Vec<NodeId>,
    ) -> Result<Vec<Allocation>, CallError> {
        let mut out = Vec::with_capacity(chunks.len());
        for part in chunks.chunks(MAX_BATCH_CHUNKS) {
            let r = self
                .call(AllocateChunks {
                    chunks: part.to_vec(),
                    exclude: exclude.clone(),
                })
                .await?;
            out.extend(answer_len(
                r.chunks,
                part.len(),
                &self.addr,
                AllocateChunks::NAME,
            )?);
        }
        Ok(out)
    }

    /// New targets for packets whose upload failed (one per index).
    pub async fn replace_targets(&self, req: ReplaceTargets) -> Result<Vec<Target>, CallError> {
        let n = req.indices.len();
        let r = self.call(req).await?;
        answer_len(r.targets, n, &self.addr, ReplaceTargets::NAME)
    }

    /// Record uploaded chunks and references, split into allowed batch sizes.
    pub async fn commit(
        &self,
        snapshot: &str,
        chunks: Vec<ChunkCommit>,
        refs: Vec<ChunkId>,
    ) -> Result<Committed, CallError> {
        let mut total = Committed {
            stored: 0,
            already_stored: 0,
            referenced: 0,
        };
        let mut chunks = chunks.into_iter().peekable();
        let mut refs = refs.into_iter().peekable();
        while chunks.peek().is_some() || refs.peek().is_some() {
            let c: Vec<ChunkCommit> = chunks.by_ref().take(MAX_BATCH_CHUNKS).collect();
            let r: Vec<ChunkId> = refs.by_ref().take(MAX_BATCH_CHUNKS - c.len()).collect();
            let done = self
                .call(CommitChunks {
                    snapshot: snapshot.to_string(),
                    chunks: c,
                    refs: r,
                })
                .await?;
            total.stored += done.stored;
            total.already_stored += done.already_stored;
            total.referenced += done.referenced;
        }
        Ok(total)
    }

    /// Where chunks are (None for unknown ids), in request order.
    pub async fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLocation>>, CallError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_BATCH_CHUNKS) {
            let r = self.call(LocateChunks { ids: part.to_vec() }).await?;
            out.extend(answer_len(
                r.chunks,
                part.len(),
                &self.addr,
                LocateChunks::NAME,
            )?);
        }
        Ok(out)
    }

    /// Open a snapshot.
    pub async fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> Result<SnapshotInfo, GridError> {
        let what = name.clone();
        self.call(SnapshotCreate { name, from })
            .await
            .map_err(|e| snapshot_error(e, &what))
    }

    /// This client's snapshots.
    pub async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>, GridError> {
        Ok(self
            .call(SnapshotList)
            .await
            .map_err(|e| snapshot_error(e, ""))?
            .snapshots)
    }

    /// Seal a snapshot.
    pub async fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> Result<SnapshotInfo, GridError> {
        let what = name.clone();
        self.call(SnapshotSeal {
            name,
            tree,
            tree_bytes,
        })
        .await
        .map_err(|e| snapshot_error(e, &what))
    }

    /// One snapshot's record.
    pub async fn snapshot_get(&self, name: String) -> Result<SnapshotRecord, GridError> {
        let what = name.clone();
        self.call(SnapshotGet { name })
            .await
            .map_err(|e| snapshot_error(e, &what))
    }
}

/// A batched answer must have one entry per request entry.
fn answer_len<T>(
    v: Vec<T>,
    want: usize,
    addr: &str,
    rpc: &'static str,
) -> Result<Vec<T>, CallError> {
    if v.len() == want {
        Ok(v)
    } else {
        Err(CallError::Io {
            addr: addr.to_string(),
            reason: format!("{rpc} answered {} entries for {want}", v.len()),
        })
    }
}

/// Map a failed coordinator call to the caller's decision. `chunk` names the chunk concerned,
/// when there is one.
pub fn grid_error(e: CallError, chunk: Option<ChunkId>) -> GridError {
    let chunk_name = || {
        chunk
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "-".into())
    };
    match &e {
        CallError::Remote { error, .. } => match error.code {
            ErrorCode::NoPlacement => GridError::NoPlacement {
                chunk: chunk_name(),
                reason: error.message.clone(),
            },
            ErrorCode::QuotaExceeded => GridError::QuotaExceeded(error.message.clone()),
            ErrorCode::Suspended => GridError::Suspended(error.message.clone()),
            ErrorCode::Conflict => GridError::Conflict(error.message.clone()),
            _ => GridError::Coordinator(e.to_string()),
        },
        _ => GridError::Coordinator(e.to_string()),
    }
}

fn snapshot_error(e: CallError, name: &str) -> GridError {
    match e.code() {
        Some(ErrorCode::NotFound) => GridError::NoSuchSnapshot(name.to_string()),
        _ => grid_error(e, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridback_proto::WireError;

    fn remote(code: ErrorCode) -> CallError {
        CallError::Remote {
            addr: "c".into(),
            rpc: "x",
            error: WireError::new(code, "why"),
        }
    }

    #[test]
    fn coordinator_errors_map_to_decisions() {
        let id = ChunkId([1; 32]);
        assert!(matches!(
            grid_error(remote(ErrorCode::NoPlacement), Some(id)),
            GridError::NoPlacement { ref reason, .. } if reason == "why"
        ));
        assert!(matches!(
            grid_error(remote(ErrorCode::QuotaExceeded), None),
            GridError::QuotaExceeded(_)
        ));
        assert!(matches!(
            grid_error(remote(ErrorCode::Suspended), None),
            GridError::Suspended(_)
        ));
        assert!(matches!(
            grid_error(remote(ErrorCode::Internal), None),
            GridError::Coordinator(_)
        ));
        assert!(matches!(
            snapshot_error(remote(ErrorCode::NotFound), "s"),
            GridError::NoSuchSnapshot(ref n) if n == "s"
        ));
        assert!(matches!(
            snapshot_error(remote(ErrorCode::Conflict), "s"),
            GridError::Conflict(_)
        ));
        let io = CallError::Io {
            addr: "c".into(),
            reason: "gone".into(),
        };
        assert!(matches!(grid_error(io, None), GridError::Coordinator(_)));
        assert!(answer_len(vec![1, 2], 3, "c", "q").is_err());
    }
}
