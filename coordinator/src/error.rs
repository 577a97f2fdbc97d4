//! Errors of starting and running a coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::init::InitError;
use crate::store::StoreError;

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir could not be created or loaded.
    #[error("coordinator data dir: {0}")]
    Init(#[from] InitError),
    /// The metadata database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process already listens on the address.
    #[error("address {addr} is already in use (is another coordinator running?)")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The QUIC endpoint could not be created.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: gridback_proto::transport::EndpointError,
    },
    /// The bound address could not be written to `addr_file`.
    #[error("cannot write the coordinator address to {path}: {source}")]
    AddrFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: InitError,
    },
}
