//! The workloads, W1–W8, the hot counter and the sharing tax, as commands over
//! the [`Engine`] traits. A command's keys are drawn before it runs, so a re-run after a
//! conflict repeats the same command, as an application's retry would.

use crate::engines::{Engine, Error, Refusal, Result, Tier};
use crate::keys::{account_count_key, key, order_key, value, Rng, Zipf};
use std::time::{Duration, Instant};

/// Skew of W2 and W3 (YCSB's default).
pub const ZIPF_THETA: f64 = 0.99;
/// Keys per W2 command.
const W2_KEYS: usize = 4;
/// Share of W3 commands that update (the rest read), in percent.
const W3_UPDATE_PERCENT: u64 = 5;
/// Share of W4 commands that are slow, in percent.
const W4_SLOW_PERCENT: u64 = 1;
/// Keys a slow W4 command reads, uniformly over the key space: with about 30
/// keys per leaf page, each lands on a different page.
pub const SLOW_READS: usize = 200;
/// Keys a slow W4 command writes.
pub const SLOW_WRITES: usize = 10;
/// Items W6's threads share: the first this many, dealt out round-robin (item
/// `i` belongs to thread `i % threads`), so every leaf of the span (about 30
/// keys each, so about 4 leaves) holds keys of every thread, as interleaved ids
/// and timestamps do. Small, so that concurrent commands often land on the same
/// leaf without ever touching the same key.
pub const W6_SPAN: u64 = 128;
/// Share of W8 storm commands that are slow, in percent.
const W8_SLOW_PERCENT: u64 = 1;
/// Keys a slow W8 command reads and then writes, drawn from the same Zipf
/// distribution as the fast commands' (so it holds the hot keys they want).
pub const W8_SLOW_KEYS: usize = 8;
/// Work a slow W8 command does between its reads and its writes: a busy loop
/// on the clock, repeated on every attempt, as a slow query inside the
/// command would be.
pub const W8_SLOW_WORK: Duration = Duration::from_millis(10);
/// W7's accounts: the first this many items (read, never written).
pub const W7_ACCOUNTS: u64 = 1000;
/// W7's order-id sequence.
pub const ORDER_SEQUENCE: &[u8] = b"seq:orders";
/// W7's global revenue counter.
pub const REVENUE: &[u8] = b"revenue";
/// The one counter of the counter workload.
pub const HOT_COUNTER: &[u8] = b"counter:hot";

