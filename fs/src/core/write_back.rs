//! Write-back: `close(2)` of a written file returns once its bytes and a record of the closed
//! version are on the local disk; the upload to the grid happens in the background, many
//! files at once, so the uploader packs small files from many closes into one batch (one
//! dedup query, allocation and commit, one put request per node).
//!
//! **What survives what.** At close the spool file `STATE/spool/<ino>` holds the content and
//! `STATE/spool/<ino>.rec` ([`record`]) the closed version's attributes (and, for a file
//! created in this session, where it was created). Both are in the page cache at once, so
//! a killed mount (SIGKILL, panic) finds them at its next start, re-applies the record to the
//! local metadata, and uploads the file: **every file whose close returned is there after a
//! restart**. A machine crash may lose what no `fsync` covered, as on any filesystem with a
//! write-back cache. **`fsync(2)` waits for the grid**: when it returns, the file's content
//! is on the grid and its chunk list durably in the local metadata; nothing of it depends on
//! the spool or the record any more. **Seal waits** for every pending upload of its
//! snapshot and fails with the grid's refusal if one cannot be stored.
//!
//! **Order of effects.** Upload → metadata commit of the chunk list (grouped: one durable
//! commit for every upload that finished together) → record removed → spool removed. A
//! removal of a pending file removes the record before the inode, so a record never names
//! an inode that was deliberately removed. A write, truncate or reopen-for-writing of a
//! pending file first finishes its upload (the spool must keep matching its record).
//!
//! **When close still waits.** Write-back is used only while the subscription allows
//! writes and the quota (as of the last terms poll) has room for three times the bytes
//! pending plus this file; otherwise, and for two minutes after the grid refused a
//! background upload, close uploads before it returns and reports the refusal as before
//! (EDQUOT, EACCES, ENOSPC, EIO). A background upload the grid refuses stays pending: it is
//! retried with backoff, logged, and reported by the next `fsync` or seal of its snapshot.
//!
//! **Bounds.** At most [`MAX_PENDING_FILES`] files and [`MAX_PENDING_BYTES`] bytes wait for
//! the grid; a close past either waits for room.

pub mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gridback_proto::subscription::SubscriptionState;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::open_file::{FileState, OpenFile};
use super::{FsCore, FsError};
use crate::meta::{Inode, Kind};
use record::RecordV1;

/// Most files closed but not yet on the grid.
pub const MAX_PENDING_FILES: usize = 512;
/// Most bytes closed but not yet on the grid.
pub const MAX_PENDING_BYTES: u64 = 1 << 30;
/// Uploads the background worker runs at once (their chunks share the uploader's batches).
const UPLOADS_IN_FLIGHT: usize = 32;
/// Close waits for the grid for this long after a background upload was refused.
const REFUSAL_HOLD: Duration = Duration::from_secs(120);
/// Quota headroom asked for per pending byte (erasure overhead, padding, no compression).
const QUOTA_FACTOR: u64 = 3;
/// Backoff of a refused background upload: first retry, and the most between retries.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Byte permits count in KiB (a semaphore holds at most `u32::MAX >> 3` permits).
const BYTE_UNIT: u64 = 1024;

/// A pending file's claim on the write-back bounds.
#[derive(Debug)]
pub(super) struct Slot {
    _file: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

/// State of the write-back of one core.
#[derive(Debug)]
pub(super) struct WriteBack {
    /// Set by [`FsCore::start_write_back`]; without it every close uploads before returning.
    queue: std::sync::OnceLock<mpsc::UnboundedSender<u64>>,
    files: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    pending_bytes: AtomicU64,
    pending_files: AtomicU64,
    refused_at: Mutex<Option<Instant>>,
    /// Woken whenever a pending upload finishes (fsync and seal wait on it).
    settled: tokio::sync::Notify,
    /// Last refusal per file, for `status`.
    errors: Mutex<HashMap<u64, String>>,
}

impl WriteBack {
    pub(super) fn new() -> Self {
        Self {
            queue: std::sync::OnceLock::new(),
            files: Arc::new(Semaphore::new(MAX_PENDING_FILES)),
            bytes: Arc::new(Semaphore::new((MAX_PENDING_BYTES / BYTE_UNIT) as usize)),
            pending_bytes: AtomicU64::new(0),
            pending_files: AtomicU64::new(0),
            refused_at: Mutex::new(None),
            settled: tokio::sync::Notify::new(),
            errors: Mutex::new(HashMap::new()),
        }
    }

