//! Startup failures a person must be able to act on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

#[path = "support/harness.rs"]
mod harness;

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_port_and_locked_data_dir_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config(&dir.path().join("a"))).await;
    let e = gridback_coordinator::Server::bind(config(&dir.path().join("a")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already open by another coordinator"), "{e}");
    let mut other = config(&dir.path().join("b"));
    other.listen_addr = srv.addr;
    let e = gridback_coordinator::Server::bind(other)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "address {} is already in use (is another coordinator running?)",
            srv.addr
        )
    );
    srv.stop().await;
}
