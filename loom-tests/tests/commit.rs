//! Loom models of the commit protocol, driven through the public API so that the
//! real lock, validation, commit-id and gate code runs under loom's scheduler.
#![cfg(loom)]

mod common;

use common::add_one;
use loom::thread;
use shardstone::{Engine, Options, Tx};
use std::sync::Arc;

fn counter(engine: &Engine) -> u64 {
    engine
        .snapshot()
        .get(b"n")
        .unwrap()
        .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()))
}

fn increment(engine: &Engine) {
    engine.run("incr", add_one).unwrap();
}

/// The u64 counter at `key` in the newest snapshot (missing = 0).
fn value_of(engine: &Engine, key: &[u8]) -> u64 {
    engine
        .snapshot()
        .get(key)
        .unwrap()
        .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()))
}

/// The u64 counter at `key` as `tx` reads it (missing = 0).
fn read(tx: &mut Tx<'_>, key: &[u8]) -> shardstone::Result<u64> {
    Ok(tx
        .get(key)?
        .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap())))
}

/// An engine seeded, by one command before any thread starts, with `keys` each
/// holding `value`: all on the root leaf, so the models' commands share a page
/// (each model checks `stats().store.pages == 1` at its end, when it reads the
/// stats anyway: every atomic a model touches lengthens each of its paths).
fn seeded(opts: Options, keys: &[&[u8]], value: u64) -> Arc<Engine> {
    let engine = Arc::new(Engine::in_memory_with(opts).unwrap());
    engine
        .run("seed", |tx| {
            for key in keys {
                tx.put(key, &value.to_le_bytes())?;
            }
            Ok(())
        })
        .unwrap();
    engine
}

