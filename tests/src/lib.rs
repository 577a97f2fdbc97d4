//! gridback's end-to-end test support.
//!
//! - [`cluster::TestCluster`]: a coordinator and storage nodes in this process, on loopback
//!   with real QUIC and mutual TLS, real redb files and real packet stores, plus clients wired
//!   to them. For tests of the grid below the filesystem.
//! - [`local::LocalGridProcess`]: `gridback local up` as a real child process with a real FUSE
//!   mount, for tests of what a person sees.
//! - [`tree`]: generating directory trees with awkward names and comparing trees byte for
//!   byte.

// This crate only supports tests: a failed step must fail the test, so panicking is right.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod local;
pub mod tree;

/// Install a per-test tracing subscriber (output captured by the test harness).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Whether FUSE tests must run: CI sets `REQUIRE_FUSE=1` (or `CI=true`), and then a missing
/// `/dev/fuse` is a failure, never a silent skip.
pub fn fuse_available_or_required() -> bool {
    let required = std::env::var("REQUIRE_FUSE").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    let present = std::path::Path::new("/dev/fuse").exists();
    if !present && required {
        panic!("/dev/fuse is missing but REQUIRE_FUSE=1 / CI=true: FUSE tests must run here");
    }
    if !present {
        eprintln!("skipping: /dev/fuse is not available on this machine");
    }
    present
}
