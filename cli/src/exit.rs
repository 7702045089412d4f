//! Exit codes and the failures that lead to them.
//!
//! Every command ends in `Ok` or a [`Failure`] carrying one [`Exit`] code and a
//! message that says what to do next. The codes are part of the command's
//! interface (scripts branch on them): they are listed in `--help` and in
//! docs/operations.md, and never renumbered.

use shardstone::Error;
use std::fmt;
use std::path::Path;

/// The process exit codes of `shardstone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything not listed below (an I/O error, a destination that exists,
    /// a commit outside what a backup holds).
    Other = 1,
    /// 2: the command line did not parse (clap's own code).
    BadArguments = 2,
    /// 3: the database is damaged: `verify` found damage, or a file the command
    /// needed failed its checks.
    Damaged = 3,
    /// 4: the path is not a shardstone database (missing, not a directory, or a
    /// directory with no database files in it).
    NotADatabase = 4,
    /// 5: the database is in use: another engine holds the directory lock and
    /// the command needs it.
    InUse = 5,
}

impl Exit {
    /// The code as the process returns it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A short name, for `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Other => "error",
            Exit::BadArguments => "bad_arguments",
            Exit::Damaged => "damaged",
            Exit::NotADatabase => "not_a_database",
            Exit::InUse => "in_use",
        }
    }
}

/// The exit codes as `--help` lists them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  other errors (I/O, a restore destination that exists, a commit outside the backup)
  2  bad arguments
  3  damaged: verify found damage, or a file the command needed failed its checks
  4  not a database: missing, not a directory, or no database files in it
  5  in use: another process has the database open and the command needs its lock
     (verify, stat and journal never need it)";

/// A command that did not succeed: the code to exit with, and what to tell the user.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong and what to do, in words.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }

    /// A library error met while working on `dir`, classified by what it means
    /// for the user.
    pub fn of(err: Error, dir: &Path) -> Failure {
        let exit = match &err {
            Error::Locked { .. } => Exit::InUse,
            Error::NotADatabase { .. } | Error::NotADirectory { .. } => Exit::NotADatabase,
            Error::Corrupt { .. } | Error::InvalidRecord { .. } | Error::Fork { .. } => {
                Exit::Damaged
            }
            _ => Exit::Other,
        };
        let message = match (&err, exit) {
            (Error::Locked { pid, .. }, _) => in_use_message(dir, *pid),
            (_, Exit::Damaged) => format!(
                "{}: {err}\nthe database is damaged: run `shardstone verify {}` for what can be trusted",
                dir.display(),
                dir.display()
            ),
            _ => format!("{}: {err}", dir.display()),
        };
        Failure { exit, message }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What to say when another engine holds the directory lock.
fn in_use_message(dir: &Path, pid: Option<u32>) -> String {
    let holder = match pid {
        Some(pid) => format!("process {pid}"),
        None => "another engine".to_owned(),
    };
    format!(
        "{} is in use: {holder} has it open, and this command needs the directory lock.\n\
         Run it when that process has closed the database, or from inside that process: \
         a live backup is `Engine::backup(dest)`, metrics are `Engine::stats()`.\n\
         `shardstone verify`, `stat` and `journal` work on a directory in use.",
        dir.display()
    )
}
