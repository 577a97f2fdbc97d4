//! `NodeLatency`: a per-node estimate of how long a packet get takes (an exponentially
//! weighted moving average of successful gets), used by the read path to ask the fastest
//! holders first and to decide when to hedge a slow request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gridback_proto::NodeId;

/// Weight of a new sample in the moving average: recent enough to follow a node that slows
/// down within a few requests, smooth enough that one outlier does not reorder holders.
const EWMA_ALPHA: f64 = 0.25;
/// Shortest hedge delay: below this, a hedge mostly doubles the load for nothing (a local
/// QUIC round trip plus a disk read is a few ms; scheduling noise on a busy host is more).
pub const MIN_HEDGE_DELAY: Duration = Duration::from_millis(30);
/// Longest hedge delay: a holder that has not answered in this long is treated as slow
/// whatever its history, so a stalled node costs at most this before another is asked.
pub const MAX_HEDGE_DELAY: Duration = Duration::from_millis(1_000);
/// Hedge delay before any get has finished (no estimate yet).
pub const INITIAL_HEDGE_DELAY: Duration = Duration::from_millis(200);
/// A failed or timed-out get counts as a sample this many times the hedge cap, so a node
/// that failed sorts behind every node that answers.
const FAILURE_PENALTY: Duration = Duration::from_secs(2);

/// Per-node latency estimates, shared by every read of one client.
#[derive(Debug, Default)]
pub struct NodeLatency {
    ewma: Mutex<HashMap<NodeId, f64>>,
}

impl NodeLatency {
    /// Record a successful get of `node` that took `took`.
    pub fn record(&self, node: NodeId, took: Duration) {
        let sample = took.as_secs_f64();
        let mut m = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(node)
            .and_modify(|e| *e = EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * *e)
            .or_insert(sample);
    }

    /// Record a request cancelled after `waited` (another holder answered first): counts
    /// only when it raises the estimate, since the node's real latency is at least that.
    pub fn record_straggler(&self, node: NodeId, waited: Duration) {
        if self.estimate(node).is_none_or(|e| waited > e) {
            self.record(node, waited);
        }
    }

    /// Record a failed get (connection refused, timeout, bad data): the node sorts last
    /// until it answers well again.
    pub fn record_failure(&self, node: NodeId) {
        self.record(node, FAILURE_PENALTY);
    }

    /// The estimate for `node`, if it ever answered.
    pub fn estimate(&self, node: NodeId) -> Option<Duration> {
        let m = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&node).map(|s| Duration::from_secs_f64(*s))
    }

    /// How long to wait for `node` before asking another holder as well:
    /// `2 × estimate`, within [`MIN_HEDGE_DELAY`, `MAX_HEDGE_DELAY`].
    pub fn hedge_delay(&self, node: NodeId) -> Duration {
        self.estimate(node)
            .map_or(INITIAL_HEDGE_DELAY, |e| e * 2)
            .clamp(MIN_HEDGE_DELAY, MAX_HEDGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_samples_and_bound_the_hedge_delay() {
        let l = NodeLatency::default();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        assert_eq!(l.estimate(a), None);
        assert_eq!(l.hedge_delay(a), INITIAL_HEDGE_DELAY);
        l.record(a, Duration::from_millis(100));
        assert_eq!(l.estimate(a), Some(Duration::from_millis(100)));
        l.record(a, Duration::from_millis(20));
        let e = l.estimate(a).unwrap().as_secs_f64() * 1000.0;
        assert!((e - 80.0).abs() < 0.01, "{e}");
        assert_eq!(l.hedge_delay(a), Duration::from_secs_f64(0.16));
        l.record(b, Duration::from_millis(1));
        assert_eq!(l.hedge_delay(b), MIN_HEDGE_DELAY);
        l.record_failure(b);
        assert!(l.estimate(b).unwrap() > l.estimate(a).unwrap());
        assert_eq!(l.hedge_delay(b), MAX_HEDGE_DELAY);
    }
}
