//! `shardstone journal show|tail|search`: the commit history of a database
//! directory, a backup, or a database in use (`shardstone::JournalReader`: no
//! lock, no writes). Keys and values print as text where they are UTF-8, hex
//! otherwise (`printable.rs`).

use super::{print_json, Done};
use crate::database::require_database;
use crate::exit::{Exit, Failure};
use crate::printable::{self, LISTING_VALUE_BYTES};
use serde_json::{json, Value};
use shardstone::{Filter, JournalEntry, JournalReader, Op};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `journal` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// One commit: its command, chain hashes, and every put and delete in full.
    #[command(after_help = crate::exit::EXIT_CODES_HELP)]
    Show {
        /// The database directory (or a backup).
        dir: PathBuf,
        /// The commit id.
        commit: u64,
        #[command(flatten)]
        format: Format,
    },
    /// The commits from N on, in commit order.
    #[command(after_help = crate::exit::EXIT_CODES_HELP)]
    Tail {
        /// The database directory (or a backup).
        dir: PathBuf,
        /// The first commit shown (default: the oldest the journal holds).
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
        /// Show at most this many commits.
        #[arg(long, value_name = "K")]
        limit: Option<usize>,
        #[command(flatten)]
        format: Format,
    },
    /// The commits that put or deleted a key, or a key with a prefix, or ran a
    /// command, between two commit ids or two times (inclusive). Every condition
    /// given must hold.
    #[command(
        after_help = crate::exit::EXIT_CODES_HELP,
        group(clap::ArgGroup::new("what").required(true).multiple(true)
            .args(["key", "key_hex", "prefix", "prefix_hex", "command", "since", "until"]))
    )]
    Search {
        /// The database directory (or a backup).
        dir: PathBuf,
        /// A key, as text.
        #[arg(long, value_name = "K", conflicts_with = "key_hex")]
        key: Option<String>,
        /// A key, as hex (for keys that are not UTF-8).
        #[arg(long, value_name = "HEX", value_parser = printable::parse_hex)]
        key_hex: Option<printable::Bytes>,
        /// A key prefix, as text.
        #[arg(long, value_name = "P", conflicts_with = "prefix_hex")]
        prefix: Option<String>,
        /// A key prefix, as hex.
        #[arg(long, value_name = "HEX", value_parser = printable::parse_hex)]
        prefix_hex: Option<printable::Bytes>,
        /// The name the command was run under (`Engine::run(name, ..)`).
        #[arg(long, value_name = "NAME")]
        command: Option<String>,
        /// The first commit id to look at.
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        /// The last commit id to look at.
        #[arg(long, value_name = "M")]
        to: Option<u64>,
        /// Commits made at or after this time (RFC 3339, e.g. 2026-12-07T03:00:00Z;
        /// without a zone it is UTC).
        #[arg(long, value_name = "TIME", value_parser = crate::time::parse)]
        since: Option<std::time::SystemTime>,
        /// Commits made at or before this time (RFC 3339).
        #[arg(long, value_name = "TIME", value_parser = crate::time::parse)]
        until: Option<std::time::SystemTime>,
        /// Show at most this many commits.
        #[arg(long, value_name = "K")]
        limit: Option<usize>,
        #[command(flatten)]
        format: Format,
    },
}

/// How keys and values are printed.
#[derive(clap::Args, Clone, Copy)]
pub struct Format {
    /// Print keys and values as hex even where they are UTF-8 (JSON always has both).
    #[arg(long)]
    hex: bool,
}

/// Runs a `journal` subcommand.
pub fn run(command: &Command, json: bool) -> Result<Done, Failure> {
    match command {
        Command::Show {
            dir,
            commit,
            format,
        } => show(dir, *commit, *format, json),
        Command::Tail {
            dir,
            from,
            limit,
            format,
        } => {
            let reader = open(dir)?;
            let records = reader
                .tail(from.saturating_sub(1))
                .map_err(|e| Failure::of(e, dir))?;
            let none = "no commits: the journal holds none from there on (newer commits may be \
                        in a checkpoint only: see `shardstone stat`)";
            list(dir, records, (*from).max(1), none, *limit, *format, json)
        }
        Command::Search {
            dir,
            key,
            key_hex,
            prefix,
            prefix_hex,
            command,
            from,
            to,
            since,
            until,
            limit,
            format,
        } => {
            let filter = Filter {
                key: key
                    .as_ref()
                    .map(|k| k.as_bytes().to_vec())
                    .or_else(|| key_hex.as_ref().map(|b| b.0.clone())),
                prefix: prefix
                    .as_ref()
                    .map(|p| p.as_bytes().to_vec())
                    .or_else(|| prefix_hex.as_ref().map(|b| b.0.clone())),
                command: command.clone(),
                from: from.map(Into::into),
                to: to.map(Into::into),
                since: *since,
                until: *until,
            };
            let reader = open(dir)?;
            // Matches need not start where the journal does: look where it does.
            let first = reader
                .records()
                .map_err(|e| Failure::of(e, dir))?
                .next()
                .transpose()
                .map_err(|e| Failure::of(e, dir))?;
            if let Some(first) = first {
                note_start(first.commit_id.get(), from.unwrap_or(1).max(1));
            }
            let records = reader.search(&filter).map_err(|e| Failure::of(e, dir))?;
            list(dir, records, 0, "no commit matches", *limit, *format, json)
        }
    }
}

