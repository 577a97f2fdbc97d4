//! The non-transparent sequence (F2): the secret key and the opaque packet names. Allocation
//! places chunks with [`crate::placement`] (a keyed ring, fast on large grids, with proximity
//! rules); the rendezvous [`sequence`] below is the simple reference kept for comparison.
//!
//! That reference (not used to place data) is rendezvous (highest-random-weight) hashing
//! where each node's weight for a chunk is `keyed_blake3(sequence_key, chunk || node)`; like
//! the ring it is deterministic for the coordinator, different for every chunk, and
//! unpredictable without the secret key, which never leaves the coordinator. Adding a node
//! moves only the chunks for which the new node wins, about `1/(N+1)` of them. Packet names come from a subkey of the same secret, so a
//! node cannot tell which of its packets belong to the same chunk.

use std::fmt;

use gridback_proto::{ChunkId, NodeId, PacketName};
use zeroize::Zeroize;

/// blake3 `derive_key` context for the packet-name subkey. Versioned: changing the scheme
/// means a new context, never a silent change of existing names.
const PACKET_NAME_CONTEXT: &str = "gridback packet name v1";

/// The coordinator's secret sequence key (32 bytes). Debug is redacted, there is no
/// `PartialEq`, and the bytes are zeroized on drop.
pub struct SequenceKey {
    bytes: [u8; 32],
    packet_subkey: [u8; 32],
}

impl SequenceKey {
    /// Length of the key in bytes.
    pub const LEN: usize = 32;

    /// Wrap raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let packet_subkey = blake3::derive_key(PACKET_NAME_CONTEXT, &bytes);
        Self {
            bytes,
            packet_subkey,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("invariant: the OS random source is available");
        Self::from_bytes(b)
    }

    /// The raw bytes, to persist in the data dir.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for SequenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SequenceKey(<redacted>)")
    }
}

impl Drop for SequenceKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
        self.packet_subkey.zeroize();
    }
}

/// A node that may receive a packet, as the placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCandidate {
    /// The node.
    pub id: NodeId,
    /// Whether its heartbeats are current.
    pub up: bool,
    /// Capacity left after its reported usage and in-flight allocations.
    pub free_bytes: u64,
}

/// The nodes that may take one more packet of `shard_bytes`: up, with room, not excluded.
pub fn eligible(
    nodes: &[NodeCandidate],
    shard_bytes: u64,
    exclude: &[NodeId],
) -> Vec<NodeCandidate> {
    nodes
        .iter()
        .filter(|n| n.up && n.free_bytes >= shard_bytes && !exclude.contains(&n.id))
        .copied()
        .collect()
}

fn weight(key: &SequenceKey, chunk: &ChunkId, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&key.bytes);
    h.update(chunk.as_bytes());
    h.update(node.as_bytes());
    *h.finalize().as_bytes()
}

/// The sequence of `n` distinct nodes for `chunk`, best first (fewer when fewer are eligible).
/// Every node in `eligible` is taken as usable: filter with [`eligible`] first.
pub fn sequence(
    key: &SequenceKey,
    chunk: &ChunkId,
    eligible: &[NodeCandidate],
    n: usize,
) -> Vec<NodeId> {
    let mut weighted: Vec<([u8; 32], NodeId)> = eligible
        .iter()
        .map(|c| (weight(key, chunk, &c.id), c.id))
        .collect();
    // Highest weight first; ties (astronomically unlikely) are broken by node id so the order
    // is total and deterministic. Duplicated candidates collapse into one.
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().take(n).map(|(_, id)| id).collect()
}