/// One workload of the issue, W4 split in its two halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Workload {
    /// Uncontended 1-key read-modify-write, uniform keys.
    W1,
    /// 4-key read-modify-write, keys Zipf(0.99).
    W2,
    /// 95% 1-key reads (read-only snapshot), 5% 1-key read-modify-writes, Zipf(0.99).
    W3,
    /// W4's baseline: only the fast 1-key read-modify-writes.
    W4Fast,
    /// The Bedrock cascade: 99% fast commands, 1% slow ones (200 reads, 10 writes).
    W4Mixed,
    /// 1-key read-modify-write, uniform keys, fsync on every commit.
    W5,
    /// Shared-leaf writers, blind: each thread puts only its own keys, which
    /// are interleaved with the other threads' keys on the same leaves.
    W6,
    /// Shared-leaf writers, read-modify-write of one of the thread's own keys.
    W6Rmw,
    /// Order service: read an account, insert an order under a sequence id,
    /// add to the account's order count and to a global revenue counter.
    W7,
    /// W8's baseline: only the fast commands of the storm (W2's 4-key
    /// read-modify-writes on Zipf keys), run beside it in the same run.
    W8Fast,
    /// The seed-002 storm: 99% W2 commands, 1% slow ones that read 8 hot
    /// (Zipf) keys, work 10 ms, then write them.
    W8Storm,
    /// Every thread adds 1 to one counter; the final value is checked.
    Counter,
    /// The sharing tax's reference: W1's command on disjoint key ranges, each
    /// thread on an engine of its own holding only its range's items (N
    /// engines, one thread each, in one process).
    TaxMany,
    /// The sharing tax: the same commands, the same ranges, every thread on one
    /// engine holding all the items. Measured against [`Workload::TaxMany`].
    TaxOne,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 14] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4Fast,
        Workload::W4Mixed,
        Workload::W5,
        Workload::W6,
        Workload::W6Rmw,
        Workload::W7,
        Workload::W8Fast,
        Workload::W8Storm,
        Workload::Counter,
        Workload::TaxMany,
        Workload::TaxOne,
    ];

    /// The workloads a run has when `--workloads` is not given: all but the
    /// sharing tax (`--sharing-tax`, or `--workloads tax`), which preloads
    /// engines of its own.
    pub const DEFAULT: [Workload; 12] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4Fast,
        Workload::W4Mixed,
        Workload::W5,
        Workload::W6,
        Workload::W6Rmw,
        Workload::W7,
        Workload::W8Fast,
        Workload::W8Storm,
        Workload::Counter,
    ];

    /// The sharing tax's two halves, in the order they run.
    pub const TAX: [Workload; 2] = [Workload::TaxMany, Workload::TaxOne];

    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4Fast => "w4-fast",
            Workload::W4Mixed => "w4-mixed",
            Workload::W5 => "w5",
            Workload::W6 => "w6",
            Workload::W6Rmw => "w6-rmw",
            Workload::W7 => "w7",
            Workload::W8Fast => "w8-fast",
            Workload::W8Storm => "w8-storm",
            Workload::Counter => "counter",
            Workload::TaxMany => "tax-many",
            Workload::TaxOne => "tax-one",
        }
    }

    /// Parses [`Workload::name`]; `w4`, `w8` and `tax` mean both halves.
    pub fn parse_list(s: &str) -> Option<Vec<Workload>> {
        match s {
            "w4" => Some(vec![Workload::W4Fast, Workload::W4Mixed]),
            "w8" => Some(vec![Workload::W8Fast, Workload::W8Storm]),
            "tax" => Some(Workload::TAX.to_vec()),
            _ => Workload::ALL
                .into_iter()
                .find(|w| w.name() == s)
                .map(|w| vec![w]),
        }
    }

    /// What it does, for table headings.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::W1 => "W1: uncontended 1-key read-modify-write (uniform keys)",
            Workload::W2 => "W2: 4-key read-modify-write, keys Zipf(0.99)",
            Workload::W3 => "W3: 95% 1-key reads / 5% 1-key updates, keys Zipf(0.99)",
            Workload::W4Fast => "W4 without slow commands: 1-key read-modify-write (uniform)",
            Workload::W4Mixed => {
                "W4 with slow commands: 99% fast 1-key RMW + 1% slow (200 random reads, 10 writes)"
            }
            Workload::W5 => "W5: 1-key read-modify-write, fsync every commit (group commit)",
            Workload::W6 => {
                "W6 blind: shared-leaf writers, each thread puts 1 of its own keys \
                 (interleaved with the other threads' on the same leaves)"
            }
            Workload::W6Rmw => {
                "W6 RMW: shared-leaf writers, each thread reads and writes 1 of its own keys \
                 (interleaved with the other threads' on the same leaves)"
            }
            Workload::W7 => {
                "W7 order service: get an account, insert an order under a sequence id, \
                 add to the account's order count and to a global revenue counter"
            }
            Workload::W8Fast => {
                "W8 without slow commands: 4-key read-modify-write, keys Zipf(0.99) (as W2)"
            }
            Workload::W8Storm => {
                "W8 storm: 99% fast 4-key RMW, Zipf(0.99) + 1% slow (read 8 Zipf keys, \
                 10 ms busy loop, write them)"
            }
            Workload::Counter => {
                "Counter: every thread adds 1 to one counter (final value checked)"
            }
            Workload::TaxMany => {
                "Sharing tax, N engines: W1's command on disjoint key ranges, each thread on \
                 an engine of its own that holds only its range"
            }
            Workload::TaxOne => {
                "Sharing tax, one engine: the same commands and ranges, all threads on one \
                 engine that holds every range"
            }
        }
    }

    /// The durability tier it runs in.
    pub fn tier(self) -> Tier {
        match self {
            Workload::W5 => Tier::SyncEachCommit,
            _ => Tier::NoSync,
        }
    }

    /// Whether keys are drawn Zipf rather than uniform.
    fn skewed(self) -> bool {
        matches!(
            self,
            Workload::W2 | Workload::W3 | Workload::W8Fast | Workload::W8Storm
        )
    }

    /// Whether some of its commands are slow (reported apart).
    pub fn has_slow(self) -> bool {
        matches!(self, Workload::W4Mixed | Workload::W8Storm)
    }

    /// The workload it is measured against: the same fast commands, no slow
    /// ones (W4, W8); the same commands on one engine per thread (the sharing
    /// tax).
    pub fn baseline(self) -> Option<Workload> {
        match self {
            Workload::W4Mixed => Some(Workload::W4Fast),
            Workload::W8Storm => Some(Workload::W8Fast),
            Workload::TaxOne => Some(Workload::TaxMany),
            _ => None,
        }
    }

    /// Whether each thread runs on an engine of its own (one preloaded part
    /// of the items per thread, see [`part`]).
    pub fn engine_per_thread(self) -> bool {
        self == Workload::TaxMany
    }

    /// Whether it is a half of the sharing tax (run at 2 threads or more).
    pub fn is_tax(self) -> bool {
        matches!(self, Workload::TaxMany | Workload::TaxOne)
    }

    /// The seed stream of its commands: the two halves of the sharing tax draw
    /// the same commands.
    pub fn stream(self) -> u64 {
        match self {
            Workload::TaxMany => Workload::TaxOne as u64,
            w => w as u64,
        }
    }
}

