//! The directory walk of a backup (blocking): several threads list and stat directories at
//! once, one thread builds the tree's nodes from what they found, decides which files are
//! unchanged since the previous backup, and hands every other file to the uploads as soon as
//! its directory is merged.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;
use tokio::sync::mpsc;
use tracing::warn;

use super::BackupError;
use crate::grid::ChunkRef;
use crate::meta::{Inode, Kind, Time};
use crate::progress::Progress;
use crate::tree::{SourceId, TreeNode, TreeV1};

/// A file that must be read and stored.
#[derive(Debug)]
pub(super) struct FileJob {
    /// Its node's index in the tree.
    pub index: usize,
    /// Where it is.
    pub path: PathBuf,
    /// Size when walked.
    pub size: u64,
}

/// What the walk produced.
#[derive(Debug, Default)]
pub(super) struct Walked {
    pub nodes: Vec<TreeNode>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped_unchanged: u64,
    pub skipped_unchanged_bytes: u64,
    pub excluded: u64,
    pub special: u64,
    pub warnings: u64,
}

/// A file of the previous backup, by relative path.
#[derive(Debug)]
pub(super) struct OldFile {
    size: u64,
    mtime: Time,
    ino: u64,
    chunks: Vec<ChunkRef>,
}

/// Files of the previous backup that carry a source identity, by relative path (`a/b/c`).
pub(super) fn old_files(tree: &TreeV1) -> HashMap<Vec<u8>, OldFile> {
    let mut paths: Vec<Vec<u8>> = Vec::with_capacity(tree.nodes.len());
    let mut out = HashMap::new();
    for (i, n) in tree.nodes.iter().enumerate() {
        let path = if i == 0 {
            Vec::new()
        } else {
            join(&paths[n.parent as usize], &n.name)
        };
        if let (Kind::File, Some(src)) = (n.inode.kind, n.source) {
            out.insert(
                path.clone(),
                OldFile {
                    size: n.inode.size,
                    mtime: n.inode.mtime,
                    ino: src.ino,
                    chunks: n.chunks.clone(),
                },
            );
        }
        paths.push(path);
    }
    out
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn time(secs: i64, nanos: i64) -> Time {
    Time {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

fn inode_of(meta: &Metadata, kind: Kind, path: &Path, w: &mut Walked) -> Inode {
    let symlink = if kind == Kind::Symlink {
        match std::fs::read_link(path) {
            Ok(t) => Some(t.into_os_string().into_vec()),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read symlink");
                w.warnings += 1;
                Some(Vec::new())
            }
        }
    } else {
        None
    };
    let size = match kind {
        Kind::File => meta.len(),
        Kind::Symlink => symlink.as_ref().map_or(0, |t| t.len() as u64),
        Kind::Dir => 0,
    };
    Inode {
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        parent: 0,
        snapshot: 0,
        symlink,
        xattrs: if kind == Kind::Symlink {
            BTreeMap::new()
        } else {
            user_xattrs(path, w)
        },
        provisional: false,
    }
}

/// The `user.*` extended attributes of `path` (others need privileges or belong to the
/// filesystem, and are not backed up). Unreadable ones are skipped with a warning.
pub(super) fn user_xattrs(path: &Path, w: &mut Walked) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(_) => return out, // none, or the filesystem has no xattrs
        Ok(n) => {
            let mut buf = vec![0u8; n];
            match rustix::fs::llistxattr(path, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    buf
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot list xattrs");
                    w.warnings += 1;
                    return out;
                }
            }
        }
    };
    for name in names.split(|b| *b == 0) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let key = OsStr::from_bytes(name);
        let value = rustix::fs::lgetxattr_query(path, key).and_then(|n| {
            let mut v = vec![0u8; n];
            let n = rustix::fs::lgetxattr(path, key, &mut v[..])?;
            v.truncate(n);
            Ok(v)
        });
        match value {
            Ok(v) => {
                out.insert(name.to_vec(), v);
            }
            Err(e) => {
                warn!(path = %path.display(), xattr = %key.to_string_lossy(), error = %e, "cannot read xattr");
                w.warnings += 1;
            }
        }
    }
    out
}

