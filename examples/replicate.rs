//! shardstone replication over TCP: a leader and a follower in two processes.
//!
//! ```text
//! cargo run --release --example replicate                  # the demo (below)
//! cargo run --release --example replicate -- leader --dir /tmp/lead --listen 127.0.0.1:7070
//! cargo run --release --example replicate -- follower --dir /tmp/rep1 --connect 127.0.0.1:7070
//! ```
//!
//! `leader` opens (or creates) a durable database, writes to it at `--write-rate`
//! commits per second, checkpoints it every few seconds and serves its commits to
//! any follower that connects. `follower` opens a durable follower
//! (`Engine::open_follower`) and follows the leader: it catches up from its own
//! last commit, whatever it is, then applies live commits; it reconnects with
//! backoff when the connection drops (the leader restarting, say), checks its
//! state digest against the leader's now and then, and stops with a report on a
//! fork (exit status 2), on a leader that no longer has the journal it needs (3),
//! on a leader behind it (4) or on a digest mismatch (5). Both print their progress
//! every second. With `--stop-on-stdin-eof` either one stops cleanly when its
//! standard input closes (a leader first waits up to 10 s for its named followers,
//! the connected ones and those given with `--wait-for`, to acknowledge its last
//! commit); otherwise stop them with Ctrl-C: every commit and every applied record
//! is durable.
//!
//! The demo (no arguments, or `demo`) runs both roles as child processes of itself,
//! in a temporary directory, for about ten seconds: the follower catches up from
//! commit 0 and follows live; the leader is killed and restarted and the follower
//! reconnects; the follower is killed and restarted and resumes from its own last
//! commit; then both stop and their directories are compared (last commit, chain
//! hash, state digest). Finally a fork on purpose: while both are down, the leader
//! takes 3 writes and so does a promoted copy of the follower; run as a follower of
//! the restarted leader, the copy reports the fork. The protocol is in
//! `examples/replicate/proto.rs`.

#[path = "replicate/proto.rs"]
mod proto;

