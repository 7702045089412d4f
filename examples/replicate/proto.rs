//! The wire protocol of the replication example (`examples/replicate.rs`), shared
//! with its test (`tests/replicate_tcp.rs`): a leader serving any number of
//! followers over TCP, each follower applying the leader's commit records with
//! `Engine::apply`. `docs/replication.md` describes it for operators.
//!
//! Every message is a frame `len u32 | kind u8 | payload`, `len` counting the kind
//! and the payload. Integers are little-endian, hashes and nonces 32 raw bytes,
//! text UTF-8.
//!
//! ```text
//! follower -> leader
//!   HELLO      1  "SSRP" | version u16 | last commit id u64 | its chain hash
//!                 | name len u16 | name (empty: no retention hold) | nonce [32]
//!   AUTH       11 proof [32]: keyed BLAKE3 of the shared secret over
//!                 "follower" | HELLO payload | the leader's nonce
//!   ACK        8  commit id u64: everything up to it is applied; also sent
//!                 every second as a keepalive
//!   GOODBYE    9  reason: why the follower stops (a fork, say)
//! leader -> follower
//!   CHALLENGE  10 nonce [32] | proof [32]: keyed BLAKE3 of the shared secret
//!                 over "leader" | HELLO payload | this nonce
//!   WELCOME    2  the leader's last commit id u64 | its chain hash
//!   RECORD     3  the leader's last commit id u64 | CommitRecord::encode() bytes
//!   HEARTBEAT  4  the leader's last commit id u64, after 500 ms without a record
//!   DIGEST     5  commit id u64 | entries u64 | digest [32]: the leader's
//!                 Snapshot::state_digest at that commit
//!   TRUNCATED  6  oldest available commit id u64: the journal the follower needs is gone
//!   REFUSED    7  reason: the leader cannot serve this follower
//! ```
//!
//! A session: the follower sends HELLO with `Engine::last_commit()` and a fresh
//! nonce; the leader answers CHALLENGE, proving it knows the shared secret; the
//! follower checks that proof and answers AUTH, proving it knows the secret too.
//! Both proofs cover the HELLO and both nonces, so neither can be replayed into
//! another session. Only then does the leader look at what the HELLO claims: it
//! checks the follower's chain hash at its last commit against its own journal,
//! and for a named follower refuses a position behind the name's retention hold
//! (a hold never moves backwards). With both checks passed it subscribes from that
//! commit (`Engine::subscribe_as` for a named follower, so that checkpoints keep
//! the journal until it ACKs); a follower whose hash does not match is served
//! without touching any hold, and stops at the first record (a fork). The leader
//! answers WELCOME with its own last commit, then streams every commit after the
//! follower's: history first, then live. The follower applies each record in
//! order; `Engine::apply` refuses one whose `prev_hash` is not the follower's chain
//! hash (`Error::Fork`). WELCOME covers the cases with no such record: a leader
//! exactly at the follower's commit must have the same hash there, and a leader
//! behind the follower either disagrees with the follower's history at its last
//! commit (a fork) or lost commits the follower has (`SyncError::LeaderBehind`).
//!
//! Bounds: no frame longer than its limit is read (`Limits::max_frame` for what the
//! leader streams, [`HANDSHAKE_MAX_FRAME`] before the handshake is done and for
//! everything a follower sends); the length is checked before anything of the
//! frame is buffered, and bytes are read 64 KiB at a time, so a connection holds at
//! most its limit plus 64 KiB. A frame must arrive whole within
//! `Limits::frame_deadline`, the handshake within 5 s, and each side must hear
//! from the other within `Limits::idle` (the leader's heartbeats, the follower's
//! ACKs). The leader computes state digests on one thread of its own, from a
//! snapshot, at most once per `digest_every`, and sends the newest one to every
//! follower: no follower's stream waits for a digest.
//!
//! A follower that loses the connection (the leader restarted, the network broke,
//! nothing heard for 3 s) reconnects with backoff and starts over from its own last
//! commit, so nothing is applied twice and nothing is skipped. A fork, a truncated
//! journal, a digest mismatch, a failed authentication or a protocol error ends
//! `Follower::run` with an error.