/// Part `part` of `parts` of the items `0..keys`: the sharing tax's key range
/// of thread `part`, and the items of its own engine in [`Workload::TaxMany`].
pub fn part(keys: u64, part: usize, parts: usize) -> std::ops::Range<u64> {
    let at = |i: usize| (u128::from(keys) * i as u128 / parts as u128) as u64;
    at(part)..at(part + 1)
}

/// How a command counts in a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A read-write command on the measured path (its throughput is reported).
    Write,
    /// A read-only W3 command (counted in the throughput too).
    Read,
    /// A slow W4 or W8 command (reported apart).
    Slow,
}

/// What became of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It committed (or, a read, finished).
    Done(Class),
    /// The engine gave up on it with a documented outcome; nothing committed.
    Refused(Class, Refusal),
}

/// One thread's command generator for a workload.
pub struct Generator<'z> {
    workload: Workload,
    keys: u64,
    /// This thread's index and the cell's thread count (W6's key ownership).
    thread: u64,
    threads: u64,
    rng: Rng,
    zipf: Option<&'z Zipf>,
    /// Items of the command being built, reused so that no command allocates.
    items: Vec<u64>,
}

impl<'z> Generator<'z> {
    /// A generator over `keys` items for thread `thread` of `threads`; `zipf`
    /// is required for W2 and W3.
    pub fn new(
        workload: Workload,
        keys: u64,
        (thread, threads): (usize, usize),
        seed: u64,
        zipf: Option<&'z Zipf>,
    ) -> Self {
        assert!(
            !workload.skewed() || zipf.is_some(),
            "W2, W3 and W8 need a Zipf sampler"
        );
        assert!(thread < threads, "thread {thread} of {threads}");
        Generator {
            workload,
            keys,
            thread: thread as u64,
            threads: threads as u64,
            rng: Rng::new(seed),
            zipf,
            items: Vec::with_capacity(SLOW_READS + SLOW_WRITES),
        }
    }

    fn draw(&mut self) -> u64 {
        match self.zipf {
            Some(z) if self.workload.skewed() => z.sample(&mut self.rng),
            _ => self.rng.below(self.keys),
        }
    }

    /// Draws `n` distinct items into `self.items`.
    fn draw_distinct(&mut self, n: usize) {
        self.items.clear();
        while self.items.len() < n {
            let i = self.draw();
            if !self.items.contains(&i) {
                self.items.push(i);
            }
        }
    }

    /// One of this thread's W6 items, uniformly: `j * threads + thread`.
    fn draw_own(&mut self) -> u64 {
        let owned = W6_SPAN.div_ceil(self.threads);
        loop {
            let i = self.rng.below(owned) * self.threads + self.thread;
            if i < W6_SPAN.min(self.keys) {
                return i;
            }
        }
    }

