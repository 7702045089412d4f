//! Serializability under real concurrency: bank transfers that conserve money
//! while readers audit, and hot counters that never lose an increment, with the
//! telemetry (conflicts, retries, escalations, the blocking queue) adding up.

mod common;

use common::*;
use shardstone::{Engine, Options, Stats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

const ACCOUNTS: u64 = 100;
const INITIAL: u64 = 1_000;
const TRANSFER_THREADS: u64 = 4;
const TRANSFERS_PER_THREAD: u64 = 1_500;
/// Padding after each balance, so the accounts spread over several leaves.
const PAD: usize = 200;

fn acct(i: u64) -> Vec<u8> {
    format!("acct:{i:03}").into_bytes()
}

fn balance_value(b: u64) -> Vec<u8> {
    let mut v = enc(b).to_vec();
    v.resize(8 + PAD, 0xAB);
    v
}

/// Checks the counters that must agree with each other whatever the interleaving.
fn check_telemetry(what: &str, st: &Stats) {
    assert_eq!(
        st.conflicts,
        st.retries + st.escalations,
        "{what}: every conflict caused one retry or one escalation: {st:?}"
    );
    assert_eq!(
        st.blocking_queue.depth, 0,
        "{what}: nothing is left in the blocking queue: {:?}",
        st.blocking_queue
    );
    assert_eq!(
        st.blocking_queue.escalated, st.escalations,
        "{what}: every escalation went through the blocking queue"
    );
    assert_eq!(
        st.commit_id, st.commits,
        "{what}: commit ids are gap-free, one per commit"
    );
    let sum = |f: fn(&shardstone::CommandStats) -> u64| st.commands.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(|c| c.commits),
        st.commits,
        "{what}: per-command commits add up"
    );
    assert_eq!(
        sum(|c| c.read_only),
        st.read_only,
        "{what}: per-command read-only runs add up"
    );
    assert_eq!(
        sum(|c| c.conflicts),
        st.conflicts,
        "{what}: per-command conflicts add up"
    );
    assert_eq!(
        sum(|c| c.escalations),
        st.escalations,
        "{what}: per-command escalations add up"
    );
    assert_eq!(
        sum(|c| c.errors),
        st.errors,
        "{what}: per-command errors add up"
    );
    for c in &st.commands {
        assert_eq!(
            c.runs,
            c.commits + c.read_only + c.errors,
            "{what}: every run of {:?} ended one way: {c:?}",
            c.name
        );
        assert!(c.max_duration >= c.mean_duration, "{what}: {c:?}");
    }
}

fn command<'s>(st: &'s Stats, name: &str) -> &'s shardstone::CommandStats {
    st.commands
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no stats for command {name:?}: {:?}", st.commands))
}

/// Sums the accounts in a snapshot, by a scan in each direction and key by key.
fn audit_snapshot(snap: &shardstone::Snapshot, total: u64) {
    let at = snap.commit_id();
    let range = || snap.range(b"acct:".as_slice()..b"acct;".as_slice());
    let fwd: Vec<u64> = range().map(|e| dec(&e.unwrap().1)).collect();
    assert_eq!(
        fwd.len() as u64,
        ACCOUNTS,
        "snapshot at {at} sees every account"
    );
    assert_eq!(
        fwd.iter().sum::<u64>(),
        total,
        "snapshot at {at} sees all the money"
    );
    let rev: u64 = range().rev().map(|e| dec(&e.unwrap().1)).sum();
    assert_eq!(rev, total, "snapshot at {at}, scanned backwards");
    let by_get: u64 = (0..ACCOUNTS)
        .map(|i| dec(&snap.get(&acct(i)).unwrap().unwrap()))
        .sum();
    assert_eq!(by_get, total, "snapshot at {at} read key by key");
}

/// The same audit inside a read-only command.
fn audit_command(engine: &Engine, total: u64) {
    let (sum, rev_sum, by_get) = engine
        .run("audit", |tx| {
            let mut sum = 0;
            for e in tx.range(b"acct:".as_slice()..b"acct;".as_slice()) {
                sum += dec(&e?.1);
            }
            let mut rev_sum = 0;
            for e in tx.range(b"acct:".as_slice()..b"acct;".as_slice()).rev() {
                rev_sum += dec(&e?.1);
            }
            let mut by_get = 0;
            for i in 0..ACCOUNTS {
                by_get += dec(&tx.get(&acct(i))?.unwrap());
            }
            Ok((sum, rev_sum, by_get))
        })
        .unwrap();
    assert_eq!(
        (sum, rev_sum, by_get),
        (total, total, total),
        "a read-only command sees all the money"
    );
}

