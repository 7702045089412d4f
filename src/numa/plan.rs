//! The placement plan: which CPU and node each journal shard, worker and page
//! arena belongs to, computed from a [`Topology`] alone (so it is testable on any
//! machine), plus the per-CPU tables the commit path looks up.
//!
//! Invariants: every CPU of a node that has shards maps to a shard of that node,
//! so a thread running on it never appends to remote shard memory; shards and
//! workers are spread over nodes in proportion to their CPUs; workers sit on
//! distinct CPUs while there are no more workers than CPUs.

use super::bind::MemPolicy;
use super::topology::Topology;

/// How page memory is spread over NUMA nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PagePlacement {
    /// One page arena per node: a page comes from the arena of the node whose CPU
    /// allocates it, so a command's new page versions are local to where it runs
    /// (and, with affinity hints, to where its tenant's commands run).
    #[default]
    Local,
    /// One arena whose memory is interleaved page by page over every node that
    /// has CPUs: even bandwidth, every access remote with probability (n-1)/n.
    Interleave,
}

/// Where one journal shard lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlacement {
    /// The shard's number (its files are `s<shard>-*.log`).
    pub shard: usize,
    /// The CPU it belongs to.
    pub cpu: usize,
    /// That CPU's node, where the shard's memory is bound.
    pub node: usize,
    /// Address of the shard's state (its lock and counters), for checking where
    /// it lives with [`crate::numa::memory_policy`]; 0 in a bare plan.
    pub memory: usize,
    /// The shard's current segment mapping (address, length), if it has one.
    pub segment: Option<(usize, usize)>,
}

/// Where one engine worker thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPlacement {
    /// The worker's number (its thread is named `shardstone-w<worker>`).
    pub worker: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// That CPU's node, whose queue the worker serves.
    pub node: usize,
}

/// One page arena and the policy of its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlacement {
    /// The arena's number.
    pub arena: usize,
    /// The node whose CPUs allocate from it (`None`: every CPU).
    pub node: Option<usize>,
    /// The policy its mappings are bound with (`None`: not bound).
    pub policy: Option<MemPolicy>,
    /// Its page memory mappings (address, length), oldest first.
    pub mappings: Vec<(usize, usize)>,
}

/// The engine's placement on the machine, from [`crate::Engine::placement`]:
/// shard → CPU → node, worker → CPU, arena → node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The topology it was computed on.
    pub topology: Topology,
    /// Whether threads are pinned and memory bound (`Options::numa` is not `Off`).
    pub bound: bool,
    /// The page memory policy in force.
    pub page_placement: PagePlacement,
    /// Journal shards; empty when the journal writes no files (in-memory
    /// engines, `Durability::None`, read-only opens).
    pub shards: Vec<ShardPlacement>,
    /// Worker threads that run [`crate::Engine::submit`]; started on the first
    /// submit, see `workers_started`.
    pub workers: Vec<WorkerPlacement>,
    /// Whether the worker threads are running.
    pub workers_started: bool,
    /// Page arenas.
    pub arenas: Vec<ArenaPlacement>,
    /// Pinning or binding requests the operating system refused (for example
    /// `mbind` under a seccomp profile that forbids it). The engine works without
    /// them, with remote memory accesses.
    pub bind_failures: u64,
    /// The last such refusal.
    pub last_bind_error: Option<String>,
}

/// The plan plus the tables the hot paths use.
#[derive(Debug)]
pub(crate) struct Plan {
    pub placement: Placement,
    /// Per CPU id: the shard a commit running there appends to.
    shard_of_cpu: Box<[u32]>,
    /// Per CPU id: its domain (index into `domain_nodes`), `u32::MAX` if unknown.
    domain_of_cpu: Box<[u32]>,
    /// Node id of each domain: the nodes that have CPUs, by id.
    pub domain_nodes: Vec<usize>,
    /// Domain of each shard.
    pub shard_domain: Vec<usize>,
}

const UNKNOWN: u32 = u32::MAX;

