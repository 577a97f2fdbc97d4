//! The client's terms (F15–F17) and the limits it honours live, without a restart.
//!
//! [`Terms`] holds the latest [`ClientTerms`] (from the greeting, then from a
//! [`TermsPoller`] that asks the coordinator every [`TERMS_POLL_INTERVAL`]) and the
//! process-wide [`LiveLimits`] built from them:
//!
//! * `up` / `down`: token buckets on the client's data bytes, shared by every put (upload,
//!   charged `k / (k + m)` of each packet, so parity is free) and every get (download, each
//!   packet in full) of the process; see [`crate::node_client`];
//! * `transfers`: concurrent packet puts and gets over all nodes;
//! * `threads`: CPU workers for sealing (compress, encrypt) and erasure coding; without a
//!   limit from the coordinator, the configured `pipeline.workers`.
//!
//! Every change is applied to the same objects, so work already waiting picks it up at once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gridback_proto::subscription::{ClientTerms, Limits, SubscriptionState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coord_client::CoordClient;
use gridback_proto::throttle::{ResizableLimit, TokenBucket};

/// How often long-running clients ask for their terms: a limit changed by an operator is in
/// force within about this long, at the cost of one tiny request per client.
pub const TERMS_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// While polls fail, repeat the warning only every this many polls (a minute at the
/// default interval).
const WARN_EVERY: u64 = 30;

/// The limits in force for this process; see the module doc.
#[derive(Debug)]
pub struct LiveLimits {
    /// Upload bandwidth (data bytes put: `k / (k + m)` of every packet).
    pub up: TokenBucket,
    /// Download bandwidth (bytes of packets fetched).
    pub down: TokenBucket,
    /// Concurrent packet transfers.
    pub transfers: ResizableLimit,
    /// CPU workers of the write pipeline.
    pub threads: ResizableLimit,
    /// Workers when the coordinator sets no thread limit.
    default_threads: usize,
}

impl LiveLimits {
    /// No limits, with `default_threads` CPU workers.
    pub fn unlimited(default_threads: usize) -> Arc<Self> {
        Arc::new(Self {
            up: TokenBucket::new(None),
            down: TokenBucket::new(None),
            transfers: ResizableLimit::new(None),
            threads: ResizableLimit::new(Some(default_threads.max(1))),
            default_threads: default_threads.max(1),
        })
    }

    /// Apply `limits` (from the coordinator).
    pub fn apply(&self, limits: &Limits) {
        self.up.set_rate(limits.bandwidth_up);
        self.down.set_rate(limits.bandwidth_down);
        self.transfers
            .set_limit(limits.transfers.map(|t| t as usize));
        self.threads.set_limit(Some(
            limits.threads.map_or(self.default_threads, |t| t as usize),
        ));
    }
}

/// The current terms and the limits that follow from them. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Terms {
    current: RwLock<Option<ClientTerms>>,
    limits: Arc<LiveLimits>,
}

impl Terms {
    /// Terms starting from `initial` (the greeting's), with `default_threads` workers unless
    /// the terms limit them.
    pub fn new(initial: Option<ClientTerms>, default_threads: usize) -> Arc<Self> {
        let t = Arc::new(Self {
            current: RwLock::new(None),
            limits: LiveLimits::unlimited(default_threads),
        });
        if let Some(initial) = initial {
            t.update(initial);
        }
        t
    }

    /// The latest terms (`None` before the first answer, e.g. in-memory tests).
    pub fn current(&self) -> Option<ClientTerms> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The subscription state of the latest terms, without copying them (the filesystem asks
    /// on every change it is about to make).
    pub fn state(&self) -> Option<SubscriptionState> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| t.state)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Arc<LiveLimits> {
        &self.limits
    }

    /// Take new terms: apply their limits and log what changed.
    pub fn update(&self, terms: ClientTerms) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let old = cur.as_ref();
        let old_limits = old.map(|t| t.subscription.limits);
        let new_limits = terms.subscription.limits;
        if old_limits != Some(new_limits) {
            self.limits.apply(&new_limits);
            info!(
                bandwidth_up = ?new_limits.bandwidth_up,
                bandwidth_down = ?new_limits.bandwidth_down,
                transfers = ?new_limits.transfers,
                threads = ?new_limits.threads,
                quota_bytes = ?new_limits.quota_bytes,
                "client limits in force"
            );
        }
        if old.map(|t| t.state) != Some(terms.state) && terms.state != SubscriptionState::Active {
            warn!(state = terms.state.as_str(), plan = %terms.subscription.plan,
                "subscription does not allow new writes; browsing and restore still work");
        }
        *cur = Some(terms);
    }
}

/// Polls the coordinator for this client's terms until stopped.
#[derive(Debug)]
pub struct TermsPoller {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TermsPoller {
    /// Start polling through `coord` every `interval`, applying answers to `terms`. Must be
    /// called inside a tokio runtime.
    pub fn spawn(coord: CoordClient, terms: Arc<Terms>, interval: Duration) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(poll_loop(coord, terms, interval, stop.clone()));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stop polling and wait for the task to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TermsPoller {
    fn drop(&mut self) {
        // The task only holds a coordinator client and the terms; cancelling is enough for it
        // to end at its next await.
        self.stop.cancel();
    }
}

async fn poll_loop(
    coord: CoordClient,
    terms: Arc<Terms>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => break,
            r = coord.poll() => r,
        };
        match answer {
            Ok(t) => {
                failures = 0;
                terms.update(t);
            }
            Err(e) => {
                failures += 1;
                if failures % WARN_EVERY == 1 {
                    warn!(error = %e, failures, "cannot refresh the client's terms; \
                        keeping the last ones");
                } else {
                    debug!(error = %e, "terms poll failed");
                }
            }
        }
    }
    debug!("terms poller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridback_proto::subscription::{Subscription, Usage};
    use gridback_proto::{ClientId, Location};

    pub(crate) fn terms_with(limits: Limits, state: SubscriptionState) -> ClientTerms {
        ClientTerms {
            client: ClientId([7; 16]),
            subscription: Subscription {
                limits,
                ..Subscription::default()
            },
            state,
            usage: Usage::default(),
            location: Location::new("r", "z", "h"),
        }
    }

    #[test]
    fn updates_reach_the_live_limits() {
        let t = Terms::new(None, 3);
        assert!(t.current().is_none());
        assert_eq!(t.limits().threads.limit(), Some(3));
        assert_eq!(t.limits().up.rate(), None);
        let l = Limits {
            bandwidth_up: Some(5_000_000),
            bandwidth_down: Some(1_000),
            threads: Some(1),
            transfers: Some(4),
            quota_bytes: Some(1 << 30),
        };
        t.update(terms_with(l, SubscriptionState::Active));
        let lim = t.limits();
        assert_eq!(lim.up.rate(), Some(5_000_000));
        assert_eq!(lim.down.rate(), Some(1_000));
        assert_eq!(lim.threads.limit(), Some(1));
        assert_eq!(lim.transfers.limit(), Some(4));
        // Back to no limits: the configured worker count again.
        t.update(terms_with(Limits::default(), SubscriptionState::Suspended));
        assert_eq!(lim.threads.limit(), Some(3));
        assert_eq!(lim.up.rate(), None);
        assert_eq!(lim.transfers.limit(), None);
        assert_eq!(t.current().unwrap().state, SubscriptionState::Suspended);
    }
}
