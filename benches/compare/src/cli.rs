//! Command-line parsing with clap: the run the user asks for, and the two child
//! modes the parent uses (`load`, `cell`, hidden from `--help`).

use crate::cell::CellSpec;
use crate::engines::Kind;
use crate::workload::Workload;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The command line: the comparison's flags, or a child subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "shardstone-compare",
    about = "shardstone-compare: the same workloads on shardstone, redb, fjall, canopydb, \
             LMDB and (feature `rocksdb`) RocksDB",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    // A repeated flag takes its last value, as it always has.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,
    #[command(flatten)]
    run: RunFlags,
}

/// The comparison's flags (the parent).
#[derive(Args, Debug)]
struct RunFlags {
    /// CI smoke run: 100,000 keys, 2 threads, 0.5 s cells (< 60 s)
    #[arg(long)]
    quick: bool,
    /// thread counts [default: 1,2,4,8 and powers of two up to the CPU count; 2 with --quick]
    #[arg(long, value_name = "1,2,4", value_delimiter = ',', value_parser = thread_count)]
    threads: Vec<usize>,
    /// any of w1 w2 w3 w4 (both halves) w4-fast w4-mixed w5 w6 (shared-leaf blind
    /// writes) w6-rmw w7 (order service) w8 (storm: both halves) w8-fast w8-storm
    /// counter tax (the sharing tax: both halves) tax-many tax-one [default: all but
    /// the sharing tax]
    #[arg(long, value_name = "w1,w4", value_delimiter = ',', value_parser = workload_group)]
    workloads: Vec<String>,
    /// also measure the sharing tax at each thread count from 2: one engine with N
    /// threads on disjoint key ranges (tax-one) against N engines with one thread
    /// each (tax-many), the same commands; reports tax-one / tax-many
    #[arg(long)]
    sharing_tax: bool,
    /// any of shardstone redb fjall canopydb lmdb, rocksdb (built with --features
    /// rocksdb) (the default set: those this build has) and shardstone-bedrock
    /// (shardstone with Escalation::StopTheWorld)
    #[arg(long, value_name = "a,b", value_delimiter = ',', value_parser = engine)]
    engines: Vec<Kind>,
    /// items preloaded per engine [default: 1,000,000; 100,000 with --quick]
    #[arg(long, value_name = "N", value_parser = keys)]
    keys: Option<u64>,
    /// measured seconds per cell [default: 3; 0.5 with --quick]
    #[arg(long, value_name = "S", value_parser = seconds)]
    seconds: Option<Duration>,
    /// unmeasured seconds per cell before it [default: 0.5; 0.1 with --quick]
    #[arg(long, value_name = "S", value_parser = seconds)]
    warmup: Option<Duration>,
    /// results.json, throughput.png, latency.png
    #[arg(long, value_name = "DIR", default_value = "target/compare")]
    out: PathBuf,
    /// database directories [default: a fresh one under the temp dir]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// leave the databases behind
    #[arg(long)]
    keep_data: bool,
    /// skip the PNGs
    #[arg(long)]
    no_charts: bool,
}

/// The child processes the parent starts (see `cell_args` and `plan::run`).
#[derive(Subcommand, Debug)]
enum Child {
    /// Preload one engine: every item, or part `--part` of `--parts` of them.
    #[command(hide = true)]
    Load {
        #[arg(long, value_parser = engine)]
        engine: Kind,
        #[arg(long, value_parser = keys, default_value = "1000000")]
        keys: u64,
        #[arg(long, value_parser = number, default_value = "0")]
        part: u64,
        #[arg(long, value_parser = number, default_value = "1")]
        parts: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run one cell.
    #[command(hide = true)]
    Cell {
        #[arg(long, value_parser = engine)]
        engine: Kind,
        #[arg(long, value_parser = workload)]
        workload: Workload,
        #[arg(long, value_parser = number)]
        threads: u64,
        #[arg(long, value_parser = seconds)]
        seconds: Duration,
        #[arg(long, value_parser = seconds)]
        warmup: Duration,
        #[arg(long, value_parser = keys, default_value = "1000000")]
        keys: u64,
        #[arg(long)]
        dir: PathBuf,
    },
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// The quick (CI) mode.
    pub quick: bool,
    /// Thread counts, ascending.
    pub threads: Vec<usize>,
    /// Workloads, in report order.
    pub workloads: Vec<Workload>,
    /// Engines, shardstone first.
    pub engines: Vec<Kind>,
    /// Items preloaded per engine.
    pub keys: u64,
    /// Measured time per cell.
    pub measure: Duration,
    /// Warm-up per cell.
    pub warmup: Duration,
    /// Output directory.
    pub out: PathBuf,
    /// Database directory, if given.
    pub dir: Option<PathBuf>,
    /// Keep the databases.
    pub keep_data: bool,
    /// Draw the PNGs.
    pub charts: bool,
}

/// One invocation of the binary.
pub enum Invocation {
    /// The comparison (the parent).
    Run(RunArgs),
    /// A child preloading one engine.
    Load {
        /// The engine.
        engine: Kind,
        /// Items of the whole data set.
        keys: u64,
        /// Which part of them it loads, and of how many ([`crate::workload::part`]);
        /// `(0, 1)`: all of them.
        part: (usize, usize),
        /// Its database directory.
        dir: PathBuf,
    },
    /// A child running one cell.
    Cell(CellSpec),
}

/// The default thread counts: 1, 2, 4, 8, then powers of two up to the CPUs.
fn default_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut t = vec![1, 2, 4, 8];
    while *t.last().expect("non-empty") * 2 <= cores {
        t.push(t.last().expect("non-empty") * 2);
    }
    t
}

