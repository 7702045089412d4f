//! Misuse and limits: panicking and failing commands, oversized keys and values,
//! nested runs, invalid options, the error type, and the thread-safety markers.

mod common;

use common::*;
use shardstone::{Engine, Error, Options, Snapshot, MAX_KEY_LEN};
use std::error::Error as _;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn incr(engine: &Engine, key: &[u8]) -> u64 {
    engine
        .run("incr", |tx| {
            let n = tx.get(key)?.map_or(0, |v| dec(&v)) + 1;
            tx.put(key, &enc(n))?;
            Ok(n)
        })
        .unwrap()
}

/// After a misbehaving command, the engine works from this thread and from others
/// at once: no lock, gate, pin or "running" mark was left behind.
fn assert_usable(engine: &Engine, what: &str) {
    let before = engine
        .snapshot()
        .get(b"usable")
        .unwrap()
        .map_or(0, |v| dec(&v));
    assert_eq!(
        incr(engine, b"usable"),
        before + 1,
        "{what}: a command on the same thread runs"
    );
    std::thread::scope(|s| {
        for t in 0..2u8 {
            s.spawn(move || {
                for _ in 0..300 {
                    incr(engine, b"usable");
                    incr(engine, &[b'u', t]);
                }
            });
        }
    });
    let snap = engine.snapshot();
    assert_eq!(
        dec(&snap.get(b"usable").unwrap().unwrap()),
        before + 601,
        "{what}: concurrent commands all committed"
    );
    let st = engine.stats();
    assert_eq!(st.blocking_queue.depth, 0, "{what}");
    assert_eq!(
        st.store.pinned_snapshots, 1,
        "{what}: only our own snapshot is pinned"
    );
}

fn panicking_command(max_conflicts: u32) {
    let what = format!("max_conflicts {max_conflicts}");
    let engine = Engine::in_memory_with(Options {
        max_conflicts,
        ..Default::default()
    })
    .unwrap();
    engine.run("seed", |tx| tx.put(b"a", b"original")).unwrap();
    let commit_before = engine.commit_id();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        engine.run("boom", |tx| -> shardstone::Result<()> {
            tx.put(b"a", b"overwritten")?;
            tx.put(b"b", b"new")?;
            tx.delete(b"a")?;
            tx.put(b"x", &[7u8; 100_000])?;
            panic!("boom in the middle of a command");
        })
    }));
    let err = caught.expect_err("the panic reaches the caller of run");
    assert!(
        panic_message(&*err).contains("boom in the middle"),
        "{what}: the caller sees the command's own panic payload"
    );

    let snap = engine.snapshot();
    assert_eq!(
        snap.get(b"a").unwrap().as_deref(),
        Some(&b"original"[..]),
        "{what}: nothing the panicking command wrote is visible"
    );
    assert_eq!(snap.get(b"b").unwrap(), None, "{what}");
    assert_eq!(snap.range(..).count(), 1, "{what}");
    assert_eq!(
        engine.commit_id(),
        commit_before,
        "{what}: no commit id was taken"
    );
    drop(snap);
    let st = engine.stats();
    assert_eq!(st.errors, 1, "{what}: the panic counts as an error: {st:?}");
    let boom = st
        .commands
        .iter()
        .find(|c| c.name == "boom")
        .expect("stats for the panicking command");
    assert_eq!(
        (boom.runs, boom.errors, boom.commits),
        (1, 1, 0),
        "{what}: {boom:?}"
    );
    assert_eq!(
        st.store.pinned_snapshots, 0,
        "{what}: the command's snapshot pin was released"
    );
    assert_eq!(
        st.blocking_queue.depth, 0,
        "{what}: the blocking queue was left"
    );
    assert_eq!(st.blocking_queue.escalated, st.escalations, "{what}");
    assert_usable(&engine, &what);
}

#[test]
fn panicking_command_rolls_back_and_engine_stays_usable() {
    panicking_command(Options::default().max_conflicts);
}

