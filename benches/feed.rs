//! The replication feed beside commit throughput, in the same run: whether one
//! consumer keeps up with two writer threads at full speed, with what lag, what it
//! costs the writers, and how fast a paused consumer catches up from the journal
//! files.
//!
//! Workload: 2 writer threads at full speed; each command reads one uniformly
//! random key of 1,000,000 (16-byte keys, 100-byte values; 10,000 keys in quick
//! runs) and writes it back with its counter incremented, as in
//! `commit_throughput`. The keys are loaded first; every feed starts after the load.
//!
//! The consumer: `Engine::subscribe` at the current commit, then `recv_timeout`
//! in a loop, as fast as it can. It checks that each record follows the one before
//! it (commit ids, chain hashes), reads every op's key and value, and publishes the
//! id it has processed in an atomic. A sampler thread reads `commit_id()` minus
//! that position every ~1 ms: the lag, in commits. The sampler runs in the rows
//! without a consumer too, so the two rows differ by the consumer alone.
//!
//! Sections (plain timed runs printing tables to stderr, like `journal`), each
//! selectable by a filter argument that is part of its name
//! (`cargo bench --bench feed -- catchup`):
//! - `feed_live`: on `Engine::in_memory()` and on an engine opened with
//!   `Durability::Buffered` in a temp directory (default 64 MiB feed window):
//!   rounds of 2 s with no consumer and with one, interleaved (3 rounds, the order
//!   alternating). Per row: the writers' commits/s, and per second of their CPU
//!   time; the longest time the sampler saw the commit id stand still; the
//!   consumer's records/s while the writers ran; the lag's p50 / p99 / max (and
//!   the p99 as time at that commit rate); the lag when the writers stopped and the
//!   time the consumer took to drain it; CPU use. Then commits/s with a consumer
//!   over without, and the consumer alone (no writers) reading 100,000 records
//!   from the in-memory window and, for Buffered, 1,000,000 from the journal files
//!   (in the page cache).
//! - `feed_catchup`: a Buffered engine with `Options::feed_window_bytes` = 1 MiB
//!   (about 5,000 of these records). The consumer runs live for 1 s, is paused
//!   (`Feed::control`) for 1 s while the writers go on, then resumed: it reads the
//!   backlog from the journal files and rejoins the window. Per phase: the writers'
//!   commits/s, the feed's records/s, the lag at its end, the consumer's and the
//!   process's CPU use. Then the catch-up rate
//!   (the backlog visible at the resume over the time to read it) and the time
//!   until the lag is back within the window (under about 5,140 commits).
//!
//! The temp directory must not be a memory file system (tmpfs, ramfs): then the
//! bench uses its target directory, as `journal` does; the first line printed
//! names the directory and its file system.
//!
//! CPU: the machine these numbers were made for has 2 cores, so 2 writers plus
//! the consumer (plus the sampler, asleep nearly all the time) oversubscribe it:
//! whatever the consumer uses comes out of the writers' time. The tables give each
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) as a share of one core, and this
//! process's, every other process's and the idle time (`/proc/stat`) as shares of
//! all cores: numbers from a run where others took CPU are not comparable.
//!
//! Feed errors are counted, printed and retried (the feed keeps its position; no
//! checkpoint runs here, so nothing is ever really truncated); the id and hash
//! checks show whether a retry skipped or repeated anything.
//!
//! `cargo bench --bench feed -- --test` runs every section on token sizes.

mod common;

use common::sections::{selected, span, BenchDir};
use common::{
    counter, cpu_time, full_run, key, key_count, load, loadavg, rate, read_modify_write, Rng,
};
use criterion::{criterion_group, criterion_main, Criterion};
use shardstone::{ChainHash, Durability, Engine, Feed, Op, Options};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Writer threads.
const WRITERS: usize = 2;
/// Interleaved rounds of the live section (full runs).
const ROUNDS: usize = 3;
/// Feed window of the catch-up section.
const SMALL_WINDOW: usize = 1 << 20;
/// Bytes of one read-modify-write record in the window: the 64-byte frame header,
/// the commit id (8), the name's length (2) and "rmw" (3), the op count (4), and
/// one put: tag, key and value lengths (7), the 16-byte key, the 100-byte value.
const RECORD_BYTES: usize = 64 + 8 + 2 + 3 + 4 + 7 + 16 + 100;
/// Records the small window holds: a consumer lagging by fewer reads from memory.
const SMALL_WINDOW_RECORDS: u64 = (SMALL_WINDOW / RECORD_BYTES) as u64;
/// Records the consumer alone reads from the in-memory window (full runs).
const ALONE_WINDOW: u64 = 100_000;
/// Records the consumer alone reads from the journal files (full runs).
const ALONE_FILES: u64 = 1_000_000;
/// How long the consumer waits in one `recv_timeout`.
const RECV_WAIT: Duration = Duration::from_millis(1);
/// Lag sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// Errors after which the consumer gives up (a real truncation would loop forever).
const MAX_ERRORS: u64 = 10_000;

