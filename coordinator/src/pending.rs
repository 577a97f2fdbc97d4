//! Allocations handed out but not yet committed, kept in memory.
//!
//! A commit is accepted only for placements the coordinator allocated to that client, and
//! capacity accounting counts these in-flight packets so that a burst of allocations cannot
//! overfill a node before its next heartbeat. Entries expire with their orders; after a
//! coordinator restart, clients allocate again.
//!
//! Quota accounting counts them too: every allocation carries the bytes it will charge the
//! client ([`PendingChunk::charged_bytes`]), released on commit (when the store charges them
//! for good) or expiry, so that committed + in-flight never exceeds the quota while several
//! uploads of one client are under way. A quota decision reads the in-flight charges and
//! then the committed usage and records its own charges under the client's
//! [`PendingAllocations::quota_gate`], so two decisions for one client never interleave.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gridback_proto::{ChunkId, ClientId, NodeId, PacketName};

/// One packet a client may store: index, node, name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub index: u8,
    pub node: NodeId,
    pub packet: PacketName,
}

/// The allocation of one chunk to one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingChunk {
    pub k: u8,
    pub m: u8,
    pub shard_bytes: u64,
    /// Every slot granted: the first allocation plus any replacements.
    pub slots: Vec<Slot>,
    pub expires_unix_ms: u64,
    /// Bytes this chunk will add to the client's charged usage when committed (the rule on
    /// `proto::subscription::Usage`: `k × shard bytes`; 0 when the client references it
    /// already).
    pub charged_bytes: u64,
}

impl PendingChunk {
    pub fn allows(&self, slot: &Slot) -> bool {
        self.slots.contains(slot)
    }
}

/// In-flight allocations by (client, chunk).
///
/// Lock order: a client's quota gate, then `inner` (never two gates at once; `gates` is held
/// only to look a gate up).
#[derive(Debug, Default)]
pub(crate) struct PendingAllocations {
    inner: Mutex<HashMap<(ClientId, ChunkId), PendingChunk>>,
    /// One lock per client with a quota decision in progress (one small entry per client
    /// that ever wrote under a quota; clients are few and long-lived).
    gates: Mutex<HashMap<ClientId, Arc<Mutex<()>>>>,
}

