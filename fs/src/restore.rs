//! `gridback restore SNAPSHOT[/PATH] DEST`: fetch a sealed snapshot's tree from the grid and
//! write it out, without the mount.
//!
//! - DEST is a directory. Restoring a directory writes its contents into DEST (and gives
//!   DEST its mode, owner and times, like `cp -a SRC/. DEST/`); restoring a file or a
//!   symlink writes `DEST/NAME`.
//! - DEST must be missing or empty, unless `--overwrite`, or unless it holds the resume
//!   marker ([`MARKER`]) of an interrupted restore of the same `SNAPSHOT[/PATH]`. The marker
//!   is written before anything else and removed only once every file is in place and every
//!   directory has its attributes, all made durable (`syncfs`): a restore killed at any
//!   point before that resumes. Removing the marker moves DEST's mtime, so when DEST is the
//!   restored directory its times are set once more after the removal (a kill between those
//!   two calls leaves a complete DEST whose only flaw is its own mtime; `--overwrite` fixes
//!   it without fetching anything).
//! - When resuming or overwriting, a regular file already at its place with the right size
//!   and mtime (ns) is kept if its content is verified too (each piece hashes to its chunk
//!   id: files are not fsynced one by one, so a crash of the machine may leave a renamed file
//!   whose data never reached the disk); everything else is written again. Entries of DEST
//!   that are not in the snapshot are left alone.
//! - Each file is written to `NAME.gridback-partial`, given its xattrs, owner (when running
//!   as root), mode and times, and only then renamed to NAME: an interrupted restore never
//!   leaves a partial file under a real name. Nothing is fsynced per file; one `syncfs`
//!   makes everything durable before the marker goes.
//! - Chunks are fetched in batches through [`ChunkFetch`] (for [`GridClient`]: parallel packet
//!   fetches from the nodes, located beforehand in batches), many small files at once beside
//!   a few large ones, with at most [`RestoreOptions::max_in_flight_bytes`] of chunk data in
//!   memory (see `files`).

mod files;
mod write;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use gridback_proto::coord_api::SnapshotState;
use serde::Serialize;
use tracing::info;

use crate::client::GridClient;
use crate::crypto::ChunkCrypto;
use crate::grid::{ChunkRef, Grid, GridError};
use crate::meta::{Inode, Kind};
use crate::progress::Progress;
use crate::testing::MemGrid;
use crate::tree::{self, FetchTreeError, TreeCipher, TreeV1};

/// Name of the resume marker inside DEST.
pub const MARKER: &str = ".gridback-restore";

/// Chunk data in memory at once by default (fetched and not yet written).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;

/// Files larger than [`SMALL_FILE_BYTES`](crate::backup::SMALL_FILE_BYTES) written at once by
/// default: each fetches its chunks in batches of `max_in_flight_bytes / file_concurrency`,
/// so a few of them overlap one file's fetch with another's writes and share the byte
/// budget evenly.
pub const DEFAULT_FILE_CONCURRENCY: usize = 4;

/// Small files written at once by default, on top of [`DEFAULT_FILE_CONCURRENCY`] larger
/// ones. A small file is one chunk or a few (at most 1 MiB of the byte budget) but waits on
/// k packet gets, a create and a rename: 32 at once keep the nodes and the disk
/// busy (on a 6-node local grid more gave nothing measurable) and cost at most 32 MiB.
pub const DEFAULT_SMALL_FILE_CONCURRENCY: usize = 32;

/// A grid that can fetch several chunks in one go (restore's batched reads).
pub trait ChunkFetch: Grid {
    /// The chunk cipher, whose keyed hash verifies files kept from an earlier run.
    fn chunk_crypto(&self) -> Arc<ChunkCrypto>;

    /// Fetch `chunks`; results in the order asked.
    fn fetch_chunks<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Arc<Vec<u8>>, GridError>>>;
}

impl ChunkFetch for GridClient {
    fn chunk_crypto(&self) -> Arc<ChunkCrypto> {
        GridClient::chunk_crypto(self)
    }

    fn fetch_chunks<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Arc<Vec<u8>>, GridError>>> {
        GridClient::read_chunks(self, chunks).boxed()
    }
}

impl ChunkFetch for MemGrid {
    fn chunk_crypto(&self) -> Arc<ChunkCrypto> {
        MemGrid::chunk_crypto(self)
    }

