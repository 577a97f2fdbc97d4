//! The mount's POSIX semantics, as promised in `docs/SEMANTICS.md`, proven through a real FUSE
//! mount of `gridback local up`. Every line of that document names one check function here.
//!
//! Starting a grid costs seconds and CI has two cores, so each `#[test]` starts one grid and
//! runs many named checks against it in sequence; each check is a plain function whose name
//! is the behaviour it proves, and whose panic message says what went wrong.
//!
//! Longer than 500 lines on purpose: the document points at one file, and every check here is
//! a few lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::LocalGridProcess;
use gridback_tests::tree::{Rng, assert_same_content, random};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use rustix::fs::XattrFlags;

/// Nodes per grid: the coordinator's default 4+2 erasure degrades to 2+2 on four nodes, so
/// losing any two nodes loses nothing.
const NODES: usize = 4;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Start a grid in a fresh tempdir, or `None` (with a printed reason) when FUSE is missing
/// and not required. The grid comes first so that it unmounts before the tempdir goes.
fn start_grid() -> Option<(LocalGridProcess, tempfile::TempDir)> {
    if !fuse_available_or_required() {
        return None;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let grid = LocalGridProcess::start(&work.path().join("data"), &work.path().join("mnt"), NODES);
    Some((grid, work))
}

/// `mkdir MNT/snapshots/NAME`: open a new snapshot and return its path.
fn open_snapshot(grid: &LocalGridProcess, name: &str) -> PathBuf {
    let p = grid.mount.join("snapshots").join(name);
    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    p
}

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

/// Assert `r` failed with exactly `want`.
#[track_caller]
fn expect_errno<T: Debug, E: Into<std::io::Error>>(r: Result<T, E>, want: Errno, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, but it succeeded ({v:?})"),
        Err(e) => {
            let e: std::io::Error = e.into();
            let got = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            assert_eq!(got, want, "{what}: expected {want:?}, got {e}");
        }
    }
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[track_caller]
fn assert_bytes(p: &Path, want: &[u8], what: &str) {
    let got = read_file(p);
    assert_eq!(got.len(), want.len(), "{what}: size of {}", p.display());
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: {} differs first at byte {i}", p.display());
    }
}

fn names_in(dir: &Path) -> BTreeSet<Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect()
}

fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: XattrFlags) -> std::io::Result<()> {
    Ok(rustix::fs::lsetxattr(p, name, value, flags)?)
}

fn listxattr(p: &Path) -> BTreeSet<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> nix::Result<()> {
    utimensat(
        AT_FDCWD,
        p,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )
}

fn rename2(from: &Path, to: &Path, flags: RenameFlags) -> nix::Result<()> {
    renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)
}

// ---------------------------------------------------------------------------------------
// File data
// ---------------------------------------------------------------------------------------

fn create_write_and_read_back(snap: &Path) {
    let p = snap.join("hello.txt");
    write_file(&p, b"hello, grid\n");
    assert!(p.metadata().unwrap().is_file(), "created file is a file");
    assert_bytes(&p, b"hello, grid\n", "a new file reads back");
    let p = snap.join("empty");
    File::create(&p).unwrap();
    assert_eq!(p.metadata().unwrap().len(), 0, "an empty file has size 0");
    assert_bytes(&p, b"", "an empty file reads back empty");
}

fn create_exclusive_on_an_existing_name_is_eexist(snap: &Path) {
    let p = snap.join("exclusive");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    expect_errno(
        OpenOptions::new().write(true).create_new(true).open(&p),
        Errno::EEXIST,
        "O_CREAT|O_EXCL on an existing file",
    );
}

fn write_at_any_offset_holes_read_as_zeros(snap: &Path) {
    let p = snap.join("holes.bin");
    let f = File::create(&p).unwrap();
    f.write_all_at(b"tail", 1_000_000).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    drop(f);
    let mut want = vec![0u8; 1_000_004];
    want[..4].copy_from_slice(b"head");
    want[1_000_000..].copy_from_slice(b"tail");
    assert_bytes(&p, &want, "a file written at 1 MB then at 0");
    // Reopen without truncating and write into the hole: the committed bytes stay.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"middle", 500_000).unwrap();
    drop(f);
    want[500_000..500_006].copy_from_slice(b"middle");
    assert_bytes(&p, &want, "a write into the hole of a committed file");
}

fn overlapping_writes_last_one_wins(snap: &Path) {
    let p = snap.join("overlap.bin");
    let f = File::create(&p).unwrap();
    let mut want = vec![b'a'; 10_000];
    f.write_all_at(&want, 0).unwrap();
    f.write_all_at(&[b'b'; 100], 50).unwrap();
    want[50..150].fill(b'b');
    f.write_all_at(&[b'c'; 5_000], 9_000).unwrap();
    want.truncate(9_000);
    want.extend_from_slice(&[b'c'; 5_000]);
    f.write_all_at(&[b'd'; 10], 100).unwrap();
    want[100..110].fill(b'd');
    drop(f);
    assert_bytes(&p, &want, "overlapping writes");
}

fn read_while_writing_sees_written_bytes(snap: &Path) {
    let p = snap.join("in-progress.txt");
    let mut w = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    w.write_all(b"first part;").unwrap();
    let mut buf = vec![0u8; 11];
    w.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"first part;", "read through the writing handle");
    assert_eq!(
        p.metadata().unwrap().len(),
        11,
        "stat of a file being written"
    );
    let mut other = String::new();
    File::open(&p).unwrap().read_to_string(&mut other).unwrap();
    assert_eq!(
        other, "first part;",
        "read through a second handle while written"
    );
    w.write_all(b" second").unwrap();
    drop(w);
    assert_bytes(&p, b"first part; second", "after close");
}

fn truncate_down_and_up(snap: &Path) {
    let p = snap.join("truncate.bin");
    let data = random(&mut Rng::new(11), 100_000);
    write_file(&p, &data);
    // Path-based truncate (setattr without a handle), down.
    nix::unistd::truncate(&p, 1_000).unwrap();
    assert_bytes(&p, &data[..1_000], "truncate down to 1000");
    // Through an open handle, up: the new bytes are zeros.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(5_000).unwrap();
    drop(f);
    let mut want = data[..1_000].to_vec();
    want.resize(5_000, 0);
    assert_bytes(&p, &want, "truncate up to 5000");
    nix::unistd::truncate(&p, 0).unwrap();
    assert_bytes(&p, b"", "truncate to 0");
}

