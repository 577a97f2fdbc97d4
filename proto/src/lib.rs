//! gridback's shared vocabulary.
//!
//! Everything the three roles (source client, storage node, coordinator) must agree on lives
//! here and nowhere else: identifier newtypes, the wire frame and its messages, the
//! coordinator-signed orders a storage node obeys, the cluster CA and TLS identities, and the
//! human-readable size/duration parser. The codec is sans-IO: it encodes and decodes byte
//! slices. The QUIC transport that carries it sits behind the `transport` feature.
#![warn(missing_docs)]

pub mod admin_api;
pub mod coord_api;
pub mod error;
pub mod ids;
pub mod location;
pub mod node_api;
pub mod order;
pub mod schedule_api;
pub mod subscription;
#[cfg(feature = "transport")]
pub mod throttle;
pub mod tls;
#[cfg(feature = "transport")]
pub mod transport;
pub mod units;
pub mod wire;

pub use error::{ErrorCode, WireError};
pub use ids::{CertFingerprint, ChunkId, ClientId, NodeId, PacketName};
pub use location::{Bounds, Coords, Distance, Location, Proximity};
pub use order::{Order, OrderOp, OrderSigner, OrderVerifier, SignedOrder};
pub use wire::{PROTOCOL_VERSION, Rpc};

/// Milliseconds since the Unix epoch, the one clock format used on the wire.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