fn open(dir: &Path) -> Result<JournalReader, Failure> {
    require_database(dir)?;
    JournalReader::open(dir).map_err(|e| Failure::of(e, dir))
}

fn show(dir: &Path, commit: u64, format: Format, json: bool) -> Result<Done, Failure> {
    let reader = open(dir)?;
    let Some(rec) = reader.get(commit).map_err(|e| Failure::of(e, dir))? else {
        let held = match reader.bounds().map_err(|e| Failure::of(e, dir))? {
            Some((first, last)) => format!("it holds commits {} to {}", first.get(), last.get()),
            None => "it holds no commits".to_owned(),
        };
        return Err(Failure::new(
            Exit::Other,
            format!(
                "{}: commit {commit} is not in the journal ({held}; older ones are in \
                 checkpoints, which keep no history)",
                dir.display()
            ),
        ));
    };
    if json {
        print_json(&record_json(&rec));
    } else {
        let mut out = std::io::stdout().lock();
        write_record(&mut out, &rec, format, None, true).map_err(|e| write_failure(&e))?;
    }
    Ok(Done::Ok)
}

/// Says so on stderr when the journal starts after the first commit asked
/// for: the commits before it are only in checkpoints, which keep no history.
fn note_start(first: u64, asked: u64) {
    if first > asked {
        eprintln!(
            "note: the journal starts at commit {first}; commits {asked} to {} are only in \
             checkpoints, which keep no history (a backup keeps more: Options::pitr_retention)",
            first - 1
        );
    }
}

/// Prints records as they are read: a journal may be larger than memory.
/// `asked`: the first commit the user asked for, noted when the journal starts
/// later (0: no note).
fn list(
    dir: &Path,
    records: impl Iterator<Item = shardstone::Result<JournalEntry>>,
    asked: u64,
    none: &str,
    limit: Option<usize>,
    format: Format,
    json: bool,
) -> Result<Done, Failure> {
    let mut out = std::io::stdout().lock();
    let mut shown = 0usize;
    let w = |e: std::io::Error| write_failure(&e);
    if json {
        write!(out, "[").map_err(w)?;
    }
    for rec in records.take(limit.unwrap_or(usize::MAX)) {
        let rec = rec.map_err(|e| Failure::of(e, dir))?;
        if shown == 0 && asked > 0 {
            note_start(rec.commit_id.get(), asked);
        }
        if json {
            let sep = if shown == 0 { "" } else { "," };
            let text = serde_json::to_string(&record_json(&rec)).unwrap_or_default();
            write!(out, "{sep}\n  {text}").map_err(w)?;
        } else {
            write_record(&mut out, &rec, format, Some(LISTING_VALUE_BYTES), false).map_err(w)?;
        }
        shown += 1;
    }
    if json {
        writeln!(out, "\n]").map_err(w)?;
    } else if shown == 0 {
        writeln!(out, "{none}").map_err(w)?;
    }
    Ok(Done::Ok)
}

fn write_record(
    out: &mut impl Write,
    rec: &JournalEntry,
    format: Format,
    limit: Option<usize>,
    full_hashes: bool,
) -> std::io::Result<()> {
    let hash = rec.hash.to_string();
    if full_hashes {
        writeln!(out, "commit {}: {}", rec.commit_id.get(), rec.command)?;
        writeln!(out, "  time:            {}", crate::time::show(rec.time))?;
        writeln!(out, "  chain hash:      {hash}")?;
        writeln!(out, "  previous hash:   {}", rec.prev_hash)?;
    } else {
        writeln!(
            out,
            "commit {}: {} at {} (chain {})",
            rec.commit_id.get(),
            rec.command,
            crate::time::show(rec.time),
            &hash[..16.min(hash.len())]
        )?;
    }
    for op in &rec.ops {
        match op {
            Op::Put { key, value } => writeln!(
                out,
                "  put    {} = {}",
                printable::human(key, format.hex, None),
                printable::human(value, format.hex, limit)
            )?,
            Op::Delete { key } => {
                writeln!(out, "  delete {}", printable::human(key, format.hex, None))?
            }
        }
    }
    Ok(())
}

fn record_json(rec: &JournalEntry) -> Value {
    json!({
        "commit": rec.commit_id.get(),
        "command": rec.command,
        "time": rec.time.map(|t| crate::time::show(Some(t))),
        "time_ms": rec.time.map(crate::time::millis),
        "hash": rec.hash.to_string(),
        "prev_hash": rec.prev_hash.to_string(),
        "ops": rec.ops.iter().map(|op| match op {
            Op::Put { key, value } => json!({
                "op": "put",
                "key": printable::json(key),
                "value": printable::json(value),
            }),
            Op::Delete { key } => json!({ "op": "delete", "key": printable::json(key) }),
        }).collect::<Vec<_>>(),
    })
}

fn write_failure(e: &std::io::Error) -> Failure {
    Failure::new(Exit::Other, format!("cannot write the output: {e}"))
}
