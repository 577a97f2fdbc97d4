//! What a writing program sees when the grid refuses its data (quota, suspension, no
//! placement), and what is left of the file afterwards; statfs from the subscription.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod core_support;
use core_support::{ROOT_OWNER, read_all, write_closed};

use std::sync::Arc;

use gridback_fs::core::namespace::SetAttr;
use gridback_fs::core::{CoreConfig, FsCore, STATFS_BLOCK_BYTES};
use gridback_fs::meta::SNAPSHOTS_INO;
use gridback_fs::testing::{MemGrid, Refusal};
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::ClientId;
use gridback_proto::location::Location;
use gridback_proto::subscription::{ClientTerms, Limits, Subscription, SubscriptionState, Usage};

fn core_over(dir: &std::path::Path, grid: Arc<MemGrid>) -> FsCore {
    let cipher = Arc::new(MasterKeyCipher::new(grid.keys()));
    let config = CoreConfig {
        cache_bytes: 8 << 20,
        readahead_chunks: 2,
    };
    FsCore::new(dir, grid, cipher, config).unwrap()
}

/// A core over a fresh [`MemGrid`] with snapshot `s` open; returns its root inode too (the
/// temporary directory holds the local metadata: keep it alive).
async fn open_snapshot() -> (Arc<MemGrid>, tempfile::TempDir, FsCore, u64) {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid.clone());
    let root = core
        .mkdir(SNAPSHOTS_INO, b"s", 0o755, ROOT_OWNER)
        .await
        .unwrap()
        .ino;
    (grid, dir, core, root)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn refusals_reach_the_writer_as_errno_and_leave_committed_files_intact() {
    let (grid, _dir, core, root) = open_snapshot().await;
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

fn terms_in(state: SubscriptionState) -> ClientTerms {
    ClientTerms {
        client: ClientId([1; 16]),
        subscription: Subscription::default(),
        state,
        usage: Usage::default(),
        location: Location::new("r", "z", "h"),
    }
}

/// While the terms say suspended or expired, every change in an open snapshot is EACCES
/// before anything changes locally (the coordinator alone only refused uploads, so mkdir,
/// rename, unlink, chmod, xattrs and empty files went through); reads and browsing go on,
/// a sealed snapshot still answers EROFS, and everything works again once active.
#[tokio::test]
async fn suspended_terms_refuse_every_change_but_not_reads() {
    let (grid, _dir, core, root) = open_snapshot().await;
    let file = write_closed(&core, root, "f", &pattern(1, 50_000)).await;
    let sub = core.mkdir(root, b"d", 0o755, ROOT_OWNER).await.unwrap().ino;
    core.symlink(root, b"l", b"f", ROOT_OWNER).await.unwrap();
    let sealed = core
        .mkdir(SNAPSHOTS_INO, b"old", 0o755, ROOT_OWNER)
        .await
        .unwrap()
        .ino;
    core.seal("old", false).await.unwrap();
    // A handle opened for writing while active.
    let open_fh = core.open(file, true, false).await.unwrap();

    for state in [SubscriptionState::Suspended, SubscriptionState::Expired] {
        grid.set_terms(Some(terms_in(state)));
        let eacces = |r: Result<(), gridback_fs::core::FsError>, what: &str| {
            assert_eq!(
                r.expect_err(what).errno(),
                libc::EACCES,
                "{what} while {state:?}"
            );
        };
        eacces(
            core.mkdir(root, b"new", 0o755, ROOT_OWNER).await.map(drop),
            "mkdir",
        );
        eacces(
            core.mkdir(root, b"d", 0o755, ROOT_OWNER).await.map(drop),
            "mkdir of an existing name",
        );
        eacces(
            core.create(root, b"empty", 0o644, ROOT_OWNER, false)
                .await
                .map(drop),
            "create",
        );
        eacces(
            core.create(root, b"f", 0o644, ROOT_OWNER, false)
                .await
                .map(drop),
            "create over an existing file",
        );
        eacces(
            core.symlink(root, b"l2", b"f", ROOT_OWNER).await.map(drop),
            "symlink",
        );
        eacces(core.unlink(root, b"f").await, "unlink");
        eacces(core.unlink(root, b"l").await, "unlink of a symlink");
        eacces(core.rmdir(root, b"d").await, "rmdir");
        eacces(core.rename(root, b"f", sub, b"g", false).await, "rename");
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        eacces(core.setattr(file, chmod).await.map(drop), "chmod");
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        eacces(core.setattr(file, truncate).await.map(drop), "truncate");
        eacces(core.setxattr(file, b"user.a", b"v", 0).await, "setxattr");
        eacces(core.removexattr(file, b"user.a").await, "removexattr");
        eacces(core.open(file, true, true).await.map(drop), "open(O_TRUNC)");
        eacces(
            core.open(file, true, false).await.map(drop),
            "open for writing",
        );
        eacces(
            core.write(open_fh, 0, b"x").await.map(drop),
            "write through a handle opened before",
        );
        // A sealed snapshot still says EROFS.
        let e = core
            .mkdir(sealed, b"x", 0o755, ROOT_OWNER)
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::EROFS);
        // Reads and browsing go on.
        assert_eq!(read_all(&core, file).await, pattern(1, 50_000));
        let names: Vec<Vec<u8>> = core
            .readdir(root)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            core.readlink(core.lookup(root, b"l").await.unwrap().ino)
                .await
                .unwrap(),
            b"f"
        );
        assert_eq!(core.getattr(file).await.unwrap().inode.perm, 0o644);
    }

    grid.set_terms(Some(terms_in(SubscriptionState::Active)));
    core.release(open_fh).await.unwrap();
    core.mkdir(root, b"new", 0o755, ROOT_OWNER).await.unwrap();
    core.rename(root, b"f", sub, b"g", false).await.unwrap();
    core.unlink(root, b"l").await.unwrap();
    let again = write_closed(&core, root, "empty", b"").await;
    assert_eq!(core.getattr(again).await.unwrap().inode.size, 0);
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
