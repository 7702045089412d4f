//! Loom model of publication in `Durable` mode (`src/store/clock.rs` with
//! `src/journal/group.rs`): two commits on two journal shards, with a simulated
//! disk per shard. A commit becomes visible only once its shard's sync covers its
//! record, whichever order the syncs complete in, and a commit whose predecessor's
//! thread stops after installing still becomes visible: it runs the
//! predecessor's shard sync itself.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use shardstone::{ClockModel, Group};

/// A shard: its group commit and its simulated disk (`written`: what appenders
/// wrote to the page cache; `durable`: what a completed sync covered).
struct Shard {
    group: Group<()>,
    written: AtomicU64,
    durable: AtomicU64,
}

struct World {
    clock: ClockModel,
    shards: [Shard; 2],
    /// The commit id appended to each shard (0: none yet).
    id_on: [AtomicU64; 2],
}

impl World {
    fn new() -> Arc<World> {
        let shard = || Shard {
            group: Group::new(()),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        };
        Arc::new(World {
            clock: ClockModel::default(),
            shards: [shard(), shard()],
            id_on: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The clock's durability condition: the shard's group `synced` watermark.
    fn durable(&self, shard: usize, id: u64) -> bool {
        self.shards[shard].group.synced() >= id
    }

    /// Takes a commit id and appends its record to `shard`, under the group lock
    /// (as `Shard::append` does), then marks it installed.
    fn commit(&self, shard: usize) -> u64 {
        let id = {
            let mut g = self.shards[shard].group.lock();
            let id = self.clock.assign();
            g.appended = id;
            self.shards[shard].written.store(id, Ordering::SeqCst);
            id
        };
        self.id_on[shard].store(id, Ordering::SeqCst);
        self.clock
            .publish_on(id, Some(shard), &|s, i| self.durable(s, i))
            .unwrap();
        id
    }

    /// The shard's group commit, with the simulated sync.
    fn sync(&self, shard: usize, id: u64) -> Result<(), String> {
        let s = &self.shards[shard];
        s.group
            .wait_durable(
                id,
                |_| (),
                |()| {
                    // The sync covers what was written when it started...
                    let covered = s.written.load(Ordering::SeqCst);
                    // ...and completes some time later.
                    thread::yield_now();
                    s.durable.fetch_max(covered, Ordering::SeqCst);
                    Ok::<(), String>(())
                },
            )
            .map_err(|e| format!("{e:?}"))
    }

    /// Waits for the commit's own durability, then for its visibility (helping).
    fn finish(&self, shard: usize, id: u64) {
        self.sync(shard, id).unwrap();
        self.clock.advance(&|s, i| self.durable(s, i));
        self.wait_visible(id);
    }

    fn wait_visible(&self, id: u64) {
        assert!(self
            .clock
            .wait_visible_helping(id, &|s, i| self.durable(s, i), |next, shard| self
                .sync(shard, next)));
    }

    /// No visible commit is missing from its shard's disk.
    fn check(&self) {
        let visible = self.clock.visible();
        for shard in 0..2 {
            let id = self.id_on[shard].load(Ordering::SeqCst);
            if id != 0 && id <= visible {
                assert!(
                    self.shards[shard].durable.load(Ordering::SeqCst) >= id,
                    "commit {id} is visible before its record was synced"
                );
            }
        }
    }
}

/// Runs `f` as a loom model and prints how many interleavings it explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    loom::model(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    eprintln!("{name}: {} interleavings", runs.load(Ordering::Relaxed));
}

/// Two commits on two shards, each syncing its own shard, in either order: a
/// snapshot never sees one before its record is synced, and both end visible.
#[test]
fn visible_only_once_synced_in_either_order() {
    model("visible_only_once_synced_in_either_order", || {
        let world = World::new();
        let t = {
            let world = world.clone();
            thread::spawn(move || {
                let id = world.commit(0);
                world.finish(0, id);
                world.check();
            })
        };
        let id = world.commit(1);
        world.check();
        world.finish(1, id);
        world.check();
        t.join().unwrap();
        assert_eq!(world.clock.visible(), 2);
        world.check();
    });
}

/// The thread of one commit stops right after installing (descheduled for
/// good): the other commit still becomes visible, whether or not the stopped one
/// is its predecessor, without waiting for that thread — it syncs the stopped
/// commit's shard itself — and never before the records are synced.
#[test]
fn a_stalled_predecessor_does_not_hold_back_its_successor() {
    model(
        "a_stalled_predecessor_does_not_hold_back_its_successor",
        || {
            let world = World::new();
            let t = {
                let world = world.clone();
                thread::spawn(move || {
                    world.commit(0);
                    world.check();
                })
            };
            let id = world.commit(1);
            world.finish(1, id);
            world.check();
            t.join().unwrap();
            // Made visible by this thread alone once the stopped commit installed.
            let other = world.id_on[0].load(Ordering::SeqCst);
            world.wait_visible(other.max(id));
            assert_eq!(world.clock.visible(), 2);
            world.check();
        },
    );
}
