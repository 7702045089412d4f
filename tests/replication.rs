//! Replication under load, through the public API: feed consumers paused and
//! resumed while several threads commit (in memory, and on disk with a window
//! small enough that they must read the journal files), followers that stay
//! identical to their leader, fork and gap detection between diverged leaders,
//! truncation under retention limits, subscriptions starting mid-stream, the
//! feed's lag statistics, and journal layouts made on purpose (commits pinned
//! to one shard or the other) where the shards' segments roll or are deleted
//! at different commits.
//!
//! Tests that run threads go through `watchdog`: a deadlock fails the test
//! instead of hanging the run.

mod common;

use common::{assert_entries, cpus_for_shards, model_entries, pin, scan, Rng, TempDir};
use shardstone::{
    ChainHash, CommitRecord, Durability, Engine, Error, Feed, Op, Options, StateDigest,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options for an engine with files: buffered commits, two shards, 64 KiB
/// segments and a feed window of `window` bytes.
fn file_opts(window: usize) -> Options {
    Options {
        durability: Durability::Buffered,
        journal_shards: 2,
        segment_size: 64 * 1024,
        feed_window_bytes: window,
        ..Default::default()
    }
}

/// How long a test waits for something that should happen quickly before it
/// declares the engine stuck.
const STUCK: Duration = Duration::from_secs(30);

/// Runs a test body on a thread of its own and fails the test if it has not
/// finished within two minutes: an engine deadlock fails the test
/// instead of hanging it (the stuck thread is left behind).
fn watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    const LIMIT: Duration = Duration::from_secs(120);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let result = f();
        let _ = tx.send(());
        result
    });
    match rx.recv_timeout(LIMIT) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished after {LIMIT:?} (a deadlock?)")
        }
        // Finished, or panicked (the sender was dropped).
        _ => handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
    }
}

/// The bytes a record takes in the engine's in-memory window: the 64-byte frame
/// header plus the record body (`encode` is both hashes, 64 bytes, plus the body).
fn frame_bytes(rec: &CommitRecord) -> u64 {
    rec.encode().unwrap().len() as u64
}

/// The record body's length: what `ConsumerStats::lag_bytes` counts.
fn body_bytes(rec: &CommitRecord) -> u64 {
    frame_bytes(rec) - 64
}

/// One command's writes, chosen before it runs (a command may re-run after a
/// conflict, so it must do the same thing each time).
struct Cmd {
    name: &'static str,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Also read-modify-write this counter key (adds conflicts and retries).
    counter: Option<Vec<u8>>,
}

fn key(k: u64) -> Vec<u8> {
    format!("key{k:06}").into_bytes()
}

/// A random command over `keys` keys: single puts and deletes, multi-key
/// commands (some of which write one key twice), and read-modify-writes.
fn random_cmd(rng: &mut Rng, keys: u64) -> Cmd {
    let value = |rng: &mut Rng| rng.bytes_between(1, 40);
    match rng.below(10) {
        0..=3 => Cmd {
            name: "put",
            writes: vec![(key(rng.below(keys)), Some(value(rng)))],
            counter: None,
        },
        4 | 5 => Cmd {
            name: "delete",
            writes: vec![(key(rng.below(keys)), None)],
            counter: None,
        },
        6..=8 => {
            let n = rng.range_incl(2, 6);
            let writes = (0..n)
                .map(|_| {
                    let k = key(rng.below(keys));
                    let v = (!rng.chance(1, 4)).then(|| value(rng));
                    (k, v)
                })
                .collect();
            Cmd {
                name: "multi",
                writes,
                counter: None,
            }
        }
        _ => Cmd {
            name: "incr",
            writes: vec![(key(rng.below(keys)), Some(value(rng)))],
            counter: Some(format!("counter{}", rng.below(4)).into_bytes()),
        },
    }
}

fn run_cmd(engine: &Engine, cmd: &Cmd) {
    engine
        .run(cmd.name, |tx| {
            for (k, v) in &cmd.writes {
                match v {
                    Some(v) => tx.put(k, v)?,
                    None => {
                        tx.delete(k)?;
                    }
                }
            }
            if let Some(c) = &cmd.counter {
                let n = tx.get(c)?.map_or(0, |v| common::dec(&v)) + 1;
                tx.put(c, &common::enc(n))?;
            }
            Ok(())
        })
        .unwrap();
}

/// `threads` threads each running `per_thread` random commands.
fn write_concurrently(engine: &Engine, threads: u64, per_thread: u64, keys: u64, seed: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(seed * 1000 + t);
                for _ in 0..per_thread {
                    run_cmd(engine, &random_cmd(&mut rng, keys));
                }
            });
        }
    });
}

/// Replays records' ops into a map.
fn replay(records: &[CommitRecord]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for rec in records {
        for op in &rec.ops {
            match op {
                Op::Put { key, value } => {
                    model.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    model.remove(key);
                }
            }
        }
    }
    model
}

