//! How long a reopen takes after a steady write load, with and without
//! automatic checkpoints (`Options::auto_checkpoint`): the numbers in
//! docs/operations.md, "Checkpoints and disk use".
//!
//! ```text
//! cargo run --release --example reopen_time -- [MIB] [THRESHOLD_MIB] [DIR]
//! ```
//!
//! Writes about `MIB` MiB of journal (1 KiB values over 100,000 keys, 2
//! writer threads, `Durability::Buffered` so that the disk's fsync rate does
//! not set the pace; replay is the same for every level), once with automatic
//! checkpoints every `THRESHOLD_MIB` MiB and once without, closes, and times
//! the reopen. Defaults: 1024 MiB, 256 MiB (the default threshold), the
//! system temp directory.

use shardstone::{AutoCheckpoint, Durability, Engine, Options};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KEYS: u64 = 100_000;
const VALUE_LEN: usize = 1024;

fn journal_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("journal"))
        .map(|es| {
            es.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn run(dir: &Path, mib: u64, auto: Option<AutoCheckpoint>) -> shardstone::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let opts = Options {
        durability: Durability::Buffered,
        auto_checkpoint: auto,
        ..Default::default()
    };
    // A record is about its value plus 60 bytes of key, name and framing.
    let per_writer = (mib << 20) / (VALUE_LEN as u64 + 60) / 2;
    let start = Instant::now();
    let engine = Engine::open_with(dir, opts.clone())?;
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let engine = &engine;
            s.spawn(move || {
                let mut value = vec![0u8; VALUE_LEN];
                for i in 0..per_writer {
                    let n = w * per_writer + i;
                    value[..8].copy_from_slice(&n.to_le_bytes());
                    let key = format!("key{:08}", n % KEYS);
                    engine
                        .run("load", |tx| tx.put(key.as_bytes(), &value))
                        .expect("commit");
                }
            });
        }
    });
    let wrote = start.elapsed();
    let stats = engine.stats();
    let journal = journal_on_disk(dir);
    engine.close()?;
    let start = Instant::now();
    let reopened = Engine::open_with(
        dir,
        Options {
            auto_checkpoint: None,
            ..opts
        },
    )?;
    let reopen = start.elapsed();
    let replayed = reopened.stats().journal.replayed;
    drop(reopened);
    let label = match auto {
        Some(a) => format!("auto every {} MiB", a.bytes >> 20),
        None => "no checkpoints".to_owned(),
    };
    println!(
        "| {label} | {} | {:.1} s | {} | {} MiB | {replayed} | {:.2} s |",
        stats.commits,
        wrote.as_secs_f64(),
        stats.journal.auto_checkpoints,
        journal >> 20,
        reopen.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn main() -> shardstone::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(1024, |a| a.parse().expect("MIB"));
    let threshold: u64 = args
        .next()
        .map_or(256, |a| a.parse().expect("THRESHOLD_MIB"));
    let base: PathBuf = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("shardstone-reopen-time-{}", std::process::id()));
    println!("about {mib} MiB of journal, {KEYS} keys of {VALUE_LEN}-byte values, 2 writers");
    println!("| checkpoints | commits | write time | automatic checkpoints | journal on disk at close | replayed on reopen | reopen time |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let auto = AutoCheckpoint {
        bytes: threshold << 20,
        interval: Duration::from_secs(600),
    };
    run(&dir, mib, None)?;
    run(&dir, mib, Some(auto))?;
    Ok(())
}
