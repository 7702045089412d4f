//! The wire protocol of the replication example (`examples/replicate.rs`), shared
//! with its test (`tests/replicate_tcp.rs`): a leader serving any number of
//! followers over TCP, each follower applying the leader's commit records with
//! `Engine::apply`.
//!
//! Every message is a frame `len u32 | kind u8 | payload`, `len` counting the kind
//! and the payload. Integers are little-endian, hashes 32 raw bytes, text UTF-8.
//!
//! ```text
//! follower -> leader
//!   HELLO      1  "SSRP" | version u16 | last commit id u64 | its chain hash
//!                 | name len u16 | name (empty: no retention hold on the leader)
//!   ACK        8  commit id u64: everything up to it is applied (named followers)
//!   GOODBYE    9  reason: why the follower stops (a fork, say)
//! leader -> follower
//!   WELCOME    2  the leader's last commit id u64 | its chain hash
//!   RECORD     3  the leader's last commit id u64 | CommitRecord::encode() bytes
//!   HEARTBEAT  4  the leader's last commit id u64, after 500 ms without a record
//!   DIGEST     5  commit id u64 | entries u64 | digest [32]: the leader's
//!                 Snapshot::state_digest at that commit
//!   TRUNCATED  6  oldest available commit id u64: the journal the follower needs is gone
//!   REFUSED    7  reason: the leader cannot serve this follower
//! ```
//!
//! A session: the follower sends HELLO with `Engine::last_commit()`; the leader
//! subscribes from that id (`Engine::subscribe_as` for a named follower, so that
//! checkpoints keep the journal until it ACKs) and answers WELCOME with its own last
//! commit, then streams every commit after the follower's: history first, then
//! live. A follower ahead of the leader (`Error::AheadOfLastCommit` from the
//! subscription) gets WELCOME only, and the session ends. The follower applies each record in order; `Engine::apply` refuses one
//! whose `prev_hash` is not the follower's chain hash (`Error::Fork`), so the first
//! record checks that the two histories agree at the follower's last commit. WELCOME
//! covers the cases with no such record: a leader exactly at the follower's commit
//! must have the same hash there, and a leader behind the follower either
//! disagrees with the follower's history at its last commit (a fork) or lost
//! commits the follower has (`SyncError::LeaderBehind`).
//!
//! A follower that loses the connection (the leader restarted, the network broke,
//! nothing heard for 3 s) reconnects with backoff and starts over from its own last
//! commit, so nothing is applied twice and nothing is skipped. A fork, a truncated
//! journal, a digest mismatch or a protocol error ends `Follower::run` with an error.

use shardstone::{ChainHash, CommitRecord, Engine, Error, Feed, StateDigest};
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"SSRP";
const VERSION: u16 = 1;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const RECORD: u8 = 3;
const HEARTBEAT: u8 = 4;
const DIGEST: u8 = 5;
const TRUNCATED: u8 = 6;
const REFUSED: u8 = 7;
const ACK: u8 = 8;
const GOODBYE: u8 = 9;

/// How long a socket read or a feed wait lasts before the stop flag is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often the leader polls for new connections.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// The leader sends a heartbeat after this long without a record...
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// ...and a follower that hears nothing for this long reconnects.
const SILENCE: Duration = Duration::from_secs(3);
/// How long either side waits for the other's first message.
const HANDSHAKE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff of a follower: doubles from MIN to MAX while the leader
/// stays unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How often a named follower acknowledges what it applied.
const ACK_EVERY: Duration = Duration::from_millis(100);

/// Where both sides write what happens (connections, losses, digest checks).
pub type Log<'a> = &'a (dyn Fn(&str) + Sync);

