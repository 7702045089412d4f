//! Interval garbage collection: versions no live snapshot can see are freed even
//! while older snapshots are held, what each snapshot sees is kept exactly, and
//! long-held snapshots are reported.

mod common;

use common::*;
use shardstone::{Engine, Options, Snapshot};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn value(n: u64, len: usize) -> Vec<u8> {
    let mut v = enc(n).to_vec();
    v.resize(len, b'.');
    v
}

/// The case: one leaked snapshot, then 50,000 updates of one 100-byte
/// value. Before interval collection every update's page version stayed
/// (50,000 pages, about 195 MiB); now only the version the snapshot sees and the
/// few not yet collected do.
#[test]
fn a_leaked_snapshot_does_not_keep_every_later_version() {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("seed", |tx| tx.put(b"key", &value(0, 100)))
        .unwrap();
    let held = engine.snapshot();
    std::mem::forget(engine.snapshot());
    for i in 1..=50_000u64 {
        engine
            .run("update", |tx| tx.put(b"key", &value(i, 100)))
            .unwrap();
    }
    engine.collect_garbage();
    let stats = engine.stats();
    assert!(
        stats.store.page_buffers < 10_000,
        "{} page buffers after 50,000 updates behind a leaked snapshot",
        stats.store.page_buffers
    );
    assert!(stats.store.versions_unlinked >= 49_000, "{:?}", stats.store);
    assert_eq!(stats.store.oldest_snapshot, Some(held.commit_id().get()));
    assert!(stats.store.oldest_snapshot_age.is_some());
    assert!(
        stats.store.snapshot_pinned_bytes <= 4 * 4096,
        "only the snapshot's own version is pinned: {:?}",
        stats.store
    );
    assert_eq!(
        held.get(b"key").unwrap().as_deref(),
        Some(&value(0, 100)[..])
    );
    assert_eq!(
        engine.snapshot().get(b"key").unwrap().as_deref(),
        Some(&value(50_000, 100)[..])
    );
}

/// Snapshots taken at many points of a long history of updates (over several
/// leaves, with inserts and deletes that split and merge them) each keep reading
/// exactly their own state, while everything between them is freed.
#[test]
fn snapshots_at_many_points_keep_exactly_what_they_see() {
    let engine = Engine::in_memory().unwrap();
    let mut rng = Rng::new(12);
    let mut model = Model::new();
    let mut held: Vec<(Snapshot, Model)> = Vec::new();
    let keys = 400u64;
    for round in 0..60u64 {
        for _ in 0..50 {
            let k = format!("k{:04}", rng.below(keys)).into_bytes();
            let delete = rng.chance(1, 5);
            let v = value(round * 1000 + rng.below(1000), 90);
            engine
                .run("write", |tx| {
                    if delete {
                        tx.delete(&k)?;
                    } else {
                        tx.put(&k, &v)?;
                    }
                    Ok(())
                })
                .unwrap();
            if delete {
                model.remove(&k);
            } else {
                model.insert(k, v);
            }
        }
        if round.is_multiple_of(6) {
            held.push((engine.snapshot(), model.clone()));
        }
        if round % 9 == 4 && held.len() > 3 {
            // Release one in the middle: what only it saw becomes garbage too.
            held.remove(held.len() / 2);
        }
        if round.is_multiple_of(5) {
            engine.collect_garbage();
        }
        for (i, (snap, want)) in held.iter().enumerate() {
            if (round as usize + i).is_multiple_of(7) {
                assert_snapshot_is(&format!("snapshot {i} at round {round}"), snap, want);
            }
        }
    }
    engine.collect_garbage();
    for (i, (snap, want)) in held.iter().enumerate() {
        assert_snapshot_is(&format!("snapshot {i} at the end"), snap, want);
        for (k, v) in want.iter().step_by(17) {
            assert_value(show(k), snap.get(k).unwrap().as_deref(), Some(v));
        }
    }
    let stats = engine.stats();
    assert!(stats.store.versions_unlinked > 0, "{:?}", stats.store);
    // 3,000 commits each left a version behind; the held snapshots see at most
    // their trees (a few dozen pages each).
    assert!(
        stats.store.page_buffers < 1_500,
        "{} page buffers with {} snapshots held",
        stats.store.page_buffers,
        held.len()
    );
    drop(held);
    engine.collect_garbage();
    assert_eq!(engine.stats().store.pinned_versions, 0);
}

