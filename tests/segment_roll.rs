//! Segment rolls off the disk's critical path: the journal prepares segments
//! (create, `fallocate`, directory fsync, mapping, faulting in) on a background
//! thread, so a roll swaps in a ready spare; when none is ready it prepares one
//! inline, and never waits for the thread.
//!
//! A [`GatedIo`] (the operating system's file operations, with the background
//! thread's `allocate` held at a gate the test opens) makes "a slow preparation
//! in progress" deterministic: the tests wait for the thread to reach the gate,
//! then check that commits forcing rolls finish while it is still shut, that a
//! close while it is shut ends cleanly once it opens, that a spare segment left
//! at a crash is removed on reopen without loss, and that rolls leave a journal
//! that reopens to the same state.

mod common;

use common::{scan, Entries, Rng, TempDir};
use shardstone::{Durability, Engine, Error, Fate, Io, Options, OsIo, PowerLossIo};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SEGMENT_SIZE: u64 = 64 * 1024;
/// Bounded waits: a regression fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

fn opts(durability: Durability) -> Options {
    Options {
        durability,
        journal_shards: 1,
        segment_size: SEGMENT_SIZE,
        numa: shardstone::numa::Numa::Off,
        ..Default::default()
    }
}

/// Whether the calling thread is the journal's segment preparer.
fn on_preparer() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("shardstone-segments"))
}

#[derive(Default)]
struct Gate {
    /// The preparer's `allocate` calls from this one on wait at the gate.
    hold_from: Option<u64>,
    open: bool,
    /// Preparer `allocate` calls waiting at the gate now.
    waiting: u64,
}

/// The OS's file operations, prepared ahead (`prepares_ahead`), with the
/// preparer thread's `allocate` held at a gate, or failed with `ENOSPC`.
#[derive(Default)]
struct GatedIo {
    gate: Mutex<Gate>,
    changed: Condvar,
    /// `allocate` calls on the preparer thread, and on any other (inline rolls).
    preparer_allocates: AtomicU64,
    inline_allocates: AtomicU64,
    preparer_dir_syncs: AtomicU64,
    /// Fail every `allocate` on the preparer thread (a full disk it alone sees).
    fail_preparer: bool,
    /// Fail this many `allocate` calls on other threads.
    fail_inline: AtomicU64,
}

impl GatedIo {
    fn holding_from(n: u64) -> GatedIo {
        GatedIo {
            gate: Mutex::new(Gate {
                hold_from: Some(n),
                ..Gate::default()
            }),
            ..GatedIo::default()
        }
    }

    /// Waits until `ready(gate)` holds; panics after `PATIENCE`.
    fn wait_for(&self, what: &str, ready: impl Fn(&Gate, &GatedIo) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut g = self.gate.lock().unwrap();
        while !ready(&g, self) {
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}");
            g = self
                .changed
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(20)))
                .unwrap()
                .0;
        }
    }

    fn open_gate(&self) {
        self.gate.lock().unwrap().open = true;
        self.changed.notify_all();
    }
}