impl PendingAllocations {
    /// The lock that serializes `client`'s quota decisions (allocation and commit): hold it
    /// from reading the in-flight charges until the allocation is recorded or the commit is
    /// stored, so two requests of one client cannot both spend the same room.
    pub fn quota_gate(&self, client: ClientId) -> Arc<Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(client).or_default().clone()
    }

    /// Bytes charged by `client`'s live allocations, leaving out the chunks in `except`
    /// (those a request is about to allocate or commit again).
    pub fn charged_bytes(
        &self,
        client: ClientId,
        now_unix_ms: u64,
        except: &HashSet<ChunkId>,
    ) -> u64 {
        self.lock()
            .iter()
            .filter(|((c, id), p)| {
                *c == client && p.expires_unix_ms >= now_unix_ms && !except.contains(id)
            })
            .map(|(_, p)| p.charged_bytes)
            .fold(0u64, u64::saturating_add)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ClientId, ChunkId), PendingChunk>> {
        // A panic while holding the lock leaves a valid map (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an allocation. A second allocation of the same chunk with the same shape keeps
    /// the earlier slots too (a client retrying may still commit the first upload); its
    /// charge is the latest one computed.
    pub fn insert(&self, client: ClientId, chunk: ChunkId, alloc: PendingChunk) {
        let mut map = self.lock();
        match map.get_mut(&(client, chunk)) {
            Some(old)
                if (old.k, old.m, old.shard_bytes) == (alloc.k, alloc.m, alloc.shard_bytes) =>
            {
                for s in alloc.slots {
                    if !old.slots.contains(&s) {
                        old.slots.push(s);
                    }
                }
                old.expires_unix_ms = old.expires_unix_ms.max(alloc.expires_unix_ms);
                old.charged_bytes = alloc.charged_bytes;
            }
            _ => {
                map.insert((client, chunk), alloc);
            }
        }
    }

    /// Add replacement slots to an existing allocation; false when there is none.
    pub fn add_slots(
        &self,
        client: ClientId,
        chunk: ChunkId,
        slots: &[Slot],
        expires: u64,
    ) -> bool {
        let mut map = self.lock();
        let Some(p) = map.get_mut(&(client, chunk)) else {
            return false;
        };
        p.slots.extend_from_slice(slots);
        p.expires_unix_ms = p.expires_unix_ms.max(expires);
        true
    }

    /// The live allocation of a chunk to a client.
    pub fn get(&self, client: ClientId, chunk: ChunkId, now_unix_ms: u64) -> Option<PendingChunk> {
        self.lock()
            .get(&(client, chunk))
            .filter(|p| p.expires_unix_ms >= now_unix_ms)
            .cloned()
    }

    /// Of `chunks`, those without a live allocation to `client` (one lock, nothing cloned).
    pub fn missing(
        &self,
        client: ClientId,
        chunks: impl IntoIterator<Item = ChunkId>,
        now_unix_ms: u64,
    ) -> Vec<ChunkId> {
        let map = self.lock();
        chunks
            .into_iter()
            .filter(|c| {
                map.get(&(client, *c))
                    .is_none_or(|p| p.expires_unix_ms < now_unix_ms)
            })
            .collect()
    }

    /// Forget committed allocations.
    pub fn remove(&self, client: ClientId, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut map = self.lock();
        for c in chunks {
            map.remove(&(client, c));
        }
    }

    /// Drop expired entries and sum the bytes still in flight per node.
    pub fn in_flight_bytes(&self, now_unix_ms: u64) -> HashMap<NodeId, u64> {
        let mut map = self.lock();
        map.retain(|_, p| p.expires_unix_ms >= now_unix_ms);
        let mut out: HashMap<NodeId, u64> = HashMap::new();
        for p in map.values() {
            for s in &p.slots {
                *out.entry(s.node).or_default() += p.shard_bytes;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(i: u8, node: NodeId) -> Slot {
        Slot {
            index: i,
            node,
            packet: PacketName::random(),
        }
    }

    #[test]
    fn allocations_count_until_committed_or_expired() {
        let p = PendingAllocations::default();
        let (c, id, n) = (ClientId::random(), ChunkId::random(), NodeId::random());
        let s0 = slot(0, n);
        p.insert(
            c,
            id,
            PendingChunk {
                k: 1,
                m: 0,
                shard_bytes: 10,
                slots: vec![s0],
                expires_unix_ms: 100,
                charged_bytes: 10,
            },
        );
        assert_eq!(p.in_flight_bytes(50).get(&n), Some(&10));
        assert!(p.get(c, id, 50).unwrap().allows(&s0));
        assert!(p.get(ClientId::random(), id, 50).is_none());
        let s1 = slot(0, NodeId::random());
        assert!(p.add_slots(c, id, &[s1], 200));
        assert!(p.get(c, id, 150).unwrap().allows(&s1));
        assert!(!p.add_slots(c, ChunkId::random(), &[s1], 200));
        assert!(
            p.in_flight_bytes(201).is_empty(),
            "expired entries are dropped"
        );
        p.insert(
            c,
            id,
            PendingChunk {
                k: 1,
                m: 0,
                shard_bytes: 10,
                slots: vec![s0],
                expires_unix_ms: 300,
                charged_bytes: 10,
            },
        );
        p.remove(c, [id]);
        assert!(p.get(c, id, 0).is_none());
    }

    fn charging(bytes: u64, expires_unix_ms: u64) -> PendingChunk {
        PendingChunk {
            k: 2,
            m: 1,
            shard_bytes: bytes / 2,
            slots: vec![slot(0, NodeId::random())],
            expires_unix_ms,
            charged_bytes: bytes,
        }
    }

    #[test]
    fn charges_are_per_client_until_committed_or_expired() {
        let p = PendingAllocations::default();
        let (a, b) = (ClientId::random(), ClientId::random());
        let (c1, c2, c3) = (ChunkId::random(), ChunkId::random(), ChunkId::random());
        let none = HashSet::new();
        p.insert(a, c1, charging(100, 1_000));
        p.insert(a, c2, charging(40, 2_000));
        p.insert(b, c3, charging(7, 2_000));
        assert_eq!(p.charged_bytes(a, 500, &none), 140);
        assert_eq!(p.charged_bytes(b, 500, &none), 7);
        assert_eq!(p.charged_bytes(a, 500, &HashSet::from([c1])), 40);
        // A retried allocation of the same chunk is charged once, at its latest charge.
        p.insert(a, c2, charging(40, 3_000));
        assert_eq!(p.charged_bytes(a, 500, &none), 140);
        // Expiry releases c1; commit (remove) releases c2.
        assert_eq!(p.charged_bytes(a, 1_001, &none), 40);
        p.remove(a, [c2]);
        assert_eq!(p.charged_bytes(a, 0, &none), 100);
        assert_eq!(p.charged_bytes(b, 0, &none), 7);
        // One gate per client.
        assert!(Arc::ptr_eq(&p.quota_gate(a), &p.quota_gate(a)));
        assert!(!Arc::ptr_eq(&p.quota_gate(a), &p.quota_gate(b)));
    }
}