/// Transfers between random accounts on four threads while two readers audit the
/// total through snapshots (one of them also through read-only commands). The total never
/// changes, and each final balance is its initial one plus the credits minus the
/// debits of exactly the transfers that reported committing.
#[test]
fn bank_transfers_conserve_money() {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("open", |tx| {
            for i in 0..ACCOUNTS {
                tx.put(&acct(i), &balance_value(INITIAL))?;
            }
            Ok(())
        })
        .unwrap();
    assert!(
        engine.stats().store.pages > 3,
        "accounts span several leaves: {:?}",
        engine.stats().store
    );
    let total = ACCOUNTS * INITIAL;
    let writers_done = AtomicUsize::new(0);

    let (logs, declined, audits) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..TRANSFER_THREADS)
            .map(|t| {
                let engine = &engine;
                let writers_done = &writers_done;
                s.spawn(move || {
                    let mut rng = Rng::new(1000 + t);
                    let mut log = Vec::new();
                    let mut declined = 0u64;
                    for _ in 0..TRANSFERS_PER_THREAD {
                        let from = rng.below(ACCOUNTS);
                        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                        let amount = rng.range_incl(1, 300);
                        let done = engine
                            .run("transfer", |tx| {
                                let a = dec(&tx.get(&acct(from))?.expect("account exists"));
                                let b = dec(&tx.get(&acct(to))?.expect("account exists"));
                                if a < amount {
                                    return Ok(None);
                                }
                                tx.put(&acct(from), &balance_value(a - amount))?;
                                tx.put(&acct(to), &balance_value(b + amount))?;
                                Ok(Some((from, to, amount)))
                            })
                            .unwrap();
                        match done {
                            Some(t) => log.push(t),
                            None => declined += 1,
                        }
                    }
                    writers_done.fetch_add(1, Ordering::SeqCst);
                    (log, declined)
                })
            })
            .collect();

        // Two readers audit snapshots; the second also audits through read-only commands.
        let auditors: Vec<_> = [false, true]
            .into_iter()
            .map(|with_commands| {
                let (engine, writers_done) = (&engine, &writers_done);
                s.spawn(move || {
                    let mut audits = 0u64;
                    let mut last = 0u64;
                    loop {
                        let finished =
                            writers_done.load(Ordering::SeqCst) == TRANSFER_THREADS as usize;
                        let snap = engine.snapshot();
                        assert!(snap.commit_id().get() >= last, "snapshots move forward");
                        last = snap.commit_id().get();
                        audit_snapshot(&snap, total);
                        if with_commands {
                            audit_command(engine, total);
                        }
                        audits += 1;
                        if finished {
                            return audits;
                        }
                    }
                })
            })
            .collect();

        let mut logs = Vec::new();
        let mut declined = 0;
        for w in writers {
            let (log, d) = w.join().unwrap();
            logs.push(log);
            declined += d;
        }
        let audits: u64 = auditors.into_iter().map(|a| a.join().unwrap()).sum();
        (logs, declined, audits)
    });
    let _ = audits;

    // Replay the committed transfers independently: order does not matter for the
    // final balances, only which transfers committed.
    let mut expect: BTreeMap<u64, i128> = (0..ACCOUNTS).map(|i| (i, INITIAL as i128)).collect();
    let mut committed = 0u64;
    for log in &logs {
        for &(from, to, amount) in log {
            *expect.get_mut(&from).unwrap() -= amount as i128;
            *expect.get_mut(&to).unwrap() += amount as i128;
            committed += 1;
        }
    }
    let snap = engine.snapshot();
    let mut sum = 0;
    for i in 0..ACCOUNTS {
        let v = snap.get(&acct(i)).unwrap().unwrap();
        assert_eq!(v.len(), 8 + PAD);
        let b = dec(&v);
        assert_eq!(
            b as i128, expect[&i],
            "account {i}: initial + credits - debits of the committed transfers"
        );
        sum += b;
    }
    assert_eq!(sum, total);
    assert_eq!(
        committed + declined,
        TRANSFER_THREADS * TRANSFERS_PER_THREAD
    );

    let st = engine.stats();
    check_telemetry("bank", &st);
    assert_eq!(st.errors, 0);
    assert_eq!(
        st.commits,
        1 + committed,
        "one commit for opening, one per committed transfer"
    );
    let transfer = command(&st, "transfer");
    assert_eq!(transfer.runs, TRANSFER_THREADS * TRANSFERS_PER_THREAD);
    assert_eq!(transfer.commits, committed);
    assert_eq!(
        transfer.read_only, declined,
        "a declined transfer wrote nothing"
    );
    let audit = command(&st, "audit");
    assert_eq!(audit.commits, 0, "audits only read");
    assert_eq!(audit.read_only, audit.runs);
    assert_eq!(audit.conflicts, 0, "read-only commands never conflict");
    assert_eq!(st.read_only, declined + audit.runs);
    assert_eq!(engine.commit_id().get(), st.commits);
}

