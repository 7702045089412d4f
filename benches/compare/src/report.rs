//! Results: what a cell and a preload measured, the target ratios of issue 7,
//! the Markdown table on stdout and the JSON for tooling.

use crate::engines::{Kind, Tier};
use crate::workload::Workload;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Thread count the targets are stated at.
pub const TARGET_THREADS: usize = 2;

/// Latency percentiles of a set of commands, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Commands an engine refused with a documented outcome (shardstone's
/// `Error::Timeout`, `Deadlock`, `Overloaded`); nothing of them committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// Lock waits that timed out.
    pub timeout: u64,
    /// Lock waits that would have deadlocked.
    pub deadlock: u64,
    /// Admissions refused.
    pub overloaded: u64,
    /// Of all of them, the slow commands.
    pub slow: u64,
}

impl Refusals {
    /// Every refusal.
    pub fn total(&self) -> u64 {
        self.timeout + self.deadlock + self.overloaded
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Refusals) {
        self.timeout += other.timeout;
        self.deadlock += other.deadlock;
        self.overloaded += other.overloaded;
        self.slow += other.slow;
    }
}

/// The blocking-queue depth (escalated commands waiting or running), sampled
/// during the measured run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Samples taken.
    pub samples: u64,
    /// Mean over the samples.
    pub mean: f64,
    /// Largest sample.
    pub max: u64,
}

/// What one cell measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    /// The engine.
    pub engine: Kind,
    /// The workload.
    pub workload: Workload,
    /// Its durability tier.
    pub tier: Tier,
    /// Threads issuing commands.
    pub threads: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Commands on the measured path (W4's slow ones excluded), completed.
    pub commands: u64,
    /// Of those, the read-write ones (all but W3's reads).
    pub commits: u64,
    /// W4's and W8's slow commands, completed.
    pub slow_commands: u64,
    /// `commands` per second: the throughput reported.
    pub commands_per_sec: f64,
    /// Conflict re-runs.
    pub retries: u64,
    /// Re-runs per read-write command (slow ones included).
    pub retries_per_commit: f64,
    /// Commits refused for a conflict (for the peers, the same as `retries`).
    #[serde(default)]
    pub conflicts: u64,
    /// Conflicts per read-write command (slow ones included).
    #[serde(default)]
    pub conflicts_per_commit: f64,
    /// Escalations (shardstone's blocking queue; 0 for the others).
    pub escalations: u64,
    /// Escalations per read-write command (slow ones included).
    #[serde(default)]
    pub escalations_per_commit: f64,
    /// Commits that found a page changed but no key they read changed, and
    /// went through (shardstone with key-precise validation; `None` elsewhere).
    #[serde(default)]
    pub page_changes_resolved: Option<u64>,
    /// `page_changes_resolved` per read-write command.
    #[serde(default)]
    pub resolved_per_commit: Option<f64>,
    /// The counter workload: how much the counter grew in the measured run,
    /// checked equal to `commits` (the cell fails otherwise).
    #[serde(default)]
    pub counter_added: Option<u64>,
    /// Commands the engine refused (counted, not fatal).
    #[serde(default)]
    pub refused: Refusals,
    /// Waits for a key an escalated command held (shardstone; 0 elsewhere).
    #[serde(default)]
    pub lock_waits: u64,
    /// Total time of those waits, in milliseconds.
    #[serde(default)]
    pub lock_wait_ms: f64,
    /// Lock waits that ended in a timeout (the engine's count, locks taken by
    /// escalated commands included).
    #[serde(default)]
    pub lock_timeouts: u64,
    /// Lock waits that ended in a deadlock error (the engine's count).
    #[serde(default)]
    pub lock_deadlocks: u64,
    /// The blocking-queue depth sampled during the run; `None` for engines
    /// without one.
    #[serde(default)]
    pub queue_depth: Option<QueueDepth>,
    /// Latency of the measured-path commands, retries included.
    pub latency: Latency,
    /// Latency of W4's and W8's slow commands.
    pub slow_latency: Option<Latency>,
    /// Share of the threads' time spent in measured-path commands (below 1 when
    /// slow commands take the rest).
    pub fast_time_share: f64,
    /// CPU time of the cell's process (user + system, every thread, the
    /// engine's own included) per command in the measured run (slow ones too), in
    /// µs: steadier than throughput on a machine others load.
    #[serde(default)]
    pub cpu_us_per_command: f64,
    /// Peak resident memory during the measured run, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Whether the peak was reset before the run (else it counts from process start).
    pub rss_reset: bool,
    /// Seconds to open the preloaded database (not measured in the cell).
    pub open_seconds: f64,
}

