//! Contended commits: each command read-modify-writes 4 keys drawn Zipf(θ = 0.99)
//! from 1,000,000 (16-byte keys, 100-byte values), on 1, 2, 4 and 8 threads.
//!
//! Two mappings from Zipf rank to key, both reported:
//! - `clustered`: rank r is key r (Gray et al. as written). The hottest keys are
//!   neighbours, so they share a handful of pages: the worst case for page-level
//!   conflicts.
//! - `scattered`: rank r is key `perm[r]` for a fixed random permutation (like
//!   YCSB's scrambled Zipfian). The hot keys are spread over the tree, so conflicts
//!   come from the hot keys themselves rather than from their neighbours.
//!
//! Accounting as in `commit_throughput`: criterion's `iters` commands are split over
//! the T threads, the time is the wall time until the last finishes, and `thrpt` is
//! total commands/s. After each thread-count group the engine's counters are compared
//! with those before it, and conflicts, retries and escalations per commit are printed,
//! with commits per CPU-second and the CPU share the bench threads got (on a shared
//! machine these tell engine cost apart from time lost to other processes).
//!
//! `cargo bench --bench contended -- --test` runs a quick check over 10,000 keys.

mod common;

use common::{
    cpu_time, criterion_config, full_run, increment, key, key_count, load, loadavg, permutation,
    rate, run_parallel, Tally, Zipf, KEY_LEN,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardstone::{Engine, Stats};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

const THREADS: [usize; 4] = [1, 2, 4, 8];
const KEYS_PER_COMMAND: usize = 4;
const THETA: f64 = 0.99;

static SEED: AtomicU64 = AtomicU64::new(1);

/// The loaded engine and the workload's key distribution.
struct Setup {
    engine: Engine,
    zipf: Zipf,
    /// Rank → item for the scattered mapping.
    perm: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Clustered,
    Scattered,
}

impl Mapping {
    fn name(self) -> &'static str {
        match self {
            Mapping::Clustered => "clustered",
            Mapping::Scattered => "scattered",
        }
    }
}

fn rmw_keys(engine: &Engine, keys: &[[u8; KEY_LEN]; KEYS_PER_COMMAND]) {
    engine
        .run("zipf_rmw4", |tx| {
            for k in keys {
                increment(tx, k)?;
            }
            Ok(())
        })
        .expect("zipf_rmw4 command failed");
}

fn run_commands(setup: &Setup, mapping: Mapping, threads: usize, total: u64) -> Duration {
    run_parallel(threads, total, &SEED, |rng| {
        let keys = std::array::from_fn(|_| {
            let rank = setup.zipf.sample(rng);
            key(match mapping {
                Mapping::Clustered => rank,
                Mapping::Scattered => u64::from(setup.perm[rank as usize]),
            })
        });
        rmw_keys(&setup.engine, &keys);
    })
}

/// What happened between two `Engine::stats` readings.
fn report(label: &str, threads: usize, before: &Stats, after: &Stats, tally: Option<Tally>) {
    let commits = after.commits - before.commits;
    let conflicts = after.conflicts - before.conflicts;
    let retries = after.retries - before.retries;
    let escalations = after.escalations - before.escalations;
    let per = |n: u64| {
        if commits == 0 {
            0.0
        } else {
            n as f64 / commits as f64
        }
    };
    let queue_time = after
        .blocking_queue
        .total_time
        .saturating_sub(before.blocking_queue.total_time);
    let queued = after.blocking_queue.escalated - before.blocking_queue.escalated;
    let speed = match tally {
        Some(t) => format!(
            "{} wall-clock, {} per CPU-second, used {:.0}% of {} CPU{}",
            rate(t.per_sec()),
            rate(t.per_cpu_sec()),
            t.cpu_share(threads) * 100.0,
            Tally::usable_cpus(threads),
            if Tally::usable_cpus(threads) == 1 {
                ""
            } else {
                "s"
            }
        ),
        None => "quick check".into(),
    };
    eprintln!(
        "{label}: {commits} commits ({speed})\n    conflicts/commit {:.4}, retries/commit {:.4}, escalations/commit {:.5} \
         ({escalations} escalated; blocking queue mean {:.1} µs, max so far {:.1} ms)",
        per(conflicts),
        per(retries),
        per(escalations),
        if queued == 0 { 0.0 } else { queue_time.as_secs_f64() * 1e6 / queued as f64 },
        after.blocking_queue.max_time.as_secs_f64() * 1e3,
    );
}

fn contended(c: &mut Criterion) {
    let keys = key_count();
    // Loaded here, not lazily inside the first sample: criterion's warm-up times the
    // whole routine call, and a load inside it would wreck its per-iteration estimate.
    let engine = Engine::in_memory().expect("in-memory engine");
    let took = load(&engine, 0..keys);
    let zipf = Zipf::new(keys, THETA);
    eprintln!(
        "loaded {keys} keys in key order in {:.2} s; Zipf θ={} over {keys} keys, top-rank probability {:.4}",
        took.as_secs_f64(),
        zipf.theta(),
        zipf.p_top()
    );
    let setup = Setup {
        engine,
        zipf,
        perm: permutation(keys, 0x5eed),
    };

    let load_before = loadavg();
    let mut group = c.benchmark_group("contended");
    group.throughput(Throughput::Elements(1));
    for mapping in [Mapping::Clustered, Mapping::Scattered] {
        for threads in THREADS {
            let before = setup.engine.stats();
            let mut tally = Tally::default();
            group.bench_function(
                BenchmarkId::new(
                    format!("zipf099_rmw4_{}", mapping.name()),
                    format!("{threads}_threads"),
                ),
                |b| {
                    b.iter_custom(|iters| {
                        let cpu = cpu_time();
                        let took = run_commands(&setup, mapping, threads, iters);
                        tally.add(iters, took, cpu_time().saturating_sub(cpu));
                        took
                    })
                },
            );
            if tally.commands == 0 {
                continue; // filtered out
            }
            let label = format!(
                "  [{} {threads} thread{}]",
                mapping.name(),
                if threads == 1 { "" } else { "s" }
            );
            report(
                &label,
                threads,
                &before,
                &setup.engine.stats(),
                full_run().then_some(tally),
            );
        }
    }
    group.finish();

    if full_run() {
        let st = setup.engine.stats();
        eprintln!(
            "contended totals: {} commits, {} conflicts, {} retries, {} escalations, blocking queue max {:.2} ms",
            st.commits,
            st.conflicts,
            st.retries,
            st.escalations,
            st.blocking_queue.max_time.as_secs_f64() * 1e3
        );
        eprintln!(
            "  load average before / after: {load_before} / {}",
            loadavg()
        );
        for p in st.hot_pages.iter().take(3) {
            eprintln!(
                "  hot {}: {} conflicts, keys {}..={}",
                p.page,
                p.conflicts,
                String::from_utf8_lossy(&p.first_key),
                String::from_utf8_lossy(&p.last_key)
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = contended
}
criterion_main!(benches);