    fn refused_recently(&self) -> bool {
        self.refused_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < REFUSAL_HOLD)
    }
}

/// What `gridback status` shows of the write-back.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteBackStatus {
    /// Files closed but not yet on the grid.
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Why some of them were refused, when they were.
    pub errors: Vec<String>,
}

impl FsCore {
    /// Start the background uploader: from now on close returns before the upload (see the
    /// module doc). Files left pending by an earlier run are queued at once.
    pub fn start_write_back(self: &Arc<Self>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.write_back.queue.set(tx.clone()).is_err() {
            return;
        }
        let pending: Vec<u64> = self
            .open_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for ino in pending {
            let _ = tx.send(ino);
        }
        // The worker keeps only weak handles: once the core is dropped (its sender with it),
        // the queue closes and the worker ends.
        tokio::spawn(worker(Arc::downgrade(self), rx, tx.downgrade()));
    }

    /// Files and bytes waiting for the grid.
    pub fn write_back_status(&self) -> WriteBackStatus {
        let wb = &self.write_back;
        WriteBackStatus {
            pending_files: wb.pending_files.load(Ordering::SeqCst),
            pending_bytes: wb.pending_bytes.load(Ordering::SeqCst),
            errors: wb
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(ino, e)| format!("inode {ino}: {e}"))
                .collect(),
        }
    }

    /// Whether a close of `size` bytes may return before its upload.
    fn write_back_allows(&self, size: u64) -> bool {
        let wb = &self.write_back;
        if wb.queue.get().is_none() || wb.refused_recently() {
            return false;
        }
        if !matches!(
            self.grid.subscription_state(),
            None | Some(SubscriptionState::Active)
        ) {
            return false;
        }
        let Some(terms) = self.grid.terms() else {
            return true;
        };
        let Some(quota) = terms.subscription.limits.quota_bytes else {
            return true;
        };
        let pending = wb.pending_bytes.load(Ordering::SeqCst).saturating_add(size);
        terms
            .usage
            .charged_bytes
            .saturating_add(pending.saturating_mul(QUOTA_FACTOR))
            < quota
    }

    /// Close of a written file with write-back: record the closed version and queue its
    /// upload. Returns false when the close must upload itself (write-back off, the quota
    /// near, a recent refusal, nothing to upload).
    pub(super) async fn defer_commit(&self, of: &Arc<OpenFile>) -> Result<bool, FsError> {
        let size = {
            let st = of.state.lock().await;
            if st.pending {
                return Ok(true);
            }
            if !st.dirty && st.created_name.is_none() {
                return Ok(false);
            }
            st.size
        };
        if !self.write_back_allows(size) {
            return Ok(false);
        }
        // Room first, without holding the file's lock (a full queue waits for uploads).
        let wb = &self.write_back;
        let file = wb
            .files
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FsError::Io(std::io::Error::other("write-back is shut down")))?;
        let units = size.div_ceil(BYTE_UNIT).min(MAX_PENDING_BYTES / BYTE_UNIT) as u32;
        let bytes = if units > 0 {
            Some(
                wb.bytes
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .map_err(|_| FsError::Io(std::io::Error::other("write-back is shut down")))?,
            )
        } else {
            None
        };
        let mut st = of.state.lock().await;
        if st.pending {
            return Ok(true);
        }
        let Some(mut inode) = self.meta.inode(of.ino)? else {
            return Ok(false);
        };
        if inode.nlink == 0 || (!st.dirty && !inode.provisional) || inode.kind != Kind::File {
            return Ok(false);
        }
        if st.spool.is_none() {
            return Ok(false);
        }
        inode.size = st.size;
        if let Some(t) = st.pending_mtime.take() {
            inode.mtime = t;
        }
        inode.ctime = crate::meta::Time::now();
        let name = if inode.provisional {
            st.created_name.clone()
        } else {
            None
        };
        record::write(&self.spool_dir, &RecordV1::new(of.ino, name, &inode))?;
        let mut tx = self.meta.write()?;
        tx.put_inode(of.ino, &inode)?;
        tx.commit_lazy()?;
        st.dirty = true;
        st.pending = true;
        st.slot = Some(Slot {
            _file: file,
            _bytes: bytes,
            bytes: inode.size,
        });
        wb.pending_bytes.fetch_add(inode.size, Ordering::SeqCst);
        wb.pending_files.fetch_add(1, Ordering::SeqCst);
        drop(st);
        if let Some(q) = wb.queue.get() {
            let _ = q.send(of.ino);
        }
        debug!(ino = of.ino, bytes = inode.size, "closed: upload queued");
        Ok(true)
    }

    /// Whether `ino` was closed with write-back and is not on the grid yet (a file being
    /// uploaded right now counts). Changes to such a file's attributes are committed
    /// durably even while it is provisional: its record does not carry them.
    pub(super) fn is_pending(&self, ino: u64) -> bool {
        self.open_file_if_any(ino)
            .is_some_and(|of| of.state.try_lock().map(|st| st.pending).unwrap_or(true))
    }

    /// Forget that a file is pending (its upload is committed durably, or it was removed):
    /// remove its record and release its room. Call with the file's state locked.
    pub(super) fn settle(&self, of: &OpenFile, st: &mut FileState) -> Result<(), FsError> {
        if !st.pending {
            return Ok(());
        }
        record::remove(&self.spool_dir, of.ino)?;
        st.pending = false;
        st.failures = 0;
        if let Some(slot) = st.slot.take() {
            self.write_back
                .pending_bytes
                .fetch_sub(slot.bytes, Ordering::SeqCst);
        }
        self.write_back.pending_files.fetch_sub(1, Ordering::SeqCst);
        self.write_back
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&of.ino);
        self.write_back.settled.notify_waiters();
        Ok(())
    }

    /// Upload every pending file of the snapshot rooted at `root` (every snapshot with
    /// `None`) now, failing with the first refusal.
    pub(super) async fn flush_pending(&self, root: Option<u64>) -> Result<(), FsError> {
        let files = self.all_open_files();
        for of in files {
            let pending = of.state.lock().await.pending;
            if !pending {
                continue;
            }
            let in_scope = match root {
                None => true,
                Some(r) => self.meta.inode(of.ino)?.is_none_or(|i| i.snapshot == r),
            };
            if in_scope {
                self.commit(&of).await?;
                self.drop_open_file(&of).await?;
            }
        }
        Ok(())
    }

    /// Wait until no file of the snapshot rooted at `root` is pending (seal). With the
    /// uploader running, its concurrent uploads are awaited; a file it could not store (or
    /// every file, without it) is uploaded here, so the grid's refusal is this call's error.
    pub(super) async fn wait_pending(&self, root: u64) -> Result<(), FsError> {
        if self.write_back.queue.get().is_none() {
            return self.flush_pending(Some(root)).await;
        }
        loop {
            let notified = self.write_back.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let files = self.all_open_files();
            let mut waiting = 0usize;
            for of in files {
                let (pending, failures) = match of.state.try_lock() {
                    Ok(st) => (st.pending, st.failures),
                    // Locked: being uploaded (or written); count it as pending.
                    Err(_) => (true, 0),
                };
                if !pending || self.meta.inode(of.ino)?.is_some_and(|i| i.snapshot != root) {
                    continue;
                }
                if failures > 0 {
                    // Refused in the background: try once more here and report the refusal.
                    self.commit(&of).await?;
                    self.drop_open_file(&of).await?;
                    continue;
                }
                waiting += 1;
            }
            if waiting == 0 {
                return Ok(());
            }
            debug!(files = waiting, "seal waits for uploads");
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// Wait until nothing is pending (unmount), logging progress; gives up on refusals
    /// after `patience` without progress and says what stays for the next mount.
    pub async fn drain_write_back(&self, patience: Duration) {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let s = self.write_back_status();
            if s.pending_files == 0 {
                return;
            }
            if s.pending_files != last.0 {
                info!(
                    files = s.pending_files,
                    bytes = s.pending_bytes,
                    "waiting for uploads before unmounting"
                );
                last = (s.pending_files, Instant::now());
            } else if last.1.elapsed() > patience {
                warn!(files = s.pending_files, bytes = s.pending_bytes, errors = ?s.errors,
                    "uploads did not finish; they stay in the state directory and resume at the next mount");
                return;
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.write_back.settled.notified())
                    .await;
        }
    }

    /// Replay the records left by an earlier run (before crash recovery removes provisional
    /// inodes): re-apply each closed version to the metadata, re-create a file whose
    /// creation was lost, and register it as pending. Unusable records go to
    /// `STATE/lost+found/` with a warning, never silently away.
    pub(super) fn replay_write_back(&self) -> Result<Vec<u64>, FsError> {
        let mut recs = Vec::new();
        for entry in std::fs::read_dir(&self.spool_dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            if name.ends_with(record::TEMP_SUFFIX) {
                std::fs::remove_file(&path)?;
            } else if name.ends_with(record::RECORD_SUFFIX) {
                recs.push(path);
            }
        }
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let mut replayed = Vec::new();
        let mut tx = self.meta.write()?;
        let mut max_ino = 0;
        for rec_path in recs {
            let rec = match std::fs::read(&rec_path)
                .map_err(|e| e.to_string())
                .and_then(|b| RecordV1::decode(&b))
            {
                Ok(r) => r,
                Err(reason) => {
                    self.lost_and_found(&rec_path, None, &reason)?;
                    continue;
                }
            };
            let spool = self.spool_dir.join(rec.ino.to_string());
            let spool_len = std::fs::metadata(&spool).map(|m| m.len()).ok();
            if spool_len != Some(rec.size) {
                let reason = format!(
                    "its spool holds {spool_len:?} bytes, the record says {}",
                    rec.size
                );
                self.lost_and_found(&rec_path, Some(&spool), &reason)?;
                continue;
            }
            let inode: Option<Inode> = match tx.inode(rec.ino)? {
                Some(i) if i.nlink == 0 => {
                    // Removed after its close: nothing to upload, nothing to keep.
                    record::remove(&self.spool_dir, rec.ino)?;
                    tx.remove_inode(rec.ino)?;
                    std::fs::remove_file(&spool)?;
                    continue;
                }
                Some(mut i) => {
                    if (rec.ctime.0, rec.ctime.1) > (i.ctime.secs, i.ctime.nanos) {
                        rec.apply(&mut i);
                    }
                    Some(i)
                }
                None => {
                    let parent_ok = tx.inode(rec.parent)?.is_some_and(|p| p.kind == Kind::Dir);
                    match &rec.name {
                        Some(n) if parent_ok && tx.lookup(rec.parent, n)?.is_none() => {
                            tx.put_dirent(rec.parent, n, rec.ino)?;
                            Some(rec.to_inode())
                        }
                        _ => None,
                    }
                }
            };
            let Some(inode) = inode else {
                let reason =
                    "its directory entry could not be restored (directory gone or name taken)";
                self.lost_and_found(&rec_path, Some(&spool), reason)?;
                continue;
            };
            tx.put_inode(rec.ino, &inode)?;
            max_ino = max_ino.max(rec.ino);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spool)?;
            self.pending_open_file(rec.ino, file, rec.size, rec.name.clone());
            self.write_back
                .pending_bytes
                .fetch_add(rec.size, Ordering::SeqCst);
            self.write_back.pending_files.fetch_add(1, Ordering::SeqCst);
            replayed.push(rec.ino);
        }
        tx.bump_next_ino(max_ino + 1)?;
        tx.commit()?;
        if !replayed.is_empty() {
            info!(
                files = replayed.len(),
                "files closed before the last stop are uploaded again"
            );
        }
        Ok(replayed)
    }

    fn lost_and_found(
        &self,
        rec: &std::path::Path,
        spool: Option<&std::path::Path>,
        reason: &str,
    ) -> Result<(), FsError> {
        let dir = self
            .spool_dir
            .parent()
            .unwrap_or(&self.spool_dir)
            .join("lost+found");
        std::fs::create_dir_all(&dir)?;
        for p in std::iter::once(rec).chain(spool) {
            if let Some(n) = p.file_name() {
                std::fs::rename(p, dir.join(n))?;
            }
        }
        warn!(record = %rec.display(), reason, lost_and_found = %dir.display(),
            "a closed file could not be restored after a crash; its bytes are kept");
        Ok(())
    }
}

