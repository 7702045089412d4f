//! NUMA: topology discovery, the CPU → node map, thread pinning and memory binding.
//!
//! The engine computes one [`Placement`] when it opens (`plan.rs`, pure logic over
//! a [`Topology`]) and keeps it in a [`Layout`] with the [`Binder`] that carries it
//! out. Journal shards, page arenas and worker threads each ask the layout where
//! they belong; nothing else in the crate knows about nodes. When topology is
//! unknown everything degrades to one node, and `Options::numa = Off` binds and
//! pins nothing.

mod bind;
#[cfg(feature = "hwloc")]
mod hwloc;
mod node_box;
mod plan;
mod topology;

pub use bind::{
    memory_policy, node_of_address, thread_affinity, Binder, Binding, MemPolicy, OsBinder,
    RecordingBinder,
};
#[cfg(feature = "hwloc")]
pub use hwloc::HwlocBinder;
pub(crate) use node_box::NodeBox;
pub(crate) use plan::Plan;
pub use plan::{ArenaPlacement, PagePlacement, Placement, ShardPlacement, WorkerPlacement};
pub use topology::{Node, Topology, TopologySource};

use crate::sync::{AtomicU64, Ordering};
use std::cell::Cell;
use std::sync::Arc;

/// How the engine uses the machine's NUMA layout (`Options::numa`).
#[derive(Clone, Debug, Default)]
pub enum Numa {
    /// Discover the topology ([`Topology::discover`]); pin worker threads and
    /// bind shard and page memory to their nodes through the operating system
    /// (threads through hwloc in builds with the `hwloc` feature).
    #[default]
    Auto,
    /// No pinning, no binding: one node holding every CPU; the CPUs are split
    /// into contiguous runs, one per shard.
    Off,
    /// Use this topology and this binder: a made-up machine for tests (with a
    /// [`RecordingBinder`]), or a restricted view of the real one (with
    /// [`OsBinder`]).
    Custom {
        /// The topology to plan on.
        topology: Topology,
        /// What carries the plan out.
        binder: Arc<dyn Binder>,
    },
}

