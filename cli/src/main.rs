//! `shardstone`: the command-line tool for a shardstone database directory.
//!
//! Every command works on a directory the library wrote: `stat` and `verify`
//! read it without the directory lock (safe on a database another process has
//! open); `backup` and `metrics` open it read-only (they share it with readers,
//! not with a writer); `restore` makes a new database from a backup; `journal`
//! reads the commit history. Human output by default, `--json` everywhere,
//! distinct exit codes (`exit.rs`). Each command is one file under `cmd/`.

mod cmd;
mod database;
mod exit;
mod printable;
mod progress;
mod time;

use clap::{Parser, Subcommand};
use exit::{Exit, EXIT_CODES_HELP};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect, verify, back up and restore shardstone databases, and search their journals.
#[derive(Parser)]
#[command(name = "shardstone", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Write JSON on stdout instead of text (a failure too: {"error", "exit_code", "kind"}).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What a database directory holds: sizes, last commit, shards, checkpoint, consumers.
    ///
    /// Sizes, last commit and chain hash, shards and segments, checkpoint and
    /// its age, named consumers and their lag, problems found. Read-only and without the lock: works on a database in use.
    #[command(after_help = EXIT_CODES_HELP)]
    Stat {
        /// The database directory.
        dir: PathBuf,
    },
    /// Checks every checksum and the hash chain; exit 3 when damaged.
    ///
    /// Every checksum, the commit order, the hash chain and the checkpoint
    /// against the journal. Read-only and without the lock: works on
    /// a database in use. Exits 3 when anything is damaged, naming the file,
    /// offset and commit, and says up to which commit the data can be trusted.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify {
        /// The database directory.
        dir: PathBuf,
    },
    /// Backs a closed database up into DEST (exit 5 if another process has it open).
    ///
    /// DEST then opens as the database at the backup's commit. Into an earlier backup of the same database, only
    /// what changed is copied. A database another process has open is backed
    /// up from inside that process, with `Engine::backup(dest)`: here it is
    /// refused (exit 5).
    #[command(after_help = EXIT_CODES_HELP)]
    Backup {
        /// The database directory (not open in another process).
        dir: PathBuf,
        /// The backup directory: missing, empty, or an earlier backup of this database.
        dest: PathBuf,
    },
    /// Makes a new database in DEST as of commit N of a backup; DEST must not exist.
    ///
    /// From a backup (or a closed database), as of commit N (`--to-commit N`)
    /// or its newest commit (`--latest`). DEST must not exist: a restore never
    /// overwrites anything.
    #[command(after_help = EXIT_CODES_HELP)]
    Restore(cmd::restore::Args),
    /// Reads the commit history: show one commit, tail, or search by key, prefix, command.
    ///
    /// Read-only and
    /// without the lock: works on a database in use.
    #[command(subcommand)]
    Journal(cmd::journal::Command),
    /// Statistics of a closed database in the Prometheus text format (or --json).
    ///
    /// From a read-only open: recovery, journal and store figures. A running engine's are `Engine::stats()` in its process.
    #[command(after_help = EXIT_CODES_HELP)]
    Metrics {
        /// The database directory (not open in another process).
        dir: PathBuf,
    },
    /// The last commit, its chain hash and the state digest of a closed database.
    ///
    /// From a read-only open. Equal digests at equal commits mean equal
    /// contents: a replica and its leader, a restore and its source.
    #[command(after_help = EXIT_CODES_HELP)]
    Digest {
        /// The database directory (not open in another process).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors are exit 2 (clap's); with --json, in JSON too.
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                cmd::print_json(&serde_json::json!({
                    "error": e.render().to_string().trim_end(),
                    "exit_code": Exit::BadArguments.code(),
                    "kind": Exit::BadArguments.name(),
                }));
            }
            e.exit();
        }
    };
    let json = cli.json;
    let result = match cli.command {
        Command::Stat { dir } => cmd::stat::run(&dir, json),
        Command::Verify { dir } => cmd::verify::run(&dir, json),
        Command::Backup { dir, dest } => cmd::backup::run(&dir, &dest, json),
        Command::Restore(args) => cmd::restore::run(&args, json),
        Command::Journal(command) => cmd::journal::run(&command, json),
        Command::Metrics { dir } => cmd::metrics::run(&dir, json),
        Command::Digest { dir } => cmd::metrics::digest(&dir, json),
    };
    match result {
        Ok(cmd::Done::Ok) => ExitCode::SUCCESS,
        Ok(cmd::Done::Reported(exit)) => ExitCode::from(exit.code()),
        Err(failure) => {
            if json {
                cmd::print_json(&serde_json::json!({
                    "error": failure.message,
                    "exit_code": failure.exit.code(),
                    "kind": failure.exit.name(),
                }));
            }
            eprintln!("shardstone: {failure}");
            debug_assert_ne!(failure.exit, Exit::BadArguments, "clap owns code 2");
            ExitCode::from(failure.exit.code())
        }
    }
}

/// Dies quietly on a closed pipe (`shardstone journal tail DIR | head`), as
/// other command-line tools do, instead of panicking in `println!`.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default before any other
    // thread exists; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
