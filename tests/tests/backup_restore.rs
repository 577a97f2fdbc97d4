//! `gridback backup` and `gridback restore` as a person runs them: real processes against a
//! real local grid, trees compared byte for byte and attribute for attribute (modes, owners,
//! mtimes in ns of files, directories and symlinks, atimes of files, `user.*` xattrs, link
//! targets).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::{LocalGridProcess, cp_a};
use gridback_tests::tree::{
    Atime, Entry, Rng, assert_same_tree_and_attrs, make_tree, pin_atimes, random, snapshot_of,
};

fn run(grid: &LocalGridProcess, args: &[&str]) -> Output {
    grid.gridback(args)
}

/// Run, expect success, and parse the last stdout line as the JSON summary.
fn run_json(grid: &LocalGridProcess, args: &[&str]) -> serde_json::Value {
    let out = run(grid, args);
    assert!(
        out.status.success(),
        "gridback {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn run_ok(grid: &LocalGridProcess, args: &[&str]) {
    let out = run(grid, args);
    assert!(
        out.status.success(),
        "gridback {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
}

fn run_fails(grid: &LocalGridProcess, args: &[&str], needle: &str) {
    let out = run(grid, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gridback {args:?} succeeded");
    assert!(
        stderr.contains(needle),
        "gridback {args:?}: {needle:?} not in {stderr}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (files, dirs including the root, symlinks, bytes) of a tree.
fn counts(root: &Path) -> (u64, u64, u64, u64) {
    let (mut f, mut d, mut l, mut b) = (0, 1, 0, 0);
    for e in snapshot_of(root).values() {
        match e {
            Entry::File { size, .. } => {
                f += 1;
                b += size;
            }
            Entry::Dir { .. } => d += 1,
            Entry::Symlink { .. } => l += 1,
        }
    }
    (f, d, l, b)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Set the mtime of `path` itself (a symlink's own, not its target's), keeping its atime.
fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &nix::sys::time::TimeSpec::new(secs, nanos),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Give the tree of [`make_tree`] what a faithful restore must bring back beyond contents
/// and file modes: owners other than the test's (when root: a file, a directory, a symlink
/// and a group-only change), a directory xattr, directory and symlink mtimes far in the past,
/// and pinned atimes. Returns whether owners were changed.
fn add_attributes(src: &Path) -> bool {
    let root = rustix::process::geteuid().is_root();
    if root {
        let own = |p: &str, uid, gid| {
            std::os::unix::fs::lchown(src.join(p), Some(uid), Some(gid)).unwrap();
        };
        own("docs/readme.txt", 1234, 5678);
        own("photos 2026", 4321, 8765);
        own("link to readme", 2222, 3333);
        own("naïve ünïcødé ✓/файл с пробелами.txt", 0, 5678);
    } else {
        eprintln!("not root: owners are not changed, only checked to be kept");
    }
    let _ = rustix::fs::setxattr(
        src.join("docs"),
        "user.gridback.dir",
        b"",
        rustix::fs::XattrFlags::empty(),
    );
    // Times last: creating entries moves their directory's mtime.
    set_mtime(&src.join("docs/deep/er"), 1_000_000_000, 123_456_789);
    set_mtime(&src.join("empty dir"), 1_100_000_000, 1);
    set_mtime(&src.join("dangling"), 1_200_000_000, 999_999_999);
    set_mtime(&src.join("docs/photos"), 1_300_000_000, 5);
    pin_atimes(src);
    root
}

/// The strict comparison every restore of these tests must pass.
fn assert_restored(src: &Path, dest: &Path) {
    assert_same_tree_and_attrs(src, dest, Atime::Compare);
}

/// Backup of a real tree (with files, directories and symlinks owned by other users when
/// root, old directory and symlink mtimes, xattrs on files and directories), restore of all
/// of it, of a directory and of one file with every attribute kept, the refusals (missing
/// path, missing snapshot, non-empty DEST, existing name), `--overwrite`, resuming from a
/// marker and a partial file, and `cp -a` from the mount giving the same bytes and
/// attributes.
#[test]
fn backup_then_restore_gives_the_same_tree() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, 11, 24 << 20);
    // Many files with the same new content, stored at once: one chunk, allocated and
    // committed by concurrent uploads of the same client.
    let same = random(&mut Rng::new(0x00d0_b1e5), 20_000);
    std::fs::create_dir(src.join("copies")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("copies/same-{i:02}")), &same).unwrap();
    }
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let tagged = src.join("docs/readme.txt");
    let has_xattrs = rustix::fs::setxattr(
        &tagged,
        "user.gridback.test",
        b"v1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    let chowned = add_attributes(&src);
    let (files, dirs, symlinks, bytes) = counts(&src);
    let grid = LocalGridProcess::start(&work.path().join("data"), &work.path().join("mnt"), 4);

    let b = run_json(&grid, &["backup", s(&src), "--snapshot", "b1", "--json"]);
    assert_eq!(b["snapshot"], "b1", "{b}");
    assert_eq!(b["files"], files, "{b}");
    assert_eq!(b["dirs"], dirs, "{b}");
    assert_eq!(b["symlinks"], symlinks, "{b}");
    assert_eq!(b["bytes"], bytes, "{b}");
    assert_eq!(b["skipped_unchanged"], 0, "{b}");
    assert!(b["new_bytes"].as_u64().unwrap() > bytes / 2, "{b}");
    assert!(b["uploaded_bytes"].as_u64().unwrap() > 0, "{b}");
    assert!(b["mb_per_s"].as_f64().unwrap() > 0.0, "{b}");
    eprintln!(
        "backup: {bytes} bytes in {:.2}s = {:.1} MB/s",
        b["seconds"], b["mb_per_s"]
    );
    run_fails(
        &grid,
        &["backup", s(&src), "--snapshot", "b1"],
        "already exists",
    );

    // All of it, into a directory that does not exist yet.
    let all = work.path().join("restored");
    let r = run_json(&grid, &["restore", "b1", s(&all), "--json"]);
    assert_restored(&src, &all);
    if chowned {
        let m = std::fs::symlink_metadata(all.join("link to readme")).unwrap();
        assert_eq!((m.uid(), m.gid()), (2222, 3333), "symlink owner");
        let m = std::fs::metadata(all.join("photos 2026")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 8765), "directory owner");
    }
    let m = std::fs::symlink_metadata(all.join("dangling")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_200_000_000, 999_999_999));
    let m = std::fs::metadata(all.join("docs/deep/er")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!(r["files"], files, "{r}");
    assert_eq!(r["bytes"], bytes, "{r}");
    assert_eq!(r["skipped_existing"], 0, "{r}");
    assert!(!all.join(".gridback-restore").exists());
    assert_eq!(
        std::fs::metadata(&all).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    if has_xattrs {
        assert_eq!(
            xattr(&all.join("docs/readme.txt"), "user.gridback.test"),
            Some(b"v1".to_vec())
        );
    }
    eprintln!(
        "restore: {bytes} bytes in {:.2}s = {:.1} MB/s",
        r["seconds"], r["mb_per_s"]
    );

    // A directory, and a single file.
    let docs = work.path().join("docs");
    run_json(&grid, &["restore", "b1/docs", s(&docs), "--json"]);
    assert_restored(&src.join("docs"), &docs);
    let one = work.path().join("one");
    run_ok(
        &grid,
        &["restore", "b1/docs/deep/er/still deeper/notes.md", s(&one)],
    );
    assert_eq!(
        std::fs::read(one.join("notes.md")).unwrap(),
        std::fs::read(src.join("docs/deep/er/still deeper/notes.md")).unwrap()
    );

    // Bad input: clear errors, non-zero exits, nothing written.
    let nowhere = work.path().join("nowhere");
    run_fails(
        &grid,
        &["restore", "b1/docs/no such file", s(&nowhere)],
        "does not exist in snapshot",
    );
    assert!(!nowhere.join("no such file").exists());
    run_fails(
        &grid,
        &["restore", "never-made", s(&nowhere)],
        "does not exist",
    );
    run_fails(&grid, &["restore", "b1", s(&all)], "not empty");
    run_fails(&grid, &["restore", "b1", s(&all)], "--overwrite");

    // --overwrite keeps what is already right and replaces what is not.
    std::fs::write(all.join("docs/small 003.txt"), b"damaged").unwrap();
    let r = run_json(&grid, &["restore", "b1", s(&all), "--overwrite", "--json"]);
    assert_eq!(r["skipped_existing"], files - 1, "{r}");
    assert_restored(&src, &all);

    // Resume: an interrupted restore leaves its marker and partial files; the next run
    // of the same restore needs no --overwrite and fetches only what is missing.
    std::fs::remove_file(all.join("big.bin")).unwrap();
    std::fs::write(all.join("big.bin.gridback-partial"), b"half").unwrap();
    std::fs::write(all.join(".gridback-restore"), "snapshot=b1\npath=\n").unwrap();
    let r = run_json(&grid, &["restore", "b1", s(&all), "--json"]);
    assert_eq!(r["resumed"], true, "{r}");
    assert_eq!(r["skipped_existing"], files - 1, "{r}");
    assert!(r["fetched_bytes"].as_u64().unwrap() >= 24 << 20, "{r}");
    assert!(!all.join("big.bin.gridback-partial").exists());
    assert_restored(&src, &all);

    // The mount shows backups made while it runs after a restart; cp -a gives the same bytes.
    let (data, mnt) = (grid.data.clone(), grid.mount.clone());
    grid.stop();
    let grid = LocalGridProcess::start(&data, &mnt, 4);
    let copied = work.path().join("copied");
    std::fs::create_dir(&copied).unwrap();
    cp_a(&mnt.join("snapshots/b1"), &copied);
    assert_restored(&src, &copied);
    grid.stop();
}

/// Regular files under `dir` under their final names (no partial file, no marker), counted
/// while a restore writes there: entries that vanish or move meanwhile are skipped.
fn files_in_place(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() => n += files_in_place(&e.path()),
            Ok(t)
                if t.is_file()
                    && !name.contains(".gridback-partial")
                    && name != ".gridback-restore" =>
            {
                n += 1
            }
            _ => {}
        }
    }
    n
}

/// A restore killed with SIGKILL half way resumes when run again: it keeps the files already
/// in place, fetches only the rest, and leaves DEST equal to the source with no partial file
/// or marker; a further run into the full DEST is refused. The download is throttled so the
/// restore is still running when some files are in place.
#[test]
fn restore_killed_half_way_resumes_and_finishes() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, 23, 2 << 20);
    let mut rng = Rng::new(99);
    for d in 0..4 {
        let dir = src.join(format!("batch {d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..12 {
            let len = 200_000 + (rng.next_u64() % 1_300_000) as usize;
            std::fs::write(dir.join(format!("{i:02}.bin")), random(&mut rng, len)).unwrap();
        }
    }
    add_attributes(&src);
    let (files, _, _, bytes) = counts(&src);
    assert!(bytes > 30 << 20, "{bytes} bytes is too little to interrupt");
    let grid = LocalGridProcess::start(&work.path().join("data"), &work.path().join("mnt"), 4);
    run_json(&grid, &["backup", s(&src), "--snapshot", "big", "--json"]);
    let client = grid.client_id();
    let throttle = |rate: &str| {
        let out = grid.admin(&["subscription", "set", &client, "--bandwidth-down", rate]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // About 20 s for the whole restore: a wide window to kill it in.
    throttle("2MB/s");

    let dest = work.path().join("dest");
    let mut child = grid
        .command(&["restore", "big", s(&dest), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_in_place(&dest) < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the restore ended ({status}) before it could be interrupted: {err}");
        }
        assert!(Instant::now() < deadline, "no file restored in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let in_place = files_in_place(&dest);
    assert!(
        (in_place as u64) < files,
        "all {files} files were in place already: the kill came too late"
    );
    assert!(dest.join(".gridback-restore").exists(), "marker missing");
    eprintln!("killed with {in_place} of {files} files in place");

    throttle("none");
    let r = run_json(&grid, &["restore", "big", s(&dest), "--json"]);
    assert_eq!(r["resumed"], true, "{r}");
    let skipped = r["skipped_existing"].as_u64().unwrap();
    assert!(skipped >= 3 && skipped < files, "{r}");
    assert!(r["fetched_bytes"].as_u64().unwrap() < bytes, "{r}");
    assert_eq!(r["files"], files, "{r}");
    assert_restored(&src, &dest);
    assert!(!dest.join(".gridback-restore").exists());

    // Complete now: the marker is gone, so a further run needs --overwrite.
    run_fails(&grid, &["restore", "big", s(&dest)], "not empty");
    assert_restored(&src, &dest);
    grid.stop();
}

/// `--from` skips unchanged files (by path, size, mtime and inode) and uploads only the
/// changed one; `--exclude` leaves matching files out.
#[test]
fn incremental_backup_skips_unchanged_files_and_exclude_excludes() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, 5, 4 << 20);
    let (files, ..) = counts(&src);
    let grid = LocalGridProcess::start(&work.path().join("data"), &work.path().join("mnt"), 4);
    run_json(&grid, &["backup", s(&src), "--snapshot", "b1", "--json"]);

    let touched = src.join("docs/small 005.txt");
    let mut content = std::fs::read(&touched).unwrap();
    content.extend_from_slice(b"one more line\n");
    std::fs::write(&touched, &content).unwrap();
    let b = run_json(
        &grid,
        &[
            "backup",
            s(&src),
            "--snapshot",
            "b2",
            "--from",
            "b1",
            "--json",
        ],
    );
    assert_eq!(b["skipped_unchanged"], files - 1, "{b}");
    assert_eq!(b["files"], files, "{b}");
    assert!(
        b["new_bytes"].as_u64().unwrap() <= content.len() as u64,
        "{b}"
    );
    assert!(b["uploaded_bytes"].as_u64().unwrap() < 256 << 10, "{b}");
    let r2 = work.path().join("r2");
    run_ok(&grid, &["restore", "b2", s(&r2)]);
    assert_same_tree_and_attrs(&src, &r2, Atime::Ignore);
    run_fails(
        &grid,
        &["backup", s(&src), "--snapshot", "b9", "--from", "missing"],
        "no such snapshot",
    );

    let b = run_json(
        &grid,
        &[
            "backup",
            s(&src),
            "--snapshot",
            "b3",
            "--exclude",
            "*.raw",
            "--json",
        ],
    );
    assert_eq!(b["excluded"], 1, "{b}");
    assert_eq!(b["files"], files - 1, "{b}");
    let r3 = work.path().join("r3");
    run_ok(&grid, &["restore", "b3", s(&r3)]);
    let mut expected: BTreeMap<PathBuf, Entry> = snapshot_of(&src);
    assert!(
        expected
            .remove(Path::new("photos 2026/IMG 0001.raw"))
            .is_some()
    );
    assert_eq!(snapshot_of(&r3), expected);
    grid.stop();
}
