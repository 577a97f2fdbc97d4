//! The read path: locate (batched, cached briefly) → fetch any k packets → decode → un-pad →
//! decrypt → decompress → verify the chunk id.
//!
//! **Hedged fetches.** A chunk's holders are ranked by `order_holders`: up nodes first; then
//! nodes never measured, nearest to this client first ([`Nearness`] from the holder
//! locations in the `LocateChunks` answer and the client's own location in its terms; ties,
//! or no known client location, in random order); then measured nodes by the per-node
//! latency estimate of [`NodeLatency`], fastest first.
//! The best k are asked at once. While fewer than k packets have arrived, every hedge delay
//! (the largest `max(2 × estimate, 30 ms)`, capped at 1 s, among the requests in flight; 200 ms
//! for a node never measured) one more holder is asked. A failed request (node down, refused,
//! corrupt packet: checksum or size mismatch, logged with node and packet) is replaced at
//! once by the next holder. The first k verified packets win; the requests still in flight
//! are cancelled, and their waiting time so far is recorded as a lower bound of their
//! node's latency, so a stalled node sorts last for the next chunks.
//!
//! **Lying nodes.** A node verifies its own checksum before it serves a packet (bit rot is
//! refused there, as `Corrupt`). A node that serves other bytes than it acknowledged at
//! commit, under a checksum of its own that matches them, is caught here against the checksum
//! the coordinator recorded at commit: the warning names the chunk, the node and the packet,
//! and the node is asked after every other up holder for
//! [`DISTRUST_FOR`](crate::latency::DISTRUST_FOR). Should wrong bytes ever get past that too
//! (a wrong record), the decoded chunk's identifier check catches them: one more holder is
//! asked and subsets that leave one packet out are decoded; once one verifies, the chunk is
//! encoded again and every packet received compared with the right one, and each node that
//! served wrong bytes is named and distrusted the same way.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use gridback_proto::coord_api::{ChunkLocation, LocatedPacket};
use gridback_proto::{ChunkId, Location, NodeId, PacketName, now_unix_ms};
use lru::LruCache;
use tracing::{Instrument, debug, debug_span, warn};

use crate::coord_client::{CoordClient, grid_error};
use crate::crypto::ChunkCrypto;
use crate::erasure::{self, ErasureParams};
use crate::grid::{ChunkRef, GridError};
use crate::latency::{MIN_HEDGE_DELAY, Nearness, NodeLatency};
use crate::node_client::{NodeClient, TransferError};
use crate::packet;
use crate::terms::Terms;

/// Locations remembered (a few hundred bytes each): enough for readahead over many files.
const LOCATION_CACHE_ENTRIES: usize = 4096;
/// Longest a location is trusted: placements move after repair.
const LOCATION_TTL: Duration = Duration::from_secs(60);
/// A cached location is dropped this long before its first get order expires, so a fetch
/// never starts with an order about to lapse.
const ORDER_EXPIRY_MARGIN_MS: u64 = 5_000;
/// Chunks fetched at once by [`Reader::read_chunks`].
pub const DEFAULT_FETCH_CONCURRENCY: usize = 8;
/// Decode attempts per chunk: the first k packets, then leave-one-out subsets.
const MAX_DECODE_ATTEMPTS: usize = 8;
/// A parity packet ranks as if its holder took this many times as long as measured. The k
/// data packets of a chunk only need to be put side by side, while any parity packet means a
/// Reed-Solomon reconstruction whose fixed cost (a few hundred µs of CPU on a busy host,
/// whatever the chunk's size) is most of the work for a small chunk. Latencies of one node
/// vary by about this factor from request to request on a busy host (the hedge delay is
/// twice the estimate for the same reason), so between holders within it the data packet
/// wins; a holder more than twice as fast still comes first with a parity packet.
const PARITY_PENALTY_FACTOR: u32 = 2;

struct Cached {
    loc: Arc<ChunkLocation>,
    valid_until: Instant,
}

