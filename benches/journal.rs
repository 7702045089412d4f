//! The journal: durable commit rate beside this disk's raw fdatasync rate, what
//! journaling costs a `Buffered` engine, replay and checkpoint load rates, and the
//! append micro-benchmark behind the shards' choice of a mapping over `pwrite`.
//!
//! Everything runs in a directory under `std::env::temp_dir()`, unless that is on
//! a memory file system (tmpfs, ramfs: an fdatasync there costs nothing, so the
//! durable numbers would mean nothing); then under the bench's target directory.
//! The first line printed names the directory and its file system.
//!
//! Sections (plain timed runs printing tables, to stderr like the other benches),
//! each selectable by a filter argument that is part of its name
//! (`cargo bench --bench journal -- replay`, or `-- 'fdatasync|durable'`):
//! - `journal_fdatasync`: raw fdatasync rate of this disk: a 128-byte append
//!   (`pwrite`) + fdatasync loop; the same through a mapping of a preallocated file
//!   (what a durable shard does); an in-place overwrite (no metadata to commit);
//!   and two threads appending to a file each.
//! - `journal_durable`: `Durability::Durable` commits/s on 100,000 keys (16-byte
//!   keys, 100-byte values; each command reads one uniformly random key and writes
//!   it back with its counter incremented, as in `commit_throughput`) with 1, 2, 8
//!   and 32 threads, with one shard per CPU and with a single shard, and commits
//!   per fsync (`stats().commits` and `stats().journal.syncs` around the interval).
//!   Each row is preceded by half a second of the raw mapped-file fdatasync loop,
//!   printed beside it: this disk's sync rate drifts by 2-3x within minutes.
//!   The machine these numbers were made for has 2 cores: each CPU has a shard of
//!   its own, so group commit shows up only with more threads than cores.
//! - `journal_buffered`: the same workload on an engine opened with
//!   `Durability::Buffered`, one opened with `Durability::None` and
//!   `Engine::in_memory()`, at 1 and 2 threads, in interleaved rounds; prints
//!   Buffered/None and Buffered/in-memory (target: journaling costs at most 25%,
//!   i.e. ratio >= 0.75).
//! - `journal_replay`: 1,000,000 one-key put commits (100-byte values, keys in
//!   random order, then again in ascending order) written with
//!   `Durability::Buffered`, closed, then `Engine::open_with` timed with the files
//!   in the page cache and after dropping them from it (`posix_fadvise(DONTNEED)`,
//!   checked with `mincore`): replayed records/s (target >= 1,000,000/s). Then a
//!   checkpoint of the same data, and the open that loads it, in entries/s and
//!   MB/s. The two key orders tell the journal's cost (reading, checking, merging,
//!   hashing: the same for both) from the store's (random keys put every record on
//!   a leaf of its own).
//! - `journal_append` (criterion): appending 150-byte frames (padded to 152) to a
//!   fresh preallocated (`posix_fallocate`) segment file (a) by `memcpy` into a
//!   `MAP_SHARED` mapping, (b) the same with each 1 MiB window of the mapping
//!   faulted in by one `madvise(MADV_POPULATE_WRITE)` (timed) instead of a fault
//!   per page, (c) by one `pwrite` per frame, (d) by one `pwrite` per 64 frames.
//!   (a) and (c) give the same guarantee as a `Buffered` commit (the frame is in
//!   the page cache when the call returns); (d) holds up to 63 frames in the
//!   process. Criterion times whole segments (`thrpt` is frames/s); the summary
//!   gives ns per frame and the ratios. Creating, preallocating and mapping the
//!   file, and unmapping and deleting it, are not timed: a shard does them once
//!   per 64 MiB segment.
//!
//! `cargo bench --bench journal -- --test` runs every section quickly on small sizes.

mod common;

