//! Callbacks the engine calls with a telemetry event (a slow command, a storm).
//!
//! The invariant: a hook is called with no engine lock held (the slot's own lock
//! is released before the call), and a hook that panics is contained: the panic
//! is counted, never propagated into the command or the engine.

use crate::sync::{AtomicU64, Mutex, Ordering};
// A plain `Arc`: loom's cannot hold a `dyn Fn`, and callbacks are no part of a
// modelled protocol.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

type Callback<E> = Arc<dyn Fn(&E) + Send + Sync>;

/// One registered callback for events of type `E`, or none.
pub(crate) struct Hook<E> {
    callback: Mutex<Option<Callback<E>>>,
}

impl<E> Hook<E> {
    pub(crate) fn new() -> Self {
        Hook {
            callback: Mutex::new(None),
        }
    }

    /// Registers `f`, replacing any earlier callback.
    pub(crate) fn set(&self, f: Callback<E>) {
        *self.callback.lock() = Some(f);
    }

    /// Calls the callback, if any, with `event`; a panic in it adds one to `panics`.
    pub(crate) fn fire(&self, event: &E, panics: &AtomicU64) {
        let Some(f) = self.callback.lock().clone() else {
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| f(event))).is_err() {
            panics.fetch_add(1, Ordering::Relaxed);
        }
    }
}