    /// Draws the next command and runs it to completion on `engine`: its class,
    /// or the engine's documented refusal of it ([`Step::Refused`]); any other
    /// error stops the run.
    pub fn step(&mut self, engine: &dyn Engine) -> Result<Step> {
        let (class, done) = self.command(engine);
        match done {
            Ok(()) => Ok(Step::Done(class)),
            Err(Error::Refused(r)) => Ok(Step::Refused(class, r)),
            Err(e) => Err(e),
        }
    }

    fn command(&mut self, engine: &dyn Engine) -> (Class, Result<()>) {
        match self.workload {
            Workload::W1 | Workload::W4Fast | Workload::W5 => {
                self.draw_distinct(1);
                (Class::Write, rmw(engine, &self.items))
            }
            Workload::W8Storm if self.rng.below(100) < W8_SLOW_PERCENT => {
                self.draw_distinct(W8_SLOW_KEYS);
                (Class::Slow, slow_rmw(engine, &self.items))
            }
            Workload::W2 | Workload::W8Fast | Workload::W8Storm => {
                self.draw_distinct(W2_KEYS);
                (Class::Write, rmw(engine, &self.items))
            }
            Workload::W3 => {
                self.draw_distinct(1);
                if self.rng.below(100) < W3_UPDATE_PERCENT {
                    (Class::Write, rmw(engine, &self.items))
                } else {
                    let k = key(self.items[0]);
                    (Class::Read, engine.read(&mut |r| r.get(&k).map(drop)))
                }
            }
            Workload::W4Mixed => {
                if self.rng.below(100) < W4_SLOW_PERCENT {
                    // Reads and writes are drawn uniformly and independently.
                    self.items.clear();
                    for _ in 0..SLOW_READS + SLOW_WRITES {
                        let i = self.rng.below(self.keys);
                        self.items.push(i);
                    }
                    (Class::Slow, slow(engine, &self.items))
                } else {
                    self.draw_distinct(1);
                    (Class::Write, rmw(engine, &self.items))
                }
            }
            Workload::W6 => {
                let i = self.draw_own();
                let v = value(self.rng.next_u64() >> 1, i);
                (Class::Write, engine.run(&mut |tx| tx.put(&key(i), &v)))
            }
            Workload::W6Rmw => {
                self.items.clear();
                let i = self.draw_own();
                self.items.push(i);
                (Class::Write, rmw(engine, &self.items))
            }
            Workload::W7 => {
                let account = self.rng.below(W7_ACCOUNTS.min(self.keys));
                let amount = 1 + self.rng.below(1000) as i64;
                (Class::Write, order(engine, account, amount))
            }
            Workload::Counter => (Class::Write, engine.run(&mut |tx| tx.add(HOT_COUNTER, 1))),
            Workload::TaxMany | Workload::TaxOne => {
                let range = part(self.keys, self.thread as usize, self.threads as usize);
                self.items.clear();
                self.items
                    .push(range.start + self.rng.below(range.end - range.start));
                (Class::Write, rmw(engine, &self.items))
            }
        }
    }
}

/// W7's command: reads the account, takes an order id from the sequence,
/// inserts the order under it, and counts the order on the account and its
/// amount in the global revenue.
fn order(engine: &dyn Engine, account: u64, amount: i64) -> Result<()> {
    let account_key = key(account);
    let count_key = account_count_key(account);
    engine.run(&mut |tx| {
        let balance = tx.get(&account_key)?.unwrap_or(0);
        let id = tx.next_id(ORDER_SEQUENCE)?;
        tx.put(&order_key(id), &value(balance, account))?;
        tx.add(&count_key, 1)?;
        tx.add(REVENUE, amount)
    })
}

/// Reads each item's counter and writes it back incremented.
fn rmw(engine: &dyn Engine, items: &[u64]) -> Result<()> {
    engine.run(&mut |tx| {
        for &i in items {
            let k = key(i);
            let n = tx.get(&k)?.unwrap_or(0);
            tx.put(&k, &value(n + 1, i))?;
        }
        Ok(())
    })
}

