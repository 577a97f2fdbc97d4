//! Progress of long work (`backup`, `restore`), reported through a trait so that the library
//! stays free of terminal code: the `gridback` tool draws a bar, tests count, scripts ignore.

use std::io::Read;
use std::sync::Arc;

/// Receives progress. Every method has an empty default, and may be called from several
/// threads at once.
pub trait Progress: Send + Sync {
    /// More work was found: `files` more files holding `bytes` more bytes.
    fn found(&self, files: u64, bytes: u64) {
        let _ = (files, bytes);
    }
    /// Everything there is to do has been found (the totals are final).
    fn found_all(&self) {}
    /// `bytes` more bytes of file content are done (stored, skipped or restored).
    fn advanced(&self, bytes: u64) {
        let _ = bytes;
    }
    /// A phase started (`"walking"`, `"sealing"`, `"fetching tree"`…).
    fn phase(&self, what: &str) {
        let _ = what;
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A reader that reports every byte it yields as progress.
pub struct ProgressReader<R> {
    inner: R,
    progress: Arc<dyn Progress>,
}

impl<R> ProgressReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R, progress: Arc<dyn Progress>) -> Self {
        Self { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advanced(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Progress for Count {
        fn advanced(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn progress_reader_reports_every_byte() {
        let count = Arc::new(Count::default());
        let mut r = ProgressReader::new(&[7u8; 10_000][..], count.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(count.0.load(Ordering::Relaxed), 10_000);
    }
}
