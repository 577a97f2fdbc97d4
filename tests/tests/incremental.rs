//! Incremental snapshots as a person makes them: `rsync -a` a tree into snapshot A, seal it,
//! open B as a metadata clone of A (`gridback snapshot create B --from A`), change about 5% of
//! the tree, `rsync -a --delete` into B, and check that B cost only a small fraction of A in
//! uploaded bytes, that B reads back identical to the source and that A did not change.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::LocalGridProcess;
use gridback_tests::tree::{Rng, assert_same_tree, random, snapshot_of};

/// Large files of the source tree (count, bytes each): several chunks per file.
/// Large next to the 1 MiB average chunk, as real large files are: an edit then costs a
/// chunk or two of a file of a dozen.
const LARGE_FILES: [(usize, usize); 2] = [(4, 12 << 20), (1, 16 << 20)];
/// Small files of the source tree, spread over [`SMALL_DIRS`] directories.
const SMALL_FILES: usize = 300;
/// Directories holding the small files.
const SMALL_DIRS: usize = 10;
/// B may upload at most this fraction of what A cost. The change is 5% of the tree's bytes,
/// but an edit costs whole chunks (1 MiB on average), so B costs more than 5%; a full
/// re-upload would cost 100%.
const MAX_B_SHARE: f64 = 0.20;
/// B may store at most this fraction of the bytes rsync rewrote (whole files): the rest are
/// chunks the changed files share with their previous versions.
const MAX_REWRITE_SHARE: f64 = 0.40;

