//! One cell: one engine, one workload, one thread count, in a process of its
//! own (the parent runs this binary with `cell ...`), so that its peak memory
//! is its own and no other engine's background threads run beside it.
//!
//! The cell opens the preloaded database, scans every key (warming caches),
//! runs the workload unmeasured for the warm-up, then measured; every command's
//! latency, retries included, goes into a per-thread HdrHistogram. The counter
//! workload's counter is read before and after the measured run: it must have
//! grown by exactly the commands that committed (no lost update).
//!
//! A sharing-tax cell of N engines ([`Workload::engine_per_thread`]) opens
//! the N preloaded parts beside the engine's directory (`plan::part_dir`) and
//! runs thread `t` on part `t`; its counters are the parts' summed.
//!
//! While the measured run goes, the parent thread samples the engine's
//! blocking-queue depth every [`DEPTH_SAMPLE_EVERY`] (engines that have one).
//! Commands the engine refuses with a documented outcome (a lock wait that
//! timed out or would deadlock, admission refused) are counted, not fatal; a
//! refused fast command's time counts as fast-command time.

use crate::engines::{Counters, Engine, Kind, Refusal};
use crate::keys::Zipf;
use crate::plan::part_dir;
use crate::report::{CellResult, Latency, QueueDepth, Refusals};
use crate::rss;
use crate::workload::{part, Class, Generator, Step, Workload, HOT_COUNTER, ZIPF_THETA};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// How often the blocking-queue depth is sampled in the measured run.
/// `Engine::stats` is not free, so not much more often than this.
const DEPTH_SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// What a cell runs.
#[derive(Clone, Debug)]
pub struct CellSpec {
    /// The engine.
    pub engine: Kind,
    /// The workload.
    pub workload: Workload,
    /// Threads issuing commands.
    pub threads: usize,
    /// Measured time.
    pub measure: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Items preloaded in the database.
    pub keys: u64,
    /// The engine's preloaded database directory.
    pub dir: PathBuf,
}

/// What one thread measured.
struct ThreadTally {
    main: Histogram<u64>,
    slow: Histogram<u64>,
    writes: u64,
    reads: u64,
    /// Nanoseconds spent in measured-path (non-slow) commands, refused ones too.
    main_ns: u64,
    /// Commands the engine refused, fast and slow.
    refused: Refusals,
}

impl ThreadTally {
    fn new() -> ThreadTally {
        // 1 ns to 10 min at 3 significant digits.
        let hist = || Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds");
        ThreadTally {
            main: hist(),
            slow: hist(),
            writes: 0,
            reads: 0,
            main_ns: 0,
            refused: Refusals::default(),
        }
    }

    fn merge(&mut self, other: &ThreadTally) {
        self.main.add(&other.main).expect("same bounds");
        self.slow.add(&other.slow).expect("same bounds");
        self.writes += other.writes;
        self.reads += other.reads;
        self.main_ns += other.main_ns;
        self.refused.add(&other.refused);
    }

    fn refuse(&mut self, class: Class, why: Refusal) {
        let r = &mut self.refused;
        match why {
            Refusal::Timeout => r.timeout += 1,
            Refusal::Deadlock => r.deadlock += 1,
            Refusal::Overloaded => r.overloaded += 1,
        }
        if class == Class::Slow {
            r.slow += 1;
        }
    }
}

/// Opens the cell's engines, each with the items it must hold: one engine with
/// every item, or (the sharing tax's N engines) one per thread with its part.
/// Returns them and the time their opens took (their scans not included).
fn open_all(spec: &CellSpec) -> Result<(Vec<Box<dyn Engine>>, Duration), String> {
    let parts: Vec<(PathBuf, u64)> = if spec.workload.engine_per_thread() {
        (0..spec.threads)
            .map(|i| {
                let items = part(spec.keys, i, spec.threads);
                (
                    part_dir(&spec.dir, i, spec.threads),
                    items.end - items.start,
                )
            })
            .collect()
    } else {
        vec![(spec.dir.clone(), spec.keys)]
    };
    let mut engines = Vec::with_capacity(parts.len());
    let mut opening = Duration::ZERO;
    for (dir, keys) in parts {
        let started = Instant::now();
        let engine = spec
            .engine
            .open(&dir, spec.workload.tier())
            .map_err(|e| format!("open {}: {e}", dir.display()))?;
        opening += started.elapsed();
        let scanned = engine.scan().map_err(|e| format!("scan: {e}"))?;
        if scanned != keys {
            return Err(format!(
                "scan of {} found {scanned} keys, {keys} expected",
                dir.display()
            ));
        }
        engines.push(engine);
    }
    Ok((engines, opening))
}

/// Every engine's counters, summed.
fn counters(engines: &[&dyn Engine]) -> Counters {
    engines
        .iter()
        .fold(Counters::default(), |sum, e| sum.plus(e.counters()))
}

