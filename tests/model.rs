//! Model-based tests: random command sequences checked against a `BTreeMap`.
//!
//! Each run grows the tree to tens of thousands of keys (many leaf and inner
//! splits), churns it, then shrinks it to empty (many merges and root collapses).
//! Inside every command, each `get`, `delete` and range scan (forward, reverse and
//! mixed, with included, excluded and unbounded ends) is compared with the model,
//! which already holds the command's own earlier writes: read-your-own-writes is
//! checked on every op. Snapshots taken along the way must keep seeing exactly the
//! state they were taken at.

mod common;

use common::*;
use shardstone::{Engine, Snapshot, Value};
use std::collections::BTreeMap;
use std::ops::Bound;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const MAX_VALUE: usize = 16 << 20;

struct Cfg {
    page_size: usize,
    seed: u64,
    /// Keys to grow to before shrinking.
    target_keys: usize,
    /// Largest number of ops in one command.
    max_batch: u64,
    /// Put one value of exactly the default maximum (16 MiB) along the way.
    max_value: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Grow,
    Churn,
    Shrink,
}

struct Run {
    cfg: Cfg,
    rng: Rng,
    model: Model,
    key_space: u64,
    /// Centre of the key region the current command works on, if it is local.
    focus: Option<u64>,
    commands: u64,
}

impl Run {
    fn new(cfg: Cfg) -> Run {
        let rng = Rng::new(cfg.seed);
        let key_space = cfg.target_keys as u64 * 3;
        Run {
            cfg,
            rng,
            model: Model::new(),
            key_space,
            focus: None,
            commands: 0,
        }
    }

    fn rand_key(&mut self) -> Vec<u8> {
        let n = match self.focus {
            Some(c) => {
                let width = (self.key_space / 64).max(16);
                (c + self.rng.below(width)) % self.key_space
            }
            None => self.rng.below(self.key_space),
        };
        let mut k = format!("k{n:07}").into_bytes();
        match self.rng.below(40) {
            0..=9 => {
                // A suffix: keys of varied lengths that share prefixes.
                k.push(b'-');
                let len = self.rng.range_incl(1, 40) as usize;
                k.extend((0..len).map(|_| b'a' + self.rng.below(26) as u8));
            }
            10 => {
                // Rarely a long key, up to the limit: few of them fit in an inner page.
                let len = self.rng.range_incl(200, shardstone::MAX_KEY_LEN as u64) as usize;
                while k.len() < len {
                    k.push(b'a' + self.rng.below(26) as u8);
                }
            }
            _ => {}
        }
        k
    }

    /// An existing key near a random point, or a random key when the model is empty.
    fn existing_key(&mut self) -> Vec<u8> {
        let probe = self.rand_key();
        if let Some((k, _)) = self
            .model
            .range::<[u8], _>((Bound::Included(probe.as_slice()), Bound::Unbounded))
            .next()
        {
            return k.clone();
        }
        match self.model.keys().next_back() {
            Some(k) => k.clone(),
            None => probe,
        }
    }

    fn rand_value(&mut self) -> Vec<u8> {
        let quarter = self.cfg.page_size / 4;
        let len = match self.rng.below(100) {
            0..=84 => self.rng.below(65) as usize,
            85..=92 => self.rng.range_incl(65, 400) as usize,
            // Around the largest inline entry: some inline, some in overflow pages.
            93..=96 => {
                self.rng
                    .range_incl(quarter as u64 - 80, quarter as u64 + 40) as usize
            }
            _ => self.rng.range_incl(1025, 65536) as usize,
        };
        self.rng.bytes(len)
    }

    fn rand_bound(&mut self) -> Bound<Vec<u8>> {
        let k = if self.rng.chance(1, 2) {
            self.existing_key()
        } else {
            self.rand_key()
        };
        match self.rng.below(6) {
            0 => Bound::Unbounded,
            1 | 2 => Bound::Excluded(k),
            _ => Bound::Included(k),
        }
    }
}

/// Whether a range with these bounds is empty by construction (the engine yields nothing).
fn empty_bounds(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
        | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
        _ => false,
    }
}

