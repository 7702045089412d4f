//! Overflow chains: values too large to live inline in a leaf.
//!
//! A chain is a singly linked list of arena pages, each `[next u64][len u32][0 u32][data]`.
//! Chains are immutable; a leaf entry points at the head. A chain is freed as garbage
//! of the commit that overwrote or deleted its value, once no snapshot can see it.

use super::arena::{Arenas, PagePtr};
use crate::error::Result;

const CHAIN_HEADER: usize = 16;

/// Writes `value` into a new chain and returns its head address.
pub(crate) fn write_chain(arena: &Arenas, value: &[u8]) -> Result<usize> {
    let cap = arena.page_size() - CHAIN_HEADER;
    let mut next: usize = 0;
    // Build back to front so each page can point at the one after it.
    let pieces: Vec<&[u8]> = value.chunks(cap).collect();
    for piece in pieces.iter().rev() {
        let page = match arena.alloc() {
            Ok(p) => p,
            Err(e) => {
                free_chain(arena, next);
                return Err(e);
            }
        };
        // SAFETY: `page` is a fresh arena page of page_size bytes owned by us.
        unsafe {
            std::ptr::copy_nonoverlapping((next as u64).to_le_bytes().as_ptr(), page, 8);
            std::ptr::copy_nonoverlapping(
                (piece.len() as u32).to_le_bytes().as_ptr(),
                page.add(8),
                4,
            );
            std::ptr::copy_nonoverlapping(piece.as_ptr(), page.add(CHAIN_HEADER), piece.len());
        }
        next = page as usize;
    }
    Ok(next)
}

fn read_header(page: PagePtr) -> (usize, usize) {
    let mut next = [0u8; 8];
    let mut len = [0u8; 4];
    // SAFETY: `page` is a live chain page (the caller's snapshot pin keeps it).
    unsafe {
        std::ptr::copy_nonoverlapping(page, next.as_mut_ptr(), 8);
        std::ptr::copy_nonoverlapping(page.add(8), len.as_mut_ptr(), 4);
    }
    (
        u64::from_le_bytes(next) as usize,
        u32::from_le_bytes(len) as usize,
    )
}

/// Copies the value of the chain at `head`, `len` bytes in all.
pub(crate) fn read_chain(head: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    read_chain_into(head, len, &mut out);
    out
}

/// Replaces the contents of `out` with the value of the chain at `head`: a scan
/// reuses one buffer for every overflow value it visits.
pub(crate) fn read_chain_into(head: usize, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    let mut page = head;
    while page != 0 {
        let (next, n) = read_header(page as PagePtr);
        // SAFETY: the chain page holds `n` data bytes after its header.
        let data = unsafe { std::slice::from_raw_parts((page as PagePtr).add(CHAIN_HEADER), n) };
        out.extend_from_slice(data);
        page = next;
    }
    debug_assert_eq!(
        out.len(),
        len,
        "overflow chain length matches its leaf entry"
    );
}

/// The length of the chain at `head`, walking at most `max_pages` pages: for
/// `verify`, which must not loop on a cycle nor trust the leaf's length.
pub(crate) fn chain_len(
    head: usize,
    max_pages: usize,
    page_size: usize,
) -> Result<(usize, usize), String> {
    let (mut len, mut pages, mut page) = (0usize, 0usize, head);
    while page != 0 {
        if pages == max_pages {
            return Err(format!(
                "the chain is longer than {max_pages} pages (a cycle?)"
            ));
        }
        let (next, n) = read_header(page as PagePtr);
        if n > page_size - CHAIN_HEADER {
            return Err(format!("a chain page claims {n} bytes"));
        }
        len += n;
        pages += 1;
        page = next;
    }
    Ok((len, pages))
}

/// Returns every page of the chain at `head` to the arena.
pub(crate) fn free_chain(arena: &Arenas, head: usize) {
    let mut page = head;
    while page != 0 {
        let (next, _) = read_header(page as PagePtr);
        // SAFETY: chain pages are owned by the chain, and the chain by the caller.
        unsafe { arena.free(page as PagePtr) };
        page = next;
    }
}