use shardstone::{ChainHash, CommitRecord, Engine, Error, Feed, StateDigest, MAX_KEY_LEN};
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"SSRP";
const VERSION: u16 = 2;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const RECORD: u8 = 3;
const HEARTBEAT: u8 = 4;
const DIGEST: u8 = 5;
const TRUNCATED: u8 = 6;
const REFUSED: u8 = 7;
const ACK: u8 = 8;
const GOODBYE: u8 = 9;
const CHALLENGE: u8 = 10;
const AUTH: u8 = 11;

/// How long a socket read or a feed wait lasts before the stop flag is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often the leader polls for new connections.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// The leader sends a heartbeat after this long without a record...
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long either side waits for each message of the handshake.
const HANDSHAKE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff of a follower: doubles from MIN to MAX while the leader
/// stays unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How often a named follower acknowledges what it applied...
const ACK_EVERY: Duration = Duration::from_millis(100);
/// ...and how often any follower sends an ACK anyway, so the leader hears it.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Bytes asked of the socket per read: the most a frame's reading buffers past
/// its limit.
const READ_CHUNK: usize = 64 << 10;

/// The largest frame read before the handshake is done, and the largest a
/// follower may ever send (HELLO, AUTH, ACK, GOODBYE are small).
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
/// The longest follower name, in bytes.
pub const MAX_NAME: usize = 255;
/// The default `Limits::max_frame`: a record holding one key and one value of the
/// largest size the engine accepts by default (`MAX_KEY_LEN`,
/// `Options::max_value_len` = 16 MiB) plus 4 MiB for the record's other ops and
/// framing. A commit whose record is larger is refused by the leader with a
/// message naming its size: raise the limit on both sides for it.
pub const DEFAULT_MAX_FRAME: usize = (16 << 20) + MAX_KEY_LEN + (4 << 20);
/// Context string of the key derivation from the shared secret.
const KEY_CONTEXT: &str = "shardstone examples/replicate 2024 follower authentication v2";

/// Where both sides write what happens (connections, losses, digest checks).
pub type Log<'a> = &'a (dyn Fn(&str) + Sync);

/// The bounds every connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest frame the leader sends and a follower reads (a RECORD with its
    /// header): a longer length prefix closes the connection.
    pub max_frame: usize,
    /// How long the rest of a frame may take to arrive once its first byte did.
    pub frame_deadline: Duration,
    /// How long a side may hear nothing from the other before it drops the
    /// connection (the leader sends heartbeats every 500 ms, a follower ACKs
    /// every second).
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            frame_deadline: Duration::from_secs(30),
            idle: Duration::from_secs(3),
        }
    }
}

/// A frame whose length prefix is over the reader's limit: the connection is
/// dropped before any of it is read. Inside the `io::Error` (`InvalidData`) that
/// reports it; see [`frame_too_large`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The length the peer announced.
    pub len: u64,
    /// The limit in force.
    pub max: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the peer announced a frame of {} bytes, over the limit of {} bytes",
            self.len, self.max
        )
    }
}

impl std::error::Error for FrameTooLarge {}

/// The [`FrameTooLarge`] inside `e`, if that is what `e` reports.
pub fn frame_too_large(e: &io::Error) -> Option<FrameTooLarge> {
    e.get_ref()?.downcast_ref::<FrameTooLarge>().copied()
}

/// The secret a leader and its followers share: each side proves it knows it
/// before the leader serves anything or touches a retention hold.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

impl Secret {
    /// The secret from its bytes (at least 16; a random 32-byte value, say, in
    /// hex). The key used is derived from them with BLAKE3's key derivation.
    pub fn new(bytes: &[u8]) -> io::Result<Secret> {
        if bytes.len() < 16 {
            return Err(invalid(format!(
                "the shared secret has {} bytes; it needs at least 16",
                bytes.len()
            )));
        }
        Ok(Secret {
            key: blake3::derive_key(KEY_CONTEXT, bytes),
        })
    }