fn open_with_o_trunc_empties_the_file(snap: &Path) {
    let p = snap.join("o_trunc.txt");
    write_file(&p, b"a much longer first version");
    write_file(&p, b"short");
    assert_bytes(&p, b"short", "O_TRUNC then a shorter write");
}

fn append_mode_appends(snap: &Path) {
    let p = snap.join("append.log");
    write_file(&p, b"one\n");
    for line in [&b"two\n"[..], b"three\n"] {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(line).unwrap();
    }
    assert_bytes(&p, b"one\ntwo\nthree\n", "O_APPEND");
}

fn unlink_while_open_stays_readable_until_close(snap: &Path) {
    let p = snap.join("doomed.txt");
    write_file(&p, b"still here");
    let mut r = File::open(&p).unwrap();
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists(), "an unlinked name is gone at once");
    assert!(
        !names_in(snap).contains(&b"doomed.txt"[..]),
        "an unlinked name is not listed"
    );
    w.write_all_at(b"!", 10).unwrap();
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(
        s, "still here!",
        "an unlinked open file reads (and writes) on"
    );
    assert_eq!(
        r.metadata().unwrap().nlink(),
        0,
        "fstat of an unlinked file"
    );
    drop(w);
    drop(r);
    assert!(!p.exists(), "nothing comes back at close");
}

fn fsync_returns_after_the_data_is_stored(snap: &Path) {
    let p = snap.join("fsynced.bin");
    let data = random(&mut Rng::new(12), 300_000);
    let mut f = File::create(&p).unwrap();
    f.write_all(&data[..200_000]).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    f.write_all(&data[200_000..]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_bytes(&p, &data, "a file written with fsyncs in between");
}

fn large_file_spans_many_chunks_and_edits_in_place(snap: &Path) {
    let p = snap.join("large.bin");
    let mut data = random(&mut Rng::new(13), 9 << 20);
    write_file(&p, &data);
    assert_bytes(&p, &data, "a 9 MiB file");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let patch = random(&mut Rng::new(14), 4096);
    f.write_all_at(&patch, 5 << 20).unwrap();
    drop(f);
    data[5 << 20..(5 << 20) + 4096].copy_from_slice(&patch);
    assert_bytes(&p, &data, "a 4 KiB edit in the middle of a 9 MiB file");
}

fn statfs_reports_space_and_name_max(snap: &Path) {
    let s = nix::sys::statvfs::statvfs(snap).unwrap();
    assert!(s.blocks() > 0 && s.blocks_available() > 0, "statvfs space");
    assert!(s.files_free() > 0, "statvfs inodes");
    assert_eq!(s.name_max(), 255, "statvfs name_max");
}

// ---------------------------------------------------------------------------------------
// Namespace
// ---------------------------------------------------------------------------------------

fn mkdir_and_rmdir(snap: &Path) {
    let d = snap.join("dir/sub/subsub");
    fs::create_dir_all(&d).unwrap();
    assert!(d.is_dir(), "mkdir -p");
    expect_errno(
        fs::create_dir(snap.join("dir")),
        Errno::EEXIST,
        "mkdir over an existing name",
    );
    fs::remove_dir(&d).unwrap();
    assert!(!d.exists(), "rmdir");
    fs::remove_dir_all(snap.join("dir")).unwrap();
}

fn rmdir_of_a_non_empty_directory_is_enotempty(snap: &Path) {
    let d = snap.join("full");
    fs::create_dir(&d).unwrap();
    write_file(&d.join("f"), b"x");
    expect_errno(
        fs::remove_dir(&d),
        Errno::ENOTEMPTY,
        "rmdir of a non-empty dir",
    );
    expect_errno(
        fs::remove_dir(d.join("f")),
        Errno::ENOTDIR,
        "rmdir of a file",
    );
    expect_errno(fs::remove_file(&d), Errno::EISDIR, "unlink of a directory");
    fs::remove_dir_all(&d).unwrap();
}

fn readdir_lists_every_entry(snap: &Path) {
    let d = snap.join("many");
    fs::create_dir(&d).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..300 {
        let name = format!("entry {i:04}");
        if i % 3 == 0 {
            fs::create_dir(d.join(&name)).unwrap();
        } else {
            write_file(&d.join(&name), name.as_bytes());
        }
        want.insert(name.into_bytes());
    }
    // A list, not a set: an entry listed twice (or a page boundary read twice) shows.
    let mut listed: Vec<Vec<u8>> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        want.into_iter().collect::<Vec<_>>(),
        "readdir of 300 entries lists every one once"
    );
}

fn rename_over_existing_file_replaces_it(snap: &Path) {
    let (a, b) = (snap.join("rename-a"), snap.join("rename-b"));
    write_file(&a, b"from a");
    write_file(&b, b"old b");
    let reader = File::open(&b).unwrap();
    fs::rename(&a, &b).unwrap();
    assert!(!a.exists(), "the source name is gone");
    assert_bytes(&b, b"from a", "the target holds the source's bytes");
    let mut s = String::new();
    (&reader)
        .read_to_string(&mut s)
        .expect("a handle opened right after the writer closed must keep the replaced file");
    assert_eq!(s, "old b", "a handle on the replaced file still reads it");
}

fn rename_across_directories(snap: &Path) {
    let (x, y) = (snap.join("x"), snap.join("y"));
    fs::create_dir_all(x.join("inner")).unwrap();
    fs::create_dir(&y).unwrap();
    write_file(&x.join("file"), b"moving");
    write_file(&x.join("inner/deep"), b"deep");
    fs::rename(x.join("file"), y.join("file moved")).unwrap();
    assert_bytes(&y.join("file moved"), b"moving", "a file moved across dirs");
    fs::rename(x.join("inner"), y.join("inner")).unwrap();
    assert_bytes(
        &y.join("inner/deep"),
        b"deep",
        "a directory moved with its contents",
    );
    assert_eq!(names_in(&x), BTreeSet::new(), "the source dir is empty");
    fs::remove_dir(&x).unwrap();
    let parent = fs::metadata(&y).unwrap();
    assert_eq!(parent.nlink(), 3, "nlink of a dir with one subdirectory");
}