/// One protocol message.
#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Hello {
        last: u64,
        hash: ChainHash,
        name: String,
    },
    Welcome {
        head: u64,
        hash: ChainHash,
    },
    Record {
        head: u64,
        record: Vec<u8>,
    },
    Heartbeat {
        head: u64,
    },
    Digest {
        commit_id: u64,
        digest: StateDigest,
    },
    Truncated {
        oldest_available: u64,
    },
    Refused {
        reason: String,
    },
    Ack {
        applied: u64,
    },
    Goodbye {
        reason: String,
    },
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Msg {
    fn kind_name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "HELLO",
            Msg::Welcome { .. } => "WELCOME",
            Msg::Record { .. } => "RECORD",
            Msg::Heartbeat { .. } => "HEARTBEAT",
            Msg::Digest { .. } => "DIGEST",
            Msg::Truncated { .. } => "TRUNCATED",
            Msg::Refused { .. } => "REFUSED",
            Msg::Ack { .. } => "ACK",
            Msg::Goodbye { .. } => "GOODBYE",
        }
    }

    /// The whole frame, length prefix included.
    fn encode(&self) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; 4];
        match self {
            Msg::Hello { last, hash, name } => {
                b.push(HELLO);
                b.extend_from_slice(MAGIC);
                b.extend_from_slice(&VERSION.to_le_bytes());
                b.extend_from_slice(&last.to_le_bytes());
                b.extend_from_slice(&hash.0);
                let len = u16::try_from(name.len()).map_err(|_| invalid("name too long"))?;
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(name.as_bytes());
            }
            Msg::Welcome { head, hash } => {
                b.push(WELCOME);
                b.extend_from_slice(&head.to_le_bytes());
                b.extend_from_slice(&hash.0);
            }
            Msg::Record { head, record } => {
                b.reserve(9 + record.len());
                b.push(RECORD);
                b.extend_from_slice(&head.to_le_bytes());
                b.extend_from_slice(record);
            }
            Msg::Heartbeat { head } => {
                b.push(HEARTBEAT);
                b.extend_from_slice(&head.to_le_bytes());
            }
            Msg::Digest { commit_id, digest } => {
                b.push(DIGEST);
                b.extend_from_slice(&commit_id.to_le_bytes());
                b.extend_from_slice(&digest.entries.to_le_bytes());
                b.extend_from_slice(&digest.digest);
            }
            Msg::Truncated { oldest_available } => {
                b.push(TRUNCATED);
                b.extend_from_slice(&oldest_available.to_le_bytes());
            }
            Msg::Refused { reason } => {
                b.push(REFUSED);
                b.extend_from_slice(reason.as_bytes());
            }
            Msg::Ack { applied } => {
                b.push(ACK);
                b.extend_from_slice(&applied.to_le_bytes());
            }
            Msg::Goodbye { reason } => {
                b.push(GOODBYE);
                b.extend_from_slice(reason.as_bytes());
            }
        }
        let len = u32::try_from(b.len() - 4).map_err(|_| invalid("message over 4 GiB"))?;
        b[..4].copy_from_slice(&len.to_le_bytes());
        Ok(b)
    }

    fn decode(kind: u8, payload: &[u8]) -> io::Result<Msg> {
        let mut c = Cursor(payload);
        let msg = match kind {
            HELLO => {
                if c.take(4)? != MAGIC {
                    return Err(invalid("not a shardstone replication hello"));
                }
                let version = c.u16()?;
                if version != VERSION {
                    return Err(invalid(format!(
                        "protocol version {version}, this side speaks {VERSION}"
                    )));
                }
                let last = c.u64()?;
                let hash = c.hash()?;
                let len = c.u16()? as usize;
                let name = c.text(len)?;
                Msg::Hello { last, hash, name }
            }
            WELCOME => Msg::Welcome {
                head: c.u64()?,
                hash: c.hash()?,
            },
            RECORD => {
                let head = c.u64()?;
                let record = std::mem::take(&mut c.0).to_vec();
                Msg::Record { head, record }
            }
            HEARTBEAT => Msg::Heartbeat { head: c.u64()? },
            DIGEST => {
                let commit_id = c.u64()?;
                let entries = c.u64()?;
                let digest = c.hash()?.0;
                Msg::Digest {
                    commit_id,
                    digest: StateDigest { digest, entries },
                }
            }
            TRUNCATED => Msg::Truncated {
                oldest_available: c.u64()?,
            },
            REFUSED => Msg::Refused {
                reason: c.text(payload.len())?,
            },
            ACK => Msg::Ack { applied: c.u64()? },
            GOODBYE => Msg::Goodbye {
                reason: c.text(payload.len())?,
            },
            other => return Err(invalid(format!("unknown message kind {other}"))),
        };
        if !c.0.is_empty() {
            return Err(invalid(format!(
                "{} bytes left over after a {} message",
                c.0.len(),
                msg.kind_name()
            )));
        }
        Ok(msg)
    }
}

