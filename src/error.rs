//! The one error type of the crate.
//!
//! Every variant carries what the caller needs to act on it: the limit that was
//! exceeded, the command that misbehaved, the option that was wrong.

use crate::journal::ChainHash;
use crate::txn::CommitId;
use std::fmt;
use std::path::PathBuf;

/// Result alias used by every fallible shardstone call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shardstone.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A key longer than the engine's limit was given to `put`, `get`, `delete` or `range`.
    KeyTooLarge {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The limit in force ([`crate::MAX_KEY_LEN`]).
        max: usize,
    },
    /// A command's writes add up to more than one journal record can hold (4 GiB).
    CommitTooLarge {
        /// Bytes the record would take.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value longer than [`crate::Options::max_value_len`] was given to `put`.
    ValueTooLarge {
        /// Length of the rejected value in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The command returned an application-level abort (see [`Error::abort`]).
    Abort(String),
    /// A command waited for a key (or key range) held by an escalated command, and
    /// the wait would have closed a cycle of waits: it gets this error instead of
    /// waiting forever. Nothing of it was committed; it may be run again.
    Deadlock {
        /// The command that gave up.
        command: String,
        /// The key it waited for (the start of the range).
        key: Vec<u8>,
    },
    /// A command waited `Options::lock_wait` (or until its deadline) for a key held
    /// by an escalated command, or for exclusive commit rights, and gave up.
    /// Nothing of it was committed; it may be run again.
    Timeout {
        /// The command that gave up.
        command: String,
        /// The key it waited for (empty when it waited for exclusive rights).
        key: Vec<u8>,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A command with a deadline (`Engine::run_with_deadline`) could not be admitted
    /// to the blocking queue in time: `Options::max_escalated` commands were running
    /// there and `Options::max_queued` waiting. Nothing of it was committed.
    Overloaded {
        /// The command that was turned away.
        command: String,
        /// Escalated commands waiting for admission when it was.
        waiting: usize,
    },
    /// `Tx::add` or `Tx::next_in_sequence` found a value under the key that is not
    /// an 8-byte counter. Nothing was written.
    NotACounter {
        /// The key.
        key: Vec<u8>,
        /// Length of the value found there.
        len: usize,
    },
    /// `Tx::add` would take a counter past `i64::MAX` or below `i64::MIN` (or a
    /// sequence past `u64::MAX`). Nothing was written.
    CounterOverflow {
        /// The key.
        key: Vec<u8>,
    },
    /// `Engine::run` was called from inside a command on the same engine. Commands do
    /// not nest: the inner one would wait for commit rights the outer one may hold.
    NestedRun {
        /// Name of the command that was already running on this thread.
        outer: String,
        /// Name of the command that tried to start inside it.
        inner: String,
    },
    /// The requested operation is not available in this build or configuration.
    Unsupported(&'static str),
    /// An [`crate::Options`] value is out of range.
    InvalidOptions {
        /// The option's name.
        option: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
    /// Memory for pages could not be obtained from the operating system.
    OutOfMemory {
        /// Bytes that were requested.
        requested: usize,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file operation failed. `op` names it (`"create"`, `"fdatasync"`, `"rename"`, ...).
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A journal segment or checkpoint is damaged in a way recovery must not paper
    /// over: acknowledged data would be lost or reordered. Nothing was changed on disk.
    Corrupt {
        /// The damaged file (or the journal directory, for a commit missing from it).
        path: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// The commit the damaged bytes belong to, or the first one missing, where known.
        commit_id: Option<CommitId>,
        /// What is wrong, in words.
        reason: String,
    },
    /// A directory that holds no shardstone database (no manifest) was given
    /// where one was expected: to [`crate::JournalReader::open`] or
    /// [`crate::restore`], or as a backup destination that is neither empty nor
    /// an earlier backup.
    NotADatabase {
        /// The directory.
        path: PathBuf,
    },
    /// [`crate::restore`] was given a destination that already exists. Nothing
    /// was written: a restore never overwrites anything.
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
    /// The database path (or a parent of it) exists and is not a directory.
    NotADirectory {
        /// The path that is not a directory.
        path: PathBuf,
    },
    /// Another engine (in this process or another) has the database open.
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The process that holds it, where it recorded itself.
        pid: Option<u32>,
    },
    /// A write on an engine that cannot write: it was opened read-only, or it is a
    /// follower (which changes only through `Engine::apply`).
    ReadOnly,
    /// A follower was given a record that does not come next: it holds commits up
    /// to `expected - 1`.
    Gap {
        /// The commit id the follower needs next.
        expected: CommitId,
        /// The commit id it was given.
        got: CommitId,
    },
    /// A record's history disagrees with the follower's: the two have forked.
    Fork {
        /// The commit where they disagree.
        commit_id: CommitId,
        /// This engine's chain hash there.
        ours: ChainHash,
        /// The hash the record claims.
        theirs: ChainHash,
    },
    /// A feed asked for commits the engine no longer has: the journal before
    /// `oldest_available` was deleted (or never kept, for an in-memory engine).
    Truncated {
        /// The oldest commit id a new subscription can still be given.
        oldest_available: CommitId,
    },
    /// [`crate::Engine::subscribe`] or [`crate::Engine::subscribe_as`] asked for the
    /// commits after `requested`, beyond this engine's last commit `last`. A feed
    /// from `last` itself is fine: it waits for the next commit. A consumer that
    /// holds commits this engine does not have has forked from it (or the engine
    /// lost them): no feed from here can continue its history. Nothing was
    /// registered, and a named consumer's retention hold was not moved.
    AheadOfLastCommit {
        /// The position the feed was asked to start after.
        requested: CommitId,
        /// This engine's last commit when it was asked.
        last: CommitId,
    },
    /// A commit record that cannot be applied as it is (no ops, a key over the limit,
    /// bytes that do not decode).
    InvalidRecord {
        /// The record's commit id, where known.
        commit_id: Option<CommitId>,
        /// What is wrong with it.
        reason: String,
    },
    /// A restore or search by time met a journal record written without a
    /// commit time (by a version before times were recorded): name a commit id
    /// instead.
    NoCommitTime {
        /// The first record without a time.
        commit_id: CommitId,
    },
    /// No feed consumer has this name.
    UnknownConsumer(String),
    /// The journal failed to write or sync a commit earlier. The engine refuses
    /// writes from then on rather than acknowledge commits it may not keep (a failed
    /// fsync can drop pages silently); reads still work. Reopen to recover. The
    /// commit that met the failure may or may not survive the reopen.
    Halted {
        /// The failure that halted the engine.
        cause: String,
    },
    /// A command given to [`crate::Engine::submit`] panicked on its worker. It was
    /// rolled back; the worker and the engine carry on.
    Panicked {
        /// The command's name.
        command: String,
        /// The panic's message, when it was a string.
        message: String,
    },
    /// An affinity hint named a NUMA node that has no CPUs in the engine's topology.
    UnknownNode {
        /// The node asked for.
        node: usize,
        /// The nodes that have CPUs.
        nodes: Vec<usize>,
    },
    /// The engine's workers stopped before the command ran (the engine was being
    /// dropped) or a worker thread could not be started.
    WorkersUnavailable(String),
}

impl Error {
    /// An application-level abort: return it from a command to roll it back.
    ///
    /// ```
    /// # use shardstone::{Engine, Error};
    /// let engine = Engine::in_memory()?;
    /// let r: shardstone::Result<()> = engine.run("refuse", |_tx| Err(Error::abort("insufficient funds")));
    /// assert!(matches!(r, Err(Error::Abort(reason)) if reason == "insufficient funds"));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn abort(reason: impl Into<String>) -> Self {
        Error::Abort(reason.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CommitTooLarge { len, max } => write!(
                f,
                "the command's writes take {len} bytes of journal record, over the limit of {max}; split it into smaller commands"
            ),
            Error::KeyTooLarge { len, max } => {
                write!(f, "key of {len} bytes exceeds the limit of {max} bytes")
            }
            Error::ValueTooLarge { len, max } => {
                write!(f, "value of {len} bytes exceeds the limit of {max} bytes (Options::max_value_len)")
            }
            Error::Abort(reason) => write!(f, "command aborted: {reason}"),
            Error::Deadlock { command, key } => write!(
                f,
                "command {command:?} would deadlock waiting for key {} held by an escalated command",
                crate::error::show_key(key)
            ),
            Error::Timeout {
                command,
                key,
                waited,
            } => write!(
                f,
                "command {command:?} gave up after waiting {waited:?} for key {} held by an escalated command",
                crate::error::show_key(key)
            ),
            Error::Overloaded { command, waiting } => write!(
                f,
                "command {command:?} turned away: the blocking queue is full ({waiting} commands waiting)"
            ),
            Error::NotACounter { key, len } => write!(
                f,
                "the value under key {} is {len} bytes, not an 8-byte counter",
                crate::error::show_key(key)
            ),
            Error::CounterOverflow { key } => write!(
                f,
                "the counter under key {} would overflow",
                crate::error::show_key(key)
            ),
            Error::NestedRun { outer, inner } => write!(
                f,
                "command {inner:?} was started inside command {outer:?} on the same engine; commands do not nest"
            ),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::InvalidOptions { option, reason } => {
                write!(f, "invalid option {option}: {reason}")
            }
            Error::OutOfMemory { requested, source } => {
                write!(f, "could not map {requested} bytes of page memory: {source}")
            }
            Error::Io { op, path, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            Error::Corrupt {
                path,
                offset,
                commit_id,
                reason,
            } => {
                write!(f, "{} is damaged at byte {offset}", path.display())?;
                if let Some(c) = commit_id {
                    write!(f, " ({c})")?;
                }
                write!(f, ": {reason}")
            }
            Error::NotADatabase { path } => write!(
                f,
                "{} holds no shardstone database (no manifest)",
                path.display()
            ),
            Error::DestinationExists { path } => write!(
                f,
                "{} already exists; a restore writes only into a new directory",
                path.display()
            ),
            Error::NotADirectory { path } => {
                write!(f, "not a directory: {}", path.display())
            }
            Error::Locked { path, pid } => {
                write!(f, "the database is in use: {} is locked", path.display())?;
                match pid {
                    Some(pid) => write!(f, " by process {pid}"),
                    None => Ok(()),
                }
            }
            Error::ReadOnly => write!(
                f,
                "the engine is read-only (opened read-only, or a follower: use apply or promote)"
            ),
            Error::Gap { expected, got } => write!(
                f,
                "record for {got} does not follow this engine's last commit: it needs {expected} next"
            ),
            Error::Fork {
                commit_id,
                ours,
                theirs,
            } => write!(
                f,
                "histories forked at {commit_id}: our chain hash {ours}, the record's {theirs}"
            ),
            Error::Truncated { oldest_available } => write!(
                f,
                "the journal before {oldest_available} is no longer available"
            ),
            Error::AheadOfLastCommit { requested, last } => write!(
                f,
                "a feed after {requested} was asked for, but this engine ends at {last}: \
                 the consumer is ahead of it (a fork, or commits this engine lost)"
            ),
            Error::InvalidRecord { commit_id, reason } => {
                write!(f, "invalid commit record")?;
                if let Some(c) = commit_id {
                    write!(f, " ({c})")?;
                }
                write!(f, ": {reason}")
            }
            Error::NoCommitTime { commit_id } => write!(
                f,
                "the journal record of {commit_id} has no commit time (written before times \
                 were recorded): restore or search by commit id instead"
            ),
            Error::UnknownConsumer(name) => write!(f, "no feed consumer is named {name:?}"),
            Error::Halted { cause } => write!(
                f,
                "the engine refuses writes after a journal failure ({cause}); reopen it to recover"
            ),
            Error::Panicked { command, message } => {
                write!(f, "command {command:?} panicked on a worker: {message}")
            }
            Error::UnknownNode { node, nodes } => write!(
                f,
                "NUMA node {node} has no CPUs in this engine's topology (nodes with CPUs: {nodes:?})"
            ),
            Error::WorkersUnavailable(why) => write!(f, "engine workers unavailable: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OutOfMemory { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A key for an error message: text when it is printable, else hex; long keys cut.
pub(crate) fn show_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(64)];
    let more = if key.len() > 64 { "…" } else { "" };
    match std::str::from_utf8(cut) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}{more}"),
        _ => {
            let hex: String = cut.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{more}")
        }
    }
}
