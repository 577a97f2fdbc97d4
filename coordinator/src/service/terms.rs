//! Subscriptions (F15) and the terms a client works under (F16, F17): state checks on every
//! write, expiry noticed once in the backup log, the limits nodes enforce, and the operator's
//! subscription requests.

use gridback_proto::admin_api::{
    AdminSubscriptionSet, AdminSubscriptionSuspend, ClientDetail, ClientProfile,
};
use gridback_proto::coord_api::ClientLimits;
use gridback_proto::coord_api::Role;
use gridback_proto::location::{Location, Proximity};
use gridback_proto::subscription::{ClientTerms, Subscription, SubscriptionState};
use gridback_proto::transport::Peer;
use gridback_proto::units::format_size;
use gridback_proto::{CertFingerprint, ClientId, ErrorCode, WireError, now_unix_ms};
use tracing::{info, warn};

use super::{Inner, Reply, bad_request, store_err};
use crate::store::{ClientRecord, NewLogEntry, SubscriptionRecord};

/// Names accepted in [`AdminSubscriptionSet::unset`].
const UNSET_NAMES: [&str; 10] = [
    "quota",
    "bandwidth-up",
    "bandwidth-down",
    "threads",
    "transfers",
    "expires",
    "packet-min",
    "packet-max",
    "backup-min",
    "backup-max",
];

/// The one wording of a refused write under a suspended or expired subscription.
pub fn suspended_message(client: &ClientId, state: SubscriptionState) -> String {
    let action = match state {
        SubscriptionState::Expired => "extend",
        _ => "resume",
    };
    format!(
        "subscription of client {client} is {}: browsing and restore still work; ask the \
         operator to {action} it",
        state.as_str()
    )
}

