//! Uncontended commit throughput.
//!
//! Each command reads one uniformly random key of 1,000,000 (16-byte keys, 100-byte
//! values) and writes it back with its counter incremented. The keys are loaded
//! once, in key order, 1000 keys per command, before anything is measured.
//!
//! Accounting: criterion asks for `iters` commands; with T threads each thread runs
//! `iters / T` of them (the remainder spread over the first threads), so `iters`
//! commands run in total, and the time is the wall time from a common start until the
//! last thread finishes. `Throughput::Elements(1)` per iteration therefore makes
//! criterion's `thrpt` the total commits/s of all T threads together; the summary
//! printed at the end divides by T for commits/s per thread and gives the 2-thread
//! to 1-thread ratio (targets: >= 1,000,000 commits/s per thread, ratio >= 1.7).
//! It also gives commits per CPU-second and the CPU share the bench threads got, so
//! that on a shared machine engine cost can be told apart from time lost to others.
//!
//! A second group, `journal_cost`, runs the same command on one thread against
//! two engines with files: `Durability::None` (no journal) and
//! `Durability::Buffered` (every record written to the journal's mapping, no
//! fsync), and prints Buffered / None per CPU-second (target >= 0.9): what the
//! journal costs a commit when no fsync is asked for.
//!
//! `cargo bench --bench commit_throughput -- --test` runs a quick check over 10,000 keys.

mod common;

use common::{
    cpu_time, criterion_config, full_run, key, key_count, load, loadavg, rate, read_modify_write,
    run_parallel, Tally,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardstone::{Durability, Engine, Options};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

const THREADS: [usize; 2] = [1, 2];

/// Distinct PRNG seeds for every thread of every sample.
static SEED: AtomicU64 = AtomicU64::new(1);

/// Runs `total` commands over `threads` threads; returns the wall time.
fn run_commands(engine: &Engine, keys: u64, threads: usize, total: u64) -> Duration {
    run_parallel(threads, total, &SEED, |rng| {
        read_modify_write(engine, &key(rng.below(keys)))
    })
}

fn commit_throughput(c: &mut Criterion) {
    let keys = key_count();
    // Loaded here, not lazily inside the first sample: criterion's warm-up times the
    // whole routine call, and a load inside it would wreck its per-iteration estimate.
    let engine = Engine::in_memory().expect("in-memory engine");
    let took = load(&engine, 0..keys);
    eprintln!(
        "loaded {keys} keys in key order in {:.2} s",
        took.as_secs_f64()
    );

    // Per thread count, over all samples (warm-up included), for the summary.
    let mut tallies = [Tally::default(); THREADS.len()];
    let load_before = loadavg();
    let mut group = c.benchmark_group("commit_throughput");
    group.throughput(Throughput::Elements(1));
    for (slot, &threads) in THREADS.iter().enumerate() {
        let tally = &mut tallies[slot];
        group.bench_function(
            BenchmarkId::new("rmw_1_uniform_key", format!("{threads}_threads")),
            |b| {
                b.iter_custom(|iters| {
                    let cpu = cpu_time();
                    let took = run_commands(&engine, keys, threads, iters);
                    tally.add(iters, took, cpu_time().saturating_sub(cpu));
                    took
                })
            },
        );
    }
    group.finish();

    let [one, two] = tallies;
    if full_run() && one.commands > 0 && two.commands > 0 {
        eprintln!();
        eprintln!("commit_throughput summary ({keys} keys; all samples incl. warm-up):");
        for (t, threads) in [(one, 1), (two, 2)] {
            eprintln!(
                "  {threads} thread{}: {:>12} total, {:>12} per thread; {:>12} per CPU-second; \
                 used {:.0}% of {} CPU{}",
                if threads == 1 { " " } else { "s" },
                rate(t.per_sec()),
                rate(t.per_sec() / threads as f64),
                rate(t.per_cpu_sec()),
                t.cpu_share(threads) * 100.0,
                Tally::usable_cpus(threads),
                if Tally::usable_cpus(threads) == 1 {
                    ""
                } else {
                    "s"
                },
            );
        }
        eprintln!(
            "  2-thread / 1-thread ratio: {:.2}x wall-clock (target >= 1.70x); {:.2}x per CPU-second",
            two.per_sec() / one.per_sec(),
            two.per_cpu_sec() / one.per_cpu_sec()
        );
        eprintln!(
            "  target 1,000,000 commits/s per thread: {}",
            if one.per_sec() >= 1e6 && two.per_sec() / 2.0 >= 1e6 {
                "met"
            } else {
                "NOT met"
            }
        );
        eprintln!(
            "  load average before / after: {load_before} / {}",
            loadavg()
        );
    }
    let st = engine.stats();
    eprintln!(
        "  engine: {} commits, {} conflicts, {} escalations, {} pages, {} MiB mapped",
        st.commits,
        st.conflicts,
        st.escalations,
        st.store.pages,
        st.store.mapped_bytes >> 20
    );
}

/// An engine with files in a fresh temporary directory, at `durability`.
fn engine_on_disk(durability: Durability) -> (Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "shardstone-bench-journal-cost-{}-{durability:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        durability,
        auto_checkpoint: None,
        ..Options::default()
    };
    (Engine::open_with(&dir, opts).expect("engine"), dir)
}

fn journal_cost(c: &mut Criterion) {
    let keys = key_count();
    let engines = [Durability::None, Durability::Buffered].map(|d| {
        let (engine, dir) = engine_on_disk(d);
        load(&engine, 0..keys);
        (d, engine, dir)
    });
    let mut tallies = [Tally::default(); 2];
    let mut group = c.benchmark_group("journal_cost");
    group.throughput(Throughput::Elements(1));
    for (slot, (d, engine, _)) in engines.iter().enumerate() {
        let tally = &mut tallies[slot];
        group.bench_function(
            BenchmarkId::new("rmw_1_uniform_key", format!("{d:?}")),
            |b| {
                b.iter_custom(|iters| {
                    let cpu = cpu_time();
                    let took = run_commands(engine, keys, 1, iters);
                    tally.add(iters, took, cpu_time().saturating_sub(cpu));
                    took
                })
            },
        );
    }
    group.finish();
    let [none, buffered] = tallies;
    if full_run() && none.commands > 0 && buffered.commands > 0 {
        eprintln!();
        eprintln!("journal_cost summary ({keys} keys, 1 thread; all samples incl. warm-up):");
        for (t, name) in [(none, "None"), (buffered, "Buffered")] {
            eprintln!(
                "  {name:>8}: {:>12} wall-clock, {:>12} per CPU-second",
                rate(t.per_sec()),
                rate(t.per_cpu_sec())
            );
        }
        eprintln!(
            "  Buffered / None: {:.2}x wall-clock, {:.2}x per CPU-second (target >= 0.90x)",
            buffered.per_sec() / none.per_sec(),
            buffered.per_cpu_sec() / none.per_cpu_sec()
        );
    }
    for (_, engine, dir) in engines {
        drop(engine);
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = commit_throughput, journal_cost
}
criterion_main!(benches);