/// Checks that `records` are exactly the commits `from + 1 ..= from + len`, each
/// chained to the one before (the first to `prev`, when known).
#[track_caller]
fn assert_consecutive(what: &str, records: &[CommitRecord], from: u64, prev: Option<ChainHash>) {
    let mut prev = prev;
    for (i, rec) in records.iter().enumerate() {
        let want = from + 1 + i as u64;
        assert_eq!(
            rec.commit_id.get(),
            want,
            "{what}: record {i} has the wrong commit id"
        );
        if let Some(p) = prev {
            assert_eq!(rec.prev_hash, p, "{what}: commit {want} is not chained");
        }
        assert!(!rec.ops.is_empty(), "{what}: commit {want} has no ops");
        prev = Some(rec.hash);
    }
}

/// Checks a complete stream from commit 1: consecutive and chained from the
/// genesis hash, ending at the engine's last commit, and replaying to exactly
/// what the engine holds.
#[track_caller]
fn assert_whole_history(what: &str, records: &[CommitRecord], engine: &Engine) {
    assert_consecutive(what, records, 0, Some(ChainHash::genesis()));
    let (last, hash) = engine.last_commit();
    assert_eq!(records.len() as u64, last.get(), "{what}: record count");
    assert_eq!(records.last().unwrap().hash, hash, "{what}: final hash");
    let model = replay(records);
    assert_entries(what, &scan(&engine.snapshot()), &model_entries(&model));
}

/// The next record, failing the test (instead of hanging it) if none comes.
#[track_caller]
fn next_rec(feed: &mut Feed, what: &str) -> CommitRecord {
    match feed.recv_timeout(STUCK) {
        Ok(Some(r)) => r,
        Ok(None) => panic!(
            "{what}: no record within {STUCK:?} (position {})",
            Feed::position(feed).get()
        ),
        Err(e) => panic!(
            "{what}: error at position {}: {e}",
            Feed::position(feed).get()
        ),
    }
}

/// The next `n` records.
#[track_caller]
fn take(feed: &mut Feed, n: u64, what: &str) -> Vec<CommitRecord> {
    (0..n).map(|_| next_rec(feed, what)).collect()
}

/// Joins a scoped thread, passing its panic on with its own message.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Waits until `engine` has made `n` more commits than `from`, or `stop` is set.
fn wait_commits(engine: &Engine, from: u64, n: u64, stop: &AtomicBool) {
    while engine.commit_id().get() < from + n && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// The lag of one consumer in `engine.stats().feed`, found by name.
fn consumer_stats(engine: &Engine, name: Option<&str>) -> shardstone::ConsumerStats {
    let stats = engine.stats();
    let mut found = stats.feed.into_iter().filter(|c| c.name.as_deref() == name);
    let c = found.next().expect("the consumer is attached");
    assert!(found.next().is_none(), "one consumer named {name:?}");
    c
}

// ---------------------------------------------------------------------------
// 1. Concurrent writers, consumers paused and resumed at random moments.
// ---------------------------------------------------------------------------

/// A pause: the consumer's position when it was resumed (it delivers nothing
/// while paused) and the engine's commit id then.
#[derive(Clone, Copy, Debug)]
struct Pause {
    position: u64,
    resumed_at: u64,
}

/// Pauses and resumes one consumer at random moments until `stop`; returns the
/// pauses. The first pause is a long one.
fn pause_randomly(
    engine: &Engine,
    name: Option<&str>,
    pause: &dyn Fn(bool),
    stop: &AtomicBool,
    seed: u64,
) -> Vec<Pause> {
    let mut rng = Rng::new(seed);
    let mut pauses = Vec::new();
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        let now = engine.commit_id().get();
        wait_commits(engine, now, rng.range_incl(20, 400), stop);
        pause(true);
        let now = engine.commit_id().get();
        let len = if first {
            1500
        } else {
            rng.range_incl(100, 1500)
        };
        first = false;
        wait_commits(engine, now, len, stop);
        let position = consumer_stats(engine, name).position.get();
        let resumed_at = engine.commit_id().get();
        pause(false);
        pauses.push(Pause {
            position,
            resumed_at,
        });
    }
    pauses
}

/// Reads `feed` until `stop` is set and it delivered `last` (set once the
/// writers are done); acks as it goes.
fn consume_until(
    mut feed: Feed,
    stop: &AtomicBool,
    last: &AtomicU64,
    what: &str,
) -> Vec<CommitRecord> {
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match feed.recv_timeout(Duration::from_millis(5)) {
            Ok(Some(r)) => {
                if r.commit_id.get().is_multiple_of(64) {
                    feed.ack(r.commit_id);
                }
                records.push(r);
            }
            Ok(None) => {
                if stop.load(Ordering::SeqCst)
                    && feed.position().get() >= last.load(Ordering::SeqCst)
                {
                    return records;
                }
            }
            Err(e) => panic!(
                "{what}: error at position {} (writers {}): {e:?}",
                feed.position().get(),
                match last.load(Ordering::SeqCst) {
                    u64::MAX => "still running".to_owned(),
                    n => format!("done at commit {n}"),
                }
            ),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stuck at position {}",
            feed.position().get()
        );
    }
}

