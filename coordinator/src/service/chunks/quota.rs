//! The source storage allocation (F16) at write time, with uploads in flight.
//!
//! The rule (on `proto::subscription::Usage`): a client is charged `k × packet bytes` once
//! per distinct chunk it references. An allocation charges its chunks at once, in
//! `PendingAllocations`, until they are committed (the store then charges them for good) or
//! their orders expire; a request is refused with `QuotaExceeded` when
//! `committed + in flight + needed > quota`, so several files or batches of one client in
//! flight together cannot overshoot the quota before they commit.
//!
//! Allocations and commits of one client under a quota are serialized by its quota gate, so
//! two of them never spend the same room; other clients, and clients without a quota, do not
//! wait for each other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use gridback_proto::coord_api::AllocateChunks;
use gridback_proto::subscription::Subscription;
use gridback_proto::units::format_size;
use gridback_proto::{ChunkId, ClientId, ErrorCode, WireError};
use tracing::warn;

use super::super::{Inner, Reply, store_err};
use crate::erasure::shard_bytes;
use crate::store::{StoreError, quota_message};

/// A client's quota gate, when it has a quota (see the module doc).
pub(super) struct QuotaGate(Option<Arc<Mutex<()>>>);

impl QuotaGate {
    pub(super) fn of(inner: &Inner, client: ClientId, sub: &Subscription) -> Self {
        Self(
            sub.limits
                .quota_bytes
                .map(|_| inner.pending.quota_gate(client)),
        )
    }

    /// Hold the gate (nothing to hold without a quota).
    pub(super) fn hold(&self) -> Option<MutexGuard<'_, ()>> {
        // The gate guards no data: a panic while it was held leaves nothing half-done.
        self.0
            .as_deref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The quota refusal: committed `used` plus `in_flight` (allocated, not yet committed) and
/// `needed` more exceed `quota`.
fn refusal(client: &ClientId, used: u64, in_flight: u64, quota: u64, needed: u64) -> WireError {
    let mut msg = quota_message(client, used.saturating_add(in_flight), quota, needed);
    if in_flight > 0 {
        msg.push_str(&format!(
            " ({} of the used bytes are uploads not committed yet)",
            format_size(in_flight)
        ));
    }
    warn!(client = %client, "write refused: {msg}");
    WireError::new(ErrorCode::QuotaExceeded, msg)
}

/// A commit's quota: the store checks the commit's newly charged references against what
/// the client's allocations leave free, this batch's own uploads included (they become
/// committed charges in the same transaction).
#[derive(Debug, Clone, Copy)]
pub(super) struct CommitQuota {
    quota: u64,
    in_flight: u64,
}

impl CommitQuota {
    /// The bound the store enforces on committed usage plus new references.
    pub(super) fn for_store(self) -> u64 {
        self.quota.saturating_sub(self.in_flight)
    }

    /// A store failure as the client sees it: a quota refusal names the real quota.
    pub(super) fn refusal(self, client: &ClientId, e: StoreError) -> WireError {
        match e {
            StoreError::QuotaExceeded { used, needed, .. } => {
                refusal(client, used, self.in_flight, self.quota, needed)
            }
            e => store_err(e),
        }
    }
}

impl Inner {
    /// What each chunk of an allocation will charge the client when committed: `k × packet
    /// bytes`, nothing for a chunk it references already.
    pub(super) fn charges(
        &self,
        client: ClientId,
        a: &AllocateChunks,
        k: u8,
    ) -> Reply<HashMap<ChunkId, u64>> {
        let ids: Vec<ChunkId> = a.chunks.iter().map(|c| c.id).collect();
        let referenced = self
            .store
            .chunk_refs_of_client(&client, &ids)
            .map_err(store_err)?;
        Ok(a.chunks
            .iter()
            .zip(referenced)
            .map(|(c, r)| {
                let charge = if r {
                    0
                } else {
                    u64::from(k).saturating_mul(shard_bytes(c.blob_bytes, k))
                };
                (c.id, charge)
            })
            .collect())
    }

    /// Refuse an allocation whose `charges` would push the client's committed plus
    /// in-flight charges past its quota. The caller holds the client's quota gate.
    pub(super) fn check_quota(
        &self,
        client: ClientId,
        sub: &Subscription,
        charges: &HashMap<ChunkId, u64>,
        now: u64,
    ) -> Reply<()> {
        let Some(quota) = sub.limits.quota_bytes else {
            return Ok(());
        };
        // This batch's chunks are charged below, not as earlier allocations of theirs.
        let batch: HashSet<ChunkId> = charges.keys().copied().collect();
        // In flight first, then committed: a commit landing in between is counted twice
        // (a refusal at worst), never missed.
        let in_flight = self.pending.charged_bytes(client, now, &batch);
        let used = self.store.usage(&client).map_err(store_err)?.charged_bytes;
        let needed = charges.values().copied().fold(0u64, u64::saturating_add);
        if needed > 0 && used.saturating_add(in_flight).saturating_add(needed) > quota {
            return Err(refusal(&client, used, in_flight, quota, needed));
        }
        Ok(())
    }