/// Reads a message payload front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("a message is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn hash(&mut self) -> io::Result<ChainHash> {
        Ok(ChainHash(self.take(32)?.try_into().expect("32 bytes")))
    }

    fn text(&mut self, len: usize) -> io::Result<String> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| invalid("text is not UTF-8"))
    }
}

fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode()?)
}

/// Splits a byte stream into messages. A read that times out leaves a partial
/// message buffered for the next `poll`, so sockets can have short read timeouts.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
}

impl Reader {
    /// The next message, reading from `src` as needed; `None` if a read timed out
    /// first. The peer closing the connection is `UnexpectedEof`; bytes that are
    /// not a message are `InvalidData`.
    fn poll(&mut self, mut src: impl Read) -> io::Result<Option<Msg>> {
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(Some(msg));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + (64 << 10), 0);
            let read = src.read(&mut self.buf[old..]);
            self.buf.truncate(old + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the other side closed the connection",
                    ))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<Msg>> {
        let avail = &self.buf[self.start..];
        let Some(len) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(invalid("an empty message"));
        }
        let Some(frame) = avail.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = Msg::decode(frame[0], &frame[1..])?;
        self.start += 4 + len;
        Ok(Some(msg))
    }
}

/// `1234567` → `1,234,567`, for the logs.
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sleeps `d`, or less if `stop` is set meanwhile.
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}

// ---------------------------------------------------------------------------
// Leader

/// Serves the commits of `engine` to followers.
pub struct Leader<'a> {
    pub engine: &'a Engine,
    /// Set it to make `serve` close every connection and return.
    pub stop: &'a AtomicBool,
    /// How often each follower is sent the leader's state digest to check.
    pub digest_every: Option<Duration>,
    pub log: Log<'a>,
}

/// How a leader's session with one follower ended, as its listening side saw it.
enum Heard {
    Goodbye(String),
    Lost(io::Error),
    Quiet,
}