/// The read pipeline of one client.
pub struct Reader {
    coord: CoordClient,
    nodes: NodeClient,
    crypto: Arc<ChunkCrypto>,
    cache: Mutex<LruCache<ChunkId, Cached>>,
    fetch_concurrency: usize,
    /// The client's terms, for its own location (read at each fetch, so an operator's
    /// `admin client set --location` applies without a restart).
    terms: Option<Arc<Terms>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("coord", &self.coord.addr())
            .finish_non_exhaustive()
    }
}

fn unavailable(chunk: ChunkId, reason: impl Into<String>) -> GridError {
    GridError::ChunkUnavailable {
        chunk,
        reason: reason.into(),
    }
}

impl Reader {
    /// A reader over the given clients.
    pub fn new(coord: CoordClient, nodes: NodeClient, crypto: Arc<ChunkCrypto>) -> Self {
        let n = NonZeroUsize::new(LOCATION_CACHE_ENTRIES).expect("invariant: non-zero constant");
        Self {
            coord,
            nodes,
            crypto,
            cache: Mutex::new(LruCache::new(n)),
            fetch_concurrency: DEFAULT_FETCH_CONCURRENCY,
            terms: None,
        }
    }

    /// Rank holders never measured by distance from the location in `terms` (without it
    /// they are asked in random order).
    pub fn with_terms(mut self, terms: Arc<Terms>) -> Self {
        self.terms = Some(terms);
        self
    }

    /// This client's location, when known.
    fn origin(&self) -> Option<Location> {
        self.terms
            .as_ref()
            .and_then(|t| t.current())
            .map(|t| t.location)
    }

    /// Fetch, decode and verify one chunk.
    pub async fn read_chunk(&self, chunk: ChunkRef) -> Result<Arc<Vec<u8>>, GridError> {
        self.read_chunks(&[chunk])
            .await
            .pop()
            .unwrap_or_else(|| Err(unavailable(chunk.id, "no result")))
    }

