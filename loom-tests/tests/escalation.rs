//! Loom model of escalation (`src/command/mod.rs`, `src/command/gate.rs`): a
//! command in the blocking queue while optimistic commits are in flight.
#![cfg(loom)]

mod common;

use common::add_one;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use shardstone::{Engine, Options};
use std::sync::Arc;

fn increment(engine: &Engine, runs: &AtomicUsize) {
    engine
        .run("incr", |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            add_one(tx)
        })
        .unwrap();
}

/// One command goes to the blocking queue (`run_blocking`) while another commits
/// optimistically on the same key, before, during or after it. No deadlock; the
/// escalated command runs its closure exactly once (the queue drains commits in
/// flight first, so it cannot conflict) and commits; no update is lost.
#[test]
fn an_escalated_command_commits_once_and_loses_nothing() {
    loom::model(|| {
        let engine = Arc::new(
            Engine::in_memory_with(Options {
                max_conflicts: 3,
                ..Options::default()
            })
            .unwrap(),
        );
        let escalated_runs = Arc::new(AtomicUsize::new(0));
        let optimistic_runs = Arc::new(AtomicUsize::new(0));
        let t = {
            let (engine, runs) = (engine.clone(), optimistic_runs.clone());
            thread::spawn(move || increment(&engine, &runs))
        };
        let before = engine.stats().escalations;
        engine
            .run_blocking("escalated", |tx| {
                escalated_runs.fetch_add(1, Ordering::SeqCst);
                let n = tx
                    .get(b"n")?
                    .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()));
                tx.put(b"n", &(n + 1).to_le_bytes())
            })
            .unwrap();
        t.join().unwrap();
        assert_eq!(
            escalated_runs.load(Ordering::SeqCst),
            1,
            "the escalated command ran more than once: it conflicted in the blocking queue"
        );
        let n = engine
            .snapshot()
            .get(b"n")
            .unwrap()
            .map(|v| u64::from_le_bytes(v[..8].try_into().unwrap()));
        assert_eq!(n, Some(2), "an update was lost");
        assert_eq!(engine.commit_id().get(), 2);
        assert_eq!(engine.stats().escalations, before + 1);
    });
}