impl Leader<'_> {
    /// Accepts followers on `listener`, each served on a thread of its own, until
    /// `stop` is set; returns once every connection is closed and its thread done.
    pub fn serve(&self, listener: &TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        thread::scope(|s| {
            while !self.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        s.spawn(move || self.serve_one(stream, peer));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
                    Err(e) => {
                        (self.log)(&format!("accept failed: {e}"));
                        thread::sleep(ACCEPT_POLL);
                    }
                }
            }
        });
        Ok(())
    }

    fn serve_one(&self, stream: TcpStream, peer: SocketAddr) {
        let mut who = peer.to_string();
        let end = self.session(&stream, &mut who);
        let _ = stream.shutdown(Shutdown::Both);
        match end {
            Ok(end) => (self.log)(&format!("follower {who} {end}")),
            Err(e) => (self.log)(&format!("follower {who} dropped: {e}")),
        }
    }

    /// One follower, from its HELLO to the end; returns how it ended.
    fn session(&self, stream: &TcpStream, who: &mut String) -> io::Result<String> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut reader = Reader::default();
        let started = Instant::now();
        let (from, name) = loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok("left before its hello: the leader is stopping".into());
            }
            match reader.poll(stream)? {
                Some(Msg::Hello { last, name, .. }) => break (last, name),
                Some(other) => {
                    return Err(invalid(format!("sent {} first", other.kind_name())));
                }
                None if started.elapsed() > HANDSHAKE => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no hello"));
                }
                None => {}
            }
        };
        if !name.is_empty() {
            *who = format!("{name:?} ({who})");
        }
        let mut out = BufWriter::with_capacity(64 << 10, stream);
        let feed = if name.is_empty() {
            self.engine.subscribe(from)
        } else {
            self.engine.subscribe_as(&name, from)
        };
        let mut feed = match feed {
            Ok(feed) => feed,
            // A follower ahead of us: WELCOME with our last commit is what it
            // needs to tell a fork from a leader that lost commits; nothing to stream.
            Err(Error::AheadOfLastCommit { last, .. }) => {
                let (head, hash) = self.engine.last_commit();
                send(
                    &mut out,
                    &Msg::Welcome {
                        head: head.get(),
                        hash,
                    },
                )?;
                out.flush()?;
                return Ok(format!(
                    "is ahead of us: it asked for the commits after {}, we end at {}",
                    num(from),
                    num(last.get())
                ));
            }
            Err(e) => {
                send(
                    &mut out,
                    &Msg::Refused {
                        reason: e.to_string(),
                    },
                )?;
                out.flush()?;
                return Ok(format!("refused: {e}"));
            }
        };
        let (head, hash) = self.engine.last_commit();
        send(
            &mut out,
            &Msg::Welcome {
                head: head.get(),
                hash,
            },
        )?;
        out.flush()?;
        (self.log)(&format!(
            "follower {who} connected at commit {}; the leader is at {}",
            num(from),
            num(head.get())
        ));
        let acked = AtomicU64::new(from);
        let done = AtomicBool::new(false);
        let (streamed, heard) = thread::scope(|s| {
            let listening = s.spawn(|| self.hear(stream, reader, &acked, &done));
            let streamed = self.stream(&mut feed, &mut out, !name.is_empty(), &acked, &done);
            done.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            (
                streamed,
                listening.join().expect("the listening thread panicked"),
            )
        });
        if !name.is_empty() {
            // An ACK that came with the follower's last words.
            feed.ack(acked.load(Ordering::SeqCst));
        }
        let at = num(feed.position().get());
        match (heard, streamed) {
            (Heard::Goodbye(reason), _) => Ok(format!("left at commit {at}: {reason}")),
            (_, Ok(Some(note))) => Ok(note),
            (Heard::Lost(e), _) => Ok(format!("disconnected at commit {at}: {e}")),
            (Heard::Quiet, Err(e)) => Err(e),
            (Heard::Quiet, Ok(None)) => Ok(format!("closed at commit {at}: the leader stopped")),
        }
    }

    /// Streams the feed's records (and heartbeats and digests) until the leader
    /// stops or the follower is gone; `Some` says why the leader ended it.
    fn stream(
        &self,
        feed: &mut Feed,
        out: &mut BufWriter<&TcpStream>,
        named: bool,
        acked: &AtomicU64,
        done: &AtomicBool,
    ) -> io::Result<Option<String>> {
        let mut last_sent = Instant::now();
        let mut last_digest = Instant::now();
        // The commit of the last digest sent: an idle leader sends no more.
        let mut digested = None;
        loop {
            if self.stop.load(Ordering::SeqCst) || done.load(Ordering::SeqCst) {
                out.flush()?;
                return Ok(None);
            }
            if named {
                feed.ack(acked.load(Ordering::SeqCst));
            }
            let next = match feed.try_next() {
                Ok(None) => {
                    out.flush()?;
                    feed.recv_timeout(POLL)
                }
                other => other,
            };
            match next {
                Ok(Some(rec)) => {
                    let record = rec.encode().map_err(io::Error::other)?;
                    let head = self.engine.commit_id().get();
                    send(out, &Msg::Record { head, record })?;
                    last_sent = Instant::now();
                }
                Ok(None) => {
                    if last_sent.elapsed() >= HEARTBEAT_EVERY {
                        let head = self.engine.commit_id().get();
                        send(out, &Msg::Heartbeat { head })?;
                        out.flush()?;
                        last_sent = Instant::now();
                    }
                }
                Err(Error::Truncated { oldest_available }) => {
                    let oldest_available = oldest_available.get();
                    send(out, &Msg::Truncated { oldest_available })?;
                    out.flush()?;
                    return Ok(Some(format!(
                        "needs commit {} but the journal starts at {}: told it so",
                        num(Feed::position(feed).get() + 1),
                        num(oldest_available)
                    )));
                }
                Err(e) => {
                    send(
                        out,
                        &Msg::Refused {
                            reason: e.to_string(),
                        },
                    )?;
                    out.flush()?;
                    return Ok(Some(format!("refused: {e}")));
                }
            }
            if let Some(every) = self.digest_every {
                if last_digest.elapsed() >= every && digested != Some(self.engine.commit_id()) {
                    // The snapshot is taken after the feed delivered its last
                    // record, so it is at or after every record sent so far: the
                    // follower gets to that commit and checks there.
                    let snap = self.engine.snapshot();
                    let digest = snap.state_digest().map_err(io::Error::other)?;
                    let commit_id = snap.commit_id().get();
                    send(out, &Msg::Digest { commit_id, digest })?;
                    last_digest = Instant::now();
                    digested = Some(snap.commit_id());
                }
            }
        }
    }

    /// Reads what the follower sends (ACKs, a GOODBYE) until it goes or `done`.
    fn hear(
        &self,
        stream: &TcpStream,
        mut reader: Reader,
        acked: &AtomicU64,
        done: &AtomicBool,
    ) -> Heard {
        let heard = loop {
            if done.load(Ordering::SeqCst) {
                break Heard::Quiet;
            }
            match reader.poll(stream) {
                Ok(Some(Msg::Ack { applied })) => {
                    acked.fetch_max(applied, Ordering::SeqCst);
                }
                Ok(Some(Msg::Goodbye { reason })) => break Heard::Goodbye(reason),
                Ok(Some(other)) => {
                    break Heard::Lost(invalid(format!("it sent {}", other.kind_name())));
                }
                Ok(None) => {}
                Err(e) => break Heard::Lost(e),
            }
        };
        done.store(true, Ordering::SeqCst);
        heard
    }
}

