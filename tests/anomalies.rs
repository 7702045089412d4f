//! Anomalies that serializable commands must exclude: write skew, phantoms, lost
//! updates. First under real concurrency (many rounds, threads released together
//! by a barrier), then deterministically: two threads coordinated with channels
//! inside the closures, so that one command provably commits between another's
//! reads and its commit, which must then conflict and re-run.

mod common;

use common::*;
use shardstone::{Engine, Stats};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

/// A barrier wait followed by a spinning rendezvous: the futex wake-up of a plain
/// barrier takes longer than a short command, so without the spin the two threads
/// rarely overlap. `arrived` counts arrivals over all rounds; `parties` threads
/// call this once per round.
fn start_together(barrier: &Barrier, arrived: &AtomicU64, parties: u64, round: u64) {
    barrier.wait();
    arrived.fetch_add(1, Ordering::SeqCst);
    let mut spins = 0u32;
    while arrived.load(Ordering::SeqCst) < parties * (round + 1) {
        spins += 1;
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Adds filler keys around the keys under test so that they sit on different leaves.
fn fill(engine: &Engine, prefix: &str, n: u32, value_len: usize) {
    let keys: Vec<u32> = (0..n).collect();
    for chunk in keys.chunks(500) {
        engine
            .run("fill", |tx| {
                for i in chunk {
                    tx.put(format!("{prefix}{i:05}").as_bytes(), &vec![b'.'; value_len])?;
                }
                Ok(())
            })
            .unwrap();
    }
}

fn get_u64(engine: &Engine, key: &[u8]) -> Option<u64> {
    engine.snapshot().get(key).unwrap().map(|v| dec(&v))
}

// ---------------------------------------------------------------------------
// Write skew: doctors on call.

/// Two doctors, x and y, both on call (1). Each command reads both and goes off
/// call (0) only if the other is still on call. Serializably, at least one stays.
fn doctors_on_call(x: &[u8], y: &[u8], engine: &Engine, rounds: u32) {
    engine
        .run("reset", |tx| {
            tx.put(x, &enc(1))?;
            tx.put(y, &enc(1))
        })
        .unwrap();
    let barrier = Barrier::new(2);
    let arrived = AtomicU64::new(0);
    let mut outcomes = [0u32; 4];
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            for round in 0..rounds {
                start_together(&barrier, &arrived, 2, round.into());
                go_off_call(engine, "doctor y", y, x);
                barrier.wait();
                barrier.wait();
            }
        });
        for round in 0..rounds {
            start_together(&barrier, &arrived, 2, round.into());
            go_off_call(engine, "doctor x", x, y);
            barrier.wait();
            // Both commands have returned: check, then reset for the next round.
            let snap = engine.snapshot();
            let (vx, vy) = (
                dec(&snap.get(x).unwrap().unwrap()),
                dec(&snap.get(y).unwrap().unwrap()),
            );
            assert!(
                vx + vy >= 1,
                "round {round}: write skew, both doctors went off call (x={vx}, y={vy})"
            );
            outcomes[(vx * 2 + vy) as usize] += 1;
            engine
                .run("reset", |tx| {
                    tx.put(x, &enc(1))?;
                    tx.put(y, &enc(1))
                })
                .unwrap();
            barrier.wait();
        }
        other.join().unwrap();
    });
    assert_eq!(outcomes[0], 0);
    assert_eq!(
        outcomes[3], 0,
        "exactly one doctor goes off call in every round: {outcomes:?}"
    );
}

