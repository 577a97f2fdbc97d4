//! Namespace operations: lookup, readdir, mkdir, create, unlink, rmdir, rename, symlinks,
//! attributes and extended attributes.

use super::{Attr, DirEntry, FsCore, FsError, valid_name};
use crate::meta::{Inode, Kind, ROOT_INO, SNAPSHOTS_INO, Time};

/// Name of the one entry in the mount root.
pub const SNAPSHOTS_DIR: &[u8] = b"snapshots";

/// Why the mount root and `snapshots/` itself cannot change.
const MOUNT_ROOT_READ_ONLY: &str = "the mount root and snapshots/ are read-only";

/// Attribute changes of a setattr.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Time>,
    /// New modification time.
    pub mtime: Option<Time>,
}

/// Identity of the caller creating an inode.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The set-group-ID bit on a directory.
const S_ISGID: u16 = 0o2000;

/// A new inode in directory `dir` (inode `parent`). In a set-group-ID directory, the new
/// entry takes the directory's group, and a new directory keeps the bit (System V / Linux
/// semantics, as ext4 and every local filesystem programs know).
fn new_inode(kind: Kind, perm: u16, owner: Owner, parent: u64, dir: &Inode) -> Inode {
    let now = Time::now();
    let (gid, perm) = if dir.perm & S_ISGID != 0 {
        let perm = if kind == Kind::Dir {
            perm | S_ISGID
        } else {
            perm
        };
        (dir.gid, perm)
    } else {
        (owner.gid, perm)
    };
    Inode {
        kind,
        perm,
        uid: owner.uid,
        gid,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        parent,
        snapshot: dir.snapshot,
        symlink: None,
        xattrs: Default::default(),
        provisional: false,
    }
}

