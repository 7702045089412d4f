//! Crash recovery under `SIGKILL`: a child process runs durable commands and
//! reports every acknowledged commit to the parent over a pipe; the parent kills
//! it at a random moment, reopens the database and checks that
//! - every acknowledged commit is there, with the content the child reported;
//! - the state is exactly a replay of a prefix of the commit log (the prefix
//!   covering every acknowledged commit), and a prefix recovered earlier never
//!   changes;
//! - recovery succeeded, so the hash chain verified against every anchor, and
//!   the `(commit, hash)` pair is the same across a clean reopen.
//!
//! The child is this test binary re-executed with `--exact crash_child` and
//! `SHARDSTONE_CRASH_CHILD=<dir>`; the database accumulates across iterations.
//! `SHARDSTONE_CRASH_ITERS` sets the number of kills (default 50),
//! `SHARDSTONE_CRASH_SEED` the seed of the parent's timing and options.
//!
//! Every command reads `count`, writes `count + 1` (which is therefore its commit
//! id: every commit increments it), writes `log:<id>` = the command's entry, and
//! puts or deletes one of 64 shared `k..` keys; one command in sixteen also
//! writes a value of a few KB, so that frames cross segment boundaries.

mod common;

use common::{assert_entries, dec, enc, scan, Entries, Rng, TempDir};
use shardstone::{ChainHash, CommitId, Durability, Engine, Error, Options};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SHARDSTONE_CRASH_CHILD";
const GEN_ENV: &str = "SHARDSTONE_CRASH_GEN";
const SHARDS_ENV: &str = "SHARDSTONE_CRASH_SHARDS";
const ITERS_ENV: &str = "SHARDSTONE_CRASH_ITERS";
const SEED_ENV: &str = "SHARDSTONE_CRASH_SEED";

/// Command threads in the child.
const THREADS: u64 = 3;
/// Shared keys `k00`..`k63`.
const K_KEYS: u64 = 64;

fn opts(journal_shards: usize) -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards,
        segment_size: 64 * 1024,
        ..Default::default()
    }
}

/// What one command did: stored under `log:<id>` and reported with its ack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Entry {
    /// Which child process (the parent's iteration) ran it.
    gen: u64,
    thread: u64,
    /// The thread's command counter in that child.
    iter: u64,
    /// Length of the `big:<thread>` value written too (0: none).
    big: u64,
    /// Whether the `k..` key was deleted rather than written.
    del: bool,
}

impl Entry {
    const LEN: usize = 33;

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        for n in [self.gen, self.thread, self.iter, self.big] {
            v.extend_from_slice(&enc(n));
        }
        v.push(self.del as u8);
        v
    }

    fn decode(v: &[u8]) -> Option<Entry> {
        if v.len() != Self::LEN || v[32] > 1 {
            return None;
        }
        let n = |i: usize| dec(&v[i * 8..]);
        Some(Entry {
            gen: n(0),
            thread: n(1),
            iter: n(2),
            big: n(3),
            del: v[32] == 1,
        })
    }

    fn k_key(&self) -> Vec<u8> {
        format!("k{:02}", (self.thread * 7 + self.iter) % K_KEYS).into_bytes()
    }

    fn big_key(&self) -> Vec<u8> {
        format!("big:{}", self.thread).into_bytes()
    }

    /// The entry followed by `big` bytes that are a function of the entry.
    fn big_value(&self) -> Vec<u8> {
        let mut v = self.encode();
        let mut rng = Rng::new(self.gen << 40 ^ self.thread << 32 ^ self.iter);
        v.extend_from_slice(&rng.bytes(self.big as usize));
        v
    }
}

fn log_key(id: u64) -> Vec<u8> {
    format!("log:{id:020}").into_bytes()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
    )
}

// ---------------------------------------------------------------------------
// The child.

