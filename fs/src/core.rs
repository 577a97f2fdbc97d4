//! `FsCore`: the filesystem's logic, async and free of FUSE types, so it can be driven by
//! the kernel adapter (`crate::fuse`), by the control socket and by tests alike.
//!
//! Layout: `MOUNT/` holds only `snapshots/`; each entry there is a snapshot root. Open
//! snapshots are writable; sealed ones answer every mutation with EROFS.
//!
//! Lock order: `FsCore::open_files` (std mutex, never held across `.await`) before any
//! `OpenFile::state` (tokio mutex, may be held across an upload).

mod cache;
mod error;
pub mod namespace;
mod open_file;
mod prefetch;
pub mod snapshots;
mod write_back;
mod write_gate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use cache::{CacheStats, ChunkCache};
pub use error::FsError;
pub use open_file::OpenFile;
pub use write_back::{MAX_PENDING_BYTES, MAX_PENDING_FILES, WriteBackStatus};

use crate::grid::Grid;
use crate::meta::{Inode, Kind, LocalState, MetaStore, ROOT_INO, SNAPSHOTS_INO, Time};
use crate::tree::TreeCipher;

/// Longest name component, in bytes.
pub const NAME_MAX: usize = 255;

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Bytes of decoded chunks kept in memory.
    pub cache_bytes: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            cache_bytes: crate::config::DEFAULT_CACHE_BYTES as usize,
            readahead_chunks: 4,
        }
    }
}

/// Attributes of an inode as the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// The record (size already reflects unflushed writes).
    pub inode: Inode,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: Vec<u8>,
}

/// Per-handle state.
#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    write: bool,
    /// Set when the snapshot was sealed with `--force` while this handle was open for
    /// writing: later writes through it answer EROFS instead of changing a sealed file.
    frozen: bool,
    /// End offset of the previous read, to detect sequential reads for readahead.
    last_read_end: u64,
}

/// The filesystem core.
pub struct FsCore {
    meta: Arc<MetaStore>,
    grid: Arc<dyn Grid>,
    cipher: Arc<dyn TreeCipher>,
    cache: Arc<ChunkCache>,
    spool_dir: PathBuf,
    config: CoreConfig,
    open_files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Serialises snapshot creation, sealing and tree imports.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// When the snapshot list was last fetched from the coordinator.
    last_snapshot_sync: Mutex<Option<std::time::Instant>>,
    mounted_at: Time,
    /// Tells the kernel to forget what it caches about an inode (attributes, pages) when the
    /// core changes a file behind the kernel's back (set by the FUSE adapter).
    invalidator: std::sync::OnceLock<Invalidator>,
    /// Rate limit of the warning about changes refused by the subscription.
    refusal_warning: write_gate::RefusalWarning,
    /// Closes that return before their upload (see `write_back`).
    write_back: write_back::WriteBack,
    /// Reads ahead across the files of sealed snapshots (`prefetch`).
    prefetcher: prefetch::Prefetcher,
}

/// See [`FsCore::set_invalidator`].
pub type Invalidator = Box<dyn Fn(u64) + Send + Sync>;

impl std::fmt::Debug for FsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsCore")
            .field("spool_dir", &self.spool_dir)
            .finish()
    }
}

