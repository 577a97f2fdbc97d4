//! A byte-bounded cache of decoded chunks, with in-flight deduplication so that a read and
//! the readahead that anticipated it fetch a chunk once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gridback_proto::ChunkId;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::grid::{ChunkRef, Grid, GridError};

type Slot = Arc<OnceCell<Result<Arc<Vec<u8>>, String>>>;

struct Inner {
    lru: LruCache<ChunkId, Arc<Vec<u8>>>,
    bytes: usize,
}

/// The chunk cache.
pub struct ChunkCache {
    grid: Arc<dyn Grid>,
    inner: Mutex<Inner>,
    inflight: Mutex<HashMap<ChunkId, Slot>>,
    capacity_bytes: usize,
    /// Chunks fetched from the grid (misses that reached it).
    fetches: AtomicU64,
    /// Plaintext bytes of those chunks.
    fetched_bytes: AtomicU64,
    /// Reads answered from the cache.
    hits: AtomicU64,
}

/// What the cache has done since the mount started (`gridback status` shows it; the bench
/// uses it to prove browsing fetches nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Chunks fetched from the grid.
    pub chunk_fetches: u64,
    /// Plaintext bytes of those chunks.
    pub chunk_bytes_fetched: u64,
    /// Chunk reads answered from the cache.
    pub cache_hits: u64,
    /// Bytes in the cache now.
    pub cached_bytes: u64,
}

impl ChunkCache {
    /// A cache holding at most `capacity_bytes` of plaintext.
    pub fn new(grid: Arc<dyn Grid>, capacity_bytes: usize) -> Self {
        Self {
            grid,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            inflight: Mutex::new(HashMap::new()),
            capacity_bytes,
            fetches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    fn cached(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lru
            .get(id)
            .cloned()
    }

    fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.lru.contains(&id) {
            return;
        }
        g.bytes += data.len();
        g.lru.put(id, data);
        while g.bytes > self.capacity_bytes {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Bytes currently cached.
    pub fn cached_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            chunk_fetches: self.fetches.load(Ordering::Relaxed),
            chunk_bytes_fetched: self.fetched_bytes.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
            cached_bytes: self.cached_bytes() as u64,
        }
    }

    /// Whether the chunk is cached (without making it recent).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lru
            .contains(id)
    }

    /// Fetch the chunk into the cache unless it is there (a prefetch: not counted as a hit).
    pub async fn prefetch(&self, chunk: ChunkRef) -> Result<(), GridError> {
        if self.contains(&chunk.id) {
            return Ok(());
        }
        self.fetch(chunk).await.map(drop)
    }

    /// The chunk's plaintext, from the cache or the grid.
    pub async fn get(&self, chunk: ChunkRef) -> Result<Arc<Vec<u8>>, GridError> {
        if let Some(d) = self.cached(&chunk.id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        self.fetch(chunk).await
    }

    /// Fetch from the grid, once for every caller waiting on the same chunk.
    async fn fetch(&self, chunk: ChunkRef) -> Result<Arc<Vec<u8>>, GridError> {
        let slot: Slot = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(chunk.id).or_default().clone()
        };
        let r = slot
            .get_or_init(|| async {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                match self.grid.read_chunk(chunk).await {
                    Ok(d) => {
                        self.fetched_bytes
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                        self.insert(chunk.id, d.clone());
                        Ok(d)
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone();
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chunk.id);
        r.map_err(|reason| GridError::ChunkUnavailable {
            chunk: chunk.id,
            reason,
        })
    }
}