fn go_off_call(engine: &Engine, name: &str, me: &[u8], other: &[u8]) -> bool {
    engine
        .run(name, |tx| {
            let mine = dec(&tx.get(me)?.unwrap());
            let theirs = dec(&tx.get(other)?.unwrap());
            // Widen the window between the reads and the commit, so the two
            // commands overlap often (re-reading changes nothing).
            for _ in 0..50 {
                assert_eq!(dec(&tx.get(other)?.unwrap()), theirs, "repeatable read");
            }
            if mine + theirs >= 2 {
                tx.put(me, &enc(0))?;
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .unwrap()
}

#[test]
fn no_write_skew_on_one_page() {
    let engine = Engine::in_memory().unwrap();
    doctors_on_call(b"doctor:x", b"doctor:y", &engine, 2_000);
    let st = engine.stats();
    assert_eq!(st.errors, 0);
    eprintln!(
        "one page: {} conflicts, {} escalations",
        st.conflicts, st.escalations
    );
}

#[test]
fn no_write_skew_across_pages() {
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "m:", 3_000, 60);
    assert!(engine.stats().store.pages > 20);
    doctors_on_call(b"a:doctor:x", b"z:doctor:y", &engine, 2_000);
    eprintln!("across pages: {} conflicts", engine.stats().conflicts);
}

// ---------------------------------------------------------------------------
// Phantoms: scan, count, insert if below a limit.

const LIMIT: usize = 8;
const PHANTOM_THREADS: usize = 4;
const PHANTOM_ROUNDS: u32 = 60;

/// Each command counts the keys under a prefix and adds one only if there are fewer
/// than LIMIT. Values are large enough (about a quarter page) that the range spans
/// several leaves and inserts split them. Four threads race to fill each prefix;
/// it must end with exactly LIMIT keys, never more.
#[test]
fn no_phantoms_scan_then_insert() {
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "a:", 500, 100);
    fill(&engine, "z:", 500, 100);
    let barrier = Barrier::new(PHANTOM_THREADS);
    let arrived = AtomicU64::new(0);
    let inserted: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PHANTOM_THREADS)
            .map(|t| {
                let (engine, barrier, arrived) = (&engine, &barrier, &arrived);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut rng = Rng::new(t as u64);
                    for round in 0..PHANTOM_ROUNDS {
                        let lo = format!("p{round:03}:");
                        let hi = format!("p{round:03};");
                        let reverse = (round as usize + t) % 2 == 1;
                        start_together(barrier, arrived, PHANTOM_THREADS as u64, round.into());
                        let mut n = 0;
                        loop {
                            let k = format!("p{round:03}:{:08}:{t}", rng.below(100_000_000));
                            let added = engine
                                .run("reserve", |tx| {
                                    let range = tx.range(lo.as_bytes()..hi.as_bytes());
                                    let count = if reverse {
                                        range.rev().count()
                                    } else {
                                        range.count()
                                    };
                                    if count >= LIMIT {
                                        return Ok(false);
                                    }
                                    tx.put(k.as_bytes(), &[t as u8; 900])?;
                                    Ok(true)
                                })
                                .unwrap();
                            if !added {
                                break;
                            }
                            n += 1;
                        }
                        mine.push(n);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let snap = engine.snapshot();
    for round in 0..PHANTOM_ROUNDS {
        let lo = format!("p{round:03}:");
        let hi = format!("p{round:03};");
        let count = snap.range(lo.as_bytes()..hi.as_bytes()).count();
        let claimed: usize = inserted.iter().map(|t| t[round as usize]).sum();
        assert_eq!(
            count, LIMIT,
            "round {round}: the prefix holds exactly LIMIT keys (threads claimed {claimed})"
        );
        assert_eq!(
            claimed, LIMIT,
            "round {round}: exactly LIMIT inserts reported committing"
        );
    }
    let st = engine.stats();
    assert_eq!(st.errors, 0);
    eprintln!(
        "phantoms: {} conflicts, {} escalations",
        st.conflicts, st.escalations
    );
}

// ---------------------------------------------------------------------------
// Lost updates.

/// Four threads append their own ids to one list value (read, extend, write back).
/// The list grows past a page, into an overflow chain. Every append is there once.
#[test]
fn no_lost_updates_appending_to_one_value() {
    const THREADS: u64 = 4;
    const APPENDS: u64 = 600;
    let engine = Engine::in_memory().unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..APPENDS {
                    engine
                        .run("append", |tx| {
                            let mut list =
                                tx.get(b"list")?.map(|v| v.into_vec()).unwrap_or_default();
                            list.extend_from_slice(&enc(t * 1_000_000 + i));
                            tx.put(b"list", &list)
                        })
                        .unwrap();
                }
            });
        }
    });
    let list = engine.snapshot().get(b"list").unwrap().unwrap();
    assert_eq!(
        list.len() as u64,
        THREADS * APPENDS * 8,
        "every append is in the list"
    );
    let ids: Vec<u64> = list.chunks(8).map(dec).collect();
    for t in 0..THREADS {
        let mine: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| id / 1_000_000 == t)
            .map(|id| id % 1_000_000)
            .collect();
        assert!(
            mine.iter().copied().eq(0..APPENDS),
            "thread {t}'s appends, once each, in its order"
        );
    }
    assert_eq!(engine.stats().commits, THREADS * APPENDS);
}

