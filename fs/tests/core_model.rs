//! `FsCore` without FUSE, over the in-memory grid: a model-based test of random operation
//! sequences against a reference model, and the snapshot lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::collections::BTreeMap;
use std::sync::Arc;

use gridback_fs::core::namespace::{Owner, SetAttr};
use gridback_fs::core::{CoreConfig, FsCore, FsError};
use gridback_fs::meta::{Kind, SNAPSHOTS_INO};
use gridback_fs::testing::MemGrid;
use gridback_fs::tree::MasterKeyCipher;
use proptest::prelude::*;

const ROOT_OWNER: Owner = Owner { uid: 0, gid: 0 };

fn core_over(dir: &std::path::Path, grid: Arc<MemGrid>) -> FsCore {
    let cipher = Arc::new(MasterKeyCipher::new(grid.keys()));
    FsCore::new(
        dir,
        grid,
        cipher,
        CoreConfig {
            cache_bytes: 8 << 20,
            readahead_chunks: 2,
        },
    )
    .unwrap()
}

async fn snapshot(core: &FsCore, name: &str) -> u64 {
    core.mkdir(SNAPSHOTS_INO, name.as_bytes(), 0o755, ROOT_OWNER)
        .await
        .unwrap()
        .ino
}

async fn write_file(core: &FsCore, dir: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = core
        .create(dir, name.as_bytes(), 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    let mut off = 0;
    for piece in data.chunks(128 * 1024) {
        core.write(fh, off, piece).await.unwrap();
        off += piece.len() as u64;
    }
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    attr.ino
}

async fn read_file(core: &FsCore, ino: u64) -> Vec<u8> {
    let fh = core.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let d = core.read(fh, out.len() as u64, 128 * 1024).await.unwrap();
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
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[tokio::test]
async fn sealed_snapshots_are_read_only_and_survive_a_lost_cache() {
    let grid = Arc::new(MemGrid::new());
    let dir1 = tempfile::tempdir().unwrap();
    let core = core_over(dir1.path(), grid.clone());
    let root = snapshot(&core, "s").await;
    let sub = core
        .mkdir(root, b"sub dir", 0o750, ROOT_OWNER)
        .await
        .unwrap()
        .ino;
    let data = pattern(3, 3_000_000);
    write_file(&core, sub, "naïve file.bin", &data).await;
    core.symlink(root, b"link", b"sub dir/na\xc3\xafve file.bin", ROOT_OWNER)
        .await
        .unwrap();

    // Sealing refuses while a file is open for writing, unless forced.
    let (_, fh) = core
        .create(root, b"open.txt", 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    core.write(fh, 0, b"partial").await.unwrap();
    let e = core.seal("s", false).await.unwrap_err();
    assert!(matches!(e, FsError::Busy(_)), "{e}");
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    core.seal("s", false).await.unwrap();

    let e = core
        .create(root, b"late", 0o644, ROOT_OWNER, false)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EROFS);
    let e = core.unlink(root, b"link").await.unwrap_err();
    assert_eq!(e.errno(), libc::EROFS);

    // A new machine (empty local state) with the same keys browses the sealed tree.
    drop(core);
    let dir2 = tempfile::tempdir().unwrap();
    let core2 = core_over(dir2.path(), grid.clone());
    core2.sync_snapshots().await.unwrap();
    let root2 = core2.lookup(SNAPSHOTS_INO, b"s").await.unwrap().ino;
    let sub2 = core2.lookup(root2, b"sub dir").await.unwrap();
    assert_eq!(sub2.inode.perm, 0o750);
    let f = core2
        .lookup(sub2.ino, "naïve file.bin".as_bytes())
        .await
        .unwrap();
    assert_eq!(f.inode.size, data.len() as u64);
    assert_eq!(read_file(&core2, f.ino).await, data);
    let open = core2.lookup(root2, b"open.txt").await.unwrap();
    assert_eq!(read_file(&core2, open.ino).await, b"partial");
    let link = core2.lookup(root2, b"link").await.unwrap();
    assert_eq!(
        core2.readlink(link.ino).await.unwrap(),
        b"sub dir/na\xc3\xafve file.bin"
    );
}

#[tokio::test]
async fn a_crash_leaves_committed_files_and_drops_unfinished_ones() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid.clone());
    let root = snapshot(&core, "s").await;
    let done = write_file(&core, root, "done", &pattern(1, 500_000)).await;
    let (_, fh) = core
        .create(root, b"in-flight", 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    core.write(fh, 0, &pattern(2, 100_000)).await.unwrap();
    // Overwrite part of the committed file without closing it.
    let fh2 = core.open(done, true, false).await.unwrap();
    core.write(fh2, 10, b"UNSAVED").await.unwrap();
    drop(core); // the process dies: no flush, no release

    let core = core_over(dir.path(), grid);
    let root = core.lookup(SNAPSHOTS_INO, b"s").await.unwrap().ino;
    assert_eq!(
        core.lookup(root, b"in-flight").await.unwrap_err().errno(),
        libc::ENOENT
    );
    let f = core.lookup(root, b"done").await.unwrap();
    assert_eq!(read_file(&core, f.ino).await, pattern(1, 500_000));
}

#[tokio::test]
async fn unlinked_open_file_stays_readable_until_closed() {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid);
    let root = snapshot(&core, "s").await;
    let ino = write_file(&core, root, "f", b"still here").await;
    let fh = core.open(ino, false, false).await.unwrap();
    core.unlink(root, b"f").await.unwrap();
    assert_eq!(
        core.lookup(root, b"f").await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(core.read(fh, 0, 100).await.unwrap(), b"still here");
    core.release(fh).await.unwrap();
    assert_eq!(core.getattr(ino).await.unwrap_err().errno(), libc::ENOENT);
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Write(u8, u32, u16, u8),
    Truncate(u8, u32),
    Rename(u8, u8),
    Unlink(u8),
    Mkdir(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Create),
        (0u8..6, 0u32..3_000_000, 1u16..u16::MAX, any::<u8>())
            .prop_map(|(f, o, l, s)| Op::Write(f, o, l, s)),
        (0u8..6, 0u32..3_000_000).prop_map(|(f, s)| Op::Truncate(f, s)),
        (0u8..6, 0u8..6).prop_map(|(a, b)| Op::Rename(a, b)),
        (0u8..6).prop_map(Op::Unlink),
        (6u8..8).prop_map(Op::Mkdir),
    ]
}

