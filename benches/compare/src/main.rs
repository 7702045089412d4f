//! shardstone-compare: issue 7's harness. Runs the same workloads (W1–W8, the
//! hot counter, the sharing tax) on shardstone and on the engines a user would
//! pick instead (redb, fjall's `OptimisticTxDatabase`, canopydb's concurrent
//! writers, LMDB through heed, and with the `rocksdb` feature RocksDB's
//! `OptimisticTransactionDB`), each wrapped in the same retry adapter, with
//! durability set equal per run; prints a Markdown table, writes JSON and PNG
//! charts.
//!
//! Layout: `engines/` (one adapter per engine behind one trait), `workload`
//! (the commands), `cell` (one measured cell, in a child process), `plan` (the
//! parent: preloads and the order of cells), `report` (tables, targets, JSON),
//! `charts` (PNGs), `keys` (key, value and Zipf generation), `rss` (peak memory).

mod cell;
mod charts;
mod cli;
mod engines;
mod keys;
mod plan;
mod report;
mod rss;
mod workload;

use cli::Invocation;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--help` and bad arguments: clap prints them and exits (0 or 2).
    let invocation = cli::parse(&args).unwrap_or_else(|e| e.exit());
    let done = match invocation {
        Invocation::Load {
            engine,
            keys,
            part,
            dir,
        } => plan::load(engine, keys, part, &dir).and_then(|r| print_result(&r)),
        Invocation::Cell(spec) => cell::run(&spec).and_then(|r| print_result(&r)),
        Invocation::Run(run) => compare(&run, &args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child's result line for the parent.
fn print_result(r: &impl serde::Serialize) -> Result<(), String> {
    let json = serde_json::to_string(r).map_err(|e| e.to_string())?;
    println!("{}{json}", plan::RESULT_PREFIX);
    Ok(())
}

/// The parent: runs every cell, then writes the JSON, the charts and the table.
fn compare(run: &cli::RunArgs, args: &[String]) -> Result<(), String> {
    let command = std::iter::once("shardstone-compare")
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let report = plan::run(run, command)?;
    std::fs::create_dir_all(&run.out).map_err(|e| format!("{}: {e}", run.out.display()))?;
    let json = plan::json_path(&run.out);
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("{}: {e}", json.display()))?;
    eprintln!("wrote {}", json.display());
    if run.charts {
        let paths = charts::draw(&report, &run.out).map_err(|e| format!("charts: {e}"))?;
        for p in paths {
            eprintln!("wrote {}", p.display());
        }
    }
    print!("{}", report.markdown());
    println!(
        "Run took {:.1} s: `{}`.",
        report.total_seconds, report.command
    );
    Ok(())
}
