//! Loom model of group commit (`src/journal/group.rs`), with a simulated disk:
//! a committer is acknowledged only after a sync that covers its record.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use shardstone::Group;

/// The simulated disk: `written` is what appenders have written (to the page
/// cache); a sync makes durable everything written before it started.
struct Disk {
    written: AtomicU64,
    durable: AtomicU64,
}

/// Appends the next record to the group, as a shard does under its lock.
fn append(group: &Group<()>, disk: &Disk) -> u64 {
    let mut g = group.lock();
    g.appended += 1;
    disk.written.store(g.appended, Ordering::SeqCst);
    g.appended
}

fn wait(group: &Group<()>, disk: &Disk, id: u64) {
    group
        .wait_durable(
            id,
            |_| (),
            |()| {
                // The sync covers what was written when it started...
                let covered = disk.written.load(Ordering::SeqCst);
                // ...and completes some time later.
                thread::yield_now();
                disk.durable.fetch_max(covered, Ordering::SeqCst);
                Ok::<(), String>(())
            },
        )
        .unwrap();
    assert!(
        disk.durable.load(Ordering::SeqCst) >= id,
        "commit {id} was acknowledged before a sync covered it"
    );
}

/// Two committers append and wait; a third appends while a sync may be running.
/// Each is acknowledged only after a sync that covers its record.
#[test]
fn acknowledged_only_after_a_covering_sync() {
    loom::model(|| {
        let group = Arc::new(Group::new(()));
        let disk = Arc::new(Disk {
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        });
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (group, disk) = (group.clone(), disk.clone());
                thread::spawn(move || {
                    let id = append(&group, &disk);
                    wait(&group, &disk, id);
                })
            })
            .collect();
        let id = append(&group, &disk);
        wait(&group, &disk, id);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(disk.durable.load(Ordering::SeqCst), 3);
    });
}

/// After a failed sync nothing more is acknowledged, not even a commit whose
/// record a later sync would cover.
#[test]
fn nothing_is_acknowledged_after_a_failed_sync() {
    loom::model(|| {
        let group = Arc::new(Group::new(()));
        let syncs = Arc::new(AtomicU64::new(0));
        let t = {
            let (group, syncs) = (group.clone(), syncs.clone());
            thread::spawn(move || {
                let id = {
                    let mut g = group.lock();
                    g.appended += 1;
                    g.appended
                };
                group.wait_durable(
                    id,
                    |_| (),
                    |()| match syncs.fetch_add(1, Ordering::SeqCst) {
                        0 => Err("EIO".to_owned()),
                        _ => Ok(()),
                    },
                )
            })
        };
        let id = {
            let mut g = group.lock();
            g.appended += 1;
            g.appended
        };
        let mine = group.wait_durable(
            id,
            |_| (),
            |()| match syncs.fetch_add(1, Ordering::SeqCst) {
                0 => Err("EIO".to_owned()),
                _ => Ok(()),
            },
        );
        let theirs = t.join().unwrap();
        // The first sync fails; whoever waited on it, or came after it, fails too.
        assert!(mine.is_err() && theirs.is_err(), "{mine:?} {theirs:?}");
        assert_eq!(syncs.load(Ordering::SeqCst), 1, "no sync after the failure");
    });
}
