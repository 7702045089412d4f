//! Automatic checkpoints (issue 16, item 1): under a steady write load the
//! background thread keeps the journal on disk and the replay of the next open
//! bounded; consumer holds still keep what they need; `None` turns it off;
//! close and drop stop it promptly; a failing checkpoint is counted and retried
//! while commands go on.
//!
//! Thresholds are tiny (256 KiB of journal, 128 KiB segments) so that a few
//! thousand commits cross them many times. Nothing waits a fixed time for the
//! thread to act: each test polls `stats()` with a generous deadline.

mod common;

use common::TempDir;
use shardstone::{AutoCheckpoint, Engine, FaultKind, FaultyIo, Io, Options};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const THRESHOLD: u64 = 256 << 10;
const SEGMENT: u64 = 128 << 10;
const SHARDS: usize = 2;
const VALUE_LEN: usize = 200;
/// Long enough for the slowest CI machine; the tests normally take well under it.
const PATIENCE: Duration = Duration::from_secs(120);

fn opts(auto: Option<AutoCheckpoint>) -> Options {
    Options {
        journal_shards: SHARDS,
        segment_size: SEGMENT,
        auto_checkpoint: auto,
        ..Default::default()
    }
}

/// Checkpoints by size only (the interval is far away).
fn by_size() -> Option<AutoCheckpoint> {
    Some(AutoCheckpoint {
        bytes: THRESHOLD,
        interval: Duration::from_secs(3600),
    })
}

fn key(writer: u64, i: u64) -> Vec<u8> {
    format!("w{writer}-k{:04}", i % 250).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(VALUE_LEN, b'.');
    v
}

/// Commits `per_writer` puts from each of 2 threads.
fn write_load(engine: &Engine, per_writer: u64) {
    std::thread::scope(|s| {
        for w in 0..2u64 {
            s.spawn(move || {
                for i in 0..per_writer {
                    engine
                        .run("load", |tx| tx.put(&key(w, i), &value(i)))
                        .expect("a commit during the load");
                }
            });
        }
    });
}

/// The bytes of every segment file on disk (their preallocated lengths).
fn journal_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("journal")) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn checkpoint_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|es| {
            es.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                .count()
        })
        .unwrap_or(0)
}

/// Polls `cond` until it holds; panics naming `what` after `PATIENCE`.
fn wait_for(what: &str, engine: &Engine, cond: impl Fn(&shardstone::JournalStats) -> bool) {
    let start = Instant::now();
    loop {
        let stats = engine.stats().journal;
        if cond(&stats) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "gave up waiting for {what}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The journal on disk stays within a few thresholds plus the segments in use
/// while 2 threads write about 12 thresholds' worth, checkpoints happen, and
/// a reopen replays about one threshold's worth of commits, with every write
/// there.
#[test]
fn journal_and_replay_stay_bounded_under_steady_writes() {
    let dir = TempDir::new("auto-bounded");
    const PER_WRITER: u64 = 6000;
    let engine = Engine::open_with(dir.path(), opts(by_size())).unwrap();
    let done = AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(journal_on_disk(dir.path()));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        });
        write_load(&engine, PER_WRITER);
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap()
    });
    let stats = engine.stats().journal;
    assert_eq!(stats.auto_checkpoint_failures, 0, "{stats:?}");
    assert!(
        stats.auto_checkpoints >= 3,
        "too few checkpoints: {stats:?}"
    );
    assert!(stats.last_auto_checkpoint > 0 && stats.last_auto_checkpoint_time.is_some());
    assert_eq!(stats.checkpoint, stats.last_auto_checkpoint);
    // Written: about 12 thresholds. Kept: what the next checkpoint is waiting
    // for, a segment per shard not yet covered, each shard's current one, and
    // each shard's spare, prepared ahead of its next roll.
    let bound = 4 * THRESHOLD + 3 * SHARDS as u64 * SEGMENT;
    assert!(
        peak <= bound,
        "journal peaked at {peak} bytes, bound {bound}"
    );
    let last = engine.commit_id();
    drop(engine);

    let reopened = Engine::open_with(dir.path(), opts(None)).unwrap();
    assert_eq!(reopened.commit_id(), last);
    let replayed = reopened.stats().journal.replayed;
    // Each record carries at least its key and value.
    let most = 3 * THRESHOLD / VALUE_LEN as u64;
    assert!(
        replayed <= most,
        "replayed {replayed} of {} commits; about one threshold is at most {most}",
        2 * PER_WRITER
    );
    let snap = reopened.snapshot();
    for w in 0..2 {
        for i in PER_WRITER - 250..PER_WRITER {
            let got = snap.get(&key(w, i)).unwrap();
            assert_eq!(got.as_deref(), Some(&value(i)[..]), "writer {w} write {i}");
        }
    }
}

