//! Page memory: fixed-size page buffers carved from large anonymous mappings.
//!
//! Owns every byte of page memory of an engine. Pages come from `memmap2` anonymous
//! mappings (so a later layer can bind each mapping to a NUMA node) and are recycled
//! through per-thread-shard free lists (one shard per CPU of the engine's
//! topology, indexed by `sync::thread_shard`), so allocation on the commit path
//! takes an uncontended lock and no system call. A shard list trades batches of
//! pages with its arena's pool, a lock-free queue: no lock is shared between
//! threads on the allocation and free paths; only growing the arena (a new
//! mapping, once per `BATCH` fresh pages) takes the arena's mapping lock. When
//! many pages sit free, batches are handed back to the kernel with
//! `madvise(MADV_DONTNEED)`: a tree that grew and shrank gives its resident
//! memory back.
//!
//! With several memory domains (NUMA nodes, as the engine's `MemoryHome` says),
//! there is one `Arena` per domain and `Arenas` routes: an allocation comes from
//! the caller's domain, and a freed page goes back to the arena whose mapping it
//! lies in (found through `Owners`, a two-level table over 2 MiB blocks; chunks
//! are 2 MiB aligned so no block is shared by two domains). A domain that can
//! map no more memory takes free pages from the other domains' pools before
//! reporting `Error::OutOfMemory`; those pages still go back to their own
//! domain when freed, so each arena's accounting stays exact.
//!
//! Invariant: a page pointer is either in exactly one free list or owned by exactly
//! one holder (a page version, an overflow chain, or a commit being prepared).

