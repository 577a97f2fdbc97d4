//! Live-adjustable throttles: an async token bucket (bandwidth) and a resizable concurrency
//! limit (transfers, CPU workers). Both can change their setting at any time, and waiters pick
//! the change up at once; `None` means unlimited.
//!
//! Shared by the client (its own limits) and the storage node (per-client limits); behind the
//! `transport` feature because it needs tokio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Burst of a token bucket, as a fraction of one second of its rate: a quarter second keeps a
/// transfer's rate close to the limit over any window of a second or more, while a packet
/// (up to a few MiB) still goes out in one piece at any useful rate.
const BURST_SECONDS: f64 = 0.25;

/// Async token bucket counting bytes. Requests larger than the burst are allowed: they take
/// the bucket into debt, and the next request waits until the debt is paid off, so the long
/// run rate equals the limit whatever the request sizes.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    inner: Arc<BucketInner>,
}

#[derive(Debug, Default)]
struct BucketInner {
    state: Mutex<BucketState>,
    /// Woken when the rate changes, so a waiter recomputes its wait.
    changed: Notify,
    /// Bytes taken so far, limited or not (what the bucket has charged).
    taken: AtomicU64,
}

#[derive(Debug, Default)]
struct BucketState {
    /// Bytes per second; `None` is unlimited.
    rate: Option<u64>,
    /// Available bytes (negative: debt).
    tokens: f64,
    /// Last refill.
    last: Option<Instant>,
}

impl BucketState {
    fn burst(rate: u64) -> f64 {
        (rate as f64 * BURST_SECONDS).max(1.0)
    }

    fn refill(&mut self, rate: u64, now: Instant) {
        let last = self.last.unwrap_or(now);
        let add = now.saturating_duration_since(last).as_secs_f64() * rate as f64;
        self.tokens = (self.tokens + add).min(Self::burst(rate));
        self.last = Some(now);
    }
}

impl TokenBucket {
    /// A bucket with `rate` bytes per second (`None`: unlimited), starting full.
    pub fn new(rate: Option<u64>) -> Self {
        let b = Self::default();
        b.set_rate(rate);
        b
    }

    /// The rate in force.
    pub fn rate(&self) -> Option<u64> {
        self.lock().rate
    }

    /// Change the rate; waiters pick it up at once. A new limit starts with a full burst;
    /// debt from before is kept (it was taken at the old rate).
    pub fn set_rate(&self, rate: Option<u64>) {
        let rate = rate.filter(|r| *r > 0);
        {
            let mut s = self.lock();
            if s.rate == rate {
                return;
            }
            let now = Instant::now();
            match (s.rate, rate) {
                (Some(old), Some(_)) => s.refill(old, now),
                (None, Some(new)) => s.tokens = BucketState::burst(new),
                _ => {}
            }
            if let Some(new) = rate {
                s.tokens = s.tokens.min(BucketState::burst(new));
            }
            s.rate = rate;
            s.last = Some(now);
        }
        self.inner.changed.notify_waiters();
    }

    /// Bytes taken from this bucket so far (with or without a rate), i.e. what it has
    /// charged; for tests and statistics.
    pub fn taken_bytes(&self) -> u64 {
        self.inner.taken.load(Ordering::Relaxed)
    }

    /// Wait until `bytes` may be sent (or received), and take them.
    pub async fn acquire(&self, bytes: u64) {
        self.wait_for(bytes).await;
        self.inner.taken.fetch_add(bytes, Ordering::Relaxed);
    }

    async fn wait_for(&self, bytes: u64) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                let Some(rate) = s.rate else { return };
                s.refill(rate, Instant::now());
                if s.tokens >= 0.0 {
                    s.tokens -= bytes as f64;
                    return;
                }
                Duration::from_secs_f64(-s.tokens / rate as f64)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut changed => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A concurrency limit whose size can change while permits are out. Shrinking never revokes
/// a permit: new ones are handed out only once the count in use is below the new size.
#[derive(Debug, Clone, Default)]
pub struct ResizableLimit {
    inner: Arc<LimitInner>,
}

#[derive(Debug, Default)]
struct LimitInner {
    state: Mutex<LimitState>,
    /// Woken when a permit is returned or the limit changes.
    changed: Notify,
}

#[derive(Debug, Default)]
struct LimitState {
    /// Permits at most; `None` is unlimited.
    limit: Option<usize>,
    in_use: usize,
}

/// One unit of a [`ResizableLimit`], returned on drop.
#[derive(Debug)]
pub struct LimitPermit {
    inner: Arc<LimitInner>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        {
            let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.in_use = s.in_use.saturating_sub(1);
        }
        self.inner.changed.notify_waiters();
    }
}

