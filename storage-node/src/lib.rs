//! gridback storage node: the *target client* that offers an allocated storage to the grid.
//!
//! A node keeps opaque packets in a directory with a byte limit and serves them over mutual-TLS
//! QUIC. It obeys only coordinator-signed orders bound to this node, the packet's name and
//! size, the requesting client's certificate and an expiry; anything else is refused. A put
//! is acknowledged only once the packet is durable on disk, and every read is verified
//! against the packet's checksum before it is served.
//!
//! Reading order: [`config`] (what an operator sets), [`store`] (packets on disk), [`service`]
//! (order checks and dispatch), [`client_limits`] and `gridback_proto::throttle` (per-client
//! bandwidth, transfers and write permission, set by the coordinator), [`join`] (identity), [`heartbeat`] (liveness towards the
//! coordinator), [`server`] (wiring it together: `Server::bind` then `Server::run`).
#![warn(missing_docs)]

pub mod client_limits;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod join;
pub mod server;
pub mod service;
pub mod store;

pub use client_limits::ClientGates;
pub use config::NodeConfig;
pub use error::{ConfigError, JoinError, NodeError, StoreError};
pub use join::NodeIdentity;
pub use server::Server;
pub use store::{PacketStore, StoreUsage};
