//! Page layout: the bytes of one page version, and how leaves and inner nodes are
//! encoded in them.
//!
//! A page version is immutable once published: a commit writes a whole new version
//! into a fresh buffer and links it in front of the old one. So there is no slotted
//! free-space management: a page is built once, densely, from a sorted entry list.
//!
//! ```text
//! 0   stamp  u64   commit id that created this version
//! 8   next   u64   address of the next older version of the same page (0: none)
//! 16  kind   u8    1 leaf, 2 inner, 3 dead (the page was freed by this commit)
//! 20  count  u32   entries
//! 24  used   u32   bytes used, header included
//! 28  prefix u16   leaves: length of the prefix every key of the leaf shares
//! 32  slots, then the entries
//! leaf slot:   offset u32 | hint u32 (4 key bytes after the shared prefix, big-endian, 0-padded)
//! inner slot:  offset u32
//! leaf entry:  klen u16 | tag u8 | 0 u8 | vlen u32 | key | value, or overflow address u64
//! inner entry: child u64 | klen u16 | 0 u16 | key (entry 0 has an empty key)
//! ```
//! Inner entry `i` routes keys `k` with `key(i) <= k < key(i+1)` to `child(i)`.
//!
//! The leaf hints let a lookup binary-search the slot array alone (a few adjacent
//! cache lines) and touch one entry at the end, instead of one cache miss per probe.

use super::PageId;
// Plain std atomics over page memory: loom cannot model atomics at raw addresses.
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const HEADER: usize = 32;
const LEAF_ENTRY_HEADER: usize = 8;
const INNER_ENTRY_HEADER: usize = 12;
const LEAF_SLOT: usize = 8;
const INNER_SLOT: usize = 4;
const TAG_INLINE: u8 = 0;
const TAG_OVERFLOW: u8 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Leaf = 1,
    Inner = 2,
    Dead = 3,
}

/// A value as a leaf stores it: inline bytes, or the head of an overflow chain.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ValRef<'a> {
    Inline(&'a [u8]),
    Overflow { head: usize, len: usize },
}

impl ValRef<'_> {
    fn stored_len(&self) -> usize {
        match self {
            ValRef::Inline(v) => v.len(),
            ValRef::Overflow { .. } => 8,
        }
    }
}

/// One key and value of a leaf being built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafEntry<'a> {
    pub key: &'a [u8],
    pub val: ValRef<'a>,
}

impl LeafEntry<'_> {
    pub(crate) fn size(&self) -> usize {
        LEAF_SLOT + LEAF_ENTRY_HEADER + self.key.len() + self.val.stored_len()
    }
}

/// Bytes a leaf entry takes (slot included) when its value is stored inline.
pub(crate) fn inline_entry_size(klen: usize, vlen: usize) -> usize {
    LEAF_SLOT + LEAF_ENTRY_HEADER + klen + vlen
}

/// Largest leaf entry stored inline: a quarter of the usable page, so a leaf always
/// holds at least four inline entries and a split always makes progress.
pub(crate) fn max_inline_entry(page_size: usize) -> usize {
    (page_size - HEADER) / 4
}

/// Bytes an inner entry takes (slot included).
pub(crate) fn inner_entry_size(klen: usize) -> usize {
    INNER_SLOT + INNER_ENTRY_HEADER + klen
}

/// Bytes 0..16 (stamp and link) are not covered by a [`Page`]'s shared slice: the
/// link of a published version is rewritten when interval reclamation unlinks the
/// version below it, so it is only ever accessed atomically.
pub(crate) const LINK_END: usize = 16;

/// A read-only view of one page version.
#[derive(Clone, Copy)]
pub(crate) struct Page<'a> {
    ptr: *const u8,
    /// The page from byte `LINK_END` on: immutable once published.
    body: &'a [u8],
}

