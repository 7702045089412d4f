//! Replication over TCP on 127.0.0.1, in one process, with the protocol of
//! `examples/replicate.rs` (`examples/replicate/proto.rs`): followers catch up from
//! commit 0 and from the middle of the history, follow live writes, survive the
//! leader restarting (dropped and reopened from its directory, served on a new
//! listener) and end identical to it; a follower with another history reports the
//! fork, one whose leader lost commits reports that, and one too far behind a
//! checkpointed leader is told the journal is gone, while a named one is kept.

#[path = "../examples/replicate/proto.rs"]
mod proto;

mod common;

use common::TempDir;
use proto::{
    frame_too_large, handshake, Follower, Leader, LeaderCounters, Limits, Msg, Reader, Secret,
    Status, SyncError, HANDSHAKE_MAX_FRAME,
};
use shardstone::{ChainHash, CommitRecord, Durability, Engine, Error, Options};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The secret the leaders and followers of these tests share.
static SECRET: LazyLock<Secret> =
    LazyLock::new(|| Secret::new(b"the secret of the replicate_tcp tests").unwrap());

/// Every wait of these tests gives up (failing the test) after this long.
const LIMIT: Duration = Duration::from_secs(15);

fn opts() -> Options {
    Options {
        durability: Durability::Buffered,
        journal_shards: 2,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// Waits until `cond` holds; fails the test after `LIMIT`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key:{k:05}").into_bytes()
}

/// Commit number `i` of a deterministic history: puts, deletes and multi-key
/// commits over 500 keys. Two engines that run the same `i`s have the same chain.
fn step(engine: &Engine, command: &str, i: u64) {
    let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55;
    engine
        .run(command, |tx| {
            match i % 10 {
                0 => {
                    for j in 0..3 {
                        tx.put(&key((k + j) % 500), &i.to_le_bytes())?;
                    }
                }
                1 => {
                    tx.delete(&key(k))?;
                    tx.put(&key(k + 500), b"moved")?;
                }
                _ => tx.put(&key(k), format!("value {i}").as_bytes())?,
            }
            Ok(())
        })
        .unwrap();
}

/// Sets the flags when dropped: threads in a scope stop even when the test
/// panics (a failed wait), so that it fails instead of hanging.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Writer threads committing until stopped; `stop` returns once every one of
/// them is done, so the leader's last commit no longer moves.
struct Writers {
    stop: AtomicBool,
    running: AtomicUsize,
}

impl Writers {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        wait_until("the writers to finish", || {
            self.running.load(Ordering::SeqCst) == 0
        });
    }
}

/// Serves `engine` on `listener` while `writers` threads write to it, runs
/// `body`, then stops the writers and the server and waits for all their threads.
fn serving<R>(
    engine: &Engine,
    listener: &TcpListener,
    writers: u64,
    body: impl FnOnce(&Writers) -> R,
) -> R {
    serving_with(
        engine,
        listener,
        writers,
        &LeaderCounters::default(),
        None,
        body,
    )
}