fn name(i: u8) -> Vec<u8> {
    format!("f {i} é").into_bytes()
}

async fn run_model(ops: Vec<Op>) {
    let grid = Arc::new(MemGrid::new());
    let dir = tempfile::tempdir().unwrap();
    let core = core_over(dir.path(), grid);
    let root = snapshot(&core, "m").await;
    let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new(); // None = directory
    for op in ops {
        match op {
            Op::Create(i) => {
                let r = core.create(root, &name(i), 0o644, ROOT_OWNER, true).await;
                match model.get(&name(i)) {
                    Some(_) => assert_eq!(r.unwrap_err().errno(), libc::EEXIST),
                    None => {
                        let (_, fh) = r.unwrap();
                        core.release(fh).await.unwrap();
                        model.insert(name(i), Some(Vec::new()));
                    }
                }
            }
            Op::Write(i, off, len, seed) => {
                let Some(Some(content)) = model.get_mut(&name(i)) else {
                    continue;
                };
                let ino = core.lookup(root, &name(i)).await.unwrap().ino;
                let fh = core.open(ino, true, false).await.unwrap();
                let data = pattern(seed, len as usize);
                core.write(fh, u64::from(off), &data).await.unwrap();
                core.release(fh).await.unwrap();
                let end = off as usize + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[off as usize..end].copy_from_slice(&data);
            }
            Op::Truncate(i, size) => {
                let Some(Some(content)) = model.get_mut(&name(i)) else {
                    continue;
                };
                let ino = core.lookup(root, &name(i)).await.unwrap().ino;
                core.setattr(
                    ino,
                    SetAttr {
                        size: Some(u64::from(size)),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                content.resize(size as usize, 0);
            }
            Op::Rename(a, b) => {
                let r = core.rename(root, &name(a), root, &name(b), false).await;
                match (model.get(&name(a)).cloned(), model.get(&name(b)).cloned()) {
                    (None, _) => assert_eq!(r.unwrap_err().errno(), libc::ENOENT),
                    (Some(_), _) if a == b => r.unwrap(),
                    (Some(Some(_)), Some(None)) => assert_eq!(r.unwrap_err().errno(), libc::EISDIR),
                    (Some(None), Some(Some(_))) => {
                        assert_eq!(r.unwrap_err().errno(), libc::ENOTDIR)
                    }
                    (Some(v), _) => {
                        r.unwrap();
                        model.remove(&name(a));
                        model.insert(name(b), v);
                    }
                }
            }
            Op::Unlink(i) => {
                let r = core.unlink(root, &name(i)).await;
                match model.get(&name(i)) {
                    None => assert_eq!(r.unwrap_err().errno(), libc::ENOENT),
                    Some(None) => assert_eq!(r.unwrap_err().errno(), libc::EISDIR),
                    Some(Some(_)) => {
                        r.unwrap();
                        model.remove(&name(i));
                    }
                }
            }
            Op::Mkdir(i) => {
                let r = core.mkdir(root, &name(i), 0o755, ROOT_OWNER).await;
                if let std::collections::btree_map::Entry::Vacant(e) = model.entry(name(i)) {
                    r.unwrap();
                    e.insert(None);
                } else {
                    assert_eq!(r.unwrap_err().errno(), libc::EEXIST);
                }
            }
        }
    }
    let listed: Vec<Vec<u8>> = core
        .readdir(root)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, model.keys().cloned().collect::<Vec<_>>());
    for (n, v) in &model {
        let a = core.lookup(root, n).await.unwrap();
        match v {
            None => assert_eq!(a.inode.kind, Kind::Dir),
            Some(content) => {
                assert_eq!(a.inode.size, content.len() as u64);
                assert!(
                    read_file(&core, a.ino).await == *content,
                    "content of {:?}",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run_model(ops));
    }
}
