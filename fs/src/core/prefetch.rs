//! Reading ahead across the files of a sealed snapshot, for programs that walk a tree one
//! file at a time (`tar`, `cp -r`, `rsync`): without it every small file would wait for its
//! own `LocateChunks` round trip and then its own packet gets, one file after the other.
//!
//! - **Listing** a directory of a sealed snapshot (opendir) locates the chunks of its files,
//!   in readdir order, at most [`READDIR_LOCATE_CHUNKS`] of them, in one batched call
//!   ([`Grid::prefetch_locations`]) on a spawned task: the reply does not wait.
//! - **Looking up** an entry of such a directory moves a window of the next [`AHEAD_FILES`]
//!   entries (by name, the readdir order): when fewer than half of them are left ahead, the
//!   next ones are listed and their chunks located (up to [`AHEAD_CHUNKS_PER_FILE`] a file, so
//!   a large file's readahead finds its locations too). Only the coordinator is asked: `ls -l`
//!   of a large directory fetches no data.
//! - **Opening** a file of that window for reading fetches the first chunk of each of the
//!   next [`AHEAD_DATA_FILES`] files into the chunk cache (those not asked for yet), so a
//!   program reading one file after the other (`tar`) finds the data there.
//! - Bounds: one window (the directory looked up last), at most [`AHEAD_FILES`] entries
//!   listed and [`AHEAD_DATA_FILES`] files (and half of [`ChunkCache`]'s quarter of data per
//!   open) fetched ahead of the reader, fetches holding at most [`FETCH_BUDGET_BYTES`] of chunk
//!   data in flight, and at most [`MAX_QUEUED_FETCHES`] fetches waiting; beyond that the data
//!   prefetch is skipped (reads fetch on their own).
//!   Open snapshots are never prefetched (their files change).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gridback_proto::ChunkId;
use tokio::sync::{Notify, Semaphore};

use super::{ChunkCache, FsCore, FsError};
use crate::grid::ChunkRef;
use crate::meta::{Kind, LocalState, MetaStore, SNAPSHOTS_INO};

/// Chunks located when a directory is listed: a few batched round trips' worth, far below the
/// reader's location cache (4096), and a few hundred kilobytes of answers.
pub const READDIR_LOCATE_CHUNKS: usize = 1024;
/// Entries ahead of the last one looked up that are prefetched: enough to keep a few dozen
/// fetches going while a program reads one small file after the other.
pub const AHEAD_FILES: usize = 64;
/// Files after the one opened whose first chunk is fetched ahead.
pub const AHEAD_DATA_FILES: usize = 32;
/// Chunks of one file located ahead (64 MiB of content at the 1 MiB average chunk).
pub const AHEAD_CHUNKS_PER_FILE: usize = 64;
/// Chunk data being fetched by the prefetcher at once (each fetch also holds its k packets).
pub const FETCH_BUDGET_BYTES: usize = 8 << 20;
/// Prefetch fetches waiting for the budget at most; more are not queued.
pub const MAX_QUEUED_FETCHES: usize = 256;
/// Units of the fetch budget's semaphore (4 KiB: a chunk's length rounded up).
const BUDGET_UNIT: usize = 4096;

/// The window of entries prefetched ahead in one directory.
#[derive(Debug)]
struct Window {
    dir: u64,
    /// Entries listed ahead and not looked up yet, in order: name, inode and first chunk
    /// (regular files with content).
    ahead: VecDeque<(Vec<u8>, u64, Option<ChunkRef>)>,
    /// The entry looked up last (name, inode).
    current: Option<(Vec<u8>, u64)>,
    /// Last name whose data was asked for (data prefetch resumes after it).
    data_until: Vec<u8>,
    /// Last name listed: the next listing starts after it.
    last: Vec<u8>,
    /// Nothing is left after `last`.
    end: bool,
}

/// See the module doc.
pub(super) struct Prefetcher {
    window: Mutex<Option<Window>>,
    /// Roots of snapshots known to be sealed (a sealed snapshot never opens again).
    sealed: Mutex<HashSet<u64>>,
    budget: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    /// Data kept ahead of the reader at most.
    ahead_bytes: u64,
    /// Prefetch tasks running, and a wake-up for [`FsCore::prefetch_settled`].
    active: Arc<Active>,
}

