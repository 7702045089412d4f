//! Power loss: a scenario runs on a [`PowerLossIo`], which cuts the power at
//! its N-th file operation; the disk as the cut leaves it (unsynced bytes,
//! including those written through the segment mappings, dropped, kept, or torn
//! at sector boundaries; directory entries durable only after a directory
//! fsync) is written out and opened. N runs over every operation of the
//! scenario, for `Durable` and `Buffered`, with checkpoints and records larger
//! than a segment. After every cut:
//!
//! - the image opens: a power cut is never reported as corruption;
//! - `Durable`: every acknowledged commit is there; `Buffered`: so is every one
//!   when the unsynced bytes were all kept in the same boot (a process crash),
//!   while after a reboot the unsynced tail may be gone;
//! - the state is exactly that of a prefix of the commit order, and the chain
//!   hash is the one the uncut run had at that commit;
//! - the recovered engine takes the next commit, closes, and reopens with it.
//!
//! `SHARDSTONE_POWER_SEEDS=n` tears each crash image with n seeds instead of 1
//! (the soak: `SHARDSTONE_POWER_SEEDS=50 cargo test --release --test power_loss`).

mod common;

use common::{cpus_for_shards, par_map, pin, scan, Entries, TempDir};
use shardstone::{ChainHash, CommitId, Durability, Engine, Fate, Io, Options, PowerLossIo};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const SEGMENT_SIZE: u64 = 64 * 1024;
const COMMANDS: usize = 16;
/// The boot the scenario runs in; a recovery in it is one after a process crash.
const BOOT: [u8; 16] = [0xa5; 16];
const REBOOTED: [u8; 16] = [0x5a; 16];

fn opts(durability: Durability, shards: usize) -> Options {
    Options {
        durability,
        journal_shards: shards,
        segment_size: SEGMENT_SIZE,
        numa: shardstone::numa::Numa::Off,
        ..Default::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:03}").into_bytes()
}

/// Every fifth value is larger than a segment; every third is a few KB.
fn value(i: usize) -> Vec<u8> {
    let len = if i % 5 == 3 {
        SEGMENT_SIZE as usize + 6000
    } else if i.is_multiple_of(3) {
        3000
    } else {
        100
    };
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// A checkpoint is taken before these commands: the one before command 3 is
/// followed at once by a record larger than a segment (the shape of the
/// checkpoint-then-big-record bug).
fn checkpoint_before(i: usize) -> bool {
    matches!(i, 3 | 9 | 14)
}

/// The state after `p` commands: command `i` puts `key(i)` and sets `count`.
fn prefix_state(p: usize) -> Entries {
    let mut m = BTreeMap::new();
    for i in 0..p {
        m.insert(key(i), value(i));
    }
    if p > 0 {
        m.insert(b"count".to_vec(), (p as u64).to_le_bytes().to_vec());
    }
    m.into_iter().collect()
}

/// What a run of the scenario got done before the power went out.
struct Run {
    /// Commit ids acknowledged before the cut.
    acked: Vec<u64>,
    /// Chain hash after each commit of an uncut run (index = commit id).
    hashes: Vec<(CommitId, ChainHash)>,
}

/// Runs the scenario on `io`, stopping at the first failure (the power cut).
/// With more than one shard, on a thread of its own that moves to the CPU of
/// each shard in turn, so that the operations are the same in every run.
fn run_scenario(dir: &Path, durability: Durability, shards: usize, io: &Arc<PowerLossIo>) -> Run {
    let cpus = cpus_for_shards(&opts(durability, shards)).filter(|_| shards > 1);
    std::thread::scope(|s| {
        s.spawn(|| scenario_here(dir, durability, shards, io, cpus.as_deref()))
            .join()
            .unwrap()
    })
}

fn scenario_here(
    dir: &Path,
    durability: Durability,
    shards: usize,
    io: &Arc<PowerLossIo>,
    cpus: Option<&[usize]>,
) -> Run {
    let mut run = Run {
        acked: Vec::new(),
        hashes: Vec::new(),
    };
    let opened = Engine::open_with_io(dir, opts(durability, shards), io.clone() as Arc<dyn Io>);
    let Ok(engine) = opened else {
        return run;
    };
    run.hashes.push(engine.last_commit());
    for i in 0..COMMANDS {
        if let Some(cpus) = cpus {
            pin(cpus[i % cpus.len()]);
        }
        if checkpoint_before(i) && engine.checkpoint().is_err() {
            break;
        }
        let done = engine.run("put", |tx| {
            tx.put(&key(i), &value(i))?;
            tx.put(b"count", &(i as u64 + 1).to_le_bytes())?;
            Ok(())
        });
        if done.is_err() {
            break;
        }
        if !io.crashed() {
            run.acked.push(engine.commit_id().get());
        }
        run.hashes.push(engine.last_commit());
    }
    drop(engine);
    run
}

/// What to check an image against.
struct Expect<'a> {
    reference: &'a [(CommitId, ChainHash)],
    /// Every one of these must have survived.
    acked: &'a [u64],
}