    /// The secret from the file at `path`; a trailing line break is not part of it.
    // Used by the example, not by the test that shares this file.
    #[cfg_attr(test, allow(dead_code))]
    pub fn from_file(path: &Path) -> io::Result<Secret> {
        let bytes = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read the shared secret from {}: {e}", path.display()),
            )
        })?;
        let end = bytes
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
            .map_or(0, |i| i + 1);
        Secret::new(&bytes[..end])
    }

    /// The proof that `role` knows the secret, for the session of `hello` (its
    /// payload) and the leader's `nonce`.
    fn proof(&self, role: &str, hello: &[u8], nonce: &[u8; 32]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(role.as_bytes());
        h.update(&(hello.len() as u64).to_le_bytes());
        h.update(hello);
        h.update(nonce);
        h.finalize()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// 32 bytes from the kernel's random source.
fn nonce() -> io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    Hello {
        last: u64,
        hash: ChainHash,
        name: String,
        nonce: [u8; 32],
    },
    Challenge {
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    Auth {
        proof: [u8; 32],
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

/// Length prefix and kind byte.
const FRAME_HEAD: usize = 5;

impl Msg {
    fn kind_name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "HELLO",
            Msg::Challenge { .. } => "CHALLENGE",
            Msg::Auth { .. } => "AUTH",
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
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; 4];
        match self {
            Msg::Hello {
                last,
                hash,
                name,
                nonce,
            } => {
                b.push(HELLO);
                b.extend_from_slice(MAGIC);
                b.extend_from_slice(&VERSION.to_le_bytes());
                b.extend_from_slice(&last.to_le_bytes());
                b.extend_from_slice(&hash.0);
                if name.len() > MAX_NAME {
                    return Err(invalid(format!("a name over {MAX_NAME} bytes")));
                }
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
                b.extend_from_slice(nonce);
            }
            Msg::Challenge { nonce, proof } => {
                b.push(CHALLENGE);
                b.extend_from_slice(nonce);
                b.extend_from_slice(proof);
            }
            Msg::Auth { proof } => {
                b.push(AUTH);
                b.extend_from_slice(proof);
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
                if len > MAX_NAME {
                    return Err(invalid(format!("a name over {MAX_NAME} bytes")));
                }
                let name = c.text(len)?;
                let nonce = c.hash()?.0;
                Msg::Hello {
                    last,
                    hash,
                    name,
                    nonce,
                }
            }
            CHALLENGE => Msg::Challenge {
                nonce: c.hash()?.0,
                proof: c.hash()?.0,
            },
            AUTH => Msg::Auth { proof: c.hash()?.0 },
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

    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn hash(&mut self) -> io::Result<ChainHash> {
        Ok(ChainHash(self.array()?))
    }

    fn text(&mut self, len: usize) -> io::Result<String> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| invalid("text is not UTF-8"))
    }
}

fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode()?)
}

/// Splits a byte stream into messages, holding each frame to a length limit and
/// a deadline. A read that times out leaves a partial message buffered for the
/// next `poll`, so sockets can have short read timeouts.
pub struct Reader {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
    /// The largest frame accepted (kind and payload).
    max: usize,
    /// How long a started frame may take to arrive whole.
    deadline: Duration,
    /// When the bytes of the frame now being read started to arrive.
    partial_since: Option<Instant>,
}

impl Reader {
    /// A reader of frames up to `max` bytes, each to arrive whole within `deadline`.
    pub fn new(max: usize, deadline: Duration) -> Reader {
        Reader {
            buf: Vec::new(),
            start: 0,
            max,
            deadline,
            partial_since: None,
        }
    }

    /// Changes the frame limit (after the handshake).
    fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next message, reading from `src` as needed; `None` if a read timed out
    /// first. The peer closing the connection is `UnexpectedEof`; bytes that are
    /// not a message, or a frame over the limit ([`FrameTooLarge`]), are
    /// `InvalidData`; a frame that does not arrive whole in time is `TimedOut`.
    pub fn poll(&mut self, mut src: impl Read) -> io::Result<Option<Msg>> {
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(Some(msg));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if !self.buf.is_empty() {
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "a frame did not arrive whole within {} s",
                            self.deadline.as_secs_f64()
                        ),
                    ));
                }
            }
            let old = self.buf.len();
            self.buf.resize(old + READ_CHUNK, 0);
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
        let Some(&[a, b, c, d]) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        if len == 0 {
            return Err(invalid("an empty message"));
        }
        // Checked before another byte of the frame is read: a peer cannot make
        // this side buffer more than the limit.
        if len > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameTooLarge {
                    len: len as u64,
                    max: self.max,
                },
            ));
        }
        let Some(frame) = avail.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = Msg::decode(frame[0], &frame[1..])?;
        self.start += 4 + len;
        self.partial_since = None;
        Ok(Some(msg))
    }
}