use common::sections::{selected, span, BenchDir};
use common::{
    cpu_time, criterion_config, full_run, key, load, loadavg, permutation, rate, read_modify_write,
    value, Rng, Tally, TINY_KEYS,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::{Advice, Mmap, MmapMut};
use shardstone::{Durability, Engine, Options, Stats};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Keys of the commit-rate sections (full runs).
const ENGINE_KEYS: u64 = 100_000;
/// Commits in the replay journal (full runs).
const REPLAY_COMMITS: u64 = 1_000_000;
/// Thread counts of the durable section.
const DURABLE_THREADS: [usize; 4] = [1, 2, 8, 32];
/// Threads of the durable latency distribution (the target: p99 at most
/// two fsync times at 8 threads).
const LATENCY_THREADS: usize = 8;
/// Thread counts of the Buffered / None / in-memory comparison.
const BUFFERED_THREADS: [usize; 2] = [1, 2];
/// Interleaved rounds of the Buffered / None / in-memory comparison.
const BUFFERED_ROUNDS: usize = 5;
/// Frame length in the append micro-benchmark, and its 8-byte-aligned stride.
const FRAME: usize = 150;
const STRIDE: usize = FRAME.next_multiple_of(8);
/// Frames per pwrite in the batched variant.
const BATCH: usize = 64;
/// Bytes of mapping faulted in per `madvise(MADV_POPULATE_WRITE)` in that variant.
const POPULATE: usize = 1 << 20;
/// Plain-timed lengths in quick runs (see `span`).
const QUICK: Duration = Duration::from_millis(40);

/// Distinct PRNG seeds for every thread of every run.
static SEED: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------------
// Files.

fn create(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create file")
}

/// Reserves `len` bytes for `file`, as a journal segment is.
fn preallocate(file: &File, len: usize) {
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    assert_eq!(
        err,
        0,
        "posix_fallocate: {}",
        std::io::Error::from_raw_os_error(err)
    );
}

/// Drops the (clean) page-cache pages of the files in `paths`.
fn evict(paths: &[PathBuf]) {
    for p in paths {
        let f = File::open(p).expect("open for fadvise");
        // SAFETY: plain advice on an open descriptor.
        let err = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(err, 0, "posix_fadvise");
    }
}

/// The share of the pages of `paths` that are in the page cache (mincore).
fn resident(paths: &[PathBuf]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let (mut total, mut present) = (0usize, 0usize);
    for p in paths {
        let f = File::open(p).expect("open for mincore");
        let len = f.metadata().expect("stat").len() as usize;
        if len == 0 {
            continue;
        }
        // SAFETY: read-only mapping of a file nothing writes while we look.
        let map = unsafe { Mmap::map(&f) }.expect("map for mincore");
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `vec` has one byte per page of the mapping.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore");
        total += vec.len();
        present += vec.iter().filter(|&&b| b & 1 != 0).count();
    }
    if total == 0 {
        0.0
    } else {
        present as f64 / total as f64
    }
}

/// The files under `dir` (recursively; not the `LOCK` file), with their total size.
fn files_in(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() != "LOCK" {
                bytes += meta.len();
                out.push(entry.path());
            }
        }
    }
    out.sort();
    (out, bytes)
}

// ---------------------------------------------------------------------------------
// Shared workload.

/// Runs `command` on `threads` threads, released together, for `dur`; returns the
/// wall time from the release until the last thread has finished its last command.
fn run_for(threads: usize, dur: Duration, command: impl Fn(&mut Rng) + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (start, stop, command) = (&start, &stop, &command);
                s.spawn(move || {
                    let mut rng = Rng::new(SEED.fetch_add(1, Ordering::Relaxed));
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        command(&mut rng);
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("bench thread panicked");
        }
        began.elapsed()
    })
}

/// One measured interval of the read-modify-write workload.
struct Interval {
    before: Stats,
    after: Stats,
    wall: Duration,
    cpu: Duration,
}

impl Interval {
    fn measure(engine: &Engine, keys: u64, threads: usize, dur: Duration) -> Interval {
        let before = engine.stats();
        let cpu = cpu_time();
        let wall = run_for(threads, dur, |rng| {
            read_modify_write(engine, &key(rng.below(keys)))
        });
        let cpu = cpu_time().saturating_sub(cpu);
        Interval {
            before,
            after: engine.stats(),
            wall,
            cpu,
        }
    }

    fn commits(&self) -> u64 {
        self.after.commits - self.before.commits
    }

    fn syncs(&self) -> u64 {
        self.after.journal.syncs - self.before.journal.syncs
    }

    fn conflicts(&self) -> u64 {
        self.after.conflicts - self.before.conflicts
    }

    fn tally(&self) -> Tally {
        let mut t = Tally::default();
        t.add(self.commits(), self.wall, self.cpu);
        t
    }
}

fn engine_keys() -> u64 {
    if full_run() {
        ENGINE_KEYS
    } else {
        TINY_KEYS
    }
}

