//! Packet puts of one batch: every packet bound for one node travels in one `PutPackets`
//! request (split at the frame limit), all nodes at once; a packet that a node refuses or
//! fails is moved to a replacement target and put on its own.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use gridback_proto::coord_api::{Allocation, PacketPlacement, ReplaceTargets, Target};
use gridback_proto::node_api::{MAX_BATCH_PACKETS, PutAck, PutPackets};
use gridback_proto::transport::CallError;
use gridback_proto::wire::MAX_FRAME_BYTES;
use gridback_proto::{ChunkId, ErrorCode, NodeId};
use tracing::{Instrument, debug_span, error, warn};

use super::{MAX_PUT_ATTEMPTS, Shared};
use crate::coord_client::grid_error;
use crate::erasure::Encoded;
use crate::grid::GridError;
use crate::node_client::{TransferError, put_charge};

/// Bytes of packet data in one put request at most: half the frame limit, so a node's
/// requests interleave with other traffic on its connection and one slow request holds
/// little of the batch back.
const MAX_PUT_REQUEST_BYTES: usize = MAX_FRAME_BYTES as usize / 2;

/// One chunk while its packets upload. The packets travel with their put jobs (slices of one
/// buffer per chunk), so the buffer is freed as soon as the last put of the chunk is
/// acknowledged.
pub(super) struct ChunkUpload {
    pub(super) id: ChunkId,
    pub(super) k: u8,
    pub(super) m: u8,
    pub(super) shard_bytes: u64,
    targets: Vec<Target>,
    packets: Mutex<Option<Encoded>>,
    /// Nodes holding (or about to hold) a packet of this chunk, and nodes that failed.
    used: Mutex<HashSet<NodeId>>,
}

impl ChunkUpload {
    pub(super) fn new(id: ChunkId, alloc: Allocation, packets: Encoded) -> Self {
        Self {
            id,
            k: alloc.k,
            m: alloc.m,
            shard_bytes: alloc.shard_bytes,
            used: Mutex::new(alloc.targets.iter().map(|t| t.node).collect()),
            targets: alloc.targets,
            packets: Mutex::new(Some(packets)),
        }
    }

    /// Take the chunk's packets, one per target (only once: afterwards the packets live in
    /// the put jobs).
    fn take_jobs(&self) -> Vec<(Target, Bytes)> {
        let Some(p) = self
            .packets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Vec::new();
        };
        self.targets
            .iter()
            .filter_map(|t| p.packet(usize::from(t.index)).map(|d| (t.clone(), d)))
            .collect()
    }
}

/// One packet to put: which chunk (index into the batch's uploads), where, what.
struct Job {
    chunk: usize,
    target: Target,
    data: Bytes,
}

impl Shared {
    /// Put every packet of `uploads`; one result per chunk, in order: its placements, or why
    /// it could not be stored.
    pub(super) async fn put_all(
        &self,
        uploads: &[Arc<ChunkUpload>],
    ) -> Vec<Result<Vec<PacketPlacement>, GridError>> {
        let mut by_node: BTreeMap<NodeId, Vec<Job>> = BTreeMap::new();
        for (i, up) in uploads.iter().enumerate() {
            for (target, data) in up.take_jobs() {
                by_node.entry(target.node).or_default().push(Job {
                    chunk: i,
                    target,
                    data,
                });
            }
        }
        let mut requests: Vec<Vec<Job>> = Vec::new();
        for (_, jobs) in by_node {
            let mut cur: Vec<Job> = Vec::new();
            let mut bytes = 0;
            for j in jobs {
                let over = PutPackets::frame_bytes_bound(cur.len() + 1, bytes + j.data.len())
                    > MAX_PUT_REQUEST_BYTES;
                if !cur.is_empty() && (over || cur.len() >= MAX_BATCH_PACKETS) {
                    requests.push(std::mem::take(&mut cur));
                    bytes = 0;
                }
                bytes += j.data.len();
                cur.push(j);
            }
            if !cur.is_empty() {
                requests.push(cur);
            }
        }
        let outcomes: Vec<Vec<(usize, Result<PacketPlacement, GridError>)>> =
            futures::stream::iter(requests)
                .map(|jobs| self.put_request(uploads, jobs))
                .buffer_unordered(self.params.upload_concurrency.max(1))
                .collect()
                .await;
        let mut per_chunk: Vec<Result<Vec<PacketPlacement>, GridError>> =
            uploads.iter().map(|_| Ok(Vec::new())).collect();
        for (i, r) in outcomes.into_iter().flatten() {
            match (&mut per_chunk[i], r) {
                (Ok(v), Ok(p)) => v.push(p),
                (Ok(_), Err(e)) => per_chunk[i] = Err(e),
                (Err(_), _) => {}
            }
        }
        per_chunk
    }

