//! Snapshots: consistent views that never block writers, see whole commits only,
//! pin the versions they can reach (and release them), and read-only commands
//! that take no commit id.

mod common;

use common::*;
use shardstone::{Engine, Snapshot};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn seed(engine: &Engine, n: u32, value_len: usize) -> Model {
    let mut model = Model::new();
    let keys: Vec<u32> = (0..n).collect();
    for chunk in keys.chunks(500) {
        engine
            .run("seed", |tx| {
                for i in chunk {
                    let k = format!("k{i:05}").into_bytes();
                    let mut v = enc(0).to_vec();
                    v.resize(value_len.max(8), b'.');
                    tx.put(&k, &v)?;
                    model.insert(k, v);
                }
                Ok(())
            })
            .unwrap();
    }
    model
}

#[test]
fn fresh_engine_commit_ids() {
    let engine = Engine::in_memory().unwrap();
    assert_eq!(engine.commit_id().get(), 0);
    let empty = engine.snapshot();
    assert_eq!(empty.commit_id().get(), 0);
    assert_eq!(engine.stats().commit_id, 0);
    for i in 1..=5u64 {
        engine.run("w", |tx| tx.put(&enc(i), b"")).unwrap();
        assert_eq!(
            engine.commit_id().get(),
            i,
            "the first commit is 1, then one more per commit"
        );
        assert_eq!(engine.snapshot().commit_id().get(), i);
        assert_eq!(engine.stats().commit_id, i);
    }
    assert_eq!(empty.range(..).count(), 0, "a snapshot at 0 sees nothing");
    assert_eq!(engine.snapshot().range(..).count(), 5);
    assert_eq!(shardstone::CommitId::from(5u64), engine.commit_id());
}