/// Four writers; consumer "a" (unnamed) paused through `Feed::control`, "b"
/// (named) through `Engine::pause_consumer`. Returns each consumer's records and
/// pauses.
#[allow(clippy::type_complexity)]
fn writers_with_paused_consumers(
    engine: &Engine,
    per_thread: u64,
    seed: u64,
) -> [(Vec<CommitRecord>, Vec<Pause>); 2] {
    let feed_a = engine.subscribe(0).unwrap();
    let feed_b = engine.subscribe_as("b", 0).unwrap();
    let control_a = feed_a.control();
    let writers_done = AtomicBool::new(false);
    let last = AtomicU64::new(u64::MAX);
    std::thread::scope(|s| {
        let (done, last) = (&writers_done, &last);
        let a = s.spawn(move || consume_until(feed_a, done, last, "consumer a"));
        let b = s.spawn(move || consume_until(feed_b, done, last, "consumer b"));
        let pauser_a = s.spawn(move || {
            let pause = |p: bool| {
                if p {
                    control_a.pause()
                } else {
                    control_a.resume()
                }
            };
            pause_randomly(engine, None, &pause, done, seed + 1)
        });
        let pauser_b = s.spawn(move || {
            let pause = |p: bool| {
                if p {
                    engine.pause_consumer("b").unwrap()
                } else {
                    engine.resume_consumer("b").unwrap()
                }
            };
            pause_randomly(engine, Some("b"), &pause, done, seed + 2)
        });
        write_concurrently(engine, 4, per_thread, 500, seed);
        last.store(engine.commit_id().get(), Ordering::SeqCst);
        writers_done.store(true, Ordering::SeqCst);
        // The consumers first: a failure there is the one to report (a pauser
        // then fails too, its consumer gone).
        let (a, b) = (join(a), join(b));
        [(a, join(pauser_a)), (b, join(pauser_b))]
    })
}

/// The bytes of the records a consumer had to catch up on at each resume: the
/// commits after its position, up to the engine's commit id then.
fn caught_up_bytes(records: &[CommitRecord], pauses: &[Pause]) -> Vec<u64> {
    pauses
        .iter()
        .map(|p| {
            records[p.position as usize..p.resumed_at as usize]
                .iter()
                .map(frame_bytes)
                .sum()
        })
        .collect()
}

#[test]
fn paused_consumers_see_every_commit_in_order_in_memory() {
    watchdog("paused, in memory", || {
        let engine = Engine::in_memory().unwrap();
        let results = writers_with_paused_consumers(&engine, 3000, 11);
        for ((records, pauses), what) in results.iter().zip(["consumer a", "consumer b"]) {
            assert_whole_history(what, records, &engine);
            assert!(!pauses.is_empty(), "{what} was paused");
        }
        assert_eq!(results[0].0, results[1].0);
        for c in engine.stats().feed {
            assert_eq!((c.lag_commits, c.paused), (0, false), "{c:?}");
        }
    });
}

#[test]
fn paused_consumers_see_every_commit_in_order_reading_the_journal_files() {
    watchdog("paused, files", || {
        let dir = TempDir::new("paused");
        let window = 16 * 1024;
        let engine = Engine::open_with(dir.path(), file_opts(window)).unwrap();
        let results = writers_with_paused_consumers(&engine, 3000, 12);
        for ((records, pauses), what) in results.iter().zip(["consumer a", "consumer b"]) {
            assert_whole_history(what, records, &engine);
            // The longest catch-up was far more than the window holds: it was read
            // from the journal files.
            let most = caught_up_bytes(records, pauses).into_iter().max().unwrap();
            assert!(
                most >= 8 * window as u64,
                "{what}: caught up on at most {most} bytes after a pause; the window is {window}"
            );
        }
        assert_eq!(results[0].0, results[1].0);
        // The files hold the same history after a restart.
        drop(engine);
        let engine = Engine::open_with(dir.path(), file_opts(window)).unwrap();
        let n = results[0].0.len() as u64;
        let records = take(&mut engine.subscribe(0).unwrap(), n, "after restart");
        assert_whole_history("after restart", &records, &engine);
    });
}

// ---------------------------------------------------------------------------
// 2. Followers stay identical to their leader.
// ---------------------------------------------------------------------------