/// One line to the parent, flushed at once (the parent may kill us any moment).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// The child's body; a no-op when this binary runs as a normal test.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let gen = env_u64(GEN_ENV).expect("the parent sets the generation");
    let shards = env_u64(SHARDS_ENV).expect("the parent sets the shard count") as usize;
    let engine = Engine::open_with(&dir, opts(shards))
        .unwrap_or_else(|e| panic!("child {gen}: open failed: {e}"));
    // On a line of its own: libtest's "test crash_child ... " has no newline yet.
    say(&format!("\nready {}", engine.commit_id().get()));
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let engine = &engine;
            s.spawn(move || work(engine, gen, thread));
        }
    });
}

/// Runs commands until the process is killed.
fn work(engine: &Engine, gen: u64, thread: u64) {
    let mut rng = Rng::new(gen * 1000 + thread);
    for iter in 0.. {
        let entry = Entry {
            gen,
            thread,
            iter,
            big: if rng.chance(1, 16) {
                rng.range_incl(1000, 6000)
            } else {
                0
            },
            del: rng.chance(1, 8),
        };
        let value = entry.encode();
        let big = (entry.big > 0).then(|| entry.big_value());
        let id = engine
            .run("crash", |tx| {
                let id = tx.get(b"count")?.map_or(0, |v| dec(&v)) + 1;
                tx.put(b"count", &enc(id))?;
                tx.put(&log_key(id), &value)?;
                if entry.del {
                    tx.delete(&entry.k_key())?;
                } else {
                    tx.put(&entry.k_key(), &value)?;
                }
                if let Some(big) = &big {
                    tx.put(&entry.big_key(), big)?;
                }
                Ok(id)
            })
            .unwrap_or_else(|e| panic!("child {gen} thread {thread} iter {iter}: run: {e}"));
        say(&format!(
            "ack {id} {gen} {thread} {iter} {} {}",
            entry.big, entry.del as u8
        ));
        if rng.chance(1, 200) {
            match engine.checkpoint() {
                // The chain outran the snapshot: allowed, the next one will do.
                Ok(_) | Err(Error::Unsupported(_)) => {}
                Err(e) => panic!("child {gen} thread {thread}: checkpoint: {e}"),
            }
        }
    }
}

/// Parses `ack <id> <gen> <thread> <iter> <big> <del>`.
fn parse_ack(line: &str) -> Option<(u64, Entry)> {
    let rest = line.strip_prefix("ack ")?;
    let n: Vec<u64> = rest
        .split(' ')
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    let [id, gen, thread, iter, big, del] = n[..] else {
        return None;
    };
    Some((
        id,
        Entry {
            gen,
            thread,
            iter,
            big,
            del: del == 1,
        },
    ))
}

// ---------------------------------------------------------------------------
// The parent.

