//! Where memory lives: commit throughput with node-local against other placements
//! of page memory and journal shards, and how many journal appends are remote.
//!
//! Workload: committer threads pinned one per CPU (at most 8), each command
//! reading one uniformly random key of 1,000,000 (16-byte keys, 100-byte values;
//! 10,000 in quick runs) and writing it back with its counter incremented.
//!
//! Sections (`cargo bench --bench numa -- <filter>`):
//! - `numa_pages`: an in-memory engine with `PagePlacement::Local`, with
//!   `Interleave`, and with `Numa::Off` (nothing bound).
//! - `numa_shards`: a `Durability::Buffered` engine in the temp directory, shard
//!   memory bound to the committer's own node (`local`) or, through a binder that
//!   shifts every node by one, to the next node (`remote`). The remote row needs
//!   two nodes; on a one-node machine the bench says so and runs `local` only.
//!   After each row: journal appends that ran on another node than their shard
//!   (`JournalStats::remote_appends`) against what a random shard choice gives,
//!   (n - 1) / n of them with n nodes (seed 002: 7/8 with 8 nodes).
//!
//! On one node all `numa_pages` rows use the same memory bank: they measure the
//! cost of the placement machinery, not of remote memory.

mod common;

use common::{criterion_config, key, key_count, load, read_modify_write, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardstone::numa::{Binder, MemPolicy, Numa, OsBinder, PagePlacement, Topology};
use shardstone::{Durability, Engine, Options};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Binds memory one node further than asked: the remote half of the comparison.
#[derive(Debug)]
struct ShiftedBinder {
    nodes: Vec<usize>,
}

impl Binder for ShiftedBinder {
    fn pin_thread(&self, cpu: usize) -> std::io::Result<()> {
        OsBinder.pin_thread(cpu)
    }

    fn bind_memory(&self, addr: *mut u8, len: usize, policy: &MemPolicy) -> std::io::Result<()> {
        let shift = |n: &usize| {
            let i = self.nodes.iter().position(|x| x == n).unwrap_or(0);
            self.nodes[(i + 1) % self.nodes.len()]
        };
        let shifted = match policy {
            MemPolicy::Preferred(n) => MemPolicy::Preferred(shift(n)),
            MemPolicy::Interleave(ns) => MemPolicy::Interleave(ns.clone()),
        };
        OsBinder.bind_memory(addr, len, &shifted)
    }
}

/// The CPUs committers are pinned to: up to 8, spread over the nodes.
fn committer_cpus(topology: &Topology) -> Vec<usize> {
    let all: Vec<usize> = topology.cpus().map(|(_, cpu)| cpu).collect();
    let n = all.len().min(8);
    (0..n).map(|i| all[i * all.len() / n]).collect()
}

/// Runs `total` read-modify-write commands on threads pinned to `cpus`.
fn run_pinned(
    engine: &Engine,
    keys: u64,
    cpus: &[usize],
    total: u64,
    seed: &AtomicU64,
) -> Duration {
    let start = Barrier::new(cpus.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(t, &cpu)| {
                let start = &start;
                let mine = common::share(total, cpus.len(), t);
                s.spawn(move || {
                    // Best effort: a CPU outside this process's mask stays unpinned.
                    let _ = OsBinder.pin_thread(cpu);
                    let mut rng = Rng::new(seed.fetch_add(1, Ordering::Relaxed));
                    start.wait();
                    for _ in 0..mine {
                        read_modify_write(engine, &key(rng.below(keys)));
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for h in handles {
            h.join().expect("committer panicked");
        }
        began.elapsed()
    })
}

fn measure(c: &mut Criterion, group: &str, row: &str, engine: &Engine, keys: u64, cpus: &[usize]) {
    let seed = AtomicU64::new(1);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        BenchmarkId::new(row, format!("{}_threads", cpus.len())),
        |b| b.iter_custom(|iters| run_pinned(engine, keys, cpus, iters, &seed)),
    );
    g.finish();
}

fn numa_pages(c: &mut Criterion) {
    let keys = key_count();
    let topology = Topology::discover();
    let cpus = committer_cpus(&topology);
    eprintln!(
        "numa_pages: {} node(s), {} CPUs; committers on CPUs {cpus:?}",
        topology.nodes().len(),
        topology.cpu_count()
    );
    let rows = [
        ("local", Numa::Auto, PagePlacement::Local),
        ("interleave", Numa::Auto, PagePlacement::Interleave),
        ("off", Numa::Off, PagePlacement::Local),
    ];
    for (row, numa, page_placement) in rows {
        let engine = Engine::in_memory_with(Options {
            numa,
            page_placement,
            ..Options::default()
        })
        .expect("engine");
        load(&engine, 0..keys);
        measure(c, "numa_pages", row, &engine, keys, &cpus);
        let p = engine.placement();
        eprintln!(
            "  {row}: {} arena(s) {:?}; bind failures {}",
            p.arenas.len(),
            p.arenas.iter().map(|a| &a.policy).collect::<Vec<_>>(),
            p.bind_failures
        );
    }
}

fn numa_shards(c: &mut Criterion) {
    let keys = key_count();
    let topology = Topology::discover();
    let nodes: Vec<usize> = topology
        .nodes()
        .iter()
        .filter(|n| !n.cpus.is_empty())
        .map(|n| n.id)
        .collect();
    let cpus = committer_cpus(&topology);
    let mut rows: Vec<(&str, Arc<dyn Binder>)> = vec![("local", Arc::new(OsBinder))];
    if nodes.len() > 1 {
        rows.push((
            "remote",
            Arc::new(ShiftedBinder {
                nodes: nodes.clone(),
            }),
        ));
    } else {
        eprintln!(
            "numa_shards: this machine has one NUMA node, so shard memory cannot be \
             remote: only the local row runs, and it measures placement overhead only"
        );
    }
    for (row, binder) in rows {
        let dir =
            std::env::temp_dir().join(format!("shardstone-bench-numa-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = Engine::open_with(
            &dir,
            Options {
                durability: Durability::Buffered,
                numa: Numa::Custom {
                    topology: topology.clone(),
                    binder,
                },
                ..Options::default()
            },
        )
        .expect("engine");
        load(&engine, 0..keys);
        let before = engine.stats();
        measure(c, "numa_shards", row, &engine, keys, &cpus);
        let after = engine.stats();
        let commits = after.commits - before.commits;
        let remote = after.journal.remote_appends - before.journal.remote_appends;
        let random = (nodes.len() - 1) as f64 / nodes.len() as f64;
        eprintln!(
            "  {row}: {commits} commits on {} shards, {remote} appended off their shard's node \
             ({:.4}%); a random shard choice would be remote for {:.1}% of them",
            after.journal.shards,
            100.0 * remote as f64 / commits.max(1) as f64,
            100.0 * random
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = numa_pages, numa_shards
}
criterion_main!(benches);