/// A snapshot is held while two threads commit thousands of commands over the keys
/// it covers (overwrites, deletes, inserts). Writers never wait for it, it keeps
/// reading exactly its own state, during the writes and after them.
#[test]
fn snapshots_never_block_writers() {
    const WRITERS: u64 = 2;
    const COMMANDS: u64 = 2_000;
    let engine = Engine::in_memory().unwrap();
    let model = seed(&engine, 2_000, 40);
    let snap = engine.snapshot();
    let at = snap.commit_id();
    let done = AtomicUsize::new(0);
    let scans_during = std::thread::scope(|s| {
        for t in 0..WRITERS {
            let (engine, done) = (&engine, &done);
            s.spawn(move || {
                let mut rng = Rng::new(t);
                for i in 0..COMMANDS {
                    engine
                        .run("churn", |tx| {
                            let k = format!("k{:05}", rng.below(2_000));
                            match rng.below(4) {
                                0 => {
                                    tx.delete(k.as_bytes())?;
                                }
                                1 => tx.put(format!("{k}-new{t}-{i}").as_bytes(), b"inserted")?,
                                _ => tx.put(k.as_bytes(), &rng.bytes_between(0, 200))?,
                            }
                            Ok(())
                        })
                        .unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Read the old snapshot from here while the writers run.
        let mut scans = 0;
        loop {
            let finished = done.load(Ordering::SeqCst) == WRITERS as usize;
            assert_snapshot_is("the held snapshot, during the writes", &snap, &model);
            scans += 1;
            if finished {
                return scans;
            }
        }
    });
    assert!(scans_during >= 1);
    assert_eq!(snap.commit_id(), at, "a snapshot's commit id never moves");
    assert_snapshot_is("the held snapshot, after the writes", &snap, &model);
    for k in model.keys().step_by(97) {
        assert_value(
            format_args!("get {}", show(k)),
            snap.get(k).unwrap().as_deref(),
            model.get(k).map(Vec::as_slice),
        );
    }
    let st = engine.stats();
    assert_eq!(
        st.commits,
        at.get() + WRITERS * COMMANDS,
        "every writer command committed"
    );
    assert_eq!(engine.commit_id().get(), st.commits);
    assert_ne!(
        scan(&engine.snapshot()),
        model_entries(&model),
        "the newest state did change"
    );
}

/// A snapshot sees every commit up to its id and nothing after it, whole: four
/// groups of ten keys scattered over many leaves, each command bumps one group's
/// generation on all ten keys. In every snapshot each group is uniform, and the
/// generations add up to exactly the number of commits the snapshot includes.
#[test]
fn snapshots_see_whole_commits_only() {
    const GROUPS: u64 = 4;
    const MEMBERS: u64 = 10;
    const BUMPS: u64 = 1_500;
    let engine = Engine::in_memory().unwrap();
    seed(&engine, 3_000, 60);
    let key = |g: u64, m: u64| format!("k{:05}:group{g}", m * 300 + 7 * g).into_bytes();
    engine
        .run("groups", |tx| {
            for g in 0..GROUPS {
                for m in 0..MEMBERS {
                    tx.put(&key(g, m), &enc(0))?;
                }
            }
            Ok(())
        })
        .unwrap();
    let base = engine.commit_id().get();
    assert!(engine.stats().store.pages > 20);
    let done = AtomicUsize::new(0);
    let check = |snap: &Snapshot| {
        let mut sum = 0;
        for g in 0..GROUPS {
            let gens: Vec<u64> = (0..MEMBERS)
                .map(|m| dec(&snap.get(&key(g, m)).unwrap().unwrap()))
                .collect();
            assert!(
                gens.iter().all(|&x| x == gens[0]),
                "snapshot at {}: group {g} is torn: {gens:?}",
                snap.commit_id()
            );
            sum += gens[0];
        }
        assert_eq!(
            sum,
            snap.commit_id().get() - base,
            "snapshot at {} includes exactly its commits",
            snap.commit_id()
        );
        // The same through a scan, both directions.
        let scanned: u64 = snap
            .range(..)
            .filter_map(|e| e.ok())
            .filter(|(k, _)| k.ends_with(b"group0"))
            .map(|(_, v)| dec(&v))
            .sum();
        assert_eq!(
            scanned,
            MEMBERS * dec(&snap.get(&key(0, 0)).unwrap().unwrap())
        );
    };
    std::thread::scope(|s| {
        for g in 0..2 {
            let (engine, done) = (&engine, &done);
            s.spawn(move || {
                let mut rng = Rng::new(g);
                for _ in 0..BUMPS {
                    let g = g * 2 + rng.below(2);
                    engine
                        .run("bump", |tx| {
                            let gen = dec(&tx.get(&key(g, 0))?.unwrap()) + 1;
                            for m in 0..MEMBERS {
                                tx.put(&key(g, m), &enc(gen))?;
                            }
                            Ok(())
                        })
                        .unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let mut last = 0;
        loop {
            let finished = done.load(Ordering::SeqCst) == 2;
            let snap = engine.snapshot();
            assert!(snap.commit_id().get() >= last, "snapshots move forward");
            last = snap.commit_id().get();
            check(&snap);
            if finished {
                break;
            }
        }
    });
    let snap = engine.snapshot();
    check(&snap);
    assert_eq!(snap.commit_id().get(), base + 2 * BUMPS);
}

/// A long-lived snapshot pins the versions it can reach: `pinned_snapshots` and
/// `oldest_pinned_snapshot` name it; `pinned_versions` stays within one version per
/// page it sees (interval reclamation frees the versions after it), except for
/// overwritten overflow chains, which wait for the snapshot and so grow while it is
/// held. Once it is dropped and garbage collected, nothing is pinned and the page
/// buffers are back to the live pages (plus the overflow pages of live values).
fn pins_and_releases(value_len: usize) {
    let what = format!("values of {value_len} bytes");
    let engine = Engine::in_memory().unwrap();
    let model = seed(&engine, 1_000, value_len);
    engine.collect_garbage();
    let base = engine.stats().store;
    assert_eq!(base.pinned_versions, 0, "{what}: {base:?}");
    assert_eq!(
        (base.pinned_snapshots, base.oldest_pinned_snapshot),
        (0, None),
        "{what}"
    );
    if value_len < 100 {
        assert_eq!(
            base.page_buffers, base.pages,
            "{what}: one buffer per live page: {base:?}"
        );
    }

    let snap = engine.snapshot();
    let id = snap.commit_id().get();
    let st = engine.stats().store;
    assert_eq!(
        (st.pinned_snapshots, st.oldest_pinned_snapshot),
        (1, Some(id)),
        "{what}"
    );

    // Overflow chains still wait for the horizon (not for interval reclamation).
    let overflow = value_len > 1_000;
    let mut rng = Rng::new(value_len as u64);
    let mut last_pinned = 0;
    let mut second = None;
    for i in 0..400u64 {
        // Overwrite with values of the same length: the tree's shape stays the same.
        engine
            .run("overwrite", |tx| {
                for _ in 0..3 {
                    let k = format!("k{:05}", rng.below(1_000));
                    let mut v = enc(i + 1).to_vec();
                    v.resize(value_len.max(8), b'#');
                    tx.put(k.as_bytes(), &v)?;
                }
                Ok(())
            })
            .unwrap();
        if i % 50 == 49 {
            let st = engine.stats().store;
            if overflow {
                assert!(
                    st.pinned_versions >= last_pinned,
                    "{what}: pinned chains only grow while the snapshot is held: {st:?}"
                );
                assert!(
                    st.pinned_versions > i,
                    "{what}: every commit left a chain the snapshot pins: {st:?}"
                );
            } else {
                let snapshots = if i > 200 { 2 } else { 1 };
                assert!(
                    st.pinned_versions > 0 && st.pinned_versions <= snapshots * base.pages,
                    "{what}: at most one version per page and snapshot is pinned: {st:?}"
                );
            }
            last_pinned = st.pinned_versions;
            assert_eq!(st.oldest_pinned_snapshot, Some(id), "{what}");
            assert!(
                st.page_buffers > base.page_buffers,
                "{what}: old versions take buffers: {st:?}"
            );
        }
        if i == 200 {
            second = Some(engine.snapshot());
        }
    }
    let second = second.unwrap();
    let st = engine.stats().store;
    assert_eq!(
        (st.pinned_snapshots, st.oldest_pinned_snapshot),
        (2, Some(id)),
        "{what}: the oldest of two snapshots"
    );
    engine.collect_garbage();
    if overflow {
        assert!(
            engine.stats().store.pinned_versions >= last_pinned,
            "{what}: collecting frees no chain a snapshot still reaches"
        );
    }
    assert_snapshot_is(&format!("{what}: the pinning snapshot"), &snap, &model);

    drop(snap);
    let st = engine.stats().store;
    assert_eq!(
        (st.pinned_snapshots, st.oldest_pinned_snapshot),
        (1, Some(second.commit_id().get())),
        "{what}"
    );
    engine.collect_garbage();
    let mid = engine.stats().store;
    assert!(
        mid.pinned_versions < last_pinned,
        "{what}: versions only the first snapshot reached are freed: {mid:?}"
    );
    assert!(
        mid.pinned_versions > 0,
        "{what}: the second snapshot still pins versions: {mid:?}"
    );

    drop(second);
    engine.collect_garbage();
    let end = engine.stats().store;
    eprintln!("{what}: base {base:?}\n  end {end:?}");
    assert_eq!(end.pinned_versions, 0, "{what}: nothing is pinned: {end:?}");
    assert_eq!(
        (end.pinned_snapshots, end.oldest_pinned_snapshot),
        (0, None),
        "{what}"
    );
    assert_eq!(
        end.pages, base.pages,
        "{what}: same keys, same value sizes, same pages"
    );
    assert_eq!(
        end.page_buffers, base.page_buffers,
        "{what}: buffers back to the live pages and live overflow chains: {end:?}"
    );
}

#[test]
fn long_lived_snapshot_pins_versions_small_values() {
    pins_and_releases(24);
}

#[test]
fn long_lived_snapshot_pins_versions_overflow_values() {
    pins_and_releases(6_000);
}

/// More snapshots than the engine has pin slots: each keeps its own state, the
/// pin counters follow every drop, in any order.
#[test]
fn many_snapshots_at_once() {
    let engine = Engine::in_memory().unwrap();
    let mut snaps: Vec<(u64, Snapshot)> = Vec::new();
    for i in 1..=300u64 {
        engine.run("set", |tx| tx.put(b"n", &enc(i))).unwrap();
        snaps.push((i, engine.snapshot()));
    }
    let st = engine.stats().store;
    assert_eq!(st.pinned_snapshots, 300, "{st:?}");
    assert_eq!(
        st.oldest_pinned_snapshot,
        Some(snaps[0].1.commit_id().get())
    );
    let mut rng = Rng::new(300);
    while !snaps.is_empty() {
        let (i, snap) = snaps.swap_remove(rng.index(snaps.len()));
        assert_eq!(
            snap.get(b"n").unwrap().map(|v| dec(&v)),
            Some(i),
            "snapshot {i} kept its value"
        );
        assert_eq!(snap.commit_id().get(), i);
        drop(snap);
        if snaps.len().is_multiple_of(10) {
            engine.run("set", |tx| tx.put(b"m", &enc(i))).unwrap();
        }
        let st = engine.stats().store;
        assert_eq!(st.pinned_snapshots, snaps.len(), "{st:?}");
        let oldest = snaps.iter().map(|(_, s)| s.commit_id().get()).min();
        assert_eq!(st.oldest_pinned_snapshot, oldest, "{st:?}");
    }
    engine.collect_garbage();
    let st = engine.stats().store;
    assert_eq!((st.pinned_versions, st.pinned_snapshots), (0, 0), "{st:?}");
}

/// Commands that only read take no commit id and count as read-only; their
/// snapshot is the newest commit and their pins are released.
#[test]
fn read_only_commands_take_no_commit_id() {
    let engine = Engine::in_memory().unwrap();
    let model = seed(&engine, 500, 30);
    let c = engine.commit_id();
    let st0 = engine.stats();
    for i in 0..10u32 {
        let (n, at) = engine
            .run("look", |tx| {
                let at = tx.snapshot_id();
                let n = match i % 4 {
                    0 => tx.get(b"k00001")?.map_or(0, |_| 1),
                    1 => tx.range(..).count(),
                    2 => tx
                        .range(b"k00100".as_slice()..b"k00200".as_slice())
                        .rev()
                        .count(),
                    _ => tx.get(b"missing")?.map_or(0, |_| 1),
                };
                Ok((n, at))
            })
            .unwrap();
        assert_eq!(at, c, "a command reads at the newest commit");
        assert_eq!(n, [1, model.len(), 100, 0][i as usize % 4]);
    }
    // A command that fails takes no commit id either.
    let r: shardstone::Result<()> = engine.run("fail", |tx| {
        tx.put(b"k00001", b"changed")?;
        Err(shardstone::Error::abort("no"))
    });
    assert!(r.is_err());
    assert_eq!(
        engine.commit_id(),
        c,
        "reading and failing commands take no commit id"
    );
    let st = engine.stats();
    assert_eq!(st.commit_id, c.get());
    assert_eq!(st.commits, st0.commits);
    assert_eq!(st.read_only, st0.read_only + 10);
    assert_eq!(st.errors, st0.errors + 1);
    let look = st.commands.iter().find(|c| c.name == "look").unwrap();
    assert_eq!(
        (look.runs, look.read_only, look.commits),
        (10, 10, 0),
        "{look:?}"
    );
    assert_eq!(
        st.store.pinned_snapshots, 0,
        "read-only commands release their pins"
    );
    // The next writing command takes the very next id.
    engine.run("write", |tx| tx.put(b"x", b"y")).unwrap();
    assert_eq!(engine.commit_id().get(), c.get() + 1);
}

/// Large values are written to overflow pages before a commit locks anything; a
/// commit that then loses a conflict must give those pages back.
#[test]
fn overflow_pages_of_lost_commits_are_freed() {
    let opts = shardstone::Options {
        max_conflicts: 2,
        ..Default::default()
    };
    let engine = Engine::in_memory_with(opts).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..150u32 {
                    let key = [b'k', (i % 2) as u8];
                    engine
                        .run("big rmw", |tx| {
                            let n = tx.get(&key)?.map_or(0, |v| v[0]);
                            tx.put(&key, &vec![n.wrapping_add(t); 20_000])
                        })
                        .unwrap();
                }
            });
        }
    });
    let st = engine.stats();
    assert_eq!(st.commits, 600);
    engine
        .run("clear", |tx| tx.delete(b"k\0").and(tx.delete(b"k\x01")))
        .unwrap();
    engine.collect_garbage();
    let store = engine.stats().store;
    assert_eq!(
        (store.pages, store.page_buffers, store.pinned_versions),
        (1, 1, 0),
        "every overflow page written for a lost commit was freed ({} conflicts)",
        st.conflicts
    );
}
