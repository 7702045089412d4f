//! The commit id of a command (issue 17, item 2): `run_with_id` and
//! `submit_with_id` return the id the journal and the feed record, on every
//! path (optimistic, key-locked, alone), and `wait_for` waits, bounded, until
//! an engine (a follower included) has made a commit id visible.

mod common;

use common::TempDir;
use shardstone::{CommitId, Engine, Escalation, JournalReader, Op, Options};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A bound for waits that should end at once: it only keeps a broken engine
/// from hanging the suite.
const LONG: Duration = Duration::from_secs(30);

/// The key of the single put of a record.
fn put_key(ops: &[Op]) -> Vec<u8> {
    match ops {
        [Op::Put { key, .. }] => key.to_vec(),
        other => panic!("expected one put, got {other:?}"),
    }
}

#[test]
fn ids_are_those_the_journal_and_the_feed_record() {
    let dir = TempDir::new("commit-ids-journal");
    let mut ids = Vec::new();
    {
        let engine = Engine::open(dir.path()).unwrap();
        for i in 0..5u8 {
            let (value, id) = engine
                .run_with_id(&format!("put{i}"), |tx| {
                    tx.put(&[i], b"v")?;
                    Ok(i * 2)
                })
                .unwrap();
            assert_eq!(value, i * 2);
            let id = id.expect("a command that wrote has a commit id");
            assert_eq!(id, engine.commit_id(), "visible when run_with_id returns");
            assert!(engine.wait_for(id, Duration::ZERO).unwrap());
            ids.push(id);
            // A read-only command commits nothing, and takes no id.
            let (v, none) = engine.run_with_id("get", |tx| tx.get(&[i])).unwrap();
            assert_eq!((v.as_deref(), none), (Some(&b"v"[..]), None));
        }
        // A command that fails commits nothing: its error comes back, no id.
        let r = engine.run_with_id("fails", |tx| -> shardstone::Result<()> {
            tx.put(b"x", b"1")?;
            Err(shardstone::Error::abort("no"))
        });
        assert!(r.is_err());
        assert_eq!(engine.commit_id(), ids[4]);

        let feed: Vec<_> = engine
            .subscribe(0)
            .unwrap()
            .take(5)
            .map(|r| r.unwrap())
            .collect();
        for (i, (rec, id)) in feed.iter().zip(&ids).enumerate() {
            assert_eq!(rec.commit_id, *id);
            assert_eq!(&*rec.command, format!("put{i}"));
        }
        assert_eq!(engine.last_commit().0, ids[4]);
    }
    // The journal files say the same once the engine is closed.
    let reader = JournalReader::open(dir.path()).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let entry = reader
            .get(*id)
            .unwrap()
            .expect("the journal has the commit");
        assert_eq!(entry.commit_id, *id);
        assert_eq!(&*entry.command, format!("put{i}"));
        assert_eq!(put_key(&entry.ops), vec![i as u8]);
    }
}

#[test]
fn concurrent_commands_get_distinct_increasing_ids_in_feed_order() {
    const THREADS: u32 = 4;
    const EACH: u32 = 50;
    let engine = Arc::new(Engine::in_memory().unwrap());
    let per_thread: Vec<Vec<(CommitId, Vec<u8>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let key = format!("t{t}:{i:03}").into_bytes();
                            // Every thread also bumps one shared counter: conflicts
                            // and retries happen, ids must still be exact.
                            let (_, id) = engine
                                .run_with_id("write", |tx| {
                                    tx.put(&key, b"x")?;
                                    let n = tx.get(b"shared")?.map_or(0, |v| v[0]);
                                    tx.put(b"shared", &[n.wrapping_add(1)])
                                })
                                .unwrap();
                            (id.expect("a write commits"), key)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = (THREADS * EACH) as u64;
    let mut all = BTreeSet::new();
    for ids in &per_thread {
        // One thread's commands commit in the order it ran them.
        assert!(ids.windows(2).all(|w| w[0].0 < w[1].0), "{ids:?}");
        all.extend(ids.iter().map(|(id, _)| id.get()));
    }
    assert_eq!(
        all,
        (1..=total).collect::<BTreeSet<u64>>(),
        "distinct, no gaps"
    );
    // Record n of the feed is the commit whose command reported id n.
    let by_id: std::collections::BTreeMap<u64, &[u8]> = per_thread
        .iter()
        .flatten()
        .map(|(id, key)| (id.get(), key.as_slice()))
        .collect();
    let feed = engine.subscribe(0).unwrap();
    for (n, rec) in (1..=total).zip(feed) {
        let rec = rec.unwrap();
        assert_eq!(rec.commit_id.get(), n);
        let keys: Vec<&[u8]> = rec
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key } => &key[..],
            })
            .collect();
        assert!(keys.contains(&by_id[&n]), "commit {n}: {keys:?}");
    }
}

