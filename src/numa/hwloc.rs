//! Topology through hwloc (cargo feature `hwloc`).
//!
//! hwloc2 2.2 panics on `objects_with_type(NUMANode)` (NUMA nodes are memory
//! children in hwloc 2, off the main tree), so nodes are derived from nodesets
//! instead: the root's nodeset lists them, and each PU's nodeset names its own.
//! `HWLOC_SYNTHETIC` in the environment makes hwloc describe a made-up machine.

use super::topology::{Node, Topology, TopologySource};
use crate::error::{Error, Result};
use hwloc2::ObjectType;
use std::collections::BTreeMap;

impl Topology {
    /// The topology as hwloc reports it (honouring `HWLOC_SYNTHETIC`).
    pub fn from_hwloc() -> Result<Topology> {
        let topo = hwloc2::Topology::new().ok_or(Error::Unsupported(
            "hwloc could not load the machine's topology",
        ))?;
        let root = topo.object_at_root();
        let mut nodes: BTreeMap<usize, Node> = root
            .nodeset()
            .map(|set| set.into_iter().collect::<Vec<u32>>())
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                let id = n as usize;
                let node = Node {
                    id,
                    cpus: Vec::new(),
                    cores: 0,
                    memory_bytes: None,
                };
                (id, node)
            })
            .collect();
        let first_node = |set: Option<hwloc2::NodeSet>| -> usize {
            set.and_then(|s| s.into_iter().next())
                .map_or(0, |n| n as usize)
        };
        let pus = topo
            .objects_with_type(&ObjectType::PU)
            .map_err(|_| Error::Unsupported("hwloc lists no processing units"))?;
        for pu in pus {
            let node = first_node(pu.nodeset());
            nodes
                .entry(node)
                .or_insert_with(|| Node {
                    id: node,
                    cpus: Vec::new(),
                    cores: 0,
                    memory_bytes: None,
                })
                .cpus
                .push(pu.os_index() as usize);
        }
        if let Ok(cores) = topo.objects_with_type(&ObjectType::Core) {
            for core in cores {
                if let Some(node) = nodes.get_mut(&first_node(core.nodeset())) {
                    node.cores += 1;
                }
            }
        }
        let mut nodes: Vec<Node> = nodes.into_values().collect();
        for node in &mut nodes {
            node.cpus.sort_unstable();
            if node.cores == 0 {
                node.cores = node.cpus.len();
            }
        }
        if nodes.iter().all(|n| n.cpus.is_empty()) {
            return Err(Error::Unsupported("hwloc lists no CPU"));
        }
        let mut topology = Topology::from_nodes(nodes)?;
        topology.set_source(TopologySource::Hwloc);
        Ok(topology)
    }
}

/// Pins threads through hwloc (`hwloc_set_cpubind` on the calling thread) and
/// binds memory with `mbind` (hwloc2 has no memory-binding call). What
/// `Numa::Auto` uses in builds with the `hwloc` feature. Under
/// `HWLOC_SYNTHETIC` hwloc does not bind at all, so pins are no-ops there.
pub struct HwlocBinder {
    topology: parking_lot::Mutex<hwloc2::Topology>,
}

impl std::fmt::Debug for HwlocBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HwlocBinder")
    }
}

impl HwlocBinder {
    /// A binder over the machine's topology; `None` when hwloc cannot load it.
    pub fn new() -> Option<HwlocBinder> {
        Some(HwlocBinder {
            topology: parking_lot::Mutex::new(hwloc2::Topology::new()?),
        })
    }
}

impl super::Binder for HwlocBinder {
    fn pin_thread(&self, cpu: usize) -> std::io::Result<()> {
        let cpu =
            u32::try_from(cpu).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        self.topology
            .lock()
            .set_cpubind(
                hwloc2::CpuSet::from(cpu),
                hwloc2::CpuBindFlags::CPUBIND_THREAD,
            )
            .map_err(|hwloc2::CpuBindError::Generic(errno, _)| {
                std::io::Error::from_raw_os_error(errno)
            })
    }

    fn bind_memory(
        &self,
        addr: *mut u8,
        len: usize,
        policy: &super::MemPolicy,
    ) -> std::io::Result<()> {
        super::OsBinder.bind_memory(addr, len, policy)
    }
}