/// Read-modify-write of one counter from four threads, plus a second key written
/// blindly by the same commands: both end consistent.
#[test]
fn no_lost_updates_read_modify_write() {
    const THREADS: u64 = 4;
    const INCREMENTS: u64 = 2_500;
    let engine = Engine::in_memory().unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                for _ in 0..INCREMENTS {
                    engine
                        .run("incr", |tx| {
                            let n = tx.get(b"n")?.map_or(0, |v| dec(&v)) + 1;
                            tx.put(b"n", &enc(n))?;
                            tx.put(b"shadow", &enc(n))
                        })
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(get_u64(&engine, b"n"), Some(THREADS * INCREMENTS));
    assert_eq!(get_u64(&engine, b"shadow"), Some(THREADS * INCREMENTS));
}

// ---------------------------------------------------------------------------
// Deterministic conflicts: B commits while A is between its reads and its commit.

fn losers_on(st: &Stats, name: &str) -> Vec<shardstone::HotPage> {
    st.hot_pages
        .iter()
        .filter(|p| p.losers.iter().any(|(n, c)| n == name && *c > 0))
        .cloned()
        .collect()
}

#[test]
fn read_then_write_conflicts_with_a_write_committed_in_between() {
    let engine = Engine::in_memory().unwrap();
    engine.run("seed", |tx| tx.put(b"k", &enc(100))).unwrap();
    let (a, attempts, ()) = interleave(
        &engine,
        "add one",
        |tx, pause| {
            let v = dec(&tx.get(b"k")?.unwrap());
            pause();
            tx.put(b"k", &enc(v + 1))?;
            Ok(v + 1)
        },
        "add ten",
        |tx| {
            let v = dec(&tx.get(b"k")?.unwrap());
            tx.put(b"k", &enc(v + 10))
        },
    );
    assert_eq!(
        attempts, 2,
        "A's first attempt read a value B then changed: it conflicted and re-ran"
    );
    assert_eq!(a, 111, "A's second attempt saw B's write");
    assert_eq!(
        get_u64(&engine, b"k"),
        Some(111),
        "both increments are in the final value"
    );
    let st = engine.stats();
    assert_eq!(
        (st.conflicts, st.retries, st.escalations),
        (1, 1, 0),
        "{st:?}"
    );
    assert_eq!(st.commits, 3);
    let a_stats = st.commands.iter().find(|c| c.name == "add one").unwrap();
    assert_eq!(
        (a_stats.runs, a_stats.commits, a_stats.conflicts),
        (1, 1, 1),
        "{a_stats:?}"
    );
    let b_stats = st.commands.iter().find(|c| c.name == "add ten").unwrap();
    assert_eq!(
        (b_stats.runs, b_stats.commits, b_stats.conflicts),
        (1, 1, 0),
        "{b_stats:?}"
    );
    assert_eq!(
        losers_on(&st, "add one").len(),
        1,
        "the conflict is on one page: {:?}",
        st.hot_pages
    );
    assert!(losers_on(&st, "add ten").is_empty());
}

/// The key is the unit of conflict (DESIGN.md: page-level detection, key-level
/// truth): a write to another key of the same leaf is resolved at key level and
/// A commits at once; a write to the key A read makes A re-run; a write on a
/// different leaf never even reaches the key check.
#[test]
fn conflicts_are_per_key() {
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "m:", 3_000, 60);
    engine
        .run("seed", |tx| {
            tx.put(b"a:1", &enc(1))?;
            tx.put(b"a:2", &enc(2))?;
            tx.put(b"z:1", &enc(3))
        })
        .unwrap();
    let read_then_write = |tx: &mut shardstone::Tx<'_>, pause: &mut dyn FnMut()| {
        let v = dec(&tx.get(b"a:1")?.unwrap());
        pause();
        tx.put(b"a:1", &enc(v + 1))
    };
    let (_, attempts, ()) = interleave(
        &engine,
        "same page A",
        read_then_write,
        "same page B",
        |tx| tx.put(b"a:2", &enc(20)),
    );
    assert_eq!(
        attempts, 1,
        "a write to a neighbouring key on the same leaf is not a conflict"
    );
    let st = engine.stats();
    let a = st
        .commands
        .iter()
        .find(|c| c.name == "same page A")
        .unwrap();
    assert_eq!(
        (a.conflicts, a.page_changes_resolved),
        (0, 1),
        "A found its leaf changed and the key check let it through: {a:?}"
    );
    let (_, attempts, ()) =
        interleave(&engine, "same key A", read_then_write, "same key B", |tx| {
            tx.put(b"a:1", &enc(10))
        });
    assert_eq!(attempts, 2, "a write to the key A read is a conflict");
    let (_, attempts, ()) = interleave(
        &engine,
        "other page A",
        read_then_write,
        "other page B",
        |tx| tx.put(b"z:1", &enc(30)),
    );
    assert_eq!(
        attempts, 1,
        "a write on a leaf A never touched is no conflict"
    );
    let st = engine.stats();
    let a = st
        .commands
        .iter()
        .find(|c| c.name == "other page A")
        .unwrap();
    assert_eq!((a.conflicts, a.page_changes_resolved), (0, 0), "{a:?}");
    assert_eq!(
        st.conflicts, 1,
        "only the same-key write conflicted: {st:?}"
    );
    let snap = engine.snapshot();
    let vals: Vec<Option<u64>> = [&b"a:1"[..], b"a:2", b"z:1"]
        .iter()
        .map(|k| snap.get(k).unwrap().map(|v| dec(&v)))
        .collect();
    // a:1: 1, +1 (same page), then B's 10, +1 (A's re-run), then +1 (other page).
    assert_eq!(vals, vec![Some(12), Some(20), Some(30)]);
}