/// With `max_conflicts: 0` every command goes straight to the blocking queue, so
/// the panic unwinds out of an escalated command holding exclusive commit rights.
#[test]
fn panicking_escalated_command_releases_the_blocking_queue() {
    panicking_command(0);
}

#[test]
fn panic_on_another_thread_leaves_engine_usable() {
    let engine = Engine::in_memory().unwrap();
    std::thread::scope(|s| {
        let r = s
            .spawn(|| {
                engine.run("boom", |tx| -> shardstone::Result<()> {
                    tx.put(b"k", b"v")?;
                    panic!("boom on a worker");
                })
            })
            .join();
        assert!(r.is_err(), "the worker panicked");
    });
    assert_eq!(engine.snapshot().get(b"k").unwrap(), None);
    assert_usable(&engine, "after a worker panicked");
}

#[test]
fn erroring_command_rolls_back_and_returns_its_error() {
    let engine = Engine::in_memory().unwrap();
    engine.run("seed", |tx| tx.put(b"a", b"1")).unwrap();
    let r: shardstone::Result<u32> = engine.run("refuse", |tx| {
        tx.put(b"a", b"2")?;
        tx.put(b"b", b"2")?;
        Err(Error::abort("insufficient funds"))
    });
    match r {
        Err(Error::Abort(reason)) => assert_eq!(reason, "insufficient funds"),
        other => panic!("expected the command's own abort, got {other:?}"),
    }
    // An engine error propagated with `?` rolls back the earlier writes too.
    let r = engine.run("too long", |tx| {
        tx.put(b"a", b"3")?;
        tx.put(&vec![b'k'; MAX_KEY_LEN + 1], b"x")
    });
    assert!(matches!(r, Err(Error::KeyTooLarge { .. })), "{r:?}");
    let snap = engine.snapshot();
    assert_eq!(snap.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get(b"b").unwrap(), None);
    assert_eq!(engine.commit_id().get(), 1);
    let st = engine.stats();
    assert_eq!((st.commits, st.errors, st.read_only), (1, 2, 0));
    drop(snap);
    assert_usable(&engine, "after failing commands");
}

#[track_caller]
fn assert_key_too_large<T: std::fmt::Debug>(what: &str, r: shardstone::Result<T>, len: usize) {
    match r {
        Err(Error::KeyTooLarge { len: l, max }) => {
            assert_eq!((l, max), (len, MAX_KEY_LEN), "{what}");
        }
        other => panic!("{what}: expected KeyTooLarge, got {other:?}"),
    }
}

#[test]
fn oversized_keys_are_a_typed_error_everywhere() {
    assert_eq!(MAX_KEY_LEN, 1024);
    let engine = Engine::in_memory().unwrap();
    engine.run("seed", |tx| tx.put(b"k", b"v")).unwrap();
    let big = vec![b'k'; MAX_KEY_LEN + 1];
    let huge = vec![b'k'; 100_000];
    let ok = vec![b'k'; MAX_KEY_LEN];
    for key in [&big, &huge] {
        let n = key.len();
        assert_key_too_large("put", engine.run("put", |tx| tx.put(key, b"v")), n);
        assert_key_too_large("get", engine.run("get", |tx| tx.get(key)), n);
        assert_key_too_large("delete", engine.run("delete", |tx| tx.delete(key)), n);
        let bounds: Vec<Bounds<'_>> = vec![
            (Bound::Included(key.as_slice()), Bound::Unbounded),
            (Bound::Excluded(key.as_slice()), Bound::Unbounded),
            (Bound::Unbounded, Bound::Included(key.as_slice())),
            (Bound::Unbounded, Bound::Excluded(key.as_slice())),
            (Bound::Included(&b"a"[..]), Bound::Excluded(key.as_slice())),
            (
                Bound::Included(key.as_slice()),
                Bound::Excluded(ok.as_slice()),
            ),
        ];
        for b in &bounds {
            let what = format!(
                "tx range with a {n}-byte bound {:?}",
                (b.0.map(<[u8]>::len), b.1.map(<[u8]>::len))
            );
            assert_key_too_large(
                &what,
                engine.run("range", |tx| {
                    tx.range(*b).collect::<shardstone::Result<Vec<_>>>()
                }),
                n,
            );
            assert_key_too_large(
                &what,
                engine.run("range", |tx| {
                    tx.range(*b).rev().collect::<shardstone::Result<Vec<_>>>()
                }),
                n,
            );
            let snap = engine.snapshot();
            let what = format!("snapshot range with a {n}-byte bound");
            assert_key_too_large(
                &what,
                snap.range(*b).next().expect("the error is the first item"),
                n,
            );
            assert_key_too_large(
                &what,
                snap.range(*b)
                    .next_back()
                    .expect("the error is the first item"),
                n,
            );
        }
        assert_key_too_large("snapshot get", engine.snapshot().get(key), n);
    }
    // A rejected op leaves the command's other work intact.
    let kept = engine
        .run("carry on", |tx| {
            assert!(tx.put(&big, b"v").is_err());
            tx.put(b"after", b"error")?;
            assert!(tx.get(&big).is_err());
            Ok(tx.get(b"after")?.is_some())
        })
        .unwrap();
    assert!(kept);
    assert_eq!(
        engine.snapshot().get(b"after").unwrap().as_deref(),
        Some(&b"error"[..])
    );
    assert_eq!(engine.snapshot().range(..).count(), 2);
}