/// Everything the walk needs besides the root.
pub(super) struct WalkParams<'a> {
    pub excludes: &'a GlobSet,
    pub old: &'a HashMap<Vec<u8>, OldFile>,
    pub jobs: mpsc::Sender<FileJob>,
    pub progress: Arc<dyn Progress>,
    /// Directories scanned at once (at least 1).
    pub threads: usize,
}

/// One directory to scan: where it is, its path relative to the root, its node index.
#[derive(Debug)]
pub(super) struct DirTask {
    path: PathBuf,
    rel: Vec<u8>,
    index: usize,
}

impl DirTask {
    /// The directory at `path` (`rel` from the root), whose node is `index`.
    #[cfg(test)]
    pub(super) fn new(path: PathBuf, rel: Vec<u8>, index: usize) -> Self {
        Self { path, rel, index }
    }
}

/// One entry of a scanned directory, with everything the tree needs.
struct Scanned {
    name: Vec<u8>,
    path: PathBuf,
    rel: Vec<u8>,
    inode: Inode,
    source: SourceId,
}

/// What a worker found in one directory.
pub(super) struct ScannedDir {
    /// The directory's node index.
    index: usize,
    entries: Vec<Scanned>,
    excluded: u64,
    special: u64,
    warnings: u64,
    /// Reading the directory itself failed (an error for the root, a warning otherwise).
    failed: Option<(PathBuf, std::io::Error)>,
}

/// Scan one directory: list it, leave out excluded names, and stat every entry (reading
/// symlink targets and xattrs). This is the part of the walk that waits on the disk, so
/// several directories are scanned at once.
pub(super) fn scan(task: DirTask, excludes: &GlobSet) -> ScannedDir {
    let mut out = ScannedDir {
        index: task.index,
        entries: Vec::new(),
        excluded: 0,
        special: 0,
        warnings: 0,
        failed: None,
    };
    let mut entries: Vec<(Vec<u8>, PathBuf)> = match std::fs::read_dir(&task.path) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some((e.file_name().into_vec(), e.path())),
                Err(err) => {
                    warn!(dir = %task.path.display(), error = %err, "cannot read a directory entry");
                    out.warnings += 1;
                    None
                }
            })
            .collect(),
        Err(e) => {
            out.failed = Some((task.path, e));
            return out;
        }
    };
    entries.sort();
    let mut w = Walked::default();
    for (name, path) in entries {
        let rel = join(&task.rel, &name);
        if excludes.is_match(OsStr::from_bytes(&rel)) || excludes.is_match(OsStr::from_bytes(&name))
        {
            out.excluded += 1;
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot stat; skipped");
                out.warnings += 1;
                continue;
            }
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            out.special += 1;
            continue;
        };
        let inode = inode_of(&meta, kind, &path, &mut w);
        out.entries.push(Scanned {
            name,
            path,
            rel,
            inode,
            source: source_of(&meta),
        });
    }
    out.warnings += w.warnings;
    out
}

/// The directories waiting for a worker, shared by the workers and the merging thread.
#[derive(Default)]
struct Queue {
    tasks: std::collections::VecDeque<DirTask>,
    /// No more tasks will come: workers exit once the queue is empty.
    closed: bool,
}

