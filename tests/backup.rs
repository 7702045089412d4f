//! Online backups, point-in-time restore and the journal reader, through the
//! public API: a backup taken under load opens at its commit with the source's
//! state there; a restore to commit N equals the state at N (checked against a
//! follower that replays the feed up to N); restores refuse an existing
//! destination; a second backup copies less; journal searches return exactly
//! the commits a model says match, on a live directory too.

mod common;

use common::TempDir;
use shardstone::{
    restore, CommitId, Engine, Error, Filter, JournalReader, Options, RestoreTo, StateDigest,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// One commit of the search model: its id, command and the keys it touched.
type Written = (u64, String, Vec<Vec<u8>>);

fn opts() -> Options {
    Options {
        journal_shards: 2,
        segment_size: 64 << 10,
        numa: shardstone::numa::Numa::Off,
        ..Options::default()
    }
}

fn digest(engine: &Engine) -> StateDigest {
    engine.snapshot().state_digest().unwrap()
}

/// The state of `source` at each commit of `at`, replayed from its feed into a
/// follower (the feed must still reach commit 1).
fn digests_at(source: &Engine, at: &[u64]) -> BTreeMap<u64, StateDigest> {
    let follower = Engine::in_memory_follower(opts()).unwrap();
    let mut feed = source.subscribe(0).unwrap();
    let mut out = BTreeMap::new();
    let last = *at.iter().max().unwrap();
    if at.contains(&0) {
        out.insert(0, digest(&follower));
    }
    while follower.commit_id().get() < last {
        let rec = feed.next().unwrap().unwrap();
        follower.apply(&rec).unwrap();
        let id = rec.commit_id.get();
        if at.contains(&id) {
            out.insert(id, digest(&follower));
        }
    }
    out
}

#[test]
fn a_backup_under_load_opens_at_its_commit_with_the_sources_state() {
    let dir = TempDir::new("backup-load");
    let src = dir.path().join("db");
    let dest = dir.path().join("backup");
    let engine = Engine::open_with(&src, opts()).unwrap();
    for i in 0..200u32 {
        engine
            .run("seed", |tx| {
                tx.put(format!("k{i:04}").as_bytes(), &[1u8; 100])
            })
            .unwrap();
    }
    let stop = AtomicBool::new(false);
    let info = std::thread::scope(|s| {
        for t in 0..2u32 {
            let (engine, stop) = (&engine, &stop);
            s.spawn(move || {
                let mut i = 0u32;
                // Bounded: at most 3000 commits each, whatever the timing.
                while !stop.load(Ordering::SeqCst) && i < 3000 {
                    engine
                        .run("write", |tx| {
                            tx.put(
                                format!("k{:04}", (i * 7 + t) % 300).as_bytes(),
                                &i.to_le_bytes(),
                            )?;
                            if i.is_multiple_of(5) {
                                tx.delete(format!("k{:04}", (i * 3) % 300).as_bytes())?;
                            }
                            Ok(())
                        })
                        .unwrap();
                    i += 1;
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let info = engine.backup(&dest).unwrap();
        stop.store(true, Ordering::SeqCst);
        info
    });
    assert!(info.commit_id.get() >= 200, "{info:?}");
    let want = digests_at(&engine, &[info.commit_id.get()]);
    let backup = Engine::open_with(&dest, opts()).unwrap();
    assert_eq!(backup.last_commit(), (info.commit_id, info.hash));
    assert_eq!(digest(&backup), want[&info.commit_id.get()]);
}

#[test]
fn restore_to_a_commit_equals_the_state_there_and_refuses_an_existing_destination() {
    let dir = TempDir::new("backup-pitr");
    let src = dir.path().join("db");
    let dest = dir.path().join("backup");
    let engine = Engine::open_with(&src, opts()).unwrap();
    let mut feed_follower = Vec::new();
    let write = |from: u32, to: u32| {
        for i in from..to {
            engine
                .run("w", |tx| {
                    tx.put(format!("k{:03}", i % 150).as_bytes(), &[i as u8; 300])?;
                    if i.is_multiple_of(4) {
                        tx.delete(format!("k{:03}", (i / 2) % 150).as_bytes())?;
                    }
                    Ok(())
                })
                .unwrap();
        }
    };
    // The follower sees every commit before any checkpoint trims the journal.
    let mut feed = engine.subscribe(0).unwrap();
    let follower = Engine::in_memory_follower(opts()).unwrap();
    let mut follow = |upto: u64, keep: &[u64]| {
        while follower.commit_id().get() < upto {
            let rec = feed.next().unwrap().unwrap();
            follower.apply(&rec).unwrap();
            if keep.contains(&rec.commit_id.get()) {
                feed_follower.push((rec.commit_id.get(), digest(&follower)));
            }
        }
    };
    write(0, 300);
    follow(300, &[]);
    let first = engine.checkpoint().unwrap().get();
    write(300, 600);
    follow(600, &[450]);
    let second = engine.checkpoint().unwrap().get();
    write(600, 900);
    follow(900, &[750, 900]);
    assert_eq!((first, second), (300, 600));
    // A checkpoint keeps the one before it, and the journal after it, for PITR.
    let reader = JournalReader::open(&src).unwrap();
    assert_eq!(reader.bounds().unwrap().unwrap().0.get(), first + 1);

    let info = engine.backup(&dest).unwrap();
    assert_eq!(info.commit_id.get(), 900);
    assert_eq!(info.oldest_restorable.get(), first);
    let want: BTreeMap<u64, StateDigest> = feed_follower.into_iter().collect();
    for n in [450u64, 750, 900] {
        let to = dir.path().join(format!("at-{n}"));
        let r = restore(&dest, &to, RestoreTo::Commit(CommitId::from(n))).unwrap();
        assert_eq!(r.commit_id.get(), n);
        let restored = Engine::open_with(&to, opts()).unwrap();
        assert_eq!(restored.last_commit().0.get(), n);
        assert_eq!(digest(&restored), want[&n], "commit {n}");
        // The restored database works as a database.
        restored.run("after", |tx| tx.put(b"new", b"1")).unwrap();
    }
    // Latest, and the limits.
    let latest = restore(&dest, dir.path().join("latest"), RestoreTo::Latest).unwrap();
    assert_eq!((latest.commit_id, latest.hash), (info.commit_id, info.hash));
    assert!(matches!(
        restore(
            &dest,
            dir.path().join("old"),
            RestoreTo::Commit(CommitId::from(first - 1))
        ),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        restore(
            &dest,
            dir.path().join("new"),
            RestoreTo::Commit(CommitId::from(901))
        ),
        Err(Error::AheadOfLastCommit { .. })
    ));
    assert!(!dir.path().join("old").exists() && !dir.path().join("new").exists());

    // An existing destination is refused, and left as it was.
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep"), b"mine").unwrap();
    match restore(&dest, &taken, RestoreTo::Latest) {
        Err(Error::DestinationExists { path }) => assert_eq!(path, taken),
        other => panic!("expected DestinationExists, got {other:?}"),
    }
    let names: Vec<_> = std::fs::read_dir(&taken)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"]);
}

#[test]
fn a_second_backup_into_the_same_destination_copies_less() {
    let dir = TempDir::new("backup-incremental");
    let dest = dir.path().join("backup");
    let engine = Engine::open_with(dir.path().join("db"), opts()).unwrap();
    for i in 0..1000u32 {
        engine
            .run("w", |tx| {
                tx.put(format!("k{:04}", i % 400).as_bytes(), &[7u8; 200])
            })
            .unwrap();
    }
    let first = engine.backup(&dest).unwrap();
    for i in 0..20u32 {
        engine
            .run("w", |tx| tx.put(format!("n{i}").as_bytes(), b"x"))
            .unwrap();
    }
    let second = engine.backup(&dest).unwrap();
    assert_eq!(second.commit_id.get(), 1020);
    assert!(
        second.bytes_copied < first.bytes_copied,
        "{first:?} {second:?}"
    );
    assert!(second.bytes_skipped > 0, "{second:?}");
    let third = engine.backup(&dest).unwrap();
    assert_eq!(third.bytes_copied, 0, "nothing changed: {third:?}");
    let backup = Engine::open_with(&dest, opts()).unwrap();
    assert_eq!(backup.last_commit(), engine.last_commit());
    assert_eq!(digest(&backup), digest(&engine));
    drop(backup);
    // A destination that is not a backup is refused.
    std::fs::write(dir.path().join("other"), b"").unwrap();
    let stray = dir.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("file"), b"x").unwrap();
    assert!(matches!(
        engine.backup(&stray),
        Err(Error::NotADatabase { .. })
    ));
}

#[test]
fn journal_search_returns_exactly_the_matching_commits_on_a_live_directory() {
    let dir = TempDir::new("journal-search");
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    // The model: per commit, its command and the keys it touched.
    let mut model: Vec<Written> = Vec::new();
    let mut rng = common::Rng::new(16);
    for _ in 0..400 {
        let command = ["deposit", "withdraw", "audit"][rng.index(3)].to_owned();
        let mut keys: Vec<Vec<u8>> = (0..rng.range_incl(1, 3))
            .map(|_| format!("{}:{}", ["acct", "user"][rng.index(2)], rng.below(30)).into_bytes())
            .collect();
        keys.sort();
        keys.dedup();
        let delete = rng.chance(1, 5);
        engine
            .run(&command, |tx| {
                for k in &keys {
                    if delete {
                        tx.delete(k)?;
                    } else {
                        tx.put(k, b"v")?;
                    }
                }
                Ok(())
            })
            .unwrap();
        model.push((engine.commit_id().get(), command, keys));
    }
    // The engine is still open: the reader takes no lock.
    let reader = JournalReader::open(dir.path()).unwrap();
    let ids = |f: &Filter| -> Vec<u64> {
        reader
            .search(f)
            .unwrap()
            .map(|r| r.unwrap().commit_id.get())
            .collect()
    };
    let want = |pred: &dyn Fn(&Written) -> bool| -> Vec<u64> {
        model.iter().filter(|m| pred(m)).map(|m| m.0).collect()
    };
    let key = b"acct:7".to_vec();
    assert_eq!(
        ids(&Filter {
            key: Some(key.clone()),
            ..Default::default()
        }),
        want(&|m| m.2.contains(&key))
    );
    assert_eq!(
        ids(&Filter {
            prefix: Some(b"user:1".to_vec()),
            ..Default::default()
        }),
        want(&|m| m.2.iter().any(|k| k.starts_with(b"user:1")))
    );
    assert_eq!(
        ids(&Filter {
            command: Some("audit".into()),
            from: Some(100.into()),
            to: Some(250.into()),
            ..Default::default()
        }),
        want(&|m| m.1 == "audit" && (100..=250).contains(&m.0))
    );
    assert_eq!(ids(&Filter::default()), want(&|_| true));
    let tail: Vec<u64> = reader
        .tail(390)
        .unwrap()
        .map(|r| r.unwrap().commit_id.get())
        .collect();
    assert_eq!(tail, (391..=400).collect::<Vec<_>>());
    let rec = reader.get(123).unwrap().unwrap();
    assert_eq!(
        (rec.commit_id.get(), rec.command.as_str()),
        (123, model[122].1.as_str())
    );
    assert!(reader.get(401).unwrap().is_none());
    // Hashes are the chain's: the last one is the engine's.
    let last = reader.records().unwrap().last().unwrap().unwrap();
    assert_eq!((last.commit_id, last.hash), engine.last_commit());
    // After a close, the same answers.
    drop(engine);
    let reader = JournalReader::open(dir.path()).unwrap();
    assert_eq!(
        reader.bounds().unwrap(),
        Some((CommitId::from(1), CommitId::from(400)))
    );
    assert!(matches!(
        JournalReader::open(dir.path().join("journal")),
        Err(Error::NotADatabase { .. })
    ));
}

/// Sleeps long enough that the kernel's coarse clock (the commit times' source,
/// a tick of at most 10 ms) moves past the wall clock read before the sleep.
fn pause() {
    std::thread::sleep(std::time::Duration::from_millis(60));
}

#[test]
fn restore_and_search_by_time_use_the_commit_times() {
    use std::time::SystemTime;
    let dir = TempDir::new("backup-time");
    let src = dir.path().join("db");
    let engine = Engine::open_with(&src, opts()).unwrap();
    let batch = |tag: &str, n: u32| {
        for i in 0..n {
            engine
                .run(tag, |tx| tx.put(format!("{tag}{i}").as_bytes(), b"v"))
                .unwrap();
        }
    };
    let before_all = SystemTime::now();
    pause();
    batch("a", 20);
    let after_a = engine.commit_id().get();
    let a_state = digest(&engine);
    pause();
    let t1 = SystemTime::now();
    pause();
    batch("b", 20);
    let after_b = engine.commit_id().get();
    let b_state = digest(&engine);
    pause();
    let t2 = SystemTime::now();
    pause();
    batch("c", 5);

    // Every record has a time, in the window it was made in.
    let reader = JournalReader::open(&src).unwrap();
    for e in reader.records().unwrap() {
        let e = e.unwrap();
        let t = e.time.expect("a new record has a time");
        let id = e.commit_id.get();
        let (lo, hi) = if id <= after_a {
            (before_all, t1)
        } else if id <= after_b {
            (t1, t2)
        } else {
            (t2, SystemTime::now())
        };
        assert!(
            t >= lo && t <= hi,
            "commit {id} at {t:?} outside {lo:?}..{hi:?}"
        );
        assert_eq!(reader.get(e.commit_id).unwrap().unwrap().time, e.time);
    }
    // Search between two times: exactly batch b.
    let ids: Vec<u64> = reader
        .search(&Filter {
            since: Some(t1),
            until: Some(t2),
            ..Default::default()
        })
        .unwrap()
        .map(|e| e.unwrap().commit_id.get())
        .collect();
    assert_eq!(ids, (after_a + 1..=after_b).collect::<Vec<_>>());
    assert_eq!(
        reader.last_before(t1).unwrap(),
        Some(CommitId::from(after_a))
    );
    assert_eq!(reader.last_before(before_all).unwrap(), None);

    // Restore by time from a backup: the state at the end of each batch.
    let backup = dir.path().join("backup");
    engine.backup(&backup).unwrap();
    for (at, want_id, want) in [(t1, after_a, &a_state), (t2, after_b, &b_state)] {
        let to = dir.path().join(format!("at-{want_id}"));
        let r = restore(&backup, &to, RestoreTo::Time(at)).unwrap();
        assert_eq!(r.commit_id.get(), want_id);
        assert_eq!(&digest(&Engine::open_with(&to, opts()).unwrap()), want);
    }
    // Before the first commit, from a journal that starts at commit 1: empty.
    let empty = restore(
        &backup,
        dir.path().join("empty"),
        RestoreTo::Time(before_all),
    )
    .unwrap();
    assert_eq!(empty.commit_id.get(), 0);
    let opened = Engine::open_with(dir.path().join("empty"), opts()).unwrap();
    assert_eq!(opened.snapshot().range(..).count(), 0);

    // After a checkpoint, a time before it cannot be restored from a journal
    // that starts after it (the checkpoint keeps no history).
    drop(opened);
    engine.checkpoint().unwrap();
    engine.checkpoint().unwrap();
    let backup2 = dir.path().join("backup2");
    engine.backup(&backup2).unwrap();
    assert!(matches!(
        restore(&backup2, dir.path().join("too-old"), RestoreTo::Time(t1)),
        Err(Error::Truncated { .. })
    ));
    assert!(!dir.path().join("too-old").exists());
}
