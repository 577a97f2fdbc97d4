//! A chunk's stored form: compress, encrypt, pad (and the reverse, with verification).
//!
//! ```text
//! padded blob:
//! offset  size  field
//! 0       4     sealed length s (u32 LE)
//! 4       s     sealed: XChaCha20-Poly1305(blob) || tag   (crate::crypto)
//! 4+s     …     zero padding up to the size class
//!
//! blob (inside the encryption): flags u8 | plaintext length u32 LE | body   (crate::compress)
//! ```
//!
//! **Size classes.** Storage nodes and the network see only padded sizes. A padded size is
//! `4 + s` rounded up to a multiple of `max(4096, 2^(floor(log2(4 + s)) - 4))`: 4 KiB steps
//! for blobs under 64 KiB, then 16 steps per power of two, so padding costs at most 1/16
//! (6.25 %) and a node learns a chunk's size only to within that step, which blurs the
//! size-sequence fingerprints of known files. The erasure coder then zero-extends the padded
//! blob to `k × shard_bytes`.

use gridback_proto::ChunkId;

use crate::compress::{self, CompressError, Level};
use crate::crypto::{ChunkCrypto, CryptoError, SEAL_OVERHEAD};
use crate::erasure;
use crate::uploader::pool::BufferPool;

/// Length prefix size.
const PREFIX_LEN: usize = 4;
/// Smallest padding step: one filesystem block, so tiny chunks all look alike.
const MIN_GRANULE: usize = 4096;
/// Steps per power of two (2^4 = 16, i.e. at most 6.25 % overhead).
const CLASS_BITS: u32 = 4;

/// Errors turning a chunk into its stored form or back.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Compression or decompression failed.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// Encryption or decryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The padded blob's length prefix is impossible.
    #[error("malformed padded blob: {0}")]
    Padding(&'static str),
    /// The decrypted plaintext does not hash to the chunk id.
    #[error("decoded data does not match chunk id {expected}")]
    IdMismatch {
        /// The id asked for.
        expected: ChunkId,
    },
    /// The plaintext length differs from the one recorded in the file.
    #[error("chunk {id} has {actual} bytes, expected {expected}")]
    LengthMismatch {
        /// Chunk.
        id: ChunkId,
        /// Recorded length.
        expected: u32,
        /// Decoded length.
        actual: usize,
    },
}

/// The padded size for a sealed blob of `sealed_len` bytes.
pub fn padded_len(sealed_len: usize) -> usize {
    let total = PREFIX_LEN + sealed_len;
    let log2 = usize::BITS - 1 - total.leading_zeros();
    let granule = MIN_GRANULE.max(1usize << log2.saturating_sub(CLASS_BITS));
    total.div_ceil(granule) * granule
}

