//! NUMA placement through the public API.
//!
//! This machine has one node, so multi-socket placement is checked on made-up
//! topologies with a `RecordingBinder` (which records what would be bound and
//! pinned); on the real node the bindings are read back from the kernel with
//! `get_mempolicy` and `sched_getaffinity`. With `--features hwloc`, the same
//! two-socket placement is checked on hwloc's `HWLOC_SYNTHETIC` machine.

mod common;

use common::TempDir;
use shardstone::numa::{
    memory_policy, node_of_address, thread_affinity, Binding, MemPolicy, Node, Numa, OsBinder,
    PagePlacement, Placement, RecordingBinder, Topology, TopologySource,
};
use shardstone::{Affinity, Durability, Engine, Error, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn custom(topology: Topology, binder: &Arc<RecordingBinder>) -> Options {
    Options {
        numa: Numa::Custom {
            topology,
            binder: binder.clone(),
        },
        durability: Durability::Buffered,
        segment_size: 1 << 20,
        ..Options::default()
    }
}

/// An in-memory engine with `n` workers.
fn with_workers(n: usize) -> Engine {
    Engine::in_memory_with(Options {
        workers: n,
        ..Options::default()
    })
    .unwrap()
}

/// Starts the engine's workers: the first submit does, once all are pinned.
fn start_workers(engine: &Engine) {
    engine
        .submit("start", |_tx| Ok(()))
        .unwrap()
        .wait()
        .unwrap();
}

fn put(engine: &Engine, key: &str) {
    engine
        .run("put", |tx| tx.put(key.as_bytes(), b"value"))
        .unwrap();
}

/// Memory bindings recorded, by address.
fn memory_bindings(binder: &RecordingBinder) -> BTreeMap<usize, (usize, MemPolicy)> {
    binder
        .requests()
        .into_iter()
        .filter_map(|b| match b {
            Binding::Memory { addr, len, policy } => Some((addr, (len, policy))),
            Binding::Thread { .. } => None,
        })
        .collect()
}

/// Checks a placement on a two-socket × 8-core × 2-thread machine: 32 shards each
/// bound to its CPU's node, 32 workers on distinct CPUs, one arena per node.
fn check_two_socket_placement(topology: Topology) {
    assert_eq!(
        (
            topology.nodes().len(),
            topology.core_count(),
            topology.cpu_count()
        ),
        (2, 16, 32)
    );
    let dir = TempDir::new("numa-two-socket");
    let binder = Arc::new(RecordingBinder::new());
    let engine = Engine::open_with(dir.path(), custom(topology.clone(), &binder)).unwrap();
    for i in 0..200 {
        put(&engine, &format!("key{i:05}"));
    }
    let p = engine.placement();
    assert!(p.bound);
    assert_eq!(p.shards.len(), 32);
    let bound = memory_bindings(&binder);
    for s in &p.shards {
        assert_eq!(topology.node_of_cpu(s.cpu), Some(s.node), "{s:?}");
        // The shard's state was bound to its node before it was written.
        assert_eq!(
            bound.get(&s.memory).map(|(_, p)| p),
            Some(&MemPolicy::Preferred(s.node)),
            "shard {} state",
            s.shard
        );
        if let Some((addr, len)) = s.segment {
            assert_eq!(
                bound.get(&addr),
                Some(&(len, MemPolicy::Preferred(s.node))),
                "shard {} segment",
                s.shard
            );
        }
    }
    assert!(
        p.shards.iter().any(|s| s.segment.is_some()),
        "a shard wrote"
    );
    let per_node = p.shards.iter().filter(|s| s.node == 1).count();
    assert_eq!(per_node, 16);

    assert_eq!(p.arenas.len(), 2);
    for (i, a) in p.arenas.iter().enumerate() {
        assert_eq!(a.node, Some(i));
        assert_eq!(a.policy, Some(MemPolicy::Preferred(i)));
        for &(addr, len) in &a.mappings {
            assert_eq!(bound.get(&addr), Some(&(len, MemPolicy::Preferred(i))));
        }
    }
    assert!(!p.arenas[0].mappings.is_empty(), "pages were allocated");

    // Workers start on the first submit, one per CPU, each pinned to its own.
    assert!(!p.workers_started);
    start_workers(&engine);
    let p = engine.placement();
    assert!(p.workers_started);
    assert_eq!(p.workers.len(), 32);
    let deadline = Instant::now() + Duration::from_secs(30);
    let pinned = loop {
        let pinned: BTreeMap<String, usize> = binder
            .requests()
            .into_iter()
            .filter_map(|b| match b {
                Binding::Thread { cpu, thread } => Some((thread.unwrap_or_default(), cpu)),
                Binding::Memory { .. } => None,
            })
            .collect();
        if pinned.len() == 32 || Instant::now() > deadline {
            break pinned;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(pinned.len(), 32, "{pinned:?}");
    for w in &p.workers {
        assert_eq!(
            pinned.get(&format!("shardstone-w{}", w.worker)),
            Some(&w.cpu)
        );
        assert_eq!(topology.node_of_cpu(w.cpu), Some(w.node));
    }
    let cpus: BTreeSet<usize> = p.workers.iter().map(|w| w.cpu).collect();
    assert_eq!(cpus.len(), 32, "workers on distinct CPUs");
    assert_eq!(p.bind_failures, 0);
    engine.close().unwrap();
}

#[test]
fn a_synthetic_two_socket_machine_gets_node_local_shards_workers_and_arenas() {
    check_two_socket_placement(Topology::synthetic(2, 8, 2));
}

#[test]
fn interleaved_pages_come_from_one_arena_spread_over_every_node() {
    let binder = Arc::new(RecordingBinder::new());
    let opts = Options {
        page_placement: PagePlacement::Interleave,
        ..custom(Topology::synthetic(2, 4, 1), &binder)
    };
    let engine = Engine::in_memory_with(opts).unwrap();
    for i in 0..100 {
        put(&engine, &format!("key{i:05}"));
    }
    let p = engine.placement();
    assert!(
        p.shards.is_empty(),
        "an in-memory engine has no journal shards"
    );
    assert_eq!(p.arenas.len(), 1);
    let interleave = MemPolicy::Interleave(vec![0, 1]);
    assert_eq!(p.arenas[0].policy, Some(interleave.clone()));
    let bound = memory_bindings(&binder);
    assert!(!p.arenas[0].mappings.is_empty());
    for &(addr, len) in &p.arenas[0].mappings {
        assert_eq!(bound.get(&addr), Some(&(len, interleave.clone())));
    }
}

#[test]
fn numa_off_binds_and_pins_nothing() {
    let engine = Engine::in_memory_with(Options {
        numa: Numa::Off,
        ..Options::default()
    })
    .unwrap();
    put(&engine, "k");
    engine.submit("w", |_tx| Ok(())).unwrap().wait().unwrap();
    let p = engine.placement();
    assert!(!p.bound);
    assert_eq!(p.arenas.len(), 1);
    assert_eq!(p.arenas[0].policy, None);
    assert_eq!(p.topology.nodes().len(), 1);
    assert!(p.workers_started);
}

/// On the real machine: what was bound is read back from the kernel.
#[test]
fn on_the_real_node_memory_is_bound_and_workers_are_pinned() {
    let dir = TempDir::new("numa-real");
    let engine = Engine::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            segment_size: 1 << 20,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..500 {
        put(&engine, &format!("key{i:05}"));
    }
    start_workers(&engine);
    let p = engine.placement();
    assert!(matches!(
        p.topology.source(),
        TopologySource::Sysfs | TopologySource::Hwloc | TopologySource::Fallback
    ));
    assert_eq!(p.shards.len(), p.topology.cpu_count());
    if p.bind_failures > 0 {
        // A seccomp profile may forbid mbind (EPERM): the engine works unbound,
        // and says so. Nothing more can be checked here then.
        let why = p.last_bind_error.clone().unwrap_or_default();
        assert!(
            why.contains("not permitted"),
            "unexpected binding failure: {why}"
        );
        eprintln!("binding refused on this machine, checks skipped: {why}");
        return;
    }
    for s in &p.shards {
        let want = Some(MemPolicy::Preferred(s.node));
        assert_eq!(
            memory_policy(s.memory as *const u8).unwrap(),
            want,
            "shard state"
        );
        assert_eq!(node_of_address(s.memory as *const u8).unwrap(), s.node);
        if let Some((addr, _)) = s.segment {
            assert_eq!(memory_policy(addr as *const u8).unwrap(), want, "segment");
        }
    }
    for a in &p.arenas {
        for &(addr, _) in &a.mappings {
            assert_eq!(memory_policy(addr as *const u8).unwrap(), a.policy);
        }
    }
    // Each worker reports its own affinity (sched_getaffinity): one command per
    // worker, sent to its node, all held at a barrier so that no worker takes two.
    let barrier = Arc::new(Barrier::new(p.workers.len()));
    let reports: Vec<_> = p
        .workers
        .iter()
        .map(|w| {
            let barrier = barrier.clone();
            engine
                .submit_to("where", Affinity::Node(w.node), move |_tx| {
                    barrier.wait();
                    let name = std::thread::current().name().unwrap_or_default().to_owned();
                    Ok((name, thread_affinity().unwrap()))
                })
                .unwrap()
        })
        .collect();
    let mut seen = BTreeSet::new();
    for r in reports {
        let (name, affinity) = r.wait().unwrap();
        let worker: usize = name.strip_prefix("shardstone-w").unwrap().parse().unwrap();
        assert_eq!(affinity, BTreeSet::from([p.workers[worker].cpu]), "{name}");
        seen.insert(worker);
    }
    assert_eq!(seen.len(), p.workers.len());
    // The test thread itself was not pinned.
    assert!(!thread_affinity().unwrap().is_empty());
    assert_eq!(engine.stats().journal.remote_appends, 0);
    engine.close().unwrap();
}

/// A machine described as CPU 0 on node 0 and CPU 1 on node 1 (this machine has
/// two CPUs): a command routed to a node runs there, allocates its pages from
/// that node's arena, and a key routes to the node its page lives on.
#[test]
fn commands_follow_their_affinity_and_keys_route_to_their_pages_node() {
    let node = |id, cpus: &[usize]| Node {
        id,
        cpus: cpus.to_vec(),
        cores: cpus.len(),
        memory_bytes: None,
    };
    let topology = Topology::from_nodes(vec![node(0, &[0]), node(1, &[1])]).unwrap();
    let binder = Arc::new(RecordingBinder::new());
    let engine = Engine::in_memory_with(custom(topology, &binder)).unwrap();
    let p: Placement = engine.placement();
    let node_of_worker = |name: &str| -> usize {
        let w: usize = name.strip_prefix("shardstone-w").unwrap().parse().unwrap();
        p.workers[w].node
    };
    let where_ran = |affinity: Affinity, key: &'static [u8]| -> usize {
        let name = engine
            .submit_to("put", affinity, move |tx| {
                tx.put(key, b"v")?;
                Ok(std::thread::current().name().unwrap_or_default().to_owned())
            })
            .unwrap()
            .wait()
            .unwrap();
        node_of_worker(&name)
    };
    for _ in 0..5 {
        assert_eq!(where_ran(Affinity::Node(1), b"tenant-b"), 1);
        assert_eq!(
            where_ran(Affinity::Key(b"tenant-b".to_vec()), b"tenant-b"),
            1
        );
        assert_eq!(where_ran(Affinity::Node(0), b"tenant-a"), 0);
        // One leaf holds both keys; its newest version is now node 0's.
        assert_eq!(
            where_ran(Affinity::Key(b"tenant-b".to_vec()), b"tenant-b"),
            0
        );
    }
    assert!(matches!(
        engine.submit_to("x", Affinity::Node(7), |_tx| Ok(())),
        Err(Error::UnknownNode { node: 7, .. })
    ));
    assert!(matches!(
        engine.submit_to("x", Affinity::Key(vec![0; 5000]), |_tx| Ok(())),
        Err(Error::KeyTooLarge { .. })
    ));
}

/// A thread pinned to a CPU appends only to its own node's shard.
#[test]
fn a_pinned_committer_never_appends_to_a_remote_shard() {
    let allowed = thread_affinity().unwrap();
    if !(allowed.contains(&0) && allowed.contains(&1)) {
        eprintln!("needs CPUs 0 and 1; this process may run on {allowed:?}");
        return;
    }
    let node = |id, cpus: &[usize]| Node {
        id,
        cpus: cpus.to_vec(),
        cores: 1,
        memory_bytes: None,
    };
    let topology = Topology::from_nodes(vec![node(0, &[0]), node(1, &[1])]).unwrap();
    let binder = Arc::new(RecordingBinder::new());
    let dir = TempDir::new("numa-remote");
    let engine = Engine::open_with(dir.path(), custom(topology, &binder)).unwrap();
    std::thread::scope(|s| {
        for cpu in [0, 1] {
            let engine = &engine;
            s.spawn(move || {
                use shardstone::numa::Binder;
                OsBinder.pin_thread(cpu).unwrap();
                for i in 0..300 {
                    put(engine, &format!("c{cpu}-{i:04}"));
                }
            });
        }
    });
    let stats = engine.stats();
    assert_eq!(stats.commits, 600);
    assert_eq!(stats.journal.remote_appends, 0);
    let p = engine.placement();
    assert!(
        p.shards.iter().all(|s| s.segment.is_some()),
        "both shards used"
    );
}

#[test]
fn submitted_commands_return_values_errors_and_panics() {
    let engine = with_workers(2);
    let n = engine
        .submit("count", |tx| {
            tx.put(b"n", b"1")?;
            Ok(1)
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(n, 1);
    let aborted = engine
        .submit("refuse", |_tx| -> shardstone::Result<()> {
            Err(Error::abort("no"))
        })
        .unwrap()
        .wait();
    assert!(matches!(aborted, Err(Error::Abort(r)) if r == "no"));
    let panicked = engine
        .submit("boom", |tx| -> shardstone::Result<()> {
            tx.put(b"half", b"done")?;
            panic!("the command's own bug")
        })
        .unwrap()
        .wait();
    assert!(
        matches!(&panicked, Err(Error::Panicked { command, message }) if command == "boom" && message.contains("own bug")),
        "{panicked:?}"
    );
    // Rolled back, and the workers carry on.
    assert_eq!(engine.snapshot().get(b"half").unwrap(), None);
    for _ in 0..4 {
        engine
            .submit("again", |_tx| Ok(()))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(engine.placement().workers.len(), 2);
}

#[test]
fn a_handle_waits_with_a_timeout_and_dropping_the_engine_runs_queued_commands() {
    let engine = with_workers(1);
    let gate = Arc::new(Barrier::new(2));
    let held = {
        let gate = gate.clone();
        engine
            .submit("held", move |_tx| {
                gate.wait();
                Ok(())
            })
            .unwrap()
    };
    let held = held.wait_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(!held.is_finished());
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..50)
        .map(|i| {
            let ran = ran.clone();
            let key = format!("q{i:03}");
            engine
                .submit("queued", move |tx| {
                    tx.put(key.as_bytes(), b"x")?;
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    gate.wait();
    held.wait().unwrap();
    drop(engine);
    assert_eq!(ran.load(Ordering::SeqCst), 50);
    for q in queued {
        q.wait().unwrap();
    }
}

/// The last owner of the engine can be a command on a worker: dropping it there
/// must neither make the worker wait for itself nor close the journal under the
/// commands still running or queued. Every one of them is in the files after.
#[test]
fn an_engine_dropped_by_its_own_worker_closes_after_its_commands() {
    let dir = TempDir::new("numa-own-worker");
    let opts = || Options {
        workers: 1,
        durability: Durability::Buffered,
        ..Options::default()
    };
    let engine = Arc::new(Engine::open_with(dir.path(), opts()).unwrap());
    let weak = Arc::downgrade(&engine);
    let gate = Arc::new(Barrier::new(2));
    let mut owner = Some(engine.clone());
    let first = {
        let gate = gate.clone();
        engine
            .submit("owner", move |tx| {
                gate.wait();
                tx.put(b"first", b"1")?;
                // The last reference goes while this command is still running.
                drop(owner.take());
                Ok(())
            })
            .unwrap()
    };
    let second = engine
        .submit("queued", |tx| tx.put(b"second", b"2"))
        .unwrap();
    drop(engine);
    gate.wait();
    first.wait().unwrap();
    second.wait().unwrap();
    assert!(weak.upgrade().is_none());
    // The journal closes on another thread once the worker is done: reopen as
    // soon as the directory lock is free.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reopened = loop {
        match Engine::open_with(dir.path(), opts()) {
            Ok(e) => break e,
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let snap = reopened.snapshot();
    assert_eq!(snap.get(b"first").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get(b"second").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn close_from_a_command_on_its_own_worker_is_refused() {
    let engine = Arc::new(with_workers(1));
    let gate = Arc::new(Barrier::new(2));
    let mut owner = Some(engine.clone());
    let closed = {
        let gate = gate.clone();
        engine
            .submit("closer", move |_tx| {
                gate.wait(); // the test has dropped its reference
                let engine = Arc::try_unwrap(owner.take().expect("runs once"))
                    .expect("the command holds the only reference");
                Ok(engine.close())
            })
            .unwrap()
    };
    drop(engine);
    gate.wait();
    let closed = closed.wait().unwrap();
    assert!(matches!(closed, Err(Error::Unsupported(_))), "{closed:?}");
}

/// Run by `hwloc_synthetic_two_socket_machine` in a child process with
/// `HWLOC_SYNTHETIC` set; does nothing otherwise.
#[cfg(feature = "hwloc")]
#[test]
fn hwloc_child() {
    if std::env::var_os("SHARDSTONE_HWLOC_CHILD").is_none() {
        return;
    }
    let topology = Topology::from_hwloc().unwrap();
    assert_eq!(topology.source(), TopologySource::Hwloc);
    println!(
        "hwloc child: nodes={} cores={} pus={}",
        topology.nodes().len(),
        topology.core_count(),
        topology.cpu_count()
    );
    check_two_socket_placement(topology);
    println!("hwloc child: placement checked");
}

#[cfg(feature = "hwloc")]
#[test]
fn hwloc_synthetic_two_socket_machine() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hwloc_child", "--nocapture", "--test-threads=1"])
        .env("HWLOC_SYNTHETIC", "pack:2 numa:1 core:8 pu:2")
        .env("SHARDSTONE_HWLOC_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // A bad HWLOC_SYNTHETIC string falls back to the real machine: the counts
    // below would then be this machine's.
    assert!(
        text.contains("hwloc child: nodes=2 cores=16 pus=32"),
        "{text}"
    );
    assert!(text.contains("hwloc child: placement checked"), "{text}");
    assert!(out.status.success(), "{text}");
}

/// Issue 20.6: a topology restricted to an affinity mask plans shards and workers
/// only on the mask's CPUs, and only those are pinned.
#[test]
fn a_topology_restricted_to_a_mask_places_and_pins_only_inside_it() {
    let mask = BTreeSet::from([3, 5, 12, 30]);
    let topology = Topology::synthetic(2, 8, 2).restricted_to(&mask);
    assert_eq!(
        topology.cpus().map(|(_, c)| c).collect::<BTreeSet<_>>(),
        mask
    );
    // Both nodes keep CPUs (5 on node 0; 12 and 30 on node 1).
    assert!(topology.nodes().iter().all(|n| !n.cpus.is_empty()));
    let binder = Arc::new(RecordingBinder::new());
    let engine = Engine::in_memory_with(Options {
        workers: 0,
        ..custom(topology.clone(), &binder)
    })
    .unwrap();
    start_workers(&engine);
    let p = engine.placement();
    assert_eq!(p.workers.len(), mask.len());
    for w in &p.workers {
        assert!(mask.contains(&w.cpu), "{w:?} outside {mask:?}");
        assert_eq!(topology.node_of_cpu(w.cpu), Some(w.node));
    }
    for s in &p.shards {
        assert!(mask.contains(&s.cpu), "{s:?} outside {mask:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let pinned = loop {
        let pinned: Vec<usize> = binder
            .requests()
            .into_iter()
            .filter_map(|b| match b {
                Binding::Thread { cpu, .. } => Some(cpu),
                Binding::Memory { .. } => None,
            })
            .collect();
        if pinned.len() == mask.len() || Instant::now() > deadline {
            break pinned;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(pinned.iter().copied().collect::<BTreeSet<_>>(), mask);
}

/// Run by `workers_stay_inside_the_process_affinity_mask` in a child process
/// whose affinity mask the parent narrowed before `exec` (as `taskset -c` does);
/// does nothing otherwise.
#[test]
fn affinity_child() {
    let Ok(list) = std::env::var("SHARDSTONE_AFFINITY_CHILD") else {
        return;
    };
    let mask: BTreeSet<usize> = list.split(',').map(|c| c.parse().unwrap()).collect();
    let allowed = Topology::process_cpus();
    assert!(
        !allowed.is_empty() && allowed.is_subset(&mask),
        "{allowed:?} not in {mask:?}"
    );
    let topology = Topology::discover();
    let planned: BTreeSet<usize> = topology.cpus().map(|(_, c)| c).collect();
    assert_eq!(planned, allowed, "the discovered topology's CPUs");
    let engine = Engine::in_memory_with(Options {
        numa: Numa::Auto,
        ..Options::default()
    })
    .unwrap();
    start_workers(&engine);
    let p = engine.placement();
    assert_eq!(p.topology, topology);
    assert_eq!(p.workers.len(), allowed.len());
    for w in &p.workers {
        assert!(allowed.contains(&w.cpu), "worker {w:?} outside {allowed:?}");
    }
    for s in &p.shards {
        assert!(allowed.contains(&s.cpu), "shard {s:?} outside {allowed:?}");
    }
    // Where the workers really run: each command reads its thread's mask.
    let handles: Vec<_> = (0..32)
        .map(|_| {
            engine
                .submit("where", |_tx| Ok(thread_affinity().unwrap()))
                .unwrap()
        })
        .collect();
    for h in handles {
        let on = h.wait().unwrap();
        assert!(on.is_subset(&allowed), "a worker may run on {on:?}");
    }
    if let Some(e) = &p.last_bind_error {
        assert!(!e.contains("pin"), "{e}");
    }
    println!(
        "affinity child: {} workers pinned inside {allowed:?}",
        p.workers.len()
    );
}

/// Issue 20.6: under a narrowed affinity mask (`taskset -c N`, systemd
/// `CPUAffinity=`), discovery, placement and pinning stay inside the mask.
#[test]
fn workers_stay_inside_the_process_affinity_mask() {
    use std::os::unix::process::CommandExt;
    // The highest CPU this process may use: CPU 0, where workers used to land,
    // is then outside the mask whenever the machine has two CPUs or more.
    let cpu = *Topology::process_cpus()
        .iter()
        .chain(thread_affinity().unwrap().iter())
        .max()
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "affinity_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHARDSTONE_AFFINITY_CHILD", cpu.to_string());
    // SAFETY: between fork and exec the closure only fills a cpu_set_t and
    // makes one system call, both async-signal-safe.
    unsafe {
        child.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "affinity child: 1 workers pinned inside {{{cpu}}}"
        )),
        "{text}"
    );
    assert!(out.status.success(), "{text}");
}
