//! The client's local metadata store (redb): inodes, directory entries, file contents (chunk
//! lists), snapshots and pending spool files. Every mutation is one durable write
//! transaction, so a killed mount restarts consistent: it sees exactly the operations whose
//! replies the kernel got.
//!
//! Inode numbers: 1 is the mount root, 2 is `snapshots/`; every other inode is allocated from
//! a counter and belongs to exactly one snapshot (`Inode::snapshot`, the snapshot's root).

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::grid::ChunkRef;

/// Inode number of the mount root.
pub const ROOT_INO: u64 = 1;
/// Inode number of `snapshots/`.
pub const SNAPSHOTS_INO: u64 = 2;
/// First inode number handed out for snapshot contents.
const FIRST_DYNAMIC_INO: u64 = 16;

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("dirents");
const CONTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("contents");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_INO: &str = "next_ino";
/// Version of the on-disk record encoding; bumped with a migration when records change.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &str = "format_version";

/// Errors of the local metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// redb failed.
    #[error("local metadata database: {0}")]
    Db(String),
    /// A record could not be decoded.
    #[error("corrupt local metadata record: {0}")]
    Decode(#[source] postcard::Error),
    /// The database was written by another format version.
    #[error("local metadata format {found} is not supported (expected {FORMAT_VERSION})")]
    Format {
        /// Found version.
        found: u64,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                MetaError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Kind of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
}

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

impl Time {
    /// Now.
    pub fn now() -> Self {
        Self::from_system(std::time::SystemTime::now())
    }

    /// From a `SystemTime`.
    pub fn from_system(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Time {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    /// To a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.secs >= 0 {
            base + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            base - std::time::Duration::from_secs((-self.secs) as u64)
                + std::time::Duration::from_nanos(u64::from(self.nanos))
        }
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Kind.
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (for symlinks, the target length).
    pub size: u64,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
    /// Status change time.
    pub ctime: Time,
    /// Link count.
    pub nlink: u32,
    /// Parent directory (for directories: `..`).
    pub parent: u64,
    /// Root inode of the snapshot this inode belongs to (0 for the two fixed inodes).
    pub snapshot: u64,
    /// Symlink target.
    pub symlink: Option<Vec<u8>>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Created by a write that has not yet been committed (closed or fsynced): removed by
    /// crash recovery so that what was in flight is absent rather than partial.
    pub provisional: bool,
}

/// State of a snapshot in the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalState {
    /// Writable.
    Open,
    /// Read-only.
    Sealed,
}

/// A snapshot as the client knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSnapshot {
    /// Root directory inode, or `None` when the tree has not been fetched yet (a sealed
    /// snapshot created elsewhere or before the local cache was lost).
    pub root: Option<u64>,
    /// State.
    pub state: LocalState,
    /// Creation time.
    pub created: Time,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("invariant: postcard encoding into a Vec cannot fail")
}

fn dec<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(b).map_err(MetaError::Decode)
}

/// The local metadata database.
pub struct MetaStore {
    db: Database,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaStore")
    }
}

/// A write transaction over the metadata tables.
pub struct MetaTx {
    tx: redb::WriteTransaction,
}

