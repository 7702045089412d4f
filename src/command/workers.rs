//! Engine-owned worker threads for `Engine::submit`, one pinned per CPU.
//!
//! Each NUMA node (memory domain) has one queue, served by the workers pinned to
//! that node's CPUs; a command goes to the queue of the node its affinity hint
//! names, so it runs, allocates its page versions and appends its journal record
//! on that node. Workers start on the first submit (an engine used only through
//! `run` has no extra threads) and stop when the engine is dropped, after running
//! every command already queued.

use crate::error::{Error, Result};
use crate::numa::Layout;
use crate::sync::{AtomicUsize, Condvar, Mutex, Ordering};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// Where a submitted command should run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Affinity {
    /// On the node of the CPU that submits it (round-robin over nodes when that
    /// CPU is not in the topology).
    #[default]
    Any,
    /// On this NUMA node (its kernel id).
    Node(usize),
    /// On the node whose memory holds the page of this key: route a tenant's
    /// commands by one of its keys, and with `PagePlacement::Local` its pages stay
    /// on the node its commands run on.
    Key(Vec<u8>),
}

type Job = Box<dyn FnOnce() + Send>;

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct Pool {
    /// One queue per domain that has workers.
    queues: Vec<Arc<Queue>>,
    /// Per domain: the queue serving it.
    queue_of_domain: Vec<usize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    ids: Vec<ThreadId>,
}

/// The worker pool of one engine, started lazily.
pub(crate) struct Workers {
    layout: Arc<Layout>,
    pool: OnceLock<Pool>,
    /// Serializes starting the pool; a failed start is retried by the next submit.
    starting: Mutex<()>,
    next: AtomicUsize,
}

impl Workers {
    pub(crate) fn new(layout: Arc<Layout>) -> Workers {
        Workers {
            layout,
            pool: OnceLock::new(),
            starting: Mutex::new(()),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn started(&self) -> bool {
        self.pool.get().is_some()
    }

    /// Whether the calling thread is one of these workers.
    pub(crate) fn is_own_worker(&self) -> bool {
        let me = std::thread::current().id();
        self.pool.get().is_some_and(|p| p.ids.contains(&me))
    }

    fn pool(&self) -> Result<&Pool> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let _one = self.starting.lock();
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = self.start().map_err(Error::WorkersUnavailable)?;
        Ok(self.pool.get_or_init(|| pool))
    }

    /// Queues `job` on the queue of `domain` (`None`: the submitter's).
    pub(crate) fn submit(&self, domain: Option<usize>, job: Job) -> Result<()> {
        let pool = self.pool()?;
        let domain = match domain {
            Some(d) => d,
            None if self
                .layout
                .plan()
                .domain_of_cpu(crate::sync::current_cpu())
                .is_some() =>
            {
                self.layout.current_domain()
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) % pool.queue_of_domain.len(),
        };
        let queue = &pool.queues[pool.queue_of_domain[domain % pool.queue_of_domain.len()]];
        let mut st = queue.state.lock();
        if st.closed {
            return Err(Error::WorkersUnavailable(
                "the engine is shutting down".to_owned(),
            ));
        }
        st.jobs.push_back(job);
        drop(st);
        queue.ready.notify_one();
        Ok(())
    }

    fn start(&self) -> Result<Pool, String> {
        let plan = self.layout.plan();
        let domains = plan.domain_nodes.len().max(1);
        let mut queue_index = vec![usize::MAX; domains];
        let mut queues = Vec::new();
        for w in &plan.placement.workers {
            let d = self.layout.domain_of_node(w.node).unwrap_or(0);
            if queue_index[d] == usize::MAX {
                queue_index[d] = queues.len();
                queues.push(Arc::new(Queue {
                    state: Mutex::new(QueueState {
                        jobs: VecDeque::new(),
                        closed: false,
                    }),
                    ready: Condvar::new(),
                }));
            }
        }
        if queues.is_empty() {
            return Err("the placement has no workers".to_owned());
        }
        // A node without workers is served by another node's queue.
        let served: Vec<usize> = queue_index
            .iter()
            .copied()
            .filter(|&q| q != usize::MAX)
            .collect();
        let queue_of_domain = queue_index
            .iter()
            .enumerate()
            .map(|(d, &q)| {
                if q == usize::MAX {
                    served[d % served.len()]
                } else {
                    q
                }
            })
            .collect();
        let mut threads = Vec::new();
        // Workers report once pinned, so the first submit returns with every
        // worker in place (and `Engine::placement` describes running threads).
        let pinned = Arc::new((Mutex::new(0usize), Condvar::new()));
        for w in &plan.placement.workers {
            let queue =
                queues[queue_index[self.layout.domain_of_node(w.node).unwrap_or(0)]].clone();
            let layout = self.layout.clone();
            let cpu = w.cpu;
            let pinned = pinned.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("shardstone-w{}", w.worker))
                .spawn(move || {
                    // A binder is user code: even a panicking one must not leave
                    // the start waiting for this worker.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| layout.pin(cpu)));
                    *pinned.0.lock() += 1;
                    pinned.1.notify_all();
                    drop(pinned);
                    serve(&queue);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let pool = Pool {
                        queues,
                        queue_of_domain,
                        ids: Vec::new(),
                        threads: Mutex::new(threads),
                    };
                    pool.stop();
                    return Err(format!("spawning worker {}: {e}", w.worker));
                }
            }
        }
        let mut count = pinned.0.lock();
        while *count < threads.len() {
            count = pinned.1.wait(count);
        }
        drop(count);
        Ok(Pool {
            queues,
            queue_of_domain,
            ids: threads.iter().map(|t| t.thread().id()).collect(),
            threads: Mutex::new(threads),
        })
    }