// ---------------------------------------------------------------------------
// Follower

/// Why a follower stopped following.
#[derive(Debug)]
pub enum SyncError {
    /// The engine refused the leader's history: `Error::Fork` (the two histories
    /// disagree), `Error::Truncated` (the leader no longer has the commits this
    /// follower needs), or a record that could not be applied.
    Engine(Error),
    /// The leader's last commit is before ours and agrees with our history there:
    /// it lost commits we applied, or it is not our leader.
    LeaderBehind { ours: u64, leader: u64 },
    /// Our state at `commit_id` is not the leader's.
    DigestMismatch {
        commit_id: u64,
        ours: StateDigest,
        theirs: StateDigest,
    },
    /// The leader refused us or broke the protocol.
    Protocol(String),
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Engine(Error::Fork {
                commit_id,
                ours,
                theirs,
            }) => write!(
                f,
                "our history and the leader's disagree at {commit_id}: our chain hash {ours}, the leader's {theirs}"
            ),
            SyncError::Engine(Error::Truncated { oldest_available }) => write!(
                f,
                "the leader no longer has the commits we need: its journal starts at {oldest_available}"
            ),
            SyncError::Engine(e) => write!(f, "{e}"),
            SyncError::LeaderBehind { ours, leader } => write!(
                f,
                "the leader is at commit {leader}, behind us at commit {ours}: it lost commits we applied"
            ),
            SyncError::DigestMismatch {
                commit_id,
                ours,
                theirs,
            } => write!(
                f,
                "state differs from the leader's at commit {commit_id}: ours {ours}, the leader's {theirs}"
            ),
            SyncError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

/// How far a follower is, for progress reports; `Follower::run` keeps it current.
#[derive(Debug, Default)]
pub struct Status {
    /// Our last commit.
    pub applied: AtomicU64,
    /// The leader's last commit, as of its latest message.
    pub leader_head: AtomicU64,
    /// Whether a session with the leader is open.
    pub connected: AtomicBool,
    /// Sessions opened so far (a WELCOME each).
    pub sessions: AtomicU64,
    /// State digests checked against the leader's, all equal.
    pub digests_matched: AtomicU64,
}

/// Follows a leader: catches up from the engine's last commit, then applies live
/// commits, reconnecting whenever the connection is lost.
pub struct Follower<'a> {
    /// A follower engine (`Engine::open_follower`, `Engine::in_memory_follower`).
    pub engine: &'a Engine,
    /// Where the leader is: asked again before every connection attempt.
    pub leader: &'a (dyn Fn() -> SocketAddr + Sync),
    /// A name gives this follower a retention hold on the leader (see
    /// `Engine::subscribe_as`), moved on by its ACKs; one name per follower. The
    /// hold outlives the follower (a forked one too): the leader's operator
    /// releases it (`Engine::release_consumer`), or it lapses past
    /// `Options::retention_limit_bytes`.
    pub name: Option<&'a str>,
    /// Set it to make `run` return `Ok`.
    pub stop: &'a AtomicBool,
    pub status: &'a Status,
    pub log: Log<'a>,
}

