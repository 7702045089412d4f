//! `Engine::verify`, `verify_dir`, `stat_dir`: a clean database verifies, live
//! and closed; damaged copies are reported naming the file and offset; verify
//! never blocks writers and never disturbs a directory an engine has open.

mod common;

use common::{copy_db, TempDir};
use shardstone::{stat_dir, verify_dir, Durability, Engine, FindingKind, Options};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn opts() -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards: 2,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// A closed database: a checkpoint at commit 40, then 40 more commits, some
/// values large enough for overflow chains.
fn build(dir: &Path) -> Engine {
    let engine = Engine::open_with(dir, opts()).unwrap();
    for i in 0..80u64 {
        engine
            .run("fill", |tx| {
                tx.put(format!("key:{i:04}").as_bytes(), &i.to_le_bytes())?;
                if i % 10 == 0 {
                    tx.put(format!("big:{i:04}").as_bytes(), &vec![i as u8; 9000])?;
                }
                Ok(())
            })
            .unwrap();
        if i == 39 {
            engine.checkpoint().unwrap();
        }
    }
    engine
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs
}

fn checkpoint(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .expect("a checkpoint")
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// A damaged copy of a clean closed database.
fn damaged(name: &str, damage: impl FnOnce(&Path)) -> (TempDir, TempDir) {
    let src = TempDir::new(&format!("verify-src-{name}"));
    build(src.path()).close().unwrap();
    let copy = TempDir::new(&format!("verify-copy-{name}"));
    copy_db(src.path(), copy.path());
    damage(copy.path());
    (src, copy)
}

#[test]
fn a_clean_database_verifies_live_and_closed() {
    let dir = TempDir::new("verify-clean");
    let engine = build(dir.path());
    let report = engine.verify().unwrap();
    assert!(report.ok, "{report}");
    assert!(report.tree_checked && report.pages > 0 && report.overflow_pages > 0);
    assert_eq!(report.keys, 88);
    assert_eq!(report.intact_up_to, Some(engine.last_commit()));
    assert_eq!(report.checkpoint.map(|(id, _)| id.get()), Some(40));
    assert_eq!(report.records, 40);
    let last = engine.last_commit();
    engine.close().unwrap();
    let report = verify_dir(dir.path()).unwrap();
    assert!(report.ok, "{report}");
    assert!(!report.in_use);
    assert_eq!(report.intact_up_to, Some(last));
    assert_eq!(report.checkpoint_entries, 44);
    assert!(report.to_string().starts_with("ok"));
    // Nothing was written: the database opens at the same point.
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert_eq!(engine.last_commit(), last);
}

#[test]
fn in_memory_engines_verify_their_tree() {
    let engine = Engine::in_memory().unwrap();
    for i in 0..2000u64 {
        engine
            .run("fill", |tx| tx.put(&i.to_be_bytes(), &[7; 100]))
            .unwrap();
    }
    let report = engine.verify().unwrap();
    assert!(report.ok, "{report}");
    assert!(report.pages > 10, "{report}");
    assert_eq!(report.keys, 2000);
}

#[test]
fn a_flipped_byte_in_a_segment_frame_is_named() {
    let mut flipped = None;
    let (_src, copy) = damaged("frame", |dir| {
        let seg = segments(dir)
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        // Inside the first frame's body: segment header 64, frame header 64.
        let at = 64 + 64 + 10;
        flip(&seg, at);
        flipped = Some((seg, at));
    });
    let (seg, at) = flipped.unwrap();
    let report = verify_dir(copy.path()).unwrap();
    assert!(!report.ok, "{report}");
    let f = report
        .findings
        .iter()
        .find(|f| f.file.as_deref().and_then(Path::file_name) == seg.file_name())
        .unwrap_or_else(|| panic!("no finding names {}: {report}", seg.display()));
    assert!(f.offset.unwrap() <= at, "{f}");
    assert_eq!(f.what, FindingKind::SegmentDamaged, "{f}");
    assert!(
        report.intact_up_to.is_some_and(|(id, _)| id.get() < 80),
        "{report}"
    );
}

#[test]
fn a_deleted_segment_is_named() {
    let mut deleted = None;
    let (_src, copy) = damaged("deleted", |dir| {
        // A segment holding a commit after the checkpoint (commit 80 writes
        // key:0079): which shard's files hold what depends on where the
        // writing thread ran, and a segment holding only commits the
        // checkpoint covers (or a close mark) loses nothing when deleted.
        let (seg, _) = find_in_segments(dir, b"key:0079");
        std::fs::remove_file(&seg).unwrap();
        deleted = Some(seg);
    });
    let seg = deleted.unwrap();
    let report = verify_dir(copy.path()).unwrap();
    assert!(!report.ok, "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.what == FindingKind::SegmentMissing
                && f.file.as_deref().and_then(Path::file_name) == seg.file_name()),
        "{report}"
    );
}