/// Runs `threads * per_thread` random commands on `leader` while a pump applies
/// its feed (from the follower's last commit) to `follower`. Every so often the
/// pump is held at the id of a fresh leader snapshot and the two digests are
/// compared there. Returns the number of such comparisons.
fn replicate_under_load(
    leader: &Engine,
    follower: &Engine,
    threads: u64,
    per_thread: u64,
    seed: u64,
) -> usize {
    let start = follower.commit_id().get();
    let gate = AtomicU64::new(start);
    let done = AtomicBool::new(false);
    let pump_failed = AtomicBool::new(false);
    let mut feed = leader.subscribe(start).unwrap();
    let compared = std::thread::scope(|s| {
        let (gate, done, pump_failed) = (&gate, &done, &pump_failed);
        let pump = s.spawn(move || {
            let _failed = OnPanic(|| pump_failed.store(true, Ordering::SeqCst));
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let rec = match feed.recv_timeout(Duration::from_millis(5)).unwrap() {
                    Some(rec) => rec,
                    None if done.load(Ordering::SeqCst)
                        && follower.commit_id() == leader.commit_id() =>
                    {
                        return
                    }
                    None => continue,
                };
                while rec.commit_id.get() > gate.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_micros(200));
                    assert!(Instant::now() < deadline, "the pump is stuck");
                }
                follower.apply(&rec).unwrap();
            }
        });
        let checker = s.spawn(move || {
            // If a comparison fails, the pump must not wait for it.
            let _failed = OnPanic(|| gate.store(u64::MAX, Ordering::SeqCst));
            let mut compared = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let snap = leader.snapshot();
                let at = snap.commit_id().get();
                let want = snap.state_digest().unwrap();
                gate.store(at, Ordering::SeqCst);
                let deadline = Instant::now() + STUCK;
                while follower.commit_id().get() < at {
                    std::thread::sleep(Duration::from_micros(200));
                    assert!(!pump_failed.load(Ordering::SeqCst), "the pump failed");
                    assert!(Instant::now() < deadline, "the follower is stuck");
                }
                // The pump is held at `at`: the follower is exactly there.
                let got = follower.snapshot();
                assert_eq!(got.commit_id().get(), at);
                assert_eq!(got.state_digest().unwrap(), want, "digests at commit {at}");
                compared += 1;
                if finished {
                    gate.store(u64::MAX, Ordering::SeqCst);
                    return compared;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        write_concurrently(leader, threads, per_thread, 2000, seed);
        done.store(true, Ordering::SeqCst);
        // The pump first: if it failed, the checker only waits for it.
        join(pump);
        join(checker)
    });
    assert_eq!(follower.last_commit(), leader.last_commit());
    assert_same_state(leader, follower);
    compared
}

/// Runs its closure when dropped during a panic.
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)()
        }
    }
}

#[track_caller]
fn assert_same_state(a: &Engine, b: &Engine) {
    let (sa, sb) = (a.snapshot(), b.snapshot());
    assert_eq!(sa.commit_id(), sb.commit_id());
    let (da, db): (StateDigest, StateDigest) =
        (sa.state_digest().unwrap(), sb.state_digest().unwrap());
    assert_eq!(da, db);
    assert_entries("follower vs leader", &scan(&sb), &scan(&sa));
}

#[test]
fn a_follower_matches_its_leader_after_100k_concurrent_commands() {
    watchdog("100k", || {
        let leader = Engine::in_memory().unwrap();
        let follower = Engine::in_memory_follower(Options::default()).unwrap();
        let started = Instant::now();
        let compared = replicate_under_load(&leader, &follower, 4, 25_000, 21);
        eprintln!(
            "100k commands replicated in {:?}, digests compared at {compared} commit ids",
            started.elapsed()
        );
        assert_eq!(leader.commit_id().get(), 100_000);
        assert!(compared >= 2);
    });
}

#[test]
fn a_durable_follower_resumes_at_its_last_commit_after_a_reopen() {
    watchdog("durable follower", || {
        let dir = TempDir::new("follower");
        let opts = file_opts(1 << 20);
        let leader = Engine::in_memory().unwrap();
        let before = {
            let follower = Engine::open_follower(dir.path(), opts.clone()).unwrap();
            replicate_under_load(&leader, &follower, 4, 3000, 22);
            let last = follower.last_commit();
            follower.close().unwrap();
            last
        };
        assert_eq!(before, leader.last_commit());
        let follower = Engine::open_follower(dir.path(), opts).unwrap();
        assert!(follower.is_follower());
        assert_eq!(follower.last_commit(), before);
        assert_same_state(&leader, &follower);
        assert!(matches!(
            follower.run("w", |tx| tx.put(b"k", b"v")),
            Err(Error::ReadOnly)
        ));
        // It goes on applying from where it was.
        replicate_under_load(&leader, &follower, 4, 1000, 23);
        assert_eq!(follower.commit_id().get(), 16_000);
    });
}

// ---------------------------------------------------------------------------
// 3. Forks and gaps between leaders that share a prefix.
// ---------------------------------------------------------------------------

/// `n` records of `engine`'s feed after `from`.
fn records_of(engine: &Engine, from: u64, n: u64) -> Vec<CommitRecord> {
    take(&mut engine.subscribe(from).unwrap(), n, "records_of")
}

/// Applies `rec` to `follower`, which must refuse it; `check` looks at the
/// error. Checks that nothing changed: last commit and state digest.
#[track_caller]
fn apply_fails(follower: &Engine, rec: &CommitRecord, check: impl FnOnce(Error)) {
    let before = (
        follower.last_commit(),
        follower.snapshot().state_digest().unwrap(),
    );
    match follower.apply(rec) {
        Ok(()) => panic!("commit {} was applied", rec.commit_id.get()),
        Err(e) => check(e),
    }
    let after = (
        follower.last_commit(),
        follower.snapshot().state_digest().unwrap(),
    );
    assert_eq!(after, before, "a refused record changed the follower");
}

