//! shardstone replication over TCP: a leader and a follower in two processes.
//!
//! ```text
//! cargo run --release --example replicate                  # the demo (below)
//! head -c 32 /dev/urandom | xxd -p -c 64 > /tmp/repl.secret
//! cargo run --release --example replicate -- leader --dir /tmp/lead --listen 127.0.0.1:7070 \
//!     --secret-file /tmp/repl.secret
//! cargo run --release --example replicate -- follower --dir /tmp/rep1 --connect 127.0.0.1:7070 \
//!     --name rep1 --secret-file /tmp/repl.secret
//! cargo run --release --example replicate -- --help         # every option
//! ```
//!
//! Both sides prove they know the shared secret before anything is served, and
//! each follower needs a name of its own (its retention hold on the leader). See
//! `docs/replication.md` for the protocol, its limits and what production needs
//! beyond it.
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

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use proto::{num, Follower, Leader, LeaderCounters, Limits, Secret, Status, SyncError};
use shardstone::{Engine, Error, Options};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Keys the leader's writer spreads its writes over.
const KEYS: u64 = 2_000;
/// How long a leader that was asked to stop waits for its followers' ACKs.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Set when the process should stop cleanly (standard input closed).
static STOP: AtomicBool = AtomicBool::new(false);

struct LeaderArgs {
    dir: PathBuf,
    listen: SocketAddr,
    secret: Secret,
    limits: Limits,
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
    secret: Secret,
    limits: Limits,
    stdin_stop: bool,
}

enum Mode {
    Demo,
    Leader(LeaderArgs),
    Follower(FollowerArgs),
}

/// A number of seconds above zero.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a number of seconds above 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A follower name: what `Engine::subscribe_as` and the protocol accept.
fn follower_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > proto::MAX_NAME || s.contains(['\t', '\n', '\r']) {
        return Err(format!(
            "a name is 1 to {} bytes, without tabs or line breaks",
            proto::MAX_NAME
        ));
    }
    Ok(s.to_owned())
}

/// The options both roles share.
fn common_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("dir")
            .long("dir")
            .value_name("DIR")
            .required(true)
            .value_parser(value_parser!(PathBuf))
            .help("the database directory (created if missing)"),
    )
    .arg(
        Arg::new("secret-file")
            .long("secret-file")
            .value_name("FILE")
            .required(true)
            .value_parser(value_parser!(PathBuf))
            .help(
                "file holding the secret the leader and its followers share (at least 16 \
                 bytes; e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > FILE`); each side \
                 proves it knows it before anything is served",
            ),
    )
    .arg(
        Arg::new("max-frame")
            .long("max-frame")
            .value_name("BYTES")
            .value_parser(value_parser!(usize))
            .help(format!(
                "the largest record frame sent or read; a longer one closes the connection \
                 [default: {}]",
                proto::DEFAULT_MAX_FRAME
            )),
    )
    .arg(
        Arg::new("stop-on-stdin-eof")
            .long("stop-on-stdin-eof")
            .action(ArgAction::SetTrue)
            .help("stop cleanly when standard input closes"),
    )
}

fn cli() -> Command {
    Command::new("replicate")
        .about("shardstone replication over TCP: a leader and followers in separate processes")
        .after_help("Without a subcommand, runs the demo.")
        .subcommand(Command::new("demo").about("a leader and a follower as child processes, for ten seconds"))
        .subcommand(
            common_args(Command::new("leader").about("serve a database's commits to followers"))
                .arg(
                    Arg::new("listen")
                        .long("listen")
                        .value_name("ADDR")
                        .required(true)
                        .value_parser(value_parser!(SocketAddr))
                        .help("where the leader accepts followers, e.g. 127.0.0.1:7070"),
                )
                .arg(
                    Arg::new("write-rate")
                        .long("write-rate")
                        .value_name("N")
                        .default_value("1000")
                        .value_parser(value_parser!(u64))
                        .help("commits per second the leader writes (0: none)"),
                )
                .arg(
                    Arg::new("digest-every")
                        .long("digest-every")
                        .value_name("S")
                        .default_value("2")
                        .value_parser(positive_secs)
                        .help("seconds between state digests, computed off the streams and sent to every follower"),
                )
                .arg(
                    Arg::new("checkpoint-every")
                        .long("checkpoint-every")
                        .value_name("S")
                        .default_value("3")
                        .value_parser(positive_secs)
                        .help("seconds between leader checkpoints"),
                )
                .arg(
                    Arg::new("wait-for")
                        .long("wait-for")
                        .value_name("NAME")
                        .action(ArgAction::Append)
                        .value_parser(follower_name)
                        .help(
                            "a stopping leader waits (up to 10 s) for the follower NAME to \
                             acknowledge its last commit, connected or not (it waits for the \
                             connected named followers anyway)",
                        ),
                ),
        )
        .subcommand(
            common_args(Command::new("follower").about("follow a leader into a follower database"))
                .arg(
                    Arg::new("connect")
                        .long("connect")
                        .value_name("ADDR")
                        .required(true)
                        .value_parser(value_parser!(SocketAddr))
                        .help("the leader's address"),
                )
                .arg(
                    Arg::new("name")
                        .long("name")
                        .value_name("NAME")
                        .required(true)
                        .value_parser(follower_name)
                        .help(
                            "this follower's own name: the leader keeps the journal from its last \
                             acknowledged commit under it. One name per follower: the leader \
                             refuses a follower behind its name's hold",
                        ),
                ),
        )
}

