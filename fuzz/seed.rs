//! Writes the seed corpora of every fuzz target from real databases built by
//! the engine (`build_database`, `build_journal_only`):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin seed
//! ```
//!
//! It replaces the files it names under `fuzz/corpus/<target>/` and leaves any
//! other file there alone.

use shardstone::CommitRecord;
use shardstone_fuzz::{
    build_database, build_journal_only, collect_files, compact_checkpoint, empty_manifest,
    join_records, records, Scratch, CONSUMERS, MANIFEST, SEGMENT,
};
use std::path::{Path, PathBuf};

fn main() -> shardstone::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let scratch = Scratch::new("seed");
    let db = scratch.reset("db");
    build_database(&db)?;
    let journal_only = scratch.reset("journal-only");
    build_journal_only(&journal_only)?;

    let mut files = Vec::new();
    collect_files(&db, Path::new(""), &mut files);
    let mut jfiles = Vec::new();
    collect_files(&journal_only, Path::new(""), &mut jfiles);

    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for (path, bytes) in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.starts_with("journal") {
            seeds.push(("segment_file", format!("db-{name}"), trim_zeros(bytes)));
        } else if name == MANIFEST {
            seeds.push(("manifest_file", "db-manifest".into(), bytes.clone()));
        } else if name == CONSUMERS {
            seeds.push(("consumers_file", "db-consumers".into(), bytes.clone()));
        } else if name.ends_with(".ckpt") {
            let compact = compact_checkpoint(bytes);
            seeds.push(("checkpoint_file", format!("db-{name}"), compact));
        }
    }
    for (path, bytes) in &jfiles {
        if path == &PathBuf::from("journal").join(SEGMENT) {
            let trimmed = trim_zeros(bytes);
            seeds.push(("segment_file", format!("journal-only-{SEGMENT}"), trimmed));
        }
    }
    seeds.push(("manifest_file", "empty-manifest".into(), empty_manifest()));

    for (label, dir) in [("db", &db), ("journal-only", &journal_only)] {
        let recs: Vec<Vec<u8>> = records(dir)?
            .iter()
            .map(CommitRecord::encode)
            .collect::<shardstone::Result<_>>()?;
        for (i, r) in recs.iter().enumerate() {
            seeds.push(("record_decode", format!("{label}-{:02}", i + 1), r.clone()));
        }
        seeds.push((
            "follower_apply",
            format!("{label}-all"),
            join_records(&recs),
        ));
    }

    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("create a corpus directory");
        std::fs::write(dir.join(&name), &bytes).expect("write a seed");
        println!("{target}/{name}: {} bytes", bytes.len());
    }
    Ok(())
}

/// A segment without the zeros preallocated after its last frame (recovery
/// reads a shorter file the same way), so that seeds stay small.
fn trim_zeros(bytes: &[u8]) -> Vec<u8> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end.div_ceil(8) * 8].to_vec()
}