#[test]
fn forks_between_leaders_sharing_a_prefix_and_gaps_both_ways() {
    const K: u64 = 200;
    let a = Engine::in_memory().unwrap();
    write_concurrently(&a, 2, 150, 100, 31);
    let a_recs = records_of(&a, 0, 300);

    // B shares A's first K commits, then is promoted and goes its own way.
    let b = Engine::in_memory_follower(Options::default()).unwrap();
    for rec in &a_recs[..K as usize] {
        b.apply(rec).unwrap();
    }
    b.promote();
    write_concurrently(&b, 2, 50, 100, 32);
    let b_recs = records_of(&b, 0, K + 100);
    assert_eq!(b_recs[..K as usize], a_recs[..K as usize]);
    for i in K as usize..K as usize + 100 {
        assert_ne!(a_recs[i].hash, b_recs[i].hash, "commit {} differs", i + 1);
    }

    // F follows A up to J > K; B's next record forks from there.
    let f = Engine::in_memory_follower(Options::default()).unwrap();
    let j = K + 37;
    for rec in &a_recs[..j as usize] {
        f.apply(rec).unwrap();
    }
    apply_fails(&f, &b_recs[j as usize], |e| match e {
        Error::Fork {
            commit_id,
            ours,
            theirs,
        } => {
            assert_eq!(commit_id.get(), j);
            assert_eq!(ours, a_recs[j as usize - 1].hash);
            assert_eq!(theirs, b_recs[j as usize - 1].hash);
        }
        e => panic!("expected Fork, got {e:?}"),
    });
    // B's record claiming A's hash: it does not hash to what it claims.
    let mut lying = b_recs[j as usize].clone();
    lying.prev_hash = a_recs[j as usize - 1].hash;
    lying.hash = a_recs[j as usize].hash;
    apply_fails(&f, &lying, |e| match e {
        Error::Fork {
            commit_id,
            theirs,
            ours,
        } => {
            assert_eq!(commit_id.get(), j + 1);
            assert_eq!(theirs, a_recs[j as usize].hash);
            assert_ne!(ours, theirs);
        }
        e => panic!("expected Fork, got {e:?}"),
    });
    // Gaps: too new (from either leader), and an id already applied.
    for rec in [&a_recs[j as usize + 1], &b_recs[j as usize + 5]] {
        apply_fails(&f, rec, |e| match e {
            Error::Gap { expected, got } => {
                assert_eq!((expected.get(), got), (j + 1, rec.commit_id))
            }
            e => panic!("expected Gap, got {e:?}"),
        });
    }
    for old in [1, K, j] {
        for recs in [&a_recs, &b_recs] {
            apply_fails(&f, &recs[old as usize - 1], |e| match e {
                Error::Gap { expected, got } => {
                    assert_eq!((expected.get(), got.get()), (j + 1, old))
                }
                e => panic!("expected Gap, got {e:?}"),
            });
        }
    }
    // Nothing was applied: F goes on with A.
    for rec in &a_recs[j as usize..] {
        f.apply(rec).unwrap();
    }
    assert_eq!(f.last_commit(), a.last_commit());
    assert_same_state(&a, &f);

    // G follows A up to exactly K: B's K+1 continues that history, so it is
    // applied; A's K+2 then forks at K+1.
    let g = Engine::in_memory_follower(Options::default()).unwrap();
    for rec in &a_recs[..K as usize] {
        g.apply(rec).unwrap();
    }
    g.apply(&b_recs[K as usize]).unwrap();
    assert_eq!(
        g.last_commit(),
        (b_recs[K as usize].commit_id, b_recs[K as usize].hash)
    );
    apply_fails(&g, &a_recs[K as usize + 1], |e| match e {
        Error::Fork {
            commit_id,
            ours,
            theirs,
        } => {
            assert_eq!(commit_id.get(), K + 1);
            assert_eq!(ours, b_recs[K as usize].hash);
            assert_eq!(theirs, a_recs[K as usize].hash);
        }
        e => panic!("expected Fork, got {e:?}"),
    });
    for rec in &b_recs[K as usize + 1..] {
        g.apply(rec).unwrap();
    }
    assert_eq!(g.last_commit(), b.last_commit());
    assert_same_state(&b, &g);
}

// ---------------------------------------------------------------------------
// 4. Truncation and retention holds.
// ---------------------------------------------------------------------------

