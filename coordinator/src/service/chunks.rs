//! The batched chunk protocol: dedup query, allocation (sequence + put orders), replacement
//! targets, commit, and locate (get orders). Quota accounting is in [`quota`].

mod quota;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gridback_proto::coord_api::{
    AllocateChunks, Allocation, Allocations, ChunkLocation, ChunkPresence, CommitChunks, Committed,
    LocateChunks, LocatedPacket, Locations, QueryChunks, ReplaceTargets, Replacements, Target,
};
use gridback_proto::units::format_size;
use gridback_proto::wire::MAX_FRAME_BYTES;
use gridback_proto::{
    CertFingerprint, ChunkId, ClientId, ErrorCode, NodeId, Order, OrderOp, PacketName, WireError,
    now_unix_ms,
};

use gridback_proto::subscription::Subscription;
use tracing::warn;

use super::grid_view::{GridView, RequestFacts};
use super::{Inner, Reply, bad_request, check_batch, store_err};
use crate::erasure::{self, choose_erasure, shard_bytes};
use crate::pending::{PendingChunk, Slot};
use crate::placement::Topology;
use crate::sequence::packet_name;
use crate::store::CommitBatch;
use quota::QuotaGate;

/// Largest packet the coordinator hands out: a node must receive it in one frame together
/// with its order, so leave 64 KiB of the frame limit for the rest of the message.
const MAX_SHARD_BYTES: u64 = MAX_FRAME_BYTES as u64 - 64 * 1024;

fn no_placement(msg: String) -> WireError {
    WireError::new(ErrorCode::NoPlacement, msg)
}

/// The grid as placement sees it for one request: the cached view and the request's
/// topology over it.
struct Grid {
    view: Arc<GridView>,
    topo: Topology<RequestFacts>,
}

impl Inner {
    /// The request's view of the grid: the cached map and addresses (see `grid_view`), live
    /// liveness and room left after in-flight allocations, and `exclude` left out. Costs
    /// O(excluded + packets in flight), not O(grid).
    fn grid(&self, now: u64, exclude: &[NodeId]) -> Reply<Grid> {
        let view = self
            .views
            .get(&*self.store, &self.secrets.sequence_key)
            .map_err(store_err)?;
        let facts = RequestFacts::new(
            view.clone(),
            now,
            self.settings.node_timeout,
            self.pending.in_flight_bytes(now),
        );
        Ok(Grid {
            topo: Topology::with_facts(view.map().clone(), facts, exclude),
            view,
        })
    }

    fn put_target(
        &self,
        fp: CertFingerprint,
        grid: &Grid,
        slot: Slot,
        size: u64,
        now: u64,
    ) -> Target {
        let order = Order {
            op: OrderOp::Put,
            node: slot.node,
            packet: slot.packet,
            size_bytes: size,
            client: fp,
            expires_unix_ms: self.order_expiry(now),
        };
        Target {
            index: slot.index,
            node: slot.node,
            addr: grid.view.addr(&slot.node),
            order: self.secrets.signer.sign(order),
        }
    }

    pub(super) fn query(&self, q: QueryChunks) -> Reply<ChunkPresence> {
        check_batch("query_chunks", q.ids.len())?;
        Ok(ChunkPresence {
            present: self.store.chunks_present(&q.ids).map_err(store_err)?,
        })
    }

    pub(super) fn allocate(
        &self,
        client: ClientId,
        fp: CertFingerprint,
        sub: &Subscription,
        a: AllocateChunks,
    ) -> Reply<Allocations> {
        check_batch("allocate_chunks", a.chunks.len())?;
        let now = now_unix_ms();
        let mut grid = self.grid(now, &a.exclude)?;
        // Choosing the coding needs to know only whether k + m nodes are up.
        let want = erasure::width(self.settings.erasure_k, self.settings.erasure_m);
        let up = grid.topo.up_at_least(want);
        let (k, m) = choose_erasure(self.settings.erasure_k, self.settings.erasure_m, up)
            .ok_or_else(|| {
                no_placement(format!(
                    "no storage node is up ({} known, {} excluded by the client)",
                    grid.view.len(),
                    a.exclude.len()
                ))
            })?;
        let n = usize::from(k) + usize::from(m);
        // Held until the batch is recorded in `pending`.
        let gate = QuotaGate::of(self, client, sub);
        let _held = gate.hold();
        let charges = self.charges(client, &a, k)?;
        self.check_quota(client, sub, &charges, now)?;
        let rules = self.rules_for(sub)?;
        let src = grid.topo.source(&self.client_location(&client)?);
        let mut out = Vec::with_capacity(a.chunks.len());
        let mut pending = Vec::with_capacity(a.chunks.len());
        for c in &a.chunks {
            let shard = shard_bytes(c.blob_bytes, k);
            if shard > MAX_SHARD_BYTES {
                return Err(bad_request(format!(
                    "chunk {}: blob of {} bytes makes packets larger than {}",
                    c.id,
                    c.blob_bytes,
                    format_size(MAX_SHARD_BYTES)
                )));
            }
            let seq = grid
                .topo
                .place(&c.id, n, &[], shard, &src, &rules)
                .map_err(|short| {
                    let msg = short.message(&c.id, n, shard);
                    warn!(client = %client, chunk = %c.id, constraint = short.constraint(), "{msg}");
                    no_placement(msg)
                })?;
            let slots: Vec<Slot> = seq
                .iter()
                .zip(0u8..)
                .map(|(node, index)| Slot {
                    index,
                    node: *node,
                    packet: packet_name(&self.secrets.sequence_key, &c.id, index),
                })
                .collect();
            for s in &slots {
                grid.topo.reserve(&s.node, shard);
            }
            let targets = slots
                .iter()
                .map(|s| self.put_target(fp, &grid, *s, shard, now))
                .collect();
            out.push(Allocation {
                id: c.id,
                k,
                m,
                shard_bytes: shard,
                targets,
            });
            let expires_unix_ms = self.order_expiry(now);
            pending.push((
                c.id,
                PendingChunk {
                    k,
                    m,
                    shard_bytes: shard,
                    slots,
                    expires_unix_ms,
                    charged_bytes: charges.get(&c.id).copied().unwrap_or(0),
                },
            ));
        }
        // Only a fully placed batch is remembered: a refused batch reserves nothing.
        for (id, p) in pending {
            self.pending.insert(client, id, p);
        }
        Ok(Allocations { chunks: out })
    }