fn rename_noreplace_refuses_an_existing_target(snap: &Path) {
    let (a, b, c) = (snap.join("nr-a"), snap.join("nr-b"), snap.join("nr-c"));
    write_file(&a, b"a");
    write_file(&b, b"b");
    expect_errno(
        rename2(&a, &b, RenameFlags::RENAME_NOREPLACE),
        Errno::EEXIST,
        "RENAME_NOREPLACE onto an existing name",
    );
    assert_bytes(&a, b"a", "source untouched");
    assert_bytes(&b, b"b", "target untouched");
    rename2(&a, &c, RenameFlags::RENAME_NOREPLACE).unwrap();
    assert_bytes(&c, b"a", "RENAME_NOREPLACE onto a free name");
}

fn rename_exchange_is_einval(snap: &Path) {
    let (a, b) = (snap.join("ex-a"), snap.join("ex-b"));
    write_file(&a, b"a");
    write_file(&b, b"b");
    expect_errno(
        rename2(&a, &b, RenameFlags::RENAME_EXCHANGE),
        Errno::EINVAL,
        "RENAME_EXCHANGE",
    );
    assert_bytes(&a, b"a", "source untouched");
    assert_bytes(&b, b"b", "target untouched");
}

fn rename_directory_over_directories(snap: &Path) {
    let (src, empty, full) = (
        snap.join("rd-src"),
        snap.join("rd-empty"),
        snap.join("rd-full"),
    );
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"f");
    fs::create_dir(&empty).unwrap();
    fs::create_dir(&full).unwrap();
    write_file(&full.join("g"), b"g");
    expect_errno(
        fs::rename(&src, &full),
        Errno::ENOTEMPTY,
        "rename a dir over a non-empty dir",
    );
    expect_errno(
        fs::rename(&src, full.join("g")),
        Errno::ENOTDIR,
        "rename a dir over a file",
    );
    expect_errno(
        fs::rename(full.join("g"), &empty),
        Errno::EISDIR,
        "rename a file over a dir",
    );
    expect_errno(
        fs::rename(&src, src.join("inside")),
        Errno::EINVAL,
        "rename a dir into itself",
    );
    fs::rename(&src, &empty).unwrap();
    assert_bytes(&empty.join("f"), b"f", "a dir renamed over an empty dir");
}

fn rename_across_snapshots_is_exdev(snap: &Path, other: &Path) {
    let p = snap.join("stay-home");
    write_file(&p, b"x");
    expect_errno(
        fs::rename(&p, other.join("away")),
        Errno::EXDEV,
        "rename across snapshots",
    );
}

fn symlink_and_readlink(snap: &Path) {
    write_file(&snap.join("target.txt"), b"through the link");
    let long_target = "t/".repeat(500) + "end";
    for (name, target) in [
        ("rel-link", "target.txt"),
        ("abs-link", "/etc/hostname"),
        ("dangling", "/nonexistent/target"),
        ("long-link", long_target.as_str()),
    ] {
        let l = snap.join(name);
        symlink(target, &l).unwrap();
        assert!(
            fs::symlink_metadata(&l).unwrap().file_type().is_symlink(),
            "{name} is a symlink"
        );
        assert_eq!(
            fs::read_link(&l).unwrap(),
            Path::new(target),
            "readlink {name}"
        );
    }
    assert_bytes(
        &snap.join("rel-link"),
        b"through the link",
        "open through a link",
    );
    expect_errno(
        symlink("x", snap.join("rel-link")),
        Errno::EEXIST,
        "symlink over an existing name",
    );
}

fn hard_link_is_eperm(snap: &Path) {
    let p = snap.join("single");
    write_file(&p, b"one name");
    expect_errno(
        fs::hard_link(&p, snap.join("second name")),
        Errno::EPERM,
        "link(2)",
    );
    assert!(!snap.join("second name").exists(), "no name was created");
}

fn chmod_and_chown(snap: &Path) {
    let p = snap.join("owned");
    write_file(&p, b"x");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(p.metadata().unwrap().mode() & 0o7777, 0o4750, "chmod");
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let m = p.metadata().unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678), "chown");
    let d = snap.join("owned-dir");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(d.metadata().unwrap().mode() & 0o7777, 0o1777, "chmod dir");
}

/// In a set-group-ID directory, new files, directories and symlinks take the directory's
/// group, and new directories keep the bit, as on ext4 (the model test found this).
fn setgid_directory_passes_its_group_and_bit_on(snap: &Path) {
    let d = snap.join("shared");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(4242)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    write_file(&d.join("file"), b"x");
    fs::create_dir(d.join("sub")).unwrap();
    symlink("file", d.join("link")).unwrap();
    let file = d.join("file").metadata().unwrap();
    assert_eq!(
        file.gid(),
        4242,
        "a new file takes the setgid directory's group"
    );
    assert_eq!(file.mode() & 0o2000, 0, "a new file does not get the bit");
    let sub = d.join("sub").metadata().unwrap();
    assert_eq!(sub.gid(), 4242, "a new directory takes the group");
    assert_eq!(sub.mode() & 0o2000, 0o2000, "a new directory keeps the bit");
    let link = fs::symlink_metadata(d.join("link")).unwrap();
    assert_eq!(link.gid(), 4242, "a new symlink takes the group");
    // Outside such a directory, the creator's group.
    let plain = snap.join("plain-dir");
    fs::create_dir(&plain).unwrap();
    let m = plain.metadata().unwrap();
    assert_eq!(
        (m.gid(), m.mode() & 0o2000),
        (0, 0),
        "no inheritance elsewhere"
    );
}