impl<'a> Page<'a> {
    /// # Safety
    /// `ptr` points to a published page version of `size` bytes that stays allocated
    /// for `'a` (the caller holds a snapshot pin that keeps it reachable, or the page
    /// lock, or the structure lock).
    pub(crate) unsafe fn from_ptr(ptr: *const u8, size: usize) -> Page<'a> {
        debug_assert_eq!(ptr as usize % 8, 0, "page buffers are aligned");
        Page {
            ptr,
            // SAFETY: guaranteed by the caller; bytes from LINK_END on never change
            // while the version is published.
            body: unsafe { std::slice::from_raw_parts(ptr.add(LINK_END), size - LINK_END) },
        }
    }

    /// Byte `at` of the page (`at >= LINK_END`).
    fn byte(&self, at: usize) -> u8 {
        self.body[at - LINK_END]
    }
    /// Bytes `from..to` of the page (`from >= LINK_END`).
    fn span(&self, from: usize, to: usize) -> &'a [u8] {
        &self.body[from - LINK_END..to - LINK_END]
    }
    fn u16_at(&self, at: usize) -> usize {
        u16::from_le_bytes([self.byte(at), self.byte(at + 1)]) as usize
    }
    fn u32_at(&self, at: usize) -> usize {
        u32::from_le_bytes(self.span(at, at + 4).try_into().expect("4 bytes")) as usize
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.span(at, at + 8).try_into().expect("8 bytes"))
    }

    pub(crate) fn stamp(&self) -> u64 {
        // SAFETY: the stamp is written before the version is published and never
        // again; the buffer is 8-byte aligned and allocated (see `from_ptr`).
        u64::from_le(unsafe { std::ptr::read(self.ptr as *const u64) })
    }
    /// The next older version still linked (0: none).
    pub(crate) fn next_version(&self) -> *mut u8 {
        // SAFETY: the link is 8-byte aligned inside a live buffer (see `from_ptr`) and
        // every concurrent access to it is atomic (`set_next`).
        let link = unsafe { AtomicU64::from_ptr(self.ptr.add(8) as *mut u64) };
        u64::from_le(link.load(Ordering::Acquire)) as usize as *mut u8
    }
    pub(crate) fn kind(&self) -> Kind {
        match self.byte(16) {
            1 => Kind::Leaf,
            2 => Kind::Inner,
            _ => Kind::Dead,
        }
    }
    pub(crate) fn count(&self) -> usize {
        self.u32_at(20)
    }
    pub(crate) fn used(&self) -> usize {
        self.u32_at(24)
    }
    fn entry_offset(&self, i: usize) -> usize {
        debug_assert!(i < self.count());
        match self.kind() {
            Kind::Leaf => self.u32_at(HEADER + i * LEAF_SLOT),
            _ => self.u32_at(HEADER + i * INNER_SLOT),
        }
    }

    fn leaf_hint(&self, i: usize) -> u32 {
        u32::from_le_bytes(
            self.span(HEADER + i * LEAF_SLOT + 4, HEADER + i * LEAF_SLOT + 8)
                .try_into()
                .expect("4 bytes"),
        )
    }

    pub(crate) fn leaf_key(&self, i: usize) -> &'a [u8] {
        let o = self.entry_offset(i);
        let klen = self.u16_at(o);
        self.span(o + LEAF_ENTRY_HEADER, o + LEAF_ENTRY_HEADER + klen)
    }

    pub(crate) fn leaf_val(&self, i: usize) -> ValRef<'a> {
        let o = self.entry_offset(i);
        let klen = self.u16_at(o);
        let vlen = self.u32_at(o + 4);
        let at = o + LEAF_ENTRY_HEADER + klen;
        if self.byte(o + 2) == TAG_OVERFLOW {
            ValRef::Overflow {
                head: self.u64_at(at) as usize,
                len: vlen,
            }
        } else {
            ValRef::Inline(self.span(at, at + vlen))
        }
    }

    /// Byte offset and length of entry `i`'s inline value within the page, if inline.
    pub(crate) fn inline_value_span(&self, i: usize) -> Option<(usize, usize)> {
        let o = self.entry_offset(i);
        if self.byte(o + 2) != TAG_INLINE {
            return None;
        }
        Some((o + LEAF_ENTRY_HEADER + self.u16_at(o), self.u32_at(o + 4)))
    }

    /// The page's bytes in use (header, slots and entries) from `LINK_END` on.
    pub(crate) fn used_bytes(&self) -> &'a [u8] {
        self.span(LINK_END, self.used())
    }

    pub(crate) fn leaf_entry(&self, i: usize) -> LeafEntry<'a> {
        LeafEntry {
            key: self.leaf_key(i),
            val: self.leaf_val(i),
        }
    }

    /// Binary search of a leaf: `Ok(i)` where `key(i) == key`, else `Err(insertion point)`.
    pub(crate) fn leaf_search(&self, key: &[u8]) -> Result<usize, usize> {
        let n = self.count();
        if n == 0 {
            return Err(0);
        }
        // Every key of the leaf starts with the shared prefix: compare it once.
        let plen = self.u16_at(28);
        let prefix = &self.leaf_key(0)[..plen];
        let head = &key[..plen.min(key.len())];
        match head.cmp(&prefix[..head.len()]) {
            std::cmp::Ordering::Less => return Err(0),
            std::cmp::Ordering::Greater => return Err(n),
            std::cmp::Ordering::Equal if key.len() < plen => return Err(0),
            std::cmp::Ordering::Equal => {}
        }
        let rest = &key[plen..];
        let hint = hint_of(rest);
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let h = self.leaf_hint(mid);
            let ord = if h != hint {
                h.cmp(&hint)
            } else {
                self.leaf_key(mid)[plen..].cmp(rest)
            };
            match ord {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub(crate) fn inner_child(&self, i: usize) -> PageId {
        PageId(self.u64_at(self.entry_offset(i)))
    }

    /// The low bound of child `i` (empty for child 0: it inherits the node's bound).
    pub(crate) fn inner_key(&self, i: usize) -> &'a [u8] {
        let o = self.entry_offset(i);
        let klen = self.u16_at(o + 8);
        self.span(o + INNER_ENTRY_HEADER, o + INNER_ENTRY_HEADER + klen)
    }

    /// Index of the child whose range holds `key`.
    pub(crate) fn inner_route(&self, key: &[u8]) -> usize {
        // Last i >= 1 with key(i) <= key, else 0.
        let (mut lo, mut hi) = (1, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.inner_key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }
}

/// Why the page's layout is not self-consistent, if it is not: what `verify`
/// checks before it trusts any accessor (which index without bounds checks
/// of their own). Leaves and inner nodes are built densely, so every byte
/// between the header and `used` belongs to exactly one slot or entry.
pub(crate) fn check_layout(page: &Page<'_>, page_size: usize) -> Result<(), String> {
    let byte = |at: usize| page.body.get(at.wrapping_sub(LINK_END)).copied();
    let u16_at = |at: usize| Some(u16::from_le_bytes([byte(at)?, byte(at + 1)?]) as usize);
    let u32_at = |at: usize| {
        Some(u32::from_le_bytes([byte(at)?, byte(at + 1)?, byte(at + 2)?, byte(at + 3)?]) as usize)
    };
    let kind = byte(16).ok_or("the page is shorter than its header")?;
    let (count, used) = (u32_at(20).unwrap_or(0), u32_at(24).unwrap_or(0));
    if used > page_size || used < HEADER {
        return Err(format!(
            "`used` is {used}, outside {HEADER}..={page_size} (the page size)"
        ));
    }
    let (slot, entry_header) = match kind {
        1 => (LEAF_SLOT, LEAF_ENTRY_HEADER),
        2 => (INNER_SLOT, INNER_ENTRY_HEADER),
        3 => {
            return if count == 0 && used == HEADER {
                Ok(())
            } else {
                Err(format!(
                    "a dead marker with {count} entries and {used} bytes used"
                ))
            }
        }
        k => return Err(format!("unknown page kind {k}")),
    };
    let slots_end = count
        .checked_mul(slot)
        .and_then(|n| n.checked_add(HEADER))
        .filter(|&n| n <= used)
        .ok_or_else(|| format!("{count} slots do not fit in the {used} bytes used"))?;
    // Entries are laid out in slot order right after the slots.
    let mut at = slots_end;
    for i in 0..count {
        let o = u32_at(HEADER + i * slot).ok_or("a slot lies outside the page")?;
        if o != at {
            return Err(format!(
                "entry {i} is at offset {o}, expected {at} (entries are packed in slot order)"
            ));
        }
        let (klen, stored) = if kind == 1 {
            let klen = u16_at(o).ok_or("an entry header lies outside the page")?;
            let vlen = u32_at(o + 4).ok_or("an entry header lies outside the page")?;
            let stored = match byte(o + 2) {
                Some(TAG_INLINE) => vlen,
                Some(TAG_OVERFLOW) => 8,
                t => return Err(format!("entry {i} has an unknown value tag {t:?}")),
            };
            (klen, stored)
        } else {
            (
                u16_at(o + 8).ok_or("an entry header lies outside the page")?,
                0,
            )
        };
        at = o
            .checked_add(entry_header + klen + stored)
            .filter(|&end| end <= used)
            .ok_or_else(|| format!("entry {i} runs past the {used} bytes used"))?;
    }
    if at != used {
        return Err(format!(
            "entries end at byte {at} but `used` is {used}: {} bytes unaccounted for",
            used.abs_diff(at)
        ));
    }
    if kind == 1 && count > 0 {
        let plen = u16_at(28).unwrap_or(0);
        let (first, last) = (page.leaf_key(0), page.leaf_key(count - 1));
        if plen > first.len() || plen > last.len() || first[..plen] != last[..plen] {
            return Err(format!("the shared key prefix length {plen} is not shared"));
        }
    }
    if kind == 2 && count == 0 {
        return Err("an inner node with no children".to_owned());
    }
    Ok(())
}

/// Writes the version header fields that are set at install time.
///
/// # Safety
/// `ptr` is a page buffer owned by the caller and not yet published.
pub(crate) unsafe fn set_version(ptr: *mut u8, stamp: u64, next: *mut u8) {
    // SAFETY: the caller owns the unpublished buffer, which is at least HEADER bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(stamp.to_le_bytes().as_ptr(), ptr, 8);
        std::ptr::copy_nonoverlapping((next as usize as u64).to_le_bytes().as_ptr(), ptr.add(8), 8);
    }
}

