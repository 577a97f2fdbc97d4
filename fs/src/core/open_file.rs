//! Open files: the spool that holds a file's bytes while it is being written, and the read,
//! write, flush, fsync and release paths.
//!
//! A file opened for writing gets a spool file (`spool/<ino>`) the first time it is written
//! or truncated. Writes land in the spool at any offset; reads of that file are served from
//! it. At flush (close) or fsync the spool is streamed through the grid pipeline and the new
//! chunk list is committed in the local metadata in one durable transaction; only then does
//! the call succeed. A crash before that leaves the previous committed version (or, for a
//! file created by the interrupted write, no file at all).
//!
//! **A failed close or fsync** (the grid refused: quota exceeded → EDQUOT, subscription
//! suspended or expired → EACCES, no placement satisfies the rules → ENOSPC; or any other
//! failure → EIO) is logged with the reason the coordinator gave, and the call returns the
//! errno. Nothing committed before is touched: other files, and earlier committed versions
//! of this one, stay intact. Then:
//! * while the file still has open handles (fsync, or close of one of several handles),
//!   its written bytes stay in the spool and a later fsync or close tries again;
//! * at the last close, the uncommitted bytes are dropped with the spool, exactly as after
//!   a crash: the file keeps its previous committed content, and a file created by this
//!   write that was never committed stays as the empty file it was at creation (its name
//!   stays valid, so a program can retry with `open(O_CREAT)` after the cause is fixed). No
//!   partial version is ever committed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use tracing::warn;

use super::{Attr, FsCore, FsError};
use crate::grid::ChunkRef;
use crate::meta::{Inode, Kind, Time};

/// Largest plaintext written into the spool in one piece while materialising old content.
const MATERIALIZE_BATCH: usize = 8;

#[derive(Debug, Default)]
pub(super) struct FileState {
    /// The spool, when the file's current bytes live there.
    pub(super) spool: Option<File>,
    /// Current size (authoritative while `spool` is set).
    pub(super) size: u64,
    /// Bytes in the spool not yet committed.
    pub(super) dirty: bool,
    /// mtime to apply at commit (set by writes, cleared by an explicit utimens).
    pub(super) pending_mtime: Option<Time>,
    /// Open handles.
    pub(super) handles: u32,
    /// The committed chunk list with offsets, decoded once per open file rather than on every
    /// read (a 2 GiB file has ~2,000 entries and is read in 128 KiB requests). Reset by commit.
    pub(super) layout: Option<Arc<Layout>>,
    /// Dropped from `FsCore::open_files`: whoever still holds this `Arc` must fetch a fresh
    /// one (an `open` racing with the release of the previous handle).
    pub(super) retired: bool,
    /// Closed with write-back: a record describes the spool's content, which is queued for
    /// the grid (see `write_back`). Writes settle it first.
    pub(super) pending: bool,
    /// Its claim on the write-back bounds while pending.
    pub(super) slot: Option<super::write_back::Slot>,
    /// The name it was created under in this session (for the write-back record).
    pub(super) created_name: Option<Vec<u8>>,
    /// Background uploads refused in a row (backoff).
    pub(super) failures: u32,
}

/// A file with open handles or pending writes.
#[derive(Debug)]
pub struct OpenFile {
    pub(super) ino: u64,
    spool_path: PathBuf,
    pub(super) state: Arc<tokio::sync::Mutex<FileState>>,
}

impl OpenFile {
    /// Forget the mtime a write set (an explicit utimens takes precedence).
    pub async fn clear_pending_mtime(&self) {
        self.state.lock().await.pending_mtime = None;
    }

    /// Apply unflushed size and mtime to an inode record.
    pub async fn overlay(&self, inode: &mut Inode) {
        let st = self.state.lock().await;
        if st.spool.is_some() {
            inode.size = st.size;
        }
        if let Some(t) = st.pending_mtime {
            inode.mtime = t;
        }
    }
}

