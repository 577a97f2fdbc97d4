//! gridback's coordinator, the global sequence manager.
//!
//! It admits nodes and clients (join token → certificate from the cluster CA; the one admin
//! certificate is issued at init into `DATA_DIR/admin/`, see [`admin_tls_dir`]), tracks node
//! liveness and locations, places every chunk on a keyed hash ring honouring capacity and the
//! packet and backup proximity rules ([`placement`]; keys and packet names in [`sequence`]),
//! enforces subscriptions, quotas and resource limits (F15-F17), signs put/get orders, keeps
//! the dedup index, usage, schedules (F18) and every metadata record in redb behind the
//! [`store::MetaStore`] trait, answers operator requests, and serves it all over QUIC with
//! mutual TLS ([`Server`]).

pub mod config;
pub mod erasure;
pub mod error;
pub mod init;
mod membership;
mod pending;
pub mod placement;
pub mod sequence;
mod server;
mod service;
pub mod store;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use init::{InitError, InitReport, admin_tls_dir, init_data_dir, read_join_token};
pub use placement::{PlacementBenchResult, bench_placement};
pub use server::Server;
pub use service::bench::{
    AllocationBenchError, AllocationBenchResult, BENCH_BATCH_CHUNKS, bench_allocation,
};
