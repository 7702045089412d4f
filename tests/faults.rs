//! Fault injection: the journal and checkpoints do their file operations through
//! the `Io` trait, and a [`FaultyIo`] fails the Nth write (`allocate`,
//! `write_at`), fsync (`sync`, `sync_dir`) or rename with `EIO` or `ENOSPC`. The
//! tests loop N over every such operation of a scenario and check, each time:
//!
//! - (a) the failure reaches the caller: some call (open, run, checkpoint or
//!   close) returns `Error::Io` carrying the injected errno, and nothing returns
//!   an error of another kind (`Corrupt` in particular);
//! - (b) after a commit's fdatasync failed (`Error::Io { op: "fdatasync" }`) or a
//!   run returned `Error::Halted`, every later write is refused with `Halted`,
//!   even once the disk works again, and so is a clean close; snapshots and
//!   read-only commands still work, and the commit that met the failure never
//!   becomes visible (PostgreSQL's "fsyncgate": a failed fsync may have dropped
//!   dirty pages, so nothing after it may be acknowledged);
//! - (c) reopening, with the same faulty I/O mid-scenario and with the operating
//!   system's I/O at the end, yields every acknowledged commit with its value. A
//!   commit that failed may be there only if its record reached the journal
//!   (its fdatasync failed); one that failed before (no room for its segment)
//!   must not be, and the reopened engine accepts new commits;
//!
//! and in every run, a failed `run` leaves the visible commit id where it was and
//! a successful one advances it by exactly one: no failure burns a commit id.

mod common;

use common::{panic_text, par_map, scan, Rng, TempDir};
use shardstone::{Durability, Engine, Error, FaultKind, FaultyIo, Io, Options, OsIo};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const EIO: i32 = libc::EIO;
const ENOSPC: i32 = libc::ENOSPC;

fn opts(journal_shards: usize) -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// Command `i` puts `key(i)` = `value(i)`: one key per command, so the state
/// after a reopen says exactly which commands survived.
fn key(i: usize) -> Vec<u8> {
    format!("k{i:05}").into_bytes()
}

fn index_of(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key.strip_prefix(b"k")?)
        .ok()?
        .parse()
        .ok()
}

/// One value in four is about 2 KB, so that segments fill and roll.
fn value(i: usize) -> Vec<u8> {
    let mut rng = Rng::new(i as u64);
    if i.is_multiple_of(4) {
        rng.bytes_between(1900, 2200)
    } else {
        rng.bytes_between(8, 120)
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        EIO => "EIO",
        ENOSPC => "ENOSPC",
        _ => "errno",
    }
}

fn is_halting(e: &Error) -> bool {
    matches!(
        e,
        Error::Halted { .. }
            | Error::Io {
                op: "fdatasync",
                ..
            }
    )
}

// ---------------------------------------------------------------------------
// The single-threaded scenario.

/// One step of the scenario.
#[derive(Clone, Debug)]
enum Step {
    Open,
    Run(Range<usize>),
    Checkpoint,
    Close,
}

/// Open, commands, a checkpoint, more commands, a clean close; then a reopen
/// through the same faulty I/O (recovery's own I/O counts too), more commands, a
/// second checkpoint, a few commands after it and a clean close. About 45 of
/// the 210 values are 2 KB, so a 64 KiB segment rolls a few times.
fn script() -> Vec<Step> {
    vec![
        Step::Open,
        Step::Run(0..70),
        Step::Checkpoint,
        Step::Run(70..130),
        Step::Close,
        Step::Open,
        Step::Run(130..200),
        Step::Checkpoint,
        Step::Run(200..210),
        Step::Close,
    ]
}

/// What a scenario saw.
#[derive(Default)]
struct Record {
    /// Commands whose `run` returned Ok.
    acked: BTreeSet<usize>,
    /// Commands whose fdatasync failed: their record is in the journal and may
    /// or may not survive a reopen.
    in_doubt: BTreeSet<usize>,
    /// Every error returned, after the step that returned it.
    errors: Vec<(String, Error)>,
    /// Broken promises, described.
    violations: Vec<String>,
}

impl Record {
    fn error(&mut self, step: impl Into<String>, e: Error) {
        self.errors.push((step.into(), e));
    }
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }
}

/// After the engine halted: reads still work, and the commit that met the
/// failure (`failed`) is not visible.
fn check_reads_after_halt(engine: &Engine, rec: &mut Record, failed: usize) {
    let snap = engine.snapshot();
    if let Some(&i) = rec.acked.last() {
        match snap.get(&key(i)) {
            Ok(Some(v)) if v.as_ref() == value(i).as_slice() => {}
            other => rec.violation(format!(
                "after the halt, a snapshot read of acknowledged command {i} gave {:?}",
                other.map(|v| v.map(|v| v.len()))
            )),
        }
        let read = engine.run("read", |tx| Ok(tx.get(&key(i))?.map(|v| v.to_vec())));
        if !matches!(&read, Ok(Some(v)) if *v == value(i)) {
            rec.violation(format!(
                "after the halt, a read-only command gave {:?}",
                read.map(|v| v.map(|v| v.len()))
            ));
        }
    }
    match snap.get(&key(failed)) {
        Ok(None) => {}
        other => rec.violation(format!(
            "the command whose fdatasync failed ({failed}) is visible: {:?}",
            other.map(|v| v.map(|v| v.len()))
        )),
    }
}