impl CellResult {
    /// Measured-path commands completed per second of thread time spent in
    /// them (refused ones' time included).
    pub fn per_fast_second(&self) -> f64 {
        self.commands_per_sec / self.fast_time_share
    }
}

/// What one engine's preload took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadResult {
    /// The engine.
    pub engine: Kind,
    /// Items loaded.
    pub keys: u64,
    /// For a sharing-tax engine: which part of the items it holds, of how many.
    #[serde(default)]
    pub part: Option<(usize, usize)>,
    /// Seconds, settle (checkpoint or durable commit) included.
    pub seconds: f64,
    /// Peak resident memory of the loading process, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// One target of the issue, with what was measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The ratio required.
    pub required: f64,
    /// The ratio measured; `None` when the cells it needs were not run.
    pub measured: Option<f64>,
    /// How it was computed.
    pub detail: String,
}

impl Target {
    /// Whether it was met; `None` when not measured.
    pub fn met(&self) -> Option<bool> {
        self.measured.map(|m| m >= self.required)
    }
}

/// A whole run, as written to `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    /// `quick` or `full`.
    pub mode: String,
    /// CPUs available to the process.
    pub cores: usize,
    /// Items preloaded per engine.
    pub keys: u64,
    /// Measured seconds per cell.
    pub measure_seconds: f64,
    /// Unmeasured warm-up seconds per cell.
    pub warmup_seconds: f64,
    /// Wall time of the whole run, preloads and charts included.
    pub total_seconds: f64,
    /// Exactly what each durability tier means per engine.
    pub tiers: Vec<(Tier, String)>,
    /// The preloads.
    pub loads: Vec<LoadResult>,
    /// Every cell, in the order run.
    pub cells: Vec<CellResult>,
    /// The targets.
    pub targets: Vec<Target>,
}

impl Report {
    /// The cell of `engine`, `workload`, `threads`, if it ran.
    pub fn cell(&self, engine: Kind, workload: Workload, threads: usize) -> Option<&CellResult> {
        self.cells
            .iter()
            .find(|c| c.engine == engine && c.workload == workload && c.threads == threads)
    }

    /// Thread counts that ran for `workload`, ascending.
    pub fn threads_of(&self, workload: Workload) -> Vec<usize> {
        let mut t: Vec<usize> = self
            .cells
            .iter()
            .filter(|c| c.workload == workload)
            .map(|c| c.threads)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Engines that ran, in the standard order.
    pub fn engines(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.cells.iter().any(|c| c.engine == *k))
            .collect()
    }

    /// shardstone's throughput over the best peer's, for a workload and thread count.
    pub fn vs_best_peer(&self, workload: Workload, threads: usize) -> Option<(f64, Kind)> {
        let ours = self.cell(Kind::Shardstone, workload, threads)?;
        let best = Kind::ALL
            .into_iter()
            .filter(|k| !k.is_shardstone())
            .filter_map(|k| self.cell(k, workload, threads))
            .max_by(|a, b| a.commands_per_sec.total_cmp(&b.commands_per_sec))?;
        Some((ours.commands_per_sec / best.commands_per_sec, best.engine))
    }

    /// W4's fast-command throughput with slow commands over without, for an engine.
    pub fn w4_ratio(&self, engine: Kind, threads: usize) -> Option<f64> {
        let alone = self.cell(engine, Workload::W4Fast, threads)?;
        let mixed = self.cell(engine, Workload::W4Mixed, threads)?;
        Some(mixed.commands_per_sec / alone.commands_per_sec)
    }