use crate::error::{Error, Result};
use crate::sync::{spin_hint, thread_shard, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use crossbeam_deque::{Injector, Steal};
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
    /// One arena per domain of `home`, each with `shards` free lists (one per
    /// CPU, `sync::shards_for`).
    pub(crate) fn new(page_size: usize, home: Arc<dyn MemoryHome>, shards: usize) -> Arenas {
        Arenas::with_map_limit(page_size, home, shards, usize::MAX)
    }

    /// As `new`, each arena mapping at most `map_limit` bytes (tests: an arena
    /// that cannot grow).
    fn with_map_limit(
        page_size: usize,
        home: Arc<dyn MemoryHome>,
        shards: usize,
        map_limit: usize,
    ) -> Arenas {
        // At most 255 domains fit the owner table's bytes; more would be a
        // machine with over 255 NUMA nodes.
        let domains = home.domains().clamp(1, 255);
        let owners = (domains > 1).then(|| Arc::new(Owners::new()));
        Arenas {
            arenas: (0..domains)
                .map(|d| {
                    Arena::new(
                        page_size,
                        d,
                        home.clone(),
                        owners.clone(),
                        shards,
                        map_limit,
                    )
                })
                .collect(),
            home,
            owners,
        }
    }

    pub(crate) fn page_size(&self) -> usize {
        self.arenas[0].page_size
    }

    /// A page buffer from the caller's domain; from another domain's free pages
    /// only when the caller's can neither supply one nor map more. Its contents
    /// are unspecified.
    pub(crate) fn alloc(&self) -> Result<PagePtr> {
        let n = self.arenas.len();
        if n == 1 {
            return self.arenas[0].alloc();
        }
        let d = self.home.domain_of_caller().min(n - 1);
        match self.arenas[d].alloc() {
            Ok(page) => Ok(page),
            Err(e) => (1..n)
                .find_map(|i| self.arenas[(d + i) % n].alloc_free())
                .ok_or(e),
        }
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

/// Free pages of one arena, in batches, shared by its shard lists without a
/// lock: a batch is pushed and stolen whole.
struct Pool {
    /// Free pages still resident (recently freed), oldest batch first.
    resident: Injector<Vec<usize>>,
    /// Pages in `resident`, for the release decision only (it may lag a push
    /// or a steal by one batch; nothing is counted from it).
    resident_pages: AtomicUsize,
    /// Free pages already returned to the kernel (they read as zero when reused).
    released: Injector<Vec<usize>>,
}

/// One batch from `queue`, if it has any.
fn steal(queue: &Injector<Vec<usize>>) -> Option<Vec<usize>> {
    loop {
        match queue.steal() {
            Steal::Success(batch) => return Some(batch),
            Steal::Empty => return None,
            // Another thread is mid-operation on the same end: try again.
            Steal::Retry => spin_hint(),
        }
    }
}

pub(crate) struct Arena {
    page_size: usize,
    domain: usize,
    home: Arc<dyn MemoryHome>,
    /// Present with several domains: chunks are then block aligned and recorded.
    owners: Option<Arc<Owners>>,
    /// The mappings; locked only to grow the arena.
    chunks: Mutex<Chunks>,
    /// Bytes this arena may map (`usize::MAX` but in tests).
    map_limit: usize,
    pool: Pool,
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
        shards: usize,
        map_limit: usize,
    ) -> Self {
        let shards = if cfg!(loom) { 2 } else { shards.max(1) };
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
            map_limit,
            pool: Pool {
                resident: Injector::new(),
                resident_pages: AtomicUsize::new(0),
                released: Injector::new(),
            },
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
            in_use: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            mapped_bytes: AtomicUsize::new(0),
        }
    }

    /// A page buffer of `page_size` bytes. Its contents are unspecified.
    fn alloc(&self) -> Result<PagePtr> {
        let shard = thread_shard() % self.shards.len();
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
        let shard = thread_shard() % self.shards.len();
        self.in_use[shard].fetch_sub(1, Ordering::Relaxed);
        let mut local = self.shards[shard].lock();
        local.push(page as usize);
        if local.len() >= 2 * BATCH {
            let spill: Vec<usize> = local.drain(BATCH..).collect();
            drop(local);
            self.spill(spill);
        }
    }

    /// A page from this arena's free pages only (no new mapping): the fallback
    /// of another domain that could not map more.
    fn alloc_free(&self) -> Option<PagePtr> {
        let shard = thread_shard() % self.shards.len();
        let mut local = self.shards[shard].lock();
        if local.is_empty() && !self.take_free(&mut local) {
            return None;
        }
        let page = local.pop()?;
        drop(local);
        self.in_use[shard].fetch_add(1, Ordering::Relaxed);
        Some(page as PagePtr)
    }

    /// Moves a batch of free pages from the pool into `local`, if it has any:
    /// resident ones first, then released ones.
    fn take_free(&self, local: &mut Vec<usize>) -> bool {
        if let Some(batch) = steal(&self.pool.resident) {
            self.pool
                .resident_pages
                .fetch_sub(batch.len(), Ordering::Relaxed);
            local.extend(batch);
            return true;
        }
        if let Some(batch) = steal(&self.pool.released) {
            local.extend(batch);
            return true;
        }
        false
    }

    fn refill(&self, local: &mut Vec<usize>) -> Result<()> {
        if self.take_free(local) {
            return Ok(());
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
            if self.mapped_bytes().saturating_add(bytes) > self.map_limit {
                return Err(Error::OutOfMemory {
                    requested: bytes,
                    source: std::io::Error::other("over the arena's mapping limit"),
                });
            }
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
        let n = pages.len();
        self.pool.resident.push(pages);
        let resident = self.pool.resident_pages.fetch_add(n, Ordering::Relaxed) + n;
        if resident <= allowance + BATCH {
            return;
        }
        // Over the allowance: the oldest batch goes back to the kernel.
        let Some(release) = steal(&self.pool.resident) else {
            return;
        };
        self.pool
            .resident_pages
            .fetch_sub(release.len(), Ordering::Relaxed);
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
        self.pool.released.push(release);
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Two domains; the caller's is whatever the test says.
    struct TwoNodes {
        caller: std::sync::atomic::AtomicUsize,
    }

    impl MemoryHome for TwoNodes {
        fn domains(&self) -> usize {
            2
        }
        fn domain_of_caller(&self) -> usize {
            self.caller.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn prepare(&self, _: usize, _: *mut u8, _: usize) {}
    }

    fn two_nodes() -> Arc<TwoNodes> {
        Arc::new(TwoNodes {
            caller: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    const PAGE: usize = 4096;

    #[test]
    fn free_lists_follow_the_cpu_count() {
        for cpus in [1, 2, 64, 256] {
            let arenas = Arenas::new(PAGE, two_nodes(), crate::sync::shards_for(cpus));
            for a in arenas.arenas.iter() {
                assert_eq!(a.shards.len(), crate::sync::shards_for(cpus));
                assert_eq!(a.in_use.len(), crate::sync::shards_for(cpus));
            }
        }
    }

    /// Each node allocates from its own memory while it can; a node that can map
    /// no more takes the other node's free pages, which go back to that node
    /// when freed; the counts stay exact throughout.
    #[test]
    fn nodes_allocate_their_own_pages_first_and_fall_back() {
        let home = two_nodes();
        // One 2 MiB block per node: 512 pages each.
        let arenas = Arenas::with_map_limit(PAGE, home.clone(), 4, 1 << BLOCK_SHIFT);
        let set = |d: usize| home.caller.store(d, std::sync::atomic::Ordering::Relaxed);

        set(0);
        let mut zero: Vec<PagePtr> = (0..512).map(|_| arenas.alloc().expect("room")).collect();
        assert!(zero.iter().all(|&p| arenas.domain_of(p) == Some(0)));
        set(1);
        let mut one: Vec<PagePtr> = (0..100).map(|_| arenas.alloc().expect("room")).collect();
        assert!(one.iter().all(|&p| arenas.domain_of(p) == Some(1)));
        assert_eq!(arenas.arenas[0].pages_in_use(), 512);
        assert_eq!(arenas.arenas[1].pages_in_use(), 100);

        // Node 0 is full and cannot map more: it takes node 1's free pages, here
        // 100 freed on node 1 (from a thread whose own domain is 1, as a commit
        // on node 1 would).
        set(1);
        for p in one.drain(..) {
            // SAFETY: allocated above, never used.
            unsafe { arenas.free(p) };
        }
        let in_use_1 = arenas.arenas[1].pages_in_use();
        set(0);
        let borrowed: Vec<PagePtr> = (0..10).map(|_| arenas.alloc().expect("fallback")).collect();
        assert!(borrowed.iter().all(|&p| arenas.domain_of(p) == Some(1)));
        assert_eq!(arenas.arenas[0].pages_in_use(), 512);
        assert_eq!(arenas.arenas[1].pages_in_use(), in_use_1 + 10);
        // Freed from node 0, they go back to node 1.
        for p in borrowed {
            // SAFETY: as above.
            unsafe { arenas.free(p) };
        }
        assert_eq!(arenas.arenas[1].pages_in_use(), in_use_1);
        // Node 0's own freed page is preferred over node 1's again.
        let p = zero.pop().expect("512 pages");
        // SAFETY: as above.
        unsafe { arenas.free(p) };
        let again = arenas.alloc().expect("own page");
        assert_eq!(arenas.domain_of(again), Some(0));
        zero.push(again);
        for p in zero {
            // SAFETY: as above.
            unsafe { arenas.free(p) };
        }
        assert_eq!(arenas.pages_in_use(), in_use_1);
        assert_eq!(arenas.mapped_bytes(), 2 << BLOCK_SHIFT);
        // Everything free: node 0 gets its 512 pages, then node 1's 128 carved
        // ones (two batches), then a typed error.
        set(0);
        let mut all = Vec::new();
        let err = loop {
            match arenas.alloc() {
                Ok(p) => all.push(p),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        assert_eq!(all.len(), 512 + 2 * BATCH);
        assert_eq!(
            all.iter()
                .filter(|&&p| arenas.domain_of(p) == Some(0))
                .count(),
            512
        );
        assert_eq!(arenas.pages_in_use(), all.len() as u64);
        for p in all {
            // SAFETY: as above.
            unsafe { arenas.free(p) };
        }
        assert_eq!(arenas.pages_in_use(), 0);
    }

    /// Frees spill batches to the lock-free pool and allocations take them back
    /// from other threads; nothing is lost or counted twice.
    #[test]
    fn pages_move_between_threads_through_the_pool() {
        let arenas = Arenas::new(PAGE, two_nodes(), 8);
        let pages: Vec<usize> = (0..4 * BATCH)
            .map(|_| arenas.alloc().expect("room") as usize)
            .collect();
        let mapped = arenas.mapped_bytes();
        std::thread::scope(|s| {
            s.spawn(|| {
                for &p in &pages {
                    // SAFETY: allocated above, never used.
                    unsafe { arenas.free(p as PagePtr) };
                }
            });
        });
        assert_eq!(arenas.pages_in_use(), 0);
        // The other thread spilled at least two batches; they come back here
        // without a new mapping.
        let again: Vec<PagePtr> = (0..2 * BATCH)
            .map(|_| arenas.alloc().expect("room"))
            .collect();
        assert_eq!(arenas.mapped_bytes(), mapped);
        let mut distinct: Vec<usize> = again.iter().map(|&p| p as usize).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 2 * BATCH);
        assert_eq!(arenas.pages_in_use(), 2 * BATCH as u64);
        for p in again {
            // SAFETY: as above.
            unsafe { arenas.free(p) };
        }
        assert_eq!(arenas.pages_in_use(), 0);
    }
}