/// The chunk list of a file with each chunk's start offset.
#[derive(Debug)]
pub(super) struct Layout {
    chunks: Vec<ChunkRef>,
    starts: Vec<u64>,
    /// Total length (the committed file size).
    len: u64,
}

impl Layout {
    fn new(chunks: Vec<ChunkRef>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in &chunks {
            starts.push(off);
            off += u64::from(c.len);
        }
        Self {
            chunks,
            starts,
            len: off,
        }
    }

    /// Index of the chunk holding `offset`.
    fn index_of(&self, offset: u64) -> Option<usize> {
        match self.starts.binary_search(&offset) {
            Ok(i) => Some(i),
            Err(0) => None,
            Err(i) => Some(i - 1),
        }
        .filter(|&i| i < self.chunks.len())
    }
}

impl FsCore {
    /// Every open file now (a copy of the map's values: the lock is not held afterwards).
    pub(super) fn all_open_files(&self) -> Vec<Arc<OpenFile>> {
        self.open_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn open_file_if_any(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.open_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
    }

    /// Register a file left pending by an earlier run (write-back replay).
    pub(super) fn pending_open_file(
        &self,
        ino: u64,
        spool: File,
        size: u64,
        created_name: Option<Vec<u8>>,
    ) {
        let of = Arc::new(OpenFile {
            ino,
            spool_path: self.spool_dir.join(ino.to_string()),
            state: Arc::new(tokio::sync::Mutex::new(FileState {
                spool: Some(spool),
                size,
                dirty: true,
                pending: true,
                created_name,
                ..FileState::default()
            })),
        });
        self.open_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino, of);
    }

    fn open_file(&self, ino: u64) -> Arc<OpenFile> {
        let mut m = self.open_files.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(ino)
            .or_insert_with(|| {
                Arc::new(OpenFile {
                    ino,
                    spool_path: self.spool_dir.join(ino.to_string()),
                    state: Arc::new(tokio::sync::Mutex::new(FileState::default())),
                })
            })
            .clone()
    }

    /// The open file of `ino`, locked, never a retired one.
    async fn lock_live(&self, ino: u64) -> (Arc<OpenFile>, OwnedMutexGuard<FileState>) {
        loop {
            let of = self.open_file(ino);
            let st = of.state.clone().lock_owned().await;
            if !st.retired {
                return (of, st);
            }
            drop(st);
            self.unmap(&of);
        }
    }

