//! `gridback bench` as a person runs it: every phase, on a small data set, through its JSON
//! report. The figures themselves are not judged here (tests never time things); what is
//! checked is that every phase ran, verified what it read, and reported what it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

use std::process::Command;

use gridback_tests::fuse_available_or_required;
use gridback_tests::local::gridback_bin;

/// Files in the browse phase's snapshot: the smallest the bench accepts (its 10,000-entry
/// directory plus one file per small-file directory).
const BROWSE_FILES: &str = "10100";

#[test]
fn bench_runs_every_phase_and_reports_its_figures() {
    if !fuse_available_or_required() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(gridback_bin())
        .args([
            "bench",
            "--size",
            "8MiB",
            "--browse-files",
            BROWSE_FILES,
            "--json",
        ])
        .arg("--workdir")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gridback bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["write", "read", "browse", "cat-restore", "placement"],
        "{r}"
    );

    let positive = |v: &serde_json::Value, what: &str| {
        let x = v.as_f64().unwrap_or_else(|| panic!("{what} missing: {r}"));
        assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    };
    positive(&r["write"]["mb_per_s"], "write MB/s");
    positive(&r["read"]["mb_per_s"], "read MB/s");
    // Every file written was read back and matched its source's hash.
    assert_eq!(r["read"]["files_verified"], r["write"]["files"], "{r}");
    assert!(r["write"]["files"].as_u64() > Some(100), "{r}");
    // Browsing answered from local metadata: every node was frozen and the mount fetched
    // no chunk while `stat`, `ls -l` and `find` ran.
    let b = &r["browse"];
    assert_eq!(b["files"], 10100, "{b}");
    assert_eq!(b["chunk_fetches"], 0, "browsing fetched chunks: {b}");
    assert_eq!(b["node_bytes_read_during_browse"], 0, "{b}");
    positive(&b["ls_l_seconds"], "ls -l seconds");
    let c = &r["cat_restore"];
    positive(&c["cat_mb_per_s"], "cat MB/s");
    positive(&c["restore_mb_per_s"], "restore MB/s");
    let runs = r["placement"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{r}");
    for run in runs {
        assert_eq!(run["placed"], run["chunks"], "every chunk placed: {run}");
        positive(&run["chunks_per_s"], "placement chunks/s");
    }
    let procs = r["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["process"] == "coordinator" && p["peak_rss_bytes"].as_u64() > Some(0)),
        "{r}"
    );
}
