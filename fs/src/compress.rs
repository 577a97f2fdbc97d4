//! zstd compression of chunks, skipped for chunks that do not compress.
//!
//! The blob that gets encrypted:
//!
//! ```text
//! offset  size  field
//! 0       1     flags: bit 0 = body is zstd-compressed; other bits zero
//! 1       4     plaintext length (u32 LE)
//! 5       n     body: the plaintext, or its zstd frame
//! ```
//!
//! zstd is the most expensive stage of the write path (dependency-notes.md), so a chunk is
//! first sampled: its first [`SAMPLE_BYTES`] are compressed at level 1, and if that saves
//! less than 5 % the chunk is stored raw. Compression contexts are kept per thread and reused.

use std::cell::RefCell;

/// Flag bit: the body is a zstd frame.
const FLAG_ZSTD: u8 = 1;
/// Header size: flags and the plaintext length.
pub const BLOB_HEADER_LEN: usize = 5;
/// Bytes sampled to decide whether a chunk compresses: large enough to be representative of
/// a 1 MiB chunk, small enough to cost ~6 % of compressing the whole chunk.
pub const SAMPLE_BYTES: usize = 64 * 1024;
/// Store raw when the sample compresses to more than this fraction of its size.
const INCOMPRESSIBLE_RATIO: f64 = 0.95;
/// Level used for the sample (the fastest).
const SAMPLE_LEVEL: i32 = 1;
/// Default level: the best ratio per CPU second on mixed data in dependency-notes.md.
pub const DEFAULT_LEVEL: i32 = 3;
/// Largest plaintext a blob may announce; more than any valid chunk (16 MiB is fastcdc's
/// maximum), so a corrupt header cannot make us allocate gigabytes.
const MAX_PLAINTEXT: usize = 16 * 1024 * 1024;

/// Errors of compression and decompression.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// zstd failed.
    #[error("zstd: {0}")]
    Zstd(#[source] std::io::Error),
    /// The blob is malformed.
    #[error("malformed chunk blob: {0}")]
    Malformed(&'static str),
    /// The level is outside zstd's range.
    #[error("compression level {0} is outside 1..=22")]
    BadLevel(i32),
    /// A chunk is larger than a blob can describe.
    #[error("chunk of {0} bytes is too large")]
    TooLarge(usize),
}

/// A validated zstd level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level(i32);

impl Level {
    /// Check a level (1..=22).
    pub fn new(level: i32) -> Result<Self, CompressError> {
        if (1..=22).contains(&level) {
            Ok(Self(level))
        } else {
            Err(CompressError::BadLevel(level))
        }
    }

    /// The zstd level.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl Default for Level {
    fn default() -> Self {
        Self(DEFAULT_LEVEL)
    }
}

thread_local! {
    /// Per-thread compressors: (level, context). Index 0 samples, index 1 compresses.
    static COMPRESSORS: RefCell<[Option<(i32, zstd::bulk::Compressor<'static>)>; 2]> =
        const { RefCell::new([None, None]) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// Per-thread output buffer of the compressor, kept between chunks.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn with_compressor<T>(
    slot: usize,
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> Result<T, CompressError> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let entry = &mut c[slot];
        if entry.as_ref().is_none_or(|(l, _)| *l != level) {
            *entry = Some((
                level,
                zstd::bulk::Compressor::new(level).map_err(CompressError::Zstd)?,
            ));
        }
        let (_, comp) = entry.as_mut().expect("invariant: set just above");
        f(comp).map_err(CompressError::Zstd)
    })
}

/// Whether the sample says the chunk is worth compressing.
fn looks_compressible(plaintext: &[u8]) -> Result<bool, CompressError> {
    let sample = &plaintext[..plaintext.len().min(SAMPLE_BYTES)];
    if sample.is_empty() {
        return Ok(false);
    }
    let out = with_compressor(0, SAMPLE_LEVEL, |c| c.compress(sample))?;
    Ok((out.len() as f64) <= sample.len() as f64 * INCOMPRESSIBLE_RATIO)
}

/// Build the blob for a chunk: compressed when that pays, raw otherwise.
pub fn encode_blob(plaintext: &[u8], level: Level) -> Result<Vec<u8>, CompressError> {
    encode_blob_with(plaintext, level, Vec::with_capacity)
}

/// Build the blob for a chunk and append it to a buffer that `alloc(blob_len)` returns once
/// the blob's exact size is known (the buffer may already hold a prefix and should have room
/// for what the caller appends later), so the caller sizes its buffer exactly. A compressed
/// body is made in a per-thread scratch buffer that is reused, so compressing does not
/// allocate (and fault in) a fresh chunk-sized buffer per chunk.
pub fn encode_blob_with(
    plaintext: &[u8],
    level: Level,
    alloc: impl FnOnce(usize) -> Vec<u8>,
) -> Result<Vec<u8>, CompressError> {
    let len = u32::try_from(plaintext.len())
        .ok()
        .filter(|l| *l as usize <= MAX_PLAINTEXT)
        .ok_or(CompressError::TooLarge(plaintext.len()))?;
    // Called exactly once, on whichever path below builds the blob.
    let mut alloc = Some(alloc);
    let mut alloc = |n| alloc.take().expect("invariant: one blob per call")(n);
    if looks_compressible(plaintext)? {
        let done = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let bound = zstd::zstd_safe::compress_bound(plaintext.len());
            scratch.clear();
            scratch.reserve(bound);
            let n = with_compressor(1, level.get(), |c| {
                c.compress_to_buffer(plaintext, &mut *scratch)
            })?;
            // The sample can mislead; never store a compressed body larger than the raw one.
            if n >= plaintext.len() {
                return Ok::<_, CompressError>(None);
            }
            let mut out = alloc(BLOB_HEADER_LEN + n);
            out.push(FLAG_ZSTD);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&scratch[..n]);
            Ok(Some(out))
        })?;
        if let Some(out) = done {
            return Ok(out);
        }
    }
    let mut out = alloc(BLOB_HEADER_LEN + plaintext.len());
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(plaintext);
    Ok(out)
}