fn opts(durability: Durability, shards: usize) -> Options {
    Options {
        durability,
        journal_shards: shards,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------
// 1. Raw fdatasync rate.

/// Raw fdatasync rates measured by section 1, for the durable section's header.
#[derive(Clone, Copy, Default)]
struct RawSync {
    append: f64,
    mapped: f64,
}

/// Runs `step(n)` for n = 0, 1, ... until `dur` has passed or it returns false.
fn sync_loop(dur: Duration, mut step: impl FnMut(u64) -> bool) -> (u64, Duration) {
    let began = Instant::now();
    let mut n = 0;
    while began.elapsed() < dur && step(n) {
        n += 1;
    }
    (n, began.elapsed())
}

/// What a durable shard does, alone: a 208-byte frame memcpy'd into a mapping of a
/// preallocated file, then fdatasync, for `dur`. Returns (syncs, wall time).
fn mapped_sync_loop(path: &Path, dur: Duration) -> (u64, Duration) {
    const SEG: usize = 64 << 20;
    let f = create(path);
    preallocate(&f, SEG);
    // SAFETY: this bench alone uses the file, and never truncates it while mapped.
    let mut map = unsafe { MmapMut::map_mut(&f) }.expect("mmap");
    let frame = [0x5au8; 208];
    let result = sync_loop(dur, |n| {
        let at = n as usize * frame.len();
        if at + frame.len() > SEG {
            return false;
        }
        map[at..at + frame.len()].copy_from_slice(&frame);
        f.sync_data().expect("fdatasync");
        true
    });
    drop(map);
    drop(f);
    let _ = std::fs::remove_file(path);
    result
}

fn fdatasync_section(dir: &BenchDir) -> RawSync {
    let d = dir.sub("fdatasync");
    let dur = span(Duration::from_secs(2), QUICK);
    let mut rows: Vec<(&str, usize, u64, Duration)> = Vec::new();

    // (a) append 128 bytes at the end of a growing file, fdatasync.
    let f = create(&d.join("append.dat"));
    let buf = [0xa5u8; 128];
    let (n, wall) = sync_loop(dur, |n| {
        f.write_all_at(&buf, n * 128).expect("pwrite");
        f.sync_data().expect("fdatasync");
        true
    });
    rows.push(("pwrite 128 B append + fdatasync", 1, n, wall));

    // (b) what a durable shard does: a frame memcpy'd into a mapping of a
    // preallocated file, fdatasync on the file.
    let (n, wall) = mapped_sync_loop(&d.join("mapped.dat"), dur);
    rows.push((
        "208 B memcpy into preallocated mapping + fdatasync",
        1,
        n,
        wall,
    ));

    // (c) overwrite in place data that is already written and synced: no metadata
    // (size, extent state) to commit, the device flush alone.
    const RING: u64 = 1 << 20;
    let f = create(&d.join("overwrite.dat"));
    f.write_all_at(&vec![0x11u8; RING as usize], 0)
        .expect("pwrite");
    f.sync_all().expect("fsync");
    let (n, wall) = sync_loop(dur, |n| {
        f.write_all_at(&buf, (n * 128) % RING).expect("pwrite");
        f.sync_data().expect("fdatasync");
        true
    });
    rows.push(("pwrite 128 B overwrite in place + fdatasync", 1, n, wall));

    // (d) two threads, each appending to and syncing a file of its own.
    let files = [
        create(&d.join("append-t0.dat")),
        create(&d.join("append-t1.dat")),
    ];
    let start = Barrier::new(2);
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = files
            .iter()
            .map(|f| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    sync_loop(dur, |n| {
                        f.write_all_at(&buf, n * 128).expect("pwrite");
                        f.sync_data().expect("fdatasync");
                        true
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("sync thread"))
            .collect()
    });
    let n = results.iter().map(|r| r.0).sum();
    let wall = results.iter().map(|r| r.1).max().unwrap_or_default();
    rows.push(("pwrite 128 B append + fdatasync, a file each", 2, n, wall));

    eprintln!();
    eprintln!("raw fdatasync rate of this disk ({}):", dir.fs);
    eprintln!(
        "  {:<52} {:>7} {:>8} {:>12} {:>14}",
        "loop", "threads", "syncs", "syncs/s", "µs per sync"
    );
    for &(label, threads, n, wall) in &rows {
        let per_sec = n as f64 / wall.as_secs_f64();
        eprintln!(
            "  {label:<52} {threads:>7} {n:>8} {:>12.0} {:>14.1}",
            per_sec,
            // Per thread: each thread waits for its own syncs.
            wall.as_secs_f64() * 1e6 * threads as f64 / n.max(1) as f64
        );
    }
    let rate_of = |i: usize| rows[i].2 as f64 / rows[i].3.as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    RawSync {
        append: rate_of(0),
        mapped: rate_of(1),
    }
}

// ---------------------------------------------------------------------------------
// 2. Durable commits.

fn durable_section(dir: &BenchDir, raw: Option<RawSync>) {
    let keys = engine_keys();
    let dur = span(Duration::from_secs(2), QUICK);
    let warm = span(Duration::from_millis(300), QUICK);
    let probe = span(Duration::from_millis(500), QUICK);
    let load_before = loadavg();
    let cores = Tally::usable_cpus(usize::MAX);
    let mut rows = Vec::new();
    let mut latency = None;
    for shards in [0, 1] {
        let d = dir.sub(&format!("durable-{shards}"));
        let engine = Engine::open_with(&d, opts(Durability::Durable, shards)).expect("open");
        let took = load(&engine, 0..keys);
        if shards == 0 {
            eprintln!();
            eprintln!(
                "durable: loaded {keys} keys in {:.2} s ({} durable commands of 1000 keys)",
                took.as_secs_f64(),
                keys.div_ceil(1000)
            );
        }
        let shard_count = engine.stats().journal.shards;
        let threads: &[usize] = if shards == 0 {
            &DURABLE_THREADS
        } else {
            &DURABLE_THREADS[1..]
        };
        for &t in threads {
            // The disk's own rate right now (it drifts: other tenants of the disk).
            let (n, wall) = mapped_sync_loop(&dir.root.join("probe.dat"), probe);
            let raw_now = n as f64 / wall.as_secs_f64();
            Interval::measure(&engine, keys, t, warm);
            let iv = Interval::measure(&engine, keys, t, dur);
            rows.push((shard_count, t, raw_now, iv));
        }
        if shards == 0 {
            let (n, wall) = mapped_sync_loop(&dir.root.join("probe.dat"), probe);
            let fsync_now = wall.as_secs_f64() * 1e6 / n.max(1) as f64;
            latency = Some((fsync_now, latencies(&engine, keys, LATENCY_THREADS, dur)));
        }
        engine.close().expect("close");
        let _ = std::fs::remove_dir_all(&d);
    }

    eprintln!(
        "durable commits ({keys} keys, 1-key read-modify-write, Durability::Durable, {} per row; {cores} cores):",
        fmt_dur(dur)
    );
    if let Some(raw) = raw {
        eprintln!(
            "  raw fdatasync in this run: {:.0}/s (pwrite append), {:.0}/s (mapped preallocated file)",
            raw.append, raw.mapped
        );
    }
    eprintln!(
        "  {:>6} {:>7} {:>10} {:>10} {:>13} {:>13} {:>12} {:>16} {:>8}",
        "shards",
        "threads",
        "commits/s",
        "fsyncs/s",
        "commits/fsync",
        "mean latency",
        "raw syncs/s",
        "conflicts/commit",
        "CPU use"
    );
    for (shards, threads, raw_now, iv) in &rows {
        let commits = iv.commits();
        let secs = iv.wall.as_secs_f64();
        eprintln!(
            "  {shards:>6} {threads:>7} {:>10.0} {:>10.0} {:>13.2} {:>10.0} µs {:>12.0} {:>16.4} {:>7.0}%",
            commits as f64 / secs,
            iv.syncs() as f64 / secs,
            commits as f64 / iv.syncs().max(1) as f64,
            // Little's law: every thread always has one command in flight.
            secs * 1e6 * *threads as f64 / commits.max(1) as f64,
            raw_now,
            iv.conflicts() as f64 / commits.max(1) as f64,
            iv.tally().cpu_share(*threads) * 100.0,
        );
    }
    eprintln!("  (raw syncs/s: 208 B memcpy into a preallocated mapping + fdatasync, one thread, {} just before the row)", fmt_dur(probe));
    eprintln!("  (CPU use: CPU time over wall time x min(threads, cores))");
    if let Some((fsync_now, lat)) = latency {
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1e3;
        let fsync_raw = raw.map(|r| 1e6 / r.mapped);
        eprintln!(
            "  durable latency, one shard per CPU, {LATENCY_THREADS} threads, {} commands: \
             p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0),
        );
        eprintln!(
            "  mean fsync time: {fsync_now:.0} µs (mapped loop just before){}; p99 = {:.2} fsync times",
            fsync_raw.map_or(String::new(), |f| format!(", {f:.0} µs (fdatasync section)")),
            pct(0.99) / fsync_now,
        );
    }
    eprintln!(
        "  load average before / after: {load_before} / {}",
        loadavg()
    );
}

/// Every command's latency (ns, sorted) over `dur` on `threads` threads of the
/// read-modify-write workload (the engine is warm: the rows before ran on it).
fn latencies(engine: &Engine, keys: u64, threads: usize, dur: Duration) -> Vec<u64> {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let mut all: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (start, stop) = (&start, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(SEED.fetch_add(1, Ordering::Relaxed));
                    let mut out = Vec::new();
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let k = key(rng.below(keys));
                        let began = Instant::now();
                        read_modify_write(engine, &k);
                        out.push(began.elapsed().as_nanos() as u64);
                    }
                    out
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    all.sort_unstable();
    if all.is_empty() {
        all.push(0);
    }
    all
}

fn fmt_dur(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

// ---------------------------------------------------------------------------------
// 3. Buffered vs None vs in-memory.

fn buffered_section(dir: &BenchDir) {
    let keys = engine_keys();
    let dur = span(Duration::from_secs(1), QUICK);
    let warm = span(Duration::from_millis(300), QUICK);
    let rounds = if full_run() { BUFFERED_ROUNDS } else { 1 };
    let load_before = loadavg();

    let none_dir = dir.sub("none");
    let buffered_dir = dir.sub("buffered");
    let engines = [
        ("in-memory", Engine::in_memory().expect("in-memory engine")),
        (
            "None",
            Engine::open_with(&none_dir, opts(Durability::None, 0)).expect("open"),
        ),
        (
            "Buffered",
            Engine::open_with(&buffered_dir, opts(Durability::Buffered, 0)).expect("open"),
        ),
    ];
    for (_, e) in &engines {
        load(e, 0..keys);
    }
    // [threads][engine]: every round's interval.
    let mut runs: Vec<Vec<Vec<Interval>>> = BUFFERED_THREADS
        .iter()
        .map(|_| engines.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (ti, &threads) in BUFFERED_THREADS.iter().enumerate() {
            for (ei, (_, engine)) in engines.iter().enumerate() {
                if round == 0 {
                    Interval::measure(engine, keys, threads, warm);
                }
                runs[ti][ei].push(Interval::measure(engine, keys, threads, dur));
            }
        }
        // Untimed: delete the segments written so far, so the disk does not fill.
        engines[2].1.checkpoint().expect("checkpoint");
    }
    let shard_count = engines[2].1.stats().journal.shards;
    for (_, e) in engines {
        e.close().expect("close");
    }
    let _ = std::fs::remove_dir_all(&none_dir);
    let _ = std::fs::remove_dir_all(&buffered_dir);

    eprintln!();
    eprintln!(
        "Buffered vs None vs in-memory ({keys} keys, 1-key read-modify-write; {rounds} interleaved round{} of {} per row; Buffered: {shard_count} shards):",
        if rounds == 1 { "" } else { "s" },
        fmt_dur(dur)
    );
    eprintln!(
        "  {:>7} {:<10} {:>12} {:>12} {:>22} {:>9}",
        "threads", "engine", "commits/s", "per CPU-s", "rounds (min .. max)", "CPU use"
    );
    let mut totals = Vec::new();
    for (ti, &threads) in BUFFERED_THREADS.iter().enumerate() {
        let mut per_engine = Vec::new();
        for (ei, name) in ["in-memory", "None", "Buffered"].iter().enumerate() {
            let mut total = Tally::default();
            let (mut lo, mut hi) = (f64::MAX, 0f64);
            for iv in &runs[ti][ei] {
                let t = iv.tally();
                total.add(t.commands, t.wall, t.cpu);
                lo = lo.min(t.per_sec());
                hi = hi.max(t.per_sec());
            }
            eprintln!(
                "  {threads:>7} {name:<10} {:>12} {:>12} {:>22} {:>8.0}%",
                rate(total.per_sec()),
                rate(total.per_cpu_sec()),
                format!("{} .. {}", rate(lo), rate(hi)),
                total.cpu_share(threads) * 100.0
            );
            per_engine.push(total);
        }
        totals.push(per_engine);
    }
    for (ti, &threads) in BUFFERED_THREADS.iter().enumerate() {
        let [mem, none, buffered] = [0, 1, 2].map(|i| totals[ti][i]);
        // Each round's ratio compares runs made seconds apart, so a drift in what
        // else the machine does cancels out; the median of them is the headline.
        let median_ratio = |num: usize, den: usize| {
            let mut r: Vec<f64> = runs[ti][num]
                .iter()
                .zip(&runs[ti][den])
                .map(|(a, b)| a.tally().per_sec() / b.tally().per_sec())
                .collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        };
        let r = median_ratio(2, 1);
        eprintln!(
            "  {threads} thread{}: Buffered/None {:.3}, Buffered/in-memory {:.3}, None/in-memory {:.3} \
             (median of per-round ratios; of the totals: {:.3}, {:.3}, {:.3}; per CPU-second: {:.3}, {:.3}, {:.3})",
            if threads == 1 { "" } else { "s" },
            r,
            median_ratio(2, 0),
            median_ratio(1, 0),
            buffered.per_sec() / none.per_sec(),
            buffered.per_sec() / mem.per_sec(),
            none.per_sec() / mem.per_sec(),
            buffered.per_cpu_sec() / none.per_cpu_sec(),
            buffered.per_cpu_sec() / mem.per_cpu_sec(),
            none.per_cpu_sec() / mem.per_cpu_sec(),
        );
        let verdict = |x: f64| if x >= 0.75 { "met" } else { "NOT met" };
        eprintln!(
            "    target: journaling costs <= 25% (ratio >= 0.75): Buffered/None {}, Buffered/in-memory {}",
            verdict(r),
            verdict(median_ratio(2, 0))
        );
    }
    eprintln!(
        "  load average before / after: {load_before} / {}",
        loadavg()
    );
}

// ---------------------------------------------------------------------------------
// 4. Replay and checkpoint load.

/// The order the replay journal's commits put their keys in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyOrder {
    /// A fixed random permutation: consecutive records land on unrelated leaves.
    Random,
    /// Ascending within each of the two writer threads' halves of the key space.
    Sequential,
}

impl KeyOrder {
    fn name(self) -> &'static str {
        match self {
            KeyOrder::Random => "random",
            KeyOrder::Sequential => "sequential",
        }
    }
}

/// One timed step of the replay section.
struct ReplayRow {
    what: &'static str,
    order: &'static str,
    cache: &'static str,
    /// Share of the files in the page cache before the step (NaN: not measured).
    resident: f64,
    secs: f64,
    records: u64,
    bytes: u64,
}

/// Writes `n` one-key put commits into a new database in `d` with
/// `Durability::Buffered` on 2 threads, and closes it; returns the time taken.
fn build_journal(d: &Path, n: u64, order: KeyOrder) -> Duration {
    let engine = Engine::open_with(d, opts(Durability::Buffered, 0)).expect("open");
    let perm = match order {
        KeyOrder::Random => permutation(n, 0xfeed),
        KeyOrder::Sequential => Vec::new(),
    };
    let next = [AtomicU64::new(0), AtomicU64::new(n / 2)];
    let began = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let (engine, perm, next) = (&engine, &perm, &next);
            s.spawn(move || loop {
                let item = match order {
                    KeyOrder::Random => {
                        let i = next[0].fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        u64::from(perm[i as usize])
                    }
                    KeyOrder::Sequential => {
                        let i = next[t].fetch_add(1, Ordering::Relaxed);
                        if i >= if t == 0 { n / 2 } else { n } {
                            break;
                        }
                        i
                    }
                };
                engine
                    .run("put", |tx| tx.put(&key(item), &value(1, item)))
                    .expect("put");
            });
        }
    });
    let took = began.elapsed();
    assert_eq!(engine.stats().commits, n);
    engine.close().expect("close");
    took
}

