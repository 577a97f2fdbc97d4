//! A small pool of chunk-sized buffers for the write path.
//!
//! Every chunk needs a fresh chunk-sized buffer (read blocks, sealed blobs with their
//! packets) that lives for well under a second. Freshly allocated memory is faulted in page
//! by page (the kernel zeroes each page first: `clear_page` was a fifth of the mount's CPU),
//! and memory the allocator gets back is only returned to the OS after its purge delay, so
//! the process's resident size grows with the allocation *rate*, not with what is live.
//! Reusing a bounded set of buffers avoids both: a returned buffer is already resident and is
//! handed to the next chunk.
//!
//! Buffers leave the pool as `Vec<u8>` and come back when dropped as [`Bytes`] made by
//! [`BufferPool::into_bytes`] (when the last packet slice is dropped, after its put is
//! acknowledged), or through [`BufferPool::give`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes of idle buffers a pool keeps at most: about two batches of sealed packets at the
/// default 4 + 2 coding; anything beyond is freed as usual.
pub const POOL_MAX_IDLE_BYTES: usize = 96 * 1024 * 1024;

/// A bounded pool of idle buffers, shared by every concurrent store of one uploader.
#[derive(Debug)]
pub struct BufferPool {
    idle: Mutex<Idle>,
    max_idle_bytes: usize,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_idle_bytes` of idle buffers.
    pub fn new(max_idle_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            max_idle_bytes,
        })
    }

    /// An empty buffer with at least `capacity` bytes of room: the smallest idle one that is
    /// large enough, else a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let best = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = idle.buffers.swap_remove(i);
                idle.bytes -= b.capacity();
                b
            }
            None => {
                drop(idle);
                Vec::with_capacity(capacity)
            }
        }
    }

    /// Return a buffer; kept if the pool has room, else freed. When full, a larger buffer
    /// replaces the smallest idle one (large buffers fit every chunk).
    pub fn give(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > self.max_idle_bytes {
            return;
        }
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle.bytes + cap > self.max_idle_bytes {
            let smallest = idle
                .buffers
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, b)| (i, b.capacity()));
            match smallest {
                Some((i, small)) if small < cap => {
                    idle.buffers.swap_remove(i);
                    idle.bytes -= small;
                }
                _ => return,
            }
        }
        idle.bytes += cap;
        idle.buffers.push(buf);
    }

    /// Freeze `buf` into [`Bytes`] whose storage comes back to this pool when the last
    /// reference to it is dropped.
    pub fn into_bytes(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Bytes of idle buffers held.
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// The owner behind a pooled [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_drops_and_the_pool_stays_bounded() {
        let pool = BufferPool::new(10_000);
        let mut b = pool.take(4000);
        b.extend_from_slice(&[7; 3000]);
        let ptr = b.as_ptr();
        let bytes = pool.into_bytes(b);
        let (x, y) = (bytes.slice(0..1000), bytes.slice(1000..3000));
        drop(bytes);
        drop(x);
        assert_eq!(pool.idle_bytes(), 0, "returned while a slice is alive");
        assert_eq!(y[0], 7);
        drop(y);
        assert!(pool.idle_bytes() >= 4000);
        // The same memory is handed out again, empty, for any request it can hold.
        let again = pool.take(3500);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
        // Too large for what is idle: a new buffer.
        pool.give(again);
        assert!(pool.take(50_000).capacity() >= 50_000);
        // Bounded: small buffers make room for a larger one, never the reverse.
        let pool = BufferPool::new(10_000);
        for _ in 0..4 {
            pool.give(Vec::with_capacity(3000));
        }
        assert!(pool.idle_bytes() <= 10_000);
        pool.give(Vec::with_capacity(6000));
        assert!(pool.idle_bytes() <= 10_000);
        assert!(pool.take(6000).capacity() >= 6000);
        pool.give(Vec::with_capacity(20_000));
        assert!(pool.idle_bytes() <= 10_000);
    }
}