/// Whether a blob's body is compressed (for statistics and tests).
pub fn is_compressed(blob: &[u8]) -> bool {
    blob.first().is_some_and(|f| f & FLAG_ZSTD != 0)
}

/// Recover the plaintext from a blob.
pub fn decode_blob(blob: &[u8]) -> Result<Vec<u8>, CompressError> {
    if blob.len() < BLOB_HEADER_LEN {
        return Err(CompressError::Malformed("shorter than its header"));
    }
    let flags = blob[0];
    let len = u32::from_le_bytes([blob[1], blob[2], blob[3], blob[4]]) as usize;
    let body = &blob[BLOB_HEADER_LEN..];
    if len > MAX_PLAINTEXT {
        return Err(CompressError::Malformed("plaintext length too large"));
    }
    match flags {
        0 => {
            if body.len() != len {
                return Err(CompressError::Malformed(
                    "raw body length differs from header",
                ));
            }
            Ok(body.to_vec())
        }
        FLAG_ZSTD => {
            let out = DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new().map_err(CompressError::Zstd)?);
                }
                let d = d.as_mut().expect("invariant: set just above");
                d.decompress(body, len).map_err(CompressError::Zstd)
            })?;
            if out.len() != len {
                return Err(CompressError::Malformed(
                    "decompressed length differs from header",
                ));
            }
            Ok(out)
        }
        _ => Err(CompressError::Malformed("unknown flags")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        getrandom::fill(&mut v).unwrap();
        v
    }

    #[test]
    fn text_is_compressed_random_is_not() {
        let text = b"All work and no play makes Jack a dull boy. ".repeat(5000);
        let blob = encode_blob(&text, Level::default()).unwrap();
        assert!(is_compressed(&blob));
        assert!(blob.len() < text.len() / 10);
        assert_eq!(decode_blob(&blob).unwrap(), text);

        let noise = random(300_000);
        let blob = encode_blob(&noise, Level::default()).unwrap();
        assert!(!is_compressed(&blob));
        assert_eq!(blob.len(), noise.len() + BLOB_HEADER_LEN);
        assert_eq!(decode_blob(&blob).unwrap(), noise);
    }

    #[test]
    fn empty_and_tiny_chunks_round_trip_at_any_level() {
        for level in [1, 3, 19] {
            for data in [vec![], vec![0u8], vec![0u8; 100_000]] {
                let blob = encode_blob(&data, Level::new(level).unwrap()).unwrap();
                assert_eq!(decode_blob(&blob).unwrap(), data);
            }
        }
        assert!(matches!(Level::new(0), Err(CompressError::BadLevel(0))));
        assert!(matches!(Level::new(23), Err(CompressError::BadLevel(23))));
    }

    #[test]
    fn malformed_blobs_are_rejected() {
        assert!(decode_blob(&[0, 1]).is_err());
        assert!(decode_blob(&[0, 5, 0, 0, 0, 1]).is_err());
        assert!(decode_blob(&[9, 0, 0, 0, 0]).is_err());
        assert!(decode_blob(&[1, 255, 255, 255, 255]).is_err());
        let mut blob = encode_blob(&[7u8; 10_000], Level::default()).unwrap();
        blob[1] = 1; // wrong length
        assert!(decode_blob(&blob).is_err());
    }
}