/// A named consumer that has not acknowledged anything keeps every commit
/// through the background checkpoints, and reads them all in order; once it
/// has caught up and acknowledged, the next checkpoint trims the journal again.
#[test]
fn a_consumer_hold_keeps_what_it_needs() {
    let dir = TempDir::new("auto-hold");
    let engine = Engine::open_with(dir.path(), opts(by_size())).unwrap();
    let mut feed = engine.subscribe_as("slow", 0).unwrap();
    write_load(&engine, 3000);
    wait_for("two automatic checkpoints", &engine, |j| {
        j.auto_checkpoints >= 2
    });
    let last = engine.commit_id().get();
    assert!(journal_on_disk(dir.path()) > 4 * THRESHOLD);
    for want in 1..=last {
        let rec = feed.next().expect("a record").expect("a retained record");
        assert_eq!(rec.commit_id.get(), want);
    }
    feed.ack(last);
    write_load(&engine, 1500);
    let newest = engine.commit_id().get();
    for want in last + 1..=newest {
        let rec = feed.next().expect("a record").expect("a retained record");
        assert_eq!(rec.commit_id.get(), want);
    }
    feed.ack(newest);
    // The consumer is caught up, so the journal it held goes at the next
    // checkpoint; commit until one has come and trimmed.
    let bound = 4 * THRESHOLD + 2 * SHARDS as u64 * SEGMENT;
    let start = Instant::now();
    while engine.stats().journal.checkpoint <= newest || journal_on_disk(dir.path()) > bound {
        assert!(
            start.elapsed() < PATIENCE,
            "the journal was never trimmed: {} bytes, {:?}",
            journal_on_disk(dir.path()),
            engine.stats().journal
        );
        engine
            .run("nudge", |tx| tx.put(b"nudge", &[0; 4096]))
            .unwrap();
    }
    assert_eq!(
        engine.consumer_position("slow").map(|c| c.get()),
        Some(newest)
    );
}