/// Checks that every acknowledged command is in `engine`, and that nothing else
/// is, except commands in doubt; with their values.
fn check_state(engine: &Engine, rec: &Record, when: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let state: BTreeMap<Vec<u8>, Vec<u8>> = scan(&engine.snapshot()).into_iter().collect();
    for &i in &rec.acked {
        match state.get(&key(i)) {
            Some(v) if *v == value(i) => {}
            Some(v) => bad.push(format!(
                "{when}: acknowledged command {i} has a value of {} bytes, expected {}",
                v.len(),
                value(i).len()
            )),
            None => bad.push(format!("{when}: acknowledged command {i} is missing")),
        }
    }
    for (k, v) in &state {
        match index_of(k) {
            Some(i) if rec.acked.contains(&i) => {}
            Some(i) if rec.in_doubt.contains(&i) => {
                if *v != value(i) {
                    bad.push(format!("{when}: command {i} (in doubt) has a wrong value"));
                }
            }
            Some(i) => bad.push(format!(
                "{when}: command {i} failed before its record was written, yet it is there"
            )),
            None => bad.push(format!(
                "{when}: unexpected key {}",
                String::from_utf8_lossy(k)
            )),
        }
    }
    bad
}

/// Runs the scenario in `dir` through `io`. With `cpus`, command `i` runs pinned
/// to `cpus[i % cpus.len()]` (and the other steps on `cpus[0]`), so that which
/// journal shard each commit appends to, and so the sequence of file
/// operations, is the same in every run; call it on a thread of its own then.
fn run_scenario(dir: &Path, shards: usize, io: Arc<dyn Io>, cpus: &[usize]) -> Record {
    let mut rec = Record::default();
    let mut engine: Option<Engine> = None;
    let mut halted = false;
    let mut opened = 0;
    for step in script() {
        if let (Some(&cpu), false) = (cpus.first(), matches!(step, Step::Run(_))) {
            pin(cpu);
        }
        match step {
            Step::Open => match Engine::open_with_io(dir, opts(shards), io.clone()) {
                Ok(e) => {
                    if opened > 0 {
                        // (c) mid-scenario: the reopen through the faulty I/O.
                        for v in check_state(&e, &rec, "reopen through the faulty I/O") {
                            rec.violation(v);
                        }
                    }
                    opened += 1;
                    halted = false;
                    engine = Some(e);
                }
                Err(e) => {
                    rec.error("open", e);
                    return rec;
                }
            },
            Step::Run(range) => {
                let e = engine.as_ref().expect("open");
                for i in range {
                    if !cpus.is_empty() {
                        pin(cpus[i % cpus.len()]);
                    }
                    let before = e.commit_id().get();
                    let r = e.run("put", |tx| tx.put(&key(i), &value(i)));
                    let after = e.commit_id().get();
                    match r {
                        Ok(()) => {
                            if halted {
                                rec.violation(format!(
                                    "command {i} was acknowledged after the engine halted"
                                ));
                            }
                            if after != before + 1 {
                                rec.violation(format!(
                                    "command {i} succeeded, but the commit id went from {before} to {after}"
                                ));
                            }
                            rec.acked.insert(i);
                        }
                        Err(err) => {
                            if after != before {
                                rec.violation(format!(
                                    "command {i} failed ({err}), but the commit id went from {before} to {after}"
                                ));
                            }
                            if halted && !matches!(err, Error::Halted { .. }) {
                                rec.violation(format!(
                                    "command {i} after the halt failed with {err}, not Halted"
                                ));
                            }
                            if matches!(
                                err,
                                Error::Io {
                                    op: "fdatasync",
                                    ..
                                }
                            ) {
                                rec.in_doubt.insert(i);
                            }
                            if is_halting(&err) && !halted {
                                halted = true;
                                check_reads_after_halt(e, &mut rec, i);
                            }
                            rec.error(format!("run {i}"), err);
                        }
                    }
                }
            }
            Step::Checkpoint => {
                let e = engine.as_ref().expect("open");
                if let Err(err) = e.checkpoint() {
                    rec.error("checkpoint", err);
                }
            }
            Step::Close => {
                let e = engine.take().expect("open");
                match e.close() {
                    Ok(()) if halted => {
                        rec.violation("close() succeeded on a halted engine".to_owned())
                    }
                    Ok(()) => {}
                    Err(err) => rec.error("close", err),
                }
            }
        }
    }
    rec
}

/// Checks (a) and (c) once a scenario is over; returns the broken promises.
fn verify(dir: &Path, mut rec: Record, io: &FaultyIo, errno: i32) -> Vec<String> {
    let mut bad = std::mem::take(&mut rec.violations);
    // (a): every failure reaches a caller, as the error that was injected.
    let injected = rec.errors.iter().any(
        |(_, e)| matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(errno)),
    );
    if io.failures() > 0 && !injected {
        bad.push(format!(
            "{} operations failed, but no call returned the injected error (errors: {:?})",
            io.failures(),
            rec.errors
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect::<Vec<_>>()
        ));
    }
    if io.failures() == 0 && !rec.errors.is_empty() {
        bad.push(format!(
            "nothing failed, yet {}: {}",
            rec.errors[0].0, rec.errors[0].1
        ));
    }
    for (step, e) in &rec.errors {
        let expected = match e {
            Error::Io { source, .. } => source.raw_os_error() == Some(errno),
            Error::Halted { .. } => true,
            _ => false,
        };
        if !expected {
            bad.push(format!("{step} returned an unexpected error: {e}"));
        }
    }
    // (c): a reopen with the OS's I/O yields every acknowledged commit.
    match Engine::open_with(dir, opts(1)) {
        Ok(engine) => {
            bad.extend(check_state(&engine, &rec, "final reopen"));
            match engine.run("after", |tx| tx.put(b"after", b"reopen")) {
                Ok(()) => {}
                Err(e) => bad.push(format!("the reopened engine refused a commit: {e}")),
            }
            if let Err(e) = engine.close() {
                bad.push(format!("the reopened engine failed to close: {e}"));
            }
        }
        Err(e) => bad.push(format!("the final reopen failed: {e}")),
    }
    bad
}

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: FaultKind,
    fail_at: u64,
    errno: i32,
    sticky: bool,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} op {} fails with {}{}",
            self.kind,
            self.fail_at,
            errno_name(self.errno),
            if self.sticky { " (sticky)" } else { "" }
        )
    }
}

