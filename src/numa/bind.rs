//! Binding memory to nodes and threads to CPUs, behind the [`Binder`] trait.
//!
//! [`OsBinder`] does it with `mbind` and `sched_setaffinity` (hwloc2 has no
//! memory-binding call, so the `hwloc` build binds through the same system
//! calls). [`RecordingBinder`] only records what it was asked, so a placement on
//! a made-up topology can be checked on a one-node machine. A binding that fails
//! is reported (see [`crate::numa::Placement::bind_failures`]), never fatal: the
//! memory works, only farther away.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::fmt;
use std::io;

/// A memory policy for a range of memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemPolicy {
    /// Allocate on this node, spilling to others only when it is full
    /// (`MPOL_PREFERRED`: a full node slows down instead of invoking the OOM killer).
    Preferred(usize),
    /// Spread pages round-robin over these nodes (`MPOL_INTERLEAVE`).
    Interleave(Vec<usize>),
}

/// What the engine asks of the operating system to place its threads and memory.
pub trait Binder: Send + Sync + fmt::Debug {
    /// Pins the calling thread to `cpu`.
    fn pin_thread(&self, cpu: usize) -> io::Result<()>;
    /// Applies `policy` to the memory at `addr..addr + len` (page aligned), before
    /// it is first touched.
    fn bind_memory(&self, addr: *mut u8, len: usize, policy: &MemPolicy) -> io::Result<()>;
}

/// Binds through Linux system calls: `sched_setaffinity` and `mbind`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsBinder;

const MPOL_PREFERRED: i32 = 1;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_F_NODE: u64 = 1;
const MPOL_F_ADDR: u64 = 2;
/// Nodes a node mask can name: enough for any machine Linux runs on today.
const MASK_BITS: usize = 1024;
const WORD: usize = u64::BITS as usize;

fn node_mask(nodes: &[usize]) -> io::Result<[u64; MASK_BITS / WORD]> {
    let mut mask = [0u64; MASK_BITS / WORD];
    for &n in nodes {
        if n >= MASK_BITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {n} is beyond the {MASK_BITS} a node mask holds"),
            ));
        }
        mask[n / WORD] |= 1 << (n % WORD);
    }
    Ok(mask)
}

impl Binder for OsBinder {
    fn pin_thread(&self, cpu: usize) -> io::Result<()> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET checks the
        // index against the set's size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn bind_memory(&self, addr: *mut u8, len: usize, policy: &MemPolicy) -> io::Result<()> {
        let (mode, nodes) = match policy {
            MemPolicy::Preferred(n) => (MPOL_PREFERRED, vec![*n]),
            MemPolicy::Interleave(nodes) => (MPOL_INTERLEAVE, nodes.clone()),
        };
        let mask = node_mask(&nodes)?;
        // SAFETY: mbind only changes the policy of our own mapping; the mask
        // outlives the call and `maxnode` counts its bits (plus one: the kernel
        // reads maxnode - 1 of them).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                addr as libc::c_ulong,
                len as libc::c_ulong,
                mode as libc::c_ulong,
                mask.as_ptr(),
                (MASK_BITS + 1) as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One request a [`RecordingBinder`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// A thread asked to be pinned to `cpu`.
    Thread {
        /// The CPU.
        cpu: usize,
        /// The thread's name, if it has one.
        thread: Option<String>,
    },
    /// A memory range and the policy asked for it.
    Memory {
        /// Start of the range.
        addr: usize,
        /// Its length in bytes.
        len: usize,
        /// The policy.
        policy: MemPolicy,
    },
}

/// A [`Binder`] that binds nothing and records every request: for checking a
/// placement on a topology this machine does not have.
#[derive(Debug, Default)]
pub struct RecordingBinder {
    // A plain lock, not `crate::sync`'s: no loom model goes through a binder.
    requests: Mutex<Vec<Binding>>,
}

impl RecordingBinder {
    /// An empty recording.
    pub fn new() -> RecordingBinder {
        RecordingBinder::default()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Binding> {
        self.requests.lock().clone()
    }
}

impl Binder for RecordingBinder {
    fn pin_thread(&self, cpu: usize) -> io::Result<()> {
        let thread = std::thread::current().name().map(str::to_owned);
        self.requests.lock().push(Binding::Thread { cpu, thread });
        Ok(())
    }

    fn bind_memory(&self, addr: *mut u8, len: usize, policy: &MemPolicy) -> io::Result<()> {
        self.requests.lock().push(Binding::Memory {
            addr: addr as usize,
            len,
            policy: policy.clone(),
        });
        Ok(())
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
pub fn thread_affinity() -> io::Result<BTreeSet<usize>> {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
        Ok((0..bits).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// The policy set on the memory at `addr` (`get_mempolicy` with `MPOL_F_ADDR`):
/// `None` for the default (local) policy. For operators and tests.
pub fn memory_policy(addr: *const u8) -> io::Result<Option<MemPolicy>> {
    let mut mode: libc::c_int = 0;
    let mut mask = [0u64; MASK_BITS / WORD];
    // SAFETY: the kernel writes one int and at most MASK_BITS bits of mask.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            MASK_BITS as libc::c_ulong,
            addr as libc::c_ulong,
            MPOL_F_ADDR as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let nodes: Vec<usize> = (0..MASK_BITS)
        .filter(|&n| mask[n / WORD] & (1 << (n % WORD)) != 0)
        .collect();
    // Flags such as MPOL_F_STATIC_NODES ride in the high bits of the mode.
    Ok(match mode & 0xff {
        MPOL_PREFERRED => nodes.first().map(|&n| MemPolicy::Preferred(n)),
        MPOL_INTERLEAVE => Some(MemPolicy::Interleave(nodes)),
        _ => None,
    })
}

/// The node the page at `addr` lives on (`get_mempolicy` with
/// `MPOL_F_NODE | MPOL_F_ADDR`); the page must be resident.
pub fn node_of_address(addr: *const u8) -> io::Result<usize> {
    let mut node: libc::c_int = 0;
    // SAFETY: with MPOL_F_NODE the kernel writes one int; no mask is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<u64>(),
            0 as libc::c_ulong,
            addr as libc::c_ulong,
            (MPOL_F_NODE | MPOL_F_ADDR) as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(node as usize)
}