impl MetaStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = Database::builder().set_cache_size(64 << 20).create(path)?;
        let store = Self { db };
        let tx = store.db.begin_write()?;
        {
            let mut c = tx.open_table(COUNTERS)?;
            let found = c.get(FORMAT_KEY)?.map(|v| v.value());
            match found {
                None => {
                    c.insert(FORMAT_KEY, FORMAT_VERSION)?;
                    c.insert(NEXT_INO, FIRST_DYNAMIC_INO)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => return Err(MetaError::Format { found }),
            }
            tx.open_table(INODES)?;
            tx.open_table(DIRENTS)?;
            tx.open_table(CONTENTS)?;
            tx.open_table(SNAPSHOTS)?;
        }
        tx.commit()?;
        Ok(store)
    }

    /// Start a write transaction.
    pub fn write(&self) -> Result<MetaTx, MetaError> {
        Ok(MetaTx {
            tx: self.db.begin_write()?,
        })
    }

    /// Read one inode.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INODES)?;
        t.get(ino)?.map(|v| dec(v.value())).transpose()
    }

    /// Look a name up in a directory.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DIRENTS)?;
        Ok(t.get((parent, name))?.map(|v| v.value()))
    }

    /// Directory entries of `dir` after `after` (exclusive, by name order), at most `limit`.
    pub fn list_dir(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DIRENTS)?;
        let start: (u64, &[u8]) = (dir, after.unwrap_or(&[]));
        let mut out = Vec::new();
        for item in t.range(start..)? {
            let (k, v) = item?;
            let (d, name) = k.value();
            if d != dir {
                break;
            }
            if after.is_some_and(|a| a == name) {
                continue;
            }
            out.push((name.to_vec(), v.value()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Whether a directory has entries.
    pub fn dir_is_empty(&self, dir: u64) -> Result<bool, MetaError> {
        Ok(self.list_dir(dir, None, 1)?.is_empty())
    }

    /// A file's chunk list.
    pub fn content(&self, ino: u64) -> Result<Vec<ChunkRef>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CONTENTS)?;
        Ok(t.get(ino)?
            .map(|v| dec(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every snapshot known locally.
    pub fn snapshots(&self) -> Result<Vec<(String, LocalSnapshot)>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), dec(v.value())?));
        }
        Ok(out)
    }

    /// One snapshot.
    pub fn snapshot(&self, name: &str) -> Result<Option<LocalSnapshot>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SNAPSHOTS)?;
        t.get(name)?.map(|v| dec(v.value())).transpose()
    }

    /// Every provisional inode (for crash recovery).
    pub fn provisional_inodes(&self) -> Result<Vec<(u64, Inode)>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INODES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let ino: Inode = dec(v.value())?;
            if ino.provisional {
                out.push((k.value(), ino));
            }
        }
        Ok(out)
    }
}

impl MetaTx {
    /// Allocate a fresh inode number.
    pub fn alloc_ino(&mut self) -> Result<u64, MetaError> {
        let mut c = self.tx.open_table(COUNTERS)?;
        let next = c
            .get(NEXT_INO)?
            .map(|v| v.value())
            .unwrap_or(FIRST_DYNAMIC_INO);
        c.insert(NEXT_INO, next + 1)?;
        Ok(next)
    }

    /// Make sure inode numbers handed out from now on are at least `next` (after a crash
    /// recovery re-created inodes whose allocation was not durable).
    pub fn bump_next_ino(&mut self, next: u64) -> Result<(), MetaError> {
        let mut c = self.tx.open_table(COUNTERS)?;
        let cur = c
            .get(NEXT_INO)?
            .map(|v| v.value())
            .unwrap_or(FIRST_DYNAMIC_INO);
        if next > cur {
            c.insert(NEXT_INO, next)?;
        }
        Ok(())
    }

