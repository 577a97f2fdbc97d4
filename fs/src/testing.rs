//! `MemGrid`: an in-memory [`Grid`] for testing the filesystem core without a network.
//!
//! It runs the real chunker, chunk ids, compression, encryption and padding; sealed chunks
//! live in a map, snapshots in memory with the same state rules as the coordinator (names
//! unique, sealed snapshots refuse data). Chunks can be removed or corrupted to test how the
//! core reports unavailable data; stores can be refused the way the coordinator refuses them
//! ([`Refusal`]), and terms can be set for statfs. [`Hooked`] puts a test's own hooks in
//! front of one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use gridback_proto::ChunkId;
use gridback_proto::coord_api::{SnapshotInfo, SnapshotRecord, SnapshotState, TreeChunk};
use gridback_proto::subscription::ClientTerms;

use crate::chunker::{Chunker, ChunkingParams};
use crate::compress::Level;
use crate::crypto::ChunkCrypto;
use crate::grid::{ChunkRef, Grid, GridError, StoredData};
use crate::keys::ClientKeys;
use crate::packet;

mod hooks;
pub use hooks::{GridHooks, Hooked};

#[derive(Default)]
struct State {
    /// Padded sealed blobs by id.
    chunks: HashMap<ChunkId, Vec<u8>>,
    /// Snapshots by name, with the chunks each references.
    snapshots: BTreeMap<String, (SnapshotRecord, HashSet<ChunkId>)>,
    /// Refuse every store this way.
    refusal: Option<Refusal>,
    /// Terms reported by [`Grid::terms`].
    terms: Option<ClientTerms>,
    /// Calls of [`Grid::prefetch_locations`], and every chunk they named.
    location_prefetches: usize,
    located: HashSet<ChunkId>,
}

/// A refusal the coordinator can give a write, injected with [`MemGrid::refuse_stores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The quota would be exceeded.
    Quota,
    /// The subscription is suspended or expired.
    Suspended,
    /// No placement satisfies the rules.
    NoPlacement,
}

impl Refusal {
    fn error(self) -> GridError {
        match self {
            Refusal::Quota => GridError::QuotaExceeded("quota 1 MiB, 1 MiB charged".into()),
            Refusal::Suspended => GridError::Suspended("subscription suspended".into()),
            Refusal::NoPlacement => GridError::NoPlacement {
                chunk: "-".into(),
                reason: "backup proximity min 3: no node".into(),
            },
        }
    }
}

