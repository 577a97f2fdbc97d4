#!/usr/bin/env bash
# Build gridback and start a local grid of 6 storage nodes, mounted at ~/gridback-mnt
# (state in ~/gridback). Installs fuse3 when fusermount3 is missing. Ctrl-C stops it.
# Override with GRIDBACK_DATA, GRIDBACK_MOUNT, GRIDBACK_NODES.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fuse3
fi
cargo build --release --locked -p gridback
data="${GRIDBACK_DATA:-$HOME/gridback}"
mnt="${GRIDBACK_MOUNT:-$HOME/gridback-mnt}"
mkdir -p "$data" "$mnt"
exec ./target/release/gridback local up --nodes "${GRIDBACK_NODES:-6}" --data "$data" --mount "$mnt"
