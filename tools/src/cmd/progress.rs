//! A terminal progress bar for `backup` and `restore` (indicatif), behind the library's
//! `Progress` trait. Drawn on stderr only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use gridback_fs::progress::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar redraws (and ticks while the totals are still growing).
const TICK: Duration = Duration::from_millis(200);

/// indicatif's bar as a `Progress`.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// Finish and clear the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn found(&self, _files: u64, bytes: u64) {
        self.bar.inc_length(bytes);
    }

    fn advanced(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn phase(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }
}

/// A bar when stderr is a terminal, otherwise nothing; the `Bar` is returned to finish it.
pub fn for_terminal() -> (Arc<dyn Progress>, Option<Arc<Bar>>) {
    if !std::io::stderr().is_terminal() {
        return (Arc::new(NoProgress), None);
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:20} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(TICK);
    let bar = Arc::new(Bar { bar });
    (bar.clone(), Some(bar))
}