/// Writers, readers that open, read, hold and drop snapshots, and a thread that
/// collects garbage, all at once (bounded, seeded). Every commit writes one round
/// number to every key of its group, so a snapshot must see one round per group,
/// and a held snapshot must keep seeing the rounds it saw first.
#[test]
fn concurrent_readers_writers_and_snapshots() {
    const GROUPS: u64 = 4;
    const KEYS: u64 = 24;
    let engine = Engine::in_memory().unwrap();
    let key = |g: u64, i: u64| format!("g{g}:{i:03}").into_bytes();
    engine
        .run("seed", |tx| {
            for g in 0..GROUPS {
                for i in 0..KEYS {
                    tx.put(&key(g, i), &value(0, 120))?;
                }
            }
            Ok(())
        })
        .unwrap();
    // The rounds a snapshot sees, one per group, checked key by key.
    let rounds = |snap: &Snapshot| -> Vec<u64> {
        (0..GROUPS)
            .map(|g| {
                let first = dec(&snap.get(&key(g, 0)).unwrap().expect("seeded"));
                let scanned: Vec<u64> = snap
                    .range(key(g, 0).as_slice()..key(g, KEYS).as_slice())
                    .map(|r| dec(&r.unwrap().1))
                    .collect();
                assert_eq!(scanned.len() as u64, KEYS);
                assert!(
                    scanned.iter().all(|&r| r == first),
                    "group {g} seen half-written: {scanned:?}"
                );
                first
            })
            .collect()
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let engine = &engine;
                s.spawn(move || {
                    let mut rng = Rng::new(100 + w);
                    for n in 1..=1_500u64 {
                        let g = rng.below(GROUPS);
                        let round = n * 2 + w;
                        engine
                            .run("round", |tx| {
                                for i in 0..KEYS {
                                    tx.put(&key(g, i), &value(round, 120))?;
                                }
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (engine, stop) = (&engine, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(200 + r);
                    let oldest = engine.snapshot();
                    let oldest_rounds = rounds(&oldest);
                    let mut held: Vec<(Snapshot, Vec<u64>)> = Vec::new();
                    let mut checks = 0u64;
                    while !stop.load(Ordering::Relaxed) || checks < 50 {
                        let snap = engine.snapshot();
                        let seen = rounds(&snap);
                        if rng.chance(1, 4) && held.len() < 6 {
                            held.push((snap, seen));
                        }
                        if !held.is_empty() && rng.chance(1, 3) {
                            let i = rng.index(held.len());
                            let (snap, seen) = &held[i];
                            assert_eq!(&rounds(snap), seen, "a held snapshot changed");
                            if rng.chance(1, 2) {
                                held.swap_remove(i);
                            }
                        }
                        checks += 1;
                    }
                    assert_eq!(
                        rounds(&oldest),
                        oldest_rounds,
                        "the oldest snapshot changed"
                    );
                    checks
                })
            })
            .collect();
        let collector = {
            let (engine, stop) = (&engine, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    engine.collect_garbage();
                    std::thread::yield_now();
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() >= 50);
        }
        collector.join().unwrap();
    });
    engine.collect_garbage();
    let stats = engine.stats();
    assert_eq!(stats.store.pinned_snapshots, 0);
    assert_eq!(stats.store.pinned_versions, 0, "{:?}", stats.store);
    assert!(stats.store.versions_unlinked > 0, "{:?}", stats.store);
}

/// A snapshot held past `snapshot_warn_age` is reported once, however often it is
/// noticed; a young one, or any with the warning off, is not.
#[test]
fn an_old_snapshot_is_reported_once() {
    let engine = Engine::in_memory_with(Options {
        // Wide margins: a loaded machine may stall the test between steps.
        snapshot_warn_age: Some(Duration::from_millis(250)),
        ..Options::default()
    })
    .unwrap();
    engine.run("seed", |tx| tx.put(b"k", b"v")).unwrap();
    let old = engine.snapshot();
    std::thread::sleep(Duration::from_millis(350));
    let young = engine.snapshot();
    let stats = engine.stats();
    assert_eq!(stats.store.old_snapshot_warnings, 1);
    assert_eq!(stats.store.oldest_snapshot, Some(old.commit_id().get()));
    let age = stats.store.oldest_snapshot_age.expect("a snapshot is held");
    assert!(age >= Duration::from_millis(350), "{age:?}");
    assert_eq!(
        engine.stats().store.old_snapshot_warnings,
        1,
        "reported once"
    );
    engine.collect_garbage();
    assert_eq!(
        engine.stats().store.old_snapshot_warnings,
        1,
        "reported once"
    );
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        engine.stats().store.old_snapshot_warnings,
        2,
        "the second one too"
    );
    drop((old, young));
    let stats = engine.stats();
    assert_eq!(stats.store.oldest_snapshot, None);
    assert_eq!(stats.store.oldest_snapshot_age, None);

    let quiet = Engine::in_memory_with(Options {
        snapshot_warn_age: None,
        ..Options::default()
    })
    .unwrap();
    let _held = quiet.snapshot();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(quiet.stats().store.old_snapshot_warnings, 0);
}
