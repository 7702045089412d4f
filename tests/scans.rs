//! Prefix scans, reverse scans and the borrowing scan visitors (issue 17, item 3).
//!
//! Every form (`range`, `prefix`, `.rev()`, `scan`, `scan_rev`, `scan_prefix`,
//! `scan_prefix_rev`, an early `Break`) is checked against a `BTreeMap` model under
//! seeded random puts and deletes, on snapshots and inside commands (where the
//! command's own writes count), over keys drawn from a small alphabet that holds
//! 0x00 and 0xFF bytes, with values large enough to live in overflow chains among
//! them. The phantom tests use the deterministic interleaving of
//! tests/key_conflicts.rs: a command that prefix-scans conflicts with an insert
//! under its prefix, not with one beside it.

mod common;

use common::*;
use shardstone::{Engine, Snapshot, Tx};
use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const ALPHABET: [u8; 5] = [0x00, 0x01, b'a', 0xFE, 0xFF];

fn rand_key(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range_incl(1, 6) as usize;
    (0..len)
        .map(|_| ALPHABET[rng.index(ALPHABET.len())])
        .collect()
}

/// Mostly small values; one in eight too large for a leaf (an overflow chain).
fn rand_value(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(1, 8) {
        rng.bytes_between(2_000, 9_000)
    } else {
        rng.bytes_between(0, 40)
    }
}

/// The prefixes worth checking: empty (everything), 0xFF-only ones (no
/// successor), ones ending in 0xFF, and random ones.
fn rand_prefix(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => Vec::new(),
        1 => vec![0xFF; rng.range_incl(1, 3) as usize],
        2 => vec![b'a', 0xFF],
        _ => {
            let mut k = rand_key(rng);
            k.truncate(rng.range_incl(1, 3) as usize);
            k
        }
    }
}

fn rand_bounds(rng: &mut Rng) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let one = |rng: &mut Rng| match rng.below(3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(rand_key(rng)),
        _ => Bound::Excluded(rand_key(rng)),
    };
    (one(rng), one(rng))
}