impl Io for GatedIo {
    fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
        if on_preparer() {
            let n = self.preparer_allocates.fetch_add(1, Ordering::SeqCst);
            if self.fail_preparer {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let mut g = self.gate.lock().unwrap();
            if g.hold_from.is_some_and(|from| n >= from) {
                g.waiting += 1;
                self.changed.notify_all();
                while !g.open {
                    g = self.changed.wait(g).unwrap();
                }
                g.waiting -= 1;
            }
        } else {
            self.inline_allocates.fetch_add(1, Ordering::SeqCst);
            let fail = self
                .fail_inline
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if fail.is_ok() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        OsIo.allocate(file, len)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let r = OsIo.sync_dir(dir);
        if on_preparer() {
            self.preparer_dir_syncs.fetch_add(1, Ordering::SeqCst);
            let _g = self.gate.lock().unwrap();
            self.changed.notify_all();
        }
        r
    }
    fn prepares_ahead(&self) -> bool {
        true
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// About 2 KB: a 64 KiB segment holds some 30 of them.
fn value(i: usize) -> Vec<u8> {
    Rng::new(i as u64).bytes(2000)
}

/// Runs `f` on its own thread; panics if it has not finished within `PATIENCE`.
fn finishes<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

/// The segment files of `dir`'s journal, each with whether it has a header
/// (a prepared spare has none: only zeros).
fn segments(dir: &Path) -> BTreeMap<String, bool> {
    std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            name.ends_with(".log").then_some(())?;
            let mut head = [0u8; 8];
            let n = std::io::Read::read(&mut File::open(e.path()).ok()?, &mut head).ok()?;
            Some((name, n == 8 && &head == b"SSTNJRNL"))
        })
        .collect()
}

fn model(range: std::ops::Range<usize>) -> Entries {
    range.map(|i| (key(i), value(i))).collect()
}

/// Reopens `dir` with the OS's I/O and checks it holds exactly `want`, with
/// nothing cut and no segment reported.
fn reopens_to(dir: &Path, durability: Durability, want: &Entries, removed: Option<u64>) {
    let engine = Engine::open_with(dir, opts(durability)).unwrap();
    let report = engine.stats().journal.recovery;
    assert!(report.salvage.is_none(), "{report:?}");
    assert_eq!(
        (report.dropped_commits, report.dropped_bytes),
        (0, 0),
        "{report:?}"
    );
    if let Some(removed) = removed {
        assert_eq!(report.removed_segments, removed, "{report:?}");
    }
    assert_eq!(&scan(&engine.snapshot()), want);
    assert_eq!(engine.commit_id().get(), want.len() as u64);
    engine.close().unwrap();
}

#[test]
fn commits_that_roll_finish_while_a_preparation_is_blocked() {
    for durability in [Durability::Durable, Durability::Buffered] {
        let dir = TempDir::new("roll-blocked");
        // The first spare is prepared freely; the second one blocks.
        let io = Arc::new(GatedIo::holding_from(1));
        let engine = Arc::new(
            Engine::open_with_io(dir.path(), opts(durability), io.clone() as Arc<dyn Io>).unwrap(),
        );
        io.wait_for("the first spare", |_, io| {
            io.preparer_dir_syncs.load(Ordering::SeqCst) >= 1
        });
        // The first roll takes that spare (or, if the thread has not yet marked
        // it ready, prepares inline); either way the thread is asked for the
        // next one, which blocks at the gate.
        engine.run("put", |tx| tx.put(&key(0), &value(0))).unwrap();
        io.wait_for("the next preparation to block", |g, _| g.waiting == 1);

        // 150 commits of 2 KB: several rolls, all while the preparation waits.
        let e = engine.clone();
        finishes("commits rolling past a blocked preparation", move || {
            for i in 1..150 {
                e.run("put", |tx| tx.put(&key(i), &value(i))).unwrap();
            }
        });
        {
            let g = io.gate.lock().unwrap();
            assert_eq!((g.waiting, g.open), (1, false), "still blocked");
        }
        let inline = io.inline_allocates.load(Ordering::SeqCst);
        assert!(inline >= 3, "rolls prepared inline meanwhile: {inline}");
        assert_eq!(scan(&engine.snapshot()), model(0..150));

        // Let it finish: the spare it made is older than the current segment
        // (stale) and goes; the close removes whatever spare is left.
        io.open_gate();
        let engine = Arc::try_unwrap(engine).unwrap();
        finishes("close", move || engine.close()).unwrap();
        let segs = segments(dir.path());
        assert!(segs.values().all(|&has| has), "{segs:?}");
        reopens_to(dir.path(), durability, &model(0..150), Some(0));
    }
}

#[test]
fn close_or_drop_while_a_preparation_is_blocked_ends_cleanly() {
    for close in [true, false] {
        let dir = TempDir::new("close-blocked");
        let io = Arc::new(GatedIo::holding_from(0));
        let engine = Engine::open_with_io(
            dir.path(),
            opts(Durability::Durable),
            io.clone() as Arc<dyn Io>,
        )
        .unwrap();
        io.wait_for("the first preparation to block", |g, _| g.waiting == 1);
        for i in 0..40 {
            engine.run("put", |tx| tx.put(&key(i), &value(i))).unwrap();
        }
        let done = {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let r = if close {
                    engine.close()
                } else {
                    drop(engine);
                    Ok(())
                };
                let _ = tx.send(r);
            });
            rx
        };
        // The close waits for the preparation in progress (a system call cannot
        // be abandoned), then stops the thread and removes the spare.
        io.open_gate();
        done.recv_timeout(PATIENCE)
            .expect("the close finished once the preparation did")
            .unwrap();
        let after = io.preparer_allocates.load(Ordering::SeqCst);
        if close {
            let segs = segments(dir.path());
            assert!(segs.values().all(|&has| has), "{segs:?}");
        }
        // A dropped engine leaves its spare like a crash would: removed on open.
        reopens_to(dir.path(), Durability::Durable, &model(0..40), None);
        assert_eq!(
            io.preparer_allocates.load(Ordering::SeqCst),
            after,
            "the preparer thread is gone"
        );
    }
}

