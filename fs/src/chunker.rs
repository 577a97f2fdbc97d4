//! Content-defined chunking with FastCDC v2020.
//!
//! Boundaries depend only on the bytes around them, so an edit in the middle of a file
//! changes only the chunks it touches and dedup finds the rest again. The gear table is keyed
//! with a seed derived from the dedup domain key ([`crate::crypto::ChunkCrypto::cdc_seed`]),
//! so chunk boundaries (and therefore chunk sizes) leak less about the content to anyone
//! outside the domain.
//!
//! Streaming keeps at most `max_size` bytes of input buffered (fastcdc's `StreamCDC`), plus
//! the chunk handed out, whatever the length of the stream.

use std::io::{self, Read};

use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN, Normalization,
    StreamCDC,
};

/// Default smallest chunk: small enough that small files still dedup, large enough that
/// per-chunk metadata stays under 0.01 % of the data.
pub const DEFAULT_MIN_SIZE: u32 = 256 * 1024;
/// Default average chunk (DESIGN.md: the data path).
pub const DEFAULT_AVG_SIZE: u32 = 1024 * 1024;
/// Default largest chunk: 4 × the average keeps the worst-case packet within one frame.
pub const DEFAULT_MAX_SIZE: u32 = 4 * 1024 * 1024;

/// Invalid chunking parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkingError {
    /// A size is odd (fastcdc 5 requires even sizes).
    #[error("chunk {what} size {value} must be even")]
    Odd {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// A size is outside fastcdc's limits.
    #[error("chunk {what} size {value} is outside {lo}..={hi}")]
    OutOfRange {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: u32,
        /// Lowest allowed.
        lo: usize,
        /// Highest allowed.
        hi: usize,
    },
    /// The sizes are not strictly increasing.
    #[error("chunk sizes must satisfy min < avg < max (got {min} / {avg} / {max})")]
    Order {
        /// Minimum.
        min: u32,
        /// Average.
        avg: u32,
        /// Maximum.
        max: u32,
    },
}

/// Validated chunk size bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkingParams {
    min: u32,
    avg: u32,
    max: u32,
}

impl Default for ChunkingParams {
    fn default() -> Self {
        Self {
            min: DEFAULT_MIN_SIZE,
            avg: DEFAULT_AVG_SIZE,
            max: DEFAULT_MAX_SIZE,
        }
    }
}

impl ChunkingParams {
    /// Check the sizes once: even, within fastcdc's limits, and `min < avg < max`.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ChunkingError> {
        for (what, value, lo, hi) in [
            ("minimum", min, MINIMUM_MIN, MINIMUM_MAX),
            ("average", avg, AVERAGE_MIN, AVERAGE_MAX),
            ("maximum", max, MAXIMUM_MIN, MAXIMUM_MAX),
        ] {
            if !(lo..=hi).contains(&(value as usize)) {
                return Err(ChunkingError::OutOfRange {
                    what,
                    value,
                    lo,
                    hi,
                });
            }
            if !value.is_multiple_of(2) {
                return Err(ChunkingError::Odd { what, value });
            }
        }
        if !(min < avg && avg < max) {
            return Err(ChunkingError::Order { min, avg, max });
        }
        Ok(Self { min, avg, max })
    }

    /// Smallest chunk (except the last of a stream).
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Target average chunk.
    pub fn avg(&self) -> u32 {
        self.avg
    }

    /// Largest chunk.
    pub fn max(&self) -> u32 {
        self.max
    }
}

/// Retries reads interrupted by signals; fastcdc would otherwise report them as errors.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

/// A streaming chunker over any reader; yields each chunk's bytes in order.
pub struct Chunker<R: Read> {
    inner: StreamCDC<RetryInterrupted<R>>,
}

impl<R: Read> Chunker<R> {
    /// Chunk `reader` with `params`, keyed by `seed` (per dedup domain).
    pub fn new(reader: R, params: ChunkingParams, seed: u64) -> Self {
        let inner = StreamCDC::with_level_and_seed(
            RetryInterrupted(reader),
            params.min as usize,
            params.avg as usize,
            params.max as usize,
            Normalization::Level1,
            seed,
        );
        Self { inner }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|r| r.map(|c| c.data).map_err(io::Error::from))
    }
}

/// Chunk lengths of an in-memory buffer (tests, benches).
pub fn chunk_slice(data: &[u8], params: ChunkingParams, seed: u64) -> Vec<usize> {
    fastcdc::v2020::FastCDC::with_level_and_seed(
        data,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
        seed,
    )
    .map(|c| c.length)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkingParams {
        ChunkingParams::new(256, 1024, 4096).unwrap()
    }

    fn chunks(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        Chunker::new(data, small(), seed)
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn validation_rejects_bad_sizes() {
        assert!(ChunkingParams::new(256 * 1024, 1 << 20, 4 << 20).is_ok());
        assert!(matches!(
            ChunkingParams::new(257, 1024, 4096),
            Err(ChunkingError::Odd { .. })
        ));
        assert!(matches!(
            ChunkingParams::new(32, 1024, 4096),
            Err(ChunkingError::OutOfRange {
                what: "minimum",
                ..
            })
        ));
        assert!(matches!(
            ChunkingParams::new(256, 1024, 32 << 20),
            Err(ChunkingError::OutOfRange {
                what: "maximum",
                ..
            })
        ));
        assert!(matches!(
            ChunkingParams::new(2048, 1024, 4096),
            Err(ChunkingError::Order { .. })
        ));
        assert_eq!(ChunkingParams::default().avg(), DEFAULT_AVG_SIZE);
    }

    #[test]
    fn seed_changes_boundaries_and_edits_resynchronise() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_ne!(
            chunk_slice(&data, small(), 1),
            chunk_slice(&data, small(), 2)
        );
        // An insertion near the start leaves most later chunks unchanged.
        let mut edited = data.clone();
        edited.splice(1000..1000, [7u8; 10]);
        let a = chunks(&data, 9);
        let b = chunks(&edited, 9);
        let common = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            common * 10 >= a.len() * 8,
            "only {common} of {} chunks survive",
            a.len()
        );
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunks(&[], 0).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn deterministic_bounded_and_lossless(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            seed in any::<u64>(),
        ) {
            let a = chunks(&data, seed);
            let b = chunks(&data, seed);
            prop_assert_eq!(&a, &b);
            let lens: Vec<usize> = a.iter().map(Vec::len).collect();
            prop_assert_eq!(&lens, &chunk_slice(&data, small(), seed));
            for (i, c) in a.iter().enumerate() {
                prop_assert!(c.len() <= 4096);
                if i + 1 < a.len() {
                    prop_assert!(c.len() >= 256);
                }
            }
            prop_assert_eq!(a.concat(), data);
        }
    }
}