impl FsCore {
    /// Open the core over a state directory (`meta.redb`, `spool/`), recovering from a crash:
    /// files closed but not yet uploaded are restored from their write-back records (and
    /// uploaded once [`start_write_back`](Self::start_write_back) runs), other files created
    /// but never committed are removed, stale spool files are dropped.
    pub fn new(
        state_dir: &Path,
        grid: Arc<dyn Grid>,
        cipher: Arc<dyn TreeCipher>,
        config: CoreConfig,
    ) -> Result<Self, FsError> {
        std::fs::create_dir_all(state_dir)?;
        let spool_dir = state_dir.join("spool");
        std::fs::create_dir_all(&spool_dir)?;
        let meta = Arc::new(MetaStore::open(&state_dir.join("meta.redb"))?);
        let cache_bytes = config.cache_bytes;
        let core = Self {
            cache: Arc::new(ChunkCache::new(grid.clone(), config.cache_bytes)),
            meta,
            grid,
            cipher,
            spool_dir,
            config,
            open_files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            snapshot_lock: tokio::sync::Mutex::new(()),
            last_snapshot_sync: Mutex::new(None),
            mounted_at: Time::now(),
            invalidator: std::sync::OnceLock::new(),
            refusal_warning: write_gate::RefusalWarning::new(),
            write_back: write_back::WriteBack::new(),
            prefetcher: prefetch::Prefetcher::new(cache_bytes),
        };
        core.replay_write_back()?;
        core.recover()?;
        Ok(core)
    }

    /// Install the hook that makes the kernel drop its cached attributes and pages of an
    /// inode. Called when a refused write is abandoned (the file goes back to its committed
    /// content, which the kernel has not seen). The hook must not block on FUSE requests.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Ask the kernel to forget what it caches about `ino` (no-op without a FUSE adapter).
    pub(crate) fn invalidate(&self, ino: u64) {
        if let Some(f) = self.invalidator.get() {
            f(ino);
        }
    }

    /// Remove a file that was created but never committed: its directory entries and inode.
    pub(crate) fn remove_provisional(&self, ino: u64, inode: &Inode) -> Result<(), FsError> {
        let mut tx = self.meta.write()?;
        let entries = self.meta.list_dir(inode.parent, None, usize::MAX)?;
        for (name, child) in entries {
            if child == ino {
                tx.remove_dirent(inode.parent, &name)?;
            }
        }
        tx.remove_inode(ino)?;
        tx.commit()?;
        Ok(())
    }

    fn recover(&self) -> Result<(), FsError> {
        let provisional = self.meta.provisional_inodes()?;
        if !provisional.is_empty() {
            tracing::warn!(
                count = provisional.len(),
                "removing files whose writes never completed"
            );
        }
        for (ino, inode) in provisional {
            if self.open_file_if_any(ino).is_none() {
                self.remove_provisional(ino, &inode)?;
            }
        }
        for entry in std::fs::read_dir(&self.spool_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let pending = name
                .to_str()
                .and_then(|n| {
                    n.strip_suffix(write_back::record::RECORD_SUFFIX)
                        .unwrap_or(n)
                        .parse()
                        .ok()
                })
                .is_some_and(|ino| self.open_file_if_any(ino).is_some());
            if pending {
                continue;
            }
            tracing::info!(file = ?entry.path(), "dropping spool of an uncommitted write");
            std::fs::remove_file(entry.path())?;
        }
        Ok(())
    }

    /// The grid behind this core.
    pub fn grid(&self) -> &Arc<dyn Grid> {
        &self.grid
    }

    /// The chunk cache (for tests and stats).
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    fn synthetic_dir(&self, ino: u64) -> Attr {
        let t = self.mounted_at;
        Attr {
            ino,
            inode: Inode {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                atime: t,
                mtime: t,
                ctime: t,
                nlink: 2,
                parent: ROOT_INO,
                snapshot: 0,
                symlink: None,
                xattrs: Default::default(),
                provisional: false,
            },
        }
    }

    fn load_inode(&self, ino: u64) -> Result<Inode, FsError> {
        self.meta.inode(ino)?.ok_or(FsError::NotFound)
    }

    /// State of the snapshot an inode belongs to.
    fn snapshot_state(&self, snapshot_root: u64) -> Result<LocalState, FsError> {
        for (_, s) in self.meta.snapshots()? {
            if s.root == Some(snapshot_root) {
                return Ok(s.state);
            }
        }
        Err(FsError::NotFound)
    }