#[test]
fn a_truncated_checkpoint_is_named() {
    let (_src, copy) = damaged("ckpt-cut", |dir| {
        let ckpt = checkpoint(dir);
        let len = std::fs::metadata(&ckpt).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ckpt)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
    });
    let report = verify_dir(copy.path()).unwrap();
    assert!(!report.ok, "{report}");
    let ckpt = checkpoint(copy.path());
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.what == FindingKind::CheckpointDamaged
                && f.file.as_deref() == Some(ckpt.as_path())),
        "{report}"
    );
}

#[test]
fn a_flipped_byte_in_the_checkpoint_is_named() {
    let at = 64 * 1024 + 500;
    let (_src, copy) = damaged("ckpt-flip", |dir| flip(&checkpoint(dir), at));
    let report = verify_dir(copy.path()).unwrap();
    assert!(!report.ok, "{report}");
    let ckpt = checkpoint(copy.path());
    let f = report
        .findings
        .iter()
        .find(|f| f.file.as_deref() == Some(ckpt.as_path()))
        .unwrap_or_else(|| panic!("no finding names the checkpoint: {report}"));
    assert_eq!(f.what, FindingKind::CheckpointDamaged);
    assert!(f.offset.unwrap() <= at, "{f}");
}

#[test]
fn damage_never_panics_verify_dir() {
    let src = TempDir::new("verify-nopanic-src");
    build(src.path()).close().unwrap();
    let copy = TempDir::new("verify-nopanic");
    let files: Vec<PathBuf> = segments(src.path())
        .into_iter()
        .chain([checkpoint(src.path()), src.path().join("manifest")])
        .collect();
    for file in files {
        let len = std::fs::metadata(&file).unwrap().len();
        for at in (0..len).step_by(997) {
            let _ = std::fs::remove_dir_all(copy.path());
            copy_db(src.path(), copy.path());
            let rel = file.strip_prefix(src.path()).unwrap();
            flip(&copy.path().join(rel), at);
            let report = verify_dir(copy.path()).unwrap();
            let _ = report.to_string();
        }
    }
}

#[test]
fn verify_on_a_live_engine_does_not_block_writers() {
    let dir = TempDir::new("verify-live");
    let engine = build(dir.path());
    for i in 0..5000u64 {
        engine
            .run("more", |tx| tx.put(&i.to_be_bytes(), &[1; 200]))
            .ok();
        if i % 1000 == 0 {
            engine.checkpoint().unwrap();
        }
    }
    let stop = AtomicBool::new(false);
    let during = AtomicU64::new(0);
    let verifying = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (engine, stop, during, verifying) = (&engine, &stop, &during, &verifying);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    engine
                        .run("load", |tx| {
                            tx.put(format!("w{t}:{}", i % 500).as_bytes(), &i.to_le_bytes())
                        })
                        .unwrap();
                    if verifying.load(Ordering::SeqCst) {
                        during.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        for _ in 0..3 {
            verifying.store(true, Ordering::SeqCst);
            let report = engine.verify().unwrap();
            verifying.store(false, Ordering::SeqCst);
            assert!(report.ok, "{report}");
            assert!(report.intact_up_to.is_some());
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "commits flowed during verify"
    );
}

#[test]
fn verify_dir_on_an_open_directory_does_not_disturb_it() {
    let dir = TempDir::new("verify-open");
    let engine = build(dir.path());
    let manifest = std::fs::read(dir.path().join("manifest")).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (engine, stop) = (&engine, &stop);
        s.spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                engine
                    .run("load", |tx| {
                        tx.put(format!("o:{}", i % 300).as_bytes(), &i.to_le_bytes())
                    })
                    .unwrap();
            }
        });
        for _ in 0..3 {
            let report = verify_dir(dir.path()).unwrap();
            assert!(report.in_use);
            assert!(report.ok, "{report}");
        }
        stop.store(true, Ordering::SeqCst);
    });
    // verify_dir wrote nothing and took no lock: the engine goes on.
    assert_eq!(
        std::fs::read(dir.path().join("manifest")).unwrap(),
        manifest
    );
    engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
    let last = engine.last_commit();
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert_eq!(engine.last_commit(), last);
}

