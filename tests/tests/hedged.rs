//! Hedged reads end to end (issue 3, item 4): with a real local grid, one storage node is
//! frozen with SIGSTOP (its process exists, its socket is open, it answers nothing), and a
//! fresh client restores a file whose chunks all have a packet on that node. The restore
//! must come back byte for byte, well before a request to the frozen node would time out,
//! because the reader asks another holder once the frozen one is late.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::time::{Duration, Instant};

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::{LocalGridProcess, hash_file, write_random_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The per-request deadline of the client (`proto::transport::DEFAULT_CALL_TIMEOUT`): a
/// restore that waited on the frozen node would take at least this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends SIGCONT when dropped, so a failing assertion never leaves a frozen process behind.
struct Frozen(Pid);

impl Frozen {
    fn freeze(pid: u32) -> Self {
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP a node");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn restore_reads_around_a_frozen_node() {
    if !fuse_available_or_required() {
        return;
    }
    gridback_tests::init_tracing();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mnt = work.path().join("mnt");
    let grid = LocalGridProcess::start(&data, &mnt, 6);

    // 24 MiB of random data: a few dozen chunks, each with a packet on every node (4 + 2
    // coding over 6 nodes).
    let snap = mnt.join("snapshots/h");
    std::fs::create_dir(&snap).unwrap();
    let want = write_random_file(&snap.join("big.bin"), 24 << 20, 42);
    let seal = grid.gridback(&["snapshot", "seal", "h"]);
    assert!(
        seal.status.success(),
        "seal failed: {}",
        String::from_utf8_lossy(&seal.stderr)
    );

    let status = grid.status();
    let node = &status["nodes"].as_array().unwrap()[0];
    let pid = node["pid"].as_u64().unwrap() as u32;
    let frozen = Frozen::freeze(pid);

    let dest = work.path().join("restored");
    let start = Instant::now();
    let out = grid.gridback(&["restore", "h/big.bin", dest.to_str().unwrap()]);
    let took = start.elapsed();
    drop(frozen);
    assert!(
        out.status.success(),
        "restore with node {} frozen failed: {}\n{}",
        node["id"],
        String::from_utf8_lossy(&out.stderr),
        grid.log_text()
    );
    assert_eq!(
        hash_file(&dest.join("big.bin")),
        want,
        "restored bytes differ"
    );
    eprintln!(
        "restore of 24 MiB with node {} (pid {pid}) frozen took {took:?}",
        node["id"]
    );
    // Generous: a reader that waited on the frozen node would need the full call deadline
    // for it at least once.
    assert!(took < CALL_TIMEOUT, "restore took {took:?}");

    // The node is back and the grid still serves everything.
    let again = work.path().join("again");
    let out = grid.gridback(&["restore", "h/big.bin", again.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&again.join("big.bin")), want);
    grid.stop();
}
