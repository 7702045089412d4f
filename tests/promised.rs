//! Lost data is never silent: after a clean close every commit was promised, so
//! cutting or deleting any segment, deleting `journal/`, the checkpoint or the
//! manifest must make `open` fail with `Error::Corrupt` naming what is missing
//! — unless the data really is elsewhere (a segment the checkpoint covers), in
//! which case the database opens with every commit. `Options::salvage` opens
//! each damaged copy anyway at the longest intact prefix, copies what it cuts
//! aside, and reports what it gave up. And the database directory is created
//! durably, with clear errors for paths that are not directories.

mod common;

use common::{cpus_for_shards, pin, scan, Entries, TempDir};
use shardstone::{Durability, Engine, Error, Io, Options, OsIo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SEGMENT_SIZE: u64 = 64 * 1024;
const COMMANDS: usize = 100;

fn opts(shards: usize) -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards: shards,
        segment_size: SEGMENT_SIZE,
        numa: shardstone::numa::Numa::Off,
        ..Default::default()
    }
}

fn salvage(shards: usize) -> Options {
    Options {
        salvage: true,
        ..opts(shards)
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:03}").into_bytes()
}

/// About 1.5 KB each, so that 100 commands fill a few segments.
fn value(i: usize) -> Vec<u8> {
    (0..1500).map(|j| (i + j) as u8).collect()
}

fn prefix_state(p: usize) -> Entries {
    let mut m = BTreeMap::new();
    for i in 0..p {
        m.insert(key(i), value(i));
    }
    m.into_iter().collect()
}

/// A cleanly closed database of `COMMANDS` commits, with a checkpoint after
/// `checkpoint_at` of them (if any). With more than one shard, commands go to
/// the shards in turn (pinned to a CPU of each), where the machine allows.
fn build(dir: &Path, shards: usize, checkpoint_at: Option<usize>) {
    let cpus = cpus_for_shards(&opts(shards)).filter(|_| shards > 1);
    std::thread::scope(|s| {
        s.spawn(|| build_here(dir, shards, checkpoint_at, cpus.as_deref()))
            .join()
            .unwrap()
    });
}

fn build_here(dir: &Path, shards: usize, checkpoint_at: Option<usize>, cpus: Option<&[usize]>) {
    let engine = Engine::open_with(dir, opts(shards)).unwrap();
    for i in 0..COMMANDS {
        if let Some(cpus) = cpus {
            pin(cpus[(i / 7) % cpus.len()]);
        }
        if Some(i) == checkpoint_at {
            engine.checkpoint().unwrap();
        }
        engine.run("put", |tx| tx.put(&key(i), &value(i))).unwrap();
    }
    engine.close().unwrap();
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("journal")).unwrap();
    for sub in ["", "journal"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

fn files(dir: &Path, sub: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// One kind of damage, applied to a copy; `names` is the path a `Corrupt`
/// error may name (the damaged file, or for the journal its directory).
struct Damage {
    what: String,
    apply: Box<dyn Fn(&Path)>,
    names: Box<Namer>,
}

/// The paths a `Corrupt` error may name for one damage, in a copy at the path.
type Namer = dyn Fn(&Path) -> Vec<PathBuf>;

fn damages(db: &Path) -> Vec<Damage> {
    let mut out = Vec::new();
    for seg in files(db, "journal", ".log") {
        let name = seg.file_name().unwrap().to_owned();
        let len = std::fs::metadata(&seg).unwrap().len();
        let n = name.clone();
        out.push(Damage {
            what: format!("{} cut in half", name.to_string_lossy()),
            apply: Box::new(move |d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("journal").join(&n))
                    .unwrap();
                f.set_len(len / 2).unwrap();
            }),
            names: {
                let n = name.clone();
                Box::new(move |d| vec![d.join("journal").join(&n), d.join("journal")])
            },
        });
        let n = name.clone();
        out.push(Damage {
            what: format!("{} deleted", name.to_string_lossy()),
            apply: Box::new(move |d| std::fs::remove_file(d.join("journal").join(&n)).unwrap()),
            names: {
                let n = name.clone();
                Box::new(move |d| vec![d.join("journal").join(&n), d.join("journal")])
            },
        });
    }
    out.push(Damage {
        what: "journal/ deleted".to_owned(),
        apply: Box::new(|d| std::fs::remove_dir_all(d.join("journal")).unwrap()),
        names: Box::new(|d| {
            // The directory, or the first segment the manifest lists.
            let mut v = vec![d.join("journal")];
            v.extend((0..2).map(|s| d.join("journal").join(format!("s{s:04}-0000000000.log"))));
            v
        }),
    });
    for ckpt in files(db, "", ".ckpt") {
        let name = ckpt.file_name().unwrap().to_owned();
        let n = name.clone();
        out.push(Damage {
            what: "the checkpoint deleted".to_owned(),
            apply: Box::new(move |d| std::fs::remove_file(d.join(&n)).unwrap()),
            names: Box::new(move |d| vec![d.join(&name)]),
        });
    }
    out.push(Damage {
        what: "the manifest deleted".to_owned(),
        apply: Box::new(|d| std::fs::remove_file(d.join("manifest")).unwrap()),
        names: Box::new(|d| vec![d.join("manifest")]),
    });
    out
}

