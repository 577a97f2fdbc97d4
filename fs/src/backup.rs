//! A scripted backup without the mount (`gridback backup PATH --snapshot NAME`): walk PATH,
//! store every file through the same pipeline as the mount ([`Grid::store_reader`]), build the
//! snapshot's tree and seal it exactly as the mount does. It never touches the mount's local
//! database, so it runs while a mount is up.
//!
//! - The walk lists and stats [`BackupOptions::walk_threads`] directories at once (on
//!   blocking threads) and hands files to concurrent uploads as it finds them: at most [`BackupOptions::file_concurrency`] files larger than
//!   [`SMALL_FILE_BYTES`], and up to `file_concurrency + small_file_concurrency` files in
//!   all. A small file costs little memory but several coordinator and node round
//!   trips, so many of them in flight hide that latency (and let the coordinator commit
//!   their chunks together, one fsync for many files).
//! - `--from OLD` reuses the chunk list of every file whose relative path, size, mtime (ns)
//!   and inode number are those recorded in OLD's tree (V2 trees record the source inode).
//!   The new snapshot is opened as a reference clone of OLD at the coordinator, so the reused
//!   chunks are referenced by it and survive OLD's deletion.
//! - Unreadable entries are skipped with a warning (counted in the summary); sockets, FIFOs
//!   and devices are skipped. Only `user.*` xattrs are kept.
//! - A grid failure aborts the backup and leaves NAME open at the coordinator.

mod walk;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use gridback_proto::coord_api::{SnapshotState, TreeChunk};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use crate::grid::{Grid, GridError, StoredData};
use crate::progress::{Progress, ProgressReader};
use crate::tree::{self, FetchTreeError, TreeCipher, TreeV1};
use walk::{FileJob, WalkParams};

/// Files stored at once by default. Each upload already runs its chunks through the parallel
/// pipeline; a few files at once keep the pipeline busy across many small files without
/// multiplying the memory each upload may hold.
pub const DEFAULT_FILE_CONCURRENCY: usize = 4;

/// Small files stored at once by default, on top of [`DEFAULT_FILE_CONCURRENCY`] larger
/// ones. Each holds at most [`SMALL_FILE_BYTES`] of plaintext (plus its sealed packets), so
/// 32 of them cost a few tens of MiB at worst; more gives nothing measurable on a small
/// grid and only deepens the queues.
pub const DEFAULT_SMALL_FILE_CONCURRENCY: usize = 32;

/// A file of at most this many bytes (at walk time) is small: one chunk or a few with the
/// default chunk sizes.
pub const SMALL_FILE_BYTES: u64 = 1024 * 1024;

/// Directories the walk scans at once by default. Listing and stat'ing wait on the disk more
/// than on the CPU (a cold tree on a spinning disk or a network filesystem waits for every
/// inode), so a few more threads than cores keep several requests in flight; past that,
/// contention on the directory locks gives nothing back.
pub const DEFAULT_WALK_THREADS: usize = 4;

/// Files the walk may run ahead of the uploads (a bound on memory, not on speed).
const WALK_QUEUE: usize = 256;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Name of the new snapshot (must not exist).
    pub snapshot: String,
    /// Previous backup of the same tree, to skip unchanged files.
    pub from: Option<String>,
    /// Globs of paths to leave out, matched against the path relative to PATH (`a/b.txt`)
    /// and against the entry's name; `*` also matches `/`.
    pub exclude: Vec<String>,
    /// Files larger than [`SMALL_FILE_BYTES`] stored at once.
    pub file_concurrency: usize,
    /// Small files stored at once, besides the larger ones.
    pub small_file_concurrency: usize,
    /// Directories listed and stat'ed at once by the walk.
    pub walk_threads: usize,
}

impl BackupOptions {
    /// A backup into `snapshot` with the defaults.
    pub fn new(snapshot: impl Into<String>) -> Self {
        Self {
            snapshot: snapshot.into(),
            from: None,
            exclude: Vec::new(),
            file_concurrency: DEFAULT_FILE_CONCURRENCY,
            small_file_concurrency: DEFAULT_SMALL_FILE_CONCURRENCY,
            walk_threads: DEFAULT_WALK_THREADS,
        }
    }
}