/// Keys of exactly the limit work: many of them, with small and large (overflow)
/// values, so that leaves and inner nodes full of 1 KiB keys split and merge.
#[test]
fn max_length_keys_work() {
    for page_size in [4096usize, 16384] {
        let what = format!("page_size {page_size}");
        let engine = engine_with(page_size);
        let mut rng = Rng::new(1024);
        let mut model = std::collections::BTreeMap::new();
        let key = |i: u32, rng: &mut Rng| {
            // Keys that differ only near their end, and some a little shorter.
            let len = if i.is_multiple_of(5) {
                MAX_KEY_LEN - rng.below(16) as usize
            } else {
                MAX_KEY_LEN
            };
            let mut k = vec![b'p'; len];
            let tag = format!("{i:06}");
            k[len - 6..].copy_from_slice(tag.as_bytes());
            k
        };
        let keys: Vec<u32> = (0..600).collect();
        for chunk in keys.chunks(40) {
            engine
                .run("load", |tx| {
                    for &i in chunk {
                        let k = key(i, &mut rng);
                        let v = match i % 10 {
                            0 => rng.bytes_between(5_000, 70_000),
                            1 => rng.bytes(page_size / 4),
                            _ => rng.bytes_between(0, 63),
                        };
                        tx.put(&k, &v)?;
                        model.insert(k, v);
                    }
                    Ok(())
                })
                .unwrap();
        }
        let st = engine.stats();
        // The keys alone need this many leaves; inner nodes come on top.
        let min_leaves = (keys.len() * MAX_KEY_LEN / page_size) as u64;
        assert!(
            st.store.pages > min_leaves,
            "{what}: 1 KiB keys fill many pages: {:?}",
            st.store
        );
        let snap = engine.snapshot();
        assert_snapshot_is(&format!("{what}: 1 KiB keys"), &snap, &model);
        for (k, v) in model.iter().step_by(7) {
            assert_value(
                format_args!("{what}: get {}", show(k)),
                snap.get(k).unwrap().as_deref(),
                Some(v),
            );
        }
        // Range bounds of the maximum length, inside a command, both directions.
        let lo = model.keys().nth(100).unwrap().clone();
        let hi = model.keys().nth(300).unwrap().clone();
        let (fwd, rev) = engine
            .run("scan", |tx| {
                let f = tx.range(lo.as_slice()..hi.as_slice()).count();
                let r = tx.range(lo.as_slice()..=hi.as_slice()).rev().count();
                Ok((f, r))
            })
            .unwrap();
        assert_eq!((fwd, rev), (200, 201), "{what}");
        drop(snap);
        // Delete them all again in a scattered order: merges of 1 KiB-key pages.
        let mut order: Vec<Vec<u8>> = model.keys().cloned().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.index(i + 1));
        }
        for chunk in order.chunks(25) {
            engine
                .run("unload", |tx| {
                    for k in chunk {
                        assert!(tx.delete(k)?, "{what}: delete {}", show(k));
                    }
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(engine.snapshot().range(..).count(), 0, "{what}");
        engine.collect_garbage();
        let st = engine.stats();
        assert!(
            st.store.pages <= 2 && st.store.page_buffers <= 2,
            "{what}: {:?}",
            st.store
        );
    }
}

#[test]
fn oversized_values_are_a_typed_error() {
    let engine = Engine::in_memory().unwrap();
    let max = Options::default().max_value_len;
    assert_eq!(max, 16 << 20);
    let r = engine.run("too big", |tx| tx.put(b"k", &vec![0u8; max + 1]));
    assert!(
        matches!(r, Err(Error::ValueTooLarge { len, max: m }) if len == max + 1 && m == max),
        "{r:?}"
    );

    let engine = Engine::in_memory_with(Options {
        max_value_len: 100,
        ..Default::default()
    })
    .unwrap();
    engine.run("fits", |tx| tx.put(b"k", &[1u8; 100])).unwrap();
    let r = engine.run("too big", |tx| tx.put(b"k", &[2u8; 101]));
    assert!(
        matches!(r, Err(Error::ValueTooLarge { len: 101, max: 100 })),
        "{r:?}"
    );
    let r = engine.run("empty is fine", |tx| tx.put(b"e", b""));
    assert!(r.is_ok());
    let snap = engine.snapshot();
    assert_eq!(
        snap.get(b"k").unwrap().as_deref(),
        Some(&[1u8; 100][..]),
        "the refused put changed nothing"
    );
    assert_eq!(
        snap.get(b"e").unwrap().as_deref(),
        Some(&b""[..]),
        "an empty value is a value"
    );

    let r = Engine::in_memory_with(Options {
        max_value_len: (1 << 30) + 1,
        ..Default::default()
    });
    assert!(
        matches!(
            r,
            Err(Error::InvalidOptions {
                option: "max_value_len",
                ..
            })
        ),
        "{r:?}"
    );
}

fn nested_runs(max_conflicts: u32) {
    let what = format!("max_conflicts {max_conflicts}");
    let engine = Engine::in_memory_with(Options {
        max_conflicts,
        ..Default::default()
    })
    .unwrap();
    let other = Engine::in_memory().unwrap();
    let inner_result = engine
        .run("outer", |tx| {
            tx.put(b"outer", b"1")?;
            let nested = engine.run("inner", |tx| tx.put(b"inner", b"1"));
            let nested_again = engine.run("inner again", |tx| tx.get(b"outer"));
            // A different engine is a different database: nesting into it is fine.
            let elsewhere = other.run("elsewhere", |tx| {
                tx.put(b"from inside", b"1")?;
                Ok(7)
            });
            Ok((nested, nested_again.map(|_| ()), elsewhere))
        })
        .unwrap();
    match inner_result.0 {
        Err(Error::NestedRun { outer, inner }) => assert_eq!(
            (outer.as_str(), inner.as_str()),
            ("outer", "inner"),
            "{what}"
        ),
        other => panic!("{what}: expected NestedRun, got {other:?}"),
    }
    assert!(
        matches!(inner_result.1, Err(Error::NestedRun { .. })),
        "{what}: {:?}",
        inner_result.1
    );
    assert_eq!(
        inner_result.2.unwrap(),
        7,
        "{what}: a nested run on another engine works"
    );
    let snap = engine.snapshot();
    assert_eq!(
        snap.get(b"outer").unwrap().as_deref(),
        Some(&b"1"[..]),
        "{what}: the outer command committed"
    );
    assert_eq!(
        snap.get(b"inner").unwrap(),
        None,
        "{what}: the refused inner command wrote nothing"
    );
    assert_eq!(
        other.snapshot().get(b"from inside").unwrap().as_deref(),
        Some(&b"1"[..]),
        "{what}"
    );
    let st = engine.stats();
    assert_eq!(st.commits, 1, "{what}");
    assert_eq!(st.blocking_queue.depth, 0, "{what}");
    if max_conflicts == 0 {
        assert_eq!(
            st.escalations, 1,
            "{what}: with max_conflicts 0 the command is escalated at once: {st:?}"
        );
        assert_eq!(st.blocking_queue.escalated, 1, "{what}");
    }
    drop(snap);
    // Nesting left no mark on the thread: the next run is not nested.
    assert_usable(&engine, &what);
    engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
}

#[test]
fn nested_run_is_an_error_not_a_deadlock() {
    nested_runs(Options::default().max_conflicts);
}

#[test]
fn nested_run_inside_an_escalated_command() {
    nested_runs(0);
}

/// With `max_conflicts: 0` every writing command goes through the blocking queue.
#[test]
fn max_conflicts_zero_escalates_every_command() {
    let engine = Engine::in_memory_with(Options {
        max_conflicts: 0,
        ..Default::default()
    })
    .unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..200 {
                    incr(&engine, b"n");
                }
            });
        }
    });
    assert_eq!(
        engine.snapshot().get(b"n").unwrap().map(|v| dec(&v)),
        Some(400)
    );
    let st = engine.stats();
    assert_eq!(
        (st.commits, st.conflicts, st.escalations),
        (400, 0, 400),
        "{st:?}"
    );
    assert_eq!(st.blocking_queue.escalated, 400);
    assert_eq!(st.blocking_queue.depth, 0);
}