fn thread_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("unknown thread count `{s}`"))
}

/// A name `Workload::parse_list` knows (a workload or a group of them).
fn workload_group(s: &str) -> Result<String, String> {
    let name = s.trim();
    Workload::parse_list(name)
        .map(|_| name.to_owned())
        .ok_or_else(|| format!("unknown workload `{s}`"))
}

/// One workload by its exact name (a child's `--workload`).
fn workload(s: &str) -> Result<Workload, String> {
    Workload::ALL
        .into_iter()
        .find(|w| w.name() == s)
        .ok_or_else(|| format!("unknown workload `{s}`"))
}

fn engine(s: &str) -> Result<Kind, String> {
    let kind = Kind::parse(s.trim()).ok_or_else(|| format!("unknown engine `{s}`"))?;
    if kind.built() {
        Ok(kind)
    } else {
        Err(format!(
            "engine `{s}` needs the harness built with `--features {}`",
            kind.name()
        ))
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}` is not a number of seconds"))
}

/// A whole number; `_` may group the digits.
fn number(s: &str) -> Result<u64, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))
}

fn keys(s: &str) -> Result<u64, String> {
    let n = number(s)?;
    if (1000..1 << 32).contains(&n) {
        Ok(n)
    } else {
        Err("--keys must be from 1,000 to 2^32".to_string())
    }
}

/// Parses the arguments after the program name. `Err` carries clap's message,
/// `--help` included: `Error::exit` prints it where it belongs.
pub fn parse(args: &[String]) -> Result<Invocation, clap::Error> {
    let cli = Cli::try_parse_from(
        std::iter::once("shardstone-compare").chain(args.iter().map(String::as_str)),
    )?;
    Ok(match cli.child {
        Some(Child::Load {
            engine,
            keys,
            part,
            parts,
            dir,
        }) => {
            if parts == 0 || part >= parts || parts > keys {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--part {part} of --parts {parts} (of {keys} keys) is no part\n"),
                ));
            }
            Invocation::Load {
                engine,
                keys,
                part: (part as usize, parts as usize),
                dir,
            }
        }
        Some(Child::Cell {
            engine,
            workload,
            threads,
            seconds,
            warmup,
            keys,
            dir,
        }) => Invocation::Cell(CellSpec {
            engine,
            workload,
            threads: threads as usize,
            measure: seconds,
            warmup,
            keys,
            dir,
        }),
        None => Invocation::Run(cli.run.into_run()),
    })
}

impl RunFlags {
    /// Fills in the defaults (some depend on `--quick`) and puts the lists in
    /// report order.
    fn into_run(self) -> RunArgs {
        let quick = self.quick;
        let mut threads = match self.threads {
            t if !t.is_empty() => t,
            _ if quick => vec![2],
            _ => default_threads(),
        };
        threads.sort_unstable();
        threads.dedup();
        let workloads = {
            let mut picked: Vec<Workload> = if self.workloads.is_empty() {
                Workload::DEFAULT.to_vec()
            } else {
                self.workloads
                    .iter()
                    .filter_map(|name| Workload::parse_list(name))
                    .flatten()
                    .collect()
            };
            if self.sharing_tax {
                picked.extend(Workload::TAX);
            }
            Workload::ALL
                .into_iter()
                .filter(|w| picked.contains(w))
                .collect()
        };
        let engines = if self.engines.is_empty() {
            Kind::DEFAULT.to_vec()
        } else {
            Kind::ALL
                .into_iter()
                .filter(|k| self.engines.contains(k))
                .collect()
        };
        let (measure, warmup) = if quick { (0.5, 0.1) } else { (3.0, 0.5) };
        RunArgs {
            quick,
            threads,
            workloads,
            engines,
            keys: self.keys.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
            measure: self.seconds.unwrap_or(Duration::from_secs_f64(measure)),
            warmup: self.warmup.unwrap_or(Duration::from_secs_f64(warmup)),
            out: self.out,
            dir: self.dir,
            keep_data: self.keep_data,
            charts: !self.no_charts,
        }
    }
}

/// The arguments that make a child run `spec`.
pub fn cell_args(spec: &CellSpec) -> Vec<String> {
    vec![
        "cell".into(),
        "--engine".into(),
        spec.engine.name().into(),
        "--workload".into(),
        spec.workload.name().into(),
        "--threads".into(),
        spec.threads.to_string(),
        "--seconds".into(),
        spec.measure.as_secs_f64().to_string(),
        "--warmup".into(),
        spec.warmup.as_secs_f64().to_string(),
        "--keys".into(),
        spec.keys.to_string(),
        "--dir".into(),
        spec.dir.display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Invocation, clap::Error> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    fn run(line: &str) -> RunArgs {
        match parse_str(line) {
            Ok(Invocation::Run(r)) => r,
            Ok(_) => panic!("`{line}` is not a run"),
            Err(e) => panic!("`{line}`: {e}"),
        }
    }

    #[test]
    fn defaults() {
        let r = run("");
        assert!(!r.quick);
        assert_eq!(r.threads, default_threads());
        assert_eq!(r.workloads, Workload::DEFAULT.to_vec());
        assert_eq!(r.engines, Kind::DEFAULT.to_vec());
        assert_eq!(r.keys, 1_000_000);
        assert_eq!(r.measure, Duration::from_secs(3));
        assert_eq!(r.warmup, Duration::from_millis(500));
        assert_eq!(r.out, PathBuf::from("target/compare"));
        assert_eq!(r.dir, None);
        assert!(!r.keep_data);
        assert!(r.charts);
    }

    #[test]
    fn quick_defaults_and_overrides() {
        let r = run("--quick");
        assert!(r.quick);
        assert_eq!(r.threads, vec![2]);
        assert_eq!(r.keys, 100_000);
        assert_eq!(r.measure, Duration::from_millis(500));
        assert_eq!(r.warmup, Duration::from_millis(100));
        let r = run("--quick --threads 4 --keys 5_000 --seconds 1 --warmup 0");
        assert_eq!(r.threads, vec![4]);
        assert_eq!(r.keys, 5_000);
        assert_eq!(r.measure, Duration::from_secs(1));
        assert_eq!(r.warmup, Duration::ZERO);
    }

    #[test]
    fn lists_come_back_sorted_deduplicated_in_report_order() {
        let r = run("--threads 8,1,2,1 --workloads counter,w8,w1,w4 --engines redb,shardstone");
        assert_eq!(r.threads, vec![1, 2, 8]);
        assert_eq!(
            r.workloads,
            vec![
                Workload::W1,
                Workload::W4Fast,
                Workload::W4Mixed,
                Workload::W8Fast,
                Workload::W8Storm,
                Workload::Counter,
            ]
        );
        assert_eq!(r.engines, vec![Kind::Shardstone, Kind::Redb]);
        let r = run("--workloads w6-rmw,w6 --engines shardstone-bedrock");
        assert_eq!(r.workloads, vec![Workload::W6, Workload::W6Rmw]);
        assert_eq!(r.engines, vec![Kind::ShardstoneBedrock]);
    }

    #[test]
    fn sharing_tax_flag_adds_both_halves() {
        let r = run("--sharing-tax");
        let mut all = Workload::DEFAULT.to_vec();
        all.extend(Workload::TAX);
        assert_eq!(r.workloads, all);
        let r = run("--workloads w1 --sharing-tax");
        assert_eq!(
            r.workloads,
            vec![Workload::W1, Workload::TaxMany, Workload::TaxOne]
        );
        assert_eq!(run("--workloads tax").workloads, Workload::TAX.to_vec());
        assert_eq!(
            run("--workloads tax-one,tax --sharing-tax").workloads,
            Workload::TAX.to_vec()
        );
    }

    #[test]
    fn lmdb_is_a_default_engine_and_rocksdb_needs_its_feature() {
        assert!(Kind::DEFAULT.contains(&Kind::Lmdb));
        assert_eq!(run("--engines lmdb").engines, vec![Kind::Lmdb]);
        let rocks = parse_str("--engines rocksdb");
        if cfg!(feature = "rocksdb") {
            assert!(Kind::DEFAULT.contains(&Kind::Rocksdb));
            assert!(matches!(rocks, Ok(Invocation::Run(r)) if r.engines == vec![Kind::Rocksdb]));
        } else {
            assert!(!Kind::DEFAULT.contains(&Kind::Rocksdb));
            let e = rocks.err().expect("rocksdb refused without its feature");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--features rocksdb"), "{e}");
        }
    }

    #[test]
    fn paths_and_switches() {
        let r = run("--out /tmp/o --dir /tmp/d --keep-data --no-charts");
        assert_eq!(r.out, PathBuf::from("/tmp/o"));
        assert_eq!(r.dir, Some(PathBuf::from("/tmp/d")));
        assert!(r.keep_data);
        assert!(!r.charts);
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        assert_eq!(run("--keys 2000 --keys 3000").keys, 3000);
        assert_eq!(
            run("--seconds 1 --seconds 2").measure,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        for line in [
            "--threads 0",
            "--threads two",
            "--workloads w9",
            "--engines sqlite",
            "--keys 999",
            "--keys 4294967296",
            "--seconds -1",
            "--warmup x",
            "--bogus",
            "--keys",
            "--engine redb",
        ] {
            let e = parse_str(line)
                .err()
                .unwrap_or_else(|| panic!("`{line}` parsed"));
            assert_eq!(e.exit_code(), 2, "`{line}`");
        }
    }

    #[test]
    fn help_is_not_a_run() {
        for line in ["--help", "-h"] {
            let e = parse_str(line).err().expect("help");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            assert_eq!(e.exit_code(), 0);
        }
    }

    #[test]
    fn cell_args_parse_back_to_the_spec() {
        let spec = CellSpec {
            engine: Kind::Fjall,
            workload: Workload::W6Rmw,
            threads: 4,
            measure: Duration::from_millis(1500),
            warmup: Duration::from_millis(250),
            keys: 20_000,
            dir: PathBuf::from("/tmp/cell"),
        };
        match parse(&cell_args(&spec)) {
            Ok(Invocation::Cell(c)) => {
                assert_eq!(c.engine, spec.engine);
                assert_eq!(c.workload, spec.workload);
                assert_eq!(c.threads, spec.threads);
                assert_eq!(c.measure, spec.measure);
                assert_eq!(c.warmup, spec.warmup);
                assert_eq!(c.keys, spec.keys);
                assert_eq!(c.dir, spec.dir);
            }
            _ => panic!("not a cell"),
        }
        assert!(
            parse_str("cell --engine fjall --threads 1 --seconds 1 --warmup 0 --dir /d").is_err()
        );
    }

    #[test]
    fn load_child() {
        match parse_str("load --engine canopydb --keys 1_000 --dir /tmp/l") {
            Ok(Invocation::Load {
                engine,
                keys,
                part,
                dir,
            }) => {
                assert_eq!(engine, Kind::Canopydb);
                assert_eq!(keys, 1000);
                assert_eq!(part, (0, 1));
                assert_eq!(dir, PathBuf::from("/tmp/l"));
            }
            _ => panic!("not a load"),
        }
        match parse_str("load --engine lmdb --keys 2000 --part 1 --parts 2 --dir /tmp/p") {
            Ok(Invocation::Load { engine, part, .. }) => {
                assert_eq!(engine, Kind::Lmdb);
                assert_eq!(part, (1, 2));
            }
            _ => panic!("not a load"),
        }
        for bad in ["--part 2 --parts 2", "--parts 0", "--part 0 --parts 5000"] {
            let line = format!("load --engine redb --keys 1000 {bad} --dir /d");
            let e = parse_str(&line)
                .err()
                .unwrap_or_else(|| panic!("`{line}` parsed"));
            assert_eq!(e.exit_code(), 2, "`{line}`");
        }
        assert!(parse_str("load --engine redb --keys 1000").is_err());
        assert!(parse_str("load --keys 1000 --dir /d").is_err());
    }
}