use proto::{num, Follower, Leader, Status, SyncError};
use shardstone::{Engine, Error, Options};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  replicate [demo]
  replicate leader --dir DIR --listen ADDR [--write-rate N] [--digest-every S]
                   [--checkpoint-every S] [--wait-for NAME]... [--stop-on-stdin-eof]
  replicate follower --dir DIR --connect ADDR [--name NAME] [--stop-on-stdin-eof]

  --dir DIR             the database directory (created if missing)
  --listen ADDR         where the leader accepts followers, e.g. 127.0.0.1:7070
  --write-rate N        commits per second the leader writes (default 1000; 0: none)
  --digest-every S      seconds between state digests sent to followers (default 2)
  --checkpoint-every S  seconds between leader checkpoints (default 3)
  --wait-for NAME       a stopping leader waits (up to 10 s) for the follower NAME
                        to acknowledge its last commit, connected or not (it
                        waits for the connected named followers anyway)
  --connect ADDR        the leader's address
  --name NAME           the follower's name: the leader keeps the journal from its
                        last acknowledged commit (default replica; \"\" for none)
  --stop-on-stdin-eof   stop cleanly when standard input closes";

/// Keys the leader's writer spreads its writes over.
const KEYS: u64 = 2_000;
/// How long a leader that was asked to stop waits for its followers' ACKs.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Set when the process should stop cleanly (standard input closed).
static STOP: AtomicBool = AtomicBool::new(false);

struct LeaderArgs {
    dir: PathBuf,
    listen: SocketAddr,
    write_rate: u64,
    digest_every: f64,
    checkpoint_every: f64,
    wait_for: Vec<String>,
    stdin_stop: bool,
}

struct FollowerArgs {
    dir: PathBuf,
    connect: SocketAddr,
    name: String,
    stdin_stop: bool,
}

enum Mode {
    Demo,
    Leader(LeaderArgs),
    Follower(FollowerArgs),
}

fn parse_args() -> Result<Mode, String> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_else(|| "demo".to_owned());
    if role == "--help" || role == "-h" {
        return Err(String::new());
    }
    let (mut dir, mut listen, mut connect) = (None, None, None);
    let mut name = "replica".to_owned();
    let (mut write_rate, mut digest_every, mut checkpoint_every) = (1000u64, 2.0f64, 3.0f64);
    let mut stdin_stop = false;
    let mut wait_for = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--stop-on-stdin-eof" {
            stdin_stop = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(&value)),
            "--listen" => listen = Some(value.parse::<SocketAddr>().map_err(|e| bad(&e))?),
            "--connect" => connect = Some(value.parse::<SocketAddr>().map_err(|e| bad(&e))?),
            "--name" => name = value,
            "--wait-for" => wait_for.push(value),
            "--write-rate" => write_rate = value.parse().map_err(|e| bad(&e))?,
            "--digest-every" => digest_every = value.parse().map_err(|e| bad(&e))?,
            "--checkpoint-every" => checkpoint_every = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if !(digest_every > 0.0 && checkpoint_every > 0.0) {
        return Err("--digest-every and --checkpoint-every must be > 0".into());
    }
    match role.as_str() {
        "demo" => Ok(Mode::Demo),
        "leader" => Ok(Mode::Leader(LeaderArgs {
            dir: dir.ok_or("leader needs --dir")?,
            listen: listen.ok_or("leader needs --listen")?,
            write_rate,
            digest_every,
            checkpoint_every,
            wait_for,
            stdin_stop,
        })),
        "follower" => Ok(Mode::Follower(FollowerArgs {
            dir: dir.ok_or("follower needs --dir")?,
            connect: connect.ok_or("follower needs --connect")?,
            name,
            stdin_stop,
        })),
        other => Err(format!("unknown role {other:?}: leader, follower or demo")),
    }
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Mode::Demo) => demo(),
        Ok(Mode::Leader(a)) => leader(a),
        Ok(Mode::Follower(a)) => follower(a),
        Err(e) => {
            if !e.is_empty() {
                eprintln!("replicate: {e}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(if e.is_empty() { 0 } else { 64 })
        }
    }
}

/// The first 16 hex digits of a hash: enough to tell them apart on screen.
fn short(h: &impl std::fmt::Display) -> String {
    h.to_string().chars().take(16).collect()
}

/// Stops the process cleanly once standard input closes.
fn stop_on_stdin_eof() {
    thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        STOP.store(true, Ordering::SeqCst);
    });
}

/// Sleeps until `d` passed or `STOP` is set.
fn nap(d: Duration) {
    let until = Instant::now() + d;
    while !STOP.load(Ordering::SeqCst) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
}

/// SplitMix64, for choosing keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((u128::from(z ^ (z >> 31)) * u128::from(n)) >> 64) as u64
    }
}

fn key(k: u64) -> String {
    format!("key:{k:06}")
}

// ---------------------------------------------------------------------------
// leader

