//! The replication feed and followers through the public API: ordered delivery,
//! history from the journal files, followers that apply, fork and gap detection,
//! truncation, and state digests.

mod common;

use common::{enc, Rng, TempDir};
use shardstone::{ChainHash, CommitRecord, Durability, Engine, Error, Op, Options};
use std::time::Duration;

fn opts() -> Options {
    Options {
        durability: Durability::Buffered,
        journal_shards: 2,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// Applies `n` puts, one command each, on one thread.
fn puts(engine: &Engine, from: u64, n: u64) {
    for i in from..from + n {
        engine
            .run("put", |tx| tx.put(&enc(i), &enc(i * 7)))
            .unwrap();
    }
}

#[test]
fn history_then_live_in_order_and_chained() {
    let engine = Engine::in_memory().unwrap();
    puts(&engine, 0, 50);
    let mut feed = engine.subscribe(0).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| puts(&engine, 50, 50));
        let mut prev = ChainHash::genesis();
        for want in 1..=100u64 {
            let rec = feed.next().unwrap().unwrap();
            assert_eq!(rec.commit_id.get(), want);
            assert_eq!(rec.prev_hash, prev);
            assert_eq!(rec.command, "put");
            assert!(matches!(&rec.ops[..], [Op::Put { .. }]));
            prev = rec.hash;
        }
    });
    assert_eq!(feed.position().get(), engine.last_commit().0.get());
    assert!(feed.try_next().unwrap().is_none());
    assert!(feed
        .recv_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
}

#[test]
fn a_feed_ends_when_the_engine_closes() {
    let engine = Engine::in_memory().unwrap();
    puts(&engine, 0, 3);
    let feed = engine.subscribe(1).unwrap();
    drop(engine);
    let ids: Vec<u64> = feed.map(|r| r.unwrap().commit_id.get()).collect();
    assert_eq!(ids, vec![2, 3]);
}