impl Plan {
    /// Plans `shards` journal shards (0 = none) and `workers` workers on
    /// `topology`. `bound` says whether bindings will be made (it selects the
    /// arena policies).
    pub(crate) fn new(
        topology: &Topology,
        shards: usize,
        workers: usize,
        page_placement: PagePlacement,
        bound: bool,
    ) -> Plan {
        let cpus: Vec<(usize, usize)> = topology.cpus().collect();
        let domain_nodes: Vec<usize> = topology
            .nodes()
            .iter()
            .filter(|n| !n.cpus.is_empty())
            .map(|n| n.id)
            .collect();
        let domain = |node: usize| domain_nodes.iter().position(|&n| n == node).unwrap_or(0);
        let c = cpus.len().max(1);
        let max_cpu = cpus.iter().map(|&(_, cpu)| cpu).max().unwrap_or(0);

        // Shard s belongs to the CPU at node-major position s * C / S: each node
        // gets shards in proportion to its CPUs.
        let shard_places: Vec<ShardPlacement> = (0..shards)
            .map(|s| {
                let (node, cpu) = cpus[s * c / shards];
                ShardPlacement {
                    shard: s,
                    cpu,
                    node,
                    memory: 0,
                    segment: None,
                }
            })
            .collect();
        let mut domain_of_cpu = vec![UNKNOWN; max_cpu + 1];
        let mut shard_of_cpu = vec![0u32; max_cpu + 1];
        for (d, &node) in domain_nodes.iter().enumerate() {
            let node_cpus = &topology
                .nodes()
                .iter()
                .find(|n| n.id == node)
                .expect("a node")
                .cpus;
            let local: Vec<usize> = shard_places
                .iter()
                .filter(|p| p.node == node)
                .map(|p| p.shard)
                .collect();
            for (rank, &cpu) in node_cpus.iter().enumerate() {
                domain_of_cpu[cpu] = d as u32;
                shard_of_cpu[cpu] = if !local.is_empty() {
                    local[rank * local.len() / node_cpus.len()] as u32
                } else if shards > 0 {
                    // Fewer shards than nodes: this node has none of its own.
                    let position = cpus.iter().position(|&(_, x)| x == cpu).unwrap_or(0);
                    (position * shards / c) as u32
                } else {
                    0
                };
            }
        }

        // Workers on distinct CPUs, spread like the shards; more workers than
        // CPUs wrap around.
        let worker_places: Vec<WorkerPlacement> = (0..workers)
            .map(|w| {
                let (node, cpu) = if workers <= c {
                    cpus[w * c / workers]
                } else {
                    cpus[w % c]
                };
                WorkerPlacement {
                    worker: w,
                    cpu,
                    node,
                }
            })
            .collect();

        let arenas = match (page_placement, bound) {
            (PagePlacement::Local, true) => domain_nodes
                .iter()
                .enumerate()
                .map(|(i, &node)| ArenaPlacement {
                    arena: i,
                    node: Some(node),
                    policy: Some(MemPolicy::Preferred(node)),
                    mappings: Vec::new(),
                })
                .collect(),
            (PagePlacement::Interleave, true) => vec![ArenaPlacement {
                arena: 0,
                node: None,
                // Nodes with CPUs only: memory-only nodes (CXL, HBM) are a
                // deliberate choice, not a default.
                policy: Some(MemPolicy::Interleave(domain_nodes.clone())),
                mappings: Vec::new(),
            }],
            (_, false) => vec![ArenaPlacement {
                arena: 0,
                node: None,
                policy: None,
                mappings: Vec::new(),
            }],
        };
        let shard_domain = shard_places.iter().map(|p| domain(p.node)).collect();
        Plan {
            placement: Placement {
                topology: topology.clone(),
                bound,
                page_placement,
                shards: shard_places,
                workers: worker_places,
                workers_started: false,
                arenas,
                bind_failures: 0,
                last_bind_error: None,
            },
            shard_of_cpu: shard_of_cpu.into(),
            domain_of_cpu: domain_of_cpu.into(),
            domain_nodes,
            shard_domain,
        }
    }

    /// The shard a commit running on `cpu` appends to. CPUs the topology does not
    /// know (hot-plugged, or a made-up topology) fall back to `cpu mod shards`.
    pub(crate) fn shard_for_cpu(&self, cpu: usize) -> usize {
        let shards = self.placement.shards.len();
        match self.shard_of_cpu.get(cpu) {
            Some(&s) if self.domain_of_cpu[cpu] != UNKNOWN => s as usize,
            _ => cpu % shards.max(1),
        }
    }

