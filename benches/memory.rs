//! Memory footprint: load 1,000,000 keys (16-byte keys, 100-byte values, 1000 keys per
//! command) and report how much the resident set grew, against the raw key+value
//! bytes (116,000,000; target: at most 2.5x), for a load in key order and a load in
//! random order.
//!
//! Each load runs in a fresh child process (this same binary, re-executed), so the
//! two orders do not share an allocator or a page arena and `VmHWM` is per load.
//! The resident set is read from `/proc/self/status` (`VmRSS`) just before the engine
//! is created and after the load; the delta is the engine's footprint. A second
//! reading after `Engine::collect_garbage` shows what the old page versions held.
//!
//! `--test`, `--list`, or no `--bench` (as under `cargo test --benches`) load 10,000
//! keys instead, in well under a second.

mod common;

use common::{full_run, key, key_count, load, permutation, proc_status_bytes, KEY_LEN, VALUE_LEN};
use shardstone::Engine;
use std::process::{Command, ExitCode};

const CHILD_FLAG: &str = "--memory-child";
const TARGET_RATIO: f64 = 2.5;

#[derive(Clone, Copy, Debug)]
enum Order {
    Sequential,
    Random,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Sequential => "sequential",
            Order::Random => "random",
        }
    }

    fn parse(s: &str) -> Option<Order> {
        [Order::Sequential, Order::Random]
            .into_iter()
            .find(|o| o.name() == s)
    }
}

/// What one child reports, all sizes in bytes.
#[derive(Debug, Default)]
struct Reading {
    keys: u64,
    rss_before: u64,
    rss_loaded: u64,
    rss_collected: u64,
    hwm: u64,
    pages: u64,
    page_buffers: u64,
    mapped: u64,
    load_secs: f64,
}

impl Reading {
    const FIELDS: usize = 9;

    fn encode(&self) -> String {
        format!(
            "RESULT {} {} {} {} {} {} {} {} {}",
            self.keys,
            self.rss_before,
            self.rss_loaded,
            self.rss_collected,
            self.hwm,
            self.pages,
            self.page_buffers,
            self.mapped,
            self.load_secs
        )
    }

    fn decode(line: &str) -> Option<Reading> {
        let f: Vec<&str> = line.strip_prefix("RESULT ")?.split_whitespace().collect();
        if f.len() != Self::FIELDS {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        Some(Reading {
            keys: n(0)?,
            rss_before: n(1)?,
            rss_loaded: n(2)?,
            rss_collected: n(3)?,
            hwm: n(4)?,
            pages: n(5)?,
            page_buffers: n(6)?,
            mapped: n(7)?,
            load_secs: f[8].parse().ok()?,
        })
    }

    fn raw(&self) -> u64 {
        self.keys * (KEY_LEN + VALUE_LEN) as u64
    }
}

/// The child: one load in one order, then a `RESULT` line on stdout.
fn child(order: Order, keys: u64) -> Result<(), String> {
    let rss = || proc_status_bytes("VmRSS").ok_or("no VmRSS in /proc/self/status");
    // Built before the first reading, so it is not counted as the engine's.
    let order_list: Vec<u32> = match order {
        Order::Sequential => Vec::new(),
        Order::Random => permutation(keys, 0xfeed),
    };
    let rss_before = rss()?;
    let engine = Engine::in_memory().map_err(|e| e.to_string())?;
    let took = match order {
        Order::Sequential => load(&engine, 0..keys),
        Order::Random => load(&engine, order_list.iter().map(|&i| u64::from(i))),
    };
    let rss_loaded = rss()?;
    engine.collect_garbage();
    let rss_collected = rss()?;
    let hwm = proc_status_bytes("VmHWM").unwrap_or(0);
    let st = engine.stats().store;

    // The load is only worth measuring if it is all there.
    let snap = engine.snapshot();
    let mut count = 0u64;
    for item in snap.range(..) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if k.as_slice() != key(count) || v.len() != VALUE_LEN {
            return Err(format!(
                "entry {count} is {:?} with a {}-byte value",
                String::from_utf8_lossy(&k),
                v.len()
            ));
        }
        count += 1;
    }
    if count != keys {
        return Err(format!("loaded {keys} keys but a snapshot holds {count}"));
    }

