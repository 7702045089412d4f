//! Loom models of the commit protocol, driven through the public API so that the
//! real lock, validation, commit-id and gate code runs under loom's scheduler.
#![cfg(loom)]

mod common;

use common::add_one;
use loom::thread;
use shardstone::{Engine, Options};
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
