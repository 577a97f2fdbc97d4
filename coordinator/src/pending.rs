//! Allocations handed out but not yet committed, kept in memory.
//!
//! A commit is accepted only for placements the coordinator allocated to that client, and
//! capacity accounting counts these in-flight packets so that a burst of allocations cannot
//! overfill a node before its next heartbeat. Entries expire with their orders; after a
//! coordinator restart, clients allocate again.

use std::collections::HashMap;
use std::sync::Mutex;

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
}

impl PendingChunk {
    pub fn allows(&self, slot: &Slot) -> bool {
        self.slots.contains(slot)
    }
}

/// In-flight allocations by (client, chunk).
#[derive(Debug, Default)]
pub(crate) struct PendingAllocations {
    inner: Mutex<HashMap<(ClientId, ChunkId), PendingChunk>>,
}

impl PendingAllocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ClientId, ChunkId), PendingChunk>> {
        // A panic while holding the lock leaves a valid map (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an allocation. A second allocation of the same chunk with the same shape keeps
    /// the earlier slots too (a client retrying may still commit the first upload).
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
            },
        );
        p.remove(c, [id]);
        assert!(p.get(c, id, 0).is_none());
    }
}