    /// The domain (index among the nodes with CPUs) of `cpu`, if known.
    pub(crate) fn domain_of_cpu(&self, cpu: usize) -> Option<usize> {
        match self.domain_of_cpu.get(cpu) {
            Some(&d) if d != UNKNOWN => Some(d as usize),
            _ => None,
        }
    }

    /// Page arenas: one per domain with `Local` binding, else one.
    pub(crate) fn arena_count(&self) -> usize {
        self.placement.arenas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(t: &Topology, shards: usize, workers: usize) -> Plan {
        Plan::new(t, shards, workers, PagePlacement::Local, true)
    }

    #[test]
    fn one_shard_and_one_worker_per_cpu_on_two_sockets() {
        let t = Topology::synthetic(2, 8, 2);
        let p = plan(&t, 32, 32);
        for s in &p.placement.shards {
            assert_eq!(t.node_of_cpu(s.cpu), Some(s.node));
            assert_eq!(p.shard_for_cpu(s.cpu), s.shard);
        }
        let mut cpus: Vec<usize> = p.placement.workers.iter().map(|w| w.cpu).collect();
        cpus.sort_unstable();
        cpus.dedup();
        assert_eq!(cpus.len(), 32, "workers on distinct CPUs");
        assert_eq!(p.arena_count(), 2);
    }

    /// The seed-002 figure: with 8 nodes, a random shard is remote 7/8 of the
    /// time; ours never is, for every CPU and for any shard count ≥ nodes.
    #[test]
    fn no_cpu_maps_to_a_remote_shard_when_every_node_has_one() {
        let t = Topology::synthetic(8, 12, 2);
        for shards in [8, 13, 64, 192, 500] {
            let p = plan(&t, shards, 0);
            let mut per_node = vec![0usize; 8];
            for s in &p.placement.shards {
                per_node[s.node] += 1;
            }
            assert!(per_node.iter().all(|&n| n > 0), "{shards}: {per_node:?}");
            let remote = t
                .cpus()
                .filter(|&(node, cpu)| p.placement.shards[p.shard_for_cpu(cpu)].node != node)
                .count();
            assert_eq!(remote, 0, "{shards} shards");
            // Random choice, for comparison: 7 of 8 shards are remote for any CPU.
            let random_remote: f64 = t
                .cpus()
                .map(|(node, _)| {
                    let r = p.placement.shards.iter().filter(|s| s.node != node).count();
                    r as f64 / shards as f64
                })
                .sum::<f64>()
                / t.cpu_count() as f64;
            assert!(random_remote > 0.8, "{shards}: {random_remote}");
        }
    }

    #[test]
    fn shards_spread_over_a_nodes_cpus() {
        let t = Topology::synthetic(2, 4, 1);
        let p = plan(&t, 4, 2);
        // Two shards per node, each serving two CPUs of its node.
        let nodes: Vec<usize> = p.placement.shards.iter().map(|s| s.node).collect();
        assert_eq!(nodes, vec![0, 0, 1, 1]);
        let served: Vec<usize> = (0..8).map(|cpu| p.shard_for_cpu(cpu)).collect();
        assert_eq!(served, vec![0, 0, 1, 1, 2, 2, 3, 3]);
        let workers: Vec<(usize, usize)> = p
            .placement
            .workers
            .iter()
            .map(|w| (w.cpu, w.node))
            .collect();
        assert_eq!(workers, vec![(0, 0), (4, 1)]);
    }

    #[test]
    fn fewer_shards_than_nodes_and_unknown_cpus_still_map_somewhere() {
        let t = Topology::synthetic(4, 2, 1);
        let p = plan(&t, 2, 0);
        for cpu in 0..8 {
            assert!(p.shard_for_cpu(cpu) < 2);
        }
        assert!(p.shard_for_cpu(1000) < 2);
        assert_eq!(p.domain_of_cpu(1000), None);
    }

    #[test]
    fn interleave_and_unbound_have_one_arena() {
        let t = Topology::synthetic(2, 2, 1);
        let p = Plan::new(&t, 4, 0, PagePlacement::Interleave, true);
        assert_eq!(p.placement.arenas.len(), 1);
        assert_eq!(
            p.placement.arenas[0].policy,
            Some(MemPolicy::Interleave(vec![0, 1]))
        );
        let p = Plan::new(&t, 4, 0, PagePlacement::Local, false);
        assert_eq!(p.placement.arenas[0].policy, None);
    }
}
