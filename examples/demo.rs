//! shardstone demo: concurrent commands, conflicts, escalation, and an invariant that
//! must hold throughout.
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --threads 8 --seconds 10 --keys 1000000 --accounts 64
//! cargo run --release --example demo -- --dir /var/tmp/demo-db --durability durable
//! ```
//!
//! Worker threads run a mix of commands against one engine: in memory by default;
//! with `--dir`, a durable one in that directory (run it again on the same
//! directory and it carries on from the recovered state, with the same invariant):
//! - `transfer`: moves money between two accounts of a small hot set, so concurrent
//!   transfers collide on the same pages; some conflict, some keep losing and are
//!   escalated to the blocking queue.
//! - `update_item`: read-modify-writes one of many item keys, almost never conflicting.
//! - `audit`: a read-only command that sums every account inside a transaction.
//!
//! A separate reader thread takes snapshots continuously and checks that the accounts
//! still add up to the money that was deposited at the start. Every second, and at the
//! end, the engine's counters are printed; at the end also the per-command table and
//! the hottest pages. The exit status is non-zero if the total was ever wrong or a
//! command failed.

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use shardstone::{Durability, Engine, Options, Stats, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const INITIAL_BALANCE: u64 = 1_000;
const ITEM_VALUE_LEN: usize = 100;
/// Account values carry a memo after the balance, so the hot set spans a few pages.
const ACCOUNT_VALUE_LEN: usize = 64;
const LOAD_BATCH: u64 = 1_000;

/// Percent of worker commands that are transfers and audits; the rest update items.
const TRANSFER_PCT: u64 = 25;
const AUDIT_PCT: u64 = 1;

struct Config {
    threads: usize,
    seconds: f64,
    keys: u64,
    accounts: u64,
    dir: Option<PathBuf>,
    durability: Durability,
}

/// The command line; `Args::config` turns it into a [`Config`].
#[derive(Parser)]
#[command(
    name = "demo",
    about = "shardstone demo: concurrent commands, conflicts, escalation, and an invariant that must hold throughout"
)]
struct Args {
    /// worker threads running commands (one more thread audits snapshots)
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    threads: usize,
    /// how long to run
    #[arg(long, value_name = "S", default_value_t = 3.0, value_parser = positive_secs)]
    seconds: f64,
    /// item keys for the uncontended commands
    #[arg(long, value_name = "K", default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// accounts in the hot set the transfers use (at least 2)
    #[arg(long, value_name = "A", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(2..))]
    accounts: u64,
    /// run a durable engine in PATH (default: in memory); rerun to recover and go on
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// with --dir: how each commit reaches the disk
    #[arg(long, value_name = "D", value_enum, default_value_t = DurabilityArg::Durable)]
    durability: DurabilityArg,
}

/// `--durability`: the values of [`Durability`] on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    None,
    Buffered,
    Durable,
}

/// A number of seconds above zero.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a number of seconds above 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Args {
    fn config(self) -> Config {
        Config {
            threads: self.threads,
            seconds: self.seconds,
            keys: self.keys,
            accounts: self.accounts,
            dir: self.dir,
            durability: match self.durability {
                DurabilityArg::None => Durability::None,
                DurabilityArg::Buffered => Durability::Buffered,
                DurabilityArg::Durable => Durability::Durable,
            },
        }
    }
}

/// SplitMix64: a small seeded generator, plenty for choosing keys.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn account_key(i: u64) -> String {
    format!("acct:{i:06}")
}

fn item_key(i: u64) -> String {
    format!("item:{i:010}")
}

fn account_value(balance: u64) -> [u8; ACCOUNT_VALUE_LEN] {
    let mut v = [b'.'; ACCOUNT_VALUE_LEN];
    v[..8].copy_from_slice(&balance.to_le_bytes());
    v
}