fn utimens_keeps_nanoseconds(snap: &Path) {
    let p = snap.join("timed");
    write_file(&p, b"x");
    set_times(
        &p,
        (1_500_000_000, 987_654_321),
        (1_600_000_000, 123_456_789),
    )
    .unwrap();
    let m = p.metadata().unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_600_000_000, 123_456_789),
        "mtime"
    );
    assert_eq!(
        (m.atime(), m.atime_nsec()),
        (1_500_000_000, 987_654_321),
        "atime"
    );
    let l = snap.join("timed-link");
    symlink("timed", &l).unwrap();
    set_times(&l, (1, 2), (3, 4)).unwrap();
    let m = fs::symlink_metadata(&l).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (3, 4), "lutimes on a symlink");
    let d = snap.join("timed-dir");
    fs::create_dir(&d).unwrap();
    set_times(&d, (5, 6), (7, 8)).unwrap();
    let m = d.metadata().unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (7, 8), "utimens on a dir");
}

/// What `cp -p` and `tar` do: write, set the times on the still-open file, close.
fn utimens_on_an_open_written_file_survives_close(snap: &Path) {
    let p = snap.join("timed-open");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_234_567_890, 555_000_111);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    drop(f);
    let m = p.metadata().unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_234_567_890, 555_000_111),
        "mtime set before close"
    );
}

fn write_updates_mtime(snap: &Path) {
    let p = snap.join("mtime-on-write");
    write_file(&p, b"x");
    set_times(&p, (10, 0), (10, 0)).unwrap();
    let before = SystemTime::now() - Duration::from_secs(5);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all(b"y")
        .unwrap();
    let m = p.metadata().unwrap().modified().unwrap();
    assert!(m > before, "a write moves mtime to now (got {m:?})");
}

fn user_xattrs_set_get_list_remove(snap: &Path) {
    let p = snap.join("xattrs");
    write_file(&p, b"x");
    let binary: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    setxattr(&p, "user.comment", b"hello", XattrFlags::empty()).unwrap();
    setxattr(&p, "user.binary", &binary, XattrFlags::empty()).unwrap();
    setxattr(&p, "user.empty", b"", XattrFlags::empty()).unwrap();
    assert_eq!(getxattr(&p, "user.comment").unwrap(), b"hello", "getxattr");
    assert_eq!(getxattr(&p, "user.binary").unwrap(), binary, "binary value");
    assert_eq!(getxattr(&p, "user.empty").unwrap(), b"", "empty value");
    let want: BTreeSet<Vec<u8>> = ["user.binary", "user.comment", "user.empty"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(listxattr(&p), want, "listxattr");
    expect_errno(
        setxattr(&p, "user.comment", b"again", XattrFlags::CREATE),
        Errno::EEXIST,
        "XATTR_CREATE on an existing attribute",
    );
    expect_errno(
        setxattr(&p, "user.missing", b"v", XattrFlags::REPLACE),
        Errno::ENODATA,
        "XATTR_REPLACE on a missing attribute",
    );
    setxattr(&p, "user.comment", b"replaced", XattrFlags::REPLACE).unwrap();
    assert_eq!(
        getxattr(&p, "user.comment").unwrap(),
        b"replaced",
        "replace"
    );
    rustix::fs::lremovexattr(&p, "user.comment").unwrap();
    expect_errno(
        getxattr(&p, "user.comment"),
        Errno::ENODATA,
        "getxattr after removexattr",
    );
    expect_errno(
        rustix::fs::lremovexattr(&p, "user.comment").map_err(std::io::Error::from),
        Errno::ENODATA,
        "removexattr of a missing attribute",
    );
    let d = snap.join("xattr-dir");
    fs::create_dir(&d).unwrap();
    setxattr(&d, "user.on-dir", b"d", XattrFlags::empty()).unwrap();
    assert_eq!(getxattr(&d, "user.on-dir").unwrap(), b"d", "xattr on a dir");
}

fn other_xattr_namespaces_are_eopnotsupp(snap: &Path) {
    let p = snap.join("xattrs-other");
    write_file(&p, b"x");
    for name in ["security.gridback", "system.gridback", "gridback.plain"] {
        expect_errno(
            setxattr(&p, name, b"v", XattrFlags::empty()),
            Errno::EOPNOTSUPP,
            &format!("setxattr {name}"),
        );
    }
    // trusted.* is stored too (the kernel lets only CAP_SYS_ADMIN use it).
    if nix::unistd::geteuid().is_root() {
        setxattr(&p, "trusted.gridback", b"t", XattrFlags::empty()).unwrap();
        assert_eq!(getxattr(&p, "trusted.gridback").unwrap(), b"t", "trusted.*");
    }
}

fn names_with_spaces_and_utf8(snap: &Path) {
    let names: [&[u8]; 4] = [
        b"a name with  spaces .txt",
        "naïve ünïcødé ✓ файл 文件.txt".as_bytes(),
        b"not utf-8 \xff\xfe\x80",
        b" leading and trailing ",
    ];
    for n in names {
        let p = snap.join(OsStr::from_bytes(n));
        write_file(&p, n);
        assert_bytes(&p, n, "a file with an awkward name");
        assert!(names_in(snap).contains(n), "readdir shows the name's bytes");
    }
}

fn name_of_255_bytes_works_and_256_is_enametoolong(snap: &Path) {
    let ok = "x".repeat(255);
    write_file(&snap.join(&ok), b"255");
    let utf8_ok = "é".repeat(127) + "x"; // 255 bytes
    fs::create_dir(snap.join(&utf8_ok)).unwrap();
    let long = "y".repeat(256);
    expect_errno(
        File::create(snap.join(&long)),
        Errno::ENAMETOOLONG,
        "create 256",
    );
    expect_errno(
        fs::create_dir(snap.join(&long)),
        Errno::ENAMETOOLONG,
        "mkdir 256",
    );
    expect_errno(
        symlink("t", snap.join(&long)),
        Errno::ENAMETOOLONG,
        "symlink 256",
    );
    expect_errno(
        fs::rename(snap.join(&ok), snap.join(&long)),
        Errno::ENAMETOOLONG,
        "rename to 256",
    );
    assert_bytes(&snap.join(&ok), b"255", "a 255-byte name");
    // A snapshot's name is a name like any other.
    let snapshots = snap.parent().unwrap();
    expect_errno(
        fs::create_dir(snapshots.join(&long)),
        Errno::ENAMETOOLONG,
        "mkdir of a snapshot named with 256 bytes",
    );
}

// ---------------------------------------------------------------------------------------
// The mount layout and snapshots
// ---------------------------------------------------------------------------------------

fn mount_root_is_read_only(mnt: &Path) {
    assert_eq!(
        names_in(mnt),
        BTreeSet::from([b"snapshots".to_vec()]),
        "the root lists snapshots/ only"
    );
    expect_errno(
        File::create(mnt.join("f")),
        Errno::EROFS,
        "create in the root",
    );
    expect_errno(
        fs::create_dir(mnt.join("d")),
        Errno::EROFS,
        "mkdir in the root",
    );
    expect_errno(
        symlink("t", mnt.join("l")),
        Errno::EROFS,
        "symlink in the root",
    );
    expect_errno(
        fs::set_permissions(mnt, fs::Permissions::from_mode(0o700)),
        Errno::EROFS,
        "chmod of the root",
    );
    expect_errno(
        fs::rename(mnt.join("snapshots"), mnt.join("s")),
        Errno::EROFS,
        "rename snapshots/",
    );
    expect_errno(
        fs::remove_dir(mnt.join("snapshots")),
        Errno::EROFS,
        "rmdir snapshots/",
    );
}

fn snapshots_dir_holds_only_snapshots(mnt: &Path) {
    let s = mnt.join("snapshots");
    expect_errno(
        File::create(s.join("a-file")),
        Errno::EPERM,
        "create a file in snapshots/",
    );
    expect_errno(
        symlink("t", s.join("a-link")),
        Errno::EPERM,
        "symlink in snapshots/",
    );
}

fn mkdir_in_snapshots_opens_a_snapshot(grid: &LocalGridProcess) {
    let s = open_snapshot(grid, "fresh 2026-11-25");
    assert_eq!(names_in(&s), BTreeSet::new(), "a new snapshot is empty");
    write_file(&s.join("f"), b"writable");
    let list: serde_json::Value =
        serde_json::from_str(&run_ok(grid, &["snapshot", "list", "--json"])).unwrap();
    let entry = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "fresh 2026-11-25")
        .unwrap_or_else(|| panic!("the new snapshot is not listed: {list}"));
    assert_eq!(entry["state"], "open", "a new snapshot is open");
    expect_errno(
        fs::create_dir(&s),
        Errno::EEXIST,
        "mkdir of an existing snapshot",
    );
}