/// `serving`, counting into `counters`, with the leader's `before_digest` hook.
fn serving_with<R>(
    engine: &Engine,
    listener: &TcpListener,
    writers: u64,
    counters: &LeaderCounters,
    before_digest: Option<&(dyn Fn(u64) + Sync)>,
    body: impl FnOnce(&Writers) -> R,
) -> R {
    let stop_serving = AtomicBool::new(false);
    let w = Writers {
        stop: AtomicBool::new(false),
        running: AtomicUsize::new(writers as usize),
    };
    let log = |m: &str| eprintln!("[leader] {m}");
    thread::scope(|s| {
        let leader = Leader {
            engine,
            stop: &stop_serving,
            digest_every: Some(Duration::from_millis(100)),
            log: &log,
            secret: &SECRET,
            limits: Limits::default(),
            counters,
            before_digest,
        };
        let server = s.spawn(move || leader.serve(listener));
        for t in 0..writers {
            let w = &w;
            s.spawn(move || {
                let mut i = 1_000_000 * (t + 1) + engine.commit_id().get();
                while !w.stop.load(Ordering::SeqCst) {
                    step(engine, "live", i);
                    i += 1;
                    // Pacing only: a few thousand commits a second.
                    thread::sleep(Duration::from_micros(200));
                }
                w.running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let stop = StopOnDrop(&[&w.stop, &stop_serving]);
        let r = body(&w);
        w.stop();
        drop(stop);
        server.join().unwrap().unwrap();
        r
    })
}

fn records(engine: &Engine, from: u64, n: usize) -> Vec<CommitRecord> {
    engine
        .subscribe(from)
        .unwrap()
        .take(n)
        .map(|r| r.unwrap())
        .collect()
}

fn applied(s: &Status) -> u64 {
    s.applied.load(Ordering::SeqCst)
}

#[test]
fn followers_catch_up_follow_live_and_survive_a_leader_restart() {
    let lead_dir = TempDir::new("leader");
    let a_dir = TempDir::new("follower-a");
    let mut leader = Engine::open_with(lead_dir.path(), opts()).unwrap();
    for i in 0..400 {
        step(&leader, "load", i);
    }
    // A: durable, empty, named (the leader keeps the journal it still needs).
    let a = Engine::open_follower(a_dir.path(), opts()).unwrap();
    // B: in memory, unnamed, and already has the first 150 commits.
    let b = Engine::in_memory_follower(Options::default()).unwrap();
    for rec in records(&leader, 0, 150) {
        b.apply(&rec).unwrap();
    }

    let mut listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Mutex::new(listener.local_addr().unwrap());
    let leader_at = || *addr.lock().unwrap();
    let (sa, sb) = (Status::default(), Status::default());
    let stop_following = AtomicBool::new(false);
    let (log_a, log_b) = (
        |m: &str| eprintln!("[a] {m}"),
        |m: &str| eprintln!("[b] {m}"),
    );
    let started = Instant::now();
    let (ra, rb) = thread::scope(|s| {
        let fa = s.spawn(|| {
            Follower {
                engine: &a,
                leader: &leader_at,
                name: Some("a"),
                stop: &stop_following,
                status: &sa,
                log: &log_a,
                secret: &SECRET,
                limits: Limits::default(),
            }
            .run()
            .inspect_err(|e| log_a(&format!("stopped: {e}")))
        });
        let fb = s.spawn(|| {
            Follower {
                engine: &b,
                leader: &leader_at,
                name: None,
                stop: &stop_following,
                status: &sb,
                log: &log_b,
                secret: &SECRET,
                limits: Limits::default(),
            }
            .run()
            .inspect_err(|e| log_b(&format!("stopped: {e}")))
        });
        let stop_guard = StopOnDrop(&[&stop_following]);
        // Fails a wait at once if a follower gave up (its error is logged).
        let following = |cond: bool| {
            assert!(
                !fa.is_finished() && !fb.is_finished(),
                "a follower stopped following"
            );
            cond
        };

        // Catch up (A from 0, B from 150), then follow live writes.
        serving(&leader, &listener, 2, |_| {
            let live = leader.commit_id().get() + 500;
            wait_until("both followers to apply live commits", || {
                following(applied(&sa) >= live && applied(&sb) >= live)
            });
        });
        // The leader stopped serving: its connections are closed.
        wait_until("both followers to lose the leader", || {
            !sa.connected.load(Ordering::SeqCst) && !sb.connected.load(Ordering::SeqCst)
        });

        // Commits nobody is served, then a restart: drop, reopen from the
        // directory (a reopened engine's in-memory window is empty, so the
        // followers get those commits from the journal files), serve on a new
        // listener.
        let base = leader.commit_id().get();
        for i in base..base + 300 {
            step(&leader, "offline", i);
        }
        let before = leader.last_commit();
        // (Dropped first, through a placeholder: it holds the directory's lock.)
        drop(std::mem::replace(&mut leader, Engine::in_memory().unwrap()));
        leader = Engine::open_with(lead_dir.path(), opts()).unwrap();
        assert_eq!(leader.last_commit(), before);
        let old = listener.local_addr().unwrap();
        drop(listener);
        listener = TcpListener::bind(old)
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        *addr.lock().unwrap() = listener.local_addr().unwrap();

        serving(&leader, &listener, 2, |writers| {
            let live = leader.commit_id().get() + 500;
            wait_until("both followers to reconnect and follow live", || {
                following(
                    sa.sessions.load(Ordering::SeqCst) >= 2
                        && sb.sessions.load(Ordering::SeqCst) >= 2
                        && applied(&sa) >= live
                        && applied(&sb) >= live,
                )
            });
            writers.stop();
            let last = leader.commit_id().get();
            wait_until("both followers to reach the leader's last commit", || {
                following(applied(&sa) == last && applied(&sb) == last)
            });
            // The leader sends its digest every 100 ms; at the last commit the
            // followers check it at once.
            wait_until("a state digest check on each follower", || {
                following(
                    sa.digests_matched.load(Ordering::SeqCst) >= 1
                        && sb.digests_matched.load(Ordering::SeqCst) >= 1,
                )
            });
            wait_until("A's acknowledgement of the last commit", || {
                leader.consumer_position("a").map(|c| c.get()) == Some(last)
            });
        });
        drop(stop_guard);
        (fa.join().unwrap(), fb.join().unwrap())
    });
    eprintln!("replicated over TCP in {:?}", started.elapsed());
    ra.unwrap();
    rb.unwrap();
    assert!(sa.sessions.load(Ordering::SeqCst) >= 2);
    assert!(sb.sessions.load(Ordering::SeqCst) >= 2);

    let last = leader.last_commit();
    assert!(last.0.get() > 400 + 500 + 300 + 500);
    let digest = leader.snapshot().state_digest().unwrap();
    for (name, f) in [("A", &a), ("B", &b)] {
        assert_eq!(f.last_commit(), last, "{name}'s last commit");
        assert_eq!(
            f.snapshot().state_digest().unwrap(),
            digest,
            "{name}'s state"
        );
    }
    // A is durable: reopened, it has all of it.
    drop(a);
    let a = Engine::open_follower(a_dir.path(), opts()).unwrap();
    assert_eq!(a.last_commit(), last);
    assert_eq!(a.snapshot().state_digest().unwrap(), digest);
}

/// Runs a follower of the leader at `addr` until it gives up; fails the test if it
/// has not within `LIMIT`. With `nothing_applied`, checks that it applied nothing.
fn follow_until_error(
    engine: &Engine,
    addr: SocketAddr,
    name: Option<&str>,
    nothing_applied: bool,
) -> SyncError {
    follow_with_secret_until_error(engine, addr, name, nothing_applied, &SECRET)
}

/// `follow_until_error`, proving `secret`.
fn follow_with_secret_until_error(
    engine: &Engine,
    addr: SocketAddr,
    name: Option<&str>,
    nothing_applied: bool,
    secret: &Secret,
) -> SyncError {
    let stop = AtomicBool::new(false);
    let status = Status::default();
    let leader = move || addr;
    let log = |m: &str| eprintln!("[follower] {m}");
    let before = engine.last_commit();
    let result = thread::scope(|s| {
        let f = s.spawn(|| {
            Follower {
                engine,
                leader: &leader,
                name,
                stop: &stop,
                status: &status,
                log: &log,
                secret,
                limits: Limits::default(),
            }
            .run()
        });
        let started = Instant::now();
        while !f.is_finished() && started.elapsed() < LIMIT {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        f.join().unwrap()
    });
    if nothing_applied {
        assert_eq!(engine.last_commit(), before, "nothing was applied");
    }
    match result {
        Err(e) => {
            eprintln!("[follower] stopped: {e}");
            e
        }
        Ok(()) => panic!("the follower was expected to stop with an error within {LIMIT:?}"),
    }
}

/// A follower engine holding `recs`.
fn follower_of(recs: &[CommitRecord]) -> Engine {
    let f = Engine::in_memory_follower(Options::default()).unwrap();
    for rec in recs {
        f.apply(rec).unwrap();
    }
    f
}

fn hash_at(recs: &[CommitRecord], id: u64) -> ChainHash {
    recs[id as usize - 1].hash
}

fn assert_fork(e: SyncError, at: u64, ours: ChainHash, theirs: ChainHash) {
    match e {
        SyncError::Engine(Error::Fork {
            commit_id,
            ours: o,
            theirs: t,
        }) => {
            assert_eq!(commit_id.get(), at, "where the fork is reported");
            assert_eq!((o, t), (ours, theirs), "the hashes in the fork report");
        }
        other => panic!("expected a fork at commit {at}, got {other}"),
    }
}

#[test]
fn a_follower_with_another_history_reports_the_fork() {
    // The leader: 200 commits. `other` ran the same first 120 (so the same chain
    // up to there), then 180 of its own; `ahead` ran the leader's 200, then 20 more.
    let leader = Engine::in_memory().unwrap();
    let other = Engine::in_memory().unwrap();
    let ahead = Engine::in_memory().unwrap();
    for i in 0..200 {
        step(&leader, "load", i);
        step(&ahead, "load", i);
    }
    for i in 200..220 {
        step(&ahead, "load", i);
    }
    for i in 0..120 {
        step(&other, "load", i);
    }
    for i in 120..300 {
        step(&other, "elsewhere", i);
    }
    let ours = records(&leader, 0, 200);
    let theirs = records(&other, 0, 300);
    assert_eq!(hash_at(&ours, 120), hash_at(&theirs, 120));
    assert_ne!(hash_at(&ours, 121), hash_at(&theirs, 121));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serving(&leader, &listener, 0, |_| {
        // Behind the leader: the first record does not continue our chain.
        let e = follow_until_error(&follower_of(&theirs[..150]), addr, Some("f150"), true);
        assert_fork(e, 150, hash_at(&theirs, 150), hash_at(&ours, 150));
        // At the leader's last commit, with another hash: WELCOME tells.
        let e = follow_until_error(&follower_of(&theirs[..200]), addr, None, true);
        assert_fork(e, 200, hash_at(&theirs, 200), hash_at(&ours, 200));
        // Ahead of the leader, and another history at its last commit.
        let e = follow_until_error(&follower_of(&theirs[..250]), addr, None, true);
        assert_fork(e, 200, hash_at(&theirs, 200), hash_at(&ours, 200));
        // Ahead of the leader on the same history: the leader lost commits.
        let e = follow_until_error(&follower_of(&records(&ahead, 0, 220)), addr, None, true);
        assert!(
            matches!(
                e,
                SyncError::LeaderBehind {
                    ours: 220,
                    leader: 200
                }
            ),
            "{e}"
        );
        // A record that does not hash to what it claims is a fork too; the same
        // prefix as the leader's follows it without complaint.
        let f = follower_of(&ours[..120]);
        let mut tampered = ours[120].clone();
        tampered.command.push('!');
        assert!(matches!(f.apply(&tampered), Err(Error::Fork { .. })));
    });
}

/// Runs the named follower `keeper` of `leader` until the leader has its
/// acknowledgement of commit `until`.
fn sync_keeper(leader: &Engine, listener: &TcpListener, keeper: &Engine, until: u64) {
    let addr = listener.local_addr().unwrap();
    let at = move || addr;
    let (status, stop) = (Status::default(), AtomicBool::new(false));
    let log = |m: &str| eprintln!("[keeper] {m}");
    serving(leader, listener, 0, |_| {
        thread::scope(|s| {
            let f = s.spawn(|| {
                Follower {
                    engine: keeper,
                    leader: &at,
                    name: Some("keeper"),
                    stop: &stop,
                    status: &status,
                    log: &log,
                    secret: &SECRET,
                    limits: Limits::default(),
                }
                .run()
            });
            let stop_guard = StopOnDrop(&[&stop]);
            wait_until("the keeper's acknowledgement", || {
                leader.consumer_position("keeper").map(|c| c.get()) == Some(until)
            });
            drop(stop_guard);
            f.join().unwrap().unwrap();
        })
    });
}

#[test]
fn a_follower_too_far_behind_is_told_the_journal_is_gone() {
    let dir = TempDir::new("truncated");
    // Keep no journal for point-in-time restore: only the newest checkpoint, so
    // the checkpoint below deletes the journal before it.
    let opts = Options {
        pitr_retention: shardstone::Retention {
            checkpoints: 1,
            ..Default::default()
        },
        ..opts()
    };
    let mut leader = Engine::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..1000 {
        step(&leader, "load", i);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A named follower syncs to 1000 and leaves: the leader keeps the journal
    // after what it acknowledged.
    let keeper = Engine::in_memory_follower(Options::default()).unwrap();
    sync_keeper(&leader, &listener, &keeper, 1000);
    for i in 1000..2000 {
        step(&leader, "load", i);
    }
    leader.checkpoint().unwrap();
    // Restarted, the leader has only its journal files (and the hold, recorded
    // by the checkpoint) to serve history from.
    drop(leader);
    leader = Engine::open_with(dir.path(), opts).unwrap();
    assert_eq!(
        leader.consumer_position("keeper").map(|c| c.get()),
        Some(1000)
    );

    // An unnamed follower from 0: the journal before the checkpoint is gone.
    // (It may first get a few early commits that a segment kept for later ones
    // still holds, up to the gap.)
    let fresh = Engine::in_memory_follower(Options::default()).unwrap();
    let e = serving(&leader, &listener, 0, |_| {
        follow_until_error(&fresh, addr, None, false)
    });
    match e {
        SyncError::Engine(Error::Truncated { oldest_available }) => {
            let (applied, oldest) = (fresh.commit_id().get(), oldest_available.get());
            assert!(
                applied + 1 < oldest && oldest <= 1001,
                "applied up to {applied}, then told the journal starts at {oldest}"
            );
        }
        other => panic!("expected Truncated, got {other}"),
    }
    // The keeper's hold kept what it needs: it catches up from the files.
    sync_keeper(&leader, &listener, &keeper, 2000);
    assert_eq!(keeper.last_commit(), leader.last_commit());
    assert_eq!(
        keeper.snapshot().state_digest().unwrap(),
        leader.snapshot().state_digest().unwrap()
    );
}

/// The largest single allocation this test binary made: a peer's claimed frame
/// length must never become one.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct TrackLargest;

// SAFETY: every call is passed on to the system allocator unchanged; only the
// requested sizes are recorded.
unsafe impl GlobalAlloc for TrackLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackLargest = TrackLargest;

/// Reads from `stream` until the peer closes it; fails the test if that takes
/// longer than `within`.
fn expect_closed(mut stream: &TcpStream, within: Duration) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A reset: closed with our bytes unread.
            Err(_) => return,
        }
        assert!(
            started.elapsed() < within,
            "the connection was still open after {within:?}"
        );
    }
}

/// The next message `reader` reads from `stream`, within `LIMIT`.
fn next_msg(reader: &mut Reader, stream: &TcpStream) -> Msg {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(msg) = reader.poll(stream).unwrap() {
            return msg;
        }
        assert!(started.elapsed() < LIMIT, "no message within {LIMIT:?}");
    }
}

/// Issue 19.5: a length prefix of 4 GiB, before or after the handshake, closes
/// the connection at once, with nothing of the sort allocated; a leader that
/// sends one makes the follower stop with `FrameTooLarge`.
#[test]
fn a_peer_announcing_a_4_gib_frame_is_dropped_without_buffering_it() {
    let leader = Engine::in_memory().unwrap();
    for i in 0..50 {
        step(&leader, "load", i);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = LeaderCounters::default();
    let huge = u32::MAX.to_le_bytes();
    serving_with(&leader, &listener, 0, &counters, None, |_| {
        // Before the handshake: the first frame announces 4 GiB.
        let stream = TcpStream::connect(addr).unwrap();
        (&stream).write_all(&huge).unwrap();
        (&stream).write_all(&[HELLO_KIND; 1000]).unwrap();
        expect_closed(&stream, Duration::from_secs(5));
        wait_until("the leader to count the oversized frame", || {
            counters.oversized_frames.load(Ordering::SeqCst) == 1
        });
        // After the handshake: an authenticated peer does the same.
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let never = AtomicBool::new(false);
        let (_reader, answer) = handshake(
            &stream,
            &SECRET,
            &Limits::default(),
            &never,
            (0, ChainHash::genesis()),
            "",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(answer, Msg::Welcome { .. }), "{answer:?}");
        (&stream).write_all(&huge).unwrap();
        (&stream).write_all(&[0u8; 1000]).unwrap();
        expect_closed(&stream, Duration::from_secs(5));
        wait_until("the leader to count the second oversized frame", || {
            counters.oversized_frames.load(Ordering::SeqCst) == 2
        });
    });

    // A "leader" whose first frame announces 4 GiB.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let follower = Engine::in_memory_follower(Options::default()).unwrap();
    let started = Instant::now();
    let e = thread::scope(|s| {
        s.spawn(|| {
            let (stream, _) = fake.accept().unwrap();
            (&stream).write_all(&huge).unwrap();
            (&stream).write_all(&[0u8; 1000]).unwrap();
            expect_closed(&stream, LIMIT);
        });
        follow_until_error(&follower, fake_addr, Some("f"), true)
    });
    match e {
        SyncError::FrameTooLarge(big) => {
            assert_eq!(
                (big.len, big.max),
                (u64::from(u32::MAX), HANDSHAKE_MAX_FRAME)
            );
        }
        other => panic!("expected FrameTooLarge, got {other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < 256 << 20,
        "an allocation of {largest} bytes: a claimed length was allocated"
    );
    // The typed error is what `frame_too_large` finds in an `io::Error`.
    let e = Reader::new(16, LIMIT)
        .poll(&[255u8, 255, 255, 255, 1][..])
        .unwrap_err();
    assert_eq!(frame_too_large(&e).map(|f| f.max), Some(16));
}

/// The kind byte of a HELLO, for hand-made frames.
const HELLO_KIND: u8 = 1;

/// Issue 20.7: a HELLO never moves a retention hold backwards. A follower with
/// the leader's history behind the hold of the name it gives is refused; one
/// whose chain hash is not the leader's is served without the hold (and finds
/// the fork); the hold stays where its follower left it.
#[test]
fn a_hello_behind_a_named_hold_is_refused_and_the_hold_stays() {
    let leader = Engine::in_memory().unwrap();
    let other = Engine::in_memory().unwrap();
    for i in 0..120 {
        step(&leader, "load", i);
        step(&other, "load", i);
    }
    for i in 120..300 {
        step(&leader, "load", i);
    }
    for i in 120..350 {
        step(&other, "elsewhere", i);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let keeper = Engine::in_memory_follower(Options::default()).unwrap();
    sync_keeper(&leader, &listener, &keeper, 300);
    for i in 300..400 {
        step(&leader, "load", i);
    }
    let ours = records(&leader, 0, 400);
    let theirs = records(&other, 0, 350);
    let counters = LeaderCounters::default();
    let hold = || leader.consumer_position("keeper").map(|c| c.get());
    serving_with(&leader, &listener, 0, &counters, None, |_| {
        // The leader's history at 100, under the keeper's name.
        let e = follow_until_error(&follower_of(&ours[..100]), addr, Some("keeper"), true);
        match &e {
            SyncError::Protocol(m) => assert!(m.contains("never moves backwards"), "{m}"),
            other => panic!("expected a refusal, got {other}"),
        }
        assert_eq!(hold(), Some(300));
        assert_eq!(counters.holds_refused.load(Ordering::SeqCst), 1);
        // Another history at 350 (after the hold) under the keeper's name: served
        // without the hold, it finds the fork; the hold did not move.
        let e = follow_until_error(&follower_of(&theirs), addr, Some("keeper"), true);
        assert_fork(e, 350, hash_at(&theirs, 350), hash_at(&ours, 350));
        assert_eq!(hold(), Some(300));
        assert_eq!(counters.holds_refused.load(Ordering::SeqCst), 1);
    });
    // The keeper itself is served from its hold.
    sync_keeper(&leader, &listener, &keeper, 400);
    assert_eq!(keeper.last_commit(), leader.last_commit());
}

/// Issue 20.7: followers must prove they know the shared secret; one that does
/// not gets nothing and touches no hold.
#[test]
fn a_follower_without_the_secret_is_refused() {
    let leader = Engine::in_memory().unwrap();
    for i in 0..50 {
        step(&leader, "load", i);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = LeaderCounters::default();
    serving_with(&leader, &listener, 0, &counters, None, |_| {
        // A follower with another secret: the leader cannot prove itself to it.
        let wrong = Secret::new(b"not the secret of these tests").unwrap();
        let f = Engine::in_memory_follower(Options::default()).unwrap();
        let e = follow_with_secret_until_error(&f, addr, Some("intruder"), true, &wrong);
        assert!(matches!(e, SyncError::Unauthenticated(_)), "{e}");
        // A peer that ignores the leader's proof and answers with a guess.
        let stream = TcpStream::connect(addr).unwrap();
        let hello = Msg::Hello {
            last: 0,
            hash: ChainHash::genesis(),
            name: "intruder".into(),
            nonce: [1; 32],
        };
        (&stream).write_all(&hello.encode().unwrap()).unwrap();
        let mut reader = Reader::new(HANDSHAKE_MAX_FRAME, LIMIT);
        let challenge = next_msg(&mut reader, &stream);
        assert!(matches!(challenge, Msg::Challenge { .. }), "{challenge:?}");
        let guess = Msg::Auth { proof: [7; 32] };
        (&stream).write_all(&guess.encode().unwrap()).unwrap();
        match next_msg(&mut reader, &stream) {
            Msg::Refused { reason } => {
                assert!(reason.contains("authentication failed"), "{reason}")
            }
            other => panic!("expected REFUSED, got {other:?}"),
        }
        expect_closed(&stream, Duration::from_secs(5));
        assert_eq!(counters.auth_refused.load(Ordering::SeqCst), 1);
        assert_eq!(counters.sessions.load(Ordering::SeqCst), 0);
        assert_eq!(leader.consumer_position("intruder"), None);
    });
    // Without a secret of 16 bytes or more there is no secret.
    assert!(Secret::new(b"short").is_err());
}

/// Issue 20.7: the leader's state digests run on a thread of their own, one at a
/// time: while one is held (as a digest of a huge store would take long), the
/// follower goes on applying live commits, and checks the next digest after.
#[test]
fn digests_do_not_hold_up_streaming() {
    let leader = Engine::in_memory().unwrap();
    for i in 0..200 {
        step(&leader, "load", i);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = LeaderCounters::default();
    let release = AtomicBool::new(false);
    let entered = AtomicUsize::new(0);
    let digest_threads = Mutex::new(std::collections::HashSet::new());
    let hook = |_at: u64| {
        entered.fetch_add(1, Ordering::SeqCst);
        digest_threads
            .lock()
            .unwrap()
            .insert(thread::current().id());
        let started = Instant::now();
        while !release.load(Ordering::SeqCst) && started.elapsed() < LIMIT {
            thread::sleep(Duration::from_millis(1));
        }
    };
    let follower = Engine::in_memory_follower(Options::default()).unwrap();
    let status = Status::default();
    let stop = AtomicBool::new(false);
    let at = move || addr;
    let log = |m: &str| eprintln!("[follower] {m}");
    serving_with(&leader, &listener, 2, &counters, Some(&hook), |_| {
        thread::scope(|s| {
            let f = s.spawn(|| {
                Follower {
                    engine: &follower,
                    leader: &at,
                    name: Some("f"),
                    stop: &stop,
                    status: &status,
                    log: &log,
                    secret: &SECRET,
                    limits: Limits::default(),
                }
                .run()
            });
            let guard = StopOnDrop(&[&stop, &release]);
            wait_until("the digest thread to start a digest", || {
                entered.load(Ordering::SeqCst) == 1
            });
            let from = leader.commit_id().get();
            wait_until("live commits applied while the digest is held", || {
                applied(&status) >= from + 500
            });
            // Still the one digest, not finished: nothing else started one.
            assert_eq!(entered.load(Ordering::SeqCst), 1);
            assert_eq!(counters.digests_computed.load(Ordering::SeqCst), 0);
            release.store(true, Ordering::SeqCst);
            wait_until("a digest checked by the follower", || {
                status.digests_matched.load(Ordering::SeqCst) >= 1
            });
            drop(guard);
            f.join().unwrap().unwrap();
        });
    });
    assert_eq!(digest_threads.lock().unwrap().len(), 1, "one digest thread");
    assert!(counters.digests_sent.load(Ordering::SeqCst) >= 1);
}