/// Write skew made deterministic, with x and y on different leaves: A reads both,
/// B (reading both) takes y off call and commits, then A writes x. A read y's leaf,
/// which changed: A re-runs, sees y off call, and stays on call.
#[test]
fn write_skew_is_caught_deterministically() {
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "m:", 3_000, 60);
    engine
        .run("reset", |tx| {
            tx.put(b"a:doctor:x", &enc(1))?;
            tx.put(b"z:doctor:y", &enc(1))
        })
        .unwrap();
    let (a_went, attempts, b_went) = interleave(
        &engine,
        "doctor x",
        |tx, pause| {
            let x = dec(&tx.get(b"a:doctor:x")?.unwrap());
            let y = dec(&tx.get(b"z:doctor:y")?.unwrap());
            pause();
            if x + y >= 2 {
                tx.put(b"a:doctor:x", &enc(0))?;
                return Ok(true);
            }
            Ok(false)
        },
        "doctor y",
        |tx| {
            let x = dec(&tx.get(b"a:doctor:x")?.unwrap());
            let y = dec(&tx.get(b"z:doctor:y")?.unwrap());
            if x + y >= 2 {
                tx.put(b"z:doctor:y", &enc(0))?;
                return Ok(true);
            }
            Ok(false)
        },
    );
    assert!(b_went, "B ran first and went off call");
    assert_eq!(attempts, 2, "A's read of y was invalidated: it re-ran");
    assert!(!a_went, "A saw y off call on its re-run and stayed");
    assert_eq!(
        (
            get_u64(&engine, b"a:doctor:x"),
            get_u64(&engine, b"z:doctor:y")
        ),
        (Some(1), Some(0))
    );
    let st = engine.stats();
    assert_eq!(st.conflicts, 1);
    let hot = losers_on(&st, "doctor x");
    assert_eq!(hot.len(), 1, "{:?}", st.hot_pages);
    assert!(
        hot[0].first_key.as_slice() <= &b"z:doctor:y"[..]
            && &b"z:doctor:y"[..] <= hot[0].last_key.as_slice(),
        "the hot page is y's leaf: {} ..= {}",
        show(&hot[0].first_key),
        show(&hot[0].last_key)
    );
}

