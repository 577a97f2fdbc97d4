//! `NodeLatency`: a per-node estimate of how long a packet get takes (an exponentially
//! weighted moving average of successful gets), used by the read path to ask the fastest
//! holders first and to decide when to hedge a slow request, and the nodes caught serving
//! wrong bytes, asked last for a while; and [`Nearness`], how the read path ranks holders it
//! has not measured yet (nearest to the client first).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gridback_proto::{Location, NodeId};

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

/// How long a node that served wrong bytes under a valid checksum (caught only by the chunk
/// identifier check, see `fs::reader`) is asked after every other up holder. Such a node
/// answers fast, so its latency alone would keep it first; a lie is not a slow answer but a
/// sign of a broken or hostile node, which an operator should look at within minutes.
pub const DISTRUST_FOR: Duration = Duration::from_secs(600);

/// Per-node latency estimates, shared by every read of one client; also which nodes served
/// wrong bytes lately (see [`NodeLatency::record_wrong_bytes`]).
#[derive(Debug, Default)]
pub struct NodeLatency {
    ewma: Mutex<HashMap<NodeId, f64>>,
    distrusted_until: Mutex<HashMap<NodeId, Instant>>,
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

    /// Record that `node` served a packet whose bytes were wrong although its checksum
    /// matched: for [`DISTRUST_FOR`] it is asked only after every other up holder.
    pub fn record_wrong_bytes(&self, node: NodeId) {
        let mut m = self
            .distrusted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.insert(node, Instant::now() + DISTRUST_FOR);
    }

    /// Whether `node` served wrong bytes within the last [`DISTRUST_FOR`].
    pub fn is_distrusted(&self, node: NodeId) -> bool {
        let mut m = self
            .distrusted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match m.get(&node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                m.remove(&node);
                false
            }
            None => false,
        }
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

/// How far a holder is from this client, by the one definition of distance
/// (`proto::location`): the label level first (same host 0, same zone 1, same region 2,
/// other region 3), then kilometres when both ends have coordinates (a holder without them
/// sorts after those with them at the same level). Smaller is nearer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearness {
    level: u8,
    km: Option<f64>,
}

impl Nearness {
    /// The nearness of a holder at `holder` to a client at `client`.
    pub fn between(client: &Location, holder: &Location) -> Self {
        Self {
            level: client.level(holder),
            km: client.km(holder),
        }
    }
}

impl Eq for Nearness {}

impl PartialOrd for Nearness {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Nearness {
    fn cmp(&self, other: &Self) -> Ordering {
        let km = |n: &Self| n.km.unwrap_or(f64::INFINITY);
        self.level
            .cmp(&other.level)
            .then_with(|| km(self).total_cmp(&km(other)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridback_proto::Coords;

    #[test]
    fn nearness_ranks_by_level_then_kilometres() {
        let at = |labels: &str, coords: Option<&str>| Location::parse(labels, coords).unwrap();
        let me = at("eu/par/laptop", Some("48.85,2.35"));
        let near = |l: &Location| Nearness::between(&me, l);
        let same_host = at("eu/par/laptop", None);
        let same_zone = at("eu/par/rack1", None);
        let lyon = at("eu/lyon/n1", Some("45.76,4.84"));
        let berlin = at("eu/ber/n1", Some("52.52,13.40"));
        let region_no_coords = at("eu/mad/n1", None);
        let us = at("us/nyc/n1", Some("40.71,-74.00"));
        let mut v = [
            &us,
            &region_no_coords,
            &berlin,
            &same_zone,
            &lyon,
            &same_host,
        ];
        v.sort_by_key(|l| near(l));
        assert_eq!(
            v,
            [
                &same_host,
                &same_zone,
                &lyon,
                &berlin,
                &region_no_coords,
                &us
            ]
        );
        assert_eq!(near(&lyon), near(&lyon));
        assert!(near(&lyon) < near(&berlin));
        // Labels decide before kilometres: another region is farther even when closer.
        let over_the_border = Location {
            coords: Some(Coords {
                lat: 48.86,
                lon: 2.36,
            }),
            ..at("ch/gva/n1", None)
        };
        assert!(near(&over_the_border) > near(&region_no_coords));
    }

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

    #[test]
    fn a_node_that_served_wrong_bytes_is_distrusted() {
        let l = NodeLatency::default();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        l.record(a, Duration::from_millis(1));
        assert!(!l.is_distrusted(a));
        l.record_wrong_bytes(a);
        assert!(l.is_distrusted(a));
        assert!(!l.is_distrusted(b));
        // Answering fast again does not lift the distrust.
        for _ in 0..20 {
            l.record(a, Duration::from_millis(1));
        }
        assert!(l.is_distrusted(a));
    }
}
