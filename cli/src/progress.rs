//! Progress bars for the commands that can take long (backup, restore, verify).
//!
//! The library calls take no progress callback, so the bar is drawn from a
//! second thread while the work runs on this one: a byte count when the
//! command can measure what it has written so far (the destination's size),
//! a spinner with the elapsed time otherwise. It appears only after a second,
//! only on a terminal, and never with `--json`: output that a script reads stays
//! clean.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

/// How long a command runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// How often the measure is taken and the bar redrawn.
const TICK: Duration = Duration::from_millis(150);

/// What the bar shows while the work runs.
pub struct Progress<'a> {
    /// Shown beside the bar: what is being done.
    pub label: String,
    /// The bytes expected in all, with a function measuring how many are done;
    /// `None` draws a spinner.
    pub bytes: Option<(u64, &'a (dyn Fn() -> u64 + Sync))>,
}

impl Progress<'_> {
    /// Runs `work` on this thread, drawing the bar on stderr if `visible` and
    /// stderr is a terminal and `work` takes longer than a second.
    pub fn run<T>(&self, visible: bool, work: impl FnOnce() -> T) -> T {
        if !visible || !std::io::stderr().is_terminal() {
            return work();
        }
        let (done, finished) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                if finished.recv_timeout(SHOW_AFTER) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                let bar = self.bar();
                while finished.recv_timeout(TICK) == Err(mpsc::RecvTimeoutError::Timeout) {
                    if let Some((total, measure)) = self.bytes {
                        let done = measure();
                        bar.set_position(done.min(total));
                        if done >= total {
                            // Copied; what is left is checking what was written.
                            bar.set_message(format!("{}: checking", self.label));
                        }
                    }
                    bar.tick();
                }
                bar.finish_and_clear();
            });
            let out = work();
            drop(done);
            out
        })
    }

    fn bar(&self) -> ProgressBar {
        let bar = match self.bytes {
            Some((total, _)) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(self.label.clone());
        bar
    }
}
