//! Content-defined chunking with FastCDC v2020.
//!
//! Boundaries depend only on the bytes around them, so an edit in the middle of a file
//! changes only the chunks it touches and dedup finds the rest again. The gear table is keyed
//! with a seed derived from the dedup domain key ([`crate::crypto::ChunkCrypto::cdc_seed`]),
//! so chunk boundaries (and therefore chunk sizes) leak less about the content to anyone
//! outside the domain.
//!
//! Streaming keeps one read block of input buffered (a few `max_size` chunks, see
//! [`Chunker`]), whatever the length of the stream; chunks handed out share it.

use std::io::{self, Read};

use std::sync::Arc;

use crate::uploader::pool::BufferPool;
use bytes::Bytes;
use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN, Normalization,
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

/// A read block holds this many maximum-size chunks: a chunk that straddles two blocks is
/// copied into the next one, so this bounds that copy to under 1/3 of the data read, while a
/// block (16 MiB with the defaults) stays well under one batch ([`MAX_BATCH_BYTES`]).
///
/// [`MAX_BATCH_BYTES`]: crate::uploader::MAX_BATCH_BYTES
const BLOCK_CHUNKS: usize = 4;

/// A streaming chunker over any reader; yields each chunk's bytes in order.
///
/// The stream is read in blocks of `BLOCK_CHUNKS` × `max` bytes and every chunk is a
/// reference-counted slice of its block ([`Bytes`]), so handing out a chunk copies nothing;
/// only the unfinished tail of a block is copied into the next one. (fastcdc's `StreamCDC`
/// instead zero-fills a `max`-byte buffer per stream, copies every chunk out and shifts the
/// rest of its buffer down after each chunk, three times the data in memmove.) Cut points
/// are fastcdc's own, so chunks are identical to `StreamCDC`'s and [`chunk_slice`]'s.
pub struct Chunker<R: Read> {
    reader: RetryInterrupted<R>,
    params: ChunkingParams,
    seed: u64,
    /// The current block: bytes read, of which `pos..` are not handed out yet.
    block: Bytes,
    pos: usize,
    eof: bool,
    /// Where blocks come from and go back to, if anywhere.
    pool: Option<Arc<BufferPool>>,
}

impl<R: Read> Chunker<R> {
    /// Chunk `reader` with `params`, keyed by `seed` (per dedup domain).
    pub fn new(reader: R, params: ChunkingParams, seed: u64) -> Self {
        Self {
            reader: RetryInterrupted(reader),
            params,
            seed,
            block: Bytes::new(),
            pos: 0,
            eof: false,
            pool: None,
        }
    }

    /// Take read blocks from `pool`, and give each back once its last chunk is dropped.
    pub(crate) fn with_pool(mut self, pool: Arc<BufferPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Start a new block with the unconsumed tail of the current one, then read until it is
    /// full or the stream ends.
    fn refill(&mut self) -> io::Result<()> {
        let max = self.params.max as usize;
        let tail = &self.block[self.pos..];
        let cap = (BLOCK_CHUNKS * max).max(tail.len() + max);
        let mut buf = match &self.pool {
            Some(pool) => pool.take(cap),
            None => Vec::with_capacity(cap),
        };
        buf.extend_from_slice(tail);
        let want = (cap - buf.len()) as u64;
        // A read error ends the stream: the caller abandons it, so the bytes read before the
        // error need not be chunked.
        (&mut self.reader).take(want).read_to_end(&mut buf)?;
        if buf.len() < cap {
            self.eof = true;
            // A short stream (a small file) does not keep a block-sized buffer busy.
            if buf.len() < cap / 2 {
                let exact = buf.to_vec();
                match &self.pool {
                    Some(pool) => pool.give(buf),
                    None => drop(buf),
                }
                self.block = Bytes::from(exact);
                self.pos = 0;
                return Ok(());
            }
        }
        self.block = match &self.pool {
            Some(pool) => pool.into_bytes(buf),
            None => Bytes::from(buf),
        };
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        let max = self.params.max as usize;
        if !self.eof
            && self.block.len() - self.pos < max
            && let Err(e) = self.refill()
        {
            self.eof = true;
            self.block = Bytes::new();
            self.pos = 0;
            return Some(Err(e));
        }
        let rest = &self.block[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
            rest,
            self.params.min as usize,
            self.params.avg as usize,
            max,
            Normalization::Level1,
            self.seed,
        );
        let (_, end) = cdc.cut(0, rest.len());
        let chunk = self.block.slice(self.pos..self.pos + end);
        self.pos += end;
        Some(Ok(chunk))
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
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    /// Yields at most 1000 bytes per read, then fails once if asked to.
    struct Trickle<'a> {
        data: &'a [u8],
        fail_after: Option<usize>,
        served: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_after.is_some_and(|n| self.served >= n) {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(1000).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.served += n;
            Ok(n)
        }
    }

    /// Chunks must be exactly fastcdc's `StreamCDC` chunks across many block refills and
    /// with short reads, and a read error must surface as an error (then the end).
    #[test]
    fn same_chunks_as_stream_cdc_across_blocks_and_short_reads() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let reference: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            256,
            1024,
            4096,
            Normalization::Level1,
            5,
        )
        .map(|c| c.unwrap().data)
        .collect();
        let trickled: Vec<Vec<u8>> = Chunker::new(
            Trickle {
                data: &data,
                fail_after: None,
                served: 0,
            },
            small(),
            5,
        )
        .map(|c| c.unwrap().to_vec())
        .collect();
        assert_eq!(trickled, reference);
        assert_eq!(chunks(&data, 5), reference);
        // Pooled blocks (reused memory holding old bytes) give the same chunks.
        let pool = BufferPool::new(1 << 20);
        for _ in 0..2 {
            let pooled: Vec<Vec<u8>> = Chunker::new(&data[..], small(), 5)
                .with_pool(pool.clone())
                .map(|c| c.unwrap().to_vec())
                .collect();
            assert_eq!(pooled, reference);
        }
        assert!(pool.idle_bytes() > 0, "blocks were not given back");
        let mut failing = Chunker::new(
            Trickle {
                data: &data,
                fail_after: Some(50_000),
                served: 0,
            },
            small(),
            5,
        );
        let mut ok = 0;
        let err = loop {
            match failing.next() {
                Some(Ok(_)) => ok += 1,
                Some(Err(e)) => break e,
                None => panic!("the read error was lost"),
            }
        };
        assert!(ok > 0 && err.to_string().contains("disk on fire"));
        assert!(failing.next().is_none());
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