#[test]
fn invalid_options_are_refused() {
    for page_size in [
        0usize,
        1000,
        2048,
        3000,
        4095,
        4097,
        12288,
        131_072,
        1 << 20,
    ] {
        let r = Engine::in_memory_with(Options {
            page_size,
            ..Default::default()
        });
        match r {
            Err(Error::InvalidOptions { option, reason }) => {
                assert_eq!(option, "page_size");
                assert!(!reason.is_empty());
            }
            other => panic!("page_size {page_size}: expected InvalidOptions, got {other:?}"),
        }
    }
    for page_size in [4096usize, 8192, 16384, 32768, 65536] {
        let engine = Engine::in_memory_with(Options {
            page_size,
            ..Default::default()
        })
        .unwrap();
        engine.run("works", |tx| tx.put(b"k", b"v")).unwrap();
    }
    let dir = std::env::temp_dir().join("shardstone-misuse-open-with");
    let r = Engine::open_with(
        &dir,
        Options {
            page_size: 3000,
            ..Default::default()
        },
    );
    assert!(
        matches!(
            r,
            Err(Error::InvalidOptions {
                option: "page_size",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn errors_display_and_implement_std_error() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let errors = vec![
        (
            Error::KeyTooLarge {
                len: 1025,
                max: 1024,
            },
            vec!["1025", "1024"],
        ),
        (Error::ValueTooLarge { len: 17, max: 16 }, vec!["17", "16"]),
        (
            Error::abort("insufficient funds"),
            vec!["insufficient funds"],
        ),
        (
            Error::NestedRun {
                outer: "outer cmd".into(),
                inner: "inner cmd".into(),
            },
            vec!["outer cmd", "inner cmd"],
        ),
        (Error::Unsupported("durability"), vec!["durability"]),
        (
            Error::InvalidOptions {
                option: "page_size",
                reason: "3000 is not a power of two".into(),
            },
            vec!["page_size", "3000"],
        ),
        (
            Error::CommitTooLarge {
                len: 5 << 30,
                max: 4 << 30,
            },
            vec!["5368709120", "split"],
        ),
        (
            Error::Corrupt {
                path: "/db/journal/s0001-0000000002.log".into(),
                offset: 4096,
                commit_id: Some(77.into()),
                reason: "invalid bytes".into(),
            },
            vec!["s0001-0000000002.log", "4096", "commit 77", "invalid bytes"],
        ),
        (
            Error::Locked {
                path: "/db/LOCK".into(),
                pid: Some(4242),
            },
            vec!["/db/LOCK", "4242"],
        ),
        (Error::ReadOnly, vec!["read-only"]),
        (
            Error::Halted {
                cause: "fdatasync failed".into(),
            },
            vec!["fdatasync failed", "reopen"],
        ),
        (
            Error::AheadOfLastCommit {
                requested: 12.into(),
                last: 7.into(),
            },
            vec!["12", "7", "ahead"],
        ),
    ];
    for (e, needles) in &errors {
        is_error(e);
        let text = e.to_string();
        for n in needles {
            assert!(
                text.contains(n),
                "{e:?} displays as {text:?}, which should mention {n:?}"
            );
        }
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::abort(text.clone()));
        assert!(boxed.to_string().contains(&text));
        assert!(e.source().is_none());
    }
    let io = Error::Io {
        op: "fdatasync",
        path: "/db/journal/s0000-0000000001.log".into(),
        source: std::io::Error::from_raw_os_error(5),
    };
    let text = io.to_string();
    assert!(
        text.contains("fdatasync") && text.contains("s0000-0000000001.log"),
        "{text}"
    );
    assert!(
        io.source().is_some(),
        "an I/O error keeps its OS error as the source"
    );
    let r: Result<(), Box<dyn std::error::Error>> = (|| {
        let engine = Engine::in_memory()?;
        engine.run("q", |tx| tx.put(&[0u8; 2000], b""))?;
        Ok(())
    })();
    assert!(
        r.unwrap_err().to_string().contains("2000"),
        "? converts into Box<dyn Error>"
    );
}

#[test]
fn engine_and_snapshot_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<Snapshot>();
    send_sync::<std::sync::Arc<Engine>>();
    send_sync::<shardstone::Value>();
    send_sync::<shardstone::CommitId>();
    send_sync::<shardstone::Stats>();
    send_sync::<Error>();
    // And they work across threads: an engine in an Arc, a snapshot moved to another thread.
    let engine = std::sync::Arc::new(Engine::in_memory().unwrap());
    engine.run("seed", |tx| tx.put(b"k", b"v")).unwrap();
    let snap = engine.snapshot();
    let e2 = engine.clone();
    let got = std::thread::spawn(move || {
        e2.run("write", |tx| tx.put(b"k", b"w")).unwrap();
        snap.get(b"k").unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(
        got.as_deref(),
        Some(&b"v"[..]),
        "the moved snapshot kept its state"
    );
    assert_eq!(
        engine.snapshot().get(b"k").unwrap().as_deref(),
        Some(&b"w"[..])
    );
}

/// The per-name entries of `stats` add up to its totals, field by field.
#[track_caller]
fn assert_entries_add_up(st: &shardstone::Stats) {
    let sum = |f: fn(&shardstone::CommandStats) -> u64| st.commands.iter().map(f).sum::<u64>();
    assert_eq!(
        (
            sum(|c| c.commits),
            sum(|c| c.read_only),
            sum(|c| c.errors),
            sum(|c| c.conflicts),
            sum(|c| c.retries),
            sum(|c| c.escalations),
        ),
        (
            st.commits,
            st.read_only,
            st.errors,
            st.conflicts,
            st.retries,
            st.escalations
        ),
        "(commits, read-only, errors, conflicts, retries, escalations): entries vs totals"
    );
    assert_eq!(
        sum(|c| c.runs),
        st.commits + st.read_only + st.errors,
        "runs of the entries"
    );
}

/// Command names can come from user input: 20,000 distinct ones keep at most
/// `max_command_names` (1,000 by default) entries of their own, plus one
/// `OTHER_COMMANDS` entry, listed last, that counts the rest; nothing is lost
/// from the totals, and more new names add no entry.
#[test]
fn twenty_thousand_command_names_keep_telemetry_bounded() {
    use shardstone::OTHER_COMMANDS;
    assert_eq!(Options::default().max_command_names, 1000);
    let engine = Engine::in_memory().unwrap();
    let run = |i: usize| {
        let name = format!("cmd-{i:05}");
        let r = engine.run(&name, |tx| match i % 3 {
            0 => tx.put(format!("k{i}").as_bytes(), b"v"),
            1 => tx.get(b"k0").map(drop),
            _ => Err(Error::abort("no")),
        });
        assert_eq!(r.is_ok(), i % 3 != 2, "{name}");
    };
    (0..20_000).for_each(run);
    let st = engine.stats();
    assert_eq!(
        st.commands.len(),
        1001,
        "1,000 names and the overflow entry"
    );
    assert_eq!(
        st.commands.last().map(|c| c.name.as_str()),
        Some(OTHER_COMMANDS)
    );
    let own: Vec<String> = (0..1000).map(|i| format!("cmd-{i:05}")).collect();
    let listed: Vec<&str> = st.commands[..1000]
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(listed, own, "the first 1,000 names, sorted");
    assert!(st.commands[..1000].iter().all(|c| c.runs == 1));
    assert_eq!(st.commands[1000].runs, 19_000);
    assert_eq!((st.commits, st.read_only, st.errors), (6667, 6667, 6666));
    assert_entries_add_up(&st);

    // Conflicts too, from two threads on one key with names of their own: the
    // losers of hot pages are named only as `Stats::commands` names them.
    std::thread::scope(|s| {
        for t in 0..2 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..2000 {
                    engine
                        .run(&format!("racer-{t}-{i}"), |tx| {
                            let n = tx.get(b"race")?.map_or(0, |v| dec(&v));
                            tx.put(b"race", &enc(n + 1))
                        })
                        .unwrap();
                }
            });
        }
    });
    (20_000..40_000).for_each(run);
    let st = engine.stats();
    assert_eq!(st.commands.len(), 1001, "new names added no entry");
    assert_eq!(st.commands[1000].name, OTHER_COMMANDS);
    assert_eq!(st.commands[1000].runs, 19_000 + 4000 + 20_000);
    assert_entries_add_up(&st);
    for page in &st.hot_pages {
        for (loser, _) in &page.losers {
            assert_eq!(
                loser, OTHER_COMMANDS,
                "a loser named outside Stats::commands"
            );
        }
    }
}

/// A smaller cap, a cap of 0, a command named like the overflow entry, and the
/// cap's validation.
#[test]
fn the_command_name_cap_is_an_option() {
    use shardstone::OTHER_COMMANDS;
    let engine = Engine::in_memory_with(Options {
        max_command_names: 2,
        ..Default::default()
    })
    .unwrap();
    let names = |engine: &Engine| -> Vec<(String, u64)> {
        engine
            .stats()
            .commands
            .iter()
            .map(|c| (c.name.clone(), c.runs))
            .collect()
    };
    engine.run("b", |tx| tx.put(b"b", b"1")).unwrap();
    engine.run("a", |tx| tx.put(b"a", b"1")).unwrap();
    assert_eq!(
        names(&engine),
        [("a".into(), 1), ("b".into(), 1)],
        "no overflow entry yet"
    );
    for name in ["c", "d", "a", OTHER_COMMANDS] {
        engine.run(name, |tx| tx.put(b"x", b"1")).unwrap();
    }
    assert_eq!(
        names(&engine),
        [("a".into(), 2), ("b".into(), 1), (OTHER_COMMANDS.into(), 3)],
        "c, d and a command named {OTHER_COMMANDS:?} share the overflow entry"
    );
    assert_entries_add_up(&engine.stats());

    let none = Engine::in_memory_with(Options {
        max_command_names: 0,
        ..Default::default()
    })
    .unwrap();
    none.run("a", |tx| tx.put(b"a", b"1")).unwrap();
    none.run("b", |tx| tx.put(b"b", b"1")).unwrap();
    assert_eq!(names(&none), [(OTHER_COMMANDS.into(), 2)]);

    match Engine::in_memory_with(Options {
        max_command_names: 100_001,
        ..Default::default()
    }) {
        Err(Error::InvalidOptions { option, reason }) => {
            assert_eq!(option, "max_command_names");
            assert!(reason.contains("100000"), "{reason}");
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    assert!(Engine::in_memory_with(Options {
        max_command_names: 100_000,
        ..Default::default()
    })
    .is_ok());
}