/// What a backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupSummary {
    /// Snapshot name.
    pub snapshot: String,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Plaintext bytes of chunks the grid did not have (after dedup).
    pub new_bytes: u64,
    /// Bytes sent to nodes (packets, parity included).
    pub uploaded_bytes: u64,
    /// Files reused unchanged from `--from`.
    pub skipped_unchanged: u64,
    /// Their bytes.
    pub skipped_unchanged_bytes: u64,
    /// Entries left out by `--exclude`.
    pub excluded: u64,
    /// Sockets, FIFOs and devices left out.
    pub special: u64,
    /// Entries that could not be read (see the log).
    pub warnings: u64,
    /// Bytes of the encrypted tree.
    pub tree_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

impl BackupSummary {
    /// Throughput over the snapshot's bytes, in MB/s (10^6).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// PATH is not a directory.
    #[error("{0} is not a directory (back up a directory)")]
    NotADirectory(PathBuf),
    /// PATH could not be read.
    #[error("cannot read {path}: {source}")]
    Source {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An `--exclude` glob does not parse.
    #[error("bad --exclude pattern: {0}")]
    BadGlob(#[from] globset::Error),
    /// The snapshot exists.
    #[error("snapshot {0:?} already exists; choose another name")]
    Exists(String),
    /// `--from` names a snapshot that cannot be a base.
    #[error("--from {name:?}: {reason}")]
    BadBase {
        /// The snapshot.
        name: String,
        /// Why.
        reason: String,
    },
    /// `--from`'s tree could not be read.
    #[error("--from: {0}")]
    BaseTree(#[from] FetchTreeError),
    /// The grid failed.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The walk stopped because the uploads failed.
    #[error("backup cancelled")]
    Cancelled,
    /// A task failed.
    #[error("internal: {0}")]
    Internal(String),
}

fn globs(patterns: &[String]) -> Result<GlobSet, BackupError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p)?);
    }
    Ok(b.build()?)
}

/// Back up the directory `path` into a new sealed snapshot.
pub async fn backup(
    grid: &dyn Grid,
    cipher: &dyn TreeCipher,
    path: &Path,
    opts: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let excludes = globs(&opts.exclude)?;
    let name = opts.snapshot.clone();
    if !std::fs::symlink_metadata(path)
        .map_err(|source| BackupError::Source {
            path: path.to_path_buf(),
            source,
        })?
        .is_dir()
    {
        return Err(BackupError::NotADirectory(path.to_path_buf()));
    }
    let old_record = match &opts.from {
        Some(from) => {
            let r = grid.snapshot_get(from.clone()).await.map_err(|e| match e {
                GridError::NoSuchSnapshot(_) => BackupError::BadBase {
                    name: from.clone(),
                    reason: "no such snapshot".into(),
                },
                other => BackupError::Grid(other),
            })?;
            if r.info.state != SnapshotState::Sealed || r.tree.is_empty() {
                return Err(BackupError::BadBase {
                    name: from.clone(),
                    reason: "the snapshot is not sealed".into(),
                });
            }
            Some(r)
        }
        None => None,
    };
    grid.snapshot_create(name.clone(), opts.from.clone())
        .await
        .map_err(|e| match e {
            GridError::Conflict(_) => BackupError::Exists(name.clone()),
            other => BackupError::Grid(other),
        })?;
    let old = match &old_record {
        Some(r) => {
            progress.phase("reading the previous backup");
            walk::old_files(&tree::fetch_tree(grid, cipher, &r.tree).await?)
        }
        None => Default::default(),
    };
    info!(snapshot = %name, path = %path.display(), from = ?opts.from, "backup started");
    progress.phase("backing up");

    let (tx, rx) = mpsc::channel::<FileJob>(WALK_QUEUE);
    let root = path.to_path_buf();
    let walk_progress = progress.clone();
    let walk_threads = opts.walk_threads;
    let walker = tokio::task::spawn_blocking(move || {
        walk::walk(
            &root,
            WalkParams {
                excludes: &excludes,
                old: &old,
                jobs: tx,
                progress: walk_progress,
                threads: walk_threads,
            },
        )
    });
    let jobs =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|j| (j, rx)) });
    // Large files wait for one of these before they are opened; small files do not.
    let large = Semaphore::new(opts.file_concurrency.max(1));
    let uploads = jobs
        .map(|job| store_file(grid, &name, job, &large, progress.clone()))
        .buffer_unordered(opts.file_concurrency.max(1) + opts.small_file_concurrency)
        .try_collect::<Vec<_>>();
    let (walked, stored) = tokio::join!(walker, uploads);
    let stored = stored?;
    let mut walked = walked.map_err(|e| BackupError::Internal(format!("walk task: {e}")))??;

    let mut sum = BackupSummary {
        snapshot: name.clone(),
        ..Default::default()
    };
    let mut dropped = Vec::new();
    for (index, result) in stored {
        match result {
            Some(data) => {
                let node = &mut walked.nodes[index];
                sum.new_bytes += data.new_bytes;
                sum.uploaded_bytes += data.uploaded_bytes;
                if data.len != node.inode.size {
                    // Changed while read: what was read is kept, and the next backup
                    // `--from` this one reads it again.
                    node.source = None;
                }
                node.inode.size = data.len;
                node.chunks = data.chunks;
            }
            None => dropped.push(index),
        }
    }
    walked.warnings += dropped.len() as u64;
    walked.files -= dropped.len() as u64;
    let nodes = drop_files(std::mem::take(&mut walked.nodes), &dropped);
    sum.bytes = nodes
        .iter()
        .map(|n| n.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>())
        .sum();
    let tree = TreeV1 { nodes };

    progress.phase("sealing");
    let blob = cipher.seal(&tree::encode(&tree));
    sum.tree_bytes = blob.len() as u64;
    let stored = grid
        .store_reader(name.clone(), Box::new(Cursor::new(blob)))
        .await?;
    let chunks: Vec<TreeChunk> = stored
        .chunks
        .iter()
        .map(|c| TreeChunk {
            id: c.id,
            len: u64::from(c.len),
        })
        .collect();
    grid.snapshot_seal(name.clone(), chunks, sum.tree_bytes)
        .await?;
    sum.files = walked.files;
    sum.dirs = walked.dirs;
    sum.symlinks = walked.symlinks;
    sum.skipped_unchanged = walked.skipped_unchanged;
    sum.skipped_unchanged_bytes = walked.skipped_unchanged_bytes;
    sum.excluded = walked.excluded;
    sum.special = walked.special;
    sum.warnings = walked.warnings;
    sum.seconds = started.elapsed().as_secs_f64();
    info!(snapshot = %name, files = sum.files, bytes = sum.bytes, new_bytes = sum.new_bytes,
        skipped = sum.skipped_unchanged, seconds = sum.seconds, "backup sealed");
    Ok(sum)
}