/// Which failing operations a run reported (`Error::Io`'s `op`), for the
/// coverage check of the matrix.
fn reported_ops(rec: &Record) -> BTreeSet<&'static str> {
    rec.errors
        .iter()
        .filter_map(|(_, e)| match e {
            Error::Io { op, .. } => Some(*op),
            _ => None,
        })
        .collect()
}

/// What one case reported: its broken promises, each prefixed with the case, and
/// the failing operations it reported (`Error::Io`'s `op`).
type CaseResult = (Vec<String>, BTreeSet<&'static str>);

/// Runs one case of the scenario and verifies it (on a thread of its own when
/// `cpus` pins it, so that the pinning ends with it).
fn run_case(case: &Case, shards: usize, cpus: &[usize]) -> CaseResult {
    let dir = TempDir::new("scenario");
    let io = Arc::new(FaultyIo::new(
        case.kind,
        case.fail_at,
        case.errno,
        case.sticky,
    ));
    let result = on_own_thread(!cpus.is_empty(), || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rec = run_scenario(dir.path(), shards, io.clone(), cpus);
            let ops = reported_ops(&rec);
            (verify(dir.path(), rec, &io, case.errno), ops)
        }))
    });
    match result {
        Ok((bad, ops)) => (
            bad.into_iter().map(|b| format!("{case}: {b}")).collect(),
            ops,
        ),
        Err(p) => (
            vec![format!("{case}: panicked: {}", panic_text(p))],
            BTreeSet::new(),
        ),
    }
}

/// Runs `cases`, asserts that none broke a promise, and returns what each
/// reported, in case order.
fn run_cases(what: &str, cases: &[Case], shards: usize, cpus: &[usize]) -> Vec<CaseResult> {
    let results = par_map(cases, 2, |c| run_case(c, shards, cpus));
    let bad: Vec<String> = results.iter().flat_map(|(b, _)| b.clone()).collect();
    assert_no_violations(what, &bad, cases.len());
    results
}

/// Every failing operation the cases reported, together.
fn all_reported(results: &[CaseResult]) -> BTreeSet<&'static str> {
    results
        .iter()
        .flat_map(|(_, o)| o.iter().copied())
        .collect()
}

/// The file operations a clean run of the scenario does, in order, by `Io`
/// method name (`create`, `create_dir`, `allocate`, `write_at`, `sync`,
/// `sync_dir`, `rename`, `truncate`, `remove`).
fn clean_run_ops(shards: usize, cpus: &[usize]) -> Vec<&'static str> {
    /// The OS's I/O, logging each operation's name.
    #[derive(Default)]
    struct LoggedIo(Mutex<Vec<&'static str>>);
    impl LoggedIo {
        fn log(&self, op: &'static str) {
            self.0.lock().unwrap().push(op);
        }
    }
    impl Io for LoggedIo {
        fn create(&self, path: &Path) -> std::io::Result<std::fs::File> {
            self.log("create");
            OsIo.create(path)
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            self.log("create_dir");
            OsIo.create_dir(path)
        }
        fn allocate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
            self.log("allocate");
            OsIo.allocate(file, len)
        }
        fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.log("write_at");
            OsIo.write_at(file, buf, offset)
        }
        fn sync(&self, file: &std::fs::File) -> std::io::Result<()> {
            self.log("sync");
            OsIo.sync(file)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.log("sync_dir");
            OsIo.sync_dir(dir)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.log("rename");
            OsIo.rename(from, to)
        }
        fn truncate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
            self.log("truncate");
            OsIo.truncate(file, len)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.log("remove");
            OsIo.remove(path)
        }
    }
    let dir = TempDir::new("log");
    let io = Arc::new(LoggedIo::default());
    let rec = on_own_thread(!cpus.is_empty(), || {
        run_scenario(dir.path(), shards, io.clone(), cpus)
    });
    assert_clean(&rec);
    let ops = io.0.lock().unwrap().clone();
    ops
}

/// How many operations of `kind` the scenario does when nothing fails.
fn count_ops(kind: FaultKind, shards: usize, cpus: &[usize]) -> u64 {
    let dir = TempDir::new("count");
    let io = Arc::new(FaultyIo::new(kind, u64::MAX, EIO, false));
    let rec = on_own_thread(!cpus.is_empty(), || {
        run_scenario(dir.path(), shards, io.clone(), cpus)
    });
    assert_clean(&rec);
    io.ops()
}