    /// Fast commands per second of thread time spent in fast commands, `mixed`
    /// (W4 mixed or W8 storm) over its baseline without slow commands: what is
    /// left once the slow commands' own thread time is taken out.
    pub fn ratio_per_fast_second(
        &self,
        engine: Kind,
        mixed: Workload,
        threads: usize,
    ) -> Option<f64> {
        let alone = self.cell(engine, mixed.baseline()?, threads)?;
        let mixed = self.cell(engine, mixed, threads)?;
        Some(mixed.per_fast_second() / alone.per_fast_second())
    }

    /// The sharing tax of `engine` at `threads`: commands/s of one engine with
    /// `threads` threads on disjoint key ranges over `threads` engines with one
    /// thread each, the same commands (1.0: sharing one engine costs nothing).
    pub fn sharing_tax(&self, engine: Kind, threads: usize) -> Option<f64> {
        let one = self.cell(engine, Workload::TaxOne, threads)?;
        let many = self.cell(engine, Workload::TaxMany, threads)?;
        Some(one.commands_per_sec / many.commands_per_sec)
    }

    /// Computes the targets at [`TARGET_THREADS`] from the cells.
    pub fn compute_targets(&mut self) {
        let t = TARGET_THREADS;
        let peer = |w| {
            self.vs_best_peer(w, t).map_or_else(
                || ("not measured".to_string(), None),
                |(r, k)| (format!("shardstone / {} (best peer)", k.name()), Some(r)),
            )
        };
        let (w1_detail, w1) = peer(Workload::W1);
        let (w2_detail, w2) = peer(Workload::W2);
        self.targets = vec![
            Target {
                name: format!("W1 commands/s, {t} threads, vs the best peer"),
                required: 3.0,
                measured: w1,
                detail: w1_detail,
            },
            Target {
                name: format!("W2 commands/s, {t} threads, vs the best peer"),
                required: 2.0,
                measured: w2,
                detail: w2_detail,
            },
            Target {
                name: format!("W4 fast commands/s with slow ones over without, {t} threads"),
                required: 0.8,
                measured: self.w4_ratio(Kind::Shardstone, t),
                detail: "shardstone, w4-mixed / w4-fast".to_string(),
            },
            Target {
                name: format!(
                    "W4 fast commands per fast-thread-second with slow ones over without, \
                     {t} threads"
                ),
                required: 0.9,
                measured: self.ratio_per_fast_second(Kind::Shardstone, Workload::W4Mixed, t),
                detail: "shardstone, w4-mixed / w4-fast".to_string(),
            },
            Target {
                name: format!(
                    "W8 fast commands per fast-thread-second in the storm over without slow \
                     commands, {t} threads"
                ),
                required: 0.8,
                measured: self.ratio_per_fast_second(Kind::Shardstone, Workload::W8Storm, t),
                detail: "shardstone (key locks), w8-storm / w8-fast".to_string(),
            },
            Target {
                name: format!(
                    "Sharing tax: one engine with {t} threads on disjoint key ranges over {t} \
                     engines with one thread each"
                ),
                required: 0.95,
                measured: self.sharing_tax(Kind::Shardstone, t),
                detail: "shardstone, tax-one / tax-many".to_string(),
            },
        ];
    }

