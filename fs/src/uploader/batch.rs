//! The stages of one batch: chunking (blocking thread), preparing (dedup query and sealing)
//! and uploading (allocation, erasure coding, packet puts with target replacement, commit).

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use gridback_proto::coord_api::{
    Allocation, ChunkAlloc, ChunkCommit, PacketPlacement, ReplaceTargets, Target,
};
use gridback_proto::transport::CallError;
use gridback_proto::{ChunkId, ErrorCode, NodeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{Instrument, debug_span, error, warn};

use super::{MAX_BATCH_BYTES, MAX_PUT_ATTEMPTS, Uploader};
use crate::chunker::Chunker;
use crate::coord_client::grid_error;
use crate::crypto::ChunkCrypto;
use crate::erasure::{self, Encoded, ErasureParams};
use crate::grid::{ChunkRef, GridError, StoredData};
use crate::node_client::{TransferError, put_charge};
use crate::packet;

/// Chunks read from the stream, with their ids.
pub(super) struct RawBatch {
    chunks: Vec<(ChunkId, Bytes)>,
    permit: OwnedSemaphorePermit,
}

/// A chunk compressed, encrypted and padded.
struct SealedChunk {
    id: ChunkId,
    len: u32,
    blob: Vec<u8>,
}

/// A batch ready to upload.
pub(super) struct PreparedBatch {
    /// Every chunk of the batch, in stream order.
    pub(super) refs: Vec<ChunkRef>,
    new: Vec<SealedChunk>,
    dedup_refs: Vec<ChunkId>,
    _permit: OwnedSemaphorePermit,
}

/// What uploading one batch did.
#[derive(Debug, Default)]
pub(super) struct BatchOutcome {
    new_chunks: u64,
    new_bytes: u64,
    uploaded_bytes: u64,
}

impl BatchOutcome {
    pub(super) fn add_to(&self, out: &mut StoredData) {
        out.new_chunks += self.new_chunks;
        out.new_bytes += self.new_bytes;
        out.uploaded_bytes += self.uploaded_bytes;
    }
}

/// One chunk while its packets upload. The packets themselves travel with their put jobs
/// (slices of one buffer per chunk), so the buffer is freed as soon as the last put of the
/// chunk is acknowledged, not when the whole batch is committed.
struct ChunkUpload {
    id: ChunkId,
    k: u8,
    m: u8,
    shard_bytes: u64,
    /// Nodes holding (or about to hold) a packet of this chunk, and nodes that failed.
    used: Mutex<HashSet<NodeId>>,
}

/// Body of the blocking chunker thread: read, cut, identify, and hand over full batches.
pub(super) fn chunk_stream(
    mut chunker: Chunker<Box<dyn Read + Send>>,
    crypto: &ChunkCrypto,
    batch_chunks: usize,
    permits: &Arc<Semaphore>,
    tx: &mpsc::Sender<Result<RawBatch, GridError>>,
    rt: &tokio::runtime::Handle,
) {
    loop {
        // Closed when the store ends: stop quietly.
        let Ok(permit) = rt.block_on(permits.clone().acquire_owned()) else {
            return;
        };
        let mut chunks = Vec::with_capacity(batch_chunks);
        let mut bytes = 0;
        let mut eof = false;
        while chunks.len() < batch_chunks && bytes < MAX_BATCH_BYTES {
            match chunker.next() {
                None => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => {
                    let _ = tx.blocking_send(Err(GridError::Source(e)));
                    return;
                }
                Some(Ok(data)) => {
                    bytes += data.len();
                    chunks.push((crypto.chunk_id(&data), data));
                }
            }
        }
        if !chunks.is_empty() && tx.blocking_send(Ok(RawBatch { chunks, permit })).is_err() {
            return;
        }
        if eof {
            return;
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> GridError {
    GridError::Internal(format!("worker task failed: {e}"))
}

impl Uploader {
    /// Dedup query, then seal the new chunks on the CPU pool.
    pub(super) async fn prepare(
        &self,
        raw: RawBatch,
        seen: &mut HashSet<ChunkId>,
    ) -> Result<PreparedBatch, GridError> {
        let ids: Vec<ChunkId> = raw.chunks.iter().map(|c| c.0).collect();
        let present = self
            .coord
            .query_chunks(&ids)
            .await
            .map_err(|e| grid_error(e, None))?;
        let refs = raw
            .chunks
            .iter()
            .map(|(id, d)| ChunkRef {
                id: *id,
                len: d.len() as u32,
            })
            .collect();
        let mut dedup_refs = Vec::new();
        let mut to_seal = Vec::new();
        for ((id, data), present) in raw.chunks.into_iter().zip(present) {
            // A chunk seen earlier in this stream is committed (or being committed) already.
            if !seen.insert(id) {
                continue;
            }
            if present {
                dedup_refs.push(id)
            } else {
                to_seal.push((id, data))
            }
        }
        let new =
            futures::future::try_join_all(to_seal.into_iter().map(|(id, d)| self.seal(id, d)))
                .await?;
        Ok(PreparedBatch {
            refs,
            new,
            dedup_refs,
            _permit: raw.permit,
        })
    }

    async fn seal(&self, id: ChunkId, data: Bytes) -> Result<SealedChunk, GridError> {
        let _cpu = self.cpu.acquire().await;
        let (crypto, level) = (self.crypto.clone(), self.params.level);
        let hint = self.erasure_hint();
        let pool = self.pool.clone();
        let len = data.len() as u32;
        let blob = tokio::task::spawn_blocking(move || {
            packet::seal_chunk_for(&crypto, level, &id, &data, hint, Some(&pool))
        })
        .await
        .map_err(join_error)?
        .map_err(|e| GridError::Internal(format!("sealing chunk {id:?}: {e}")))?;
        Ok(SealedChunk { id, len, blob })
    }

    /// Allocate, encode, put every packet, commit.
    pub(super) async fn upload_batch(
        &self,
        snapshot: &str,
        batch: PreparedBatch,
    ) -> Result<BatchOutcome, GridError> {
        let PreparedBatch {
            new,
            dedup_refs,
            _permit,
            ..
        } = batch;
        let mut outcome = BatchOutcome::default();
        let mut commits = Vec::with_capacity(new.len());
        if !new.is_empty() {
            let req = new.iter().map(|c| ChunkAlloc {
                id: c.id,
                blob_bytes: c.blob.len() as u64,
            });
            let allocs = self
                .coord
                .allocate(req.collect(), self.recent_failures())
                .await
                .map_err(|e| grid_error(e, None))?;
            outcome.new_chunks = new.len() as u64;
            outcome.new_bytes = new.iter().map(|c| u64::from(c.len)).sum();
            let encoded = futures::future::try_join_all(
                new.into_iter().zip(allocs).map(|(c, a)| self.encode(c, a)),
            )
            .await?;
            let mut jobs: Vec<(usize, Arc<ChunkUpload>, Target, Bytes)> = Vec::new();
            let mut uploads = Vec::with_capacity(encoded.len());
            for (i, (up, targets, packets)) in encoded.into_iter().enumerate() {
                for t in targets {
                    let data = packets.packet(usize::from(t.index)).ok_or_else(|| {
                        GridError::Internal(format!("no packet {} of chunk {:?}", t.index, up.id))
                    })?;
                    jobs.push((i, up.clone(), t, data));
                }
                uploads.push(up);
            }
            let encoded = uploads;
            let placed: Vec<(usize, PacketPlacement)> = futures::stream::iter(jobs)
                .map(|(i, up, t, data)| async move {
                    self.put_packet(&up, t, data).await.map(|p| (i, p))
                })
                .buffer_unordered(self.params.upload_concurrency.max(1))
                .try_collect()
                .await?;
            let mut per_chunk: Vec<Vec<PacketPlacement>> = vec![Vec::new(); encoded.len()];
            for (i, p) in placed {
                per_chunk[i].push(p);
            }
            for (up, mut packets) in encoded.iter().zip(per_chunk) {
                packets.sort_by_key(|p| p.index);
                outcome.uploaded_bytes += up.shard_bytes * packets.len() as u64;
                let (k, m, shard_bytes) = (up.k, up.m, up.shard_bytes);
                commits.push(ChunkCommit {
                    id: up.id,
                    k,
                    m,
                    shard_bytes,
                    packets,
                });
            }
        }
        if !commits.is_empty() || !dedup_refs.is_empty() {
            self.coord
                .commit(snapshot, commits, dedup_refs)
                .await
                .map_err(|e| grid_error(e, None))?;
        }
        Ok(outcome)
    }

    /// Check an allocation and cut the chunk's packets on the CPU pool.
    async fn encode(
        &self,
        chunk: SealedChunk,
        alloc: Allocation,
    ) -> Result<(Arc<ChunkUpload>, Vec<Target>, Encoded), GridError> {
        let id = chunk.id;
        let bad =
            |reason: String| GridError::Internal(format!("allocation for chunk {id:?}: {reason}"));
        if alloc.id != id {
            return Err(bad(format!("coordinator answered for {:?}", alloc.id)));
        }
        let params = ErasureParams::new(alloc.k, alloc.m, alloc.shard_bytes)
            .map_err(|e| bad(e.to_string()))?;
        if alloc.targets.len() != params.total()
            || alloc
                .targets
                .iter()
                .enumerate()
                .any(|(i, t)| usize::from(t.index) != i)
        {
            return Err(bad(format!(
                "{} targets for k+m = {}",
                alloc.targets.len(),
                params.total()
            )));
        }
        let _cpu = self.cpu.acquire().await;
        self.note_erasure(alloc.k, alloc.m);
        let pool = self.pool.clone();
        let packets = tokio::task::spawn_blocking(move || {
            erasure::encode_in_place_with(chunk.blob, params, |b| pool.into_bytes(b))
        })
        .await
        .map_err(join_error)?
        .map_err(|e| bad(e.to_string()))?;
        let used = alloc.targets.iter().map(|t| t.node).collect();
        let up = ChunkUpload {
            id,
            k: alloc.k,
            m: alloc.m,
            shard_bytes: alloc.shard_bytes,
            used: Mutex::new(used),
        };
        Ok((Arc::new(up), alloc.targets, packets))
    }

    /// Put one packet, moving it to a replacement target when a node fails.
    async fn put_packet(
        &self,
        up: &ChunkUpload,
        mut target: Target,
        data: Bytes,
    ) -> Result<PacketPlacement, GridError> {
        let index = target.index;
        let id = up.id;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let span = debug_span!("upload", chunk = ?id, index, node = %target.node, attempt);
            let put = self.nodes.put(
                target.node,
                &target.addr,
                target.order.clone(),
                data.clone(),
                put_charge(data.len(), up.k, up.m),
            );
            let err = match put.instrument(span).await {
                Ok(ack) => {
                    return Ok(PacketPlacement {
                        index,
                        node: target.node,
                        packet: target.order.order.packet,
                        checksum: ack.checksum,
                    });
                }
                Err(e) => e,
            };
            if let TransferError::Call(call) = &err
                && call.code() == Some(ErrorCode::Suspended)
            {
                // The node enforces the subscription too: no other node will take it.
                warn!(chunk = ?id, node = %target.node, error = %err,
                    "node refused the packet: subscription does not allow writes");
                let message = match call {
                    CallError::Remote { error, .. } => error.message.clone(),
                    other => other.to_string(),
                };
                return Err(GridError::Suspended(message));
            }
            warn!(chunk = ?id, node = %target.node, index, error = %err, "packet upload failed");
            self.note_failure(target.node);
            if attempt >= MAX_PUT_ATTEMPTS {
                let reason = format!("{attempt} targets failed for packet {index}, last: {err}");
                error!(chunk = %id, %reason, "upload failed");
                return Err(GridError::UploadFailed { chunk: id, reason });
            }
            let exclude: Vec<NodeId> = {
                let mut used = up.used.lock().unwrap_or_else(|p| p.into_inner());
                used.insert(target.node);
                used.iter().copied().collect()
            };
            let req = ReplaceTargets {
                id,
                shard_bytes: up.shard_bytes,
                indices: vec![index],
                exclude,
            };
            match self.coord.replace_targets(req).await {
                Ok(mut t) if !t.is_empty() => {
                    target = t.swap_remove(0);
                    target.index = index;
                    up.used
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(target.node);
                }
                Ok(_) => unreachable_targets(id, index, &err, "coordinator returned no target")?,
                Err(e) if e.code() == Some(ErrorCode::NoPlacement) || e.code().is_none() => {
                    unreachable_targets(id, index, &err, &e.to_string())?
                }
                Err(e) => return Err(grid_error(e, Some(id))),
            }
        }
    }
}

fn unreachable_targets(
    id: ChunkId,
    index: u8,
    put: &dyn std::fmt::Display,
    why: &str,
) -> Result<(), GridError> {
    let reason = format!("packet {index}: put failed ({put}) and no replacement target: {why}");
    error!(chunk = %id, %reason, "upload failed");
    Err(GridError::UploadFailed { chunk: id, reason })
}