/// A run where nothing failed: no error, no broken promise, every command acknowledged.
fn assert_clean(rec: &Record) {
    let errors: Vec<String> = rec
        .errors
        .iter()
        .map(|(s, e)| format!("{s}: {e}"))
        .collect();
    assert!(errors.is_empty(), "a clean run failed: {errors:?}");
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    assert_eq!(rec.acked.len(), 210);
}

/// Runs `f` on a thread of its own when `own` (a thread whose CPU affinity `f`
/// may change), else here.
fn on_own_thread<R: Send>(own: bool, f: impl FnOnce() -> R + Send) -> R {
    if !own {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Two CPUs this thread may run on, the first and the last of its affinity
/// mask: with two journal shards they select two different shards on the
/// machines we test on (a one-node machine gives the first half of its CPUs to
/// shard 0 and the second half to shard 1), and the same shards in every run.
/// One CPU when only one is allowed.
fn two_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and its size is passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    let r = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    assert_eq!(r, 0, "sched_getaffinity");
    // SAFETY: `cpu` is below CPU_SETSIZE, `set` is initialized.
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let mut cpus = vec![allowed[0]];
    if allowed.len() > 1 {
        cpus.push(allowed[allowed.len() - 1]);
    }
    cpus
}

/// Moves the calling thread onto `cpu`, and so onto that CPU's journal shard.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; `cpu` < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    let r = unsafe { libc::sched_setaffinity(0, size, &set) };
    assert_eq!(r, 0, "sched_setaffinity to CPU {cpu}");
}

#[track_caller]
fn assert_no_violations(what: &str, bad: &[String], cases: usize) {
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(30).map(String::as_str).collect();
        panic!(
            "{what}: {} broken promises over {cases} cases, the first {}:\n  {}",
            bad.len(),
            shown.len(),
            shown.join("\n  ")
        );
    }
}

/// The main loop: every write, fsync and rename of the scenario fails once, with
/// EIO and with ENOSPC; and a sample of them fail for good (sticky: the disk
/// stays broken, so recovery through the faulty I/O fails too).
#[test]
fn every_failed_write_fsync_or_rename_is_reported_and_loses_no_acknowledged_commit() {
    let started = Instant::now();
    let mut cases = Vec::new();
    let mut counts = Vec::new();
    for kind in [FaultKind::Write, FaultKind::Sync, FaultKind::Rename] {
        let ops = count_ops(kind, 1, &[]);
        counts.push((kind, ops));
        assert!(ops > 0, "the scenario does no {kind:?} operation");
        for errno in [EIO, ENOSPC] {
            for fail_at in 0..ops {
                cases.push(Case {
                    kind,
                    fail_at,
                    errno,
                    sticky: false,
                });
            }
        }
        // Sticky: every op for short lists, a stride through long ones.
        let stride = (ops / 40).max(1);
        for fail_at in (0..ops).step_by(stride as usize) {
            cases.push(Case {
                kind,
                fail_at,
                errno: EIO,
                sticky: true,
            });
        }
    }
    // One past the last operation: nothing fails, nothing may be reported.
    for &(kind, ops) in &counts {
        cases.push(Case {
            kind,
            fail_at: ops,
            errno: EIO,
            sticky: true,
        });
    }
    let reported = all_reported(&run_cases("fault matrix", &cases, 1, &[]));
    eprintln!(
        "fault matrix: operations per kind {counts:?}, {} cases in {:?}, failing operations reported: {reported:?}",
        cases.len(),
        started.elapsed()
    );
    // The loop reached every kind of step that can fail: the journal's segment
    // rolls and group commit, the clean close, recovery (its syncs of the
    // segments it keeps are "fdatasync" too), checkpoints and the manifest.
    for op in [
        "allocate",
        "fdatasync",
        "fsync directory",
        "trim segment",
        "write",
        "fsync",
        "rename",
    ] {
        assert!(
            reported.contains(op),
            "no case failed a {op:?}: {reported:?}"
        );
    }
}

/// The same scenario with every operation counted (`FaultKind::Any`: creates,
/// truncates and removes too), sampled, with two journal shards.
///
/// The schedule is fixed: commands are pinned to two CPUs in turn, so each
/// commit's shard, and with it the sequence of file operations, is the same in
/// every run (checked: two clean runs log the same sequence). The cases are a
/// stride through that sequence plus every `create`, `truncate` and `remove` in
/// it, the operations only `Any` fails; each such case must report its failure
/// under that operation's name. (It used to assert which operations a stride
/// through an unpinned run happened to hit, which depended on the CPUs the
/// scheduler picked, and failed about half the time.)
#[test]
fn any_failed_file_operation_is_reported_and_loses_no_acknowledged_commit() {
    let cpus = two_cpus();
    let log = clean_run_ops(2, &cpus);
    assert_eq!(
        log,
        clean_run_ops(2, &cpus),
        "two clean runs pinned the same way did different file operations: \
         the schedule of cases would not be deterministic"
    );
    let ops = log.len() as u64;
    assert_eq!(
        count_ops(FaultKind::Any, 2, &cpus),
        ops,
        "FaultKind::Any counts every logged operation, so case N fails the Nth of the log"
    );
    for op in ["create", "create_dir", "truncate", "remove"] {
        assert!(log.contains(&op), "the scenario does no {op:?}: {log:?}");
    }
    let stride = (ops / 60).max(1);
    let mut at: BTreeSet<u64> = (0..ops).step_by(stride as usize).collect();
    at.extend((0..ops).filter(|&i| {
        matches!(
            log[i as usize],
            "create" | "create_dir" | "truncate" | "remove"
        )
    }));
    let cases: Vec<Case> = at
        .iter()
        .map(|&fail_at| Case {
            kind: FaultKind::Any,
            fail_at,
            errno: if fail_at % 2 == 0 { EIO } else { ENOSPC },
            sticky: fail_at % 3 == 0,
        })
        .collect();
    let results = run_cases("FaultKind::Any", &cases, 2, &cpus);
    let mut bad = Vec::new();
    for (case, (_, reported)) in cases.iter().zip(&results) {
        let names: &[&str] = match log[case.fail_at as usize] {
            "create" => &["create"],
            "create_dir" => &["create directory"],
            "remove" => &["remove"],
            "truncate" => &["truncate", "trim segment"],
            _ => continue,
        };
        if !names.iter().any(|n| reported.contains(n)) {
            bad.push(format!(
                "{case} (a {}): reported {reported:?}, none of {names:?}",
                log[case.fail_at as usize]
            ));
        }
    }
    assert_no_violations("FaultKind::Any, operation names", &bad, cases.len());
    eprintln!(
        "FaultKind::Any: {ops} operations pinned to CPUs {cpus:?}, {} cases, failing operations reported: {:?}",
        cases.len(),
        all_reported(&results)
    );
}