/// The value of a required or defaulted argument.
fn arg<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Result<T, String> {
    m.get_one::<T>(id)
        .cloned()
        .ok_or_else(|| format!("--{id} is missing"))
}

fn parse_args() -> Result<Mode, String> {
    let matches = cli().get_matches();
    let Some((role, m)) = matches.subcommand() else {
        return Ok(Mode::Demo);
    };
    if role == "demo" {
        return Ok(Mode::Demo);
    }
    let secret_file: PathBuf = arg(m, "secret-file")?;
    let secret = Secret::from_file(&secret_file).map_err(|e| e.to_string())?;
    let limits = Limits {
        max_frame: m
            .get_one::<usize>("max-frame")
            .copied()
            .unwrap_or(proto::DEFAULT_MAX_FRAME),
        ..Limits::default()
    };
    let stdin_stop = m.get_flag("stop-on-stdin-eof");
    match role {
        "leader" => Ok(Mode::Leader(LeaderArgs {
            dir: arg(m, "dir")?,
            listen: arg(m, "listen")?,
            secret,
            limits,
            write_rate: arg(m, "write-rate")?,
            digest_every: arg(m, "digest-every")?,
            checkpoint_every: arg(m, "checkpoint-every")?,
            wait_for: m
                .get_many::<String>("wait-for")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            stdin_stop,
        })),
        "follower" => Ok(Mode::Follower(FollowerArgs {
            dir: arg(m, "dir")?,
            connect: arg(m, "connect")?,
            name: arg(m, "name")?,
            secret,
            limits,
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
            eprintln!("replicate: {e}");
            ExitCode::from(64)
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
    let counters = LeaderCounters::default();
    let log = |m: &str| println!("{m}");
    let ok = thread::scope(|s| {
        let writing =
            (a.write_rate > 0).then(|| s.spawn(|| write(&engine, a.write_rate, &stop_writes)));
        let server = Leader {
            engine: &engine,
            stop: &stop_serving,
            digest_every: Some(Duration::from_secs_f64(a.digest_every)),
            log: &log,
            secret: &a.secret,
            limits: a.limits,
            counters: &counters,
            before_digest: None,
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
    let result = thread::scope(|s| {
        let f = Follower {
            engine: &engine,
            leader: &leader,
            name: Some(&a.name),
            stop: &STOP,
            status: &status,
            log: &log,
            secret: &a.secret,
            limits: a.limits,
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
        let mut child = std::process::Command::new(std::env::current_exe()?)
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
    // The secret the leader and its followers share.
    let secret_path = root.join("secret");
    std::fs::create_dir_all(root)?;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&secret_path, hex + "\n")?;
    let secret = secret_path.to_str().ok_or("temp dir is not UTF-8")?;
    let leader_args = |wait_for: &'static [&'static str]| {
        let mut args = vec![
            "leader",
            "--dir",
            lead,
            "--listen",
            &addr,
            "--secret-file",
            secret,
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
    let follower_args = [
        "follower",
        "--dir",
        rep,
        "--connect",
        &addr,
        "--name",
        "replica",
        "--secret-file",
        secret,
    ];
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
            "--secret-file",
            secret,
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