fn rmdir_of_a_snapshot_is_eperm(mnt: &Path, name: &str) {
    let s = mnt.join("snapshots").join(name);
    expect_errno(fs::remove_dir(&s), Errno::EPERM, "rmdir of a snapshot");
    expect_errno(
        fs::rename(&s, mnt.join("snapshots/renamed")),
        Errno::EPERM,
        "rename of a snapshot",
    );
    assert!(s.is_dir(), "the snapshot is still there");
}

/// Everything that would change a sealed snapshot answers EROFS; reads go on.
fn writes_into_a_sealed_snapshot_are_erofs(sealed: &Path) {
    let f = sealed.join("file");
    let d = sealed.join("dir");
    assert_bytes(&f, b"sealed content", "reading a sealed file");
    assert_eq!(
        getxattr(&f, "user.k").unwrap(),
        b"v",
        "getxattr when sealed"
    );
    expect_errno(File::create(sealed.join("new")), Errno::EROFS, "create");
    expect_errno(
        OpenOptions::new().write(true).open(&f),
        Errno::EROFS,
        "open for write",
    );
    expect_errno(
        OpenOptions::new().append(true).open(&f),
        Errno::EROFS,
        "open for append",
    );
    expect_errno(nix::unistd::truncate(&f, 0), Errno::EROFS, "truncate");
    expect_errno(fs::remove_file(&f), Errno::EROFS, "unlink");
    expect_errno(fs::create_dir(sealed.join("nd")), Errno::EROFS, "mkdir");
    expect_errno(fs::remove_dir(&d), Errno::EROFS, "rmdir");
    expect_errno(fs::rename(&f, sealed.join("moved")), Errno::EROFS, "rename");
    expect_errno(symlink("t", sealed.join("link")), Errno::EROFS, "symlink");
    expect_errno(
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
        Errno::EROFS,
        "chmod",
    );
    expect_errno(
        std::os::unix::fs::chown(&f, Some(1), Some(1)),
        Errno::EROFS,
        "chown",
    );
    expect_errno(set_times(&f, (1, 1), (1, 1)), Errno::EROFS, "utimens");
    expect_errno(
        setxattr(&f, "user.k2", b"v", XattrFlags::empty()),
        Errno::EROFS,
        "setxattr",
    );
    expect_errno(
        rustix::fs::lremovexattr(&f, "user.k").map_err(std::io::Error::from),
        Errno::EROFS,
        "removexattr",
    );
    assert_bytes(&f, b"sealed content", "still intact");
}

/// Attributes a restart must keep, written before `stop()`.
fn write_persistent_things(snap: &Path) {
    let f = snap.join("persist.bin");
    let file = File::create(&f).unwrap();
    file.write_all_at(b"end", 3_000_000).unwrap();
    file.write_all_at(b"start", 0).unwrap();
    drop(file);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    setxattr(&f, "user.kept", b"across restarts", XattrFlags::empty()).unwrap();
    set_times(&f, (1_700_000_000, 111), (1_700_000_001, 999_999_999)).unwrap();
    symlink("persist.bin", snap.join("persist-link")).unwrap();
    symlink("/far/away/dangling", snap.join("persist-dangling")).unwrap();
    fs::create_dir(snap.join("persist dir ✓")).unwrap();
    write_file(&snap.join("persist dir ✓/inner"), b"inner");
}

