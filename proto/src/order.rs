//! Coordinator-signed orders. A storage node stores, returns or deletes a packet only when the
//! request carries an order signed by the coordinator's order key, bound to that node, that
//! packet name, that size, the requesting client's certificate and an expiry time.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::ids::{CertFingerprint, NodeId, PacketName};

/// Domain separation for order signatures, so no other signed message can pass as an order.
const ORDER_CONTEXT: &[u8] = b"gridback order v1\0";

/// What an order allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderOp {
    /// Store a new packet.
    Put,
    /// Read a packet.
    Get,
    /// Delete a packet.
    Delete,
}

/// The grant itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Allowed operation.
    pub op: OrderOp,
    /// The only node that may honour this order.
    pub node: NodeId,
    /// The packet it concerns.
    pub packet: PacketName,
    /// Exact packet size in bytes (for puts; for gets the size expected back).
    pub size_bytes: u64,
    /// Fingerprint of the certificate of the only client that may present it.
    pub client: CertFingerprint,
    /// After this instant (ms since the Unix epoch) the order is void.
    pub expires_unix_ms: u64,
}

/// An order with the coordinator's Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOrder {
    /// The grant.
    pub order: Order,
    /// 64-byte Ed25519 signature over the context string and the postcard encoding.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

fn signed_message(order: &Order) -> Vec<u8> {
    postcard::to_extend(order, ORDER_CONTEXT.to_vec())
        .expect("invariant: postcard encoding into a Vec cannot fail")
}

/// Errors checking an order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    /// The signature does not verify under the coordinator's key.
    #[error("order signature is invalid")]
    BadSignature,
    /// The order is past its expiry time.
    #[error("order expired at {expired_unix_ms} (now {now_unix_ms})")]
    Expired {
        /// Expiry.
        expired_unix_ms: u64,
        /// Now.
        now_unix_ms: u64,
    },
    /// The order is for another node, client, packet, size or operation.
    #[error("order does not match the request: {0}")]
    Mismatch(&'static str),
}

/// The coordinator's signing key (kept only by the coordinator).
pub struct OrderSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for OrderSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderSigner(<redacted>)")
    }
}

impl OrderSigner {
    /// Generate a new key; returns the signer and its PKCS#8 bytes to persist.
    pub fn generate() -> (Self, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("invariant: the OS random source is available");
        let bytes = pkcs8.as_ref().to_vec();
        let key = Ed25519KeyPair::from_pkcs8(&bytes).expect("invariant: ring parses its own key");
        (Self { key }, bytes)
    }

    /// Load a key from its PKCS#8 bytes.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, OrderError> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(|key| Self { key })
            .map_err(|_| OrderError::BadSignature)
    }

    /// Public key that nodes verify against.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Sign an order.
    pub fn sign(&self, order: Order) -> SignedOrder {
        let sig = self.key.sign(&signed_message(&order));
        SignedOrder {
            order,
            signature: sig.as_ref().to_vec(),
        }
    }
}

/// Verifies orders against the coordinator's public key (held by every node).
#[derive(Clone)]
pub struct OrderVerifier {
    public_key: Vec<u8>,
}

impl std::fmt::Debug for OrderVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OrderVerifier({})",
            hex::encode(&self.public_key[..8.min(self.public_key.len())])
        )
    }
}

impl OrderVerifier {
    /// From the coordinator's raw Ed25519 public key.
    pub fn new(public_key: Vec<u8>) -> Self {
        Self { public_key }
    }

    /// Check signature, expiry and that the order is for exactly this request.
    pub fn check(
        &self,
        signed: &SignedOrder,
        op: OrderOp,
        node: NodeId,
        packet: PacketName,
        client: CertFingerprint,
        now_unix_ms: u64,
    ) -> Result<(), OrderError> {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(&signed.order), &signed.signature)
            .map_err(|_| OrderError::BadSignature)?;
        let o = &signed.order;
        if o.expires_unix_ms < now_unix_ms {
            return Err(OrderError::Expired {
                expired_unix_ms: o.expires_unix_ms,
                now_unix_ms,
            });
        }
        if o.op != op {
            return Err(OrderError::Mismatch("operation"));
        }
        if o.node != node {
            return Err(OrderError::Mismatch("node"));
        }
        if o.packet != packet {
            return Err(OrderError::Mismatch("packet name"));
        }
        if o.client != client {
            return Err(OrderError::Mismatch("client certificate"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            op: OrderOp::Put,
            node: NodeId::random(),
            packet: PacketName::random(),
            size_bytes: 42,
            client: CertFingerprint::random(),
            expires_unix_ms: 2_000,
        }
    }

    #[test]
    fn valid_order_passes_and_every_tamper_fails() {
        let (signer, pkcs8) = OrderSigner::generate();
        let v = OrderVerifier::new(signer.public_key());
        let o = order();
        let s = signer.sign(o.clone());
        assert_eq!(
            v.check(&s, OrderOp::Put, o.node, o.packet, o.client, 1_000),
            Ok(())
        );
        assert!(matches!(
            v.check(&s, OrderOp::Put, o.node, o.packet, o.client, 3_000),
            Err(OrderError::Expired { .. })
        ));
        assert!(
            v.check(&s, OrderOp::Get, o.node, o.packet, o.client, 1_000)
                .is_err()
        );
        assert!(
            v.check(
                &s,
                OrderOp::Put,
                NodeId::random(),
                o.packet,
                o.client,
                1_000
            )
            .is_err()
        );
        assert!(
            v.check(
                &s,
                OrderOp::Put,
                o.node,
                PacketName::random(),
                o.client,
                1_000
            )
            .is_err()
        );
        assert!(
            v.check(
                &s,
                OrderOp::Put,
                o.node,
                o.packet,
                CertFingerprint::random(),
                1_000
            )
            .is_err()
        );
        let mut forged = s.clone();
        forged.order.size_bytes = 43;
        assert_eq!(
            v.check(&forged, OrderOp::Put, o.node, o.packet, o.client, 1_000),
            Err(OrderError::BadSignature)
        );
        let (other, _) = OrderSigner::generate();
        let foreign = other.sign(o.clone());
        assert_eq!(
            v.check(&foreign, OrderOp::Put, o.node, o.packet, o.client, 1_000),
            Err(OrderError::BadSignature)
        );
        let reloaded = OrderSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.public_key(), signer.public_key());
    }
}