/// Opens the image in `dir` in boot `boot` and checks it; `Err` says what broke.
fn check_image(
    dir: &Path,
    durability: Durability,
    shards: usize,
    boot: [u8; 16],
    e: &Expect,
) -> Result<bool, String> {
    let io = Arc::new(
        PowerLossIo::new(dir, None)
            .map_err(|err| format!("reading the image: {err}"))?
            .with_boot_id(Some(boot)),
    );
    let engine = Engine::open_with_io(dir, opts(durability, shards), io as Arc<dyn Io>)
        .map_err(|err| format!("the image does not open: {err}"))?;
    let (last, hash) = engine.last_commit();
    let report = engine.stats().journal.recovery;
    if report.salvage.is_some() || report.promised > last.get() {
        return Err(format!(
            "opened at commit {} but reports {report:?}",
            last.get()
        ));
    }
    let cut = report.dropped_commits + report.dropped_bytes + report.removed_segments > 0;
    let p = last.get() as usize;
    if let Some(lost) = e.acked.iter().find(|&&id| id > last.get()) {
        return Err(format!(
            "acknowledged commit {lost} is gone: opened at commit {p}"
        ));
    }
    let Some(&(want_id, want_hash)) = e.reference.get(p) else {
        return Err(format!("opened at commit {p}, beyond every commit made"));
    };
    if (want_id, want_hash) != (last, hash) {
        return Err(format!("opened at commit {p} with another chain hash"));
    }
    if scan(&engine.snapshot()) != prefix_state(p) {
        return Err(format!(
            "the state at commit {p} is not that of the first {p} commands"
        ));
    }
    engine
        .run("after", |tx| tx.put(b"after", b"1"))
        .map_err(|err| format!("the recovered engine refuses a commit: {err}"))?;
    engine
        .close()
        .map_err(|err| format!("the recovered engine does not close: {err}"))?;
    let engine = Engine::open_with(dir, opts(durability, shards))
        .map_err(|err| format!("the second reopen fails: {err}"))?;
    if engine.commit_id().get() != last.get() + 1 {
        return Err(format!(
            "the second reopen is at commit {}, not {}",
            engine.commit_id().get(),
            last.get() + 1
        ));
    }
    Ok(cut)
}

