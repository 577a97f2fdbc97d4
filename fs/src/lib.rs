//! gridback source client.
//!
//! Read the data path off the module list: `chunker` → `crypto` → `compress` → `packet` /
//! `erasure` → `uploader` (batched coordinator round trips, parallel QUIC puts) and back through
//! `reader`. `client::GridClient` puts them behind the [`grid::Grid`] trait, which is all the
//! filesystem core (`core::FsCore`, FUSE-free and async) needs. `fuse` is the thin kernel
//! adapter over `FsCore`; `meta` is the client's local, crash-safe metadata (redb).
//! `backup` and `restore` work straight against the grid and the `tree` format, without the
//! mount, reporting through `progress`. `terms` keeps the coordinator's limits for this
//! client and applies them live through `gridback_proto::throttle` (bandwidth buckets, resizable transfer
//! and worker limits); `latency` ranks nodes for hedged reads.

pub mod backup;
pub mod chunker;
pub mod client;
pub mod compress;
pub mod config;
pub mod control;
pub mod coord_client;
pub mod core;
pub mod crypto;
pub mod erasure;
pub mod fuse;
pub mod grid;
pub mod join;
pub mod keys;
pub mod latency;
pub mod meta;
pub mod node_client;
pub mod packet;
pub mod progress;
pub mod reader;
pub mod restore;
pub mod terms;
pub mod testing;
pub mod tree;
pub mod uploader;