fn describe(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> String {
    let b = |b: &Bound<Vec<u8>>| match b {
        Bound::Included(k) => format!("Included({})", show(k)),
        Bound::Excluded(k) => format!("Excluded({})", show(k)),
        Bound::Unbounded => "Unbounded".to_string(),
    };
    format!("({}, {})", b(lo), b(hi))
}

/// How a scan walks its range.
#[derive(Clone, Copy, Debug)]
enum Walk {
    Forward,
    Reverse,
    /// Front and back alternately, by a seeded pattern, until the ends meet.
    Mixed(u64),
}

/// Compares `limit` items of an engine range iterator with the model's, walking as told.
#[track_caller]
fn compare_walk<I>(
    what: &str,
    engine_it: I,
    model: &Model,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    walk: Walk,
    limit: usize,
) where
    I: DoubleEndedIterator<Item = shardstone::Result<(Vec<u8>, Value)>>,
{
    let mut engine_it = engine_it;
    let mut empty = std::iter::empty::<(&Vec<u8>, &Vec<u8>)>();
    let mut model_range;
    let model_it: &mut dyn DoubleEndedIterator<Item = (&Vec<u8>, &Vec<u8>)> =
        if empty_bounds(lo, hi) {
            &mut empty
        } else {
            model_range = model.range::<[u8], _>((lo, hi));
            &mut model_range
        };
    let mut pattern = match walk {
        Walk::Mixed(s) => Rng::new(s),
        _ => Rng::new(0),
    };
    for i in 0..=limit {
        let back = match walk {
            Walk::Forward => false,
            Walk::Reverse => true,
            Walk::Mixed(_) => pattern.chance(1, 2),
        };
        let (got, want) = if back {
            (engine_it.next_back(), model_it.next_back())
        } else {
            (engine_it.next(), model_it.next())
        };
        let side = if back { "back" } else { "front" };
        match (got, want) {
            (None, None) => {
                // Both exhausted; the other end must be exhausted too.
                assert!(
                    engine_it.next().is_none() && engine_it.next_back().is_none(),
                    "{what}: items after the ends met"
                );
                return;
            }
            (Some(Err(e)), _) => panic!("{what}: item {i} from the {side}: error {e}"),
            (Some(Ok((k, v))), Some((wk, wv))) => {
                assert!(
                    k == *wk,
                    "{what}: item {i} from the {side}: key {} but expected {}",
                    show(&k),
                    show(wk)
                );
                assert_value(
                    format_args!("{what}: item {i} ({}) from the {side}", show(&k)),
                    Some(&v),
                    Some(wv),
                );
            }
            (Some(Ok((k, _))), None) => panic!(
                "{what}: item {i} from the {side}: unexpected key {}",
                show(&k)
            ),
            (None, Some((wk, _))) => panic!(
                "{what}: item {i} from the {side}: ended, expected key {}",
                show(wk)
            ),
        }
    }
}

fn check_snapshot_gets(
    what: &str,
    snap: &Snapshot,
    model: &Model,
    rng: &mut Rng,
    probes: &[Vec<u8>],
) {
    for k in probes {
        let got = snap.get(k).expect("snapshot get");
        assert_value(
            format_args!("{what}: get {}", show(k)),
            got.as_deref(),
            model.get(k).map(Vec::as_slice),
        );
    }
    // A few scans of random sub-ranges, all three walks.
    for _ in 0..3 {
        if probes.len() < 2 {
            break;
        }
        let a = &probes[rng.index(probes.len())];
        let b = &probes[rng.index(probes.len())];
        let (lo, hi) = (Bound::Included(a.as_slice()), Bound::Excluded(b.as_slice()));
        let walk = match rng.below(3) {
            0 => Walk::Forward,
            1 => Walk::Reverse,
            _ => Walk::Mixed(rng.next_u64()),
        };
        compare_walk(
            &format!("{what}: snapshot range [{}, {}) {walk:?}", show(a), show(b)),
            snap.range((lo, hi)),
            model,
            lo,
            hi,
            walk,
            200,
        );
    }
}

/// Names the failing command when the engine panics inside `run`.
struct Context<'a>(&'a str, u64);

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: panicked during command {}", self.0, self.1);
        }
    }
}

