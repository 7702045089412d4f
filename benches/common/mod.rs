//! Helpers shared by the benchmarks: a seeded PRNG, a Zipf sampler, key and value
//! encoding, the bulk loader, the read-modify-write command, run-mode detection,
//! resident-set and CPU-time readings, and the criterion settings; in [`sections`],
//! the section filter, run lengths and bench directory of the plain-timed benches.
//!
//! Not a bench target itself: cargo discovers `benches/*.rs` and `benches/*/main.rs`
//! only, and each bench includes this file with `mod common;`.

#![allow(dead_code)] // each bench uses a different part of it

pub mod sections;

use shardstone::{Engine, Tx};
use std::time::{Duration, Instant};

/// Keys in the full-size benchmarks.
pub const FULL_KEYS: u64 = 1_000_000;
/// Keys in the quick `--test` / `--list` / `cargo test --benches` runs.
pub const TINY_KEYS: u64 = 10_000;
/// Key length in bytes.
pub const KEY_LEN: usize = 16;
/// Value length in bytes.
pub const VALUE_LEN: usize = 100;
/// Keys per command while loading.
pub const LOAD_BATCH: usize = 1000;

/// Whether this is a real measurement run: cargo bench passes `--bench`; criterion
/// treats `--test`, `--list` or a missing `--bench` (`cargo test --benches`) as a
/// quick check, and so do we.
pub fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |a: &str| args.iter().any(|x| x == a);
    has("--bench") && !has("--test") && !has("--list")
}

/// Number of keys to use in this run.
pub fn key_count() -> u64 {
    if full_run() {
        FULL_KEYS
    } else {
        TINY_KEYS
    }
}

/// SplitMix64: tiny, fast, good enough for workload generation, fully seeded.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf(θ) over ranks `0..n` (rank 0 the most popular), by the method of Gray et al.,
/// "Quickly generating billion-record synthetic databases" (SIGMOD 1994):
/// `zeta(n, θ)` is computed once; each draw is O(1).
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n >= 2 && theta > 0.0 && theta < 1.0);
        let zeta = |n: u64| (1..=n).map(|i| (i as f64).powf(-theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The probability of rank 0.
    pub fn p_top(&self) -> f64 {
        1.0 / self.zetan
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

/// The 16-byte key of item `i`: `"key"` and 13 decimal digits, so key order is `i` order.
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = *b"key0000000000000";
    let mut n = i;
    for b in k[3..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    debug_assert_eq!(n, 0, "item number too large for the key format");
    k
}

/// A 100-byte value: an 8-byte little-endian counter, then filler derived from `seed`.
pub fn value(counter: u64, seed: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[..8].copy_from_slice(&counter.to_le_bytes());
    let fill = seed.to_le_bytes();
    for (i, b) in v[8..].iter_mut().enumerate() {
        *b = fill[i % 8] ^ (i as u8);
    }
    v
}

/// The counter stored in a value made by [`value`] (0 when absent or short).
pub fn counter(v: Option<&[u8]>) -> u64 {
    match v {
        Some(v) if v.len() >= 8 => u64::from_le_bytes(v[..8].try_into().unwrap()),
        _ => 0,
    }
}

/// Within a command: reads `k` and writes it back with its counter incremented,
/// the rest of the value kept (zeros when `k` is absent).
pub fn increment(tx: &mut Tx<'_>, k: &[u8]) -> shardstone::Result<()> {
    let old = tx.get(k)?;
    let mut v = [0u8; VALUE_LEN];
    if let Some(old) = old.as_deref() {
        let n = old.len().min(VALUE_LEN);
        v[..n].copy_from_slice(&old[..n]);
    }
    v[..8].copy_from_slice(&(counter(old.as_deref()) + 1).to_le_bytes());
    tx.put(k, &v)
}

/// One command, `"rmw"`: read one key, write it back with its counter incremented
/// ([`increment`]).
pub fn read_modify_write(engine: &Engine, k: &[u8]) {
    engine
        .run("rmw", |tx| increment(tx, k))
        .expect("rmw command failed");
}

/// Loads items in the given order, [`LOAD_BATCH`] keys per command. Returns the time taken.
pub fn load(engine: &Engine, order: impl IntoIterator<Item = u64>) -> Duration {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    let flush = |batch: &mut Vec<u64>| {
        if batch.is_empty() {
            return;
        }
        engine
            .run("load", |tx| {
                for &i in batch.iter() {
                    tx.put(&key(i), &value(0, i))?;
                }
                Ok(())
            })
            .expect("load command failed");
        batch.clear();
    };
    for i in order {
        batch.push(i);
        if batch.len() == LOAD_BATCH {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
    started.elapsed()
}

/// A seeded random permutation of `0..n` (Fisher–Yates).
pub fn permutation(n: u64, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed);
    for i in (1..p.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// A line of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`, ...); `None` off Linux.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Splits `total` commands over `threads` threads: thread `t` runs `share(total, threads, t)`.
pub fn share(total: u64, threads: usize, t: usize) -> u64 {
    let threads = threads as u64;
    let t = t as u64;
    total / threads + u64::from(t < total % threads)
}

/// Formats a rate like `1.23 M/s`.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.3} M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} K/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} /s")
    }
}

/// User + system CPU time this process has used so far (all threads).
///
/// On a shared machine, commits per CPU-second and the CPU share the bench threads
/// got (`cpu / (wall x threads)`) tell engine cost apart from time lost to other
/// processes.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Commands, wall time and CPU time accumulated over the samples of one benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub commands: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

impl Tally {
    pub fn add(&mut self, commands: u64, wall: Duration, cpu: Duration) {
        self.commands += commands;
        self.wall += wall;
        self.cpu += cpu;
    }

    /// Commands per wall-clock second, all threads together.
    pub fn per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.commands as f64 / self.wall.as_secs_f64()
        }
    }

    /// Commands per second of CPU time.
    pub fn per_cpu_sec(&self) -> f64 {
        if self.cpu.is_zero() {
            0.0
        } else {
            self.commands as f64 / self.cpu.as_secs_f64()
        }
    }

    /// The CPUs `threads` threads could use here: `min(threads, available cores)`.
    pub fn usable_cpus(threads: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        threads.min(cores).max(1)
    }

    /// The share of the usable CPUs (see [`Tally::usable_cpus`]) the process got while
    /// measuring: 1.0 = all of them; less means other processes took CPU time.
    pub fn cpu_share(&self, threads: usize) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.cpu.as_secs_f64() / (self.wall.as_secs_f64() * Self::usable_cpus(threads) as f64)
        }
    }
}

/// The load average line of `/proc/loadavg` (empty off Linux): others' load skews numbers.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs `total` commands over `threads` threads, each with its own seeded `Rng`,
/// all released together; returns the wall time until the last thread finishes.
pub fn run_parallel(
    threads: usize,
    total: u64,
    seed: &std::sync::atomic::AtomicU64,
    command: impl Fn(&mut Rng) + Sync,
) -> std::time::Duration {
    let start = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, command) = (&start, &command);
                let mine = share(total, threads, t);
                s.spawn(move || {
                    let mut rng = Rng::new(seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    start.wait();
                    for _ in 0..mine {
                        command(&mut rng);
                    }
                })
            })
            .collect();
        start.wait();
        let began = std::time::Instant::now();
        for h in handles {
            h.join().expect("bench thread panicked");
        }
        began.elapsed()
    })
}

/// The criterion settings every bench here uses: short, so `cargo bench` of all of
/// them takes minutes, not hours.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(5))
}