/// Two commits race on the same page: both increments survive (one of them
/// conflicts and re-runs, or escalates), commit ids have no gap.
#[test]
fn racing_commits_on_one_page() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opts = Options {
            max_conflicts: 1,
            ..Options::default()
        };
        let engine = Arc::new(Engine::in_memory_with(opts).unwrap());
        let other = engine.clone();
        let t = thread::spawn(move || increment(&other));
        increment(&engine);
        t.join().unwrap();
        assert_eq!(counter(&engine), 2);
        assert_eq!(engine.commit_id().get(), 2);
        let stats = engine.stats();
        assert_eq!(stats.commits, 2);
        assert_eq!(stats.conflicts, stats.retries + stats.escalations);
    });
    eprintln!(
        "racing_commits_on_one_page: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two commands on different keys of one leaf: one reads its key and writes it
/// back, the other blind-writes its own. Whatever the order, the page changes
/// under one of them and the key check lets it commit: both writes survive,
/// commit ids have no gap, and nothing counts as a conflict.
#[test]
fn different_keys_on_one_leaf_do_not_conflict() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = seeded(Options::default(), &[b"a", b"b"], 1);
        let other = engine.clone();
        let t = thread::spawn(move || {
            other
                .run("blind", |tx| tx.put(b"b", &7u64.to_le_bytes()))
                .unwrap();
        });
        engine
            .run("rmw", |tx| {
                let a = read(tx, b"a")?;
                tx.put(b"a", &(a + 1).to_le_bytes())
            })
            .unwrap();
        t.join().unwrap();
        assert_eq!(value_of(&engine, b"a"), 2, "the read-modify-write was lost");
        assert_eq!(value_of(&engine, b"b"), 7, "the blind write was lost");
        assert_eq!(engine.commit_id().get(), 3);
        let stats = engine.stats();
        assert_eq!(stats.commits, 3);
        assert_eq!(stats.conflicts, 0, "different keys of one leaf conflicted");
        assert_eq!(stats.retries, 0);
        assert_eq!(stats.escalations, 0);
        assert_eq!(stats.store.pages, 1, "both keys stayed on one leaf");
    });
    eprintln!(
        "different_keys_on_one_leaf_do_not_conflict: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two read-modify-write increments of `n` on a leaf that also holds other keys:
/// the leaf has changed under the later commit for reasons that may or may not
/// touch `n`, so only the key check can tell that `n` changed. Both increments
/// survive (the later one conflicts once and re-runs) and the neighbours are
/// untouched.
#[test]
fn increments_on_a_shared_leaf_lose_nothing() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = seeded(Options::default(), &[b"a", b"n", b"z"], 0);
        let other = engine.clone();
        let t = thread::spawn(move || increment(&other));
        increment(&engine);
        t.join().unwrap();
        assert_eq!(counter(&engine), 2, "an increment was lost");
        assert_eq!(value_of(&engine, b"a"), 0);
        assert_eq!(value_of(&engine, b"z"), 0);
        assert_eq!(engine.commit_id().get(), 3);
        let stats = engine.stats();
        assert_eq!(stats.commits, 3);
        assert!(
            stats.conflicts <= 1,
            "{} conflicts for one overlap",
            stats.conflicts
        );
        assert_eq!(stats.retries, stats.conflicts);
        assert_eq!(stats.escalations, 0);
        assert_eq!(stats.store.pages, 1, "the keys shared one leaf");
    });
    eprintln!(
        "increments_on_a_shared_leaf_lose_nothing: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Write skew on one leaf: each command reads both `x` and `y` and, if both are
/// on call (1), takes itself off (writes 0 to its own key). The writes are to
/// different keys, so only the key check of what was read keeps the invariant
/// `x + y >= 1` that every serial order keeps.
#[test]
fn write_skew_on_one_leaf_is_a_conflict() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn go_off_call(engine: &Engine, me: &'static [u8]) {
        engine
            .run("off-call", |tx| {
                let on_call = read(tx, b"x")? + read(tx, b"y")?;
                if on_call == 2 {
                    tx.put(me, &0u64.to_le_bytes())?;
                }
                Ok(())
            })
            .unwrap();
    }
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = seeded(Options::default(), &[b"x", b"y"], 1);
        let other = engine.clone();
        let t = thread::spawn(move || go_off_call(&other, b"y"));
        go_off_call(&engine, b"x");
        t.join().unwrap();
        let on_call = value_of(&engine, b"x") + value_of(&engine, b"y");
        assert_eq!(on_call, 1, "write skew: both went off call");
        assert_eq!(engine.commit_id().get(), 2);
        let stats = engine.stats();
        assert_eq!(stats.retries, stats.conflicts);
        assert_eq!(stats.escalations, 0);
        assert_eq!(stats.store.pages, 1, "the keys shared one leaf");
    });
    eprintln!(
        "write_skew_on_one_leaf_is_a_conflict: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two `add`s to one counter: merged at commit against the newest value, they
/// never conflict, and the counter ends exact.
#[test]
fn adds_to_one_counter_merge_without_conflict() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn add(engine: &Engine) {
        engine.run("add", |tx| tx.add(b"n", 1)).unwrap();
    }
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = seeded(Options::default(), &[b"a", b"n"], 0);
        let other = engine.clone();
        let t = thread::spawn(move || add(&other));
        add(&engine);
        t.join().unwrap();
        assert_eq!(counter(&engine), 2, "an add was lost");
        assert_eq!(engine.commit_id().get(), 3);
        let stats = engine.stats();
        assert_eq!(stats.commits, 3);
        assert_eq!(stats.conflicts, 0, "adds to one counter conflicted");
        assert_eq!(stats.escalations, 0);
        assert_eq!(stats.store.pages, 1, "the keys shared one leaf");
    });
    eprintln!(
        "adds_to_one_counter_merge_without_conflict: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A snapshot taken while a commit installs versions on two leaves sees both
/// writes or neither.
#[test]
fn snapshot_sees_whole_commit_or_nothing() {
    loom::model(|| {
        let engine = Arc::new(Engine::in_memory().unwrap());
        // Enough keys to split the root leaf, so the first and last key live on different pages.
        engine
            .run("seed", |tx| {
                for i in 0..64u8 {
                    tx.put(&[b'k', i], &[0u8; 100])?;
                }
                Ok(())
            })
            .unwrap();
        assert!(engine.stats().store.pages >= 3, "the seed split the root");
        let writer = engine.clone();
        let t = thread::spawn(move || {
            writer
                .run("both", |tx| {
                    tx.put(&[b'k', 0], &[1u8; 100])?;
                    tx.put(&[b'k', 63], &[1u8; 100])
                })
                .unwrap();
        });
        let snap = engine.snapshot();
        let first = snap.get(&[b'k', 0]).unwrap().unwrap()[0];
        let last = snap.get(&[b'k', 63]).unwrap().unwrap()[0];
        assert_eq!(first, last, "a snapshot saw half a commit");
        t.join().unwrap();
    });
}

/// A snapshot pinned concurrently with commits that replace its page and reclaim
/// garbage keeps reading the version it pinned: reclamation never frees (and the
/// arena never hands out again) a version a snapshot can still reach.
#[test]
fn reclamation_spares_pinned_versions() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = Arc::new(Engine::in_memory().unwrap());
        engine.run("seed", |tx| tx.put(b"k", &[1u8; 64])).unwrap();
        let writer = engine.clone();
        let t = thread::spawn(move || {
            for round in 2..4u8 {
                writer
                    .run("overwrite", |tx| tx.put(b"k", &[round; 64]))
                    .unwrap();
                writer.collect_garbage();
            }
        });
        let snap = engine.snapshot();
        let seen = snap.get(b"k").unwrap().unwrap();
        let expected = if snap.commit_id().get() == 1 {
            1
        } else {
            seen[0]
        };
        assert!(
            seen.iter().all(|&b| b == expected),
            "a pinned snapshot read a reused page"
        );
        t.join().unwrap();
        drop(snap);
        engine.collect_garbage();
        assert_eq!(engine.stats().store.pinned_versions, 0);
    });
    eprintln!(
        "reclamation model: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// An old snapshot walks a version chain while interval reclamation unlinks the
/// version between it and the newest, and a commit reuses whatever was freed: the
/// walk never reaches a freed version (unlinked versions wait for the reading
/// sections that were open).
#[test]
fn interval_reclamation_waits_for_readers() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let engine = Arc::new(Engine::in_memory().unwrap());
        engine.run("seed", |tx| tx.put(b"k", &[1u8; 64])).unwrap();
        let old = engine.snapshot();
        for round in 2..4u8 {
            engine
                .run("overwrite", |tx| tx.put(b"k", &[round; 64]))
                .unwrap();
        }
        let writer = engine.clone();
        let t = thread::spawn(move || {
            // Unlinks version 2: no snapshot lies in [2, 3).
            writer.collect_garbage();
            // Takes the most recently freed page buffer, if there is one.
            writer
                .run("overwrite", |tx| tx.put(b"k", &[4u8; 64]))
                .unwrap();
        });
        let seen = old.get(b"k").unwrap().unwrap();
        assert!(
            seen.iter().all(|&b| b == 1),
            "an old snapshot read a reused page"
        );
        t.join().unwrap();
        drop(old);
        engine.collect_garbage();
        let stats = engine.stats();
        assert_eq!(stats.store.pinned_versions, 0);
        assert_eq!(stats.store.versions_unlinked, 1);
    });
    eprintln!(
        "interval reclamation model: {} interleavings",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}