    /// One `PutPackets` request to one node; packets it does not store go to replacement
    /// targets one by one.
    async fn put_request(
        &self,
        uploads: &[Arc<ChunkUpload>],
        jobs: Vec<Job>,
    ) -> Vec<(usize, Result<PacketPlacement, GridError>)> {
        let Some(first) = jobs.first() else {
            return Vec::new();
        };
        let (node, addr) = (first.target.node, first.target.addr.clone());
        let parts = jobs
            .iter()
            .map(|j| {
                let up = &uploads[j.chunk];
                (
                    j.target.order.clone(),
                    j.data.clone(),
                    put_charge(j.data.len(), up.k, up.m),
                )
            })
            .collect();
        let span = debug_span!("put_batch", node = %node, packets = jobs.len());
        let answer = self
            .nodes
            .put_batch(node, &addr, parts)
            .instrument(span)
            .await;
        let acks: Vec<Result<PutAck, TransferError>> = match answer {
            Ok(acks) => acks,
            Err(e) => {
                warn!(node = %node, packets = jobs.len(), error = %e, "packet batch failed");
                jobs.iter().map(|_| Err(same_failure(&e, &addr))).collect()
            }
        };
        let mut out = Vec::with_capacity(jobs.len());
        let mut retries = Vec::new();
        for (job, ack) in jobs.into_iter().zip(acks) {
            match ack {
                Ok(ack) => out.push((
                    job.chunk,
                    Ok(PacketPlacement {
                        index: job.target.index,
                        node: job.target.node,
                        packet: job.target.order.order.packet,
                        checksum: ack.checksum,
                    }),
                )),
                Err(e) => retries.push((job, e)),
            }
        }
        let retried = futures::future::join_all(retries.into_iter().map(|(job, err)| async move {
            let up = &uploads[job.chunk];
            (
                job.chunk,
                self.retry_packet(up, job.target, job.data, err).await,
            )
        }))
        .await;
        out.extend(retried);
        out
    }

    /// A packet failed on its target with `err`: find it a new target (`ReplaceTargets`) and
    /// put it there on its own, up to [`MAX_PUT_ATTEMPTS`] targets in all.
    async fn retry_packet(
        &self,
        up: &ChunkUpload,
        mut target: Target,
        data: Bytes,
        mut err: TransferError,
    ) -> Result<PacketPlacement, GridError> {
        let index = target.index;
        let id = up.id;
        let mut attempt = 1;
        loop {
            if let Some(message) = suspended_message(&err) {
                // The node enforces the subscription too: no other node will take it.
                warn!(chunk = ?id, node = %target.node, error = %err,
                    "node refused the packet: subscription does not allow writes");
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
                Ok(_) => {
                    return unreachable_targets(id, index, &err, "coordinator returned no target");
                }
                Err(e) if e.code() == Some(ErrorCode::NoPlacement) || e.code().is_none() => {
                    return unreachable_targets(id, index, &err, &e.to_string());
                }
                Err(e) => return Err(grid_error(e, Some(id))),
            }
            attempt += 1;
            let span = debug_span!("upload", chunk = ?id, index, node = %target.node, attempt);
            let put = self.nodes.put(
                target.node,
                &target.addr,
                target.order.clone(),
                data.clone(),
                put_charge(data.len(), up.k, up.m),
            );
            match put.instrument(span).await {
                Ok(ack) => {
                    return Ok(PacketPlacement {
                        index,
                        node: target.node,
                        packet: target.order.order.packet,
                        checksum: ack.checksum,
                    });
                }
                Err(e) => err = e,
            }
        }
    }
}

/// The failure of a whole request again, for each of its packets: a refusal keeps its code
/// (a suspended subscription must still be recognised), anything else becomes an I/O error
/// with the same text.
fn same_failure(e: &TransferError, addr: &str) -> TransferError {
    match e {
        TransferError::Call(CallError::Remote { addr, rpc, error }) => {
            TransferError::Call(CallError::Remote {
                addr: addr.clone(),
                rpc,
                error: error.clone(),
            })
        }
        other => TransferError::Call(CallError::Io {
            addr: addr.to_string(),
            reason: other.to_string(),
        }),
    }
}

/// The node's message when it refused a put because the client's subscription does not allow
/// writes.
fn suspended_message(err: &TransferError) -> Option<String> {
    match err {
        TransferError::Call(call) if call.code() == Some(ErrorCode::Suspended) => {
            Some(match call {
                CallError::Remote { error, .. } => error.message.clone(),
                other => other.to_string(),
            })
        }
        _ => None,
    }
}

fn unreachable_targets(
    id: ChunkId,
    index: u8,
    put: &dyn std::fmt::Display,
    why: &str,
) -> Result<PacketPlacement, GridError> {
    let reason = format!("packet {index}: put failed ({put}) and no replacement target: {why}");
    error!(chunk = %id, %reason, "upload failed");
    Err(GridError::UploadFailed { chunk: id, reason })
}
