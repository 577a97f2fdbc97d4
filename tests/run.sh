#!/usr/bin/env bash
# The whole gridback test suite, on a fresh machine: installs what it needs, then runs every
# unit, property, cluster, process and FUSE test. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# The incremental-snapshot test drives a real `rsync -a --delete` into the mount.
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # As root, fuser mounts without fusermount3, so a failed install is a warning here; the
    # FUSE tests themselves fail loudly if mounting does not work.
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"; }; then
        echo "warning: could not install ${need_apt[*]}; continuing" >&2
    fi
fi

# FUSE tests fail (never skip) when they cannot mount.
export REQUIRE_FUSE=1
# Property tests: enough cases to find bugs, few enough for a 2-core machine.
export PROPTEST_CASES="${PROPTEST_CASES:-64}"

# Build the binary the process tests drive before any test starts.
cargo build --locked -p gridback
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    echo "cargo-nextest not found; using cargo test"
    cargo test --workspace --locked --no-fail-fast
fi
cargo test --doc --workspace --locked
