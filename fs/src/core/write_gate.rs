//! The subscription's say over changes: while the client's terms (polled every
//! [`crate::terms::TERMS_POLL_INTERVAL`]) say suspended or expired, every change in an open
//! snapshot (create, mkdir, symlink, unlink, rmdir, rename, setattr, xattrs, open for writing,
//! write) fails with EACCES before anything changes locally; reads and browsing go on.
//!
//! The coordinator refuses uploads of a suspended client on its own; this gate makes the
//! namespace follow the same rule, so an open snapshot cannot fill up with names whose
//! content could never be stored.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gridback_proto::subscription::SubscriptionState;

use super::{FsCore, FsError};

/// At most one warning about refused changes per this interval: a program retrying in a
/// loop must not flood the log, yet an operator reading it sees the reason within a minute.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit of the refusal warning: when it was last logged (only refused changes look
/// at it, never the write path).
#[derive(Debug, Default)]
pub(super) struct RefusalWarning {
    last: Mutex<Option<Instant>>,
}

impl RefusalWarning {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Whether a warning is due now (and, if so, record it as logged).
    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < REFUSAL_WARN_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
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
            last: Mutex::new(Some(
                Instant::now() - REFUSAL_WARN_INTERVAL - Duration::from_secs(1),
            )),
        };
        assert!(w.due());
        assert!(!w.due());
    }
}