/// Distinct PRNG seeds for every writer thread of every run.
static SEED: AtomicU64 = AtomicU64::new(1);

/// CPU time the calling thread has used so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Busy and idle time of the whole machine so far, all CPUs together (the `cpu`
/// line of `/proc/stat`; idle includes iowait). Zero off Linux.
fn machine_cpu() -> (Duration, Duration) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    // user nice system idle iowait irq softirq steal (guest time is in user already)
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let idle = at(3) + at(4);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (
        Duration::from_secs_f64(busy as f64 / hz),
        Duration::from_secs_f64(idle as f64 / hz),
    )
}

/// CPU use over an interval: this process, every other process, and idle, as
/// shares of all cores.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    process: Duration,
    machine_busy: Duration,
    machine_idle: Duration,
}

impl CpuUse {
    fn start() -> (Duration, (Duration, Duration)) {
        (cpu_time(), machine_cpu())
    }

    fn since((cpu, (busy, idle)): (Duration, (Duration, Duration))) -> CpuUse {
        let (b, i) = machine_cpu();
        CpuUse {
            process: cpu_time().saturating_sub(cpu),
            machine_busy: b.saturating_sub(busy),
            machine_idle: i.saturating_sub(idle),
        }
    }

    fn add(&mut self, o: &CpuUse) {
        self.process += o.process;
        self.machine_busy += o.machine_busy;
        self.machine_idle += o.machine_idle;
    }

    /// "us / others / idle" in percent of `wall` x the cores.
    fn cell(&self, wall: Duration) -> String {
        let all = wall.as_secs_f64() * cores() as f64;
        let pct = |d: Duration| d.as_secs_f64() / all * 100.0;
        format!(
            "{:.0}/{:.0}/{:.0}%",
            pct(self.process),
            pct(self.machine_busy.saturating_sub(self.process)),
            pct(self.machine_idle)
        )
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn share(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        cpu.as_secs_f64() / wall.as_secs_f64()
    }
}

fn fmt_dur(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}

/// The value at quantile `q` of sorted `v` (0 when empty).
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------------------------
// Writers, consumer, sampler.

/// A writer: commands until `stop`; returns (commands, its CPU time).
fn writer(engine: &Engine, keys: u64, start: &Barrier, stop: &AtomicBool) -> (u64, Duration) {
    let mut rng = Rng::new(SEED.fetch_add(1, Ordering::Relaxed));
    start.wait();
    let cpu = thread_cpu();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        read_modify_write(engine, &key(rng.below(keys)));
        n += 1;
    }
    (n, thread_cpu().saturating_sub(cpu))
}

/// What a consumer saw.
#[derive(Default)]
struct Consumed {
    records: u64,
    ops: u64,
    bytes: u64,
    /// Records whose id was not the one after the previous record's.
    out_of_order: u64,
    /// Records whose `prev_hash` was not the previous record's `hash`.
    unchained: u64,
    errors: u64,
    first_error: Option<String>,
    /// Folds every value's counter, so the reads are not optimized away.
    fold: u64,
    cpu: Duration,
    /// When it delivered the record it was told to reach (`Stop::target`).
    reached: Option<Instant>,
}

impl Consumed {
    fn take(
        &mut self,
        id: u64,
        expect: u64,
        prev: Option<ChainHash>,
        rec: &shardstone::CommitRecord,
    ) {
        if id != expect {
            self.out_of_order += 1;
        }
        if prev.is_some_and(|h| h != rec.prev_hash) {
            self.unchained += 1;
        }
        for op in &rec.ops {
            match op {
                Op::Put { key, value } => {
                    self.bytes += (key.len() + value.len()) as u64;
                    self.fold = self.fold.wrapping_add(counter(Some(value)));
                }
                Op::Delete { key } => self.bytes += key.len() as u64,
            }
        }
        self.ops += rec.ops.len() as u64;
        self.records += 1;
    }

    fn merge(&mut self, o: &Consumed) {
        self.records += o.records;
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.out_of_order += o.out_of_order;
        self.unchained += o.unchained;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.fold = self.fold.wrapping_add(o.fold);
        self.cpu += o.cpu;
    }

    fn integrity(&self) -> String {
        let mut s = format!(
            "{} records ({} ops, {:.1} MB of keys and values) checked: {} out of order, {} not chained to the one before, {} errors",
            self.records,
            self.ops,
            self.bytes as f64 / 1e6,
            self.out_of_order,
            self.unchained,
            self.errors
        );
        if let Some(e) = &self.first_error {
            s += &format!(" (first: {e})");
        }
        s
    }
}

/// What a consumer shares with the other threads: where to stop (`target`,
/// `u64::MAX` until the writers stop), and the clock of its CPU time.
struct Stop {
    target: AtomicU64,
    clock: OnceLock<libc::clockid_t>,
}

