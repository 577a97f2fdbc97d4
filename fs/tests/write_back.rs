//! Write-back (`core::write_back`): close returns before the upload, what was closed survives
//! a restart and is uploaded then, fsync and seal wait for the grid, refusals reach seal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod core_support;
use core_support::{ROOT_OWNER, read_all, write_closed};

use std::path::Path;
use std::sync::Arc;

use gridback_fs::core::{CoreConfig, FsCore};
use gridback_fs::meta::SNAPSHOTS_INO;
use gridback_fs::testing::{MemGrid, Refusal};
use gridback_fs::tree::MasterKeyCipher;

fn core_over(dir: &Path, grid: Arc<MemGrid>) -> Arc<FsCore> {
    let cipher = Arc::new(MasterKeyCipher::new(grid.keys()));
    let config = CoreConfig {
        cache_bytes: 8 << 20,
        readahead_chunks: 2,
    };
    Arc::new(FsCore::new(dir, grid, cipher, config).unwrap())
}

/// A core with write-back started and snapshot `s` open; returns its root inode too.
async fn writing_core(dir: &Path, grid: Arc<MemGrid>) -> (Arc<FsCore>, u64) {
    let core = core_over(dir, grid);
    core.start_write_back();
    let root = core
        .mkdir(SNAPSHOTS_INO, b"s", 0o755, ROOT_OWNER)
        .await
        .unwrap()
        .ino;
    (core, root)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ seed)
        .collect()
}

fn records(state: &Path) -> usize {
    std::fs::read_dir(state.join("spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".rec")
        })
        .count()
}

/// Closes while the grid refuses every upload still return: the files are readable from the
/// spool, recorded, and (the grid accepting again, a new core over the same state directory,
/// as after a killed mount) uploaded at the next start; then nothing is left locally.
#[tokio::test]
async fn closed_files_outlive_the_core_and_upload_at_the_next_start() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20u8)
        .map(|i| (format!("f{i}"), pattern(i, 1000 + 3000 * usize::from(i))))
        .collect();
    {
        let (core, root) = writing_core(dir.path(), grid.clone()).await;
        grid.refuse_stores(Some(Refusal::Quota));
        // The first close goes through write-back (no refusal seen yet); the uploader's
        // refusal then makes later closes upload themselves and fail, as before write-back.
        let first = write_closed(&core, root, &files[0].0, &files[0].1).await;
        assert_eq!(read_all(&core, first).await, files[0].1);
        // Wait for the refusal to be seen, then the remaining files with the grid
        // accepting but the uploader still holding back (the refusal is recent): they
        // upload at close.
        for _ in 0..200 {
            if !core.write_back_status().errors.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let status = core.write_back_status();
        assert_eq!(status.pending_files, 1, "{status:?}");
        assert_eq!(status.pending_bytes, files[0].1.len() as u64);
        assert!(status.errors[0].contains("quota"), "{status:?}");
        assert_eq!(records(dir.path()), 1);
        // Seal reports the refusal and seals nothing.
        let e = core.seal("s", false).await.unwrap_err();
        assert_eq!(e.errno(), libc::EDQUOT, "{e}");
        // The core goes away with the file pending (as a killed mount would).
    }
    grid.refuse_stores(None);
    let core = core_over(dir.path(), grid.clone());
    let root = core.lookup(SNAPSHOTS_INO, b"s").await.unwrap().ino;
    let f0 = core.lookup(root, files[0].0.as_bytes()).await.unwrap();
    assert_eq!(f0.inode.size, files[0].1.len() as u64);
    assert_eq!(f0.inode.perm & 0o777, 0o644);
    assert_eq!(read_all(&core, f0.ino).await, files[0].1);
    core.start_write_back();
    for (name, data) in &files[1..] {
        write_closed(&core, root, name, data).await;
    }
    core.seal("s", false).await.unwrap();
    assert_eq!(core.write_back_status().pending_files, 0);
    assert_eq!(records(dir.path()), 0);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "spool not emptied: {left:?}");
    for (name, data) in &files {
        let ino = core.lookup(root, name.as_bytes()).await.unwrap().ino;
        assert_eq!(&read_all(&core, ino).await, data, "{name}");
    }
}

/// fsync returns only when the file is on the grid; a write to a file whose upload is
/// still pending waits for that upload first and the final content is the last one.
#[tokio::test]
async fn fsync_waits_for_the_grid_and_rewrites_of_pending_files_keep_their_order() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let (core, root) = writing_core(dir.path(), grid.clone()).await;
    let before = grid.chunk_count();
    let (attr, fh) = core
        .create(root, b"synced", 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    core.write(fh, 0, &pattern(7, 100_000)).await.unwrap();
    core.fsync(fh).await.unwrap();
    assert!(
        grid.chunk_count() > before,
        "fsync returned before the upload"
    );
    assert_eq!(records(dir.path()), 0);
    core.release(fh).await.unwrap();

    // Close, then at once reopen and append: the append lands after the closed content.
    let ino = write_closed(&core, root, "again", &pattern(1, 50_000)).await;
    let fh = core.open(ino, true, false).await.unwrap();
    core.write(fh, 50_000, &pattern(2, 10_000)).await.unwrap();
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    core.seal("s", false).await.unwrap();
    let mut want = pattern(1, 50_000);
    want.extend(pattern(2, 10_000));
    assert_eq!(read_all(&core, ino).await, want);
    assert_eq!(read_all(&core, attr.ino).await, pattern(7, 100_000));
    assert_eq!(core.write_back_status().pending_files, 0);
}

/// A file removed while its upload is pending stays removed after a restart.
#[tokio::test]
async fn a_removed_pending_file_does_not_come_back() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    {
        let (core, root) = writing_core(dir.path(), grid.clone()).await;
        grid.refuse_stores(Some(Refusal::NoPlacement));
        write_closed(&core, root, "gone", &pattern(3, 5000)).await;
        core.unlink(root, b"gone").await.unwrap();
    }
    grid.refuse_stores(None);
    let core = core_over(dir.path(), grid.clone());
    let root = core.lookup(SNAPSHOTS_INO, b"s").await.unwrap().ino;
    assert!(core.lookup(root, b"gone").await.is_err());
    assert_eq!(records(dir.path()), 0);
    assert!(!dir.path().join("lost+found").exists());
    core.start_write_back();
    core.seal("s", false).await.unwrap();
}
