//! gridback source client.
//!
//! Read the data path off the module list: `chunker` → `crypto` → `compress` → `packet` /
//! `erasure` → `uploader` (batched coordinator round trips, parallel QUIC puts) and back through
//! `reader`. `client::GridClient` puts them behind the [`grid::Grid`] trait, which is all the
//! filesystem core (`core::FsCore`, FUSE-free and async) needs. `fuse` is the thin kernel
//! adapter over `FsCore`; `meta` is the client's local, crash-safe metadata (redb).

pub mod control;
pub mod core;
pub mod fuse;
pub mod grid;
pub mod meta;
pub mod tree;
pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod erasure;
pub mod keys;
pub mod packet;
pub mod client;
pub mod config;
pub mod coord_client;
pub mod join;
pub mod node_client;
pub mod reader;
pub mod testing;
pub mod uploader;
