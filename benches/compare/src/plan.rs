//! The parent side of a run: preload each engine, then run every cell in a
//! child process, engines alternating cell by cell (the starting engine rotates,
//! so no engine always runs first after another's cell), and collect results.
//!
//! A child prints one line `RESULT <json>` on stdout; its stderr passes through.
//! Between children the parent flushes dirty pages to disk, so that no cell pays
//! for the previous one's writeback.

use crate::cell::CellSpec;
use crate::cli::{cell_args, RunArgs};
use crate::engines::{Kind, Tier};
use crate::report::{CellResult, LoadResult, Report};
use crate::workload::Workload;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Marks the result line of a child.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Writes every dirty page of the system to disk. Run between children: the
/// previous cell's writes (a checkpoint, a journal, an LSM flush) would
/// otherwise be written back during the next cell, taking CPU and disk from
/// whichever engine runs next, and delaying its fsyncs.
fn flush_dirty_pages() {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() }
}

/// Runs this binary with `args`, parses its result line, then flushes what it
/// left dirty (see [`flush_dirty_pages`]).
fn child<T: DeserializeOwned>(args: &[String]) -> Result<T, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("spawning `{}`: {e}", args.join(" ")))?;
    flush_dirty_pages();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {stdout}",
            args.join(" "),
            out.status
        ));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("`{}` printed no result", args.join(" ")))?;
    serde_json::from_str(line).map_err(|e| format!("bad result from `{}`: {e}", args.join(" ")))
}

/// Workloads grouped as they run: W4's and W8's two halves back to back per
/// engine.
fn groups(workloads: &[Workload]) -> Vec<Vec<Workload>> {
    let mut out: Vec<Vec<Workload>> = Vec::new();
    for &w in workloads {
        let pairs_with_last = w
            .baseline()
            .is_some_and(|b| out.last().is_some_and(|g| g.contains(&b)));
        if pairs_with_last {
            out.last_mut().expect("checked").push(w);
        } else {
            out.push(vec![w]);
        }
    }
    out
}

/// Runs the whole comparison; progress goes to stderr.
pub fn run(args: &RunArgs, command: String) -> Result<Report, String> {
    let started = Instant::now();
    let (data, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shardstone-compare-{}", std::process::id())),
            true,
        ),
    };
    let dir_of = |k: Kind| data.join(k.name());
    // The sharing tax's engines of one thread each: one set per thread count.
    let tax_threads: Vec<usize> = if args.workloads.iter().any(|w| w.engine_per_thread()) {
        args.threads.iter().copied().filter(|&t| t >= 2).collect()
    } else {
        Vec::new()
    };
    let mut loads = Vec::new();
    for &k in &args.engines {
        let mut parts = vec![(dir_of(k), (0, 1))];
        for &n in &tax_threads {
            parts.extend((0..n).map(|i| (part_dir(&dir_of(k), i, n), (i, n))));
        }
        for (dir, (part, of)) in parts {
            let _ = std::fs::remove_dir_all(&dir);
            let items = crate::workload::part(args.keys, part, of);
            eprintln!(
                "preloading {} keys into {} ...",
                items.end - items.start,
                dir.display()
            );
            let load: LoadResult = child(&[
                "load".into(),
                "--engine".into(),
                k.name().into(),
                "--keys".into(),
                args.keys.to_string(),
                "--part".into(),
                part.to_string(),
                "--parts".into(),
                of.to_string(),
                "--dir".into(),
                dir.display().to_string(),
            ])?;
            eprintln!("  {:.2} s", load.seconds);
            loads.push(load);
        }
    }

    let mut cells: Vec<CellResult> = Vec::new();
    let mut rotation = 0;
    for group in groups(&args.workloads) {
        for &threads in &args.threads {
            for i in 0..args.engines.len() {
                let engine = args.engines[(i + rotation) % args.engines.len()];
                for &workload in &group {
                    if workload.is_tax() && threads < 2 {
                        // One thread on one engine either way: nothing shared.
                        continue;
                    }
                    let spec = CellSpec {
                        engine,
                        workload,
                        threads,
                        measure: args.measure,
                        warmup: args.warmup,
                        keys: args.keys,
                        dir: dir_of(engine),
                    };
                    let cell: CellResult = child(&cell_args(&spec))?;
                    eprintln!(
                        "{:>8} {:>2} threads {:>10}: {:>9} commands/s, {:.3} retries/commit, p99 {:.1} µs",
                        workload.name(),
                        threads,
                        engine.name(),
                        crate::report::rate(cell.commands_per_sec),
                        cell.retries_per_commit,
                        cell.latency.p99_us
                    );
                    cells.push(cell);
                }
            }
            rotation += 1;
        }
    }
    if temporary && !args.keep_data {
        let _ = std::fs::remove_dir_all(&data);
    } else {
        eprintln!("databases left in {}", data.display());
    }

    let mut report = Report {
        command,
        mode: if args.quick { "quick" } else { "full" }.to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        keys: args.keys,
        measure_seconds: args.measure.as_secs_f64(),
        warmup_seconds: args.warmup.as_secs_f64(),
        total_seconds: 0.0,
        tiers: [Tier::NoSync, Tier::SyncEachCommit]
            .into_iter()
            .filter(|t| args.workloads.iter().any(|w| w.tier() == *t))
            .map(|t| (t, t.describe().to_string()))
            .collect(),
        loads,
        cells,
        targets: Vec::new(),
    };
    report.compute_targets();
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The child side of `load`: inserts part `part.0` of `part.1` of the `keys`
/// items ([`crate::workload::part`]; `(0, 1)`: all of them), 1,000 per
/// transaction, then settles (checkpoint or durable commit) so that cells open
/// it quickly.
pub fn load(
    engine: Kind,
    keys: u64,
    part: (usize, usize),
    dir: &Path,
) -> Result<LoadResult, String> {
    let started = Instant::now();
    let db = engine
        .open(dir, Tier::NoSync)
        .map_err(|e| format!("open {}: {e}", dir.display()))?;
    const BATCH: u64 = 1000;
    let items = crate::workload::part(keys, part.0, part.1);
    for start in items.clone().step_by(BATCH as usize) {
        db.load(start..(start + BATCH).min(items.end))
            .map_err(|e| format!("load: {e}"))?;
    }
    db.settle().map_err(|e| format!("settle: {e}"))?;
    drop(db);
    Ok(LoadResult {
        engine,
        keys: items.end - items.start,
        part: (part.1 > 1).then_some(part),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: crate::rss::peak_mib(),
    })
}

/// The database directory of part `part` of `parts` beside an engine's
/// directory `dir` (the sharing tax's engines of one thread each).
pub fn part_dir(dir: &Path, part: usize, parts: usize) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "engine".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}-part{part}of{parts}"))
}

/// Where `results.json` goes.
pub fn json_path(out: &Path) -> PathBuf {
    out.join("results.json")
}