impl FsCore {
    /// Look `name` up in `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if name.len() > super::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        match parent {
            ROOT_INO if name == SNAPSHOTS_DIR => return self.getattr(SNAPSHOTS_INO).await,
            ROOT_INO => return Err(FsError::NotFound),
            SNAPSHOTS_INO => {
                let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
                let root = self.snapshot_root(name).await?;
                return self.getattr(root).await;
            }
            _ => {}
        }
        let ino = self.meta.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let attr = self.getattr(ino).await?;
        self.prefetch_after_lookup(parent, attr.inode.snapshot, name, ino);
        Ok(attr)
    }

    /// Every entry of a directory (without `.` and `..`).
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        match ino {
            ROOT_INO => {
                return Ok(vec![DirEntry {
                    ino: SNAPSHOTS_INO,
                    kind: Kind::Dir,
                    name: SNAPSHOTS_DIR.to_vec(),
                }]);
            }
            SNAPSHOTS_INO => return self.list_snapshot_dirs().await,
            _ => {}
        }
        let inode = self.load_inode(ino)?;
        if inode.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        for (name, child) in self.meta.list_dir(ino, None, usize::MAX)? {
            let kind = self
                .meta
                .inode(child)?
                .map(|i| i.kind)
                .unwrap_or(Kind::File);
            out.push(DirEntry {
                ino: child,
                kind,
                name,
            });
        }
        self.prefetch_listed(ino, inode.snapshot, out.iter().map(|e| e.ino).collect());
        Ok(out)
    }

    /// Parent of a directory (for `..`).
    pub async fn parent_of(&self, ino: u64) -> Result<u64, FsError> {
        match ino {
            ROOT_INO | SNAPSHOTS_INO => Ok(ROOT_INO),
            _ => Ok(self.load_inode(ino)?.parent),
        }
    }

    /// A directory whose entries may change: EROFS in the mount root, EPERM in `snapshots/`
    /// (which holds only snapshots, made with mkdir), EROFS in a sealed snapshot.
    fn writable_dir(&self, parent: u64) -> Result<Inode, FsError> {
        match parent {
            ROOT_INO => return Err(FsError::ReadOnly(MOUNT_ROOT_READ_ONLY)),
            SNAPSHOTS_INO => {
                return Err(FsError::NotPermitted(
                    "snapshots/ holds only snapshots: mkdir opens one, `gridback snapshot` manages them",
                ));
            }
            _ => {}
        }
        let dir = self.load_inode(parent)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        self.check_writable(parent, &dir)?;
        Ok(dir)
    }

    /// An inode whose attributes may change: the two fixed directories never, snapshot
    /// contents while their snapshot is open.
    fn writable_inode(&self, ino: u64) -> Result<Inode, FsError> {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO {
            return Err(FsError::ReadOnly(MOUNT_ROOT_READ_ONLY));
        }
        let inode = self.load_inode(ino)?;
        self.check_writable(ino, &inode)?;
        Ok(inode)
    }

    /// Create a directory (a new snapshot when `parent` is `snapshots/`).
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        valid_name(name)?;
        if parent == SNAPSHOTS_INO {
            let name = std::str::from_utf8(name)
                .map_err(|_| FsError::Invalid("snapshot names must be UTF-8"))?;
            let root = self
                .create_snapshot(name, None, (mode & 0o7777) as u16, owner)
                .await?;
            return self.getattr(root).await;
        }
        let mut dir = self.writable_dir(parent)?;
        let mut tx = self.meta.write()?;
        if tx.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = tx.alloc_ino()?;
        let inode = new_inode(Kind::Dir, (mode & 0o7777) as u16, owner, parent, &dir);
        tx.put_inode(ino, &inode)?;
        tx.put_dirent(parent, name, ino)?;
        dir.nlink += 1;
        dir.mtime = Time::now();
        dir.ctime = dir.mtime;
        tx.put_inode(parent, &dir)?;
        tx.commit()?;
        Ok(Attr { ino, inode })
    }

    /// Create and open a regular file. Returns its attributes and a write handle.
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        owner: Owner,
        exclusive: bool,
    ) -> Result<(Attr, u64), FsError> {
        valid_name(name)?;
        if let Some(existing) = self.meta.lookup(parent, name)? {
            if exclusive {
                return Err(FsError::Exists);
            }
            let fh = self.open(existing, true, true).await?;
            return Ok((self.getattr(existing).await?, fh));
        }
        let mut dir = self.writable_dir(parent)?;
        let mut tx = self.meta.write()?;
        let ino = tx.alloc_ino()?;
        let mut inode = new_inode(Kind::File, (mode & 0o7777) as u16, owner, parent, &dir);
        inode.provisional = true;
        tx.put_inode(ino, &inode)?;
        tx.put_dirent(parent, name, ino)?;
        dir.mtime = Time::now();
        dir.ctime = dir.mtime;
        tx.put_inode(parent, &dir)?;
        // A crash before the file's first commit removes it anyway: no need to wait for the
        // disk here (the commit at close makes this durable too).
        tx.commit_lazy()?;
        let fh = self.open_created(ino, name).await?;
        Ok((Attr { ino, inode }, fh))
    }

    /// Create a symbolic link.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> Result<Attr, FsError> {
        valid_name(name)?;
        let mut dir = self.writable_dir(parent)?;
        let mut tx = self.meta.write()?;
        if tx.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = tx.alloc_ino()?;
        let mut inode = new_inode(Kind::Symlink, 0o777, owner, parent, &dir);
        inode.size = target.len() as u64;
        inode.symlink = Some(target.to_vec());
        tx.put_inode(ino, &inode)?;
        tx.put_dirent(parent, name, ino)?;
        dir.mtime = Time::now();
        dir.ctime = dir.mtime;
        tx.put_inode(parent, &dir)?;
        tx.commit()?;
        Ok(Attr { ino, inode })
    }

    /// Target of a symbolic link.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.load_inode(ino)?
            .symlink
            .ok_or(FsError::Invalid("not a symlink"))
    }

    /// Remove a file or symlink.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let mut dir = self.writable_dir(parent)?;
        let mut tx = self.meta.write()?;
        let ino = tx.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        tx.remove_dirent(parent, name)?;
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime = Time::now();
        let still_open = self.open_file_if_any(ino).is_some();
        if inode.nlink == 0 && !still_open {
            tx.remove_inode(ino)?;
        } else {
            tx.put_inode(ino, &inode)?;
        }
        dir.mtime = Time::now();
        dir.ctime = dir.mtime;
        tx.put_inode(parent, &dir)?;
        tx.commit()?;
        Ok(())
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        if parent == SNAPSHOTS_INO {
            return Err(FsError::NotPermitted(
                "snapshots cannot be removed through the mount",
            ));
        }
        let mut dir = self.writable_dir(parent)?;
        let mut tx = self.meta.write()?;
        let ino = tx.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
        if inode.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !tx.dir_is_empty(ino)? {
            return Err(FsError::NotEmpty);
        }
        tx.remove_dirent(parent, name)?;
        tx.remove_inode(ino)?;
        dir.nlink = dir.nlink.saturating_sub(1);
        dir.mtime = Time::now();
        dir.ctime = dir.mtime;
        tx.put_inode(parent, &dir)?;
        tx.commit()?;
        Ok(())
    }

    /// Rename, replacing the target if it exists (`noreplace` refuses instead).
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        noreplace: bool,
    ) -> Result<(), FsError> {
        valid_name(new_name)?;
        let src_dir = self.writable_dir(parent)?;
        let dst_dir = self.writable_dir(new_parent)?;
        if src_dir.snapshot != dst_dir.snapshot {
            return Err(FsError::CrossDevice);
        }
        let mut tx = self.meta.write()?;
        let ino = tx.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        if inode.kind == Kind::Dir {
            // Refuse to move a directory under itself.
            let mut p = new_parent;
            while p != inode.snapshot && p != ROOT_INO {
                if p == ino {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                p = tx.inode(p)?.map(|i| i.parent).unwrap_or(ROOT_INO);
            }
        }
        if let Some(target) = tx.lookup(new_parent, new_name)? {
            if noreplace {
                return Err(FsError::Exists);
            }
            let mut t = tx.inode(target)?.ok_or(FsError::NotFound)?;
            match (inode.kind == Kind::Dir, t.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !tx.dir_is_empty(target)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            tx.remove_dirent(new_parent, new_name)?;
            if t.kind == Kind::Dir {
                tx.remove_inode(target)?;
                let mut d = tx.inode(new_parent)?.ok_or(FsError::NotFound)?;
                d.nlink = d.nlink.saturating_sub(1);
                tx.put_inode(new_parent, &d)?;
            } else {
                t.nlink = t.nlink.saturating_sub(1);
                if t.nlink == 0 && self.open_file_if_any(target).is_none() {
                    tx.remove_inode(target)?;
                } else {
                    tx.put_inode(target, &t)?;
                }
            }
        }
        tx.remove_dirent(parent, name)?;
        tx.put_dirent(new_parent, new_name, ino)?;
        let now = Time::now();
        inode.ctime = now;
        if inode.kind == Kind::Dir && parent != new_parent {
            inode.parent = new_parent;
            let mut s = tx.inode(parent)?.ok_or(FsError::NotFound)?;
            s.nlink = s.nlink.saturating_sub(1);
            tx.put_inode(parent, &s)?;
            let mut d = tx.inode(new_parent)?.ok_or(FsError::NotFound)?;
            d.nlink += 1;
            tx.put_inode(new_parent, &d)?;
        } else if parent != new_parent {
            inode.parent = new_parent;
        }
        tx.put_inode(ino, &inode)?;
        for dir in [parent, new_parent] {
            let mut d = tx.inode(dir)?.ok_or(FsError::NotFound)?;
            d.mtime = now;
            d.ctime = now;
            tx.put_inode(dir, &d)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Change attributes.
    pub async fn setattr(&self, ino: u64, set: SetAttr) -> Result<Attr, FsError> {
        let inode = self.writable_inode(ino)?;
        if let Some(size) = set.size {
            if inode.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            self.set_size(ino, size).await?;
        }
        let mut inode = self.load_inode(ino)?;
        if let Some(m) = set.mode {
            inode.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = set.uid {
            inode.uid = u;
        }
        if let Some(g) = set.gid {
            inode.gid = g;
        }
        if let Some(t) = set.atime {
            inode.atime = t;
        }
        if let Some(t) = set.mtime {
            inode.mtime = t;
            if let Some(of) = self.open_file_if_any(ino) {
                of.clear_pending_mtime().await;
            }
        }
        inode.ctime = Time::now();
        let mut tx = self.meta.write()?;
        // The background uploader may have committed the file meanwhile: keep its flag.
        if let Some(cur) = tx.inode(ino)? {
            inode.provisional = cur.provisional;
        }
        tx.put_inode(ino, &inode)?;
        tx.commit_for(inode.provisional && !self.is_pending(ino))?;
        self.attr(ino).await
    }

    /// Set an extended attribute.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        check_xattr_name(name)?;
        let mut inode = self.writable_inode(ino)?;
        let exists = inode.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        inode.xattrs.insert(name.to_vec(), value.to_vec());
        inode.ctime = Time::now();
        let mut tx = self.meta.write()?;
        // The background uploader may have committed the file meanwhile: keep its flag.
        if let Some(cur) = tx.inode(ino)? {
            inode.provisional = cur.provisional;
        }
        tx.put_inode(ino, &inode)?;
        tx.commit_for(inode.provisional && !self.is_pending(ino))?;
        Ok(())
    }

    /// Read an extended attribute.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO {
            return Err(FsError::NoAttr);
        }
        self.load_inode(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(FsError::NoAttr)
    }

    /// Names of extended attributes.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO {
            return Ok(Vec::new());
        }
        Ok(self.load_inode(ino)?.xattrs.keys().cloned().collect())
    }

    /// Remove an extended attribute.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        let mut inode = self.writable_inode(ino)?;
        if inode.xattrs.remove(name).is_none() {
            return Err(FsError::NoAttr);
        }
        inode.ctime = Time::now();
        let mut tx = self.meta.write()?;
        // The background uploader may have committed the file meanwhile: keep its flag.
        if let Some(cur) = tx.inode(ino)? {
            inode.provisional = cur.provisional;
        }
        tx.put_inode(ino, &inode)?;
        tx.commit_for(inode.provisional && !self.is_pending(ino))?;
        Ok(())
    }
}

fn check_xattr_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Invalid("bad attribute name"));
    }
    if name.starts_with(b"user.") || name.starts_with(b"trusted.") {
        Ok(())
    } else {
        Err(FsError::NotSupported(
            "only user.* and trusted.* attributes are stored",
        ))
    }
}
