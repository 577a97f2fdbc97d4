//! Snapshots: creating (empty or as a metadata clone), listing, sealing (serialise, encrypt
//! and store the tree, then commit one record at the coordinator) and importing a sealed
//! tree that is not in the local cache.

use std::io::Cursor;

use gridback_proto::coord_api::{SnapshotState, TreeChunk};

use super::namespace::Owner;
use super::{DirEntry, FsCore, FsError};
use crate::grid::GridError;
use crate::meta::{Inode, Kind, LocalSnapshot, LocalState, SNAPSHOTS_INO, Time};
use crate::tree::{self, TreeNode, TreeV1};

/// How often `snapshots/` asks the coordinator for snapshots created elsewhere (by
/// `gridback backup` or another machine): often enough to feel live, rarely enough that a
/// `find` over the mount does not turn into a stream of coordinator calls.
const SNAPSHOT_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Open files a refused seal names (the rest are counted): enough to find the culprit
/// without flooding the terminal.
const SEAL_BUSY_NAMES: usize = 5;
/// Directory levels `FsCore::path_in_snapshot` climbs before giving up: far beyond any
/// real tree (PATH_MAX allows 2,048 one-byte levels), it only guards against a damaged one.
const MAX_PATH_DEPTH: usize = 4096;

/// What a seal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// Snapshot name.
    pub name: String,
    /// Inodes in the sealed tree.
    pub entries: u64,
    /// Bytes of the encrypted tree.
    pub tree_bytes: u64,
}

fn state_of(s: SnapshotState) -> LocalState {
    match s {
        SnapshotState::Open => LocalState::Open,
        SnapshotState::Sealed => LocalState::Sealed,
    }
}