#[test]
fn stat_dir_matches_the_engine() {
    let dir = TempDir::new("verify-stat");
    let engine = build(dir.path());
    let mut feed = engine.subscribe_as("mirror", 0).unwrap();
    for _ in 0..10 {
        feed.next().unwrap().unwrap();
    }
    feed.ack(10);
    engine.checkpoint().unwrap();
    engine.run("x", |tx| tx.put(b"x", b"1")).unwrap();
    let live = engine.stat().unwrap();
    let stat = stat_dir(dir.path()).unwrap();
    let stats = engine.stats();
    assert!(stat.in_use && live.in_use);
    assert_eq!(stat.last_commit, Some(engine.last_commit()), "{stat}");
    assert_eq!(live.last_commit, Some(engine.last_commit()));
    assert_eq!(
        stat.checkpoint.as_ref().map(|c| c.commit.get()),
        Some(stats.journal.checkpoint)
    );
    assert!(stat.checkpoint.as_ref().unwrap().age.is_some());
    assert_eq!(stat.shards, stats.journal.shards.min(stat.shards).max(1));
    assert!(
        stat.journal_bytes > 0 && stat.total_bytes >= stat.journal_bytes + stat.checkpoint_bytes
    );
    assert!(stat.problems.is_empty(), "{stat}");
    let mirror = stat
        .consumers
        .iter()
        .find(|c| c.name == "mirror")
        .expect("consumer listed");
    assert_eq!(Some(mirror.position), engine.consumer_position("mirror"));
    assert_eq!(
        mirror.lag,
        engine.last_commit().0.get() - mirror.position.get()
    );
    assert!(stat.salvage_dirs.is_empty());
    assert!(!stat.to_string().is_empty());
    // The checkpoint at 40 replaced by the one at 80 is kept for restores.
    assert_eq!(stat.kept_checkpoints, [40.into()]);
    assert_eq!(live.kept_checkpoints, [40.into()]);
    assert_eq!(stat.records_after_checkpoint, 1);
    assert_eq!(live.records_after_checkpoint, 1);
    // 88 keys (80 `key:`, 8 `big:`) as of the checkpoint at 80.
    assert_eq!(stat.checkpoint.as_ref().unwrap().keys, Some(88));
    // What only the live engine knows: pages, snapshots, placement.
    assert_eq!(stat.pages, None);
    assert_eq!(live.pages, Some(engine.stats().store.pages));
    assert_eq!(live.oldest_snapshot, None, "{live}");
    let held = engine.snapshot();
    let with_snapshot = engine.stat().unwrap();
    assert_eq!(
        with_snapshot.oldest_snapshot.map(|(id, _)| id),
        Some(held.commit_id())
    );
    assert!(with_snapshot
        .to_string()
        .contains("oldest snapshot: commit"));
    assert_eq!(live.placement, engine.placement().shards);
    drop(held);
    drop(feed);
    engine.close().unwrap();
    let closed = stat_dir(dir.path()).unwrap();
    assert!(!closed.in_use);
    assert_eq!(closed.last_commit, live.last_commit);
    assert!(closed.placement.is_empty() && closed.oldest_snapshot.is_none());
}