    fn fetch_chunks<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Vec<Result<Arc<Vec<u8>>, GridError>>> {
        futures::future::join_all(chunks.iter().map(|c| self.read_chunk(*c))).boxed()
    }
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Write into a non-empty DEST, replacing what differs.
    pub overwrite: bool,
    /// Files larger than [`SMALL_FILE_BYTES`](crate::backup::SMALL_FILE_BYTES) written at
    /// once.
    pub file_concurrency: usize,
    /// Small files written at once, besides the larger ones.
    pub small_file_concurrency: usize,
    /// Chunk data in memory at once (fetched and not yet written).
    pub max_in_flight_bytes: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            file_concurrency: DEFAULT_FILE_CONCURRENCY,
            small_file_concurrency: DEFAULT_SMALL_FILE_CONCURRENCY,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSummary {
    /// Snapshot name.
    pub snapshot: String,
    /// Path inside the snapshot ("" for all of it).
    pub path: String,
    /// Regular files restored (kept ones included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file content restored (kept ones included).
    pub bytes: u64,
    /// Bytes fetched from the grid.
    pub fetched_bytes: u64,
    /// Files already in place (resume or `--overwrite`) and kept.
    pub skipped_existing: u64,
    /// Attributes that could not be set (xattrs on a filesystem without them…).
    pub warnings: u64,
    /// Whether this run resumed an interrupted restore.
    pub resumed: bool,
    /// Wall time.
    pub seconds: f64,
}

impl RestoreSummary {
    /// Throughput over the restored bytes, in MB/s (10^6).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// `SNAPSHOT[/PATH]` is malformed.
    #[error("bad snapshot path {0:?}: expected SNAPSHOT or SNAPSHOT/PATH")]
    BadSpec(String),
    /// No such snapshot.
    #[error("snapshot {0:?} does not exist")]
    NoSuchSnapshot(String),
    /// The snapshot is still open (its tree lives in the mount).
    #[error("snapshot {0:?} is open; seal it first (gridback snapshot seal {0})")]
    NotSealed(String),
    /// PATH is not in the snapshot.
    #[error("{path:?} does not exist in snapshot {snapshot:?}")]
    NoSuchPath {
        /// Snapshot.
        snapshot: String,
        /// Path asked for.
        path: String,
    },
    /// DEST holds files and neither `--overwrite` nor a matching resume marker allows it.
    #[error(
        "{0} is not empty; restore into an empty directory, or pass --overwrite to write over it"
    )]
    NotEmpty(PathBuf),
    /// DEST exists and is not a directory.
    #[error("{0} exists and is not a directory")]
    DestNotDir(PathBuf),
    /// The tree could not be fetched.
    #[error(transparent)]
    Tree(#[from] FetchTreeError),
    /// The tree holds a name that cannot be written safely ("", ".", "..", or with '/').
    #[error("snapshot tree holds an unsafe name {0:?}")]
    UnsafeName(String),
    /// The grid failed.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Writing DEST failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A task failed.
    #[error("internal: {0}")]
    Internal(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Split `SNAPSHOT[/PATH]` into the name and the path's components.
pub fn parse_spec(spec: &str) -> Result<(String, Vec<String>), RestoreError> {
    let (name, path) = spec.split_once('/').unwrap_or((spec, ""));
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
        .collect();
    if name.is_empty() || parts.iter().any(|p| p == "..") {
        return Err(RestoreError::BadSpec(spec.to_string()));
    }
    Ok((name.to_string(), parts))
}

fn safe_name(name: &[u8]) -> Result<(), RestoreError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(RestoreError::UnsafeName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

/// Restore `spec` (`SNAPSHOT[/PATH]`) into the directory `dest`.
pub async fn restore(
    grid: &dyn ChunkFetch,
    cipher: &dyn TreeCipher,
    spec: &str,
    dest: &Path,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let (name, parts) = parse_spec(spec)?;
    progress.phase("fetching the snapshot tree");
    let record = grid.snapshot_get(name.clone()).await.map_err(|e| match e {
        GridError::NoSuchSnapshot(_) => RestoreError::NoSuchSnapshot(name.clone()),
        other => RestoreError::Grid(other),
    })?;
    if record.info.state != SnapshotState::Sealed || record.tree.is_empty() {
        return Err(RestoreError::NotSealed(name));
    }
    let tree = tree::fetch_tree(grid, cipher, &record.tree).await?;
    let children = children_of(&tree)?;
    let selected = resolve(&tree, &children, &parts).ok_or_else(|| RestoreError::NoSuchPath {
        snapshot: name.clone(),
        path: parts.join("/"),
    })?;
    let marker_text = format!("snapshot={name}\npath={}\n", parts.join("/"));
    let resumed = write::prepare_dest(dest, &marker_text, opts.overwrite)?;
    info!(snapshot = %name, path = %parts.join("/"), dest = %dest.display(), resumed, "restore started");

    // Place every entry: parents before children.
    let top = if tree.nodes[selected].inode.kind == Kind::Dir {
        dest.to_path_buf()
    } else {
        dest.join(OsStr::from_bytes(&tree.nodes[selected].name))
    };
    let mut plan: Vec<(usize, PathBuf)> = vec![(selected, top)];
    let mut i = 0;
    while i < plan.len() {
        let (idx, path) = plan[i].clone();
        if tree.nodes[idx].inode.kind == Kind::Dir {
            for &c in &children[idx] {
                let child = path.join(OsStr::from_bytes(&tree.nodes[c].name));
                plan.push((c, child));
            }
        }
        i += 1;
    }

    let mut sum = RestoreSummary {
        snapshot: name.clone(),
        path: parts.join("/"),
        resumed,
        ..Default::default()
    };
    let mut files = Vec::new();
    let mut in_place = Vec::new();
    let mut dirs = Vec::new();
    for (idx, path) in &plan {
        let node = &tree.nodes[*idx];
        match node.inode.kind {
            Kind::Dir => {
                write::make_dir(path, opts.overwrite || resumed)?;
                dirs.push((*idx, path.clone()));
                sum.dirs += 1;
            }
            Kind::Symlink => {
                sum.warnings += write::make_symlink(path, &node.inode)?;
                sum.symlinks += 1;
            }
            Kind::File => {
                sum.files += 1;
                sum.bytes += node.inode.size;
                progress.found(1, node.inode.size);
                if write::in_place(path, &node.inode) {
                    in_place.push((node, path.clone()));
                } else {
                    files.push((node, path.clone()));
                }
            }
        }
    }
    // Files were not fsynced one by one: keep one only if its content is right.
    if !in_place.is_empty() {
        progress.phase("verifying files already in place");
        let crypto = grid.chunk_crypto();
        let checks: Vec<(PathBuf, Vec<ChunkRef>)> = in_place
            .iter()
            .map(|(node, path)| (path.clone(), node.chunks.clone()))
            .collect();
        let ok: Vec<bool> = tokio::task::spawn_blocking(move || {
            checks
                .iter()
                .map(|(path, chunks)| write::content_matches(path, chunks, &crypto))
                .collect()
        })
        .await
        .map_err(|e| RestoreError::Internal(format!("verify task: {e}")))?;
        for ((node, path), ok) in in_place.into_iter().zip(ok) {
            if ok {
                sum.skipped_existing += 1;
                progress.advanced(node.inode.size);
            } else {
                info!(path = %path.display(), "file in place differs from the snapshot; writing it again");
                files.push((node, path));
            }
        }
    }
    progress.found_all();
    progress.phase("restoring");
    let written = files::write_files(grid, files, opts, progress.clone()).await?;
    sum.fetched_bytes += written.fetched_bytes;
    sum.warnings += written.warnings;
    // Directory attributes last, deepest first: writing into a directory changes its mtime.
    let dir_attrs: Vec<(Inode, PathBuf)> = dirs
        .iter()
        .rev()
        .map(|(idx, path)| (tree.nodes[*idx].inode.clone(), path.clone()))
        .collect();
    let top_is_dest = tree.nodes[selected].inode.kind == Kind::Dir;
    let dest_owned = dest.to_path_buf();
    sum.warnings += tokio::task::spawn_blocking(move || {
        write::finish_dirs(&dest_owned, &dir_attrs, top_is_dest)
    })
    .await
    .map_err(|e| RestoreError::Internal(format!("attribute task: {e}")))??;
    sum.seconds = started.elapsed().as_secs_f64();
    info!(snapshot = %name, files = sum.files, bytes = sum.bytes, fetched = sum.fetched_bytes,
        skipped = sum.skipped_existing, seconds = sum.seconds, "restore complete");
    Ok(sum)
}

/// Children of every node (validating names), in tree order.
fn children_of(tree: &TreeV1) -> Result<Vec<Vec<usize>>, RestoreError> {
    let mut children = vec![Vec::new(); tree.nodes.len()];
    for (i, n) in tree.nodes.iter().enumerate().skip(1) {
        safe_name(&n.name)?;
        children[n.parent as usize].push(i);
    }
    Ok(children)
}

fn resolve(tree: &TreeV1, children: &[Vec<usize>], parts: &[String]) -> Option<usize> {
    let mut at = 0;
    for p in parts {
        at = *children[at]
            .iter()
            .find(|&&c| tree.nodes[c].name == p.as_bytes())?;
    }
    Some(at)
}

#[cfg(test)]
mod tests;
