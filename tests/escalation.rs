//! Escalation that never stops the world (issue 14): escalated commands hold
//! locks on the keys they touch, not the whole engine; every wait is bounded.

mod common;

use common::{dec, enc, Rng};
use shardstone::{Engine, Error, Escalation, Options};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine(lock_wait: Duration) -> Arc<Engine> {
    Arc::new(
        Engine::in_memory_with(Options {
            lock_wait,
            ..Options::default()
        })
        .unwrap(),
    )
}

fn counter(e: &Engine, key: &[u8]) -> u64 {
    e.snapshot().get(key).unwrap().map_or(0, |v| dec(&v))
}

/// Spins until `flag` is set, for at most ten seconds (a test bound, not a
/// timing assertion: it only keeps a broken engine from hanging the suite).
fn wait_for(flag: &AtomicBool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < until, "the other command never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An escalated command that waits, inside the command, for another thread's
/// command on a different key: the other commits at once (nothing is stopped),
/// and both finish. Bedrock's policy would deadlock here.
#[test]
fn an_escalated_command_waiting_on_another_command_on_another_key_finishes() {
    for blocking in [true, false] {
        let e = Arc::new(
            Engine::in_memory_with(Options {
                max_conflicts: 0, // `run` escalates at once, like `run_blocking`
                lock_wait: Duration::from_secs(30),
                ..Options::default()
            })
            .unwrap(),
        );
        let (tx_done, rx_done) = mpsc::channel();
        let inside = Arc::new(AtomicBool::new(false));
        let (e2, inside2) = (e.clone(), inside.clone());
        let helper = std::thread::spawn(move || {
            // Runs once the escalated command below is under way.
            wait_for(&inside2);
            let r = e2.run("helper", |tx| tx.put(b"other", b"1"));
            tx_done.send(r.is_ok()).unwrap();
        });
        let body = |tx: &mut shardstone::Tx<'_>| {
            tx.put(b"mine", b"1")?;
            inside.store(true, Ordering::SeqCst);
            // Wait for the helper's commit, from inside this command.
            Ok(rx_done
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or(false))
        };
        let helped = if blocking {
            e.run_blocking("escalated", body).unwrap()
        } else {
            e.run("escalated", body).unwrap()
        };
        helper.join().unwrap();
        assert!(
            helped,
            "the helper committed while the escalated command ran"
        );
        let snap = e.snapshot();
        assert_eq!(snap.get(b"mine").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(snap.get(b"other").unwrap().as_deref(), Some(&b"1"[..]));
    }
}

/// The same, with the helper writing the key the escalated command holds: the
/// helper gets `Timeout` within the lock-wait limit, nothing of it is committed,
/// and the escalated command then finishes.
#[test]
fn a_command_waiting_for_a_held_key_gets_a_typed_error_not_a_hang() {
    let e = engine(Duration::from_millis(200));
    let (tx_done, rx_done) = mpsc::channel();
    let inside = Arc::new(AtomicBool::new(false));
    let (e2, inside2) = (e.clone(), inside.clone());
    let started = Instant::now();
    let helper = std::thread::spawn(move || {
        wait_for(&inside2);
        let r = e2.run("helper", |tx| {
            tx.put(b"helper-was-here", b"1")?;
            tx.put(b"k", b"helper")
        });
        tx_done.send(r).unwrap();
    });
    let got = e
        .run_blocking("holder", |tx| {
            tx.put(b"k", b"holder")?;
            inside.store(true, Ordering::SeqCst);
            Ok(rx_done.recv_timeout(Duration::from_secs(20)).ok())
        })
        .unwrap();
    helper.join().unwrap();
    match got {
        Some(Err(Error::Timeout { command, key, .. })) => {
            assert_eq!((command.as_str(), key.as_slice()), ("helper", &b"k"[..]));
        }
        other => panic!("the helper should have timed out, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let snap = e.snapshot();
    assert_eq!(snap.get(b"k").unwrap().as_deref(), Some(&b"holder"[..]));
    assert_eq!(
        snap.get(b"helper-was-here").unwrap(),
        None,
        "nothing half-committed"
    );
    let st = e.stats();
    assert!(st.blocking_queue.timeouts >= 1, "{:?}", st.blocking_queue);
    assert!(st.blocking_queue.lock_waits >= 1, "{:?}", st.blocking_queue);
}

/// Two blocking commands on disjoint keys, each waiting inside itself for the
/// other to have started: they run at the same time, so both finish.
#[test]
fn escalated_commands_on_disjoint_keys_run_in_parallel() {
    let e = engine(Duration::from_secs(30));
    let flags = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (e, flags) = (e.clone(), flags.clone());
            std::thread::spawn(move || {
                e.run_blocking("pair", |tx| {
                    tx.put(&[b'k', i as u8], b"1")?;
                    flags[i].store(true, Ordering::SeqCst);
                    wait_for(&flags[1 - i]);
                    Ok(())
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(e.stats().escalations, 2);
}

/// Two escalated commands that each hold a key and then want the other's: one
/// gets `Deadlock` (at once, not after the lock-wait limit) and the other commits.
#[test]
fn a_cycle_of_escalated_commands_is_a_deadlock_error() {
    let e = engine(Duration::from_secs(60));
    let flags = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (e, flags) = (e.clone(), flags.clone());
            std::thread::spawn(move || {
                let (mine, theirs) = if i == 0 { (b"a", b"b") } else { (b"b", b"a") };
                e.run_blocking("cross", |tx| {
                    tx.get(mine)?;
                    flags[i].store(true, Ordering::SeqCst);
                    wait_for(&flags[1 - i]);
                    tx.put(theirs, b"1")?;
                    tx.put(mine, b"1")
                })
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let deadlocks = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Deadlock { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((deadlocks, ok), (1, 1), "{results:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "found by the lock table, not the limit"
    );
    assert_eq!(e.stats().blocking_queue.deadlocks, 1);
}

/// Admission: with one escalated command allowed and none waiting, a second
/// one with a deadline is turned away with `Overloaded`.
#[test]
fn a_full_blocking_queue_turns_away_a_command_with_a_deadline() {
    let e = Arc::new(
        Engine::in_memory_with(Options {
            max_conflicts: 0,
            max_escalated: 1,
            max_queued: 0,
            ..Options::default()
        })
        .unwrap(),
    );
    let inside = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (e2, inside2, release2) = (e.clone(), inside.clone(), release.clone());
    let holder = std::thread::spawn(move || {
        e2.run("holder", |tx| {
            tx.put(b"h", b"1")?;
            inside2.store(true, Ordering::SeqCst);
            wait_for(&release2);
            Ok(())
        })
    });
    wait_for(&inside);
    let r = e.run_with_deadline("late", Instant::now() + Duration::from_millis(50), |tx| {
        tx.put(b"l", b"1")
    });
    assert!(matches!(r, Err(Error::Overloaded { .. })), "{r:?}");
    release.store(true, Ordering::SeqCst);
    holder.join().unwrap().unwrap();
    // With room again, the same command is admitted.
    e.run_with_deadline("late", Instant::now() + Duration::from_secs(10), |tx| {
        tx.put(b"l", b"1")
    })
    .unwrap();
    assert_eq!(e.stats().blocking_queue.overloaded, 1);
}

/// The seed-002 shape: slow commands read-modify-write the hot keys that fast
/// commands use. Every command completes (or fails with a documented error), no
/// increment is lost, and under key locks nobody waits for the slow commands
/// except on their keys. Run under both policies.
#[test]
fn a_storm_of_slow_commands_on_hot_keys_starves_nobody() {
    for policy in [Escalation::KeyLocks, Escalation::StopTheWorld] {
        let e = Arc::new(
            Engine::in_memory_with(Options {
                max_conflicts: 2,
                escalation: policy,
                lock_wait: Duration::from_secs(30),
                ..Options::default()
            })
            .unwrap(),
        );
        let done = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (e, done) = (e.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t + 1);
                    let mut mine = 0u64;
                    for i in 0..150u64 {
                        let slow = t == 0 && i % 10 == 0;
                        let key = [b'h', rng.below(4) as u8];
                        let r = e.run(if slow { "slow" } else { "fast" }, |tx| {
                            let n = tx.get(&key)?.map_or(0, |v| dec(&v));
                            if slow {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            tx.put(&key, &enc(n + 1))
                        });
                        match r {
                            Ok(()) => mine += 1,
                            Err(Error::Timeout { .. } | Error::Deadlock { .. }) => {}
                            Err(other) => panic!("{policy:?}: undocumented error {other}"),
                        }
                    }
                    done.fetch_add(mine, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = (0..4u8).map(|k| counter(&e, &[b'h', k])).sum();
        assert_eq!(
            total,
            done.load(Ordering::SeqCst),
            "{policy:?}: no lost increment"
        );
        assert_eq!(total, 600, "{policy:?}: every command completed");
    }
}
