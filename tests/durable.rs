//! Durable engines through the public API: reopen, checkpoints, durability
//! levels, the hash chain across restarts, exclusive access, read-only opens.

mod common;

use common::{dec, enc, scan, Rng, TempDir};
use shardstone::{ChainHash, Durability, Engine, Error, Options};
use std::collections::BTreeMap;

fn opts(durability: Durability) -> Options {
    Options {
        durability,
        journal_shards: 3,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// Runs `n` random puts and deletes over a small key space from `threads`
/// threads; returns nothing (the engine is the record).
fn churn(engine: &Engine, threads: u64, n: u64, seed: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(seed * 1000 + t);
                for _ in 0..n {
                    let key = format!("k{:04}", rng.below(500));
                    let del = rng.chance(1, 5);
                    let len = rng.below(300) as usize;
                    let value = rng.bytes(len);
                    engine
                        .run("churn", |tx| {
                            if del {
                                tx.delete(key.as_bytes())?;
                            } else {
                                tx.put(key.as_bytes(), &value)?;
                            }
                            Ok(())
                        })
                        .unwrap();
                }
            });
        }
    });
}

#[test]
fn reopen_recovers_every_commit_and_the_chain() {
    for durability in [Durability::Durable, Durability::Buffered] {
        let dir = TempDir::new("reopen");
        let (state, last) = {
            let engine = Engine::open_with(dir.path(), opts(durability)).unwrap();
            assert_eq!(engine.last_commit(), (0.into(), ChainHash::genesis()));
            churn(&engine, 4, 400, 1);
            let last = engine.last_commit();
            assert_eq!(last.0.get(), 1600);
            (scan(&engine.snapshot()), last)
        };
        let engine = Engine::open_with(dir.path(), opts(durability)).unwrap();
        assert_eq!(engine.last_commit(), last, "{durability:?}");
        assert_eq!(scan(&engine.snapshot()), state, "{durability:?}");
        assert_eq!(engine.stats().journal.replayed, 1600);
        // Commit ids continue after the recovered ones, and the chain with them.
        engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
        assert_eq!(engine.commit_id().get(), 1601);
        let last = engine.last_commit();
        drop(engine);
        let engine = Engine::open_with(dir.path(), opts(durability)).unwrap();
        assert_eq!(engine.last_commit(), last);
    }
}

#[test]
fn checkpoint_then_replay_of_the_rest() {
    let dir = TempDir::new("checkpoint");
    let (state, last) = {
        let engine = Engine::open_with(dir.path(), opts(Durability::Durable)).unwrap();
        churn(&engine, 2, 300, 2);
        let segments_before = engine.stats().journal.segments;
        let at = engine.checkpoint().unwrap();
        assert_eq!(at.get(), 600);
        assert!(engine.stats().journal.segments < segments_before || segments_before <= 3);
        churn(&engine, 2, 200, 3);
        (scan(&engine.snapshot()), engine.last_commit())
    };
    let engine = Engine::open_with(dir.path(), opts(Durability::Durable)).unwrap();
    assert_eq!(engine.last_commit(), last);
    assert_eq!(scan(&engine.snapshot()), state);
    let stats = engine.stats().journal;
    assert_eq!((stats.checkpoint, stats.replayed), (600, 400));
    // A second checkpoint replaces the first; the journal before it goes.
    assert_eq!(engine.checkpoint().unwrap().get(), 1000);
    drop(engine);
    let ckpts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.ends_with(".ckpt").then_some(n)
        })
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let engine = Engine::open_with(dir.path(), opts(Durability::Durable)).unwrap();
    assert_eq!(engine.stats().journal.replayed, 0);
    assert_eq!(engine.last_commit(), last);
    assert_eq!(scan(&engine.snapshot()), state);
}

#[test]
fn durability_none_keeps_only_checkpoints() {
    let dir = TempDir::new("none");
    {
        let engine = Engine::open_with(dir.path(), opts(Durability::None)).unwrap();
        engine.run("a", |tx| tx.put(b"a", b"1")).unwrap();
        engine.checkpoint().unwrap();
        engine.run("b", |tx| tx.put(b"b", b"2")).unwrap();
        assert_eq!(engine.stats().journal.shards, 0);
    }
    let engine = Engine::open_with(dir.path(), opts(Durability::None)).unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        snap.get(b"b").unwrap(),
        None,
        "no journal: lost after the checkpoint"
    );
    assert_eq!(engine.commit_id().get(), 1);
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = TempDir::new("group");
    let o = Options {
        journal_shards: 1,
        ..opts(Durability::Durable)
    };
    let engine = Engine::open_with(dir.path(), o).unwrap();
    churn(&engine, 8, 50, 4);
    let stats = engine.stats();
    assert_eq!(stats.commits, 400);
    assert!(stats.journal.syncs >= 1 && stats.journal.syncs <= 400);
}