impl FsCore {
    /// Bring the local snapshot list in line with the coordinator's (at mount time).
    pub async fn sync_snapshots(&self) -> Result<(), FsError> {
        let _g = self.snapshot_lock.lock().await;
        let remote = self.grid.snapshot_list().await?;
        let mut tx = self.meta.write()?;
        for info in remote {
            let state = state_of(info.state);
            match self.meta.snapshot(&info.name)? {
                Some(mut local) if local.state != state => {
                    local.state = state;
                    tx.put_snapshot(&info.name, &local)?;
                }
                Some(_) => {}
                None => {
                    let created = Time {
                        secs: (info.created_unix_ms / 1000) as i64,
                        nanos: ((info.created_unix_ms % 1000) * 1_000_000) as u32,
                    };
                    tx.put_snapshot(
                        &info.name,
                        &LocalSnapshot {
                            root: None,
                            state,
                            created,
                        },
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// [`Self::sync_snapshots`], at most once per [`SNAPSHOT_REFRESH_INTERVAL`].
    async fn refresh_snapshots(&self) -> Result<(), FsError> {
        {
            let mut last = self
                .last_snapshot_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < SNAPSHOT_REFRESH_INTERVAL) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        self.sync_snapshots().await
    }

    /// Name of the snapshot rooted at `root`.
    pub(super) fn snapshot_name(&self, root: u64) -> Result<String, FsError> {
        self.meta
            .snapshots()?
            .into_iter()
            .find(|(_, s)| s.root == Some(root))
            .map(|(n, _)| n)
            .ok_or(FsError::NotFound)
    }

    /// Root inode of a snapshot, importing its tree first if it is not cached locally.
    pub(super) async fn snapshot_root(&self, name: &str) -> Result<u64, FsError> {
        let local = match self.meta.snapshot(name)? {
            Some(l) => l,
            None => {
                // Perhaps created elsewhere since the mount started (`gridback backup`).
                self.refresh_snapshots().await?;
                self.meta.snapshot(name)?.ok_or(FsError::NotFound)?
            }
        };
        if let Some(root) = local.root {
            return Ok(root);
        }
        let _g = self.snapshot_lock.lock().await;
        let local = self.meta.snapshot(name)?.ok_or(FsError::NotFound)?;
        if let Some(root) = local.root {
            return Ok(root);
        }
        let record = self.grid.snapshot_get(name.to_string()).await?;
        let tree = if record.tree.is_empty() {
            // An open snapshot whose local cache is gone: it starts empty again.
            TreeV1 {
                nodes: vec![root_node(0o755, Owner { uid: 0, gid: 0 })],
            }
        } else {
            self.fetch_tree(&record.tree).await?
        };
        let root = self.import_tree(name, &tree, local.state, local.created)?;
        tracing::info!(
            snapshot = name,
            entries = tree.nodes.len(),
            "snapshot tree loaded"
        );
        Ok(root)
    }

    async fn fetch_tree(&self, chunks: &[TreeChunk]) -> Result<TreeV1, FsError> {
        let mut blob = Vec::new();
        for c in chunks {
            let len = u32::try_from(c.len).map_err(|_| FsError::Invalid("tree chunk too large"))?;
            let data = self
                .grid
                .read_chunk(crate::grid::ChunkRef { id: c.id, len })
                .await?;
            blob.extend_from_slice(&data);
        }
        let plain = self.cipher.open(&blob).map_err(|e| {
            FsError::Grid(GridError::Internal(format!(
                "cannot decrypt the snapshot tree (wrong client key?): {e}"
            )))
        })?;
        Ok(tree::decode(&plain)?)
    }

    fn import_tree(
        &self,
        name: &str,
        tree: &TreeV1,
        state: LocalState,
        created: Time,
    ) -> Result<u64, FsError> {
        let mut tx = self.meta.write()?;
        let mut inos = Vec::with_capacity(tree.nodes.len());
        for _ in &tree.nodes {
            inos.push(tx.alloc_ino()?);
        }
        let root = inos[0];
        for (i, node) in tree.nodes.iter().enumerate() {
            let mut inode = node.inode.clone();
            inode.snapshot = root;
            inode.provisional = false;
            inode.parent = if i == 0 {
                SNAPSHOTS_INO
            } else {
                inos[node.parent as usize]
            };
            tx.put_inode(inos[i], &inode)?;
            if i > 0 {
                tx.put_dirent(inos[node.parent as usize], &node.name, inos[i])?;
            }
            if inode.kind == Kind::File && !node.chunks.is_empty() {
                tx.put_content(inos[i], &node.chunks)?;
            }
        }
        tx.put_snapshot(
            name,
            &LocalSnapshot {
                root: Some(root),
                state,
                created,
            },
        )?;
        tx.commit()?;
        Ok(root)
    }

    fn export_tree(&self, root: u64) -> Result<TreeV1, FsError> {
        let root_inode = self.load_inode(root)?;
        let mut nodes = vec![TreeNode {
            parent: 0,
            name: Vec::new(),
            inode: root_inode,
            chunks: Vec::new(),
            source: None,
        }];
        let mut stack = vec![(root, 0u32)];
        while let Some((dir, idx)) = stack.pop() {
            for (name, child) in self.meta.list_dir(dir, None, usize::MAX)? {
                let inode = self.load_inode(child)?;
                let chunks = if inode.kind == Kind::File {
                    self.meta.content(child)?
                } else {
                    Vec::new()
                };
                let is_dir = inode.kind == Kind::Dir;
                nodes.push(TreeNode {
                    parent: idx,
                    name,
                    inode,
                    chunks,
                    source: None,
                });
                if is_dir {
                    stack.push((child, (nodes.len() - 1) as u32));
                }
            }
        }
        Ok(TreeV1 { nodes })
    }

    /// Open a new snapshot, empty or as a metadata clone of `from` (no data is copied).
    pub async fn create_snapshot(
        &self,
        name: &str,
        from: Option<&str>,
        perm: u16,
        owner: Owner,
    ) -> Result<u64, FsError> {
        super::valid_name(name.as_bytes())?;
        let base = match from {
            Some(f) => {
                let root = self.snapshot_root(f).await?;
                Some(self.export_tree(root)?)
            }
            None => None,
        };
        let _g = self.snapshot_lock.lock().await;
        if self.meta.snapshot(name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.grid
            .snapshot_create(name.to_string(), from.map(str::to_string))
            .await
            .map_err(|e| match e {
                GridError::Conflict(_) => FsError::Exists,
                other => FsError::Grid(other),
            })?;
        let tree = base.unwrap_or_else(|| TreeV1 {
            nodes: vec![root_node(perm, owner)],
        });
        let root = self.import_tree(name, &tree, LocalState::Open, Time::now())?;
        tracing::info!(snapshot = name, from = ?from, "snapshot opened");
        Ok(root)
    }

    /// Where `ino` is inside the snapshot whose root is `root` (`dir/file`), for messages;
    /// `(unlinked)` for a file whose last name is gone.
    fn path_in_snapshot(&self, ino: u64, root: u64) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut at = ino;
        while at != root {
            if parts.len() > MAX_PATH_DEPTH {
                return "(too deep)".into();
            }
            let Ok(Some(inode)) = self.meta.inode(at) else {
                return "(unlinked)".into();
            };
            let parent = inode.parent;
            // A directory is small next to the cost of a refused seal; names are listed in
            // pages until the entry is found.
            let mut after: Option<Vec<u8>> = None;
            let name = loop {
                let Ok(page) = self.meta.list_dir(parent, after.as_deref(), 1024) else {
                    return "(unlinked)".into();
                };
                if let Some((n, _)) = page.iter().find(|(_, i)| *i == at) {
                    break n.clone();
                }
                match page.last() {
                    Some((n, _)) => after = Some(n.clone()),
                    None => return "(unlinked)".into(),
                }
            };
            parts.push(String::from_utf8_lossy(&name).into_owned());
            at = parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Seal a snapshot: refuse while files are open for writing unless `force`.
    pub async fn seal(&self, name: &str, force: bool) -> Result<SealReport, FsError> {
        let root = self.snapshot_root(name).await?;
        let local = self.meta.snapshot(name)?.ok_or(FsError::NotFound)?;
        if local.state == LocalState::Sealed {
            return Err(FsError::ReadOnly("snapshot is already sealed"));
        }
        let busy = self.open_writers_in(root).await?;
        if !busy.is_empty() && !force {
            let mut names: Vec<String> = busy
                .iter()
                .take(SEAL_BUSY_NAMES)
                .map(|&ino| self.path_in_snapshot(ino, root))
                .collect();
            if busy.len() > SEAL_BUSY_NAMES {
                names.push(format!("and {} more", busy.len() - SEAL_BUSY_NAMES));
            }
            return Err(FsError::Busy(format!(
                "{} file(s) in snapshot {name:?} are still open for writing ({}); close them, \
                 or seal with --force to keep what was written so far",
                busy.len(),
                names.join(", ")
            )));
        }
        // From here on, writes through handles still open (with --force) answer EROFS;
        // the files' open state locks order them before or after this point.
        self.set_frozen(&busy, true);
        let r = self.seal_frozen(name, root, local).await;
        if r.is_err() {
            self.set_frozen(&busy, false);
        }
        r
    }

    async fn seal_frozen(
        &self,
        name: &str,
        root: u64,
        local: LocalSnapshot,
    ) -> Result<SealReport, FsError> {
        // A write that took its file's lock before the freeze lands in the spool first;
        // committing takes the same lock, so it is part of the sealed file.
        self.commit_all_in(root).await?;
        let _g = self.snapshot_lock.lock().await;
        let tree = self.export_tree(root)?;
        let entries = tree.nodes.len() as u64;
        let blob = self.cipher.seal(&tree::encode(&tree));
        let tree_bytes = blob.len() as u64;
        let stored = self
            .grid
            .store_reader(name.to_string(), Box::new(Cursor::new(blob)))
            .await?;
        let chunks: Vec<TreeChunk> = stored
            .chunks
            .iter()
            .map(|c| TreeChunk {
                id: c.id,
                len: u64::from(c.len),
            })
            .collect();
        self.grid
            .snapshot_seal(name.to_string(), chunks, tree_bytes)
            .await?;
        let mut tx = self.meta.write()?;
        tx.put_snapshot(
            name,
            &LocalSnapshot {
                root: Some(root),
                state: LocalState::Sealed,
                ..local
            },
        )?;
        tx.commit()?;
        tracing::info!(snapshot = name, entries, tree_bytes, "snapshot sealed");
        Ok(SealReport {
            name: name.to_string(),
            entries,
            tree_bytes,
        })
    }

    /// Entries of `snapshots/`.
    pub(super) async fn list_snapshot_dirs(&self) -> Result<Vec<DirEntry>, FsError> {
        if let Err(e) = self.refresh_snapshots().await {
            // Listing what is known locally beats failing `ls` when the coordinator is away.
            tracing::warn!(error = %e, "cannot refresh the snapshot list");
        }
        let mut out = Vec::new();
        for (name, _) in self.meta.snapshots()? {
            match self.snapshot_root(&name).await {
                Ok(root) => out.push(DirEntry {
                    ino: root,
                    kind: Kind::Dir,
                    name: name.into_bytes(),
                }),
                Err(e) => tracing::warn!(snapshot = %name, error = %e, "snapshot tree unavailable"),
            }
        }
        Ok(out)
    }

    /// Local snapshots with their state.
    pub fn local_snapshots(&self) -> Result<Vec<(String, LocalState)>, FsError> {
        Ok(self
            .meta
            .snapshots()?
            .into_iter()
            .map(|(n, s)| (n, s.state))
            .collect())
    }
}

fn root_node(perm: u16, owner: Owner) -> TreeNode {
    let now = Time::now();
    TreeNode {
        parent: 0,
        name: Vec::new(),
        inode: Inode {
            kind: Kind::Dir,
            perm,
            uid: owner.uid,
            gid: owner.gid,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 2,
            parent: SNAPSHOTS_INO,
            snapshot: 0,
            symlink: None,
            xattrs: Default::default(),
            provisional: false,
        },
        chunks: Vec::new(),
        source: None,
    }
}
