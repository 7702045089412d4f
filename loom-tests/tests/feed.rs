//! Loom model of commit-id assignment and the publish watermark as a feed
//! consumer sees them (`src/store/clock.rs`, `src/journal/chain.rs`,
//! `src/feed/mod.rs`), through the public API.
#![cfg(loom)]

use loom::thread;
use shardstone::Engine;
use std::sync::Arc;

/// Two writers commit concurrently while a consumer polls its feed. The consumer
/// sees commits 1 and 2 in order, each exactly once, never one a snapshot cannot
/// see yet, and the chain links each record to the one before.
#[test]
fn a_feed_never_sees_a_gap_or_a_reordering() {
    loom::model(|| {
        let engine = Arc::new(Engine::in_memory().unwrap());
        let mut feed = engine.subscribe(0).unwrap();
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let engine = engine.clone();
                thread::spawn(move || engine.run("w", |tx| tx.put(&[w], b"v")).unwrap())
            })
            .collect();
        let mut got = Vec::new();
        let check = |rec: shardstone::CommitRecord, got: &mut Vec<shardstone::CommitRecord>| {
            let id = rec.commit_id.get();
            assert_eq!(id, got.len() as u64 + 1, "a gap or a reordering");
            assert!(
                engine.snapshot().commit_id().get() >= id,
                "commit {id} was delivered before it was visible"
            );
            if let Some(prev) = got.last() {
                assert_eq!(rec.prev_hash, prev.hash);
            }
            got.push(rec);
        };
        for _ in 0..3 {
            match feed.try_next().unwrap() {
                Some(rec) => check(rec, &mut got),
                None => thread::yield_now(),
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        while let Some(rec) = feed.try_next().unwrap() {
            check(rec, &mut got);
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].hash, engine.last_commit().1);
    });
}