    /// Fetch several chunks (readahead): one locate round trip for the uncached ones, then
    /// parallel fetches. Results are in the order asked.
    pub async fn read_chunks(&self, chunks: &[ChunkRef]) -> Vec<Result<Arc<Vec<u8>>, GridError>> {
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        let locs = match self.locations(&ids, false).await {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                return chunks
                    .iter()
                    .map(|c| Err(unavailable(c.id, msg.clone())))
                    .collect();
            }
        };
        futures::stream::iter(chunks.iter().copied().zip(locs))
            .map(|(c, loc)| self.read_located(c, loc))
            .buffered(self.fetch_concurrency)
            .collect()
            .await
    }

    /// Locate `ids` that are not cached yet, in one round trip per
    /// [`MAX_BATCH_CHUNKS`](gridback_proto::coord_api::MAX_BATCH_CHUNKS), and cache the
    /// answers. Best effort: a failure is logged, and each later read locates what it misses.
    pub async fn prefetch_locations(&self, ids: &[ChunkId]) {
        if let Err(e) = self.locations(ids, false).await {
            debug!(chunks = ids.len(), error = %e, "location prefetch failed");
        }
    }

    async fn read_located(
        &self,
        chunk: ChunkRef,
        loc: Result<Arc<ChunkLocation>, GridError>,
    ) -> Result<Arc<Vec<u8>>, GridError> {
        let loc = loc?;
        match self.fetch(chunk, &loc).await {
            Ok(data) => Ok(Arc::new(data)),
            Err(first) => {
                // Orders may have lapsed or packets moved (repair): locate afresh once.
                self.forget(&chunk.id);
                let fresh = self.locations(&[chunk.id], true).await?.pop();
                let fresh = fresh.ok_or_else(|| unavailable(chunk.id, "no location"))??;
                self.fetch(chunk, &fresh).await.map(Arc::new).map_err(|second| {
                    warn!(chunk = %chunk.id, first = %first, error = %second, "chunk unavailable");
                    second
                })
            }
        }
    }

    fn forget(&self, id: &ChunkId) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).pop(id);
    }

    /// Locations for `ids`, from the cache or in one batched call.
    async fn locations(
        &self,
        ids: &[ChunkId],
        fresh: bool,
    ) -> Result<Vec<Result<Arc<ChunkLocation>, GridError>>, GridError> {
        let now = Instant::now();
        let mut out: Vec<Option<Arc<ChunkLocation>>> = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .map(|id| {
                    let hit = cache.get(id).filter(|c| !fresh && c.valid_until > now);
                    hit.map(|c| c.loc.clone())
                })
                .collect()
        };
        let missing: Vec<ChunkId> = ids
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            let mut found = self
                .coord
                .locate(&missing)
                .await
                .map_err(|e| grid_error(e, None))?
                .into_iter();
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for slot in out.iter_mut().filter(|o| o.is_none()) {
                if let Some(Some(loc)) = found.next() {
                    let loc = Arc::new(loc);
                    cache.put(
                        loc.id,
                        Cached {
                            loc: loc.clone(),
                            valid_until: valid_until(&loc),
                        },
                    );
                    *slot = Some(loc);
                }
            }
        }
        Ok(ids
            .iter()
            .zip(out)
            .map(|(id, o)| match o {
                Some(l) if l.id == *id => Ok(l),
                Some(_) => Err(unavailable(*id, "coordinator answered for another chunk")),
                None => Err(unavailable(*id, "the coordinator does not know this chunk")),
            })
            .collect())
    }

    /// Fetch k good packets and decode, hedging slow holders; see the module doc.
    async fn fetch(&self, chunk: ChunkRef, loc: &ChunkLocation) -> Result<Vec<u8>, GridError> {
        let id = chunk.id;
        let params = ErasureParams::new(loc.k, loc.m, loc.shard_bytes)
            .map_err(|e| unavailable(id, e.to_string()))?;
        let k = usize::from(loc.k);
        let latency = self.nodes.latency().clone();
        let origin = self.origin();
        let mut next = order_holders(loc, &latency, origin.as_ref()).into_iter();
        let mut inflight = FuturesUnordered::new();
        // Requests in flight: node and start, by launch number.
        let mut pending: HashMap<usize, (NodeId, Instant)> = HashMap::new();
        // Where each request went (node, packet), by launch number.
        let mut sources: Vec<(NodeId, PacketName)> = Vec::new();
        let mut launched = 0usize;
        let shard_bytes = params.shard_bytes();
        // Ask holder `p`, remembering when (a macro: a closure cannot return the borrow).
        macro_rules! launch {
            ($p:expr) => {{
                let (p, n) = ($p, launched);
                pending.insert(n, (p.node, Instant::now()));
                sources.push((p.node, p.order.order.packet));
                launched += 1;
                inflight.push(self.get_packet(n, id, p, shard_bytes));
            }};
        }
        for p in next.by_ref().take(k) {
            launch!(p);
        }
        let mut got: Vec<(u8, Arc<Vec<u8>>)> = Vec::new();
        // Launch number of each packet in `got`.
        let mut got_from: Vec<usize> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut attempts = 0;
        let hedge = tokio::time::sleep(hedge_delay(&pending, &latency));
        tokio::pin!(hedge);
        let mut can_hedge = true;
        loop {
            let (n, res) = tokio::select! {
                r = inflight.next() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = &mut hedge, if can_hedge => {
                    // A holder is slow: ask one more, and wait again.
                    match next.next() {
                        Some(p) => {
                            debug!(chunk = %id, node = %p.node, index = p.index,
                                "hedged packet request");
                            launch!(p);
                            let at = tokio::time::Instant::now() + hedge_delay(&pending, &latency);
                            hedge.as_mut().reset(at);
                        }
                        None => can_hedge = false,
                    }
                    continue;
                }
            };
            pending.remove(&n);
            match res {
                Ok(p) => {
                    got.push(p);
                    got_from.push(n);
                }
                Err(msg) => {
                    // Fall back to the next candidate (parity, or packets on down nodes).
                    failures.push(msg);
                    if let Some(p) = next.next() {
                        launch!(p);
                    }
                    continue;
                }
            }
            if got.len() < k {
                continue;
            }
            // k or more good packets: try the newest subsets not tried yet.
            for subset in subsets(&got, k, got.len() == k) {
                if attempts >= MAX_DECODE_ATTEMPTS {
                    break;
                }
                attempts += 1;
                // After a failed attempt, find out which packets were wrong.
                let check = if attempts > 1 {
                    got.clone()
                } else {
                    Vec::new()
                };
                match self.decode(chunk, params, subset, check).await {
                    Ok((data, wrong)) => {
                        for at in wrong {
                            let (node, packet) = sources[got_from[at]];
                            warn!(chunk = %id, node = %node, packet = %packet, index = got[at].0,
                                "node served wrong bytes under a valid checksum (caught by the \
                                chunk id check); asking it last for a while");
                            latency.record_wrong_bytes(node);
                        }
                        // The rest are cancelled (dropped with `inflight`); what they have
                        // waited so far is a lower bound of their latency.
                        for (node, at) in pending.values() {
                            latency.record_straggler(*node, at.elapsed());
                        }
                        return Ok(data);
                    }
                    Err(e) => {
                        warn!(chunk = %id, error = %e, "decoded chunk failed verification");
                        failures.push(e.to_string());
                    }
                }
            }
            if let Some(p) = next.next() {
                launch!(p);
            }
        }
        let reason = if failures.is_empty() {
            format!(
                "{} of {} packets located, {k} needed",
                loc.packets.len(),
                params.total()
            )
        } else {
            failures.join("; ")
        };
        Err(unavailable(id, reason))
    }

    /// Request number `n`: packet `p` of chunk `id`.
    async fn get_packet(
        &self,
        n: usize,
        id: ChunkId,
        p: &LocatedPacket,
        shard_bytes: usize,
    ) -> (usize, Result<(u8, Arc<Vec<u8>>), String>) {
        let span = debug_span!("fetch", chunk = ?id, node = %p.node, index = p.index);
        let r = self
            .nodes
            .get(p.node, &p.addr, p.order.clone(), p.checksum, shard_bytes)
            .instrument(span)
            .await;
        let r = r.map(|d| (p.index, Arc::new(d))).map_err(|e| {
            let packet = p.order.order.packet;
            if matches!(
                e,
                TransferError::Checksum { .. } | TransferError::Size { .. }
            ) {
                // The node's own checksum passed (else it refuses to serve), so it holds
                // bytes other than those it acknowledged at commit: it lies.
                warn!(chunk = %id, node = %p.node, packet = %packet, index = p.index, error = %e,
                    "node served a corrupt packet; using another holder and asking it last \
                    for a while");
                self.nodes.latency().record_wrong_bytes(p.node);
            } else {
                warn!(chunk = %id, node = %p.node, packet = %packet, index = p.index, error = %e,
                    "packet fetch failed");
            }
            format!("packet {} on node {}: {e}", p.index, p.node)
        });
        (n, r)
    }

    /// Decode and verify `packets`; on success also the positions in `check` of packets
    /// whose bytes are not what the verified chunk encodes to.
    async fn decode(
        &self,
        chunk: ChunkRef,
        params: ErasureParams,
        packets: Vec<(u8, Arc<Vec<u8>>)>,
        check: Vec<(u8, Arc<Vec<u8>>)>,
    ) -> Result<(Vec<u8>, Vec<usize>), GridError> {
        let crypto = self.crypto.clone();
        let id = chunk.id;
        tokio::task::spawn_blocking(move || {
            let refs: Vec<(u8, &[u8])> = packets.iter().map(|(i, d)| (*i, d.as_slice())).collect();
            let padded =
                erasure::decode(params, &refs).map_err(|e| unavailable(id, e.to_string()))?;
            let data = packet::open_chunk(&crypto, &id, &padded, Some(chunk.len))
                .map_err(|e| unavailable(id, e.to_string()))?;
            let wrong = if check.is_empty() {
                Vec::new()
            } else {
                wrong_packets(params, padded, &check).map_err(|e| unavailable(id, e.to_string()))?
            };
            Ok((data, wrong))
        })
        .await
        .map_err(|e| GridError::Internal(format!("decode task: {e}")))?
    }
}

