//! The kernel adapter: a thin `fuser::Filesystem` over [`FsCore`]. Each method opens a span,
//! runs the core operation on the tokio runtime with `Handle::block_on` (only ever called from
//! fuser's own threads), and replies with data or the errno of the error. fuser types do not
//! appear anywhere else in the crate.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tracing::{Instrument, debug_span};

use crate::core::namespace::{Owner, SetAttr};
use crate::core::{Attr, DirEntry, FsCore, FsError};
use crate::meta::{Kind, Time};

/// How long the kernel may cache attributes and entries. Only this process changes the
/// tree, and it answers every change itself, so a short TTL only bounds staleness for
/// snapshots sealed through the control socket.
const TTL: Duration = Duration::from_secs(1);
/// Block size reported by stat.
const BLOCK_SIZE: u32 = crate::core::STATFS_BLOCK_BYTES as u32;

/// The FUSE adapter.
pub struct FuseAdapter {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_dir_fh: AtomicU64,
}

impl std::fmt::Debug for FuseAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FuseAdapter")
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: INodeNo(a.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.ctime.to_system(),
        kind: kind(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn log_error(op: &str, e: &FsError) {
    match e {
        FsError::Grid(_) | FsError::Meta(_) | FsError::Io(_) | FsError::Tree(_) => {
            tracing::error!(op, error = %e, "operation failed")
        }
        _ => tracing::debug!(op, error = %e, "operation refused"),
    }
}

/// Answer an operation that returns nothing.
fn reply_empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answer an operation that returns a new or looked-up entry.
fn reply_entry(reply: ReplyEntry, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answer an operation that returns attributes.
fn reply_attr(reply: ReplyAttr, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn time_or_now(t: Option<TimeOrNow>) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(s) => Time::from_system(s),
        TimeOrNow::Now => Time::now(),
    })
}

impl FuseAdapter {
    /// An adapter over `core`, running its futures on `rt`.
    pub fn new(core: Arc<FsCore>, rt: tokio::runtime::Handle) -> Self {
        Self {
            core,
            rt,
            dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
        }
    }

    fn run<T>(
        &self,
        op: &'static str,
        ino: u64,
        f: impl Future<Output = Result<T, FsError>>,
    ) -> Result<T, FsError> {
        let span = debug_span!("fuse", op, ino);
        let r = self.rt.block_on(f.instrument(span));
        if let Err(e) = &r {
            log_error(op, e);
        }
        r
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.run(
                "lookup",
                parent.0,
                self.core.lookup(parent.0, name.as_bytes()),
            ),
        )
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.run("getattr", ino.0, self.core.getattr(ino.0)))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_or_now(atime),
            mtime: time_or_now(mtime),
        };
        reply_attr(
            reply,
            self.run("setattr", ino.0, self.core.setattr(ino.0, set)),
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run("readlink", ino.0, self.core.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = Owner {
            uid: req.uid(),
            gid: req.gid(),
        };
        let f = self
            .core
            .mkdir(parent.0, name.as_bytes(), mode & !umask, owner);
        reply_entry(reply, self.run("mkdir", parent.0, f))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.run(
                "unlink",
                parent.0,
                self.core.unlink(parent.0, name.as_bytes()),
            ),
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.run(
                "rmdir",
                parent.0,
                self.core.rmdir(parent.0, name.as_bytes()),
            ),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let owner = Owner {
            uid: req.uid(),
            gid: req.gid(),
        };
        let f = self.core.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            owner,
        );
        reply_entry(reply, self.run("symlink", parent.0, f))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let f = self.core.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            noreplace,
        );
        reply_empty(reply, self.run("rename", parent.0, f))
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links are not supported (docs/SEMANTICS.md): a clean EPERM.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        match self.run("open", ino.0, self.core.open(ino.0, write, truncate)) {
            // A sealed file never changes: the kernel may keep its pages across opens.
            Ok(fh) if !write && self.core.in_sealed_snapshot(ino.0) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", ino.0, self.core.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.run("write", ino.0, self.core.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.run("flush", ino.0, self.core.flush(fh.0)))
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.run("release", ino.0, self.core.release(fh.0)))
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.run("fsync", ino.0, self.core.fsync(fh.0)))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let core = &self.core;
        let f = async {
            let entries = core.readdir(ino.0).await?;
            let parent = core.parent_of(ino.0).await?;
            let mut all = Vec::with_capacity(entries.len() + 2);
            all.push(DirEntry {
                ino: ino.0,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
            all.push(DirEntry {
                ino: parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
            all.extend(entries);
            Ok(all)
        };
        match self.run("opendir", ino.0, f) {
            Ok(all) => {
                let fh = self.next_dir_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(all));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(entries) = entries else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                kind(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, BLOCK_SIZE, 255, BLOCK_SIZE,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.run(
                "setxattr",
                ino.0,
                self.core.setxattr(ino.0, name.as_bytes(), value, flags),
            ),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.run(
            "getxattr",
            ino.0,
            self.core.getxattr(ino.0, name.as_bytes()),
        ) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.run("listxattr", ino.0, self.core.listxattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(Errno::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.run(
                "removexattr",
                ino.0,
                self.core.removexattr(ino.0, name.as_bytes()),
            ),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let owner = Owner {
            uid: req.uid(),
            gid: req.gid(),
        };
        let exclusive = flags & libc::O_EXCL != 0;
        let f = self
            .core
            .create(parent.0, name.as_bytes(), mode & !umask, owner, exclusive);
        match self.run("create", parent.0, f) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Errors mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint does not exist or is not a directory.
    #[error("mountpoint {0} does not exist or is not a directory")]
    NoMountpoint(String),
    /// The mountpoint is not empty.
    #[error("mountpoint {0} is not empty (gridback mounts only on an empty directory)")]
    NotEmpty(String),
    /// The kernel refused.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// Mountpoint.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Mount `core` at `mountpoint` with `threads` FUSE worker threads. The returned session
/// unmounts when dropped (or with `umount_and_join`).
pub fn mount(
    core: Arc<FsCore>,
    mountpoint: &Path,
    rt: tokio::runtime::Handle,
    threads: usize,
) -> Result<fuser::BackgroundSession, MountError> {
    let shown = mountpoint.display().to_string();
    if !mountpoint.is_dir() {
        return Err(MountError::NoMountpoint(shown));
    }
    let mut entries = std::fs::read_dir(mountpoint).map_err(|e| MountError::Mount {
        path: shown.clone(),
        source: e,
    })?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(shown));
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("gridback".into()),
        MountOption::Subtype("gridback".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // allow_other: the mount is used by every user of the machine, permissions are enforced
    // by the kernel (default_permissions) from the inode attributes.
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(threads.max(2));
    cfg.clone_fd = true;
    let session = fuser::spawn_mount(FuseAdapter::new(core.clone(), rt), mountpoint, &cfg)
        .map_err(|e| MountError::Mount {
            path: shown,
            source: e,
        })?;
    let notifier = session.notifier();
    core.set_invalidator(Box::new(move |ino| {
        // From its own thread: the kernel may hold locks of the request being answered, and an
        // invalidation waits for them.
        let notifier = notifier.clone();
        std::thread::spawn(move || {
            if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), 0, -1) {
                // ENOENT: the kernel had already forgotten the inode, nothing to drop.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::debug!(ino, error = %e, "kernel cache invalidation failed");
                }
            }
        });
    }));
    Ok(session)
}