    /// The quota a commit is checked against (`None`: no quota). The caller holds the
    /// client's quota gate.
    pub(super) fn commit_quota(
        &self,
        client: ClientId,
        sub: &Subscription,
        now: u64,
    ) -> Option<CommitQuota> {
        sub.limits.quota_bytes.map(|quota| CommitQuota {
            quota,
            in_flight: self.pending.charged_bytes(client, now, &HashSet::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use gridback_proto::coord_api::{
        Allocation, ChunkAlloc, ChunkCommit, CommitChunks, Committed, NodeHeartbeat,
        PacketPlacement,
    };
    use gridback_proto::subscription::Limits;
    use gridback_proto::{CertFingerprint, Location, NodeId, now_unix_ms};
    use tempfile::TempDir;

    use super::*;
    use crate::init::{DataDirLayout, GridSecrets, init_data_dir};
    use crate::service::{CoordService, Settings};
    use crate::store::{ClientRecord, MetaStore, NewLogEntry, NewMember, NodeRecord, RedbStore};

    /// Blob size of every test chunk; with k = 1 a chunk charges `CHARGE` bytes.
    const BLOB: u64 = 1000;
    const CHARGE: u64 = 1000;

    struct Grid {
        _dir: TempDir,
        inner: Arc<Inner>,
        clients: Vec<(ClientId, CertFingerprint)>,
    }

    fn log(kind: &'static str) -> NewLogEntry {
        NewLogEntry {
            client: None,
            node: None,
            kind,
            detail: String::new(),
        }
    }

    /// A coordinator over a real redb store with one node (k = 1, m = 0) and two clients,
    /// each with an open snapshot `s`.
    fn grid(order_ttl: Duration) -> Grid {
        let dir = tempfile::tempdir().unwrap();
        init_data_dir(dir.path()).unwrap();
        let secrets = GridSecrets::load(dir.path()).unwrap();
        let db = DataDirLayout::new(dir.path()).meta_db();
        let store: Arc<dyn MetaStore> = Arc::new(RedbStore::open(&db).unwrap());
        let settings = Settings {
            erasure_k: 1,
            erasure_m: 0,
            node_timeout: Duration::from_secs(60),
            order_ttl,
        };
        let addr = "127.0.0.1:1".parse().unwrap();
        let svc = CoordService::new(
            store.clone(),
            secrets,
            settings,
            Subscription::default(),
            addr,
        );
        let inner = svc.inner.clone();
        let now = now_unix_ms();
        let node = NodeId::random();
        let rec = NodeRecord {
            label: "n0".into(),
            addr: String::new(),
            capacity_bytes: 0,
            used_bytes: 0,
            packet_count: 0,
            pid: 0,
            last_heartbeat_unix_ms: 0,
            joined_unix_ms: now,
        };
        let fp = CertFingerprint([1; 32]);
        store
            .register(&fp, &NewMember::Node(node, rec), &log("node.join"))
            .unwrap();
        let beat = NodeHeartbeat {
            advertise_addr: "127.0.0.1:9".into(),
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            packet_count: 0,
            pid: 1,
            location: Location::new("r", "z", "h"),
        };
        inner.heartbeat(node, beat).unwrap();
        let clients = (2u8..4)
            .map(|i| {
                let (id, fp) = (ClientId::random(), CertFingerprint([i; 32]));
                let rec = ClientRecord {
                    label: format!("c{i}"),
                    joined_unix_ms: now,
                    last_seen_unix_ms: now,
                    pid: 0,
                    stored_bytes: 0,
                };
                store
                    .register(&fp, &NewMember::Client(id, rec), &log("client.join"))
                    .unwrap();
                store.snapshot_create(&id, "s", None, now).unwrap();
                (id, fp)
            })
            .collect();
        Grid {
            _dir: dir,
            inner,
            clients,
        }
    }

    fn quota(bytes: Option<u64>) -> Subscription {
        Subscription {
            limits: Limits {
                quota_bytes: bytes,
                ..Limits::default()
            },
            ..Subscription::default()
        }
    }

    impl Grid {
        fn alloc(&self, c: usize, sub: &Subscription, id: ChunkId) -> Reply<Allocation> {
            let (client, fp) = self.clients[c];
            let a = AllocateChunks {
                chunks: vec![ChunkAlloc {
                    id,
                    blob_bytes: BLOB,
                }],
                exclude: vec![],
            };
            let mut out = self.inner.allocate(client, fp, sub, a)?;
            assert_eq!(out.chunks.len(), 1);
            Ok(out.chunks.remove(0))
        }

        fn commit(
            &self,
            c: usize,
            sub: &Subscription,
            chunks: &[&Allocation],
            refs: &[ChunkId],
        ) -> Reply<Committed> {
            let chunks = chunks
                .iter()
                .map(|a| ChunkCommit {
                    id: a.id,
                    k: a.k,
                    m: a.m,
                    shard_bytes: a.shard_bytes,
                    packets: a
                        .targets
                        .iter()
                        .map(|t| PacketPlacement {
                            index: t.index,
                            node: t.node,
                            packet: t.order.order.packet,
                            checksum: [0; 32],
                        })
                        .collect(),
                })
                .collect();
            let c2 = CommitChunks {
                snapshot: "s".into(),
                chunks,
                refs: refs.to_vec(),
            };
            self.inner.commit(self.clients[c].0, sub, c2)
        }

        fn in_flight(&self, c: usize) -> u64 {
            let client = self.clients[c].0;
            self.inner
                .pending
                .charged_bytes(client, now_unix_ms(), &HashSet::new())
        }

        fn used(&self, c: usize) -> u64 {
            self.inner
                .store
                .usage(&self.clients[c].0)
                .unwrap()
                .charged_bytes
        }
    }

    fn refused(r: Reply<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e:?}");
        e.message
    }

    /// Bug: the quota was checked against committed usage only, so two batches of one
    /// client allocated before either committed could together overshoot it.
    #[test]
    fn allocations_in_flight_count_against_the_quota_until_committed() {
        let g = grid(Duration::from_secs(60));
        let sub = quota(Some(CHARGE * 3 / 2));
        let (c1, c2, c3) = (ChunkId::random(), ChunkId::random(), ChunkId::random());
        let a1 = g.alloc(0, &sub, c1).unwrap();
        assert_eq!(g.in_flight(0), CHARGE);
        let msg = refused(g.alloc(0, &sub, c2));
        assert!(msg.contains("not committed yet"), "{msg}");
        // A retried allocation of the same chunk is charged once.
        g.alloc(0, &sub, c1).unwrap();
        assert_eq!(g.in_flight(0), CHARGE);
        // Commit moves the charge from in flight to committed usage.
        g.commit(0, &sub, &[&a1], &[]).unwrap();
        assert_eq!((g.in_flight(0), g.used(0)), (0, CHARGE));
        let msg = refused(g.alloc(0, &sub, c2));
        assert!(!msg.contains("not committed yet"), "{msg}");

        // Room for one more: c2 in flight. Another client (no quota) stores c3; a commit
        // referencing c3 would fit committed usage alone, but not with c2 in flight.
        let sub = quota(Some(CHARGE * 2));
        let a2 = g.alloc(0, &sub, c2).unwrap();
        let free = quota(None);
        let a3 = g.alloc(1, &free, c3).unwrap();
        g.commit(1, &free, &[&a3], &[]).unwrap();
        let msg = refused(g.commit(0, &sub, &[], &[c3]));
        assert!(msg.contains("not committed yet"), "{msg}");
        assert_eq!((g.in_flight(0), g.used(0)), (CHARGE, CHARGE));
        // The upload itself commits: its room was held since allocation.
        g.commit(0, &sub, &[&a2], &[]).unwrap();
        assert_eq!((g.in_flight(0), g.used(0)), (0, 2 * CHARGE));
        // Clients without a quota still have their charges tracked (and released).
        assert_eq!((g.in_flight(1), g.used(1)), (0, CHARGE));
    }

    #[test]
    fn expired_allocations_release_their_charge() {
        let g = grid(Duration::from_millis(1));
        let sub = quota(Some(CHARGE * 3 / 2));
        let a1 = g.alloc(0, &sub, ChunkId::random()).unwrap();
        // Poll until the first allocation's orders (1 ms) lapse; until then c2 is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        let c2 = ChunkId::random();
        loop {
            match g.alloc(0, &sub, c2) {
                Ok(_) => break,
                Err(e) if e.code == ErrorCode::QuotaExceeded && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("c2 still refused after the first allocation expired: {e:?}"),
            }
        }
        assert_eq!(g.used(0), 0);
        // The expired allocation can no longer be committed, so it is never charged.
        let e = g.commit(0, &sub, &[&a1], &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    }
}