/// Opens, warms, measures and settles one cell.
pub fn run(spec: &CellSpec) -> Result<CellResult, String> {
    let (opened_engines, opened) = open_all(spec)?;
    let engines: Vec<&dyn Engine> = opened_engines.iter().map(|e| &**e).collect();
    let engine = engines[0];
    let zipf = Zipf::new(spec.keys, ZIPF_THETA, 0x5eed);
    drive(&engines, spec, &zipf, spec.warmup, 1)?;

    let counted = spec.workload == Workload::Counter;
    let counter_before = if counted { read_counter(engine)? } else { 0 };
    let before = counters(&engines);
    let rss_reset = rss::reset_peak();
    let cpu_before = rss::cpu_time();
    let (tally, elapsed, depth) = drive(&engines, spec, &zipf, spec.measure, 2)?;
    let cpu = rss::cpu_time().saturating_sub(cpu_before);
    let peak_rss_mib = rss::peak_mib();
    let after = counters(&engines);
    let counter_added = if counted {
        let added = read_counter(engine)? - counter_before;
        if added != tally.writes {
            return Err(format!(
                "lost update: the counter grew by {added}, {} commands committed",
                tally.writes
            ));
        }
        Some(added)
    } else {
        None
    };
    for e in &engines {
        e.settle().map_err(|e| format!("settle: {e}"))?;
    }
    drop(engines);
    drop(opened_engines);

    let secs = elapsed.as_secs_f64();
    let commands = tally.writes + tally.reads;
    let retries = after.retries - before.retries;
    let conflicts = after.conflicts - before.conflicts;
    let escalations = after.escalations - before.escalations;
    let lock_waits = after.lock_waits - before.lock_waits;
    let lock_wait_ns = after.lock_wait_ns - before.lock_wait_ns;
    let page_changes_resolved = after
        .page_changes_resolved
        .zip(before.page_changes_resolved)
        .map(|(a, b)| a - b);
    let slow = tally.slow.len();
    let per_commit = |n: u64| n as f64 / (tally.writes + slow).max(1) as f64;
    Ok(CellResult {
        engine: spec.engine,
        workload: spec.workload,
        tier: spec.workload.tier(),
        threads: spec.threads,
        seconds: secs,
        commands,
        commits: tally.writes,
        slow_commands: slow,
        commands_per_sec: commands as f64 / secs,
        retries,
        retries_per_commit: per_commit(retries),
        conflicts,
        conflicts_per_commit: per_commit(conflicts),
        escalations,
        escalations_per_commit: per_commit(escalations),
        page_changes_resolved,
        resolved_per_commit: page_changes_resolved.map(per_commit),
        counter_added,
        refused: tally.refused,
        lock_waits,
        lock_wait_ms: lock_wait_ns as f64 / 1e6,
        lock_timeouts: after.timeouts - before.timeouts,
        lock_deadlocks: after.deadlocks - before.deadlocks,
        queue_depth: depth,
        latency: Latency::of(&tally.main),
        slow_latency: (slow > 0).then(|| Latency::of(&tally.slow)),
        fast_time_share: tally.main_ns as f64 / (secs * 1e9 * spec.threads as f64),
        cpu_us_per_command: cpu.as_secs_f64() * 1e6 / (commands + slow).max(1) as f64,
        peak_rss_mib,
        rss_reset,
        open_seconds: opened.as_secs_f64(),
    })
}

/// The counter workload's counter, read from a snapshot (0 before the first add).
fn read_counter(engine: &dyn Engine) -> Result<u64, String> {
    let mut value = 0;
    engine
        .read(&mut |r| {
            value = r.get(HOT_COUNTER)?.unwrap_or(0);
            Ok(())
        })
        .map_err(|e| format!("reading the counter: {e}"))?;
    Ok(value)
}

/// Runs the workload on `spec.threads` threads for `span`, thread `t` on
/// `engines[t % engines.len()]`; returns the merged tally, the time from the
/// common start until the last thread stopped, and the blocking-queue depth
/// (summed over the engines) sampled meanwhile.
fn drive(
    engines: &[&dyn Engine],
    spec: &CellSpec,
    zipf: &Zipf,
    span: Duration,
    round: u64,
) -> Result<(ThreadTally, Duration, Option<QueueDepth>), String> {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(spec.threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..spec.threads)
            .map(|t| {
                let (stop, start) = (&stop, &start);
                let engine = engines[t % engines.len()];
                s.spawn(move || {
                    let seed = (round << 32) ^ (t as u64) << 8 ^ spec.workload.stream();
                    let mut generator = Generator::new(
                        spec.workload,
                        spec.keys,
                        (t, spec.threads),
                        seed,
                        Some(zipf),
                    );
                    let mut tally = ThreadTally::new();
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let step = generator.step(engine).map_err(|e| e.to_string())?;
                        let ns = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        let class = match step {
                            Step::Done(class) => class,
                            Step::Refused(class, why) => {
                                tally.refuse(class, why);
                                if class != Class::Slow {
                                    tally.main_ns += ns;
                                }
                                continue;
                            }
                        };
                        match class {
                            Class::Slow => tally.slow.saturating_record(ns),
                            Class::Write | Class::Read => {
                                tally.main.saturating_record(ns);
                                tally.main_ns += ns;
                                if class == Class::Write {
                                    tally.writes += 1;
                                } else {
                                    tally.reads += 1;
                                }
                            }
                        }
                    }
                    Ok::<_, String>(tally)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let depth = sample_depth(engines, began + span);
        stop.store(true, Ordering::Relaxed);
        let mut total = ThreadTally::new();
        for w in workers {
            let tally = w
                .join()
                .map_err(|_| "a worker thread panicked".to_string())??;
            total.merge(&tally);
        }
        Ok((total, began.elapsed(), depth))
    })
}

/// Samples the engines' blocking-queue depth (their sum) until `until`; `None`
/// (after sleeping until then) for engines without a blocking queue.
fn sample_depth(engines: &[&dyn Engine], until: Instant) -> Option<QueueDepth> {
    let mut depth = QueueDepth::default();
    let mut sum = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        match engines.iter().map(|e| e.queue_depth()).sum::<Option<u64>>() {
            Some(d) => {
                sum += d;
                depth.samples += 1;
                depth.max = depth.max.max(d);
            }
            None => {
                std::thread::sleep(until - now);
                return None;
            }
        }
        std::thread::sleep(DEPTH_SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now())));
    }
    depth.mean = sum as f64 / depth.samples.max(1) as f64;
    Some(depth)
}
