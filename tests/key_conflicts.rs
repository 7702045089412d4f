//! Conflicts where the data collides, not where the page does (issue 13).
//!
//! Commands that only share leaves never conflict: blind writes, read-modify-writes
//! of their own keys, `add` on one hot counter, `next_in_sequence`. Threads are
//! made to overlap deterministically: each command waits for the others inside its
//! closure (first attempt only), so every snapshot of a round predates every
//! commit of it. Real conflicts are still caught, each in a deterministic
//! interleaving: write skew, phantoms, absent keys read then inserted, a read
//! counter. Splits and merges that only move keys are not conflicts. A property
//! test checks that random concurrent histories are serializable in commit-id
//! order against a model replayed from the feed.

mod common;

use common::*;
use shardstone::{Engine, Error, Op, Stats};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Barrier;

const THREADS: u64 = 4;

/// The value written by thread-owned keys: a number then some padding, so that a
/// leaf holds a few dozen of them.
fn padded(n: u64, pad: usize) -> Vec<u8> {
    let mut v = enc(n).to_vec();
    v.resize(8 + pad, b'.');
    v
}

fn command<'s>(st: &'s Stats, name: &str) -> &'s shardstone::CommandStats {
    st.commands
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no stats for command {name:?}: {:?}", st.commands))
}