impl Stop {
    fn new(target: u64) -> Stop {
        Stop {
            target: AtomicU64::new(target),
            clock: OnceLock::new(),
        }
    }

    /// CPU time the consumer has used so far (zero before it started).
    fn consumer_cpu(&self) -> Duration {
        let Some(&clock) = self.clock.get() else {
            return Duration::ZERO;
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes into the struct we pass; the clock is
        // a live thread's (or gives an error once it exited).
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// Consumes `feed` as fast as it can until it has delivered commit `stop.target`,
/// publishing the last processed id in `pos`.
fn consume(mut feed: Feed, pos: &AtomicU64, stop: &Stop) -> Consumed {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_getcpuclockid only writes the calling thread's clock id.
    if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
        let _ = stop.clock.set(clock);
    }
    let cpu = thread_cpu();
    let mut c = Consumed::default();
    let mut expect = feed.position().get() + 1;
    let mut prev: Option<ChainHash> = None;
    loop {
        match feed.recv_timeout(RECV_WAIT) {
            Ok(Some(rec)) => {
                let id = rec.commit_id.get();
                c.take(id, expect, prev, &rec);
                expect = id + 1;
                prev = Some(rec.hash);
                pos.store(id, Ordering::SeqCst);
                if id >= stop.target.load(Ordering::SeqCst) {
                    c.reached = Some(Instant::now());
                    break;
                }
            }
            Ok(None) => {
                if feed.position().get() >= stop.target.load(Ordering::SeqCst) {
                    break;
                }
            }
            // Counted and reported, then retried: the feed keeps its position,
            // and nothing here deletes journal files (no checkpoints), so a
            // `Truncated` is spurious; the id and hash checks above show whether
            // the retry skipped anything.
            Err(e) => {
                c.errors += 1;
                if c.first_error.is_none() {
                    c.first_error = Some(format!("at position {}: {e}", feed.position().get()));
                }
                if c.errors >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    std::hint::black_box(c.fold);
    c.cpu = thread_cpu().saturating_sub(cpu);
    c
}

/// One point of a run: when, the newest commit, the consumer's position.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    commit: u64,
    pos: u64,
    /// CPU time used so far by this process and by the consumer.
    cpu: Duration,
    consumer_cpu: Duration,
}

fn mark(engine: &Engine, pos: &AtomicU64, stop: &Stop) -> Mark {
    let p = pos.load(Ordering::SeqCst);
    Mark {
        at: Instant::now(),
        commit: engine.commit_id().get(),
        pos: p,
        cpu: cpu_time(),
        consumer_cpu: stop.consumer_cpu(),
    }
}

/// Phases of the catch-up run, as the sampler sees them.
const LIVE: u64 = 0;
const PAUSED: u64 = 1;
const CATCHING_UP: u64 = 2;

/// What the sampler shares with the main thread in the catch-up run.
struct Catchup {
    phase: AtomicU64,
    /// The newest commit at the resume.
    backlog_end: AtomicU64,
    caught: AtomicBool,
    /// When the consumer had read the backlog, and when its lag was back to normal.
    backlog_read: Mutex<Option<Mark>>,
    back_to_normal: Mutex<Option<Mark>>,
}

/// What the sampler measured: the lags of `phase` LIVE (all of them without a
/// catch-up run), and its own CPU time.
struct Samples {
    lags: Vec<u64>,
    /// Lags after the consumer caught up again (catch-up run only).
    lags_after: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// The longest time between two samples that saw the commit id move (the
    /// writers running), and when it began.
    stall: Duration,
    stall_at: Option<Instant>,
    cpu: Duration,
}

/// Samples `commit_id() - pos` about every `SAMPLE_EVERY` until `done`.
fn sampler(
    engine: &Engine,
    (pos, stop): (&AtomicU64, &Stop),
    (start, writers_stop, done): (&Barrier, &AtomicBool, &AtomicBool),
    cu: Option<&Catchup>,
) -> Samples {
    let mut s = Samples {
        lags: Vec::with_capacity(8192),
        lags_after: Vec::new(),
        first: None,
        last: None,
        stall: Duration::ZERO,
        stall_at: None,
        cpu: Duration::ZERO,
    };
    start.wait();
    let cpu = thread_cpu();
    // The last sample that saw a new commit.
    let mut last_change: Option<Mark> = None;
    while !done.load(Ordering::SeqCst) {
        let m = mark(engine, pos, stop);
        let lag = m.commit.saturating_sub(m.pos);
        s.first.get_or_insert(m.at);
        s.last = Some(m.at);
        if !writers_stop.load(Ordering::SeqCst) {
            match last_change {
                Some(l) if l.commit == m.commit => {}
                Some(l) => {
                    if m.at - l.at > s.stall {
                        s.stall = m.at - l.at;
                        s.stall_at = Some(l.at);
                    }
                    last_change = Some(m);
                }
                None => last_change = Some(m),
            }
        }
        match cu.map(|c| c.phase.load(Ordering::SeqCst)) {
            None | Some(LIVE) => s.lags.push(lag),
            Some(CATCHING_UP) => {
                let c = cu.expect("catch-up run");
                if c.caught.load(Ordering::SeqCst) {
                    s.lags_after.push(lag);
                } else {
                    let mut read = c.backlog_read.lock().expect("lock");
                    if read.is_none() && m.pos >= c.backlog_end.load(Ordering::SeqCst) {
                        *read = Some(m);
                    }
                    let read_done = read.is_some();
                    drop(read);
                    if read_done && lag <= SMALL_WINDOW_RECORDS {
                        *c.back_to_normal.lock().expect("lock") = Some(m);
                        c.caught.store(true, Ordering::SeqCst);
                    }
                }
            }
            Some(_) => {}
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    s.cpu = thread_cpu().saturating_sub(cpu);
    s
}

impl Samples {
    /// Mean time between samples.
    fn period(&self) -> Duration {
        match (self.first, self.last) {
            (Some(a), Some(b)) if self.lags.len() + self.lags_after.len() > 1 => {
                (b - a) / (self.lags.len() + self.lags_after.len() - 1) as u32
            }
            _ => Duration::ZERO,
        }
    }
}

// ---------------------------------------------------------------------------------
// One run: writers for a while, a consumer or none, the sampler.

/// The timeline of a run.
enum Plan {
    /// Writers for `dur`.
    Live { dur: Duration },
    /// Live for `before`, the consumer paused for `paused`, then resumed; the
    /// writers stop `after` once it caught up, or `give_up` after the resume.
    Pause {
        before: Duration,
        paused: Duration,
        after: Duration,
        give_up: Duration,
    },
}

struct Run {
    start: Mark,
    /// The writers stopped (all joined).
    end: Mark,
    /// Catch-up run: at the pause, at the resume.
    pause: Option<(Mark, Mark)>,
    backlog_read: Option<Mark>,
    back_to_normal: Option<Mark>,
    commands: u64,
    writers_cpu: Duration,
    cpu: CpuUse,
    samples: Samples,
    consumed: Consumed,
    /// From the writers' stop until the consumer had everything (zero if it had).
    drain: Duration,
}

impl Run {
    fn wall(&self) -> Duration {
        self.end.at - self.start.at
    }

    fn commits_per_sec(&self) -> f64 {
        self.commands as f64 / self.wall().as_secs_f64()
    }

    fn lag_at_stop(&self) -> u64 {
        self.end.commit.saturating_sub(self.end.pos)
    }
}

fn run(engine: &Engine, keys: u64, consumer: bool, plan: Plan) -> Run {
    let from = engine.commit_id().get();
    let pos = AtomicU64::new(from);
    let stop = Stop::new(u64::MAX);
    let writers_stop = AtomicBool::new(false);
    let sampler_stop = AtomicBool::new(false);
    let start = Barrier::new(WRITERS + 2);
    let cu = matches!(plan, Plan::Pause { .. }).then(|| Catchup {
        phase: AtomicU64::new(LIVE),
        backlog_end: AtomicU64::new(u64::MAX),
        caught: AtomicBool::new(false),
        backlog_read: Mutex::new(None),
        back_to_normal: Mutex::new(None),
    });
    let feed = consumer.then(|| engine.subscribe(from).expect("subscribe"));
    let control = feed.as_ref().map(Feed::control);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (start, stop) = (&start, &writers_stop);
                s.spawn(move || writer(engine, keys, start, stop))
            })
            .collect();
        let (pos, stop, cu_ref) = (&pos, &stop, cu.as_ref());
        let reader = feed.map(|feed| s.spawn(move || consume(feed, pos, stop)));
        let flags = (&start, &writers_stop, &sampler_stop);
        let sampler = s.spawn(move || sampler(engine, (pos, stop), flags, cu_ref));
        let cpu = CpuUse::start();
        start.wait();
        let start = mark(engine, pos, stop);
        let mut pause = None;
        match plan {
            Plan::Live { dur } => std::thread::sleep(dur),
            Plan::Pause {
                before,
                paused,
                after,
                give_up,
            } => {
                let (control, cu) = (
                    control.as_ref().expect("a consumer"),
                    cu_ref.expect("catch-up"),
                );
                std::thread::sleep(before);
                cu.phase.store(PAUSED, Ordering::SeqCst);
                control.pause();
                let p = mark(engine, pos, stop);
                std::thread::sleep(paused);
                let r = mark(engine, pos, stop);
                cu.backlog_end.store(r.commit, Ordering::SeqCst);
                cu.phase.store(CATCHING_UP, Ordering::SeqCst);
                control.resume();
                pause = Some((p, r));
                while !cu.caught.load(Ordering::SeqCst) && r.at.elapsed() < give_up {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(after);
            }
        }
        writers_stop.store(true, Ordering::Relaxed);
        let mut commands = 0;
        let mut writers_cpu = Duration::ZERO;
        for h in writers {
            let (n, c) = h.join().expect("writer panicked");
            commands += n;
            writers_cpu += c;
        }
        let stopped = Instant::now();
        let cpu = CpuUse::since(cpu);
        let final_commit = engine.commit_id().get();
        stop.target.store(final_commit, Ordering::SeqCst);
        let end_pos = pos.load(Ordering::SeqCst);
        let end = Mark {
            at: stopped,
            commit: final_commit,
            pos: if consumer { end_pos } else { from },
            cpu: cpu_time(),
            consumer_cpu: stop.consumer_cpu(),
        };
        let consumed =
            reader.map_or_else(Consumed::default, |h| h.join().expect("consumer panicked"));
        sampler_stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().expect("sampler panicked");
        let drain = match consumed.reached {
            Some(t) if end_pos < final_commit => t.saturating_duration_since(stopped),
            _ => Duration::ZERO,
        };
        let (backlog_read, back_to_normal) = match &cu {
            Some(c) => (
                *c.backlog_read.lock().expect("lock"),
                *c.back_to_normal.lock().expect("lock"),
            ),
            None => (None, None),
        };
        let start = Mark { pos: from, ..start };
        Run {
            start,
            end,
            pause,
            backlog_read,
            back_to_normal,
            commands,
            writers_cpu,
            cpu,
            samples,
            consumed,
            drain,
        }
    })
}

/// The consumer alone, no writers: reads `n` commits after `from` as fast as it
/// can. Returns what it consumed and the wall time.
fn alone(engine: &Engine, from: u64, n: u64) -> (Consumed, Duration) {
    let pos = AtomicU64::new(from);
    let stop = Stop::new(from + n);
    let feed = engine.subscribe(from).expect("subscribe");
    let began = Instant::now();
    let c = std::thread::scope(|s| {
        s.spawn(|| consume(feed, &pos, &stop))
            .join()
            .expect("consumer panicked")
    });
    (c, began.elapsed())
}

// ---------------------------------------------------------------------------------
// 1. Live: 0 or 1 consumer beside 2 writers.

fn open_buffered(dir: &Path, window: usize) -> Engine {
    let opts = Options {
        durability: Durability::Buffered,
        feed_window_bytes: window,
        ..Options::default()
    };
    Engine::open_with(dir, opts).expect("open")
}

fn lag_cells(lags: &[u64], commits_per_sec: f64) -> String {
    let mut v = lags.to_vec();
    v.sort_unstable();
    let p99 = quantile(&v, 0.99);
    format!(
        "{:>8} {:>8} {:>8} {:>10}",
        quantile(&v, 0.5),
        p99,
        v.last().copied().unwrap_or(0),
        fmt_dur(Duration::from_secs_f64(
            p99 as f64 / commits_per_sec.max(1.0)
        ))
    )
}

/// The mean of the first and the second half of `v`.
fn halves(v: &[u64]) -> (f64, f64) {
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    let (a, b) = v.split_at(v.len() / 2);
    (mean(a), mean(b))
}

fn live_section(dir: &BenchDir) {
    let keys = key_count();
    let dur = span(Duration::from_secs(2), Duration::from_millis(40));
    let warm = span(Duration::from_millis(300), Duration::from_millis(10));
    let rounds = if full_run() { ROUNDS } else { 1 };
    let n_cores = cores();
    for kind in ["in-memory", "Buffered"] {
        let load_before = loadavg();
        let buffered_dir = dir.sub("live-buffered");
        let engine = if kind == "in-memory" {
            Engine::in_memory().expect("in-memory engine")
        } else {
            open_buffered(&buffered_dir, Options::default().feed_window_bytes)
        };
        let took = load(&engine, 0..keys);
        run(&engine, keys, true, Plan::Live { dur: warm });
        let first_run = engine.commit_id().get();
        // [consumers]: every round's run.
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for consumer in order {
                runs[usize::from(consumer)].push(run(&engine, keys, consumer, Plan::Live { dur }));
            }
        }
        let last = engine.commit_id().get();
        let n = span_n(ALONE_WINDOW, 10_000).min(last - first_run);
        let alone_window = alone(&engine, last - n, n);
        let alone_files = (kind == "Buffered").then(|| {
            let n = span_n(ALONE_FILES, 20_000).min(last - first_run);
            alone(&engine, first_run, n)
        });
        drop(engine);
        let _ = std::fs::remove_dir_all(&buffered_dir);

        eprintln!();
        eprintln!(
            "{kind} engine{}: {keys} keys loaded in {:.2} s; {WRITERS} writer threads, 1-key read-modify-write, \
             {rounds} round{} of {} per row, with and without a consumer interleaved; {n_cores} cores",
            if kind == "Buffered" {
                format!(" (Durability::Buffered, {})", dir.fs)
            } else {
                String::new()
            },
            took.as_secs_f64(),
            if rounds == 1 { "" } else { "s" },
            fmt_dur(dur),
        );
        eprintln!(
            "  {:>9} {:>5} {:>11} {:>11} {:>8} {:>11} {:>8} {:>8} {:>8} {:>10} {:>11} {:>8} {:>12} {:>12} {:>18}",
            "consumers",
            "round",
            "commits/s",
            "per wCPU-s",
            "stall",
            "feed rec/s",
            "lag p50",
            "lag p99",
            "lag max",
            "p99 time",
            "lag at stop",
            "drain",
            "writers CPU",
            "consumer CPU",
            "CPU us/others/idle"
        );
        let row = |consumers: usize, round: &str, r: &Tally2, lags: &[u64]| {
            let cps = r.commands as f64 / r.wall.as_secs_f64();
            let (feed, lag, stop, drain, ccpu) = if consumers == 0 {
                let dash = "-".to_owned();
                (
                    dash.clone(),
                    format!("{:>8} {:>8} {:>8} {:>10}", "-", "-", "-", "-"),
                    dash.clone(),
                    dash.clone(),
                    dash,
                )
            } else {
                (
                    rate(r.delivered as f64 / r.wall.as_secs_f64()),
                    lag_cells(lags, cps),
                    r.lag_at_stop.to_string(),
                    fmt_dur(r.drain),
                    format!("{:.0}%", share(r.consumer_cpu, r.wall + r.drain) * 100.0),
                )
            };
            eprintln!(
                "  {consumers:>9} {round:>5} {:>11} {:>11} {:>8} {feed:>11} {lag} {stop:>11} {drain:>8} {:>12} {ccpu:>12} {:>18}",
                rate(cps),
                rate(r.commands as f64 / r.writers_cpu.as_secs_f64().max(1e-9)),
                fmt_dur(r.stall),
                format!(
                    "{WRITERS} x {:.0}%",
                    share(r.writers_cpu, r.wall) / WRITERS as f64 * 100.0
                ),
                r.cpu.cell(r.wall),
            );
        };
        let mut totals = [Tally2::default(), Tally2::default()];
        let mut pooled: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut halves_sum = (0.0, 0.0);
        let mut consumed = Consumed::default();
        let mut periods = Vec::new();
        let (mut sampler_cpu, mut sampled) = (Duration::ZERO, Duration::ZERO);
        for (round, (without, with)) in runs[0].iter().zip(&runs[1]).enumerate() {
            for (c, r) in [(0, without), (1, with)] {
                let t = Tally2::of(r);
                row(c, &(round + 1).to_string(), &t, &r.samples.lags);
                totals[c].add(&t);
                if c == 1 {
                    pooled[1].extend_from_slice(&r.samples.lags);
                    let (a, b) = halves(&r.samples.lags);
                    halves_sum.0 += a / rounds as f64;
                    halves_sum.1 += b / rounds as f64;
                    consumed.merge(&r.consumed);
                }
                periods.push(r.samples.period());
                sampler_cpu += r.samples.cpu;
                sampled += r.wall() + r.drain;
            }
        }
        if rounds > 1 {
            for c in [0, 1] {
                row(c, "all", &totals[c], &pooled[c]);
            }
        }
        let ratios: Vec<String> = runs[1]
            .iter()
            .zip(&runs[0])
            .map(|(a, b)| format!("{:.3}", a.commits_per_sec() / b.commits_per_sec()))
            .collect();
        let cps = |t: &Tally2| t.commands as f64 / t.wall.as_secs_f64();
        eprintln!(
            "  commits/s with a consumer / without: {:.3} (totals; per round {})",
            cps(&totals[1]) / cps(&totals[0]),
            ratios.join(", ")
        );
        let kept_up = runs[1]
            .iter()
            .all(|r| r.drain <= Duration::from_millis(10) && r.consumed.errors == 0);
        eprintln!(
            "  one consumer kept up with {WRITERS} writers: {} (feed records/s {:.1}% of commits/s while writing; \
             mean lag in the first / second half of each run {:.0} / {:.0} commits; every run drained within {})",
            if kept_up { "yes" } else { "NO" },
            totals[1].delivered as f64 / totals[1].commands as f64 * 100.0,
            halves_sum.0,
            halves_sum.1,
            fmt_dur(runs[1].iter().map(|r| r.drain).max().unwrap_or_default()),
        );
        eprintln!("  consumer: {}", consumed.integrity());
        let mean_period = periods.iter().sum::<Duration>() / periods.len().max(1) as u32;
        eprintln!(
            "  (lag: commit_id() - the consumer's processed position, sampled every {} on average (asked: {}; \
             the sampler used {:.1}% of a core); \
             per wCPU-s: commits per second of the writer threads' CPU time; \
             stall: the longest time the commit id did not move, as the sampler saw it; p99 time: the p99 lag over the row's commit rate; lag at stop: when the writers had all returned; \
             drain: from then until the consumer had the last commit)",
            fmt_dur(mean_period),
            fmt_dur(SAMPLE_EVERY),
            share(sampler_cpu, sampled) * 100.0
        );
        eprintln!(
            "  (CPU: thread CPU time over wall time, per writer and for the consumer, of one core each; process: \
             us/others/idle: this process's CPU time (all threads), every other process's and the idle time \
             (/proc/stat), over wall x {n_cores} cores. {} threads want a core each on {n_cores}: the consumer's CPU comes out of the writers')",
            WRITERS + 1
        );
        let alone_line = |what: &str, (c, wall): &(Consumed, Duration)| {
            eprintln!(
                "  consumer alone (no writers), {what}: {} records in {} = {} ({:.0}% of a core){}",
                c.records,
                fmt_dur(*wall),
                rate(c.records as f64 / wall.as_secs_f64()),
                share(c.cpu, *wall) * 100.0,
                if c.errors + c.out_of_order + c.unchained > 0 {
                    format!("; {}", c.integrity())
                } else {
                    String::new()
                }
            );
        };
        alone_line("from the in-memory window", &alone_window);
        if let Some(f) = &alone_files {
            alone_line("from the journal files (in the page cache)", f);
        }
        eprintln!(
            "  load average before / after: {load_before} / {}",
            loadavg()
        );
    }
}

fn span_n(full: u64, quick: u64) -> u64 {
    if full_run() {
        full
    } else {
        quick
    }
}

/// A run's figures, summable over rounds.
#[derive(Clone, Copy, Default)]
struct Tally2 {
    commands: u64,
    delivered: u64,
    wall: Duration,
    drain: Duration,
    lag_at_stop: u64,
    stall: Duration,
    writers_cpu: Duration,
    consumer_cpu: Duration,
    cpu: CpuUse,
}

impl Tally2 {
    fn of(r: &Run) -> Tally2 {
        Tally2 {
            commands: r.commands,
            delivered: r.end.pos - r.start.pos,
            wall: r.wall(),
            drain: r.drain,
            lag_at_stop: r.lag_at_stop(),
            stall: r.samples.stall,
            writers_cpu: r.writers_cpu,
            consumer_cpu: r.consumed.cpu,
            cpu: r.cpu,
        }
    }

    /// Sums; the lag at stop, the drain and the stall become the largest.
    fn add(&mut self, o: &Tally2) {
        self.commands += o.commands;
        self.delivered += o.delivered;
        self.wall += o.wall;
        self.drain = self.drain.max(o.drain);
        self.lag_at_stop = self.lag_at_stop.max(o.lag_at_stop);
        self.stall = self.stall.max(o.stall);
        self.writers_cpu += o.writers_cpu;
        self.consumer_cpu += o.consumer_cpu;
        self.cpu.add(&o.cpu);
    }
}

// ---------------------------------------------------------------------------------
// 2. A paused consumer catches up from the journal files.

fn catchup_section(dir: &BenchDir) {
    let keys = key_count();
    let load_before = loadavg();
    let d = dir.sub("catchup");
    let engine = open_buffered(&d, SMALL_WINDOW);
    load(&engine, 0..keys);
    run(
        &engine,
        keys,
        false,
        Plan::Live {
            dur: span(Duration::from_millis(300), Duration::from_millis(10)),
        },
    );
    let plan = Plan::Pause {
        before: span(Duration::from_secs(1), Duration::from_millis(50)),
        paused: span(Duration::from_secs(1), Duration::from_millis(100)),
        after: span(Duration::from_millis(500), Duration::from_millis(20)),
        give_up: span(Duration::from_secs(8), Duration::from_secs(2)),
    };
    let r = run(&engine, keys, true, plan);
    drop(engine);
    let _ = std::fs::remove_dir_all(&d);
    let n_cores = cores();

    eprintln!();
    eprintln!(
        "catch-up from the journal files (Durability::Buffered, feed_window_bytes {} KiB, {}; {keys} keys, \
         {WRITERS} writer threads; the consumer paused mid-run, then resumed; {n_cores} cores):",
        SMALL_WINDOW >> 10,
        dir.fs
    );
    let (p, q) = r.pause.expect("a pause");
    let normal = r.back_to_normal;
    let mut phases = vec![("live", r.start, p), ("paused", p, q)];
    match normal {
        Some(b) => {
            phases.push(("catching up", q, b));
            phases.push(("live again", b, r.end));
        }
        None => phases.push(("catching up (not done)", q, r.end)),
    }
    eprintln!(
        "  {:<24} {:>7} {:>7} {:>8} {:>11} {:>14} {:>11} {:>13} {:>12}",
        "phase",
        "from s",
        "to s",
        "seconds",
        "commits/s",
        "feed rec/s",
        "lag at end",
        "consumer CPU",
        "process CPU"
    );
    let secs = |m: &Mark| (m.at - r.start.at).as_secs_f64();
    let per_sec = |a: &Mark, b: &Mark, f: fn(&Mark) -> u64| {
        (f(b) - f(a)) as f64 / (b.at - a.at).as_secs_f64().max(1e-9)
    };
    let mut commit_rates = Vec::new();
    for (name, a, b) in &phases {
        let c = per_sec(a, b, |m| m.commit);
        commit_rates.push(c);
        eprintln!(
            "  {name:<24} {:>7.3} {:>7.3} {:>8.3} {:>11} {:>14} {:>11} {:>12.0}% {:>7.0}% of {n_cores}",
            secs(a),
            secs(b),
            (b.at - a.at).as_secs_f64(),
            rate(c),
            rate(per_sec(a, b, |m| m.pos)),
            b.commit.saturating_sub(b.pos),
            share(b.consumer_cpu.saturating_sub(a.consumer_cpu), b.at - a.at) * 100.0,
            share(b.cpu.saturating_sub(a.cpu), b.at - a.at) / n_cores as f64 * 100.0,
        );
    }
    eprintln!(
        "  writers' commits/s while paused / before: {:.3}; while catching up / before: {:.3}",
        commit_rates[1] / commit_rates[0],
        commit_rates[2] / commit_rates[0]
    );
    let backlog = q.commit - q.pos;
    match r.backlog_read {
        Some(b) => eprintln!(
            "  catch-up rate: the {backlog} commits behind at the resume (~{:.0} MB of records) read in {}: {} \
             (records/s delivered from the resume until the consumer passed the commit that was newest at the resume; \
             the window holds the newest ~{} records, the rest came from the files)",
            (backlog * RECORD_BYTES as u64) as f64 / 1e6,
            fmt_dur(b.at - q.at),
            rate((b.pos - q.pos) as f64 / (b.at - q.at).as_secs_f64()),
            SMALL_WINDOW_RECORDS
        ),
        None => eprintln!("  catch-up rate: the backlog of {backlog} commits was NOT read before the writers stopped"),
    }
    match normal {
        Some(b) => eprintln!(
            "  back within the in-memory window (lag under {SMALL_WINDOW_RECORDS} commits) {} after the resume, \
             the writers going on: the lag shrank by {} (the feed's rate less the writers')",
            fmt_dur(b.at - q.at),
            rate(backlog.saturating_sub(b.commit - b.pos) as f64 / (b.at - q.at).as_secs_f64()),
        ),
        None => eprintln!(
            "  NOT back within the in-memory window (lag under {SMALL_WINDOW_RECORDS} commits) before the writers stopped (gave up waiting)"
        ),
    }
    let lag_line = |what: &str, lags: &[u64], cps: f64| {
        eprintln!(
            "  lag {what}: p50 / p99 / max {} commits ({} samples)",
            lag_cells(lags, cps)
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / "),
            lags.len()
        );
    };
    lag_line("before the pause", &r.samples.lags, commit_rates[0]);
    if normal.is_some() {
        lag_line("after catching up", &r.samples.lags_after, commit_rates[3]);
    }
    eprintln!(
        "  after the writers stopped: lag {} commits, drained in {}",
        r.lag_at_stop(),
        fmt_dur(r.drain)
    );
    eprintln!(
        "  longest time without a new commit (sampled): {} from {:.3} s",
        fmt_dur(r.samples.stall),
        r.samples
            .stall_at
            .map_or(0.0, |t| (t - r.start.at).as_secs_f64())
    );
    eprintln!("  consumer: {}", r.consumed.integrity());
    eprintln!(
        "  CPU over the whole run: writers {WRITERS} x {:.0}%, consumer {:.0}% (of one core each); \
         this process / other processes / idle: {} of {n_cores} cores",
        share(r.writers_cpu, r.wall()) / WRITERS as f64 * 100.0,
        share(r.consumed.cpu, r.wall() + r.drain) * 100.0,
        r.cpu.cell(r.wall())
    );
    eprintln!(
        "  load average before / after: {load_before} / {}",
        loadavg()
    );
}

// ---------------------------------------------------------------------------------

fn sections(_c: &mut Criterion) {
    let live = selected("feed_live");
    let catchup = selected("feed_catchup");
    if !live && !catchup {
        return;
    }
    let dir = BenchDir::new("feed", "the Buffered numbers do not include writeback");
    if !full_run() {
        eprintln!("quick check: token sizes and durations, the numbers below mean nothing");
    }
    if live {
        live_section(&dir);
    }
    if catchup {
        catchup_section(&dir);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = sections
}
criterion_main!(benches);