// ---------------------------------------------------------------------------
// Concurrent commits.

/// Two threads commit on two shards while the Nth fsync fails: the commit that
/// met it and every commit after it fail, on both threads, and a reopen holds
/// every acknowledged commit.
#[test]
fn a_failed_fsync_under_concurrent_commits_halts_every_thread() {
    const THREADS: usize = 2;
    const PER_THREAD: usize = 100;
    let command = |t: usize, j: usize| t * 10_000 + j;
    let scenario = |io: &Arc<FaultyIo>, dir: &Path| -> Record {
        let mut rec = Record::default();
        let engine = match Engine::open_with_io(dir, opts(2), io.clone()) {
            Ok(e) => e,
            Err(e) => {
                rec.error("open", e);
                return rec;
            }
        };
        let halted_seen = AtomicBool::new(false);
        let shared = Mutex::new(std::mem::take(&mut rec));
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (engine, halted_seen, shared) = (&engine, &halted_seen, &shared);
                s.spawn(move || {
                    for j in 0..PER_THREAD {
                        let i = command(t, j);
                        let halted_before = halted_seen.load(Ordering::SeqCst);
                        let r = engine.run("put", |tx| tx.put(&key(i), &value(i)));
                        let mut rec = shared.lock().unwrap();
                        match r {
                            Ok(()) if halted_before => rec.violation(format!(
                                "command {i} started after a halt was reported, and was acknowledged"
                            )),
                            Ok(()) => {
                                rec.acked.insert(i);
                            }
                            Err(e) => {
                                if is_halting(&e) {
                                    halted_seen.store(true, Ordering::SeqCst);
                                }
                                // With commits in flight on the other thread, a
                                // commit may also fail with Halted after its
                                // record was written: both are in doubt.
                                if is_halting(&e) {
                                    rec.in_doubt.insert(i);
                                }
                                rec.error(format!("run {i}"), e);
                            }
                        }
                    }
                });
            }
        });
        let mut rec = shared.into_inner().unwrap();
        if halted_seen.load(Ordering::SeqCst) {
            // Every write is refused from now on; reads work.
            match engine.run("more", |tx| tx.put(b"k99999", b"x")) {
                Err(Error::Halted { .. }) => {}
                other => rec.violation(format!("a write after the halt gave {other:?}")),
            }
            let snap = engine.snapshot();
            let acked: Vec<usize> = rec.acked.iter().take(3).copied().collect();
            for i in acked {
                if snap.get(&key(i)).ok().flatten().as_deref() != Some(value(i).as_slice()) {
                    rec.violation(format!("after the halt, acknowledged {i} cannot be read"));
                }
            }
            let in_doubt: Vec<usize> = rec.in_doubt.iter().copied().collect();
            for i in in_doubt {
                if !matches!(snap.get(&key(i)), Ok(None)) {
                    rec.violation(format!("failed command {i} is visible after the halt"));
                }
            }
            match engine.close() {
                Err(Error::Halted { .. }) => {}
                other => rec.violation(format!("close() of a halted engine gave {other:?}")),
            }
        } else if let Err(e) = engine.close() {
            rec.error("close", e);
        }
        rec
    };

    let ops = {
        let dir = TempDir::new("concurrent-count");
        let io = Arc::new(FaultyIo::new(FaultKind::Sync, u64::MAX, EIO, false));
        let rec = scenario(&io, dir.path());
        assert!(rec.errors.is_empty() && rec.violations.is_empty());
        assert_eq!(rec.acked.len(), THREADS * PER_THREAD);
        io.ops()
    };
    // Group commit makes the count vary from run to run: sample its range.
    let stride = (ops / 24).max(1);
    let cases: Vec<Case> = (0..ops)
        .step_by(stride as usize)
        .map(|fail_at| Case {
            kind: FaultKind::Sync,
            fail_at,
            errno: if fail_at % 2 == 0 { EIO } else { ENOSPC },
            sticky: fail_at % 3 == 1,
        })
        .collect();
    let mut halts = 0;
    let mut bad = Vec::new();
    for case in &cases {
        let dir = TempDir::new("concurrent");
        let io = Arc::new(FaultyIo::new(
            case.kind,
            case.fail_at,
            case.errno,
            case.sticky,
        ));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rec = scenario(&io, dir.path());
            let halted = rec.errors.iter().any(|(_, e)| is_halting(e));
            (verify(dir.path(), rec, &io, case.errno), halted)
        }));
        match result {
            Ok((b, halted)) => {
                halts += usize::from(halted);
                bad.extend(b.into_iter().map(|b| format!("{case}: {b}")));
            }
            Err(p) => bad.push(format!("{case}: panicked: {}", panic_text(p))),
        }
    }
    assert_no_violations("concurrent fsync failures", &bad, cases.len());
    // Most failing fsyncs are group commits' fdatasyncs (the rest: directories).
    assert!(
        halts * 2 > cases.len(),
        "only {halts} of {} cases halted",
        cases.len()
    );
}