#[test]
fn large_values_and_many_ops_per_commit_survive() {
    let dir = TempDir::new("large");
    let mut rng = Rng::new(9);
    let big = rng.bytes(3 << 20);
    let mut want = BTreeMap::new();
    {
        let engine = Engine::open_with(dir.path(), opts(Durability::Durable)).unwrap();
        engine.run("big", |tx| tx.put(b"big", &big)).unwrap();
        engine
            .run("many", |tx| {
                for i in 0..5000u64 {
                    tx.put(&enc(i), &enc(i * 3))?;
                }
                Ok(())
            })
            .unwrap();
        for i in 0..5000u64 {
            want.insert(enc(i).to_vec(), enc(i * 3).to_vec());
        }
        want.insert(b"big".to_vec(), big.clone());
    }
    let engine = Engine::open_with(dir.path(), opts(Durability::Durable)).unwrap();
    let got = scan(&engine.snapshot());
    assert_eq!(got.len(), want.len());
    for (k, v) in &got {
        assert_eq!(want.get(k), Some(v));
    }
    assert_eq!(
        dec(&engine.snapshot().get(&enc(4999)).unwrap().unwrap()),
        4999 * 3
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let dir = TempDir::new("lock");
    let engine = Engine::open(dir.path()).unwrap();
    match Engine::open(dir.path()) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Through a symlink: the same inode, the same lock.
    let link = dir.path().with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    assert!(matches!(Engine::open(&link), Err(Error::Locked { .. })));
    // And through another spelling of the path.
    let other = dir.path().join("journal").join("..");
    assert!(matches!(Engine::open(&other), Err(Error::Locked { .. })));
    assert!(matches!(
        Engine::open_read_only(dir.path(), Options::default()),
        Err(Error::Locked { .. })
    ));
    drop(engine);
    std::fs::remove_file(&link).unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    drop(engine);
}

#[test]
fn read_only_opens_share_and_refuse_writes() {
    let dir = TempDir::new("readonly");
    {
        let engine = Engine::open(dir.path()).unwrap();
        engine.run("w", |tx| tx.put(b"k", b"v")).unwrap();
    }
    let a = Engine::open_read_only(dir.path(), Options::default()).unwrap();
    let b = Engine::open_read_only(dir.path(), Options::default()).unwrap();
    assert_eq!(b.snapshot().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(
        a.run("w", |tx| tx.put(b"k", b"x")),
        Err(Error::ReadOnly)
    ));
    // A command that only reads is fine.
    let v = a
        .run("r", |tx| Ok(tx.get(b"k")?.map(|v| v.to_vec())))
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    assert!(matches!(a.checkpoint(), Err(Error::ReadOnly)));
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    drop((a, b));
    assert!(Engine::open_read_only(dir.path().join("missing"), Options::default()).is_err());
}

/// A record altered together with its checksum (a forged or foreign record) still
/// breaks the hash chain: a later frame's anchor disagrees with the replayed chain.
#[test]
fn an_altered_record_with_a_valid_checksum_breaks_the_chain() {
    let dir = TempDir::new("chain");
    let o = Options {
        journal_shards: 1,
        ..opts(Durability::Durable)
    };
    {
        let engine = Engine::open_with(dir.path(), o.clone()).unwrap();
        for i in 0..200u64 {
            engine
                .run("put", |tx| tx.put(&enc(i), b"value-value-value"))
                .unwrap();
        }
    }
    // Find commit 100's frame in the one shard's segments and change its value.
    let mut forged = false;
    for entry in std::fs::read_dir(dir.path().join("journal")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut off = 64;
        while off + 64 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            let kind = bytes[off + 8];
            let id = u64::from_le_bytes(bytes[off + 64..off + 72].try_into().unwrap());
            if kind == 1 && id == 100 {
                bytes[off + len - 1] ^= 0x20; // the value's last byte
                let crc = crc32c::crc32c(&bytes[off..off + 4]);
                let crc = crc32c::crc32c_append(crc, &bytes[off + 8..off + len]);
                bytes[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
                std::fs::write(&path, &bytes).unwrap();
                forged = true;
                break;
            }
            off += len.next_multiple_of(8);
        }
    }
    assert!(forged, "commit 100's frame was found");
    match Engine::open_with(dir.path(), o) {
        Err(Error::Corrupt {
            commit_id, reason, ..
        }) => {
            assert!(reason.contains("hash chain mismatch"), "{reason}");
            assert!(commit_id.unwrap().get() > 100, "{commit_id:?}");
        }
        other => panic!("expected a chain mismatch, got {other:?}"),
    }
}