/// A command that reads `hot`, and whose first attempt loses to a write of
/// `hot` made by another thread before it commits: with `max_conflicts: 1` it
/// is escalated at once, and commits on the escalated path.
fn escalated_command(engine: &Engine) -> (u64, Option<CommitId>) {
    let attempts = AtomicU32::new(0);
    engine
        .run_with_id("escalated", |tx| {
            let n = tx.get(b"hot")?.map_or(0, |v| v[0]);
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::scope(|s| {
                    s.spawn(|| engine.run("contender", |tx| tx.put(b"hot", &[100])))
                        .join()
                        .unwrap()
                })?;
            }
            tx.put(b"hot", &[n + 1])?;
            tx.put(b"mine", b"1")?;
            Ok(attempts.load(Ordering::SeqCst) as u64)
        })
        .unwrap()
}

#[test]
fn an_escalated_command_reports_its_id() {
    for policy in [Escalation::KeyLocks, Escalation::StopTheWorld] {
        let engine = Engine::in_memory_with(Options {
            max_conflicts: 1,
            escalation: policy,
            lock_wait: LONG,
            ..Options::default()
        })
        .unwrap();
        engine.run("before", |tx| tx.put(b"a", b"1")).unwrap();
        let (attempts, id) = escalated_command(&engine);
        assert_eq!(attempts, 2, "{policy:?}: lost once, then escalated");
        assert_eq!(engine.stats().escalations, 1, "{policy:?}");
        // "before" is 1, "contender" 2, the escalated command 3.
        assert_eq!(id, Some(CommitId::from(3)), "{policy:?}");
        let rec = engine.subscribe(2).unwrap().next().unwrap().unwrap();
        assert_eq!(
            (rec.commit_id, &*rec.command),
            (CommitId::from(3), "escalated")
        );
        assert_eq!(
            engine.snapshot().get(b"hot").unwrap().as_deref(),
            Some(&[101][..])
        );
        // Escalated from the start, read-only: still no id.
        let (_, none) = Engine::in_memory_with(Options {
            max_conflicts: 0,
            escalation: policy,
            ..Options::default()
        })
        .unwrap()
        .run_with_id("read", |tx| tx.get(b"hot"))
        .unwrap();
        assert_eq!(none, None, "{policy:?}");
    }
}

#[test]
fn a_command_escalated_from_the_start_reports_its_id() {
    let engine = Engine::in_memory_with(Options {
        max_conflicts: 0,
        ..Options::default()
    })
    .unwrap();
    let ((), first) = engine.run_with_id("one", |tx| tx.put(b"k", b"1")).unwrap();
    let ((), second) = engine.run_with_id("two", |tx| tx.put(b"k", b"2")).unwrap();
    assert_eq!(engine.stats().escalations, 2);
    assert_eq!((first, second), (Some(1.into()), Some(2.into())));
}

