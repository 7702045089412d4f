//! Page memory: fixed-size page buffers carved from large anonymous mappings.
//!
//! Owns every byte of page memory of an engine. Pages come from `memmap2` anonymous
//! mappings (so a later layer can bind each mapping to a NUMA node) and are recycled
//! through per-thread-shard free lists, so allocation on the commit path takes an
//! uncontended lock and no system call. When many pages sit free, batches are handed
//! back to the kernel with `madvise(MADV_DONTNEED)`: a tree that grew and shrank
//! gives its resident memory back.
//!
//! Invariant: a page pointer is either in exactly one free list or owned by exactly
//! one holder (a page version, an overflow chain, or a commit being prepared).

use crate::error::{Error, Result};
use crate::sync::{thread_shard, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};

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
    pub(crate) fn new(page_size: usize) -> Self {
        Arena {
            page_size,
            chunks: Mutex::new(Chunks {
                maps: Vec::new(),
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

    pub(crate) fn page_size(&self) -> usize {
        self.page_size
    }

    /// A page buffer of `page_size` bytes. Its contents are unspecified.
    pub(crate) fn alloc(&self) -> Result<PagePtr> {
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
    pub(crate) unsafe fn free(&self, page: PagePtr) {
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
            let bytes = pages * self.page_size;
            let map = memmap2::MmapOptions::new()
                .len(bytes)
                .map_anon()
                .map_err(|source| Error::OutOfMemory {
                    requested: bytes,
                    source,
                })?;
            // Transparent huge pages: a random walk over a large tree misses the TLB on
            // nearly every page otherwise. Only a hint; failure changes nothing.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            chunks.maps.push(map);
            chunks.bump = 0;
            chunks.limit = pages;
            self.mapped_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let take = (chunks.limit - chunks.bump).min(BATCH);
        let base = chunks.maps.last().expect("a mapping exists").as_ptr() as usize;
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
