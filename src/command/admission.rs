//! Admission to the blocking queue: at most `Options::max_escalated` escalated
//! commands run at once; the rest wait in arrival order, at most
//! `Options::max_queued` of them. A command with a deadline is turned away
//! ([`crate::Error::Overloaded`]) when the wait is full or its deadline passes.

use crate::sync::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Default)]
struct State {
    running: usize,
    waiting: VecDeque<u64>,
    next: u64,
}

pub(crate) struct Admission {
    max_running: usize,
    max_waiting: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// A place among the running escalated commands; leaving frees it.
pub(crate) struct Admitted<'a> {
    admission: &'a Admission,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.state.lock().running -= 1;
        self.admission.changed.notify_all();
    }
}

impl Admission {
    pub(crate) fn new(max_running: usize, max_waiting: usize) -> Self {
        Admission {
            max_running: max_running.max(1),
            max_waiting,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Waits for a place, first come first served. `Err(waiting)` when `deadline`
    /// is given and the wait is full or the deadline passes.
    pub(crate) fn enter(&self, deadline: Option<Instant>) -> Result<Admitted<'_>, usize> {
        let mut s = self.state.lock();
        if s.waiting.is_empty() && s.running < self.max_running {
            s.running += 1;
            return Ok(Admitted { admission: self });
        }
        if deadline.is_some() && s.waiting.len() >= self.max_waiting {
            return Err(s.waiting.len());
        }
        let me = s.next;
        s.next += 1;
        s.waiting.push_back(me);
        loop {
            if s.waiting.front() == Some(&me) && s.running < self.max_running {
                s.waiting.pop_front();
                s.running += 1;
                drop(s);
                // The next in line may fit too.
                self.changed.notify_all();
                return Ok(Admitted { admission: self });
            }
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        s.waiting.retain(|w| *w != me);
                        let waiting = s.waiting.len();
                        drop(s);
                        self.changed.notify_all();
                        return Err(waiting);
                    }
                    s = self.changed.wait_timeout(s, d - now);
                }
                None => s = self.changed.wait(s),
            }
        }
    }

    /// Escalated commands waiting for admission now.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }
}