/// Count of running prefetch tasks.
#[derive(Default)]
struct Active {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by a running prefetch task.
struct Busy(Arc<Active>);

impl Busy {
    fn new(a: &Arc<Active>) -> Self {
        a.running.fetch_add(1, Ordering::SeqCst);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Prefetcher {
    pub(super) fn new(cache_bytes: usize) -> Self {
        Self {
            window: Mutex::new(None),
            sealed: Mutex::new(HashSet::new()),
            budget: Arc::new(Semaphore::new(FETCH_BUDGET_BYTES / BUDGET_UNIT)),
            queued: Arc::new(AtomicUsize::new(0)),
            ahead_bytes: (cache_bytes / 4) as u64,
            active: Arc::default(),
        }
    }

    /// Move the window of `dir` past `name`; the entries newly listed ahead.
    fn advance(
        &self,
        meta: &MetaStore,
        dir: u64,
        name: &[u8],
        ino: u64,
    ) -> Result<Vec<ChunkId>, FsError> {
        let mut g = self.window.lock().unwrap_or_else(|p| p.into_inner());
        // Same directory, not gone back (a second walk restarts the window).
        let keep = |w: &Window| {
            w.dir == dir && w.current.as_ref().is_none_or(|(c, _)| c.as_slice() <= name)
        };
        let w = match &mut *g {
            Some(w) if keep(w) => w,
            other => other.insert(Window {
                dir,
                ahead: VecDeque::new(),
                current: None,
                data_until: Vec::new(),
                last: name.to_vec(),
                end: false,
            }),
        };
        while w.ahead.front().is_some_and(|(n, ..)| n.as_slice() <= name) {
            w.ahead.pop_front();
        }
        w.current = Some((name.to_vec(), ino));
        if name > w.last.as_slice() {
            // The program jumped past the window: start again from here.
            w.last = name.to_vec();
            w.end = false;
        }
        if w.end || w.ahead.len() >= AHEAD_FILES / 2 {
            return Ok(Vec::new());
        }
        let want = AHEAD_FILES - w.ahead.len();
        let entries = meta.list_dir(dir, Some(&w.last), want)?;
        w.end = entries.len() < want;
        if let Some((n, _)) = entries.last() {
            w.last = n.clone();
        }
        let mut locate = Vec::new();
        let mut seen = HashSet::new();
        for (n, child) in entries {
            let chunks = file_content(meta, child)?;
            for c in chunks.iter().take(AHEAD_CHUNKS_PER_FILE) {
                if seen.insert(c.id) {
                    locate.push(c.id);
                }
            }
            w.ahead.push_back((n, child, chunks.first().copied()));
        }
        Ok(locate)
    }

    /// `ino` was opened for reading: the first chunks of the files after it in the window not
    /// asked for yet, within `allowance` bytes.
    fn data_after(&self, ino: u64, mut allowance: u64) -> Vec<ChunkRef> {
        let mut g = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = g.as_mut() else {
            return Vec::new();
        };
        if w.current.as_ref().is_none_or(|(_, i)| *i != ino) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut until = None;
        for (n, _, first) in w.ahead.iter().take(AHEAD_DATA_FILES) {
            if *n <= w.data_until {
                continue; // asked for at an earlier open
            }
            if let Some(c) = first {
                if u64::from(c.len) > allowance {
                    break;
                }
                allowance -= u64::from(c.len);
                out.push(*c);
            }
            until = Some(n.clone());
        }
        if let Some(n) = until {
            w.data_until = n;
        }
        out
    }
}

/// The chunk list of `ino` if it is a regular file.
fn file_content(meta: &MetaStore, ino: u64) -> Result<Vec<ChunkRef>, FsError> {
    if meta.inode(ino)?.is_none_or(|i| i.kind != Kind::File) {
        return Ok(Vec::new());
    }
    Ok(meta.content(ino)?)
}

/// The chunks of the regular files among `inos`: those to locate (at most `per_file` of each,
/// at most `max_total` in all) and the first chunk of each, in order.
fn file_chunks(
    meta: &MetaStore,
    inos: impl IntoIterator<Item = u64>,
    per_file: usize,
    max_total: usize,
) -> Result<(Vec<ChunkId>, Vec<ChunkRef>), FsError> {
    let mut locate = Vec::new();
    let mut seen = HashSet::new();
    let mut first = Vec::new();
    for ino in inos {
        if locate.len() >= max_total {
            break;
        }
        let chunks = file_content(meta, ino)?;
        if let Some(c) = chunks.first() {
            first.push(*c);
        }
        for c in chunks.iter().take(per_file) {
            if locate.len() < max_total && seen.insert(c.id) {
                locate.push(c.id);
            }
        }
    }
    Ok((locate, first))
}

impl FsCore {
    /// Wait until no prefetch is running (tests: makes what was prefetched deterministic).
    pub async fn prefetch_settled(&self) {
        let active = &self.prefetcher.active;
        loop {
            let idle = active.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if active.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Whether `ino` (not the mount root or `snapshots/`) lives in a sealed snapshot.
    pub fn in_sealed_snapshot(&self, ino: u64) -> bool {
        if ino <= SNAPSHOTS_INO {
            return false;
        }
        let Ok(Some(inode)) = self.meta.inode(ino) else {
            return false;
        };
        self.snapshot_is_sealed(inode.snapshot)
    }

    fn snapshot_is_sealed(&self, root: u64) -> bool {
        let sealed = &self.prefetcher.sealed;
        if sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&root)
        {
            return true;
        }
        let is = root != 0 && matches!(self.snapshot_state(root), Ok(LocalState::Sealed));
        if is {
            sealed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(root);
        }
        is
    }

    /// A sealed directory `dir` was listed: locate its files' chunks in the background.
    pub(super) fn prefetch_listed(&self, dir: u64, snapshot: u64, children: Vec<u64>) {
        if children.is_empty() || !self.snapshot_is_sealed(snapshot) {
            return;
        }
        let (meta, grid) = (self.meta.clone(), self.grid.clone());
        let busy = Busy::new(&self.prefetcher.active);
        tokio::spawn(async move {
            let _busy = busy;
            let found = tokio::task::spawn_blocking(move || {
                file_chunks(&meta, children, usize::MAX, READDIR_LOCATE_CHUNKS)
            })
            .await;
            match found {
                Ok(Ok((ids, _))) if !ids.is_empty() => grid.prefetch_locations(&ids).await,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(dir, error = %e, "listing prefetch failed"),
                Err(e) => tracing::debug!(dir, error = %e, "listing prefetch task failed"),
            }
        });
    }

    /// `name` (inode `ino`) was looked up in `dir` (of snapshot root `snapshot`): locate what
    /// comes next.
    pub(super) fn prefetch_after_lookup(&self, dir: u64, snapshot: u64, name: &[u8], ino: u64) {
        if !self.snapshot_is_sealed(snapshot) {
            return;
        }
        let ids = match self.prefetcher.advance(&self.meta, dir, name, ino) {
            Ok(ids) if !ids.is_empty() => ids,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(dir, error = %e, "lookup prefetch failed");
                return;
            }
        };
        let grid = self.grid.clone();
        let busy = Busy::new(&self.prefetcher.active);
        tokio::spawn(async move {
            let _busy = busy;
            grid.prefetch_locations(&ids).await;
        });
    }

    /// `ino` (of snapshot root `snapshot`) was opened for reading: fetch the first chunks of
    /// the files after it into the cache.
    pub(super) fn prefetch_after_open(&self, ino: u64, snapshot: u64) {
        if !self.snapshot_is_sealed(snapshot) {
            return;
        }
        // Half the data allowance per open: the other half is what earlier opens asked for.
        let data = self
            .prefetcher
            .data_after(ino, self.prefetcher.ahead_bytes / 2);
        for c in data {
            spawn_fetch(
                &self.cache,
                &self.prefetcher.budget,
                &self.prefetcher.queued,
                &self.prefetcher.active,
                c,
            );
        }
    }
}

/// Fetch `c` into the cache within the fetch budget, unless too many fetches wait already.
fn spawn_fetch(
    cache: &Arc<ChunkCache>,
    budget: &Arc<Semaphore>,
    queued: &Arc<AtomicUsize>,
    active: &Arc<Active>,
    c: ChunkRef,
) {
    if cache.contains(&c.id) {
        return;
    }
    if queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_FETCHES {
        queued.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let units = (c.len as usize)
        .div_ceil(BUDGET_UNIT)
        .clamp(1, FETCH_BUDGET_BYTES / BUDGET_UNIT);
    let (cache, budget, queued) = (cache.clone(), budget.clone(), queued.clone());
    let busy = Busy::new(active);
    tokio::spawn(async move {
        let _busy = busy;
        let permit = budget.acquire_many_owned(units as u32).await;
        queued.fetch_sub(1, Ordering::SeqCst);
        if permit.is_ok()
            && let Err(e) = cache.prefetch(c).await
        {
            tracing::debug!(chunk = %c.id, error = %e, "prefetch failed");
        }
    });
}
