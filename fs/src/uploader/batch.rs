//! The stages of one batch: preparing (dedup against the pipeline and the coordinator,
//! sealing new chunks on the CPU pool) and uploading (allocation, erasure coding, packet puts,
//! commit), and telling each store's ticket how its chunks fared.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use bytes::Bytes;
use gridback_proto::ChunkId;
use gridback_proto::coord_api::{Allocation, ChunkAlloc, ChunkCommit};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use super::Shared;
use super::engine::Item;
use super::puts::ChunkUpload;
use super::ticket::{Ticket, TicketStats};
use crate::coord_client::grid_error;
use crate::erasure::{self, ErasureParams};
use crate::grid::GridError;
use crate::packet;

/// Plaintext sealed by one CPU task at least: small chunks are sealed a group at a time so
/// that a batch of hundreds of small files costs a few task hand-offs, not hundreds.
const SEAL_GROUP_BYTES: usize = 2 * 1024 * 1024;

/// A chunk of the batch before sealing; `tickets` has one entry per copy of it in the batch
/// (each copy counted once in its store's ticket).
struct Pending {
    id: ChunkId,
    data: Bytes,
    tickets: Vec<Arc<Ticket>>,
    memory: Vec<OwnedSemaphorePermit>,
}

/// A chunk the grid does not have yet, sealed.
pub(super) struct NewChunk {
    id: ChunkId,
    len: u32,
    blob: Vec<u8>,
    /// Stores waiting for it; the first one is charged its upload in the stats.
    tickets: Vec<Arc<Ticket>>,
    _memory: Vec<OwnedSemaphorePermit>,
}

/// A chunk the grid has (or an earlier batch is storing): committed as a reference.
pub(super) struct RefChunk {
    id: ChunkId,
    tickets: Vec<Arc<Ticket>>,
    _memory: Vec<OwnedSemaphorePermit>,
}

/// A batch ready to upload.
pub(super) struct PreparedBatch {
    /// Its number (batches commit in this order).
    pub(super) seq: u64,
    snapshot: String,
    new: Vec<NewChunk>,
    refs: Vec<RefChunk>,
}

/// Where a chunk id of the batch went while deduplicating.
enum Fate {
    /// `pending[i]`: not known yet.
    Pending(usize),
    /// `refs[i]`: stored or being stored by an earlier batch.
    Ref(usize),
}

fn join_error(e: tokio::task::JoinError) -> GridError {
    GridError::Internal(format!("worker task failed: {e}"))
}

/// Tell every store of a failed batch.
fn fail_all(tickets: &[Arc<Ticket>], e: &GridError) {
    for t in tickets {
        t.finish(Err(e));
    }
}

