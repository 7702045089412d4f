//! Command-line parsing: the run the user asks for, and the two child modes the
//! parent uses (`load`, `cell`). Hand-written: a handful of flags.

use crate::cell::CellSpec;
use crate::engines::Kind;
use crate::workload::Workload;
use std::path::PathBuf;
use std::time::Duration;

/// Usage text for `--help` and errors.
pub const USAGE: &str = "\
shardstone-compare: the same workloads on shardstone, redb, fjall and canopydb

USAGE:
    shardstone-compare [--quick] [OPTIONS]

OPTIONS:
    --quick              CI smoke run: 100,000 keys, 2 threads, 0.5 s cells (< 60 s)
    --threads 1,2,4      thread counts (default: 1,2,4,8 and powers of two up to the CPU count)
    --workloads w1,w4    any of w1 w2 w3 w4 (both halves) w4-fast w4-mixed w5
                         w6 (shared-leaf blind writes) w6-rmw w7 (order service)
                         w8 (storm: both halves) w8-fast w8-storm counter
    --engines a,b        any of shardstone redb fjall canopydb (the default set) and
                         shardstone-bedrock (shardstone with Escalation::StopTheWorld)
    --keys N             items preloaded per engine (default 1,000,000)
    --seconds S          measured seconds per cell (default 3)
    --warmup S           unmeasured seconds per cell before it (default 0.5)
    --out DIR            results.json, throughput.png, latency.png (default target/compare)
    --dir DIR            database directories (default: a fresh one under the temp dir)
    --keep-data          leave the databases behind
    --no-charts          skip the PNGs
";

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
        /// Items.
        keys: u64,
        /// Its database directory.
        dir: PathBuf,
    },
    /// A child running one cell.
    Cell(CellSpec),
    /// `--help`.
    Help,
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

fn list<T>(s: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| parse(x.trim()).ok_or_else(|| format!("unknown {what} `{x}`")))
        .collect()
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}` is not a number of seconds"))
}

fn number(s: &str) -> Result<u64, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut it = args.iter().map(String::as_str).peekable();
    let child = it.next_if(|a| *a == "load" || *a == "cell");
    let mut flags: Vec<(&str, Option<&str>)> = Vec::new();
    while let Some(flag) = it.next() {
        let takes_value = !matches!(
            flag,
            "--quick" | "--keep-data" | "--no-charts" | "--help" | "-h"
        );
        let value = if takes_value {
            Some(it.next().ok_or_else(|| format!("{flag} needs a value"))?)
        } else {
            None
        };
        flags.push((flag, value));
    }
    let get = |name: &str| {
        flags
            .iter()
            .rev()
            .find(|(f, _)| *f == name)
            .and_then(|(_, v)| *v)
    };
    let has = |name: &str| flags.iter().any(|(f, _)| *f == name);
    if has("--help") || has("-h") {
        return Ok(Invocation::Help);
    }
    let known = [
        "--quick",
        "--threads",
        "--workloads",
        "--engines",
        "--keys",
        "--seconds",
        "--warmup",
        "--out",
        "--dir",
        "--keep-data",
        "--no-charts",
        "--engine",
        "--workload",
    ];
    if let Some((f, _)) = flags.iter().find(|(f, _)| !known.contains(f)) {
        return Err(format!("unknown option {f}"));
    }
    let quick = has("--quick");
    let keys =
        get("--keys")
            .map(number)
            .transpose()?
            .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    if !(1000..1 << 32).contains(&keys) {
        return Err("--keys must be from 1,000 to 2^32".to_string());
    }
    let dir = get("--dir").map(PathBuf::from);
    let engine = || {
        get("--engine")
            .and_then(Kind::parse)
            .ok_or_else(|| "a child needs --engine".to_string())
    };
    match child {
        Some("load") => Ok(Invocation::Load {
            engine: engine()?,
            keys,
            dir: dir.ok_or("load needs --dir")?,
        }),
        Some(_) => Ok(Invocation::Cell(CellSpec {
            engine: engine()?,
            workload: get("--workload")
                .and_then(|w| Workload::ALL.into_iter().find(|x| x.name() == w))
                .ok_or("cell needs --workload")?,
            threads: get("--threads")
                .map(number)
                .transpose()?
                .ok_or("cell needs --threads")? as usize,
            measure: seconds(get("--seconds").ok_or("cell needs --seconds")?)?,
            warmup: seconds(get("--warmup").ok_or("cell needs --warmup")?)?,
            keys,
            dir: dir.ok_or("cell needs --dir")?,
        })),
        None => {
            let mut threads = match get("--threads") {
                Some(s) => list(
                    s,
                    |x| x.parse::<usize>().ok().filter(|n| *n > 0),
                    "thread count",
                )?,
                None if quick => vec![2],
                None => default_threads(),
            };
            threads.sort_unstable();
            threads.dedup();
            let workloads = match get("--workloads") {
                Some(s) => {
                    let picked: Vec<Workload> = list(s, Workload::parse_list, "workload")?
                        .into_iter()
                        .flatten()
                        .collect();
                    Workload::ALL
                        .into_iter()
                        .filter(|w| picked.contains(w))
                        .collect()
                }
                None => Workload::ALL.to_vec(),
            };
            let engines = match get("--engines") {
                Some(s) => {
                    let picked = list(s, Kind::parse, "engine")?;
                    Kind::ALL
                        .into_iter()
                        .filter(|k| picked.contains(k))
                        .collect()
                }
                None => Kind::DEFAULT.to_vec(),
            };
            let (measure, warmup) = if quick { ("0.5", "0.1") } else { ("3", "0.5") };
            Ok(Invocation::Run(RunArgs {
                quick,
                threads,
                workloads,
                engines,
                keys,
                measure: seconds(get("--seconds").unwrap_or(measure))?,
                warmup: seconds(get("--warmup").unwrap_or(warmup))?,
                out: PathBuf::from(get("--out").unwrap_or("target/compare")),
                dir,
                keep_data: has("--keep-data"),
                charts: !has("--no-charts"),
            }))
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