/// Length-prefix and pad a sealed blob to its size class.
pub fn pad(sealed: &[u8]) -> Result<Vec<u8>, PacketError> {
    let len = u32::try_from(sealed.len()).map_err(|_| PacketError::Padding("blob too large"))?;
    let mut out = Vec::with_capacity(padded_len(sealed.len()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(sealed);
    out.resize(padded_len(sealed.len()), 0);
    Ok(out)
}

/// The sealed blob inside a padded one (trailing bytes beyond the size class, such as the
/// erasure coder's zero fill, are ignored).
pub fn unpad(padded: &[u8]) -> Result<&[u8], PacketError> {
    let prefix: [u8; PREFIX_LEN] = padded
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(PacketError::Padding("shorter than its length prefix"))?;
    let len = u32::from_le_bytes(prefix) as usize;
    padded
        .get(PREFIX_LEN..PREFIX_LEN + len)
        .ok_or(PacketError::Padding("length prefix past the end"))
}

/// Compress, encrypt and pad one chunk whose id is `id`. CPU-bound: call it from a blocking
/// thread.
pub fn seal_chunk(
    crypto: &ChunkCrypto,
    level: Level,
    id: &ChunkId,
    plaintext: &[u8],
) -> Result<Vec<u8>, PacketError> {
    seal_chunk_for(crypto, level, id, plaintext, None, None)
}

/// [`seal_chunk`] into one buffer, allocated once: the blob is compressed into it (or copied),
/// encrypted in place, length-prefixed and padded in place. With an erasure hint `(k, m)` the
/// buffer also has room for the erasure coder's zero fill and parity
/// ([`erasure::encode_in_place`]), so a chunk's packets never need another allocation. The
/// buffer comes from `pool` when one is given.
pub fn seal_chunk_for(
    crypto: &ChunkCrypto,
    level: Level,
    id: &ChunkId,
    plaintext: &[u8],
    erasure_hint: Option<(u8, u8)>,
    pool: Option<&BufferPool>,
) -> Result<Vec<u8>, PacketError> {
    let mut buf = compress::encode_blob_with(plaintext, level, |blob_len| {
        let padded = padded_len(blob_len + SEAL_OVERHEAD);
        let cap = match erasure_hint {
            Some((k, m)) => erasure::encoded_len(padded, k, m).max(padded),
            None => padded,
        };
        let mut buf = match pool {
            Some(pool) => pool.take(cap),
            None => Vec::with_capacity(cap),
        };
        buf.extend_from_slice(&[0; PREFIX_LEN]);
        buf
    })?;
    let tag = crypto.seal_in_place(id, &mut buf[PREFIX_LEN..])?;
    buf.extend_from_slice(&tag);
    let sealed_len = buf.len() - PREFIX_LEN;
    let len = u32::try_from(sealed_len).map_err(|_| PacketError::Padding("blob too large"))?;
    buf[..PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    buf.resize(padded_len(sealed_len), 0);
    Ok(buf)
}

/// Un-pad, decrypt, decompress and verify one chunk. CPU-bound: call it from a blocking
/// thread. `expected_len` is the length recorded in the file, when known.
pub fn open_chunk(
    crypto: &ChunkCrypto,
    id: &ChunkId,
    padded: &[u8],
    expected_len: Option<u32>,
) -> Result<Vec<u8>, PacketError> {
    let blob = crypto.open(id, unpad(padded)?)?;
    let plaintext = compress::decode_blob(&blob)?;
    if crypto.chunk_id(&plaintext) != *id {
        return Err(PacketError::IdMismatch { expected: *id });
    }
    if let Some(expected) = expected_len.filter(|l| *l as usize != plaintext.len()) {
        return Err(PacketError::LengthMismatch {
            id: *id,
            expected,
            actual: plaintext.len(),
        });
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClientKeys;
    use proptest::prelude::*;

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn size_classes_are_coarse_and_cheap() {
        assert_eq!(padded_len(0), 4096);
        assert_eq!(padded_len(4092), 4096);
        assert_eq!(padded_len(4093), 8192);
        assert_eq!(padded_len(1 << 20), (1 << 20) + 65536);
        assert_eq!(padded_len((1 << 20) - 4), 1 << 20);
        for s in [1usize, 5000, 70_000, 1_000_000, 3_999_999, 4_200_000] {
            let p = padded_len(s);
            assert!(p >= s + 4);
            assert!(p <= (s + 4) + (s + 4) / 16 + 4096, "{s} -> {p}");
        }
        // Nearby sizes share a class.
        assert_eq!(padded_len(1_000_000), padded_len(1_010_000));
    }

    #[test]
    fn seal_open_round_trip_and_verification() {
        let crypto = ChunkCrypto::new(&ClientKeys::generate().domain);
        let data = b"chunk contents ".repeat(1000);
        let id = crypto.chunk_id(&data);
        let padded = seal_chunk(&crypto, Level::default(), &id, &data).unwrap();
        assert_eq!(padded.len() % 4096, 0);
        // The one-buffer path is the same bytes as seal-then-pad, with room for the packets.
        let blob = compress::encode_blob(&data, Level::default()).unwrap();
        assert_eq!(padded, pad(&crypto.seal(&id, &blob).unwrap()).unwrap());
        for text in [
            &data[..],
            &[0x5a; 300_000][..],
            &noise(300_000)[..],
            &[][..],
        ] {
            let id = crypto.chunk_id(text);
            let pool = BufferPool::new(1 << 30);
            pool.give(vec![0xee; 8 << 20]);
            let roomy = seal_chunk_for(
                &crypto,
                Level::default(),
                &id,
                text,
                Some((4, 2)),
                Some(&pool),
            )
            .unwrap();
            let plain = seal_chunk(&crypto, Level::default(), &id, text).unwrap();
            assert_eq!(roomy, plain);
            assert!(roomy.capacity() >= erasure::encoded_len(roomy.len(), 4, 2));
            assert_eq!(open_chunk(&crypto, &id, &roomy, None).unwrap(), text);
        }
        assert_eq!(
            open_chunk(&crypto, &id, &padded, Some(data.len() as u32)).unwrap(),
            data
        );
        // Erasure zero fill after the class is ignored.
        let mut filled = padded.clone();
        filled.resize(padded.len() + 10, 0);
        assert_eq!(open_chunk(&crypto, &id, &filled, None).unwrap(), data);
        assert!(matches!(
            open_chunk(&crypto, &id, &padded, Some(3)),
            Err(PacketError::LengthMismatch { .. })
        ));
        let other = ChunkCrypto::new(&ClientKeys::generate().domain);
        assert!(matches!(
            open_chunk(&other, &id, &padded, None),
            Err(PacketError::Crypto(CryptoError::Decrypt))
        ));
        // A blob sealed under a wrong id claim decrypts only under that id, and then fails
        // verification.
        let wrong = ChunkId([3; 32]);
        let forged = seal_chunk(&crypto, Level::default(), &wrong, &data).unwrap();
        assert!(matches!(
            open_chunk(&crypto, &wrong, &forged, None),
            Err(PacketError::IdMismatch { .. })
        ));
        assert!(matches!(unpad(&[1, 0]), Err(PacketError::Padding(_))));
        assert!(matches!(
            unpad(&[9, 0, 0, 0, 1]),
            Err(PacketError::Padding(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pad_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let p = pad(&data).unwrap();
            prop_assert_eq!(p.len(), padded_len(data.len()));
            prop_assert_eq!(unpad(&p).unwrap(), &data[..]);
        }
    }
}
