//! What a person sees: `gridback local up` as a real process tree (coordinator, six nodes,
//! mount), a real FUSE mount, and `cp -a`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::path::Path;

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::{LocalGridProcess, cp_a};
use gridback_tests::tree::{assert_same_tree, make_tree, tree_contains};

fn run_ok(grid: &LocalGridProcess, args: &[&str]) -> String {
    let out = grid.gridback(args);
    assert!(
        out.status.success(),
        "gridback {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn no_secrets_on_nodes(data: &Path, needles: &[&str]) {
    let nodes = data.join("nodes");
    for needle in needles {
        assert_eq!(
            tree_contains(&nodes, needle.as_bytes()),
            None,
            "a node holds {needle:?} in clear"
        );
    }
}

/// The foundation end to end: copy a real tree in, compare byte for byte, seal, check
/// EROFS, dedup of a second copy, no plaintext or names on nodes, persistence across a full
/// restart, and reads after two nodes' disks are lost.
#[test]
fn copy_seal_dedup_restart_and_lose_two_nodes() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let marker = make_tree(&src, 7, 24 << 20);
    let data = work.path().join("data");
    let mnt = work.path().join("mnt");

    let grid = LocalGridProcess::start(&data, &mnt, 6);
    let s1 = mnt.join("snapshots/first");
    std::fs::create_dir(&s1).unwrap();
    cp_a(&src, &s1);
    assert_same_tree(&src, &s1);

    // status --json names this client and every node with its pid.
    let status = grid.status();
    assert!(
        status["client"].as_str().is_some_and(|c| c.len() == 32),
        "{status}"
    );
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    for n in nodes {
        assert_eq!(n["state"], "up");
        assert!(n["pid"].as_u64().unwrap() > 0);
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    assert!(status["coordinator"]["pid"].as_u64().unwrap() > 0);

    // Seal: read-only from then on.
    run_ok(&grid, &["snapshot", "seal", "first"]);
    let err = std::fs::write(s1.join("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::remove_file(s1.join("docs/empty")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let list: serde_json::Value =
        serde_json::from_str(&run_ok(&grid, &["snapshot", "list", "--json"])).unwrap();
    let first = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "first")
        .unwrap();
    assert_eq!(first["state"], "sealed");

    no_secrets_on_nodes(
        &data,
        &[
            &marker,
            "IMG 0001",
            "файл с пробелами",
            "still deeper",
            "readme.txt",
        ],
    );

    // Dedup: a second copy of the same tree adds (almost) nothing to the nodes.
    let before = grid.nodes_used_bytes();
    let s2 = mnt.join("snapshots/second");
    std::fs::create_dir(&s2).unwrap();
    cp_a(&src, &s2);
    assert_same_tree(&src, &s2);
    let after = grid.nodes_used_bytes();
    assert!(
        after - before < before / 100 + (1 << 20),
        "second copy grew the nodes from {before} to {after} bytes"
    );
    grid.stop();

    // Everything comes back after the whole grid is stopped and started again.
    let grid = LocalGridProcess::start(&data, &mnt, 6);
    assert_same_tree(&src, &mnt.join("snapshots/first"));
    assert_same_tree(&src, &mnt.join("snapshots/second"));
    let err = std::fs::write(mnt.join("snapshots/first/x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    grid.stop();

    // Lose two nodes' disks entirely (m = 2): every byte still reads back.
    for n in ["node-01", "node-04"] {
        std::fs::remove_dir_all(data.join("nodes").join(n)).unwrap();
    }
    let grid = LocalGridProcess::start(&data, &mnt, 6);
    assert_same_tree(&src, &mnt.join("snapshots/first"));
    grid.stop();
}
