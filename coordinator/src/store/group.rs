//! Group commit: concurrent write methods share one redb write transaction and one fsync.
//!
//! redb runs one write transaction at a time and a durable commit costs two page flushes
//! and an fsync, far more than the few inserts of a typical method (a chunk commit of one
//! small file). Callers that arrive while a batch is being committed wait; when it is done,
//! they apply their methods one after the other into one new transaction, and the last one
//! to apply commits it for all of them. Nobody waits for a batch to fill: a caller alone
//! commits at once, exactly as before.
//!
//! Semantics are those of one transaction per method, run in some serial order:
//! - every method sees the effects of the methods applied before it, and nothing else;
//! - a caller returns only after the transaction holding its writes is committed (durably
//!   when any member asked for durability), so an acknowledged write is durable;
//! - a method that fails aborts the shared transaction (its partial writes with it): the
//!   methods already applied are applied again in a fresh transaction, and the failing
//!   caller gets its own error. Methods are therefore `Fn`, not `FnOnce`, and must not have
//!   effects outside the transaction;
//! - a commit that fails fails every member with the same (store) error.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use redb::{Database, Durability, WriteTransaction};

use super::StoreError;

/// How a batch ended, for the members waiting on it.
#[derive(Debug, Clone)]
enum BatchEnd {
    /// Committed: the members' writes are in the database.
    Committed,
    /// Aborted because a member failed: apply again.
    Retry,
    /// The commit itself failed.
    Failed(String),
}

/// The transaction being filled.
struct OpenBatch {
    tx: WriteTransaction,
    durable: bool,
    /// Members applied so far (those waiting for `end`).
    members: usize,
    end: Arc<OnceLock<BatchEnd>>,
}

#[derive(Default)]
struct State {
    open: Option<OpenBatch>,
    /// A batch is being committed, outside the lock.
    committing: bool,
    /// Callers inside [`GroupCommit::write`] that have not applied their method yet.
    arriving: usize,
}

/// Shares write transactions between concurrent callers; see the module doc.
#[derive(Default)]
pub(super) struct GroupCommit {
    state: Mutex<State>,
    changed: Condvar,
    /// Transactions committed (for tests and traces).
    commits: AtomicU64,
    /// Methods applied in them.
    applied: AtomicU64,
}

/// What applying one method gave.
enum Applied<T> {
    /// Applied; wait for this batch to end, after committing it when `commit` is given.
    Member {
        value: T,
        end: Arc<OnceLock<BatchEnd>>,
        commit: Option<Box<OpenBatch>>,
    },
    /// The method failed (the batch was aborted).
    Failed(StoreError),
    /// The method panicked (the batch was aborted).
    Panicked(Box<dyn std::any::Any + Send>),
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is completed before a method runs or the lock is
        // released, and a panicking method is caught: a poisoned lock still holds a valid
        // state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (transactions committed, methods applied in them) so far.
    #[cfg(test)]
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
        )
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` in a write transaction shared with concurrent callers and return once that
    /// transaction is committed (durably if `durable`). An error of `f` aborts only `f`.
    pub(super) fn write<T>(
        &self,
        db: &Database,
        durable: bool,
        f: impl Fn(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let (value, end) = match self.apply(db, durable, &f)? {
                Applied::Member { value, end, commit } => {
                    if let Some(batch) = commit {
                        self.commit(batch);
                    }
                    (value, end)
                }
                Applied::Failed(e) => return Err(e),
                Applied::Panicked(p) => resume_unwind(p),
            };
            let mut g = self.lock();
            let outcome = loop {
                if let Some(o) = end.get() {
                    break o.clone();
                }
                g = self.wait(g);
            };
            drop(g);
            match outcome {
                BatchEnd::Committed => return Ok(value),
                BatchEnd::Retry => continue,
                BatchEnd::Failed(msg) => {
                    return Err(StoreError::Redb(redb::Error::Io(std::io::Error::other(
                        format!("commit failed: {msg}"),
                    ))));
                }
            }
        }
    }

    /// Join the open batch (opening one when none is, waiting while one commits) and apply
    /// `f` to it. The caller that applies last, with nobody else about to join, is handed
    /// the batch to commit.
    fn apply<T>(
        &self,
        db: &Database,
        durable: bool,
        f: &impl Fn(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<Applied<T>, StoreError> {
        let mut g = self.lock();
        g.arriving += 1;
        // An open batch is never committing: callers queue behind a commit, then join.
        while g.committing {
            g = self.wait(g);
        }
        g.arriving -= 1;
        let batch = match g.open.take() {
            Some(b) => b,
            None => OpenBatch {
                tx: db.begin_write()?,
                durable: false,
                members: 0,
                end: Arc::new(OnceLock::new()),
            },
        };
        match catch_unwind(AssertUnwindSafe(|| f(&batch.tx))) {
            Ok(Ok(value)) => {
                let mut batch = batch;
                batch.durable |= durable;
                batch.members += 1;
                let end = batch.end.clone();
                let commit = if g.arriving == 0 {
                    g.committing = true;
                    Some(Box::new(batch))
                } else {
                    g.open = Some(batch);
                    None
                };
                Ok(Applied::Member { value, end, commit })
            }
            Ok(Err(e)) => {
                Self::abort(batch);
                drop(g);
                self.changed.notify_all();
                Ok(Applied::Failed(e))
            }
            Err(p) => {
                Self::abort(batch);
                drop(g);
                self.changed.notify_all();
                Ok(Applied::Panicked(p))
            }
        }
    }

    /// Abort a batch after a member failed; its other members apply again.
    fn abort(batch: OpenBatch) {
        // Dropping an uncommitted transaction aborts it too; an abort error changes nothing
        // for the callers, whose writes are gone either way.
        let _ = batch.tx.abort();
        let _ = batch.end.set(BatchEnd::Retry);
    }

    /// Commit a batch taken from the state (which is marked committing), outside the lock.
    fn commit(&self, batch: Box<OpenBatch>) {
        let OpenBatch {
            mut tx,
            durable,
            end,
            members,
        } = *batch;
        tracing::trace!(members, durable, "group commit");
        let result = (|| {
            if !durable {
                tx.set_durability(Durability::None)?;
            }
            tx.commit()?;
            Ok::<(), StoreError>(())
        })();
        let outcome = match result {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.applied.fetch_add(members as u64, Ordering::Relaxed);
                BatchEnd::Committed
            }
            Err(e) => BatchEnd::Failed(e.to_string()),
        };
        let mut g = self.lock();
        g.committing = false;
        let _ = end.set(outcome);
        drop(g);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests;
