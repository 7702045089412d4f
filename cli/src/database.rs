//! Finding a database on disk before touching it: the "not a database" check
//! every command makes, the read-only open of the commands that need an
//! engine, and directory sizes for progress.
//!
//! The check never creates anything: `Engine::open` would make a new database
//! in an empty or missing directory, which is never what a typo deserves.

use crate::exit::{Exit, Failure};
use shardstone::{Engine, Options};
use std::path::Path;

/// What a path holds, as far as the file names tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A directory with a manifest.
    Database,
    /// Journal or checkpoint files, but no manifest: a damaged database.
    ManifestMissing,
}

/// Checks that `dir` is a database directory: `Err` with [`Exit::NotADatabase`]
/// when it is missing, not a directory, or holds no database files.
pub fn shape(dir: &Path) -> Result<Shape, Failure> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                Exit::NotADatabase,
                format!("{}: no such directory", dir.display()),
            ))
        }
        Err(e) => {
            return Err(Failure::new(
                Exit::Other,
                format!("{}: cannot read: {e}", dir.display()),
            ))
        }
    };
    if !meta.is_dir() {
        return Err(Failure::new(
            Exit::NotADatabase,
            format!("{}: not a directory, so not a database", dir.display()),
        ));
    }
    if dir.join("manifest").exists() {
        return Ok(Shape::Database);
    }
    let has_data = dir.join("journal").exists()
        || dir.join("pitr").exists()
        || std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("checkpoint-"))
            });
    if has_data {
        Ok(Shape::ManifestMissing)
    } else {
        Err(Failure::new(
            Exit::NotADatabase,
            format!(
                "{}: not a shardstone database (no manifest, journal or checkpoint in it)",
                dir.display()
            ),
        ))
    }
}

/// [`shape`], where only a whole database will do: a missing manifest is damage.
pub fn require_database(dir: &Path) -> Result<(), Failure> {
    match shape(dir)? {
        Shape::Database => Ok(()),
        Shape::ManifestMissing => Err(Failure::new(
            Exit::Damaged,
            format!(
                "{}: holds journal or checkpoint files but no manifest: the database is damaged \
                 (run `shardstone verify {}`)",
                dir.display(),
                dir.display()
            ),
        )),
    }
}

/// Opens the database in `dir` read-only: it shares the directory with other
/// readers, never with a writer ([`Exit::InUse`] then), and changes nothing.
pub fn open_read_only(dir: &Path) -> Result<Engine, Failure> {
    require_database(dir)?;
    let opts = Options {
        numa: shardstone::numa::Numa::Off,
        ..Options::default()
    };
    Engine::open_read_only(dir, opts).map_err(|e| Failure::of(e, dir))
}

/// The bytes of every file under `path` (0 when it does not exist). Files that
/// vanish while it is summed are skipped: it runs beside a backup or restore
/// that renames its temporary files.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