/// Times `Engine::open_with` on `d`, whose `files` are first dropped from the page
/// cache when `cache` is "cold". `checkpointed`: everything comes from a checkpoint.
fn timed_open(
    d: &Path,
    n: u64,
    (what, order, cache): (&'static str, &'static str, &'static str),
    (files, bytes): (&[PathBuf], u64),
    checkpointed: bool,
) -> ReplayRow {
    if cache == "cold" {
        evict(files);
    }
    let resident = resident(files);
    let began = Instant::now();
    let engine = Engine::open_with(d, opts(Durability::Buffered, 0)).expect("reopen");
    let secs = began.elapsed().as_secs_f64();
    let st = engine.stats();
    assert_eq!(engine.commit_id().get(), n, "everything was recovered");
    let records = if checkpointed {
        assert_eq!((st.journal.replayed, st.journal.checkpoint), (0, n));
        n
    } else {
        st.journal.replayed
    };
    drop(engine);
    ReplayRow {
        what,
        order,
        cache,
        resident,
        secs,
        records,
        bytes,
    }
}

fn replay_section(dir: &BenchDir) {
    let n = if full_run() { REPLAY_COMMITS } else { 20_000 };
    let mut rows = Vec::new();
    let mut built = Vec::new();
    for order in [KeyOrder::Random, KeyOrder::Sequential] {
        let d = dir.sub(&format!("replay-{}", order.name()));
        let build = build_journal(&d, n, order);
        let (files, bytes) = files_in(&d.join("journal"));
        built.push((order, build, bytes, files.len()));
        for cache in ["warm", "cold"] {
            rows.push(timed_open(
                &d,
                n,
                ("journal replay", order.name(), cache),
                (&files, bytes),
                false,
            ));
        }
        if order == KeyOrder::Random {
            // A checkpoint of the same data, from an engine that has appended
            // nothing since it opened: it deletes every journal segment, so the
            // next open loads the checkpoint alone.
            let engine = Engine::open_with(&d, opts(Durability::Buffered, 0)).expect("reopen");
            let began = Instant::now();
            engine.checkpoint().expect("checkpoint");
            let secs = began.elapsed().as_secs_f64();
            engine.close().expect("close");
            assert_eq!(files_in(&d.join("journal")).0.len(), 0, "segments deleted");
            let ckpt: Vec<PathBuf> = files_in(&d)
                .0
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
                .collect();
            let bytes = ckpt.iter().map(|p| p.metadata().expect("stat").len()).sum();
            rows.push(ReplayRow {
                what: "checkpoint write",
                order: "-",
                cache: "-",
                resident: f64::NAN,
                secs,
                records: n,
                bytes,
            });
            for cache in ["warm", "cold"] {
                rows.push(timed_open(
                    &d,
                    n,
                    ("checkpoint load (open)", "-", cache),
                    (&ckpt, bytes),
                    true,
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    eprintln!();
    eprintln!(
        "replay ({n} one-key put commits, 16-byte keys, 100-byte values; {}):",
        dir.fs
    );
    for (order, build, bytes, files) in &built {
        eprintln!(
            "  {} key order: built with Durability::Buffered on 2 threads in {:.2} s ({}); journal {:.1} MB in {files} segment files",
            order.name(),
            build.as_secs_f64(),
            rate(n as f64 / build.as_secs_f64()),
            *bytes as f64 / 1e6,
        );
    }
    eprintln!(
        "  {:<24} {:<10} {:>5} {:>9} {:>8} {:>9} {:>12} {:>8}",
        "step", "key order", "cache", "resident", "seconds", "records", "records/s", "MB/s"
    );
    for r in &rows {
        eprintln!(
            "  {:<24} {:<10} {:>5} {:>9} {:>8.3} {:>9} {:>12} {:>8.1}",
            r.what,
            r.order,
            r.cache,
            if r.resident.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.0}%", r.resident * 100.0)
            },
            r.secs,
            r.records,
            rate(r.records as f64 / r.secs),
            r.bytes as f64 / 1e6 / r.secs
        );
    }
    eprintln!("  (seconds: the whole Engine::open_with, store build included; resident: share of the files in the page cache before it)");
    let verdict = rows
        .iter()
        .filter(|r| r.what == "journal replay")
        .map(|r| {
            let per_sec = r.records as f64 / r.secs;
            format!(
                "{} {} {} ({})",
                if per_sec >= 1e6 { "met" } else { "NOT met" },
                r.order,
                r.cache,
                rate(per_sec)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("  target replay >= 1,000,000 records/s: {verdict}");
}

// ---------------------------------------------------------------------------------
// 5. mmap vs pwrite appends.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Append {
    Mmap,
    MmapPopulate,
    PwriteEach,
    PwriteBatched,
}

impl Append {
    fn name(self) -> &'static str {
        match self {
            Append::Mmap => "mmap_memcpy",
            Append::MmapPopulate => "mmap_populate_1MiB",
            Append::PwriteEach => "pwrite_per_frame",
            Append::PwriteBatched => "pwrite_per_64_frames",
        }
    }
}

fn segment_bytes() -> usize {
    if full_run() {
        8 << 20
    } else {
        1 << 20
    }
}

/// Appends a fresh preallocated segment full of frames the `how` way; returns the
/// time the appends took (creating, preallocating, mapping, unmapping and deleting
/// the file are not timed).
fn append_segment(dir: &Path, how: Append, n: u64) -> Duration {
    let seg = segment_bytes();
    let frames = seg / STRIDE;
    let path = dir.join(format!("segment-{n}.log"));
    let file = create(&path);
    preallocate(&file, seg);
    let mut frame = [0u8; STRIDE];
    for (i, b) in frame[8..FRAME].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    let took = match how {
        Append::Mmap | Append::MmapPopulate => {
            // SAFETY: this bench alone uses the file, and never truncates it while mapped.
            let mut map = unsafe { MmapMut::map_mut(&file) }.expect("mmap");
            let began = Instant::now();
            for i in 0..frames {
                frame[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let at = i * STRIDE;
                if how == Append::MmapPopulate && at % POPULATE < STRIDE {
                    // Fault the next window in with one call instead of a fault
                    // per page as the copies reach it.
                    let from = at - at % POPULATE;
                    map.advise_range(Advice::PopulateWrite, from, POPULATE.min(seg - from))
                        .expect("madvise(MADV_POPULATE_WRITE)");
                }
                map[at..at + STRIDE].copy_from_slice(&frame);
            }
            let took = began.elapsed();
            std::hint::black_box(&map);
            took
        }
        Append::PwriteEach => {
            let began = Instant::now();
            for i in 0..frames {
                frame[..8].copy_from_slice(&(i as u64).to_le_bytes());
                file.write_all_at(&frame, (i * STRIDE) as u64)
                    .expect("pwrite");
            }
            began.elapsed()
        }
        Append::PwriteBatched => {
            let mut buf = Vec::with_capacity(BATCH * STRIDE);
            let mut at = 0u64;
            let began = Instant::now();
            for i in 0..frames {
                frame[..8].copy_from_slice(&(i as u64).to_le_bytes());
                buf.extend_from_slice(&frame);
                if buf.len() == BATCH * STRIDE || i + 1 == frames {
                    file.write_all_at(&buf, at).expect("pwrite");
                    at += buf.len() as u64;
                    buf.clear();
                }
            }
            began.elapsed()
        }
    };
    drop(file);
    std::fs::remove_file(&path).expect("remove segment");
    took
}

fn append_micro(c: &mut Criterion) {
    let dir = bench_dir().sub("append");
    let frames = (segment_bytes() / STRIDE) as u64;
    let variants = [
        Append::Mmap,
        Append::MmapPopulate,
        Append::PwriteEach,
        Append::PwriteBatched,
    ];
    let mut tallies = [(0u64, Duration::ZERO); 4];
    let mut segment = 0u64;
    let mut group = c.benchmark_group("journal_append");
    group.throughput(Throughput::Elements(frames));
    group.measurement_time(Duration::from_secs(3));
    for (slot, &how) in variants.iter().enumerate() {
        let tally = &mut tallies[slot];
        let segment = &mut segment;
        group.bench_function(
            BenchmarkId::new(how.name(), format!("{FRAME}B_frames")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        *segment += 1;
                        total += append_segment(&dir, how, *segment);
                    }
                    tally.0 += iters * frames;
                    tally.1 += total;
                    total
                })
            },
        );
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&bench_dir().root);

    let ns = |t: (u64, Duration)| t.1.as_nanos() as f64 / t.0.max(1) as f64;
    if tallies.iter().all(|t| t.0 == 0) {
        return; // filtered out
    }
    eprintln!();
    eprintln!(
        "append {FRAME}-byte frames (stride {STRIDE}) to a fresh preallocated {} MiB segment (all samples incl. warm-up):",
        segment_bytes() >> 20
    );
    eprintln!(
        "  {:<22} {:>10} {:>12} {:>14}",
        "variant", "frames", "ns/frame", "vs mmap_memcpy"
    );
    let mmap = ns(tallies[0]);
    for (slot, how) in variants.iter().enumerate() {
        if tallies[slot].0 == 0 {
            continue;
        }
        eprintln!(
            "  {:<22} {:>10} {:>12.1} {:>13.2}x",
            how.name(),
            tallies[slot].0,
            ns(tallies[slot]),
            ns(tallies[slot]) / mmap
        );
    }
    eprintln!("  (x > 1: slower than the mapping)");
}

// ---------------------------------------------------------------------------------

/// The bench directory, shared by every section of this process; `append_micro`,
/// the last target, removes it.
fn bench_dir() -> &'static BenchDir {
    static DIR: std::sync::OnceLock<BenchDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        BenchDir::new(
            "journal",
            "fdatasync costs nothing here, durable numbers are meaningless",
        )
    })
}

fn engine_sections(_c: &mut Criterion) {
    let dir = bench_dir();
    if !full_run() {
        eprintln!("quick check: token sizes and durations, the numbers below mean nothing");
    }
    let raw = selected("journal_fdatasync").then(|| fdatasync_section(dir));
    if selected("journal_durable") {
        durable_section(dir, raw);
    }
    if selected("journal_buffered") {
        buffered_section(dir);
    }
    if selected("journal_replay") {
        replay_section(dir);
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = engine_sections, append_micro
}
criterion_main!(benches);