/// Whether `rsync` runs here.
fn rsync_present() -> bool {
    Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Make sure `rsync` is installed, the way tests/run.sh installs fuse3 (apt-get, with sudo
/// when not root); fail with a clear message if that is not possible.
fn ensure_rsync() {
    if rsync_present() {
        return;
    }
    eprintln!("rsync is missing: installing it with apt-get");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| {
        let mut c = Command::new(if root { "apt-get" } else { "sudo" });
        if !root {
            c.arg("apt-get");
        }
        // A failure shows up as rsync still missing, below.
        let _ = c.args(args).output();
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", "rsync"]);
    assert!(
        rsync_present(),
        "rsync is required by this test and could not be installed \
         (run `apt-get install -y rsync`, or add it to tests/run.sh)"
    );
}

/// Run rsync; returns (seconds, stdout).
fn rsync(args: &[&str], src: &Path, dst: &Path) -> (f64, String) {
    let t = Instant::now();
    let out = Command::new("rsync")
        .args(args)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A number from `rsync --stats` output, by its label.
fn rsync_stat(stats: &str, label: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .map(|v| v.replace(',', ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in rsync --stats output:\n{stats}"))
}

fn run_ok(grid: &LocalGridProcess, args: &[&str]) {
    let out = grid.gridback(args);
    assert!(
        out.status.success(),
        "gridback {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
}

/// Packet bytes the grid has stored (parity included), as the coordinator counts them when
/// a chunk is committed: grows only by what was really uploaded.
fn stored_bytes(grid: &LocalGridProcess) -> u64 {
    let s = grid.status();
    s["stored_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stored_bytes in {s}"))
}

/// The source tree: random (incompressible, undeduplicable) content. Returns its bytes.
fn make_source(root: &Path) -> u64 {
    let mut rng = Rng::new(0x1c4e_0001);
    let mut total = 0u64;
    std::fs::create_dir_all(root.join("large")).unwrap();
    for (g, &(count, len)) in LARGE_FILES.iter().enumerate() {
        for i in 0..count {
            std::fs::write(
                root.join(format!("large/g{g}-{i:02}.bin")),
                random(&mut rng, len),
            )
            .unwrap();
            total += len as u64;
        }
    }
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("small/d{:02}", i % SMALL_DIRS));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 512 + (rng.next_u64() % (24 << 10)) as usize;
        std::fs::write(dir.join(format!("f{i:03}.dat")), random(&mut rng, len)).unwrap();
        total += len as u64;
    }
    total
}

/// About 5% of the tree's bytes change: 64 KiB edited in the middle of two large files, one
/// large file appended to, 5% of the small files rewritten, new files added (also in a new
/// directory), some small files deleted. Returns the bytes written and the number of files
/// changed or added.
fn change_source(root: &Path) -> (u64, u64) {
    let mut rng = Rng::new(0x1c4e_0002);
    let mut changed = 0u64;
    let mut files = 0u64;
    for name in ["large/g0-01.bin", "large/g1-00.bin"] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(name))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&random(&mut rng, 64 << 10)).unwrap();
        changed += 64 << 10;
        files += 1;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("large/g0-03.bin"))
        .unwrap();
    f.write_all(&random(&mut rng, 3 << 19)).unwrap();
    changed += 3 << 19;
    files += 1;
    for i in (0..SMALL_FILES).step_by(20) {
        let p = root.join(format!("small/d{:02}/f{i:03}.dat", i % SMALL_DIRS));
        let len = 1024 + (rng.next_u64() % (16 << 10)) as usize;
        std::fs::write(&p, random(&mut rng, len)).unwrap();
        changed += len as u64;
        files += 1;
    }
    for i in (3..SMALL_FILES).step_by(50) {
        std::fs::remove_file(root.join(format!("small/d{:02}/f{i:03}.dat", i % SMALL_DIRS)))
            .unwrap();
    }
    std::fs::create_dir(root.join("added")).unwrap();
    for i in 0..12 {
        let dir = if i % 2 == 0 { "added" } else { "small/d01" };
        std::fs::write(
            root.join(dir).join(format!("new-{i}.dat")),
            random(&mut rng, 128 << 10),
        )
        .unwrap();
        changed += 128 << 10;
        files += 1;
    }
    (changed, files)
}

/// rsync into A, seal, clone into B, rsync the changed tree into B: B uploads only what
/// changed (the coordinator's stored bytes), reads back identical, and A is untouched.
#[test]
fn rsync_into_a_clone_uploads_only_what_changed() {
    if !fuse_available_or_required() {
        return;
    }
    ensure_rsync();
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let tree_bytes = make_source(&src);
    let grid = LocalGridProcess::start(&work.path().join("data"), &work.path().join("mnt"), 6);

    // A: everything is new.
    let a = grid.mount.join("snapshots/A");
    std::fs::create_dir(&a).unwrap();
    let s0 = stored_bytes(&grid);
    let (a_secs, _) = rsync(&["-a"], &src, &a);
    let s1 = stored_bytes(&grid);
    assert_same_tree(&src, &a);
    let a_tree = snapshot_of(&a);
    run_ok(&grid, &["snapshot", "seal", "A"]);
    let a_cost = s1 - s0;
    assert!(
        a_cost >= tree_bytes,
        "A stored {a_cost} packet bytes for a tree of {tree_bytes} random bytes"
    );

    // B starts as a clone of A: no data moves.
    run_ok(&grid, &["snapshot", "create", "B", "--from", "A"]);
    let b = grid.mount.join("snapshots/B");
    let s2 = stored_bytes(&grid);
    assert!(
        s2 - s1 < 1 << 20,
        "opening B as a clone of A stored {} bytes",
        s2 - s1
    );
    assert_same_tree(&src, &b);

    let (changed, changed_files) = change_source(&src);
    let changed_share = changed as f64 / tree_bytes as f64;
    assert!(
        (0.04..=0.06).contains(&changed_share),
        "the change is {:.1}% of the tree, not about 5%",
        changed_share * 100.0
    );
    let (b_secs, stats) = rsync(&["-a", "--delete", "--stats"], &src, &b);
    // The clone kept sizes and mtimes, so rsync's quick check sends only what changed.
    let sent = rsync_stat(&stats, "Number of regular files transferred");
    assert_eq!(sent, changed_files, "rsync sent {sent} files:\n{stats}");
    let s3 = stored_bytes(&grid);
    let b_cost = s3 - s2;
    let share = b_cost as f64 / a_cost as f64;
    eprintln!(
        "incremental: tree {} KiB; A: {} KiB stored in {a_secs:.2}s; \
         {:.1}% change ({} KiB written, {changed_files} files); rsync sent {sent} files, \
         {} KiB; B: {} KiB stored in {b_secs:.2}s = {:.1}% of A",
        tree_bytes >> 10,
        a_cost >> 10,
        changed_share * 100.0,
        changed >> 10,
        rsync_stat(&stats, "Total transferred file size") >> 10,
        b_cost >> 10,
        share * 100.0
    );
    assert!(b_cost > 0, "the changes to B stored nothing");
    assert!(
        share < MAX_B_SHARE,
        "B stored {b_cost} bytes = {:.1}% of A's {a_cost} (limit {:.0}%)",
        share * 100.0,
        MAX_B_SHARE * 100.0
    );
    // rsync rewrote every changed file whole (it writes a new copy and renames it); the
    // grid stored only their new chunks. In A's terms (packet bytes per data byte), B's
    // cost is well under what rsync wrote: unchanged chunks of changed files were reused.
    let rewritten = rsync_stat(&stats, "Total transferred file size");
    let b_data_equivalent = b_cost as f64 * tree_bytes as f64 / a_cost as f64;
    assert!(
        b_data_equivalent < MAX_REWRITE_SHARE * rewritten as f64,
        "B stored the equivalent of {b_data_equivalent:.0} data bytes for {rewritten} bytes \
         of rewritten files (limit {:.0}%): unchanged chunks were uploaded again",
        MAX_REWRITE_SHARE * 100.0
    );

    assert_same_tree(&src, &b);
    assert_eq!(snapshot_of(&a), a_tree, "snapshot A changed");

    // Sealed B survives a restart of the whole grid, and so does A.
    run_ok(&grid, &["snapshot", "seal", "B"]);
    let (data, mnt) = (grid.data.clone(), grid.mount.clone());
    grid.stop();
    let grid = LocalGridProcess::start(&data, &mnt, 6);
    assert_same_tree(&src, &mnt.join("snapshots/B"));
    assert_eq!(
        snapshot_of(&mnt.join("snapshots/A")),
        a_tree,
        "A after restart"
    );
    grid.stop();
}
