//! The frame that carries every request and response, and the typed request trait.
//!
//! ```text
//! offset  size  field
//! 0       2     magic  b"GB"
//! 2       2     version (u16 LE) = PROTOCOL_VERSION
//! 4       4     body length (u32 LE), at most the caller's limit
//! 8       n     body: postcard encoding of the message
//! ```
//! A request is one frame on a fresh bidirectional QUIC stream; its response is one frame on
//! the same stream. The length is checked against the limit before anything is allocated.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{ErrorCode, WireError};

/// Protocol version carried by every frame and in the ALPN string.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN protocol id for QUIC connections; a peer of another major version is refused in the
/// TLS handshake, before any frame is read.
pub const ALPN: &[u8] = b"gridback/1";
/// Frame magic.
pub const MAGIC: [u8; 2] = *b"GB";
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest frame anyone accepts: a 4 MiB chunk stored by replication (k = 1) plus encryption
/// overhead and padding, with room for the order. Anything bigger is a protocol violation.
pub const MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
/// Limit for control-plane frames that carry no packet data.
pub const MAX_CONTROL_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header announces.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Not a gridback frame.
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// Body larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// Limit in force.
        limit: u32,
    },
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[source] postcard::Error),
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> Self {
        let code = match e {
            FrameError::Version(_) => ErrorCode::VersionMismatch,
            _ => ErrorCode::BadRequest,
        };
        WireError::new(code, e.to_string())
    }
}

/// Parse a frame header, returning the body length after checking magic, version and limit.
pub fn decode_header(h: &[u8; HEADER_LEN], limit: u32) -> Result<usize, FrameError> {
    let magic = [h[0], h[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([h[2], h[3]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len as usize)
}

/// Encode a message into a complete frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0..2].copy_from_slice(&MAGIC);
    out[2..4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let out =
        postcard::to_extend(msg, out).expect("invariant: postcard encoding into a Vec cannot fail");
    let body_len = (out.len() - HEADER_LEN) as u32;
    let mut out = out;
    out[4..8].copy_from_slice(&body_len.to_le_bytes());
    out
}

/// Decode a complete frame (header and body) into a message.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8], limit: u32) -> Result<T, FrameError> {
    let h: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        })?;
    let len = decode_header(h, limit)?;
    let body = &buf[HEADER_LEN..];
    if body.len() != len {
        return Err(FrameError::Truncated {
            need: HEADER_LEN + len,
            have: buf.len(),
        });
    }
    decode_body(body)
}

/// Decode a frame body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Malformed)
}

/// A typed request: it knows its service's dispatch enum and the type of its reply.
pub trait Rpc: Serialize + Sized {
    /// The service's dispatch enum that this request is wrapped in on the wire.
    type Envelope: Serialize + DeserializeOwned + From<Self>;
    /// What the server answers on success.
    type Response: Serialize + DeserializeOwned;
    /// Name for logs and spans.
    const NAME: &'static str;
    /// Largest response frame the caller accepts.
    const RESPONSE_LIMIT: u32 = MAX_CONTROL_FRAME_BYTES;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_magic_version_and_oversize() {
        let f = encode_frame(&(1u32, "x".to_string()));
        let mut bad = f.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode_frame::<(u32, String)>(&bad, 100),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = f.clone();
        bad[2] = 9;
        assert!(matches!(
            decode_frame::<(u32, String)>(&bad, 100),
            Err(FrameError::Version(9))
        ));
        assert!(matches!(
            decode_frame::<(u32, String)>(&f, 1),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame::<(u32, String)>(&f[..f.len() - 1], 100),
            Err(FrameError::Truncated { .. })
        ));
        let mut garbage = f.clone();
        garbage.truncate(HEADER_LEN);
        garbage.extend_from_slice(&[0xff; 3]);
        garbage[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode_frame::<(u32, String)>(&garbage, 100).is_err());
    }

    proptest! {
        #[test]
        fn frame_round_trip(a in any::<u64>(), s in ".*", v in proptest::collection::vec(any::<u8>(), 0..512)) {
            let msg = (a, s, v);
            let f = encode_frame(&msg);
            let back: (u64, String, Vec<u8>) = decode_frame(&f, MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame::<crate::coord_api::CoordRequest>(&bytes, MAX_FRAME_BYTES);
            let _ = decode_frame::<crate::node_api::NodeRequest>(&bytes, MAX_FRAME_BYTES);
        }
    }
}