/// Positions in `packets` of those that differ from what `padded` (a verified chunk's
/// decoded blob, `k × shard_bytes`) encodes to: the packets a node lied about.
fn wrong_packets(
    params: ErasureParams,
    padded: Vec<u8>,
    packets: &[(u8, Arc<Vec<u8>>)],
) -> Result<Vec<usize>, erasure::ErasureError> {
    let right = erasure::encode_in_place(padded, params)?;
    Ok(packets
        .iter()
        .enumerate()
        .filter(|(_, (i, d))| {
            right
                .packet(usize::from(*i))
                .is_none_or(|r| r.as_ref() != d.as_slice())
        })
        .map(|(at, _)| at)
        .collect())
}

/// A chunk's holders in the order to ask them: nodes the coordinator considers up first;
/// among those, nodes caught serving wrong bytes lately last; then nodes never measured,
/// nearest to `origin` (this client) first, so a new client starts from its neighbours and
/// still learns every node (ties: data packets first, then random order, which spreads the
/// first requests); then by latency estimate, fastest first, a parity packet counting
/// [`PARITY_PENALTY_FACTOR`] times slower: once a node is measured, its latency ranks it
/// whatever its distance.
fn order_holders<'a>(
    loc: &'a ChunkLocation,
    latency: &NodeLatency,
    origin: Option<&Location>,
) -> Vec<&'a LocatedPacket> {
    let mut v: Vec<(&LocatedPacket, Option<Duration>, Option<Nearness>, bool)> = loc
        .packets
        .iter()
        .map(|p| {
            let near = origin.map(|o| Nearness::between(o, &p.location));
            (
                p,
                latency.estimate(p.node),
                near,
                latency.is_distrusted(p.node),
            )
        })
        .collect();
    shuffle(&mut v);
    let parity = |p: &LocatedPacket| p.index >= loc.k;
    let cost = |p: &LocatedPacket, e: Option<Duration>| {
        e.map(|e| {
            if parity(p) {
                e * PARITY_PENALTY_FACTOR
            } else {
                e
            }
        })
    };
    // Stable: equal keys keep their shuffled order.
    v.sort_by(|(a, ea, na, da), (b, eb, nb, db)| {
        (!a.node_up)
            .cmp(&!b.node_up)
            .then(da.cmp(db))
            .then(ea.is_some().cmp(&eb.is_some()))
            .then(cost(a, *ea).cmp(&cost(b, *eb)))
            .then_with(|| match (ea, na, nb) {
                (None, Some(na), Some(nb)) => na.cmp(nb),
                _ => std::cmp::Ordering::Equal,
            })
            .then(parity(a).cmp(&parity(b)))
    });
    v.into_iter().map(|(p, ..)| p).collect()
}

