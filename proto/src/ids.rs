//! Identifier newtypes. Each kind of id is its own type so that a node id can never be passed
//! where a chunk id is expected. `Debug` prints a short hex prefix, `Display` the full hex.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Error returned when a hex string is not a valid id.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} id {input:?}: expected {len} hex digits")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
    len: usize,
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$meta])*
        ///
        /// Serialized as raw bytes on the wire (postcard) and as a hex string in
        /// human-readable formats (JSON, TOML).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&hex::encode(self.0))
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// A fresh random id (from the OS random source).
            pub fn random() -> Self {
                let mut b = [0u8; $len];
                getrandom::fill(&mut b).expect("invariant: the OS random source is available");
                Self(b)
            }

            /// Build from a slice of exactly the right length.
            pub fn from_slice(s: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(s).ok().map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..8.min($len)]))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError { kind: $kind, input: s.to_string(), len: $len * 2 };
                let v = hex::decode(s.trim()).map_err(|_| err())?;
                Self::from_slice(&v).ok_or_else(err)
            }
        }
    };
}

define_id!(
    /// Unique data identifier of a chunk: keyed BLAKE3 of its plaintext under the dedup
    /// domain key. Known to the client and the coordinator, never sent to storage nodes.
    ChunkId, 32, "chunk"
);
define_id!(
    /// Opaque name under which a storage node keeps one packet. Derived by the coordinator
    /// from its secret, so a node cannot tell which packets belong to the same chunk.
    PacketName, 32, "packet"
);
define_id!(
    /// A storage node's identity, assigned by the coordinator when the node joins.
    NodeId, 16, "node"
);
define_id!(
    /// A client's identity, assigned by the coordinator when the client joins.
    ClientId, 16, "client"
);
define_id!(
    /// BLAKE3 of a certificate's DER bytes: how a peer is recognised on a mutual-TLS
    /// connection and what an order is bound to.
    CertFingerprint, 32, "certificate"
);

impl CertFingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(*blake3::hash(der).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip_and_short_debug() {
        let id = ChunkId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        let d = format!("{id:?}");
        assert!(
            d.starts_with("ChunkId(") && d.len() == "ChunkId()".len() + 16,
            "{d}"
        );
        assert!("zz".parse::<NodeId>().is_err());
        assert!(hex::encode([1u8; 15]).parse::<NodeId>().is_err());
    }
}
