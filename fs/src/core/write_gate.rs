//! The subscription's say over changes: while the client's terms (polled every
//! [`crate::terms::TERMS_POLL_INTERVAL`]) say suspended or expired, every change in an open
//! snapshot (create, mkdir, symlink, unlink, rmdir, rename, setattr, xattrs, open for writing,
//! write) fails with EACCES before anything changes locally; reads and browsing go on.
//!
//! The coordinator refuses uploads of a suspended client on its own; this gate makes the
//! namespace follow the same rule, so an open snapshot cannot fill up with names whose
//! content could never be stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridback_proto::subscription::SubscriptionState;

use super::{FsCore, FsError};

/// At most one warning about refused changes per this interval: a program retrying in a
/// loop must not flood the log, yet an operator reading it sees the reason within a minute.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit of the refusal warning: when it was last logged.
#[derive(Debug)]
pub(super) struct RefusalWarning {
    /// Reference point of `last_ms`.
    origin: Instant,
    /// Milliseconds after `origin` of the last warning, plus one (0: never warned).
    last_ms: AtomicU64,
}

impl RefusalWarning {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Whether a warning is due now (and, if so, record it as logged).
    fn due(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < REFUSAL_WARN_INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl FsCore {
    /// Fail with EACCES ([`FsError::Subscription`]) while the subscription does not allow
    /// writes. Called after the snapshot is known to be open, so sealed snapshots still
    /// answer EROFS.
    pub(super) fn check_subscription(&self) -> Result<(), FsError> {
        match self.grid.subscription_state() {
            None | Some(SubscriptionState::Active) => Ok(()),
            Some(state) => {
                if self.refusal_warning.due() {
                    tracing::warn!(
                        state = state.as_str(),
                        "subscription does not allow changes: open snapshots refuse them with \
                         EACCES until an operator resumes it; browsing and restore still work"
                    );
                }
                Err(FsError::Subscription(state))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_is_due_once_per_interval() {
        let w = RefusalWarning::new();
        assert!(w.due());
        assert!(!w.due());
        assert!(!w.due());
        // A warning logged longer than the interval ago: due again, once.
        let w = RefusalWarning {
            origin: Instant::now() - REFUSAL_WARN_INTERVAL - Duration::from_secs(1),
            last_ms: AtomicU64::new(1),
        };
        assert!(w.due());
        assert!(!w.due());
    }
}