    pub(super) fn replace(
        &self,
        client: ClientId,
        fp: CertFingerprint,
        sub: &Subscription,
        r: ReplaceTargets,
    ) -> Reply<Replacements> {
        let now = now_unix_ms();
        let p = self.pending.get(client, r.id, now).ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!(
                    "chunk {} has no live allocation for this client; allocate it again",
                    r.id
                ),
            )
        })?;
        if r.shard_bytes != p.shard_bytes {
            return Err(bad_request(format!(
                "chunk {}: shard_bytes {} does not match the allocation ({})",
                r.id, r.shard_bytes, p.shard_bytes
            )));
        }
        let total = usize::from(p.k) + usize::from(p.m);
        let indices: HashSet<u8> = r.indices.iter().copied().collect();
        if indices.len() != r.indices.len() || r.indices.iter().any(|&i| usize::from(i) >= total) {
            return Err(bad_request(format!(
                "chunk {}: indices must be distinct and below {total}",
                r.id
            )));
        }
        let mut exclude = r.exclude.clone();
        exclude.extend(p.slots.iter().map(|s| s.node));
        let mut grid = self.grid(now, &exclude)?;
        // The packets that stay where they are: the latest slot of every index not replaced.
        let mut kept: HashMap<u8, NodeId> = HashMap::new();
        for s in p.slots.iter().filter(|s| !indices.contains(&s.index)) {
            kept.insert(s.index, s.node);
        }
        let fixed: Vec<NodeId> = kept.into_values().collect();
        let rules = self.rules_for(sub)?;
        let src = grid.topo.source(&self.client_location(&client)?);
        let need = r.indices.len();
        let seq = grid
            .topo
            .place(&r.id, need, &fixed, p.shard_bytes, &src, &rules)
            .map_err(|short| {
                let msg = short.message(&r.id, need, p.shard_bytes);
                warn!(client = %client, chunk = %r.id, constraint = short.constraint(), "{msg}");
                no_placement(msg)
            })?;
        let slots: Vec<Slot> = r
            .indices
            .iter()
            .zip(&seq)
            .map(|(&index, node)| Slot {
                index,
                node: *node,
                packet: packet_name(&self.secrets.sequence_key, &r.id, index),
            })
            .collect();
        for s in &slots {
            grid.topo.reserve(&s.node, p.shard_bytes);
        }
        self.pending
            .add_slots(client, r.id, &slots, self.order_expiry(now));
        let targets = slots
            .iter()
            .map(|s| self.put_target(fp, &grid, *s, p.shard_bytes, now))
            .collect();
        Ok(Replacements { targets })
    }

    /// Chunks of `c` whose allocation is gone because they were committed already, by this
    /// client's own concurrent upload of the same chunk (two files with the same content
    /// written at once share one allocation, and the first commit releases it) or by a
    /// commit retried after a lost answer: they are stored, so they become plain references,
    /// exactly what a dedup hit would have made them; this upload's packets are surplus.
    /// A chunk with neither an allocation nor a stored record stays and is refused below.
    fn settle_committed_elsewhere(
        &self,
        client: ClientId,
        mut c: CommitChunks,
        now: u64,
    ) -> Reply<CommitChunks> {
        let orphans = self
            .pending
            .missing(client, c.chunks.iter().map(|x| x.id), now);
        if orphans.is_empty() {
            return Ok(c);
        }
        let present = self.store.chunks_present(&orphans).map_err(store_err)?;
        let settled: HashSet<ChunkId> = orphans
            .iter()
            .zip(present)
            .filter_map(|(id, p)| p.then_some(*id))
            .collect();
        if !settled.is_empty() {
            tracing::debug!(
                chunks = settled.len(),
                "commit of chunks stored meanwhile: recorded as references"
            );
            c.chunks.retain(|x| !settled.contains(&x.id));
            for id in settled {
                if !c.refs.contains(&id) {
                    c.refs.push(id);
                }
            }
        }
        Ok(c)
    }

    /// Check that every packet of every chunk was allocated to this client.
    fn verify_placements(&self, client: ClientId, c: &CommitChunks, now: u64) -> Reply<()> {
        for chunk in &c.chunks {
            let never = || {
                WireError::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "chunk {}: placement was not allocated to this client (or the allocation \
                         expired)",
                        chunk.id
                    ),
                )
            };
            let p = self.pending.get(client, chunk.id, now).ok_or_else(never)?;
            if (chunk.k, chunk.m, chunk.shard_bytes) != (p.k, p.m, p.shard_bytes) {
                return Err(bad_request(format!(
                    "chunk {}: k/m/shard_bytes {}/{}/{} differ from the allocation {}/{}/{}",
                    chunk.id, chunk.k, chunk.m, chunk.shard_bytes, p.k, p.m, p.shard_bytes
                )));
            }
            let total = usize::from(p.k) + usize::from(p.m);
            let indices: HashSet<u8> = chunk.packets.iter().map(|x| x.index).collect();
            if chunk.packets.len() != total || indices.len() != total {
                return Err(bad_request(format!(
                    "chunk {}: expected {total} packets with distinct indices, got {}",
                    chunk.id,
                    chunk.packets.len()
                )));
            }
            for pk in &chunk.packets {
                let slot = Slot {
                    index: pk.index,
                    node: pk.node,
                    packet: pk.packet,
                };
                if !p.allows(&slot) {
                    return Err(never());
                }
            }
        }
        Ok(())
    }

    pub(super) fn commit(
        &self,
        client: ClientId,
        sub: &Subscription,
        c: CommitChunks,
    ) -> Reply<Committed> {
        check_batch("commit_chunks", c.chunks.len() + c.refs.len())?;
        super::snapshots::validate_name(&c.snapshot)?;
        // Held from the check of the allocations until they are released.
        let gate = QuotaGate::of(self, client, sub);
        let _held = gate.hold();
        let now = now_unix_ms();
        let c = self.settle_committed_elsewhere(client, c, now)?;
        self.verify_placements(client, &c, now)?;
        let ids: Vec<ChunkId> = c.chunks.iter().map(|x| x.id).collect();
        let quota = self.commit_quota(client, sub, now);
        let batch = CommitBatch {
            snapshot: c.snapshot,
            chunks: c.chunks,
            refs: c.refs,
            now_unix_ms: now,
            quota_bytes: quota.map(|q| q.for_store()),
        };
        let out = self
            .store
            .commit_chunks(&client, &batch)
            .map_err(|e| match quota {
                Some(q) => q.refusal(&client, e),
                None => store_err(e),
            })?;
        self.pending.remove(client, ids);
        tracing::debug!(
            stored = out.stored,
            already_stored = out.already_stored,
            referenced = out.referenced,
            "chunks committed"
        );
        Ok(Committed {
            stored: out.stored,
            already_stored: out.already_stored,
            referenced: out.referenced,
        })
    }

    pub(super) fn locate(
        &self,
        client: ClientId,
        fp: CertFingerprint,
        l: LocateChunks,
    ) -> Reply<Locations> {
        check_batch("locate_chunks", l.ids.len())?;
        let now = now_unix_ms();
        let records = self
            .store
            .chunks_of_client(&client, &l.ids)
            .map_err(store_err)?;
        let view = self
            .views
            .get(&*self.store, &self.secrets.sequence_key)
            .map_err(store_err)?;
        let expires = self.order_expiry(now);
        let get_order = |node: NodeId, packet: PacketName, size: u64| {
            self.secrets.signer.sign(Order {
                op: OrderOp::Get,
                node,
                packet,
                size_bytes: size,
                client: fp,
                expires_unix_ms: expires,
            })
        };
        let chunks = l
            .ids
            .iter()
            .zip(records)
            .map(|(id, rec)| {
                rec.map(|rec| ChunkLocation {
                    id: *id,
                    k: rec.k,
                    m: rec.m,
                    shard_bytes: rec.shard_bytes,
                    packets: rec
                        .packets
                        .iter()
                        .map(|p| LocatedPacket {
                            index: p.index,
                            node: p.node,
                            addr: view.addr(&p.node),
                            node_up: view.up(&p.node, now, self.settings.node_timeout),
                            checksum: p.checksum,
                            order: get_order(p.node, p.packet, rec.shard_bytes),
                            location: view.location(&p.node),
                        })
                        .collect(),
                })
            })
            .collect();
        Ok(Locations { chunks })
    }
}
