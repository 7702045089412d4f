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
//!
//! `cargo bench --bench commit_throughput -- --test` runs a quick check over 10,000 keys.

mod common;

use common::{counter, full_run, key, key_count, load, rate, share, Rng, VALUE_LEN};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardstone::Engine;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const THREADS: [usize; 2] = [1, 2];

/// Distinct PRNG seeds for every thread of every sample.
static SEED: AtomicU64 = AtomicU64::new(1);

/// One command: read one key, write it back with its counter incremented.
fn read_modify_write(engine: &Engine, k: &[u8]) {
    engine
        .run("rmw", |tx| {
            let old = tx.get(k)?;
            let mut v = [0u8; VALUE_LEN];
            if let Some(old) = old.as_deref() {
                let n = old.len().min(VALUE_LEN);
                v[..n].copy_from_slice(&old[..n]);
            }
            v[..8].copy_from_slice(&(counter(old.as_deref()) + 1).to_le_bytes());
            tx.put(k, &v)
        })
        .expect("rmw command failed");
}

/// Runs `total` commands over `threads` threads; returns the wall time.
fn run_commands(engine: &Engine, keys: u64, threads: usize, total: u64) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                let mine = share(total, threads, t);
                s.spawn(move || {
                    let mut rng = Rng::new(SEED.fetch_add(1, Ordering::Relaxed));
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
            h.join().expect("bench thread panicked");
        }
        began.elapsed()
    })
}

fn commit_throughput(c: &mut Criterion) {
    let keys = key_count();
    let cell: OnceCell<Engine> = OnceCell::new();
    let engine = || {
        cell.get_or_init(|| {
            let e = Engine::in_memory().expect("in-memory engine");
            let took = load(&e, 0..keys);
            eprintln!(
                "loaded {keys} keys in key order in {:.2} s",
                took.as_secs_f64()
            );
            e
        })
    };

    // (commands, wall time) per thread count, warm-up included, for the summary.
    let mut totals = [(0u64, Duration::ZERO); THREADS.len()];
    let mut group = c.benchmark_group("commit_throughput");
    group.throughput(Throughput::Elements(1));
    for (slot, &threads) in THREADS.iter().enumerate() {
        let acc = &mut totals[slot];
        group.bench_function(
            BenchmarkId::new("rmw_1_uniform_key", format!("{threads}_threads")),
            |b| {
                b.iter_custom(|iters| {
                    let took = run_commands(engine(), keys, threads, iters);
                    acc.0 += iters;
                    acc.1 += took;
                    took
                })
            },
        );
    }
    group.finish();

    let per_sec = |(n, d): (u64, Duration)| {
        if d.is_zero() {
            0.0
        } else {
            n as f64 / d.as_secs_f64()
        }
    };
    let one = per_sec(totals[0]);
    let two = per_sec(totals[1]);
    if full_run() && one > 0.0 && two > 0.0 {
        eprintln!();
        eprintln!("commit_throughput summary ({keys} keys; all samples incl. warm-up):");
        eprintln!(
            "  1 thread : {:>12} total, {:>12} per thread",
            rate(one),
            rate(one)
        );
        eprintln!(
            "  2 threads: {:>12} total, {:>12} per thread",
            rate(two),
            rate(two / 2.0)
        );
        eprintln!(
            "  2-thread / 1-thread ratio: {:.2}x  (target >= 1.70x)",
            two / one
        );
        eprintln!(
            "  per-thread target 1,000,000 commits/s: 1 thread {}",
            if one >= 1e6 { "met" } else { "NOT met" }
        );
    }
    if let Some(e) = cell.get() {
        let st = e.stats();
        eprintln!(
            "  engine: {} commits, {} conflicts, {} escalations, {} pages, {} MiB mapped",
            st.commits,
            st.conflicts,
            st.escalations,
            st.store.pages,
            st.store.mapped_bytes >> 20
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = commit_throughput
}
criterion_main!(benches);