/// Why a session ended early.
enum Interrupt {
    /// The connection failed: reconnect.
    Lost(io::Error),
    /// Following cannot go on.
    Fatal(SyncError),
}

impl From<io::Error> for Interrupt {
    fn from(e: io::Error) -> Interrupt {
        if e.kind() == io::ErrorKind::InvalidData {
            Interrupt::Fatal(SyncError::Protocol(e.to_string()))
        } else {
            Interrupt::Lost(e)
        }
    }
}

fn fatal(e: Error) -> Interrupt {
    Interrupt::Fatal(SyncError::Engine(e))
}

impl Follower<'_> {
    /// Follows until `stop` (then `Ok`) or until following cannot go on.
    pub fn run(&self) -> Result<(), SyncError> {
        self.status
            .applied
            .store(self.engine.commit_id().get(), Ordering::SeqCst);
        let mut backoff = BACKOFF_MIN;
        // Connection attempts that failed in a row.
        let mut failed = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            let addr = (self.leader)();
            let mut welcomed = false;
            let result = self.session(addr, &mut welcomed, failed);
            self.status.connected.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => return Ok(()),
                Err(Interrupt::Fatal(e)) => return Err(e),
                Err(Interrupt::Lost(e)) if welcomed => {
                    (self.log)(&format!("lost the leader at {addr}: {e}; reconnecting"));
                    failed = 0;
                    backoff = BACKOFF_MIN;
                }
                Err(Interrupt::Lost(e)) => {
                    if failed == 0 {
                        (self.log)(&format!("cannot reach the leader at {addr}: {e}; retrying"));
                    }
                    failed += 1;
                }
            }
            pause(backoff, self.stop);
            if failed > 0 {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Ok(())
    }

    fn session(&self, addr: SocketAddr, welcomed: &mut bool, failed: u32) -> Result<(), Interrupt> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let result = self.converse(&stream, addr, welcomed, failed);
        if let Err(Interrupt::Fatal(e)) = &result {
            // Best effort: the leader logs why we left.
            let reason = e.to_string();
            let _ = send(&mut &stream, &Msg::Goodbye { reason });
        }
        let _ = stream.shutdown(Shutdown::Both);
        result
    }

    fn converse(
        &self,
        stream: &TcpStream,
        addr: SocketAddr,
        welcomed: &mut bool,
        failed: u32,
    ) -> Result<(), Interrupt> {
        let (engine, status) = (self.engine, self.status);
        let (last, hash) = engine.last_commit();
        let mut applied = last.get();
        let name = self.name.unwrap_or("").to_owned();
        send(
            &mut &*stream,
            &Msg::Hello {
                last: applied,
                hash,
                name,
            },
        )?;
        let mut reader = Reader::default();
        let started = Instant::now();
        let (head, their_hash) = loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match reader.poll(stream)? {
                Some(Msg::Welcome { head, hash }) => break (head, hash),
                Some(other) => return Err(self.unexpected(other)),
                None if started.elapsed() > HANDSHAKE => {
                    return Err(Interrupt::Lost(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer to our hello",
                    )));
                }
                None => {}
            }
        };
        *welcomed = true;
        self.check_start((applied, hash), (head, their_hash))
            .map_err(Interrupt::Fatal)?;
        status.applied.store(applied, Ordering::SeqCst);
        status.leader_head.store(head, Ordering::SeqCst);
        status.connected.store(true, Ordering::SeqCst);
        status.sessions.fetch_add(1, Ordering::SeqCst);
        let after = match failed {
            0 => String::new(),
            1 => " after 1 failed attempt".to_owned(),
            n => format!(" after {n} failed attempts"),
        };
        let behind = match head.saturating_sub(applied) {
            0 => String::new(),
            n => format!(", {} commits to catch up", num(n)),
        };
        (self.log)(&format!(
            "connected to the leader at {addr}{after}: we are at commit {}, it is at {}{behind}",
            num(applied),
            num(head)
        ));
        let mut acked = applied;
        let mut acked_at = Instant::now();
        let mut heard = Instant::now();
        // A leader digest for a commit we have not reached yet.
        let mut pending: Option<(u64, StateDigest)> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                if self.name.is_some() && applied > acked {
                    let _ = send(&mut &*stream, &Msg::Ack { applied });
                }
                return Ok(());
            }
            match reader.poll(stream)? {
                Some(msg) => {
                    heard = Instant::now();
                    match msg {
                        Msg::Record { head, record } => {
                            let rec = CommitRecord::decode(&record).map_err(fatal)?;
                            engine.apply(&rec).map_err(fatal)?;
                            applied = rec.commit_id.get();
                            status.applied.store(applied, Ordering::SeqCst);
                            status.leader_head.store(head, Ordering::SeqCst);
                            if let Some((at, theirs)) = pending {
                                if at == applied {
                                    pending = None;
                                    self.check_digest(at, theirs)?;
                                }
                            }
                        }
                        Msg::Heartbeat { head } => status.leader_head.store(head, Ordering::SeqCst),
                        Msg::Digest { commit_id, digest } => {
                            if commit_id == applied {
                                self.check_digest(commit_id, digest)?;
                            } else if commit_id > applied && pending.is_none() {
                                pending = Some((commit_id, digest));
                            }
                        }
                        other => return Err(self.unexpected(other)),
                    }
                }
                None if heard.elapsed() > SILENCE => {
                    return Err(Interrupt::Lost(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing heard from the leader for {} s", SILENCE.as_secs()),
                    )));
                }
                None => {}
            }
            if self.name.is_some() && applied > acked && acked_at.elapsed() >= ACK_EVERY {
                send(&mut &*stream, &Msg::Ack { applied })?;
                acked = applied;
                acked_at = Instant::now();
            }
        }
    }

    /// A message the follower does not expect where it came: a truncated journal,
    /// a refusal, or a protocol error.
    fn unexpected(&self, msg: Msg) -> Interrupt {
        match msg {
            Msg::Truncated { oldest_available } => fatal(Error::Truncated {
                oldest_available: oldest_available.into(),
            }),
            Msg::Refused { reason } => Interrupt::Fatal(SyncError::Protocol(format!(
                "the leader refused us: {reason}"
            ))),
            other => Interrupt::Fatal(SyncError::Protocol(format!(
                "the leader sent an unexpected {}",
                other.kind_name()
            ))),
        }
    }

    /// The checks WELCOME allows: see the module documentation.
    fn check_start(
        &self,
        (ours, our_hash): (u64, ChainHash),
        (head, their_hash): (u64, ChainHash),
    ) -> Result<(), SyncError> {
        if head == ours && their_hash != our_hash {
            return Err(SyncError::Engine(Error::Fork {
                commit_id: ours.into(),
                ours: our_hash,
                theirs: their_hash,
            }));
        }
        if head < ours {
            return match self.own_hash_at(head)? {
                Some(mine) if mine != their_hash => Err(SyncError::Engine(Error::Fork {
                    commit_id: head.into(),
                    ours: mine,
                    theirs: their_hash,
                })),
                _ => Err(SyncError::LeaderBehind { ours, leader: head }),
            };
        }
        Ok(())
    }

    /// Our chain hash at commit `id`, if our journal still has it.
    fn own_hash_at(&self, id: u64) -> Result<Option<ChainHash>, SyncError> {
        if id == 0 {
            return Ok(Some(ChainHash::genesis()));
        }
        let mut feed = self.engine.subscribe(id - 1).map_err(SyncError::Engine)?;
        match feed.try_next() {
            Ok(Some(rec)) if rec.commit_id.get() == id => Ok(Some(rec.hash)),
            Ok(_) | Err(Error::Truncated { .. }) => Ok(None),
            Err(e) => Err(SyncError::Engine(e)),
        }
    }

    /// Compares our state at `at` (our last commit: nothing else writes a
    /// follower) with the leader's digest of it.
    fn check_digest(&self, at: u64, theirs: StateDigest) -> Result<(), Interrupt> {
        let snap = self.engine.snapshot();
        if snap.commit_id().get() != at {
            return Ok(());
        }
        let ours = snap.state_digest().map_err(fatal)?;
        if ours != theirs {
            return Err(Interrupt::Fatal(SyncError::DigestMismatch {
                commit_id: at,
                ours,
                theirs,
            }));
        }
        self.status.digests_matched.fetch_add(1, Ordering::SeqCst);
        (self.log)(&format!(
            "state digest at commit {} matches the leader's ({} entries)",
            num(at),
            num(ours.entries)
        ));
        Ok(())
    }
}