#[test]
fn history_comes_from_the_journal_files_after_a_restart() {
    let dir = TempDir::new("history");
    let (last, hashes) = {
        let engine = Engine::open_with(dir.path(), opts()).unwrap();
        puts(&engine, 0, 300);
        engine.checkpoint().unwrap();
        puts(&engine, 300, 200);
        let hashes: Vec<ChainHash> = engine
            .subscribe(0)
            .unwrap()
            .take(500)
            .map(|r| r.unwrap().hash)
            .collect();
        (engine.last_commit(), hashes)
    };
    // A fresh engine: its in-memory window is empty; everything comes from files.
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert_eq!(engine.last_commit(), last);
    // After the checkpoint at 300, the journal still has what follows it.
    let mut feed = engine.subscribe(300).unwrap();
    for want in 301..=500u64 {
        let rec = feed.next().unwrap().unwrap();
        assert_eq!(rec.commit_id.get(), want);
        assert_eq!(rec.hash, hashes[want as usize - 1]);
    }
    // Then live.
    puts(&engine, 500, 5);
    let rec = feed.next().unwrap().unwrap();
    assert_eq!((rec.commit_id.get(), rec.prev_hash), (501, hashes[499]));
    // Before the checkpoint, the journal was deleted (no consumer held it).
    let mut early = engine.subscribe(10).unwrap();
    match early.next().unwrap() {
        Err(Error::Truncated { oldest_available }) => {
            assert!(oldest_available.get() > 11 && oldest_available.get() <= 301)
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn a_small_in_memory_window_truncates_old_subscriptions() {
    let engine = Engine::in_memory_with(Options {
        feed_window_bytes: 4096,
        ..Default::default()
    })
    .unwrap();
    puts(&engine, 0, 1000);
    let mut feed = engine.subscribe(0).unwrap();
    match feed.next().unwrap() {
        Err(Error::Truncated { oldest_available }) => {
            let from = oldest_available.get() - 1;
            let mut feed = engine.subscribe(from).unwrap();
            let rec = feed.next().unwrap().unwrap();
            assert_eq!(rec.commit_id, oldest_available);
            let rest = (rec.commit_id.get()..1000).count();
            assert_eq!(feed.take(rest).count(), rest);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn a_follower_applies_detects_gaps_and_forks_and_can_be_promoted() {
    let leader = Engine::in_memory().unwrap();
    let follower = Engine::in_memory_follower(Options::default()).unwrap();
    assert!(matches!(
        follower.run("w", |tx| tx.put(b"k", b"v")),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        leader.apply(&dummy(1)),
        Err(Error::Unsupported(_))
    ));
    let mut rng = Rng::new(3);
    for i in 0..300u64 {
        let k = rng.below(50);
        leader
            .run("mix", |tx| {
                if i % 5 == 0 {
                    tx.delete(&enc(k))?;
                    tx.put(&enc(k + 1000), &enc(i))?;
                } else {
                    tx.put(&enc(k), &enc(i))?;
                }
                Ok(())
            })
            .unwrap();
    }
    let records: Vec<CommitRecord> = leader
        .subscribe(0)
        .unwrap()
        .take(300)
        .map(|r| r.unwrap())
        .collect();
    // Out of order: a gap.
    match follower.apply(&records[1]) {
        Err(Error::Gap { expected, got }) => assert_eq!((expected.get(), got.get()), (1, 2)),
        other => panic!("expected Gap, got {other:?}"),
    }
    for rec in &records[..150] {
        // Through the wire format, as a replica would receive it.
        let rec = CommitRecord::decode(&rec.encode().unwrap()).unwrap();
        follower.apply(&rec).unwrap();
    }
    // The same record again is a gap; a tampered one is a fork.
    assert!(matches!(
        follower.apply(&records[149]),
        Err(Error::Gap { .. })
    ));
    let mut tampered = records[150].clone();
    if let Op::Put { value, .. } = &mut tampered.ops[0] {
        value.push(1);
    } else {
        tampered.ops[0] = Op::Put {
            key: b"\0".to_vec(),
            value: b"x".to_vec(),
        };
    }
    assert!(matches!(follower.apply(&tampered), Err(Error::Fork { .. })));
    let mut wrong_prev = records[150].clone();
    wrong_prev.prev_hash = ChainHash::genesis();
    match follower.apply(&wrong_prev) {
        Err(Error::Fork {
            commit_id, ours, ..
        }) => {
            assert_eq!(commit_id.get(), 150);
            assert_eq!(ours, records[149].hash);
        }
        other => panic!("expected Fork, got {other:?}"),
    }
    for rec in &records[150..] {
        follower.apply(rec).unwrap();
    }
    assert_eq!(follower.last_commit(), leader.last_commit());
    assert_eq!(
        follower.snapshot().state_digest().unwrap(),
        leader.snapshot().state_digest().unwrap()
    );
    // Promotion: a leader at its last commit.
    follower.promote();
    assert!(!follower.is_follower());
    follower.run("w", |tx| tx.put(b"k", b"v")).unwrap();
    assert_eq!(follower.commit_id().get(), 301);
    assert!(matches!(
        follower.apply(&records[0]),
        Err(Error::Unsupported(_))
    ));
}

fn dummy(id: u64) -> CommitRecord {
    CommitRecord {
        commit_id: id.into(),
        prev_hash: ChainHash::genesis(),
        hash: ChainHash::genesis(),
        command: "x".into(),
        ops: vec![Op::Delete { key: b"k".to_vec() }],
    }
}

#[test]
fn pausing_a_consumer_keeps_its_position_and_never_blocks_commits() {
    let engine = Engine::in_memory().unwrap();
    let mut feed = engine.subscribe_as("replica", 0).unwrap();
    let control = feed.control();
    puts(&engine, 0, 10);
    assert_eq!(feed.next().unwrap().unwrap().commit_id.get(), 1);
    engine.pause_consumer("replica").unwrap();
    assert!(control.is_paused());
    puts(&engine, 10, 100);
    assert!(feed
        .recv_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    let stats = engine.stats();
    let c = stats
        .feed
        .iter()
        .find(|c| c.name.as_deref() == Some("replica"))
        .unwrap();
    assert_eq!((c.position.get(), c.lag_commits, c.paused), (1, 109, true));
    assert!(c.lag_bytes > 0);
    control.resume();
    let ids: Vec<u64> = feed
        .by_ref()
        .take(109)
        .map(|r| r.unwrap().commit_id.get())
        .collect();
    assert_eq!(ids, (2..=110).collect::<Vec<_>>());
    assert!(matches!(
        engine.pause_consumer("nobody"),
        Err(Error::UnknownConsumer(_))
    ));
    // A control handle does not keep a dropped feed in the stats.
    control.pause();
    drop(feed);
    assert!(!control.is_paused());
    control.resume();
    assert!(engine.stats().feed.is_empty());
}

#[test]
fn a_named_consumer_keeps_the_journal_it_needs_across_checkpoints_and_restarts() {
    let dir = TempDir::new("hold");
    {
        let engine = Engine::open_with(dir.path(), opts()).unwrap();
        let mut feed = engine.subscribe_as("replica", 0).unwrap();
        puts(&engine, 0, 400);
        for _ in 0..100 {
            feed.next().unwrap().unwrap();
        }
        feed.ack(100);
        engine.checkpoint().unwrap();
        puts(&engine, 400, 100);
        engine.checkpoint().unwrap();
        assert_eq!(
            engine.consumer_position("replica").map(|c| c.get()),
            Some(100)
        );
    }
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert_eq!(
        engine.consumer_position("replica").map(|c| c.get()),
        Some(100)
    );
    let mut feed = engine.subscribe_as("replica", 100).unwrap();
    for want in 101..=500u64 {
        assert_eq!(feed.next().unwrap().unwrap().commit_id.get(), want);
    }
    assert!(engine.release_consumer("replica"));
    assert_eq!(engine.consumer_position("replica"), None);
}

#[test]
fn a_durable_follower_checkpoints_and_resumes() {
    let leader = Engine::in_memory().unwrap();
    puts(&leader, 0, 200);
    let dir = TempDir::new("follower-ckpt");
    {
        let follower = Engine::open_follower(dir.path(), opts()).unwrap();
        for rec in leader.subscribe(0).unwrap().take(200) {
            follower.apply(&rec.unwrap()).unwrap();
        }
        assert_eq!(follower.checkpoint().unwrap().get(), 200);
    }
    let follower = Engine::open_follower(dir.path(), opts()).unwrap();
    assert_eq!(follower.last_commit(), leader.last_commit());
    assert_eq!(
        follower.stats().journal.replayed,
        0,
        "the checkpoint covers it all"
    );
    puts(&leader, 200, 10);
    for rec in leader.subscribe(200).unwrap().take(10) {
        follower.apply(&rec.unwrap()).unwrap();
    }
    assert_eq!(
        follower.snapshot().state_digest().unwrap(),
        leader.snapshot().state_digest().unwrap()
    );
}

/// What a subscription beyond the last commit must return.
#[track_caller]
fn assert_ahead(what: &str, r: shardstone::Result<shardstone::Feed>, requested: u64, last: u64) {
    match r {
        Err(Error::AheadOfLastCommit {
            requested: r,
            last: l,
        }) => assert_eq!(
            (r.get(), l.get()),
            (requested, last),
            "{what}: (requested, last)"
        ),
        other => panic!("{what}: expected AheadOfLastCommit, got {other:?}"),
    }
}

/// `subscribe(from)` gives the commits after `from`: `from` may be the last
/// commit (the feed waits for the next), but a `from` beyond it is a consumer
/// ahead of this engine (a fork), refused with a typed error rather than a feed
/// that never yields. `u64::MAX` included: no overflow, no wrapped hold.
#[test]
fn a_subscription_beyond_the_last_commit_is_refused() {
    let dir = TempDir::new("ahead");
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    // An empty engine: only 0 is allowed.
    assert_ahead("empty, 1", engine.subscribe(1), 1, 0);
    let mut feed = engine.subscribe(0).unwrap();
    assert!(feed.try_next().unwrap().is_none());
    puts(&engine, 0, 20);
    let last = engine.last_commit().0.get();
    assert_eq!(last, 20);
    for from in [last + 1, last + 2, 1 << 40, u64::MAX - 1, u64::MAX] {
        assert_ahead(
            &format!("subscribe({from})"),
            engine.subscribe(from),
            from,
            last,
        );
    }
    // Exactly the last commit: nothing yet, then the next one.
    let mut at_last = engine.subscribe(last).unwrap();
    assert_eq!(at_last.position().get(), last);
    assert!(at_last.try_next().unwrap().is_none());
    puts(&engine, 20, 1);
    assert_eq!(at_last.next().unwrap().unwrap().commit_id.get(), last + 1);
    // Refused feeds registered no consumer.
    assert_eq!(engine.stats().feed.len(), 2, "{:?}", engine.stats().feed);
}

/// The same for a named consumer, and a refused call creates no retention hold
/// and does not move an existing one, also across a reopen.
#[test]
fn a_named_subscription_beyond_the_last_commit_is_refused_and_holds_nothing() {
    let dir = TempDir::new("ahead-named");
    {
        let engine = Engine::open_with(dir.path(), opts()).unwrap();
        puts(&engine, 0, 30);
        let last = engine.last_commit().0.get();
        for from in [last + 1, u64::MAX - 1, u64::MAX] {
            assert_ahead(
                &format!("subscribe_as(\"new\", {from})"),
                engine.subscribe_as("new", from),
                from,
                last,
            );
        }
        assert_eq!(engine.consumer_position("new"), None, "no hold was created");
        assert!(!engine.release_consumer("new"));

        let held = engine.subscribe_as("held", 10).unwrap();
        held.ack(10);
        drop(held);
        assert_eq!(engine.consumer_position("held").map(|c| c.get()), Some(10));
        for from in [last + 1, u64::MAX] {
            assert_ahead(
                &format!("subscribe_as(\"held\", {from})"),
                engine.subscribe_as("held", from),
                from,
                last,
            );
            assert_eq!(
                engine.consumer_position("held").map(|c| c.get()),
                Some(10),
                "a refused subscribe_as({from}) moved the hold"
            );
        }
        // The hold still keeps the journal it covers through a checkpoint.
        engine.checkpoint().unwrap();
        // At the last commit: accepted, and the hold moves there.
        let mut at_last = engine.subscribe_as("held", last).unwrap();
        assert!(at_last.try_next().unwrap().is_none());
        assert_eq!(
            engine.consumer_position("held").map(|c| c.get()),
            Some(last)
        );
        drop(at_last);
        engine.close().unwrap();
    }
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert_eq!(engine.consumer_position("held").map(|c| c.get()), Some(30));
    assert_eq!(engine.consumer_position("new"), None);
    assert_ahead("after reopen", engine.subscribe_as("held", 31), 31, 30);
    assert_eq!(engine.consumer_position("held").map(|c| c.get()), Some(30));
}

/// A follower refuses the same way: a consumer ahead of a follower is ahead of
/// everything that follower applied.
#[test]
fn a_follower_refuses_a_subscription_beyond_its_last_commit() {
    let leader = Engine::in_memory().unwrap();
    puts(&leader, 0, 10);
    let follower = Engine::in_memory_follower(Options::default()).unwrap();
    for rec in leader.subscribe(0).unwrap().take(6) {
        follower.apply(&rec.unwrap()).unwrap();
    }
    assert_eq!(follower.last_commit().0.get(), 6);
    for from in [7, 10, u64::MAX] {
        assert_ahead(
            &format!("follower subscribe({from})"),
            follower.subscribe(from),
            from,
            6,
        );
        assert_ahead(
            &format!("follower subscribe_as({from})"),
            follower.subscribe_as("downstream", from),
            from,
            6,
        );
    }
    assert_eq!(follower.consumer_position("downstream"), None);
    // Up to its own last commit it serves a feed, and it follows what it applies.
    let mut feed = follower.subscribe(6).unwrap();
    assert!(feed.try_next().unwrap().is_none());
    for rec in leader.subscribe(6).unwrap().take(4) {
        follower.apply(&rec.unwrap()).unwrap();
    }
    assert_eq!(feed.next().unwrap().unwrap().commit_id.get(), 7);
    // And now what the leader has, the follower has too.
    assert!(follower.subscribe(10).is_ok());
}