/// An in-memory grid.
pub struct MemGrid {
    keys: ClientKeys,
    crypto: Arc<ChunkCrypto>,
    chunking: ChunkingParams,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemGrid")
            .field("chunks", &self.chunk_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemGrid {
    fn default() -> Self {
        Self::new()
    }
}

impl MemGrid {
    /// A grid with fresh keys and small chunks (4 KiB / 16 KiB / 64 KiB) so tests exercise
    /// multi-chunk files cheaply.
    pub fn new() -> Self {
        let chunking = ChunkingParams::new(4096, 16384, 65536).expect("invariant: valid sizes");
        Self::with_keys(ClientKeys::generate(), chunking)
    }

    /// A grid with given keys and chunk sizes.
    pub fn with_keys(keys: ClientKeys, chunking: ChunkingParams) -> Self {
        let crypto = Arc::new(ChunkCrypto::new(&keys.domain));
        Self {
            keys,
            crypto,
            chunking,
            state: Arc::default(),
        }
    }

    /// Refuse every following store with `refusal` (`None`: accept again).
    pub fn refuse_stores(&self, refusal: Option<Refusal>) {
        self.lock().refusal = refusal;
    }

    /// Set the terms [`Grid::terms`] reports.
    pub fn set_terms(&self, terms: Option<ClientTerms>) {
        self.lock().terms = terms;
    }

    /// The keys (for the tree cipher).
    pub fn keys(&self) -> &ClientKeys {
        &self.keys
    }

    /// The chunk cipher (chunk ids).
    pub fn chunk_crypto(&self) -> Arc<ChunkCrypto> {
        self.crypto.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls of [`Grid::prefetch_locations`] so far, and the distinct chunks they named (an
    /// in-memory grid has nothing to locate; tests check what the core asks for).
    pub fn location_prefetches(&self) -> (usize, HashSet<ChunkId>) {
        let st = self.lock();
        (st.location_prefetches, st.located.clone())
    }

    /// Distinct chunks stored.
    pub fn chunk_count(&self) -> usize {
        self.lock().chunks.len()
    }

    /// Bytes of sealed, padded chunks stored.
    pub fn stored_bytes(&self) -> u64 {
        self.lock().chunks.values().map(|c| c.len() as u64).sum()
    }

    /// Forget a chunk (simulates losing every packet). Returns whether it existed.
    pub fn remove_chunk(&self, id: &ChunkId) -> bool {
        self.lock().chunks.remove(id).is_some()
    }

    /// Flip a byte of a stored chunk (simulates corruption that got past the packets'
    /// checksums). Returns whether it existed.
    pub fn corrupt_chunk(&self, id: &ChunkId) -> bool {
        match self.lock().chunks.get_mut(id) {
            Some(c) => {
                // Flip a byte of the ciphertext itself (just past the length prefix): a flip
                // in the padding would go unnoticed, which is by design.
                let at = 8.min(c.len() - 1);
                c[at] ^= 0x55;
                true
            }
            None => false,
        }
    }

    fn open_snapshot(state: &State, name: &str) -> Result<(), GridError> {
        match state.snapshots.get(name) {
            None => Err(GridError::NoSuchSnapshot(name.to_string())),
            Some((r, _)) if r.info.state == SnapshotState::Sealed => {
                Err(GridError::Conflict(format!("snapshot {name:?} is sealed")))
            }
            Some(_) => Ok(()),
        }
    }
}

fn info_of(record: &SnapshotRecord, refs: &HashSet<ChunkId>) -> SnapshotInfo {
    SnapshotInfo {
        chunk_refs: refs.len() as u64,
        ..record.info.clone()
    }
}

impl Grid for MemGrid {
    fn prefetch_locations<'a>(&'a self, chunks: &'a [ChunkId]) -> BoxFuture<'a, ()> {
        let mut st = self.lock();
        st.location_prefetches += 1;
        st.located.extend(chunks.iter().copied());
        futures::future::ready(()).boxed()
    }

    fn terms(&self) -> Option<ClientTerms> {
        self.lock().terms.clone()
    }

    fn store_reader(
        &self,
        snapshot: String,
        reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>> {
        let (state, crypto, chunking) = (self.state.clone(), self.crypto.clone(), self.chunking);
        async move {
            {
                let st = self.lock();
                Self::open_snapshot(&st, &snapshot)?;
                if let Some(r) = st.refusal {
                    return Err(r.error());
                }
            }
            let work = move || -> Result<StoredData, GridError> {
                let mut out = StoredData::default();
                for chunk in Chunker::new(reader, chunking, crypto.cdc_seed()) {
                    let data = chunk.map_err(GridError::Source)?;
                    let id = crypto.chunk_id(&data);
                    let present = state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .chunks
                        .contains_key(&id);
                    if !present {
                        let blob = packet::seal_chunk(&crypto, Level::default(), &id, &data)
                            .map_err(|e| GridError::Internal(e.to_string()))?;
                        out.new_chunks += 1;
                        out.new_bytes += data.len() as u64;
                        out.uploaded_bytes += blob.len() as u64;
                        state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .chunks
                            .insert(id, blob);
                    }
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((_, refs)) = st.snapshots.get_mut(&snapshot) {
                        refs.insert(id);
                    }
                    out.len += data.len() as u64;
                    out.chunks.push(ChunkRef {
                        id,
                        len: data.len() as u32,
                    });
                }
                Ok(out)
            };
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| GridError::Internal(format!("store task: {e}")))?
        }
        .boxed()
    }

    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>> {
        async move {
            let blob = self.lock().chunks.get(&chunk.id).cloned().ok_or_else(|| {
                GridError::ChunkUnavailable {
                    chunk: chunk.id,
                    reason: "not stored".into(),
                }
            })?;
            let crypto = self.crypto.clone();
            let data = tokio::task::spawn_blocking(move || {
                packet::open_chunk(&crypto, &chunk.id, &blob, Some(chunk.len))
            })
            .await
            .map_err(|e| GridError::Internal(format!("read task: {e}")))?
            .map_err(|e| GridError::ChunkUnavailable {
                chunk: chunk.id,
                reason: e.to_string(),
            })?;
            Ok(Arc::new(data))
        }
        .boxed()
    }

    fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        async move {
            let mut st = self.lock();
            if st.snapshots.contains_key(&name) {
                return Err(GridError::Conflict(format!("snapshot {name:?} exists")));
            }
            let refs = match &from {
                Some(f) => st
                    .snapshots
                    .get(f)
                    .ok_or_else(|| GridError::NoSuchSnapshot(f.clone()))?
                    .1
                    .clone(),
                None => HashSet::new(),
            };
            let info = SnapshotInfo {
                name: name.clone(),
                state: SnapshotState::Open,
                created_unix_ms: gridback_proto::now_unix_ms(),
                sealed_unix_ms: None,
                tree_bytes: 0,
                chunk_refs: refs.len() as u64,
            };
            let record = SnapshotRecord {
                info: info.clone(),
                tree: Vec::new(),
            };
            st.snapshots.insert(name, (record, refs));
            Ok(info)
        }
        .boxed()
    }

    fn snapshot_list(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>, GridError>> {
        async move {
            Ok(self
                .lock()
                .snapshots
                .values()
                .map(|(r, refs)| info_of(r, refs))
                .collect())
        }
        .boxed()
    }

    fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        async move {
            let mut st = self.lock();
            Self::open_snapshot(&st, &name)?;
            let (record, refs) = st
                .snapshots
                .get_mut(&name)
                .expect("invariant: checked above");
            refs.extend(tree.iter().map(|t| t.id));
            record.info.state = SnapshotState::Sealed;
            record.info.sealed_unix_ms = Some(gridback_proto::now_unix_ms());
            record.info.tree_bytes = tree_bytes;
            record.tree = tree;
            Ok(info_of(record, refs))
        }
        .boxed()
    }

    fn snapshot_get(&self, name: String) -> BoxFuture<'_, Result<SnapshotRecord, GridError>> {
        async move {
            let st = self.lock();
            let (record, refs) = st
                .snapshots
                .get(&name)
                .ok_or(GridError::NoSuchSnapshot(name.clone()))?;
            Ok(SnapshotRecord {
                info: info_of(record, refs),
                tree: record.tree.clone(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_dedup_read_and_snapshot_rules() {
        let g = MemGrid::new();
        assert!(matches!(
            g.store_reader("nope".into(), Box::new(&b"x"[..])).await,
            Err(GridError::NoSuchSnapshot(_))
        ));
        g.snapshot_create("a".into(), None).await.unwrap();
        assert!(matches!(
            g.snapshot_create("a".into(), None).await,
            Err(GridError::Conflict(_))
        ));
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let s1 = g
            .store_reader("a".into(), Box::new(std::io::Cursor::new(data.clone())))
            .await
            .unwrap();
        assert!(s1.chunks.len() > 2);
        assert_eq!(s1.len, data.len() as u64);
        let s2 = g
            .store_reader("a".into(), Box::new(std::io::Cursor::new(data.clone())))
            .await
            .unwrap();
        assert_eq!(s2.new_chunks, 0);
        assert_eq!(s1.chunks, s2.chunks);
        let mut back = Vec::new();
        for c in &s1.chunks {
            back.extend_from_slice(&g.read_chunk(*c).await.unwrap());
        }
        assert_eq!(back, data);

        g.snapshot_create("b".into(), Some("a".into()))
            .await
            .unwrap();
        let sealed = g.snapshot_seal("b".into(), vec![], 0).await.unwrap();
        assert_eq!(sealed.state, SnapshotState::Sealed);
        assert_eq!(
            sealed.chunk_refs,
            g.snapshot_get("a".into()).await.unwrap().info.chunk_refs
        );
        assert!(matches!(
            g.store_reader("b".into(), Box::new(&b"x"[..])).await,
            Err(GridError::Conflict(_))
        ));
        assert_eq!(g.snapshot_list().await.unwrap().len(), 2);

        let victim = s1.chunks[1];
        assert!(g.corrupt_chunk(&victim.id));
        assert!(matches!(
            g.read_chunk(victim).await,
            Err(GridError::ChunkUnavailable { .. })
        ));
        assert!(g.remove_chunk(&victim.id));
        assert!(matches!(
            g.read_chunk(victim).await,
            Err(GridError::ChunkUnavailable { .. })
        ));
    }
}