// ---------------------------------------------------------------------------
// Explicit cases.

/// The fsyncgate case on its own: commit 4's fdatasync fails once, with the
/// disk fine afterwards. The engine must not retry and carry on (the failed
/// fsync may have dropped the dirty pages, and a retry would report success):
/// it refuses every later write until it is reopened.
#[test]
fn a_failed_fdatasync_halts_the_engine_until_it_is_reopened() {
    let put = |e: &Engine, i: usize| e.run("put", |tx| tx.put(&key(i), &value(i)));
    // Count the fsyncs of an open and three commits, to fail the next one.
    let fail_at = {
        let dir = TempDir::new("fsyncgate-count");
        let io = Arc::new(FaultyIo::new(FaultKind::Sync, u64::MAX, EIO, false));
        let engine = Engine::open_with_io(dir.path(), opts(1), io.clone()).unwrap();
        for i in 0..3 {
            put(&engine, i).unwrap();
        }
        io.ops()
    };
    let dir = TempDir::new("fsyncgate");
    let io = Arc::new(FaultyIo::new(FaultKind::Sync, fail_at, EIO, false));
    let engine = Engine::open_with_io(dir.path(), opts(1), io.clone()).unwrap();
    for i in 0..3 {
        put(&engine, i).unwrap();
    }
    match put(&engine, 3) {
        Err(Error::Io { op, source, .. }) => {
            assert_eq!(op, "fdatasync");
            assert_eq!(source.raw_os_error(), Some(EIO));
        }
        other => panic!("expected the fdatasync failure, got {other:?}"),
    }
    assert_eq!(io.failures(), 1);
    assert_eq!(
        engine.commit_id().get(),
        3,
        "the failed commit is not visible"
    );
    for i in 4..8 {
        match put(&engine, i) {
            Err(Error::Halted { cause }) => {
                assert!(cause.contains("fdatasync"), "{cause}")
            }
            other => panic!("command {i} after the failed fsync: {other:?}"),
        }
    }
    assert_eq!(
        io.failures(),
        1,
        "the disk works again: nothing else failed"
    );
    // Reads still work; the failed commit is invisible.
    let snap = engine.snapshot();
    assert_eq!(snap.get(&key(2)).unwrap().as_deref(), Some(&value(2)[..]));
    assert_eq!(snap.get(&key(3)).unwrap(), None);
    let read = engine
        .run("read", |tx| Ok(tx.get(&key(0))?.map(|v| v.to_vec())))
        .unwrap();
    assert_eq!(read, Some(value(0)));
    // No clean close either: that would vouch for the journal.
    assert!(matches!(engine.close(), Err(Error::Halted { .. })));

    let engine = Engine::open_with(dir.path(), opts(1)).unwrap();
    let state: BTreeMap<_, _> = scan(&engine.snapshot()).into_iter().collect();
    for i in 0..3 {
        assert_eq!(state.get(&key(i)), Some(&value(i)), "acknowledged {i}");
    }
    // Command 3's record is in the journal (this FaultyIo dropped nothing), so
    // it may come back; nothing after it may.
    assert!(state.len() == 3 || (state.len() == 4 && state.get(&key(3)) == Some(&value(3))));
    let last = engine.commit_id().get();
    put(&engine, 100).unwrap();
    assert_eq!(engine.commit_id().get(), last + 1);
    engine.close().unwrap();
}

