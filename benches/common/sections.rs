//! Plain-timed sections, for the benches that time runs themselves and print tables
//! (`feed`, `journal`): the section filter, run lengths by run mode, and the bench
//! directory, kept off memory file systems.

use super::full_run;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Criterion options that take a value (so the value is not read as a filter).
const VALUE_FLAGS: &[&str] = &[
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--color",
    "-c",
    "--format",
    "--output-format",
    "--plotting-backend",
    "--profile-time",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
];

/// Whether the plain-timed section `name` runs: with no filter argument all do,
/// otherwise those whose name contains the filter or one of its `|`-separated
/// alternatives (criterion applies the same filter, as a regex, to the bench's
/// criterion groups). `--list` runs none of them.
pub fn selected(name: &str) -> bool {
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in std::env::args().skip(1) {
        if skip_value {
            skip_value = false;
        } else if arg == "--list" {
            return false;
        } else if arg.starts_with('-') {
            skip_value = VALUE_FLAGS.contains(&arg.as_str());
        } else {
            filters.push(arg);
        }
    }
    // Criterion reads the filter as a regex; alternatives (`a|b`) are all we need.
    filters.is_empty()
        || filters
            .iter()
            .flat_map(|f| f.split('|'))
            .any(|f| name.contains(f))
}

/// Plain-timed length: `full` in full runs, `quick` otherwise.
pub fn span(full: Duration, quick: Duration) -> Duration {
    if full_run() {
        full
    } else {
        quick
    }
}

/// The file system a path lives on: (type, source, mount point), from
/// `/proc/self/mounts` (the longest mount point that contains the path).
fn mount_of(path: &Path) -> Option<(String, String, String)> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let point = f[1].replace("\\040", " ");
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), (f[2].to_owned(), f[0].to_owned(), point)));
        }
    }
    best.map(|(_, m)| m)
}

fn in_memory_fs(fs_type: &str) -> bool {
    matches!(fs_type, "tmpfs" | "ramfs" | "devtmpfs")
}

/// This run's bench directory (removed on drop) and a description of its file system.
pub struct BenchDir {
    pub root: PathBuf,
    pub fs: String,
}

impl BenchDir {
    /// `shardstone-bench-<bench>-<pid>` under `std::env::temp_dir()`, or under the
    /// bench's target directory when the temp directory is on a memory file system
    /// (tmpfs, ramfs: no writeback, and fdatasync costs nothing). Prints where it is,
    /// and `memory_fs_warning` if it still ends up on a memory file system.
    pub fn new(bench: &str, memory_fs_warning: &str) -> BenchDir {
        let name = format!("shardstone-bench-{bench}-{}", std::process::id());
        let mut root = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&root).expect("create bench directory");
        let mut mount = mount_of(&root);
        if mount.as_ref().is_some_and(|m| in_memory_fs(&m.0)) {
            // Writes to a memory file system cost nothing like a disk's: go to a disk.
            let _ = std::fs::remove_dir_all(&root);
            let target = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_owned()))
                .unwrap_or_else(|| PathBuf::from("target"));
            root = target.join(&name);
            std::fs::create_dir_all(&root).expect("create bench directory");
            mount = mount_of(&root);
        }
        let fs = match &mount {
            Some((ty, source, point)) => format!("{ty} ({source} mounted on {point})"),
            None => "an unknown file system".to_owned(),
        };
        eprintln!("{bench} bench directory: {} on {fs}", root.display());
        if mount.as_ref().is_some_and(|m| in_memory_fs(&m.0)) {
            eprintln!("  WARNING: a memory file system: {memory_fs_warning}");
        }
        BenchDir { root, fs }
    }

    /// A fresh, empty subdirectory.
    pub fn sub(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create bench subdirectory");
        dir
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