    let r = Reading {
        keys,
        rss_before,
        rss_loaded,
        rss_collected,
        hwm,
        pages: st.pages,
        page_buffers: st.page_buffers,
        mapped: st.mapped_bytes as u64,
        load_secs: took.as_secs_f64(),
    };
    println!("{}", r.encode());
    Ok(())
}

fn run_child(order: Order, keys: u64) -> Result<Reading, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args([CHILD_FLAG, order.name(), &keys.to_string()])
        .output()
        .map_err(|e| format!("spawning the {} load: {e}", order.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the {} load failed ({}): {}{}",
            order.name(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(Reading::decode)
        .ok_or_else(|| format!("the {} load printed no result: {stdout}", order.name()))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == CHILD_FLAG) {
        let order = args.get(i + 1).and_then(|s| Order::parse(s));
        let keys = args.get(i + 2).and_then(|s| s.parse().ok());
        let (Some(order), Some(keys)) = (order, keys) else {
            eprintln!("usage: memory {CHILD_FLAG} sequential|random KEYS");
            return ExitCode::FAILURE;
        };
        return match child(order, keys) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memory child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--list") {
        println!("memory/sequential: benchmark");
        println!("memory/random: benchmark");
        return ExitCode::SUCCESS;
    }

    let keys = key_count();
    let mut failed = false;
    let mut rows = Vec::new();
    for order in [Order::Sequential, Order::Random] {
        match run_child(order, keys) {
            Ok(r) => rows.push((order, r)),
            Err(e) => {
                eprintln!("memory/{}: FAILED: {e}", order.name());
                failed = true;
            }
        }
    }

    let raw = keys * (KEY_LEN + VALUE_LEN) as u64;
    println!(
        "memory: {keys} keys x ({KEY_LEN} B key + {VALUE_LEN} B value) = {raw} raw bytes ({:.1} MiB), {} keys per load command",
        mib(raw),
        common::LOAD_BATCH
    );
    println!(
        "{:<11} {:>8} {:>11} {:>7} {:>13} {:>7} {:>10} {:>8} {:>8} {:>9}",
        "order",
        "load s",
        "RSS delta",
        "ratio",
        "after GC",
        "ratio",
        "peak delta",
        "pages",
        "buffers",
        "mapped"
    );
    for (order, r) in &rows {
        let loaded = r.rss_loaded.saturating_sub(r.rss_before);
        let collected = r.rss_collected.saturating_sub(r.rss_before);
        let peak = r.hwm.saturating_sub(r.rss_before);
        println!(
            "{:<11} {:>8.2} {:>7.1} MiB {:>6.2}x {:>9.1} MiB {:>6.2}x {:>6.1} MiB {:>8} {:>8} {:>5.0} MiB",
            order.name(),
            r.load_secs,
            mib(loaded),
            loaded as f64 / r.raw() as f64,
            mib(collected),
            collected as f64 / r.raw() as f64,
            mib(peak),
            r.pages,
            r.page_buffers,
            mib(r.mapped),
        );
    }
    if full_run() {
        for (order, r) in &rows {
            let ratio = r.rss_loaded.saturating_sub(r.rss_before) as f64 / r.raw() as f64;
            println!(
                "memory/{}: RSS delta {:.2}x raw bytes: target <= {TARGET_RATIO}x {}",
                order.name(),
                ratio,
                if ratio <= TARGET_RATIO {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    } else {
        println!("(quick check over {keys} keys; `cargo bench --bench memory` measures 1,000,000)");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