const COUNTER_THREADS: u64 = 8;
const INCREMENTS_PER_THREAD: u64 = 10_000;
const COUNTERS: u64 = 4;

fn counter(i: u64) -> Vec<u8> {
    format!("counter:{i}").into_bytes()
}

/// Eight threads increment four hot counters; each command increments one counter
/// chosen by the thread's PRNG and returns the value it wrote. No increment is lost
/// or duplicated: each counter ends at the number of increments it got, and the
/// values returned for one counter are exactly 1..=n.
fn hot_counters(max_conflicts: u32) {
    let what = format!("hot counters, max_conflicts {max_conflicts}");
    let engine = Engine::in_memory_with(Options {
        max_conflicts,
        ..Default::default()
    })
    .unwrap();
    let per_thread: Vec<Vec<Vec<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..COUNTER_THREADS)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    let mut rng = Rng::new(max_conflicts as u64 * 100 + t);
                    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); COUNTERS as usize];
                    for _ in 0..INCREMENTS_PER_THREAD {
                        let c = rng.below(COUNTERS);
                        let key = counter(c);
                        let n = engine
                            .run("incr", |tx| {
                                let n = tx.get(&key)?.map_or(0, |v| dec(&v)) + 1;
                                tx.put(&key, &enc(n))?;
                                Ok(n)
                            })
                            .unwrap();
                        seen[c as usize].push(n);
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let snap = engine.snapshot();
    let mut total = 0;
    for c in 0..COUNTERS {
        let mut values: Vec<u64> = per_thread
            .iter()
            .flat_map(|t| t[c as usize].iter().copied())
            .collect();
        let n = values.len() as u64;
        let stored = dec(&snap
            .get(&counter(c))
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: counter {c} exists")));
        assert_eq!(
            stored, n,
            "{what}: counter {c} equals the increments it got"
        );
        values.sort_unstable();
        let dupes = values.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(
            dupes, 0,
            "{what}: counter {c}: two increments returned the same value (a lost update)"
        );
        assert!(
            values.iter().copied().eq(1..=n),
            "{what}: counter {c}: the values returned are exactly 1..={n}"
        );
        total += stored;
    }
    assert_eq!(
        total,
        COUNTER_THREADS * INCREMENTS_PER_THREAD,
        "{what}: every increment counted"
    );

    let st = engine.stats();
    eprintln!(
        "{what}: {} commits, {} conflicts, {} retries, {} escalations, queue {:?}",
        st.commits, st.conflicts, st.retries, st.escalations, st.blocking_queue
    );
    check_telemetry(&what, &st);
    assert_eq!(
        st.commits,
        COUNTER_THREADS * INCREMENTS_PER_THREAD,
        "{what}: one commit per increment"
    );
    assert_eq!((st.read_only, st.errors), (0, 0), "{what}");
    assert!(
        st.conflicts >= st.escalations * u64::from(max_conflicts),
        "{what}: a command is escalated only after losing max_conflicts times: {st:?}"
    );
    let incr = command(&st, "incr");
    assert_eq!(incr.runs, COUNTER_THREADS * INCREMENTS_PER_THREAD, "{what}");
    assert_eq!(incr.commits, incr.runs, "{what}");
    assert_eq!(
        (incr.conflicts, incr.escalations),
        (st.conflicts, st.escalations),
        "{what}"
    );
    if st.conflicts > 0 {
        let losers: u64 = st
            .hot_pages
            .iter()
            .flat_map(|p| p.losers.iter())
            .filter(|(n, _)| n == "incr")
            .map(|(_, c)| c)
            .sum();
        assert!(
            losers > 0,
            "{what}: conflicts show up among the hot pages: {:?}",
            st.hot_pages
        );
        assert!(
            st.hot_pages
                .iter()
                .all(|p| p.losers.iter().all(|(n, _)| n == "incr")),
            "{what}: only incr ever lost"
        );
    }
}

#[test]
fn hot_counters_default_options() {
    hot_counters(Options::default().max_conflicts);
}

#[test]
fn hot_counters_escalate_after_one_conflict() {
    hot_counters(1);
}
