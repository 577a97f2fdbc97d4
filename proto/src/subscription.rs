//! A client's contract (F15) and the resources the coordinator allocates to it (F16, F17).
//!
//! The coordinator owns subscriptions; clients receive theirs in [`ClientTerms`] at hello
//! and on every poll, and honour the limits without a restart. Storage nodes receive the
//! same limits per client certificate in their heartbeat answers and enforce them too.

use serde::{Deserialize, Serialize};

use crate::ClientId;
use crate::location::{Location, Proximity};

/// Name of the plan every client starts on.
pub const DEFAULT_PLAN: &str = "default";

/// Lifecycle state of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionState {
    /// Reads and writes allowed.
    Active,
    /// Suspended by an operator: browse and restore only.
    Suspended,
    /// Past its expiry time: browse and restore only.
    Expired,
}

impl SubscriptionState {
    /// Whether new data may be written.
    pub fn allows_writes(self) -> bool {
        self == SubscriptionState::Active
    }

    /// Lower-case name, as in records and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Active => "active",
            SubscriptionState::Suspended => "suspended",
            SubscriptionState::Expired => "expired",
        }
    }
}

/// Resource limits. `None` means unlimited (or, for `threads`, the client's own default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Source storage allocation: bytes this client may store (see [`Usage`] for the rule).
    pub quota_bytes: Option<u64>,
    /// Upload bandwidth, bytes per second.
    pub bandwidth_up: Option<u64>,
    /// Download bandwidth, bytes per second.
    pub bandwidth_down: Option<u64>,
    /// Processor parameter: worker threads for chunking, compression and encryption.
    pub threads: Option<u32>,
    /// Network allocation: concurrent packet transfers.
    pub transfers: Option<u32>,
}

/// One client's contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// Plan name (free-form, for operators).
    pub plan: String,
    /// Suspended by an operator.
    pub suspended: bool,
    /// Expiry (ms since the Unix epoch); `None` never expires.
    pub expires_unix_ms: Option<u64>,
    /// Limits.
    pub limits: Limits,
    /// Per-subscription proximity overrides (only the bounds set here override the
    /// cluster-wide rules).
    pub proximity: Proximity,
}

impl Default for Subscription {
    fn default() -> Self {
        Self {
            plan: DEFAULT_PLAN.to_string(),
            suspended: false,
            expires_unix_ms: None,
            limits: Limits::default(),
            proximity: Proximity::default(),
        }
    }
}

impl Subscription {
    /// The state at `now_unix_ms`: suspension wins over expiry.
    pub fn state(&self, now_unix_ms: u64) -> SubscriptionState {
        if self.suspended {
            SubscriptionState::Suspended
        } else if self.expires_unix_ms.is_some_and(|e| now_unix_ms >= e) {
            SubscriptionState::Expired
        } else {
            SubscriptionState::Active
        }
    }
}

/// What a client stores, as charged against its quota.
///
/// The rule: a client is charged the *data size* of every distinct chunk it references,
/// where the data size is what the coordinator can verify, `k × packet bytes` (compressed,
/// encrypted and padded; parity is the grid's cost and is not charged). It is charged
/// whether it uploaded the chunk or found it already stored by another client: sharing
/// saves grid storage, not quota, so a client's usage never depends on what other clients
/// keep or delete. A chunk referenced by several of the client's own files or snapshots is
/// charged once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes charged (data size of distinct referenced chunks).
    pub charged_bytes: u64,
    /// Distinct chunks referenced.
    pub chunk_count: u64,
    /// Bytes of packets this client's uploads placed on nodes (its share of the target
    /// storage it caused, parity included).
    pub uploaded_packet_bytes: u64,
}

/// The terms a client works under, sent at hello and on every poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientTerms {
    /// The client.
    pub client: ClientId,
    /// Its contract.
    pub subscription: Subscription,
    /// The state now.
    pub state: SubscriptionState,
    /// Current usage.
    pub usage: Usage,
    /// The client's registered location.
    pub location: Location,
}