/// A segment roll that cannot reserve its space fails only the commit that
/// needed it: `Error::Io { op: "allocate" }`, no commit id taken, no halt; the
/// next commit succeeds with the next id, and a reopen has exactly the
/// acknowledged commits.
#[test]
fn a_failed_allocate_fails_only_the_commit_that_needed_the_segment() {
    for sticky in [false, true] {
        for errno in [ENOSPC, EIO] {
            let what = format!(
                "{}{}",
                errno_name(errno),
                if sticky { " sticky" } else { "" }
            );
            // The first write after open (which writes the manifest) is the
            // first segment's allocate: the very first commit fails.
            let first_allocate = {
                let dir = TempDir::new("allocate-count");
                let io = Arc::new(FaultyIo::new(FaultKind::Write, u64::MAX, errno, false));
                let engine = Engine::open_with_io(dir.path(), opts(1), io.clone()).unwrap();
                let after_open = io.ops();
                drop(engine);
                after_open
            };
            let dir = TempDir::new("allocate-first");
            let io = Arc::new(FaultyIo::new(
                FaultKind::Write,
                first_allocate,
                errno,
                sticky,
            ));
            let engine = Engine::open_with_io(dir.path(), opts(1), io.clone()).unwrap();
            match engine.run("put", |tx| tx.put(&key(0), &value(0))) {
                Err(Error::Io { op, source, .. }) => {
                    assert_eq!(
                        (op, source.raw_os_error()),
                        ("allocate", Some(errno)),
                        "{what}"
                    )
                }
                other => panic!("{what}: expected the allocate failure, got {other:?}"),
            }
            assert_eq!(engine.commit_id().get(), 0, "{what}: no id taken");
            let second = engine.run("put", |tx| tx.put(&key(1), &value(1)));
            if sticky {
                assert!(
                    matches!(&second, Err(Error::Io { op: "allocate", .. })),
                    "{what}: {second:?}"
                );
                assert_eq!(engine.commit_id().get(), 0);
            } else {
                second.unwrap();
                assert_eq!(engine.commit_id().get(), 1, "{what}: ids have no gap");
            }
            if sticky {
                // The disk still refuses writes: the close's manifest cannot be
                // written, and the close says so.
                assert!(matches!(engine.close(), Err(Error::Io { .. })), "{what}");
            } else {
                engine.close().unwrap();
            }
            let engine = Engine::open_with(dir.path(), opts(1)).unwrap();
            let state = scan(&engine.snapshot());
            if sticky {
                assert!(state.is_empty(), "{what}");
            } else {
                assert_eq!(state, vec![(key(1), value(1))], "{what}");
            }
            drop(engine);

            // The next write is the second segment's allocate: fill the first
            // with 2 KB values.
            let dir = TempDir::new("allocate-roll");
            let io = Arc::new(FaultyIo::new(
                FaultKind::Write,
                first_allocate + 1,
                errno,
                sticky,
            ));
            let engine = Engine::open_with_io(dir.path(), opts(1), io.clone()).unwrap();
            let big = |i: usize| Rng::new(i as u64).bytes(2000);
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            for i in 0..80 {
                let before = engine.commit_id().get();
                match engine.run("put", |tx| tx.put(&key(i), &big(i))) {
                    Ok(()) => {
                        assert_eq!(engine.commit_id().get(), before + 1, "{what}: command {i}");
                        acked.push(i);
                    }
                    Err(Error::Io {
                        op: "allocate",
                        source,
                        ..
                    }) => {
                        assert_eq!(source.raw_os_error(), Some(errno), "{what}");
                        assert_eq!(engine.commit_id().get(), before, "{what}: no id taken");
                        failed.push(i);
                    }
                    Err(e) => panic!("{what}: command {i}: unexpected {e}"),
                }
            }
            // 64 KiB holds about 30 such commits: the roll came, and failed.
            assert!(
                !failed.is_empty() && acked.len() >= 25,
                "{what}: {failed:?}"
            );
            if sticky {
                // Nothing rolls any more; the commits that fit went through.
                assert_eq!(acked.len() + failed.len(), 80);
                assert!(acked.iter().all(|&i| i < failed[0]), "{what}");
            } else {
                // One commit failed; the next rolled and succeeded.
                assert_eq!(failed.len(), 1, "{what}: {failed:?}");
                assert!(acked.contains(&(failed[0] + 1)), "{what}");
            }
            assert!(io.failures() as usize >= failed.len());
            if sticky {
                assert!(matches!(engine.close(), Err(Error::Io { .. })), "{what}");
            } else {
                engine.close().unwrap();
            }
            let engine = Engine::open_with(dir.path(), opts(1)).unwrap();
            let want: Vec<_> = acked.iter().map(|&i| (key(i), big(i))).collect();
            assert_eq!(scan(&engine.snapshot()), want, "{what}");
            assert_eq!(engine.commit_id().get(), acked.len() as u64, "{what}");
            engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
            engine.close().unwrap();
        }
    }
}