/// Runs `rounds` rounds on THREADS threads. In each round every thread runs one
/// command named `name`: `body(tx, thread, round)`, which calls the rendezvous it
/// is given once, after its reads and before returning. On the command's first
/// attempt the rendezvous waits until every thread has reached it, so all
/// snapshots of a round are taken before any of its commits; a re-run (a
/// conflict, which the callers assert never happens) does not wait again.
/// Returns each thread's results, in round order.
fn in_lockstep<T: Send>(
    engine: &Engine,
    name: &str,
    rounds: u64,
    body: impl Fn(&mut shardstone::Tx<'_>, u64, u64, &mut dyn FnMut()) -> shardstone::Result<T> + Sync,
) -> Vec<Vec<shardstone::Result<T>>> {
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (engine, barrier, body) = (engine, &barrier, &body);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for round in 0..rounds {
                        let mut waited = false;
                        let r = engine.run(name, |tx| {
                            let mut rendezvous = || {
                                if !waited {
                                    waited = true;
                                    barrier.wait();
                                }
                            };
                            body(tx, t, round, &mut rendezvous)
                        });
                        assert!(
                            waited,
                            "thread {t} round {round}: the command met the others"
                        );
                        out.push(r);
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Key `i` of the interleaved key space: thread `t` owns keys `i * THREADS + t`.
/// Unwraps every command's result.
fn all_ok<T>(results: Vec<Vec<shardstone::Result<T>>>) -> Vec<Vec<T>> {
    results
        .into_iter()
        .map(|t| {
            t.into_iter()
                .map(|r| r.expect("the command commits"))
                .collect()
        })
        .collect()
}

fn owned(i: u64, t: u64) -> Vec<u8> {
    format!("k:{:06}", i * THREADS + t).into_bytes()
}

// ---------------------------------------------------------------------------
// Commands that only share leaves never conflict.

/// Four threads blind-write their own keys, interleaved so that every leaf holds
/// keys of every thread, in lockstep rounds. Round `r` writes key `r` of each
/// thread and overwrites an earlier one: no conflicts, no escalations, and each
/// key holds the last value its owner wrote.
#[test]
fn blind_writes_to_interleaved_keys_never_conflict() {
    const ROUNDS: u64 = 300;
    let engine = Engine::in_memory().unwrap();
    let written = all_ok(in_lockstep(
        &engine,
        "blind write",
        ROUNDS,
        |tx, t, round, rendezvous| {
            tx.put(&owned(round, t), &padded(round, 40))?;
            // All threads overwrite the same index, so their keys are neighbours.
            let again = Rng::new(round).below(round + 1);
            tx.put(&owned(again, t), &padded(1_000_000 + round, 40))?;
            rendezvous();
            Ok(again)
        },
    ));
    let snap = engine.snapshot();
    for t in 0..THREADS {
        let mut want: BTreeMap<u64, u64> = BTreeMap::new();
        for (round, &again) in written[t as usize].iter().enumerate() {
            let round = round as u64;
            want.insert(round, round);
            want.insert(again, 1_000_000 + round);
        }
        for (i, v) in want {
            let got = snap.get(&owned(i, t)).unwrap();
            assert_value(
                format_args!("thread {t} key {i}"),
                got.as_deref(),
                Some(&padded(v, 40)),
            );
        }
    }
    assert_eq!(
        snap.range(..).count() as u64,
        ROUNDS * THREADS,
        "every key written, nothing else"
    );
    let st = engine.stats();
    assert_eq!(
        (st.conflicts, st.retries, st.escalations, st.errors),
        (0, 0, 0, 0),
        "{st:?}"
    );
    assert!(st.hot_keys.is_empty(), "{:?}", st.hot_keys);
    assert_eq!(st.commits, ROUNDS * THREADS);
    assert!(
        st.store.pages > 10,
        "the keys span many leaves: {:?}",
        st.store
    );
    let c = command(&st, "blind write");
    assert!(
        c.page_changes_resolved > 0,
        "commits found their leaf changed by a neighbour and still went through: {c:?}"
    );
    assert_eq!(c.page_changes_resolved, st.page_changes_resolved);
    eprintln!(
        "blind writes: {} commits, {} page changes resolved, {} restructures",
        st.commits, st.page_changes_resolved, st.restructures
    );
}

/// Four threads each read-modify-write their own keys (interleaved, sharing
/// leaves), all reading before any of them commits: no conflicts, and every key
/// ends at exactly the number of increments it got.
#[test]
fn read_modify_writes_of_own_keys_on_shared_leaves_never_conflict() {
    const KEYS: u64 = 60; // per thread
    const ROUNDS: u64 = 300;
    let engine = Engine::in_memory().unwrap();
    engine
        .run("seed", |tx| {
            for i in 0..KEYS {
                for t in 0..THREADS {
                    tx.put(&owned(i, t), &padded(0, 40))?;
                }
            }
            Ok(())
        })
        .unwrap();
    let touched = all_ok(in_lockstep(
        &engine,
        "increment",
        ROUNDS,
        |tx, t, round, rendezvous| {
            // The same index for every thread in a round: the four keys are adjacent.
            let i = Rng::new(round).below(KEYS);
            let key = owned(i, t);
            let n = dec(&tx.get(&key)?.expect("seeded"));
            rendezvous();
            tx.put(&key, &padded(n + 1, 40))?;
            Ok(i)
        },
    ));
    let snap = engine.snapshot();
    for t in 0..THREADS {
        let mut want = vec![0u64; KEYS as usize];
        for &i in &touched[t as usize] {
            want[i as usize] += 1;
        }
        for (i, &n) in want.iter().enumerate() {
            let got = dec(&snap.get(&owned(i as u64, t)).unwrap().unwrap());
            assert_eq!(got, n, "thread {t} key {i}: every increment counted once");
        }
    }
    let st = engine.stats();
    assert_eq!(
        (st.conflicts, st.retries, st.escalations, st.errors),
        (0, 0, 0, 0),
        "{st:?}"
    );
    let c = command(&st, "increment");
    assert_eq!(c.commits, ROUNDS * THREADS);
    assert!(
        c.page_changes_resolved > 0,
        "read-modify-writes found their leaf changed and were let through: {c:?}"
    );
}

// ---------------------------------------------------------------------------
// Counters: `add`.

fn counter_value(engine: &Engine, key: &[u8]) -> Option<i64> {
    engine
        .snapshot()
        .get(key)
        .unwrap()
        .map(|v| i64::from_le_bytes(v[..].try_into().expect("8 bytes")))
}

/// Four threads add to one counter (and to their own counters beside it) in
/// lockstep: no conflicts, and the counter is the exact sum of every delta.
#[test]
fn adds_to_one_counter_never_conflict() {
    const ROUNDS: u64 = 300;
    let engine = Engine::in_memory().unwrap();
    let deltas = all_ok(in_lockstep(
        &engine,
        "add",
        ROUNDS,
        |tx, t, round, rendezvous| {
            let delta = Rng::new(round * THREADS + t).range_incl(0, 2_000) as i64 - 1_000;
            tx.add(b"counter", delta)?;
            tx.add(format!("counter:{t}").as_bytes(), 1)?;
            rendezvous();
            Ok(delta)
        },
    ));
    let sum: i64 = deltas.iter().flatten().sum();
    assert_eq!(counter_value(&engine, b"counter"), Some(sum));
    for t in 0..THREADS {
        assert_eq!(
            counter_value(&engine, format!("counter:{t}").as_bytes()),
            Some(ROUNDS as i64)
        );
    }
    let st = engine.stats();
    assert_eq!(
        (st.conflicts, st.retries, st.escalations, st.errors),
        (0, 0, 0, 0),
        "{st:?}"
    );
    assert_eq!(st.commits, ROUNDS * THREADS);
    assert!(
        command(&st, "add").page_changes_resolved > 0,
        "the counter's leaf changed under most adds: {st:?}"
    );
}

#[test]
fn counter_overflow_fails_the_command_with_nothing_written() {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("near max", |tx| tx.add(b"c", i64::MAX - 1))
        .unwrap();
    engine.run("near min", |tx| tx.add(b"m", i64::MIN)).unwrap();
    let before = engine.commit_id();
    // The overflow found at commit, against the stored value.
    let r = engine.run("overflow", |tx| {
        tx.put(b"other", b"must not be written")?;
        tx.add(b"c", 2)
    });
    assert!(
        matches!(&r, Err(Error::CounterOverflow { key }) if key == b"c"),
        "{r:?}"
    );
    // Below the minimum.
    let r = engine.run("underflow", |tx| {
        tx.put(b"other", b"must not be written")?;
        tx.add(b"m", -1)
    });
    assert!(
        matches!(&r, Err(Error::CounterOverflow { key }) if key == b"m"),
        "{r:?}"
    );
    // Deltas of one command that overflow between them, on a missing key.
    let r = engine.run("two halves", |tx| {
        tx.put(b"other", b"must not be written")?;
        tx.add(b"fresh", i64::MAX)?;
        tx.add(b"fresh", 1)
    });
    assert!(
        matches!(&r, Err(Error::CounterOverflow { key }) if key == b"fresh"),
        "{r:?}"
    );
    // Found inside the command, once the base is known (read, or written here).
    let r = engine.run("read then overflow", |tx| {
        tx.put(b"other", b"must not be written")?;
        assert_eq!(
            tx.get(b"c")?.as_deref(),
            Some(&(i64::MAX - 1).to_le_bytes()[..])
        );
        tx.add(b"c", 1)?;
        tx.add(b"c", 1)?;
        Ok(())
    });
    assert!(
        matches!(&r, Err(Error::CounterOverflow { key }) if key == b"c"),
        "{r:?}"
    );
    assert_eq!(engine.commit_id(), before, "no commit was made");
    assert_eq!(counter_value(&engine, b"c"), Some(i64::MAX - 1));
    assert_eq!(counter_value(&engine, b"m"), Some(i64::MIN));
    let snap = engine.snapshot();
    assert!(snap.get(b"other").unwrap().is_none());
    assert!(snap.get(b"fresh").unwrap().is_none());
    // The counter still works up to its limit.
    engine.run("to max", |tx| tx.add(b"c", 1)).unwrap();
    assert_eq!(counter_value(&engine, b"c"), Some(i64::MAX));
}

#[test]
fn add_to_a_value_that_is_not_a_counter_fails() {
    let engine = Engine::in_memory().unwrap();
    engine.run("text", |tx| tx.put(b"name", b"abc")).unwrap();
    let before = engine.commit_id();
    let r = engine.run("add to text", |tx| {
        tx.put(b"other", b"must not be written")?;
        tx.add(b"name", 1)
    });
    assert!(
        matches!(&r, Err(Error::NotACounter { key, len: 3 }) if key == b"name"),
        "{r:?}"
    );
    // The same found inside the command, where the command wrote the value itself.
    let r = engine.run("put then add", |tx| {
        tx.put(b"long", &[7u8; 9])?;
        tx.add(b"long", 1)
    });
    assert!(
        matches!(&r, Err(Error::NotACounter { key, len: 9 }) if key == b"long"),
        "{r:?}"
    );
    assert_eq!(engine.commit_id(), before);
    let snap = engine.snapshot();
    assert_eq!(snap.get(b"name").unwrap().as_deref(), Some(&b"abc"[..]));
    assert!(snap.get(b"other").unwrap().is_none());
    assert!(snap.get(b"long").unwrap().is_none());
}

#[test]
fn add_then_get_in_one_command_reads_the_sum() {
    let engine = Engine::in_memory().unwrap();
    engine.run("seed", |tx| tx.add(b"c", 5)).unwrap();
    let seen = engine
        .run("add and look", |tx| {
            tx.add(b"c", 3)?;
            let a = tx.get(b"c")?.map(|v| dec(&v) as i64);
            tx.add(b"c", 2)?;
            let b = tx.get(b"c")?.map(|v| dec(&v) as i64);
            tx.add(b"new", -4)?;
            let c = tx
                .get(b"new")?
                .map(|v| i64::from_le_bytes(v[..].try_into().unwrap()));
            let scanned: Vec<(Vec<u8>, i64)> = tx
                .range(..)
                .map(|e| e.map(|(k, v)| (k, i64::from_le_bytes(v[..].try_into().unwrap()))))
                .collect::<shardstone::Result<_>>()?;
            Ok((a, b, c, scanned))
        })
        .unwrap();
    assert_eq!(
        seen,
        (
            Some(8),
            Some(10),
            Some(-4),
            vec![(b"c".to_vec(), 10), (b"new".to_vec(), -4)]
        )
    );
    assert_eq!(counter_value(&engine, b"c"), Some(10));
    assert_eq!(counter_value(&engine, b"new"), Some(-4));
}

/// An add alone does not read its counter: a concurrent add commits between, and
/// A still commits at once, both deltas counted.
#[test]
fn a_concurrent_add_does_not_conflict_with_an_add() {
    let engine = Engine::in_memory().unwrap();
    engine.run("seed", |tx| tx.add(b"c", 100)).unwrap();
    let ((), attempts, ()) = interleave(
        &engine,
        "add one",
        |tx, pause| {
            tx.add(b"c", 1)?;
            pause();
            tx.add(b"c", 1)
        },
        "add ten",
        |tx| tx.add(b"c", 10),
    );
    assert_eq!(attempts, 1);
    assert_eq!(counter_value(&engine, b"c"), Some(112));
    assert_eq!(engine.stats().conflicts, 0);
}

/// A `get` of the counter makes it an ordinary read, before the add or after it:
/// a concurrent add in between is a conflict, and the re-run sees it.
#[test]
fn get_makes_a_counter_a_read() {
    for get_first in [true, false] {
        let what = if get_first {
            "get then add"
        } else {
            "add then get"
        };
        let engine = Engine::in_memory().unwrap();
        engine.run("seed", |tx| tx.add(b"c", 100)).unwrap();
        let (seen, attempts, ()) = interleave(
            &engine,
            what,
            |tx, pause| {
                let seen = if get_first {
                    let v = dec(&tx.get(b"c")?.unwrap());
                    pause();
                    tx.add(b"c", 1)?;
                    v
                } else {
                    tx.add(b"c", 1)?;
                    pause();
                    dec(&tx.get(b"c")?.unwrap())
                };
                tx.put(b"seen", &enc(seen))?;
                Ok(seen)
            },
            "add ten",
            |tx| tx.add(b"c", 10),
        );
        assert_eq!(attempts, 2, "{what}: the read counter changed: a conflict");
        assert_eq!(
            seen,
            if get_first { 110 } else { 111 },
            "{what}: the re-run saw B's add"
        );
        assert_eq!(counter_value(&engine, b"c"), Some(111), "{what}");
        let st = engine.stats();
        assert_eq!((st.conflicts, st.retries), (1, 1), "{what}: {st:?}");
        assert_hot_key(&st, b"c", what);
    }
}

/// `stats().hot_keys` names `key` as a single key lost on once, by `loser`.
#[track_caller]
fn assert_hot_key(st: &Stats, key: &[u8], loser: &str) {
    let hot: Vec<_> = st
        .hot_keys
        .iter()
        .filter(|h| h.losers.iter().any(|(n, _)| n == loser))
        .collect();
    assert_eq!(
        hot.len(),
        1,
        "one hot key names {loser:?}: {:?}",
        st.hot_keys
    );
    let h = hot[0];
    assert_eq!(
        (h.first_key.as_slice(), h.last_key.as_slice()),
        (key, key),
        "the hot key is {}: {h:?}",
        show(key)
    );
    assert_eq!(h.conflicts, 1, "{h:?}");
    assert_eq!(h.losers, vec![(loser.to_string(), 1)]);
}

/// `stats().hot_keys` names a scanned range that holds `key`, lost on once by `loser`.
#[track_caller]
fn assert_hot_range(st: &Stats, key: &[u8], loser: &str) {
    let hot: Vec<_> = st
        .hot_keys
        .iter()
        .filter(|h| h.losers.iter().any(|(n, _)| n == loser))
        .collect();
    assert_eq!(
        hot.len(),
        1,
        "one hot range names {loser:?}: {:?}",
        st.hot_keys
    );
    let h = hot[0];
    assert!(
        h.first_key.as_slice() <= key && (h.last_key.is_empty() || key <= h.last_key.as_slice()),
        "the hot range {} ..= {} holds {}",
        show(&h.first_key),
        show(&h.last_key),
        show(key)
    );
    assert_eq!(h.losers, vec![(loser.to_string(), 1)]);
}

/// `Tx::range` first reads the counters among the command's own buffered writes
/// that fall in the range. An empty or inverted range is simply empty (as it is
/// for a snapshot, and for a command that wrote nothing): never a panic.
#[test]
fn an_empty_or_inverted_range_in_a_command_that_wrote_is_empty() {
    let cases: [Bounds<'_>; 3] = [
        (Bound::Excluded(b"h"), Bound::Excluded(b"h")),
        (Bound::Included(b"k"), Bound::Excluded(b"c")),
        (Bound::Included(b"k"), Bound::Included(b"c")),
    ];
    for (lo, hi) in cases {
        let engine = Engine::in_memory().unwrap();
        engine.run("seed", |tx| tx.put(b"h", b"x")).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.run("scan after writing", |tx| {
                tx.put(b"e", b"1")?;
                tx.add(b"g", 1)?;
                Ok(tx.range((lo, hi)).count())
            })
        }));
        match r {
            Ok(Ok(n)) => assert_eq!(n, 0, "{lo:?}..{hi:?} is empty"),
            Ok(Err(e)) => panic!("{lo:?}..{hi:?}: {e}"),
            Err(p) => panic!(
                "{lo:?}..{hi:?} in a command with buffered writes panicked: {}",
                panic_text(p)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Sequences.

#[test]
fn sequence_ids_are_unique_and_increasing_without_conflicts() {
    const ROUNDS: u64 = 200;
    let engine = Engine::in_memory().unwrap();
    let first = engine
        .run("first", |tx| tx.next_in_sequence(b"seq"))
        .unwrap();
    assert_eq!(first, 1, "a sequence starts at 1");
    // Each command takes one to three ids, and writes a row under one of them
    // (next to the sequence's key); every fifth command aborts after taking ids.
    let taken = in_lockstep(&engine, "take ids", ROUNDS, |tx, t, round, rendezvous| {
        let n = 1 + Rng::new(round * THREADS + t).below(3);
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(tx.next_in_sequence(b"seq")?);
        }
        tx.put(format!("seq:{:08}", ids[0]).as_bytes(), &enc(t))?;
        rendezvous();
        if (round + t) % 5 == 0 {
            return Err(Error::abort("gives its ids back"));
        }
        Ok(ids)
    });
    let mut committed: Vec<u64> = Vec::new();
    for (t, results) in taken.into_iter().enumerate() {
        let mut last = first;
        let mut aborted = 0;
        for (round, r) in results.into_iter().enumerate() {
            let ids = match r {
                Ok(ids) => ids,
                Err(Error::Abort(_)) => {
                    aborted += 1;
                    continue;
                }
                Err(e) => panic!("thread {t} round {round}: {e}"),
            };
            for &id in &ids {
                assert!(
                    id > last,
                    "thread {t} round {round}: ids increase per thread ({id} after {last})"
                );
                last = id;
            }
            committed.extend(ids);
        }
        assert!(aborted > 0);
    }
    let n = committed.len();
    committed.sort_unstable();
    committed.dedup();
    assert_eq!(committed.len(), n, "no id was handed out twice");
    let max = *committed.last().unwrap();
    let stored = dec(&engine.snapshot().get(b"seq").unwrap().unwrap());
    assert!(
        stored > max,
        "the stored value {stored} is above every committed id (up to {max})"
    );
    let next = engine
        .run("next", |tx| tx.next_in_sequence(b"seq"))
        .unwrap();
    assert!(next > max, "{next} after {max}");
    let st = engine.stats();
    assert_eq!((st.conflicts, st.escalations), (0, 0), "{st:?}");
    assert!(
        command(&st, "take ids").page_changes_resolved > 0,
        "the sequence's leaf changed under most commands: {st:?}"
    );
}

/// A durable engine's sequence continues above every committed id after a reopen.
#[test]
fn sequence_ids_continue_after_reopen() {
    let dir = TempDir::new("key-conflicts-sequence");
    let mut max = 0;
    for open in 0..3 {
        let engine = Engine::open(dir.path()).unwrap();
        let ids: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let engine = &engine;
                    s.spawn(move || {
                        (0..10)
                            .map(|_| {
                                engine
                                    .run("take", |tx| {
                                        let a = tx.next_in_sequence(b"order-id")?;
                                        let b = tx.next_in_sequence(b"order-id")?;
                                        assert!(b > a);
                                        tx.put(format!("order:{a:08}").as_bytes(), b"x")?;
                                        Ok(b)
                                    })
                                    .unwrap()
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let low = *ids.iter().min().unwrap();
        assert!(
            low > max,
            "open {open}: ids continue above {max} (got {low})"
        );
        max = *ids.iter().max().unwrap();
        let stored = dec(&engine.snapshot().get(b"order-id").unwrap().unwrap());
        assert!(stored > max, "open {open}: stored {stored}, max id {max}");
        assert_eq!(engine.stats().conflicts, 0);
    }
}

// ---------------------------------------------------------------------------
// Real conflicts are still conflicts (deterministic interleavings).

/// An engine with `r:` keys on one leaf, between fillers that make the tree a
/// few leaves wide.
fn engine_with_a_small_leaf() -> Engine {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("fill", |tx| {
            for i in 0..300u32 {
                tx.put(format!("a:{i:04}").as_bytes(), &[b'.'; 60])?;
                tx.put(format!("z:{i:04}").as_bytes(), &[b'.'; 60])?;
            }
            for i in (10..=90).step_by(10) {
                tx.put(format!("r:{i:02}").as_bytes(), &enc(i))?;
            }
            tx.put(b"r:doctor:x", &enc(1))?;
            tx.put(b"r:doctor:y", &enc(1))
        })
        .unwrap();
    assert!(engine.stats().store.pages > 5);
    engine
}

/// Write skew with both doctors on one leaf: A reads x and y, B reads both and
/// takes y off call, then A takes x off call: A read y, which changed.
#[test]
fn write_skew_on_one_leaf_is_a_conflict() {
    let engine = engine_with_a_small_leaf();
    let off_call = |tx: &mut shardstone::Tx<'_>, me: &[u8], other: &[u8]| {
        let mine = dec(&tx.get(me)?.unwrap());
        let theirs = dec(&tx.get(other)?.unwrap());
        Ok((mine, theirs))
    };
    let (a_went, attempts, b_went) = interleave(
        &engine,
        "doctor x",
        |tx, pause| {
            let (x, y) = off_call(tx, b"r:doctor:x", b"r:doctor:y")?;
            pause();
            if x + y >= 2 {
                tx.put(b"r:doctor:x", &enc(0))?;
                return Ok(true);
            }
            Ok(false)
        },
        "doctor y",
        |tx| {
            let (y, x) = off_call(tx, b"r:doctor:y", b"r:doctor:x")?;
            if x + y >= 2 {
                tx.put(b"r:doctor:y", &enc(0))?;
                return Ok(true);
            }
            Ok(false)
        },
    );
    assert!(b_went);
    assert_eq!(attempts, 2, "A's read of y was invalidated");
    assert!(!a_went, "A saw y off call on its re-run and stayed");
    let snap = engine.snapshot();
    assert_eq!(dec(&snap.get(b"r:doctor:x").unwrap().unwrap()), 1);
    assert_eq!(dec(&snap.get(b"r:doctor:y").unwrap().unwrap()), 0);
    let st = engine.stats();
    assert_eq!(st.conflicts, 1, "{st:?}");
    assert_hot_key(&st, b"r:doctor:y", "doctor x");
}

/// A counts a scanned range and writes the count; B inserts into the part of the
/// range A looked at: a phantom, a conflict. `insert` is a key inside the range.
fn scan_conflicts(lo: &[u8], hi: &[u8], reverse: bool, limit: usize, insert: &[u8]) -> u32 {
    let engine = engine_with_a_small_leaf();
    let (_, attempts, ()) = interleave(
        &engine,
        "count",
        |tx, pause| {
            let range = tx.range(lo..hi);
            let seen: Vec<Vec<u8>> = if reverse {
                range
                    .rev()
                    .take(limit)
                    .map(|e| e.map(|(k, _)| k))
                    .collect::<shardstone::Result<_>>()
            } else {
                range
                    .take(limit)
                    .map(|e| e.map(|(k, _)| k))
                    .collect::<shardstone::Result<_>>()
            }?;
            pause();
            tx.put(b"r:count", &enc(seen.len() as u64))?;
            Ok(seen)
        },
        "insert",
        |tx| tx.put(insert, b"new"),
    );
    let st = engine.stats();
    let count = command(&st, "count");
    let what = format!(
        "scan {}..{} {} take({limit}), insert {}",
        show(lo),
        show(hi),
        if reverse { "reversed" } else { "forward" },
        show(insert)
    );
    assert_eq!(
        count.conflicts,
        u64::from(attempts - 1),
        "{what}: {count:?}"
    );
    if attempts == 1 {
        assert_eq!(
            count.page_changes_resolved, 1,
            "{what}: the insert changed the scanned leaf, and was let through: {count:?}"
        );
        assert!(st.hot_keys.is_empty(), "{what}: {:?}", st.hot_keys);
    } else {
        assert_hot_range(&st, insert, "count");
    }
    attempts
}

#[test]
fn phantom_insert_into_a_scanned_range_on_one_leaf_is_a_conflict() {
    // The range holds r:30, r:40, r:50; r:21 (its included start) and r:59 (its
    // excluded end) are absent.
    for reverse in [false, true] {
        for inside in [&b"r:21"[..], b"r:35", b"r:585"] {
            assert_eq!(
                scan_conflicts(b"r:21", b"r:59", reverse, usize::MAX, inside),
                2,
                "an insert into the range (reverse: {reverse}) is a phantom: A re-ran"
            );
        }
    }
}

#[test]
fn an_insert_just_outside_a_scanned_range_on_its_leaf_is_not_a_conflict() {
    for reverse in [false, true] {
        for outside in [&b"r:205"[..], b"r:59", b"r:595"] {
            assert_eq!(
                scan_conflicts(b"r:21", b"r:59", reverse, usize::MAX, outside),
                1,
                "an insert beside the range (reverse: {reverse}) is not a conflict"
            );
        }
    }
}

/// A scan stopped after three entries looked at the range only up to the third:
/// an insert after that is not a conflict, an insert before it is.
#[test]
fn a_scan_stopped_early_conflicts_only_over_what_it_looked_at() {
    // Forward: sees r:10, r:20, r:30.
    for (insert, attempts) in [
        (&b"r:05"[..], 2),
        (b"r:15", 2),
        (b"r:25", 2),
        (b"r:35", 1),
        (b"r:75", 1),
    ] {
        assert_eq!(
            scan_conflicts(b"r:", b"r;", false, 3, insert),
            attempts,
            "forward take(3), insert {}",
            show(insert)
        );
    }
    // Reversed: sees r:doctor:y, r:doctor:x, r:90.
    for (insert, attempts) in [
        (&b"r:zzz"[..], 2),
        (b"r:doctor:xx", 2),
        (b"r:95", 2),
        (b"r:85", 1),
        (b"r:15", 1),
    ] {
        assert_eq!(
            scan_conflicts(b"r:", b"r;", true, 3, insert),
            attempts,
            "reversed take(3), insert {}",
            show(insert)
        );
    }
}

/// A key read absent and then inserted by another commit is a conflict; an
/// insert of its neighbour on the same leaf is not.
#[test]
fn reading_an_absent_key_conflicts_with_its_insert() {
    for (insert, want) in [(&b"r:55"[..], 2), (b"r:56", 1)] {
        let engine = engine_with_a_small_leaf();
        let (found, attempts, ()) = interleave(
            &engine,
            "check absent",
            |tx, pause| {
                let found = tx.get(b"r:55")?.is_some();
                pause();
                tx.put(b"r:checked", &[u8::from(found)])?;
                Ok(found)
            },
            "insert",
            |tx| tx.put(insert, b"new"),
        );
        assert_eq!(attempts, want, "insert {}", show(insert));
        assert_eq!(found, want == 2, "the re-run sees the insert");
        let st = engine.stats();
        if want == 2 {
            assert_hot_key(&st, b"r:55", "check absent");
        } else {
            assert_eq!(st.conflicts, 0);
            assert_eq!(command(&st, "check absent").page_changes_resolved, 1);
        }
    }
}

// ---------------------------------------------------------------------------
// Splits and merges move keys without changing them: not conflicts.

fn p(i: u32) -> Vec<u8> {
    format!("p:{i:03}").into_bytes()
}

/// A reads p:020, scans p:015..=p:025 and writes p:011; meanwhile B inserts a
/// hundred keys around them on their leaf (outside the scanned range), which
/// splits it, and also writes `also`. Returns how many times A ran.
fn split_under_a_reader(also: Option<&[u8]>) -> u32 {
    let engine = engine_with_a_small_leaf();
    engine
        .run("seed", |tx| {
            for i in 0..40 {
                tx.put(&p(i), &padded(u64::from(i), 20))?;
            }
            Ok(())
        })
        .unwrap();
    let restructures = engine.stats().restructures;
    let (seen, attempts, ()) = interleave(
        &engine,
        "read",
        |tx, pause| {
            let k = tx.get(&p(20))?.map(|v| dec(&v));
            let scanned: Vec<u64> = tx
                .range(p(15).as_slice()..p(26).as_slice())
                .map(|e| e.map(|(_, v)| dec(&v)))
                .collect::<shardstone::Result<_>>()?;
            pause();
            tx.put(&p(11), b"written by A")?;
            Ok((k, scanned))
        },
        "split",
        |tx| {
            for i in 0..50 {
                tx.put(format!("p:005:{i:03}").as_bytes(), &[b's'; 100])?;
                tx.put(format!("p:030:{i:03}").as_bytes(), &[b's'; 100])?;
            }
            if let Some(key) = also {
                tx.put(key, &padded(999, 20))?;
            }
            Ok(())
        },
    );
    let st = engine.stats();
    assert!(
        st.restructures > restructures,
        "B's inserts split the leaf: {st:?}"
    );
    let snap = engine.snapshot();
    assert_eq!(
        snap.get(&p(11)).unwrap().as_deref(),
        Some(&b"written by A"[..]),
        "A's write landed where p:011 lives now"
    );
    let p_keys = snap.range(b"p:".as_slice()..b"p;".as_slice()).count();
    assert_eq!(p_keys, 140, "every key of both commands is there once");
    let want_k = if also == Some(&p(20)) { 999 } else { 20 };
    let want_scan: Vec<u64> = (15..26)
        .map(|i| {
            if also == Some(&p(i)) {
                999
            } else {
                u64::from(i)
            }
        })
        .collect();
    assert_eq!(
        seen,
        (Some(want_k), want_scan),
        "A's last run read the newest values"
    );
    let a = command(&st, "read");
    assert_eq!(a.conflicts, u64::from(attempts - 1), "{a:?}");
    if attempts == 1 {
        assert_eq!(a.page_changes_resolved, 1, "{a:?}");
    }
    attempts
}

#[test]
fn a_split_that_moves_read_keys_is_not_a_conflict() {
    assert_eq!(split_under_a_reader(None), 1);
}

#[test]
fn a_split_that_also_changes_a_read_key_is_a_conflict() {
    assert_eq!(split_under_a_reader(Some(&p(20))), 2, "the key A read");
    assert_eq!(split_under_a_reader(Some(&p(17))), 2, "a key A scanned");
    assert_eq!(split_under_a_reader(Some(&p(30))), 1, "a key beside them");
}

/// A reads p:100, scans p:098..=p:102 and writes p:099; meanwhile B deletes
/// every other p: key (and changes `also`), so that their leaves merge.
fn merge_under_a_reader(also: Option<&[u8]>) -> u32 {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("seed", |tx| {
            for i in 0..200 {
                tx.put(&p(i), &padded(u64::from(i), 100))?;
            }
            Ok(())
        })
        .unwrap();
    let before = engine.stats();
    assert!(before.store.pages > 6, "{:?}", before.store);
    let (seen, attempts, ()) = interleave(
        &engine,
        "read",
        |tx, pause| {
            let k = tx.get(&p(100))?.map(|v| dec(&v));
            let scanned: Vec<u64> = tx
                .range(p(98).as_slice()..=p(102).as_slice())
                .map(|e| e.map(|(_, v)| dec(&v)))
                .collect::<shardstone::Result<_>>()?;
            pause();
            tx.put(&p(99), b"written by A")?;
            Ok((k, scanned))
        },
        "merge",
        |tx| {
            for i in (0..95).chain(105..200) {
                tx.delete(&p(i))?;
            }
            if let Some(key) = also {
                tx.put(key, &padded(999, 100))?;
            }
            Ok(())
        },
    );
    let st = engine.stats();
    assert!(
        st.restructures > before.restructures,
        "B's deletes merged leaves: {st:?}"
    );
    let snap = engine.snapshot();
    let left: Vec<Vec<u8>> = snap
        .range(..)
        .map(|e| e.map(|(k, _)| k))
        .collect::<shardstone::Result<_>>()
        .unwrap();
    assert_eq!(left, (95..105).map(p).collect::<Vec<_>>());
    assert_eq!(
        snap.get(&p(99)).unwrap().as_deref(),
        Some(&b"written by A"[..]),
        "A's write landed where p:099 lives now"
    );
    let want_k = if also == Some(&p(100)) { 999 } else { 100 };
    let want_scan: Vec<u64> = (98..=102)
        .map(|i| {
            if also == Some(&p(i)) {
                999
            } else {
                u64::from(i)
            }
        })
        .collect();
    assert_eq!(
        seen,
        (Some(want_k), want_scan),
        "A's last run read the newest values"
    );
    let a = command(&st, "read");
    assert_eq!(a.conflicts, u64::from(attempts - 1), "{a:?}");
    if attempts == 1 {
        assert_eq!(a.page_changes_resolved, 1, "{a:?}");
    }
    attempts
}

#[test]
fn a_merge_that_moves_read_keys_is_not_a_conflict() {
    assert_eq!(merge_under_a_reader(None), 1);
}

#[test]
fn a_merge_that_also_changes_a_read_key_is_a_conflict() {
    assert_eq!(merge_under_a_reader(Some(&p(100))), 2, "the key A read");
    assert_eq!(merge_under_a_reader(Some(&p(101))), 2, "a key A scanned");
    assert_eq!(merge_under_a_reader(Some(&p(104))), 1, "a key beside them");
}

// ---------------------------------------------------------------------------
// Property: random concurrent commands on a dense key space are serializable in
// commit-id order, and no counter loses an update.

/// Keys of the dense space: a few hundred, about half present, with values of a
/// few to a couple of hundred bytes, so that a handful of leaves hold them all and
/// commands share leaves, split and merge them.
const DENSE_KEYS: u64 = 240;

fn dense(i: u64) -> Vec<u8> {
    format!("k:{i:03}").into_bytes()
}

/// Every eighth key is a counter: only ever added to (and read).
fn is_counter(i: u64) -> bool {
    i.is_multiple_of(8)
}

/// Each writing command also writes its thread's marker key, with the command's
/// number as the value: the feed record that holds it names the command.
fn marker(t: u64) -> Vec<u8> {
    format!("~marker:{t}").into_bytes()
}

/// One operation of a command, chosen before it runs (the same on every re-run).
#[derive(Clone, Debug)]
enum Plan {
    Get(u64),
    Scan {
        lo: u64,
        hi: u64,
        rev: bool,
        limit: usize,
    },
    Put(u64, Vec<u8>),
    Delete(u64),
    Add(u64, i64),
}

/// One operation as it ran in the attempt that committed, with what it read.
#[derive(Clone, Debug)]
enum Step {
    Get(Vec<u8>, Option<Vec<u8>>),
    Scan {
        lo: Vec<u8>,
        hi: Vec<u8>,
        rev: bool,
        limit: usize,
        got: Entries,
    },
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, bool),
    Add(Vec<u8>, i64),
}

/// A command that returned: its snapshot and the steps of its last attempt.
struct Ran {
    thread: u64,
    seq: u64,
    snapshot: u64,
    writes: bool,
    steps: Vec<Step>,
}

fn plan_command(rng: &mut Rng) -> (bool, Vec<Plan>) {
    let read_only = rng.chance(1, 4);
    let n = rng.range_incl(1, 4);
    let plain_key = |rng: &mut Rng| {
        let i = rng.below(DENSE_KEYS);
        if is_counter(i) {
            i + 1
        } else {
            i
        }
    };
    let plan = (0..n)
        .map(|_| {
            let pick = if read_only {
                rng.below(45)
            } else {
                rng.below(100)
            };
            match pick {
                0..=29 => Plan::Get(rng.below(DENSE_KEYS)),
                30..=44 => {
                    let lo = rng.below(DENSE_KEYS);
                    Plan::Scan {
                        lo,
                        hi: lo + rng.range_incl(1, 30),
                        rev: rng.chance(1, 2),
                        limit: if rng.chance(1, 3) {
                            rng.range_incl(1, 5) as usize
                        } else {
                            usize::MAX
                        },
                    }
                }
                45..=69 => {
                    let mut v = enc(rng.next_u64()).to_vec();
                    v.resize(8 + rng.below(700) as usize, b'v');
                    Plan::Put(plain_key(rng), v)
                }
                70..=84 => Plan::Delete(plain_key(rng)),
                _ => {
                    let i = rng.below(DENSE_KEYS / 8) * 8;
                    Plan::Add(i, rng.range_incl(0, 2_000) as i64 - 1_000)
                }
            }
        })
        .collect();
    (!read_only, plan)
}

fn run_plan(
    tx: &mut shardstone::Tx<'_>,
    plan: &[Plan],
    steps: &mut Vec<Step>,
) -> shardstone::Result<()> {
    for op in plan {
        let step = match op {
            Plan::Get(i) => {
                let k = dense(*i);
                let v = tx.get(&k)?.map(|v| v.into_vec());
                Step::Get(k, v)
            }
            &Plan::Scan { lo, hi, rev, limit } => {
                let (lo, hi) = (dense(lo), dense(hi));
                let range = tx.range(lo.as_slice()..hi.as_slice());
                let own = |e: shardstone::Result<(Vec<u8>, shardstone::Value)>| {
                    e.map(|(k, v)| (k, v.into_vec()))
                };
                let got: Entries = if rev {
                    range
                        .rev()
                        .take(limit)
                        .map(own)
                        .collect::<shardstone::Result<_>>()?
                } else {
                    range
                        .take(limit)
                        .map(own)
                        .collect::<shardstone::Result<_>>()?
                };
                Step::Scan {
                    lo,
                    hi,
                    rev,
                    limit,
                    got,
                }
            }
            Plan::Put(i, v) => {
                tx.put(&dense(*i), v)?;
                Step::Put(dense(*i), v.clone())
            }
            Plan::Delete(i) => {
                let existed = tx.delete(&dense(*i))?;
                Step::Delete(dense(*i), existed)
            }
            Plan::Add(i, d) => {
                tx.add(&dense(*i), *d)?;
                Step::Add(dense(*i), *d)
            }
        };
        steps.push(step);
        // Let the other threads in between the operations of a command.
        std::thread::yield_now();
    }
    Ok(())
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Replays `ran` on `model`: applies its writes and checks every read against
/// the model's state at that point.
fn replay(model: &mut Model, ran: &Ran, what: &str) {
    let what = format!("{what}: thread {} command {}", ran.thread, ran.seq);
    for (n, step) in ran.steps.iter().enumerate() {
        match step {
            Step::Get(k, got) => assert_value(
                format_args!("{what} step {n}: get {}", show(k)),
                got.as_deref(),
                model.get(k).map(Vec::as_slice),
            ),
            Step::Scan {
                lo,
                hi,
                rev,
                limit,
                got,
            } => {
                let mut want: Entries = model_range(
                    model,
                    Bound::Included(lo.as_slice()),
                    Bound::Excluded(hi.as_slice()),
                )
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
                if *rev {
                    want.reverse();
                }
                want.truncate(*limit);
                assert_entries(
                    &format!(
                        "{what} step {n}: scan {}..{} rev {rev} take {limit}",
                        show(lo),
                        show(hi)
                    ),
                    got,
                    &want,
                );
            }
            Step::Put(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            Step::Delete(k, existed) => {
                assert_eq!(
                    *existed,
                    model.remove(k).is_some(),
                    "{what} step {n}: delete {} said whether it existed",
                    show(k)
                );
            }
            Step::Add(k, d) => {
                let base = model.get(k).map_or(0, |v| {
                    i64::from_le_bytes(v.as_slice().try_into().expect("a counter"))
                });
                model.insert(k.clone(), (base + d).to_le_bytes().to_vec());
            }
        }
    }
    if ran.writes {
        model.insert(marker(ran.thread), enc(ran.seq).to_vec());
    }
}

fn serializable_history(seed: u64, threads: u64, per_thread: u64) {
    let label = format!("seed {seed}, {threads} threads");
    let engine = Engine::in_memory().unwrap();
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    for i in 0..DENSE_KEYS {
        if is_counter(i) || rng.chance(1, 2) {
            continue;
        }
        let mut v = enc(rng.next_u64()).to_vec();
        v.resize(8 + rng.below(700) as usize, b's');
        model.insert(dense(i), v);
    }
    engine
        .run("setup", |tx| {
            for (k, v) in &model {
                tx.put(k, v)?;
            }
            Ok(())
        })
        .unwrap();
    let setup = engine.commit_id().get();
    let mut feed = engine.subscribe(setup).unwrap();

    let runs: Vec<Ran> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    let mut rng = Rng::new(seed * 1_000 + t);
                    let mut runs = Vec::new();
                    for seq in 0..per_thread {
                        let (writes, plan) = plan_command(&mut rng);
                        let mut steps = Vec::new();
                        let mut snapshot = 0;
                        let name = if writes { "write" } else { "read" };
                        engine
                            .run(name, |tx| {
                                steps.clear();
                                snapshot = tx.snapshot_id().get();
                                run_plan(tx, &plan, &mut steps)?;
                                if writes {
                                    tx.put(&marker(t), &enc(seq))?;
                                }
                                Ok(())
                            })
                            .unwrap_or_else(|e| panic!("thread {t} command {seq} {plan:?}: {e}"));
                        runs.push(Ran {
                            thread: t,
                            seq,
                            snapshot,
                            writes,
                            steps,
                        });
                    }
                    runs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    // No lost update, from the threads' own logs: each counter is the sum of the
    // deltas of the commands that committed.
    let mut sums: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for ran in &runs {
        for step in &ran.steps {
            if let Step::Add(k, d) = step {
                *sums.entry(k.clone()).or_default() += d;
            }
        }
    }
    let snap = engine.snapshot();
    for i in (0..DENSE_KEYS).filter(|&i| is_counter(i)) {
        let got = snap
            .get(&dense(i))
            .unwrap()
            .map(|v| i64::from_le_bytes(v[..].try_into().expect("a counter")));
        assert_eq!(
            got,
            sums.get(&dense(i)).copied(),
            "{label}: counter {i} is the sum of the committed deltas"
        );
    }

    // Replay the writing commands in commit-id order, as the feed gives them.
    let last = engine.commit_id().get();
    let index: BTreeMap<(u64, u64), usize> = runs
        .iter()
        .enumerate()
        .map(|(n, r)| ((r.thread, r.seq), n))
        .collect();
    let mut reads: Vec<&Ran> = runs.iter().filter(|r| !r.writes).collect();
    reads.sort_by_key(|r| r.snapshot);
    let mut reads = reads.into_iter().peekable();
    let mut check_reads_at = |model: &mut Model, at: u64| {
        while let Some(r) = reads.next_if(|r| r.snapshot <= at) {
            assert_eq!(
                r.snapshot, at,
                "{label}: a read-only command's snapshot is a commit"
            );
            replay(model, r, &format!("{label}: read-only at {at}"));
        }
    };
    check_reads_at(&mut model, setup);
    let mut replayed = 0;
    for id in setup + 1..=last {
        let rec = feed.next().expect("a record per commit").unwrap();
        assert_eq!(rec.commit_id.get(), id);
        let (t, seq) = rec
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Put { key, value } if key.starts_with(b"~marker:") => {
                    let t: u64 = std::str::from_utf8(&key[8..]).unwrap().parse().unwrap();
                    Some((t, dec(value)))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{label}: commit {id} has a marker: {rec:?}"));
        let ran = &runs[index[&(t, seq)]];
        assert!(ran.writes, "{label}: commit {id} is a writing command");
        assert!(
            ran.snapshot < id,
            "{label}: commit {id} read a snapshot before it ({})",
            ran.snapshot
        );
        replay(&mut model, ran, &format!("{label}: commit {id}"));
        replayed += 1;
        // The record holds exactly the values the replay computed.
        let mut written: Vec<&[u8]> = ran
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Put(k, _) | Step::Delete(k, _) | Step::Add(k, _) => Some(k.as_slice()),
                _ => None,
            })
            .collect();
        let mark = marker(t);
        written.push(&mark);
        written.sort_unstable();
        written.dedup();
        let recorded: Vec<&[u8]> = rec
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key } => key.as_slice(),
            })
            .collect();
        assert_eq!(
            recorded, written,
            "{label}: commit {id} wrote its keys, in key order"
        );
        for op in &rec.ops {
            let (key, value) = match op {
                Op::Put { key, value } => (key, Some(value.as_slice())),
                Op::Delete { key } => (key, None),
            };
            assert_value(
                format_args!("{label}: commit {id}: the journal's value of {}", show(key)),
                value,
                model.get(key).map(Vec::as_slice),
            );
        }
        check_reads_at(&mut model, id);
    }
    assert!(
        reads.next().is_none(),
        "{label}: every read-only command was checked"
    );
    assert_eq!(
        replayed,
        runs.iter().filter(|r| r.writes).count(),
        "{label}: every writing command committed once"
    );
    assert_snapshot_is(&label, &engine.snapshot(), &model);

    let st = engine.stats();
    assert_eq!(st.errors, 0, "{label}: {st:?}");
    assert_eq!(
        st.conflicts,
        st.retries + st.escalations,
        "{label}: every conflict caused one retry or one escalation"
    );
    eprintln!(
        "{label}: {} commands, {} commits, {} conflicts, {} page changes resolved, {} escalations, {} restructures",
        runs.len(),
        st.commits,
        st.conflicts,
        st.page_changes_resolved,
        st.escalations,
        st.restructures
    );
}

#[test]
fn random_histories_are_serializable_two_threads() {
    serializable_history(1, 2, 200);
    serializable_history(2, 2, 200);
}

#[test]
fn random_histories_are_serializable_three_threads() {
    serializable_history(3, 3, 150);
    serializable_history(4, 3, 150);
}

#[test]
fn random_histories_are_serializable_four_threads() {
    serializable_history(5, 4, 100);
    serializable_history(6, 4, 100);
}