fn persisted_attributes_survive_a_restart(snap: &Path) {
    let f = snap.join("persist.bin");
    let mut want = vec![0u8; 3_000_003];
    want[..5].copy_from_slice(b"start");
    want[3_000_000..].copy_from_slice(b"end");
    assert_bytes(&f, &want, "a file with a hole after restart");
    let m = f.metadata().unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640, "mode after restart");
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_700_000_001, 999_999_999),
        "ns mtime after restart"
    );
    assert_eq!(
        getxattr(&f, "user.kept").unwrap(),
        b"across restarts",
        "xattr after restart"
    );
    assert_eq!(
        fs::read_link(snap.join("persist-link")).unwrap(),
        Path::new("persist.bin"),
        "symlink after restart"
    );
    assert_eq!(
        fs::read_link(snap.join("persist-dangling")).unwrap(),
        Path::new("/far/away/dangling"),
        "dangling symlink after restart"
    );
    assert_bytes(
        &snap.join("persist dir ✓/inner"),
        b"inner",
        "nested file after restart",
    );
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// File data through the mount: create, write anywhere, read while writing, truncate,
/// O_TRUNC, O_APPEND, unlink while open, fsync, large files, statfs.
#[test]
fn file_data_semantics() {
    let Some((grid, _work)) = start_grid() else {
        return;
    };
    let started = Instant::now();
    let snap = open_snapshot(&grid, "data");
    create_write_and_read_back(&snap);
    create_exclusive_on_an_existing_name_is_eexist(&snap);
    write_at_any_offset_holes_read_as_zeros(&snap);
    overlapping_writes_last_one_wins(&snap);
    read_while_writing_sees_written_bytes(&snap);
    truncate_down_and_up(&snap);
    open_with_o_trunc_empties_the_file(&snap);
    append_mode_appends(&snap);
    unlink_while_open_stays_readable_until_close(&snap);
    fsync_returns_after_the_data_is_stored(&snap);
    large_file_spans_many_chunks_and_edits_in_place(&snap);
    statfs_reports_space_and_name_max(&snap);
    eprintln!("file data checks took {:?}", started.elapsed());
    grid.stop();
}

/// Names, directories, renames, links, attributes and extended attributes.
#[test]
fn namespace_and_attribute_semantics() {
    let Some((grid, _work)) = start_grid() else {
        return;
    };
    let started = Instant::now();
    let snap = open_snapshot(&grid, "names");
    let other = open_snapshot(&grid, "other");
    mkdir_and_rmdir(&snap);
    rmdir_of_a_non_empty_directory_is_enotempty(&snap);
    readdir_lists_every_entry(&snap);
    rename_over_existing_file_replaces_it(&snap);
    rename_across_directories(&snap);
    rename_noreplace_refuses_an_existing_target(&snap);
    rename_exchange_is_einval(&snap);
    rename_directory_over_directories(&snap);
    rename_across_snapshots_is_exdev(&snap, &other);
    symlink_and_readlink(&snap);
    hard_link_is_eperm(&snap);
    chmod_and_chown(&snap);
    setgid_directory_passes_its_group_and_bit_on(&snap);
    utimens_keeps_nanoseconds(&snap);
    utimens_on_an_open_written_file_survives_close(&snap);
    write_updates_mtime(&snap);
    user_xattrs_set_get_list_remove(&snap);
    other_xattr_namespaces_are_eopnotsupp(&snap);
    names_with_spaces_and_utf8(&snap);
    name_of_255_bytes_works_and_256_is_enametoolong(&snap);
    eprintln!("namespace checks took {:?}", started.elapsed());
    grid.stop();
}

/// The mount's layout, opening and sealing snapshots, and what survives a full restart and
/// the loss of `m` nodes.
#[test]
fn snapshot_and_persistence_semantics() {
    let Some((grid, work)) = start_grid() else {
        return;
    };
    let mnt = grid.mount.clone();
    mount_root_is_read_only(&mnt);
    snapshots_dir_holds_only_snapshots(&mnt);
    mkdir_in_snapshots_opens_a_snapshot(&grid);
    rmdir_of_a_snapshot_is_eperm(&mnt, "fresh 2026-11-25");

    let open = open_snapshot(&grid, "kept-open");
    write_persistent_things(&open);
    let sealed = open_snapshot(&grid, "sealed");
    write_persistent_things(&sealed);
    write_file(&sealed.join("file"), b"sealed content");
    setxattr(&sealed.join("file"), "user.k", b"v", XattrFlags::empty()).unwrap();
    fs::create_dir(sealed.join("dir")).unwrap();
    run_ok(&grid, &["snapshot", "seal", "sealed"]);
    writes_into_a_sealed_snapshot_are_erofs(&sealed);
    grid.stop();

    // A full restart keeps everything, in the open snapshot and in the sealed one.
    let grid = LocalGridProcess::start(&work.path().join("data"), &mnt, NODES);
    persisted_attributes_survive_a_restart(&open);
    persisted_attributes_survive_a_restart(&sealed);
    writes_into_a_sealed_snapshot_are_erofs(&sealed);
    grid.stop();

    files_survive_losing_m_nodes(&work.path().join("data"), &mnt, &open, &sealed);
}

/// Durability at close: with 2+2 erasure on four nodes, two nodes' disks may be lost and
/// every closed file still reads back.
fn files_survive_losing_m_nodes(data: &Path, mnt: &Path, open: &Path, sealed: &Path) {
    for n in ["node-01", "node-03"] {
        fs::remove_dir_all(data.join("nodes").join(n)).unwrap();
    }
    let grid = LocalGridProcess::start(data, mnt, NODES);
    persisted_attributes_survive_a_restart(open);
    persisted_attributes_survive_a_restart(sealed);
    assert_bytes(
        &sealed.join("file"),
        b"sealed content",
        "after losing two nodes",
    );
    grid.stop();
}

// ---------------------------------------------------------------------------------------
// Model-based: random operation sequences against the mount and a reference directory
// ---------------------------------------------------------------------------------------

/// Paths the random operations use: a few files and directories, two levels deep, so that
/// renames across directories, over files and over directories all happen.
const MODEL_PATHS: &[&str] = &["a", "b", "d1", "d1/a", "d1/c", "d2", "d2/b", "d1/d3"];

/// Model cases when `PROPTEST_CASES` is not set (CI sets 64; each case costs well under a
/// second on a running grid).
const MODEL_CASES: u32 = 32;
/// Handles a model case may hold open across operations (on each side).
const MODEL_SLOTS: usize = 2;
/// Extended attribute names the random operations use.
const MODEL_XATTRS: &[&str] = &["user.a", "user.b"];

