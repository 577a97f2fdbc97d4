//! A [`Ticket`] follows one `store` call through the shared batches: how many of its chunks
//! are still on their way, what they cost, and the first error any of them met. Its chunks
//! can travel in many batches, and a batch carries chunks of many tickets.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::grid::{GridError, StoredData};

/// What the chunks of one store did, once all of them are committed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TicketStats {
    /// Chunks uploaded (not stored before).
    pub new_chunks: u64,
    /// Their plaintext bytes.
    pub new_bytes: u64,
    /// Bytes sent to nodes (packets, parity included).
    pub uploaded_bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Chunks handed to the engine and not finished yet.
    pending: usize,
    /// No more chunks will be added.
    closed: bool,
    error: Option<GridError>,
    stats: TicketStats,
}

/// One store's progress through the engine.
#[derive(Debug)]
pub(super) struct Ticket {
    /// The snapshot its chunks are committed for.
    pub snapshot: String,
    state: Mutex<State>,
    done: Notify,
}

impl Ticket {
    pub(super) fn new(snapshot: String) -> Self {
        Self {
            snapshot,
            state: Mutex::default(),
            done: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chunk of this store enters the engine.
    pub(super) fn add(&self) {
        self.lock().pending += 1;
    }

    /// Whether a chunk of this store failed already (the submitter stops early).
    pub(super) fn failed(&self) -> bool {
        self.lock().error.is_some()
    }

    /// A chunk is committed (its share of the stats) or failed.
    pub(super) fn finish(&self, outcome: Result<TicketStats, &GridError>) {
        let mut s = self.lock();
        s.pending = s.pending.saturating_sub(1);
        match outcome {
            Ok(st) => {
                s.stats.new_chunks += st.new_chunks;
                s.stats.new_bytes += st.new_bytes;
                s.stats.uploaded_bytes += st.uploaded_bytes;
            }
            Err(e) => {
                if s.error.is_none() {
                    s.error = Some(e.duplicate());
                }
            }
        }
        if s.pending == 0 && s.closed {
            self.done.notify_waiters();
        }
    }

    /// No more chunks will be added.
    pub(super) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        if s.pending == 0 {
            self.done.notify_waiters();
        }
    }

    /// Wait until every chunk is finished (after [`Ticket::close`]); the stats, or the first
    /// error.
    pub(super) async fn wait(&self) -> Result<TicketStats, GridError> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.closed && s.pending == 0 {
                    return match s.error.take() {
                        Some(e) => Err(e),
                        None => Ok(s.stats),
                    };
                }
            }
            notified.await;
        }
    }
}

impl TicketStats {
    /// Add these stats to a store's result.
    pub(super) fn add_to(&self, out: &mut StoredData) {
        out.new_chunks += self.new_chunks;
        out.new_bytes += self.new_bytes;
        out.uploaded_bytes += self.uploaded_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ticket_completes_when_closed_and_every_chunk_is_done() {
        let t = std::sync::Arc::new(Ticket::new("s".into()));
        t.add();
        t.add();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait().await }
        });
        t.finish(Ok(TicketStats {
            new_chunks: 1,
            new_bytes: 10,
            uploaded_bytes: 15,
        }));
        t.close();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one chunk is still pending");
        t.finish(Ok(TicketStats::default()));
        let stats = waiter.await.unwrap().unwrap();
        assert_eq!(stats.new_bytes, 10);
        assert_eq!(stats.uploaded_bytes, 15);

        let t = Ticket::new("s".into());
        t.add();
        t.finish(Err(&GridError::QuotaExceeded("full".into())));
        assert!(t.failed());
        t.close();
        assert!(matches!(t.wait().await, Err(GridError::QuotaExceeded(_))));
    }
}
