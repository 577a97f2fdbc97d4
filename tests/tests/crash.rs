//! Crash behaviour of the client: the mount process of a real `gridback local up` is killed
//! with SIGKILL while a large copy is in flight. After a restart every file that was closed
//! or fsynced before the kill is there with the same bytes, nothing is corrupt, and what was
//! in flight is either absent or complete. Then `gridback snapshot seal` refuses while a
//! file is open for writing, and `--force` seals it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::{LocalGridProcess, hash_file, mount_pid, write_random_file};
use gridback_tests::tree::{Rng, random};

/// Size of the file whose copy is in flight when the mount is killed.
const IN_FLIGHT_BYTES: u64 = 256 << 20;
/// How much of it must have reached the mount before the kill.
const IN_FLIGHT_SEEN: u64 = 8 << 20;
/// Deadline for every wait in this test.
const DEADLINE: Duration = Duration::from_secs(180);

/// What a file must hold after the restart.
#[derive(Debug)]
enum Expect {
    /// Closed or fsynced before the kill: exactly these bytes.
    Exactly(blake3::Hash),
    /// Fsynced, then written further, before the kill: present, as one of these versions
    /// (the fsynced one, or a later complete one).
    OneOf(Vec<blake3::Hash>),
    /// In flight at the kill: absent, or one of these complete versions.
    AbsentOr(Vec<blake3::Hash>),
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_closed(path: &Path, data: &[u8], fsync: bool) -> blake3::Hash {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
    drop(f);
    blake3::hash(data)
}

/// Files closed (some after fsync, one renamed after close) before the kill.
fn write_committed_files(snap: &Path, expect: &mut BTreeMap<PathBuf, Expect>) {
    let mut rng = Rng::new(0xc7a5_0001);
    std::fs::create_dir_all(snap.join("docs/deeper")).unwrap();
    let sizes = [0usize, 1, 4095, 4096, 100_000, 1 << 20, 3 << 20, 777_777];
    for (i, len) in sizes.iter().enumerate() {
        for (dir, fsync) in [("", false), ("docs/deeper", true)] {
            let rel = Path::new(dir).join(format!("file-{i}.bin"));
            let h = write_closed(&snap.join(&rel), &random(&mut rng, *len), fsync);
            expect.insert(rel, Expect::Exactly(h));
        }
    }
    let h = write_closed(&snap.join("tmp-name"), &random(&mut rng, 50_000), false);
    std::fs::rename(snap.join("tmp-name"), snap.join("docs/renamed.bin")).unwrap();
    expect.insert("docs/renamed.bin".into(), Expect::Exactly(h));
    // Rewritten after a first close: the second closed version counts.
    write_closed(
        &snap.join("docs/rewritten"),
        &random(&mut rng, 20_000),
        false,
    );
    let h = write_closed(
        &snap.join("docs/rewritten"),
        &random(&mut rng, 30_000),
        true,
    );
    expect.insert("docs/rewritten".into(), Expect::Exactly(h));
}

/// Files open at the kill: one fsynced and then written further, one never fsynced.
fn open_files_at_the_kill(snap: &Path, expect: &mut BTreeMap<PathBuf, Expect>) -> Vec<File> {
    let mut rng = Rng::new(0xc7a5_0002);
    let first = random(&mut rng, 1 << 20);
    let more = random(&mut rng, 512 << 10);
    let mut f = File::create(snap.join("fsynced-open.bin")).unwrap();
    f.write_all(&first).unwrap();
    f.sync_all().unwrap();
    f.write_all(&more).unwrap();
    let both = [first.as_slice(), more.as_slice()].concat();
    // Fsynced: there, as the fsynced version (or, had it been committed later, the whole).
    expect.insert(
        "fsynced-open.bin".into(),
        Expect::OneOf(vec![blake3::hash(&first), blake3::hash(&both)]),
    );
    let data = random(&mut rng, 100_000);
    let mut g = File::create(snap.join("new-open.bin")).unwrap();
    g.write_all(&data).unwrap();
    expect.insert(
        "new-open.bin".into(),
        Expect::AbsentOr(vec![blake3::hash(&data)]),
    );
    vec![f, g]
}

/// Check the snapshot after the restart: every expected file right, nothing else there.
fn check_after_restart(snap: &Path, expect: &BTreeMap<PathBuf, Expect>) {
    for (rel, e) in expect {
        let p = snap.join(rel);
        match (e, p.exists()) {
            (Expect::Exactly(h), true) => {
                assert_eq!(
                    hash_file(&p),
                    *h,
                    "{} differs after the crash",
                    rel.display()
                )
            }
            (Expect::Exactly(_), false) => {
                panic!("{} was closed before the kill and is gone", rel.display())
            }
            (Expect::OneOf(hs), true) => {
                let got = hash_file(&p);
                assert!(
                    hs.contains(&got),
                    "{} was fsynced before the kill and is garbled ({} bytes)",
                    rel.display(),
                    std::fs::metadata(&p).unwrap().len()
                );
            }
            (Expect::OneOf(_), false) => {
                panic!("{} was fsynced before the kill and is gone", rel.display())
            }
            (Expect::AbsentOr(hs), true) => {
                let got = hash_file(&p);
                assert!(
                    hs.contains(&got),
                    "{} is present but incomplete or garbled ({} bytes)",
                    rel.display(),
                    std::fs::metadata(&p).unwrap().len()
                );
                eprintln!("crash: in-flight {} is present and complete", rel.display());
            }
            (Expect::AbsentOr(_), false) => {
                eprintln!("crash: in-flight {} is absent", rel.display());
            }
        }
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(snap.join(&d)).unwrap() {
            let e = e.unwrap();
            let rel = d.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(rel);
            } else {
                assert!(
                    expect.contains_key(&rel),
                    "unexpected {} after the crash",
                    rel.display()
                );
            }
        }
    }
}