/// Every damage to every shape of database: `Corrupt` naming it, or the full
/// state; with salvage, a prefix and a report of what was given up.
#[test]
fn cut_or_deleted_files_after_a_clean_close_are_reported_never_silent() {
    let mut failures = Vec::new();
    let mut corrupt = 0;
    for (shards, checkpoint_at) in [(1, None), (1, Some(60)), (2, None), (2, Some(40))] {
        let db = TempDir::new("promised-db");
        build(db.path(), shards, checkpoint_at);
        for d in damages(db.path()) {
            let what = format!(
                "{shards} shard(s), checkpoint {checkpoint_at:?}, {}",
                d.what
            );
            let copy = TempDir::new("promised-copy");
            copy_db(db.path(), copy.path());
            (d.apply)(copy.path());
            let strict = Engine::open_with(copy.path(), opts(shards));
            let damaged = match strict {
                Ok(engine) => {
                    if engine.commit_id().get() != COMMANDS as u64
                        || scan(&engine.snapshot()) != prefix_state(COMMANDS)
                    {
                        failures.push(format!(
                            "{what}: opened silently at commit {}",
                            engine.commit_id().get()
                        ));
                    }
                    false
                }
                Err(Error::Corrupt { path, .. }) => {
                    corrupt += 1;
                    if !(d.names)(copy.path()).contains(&path) {
                        failures.push(format!(
                            "{what}: Corrupt names {}, not the damage",
                            path.display()
                        ));
                    }
                    true
                }
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    false
                }
            };
            if !damaged {
                continue;
            }
            // Salvage opens the same copy at an intact prefix and says so.
            match Engine::open_with(copy.path(), salvage(shards)) {
                Ok(engine) => {
                    let p = engine.commit_id().get() as usize;
                    let report = engine.stats().journal.recovery;
                    if scan(&engine.snapshot()) != prefix_state(p) {
                        failures.push(format!("{what}: salvage's state at {p} is not a prefix"));
                    }
                    match report.salvage {
                        Some(s) if !s.findings.is_empty() && s.kept_through == p as u64 => {
                            if p < COMMANDS && s.lost_promised != (COMMANDS - p) as u64 {
                                failures.push(format!(
                                    "{what}: salvage kept {p} but reports {} lost",
                                    s.lost_promised
                                ));
                            }
                        }
                        other => failures.push(format!("{what}: salvage at {p} reports {other:?}")),
                    }
                    engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
                    engine.close().unwrap();
                    // The salvaged database is whole again: a strict open works.
                    let listing = |d: &Path| -> Vec<(String, u64)> {
                        let mut v: Vec<(String, u64)> = std::fs::read_dir(d.join("journal"))
                            .map(|r| {
                                r.map(|e| e.unwrap())
                                    .map(|e| {
                                        (
                                            e.file_name().to_string_lossy().into_owned(),
                                            e.metadata().unwrap().len(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        v.sort();
                        v
                    };
                    let engine = Engine::open_with(copy.path(), opts(shards)).unwrap_or_else(|e| {
                        panic!(
                            "{what}: strict reopen after salvage: {e}; files {:?}",
                            listing(copy.path())
                        )
                    });
                    assert_eq!(engine.commit_id().get(), p as u64 + 1, "{what}");
                }
                Err(e) => failures.push(format!("{what}: salvage fails: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(corrupt > 10, "most damage is reported ({corrupt})");
}

/// The two cases a new user found: the only segment of a one-shard journal
/// cut in half, and `journal/` deleted with no checkpoint.
#[test]
fn half_a_journal_or_no_journal_is_corrupt_not_an_older_database() {
    let db = TempDir::new("promised-half");
    let engine = Engine::open_with(db.path(), opts(1)).unwrap();
    for i in 0..100 {
        engine.run("put", |tx| tx.put(&key(i), b"v")).unwrap();
    }
    engine.close().unwrap();
    let segs = files(db.path(), "journal", ".log");
    assert_eq!(segs.len(), 1);

    let copy = TempDir::new("promised-half-copy");
    copy_db(db.path(), copy.path());
    let seg = copy
        .path()
        .join("journal")
        .join(segs[0].file_name().unwrap());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    match Engine::open_with(copy.path(), opts(1)) {
        Err(Error::Corrupt {
            path, commit_id, ..
        }) => {
            assert_eq!(path, seg);
            assert!(commit_id.is_some_and(|c| c.get() > 1 && c.get() <= 100));
        }
        other => panic!("half a journal: {other:?}"),
    }

    let copy = TempDir::new("promised-none-copy");
    copy_db(db.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("journal")).unwrap();
    match Engine::open_with(copy.path(), opts(1)) {
        Err(Error::Corrupt { path, .. }) => assert!(
            path.starts_with(copy.path().join("journal")),
            "{}",
            path.display()
        ),
        other => panic!("no journal: {other:?}"),
    }
    // Read-only opens are held to the same promise.
    assert!(matches!(
        Engine::open_read_only(copy.path(), opts(1)),
        Err(Error::Corrupt { .. })
    ));
}

/// Records the directories whose entries were made durable.
#[derive(Default)]
struct DirSyncs(Mutex<Vec<PathBuf>>);

impl Io for DirSyncs {
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.0.lock().unwrap().push(dir.to_owned());
        OsIo.sync_dir(dir)
    }
}

#[test]
fn a_new_database_directory_is_made_durable_in_its_parents() {
    let root = TempDir::new("promised-dirs");
    std::fs::create_dir_all(root.path()).unwrap();
    let db = root.path().join("a").join("b");
    let io = Arc::new(DirSyncs::default());
    let engine = Engine::open_with_io(&db, opts(1), io.clone() as Arc<dyn Io>).unwrap();
    engine.run("put", |tx| tx.put(b"k", b"v")).unwrap();
    drop(engine);
    let synced = io.0.lock().unwrap().clone();
    for dir in [root.path().to_owned(), root.path().join("a"), db.clone()] {
        assert!(
            synced.contains(&dir),
            "{} was fsynced: {synced:?}",
            dir.display()
        );
    }
    assert_eq!(
        Engine::open_with(&db, opts(1))
            .unwrap()
            .snapshot()
            .get(b"k")
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn a_path_that_is_a_file_is_not_a_directory() {
    let root = TempDir::new("promised-file");
    std::fs::create_dir_all(root.path()).unwrap();
    let file = root.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    for open in [
        Engine::open_with(&file, opts(1)),
        Engine::open_read_only(&file, opts(1)),
        Engine::open_with(file.join("db"), opts(1)),
    ] {
        match open {
            Err(e @ Error::NotADirectory { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!("not a directory: {}", file.display())
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_damaged_manifest_is_corrupt_naming_it() {
    let db = TempDir::new("promised-manifest");
    build(db.path(), 1, None);
    let bytes = std::fs::read(db.path().join("manifest")).unwrap();
    for at in [0, 9, 40, 75, bytes.len() - 1] {
        let copy = TempDir::new("promised-manifest-copy");
        copy_db(db.path(), copy.path());
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(copy.path().join("manifest"), b).unwrap();
        match Engine::open_with(copy.path(), opts(1)) {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, copy.path().join("manifest")),
            other => panic!("manifest flipped at {at}: {other:?}"),
        }
    }
}