/// Bytes of every file in `dir` (the journal segments).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn a_lapsed_hold_truncates_while_an_acking_consumer_keeps_its_history() {
    watchdog("retention", || {
        let dir = TempDir::new("retention");
        let segment = 64 * 1024u64;
        let opts = Options {
            retention_limit_bytes: 256 * 1024,
            ..file_opts(16 * 1024)
        };
        let journal = dir.path().join("journal");
        let engine = Engine::open_with(dir.path(), opts.clone()).unwrap();
        let mut laggard = engine.subscribe_as("laggard", 0).unwrap();
        let mut steady = engine.subscribe_as("steady", 0).unwrap();
        let mut seen: Vec<CommitRecord> = Vec::new();
        let mut written = 0u64;
        let mut lapsed_at = None;
        let mut most_on_disk = 0;
        for round in 0..16u64 {
            // Two writers, ~150 KiB of records per round.
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let engine = &engine;
                    s.spawn(move || {
                        let mut rng = Rng::new(round * 10 + t);
                        for _ in 0..250 {
                            let k = key(rng.below(1000));
                            let v = rng.bytes(250);
                            engine.run("big", |tx| tx.put(&k, &v)).unwrap();
                        }
                    });
                }
            });
            // The steady consumer stays about 100 commits behind and acks.
            let behind = engine.commit_id().get() - 100;
            let n = behind - steady.position().get();
            let recs = take(&mut steady, n, "steady");
            assert_consecutive(
                "steady",
                &recs,
                seen.len() as u64,
                seen.last().map(|r| r.hash),
            );
            written += recs.iter().map(frame_bytes).sum::<u64>();
            seen.extend(recs);
            steady.ack(behind);
            engine.checkpoint().unwrap();
            assert_eq!(
                engine.consumer_position("steady").map(|c| c.get()),
                Some(behind)
            );
            match (engine.consumer_position("laggard"), lapsed_at) {
                (Some(p), None) => assert_eq!(p.get(), 0),
                (None, None) => lapsed_at = Some(round),
                (None, Some(_)) => {}
                (Some(p), Some(r)) => {
                    panic!("the laggard's hold lapsed in round {r}, then is at {p:?}")
                }
            }
            // At most what the laggard may hold, plus each shard's current
            // segment and its spare, prepared ahead of the next roll (files are
            // preallocated to the segment size).
            let on_disk = dir_bytes(&journal);
            most_on_disk = most_on_disk.max(on_disk);
            assert!(
                on_disk <= opts.retention_limit_bytes + 4 * segment,
                "round {round}: {on_disk} bytes of journal on disk"
            );
        }
        // ~150 KiB a round: past the 256 KiB limit within a few rounds.
        let lapsed_at = lapsed_at.expect("the laggard's hold lapsed");
        assert!(lapsed_at <= 3, "the hold lapsed in round {lapsed_at}");
        assert!(
            written > 8 * opts.retention_limit_bytes,
            "{written} bytes written"
        );
        eprintln!("lapsed in round {lapsed_at}; {written} bytes written; {most_on_disk} on disk");

        // The laggard's position is gone: Truncated, with a sensible oldest id.
        let oldest = match laggard.recv_timeout(STUCK) {
            Err(Error::Truncated { oldest_available }) => oldest_available.get(),
            other => panic!("expected Truncated, got {other:?}"),
        };
        let held = engine.consumer_position("steady").unwrap().get();
        assert!(
            oldest > 1 && oldest <= held + 1,
            "oldest available {oldest}, steady holds from {}",
            held + 1
        );
        let last = engine.commit_id().get();
        let recs = take(
            &mut engine.subscribe(oldest - 1).unwrap(),
            last - oldest + 1,
            "from oldest",
        );
        assert_consecutive("from oldest", &recs, oldest - 1, None);
        for r in &recs[..(held + 1 - oldest) as usize] {
            assert_eq!(r.hash, seen[r.commit_id.get() as usize - 1].hash);
        }

        // After a restart, the steady consumer resumes where it acked.
        let last_commit = engine.last_commit();
        drop((laggard, steady, engine));
        let engine = Engine::open_with(dir.path(), opts).unwrap();
        assert_eq!(engine.last_commit(), last_commit);
        assert_eq!(engine.consumer_position("laggard"), None);
        assert_eq!(
            engine.consumer_position("steady").map(|c| c.get()),
            Some(held)
        );
        let mut steady = engine.subscribe_as("steady", held).unwrap();
        let recs = take(&mut steady, last - held, "steady after restart");
        assert_consecutive(
            "steady after restart",
            &recs,
            held,
            Some(seen[held as usize - 1].hash),
        );
        assert_eq!(recs.last().unwrap().hash, last_commit.1);
        for r in recs
            .iter()
            .take_while(|r| r.commit_id.get() as usize <= seen.len())
        {
            assert_eq!(*r, seen[r.commit_id.get() as usize - 1]);
        }
        engine.run("live", |tx| tx.put(b"live", b"1")).unwrap();
        assert_eq!(
            next_rec(&mut steady, "steady live").commit_id.get(),
            last + 1
        );
        // A fresh subscription from the start is truncated too.
        match engine.subscribe(0).unwrap().recv_timeout(STUCK) {
            Err(Error::Truncated { oldest_available }) => {
                assert!(oldest_available.get() > 1 && oldest_available.get() <= held + 1)
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------
// 5. Subscriptions starting mid-stream.
// ---------------------------------------------------------------------------

#[test]
fn subscriptions_start_at_any_commit() {
    watchdog("mid-stream", || {
        let dir = TempDir::new("midstream");
        let window = 16 * 1024;
        let engine = Engine::open_with(dir.path(), file_opts(window)).unwrap();
        write_concurrently(&engine, 3, 1000, 300, 51);
        let n = engine.commit_id().get();
        let all = records_of(&engine, 0, n);
        assert_whole_history("all", &all, &engine);
        // The window holds the newest `in_window` commits.
        let mut in_window = 0;
        let mut bytes = 0;
        for r in all.iter().rev() {
            bytes += frame_bytes(r);
            if bytes > window as u64 {
                break;
            }
            in_window += 1;
        }
        assert!(
            in_window > 10 && in_window < n / 10,
            "{in_window} commits in the window"
        );

        let mut rng = Rng::new(52);
        let mut froms = vec![0, n, n - 1, n - in_window / 2, n - 3 * in_window, 1, n / 2];
        froms.extend((0..6).map(|_| rng.below(n + 1)));
        // From the window and from the files, each consumer on a thread of its
        // own, while commits go on.
        let extra = 500;
        std::thread::scope(|s| {
            let (engine, all) = (&engine, &all);
            let readers: Vec<_> = froms
                .iter()
                .map(|&from| {
                    let mut feed = engine.subscribe(from).unwrap();
                    s.spawn(move || {
                        let what = format!("from {from}");
                        let recs = take(&mut feed, n + extra - from, &what);
                        let prev = (from > 0).then(|| all[from as usize - 1].hash);
                        assert_consecutive(&what, &recs, from, prev);
                        for r in recs.iter().take_while(|r| r.commit_id.get() <= n) {
                            assert_eq!(*r, all[r.commit_id.get() as usize - 1], "{what}");
                        }
                    })
                })
                .collect();
            write_concurrently(engine, 2, extra / 2, 300, 53);
            readers.into_iter().for_each(join);
        });
        // After a restart everything comes from the files.
        let last = engine.last_commit();
        drop(engine);
        let engine = Engine::open_with(dir.path(), file_opts(window)).unwrap();
        assert_eq!(engine.last_commit(), last);
        for from in froms {
            let what = format!("from {from} after restart");
            let mut feed = engine.subscribe(from).unwrap();
            let recs = take(&mut feed, last.0.get() - from, &what);
            assert_consecutive(
                &what,
                &recs,
                from,
                (from > 0).then(|| all[from as usize - 1].hash),
            );
            if let Some(r) = recs.last() {
                assert_eq!(r.hash, last.1);
            }
            assert!(feed.try_next().unwrap().is_none());
        }
    });
}

// ---------------------------------------------------------------------------
// 6. Feed statistics.
// ---------------------------------------------------------------------------

/// Fixed-size commits (same command name, key and value lengths), so every
/// record body has the same length.
fn fixed_puts(engine: &Engine, from: u64, n: u64) {
    for i in from..from + n {
        engine
            .run("fixed", |tx| tx.put(&common::enc(i % 97), &common::enc(i)))
            .unwrap();
    }
}

#[test]
fn lag_statistics_follow_pauses_and_catching_up() {
    for window in [64 << 20, 4096] {
        let engine = Engine::in_memory_with(Options {
            feed_window_bytes: window,
            ..Default::default()
        })
        .unwrap();
        fixed_puts(&engine, 0, 10);
        let mut paused = engine.subscribe_as("paused", 0).unwrap();
        let mut live = engine.subscribe(0).unwrap();
        let body = body_bytes(&take(&mut paused, 10, "paused")[9]);
        take(&mut live, 10, "live");
        let c = consumer_stats(&engine, Some("paused"));
        assert_eq!(
            (c.position.get(), c.lag_commits, c.lag_bytes, c.paused),
            (10, 0, 0, false)
        );
        engine.pause_consumer("paused").unwrap();
        let mut made = 0;
        for batch in [1, 5, 50, 300] {
            // The live consumer keeps up commit by commit (the small window
            // would not hold a whole batch for it).
            for _ in 0..batch {
                fixed_puts(&engine, 10 + made, 1);
                made += 1;
                take(&mut live, 1, "live");
            }
            assert!(paused.try_next().unwrap().is_none());
            let c = consumer_stats(&engine, Some("paused"));
            assert_eq!(
                (c.position.get(), c.lag_commits, c.paused),
                (10, made, true),
                "window {window}"
            );
            // Exact while its position is in the window; estimated from the
            // window's mean record size (the same here) once it is not.
            assert_eq!(c.lag_bytes, made * body, "window {window}, {made} commits");
            let l = consumer_stats(&engine, None);
            assert_eq!(
                (l.position.get(), l.lag_commits, l.lag_bytes, l.paused),
                (10 + made, 0, 0, false)
            );
        }
        engine.resume_consumer("paused").unwrap();
        if window == 4096 {
            // It fell behind the in-memory window of an engine without files.
            assert!(matches!(paused.try_next(), Err(Error::Truncated { .. })));
            continue;
        }
        let recs = take(&mut paused, made, "paused");
        assert_consecutive("paused", &recs, 10, None);
        let c = consumer_stats(&engine, Some("paused"));
        assert_eq!(
            (c.position.get(), c.lag_commits, c.lag_bytes, c.paused),
            (10 + made, 0, 0, false)
        );
        // Through the control handle, on the unnamed consumer.
        let control = live.control();
        control.pause();
        fixed_puts(&engine, 10 + made, 7);
        let l = consumer_stats(&engine, None);
        assert_eq!((l.lag_commits, l.lag_bytes, l.paused), (7, 7 * body, true));
        control.resume();
        take(&mut live, 7, "live");
        assert_eq!(consumer_stats(&engine, None).lag_commits, 0);
        // A dropped feed leaves the stats (once its control handles are gone).
        drop((live, control));
        assert_eq!(engine.stats().feed.len(), 1);
    }
}

/// `Engine::stats` (which reports the journal's segments and every consumer's
/// lag) read over and over while commits roll the journal over to new segments.
#[test]
fn stats_can_be_read_while_commits_roll_journal_segments() {
    watchdog("stats while segments roll", || {
        let dir = TempDir::new("stats-roll");
        let engine = Engine::open_with(dir.path(), file_opts(1 << 20)).unwrap();
        let _idle = engine.subscribe_as("idle", 0).unwrap();
        let done = AtomicBool::new(false);
        let reads = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let stats = engine.stats();
                    assert_eq!(stats.feed.len(), 1);
                    reads += 1;
                }
                reads
            });
            // About 1.1 KiB a record: some 35 segments of 64 KiB.
            for i in 0..2000u64 {
                engine
                    .run("big", |tx| tx.put(&common::enc(i), &[5u8; 1000]))
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
            join(reader)
        });
        let stats = engine.stats();
        assert!(reads > 0);
        assert!(stats.journal.segments >= 20, "{:?}", stats.journal);
        assert_eq!(stats.feed[0].lag_commits, 2000);
    })
}

