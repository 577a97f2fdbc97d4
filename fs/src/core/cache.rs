//! A byte-bounded cache of decoded chunks, with in-flight deduplication so that a read and
//! the readahead that anticipated it fetch a chunk once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gridback_proto::ChunkId;
use lru::LruCache;
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

    /// The chunk's plaintext, from the cache or the grid.
    pub async fn get(&self, chunk: ChunkRef) -> Result<Arc<Vec<u8>>, GridError> {
        if let Some(d) = self.cached(&chunk.id) {
            return Ok(d);
        }
        let slot: Slot = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(chunk.id).or_default().clone()
        };
        let r = slot
            .get_or_init(|| async {
                match self.grid.read_chunk(chunk).await {
                    Ok(d) => {
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