fn start_copy(src: &Path, dst: &Path) -> Child {
    Command::new("cp")
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGKILL the mount process while a copy is in flight; restart; check what survived.
#[test]
fn sigkill_of_the_mount_keeps_committed_files_and_no_partial_ones() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (data, mnt) = (work.path().join("data"), work.path().join("mnt"));
    let big_src = work.path().join("big.src");
    let big_hash = write_random_file(&big_src, IN_FLIGHT_BYTES, 7);

    let grid = LocalGridProcess::start(&data, &mnt, 4);
    let snap = mnt.join("snapshots/crash");
    std::fs::create_dir(&snap).unwrap();
    let mut expect = BTreeMap::new();
    write_committed_files(&snap, &mut expect);
    let open = open_files_at_the_kill(&snap, &mut expect);
    expect.insert("big.bin".into(), Expect::AbsentOr(vec![big_hash]));

    let mut cp = start_copy(&big_src, &snap.join("big.bin"));
    let big_dst = snap.join("big.bin");
    poll("the copy to be under way", || {
        let len = std::fs::metadata(&big_dst).map(|m| m.len()).unwrap_or(0);
        (len >= IN_FLIGHT_SEEN).then_some(())
    });
    let pid = mount_pid(&mnt).expect("the mount process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = poll("the copy to end", || cp.try_wait().unwrap());
    assert!(
        !status.success(),
        "the copy finished before the kill; make IN_FLIGHT_BYTES larger"
    );
    drop(open); // their descriptors now answer ENOTCONN
    drop(grid); // `local up` saw its mount die; stop the rest and clear the dead mount

    let grid = LocalGridProcess::start(&data, &mnt, 4);
    check_after_restart(&snap, &expect);
    seal_refuses_while_open_for_writing(&grid, &snap, work.path());
    grid.stop();
}

fn gridback_fails(grid: &LocalGridProcess, args: &[&str]) -> String {
    let out = grid.gridback(args);
    assert!(!out.status.success(), "gridback {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn gridback_ok(grid: &LocalGridProcess, args: &[&str]) {
    let out = grid.gridback(args);
    assert!(
        out.status.success(),
        "gridback {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
}

/// `snapshot seal` refuses (clear message naming the file, non-zero exit) while a file is
/// open for writing; `--force` seals everything written so far, fsynced or not, and later
/// writes through the open handle fail with EROFS; the sealed snapshot restores intact.
fn seal_refuses_while_open_for_writing(grid: &LocalGridProcess, snap: &Path, work: &Path) {
    let mut rng = Rng::new(0xc7a5_0003);
    let synced = random(&mut rng, 200_000);
    let unsynced = random(&mut rng, 30_000);
    let mut f = File::create(snap.join("docs/writer.log")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    f.write_all(&unsynced).unwrap();
    let bytes = [synced, unsynced].concat();
    let err = gridback_fails(grid, &["snapshot", "seal", "crash"]);
    assert!(
        err.contains("open for writing") && err.contains("--force"),
        "unclear refusal: {err}"
    );
    assert!(
        err.contains("docs/writer.log"),
        "the refusal does not name the open file: {err}"
    );
    let list = String::from_utf8_lossy(&grid.gridback(&["snapshot", "list"]).stdout).to_string();
    assert!(
        list.lines()
            .any(|l| l.starts_with("crash ") && l.contains("open")),
        "{list}"
    );
    gridback_ok(grid, &["snapshot", "seal", "crash", "--force"]);
    // The refusal comes at the write, or (had the kernel buffered it) at the flush.
    let refused = match f.write_all(b"after the seal") {
        Err(e) => e,
        Ok(()) => f
            .sync_all()
            .expect_err("a write after the seal was accepted"),
    };
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    drop(f);
    let after = std::fs::read(snap.join("docs/writer.log")).unwrap();
    assert!(
        after == bytes,
        "the sealed file changed: {} bytes instead of {} ({})",
        after.len(),
        bytes.len(),
        if after.starts_with(&bytes) {
            "appended to"
        } else {
            "rewritten"
        }
    );
    let err = std::fs::write(snap.join("another"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // What the grid holds for the sealed snapshot matches what the mount shows.
    let dest = work.join("restored");
    gridback_ok(
        grid,
        &["restore", "crash", dest.to_str().unwrap(), "--json"],
    );
    let mut stack = vec![PathBuf::new()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(snap.join(&d)).unwrap() {
            let e = e.unwrap();
            let rel = d.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(rel);
            } else {
                files += 1;
                assert_eq!(
                    hash_file(&snap.join(&rel)),
                    hash_file(&dest.join(&rel)),
                    "restored {} differs from the mount",
                    rel.display()
                );
            }
        }
    }
    assert!(files > 17, "only {files} files in the sealed snapshot");
}
