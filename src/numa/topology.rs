//! `Topology`: the NUMA nodes of a machine, each with its CPUs and memory.
//!
//! Discovered from Linux sysfs (`/sys/devices/system/node`), through hwloc with the
//! cargo feature `hwloc`, or built from a description for tests. Whatever the
//! source, the result is restricted to the CPUs this process may run on, and it
//! falls back to one node holding every CPU when nothing can be read. Placement
//! code only ever sees this type, never the machine.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// CPU ids at or above this are refused: Linux supports at most 8,192 CPUs, and
/// placement keeps tables indexed by CPU id.
pub const MAX_CPU_ID: usize = 1 << 16;

/// The NUMA layout a placement is computed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    source: TopologySource,
}

/// One NUMA node: a memory bank and the CPUs closest to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's number, as the kernel numbers it (what `mbind` takes).
    pub id: usize,
    /// Logical CPUs (hardware threads) of the node, ascending, as the kernel
    /// numbers them (what `sched_setaffinity` takes).
    pub cpus: Vec<usize>,
    /// Physical cores those CPUs belong to (`cpus.len()` when unknown).
    pub cores: usize,
    /// Memory of the node in bytes, when known.
    pub memory_bytes: Option<u64>,
}

/// Where a [`Topology`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// Linux sysfs, `/sys/devices/system/node`.
    Sysfs,
    /// The hwloc library (cargo feature `hwloc`).
    Hwloc,
    /// [`Topology::synthetic`].
    Synthetic,
    /// [`Topology::from_nodes`].
    Description,
    /// Nothing could be read: one node holding every CPU.
    Fallback,
}

impl Topology {
    /// The machine's topology: hwloc first with the `hwloc` feature, then sysfs,
    /// then one node of every CPU. Restricted to [`Topology::process_cpus`]: the
    /// process's cgroup cpuset (a container's or a systemd slice's CPUs) and its
    /// CPU affinity mask (`taskset`, systemd `CPUAffinity=`, `numactl
    /// --physcpubind`), so no shard or worker is planned on a CPU outside them.
    /// Nodes left without CPUs are kept, so memory-only nodes stay visible.
    pub fn discover() -> Topology {
        #[cfg(feature = "hwloc")]
        if let Ok(t) = Topology::from_hwloc() {
            return t.restricted_to(&allowed_cpus());
        }
        match Topology::from_sysfs(Path::new("/sys/devices/system/node")) {
            Ok(t) => t.restricted_to(&allowed_cpus()),
            Err(_) => Topology::fallback(),
        }
    }

    /// The CPUs this process may run on, process-wide: its cgroup's effective
    /// cpuset intersected with the CPU affinity mask of its main thread
    /// (`sched_getaffinity` of the process id), which `taskset`, systemd
    /// `CPUAffinity=` and `numactl --physcpubind` set before `exec` and every
    /// thread inherits. Not the calling thread's mask: an engine opened on a
    /// thread pinned to one CPU still plans over the whole process's CPUs. Empty
    /// when neither can be read (nothing is known about a restriction).
    ///
    /// ```
    /// use shardstone::numa::Topology;
    /// let allowed = Topology::process_cpus();
    /// let t = Topology::discover();
    /// assert!(allowed.is_empty() || t.cpus().all(|(_, cpu)| allowed.contains(&cpu)));
    /// ```
    pub fn process_cpus() -> BTreeSet<usize> {
        allowed_cpus()
    }

    /// One node holding every CPU this process may run on.
    pub fn fallback() -> Topology {
        let mut cpus: Vec<usize> = allowed_cpus().into_iter().collect();
        if cpus.is_empty() {
            cpus = (0..crate::sync::cpu_count()).collect();
        }
        Topology {
            nodes: vec![Node {
                id: 0,
                cores: cpus.len(),
                cpus,
                memory_bytes: None,
            }],
            source: TopologySource::Fallback,
        }
    }