    /// The Markdown report: settings, one table per workload, the ratios.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Mode `{}`: {} keys preloaded per engine (16-byte keys, 100-byte values), \
             {:.1} s measured per cell after {:.1} s warm-up, {} CPUs. Each cell runs in a \
             process of its own; engines alternate cell by cell.\n",
            self.mode, self.keys, self.measure_seconds, self.warmup_seconds, self.cores
        );
        for (tier, text) in &self.tiers {
            let used: Vec<&str> = Workload::ALL
                .into_iter()
                .filter(|w| w.tier() == *tier)
                .map(|w| w.name())
                .collect();
            let _ = writeln!(md, "- **{}** ({}): {}", tier.name(), used.join(", "), text);
        }
        md.push('\n');
        for w in Workload::ALL {
            if self.threads_of(w).is_empty() {
                continue;
            }
            self.workload_table(&mut md, w);
        }
        self.conflict_table(&mut md);
        self.storm_table(&mut md);
        self.tax_table(&mut md);
        self.ratio_tables(&mut md);
        md
    }

    fn workload_table(&self, md: &mut String, w: Workload) {
        let mixed = w.has_slow();
        let _ = writeln!(md, "#### {}\n", w.describe());
        let mut head = "| threads | engine | commands/s | vs best peer | conflicts/commit \
                        | retries/commit | escalations/commit | page changes resolved/commit \
                        | p50 µs | p99 µs | p99.9 µs | peak RSS MiB |"
            .to_string();
        let mut rule =
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
                .to_string();
        if mixed {
            head.push_str(" slow cmds/s | slow p99 µs | fast time share |");
            rule.push_str(" ---: | ---: | ---: |");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for t in self.threads_of(w) {
            for k in self.engines() {
                let Some(c) = self.cell(k, w, t) else {
                    continue;
                };
                let vs = if k == Kind::Shardstone {
                    self.vs_best_peer(w, t)
                        .map_or("—".to_string(), |(r, _)| format!("{r:.2}×"))
                } else {
                    String::new()
                };
                let esc = if k.is_shardstone() {
                    format!("{:.4}", c.escalations_per_commit)
                } else {
                    "n/a".to_string()
                };
                let resolved = c
                    .resolved_per_commit
                    .map_or("n/a".to_string(), |r| format!("{r:.4}"));
                let rss = c
                    .peak_rss_mib
                    .map_or("—".to_string(), |m| format!("{m:.0}"));
                let _ = write!(
                    md,
                    "| {t} | {} | {} | {vs} | {:.4} | {:.4} | {esc} | {resolved} | {} | {} | {} \
                     | {rss} |",
                    k.name(),
                    rate(c.commands_per_sec),
                    c.conflicts_per_commit,
                    c.retries_per_commit,
                    us(c.latency.p50_us),
                    us(c.latency.p99_us),
                    us(c.latency.p999_us),
                );
                if mixed {
                    let slow = c.slow_latency.unwrap_or_default();
                    let _ = write!(
                        md,
                        " {} | {} | {:.0}% |",
                        rate(c.slow_commands as f64 / c.seconds),
                        us(slow.p99_us),
                        c.fast_time_share * 100.0
                    );
                }
                md.push('\n');
            }
        }
        md.push('\n');
        let refused: Vec<&CellResult> = self
            .cells
            .iter()
            .filter(|c| c.workload == w && c.refused.total() > 0)
            .collect();
        for c in &refused {
            let r = c.refused;
            let _ = writeln!(
                md,
                "- {} at {} threads: {} commands refused ({} timeouts, {} deadlocks, {} \
                 overloaded; {} of them slow).",
                c.engine.name(),
                c.threads,
                r.total(),
                r.timeout,
                r.deadlock,
                r.overloaded,
                r.slow
            );
        }
        if !refused.is_empty() {
            md.push('\n');
        }
        if w == Workload::Counter {
            for c in self.cells.iter().filter(|c| c.workload == w) {
                if let Some(added) = c.counter_added {
                    let _ = writeln!(
                        md,
                        "- {} at {} threads: the counter grew by {added} for {} commits (exact).",
                        c.engine.name(),
                        c.threads,
                        c.commits
                    );
                }
            }
            md.push('\n');
        }
    }

    /// shardstone's conflict accounting in every workload that ran, in one table.
    fn conflict_table(&self, md: &mut String) {
        let ours: Vec<&CellResult> = Workload::ALL
            .into_iter()
            .flat_map(|w| self.threads_of(w).into_iter().map(move |t| (w, t)))
            .flat_map(|(w, t)| {
                [Kind::Shardstone, Kind::ShardstoneBedrock]
                    .into_iter()
                    .filter_map(move |k| self.cell(k, w, t))
            })
            .collect();
        if ours.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "#### shardstone: conflicts, retries and escalations per commit\n"
        );
        let _ = writeln!(
            md,
            "Per read-write command committed in the measured run. A conflict is a commit \
             refused by validation; each is followed by a retry or, after `max_conflicts`, \
             an escalation. Page changes resolved: commits that found a page they used \
             changed, but no key they read, and went through (n/a: not counted by this \
             build).\n"
        );
        let _ = writeln!(
            md,
            "| workload | threads | engine | commits/s | conflicts/commit | retries/commit \
             | escalations/commit | page changes resolved/commit | CPU µs/command |\n\
             | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for c in ours {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {} | {:.2} |",
                c.workload.name(),
                c.threads,
                c.engine.name(),
                rate(c.commits as f64 / c.seconds),
                c.conflicts_per_commit,
                c.retries_per_commit,
                c.escalations_per_commit,
                c.resolved_per_commit
                    .map_or("n/a".to_string(), |r| format!("{r:.4}")),
                c.cpu_us_per_command,
            );
        }
        md.push('\n');
    }

    /// W8 per engine and thread count: what the storm did to the fast commands
    /// (per second of fast-command thread time, over the same run's w8-fast
    /// cell), and the blocking queue it built.
    fn storm_table(&self, md: &mut String) {
        let threads = self.threads_of(Workload::W8Storm);
        if threads.is_empty() {
            return;
        }
        let _ = writeln!(md, "#### W8 storm, per engine (escalation policy)\n");
        let _ = writeln!(
            md,
            "Fast commands completed per second of thread time spent in fast commands \
             (fast/thread-s), in the storm and in the same run without slow commands; \
             their ratio; fast p99 in the storm; shardstone's escalations, retries per \
             commit (slow ones included), blocking-queue depth sampled every 5 ms (mean / \
             max), key-lock waits (count, total ms), lock timeouts and deadlocks counted \
             by the engine, and commands refused (`Timeout` / `Deadlock` / `Overloaded`, \
             of them slow).\n"
        );
        let _ = writeln!(
            md,
            "| threads | engine | fast/thread-s storm | fast/thread-s no slow | ratio \
             | fast p99 µs | slow cmds/s | slow p99 µs | escalations | retries/commit \
             | queue depth mean / max | lock waits (ms) | lock timeouts / deadlocks \
             | refused T/D/O (slow) |\n\
             | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: \
             | ---: | ---: | ---: |"
        );
        for t in threads {
            for k in self.engines() {
                let Some(c) = self.cell(k, Workload::W8Storm, t) else {
                    continue;
                };
                let alone = self.cell(k, Workload::W8Fast, t);
                let ratio = self
                    .ratio_per_fast_second(k, Workload::W8Storm, t)
                    .map_or("—".to_string(), |r| format!("{r:.2}"));
                let depth = c
                    .queue_depth
                    .map_or("n/a".to_string(), |d| format!("{:.2} / {}", d.mean, d.max));
                let slow = c.slow_latency.unwrap_or_default();
                let r = c.refused;
                let _ = writeln!(
                    md,
                    "| {t} | {} | {} | {} | {ratio} | {} | {} | {} | {} | {:.4} | {depth} \
                     | {} ({:.0}) | {} / {} | {}/{}/{} ({}) |",
                    k.name(),
                    rate(c.per_fast_second()),
                    alone.map_or("—".to_string(), |a| rate(a.per_fast_second())),
                    us(c.latency.p99_us),
                    rate(c.slow_commands as f64 / c.seconds),
                    us(slow.p99_us),
                    c.escalations,
                    c.retries_per_commit,
                    c.lock_waits,
                    c.lock_wait_ms,
                    c.lock_timeouts,
                    c.lock_deadlocks,
                    r.timeout,
                    r.deadlock,
                    r.overloaded,
                    r.slow,
                );
            }
        }
        md.push('\n');
    }

    /// The sharing tax per engine and thread count.
    fn tax_table(&self, md: &mut String) {
        let threads = self.threads_of(Workload::TaxOne);
        if threads.is_empty() {
            return;
        }
        let _ = writeln!(md, "#### Sharing tax, per engine\n");
        let _ = writeln!(
            md,
            "W1's command (1-key read-modify-write), thread `t` of N on items \
             `[t·K/N, (t+1)·K/N)` (uniform): all N threads on one engine holding the K items \
             (tax-one), against N engines in the same process, each holding one range and \
             driven by one thread (tax-many). Ratio = tax-one / tax-many commands/s (1.0: \
             sharing one engine costs nothing). CPU µs per command: the process's CPU time \
             (every thread, the engines' own included) per command.\n"
        );
        let _ = writeln!(
            md,
            "| threads | engine | one engine commands/s | N engines commands/s | ratio \
             | one engine p99 µs | N engines p99 µs | one engine CPU µs/cmd \
             | N engines CPU µs/cmd |\n\
             | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for t in threads {
            for k in self.engines() {
                let (Some(one), Some(many)) = (
                    self.cell(k, Workload::TaxOne, t),
                    self.cell(k, Workload::TaxMany, t),
                ) else {
                    continue;
                };
                let _ = writeln!(
                    md,
                    "| {t} | {} | {} | {} | {:.3} | {} | {} | {:.2} | {:.2} |",
                    k.name(),
                    rate(one.commands_per_sec),
                    rate(many.commands_per_sec),
                    one.commands_per_sec / many.commands_per_sec,
                    us(one.latency.p99_us),
                    us(many.latency.p99_us),
                    one.cpu_us_per_command,
                    many.cpu_us_per_command,
                );
            }
        }
        md.push('\n');
    }

    fn ratio_tables(&self, md: &mut String) {
        let _ = writeln!(md, "#### Targets (at {TARGET_THREADS} threads)\n");
        let _ = writeln!(
            md,
            "| target | required | measured | met |\n| --- | ---: | ---: | --- |"
        );
        for t in &self.targets {
            let (measured, met) = match (t.measured, t.met()) {
                (Some(m), Some(ok)) => (
                    format!("{m:.2}×"),
                    if ok { "**met**" } else { "**not met**" },
                ),
                _ => ("—".to_string(), "not measured"),
            };
            // 0.95 as 0.95×, 3 as 3.0×.
            let required = if (t.required * 10.0).fract() == 0.0 {
                format!("{:.1}", t.required)
            } else {
                format!("{:.2}", t.required)
            };
            let _ = writeln!(
                md,
                "| {} ({}) | {required}× | {measured} | {met} |",
                t.name, t.detail
            );
        }
        md.push('\n');

        let threads = self.threads_of(Workload::W1);
        if threads.is_empty() && self.threads_of(Workload::W4Mixed).is_empty() {
            return;
        }
        let _ = writeln!(md, "#### Every ratio, every thread count\n");
        let _ = writeln!(
            md,
            "shardstone over the best peer (W1, W2, W3, W5); fast-command throughput with \
             slow commands over without (W4, per engine: raw, and per second of thread time \
             spent in fast commands).\n"
        );
        let mut all: Vec<usize> = Workload::ALL
            .into_iter()
            .flat_map(|w| self.threads_of(w))
            .collect();
        all.sort_unstable();
        all.dedup();
        let engines = self.engines();
        let mut head = "| threads | W1 | W2 | W3 | W5 |".to_string();
        let mut rule = "| ---: | ---: | ---: | ---: | ---: |".to_string();
        for k in &engines {
            let _ = write!(head, " W4 {} |", k.name());
            rule.push_str(" ---: |");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for t in all {
            let _ = write!(md, "| {t} |");
            for w in [Workload::W1, Workload::W2, Workload::W3, Workload::W5] {
                let cell = self.vs_best_peer(w, t).map_or("—".to_string(), |(r, k)| {
                    format!("{r:.2}× ({})", k.name())
                });
                let _ = write!(md, " {cell} |");
            }
            for k in &engines {
                let cell = match (
                    self.w4_ratio(*k, t),
                    self.ratio_per_fast_second(*k, Workload::W4Mixed, t),
                ) {
                    (Some(r), Some(a)) => format!("{r:.2} / {a:.2}"),
                    _ => "—".to_string(),
                };
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
}

/// A rate with a K or M suffix.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} K", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

/// Microseconds, with precision suited to the size.
fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