    /// Remove `of` from the map if it is still the entry for its inode.
    fn unmap(&self, of: &Arc<OpenFile>) {
        let mut m = self.open_files.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&of.ino).is_some_and(|cur| Arc::ptr_eq(cur, of)) {
            m.remove(&of.ino);
        }
    }

    fn layout(&self, ino: u64) -> Result<Arc<Layout>, FsError> {
        Ok(Arc::new(Layout::new(self.meta.content(ino)?)))
    }

    /// Make sure the file's bytes are in its spool; with `keep`, copy the committed content
    /// in first (without it the spool starts empty, as for O_TRUNC).
    async fn ensure_spool(
        &self,
        of: &OpenFile,
        st: &mut FileState,
        keep: bool,
    ) -> Result<(), FsError> {
        if st.spool.is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&of.spool_path)?;
        let mut size = 0u64;
        if keep {
            let layout = self.layout(of.ino)?;
            for batch in layout.chunks.chunks(MATERIALIZE_BATCH) {
                let fetches = batch.iter().map(|c| self.cache.get(*c));
                for data in futures::future::try_join_all(fetches).await? {
                    file.write_all_at(&data, size)?;
                    size += data.len() as u64;
                }
            }
        }
        st.spool = Some(file);
        st.size = size;
        Ok(())
    }

    /// Open an existing inode. `write` asks for write access; `truncate` is O_TRUNC.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> Result<u64, FsError> {
        let inode = self.load_inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if write {
            self.check_writable(ino, &inode)?;
        } else {
            self.prefetch_after_open(ino, inode.snapshot);
        }
        let (of, mut st) = self.lock_live(ino).await;
        if write && st.pending {
            // The spool must keep matching its record until it is on the grid.
            self.commit_locked(&of, &mut st, true).await?;
        }
        st.handles += 1;
        if write && truncate {
            self.ensure_spool(&of, &mut st, false).await?;
            if let Some(f) = &st.spool {
                f.set_len(0)?;
            }
            st.size = 0;
            st.dirty = true;
            st.pending_mtime = Some(Time::now());
        }
        drop(st);
        Ok(self.alloc_fh(ino, write))
    }

    /// Register a handle for a freshly created file.
    pub(super) async fn open_created(&self, ino: u64, name: &[u8]) -> Result<u64, FsError> {
        let (of, mut st) = self.lock_live(ino).await;
        st.handles += 1;
        st.created_name = Some(name.to_vec());
        self.ensure_spool(&of, &mut st, false).await?;
        drop(st);
        Ok(self.alloc_fh(ino, true))
    }

    /// Write at any offset.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let h = self.handle(fh)?;
        if !h.write {
            return Err(FsError::BadHandle);
        }
        let (of, mut st) = self.lock_live(h.ino).await;
        // Checked under the file's lock: a forced seal freezes handles before it commits.
        if self.handle(fh)?.frozen {
            return Err(FsError::ReadOnly(
                "snapshot was sealed while the file was open",
            ));
        }
        self.check_subscription()?;
        if st.pending {
            self.commit_locked(&of, &mut st, true).await?;
        }
        self.ensure_spool(&of, &mut st, true).await?;
        let spool = st.spool.as_ref().ok_or(FsError::BadHandle)?;
        spool.write_all_at(data, offset)?;
        st.size = st.size.max(offset + data.len() as u64);
        st.dirty = true;
        st.pending_mtime = Some(Time::now());
        Ok(data.len() as u32)
    }

    /// Read up to `size` bytes at `offset`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let h = self.handle(fh)?;
        let layout = if let Some(of) = self.open_file_if_any(h.ino) {
            let mut st = of.state.lock().await;
            if let Some(spool) = &st.spool {
                let end = st.size.min(offset.saturating_add(u64::from(size)));
                if offset >= end {
                    return Ok(Vec::new());
                }
                let mut buf = vec![0u8; (end - offset) as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = spool.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break; // a hole past the spool's end reads as zeros
                    }
                    done += n;
                }
                return Ok(buf);
            }
            match &st.layout {
                Some(l) => l.clone(),
                None => {
                    let l = self.layout(h.ino)?;
                    st.layout = Some(l.clone());
                    l
                }
            }
        } else {
            self.layout(h.ino)?
        };
        let end = layout.len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let sequential = h.last_read_end == offset;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        let first = layout
            .index_of(offset)
            .ok_or(FsError::Invalid("offset past content"))?;
        let mut i = first;
        while pos < end && i < layout.chunks.len() {
            let data = self.cache.get(layout.chunks[i]).await?;
            let start = layout.starts[i];
            let from = (pos - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            if from >= to {
                break;
            }
            out.extend_from_slice(&data[from..to]);
            pos = start + to as u64;
            i += 1;
        }
        if sequential {
            self.readahead(&layout, i);
        }
        if let Some(hh) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&fh)
        {
            hh.last_read_end = pos;
        }
        Ok(out)
    }

    fn readahead(&self, layout: &Layout, from: usize) {
        let n = self.config.readahead_chunks;
        for c in layout.chunks.iter().skip(from).take(n) {
            let cache = self.cache.clone();
            let c = *c;
            tokio::spawn(async move {
                if let Err(e) = cache.get(c).await {
                    tracing::debug!(chunk = %c.id, error = %e, "readahead failed");
                }
            });
        }
    }

    /// Commit an open file's spool if it has unsaved bytes (or was never committed).
    pub(super) async fn commit(&self, of: &OpenFile) -> Result<(), FsError> {
        let mut st = of.state.lock().await;
        self.commit_locked(of, &mut st, true).await
    }

    /// [`commit`](Self::commit) with the file's state locked. `durable` waits for the disk
    /// and settles a pending write-back; the background uploader commits without waiting and
    /// makes a whole group durable at once.
    pub(super) async fn commit_locked(
        &self,
        of: &OpenFile,
        st: &mut FileState,
        durable: bool,
    ) -> Result<(), FsError> {
        let Some(inode) = self.meta.inode(of.ino)? else {
            st.dirty = false;
            return self.settle(of, st);
        };
        if inode.nlink == 0 {
            st.dirty = false;
            return self.settle(of, st);
        }
        if !st.dirty && !inode.provisional {
            if st.pending && durable {
                // Uploaded in the background, not yet durable: make it so.
                self.meta.write()?.commit()?;
                self.settle(of, st)?;
            }
            return Ok(());
        }
        let mut chunks = None;
        if st.dirty {
            let snapshot = self.snapshot_name(inode.snapshot)?;
            let size = st.size;
            let reader = File::open(&of.spool_path)?.take(size);
            let stored = self
                .grid
                .store_reader(snapshot.clone(), Box::new(reader))
                .await
                .inspect_err(|e| {
                    warn!(ino = of.ino, snapshot = %snapshot, bytes = size, errno = e.errno(),
                        error = %e, "file not stored: close/fsync fails");
                })?;
            if stored.len != size {
                return Err(FsError::Io(std::io::Error::other(format!(
                    "spool of inode {} changed during commit ({} of {size} bytes)",
                    of.ino, stored.len
                ))));
            }
            chunks = Some(stored.chunks);
        }
        let mut tx = self.meta.write()?;
        // Read again: attributes may have changed during the upload (chmod, utimens or
        // xattrs right after a write-back close); only size, times and the flag are ours.
        let Some(mut inode) = tx.inode(of.ino)? else {
            st.dirty = false;
            return self.settle(of, st);
        };
        if chunks.is_some() {
            inode.size = st.size;
            if let Some(t) = st.pending_mtime.take() {
                inode.mtime = t;
            }
            if !st.pending {
                // A write-back close already set it; the upload itself changes nothing.
                inode.ctime = Time::now();
            }
        }
        inode.provisional = false;
        if let Some(c) = &chunks {
            tx.put_content(of.ino, c)?;
        }
        tx.put_inode(of.ino, &inode)?;
        if durable {
            tx.commit()?;
        } else {
            tx.commit_lazy()?;
        }
        st.dirty = false;
        st.layout = None;
        if durable {
            self.settle(of, st)?;
        }
        Ok(())
    }

    /// flush(2) at close: make the file durable before close returns.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let h = self.handle(fh)?;
        if !h.write {
            return Ok(());
        }
        let of = self.open_file(h.ino);
        if self.defer_commit(&of).await? {
            return Ok(());
        }
        self.commit(&of).await
    }

    /// fsync(2): the file's content is on the grid and committed durably when it returns
    /// (a pending write-back is uploaded now, or waited for).
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let h = self.handle(fh)?;
        // Any handle: fsync through a read-only descriptor also asks for durability.
        let of = self.open_file(h.ino);
        self.commit(&of).await
    }

    /// Last close of a handle.
    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        let of = self.open_file(h.ino);
        let last = {
            let mut st = of.state.lock().await;
            st.handles = st.handles.saturating_sub(1);
            st.handles == 0
        };
        if !last {
            return Ok(());
        }
        if h.write && self.defer_commit(&of).await? {
            return Ok(());
        }
        if of.state.lock().await.pending {
            // Closed earlier with write-back: the uploader finishes and forgets it.
            return Ok(());
        }
        let result = self.commit(&of).await;
        if result.is_err() {
            self.abandon_write(&of).await?;
        }
        self.drop_open_file(&of).await?;
        result
    }

    /// Drop the uncommitted bytes of a file whose last commit failed with no handle left
    /// (see the module doc): it keeps its committed content, or stays empty if it was never
    /// committed.
    async fn abandon_write(&self, of: &OpenFile) -> Result<(), FsError> {
        let mut st = of.state.lock().await;
        if st.handles > 0 || !st.dirty {
            return Ok(());
        }
        st.dirty = false;
        st.pending_mtime = None;
        st.layout = None;
        if let Some(mut inode) = self.meta.inode(of.ino)? {
            if inode.provisional && inode.nlink > 0 {
                warn!(
                    ino = of.ino,
                    "a new file stays empty: its content could not be stored"
                );
                inode.provisional = false;
                inode.size = 0;
                st.size = 0;
                let mut tx = self.meta.write()?;
                tx.put_content(of.ino, &[])?;
                tx.put_inode(of.ino, &inode)?;
                tx.commit()?;
            } else {
                st.size = inode.size;
                warn!(
                    ino = of.ino,
                    size = inode.size,
                    "file keeps its previous content: the new content could not be stored"
                );
            }
            self.invalidate(of.ino);
        }
        Ok(())
    }

    /// Forget an open file with no handles: remove its spool, and the inode if unlinked.
    pub(super) async fn drop_open_file(&self, of: &Arc<OpenFile>) -> Result<(), FsError> {
        let mut st = of.state.lock().await;
        if st.handles > 0 || st.dirty || st.pending {
            return Ok(());
        }
        if st.spool.take().is_some() {
            match std::fs::remove_file(&of.spool_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        st.retired = true;
        drop(st);
        self.unmap(of);
        if let Some(inode) = self.meta.inode(of.ino)?
            && inode.nlink == 0
        {
            let mut tx = self.meta.write()?;
            tx.remove_inode(of.ino)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Change the size of a file (truncate up or down), open or not.
    pub(super) async fn set_size(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let (of, st) = self.lock_live(ino).await;
        let no_handles = {
            let mut st = st;
            if st.pending {
                self.commit_locked(&of, &mut st, true).await?;
            }
            self.ensure_spool(&of, &mut st, size > 0).await?;
            if let Some(f) = &st.spool {
                f.set_len(size)?;
            }
            st.size = size;
            st.dirty = true;
            st.pending_mtime = Some(Time::now());
            st.handles == 0
        };
        if no_handles {
            // Nobody holds the file open: the truncate must be durable on its own.
            let result = self.commit(&of).await;
            if result.is_err() {
                self.abandon_write(&of).await?;
            }
            self.drop_open_file(&of).await?;
            result?;
        }
        Ok(())
    }

    /// Whether any file of the snapshot rooted at `root` is open for writing or unsaved.
    pub(super) async fn open_writers_in(&self, root: u64) -> Result<Vec<u64>, FsError> {
        let files = self.all_open_files();
        let writers: Vec<u64> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|h| h.write)
            .map(|h| h.ino)
            .collect();
        let mut busy = Vec::new();
        for of in files {
            let st = of.state.lock().await;
            let unsaved = st.dirty && !st.pending;
            drop(st);
            if (unsaved || writers.contains(&of.ino))
                && self.meta.inode(of.ino)?.is_some_and(|i| i.snapshot == root)
            {
                busy.push(of.ino);
            }
        }
        Ok(busy)
    }

    /// Commit every dirty file of a snapshot (used by seal), pending write-backs included.
    pub(super) async fn commit_all_in(&self, root: u64) -> Result<(), FsError> {
        self.wait_pending(root).await?;
        let files = self.all_open_files();
        for of in files {
            if self.meta.inode(of.ino)?.is_some_and(|i| i.snapshot == root) {
                self.commit(&of).await?;
            }
        }
        Ok(())
    }

    /// Attributes after an operation that may have changed them.
    pub(super) async fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        self.getattr(ino).await
    }
}
