//! `ClientGates`: the per-client limits a node enforces (F17), keyed by the client's
//! certificate fingerprint and refreshed from every heartbeat answer.
//!
//! Each client with an entry gets a gate: one token bucket per direction (packet bytes of
//! puts count as the client's upload, packet bytes of gets as its download), a resizable
//! limit on its concurrent transfers, and a flag that refuses new packets when its
//! subscription does not allow writes.
//!
//! How this agrees with the client's own metering (`gridback_fs::node_client`): the client
//! charges its data, `k / (k + m)` of each packet it puts, and puts each packet of a chunk
//! on a different node, so a client keeping its limit sends any one node at most `1 / k` of
//! its rate (all of it only with k = 1, replicas). The node cannot tell data from
//! parity, so it holds each client to its full rate in packet bytes *per node*: a ceiling a
//! well-behaved client never reaches, which stops a client that ignores its limit from
//! pushing more than that rate into any node. Downloads are metered the same way on both
//! ends (whole packets). Clients without an entry are unlimited. A gate is
//! updated in place when its limits change, so transfers already waiting pick up the new
//! values at once; a client dropped from the list keeps its gate object (held by requests
//! in flight) but new requests find no gate and run unlimited.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use gridback_proto::coord_api::ClientLimits;
use gridback_proto::subscription::Limits;
use gridback_proto::{CertFingerprint, ErrorCode, WireError};
use tracing::info;

use gridback_proto::throttle::{LimitPermit, ResizableLimit, TokenBucket};

/// One client's gate.
#[derive(Debug, Default)]
pub struct ClientGate {
    /// Bytes the client sends (puts).
    pub up: TokenBucket,
    /// Bytes the client receives (gets).
    pub down: TokenBucket,
    /// Concurrent transfers.
    pub transfers: ResizableLimit,
    writes_allowed: AtomicBool,
}

impl ClientGate {
    fn apply(&self, limits: &Limits, writes_allowed: bool) {
        self.up.set_rate(limits.bandwidth_up);
        self.down.set_rate(limits.bandwidth_down);
        self.transfers
            .set_limit(limits.transfers.map(|t| t as usize));
        self.writes_allowed.store(writes_allowed, Ordering::SeqCst);
    }

    /// Whether the client may store new packets.
    pub fn writes_allowed(&self) -> bool {
        self.writes_allowed.load(Ordering::SeqCst)
    }
}

/// What a transfer holds while it runs: its transfer permit (if the client is limited).
#[derive(Debug)]
pub struct Admission {
    gate: Option<Arc<ClientGate>>,
    _permit: Option<LimitPermit>,
}

impl Admission {
    /// Wait for `bytes` of the client's upload budget (no-op when unlimited).
    pub async fn upload(&self, bytes: u64) {
        if let Some(g) = &self.gate {
            g.up.acquire(bytes).await;
        }
    }

    /// Wait for `bytes` of the client's download budget (no-op when unlimited).
    pub async fn download(&self, bytes: u64) {
        if let Some(g) = &self.gate {
            g.down.acquire(bytes).await;
        }
    }
}

/// The gates of every limited client. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct ClientGates {
    inner: Arc<RwLock<HashMap<CertFingerprint, Arc<ClientGate>>>>,
}

impl ClientGates {
    /// Replace the set of limited clients with `list` (from a heartbeat answer).
    pub fn update(&self, list: &[ClientLimits]) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        let mut next = HashMap::with_capacity(list.len());
        for entry in list {
            let gate = map.remove(&entry.client).unwrap_or_default();
            gate.apply(&entry.limits, entry.writes_allowed);
            next.insert(entry.client, gate);
        }
        if next.len() != before {
            info!(limited_clients = next.len(), "client limits updated");
        }
        *map = next;
    }

    /// The gate of `client`, if it is limited.
    pub fn gate(&self, client: &CertFingerprint) -> Option<Arc<ClientGate>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(client)
            .cloned()
    }

    /// Admit a transfer for `client`: refuses a write when its subscription forbids writes,
    /// then waits for one of its transfer slots.
    pub async fn admit(
        &self,
        client: &CertFingerprint,
        write: bool,
    ) -> Result<Admission, WireError> {
        let Some(gate) = self.gate(client) else {
            return Ok(Admission {
                gate: None,
                _permit: None,
            });
        };
        if write && !gate.writes_allowed() {
            return Err(WireError::new(
                ErrorCode::Suspended,
                "this client's subscription does not allow new writes (suspended or \
                 expired); reads are still served",
            ));
        }
        let permit = gate.transfers.acquire().await;
        Ok(Admission {
            gate: Some(gate),
            _permit: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fp: u8, limits: Limits, writes_allowed: bool) -> ClientLimits {
        ClientLimits {
            client: CertFingerprint([fp; 32]),
            limits,
            writes_allowed,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gates_follow_updates_and_unknown_clients_are_free() {
        let gates = ClientGates::default();
        let a = CertFingerprint([1; 32]);
        assert!(
            gates.admit(&a, true).await.is_ok(),
            "unknown client refused"
        );
        let limits = Limits {
            transfers: Some(1),
            bandwidth_up: Some(1000),
            ..Limits::default()
        };
        gates.update(&[entry(1, limits, false)]);
        let e = gates.admit(&a, true).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Suspended);
        let read = gates.admit(&a, false).await.unwrap();
        let g = gates.gate(&a).unwrap();
        assert_eq!(g.transfers.in_use(), 1);
        assert_eq!(g.up.rate(), Some(1000));
        // Writes allowed again, same gate object (waiters keep it).
        gates.update(&[entry(1, limits, true)]);
        assert!(Arc::ptr_eq(&g, &gates.gate(&a).unwrap()));
        drop(read);
        assert!(gates.admit(&a, true).await.is_ok());
        // Dropped from the list: unlimited again.
        gates.update(&[]);
        assert!(gates.gate(&a).is_none());
    }
}