    /// Read an inode inside the transaction.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>, MetaError> {
        let t = self.tx.open_table(INODES)?;
        t.get(ino)?.map(|v| dec(v.value())).transpose()
    }

    /// Write an inode.
    pub fn put_inode(&mut self, ino: u64, inode: &Inode) -> Result<(), MetaError> {
        let mut t = self.tx.open_table(INODES)?;
        t.insert(ino, enc(inode).as_slice())?;
        Ok(())
    }

    /// Delete an inode and its content.
    pub fn remove_inode(&mut self, ino: u64) -> Result<(), MetaError> {
        self.tx.open_table(INODES)?.remove(ino)?;
        self.tx.open_table(CONTENTS)?.remove(ino)?;
        Ok(())
    }

    /// Look a name up inside the transaction.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, MetaError> {
        let t = self.tx.open_table(DIRENTS)?;
        Ok(t.get((parent, name))?.map(|v| v.value()))
    }

    /// Whether a directory has entries (inside the transaction).
    pub fn dir_is_empty(&self, dir: u64) -> Result<bool, MetaError> {
        let t = self.tx.open_table(DIRENTS)?;
        let mut r = t.range((dir, &[][..])..)?;
        Ok(match r.next() {
            Some(item) => item?.0.value().0 != dir,
            None => true,
        })
    }

    /// Add or replace a directory entry.
    pub fn put_dirent(&mut self, parent: u64, name: &[u8], ino: u64) -> Result<(), MetaError> {
        self.tx.open_table(DIRENTS)?.insert((parent, name), ino)?;
        Ok(())
    }

    /// Remove a directory entry.
    pub fn remove_dirent(&mut self, parent: u64, name: &[u8]) -> Result<(), MetaError> {
        self.tx.open_table(DIRENTS)?.remove((parent, name))?;
        Ok(())
    }

    /// Set a file's chunk list.
    pub fn put_content(&mut self, ino: u64, chunks: &[ChunkRef]) -> Result<(), MetaError> {
        self.tx
            .open_table(CONTENTS)?
            .insert(ino, enc(&chunks).as_slice())?;
        Ok(())
    }

    /// A file's chunk list inside the transaction.
    pub fn content(&self, ino: u64) -> Result<Vec<ChunkRef>, MetaError> {
        let t = self.tx.open_table(CONTENTS)?;
        let r = t
            .get(ino)?
            .map(|v| dec(v.value()))
            .transpose()?
            .unwrap_or_default();
        Ok(r)
    }

    /// Write a snapshot record.
    pub fn put_snapshot(&mut self, name: &str, s: &LocalSnapshot) -> Result<(), MetaError> {
        self.tx
            .open_table(SNAPSHOTS)?
            .insert(name, enc(s).as_slice())?;
        Ok(())
    }

    /// Commit durably.
    pub fn commit(self) -> Result<(), MetaError> {
        self.tx.commit()?;
        Ok(())
    }

    /// Commit without waiting for the disk: visible at once, atomic, but lost if the process
    /// dies before the next durable [`commit`](Self::commit), which makes it durable too.
    /// Only for changes that a crash may drop anyway: those of a provisional inode (a file
    /// being created, removed at restart unless it was committed).
    pub fn commit_lazy(mut self) -> Result<(), MetaError> {
        self.tx.set_durability(redb::Durability::None)?;
        self.tx.commit()?;
        Ok(())
    }

    /// [`commit_lazy`](Self::commit_lazy) when `provisional`, else [`commit`](Self::commit).
    pub fn commit_for(self, provisional: bool) -> Result<(), MetaError> {
        if provisional {
            self.commit_lazy()
        } else {
            self.commit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(kind: Kind) -> Inode {
        Inode {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            atime: Time::now(),
            mtime: Time::now(),
            ctime: Time::now(),
            nlink: 1,
            parent: 1,
            snapshot: 0,
            symlink: None,
            xattrs: BTreeMap::new(),
            provisional: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_dirs_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = MetaStore::open(&path).unwrap();
            let mut tx = m.write().unwrap();
            let a = tx.alloc_ino().unwrap();
            let b = tx.alloc_ino().unwrap();
            assert_ne!(a, b);
            tx.put_inode(a, &inode(Kind::Dir)).unwrap();
            tx.put_inode(b, &inode(Kind::File)).unwrap();
            tx.put_dirent(a, b"zeta", b).unwrap();
            tx.put_dirent(a, b"alpha", b).unwrap();
            tx.put_dirent(a + 100, b"other", b).unwrap();
            tx.commit().unwrap();
        }
        let m = MetaStore::open(&path).unwrap();
        let all = m.list_dir(FIRST_DYNAMIC_INO, None, 10).unwrap();
        let names: Vec<_> = all.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, vec![b"alpha".to_vec(), b"zeta".to_vec()]);
        let rest = m.list_dir(FIRST_DYNAMIC_INO, Some(b"alpha"), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert!(!m.dir_is_empty(FIRST_DYNAMIC_INO).unwrap());
        assert!(m.dir_is_empty(FIRST_DYNAMIC_INO + 1).unwrap());
        let mut tx = m.write().unwrap();
        assert!(tx.dir_is_empty(FIRST_DYNAMIC_INO + 1).unwrap());
        assert!(!tx.dir_is_empty(FIRST_DYNAMIC_INO).unwrap());
        assert_eq!(tx.alloc_ino().unwrap(), FIRST_DYNAMIC_INO + 2);
    }

    #[test]
    fn negative_times_round_trip() {
        for t in [
            Time {
                secs: -5,
                nanos: 250,
            },
            Time {
                secs: 7,
                nanos: 999_999_999,
            },
        ] {
            assert_eq!(Time::from_system(t.to_system()), t);
        }
    }
}