#[test]
fn submitted_commands_report_their_ids() {
    let engine = Engine::in_memory().unwrap();
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            engine
                .submit_with_id("submitted", move |tx| {
                    tx.put(&[i], b"v")?;
                    Ok(i)
                })
                .unwrap()
        })
        .collect();
    let mut ids = BTreeSet::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (v, id) = h.wait().unwrap();
        assert_eq!(v as usize, i);
        let id = id.expect("a write commits");
        let rec = engine
            .subscribe(id.get() - 1)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(put_key(&rec.ops), vec![i as u8]);
        ids.insert(id.get());
    }
    assert_eq!(ids, (1..=8).collect());
    let (v, none) = engine
        .submit_with_id("read", |tx| tx.get(&[0]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((v.as_deref(), none), (Some(&b"v"[..]), None));
    // A panic comes back as an error, as from `submit`.
    let r = engine
        .submit_with_id("boom", |_tx| -> shardstone::Result<()> { panic!("boom") })
        .unwrap()
        .wait();
    assert!(
        matches!(r, Err(shardstone::Error::Panicked { .. })),
        "{r:?}"
    );
}

#[test]
fn wait_for_on_a_follower_returns_once_it_applied_the_id() {
    let leader = Engine::in_memory().unwrap();
    let follower = Arc::new(Engine::in_memory_follower(Options::default()).unwrap());
    let ids: Vec<CommitId> = (0..3u8)
        .map(|i| {
            leader
                .run_with_id("put", |tx| tx.put(&[i], b"v"))
                .unwrap()
                .1
                .unwrap()
        })
        .collect();
    assert!(
        follower.wait_for(0, Duration::ZERO).unwrap(),
        "commit 0 is the empty state"
    );
    assert!(!follower.wait_for(ids[0], Duration::ZERO).unwrap());
    assert!(!follower
        .wait_for(ids[0], Duration::from_millis(20))
        .unwrap());

    let mut feed = leader.subscribe(0).unwrap();
    follower.apply(&feed.next().unwrap().unwrap()).unwrap();
    follower.apply(&feed.next().unwrap().unwrap()).unwrap();
    assert!(follower.wait_for(ids[1], Duration::ZERO).unwrap());
    assert!(!follower
        .wait_for(ids[2], Duration::from_millis(20))
        .unwrap());

    // A waiter that is already waiting when the commit is applied is woken.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let waiter = {
        let follower = follower.clone();
        let id = ids[2];
        std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            follower.wait_for(id, LONG)
        })
    };
    started_rx.recv().unwrap();
    follower.apply(&feed.next().unwrap().unwrap()).unwrap();
    assert!(waiter.join().unwrap().unwrap());
    assert_eq!(follower.last_commit(), leader.last_commit());
    // Beyond anything committed anywhere: the timeout ends it.
    assert!(!follower
        .wait_for(ids[2].get() + 1, Duration::from_millis(5))
        .unwrap());
}

#[test]
fn wait_for_on_a_durable_leader() {
    let dir = TempDir::new("commit-ids-wait");
    let engine = Arc::new(Engine::open(dir.path()).unwrap());
    let next = engine.commit_id().get() + 1;
    let waiter = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.wait_for(next, LONG))
    };
    let ((), id) = engine.run_with_id("put", |tx| tx.put(b"k", b"v")).unwrap();
    assert_eq!(id.map(CommitId::get), Some(next));
    assert!(waiter.join().unwrap().unwrap());
}

/// A commit whose fsync failed never becomes visible: `wait_for` says so with
/// `Error::Halted` at once, not `Ok(false)` at its timeout.
#[test]
fn wait_for_a_commit_whose_sync_failed_is_halted() {
    use shardstone::{Durability, Error, FaultKind, FaultyIo};
    let opts = || Options {
        durability: Durability::Durable,
        journal_shards: 1,
        numa: shardstone::numa::Numa::Off,
        ..Options::default()
    };
    // How many syncs opening a fresh directory and one commit do (the first
    // commit also creates the segment, with syncs of its own).
    let probe = TempDir::new("cid-sync-probe");
    let counting = Arc::new(FaultyIo::new(FaultKind::Sync, u64::MAX, libc_eio(), false));
    let opened = Engine::open_with_io(probe.path(), opts(), counting.clone()).unwrap();
    opened.run("w", |tx| tx.put(b"k", b"v")).unwrap();
    let before_second = counting.ops();
    drop(opened);

    // The same, then the second commit's fdatasync fails: commit 2 took its id
    // and was written, but is never durable.
    let dir = TempDir::new("cid-sync-fails");
    let io = Arc::new(FaultyIo::new(
        FaultKind::Sync,
        before_second,
        libc_eio(),
        true,
    ));
    let engine = Engine::open_with_io(dir.path(), opts(), io.clone()).unwrap();
    engine.run("w", |tx| tx.put(b"k", b"v")).unwrap();
    assert!(engine.run("w", |tx| tx.put(b"k", b"w")).is_err());
    assert_eq!(io.failures(), 1, "the second commit's sync was failed");
    assert!(engine.wait_for(1, Duration::from_secs(5)).unwrap());
    let started = std::time::Instant::now();
    match engine.wait_for(2, Duration::from_secs(30)) {
        Err(Error::Halted { .. }) => {}
        other => panic!("expected Halted, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for the timeout"
    );
}

/// `EIO`, without a libc dependency in the tests.
fn libc_eio() -> i32 {
    5
}