fn model_prefix(model: &Model, p: &[u8]) -> Entries {
    model
        .iter()
        .filter(|(k, _)| k.starts_with(p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn model_in(model: &Model, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Entries {
    model_range(model, bound_ref(lo), bound_ref(hi))
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn reversed(mut e: Entries) -> Entries {
    e.reverse();
    e
}

/// Collects a visitor scan, breaking after `limit` entries.
fn visit_limit(
    limit: usize,
    scan: impl FnOnce(
        &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<usize>,
    ) -> shardstone::Result<ControlFlow<usize>>,
) -> Entries {
    let mut out = Vec::new();
    let flow = scan(&mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        if out.len() >= limit {
            ControlFlow::Break(out.len())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("the scan runs");
    match flow {
        ControlFlow::Break(n) => assert_eq!(n, limit, "a Break is handed back as it was given"),
        ControlFlow::Continue(()) => assert!(out.len() < limit, "Continue only when exhausted"),
    }
    out
}

fn visit_all(
    scan: impl FnOnce(
        &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<usize>,
    ) -> shardstone::Result<ControlFlow<usize>>,
) -> Entries {
    visit_limit(usize::MAX, scan)
}

/// Takes entries alternately (by `rng`) from both ends of `it`: the result,
/// front part then back part reversed, is the whole range in order.
fn both_ends(
    rng: &mut Rng,
    mut it: impl DoubleEndedIterator<Item = shardstone::Result<(Vec<u8>, shardstone::Value)>>,
) -> Entries {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    loop {
        let item = if rng.chance(1, 2) {
            it.next().map(|r| r.map(|e| (true, e)))
        } else {
            it.next_back().map(|r| r.map(|e| (false, e)))
        };
        match item {
            None => break,
            Some(r) => {
                let (fwd, (k, v)) = r.expect("scan step");
                if fwd {
                    front.push((k, v.into_vec()));
                } else {
                    back.push((k, v.into_vec()));
                }
            }
        }
    }
    // Both ends stay done once they met.
    assert!(it.next().is_none() && it.next_back().is_none());
    back.reverse();
    front.extend(back);
    front
}

fn owned(it: impl Iterator<Item = shardstone::Result<(Vec<u8>, shardstone::Value)>>) -> Entries {
    it.map(|r| r.map(|(k, v)| (k, v.into_vec())))
        .collect::<shardstone::Result<_>>()
        .expect("scan")
}

/// Every scan form of a snapshot against `model`.
fn check_snapshot(rng: &mut Rng, snap: &Snapshot, model: &Model, what: &str) {
    for _ in 0..3 {
        let p = rand_prefix(rng);
        let want = model_prefix(model, &p);
        let what = format!("{what}, prefix {}", show(&p));
        assert_entries(&format!("{what} prefix"), &owned(snap.prefix(&p)), &want);
        let rev = reversed(want.clone());
        assert_entries(
            &format!("{what} prefix.rev"),
            &owned(snap.prefix(&p).rev()),
            &rev,
        );
        assert_entries(
            &format!("{what} prefix both ends"),
            &both_ends(rng, snap.prefix(&p)),
            &want,
        );
        assert_entries(
            &format!("{what} scan_prefix"),
            &visit_all(|f| snap.scan_prefix(&p, f)),
            &want,
        );
        assert_entries(
            &format!("{what} scan_prefix_rev"),
            &visit_all(|f| snap.scan_prefix_rev(&p, f)),
            &rev,
        );
        let limit = rng.range_incl(1, 5) as usize;
        let head: Entries = want.iter().take(limit).cloned().collect();
        assert_entries(
            &format!("{what} scan_prefix break after {limit}"),
            &visit_limit(limit, |f| snap.scan_prefix(&p, f)),
            &head,
        );
    }
    for _ in 0..3 {
        let (lo, hi) = rand_bounds(rng);
        let want = model_in(model, &lo, &hi);
        let what = format!("{what}, range {lo:?}..{hi:?}");
        let r = (bound_ref(&lo), bound_ref(&hi));
        assert_entries(&format!("{what} range"), &owned(snap.range(r)), &want);
        assert_entries(
            &format!("{what} scan"),
            &visit_all(|f| snap.scan(r, f)),
            &want,
        );
        assert_entries(
            &format!("{what} scan_rev"),
            &visit_all(|f| snap.scan_rev(r, f)),
            &reversed(want),
        );
    }
}

/// Every scan form inside a command against `model` (the command's own writes
/// applied to it).
fn check_tx(rng: &mut Rng, tx: &mut Tx<'_>, model: &Model, what: &str) -> shardstone::Result<()> {
    let p = rand_prefix(rng);
    let want = model_prefix(model, &p);
    let rev = reversed(want.clone());
    let what = format!("{what}, prefix {}", show(&p));
    assert_entries(&format!("{what} tx.prefix"), &owned(tx.prefix(&p)), &want);
    assert_entries(
        &format!("{what} tx.prefix.rev"),
        &owned(tx.prefix(&p).rev()),
        &rev,
    );
    let mixed = both_ends(rng, tx.prefix(&p));
    assert_entries(&format!("{what} tx.prefix both ends"), &mixed, &want);
    assert_entries(
        &format!("{what} tx.scan_prefix"),
        &visit_all(|f| tx.scan_prefix(&p, f)),
        &want,
    );
    assert_entries(
        &format!("{what} tx.scan_prefix_rev"),
        &visit_all(|f| tx.scan_prefix_rev(&p, f)),
        &rev,
    );
    let limit = rng.range_incl(1, 5) as usize;
    let tail: Entries = rev.iter().take(limit).cloned().collect();
    assert_entries(
        &format!("{what} tx.scan_prefix_rev break after {limit}"),
        &visit_limit(limit, |f| tx.scan_prefix_rev(&p, f)),
        &tail,
    );
    let (lo, hi) = rand_bounds(rng);
    let want = model_in(model, &lo, &hi);
    let r = (bound_ref(&lo), bound_ref(&hi));
    let what = format!("{what}, range {lo:?}..{hi:?}");
    assert_entries(
        &format!("{what} tx.scan"),
        &visit_all(|f| tx.scan(r, f)),
        &want,
    );
    assert_entries(
        &format!("{what} tx.scan_rev"),
        &visit_all(|f| tx.scan_rev(r, f)),
        &reversed(want),
    );
    Ok(())
}

fn model_run(seed: u64) {
    let mut rng = Rng::new(seed);
    let engine = Engine::in_memory().expect("engine");
    let mut model = Model::new();
    let mut overflow_seen = false;
    // Enough keys for several leaves, so scans cross leaf boundaries.
    let fill: Vec<(Vec<u8>, Vec<u8>)> = (0..400)
        .map(|_| (rand_key(&mut rng), rng.bytes_between(0, 40)))
        .collect();
    engine
        .run("fill", |tx| {
            for (k, v) in &fill {
                tx.put(k, v)?;
            }
            Ok(())
        })
        .expect("fill");
    model.extend(fill);
    for batch in 0..60 {
        let snap_before = engine.snapshot();
        let model_before = model.clone();
        // One command: a few random writes, scans checked between them against
        // the model with the command's writes applied.
        let mut local = model.clone();
        let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..rng.range_incl(1, 12))
            .map(|_| {
                let k = rand_key(&mut rng);
                let v = (!rng.chance(1, 4)).then(|| rand_value(&mut rng));
                (k, v)
            })
            .collect();
        let check_at = rng.index(ops.len() + 1);
        let tx_seed = rng.next_u64();
        engine
            .run("batch", |tx| {
                let mut trng = Rng::new(tx_seed);
                let mut local = model.clone();
                for (i, (k, v)) in ops.iter().enumerate() {
                    if i == check_at {
                        check_tx(&mut trng, tx, &local, &format!("seed {seed} batch {batch}"))?;
                    }
                    match v {
                        Some(v) => {
                            tx.put(k, v)?;
                            local.insert(k.clone(), v.clone());
                        }
                        None => {
                            tx.delete(k)?;
                            local.remove(k);
                        }
                    }
                }
                check_tx(
                    &mut trng,
                    tx,
                    &local,
                    &format!("seed {seed} batch {batch}, end"),
                )
            })
            .expect("the batch commits");
        for (k, v) in &ops {
            match v {
                Some(v) => {
                    overflow_seen |= v.len() >= 2_000;
                    local.insert(k.clone(), v.clone())
                }
                None => local.remove(k),
            };
        }
        model = local;
        // The snapshot taken before the command still sees the old state.
        check_snapshot(
            &mut rng,
            &snap_before,
            &model_before,
            &format!("seed {seed} before batch {batch}"),
        );
        check_snapshot(
            &mut rng,
            &engine.snapshot(),
            &model,
            &format!("seed {seed} after batch {batch}"),
        );
    }
    assert!(
        overflow_seen,
        "seed {seed}: some values were overflow-sized"
    );
    assert!(
        engine.stats().store.pages > 3,
        "seed {seed}: the tree has several leaves"
    );
}

#[test]
fn scans_match_a_model_under_random_writes() {
    for seed in 1..=6 {
        model_run(seed);
    }
}

#[test]
fn prefix_edges() {
    let engine = Engine::in_memory().unwrap();
    let keys: [&[u8]; 7] = [
        b"\x00",
        b"a",
        b"a\xff",
        b"a\xff\xff",
        b"b",
        b"\xff",
        b"\xff\xff\x00",
    ];
    engine
        .run("fill", |tx| {
            for k in keys {
                tx.put(k, k)?;
            }
            Ok(())
        })
        .unwrap();
    let snap = engine.snapshot();
    let keys_of = |p: &[u8]| -> Vec<Vec<u8>> { snap.prefix(p).map(|r| r.unwrap().0).collect() };
    assert_eq!(
        keys_of(b""),
        keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>(),
        "empty prefix: everything"
    );
    assert_eq!(
        keys_of(b"a\xff"),
        vec![b"a\xff".to_vec(), b"a\xff\xff".to_vec()],
        "the successor of a\\xff is b"
    );
    assert_eq!(
        keys_of(b"\xff"),
        vec![b"\xff".to_vec(), b"\xff\xff\x00".to_vec()],
        "no successor: unbounded"
    );
    assert_eq!(keys_of(b"\xff\xff"), vec![b"\xff\xff\x00".to_vec()]);
    assert!(keys_of(b"c").is_empty());
    // A prefix longer than any key can be is the same typed error as a long range bound.
    let long = vec![b'x'; 100_000];
    assert!(matches!(
        snap.prefix(&long).next(),
        Some(Err(shardstone::Error::KeyTooLarge { .. }))
    ));
    assert!(matches!(
        snap.scan_prefix(&long, |_, _| ControlFlow::<()>::Continue(())),
        Err(shardstone::Error::KeyTooLarge { .. })
    ));
    let r = engine.run("long", |tx| {
        tx.scan_prefix(&long, |_, _| ControlFlow::<()>::Continue(()))
            .map(|_| ())
    });
    assert!(
        matches!(r, Err(shardstone::Error::KeyTooLarge { .. })),
        "{r:?}"
    );
}

fn engine_with_a_small_leaf() -> Engine {
    let engine = Engine::in_memory().unwrap();
    engine
        .run("fill", |tx| {
            for i in 0..300u32 {
                tx.put(format!("a:{i:04}").as_bytes(), &[b'.'; 60])?;
                tx.put(format!("z:{i:04}").as_bytes(), &[b'.'; 60])?;
            }
            for i in (10..=90).step_by(10) {
                tx.put(format!("r:{i:02}").as_bytes(), &enc(i))?;
            }
            for k in [
                &b"r\xff\xff"[..],
                b"r\xff\xff\x01",
                b"\xff\xff",
                b"\xff\xff\x01",
            ] {
                tx.put(k, b"ff")?;
            }
            Ok(())
        })
        .unwrap();
    assert!(engine.stats().store.pages > 5);
    engine
}

#[derive(Clone, Copy, Debug)]
enum Form {
    Iter,
    IterRev,
    Visit,
    VisitRev,
}

const FORMS: [Form; 4] = [Form::Iter, Form::IterRev, Form::Visit, Form::VisitRev];

/// A counts the keys under `prefix` (the first `limit` of them, in the scan's
/// direction) and writes the count; B inserts `insert` while A is paused after
/// its scan. Returns A's attempts: 2 when B's insert was a phantom.
fn prefix_conflicts(prefix: &[u8], form: Form, limit: usize, insert: &[u8]) -> u32 {
    let engine = engine_with_a_small_leaf();
    let (_, attempts, ()) = interleave(
        &engine,
        "count",
        |tx, pause| {
            let n = match form {
                Form::Iter => tx
                    .prefix(prefix)
                    .take(limit)
                    .collect::<shardstone::Result<Vec<_>>>()?
                    .len(),
                Form::IterRev => tx
                    .prefix(prefix)
                    .rev()
                    .take(limit)
                    .collect::<shardstone::Result<Vec<_>>>()?
                    .len(),
                Form::Visit | Form::VisitRev => {
                    let mut n = 0;
                    let mut count = |_: &[u8], _: &[u8]| {
                        n += 1;
                        if n == limit {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    };
                    if matches!(form, Form::Visit) {
                        let _ = tx.scan_prefix(prefix, &mut count)?;
                    } else {
                        let _ = tx.scan_prefix_rev(prefix, &mut count)?;
                    }
                    n
                }
            };
            pause();
            tx.put(b"r:count", &enc(n as u64))?;
            Ok(n)
        },
        "insert",
        |tx| tx.put(insert, b"new"),
    );
    let count = engine
        .stats()
        .commands
        .into_iter()
        .find(|c| c.name == "count")
        .expect("stats");
    assert_eq!(count.conflicts, u64::from(attempts - 1), "{count:?}");
    attempts
}

#[test]
fn an_insert_under_a_scanned_prefix_is_a_phantom() {
    for form in FORMS {
        for inside in [&b"r:"[..], b"r:05", b"r:35", b"r:95", b"r:\xff"] {
            assert_eq!(
                prefix_conflicts(b"r:", form, usize::MAX, inside),
                2,
                "{form:?}: an insert of {} under r: is a phantom",
                show(inside)
            );
        }
    }
}

#[test]
fn an_insert_beside_a_scanned_prefix_is_not_a_conflict() {
    for form in FORMS {
        // "r" and "r9" sort before "r:", "r;" is its successor.
        for outside in [&b"r"[..], b"r9", b"r;", b"r;\x00", b"a:0005x", b"z:0001x"] {
            assert_eq!(
                prefix_conflicts(b"r:", form, usize::MAX, outside),
                1,
                "{form:?}: an insert of {} beside r: is not a conflict",
                show(outside)
            );
        }
    }
}

/// A prefix ending in 0xFF bytes ends where its last other byte is raised
/// ("r\xff\xff" ends before "s"); one of 0xFF bytes only has no end.
#[test]
fn prefixes_ending_in_ff_bytes() {
    let cases: [(&[u8], &[u8], u32); 10] = [
        (b"r\xff\xff", b"r\xff\xff", 2),
        (b"r\xff\xff", b"r\xff\xff\xff\xff", 2),
        (b"r\xff\xff", b"r\xff\xff\x00", 2),
        (b"r\xff\xff", b"r\xff\xfe", 1),
        (b"r\xff\xff", b"s", 1),
        (b"\xff\xff", b"\xff\xff\xff\xff", 2),
        (b"\xff\xff", b"\xff\xff\x00", 2),
        (b"\xff\xff", b"\xff\xff", 2),
        (b"\xff\xff", b"\xff\xfe\xff", 1),
        (b"\xff\xff", b"z:0001x", 1),
    ];
    for form in FORMS {
        for (prefix, insert, attempts) in cases {
            assert_eq!(
                prefix_conflicts(prefix, form, usize::MAX, insert),
                attempts,
                "{form:?}: prefix {}, insert {}",
                show(prefix),
                show(insert)
            );
        }
    }
}

/// A visitor that broke off after two keys looked at the prefix only up to
/// the second one (from its end): an insert past that is not a conflict.
#[test]
fn a_scan_broken_off_early_conflicts_only_over_what_it_looked_at() {
    // Forward: sees r:10, r:20.
    for (insert, attempts) in [(&b"r:05"[..], 2), (b"r:15", 2), (b"r:35", 1), (b"r:95", 1)] {
        for form in [Form::Visit, Form::Iter] {
            assert_eq!(
                prefix_conflicts(b"r:", form, 2, insert),
                attempts,
                "{form:?}: insert {}",
                show(insert)
            );
        }
    }
    // Reverse: sees r:90, r:80.
    for (insert, attempts) in [(&b"r:95"[..], 2), (b"r:85", 2), (b"r:75", 1), (b"r:05", 1)] {
        for form in [Form::VisitRev, Form::IterRev] {
            assert_eq!(
                prefix_conflicts(b"r:", form, 2, insert),
                attempts,
                "{form:?}: insert {}",
                show(insert)
            );
        }
    }
}

/// A delete under the prefix is a phantom too (the scan saw the key).
#[test]
fn a_delete_under_a_scanned_prefix_is_a_conflict() {
    for form in FORMS {
        let engine = engine_with_a_small_leaf();
        let (_, attempts, _) = interleave(
            &engine,
            "count",
            |tx, pause| {
                let mut n = 0u64;
                match form {
                    Form::Iter => n = tx.prefix(b"r:").count() as u64,
                    Form::IterRev => n = tx.prefix(b"r:").rev().count() as u64,
                    Form::Visit | Form::VisitRev => {
                        let flow = tx.scan_prefix(b"r:", |_, _| {
                            n += 1;
                            ControlFlow::<()>::Continue(())
                        })?;
                        assert!(flow.is_continue());
                    }
                }
                pause();
                tx.put(b"r:count", &enc(n))
            },
            "delete",
            |tx| tx.delete(b"r:50"),
        );
        assert_eq!(attempts, 2, "{form:?}");
    }
}

/// Counts the allocations made by the current thread, so that the cost model
/// the scan visitors document (no allocation per item) is checked, not claimed.
struct CountingAlloc;

thread_local! {
    static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a const-initialised thread-local `Cell`, which never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(|c| c.get());
    f();
    ALLOCS.with(|c| c.get()) - before
}

#[test]
fn the_visitors_allocate_nothing_per_item() {
    const N: u64 = 2_000;
    let engine = Engine::in_memory().unwrap();
    engine
        .run("fill", |tx| {
            for i in 0..N {
                tx.put(format!("k:{i:05}").as_bytes(), &enc(i))?;
            }
            // Two overflow values: the reused buffer grows at most for each.
            tx.put(b"k:big1", &[1; 9_000])?;
            tx.put(b"k:big2", &[2; 8_000])
        })
        .unwrap();
    assert!(
        engine.stats().store.pages > 10,
        "the scan crosses many leaves"
    );
    let snap = engine.snapshot();
    let seen = std::cell::Cell::new(0u64);
    let count = |_: &[u8], v: &[u8]| {
        seen.set(seen.get() + v.len() as u64);
        ControlFlow::<()>::Continue(())
    };
    let visit = allocations(|| {
        let _ = snap.scan_prefix(b"k:", count).unwrap();
    });
    assert_eq!(seen.get(), N * 8 + 17_000, "every value visited");
    let visit_rev = allocations(|| {
        let _ = snap.scan_rev(.., count).unwrap();
    });
    assert_eq!(
        seen.get(),
        2 * (N * 8 + 17_000),
        "every value visited backwards"
    );
    let owned = allocations(|| assert_eq!(snap.prefix(b"k:").count() as u64, N + 2));
    // A handful for the scan's own state (bounds, the descent stacks, the last
    // key, the overflow buffer), whatever the number of items.
    assert!(
        visit < 32 && visit_rev < 32,
        "visit: {visit}, reverse: {visit_rev} allocations"
    );
    assert!(owned >= 2 * N, "the owned form allocates per item: {owned}");
    // Inside a command the read set grows by one entry per leaf read (amortized).
    let in_tx = engine
        .run("visit", |tx| {
            let mut n = 0u64;
            let allocs = allocations(|| {
                let _ = tx
                    .scan_prefix(b"k:", |_, _| {
                        n += 1;
                        ControlFlow::<()>::Continue(())
                    })
                    .unwrap();
            });
            assert_eq!(n, N + 2);
            Ok(allocs)
        })
        .unwrap();
    assert!(in_tx < 48, "in a command: {in_tx} allocations");
}