    /// Reads a sysfs node directory laid out like `/sys/devices/system/node`:
    /// `node<N>/cpulist` and `node<N>/meminfo`; cores are counted from
    /// `../cpu/cpu<C>/topology/{physical_package_id,core_id}` when present.
    /// Fails when no node has a readable CPU list.
    pub fn from_sysfs(root: &Path) -> Result<Topology> {
        let io = |e: std::io::Error| Error::Io {
            op: "read NUMA topology",
            path: root.to_owned(),
            source: e,
        };
        let mut nodes = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let Ok(list) = std::fs::read_to_string(entry.path().join("cpulist")) else {
                continue;
            };
            let cpus = parse_cpu_list(&list).ok_or_else(|| Error::Corrupt {
                path: entry.path().join("cpulist"),
                offset: 0,
                commit_id: None,
                reason: format!("not a CPU list: {:?}", list.trim()),
            })?;
            let memory_bytes = std::fs::read_to_string(entry.path().join("meminfo"))
                .ok()
                .and_then(|m| parse_mem_total(&m));
            let cores = count_cores(&root.join("../cpu"), &cpus);
            nodes.push(Node {
                id,
                cpus,
                cores,
                memory_bytes,
            });
        }
        if nodes.iter().all(|n| n.cpus.is_empty()) {
            return Err(Error::Unsupported("sysfs lists no NUMA node with CPUs"));
        }
        nodes.sort_by_key(|n| n.id);
        Ok(Topology {
            nodes,
            source: TopologySource::Sysfs,
        })
    }

    /// A made-up machine: `sockets` nodes (one per socket), each with
    /// `cores_per_socket` cores of `threads_per_core` hardware threads. CPUs are
    /// numbered as Linux numbers them on common two-socket servers: the first
    /// thread of every core across all sockets, then the second threads, so CPU
    /// `c` and `c + sockets * cores_per_socket` are siblings.
    ///
    /// ```
    /// let t = shardstone::numa::Topology::synthetic(2, 8, 2);
    /// assert_eq!((t.nodes().len(), t.core_count(), t.cpu_count()), (2, 16, 32));
    /// assert_eq!(t.node_of_cpu(8), Some(1));
    /// assert_eq!(t.node_of_cpu(16), Some(0)); // the sibling of CPU 0
    /// ```
    pub fn synthetic(sockets: usize, cores_per_socket: usize, threads_per_core: usize) -> Topology {
        let (sockets, cores, threads) = (
            sockets.max(1),
            cores_per_socket.max(1),
            threads_per_core.max(1),
        );
        let nodes = (0..sockets)
            .map(|s| {
                let mut cpus: Vec<usize> = (0..threads)
                    .flat_map(|t| (0..cores).map(move |c| t * sockets * cores + s * cores + c))
                    .collect();
                cpus.sort_unstable();
                Node {
                    id: s,
                    cpus,
                    cores,
                    memory_bytes: None,
                }
            })
            .collect();
        Topology {
            nodes,
            source: TopologySource::Synthetic,
        }
    }

    /// A topology from a description. Node ids must be distinct, no CPU may be in
    /// two nodes, CPU ids must be below [`MAX_CPU_ID`], and at least one node must
    /// have a CPU.
    ///
    /// ```
    /// use shardstone::numa::{Node, Topology};
    /// let node = |id, cpus: &[usize]| Node { id, cpus: cpus.to_vec(), cores: cpus.len(), memory_bytes: None };
    /// let t = Topology::from_nodes(vec![node(0, &[0, 2]), node(1, &[1, 3])])?;
    /// assert_eq!(t.node_of_cpu(3), Some(1));
    /// assert!(Topology::from_nodes(vec![node(0, &[0]), node(1, &[0])]).is_err());
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn from_nodes(mut nodes: Vec<Node>) -> Result<Topology> {
        let invalid = |reason: String| Error::InvalidOptions {
            option: "numa topology",
            reason,
        };
        let mut ids = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for node in &mut nodes {
            if !ids.insert(node.id) {
                return Err(invalid(format!("node {} is listed twice", node.id)));
            }
            node.cpus.sort_unstable();
            for &cpu in &node.cpus {
                if cpu >= MAX_CPU_ID {
                    return Err(invalid(format!("CPU {cpu} is not below {MAX_CPU_ID}")));
                }
                if !seen.insert(cpu) {
                    return Err(invalid(format!("CPU {cpu} is in two nodes")));
                }
            }
        }
        if seen.is_empty() {
            return Err(invalid("no node has a CPU".to_owned()));
        }
        nodes.sort_by_key(|n| n.id);
        Ok(Topology {
            nodes,
            source: TopologySource::Description,
        })
    }

    #[cfg(feature = "hwloc")]
    pub(crate) fn set_source(&mut self, source: TopologySource) {
        self.source = source;
    }

    /// The nodes, by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// Logical CPUs over all nodes.
    pub fn cpu_count(&self) -> usize {
        self.nodes.iter().map(|n| n.cpus.len()).sum()
    }

    /// Physical cores over all nodes.
    pub fn core_count(&self) -> usize {
        self.nodes.iter().map(|n| n.cores).sum()
    }

    /// The node CPU `cpu` belongs to.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.cpus.binary_search(&cpu).is_ok())
            .map(|n| n.id)
    }

    /// Every CPU, node by node (the order placement hands them out in).
    pub fn cpus(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.nodes
            .iter()
            .flat_map(|n| n.cpus.iter().map(move |&c| (n.id, c)))
    }

    /// The same topology with only the CPUs in `allowed`, say
    /// [`Topology::process_cpus`] for a [`Numa::Custom`](super::Numa::Custom)
    /// view of the real machine. An empty set, or one that shares no CPU with the
    /// topology, keeps everything: nothing usable was learned about the mask.
    /// Nodes left without CPUs are kept (they get no shards or workers).
    ///
    /// ```
    /// use shardstone::numa::Topology;
    /// let t = Topology::synthetic(2, 2, 1).restricted_to(&[1, 2].into());
    /// assert_eq!(t.cpus().collect::<Vec<_>>(), [(0, 1), (1, 2)]);
    /// ```
    pub fn restricted_to(mut self, allowed: &BTreeSet<usize>) -> Topology {
        let kept = self
            .nodes
            .iter()
            .flat_map(|n| &n.cpus)
            .filter(|c| allowed.contains(c))
            .count();
        if allowed.is_empty() || kept == 0 {
            return self;
        }
        for node in &mut self.nodes {
            let before = node.cpus.len();
            node.cpus.retain(|c| allowed.contains(c));
            // Cores shrink in proportion; exact core ids are not kept.
            if before > 0 {
                node.cores = (node.cores * node.cpus.len()).div_ceil(before);
            }
        }
        self
    }
}