/// Waits up to `HANDSHAKE` for the next message; `Ok(None)` if `stop` was set.
fn handshake_msg(
    reader: &mut Reader,
    stream: &TcpStream,
    stop: &AtomicBool,
    waiting_for: &str,
) -> io::Result<Option<Msg>> {
    let started = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(msg) = reader.poll(stream)? {
            return Ok(Some(msg));
        }
        if started.elapsed() > HANDSHAKE {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no {waiting_for} within {} s", HANDSHAKE.as_secs()),
            ));
        }
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
    /// How often the leader computes its state digest (on a thread of its own,
    /// only when there are new commits) and sends it to every follower to check.
    pub digest_every: Option<Duration>,
    pub log: Log<'a>,
    /// What a follower must prove it knows before anything is served.
    pub secret: &'a Secret,
    pub limits: Limits,
    /// What happened, for progress reports and tests.
    pub counters: &'a LeaderCounters,
    /// Called on the digest thread before each digest, with its commit id: a
    /// test hook (a test holds it to show streaming goes on meanwhile). `None`
    /// in the example.
    pub before_digest: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// Counts of what a leader did and refused.
#[derive(Debug, Default)]
pub struct LeaderCounters {
    /// Sessions welcomed (authenticated, position checked).
    pub sessions: AtomicU64,
    /// Connections refused for a wrong or missing proof of the shared secret.
    pub auth_refused: AtomicU64,
    /// HELLOs refused because they would move a retention hold backwards.
    pub holds_refused: AtomicU64,
    /// Connections dropped for announcing a frame over the limit.
    pub oversized_frames: AtomicU64,
    /// State digests computed (by the digest thread).
    pub digests_computed: AtomicU64,
    /// DIGEST messages sent, over all followers.
    pub digests_sent: AtomicU64,
}

