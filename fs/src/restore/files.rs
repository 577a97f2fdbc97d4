//! Writing the files of a restore: how many at once, the bound on chunk data in memory, and
//! chunk locations looked up ahead in batches.
//!
//! - A file larger than [`SMALL_FILE_BYTES`] waits for one of
//!   [`RestoreOptions::file_concurrency`] permits; a small one does not, and up to
//!   `file_concurrency + small_file_concurrency` files are written at once. A small file
//!   costs little memory but several waits (its packets from k nodes, a create, a
//!   rename): many at once hide them, as for backups (`crate::backup`).
//! - Each batch of chunks takes its size from one byte budget of
//!   [`RestoreOptions::max_in_flight_bytes`] before it is fetched and gives it back once it is
//!   written, so the chunk data in memory stays within the budget whatever the concurrency.
//! - The locations of the small files' chunks are looked up ahead, at most
//!   [`LOCATE_AHEAD_CHUNKS`] at a time and one group ahead of the files being written
//!   ([`Grid::prefetch_locations`](crate::grid::Grid::prefetch_locations): one coordinator round trip), so a small file
//!   normally needs no locate round trip of its own.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use gridback_proto::ChunkId;
use tokio::sync::Semaphore;

use super::{ChunkFetch, RestoreError, RestoreOptions, write};
use crate::backup::SMALL_FILE_BYTES;
use crate::grid::{ChunkRef, GridError};
use crate::progress::Progress;
use crate::tree::TreeNode;

/// Chunks whose locations are looked up in one round trip ahead of the small files that need
/// them. Enough to make the round trips rare (one per few hundred small files) while two
/// groups (the one being written and the next) stay far below the reader's location cache
/// and each answer (k + m signed orders per chunk) stays well under a megabyte.
pub const LOCATE_AHEAD_CHUNKS: usize = 512;

/// Groups of locations looked up ahead of the files being written: the next group's round
/// trip overlaps the current group's writes.
const LOCATE_GROUPS_AHEAD: usize = 2;

/// A file to write: its tree node and where it goes.
pub(super) type FileJob<'a> = (&'a TreeNode, PathBuf);

/// What writing the files did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Written {
    /// Bytes fetched from the grid.
    pub fetched_bytes: u64,
    /// Attributes that could not be set.
    pub warnings: u64,
}

fn is_small(node: &TreeNode) -> bool {
    node.inode.size <= SMALL_FILE_BYTES
}

/// Write `files` (see the module doc).
pub(super) async fn write_files(
    grid: &dyn ChunkFetch,
    files: Vec<FileJob<'_>>,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<Written, RestoreError> {
    let large = Semaphore::new(opts.file_concurrency.max(1));
    let budget = Budget::new(opts.max_in_flight_bytes);
    let batch_cap = (opts.max_in_flight_bytes / opts.file_concurrency.max(1) as u64).max(1);
    let (large, budget) = (&large, &budget);
    futures::stream::iter(locate_groups(files, LOCATE_AHEAD_CHUNKS))
        .map(|group| async move {
            let mut seen = HashSet::new();
            let ids: Vec<ChunkId> = group
                .iter()
                .filter(|(node, _)| is_small(node))
                .flat_map(|(node, _)| node.chunks.iter().map(|c| c.id))
                .filter(|id| seen.insert(*id))
                .collect();
            if !ids.is_empty() {
                grid.prefetch_locations(&ids).await;
            }
            futures::stream::iter(group)
        })
        .buffered(LOCATE_GROUPS_AHEAD)
        .flatten()
        .map(|(node, path)| {
            write_file(grid, node, path, large, budget, batch_cap, progress.clone())
        })
        .buffer_unordered(opts.file_concurrency.max(1) + opts.small_file_concurrency)
        .try_fold(Written::default(), |acc, w| async move {
            Ok(Written {
                fetched_bytes: acc.fetched_bytes + w.fetched_bytes,
                warnings: acc.warnings + w.warnings,
            })
        })
        .await
}

/// Consecutive runs of `files` whose small files hold at most `max_chunks` chunks in all (at
/// least one file each; large files do not count: each of their batches is located when it
/// is fetched).
pub(super) fn locate_groups(files: Vec<FileJob<'_>>, max_chunks: usize) -> Vec<Vec<FileJob<'_>>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut chunks = 0;
    for job in files {
        let n = if is_small(job.0) {
            job.0.chunks.len()
        } else {
            0
        };
        if !group.is_empty() && chunks + n > max_chunks {
            groups.push(std::mem::take(&mut group));
            chunks = 0;
        }
        chunks += n;
        group.push(job);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// The bytes of chunk data that may be in memory at once, as semaphore permits (one per
/// byte, at most `u32::MAX` in all so that any batch can take its size in one call).
struct Budget {
    permits: Semaphore,
    total: u32,
}

impl Budget {
    fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Semaphore::new(total as usize),
            total,
        }
    }

    /// Take `bytes` (a batch larger than the whole budget takes all of it).
    async fn take(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, RestoreError> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.permits
            .acquire_many(n)
            .await
            .map_err(|e| RestoreError::Internal(format!("byte budget: {e}")))
    }
}

/// Write one file.
async fn write_file(
    grid: &dyn ChunkFetch,
    node: &TreeNode,
    path: PathBuf,
    large: &Semaphore,
    budget: &Budget,
    batch_cap: u64,
    progress: Arc<dyn Progress>,
) -> Result<Written, RestoreError> {
    let _large = if is_small(node) {
        None
    } else {
        Some(
            large
                .acquire()
                .await
                .map_err(|e| RestoreError::Internal(format!("file permits: {e}")))?,
        )
    };
    let partial = write::partial_path(&path);
    let mut out = write::Partial::create(&partial)?;
    let mut fetched = 0u64;
    for batch in batches(&node.chunks, batch_cap) {
        let n: u64 = batch.iter().map(|c| u64::from(c.len)).sum();
        let _bytes = budget.take(n).await?;
        let results = grid.fetch_chunks(batch).await;
        let mut data = Vec::with_capacity(batch.len());
        for (c, r) in batch.iter().zip(results) {
            let d = r?;
            if d.len() != c.len as usize {
                return Err(RestoreError::Grid(GridError::ChunkUnavailable {
                    chunk: c.id,
                    reason: format!("{} bytes returned, {} expected", d.len(), c.len),
                }));
            }
            data.push(d);
        }
        out = out.write_all(data).await?;
        fetched += n;
        progress.advanced(n);
    }
    let warnings = out.finish(node.inode.clone(), path).await?;
    Ok(Written {
        fetched_bytes: fetched,
        warnings,
    })
}

/// Consecutive runs of chunks of at most `cap` bytes (at least one chunk each).
pub(super) fn batches(chunks: &[ChunkRef], cap: u64) -> Vec<&[ChunkRef]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        if i > start && bytes + u64::from(c.len) > cap {
            out.push(&chunks[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += u64::from(c.len);
    }
    if start < chunks.len() {
        out.push(&chunks[start..]);
    }
    out
}