/// A background upload that ended: the file, and how.
type Finished = (Arc<OpenFile>, Result<(), FsError>);

/// Uploads queued files, many at once, and settles them in groups.
async fn worker(
    core: Weak<FsCore>,
    mut rx: mpsc::UnboundedReceiver<u64>,
    tx: mpsc::WeakUnboundedSender<u64>,
) {
    let mut inflight: JoinSet<Finished> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            ino = rx.recv(), if open && inflight.len() < UPLOADS_IN_FLIGHT => {
                let Some(ino) = ino else { open = false; continue };
                let Some(core) = core.upgrade() else { return };
                let Some(of) = core.open_file_if_any(ino) else { continue };
                inflight.spawn(async move {
                    let r = core.commit_in_background(&of).await;
                    (of, r)
                });
            }
            Some(first) = inflight.join_next() => {
                let mut done = vec![first];
                while let Some(r) = inflight.try_join_next() {
                    done.push(r);
                }
                let Some(core) = core.upgrade() else { return };
                core.finish_group(done, &tx).await;
            }
            else => return,
        }
    }
}

impl FsCore {
    /// Upload one pending file and commit its chunk list without waiting for the disk.
    async fn commit_in_background(&self, of: &Arc<OpenFile>) -> Result<(), FsError> {
        let mut st = of.state.lock().await;
        if !st.pending {
            return Ok(());
        }
        self.commit_locked(of, &mut st, false).await
    }