/// What the sessions of one `serve` share.
#[derive(Default)]
struct Shared {
    /// The newest state digest and its commit, from the digest thread.
    latest: Mutex<Option<(u64, StateDigest)>>,
    /// Held from a named follower's hold check until its hold is set, so that two
    /// HELLOs for one name cannot both pass the check.
    claims: Mutex<()>,
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
        let shared = &Shared::default();
        thread::scope(|s| {
            if let Some(every) = self.digest_every {
                s.spawn(move || self.digests(every, shared));
            }
            while !self.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        s.spawn(move || self.serve_one(stream, peer, shared));
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

    /// The digest thread: one digest at a time, at most one per `every`, of a
    /// snapshot (writers go on), only when there are new commits. Every session
    /// sends the newest one; none of them waits for it.
    fn digests(&self, every: Duration, shared: &Shared) {
        let mut done_at = None;
        while !self.stop.load(Ordering::SeqCst) {
            pause(every, self.stop);
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let snap = self.engine.snapshot();
            let at = snap.commit_id().get();
            if done_at == Some(at) {
                continue;
            }
            if let Some(hook) = self.before_digest {
                hook(at);
            }
            match snap.state_digest() {
                Ok(digest) => {
                    *shared.latest.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((at, digest));
                    self.counters
                        .digests_computed
                        .fetch_add(1, Ordering::SeqCst);
                    done_at = Some(at);
                }
                Err(e) => (self.log)(&format!("state digest at commit {} failed: {e}", num(at))),
            }
        }
    }

    /// Counts a frame over the limit, if that is what `e` is.
    fn count(&self, e: &io::Error) {
        if frame_too_large(e).is_some() {
            self.counters
                .oversized_frames
                .fetch_add(1, Ordering::SeqCst);
        }
    }

    fn serve_one(&self, stream: TcpStream, peer: SocketAddr, shared: &Shared) {
        let mut who = peer.to_string();
        let end = self.session(&stream, &mut who, shared);
        let _ = stream.shutdown(Shutdown::Both);
        match end {
            Ok(end) => (self.log)(&format!("follower {who} {end}")),
            Err(e) => {
                self.count(&e);
                (self.log)(&format!("follower {who} dropped: {e}"));
            }
        }
    }

    /// Refuses the follower with `reason`; returns the log line.
    fn refuse(&self, out: &mut impl Write, reason: String) -> io::Result<String> {
        send(
            out,
            &Msg::Refused {
                reason: reason.clone(),
            },
        )?;
        out.flush()?;
        Ok(format!("refused: {reason}"))
    }

    /// One follower, from its HELLO to the end; returns how it ended.
    fn session(&self, stream: &TcpStream, who: &mut String, shared: &Shared) -> io::Result<String> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        // Everything a follower sends is small: the limit stays this low.
        let mut reader = Reader::new(HANDSHAKE_MAX_FRAME, self.limits.frame_deadline);
        let hello = match handshake_msg(&mut reader, stream, self.stop, "hello")? {
            None => return Ok("left before its hello: the leader is stopping".into()),
            Some(hello @ Msg::Hello { .. }) => hello,
            Some(other) => return Err(invalid(format!("sent {} first", other.kind_name()))),
        };
        let transcript = hello.encode()?;
        let transcript = &transcript[FRAME_HEAD..];
        let Msg::Hello {
            last, hash, name, ..
        } = hello
        else {
            return Err(invalid("not a hello"));
        };
        let ours = nonce()?;
        let proof = *self.secret.proof("leader", transcript, &ours).as_bytes();
        send(&mut &*stream, &Msg::Challenge { nonce: ours, proof })?;
        match handshake_msg(&mut reader, stream, self.stop, "authentication")? {
            None => return Ok("left during the handshake: the leader is stopping".into()),
            // `blake3::Hash` compares in constant time.
            Some(Msg::Auth { proof })
                if self.secret.proof("follower", transcript, &ours) == proof => {}
            Some(Msg::Auth { .. }) => {
                self.counters.auth_refused.fetch_add(1, Ordering::SeqCst);
                return self.refuse(
                    &mut &*stream,
                    "authentication failed: the follower does not know the shared secret".into(),
                );
            }
            Some(other) => {
                return Err(invalid(format!(
                    "sent {} instead of AUTH",
                    other.kind_name()
                )))
            }
        }
        if !name.is_empty() {
            *who = format!("{name:?} ({who})");
        }
        let mut out = BufWriter::with_capacity(64 << 10, stream);
        // What the HELLO claims is checked before any hold is touched.
        let head = self.engine.commit_id().get();
        let mut held = false;
        let feed = if last > head {
            // Ahead of us: nothing to stream. WELCOME tells the follower, which
            // reports a fork or a leader that lost commits.
            None
        } else if name.is_empty() || self.hash_at(last) != Some(hash) {
            if !name.is_empty() {
                (self.log)(&format!(
                    "follower {who}: its chain hash at commit {} is not ours (or no longer \
                     known here): served without its retention hold",
                    num(last)
                ));
            }
            Some(self.engine.subscribe(last))
        } else {
            let _claim = shared.claims.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = self.engine.consumer_position(&name) {
                if last < at.get() {
                    self.counters.holds_refused.fetch_add(1, Ordering::SeqCst);
                    return self.refuse(
                        &mut out,
                        format!(
                            "the retention hold {name:?} is at commit {}, and this follower is at \
                             commit {}: a hold never moves backwards. Give each follower a name of \
                             its own; to rebuild this one under the name, release the hold on \
                             the leader first",
                            at.get(),
                            last
                        ),
                    );
                }
            }
            held = true;
            Some(self.engine.subscribe_as(&name, last))
        };
        let mut feed = match feed.transpose() {
            Ok(feed) => feed,
            Err(e) => return self.refuse(&mut out, e.to_string()),
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
        self.counters.sessions.fetch_add(1, Ordering::SeqCst);
        (self.log)(&format!(
            "follower {who} connected at commit {}; the leader is at {}",
            num(last),
            num(head.get())
        ));
        let acked = AtomicU64::new(last);
        let done = AtomicBool::new(false);
        let (streamed, heard) = thread::scope(|s| {
            let listening = s.spawn(|| self.hear(stream, reader, &acked, &done));
            let streamed = self.stream(feed.as_mut(), &mut out, held, &acked, &done, shared);
            done.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            (streamed, listening.join())
        });
        let heard = heard.map_err(|_| io::Error::other("the listening thread panicked"))?;
        let at = match &feed {
            Some(feed) => {
                if held {
                    // An ACK that came with the follower's last words.
                    feed.ack(acked.load(Ordering::SeqCst));
                }
                num(feed.position().get())
            }
            None => num(last),
        };
        match (heard, streamed) {
            (Heard::Goodbye(reason), _) => Ok(format!("left at commit {at}: {reason}")),
            (_, Ok(Some(note))) => Ok(note),
            (Heard::Lost(e), _) => {
                self.count(&e);
                Ok(format!("disconnected at commit {at}: {e}"))
            }
            (Heard::Quiet, Err(e)) => Err(e),
            (Heard::Quiet, Ok(None)) => Ok(format!("closed at commit {at}: the leader stopped")),
        }
    }

    /// Our chain hash at commit `at`, if we can tell: from the journal (the next
    /// record's `prev_hash`), or our last commit. `None` for a commit after our
    /// last one or before what the journal keeps.
    fn hash_at(&self, at: u64) -> Option<ChainHash> {
        if at == 0 {
            return Some(ChainHash::genesis());
        }
        let (head, hash) = self.engine.last_commit();
        if at == head.get() {
            return Some(hash);
        }
        if at > head.get() {
            return None;
        }
        // An unnamed feed: reading the journal holds nothing.
        let mut feed = self.engine.subscribe(at).ok()?;
        match feed.recv_timeout(HANDSHAKE) {
            Ok(Some(rec)) if rec.commit_id.get() == at + 1 => Some(rec.prev_hash),
            _ => None,
        }
    }

    /// Streams the feed's records (and heartbeats and digests) until the leader
    /// stops or the follower is gone; `Some` says why the leader ended it. With
    /// no feed (a follower ahead of us) only heartbeats.
    fn stream(
        &self,
        mut feed: Option<&mut Feed>,
        out: &mut BufWriter<&TcpStream>,
        held: bool,
        acked: &AtomicU64,
        done: &AtomicBool,
        shared: &Shared,
    ) -> io::Result<Option<String>> {
        let mut last_sent = Instant::now();
        // The commit of the last digest sent.
        let mut digest_sent = None;
        loop {
            if self.stop.load(Ordering::SeqCst) || done.load(Ordering::SeqCst) {
                out.flush()?;
                return Ok(None);
            }
            let next = match feed.as_mut() {
                Some(feed) => {
                    if held {
                        feed.ack(acked.load(Ordering::SeqCst));
                    }
                    match feed.try_next() {
                        Ok(None) => {
                            out.flush()?;
                            feed.recv_timeout(POLL)
                        }
                        other => other,
                    }
                }
                None => {
                    thread::sleep(POLL);
                    Ok(None)
                }
            };
            match next {
                Ok(Some(rec)) => {
                    let record = rec.encode().map_err(io::Error::other)?;
                    let len = FRAME_HEAD - 4 + 8 + record.len();
                    if len > self.limits.max_frame {
                        return self
                            .refuse(
                                out,
                                format!(
                                    "commit {} takes a frame of {len} bytes, over the limit of {} \
                                     bytes: raise --max-frame on the leader and its followers",
                                    rec.commit_id.get(),
                                    self.limits.max_frame
                                ),
                            )
                            .map(Some);
                    }
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
                    let needs = feed.as_deref().map_or(0, |f| Feed::position(f).get() + 1);
                    return Ok(Some(format!(
                        "needs commit {} but the journal starts at {}: told it so",
                        num(needs),
                        num(oldest_available)
                    )));
                }
                Err(e) => return self.refuse(out, e.to_string()).map(Some),
            }
            if feed.is_some() {
                let latest = *shared.latest.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((commit_id, digest)) = latest {
                    if digest_sent != Some(commit_id) {
                        send(out, &Msg::Digest { commit_id, digest })?;
                        digest_sent = Some(commit_id);
                        self.counters.digests_sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }

    /// Reads what the follower sends (ACKs, a GOODBYE) until it goes, falls
    /// silent for longer than `Limits::idle`, or `done`.
    fn hear(
        &self,
        stream: &TcpStream,
        mut reader: Reader,
        acked: &AtomicU64,
        done: &AtomicBool,
    ) -> Heard {
        let mut heard_at = Instant::now();
        let heard = loop {
            if done.load(Ordering::SeqCst) {
                break Heard::Quiet;
            }
            match reader.poll(stream) {
                Ok(Some(Msg::Ack { applied })) => {
                    acked.fetch_max(applied, Ordering::SeqCst);
                    heard_at = Instant::now();
                }
                Ok(Some(Msg::Goodbye { reason })) => break Heard::Goodbye(reason),
                Ok(Some(other)) => {
                    break Heard::Lost(invalid(format!("it sent {}", other.kind_name())));
                }
                Ok(None) if heard_at.elapsed() > self.limits.idle => {
                    break Heard::Lost(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing heard from it for {} s",
                            self.limits.idle.as_secs_f64()
                        ),
                    ));
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
    /// The other side does not know the shared secret (or we do not).
    Unauthenticated(String),
    /// The leader announced a frame over our limit.
    FrameTooLarge(FrameTooLarge),
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
            SyncError::Unauthenticated(what) => write!(f, "authentication failed: {what}"),
            SyncError::FrameTooLarge(e) => write!(f, "{e} (--max-frame)"),
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
    /// `Engine::subscribe_as`), moved on by its ACKs; one name per follower: the
    /// leader refuses a HELLO behind the name's hold. The hold outlives the
    /// follower (a forked one too): the leader's operator releases it
    /// (`Engine::release_consumer`), or it lapses past
    /// `Options::retention_limit_bytes`. `None`: no hold (the example requires
    /// a name).
    pub name: Option<&'a str>,
    /// Set it to make `run` return `Ok`.
    pub stop: &'a AtomicBool,
    pub status: &'a Status,
    pub log: Log<'a>,
    /// What the leader must prove it knows, and what we prove we know.
    pub secret: &'a Secret,
    pub limits: Limits,
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
        if let Some(big) = frame_too_large(&e) {
            Interrupt::Fatal(SyncError::FrameTooLarge(big))
        } else if e.kind() == io::ErrorKind::PermissionDenied {
            Interrupt::Fatal(SyncError::Unauthenticated(e.to_string()))
        } else if e.kind() == io::ErrorKind::InvalidData {
            Interrupt::Fatal(SyncError::Protocol(e.to_string()))
        } else {
            Interrupt::Lost(e)
        }
    }
}

fn fatal(e: Error) -> Interrupt {
    Interrupt::Fatal(SyncError::Engine(e))
}

/// A follower's side of the handshake on `stream`: HELLO (at commit `last` with
/// chain hash `hash`, as `name`), the leader's CHALLENGE checked against
/// `secret`, AUTH. Returns the reader and the leader's answer (WELCOME, or
/// REFUSED, TRUNCATED); `None` if `stop` was set. A leader that does not prove it
/// knows the secret is `PermissionDenied`.
pub fn handshake(
    stream: &TcpStream,
    secret: &Secret,
    limits: &Limits,
    stop: &AtomicBool,
    (last, hash): (u64, ChainHash),
    name: &str,
) -> io::Result<Option<(Reader, Msg)>> {
    let hello = Msg::Hello {
        last,
        hash,
        name: name.to_owned(),
        nonce: nonce()?,
    };
    let frame = hello.encode()?;
    (&*stream).write_all(&frame)?;
    let transcript = &frame[FRAME_HEAD..];
    let mut reader = Reader::new(HANDSHAKE_MAX_FRAME, limits.frame_deadline);
    let theirs = match handshake_msg(&mut reader, stream, stop, "challenge")? {
        None => return Ok(None),
        Some(Msg::Challenge { nonce, proof }) => {
            if secret.proof("leader", transcript, &nonce) != proof {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the leader could not prove it knows the shared secret",
                ));
            }
            nonce
        }
        Some(other) => return Ok(Some((reader, other))),
    };
    let proof = *secret.proof("follower", transcript, &theirs).as_bytes();
    send(&mut &*stream, &Msg::Auth { proof })?;
    Ok(handshake_msg(&mut reader, stream, stop, "welcome")?.map(|m| (reader, m)))
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
        let name = self.name.unwrap_or("");
        let Some((mut reader, answer)) = handshake(
            stream,
            self.secret,
            &self.limits,
            self.stop,
            (applied, hash),
            name,
        )?
        else {
            return Ok(());
        };
        let Msg::Welcome {
            head,
            hash: their_hash,
        } = answer
        else {
            return Err(self.unexpected(answer));
        };
        reader.set_max(self.limits.max_frame);
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
                None if heard.elapsed() > self.limits.idle => {
                    return Err(Interrupt::Lost(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing heard from the leader for {} s",
                            self.limits.idle.as_secs_f64()
                        ),
                    )));
                }
                None => {}
            }
            let ack_due = self.name.is_some() && applied > acked && acked_at.elapsed() >= ACK_EVERY;
            if ack_due || acked_at.elapsed() >= KEEPALIVE {
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
