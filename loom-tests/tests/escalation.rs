//! Loom models of escalation (`src/command/mod.rs`): a command in the blocking
//! queue while optimistic commits are in flight, under both policies. With
//! `Escalation::StopTheWorld` it closes the commit gate (`src/command/gate.rs`);
//! with `Escalation::KeyLocks` (the default) it locks the keys it touches
//! (`src/txn/keylock.rs`) and a commit that writes one waits for its release.
#![cfg(loom)]

mod common;

use common::add_one;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use shardstone::{Engine, Escalation, Options, Tx};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn increment(engine: &Engine, runs: &AtomicUsize) {
    engine
        .run("incr", |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            add_one(tx)
        })
        .unwrap();
}

/// Under `Escalation::StopTheWorld`, one command goes to the blocking queue
/// (`run_blocking`) while another commits optimistically on the same key, before,
/// during or after it. No deadlock; the escalated command runs its closure exactly
/// once (the gate drains commits in flight first, so it cannot conflict) and
/// commits; no update is lost.
#[test]
fn an_escalated_command_commits_once_and_loses_nothing() {
    // The ordinary command spins at the closed gate (by design) for as long as
    // the escalated one runs: admission, exclusive rights, its commit. That one
    // path takes more than loom's default 1,000 branches, none of them a livelock
    // (the model still explores every interleaving within the preemption bound).
    let mut builder = loom::model::Builder::new();
    builder.max_branches = builder.max_branches.max(20_000);
    builder.check(|| {
        let engine = Arc::new(
            Engine::in_memory_with(Options {
                max_conflicts: 3,
                escalation: Escalation::StopTheWorld,
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

/// The body of the key-lock model's commands: appends `tag` to `k`.
fn append(tx: &mut Tx<'_>, tag: u8) -> shardstone::Result<()> {
    let mut v = tx.get(b"k")?.map_or_else(Vec::new, |v| v.into_vec());
    v.push(tag);
    tx.put(b"k", &v)
}

/// Set once some execution of the key-lock model took the wait path: the
/// optimistic commit found `k` locked and waited for its release.
static WAITED_FOR_THE_KEY: AtomicBool = AtomicBool::new(false);

/// Under `Escalation::KeyLocks` (the default), `run_blocking` appends `a` to `k`
/// (it locks `k` before reading it) while an ordinary command appends `b` to `k`,
/// before, during or after it. When the ordinary commit finds `k` locked it is
/// `Blocked` and waits in `KeyLocks::wait_released` until the escalated command
/// releases `k`. Loom's timed waits never time out, so a lost wakeup is a loom
/// deadlock. Both commands commit, once each; `k` ends as one of the two serial
/// orders, with as many appends as commit ids.
#[test]
fn a_blocked_commit_waits_for_the_key_and_is_woken() {
    WAITED_FOR_THE_KEY.store(false, std::sync::atomic::Ordering::SeqCst);
    loom::model(|| {
        let engine = Arc::new(Engine::in_memory_with(Options::default()).unwrap());
        assert_eq!(Options::default().escalation, Escalation::KeyLocks);
        let t = {
            let engine = engine.clone();
            thread::spawn(move || engine.run("append_b", |tx| append(tx, b'b')).unwrap())
        };
        engine
            .run_blocking("append_a", |tx| append(tx, b'a'))
            .unwrap();
        t.join().unwrap();
        let k = engine
            .snapshot()
            .get(b"k")
            .unwrap()
            .map_or_else(Vec::new, |v| v.into_vec());
        assert!(
            k == b"ab" || k == b"ba",
            "k is {:?}, not a serial order of the two appends",
            String::from_utf8_lossy(&k)
        );
        assert_eq!(engine.commit_id().get(), 2, "one commit id per command");
        let stats = engine.stats();
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.escalations, 1);
        // The escalated run counts one (empty) wait for its footprint; a second
        // is the ordinary command's wait for `k`.
        if stats.blocking_queue.lock_waits >= 2 {
            WAITED_FOR_THE_KEY.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        WAITED_FOR_THE_KEY.load(std::sync::atomic::Ordering::SeqCst),
        "no execution made the ordinary commit wait for the locked key"
    );
}