/// A database with two checkpoints (40 and 80): the older one is kept in
/// `pitr/` with the journal from it (`Options::pitr_retention`'s default).
fn build_with_pitr(dir: &Path) {
    let engine = build(dir);
    engine.checkpoint().unwrap();
    for i in 0..10u64 {
        engine
            .run("more", |tx| tx.put(format!("more:{i}").as_bytes(), b"x"))
            .unwrap();
    }
    engine.close().unwrap();
}

/// The segment and offset where `needle` is written.
fn find_in_segments(dir: &Path, needle: &[u8]) -> (PathBuf, u64) {
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            return (seg, at as u64);
        }
    }
    panic!("{needle:?} is in no segment");
}

#[test]
fn the_journal_kept_for_point_in_time_restore_is_verified() {
    let dir = TempDir::new("verify-pitr");
    build_with_pitr(dir.path());
    let report = verify_dir(dir.path()).unwrap();
    assert!(report.ok, "{report}");
    assert_eq!(report.checkpoint.map(|(id, _)| id.get()), Some(80));
    assert_eq!(report.restorable_from.map(|c| c.get()), Some(40));
    assert_eq!(report.pitr_checkpoints, 1);
    assert!(
        report.to_string().contains("restorable from: commit 40"),
        "{report}"
    );

    // A flipped byte in commit 51's record (it writes key:0050), older than the newest checkpoint:
    // opening does not need it, a restore to 41..=80 from the pitr/ checkpoint does.
    let copy = TempDir::new("verify-pitr-frame");
    copy_db(dir.path(), copy.path());
    let (seg, at) = find_in_segments(copy.path(), b"key:0050");
    flip(&seg, at + 5);
    let report = verify_dir(copy.path()).unwrap();
    assert!(!report.ok, "{report}");
    let f = report
        .findings
        .iter()
        .find(|f| f.what == FindingKind::PitrJournal)
        .unwrap_or_else(|| panic!("no PitrJournal finding: {report}"));
    assert_eq!(f.commit.map(|c| c.get()), Some(51), "{f}");
    assert_eq!(report.restorable_from.map(|c| c.get()), Some(80));
    assert!(
        Engine::open_with(copy.path(), opts()).is_ok(),
        "opening needs only 80 on"
    );

    // A flipped byte in the checkpoint kept in pitr/.
    let copy = TempDir::new("verify-pitr-ckpt");
    copy_db(dir.path(), copy.path());
    let kept = checkpoint(&copy.path().join("pitr"));
    flip(&kept, 64 * 1024 + 500);
    let report = verify_dir(copy.path()).unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.what == FindingKind::CheckpointDamaged)
        .unwrap_or_else(|| panic!("no CheckpointDamaged finding: {report}"));
    assert_eq!(f.file.as_deref(), Some(kept.as_path()), "{f}");
    assert_eq!(report.restorable_from.map(|c| c.get()), Some(80));
}

#[test]
fn a_checkpoint_cut_inside_its_only_block_is_damaged_not_missing() {
    let dir = TempDir::new("verify-ckpt-one-block");
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    for i in 0..5u32 {
        engine
            .run("put", |tx| tx.put(format!("k{i}").as_bytes(), b"v"))
            .unwrap();
    }
    engine.checkpoint().unwrap();
    engine.close().unwrap();
    let ckpt = checkpoint(dir.path());
    let len = std::fs::metadata(&ckpt).unwrap().len();
    assert!(len <= 2 * 64 * 1024, "one block after the header: {len}");
    let file = std::fs::OpenOptions::new().write(true).open(&ckpt).unwrap();
    file.set_len(len - 100).unwrap();
    let report = verify_dir(dir.path()).unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.file.as_deref() == Some(ckpt.as_path()))
        .unwrap_or_else(|| panic!("no finding names the checkpoint: {report}"));
    assert_eq!(f.what, FindingKind::CheckpointDamaged, "{f}");
}