impl Shared {
    /// Dedup (within the batch, against batches in flight, then one `QueryChunks`) and seal
    /// the new chunks. On failure every store with a chunk in the batch is told and `None`
    /// returned.
    pub(super) async fn prepare(&self, seq: u64, items: Vec<Item>) -> Option<PreparedBatch> {
        let snapshot = items[0].ticket.snapshot.clone();
        let all: Vec<Arc<Ticket>> = items.iter().map(|i| i.ticket.clone()).collect();
        let mut fate: HashMap<ChunkId, Fate> = HashMap::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut refs: Vec<RefChunk> = Vec::new();
        {
            let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for Item {
                id,
                data,
                ticket,
                _memory,
            } in items
            {
                match fate.entry(id) {
                    Entry::Occupied(e) => match *e.get() {
                        Fate::Pending(i) => {
                            pending[i].tickets.push(ticket);
                            pending[i].memory.push(_memory);
                        }
                        Fate::Ref(i) => {
                            refs[i].tickets.push(ticket);
                            refs[i]._memory.push(_memory);
                        }
                    },
                    Entry::Vacant(v) if inflight.contains_key(&id) => {
                        v.insert(Fate::Ref(refs.len()));
                        refs.push(RefChunk {
                            id,
                            tickets: vec![ticket],
                            _memory: vec![_memory],
                        });
                    }
                    Entry::Vacant(v) => {
                        v.insert(Fate::Pending(pending.len()));
                        pending.push(Pending {
                            id,
                            data,
                            tickets: vec![ticket],
                            memory: vec![_memory],
                        });
                    }
                }
            }
        }
        let ids: Vec<ChunkId> = pending.iter().map(|p| p.id).collect();
        let present = if ids.is_empty() {
            Vec::new()
        } else {
            match self.coord.query_chunks(&ids).await {
                Ok(p) => p,
                Err(e) => {
                    let e = grid_error(e, None);
                    warn!(error = %e, chunks = ids.len(), "dedup query failed");
                    fail_all(&all, &e);
                    return None;
                }
            }
        };
        let mut to_seal = Vec::new();
        for (p, present) in pending.into_iter().zip(present) {
            if present {
                refs.push(RefChunk {
                    id: p.id,
                    tickets: p.tickets,
                    _memory: p.memory,
                });
            } else {
                to_seal.push(p);
            }
        }
        let new = match self.seal_all(to_seal).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "sealing failed");
                fail_all(&all, &e);
                return None;
            }
        };
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for c in &new {
                inflight.insert(c.id, seq);
            }
        }
        Some(PreparedBatch {
            seq,
            snapshot,
            new,
            refs,
        })
    }

    /// Seal chunks on the CPU pool, a group of at least [`SEAL_GROUP_BYTES`] per task, the
    /// groups in parallel (bounded by the CPU limit).
    async fn seal_all(&self, chunks: Vec<Pending>) -> Result<Vec<NewChunk>, GridError> {
        let mut groups: Vec<Vec<Pending>> = Vec::new();
        let mut group_bytes = 0;
        for c in chunks {
            if groups.is_empty() || group_bytes >= SEAL_GROUP_BYTES {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += c.data.len();
            if let Some(g) = groups.last_mut() {
                g.push(c);
            }
        }
        let sealed =
            futures::future::try_join_all(groups.into_iter().map(|g| self.seal_group(g))).await?;
        Ok(sealed.into_iter().flatten().collect())
    }

    async fn seal_group(&self, group: Vec<Pending>) -> Result<Vec<NewChunk>, GridError> {
        let _cpu = self.cpu.acquire().await;
        let (crypto, level, hint, pool) = (
            self.crypto.clone(),
            self.params.level,
            self.erasure_hint(),
            self.pool.clone(),
        );
        tokio::task::spawn_blocking(move || {
            group
                .into_iter()
                .map(|p| {
                    let blob =
                        packet::seal_chunk_for(&crypto, level, &p.id, &p.data, hint, Some(&pool))
                            .map_err(|e| {
                            GridError::Internal(format!("sealing chunk {:?}: {e}", p.id))
                        })?;
                    Ok(NewChunk {
                        id: p.id,
                        len: p.data.len() as u32,
                        blob,
                        tickets: p.tickets,
                        _memory: p.memory,
                    })
                })
                .collect::<Result<Vec<NewChunk>, GridError>>()
        })
        .await
        .map_err(join_error)?
    }

    /// Allocate, encode, put every packet, commit; then tell every store of the batch.
    pub(super) async fn upload(&self, batch: PreparedBatch) {
        let PreparedBatch {
            seq,
            snapshot,
            new,
            refs,
        } = batch;
        let new_ids: Vec<ChunkId> = new.iter().map(|c| c.id).collect();
        let result = self.upload_new(new).await;
        let (mut stored, mut failed, whole) = match result {
            Ok((stored, failed)) => (stored, failed, None),
            Err((e, chunks)) => (Vec::new(), chunks, Some(e)),
        };
        let mut commit_error = whole;
        if commit_error.is_none() && (!stored.is_empty() || !refs.is_empty()) {
            let commits: Vec<ChunkCommit> = stored.iter().map(|s| s.commit.clone()).collect();
            let ref_ids: Vec<ChunkId> = refs.iter().map(|r| r.id).collect();
            if let Err(e) = self.coord.commit(&snapshot, commits, ref_ids).await {
                let e = grid_error(e, None);
                warn!(snapshot, error = %e, "commit failed");
                commit_error = Some(e);
            }
        }
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for id in &new_ids {
                if inflight.get(id) == Some(&seq) {
                    inflight.remove(id);
                }
            }
        }
        match &commit_error {
            Some(e) => {
                for s in stored.drain(..) {
                    failed.push((s.chunk.tickets, e.duplicate()));
                }
                for r in &refs {
                    for t in &r.tickets {
                        t.finish(Err(e));
                    }
                }
            }
            None => {
                for s in stored {
                    let mut first = true;
                    for t in &s.chunk.tickets {
                        let stats = if first {
                            TicketStats {
                                new_chunks: 1,
                                new_bytes: u64::from(s.chunk.len),
                                uploaded_bytes: s.uploaded_bytes,
                            }
                        } else {
                            TicketStats::default()
                        };
                        first = false;
                        t.finish(Ok(stats));
                    }
                }
                for r in &refs {
                    for t in &r.tickets {
                        t.finish(Ok(TicketStats::default()));
                    }
                }
            }
        }
        for (tickets, e) in failed {
            for t in &tickets {
                t.finish(Err(&e));
            }
        }
    }

    /// Allocate and upload the new chunks of a batch. `Ok` gives the chunks stored and the
    /// chunks that failed (with their stores and why); `Err` a refusal of the whole batch.
    #[allow(clippy::type_complexity)]
    async fn upload_new(
        &self,
        new: Vec<NewChunk>,
    ) -> Result<
        (Vec<Stored>, Vec<(Vec<Arc<Ticket>>, GridError)>),
        (GridError, Vec<(Vec<Arc<Ticket>>, GridError)>),
    > {
        if new.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let req = new
            .iter()
            .map(|c| ChunkAlloc {
                id: c.id,
                blob_bytes: c.blob.len() as u64,
            })
            .collect();
        let allocs = match self.coord.allocate(req, self.recent_failures()).await {
            Ok(a) => a,
            Err(e) => {
                let e = grid_error(e, None);
                warn!(chunks = new.len(), error = %e, "allocation refused");
                let failed = new
                    .into_iter()
                    .map(|c| (c.tickets, e.duplicate()))
                    .collect();
                return Err((e, failed));
            }
        };
        let encoded =
            futures::future::join_all(new.into_iter().zip(allocs).map(|(c, a)| self.encode(c, a)))
                .await;
        let mut uploads = Vec::new();
        let mut chunks = Vec::new();
        let mut failed = Vec::new();
        for r in encoded {
            match r {
                Ok((up, chunk)) => {
                    uploads.push(up);
                    chunks.push(chunk);
                }
                Err((e, chunk)) => failed.push((chunk.tickets, e)),
            }
        }
        let placed = self.put_all(&uploads).await;
        if let Some(e) = placed.iter().find_map(|r| match r {
            Err(e @ GridError::Suspended(_)) => Some(e.duplicate()),
            _ => None,
        }) {
            let mut all = failed;
            all.extend(chunks.into_iter().map(|c| (c.tickets, e.duplicate())));
            return Err((e, all));
        }
        let mut stored = Vec::new();
        for ((up, chunk), r) in uploads.iter().zip(chunks).zip(placed) {
            match r {
                Ok(mut packets) => {
                    packets.sort_by_key(|p| p.index);
                    let uploaded_bytes = up.shard_bytes * packets.len() as u64;
                    stored.push(Stored {
                        commit: ChunkCommit {
                            id: up.id,
                            k: up.k,
                            m: up.m,
                            shard_bytes: up.shard_bytes,
                            packets,
                        },
                        uploaded_bytes,
                        chunk,
                    });
                }
                Err(e) => failed.push((chunk.tickets, e)),
            }
        }
        Ok((stored, failed))
    }

    /// Check an allocation and cut the chunk's packets on the CPU pool.
    async fn encode(
        &self,
        chunk: NewChunk,
        alloc: Allocation,
    ) -> Result<(Arc<ChunkUpload>, StoredChunk), (GridError, StoredChunk)> {
        let NewChunk {
            id,
            len,
            blob,
            tickets,
            _memory,
        } = chunk;
        let rest = StoredChunk {
            len,
            tickets,
            _memory,
        };
        let bad =
            |reason: String| GridError::Internal(format!("allocation for chunk {id:?}: {reason}"));
        if alloc.id != id {
            return Err((
                bad(format!("coordinator answered for {:?}", alloc.id)),
                rest,
            ));
        }
        let params = match ErasureParams::new(alloc.k, alloc.m, alloc.shard_bytes) {
            Ok(p) => p,
            Err(e) => return Err((bad(e.to_string()), rest)),
        };
        if alloc.targets.len() != params.total()
            || alloc
                .targets
                .iter()
                .enumerate()
                .any(|(i, t)| usize::from(t.index) != i)
        {
            let why = format!(
                "{} targets for k+m = {}",
                alloc.targets.len(),
                params.total()
            );
            return Err((bad(why), rest));
        }
        let _cpu = self.cpu.acquire().await;
        self.note_erasure(alloc.k, alloc.m);
        let pool = self.pool.clone();
        let packets = tokio::task::spawn_blocking(move || {
            erasure::encode_in_place_with(blob, params, |b| pool.into_bytes(b))
        })
        .await;
        let packets = match packets {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err((bad(e.to_string()), rest)),
            Err(e) => return Err((join_error(e), rest)),
        };
        Ok((Arc::new(ChunkUpload::new(id, alloc, packets)), rest))
    }
}

/// What stays with a chunk while its packets upload: its stores and its memory.
pub(super) struct StoredChunk {
    len: u32,
    tickets: Vec<Arc<Ticket>>,
    _memory: Vec<OwnedSemaphorePermit>,
}

/// A chunk whose packets are all acknowledged.
struct Stored {
    commit: ChunkCommit,
    uploaded_bytes: u64,
    chunk: StoredChunk,
}
