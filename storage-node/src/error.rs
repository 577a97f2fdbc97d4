//! Error enums of the storage node, one per operation boundary: loading the config, the
//! packet store, joining the grid, and running the node. Store errors are the ones that cross
//! the wire; [`StoreError::code`] is the single place that maps them to [`ErrorCode`]s.

use std::net::SocketAddr;
use std::path::PathBuf;

use gridback_proto::transport::{CallError, EndpointError};
use gridback_proto::{ErrorCode, PacketName, WireError};

/// Errors loading or validating a [`crate::NodeConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read node config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid node config (unknown key, bad size, missing field…).
    #[error("invalid node config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A value parsed but makes no sense.
    #[error("invalid node config: {0}")]
    Invalid(String),
}

/// Errors of the packet store. Each variant is one answer the caller must give.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No packet with that name.
    #[error("packet {0} not found")]
    NotFound(PacketName),
    /// The stored packet failed its checksum or its header is damaged; it is never served.
    #[error("packet {name} is corrupt: {reason}")]
    Corrupt {
        /// The packet.
        name: PacketName,
        /// What failed.
        reason: String,
    },
    /// Storing the packet would exceed the allocated storage.
    #[error("node full: {need} more bytes do not fit ({used} of {capacity} bytes used)")]
    NodeFull {
        /// Bytes the packet needs on disk (header included).
        need: u64,
        /// Bytes in use when it was refused.
        used: u64,
        /// The allocated storage.
        capacity: u64,
    },
    /// The disk itself ran out of space (ENOSPC) before the allocation did.
    #[error("disk full while writing {path}: {source}")]
    DiskFull {
        /// File being written.
        path: PathBuf,
        /// The ENOSPC error.
        #[source]
        source: std::io::Error,
    },
    /// A different packet is already stored under this name.
    #[error("a different packet is already stored as {0}")]
    Conflict(PacketName),
    /// Any other disk error.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking store task died (a panic in the store: a bug).
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Corrupt { .. } => ErrorCode::Corrupt,
            StoreError::NodeFull { .. } | StoreError::DiskFull { .. } => ErrorCode::NodeFull,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::Io { .. } => ErrorCode::Unavailable,
            StoreError::Task(_) => ErrorCode::Internal,
        }
    }

    /// Wrap an I/O error, turning ENOSPC and EDQUOT into [`StoreError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { path, source },
            _ => StoreError::Io { op, path, source },
        }
    }
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        WireError::new(e.code(), e.to_string())
    }
}

/// Message used whenever the node finds it is talking to a coordinator of another grid.
pub const FOREIGN_GRID_MESSAGE: &str =
    "this node's data dir belongs to another grid (or the coordinator's CA changed)";

/// Errors establishing the node's identity (joining, or loading a previous join).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The node has no identity yet and no join token to get one.
    #[error(
        "this node has not joined a grid yet ({data_dir} has no identity): set join_token_file \
         to a file holding a join token from the coordinator"
    )]
    NoToken {
        /// The data dir without an identity.
        data_dir: PathBuf,
    },
    /// The node has no identity yet and no CA certificate to check the coordinator with.
    #[error("this node has not joined a grid yet: set ca_file to the cluster CA certificate")]
    NoCa,
    /// An identity file is missing, unreadable or unwritable.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An identity file holds garbage.
    #[error("invalid identity file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The join token file is empty.
    #[error("join token file {0} is empty")]
    EmptyToken(PathBuf),
    /// Key, CSR or certificate handling failed.
    #[error("TLS identity: {0}")]
    Tls(#[from] gridback_proto::tls::TlsError),
    /// Creating the joining endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The coordinator's certificate is not signed by the configured CA.
    #[error("the coordinator at {addr} is not signed by ca_file ({reason})")]
    UntrustedCoordinator {
        /// Coordinator address.
        addr: String,
        /// TLS detail.
        reason: String,
    },
    /// The coordinator could not be reached or refused the join.
    #[error("joining the grid failed: {0}")]
    Call(#[source] CallError),
    /// The coordinator answered with something unusable.
    #[error("the coordinator's join answer is unusable: {0}")]
    BadAnswer(String),
}

/// Errors binding or running a storage node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not establish its identity.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The packet store could not be opened.
    #[error("cannot open the packet store: {0}")]
    Store(#[from] StoreError),
    /// The listen address is taken or unusable.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
        /// A hint for the common causes (port in use).
        hint: &'static str,
    },
    /// The QUIC endpoint could not be built.
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(#[source] EndpointError),
    /// The coordinator belongs to another grid than this data dir.
    #[error("{FOREIGN_GRID_MESSAGE}: {detail}")]
    ForeignGrid {
        /// What showed it (grid ids or the TLS error).
        detail: String,
    },
    /// A background task of the node died.
    #[error("node task failed: {0}")]
    Task(String),
}

impl NodeError {
    /// Classify an endpoint error: a bind failure names the address and the likely cause.
    pub(crate) fn from_endpoint(e: EndpointError) -> Self {
        match e {
            EndpointError::Bind { addr, source } => {
                let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (the port is in use: is another node or service running there?)"
                } else {
                    ""
                };
                NodeError::Bind { addr, source, hint }
            }
            other => NodeError::Endpoint(other),
        }
    }
}

/// Whether a connection error says the peer's certificate does not chain to our CA.
pub(crate) fn is_untrusted_certificate(reason: &str) -> bool {
    // Our side refusing the coordinator's certificate, or the coordinator refusing ours with
    // the TLS `unknown_ca` alert (48), which quinn reports as a crypto error number.
    reason.contains("UnknownIssuer")
        || reason.contains("invalid peer certificate")
        || reason.contains("cryptographic handshake failed: error 48")
}