impl ResizableLimit {
    /// A limit of `limit` permits (`None`: unlimited; 0 is taken as 1, so work never stalls
    /// for good).
    pub fn new(limit: Option<usize>) -> Self {
        let l = Self::default();
        l.set_limit(limit);
        l
    }

    /// Change the limit; waiters pick it up at once.
    pub fn set_limit(&self, limit: Option<usize>) {
        let limit = limit.map(|n| n.max(1));
        {
            let mut s = self.lock();
            if s.limit == limit {
                return;
            }
            s.limit = limit;
        }
        self.inner.changed.notify_waiters();
    }

    /// The limit in force.
    pub fn limit(&self) -> Option<usize> {
        self.lock().limit
    }

    /// Permits currently out.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Wait for a permit.
    pub async fn acquire(&self) -> LimitPermit {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.limit.is_none_or(|l| s.in_use < l) {
                    s.in_use += 1;
                    return LimitPermit {
                        inner: self.inner.clone(),
                    };
                }
            }
            changed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time (paused clock) to push `total` bytes through `b` in `piece`-byte requests.
    async fn time_to_send(b: &TokenBucket, total: u64, piece: u64) -> Duration {
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            b.acquire(piece).await;
            sent += piece;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_holds_the_rate_over_many_requests() {
        // 5 MB/s, 50 MB in 256 KiB packets: about 10 s (minus the first burst).
        let b = TokenBucket::new(Some(5_000_000));
        let t = time_to_send(&b, 50_000_000, 256 * 1024).await;
        assert!(
            t >= Duration::from_millis(9_500) && t <= Duration::from_millis(10_200),
            "{t:?}"
        );
        assert_eq!(
            b.taken_bytes(),
            50_000_000u64.div_ceil(256 * 1024) * 256 * 1024
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_bucket_never_waits_and_large_requests_take_debt() {
        let b = TokenBucket::new(None);
        assert_eq!(time_to_send(&b, 1 << 30, 1 << 20).await, Duration::ZERO);
        assert_eq!(b.taken_bytes(), 1 << 30, "unlimited buckets count too");
        // One request of 4 s worth of bytes passes at once; the next waits out the debt.
        let b = TokenBucket::new(Some(1000));
        let start = Instant::now();
        b.acquire(4250).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.acquire(1).await;
        let t = start.elapsed();
        assert!(
            t >= Duration::from_millis(3_990) && t <= Duration::from_millis(4_100),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_reaches_a_waiter() {
        let b = TokenBucket::new(Some(1000));
        b.acquire(250 + 100_000).await; // 100 s of debt at 1000 B/s
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                b.acquire(1).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.set_rate(None);
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // And a faster limit shortens the wait: 1 s of debt at 1 MB/s instead of 1000 s.
        b.set_rate(Some(1000));
        b.acquire(1_000_250).await;
        b.set_rate(Some(1_000_000));
        let start = Instant::now();
        b.acquire(1).await;
        assert!(
            start.elapsed() <= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(b.rate(), Some(1_000_000));
    }

    #[tokio::test(start_paused = true)]
    async fn limit_bounds_concurrency_and_resizes_live() {
        let l = ResizableLimit::new(Some(2));
        let a = l.acquire().await;
        let b = l.acquire().await;
        assert_eq!(l.in_use(), 2);
        let third = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!third.is_finished(), "a third permit beyond the limit");
        // Growing the limit lets it through without any permit returned.
        l.set_limit(Some(3));
        let c = third.await.unwrap();
        assert_eq!(l.in_use(), 3);
        // Shrinking keeps permits out; a new one waits until in_use < limit.
        l.set_limit(Some(1));
        drop(a);
        drop(c);
        let fourth = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !fourth.is_finished(),
            "permit handed out above the shrunk limit"
        );
        drop(b);
        let _d = fourth.await.unwrap();
        assert_eq!(l.in_use(), 1);
        l.set_limit(None);
        let _many: Vec<_> = acquire_n(&l, 50).await;
        assert_eq!(l.in_use(), 51);
        assert_eq!(ResizableLimit::new(Some(0)).limit(), Some(1));
    }

    async fn acquire_n(l: &ResizableLimit, n: usize) -> Vec<LimitPermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(l.acquire().await);
        }
        v
    }
}