// ---------------------------------------------------------------------------
// 7. Journal layouts made on purpose: commits pinned to one shard or the other.
// ---------------------------------------------------------------------------

/// For each of two journal shards, a CPU this thread may run on whose commits
/// append to it; `None` without such CPUs.
fn cpus_for_two_shards() -> Option<[usize; 2]> {
    let cpus = cpus_for_shards(&file_opts(4096))?;
    Some([*cpus.first()?, *cpus.get(1)?])
}

/// Commits `ids` one at a time, commit `i` on shard `shard(i)` with a value of
/// `len(i)` bytes. Runs on a thread of its own (pinning changes its affinity).
fn pinned_puts(
    engine: &Engine,
    cpus: [usize; 2],
    ids: std::ops::RangeInclusive<u64>,
    shard: impl Fn(u64) -> usize + Sync,
    len: impl Fn(u64) -> usize + Sync,
) {
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in ids {
                pin(cpus[shard(i)]);
                let v = vec![7u8; len(i)];
                engine
                    .run("pinned", |tx| tx.put(&i.to_be_bytes(), &v))
                    .unwrap();
            }
        });
    });
}

/// A consumer reading the journal files (it is behind the window) while a shard
/// rolls over to a new segment: the reader it opened maps only the segments of
/// then, so it runs out of one shard while the other still has later commits.
/// No checkpoint was taken: nothing is missing, and nothing may be `Truncated`.
#[test]
fn a_reader_of_the_files_survives_a_segment_roll() {
    let Some(cpus) = cpus_for_two_shards() else {
        eprintln!("skipped: needs a CPU of each of two shards");
        return;
    };
    let dir = TempDir::new("roll");
    let engine = Engine::open_with(dir.path(), file_opts(4096)).unwrap();
    // Shard 0 takes two commits in three: the shards roll at different ids.
    let shard = |i: u64| usize::from(i.is_multiple_of(3));
    pinned_puts(&engine, cpus, 1..=100, shard, |_| 200);
    let mut feed = engine.subscribe(0).unwrap();
    // Commit 1 is long out of the 4 KiB window: the files are read.
    assert_eq!(next_rec(&mut feed, "first").commit_id.get(), 1);
    // About 270 bytes a record: both shards roll past their first 64 KiB.
    pinned_puts(&engine, cpus, 101..=1000, shard, |_| 200);
    let recs = take(&mut feed, 999, "after the rolls");
    assert_consecutive("after the rolls", &recs, 1, None);
    assert_eq!(recs.last().unwrap().hash, engine.last_commit().1);
}