    /// Runs every queued command, then stops the workers. Not from one of the
    /// workers (see `is_own_worker`): it would wait for itself.
    pub(crate) fn stop(&self) {
        if let Some(pool) = self.pool.get() {
            pool.stop();
        }
    }
}

impl Pool {
    fn stop(&self) {
        for q in &self.queues {
            q.state.lock().closed = true;
            q.ready.notify_all();
        }
        let me = std::thread::current().id();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            // The last owner of the engine may be a command on a worker: that
            // worker exits by itself once its command returns.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

fn serve(queue: &Queue) {
    loop {
        let mut st = queue.state.lock();
        while st.jobs.is_empty() && !st.closed {
            st = queue.ready.wait(st);
        }
        let Some(job) = st.jobs.pop_front() else {
            return; // closed and drained
        };
        drop(st);
        // Jobs catch their command's panic; this only keeps the worker alive
        // should anything else in a job panic.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// Where a submitted command's result arrives.
struct Slot<T> {
    result: Mutex<Option<Result<T>>>,
    done: Condvar,
}

/// A command submitted with [`crate::Engine::submit`]: wait on it for its result.
///
/// Dropping the handle does not cancel the command; it still runs and commits.
pub struct CommandHandle<T> {
    slot: Arc<Slot<T>>,
}

impl<T> std::fmt::Debug for CommandHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> CommandHandle<T> {
    /// Waits for the command and returns what `Engine::run` would have:
    /// its value, its error, or [`Error::Panicked`].
    pub fn wait(self) -> Result<T> {
        let mut r = self.slot.result.lock();
        loop {
            if let Some(result) = r.take() {
                return result;
            }
            r = self.slot.done.wait(r);
        }
    }

    /// Waits at most `timeout`; gives the handle back if the command has not
    /// finished by then.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<T>, Self> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return Ok(self.wait());
        };
        let mut r = self.slot.result.lock();
        loop {
            if let Some(result) = r.take() {
                return Ok(result);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(r);
                return Err(self);
            }
            r = self.slot.done.wait_timeout(r, deadline - now);
        }
    }

    /// Whether the command has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.result.lock().is_some()
    }
}

/// A handle and the function that completes it.
pub(crate) fn handle<T>() -> (CommandHandle<T>, impl FnOnce(Result<T>)) {
    let slot = Arc::new(Slot {
        result: Mutex::new(None),
        done: Condvar::new(),
    });
    let complete = {
        let slot = slot.clone();
        move |r: Result<T>| {
            *slot.result.lock() = Some(r);
            slot.done.notify_all();
        }
    };
    (CommandHandle { slot }, complete)
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