    /// Make a group of finished uploads durable with one commit, then settle them; refused
    /// ones are retried later.
    async fn finish_group(
        &self,
        done: Vec<Result<Finished, tokio::task::JoinError>>,
        tx: &mpsc::WeakUnboundedSender<u64>,
    ) {
        let ok = done.iter().filter(|r| matches!(r, Ok((_, Ok(()))))).count();
        let sync: Result<(), String> = if ok > 0 {
            self.meta
                .write()
                .and_then(|t| t.commit())
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        for r in done {
            let (of, result) = match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "background upload task failed");
                    continue;
                }
            };
            let result = result.and_then(|()| {
                sync.clone()
                    .map_err(|e| FsError::Io(std::io::Error::other(e)))
            });
            match result {
                Ok(()) => {
                    let mut st = of.state.lock().await;
                    // Still pending and clean: this upload is what the record describes.
                    if st.pending
                        && !st.dirty
                        && let Err(e) = self.settle(&of, &mut st)
                    {
                        warn!(ino = of.ino, error = %e, "cannot remove a write-back record");
                    }
                    drop(st);
                    if let Err(e) = self.drop_open_file(&of).await {
                        warn!(ino = of.ino, error = %e, "cannot drop an uploaded file's spool");
                    }
                }
                Err(e) => self.retry_later(of, e, tx).await,
            }
        }
    }

    async fn retry_later(
        &self,
        of: Arc<OpenFile>,
        e: FsError,
        tx: &mpsc::WeakUnboundedSender<u64>,
    ) {
        let wb = &self.write_back;
        *wb.refused_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        wb.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(of.ino, e.to_string());
        let failures = {
            let mut st = of.state.lock().await;
            st.failures = st.failures.saturating_add(1);
            st.failures
        };
        let delay = RETRY_FIRST
            .saturating_mul(1 << failures.min(6))
            .min(RETRY_MAX);
        warn!(ino = of.ino, error = %e, retry_in = ?delay,
            "a closed file could not be uploaded; it stays pending and is retried (fsync or seal report the error)");
        wb.settled.notify_waiters();
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(of.ino);
            }
        });
    }
}
