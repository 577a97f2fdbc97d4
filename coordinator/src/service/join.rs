//! Membership requests: joining with the token, node heartbeats, client greetings.

use gridback_proto::coord_api::{
    ClientHello, ClientWelcome, HeartbeatAck, Join, Joined, NodeHeartbeat, NodeState, Role,
};
use gridback_proto::tls::{client_server_name, node_server_name};
use gridback_proto::transport::Peer;
use gridback_proto::{CertFingerprint, ClientId, ErrorCode, NodeId, WireError, now_unix_ms};
use tracing::{info, warn};

use super::{Inner, Reply, bad_request, store_err, unauthorized};
use crate::membership::node_state;
use crate::store::{CertRecord, ClientRecord, NewLogEntry, NewMember, NodeRecord};

/// Longest label accepted at join: a host name with room to spare.
const MAX_LABEL_BYTES: usize = 255;

/// Compare secrets in constant time: BLAKE3 `Hash` equality is constant-time, and hashing
/// first hides the length too.
fn token_matches(given: &str, expected: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(expected.trim().as_bytes())
}

/// `host:port` with a numeric port.
fn valid_addr(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

impl Inner {
    pub(super) fn join(&self, peer: &Peer, j: Join) -> Reply<Joined> {
        if !token_matches(j.token.trim(), &self.secrets.join_token) {
            warn!(peer = %peer.addr, role = ?j.role, "join refused: bad token");
            return Err(unauthorized("join refused: invalid join token"));
        }
        if j.label.len() > MAX_LABEL_BYTES || j.label.contains('\0') {
            return Err(bad_request(format!(
                "label must be at most {MAX_LABEL_BYTES} bytes, no NUL"
            )));
        }
        let now = now_unix_ms();
        let (id, server_name, member, kind) = match j.role {
            Role::Node => {
                let id = NodeId::random();
                let rec = NodeRecord {
                    label: j.label.clone(),
                    addr: String::new(),
                    capacity_bytes: 0,
                    used_bytes: 0,
                    packet_count: 0,
                    pid: 0,
                    last_heartbeat_unix_ms: 0,
                    joined_unix_ms: now,
                };
                (
                    id.0,
                    node_server_name(id),
                    NewMember::Node(id, rec),
                    "node.join",
                )
            }
            Role::Admin => {
                warn!(peer = %peer.addr, "join refused: admin role requested");
                return Err(unauthorized(
                    "admin certificates are issued only by the coordinator itself \
                     (see DATA_DIR/admin)",
                ));
            }
            Role::Client => {
                let id = ClientId::random();
                let rec = ClientRecord {
                    label: j.label.clone(),
                    joined_unix_ms: now,
                    last_seen_unix_ms: now,
                    pid: 0,
                    stored_bytes: 0,
                };
                (
                    id.0,
                    client_server_name(id),
                    NewMember::Client(id, rec),
                    "client.join",
                )
            }
        };
        let cert = self
            .secrets
            .ca
            .issue_from_csr(&j.csr_der, &server_name, &j.label)
            .map_err(|e| bad_request(format!("cannot issue a certificate: {e}")))?;
        let fp = CertFingerprint::of_der(&cert);
        let entry = NewLogEntry {
            client: matches!(member, NewMember::Client(..)).then_some(ClientId(id)),
            node: matches!(member, NewMember::Node(..)).then_some(NodeId(id)),
            kind,
            detail: format!("label={} from={}", j.label, peer.addr),
        };
        self.store
            .register(&fp, &member, &entry)
            .map_err(store_err)?;
        if j.role == Role::Node {
            self.views.changed();
        }
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fp, CertRecord { role: j.role, id });
        info!(role = ?j.role, id = %hex::encode(id), label = %j.label, "member joined");
        Ok(Joined {
            role: j.role,
            id,
            grid: self.secrets.grid,
            cert_der: cert.to_vec(),
            ca_der: self.secrets.ca.cert_der().to_vec(),
            order_public_key: self.order_public_key.clone(),
        })
    }

    pub(super) fn heartbeat(&self, id: NodeId, h: NodeHeartbeat) -> Reply<HeartbeatAck> {
        if !valid_addr(&h.advertise_addr) {
            return Err(bad_request(format!(
                "advertise_addr {:?} is not host:port",
                h.advertise_addr
            )));
        }
        let now = now_unix_ms();
        let mut rec =
            self.store.node(&id).map_err(store_err)?.ok_or_else(|| {
                WireError::new(ErrorCode::NotFound, format!("node {id} is unknown"))
            })?;
        let was = node_state(&rec, now, self.settings.node_timeout);
        let previous = rec.last_heartbeat_unix_ms;
        let moved = rec.addr != h.advertise_addr;
        rec.addr = h.advertise_addr;
        rec.capacity_bytes = h.capacity_bytes;
        rec.used_bytes = h.used_bytes;
        rec.packet_count = h.packet_count;
        rec.pid = h.pid;
        rec.last_heartbeat_unix_ms = now;
        let entry = (was == NodeState::Down).then(|| {
            let detail = if previous == 0 {
                format!("label={} addr={} first heartbeat", rec.label, rec.addr)
            } else {
                format!(
                    "label={} addr={} back after {} ms",
                    rec.label,
                    rec.addr,
                    now.saturating_sub(previous)
                )
            };
            info!(node = %id, addr = %rec.addr, "node is up");
            NewLogEntry {
                client: None,
                node: Some(id),
                kind: "node.up",
                detail,
            }
        });
        self.store
            .update_node(&id, &rec, entry.as_ref())
            .map_err(store_err)?;
        let mut place = self.store.node_place(&id).map_err(store_err)?;
        let relocated = place.reported.as_ref() != Some(&h.location);
        if relocated {
            place.reported = Some(h.location);
            self.store
                .set_node_place(&id, &place, None)
                .map_err(store_err)?;
        }
        // Use, capacity and liveness go straight into the placement view; a new address or
        // location makes it rebuild.
        self.views.heartbeat(&id, &rec);
        if moved || relocated {
            self.views.changed();
        }
        Ok(HeartbeatAck {
            node: id,
            order_public_key: self.order_public_key.clone(),
            grid: self.secrets.grid,
            capacity_bytes: place.capacity_override,
            client_limits: self.client_limits()?,
        })
    }

    pub(super) fn hello(&self, id: ClientId, h: ClientHello) -> Reply<ClientWelcome> {
        let mut rec = self.store.client(&id).map_err(store_err)?.ok_or_else(|| {
            WireError::new(ErrorCode::NotFound, format!("client {id} is unknown"))
        })?;
        rec.pid = h.pid;
        rec.last_seen_unix_ms = now_unix_ms();
        self.store.update_client(&id, &rec).map_err(store_err)?;
        let mut place = self.store.client_place(&id).map_err(store_err)?;
        if place.reported.as_ref() != Some(&h.location) {
            place.reported = Some(h.location);
            self.store
                .set_client_place(&id, &place, None)
                .map_err(store_err)?;
        }
        Ok(ClientWelcome {
            client: id,
            grid: self.secrets.grid,
            erasure_k: self.settings.erasure_k,
            erasure_m: self.settings.erasure_m,
            terms: self.terms(id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_addr_checks() {
        assert!(token_matches("abc", "abc\n"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("", "abc"));
        assert!(valid_addr("127.0.0.1:7401"));
        assert!(valid_addr("[::1]:7401"));
        assert!(valid_addr("node-a.example:7401"));
        assert!(!valid_addr("127.0.0.1"));
        assert!(!valid_addr(":7401"));
        assert!(!valid_addr("127.0.0.1:0"));
    }
}
