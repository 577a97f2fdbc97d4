//! What a writing program sees when the grid refuses its data (quota, suspension, no
//! placement), and what is left of the file afterwards; statfs from the subscription.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::sync::Arc;

use gridback_fs::core::namespace::Owner;
use gridback_fs::core::{CoreConfig, FsCore, STATFS_BLOCK_BYTES};
use gridback_fs::meta::SNAPSHOTS_INO;
use gridback_fs::testing::{MemGrid, Refusal};
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::ClientId;
use gridback_proto::location::Location;
use gridback_proto::subscription::{ClientTerms, Limits, Subscription, SubscriptionState, Usage};

const ROOT_OWNER: Owner = Owner { uid: 0, gid: 0 };

fn core_over(dir: &std::path::Path, grid: Arc<MemGrid>) -> FsCore {
    let cipher = Arc::new(MasterKeyCipher::new(grid.keys()));
    let config = CoreConfig {
        cache_bytes: 8 << 20,
        readahead_chunks: 2,
    };
    FsCore::new(dir, grid, cipher, config).unwrap()
}

async fn write_closed(core: &FsCore, dir: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = core
        .create(dir, name.as_bytes(), 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    core.write(fh, 0, data).await.unwrap();
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    attr.ino
}

async fn read_all(core: &FsCore, ino: u64) -> Vec<u8> {
    let fh = core.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let d = core.read(fh, out.len() as u64, 1 << 20).await.unwrap();
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    core.release(fh).await.unwrap();
    out
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn refusals_reach_the_writer_as_errno_and_leave_committed_files_intact() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid.clone());
    let root = core
        .mkdir(SNAPSHOTS_INO, b"s", 0o755, ROOT_OWNER)
        .await
        .unwrap()
        .ino;
    let kept = write_closed(&core, root, "kept", &pattern(1, 200_000)).await;

    for (refusal, errno) in [
        (Refusal::Quota, libc::EDQUOT),
        (Refusal::Suspended, libc::EACCES),
        (Refusal::NoPlacement, libc::ENOSPC),
    ] {
        grid.refuse_stores(Some(refusal));
        // A new file: close fails with the errno, and the file stays, empty (its content
        // at creation, the last one committed).
        let (attr, fh) = core
            .create(root, b"new", 0o644, ROOT_OWNER, false)
            .await
            .unwrap();
        core.write(fh, 0, &pattern(2, 100_000)).await.unwrap();
        assert_eq!(
            core.flush(fh).await.unwrap_err().errno(),
            errno,
            "{refusal:?}"
        );
        // fsync retries (bytes still spooled while open) and fails the same way.
        assert_eq!(core.fsync(fh).await.unwrap_err().errno(), errno);
        assert_eq!(core.release(fh).await.unwrap_err().errno(), errno);
        let looked = core.lookup(root, b"new").await.unwrap();
        assert_eq!(looked.ino, attr.ino, "{refusal:?}");
        assert_eq!(
            looked.inode.size, 0,
            "{refusal:?}: no partial content may remain"
        );
        assert_eq!(read_all(&core, attr.ino).await, Vec::<u8>::new());

        // An existing file rewritten: close fails, the previous content stays.
        let fh = core.open(kept, true, false).await.unwrap();
        core.write(fh, 5, b"NOT STORED").await.unwrap();
        assert_eq!(core.release(fh).await.unwrap_err().errno(), errno);
        assert_eq!(read_all(&core, kept).await, pattern(1, 200_000));
        assert_eq!(core.getattr(kept).await.unwrap().inode.size, 200_000);
    }

    // Accepted again: writes work, nothing left over from the refusals.
    grid.refuse_stores(None);
    let again = write_closed(&core, root, "new", &pattern(3, 50_000)).await;
    assert_eq!(read_all(&core, again).await, pattern(3, 50_000));
    assert_eq!(read_all(&core, kept).await, pattern(1, 200_000));
}

#[tokio::test]
async fn statfs_reports_the_quota_and_what_is_charged() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid.clone());
    let virt = core.statfs();
    assert_eq!(virt.blocks * STATFS_BLOCK_BYTES, 1 << 50);
    grid.set_terms(Some(ClientTerms {
        client: ClientId([1; 16]),
        subscription: Subscription {
            limits: Limits {
                quota_bytes: Some(100 << 20),
                ..Limits::default()
            },
            ..Subscription::default()
        },
        state: SubscriptionState::Active,
        usage: Usage {
            charged_bytes: 30 << 20,
            ..Usage::default()
        },
        location: Location::new("r", "z", "h"),
    }));
    let s = core.statfs();
    assert_eq!(s.blocks * STATFS_BLOCK_BYTES, 100 << 20);
    assert_eq!(s.bfree * STATFS_BLOCK_BYTES, 70 << 20);
    assert_eq!(s.bavail, s.bfree);
}