/// One random operation.
#[derive(Debug, Clone)]
enum ModelOp {
    /// Open (creating if needed, never truncating), write `len` bytes at `offset`, close.
    Write {
        path: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    /// Open, read `len` bytes at `offset`, close: what was read is compared.
    Read {
        path: usize,
        offset: u64,
        len: usize,
    },
    /// Truncate to `size` through an open handle.
    Truncate { path: usize, size: u64 },
    /// rename(2).
    Rename { from: usize, to: usize },
    /// unlink(2).
    Unlink { path: usize },
    /// mkdir(2).
    Mkdir { path: usize },
    /// rmdir(2).
    Rmdir { path: usize },
    /// symlink(2) to a relative name in the same directory (which may not exist).
    Symlink { path: usize },
    /// chmod(2) (follows symlinks).
    Chmod { path: usize, mode: u32 },
    /// utimensat(2) without following symlinks; the resulting mtime is compared.
    SetTimes { path: usize, secs: i64, nanos: i64 },
    /// lsetxattr(2) of a `user.*` attribute.
    SetXattr {
        path: usize,
        name: usize,
        value: Vec<u8>,
    },
    /// lremovexattr(2).
    RemoveXattr { path: usize, name: usize },
    /// lstat(2): kind, size and permission bits are compared.
    Stat { path: usize },
    /// Open `path` into `slot` (creating it if needed, never truncating), closing what the
    /// slot held: the handle outlives renames and unlinks of its file.
    Hold { slot: usize, path: usize },
    /// Write through the held handle.
    WriteHeld {
        slot: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    /// Read through the held handle (sees the bytes written so far).
    ReadHeld {
        slot: usize,
        offset: u64,
        len: usize,
    },
    /// fsync(2) of the held handle.
    FsyncHeld { slot: usize },
    /// Close the held handle.
    Release { slot: usize },
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let path = 0..MODEL_PATHS.len();
    let slot = 0..MODEL_SLOTS;
    let name = 0..MODEL_XATTRS.len();
    prop_oneof![
        4 => (path.clone(), 0u64..400_000, 0usize..70_000, any::<u64>())
            .prop_map(|(path, offset, len, seed)| ModelOp::Write { path, offset, len, seed }),
        2 => (path.clone(), 0u64..400_000, 0usize..70_000)
            .prop_map(|(path, offset, len)| ModelOp::Read { path, offset, len }),
        2 => (path.clone(), 0u64..300_000).prop_map(|(path, size)| ModelOp::Truncate { path, size }),
        2 => (path.clone(), path.clone()).prop_map(|(from, to)| ModelOp::Rename { from, to }),
        1 => path.clone().prop_map(|path| ModelOp::Unlink { path }),
        2 => path.clone().prop_map(|path| ModelOp::Mkdir { path }),
        1 => path.clone().prop_map(|path| ModelOp::Rmdir { path }),
        1 => path.clone().prop_map(|path| ModelOp::Symlink { path }),
        1 => (path.clone(), 0u32..0o7777).prop_map(|(path, mode)| ModelOp::Chmod { path, mode }),
        1 => (path.clone(), 0i64..4_000_000_000, 0i64..1_000_000_000)
            .prop_map(|(path, secs, nanos)| ModelOp::SetTimes { path, secs, nanos }),
        1 => (path.clone(), name.clone(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(path, name, value)| ModelOp::SetXattr { path, name, value }),
        1 => (path.clone(), name).prop_map(|(path, name)| ModelOp::RemoveXattr { path, name }),
        1 => path.clone().prop_map(|path| ModelOp::Stat { path }),
        2 => (slot.clone(), path).prop_map(|(slot, path)| ModelOp::Hold { slot, path }),
        2 => (slot.clone(), 0u64..400_000, 0usize..70_000, any::<u64>())
            .prop_map(|(slot, offset, len, seed)| ModelOp::WriteHeld { slot, offset, len, seed }),
        2 => (slot.clone(), 0u64..400_000, 0usize..70_000)
            .prop_map(|(slot, offset, len)| ModelOp::ReadHeld { slot, offset, len }),
        1 => slot.clone().prop_map(|slot| ModelOp::FsyncHeld { slot }),
        1 => slot.prop_map(|slot| ModelOp::Release { slot }),
    ]
}

/// What an operation showed: its errno, or what it observed.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Ok,
    Errno(Errno),
    /// Bytes read (a hash and the length, to keep failure messages short).
    Read(usize, blake3::Hash),
    /// (kind, size, permission bits) of lstat.
    Stat(&'static str, u64, u32),
    /// mtime (s, ns) after utimensat.
    Mtime(i64, i64),
    /// The slot held no handle.
    NoHandle,
}

fn seen<T>(r: std::io::Result<T>, f: impl FnOnce(T) -> Seen) -> Seen {
    match r {
        Ok(v) => f(v),
        Err(e) => Seen::Errno(Errno::from_raw(e.raw_os_error().unwrap_or(-1))),
    }
}

fn read_at(f: &File, offset: u64, len: usize) -> std::io::Result<Seen> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(Seen::Read(got, blake3::hash(&buf)))
}

/// Apply one operation under `root`, with `slots` the handles held on that side.
fn apply(root: &Path, slots: &mut [Option<File>], op: &ModelOp) -> Seen {
    let p = |i: usize| root.join(MODEL_PATHS[i]);
    let open_rw = |path: usize| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p(path))
    };
    let ok = |_| Seen::Ok;
    match op {
        ModelOp::Write {
            path,
            offset,
            len,
            seed,
        } => seen(
            open_rw(*path)
                .and_then(|f| f.write_all_at(&random(&mut Rng::new(*seed), *len), *offset)),
            ok,
        ),
        ModelOp::Read { path, offset, len } => {
            match File::open(p(*path)).and_then(|f| read_at(&f, *offset, *len)) {
                Ok(s) => s,
                Err(e) => seen::<()>(Err(e), ok),
            }
        }
        ModelOp::Truncate { path, size } => seen(
            OpenOptions::new()
                .write(true)
                .open(p(*path))
                .and_then(|f| f.set_len(*size)),
            ok,
        ),
        ModelOp::Rename { from, to } => seen(fs::rename(p(*from), p(*to)), ok),
        ModelOp::Unlink { path } => seen(fs::remove_file(p(*path)), ok),
        ModelOp::Mkdir { path } => seen(fs::create_dir(p(*path)), ok),
        ModelOp::Rmdir { path } => seen(fs::remove_dir(p(*path)), ok),
        ModelOp::Symlink { path } => seen(symlink("c", p(*path)), ok),
        ModelOp::Chmod { path, mode } => seen(
            fs::set_permissions(p(*path), fs::Permissions::from_mode(*mode)),
            ok,
        ),
        ModelOp::SetTimes { path, secs, nanos } => seen(
            set_times(&p(*path), (*secs, *nanos), (*secs, *nanos))
                .map_err(std::io::Error::from)
                .and_then(|()| fs::symlink_metadata(p(*path))),
            |m| Seen::Mtime(m.mtime(), m.mtime_nsec()),
        ),
        ModelOp::SetXattr { path, name, value } => seen(
            setxattr(&p(*path), MODEL_XATTRS[*name], value, XattrFlags::empty()),
            ok,
        ),
        ModelOp::RemoveXattr { path, name } => seen(
            rustix::fs::lremovexattr(p(*path), MODEL_XATTRS[*name]).map_err(Into::into),
            ok,
        ),
        ModelOp::Stat { path } => seen(fs::symlink_metadata(p(*path)), |m| {
            let kind = if m.is_dir() {
                "dir"
            } else if m.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            // A directory's size is the filesystem's business.
            let size = if m.is_dir() { 0 } else { m.len() };
            Seen::Stat(kind, size, m.mode() & 0o7777)
        }),
        ModelOp::Hold { slot, path } => {
            slots[*slot] = None;
            seen(open_rw(*path), |f| {
                slots[*slot] = Some(f);
                Seen::Ok
            })
        }
        ModelOp::WriteHeld {
            slot,
            offset,
            len,
            seed,
        } => match &slots[*slot] {
            None => Seen::NoHandle,
            Some(f) => seen(
                f.write_all_at(&random(&mut Rng::new(*seed), *len), *offset),
                ok,
            ),
        },
        ModelOp::ReadHeld { slot, offset, len } => match &slots[*slot] {
            None => Seen::NoHandle,
            Some(f) => match read_at(f, *offset, *len) {
                Ok(s) => s,
                Err(e) => seen::<()>(Err(e), ok),
            },
        },
        ModelOp::FsyncHeld { slot } => match &slots[*slot] {
            None => Seen::NoHandle,
            Some(f) => seen(f.sync_all(), ok),
        },
        ModelOp::Release { slot } => match slots[*slot].take() {
            None => Seen::NoHandle,
            Some(f) => {
                drop(f);
                Seen::Ok
            }
        },
    }
}

