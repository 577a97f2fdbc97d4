//! gridback's coordinator, the global sequence manager.
//!
//! It admits nodes and clients (join token → certificate from the cluster CA), tracks node
//! liveness, computes the non-transparent sequence of every chunk from a secret key
//! ([`sequence`]), signs put/get orders, keeps the dedup index and every metadata record in
//! redb behind the [`store::MetaStore`] trait, and serves it all over QUIC with mutual TLS
//! ([`Server`]).

pub mod config;
pub mod erasure;
pub mod error;
pub mod init;
mod membership;
mod pending;
pub mod sequence;
mod server;
mod service;
pub mod store;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use init::{InitError, InitReport, init_data_dir, read_join_token};
pub use server::Server;
