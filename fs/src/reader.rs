//! The read path: locate (batched, cached briefly) → fetch any k packets (data packets on up
//! nodes first, falling back on failure or checksum mismatch) → decode → un-pad → decrypt →
//! decompress → verify the chunk id.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use gridback_proto::coord_api::{ChunkLocation, LocatedPacket};
use gridback_proto::{ChunkId, now_unix_ms};
use lru::LruCache;
use tracing::{Instrument, debug_span, warn};

use crate::coord_client::{CoordClient, grid_error};
use crate::crypto::ChunkCrypto;
use crate::erasure::{self, ErasureParams};
use crate::grid::{ChunkRef, GridError};
use crate::node_client::NodeClient;
use crate::packet;

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
        }
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

    /// Fetch k good packets and decode; see the module doc.
    async fn fetch(&self, chunk: ChunkRef, loc: &ChunkLocation) -> Result<Vec<u8>, GridError> {
        let id = chunk.id;
        let params = ErasureParams::new(loc.k, loc.m, loc.shard_bytes)
            .map_err(|e| unavailable(id, e.to_string()))?;
        let k = usize::from(loc.k);
        let mut candidates: Vec<&LocatedPacket> = loc.packets.iter().collect();
        candidates.sort_by_key(|p| (!p.node_up, p.index >= loc.k, p.index));
        let mut next = candidates.into_iter();
        let mut inflight = FuturesUnordered::new();
        for p in next.by_ref().take(k) {
            inflight.push(self.get_packet(id, p, params.shard_bytes()));
        }
        let mut got: Vec<(u8, Arc<Vec<u8>>)> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut attempts = 0;
        while let Some(res) = inflight.next().await {
            match res {
                Ok(p) => got.push(p),
                Err(msg) => {
                    // Fall back to the next candidate (parity, or packets on down nodes).
                    failures.push(msg);
                    if let Some(p) = next.next() {
                        inflight.push(self.get_packet(id, p, params.shard_bytes()));
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
                match self.decode(chunk, params, subset).await {
                    Ok(data) => return Ok(data),
                    Err(e) => {
                        warn!(chunk = %id, error = %e, "decoded chunk failed verification");
                        failures.push(e.to_string());
                    }
                }
            }
            if let Some(p) = next.next() {
                inflight.push(self.get_packet(id, p, params.shard_bytes()));
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

    async fn get_packet(
        &self,
        id: ChunkId,
        p: &LocatedPacket,
        shard_bytes: usize,
    ) -> Result<(u8, Arc<Vec<u8>>), String> {
        let span = debug_span!("fetch", chunk = ?id, node = %p.node, index = p.index);
        let r = self
            .nodes
            .get(p.node, &p.addr, p.order.clone(), p.checksum, shard_bytes)
            .instrument(span)
            .await;
        r.map(|d| (p.index, Arc::new(d))).map_err(|e| {
            warn!(chunk = %id, node = %p.node, index = p.index, error = %e, "packet fetch failed");
            format!("packet {} on node {}: {e}", p.index, p.node)
        })
    }

    async fn decode(
        &self,
        chunk: ChunkRef,
        params: ErasureParams,
        packets: Vec<(u8, Arc<Vec<u8>>)>,
    ) -> Result<Vec<u8>, GridError> {
        let crypto = self.crypto.clone();
        let id = chunk.id;
        tokio::task::spawn_blocking(move || {
            let refs: Vec<(u8, &[u8])> = packets.iter().map(|(i, d)| (*i, d.as_slice())).collect();
            let padded =
                erasure::decode(params, &refs).map_err(|e| unavailable(id, e.to_string()))?;
            packet::open_chunk(&crypto, &id, &padded, Some(chunk.len))
                .map_err(|e| unavailable(id, e.to_string()))
        })
        .await
        .map_err(|e| GridError::Internal(format!("decode task: {e}")))?
    }
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

    fn pk(i: u8) -> (u8, Arc<Vec<u8>>) {
        (i, Arc::new(vec![i]))
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