/// Relinks the published version at `ptr` to `next`, skipping the versions between.
///
/// # Safety
/// `ptr` is a live page version; the caller is the only one relinking (the
/// reclamation lock) and `next` is an older version of the same page, still
/// allocated, that every snapshot reading through `ptr` may be sent to.
pub(crate) unsafe fn set_next(ptr: *mut u8, next: *mut u8) {
    // SAFETY: aligned link field of a live buffer; concurrent readers load it atomically.
    let link = unsafe { AtomicU64::from_ptr(ptr.add(8) as *mut u64) };
    link.store((next as usize as u64).to_le(), Ordering::Release);
}

/// Four key bytes as an integer that orders like the bytes (shorter keys pad with 0).
fn hint_of(rest: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = rest.len().min(4);
    b[..n].copy_from_slice(&rest[..n]);
    u32::from_be_bytes(b)
}

fn put_u16(buf: &mut [u8], at: usize, v: usize) {
    buf[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: usize) {
    buf[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn write_header(buf: &mut [u8], kind: Kind, count: usize, used: usize) {
    buf[..HEADER].fill(0);
    buf[16] = kind as u8;
    put_u32(buf, 20, count);
    put_u32(buf, 24, used);
}

/// Bytes a leaf holding `entries` uses.
pub(crate) fn leaf_size(entries: &[LeafEntry<'_>]) -> usize {
    HEADER + entries.iter().map(LeafEntry::size).sum::<usize>()
}

/// Encodes a leaf. `entries` are sorted by key and fit the page.
pub(crate) fn build_leaf(buf: &mut [u8], entries: &[LeafEntry<'_>]) {
    debug_assert!(
        entries.windows(2).all(|w| w[0].key < w[1].key),
        "leaf entries sorted"
    );
    debug_assert!(leaf_size(entries) <= buf.len(), "leaf fits its page");
    let plen = match (entries.first(), entries.last()) {
        (Some(a), Some(b)) => a.key.iter().zip(b.key).take_while(|(x, y)| x == y).count(),
        _ => 0,
    };
    let mut at = HEADER + entries.len() * LEAF_SLOT;
    for (i, e) in entries.iter().enumerate() {
        put_u32(buf, HEADER + i * LEAF_SLOT, at);
        buf[HEADER + i * LEAF_SLOT + 4..HEADER + i * LEAF_SLOT + 8]
            .copy_from_slice(&hint_of(&e.key[plen..]).to_le_bytes());
        put_u16(buf, at, e.key.len());
        let (tag, vlen) = match e.val {
            ValRef::Inline(v) => (TAG_INLINE, v.len()),
            ValRef::Overflow { len, .. } => (TAG_OVERFLOW, len),
        };
        buf[at + 2] = tag;
        buf[at + 3] = 0;
        put_u32(buf, at + 4, vlen);
        at += LEAF_ENTRY_HEADER;
        buf[at..at + e.key.len()].copy_from_slice(e.key);
        at += e.key.len();
        match e.val {
            ValRef::Inline(v) => {
                buf[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            }
            ValRef::Overflow { head, .. } => {
                put_u64(buf, at, head as u64);
                at += 8;
            }
        }
    }
    write_header(buf, Kind::Leaf, entries.len(), at);
    put_u16(buf, 28, plen);
}

/// A decoded inner node, edited under the structure lock.
#[derive(Clone, Debug, Default)]
pub(crate) struct InnerNode {
    pub children: Vec<PageId>,
    /// `keys[i]` is the low bound of `children[i]`; `keys[0]` is empty.
    pub keys: Vec<Vec<u8>>,
}

impl InnerNode {
    pub(crate) fn decode(page: &Page<'_>) -> InnerNode {
        let n = page.count();
        InnerNode {
            children: (0..n).map(|i| page.inner_child(i)).collect(),
            keys: (0..n).map(|i| page.inner_key(i).to_vec()).collect(),
        }
    }

    pub(crate) fn size(&self) -> usize {
        HEADER
            + self
                .keys
                .iter()
                .map(|k| inner_entry_size(k.len()))
                .sum::<usize>()
    }

    pub(crate) fn route(&self, key: &[u8]) -> usize {
        self.keys[1..].partition_point(|k| k.as_slice() <= key)
    }

    pub(crate) fn encode(&self, buf: &mut [u8]) {
        debug_assert!(self.size() <= buf.len(), "inner node fits its page");
        debug_assert!(self.keys.first().is_none_or(|k| k.is_empty()));
        let mut at = HEADER + self.children.len() * INNER_SLOT;
        for (i, (child, key)) in self.children.iter().zip(&self.keys).enumerate() {
            put_u32(buf, HEADER + i * INNER_SLOT, at);
            put_u64(buf, at, child.0);
            put_u16(buf, at + 8, key.len());
            put_u16(buf, at + 10, 0);
            at += INNER_ENTRY_HEADER;
            buf[at..at + key.len()].copy_from_slice(key);
            at += key.len();
        }
        write_header(buf, Kind::Inner, self.children.len(), at);
    }
}

/// Encodes a dead marker: the version a commit installs when it frees a page.
pub(crate) fn build_dead(buf: &mut [u8]) {
    write_header(buf, Kind::Dead, 0, HEADER);
}