/// A phantom made deterministic: A scans a range and records how many keys it saw,
/// in a key far from the range; B inserts a key into the range and commits; A's
/// commit must conflict (it read the gap B filled), and `stats().hot_pages` names
/// the page with A among the losers.
fn phantom_is_caught(lo: &[u8], hi: &[u8], insert: &[u8], reverse: bool) {
    let what = format!(
        "scan [{}, {}) {}, insert {}",
        show(lo),
        show(hi),
        if reverse { "reversed" } else { "forward" },
        show(insert)
    );
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "f:", 2_000, 50);
    fill(&engine, "t:", 2_000, 50);
    let before = engine.snapshot().range(lo..hi).count();
    let a_name = "count range";
    let (counted, attempts, ()) = interleave(
        &engine,
        a_name,
        |tx, pause| {
            let range = tx.range((Bound::Included(lo), Bound::Excluded(hi)));
            let n = if reverse {
                range.rev().count()
            } else {
                range.count()
            } as u64;
            pause();
            tx.put(b"a:summary", &enc(n))?;
            Ok(n)
        },
        "insert",
        |tx| tx.put(insert, b"phantom"),
    );
    assert_eq!(
        attempts, 2,
        "{what}: A's scan missed B's insert: it must conflict and re-run"
    );
    assert_eq!(
        counted,
        before as u64 + 1,
        "{what}: the re-run counts B's key"
    );
    assert_eq!(
        get_u64(&engine, b"a:summary"),
        Some(before as u64 + 1),
        "{what}"
    );
    let st = engine.stats();
    assert_eq!((st.conflicts, st.retries), (1, 1), "{what}: {st:?}");
    let hot = losers_on(&st, a_name);
    assert_eq!(
        hot.len(),
        1,
        "{what}: one hot page names A as the loser: {:?}",
        st.hot_pages
    );
    let page = &hot[0];
    assert_eq!(page.conflicts, 1, "{what}: {page:?}");
    assert_eq!(page.losers, vec![(a_name.to_string(), 1)], "{what}");
    assert!(
        page.first_key.as_slice() <= insert && insert <= page.last_key.as_slice(),
        "{what}: the hot page is the leaf B inserted into: {} ..= {}",
        show(&page.first_key),
        show(&page.last_key)
    );
}

#[test]
fn phantom_in_an_empty_gap_is_caught() {
    phantom_is_caught(b"q:", b"q;", b"q:new", false);
}

#[test]
fn phantom_in_an_empty_gap_is_caught_by_a_reverse_scan() {
    phantom_is_caught(b"q:", b"q;", b"q:new", true);
}

#[test]
fn phantom_inside_a_range_over_many_leaves_is_caught() {
    phantom_is_caught(b"f:00200", b"f:01800", b"f:01000x", false);
}

#[test]
fn phantom_inside_a_range_over_many_leaves_is_caught_by_a_reverse_scan() {
    phantom_is_caught(b"f:00200", b"f:01800", b"f:01000x", true);
}

/// Leaking a scan iterator must not hide the scan from validation: the leaves it
/// visited join the read set as they are read, not when the iterator drops.
#[test]
fn a_leaked_scan_iterator_still_validates() {
    let engine = Engine::in_memory().unwrap();
    fill(&engine, "f:", 2_000, 50);
    fill(&engine, "t:", 2_000, 50);
    let (counted, attempts, ()) = interleave(
        &engine,
        "count then forget",
        |tx, pause| {
            let mut range = tx.range(b"t:".as_slice()..b"t;".as_slice());
            let mut n = 0u64;
            for item in range.by_ref() {
                item?;
                n += 1;
            }
            std::mem::forget(range);
            pause();
            tx.put(b"a:summary", &enc(n))?;
            Ok(n)
        },
        "insert",
        |tx| tx.put(b"t:zzz-phantom", b"phantom"),
    );
    assert_eq!(
        attempts, 2,
        "the forgotten scan still conflicts with B's insert"
    );
    assert_eq!(counted, 2_001);
}

/// `run` returns only once its commit is visible: the next snapshot on the same
/// thread sees it, even while other threads' earlier commits are still installing.
#[test]
fn a_commit_is_visible_to_the_next_snapshot_on_its_thread() {
    let engine = Engine::in_memory().unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..3_000u32 {
                    let key = format!("ryw:{t}:{i:05}");
                    engine
                        .run("put", |tx| tx.put(key.as_bytes(), b"v"))
                        .unwrap();
                    assert!(
                        engine.snapshot().get(key.as_bytes()).unwrap().is_some(),
                        "thread {t} did not see its own commit {i}"
                    );
                }
            });
        }
    });
}
