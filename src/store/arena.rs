//! Page memory: fixed-size page buffers carved from large anonymous mappings.
//!
//! Owns every byte of page memory of an engine. Pages come from `memmap2` anonymous
//! mappings (so a later layer can bind each mapping to a NUMA node) and are recycled
//! through per-thread-shard free lists, so allocation on the commit path takes an
//! uncontended lock and no system call. When many pages sit free, batches are handed
//! back to the kernel with `madvise(MADV_DONTNEED)`: a tree that grew and shrank
//! gives its resident memory back.
//!
//! With several memory domains (NUMA nodes, as the engine's `MemoryHome` says),
//! there is one `Arena` per domain and `Arenas` routes: an allocation comes from
//! the caller's domain, and a freed page goes back to the arena whose mapping it
//! lies in (found through `Owners`, a two-level table over 2 MiB blocks; chunks
//! are 2 MiB aligned so no block is shared by two domains).
//!
//! Invariant: a page pointer is either in exactly one free list or owned by exactly
//! one holder (a page version, an overflow chain, or a commit being prepared).

use crate::error::{Error, Result};
use crate::sync::{thread_shard, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use std::sync::Arc;

/// Where page memory lives: the engine's NUMA layout, seen by the store as
/// numbered memory domains. The store knows nothing of nodes.
pub(crate) trait MemoryHome: Send + Sync {
    /// How many domains (arenas) there are; at least 1.
    fn domains(&self) -> usize;
    /// The domain the calling thread allocates from.
    fn domain_of_caller(&self) -> usize;
    /// Called on a fresh mapping of `domain`, before it is first touched.
    fn prepare(&self, domain: usize, addr: *mut u8, len: usize);
}

/// Chunks of a multi-domain arena are aligned to and sized in these blocks.
const BLOCK_SHIFT: u32 = 21;
/// Block index bits resolved by each level of `Owners` (47-bit user addresses).
const LEVEL_BITS: u32 = 13;
const LEVEL: usize = 1 << LEVEL_BITS;

/// One leaf of `Owners`: a domain + 1 per block, 0 for none.
type Leaf = [std::sync::atomic::AtomicU8; LEVEL];

/// Which domain each 2 MiB block of page memory belongs to. Written when a chunk
/// is mapped, read lock-free by `free`. Plain std atomics: no loom model covers
/// placement, and loom's would make each leaf many times larger.
struct Owners {
    top: Box<[std::sync::atomic::AtomicPtr<Leaf>]>,
}

impl Owners {
    fn new() -> Owners {
        Owners {
            top: (0..LEVEL)
                .map(|_| std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }

    fn split(addr: usize) -> Option<(usize, usize)> {
        let block = addr >> BLOCK_SHIFT;
        let top = block >> LEVEL_BITS;
        (top < LEVEL).then_some((top, block & (LEVEL - 1)))
    }

    /// Records `domain` for every block of `addr..addr + len` (block aligned).
    fn set(&self, addr: usize, len: usize, domain: usize) {
        let mut a = addr;
        while a < addr + len {
            let Some((top, leaf)) = Owners::split(a) else {
                return; // beyond the table: `free` falls back to the caller's domain
            };
            let mut ptr = self.top[top].load(Ordering::Acquire);
            if ptr.is_null() {
                // Built on the heap: 8 KiB on the stack of every allocating caller
                // would be too much for small-stack threads.
                let leaf: Box<[std::sync::atomic::AtomicU8]> = (0..LEVEL)
                    .map(|_| std::sync::atomic::AtomicU8::new(0))
                    .collect();
                let leaf: Box<Leaf> = leaf.try_into().expect("LEVEL entries");
                let fresh = Box::into_raw(leaf);
                ptr = match self.top[top].compare_exchange(
                    std::ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => fresh,
                    Err(other) => {
                        // SAFETY: `fresh` was never shared.
                        drop(unsafe { Box::from_raw(fresh) });
                        other
                    }
                };
            }
            // SAFETY: leaves are never freed before `Owners` is dropped.
            let leaves: &Leaf = unsafe { &*ptr };
            leaves[leaf].store(domain as u8 + 1, Ordering::Release);
            a += 1 << BLOCK_SHIFT;
        }
    }

    fn get(&self, addr: usize) -> Option<usize> {
        let (top, leaf) = Owners::split(addr)?;
        let ptr = self.top[top].load(Ordering::Acquire);
        if ptr.is_null() {
            return None;
        }
        // SAFETY: as in `set`.
        let leaves: &Leaf = unsafe { &*ptr };
        match leaves[leaf].load(Ordering::Acquire) {
            0 => None,
            d => Some(d as usize - 1),
        }
    }
}

impl Drop for Owners {
    fn drop(&mut self) {
        for slot in self.top.iter() {
            let ptr = slot.load(Ordering::Relaxed);
            if !ptr.is_null() {
                // SAFETY: made by Box::into_raw in `set`, dropped once here.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

/// The page arenas of a store: one per memory domain.
pub(crate) struct Arenas {
    arenas: Box<[Arena]>,
    home: Arc<dyn MemoryHome>,
    owners: Option<Arc<Owners>>,
}

impl Arenas {
    pub(crate) fn new(page_size: usize, home: Arc<dyn MemoryHome>) -> Arenas {
        // At most 255 domains fit the owner table's bytes; more would be a
        // machine with over 255 NUMA nodes.
        let domains = home.domains().clamp(1, 255);
        let owners = (domains > 1).then(|| Arc::new(Owners::new()));
        Arenas {
            arenas: (0..domains)
                .map(|d| Arena::new(page_size, d, home.clone(), owners.clone()))
                .collect(),
            home,
            owners,
        }
    }

    pub(crate) fn page_size(&self) -> usize {
        self.arenas[0].page_size
    }

    /// A page buffer from the caller's domain. Its contents are unspecified.
    pub(crate) fn alloc(&self) -> Result<PagePtr> {
        if self.arenas.len() == 1 {
            return self.arenas[0].alloc();
        }
        let d = self.home.domain_of_caller().min(self.arenas.len() - 1);
        self.arenas[d].alloc()
    }

    /// Returns a page to the arena whose memory it is.
    ///
    /// # Safety
    /// As [`Arena::free`].
    pub(crate) unsafe fn free(&self, page: PagePtr) {
        let d = match &self.owners {
            None => 0,
            Some(o) => o
                .get(page as usize)
                .unwrap_or_else(|| self.home.domain_of_caller()),
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.arenas[d.min(self.arenas.len() - 1)].free(page) }
    }

    /// The domain whose memory holds `page`, when there are several.
    pub(crate) fn domain_of(&self, page: PagePtr) -> Option<usize> {
        self.owners.as_ref()?.get(page as usize)
    }

    /// Pages currently handed out, over every arena.
    pub(crate) fn pages_in_use(&self) -> u64 {
        self.arenas
            .iter()
            .map(Arena::pages_in_use)
            .fold(0u64, u64::saturating_add)
    }

    /// Bytes of address space mapped for pages, over every arena.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.arenas.iter().map(Arena::mapped_bytes).sum()
    }

    /// Each arena's page mappings (address, length), for placement reports.
    pub(crate) fn mappings(&self) -> Vec<Vec<(usize, usize)>> {
        self.arenas
            .iter()
            .map(|a| a.chunks.lock().ranges.clone())
            .collect()
    }
}

/// Pages moved between a shard's free list and the shared pool at a time.
const BATCH: usize = 64;
/// Free pages always kept resident in the shared pool; beyond this and beyond a
/// quarter of the pages in use, batches are returned to the kernel. Recycling
/// versions is constant churn (every commit frees what it replaces), so the
/// allowance must scale with the tree or every allocation would fault.
const RESIDENT_FREE_LIMIT: usize = 1024;
/// Pages in the first mapping; each further mapping doubles, up to `MAX_CHUNK_PAGES`.
const FIRST_CHUNK_PAGES: usize = 256;
const MAX_CHUNK_PAGES: usize = 16384;
const SHARDS: usize = 64;

/// A page buffer's address. Plain data: ownership is tracked by the holder.
pub(crate) type PagePtr = *mut u8;

struct Chunks {
    maps: Vec<memmap2::MmapMut>,
    /// Where the newest mapping's pages start (aligned within it).
    base: usize,
    /// The page range of every mapping (address, length).
    ranges: Vec<(usize, usize)>,
    /// Next never-used page in the newest mapping.
    bump: usize,
    /// Pages in the newest mapping.
    limit: usize,
}

struct Pool {
    /// Free pages still resident (recently freed).
    resident: Vec<usize>,
    /// Free pages already returned to the kernel (they read as zero when reused).
    released: Vec<usize>,
}

pub(crate) struct Arena {
    page_size: usize,
    domain: usize,
    home: Arc<dyn MemoryHome>,
    /// Present with several domains: chunks are then block aligned and recorded.
    owners: Option<Arc<Owners>>,
    chunks: Mutex<Chunks>,
    pool: Mutex<Pool>,
    shards: Box<[CachePadded<Mutex<Vec<usize>>>]>,
    /// Pages handed out and not yet freed, summed over shards for stats.
    in_use: Box<[CachePadded<AtomicU64>]>,
    mapped_bytes: AtomicUsize,
}

// SAFETY: the arena hands out raw page pointers but owns the mappings behind them;
// all of its own state is behind locks or atomics.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    fn new(
        page_size: usize,
        domain: usize,
        home: Arc<dyn MemoryHome>,
        owners: Option<Arc<Owners>>,
    ) -> Self {
        Arena {
            page_size,
            domain,
            home,
            owners,
            chunks: Mutex::new(Chunks {
                maps: Vec::new(),
                base: 0,
                ranges: Vec::new(),
                bump: 0,
                limit: 0,
            }),
            pool: Mutex::new(Pool {
                resident: Vec::new(),
                released: Vec::new(),
            }),
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
            in_use: (0..SHARDS)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            mapped_bytes: AtomicUsize::new(0),
        }
    }

    /// A page buffer of `page_size` bytes. Its contents are unspecified.
    fn alloc(&self) -> Result<PagePtr> {
        let shard = thread_shard() % SHARDS;
        let mut local = self.shards[shard].lock();
        if local.is_empty() {
            self.refill(&mut local)?;
        }
        let page = local.pop().expect("refill leaves at least one page");
        drop(local);
        self.in_use[shard].fetch_add(1, Ordering::Relaxed);
        Ok(page as PagePtr)
    }

    /// Returns a page to the arena.
    ///
    /// # Safety
    /// `page` came from `alloc` of this arena and nothing reads or writes it any more.
    unsafe fn free(&self, page: PagePtr) {
        let shard = thread_shard() % SHARDS;
        self.in_use[shard].fetch_sub(1, Ordering::Relaxed);
        let mut local = self.shards[shard].lock();
        local.push(page as usize);
        if local.len() >= 2 * BATCH {
            let spill: Vec<usize> = local.drain(BATCH..).collect();
            drop(local);
            self.spill(spill);
        }
    }

    fn refill(&self, local: &mut Vec<usize>) -> Result<()> {
        {
            let mut pool = self.pool.lock();
            for list in [0, 1] {
                let source = if list == 0 {
                    &mut pool.resident
                } else {
                    &mut pool.released
                };
                if !source.is_empty() {
                    let take = source.len().min(BATCH);
                    let at = source.len() - take;
                    local.extend(source.drain(at..));
                    return Ok(());
                }
            }
        }
        let mut chunks = self.chunks.lock();
        if chunks.bump == chunks.limit {
            let pages = (FIRST_CHUNK_PAGES << chunks.maps.len().min(6)).min(MAX_CHUNK_PAGES);
            let mut bytes = pages * self.page_size;
            // Several domains: whole 2 MiB blocks, aligned, so that the owner table
            // names one domain per block. The slack of the larger mapping is never
            // touched, so it costs address space only.
            let align = if self.owners.is_some() {
                bytes = bytes.next_multiple_of(1 << BLOCK_SHIFT);
                1 << BLOCK_SHIFT
            } else {
                0
            };
            let map = memmap2::MmapOptions::new()
                .len(bytes + align)
                .map_anon()
                .map_err(|source| Error::OutOfMemory {
                    requested: bytes,
                    source,
                })?;
            let start = if align > 0 {
                (map.as_ptr() as usize).next_multiple_of(align) - map.as_ptr() as usize
            } else {
                0
            };
            let base = map.as_ptr() as usize + start;
            // Transparent huge pages: a random walk over a large tree misses the TLB on
            // nearly every page otherwise. Only a hint; failure changes nothing.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            self.home.prepare(self.domain, base as *mut u8, bytes);
            if let Some(owners) = &self.owners {
                owners.set(base, bytes, self.domain);
            }
            chunks.maps.push(map);
            chunks.ranges.push((base, bytes));
            chunks.base = base;
            chunks.bump = 0;
            chunks.limit = bytes / self.page_size;
            self.mapped_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let take = (chunks.limit - chunks.bump).min(BATCH);
        let base = chunks.base;
        for i in 0..take {
            local.push(base + (chunks.bump + i) * self.page_size);
        }
        chunks.bump += take;
        Ok(())
    }

    fn spill(&self, pages: Vec<usize>) {
        let allowance = RESIDENT_FREE_LIMIT.max(self.pages_in_use() as usize / 4);
        let mut pool = self.pool.lock();
        pool.resident.extend(pages);
        if pool.resident.len() > allowance + BATCH {
            let release: Vec<usize> = pool.resident.drain(..BATCH).collect();
            for &page in &release {
                // SAFETY: every page in the pool is free and lies inside one of our
                // live mappings; MADV_DONTNEED only drops its contents, the mapping stays.
                unsafe {
                    libc::madvise(
                        page as *mut libc::c_void,
                        self.page_size,
                        libc::MADV_DONTNEED,
                    );
                }
            }
            pool.released.extend(release);
        }
    }

    /// Pages currently handed out.
    pub(crate) fn pages_in_use(&self) -> u64 {
        let sum: u64 = self
            .in_use
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add);
        sum.min(i64::MAX as u64)
    }

    /// Bytes of address space mapped for pages (resident or not).
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mapped_bytes.load(Ordering::Relaxed)
    }
}