/// A checkpoint whose write, fsync or rename fails returns the error, leaves no
/// temporary file behind and leaves the previous checkpoint usable: every one
/// of its operations is failed in turn (the roll that retires the current
/// segments first, the checkpoint file's writes, fsync, rename and directory
/// fsync, and with `FaultKind::Any` the removal of what it replaces), and a
/// reopen yields everything.
#[test]
fn a_failed_checkpoint_leaves_the_previous_one_usable() {
    // Open, 100 commands, checkpoint 1, 60 commands, checkpoint 2 (the one that
    // fails), 20 commands, close. One shard: the ops are the same every run.
    let scenario = |io: Arc<FaultyIo>, dir: &Path| -> (Result<u64, Error>, Vec<usize>, u64, u64) {
        let engine = Engine::open_with_io(dir, opts(1), io.clone()).unwrap();
        let mut acked = Vec::new();
        let mut put = |e: &Engine, i: usize| match e.run("put", |tx| tx.put(&key(i), &value(i))) {
            Ok(()) => acked.push(i),
            // A checkpoint failure need not halt the engine; if it does, it
            // must say so.
            Err(Error::Halted { .. }) => {}
            Err(err) => panic!("command {i}: {err}"),
        };
        for i in 0..100 {
            put(&engine, i);
        }
        let first = engine.checkpoint().unwrap().get();
        for i in 100..160 {
            put(&engine, i);
        }
        let from = io.ops();
        let second = engine.checkpoint().map(|c| c.get());
        let to = io.ops();
        for i in 160..180 {
            put(&engine, i);
        }
        let _ = engine.close();
        assert_eq!(first, 100);
        (second, acked, from, to)
    };
    for kind in [
        FaultKind::Write,
        FaultKind::Sync,
        FaultKind::Rename,
        FaultKind::Any,
    ] {
        // Which ops of this kind belong to the second checkpoint.
        let (from, to) = {
            let dir = TempDir::new("ckpt-count");
            let io = Arc::new(FaultyIo::new(kind, u64::MAX, EIO, false));
            let (second, acked, from, to) = scenario(io, dir.path());
            assert_eq!((second.unwrap(), acked.len()), (160, 180));
            (from, to)
        };
        assert!(to > from, "{kind:?}: the checkpoint does no such operation");
        for fail_at in from..to {
            for errno in [EIO, ENOSPC] {
                let what = format!("{kind:?} op {fail_at} fails with {}", errno_name(errno));
                let dir = TempDir::new("ckpt");
                let io = Arc::new(FaultyIo::new(kind, fail_at, errno, false));
                let (second, acked, _, _) = scenario(io.clone(), dir.path());
                assert_eq!(io.failures(), 1, "{what}");
                let late_op = match second {
                    Err(Error::Io { op, source, path }) => {
                        assert_eq!(source.raw_os_error(), Some(errno), "{what}");
                        // The manifest is rewritten once the new checkpoint is
                        // in place.
                        let manifest = path
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("manifest"));
                        assert!(
                            [
                                // Retiring the current segment first: a roll.
                                "create",
                                "allocate",
                                // Writing the new checkpoint.
                                "write",
                                "fsync",
                                "rename",
                                "fsync directory",
                                "remove",
                                // Moving the previous one into `pitr/`.
                                "create directory"
                            ]
                            .contains(&op),
                            "{what}: {op}"
                        );
                        // Failures after the rename leave the new checkpoint
                        // in place: either checkpoint may then be the newest.
                        // So do failures moving the previous checkpoint into
                        // `pitr/` (its path, not the new one's `.tmp`).
                        let moving =
                            path.to_string_lossy().ends_with(".ckpt") || op == "create directory";
                        manifest || moving || matches!(op, "fsync directory" | "remove")
                    }
                    other => panic!("{what}: the checkpoint returned {other:?}"),
                };
                let names: Vec<String> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                assert!(
                    !names.iter().any(|n| n.ends_with(".tmp")),
                    "{what}: a temporary file is left: {names:?}"
                );
                let engine = Engine::open_with(dir.path(), opts(1)).unwrap();
                let want: Vec<_> = acked.iter().map(|&i| (key(i), value(i))).collect();
                let mut want = want;
                want.sort();
                assert_eq!(scan(&engine.snapshot()), want, "{what}");
                let ckpt = engine.stats().journal.checkpoint;
                if late_op {
                    assert!(ckpt == 100 || ckpt == 160, "{what}: checkpoint {ckpt}");
                } else {
                    assert_eq!(ckpt, 100, "{what}");
                }
                engine.run("after", |tx| tx.put(b"after", b"1")).unwrap();
                engine.checkpoint().unwrap();
                engine.close().unwrap();
            }
        }
    }
}

/// A checkpoint that fails to delete an obsolete segment returns the error (the
/// new checkpoint itself is in place). The segments it could not delete, or
/// had not reached yet, are still obsolete: the next checkpoint deletes them,
/// and the segment count in `Stats` matches the files on disk throughout.
#[test]
fn segments_a_failed_checkpoint_could_not_delete_are_deleted_by_the_next_one() {
    /// Fails the first removal of a journal segment with EIO.
    struct FailOneSegmentRemoval(AtomicBool);
    impl Io for FailOneSegmentRemoval {
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            if path.extension().is_some_and(|e| e == "log") && self.0.swap(false, Ordering::SeqCst)
            {
                return Err(std::io::Error::from_raw_os_error(EIO));
            }
            OsIo.remove(path)
        }
    }
    let segment_files = |dir: &Path| {
        std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count()
    };
    let dir = TempDir::new("removal");
    let io = Arc::new(FailOneSegmentRemoval(AtomicBool::new(true)));
    // Only the newest checkpoint is kept: no journal is kept for point-in-time
    // restore, so the second checkpoint deletes every segment before it.
    let opts = |shards| Options {
        pitr_retention: shardstone::Retention {
            checkpoints: 1,
            ..Default::default()
        },
        ..opts(shards)
    };
    let engine = Engine::open_with_io(dir.path(), opts(1), io).unwrap();
    let big = |i: usize| Rng::new(i as u64).bytes(2000);
    for i in 0..200 {
        engine.run("put", |tx| tx.put(&key(i), &big(i))).unwrap();
    }
    assert!(segment_files(dir.path()) > 3);
    assert_eq!(engine.stats().journal.segments, segment_files(dir.path()));
    match engine.checkpoint() {
        Err(Error::Io { op: "remove", .. }) => {}
        other => panic!("expected the failed removal, got {other:?}"),
    }
    for i in 200..400 {
        engine.run("put", |tx| tx.put(&key(i), &big(i))).unwrap();
    }
    assert_eq!(engine.checkpoint().unwrap().get(), 400);
    // Everything before commit 400 is in the checkpoint: only the segment the
    // checkpoint started for new commits is left.
    assert_eq!(
        (engine.stats().journal.segments, segment_files(dir.path())),
        (1, 1),
        "(segments counted, segment files on disk) after the second checkpoint"
    );
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), opts(1)).unwrap();
    assert_eq!(scan(&engine.snapshot()).len(), 400);
}