/// Parses a kernel CPU list such as `0-3,8-11,16`.
pub(crate) fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let mut cpus = Vec::new();
    if s.is_empty() {
        return Some(cpus);
    }
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 20 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    if cpus.iter().any(|&c| c >= MAX_CPU_ID) {
        return None;
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// `Node 0 MemTotal:       32768000 kB` → bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.contains("MemTotal:"))?;
    let mut words = line.split_whitespace().rev();
    let unit = words.next()?;
    let n: u64 = words.next()?.parse().ok()?;
    match unit {
        "kB" => n.checked_mul(1024),
        _ => Some(n),
    }
}

/// Distinct (package, core) pairs among `cpus`; `cpus.len()` when sysfs does not say.
fn count_cores(cpu_dir: &Path, cpus: &[usize]) -> usize {
    let read = |cpu: usize, file: &str| -> Option<u64> {
        std::fs::read_to_string(cpu_dir.join(format!("cpu{cpu}/topology/{file}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut cores = BTreeMap::new();
    for &cpu in cpus {
        match (read(cpu, "physical_package_id"), read(cpu, "core_id")) {
            (Some(p), Some(c)) => {
                cores.insert((p, c), ());
            }
            _ => return cpus.len(),
        }
    }
    cores.len()
}

/// The CPUs this process may run on: the cgroup cpuset and the process's
/// affinity mask, intersected (see [`Topology::process_cpus`]). Either one alone
/// when the other is unknown; the affinity mask when the two share nothing (the
/// kernel keeps a mask inside the cpuset, so that means the cpuset read is stale).
pub(crate) fn allowed_cpus() -> BTreeSet<usize> {
    combine_masks(&cgroup_cpus(), &process_affinity())
}

/// What [`allowed_cpus`] makes of a cpuset and an affinity mask (empty: unknown).
fn combine_masks(cpuset: &BTreeSet<usize>, affinity: &BTreeSet<usize>) -> BTreeSet<usize> {
    if affinity.is_empty() {
        return cpuset.clone();
    }
    let both: BTreeSet<usize> = cpuset.intersection(affinity).copied().collect();
    if both.is_empty() {
        affinity.clone()
    } else {
        both
    }
}

/// The affinity mask of the process's main thread (`sched_getaffinity` of the
/// process id), which is what the process was started with unless that thread
/// changed it. Empty when it cannot be read.
fn process_affinity() -> BTreeSet<usize> {
    const WORD: usize = 8 * std::mem::size_of::<libc::c_ulong>();
    // Room for every CPU id placement accepts: a `cpu_set_t` holds only 1,024.
    let mut mask: Vec<libc::c_ulong> = vec![0; MAX_CPU_ID / WORD];
    // SAFETY: the kernel writes at most `size` bytes into `mask`, which has them;
    // `cpu_set_t` is a plain bit array, so a larger buffer is a valid argument.
    let r = unsafe {
        libc::sched_getaffinity(
            libc::getpid(),
            std::mem::size_of_val(mask.as_slice()),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if r != 0 {
        return BTreeSet::new();
    }
    (0..MAX_CPU_ID)
        .filter(|&c| mask[c / WORD] & (1 << (c % WORD)) != 0)
        .collect()
}

/// The process's cgroup's effective cpuset (v2, or v1's cpuset controller),
/// looked up from its own cgroup towards the root. Empty when it cannot be read
/// (no restriction is known).
fn cgroup_cpus() -> BTreeSet<usize> {
    let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") else {
        return BTreeSet::new();
    };
    // (mount point, file) for each hierarchy that may hold a cpuset.
    let mut places = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            places.push((
                Path::new("/sys/fs/cgroup").join(path),
                "cpuset.cpus.effective",
            ));
        } else if controllers.split(',').any(|c| c == "cpuset") {
            places.push((
                Path::new("/sys/fs/cgroup/cpuset").join(path),
                "cpuset.effective_cpus",
            ));
        }
    }
    for (mut dir, file) in places {
        loop {
            if let Ok(list) = std::fs::read_to_string(dir.join(file)) {
                if let Some(cpus) = parse_cpu_list(&list).filter(|c| !c.is_empty()) {
                    return cpus.into_iter().collect();
                }
            }
            if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
                break;
            }
        }
    }
    BTreeSet::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8-9,12\n"),
            Some(vec![0, 1, 2, 3, 8, 9, 12])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("70000"), None);
    }

    #[test]
    fn a_fake_sysfs_tree_reads_as_two_nodes() {
        let root = std::env::temp_dir().join(format!("shardstone-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let node_dir = root.join("node");
        for (n, list, mem) in [(0, "0-3", 1024u64), (1, "4-7", 2048)] {
            let d = node_dir.join(format!("node{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{list}\n")).unwrap();
            std::fs::write(
                d.join("meminfo"),
                format!("Node {n} MemTotal:       {mem} kB\nNode {n} MemFree: 1 kB\n"),
            )
            .unwrap();
        }
        // Two threads per core: cpu c and c ^ 1 share a core.
        for cpu in 0..8 {
            let d = root.join(format!("cpu/cpu{cpu}/topology"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("physical_package_id"), format!("{}\n", cpu / 4)).unwrap();
            std::fs::write(d.join("core_id"), format!("{}\n", (cpu % 4) / 2)).unwrap();
        }
        std::fs::write(node_dir.join("online"), "0-1\n").unwrap();
        let t = Topology::from_sysfs(&node_dir).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(t.source(), TopologySource::Sysfs);
        assert_eq!(t.nodes().len(), 2);
        assert_eq!(t.nodes()[1].cpus, vec![4, 5, 6, 7]);
        assert_eq!(t.nodes()[1].memory_bytes, Some(2048 * 1024));
        assert_eq!((t.cpu_count(), t.core_count()), (8, 4));
        assert_eq!(t.node_of_cpu(5), Some(1));
    }

    #[test]
    fn descriptions_with_impossible_cpus_are_refused() {
        let node = |id, cpus: Vec<usize>| Node {
            id,
            cores: cpus.len(),
            cpus,
            memory_bytes: None,
        };
        for bad in [
            vec![node(0, vec![MAX_CPU_ID])],
            vec![node(0, vec![usize::MAX])],
            vec![node(0, vec![])],
            vec![node(0, vec![1]), node(0, vec![2])],
        ] {
            assert!(
                matches!(
                    Topology::from_nodes(bad.clone()),
                    Err(Error::InvalidOptions { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_affinity_mask_narrows_the_cpuset() {
        let set = |c: &[usize]| c.iter().copied().collect::<BTreeSet<usize>>();
        // `taskset -c 1` inside a cpuset of 0-3.
        assert_eq!(combine_masks(&set(&[0, 1, 2, 3]), &set(&[1])), set(&[1]));
        // Either alone when the other is unknown.
        assert_eq!(combine_masks(&set(&[]), &set(&[2, 3])), set(&[2, 3]));
        assert_eq!(combine_masks(&set(&[0, 1]), &set(&[])), set(&[0, 1]));
        // Nothing in common: the mask, which the kernel enforces.
        assert_eq!(combine_masks(&set(&[0]), &set(&[5])), set(&[5]));
        // This process's own mask is read.
        assert!(!process_affinity().is_empty());
    }

    #[test]
    fn restriction_keeps_only_allowed_cpus() {
        let t = Topology::synthetic(2, 2, 1).restricted_to(&BTreeSet::from([0, 2]));
        assert_eq!(t.nodes()[0].cpus, vec![0]);
        assert_eq!(t.nodes()[1].cpus, vec![2]);
        // A mask that shares nothing with the topology is ignored.
        let t = Topology::synthetic(1, 2, 1).restricted_to(&BTreeSet::from([99]));
        assert_eq!(t.cpu_count(), 2);
    }
}
