//! How many files a backup stores at once: many small ones, few large ones.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::*;
use crate::meta::Kind;
use crate::progress::NoProgress;
use crate::testing::{GridHooks, Hooked, MemGrid};
use crate::tree::MasterKeyCipher;

/// Longest a test waits for the stores it expects to overlap.
const DEADLINE: Duration = Duration::from_secs(20);

/// In-flight stores, split by size.
#[derive(Default)]
struct Flight {
    small: usize,
    large: usize,
    max_small: usize,
    max_large: usize,
}

/// A [`MemGrid`] whose stores of small files wait until `gate` of them are in flight at once
/// (or the deadline passes), so the test sees whether the backup allows that many.
struct GatedGrid {
    inner: MemGrid,
    gate: usize,
    /// When gated stores stop waiting (one deadline for the whole test).
    deadline: tokio::time::Instant,
    flight: Mutex<Flight>,
    changed: Notify,
}

impl GatedGrid {
    async fn store(&self, snapshot: String, data: Vec<u8>) -> Result<StoredData, GridError> {
        let small = data.len() as u64 <= SMALL_FILE_BYTES;
        {
            let mut f = self.flight.lock().unwrap();
            if small {
                f.small += 1;
                f.max_small = f.max_small.max(f.small);
            } else {
                f.large += 1;
                f.max_large = f.max_large.max(f.large);
            }
        }
        self.changed.notify_waiters();
        if small {
            let wait = async {
                loop {
                    let notified = self.changed.notified();
                    if self.flight.lock().unwrap().max_small >= self.gate {
                        break;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout_at(self.deadline, wait).await;
        }
        let out = self
            .inner
            .store_reader(snapshot, Box::new(std::io::Cursor::new(data)))
            .await;
        {
            let mut f = self.flight.lock().unwrap();
            if small { f.small -= 1 } else { f.large -= 1 }
        }
        self.changed.notify_waiters();
        out
    }
}

impl GridHooks for GatedGrid {
    fn grid(&self) -> &MemGrid {
        &self.inner
    }
    fn store_reader(
        &self,
        snapshot: String,
        mut reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>> {
        let mut data = Vec::new();
        let read = reader.read_to_end(&mut data).map_err(GridError::Source);
        Box::pin(async move {
            read?;
            self.store(snapshot, data).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_overlap_and_large_ones_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40u32 {
        std::fs::write(src.join(format!("s{i:02}")), i.to_le_bytes().repeat(300)).unwrap();
    }
    for i in 0..3u8 {
        std::fs::write(
            src.join(format!("large{i}")),
            vec![i; (SMALL_FILE_BYTES + 1) as usize],
        )
        .unwrap();
    }
    let grid = Hooked(GatedGrid {
        inner: MemGrid::new(),
        gate: 11,
        deadline: tokio::time::Instant::now() + DEADLINE,
        flight: Mutex::default(),
        changed: Notify::new(),
    });
    let cipher = MasterKeyCipher::new(grid.inner.keys());
    let opts = BackupOptions {
        file_concurrency: 1,
        small_file_concurrency: 10,
        ..BackupOptions::new("b1")
    };
    let started = Instant::now();
    let s = backup(&grid, &cipher, &src, &opts, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(s.files, 43, "{s:?}");
    let f = grid.flight.lock().unwrap();
    assert_eq!(f.max_large, 1, "large files stored at once");
    // Small files may also take the slots large ones leave free: 1 + 10.
    assert_eq!(f.max_small, 11, "small files stored at once");
    // Had fewer than 11 small files overlapped, every gated store would wait the deadline.
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
}

/// A tree wide and deep enough that several directories are in the walk's queue at once.
fn make_tree(root: &Path) {
    for a in 0..6 {
        for b in 0..5 {
            let d = root.join(format!("d{a}/e{b}"));
            std::fs::create_dir_all(&d).unwrap();
            for f in 0..7 {
                std::fs::write(d.join(format!("f{f}")), vec![a as u8; f * 10 + b]).unwrap();
            }
            std::os::unix::fs::symlink("f1", d.join("link")).unwrap();
        }
        std::fs::create_dir_all(root.join(format!("d{a}/deep/er/still/more"))).unwrap();
        std::fs::write(root.join(format!("d{a}/deep/er/still/more/leaf")), b"x").unwrap();
    }
    std::fs::write(root.join("skip.tmp"), b"excluded").unwrap();
}

/// Walk `root` with `threads` workers; returns the walk and the files handed to uploads.
fn walk_with(root: &Path, threads: usize) -> (walk::Walked, Vec<FileJob>) {
    let (tx, mut rx) = mpsc::channel(4);
    let drain = std::thread::spawn(move || {
        let mut jobs = Vec::new();
        while let Some(j) = rx.blocking_recv() {
            jobs.push(j);
        }
        jobs
    });
    let excludes = globs(&["*.tmp".to_string()]).unwrap();
    let old = Default::default();
    let w = walk::walk(
        root,
        WalkParams {
            excludes: &excludes,
            old: &old,
            jobs: tx,
            progress: Arc::new(NoProgress),
            threads,
        },
    )
    .unwrap();
    (w, drain.join().unwrap())
}

/// Every node by path, with its kind, size and link count; checks the tree's invariants.
fn by_path(w: &walk::Walked) -> std::collections::BTreeMap<String, (Kind, u64, u32)> {
    let mut paths: Vec<String> = Vec::new();
    let mut out = std::collections::BTreeMap::new();
    let mut last_child: Vec<Option<Vec<u8>>> = vec![None; w.nodes.len()];
    for (i, n) in w.nodes.iter().enumerate() {
        let path = if i == 0 {
            String::new()
        } else {
            let parent = n.parent as usize;
            assert!(parent < i, "node {i}'s parent {parent} comes after it");
            assert_eq!(w.nodes[parent].inode.kind, Kind::Dir);
            if let Some(prev) = &last_child[parent] {
                assert!(prev < &n.name, "entries of a directory out of name order");
            }
            last_child[parent] = Some(n.name.clone());
            format!("{}/{}", paths[parent], String::from_utf8_lossy(&n.name))
        };
        out.insert(path.clone(), (n.inode.kind, n.inode.size, n.inode.nlink));
        paths.push(path);
    }
    out
}

#[test]
fn parallel_walk_finds_the_same_tree_as_a_serial_one() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path());
    let (serial, serial_jobs) = walk_with(dir.path(), 1);
    let (parallel, parallel_jobs) = walk_with(dir.path(), 8);
    let s = by_path(&serial);
    assert_eq!(s, by_path(&parallel));
    // 6 × (d, e×5, deep, er, still, more) + the root; 6 × (5 × 7 + 1) files.
    assert_eq!((serial.dirs, parallel.dirs), (61, 61));
    assert_eq!((serial.files, parallel.files), (216, 216));
    assert_eq!((serial.symlinks, parallel.symlinks), (30, 30));
    assert_eq!((serial.excluded, parallel.excluded), (1, 1));
    assert_eq!(s["/d3/e2/f4"], (Kind::File, 42, 1));
    assert_eq!(
        s["/d3"].2,
        2 + 6,
        "a directory's nlink counts its subdirectories"
    );
    assert!(!s.contains_key("/skip.tmp"));
    // Every file was handed to the uploads exactly once, under its own node.
    for (w, jobs) in [(&serial, &serial_jobs), (&parallel, &parallel_jobs)] {
        assert_eq!(jobs.len(), 216);
        let mut seen: Vec<usize> = jobs.iter().map(|j| j.index).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 216);
        for j in jobs.iter() {
            let n = &w.nodes[j.index];
            assert_eq!(n.inode.kind, Kind::File);
            assert!(j.path.ends_with(std::str::from_utf8(&n.name).unwrap()));
            assert_eq!(j.size, n.inode.size);
        }
    }
}

#[test]
fn an_unreadable_root_is_an_error_and_an_unreadable_subdirectory_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (tx, _rx) = mpsc::channel(1);
    let excludes = globs(&[]).unwrap();
    let old = Default::default();
    let params = WalkParams {
        excludes: &excludes,
        old: &old,
        jobs: tx,
        progress: Arc::new(NoProgress),
        threads: 4,
    };
    // (Root ignores permission bits, so a directory that vanished between being found and
    // being listed stands for one that cannot be read.)
    let (mut w, _) = walk_with(dir.path(), 1);
    assert_eq!(w.warnings, 0);
    let sub = walk::scan(
        walk::DirTask::new(missing.clone(), b"nope".to_vec(), 3),
        &excludes,
    );
    assert!(walk::merge(sub, &params, &mut w).unwrap().is_empty());
    assert_eq!(w.warnings, 1, "an unreadable subdirectory is a warning");
    let root = walk::scan(
        walk::DirTask::new(missing.clone(), Vec::new(), 0),
        &excludes,
    );
    let err = walk::merge(root, &params, &mut w).unwrap_err();
    assert!(
        matches!(err, BackupError::Source { ref path, .. } if path == &missing),
        "{err}"
    );
    let err = walk::walk(&missing, params).unwrap_err();
    assert!(
        matches!(err, BackupError::Source { ref path, .. } if path == &missing),
        "{err}"
    );
}

/// When the uploads stop (a store failed, so the backup is ending), the walk ends with an
/// error instead of waiting forever: workers blocked on the full channel of scanned
/// directories are released.
#[test]
fn the_walk_ends_when_the_uploads_stop() {
    let dir = tempfile::tempdir().unwrap();
    // No file at the top: the first refused file comes after the workers have scanned
    // (and filled the channel with) several directories.
    for d in 0..40 {
        let sub = dir.path().join(format!("d{d:02}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("f"), b"x").unwrap();
    }
    let root = dir.path().to_path_buf();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (tx, rx) = mpsc::channel(1);
        drop(rx); // the uploads are gone
        let excludes = globs(&[]).unwrap();
        let old = Default::default();
        let r = walk::walk(
            &root,
            WalkParams {
                excludes: &excludes,
                old: &old,
                jobs: tx,
                progress: Arc::new(NoProgress),
                threads: 2,
            },
        );
        let _ = done_tx.send(r.map(|w| w.files));
    });
    // A generous bound that only a hung walk can exceed.
    let r = done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the walk hung after the uploads stopped");
    assert!(
        matches!(r, Err(BackupError::Cancelled)),
        "expected the walk to stop with Cancelled: {r:?}"
    );
}
