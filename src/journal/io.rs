//! The file operations of the journal and checkpoints, behind a trait so that a
//! test can make any one of them fail (SQLite's and TigerBeetle's habit: fault
//! injection designed in, not bolted on).
//!
//! Record bytes reach a segment through a shared file mapping, not through this
//! trait: the fallible steps are reserving the segment's space (`allocate`), which
//! is where a full disk shows up, and `sync`, where a failed write shows up.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every file operation the journal and checkpoints do that can fail.
pub trait Io: Send + Sync + 'static {
    /// Creates (truncating) a file for writing and reading.
    fn create(&self, path: &Path) -> io::Result<File> {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    /// Creates one directory (its parent exists).
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    /// Reserves `len` bytes of disk for `file` (a segment), so that writes through
    /// its mapping cannot run out of space later.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        allocate(file, len)
    }
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
    /// Makes the file's data durable (fdatasync).
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
    /// Makes a directory's entries durable (after a create, rename or remove).
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    /// Cuts a file to `len` bytes (a torn tail, after recovery).
    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    /// Identifies the running boot of the machine (`None`: unknown). Recovery
    /// compares it with the boot that wrote the journal: within one boot the page
    /// cache survives a process crash, so `Durability::Buffered` commits that were
    /// acknowledged must all be there; after a reboot they may be lost.
    fn boot_id(&self) -> Option<[u8; 16]> {
        boot_id()
    }
    /// Whether the journal may call this `Io` from background threads that
    /// create, allocate and fault in segments ahead of need, so that a segment
    /// roll on the commit path is a pointer swap. `false` (the default): every
    /// segment is prepared by the roll that needs it, on the committing thread,
    /// so the operations come in the same order in every run of a scenario (what
    /// fault-injection and power-loss tests that count operations rely on).
    /// [`OsIo`] says `true`; a wrapper of it should say so too.
    fn prepares_ahead(&self) -> bool {
        false
    }
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`, a UUID), as bytes.
fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(id)
}

/// The operating system's file operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsIo;

impl Io for OsIo {
    fn prepares_ahead(&self) -> bool {
        true
    }
}

fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // File systems without fallocate: a sparse file. A full disk then surfaces
        // when a mapped page is first written back, not here.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Which operations a [`FaultyIo`] counts and fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultKind {
    /// `allocate` and `write_at`: where a full disk or a failing device shows up.
    Write,
    /// `sync` and `sync_dir`.
    Sync,
    /// `rename`.
    Rename,
    /// Every operation above, plus `create`, `create_dir`, `truncate` and `remove`.
    Any,
}

/// The OS's file operations, except that the `fail_at`-th operation of `kind`
/// (counting from 0) fails with `error`, and so does every later one of that kind
/// when `sticky`. For fault-injection tests: loop `fail_at` over every operation
/// of a scenario (`ops()` after a clean run says how many there are).
#[derive(Debug)]
pub struct FaultyIo {
    kind: FaultKind,
    fail_at: u64,
    error: i32,
    sticky: bool,
    seen: AtomicU64,
    failed: AtomicU64,
}

impl FaultyIo {
    /// Fails operation number `fail_at` of `kind` with the OS error `errno`
    /// (`libc::EIO`, `libc::ENOSPC`, ...); with `sticky`, every one after it too.
    pub fn new(kind: FaultKind, fail_at: u64, errno: i32, sticky: bool) -> FaultyIo {
        FaultyIo {
            kind,
            fail_at,
            error: errno,
            sticky,
            seen: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Operations of the counted kind seen so far.
    pub fn ops(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Operations that were made to fail.
    pub fn failures(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn check(&self, kind: FaultKind) -> io::Result<()> {
        if self.kind != FaultKind::Any && self.kind != kind {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_at || (self.sticky && n > self.fail_at) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(self.error));
        }
        Ok(())
    }
}

impl Io for FaultyIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.check(FaultKind::Any)?;
        OsIo.create(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check(FaultKind::Any)?;
        OsIo.create_dir(path)
    }
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        self.check(FaultKind::Write)?;
        OsIo.allocate(file, len)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(FaultKind::Write)?;
        OsIo.write_at(file, buf, offset)
    }
    fn sync(&self, file: &File) -> io::Result<()> {
        self.check(FaultKind::Sync)?;
        OsIo.sync(file)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultKind::Sync)?;
        OsIo.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultKind::Rename)?;
        OsIo.rename(from, to)
    }
    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        self.check(FaultKind::Any)?;
        OsIo.truncate(file, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(FaultKind::Any)?;
        OsIo.remove(path)
    }
}

/// Opens the file at `path` for reading if it is a regular file; `Ok(None)` if
/// there is none. Anything else in its place — a FIFO, a device, a socket, a
/// directory, a symbolic link (wherever it points) — is `Error::Corrupt` naming
/// the path, "not a regular file": opening a FIFO would block forever, and a
/// link may lead out of the database directory.
///
/// The type is checked before the open (no device is opened) and again on the
/// open file (`O_NOFOLLOW | O_NONBLOCK`, then `fstat`), so a file swapped in
/// between is caught too.
pub(crate) fn open_regular_if_exists(path: &Path) -> crate::Result<Option<File>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let not_regular = |ft: Option<std::fs::FileType>| {
        let what = match ft {
            Some(t) if t.is_symlink() => "a symbolic link",
            Some(t) if t.is_fifo() => "a FIFO",
            Some(t) if t.is_dir() => "a directory",
            Some(t) if t.is_block_device() || t.is_char_device() => "a device",
            Some(t) if t.is_socket() => "a socket",
            _ => "not a plain file",
        };
        crate::Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            commit_id: None,
            reason: format!("not a regular file ({what})"),
        }
    };
    let io_err = |op: &'static str| {
        let path = path.to_owned();
        move |source| crate::Error::Io { op, path, source }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(m) => return Err(not_regular(Some(m.file_type()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat")(e)),
    }
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_regular(None)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open")(e)),
    };
    let ft = file.metadata().map_err(io_err("stat"))?.file_type();
    if !ft.is_file() {
        return Err(not_regular(Some(ft)));
    }
    Ok(Some(file))
}

/// [`open_regular_if_exists`] for a file that must exist.
pub(crate) fn open_regular(path: &Path) -> crate::Result<File> {
    open_regular_if_exists(path)?.ok_or_else(|| crate::Error::Io {
        op: "open",
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// Where the data of `file` ends: the end of its last data extent
/// (`SEEK_DATA`/`SEEK_HOLE`), so that a sparse file is read as far as it was
/// written, not as far as its apparent size. Past it the file reads as zeros.
/// Where the file system cannot tell, the file's length.
pub(crate) fn data_end(file: &File, len: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut end = 0u64;
    let mut at = 0u64;
    // Extents are visited in order; a file has few of them, but bound the walk
    // anyway: past the bound, count the rest as data.
    for _ in 0..4096 {
        if at >= len {
            return end;
        }
        let Ok(off) = libc::off_t::try_from(at) else {
            return len;
        };
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                // No data at or after `at`.
                Some(libc::ENXIO) => end,
                // SEEK_DATA unsupported: all of it may be data.
                _ => len,
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return len;
        }
        let hole = (hole as u64).min(len);
        end = hole;
        at = hole;
    }
    len
}