/// Relative path → (permission bits, `user.*` xattrs as (name, value)).
type ModesAndXattrs = BTreeMap<PathBuf, (u32, BTreeSet<(Vec<u8>, Vec<u8>)>)>;

/// Permission bits and `user.*` attributes of everything under `root` (not following
/// symlinks), by relative path.
fn modes_and_xattrs(root: &Path) -> ModesAndXattrs {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(root.join(&d)).unwrap() {
            let e = e.unwrap();
            let rel = d.join(e.file_name());
            let p = root.join(&rel);
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(rel.clone());
            }
            if m.is_symlink() {
                continue; // a symlink's mode is always 0777, and it holds no user.* xattrs
            }
            let xattrs = listxattr(&p)
                .into_iter()
                .filter(|n| n.starts_with(b"user."))
                .map(|n| {
                    let v = getxattr(&p, std::str::from_utf8(&n).unwrap()).unwrap();
                    (n, v)
                })
                .collect();
            out.insert(rel, (m.mode() & 0o7777, xattrs));
        }
    }
    out
}

fn run_model_case(mnt_snap: &Path, reference: &Path, ops: &[ModelOp]) -> Result<(), TestCaseError> {
    fs::create_dir(reference).unwrap();
    let mut ref_slots: Vec<Option<File>> = (0..MODEL_SLOTS).map(|_| None).collect();
    let mut mnt_slots: Vec<Option<File>> = (0..MODEL_SLOTS).map(|_| None).collect();
    for (i, op) in ops.iter().enumerate() {
        let want = apply(reference, &mut ref_slots, op);
        let got = apply(mnt_snap, &mut mnt_slots, op);
        prop_assert_eq!(
            got,
            want,
            "op #{} {:?}: the mount and the reference disagree",
            i,
            op
        );
    }
    // Closing the last handles commits what they wrote.
    drop(mnt_slots);
    drop(ref_slots);
    assert_same_content(reference, mnt_snap);
    prop_assert_eq!(
        modes_and_xattrs(mnt_snap),
        modes_and_xattrs(reference),
        "permission bits or xattrs differ"
    );
    Ok(())
}

/// Random sequences of create, write at any offset, read, truncate, rename, unlink, mkdir,
/// rmdir, symlink, chmod, utimensat, xattrs and handles held open across all of these (write,
/// read, fsync through them after their file was renamed or unlinked) give the same errors
/// and the same observations in the mount as in a local directory, and leave the same bytes,
/// permission bits and xattrs.
#[test]
fn random_operations_match_a_reference_directory() {
    let Some((grid, work)) = start_grid() else {
        return;
    };
    let started = Instant::now();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(MODEL_CASES);
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let case = std::cell::Cell::new(0u32);
    let result =
        TestRunner::new(config).run(&proptest::collection::vec(model_op(), 1..40), |ops| {
            case.set(case.get() + 1);
            let case = case.get();
            let snap = open_snapshot(&grid, &format!("model-{case:04}"));
            let reference = work.path().join(format!("reference-{case:04}"));
            run_model_case(&snap, &reference, &ops)
        });
    eprintln!("{} model cases took {:?}", case.get(), started.elapsed());
    if let Err(e) = result {
        panic!("{e}\n{}", grid.log_text());
    }
    grid.stop();
}