fn run_model(cfg: Cfg) {
    let engine = engine_with(cfg.page_size);
    let mut run = Run::new(cfg);
    let label = format!("page_size {} seed {}", run.cfg.page_size, run.cfg.seed);
    let mut held: Vec<(Snapshot, Model, u64)> = Vec::new();
    let mut phase = Phase::Grow;
    let mut churn_left = 0u64;
    let mut peak_pages = 0u64;
    let mut max_value_put = false;
    let max_value_at = run.cfg.target_keys / 2;

    loop {
        match phase {
            Phase::Grow if run.model.len() >= run.cfg.target_keys => {
                phase = Phase::Churn;
                churn_left = 150;
                let st = engine.stats();
                peak_pages = st.store.pages;
                assert_snapshot_is(
                    &format!("{label}: after growing"),
                    &engine.snapshot(),
                    &run.model,
                );
            }
            Phase::Churn if churn_left == 0 => phase = Phase::Shrink,
            Phase::Shrink if run.model.is_empty() => break,
            _ => {}
        }
        if phase == Phase::Churn {
            churn_left -= 1;
        }
        run.commands += 1;
        let cmd_no = run.commands;

        // Snapshots: take one now and then, check and drop those held long enough.
        if cmd_no.is_multiple_of(37) && held.len() < 2 {
            let snap = engine.snapshot();
            assert_eq!(
                snap.commit_id(),
                engine.commit_id(),
                "{label}: a snapshot is at the newest commit"
            );
            held.push((snap, run.model.clone(), cmd_no));
        }
        if let Some(pos) = held.iter().position(|(_, _, at)| cmd_no - at >= 45) {
            let (snap, model, at) = held.remove(pos);
            let what = format!(
                "{label}: snapshot taken before command {at}, checked before command {cmd_no}"
            );
            assert_snapshot_is(&what, &snap, &model);
            let probes: Vec<Vec<u8>> = (0..40)
                .map(|i| {
                    if i % 2 == 0 {
                        run.existing_key()
                    } else {
                        run.rand_key()
                    }
                })
                .collect();
            let mut prng = Rng::new(cmd_no);
            check_snapshot_gets(&what, &snap, &model, &mut prng, &probes);
        }
        if cmd_no.is_multiple_of(500) {
            assert_snapshot_is(
                &format!("{label}: before command {cmd_no}"),
                &engine.snapshot(),
                &run.model,
            );
        }

        // One command: a single op a quarter of the time, else a batch.
        run.focus = if run.rng.chance(1, 2) {
            Some(run.rng.below(run.key_space))
        } else {
            None
        };
        let batch = if run.rng.chance(1, 4) {
            1
        } else {
            run.rng.range_incl(2, run.cfg.max_batch)
        };
        let put_max_value = run.cfg.max_value
            && !max_value_put
            && phase == Phase::Grow
            && run.model.len() >= max_value_at;
        let mut attempts = 0u32;
        let commit_before = engine.commit_id().get();
        // Whether the command changed the state, and whether it issued any write at all.
        let (mut changed, mut issued) = (false, false);
        let context = Context(&label, cmd_no);
        let result = engine.run("model", |tx| {
            attempts += 1;
            assert_eq!(
                attempts, 1,
                "{label}: a command alone on the engine never re-runs"
            );
            let r = &mut run;
            if put_max_value {
                let k = r.rand_key();
                let v = r.rng.bytes(MAX_VALUE);
                tx.put(&k, &v)?;
                let got = tx.get(&k)?;
                assert_value(
                    format_args!("{label}: 16 MiB value read back in its command"),
                    got.as_deref(),
                    Some(&v),
                );
                r.model.insert(k, v);
                (changed, issued) = (true, true);
            }
            for op in 0..batch {
                let what = format!("{label}: command {cmd_no} op {op} ({phase:?})");
                let roll = r.rng.below(100);
                let (put, del, get, scan) = match phase {
                    Phase::Grow => (
                        roll < 70,
                        (70..76).contains(&roll),
                        (76..88).contains(&roll),
                        roll >= 88,
                    ),
                    Phase::Churn => (
                        roll < 40,
                        (40..70).contains(&roll),
                        (70..85).contains(&roll),
                        roll >= 85,
                    ),
                    Phase::Shrink => (
                        roll < 8,
                        (8..75).contains(&roll),
                        (75..85).contains(&roll),
                        roll >= 85,
                    ),
                };
                if put {
                    let k = if r.rng.chance(1, 5) {
                        r.existing_key()
                    } else {
                        r.rand_key()
                    };
                    let v = r.rand_value();
                    tx.put(&k, &v)?;
                    r.model.insert(k, v);
                    (changed, issued) = (true, true);
                } else if del {
                    let k = if r.rng.chance(9, 10) {
                        r.existing_key()
                    } else {
                        r.rand_key()
                    };
                    let existed = tx.delete(&k)?;
                    assert_eq!(
                        existed,
                        r.model.remove(&k).is_some(),
                        "{what}: delete {} reports whether it existed",
                        show(&k)
                    );
                    issued = true;
                    changed |= existed;
                } else if get {
                    let k = if r.rng.chance(2, 3) {
                        r.existing_key()
                    } else {
                        r.rand_key()
                    };
                    let got = tx.get(&k)?;
                    assert_value(
                        format_args!("{what}: get {}", show(&k)),
                        got.as_deref(),
                        r.model.get(&k).map(Vec::as_slice),
                    );
                } else if scan && phase == Phase::Shrink && r.rng.chance(1, 3) {
                    // Delete a whole stretch of keys found by a scan: many merges.
                    let lo = r.existing_key();
                    let n = r.rng.range_incl(1, 300) as usize;
                    let found: Vec<Vec<u8>> = tx
                        .range(lo.as_slice()..)
                        .take(n)
                        .map(|e| e.map(|(k, _)| k))
                        .collect::<shardstone::Result<_>>()?;
                    let want: Vec<Vec<u8>> = r
                        .model
                        .range(lo.clone()..)
                        .take(n)
                        .map(|(k, _)| k.clone())
                        .collect();
                    assert!(
                        found == want,
                        "{what}: scan from {} for deletion: {} keys, expected {}",
                        show(&lo),
                        found.len(),
                        want.len()
                    );
                    for k in found {
                        assert!(tx.delete(&k)?, "{what}: delete of scanned key {}", show(&k));
                        r.model.remove(&k);
                        (changed, issued) = (true, true);
                    }
                } else {
                    let lo = r.rand_bound();
                    let hi = if r.rng.chance(1, 6) {
                        Bound::Unbounded
                    } else {
                        r.rand_bound()
                    };
                    // Mostly ordered bounds; now and then inverted ones, which are empty.
                    let (lo, hi) = match (&lo, &hi) {
                        (
                            Bound::Included(a) | Bound::Excluded(a),
                            Bound::Included(b) | Bound::Excluded(b),
                        ) if a > b && r.rng.chance(4, 5) => (hi, lo),
                        _ => (lo, hi),
                    };
                    let walk = match r.rng.below(3) {
                        0 => Walk::Forward,
                        1 => Walk::Reverse,
                        _ => Walk::Mixed(r.rng.next_u64()),
                    };
                    let limit = r.rng.range_incl(1, 120) as usize;
                    let (l, h) = (bound_ref(&lo), bound_ref(&hi));
                    let what = format!("{what}: range {} {walk:?}", describe(&lo, &hi));
                    compare_walk(&what, tx.range((l, h)), &r.model, l, h, walk, limit);
                }
            }
            Ok(())
        });
        result.unwrap_or_else(|e| panic!("{label}: command {cmd_no} failed: {e}"));
        drop(context);
        if put_max_value {
            max_value_put = true;
        }
        // A command that changed something takes exactly the next commit id; one that
        // only read takes none. (One whose only writes deleted absent keys may do either.)
        let now = engine.commit_id().get();
        if changed {
            assert_eq!(
                now,
                commit_before + 1,
                "{label}: command {cmd_no} changed keys: one commit id"
            );
        } else if !issued {
            assert_eq!(
                now, commit_before,
                "{label}: command {cmd_no} only read: no commit id"
            );
        } else {
            assert!(
                now - commit_before <= 1,
                "{label}: command {cmd_no}: at most one commit id"
            );
        }
    }

    // Everything deleted: every held snapshot still sees its own state.
    for (snap, model, at) in held.drain(..) {
        assert_snapshot_is(
            &format!("{label}: snapshot taken before command {at}, checked after emptying"),
            &snap,
            &model,
        );
    }
    assert!(
        !run.cfg.max_value || max_value_put,
        "{label}: the 16 MiB value was put"
    );
    let snap = engine.snapshot();
    assert_snapshot_is(&format!("{label}: empty at the end"), &snap, &run.model);
    drop(snap);

    let st = engine.stats();
    assert_eq!(st.errors, 0, "{label}: no command failed");
    assert_eq!(st.conflicts, 0, "{label}: one thread never conflicts");
    assert!(
        peak_pages >= 20,
        "{label}: the tree grew to many pages (peak {peak_pages})"
    );
    assert!(st.restructures > 0, "{label}: pages were split and merged");
    engine.collect_garbage();
    let st = engine.stats();
    eprintln!(
        "{label}: {} commands, {} commits, peak {peak_pages} pages, {} restructures, empty: {:?}",
        run.commands, st.commits, st.restructures, st.store
    );
    assert!(
        st.store.pages <= 2,
        "{label}: an empty tree shrinks back to its root: {:?}",
        st.store
    );
    assert_eq!(
        st.store.pinned_versions, 0,
        "{label}: nothing is pinned once every snapshot is gone: {:?}",
        st.store
    );
    assert_eq!(st.store.pinned_snapshots, 0, "{label}: {:?}", st.store);
    assert!(
        st.store.page_buffers <= st.store.pages + 2,
        "{label}: an empty tree holds no old versions or overflow pages: {:?}",
        st.store
    );

    // The emptied engine is still an ordinary engine.
    engine.run("refill", |tx| tx.put(b"again", b"1")).unwrap();
    assert_eq!(
        engine.snapshot().get(b"again").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn model_4k_seed_1() {
    run_model(Cfg {
        page_size: 4096,
        seed: 1,
        target_keys: 20_000,
        max_batch: 64,
        max_value: true,
    });
}

#[test]
fn model_4k_seed_2() {
    run_model(Cfg {
        page_size: 4096,
        seed: 2,
        target_keys: 8_000,
        max_batch: 24,
        max_value: false,
    });
}

#[test]
fn model_4k_seed_3() {
    run_model(Cfg {
        page_size: 4096,
        seed: 3,
        target_keys: 8_000,
        max_batch: 96,
        max_value: false,
    });
}

#[test]
fn model_16k() {
    run_model(Cfg {
        page_size: 16384,
        seed: 16,
        target_keys: 12_000,
        max_batch: 64,
        max_value: true,
    });
}

#[test]
fn model_64k() {
    run_model(Cfg {
        page_size: 65536,
        seed: 64,
        target_keys: 10_000,
        max_batch: 64,
        max_value: true,
    });
}

/// Largest value the default options accept: exactly 16 MiB, put alone and read
/// back through get, both scan directions, and a snapshot; one byte more is refused.
#[test]
fn max_value_round_trips() {
    let engine = Engine::in_memory().unwrap();
    let mut rng = Rng::new(16);
    let big = rng.bytes(MAX_VALUE);
    engine
        .run("big", |tx| {
            tx.put(b"a", b"before")?;
            tx.put(b"big", &big)?;
            tx.put(b"c", b"after")
        })
        .unwrap();
    let snap = engine.snapshot();
    assert_value("get", snap.get(b"big").unwrap().as_deref(), Some(&big));
    let mut model = Model::new();
    model.insert(b"a".to_vec(), b"before".to_vec());
    model.insert(b"big".to_vec(), big.clone());
    model.insert(b"c".to_vec(), b"after".to_vec());
    assert_snapshot_is("16 MiB value", &snap, &model);
    let len = engine
        .run("len", |tx| Ok(tx.get(b"big")?.map(|v| v.len())))
        .unwrap();
    assert_eq!(len, Some(MAX_VALUE));
    let r = engine.run("too big", |tx| tx.put(b"bigger", &vec![0u8; MAX_VALUE + 1]));
    assert!(
        matches!(r, Err(shardstone::Error::ValueTooLarge { len, max }) if len == MAX_VALUE + 1 && max == MAX_VALUE),
        "{r:?}"
    );
    // Overwrite it with a small value; the snapshot keeps the big one.
    engine.run("shrink", |tx| tx.put(b"big", b"small")).unwrap();
    assert_value(
        "old snapshot after overwrite",
        snap.get(b"big").unwrap().as_deref(),
        Some(&big),
    );
    assert_eq!(
        engine.snapshot().get(b"big").unwrap().as_deref(),
        Some(&b"small"[..])
    );
    drop(snap);
    engine.collect_garbage();
    let st = engine.stats().store;
    assert_eq!(st.pinned_versions, 0, "{st:?}");
    assert!(
        st.page_buffers <= st.pages + 2,
        "the 16 MiB overflow chain was freed: {st:?}"
    );
}

fn collect_tx(it: shardstone::TxRange<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|r| r.map(|(k, v)| (k, v.into_vec())).expect("tx range"))
        .collect()
}

fn collect_tx_rev(it: shardstone::TxRange<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = it
        .rev()
        .map(|r| r.map(|(k, v)| (k, v.into_vec())).expect("tx range"))
        .collect();
    v.reverse();
    v
}

fn kv(pairs: &[(&str, &str)]) -> Model {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Read-your-own-writes in one command, spelled out: gets and range scans (both
/// directions, all bound kinds, mixed walks) merge buffered puts, overwrites and
/// deletes with the snapshot; an abort leaves nothing behind, a commit everything.
#[test]
fn tx_reads_its_own_writes() {
    let engine = Engine::in_memory().unwrap();
    let base = kv(&[
        ("b", "old-b"),
        ("d", "old-d"),
        ("f", "old-f"),
        ("h", "old-h"),
        ("j", "old-j"),
        ("l", "old-l"),
        ("n", "old-n"),
    ]);
    engine
        .run("seed", |tx| {
            for (k, v) in &base {
                tx.put(k, v)?;
            }
            Ok(())
        })
        .unwrap();
    let expected = kv(&[
        ("a", "new-a"),
        ("d", "new-d"),
        ("h", "again-h"),
        ("j", "old-j"),
        ("l", "old-l"),
        ("m", "new-m"),
        ("n", "old-n"),
    ]);

    let body = |tx: &mut shardstone::Tx<'_>| -> shardstone::Result<()> {
        tx.put(b"a", b"new-a")?;
        tx.put(b"d", b"new-d")?;
        assert!(tx.delete(b"f")?, "f existed in the snapshot");
        assert!(!tx.delete(b"f")?, "f is already deleted by this command");
        tx.put(b"g", b"new-g")?;
        assert!(tx.delete(b"h")?);
        assert_eq!(tx.get(b"h")?, None, "own delete is visible");
        tx.put(b"h", b"again-h")?;
        assert!(!tx.delete(b"z")?, "z never existed");
        assert!(tx.delete(b"g")?, "g exists through this command's own put");
        tx.put(b"m", b"new-m")?;
        assert!(tx.delete(b"b")?);

        for (k, want) in [
            ("a", Some("new-a")),
            ("b", None),
            ("d", Some("new-d")),
            ("f", None),
            ("g", None),
            ("h", Some("again-h")),
            ("j", Some("old-j")),
            ("m", Some("new-m")),
            ("z", None),
        ] {
            let got = tx.get(k.as_bytes())?;
            assert_eq!(
                got.as_deref(),
                want.map(str::as_bytes),
                "get {k} inside the command"
            );
        }

        let all = model_entries(&expected);
        assert_entries("tx full scan", &collect_tx(tx.range(..)), &all);
        assert_entries("tx full scan reversed", &collect_tx_rev(tx.range(..)), &all);
        let bounds: Vec<Bounds<'_>> = vec![
            (Bound::Included(b"c"), Bound::Excluded(b"k")),
            (Bound::Included(b"d"), Bound::Included(b"l")),
            (Bound::Excluded(b"d"), Bound::Excluded(b"n")),
            (Bound::Excluded(b"a"), Bound::Unbounded),
            (Bound::Unbounded, Bound::Included(b"h")),
            (Bound::Unbounded, Bound::Excluded(b"h")),
            (Bound::Included(b"f"), Bound::Included(b"g")),
            (Bound::Included(b"h"), Bound::Included(b"h")),
            (Bound::Included(b"h"), Bound::Excluded(b"h")),
            (Bound::Excluded(b"h"), Bound::Excluded(b"h")),
            (Bound::Included(b"m"), Bound::Included(b"b")),
            (Bound::Included(b"zz"), Bound::Unbounded),
        ];
        for (lo, hi) in bounds {
            let want: Vec<(Vec<u8>, Vec<u8>)> = model_range(&expected, lo, hi)
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_entries(
                &format!("tx range {lo:?}..{hi:?}"),
                &collect_tx(tx.range((lo, hi))),
                &want,
            );
            assert_entries(
                &format!("tx range {lo:?}..{hi:?} reversed"),
                &collect_tx_rev(tx.range((lo, hi))),
                &want,
            );
            for s in 0..8 {
                compare_walk(
                    &format!("tx range {lo:?}..{hi:?} mixed {s}"),
                    tx.range((lo, hi)),
                    &expected,
                    lo,
                    hi,
                    Walk::Mixed(s),
                    20,
                );
            }
        }
        Ok(())
    };

    let body_abort = body;
    let r: shardstone::Result<()> = engine.run("rollback", |tx| {
        body_abort(tx)?;
        Err(shardstone::Error::abort("changed my mind"))
    });
    assert!(
        matches!(&r, Err(shardstone::Error::Abort(m)) if m == "changed my mind"),
        "{r:?}"
    );
    assert_snapshot_is("after the aborted command", &engine.snapshot(), &base);

    let mut body_commit = body;
    engine.run("commit", &mut body_commit).unwrap();
    assert_snapshot_is("after the committed command", &engine.snapshot(), &expected);
}

/// Read-your-own-writes over many pages: a command rewrites, deletes and inserts
/// all over a tree of a few hundred leaves, then scans it whole in both directions
/// and in mixed walks; what it sees, and what commits, match the model.
#[test]
fn tx_scans_merge_writes_across_pages() {
    let engine = Engine::in_memory().unwrap();
    let mut rng = Rng::new(77);
    let mut model = Model::new();
    for i in 0..6000u32 {
        let len = rng.below(120) as usize;
        model.insert(format!("key{:06}", i * 2).into_bytes(), rng.bytes(len));
    }
    engine
        .run("seed", |tx| {
            for (k, v) in &model {
                tx.put(k, v)?;
            }
            Ok(())
        })
        .unwrap();
    assert!(
        engine.stats().store.pages > 50,
        "{:?}",
        engine.stats().store
    );
    let before = model.clone();
    let snap = engine.snapshot();

    engine
        .run("rewrite", |tx| {
            let mut m = before.clone();
            let mut rng = Rng::new(78);
            for i in 0..12_000u32 {
                let k = format!("key{i:06}").into_bytes();
                match rng.below(4) {
                    0 => {
                        let len = rng.below(300) as usize;
                        let v = rng.bytes(len);
                        tx.put(&k, &v)?;
                        m.insert(k, v);
                    }
                    1 => {
                        assert_eq!(
                            tx.delete(&k)?,
                            m.remove(&k).is_some(),
                            "delete {}",
                            show(&k)
                        );
                    }
                    _ => {}
                }
            }
            assert_entries(
                "tx full scan over many pages",
                &collect_tx(tx.range(..)),
                &model_entries(&m),
            );
            assert_entries(
                "tx reverse scan over many pages",
                &collect_tx_rev(tx.range(..)),
                &model_entries(&m),
            );
            for s in 0..20u64 {
                let a = format!("key{:06}", rng.below(12_000)).into_bytes();
                let b = format!("key{:06}", rng.below(12_000)).into_bytes();
                let (lo, hi) = (Bound::Included(a.as_slice()), Bound::Included(b.as_slice()));
                compare_walk(
                    &format!("mixed walk {s}"),
                    tx.range((lo, hi)),
                    &m,
                    lo,
                    hi,
                    Walk::Mixed(s),
                    400,
                );
                compare_walk(
                    &format!("reverse walk {s}"),
                    tx.range((lo, hi)),
                    &m,
                    lo,
                    hi,
                    Walk::Reverse,
                    400,
                );
            }
            model = m;
            Ok(())
        })
        .unwrap();
    assert_snapshot_is("after the big rewrite", &engine.snapshot(), &model);
    assert_snapshot_is("snapshot from before the rewrite", &snap, &before);
}