fn balance(v: &[u8]) -> u64 {
    v.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Everything the threads report to the main thread besides the engine's own counters.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    snapshot_audits: AtomicU64,
    tx_audits: AtomicU64,
    violations: AtomicU64,
    failures: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Shared {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        eprintln!("!! {what}");
        let mut first = self.first_problem.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

/// Sums the accounts seen by `entries`; returns (accounts seen, total).
fn sum_accounts(
    entries: impl Iterator<Item = shardstone::Result<(Vec<u8>, Value)>>,
) -> shardstone::Result<(u64, u64)> {
    let (mut n, mut total) = (0u64, 0u64);
    for e in entries {
        let (_, v) = e?;
        n += 1;
        total += balance(&v);
    }
    Ok((n, total))
}

fn worker(engine: &Engine, cfg: &Config, shared: &Shared, seed: u64) {
    let mut rng = Rng(seed);
    let expected = cfg.accounts * INITIAL_BALANCE;
    let (lo, hi) = (account_key(0), account_key(cfg.accounts));
    while !shared.stop.load(Ordering::Relaxed) {
        let dice = rng.below(100);
        if dice < AUDIT_PCT {
            let r = engine.run("audit", |tx| {
                sum_accounts(tx.range(lo.as_bytes()..hi.as_bytes()))
            });
            match r {
                Ok((n, total)) if n == cfg.accounts && total == expected => {
                    shared.tx_audits.fetch_add(1, Ordering::Relaxed);
                }
                Ok((n, total)) => shared.problem(
                    &shared.violations,
                    format!("INVARIANT VIOLATED in command audit: {n} accounts hold {total}, expected {expected}"),
                ),
                Err(e) => shared.problem(&shared.failures, format!("command audit failed: {e}")),
            }
        } else if dice < AUDIT_PCT + TRANSFER_PCT {
            let from = rng.below(cfg.accounts);
            let to = (from + 1 + rng.below(cfg.accounts - 1)) % cfg.accounts;
            let (from, to) = (account_key(from), account_key(to));
            let amount = 1 + rng.below(100);
            let r = engine.run("transfer", |tx| {
                let a = tx.get(from.as_bytes())?.map_or(0, |v| balance(&v));
                let b = tx.get(to.as_bytes())?.map_or(0, |v| balance(&v));
                let moved = amount.min(a);
                if moved > 0 {
                    tx.put(from.as_bytes(), &account_value(a - moved))?;
                    tx.put(to.as_bytes(), &account_value(b + moved))?;
                }
                Ok(())
            });
            if let Err(e) = r {
                shared.problem(&shared.failures, format!("command transfer failed: {e}"));
            }
        } else {
            let key = item_key(rng.below(cfg.keys));
            let r = engine.run("update_item", |tx| {
                let mut v = tx
                    .get(key.as_bytes())?
                    .map(|v| v.into_vec())
                    .unwrap_or_default();
                v.resize(ITEM_VALUE_LEN, 0);
                let n = balance(&v) + 1;
                v[..8].copy_from_slice(&n.to_le_bytes());
                tx.put(key.as_bytes(), &v)
            });
            if let Err(e) = r {
                shared.problem(&shared.failures, format!("command update_item failed: {e}"));
            }
        }
    }
}

/// Takes snapshots back to back and checks the bank total in each.
fn auditor(engine: &Engine, cfg: &Config, shared: &Shared) {
    let expected = cfg.accounts * INITIAL_BALANCE;
    let (lo, hi) = (account_key(0), account_key(cfg.accounts));
    while !shared.stop.load(Ordering::Relaxed) {
        check_snapshot(engine, cfg, shared, expected, &lo, &hi);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn check_snapshot(
    engine: &Engine,
    cfg: &Config,
    shared: &Shared,
    expected: u64,
    lo: &str,
    hi: &str,
) {
    let snap = engine.snapshot();
    match sum_accounts(snap.range(lo.as_bytes()..hi.as_bytes())) {
        Ok((n, total)) if n == cfg.accounts && total == expected => {
            shared.snapshot_audits.fetch_add(1, Ordering::Relaxed);
        }
        Ok((n, total)) => shared.problem(
            &shared.violations,
            format!(
                "INVARIANT VIOLATED in snapshot at commit {}: {n} accounts hold {total}, expected {} accounts holding {expected}",
                snap.commit_id().get(),
                cfg.accounts
            ),
        ),
        Err(e) => shared.problem(&shared.failures, format!("snapshot read failed: {e}")),
    }
}

/// Where the demo records its shape, so a rerun on the same directory checks the
/// same invariant.
const CONFIG_KEY: &[u8] = b"demo:config";

/// Loads the accounts and items, or, on a recovered database, adopts its shape.
/// Returns whether the data was recovered.
fn setup(engine: &Engine, cfg: &mut Config) -> shardstone::Result<bool> {
    if let Some(v) = engine.snapshot().get(CONFIG_KEY)? {
        cfg.accounts = u64::from_le_bytes(v[0..8].try_into().expect("8 bytes"));
        cfg.keys = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
        return Ok(true);
    }
    let mut start = 0;
    while start < cfg.accounts {
        let end = (start + LOAD_BATCH).min(cfg.accounts);
        engine.run("open_accounts", |tx| {
            for i in start..end {
                tx.put(account_key(i).as_bytes(), &account_value(INITIAL_BALANCE))?;
            }
            Ok(())
        })?;
        start = end;
    }
    let mut start = 0;
    while start < cfg.keys {
        let end = (start + LOAD_BATCH).min(cfg.keys);
        engine.run("load_items", |tx| {
            for i in start..end {
                let mut v = [b'-'; ITEM_VALUE_LEN];
                v[..8].copy_from_slice(&0u64.to_le_bytes());
                tx.put(item_key(i).as_bytes(), &v)?;
            }
            Ok(())
        })?;
        start = end;
    }
    let mut shape = cfg.accounts.to_le_bytes().to_vec();
    shape.extend_from_slice(&cfg.keys.to_le_bytes());
    engine.run("save_config", |tx| tx.put(CONFIG_KEY, &shape))?;
    Ok(false)
}

/// `1234567` → `1,234,567`.
fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn per_sec(n: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (n as f64 / secs).round() as u64
    } else {
        0
    }
}

fn print_header() {
    println!(
        "{:>6} {:>11} {:>10} {:>8} {:>10}   {:>12} {:>5} {:>12}   {:>15} {:>13}",
        "time",
        "commits/s",
        "conflicts",
        "retries",
        "escalated",
        "queue: depth",
        "done",
        "longest",
        "snapshot audits",
        "old versions"
    );
}

fn print_interval(t: f64, secs: f64, prev: &Stats, now: &Stats, shared: &Shared) {
    println!(
        "{:>5.1}s {:>11} {:>10} {:>8} {:>10}   {:>12} {:>5} {:>12}   {:>15} {:>13}",
        t,
        num(per_sec(now.commits - prev.commits, secs)),
        num(now.conflicts - prev.conflicts),
        num(now.retries - prev.retries),
        num(now.escalations - prev.escalations),
        now.blocking_queue.depth,
        num(now.blocking_queue.escalated - prev.blocking_queue.escalated),
        dur(now.blocking_queue.max_time),
        num(shared.snapshot_audits.load(Ordering::Relaxed)),
        num(now.store.pinned_versions),
    );
}

fn print_summary(cfg: &Config, base: &Stats, end: &Stats, secs: f64, shared: &Shared) {
    let commits = end.commits - base.commits;
    let conflicts = end.conflicts - base.conflicts;
    let per_k = |n: u64| {
        if commits == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / commits as f64
        }
    };
    let q = &end.blocking_queue;
    let queued = q.escalated - base.blocking_queue.escalated;
    let queue_time = q.total_time.saturating_sub(base.blocking_queue.total_time);
    println!();
    println!(
        "== totals over {secs:.2} s, {} worker threads (setup excluded) ==",
        cfg.threads
    );
    println!(
        "  commits          {:>12}   ({} per second)",
        num(commits),
        num(per_sec(commits, secs))
    );
    println!(
        "  read-only runs   {:>12}",
        num(end.read_only - base.read_only)
    );
    println!(
        "  conflicts        {:>12}   ({:.2} per 1000 commits)",
        num(conflicts),
        per_k(conflicts)
    );
    println!(
        "  resolved         {:>12}   (page changed, no key read changed: re-runs saved)",
        num(end.page_changes_resolved - base.page_changes_resolved)
    );
    println!("  retries          {:>12}", num(end.retries - base.retries));
    println!(
        "  escalations      {:>12}   ({:.3} per 1000 commits)",
        num(end.escalations - base.escalations),
        per_k(end.escalations - base.escalations)
    );
    println!("  errors           {:>12}", num(end.errors - base.errors));
    println!(
        "  restructures     {:>12}   (commits that split or merged pages)",
        num(end.restructures - base.restructures)
    );
    println!(
        "  blocking queue   {:>12} commands went through it; depth now {}; mean time in it {}; longest {}",
        num(queued),
        q.depth,
        if queued == 0 { "-".to_string() } else { dur(queue_time / queued as u32) },
        dur(q.max_time)
    );
    println!(
        "  invariant        {} snapshot audits and {} audit commands, total {} over {} accounts: {}",
        num(shared.snapshot_audits.load(Ordering::Relaxed)),
        num(shared.tx_audits.load(Ordering::Relaxed)),
        num(cfg.accounts * INITIAL_BALANCE),
        num(cfg.accounts),
        match shared.violations.load(Ordering::Relaxed) {
            0 => "always conserved".to_string(),
            v => format!("VIOLATED {v} times"),
        }
    );
    let s = &end.store;
    println!(
        "  store            {} pages, {} page buffers, {:.1} MiB mapped, {} old versions pinned, {} snapshots pinned",
        num(s.pages),
        num(s.page_buffers),
        s.mapped_bytes as f64 / (1024.0 * 1024.0),
        num(s.pinned_versions),
        s.pinned_snapshots
    );

    println!();
    println!("== per command (whole run, setup included) ==");
    println!(
        "  {:<14} {:>10} {:>10} {:>10} {:>10} {:>11} {:>7} {:>10} {:>10}",
        "command",
        "runs",
        "commits",
        "read-only",
        "conflicts",
        "escalations",
        "errors",
        "mean",
        "max"
    );
    for c in &end.commands {
        println!(
            "  {:<14} {:>10} {:>10} {:>10} {:>10} {:>11} {:>7} {:>10} {:>10}",
            c.name,
            num(c.runs),
            num(c.commits),
            num(c.read_only),
            num(c.conflicts),
            num(c.escalations),
            num(c.errors),
            dur(c.mean_duration),
            dur(c.max_duration)
        );
    }

    println!();
    println!("== top 5 hot keys (most real conflicts) ==");
    if end.hot_keys.is_empty() {
        println!("  (no conflicts)");
    } else {
        println!(
            "  {:>10}  {:<42}  losers",
            "conflicts", "key or scanned range"
        );
        for k in end.hot_keys.iter().take(5) {
            let losers: Vec<String> = k
                .losers
                .iter()
                .map(|(name, n)| format!("{name} x{}", num(*n)))
                .collect();
            let what = if k.first_key == k.last_key {
                String::from_utf8_lossy(&k.first_key).into_owned()
            } else {
                format!(
                    "{} .. {}",
                    String::from_utf8_lossy(&k.first_key),
                    String::from_utf8_lossy(&k.last_key)
                )
            };
            println!(
                "  {:>10}  {:<42}  {}",
                num(k.conflicts),
                what,
                losers.join(", ")
            );
        }
    }

    println!();
    println!("== top 5 hot pages (most conflicts) ==");
    if end.hot_pages.is_empty() {
        println!("  (no conflicts)");
    } else {
        println!(
            "  {:<10} {:>10}  {:<31}  losers",
            "page", "conflicts", "key range"
        );
        for p in end.hot_pages.iter().take(5) {
            let losers: Vec<String> = p
                .losers
                .iter()
                .map(|(name, n)| format!("{name} x{}", num(*n)))
                .collect();
            println!(
                "  {:<10} {:>10}  {:<31}  {}",
                p.page.get(),
                num(p.conflicts),
                format!(
                    "{} .. {}",
                    String::from_utf8_lossy(&p.first_key),
                    String::from_utf8_lossy(&p.last_key)
                ),
                losers.join(", ")
            );
        }
    }
}

fn main() -> ExitCode {
    // `demo | head` should end the demo when `head` exits, as a command-line tool
    // does, instead of panicking in `println!` while the workers run on (Rust
    // ignores SIGPIPE by default).
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut cfg = Args::parse().config();

    let loading = Instant::now();
    let opened = match &cfg.dir {
        None => Engine::in_memory(),
        Some(dir) => Engine::open_with(
            dir,
            Options {
                durability: cfg.durability,
                ..Options::default()
            },
        ),
    };
    let engine = match opened {
        Ok(e) => e,
        Err(e) => {
            eprintln!("demo: cannot open the engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    let recovered = match setup(&engine, &mut cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match (&cfg.dir, recovered) {
        (None, _) => println!("engine: in memory"),
        (Some(dir), false) => println!(
            "engine: new database in {} ({:?})",
            dir.display(),
            cfg.durability
        ),
        (Some(dir), true) => {
            let (id, hash) = engine.last_commit();
            println!(
                "engine: recovered {} in {:.2} s: {} commits replayed after checkpoint {}, now at commit {} (chain {})",
                dir.display(),
                loading.elapsed().as_secs_f64(),
                num(engine.stats().journal.replayed),
                num(engine.stats().journal.checkpoint),
                num(id.get()),
                &hash.to_string()[..16]
            );
        }
    }
    println!(
        "shardstone demo: {} accounts x {} = {} in the bank, {} items; setup took {:.2} s",
        num(cfg.accounts),
        num(INITIAL_BALANCE),
        num(cfg.accounts * INITIAL_BALANCE),
        num(cfg.keys),
        loading.elapsed().as_secs_f64()
    );
    println!(
        "running {} worker threads for {} s: {}% transfer (hot accounts), {}% update_item, {}% audit; \
         1 thread auditing snapshots",
        cfg.threads,
        cfg.seconds,
        TRANSFER_PCT,
        100 - TRANSFER_PCT - AUDIT_PCT,
        AUDIT_PCT
    );
    println!("(counts are per interval; queue depth is now, done is per interval, longest is since start; \
         old versions are page versions waiting for reclamation)");
    println!();
    print_header();

    let shared = Shared::default();
    let base = engine.stats();
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(cfg.seconds);
    let mut end_stats = base.clone();
    let mut secs = 0.0;
    std::thread::scope(|s| {
        for t in 0..cfg.threads {
            let (engine, cfg, shared) = (&engine, &cfg, &shared);
            s.spawn(move || {
                worker(
                    engine,
                    cfg,
                    shared,
                    0xd1ce ^ ((t as u64 + 1) * 0x1234_5678_9abc_def1),
                )
            });
        }
        {
            let (engine, cfg, shared) = (&engine, &cfg, &shared);
            s.spawn(move || auditor(engine, cfg, shared));
        }

        let mut prev = base.clone();
        let mut prev_t = 0.0;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= run_for {
                break;
            }
            let next_tick = Duration::from_secs(elapsed.as_secs() + 1).min(run_for);
            std::thread::sleep(next_tick - elapsed);
            let now = engine.stats();
            let t = started.elapsed().as_secs_f64();
            print_interval(t, t - prev_t, &prev, &now, &shared);
            prev = now;
            prev_t = t;
        }
        shared.stop.store(true, Ordering::Relaxed);
        secs = started.elapsed().as_secs_f64();
    });
    // Counters after every thread has stopped, so nothing is half-counted.
    end_stats.clone_from(&engine.stats());

    // One last audit of the final state, with nothing else running.
    check_snapshot(
        &engine,
        &cfg,
        &shared,
        cfg.accounts * INITIAL_BALANCE,
        &account_key(0),
        &account_key(cfg.accounts),
    );

    print_summary(&cfg, &base, &end_stats, secs, &shared);
    if cfg.dir.is_some() {
        let j = &end_stats.journal;
        let syncs = j.syncs - base.journal.syncs;
        let commits = end_stats.commits - base.commits;
        let (id, hash) = engine.last_commit();
        println!();
        println!(
            "== journal ==\n  {} shards, {} fsyncs ({:.1} commits per fsync), last commit {} chain {}",
            j.shards,
            num(syncs),
            commits as f64 / syncs.max(1) as f64,
            num(id.get()),
            hash
        );
        let started = Instant::now();
        match engine.checkpoint() {
            Ok(at) => println!(
                "  checkpoint at commit {} written in {:.2} s",
                num(at.get()),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("  checkpoint failed: {e}");
                shared.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    let violations = shared.violations.load(Ordering::Relaxed);
    let failures = shared.failures.load(Ordering::Relaxed);
    println!();
    if violations == 0 && failures == 0 {
        println!(
            "OK: the bank total was conserved in every snapshot and audit; no command failed."
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: {violations} invariant violations, {failures} failed commands; first: {}",
            shared
                .first_problem
                .lock()
                .unwrap()
                .as_deref()
                .unwrap_or("?")
        );
        ExitCode::FAILURE
    }
}