/// Store one file. `Ok(None)`: the file could not be read (vanished, no permission) and is
/// left out of the snapshot with a warning; grid failures are errors.
async fn store_file(
    grid: &dyn Grid,
    snapshot: &str,
    job: FileJob,
    large: &Semaphore,
    progress: Arc<dyn Progress>,
) -> Result<(usize, Option<StoredData>), BackupError> {
    let _permit = if job.size > SMALL_FILE_BYTES {
        Some(
            large
                .acquire()
                .await
                .map_err(|e| BackupError::Internal(e.to_string()))?,
        )
    } else {
        None
    };
    let file = match std::fs::File::open(&job.path) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %job.path.display(), error = %e, "cannot open; left out of the snapshot");
            progress.advanced(job.size);
            return Ok((job.index, None));
        }
    };
    let reader = Box::new(ProgressReader::new(file, progress.clone()));
    match grid.store_reader(snapshot.to_string(), reader).await {
        Ok(data) => {
            progress.advanced(job.size.saturating_sub(data.len));
            Ok((job.index, Some(data)))
        }
        Err(GridError::Source(e)) => {
            warn!(path = %job.path.display(), error = %e, "read failed; left out of the snapshot");
            Ok((job.index, None))
        }
        Err(e) => Err(e.into()),
    }
}

/// Remove file nodes (which have no children) and renumber the parents.
fn drop_files(nodes: Vec<crate::tree::TreeNode>, dropped: &[usize]) -> Vec<crate::tree::TreeNode> {
    if dropped.is_empty() {
        return nodes;
    }
    let gone: std::collections::HashSet<usize> = dropped.iter().copied().collect();
    let mut new_index = vec![0u32; nodes.len()];
    let mut out = Vec::with_capacity(nodes.len() - gone.len());
    for (i, mut n) in nodes.into_iter().enumerate() {
        if gone.contains(&i) {
            continue;
        }
        new_index[i] = out.len() as u32;
        n.parent = new_index[n.parent as usize];
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests;