impl Inner {
    pub(super) fn client_record(&self, id: &ClientId) -> Reply<ClientRecord> {
        self.store
            .client(id)
            .map_err(store_err)?
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("client {id} is unknown")))
    }

    /// The stored subscription, or the default one for clients without a record.
    pub(super) fn subscription_record(&self, client: &ClientId) -> Reply<SubscriptionRecord> {
        Ok(self
            .store
            .subscription(client)
            .map_err(store_err)?
            .unwrap_or_else(|| SubscriptionRecord {
                subscription: self.default_subscription.clone(),
                expiry_logged: false,
            }))
    }

    /// The subscription now, writing `subscription.expired` to the log the first time an
    /// expiry is noticed.
    pub(super) fn subscription_now(&self, client: &ClientId) -> Reply<(Subscription, u64)> {
        let now = now_unix_ms();
        let mut rec = self.subscription_record(client)?;
        let s = &rec.subscription;
        if !s.suspended && s.state(now) == SubscriptionState::Expired && !rec.expiry_logged {
            rec.expiry_logged = true;
            let entry = NewLogEntry {
                client: Some(*client),
                node: None,
                kind: "subscription.expired",
                detail: format!(
                    "plan={} expired at {} ms",
                    s.plan,
                    s.expires_unix_ms.unwrap_or_default()
                ),
            };
            self.store
                .set_subscription(client, &rec, &entry)
                .map_err(store_err)?;
            info!(client = %client, "subscription expired");
        }
        Ok((rec.subscription, now))
    }

    /// A client allowed to write: its subscription must be active.
    pub(super) fn writer(&self, peer: &Peer) -> Reply<(ClientId, CertFingerprint, Subscription)> {
        let (id, fp) = self.client(peer)?;
        let (sub, now) = self.subscription_now(&id)?;
        let state = sub.state(now);
        if !state.allows_writes() {
            let msg = suspended_message(&id, state);
            warn!(client = %id, state = state.as_str(), "write refused: {msg}");
            return Err(WireError::new(ErrorCode::Suspended, msg));
        }
        Ok((id, fp, sub))
    }

    /// Effective location of a client.
    pub(super) fn client_location(&self, id: &ClientId) -> Reply<Location> {
        Ok(self
            .store
            .client_place(id)
            .map_err(store_err)?
            .effective(&id.to_string()))
    }

    pub(super) fn terms(&self, client: ClientId) -> Reply<ClientTerms> {
        let (subscription, now) = self.subscription_now(&client)?;
        Ok(ClientTerms {
            client,
            state: subscription.state(now),
            subscription,
            usage: self.store.usage(&client).map_err(store_err)?,
            location: self.client_location(&client)?,
        })
    }

    /// Limits for every client certificate, for the nodes to enforce.
    pub(super) fn client_limits(&self) -> Reply<Vec<ClientLimits>> {
        let now = now_unix_ms();
        let mut out = Vec::new();
        for (fp, rec) in self.store.certs().map_err(store_err)? {
            if rec.role != Role::Client {
                continue;
            }
            let sub = self.subscription_record(&ClientId(rec.id))?.subscription;
            out.push(ClientLimits {
                client: fp,
                limits: sub.limits,
                writes_allowed: sub.state(now).allows_writes(),
            });
        }
        Ok(out)
    }

    pub(super) fn profile(&self, id: ClientId, rec: ClientRecord) -> Reply<ClientProfile> {
        let (sub, now) = self.subscription_now(&id)?;
        Ok(ClientProfile {
            id,
            label: rec.label,
            location: self.client_location(&id)?,
            joined_unix_ms: rec.joined_unix_ms,
            last_seen_unix_ms: rec.last_seen_unix_ms,
            plan: sub.plan.clone(),
            state: sub.state(now),
            usage: self.store.usage(&id).map_err(store_err)?,
            snapshot_count: self.store.snapshot_list(&id).map_err(store_err)?.len() as u64,
        })
    }

    pub(super) fn client_detail(&self, id: ClientId) -> Reply<ClientDetail> {
        let rec = self.client_record(&id)?;
        let profile = self.profile(id, rec)?;
        let subscription = self.subscription_record(&id)?.subscription;
        let cluster = self.store.proximity().map_err(store_err)?;
        Ok(ClientDetail {
            profile,
            effective_proximity: cluster.overlay(&subscription.proximity),
            subscription,
        })
    }

    pub(super) fn subscription_set(&self, r: AdminSubscriptionSet) -> Reply<ClientDetail> {
        self.client_record(&r.client)?;
        if let Some(bad) = r.unset.iter().find(|n| !UNSET_NAMES.contains(&n.as_str())) {
            return Err(bad_request(format!(
                "cannot unset {bad:?}: use one of {}",
                UNSET_NAMES.join(", ")
            )));
        }
        let mut rec = self.subscription_record(&r.client)?;
        let s = &mut rec.subscription;
        let mut changes = Vec::new();
        if let Some(p) = &r.plan {
            if p.is_empty() || p.len() > 64 {
                return Err(bad_request("plan name must be 1-64 bytes"));
            }
            s.plan = p.clone();
            changes.push(format!("plan={p}"));
        }
        let l = &mut s.limits;
        let size = |v: u64| format_size(v);
        let rate = |v: u64| format!("{}/s", format_size(v));
        set(
            &mut l.quota_bytes,
            r.quota_bytes,
            "quota",
            size,
            &mut changes,
        );
        set(
            &mut l.bandwidth_up,
            r.bandwidth_up,
            "bandwidth-up",
            rate,
            &mut changes,
        );
        set(
            &mut l.bandwidth_down,
            r.bandwidth_down,
            "bandwidth-down",
            rate,
            &mut changes,
        );
        set(
            &mut l.threads,
            r.threads,
            "threads",
            |v| v.to_string(),
            &mut changes,
        );
        set(
            &mut l.transfers,
            r.transfers,
            "transfers",
            |v| v.to_string(),
            &mut changes,
        );
        let p = &mut s.proximity;
        let d = |v: gridback_proto::location::Distance| v.to_string();
        set(
            &mut p.packet.min,
            r.packet_min,
            "packet-min",
            d,
            &mut changes,
        );
        set(
            &mut p.packet.max,
            r.packet_max,
            "packet-max",
            d,
            &mut changes,
        );
        set(
            &mut p.backup.min,
            r.backup_min,
            "backup-min",
            d,
            &mut changes,
        );
        set(
            &mut p.backup.max,
            r.backup_max,
            "backup-max",
            d,
            &mut changes,
        );
        let old_expiry = s.expires_unix_ms;
        set(
            &mut s.expires_unix_ms,
            r.expires_unix_ms,
            "expires",
            |v| format!("{v}ms"),
            &mut changes,
        );
        for name in &r.unset {
            match name.as_str() {
                "quota" => s.limits.quota_bytes = None,
                "bandwidth-up" => s.limits.bandwidth_up = None,
                "bandwidth-down" => s.limits.bandwidth_down = None,
                "threads" => s.limits.threads = None,
                "transfers" => s.limits.transfers = None,
                "expires" => s.expires_unix_ms = None,
                "packet-min" => s.proximity.packet.min = None,
                "packet-max" => s.proximity.packet.max = None,
                "backup-min" => s.proximity.backup.min = None,
                _ => s.proximity.backup.max = None,
            }
            changes.push(format!("unset {name}"));
        }
        if s.expires_unix_ms != old_expiry {
            rec.expiry_logged = false;
        }
        // A change of bounds that no placement can meet is refused before anything is
        // stored: the subscription's own, then what it makes of the cluster-wide rules.
        // (Other changes never fail on bounds stored before.)
        let touches_bounds = [r.packet_min, r.packet_max, r.backup_min, r.backup_max]
            .iter()
            .any(Option::is_some)
            || r.unset
                .iter()
                .any(|n| n.starts_with("packet-") || n.starts_with("backup-"));
        if touches_bounds {
            s.proximity
                .check_consistent()
                .map_err(|e| bad_request(e.to_string()))?;
            self.store
                .proximity()
                .map_err(store_err)?
                .overlay(&s.proximity)
                .check_consistent()
                .map_err(|e| {
                    bad_request(format!(
                        "with the cluster-wide rules (`admin placement show`): {e}"
                    ))
                })?;
        }
        let entry = NewLogEntry {
            client: Some(r.client),
            node: None,
            kind: "subscription.set",
            detail: if changes.is_empty() {
                "no change".into()
            } else {
                changes.join(" ")
            },
        };
        self.store
            .set_subscription(&r.client, &rec, &entry)
            .map_err(store_err)?;
        info!(client = %r.client, detail = %entry.detail, "subscription changed");
        self.client_detail(r.client)
    }

    pub(super) fn subscription_suspend(&self, r: AdminSubscriptionSuspend) -> Reply<ClientDetail> {
        self.client_record(&r.client)?;
        let mut rec = self.subscription_record(&r.client)?;
        rec.subscription.suspended = r.suspend;
        let (kind, what) = if r.suspend {
            ("subscription.suspend", "suspended: browse and restore only")
        } else {
            ("subscription.resume", "resumed: writes allowed")
        };
        let entry = NewLogEntry {
            client: Some(r.client),
            node: None,
            kind,
            detail: format!("plan={} {what}", rec.subscription.plan),
        };
        self.store
            .set_subscription(&r.client, &rec, &entry)
            .map_err(store_err)?;
        info!(client = %r.client, suspended = r.suspend, "subscription state changed");
        self.client_detail(r.client)
    }

    /// The rules placement uses for a client: cluster-wide with its overrides.
    pub(super) fn rules_for(&self, sub: &Subscription) -> Reply<Proximity> {
        Ok(self
            .store
            .proximity()
            .map_err(store_err)?
            .overlay(&sub.proximity))
    }
}

/// Apply one optional field and describe the change.
fn set<T: Copy>(
    slot: &mut Option<T>,
    new: Option<T>,
    name: &str,
    show: impl Fn(T) -> String,
    changes: &mut Vec<String>,
) {
    if let Some(v) = new {
        *slot = Some(v);
        changes.push(format!("{name}={}", show(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_messages_name_the_client_and_the_way_out() {
        let c = ClientId([1; 16]);
        assert_eq!(
            suspended_message(&c, SubscriptionState::Suspended),
            format!(
                "subscription of client {c} is suspended: browsing and restore still work; \
                 ask the operator to resume it"
            )
        );
        assert!(suspended_message(&c, SubscriptionState::Expired).contains("is expired"));
    }
}