/// The slow W4 command: sums the counters of the first [`SLOW_READS`] items and
/// writes the sum to the last [`SLOW_WRITES`], so its writes depend on its reads.
fn slow(engine: &dyn Engine, items: &[u64]) -> Result<()> {
    let (reads, writes) = items.split_at(SLOW_READS);
    engine.run(&mut |tx| {
        let mut sum = 0u64;
        for &i in reads {
            sum = sum.wrapping_add(tx.get(&key(i))?.unwrap_or(0));
        }
        for &i in writes {
            tx.put(&key(i), &value(sum, i))?;
        }
        Ok(())
    })
}

/// The slow W8 command: reads its items' counters, works [`W8_SLOW_WORK`]
/// (on every attempt), then writes each counter back incremented, so every
/// write depends on a read taken 10 ms earlier.
fn slow_rmw(engine: &dyn Engine, items: &[u64]) -> Result<()> {
    engine.run(&mut |tx| {
        let mut seen = [0u64; W8_SLOW_KEYS];
        for (n, &i) in seen.iter_mut().zip(items) {
            *n = tx.get(&key(i))?.unwrap_or(0);
        }
        busy(W8_SLOW_WORK);
        for (&n, &i) in seen.iter().zip(items) {
            tx.put(&key(i), &value(n + 1, i))?;
        }
        Ok(())
    })
}

/// Spins on the clock for `span` (CPU work that a scheduler can preempt).
fn busy(span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_items_without_overlap() {
        for (keys, parts) in [(1000, 1), (1000, 2), (1001, 3), (100_000, 7), (5, 5)] {
            let mut next = 0;
            for p in 0..parts {
                let r = part(keys, p, parts);
                assert_eq!(r.start, next, "{keys} keys, part {p} of {parts}");
                assert!(r.end > r.start, "{keys} keys, part {p} of {parts} is empty");
                next = r.end;
            }
            assert_eq!(next, keys);
        }
    }

    /// A recording engine: the keys each command wrote.
    struct Recorder(std::sync::Mutex<Vec<Vec<u8>>>);

    struct RecordTx<'a>(&'a Recorder);

    impl crate::engines::Read for RecordTx<'_> {
        fn get(&mut self, _key: &[u8]) -> Result<Option<u64>> {
            Ok(None)
        }
    }

    impl crate::engines::Tx for RecordTx<'_> {
        fn put(&mut self, key: &[u8], _value: &[u8]) -> Result<()> {
            self.0 .0.lock().expect("not poisoned").push(key.to_vec());
            Ok(())
        }
    }

    impl Engine for Recorder {
        fn run(&self, command: crate::engines::Command<'_>) -> Result<()> {
            command(&mut RecordTx(self))
        }
        fn read(&self, query: crate::engines::Query<'_>) -> Result<()> {
            query(&mut RecordTx(self))
        }
        fn scan(&self) -> Result<u64> {
            Ok(0)
        }
        fn load(&self, _items: std::ops::Range<u64>) -> Result<()> {
            Ok(())
        }
        fn counters(&self) -> crate::engines::Counters {
            crate::engines::Counters::default()
        }
        fn settle(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn both_halves_of_the_tax_draw_the_same_commands_in_the_thread_range() {
        let keys = 10_000;
        for t in 0..3 {
            let range = part(keys, t, 3);
            let mut written = Vec::new();
            for w in Workload::TAX {
                let engine = Recorder(std::sync::Mutex::new(Vec::new()));
                let mut g = Generator::new(w, keys, (t, 3), 42 ^ w.stream(), None);
                for _ in 0..500 {
                    assert_eq!(g.step(&engine).expect("step"), Step::Done(Class::Write));
                }
                let keys_written = engine.0.into_inner().expect("not poisoned");
                assert_eq!(keys_written.len(), 500);
                for k in &keys_written {
                    let i = (range.start..range.end)
                        .find(|&i| key(i)[..] == k[..])
                        .unwrap_or_else(|| panic!("{w:?} thread {t} wrote outside {range:?}"));
                    assert!(range.contains(&i));
                }
                written.push(keys_written);
            }
            assert_eq!(written[0], written[1], "thread {t}");
        }
    }
}