/// A running child and the threads reading its pipes.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn spawn(dir: &Path, gen: u64, shards: usize) -> Running {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .env(GEN_ENV, gen.to_string())
            .env(SHARDS_ENV, shards.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    // A line cut short by the kill was never fully reported.
                    Ok(_) if buf.last() != Some(&b'\n') => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the child's `ready` line, keeping what came before it.
    fn wait_ready(&mut self, got: &mut Vec<String>, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("ready ");
                    got.push(line);
                    if ready {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// SIGKILLs the child; returns how it ended, every line it wrote, and its stderr.
    fn kill(mut self, mut got: Vec<String>) -> (std::process::ExitStatus, Vec<String>, String) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the child");
        got.extend(self.lines.iter());
        let stderr = self.stderr.join().unwrap_or_default();
        (status, got, stderr)
    }
}

/// What the parent knows and has checked so far.
struct Parent {
    dir: TempDir,
    /// Every acknowledged commit, by id, as the child reported it.
    acked: BTreeMap<u64, Entry>,
    /// `log:1..` as the previous reopen recovered it: a recovered prefix must
    /// never change (the parent's clean close acknowledged all of it).
    history: Vec<Entry>,
    last: (CommitId, ChainHash),
    checkpoints_seen: u64,
    /// Kills after which commits beyond the last acknowledged one were recovered.
    unacked_recovered: u64,
}

impl Parent {
    fn max_acked(&self) -> u64 {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }

    /// Reopens after iteration `i`'s kill and checks everything.
    fn verify(&mut self, i: u64, shards: usize, stderr: &str) {
        let max_acked = self.max_acked();
        let ctx = |count: u64| {
            format!(
                "iteration {i}: recovered count {count}, max acked {max_acked}, {} acked in all\n\
                 child stderr:\n{stderr}",
                self.acked.len()
            )
        };
        let engine = Engine::open_with(self.dir.path(), opts(shards))
            .unwrap_or_else(|e| panic!("reopen failed: {e}\n{}", ctx(0)));
        let last = engine.last_commit();
        let journal = engine.stats().journal;
        let state = scan(&engine.snapshot());
        let map: BTreeMap<&[u8], &[u8]> = state
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let count = map.get(&b"count"[..]).map_or(0, |v| dec(v));
        let fail = |what: String| -> ! { panic!("{what}\n{}", ctx(count)) };

        if count != last.0.get() {
            fail(format!(
                "count {count} is not the last commit id {} (every commit increments it)",
                last.0.get()
            ));
        }
        if max_acked > count {
            let lost: Vec<u64> = self.acked.range(count + 1..).map(|(id, _)| *id).collect();
            fail(format!(
                "{} acknowledged commits lost, the first {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            ));
        }
        if count < self.history.len() as u64 {
            fail(format!(
                "the count went back from {} recovered before",
                self.history.len()
            ));
        }
        if count == self.last.0.get() && last.1 != self.last.1 {
            fail(format!(
                "no new commit, but the chain hash changed from {} to {}",
                self.last.1, last.1
            ));
        }
        if journal.checkpoint + journal.replayed != count {
            fail(format!(
                "checkpoint {} + replayed {} is not the last commit",
                journal.checkpoint, journal.replayed
            ));
        }

        // Replay log:1..=count and compare the whole state with the result.
        let mut history = Vec::with_capacity(count as usize);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if count > 0 {
            model.insert(b"count".to_vec(), enc(count).to_vec());
        }
        for id in 1..=count {
            let key = log_key(id);
            let Some(v) = map.get(key.as_slice()) else {
                fail(format!("log:{id} is missing"));
            };
            let Some(e) = Entry::decode(v) else {
                fail(format!(
                    "log:{id} holds {} bytes that are no entry",
                    v.len()
                ));
            };
            if let Some(prev) = self.history.get(id as usize - 1) {
                if *prev != e {
                    fail(format!(
                        "log:{id} was {prev:?} when recovered before, now {e:?}"
                    ));
                }
            }
            if let Some(a) = self.acked.get(&id) {
                if *a != e {
                    fail(format!(
                        "log:{id} is {e:?}, but the child acknowledged {a:?}"
                    ));
                }
            }
            model.insert(key, v.to_vec());
            if e.del {
                model.remove(&e.k_key());
            } else {
                model.insert(e.k_key(), v.to_vec());
            }
            if e.big > 0 {
                model.insert(e.big_key(), e.big_value());
            }
            history.push(e);
        }
        let want: Entries = model.into_iter().collect();
        assert_entries(
            &format!("state after the crash\n{}", ctx(count)),
            &state,
            &want,
        );

        // A clean reopen gives the same history and the same chain head.
        drop(engine);
        let engine = Engine::open_with(self.dir.path(), opts(shards))
            .unwrap_or_else(|e| fail(format!("the second, clean reopen failed: {e}")));
        if engine.last_commit() != last {
            fail(format!(
                "a clean reopen moved the head from {last:?} to {:?}",
                engine.last_commit()
            ));
        }
        assert_entries(
            &format!("state after a clean reopen\n{}", ctx(count)),
            &scan(&engine.snapshot()),
            &state,
        );
        drop(engine);

        if count > max_acked {
            self.unacked_recovered += 1;
        }
        if journal.checkpoint > self.checkpoints_seen {
            self.checkpoints_seen = journal.checkpoint;
        }
        self.history = history;
        self.last = last;
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_commit() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let iters = env_u64(ITERS_ENV).unwrap_or(50);
    let seed = env_u64(SEED_ENV).unwrap_or(0xC7A5);
    let mut rng = Rng::new(seed);
    let mut parent = Parent {
        dir: TempDir::new("crash"),
        acked: BTreeMap::new(),
        history: Vec::new(),
        last: (CommitId::default(), ChainHash::genesis()),
        checkpoints_seen: 0,
        unacked_recovered: 0,
    };
    let started = Instant::now();
    let mut early_kills = 0;
    let mut mid_checkpoint = 0;
    for i in 0..iters {
        let shards = rng.range_incl(2, 3) as usize;
        // Now and then kill without waiting for the child to open: the kill may
        // land during its recovery.
        let early = rng.chance(1, 8);
        let delay = Duration::from_millis(if early {
            rng.below(30)
        } else {
            rng.range_incl(5, 150)
        });
        let mut running = Running::spawn(parent.dir.path(), i, shards);
        let mut lines = Vec::new();
        let mut trouble = None;
        if early {
            early_kills += 1;
            std::thread::sleep(delay);
        } else if !running.wait_ready(&mut lines, Duration::from_secs(60)) {
            trouble = Some("the child never became ready".to_string());
        } else {
            std::thread::sleep(delay);
            // The child holds the directory lock.
            match Engine::open_with(parent.dir.path(), opts(shards)) {
                Err(Error::Locked { pid, .. }) if pid == Some(running.child.id()) => {}
                Err(e) => trouble = Some(format!("open beside the child: {e}")),
                Ok(_) => trouble = Some("open beside the child succeeded".to_string()),
            }
        }
        let (status, lines, stderr) = running.kill(lines);
        if let Some(t) = trouble {
            panic!("iteration {i}: {t}\nchild status {status}\nchild stderr:\n{stderr}");
        }
        if status.signal() != Some(libc::SIGKILL) {
            panic!("iteration {i}: the child ended by itself ({status})\nchild stderr:\n{stderr}");
        }
        // A leftover of a checkpoint the kill interrupted (the reopen removes it).
        if std::fs::read_dir(parent.dir.path())
            .expect("list the database directory")
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".ckpt.tmp")))
        {
            mid_checkpoint += 1;
        }
        let mut new = 0;
        for line in &lines {
            let Some((id, entry)) = parse_ack(line) else {
                continue;
            };
            if entry.gen != i {
                panic!("iteration {i}: an ack from another child: {line:?}");
            }
            if let Some(prev) = parent.acked.insert(id, entry) {
                panic!("iteration {i}: commit {id} acknowledged twice: {prev:?}, then {entry:?}");
            }
            new += 1;
        }
        parent.verify(i, rng.range_incl(2, 3) as usize, &stderr);
        if std::env::var_os("SHARDSTONE_CRASH_VERBOSE").is_some() {
            eprintln!(
                "iteration {i}: {new} acked, count {}, delay {delay:?}{}",
                parent.history.len(),
                if early { " (early)" } else { "" }
            );
        }
    }
    eprintln!(
        "crash test: {iters} kills ({early_kills} early, {mid_checkpoint} mid-checkpoint, {} \
         recovering unacknowledged commits), {} commits acknowledged, {} recovered, \
         newest checkpoint at {}, {:.1?}",
        parent.unacked_recovered,
        parent.acked.len(),
        parent.history.len(),
        parent.checkpoints_seen,
        started.elapsed()
    );
    assert!(
        parent.acked.len() as u64 >= iters,
        "too few commits were acknowledged to test anything"
    );
}