/// `auto_checkpoint: None` writes no checkpoint however much is written, nor
/// do read-only opens or in-memory engines.
#[test]
fn no_automatic_checkpoints_when_disabled_read_only_or_in_memory() {
    let dir = TempDir::new("auto-off");
    let engine = Engine::open_with(dir.path(), opts(None)).unwrap();
    write_load(&engine, 1500);
    assert!(engine.stats().journal.since_checkpoint_bytes > THRESHOLD);
    // Several of the thread's polls, were there a thread.
    std::thread::sleep(Duration::from_millis(500));
    let stats = engine.stats().journal;
    assert_eq!(
        (stats.auto_checkpoints, stats.checkpoint),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(checkpoint_files(dir.path()), 0);
    drop(engine);

    let eager = Some(AutoCheckpoint {
        bytes: 1,
        interval: Duration::from_millis(1),
    });
    let reader = Engine::open_read_only(dir.path(), opts(eager)).unwrap();
    assert!(reader.stats().journal.since_checkpoint_bytes > THRESHOLD);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(reader.stats().journal.auto_checkpoints, 0);
    assert_eq!(checkpoint_files(dir.path()), 0);
    drop(reader);

    let memory = Engine::in_memory_with(opts(eager)).unwrap();
    write_load(&memory, 100);
    std::thread::sleep(Duration::from_millis(200));
    let stats = memory.stats().journal;
    assert_eq!(
        (stats.auto_checkpoints, stats.auto_checkpoint_failures),
        (0, 0)
    );
}

/// By age: nothing is checkpointed while nothing was written; one commit makes
/// the next interval write one, and then it is quiet again.
#[test]
fn the_interval_checkpoints_only_after_writes() {
    let dir = TempDir::new("auto-interval");
    let auto = Some(AutoCheckpoint {
        bytes: 1 << 40,
        interval: Duration::from_millis(50),
    });
    let engine = Engine::open_with(dir.path(), opts(auto)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.stats().journal.auto_checkpoints, 0);
    engine.run("one", |tx| tx.put(b"k", b"v")).unwrap();
    wait_for("a checkpoint by age", &engine, |j| j.auto_checkpoints == 1);
    let stats = engine.stats().journal;
    assert_eq!((stats.last_auto_checkpoint, stats.checkpoint), (1, 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.stats().journal.auto_checkpoints, 1);
}

/// A checkpoint `Engine::checkpoint` writes restarts the count of journal
/// bytes, and is not counted as automatic.
#[test]
fn a_manual_checkpoint_restarts_the_count() {
    let dir = TempDir::new("auto-manual");
    let engine = Engine::open_with(dir.path(), opts(by_size())).unwrap();
    write_load(&engine, 100);
    let before = engine.stats().journal.since_checkpoint_bytes;
    assert!(before > 100 * VALUE_LEN as u64 && before < THRESHOLD);
    let at = engine.checkpoint().unwrap().get();
    let stats = engine.stats().journal;
    assert_eq!(stats.since_checkpoint_bytes, 0, "{stats:?}");
    assert_eq!((stats.auto_checkpoints, stats.checkpoint), (0, at));
}

/// Close and drop stop and join the thread at once, also in the middle of a
/// checkpoint of a larger store.
#[test]
fn close_and_drop_stop_the_thread_promptly() {
    let dir = TempDir::new("auto-close");
    let engine = Engine::open_with(dir.path(), opts(Some(AutoCheckpoint::default()))).unwrap();
    engine.run("one", |tx| tx.put(b"k", b"v")).unwrap();
    let start = Instant::now();
    engine.close().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "close took {:?}",
        start.elapsed()
    );

    let eager = Some(AutoCheckpoint {
        bytes: 1,
        interval: Duration::from_millis(1),
    });
    let engine = Engine::open_with(dir.path(), opts(eager)).unwrap();
    engine
        .run("fill", |tx| {
            for i in 0..20_000u32 {
                tx.put(&i.to_be_bytes(), &value(u64::from(i)))?;
            }
            Ok(())
        })
        .unwrap();
    for round in 0..5 {
        engine.run("more", |tx| tx.put(b"k", &[round])).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let start = Instant::now();
    drop(engine);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        start.elapsed()
    );
    let reopened = Engine::open_with(dir.path(), opts(None)).unwrap();
    assert_eq!(
        reopened.snapshot().get(b"k").unwrap().as_deref(),
        Some(&[4u8][..])
    );
}

/// The number of rename operations opening a fresh database does: the next
/// one is the first checkpoint's.
fn renames_to_open() -> u64 {
    let dir = TempDir::new("auto-count");
    let io = Arc::new(FaultyIo::new(
        FaultKind::Rename,
        u64::MAX,
        libc::ENOSPC,
        false,
    ));
    let engine = Engine::open_with_io(dir.path(), opts(None), io.clone()).unwrap();
    let n = io.ops();
    drop(engine);
    n
}

/// Every background checkpoint fails (its rename: a full disk): each failure
/// is counted with its error, retried later, and commands go on committing.
/// The database then reopens with every commit.
#[test]
fn failing_checkpoints_are_counted_and_commands_go_on() {
    let dir = TempDir::new("auto-fail");
    let io = Arc::new(FaultyIo::new(
        FaultKind::Rename,
        renames_to_open(),
        libc::ENOSPC,
        true,
    ));
    let engine = Engine::open_with_io(dir.path(), opts(by_size()), io.clone()).unwrap();
    write_load(&engine, 1500);
    // The second failure comes after a backoff of a second: it was retried.
    let mut n = 0u64;
    wait_for("two failed checkpoints", &engine, |j| {
        j.auto_checkpoint_failures >= 2
    });
    while engine.stats().journal.auto_checkpoint_failures < 3 && n < 50 {
        engine
            .run("during", |tx| tx.put(b"during", &n.to_le_bytes()))
            .unwrap();
        n += 1;
    }
    let stats = engine.stats().journal;
    assert_eq!(
        (stats.auto_checkpoints, stats.checkpoint),
        (0, 0),
        "{stats:?}"
    );
    let error = stats
        .last_auto_checkpoint_error
        .expect("the failure's text");
    assert!(error.contains("rename"), "{error}");
    assert!(io.failures() >= 2);
    let last = engine.commit_id();
    drop(engine);
    let reopened = Engine::open_with(dir.path(), opts(None)).unwrap();
    assert_eq!(reopened.commit_id(), last);
}

/// One background checkpoint fails; the retry succeeds and clears the error.
#[test]
fn a_failed_checkpoint_is_retried() {
    let dir = TempDir::new("auto-retry");
    let io = Arc::new(FaultyIo::new(
        FaultKind::Rename,
        renames_to_open(),
        libc::ENOSPC,
        false,
    ));
    let engine = Engine::open_with_io(dir.path(), opts(by_size()), io.clone()).unwrap();
    write_load(&engine, 1500);
    wait_for("a checkpoint after the failure", &engine, |j| {
        j.auto_checkpoints >= 1
    });
    let stats = engine.stats().journal;
    assert_eq!(stats.auto_checkpoint_failures, 1, "{stats:?}");
    assert_eq!(stats.last_auto_checkpoint_error, None);
    assert_eq!(io.failures(), 1);
    engine.run("after", |tx| tx.put(b"after", b"v")).unwrap();
}

/// Holds a checkpoint at its rename (the file is written, not yet in place)
/// once armed, until released.
#[derive(Default)]
struct GateIo {
    armed: AtomicBool,
    /// (a checkpoint is held, released)
    state: Mutex<(bool, bool)>,
    cond: Condvar,
    renames: AtomicU64,
}

impl Io for GateIo {
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.renames.fetch_add(1, Ordering::SeqCst);
        let checkpoint = from.to_string_lossy().ends_with(".ckpt.tmp");
        if checkpoint && self.armed.swap(false, Ordering::SeqCst) {
            let mut st = self.state.lock().unwrap();
            st.0 = true;
            self.cond.notify_all();
            while !st.1 {
                st = self.cond.wait(st).unwrap();
            }
        }
        std::fs::rename(from, to)
    }
    fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
        file.set_len(len)
    }
}

/// A background checkpoint in progress blocks no command: with the
/// checkpoint held between writing its file and putting it in place, commands
/// from two threads commit, and the checkpoint then completes.
#[test]
fn commands_commit_while_a_background_checkpoint_runs() {
    let dir = TempDir::new("auto-concurrent");
    let io = Arc::new(GateIo::default());
    io.armed.store(true, Ordering::SeqCst);
    let engine = Engine::open_with_io(dir.path(), opts(by_size()), io.clone()).unwrap();
    write_load(&engine, 1500);
    {
        let mut st = io.state.lock().unwrap();
        while !st.0 {
            st = io.cond.wait(st).unwrap();
        }
    }
    let held_at = engine.commit_id().get();
    write_load(&engine, 200);
    assert_eq!(engine.commit_id().get(), held_at + 400);
    assert_eq!(engine.stats().journal.auto_checkpoints, 0);
    io.state.lock().unwrap().1 = true;
    io.cond.notify_all();
    wait_for("the held checkpoint", &engine, |j| j.auto_checkpoints >= 1);
}