/// After a checkpoint deletes the segments no hold needs, the shards' oldest
/// remaining segments start at different commits: between them only one
/// shard's commits are left. `Truncated { oldest_available }` must name a commit
/// from which a subscription gets every commit, not one followed by a gap.
#[test]
fn oldest_available_is_followed_by_every_commit() {
    let Some(cpus) = cpus_for_two_shards() else {
        eprintln!("skipped: needs a CPU of each of two shards");
        return;
    };
    let dir = TempDir::new("oldest");
    let engine = Engine::open_with(dir.path(), file_opts(4096)).unwrap();
    let mut replica = engine.subscribe_as("replica", 0).unwrap();
    // Shard 1 takes one commit in three, with larger values: it rolls to new
    // segments at other ids than shard 0.
    pinned_puts(
        &engine,
        cpus,
        1..=1000,
        |i| usize::from(i.is_multiple_of(3)),
        |i| if i.is_multiple_of(3) { 1000 } else { 200 },
    );
    take(&mut replica, 900, "replica");
    replica.ack(900);
    engine.checkpoint().unwrap();
    assert_eq!(
        engine.consumer_position("replica").map(|c| c.get()),
        Some(900)
    );
    let oldest = match engine.subscribe(0).unwrap().recv_timeout(STUCK) {
        Err(Error::Truncated { oldest_available }) => oldest_available.get(),
        other => panic!("expected Truncated, got {other:?}"),
    };
    assert!(oldest > 1 && oldest <= 901, "oldest available {oldest}");
    let what = format!("from oldest_available - 1 = {}", oldest - 1);
    let recs = take(
        &mut engine.subscribe(oldest - 1).unwrap(),
        1001 - oldest,
        &what,
    );
    assert_consecutive(&what, &recs, oldest - 1, None);
    assert_eq!(recs.last().unwrap().hash, engine.last_commit().1);
}