/// The opaque name of packet `index` of `chunk` on whichever node holds it.
pub fn packet_name(key: &SequenceKey, chunk: &ChunkId, index: u8) -> PacketName {
    let mut h = blake3::Hasher::new_keyed(&key.packet_subkey);
    h.update(chunk.as_bytes());
    h.update(&[index]);
    PacketName(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn nodes(n: usize) -> Vec<NodeCandidate> {
        (0..n)
            .map(|i| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                NodeCandidate {
                    id: NodeId(b),
                    up: true,
                    free_bytes: 1 << 30,
                }
            })
            .collect()
    }

    fn chunk(i: u64) -> ChunkId {
        ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn debug_is_redacted() {
        let k = SequenceKey::from_bytes([7; 32]);
        assert_eq!(format!("{k:?}"), "SequenceKey(<redacted>)");
    }

    #[test]
    fn eligible_drops_down_full_and_excluded_nodes() {
        let mut ns = nodes(5);
        ns[0].up = false;
        ns[1].free_bytes = 99;
        let excluded = ns[2].id;
        let e = eligible(&ns, 100, &[excluded]);
        let ids: Vec<_> = e.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![ns[3].id, ns[4].id]);
        // A node with exactly the room needed is eligible.
        ns[1].free_bytes = 100;
        assert_eq!(eligible(&ns, 100, &[]).len(), 4);
    }

    #[test]
    fn packet_names_differ_per_index_chunk_and_key() {
        let k = SequenceKey::from_bytes([1; 32]);
        let k2 = SequenceKey::from_bytes([2; 32]);
        let c = chunk(1);
        let names: HashSet<_> = (0..6).map(|i| packet_name(&k, &c, i)).collect();
        assert_eq!(names.len(), 6);
        assert_eq!(packet_name(&k, &c, 0), packet_name(&k, &c, 0));
        assert_ne!(packet_name(&k, &c, 0), packet_name(&k2, &c, 0));
        assert_ne!(packet_name(&k, &c, 0), packet_name(&k, &chunk(2), 0));
        // The name is not the chunk id or a plain hash of it.
        assert_ne!(packet_name(&k, &c, 0).0, c.0);
    }

    #[test]
    fn sequences_differ_between_chunks() {
        let k = SequenceKey::from_bytes([3; 32]);
        let ns = nodes(12);
        let distinct: HashSet<Vec<NodeId>> =
            (0..50).map(|i| sequence(&k, &chunk(i), &ns, 6)).collect();
        assert!(
            distinct.len() > 40,
            "only {} distinct sequences of 50",
            distinct.len()
        );
    }

    #[test]
    fn adding_a_node_moves_about_one_in_n_plus_one() {
        let k = SequenceKey::from_bytes([9; 32]);
        let before = nodes(9);
        let after = nodes(10);
        let total = 4000u64;
        let moved = (0..total)
            .filter(|&i| sequence(&k, &chunk(i), &before, 1) != sequence(&k, &chunk(i), &after, 1))
            .count() as f64;
        let expected = total as f64 / 10.0;
        assert!(
            (moved - expected).abs() < expected * 0.25,
            "moved {moved}, expected about {expected}"
        );
    }

    proptest! {
        #[test]
        fn n_distinct_deterministic_nodes(
            key in any::<[u8; 32]>(), c in any::<[u8; 32]>(), count in 0usize..20, n in 0usize..10,
        ) {
            let k = SequenceKey::from_bytes(key);
            let ns = nodes(count);
            let s = sequence(&k, &ChunkId(c), &ns, n);
            prop_assert_eq!(s.len(), n.min(count));
            let set: HashSet<_> = s.iter().collect();
            prop_assert_eq!(set.len(), s.len());
            prop_assert!(s.iter().all(|id| ns.iter().any(|c| c.id == *id)));
            prop_assert_eq!(&s, &sequence(&SequenceKey::from_bytes(key), &ChunkId(c), &ns, n));
            // A prefix property: asking for fewer nodes gives the head of the sequence.
            let shorter = sequence(&k, &ChunkId(c), &ns, n.saturating_sub(1));
            prop_assert_eq!(&s[..shorter.len()], &shorter[..]);
        }

        #[test]
        fn different_key_gives_different_sequence(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assume!(a != b);
            let ns = nodes(16);
            // Over a few chunks, two keys agreeing on every full order is vanishingly unlikely.
            let differs = (0..4).any(|i| {
                sequence(&SequenceKey::from_bytes(a), &chunk(i), &ns, 16)
                    != sequence(&SequenceKey::from_bytes(b), &chunk(i), &ns, 16)
            });
            prop_assert!(differs);
        }

        #[test]
        fn full_nodes_never_chosen(
            key in any::<[u8; 32]>(), c in any::<[u8; 32]>(), full in proptest::collection::vec(any::<bool>(), 8),
        ) {
            let mut ns = nodes(8);
            for (n, f) in ns.iter_mut().zip(&full) {
                if *f { n.free_bytes = 10; }
            }
            let e = eligible(&ns, 11, &[]);
            let s = sequence(&SequenceKey::from_bytes(key), &ChunkId(c), &e, 6);
            for id in &s {
                let n = ns.iter().find(|n| n.id == *id).unwrap();
                prop_assert!(n.free_bytes >= 11);
            }
            prop_assert_eq!(s.len(), full.iter().filter(|f| !**f).count().min(6));
        }
    }
}