/// Copies the database directory (what a crash would leave with the page
/// cache intact: a process crash).
fn copy_dir(from: &Path, to: &Path) {
    for sub in ["", "journal"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
}

#[test]
fn a_spare_left_at_a_crash_is_removed_on_reopen() {
    for durability in [Durability::Durable, Durability::Buffered] {
        // A ready spare (full length, zeros) after the last segment in use.
        let dir = TempDir::new("crash-spare");
        let io = Arc::new(GatedIo::default());
        let engine =
            Engine::open_with_io(dir.path(), opts(durability), io.clone() as Arc<dyn Io>).unwrap();
        for i in 0..100 {
            engine.run("put", |tx| tx.put(&key(i), &value(i))).unwrap();
        }
        // Wait for the spare after the last roll: a file of zeros, allocated.
        let deadline = Instant::now() + PATIENCE;
        while !std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                segments(dir.path()).get(&name) == Some(&false)
                    && e.metadata().is_ok_and(|m| m.len() == SEGMENT_SIZE)
            })
        {
            assert!(Instant::now() < deadline, "no spare was prepared");
            std::thread::sleep(Duration::from_millis(5));
        }
        let crashed = TempDir::new("crash-spare-image");
        copy_dir(dir.path(), crashed.path());
        drop(engine);
        let segs = segments(crashed.path());
        // One; two if an inline roll raced the thread and left a stale one.
        let spares = segs.values().filter(|&&h| !h).count() as u64;
        assert!(spares >= 1, "a spare at the crash: {segs:?}");
        reopens_to(crashed.path(), durability, &model(0..100), Some(spares));
        let left = segments(crashed.path());
        assert!(left.values().all(|&h| h), "spare removed: {left:?}");

        // A spare the crash caught mid-preparation (created, not yet
        // allocated), numbered below the segments inline rolls made meanwhile.
        let dir = TempDir::new("crash-stale");
        let io = Arc::new(GatedIo::holding_from(0));
        let engine =
            Engine::open_with_io(dir.path(), opts(durability), io.clone() as Arc<dyn Io>).unwrap();
        io.wait_for("the first preparation to block", |g, _| g.waiting == 1);
        for i in 0..100 {
            engine.run("put", |tx| tx.put(&key(i), &value(i))).unwrap();
        }
        let crashed = TempDir::new("crash-stale-image");
        copy_dir(dir.path(), crashed.path());
        io.open_gate();
        drop(engine);
        let segs = segments(crashed.path());
        let first = segs.iter().next().map(|(n, h)| (n.clone(), *h));
        assert!(
            matches!(&first, Some((_, false))),
            "the blocked spare has the lowest number: {segs:?}"
        );
        reopens_to(crashed.path(), durability, &model(0..100), Some(1));
        let left = segments(crashed.path());
        assert!(left.values().all(|&h| h), "spare removed: {left:?}");
    }
}

#[test]
fn a_full_disk_for_the_thread_falls_back_to_inline_rolls() {
    let dir = TempDir::new("roll-nospace");
    let io = Arc::new(GatedIo {
        fail_preparer: true,
        ..GatedIo::default()
    });
    let engine = Engine::open_with_io(
        dir.path(),
        opts(Durability::Durable),
        io.clone() as Arc<dyn Io>,
    )
    .unwrap();
    let mut acked = Vec::new();
    for i in 0..100 {
        if i == 50 {
            // The disk is full for the committing thread too, for one allocate.
            io.fail_inline.store(1, Ordering::SeqCst);
        }
        let before = engine.commit_id().get();
        match engine.run("put", |tx| tx.put(&key(i), &value(i))) {
            Ok(()) => acked.push(i),
            Err(Error::Io {
                op: "allocate",
                source,
                ..
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
                assert_eq!(engine.commit_id().get(), before, "no id taken");
            }
            Err(e) => panic!("command {i}: {e}"),
        }
    }
    assert_eq!(
        acked.len(),
        99,
        "exactly the commit that met the full disk failed"
    );
    assert!(io.preparer_allocates.load(Ordering::SeqCst) >= 1);
    assert!(io.inline_allocates.load(Ordering::SeqCst) >= 3);
    engine.close().unwrap();
    let want: Entries = acked.iter().map(|&i| (key(i), value(i))).collect();
    reopens_to(dir.path(), Durability::Durable, &want, Some(0));
}

#[test]
fn rolls_under_concurrent_commits_reopen_to_the_same_state() {
    let dir = TempDir::new("roll-concurrent");
    let o = Options {
        journal_shards: 2,
        ..opts(Durability::Durable)
    };
    let engine = Engine::open_with_io(dir.path(), o.clone(), Arc::new(OsIo)).unwrap();
    let want: Mutex<BTreeMap<Vec<u8>, Vec<u8>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (engine, want) = (&engine, &want);
            s.spawn(move || {
                let mut rng = Rng::new(t);
                for i in 0..300 {
                    let k = format!("t{t}-{:03}", rng.below(200)).into_bytes();
                    // Now and then a record larger than a segment.
                    let len = if i % 97 == 5 {
                        SEGMENT_SIZE as usize + 1000
                    } else {
                        rng.range_incl(10, 3000) as usize
                    };
                    let v = rng.bytes(len);
                    engine.run("put", |tx| tx.put(&k, &v)).unwrap();
                    want.lock().unwrap().insert(k, v);
                }
            });
        }
    });
    let want: Entries = want.into_inner().unwrap().into_iter().collect();
    assert_eq!(scan(&engine.snapshot()), want);
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), o).unwrap();
    let report = engine.stats().journal.recovery;
    assert!(
        report.salvage.is_none() && report.removed_segments == 0,
        "{report:?}"
    );
    assert_eq!(engine.commit_id().get(), 600);
    assert_eq!(scan(&engine.snapshot()), want);
}