/// Fisher–Yates with a xorshift generator seeded from the OS: only spreads load, so it need
/// not be cryptographic.
fn shuffle<T>(v: &mut [T]) {
    let mut seed = [0u8; 8];
    let mut x = match getrandom::fill(&mut seed) {
        Ok(()) => u64::from_le_bytes(seed) | 1,
        Err(_) => 0x9E37_79B9_7F4A_7C15,
    };
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// How long to wait before hedging: the longest hedge delay among the requests in flight
/// (each is `2 × its node's estimate`, clamped; see [`NodeLatency::hedge_delay`]).
fn hedge_delay(pending: &HashMap<usize, (NodeId, Instant)>, latency: &NodeLatency) -> Duration {
    pending
        .values()
        .map(|(n, _)| latency.hedge_delay(*n))
        .max()
        .unwrap_or(MIN_HEDGE_DELAY)
}

/// The k-subsets to try: all of `got` when it holds exactly k (`first`), else those that
/// leave out one earlier packet and keep the newest (a single bad packet is then skipped).
fn subsets(got: &[(u8, Arc<Vec<u8>>)], k: usize, first: bool) -> Vec<Vec<(u8, Arc<Vec<u8>>)>> {
    if first {
        return vec![got.to_vec()];
    }
    let newest = got.len() - 1;
    (0..newest)
        .rev()
        .map(|skip| {
            let mut s: Vec<_> = got
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.clone())
                .collect();
            s.truncate(k);
            if !s.iter().any(|(i, _)| *i == got[newest].0) {
                s[k - 1] = got[newest].clone();
            }
            s
        })
        .collect()
}