fn seeds() -> u64 {
    std::env::var("SHARDSTONE_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Cuts the power at every operation of the scenario and checks each image.
fn every_crash_point(durability: Durability, shards: usize) {
    let clean = TempDir::new("power-clean");
    std::fs::create_dir_all(clean.path()).unwrap();
    let io = Arc::new(
        PowerLossIo::new(clean.path(), None)
            .unwrap()
            .with_boot_id(Some(BOOT)),
    );
    let reference = run_scenario(clean.path(), durability, shards, &io);
    assert_eq!(
        reference.hashes.len(),
        COMMANDS + 1,
        "the uncut scenario runs whole"
    );
    let ops = io.ops();
    assert!(ops > 20, "the scenario does file operations ({ops})");

    let points: Vec<u64> = (0..ops).collect();
    let cuts = std::sync::atomic::AtomicUsize::new(0);
    let failures: Vec<String> = par_map(&points, 1, |&n| {
        let dir = TempDir::new("power-run");
        std::fs::create_dir_all(dir.path()).unwrap();
        let io = Arc::new(
            PowerLossIo::new(dir.path(), Some(n))
                .unwrap()
                .with_boot_id(Some(BOOT)),
        );
        let run = run_scenario(dir.path(), durability, shards, &io);
        assert!(io.crashed(), "operation {n} is reached");
        let mut fates: Vec<(Fate, [u8; 16])> = vec![(Fate::Kept, BOOT), (Fate::Dropped, REBOOTED)];
        fates.extend((0..seeds()).map(|s| (Fate::Torn(n * 1000 + s), REBOOTED)));
        let mut bad = Vec::new();
        for (fate, boot) in fates {
            let image = TempDir::new("power-image");
            io.image(image.path(), |_| fate).unwrap();
            // A Durable commit survives anything; a Buffered one only a crash
            // that kept the page cache.
            let must_keep = durability == Durability::Durable || fate == Fate::Kept;
            let acked: &[u64] = if must_keep { &run.acked } else { &[] };
            let expect = Expect {
                reference: &reference.hashes,
                acked,
            };
            match check_image(image.path(), durability, shards, boot, &expect) {
                Ok(true) => {
                    cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(why) => bad.push(format!(
                    "{durability:?}, {shards} shard(s), cut at operation {n} of {ops}, {fate:?}: {why}"
                )),
            }
        }
        bad
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(
        failures.is_empty(),
        "{} crash images of {} crash points broke a promise:\n  {}",
        failures.len(),
        ops,
        failures.join("\n  ")
    );
    // Some images had a torn or unacknowledged tail, and recovery said so.
    let cuts = cuts.into_inner();
    eprintln!(
        "{durability:?}, {shards} shard(s): {ops} crash points, {} images each, {cuts} needed a cut",
        2 + seeds()
    );
    assert!(cuts > 0, "no crash image needed a cut");
}

#[test]
fn durable_survives_a_power_cut_at_every_operation() {
    every_crash_point(Durability::Durable, 1);
}

#[test]
fn durable_on_two_shards_survives_a_power_cut_at_every_operation() {
    every_crash_point(Durability::Durable, 2);
}

#[test]
fn buffered_survives_a_power_cut_at_every_operation() {
    every_crash_point(Durability::Buffered, 1);
}

/// The exact shape of the false-corruption bug: a checkpoint starts a new
/// segment (created, its header written through the mapping, never synced);
/// the next record is larger than a segment, so it goes into the segment after
/// that one; the power goes out during that commit's flush, after the big
/// segment reached the disk but not the small one. Nothing acknowledged is
/// missing, so the database opens, with or without the big record.
#[test]
fn a_checkpoint_then_a_record_larger_than_a_segment_then_a_power_cut_opens() {
    for durability in [Durability::Durable, Durability::Buffered] {
        let dir = TempDir::new("power-bug1");
        std::fs::create_dir_all(dir.path()).unwrap();
        // Find the operation at which the big commit's flush starts: the first
        // fdatasync after the roll for the big record, counted in an uncut run.
        let counting = Arc::new(PowerLossIo::new(dir.path(), None).unwrap());
        let engine = Engine::open_with_io(
            dir.path(),
            opts(durability, 1),
            counting.clone() as Arc<dyn Io>,
        )
        .unwrap();
        engine.run("small", |tx| tx.put(b"a", b"1")).unwrap();
        engine.checkpoint().unwrap();
        let before_big = counting.ops();
        engine
            .run("big", |tx| {
                tx.put(b"big", &vec![7u8; SEGMENT_SIZE as usize + 100])
            })
            .unwrap();
        let after_big = counting.ops();
        drop(engine);
        drop(dir);
        // Cut at each operation of the big commit, keeping only the big
        // segment's bytes: the checkpoint's new segment is lost (empty, or zero
        // filled as ext4 leaves it).
        for n in before_big..=after_big {
            for lost in [Fate::Dropped, Fate::Torn(0)] {
                let dir = TempDir::new("power-bug1-run");
                std::fs::create_dir_all(dir.path()).unwrap();
                let io = Arc::new(PowerLossIo::new(dir.path(), Some(n)).unwrap());
                let engine = Engine::open_with_io(
                    dir.path(),
                    opts(durability, 1),
                    io.clone() as Arc<dyn Io>,
                )
                .unwrap();
                engine.run("small", |tx| tx.put(b"a", b"1")).unwrap();
                engine.checkpoint().unwrap();
                let _ = engine.run("big", |tx| {
                    tx.put(b"big", &vec![7u8; SEGMENT_SIZE as usize + 100])
                });
                drop(engine);
                let segments = journal_segments(dir.path());
                let newest = segments.last().cloned();
                let image = TempDir::new("power-bug1-image");
                io.image(image.path(), |p| {
                    if newest.as_deref() == p.file_name().and_then(|f| f.to_str()) {
                        Fate::Kept
                    } else if segments.iter().any(|s| p.ends_with(s)) {
                        lost
                    } else {
                        Fate::Kept
                    }
                })
                .unwrap();
                let engine =
                    Engine::open_with(image.path(), opts(durability, 1)).unwrap_or_else(|e| {
                        panic!("{durability:?}, cut at {n}, {lost:?}: the image does not open: {e}")
                    });
                let id = engine.commit_id().get();
                assert!(
                    (1..=2).contains(&id),
                    "{durability:?}, cut at {n}: opened at commit {id}"
                );
                assert_eq!(
                    engine.snapshot().get(b"a").unwrap().as_deref(),
                    Some(&b"1"[..])
                );
            }
        }
    }
}

/// The names of the segment files in `dir/journal`, oldest first.
fn journal_segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