/// Walk `root` (a directory). `threads` workers scan directories in parallel; this thread
/// merges their results into the tree, so that every parent's index is smaller than its
/// children's (as the tree format requires) and the entries of a directory stay in name
/// order. Files to store are handed to the uploads as soon as their directory is merged.
pub(super) fn walk(root: &Path, p: WalkParams<'_>) -> Result<Walked, BackupError> {
    let mut w = Walked::default();
    let meta = std::fs::symlink_metadata(root).map_err(|source| BackupError::Source {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BackupError::NotADirectory(root.to_path_buf()));
    }
    let root_inode = inode_of(&meta, Kind::Dir, root, &mut w);
    w.nodes.push(TreeNode {
        parent: 0,
        name: Vec::new(),
        inode: root_inode,
        chunks: Vec::new(),
        source: Some(source_of(&meta)),
    });
    w.dirs += 1;

    let queue = std::sync::Mutex::new(Queue::default());
    let ready = std::sync::Condvar::new();
    let push = |task: DirTask| {
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        q.tasks.push_back(task);
        ready.notify_one();
    };
    let close = || {
        queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        ready.notify_all();
    };
    push(DirTask {
        path: root.to_path_buf(),
        rel: Vec::new(),
        index: 0,
    });
    // Bounded, so that scanned directories do not pile up while the merging thread waits
    // for the uploads (which is what bounds the walk's memory).
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<ScannedDir>(p.threads.max(1));
    let excludes = p.excludes;
    std::thread::scope(|s| {
        for _ in 0..p.threads.max(1) {
            let done = done_tx.clone();
            let (queue, ready) = (&queue, &ready);
            s.spawn(move || {
                loop {
                    let task = {
                        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if let Some(t) = q.tasks.pop_front() {
                                break Some(t);
                            }
                            if q.closed {
                                break None;
                            }
                            q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let Some(task) = task else { return };
                    if done.send(scan(task, excludes)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let result = (|| {
            let mut pending = 1usize;
            while pending > 0 {
                let Ok(dir) = done_rx.recv() else {
                    return Err(BackupError::Internal("walk workers stopped".into()));
                };
                pending -= 1;
                for sub in merge(dir, &p, &mut w)? {
                    pending += 1;
                    push(sub);
                }
            }
            Ok(())
        })();
        // After an early return, workers may be blocked sending to the full channel, and
        // others waiting for tasks: dropping the receiver fails their sends, closing the
        // queue wakes the others, so the scope can join them all.
        drop(done_rx);
        close();
        result
    })?;
    p.progress.found_all();
    Ok(w)
}

/// Add a scanned directory's entries to the tree; returns its subdirectories to scan.
pub(super) fn merge(
    dir: ScannedDir,
    p: &WalkParams<'_>,
    w: &mut Walked,
) -> Result<Vec<DirTask>, BackupError> {
    w.excluded += dir.excluded;
    w.special += dir.special;
    w.warnings += dir.warnings;
    if let Some((path, e)) = dir.failed {
        if dir.index == 0 {
            return Err(BackupError::Source { path, source: e });
        }
        warn!(dir = %path.display(), error = %e, "cannot read directory; backed up empty");
        w.warnings += 1;
        return Ok(Vec::new());
    }
    let mut subdirs = Vec::new();
    for e in dir.entries {
        let index = w.nodes.len();
        let mut chunks = Vec::new();
        match e.inode.kind {
            Kind::Dir => {
                w.dirs += 1;
                subdirs.push(DirTask {
                    path: e.path,
                    rel: e.rel,
                    index,
                });
            }
            Kind::Symlink => w.symlinks += 1,
            Kind::File => {
                w.files += 1;
                p.progress.found(1, e.inode.size);
                match p.old.get(&e.rel) {
                    Some(o)
                        if o.size == e.inode.size
                            && o.mtime == e.inode.mtime
                            && o.ino == e.source.ino =>
                    {
                        chunks = o.chunks.clone();
                        w.skipped_unchanged += 1;
                        w.skipped_unchanged_bytes += e.inode.size;
                        p.progress.advanced(e.inode.size);
                    }
                    _ => {
                        let job = FileJob {
                            index,
                            path: e.path,
                            size: e.inode.size,
                        };
                        if p.jobs.blocking_send(job).is_err() {
                            // The uploads stopped (an error); theirs is the one reported.
                            return Err(BackupError::Cancelled);
                        }
                    }
                }
            }
        }
        w.nodes.push(TreeNode {
            parent: dir.index as u32,
            name: e.name,
            inode: e.inode,
            chunks,
            source: Some(e.source),
        });
    }
    w.nodes[dir.index].inode.nlink = 2 + subdirs.len() as u32;
    Ok(subdirs)
}

fn source_of(meta: &Metadata) -> SourceId {
    SourceId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}