fn leader(a: LeaderArgs) -> ExitCode {
    if a.stdin_stop {
        stop_on_stdin_eof();
    }
    let engine = match Engine::open(&a.dir) {
        Ok(e) => e,
        Err(e) => {
            println!("!! cannot open {}: {e}", a.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let (at, hash) = engine.last_commit();
    println!(
        "opened {} at commit {} ({}), chain hash {}",
        a.dir.display(),
        num(at.get()),
        if at.get() == 0 { "new" } else { "recovered" },
        short(&hash)
    );
    // A restarted leader may find its port still held for a moment.
    let started = Instant::now();
    let listener = loop {
        match TcpListener::bind(a.listen) {
            Ok(l) => break l,
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                if started.elapsed() < Duration::from_millis(10) {
                    println!("cannot listen on {} yet ({e}); retrying", a.listen);
                }
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                println!("!! cannot listen on {}: {e}", a.listen);
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "listening on {}; writing {} commits/s",
        a.listen,
        num(a.write_rate)
    );
    let stop_writes = AtomicBool::new(false);
    let stop_serving = AtomicBool::new(false);
    let log = |m: &str| println!("{m}");
    let ok = thread::scope(|s| {
        let writing =
            (a.write_rate > 0).then(|| s.spawn(|| write(&engine, a.write_rate, &stop_writes)));
        let server = Leader {
            engine: &engine,
            stop: &stop_serving,
            digest_every: Some(Duration::from_secs_f64(a.digest_every)),
            log: &log,
        };
        let serving = s.spawn(move || server.serve(&listener));
        report_leader(&engine, a.checkpoint_every);
        stop_writes.store(true, Ordering::SeqCst);
        let wrote_ok = writing.is_none_or(|w| w.join().expect("the writer panicked"));
        let last = engine.commit_id().get();
        println!("writes stopped at commit {}", num(last));
        wait_for_acks(&engine, last, &a.wait_for);
        stop_serving.store(true, Ordering::SeqCst);
        let served = serving.join().expect("the server panicked");
        if let Err(e) = &served {
            println!("!! serving failed: {e}");
        }
        wrote_ok && served.is_ok()
    });
    let (at, hash) = engine.last_commit();
    match engine.close() {
        Ok(()) => println!(
            "closed at commit {}, chain hash {}",
            num(at.get()),
            short(&hash)
        ),
        Err(e) => {
            println!("!! close failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes `rate` commits per second: puts, deletes and a few multi-key batches.
fn write(engine: &Engine, rate: u64, stop: &AtomicBool) -> bool {
    let mut rng = Rng(u64::from(std::process::id()) << 32 ^ engine.commit_id().get());
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let k = rng.below(KEYS);
        let r = match n % 20 {
            0 => engine.run("batch", |tx| {
                for i in 0..4 {
                    tx.put(key((k + i) % KEYS).as_bytes(), &n.to_le_bytes())?;
                }
                Ok(())
            }),
            1..=3 => engine.run("delete", |tx| tx.delete(key(k).as_bytes()).map(drop)),
            _ => engine.run("put", |tx| {
                let value = format!("value {n} of process {}", std::process::id());
                tx.put(key(k).as_bytes(), value.as_bytes())
            }),
        };
        if let Err(e) = r {
            println!("!! write failed: {e}");
            return false;
        }
        n += 1;
    }
    true
}

/// Prints the leader's progress every second and checkpoints now and then, until
/// `STOP`.
fn report_leader(engine: &Engine, checkpoint_every: f64) {
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut prev = engine.commit_id().get();
    while !STOP.load(Ordering::SeqCst) {
        let tick = Instant::now();
        nap(Duration::from_secs(1));
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let mut note = String::new();
        if last_checkpoint.elapsed().as_secs_f64() >= checkpoint_every {
            last_checkpoint = Instant::now();
            match engine.checkpoint() {
                Ok(at) => note = format!("  checkpoint at {}", num(at.get())),
                Err(e) => note = format!("  !! checkpoint failed: {e}"),
            }
        }
        let now = engine.commit_id().get();
        let rate = (now - prev) as f64 / tick.elapsed().as_secs_f64();
        prev = now;
        let followers: Vec<String> = engine
            .stats()
            .feed
            .iter()
            .map(|c| {
                format!(
                    "{} at {} (lag {})",
                    c.name.as_deref().unwrap_or("-"),
                    num(c.position.get()),
                    num(c.lag_commits)
                )
            })
            .collect();
        println!(
            "{:5.1}s  commit {:>7}  {:>6}/s  followers: {}{note}",
            started.elapsed().as_secs_f64(),
            num(now),
            num(rate.round() as u64),
            if followers.is_empty() {
                "none".to_owned()
            } else {
                followers.join(", ")
            }
        );
    }
}

/// Waits (up to `ACK_WAIT`) until the followers named in `wait_for` and every
/// connected named follower acknowledged `last`.
fn wait_for_acks(engine: &Engine, last: u64, wait_for: &[String]) {
    let mut names: Vec<String> = engine
        .stats()
        .feed
        .into_iter()
        .filter_map(|c| c.name)
        .chain(wait_for.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let started = Instant::now();
    let acked = |n: &String| engine.consumer_position(n).is_some_and(|p| p.get() >= last);
    while !names.iter().all(acked) && started.elapsed() < ACK_WAIT {
        thread::sleep(Duration::from_millis(20));
    }
    for n in &names {
        match engine.consumer_position(n) {
            Some(p) if p.get() >= last => println!(
                "follower {n:?} acknowledged commit {} after {:.2} s",
                num(p.get()),
                started.elapsed().as_secs_f64()
            ),
            p => println!(
                "follower {n:?} did not acknowledge commit {} (it is at {})",
                num(last),
                p.map_or("-".to_owned(), |p| num(p.get()))
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// follower

fn follower(a: FollowerArgs) -> ExitCode {
    if a.stdin_stop {
        stop_on_stdin_eof();
    }
    let engine = match Engine::open_follower(&a.dir, Options::default()) {
        Ok(e) => e,
        Err(e) => {
            println!("!! cannot open {}: {e}", a.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let (at, hash) = engine.last_commit();
    println!(
        "opened {} as a follower at commit {}, chain hash {}",
        a.dir.display(),
        num(at.get()),
        short(&hash)
    );
    let status = Status::default();
    status.applied.store(at.get(), Ordering::SeqCst);
    let connect = a.connect;
    let leader = move || connect;
    let log = |m: &str| println!("{m}");
    let name = (!a.name.is_empty()).then_some(a.name.as_str());
    let result = thread::scope(|s| {
        let f = Follower {
            engine: &engine,
            leader: &leader,
            name,
            stop: &STOP,
            status: &status,
            log: &log,
        };
        let following = s.spawn(move || f.run());
        report_follower(&status, &following);
        following.join().expect("the follower panicked")
    });
    let (at, hash) = engine.last_commit();
    let code = match &result {
        Ok(()) => {
            println!(
                "stopped at commit {}, chain hash {}",
                num(at.get()),
                short(&hash)
            );
            ExitCode::SUCCESS
        }
        Err(e) => report_failure(e, at.get()),
    };
    if let Err(e) = engine.close() {
        println!("!! close failed: {e}");
        return ExitCode::FAILURE;
    }
    code
}

fn report_follower(
    status: &Status,
    following: &thread::ScopedJoinHandle<'_, Result<(), SyncError>>,
) {
    let started = Instant::now();
    let mut prev = status.applied.load(Ordering::SeqCst);
    loop {
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_secs(1) && !following.is_finished() {
            thread::sleep(Duration::from_millis(20));
        }
        if following.is_finished() {
            return;
        }
        let applied = status.applied.load(Ordering::SeqCst);
        let head = status.leader_head.load(Ordering::SeqCst);
        let rate = (applied - prev) as f64 / tick.elapsed().as_secs_f64();
        prev = applied;
        let state = if status.connected.load(Ordering::SeqCst) {
            format!(
                "leader at {}, lag {}",
                num(head),
                num(head.saturating_sub(applied))
            )
        } else if status.sessions.load(Ordering::SeqCst) == 0 {
            "connecting to the leader".to_owned()
        } else {
            "no leader: reconnecting".to_owned()
        };
        println!(
            "{:5.1}s  applied {:>7}  {:>6}/s  {state}  (digests matched: {})",
            started.elapsed().as_secs_f64(),
            num(applied),
            num(rate.round() as u64),
            status.digests_matched.load(Ordering::SeqCst)
        );
    }
}

/// Prints why following stopped; the exit status says which case it was.
fn report_failure(e: &SyncError, at: u64) -> ExitCode {
    match e {
        SyncError::Engine(Error::Fork {
            commit_id,
            ours,
            theirs,
        }) => {
            println!("!! FORK: this replica's history and the leader's disagree");
            println!("!!   at commit        {}", num(commit_id.get()));
            println!("!!   our chain hash   {ours}");
            println!("!!   leader's hash    {theirs}");
            println!(
                "!!   nothing of the leader's was applied; this replica stays at commit {}",
                num(at)
            );
            println!("!!   rebuild it from the leader, or find out which side took writes it should not have");
            ExitCode::from(2)
        }
        SyncError::Engine(Error::Truncated { oldest_available }) => {
            println!(
                "!! TRUNCATED: the leader's journal starts at {oldest_available}, we need commit {}",
                num(at + 1)
            );
            println!("!!   rebuild this replica from a copy of the leader");
            ExitCode::from(3)
        }
        SyncError::LeaderBehind { .. } => {
            println!("!! LEADER BEHIND: {e}");
            ExitCode::from(4)
        }
        SyncError::DigestMismatch { .. } => {
            println!("!! DIGEST MISMATCH: {e}");
            ExitCode::from(5)
        }
        _ => {
            println!("!! following stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// demo

/// A child process running one role, its output printed with a label.
struct Role {
    label: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    pumps: Vec<thread::JoinHandle<()>>,
}

impl Role {
    fn start(label: &'static str, args: &[&str]) -> std::io::Result<Role> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let out = child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>);
        let pumps = [out, err]
            .into_iter()
            .flatten()
            .map(|pipe| {
                thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        println!("  {label:<9}| {line}");
                    }
                })
            })
            .collect();
        Ok(Role {
            label,
            child,
            stdin,
            pumps,
        })
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                for p in self.pumps.drain(..) {
                    let _ = p.join();
                }
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its standard input, which asks it to stop cleanly, and waits.
    fn stop(&mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let status = self.wait(Duration::from_secs(10));
        if status.is_none() {
            println!("!! {} did not stop in 10 s: killing it", self.label);
            self.kill();
        }
        status
    }

    /// SIGKILL: a crash, as far as the process can tell.
    fn kill(&mut self) {
        let _ = self.child.kill();
        self.wait(Duration::from_secs(10));
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn step(t0: Instant, what: &str) {
    println!();
    println!("[{:5.1}s] == {what}", t0.elapsed().as_secs_f64());
}

fn pace(d: f64) {
    thread::sleep(Duration::from_secs_f64(d));
}

/// A directory's last commit, chain hash and state digest, opened read-only.
fn inspect(dir: &Path) -> shardstone::Result<(u64, String, shardstone::StateDigest)> {
    let engine = Engine::open_read_only(dir, Options::default())?;
    let (at, hash) = engine.last_commit();
    let digest = engine.snapshot().state_digest()?;
    Ok((at.get(), hash.to_string(), digest))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn demo() -> ExitCode {
    let root = std::env::temp_dir().join(format!("shardstone-replicate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = run_demo(&root);
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Ok(true) => {
            println!();
            println!("demo passed: the follower ended identical to the leader, and the fork was reported");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!();
            println!("!! demo FAILED (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("!! demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(root: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let lead_dir = root.join("leader");
    let rep_dir = root.join("follower");
    let fork_dir = root.join("forked");
    // A free port, given up again for the leader to take.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let (lead, rep, fork) = (
        lead_dir.to_str().ok_or("temp dir is not UTF-8")?,
        rep_dir.to_str().ok_or("temp dir is not UTF-8")?,
        fork_dir.to_str().ok_or("temp dir is not UTF-8")?,
    );
    let leader_args = |wait_for: &'static [&'static str]| {
        let mut args = vec![
            "leader",
            "--dir",
            lead,
            "--listen",
            &addr,
            "--write-rate",
            "2000",
            "--digest-every",
            "1",
            "--checkpoint-every",
            "2",
        ];
        for name in wait_for {
            args.extend(["--wait-for", name]);
        }
        args
    };
    let follower_args = ["follower", "--dir", rep, "--connect", &addr];
    println!("shardstone replication demo: a leader and a follower in two processes over TCP");
    println!("  leader    {lead}, serving on {addr}");
    println!("  follower  {rep}");
    let t0 = Instant::now();

    step(
        t0,
        "1. the leader starts on an empty directory and writes 2,000 commits/s",
    );
    let mut leader = Role::start("leader", &leader_args(&["replica"]))?;
    pace(1.5);

    step(t0, "2. a follower starts from an empty directory: it catches up from commit 0, then follows live");
    let mut follower = Role::start("follower", &follower_args)?;
    pace(2.2);

    step(
        t0,
        "3. the leader is killed (SIGKILL): the follower keeps trying to reconnect",
    );
    leader.kill();
    pace(1.2);

    step(t0, "4. the leader restarts on the same directory and port: it recovers, the follower reconnects");
    let mut leader = Role::start("leader", &leader_args(&["replica"]))?;
    pace(2.2);

    step(
        t0,
        "5. the follower is killed and restarted: it resumes from its own last commit",
    );
    follower.kill();
    pace(0.5);
    let mut follower = Role::start("follower", &follower_args)?;
    pace(1.6);

    step(
        t0,
        "6. writes stop: the leader waits for the follower's acknowledgement, then both stop",
    );
    let leader_exit = leader.stop();
    let follower_exit = follower.stop();
    let mut ok =
        leader_exit.is_some_and(|s| s.success()) && follower_exit.is_some_and(|s| s.success());
    if !ok {
        println!("!! exit statuses: leader {leader_exit:?}, follower {follower_exit:?}");
    }

    step(t0, "7. both directories opened read-only and compared");
    let l = inspect(&lead_dir)?;
    let f = inspect(&rep_dir)?;
    for (who, (at, hash, digest)) in [("leader", &l), ("follower", &f)] {
        println!(
            "  {who:<9} commit {:>7}  chain hash {}  state digest {}",
            num(*at),
            short(hash),
            digest
        );
    }
    if l == f {
        println!("  => identical: same last commit, same history, same state");
    } else {
        println!("  !! the follower differs from the leader");
        ok = false;
    }

    step(
        t0,
        "8. a fork on purpose: while both are down, each side takes 3 writes of its own",
    );
    let side_writes = |dir: &Path, follower: bool, command: &str| -> shardstone::Result<u64> {
        let engine = if follower {
            // A copy of the replica, promoted: a second leader.
            let engine = Engine::open_follower(dir, Options::default())?;
            engine.promote();
            engine
        } else {
            Engine::open(dir)?
        };
        for i in 0..3u8 {
            engine.run(command, |tx| tx.put(b"key:split-brain", &[i]))?;
        }
        let (at, hash) = engine.last_commit();
        println!(
            "  {:<9} now at commit {}, chain hash {} ({command:?} wrote commits {}..={})",
            if follower { "the copy" } else { "leader" },
            num(at.get()),
            short(&hash),
            num(at.get() - 2),
            num(at.get())
        );
        engine.close()?;
        Ok(at.get())
    };
    copy_dir(&rep_dir, &fork_dir)?;
    side_writes(&lead_dir, false, "leader-side")?;
    let forked_at = side_writes(&fork_dir, true, "split-brain")?;
    println!("  the leader restarts and writes on; the copy runs as its follower:");
    let mut leader = Role::start("leader", &leader_args(&[]))?;
    let mut forked = Role::start(
        "forked",
        &[
            "follower",
            "--dir",
            fork,
            "--connect",
            &addr,
            "--name",
            "forked",
        ],
    )?;
    let forked_exit = forked.wait(Duration::from_secs(10));
    match forked_exit.and_then(|s| s.code()) {
        Some(2) => println!(
            "  => the forked follower refused the leader's records and exited with status 2 (fork); it stays at commit {}",
            num(forked_at)
        ),
        other => {
            println!("  !! the forked follower was expected to exit with status 2 (fork), got {other:?}");
            forked.kill();
            ok = false;
        }
    }
    let leader_exit = leader.stop();
    ok &= leader_exit.is_some_and(|s| s.success());
    println!();
    println!("[{:5.1}s] done", t0.elapsed().as_secs_f64());
    Ok(ok)
}
