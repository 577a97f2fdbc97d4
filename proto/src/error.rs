//! The error that crosses the wire. Its code is a stable number the caller decides on
//! (retry, fail over to another node, give up); the message is for humans and logs.

use serde::{Deserialize, Serialize};

/// Stable error codes. Numbers never change meaning; new codes are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[repr(u16)]
pub enum ErrorCode {
    /// The request was malformed or violated the protocol.
    BadRequest = 1,
    /// The peer is not allowed to do this (unknown certificate, bad order signature).
    Unauthorized = 2,
    /// The thing asked for does not exist.
    NotFound = 3,
    /// No set of targets satisfies the placement rules and capacities.
    NoPlacement = 4,
    /// The client's storage quota would be exceeded.
    QuotaExceeded = 5,
    /// The client's subscription does not allow writes.
    Suspended = 6,
    /// The storage node has no room for this packet.
    NodeFull = 7,
    /// Stored data failed its checksum.
    Corrupt = 8,
    /// The order has expired.
    Expired = 9,
    /// A bug or an unexpected local failure at the peer.
    Internal = 10,
    /// The peer is temporarily unable to serve (shutting down, overloaded, disk error).
    Unavailable = 11,
    /// The request conflicts with existing state (name taken, snapshot sealed).
    Conflict = 12,
    /// The peer speaks another protocol version.
    VersionMismatch = 13,
}

impl ErrorCode {
    /// Whether the same request may succeed if retried later or against another replica.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::Expired
        )
    }
}

/// An error as it travels between peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl WireError {
    /// Build an error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
