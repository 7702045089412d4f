//! `NodeBox<T>`: a heap value whose memory lives on a chosen NUMA node.
//!
//! A plain `Box` takes memory from the allocator, near whichever thread opened the
//! engine; a journal shard's lock and counters are then remote for every commit on
//! every other node. A `NodeBox` gets its own anonymous mapping (whole pages),
//! binds it to the node before the value is written into it, and unmaps it on
//! drop.

use super::Layout;
use std::ops::Deref;
use std::ptr::NonNull;

pub(crate) struct NodeBox<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a NodeBox owns its T exactly like a Box does.
unsafe impl<T: Send> Send for NodeBox<T> {}
unsafe impl<T: Sync> Sync for NodeBox<T> {}

impl<T> NodeBox<T> {
    /// `value` in memory bound to `domain`'s node (through `layout`'s binder).
    /// Falls back to ordinary memory if no mapping can be made.
    pub(crate) fn new(value: T, layout: &Layout, domain: usize) -> NodeBox<T> {
        // SAFETY: sysconf only reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        assert!(std::mem::align_of::<T>() <= page);
        let len = std::mem::size_of::<T>().max(1).next_multiple_of(page);
        // SAFETY: a fresh private anonymous mapping; we own it until drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let boxed = Box::new(value);
            return NodeBox {
                ptr: NonNull::from(Box::leak(boxed)),
                len: 0,
            };
        }
        layout.bind_to_domain(addr.cast(), len, domain);
        let ptr = addr.cast::<T>();
        // SAFETY: the mapping is page aligned (≥ align_of T), at least size_of T
        // long, and not yet initialized.
        unsafe { ptr.write(value) };
        NodeBox {
            ptr: NonNull::new(ptr).expect("mmap does not return null"),
            len,
        }
    }

    /// The address of the value's memory (for checking where it lives).
    pub(crate) fn addr(&self) -> *const u8 {
        self.ptr.as_ptr().cast()
    }
}

impl<T> Deref for NodeBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: initialized in `new`, dropped only in `drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for NodeBox<T> {
    fn drop(&mut self) {
        if self.len == 0 {
            // SAFETY: made by Box::leak in `new`.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
            return;
        }
        // SAFETY: the value was initialized in `new` and is dropped once; then
        // the mapping we made is unmapped.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