/// When a freshly located chunk should be located again.
fn valid_until(loc: &ChunkLocation) -> Instant {
    let now_ms = now_unix_ms();
    let earliest = loc
        .packets
        .iter()
        .map(|p| p.order.order.expires_unix_ms)
        .min()
        .unwrap_or(now_ms);
    let left_ms = earliest
        .saturating_sub(now_ms)
        .saturating_sub(ORDER_EXPIRY_MARGIN_MS);
    Instant::now() + LOCATION_TTL.min(Duration::from_millis(left_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pk(i: u8) -> (u8, Arc<Vec<u8>>) {
        (i, Arc::new(vec![i]))
    }

    fn node(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    /// A chunk whose packet `i` is on `node(i)` at `places[i]` (labels), up unless `i == down`.
    fn located(places: &[&str], down: u8) -> ChunkLocation {
        use gridback_proto::{CertFingerprint, Order, OrderOp, OrderSigner, PacketName};
        let (signer, _) = OrderSigner::generate();
        let packet = |i: u8, place: &str| LocatedPacket {
            index: i,
            node: node(i),
            addr: String::new(),
            node_up: i != down,
            checksum: [0; 32],
            order: signer.sign(Order {
                op: OrderOp::Get,
                node: node(i),
                packet: PacketName::random(),
                size_bytes: 1,
                client: CertFingerprint([0; 32]),
                expires_unix_ms: 0,
            }),
            location: place.parse().unwrap(),
        };
        ChunkLocation {
            id: ChunkId([0; 32]),
            k: 4,
            m: 2,
            shard_bytes: 1,
            packets: (0..).zip(places).map(|(i, p)| packet(i, p)).collect(),
        }
    }

    fn indices(v: &[&LocatedPacket]) -> Vec<u8> {
        v.iter().map(|p| p.index).collect()
    }

    #[test]
    fn holders_are_ordered_up_first_then_unmeasured_then_fastest() {
        let loc = located(&["a/b/c"; 6], 5);
        let latency = NodeLatency::default();
        latency.record(node(0), Duration::from_millis(50));
        latency.record(node(1), Duration::from_millis(5));
        latency.record(node(2), Duration::from_millis(20));
        latency.record(node(5), Duration::from_millis(1));
        let order = indices(&order_holders(&loc, &latency, None));
        // 3 and 4 unmeasured (either order), then 1, 2, 0 by estimate; the down node last.
        assert_eq!(&order[2..], &[1, 2, 0, 5], "{order:?}");
        let mut unmeasured = order[..2].to_vec();
        unmeasured.sort_unstable();
        assert_eq!(unmeasured, vec![3, 4]);
        // A stalled node's cancelled request pushes it behind the others.
        latency.record_straggler(node(1), Duration::from_millis(400));
        let order = indices(&order_holders(&loc, &latency, None));
        assert_eq!(&order[2..], &[2, 0, 1, 5], "{order:?}");
        // A node that served wrong bytes comes after every up node, fast as it may be.
        latency.record(node(2), Duration::from_micros(1));
        latency.record_wrong_bytes(node(3));
        let order = indices(&order_holders(&loc, &latency, None));
        assert_eq!(order, [4, 2, 0, 1, 3, 5], "{order:?}");
    }

    #[test]
    fn data_packets_win_over_parity_packets_that_are_barely_faster() {
        let loc = located(&["a/b/c"; 6], 9);
        let latency = NodeLatency::default();
        // Unmeasured: the four data packets first (in any order), then parity.
        let order = indices(&order_holders(&loc, &latency, None));
        let mut first: Vec<u8> = order[..4].to_vec();
        first.sort_unstable();
        assert_eq!(first, [0, 1, 2, 3], "{order:?}");
        // Measured: data holders at 5 ms; parity 4 at 4 ms (not twice as fast) goes after
        // them, parity 5 at 2.4 ms (more than twice as fast) before them.
        for i in 0..4 {
            latency.record(node(i), Duration::from_millis(5));
        }
        latency.record(node(4), Duration::from_millis(4));
        latency.record(node(5), Duration::from_micros(2_400));
        let order = indices(&order_holders(&loc, &latency, None));
        assert_eq!((order[0], order[5]), (5, 4), "{order:?}");
    }

    #[test]
    fn wrong_packets_names_exactly_the_packets_that_lie() {
        let params = ErasureParams::new(4, 2, 1000).unwrap();
        let blob: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let right: Vec<Arc<Vec<u8>>> = erasure::encode(&blob, params)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut lie = right[1].as_ref().clone();
        lie[10] ^= 1;
        let got = vec![
            (0, right[0].clone()),
            (1, Arc::new(lie)),
            (2, right[2].clone()),
            (5, right[5].clone()),
            (4, right[4].clone()),
        ];
        assert_eq!(wrong_packets(params, blob.clone(), &got).unwrap(), vec![1]);
        assert!(wrong_packets(params, blob, &got[2..]).unwrap().is_empty());
    }

    #[test]
    fn unmeasured_holders_are_asked_nearest_first_and_measured_ones_by_latency() {
        let me: Location = "eu/par/laptop".parse().unwrap();
        let loc = located(
            &[
                "us/nyc/n0",     // 0: other region
                "eu/par/n1",     // 1: same zone
                "eu/ber/n2",     // 2: same region
                "eu/par/n3",     // 3: same zone, measured slow
                "eu/ber/n4",     // 4: same region, measured fast
                "eu/par/laptop", // 5: same host, but down
            ],
            5,
        );
        let latency = NodeLatency::default();
        latency.record(node(3), Duration::from_millis(80));
        latency.record(node(4), Duration::from_millis(10));
        // The shuffle must not matter: every run gives the one order.
        for _ in 0..32 {
            let order = indices(&order_holders(&loc, &latency, Some(&me)));
            assert_eq!(order, [1, 2, 0, 4, 3, 5]);
        }
        // Once measured, latency ranks a far node ahead of a near slow one (and parity 4
        // counts twice its 10 ms).
        latency.record(node(0), Duration::from_millis(25));
        let order = indices(&order_holders(&loc, &latency, Some(&me)));
        assert_eq!(order, [1, 2, 4, 0, 3, 5]);
        latency.record(node(0), Duration::from_millis(1));
        let order = indices(&order_holders(&loc, &latency, Some(&me)));
        assert_eq!(order, [1, 2, 0, 4, 3, 5]);
        // Ties in distance stay random: both same-zone nodes come first, in either order.
        let twins = located(&["eu/par/a", "us/nyc/b", "eu/par/c"], 9);
        let seen: HashSet<Vec<u8>> = (0..64)
            .map(|_| indices(&order_holders(&twins, &NodeLatency::default(), Some(&me))))
            .collect();
        assert_eq!(
            seen,
            HashSet::from([vec![0, 2, 1], vec![2, 0, 1]]),
            "{seen:?}"
        );
    }

    #[test]
    fn subsets_skip_one_packet_and_keep_the_newest() {
        let got = vec![pk(0), pk(1), pk(2)];
        assert_eq!(subsets(&got[..2], 2, true).len(), 1);
        let s = subsets(&got, 2, false);
        let idx: Vec<Vec<u8>> = s.iter().map(|v| v.iter().map(|p| p.0).collect()).collect();
        assert_eq!(idx, vec![vec![0, 2], vec![1, 2]]);
    }
}