std::thread_local! {
    /// The CPU a pinned engine worker is pinned to: it never moves, so it need
    /// not ask the kernel which CPU it is on. A CPU, not a domain: a command on
    /// one engine's worker may use another engine, with another layout.
    static PINNED_CPU: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The plan and the binder that carries it out, shared by the layers that place
/// memory and threads.
#[derive(Debug)]
pub(crate) struct Layout {
    plan: Plan,
    binder: Option<Arc<dyn Binder>>,
    failures: AtomicU64,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Layout {
    /// The layout for `numa`, with `shards` journal shards (`None`: one per CPU of
    /// the topology) and `workers` workers (0: one per CPU).
    pub(crate) fn new(
        numa: &Numa,
        shards: Option<usize>,
        workers: usize,
        pages: PagePlacement,
    ) -> Layout {
        // Loom models check protocols, not placement, and run each thread on a
        // small stack that topology discovery (file reads) would overflow.
        #[cfg(loom)]
        let numa = {
            let _ = numa;
            &Numa::Off
        };
        let (topology, binder): (Topology, Option<Arc<dyn Binder>>) = match numa {
            Numa::Auto => (Topology::discover(), Some(auto_binder())),
            Numa::Off => (
                Topology::from_nodes(vec![Node {
                    id: 0,
                    cpus: (0..crate::sync::cpu_count()).collect(),
                    cores: crate::sync::cpu_count(),
                    memory_bytes: None,
                }])
                .expect("one node with at least one CPU"),
                None,
            ),
            Numa::Custom { topology, binder } => (topology.clone(), Some(binder.clone())),
        };
        let cpus = topology.cpu_count();
        let shards = shards.unwrap_or(cpus);
        let workers = if workers == 0 { cpus } else { workers };
        Layout {
            plan: Plan::new(&topology, shards, workers, pages, binder.is_some()),
            binder,
            failures: AtomicU64::new(0),
            last_error: parking_lot::Mutex::new(None),
        }
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// CPUs of the topology the engine planned on.
    pub(crate) fn cpu_count(&self) -> usize {
        self.plan.placement.topology.cpu_count()
    }

    /// Shards of each per-thread structure (counters, the commit gate, garbage
    /// and free lists): one per CPU of the topology, see `sync::shards_for`.
    pub(crate) fn shards(&self) -> usize {
        crate::sync::shards_for(self.cpu_count())
    }

    /// The placement with the binding outcome so far.
    pub(crate) fn placement(&self) -> Placement {
        let mut p = self.plan.placement.clone();
        p.bind_failures = self.failures.load(Ordering::Relaxed);
        p.last_bind_error = self.last_error.lock().clone();
        p
    }

    fn failed(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(what);
    }

    /// Applies `policy` to fresh memory; a refusal is counted, not returned.
    pub(crate) fn bind(&self, addr: *mut u8, len: usize, policy: &MemPolicy) {
        if let Some(binder) = &self.binder {
            if let Err(e) = binder.bind_memory(addr, len, policy) {
                self.failed(format!("mbind {len} bytes to {policy:?}: {e}"));
            }
        }
    }

    /// Binds fresh memory to the node of `domain`.
    pub(crate) fn bind_to_domain(&self, addr: *mut u8, len: usize, domain: usize) {
        if let Some(&node) = self.plan.domain_nodes.get(domain) {
            self.bind(addr, len, &MemPolicy::Preferred(node));
        }
    }

    /// Pins the calling thread to `cpu` and makes it remember its domain.
    pub(crate) fn pin(&self, cpu: usize) {
        let Some(binder) = &self.binder else {
            return;
        };
        match binder.pin_thread(cpu) {
            Ok(()) => PINNED_CPU.with(|h| h.set(Some(cpu))),
            Err(e) => self.failed(format!("pin a worker to CPU {cpu}: {e}")),
        }
    }

    /// Whether more than one memory domain is in use (placement matters at all).
    pub(crate) fn is_multi_domain(&self) -> bool {
        self.binder.is_some() && self.plan.domain_nodes.len() > 1
    }

    /// The domain of the calling thread: its home if it is a pinned worker, else
    /// the node of the CPU it runs on now.
    pub(crate) fn current_domain(&self) -> usize {
        let cpu = PINNED_CPU
            .with(Cell::get)
            .unwrap_or_else(crate::sync::current_cpu);
        self.plan.domain_of_cpu(cpu).unwrap_or(0)
    }

    /// Domain of a node id, if it has CPUs.
    pub(crate) fn domain_of_node(&self, node: usize) -> Option<usize> {
        self.plan.domain_nodes.iter().position(|&n| n == node)
    }
}

/// What `Numa::Auto` binds with: hwloc's thread binding in `hwloc` builds (when
/// hwloc loads), `sched_setaffinity` otherwise; `mbind` for memory in both.
fn auto_binder() -> Arc<dyn Binder> {
    #[cfg(feature = "hwloc")]
    if let Some(b) = HwlocBinder::new() {
        return Arc::new(b);
    }
    Arc::new(OsBinder)
}

/// The store's view of page memory: one domain per arena, bound as planned.
impl crate::store::MemoryHome for Layout {
    fn domains(&self) -> usize {
        self.plan.arena_count()
    }

    fn domain_of_caller(&self) -> usize {
        if self.plan.arena_count() == 1 {
            0
        } else {
            self.current_domain()
        }
    }

    fn prepare(&self, domain: usize, addr: *mut u8, len: usize) {
        if let Some(policy) = self
            .plan
            .placement
            .arenas
            .get(domain)
            .and_then(|a| a.policy.as_ref())
        {
            self.bind(addr, len, policy);
        }
    }
}