/// A [`PowerLossIo`] that lets the journal prepare ahead: the power-loss
/// matrix of `tests/power_loss.rs` keeps preparation inline (its crash points
/// must come in the same order every run); here the order varies, so every
/// crash point reached is checked and the others skipped.
struct PowerLossAhead(PowerLossIo);

impl Io for PowerLossAhead {
    fn create(&self, path: &Path) -> std::io::Result<File> {
        self.0.create(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.0.create_dir(path)
    }
    fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
        self.0.allocate(file, len)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(file, buf, offset)
    }
    fn sync(&self, file: &File) -> std::io::Result<()> {
        self.0.sync(file)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.0.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn truncate(&self, file: &File, len: u64) -> std::io::Result<()> {
        self.0.truncate(file, len)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove(path)
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        self.0.boot_id()
    }
    fn prepares_ahead(&self) -> bool {
        true
    }
}

/// Runs 40 commits of 2 KB (several rolls) on `io`; returns those acknowledged
/// before the power went out.
fn power_scenario(dir: &Path, io: &Arc<PowerLossAhead>) -> Vec<usize> {
    let mut acked = Vec::new();
    let Ok(engine) = Engine::open_with_io(dir, opts(Durability::Durable), io.clone()) else {
        return acked;
    };
    for i in 0..40 {
        if engine.run("put", |tx| tx.put(&key(i), &value(i))).is_err() {
            break;
        }
        if !io.0.crashed() {
            acked.push(i);
        }
    }
    drop(engine);
    acked
}

#[test]
fn a_power_cut_during_background_preparation_loses_nothing_acknowledged() {
    let clean = TempDir::new("ahead-clean");
    std::fs::create_dir_all(clean.path()).unwrap();
    let io = Arc::new(PowerLossAhead(
        PowerLossIo::new(clean.path(), None).unwrap(),
    ));
    assert_eq!(power_scenario(clean.path(), &io).len(), 40);
    let ops = io.0.ops();
    let (mut reached, mut checked) = (0u64, 0u64);
    for n in 0..ops {
        let dir = TempDir::new("ahead-run");
        std::fs::create_dir_all(dir.path()).unwrap();
        let io = Arc::new(PowerLossAhead(
            PowerLossIo::new(dir.path(), Some(n)).unwrap(),
        ));
        let acked = power_scenario(dir.path(), &io);
        if !io.0.crashed() {
            // The thread's operations fell elsewhere in this run's order.
            continue;
        }
        reached += 1;
        for fate in [Fate::Dropped, Fate::Kept, Fate::Torn(n)] {
            let image = TempDir::new("ahead-image");
            io.0.image(image.path(), |_| fate).unwrap();
            let engine = Engine::open_with(image.path(), opts(Durability::Durable))
                .unwrap_or_else(|e| panic!("cut at {n} of {ops}, {fate:?}: {e}"));
            let report = engine.stats().journal.recovery;
            assert!(report.salvage.is_none(), "cut at {n}, {fate:?}: {report:?}");
            let last = engine.commit_id().get() as usize;
            assert!(
                acked.len() <= last,
                "cut at {n}, {fate:?}: {} acknowledged, {last} recovered",
                acked.len()
            );
            assert_eq!(scan(&engine.snapshot()), model(0..last), "cut at {n}");
            engine.close().unwrap();
            let segs = segments(image.path());
            assert!(segs.values().all(|&h| h), "cut at {n}: {segs:?}");
            checked += 1;
        }
    }
    assert!(
        reached * 2 >= ops && checked == 3 * reached,
        "{reached} of {ops} crash points reached, {checked} images checked"
    );
}
