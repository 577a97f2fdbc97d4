//! [`Hooked`]: a test double in front of a [`MemGrid`] that replaces only what it observes
//! or delays; every other [`Grid`] method is the grid's own.

use std::io::Read;
use std::sync::Arc;

use futures::future::BoxFuture;
use gridback_proto::ChunkId;
use gridback_proto::coord_api::{SnapshotInfo, SnapshotRecord, TreeChunk};
use gridback_proto::subscription::ClientTerms;

use super::MemGrid;
use crate::grid::{ChunkRef, Grid, GridError, StoredData};

/// What a test puts in front of a [`MemGrid`]. Each method defaults to the grid's own.
pub trait GridHooks: Send + Sync {
    /// The grid underneath.
    fn grid(&self) -> &MemGrid;

    /// [`Grid::store_reader`].
    fn store_reader(
        &self,
        snapshot: String,
        reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>> {
        self.grid().store_reader(snapshot, reader)
    }

    /// [`Grid::read_chunk`].
    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>> {
        self.grid().read_chunk(chunk)
    }

    /// [`Grid::prefetch_locations`].
    fn prefetch_locations<'a>(&'a self, chunks: &'a [ChunkId]) -> BoxFuture<'a, ()> {
        self.grid().prefetch_locations(chunks)
    }
}

/// The [`Grid`] made of a test's [`GridHooks`] (snapshot calls always go to the grid).
#[derive(Debug, Default)]
pub struct Hooked<H>(pub H);

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

impl<H: GridHooks + 'static> Grid for Hooked<H> {
    fn store_reader(
        &self,
        snapshot: String,
        reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>> {
        self.0.store_reader(snapshot, reader)
    }
    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>> {
        self.0.read_chunk(chunk)
    }
    fn prefetch_locations<'a>(&'a self, chunks: &'a [ChunkId]) -> BoxFuture<'a, ()> {
        self.0.prefetch_locations(chunks)
    }
    fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.0.grid().snapshot_create(name, from)
    }
    fn snapshot_list(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>, GridError>> {
        self.0.grid().snapshot_list()
    }
    fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.0.grid().snapshot_seal(name, tree, tree_bytes)
    }
    fn snapshot_get(&self, name: String) -> BoxFuture<'_, Result<SnapshotRecord, GridError>> {
        self.0.grid().snapshot_get(name)
    }
    fn terms(&self) -> Option<ClientTerms> {
        self.0.grid().terms()
    }
}