    /// Fail with EROFS unless `inode` lives in an open snapshot, and with EACCES while the
    /// subscription does not allow writes (see `write_gate`). Every change to snapshot
    /// contents passes here.
    fn check_writable(&self, ino: u64, inode: &Inode) -> Result<(), FsError> {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO || inode.snapshot == 0 {
            return Err(FsError::ReadOnly("only snapshot contents are writable"));
        }
        match self.snapshot_state(inode.snapshot)? {
            LocalState::Open => self.check_subscription(),
            LocalState::Sealed => Err(FsError::ReadOnly("snapshot is sealed")),
        }
    }

    /// Freeze (or thaw) every write handle on `inos`; see [`Handle::frozen`].
    fn set_frozen(&self, inos: &[u64], frozen: bool) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles.values_mut() {
            if h.write && inos.contains(&h.ino) {
                h.frozen = frozen;
            }
        }
    }

    fn alloc_fh(&self, ino: u64, write: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle {
                    ino,
                    write,
                    frozen: false,
                    last_read_end: 0,
                },
            );
        fh
    }

    fn handle(&self, fh: u64) -> Result<Handle, FsError> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .copied()
            .ok_or(FsError::BadHandle)
    }

    /// Attributes of an inode.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO {
            return Ok(self.synthetic_dir(ino));
        }
        let mut inode = self.load_inode(ino)?;
        if let Some(of) = self.open_file_if_any(ino) {
            of.overlay(&mut inode).await;
        }
        Ok(Attr { ino, inode })
    }
}

/// Check a name component.
pub fn valid_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Invalid("bad name"));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// Filesystem-wide numbers for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
}

/// Block size the statfs numbers count in (the FUSE adapter reports the same).
pub const STATFS_BLOCK_BYTES: u64 = 4096;
/// Capacity advertised without a quota: large (1 PiB) so that programs checking free space
/// do not refuse to copy.
const VIRTUAL_CAPACITY_BYTES: u64 = 1 << 50;
/// Inodes advertised (the grid has no inode limit).
const VIRTUAL_FILES: u64 = 1 << 40;

impl StatFs {
    /// The numbers for a subscription: with a quota, total = quota and free = quota −
    /// charged (never below 0); without one, the virtual 1 PiB, all free.
    pub fn for_quota(quota_bytes: Option<u64>, charged_bytes: u64) -> Self {
        let (total, free) = match quota_bytes {
            Some(q) => (q, q.saturating_sub(charged_bytes)),
            None => (VIRTUAL_CAPACITY_BYTES, VIRTUAL_CAPACITY_BYTES),
        };
        let free_blocks = free / STATFS_BLOCK_BYTES;
        StatFs {
            blocks: total / STATFS_BLOCK_BYTES,
            bfree: free_blocks,
            bavail: free_blocks,
            files: VIRTUAL_FILES,
            ffree: VIRTUAL_FILES,
        }
    }
}

impl FsCore {
    /// statfs numbers from the subscription's quota and usage (see [`StatFs::for_quota`]);
    /// usage is as of the last terms poll.
    pub fn statfs(&self) -> StatFs {
        match self.grid.terms() {
            Some(t) => StatFs::for_quota(t.subscription.limits.quota_bytes, t.usage.charged_bytes),
            None => StatFs::for_quota(None, 0),
        }
    }
}

#[cfg(test)]
mod statfs_tests {
    use super::*;

    #[test]
    fn statfs_follows_the_quota() {
        let s = StatFs::for_quota(Some(10 << 20), 4 << 20);
        assert_eq!(s.blocks * STATFS_BLOCK_BYTES, 10 << 20);
        assert_eq!(s.bfree * STATFS_BLOCK_BYTES, 6 << 20);
        assert_eq!(s.bavail, s.bfree);
        assert_eq!(StatFs::for_quota(Some(1 << 20), 5 << 20).bfree, 0);
        let v = StatFs::for_quota(None, 123);
        assert_eq!(v.blocks * STATFS_BLOCK_BYTES, 1 << 50);
        assert_eq!(v.bfree, v.blocks);
    }
}
