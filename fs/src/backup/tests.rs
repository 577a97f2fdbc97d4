//! How many files a backup stores at once: many small ones, few large ones.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use gridback_proto::coord_api::{SnapshotInfo, SnapshotRecord};
use tokio::sync::Notify;

use super::*;
use crate::grid::ChunkRef;
use crate::progress::NoProgress;
use crate::testing::MemGrid;
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

impl Grid for GatedGrid {
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
    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>> {
        self.inner.read_chunk(chunk)
    }
    fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.inner.snapshot_create(name, from)
    }
    fn snapshot_list(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>, GridError>> {
        self.inner.snapshot_list()
    }
    fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.inner.snapshot_seal(name, tree, tree_bytes)
    }
    fn snapshot_get(&self, name: String) -> BoxFuture<'_, Result<SnapshotRecord, GridError>> {
        self.inner.snapshot_get(name)
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
    let grid = GatedGrid {
        inner: MemGrid::new(),
        gate: 11,
        deadline: tokio::time::Instant::now() + DEADLINE,
        flight: Mutex::default(),
        changed: Notify::new(),
    };
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
